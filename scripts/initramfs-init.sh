#!/bin/busybox sh
# /init of the initramfs that scripts/debian-kernel.sh makes for kernels
# whose virtio-9p support is modular (distribution kernels). Not for running
# on the host.
#
# Loads the modules listed in /lib/modules/load (in that order), mounts the
# root that the kernel command line names (root=, rootfstype=, rootflags=,
# as scripts/vm.sh passes them) read-only on /newroot, and hands over to its
# init= (scripts/guest-init.sh) as PID 1.
/bin/busybox mkdir -p /proc /sys /dev
/bin/busybox mount -t proc proc /proc
/bin/busybox mount -t devtmpfs devtmpfs /dev 2>/dev/null

say() { echo "initramfs: $*" >/dev/console; }
fail() {
	say "$*"
	echo o >/proc/sysrq-trigger
	while :; do /bin/busybox sleep 1; done
}

root='' fstype='' flags='' init=/sbin/init
for arg in $(/bin/busybox cat /proc/cmdline); do
	case $arg in
	root=*) root=${arg#root=} ;;
	rootfstype=*) fstype=${arg#rootfstype=} ;;
	rootflags=*) flags=${arg#rootflags=} ;;
	init=*) init=${arg#init=} ;;
	esac
done

while read -r m; do
	/bin/busybox insmod "/lib/modules/$m" || fail "cannot load $m"
done </lib/modules/load

/bin/busybox mount -t "$fstype" -o "ro${flags:+,$flags}" "$root" /newroot ||
	fail "cannot mount $root ($fstype) on /newroot"
/bin/busybox umount /proc
/bin/busybox umount /dev 2>/dev/null
exec /bin/busybox switch_root /newroot "$init"
