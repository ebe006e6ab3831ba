"""Browser-test helpers: chatspot-studio as a process, headless Chromium, pointing in image pixels.

Chromium and ChromeDriver are Debian's (``scripts/setup.sh`` installs them); Selenium is given
the driver's path, so Selenium Manager never tries to download one.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional, Sequence

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMEDRIVER = "/usr/bin/chromedriver"
TIMEOUT_SCALE = max(1.0, float(os.environ.get("CHATSPOT_TEST_TIMEOUT_SCALE", "1")))


def browser_missing() -> str:
    """Why the browser tests cannot run here ("" when they can)."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not (os.path.exists(path) or shutil.which(Path(path).name)):
            return f"{path} is missing: run `make setup` (it installs chromium and chromium-driver)"
    return ""


def chrome(width: int = 1280, height: int = 800) -> Any:
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-extensions", "--disable-sync",
                 "--disable-default-apps", "--no-first-run", "--disable-component-update",
                 "--metrics-recording-only", "--mute-audio", f"--window-size={width},{height}"):
        options.add_argument(flag)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})  # the page's console, for failures
    try:
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    except WebDriverException as err:  # seen once on a machine at load 12: the browser did not come up
        sys.stderr.write(f"chromium did not start ({err.msg}); trying once more\n")
        time.sleep(2)
        driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=options)
    driver.set_script_timeout(30)
    return driver


