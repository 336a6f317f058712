#!/bin/bash
# A throw-away libvirtd (QEMU + LXC drivers) for tests, without touching the host's /etc, /var, /run.
#
# usage: scripts/libvirtd.sh up DIR        start virtlogd + libvirtd, state under DIR (absolute path)
#        scripts/libvirtd.sh uri DIR [lxc] print the URI to use from the host mount namespace
#        scripts/libvirtd.sh down DIR      destroy remaining domains, stop the daemons, remove DIR
#
# The daemons run in a private mount namespace whose /etc, /var and /run are overlays stored under
# DIR/{etc,var,run}-up (see /work/shared/recipes/libvirt-start.sh). Clients stay in the host
# namespace: a unix socket bound inside an overlay can NOT be reached through its upperdir path
# (connect() gives ECONNREFUSED: the socket is keyed by the overlay inode, not the upper one), so
# libvirtd listens in DIR/sock instead (libvirtd.conf unix_sock_dir), a plain directory on the host.
# Example:  virsh -c "$(scripts/libvirtd.sh uri /tmp/x)" list --all
set -euo pipefail

prog=${0##*/}
usage() { echo "usage: $prog up DIR | down DIR | restart DIR | uri DIR [lxc]   (DIR: absolute path)" >&2; exit 2; }
die() { echo "$prog: $*" >&2; exit 1; }

[ $# -ge 2 ] || usage
cmd=$1 dir=$2
case $dir in /*) ;; *) die "DIR must be an absolute path: $dir" ;; esac
[ "$dir" = / ] || dir=${dir%/}
case $dir in ''|/|/etc|/var|/run|/tmp|/root|/home|/usr) die "refusing DIR=$dir" ;; esac
# unix socket paths are limited to 107 bytes; the longest one libvirtd creates is libvirt-admin-sock
sock_dir=$dir/sock
[ ${#sock_dir} -le $((107 - 19)) ] || die "DIR is too long for unix socket paths: $sock_dir/libvirt-admin-sock"
marker=$dir/.dms-libvirtd

uri() { # $1 = qemu | lxc
  echo "$1:///system?socket=$sock_dir/libvirt-sock"
}

alive() { [ -n "${1:-}" ] && kill -0 "$1" 2>/dev/null; }
# pid from a pid file, only if that process still runs the expected program (comm prefix), so a
# stale pid file never makes us signal an unrelated process that reused the pid
pidof_file() {
  local p c
  [ -s "$1" ] || return 0
  p=$(cat "$1"); c=$(cat "/proc/$p/comm" 2>/dev/null) || return 0
  case $c in "$2"*) echo "$p" ;; esac
}

# Processes whose mount table holds our overlays, i.e. everything started in our namespace
# (daemons, qemu, libvirt_lxc and the containers). Used only as a fallback in `down`.
ns_pids() {
  local f pid
  for f in /proc/[0-9]*/mountinfo; do
    pid=${f#/proc/}; pid=${pid%/mountinfo}
    [ "$pid" = $$ ] && continue
    grep -qF "upperdir=$dir/" "$f" 2>/dev/null && echo "$pid"
  done
  return 0
}

machine_cgroups() {
  local c
  for c in /sys/fs/cgroup/machine /sys/fs/cgroup/*/machine; do [ -d "$c" ] && echo "$c"; done
  return 0
}

# wait_gone SECONDS PID... : true when none of the pids is alive any more
wait_gone() {
  local t=$1 p left; shift
  for _ in $(seq $((t * 10))); do
    left=
    for p in "$@"; do alive "$p" && left=1; done
    [ -z "$left" ] && return 0
    sleep 0.1
  done
  return 1
}

do_up() {
  [ "$(id -u)" = 0 ] || die "must run as root"
  for b in unshare nsenter virsh /usr/sbin/libvirtd /usr/sbin/virtlogd; do
    command -v "$b" >/dev/null || die "missing $b (apt-get install libvirt-daemon libvirt-clients ...)"
  done
  if [ -e "$dir" ] && [ ! -e "$marker" ] && [ -n "$(ls -A "$dir")" ]; then
    die "$dir exists, is not empty and was not made by $prog; refusing to use it"
  fi
  alive "$(pidof_file "$dir/libvirtd.pid" libvirtd)" && die "already up (libvirtd pid $(cat "$dir/libvirtd.pid")); run: $prog down $dir"

  mkdir -p "$dir"; touch "$marker"
  for d in etc var run; do mkdir -p "$dir/$d-up" "$dir/$d-work"; done
  mkdir -p "$sock_dir"; chmod 755 "$dir" "$sock_dir"
  # libvirt creates the default "machine" partition cgroup in every controller on the first
  # domain start and never removes it; remember which existed so `down` removes only ours.
  [ -e "$dir/cgroups-before" ] || machine_cgroups > "$dir/cgroups-before"
  local sum_before; sum_before=$(sha256sum /etc/passwd /etc/group)

  # Everything below the `sh -c` runs in the private namespace. The daemons fork into the
  # background and keep the namespace (and its overlay mounts) alive; it vanishes when they exit.
  # shellcheck disable=SC2016  # the script is expanded by the inner sh, not here
  unshare --mount --propagation private -- sh -c '
set -e
D=$1
for d in etc var run; do
  mount -t overlay dms_test_ov_$d -o lowerdir=/$d,upperdir=$D/$d-up,workdir=$D/$d-work /$d
done
# what the libvirt-daemon-system package would do (inside the overlay only)
getent group libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:" >> /etc/group
getent passwd libvirt-qemu >/dev/null || echo "libvirt-qemu:x:64055:64055:Libvirt Qemu:/var/lib/libvirt:/usr/sbin/nologin" >> /etc/passwd
mkdir -p /var/log/libvirt /etc/libvirt
# the LXC driver cannot handle the hybrid cgroup2 mount that holds only hugetlb
umount /sys/fs/cgroup/unified 2>/dev/null || true

# Sockets outside the overlays so that host-namespace clients can connect (see header).
# auth none: no polkit/dbus here; the socket directory itself is root-only (0700 perms).
cat > /etc/libvirt/libvirtd.conf <<EOF
unix_sock_dir = "$D/sock"
unix_sock_rw_perms = "0700"
unix_sock_ro_perms = "0700"
unix_sock_admin_perms = "0700"
auth_unix_rw = "none"
auth_unix_ro = "none"
log_outputs = "3:file:$D/libvirtd.log"
EOF
# QEMU runs as root:root instead of libvirt-qemu so it can open images, kernels and sockets
# under /tmp (test dirs are often mode 0700 and owned by root). dynamic_ownership=0 and
# remember_owner=0: libvirt must not chown or set trusted.libvirt.* xattrs on files it is
# given (e.g. a shared read-only base image). security_driver none: no AppArmor/SELinux
# profiles are installed (libvirt-daemon-system is not), so do not try to use them.
cat > /etc/libvirt/qemu.conf <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
EOF
/usr/sbin/virtlogd -d -p "$D/virtlogd.pid"
/usr/sbin/libvirtd -d -p "$D/libvirtd.pid"
' sh "$dir" || die "starting the daemons failed (see $dir/libvirtd.log); clean up with: $prog down $dir"

  # The socket appears after 8-13 s; the first connection may block while libvirt probes QEMU
  # capabilities (up to ~60 s, cached afterwards in the overlay /var/cache/libvirt/qemu).
  local u; u=$(uri qemu)
  local deadline=$((SECONDS + 120))
  until [ -S "$sock_dir/libvirt-sock" ] && timeout 100 virsh -c "$u" version >/dev/null 2>&1; do
    alive "$(pidof_file "$dir/libvirtd.pid" libvirtd)" || {
      sleep 1  # the pid file is written shortly after daemonizing
      alive "$(pidof_file "$dir/libvirtd.pid" libvirtd)" || {
        tail -n 20 "$dir/libvirtd.log" >&2 2>/dev/null || true
        die "libvirtd exited; clean up with: $prog down $dir"; }
    }
    [ $SECONDS -lt $deadline ] || die "libvirtd did not answer on $u within 120 s; clean up with: $prog down $dir"
    sleep 0.2
  done
  [ "$sum_before" = "$(sha256sum /etc/passwd /etc/group)" ] || die "host /etc/passwd or /etc/group changed!"
}

do_down() {
  [ -e "$dir" ] || return 0                       # idempotent: nothing to do
  [ -e "$marker" ] || die "$dir was not made by $prog (no $marker); not touching it"
  local lpid vpid p
  lpid=$(pidof_file "$dir/libvirtd.pid" libvirtd); vpid=$(pidof_file "$dir/virtlogd.pid" virtlogd)

  # 1. Ask libvirtd to destroy what still runs (cleanest: tears down taps, cgroups, monitors).
  if alive "$lpid" && [ -S "$sock_dir/libvirt-sock" ]; then
    for drv in qemu lxc; do
      for dom in $(timeout 20 virsh -c "$(uri $drv)" list --name 2>/dev/null || true); do
        timeout 30 virsh -c "$(uri $drv)" destroy "$dom" >/dev/null 2>&1 || echo "$prog: destroy $drv/$dom failed" >&2
      done
    done
  fi
  # 2. Stop the daemons.
  for p in "$lpid" "$vpid"; do alive "$p" && kill -TERM "$p"; done
  wait_gone 30 "$lpid" "$vpid" || { for p in "$lpid" "$vpid"; do alive "$p" && kill -KILL "$p"; done; wait_gone 5 "$lpid" "$vpid" || true; }
  # 3. Fallback (libvirtd was dead or a destroy failed): qemu and libvirt_lxc pid files in the
  #    overlay /run, then anything else still living in our mount namespace.
  #    libvirtd cannot clean up the cgroups of domains killed this way: remember their names
  #    (qemu-<id>-<name>.libvirt-qemu, lxc-<controller pid>-<name>.libvirt-lxc).
  local stale_cg="" name
  for f in "$dir"/run-up/libvirt/qemu/*.pid "$dir"/run-up/libvirt/lxc/*.pid; do
    [ -f "$f" ] || continue                        # unmatched glob
    name=${f##*/}; name=${name%.pid}
    [ "$name" = driver ] && continue
    case $f in
      */qemu/*) p=$(pidof_file "$f" qemu-system); stale_cg="$stale_cg qemu-*-$name.libvirt-qemu" ;;
      *)        p=$(pidof_file "$f" libvirt_lxc); [ -z "$p" ] || stale_cg="$stale_cg lxc-$p-$name.libvirt-lxc" ;;
    esac
    alive "$p" && { echo "$prog: killing leftover pid $p ($f)" >&2; kill -KILL "$p"; }
  done
  local rest; rest=$(ns_pids | tr "\n" " "); rest=${rest% }
  if [ -n "$rest" ]; then
    echo "$prog: killing leftover processes in the namespace: $rest" >&2
    # shellcheck disable=SC2086
    kill -KILL $rest 2>/dev/null || true
    # shellcheck disable=SC2086
    wait_gone 10 $rest || die "processes still use $dir: $rest; not removing it"
  fi
  # Cgroups of domains killed above: remove leaf-first; rmdir only succeeds on task-less cgroups.
  local c g d
  for c in $(machine_cgroups); do
    for g in $stale_cg; do
      # shellcheck disable=SC2086
      for d in "$c"/$g; do [ -d "$d" ] && { find "$d" -depth -type d -exec rmdir {} + 2>/dev/null || true; }; done
    done
  done
  # Empty "machine" cgroups created since `up` (rmdir fails harmlessly while another libvirtd
  # still has domains there; libvirt re-creates the default partition when it needs it).
  if [ -f "$dir/cgroups-before" ]; then
    for c in $(machine_cgroups); do
      grep -qxF "$c" "$dir/cgroups-before" || rmdir "$c" 2>/dev/null || true
    done
  fi
  # The overlays lived only in the now-empty namespace; only then is removing DIR safe.
  rm -rf --one-file-system -- "$dir"
}

# restart: start libvirtd again (after it died or was killed) in the namespace virtlogd still
# holds, with the same overlays and configuration; its guests are reconnected by libvirtd.
do_restart() {
  local vpid u deadline
  vpid=$(pidof_file "$dir/virtlogd.pid" virtlogd)
  alive "$vpid" || die "virtlogd of $dir is not running: use $prog down $dir; $prog up $dir"
  # A killed libvirtd may linger as a zombie (nothing reaps it when PID 1 does not): that is gone.
  local lpid i; lpid=$(pidof_file "$dir/libvirtd.pid" libvirtd)
  for i in $(seq 50); do
    alive "$lpid" || break
    [ "$(awk '{print $3}' "/proc/$lpid/stat" 2>/dev/null)" = Z ] && break
    sleep 0.1
  done
  alive "$lpid" && [ "$(awk '{print $3}' "/proc/$lpid/stat" 2>/dev/null)" != Z ] && die "libvirtd of $dir is still running"
  nsenter -t "$vpid" -m /usr/sbin/libvirtd -d -p "$dir/libvirtd.pid" || die "starting libvirtd failed"
  u=$(uri qemu); deadline=$((SECONDS + 120))
  until timeout 100 virsh -c "$u" version >/dev/null 2>&1; do
    [ $SECONDS -lt $deadline ] || die "libvirtd did not answer on $u within 120 s"
    sleep 0.2
  done
}

case $cmd in
  up)   [ $# -eq 2 ] || usage; do_up ;;
  restart) [ $# -eq 2 ] || usage; do_restart ;;
  down) [ $# -eq 2 ] || usage; do_down ;;
  uri)  case ${3:-qemu} in qemu|lxc) uri "${3:-qemu}" ;; *) usage ;; esac ;;
  *)    usage ;;
esac
