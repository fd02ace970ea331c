#!/usr/bin/env bash
# ioctl fuzzing and access checks. crates/blksnap-fuzz issues
# BLKSNAP_FUZZ_CALLS (default 20000, to keep CI short under QEMU TCG; set
# 100000 or more for a full run) random and mutated ioctls on
# /dev/blksnap from BLKSNAP_FUZZ_THREADS threads (default 4), seeded with
# BLKSNAP_FUZZ_SEED (default 1), with the module put into every lifecycle
# state in turn and ramdisks written and images read in between; every call
# must return success or a proper errno, no call may hang, and the state
# must stay consistent (see the fuzzer's documentation). The kernel log must
# not grow with the calls (nothing user-controlled is logged per call).
# Then: without CAP_SYS_ADMIN every call fails with EPERM and changes
# nothing, image nodes are root-only (0600 root:root, the kernel's default
# for disks; udev rules may widen that), a non-root user cannot open one,
# no image node is left once the snapshots are gone, the module unloads and
# kmemleak (debug kernel) finds nothing.
# shellcheck source-path=SCRIPTDIR disable=SC2119 # blksnap_load takes no arguments here
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

FUZZ=$BLKSNAP_ROOT/target/release/blksnap-fuzz
CALLS=${BLKSNAP_FUZZ_CALLS:-20000}
THREADS=${BLKSNAP_FUZZ_THREADS:-4}
SEED=${BLKSNAP_FUZZ_SEED:-1}
UNPRIV_CALLS=$(((CALLS / 20) < 2000 ? 2000 : CALLS / 20))

ktap_plan 10

cbt_start "$FUZZ"
ram_setup 3 16384

# kmemleak: forget what was there before (boot-time objects).
kmemleak_clear

# ---- 1. the fuzz run
mark=$(kmsg_mark)
out=$("$FUZZ" --seed "$SEED" --calls "$CALLS" --threads "$THREADS" --io \
	--dev /dev/ram0 --dev /dev/ram1 --storage /dev/ram2 2>&1) && rc=0 || rc=$?
log=$(kmsg_since "$mark")
summary=$(grep -E '^(blksnap-fuzz:|calls=|phases|errno histogram|  )' <<<"$out")
ran=$(sed -n 's/^calls=\([0-9]*\) .*/\1/p' <<<"$out")
ktap_diag "ran ${ran:-0} of $CALLS fuzzed ioctls (BLKSNAP_FUZZ_CALLS), seed $SEED, $THREADS threads"
ktap_diag "$summary"
if [ "$rc" = 0 ] && [ "${ran:-0}" = "$CALLS" ]; then
	ktap_ok "$CALLS fuzzed ioctls: every result success or a proper errno, state consistent, no hang"
else
	ktap_fail "$CALLS fuzzed ioctls: every result success or a proper errno, state consistent, no hang" \
		"exit status $rc" "$(grep -E '^(VIOLATION|PROBLEM|HANG|    after)' <<<"$out" | head -n 60)" \
		"$(tail -n 5 <<<"$out")"
fi

# ---- 2. the kernel log stays quiet: at most one line per 1000 calls (the
# once-per-snapshot "corrupted" message is allowed; per-call messages are not).
# The module's own lines: the block layer logs failed image reads itself.
lines=$(grep -c 'blksnap:' <<<"$log")
limit=$((CALLS / 1000 + 10))
if [ -n "$log" ]; then
	ktap_diag "kernel log during the fuzz ($lines lines), by message:"
	ktap_diag "$(sed -E 's/^\[ *[0-9.]+\] //; s/[0-9]+/N/g' <<<"$log" | sort | uniq -c | sort -rn | head -n 10)"
fi
if ((lines <= limit)); then
	ktap_ok "the module wrote $lines kernel log lines (limit $limit): nothing logged per call"
else
	ktap_fail "the module wrote $lines kernel log lines (limit $limit): nothing logged per call"
fi

# ---- a taken snapshot for the access checks
blksnap_clear
id=$(snap_id "$(bs create /dev/ram0)")
img=
if [ -n "$id" ] && bs append-storage "$id" /dev/ram2 0+32768 >/dev/null &&
	bs take "$id" >/dev/null; then
	for f in /dev/blksnap-image*; do
		[ -b "$f" ] && img=$f && break
	done
fi
[ -n "$img" ] || ktap_diag "could not set up a taken snapshot of /dev/ram0 (id '${id}')"

# ---- 3. without CAP_SYS_ADMIN, everything fails with EPERM
out=$(setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin -- \
	"$FUZZ" --unprivileged --seed "$SEED" --calls "$UNPRIV_CALLS" --threads 2 \
	--dev /dev/ram0 --dev /dev/ram1 --storage /dev/ram2 ${id:+--snapshot "$id"} 2>&1) && rc=0 || rc=$?
ktap_diag "$(grep -E '^(calls=|errno histogram)' <<<"$out")"
if [ "$rc" = 0 ]; then
	ktap_ok "$UNPRIV_CALLS fuzzed ioctls without CAP_SYS_ADMIN all fail with EPERM"
else
	ktap_fail "$UNPRIV_CALLS fuzzed ioctls without CAP_SYS_ADMIN all fail with EPERM" \
		"exit status $rc" "$(grep -E '^(VIOLATION|PROBLEM|HANG)' <<<"$out" | head -n 10)"
fi

# ---- 4. ... and change nothing
if [ -n "$img" ] && [ -b "$img" ] && bs collect --count 8 | grep -qx "id=$id"; then
	ktap_ok "the snapshot and its image survive the unprivileged calls"
else
	ktap_fail "the snapshot and its image survive the unprivileged calls" \
		"image '${img}', snapshots: $(bs collect --count 8 2>&1 | tr '\n' ' ')"
fi

# ---- 5. image nodes are root-only
if [ -n "$img" ]; then
	perm=$(stat -c '%a %U:%G' "$img")
	if [ "$perm" = "600 root:root" ]; then
		ktap_ok "$img is created 0600 root:root"
	else
		ktap_fail "$img is created 0600 root:root" "found $perm"
	fi
else
	ktap_fail "the image node is created 0600 root:root" "no image"
fi

# ---- 6. a non-root user cannot open an image
if [ -n "$img" ]; then
	expect_errno EACCES "a non-root user cannot open $img (EACCES)" \
		setpriv --reuid=65534 --regid=65534 --clear-groups -- \
		"${PYTHON_FAST[@]}" "$TESTS_DIR/tools/kcall.py" open "$img" --flags rdonly
else
	ktap_fail "a non-root user cannot open the image (EACCES)" "no image"
fi

# ---- 7. no image node outlives its snapshot
blksnap_clear
left=$(find /dev -maxdepth 1 -name 'blksnap-image*' | tr '\n' ' ')
if [ -z "$left" ]; then
	ktap_ok "no /dev/blksnap-image* left once every snapshot is destroyed"
else
	ktap_fail "no /dev/blksnap-image* left once every snapshot is destroyed" "left: $left"
fi

# ---- 8. unload
unload_case "the module unloads after the fuzz"

# ---- 9. nothing left behind in /dev after unload
if [ ! -e "$BLKSNAP_DEV" ] && [ -z "$(find /dev -maxdepth 1 -name 'blksnap-image*')" ]; then
	ktap_ok "no /dev/blksnap or image node after unload"
else
	ktap_fail "no /dev/blksnap or image node after unload" "$(ls -l /dev/blksnap* 2>&1)"
fi

# ---- 10. kmemleak
kmemleak_case "kmemleak reports no leak after the fuzz and unload"
ktap_finish
