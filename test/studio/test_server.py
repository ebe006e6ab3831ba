"""The studio's server without a browser: real sockets on 127.0.0.1, a scripted backend.

API and security headers, the page protocol's checks (every refused message answered and
counted, the server still answering), the oversize and rate limits, the origin and Host checks,
one question at a time with cancel, and latest-frame-wins delivery to a page that does not read.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import socket
import time
from typing import Any

import aiohttp
import cv2
import numpy as np
import pytest

from chatspot_ros.studio.hub import Counters, HeldFrames, LatestSlot, SourceFrame, TokenBucket
from chatspot_ros.studio.protocol import Limits
from chatspot_ros.studio.server import StudioConfig

from fakes import ScriptedBackend
from ws_client import connect, frozen_frame, next_frame, next_json, origin, run, running


# ---------------------------------------------------------------------------------------------
# pieces


def test_latest_slot_keeps_the_newest_and_counts_what_it_replaced() -> None:
    counters = Counters()
    slot: LatestSlot[int] = LatestSlot(counters, "dropped")
    for i in range(5):
        slot.put(i)
    assert slot.take() == 4 and slot.take() is None
    assert counters.get("dropped") == 4


def test_held_frames_forget_the_oldest_and_ids_only_grow() -> None:
    held = HeldFrames(3)
    frames = [held.add(SourceFrame(0, i, "f", 4, 4, None), b"") for i in range(5)]
    assert [f.id for f in frames] == [1, 2, 3, 4, 5]
    assert held.get(2) is None and held.get(3) is frames[2] and held.latest() is frames[4]


def test_token_bucket_allows_bursts_then_the_rate() -> None:
    now = [0.0]
    bucket = TokenBucket(rate=2.0, burst=4.0, clock=lambda: now[0])
    assert [bucket.allow() for _ in range(5)] == [True] * 4 + [False]
    now[0] += 1.0
    assert [bucket.allow() for _ in range(3)] == [True, True, False]


def test_the_defaults_bind_the_loopback_and_bad_settings_are_refused() -> None:
    config = StudioConfig()
    assert config.host == "127.0.0.1" and config.port == 8765 and config.fps <= 10
    for bad in ({"fps": 0}, {"fps": 100}, {"port": 70000}, {"jpeg_quality": 0}, {"allowed_origins": ("evil",)},
                {"max_ws_message_bytes": 10}):
        with pytest.raises(ValueError):
            StudioConfig(**bad)


def test_host_rule_off_loopback_refuses_other_names() -> None:
    """Bound to every interface (checked on the method: tests never bind off loopback), the Host
    header must still name this machine: a rebound DNS name is refused."""
    from types import SimpleNamespace

    from chatspot_ros.studio.server import Studio

    studio = Studio(ScriptedBackend(), StudioConfig(host="0.0.0.0", allowed_origins=("http://robot.lan:8765",)))
    allowed = lambda host: studio._host_allowed(SimpleNamespace(host=host))  # noqa: E731
    assert allowed("192.168.1.20:8765") and allowed("[fe80::1]:8765") and allowed("localhost:8765")
    assert allowed(f"{socket.gethostname()}:8765") and allowed("robot.lan:8765")
    assert not allowed("evil.example:8765") and not allowed("robot.lan.evil.example")


# ---------------------------------------------------------------------------------------------
# HTTP


def test_page_config_and_security_headers() -> None:
    async def go() -> None:
        async with running(ScriptedBackend()) as studio, aiohttp.ClientSession() as s:
            async with s.get(origin(studio) + "/") as r:
                assert r.status == 200 and "/static/studio.js" in await r.text()
                assert "default-src 'self'" in r.headers["Content-Security-Policy"]
                assert r.headers["X-Frame-Options"] == "DENY"
            async with s.get(origin(studio) + "/static/studio.js") as r:
                assert r.status == 200 and "WebSocket" in await r.text()
            async with s.get(origin(studio) + "/api/config") as r:
                hello = await r.json()
            assert [p["name"] for p in hello["presets"]] == ["what", "describe", "read", "suggest"]
            assert hello["presets"][0]["text"] == "What can you see in this region?"
            assert hello["limits"]["max_message_bytes"] == Limits().max_message_bytes
            async with s.get(origin(studio) + "/static/../server.py") as r:
                assert r.status in (403, 404)
            # DNS rebinding: a loopback server answers only to loopback names
            async with s.get(origin(studio) + "/api/stats", headers={"Host": f"evil.example:{studio.port}"}) as r:
                assert r.status == 403 and "not served here" in (await r.json())["error"]
            async with s.post(origin(studio) + "/api/upload", data=b"x") as r:
                assert r.status == 404 and "without ROS" in (await r.json())["error"]
            async with s.get(origin(studio) + "/api/stats") as r:
                stats = await r.json()
            assert stats["server"]["rejected.host"] == 1 and stats["agent"] == {"state": "scripted"}

    run(go())


# ---------------------------------------------------------------------------------------------
# WebSocket


def test_frames_arrive_as_header_and_jpeg_and_a_question_streams_about_the_frozen_frame() -> None:
    backend = ScriptedBackend(words=4)

    async def go() -> None:
        async with running(backend) as studio, aiohttp.ClientSession() as s:
            ws = await connect(s, studio)
            hello = await next_json(ws, "hello")
            assert hello["mode"] == "test" and hello["upload"] is False
            header = await frozen_frame(ws)
            assert (header["width"], header["height"]) == (160, 120) and header["frame_id"] == "cam"
            backend.offer()  # a newer frame arrives while the page's frame is frozen
            await next_frame(ws)
            await ws.send_json({"type": "ask", "id": "q1", "frame": header["frame"], "question": "What is this?",
                                "region": {"kind": "box", "points": [[10, 20], [60, 80]]}})
            partial = await next_json(ws, "partial")
            assert partial["id"] == "q1" and partial["text"].startswith("word0")
            answer = await next_json(ws, "answer")
            assert answer["ok"] and answer["text"] == "word0 word1 word2 word3"
            assert answer["frame"] == header["frame"] and answer["stamp"] == header["stamp"]
            assert answer["stamp_matches"] and answer["latency_ms"] > 0 and answer["first_token_ms"] is not None
            assert answer["region"] == {"kind": "box", "points": [[10, 20], [60, 80]]}
            held, msg = backend.asked[0]
            assert held.id == header["frame"] and msg.region.points == ((10.0, 20.0), (60.0, 80.0))
            await ws.send_json({"type": "suggest", "id": "s1", "frame": header["frame"], "task": "pick it up",
                                "region": {"kind": "point", "points": [[5, 5]]}})
            answer = await next_json(ws, "answer")
            assert answer["ok"] and answer["steps"] == ["a", "b"] and answer["kind"] == "suggest"

    run(go())


def test_the_jpeg_is_the_frame() -> None:
    async def go() -> None:
        async with running(ScriptedBackend(noise=True)) as studio, aiohttp.ClientSession() as s:
            ws = await connect(s, studio)
            header, jpeg = await next_frame(ws)
            image = cv2.imdecode(np.frombuffer(jpeg, np.uint8), cv2.IMREAD_COLOR)
            assert image.shape == (header["height"], header["width"], 3)

    run(go())


BAD_MESSAGES = [
    ("not json", "not valid JSON", "invalid"),
    ("[1, 2]", "must be a JSON object", "invalid"),
    ('{"type": "launch_missiles"}', "unknown message type", "invalid"),
    ('{"type": "ask", "id": "a"}', "missing field(s) frame, question", "invalid"),
    ('{"type": "ask", "id": "a", "frame": 1, "question": "q", "colour": 1}', "unknown field(s) colour", "invalid"),
    ('{"type": "ask", "id": "a b", "frame": 1, "question": "q"}', "id must be", "invalid"),
    ('{"type": "ask", "id": "a", "frame": -1, "question": "q"}', "frame must be an integer", "invalid"),
    ('{"type": "ask", "id": "a", "frame": true, "question": "q"}', "frame must be an integer", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": 5}', "question must be a string", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "QQ"}', "characters; at most 2000", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q\\u0007"}', "control characters", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "max_new_tokens": 100000}', "max_new_tokens",
     "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "region": {"kind": "circle", "points": []}}',
     "kind must be point, box or polygon", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "region": {"kind": "point", "points": [[NaN, 1]]}}',
     "two finite numbers", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "region": {"kind": "point", "points": [["1", 1]]}}',
     "two finite numbers", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "region": {"kind": "point", "points": [[5, 500]]}}',
     "outside the 160x120 frame", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", '
     '"region": {"kind": "box", "points": [[50, 50], [10, 10]]}}',
     "min before max", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "region": {"kind": "box", "points": [[1, 1]]}}',
     "needs 2 corner points", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", '
     '"region": {"kind": "polygon", "points": [[1, 1], [2, 2], [3, 3]]}}',
     "degenerate", "invalid"),
    ('{"type": "ask", "id": "a", "frame": FRAME, "question": "q", "region": {"kind": "polygon", "points": MANY}}',
     "at most 64", "invalid"),
    ('{"type": "ask", "id": "a", "frame": 999999, "question": "q"}', "neither frozen by this page", "stale_frame"),
    ('{"type": "suggest", "id": "a", "frame": FRAME, "task": "  "}', "task is empty", "invalid"),
    ('{"type": "cancel", "id": "nothing"}', "no running question", "unknown_id"),
    ('{"type": "freeze", "frame": 999999}', "no longer held", "stale_frame"),
]


def test_every_malformed_message_gets_a_clear_error_is_counted_and_the_server_keeps_answering() -> None:
    async def go() -> None:
        async with running(ScriptedBackend()) as studio, aiohttp.ClientSession() as s:
            ws = await connect(s, studio)
            header = await frozen_frame(ws)
            many = json.dumps([[i, i % 2] for i in range(65)])
            for text, expected, reason in BAD_MESSAGES:
                text = text.replace("FRAME", str(header["frame"])).replace("QQ", "q" * 2001).replace("MANY", many)
                await ws.send_str(text)
                error = await next_json(ws, "error")
                assert expected in error["message"], (text, error)
                assert error["reason"] == reason, (text, error)
                if '"id": "a"' in text:
                    assert error["id"] == "a", text
            await ws.send_bytes(b"\x00\x01")
            assert "binary messages are not accepted" in (await next_json(ws, "error"))["message"]
            # still answering, on the same socket
            await ws.send_json({"type": "ask", "id": "ok1", "frame": header["frame"], "question": "q"})
            assert (await next_json(ws, "answer"))["ok"]
            counters = studio.counters.snapshot()
            assert counters["messages.rejected"] == len(BAD_MESSAGES) + 1
            assert counters["messages.received"] == len(BAD_MESSAGES) + 3  # + the freeze, the binary one, the ask
            assert counters["rejected.invalid"] == sum(r == "invalid" for _, _, r in BAD_MESSAGES) + 1

    run(go())


def test_oversized_messages_an_error_below_the_hard_cap_and_a_closed_socket_above_it() -> None:
    limits = Limits(max_message_bytes=4096)

    async def go() -> None:
        async with running(ScriptedBackend(), limits=limits, max_ws_message_bytes=65536) as studio, \
                aiohttp.ClientSession() as s:
            ws = await connect(s, studio)
            header = await frozen_frame(ws)
            await ws.send_str(json.dumps({"type": "ask", "id": "big", "frame": header["frame"],
                                          "question": "x" * 8000}))
            error = await next_json(ws, "error")
            assert error["reason"] == "too_large" and "larger than the limit of 4096" in error["message"]
            await ws.send_str("y" * 100_000)  # above the hard cap: aiohttp closes the socket (1009)
            msg = await ws.receive(timeout=10)
            while msg.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
                msg = await ws.receive(timeout=10)
            assert msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.CLOSING)
            assert ws.close_code == 1009
            for _ in range(50):
                if studio.counters.get("rejected.too_large_closed"):
                    break
                await asyncio.sleep(0.05)
            assert studio.counters.get("rejected.too_large") == 1
            assert studio.counters.get("rejected.too_large_closed") == 1
            ws2 = await connect(s, studio)  # the server is still there
            header = await frozen_frame(ws2)
            await ws2.send_json({"type": "ask", "id": "q", "frame": header["frame"], "question": "q"})
            assert (await next_json(ws2, "answer"))["ok"]

    run(go())


def test_the_rate_limit_refuses_bursts_with_a_counted_error_and_recovers() -> None:
    async def go() -> None:
        async with running(ScriptedBackend(), rate=5.0) as studio, aiohttp.ClientSession() as s:
            ws = await connect(s, studio)
            header, _ = await next_frame(ws)
            for _ in range(25):
                await ws.send_json({"type": "freeze", "frame": header["frame"]})
            limited = 0
            end = time.monotonic() + 5
            while limited < 15 and time.monotonic() < end:
                error = await next_json(ws, "error", timeout=5)
                assert error["reason"] == "rate_limited" and "at most 5 per second" in error["message"]
                limited += 1
            assert limited == 15  # a burst of 2 x 5 passes, the other 15 are refused
            assert studio.counters.get("rejected.rate_limited") == 15
            await asyncio.sleep(0.5)  # tokens come back
            await ws.send_json({"type": "ask", "id": "q", "frame": header["frame"], "question": "q"})
            assert (await next_json(ws, "answer"))["ok"]

    run(go())


def test_origin_check_refuses_other_sites_and_allows_listed_ones() -> None:
    async def go() -> None:
        async with running(ScriptedBackend(), allowed_origins=("http://robot1.local:9000",)) as studio, \
                aiohttp.ClientSession() as s:
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await connect(s, studio, headers={"Origin": "http://evil.example"})
            assert err.value.status == 403
            with pytest.raises(aiohttp.WSServerHandshakeError):
                await connect(s, studio, headers={"Origin": f"http://localhost:{studio.port + 1}"})
            assert studio.counters.get("rejected.origin") == 2
            for headers in ({"Origin": "http://robot1.local:9000"}, {"Origin": origin(studio)}, {}):
                ws = await connect(s, studio, headers=headers)
                await next_json(ws, "hello")
                await ws.close()

    run(go())


def test_the_number_of_pages_is_capped() -> None:
    async def go() -> None:
        async with running(ScriptedBackend(), max_pages=2) as studio, aiohttp.ClientSession() as s:
            pages = [await connect(s, studio) for _ in range(2)]
            with pytest.raises(aiohttp.WSServerHandshakeError) as err:
                await connect(s, studio)
            assert err.value.status == 503 and studio.counters.get("rejected.too_many_pages") == 1
            await pages[0].close()
            for _ in range(100):
                if len(studio.pages) < 2:
                    break
                await asyncio.sleep(0.02)
            await next_json(await connect(s, studio), "hello")

    run(go())


def test_one_question_at_a_time_and_cancel_stops_it_with_the_partial_text() -> None:
    async def go() -> None:
        async with running(ScriptedBackend(words=400, word_s=0.02)) as studio, aiohttp.ClientSession() as s:
            ws = await connect(s, studio)
            header = await frozen_frame(ws)
            await ws.send_json({"type": "ask", "id": "long", "frame": header["frame"], "question": "q"})
            await next_json(ws, "partial")
            await ws.send_json({"type": "ask", "id": "other", "frame": header["frame"], "question": "q"})
            busy = await next_json(ws, "error")
            assert busy["reason"] == "busy" and busy["id"] == "other"
            await ws.send_json({"type": "cancel", "id": "long"})
            answer = await next_json(ws, "answer")
            assert answer["id"] == "long" and answer["cancelled"] and not answer["ok"]
            assert answer["text"].startswith("word0") and len(answer["text"].split()) < 400
            assert studio.counters.get("requests.cancelled") == 1

    run(go())


def _slow_websocket(port: int) -> socket.socket:
    """A WebSocket client that completes the handshake and then never reads (tiny receive buffer)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET /ws HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                  f"Origin: http://127.0.0.1:{port}\r\n\r\n").encode())
    assert b"101" in sock.recv(12)
    return sock


