#!/bin/bash
# Peer baselines for the DMS benchmarks: the raw floor, crun, runc and libcgroup tools.
#
# usage: bench/peers/run.sh [start|freeze|start-ns|start-idle|exec|all]        (default: all)
#   env N=200          iterations per peer (plus one unmeasured warm-up run for CLI peers)
#   env N_IDLE=50 PAUSE_MS=50   starts and the unmeasured pause before each, for start-idle
#   env DMS_BENCH_BIN  directory for the built helpers (default: a temp dir, removed on exit)
#
# Prints one line per peer on stdout, nothing else (diagnostics go to stderr):
#   <name>\t<median_ms>\t<p90_ms>\t<n>
# start:  floor-start  floor-start-exec  crun-start  runc-start  cgtools-start
#         (an isolated /bin/true with cpu 50%, memory 256M, pids 64, started and reaped)
# freeze: floor-freeze-thaw  crun-freeze-thaw  runc-freeze-thaw
#         (freeze + wait + thaw + wait of a group of 100 sleeping processes)
# start-ns: floor-start-ns  floor-start-ns-exec  crun-start-ns
#         (as start, but /bin/true also gets new pid, mount, uts, ipc, net and cgroup namespaces,
#         / rslave, a fresh /proc and a hostname; the floor unshares the cgroup namespace after
#         joining the groups, so its root is the domain's group, as crun does)
# start-idle: floor-start-ns-idle  crun-start-ns-idle
#         (start-ns, each start after a pause in which the machine goes idle, as a lone login
#         or job on a quiet node meets it)
# exec:   floor-exec  nsenter-exec  crun-exec
#         (run /bin/true inside a running limited domain whose init holds those six namespaces:
#         join its cgroups, enter its namespaces, reap. floor-exec: setns(pidfd) + clone + exec in
#         one long-lived C program; nsenter-exec: `cgexec -g GROUP nsenter -t INIT -p -m -u -i -n
#         -C /bin/true` against an `unshare --fork --pid --mount --uts --ipc --net --cgroup
#         --mount-proc` init in a limited group; crun-exec: `crun exec` into a container run with
#         those namespaces. Setting up and removing the domain is not measured.)
# all:    start, freeze, start-ns, start-idle, exec, in that order.
# A peer that is not installed or fails prints "<name>\tNA\tNA\t0" and the reason on stderr.
# crun 1.8 refuses cgroup v1 hybrid hosts, so it runs in a private mount namespace with the
# `unified` mount hidden (one namespace around the whole loop; its cost is not measured).
# Everything created is named dms-bench-* and removed on exit, also on failure or Ctrl-C.
# No network traffic: the new network namespaces only hold a loopback device that stays down.
set -euo pipefail

