#!/usr/bin/env bash
# Soak: a mixed run for BLKSNAP_SOAK_SECONDS (default 120) with zero data
# mismatches (the VM harness adds: zero kernel reports).
#
#   - ext4 on /dev/ram0 with two writers rewriting, creating and deleting
#     files all the time;
#   - a loop of snapshots of it, driven by the blksnap CLI as a backup agent
#     does: CREATE, a storage-growing loop (snapshot_waitevent, and
#     snapshot_appendstorage of 4 MiB of a pool at each low_free_space
#     event: the storage is stretched many times a snapshot), fsfreeze,
#     the checksums of every file, TAKE, thaw; then, while the writers go on,
#     the image is checked (fsck -n) and mounted, and every file in it must
#     have its checksum at TAKE and no other file may be there; DESTROY;
#   - at the same time, a loop of sector-stamp checks (tests/tools/stamp.py)
#     on a second original (a dm-linear device), its storage grown from a
#     pool at low_free_space: the image is exactly the data at TAKE and the
#     original exactly what was written, every run.
# At the end: no corrupted event came, the original file system is clean,
# the module unloads, and kmemleak (debug kernel) finds no leak.
# shellcheck source-path=SCRIPTDIR disable=SC2015 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

DURATION=${BLKSNAP_SOAK_SECONDS:-120}
RAM_MIB=48
STEP=8192          # sectors appended at each low_free_space event (4 MiB)
MINIMUM=16384      # diff_storage_minimum: the event comes below 4 MiB free
MNT=/mnt/soak
IMG_MNT=/mnt/soak-image
W=/tmp/soak
CLI=$BLKSNAP_CLI

ktap_plan 7

cbt_start "$CLI"
rm -rf $W && mkdir -p $W $MNT $IMG_MNT
at_exit "rm -rf $W"

setup() {
	brd_setup 4 $((RAM_MIB * 1024)) || return 1
	blksnap_load diff_storage_minimum=$MINIMUM || return 1
	mkfs.ext4 -q -F -b 4096 /dev/ram0 || return 1
	mount -o noatime /dev/ram0 $MNT || return 1
	at_exit "umount $MNT"
	# The stamp original: 16 MiB of ram2 through dm-linear.
	dm_linear SORIG soak-orig /dev/ram2 2048 32768 || return 1
	echo "note: ext4 on /dev/ram0 ($RAM_MIB MiB), storage pool /dev/ram1; stamp original $SORIG," \
		"storage pool /dev/ram3; $DURATION s"
}
case_fn "set-up: ext4 with writers, a stamp original on dm-linear, the module loaded" setup
kmemleak_clear
if ((KTAP_FAIL)); then
	ktap_fail_rest "setup failed"
	ktap_finish
fi

# ---- the ext4 writers: until $W/stop exists; each counts its operations.
fs_writer() {
	local id=$1 n=0 f conv
	mkdir -p "$MNT/w$id"
	while [ ! -e $W/stop ]; do
		f=$MNT/w$id/f$((RANDOM % 24))
		case $((RANDOM % 10)) in
		0) rm -f "$f" ;;
		1) cp "$MNT/w$id/f$((RANDOM % 24))" "$f" 2>/dev/null || true ;;
		*)
			conv=notrunc
			((RANDOM % 4)) || conv=notrunc,fsync
			dd if=/dev/urandom of="$f" bs=16k count=$((1 + RANDOM % 16)) seek=$((RANDOM % 16)) \
				conv=$conv status=none
			;;
		esac
		n=$((n + 1))
	done
	echo "$n" >"$W/writer$id.count"
}

# ---- the stamp loop: runs until $W/stop exists; logs to $W/stamp.log.
stamp_loop() {
	local k=0 ok=0 bad=0 rc
	while [ ! -e $W/stop ]; do
		k=$((k + 1))
		stamp run --dev "$SORIG" --storage /dev/ram3:0:8192 \
			--grow "/dev/ram3:8192:$((RAM_MIB * 2048 - 8192)):8192" --no-storage-fill \
			--writers 2 --writes 1000 --seconds 10 --image-writes 10 --discard --zeroout \
			--seed $((1000 + k)) >$W/stamp-run.log 2>&1 && rc=0 || rc=$?
		if [ "$rc" = 0 ]; then
			ok=$((ok + 1))
			grep -E 'writers done|events after' $W/stamp-run.log | sed "s/^/run $k: /" >>$W/stamp.log
		else
			bad=$((bad + 1))
			{ echo "run $k FAILED:"; grep -m 20 FAIL $W/stamp-run.log; tail -n 20 $W/stamp-run.log; } >>$W/stamp.log
		fi
	done
	echo "stamp runs: $ok ok, $bad failed" >>$W/stamp.log
	echo "$ok $bad" >$W/stamp.count
}

# ---- one snapshot cycle of the ext4 device
# Appends STEP sectors of the pool at each low_free_space event until the
# snapshot is gone; logs to $W/grow.log.
grow_loop() {
	local id=$1 pos=0 end=$((RAM_MIB * 2048)) out
	while :; do
		out=$($CLI snapshot_waitevent -i "$id" -t 1000 2>&1) || { echo "waitevent ended: $out" >>$W/grow.log; return; }
		case $out in
		*event=low_free_space*)
			if ((pos + STEP <= end)) &&
				$CLI snapshot_appendstorage -i "$id" -d /dev/ram1 --range "$pos:$STEP" >/dev/null 2>&1; then
				echo "appended $pos:$STEP" >>$W/grow.log
				pos=$((pos + STEP))
			else
				echo "append $pos:$STEP failed or pool exhausted" >>$W/grow.log
			fi
			;;
		*event=corrupted*) echo "CORRUPTED: $(tr '\n' ' ' <<<"$out")" >>$W/grow.log ;;
		*result=timeout*) ;;
		*) echo "unexpected: $(tr '\n' ' ' <<<"$out")" >>$W/grow.log ;;
		esac
	done
}

