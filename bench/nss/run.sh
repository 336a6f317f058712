#!/bin/bash
# getpwnam/getpwuid through libnss_dms.so.2 versus glibc's `files` module, N entries each.
#
# usage: sudo bench/nss/run.sh
#   env N=10000          entries (dmsbench00001.., uids 60001..60000+N)
#   env ROUNDS=7         rounds per kind of call; the median is reported
#   env ITERS=1000       calls per round (random entries, fixed seed)
#   env CARGO_TARGET_DIR where cargo builds (default: <repo>/target)
#
# Builds the module (`cargo build --release -p nss-dms`) and bench.c, then runs the same
# program in two private mount namespaces (nothing on the host changes; everything lives in a
# dms-bench-* temp dir removed on exit):
#   files: nsswitch `passwd: files`, the host's /etc/passwd plus the N entries bound over
#          /etc/passwd;
#   dms:   nsswitch `passwd: files dms`, the host's /etc/passwd, the N entries in the dms
#          passwd file bound over the module's directory (created if missing, left in place),
#          the module found through a private ld.so cache bound over /etc/ld.so.cache.
# Prints the median ns per call for hits and misses in both worlds and the ratio dms/files;
# the target is dms within 2x of files on hits.
set -euo pipefail

prog=${0##*/}
here=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
repo=$(cd "$here/../.." && pwd)
N=${N:-10000}
ROUNDS=${ROUNDS:-7}
ITERS=${ITERS:-1000}
target=${CARGO_TARGET_DIR:-$repo/target}
nss_dir=${DMS_NSS_DIR:-/var/lib/dms/nss}

log() { echo "$prog: $*" >&2; }
[ "$(id -u)" = 0 ] || { log "run as root (mount namespaces)"; exit 1; }
for tool in gcc unshare ldconfig cargo; do
	command -v "$tool" >/dev/null 2>&1 || { log "$tool not found"; exit 1; }
done

work=$(mktemp -d /tmp/dms-bench-nss.XXXXXX)
# The mount point is created when missing, and removed again at the end in that case.
made=""
[ -d "$nss_dir" ] || made=$(d=$nss_dir; while [ ! -d "$(dirname "$d")" ]; do d=$(dirname "$d"); done; echo "$d")
trap 'rm -rf "$work"; [ -z "$made" ] || rm -r --one-file-system "$made" 2>/dev/null || true' EXIT

log "building libnss_dms (release) in $target"
(cd "$repo" && CARGO_TARGET_DIR=$target cargo build --release -p nss-dms --quiet)
gcc -O2 -Wall -Wextra -o "$work/bench" "$here/bench.c"

mkdir "$work/lib" "$work/nss" "$work/empty"
cp "$target/release/libnss_dms.so" "$work/lib/libnss_dms.so.2"
printf 'include /etc/ld.so.conf.d/*.conf\n%s\n' "$work/lib" >"$work/ld.so.conf"
# ldconfig always rewrites its aux-cache under /var/cache: give it a private tmpfs.
# shellcheck disable=SC2016 # expanded by the inner sh
unshare -m --propagation private sh -c \
	'mount -t tmpfs -o size=16m,mode=755 dms-bench /var/cache && exec ldconfig -X -i -C "$1" -f "$2"' \
	sh "$work/ld.so.cache" "$work/ld.so.conf"

awk -v n="$N" 'BEGIN { for (i = 1; i <= n; i++)
	printf "dmsbench%05d:*:%d:%d:DMS bench:/home/dmsbench%05d:/bin/sh\n", i, 60000 + i, 60000 + i, i }' \
	>"$work/nss/passwd"
awk -v n="$N" 'BEGIN { for (i = 1; i <= n; i++) printf "dmsbench%05d:*:%d:\n", i, 60000 + i }' \
	>"$work/nss/group"
cat /etc/passwd "$work/nss/passwd" >"$work/passwd.files"
printf 'passwd: files\ngroup: files\n' >"$work/nsswitch.files"
printf 'passwd: files dms\ngroup: files dms\n' >"$work/nsswitch.dms"
[ -d "$nss_dir" ] || mkdir -p "$nss_dir"

# world PASSWD NSSWITCH NSSDIR: runs the benchmark with those bound over the host's files.
world() {
	# shellcheck disable=SC2016 # expanded by the inner sh
	unshare -m --propagation private sh -c '
		mount --bind "$1" /etc/passwd && mount --bind "$2" /etc/nsswitch.conf &&
		mount --bind "$3" "$4" && mount --bind "$5" /etc/ld.so.cache && shift 5 && exec "$@"' \
		sh "$1" "$2" "$3" "$nss_dir" "$work/ld.so.cache" "$work/bench" "$N" "$ROUNDS" "$ITERS"
}

status=0
log "files: $N entries appended to /etc/passwd ($ROUNDS rounds x $ITERS calls per kind)"
world "$work/passwd.files" "$work/nsswitch.files" "$work/empty" >"$work/files.out" ||
	{ log "files: the benchmark failed (see above)"; status=1; }
log "dms: $N entries in $nss_dir/passwd"
world /etc/passwd "$work/nsswitch.dms" "$work/nss" >"$work/dms.out" ||
	{ log "dms: the benchmark failed (see above)"; status=1; }

awk -v n="$N" '
	FNR == NR { files[$1] = $2; next }
	{ dms[$1] = $2 }
	END {
		split("getpwnam_hit getpwuid_hit getpwnam_miss getpwuid_miss", order, " ")
		printf "N=%d, median ns per call (lower is better)\n", n
		printf "%-15s %12s %12s %10s\n", "call", "files", "files+dms", "dms/files"
		worst = 0
		for (i = 1; i <= 4; i++) {
			c = order[i]
			if (!(c in files) || !(c in dms) || files[c] <= 0) {
				printf "%-15s %12s %12s %10s\n", c, c in files ? files[c] : "NA",
					c in dms ? dms[c] : "NA", "NA"
				if (c ~ /hit/) worst = -1
				continue
			}
			r = dms[c] / files[c]
			printf "%-15s %12d %12d %10.3f\n", c, files[c], dms[c], r
			if (c ~ /hit/ && worst >= 0 && r > worst) worst = r
		}
		if (worst < 0)
			print "target: dms within 2x of files on hits: NOT MEASURED"
		else
			printf "target: dms within 2x of files on hits: worst ratio %.3f -> %s\n", worst,
				worst <= 2 ? "MET" : "NOT MET"
	}' "$work/files.out" "$work/dms.out"
exit $status
