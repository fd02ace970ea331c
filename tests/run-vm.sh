#!/usr/bin/env bash
# Runs the in-VM test scripts (tests/vm/*.sh, or the ones named) and nests
# their KTAP output as subtests, kselftest style. Runs inside the test VM:
#
#   scripts/vm.sh -- tests/run-vm.sh [NAME...]
#
# NAME is a script's file name with or without ".sh" (e.g. 01-module) or a
# path. Each script gets BLKSNAP_TEST_TIMEOUT seconds (default 900, and 3600
# on the debug kernel, where KASAN, lockdep and kmemleak make it several
# times slower).
#
# Counts the individual test cases. A script that exits non-zero without
# failing a case, reports fewer cases than planned, times out, or leaves the
# blksnap module loaded or processes running counts as one more failure. The
# last line is "N passed, N failed, N skipped"; the exit status is 1 if
# anything failed.
set -u

TESTS_DIR=$(cd "$(dirname "$0")" && pwd)
# shellcheck source-path=SCRIPTDIR
source "$TESTS_DIR/lib.sh"
require_vm

scripts=()
if (($#)); then
	for name in "$@"; do
		for f in "$name" "$TESTS_DIR/vm/$name" "$TESTS_DIR/vm/$name.sh"; do
			if [ -f "$f" ]; then
				scripts+=("$f")
				continue 2
			fi
		done
		echo "run-vm.sh: no test script '$name' in $TESTS_DIR/vm" >&2
		exit 2
	done
else
	for f in "$TESTS_DIR"/vm/*.sh; do
		[ -f "$f" ] && scripts+=("$f")
	done
fi

# Runs one script ($1), then kills what it left running in its process group
# (timeout gives each script its own): a leftover writer would keep the output
# pipe open and hang the run. Says so in a line the runner counts as a failure.
# shellcheck disable=SC2016 # expanded by the inner bash
reap='bash "$1" </dev/null; rc=$?
named=
for _ in 1 2 3 4 5; do
	pgrep -g 0 >"/tmp/reap.$$"
	left=$(grep -vx -e "$$" -e "$PPID" "/tmp/reap.$$")
	[ -n "$left" ] || break
	[ -n "$named" ] || named=$(ps -o comm= -p "$(echo $left | tr " " ,)" | tr "\n" " ")
	kill -KILL $left 2>/dev/null
	sleep 0.2
done
rm -f "/tmp/reap.$$"
[ -z "$named" ] || echo "# left processes running: $named"
exit $rc'

# scripts/vm.sh boots the debug kernel with kasan.fault=report.
limit=900
grep -q 'kasan\.fault=' /proc/cmdline && limit=3600
limit=${BLKSNAP_TEST_TIMEOUT:-$limit}

pass=0 fail=0 skip=0
echo "KTAP version 1"
echo "1..${#scripts[@]}"
i=0
for script in "${scripts[@]}"; do
	i=$((i + 1))
	name=$(basename "$script" .sh)
	log=$(mktemp)
	echo "run-vm: start $name" >/dev/kmsg
	start=$SECONDS
	timeout --kill-after=10 "$limit" bash -c "$reap" reap "$script" </dev/null 2>&1 |
		tee "$log" | sed -u 's/^/    /'
	rc=${PIPESTATUS[0]}
	echo "run-vm: end $name (exit $rc)" >/dev/kmsg

	# The script's own cases are its unindented result lines.
	p=$(grep -cE '^ok [0-9]+' "$log")
	s=$(grep -cE '^ok [0-9]+.*# *SKIP' "$log")
	f=$(grep -cE '^not ok [0-9]+' "$log")
	p=$((p - s))
	planned=$(sed -n 's/^1\.\.\([0-9]*\).*/\1/p' "$log" | head -n1)
	extra=()
	if [ "$rc" = 124 ] || [ "$rc" = 137 ]; then
		extra+=("timed out after $((SECONDS - start))s")
	elif [ "$rc" = 4 ] && [ $((p + f)) = 0 ]; then
		# kselftest's "skip" exit code, for a script that skips as a whole.
		s=$((s + 1))
	elif [ "$rc" != 0 ] && [ "$f" = 0 ]; then
		extra+=("exited with status $rc without failing a case")
	fi
	if grep -q '^# left processes running' "$log"; then
		extra+=("left processes running")
	fi
	if [ -z "$planned" ]; then
		[ "$rc" = 4 ] || extra+=("no KTAP plan")
	elif ((p + s + f < planned)); then
		extra+=("reported $((p + s + f)) of $planned planned cases")
	fi
	if blksnap_loaded; then
		extra+=("left the blksnap module loaded")
		# A killed script's processes may still be finishing their calls.
		for _ in $(seq 30); do rmmod blksnap 2>/dev/null && break; sleep 1; done
	fi
	# Whatever a failed script left behind must not fail the next ones.
	mounted=$(awk '$1 ~ "^/dev/(ram|loop|mapper/|dm-|blksnap-image)" {print $2}' /proc/mounts | tac)
	if [ -n "$mounted" ]; then
		extra+=("left filesystems mounted: ${mounted//$'\n'/ }")
		for m in $mounted; do umount -l "$m"; done
	fi
	if dmsetup ls 2>/dev/null | grep -vq '^No devices'; then
		extra+=("left device-mapper devices: $(dmsetup ls | tr '\n' ' ')")
		dmsetup remove_all --force >/dev/null 2>&1
	fi
	if [ -n "$(losetup -n -O NAME 2>/dev/null)" ]; then
		extra+=("left loop devices: $(losetup -n -O NAME | tr '\n' ' ')")
		losetup -D
	fi
	if [ -e /sys/module/brd ] && ! rmmod brd 2>/dev/null; then
		for _ in $(seq 30); do sleep 1; rmmod brd 2>/dev/null && break; done
		[ -e /sys/module/brd ] && extra+=("left brd in use")
	fi
	# A writer that outlived its device makes a regular file of the node,
	# and the next script would find it in place of its device.
	strays=$(find /dev -maxdepth 1 -type f -newer "$log" | tr '\n' ' ')
	if [ -n "$strays" ]; then
		extra+=("left regular files in /dev: $strays")
		# shellcheck disable=SC2086 # one word a file
		rm -f $strays
	fi
	rm -f "$log"

	for e in "${extra[@]}"; do
		echo "# $name: $e"
	done
	# Whatever went wrong around the cases is one more failure.
	((${#extra[@]} == 0)) || f=$((f + 1))
	pass=$((pass + p)) fail=$((fail + f)) skip=$((skip + s))
	if ((f > 0)); then
		echo "not ok $i $name"
	elif ((p == 0 && s > 0)); then
		echo "ok $i $name # SKIP"
	else
		echo "ok $i $name"
	fi
done
echo "# Totals: pass:$pass fail:$fail xfail:0 xpass:0 skip:$skip error:0"
echo "$pass passed, $fail failed, $skip skipped"
((fail == 0))