CYCLES=0 APPENDS=0 FILES=0
cycle() {
	local out id img gpid n=100 rc=0 files
	: >$W/grow.log
	out=$($CLI snapshot_create -d /dev/ram0) || { echo "create: $out"; return 1; }
	id=$(kv id "$out")
	grow_loop "$id" &
	gpid=$!
	while ! grep -q '^appended' $W/grow.log && ((n-- > 0)); do sleep 0.1; done
	if ! grep -q '^appended 0:' $W/grow.log; then
		echo "no storage appended: $(cat $W/grow.log)"
		$CLI snapshot_destroy -i "$id"
		wait $gpid
		return 1
	fi
	# The point in time: the frozen file system's files and their checksums.
	fsfreeze -f $MNT || { echo "fsfreeze failed"; rc=1; }
	if ((rc == 0)); then
		(cd $MNT && find . -type f -print0 | sort -z | xargs -0 -r sha256sum) >$W/manifest || rc=1
		(cd $MNT && find . -print | sort) >$W/names || rc=1
		$CLI snapshot_take -i "$id" >/dev/null || { echo "take failed"; rc=1; }
		fsfreeze -u $MNT || { echo "thaw failed"; rc=1; }
	fi
	if ((rc == 0)); then
		img=$(kv image "$($CLI snapshot_collect -i "$id")")
		n=50
		while [ ! -b "$img" ] && ((n-- > 0)); do sleep 0.1; done
		# Let the writers change the original a while, then check the image
		# while they go on.
		sleep 2
		if ! fsck.ext4 -fn "$img" >$W/fsck.log 2>&1; then
			echo "fsck of the image failed:"; tail -n 20 $W/fsck.log; rc=1
		elif ! mount -o ro,noload "$img" $IMG_MNT; then
			echo "mounting the image failed"; rc=1
		else
			(cd $IMG_MNT && sha256sum -c --quiet $W/manifest) >$W/sum.log 2>&1 ||
				{ echo "files in the image differ from TAKE:"; head -n 20 $W/sum.log; rc=1; }
			(cd $IMG_MNT && find . -print | grep -v '^./lost+found' | sort) >$W/names-img
			grep -v '^./lost+found' $W/names | diff - $W/names-img >$W/names.diff ||
				{ echo "the image's names differ from TAKE:"; head -n 20 $W/names.diff; rc=1; }
			files=$(wc -l <$W/manifest)
			umount $IMG_MNT || { echo "umount of the image failed"; rc=1; }
		fi
	fi
	$CLI snapshot_destroy -i "$id" >/dev/null || { echo "destroy failed"; rc=1; }
	wait $gpid
	if grep -q CORRUPTED $W/grow.log; then
		echo "a corrupted event came: $(grep CORRUPTED $W/grow.log)"
		rc=1
	fi
	((rc == 0)) || return 1
	CYCLES=$((CYCLES + 1))
	APPENDS=$((APPENDS + $(grep -c '^appended' $W/grow.log)))
	FILES=$((FILES + files))
}

MARK=$(kmsg_mark)
rm -f $W/stop
fs_writer 1 &
W1=$!
fs_writer 2 &
W2=$!
stamp_loop &
SL=$!
at_exit "touch $W/stop; kill $W1 $W2 $SL; fsfreeze -u $MNT; umount $IMG_MNT"

start=$SECONDS
failed_cycles=0
while ((SECONDS - start < DURATION)); do
	if ! cycle >$W/cycle.log 2>&1; then
		failed_cycles=$((failed_cycles + 1))
		((failed_cycles <= 3)) && ktap_diag "cycle $((CYCLES + failed_cycles)) failed:" "$(cat $W/cycle.log)"
		mountpoint -q $IMG_MNT && umount $IMG_MNT
	fi
done
elapsed=$((SECONDS - start))
touch $W/stop
wait $W1 $W2 $SL

if ((failed_cycles == 0 && CYCLES > 0)); then
	ktap_ok "ext4 snapshots in a loop: every image clean and equal to the frozen file system at TAKE"
else
	ktap_fail "ext4 snapshots in a loop: every image clean and equal to the frozen file system at TAKE" \
		"$failed_cycles of $((CYCLES + failed_cycles)) cycles failed"
fi
ktap_diag "$CYCLES snapshot cycles in $elapsed s, storage stretched $APPENDS times (4 MiB each)," \
	"$FILES files verified; writer operations: $(cat $W/writer1.count 2>/dev/null) + $(cat $W/writer2.count 2>/dev/null)"

read -r sok sbad 2>/dev/null <$W/stamp.count || { sok=0 sbad=1; }
if ((sbad == 0 && sok > 0)); then
	ktap_ok "stamp checks in a loop (storage grown at low_free_space): no mismatch"
else
	ktap_fail "stamp checks in a loop (storage grown at low_free_space): no mismatch" "$(grep -A 40 FAILED $W/stamp.log | head -n 60)"
fi
ktap_diag "$(tail -n 1 $W/stamp.log)"

fs_end() {
	umount $MNT || return 1
	fsck.ext4 -fn /dev/ram0 || return 1
}
case_fn "the original file system is clean at the end" fs_end

if kmsg_since "$MARK" | grep -q 'corrupted'; then
	ktap_fail "no snapshot was corrupted" "$(kmsg_since "$MARK" | grep 'corrupted' | head -n 5)"
else
	ktap_ok "no snapshot was corrupted"
fi

blksnap_clear
unload_case "the module unloads after the soak"
kmemleak_case "kmemleak finds no leak after the soak and unload"
ktap_finish
