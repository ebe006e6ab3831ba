#!/usr/bin/env bash
# Run a command inside the project's environment (venv, colcon install space, loopback DDS).
set -eo pipefail
# shellcheck disable=SC1091
source "$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)/env.sh"
set -u
exec "$@"
