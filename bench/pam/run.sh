#!/bin/bash
# PAM session cost: pamtester open_session + close_session through
#   pam-permit          pam_permit.so only (what pamtester itself costs: the baseline)
#   pam-exec-true       pam_exec.so /bin/true
#   pam-cgroup-by-hand  pam_exec.so of a script that does what pam_cgroup does: mkdir the user's
#                       group in the cpu, memory and pids hierarchies and write the caller's pid
#                       to their cgroup.procs
#   pam-dms-existing    pam_dms.so into the user's existing domain (cgroups + namespaces)
#   pam-dms-new         pam_dms.so into a new domain per login (a per-job domain)
# in one run, with a dmsd of its own; prints medians, the cost added to the baseline, and the
# targets (existing domain < 2 ms added, new domain < 5 ms added).
# usage: sudo bench/pam/run.sh          env: N=200 iterations; DMS_BIN=target/release
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "bench/pam/run.sh: run as root" >&2; exit 1; }
command -v pamtester >/dev/null || { echo "bench/pam/run.sh: pamtester missing (scripts/deps.sh test)" >&2; exit 1; }
N=${N:-200}
B=${DMS_BIN:-target/release}
[ -x "$B/dmsd" ] && [ -f "$B/libpam_dms.so" ] || cargo build --release --workspace 2>&1 | tail -1 >&2
W=$(mktemp -d /tmp/dms-pam-bench-XXXXXX)
sub=dms-pam-bench-$$
sock=/run/$sub-pam.sock
cleanup() {
	if [ -n "${pid:-}" ]; then
		for d in $("$B/dmsctl" --socket "$W/sock" --json domain list 2>/dev/null | sed -n 's/.*"name": "\([^"]*\)".*/\1/p'); do
			"$B/dmsctl" --socket "$W/sock" domain destroy "$d" >/dev/null 2>&1 || true
		done
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	fi
	for d in /sys/fs/cgroup/*/"$sub" /sys/fs/cgroup/"$sub" /sys/fs/cgroup/*/dms-pam-bench-cg /sys/fs/cgroup/dms-pam-bench-cg; do
		[ -d "$d" ] && { find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null; rmdir "$d" 2>/dev/null; }
	done
	rm -f "$sock"
	rm -rf "$W"
}
trap cleanup EXIT
bench/peers/build.sh "$W/bin" 2>/dev/null
mkdir -p "$W/policies"
cat >"$W/policies/bench.toml" <<'POL'
[vo.dmsbench]
granularity = "user"
network = { mode = "none" }
memory = { limit = "256M" }

[vo.dmsbenchjob]
granularity = "job"
network = { mode = "none" }
memory = { limit = "256M" }
POL
printf '"/DC=org/CN=dms bench" nobody\n"/DC=org/CN=dms bench job" daemon\n' >"$W/grid-mapfile"
cat >"$W/dmsd.toml" <<CFG
[accounts]
grid_mapfile = "$W/grid-mapfile"
group_mapfile = "$W/groupmapfile"
nss_dir = "$W/nss"
pam_socket = "$sock"
CFG
"$B/dmsd" --config "$W/dmsd.toml" --state-dir "$W/state" --policy-dir "$W/policies" --socket "$W/sock" \
	--cgroup-subtree "$sub" --system-bus no 2>"$W/dmsd.log" &
pid=$!
for _ in $(seq 100); do [ -S "$sock" ] && break; sleep 0.1; done
"$B/dmsctl" --socket "$W/sock" map --dn "/DC=org/CN=dms bench" --fqan /dmsbench >/dev/null
"$B/dmsctl" --socket "$W/sock" map --dn "/DC=org/CN=dms bench job" --fqan /dmsbenchjob >/dev/null

mod=$(cd "$B" && pwd)/libpam_dms.so
mkdir -p "$W/pam.d"
cp -a /etc/pam.d/. "$W/pam.d/"
echo "session required pam_permit.so" >"$W/pam.d/dmsb-permit"
echo "session required pam_exec.so /bin/true" >"$W/pam.d/dmsb-exec"
echo "session required pam_exec.so $W/cgplace.sh" >"$W/pam.d/dmsb-cgroup"
echo "session required $mod socket=$sock" >"$W/pam.d/dmsb-dms"
if [ -e /sys/fs/cgroup/cgroup.controllers ]; then
	printf '#!/bin/sh\nd=/sys/fs/cgroup/dms-pam-bench-cg/$PAM_USER\nmkdir -p "$d" && echo $PPID >"$d/cgroup.procs"\n' >"$W/cgplace.sh"
else
	printf '#!/bin/sh\nfor c in cpu memory pids; do d=/sys/fs/cgroup/$c/dms-pam-bench-cg/$PAM_USER; mkdir -p "$d" && echo $PPID >"$d/cgroup.procs" || exit 1; done\n' >"$W/cgplace.sh"
fi
chmod 755 "$W/cgplace.sh"

t=$W/bin/timeit
export N
unshare -m --propagation private sh -c '
	mount --bind "$1/pam.d" /etc/pam.d || exit 1
	t=$2
	"$t" -w 5 pam-permit -- pamtester dmsb-permit nobody open_session close_session
	"$t" -w 5 pam-exec-true -- pamtester dmsb-exec nobody open_session close_session
	"$t" -w 5 pam-cgroup-by-hand -- pamtester dmsb-cgroup nobody open_session close_session
	"$t" -w 5 pam-dms-existing -- pamtester dmsb-dms nobody open_session close_session
	"$t" -w 5 pam-dms-new -- pamtester -E SLURM_JOB_ID=b{} dmsb-dms daemon open_session close_session
' sh "$W" "$t" 2>"$W/timeit.err" >"$W/out" || { cat "$W/timeit.err" >&2; tail -20 "$W/dmsd.log" >&2; exit 1; }
echo "PAM session open+close via pamtester, N=$N (median / p90 ms; added = median - pam-permit)"
awk -F'\t' '
	{ med[$1] = $2; p90[$1] = $3; order[NR] = $1 }
	END {
		base = med["pam-permit"]
		for (i = 1; i <= NR; i++) {
			n = order[i]
			printf "  %-20s %8.3f %8.3f   added %7.3f ms\n", n, med[n], p90[n], med[n] - base
		}
		printf "targets: existing domain adds %.3f ms (< 2 ms: %s); new domain adds %.3f ms (< 5 ms: %s)\n",
			med["pam-dms-existing"] - base, (med["pam-dms-existing"] - base < 2 ? "met" : "NOT met"),
			med["pam-dms-new"] - base, (med["pam-dms-new"] - base < 5 ? "met" : "NOT met")
		printf "vs pam_exec /bin/true: existing %.2fx, new %.2fx\n", med["pam-dms-existing"] / med["pam-exec-true"], med["pam-dms-new"] / med["pam-exec-true"]
	}' "$W/out"
