#!/usr/bin/env bash
# Several devices and several snapshots (stamp checks, tests/tools/stamp.py):
# one snapshot of two ramdisks with the storage of both on one of them, and
# the same taken while both are written (one point in time across both);
# three snapshots taken and written at the same time on disjoint ramdisks,
# each keeping its storage on the next one's ramdisk; writes that reach the
# original through a dm-linear device and through a partition. Snapshots that lose
# their devices: DESTROY while an image is mounted and read (the readers get
# errors, nothing hangs, the original is intact); a scsi_debug original
# deleted through sysfs under a taken snapshot with writers and image readers
# running; the scsi_debug disk holding the storage deleted while writers need
# copy-on-write (one corrupted event, original intact, image EIO). Last,
# rmmod with snapshots alive and a writer running.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

ktap_plan 11

cbt_start
RD_KIB=16384 # 32768 sectors: 64 chunks of 256 KiB
MNT=/mnt/multi-image
ram_setup 7 $RD_KIB

CLI=$BLKSNAP_CLI
at_exit "umount $MNT"
mkdir -p $MNT

# ---- one snapshot of two devices, the storage of both on one of them
# ram1: writers in 0+8192, storage 8192+24576 (48 chunks); ram0: writers in
# 0+8192; at most 16 + 16 chunks written and 12 by image writes.
stamp_case "one snapshot of ram0 and ram1, storage of both on ram1: both images = TAKE data" \
	stamp run --dev /dev/ram0 --dev /dev/ram1 --storage /dev/ram1:8192:24576 \
	--region /dev/ram0:0:8192 --region /dev/ram1:0:8192 --writers 4 --writes 300 --seconds 7 \
	--image-writes 6 --zeroout --discard --check-storage --events --seed 51

# The same two devices, the snapshot taken while the writers run: each image
# sector holds data some write allowed at TAKE, and no write is in an image
# while a write (to either device) that ended before it began is not.
stamp_case "snapshot of ram0 and ram1 taken while both are written: one point in time across both" \
	stamp run --dev /dev/ram0 --dev /dev/ram1 --storage /dev/ram1:8192:24576 \
	--storage /dev/ram6:0:32768 --region /dev/ram0:0:8192 --region /dev/ram1:0:8192 --writers 4 \
	--writes 300 --seconds 8 --take-during-writes 2 --image-writes 4 --events --seed 52

# ---- three snapshots at once, each with its storage on another's device
# On each of ram2..ram4: writers in 0+12288 (24 chunks), untouched
# 12288+4096, the previous snapshot's storage in 16384+16384 (32 chunks).
concurrent() {
	local i dev next pids=() rc=0 out
	stamp fill /dev/ram2 /dev/ram3 /dev/ram4 >/dev/null || { echo "fill failed"; return 1; }
	for i in 2 3 4; do
		dev=/dev/ram$i next=/dev/ram$((i == 4 ? 2 : i + 1))
		stamp run --no-fill --no-storage-fill --dev $dev --storage "$next:16384:16384" \
			--exclude "$dev:16384:16384" --region "$dev:0:12288" --max-io 512 \
			--writers 3 --writes 200 --seconds 7 --image-writes 2 --zeroout --discard \
			--check-storage --events --seed $((60 + i)) >/tmp/multi-run$i 2>&1 &
		pids+=($!)
	done
	for i in 0 1 2; do
		wait "${pids[i]}" || { rc=1; echo "---- snapshot of ram$((i + 2)) failed:"; tail -n 15 /tmp/multi-run$((i + 2)); }
	done
	for i in 2 3 4; do
		grep -h 'RESULT\|chunks written' /tmp/multi-run$i | sed "s|^|ram$i: |"
	done
	rm -f /tmp/multi-run[234]
	out=$(bs collect --count 8)
	grep -qx count=0 <<<"$out" || { echo "snapshots left: $out"; return 1; }
	return $rc
}
stamp_case "three snapshots taken and written at once on ram2..ram4, storage on each other's disks: all correct" \
	concurrent

# ---- writes that reach the original through another block device
# A dm-linear device over sectors 4096+24576 of ram0: its bios are remapped
# and resubmitted to ram0 by dm, and must be copied-on-write all the same.
DM=""
dm_linear DM multi-lin /dev/ram0 4096 24576 2>/tmp/multi-dm
if [ -n "$DM" ]; then
	stamp_case "writes through a dm-linear device on the original are copied-on-write: image = TAKE data" \
		stamp run --dev /dev/ram0 --via "$DM:4096" --storage /dev/ram1:0:32768 --writers 3 \
		--writes 300 --seconds 8 --max-io 512 --image-writes 4 --zeroout --discard --check-storage \
		--events --seed 55
else
	ktap_fail "writes through a dm-linear device on the original are copied-on-write" \
		"dmsetup create failed: $(cat /tmp/multi-dm)"
fi
rm -f /tmp/multi-dm

