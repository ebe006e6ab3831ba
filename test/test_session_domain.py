"""Each pytest session picks its own ROS_DOMAIN_ID, even when the shell exported one (scripts/env.sh)."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ros_domain import lock_path, try_lock

HERE = Path(__file__).resolve()
REPORT = "CHATSPOT_DOMAIN_REPORT"


def test_this_session_holds_the_lock_of_its_domain() -> None:
    domain = int(os.environ["ROS_DOMAIN_ID"])
    assert 1 <= domain <= 101
    assert lock_path(domain).exists()
    assert try_lock(domain) is None, "another process could take this session's domain"
    report = os.environ.get(REPORT)
    if report:  # run as a child session by the test below
        Path(report).write_text(str(domain))


def test_sessions_started_with_the_same_exported_domain_get_different_ones(tmp_path) -> None:
    env = dict(os.environ, ROS_DOMAIN_ID="42")  # what `source scripts/env.sh` exports
    children = []
    for i in range(2):  # two at once, as two `make test` on one machine
        child_env = dict(env, **{REPORT: str(tmp_path / f"domain_{i}")})
        children.append(subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
             f"{HERE}::test_this_session_holds_the_lock_of_its_domain"],
            env=child_env, cwd=str(HERE.parents[1]), stdout=subprocess.PIPE, stderr=subprocess.STDOUT))
    outputs = [c.communicate(timeout=120)[0].decode(errors="replace") for c in children]
    assert all(c.returncode == 0 for c in children), outputs
    domains = {int((tmp_path / f"domain_{i}").read_text()) for i in range(2)}
    assert len(domains) == 2 and int(os.environ["ROS_DOMAIN_ID"]) not in domains
