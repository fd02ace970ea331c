#!/usr/bin/env bash
# Tracked devices that go away: scsi_debug disks deleted through sysfs while
# tracked, while in a created snapshot and while in a taken one (with a
# writer running), repeatedly during copy-on-write (BLKSNAP_RACE_ROUNDS / 2
# rounds), a loop device detached while tracked, a dm device removed with
# --force. Nothing crashes (vm.sh scans the kernel log), TRACKER_COLLECT
# keeps working, the trackers can be removed, the devices are released, and
# the modules unload.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

ktap_plan 13

cbt_start

# Adds a scsi_debug host and prints the name of its new disk, once ready.
sd_add() {
	local before d n=100
	before=$(sd_disks | tr '\n' ' ')
	echo 1 >/sys/bus/pseudo/drivers/scsi_debug/add_host || return 1
	while [ "$(sd_disks | tr '\n' ' ')" = "$before" ] && ((n-- > 0)); do sleep 0.1; done
	d=$(comm -13 <(tr ' ' '\n' <<<"$before" | sort) <(sd_disks) | head -n1)
	[ -n "$d" ] || { echo "no new disk (had: $before)"; return 1; }
	sd_ready "$d" >&2 || return 1
	echo "$d"
}
# Three scsi_debug disks (one host each).
sd_setup 3 >/tmp/cbt-sd-setup 2>&1 || setup_abort "scsi_debug: $(cat /tmp/cbt-sd-setup)"
rm -f /tmp/cbt-sd-setup
ram_setup 1 8192
ktap_diag "scsi_debug disks: ${SD[*]}"

tracked_devs() { bs trackers --count 64 | sed -n 's/^dev=\([0-9:]*\) .*/\1/p'; }
# Removes the tracker of $1 (MAJ:MIN): success, or ENODEV if the module
# dropped it itself; either way it must not be listed afterwards.
untrack() {
	local out
	out=$(bs remove "$1" 2>&1) || grep -qx errno=ENODEV <<<"$out" ||
		{ echo "TRACKER_REMOVE $1: $out"; return 1; }
	out=$(bs trackers --count 64) || { echo "TRACKER_COLLECT: $out"; return 1; }
	! grep -q "^dev=$1 " <<<"$out" || { echo "$1 still listed: $out"; return 1; }
}
# Sets the caller's id to a new snapshot of the devices given, or says why not.
new_snap() {
	local out
	out=$(bs create "$@") && id=$(snap_id "$out") && [ -n "$id" ] ||
		{ echo "CREATE $*: $out"; return 1; }
}

# ---- deleted while tracked (no snapshot)
sd_tracked() {
	local d=${SD[0]} dn id out
	dn=$(devno "/dev/$d")
	new_snap "/dev/$d" || return 1
	bs take "$id" && bs destroy "$id" || { echo "TAKE/DESTROY failed"; return 1; }
	dd if=/dev/urandom of="/dev/$d" bs=64k count=4 oflag=direct status=none
	sd_delete "$d" || { echo "delete $d failed"; return 1; }
	sd_gone "$d" || { echo "/sys/block/$d still there"; return 1; }
	out=$(bs trackers --count 64) || { echo "TRACKER_COLLECT after the delete: $out"; return 1; }
	echo "after the delete: $out"
	untrack "$dn"
}
case_fn "a tracked scsi_debug disk is deleted: TRACKER_COLLECT works, the tracker can be removed" \
	sd_tracked

# ---- deleted while in a created snapshot
sd_created() {
	local d=${SD[1]} dn id out
	dn=$(devno "/dev/$d")
	new_snap "/dev/$d" /dev/ram0 || return 1
	sd_delete "$d" || { echo "delete $d failed"; return 1; }
	sd_gone "$d" || { echo "/sys/block/$d still there"; return 1; }
	out=$(bs take "$id" 2>&1)
	echo "note: TAKE after the delete: ${out:-ok}"
	out=$(bs trackers --count 64) || { echo "TRACKER_COLLECT: $out"; return 1; }
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
	untrack "$dn" || return 1
	untrack "$(devno /dev/ram0)"
}
case_fn "a disk deleted in a created snapshot: TAKE fails or works cleanly, DESTROY and remove work" \
	sd_created

