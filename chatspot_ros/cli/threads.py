"""Default CPU threads for the command-line tools: a busy machine slows a run in proportion.

PyTorch's CPU kernels run on OpenMP threads, one per core by default, that spin while they wait at
each barrier. When another process holds a core, a spinning thread burns the time slice the
descheduled one needs and every barrier waits a scheduler tick: on the 2-core machine the
docs/evaluation.md quick start fell from 16 to 0.3 regions/s (issue #25). The tools therefore set
``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep) before torch is imported, unless the user set it,
and take ``--threads N`` (or ``CHATSPOT_THREADS=N``) when given. ``CHATSPOT_THREADS=torch`` leaves
both to torch (for side-by-side measurements: scripts/bench_threads.py).
"""
from __future__ import annotations

import os
from typing import Optional

ENV = "CHATSPOT_THREADS"


def prepare_environment() -> None:
    """Before torch is imported: OpenMP threads sleep instead of spinning while they wait."""
    if os.environ.get(ENV, "") != "torch":
        os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def default_threads() -> Optional[int]:
    """CHATSPOT_THREADS=N, or None (torch's default: one thread per core)."""
    value = os.environ.get(ENV, "")
    if value.isdigit() and int(value) > 0:
        return int(value)
    return None


def configure_threads(threads: Optional[int] = None) -> Optional[int]:
    """Apply ``threads`` (else the default) to torch's intra-op pool; returns the count set, or None."""
    n = threads if threads is not None else default_threads()
    if n is not None:
        if n < 1:
            from chatspot_ros.cli.errors import UsageError

            raise UsageError(f"--threads {n}: give 1 or more")
        import torch

        torch.set_num_threads(n)
    return n
