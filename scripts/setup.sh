#!/usr/bin/env bash
# Set up everything the demo and the tests need, from a fresh clone, on a machine without ROS:
#   1. a venv in .venv with the pinned ROS 2 wheels, torch (CPU) and the ML stack;
#   2. the ROS wheels' CMake paths pointed at this venv;
#   3. a wire-compatible vision_msgs built into the venv when no real one is importable;
#   4. `colcon build` of this package (its interfaces) into install/;
#   5. this repo's Python distribution installed in editable mode (console scripts);
#   6. Debian's chromium and chromium-driver for the studio's browser tests (as root, with apt-get).
# Each step leaves a stamp keyed by its inputs, so a second run skips finished steps in seconds.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$repo"
venv="$repo/.venv"
stamps="$venv/.chatspot-stamps"
python_bin="${PYTHON:-python3.11}"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST

step() { printf '\n==> [setup] %s\n' "$*"; }
elapsed() { printf '    done in %ss\n' "$(( $(date +%s) - $1 ))"; }
# A stamp holds the hash of a step's inputs; the step runs again when they change.
inputs_hash() { cat "$@" 2>/dev/null | sha256sum | cut -c1-16; }
is_done() { [ -f "$stamps/$1" ] && [ "$(cat "$stamps/$1")" = "$2" ]; }
mark_done() { mkdir -p "$stamps"; echo "$2" > "$stamps/$1"; }

if ! command -v "$python_bin" >/dev/null 2>&1; then
  echo "setup: $python_bin not found. The ROS 2 PyPI wheels are built for CPython 3.11;" >&2
  echo "       install it or set PYTHON=/path/to/python3.11." >&2
  exit 1
fi
for tool in cmake make g++; do
  command -v "$tool" >/dev/null 2>&1 || { echo "setup: '$tool' is needed to build the ROS interfaces (apt-get install cmake build-essential)." >&2; exit 1; }
done

# 1. venv and pinned packages --------------------------------------------------------------
if [ ! -x "$venv/bin/python" ]; then
  step "creating venv in .venv ($("$python_bin" --version))"
  "$python_bin" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check)