def test_a_page_that_does_not_read_loses_frames_counted_never_queues_them_and_never_slows_others() -> None:
    backend = ScriptedBackend(width=640, height=480, noise=True, source_fps=60)

    async def go() -> None:
        async with running(backend, fps=20) as studio, aiohttp.ClientSession() as s:
            slow = await asyncio.get_running_loop().run_in_executor(None, _slow_websocket, studio.port)
            try:
                ws = await connect(s, studio)
                await next_frame(ws)
                start, encoded0 = time.monotonic(), studio.counters.get("frames.encoded")
                got = 0
                while time.monotonic() - start < 4.0:
                    await next_frame(ws)
                    got += 1
                elapsed = time.monotonic() - start
                encoded = studio.counters.get("frames.encoded") - encoded0
                counters = studio.counters.snapshot()
                slow_page = next(p for p in studio.pages if p.number == 1)
                fast_page = next(p for p in studio.pages if p.number == 2)
            finally:
                slow.close()
            assert encoded <= 20 * elapsed + 2  # the pump keeps to --fps whatever the source sends
            assert counters["frames.superseded"] > 0  # 60 source frames a second for 20 sends
            # the reading page gets (almost) every encoded frame; the other one's slot only ever holds one
            assert got >= 0.8 * encoded and got >= 20, (got, encoded)
            assert slow_page.frames_dropped > 0.5 * encoded and fast_page.frames_dropped <= 0.2 * encoded
            assert counters["frames.dropped_slow_client"] >= slow_page.frames_dropped

    run(go())
