#!/usr/bin/env bash
# Fault injection (debug kernel: fail_make_request and failslab; skips, exit
# code 4, where they are absent). Every case checks the data with
# tests/tools/stamp.py: the snapshot reports corrupted with the errno (one
# `corrupted` event), image I/O fails with EIO from then on, and the
# original device holds exactly what was written to it.
#
#   - I/O errors on the difference-storage device while writers make the
#     module copy chunks (fail_make_request on it for 2 s): corrupted, EIO.
#   - I/O errors on the original device during copy-on-write (its COW reads
#     fail; so do the writers' own writes and reads in that window, which is
#     their business: stamp.py --io-errors holds each sector of a failed
#     write to "what it held before or what the write carried", settled by
#     the next read, so the model stays exact): corrupted, EIO.
#   - failslab on the writers' atomic allocations (task-filter: the
#     copy-on-write work item allocated in the submitter's context):
#     corrupted, ENOMEM; the held-back writes pass.
#   - failslab on every allocation of the kernel workers (task-filter on the
#     kworkers, sleeping allocations included, a bounded number of failures):
#     the copy-on-write worker's allocations fail: corrupted, ENOMEM.
#   - failslab on the ioctl paths (tests/tools/ioctl_faults.py marks itself):
#     snapshot lifecycles with 5% of its allocations failing give only
#     clean errnos (ENOMEM) and leave nothing behind.
# Then a healthy snapshot (exact stamp check), rmmod, and a kmemleak scan
# that must find nothing.
# shellcheck source-path=SCRIPTDIR disable=SC2015 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

DBG=/sys/kernel/debug
[ -d $DBG/failslab ] || mount -t debugfs none $DBG 2>/dev/null
FMR=$DBG/fail_make_request
FSL=$DBG/failslab
if [ ! -d $FMR ] || [ ! -d $FSL ]; then
	echo "KTAP version 1"
	echo "1..0 # SKIP no $FMR or $FSL (fault injection is in the debug kernel only)"
	exit 4
fi

# stamp_case, showing the summary lines of a fault run, and how many fault
# messages the kernel logged meanwhile.
CASE_SUMMARY='writers done|faults:|event: code=1|events after|settled|ENOMEM|total:|image I/O fails'
CASE_SUMMARY_LINES=14
tcase() {
	local mark
	mark=$(kmsg_mark)
	stamp_case "$@"
	ktap_diag "($(kmsg_since "$mark" | grep -c 'FAULT_INJECTION: forcing a failure')" \
		"fault messages in the kernel log, rate-limited)"
}

ktap_plan 9

cbt_start

# Every fault off (also at exit, whatever happens).
faults_off() {
	local f
	echo 0 >$FSL/probability
	echo 0 >$FMR/probability
	for f in /sys/block/ram*/make-it-fail; do [ -e "$f" ] && echo 0 >"$f"; done
	for f in /proc/[0-9]*/make-it-fail; do echo 0 >"$f"; done 2>/dev/null
	return 0
}
at_exit faults_off
echo 1 >$FMR/interval
echo -1 >$FMR/times
echo 0 >$FMR/space
echo 1 >$FMR/verbose
echo 0 >$FSL/space
echo 1 >$FSL/verbose
faults_off

# 4 KiB chunks: nearly every write copies a new chunk, so copy-on-write is
# going on whenever a fault window opens.
ram_setup 4 16384 chunk_minimum_shift=12

RUN=(--dev /dev/ram0 --storage /dev/ram1:0:32768 --overflow --writers 3 --writes 100000
	--seconds 15 --image-writes 20)

# The shell command (for stamp.py --at, which starts it 0 s after the writers
# and waits for it before the final checks) that makes every request to
# /dev/DEV fail for SECONDS. (Starting it takes seconds under TCG: the
# writers run 15 s.)
fmr_window() {
	echo "echo 100 >$FMR/probability; echo 1 >/sys/block/$1/make-it-fail; sleep $2;" \
		"echo 0 >/sys/block/$1/make-it-fail; echo 0 >$FMR/probability"
}

# ---- fail_make_request
tcase "I/O errors on the storage device during COW: corrupted (EIO), originals exact, image I/O EIO" \
	stamp run "${RUN[@]}" --corrupt-errno 5 --at "0:$(fmr_window ram1 3)" --seed 51