prog=${0##*/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
self=$here/$prog
export N=${N:-200}

log() { echo "$prog: $*" >&2; }
na() { # na NAME REASON
	printf '%s\tNA\tNA\t0\n' "$1"
	log "$1: $2"
}

cg_v2() { [[ -f /sys/fs/cgroup/cgroup.controllers ]]; }

# Run "$@" in a private mount namespace where the hybrid cgroup2 mount is hidden (crun needs it).
in_crun_ns() {
	unshare -m --propagation private -- bash -c '
		if mountpoint -q /sys/fs/cgroup/unified; then
			umount -l /sys/fs/cgroup/unified &&
				mount -t tmpfs dms_bench_tmp /sys/fs/cgroup/unified || exit 125
		fi
		exec "$@"' bash "$@"
}

# Path of the pids.current file for an absolute cgroupsPath.
pids_current() {
	if cg_v2; then echo "/sys/fs/cgroup$1/pids.current"; else echo "/sys/fs/cgroup/pids$1/pids.current"; fi
}

# ---- freeze measurement for one runtime (runs inside the crun namespace for crun) ----------
# usage: run.sh __freeze RUNTIME   (internal; needs DMS_BENCH_W and DMS_BENCH_TAG from the parent)
freeze_peer() {
	# Globals on purpose: the EXIT trap runs after this function has returned.
	rt=$1 w=$DMS_BENCH_W tag=$DMS_BENCH_TAG
	id=dms-bench-$rt-fz-$tag state=$w/state-$rt cgp=/dms-bench-$rt-fz-$tag
	local cur i
	# shellcheck disable=SC2317  # invoked by trap
	fz_cleanup() {
		"$rt" --root "$state" resume "$id" >/dev/null 2>&1 || true
		"$rt" --root "$state" kill "$id" KILL >/dev/null 2>&1 || true
		"$rt" --root "$state" delete -f "$id" >/dev/null 2>&1 || true
	}
	trap fz_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
	if ! "$rt" --root "$state" run -d -b "$w/bundle-$rt-fz" "$id" </dev/null >"$w/$rt-fz.log" 2>&1; then
		log "$rt run -d failed: $(tail -3 "$w/$rt-fz.log")"
		return 1
	fi
	cur=$(pids_current "$cgp")
	for ((i = 0; i < 1000; i++)); do
		[[ -r $cur && $(<"$cur") -ge 100 ]] && break
		sleep 0.01
	done
	if [[ ! -r $cur || $(<"$cur") -lt 100 ]]; then
		log "$rt: container did not reach 100 processes ($cur: $(cat "$cur" 2>&1))"
		return 1
	fi
	"$w/bin/timeit" "$rt-freeze-thaw" -- "$rt" --root "$state" pause "$id" \
		--- "$rt" --root "$state" resume "$id"
}

# ---- exec measurements (internal; need DMS_BENCH_W and DMS_BENCH_TAG from the parent) ------
# usage: run.sh __exec crun     (runs inside the crun namespace)
crun_exec_peer() {
	# Globals on purpose: the EXIT trap runs after this function has returned.
	id=dms-bench-crun-x-$DMS_BENCH_TAG state=$DMS_BENCH_W/state-crun
	local w=$DMS_BENCH_W
	# shellcheck disable=SC2317  # invoked by trap
	cx_cleanup() {
		crun --root "$state" kill "$id" KILL >/dev/null 2>&1 || true
		crun --root "$state" delete -f "$id" >/dev/null 2>&1 || true
	}
	trap cx_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
	if ! crun --root "$state" run -d -b "$w/bundle-crun-x" "$id" </dev/null >"$w/crun-x.log" 2>&1; then
		log "crun run -d failed: $(tail -3 "$w/crun-x.log")"
		return 1
	fi
	"$w/bin/timeit" crun-exec -- crun --root "$state" exec "$id" /bin/true
}

# rmdir_tree DIR — remove a cgroup and its children, killing what is left in them; retries
# while killed tasks are still leaving.
rmdir_tree() {
	local i left
	for ((i = 0; i < 100; i++)); do
		[[ -d $1 ]] || return 0
		mapfile -t left < <(find "$1" -name cgroup.procs -exec cat {} + 2>/dev/null)
		[[ ${#left[@]} -eq 0 ]] || kill -KILL "${left[@]}" 2>/dev/null || true
		find "$1" -depth -type d -exec rmdir {} \; 2>/dev/null || true
		[[ -d $1 ]] || return 0
		sleep 0.02
	done
	log "cannot remove cgroup $1"
	return 1
}

# usage: run.sh __exec nsenter
nsenter_exec_peer() {
	# Globals on purpose: the EXIT trap runs after this function has returned.
	grp=dms-bench-nsx-$DMS_BENCH_TAG holder='' init='' dirs=()
	local ctl d i
	# shellcheck disable=SC2317  # invoked by trap
	nx_cleanup() {
		local d
		[[ -z $init ]] || kill -KILL "$init" 2>/dev/null || true
		if [[ -n $holder ]]; then
			kill -KILL "$holder" 2>/dev/null || true
			wait "$holder" 2>/dev/null || true
		fi
		for d in "${dirs[@]}"; do rmdir_tree "$d" || true; done
	}
	trap nx_cleanup EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM HUP
	if cg_v2; then
		ctl=cpu,memory,pids
		d=/sys/fs/cgroup/cgroup.subtree_control
		[[ $(<"$d") == *cpu*memory*pids* ]] || echo "+cpu +memory +pids" >"$d"
		d=/sys/fs/cgroup/$grp
		mkdir "$d" && dirs+=("$d")
		echo "50000 100000" >"$d/cpu.max"
		echo 268435456 >"$d/memory.max"
		echo 64 >"$d/pids.max"
	else
		ctl=cpu,cpuacct,memory,pids
		for i in ${ctl//,/ }; do
			d=/sys/fs/cgroup/$i/$grp
			[[ -d $d ]] && continue # co-mounted with one before
			mkdir "$d" && dirs+=("$d")
		done
		echo 100000 >"/sys/fs/cgroup/cpu/$grp/cpu.cfs_period_us"
		echo 50000 >"/sys/fs/cgroup/cpu/$grp/cpu.cfs_quota_us"
		echo 268435456 >"/sys/fs/cgroup/memory/$grp/memory.limit_in_bytes"
		echo 64 >"/sys/fs/cgroup/pids/$grp/pids.max"
	fi
	# The init: joins the groups, then unshare (which forks it as pid 1) sets the hostname.
	(
		for d in "${dirs[@]}"; do echo "$BASHPID" >"$d/cgroup.procs"; done
		exec unshare --fork --kill-child --pid --mount --uts --ipc --net --cgroup --mount-proc \
			--propagation slave /bin/sh -c 'hostname dms-bench && exec sleep 1000'
	) </dev/null &
	holder=$!
	for ((i = 0; i < 500; i++)); do
		init=$(cat "/proc/$holder/task/$holder/children" 2>/dev/null) || true
		init=${init%% *}
		[[ -n $init && $(cat "/proc/$init/comm" 2>/dev/null) == sleep ]] && break
		sleep 0.01
	done
	if [[ -z $init || $(cat "/proc/$init/comm" 2>/dev/null) != sleep ]]; then
		log "the unshare init did not start"
		return 1
	fi
	"$DMS_BENCH_W/bin/timeit" nsenter-exec -- \
		cgexec -g "$ctl:$grp" nsenter -t "$init" -p -m -u -i -n -C /bin/true
}

case ${1:-} in
__freeze)
	freeze_peer "$2"
	exit
	;;
__exec)
	if [[ $2 == crun ]]; then crun_exec_peer; else nsenter_exec_peer; fi
	exit
	;;
esac

# ---- main ----------------------------------------------------------------------------------
mode=${1:-all}
case $mode in
start | freeze | start-ns | start-idle | exec | all) ;;
-h | --help)
	sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 0
	;;
*)
	log "usage: $prog [start|freeze|start-ns|start-idle|exec|all]"
	exit 2
	;;
