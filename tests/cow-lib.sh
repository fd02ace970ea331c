# shellcheck shell=bash
# Helpers for the copy-on-write tests (tests/vm/15, 2?, 31 and 4[1-3]-*.sh),
# on top of tests/cbt-lib.sh: the sector-stamp tool, cases that show a run's
# summary and time, snapshots driven by the blksnap CLI.
#
#   stamp ARGS...               tests/tools/stamp.py (STAMP is the command as an array)
#   stamp_case DESC CMD...      one case: ok if CMD (run in a subshell) succeeds; then
#                               the lines of its output matching $CASE_SUMMARY (at most
#                               $CASE_SUMMARY_LINES, kernel log times cut), else its
#                               first FAIL lines and its last $CASE_TAIL lines; and
#                               how long it took
#   timed_case DESC CMD...      case_fn (CMD runs in this shell), and how long it took
#   cli_create DEV...           blksnap snapshot_create of the DEVs; sets SNAP_ID
#   cli_take STORE RANGE        for SNAP_ID: snapshot_appendstorage of RANGE
#                               (FIRST:COUNT sectors) of STORE, snapshot_take and
#                               snapshot_collect -i; sets SNAP_IMAGES (that output)
#                               and SNAP_IMG (its first image)
#   cli_snapshot STORE RANGE DEV...  cli_create DEV..., then cli_take STORE RANGE
#   image_of COLLECT DEVNO      the image of original DEVNO in snapshot_collect -i output
#   drop_caches                 sync, and drop the page cache
#
# The cli_* helpers print what failed and return 1.

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/cbt-lib.sh"

STAMP=("${PYTHON_FAST[@]}" "$TESTS_DIR/tools/stamp.py")
stamp() { "${STAMP[@]}" "$@"; }

# What stamp_case shows of a passing run: the summary lines of stamp.py.
CASE_SUMMARY='writers done|chunks written|storage slots|events after|grow loop|image reads|DESTROY|rmmod took|event: code=1|point in time'
CASE_SUMMARY_LINES=8
CASE_TAIL=25

stamp_case() {
	local desc=$1 out rc sum t=$SECONDS
	shift
	out=$("$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then
		ktap_ok "$desc"
		sum=$(grep -E "$CASE_SUMMARY" <<<"$out" | sed -E 's/^\[ *[0-9.]+\] //' | head -n "$CASE_SUMMARY_LINES")
		[ -z "$sum" ] || ktap_diag "$sum"
	else
		sum=$(grep -m 15 'FAIL' <<<"$out")
		ktap_fail "$desc" ${sum:+"$sum" "..."} "$(tail -n "$CASE_TAIL" <<<"$out")"
	fi
	ktap_diag "($((SECONDS - t)) s)"
}

timed_case() {
	local t=$SECONDS
	case_fn "$@"
	ktap_diag "($((SECONDS - t)) s)"
}

SNAP_ID='' SNAP_IMAGES='' SNAP_IMG=''
cli_create() {
	local out
	SNAP_ID='' SNAP_IMAGES='' SNAP_IMG=''
	out=$("$BLKSNAP_CLI" snapshot_create -d "$@") || { echo "create: $out"; return 1; }
	SNAP_ID=$(kv id "$out")
}
# shellcheck disable=SC2034 # SNAP_IMG is for the test scripts
cli_take() {
	if ! "$BLKSNAP_CLI" snapshot_appendstorage -i "$SNAP_ID" -d "$1" --range "$2" ||
		! "$BLKSNAP_CLI" snapshot_take -i "$SNAP_ID"; then
		echo "append/take failed"
		return 1
	fi
	SNAP_IMAGES=$("$BLKSNAP_CLI" snapshot_collect -i "$SNAP_ID") || { echo "collect: $SNAP_IMAGES"; return 1; }
	SNAP_IMG=$(kv image "$SNAP_IMAGES")
}
cli_snapshot() {
	local store=$1 range=$2
	shift 2
	cli_create "$@" && cli_take "$store" "$range"
}

image_of() {
	awk -v d="orig_dev_id=$2" '$0 == d { f = 1 } f && /^image=/ { print substr($0, 7); exit }' <<<"$1"
}

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches; }
