#!/bin/bash
# Benchmarks dmsd (release build) through its API beside the peers of ARCHITECTURE.md §6,
# in one run, and prints medians and ratios.
# usage: sudo scripts/bench.sh        env: N=200 iterations, DOMAINS=1000, N_IDLE=50 starts after
#                                     a PAUSE_MS=50 pause each
set -euo pipefail
cd "$(dirname "$0")/.."
[ "$(id -u)" = 0 ] || { echo "bench.sh: run as root" >&2; exit 1; }
scripts/deps.sh bench
cargo build --release --bins 2>&1 | tail -1 >&2
export N=${N:-200}
W=$(mktemp -d /tmp/dms-bench-XXXXXX)
sub=dms-bench-$$
cleanup() {
	[ -n "${pid:-}" ] && kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	# Domains outlive dmsd by design: after a failed run, kill what is left in them first.
	for _ in $(seq 50); do
		left=$(cat /sys/fs/cgroup/*/"$sub"/*/cgroup.procs /sys/fs/cgroup/"$sub"/*/cgroup.procs 2>/dev/null || true)
		[ -z "$left" ] && break
		kill -9 $left 2>/dev/null || true
		sleep 0.1
	done
	for d in /sys/fs/cgroup/*/"$sub" /sys/fs/cgroup/"$sub"; do
		[ -d "$d" ] && { find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null; rmdir "$d" 2>/dev/null; }
	done
	ip link del dmsbench0 2>/dev/null || true
	nft delete table inet dmsbench 2>/dev/null || true
	nft delete table bridge dmsbench 2>/dev/null || true
	rm -rf "$W"
}
trap cleanup EXIT
mkdir -p "$W/policies"
cp bench/policy.toml "$W/policies/"
# Its own bridge, pool (large enough for the 1000-domain run; no traffic is sent) and tables.
printf '[network]\nbridge = "dmsbench0"\npool = "10.214.0.0/20"\nnft_table = "dmsbench"\nlink_prefix = "dmsbv"\n' >"$W/dmsd.toml"
target/release/dmsd --config "$W/dmsd.toml" --state-dir "$W/state" --policy-dir "$W/policies" --socket "$W/sock" \
	--cgroup-subtree "$sub" --system-bus no 2>"$W/dmsd.log" &
pid=$!
for _ in $(seq 100); do [ -S "$W/sock" ] && break; sleep 0.1; done
target/release/dms-bench --socket "$W/sock" --dmsd-pid "$pid" --n "$N" --domains "${DOMAINS:-1000}" \
	--idle-n "${N_IDLE:-50}" --idle-pause-ms "${PAUSE_MS:-50}" >"$W/dms.out"
bench/peers/run.sh all >"$W/peers.out"
cat "$W/dms.out" "$W/peers.out" | awk -F'\t' -v pause="${PAUSE_MS:-50}" '
	/^#/ { split($0, a, " "); extra[a[2]] = a[3]; next }
	{ med[$1] = $2; p90[$1] = $3; cpu[$1] = (NF >= 5) ? $5 : "" }
	function row(name, base) {
		if (!(name in med)) return
		r = (med[name] != "NA" && med[base] > 0) ? sprintf("%.2fx", med[name] / med[base]) : "-"
		c = (cpu[name] != "") ? sprintf("%8s", cpu[name]) : ""
		printf "  %-20s %10s %10s   %-7s %s\n", name, med[name], p90[name], r, c
	}
	END {
		print "start a limited /bin/true and reap it (peers without namespaces): median ms, p90 ms, peer time / dmsd time (>1: dmsd faster),"
		print "  and for starts the machine'"'"'s busy CPU per start in ms (all processes and kernel workers; steadier than wall time on a busy VM)"
		n = split("dms-start dms-start:create dms-start:run dms-start:destroy floor-start floor-start-exec crun-start runc-start cgtools-start", s, " ")
		for (i = 1; i <= n; i++) row(s[i], "dms-start")
		print "start an isolated (pid, mount, uts, ipc, net, cgroup namespaces) limited /bin/true and reap it;"
		print "  dms-run-once: one RunOnce call (create, run, wait, destroy), as one `crun run` does it; dms-start: the same in three calls"
		n = split("dms-run-once dms-start dms-run-once-nonet dms-start-nonet floor-start-ns floor-start-ns-exec crun-start-ns", s, " ")
		for (i = 1; i <= n; i++) row(s[i], "dms-run-once")
		if (med["dms-run-once"] > 0 && med["floor-start-ns-exec"] != "NA" && med["crun-start-ns"] != "NA") {
			b = med["dms-run-once"]
			print "  issue 3 targets, NAT start as one RunOnce call from a running client (as pam_dms and spank_dms call dmsd):"
			printf "    raw floor, one C program per start (ARCHITECTURE.md: 2.3 ms): %.2fx (target >= 0.50x, i.e. within 2x)\n", med["floor-start-ns-exec"] / b
			printf "    raw floor inside one long-lived process (ARCHITECTURE.md: 1.36 ms): %.2fx\n", med["floor-start-ns"] / b
			printf "    crun run (ARCHITECTURE.md: 7.3 ms): %.2fx (target >= 2x)\n", med["crun-start-ns"] / b
		}
		print "the same isolated start after an unmeasured " pause " ms pause each, in which the machine goes idle (a lone login or job)"
		n = split("dms-start-idle floor-start-ns-idle crun-start-ns-idle", s, " ")
		for (i = 1; i <= n; i++) row(s[i], "dms-start-idle")
		print "run /bin/true inside a running domain (its cgroups and namespaces) and reap it"
		n = split("dms-exec floor-exec nsenter-exec crun-exec", s, " ")
		for (i = 1; i <= n; i++) row(s[i], "dms-exec")
		print "freeze + thaw a domain of 100 processes: median ms, p90 ms, peer time / dmsd time"
		n = split("dms-freeze-thaw floor-freeze-thaw crun-freeze-thaw runc-freeze-thaw", s, " ")
		for (i = 1; i <= n; i++) row(s[i], "dms-freeze-thaw")
		printf "%s domains: create all %s s, destroy all %s s; dmsd RSS %s MB before, %s MB with them; kernel %s kB per domain\n",
			extra["domains"], extra["create_all_s"], extra["destroy_all_s"], extra["dmsd_rss_mb_before"],
			extra["dmsd_rss_mb_with_domains"], extra["kernel_kb_per_domain"]
	}'