esac
[[ $N =~ ^[1-9][0-9]*$ ]] || {
	log "N must be a positive integer"
	exit 2
}
[[ $(id -u) -eq 0 ]] || {
	log "must run as root (creates cgroups and containers)"
	exit 1
}

W=$(mktemp -d /tmp/dms-bench-peers.XXXXXX)
chmod 0755 "$W"
export DMS_BENCH_W=$W DMS_BENCH_TAG=$$

# shellcheck disable=SC2317  # invoked by trap
cleanup() {
	local rt id d
	trap - INT TERM HUP
	for rt in crun runc; do
		[[ -d $W/state-$rt ]] || continue
		for d in "$W/state-$rt"/*/; do
			[[ -d $d ]] || continue
			id=$(basename "$d")
			log "cleanup: removing leftover $rt container $id"
			if [[ $rt == crun ]]; then
				in_crun_ns crun --root "$W/state-crun" delete -f "$id" >/dev/null 2>&1 || true
			else
				runc --root "$W/state-runc" delete -f "$id" >/dev/null 2>&1 || true
			fi
		done
	done
	# Leftover cgroups of this run (runtimes and cgtools), deepest first.
	# (-TAG at the end or before -ITERATION only, so another run's groups are never matched)
	for d in /sys/fs/cgroup/{*/,}dms-bench-*-"$DMS_BENCH_TAG"{,-*}; do
		[[ -d $d ]] || continue
		log "cleanup: removing leftover cgroup $d"
		rmdir_tree "$d" || true
	done
	rm -rf "${W:?}" # DMS_BENCH_BIN, if given, is only symlinked from here and is kept
}
cpid=
# shellcheck disable=SC2317  # invoked by trap
on_signal() {
	if [[ -n $cpid ]]; then
		kill -TERM -- "-$cpid" 2>/dev/null || true
		wait "$cpid" 2>/dev/null || true
	fi
	exit "$1"
}
trap cleanup EXIT
trap 'on_signal 130' INT
trap 'on_signal 143' TERM HUP
set -m

