#!/bin/bash
# Run one host executable against a real cgroup v2 hierarchy inside a QEMU guest.
#
# usage: tests/vm/run-v2.sh [--timeout SECS] EXECUTABLE [ARGS...]
#
# Boots the Debian kernel from /boot under qemu-system-x86_64 (TCG, 2 CPUs, 1536 MiB) with the
# host root shared read-only over 9p, mounts cgroup2 at /sys/fs/cgroup in the guest with
# +cpu +memory +pids +io (+cpuset if available) in the root's subtree_control, and runs
# EXECUTABLE ARGS... chrooted into the host root, in the caller's working directory.
#   - environment: DMS_*, RUST_* and PATH are passed through; TMPDIR=/run (a guest tmpfs);
#     /tmp is writable (tmpfs overlay on the host's /tmp); everything else is read-only.
#   - the guest console is streamed to stdout; the script exits with the executable's exit
#     code, 124 on timeout (default 900 s, per boot), 1 if the guest died without reporting one.
#   - a guest kernel that locks up or panics (the console shows it) is booted once more.
#   - vmlinux + initramfs are cached in ${DMS_VM_CACHE:-/var/tmp/dms-vm-cache}/<kernel>-<hash>.
#   - DMS_VM_KERNEL=<version> picks a kernel; default: newest with /boot/vmlinuz-V and
#     /lib/modules/V.
# Needs: qemu-system-x86, linux-image-amd64, busybox-static, cpio, xz-utils, gzip (Debian).
set -euo pipefail

prog=${0##*/}
timeout_s=900

die() {
	echo "$prog: $*" >&2
	exit 1
}

usage() {
	sed -n '2,/^set /{/^set /d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
}

while [[ $# -gt 0 ]]; do
	case $1 in
	--timeout)
		[[ $# -ge 2 && $2 =~ ^[0-9]+$ && $2 -gt 0 ]] || die "--timeout needs a positive number of seconds"
		timeout_s=$2
		shift 2
		;;
	--timeout=*)
		timeout_s=${1#--timeout=}
		[[ $timeout_s =~ ^[0-9]+$ && $timeout_s -gt 0 ]] || die "--timeout needs a positive number of seconds"
		shift
		;;
	-h | --help) usage ;;
	--)
		shift
		break
		;;
	-*) die "unknown option $1 (see --help)" ;;
	*) break ;;
	esac
