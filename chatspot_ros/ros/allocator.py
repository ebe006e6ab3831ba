"""Keep large image buffers in the heap (glibc) so that each frame does not page-fault afresh.

glibc serves allocations above ``M_MMAP_THRESHOLD`` (128 KiB to 32 MiB, adapted at run time) with
a fresh ``mmap`` and returns them with ``munmap``: every decoded 1080p frame (6 MB) then costs
about 1500 page faults, 2-10 ms on a small CPU, more than the colour conversion itself. Raising the
threshold (and the trim threshold) lets freed frames be reused from the heap. The price is that up
to ``trim_mib`` of freed memory stays with the process, per arena: glibc gives each new thread
that allocates its own arena (up to 8 per core), and the node has many (the executor's, DDS's, the
worker's, torch's). So the arenas are capped at two (``M_ARENA_MAX``) unless ``MALLOC_ARENA_MAX``
is set. Side by side in scripts/soak.py (4 askers), the agent's RSS levelled off at 514-516 MiB
over 10 minutes with two arenas; without the cap it was 569 MiB after 1 minute and 585 after 3,
still climbing (docs/node.md).

Called by ``chatspot_ros.agent.main`` unless ``CHATSPOT_MALLOC_TUNING=0``; a no-op off glibc.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import os

M_TRIM_THRESHOLD = -1
M_MMAP_THRESHOLD = -3
M_ARENA_MAX = -8


def tune_allocator(mmap_mib: int = 256, trim_mib: int = 512, arenas: int = 2) -> bool:
    """True when glibc accepted the settings; False elsewhere (musl, macOS) or when disabled.
    Call it before threads start: a thread keeps the arena it got first."""
    if os.environ.get("CHATSPOT_MALLOC_TUNING", "1") == "0":
        return False
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    ok = mallopt(M_MMAP_THRESHOLD, mmap_mib * 1024 * 1024) == 1
    ok = mallopt(M_TRIM_THRESHOLD, trim_mib * 1024 * 1024) == 1 and ok
    if "MALLOC_ARENA_MAX" not in os.environ:  # the user's own setting, applied by glibc, wins
        ok = mallopt(M_ARENA_MAX, arenas) == 1 and ok
    return ok


def trim_heap() -> bool:
    """Give freed heap memory back to the system (glibc ``malloc_trim``): called after the model is
    released on cleanup, since the raised trim threshold would otherwise keep it. False off glibc."""
    name = ctypes.util.find_library("c")
    if not name:
        return False
    try:
        return bool(ctypes.CDLL(name).malloc_trim(0))
    except (OSError, AttributeError):
        return False
