"""The agent node's parameters: one table, one frozen config dataclass that validates itself.

No rclpy here: the node declares every entry of :data:`PARAMETERS` with a ParameterDescriptor
built from it, ``config/agent.yaml`` lists the same names (a test checks both ways), and
:meth:`AgentConfig.from_parameters` turns the values into a validated :class:`AgentConfig`
(``ValueError`` naming the parameter otherwise).

``when`` says when a change takes effect: ``always`` at once (the set-parameters callback swaps
the config); ``activate`` at the next activation (topics, QoS: refused while active);
``configure`` at the next configuration (the model: refused unless unconfigured);
``startup`` only at start-up (read-only afterwards).
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, fields
from typing import Any, Mapping, Optional

from chatspot_ros.service.imaging import ImageLimits
from chatspot_ros.referring.dialects import DIALECTS
from chatspot_ros.remote.config import BACKENDS, IMAGE_FORMATS, split_server_url  # pure: no openai
from chatspot_ros.runtime.config import (  # pure: no torch
    COMPILE_MODES, DECODERS, DEVICE_PATTERN, DTYPES, QUANTIZATIONS, VISION_BACKENDS)

# "" = the checkpoint's own dialect.
REFERRING_FORMATS: tuple[str, ...] = ("", *DIALECTS)
IMAGE_TRANSPORTS = ("raw", "compressed")
RELIABILITIES = ("best_effort", "reliable", "system_default")
DURABILITIES = ("volatile", "transient_local")


@dataclass(frozen=True)
class ParamSpec:
    name: str
    default: Any  # bool | int | float | str: also fixes the parameter's type
    description: str
    when: str = "always"  # "always" | "activate" | "configure" | "startup"
    choices: tuple[str, ...] = ()
    minimum: Optional[float] = None
    maximum: Optional[float] = None

    @property
    def field(self) -> str:
        return self.name.replace(".", "_")

    @property
    def applies(self) -> str:
        """When a change takes effect, in words ("" = at once): descriptors and ``--help`` say it."""
        return {"always": "", "activate": "applies at activation", "configure": "applies at configure",
                "startup": "read at start-up"}[self.when]


P = ParamSpec
PARAMETERS: tuple[ParamSpec, ...] = (
    P("autostart", True, "Configure and activate at start-up (else wait for lifecycle transitions).",
      when="startup"),
    # model.*: read at configure.
    P("model.path", "", "Local checkpoint folder (llava-hf layout). Empty: the shipped tabletop demo model (logged loudly; it knows only the synthetic tabletop world).", when="configure"),
    P("model.dtype", "float32", "Weights dtype.", when="configure", choices=DTYPES),
    P("model.device", "cpu", "Torch device: cpu, cuda or cuda:N.", when="configure"),
    P("model.quantization", "none", "Weight-only quantization of the LLM's linear layers (torchao): int8 "
      "(any device), int4 (CUDA), for boards where fp16 weights do not fit.", when="configure",
      choices=QUANTIZATIONS),
    P("model.trust_remote_code", False, "Allow code shipped with the checkpoint to run.",
      when="configure"),
    P("model.feature_cache_size", 4, "Frames whose image features (and prefix KV) stay cached.",
      when="configure", minimum=1, maximum=256),
    P("model.backend", "local", "local: load model.path here; vllm: ask the vLLM server at server.url "
      "(model.path, or server.model_config, is then a local copy of the served checkpoint's config files).",
      when="configure", choices=BACKENDS),
    # server.*: the vllm backend (docs/vllm.md). The API key comes from $CHATSPOT_VLLM_API_KEY, never a parameter.
    P("server.url", "", "vLLM server (http or https), e.g. http://127.0.0.1:8000; no credentials in it.",
      when="configure"),
    P("server.model", "", "Served model name (vLLM --served-model-name); empty = the config folder's name.",
      when="configure"),
    P("server.model_config", "", "Local copy of the served checkpoint's config files (Φ, dialect, template); "
      "empty = model.path.", when="configure"),
    P("server.timeout_s", 60.0, "Each request (and any silence in its stream) must end within this.",
      when="configure", minimum=0.1, maximum=3600.0),
    P("server.max_concurrency", 8, "Requests in flight at once to the server (the regions of a frame go together).",
      when="configure", minimum=1, maximum=256),
    P("server.image_format", "png", "How frames are sent: png (lossless) or jpeg.", when="configure",
      choices=IMAGE_FORMATS),
    P("server.startup_wait_s", 0.0, "At configure, wait up to this long for a server that is still starting "
      "(one launched beside the node loads for minutes); 0 = one health check.", when="configure",
      minimum=0.0, maximum=3600.0),
    P("vision.backend", "torch", "Vision encoder backend (auto = TensorRT, else onnxruntime-CUDA, else torch; each fallback logged).",
      when="configure", choices=VISION_BACKENDS),
    P("vision.engine_dir", "engines", "Folder of exported ONNX/TensorRT engines.", when="configure"),
    P("referring.format", "", "Coordinate dialect in prompts; empty = the checkpoint's own.",
      when="configure", choices=REFERRING_FORMATS),
    P("referring.templates", "", "Instruction templates file (YAML, as config/instructions.yaml); "
      "empty = the installed config/instructions.yaml.", when="configure"),
    P("referring.precision", -1, "Decimals of normalized coordinates; -1 = the dialect's default.",
      when="configure", minimum=-1, maximum=6),
    P("referring.max_outside", 0.5,
      "Region coordinates further outside the image than this fraction of its size are refused; "
      "nearer ones are clipped (and reported).", minimum=0.0, maximum=10.0),
    # generation.*: per request.
    P("generation.max_new_tokens", 64, "Default answer length in tokens (requests may ask for fewer/more).",
      minimum=1, maximum=8192),
    P("generation.max_new_tokens_limit", 512, "Largest max_new_tokens a request may ask for.",
      minimum=1, maximum=8192),
    P("generation.temperature", 0.0, "Sampling temperature; 0 = greedy.", minimum=0.0, maximum=5.0),
    P("generation.top_p", 1.0, "Nucleus sampling mass (0, 1].", minimum=0.0, maximum=1.0),
    P("generation.seed", -1, "Sampling seed; -1 = unseeded.", minimum=-1, maximum=2**31 - 1),
    P("generation.decoder", "auto", "static: fixed-shape decode loop reading the frame's prefix once "
      "(Llama family; others fall back, logged); dynamic: the first loop (a prefix copy per region, "
      "finished rows dropped; faster on the CPU for short answers); auto: static on CUDA, dynamic on the CPU.",
      when="configure", choices=DECODERS),
    P("generation.compile", "auto", "torch.compile of the static decode step: auto (on CUDA, with CUDA "
      "graphs), on, off. The first frame of each batch size compiles (seconds to a minute).",
      when="configure", choices=COMPILE_MODES),
    P("generation.sync_every", 0, "Decode steps between host reads of the generated tokens; 0: auto "
      "(8 on CUDA, every step on the CPU; streaming goals read every step).", when="configure", minimum=0, maximum=256),
    # image.*
    P("image.transport", "raw", "raw: sensor_msgs/Image on topics.image; compressed: "
      "sensor_msgs/CompressedImage on <topics.image>/compressed.", when="activate",
      choices=IMAGE_TRANSPORTS),
    P("image.use_cv_bridge", True, "Decode raw images with cv_bridge when it is installed.",
      when="activate"),
    P("image.reduced_decode", True, "Decode JPEG frames at 1/2, 1/4 or 1/8 scale when the model's input "
      "is still fully covered; faster, same model input resolution."),
    P("image.max_width", 8192, "Wider images are refused.", minimum=1, maximum=65535),
    P("image.max_height", 8192, "Taller images are refused.", minimum=1, maximum=65535),
    P("image.max_pixels", 8192 * 4320, "Images with more pixels are refused.", minimum=1,
      maximum=2**31 - 1),
    # topics.*: relative names, remappable as usual.
    P("topics.image", "image", "Camera image topic (raw transport).", when="activate"),
    P("topics.camera_info", "camera_info", "CameraInfo topic (3D clicks, markers).", when="activate"),
    P("topics.detections", "detections", "vision_msgs/Detection2DArray topic.", when="activate"),
    P("topics.clicked_point", "clicked_point", "geometry_msgs/PointStamped clicks.", when="activate"),
    P("topics.task", "task", "std_msgs/String: the planner's current task.", when="activate"),
    P("camera_info.enabled", True, "Subscribe to camera_info.", when="activate"),
    # qos.*
    P("qos.image_reliability", "best_effort", "Reliability of the image and camera_info subscriptions.",
      when="activate", choices=RELIABILITIES),
    P("qos.image_depth", 5, "History depth of the image subscription.", when="activate",
      minimum=1, maximum=1000),
    P("qos.detections_reliability", "reliable", "Reliability of the detections/clicks/task subscriptions.",
      when="activate", choices=RELIABILITIES),
    P("qos.detections_depth", 10, "History depth of the detections and clicks subscriptions.", when="activate",
      minimum=1, maximum=1000),
    P("qos.task_durability", "volatile", "Durability of the task subscription (transient_local "
      "receives a latched task; needs a transient_local publisher).", when="activate",
      choices=DURABILITIES),
    P("qos.output_depth", 10, "History depth of the (reliable) output topics.", when="activate",
      minimum=1, maximum=1000),
    # queues.*
    P("queues.max_pending_detections", 2, "Detection messages waiting for the model (and, apart, "
      "those waiting for their frame); the oldest is dropped (and counted) when full.",
      minimum=1, maximum=1000),
    P("queues.max_pending_requests", 8, "Service/action/click requests waiting for the model; "
      "more are refused with 'busy'.", minimum=1, maximum=1000),
    P("queues.request_timeout_s", 120.0, "A service request waiting longer than this fails.",
      minimum=0.1, maximum=3600.0),
    P("queues.requests_per_detection", 4, "Requests are served first, but while a detection message "
      "waits for the model at most this many requests run in a row; then one detection message is "
      "answered (its guaranteed share, counted as detections.share_turns).", minimum=1, maximum=1000),
    # frames.*
    P("frames.buffer_size", 30, "Frames kept for stamp matching.", minimum=1, maximum=1000),
    P("frames.match_tolerance_s", 0.02, "A stamp matches the nearest frame within this.",
      minimum=0.0, maximum=10.0),
    P("frames.max_backward_jump_s", 1.0, "A frame this much older than the newest clears the buffer "
      "(time jumped back: a looping bag, a simulator reset).", minimum=0.0, maximum=1e6),
    P("frames.wait_s", 0.5, "How long a detection waits for its frame to arrive.", minimum=0.0,
      maximum=10.0),
    # limits.*
    P("limits.max_regions_per_frame", 8, "Detections answered per message (highest score first); "
      "the rest are counted as overflow.", minimum=1, maximum=1000),
    P("limits.max_regions_per_request", 16, "Regions a service/action request may name.",
      minimum=1, maximum=1000),
    P("limits.max_question_chars", 2000, "Longest question or task accepted.", minimum=1,
      maximum=1_000_000),
    # click.*
    P("click.question", "", "Question asked about a clicked point; empty = describe the region."),
    P("click.box_size", 0, "Side of the box made around a click, pixels; 0 = a point region.",
      minimum=0, maximum=4096),
    # task.*
    P("task.suggest_on_detections", True, "With a task set, suggest actions for detections too."),
    P("task.max_detections", 1, "Detections per message that get action suggestions.", minimum=0,
      maximum=100),
    # describe action
    P("describe.preempt", True, "A new describe goal cancels the running one (else it waits)."),
    # projection / tf
    P("projection.rectified", False, "Project 3D clicks with P (rectified image) instead of K + D."),
    P("tf.timeout_s", 0.1, "How long to wait for a transform of a 3D click (when tf2 is present).",
      minimum=0.0, maximum=10.0),
    # debug.*
    P("debug.image", True, "Publish debug/image (frame with regions and answers drawn)."),
    P("debug.markers", True, "Publish debug/markers (needs camera_info)."),
    P("debug.max_width", 1280, "debug/image is shrunk by an integer factor to at most this width; 0 = full size.",
      minimum=0, maximum=65535),
    P("debug.marker_depth", 1.0, "Distance (m) at which region markers are drawn along the rays.",
      minimum=0.01, maximum=1000.0),
    P("diagnostics.period_s", 1.0, "Period of /diagnostics.", when="activate", minimum=0.05,
      maximum=60.0),
)
del P

PARAMETERS_BY_NAME: dict[str, ParamSpec] = {spec.name: spec for spec in PARAMETERS}


def check_value(spec: ParamSpec, value: Any) -> Any:
    """``value`` converted to the parameter's type; ValueError with the reason otherwise."""
    kind = type(spec.default)
    if kind is bool:
        if not isinstance(value, bool):
            raise ValueError(f"{spec.name} must be a bool, got {value!r}")
    elif kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{spec.name} must be an integer, got {value!r}")
    elif kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"{spec.name} must be a number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{spec.name} must be finite, got {value!r}")
    elif kind is str:
        if not isinstance(value, str):
            raise ValueError(f"{spec.name} must be a string, got {value!r}")
    if spec.choices and value not in spec.choices:
        shown = ", ".join(repr(c) for c in spec.choices)
        raise ValueError(f"{spec.name} must be one of {shown}, got {value!r}")
    if spec.minimum is not None and value < spec.minimum:
        raise ValueError(f"{spec.name} must be >= {spec.minimum:g}, got {value!r}")
    if spec.maximum is not None and value > spec.maximum:
        raise ValueError(f"{spec.name} must be <= {spec.maximum:g}, got {value!r}")
    return value


