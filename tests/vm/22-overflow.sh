#!/usr/bin/env bash
# Running out of difference storage, and not running out.
#
# Stretch: the snapshot starts with 8 MiB of storage; a background loop (the
# CLI's snapshot_waitevent / snapshot_appendstorage, as a backup agent does)
# appends what each low_free_space event requests, 8 MiB at a time, while 10
# times the initial storage is written over the whole original: no corrupted
# event, and the image is exactly the data at TAKE (tests/tools/stamp.py).
#
# Overflow: storage for 4 chunks while every chunk is written: exactly one
# corrupted event (ENOSPC, naming the original), the writes to the original
# go on without error and lose nothing, image reads and writes fail with EIO;
# DESTROY works and the next snapshot of the device is healthy.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

ktap_plan 8

cbt_start
ORIG_KIB=81920     # ram0, the original of the stretch test: 163840 sectors
POOL_MIB=112       # the storage pool (a loop device): 229376 sectors
STEP=16384         # sectors appended at a time (8 MiB)
MINIMUM=65536      # diff_storage_minimum: low_free_space below 32768 free sectors (16 MiB)
ram_setup 1 $ORIG_KIB diff_storage_minimum=$MINIMUM
# POOL, L2, L3: loop devices over files in /tmp.
POOL='' L2='' L3=''
loop_setup POOL ${POOL_MIB}M && loop_setup L2 32M && loop_setup L3 32M ||
	setup_abort "losetup failed"

CLI=$BLKSNAP_CLI
GROW_LOG=/tmp/overflow-grow.log
at_exit "rm -f $GROW_LOG"

# Answers each low_free_space event as a backup agent does: appends what it
# requests, in ranges of STEP sectors of the pool (one APPEND_STORAGE call
# per event); the answer to the event
# CREATE queued is only STEP, so the snapshot starts with 8 MiB. Runs until the
# snapshot is gone and logs what it did to $GROW_LOG. (No forks other than the
# CLI: on a debug kernel every process start counts.)
grow_loop() {
	local id=$1 pos=$2 end=$3 out want first=1 ranges
	while :; do
		out=$($CLI snapshot_waitevent -i "$id" -t 1000 2>&1) || { echo "waitevent: $out" >>$GROW_LOG; return; }
		case $out in
		*event=low_free_space*)
			[[ $out =~ requested_nr_sect=([0-9]+) ]] && want=${BASH_REMATCH[1]} || want=$STEP
			((first)) && want=$STEP
			first=0
			ranges=()
			while ((want > 0)); do
				((pos + STEP <= end)) || { echo "pool exhausted" >>$GROW_LOG; break; }
				ranges+=("$pos:$STEP")
				pos=$((pos + STEP)) want=$((want - STEP))
			done
			((${#ranges[@]})) || continue
			if $CLI snapshot_appendstorage -i "$id" -d "$POOL" "${ranges[@]/#/--range=}" >>$GROW_LOG 2>&1; then
				printf "appended %s (${BASH_REMATCH[1]:-?} requested)\n" "${ranges[@]}" >>$GROW_LOG
			else
				echo "append ${ranges[*]} failed" >>$GROW_LOG
			fi
			;;
		*event=corrupted*) echo "corrupted: ${out//$'\n'/ }" >>$GROW_LOG ;;
		*result=timeout*) ;;
		*) echo "unexpected: ${out//$'\n'/ }" >>$GROW_LOG ;;
		esac
	done
}

# ---- stretch
SID=""
GROW_PID=""
start_stretch() {
	local out n=100
	stamp fill /dev/ram0 "$POOL" >/dev/null || { echo "fill failed"; return 1; }
	: >$GROW_LOG
	out=$($CLI snapshot_create -d /dev/ram0) || { echo "create: $out"; return 1; }
	SID=$(kv id "$out")
	grow_loop "$SID" 0 $((POOL_MIB * 2048)) &
	GROW_PID=$!
	at_exit "kill $GROW_PID"
	# The loop answers the event CREATE queued with the first 8 MiB.
	while ! grep -q '^appended' $GROW_LOG && ((n-- > 0)); do sleep 0.1; done
	grep -q '^appended 0:' $GROW_LOG || { echo "no storage appended: $(cat $GROW_LOG)"; return 1; }
	$CLI snapshot_take -i "$SID" || { echo "take failed"; return 1; }
}
case_fn "a snapshot with 8 MiB of storage, grown by a loop reacting to low_free_space events" start_stretch