done
[[ $# -ge 1 ]] || usage
arg0=$1
shift
exe=$arg0
if [[ $exe != */* ]]; then
	exe=$(command -v "$exe") || die "executable not found: $arg0"
fi
exe=$(realpath -e "$exe" 2>/dev/null) || die "executable not found: $arg0"
[[ -f $exe && -x $exe ]] || die "not an executable file: $exe"

# ---- required tools ------------------------------------------------------------------------
missing=()
need_tool() { # need_tool COMMAND DEBIAN-PACKAGE
	command -v "$1" >/dev/null 2>&1 || missing+=("$2 (for $1)")
}
need_tool qemu-system-x86_64 qemu-system-x86
need_tool cpio cpio
need_tool xz xz-utils
need_tool gzip gzip
need_tool flock util-linux
need_tool timeout coreutils
if [[ ! -x /bin/busybox ]] || ldd /bin/busybox >/dev/null 2>&1; then
	missing+=("busybox-static (for a static /bin/busybox)")
fi

kv=${DMS_VM_KERNEL:-}
if [[ -z $kv ]]; then
	while IFS= read -r v; do
		[[ -f /boot/vmlinuz-$v && -d /lib/modules/$v/kernel ]] && kv=$v
	done < <(for p in /lib/modules/*/; do p=${p%/}; echo "${p##*/}"; done | sort -V)
fi
if [[ -z $kv || ! -f /boot/vmlinuz-$kv || ! -d /lib/modules/$kv/kernel ]]; then
	missing+=("linux-image-amd64 (need /boot/vmlinuz-V and /lib/modules/V for one version V)")
fi
if [[ ${#missing[@]} -gt 0 ]]; then
	echo "$prog: missing Debian packages:" >&2
	printf '  %s\n' "${missing[@]}" >&2
	echo "  install with: apt-get install ${missing[*]%% *}" >&2
	exit 1
fi

# ---- guest init (part of the cache key) ----------------------------------------------------
# Load order matters; modules.builtin entries are skipped, overlay is optional.
modules="virtio_ring virtio virtio_pci_legacy_dev virtio_pci_modern_dev virtio_pci netfs fscache 9pnet 9pnet_virtio 9p overlay"
read -r -d '' init_script <<'EOI' || true
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
for m in $(cat /modules.order); do [ -f /lib/modules/$m.ko ] && insmod /lib/modules/$m.ko; done
mkdir -p /host
if ! mount -t 9p -o trans=virtio,version=9p2000.L,ro,msize=262144 hostroot /host; then
	echo "== guest: cannot mount the host root over 9p"; echo "== guest: rc=1"; poweroff -f
fi
for a in $(cat /proc/cmdline); do case $a in run=*) T=${a#run=};; esac; done
# Read the wrapper before anything is mounted over the host's /tmp.
cp "/host$T" /dms-test-wrapper.sh || { echo "== guest: cannot read /host$T"; echo "== guest: rc=1"; poweroff -f; }
mount -t tmpfs -o mode=0755 tmpfs /host/run   # writable TMPDIR=/run
cp /dms-test-wrapper.sh /host/run/dms-test-wrapper.sh && chmod 0755 /host/run/dms-test-wrapper.sh
# Writable /tmp: overlay (host /tmp stays visible, read-only lower) or a plain tmpfs.
mkdir -p /ovl && mount -t tmpfs tmpfs /ovl && mkdir -p /ovl/u /ovl/w
mount -t overlay overlay -o lowerdir=/host/tmp,upperdir=/ovl/u,workdir=/ovl/w /host/tmp 2>/dev/null \
	|| mount -t tmpfs -o mode=1777 tmpfs /host/tmp
for d in proc sys dev; do mount --rbind /$d /host/$d; done
mkdir -p /host/dev/shm /host/dev/pts 2>/dev/null
mount -t tmpfs -o mode=1777 tmpfs /host/dev/shm 2>/dev/null
mount -t devpts devpts /host/dev/pts 2>/dev/null
mount -t cgroup2 -o nsdelegate none /host/sys/fs/cgroup
for c in cpu memory pids io cpuset; do
	grep -qw $c /host/sys/fs/cgroup/cgroup.controllers && echo "+$c" > /host/sys/fs/cgroup/cgroup.subtree_control
done
echo "== guest: up after $(cut -d' ' -f1 /proc/uptime) s; subtree_control: $(cat /host/sys/fs/cgroup/cgroup.subtree_control)"
# The host root becomes the root mount, as switch_root does, so that setns() into a mount
# namespace (domain exec and join) lands on it rather than on the initramfs.
cd /host && mount --move . / && chroot . /run/dms-test-wrapper.sh; echo "== guest: rc=$?"
poweroff -f
EOI

cache_root=${DMS_VM_CACHE:-/var/tmp/dms-vm-cache}
key=$(printf '%s\n%s\n%s\n' "$init_script" "$modules" "$(stat -c '%s %Y' "/boot/vmlinuz-$kv" /bin/busybox)" |
	sha256sum | cut -c1-12)
cache=$cache_root/$kv-$key

W=$(mktemp -d /tmp/dms-test-vm.XXXXXX)
qpid=
# shellcheck disable=SC2317  # invoked by trap
cleanup() {
	if [[ -n $qpid ]] && kill -0 "$qpid" 2>/dev/null; then
		kill "$qpid" 2>/dev/null || true
		wait "$qpid" 2>/dev/null || true
	fi
	rm -rf "$W"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM HUP

# ---- build (or reuse) vmlinux + initramfs --------------------------------------------------
build_images() { # build_images DIR
	local d=$1 k=/lib/modules/$kv m rel off
	mkdir -p "$d/root/bin" "$d/root/proc" "$d/root/sys" "$d/root/dev" "$d/root/lib/modules"
	# An uncompressed vmlinux boots through PVH and skips slow XZ decompression under TCG.
	off=$(grep -abo $'\xfd7zXZ\x00' "/boot/vmlinuz-$kv" | head -1 | cut -d: -f1 || true)
	if [[ -n $off ]]; then
		tail -c +$((off + 1)) "/boot/vmlinuz-$kv" | xz -dc >"$d/vmlinux" 2>/dev/null || true
	fi
	if [[ ! -s $d/vmlinux || $(head -c 4 "$d/vmlinux" | od -An -tx1 | tr -d ' \n') != 7f454c46 ]]; then
		echo "$prog: could not extract vmlinux, booting the compressed kernel (slower)" >&2
		cp "/boot/vmlinuz-$kv" "$d/vmlinux"
	fi
	cp /bin/busybox "$d/root/bin/busybox"
	: >"$d/root/modules.order"
	for m in $modules; do
		rel=$(grep -E "(^|/)$m\.ko(\.xz|\.zst|\.gz)?:" "$k/modules.dep" | head -1 | cut -d: -f1 || true)
		if [[ -z $rel ]]; then
			grep -qE "(^|/)$m\.ko$" "$k/modules.builtin" 2>/dev/null && continue
			[[ $m == overlay ]] && continue
			die "kernel module $m not found for $kv (package linux-image-$kv)"
		fi
		case $rel in
		*.ko) cp "$k/$rel" "$d/root/lib/modules/$m.ko" ;;
		*.ko.xz) xz -dc "$k/$rel" >"$d/root/lib/modules/$m.ko" ;;
		*.ko.gz) gzip -dc "$k/$rel" >"$d/root/lib/modules/$m.ko" ;;
		*.ko.zst) zstd -qdc "$k/$rel" >"$d/root/lib/modules/$m.ko" ;;
		esac
		echo "$m" >>"$d/root/modules.order"
	done
	printf '%s\n' "$init_script" >"$d/root/init"
	chmod +x "$d/root/init"
	(cd "$d/root" && find . | cpio -o -H newc --quiet | gzip -1 >../initramfs.cpio.gz)
	rm -rf "$d/root"
}

mkdir -p "$cache_root"
if [[ ! -s $cache/vmlinux || ! -s $cache/initramfs.cpio.gz ]]; then
	exec 9>"$cache_root/.lock"
	flock 9
	if [[ ! -s $cache/vmlinux || ! -s $cache/initramfs.cpio.gz ]]; then
		echo "$prog: building guest images for $kv in $cache" >&2
		tmp=$(mktemp -d "$cache_root/.dms-test-build.XXXXXX")
		if ! (build_images "$tmp"); then
			rm -rf "$tmp"
			die "building guest images failed"
		fi
		rm -rf "$cache"
		mv "$tmp" "$cache"
	fi
	exec 9>&-
fi

# ---- wrapper the guest runs (seen through 9p, copied to the guest's /run) ------------------
{
	echo '#!/bin/bash' # %q may produce bash-only $'...' quoting
	echo 'export TMPDIR=/run'
	printf 'export PATH=%q\n' "${PATH:-/usr/sbin:/usr/bin:/sbin:/bin}"
	while IFS= read -r name; do
		case $name in
		DMS_* | RUST_*) printf 'export %s=%q\n' "$name" "${!name}" ;;
		esac
	done < <(compgen -e)
	printf 'cd %q 2>/dev/null || cd /\n' "$PWD"
	printf 'exec'
	printf ' %q' "$exe" "$@"
	printf '\n'
} >"$W/wrapper.sh"
chmod 0755 "$W/wrapper.sh"

# ---- boot ----------------------------------------------------------------------------------
# One boot of the guest; sets rc (empty when the guest reported none), qrc and elapsed.
#   - thread=single: one host thread runs both vCPUs in turn. Multi-threaded TCG once left
#     both vCPUs spinning in the kernel for the rest of a CI run (a soft lockup that never
#     ended), which no guest workload should be able to cause.
#   - softlockup_panic + panic=-1 + -no-reboot: should the guest kernel still lock up, QEMU
#     exits at once instead of running into the timeout; loglevel=5 prints the stack traces.
boot_guest() {
	mkfifo "$W/console"
	start=$(date +%s%N)
	timeout -k 10 "$timeout_s" qemu-system-x86_64 -accel tcg,thread=single -smp 2 -m 1536 \
		-nodefaults -no-user-config -nic none -display none -monitor none -serial stdio \
		-kernel "$cache/vmlinux" -initrd "$cache/initramfs.cpio.gz" \
		-append "console=ttyS0 panic=-1 quiet loglevel=5 softlockup_panic=1 watchdog_thresh=30 run=$W/wrapper.sh" \
		-no-reboot \
		-virtfs local,path=/,mount_tag=hostroot,security_model=none,readonly=on,multidevs=remap \
		</dev/null >"$W/console" 2>&1 &
	qpid=$!

	# Stream the console: strip CRs, escape codes and boot noise; keep a copy for the rc marker.
	set +e
	sed -u -e 's/\r//g' -e 's/\x1b\[[0-9;?]*[a-zA-Z]//g' -e 's/\x1bc//g' <"$W/console" |
		grep -av --line-buffered -e '^$' -e SeaBIOS -e iPXE -e 'Booting from' -e 'Press Ctrl-B' \
			-e 'reboot: Power down' |
		tee "$W/console.log"
	wait "$qpid"
	qrc=$?
	set -e
	qpid=
	rm -f "$W/console"
	elapsed=$((($(date +%s%N) - start) / 1000000))
	rc=$(sed -n 's/^== guest: rc=\([0-9]\{1,3\}\)$/\1/p' "$W/console.log" | tail -1)
	boot=$(sed -n 's/^== guest: up after \([0-9.]*\) s.*/\1/p' "$W/console.log" | tail -1)
}

boot_guest
# A guest kernel that locked up or panicked says nothing about the executable: boot once more
# (the executable's own failures and timeouts are never retried).
if [[ -z $rc && $qrc -ne 124 && $qrc -ne 137 ]] &&
	grep -aqE 'soft lockup|hard LOCKUP|Kernel panic' "$W/console.log"; then
	echo "$prog: the guest KERNEL locked up or panicked (see above), not the executable; booting it once more" >&2
	boot_guest
fi
if [[ -n $rc ]]; then
	echo "$prog: guest rc=$rc, guest up after ${boot:-?} s (guest clock), total $((elapsed / 1000)).$(printf '%03d' $((elapsed % 1000))) s" >&2
	exit "$rc"
fi
if [[ $qrc -eq 124 || $qrc -eq 137 ]]; then
	echo "$prog: TIMEOUT: no exit code from the guest after ${timeout_s} s (qemu killed)" >&2
	exit 124
fi
echo "$prog: FAILED: the guest stopped without reporting an exit code (qemu status $qrc; kernel panic or init failure? see console output above)" >&2
exit 1
