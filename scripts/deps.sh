#!/bin/bash
# Installs the Debian packages DMS needs. usage: scripts/deps.sh run|test|bench
# run:   build and run dmsd (a C compiler for the bundled SQLite; iproute2 for tc, nftables for NAT;
#        libpam0g-dev to link pam_dms.so)
# test:  + QEMU, the Debian kernel, busybox and cpio for the cgroup v2 suite in a guest; pamtester,
#        sshd, Slurm + munge (libslurm-dev: the release spank_dms.so is built for), openssl and
#        voms-clients (voms-proxy-fake) for the login tests; prometheus + promtool for the metrics
#        tests and the alert-rule checks
# libvirt: libvirt-dev to build dmsd with --features dms/libvirt, and libvirtd with the QEMU and
#        LXC drivers, qemu-img and xorriso (overlays, contextualization ISOs) to run guests
# bench: + crun, runc and libcgroup tools for the side-by-side peers
set -euo pipefail
pkgs=(gcc libc6-dev pkg-config procps iproute2 nftables libpam0g-dev)
libvirt_pkgs=(libvirt-dev libvirt-daemon libvirt-daemon-driver-qemu libvirt-daemon-driver-lxc libvirt-clients qemu-system-x86 qemu-utils xorriso)
case "${1:-run}" in
run) ;;
libvirt) pkgs+=("${libvirt_pkgs[@]}") ;;
test) pkgs+=("${libvirt_pkgs[@]}" qemu-guest-agent kmod dbus qemu-system-x86 linux-image-amd64 busybox-static cpio xz-utils gzip util-linux iputils-ping iperf3 pamtester openssh-server openssh-client slurm-wlm libslurm-dev munge openssl voms-clients prometheus) ;;
bench) pkgs+=(crun runc cgroup-tools) ;;
*) echo "usage: $0 run|libvirt|test|bench" >&2; exit 2 ;;
esac
missing=()
for p in "${pkgs[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
	echo "deps: installing ${missing[*]}" >&2
	apt-get update -qq
	# Install without starting services (sshd, munge, slurmd): tests start their own.
	own_policy=0
	if [ ! -e /usr/sbin/policy-rc.d ]; then
		printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d && own_policy=1
	fi
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
	[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d
fi
if ! command -v cargo >/dev/null; then
	echo "deps: cargo not found: install the Rust toolchain (rustup, Rust >= 1.85) first" >&2
	exit 1
fi
