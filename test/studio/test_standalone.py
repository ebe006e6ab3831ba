"""The studio without ROS: the server over the in-process pipeline with the shipped model (no browser).

One model load for the module. Questions stream and name the object; cancel stops the decode
with the partial text; uploads replace the frame and bad ones are refused with the reason; the
mode never imports rclpy.
"""
from __future__ import annotations

import os
import subprocess
import sys
from typing import Any, Iterator

import aiohttp
import numpy as np
import pytest

from chatspot_ros.service import imaging
from chatspot_ros.studio.server import Studio, StudioConfig
from chatspot_ros.world import render, sample_scene

from ws_client import connect, frozen_frame, next_frame, next_json, origin, run

SEED, INDEX = 2026, 3  # yellow triangle, orange cube, red triangle, yellow ball (an evaluation frame)
ANSWER_S = 120.0  # a whole answer on a busy 2-core machine


@pytest.fixture(scope="module")
def chatspot() -> Iterator[Any]:
    from chatspot_ros.models import shipped_model
    from chatspot_ros.pipeline import ChatSpot, load_templates
    from chatspot_ros.runtime import RuntimeConfig

    cs = ChatSpot.from_config(RuntimeConfig(model_path=str(shipped_model())), templates=load_templates(""))
    yield cs
    cs.close()


class _KeepOpen:
    """The module's ChatSpot outlives each test's server (LocalBackend.close would free it)."""

    def __init__(self, chatspot: Any) -> None:
        self.chatspot = chatspot

    def __getattr__(self, name: str) -> Any:
        return getattr(self.chatspot, name)

    def close(self) -> None:
        pass


def backend(chatspot: Any) -> Any:
    from chatspot_ros.studio.local import LocalBackend

    return LocalBackend(_KeepOpen(chatspot), render(sample_scene(SEED, INDEX)), "world", model_name="tabletop")


async def _serve(chatspot: Any, test: Any, **config: Any) -> None:
    studio = Studio(backend(chatspot), StudioConfig(port=0, **config))
    await studio.start()
    try:
        async with aiohttp.ClientSession() as session:
            await test(studio, session)
    finally:
        await studio.stop()


def test_a_box_question_streams_and_names_the_object(chatspot: Any) -> None:
    scene = sample_scene(SEED, INDEX)

    async def test(studio: Studio, s: aiohttp.ClientSession) -> None:
        ws = await connect(s, studio)
        hello = await next_json(ws, "hello")
        assert hello["mode"] == "standalone" and hello["upload"] is True
        header = await frozen_frame(ws)
        assert (header["width"], header["height"]) == (320, 240)
        for obj in scene.objects[:2]:
            x0, y0, x1, y1 = obj.box
            await ws.send_json({"type": "ask", "id": f"q{obj.category.replace(' ', '_')}", "frame": header["frame"],
                                "question": "What can you see in this region?",
                                "region": {"kind": "box", "points": [[x0 - 2, y0 - 2], [x1 + 2, y1 + 2]]}})
            partial = await next_json(ws, "partial", ANSWER_S)
            answer = await next_json(ws, "answer", ANSWER_S)
            assert answer["ok"] and obj.category in answer["text"].lower(), (obj.category, answer)
            assert answer["text"].startswith(partial["text"])
            assert answer["instruction"].startswith("What can you see in this region? <box>[")
        target = scene.objects[0]
        await ws.send_json({"type": "suggest", "id": "s1", "frame": header["frame"],
                            "task": f"pick up the {target.category}",
                            "region": {"kind": "box", "points": [list(target.box[:2]), list(target.box[2:])]}})
        answer = await next_json(ws, "answer", ANSWER_S)
        assert answer["ok"] and len(answer["steps"]) >= 2 and answer["kind"] == "suggest", answer

    run(_serve(chatspot, test), 240)


def test_cancel_stops_the_decode_and_keeps_the_partial_text(chatspot: Any) -> None:
    async def test(studio: Studio, s: aiohttp.ClientSession) -> None:
        ws = await connect(s, studio)
        header = await frozen_frame(ws)
        ask = {"type": "ask", "id": "full", "frame": header["frame"], "question": ""}  # describe the whole frame
        await ws.send_json(ask)
        full = await next_json(ws, "answer", ANSWER_S)
        assert full["ok"] and len(full["text"].split()) >= 8
        await ws.send_json(dict(ask, id="cut"))
        await next_json(ws, "partial", ANSWER_S)
        await ws.send_json({"type": "cancel", "id": "cut"})
        cut = await next_json(ws, "answer", ANSWER_S)
        assert cut["cancelled"] and not cut["ok"]
        assert len(cut["text"]) < len(full["text"]) and full["text"].startswith(cut["text"].strip()), (cut, full)
        assert studio.counters.get("requests.cancelled") == 1

    run(_serve(chatspot, test), 240)


