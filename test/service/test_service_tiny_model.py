"""The AgentService over a real (tiny, random-weight) checkpoint, loaded by its default loader:
the offline path a replay takes, no rclpy."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from chatspot_ros.pipeline import Runtime
from chatspot_ros.referring import Region
from chatspot_ros.service.agent_service import AgentService, ArrayFrame, Outputs, Query
from chatspot_ros.service.inputs import DetectionRegion
from service_helpers import wait_until


def test_a_tiny_checkpoint_answers_requests_and_detections_offline(tiny_model_dir: Path) -> None:
    described: list = []
    service = AgentService(outputs=Outputs(descriptions=described.append))
    config = service.configure({"model.path": str(tiny_model_dir), "generation.max_new_tokens": 4})
    assert service.model_info["model"] and config.model_path == str(tiny_model_dir)
    runtime = service.chatspot.runtime
    assert isinstance(runtime, Runtime) and runtime.prompt_form == "conversation" and runtime.status() == {}
    service.start()
    try:
        rng = np.random.default_rng(0)
        frame = ArrayFrame(rng.integers(0, 255, (48, 64, 3), dtype=np.uint8), stamp_ns=1_000_000_000,
                           frame_id="camera")
        assert service.push_frame(frame)
        answer = service.ask(Query("What is in the region?", (Region.box(2, 2, 30, 30),)))
        assert answer.success, answer.message
        assert answer.frame is frame and "<image>" not in answer.instruction.text
        cup = DetectionRegion(Region.box(8, 8, 40, 40, id="d0"), "cup", 1.0)
        service.submit_detections(frame.stamp_ns, "camera", [cup])
        assert wait_until(lambda: bool(described), 60)
        assert described[0].items[0].label == "cup" and described[0].model == service.model_info["model"]
        stages = service.status().stages
        assert stages["total"].count == 2
    finally:
        service.stop("test over")
        service.release()
