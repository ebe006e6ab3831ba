"""Point the ROS 2 wheels' exported CMake files at this venv.

The PyPI ROS 2 wheels were built under /opt/python/cp311-cp311, and their exported CMake
config files still name that interpreter's include and site-packages directories. CMake then
fails to find Python headers or rosidl generators when this package's interfaces are built.
This rewrites those two paths in <venv>/share/**/*.cmake. It is idempotent and prints what it
changed.
"""
from __future__ import annotations

import argparse
import sys
import sysconfig
from pathlib import Path

WHEEL_BUILDER_INCLUDE = "/opt/python/cp311-cp311/include/python3.11"
WHEEL_BUILDER_SITE_PACKAGES = "/opt/python/cp311-cp311/lib/python3.11/site-packages"


def rewrite(venv: Path, include_dir: str, site_packages: str) -> int:
    """Rewrite every CMake file under venv/share; return how many files changed."""
    changed = 0
    for path in sorted((venv / "share").rglob("*.cmake")):
        text = path.read_text(encoding="utf-8", errors="surrogateescape")
        new = text.replace(WHEEL_BUILDER_INCLUDE, include_dir).replace(
            WHEEL_BUILDER_SITE_PACKAGES, site_packages
        )
        if new != text:
            path.write_text(new, encoding="utf-8", errors="surrogateescape")
            changed += 1
    return changed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=Path(sys.prefix), help="venv to fix (default: this one)")
    args = parser.parse_args(argv)
    paths = sysconfig.get_paths()
    changed = rewrite(args.venv, paths["include"], paths["purelib"])
    print(f"fix_ros_cmake_paths: {changed} CMake file(s) rewritten under {args.venv / 'share'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
