#!/usr/bin/env bash
# The demo: builds everything, boots the test kernel under QEMU and shows
# the module at work inside it.
#
#   scripts/demo.sh [--debug]
#
# On the host: installs missing packages, builds or reuses the test kernel,
# builds blksnap.ko and the blksnap CLI. In the VM (this same script with
# --guest): loads the module, shows the control device and the module
# parameters, asks the module for its version through the CLI, unloads it.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

say() { printf '\n== %s\n' "$*"; }
show() {
	printf '$ %s\n' "$*"
	"$@"
}

guest() {
	local ko=$BLKSNAP_ROOT/blksnap.ko cli=$BLKSNAP_ROOT/target/release/blksnap p
	say "Inside the VM: Linux $(uname -r), $(nproc) CPUs, root file system shared from the host"

	say "Loading the module"
	show insmod "$ko"
	show lsmod
	show ls -l /dev/blksnap
	echo "($(cat /sys/class/misc/blksnap/dev 2>/dev/null || echo '?'): a misc device; only root may open it)"

	say "Module parameters (modinfo, then the values in /sys/module/blksnap/parameters)"
	show modinfo -F parm "$ko"
	for p in /sys/module/blksnap/parameters/*; do
		printf '  %-30s %s\n' "$(basename "$p")" "$(cat "$p")"
	done

	say "Asking the module for its version through the blksnap CLI"
	if [ -x "$cli" ]; then
		show "$cli" version
	else
		echo "the CLI is not built ($cli)"
		false
	fi

	say "Unloading the module"
	show rmmod blksnap
	[ ! -e /dev/blksnap ] && echo "/dev/blksnap is gone"

	say "What the module wrote to the kernel log"
	dmesg | grep -i blksnap | grep -v 'stack depth' || echo "(nothing)"
}

if [ "${1:-}" = --guest ]; then
	[ "${BLKSNAP_VM:-}" = 1 ] || die "--guest runs inside the test VM only"
	guest
	exit
fi

while (($#)); do
	case $1 in
	--debug) BLKSNAP_DEBUG=1; export BLKSNAP_DEBUG ;;
	*) die "usage: scripts/demo.sh [--debug]" ;;
	esac
	shift
done

say "1. Packages the build and the VM need"
"$BLKSNAP_ROOT/scripts/deps.sh"
echo "ok"

say "2. The test kernel (built once and cached; a first build takes 15-20 minutes)"
if [ -z "${KDIR:-}" ]; then
	KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh")
fi
export KDIR
echo "$KDIR ($(cat "$KDIR/include/config/kernel.release" 2>/dev/null))"

say "3. Building blksnap.ko against it"
mkdir -p "$BLKSNAP_ROOT/target"
flock "$BLKSNAP_ROOT/target/.module-build.lock" make -s -C "$BLKSNAP_ROOT" KDIR="$KDIR"
ls -l "$BLKSNAP_ROOT/blksnap.ko"

say "4. Building the user space (the blksnap CLI)"
(cd "$BLKSNAP_ROOT" && cargo build --release --workspace --quiet)
ls -l "$BLKSNAP_ROOT/target/release/blksnap"

say "5. Booting the test kernel under QEMU and running the demo inside"
"$BLKSNAP_ROOT/scripts/vm.sh" -- scripts/demo.sh --guest
say "Done"
