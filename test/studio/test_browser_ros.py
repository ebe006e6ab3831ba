"""The page in a real browser (headless Chromium) over the live agent, with the shipped model, over DDS.

One agent (``python -m chatspot_ros.agent``, the shipped tabletop model), one camera publishing a
world frame with a detector's boxes, one ``chatspot-studio`` process and one browser for the
module, all in the session's ROS domain on loopback (test/conftest.py).
"""
from __future__ import annotations

import json
import os
import sys
import urllib.request
from pathlib import Path
from typing import Any, Iterator

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "ros"))

from studio_harness import (  # noqa: E402
    REPO,
    ScenePlayer,
    StudioProcess,
    ask,
    browser_missing,
    canvas_pixel,
    chrome,
    open_page,
    click_at,
    drag_box,
    errors_shown,
    save_screenshot,
    wait_js,
)

NAMESPACE = "/studio_browser"
SEED, INDEX = 2026, 2  # an evaluation frame (never trained on): orange ball, blue ball, orange triangle, blue triangle
SCREENSHOT = REPO / "docs" / "images" / "studio.png"

if browser_missing() and os.environ.get("CHATSPOT_SKIP_BROWSER_TESTS") == "1":
    pytest.skip(browser_missing(), allow_module_level=True)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    """Agent, camera and studio; the agent and the studio start side by side."""
    assert not browser_missing(), browser_missing()
    from ros_harness import AgentProcess, RosClient

    from chatspot_ros.models import shipped_model
    from chatspot_ros.srv import AskRegion

    logs = tmp_path_factory.mktemp("studio_ros")
    agent = AgentProcess(shipped_model(), logs / "agent.log", NAMESPACE, {"generation.max_new_tokens": 64})
    studio = camera = None
    try:
        studio = StudioProcess(["--ros-args", "-r", f"__ns:={NAMESPACE}"], logs / "studio.log")
        # the readiness client is gone before the camera spins: rclpy (Kilted) has crashed destroying
        # one Context's node while another Context's executor was waiting in this process
        with RosClient(NAMESPACE) as client:
            ready = client.node.create_client(AskRegion, "ask")
            assert client.spin_until(lambda: ready.service_is_ready() or not agent.alive(), 120.0) and agent.alive(), \
                f"the agent did not come up:\n{agent.log()}"
        camera = ScenePlayer(NAMESPACE, SEED, INDEX, fps=5.0, detections_every=10)
        yield {"agent": agent, "studio": studio, "camera": camera}
        assert agent.alive(), f"the agent died:\n{agent.log()}"
        assert studio.alive(), f"chatspot-studio died:\n{studio.log()}"
    finally:
        if camera is not None:
            camera.stop()
        studio_code = studio.stop() if studio is not None else 0
        agent_code = agent.stop()
    assert studio_code == 0, f"chatspot-studio exited with {studio_code}:\n{studio.log()}"
    assert agent_code == 0, f"the agent exited with {agent_code}:\n{agent.log()}"


@pytest.fixture(scope="module")
def page(stack: dict[str, Any]) -> Iterator[Any]:
    driver = chrome()
    try:
        open_page(driver, stack["studio"], "studio.hello && studio.framesShown >= 2")
        yield driver
    finally:
        driver.quit()


def stats(stack: dict[str, Any]) -> dict[str, Any]:
    with urllib.request.urlopen(stack["studio"].url + "api/stats", timeout=10) as r:
        return json.loads(r.read())


def back_to_live(page: Any) -> None:
    page.execute_script("if (studio.frozen) document.getElementById('live').click();")
    wait_js(page, "!studio.frozen")


def looks_cyan(rgba: list[int]) -> bool:
    r, g, b = rgba[:3]
    return g - r > 60 and b - r > 60


def looks_magenta(rgba: list[int]) -> bool:
    r, g, b = rgba[:3]
    return r > 200 and b > 200 and g < 90


def test_live_frames_the_detections_overlay_with_descriptions_and_the_agent_state(page: Any,
                                                                                   stack: dict[str, Any]) -> None:
    scene = stack["camera"].scene
    wait_js(page, "document.getElementById('agent').dataset.state === 'active'", 30,
            "the page never showed the agent as active (from /diagnostics)")
    wait_js(page, "studio.overlay && studio.overlay.source === 'region_descriptions' && "
                  "studio.overlay.regions.some(r => r.text)", 60, "no region descriptions reached the page")
    wait_js(page, f"studio.overlayDrawn >= {len(scene.objects)}", 10)
    x0, y0, x1, y1 = scene.objects[0].box
    edge = [(int((x0 + x1) / 2), int(y1) + d) for d in (-1, 0, 1)]  # the box's bottom edge

    def any_cyan() -> bool:
        return any(looks_cyan(canvas_pixel(page, x, y)) for x, y in edge)

    wait_js(page, "studio.framesShown > 0")
    assert any_cyan(), [canvas_pixel(page, x, y) for x, y in edge]
    page.execute_script("document.getElementById('overlay-toggle').click();")
    frames = page.execute_script("return studio.framesShown;")
    wait_js(page, f"studio.framesShown > {frames} && studio.overlayDrawn === 0")
    assert not any_cyan()
    page.execute_script("document.getElementById('overlay-toggle').click();")
    assert page.execute_script("return studio.framesDropped;") < page.execute_script("return studio.framesShown;")


