#!/usr/bin/env bash
# Change tracking (CBT) against an independent model (tests/tools/cbt_model.py):
# random buffered, O_DIRECT, discard and write-zeroes I/O on ramdisks, a loop
# device, a dm-linear device, an md raid1 and partitions, compared byte for
# byte with the CBT map after each snapshot; block size selection; the
# readable table frozen while a snapshot is held; MARK_DIRTY_BLOCKS; new
# generations on wrap-around (255 snapshots) and on a capacity change.
# shellcheck source-path=SCRIPTDIR disable=SC2119 # cbt_start takes no arguments here
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

# Ramdisks of 16 MiB + 4 KiB: with 4 KiB minimum blocks and at most 1000
# blocks, the block size grows to 32 KiB and the last block is partial.
RD_KIB=16388
FINE=(tracking_block_minimum_shift=12 tracking_block_maximum_count=1000)
SEED=${CBT_SEED:-$RANDOM$RANDOM}

ktap_plan 17

cbt_start
ktap_diag "model seed base: $SEED (set CBT_SEED to repeat)"

# Runs the model check as one case; prints its summary, or its tail on failure.
n_model=0
model_case() {
	local desc=$1 out rc
	shift
	n_model=$((n_model + 1))
	out=$(cbt_model --seed "$((SEED + n_model))" "$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 0 ]; then
		ktap_diag "$(grep -E '^summary:' <<<"$out")"
		ktap_ok "$desc"
	else
		ktap_diag "cbt_model.py $* (exit $rc):"
		ktap_diag "$(grep -v '^# cycle .* done' <<<"$out" | tail -n 40)"
		ktap_fail "$desc"
	fi
}

ram_setup 8 $RD_KIB
ktap_diag "ram0: discard_max_bytes=$(cat /sys/block/ram0/queue/discard_max_bytes)" \
	"write_zeroes_max_bytes=$(cat /sys/block/ram0/queue/write_zeroes_max_bytes)"

# ---- default parameters: 64 KiB blocks
model_case "model: ramdisk, default parameters (64 KiB blocks, partial last block)" \
	/dev/ram0 --cycles 6

# 255 takes wrap the active number: exactly one new generation in 258.
model_case "model: generation_id changes when the snap number wraps (258 snapshots)" \
	/dev/ram7 --cycles 258 --ops-before 2 --ops-between 0 --ops-held 0 \
	--random-reads 0 --expect-generation-changes 1 --no-op-log

# ---- 4 KiB minimum, at most 1000 blocks
if ! blksnap_load "${FINE[@]}"; then
	ktap_fail_rest "insmod with ${FINE[*]} failed"
	ktap_finish
fi
model_case "model: ramdisk, block size grown to 32 KiB (4 KiB minimum, 1000 blocks at most)" \
	/dev/ram0 --cycles 10
model_case "model: two ramdisks in one snapshot" \
	/dev/ram1 /dev/ram2 --cycles 6

# TAKE switches every device of a snapshot at one point in time.
out=$("$PYTHON" "$TESTS_DIR/tools/cbt_atomic.py" /dev/ram1 /dev/ram2 /dev/ram6 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ]; then
	ktap_diag "$(tail -n 1 <<<"$out")"
	ktap_ok "writes going round three devices during TAKE: the marked ones are a prefix"
else
	ktap_fail "writes going round three devices during TAKE: the marked ones are a prefix" \
		"cbt_atomic.py (exit $rc):" "$(tail -n 20 <<<"$out")"
fi

# A loop device whose size is not a multiple of 4 KiB (512-byte buffers).
loop_setup loop $((12 * 1024 * 1024 + 3584))
if [ -n "$loop" ]; then
	model_case "model: loop device over a /tmp file (12 MiB + 3.5 KiB)" "$loop" --cycles 8
else
	ktap_fail "model: loop device over a /tmp file" "losetup failed"
fi

# dm-linear over ram3 from an odd sector: the dm device's bios reach ram3
# from inside dm (a stacked driver).
dm_linear dm cbt-linear /dev/ram3 2053 30000
if [ -n "$dm" ]; then
	model_case "model: writes through dm-linear (from sector 2053) tracked on the ramdisk" \
		"/dev/ram3=$dm@2053" --cycles 8
else
	ktap_fail "model: writes through dm-linear tracked on the ramdisk" "dmsetup failed"
fi

# md raid1 without a superblock over ram4 and ram5; ram4 is tracked.
if command -v mdadm >/dev/null; then
	if out=$(mdadm --build /dev/md100 --level=1 --raid-devices=2 --assume-clean \
		/dev/ram4 /dev/ram5 2>&1) && wait_for /dev/md100 5; then
		at_exit "mdadm --stop /dev/md100"
		model_case "model: writes through md raid1 tracked on a leg" \
			"/dev/ram4=/dev/md100@0" --cycles 6
	else
		ktap_fail "model: writes through md raid1 tracked on a leg" "mdadm --build: $out"
	fi
else
	ktap_skip "model: writes through md raid1 tracked on a leg" "no mdadm"
fi

# A partitioned loop device (MBR written here; partition 2 starts at an
# odd sector): writes to the disk and to both partitions, tracked on the disk.
loop_setup ploop $((16 * 1024 * 1024)) -P
if [ -n "$ploop" ]; then
	write_mbr "$ploop" 2048:12000 14051:16000
	blockdev --rereadpt "$ploop" 2>/dev/null || partx -u "$ploop" 2>/dev/null
	if wait_for "${ploop}p2" 5; then
		model_case "model: writes to a disk and its partitions tracked on the disk" \
			"$ploop=$ploop,${ploop}p1,${ploop}p2" --cycles 8
		model_case "model: a tracked partition" "${ploop}p1" --cycles 6
		model_case "model: a disk and its partition both tracked: partition writes reach both" \
			"$ploop=${ploop}p1" "${ploop}p1" --cycles 4
	else
		ktap_fail "model: writes to a disk and its partitions tracked on the disk" \
			"no ${ploop}p2 after writing the partition table"
	fi
else
	ktap_fail "model: writes to a disk and its partitions tracked on the disk" "losetup failed"
fi

model_case "model: MARK_DIRTY_BLOCKS marks the held table and the next one" \
	/dev/ram6 --cycles 6 --mark-dirty 3 --ops-held 4

# The readable table stays as it was at TAKE while writes go on.
held_check() {
	local id a=/tmp/cbt-held-a b=/tmp/cbt-held-b c=/tmp/cbt-held-c out snap
	blksnap_clear
	id=$(snap_id "$(bs create /dev/ram0)")
	[ -n "$id" ] || { echo "create failed"; return 1; }
	bs take "$id" >/dev/null || { echo "take failed"; return 1; }
	bs map /dev/ram0 --out $a >/dev/null || { echo "read failed"; return 1; }
	dd if=/dev/urandom of=/dev/ram0 bs=4k count=$((RD_KIB / 4)) oflag=direct conv=nocreat status=none
	"$PYTHON" -c 'import os,sys; fd=os.open(sys.argv[1],os.O_WRONLY); os.pwrite(fd,b"x"*100,12345); os.fsync(fd)' /dev/ram0
	bs mark-dirty /dev/ram0 0+1 >/dev/null || { echo "mark-dirty failed"; return 1; }
	bs map /dev/ram0 --out $b >/dev/null || { echo "second read failed"; return 1; }
	# Only MARK_DIRTY's block 0 may differ (set to the held snapshot's number).
	snap=$(kv snap "$(bs info /dev/ram0)")
	out=$("$PYTHON" - "$a" "$b" "$snap" <<-'EOF'
		import sys
		a, b = open(sys.argv[1], "rb").read(), open(sys.argv[2], "rb").read()
		snap = int(sys.argv[3])
		if len(a) != len(b):
		    sys.exit(f"length {len(a)} -> {len(b)}")
		if b[0] != snap:
		    sys.exit(f"block 0 is {b[0]} after MARK_DIRTY, expected {snap}")
		d = [i for i in range(1, len(a)) if a[i] != b[i]]
		if d:
		    sys.exit(f"{len(d)} blocks changed while held, first {d[:8]}")
	EOF
	) || { echo "$out"; return 1; }
	bs destroy "$id" >/dev/null || { echo "destroy failed"; return 1; }
	id=$(snap_id "$(bs create /dev/ram0)")
	bs take "$id" >/dev/null || { echo "second take failed"; return 1; }
	bs map /dev/ram0 --out $c >/dev/null
	snap=$(kv snap "$(bs info /dev/ram0)")
	bs destroy "$id" >/dev/null
	# The next snapshot sees every block changed, with its own number.
	"$PYTHON" - "$c" "$snap" <<-'EOF'
		import sys
		c, snap = open(sys.argv[1], "rb").read(), int(sys.argv[2])
		bad = [i for i in range(len(c)) if c[i] != snap]
		if bad:
		    sys.exit(f"next snapshot {snap}: {len(bad)} blocks not {snap}, e.g. "
		             f"{[(i, c[i]) for i in bad[:8]]}")
	EOF
}
out=$(held_check 2>&1) && rc=0 || rc=$?
rm -f /tmp/cbt-held-?
if [ "$rc" = 0 ]; then
	ktap_ok "readable table unchanged by writes while held; the next snapshot has them"
else
	ktap_fail "readable table unchanged by writes while held; the next snapshot has them" "$out"
fi

# A capacity change starts a new generation at the next TAKE.
loop_setup gloop $((8 * 1024 * 1024))
if [ -n "$gloop" ]; then
	model_case "model: generation_id and geometry change when a loop device grows" \
		"$gloop" --cycles 6 --grow-at 3:$((12 * 1024 * 1024 + 4096)) \
		--expect-generation-changes 1
else
	ktap_fail "model: generation_id and geometry change when a loop device grows" "losetup failed"
fi

# Blocks capped at 2^tracking_block_maximum_shift however many there are.
if blksnap_load tracking_block_minimum_shift=12 tracking_block_maximum_shift=13 \
	tracking_block_maximum_count=100; then
	model_case "model: block size capped at 2^tracking_block_maximum_shift (8 KiB, 2049 blocks)" \
		/dev/ram0 --cycles 4
else
	ktap_fail "model: block size capped at 2^tracking_block_maximum_shift" "insmod failed"
fi

# TRACKER_COLLECT reports what the model runs left (the trackers were removed).
out=$(bs trackers --null 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && [ "$(kv count "$out")" = 0 ]; then
	ktap_ok "no trackers remain after the model runs removed theirs"
else
	ktap_fail "no trackers remain after the model runs removed theirs" "$out"
fi

blksnap_clear
unload_case "the module unloads after the CBT tests"
ktap_finish
