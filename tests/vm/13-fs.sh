#!/usr/bin/env bash
# Snapshots of mounted filesystems: ext4 and xfs on tracked ramdisks, with
# writers running while one snapshot of both is created and taken (TAKE
# freezes and thaws them); afterwards the filesystems are consistent
# (fsck.ext4 -fn, xfs_repair -n), CBT shows the changes, and every block
# whose contents changed between two snapshots is marked in the CBT map. A
# filesystem frozen by the user stays frozen across TAKE.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

RD_KIB=131072
EXT=/dev/ram0 XFS=/dev/ram1 FRZ=/dev/ram2
MNT_EXT=/mnt/cbt-ext4 MNT_XFS=/mnt/cbt-xfs MNT_FRZ=/mnt/cbt-frozen
VERIFY=$TESTS_DIR/tools/cbt_verify.py

ktap_plan 12

cbt_start
ram_setup 3 $RD_KIB
# Unmount before the devices go (at_exit runs last-added first).
at_exit "umount $MNT_FRZ; umount $MNT_XFS; umount $MNT_EXT"
at_exit "fsfreeze -u $MNT_FRZ"
mkdir -p $MNT_EXT $MNT_XFS $MNT_FRZ

make_fs() {
	mkfs.ext4 -q -F $EXT || return 1
	mkfs_xfs_small $XFS || return 1
	mount $EXT $MNT_EXT || return 1
	mount $XFS $MNT_XFS || return 1
}
case_fn "ext4 and xfs created and mounted on ramdisks" make_fs
if ! mountpoint -q $MNT_EXT || ! mountpoint -q $MNT_XFS; then
	ktap_fail_rest "no filesystems"
	ktap_finish
fi

# Writers: fio (random writes with fsyncs over a few files) and a loop that
# creates, appends to and deletes small files.
WRITERS=()
start_writers() {
	local mnt seed=$1
	for mnt in $MNT_EXT $MNT_XFS; do
		if command -v fio >/dev/null; then
			fio --name=cbt --directory="$mnt" --size=12M --nrfiles=3 --bs=4k \
				--rw=randwrite --ioengine=psync --fsync=16 --time_based --runtime=3600 \
				--randseed="$seed" --output=/dev/null &
			WRITERS+=($!)
		fi
		mkdir -p "$mnt/small"
		(
			i=0
			while :; do
				i=$((i + 1))
				head -c $((i % 7 * 1000 + 100)) /dev/urandom >"$mnt/small/f$((i % 50))"
				echo "$i" >>"$mnt/small/log"
				((i % 10)) || rm -f "$mnt/small/f$((i % 50 / 2))"
				((i % 25)) || sync -f "$mnt/small/log"
				sleep 0.02
			done
		) &
		WRITERS+=($!)
	done
	for p in "${WRITERS[@]}"; do at_exit "kill $p"; done
}
stop_writers() {
	local p
	for p in "${WRITERS[@]}"; do kill "$p" 2>/dev/null; done
	for p in "${WRITERS[@]}"; do wait "$p" 2>/dev/null; done
	WRITERS=()
}
writers_alive() {
	local p
	for p in "${WRITERS[@]}"; do kill -0 "$p" 2>/dev/null || return 1; done
}

start_writers 1
sleep 3

# ---- TAKE while writing
id=
take_while_writing() {
	local t0 out
	id=$(snap_id "$(bs create $EXT $XFS)")
	[ -n "$id" ] || { echo "CREATE failed"; return 1; }
	sleep 2
	t0=$SECONDS
	out=$(timeout 300 "$PYTHON" "$TESTS_DIR/tools/bsctl.py" take "$id" 2>&1) ||
		{ echo "TAKE failed after $((SECONDS - t0)) s: $out"; return 1; }
	echo "note: TAKE took $((SECONDS - t0)) s"
}
case_fn "TAKE of a snapshot of ext4 and xfs completes while writers run" take_while_writing

still_writable() {
	local mnt
	for mnt in $MNT_EXT $MNT_XFS; do
		timeout 60 sh -c "echo after-take >$mnt/after-take && sync -f $mnt/after-take" ||
			{ echo "$mnt: not writable after TAKE (still frozen?)"; return 1; }
	done
	sleep 1
	writers_alive || { echo "a writer died"; return 1; }
}
case_fn "both filesystems are thawed after TAKE and the writers go on" still_writable

changed_in() {
	local dev=$1 snap=$2 out=$3 res
	res=$(bs map "$dev" --out "$out") || { echo "$dev: reading the CBT map: $res"; return 1; }
	"$PYTHON" - "$out" "$snap" <<-'EOF'
		import sys
		m, snap = open(sys.argv[1], "rb").read(), int(sys.argv[2])
		n = sum(1 for b in m if b == snap)
		print(f"note: {n} of {len(m)} blocks marked {snap}")
		sys.exit(0 if n > 0 else 1)
	EOF
}
cbt_first() {
	changed_in $EXT 1 /tmp/cbt-fs-map || return 1
	changed_in $XFS 1 /tmp/cbt-fs-map || return 1
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
}
case_fn "the first snapshot's CBT maps show blocks written by the writers" cbt_first

