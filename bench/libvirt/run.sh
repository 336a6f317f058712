#!/bin/bash
# Guest start and suspend/resume through DMS's libvirt backend, side by side with what sites
# did before DMS (Vmbatch: a full copy of the base image per guest) and with a raw floor.
#
# 1. Guest start up to libvirt state "running" (not the guest's boot), base image of 2 GiB of
#    random data (qcow2; BASE_FORMAT=raw for a raw base), all three guests with the same XML
#    (kernel + initrd of scripts/build-guest.sh, 256 MiB, 1 vCPU, the disk, a contextualization
#    CD-ROM, a serial log file, a memory balloon):
#    a. DMS:   `dmsctl domain create` (qemu-img info of the base, a qcow2 overlay, the
#              contextualization ISO, define + start through a kept-open libvirt connection);
#              timed until the command returns, then checked with `virsh domstate`.
#    b. copy:  `cp --reflink=never` of the base to a per-guest file + `virsh define` +
#              `virsh start` (the CD-ROM is a prebuilt ISO: its creation is not counted here).
#    c. floor: `qemu-img create -f qcow2 -b base` + `virsh create` (transient) by hand.
#    Measured with a warm page cache (the base, qemu, libvirt and the tools cached) and, for a
#    and b, cold: `sync; echo 1 > /proc/sys/vm/drop_caches` before each of those iterations
#    (drops the clean page cache of the whole machine; COLD=0 skips it). Copies are not fsync'ed
#    (cp returns with the data in the page cache, as a batch system's cp would); each copy is
#    deleted and `sync`ed outside the timing, so iterations start clean. A further copy variant
#    fsyncs the copy (`sync FILE`) before defining the guest: the cost of getting it on disk.
#    Also: DMS with a template without contextualization ISO (context = false), and the pieces
#    dmsd runs before define + start (qemu-img info, qemu-img create, xorriso) timed alone.
#    Targets: DMS under 1 s, and at least 10x faster than copying.
# 2. Suspend + resume of a running, idle (booted) guest: `dmsctl domain freeze` + `dmsctl domain
#    thaw` against `virsh suspend` + `virsh resume` of a second guest on the same libvirtd.
#
# Each iteration runs the variants round-robin; one unmeasured warm-up round comes first.
# Setup (release build, guest kernel/initramfs, the base image, a private libvirtd) is outside
# the timing. Everything lives in a temp dir under $TMPDIR or /tmp (the image needs ~2 GiB, the
# copies another 2 GiB at a time; not tmpfs for meaningful copies) and a private libvirtd
# (scripts/libvirtd.sh); all is removed on exit. Guests are named dms-dmsbench*.nobody (DMS) and
# dmsbench-* (by hand). No networking. Takes ~4.5 min with N=10 on 2 cores.
#
# usage: sudo bench/libvirt/run.sh    env: N=10 COLD=1 BASE_FORMAT=qcow2 DMS_BIN=target/release
set -euo pipefail
cd "$(dirname "$0")/../.."
export LC_ALL=C
prog=bench/libvirt/run.sh
die() { echo "$prog: $*" >&2; exit 1; }
[ "$(id -u)" = 0 ] || die "run as root"
for b in virsh qemu-img qemu-system-x86_64 xorriso /usr/sbin/libvirtd; do
	command -v "$b" >/dev/null || die "$b missing (scripts/deps.sh test installs libvirt, QEMU, xorriso)"
done
N=${N:-10}
COLD=${COLD:-1}
FMT=${BASE_FORMAT:-qcow2}
case $FMT in qcow2 | raw) ;; *) die "BASE_FORMAT must be qcow2 or raw" ;; esac
B=${DMS_BIN:-target/release}
if ! "$B/dmsd" --version 2>/dev/null | grep -q libvirt; then
	echo "building the release binaries with the libvirt backend..." >&2
	cargo build --release --features dms/libvirt --bins 2>&1 | tail -1 >&2
	"$B/dmsd" --version | grep -q libvirt || die "$B/dmsd has no libvirt backend"
fi

