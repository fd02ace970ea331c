#!/usr/bin/env bash
# Snapshot and tracker life cycle through raw ioctls (tests/tools/bsctl.py):
# the errors of CREATE, TAKE, DESTROY and TRACKER_REMOVE, the two-call
# protocol of the COLLECT ioctls, nonexistent devices, bad user pointers,
# huge counts, APPEND_STORAGE validation, several snapshots at once, and
# unloading the module with trackers and snapshots alive.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

RD_KIB=4096
RD_SECTORS=$((RD_KIB * 2))
# Device numbers with no device behind them (240-254 are for local use;
# 4095:1048575 is the largest dev_t).
NODEVS=(240:0 0:0 4095:1048575)
# User addresses no buffer can be at: page zero, the kernel's direct map.
BADPTRS=(1 0xffff888000000000)

ktap_plan 37

cbt_start
ram_setup 6 $RD_KIB
RAM=()
for i in 0 1 2 3 4 5; do RAM+=("$(devno /dev/ram$i)"); done

snap_count() { kv count "$(bs collect --null 2>&1)"; }
tracker_count() { kv count "$(bs trackers --null 2>&1)"; }
is_tracked() { bs info "$1" >/dev/null 2>&1; }

# ---- CREATE
expect_errno EINVAL "CREATE with the same device twice fails with EINVAL" \
	bs create /dev/ram0 /dev/ram1 /dev/ram0
expect_errno EINVAL "CREATE naming a device twice by number fails with EINVAL" \
	bs create "${RAM[2]}" "${RAM[2]}"
case_fn "a refused CREATE leaves no snapshot" test "$(snap_count)" = 0

for d in "${NODEVS[@]}"; do
	expect_errno_in "ENODEV|ENXIO" "CREATE with the nonexistent device $d fails with ENODEV or ENXIO" \
		bs create /dev/ram0 "$d"
done
case_fn "the failed CREATEs leave no snapshot" test "$(snap_count)" = 0

id1=$(snap_id "$(bs create /dev/ram0)")
if [ -z "$id1" ]; then
	ktap_diag "CREATE of /dev/ram0 failed: $(bs create /dev/ram0 2>&1)"
	ktap_fail_rest "CREATE does not work"
	ktap_finish
fi
expect_errno EALREADY "CREATE with a device already in a snapshot fails with EALREADY" \
	bs create /dev/ram1 /dev/ram0
expect_errno EALREADY "CREATE of exactly the devices of another snapshot fails with EALREADY" \
	bs create /dev/ram0
check "TAKE works" bs take "$id1"
expect_errno EALREADY "a second TAKE fails with EALREADY" bs take "$id1"

# ---- TRACKER_REMOVE
expect_errno EBUSY "TRACKER_REMOVE of a device in a snapshot fails with EBUSY" \
	bs remove /dev/ram0
expect_errno ENODEV "TRACKER_REMOVE of an untracked device fails with ENODEV" \
	bs remove /dev/ram5
removal() {
	bs destroy "$id1" || { echo "DESTROY failed"; return 1; }
	is_tracked /dev/ram0 || { echo "ram0 is not tracked after DESTROY"; return 1; }
	bs remove /dev/ram0 || { echo "TRACKER_REMOVE after DESTROY failed"; return 1; }
	! is_tracked /dev/ram0 || { echo "TRACKER_COLLECT still lists ram0: $(bs trackers --count 16)"; return 1; }
	want_errno ENODEV bs remove /dev/ram0
}
case_fn "after DESTROY the tracker stays; TRACKER_REMOVE then works and it is gone" removal

# ---- DESTROY
expect_errno ESRCH "DESTROY of an unknown id fails with ESRCH" \
	bs destroy 0123456789abcdef0123456789abcdef
expect_errno ESRCH "DESTROY of an already destroyed snapshot fails with ESRCH" \
	bs destroy "$id1"
check_fails "TAKE of a destroyed snapshot fails" bs take "$id1"