bin=${DMS_BENCH_BIN:-$W/bin}
"$here/build.sh" "$bin" >/dev/null 2>"$W/build.log" || {
	cat "$W/build.log" >&2
	log "building floor/timeit failed"
	exit 1
}
[[ $bin == "$W/bin" ]] || ln -s "$bin" "$W/bin"

# ---- OCI bundles ---------------------------------------------------------------------------
rootfs=$W/rootfs
copy_with_libs() { # copy_with_libs HOST-BINARY NAME-IN-ROOTFS-BIN
	local src lib
	src=$(type -P "$1") || return 1
	cp -L "$src" "$rootfs/bin/$2"
	while read -r lib; do
		[[ -n $lib && -e $rootfs$lib ]] && continue
		mkdir -p "$rootfs$(dirname "$lib")"
		cp -L "$lib" "$rootfs$lib"
	done < <(ldd "$src" 2>/dev/null | grep -o '/[^ ]*' || true)
}
make_rootfs() {
	mkdir -p "$rootfs"/{bin,proc,dev,sys,tmp,etc}
	copy_with_libs true true && copy_with_libs sh sh && copy_with_libs sleep sleep &&
		copy_with_libs seq seq
}

# make_bundle DIR CGROUPS-PATH PIDS-LIMIT ARGS-JSON [NAMESPACES-JSON] — the `crun spec`
# defaults plus limits.
make_bundle() {
	local dir=$1 cgpath=$2 pids=$3 args=$4
	local ns=${5:-'[{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                   {"type": "mount"}]'}
	mkdir -p "$dir"
	cat >"$dir/config.json" <<EOF
{
  "ociVersion": "1.0.0",
  "process": {
    "terminal": false,
    "user": {"uid": 0, "gid": 0},
    "args": $args,
    "env": ["PATH=/bin", "TERM=dumb"],
    "cwd": "/",
    "capabilities": {
      "bounding": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "effective": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "inheritable": [],
      "permitted": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"],
      "ambient": ["CAP_AUDIT_WRITE", "CAP_KILL", "CAP_NET_BIND_SERVICE"]
    },
    "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
    "noNewPrivileges": true
  },
  "root": {"path": "$rootfs", "readonly": true},
  "hostname": "dms-bench",
  "mounts": [
    {"destination": "/proc", "type": "proc", "source": "proc"},
    {"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
     "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]},
    {"destination": "/dev/pts", "type": "devpts", "source": "devpts",
     "options": ["nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"]},
    {"destination": "/dev/shm", "type": "tmpfs", "source": "shm",
     "options": ["nosuid", "noexec", "nodev", "mode=1777", "size=65536k"]},
    {"destination": "/dev/mqueue", "type": "mqueue", "source": "mqueue",
     "options": ["nosuid", "noexec", "nodev"]},
    {"destination": "/sys", "type": "sysfs", "source": "sysfs",
     "options": ["nosuid", "noexec", "nodev", "ro"]},
    {"destination": "/sys/fs/cgroup", "type": "cgroup", "source": "cgroup",
     "options": ["nosuid", "noexec", "nodev", "relatime", "ro"]}
  ],
  "linux": {
    "cgroupsPath": "$cgpath",
    "resources": {
      "devices": [{"allow": false, "access": "rwm"}],
      "cpu": {"quota": 50000, "period": 100000},
      "memory": {"limit": 268435456},
      "pids": {"limit": $pids}
    },
    "namespaces": $ns,
    "maskedPaths": ["/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys",
                    "/proc/latency_stats", "/proc/timer_list", "/proc/timer_stats",
                    "/proc/sched_debug", "/sys/firmware", "/proc/scsi"],
    "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"]
  }
}
EOF
}