t_start=$SECONDS
# Not under /var, /etc or /run: libvirtd (and QEMU) see those through overlays
# (scripts/libvirtd.sh), so a file QEMU opens for writing there is copied up into the overlay,
# a 2 GiB copy included, and the console logs never reach the host's view.
TMPROOT=${TMPDIR:-/tmp}
case $(realpath "$TMPROOT")/ in /var/* | /etc/* | /run/*) die "TMPDIR=$TMPROOT: must not be under /var, /etc or /run" ;; esac
W=$(mktemp -d "$TMPROOT/dms-bench-libvirt-XXXXXX")
fstype=$(findmnt -no FSTYPE -T "$W")
[ "$fstype" = tmpfs ] && echo "$prog: warning: $W is on tmpfs: the copies are memory copies" >&2
LV=/tmp/dms-bench-lv-$$
sub=dms-bench-lv-$$
lvup=""
pid=""
ctl() { "$B/dmsctl" --socket "$W/sock" "$@"; }
vsh() { virsh -q -c "$URI" "$@"; }
cleanup() {
	set +e
	if [ -n "$pid" ]; then
		for d in $(ctl --json domain list 2>/dev/null | sed -n 's/.*"name": "\([^"]*\)".*/\1/p'); do
			ctl domain destroy "$d" >/dev/null 2>&1
		done
		kill "$pid" 2>/dev/null && wait "$pid" 2>/dev/null
	fi
	if [ -n "$lvup" ]; then
		for d in $(vsh list --all --name 2>/dev/null | grep '^dms'); do
			vsh destroy "$d" >/dev/null 2>&1
			vsh undefine "$d" >/dev/null 2>&1
		done
	fi
	[ -e "$LV" ] && bash scripts/libvirtd.sh down "$LV"
	for d in /sys/fs/cgroup/*/"$sub" /sys/fs/cgroup/"$sub"; do
		[ -d "$d" ] && { find "$d" -mindepth 1 -depth -type d -exec rmdir {} \; 2>/dev/null; rmdir "$d" 2>/dev/null; }
	done
	rm -f "/run/$sub-pam.sock"
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# --- setup (not timed) ---------------------------------------------------------------------
echo "setup: guest kernel and initramfs, $FMT base image of 2 GiB random data, libvirtd..." >&2
# Retried: its `busybox --list | grep -qx acpid` check under pipefail fails now and then (grep
# exits at the match, busybox may still be writing and gets SIGPIPE).
for try in 1 2 3 4 5; do
	bash scripts/build-guest.sh "$W/guest" >&2 && break
	[ $try = 5 ] && die "scripts/build-guest.sh failed"
done
G=$W/guest
BASE=$W/base.$FMT
dd if=/dev/urandom of="$W/base.raw" bs=64M count=32 iflag=fullblock status=none
if [ "$FMT" = qcow2 ]; then
	qemu-img convert -q -f raw -O qcow2 "$W/base.raw" "$BASE"
	rm -f "$W/base.raw"
fi
sync
bash scripts/libvirtd.sh up "$LV" >&2
lvup=1
URI=$(bash scripts/libvirtd.sh uri "$LV")
CMDLINE="console=ttyS0 panic=-1 quiet"

mkdir -p "$W/policies" "$W/hand" "$W/res"
cat >"$W/policies/bench.toml" <<'POL'
[vo.dmsbench]
granularity = "user"
backend = "libvirt"
template = "bench"

[vo.dmsbenchnc]
granularity = "user"
backend = "libvirt"
template = "benchnc"
POL
cat >"$W/dmsd.toml" <<CFG
[network]
bridge = "dmsbbr"
pool = "198.19.250.0/24"
nft_table = "dmsbench"
link_prefix = "dmsbv"
[accounts]
grid_mapfile = "$W/grid-mapfile"
group_mapfile = "$W/groupmapfile"
nss_dir = "$W/nss"
pam_socket = "/run/$sub-pam.sock"
[metrics]
listen = ""
[libvirt]
uri = "$URI"
lxc_uri = "$(bash scripts/libvirtd.sh uri "$LV" lxc)"
repository = "$W/repo"
call_timeout_ms = 20000
spawn_time_limit_secs = 120
alive_time_limit_secs = 30
libvirtd_pidfile = "$LV/libvirtd.pid"
[libvirt.templates.bench]
type = "qemu"
kernel = "$G/vmlinux"
initrd = "$G/initramfs.cpio.gz"
cmdline = "$CMDLINE"
image = "$BASE"
image_format = "$FMT"
memory_mib = 256
heartbeat = false
agent = false
network = false
context = true
[libvirt.templates.benchnc]
type = "qemu"
kernel = "$G/vmlinux"
initrd = "$G/initramfs.cpio.gz"
cmdline = "$CMDLINE"
image = "$BASE"
image_format = "$FMT"
memory_mib = 256
heartbeat = false
agent = false
network = false
context = false
CFG
RUST_LOG=${RUST_LOG:-info} "$B/dmsd" --config "$W/dmsd.toml" --state-dir "$W/state" --policy-dir "$W/policies" \
	--socket "$W/sock" --cgroup-subtree "$sub" --system-bus no 2>"$W/dmsd.log" &
pid=$!
for _ in $(seq 100); do ctl status >/dev/null 2>&1 && break; sleep 0.1; done
ctl status >/dev/null || { cat "$W/dmsd.log" >&2; die "dmsd did not come up"; }

# The hand-made guests' contextualization ISO (prebuilt once, shared read-only) and XML: the
# XML dmsd generates for the template above, without DMS's metadata element.
mkdir -p "$W/hand/ctx"
printf 'instance-id: dmsbench\nlocal-hostname: dmsbench\n' >"$W/hand/ctx/meta-data"
printf '#cloud-config\n{}\n' >"$W/hand/ctx/user-data"
printf "DMS_DOMAIN='dmsbench.nobody'\nDMS_USER='nobody'\nDMS_UID=65534\nDMS_VO='dmsbench'\n" >"$W/hand/ctx/dms.env"
xorriso -as mkisofs -quiet -V cidata -J -r -o "$W/hand/context.iso" "$W/hand/ctx" 2>/dev/null
hand_xml() { # NAME DISK DISKFORMAT -> XML file path
	local x=$W/hand/$1.xml
	: >"$W/hand/$1.log"
	cat >"$x" <<XML
<domain type='qemu'>
  <name>$1</name>
  <memory unit='KiB'>262144</memory>
  <currentMemory unit='KiB'>262144</currentMemory>
  <vcpu placement='static'>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>$G/vmlinux</kernel>
    <initrd>$G/initramfs.cpio.gz</initrd>
    <cmdline>$CMDLINE</cmdline>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <disk type='file' device='disk'><driver name='qemu' type='$3'/><source file='$2'/><target dev='vda' bus='virtio'/></disk>
    <disk type='file' device='cdrom'><driver name='qemu' type='raw'/><source file='$W/hand/context.iso'/><target dev='hdc' bus='ide'/><readonly/></disk>
    <serial type='file'><source path='$W/hand/$1.log' append='on'/><target port='0'/></serial>
    <console type='file'><source path='$W/hand/$1.log' append='on'/><target type='serial' port='0'/></console>
    <memballoon model='virtio'><stats period='2'/></memballoon>
  </devices>
</domain>
XML
	echo "$x"
}

# --- timing helpers --------------------------------------------------------------------------
now() { t=${EPOCHREALTIME/./}; } # microseconds, no fork
rec() { [ -z "${WARMUP:-}" ] && echo "$2" >>"$W/res/$1"; return 0; }
state_is() { # NAME WANT
	local s; s=$(vsh domstate "$1" 2>&1 | head -1)
	[ "$s" = "$2" ] || die "$1 is \"$s\", not \"$2\""
}
drop() { sync; echo 1 >/proc/sys/vm/drop_caches; }
DMSDOM=dmsbench.nobody

dms_create() { # SERIES [VO]
	local t0 vo=${2:-dmsbench}
	now; t0=$t
	ctl domain create --user nobody --vo "$vo" >/dev/null
	now; rec "$1" $((t - t0))
	state_is "dms-$vo.nobody" running
	now; t0=$t
	ctl domain destroy "$vo.nobody" >/dev/null
	now; rec dms_destroy $((t - t0))
}
copy_start() { # SERIES [fsync]
	local t0 x
	x=$(hand_xml dmsbench-copy "$W/hand/copy.$FMT" "$FMT")
	now; t0=$t
	cp --reflink=never "$BASE" "$W/hand/copy.$FMT"
	[ "${2:-}" = fsync ] && sync "$W/hand/copy.$FMT"
	vsh define "$x" >/dev/null
	vsh start dmsbench-copy >/dev/null
	now; rec "$1" $((t - t0))
	state_is dmsbench-copy running
	vsh destroy dmsbench-copy >/dev/null
	vsh undefine dmsbench-copy >/dev/null
	rm -f "$W/hand/copy.$FMT"
	sync
}
floor_start() { # SERIES
	local t0 x
	x=$(hand_xml dmsbench-floor "$W/hand/floor.qcow2" qcow2)
	now; t0=$t
	qemu-img create -q -f qcow2 -b "$BASE" -F "$FMT" "$W/hand/floor.qcow2"
	vsh create "$x" >/dev/null
	now; rec "$1" $((t - t0))
	state_is dmsbench-floor running
	now; t0=$t
	vsh destroy dmsbench-floor >/dev/null
	now; rec virsh_destroy $((t - t0))
	rm -f "$W/hand/floor.qcow2"
}
# The pieces of DMS's create, alone (what dmsd runs besides define + start).
parts() {
	local t0
	now; t0=$t; qemu-img info -U --output=json -f "$FMT" "$BASE" >/dev/null; now; rec part_info $((t - t0))
	now; t0=$t; qemu-img create -q -f qcow2 -b "$BASE" -F "$FMT" "$W/hand/part.qcow2"; now; rec part_overlay $((t - t0))
	now; t0=$t; xorriso -as mkisofs -quiet -V cidata -J -r -o "$W/hand/part.iso" "$W/hand/ctx" 2>/dev/null; now; rec part_iso $((t - t0))
	now; t0=$t; ctl status >/dev/null; now; rec part_ctl $((t - t0))
	rm -f "$W/hand/part.qcow2" "$W/hand/part.iso"
}
round() {
	if [ "$COLD" = 1 ]; then
		drop; dms_create dms_cold
		drop; copy_start copy_cold
	fi
	dms_create dms_warm
	dms_create dms_noctx dmsbenchnc
	copy_start copy_warm
	copy_start copy_fsync fsync
	floor_start floor_warm
	parts
	sleep 0.3 # let libvirtd finish tearing down before the next round
}

# --- 1. guest start ---------------------------------------------------------------------------
echo "warm-up round..." >&2
WARMUP=1 round
echo "measuring guest start, $N rounds..." >&2
for i in $(seq "$N"); do
	round
	echo "  round $i/$N done" >&2
done

# --- 2. suspend + resume ----------------------------------------------------------------------
echo "suspend/resume: booting one DMS and one hand-made guest..." >&2
ctl domain create --user nobody --vo dmsbench >/dev/null
qemu-img create -q -f qcow2 -b "$BASE" -F "$FMT" "$W/hand/sr.qcow2"
vsh create "$(hand_xml dmsbench-sr "$W/hand/sr.qcow2" qcow2)" >/dev/null
booted() { grep -q "dms-guest: ready" "$1" 2>/dev/null; }
for _ in $(seq 600); do
	booted "$W/repo/domains/$DMSDOM/console.log" && booted "$W/hand/dmsbench-sr.log" && break
	sleep 0.2
done
for f in "$W/repo/domains/$DMSDOM/console.log" "$W/hand/dmsbench-sr.log"; do
	booted "$f" || { tail -n 30 "$f" >&2; die "a guest did not boot within 120 s (its console above: $f)"; }
done
sleep 1
sr_round() {
	local t0
	now; t0=$t; ctl domain freeze "$DMSDOM" >/dev/null; now; rec dms_freeze $((t - t0))
	state_is "dms-$DMSDOM" paused
	now; t0=$t; ctl domain thaw "$DMSDOM" >/dev/null; now; rec dms_thaw $((t - t0))
	state_is "dms-$DMSDOM" running
	now; t0=$t; vsh suspend dmsbench-sr >/dev/null; now; rec virsh_suspend $((t - t0))
	state_is dmsbench-sr paused
	now; t0=$t; vsh resume dmsbench-sr >/dev/null; now; rec virsh_resume $((t - t0))
	state_is dmsbench-sr running
	sleep 0.2
}
WARMUP=1 sr_round
for i in $(seq "$N"); do sr_round; done
paste -d' ' "$W/res/dms_freeze" "$W/res/dms_thaw" | awk '{print $1 + $2}' >"$W/res/dms_sr"
paste -d' ' "$W/res/virsh_suspend" "$W/res/virsh_resume" | awk '{print $1 + $2}' >"$W/res/virsh_sr"
ctl domain destroy "$DMSDOM" >/dev/null
vsh destroy dmsbench-sr >/dev/null

# --- results ----------------------------------------------------------------------------------
stat3() { # SERIES -> "median min max" in ms
	sort -n "$W/res/$1" | awk '{a[NR] = $1 / 1000} END {
		m = (NR % 2) ? a[(NR + 1) / 2] : (a[NR / 2] + a[NR / 2 + 1]) / 2
		printf "%.1f %.1f %.1f\n", m, a[1], a[NR] }'
}
med() { stat3 "$1" | cut -d' ' -f1; }
row() { # LABEL SERIES
	[ -s "$W/res/$2" ] || return 0
	read -r m lo hi < <(stat3 "$2")
	printf '%-62s %10s %9s %9s\n' "$1" "$m" "$lo" "$hi"
}
ratio() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", a / b }'; }
size="2 GiB ($(($(stat -c %s "$BASE") / 1048576)) MiB file on $fstype)"
echo
printf '%-62s %10s %9s %9s\n' "guest start to \"running\", $size $FMT base, N=$N" "median ms" "min" "max"
row "a. DMS: dmsctl domain create (overlay + ISO + define + start)" dms_warm
row "a. DMS, cold page cache" dms_cold
row "a. DMS, template without contextualization (context = false)" dms_noctx
row "b. copy: cp 2 GiB + virsh define + virsh start" copy_warm
row "b. copy, cold page cache (2 GiB read from disk)" copy_cold
row "b. copy + fsync of the copy (its data on disk), warm source" copy_fsync
row "c. floor: qemu-img create overlay + virsh create" floor_warm
row "   alone: qemu-img info -U of the base (dmsd checks it)" part_info
row "   alone: qemu-img create of the overlay" part_overlay
row "   alone: xorriso contextualization ISO" part_iso
row "   alone: dmsctl status round trip" part_ctl
row "   not counted above: dmsctl domain destroy" dms_destroy
row "   not counted above: virsh destroy (floor guest)" virsh_destroy
dw=$(med dms_warm) cw=$(med copy_warm) fw=$(med floor_warm)
echo
echo "ratio copy/DMS (warm): $(ratio "$cw" "$dw")x (target >= 10x: $(awk -v r="$(ratio "$cw" "$dw")" 'BEGIN {print (r >= 10 ? "met" : "NOT met")}'))"
echo "ratio copy with fsync/DMS (warm): $(ratio "$(med copy_fsync)" "$dw")x"
if [ -s "$W/res/dms_cold" ]; then
	dc=$(med dms_cold) cc=$(med copy_cold)
	echo "ratio copy/DMS (cold): $(ratio "$cc" "$dc")x (target >= 10x: $(awk -v r="$(ratio "$cc" "$dc")" 'BEGIN {print (r >= 10 ? "met" : "NOT met")}'))"
fi
echo "ratio DMS/floor (warm): $(ratio "$dw" "$fw")x; DMS under 1 s: $(awk -v m="$dw" 'BEGIN {print (m < 1000 ? "met" : "NOT met")}') (warm)"
echo
printf '%-62s %10s %9s %9s\n' "suspend + resume of a running idle guest, N=$N" "median ms" "min" "max"
row "DMS: dmsctl domain freeze" dms_freeze
row "DMS: dmsctl domain thaw" dms_thaw
row "DMS: freeze + thaw" dms_sr
row "virsh suspend" virsh_suspend
row "virsh resume" virsh_resume
row "virsh suspend + resume" virsh_sr
echo
echo "ratio DMS/virsh (suspend + resume): $(ratio "$(med dms_sr)" "$(med virsh_sr)")x (virsh/DMS $(ratio "$(med virsh_sr)" "$(med dms_sr)")x)"
echo "total run time: $((SECONDS - t_start)) s (setup included, release build excluded)"
