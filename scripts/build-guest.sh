#!/bin/bash
# Build a tiny guest for libvirt direct-kernel boot (type='qemu', TCG):
#   OUTDIR/vmlinux            uncompressed kernel (boots via PVH, skips slow XZ decompression)
#   OUTDIR/initramfs.cpio.gz  busybox + kernel modules + qemu-ga, with the /init described below
# usage: scripts/build-guest.sh OUTDIR        (KV=<kernel version> to pick a kernel; default newest
#                                              one that has both /boot/vmlinuz-KV and /lib/modules/KV)
# Needs: linux-image-amd64 busybox-static cpio qemu-guest-agent (Debian packages).
#
# Guest behaviour (/init, PID 1):
#  - loads the modules, starts `acpid -f` (power button -> poweroff, so `virsh shutdown` works);
#  - starts qemu-ga on the virtio-serial port org.qemu.guest_agent.0 if present;
#  - writes "alive <uptime seconds>" every N s (cmdline dms.alive_interval=N, default 2) to the port
#    org.dms.alive.0 if present; cmdline dms.noalive disables it (a guest that never reports alive);
#  - mounts a CD-ROM labelled "cidata" (NoCloud: meta-data, user-data, network-config) at /cidata
#    read-only and runs user-data in the background if it starts with "#!" (output on the console,
#    lines prefixed "dms-guest: ");
#  - prints "dms-guest: ready" on the console, then idles and reaps orphans.
set -euo pipefail

prog=${0##*/}
die() { echo "$prog: $*" >&2; exit 1; }
[ $# -eq 1 ] || { echo "usage: $prog OUTDIR" >&2; exit 2; }
out=$1
self=$(readlink -f "$0")

# Reuse a previous build when it is newer than this script.
if [ -s "$out/vmlinux" ] && [ -s "$out/initramfs.cpio.gz" ] &&
   [ "$out/vmlinux" -nt "$self" ] && [ "$out/initramfs.cpio.gz" -nt "$self" ]; then
  exit 0
fi

if [ -z "${KV:-}" ]; then
  for v in $(cd /lib/modules && printf '%s\n' * | sort -rV); do
    [ -f "/boot/vmlinuz-$v" ] && [ -f "/lib/modules/$v/modules.dep" ] && { KV=$v; break; }
  done
fi
[ -n "${KV:-}" ] || die "no kernel with both /boot/vmlinuz-* and /lib/modules/* (apt-get install linux-image-amd64)"
[ -f "/boot/vmlinuz-$KV" ] || die "missing /boot/vmlinuz-$KV"
for b in /bin/busybox /usr/sbin/qemu-ga cpio gzip xz modprobe ldd; do
  command -v "$b" >/dev/null || die "missing $b (apt-get install busybox-static cpio qemu-guest-agent xz-utils kmod)"
done
# grep reads all of the list (no -q): an early exit would SIGPIPE busybox under pipefail.
/bin/busybox --list | grep -x acpid >/dev/null || die "/bin/busybox has no acpid (need busybox-static)"

mkdir -p "$out"
tmp=$(mktemp -d "$out/.build.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
root=$tmp/root
mkdir -p "$root"/{bin,sbin,dev,proc,sys,run,tmp,cidata,etc/acpi/PWRF,usr/sbin,lib/modules,var/log}
ln -s ../run "$root/var/run"

# 1. Uncompressed kernel: the payload of the Debian bzImage is XZ; find its magic and unpack.
off=$(grep -abo $'\xfd7zXZ\x00' "/boot/vmlinuz-$KV" | head -1 | cut -d: -f1)
[ -n "$off" ] || die "no XZ payload in /boot/vmlinuz-$KV"
# xz complains about the trailing data after the stream; the kernel itself is complete.
tail -c +$((off + 1)) "/boot/vmlinuz-$KV" | xz -dc > "$tmp/vmlinux" 2>/dev/null || true
[ "$(head -c 4 "$tmp/vmlinux" | od -An -tx1 | tr -d ' ')" = 7f454c46 ] || die "extracted vmlinux is not ELF"

# 2. Modules, in dependency order (modprobe --show-depends resolves deps and skips built-ins).
#    evdev+button: ACPI power button for acpid.  virtio_console: virtio-serial ports.
#    sr_mod before ata_piix: the IDE CD-ROM is probed (synchronously, during the ata_piix insmod)
#    with its SCSI driver already present, so /dev/sr0 exists as soon as insmod returns.
wanted="virtio_pci virtio_console virtio_net virtio_balloon virtio_blk evdev button isofs sr_mod ata_piix"
: > "$root/lib/modules/load-order"
for m in $wanted; do
  modprobe -S "$KV" --show-depends "$m" | while read -r kind path _; do
    [ "$kind" = insmod ] || continue                    # "builtin X" needs nothing
    name=$(basename "$path"); name=${name%%.ko*}
    grep -qx "$name" "$root/lib/modules/load-order" && continue
    case $path in
      *.ko)     cp "$path" "$root/lib/modules/$name.ko" ;;
      *.ko.xz)  xz -dc "$path" > "$root/lib/modules/$name.ko" ;;
      *.ko.zst) zstd -qdc "$path" > "$root/lib/modules/$name.ko" ;;
      *) echo "$prog: unknown module format $path" >&2; exit 1 ;;
    esac
    echo "$name" >> "$root/lib/modules/load-order"
  done