# ---- deleted while in a taken snapshot, with a writer running
sd_taken() {
	local d=${SD[2]} dn id out w
	dn=$(devno "/dev/$d")
	new_snap "/dev/$d" || return 1
	bs take "$id" || { echo "TAKE failed"; return 1; }
	(while dd if=/dev/zero of="/dev/$d" bs=64k count=16 oflag=direct conv=nocreat,notrunc status=none 2>/dev/null; do :; done) &
	w=$!
	sleep 1
	sd_delete "$d" || { echo "delete $d failed"; kill $w; return 1; }
	sd_gone "$d" || { echo "/sys/block/$d still there"; kill $w; return 1; }
	sleep 1
	kill $w 2>/dev/null
	wait $w 2>/dev/null
	out=$(bs read-map "$dn" --length 1024 2>&1)
	echo "note: READ_CBT_MAP after the delete: $out"
	out=$(bs trackers --count 64) || { echo "TRACKER_COLLECT: $out"; return 1; }
	out=$(bs collect --count 8) || { echo "SNAPSHOT_COLLECT: $out"; return 1; }
	grep -q "^id=$id" <<<"$out" || { echo "the snapshot is gone from SNAPSHOT_COLLECT: $out"; return 1; }
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
	untrack "$dn"
}
case_fn "a disk deleted under a taken snapshot while written: DESTROY and remove work" sd_taken
no_trackers() {
	local out
	out=$(bs trackers --null) || { echo "TRACKER_COLLECT: $out"; return 1; }
	grep -qx count=0 <<<"$out" || { echo "trackers left: $(bs trackers --count 64)"; return 1; }
}
case_fn "TRACKER_COLLECT works and lists no tracker after the deletions" no_trackers

# The freed scsi_debug disks are released: new ones can come and be tracked.
sd_again() {
	local d id out
	d=$(sd_add) || return 1
	new_snap "/dev/$d" || return 1
	bs take "$id" || { echo "TAKE failed"; return 1; }
	out=$(bs info "/dev/$d")
	[ "$(kv capacity "$out")" = $((16 << 20)) ] || { echo "$d: wrong capacity: $out"; return 1; }
	bs destroy "$id" && bs remove "/dev/$d" || { echo "DESTROY/REMOVE failed"; return 1; }
	sd_delete "$d"
	sd_gone "$d"
}
case_fn "a new scsi_debug disk after the deletions is tracked with its own capacity" sd_again

# ---- deleted during copy-on-write, repeated: each round a new disk in a
# taken snapshot with its storage on ram0, four writers making first writes
# to chunks all over it, and the disk deleted under them. DESTROY and
# TRACKER_REMOVE work, the writers end, nothing is left held.
ROUNDS=$((${BLKSNAP_RACE_ROUNDS:-8} / 2))
sd_cow_rounds() {
	local r d dn id i ws out busy=0
	for ((r = 0; r < ROUNDS; r++)); do
		d=$(sd_add) || { echo "round $r: $d"; return 1; }
		dn=$(devno "/dev/$d")
		new_snap "/dev/$d" || return 1
		bs append-storage "$id" /dev/ram0 0+16384 >/dev/null && bs take "$id" >/dev/null ||
			{ echo "round $r: APPEND_STORAGE/TAKE failed"; return 1; }
		# Writer i writes 64 KiB blocks i, i+4, i+8, ... in order: first
		# writes to new chunks all the way through.
		ws=()
		for i in 0 1 2 3; do
			# (nocreat: once the node is gone, dd must fail, not make a file)
			(for ((k = i; k < 256; k += 4)); do
				dd if=/dev/urandom of="/dev/$d" bs=64k count=1 seek=$k \
					oflag=direct conv=nocreat,notrunc status=none 2>/dev/null || break
			done) &
			ws+=($!)
		done
		sleep 0.$((RANDOM % 5))
		kill -0 "${ws[@]}" 2>/dev/null && busy=$((busy + 1))
		sd_delete "$d" || { echo "round $r: delete $d failed"; kill "${ws[@]}"; return 1; }
		sd_gone "$d" || { echo "round $r: /sys/block/$d still there"; kill "${ws[@]}"; return 1; }
		for i in "${ws[@]}"; do
			timeout 30 tail --pid="$i" -f /dev/null || { echo "round $r: a writer hangs"; return 1; }
		done
		wait "${ws[@]}" 2>/dev/null
		out=$(bs collect --count 8) && grep -q "^id=$id" <<<"$out" ||
			{ echo "round $r: SNAPSHOT_COLLECT: $out"; return 1; }
		bs destroy "$id" || { echo "round $r: DESTROY failed"; return 1; }
		untrack "$dn" || { echo "round $r"; return 1; }
	done
	echo "note: $ROUNDS disks deleted, $busy of them while first writes were running"
}
case_fn "disks deleted during copy-on-write ($ROUNDS rounds): DESTROY and remove work, writers end" \
	sd_cow_rounds

