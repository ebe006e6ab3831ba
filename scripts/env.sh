# Enter the project's environment in an interactive shell:  source scripts/env.sh
# The venv (ROS 2 wheels, torch), the colcon install space (this package's interfaces), and
# DDS kept on this machine's loopback.
_chatspot_repo="$(cd "$(dirname "${BASH_SOURCE[0]:-$0}")/.." && pwd)"
if [ ! -f "$_chatspot_repo/install/setup.bash" ]; then
  echo "chatspot_ros: not set up yet; run 'make setup' (or bash scripts/setup.sh) first" >&2
  return 1 2>/dev/null || exit 1
fi
# shellcheck disable=SC1091
source "$_chatspot_repo/.venv/bin/activate"
export AMENT_PREFIX_PATH="$_chatspot_repo/.venv${AMENT_PREFIX_PATH:+:$AMENT_PREFIX_PATH}"
# shellcheck disable=SC1091
source "$_chatspot_repo/install/setup.bash"
# DDS discovery must not leave this machine (shared/ENVIRONMENT.md).
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
# The domain for interactive work (the node, a client, the demo in two shells). Test sessions
# ignore it and each lock a free one of their own (test/ros_domain.py).
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
# Large camera frames: config/fastdds.xml (shared memory, 16 MiB segments) is opt-in, see
# docs/node.md; export FASTDDS_DEFAULT_PROFILES_FILE to use it.
export CHATSPOT_ROS_REPO="$_chatspot_repo"
unset _chatspot_repo