tcase "I/O errors on the original device during COW: corrupted (EIO), originals exact (failed writes settled)" \
	stamp run "${RUN[@]}" --corrupt-errno 5 --io-errors --at "0:$(fmr_window ram0 3)" --seed 52

# ---- failslab on the copy-on-write path
# The writers' tasks (stamp.py's threads: the parent of the --at shell),
# atomic allocations only (the default ignore-gfp-wait=Y).
echo Y >$FSL/task-filter
echo Y >$FSL/ignore-gfp-wait
echo 1 >$FSL/interval
echo -1 >$FSL/times
WIN_ATOMIC="for t in /proc/\$PPID/task/*; do echo 1 >\$t/make-it-fail; done; echo 100 >$FSL/probability;"
WIN_ATOMIC+=" sleep 3; echo 0 >$FSL/probability; for t in /proc/\$PPID/task/*; do echo 0 >\$t/make-it-fail; done"
tcase "failslab on the writers' atomic allocations (the COW work item): corrupted (ENOMEM), originals exact" \
	stamp run "${RUN[@]}" --corrupt-errno 12 --io-errors --at "0:$WIN_ATOMIC" --seed 53

# Every kworker (marked now; the window only sets the probability), sleeping
# allocations included, at most 40 failures.
mark_kworkers() {
	local p comm
	for p in /proc/[0-9]*; do
		read -r comm <"$p/comm" || continue
		case $comm in kworker*) echo 1 >"$p/make-it-fail" ;; esac
	done 2>/dev/null
	echo N >$FSL/ignore-gfp-wait
	echo 40 >$FSL/times
}
mark_kworkers
tcase "failslab on the kernel workers (the COW worker's allocations): corrupted (ENOMEM), originals exact" \
	stamp run "${RUN[@]}" --corrupt-errno 12 --io-errors \
	--at "0:echo 100 >$FSL/probability; sleep 3; echo 0 >$FSL/probability" --seed 54
faults_off
echo Y >$FSL/ignore-gfp-wait
echo -1 >$FSL/times

# ---- failslab on the ioctl paths
ioctl_loop() {
	local rc
	echo Y >$FSL/task-filter
	echo N >$FSL/ignore-gfp-wait
	echo 1 >$FSL/interval
	echo -1 >$FSL/times
	echo 0 >$FSL/verbose
	echo 5 >$FSL/probability
	"${PYTHON_FAST[@]}" "$TESTS_DIR/tools/ioctl_faults.py" --dev /dev/ram2 --dev /dev/ram3 \
		--storage /dev/ram1:0:32768 --iterations "${BLKSNAP_FAULT_ITERATIONS:-150}" --seed 55 &&
		rc=0 || rc=$?
	faults_off
	echo Y >$FSL/ignore-gfp-wait
	echo 1 >$FSL/verbose
	return $rc
}
tcase "failslab (5%) on the ioctl paths: lifecycles give only clean errnos (ENOMEM), nothing left behind" \
	ioctl_loop

# TAKE fails in many places of the loop above, some after images were made:
# those images' minors must be free again, so the next two images are
# blksnap-image0 and blksnap-image1.
minors_free() {
	"${PYTHON_FAST[@]}" - "$TESTS_DIR/tools" <<'EOF_PY'
import os
import sys
sys.path.insert(0, sys.argv[1])
import bsctl
with bsctl.Ctl() as c:
    sid = c.create([bsctl.parse_dev("/dev/ram2"), bsctl.parse_dev("/dev/ram3")])
    try:
        c.append_storage(sid, bsctl.parse_dev("/dev/ram1"), [(0, 32768)])
        c.take(sid)
        names = sorted(n for n in os.listdir("/sys/block") if n.startswith("blksnap-image"))
    finally:
        c.destroy(sid)
if names != ["blksnap-image0", "blksnap-image1"]:
    print(f"# the images after the failed TAKEs: {names}")
    sys.exit(1)
EOF_PY
}
tcase "after the failed TAKEs no image minor is left in use: the next TAKE makes blksnap-image0 and 1" \
	minors_free

# ---- afterwards
tcase "after the faults a new snapshot is healthy: image = TAKE data, storage slots right, no event" \
	stamp run --dev /dev/ram0 --storage /dev/ram1:0:32768 --writers 3 --writes 300 --seconds 4 \
	--image-writes 20 --check-storage --events --seed 56

blksnap_clear
unload_case "the module unloads after the faults"

kmemleak_case "kmemleak finds no leak after the unload"
ktap_finish
