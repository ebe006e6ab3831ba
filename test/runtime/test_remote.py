"""The vllm backend (chatspot_ros.remote) against a fake OpenAI-compatible server on 127.0.0.1.

The fake is a stdlib ThreadingHTTPServer in a thread that speaks vLLM's streamed chat completions
(SSE chunks with "token_id:N" logprobs), /health, /v1/models and /metrics, and can be told to
fail: 503 a few times, answer slowly, drop the connection, send garbage, refuse the key.
"""
from __future__ import annotations

import json
import logging
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import numpy as np
import pytest

pytest.importorskip("openai")

from chatspot_ros.pipeline import ChatSpot, Runtime  # noqa: E402
from chatspot_ros.referring import Region  # noqa: E402
from chatspot_ros.remote.client import ServerError  # noqa: E402
from chatspot_ros.remote.config import ServerConfig, split_server_url  # noqa: E402
from chatspot_ros.remote.image import decode_data_url  # noqa: E402
from chatspot_ros.runtime import GenerationConfig  # noqa: E402

MODEL = "tiny"
SECRET = "sk-test-9f3a1c5e77d0b2"  # an API key that must never show up in a log or an error


@dataclass
class Behaviour:
    """What the fake does with the next chat completions (a script, then the default)."""

    script: list[str] = field(default_factory=list)  # e.g. ["503", "503"] then "ok"
    default: str = "ok"
    delay_s: float = 0.0  # before the answer (mode "slow") / between tokens (mode "ok")
    require_key: str | None = None

    def next_mode(self) -> str:
        return self.script.pop(0) if self.script else self.default


class _QuietHTTPServer(ThreadingHTTPServer):
    def handle_error(self, request: Any, client_address: Any) -> None:
        """The fake breaks and drops connections on purpose; socketserver would print each to stderr,
        after the test's output capture has ended."""


class FakeServer:
    def __init__(self, models: tuple[str, ...] = (MODEL,), port: int = 0) -> None:
        self.models = models
        self.behaviour = Behaviour()
        self.requests: list[dict[str, Any]] = []
        self.headers: list[dict[str, str]] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self.lock = threading.Lock()
        self.httpd = _QuietHTTPServer(("127.0.0.1", port), self._handler())
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.httpd.server_address[1]}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()

    @staticmethod
    def answer_for(instruction: str) -> list[tuple[int, str]]:
        """A deterministic answer per instruction: tokens (id, text)."""
        words = ["a", "red", "cube", "on", "the", "table"]
        n = 2 + len(instruction) % 4
        return [(10 + i, (" " if i else "") + words[i % len(words)]) for i in range(n)]

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, and SSE in chunks, as uvicorn serves vLLM

            def log_message(self, *args: Any) -> None:  # quiet
                pass

            def _send(self, status: int, body: bytes, content_type: str = "application/json") -> None:
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:  # noqa: N802
                if self.path == "/health":
                    self._send(200, b"")
                elif self.path == "/v1/models":
                    data = [{"id": m, "object": "model", "created": 0, "owned_by": "vllm"} for m in server.models]
                    self._send(200, json.dumps({"object": "list", "data": data}).encode())
                elif self.path == "/metrics":
                    self._send(200, b'# HELP x\nvllm:prefix_cache_queries_total{model="tiny"} 100.0\n'
                                    b'vllm:prefix_cache_hits_total{model="tiny"} 63.0\n', "text/plain")
                else:
                    self._send(404, b'{"error": "not found"}')

            def do_POST(self) -> None:  # noqa: N802
                length = int(self.headers.get("Content-Length", "0"))
                body = json.loads(self.rfile.read(length) or b"{}")
                with server.lock:
                    server.requests.append(body)
                    server.headers.append(dict(self.headers))
                    mode = server.behaviour.next_mode()
                    server.in_flight += 1
                    server.max_in_flight = max(server.max_in_flight, server.in_flight)
                try:
                    self._complete(body, mode)
                finally:
                    with server.lock:
                        server.in_flight -= 1

            def _complete(self, body: dict[str, Any], mode: str) -> None:
                behaviour = server.behaviour
                if behaviour.require_key and self.headers.get("Authorization") != f"Bearer {behaviour.require_key}":
                    self._send(401, b'{"error": {"message": "invalid api key", "type": "auth", "code": 401}}')
                    return
                if mode == "503":
                    self._send(503, b'{"error": {"message": "engine restarting", "code": 503}}')
                    return
                if mode == "500":
                    self._send(500, b'{"error": {"message": "worker died", "code": 500}}')
                    return
                if mode == "drop":  # accept, then close without a response
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "slow":
                    time.sleep(behaviour.delay_s)
                if mode == "html":
                    self._send(200, b"<html><body>502 Bad Gateway</body></html>", "text/html")
                    return
                if body.get("model") not in server.models:
                    self._send(404, json.dumps({"error": {"message": f"model {body.get('model')} does not exist",
                                                          "code": 404}}).encode())
                    return
                text = next(p["text"] for p in body["messages"][0]["content"] if p["type"] == "text")
                tokens = server.answer_for(text)
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                self.send_header("Transfer-Encoding", "chunked")
                self.end_headers()

                def event(payload: Any) -> None:
                    data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                    data = b"data: " + data + b"\n\n"
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                    self.wfile.flush()

                def end() -> None:
                    self.wfile.write(b"0\r\n\r\n")
                    self.wfile.flush()

                def chunk(delta: dict[str, Any], logprobs: Any = None, finish: Any = None, **extra: Any) -> dict:
                    choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish, **extra}
                    return {"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL,
                            "choices": [choice]}

                if mode == "garbage":
                    event("{this is not json")
                    end()
                    return
                event(chunk({"role": "assistant", "content": ""}))
                sent = tokens if mode != "lost" else tokens[:1]
                for token_id, piece in sent:
                    if behaviour.delay_s and mode == "ok":
                        time.sleep(behaviour.delay_s)
                    lp = {"content": [{"token": f"token_id:{token_id}", "logprob": -0.5, "bytes": None,
                                       "top_logprobs": [{"token": f"token_id:{token_id}", "logprob": -0.5,
                                                         "bytes": None}]}]}
                    try:
                        event(chunk({"content": piece}, lp))
                    except (BrokenPipeError, ConnectionResetError):
                        return  # the client closed the stream (cancel)
                if mode == "lost":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if mode == "no_finish":
                    event("[DONE]")
                    end()
                    return
                event(chunk({"content": ""}, None, "stop", stop_reason=None))  # eos
                event({"id": "c", "object": "chat.completion.chunk", "created": 0, "model": MODEL, "choices": [],
                       "usage": {"prompt_tokens": 40, "completion_tokens": len(tokens), "total_tokens": 40}})
                event("[DONE]")
                end()

        return Handler


