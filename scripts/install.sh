#!/bin/bash
# Installs DMS on this node: dmsd, dmsctl and dms-enter in /usr/local/sbin and /usr/local/bin,
# pam_dms.so in the PAM module directory, libnss_dms.so.2 in the system library directory, the
# Slurm SPANK plugin as /usr/local/lib/dms/spank_dms.so, the D-Bus policy, /etc/dms/policies
# and the state directory /var/lib/dms (whose nss/ is what libnss_dms.so.2 reads).
# usage: sudo scripts/install.sh [--nsswitch] [--no-build]
#   --nsswitch   also add "dms" to the passwd and group lines of /etc/nsswitch.conf
#                (a backup /etc/nsswitch.conf.dms-orig is kept)
#   DESTDIR=dir  install below dir instead of / (packaging; --nsswitch then edits dir/etc/...)
# PAM and Slurm are not configured automatically: add the lines from README.md ("Logins",
# "Slurm") to the services you want (sshd, su-l, runuser-l, slurm) and to plugstack.conf.
set -euo pipefail
cd "$(dirname "$0")/.."
nsswitch=0 build=1
for a in "$@"; do
	case "$a" in
	--nsswitch) nsswitch=1 ;;
	--no-build) build=0 ;;
	-h | --help) sed -n '2,11p' "$0"; exit 0 ;;
	*) echo "install.sh: unknown option $a (see --help)" >&2; exit 2 ;;
	esac
done
D=${DESTDIR:-}
[ -n "$D" ] || [ "$(id -u)" = 0 ] || { echo "install.sh: run as root (or set DESTDIR)" >&2; exit 1; }
if [ "$build" = 1 ]; then
	scripts/deps.sh run
	cargo build --release --workspace
fi
arch=$(gcc -print-multiarch 2>/dev/null || echo x86_64-linux-gnu)
t=target/release
install -D -m 0755 "$t/dmsd" "$D/usr/local/sbin/dmsd"
install -D -m 0755 "$t/dmsctl" "$D/usr/local/bin/dmsctl"
install -D -m 0755 "$t/dms-enter" "$D/usr/local/sbin/dms-enter"
install -D -m 0644 "$t/libpam_dms.so" "$D/usr/lib/$arch/security/pam_dms.so"
install -D -m 0644 "$t/libnss_dms.so" "$D/usr/lib/$arch/libnss_dms.so.2"
install -D -m 0644 "$t/libspank_dms.so" "$D/usr/local/lib/dms/spank_dms.so"
install -D -m 0644 dist/io.dms.Manager1.conf "$D/etc/dbus-1/system.d/io.dms.Manager1.conf"
install -d -m 0755 "$D/etc/dms/policies" "$D/var/lib/dms/nss"
[ -n "$D" ] || ldconfig
if [ "$nsswitch" = 1 ]; then
	scripts/nsswitch-add-dms.sh "$D/etc/nsswitch.conf"
	echo "install.sh: $D/etc/nsswitch.conf now consults dms for passwd and group"
fi
echo "install.sh: installed; start dmsd with: dmsd --config /etc/dms/dmsd.toml (see README.md)"
