#!/usr/bin/env bash
# SNAPSHOT_WAIT_EVENT: the low_free_space event CREATE queues (asking for
# diff_storage_minimum sectors), the timeout (ENOENT), unknown and destroyed
# snapshots (ESRCH), waiters blocked in a long wait woken by DESTROY from
# another process (ESRCH) or by a signal (EINTR).
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

ktap_plan 13

cbt_start
ram_setup 4 4096

BSCTL=$TESTS_DIR/tools/bsctl.py
# Starts a waiter in the background (pid in $waiter_pid, output in $1).
start_waiter() {
	local out=$1 id=$2 timeout=$3
	"$PYTHON" "$BSCTL" wait-event "$id" --timeout "$timeout" >"$out" 2>&1 &
	waiter_pid=$!
	at_exit "kill $waiter_pid"
}
# Waits until process $1 sits in the ioctl system call (16 on x86_64).
in_ioctl() {
	local pid=$1 n=600 sc
	while ((n-- > 0)); do
		sc=$(cut -d' ' -f1 "/proc/$pid/syscall" 2>/dev/null) || return 1
		[ "$sc" = 16 ] && return 0
		sleep 0.1
	done
	return 1
}
# Waits up to $2 seconds for process $1 to end.
ended_within() {
	local pid=$1 n=$(($2 * 10))
	while kill -0 "$pid" 2>/dev/null && ((n-- > 0)); do
		sleep 0.1
	done
	! kill -0 "$pid" 2>/dev/null
}

# ---- the first event
first_event() {
	local want=$1 dev=$2 t0 id out code req tl now
	t0=$("$PYTHON" -c 'import time; print(time.monotonic_ns())')
	id=$(snap_id "$(bs create "$dev")")
	[ -n "$id" ] || { echo "CREATE failed"; return 1; }
	echo "id=$id"
	out=$(bs wait-event "$id" --timeout 5000) || { echo "WAIT_EVENT: $out"; return 1; }
	echo "$out"
	code=$(kv code "$out") req=$(kv requested "$out") tl=$(kv time_label "$out") now=$(kv now_ns "$out")
	[ "$code" = 0 ] || { echo "code $code, expected 0 (low_free_space)"; return 1; }
	[ "$req" = "$want" ] || { echo "requested_nr_sect $req, expected $want"; return 1; }
	# time_label is ktime (CLOCK_MONOTONIC) in ns: between the CREATE and now.
	((tl >= t0 - 1000000000 && tl <= now)) ||
		{ echo "time_label $tl not between the CREATE ($t0) and the wait's return ($now)"; return 1; }
	out=$(bs wait-event "$id" --timeout 0)
	grep -qx errno=ENOENT <<<"$out" || { echo "a second event after the first one: $out"; return 1; }
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
}
case_fn "CREATE queues low_free_space asking for diff_storage_minimum (2097152) sectors" \
	first_event 2097152 /dev/ram0

# ---- timeouts
id=$(snap_id "$(bs create /dev/ram1)")
bs wait-event "$id" --timeout 1000 >/dev/null # the first event
timed_wait() {
	local ms=$1 out el
	out=$(bs wait-event "$id" --timeout "$ms")
	grep -qx errno=ENOENT <<<"$out" || { echo "expected errno=ENOENT: $out"; return 1; }
	el=$(kv elapsed_ms "$out")
	echo "timeout $ms ms: returned after $el ms"
	# Sanity only: at least about the timeout, and not absurdly longer.
	((el >= ms * 9 / 10)) || { echo "returned after $el ms, before the $ms ms timeout"; return 1; }
	((el <= ms + 30000)) || { echo "returned after $el ms for a $ms ms timeout"; return 1; }
}
case_fn "WAIT_EVENT with nothing pending fails with ENOENT after the timeout (1.5 s)" timed_wait 1500
case_fn "WAIT_EVENT with a 4 s timeout waits about 4 s (milliseconds, not jiffies)" timed_wait 4000
zero_wait() {
	local out
	out=$(bs wait-event "$id" --timeout 0)
	grep -qx errno=ENOENT <<<"$out" || { echo "expected errno=ENOENT: $out"; return 1; }
	(($(kv elapsed_ms "$out") < 3000)) || { echo "timeout 0 waited: $out"; return 1; }
}
case_fn "WAIT_EVENT with timeout 0 and nothing pending fails with ENOENT at once" zero_wait