@pytest.fixture()
def fake() -> Iterator[FakeServer]:
    server = FakeServer()
    yield server
    server.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def config_for(url: str, model_dir: Path, **kw: Any) -> ServerConfig:
    options: dict[str, Any] = dict(url=url, model_config=str(model_dir), model=MODEL, timeout_s=5.0,
                                   connect_timeout_s=1.0, retries=2, backoff_s=0.05)
    options.update(kw)
    return ServerConfig(**options)


def frame(width: int = 96, height: int = 64) -> np.ndarray:
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, size=(height, width, 3), dtype=np.uint8)


def requests_for(chatspot: ChatSpot, size: tuple[int, int], k: int) -> list[Any]:
    w, h = size
    return [chatspot.builder.ask("What is this?", [Region.box(2 + i, 3, w // 2 + i, h - 4)], size) for i in range(k)]


# ----------------------------------------------------------------------------- config

def test_server_url_forms_and_refusals() -> None:
    assert split_server_url("http://127.0.0.1:8000") == ("http://127.0.0.1:8000", "http://127.0.0.1:8000/v1")
    assert split_server_url("https://gpu.local/v1/") == ("https://gpu.local", "https://gpu.local/v1")
    assert split_server_url("http://h:9/proxy/vllm") == ("http://h:9/proxy/vllm", "http://h:9/proxy/vllm/v1")
    for bad in ("ftp://h", "http://", "http://user:pw@h:8000", "http://h:8000/?key=1", ""):
        with pytest.raises(ValueError):
            split_server_url(bad)
    with pytest.raises(ValueError, match="credentials"):
        ServerConfig(url="http://u:secret@h:1", model_config="/x")
    with pytest.raises(ValueError, match="image_format"):
        ServerConfig(url="http://h:1", model_config="/x", image_format="webp")
    with pytest.raises(ValueError, match="max_concurrency"):
        ServerConfig(url="http://h:1", model_config="/x", max_concurrency=0)
    assert ServerConfig(url="http://h:1", model_config="/models/llava-1.5-7b-hf/").served_name == "llava-1.5-7b-hf"


# ----------------------------------------------------------------------------- the pipeline over the fake

def test_answers_like_the_local_pipeline(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, max_concurrency=3))
    fake.behaviour.delay_s = 0.1  # requests overlap
    try:
        img = frame()
        size = (img.shape[1], img.shape[0])
        reqs = requests_for(chatspot, size, 5)
        answers = chatspot.answer(img, "frame-1", reqs, GenerationConfig(max_new_tokens=16))
        assert [a.instruction for a in answers] == reqs
        for a, body in zip(answers, sorted(fake.requests, key=lambda b: [r.text for r in reqs].index(
                next(p["text"] for p in b["messages"][0]["content"] if p["type"] == "text")))):
            expected = fake.answer_for(a.instruction.text)
            assert a.text == "".join(t for _, t in expected).strip()
            assert a.generation.token_ids == tuple(i for i, _ in expected)
            assert a.generation.stopped == "eos" and a.generation.tokens == len(expected)
            assert a.prompt == chatspot.prompt_for(a.instruction)
            parts = body["messages"][0]["content"]
            assert [p["type"] for p in parts] == ["image_url", "text"]  # one image per request, then the text
            assert body["stream"] is True and body["max_tokens"] == 16 and body["temperature"] == 0.0
            assert "USER:" in body["stop"] and body["model"] == MODEL
        assert len(fake.requests) == 5
        assert 1 < fake.max_in_flight <= 3  # concurrent, bounded
        # the image is encoded once per frame: the same data URL in every request, and cached by key
        urls = {b["messages"][0]["content"][0]["image_url"]["url"] for b in fake.requests}
        assert len(urls) == 1 and next(iter(urls)).startswith("data:image/png;base64,")
        again = chatspot.answer_frame(img, "frame-1", reqs[:1], GenerationConfig(max_new_tokens=4))
        assert again.cache_hit and again.vision_ms == 0.0
        assert chatspot.runtime.status()["ok"] == 6
        assert isinstance(chatspot.runtime, Runtime) and chatspot.runtime.prompt_form == "instruction"
    finally:
        chatspot.close()


def test_streaming_tokens_and_cancel(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir))
    try:
        img = frame()
        reqs = requests_for(chatspot, (img.shape[1], img.shape[0]), 2)
        seen: list[tuple[int, str]] = []
        answers = chatspot.answer(img, None, reqs, GenerationConfig(), on_token=lambda i, t: seen.append((i, t)))
        for index, answer in enumerate(answers):
            texts = [t for i, t in seen if i == index]
            assert texts and texts[-1].strip() == answer.text  # text so far, growing
        fake.behaviour.delay_s = 0.2
        calls = {"n": 0}

        def stop_after_first_token() -> bool:
            calls["n"] += 1
            return calls["n"] > 3

        start = time.perf_counter()
        cancelled = chatspot.answer(img, None, reqs[:1], GenerationConfig(), should_stop=stop_after_first_token)
        assert cancelled[0].generation.stopped == "cancelled"
        assert time.perf_counter() - start < 1.5  # the stream was closed, not read to the end
    finally:
        chatspot.close()


def test_retries_503_with_backoff_then_succeeds(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, retries=3, backoff_s=0.1))
    try:
        fake.behaviour.script = ["503", "503"]
        img = frame()
        start = time.perf_counter()
        answer = chatspot.answer(img, None, requests_for(chatspot, (96, 64), 1), GenerationConfig())[0]
        elapsed = time.perf_counter() - start
        assert answer.text and len(fake.requests) == 3
        assert elapsed >= 0.75 * (0.1 + 0.2)  # backoff doubles (with at most 25% jitter down)
        assert chatspot.runtime.status()["retries"] == 2
    finally:
        chatspot.close()


def test_503_retries_are_bounded(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, retries=2))
    try:
        fake.behaviour.default = "503"
        with pytest.raises(ServerError, match=r"unavailable \(HTTP 503.*after 3 attempts") as info:
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())
        assert info.value.reason == "unavailable" and len(fake.requests) == 3
    finally:
        chatspot.close()