stretch_run() {
	local appends rc
	stamp run --attach "$SID" --dev /dev/ram0 --storage "$POOL:0:$((POOL_MIB * 2048))" \
		--writers 4 --sweep --writes 100000 --seconds 60 --check-storage --seed 41 && rc=0 || rc=$?
	appends=$(grep -c '^appended' $GROW_LOG)
	echo "grow loop: $appends appends of $STEP sectors:"
	cat $GROW_LOG
	((rc == 0)) || return 1
	! grep -q corrupted $GROW_LOG || { echo "a corrupted event came"; return 1; }
	((appends >= 10)) || { echo "the storage grew only $appends times"; return 1; }
}
if [ -n "$SID" ]; then
	stamp_case "80 MiB written while the storage grows 8 MiB at a time from 8 MiB: no corrupted event, image = TAKE data" \
		stretch_run
else
	ktap_fail "80 MiB written while the storage grows 8 MiB at a time" "no snapshot"
fi

stretch_end() {
	$CLI snapshot_destroy -i "$SID" || { echo "destroy failed"; return 1; }
	local n=50
	while kill -0 "$GROW_PID" 2>/dev/null && ((n-- > 0)); do sleep 0.1; done
	! kill -0 "$GROW_PID" 2>/dev/null || { echo "the grow loop's wait did not end after DESTROY"; return 1; }
	grep -q 'ESRCH\|waitevent' $GROW_LOG || { echo "grow loop log: $(tail -n 3 $GROW_LOG)"; return 1; }
}
stamp_case "DESTROY ends the event loop's wait" stretch_end

# ---- overflow: storage for 4 chunks (256 KiB each) of a 32 MiB device
stamp_case "overflow: one corrupted event (ENOSPC), original writes go on and lose nothing, image I/O fails (EIO; ENOSPC for the image write that overflows)" \
	stamp run --dev "$L2" --storage "$L3:0:2048" --overflow --writers 4 --writes 300 \
	--seconds 20 --image-writes 20 --zeroout --seed 42

# The same with the storage on the original itself, 2 chunks of it.
stamp_case "overflow with the storage on the original device itself: the same" \
	stamp run --dev "$L2" --storage "$L2:64512:1024" --overflow --writers 3 --writes 200 \
	--seconds 15 --seed 43

# After an overflow the device can be snapshotted again, healthy.
stamp_case "after the overflow a new snapshot of the device is healthy" \
	stamp run --dev "$L2" --storage "$L3:0:65536" --writers 3 --writes 150 --seconds 8 \
	--check-storage --events --seed 44

# An overflow while a filesystem on the original is busy: it stays consistent.
fs_overflow() {
	local id out mnt=/mnt/overflow-fs img
	mkfs.ext4 -q -F -b 4096 "$L2" || return 1
	mkdir -p $mnt && mount "$L2" $mnt || return 1
	at_exit "umount $mnt"
	cli_snapshot "$L3" 0:1024 "$L2" || return 1
	id=$SNAP_ID img=$SNAP_IMG
	dd if=/dev/urandom of=$mnt/data bs=1M count=12 conv=fsync status=none ||
		{ echo "writing to the filesystem failed"; return 1; }
	sha256sum $mnt/data >/tmp/overflow-sum
	out=$($CLI snapshot_waitevent -i "$id" -t 2000)
	while grep -q event=low_free_space <<<"$out"; do out=$($CLI snapshot_waitevent -i "$id" -t 2000); done
	echo "event: $(tr '\n' ' ' <<<"$out")"
	grep -q event=corrupted <<<"$out" && grep -q err_code=28 <<<"$out" ||
		{ echo "no corrupted event with ENOSPC"; return 1; }
	! dd if="$img" of=/dev/null bs=4096 count=1 iflag=direct status=none 2>/dev/null ||
		{ echo "the image can still be read"; return 1; }
	$CLI snapshot_destroy -i "$id" || { echo "destroy failed"; return 1; }
	umount $mnt || return 1
	fsck.ext4 -fn "$L2" || { echo "fsck of the original failed"; return 1; }
	mount "$L2" $mnt && sha256sum -c --quiet /tmp/overflow-sum || { echo "the file changed"; return 1; }
	umount $mnt
	rm -f /tmp/overflow-sum
}
stamp_case "overflow under a mounted ext4: the filesystem stays clean and its data intact" fs_overflow

blksnap_clear
unload_case "the module unloads after the overflow tests"
ktap_finish
