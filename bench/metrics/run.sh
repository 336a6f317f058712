#!/bin/bash
# Cost of monitoring: one /metrics scrape of N (default 1000) domains, against the floor of
# reading the same stat files with pread from kept-open fds in one C loop; dmsd's idle CPU at a
# 15 s scrape interval; exposition size and series per domain. cAdvisor, the usual peer, is not
# packaged in Debian 12 and cannot be built here (its Go modules come from proxy.golang.org,
# which this machine cannot reach), so its published figure is quoted instead.
# Targets: <= 20 ms CPU per scrape of 1000 domains, <= 1.2x the raw loop; idle < 0.5% of a core.
# usage: sudo bench/metrics/run.sh     env: DOMAINS=1000 SCRAPES=30 IDLE_SECS=60 DMS_BIN=target/release
set -euo pipefail
cd "$(dirname "$0")/../.."
[ "$(id -u)" = 0 ] || { echo "bench/metrics/run.sh: run as root" >&2; exit 1; }
command -v curl >/dev/null || { echo "bench/metrics/run.sh: curl missing" >&2; exit 1; }
DOMAINS=${DOMAINS:-1000}
SCRAPES=${SCRAPES:-30}
IDLE_SECS=${IDLE_SECS:-60}
B=${DMS_BIN:-target/release}
[ -x "$B/dmsd" ] || cargo build --release --bins 2>&1 | tail -1 >&2
W=$(mktemp -d /tmp/dms-metrics-bench-XXXXXX)
sub=dms-metrics-bench-$$
port=19477
ctl() { "$B/dmsctl" --socket "$W/sock" "$@"; }
cleanup() {
	if [ -n "${pid:-}" ]; then
		for d in $(ctl --json domain list 2>/dev/null | sed -n 's/.*"name": "\([^"]*\)".*/\1/p'); do
			ctl domain destroy "$d" >/dev/null 2>&1 || true
		done
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	fi
	for d in /sys/fs/cgroup/*/"$sub" /sys/fs/cgroup/"$sub"; do
		[ -d "$d" ] && { find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null; rmdir "$d" 2>/dev/null; }
	done
	rm -f "/run/$sub-pam.sock"
	rm -rf "$W"
}
trap cleanup EXIT
gcc -O2 -o "$W/rawloop" bench/metrics/rawloop.c
mkdir -p "$W/policies"
cat >"$W/policies/bench.toml" <<'POL'
[vo.dmsbench]
granularity = "job"
network = { mode = "none" }
cpu = { limit = "50%" }
memory = { limit = "256M" }
pids = 1024
POL
cat >"$W/dmsd.toml" <<CFG
[metrics]
listen = "127.0.0.1:$port"
[accounts]
grid_mapfile = "$W/grid-mapfile"
group_mapfile = "$W/groupmapfile"
nss_dir = "$W/nss"
pam_socket = "/run/$sub-pam.sock"
[usage]
dir = "$W/usage"
CFG
"$B/dmsd" --config "$W/dmsd.toml" --state-dir "$W/state" --policy-dir "$W/policies" --socket "$W/sock" \
	--cgroup-subtree "$sub" --system-bus no 2>"$W/dmsd.log" &
pid=$!
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
echo "creating $DOMAINS domains..." >&2
for i in $(seq "$DOMAINS"); do ctl domain create --user nobody --vo dmsbench --job "j$i" >/dev/null; done
cpu_ticks() { awk '{print $14 + $15}' "/proc/$pid/stat"; }
hz=$(getconf CLK_TCK)
median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }

# Warm up (opens every domain's files once), then measure.
curl -s -o /dev/null "127.0.0.1:$port/metrics"
for accept in text openmetrics; do
	h=""
	[ $accept = openmetrics ] && h="Accept: application/openmetrics-text;version=1.0.0"
	t0=$(cpu_ticks)
	for _ in $(seq "$SCRAPES"); do
		curl -s -o /dev/null -H "$h" -w '%{time_total}\n' "127.0.0.1:$port/metrics"
	done >"$W/wall.$accept"
	t1=$(cpu_ticks)
	eval "cpu_$accept=\$(awk -v a=$t0 -v b=$t1 -v n=$SCRAPES -v hz=$hz 'BEGIN {printf \"%.2f\", (b - a) * 1000 / hz / n}')"
	eval "wall_$accept=\$(awk '{print \$1 * 1000}' $W/wall.$accept | median)"
done
curl -s -o "$W/scrape.txt" "127.0.0.1:$port/metrics"
size=$(stat -c %s "$W/scrape.txt")
first=dmsbench.nobody.jobj1
one=$(grep -c "domain=\"$first\"" "$W/scrape.txt" || true)
one_bytes=$({ grep "domain=\"$first\"" "$W/scrape.txt" || true; } | wc -c)

# The same files, read by the floor.
for f in /proc/"$pid"/fd/*; do readlink "$f"; done | grep "^/sys/fs/cgroup/.*/$sub/" >"$W/files" || true
read -r nfiles raw_cpu raw_wall raw_bytes < <("$W/rawloop" "$SCRAPES" <"$W/files")

# Idle: IDLE_SECS of a 15 s scrape interval.
t0=$(cpu_ticks)
end=$((SECONDS + IDLE_SECS))
while [ $SECONDS -lt $end ]; do
	curl -s -o /dev/null "127.0.0.1:$port/metrics"
	sleep 15
done
t1=$(cpu_ticks)
idle=$(awk -v a=$t0 -v b=$t1 -v s=$IDLE_SECS -v hz=$hz 'BEGIN {printf "%.3f", (b - a) / hz / s * 100}')
rss=$(awk '/VmRSS/ {print $2 / 1024}' "/proc/$pid/status")

printf '\n%-44s %10s %10s\n' "one scrape of $DOMAINS domains" "CPU ms" "wall ms"
printf '%-44s %10s %10s\n' "dmsd /metrics (Prometheus text 0.0.4)" "$cpu_text" "$wall_text"
printf '%-44s %10s %10s\n' "dmsd /metrics (OpenMetrics)" "$cpu_openmetrics" "$wall_openmetrics"
printf '%-44s %10s %10s\n' "raw pread loop over the same $nfiles files" "$raw_cpu" "$raw_wall"
printf '%-44s %10s\n' "cAdvisor (published: 29 containers, 15 s)" "7-15% of a core"
awk -v d="$cpu_text" -v o="$cpu_openmetrics" -v r="$raw_cpu" 'BEGIN {
	printf "\nratio dmsd/raw: text %.2fx, openmetrics %.2fx (target <= 1.2x); CPU per scrape target <= 20 ms: %s\n",
		d / r, o / r, (d <= 20 ? "met" : "NOT met") }'
echo "exposition: $size bytes; per domain $one series, $one_bytes bytes; $nfiles files kept open ($((nfiles / DOMAINS)) per domain)"
echo "idle dmsd with $DOMAINS domains, scraped every 15 s for ${IDLE_SECS} s: ${idle}% of a core (target < 0.5%); RSS ${rss} MB"