@pytest.mark.parametrize("mode, reason, pattern", [
    ("500", "http", r"HTTP 500"),
    ("html", "malformed", r"ended without a finish_reason"),
    ("garbage", "malformed", r"malformed answer"),
    ("no_finish", "malformed", r"ended without a finish_reason"),
    ("lost", "lost", r"connection broke mid-answer"),
])
def test_non_idempotent_failures_are_not_retried(fake: FakeServer, tiny_model_dir: Path, mode: str, reason: str,
                                                 pattern: str) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, retries=3))
    try:
        fake.behaviour.default = mode
        with pytest.raises(ServerError, match=pattern) as info:
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())
        assert info.value.reason == reason
        assert len(fake.requests) == 1, "a failure after the server took the request is not retried"
        fake.behaviour.default = "ok"  # the server recovers: the next request works
        assert chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())[0].text
    finally:
        chatspot.close()


def test_dropped_connection_before_an_answer_is_retried(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, retries=2))
    try:
        fake.behaviour.script = ["drop"]
        assert chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())[0].text
        assert len(fake.requests) == 2
    finally:
        chatspot.close()


def test_timeout_fails_the_request_with_the_reason(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, timeout_s=0.5, retries=2))
    try:
        fake.behaviour.script = ["slow"]
        fake.behaviour.delay_s = 2.0
        start = time.perf_counter()
        with pytest.raises(ServerError, match=r"no answer within 0.5 s") as info:
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())
        assert info.value.reason == "timeout"
        assert time.perf_counter() - start < 1.8 and len(fake.requests) == 1  # not retried
        # a stream that stalls between tokens is bounded by the same timeout
        fake.behaviour.delay_s = 0.3
        with pytest.raises(ServerError, match=r"(not finished|no answer) within 0.5 s"):
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())
    finally:
        chatspot.close()