# A loop disk with one partition (sectors 2048+24576); the snapshot is of
# the whole disk, the writes go to the partition.
PART_LOOP=""
if truncate -s 16M /tmp/multi-part && write_mbr /tmp/multi-part 2048:24576 &&
	PART_LOOP=$(losetup -f --show -P /tmp/multi-part); then
	at_exit "losetup -d $PART_LOOP; rm -f /tmp/multi-part"
	wait_for "${PART_LOOP}p1" 5 || PART_LOOP=""
fi
if [ -n "$PART_LOOP" ]; then
	stamp_case "writes through a partition of the snapshotted disk are copied-on-write: image = TAKE data" \
		stamp run --dev "$PART_LOOP" --via "${PART_LOOP}p1:2048" --storage /dev/ram1:0:32768 \
		--writers 3 --writes 300 --seconds 8 --max-io 512 --image-writes 4 --zeroout \
		--check-storage --events --seed 56
else
	ktap_fail "writes through a partition of the snapshotted disk are copied-on-write" "no partitioned loop disk"
fi

# ---- DESTROY while an image is mounted and read
FS=/mnt/multi-orig
at_exit "umount $FS"
mkdir -p $FS
destroy_mounted() {
	local rc
	destroy_mounted_run && rc=0 || rc=$?
	# Never leave the dead image mounted (it would pin the module).
	mountpoint -q $MNT && { umount $MNT || umount -l $MNT; }
	return $rc
}
destroy_mounted_run() {
	local out id img r1 r2 w rc i n t
	mkfs.ext4 -q -F -b 4096 /dev/ram5 && mount /dev/ram5 $FS || return 1
	for i in 0 1 2 3 4 5; do head -c 1000000 /dev/urandom >$FS/f$i; done
	sync
	cli_snapshot /dev/ram6 0:32768 /dev/ram5 || return 1
	id=$SNAP_ID img=$SNAP_IMG
	mount -o ro "$img" $MNT || { echo "mount of $img failed"; return 1; }
	# Readers: the image device itself, and the files through the mount
	# (direct I/O, so that they reach the device).
	rm -f /tmp/multi-stop
	stamp read-loop "$img" --seconds 120 --delay 0.01 --stop-file /tmp/multi-stop \
		>/tmp/multi-r1 2>&1 &
	r1=$!
	n=200
	while ! grep -q '^open' /tmp/multi-r1 && ((n-- > 0)); do sleep 0.1; done
	(
		ok=0 bad=0
		end=$((SECONDS + 120))
		while ((SECONDS < end)) && [ ! -e /tmp/multi-stop ]; do
			for f in "$MNT"/f*; do
				if dd if="$f" of=/dev/null bs=64k iflag=direct status=none 2>/dev/null; then
					ok=$((ok + 1))
				else
					bad=$((bad + 1))
				fi
			done
		done
		echo "file reads ok=$ok failed=$bad"
	) >/tmp/multi-r2 2>&1 &
	r2=$!
	# A writer on the mounted original meanwhile: chunks get copied while
	# the image is read, and while it goes away.
	(for i in $(seq 1 12); do
		head -c 200000 /dev/urandom >"$FS/g$i" && sync -f "$FS/g$i" || echo "writing g$i failed"
	done) >/tmp/multi-w 2>&1 &
	w=$!
	sleep 2
	t=$SECONDS
	timeout 60 "$CLI" snapshot_destroy -i "$id" && rc=0 || rc=$?
	echo "DESTROY took $((SECONDS - t)) s"
	# The readers go on for 3 s after DESTROY.
	sleep 3
	touch /tmp/multi-stop
	wait $r1 $r2 $w
	echo "DESTROY: exit $rc; $(tr '\n' ' ' </tmp/multi-r1); $(cat /tmp/multi-r2); writer: $(cat /tmp/multi-w)"
	((rc == 0)) || { echo "DESTROY with the image mounted failed or hung"; return 1; }
	[ ! -s /tmp/multi-w ] || { echo "writing to the original failed"; return 1; }
	out=$(cat /tmp/multi-r1)
	(($(kv reads_failed "$out") > 0)) && [ "$(kv last "$out")" != ok ] ||
		{ echo "image reads did not fail after DESTROY"; return 1; }
	[ ! -e "/sys/block/$(basename "$img")" ] || echo "note: the image disk is still in sysfs"
	umount $MNT || umount -l $MNT || { echo "umount of the dead image failed"; return 1; }
	rm -f /tmp/multi-r1 /tmp/multi-r2 /tmp/multi-w /tmp/multi-stop
}
stamp_case "DESTROY while the image is mounted and read: readers get errors, nothing hangs" destroy_mounted

original_intact() {
	local out
	(cd $FS && sha256sum f* g*) >/tmp/multi-sums || { echo "the original's files cannot be read"; return 1; }
	umount $FS || return 1
	fsck.ext4 -fn /dev/ram5 || { echo "fsck.ext4 of the original failed"; return 1; }
	mount /dev/ram5 $FS || return 1
	(cd $FS && sha256sum --quiet -c /tmp/multi-sums) || { echo "files changed across a remount"; return 1; }
	(($(wc -l </tmp/multi-sums) == 18)) || { echo "files missing: $(cat /tmp/multi-sums)"; return 1; }
	umount $FS
	out=$(bs collect --count 8)
	grep -qx count=0 <<<"$out" || { echo "snapshots left: $out"; return 1; }
	rm -f /tmp/multi-sums
}
stamp_case "after that DESTROY the original filesystem has all its files and checks clean" original_intact