# ---- COLLECT: two snapshots, three trackers
ida=$(snap_id "$(bs create /dev/ram1 /dev/ram2)")
idb=$(snap_id "$(bs create /dev/ram3)")
# The two-call protocol of "bs COLLECT" (collect or trackers): with a null
# array, ret=0 and count=WANT; with each array of COUNT... entries (too
# small), ENODATA and count=WANT.
two_call() {
	local cmd=$1 want=$2 out n
	shift 2
	out=$(bs "$cmd" --null) || { echo "null array: $out"; return 1; }
	[ "$(kv ret "$out")" = 0 ] && [ "$(kv count "$out")" = "$want" ] ||
		{ echo "null array: expected ret=0 count=$want: $out"; return 1; }
	for n in "$@"; do
		out=$(bs "$cmd" --count "$n")
		grep -qx errno=ENODATA <<<"$out" && [ "$(kv count "$out")" = "$want" ] ||
			{ echo "count $n: expected ENODATA and count=$want: $out"; return 1; }
	done
}
collect_snapshots() {
	local out ids
	[ -n "$ida" ] && [ -n "$idb" ] || { echo "CREATE failed"; return 1; }
	two_call collect 2 0 1 || return 1
	for n in 2 7; do
		out=$(bs collect --count $n) || { echo "count $n: $out"; return 1; }
		ids=$(sed -n 's/^id=//p' <<<"$out" | sort | tr '\n' ' ')
		[ "$(kv count "$out")" = 2 ] && [ "$ids" = "$(printf '%s\n' "$ida" "$idb" | sort | tr '\n' ' ')" ] ||
			{ echo "count $n: expected the ids $ida $idb: $out"; return 1; }
	done
}
case_fn "SNAPSHOT_COLLECT: the count with a null array, ENODATA when too small, then the ids" \
	collect_snapshots
collect_trackers() {
	local out devs want
	two_call trackers 3 2 || return 1
	out=$(bs trackers --count 3) || { echo "count 3: $out"; return 1; }
	devs=$(sed -n 's/^dev=\([0-9:]*\) .*/\1/p' <<<"$out" | sort | tr '\n' ' ')
	want=$(printf '%s\n' "${RAM[1]}" "${RAM[2]}" "${RAM[3]}" | sort | tr '\n' ' ')
	[ "$devs" = "$want" ] || { echo "expected devices $want: $out"; return 1; }
	# Every entry describes a 4 MiB device with 64 KiB blocks, before any TAKE.
	if grep '^dev=' <<<"$out" | grep -vq "blk_size=65536 capacity=$((RD_KIB * 1024)) blk_count=64 .* snap=0"; then
		echo "unexpected cbt_info: $out"
		return 1
	fi
}
case_fn "TRACKER_COLLECT: count with a null array, ENODATA when too small, then every tracker" \
	collect_trackers

# ---- several snapshots at once
several() {
	local out g2 g3
	bs take "$ida" || { echo "TAKE a failed"; return 1; }
	bs take "$idb" || { echo "TAKE b failed"; return 1; }
	for d in /dev/ram1 /dev/ram2 /dev/ram3; do
		out=$(bs info $d)
		[ "$(kv snap "$out")" = 1 ] || { echo "$d: expected snap=1: $out"; return 1; }
		out=$(bs read-map $d --length 100) || { echo "$d: READ_CBT_MAP: $out"; return 1; }
		[ "$(kv ret "$out")" = 64 ] || { echo "$d: READ_CBT_MAP returned $out, expected 64"; return 1; }
	done
	g2=$(kv generation "$(bs info /dev/ram2)")
	g3=$(kv generation "$(bs info /dev/ram3)")
	[ "$g2" != "$g3" ] || { echo "two trackers share the generation_id $g2"; return 1; }
	bs destroy "$ida" || { echo "DESTROY a failed"; return 1; }
	want_errno EPERM bs read-map /dev/ram1 || return 1
	out=$(bs read-map /dev/ram3) || { echo "ram3 after the other DESTROY: $out"; return 1; }
	bs destroy "$idb" || { echo "DESTROY b failed"; return 1; }
	want_errno EPERM bs read-map /dev/ram3 || return 1
	[ "$(snap_count)" = 0 ] || { echo "snapshots left: $(bs collect --count 8)"; return 1; }
	[ "$(tracker_count)" = 3 ] || { echo "expected 3 trackers: $(bs trackers --count 8)"; return 1; }
}
case_fn "two snapshots of disjoint devices: taken and destroyed independently" several

