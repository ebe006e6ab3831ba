"""The page in a real browser over ``chatspot-studio --model ... --world-seed ...`` (no ROS).

One studio process (the shipped model in process) and one headless Chromium for the module:
a polygon question, an upload and a question about it, and a refused upload shown in the page.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Iterator

import pytest

from chatspot_ros.service import imaging
from chatspot_ros.world import render, sample_scene

from studio_harness import StudioProcess, ask, browser_missing, chrome, click_at, drag_box, open_page, wait_js

SEED, INDEX = 2026, 3  # yellow triangle, orange cube, red triangle, yellow ball
UPLOAD_INDEX = 5  # orange triangle, red ball, red triangle, blue ball, orange cube

if browser_missing() and os.environ.get("CHATSPOT_SKIP_BROWSER_TESTS") == "1":
    pytest.skip(browser_missing(), allow_module_level=True)


@pytest.fixture(scope="module")
def page(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    assert not browser_missing(), browser_missing()
    from chatspot_ros.models import shipped_model

    logs = tmp_path_factory.mktemp("studio_standalone")
    studio = StudioProcess(["--model", str(shipped_model()), "--world-seed", str(SEED), "--world-index", str(INDEX)],
                           logs / "studio.log")
    driver = None
    try:
        driver = chrome()
        open_page(driver, studio, "studio.hello && studio.framesShown >= 1")
        yield driver
        assert studio.alive(), studio.log()
    finally:
        if driver is not None:
            driver.quit()
        code = studio.stop()
    assert code == 0, studio.log()


def test_the_page_runs_over_the_in_process_model(page: Any) -> None:
    assert page.execute_script("return studio.hello.mode;") == "standalone"
    assert page.execute_script("return document.getElementById('upload-box').hidden;") is False
    wait_js(page, "document.getElementById('agent').dataset.state === 'in-process'", 10)


def test_a_polygon_around_an_object(page: Any) -> None:
    target = sample_scene(SEED, INDEX).objects[2]
    assert target.category == "red triangle"
    page.execute_script("document.querySelector('input[name=tool][value=polygon]').click();")
    x0, y0, x1, y1 = target.box
    for x, y in ((x0 - 2, y1 + 2), ((x0 + x1) / 2, y0 - 2), (x1 + 2, y1 + 2)):
        click_at(page, x, y)
    page.execute_script("document.getElementById('close-polygon').click();")
    region = page.execute_script("return studio.region;")
    assert region["kind"] == "polygon" and len(region["points"]) == 3
    answer = ask(page, preset="what")
    assert answer["ok"] and answer["region"]["kind"] == "polygon", answer
    assert target.category in answer["text"].lower(), answer
    page.execute_script("document.querySelector('input[name=tool][value=region]').click();"
                        "document.getElementById('live').click();")


def test_upload_an_image_then_ask_about_it(page: Any, tmp_path: Path) -> None:
    scene = sample_scene(SEED, UPLOAD_INDEX)
    path = tmp_path / "table.png"
    path.write_bytes(imaging.encode_compressed(render(scene), "png"))
    from selenium.webdriver.common.by import By

    page.find_element(By.ID, "upload").send_keys(str(path))
    wait_js(page, "studio.live && studio.live.header.frame_id === 'table.png' && !studio.frozen", 30)
    target = scene.objects[1]
    x0, y0, x1, y1 = target.box
    drag_box(page, (x0 - 2, y0 - 2, x1 + 2, y1 + 2))
    answer = ask(page, question="What can you see in this region?")
    assert answer["ok"] and target.category in answer["text"].lower(), (target.category, answer)


def test_a_bad_upload_is_refused_with_the_reason_in_the_page(page: Any, tmp_path: Path) -> None:
    from selenium.webdriver.common.by import By

    path = tmp_path / "notes.png"
    path.write_bytes(b"this is not a picture")
    upload = page.find_element(By.ID, "upload")
    upload.clear()
    upload.send_keys(str(path))
    wait_js(page, "studio.errors.some(e => e.text.includes('upload refused'))", 20)
    answer = ask(page, question="What can you see in this region?")  # the page and server still work
    assert answer["ok"], answer