class StudioProcess:
    """``python -m chatspot_ros.cli.studio ... --port 0``; ``url`` is read from its first line."""

    def __init__(self, args: Sequence[str], log_path: Path, timeout: float = 90.0) -> None:
        env = dict(os.environ)
        env["PYTHONUNBUFFERED"] = "1"
        self.log_path = log_path
        self.cmd = [sys.executable, "-m", "chatspot_ros.cli.studio", "--port", "0", *args]
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env,
                                     cwd=str(REPO), text=True)
        self.lines: list[str] = []
        self._url = threading.Event()
        self.url = ""
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()
        if not self._url.wait(timeout * TIMEOUT_SCALE):
            self.stop()
            raise AssertionError(f"chatspot-studio did not start:\n{self.log()}")

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with open(self.log_path, "w") as log:
            for line in self.proc.stdout:
                log.write(line)
                log.flush()
                self.lines.append(line)
                found = re.search(r"open (http://\S+) in a browser", line)
                if found and not self.url:
                    self.url = found.group(1)
                    self._url.set()

    def log(self) -> str:
        return "".join(self.lines)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stop(self, timeout: float = 20.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(2)  # SIGINT: the server stops cleanly
            try:
                self.proc.wait(timeout * TIMEOUT_SCALE)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._reader.join(5)
        return self.proc.returncode


# ---------------------------------------------------------------------------------------------
# The page


def wait_js(driver: Any, expression: str, timeout: float = 30.0, message: str = "") -> Any:
    """Poll a JavaScript expression until it is truthy; its value."""
    end = time.monotonic() + timeout * TIMEOUT_SCALE
    while True:
        value = driver.execute_script(f"return ({expression});")
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(message or f"timed out waiting for {expression}")
        time.sleep(0.05)


def open_page(driver: Any, studio: StudioProcess, ready: str, timeout: float = 60.0) -> None:
    """Load the page and wait for ``ready``; on failure the message holds the studio's log and the
    browser's console."""
    driver.get(studio.url)
    try:
        wait_js(driver, ready, timeout)
    except AssertionError:
        try:
            console = driver.get_log("browser")
        except Exception as err:  # noqa: BLE001 - only for the failure message
            console = [f"(no console log: {err})"]
        state = driver.execute_script("return JSON.stringify({hello: !!studio.hello, frames: studio.framesShown, "
                                      "connected: studio.connected, errors: studio.errors});")
        raise AssertionError(f"the page did not get ready ({ready}): {state}\nconsole: {console}\n"
                             f"studio log:\n{studio.log()}") from None


def wait_until(predicate: Callable[[], Any], timeout: float, message: str) -> Any:
    end = time.monotonic() + timeout * TIMEOUT_SCALE
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(message)
        time.sleep(0.05)


def _offset(driver: Any, x: float, y: float) -> tuple[int, int]:
    """Image pixel (x, y) -> Selenium's offset from the canvas centre, in CSS pixels."""
    w, h, cw, ch = driver.execute_script(
        "const c = document.getElementById('canvas'); const r = c.getBoundingClientRect();"
        "return [r.width, r.height, c.width, c.height];")
    return round(x * w / cw - w / 2), round(y * h / ch - h / 2)


def drag_box(driver: Any, box: Sequence[float]) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    x0, y0 = _offset(driver, box[0], box[1])
    x1, y1 = _offset(driver, box[2], box[3])
    (ActionChains(driver).move_to_element_with_offset(canvas, x0, y0).click_and_hold()
     .move_to_element_with_offset(canvas, (x0 + x1) // 2, (y0 + y1) // 2)
     .move_to_element_with_offset(canvas, x1, y1).release().perform())


def click_at(driver: Any, x: float, y: float) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.by import By

    canvas = driver.find_element(By.ID, "canvas")
    dx, dy = _offset(driver, x, y)
    ActionChains(driver).move_to_element_with_offset(canvas, dx, dy).click().perform()


def canvas_pixel(driver: Any, x: float, y: float) -> list[int]:
    return driver.execute_script(
        "const c = document.getElementById('canvas');"
        "return Array.from(c.getContext('2d').getImageData(arguments[0], arguments[1], 1, 1).data);",
        int(x), int(y))


def ask(driver: Any, preset: Optional[str] = None, question: Optional[str] = None, timeout: float = 60.0) -> dict:
    """Pick a preset and/or type a question, press ask, wait for the answer; the answer message."""
    from selenium.webdriver.common.by import By

    before = driver.execute_script("return studio.answers.length;")
    if preset is not None:
        driver.find_element(By.CSS_SELECTOR, f"#presets button[data-preset='{preset}']").click()
    if question is not None:
        box = driver.find_element(By.ID, "question")
        box.clear()
        box.send_keys(question)
    driver.find_element(By.ID, "ask").click()
    wait_js(driver, f"studio.answers.length > {before}", timeout, "no answer came back")
    return driver.execute_script("return studio.answers[studio.answers.length - 1];")


def errors_shown(driver: Any) -> list[str]:
    return driver.execute_script(
        "return Array.from(document.querySelectorAll('#errors .error')).map(e => e.textContent);")


def save_screenshot(driver: Any, path: Path, colours: int = 128) -> Path:
    """The window as a small palette PNG (the README's picture)."""
    import io

    from PIL import Image

    image = Image.open(io.BytesIO(driver.get_screenshot_as_png())).convert("RGB")
    path.parent.mkdir(parents=True, exist_ok=True)
    image.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
    return path


# ---------------------------------------------------------------------------------------------
# A camera and a detector for the live agent (ROS)


class ScenePlayer:
    """Publishes one world frame as a camera stream (``fps``) and its objects' boxes as detections.

    Runs its own rclpy Context and executor on a thread, in ``namespace``; detections every
    ``detections_every`` frames, labelled "object" only (a detector that finds, not names: the agent
    names them).
    """

    def __init__(self, namespace: str, seed: int, index: int, fps: float = 10.0, detections_every: int = 5) -> None:
        import rclpy
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import QoSProfile, qos_profile_sensor_data
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2DArray

        from chatspot_ros.world import render, sample_scene

        self.scene = sample_scene(seed, index)
        self.frame = render(self.scene)
        self.context = rclpy.Context()
        rclpy.init(args=[], context=self.context)
        self.node = rclpy.create_node("studio_test_camera", namespace=namespace, context=self.context)
        self.image_pub = self.node.create_publisher(Image, "image", qos_profile_sensor_data)
        self.det_pub = self.node.create_publisher(Detection2DArray, "detections", QoSProfile(depth=10))
        self.frames = 0
        self.detections_every = detections_every
        self.node.create_timer(1.0 / fps, self._tick)
        self.executor = SingleThreadedExecutor(context=self.context)
        self.executor.add_node(self.node)
        self._thread = threading.Thread(target=self._spin, daemon=True)
        self._thread.start()

    def _spin(self) -> None:
        from rclpy.executors import ExternalShutdownException

        try:
            self.executor.spin()
        except ExternalShutdownException:
            pass

    def _tick(self) -> None:
        from sensor_msgs.msg import Image
        from vision_msgs.msg import Detection2D, Detection2DArray, ObjectHypothesisWithPose

        height, width = self.frame.shape[:2]
        image = Image(width=width, height=height, encoding="rgb8", step=width * 3, data=self.frame.tobytes())
        image.header.stamp = self.node.get_clock().now().to_msg()
        image.header.frame_id = "camera_color_optical_frame"
        self.image_pub.publish(image)
        if self.frames % self.detections_every == 0:
            detections = Detection2DArray(header=image.header)
            for i, obj in enumerate(self.scene.objects):
                det = Detection2D(header=image.header, id=f"object_{i}")
                (cx, cy), s = obj.center, float(obj.size)
                det.bbox.center.position.x, det.bbox.center.position.y = float(cx), float(cy)
                det.bbox.size_x = det.bbox.size_y = s
                hypothesis = ObjectHypothesisWithPose()
                hypothesis.hypothesis.class_id, hypothesis.hypothesis.score = "object", 0.9
                det.results.append(hypothesis)
                detections.detections.append(det)
            self.det_pub.publish(detections)
        self.frames += 1

    def stop(self) -> None:
        import rclpy

        self.executor.shutdown()
        self._thread.join(5.0)
        self.node.destroy_node()
        rclpy.try_shutdown(context=self.context)
