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
export ROS_DOMAIN_ID="${ROS_DOMAIN_ID:-42}"
export CHATSPOT_ROS_REPO="$_chatspot_repo"
unset _chatspot_repo
