#!/bin/sh
# PID 1 of the test VM that scripts/vm.sh boots. Not for running on the host.
#
# The root file system is the host's, read-only over 9p. This script mounts
# the pseudo file systems and a tmpfs on each place tools write to, makes the
# test kernel's modules visible as /lib/modules, mounts the output share
# (tag blksnap-out) that holds env.sh and cmd.sh, and the writable share of
# vm.sh --share (tag blksnap-share) if any, runs cmd.sh from the top of
# the checkout with its output on the second serial port (/dev/ttyS1),
# writes its exit status to the share and powers off.
#
# Our own messages go to /dev/console (the first serial port, the kernel log
# file on the host), each prefixed with "guest-init:".

PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
export PATH
OUT=/run/blksnap-vm
STASH=/run/blksnap/host

say() { echo "guest-init: $*"; }

# Every exec of a dynamically linked tool costs a lot under TCG: use the
# static busybox for our own plumbing when the host has it.
BB=/bin/busybox
[ -x "$BB" ] || BB=
bb() { if [ -n "$BB" ]; then "$BB" "$@"; else "$@"; fi; }

power_off() {
	bb sync
	echo o >/proc/sysrq-trigger
	# PID 1 must not exit (that would panic): wait for the power to go on the
	# sleeper started at boot, as the root file system may be gone by now.
	while :; do wait; bb sleep 1 2>/dev/null; done
}

mounted() {
	while read -r _ where _; do
		[ "$where" = "$1" ] && return 0
	done </proc/mounts
	return 1
}

bb mount -t proc proc /proc
bb sleep 2147483647 &
bb mount -t sysfs sysfs /sys
mounted /dev || bb mount -t devtmpfs devtmpfs /dev
bb mkdir -p /dev/pts /dev/shm
# The links udev or systemd make on a normal system (bash needs /dev/fd for
# process substitution).
[ -e /dev/fd ] || bb ln -s /proc/self/fd /dev/fd
for n in 0:stdin 1:stdout 2:stderr; do
	[ -e "/dev/${n#*:}" ] || bb ln -s "/proc/self/fd/${n%%:*}" "/dev/${n#*:}"
done
bb mount -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
bb mount -t tmpfs -o mode=1777 tmpfs /dev/shm
bb mount -t tmpfs -o mode=0755 tmpfs /run
bb mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
bb mount -t tracefs tracefs /sys/kernel/tracing 2>/dev/null

bb mkdir -p "$OUT" "$STASH" /run/lock /run/blksnap/bin
if ! bb mount -t 9p -o trans=virtio,version=9p2000.L,cache=none blksnap-out "$OUT"; then
	say "cannot mount the output share"
	power_off
fi
# shellcheck disable=SC1091
. "$OUT/env.sh"
HOME=/root TERM=dumb LANG=C.UTF-8 BLKSNAP_VM=1 BLKSNAP_VM_OUT=$OUT
export HOME TERM LANG BLKSNAP_VM BLKSNAP_VM_OUT
read -r uptime _ </proc/uptime
echo "$uptime" >"$OUT/booted"

# The host root stays reachable under $STASH for the paths a tmpfs hides.
bb mount -o bind / "$STASH"
for dir in /tmp /var/tmp /root /mnt /var/log /var/cache /var/lib/mdadm; do
	[ -d "$dir" ] || continue
	case $dir in /tmp | /var/tmp) mode=1777 ;; *) mode=0755 ;; esac
	bb mount -t tmpfs -o mode=$mode tmpfs "$dir" || continue
	# Re-expose the checkout and the kernel tree if they live below $dir.
	for keep in "$BLKSNAP_ROOT" "$KDIR"; do
		case $keep/ in
		"$dir"/*)
			bb mkdir -p "$keep"
			bb mount -o bind "$STASH$keep" "$keep"
			;;
		esac
	done
done

# A writable share (vm.sh --share), at its path on the host.
if [ -n "${BLKSNAP_VM_SHARE:-}" ]; then
	bb mkdir -p "$BLKSNAP_VM_SHARE"
	bb mount -t 9p -o trans=virtio,version=9p2000.L,cache=none,msize=262144 blksnap-share \
		"$BLKSNAP_VM_SHARE" || say "cannot mount the share on $BLKSNAP_VM_SHARE"
fi

# The test kernel's modules, for modprobe and modinfo by name.
modroot=$STASH$KDIR/modroot
if [ -d /lib/modules ]; then
	bb mount -o bind "$modroot/lib/modules" /lib/modules
else
	# No mount point on the read-only root: wrap the tools to look there.
	for tool in modprobe:-d modinfo:-b; do
		name=${tool%%:*}
		real=$(command -v "$name") || continue
		printf '#!/bin/sh\nexec %s %s %s "$@"\n' "$real" "${tool#*:}" "$modroot" \
			>"/run/blksnap/bin/$name"
		bb chmod 755 "/run/blksnap/bin/$name"
	done
	PATH=/run/blksnap/bin:$PATH
	echo /run/blksnap/bin/modprobe >/proc/sys/kernel/modprobe
fi

# The drivers udev would load for the devices the tests create, where they
# are modules (a distribution kernel): SCSI disks (scsi_debug's).
modprobe -q sd_mod 2>/dev/null

# Device nodes that load their module on first open (/dev/loop-control ...),
# as systemd-tmpfiles creates them from modules.devname on a normal system.
release=$(bb cat /proc/sys/kernel/osrelease)
while read -r _ node devno; do
	case $devno in [cb][0-9]*:[0-9]*) ;; *) continue ;; esac
	[ -e "/dev/$node" ] && continue
	case $node in */*) bb mkdir -p "/dev/${node%/*}" ;; esac
	majmin=${devno#?}
	bb mknod -m 0600 "/dev/$node" "${devno%"$majmin"}" "${majmin%:*}" "${majmin#*:}"
done <"$modroot/lib/modules/$release/modules.devname"

echo blksnap-vm >/proc/sys/kernel/hostname
# (sysctl files read back only whole, so no shell "read" here)
hung=$(bb cat /proc/sys/kernel/hung_task_timeout_secs)
[ "$hung" = 60 ] || say "hung_task_timeout_secs is ${hung:-unset}, not 60"

# kmemleak: forget what boot left behind, so that only new leaks are reported.
KMEMLEAK=/sys/kernel/debug/kmemleak
if [ -w "$KMEMLEAK" ]; then
	echo scan >"$KMEMLEAK"
	echo clear >"$KMEMLEAK"
fi

say "running the command"
bb stty -F /dev/ttyS1 raw -echo 2>/dev/null
cd "${BLKSNAP_ROOT:-/}" || cd /
/bin/sh "$OUT/cmd.sh" </dev/null >/dev/ttyS1 2>&1
rc=$?
say "command exited with $rc"

if [ -w "$KMEMLEAK" ]; then
	# Objects younger than 5 s are not reported; then scan and print what is left.
	bb sleep 6
	echo scan >"$KMEMLEAK"
	bb cat "$KMEMLEAK"
fi

echo "$rc" >"$OUT/status"
power_off