have_rt() { command -v "$1" >/dev/null 2>&1; }
if have_rt crun || have_rt runc; then
	make_rootfs || log "could not build the container rootfs"
	# shellcheck disable=SC2016  # $(seq 99) is expanded by the container's shell
	fz_args='["/bin/sh", "-c", "for i in $(seq 99); do sleep 1000 & done; wait"]'
	for rt in crun runc; do
		make_bundle "$W/bundle-$rt" "/dms-bench-$rt-start-$$" 64 '["/bin/true"]'
		make_bundle "$W/bundle-$rt-fz" "/dms-bench-$rt-fz-$$" 1024 "$fz_args"
		mkdir -p "$W/state-$rt"
	done
	ns6='[{"type": "pid"}, {"type": "network"}, {"type": "ipc"}, {"type": "uts"},
                   {"type": "mount"}, {"type": "cgroup"}]'
	make_bundle "$W/bundle-crun-ns" "/dms-bench-crun-startns-$$" 64 '["/bin/true"]' "$ns6"
	make_bundle "$W/bundle-crun-x" "/dms-bench-crun-x-$$" 64 '["/bin/sleep", "1000"]' "$ns6"
fi

# ---- peers ---------------------------------------------------------------------------------
# report NAME COMMAND... — run a measuring command; print its line or an NA line.
# Each measurement runs as a background job in its own process group (set -m), so a signal to
# this script can stop the whole job (timeit, runtimes, containers' helpers) before cleanup.
report() {
	local name=$1 out rc=0
	shift
	"$@" >"$W/out" &
	cpid=$!
	wait "$cpid" || rc=$?
	cpid=
	out=$(<"$W/out")
	if [[ $rc -eq 0 && $out == "$name"$'\t'* ]]; then
		printf '%s\n' "$out"
	else
		na "$name" "failed (exit $rc)"
	fi
}

peer_start_runtime() { # crun|runc
	local rt=$1 id=dms-bench-$1-start-$$
	local cmd=("$W/bin/timeit" "$rt-start" -- "$rt" --root "$W/state-$rt" run -b "$W/bundle-$rt" "$id")
	if [[ $rt == crun ]]; then
		in_crun_ns "${cmd[@]}"
	else
		"${cmd[@]}"
	fi
}

# libcgroup 2.0.2's cgdelete removes the group from the first listed controller only (when
# cpu and cpuacct are separate mounts, as here), so it is called once per controller.
peer_start_cgtools() {
	local g=dms-bench-cg-$$-{} ctl
	if cg_v2; then
		ctl=cpu,memory,pids
		"$W/bin/timeit" cgtools-start -- cgcreate -g "$ctl:$g" \
			--- cgset -r "cpu.max=50000 100000" -r memory.max=268435456 -r pids.max=64 "$g" \
			--- cgexec -g "$ctl:$g" /bin/true \
			--- cgdelete -g "cpu:$g" --- cgdelete -g "memory:$g" --- cgdelete -g "pids:$g"
	else
		ctl=cpu,cpuacct,memory,pids
		"$W/bin/timeit" cgtools-start -- cgcreate -g "$ctl:$g" \
			--- cgset -r cpu.cfs_period_us=100000 -r cpu.cfs_quota_us=50000 \
			-r memory.limit_in_bytes=268435456 -r pids.max=64 "$g" \
			--- cgexec -g "$ctl:$g" /bin/true \
			--- cgdelete -g "cpu:$g" --- cgdelete -g "cpuacct:$g" \
			--- cgdelete -g "memory:$g" --- cgdelete -g "pids:$g"
	fi
}

