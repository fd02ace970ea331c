# shellcheck shell=bash
# Helpers for the test scripts: KTAP output and a few blksnap-specific tools.
# Sourced by tests/vm/*.sh (which run as root inside the test VM).
#
#   ktap_plan N                 KTAP header and plan
#   ktap_ok DESC                ok N DESC
#   ktap_fail DESC [DIAG...]    not ok N DESC, each DIAG as a "# " line
#   ktap_skip DESC REASON       ok N DESC # SKIP REASON
#   ktap_result RC DESC         ok if RC is 0, else not ok
#   ktap_diag TEXT...           "# " lines (one per line of TEXT)
#   check DESC CMD...           ok if CMD succeeds; otherwise not ok with its output
#   check_fails DESC CMD...     ok if CMD fails
#   expect_errno ERRNO DESC CMD...
#                               ok if CMD fails with ERRNO; CMD is a tests/tools/kcall.py
#                               call (or anything that prints "errno=NAME" and exits 1)
#   ktap_fail_rest REASON       not ok for every planned case not yet reported
#   ktap_skip_rest REASON       the same, as skips
#   ktap_finish                 totals line, exit 0 (all passed or skipped) or 1
#   require_built [FILE...]     end the script (every planned case not ok) unless
#                               blksnap.ko and the executables FILE exist
#   setup_abort REASON          end the script: REASON, and every planned case not
#                               yet reported not ok ("setup failed")
#   insmod_or_finish            insmod blksnap.ko, or end the script like setup_abort
#   unload_case DESC            one case: rmmod blksnap works and the module is gone
#
# Descriptions must not contain '#'.

set -u

TESTS_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
: "${BLKSNAP_ROOT:=$(cd "$TESTS_DIR/.." && pwd)}"
export BLKSNAP_ROOT

KTAP_PLANNED=0
KTAP_N=0
KTAP_PASS=0
KTAP_FAIL=0
KTAP_SKIP=0

ktap_plan() {
	KTAP_PLANNED=$1
	echo "KTAP version 1"
	echo "1..$1"
}

ktap_diag() {
	local line
	printf '%s\n' "$*" | while IFS= read -r line; do
		echo "# $line"
	done
}

ktap_ok() {
	KTAP_N=$((KTAP_N + 1))
	KTAP_PASS=$((KTAP_PASS + 1))
	echo "ok $KTAP_N $1"
}

