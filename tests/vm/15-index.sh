#!/usr/bin/env bash
# The tracker index with two tracked devices in one slot of its front table
# (ramdisks 1:0 and 1:64 hash alike): copy-on-write finds each device's
# tracker whichever holds the slot, after either is removed, and after
# they are added again in the other order.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

ktap_plan 8
cbt_start "$BLKSNAP_CLI"
# max_part=1: ramdisk i is 1:i.
brd_setup 65 4096 1 && blksnap_load || setup_abort "brd with 65 ramdisks, or insmod, failed"
CLI=$BLKSNAP_CLI
fill() { dd if=/dev/zero bs=1M count=4 status=none | tr '\0' "$2" | dd of="$1" bs=1M oflag=direct status=none; }
sum() { dd if="$1" bs=1M count=4 iflag=direct status=none | md5sum | cut -d' ' -f1; }
track() {
	local out
	out=$("$CLI" snapshot_create -d "$1") && "$CLI" snapshot_destroy -i "$(val id "$out")" >/dev/null
}
# snapshot DEV, overwrite it with CHAR: the image must keep the old data.
cow_check() {
	local dev=$1 before rc=0
	before=$(sum "$dev")
	cli_create "$dev" || return 1
	cli_take /dev/ram1 0:8192 && wait_for "$SNAP_IMG" 5 || rc=1
	if [ $rc = 0 ]; then
		fill "$dev" "$2"
		[ "$(sum "$dev")" != "$before" ] || { echo "the write did not change $dev"; rc=1; }
		[ "$(sum "$SNAP_IMG")" = "$before" ] || { echo "the image of $dev lost its TAKE data"; rc=1; }
	fi
	"$CLI" snapshot_destroy -i "$SNAP_ID" >/dev/null || rc=1
	return $rc
}

fill /dev/ram0 a
fill /dev/ram64 b
track /dev/ram0 && track /dev/ram64
case_fn "1:64 added second, beside 1:0 in its slot: copy-on-write on 1:64" cow_check /dev/ram64 c
case_fn "1:0, holding the slot: copy-on-write" cow_check /dev/ram0 d
"$CLI" tracker_remove -d /dev/ram0
case_fn "1:0 removed, the slot empty: copy-on-write on 1:64" cow_check /dev/ram64 e
track /dev/ram0
case_fn "1:0 added again, into the empty slot: copy-on-write" cow_check /dev/ram0 f
case_fn "1:64 beside it: copy-on-write" cow_check /dev/ram64 g
"$CLI" tracker_remove -d /dev/ram64
case_fn "1:64 removed: copy-on-write on 1:0" cow_check /dev/ram0 h
"$CLI" tracker_remove -d /dev/ram0
track /dev/ram64
case_fn "1:64 alone: copy-on-write" cow_check /dev/ram64 i
"$CLI" tracker_remove -d /dev/ram64
case_fn "the module unloads" rmmod blksnap
ktap_finish