@dataclass(frozen=True)
class AgentConfig:
    """All parameters, validated. Field names are the parameter names with '.' -> '_'."""

    autostart: bool
    model_path: str
    model_dtype: str
    model_device: str
    model_quantization: str
    model_trust_remote_code: bool
    model_feature_cache_size: int
    model_backend: str
    server_url: str
    server_model: str
    server_model_config: str
    server_timeout_s: float
    server_max_concurrency: int
    server_image_format: str
    server_startup_wait_s: float
    vision_backend: str
    vision_engine_dir: str
    referring_format: str
    referring_templates: str
    referring_precision: int
    referring_max_outside: float
    generation_max_new_tokens: int
    generation_max_new_tokens_limit: int
    generation_temperature: float
    generation_top_p: float
    generation_seed: int
    generation_decoder: str
    generation_compile: str
    generation_sync_every: int
    image_transport: str
    image_use_cv_bridge: bool
    image_reduced_decode: bool
    image_max_width: int
    image_max_height: int
    image_max_pixels: int
    topics_image: str
    topics_camera_info: str
    topics_detections: str
    topics_clicked_point: str
    topics_task: str
    camera_info_enabled: bool
    qos_image_reliability: str
    qos_image_depth: int
    qos_detections_reliability: str
    qos_detections_depth: int
    qos_task_durability: str
    qos_output_depth: int
    queues_max_pending_detections: int
    queues_max_pending_requests: int
    queues_request_timeout_s: float
    queues_requests_per_detection: int
    frames_buffer_size: int
    frames_match_tolerance_s: float
    frames_max_backward_jump_s: float
    frames_wait_s: float
    limits_max_regions_per_frame: int
    limits_max_regions_per_request: int
    limits_max_question_chars: int
    click_question: str
    click_box_size: int
    task_suggest_on_detections: bool
    task_max_detections: int
    describe_preempt: bool
    projection_rectified: bool
    tf_timeout_s: float
    debug_image: bool
    debug_markers: bool
    debug_max_width: int
    debug_marker_depth: float
    diagnostics_period_s: float

    def __post_init__(self) -> None:
        for spec in PARAMETERS:
            object.__setattr__(self, spec.field, check_value(spec, getattr(self, spec.field)))
        if not DEVICE_PATTERN.match(self.model_device):
            raise ValueError(f"model.device must be 'cpu', 'cuda' or 'cuda:N', got {self.model_device!r}")
        if self.model_device == "cpu" and self.model_dtype == "float16":
            raise ValueError("model.dtype float16 is not supported on cpu; use float32 or bfloat16")
        if self.model_backend == "vllm" and not self.server_url:
            raise ValueError("model.backend vllm needs server.url (e.g. http://127.0.0.1:8000)")
        if self.server_url:
            try:
                split_server_url(self.server_url)
            except ValueError as err:
                raise ValueError(f"server.url: {err}") from None
        if self.generation_max_new_tokens > self.generation_max_new_tokens_limit:
            raise ValueError(
                f"generation.max_new_tokens ({self.generation_max_new_tokens}) exceeds "
                f"generation.max_new_tokens_limit ({self.generation_max_new_tokens_limit})"
            )
        if self.generation_top_p <= 0.0:
            raise ValueError(f"generation.top_p must be in (0, 1], got {self.generation_top_p}")
        for spec in PARAMETERS:
            if spec.name.startswith("topics.") and not _valid_topic(getattr(self, spec.field)):
                raise ValueError(f"{spec.name} is not a valid topic name: {getattr(self, spec.field)!r}")

    @classmethod
    def from_parameters(cls, values: Mapping[str, Any]) -> AgentConfig:
        """From parameter values by name; missing names take their defaults; unknown names fail."""
        unknown = sorted(set(values) - set(PARAMETERS_BY_NAME))
        if unknown:
            raise ValueError(f"unknown parameters: {', '.join(unknown)}")
        kwargs = {spec.field: values.get(spec.name, spec.default) for spec in PARAMETERS}
        return cls(**kwargs)

    @classmethod
    def defaults(cls) -> AgentConfig:
        return cls.from_parameters({})

    def as_parameters(self) -> dict[str, Any]:
        return {spec.name: getattr(self, spec.field) for spec in PARAMETERS}

    def replace(self, changes: Mapping[str, Any]) -> AgentConfig:
        """A new config with some parameters (by name) changed; validated."""
        values = self.as_parameters()
        values.update(changes)
        return AgentConfig.from_parameters(values)

    @property
    def image_limits(self) -> ImageLimits:
        return ImageLimits(
            max_width=self.image_max_width, max_height=self.image_max_height,
            max_pixels=self.image_max_pixels,
        )

    @property
    def match_tolerance_ns(self) -> int:
        return int(round(self.frames_match_tolerance_s * 1e9))


_TOPIC_RE = re.compile(r"^[~/]?[A-Za-z_{][A-Za-z0-9_{}/~]*$")


def _valid_topic(name: str) -> bool:
    return bool(name) and bool(_TOPIC_RE.match(name)) and "//" not in name and not name.endswith("/")


def changes_allowed(names: list[str], state: str) -> Optional[str]:
    """Why these parameters cannot change in lifecycle ``state`` (None when they can).

    ``state`` is the lifecycle label: unconfigured, inactive, active (anything else: transitional).
    """
    for name in names:
        spec = PARAMETERS_BY_NAME.get(name)
        if spec is None:
            continue
        if spec.when == "startup":
            return f"{name} is read only at start-up"
        if spec.when == "configure" and state != "unconfigured":
            return f"{name} applies at configure: clean the node up first (state is {state})"
        if spec.when == "activate" and state == "active":
            return f"{name} applies at activation: deactivate the node first"
    return None


assert {f.name for f in fields(AgentConfig)} == {s.field for s in PARAMETERS}, "config/table mismatch"
