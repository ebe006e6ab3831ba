"""Each pytest session on this machine gets its own ROS_DOMAIN_ID (no ROS imports here).

``scripts/env.sh`` exports a fixed domain for interactive work; tests must not inherit it, or two
runs at once (two checkouts, CI beside a developer) see each other's nodes of the same names.
A session takes the first free domain of 1..101 (0 is where a user's own nodes sit), starting at
an offset drawn from its pid, and holds an exclusive ``flock`` on a lock file for it until the
process exits; another session skips a locked domain. The lock dies with the process, so a
crashed run never leaks its domain.
"""
from __future__ import annotations

import fcntl
import os
import tempfile
from pathlib import Path
from typing import IO, Optional

DOMAINS = range(1, 102)  # 1..101: the Linux-safe range (ports), keeping clear of 0
LOCK_DIR = Path(tempfile.gettempdir()) / "chatspot_ros_test_domains"

_held: Optional[IO[str]] = None


def lock_path(domain: int) -> Path:
    return LOCK_DIR / f"domain_{domain}.lock"


def try_lock(domain: int) -> Optional[IO[str]]:
    """The open, exclusively locked lock file of ``domain``; None when another process holds it."""
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    handle = open(lock_path(domain), "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.close()
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return handle


def claim_session_domain(environ: "os._Environ[str] | dict[str, str]" = os.environ) -> int:
    """Pick this session's domain (whatever ROS_DOMAIN_ID said before), lock it, set it in ``environ``."""
    global _held
    if _held is not None and environ is os.environ:
        return int(environ["ROS_DOMAIN_ID"])
    start = os.getpid() % len(DOMAINS)
    for i in range(len(DOMAINS)):
        domain = DOMAINS[(start + i) % len(DOMAINS)]
        handle = try_lock(domain)
        if handle is not None:
            if environ is os.environ:
                _held = handle  # held until the process exits
            environ["ROS_DOMAIN_ID"] = str(domain)
            return domain
    raise RuntimeError(f"every ROS domain {DOMAINS.start}..{DOMAINS.stop - 1} is held by another test session "
                       f"(lock files in {LOCK_DIR})")
