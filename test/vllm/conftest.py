"""The vllm tests: one real vLLM server (CPU build, .venv-vllm) per session, on a free loopback port.

Skipped with the reason unless .venv-vllm exists (`make test-vllm` builds it and runs these).
The server serves a small tabletop checkpoint (head size 64, llava-hf weight names, pad-mode
preprocessing) written with chatspot_ros.training.export.save_llava_hf, in eager mode (SERVER_FLAGS); it is
stopped by its PID (its process group) at the end of the session. Its log: build/vllm-test-server.log.
"""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("CHATSPOT_VLLM_VENV", REPO / ".venv-vllm"))
SERVED_NAME = "tabletop-smoke"
START_TIMEOUT_S = float(os.environ.get("CHATSPOT_VLLM_START_TIMEOUT_S", "900"))
# The served context (the smoke preset has 512 positions; RoPE has no position table, so a longer one is
# only config). Long enough that a 3800-token answer cannot finish before a test cancels or kills it.
CONTEXT_TOKENS = 4096
# Eager: the tests are about the API, streaming, caches and crashes, not vLLM's compiler, and
# torch.compile costs each of the session's two server start-ups about 25-60 s on 2 cores.
SERVER_FLAGS = ("--enforce-eager",)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "vllm: needs the real vLLM engine (.venv-vllm; make test-vllm)")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if (VENV / "bin" / "python").is_file():
        return
    skip = pytest.mark.skip(
        reason=f"no vLLM venv at {VENV}: run `make test-vllm` (it builds .venv-vllm, ~3 min, 3.5 GB)")
    for item in items:  # the marker, not the keyword: a test parametrized with "vllm" is not one of these
        if item.get_closest_marker("vllm") is not None:
            item.add_marker(skip)


@dataclass(frozen=True)
class VllmServer:
    url: str
    model_dir: Path
    name: str
    pid: int
    log: Path
    start_s: float


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def build_checkpoint(out: Path) -> Path:
    """The smoke tabletop model, its weights perturbed (fixed seed) so that regions get different answers,
    served with CONTEXT_TOKENS positions."""
    import torch

    from chatspot_ros.training.export import save_llava_hf
    from chatspot_ros.training.model_setup import from_preset

    setup = from_preset("smoke", seed=0)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        for name, param in setup.model.named_parameters():
            if param.is_floating_point() and param.dim() >= 2:
                param.add_(torch.randn(param.shape, generator=generator) * 0.15)
    setup.model.config.text_config.max_position_embeddings = CONTEXT_TOKENS
    return save_llava_hf(setup.model, setup.tokenizer, setup.image_processor, out,
                         extra_config={"image_aspect_ratio": "pad"})


class ServerProcess:
    """One vLLM server process (its own session: the API server and its engine process), restartable on its port.

    ``kill()`` stops it as a crash would (SIGKILL to the process group); ``start()`` + ``wait_healthy()``
    bring it back on the same port with the same checkpoint, so the tests that kill it leave the session's
    server serving again."""

    def __init__(self, model_dir: Path, port: int, log: Path) -> None:
        self.model_dir = model_dir
        self.port = port
        self.log = log
        self.url = f"http://127.0.0.1:{port}"
        self.proc: subprocess.Popen | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def start(self) -> None:
        env = dict(os.environ, CHATSPOT_SERVE_NAME=SERVED_NAME, CHATSPOT_SERVE_HOST="127.0.0.1",
                   VLLM_CACHE_ROOT=str(REPO / "build" / "vllm-cache"))
        env.pop("VLLM_API_KEY", None)
        with open(self.log, "ab") as out:
            command = ["nice", "-n", "19", "bash", str(REPO / "scripts" / "serve_vllm.sh"),
                       str(self.model_dir), str(self.port), "--", *SERVER_FLAGS]
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                         start_new_session=True)

    def healthy(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url + "/health", timeout=2) as response:
                return response.status == 200
        except OSError:
            return False

    def wait_healthy(self, timeout: float = START_TIMEOUT_S) -> float:
        """Seconds until /health answers 200; pytest.fail when the process exits or the time runs out."""
        start = time.perf_counter()
        while not self.healthy():
            assert self.proc is not None
            if self.proc.poll() is not None:
                tail = self.log.read_text(errors="replace")[-4000:]
                pytest.fail(f"the vLLM server exited with {self.proc.returncode} while starting; {self.log}:\n{tail}")
            if time.perf_counter() - start > timeout:
                pytest.fail(f"the vLLM server did not answer /health within {timeout:.0f} s; see {self.log}")
            time.sleep(1.0)
        return time.perf_counter() - start

    def kill(self) -> None:
        """SIGKILL the whole process group (a crash: no graceful shutdown) and reap it."""
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=30)


@pytest.fixture(scope="session")
def vllm_process(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """The session's server process (tests that kill it restart it: see test_vllm_node.py)."""
    model_dir = build_checkpoint(tmp_path_factory.mktemp("vllm_model") / SERVED_NAME)
    log = REPO / "build" / "vllm-test-server.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    log.write_bytes(b"")
    server = ServerProcess(model_dir, _free_port(), log)
    try:
        server.start()
        started = server.wait_healthy()
        server.start_s = started  # type: ignore[attr-defined]
        print(f"\nvLLM server up on {server.url} after {started:.0f} s (pid {server.pid})")
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def vllm_server(vllm_process: ServerProcess) -> VllmServer:
    return VllmServer(vllm_process.url, vllm_process.model_dir, SERVED_NAME, vllm_process.pid, vllm_process.log,
                      vllm_process.start_s)  # type: ignore[attr-defined]
