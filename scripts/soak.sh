#!/usr/bin/env bash
# The soak: builds blksnap.ko and the CLI, boots the test kernel under QEMU
# and runs tests/vm/42-soak.sh in it for the given time (ext4 writers,
# snapshots taken, verified and destroyed in a loop with their storage grown
# at low_free_space events, sector-stamp checks alongside). Fails on any
# data mismatch and, through scripts/vm.sh, on any kernel report (oops,
# KASAN, lockdep, WARN, hung task, kmemleak).
#
#   scripts/soak.sh [--debug] [--minutes N]
#
#   --debug       the debug kernel (KASAN, lockdep, kmemleak); slower
#   --minutes N   soak time (default 30)
#
# Environment: KDIR (your own kernel tree instead of the cached one).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

minutes=30
while (($#)); do
	case $1 in
	--debug) BLKSNAP_DEBUG=1; export BLKSNAP_DEBUG ;;
	--minutes) (($# >= 2)) || die "--minutes needs a number"; minutes=$2; shift ;;
	--minutes=*) minutes=${1#*=} ;;
	*) die "usage: scripts/soak.sh [--debug] [--minutes N]" ;;
	esac
	shift
done
{ [[ $minutes =~ ^[0-9]+$ ]] && ((minutes > 0)); } || die "--minutes: not a positive number: $minutes"

if [ -z "${KDIR:-}" ]; then
	KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh") || die "no test kernel"
fi
export KDIR
log "kernel: $KDIR"

# blksnap.ko is built for one kernel: start afresh when the kernel changed.
mkdir -p "$BLKSNAP_ROOT/target"
(
	flock 9
	stamp=$BLKSNAP_ROOT/target/.module-kdir
	if [ "$(cat "$stamp" 2>/dev/null)" != "$KDIR" ]; then
		make -s -C "$BLKSNAP_ROOT" KDIR="$KDIR" clean
	fi
	make -s -C "$BLKSNAP_ROOT" KDIR="$KDIR" && echo "$KDIR" >"$stamp"
) 9>"$BLKSNAP_ROOT/target/.module-build.lock" || die "building blksnap.ko failed"
(cd "$BLKSNAP_ROOT" && cargo build --release --workspace --quiet) || die "building the CLI failed"

seconds=$((minutes * 60))
# Boot, set-up and the checks after the loop take a few minutes under TCG
# (much more on the debug kernel); the last cycle may run over a little.
slack=600
[ "${BLKSNAP_DEBUG:-}" = 1 ] && slack=1500
log "soaking for $minutes minutes"
"$BLKSNAP_ROOT/scripts/vm.sh" --timeout $((seconds + slack)) \
	-e BLKSNAP_SOAK_SECONDS="$seconds" -e BLKSNAP_TEST_TIMEOUT=$((seconds + slack - 60)) \
	-- tests/run-vm.sh 42-soak