# ---- scsi_debug disks (16 MiB, one store each) deleted under taken snapshots
sd_bad=
sd_setup 2 per_host_store=1 >/tmp/multi-sd 2>&1 || sd_bad="scsi_debug: $(cat /tmp/multi-sd)"
rm -f /tmp/multi-sd

sd_original_deleted() {
	local d=${SD[0]} dn id out img r w
	dn=$(devno "/dev/$d")
	cli_snapshot /dev/ram6 0:32768 "/dev/$d" || return 1
	id=$SNAP_ID img=$SNAP_IMG
	# (Only while the node is a block device: dd would create a file.)
	(while [ -b "/dev/$d" ] && dd if=/dev/urandom of="/dev/$d" bs=64k count=4 seek=$((RANDOM % 250)) \
		oflag=direct conv=notrunc status=none 2>/dev/null; do :; done) &
	w=$!
	rm -f /tmp/multi-stop
	stamp read-loop "$img" --seconds 120 --stop-file /tmp/multi-stop >/tmp/multi-sdr 2>&1 &
	r=$!
	local n=200
	while ! grep -q '^open' /tmp/multi-sdr && ((n-- > 0)); do sleep 0.1; done
	sleep 2
	sd_delete "$d" || { echo "delete failed"; kill $w $r; return 1; }
	sd_gone "$d" 10 || { echo "/sys/block/$d still there"; kill $w $r; return 1; }
	sleep 2
	touch /tmp/multi-stop
	wait $r
	kill $w 2>/dev/null
	wait $w 2>/dev/null
	echo "image reads: $(tr '\n' ' ' </tmp/multi-sdr)"
	out=$($CLI snapshot_collect -i "$id" 2>&1)
	echo "COLLECT_IMAGES after the delete: $(tr '\n' ' ' <<<"$out")"
	timeout 60 "$CLI" snapshot_destroy -i "$id" || { echo "DESTROY failed or hung"; return 1; }
	out=$(bs remove "$dn" 2>&1) || grep -qx errno=ENODEV <<<"$out" || { echo "TRACKER_REMOVE: $out"; return 1; }
	[ ! -e "/sys/block/$(basename "$img")" ] || { echo "the image is still there"; return 1; }
	grep -q '^reads_ok' /tmp/multi-sdr || { echo "the image reader did not finish"; return 1; }
	rm -f /tmp/multi-sdr /tmp/multi-stop
}
sd_storage_deleted() {
	local d=${SD[1]}
	# The writers run 15 s; the disk goes 2 s after they start.
	stamp run --dev /dev/ram0 --storage "/dev/$d:0:32768" --no-storage-fill --overflow \
		--corrupt-errno 0 --writers 3 --writes 400 --seconds 15 \
		--at "2:echo 1 >/sys/block/$d/device/delete" --seed 71
}
if [ -n "$sd_bad" ]; then
	ktap_diag "$sd_bad"
	ktap_fail "scsi_debug original deleted under a taken snapshot, written and read" "no scsi_debug"
	ktap_fail "scsi_debug storage disk deleted while copy-on-write needs it" "no scsi_debug"
else
	stamp_case "scsi_debug original deleted under a taken snapshot while written and its image read: DESTROY works" \
		sd_original_deleted
	stamp_case "scsi_debug storage disk deleted while copy-on-write needs it: one corrupted event, original intact, image EIO" \
		sd_storage_deleted
fi

no_images() { ! compgen -G "/sys/block/blksnap-image*" >/dev/null; }

# ---- rmmod with snapshots alive: one taken (writer running), one created
unload_alive() {
	local out w t errs=/tmp/multi-werr
	cli_snapshot /dev/ram6 0:32768 /dev/ram1 || return 1
	cli_create /dev/ram2 || return 1
	: >$errs
	(for i in $(seq 1 30); do
		dd if=/dev/urandom of=/dev/ram1 bs=64k count=2 seek=$((i * 13 % 250)) oflag=direct conv=notrunc,nocreat \
			status=none 2>>$errs || echo "write $i failed" >>$errs
	done) &
	w=$!
	sleep 1
	t=$SECONDS
	out=$(rmmod blksnap 2>&1) || { kill $w; echo "rmmod: $out"; return 1; }
	echo "rmmod took $((SECONDS - t)) s"
	wait $w
	! blksnap_loaded || { echo "still loaded"; return 1; }
	[ ! -s $errs ] || { echo "writes to the original failed: $(head -n 5 $errs)"; return 1; }
	no_images || { echo "images left: $(echo /sys/block/blksnap-image*)"; return 1; }
	rm -f $errs
}
stamp_case "rmmod with a taken snapshot (original being written) and a created one: unloads, writes unharmed" \
	unload_alive
if ! blksnap_loaded && no_images; then
	ktap_ok "no image disk is left after the unload"
else
	ktap_fail "no image disk is left after the unload" "$(echo /sys/block/*)"
fi
ktap_finish