req_hash=$(inputs_hash requirements/*.txt)
if ! is_done packages "$req_hash"; then
  step "installing pinned packages into .venv (ROS 2 wheels, torch CPU, transformers; about 2 minutes)"
  t0=$(date +%s)
  mkdir -p build
  # torch first, alone: any other torch request can pull a multi-GB CUDA build.
  { "${pip[@]}" install --progress-bar off -c requirements/lock.txt torch &&
    "${pip[@]}" install --progress-bar off -c requirements/lock.txt \
      -r requirements/ros.txt -r requirements/runtime.txt -r requirements/test.txt; } >build/pip.log 2>&1 \
    || { grep -v 'is ignored' build/pip.log | tail -30; echo "setup: pip install failed (log: build/pip.log)" >&2; exit 1; }
  grep -E '^Successfully installed' build/pip.log | cut -c1-300 || true
  elapsed "$t0"
  mark_done packages "$req_hash"
fi

# 2. CMake path fix ------------------------------------------------------------------------
if ! is_done cmake-paths "$req_hash"; then
  step "pointing the ROS wheels' CMake files at this venv"
  "$venv/bin/python" scripts/fix_ros_cmake_paths.py --venv "$venv"
  mark_done cmake-paths "$req_hash"
fi

export AMENT_PREFIX_PATH="$venv" CMAKE_PREFIX_PATH="$venv"
cmake_args=(-DPython3_EXECUTABLE="$venv/bin/python" -DBUILD_TESTING=OFF)

# 3. vision_msgs fallback ------------------------------------------------------------------
vm_hash=$(inputs_hash compat/vision_msgs/CMakeLists.txt compat/vision_msgs/package.xml compat/vision_msgs/msg/*.msg)
if ! is_done vision-msgs "$vm_hash"; then
  if "$venv/bin/python" -c "import vision_msgs.msg" 2>/dev/null && [ ! -f "$stamps/vision-msgs" ]; then
    step "a real vision_msgs is importable: using it"
    mark_done vision-msgs "$vm_hash"
  else
    step "building the wire-compatible vision_msgs into .venv (about 1 minute)"
    t0=$(date +%s)
    rm -rf build/compat/vision_msgs && mkdir -p build
    cmake -S compat/vision_msgs -B build/compat/vision_msgs -DCMAKE_INSTALL_PREFIX="$venv" "${cmake_args[@]}" >build/vision_msgs.log 2>&1 \
      || { tail -40 build/vision_msgs.log; echo "setup: configuring vision_msgs failed (log: build/vision_msgs.log)" >&2; exit 1; }
    cmake --build build/compat/vision_msgs -j "$(nproc)" >>build/vision_msgs.log 2>&1 \
      || { tail -40 build/vision_msgs.log; echo "setup: building vision_msgs failed (log: build/vision_msgs.log)" >&2; exit 1; }
    cmake --install build/compat/vision_msgs >>build/vision_msgs.log 2>&1
    elapsed "$t0"
    mark_done vision-msgs "$vm_hash"
  fi
fi

# 4. colcon build of this package ----------------------------------------------------------
# --symlink-install links each installed file: contents follow the tree, but a new file (module,
# model) only appears after a rebuild, so the list of package files is an input too.
pkg_hash=$( (inputs_hash CMakeLists.txt package.xml msg/*.msg srv/*.srv action/*.action; ls launch config engines
             find chatspot_ros -type f ! -name '*.pyc' ! -path '*/__pycache__/*' | LC_ALL=C sort) | sha256sum | cut -c1-16)
if ! is_done colcon "$pkg_hash" || [ ! -f install/setup.bash ]; then
  step "colcon build of chatspot_ros (interfaces; about 2 minutes)"
  t0=$(date +%s)
  # CMake refuses exported include paths inside the source tree, and the venv (numpy's headers)
  # is inside this repo: build the package through a link that is not a prefix of .venv.
  mkdir -p build/colcon-src && ln -sfn ../.. build/colcon-src/chatspot_ros
  "$venv/bin/colcon" --log-base build/colcon-log build --paths build/colcon-src/chatspot_ros \
    --build-base build --install-base install --symlink-install \
    --cmake-args "${cmake_args[@]}" --event-handlers console_cohesion- summary+ status-
  elapsed "$t0"
  mark_done colcon "$pkg_hash"
fi

# 5. the pure-Python distribution (console scripts) ----------------------------------------
py_hash=$(inputs_hash setup.py)
if ! is_done editable "$py_hash"; then
  step "installing chatspot_ros (editable, console scripts)"
  "${pip[@]}" install --progress-bar off --no-deps --no-build-isolation -e . >/dev/null
  mark_done editable "$py_hash"
fi

# 6. a browser for the studio's tests (Debian's chromium + chromium-driver) -------------------
# Only the browser tests of chatspot-studio need it (test/studio/test_browser_*.py); the demo does not.
browser_hash=$(printf 'chromium chromium-driver /usr/bin/chromium /usr/bin/chromedriver' | sha256sum | cut -c1-16)
if ! is_done browser "$browser_hash" || [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  if [ -x /usr/bin/chromium ] && [ -x /usr/bin/chromedriver ]; then
    mark_done browser "$browser_hash"
  elif [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    step "installing chromium and chromium-driver with apt-get (the studio's browser tests; about 1 minute)"
    t0=$(date +%s)
    mkdir -p build
    if DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >build/apt-browser.log 2>&1 \
       || { apt-get update >>build/apt-browser.log 2>&1 &&
            DEBIAN_FRONTEND=noninteractive apt-get install -y chromium chromium-driver >>build/apt-browser.log 2>&1; }; then
      elapsed "$t0"
      mark_done browser "$browser_hash"
    else
      tail -15 build/apt-browser.log
      echo "setup: WARNING: apt-get could not install chromium and chromium-driver (log: build/apt-browser.log);" >&2
      echo "       the studio's browser tests will fail until they are installed." >&2
    fi
  else
    echo "setup: WARNING: the studio's browser tests need /usr/bin/chromium and /usr/bin/chromedriver, and this" >&2
    echo "       setup installs them only as root with apt-get. Run: sudo apt-get install -y chromium chromium-driver" >&2
    echo "       (Debian package names), or set CHATSPOT_SKIP_BROWSER_TESTS=1 to skip those tests." >&2
  fi
fi

echo "[setup] ready: source scripts/env.sh to use the node and the command-line tools"