run_start() {
	report floor-start "$W/bin/floor" start
	# The same floor as a fresh process per start (the one-shot figure of ARCHITECTURE.md §6).
	report floor-start-exec "$W/bin/timeit" floor-start-exec -- "$W/bin/floor" start 1
	for rt in crun runc; do
		if have_rt "$rt"; then
			report "$rt-start" peer_start_runtime "$rt"
		else
			na "$rt-start" "$rt not installed (Debian package: $rt)"
		fi
	done
	if have_rt cgcreate && have_rt cgset && have_rt cgexec && have_rt cgdelete; then
		report cgtools-start peer_start_cgtools
	else
		na cgtools-start "cgcreate/cgset/cgexec/cgdelete not installed (Debian package: cgroup-tools)"
	fi
}

run_start_ns() {
	report floor-start-ns "$W/bin/floor" start-ns
	report floor-start-ns-exec "$W/bin/timeit" floor-start-ns-exec -- "$W/bin/floor" start-ns 1
	if have_rt crun; then
		report crun-start-ns in_crun_ns "$W/bin/timeit" crun-start-ns -- \
			crun --root "$W/state-crun" run -b "$W/bundle-crun-ns" "dms-bench-crun-startns-$$"
	else
		na crun-start-ns "crun not installed (Debian package: crun)"
	fi
}

# The start-ns peers again, each start after an unmeasured pause (PAUSE_MS, default 50 ms; N_IDLE
# starts, default 50) in which the machine goes idle, as a lone login or job on a quiet node.
run_start_idle() {
	local idle=(env PAUSE_MS="${PAUSE_MS:-50}" N="${N_IDLE:-50}")
	report floor-start-ns-idle renamed floor-start-ns-idle "${idle[@]}" "$W/bin/floor" start-ns
	if have_rt crun; then
		report crun-start-ns-idle in_crun_ns "${idle[@]}" "$W/bin/timeit" crun-start-ns-idle -- \
			crun --root "$W/state-crun" run -b "$W/bundle-crun-ns" "dms-bench-crun-startidle-$$"
	else
		na crun-start-ns-idle "crun not installed (Debian package: crun)"
	fi
}

# Runs a peer and gives its stats line another name (a peer that names its line itself).
renamed() {
	local name=$1 out
	shift
	out=$("$@") || return
	printf '%s\t%s\n' "$name" "${out#*$'\t'}"
}

run_exec() {
	report floor-exec "$W/bin/floor" exec
	if have_rt unshare && have_rt nsenter && have_rt cgexec; then
		report nsenter-exec "$self" __exec nsenter
	else
		na nsenter-exec "unshare/nsenter (util-linux) or cgexec (Debian package: cgroup-tools) not installed"
	fi
	if have_rt crun; then
		report crun-exec in_crun_ns "$self" __exec crun
	else
		na crun-exec "crun not installed (Debian package: crun)"
	fi
}

run_freeze() {
	report floor-freeze-thaw "$W/bin/floor" freeze
	if have_rt crun; then
		report crun-freeze-thaw in_crun_ns "$self" __freeze crun
	else
		na crun-freeze-thaw "crun not installed (Debian package: crun)"
	fi
	if have_rt runc; then
		report runc-freeze-thaw "$self" __freeze runc
	else
		na runc-freeze-thaw "runc not installed (Debian package: runc)"
	fi
}

case $mode in
start) run_start ;;
freeze) run_freeze ;;
start-ns) run_start_ns ;;
start-idle) run_start_idle ;;
exec) run_exec ;;
all)
	run_start
	run_freeze
	run_start_ns
	run_start_idle
	run_exec
	;;
esac