def test_drag_a_box_over_an_object_and_read_the_streamed_answer_about_the_frozen_frame(
        page: Any, stack: dict[str, Any], tmp_path: Path) -> None:
    back_to_live(page)
    target = stack["camera"].scene.objects[2]
    x0, y0, x1, y1 = target.box
    drag_box(page, (x0 - 2, y0 - 2, x1 + 2, y1 + 2))
    region = page.execute_script("return studio.region;")
    assert region["kind"] == "box"
    (rx0, ry0), (rx1, ry1) = region["points"]
    assert abs(rx0 - (x0 - 2)) <= 1.5 and abs(ry1 - (y1 + 2)) <= 1.5, region
    frozen = page.execute_script("return studio.frozen.header;")
    partials = page.execute_script("return studio.partials;")
    answer = ask(page, preset="what")
    assert answer["ok"], answer
    assert answer["question"] == "What can you see in this region?"
    assert target.category in answer["text"].lower(), (target.category, answer["text"])
    assert page.execute_script("return studio.partials;") > partials  # it streamed
    assert answer["frame"] == frozen["frame"] and answer["stamp"] == frozen["stamp"]
    assert answer["answered_stamp"] == frozen["stamp"] and answer["stamp_matches"], answer
    assert answer["instruction"].startswith("What can you see in this region? <box>")
    history = page.execute_script("const li = document.querySelector('#history li');"
                                  "return [li.dataset.status, li.textContent];")
    assert history[0] == "answered" and " ms" in history[1] and target.category in history[1].lower()
    # the region is drawn on the frozen frame, with the answer
    bottom = [(int((rx0 + rx1) / 2), int(ry1) + d) for d in (-1, 0, 1)]
    assert any(looks_magenta(canvas_pixel(page, x, y)) for x, y in bottom)
    assert "FROZEN" in page.execute_script("return document.getElementById('frame-info').textContent;")
    save_screenshot(page, tmp_path / "studio.png")
    if os.environ.get("CHATSPOT_UPDATE_SCREENSHOT") == "1":  # the README's picture
        save_screenshot(page, SCREENSHOT)


def test_click_a_point_on_an_object(page: Any, stack: dict[str, Any]) -> None:
    back_to_live(page)
    target = stack["camera"].scene.objects[1]
    click_at(page, *target.center)
    region = page.execute_script("return studio.region;")
    assert region["kind"] == "point"
    assert abs(region["points"][0][0] - target.center[0]) <= 1.5
    # more than --stamp-max-frames (10) camera frames after the frozen one: its pixels go with the goal
    shown = page.execute_script("return studio.framesShown;")
    wait_js(page, f"studio.framesShown > {shown + 11}", 20)
    answer = ask(page, preset="what")
    assert answer["ok"] and target.category in answer["text"].lower(), (target.category, answer)
    assert answer["referred_by"] == "pixels" and answer["stamp_matches"], answer


def test_cancel_a_long_answer_keeps_the_streamed_part(page: Any) -> None:
    back_to_live(page)
    full = ask(page, preset="describe")  # no region: the whole frame, the agent's longest answer here
    assert full["ok"] and len(full["text"].split()) >= 8, full
    # press cancel as soon as the first words are on the page (a person reading along)
    page.execute_script("""
        const a = document.getElementById('answer');
        const obs = new MutationObserver(() => {
          if (a.textContent && studio.active) { obs.disconnect(); document.getElementById('cancel').click(); }
        });
        obs.observe(a, {childList: true, characterData: true, subtree: true});""")
    cut = ask(page, preset="describe")
    assert cut["cancelled"] and not cut["ok"], cut
    assert cut["text"] and len(cut["text"]) < len(full["text"]), (cut["text"], full["text"])
    assert full["text"].startswith(cut["text"].strip()), (cut["text"], full["text"])
    assert page.execute_script("return document.querySelector('#history li').dataset.status;") == "cancelled"


def test_malformed_and_oversized_messages_show_clear_errors_and_the_agent_still_answers(
        page: Any, stack: dict[str, Any]) -> None:
    before = stats(stack)["server"]
    page.execute_script("studio.ws.send('garbage');")
    wait_js(page, "studio.errors.some(e => e.text.includes('not valid JSON'))")
    page.execute_script("studio.ws.send(JSON.stringify({type: 'ask', id: 'x1', frame: studio.live.header.frame,"
                        "question: 'q', region: {kind: 'point', points: [[5000, 1]]}}));")
    wait_js(page, "studio.errors.some(e => e.text.includes('outside the 320x240 frame'))")
    page.execute_script(
        "studio.ws.send(JSON.stringify({type: 'ask', id: 'x2', frame: 1, question: 'q'.repeat(20000)}));")
    wait_js(page, "studio.errors.some(e => e.text.includes('larger than the limit of 16384'))")
    page.execute_script("studio.ws.send('z'.repeat(400000));")  # above the hard cap: the server closes the socket
    wait_js(page, "studio.errors.some(e => e.text.includes('a message was too large (the last one sent had "
                  "400000 bytes; the limit is 16384)'))", 20)
    wait_js(page, "studio.connected && studio.hello", 20, "the page did not reconnect")
    shown = errors_shown(page)
    assert any("connection closed by the server" in e for e in shown), shown
    after = stats(stack)["server"]
    assert after["rejected.invalid"] - before.get("rejected.invalid", 0) == 2
    assert after["rejected.too_large"] - before.get("rejected.too_large", 0) == 1
    assert after["rejected.too_large_closed"] - before.get("rejected.too_large_closed", 0) == 1
    # the server and the agent still answer
    back_to_live(page)
    wait_js(page, "studio.live !== null")
    target = stack["camera"].scene.objects[3]
    x0, y0, x1, y1 = target.box
    drag_box(page, (x0 - 2, y0 - 2, x1 + 2, y1 + 2))
    answer = ask(page, preset="what")
    assert answer["ok"] and target.category in answer["text"].lower(), answer
    assert stack["agent"].alive() and stack["studio"].alive()