ktap_fail() {
	local desc=$1
	shift
	(($#)) && ktap_diag "$@"
	KTAP_N=$((KTAP_N + 1))
	KTAP_FAIL=$((KTAP_FAIL + 1))
	echo "not ok $KTAP_N $desc"
}

ktap_skip() {
	KTAP_N=$((KTAP_N + 1))
	KTAP_SKIP=$((KTAP_SKIP + 1))
	echo "ok $KTAP_N $1 # SKIP ${2:-}"
}

ktap_result() {
	if [ "$1" = 0 ]; then ktap_ok "$2"; else ktap_fail "$2"; fi
}

# Shows a failed command: its words, status and the tail of its output.
_ktap_show() {
	local rc=$1 out=$2
	shift 2
	ktap_diag "command: $*"
	ktap_diag "exit status: $rc"
	[ -z "$out" ] || ktap_diag "$(tail -n 25 <<<"$out")"
}

check() {
	local desc=$1 out rc
	shift
	out=$("$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then
		ktap_ok "$desc"
	else
		_ktap_show "$rc" "$out" "$@"
		ktap_fail "$desc"
	fi
}

check_fails() {
	local desc=$1 out rc
	shift
	out=$("$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" != 0 ]; then
		ktap_ok "$desc"
	else
		ktap_diag "expected a failure, but it succeeded"
		_ktap_show "$rc" "$out" "$@"
		ktap_fail "$desc"
	fi
}

expect_errno() {
	local want=$1 desc=$2 out rc
	shift 2
	out=$("$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 1 ] && grep -qx "errno=$want" <<<"$out"; then
		ktap_ok "$desc"
	else
		ktap_diag "expected errno=$want"
		_ktap_show "$rc" "$out" "$@"
		ktap_fail "$desc"
	fi
}

ktap_fail_rest() {
	while ((KTAP_N < KTAP_PLANNED)); do
		ktap_fail "not run: $1"
	done
}

ktap_skip_rest() {
	while ((KTAP_N < KTAP_PLANNED)); do
		ktap_skip "not run" "$1"
	done
}

ktap_finish() {
	if ((KTAP_N != KTAP_PLANNED)); then
		ktap_diag "planned $KTAP_PLANNED cases, reported $KTAP_N"
		ktap_fail_rest "missing"
		((KTAP_N == KTAP_PLANNED)) || KTAP_FAIL=$((KTAP_FAIL + 1))
	fi
	echo "# Totals: pass:$KTAP_PASS fail:$KTAP_FAIL xfail:0 xpass:0 skip:$KTAP_SKIP error:0"
	((KTAP_FAIL == 0))
	exit $?
}

# ---- blksnap helpers ----

# shellcheck disable=SC2034 # for the test scripts
# The module under test: the build for the booted kernel (test.sh sets it for
# a kernel line whose module is built elsewhere).
BLKSNAP_KO=${BLKSNAP_KO:-$BLKSNAP_ROOT/blksnap.ko}
# shellcheck disable=SC2034
BLKSNAP_DEV=/dev/blksnap
# shellcheck disable=SC2034
BLKSNAP_CLI=$BLKSNAP_ROOT/target/release/blksnap
PYTHON=/usr/bin/python3
[ -x "$PYTHON" ] || PYTHON=python3

# Python without the site machinery: starts much faster under TCG.
PYTHON_FAST=("$PYTHON" -I -S)
# The independent ioctl/syscall tool (see tests/tools/kcall.py).
kcall() { "${PYTHON_FAST[@]}" "$TESTS_DIR/tools/kcall.py" "$@"; }

blksnap_loaded() { [ -e /sys/module/blksnap ]; }

# Unloads blksnap if it is loaded; fails if it stays.
blksnap_unload() {
	blksnap_loaded || return 0
	rmmod blksnap && ! blksnap_loaded
}

# Writes a unique marker to the kernel log and prints it.
kmsg_mark() {
	local mark
	mark="ktap-mark-$$-$RANDOM-$RANDOM"
	echo "$mark" >/dev/kmsg
	echo "$mark"
}

# Prints the kernel log lines after a marker from kmsg_mark.
kmsg_since() {
	dmesg | sed -n "/$1/,\$p" | tail -n +2
}

# Ends the script unless blksnap.ko and the executables named are built.
require_built() {
	local f
	if [ ! -f "$BLKSNAP_KO" ]; then
		ktap_diag "$BLKSNAP_KO is missing (the module did not build)"
		ktap_fail_rest "no blksnap.ko"
		ktap_finish
	fi
	for f in "$@"; do
		if [ ! -x "$f" ]; then
			ktap_diag "$f is missing (not built)"
			ktap_fail_rest "not built"
			ktap_finish
		fi
	done
}

# Ends the script when its set-up failed.
setup_abort() {
	ktap_diag "$1"
	ktap_fail_rest "setup failed"
	ktap_finish
}

# Loads blksnap.ko with no parameters; ends the script if it does not load.
insmod_or_finish() {
	local out
	out=$(insmod "$BLKSNAP_KO" 2>&1) && return 0
	ktap_diag "insmod failed: $out"
	ktap_fail_rest "blksnap.ko does not load"
	ktap_finish
}

# One case: the module unloads (rmmod succeeds and it is gone).
unload_case() {
	local out rc
	out=$(rmmod blksnap 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ] && ! blksnap_loaded; then
		ktap_ok "$1"
	else
		ktap_fail "$1" "rmmod: exit $rc: $out"
	fi
}

# The test scripts load modules and change devices: the VM only.
require_vm() {
	if [ "${BLKSNAP_VM:-}" != 1 ] && [ "${BLKSNAP_TEST_ANYWHERE:-}" != 1 ]; then
		echo "$0: runs inside the test VM only (scripts/vm.sh -- tests/run-vm.sh);" \
			"set BLKSNAP_TEST_ANYWHERE=1 to override" >&2
		exit 2
	fi
	[ "$(id -u)" = 0 ] || { echo "$0: must run as root" >&2; exit 2; }
}