# ---- bad pointers
id2=$(snap_id "$(bs create /dev/ram4)")
bs take "$id2" >/dev/null
badptr() {
	local p bad=0
	for p in "${BADPTRS[@]}"; do
		want_errno EFAULT "$@" --ptr "$p" || bad=1
	done
	return $bad
}
case_fn "CREATE with a bad device array pointer fails with EFAULT" badptr bs create /dev/ram5
case_fn "MARK_DIRTY_BLOCKS with a bad range pointer fails with EFAULT" \
	badptr bs mark-dirty /dev/ram4 0+8
case_fn "READ_CBT_MAP with a bad buffer pointer fails with EFAULT" \
	badptr bs read-map /dev/ram4 --length 64
case_fn "TRACKER_COLLECT with a bad array pointer fails with EFAULT" \
	badptr bs trackers --count 64
case_fn "SNAPSHOT_COLLECT with a bad array pointer fails with EFAULT" \
	badptr bs collect --count 64
case_fn "APPEND_STORAGE with a bad range pointer fails with EFAULT" \
	badptr bs append-storage "$id2" /dev/ram5 0+8
bad_args() {
	local cmd bad=0 out
	# The argument itself at address 0: every ioctl.
	for cmd in 0x40085601 0x40105602 0x80185603 0x80185604 0x40205605 0x80105606 \
		0x40285607 0x80105608 0x40105609 0x5000560b; do
		out=$(bs raw $cmd --addr 0 2>&1)
		grep -qx errno=EFAULT <<<"$out" || { echo "ioctl $cmd at address 0: $out"; bad=1; }
	done
	return $bad
}
case_fn "every ioctl with its argument at address 0 fails with EFAULT" bad_args
case_fn "a snapshot was not created by the bad calls" test "$(snap_count)" = 1

# ---- huge counts: refused without trying to allocate
huge() {
	local t0 out rc
	t0=$(date +%s%N)
	out=$("$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" != 1 ] || ! grep -qx errno=EINVAL <<<"$out"; then
		echo "$*: expected errno=EINVAL: exit $rc: $out"
		return 1
	fi
	echo "$* took $((($(date +%s%N) - t0) / 1000000)) ms"
}
case_fn "CREATE with count 0xffffffff fails with EINVAL" huge bs create /dev/ram5 --count 0xffffffff
case_fn "MARK_DIRTY_BLOCKS with count 0xffffffff fails with EINVAL" \
	huge bs mark-dirty /dev/ram4 0+8 --count 0xffffffff
case_fn "APPEND_STORAGE with count 0xffffffff fails with EINVAL" \
	huge bs append-storage "$id2" /dev/ram5 0+8 --count 0xffffffff

# ---- APPEND_STORAGE ranges
check "APPEND_STORAGE of page-aligned ranges within the device works" \
	bs append-storage "$id2" /dev/ram5 0+8 64+256 $((RD_SECTORS - 8))+8
append_bad() {
	local r bad=0
	for r in 1+8 0+7 4+4 $((RD_SECTORS - 8))+16 $((RD_SECTORS))+8 0+$((RD_SECTORS + 8)) \
		0xfffffffffffffff8+16; do
		want_errno EINVAL bs append-storage "$id2" /dev/ram5 $r || bad=1
	done
	# One bad range refuses the whole call.
	want_errno EINVAL bs append-storage "$id2" /dev/ram5 0+8 1+8 || bad=1
	return $bad
}
case_fn "APPEND_STORAGE of misaligned or out-of-device ranges fails with EINVAL" append_bad
expect_errno_in "ENODEV|ENXIO" "APPEND_STORAGE on a nonexistent device fails with ENODEV or ENXIO" \
	bs append-storage "$id2" 240:0 0+8