cbt_second() {
	local out
	id=$(snap_id "$(bs create $EXT $XFS)")
	[ -n "$id" ] || { echo "CREATE failed"; return 1; }
	sleep 1
	out=$(timeout 300 "$PYTHON" "$TESTS_DIR/tools/bsctl.py" take "$id" 2>&1) ||
		{ echo "TAKE failed: $out"; return 1; }
	for d in $EXT $XFS; do
		[ "$(kv snap "$(bs info "$d")")" = 2 ] || { echo "$d: snap_number not 2: $(bs info "$d")"; return 1; }
		changed_in "$d" 2 /tmp/cbt-fs-map || return 1
	done
	bs destroy "$id" || { echo "DESTROY failed"; return 1; }
}
case_fn "a second snapshot while writing: CBT marks the new writes with snap number 2" cbt_second

stop_writers
umount_both() {
	umount $MNT_EXT || return 1
	umount $MNT_XFS || return 1
}
case_fn "writers stopped, both filesystems unmount" umount_both

# ---- every changed block is marked
# Contents of every tracking block now; then more writes; then a snapshot.
covers() {
	local dev=$1 mnt=$2 bsz snap id3 out
	bsz=$(kv blk_size "$(bs info "$dev")")
	"$PYTHON" "$VERIFY" hash "$dev" "$bsz" "/tmp/cbt-fs-before" >/dev/null || return 1
	mount "$dev" "$mnt" || return 1
	cp -r /usr/share/doc/bash "$mnt/copy" 2>/dev/null
	for f in "$mnt"/cbt.*; do
		[ -e "$f" ] && dd if=/dev/urandom of="$f" bs=4k count=64 seek=$((RANDOM % 2000)) \
			conv=notrunc,fsync status=none
	done
	rm -rf "$mnt/small"
	umount "$mnt" || return 1
	"$PYTHON" "$VERIFY" hash "$dev" "$bsz" "/tmp/cbt-fs-after" >/dev/null || return 1
	id3=$(snap_id "$(bs create "$dev")")
	[ -n "$id3" ] || { echo "CREATE failed"; return 1; }
	bs take "$id3" >/dev/null || { echo "TAKE failed"; bs destroy "$id3"; return 1; }
	snap=$(kv snap "$(bs info "$dev")")
	bs map "$dev" --out /tmp/cbt-fs-map >/dev/null
	bs destroy "$id3" >/dev/null
	out=$("$PYTHON" "$VERIFY" covers /tmp/cbt-fs-before /tmp/cbt-fs-after /tmp/cbt-fs-map "$snap") ||
		{ echo "$out"; return 1; }
	echo "note: $out"
}
case_fn "ext4: every block whose contents changed since the last snapshot is marked" \
	covers $EXT $MNT_EXT
case_fn "xfs: every block whose contents changed since the last snapshot is marked" \
	covers $XFS $MNT_XFS
rm -f /tmp/cbt-fs-before /tmp/cbt-fs-after /tmp/cbt-fs-map

check "fsck.ext4 -fn finds the ext4 filesystem clean" fsck.ext4 -fn $EXT
check "xfs_repair -n finds the xfs filesystem clean" xfs_repair -n $XFS

# ---- a filesystem frozen by the user
user_frozen() {
	local id4 out probe
	mkfs.ext4 -q -F $FRZ && mount $FRZ $MNT_FRZ || { echo "mkfs/mount failed"; return 1; }
	echo data >$MNT_FRZ/file && sync -f $MNT_FRZ/file
	fsfreeze -f $MNT_FRZ || { echo "fsfreeze -f failed"; return 1; }
	id4=$(snap_id "$(bs create $FRZ)")
	[ -n "$id4" ] || { echo "CREATE failed"; return 1; }
	out=$(timeout 300 "$PYTHON" "$TESTS_DIR/tools/bsctl.py" take "$id4" 2>&1) ||
		{ echo "TAKE of a frozen filesystem failed: $out"; return 1; }
	bs destroy "$id4" >/dev/null
	# Still frozen: a write waits (in the background: it cannot be
	# interrupted) until the user thaws.
	sh -c "echo more >>$MNT_FRZ/file" &
	probe=$!
	sleep 2
	if ! kill -0 $probe 2>/dev/null; then
		echo "a write completed right after TAKE: the user's freeze was lost"
		fsfreeze -u $MNT_FRZ 2>/dev/null
		return 1
	fi
	fsfreeze -u $MNT_FRZ || { echo "fsfreeze -u failed: the user's freeze was lost"; return 1; }
	wait $probe || { echo "the write failed after fsfreeze -u"; return 1; }
	timeout 30 sync -f $MNT_FRZ/file || { echo "sync after fsfreeze -u failed"; return 1; }
	umount $MNT_FRZ
}
case_fn "TAKE of a filesystem frozen with fsfreeze completes and leaves it frozen" user_frozen

blksnap_clear
unload_case "the module unloads after the filesystem tests"
ktap_finish
