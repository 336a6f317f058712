#!/bin/bash
# The main job: installs what dmsd needs, builds it, and starts it in the foreground on the
# embedded default config with the example policies, state under ./var, and the API socket at
# /run/dms/dms.sock. Ctrl-C stops it (domains are kept and adopted at the next start).
# usage: sudo scripts/run.sh [extra dmsd flags]
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "run.sh: run as root (dmsd manages cgroups)" >&2; exit 1; }
scripts/deps.sh run
cargo build --release --bins
mkdir -p var
cat <<MSG
dmsd is starting (state: $PWD/var, policies: $PWD/policies/examples, socket: /run/dms/dms.sock).
In another shell, try:
  target/release/dmsctl status
  target/release/dmsctl domain create --user nobody --vo dteam
  target/release/dmsctl domain run dteam.nobody -- sh -c 'id; cat /proc/self/cgroup'
  target/release/dmsctl domain show dteam.nobody
  target/release/dmsctl domain freeze dteam.nobody; target/release/dmsctl domain thaw dteam.nobody
  target/release/dmsctl domain destroy dteam.nobody
  target/release/dmsctl policy check policies/examples
MSG
exec target/release/dmsd --state-dir "$PWD/var" --policy-dir "$PWD/policies/examples" "$@"
