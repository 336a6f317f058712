#!/bin/bash
# Every test: installs what the tests need, checks formatting and lints, runs the unit tests,
# the root/kernel integration tests on this host's cgroups (v1 here), and the same integration
# suite on cgroup v2 inside a QEMU guest booted for the purpose.
# usage: sudo scripts/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "test.sh: run as root (the integration tests create cgroups)" >&2; exit 1; }
scripts/deps.sh test
export DMS_REQUIRE_ROOT_TESTS=1
# The login tests bind their own NSS directory over /var/lib/dms/nss (the path compiled into
# libnss_dms.so.2); when that mount point does not exist yet, it is removed again at the end.
if [ ! -e /var/lib/dms ]; then
	trap 'rmdir /var/lib/dms/nss /var/lib/dms 2>/dev/null || true' EXIT
fi
echo "== format and lints"
cargo fmt --all -- --check
cargo clippy --workspace --all-targets -- -D warnings
cargo clippy --workspace --all-targets --features dms/libvirt -- -D warnings
echo "== alert rules, their unit tests and the Grafana dashboard"
scripts/check-monitoring.sh
echo "== build (debug with the libvirt backend for the host suite, release for the emulated v2 guest)"
cargo build --workspace --features dms/libvirt
cargo build --release --bins
echo "== unit and host integration tests (cgroup $( [ -e /sys/fs/cgroup/cgroup.controllers ] && echo v2 || echo v1 )), libvirt guests through a libvirtd of their own"
cargo test --workspace --features dms/libvirt -- --test-threads=2
echo "== cgroup v2 integration tests (cgroups, namespaces, joining) in a QEMU guest"
# The guest boots the Debian kernel without its modules (veth, bridge, nf_tables, sch_htb), so
# the NAT network tests run on the host only; every other root test runs in the guest too.
testbin=$(cargo test -p dms-integration --test root --no-run --message-format=json 2>/dev/null |
	sed -n 's/.*"executable":"\([^"]*\)".*/\1/p' | tail -1)
[ -x "$testbin" ] || { echo "test.sh: integration test binary not found" >&2; exit 1; }
DMS_BIN_DIR=$PWD/target/release tests/vm/run-v2.sh --timeout 1500 "$testbin" --test-threads=1 \
	--skip nat_network --skip bandwidth_limits --skip bridge_name_clash --skip no_leftovers_after_many_networked