# ---- a loop device detached while tracked
loop_setup lp $((8 << 20))
loop_detached() {
	local id out name dn
	[ -n "$lp" ] || { echo "losetup failed"; return 1; }
	name=$(basename "$lp")
	dn=$(devno "$lp")
	new_snap "$lp" || return 1
	bs take "$id" || { echo "TAKE failed"; return 1; }
	out=$(losetup -d "$lp" 2>&1) && echo "note: losetup -d while tracked: ok" ||
		echo "note: losetup -d while tracked: $out"
	dd if=/dev/zero of="$lp" bs=4k count=1 oflag=direct status=none 2>/dev/null
	out=$(bs trackers --count 64) || { echo "TRACKER_COLLECT: $out"; return 1; }
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
	untrack "$dn" || return 1
	# With nobody holding it any more, the detach completes.
	losetup -d "$lp" 2>/dev/null
	local n=50
	while [ -e "/sys/block/$name/loop/backing_file" ] && ((n-- > 0)); do sleep 0.1; done
	[ ! -e "/sys/block/$name/loop/backing_file" ] ||
		{ echo "$lp is still bound after the tracker went: $(losetup -l "$lp")"; return 1; }
}
case_fn "a loop device detached while tracked: remove works and the loop device is released" \
	loop_detached

# ---- a dm device removed with --force while tracked
dm_linear dm cbt-gone /dev/ram0 0 8192
dm_forced() {
	local id out dn
	[ -n "$dm" ] || { echo "dmsetup create failed"; return 1; }
	dn=$(devno "$dm")
	new_snap "$dm" || return 1
	bs take "$id" || { echo "TAKE failed"; return 1; }
	out=$(dmsetup remove --noudevsync --force cbt-gone 2>&1)
	echo "note: dmsetup remove --force while tracked: ${out:-ok}"
	dd if=/dev/zero of="$dm" bs=4k count=1 oflag=direct status=none 2>/dev/null
	out=$(bs trackers --count 64) || { echo "TRACKER_COLLECT: $out"; return 1; }
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
	untrack "$dn" || return 1
	dmsetup remove --noudevsync cbt-gone 2>/dev/null
	local n=50
	while dmsetup info cbt-gone >/dev/null 2>&1 && ((n-- > 0)); do sleep 0.1; done
	! dmsetup info cbt-gone >/dev/null 2>&1 || { echo "cbt-gone still exists"; return 1; }
}
case_fn "a dm device removed with --force while tracked: remove works and dm lets it go" dm_forced

# ---- a partition of a tracked disk deleted (the disk stays)
loop_setup pl $((8 << 20)) -P
part_gone() {
	local id out
	[ -n "$pl" ] || { echo "losetup failed"; return 1; }
	write_mbr "$pl" 2048:8192 || return 1
	blockdev --rereadpt "$pl" || return 1
	wait_for "${pl}p1" 5 || { echo "no ${pl}p1"; return 1; }
	new_snap "$pl" || return 1
	bs take "$id" || { echo "TAKE failed"; return 1; }
	dd if=/dev/zero of="${pl}p1" bs=4k count=4 oflag=direct status=none || return 1
	partx -d --nr 1 "$pl" || { echo "partx -d failed"; return 1; }
	dd if=/dev/zero of="$pl" bs=4k count=4 seek=600 oflag=direct status=none || return 1
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
	new_snap "$pl" || return 1
	bs take "$id" || { echo "second TAKE failed"; return 1; }
	out=$(bs map "$pl" --out /tmp/cbt-part-map) || { echo "map: $out"; return 1; }
	bs destroy "$id"
	echo "map: $out"
	# The writes to the partition (1 MiB in) and to the disk (2.4 MiB in) are there.
	"$PYTHON" -c '
import sys
m = open("/tmp/cbt-part-map", "rb").read()
sys.exit(0 if m[16] == 2 and m[37] == 2 else f"blocks 16, 37: {m[16]}, {m[37]}; expected 2, 2")' ||
		return 1
	bs remove "$pl"
}
case_fn "a partition of a tracked disk deleted: the disk's tracking goes on" part_gone
rm -f /tmp/cbt-part-map

check "TRACKER_COLLECT works at the end" bs trackers --null
unload_case "the module unloads after the removals"
check "scsi_debug unloads afterwards (no device left held)" rmmod scsi_debug
check "brd unloads afterwards (the dm device and ramdisk are released)" rmmod brd
ktap_finish