def test_uploads_replace_the_frame_and_bad_ones_are_refused_with_the_reason(chatspot: Any) -> None:
    other = sample_scene(SEED, 5)
    png = imaging.encode_compressed(render(other), "png")
    small = imaging.encode_compressed(np.zeros((150, 200, 3), np.uint8), "jpeg")
    noise = imaging.encode_compressed(np.random.default_rng(0).integers(0, 256, (400, 400, 3), np.uint8), "png")

    async def test(studio: Studio, s: aiohttp.ClientSession) -> None:
        url = origin(studio) + "/api/upload"
        own = {"Origin": origin(studio)}
        ws = await connect(s, studio)
        await next_frame(ws)
        async with s.post(url, data=small, headers=dict(own, **{"X-Filename": "small.jpg"})) as r:
            assert r.status == 200 and await r.json() == {"ok": True, "width": 200, "height": 150}
        header, _ = await next_frame(ws)
        assert (header["width"], header["height"], header["frame_id"]) == (200, 150, "small.jpg")
        refusals = [
            (b"not an image at all", own, 400, "upload refused"),
            (png[: len(png) // 2], own, 400, "upload refused"),
            (noise, own, 413, "larger than"),
            (png, {"Origin": "http://evil.example"}, 403, "origin not allowed"),
        ]
        for data, headers, status, words in refusals:
            async with s.post(url, data=data, headers=headers) as r:
                assert r.status == status and words in (await r.json())["error"], (status, words)
        assert studio.counters.get("uploads.rejected") == len(refusals)
        async with s.post(url, data=png, headers=own) as r:
            assert r.status == 200
        header = await frozen_frame(ws)
        assert (header["width"], header["height"]) == (320, 240)
        target = other.objects[1]
        x0, y0, x1, y1 = target.box
        await ws.send_json({"type": "ask", "id": "up", "frame": header["frame"],
                            "question": "What can you see in this region?",
                            "region": {"kind": "box", "points": [[x0 - 2, y0 - 2], [x1 + 2, y1 + 2]]}})
        answer = await next_json(ws, "answer", ANSWER_S)
        assert answer["ok"] and target.category in answer["text"].lower(), (target.category, answer)

    assert len(noise) > 300_000 > len(png)
    run(_serve(chatspot, test, max_upload_bytes=300_000), 240)


def test_the_mode_without_ros_never_imports_rclpy(tmp_path: Any) -> None:
    """The CLI's path without ROS up to loading the model: a bad --model fails with the contract's
    one line, and nothing imported rclpy on the way."""
    code = ("import sys\n"
            "from chatspot_ros.cli import studio\n"
            "from chatspot_ros.studio import server, local, protocol, hub\n"
            f"rc = studio.main(['--model', {str(tmp_path)!r}, '--world-seed', '3'])\n"
            "assert rc == 2, rc\n"
            "assert 'rclpy' not in sys.modules, 'rclpy was imported'\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env=dict(os.environ))
    assert done.returncode == 0, done.stderr
    assert "chatspot-studio: error:" in done.stderr and "no config.json" in done.stderr


def test_usage_errors_are_one_line_with_status_2(tmp_path: Any, capsys: pytest.CaptureFixture[str]) -> None:
    from chatspot_ros.cli.studio import main

    (tmp_path / "config.json").write_text("{}")
    cases = [
        (["--image", str(tmp_path / "x.png")], "need --model"),
        (["--model", str(tmp_path), "--image", "a.png", "--world-seed", "1"], "not both"),
        (["--model", str(tmp_path), "--ros-args", "-r", "__ns:=/x"], "--ros-args applies to the ROS mode"),
        (["--fps", "0", "--model", str(tmp_path)], "fps must be in (0, 60]"),
        (["--model", str(tmp_path), "--image", str(tmp_path / "missing.png")], "missing.png"),
    ]
    for argv, words in cases:
        assert main(argv) == 2, argv
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("chatspot-studio: error: ") and words in err[0], (argv, err)