# ---- unknown and destroyed snapshots
expect_errno ESRCH "WAIT_EVENT on an unknown id fails with ESRCH" \
	bs wait-event 0123456789abcdef0123456789abcdef --timeout 100
bs destroy "$id" >/dev/null
expect_errno ESRCH "WAIT_EVENT on a destroyed snapshot fails with ESRCH" \
	bs wait-event "$id" --timeout 100

# ---- a blocked waiter and DESTROY from another process
ida=$(snap_id "$(bs create /dev/ram2)")
idb=$(snap_id "$(bs create /dev/ram3)")
bs wait-event "$ida" --timeout 1000 >/dev/null
bs wait-event "$idb" --timeout 1000 >/dev/null
wa1=/tmp/events-wa1 wa2=/tmp/events-wa2 wb=/tmp/events-wb
start_waiter $wa1 "$ida" 120000
pa1=$waiter_pid
start_waiter $wa2 "$ida" 120000
pa2=$waiter_pid
start_waiter $wb "$idb" 120000
pb=$waiter_pid
blocked() {
	for p in $pa1 $pa2 $pb; do
		in_ioctl "$p" || { echo "waiter $p is not in the ioctl: $(cat $wa1 $wa2 $wb)"; return 1; }
	done
	sleep 1
	for p in $pa1 $pa2 $pb; do
		kill -0 "$p" 2>/dev/null || { echo "a waiter ended early: $(cat $wa1 $wa2 $wb)"; return 1; }
	done
}
case_fn "three waiters stay blocked in WAIT_EVENT" blocked
unload_busy() {
	local out
	out=$(rmmod blksnap 2>&1) && { echo "rmmod succeeded with waiters inside the module"; return 1; }
	echo "rmmod: $out"
	blksnap_loaded || { echo "the module is gone"; return 1; }
	kill -0 "$pa1" && kill -0 "$pb" || { echo "a waiter ended: $(cat $wa1 $wb)"; return 1; }
}
case_fn "rmmod is refused while waiters hold the control device; they keep waiting" unload_busy
woken_by_destroy() {
	bs destroy "$ida" || { echo "DESTROY failed"; return 1; }
	for p in $pa1 $pa2; do
		ended_within "$p" 15 || { echo "waiter $p still blocked 15 s after DESTROY"; return 1; }
	done
	for f in $wa1 $wa2; do
		grep -qx errno=ESRCH "$f" || { echo "waiter: expected errno=ESRCH: $(cat "$f")"; return 1; }
		echo "waiter: $(tr '\n' ' ' <"$f")"
	done
	# The waiter on the other snapshot is not woken.
	sleep 1
	kill -0 "$pb" 2>/dev/null || { echo "the other snapshot's waiter ended: $(cat $wb)"; return 1; }
}
case_fn "DESTROY from another process wakes every waiter of that snapshot with ESRCH, only those" \
	woken_by_destroy

# ---- a signal
woken_by_signal() {
	kill -USR1 "$pb"
	ended_within "$pb" 15 || { echo "waiter still blocked 15 s after SIGUSR1"; return 1; }
	grep -qx errno=EINTR $wb || { echo "expected errno=EINTR: $(cat $wb)"; return 1; }
	(($(kv elapsed_ms "$(cat $wb)") < 100000)) || { echo "ended by its timeout: $(cat $wb)"; return 1; }
	echo "waiter: $(tr '\n' ' ' <$wb)"
}
case_fn "a signal interrupts a long WAIT_EVENT with EINTR" woken_by_signal
check "the snapshot of the interrupted waiter is still there and can be destroyed" \
	bs destroy "$idb"
rm -f $wa1 $wa2 $wb

# ---- the parameter decides what the first event asks for
if blksnap_load diff_storage_minimum=4096; then
	case_fn "with diff_storage_minimum=4096 the first event asks for 4096 sectors" \
		first_event 4096 /dev/ram0
else
	ktap_fail "with diff_storage_minimum=4096 the first event asks for 4096 sectors" "insmod failed"
fi

blksnap_clear
unload_case "the module unloads after the event tests"
ktap_finish
