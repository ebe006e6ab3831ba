"""chatspot_ros.ros.allocator: the glibc settings the agent makes at start-up (no rclpy).

Each case runs in a fresh interpreter, since a thread keeps the arena it got first: threads that
allocate at the same time, and the heaps glibc reports for them (``malloc_info``).
"""
from __future__ import annotations

import os
import platform
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]

pytestmark = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's allocator only")

COUNT_ARENAS = r"""
import ctypes, ctypes.util, re, sys, tempfile, threading
from chatspot_ros.ros.allocator import tune_allocator

print("tuned", tune_allocator())
held, ready, go = [], threading.Barrier(9), threading.Event()

def allocate():
    held.append(bytearray(1 << 20))  # above pymalloc's sizes: from the thread's glibc arena
    ready.wait()
    go.wait()

threads = [threading.Thread(target=allocate) for _ in range(8)]
for t in threads:
    t.start()
ready.wait()
libc = ctypes.CDLL(ctypes.util.find_library("c"))
libc.fopen.restype = ctypes.c_void_p
libc.fclose.argtypes = [ctypes.c_void_p]
libc.malloc_info.argtypes = [ctypes.c_int, ctypes.c_void_p]
with tempfile.NamedTemporaryFile(suffix=".xml") as out:
    stream = libc.fopen(out.name.encode(), b"w")
    libc.malloc_info(0, stream)
    libc.fclose(stream)
    print("arenas", len(re.findall(r'<heap nr="\d+"', open(out.name).read())))
go.set()
"""


def arenas_with(**env: str) -> tuple[str, int]:
    clean = {k: v for k, v in os.environ.items() if k not in ("CHATSPOT_MALLOC_TUNING", "MALLOC_ARENA_MAX")}
    clean["PYTHONPATH"] = os.pathsep.join([str(REPO), clean.get("PYTHONPATH", "")])
    done = subprocess.run([sys.executable, "-c", COUNT_ARENAS], env={**clean, **env}, capture_output=True,
                          text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    facts = dict(line.split() for line in done.stdout.splitlines())
    return facts["tuned"], int(facts["arenas"])


def test_the_agent_caps_glibc_arenas_so_freed_frames_are_not_kept_per_thread() -> None:
    tuned, arenas = arenas_with()
    assert tuned == "True" and arenas <= 2
    # the cap is what keeps them down: without the tuning, eight allocating threads get their own
    untuned, many = arenas_with(CHATSPOT_MALLOC_TUNING="0")
    assert untuned == "False" and many > 2
    # a user's MALLOC_ARENA_MAX wins over the default cap
    _, chosen = arenas_with(MALLOC_ARENA_MAX="4")
    assert 2 < chosen <= 4
