#!/bin/bash
# Smoke test for run-v2.sh: exercises cgroup v2 in the guest, echoes its args, exits 3.
# usage: tests/vm/run-v2.sh tests/vm/smoke-v2.sh [ARGS...]    (expect exit status 3)
set -euo pipefail

cg=/sys/fs/cgroup/dms-test-x
echo "args: $# [$*]"
echo "env: TMPDIR=${TMPDIR:-} DMS_SMOKE=${DMS_SMOKE:-unset}"
echo "subtree_control: $(cat /sys/fs/cgroup/cgroup.subtree_control)"
mkdir "$cg"
trap 'rmdir "$cg" 2>/dev/null || true' EXIT
echo "50000 100000" >"$cg/cpu.max"
echo 64M >"$cg/memory.max"
echo 1 >"$cg/cgroup.freeze"
echo "cpu.max=$(cat "$cg/cpu.max") memory.max=$(cat "$cg/memory.max") $(grep frozen "$cg/cgroup.events")"
echo 0 >"$cg/cgroup.freeze"
rmdir "$cg"
echo "rmdir ok; /tmp writable: $(touch /tmp/dms-test-w && rm /tmp/dms-test-w && echo yes)"
echo "run: ${TMPDIR:-/run} writable: $(mktemp -d "${TMPDIR:-/run}/dms-test-XXXX" | xargs rmdir && echo yes)"
exit 3