def test_one_failing_region_fails_the_frame_with_its_index(fake: FakeServer, tiny_model_dir: Path) -> None:
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, max_concurrency=1, retries=0))
    try:
        fake.behaviour.script = ["ok", "500"]
        with pytest.raises(ServerError, match=r"^prompt 2 of 3: .*HTTP 500"):
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 3), GenerationConfig())
        assert len(fake.requests) == 2  # the third never started
    finally:
        chatspot.close()


def test_server_down_is_a_clear_failure(tiny_model_dir: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    start = time.perf_counter()
    with pytest.raises(ServerError, match=r"vLLM server http://127.0.0.1:\d+: GET /health: cannot connect") as info:
        ChatSpot.from_server(config_for(url, tiny_model_dir, retries=1))
    assert info.value.reason == "unreachable" and time.perf_counter() - start < 3.0
    # connected earlier, then the server went away: each request fails with the reason
    fake = FakeServer()
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir, retries=1))
    fake.close()
    try:
        with pytest.raises(ServerError, match=r"cannot connect .*after 2 attempts") as info:
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 2), GenerationConfig())
        assert info.value.reason == "unreachable"
        assert set(chatspot.runtime.status()["failures"]) == {"unreachable"}
    finally:
        chatspot.close()


def test_connect_waits_for_a_server_that_is_still_starting(tiny_model_dir: Path,
                                                          caplog: pytest.LogCaptureFixture) -> None:
    """server.startup_wait_s: a server launched beside the node is refused until it has loaded."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    with pytest.raises(ServerError, match=r"cannot connect.*\(waited 1 s for it to start\)") as info:
        ChatSpot.from_server(config_for(url, tiny_model_dir, retries=0, startup_wait_s=1.0))
    assert info.value.reason == "unreachable"
    started: list[FakeServer] = []
    later = threading.Timer(1.5, lambda: started.append(FakeServer(port=port)))
    later.start()
    start = time.perf_counter()
    try:
        with caplog.at_level(logging.INFO, logger="chatspot_ros.remote"):
            chatspot = ChatSpot.from_server(config_for(url, tiny_model_dir, retries=0, startup_wait_s=30.0))
        assert 1.4 < time.perf_counter() - start < 10.0
        assert any("waiting for vLLM server" in r.getMessage() and "unreachable" in r.getMessage()
                   for r in caplog.records)
        chatspot.close()
        # a server that is up but serves another model fails at once, however long the wait
        start = time.perf_counter()
        with pytest.raises(ServerError, match="serves 'tiny', not 'other'") as info:
            ChatSpot.from_server(config_for(url, tiny_model_dir, model="other", startup_wait_s=30.0))
        assert info.value.reason == "model" and time.perf_counter() - start < 3.0
    finally:
        later.cancel()
        for server in started:
            server.close()
    with pytest.raises(ValueError, match="startup_wait_s"):
        config_for(url, tiny_model_dir, startup_wait_s=-1.0)


def test_health_check_needs_the_served_model_name(fake: FakeServer, tiny_model_dir: Path) -> None:
    with pytest.raises(ServerError, match=r"serves 'tiny', not 'llava-7b'") as info:
        ChatSpot.from_server(config_for(fake.url, tiny_model_dir, model="llava-7b"))
    assert info.value.reason == "model"
    runtime = ChatSpot.from_server(config_for(fake.url, tiny_model_dir)).runtime
    try:
        assert runtime.health is not None and runtime.health.models == (MODEL,)
        metrics = runtime.client.metrics()
        assert metrics["vllm:prefix_cache_hits_total"] == 63.0
    finally:
        runtime.close()


def test_api_key_is_sent_but_never_logged(fake: FakeServer, tiny_model_dir: Path, caplog: pytest.LogCaptureFixture,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    fake.behaviour.require_key = SECRET
    caplog.set_level(logging.DEBUG)  # every logger, the openai and HTTP libraries' included
    errors: list[str] = []
    monkeypatch.delenv("CHATSPOT_VLLM_API_KEY", raising=False)
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir))
    try:
        with pytest.raises(ServerError, match="not authorized .*CHATSPOT_VLLM_API_KEY") as info:
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())
        errors.append(str(info.value))
    finally:
        chatspot.close()
    monkeypatch.setenv("CHATSPOT_VLLM_API_KEY", SECRET)
    chatspot = ChatSpot.from_server(config_for(fake.url, tiny_model_dir))
    try:
        assert chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())[0].text
        fake.behaviour.default = "500"
        with pytest.raises(ServerError) as info:
            chatspot.answer(frame(), None, requests_for(chatspot, (96, 64), 1), GenerationConfig())
        errors.append(str(info.value))
        status = chatspot.runtime.status()
    finally:
        chatspot.close()
    assert {k.lower(): v for k, v in fake.headers[-1].items()}["authorization"] == f"Bearer {SECRET}"  # used
    assert status["api_key"] == "set"
    assert caplog.records, "the DEBUG capture saw nothing; the check would prove nothing"
    assert SECRET not in caplog.text
    assert all(SECRET not in e for e in errors) and SECRET not in json.dumps(status)


# ----------------------------------------------------------------------------- Φ: the same pixels

def test_padded_square_and_box_land_on_the_same_pixels(fake: FakeServer, tiny_model_dir: Path) -> None:
    """A pad-mode checkpoint: the server gets the padded square the local runtime feeds its model,
    and the box the referring core writes covers the same pixels of it under both backends."""
    from transformers import AutoImageProcessor

    from chatspot_ros.referring.geometry import ResizeMode
    from chatspot_ros.runtime import ChatSpotRuntime, RuntimeConfig

    local = ChatSpot.from_config(RuntimeConfig(model_path=str(tiny_model_dir)))
    remote = ChatSpot.from_server(config_for(fake.url, tiny_model_dir))
    try:
        assert isinstance(local.runtime, ChatSpotRuntime)
        assert local.runtime.geometry == remote.runtime.geometry and remote.runtime.geometry.mode is ResizeMode.PAD
        width, height = 120, 48
        img = np.full((height, width, 3), 30, dtype=np.uint8)
        x0, y0, x1, y1 = 24, 8, 72, 40
        img[y0:y1, x0:x1] = (250, 10, 10)  # the object the box points at
        box = Region.box(x0, y0, x1, y1)
        req_local = local.builder.ask("What is this?", [box], (width, height))
        req_remote = remote.builder.ask("What is this?", [box], (width, height))
        assert req_local.text == req_remote.text  # the same Φ, the same instruction
        remote.answer(img, None, [req_remote], GenerationConfig(max_new_tokens=4))
        sent = decode_data_url(fake.requests[-1]["messages"][0]["content"][0]["image_url"]["url"])
        square = local.runtime.preprocess.expand_to_square(img)
        assert sent.shape == square.shape == (width, width, 3)
        np.testing.assert_array_equal(sent, square)  # PNG: exactly the local model's picture
        # the server's own preprocessing of what it received == the local pixel_values
        processor = AutoImageProcessor.from_pretrained(str(tiny_model_dir), local_files_only=True)
        served = processor(images=[sent], return_tensors="pt", input_data_format="channels_last")["pixel_values"]
        np.testing.assert_allclose(served.numpy(), local.runtime.preprocess([img]).numpy(), atol=1e-6)
        # the box written into the instruction, in pixels of the picture each model sees
        (u0, v0), (u1, v1) = local.runtime.geometry.to_model([(x0, y0), (x1, y1)], width, height)[0]
        side = sent.shape[0]
        rect = (round(u0 * side), round(v0 * side), round(u1 * side), round(v1 * side))
        red = np.argwhere((sent == (250, 10, 10)).all(axis=2))
        assert rect == (red[:, 1].min(), red[:, 0].min(), red[:, 1].max() + 1, red[:, 0].max() + 1)
    finally:
        local.close()
        remote.close()


def test_jpeg_option_and_unpadded_checkpoints(fake: FakeServer, seeded_model_dirs: dict[int, Path]) -> None:
    crop_dir = seeded_model_dirs[2]  # center-crop preprocessing: the frame is sent as it is
    chatspot = ChatSpot.from_server(config_for(fake.url, crop_dir, image_format="jpeg"))
    try:
        img = np.zeros((60, 90, 3), dtype=np.uint8)  # smooth: what JPEG is for
        img[..., 0] = np.linspace(0, 255, 90)[None, :]
        img[..., 1] = np.linspace(0, 255, 60)[:, None]
        chatspot.answer(img, None, requests_for(chatspot, (90, 60), 1), GenerationConfig())
        url = fake.requests[-1]["messages"][0]["content"][0]["image_url"]["url"]
        assert url.startswith("data:image/jpeg;base64,")
        sent = decode_data_url(url)
        assert sent.shape == img.shape  # not padded
        assert np.abs(sent.astype(int) - img.astype(int)).mean() < 4  # lossy, but the same picture
    finally:
        chatspot.close()


def test_chat_template_renders_the_local_prompt(tiny_model_dir: Path) -> None:
    """The template serve_vllm.sh gives a checkpoint without one renders conversation.py's prompt,
    for the string vLLM makes of an [image, text] turn ("<image>\\n" + text)."""
    import jinja2

    from chatspot_ros.referring.conversation import get_conversation
    from chatspot_ros.remote.chat_template import template_for_checkpoint

    conv = get_conversation("vicuna_v1")
    template = jinja2.Environment().from_string(template_for_checkpoint(tiny_model_dir))
    instruction = "What is in <box>[0.1,0.2,0.5,0.6]</box>?"
    content = conv.image_placeholder + "\n" + instruction
    rendered = template.render(messages=[{"role": "user", "content": content}], add_generation_prompt=True)
    assert rendered == "<s>" + conv.render(instruction)
    assert conv.render(instruction) == f"{conv.system} USER: <image>\n{instruction} ASSISTANT:"
    with_system = template.render(messages=[{"role": "system", "content": "Be brief."},
                                            {"role": "user", "content": content}])
    assert with_system == "<s>Be brief. USER: <image>\n" + instruction + " ASSISTANT:"


def test_node_parameters_of_the_vllm_backend() -> None:
    """The node's parameter table (pure: no rclpy) validates the backend settings at configure."""
    from chatspot_ros.service.config import AgentConfig

    config = AgentConfig.defaults().replace({"model.backend": "vllm", "server.url": "http://127.0.0.1:8000",
                                             "server.max_concurrency": 4, "server.image_format": "jpeg"})
    assert config.model_backend == "vllm" and config.server_max_concurrency == 4
    with pytest.raises(ValueError, match="needs server.url"):
        AgentConfig.defaults().replace({"model.backend": "vllm"})
    with pytest.raises(ValueError, match="server.url: .*credentials"):
        AgentConfig.defaults().replace({"model.backend": "vllm", "server.url": "http://me:pw@gpu:8000"})
    with pytest.raises(ValueError, match="server.image_format"):
        AgentConfig.defaults().replace({"server.image_format": "webp"})


def test_cli_backend_options(fake: FakeServer, tiny_model_dir: Path, tmp_path: Path,
                             capsys: pytest.CaptureFixture[str]) -> None:
    import cv2

    from chatspot_ros.cli import ask

    image = tmp_path / "frame.png"
    cv2.imwrite(str(image), frame())
    code = ask.main(["--backend", "vllm", "--server", fake.url, "--server-model", MODEL, "--model", str(tiny_model_dir),
                     "--image", str(image), "--box", "4,4,40,40", "--point", "50,30", "--question", "What?", "--json"])
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert code == 0 and len(lines) == 2 and all(line["answer"] for line in lines) and len(fake.requests) == 2
    code = ask.main(["--backend", "vllm", "--model", str(tiny_model_dir), "--image", str(image), "--question", "?"])
    assert code == 2 and "needs --server" in capsys.readouterr().err