done

# 3. busybox, qemu-ga and the shared libraries qemu-ga needs (same paths as on the host).
cp /bin/busybox "$root/bin/busybox"
cp /usr/sbin/qemu-ga "$root/usr/sbin/qemu-ga"
for lib in $(ldd /usr/sbin/qemu-ga | grep -o '/[^ ]*'); do
  mkdir -p "$root$(dirname "$lib")"
  cp -L "$lib" "$root$lib"
done
echo "root:x:0:0:root:/:/bin/sh" > "$root/etc/passwd"
echo "root:x:0:" > "$root/etc/group"

# busybox acpid runs /etc/acpi/<event>/<code> for each ACPI event; PWRF = power button.
# `poweroff -f` because a plain poweroff would only signal init, and our PID 1 is a shell.
cat > "$root/etc/acpi/PWRF/00000080" <<'EOF'
#!/bin/sh
echo "dms-guest: power button, powering off" > /dev/console
sync; poweroff -f
EOF

cat > "$root/init" <<'EOF'
#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
mkdir -p /dev/pts; mount -t devpts devpts /dev/pts; mount -t tmpfs run /run
log() { echo "dms-guest: $*" > /dev/console; }

alive_interval=2 noalive=
for a in $(cat /proc/cmdline); do
  case $a in
    dms.alive_interval=*) alive_interval=${a#*=} ;;
    dms.noalive) noalive=1 ;;
  esac
done
case $alive_interval in ''|*[!0-9]*|0) log "bad dms.alive_interval=$alive_interval, using 2"; alive_interval=2 ;; esac

while read -r m; do insmod "/lib/modules/$m.ko" || log "insmod $m failed"; done < /lib/modules/load-order
acpid -f &
ip link set lo up
for n in /sys/class/net/eth*; do [ -e "$n" ] && ip link set "${n##*/}" up; done

# virtio-serial ports are announced by the host asynchronously after the driver loads: if a
# virtio-serial device exists, wait (max 10 s) until named ports appear and stop changing.
ports() { for p in /sys/class/virtio-ports/vport*; do [ -s "$p/name" ] && echo "${p##*/}=$(cat "$p/name")"; done; }
if ls -d /sys/bus/virtio/drivers/virtio_console/virtio* >/dev/null 2>&1; then
  last= i=0
  while [ $i -lt 100 ]; do
    cur=$(ports)
    [ -n "$cur" ] && [ "$cur" = "$last" ] && break
    last=$cur; i=$((i + 1)); sleep 0.3
  done
fi
port_dev() { for p in /sys/class/virtio-ports/vport*; do [ "$(cat "$p/name" 2>/dev/null)" = "$1" ] && echo "/dev/${p##*/}" && return 0; done; return 1; }

if dev=$(port_dev org.qemu.guest_agent.0); then
  mkdir -p /run/qemu-ga
  qemu-ga -m virtio-serial -p "$dev" -t /run/qemu-ga -f /run/qemu-ga.pid 2>/dev/console &
  log "qemu-ga on $dev"
fi

if dev=$(port_dev org.dms.alive.0); then
  if [ -n "$noalive" ]; then
    log "dms.noalive: not writing heartbeats to $dev"
  else
    # A write blocks while no host client is connected to the channel; the timeout makes the
    # next line carry a fresh uptime once a client (re)connects.
    ( while :; do
        read -r up _ < /proc/uptime
        timeout "$alive_interval" sh -c "echo 'alive ${up%.*}' > $dev" 2>/dev/null
        sleep "$alive_interval"
      done ) &
    log "heartbeat on $dev every ${alive_interval}s"
  fi
fi

# NoCloud seed: an ISO9660 CD-ROM whose volume id (32 bytes at offset 32808) is "cidata".
for cd in /dev/sr*; do
  [ -b "$cd" ] || continue
  label=$(dd if="$cd" bs=1 skip=32808 count=32 2>/dev/null | tr -d ' \0')
  [ "$label" = cidata ] || continue
  if mount -t iso9660 -o ro "$cd" /cidata; then
    log "cidata mounted from $cd"
    if [ -f /cidata/user-data ] && [ "$(head -c 2 /cidata/user-data)" = '#!' ]; then
      cp /cidata/user-data /run/user-data; chmod 700 /run/user-data
      ( cd /cidata && /run/user-data 2>&1 | while IFS= read -r l; do echo "dms-guest: $l"; done > /dev/console ) &
      log "user-data started"
    fi
  else
    log "mounting $cd failed"
  fi
  break
done

log ready
# PID 1: idle; busybox sh reaps every exited child (including adopted orphans) while it waits
# for the foreground sleep, so no zombies pile up.
trap '' TERM INT HUP
while :; do sleep 60; done
EOF
chmod 755 "$root/init" "$root/etc/acpi/PWRF/00000080"

# 4. Reproducible-ish archive: fixed mtimes, sorted names, no gzip timestamp.
find "$root" -exec touch -h -d @0 {} +
(cd "$root" && find . -mindepth 1 | LC_ALL=C sort | cpio -o -H newc -R 0:0 --reproducible --quiet) |
  gzip -n -6 > "$tmp/initramfs.cpio.gz"
mv -f "$tmp/vmlinux" "$out/vmlinux"
mv -f "$tmp/initramfs.cpio.gz" "$out/initramfs.cpio.gz"