# ---- unload with everything alive
unload_alive() {
	local out idc
	idc=$(snap_id "$(bs create /dev/ram0 /dev/ram5)")
	[ -n "$idc" ] || { echo "CREATE failed"; return 1; }
	# Now: id2 taken (ram4), idc created (ram0, ram5), trackers on ram1..ram3.
	[ "$(snap_count)" = 2 ] && [ "$(tracker_count)" = 6 ] ||
		{ echo "expected 2 snapshots and 6 trackers: $(bs collect --count 8) $(bs trackers --count 8)"; return 1; }
	out=$(rmmod blksnap 2>&1) || { echo "rmmod: $out"; return 1; }
	! blksnap_loaded || { echo "blksnap still loaded"; return 1; }
	[ ! -e "$BLKSNAP_DEV" ] || { echo "$BLKSNAP_DEV still exists"; return 1; }
	# Nothing holds the ramdisks any more.
	out=$(rmmod brd 2>&1) || { echo "rmmod brd after blksnap: $out"; return 1; }
	modprobe brd rd_nr=6 rd_size=$RD_KIB || { echo "modprobe brd again failed"; return 1; }
	insmod "$BLKSNAP_KO" || { echo "insmod again failed"; return 1; }
	wait_for "$BLKSNAP_DEV" 5
	[ "$(snap_count)" = 0 ] && [ "$(tracker_count)" = 0 ] ||
		{ echo "after reload: $(bs collect --null) $(bs trackers --null)"; return 1; }
}
case_fn "rmmod with snapshots and trackers alive works and leaves nothing" unload_alive

# ---- churn under I/O
WRITERS=()
for i in 1 2 3; do
	(while dd if=/dev/urandom of=/dev/ram$i bs=64k count=8 seek=$((RANDOM % 56)) conv=nocreat \
		oflag=direct status=none; do :; done) &
	WRITERS+=($!)
	at_exit "kill $!"
done
churn() {
	local c id
	for ((c = 0; c < 25; c++)); do
		id=$(snap_id "$(bs create /dev/ram1 /dev/ram2)")
		[ -n "$id" ] || { echo "cycle $c: CREATE failed"; return 1; }
		bs take "$id" >/dev/null || { echo "cycle $c: TAKE failed"; return 1; }
		bs read-map /dev/ram1 --length 64 >/dev/null || { echo "cycle $c: READ_CBT_MAP failed"; return 1; }
		bs destroy "$id" >/dev/null || { echo "cycle $c: DESTROY failed"; return 1; }
		if ((c % 3 == 0)); then
			bs remove /dev/ram1 >/dev/null || { echo "cycle $c: REMOVE failed"; return 1; }
		fi
		if ((c % 4 == 0)); then
			id=$(snap_id "$(bs create /dev/ram3)")
			bs destroy "$id" >/dev/null && bs remove /dev/ram3 >/dev/null ||
				{ echo "cycle $c: ram3 CREATE/DESTROY/REMOVE failed"; return 1; }
		fi
	done
	for p in "${WRITERS[@]}"; do
		kill -0 "$p" || { echo "a writer died"; return 1; }
	done
}
case_fn "25 create/take/destroy/remove cycles while writers run on the devices" churn
unload_busy() {
	local id out
	id=$(snap_id "$(bs create /dev/ram1 /dev/ram3)")
	bs take "$id" >/dev/null || { echo "TAKE failed"; return 1; }
	sleep 1
	out=$(rmmod blksnap 2>&1) || { echo "rmmod: $out"; return 1; }
	! blksnap_loaded || { echo "still loaded"; return 1; }
	sleep 1
	for p in "${WRITERS[@]}"; do
		kill -0 "$p" || { echo "a writer died"; return 1; }
	done
}
case_fn "the module unloads with a taken snapshot while writers run; the writes go on" unload_busy
for p in "${WRITERS[@]}"; do kill "$p" 2>/dev/null; done
wait "${WRITERS[@]}" 2>/dev/null
ktap_finish
