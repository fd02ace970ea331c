#!/usr/bin/env bash
# Snapshot images of mounted filesystems (ext4 and xfs on ramdisks, one
# snapshot of both, taken with the CLI): the mounted image shows the files
# written before TAKE with their contents and not the changes made after it;
# files written into the mounted image persist across a remount and never
# reach the original; fsck.ext4 -fn / xfs_repair -n of the images (and of the
# originals) are clean. Then the difference storage is the extents of files
# preallocated on the snapshotted filesystems themselves (found with FIEMAP):
# the images stay correct and clean, and the storage is used.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

RD_KIB=131072
EXT=/dev/ram0 XFS=/dev/ram1 STORE=/dev/ram2
M=/mnt/cow-fs
MNT_EXT=$M/ext4 MNT_XFS=$M/xfs IMG_EXT=$M/ext4-image IMG_XFS=$M/xfs-image
SUMS=/tmp/cow-fs-sums
CLI=$BLKSNAP_CLI

ktap_plan 12

cbt_start
ram_setup 3 $RD_KIB
# Unmount before the devices go (at_exit runs last-added first).
at_exit "umount $MNT_EXT; umount $MNT_XFS; rm -rf $SUMS"
at_exit "umount $IMG_EXT; umount $IMG_XFS"
mkdir -p $MNT_EXT $MNT_XFS $IMG_EXT $IMG_XFS $SUMS

# Files of random sizes and contents in DIR (N small ones and a big one).
make_files() {
	local dir=$1 n=$2 i
	mkdir -p "$dir" || return 1
	for ((i = 0; i < n; i++)); do
		head -c $(((RANDOM % 384 + 1) * 1024 + RANDOM % 1000)) /dev/urandom >"$dir/f$i" || return 1
	done
	dd if=/dev/urandom of="$dir/big" bs=1M count=6 status=none
}
# Saves the checksums of the files of DIR as NAME; checks DIR against NAME.
save_sums() { (cd "$1" && sha256sum -- *) >"$SUMS/$2"; }
check_sums() {
	(cd "$1" && sha256sum --quiet -c "$SUMS/$2") 2>&1 || { echo "$1 differs from $2"; return 1; }
}
mount_img() { # FSTYPE IMAGE DIR
	if [ "$1" = xfs ]; then mount -t xfs -o nouuid "$2" "$3"; else mount -t ext4 "$2" "$3"; fi
}

# ---- filesystems with data
setup_fs() {
	mkfs.ext4 -q -F -b 4096 $EXT && mkfs_xfs_small $XFS || return 1
	mount $EXT $MNT_EXT && mount $XFS $MNT_XFS || return 1
	local mnt
	for mnt in $MNT_EXT $MNT_XFS; do
		make_files "$mnt/before" 24 || return 1
		save_sums "$mnt/before" "$(basename "$mnt")-before" || return 1
	done
	sync
}
stamp_case "ext4 and xfs on ramdisks, mounted, with files written" setup_fs
if ! mountpoint -q $MNT_EXT || ! mountpoint -q $MNT_XFS; then
	ktap_fail_rest "no filesystems"
	ktap_finish
fi

# ---- one snapshot of both, taken while mounted
SID="" IMGS="" EXT_IMG="" XFS_IMG=""
take_both() {
	local out
	cli_create $EXT $XFS || return 1
	SID=$SNAP_ID
	out=$($CLI snapshot_waitevent -i "$SID" -t 5000) || { echo "waitevent: $out"; return 1; }
	grep -qx event=low_free_space <<<"$out" || { echo "first event: $out"; return 1; }
	cli_take $STORE 0:$((RD_KIB * 2)) || return 1
	IMGS=$SNAP_IMAGES
	EXT_IMG=$(image_of "$IMGS" "$(devno $EXT)")
	XFS_IMG=$(image_of "$IMGS" "$(devno $XFS)")
	echo "$IMGS"
	[ -b "$EXT_IMG" ] && [ -b "$XFS_IMG" ] || { echo "images: '$EXT_IMG' '$XFS_IMG'"; return 1; }
}
timed_case "snapshot of the mounted ext4 and xfs taken with the CLI, one image each" take_both
ktap_diag "images: ext4 $EXT_IMG, xfs $XFS_IMG"

# Changes after TAKE: new files, a file rewritten, one deleted, one appended to.
change_after() {
	local mnt
	for mnt in $MNT_EXT $MNT_XFS; do
		make_files "$mnt/after" 16 || return 1
		save_sums "$mnt/after" "$(basename "$mnt")-after" || return 1
		head -c 100000 /dev/urandom >"$mnt/before/f1" &&
			rm "$mnt/before/f2" &&
			head -c 5000 /dev/urandom >>"$mnt/before/f3" || return 1
		save_sums "$mnt/before" "$(basename "$mnt")-changed" || return 1
	done
	sync
}

image_shows_take() { # FSTYPE IMAGE DIR NAME
	local fs=$1 img=$2 dir=$3 name=$4
	[ -b "$img" ] || { echo "no image"; return 1; }
	mount_img "$fs" "$img" "$dir" || { echo "mount $img failed"; return 1; }
	check_sums "$dir/before" "$name-before" || return 1
	[ ! -e "$dir/after" ] || { echo "files written after TAKE are on the image: $(find "$dir/after" | head -n 5)"; return 1; }
	echo "$fs image: $(find "$dir/before" -type f | wc -l) files from before TAKE intact"
}
change_after >/tmp/cow-fs-change 2>&1 || ktap_diag "changing the originals failed: $(cat /tmp/cow-fs-change)"
drop_caches
stamp_case "ext4 image shows the files as at TAKE (rewritten, deleted, appended files as before; no new files)" \
	image_shows_take ext4 "$EXT_IMG" $IMG_EXT ext4
stamp_case "xfs image (mounted with nouuid) shows the files as at TAKE, none written after" \
	image_shows_take xfs "$XFS_IMG" $IMG_XFS xfs

# ---- writes into the mounted images
image_writes() {
	local fs dir img mnt
	for fs in ext4 xfs; do
		dir=$M/$fs-image
		mountpoint -q "$dir" || { echo "$fs image not mounted"; return 1; }
		make_files "$dir/img" 12 || { echo "writing into the $fs image failed"; return 1; }
		save_sums "$dir/img" "$fs-img" || return 1
		rm "$dir/before/f4" || return 1
	done
	sync
	umount $IMG_EXT && umount $IMG_XFS || { echo "umount of the images failed"; return 1; }
	drop_caches
	mount_img ext4 "$EXT_IMG" $IMG_EXT && mount_img xfs "$XFS_IMG" $IMG_XFS ||
		{ echo "remount of the images failed"; return 1; }
	for fs in ext4 xfs; do
		dir=$M/$fs-image mnt=$M/$fs
		check_sums "$dir/img" "$fs-img" || { echo "$fs: files written to the image lost on remount"; return 1; }
		[ ! -e "$dir/before/f4" ] || { echo "$fs: a deletion on the image was lost"; return 1; }
		[ ! -e "$mnt/img" ] || { echo "$fs: files written to the image are on the original"; return 1; }
		[ -e "$mnt/before/f4" ] || { echo "$fs: a deletion on the image reached the original"; return 1; }
		check_sums "$mnt/before" "$fs-changed" || return 1
		check_sums "$mnt/after" "$fs-after" || return 1
	done
}
stamp_case "files written into the mounted images persist across remount and never reach the originals" \
	image_writes

umount $IMG_EXT 2>/dev/null
umount $IMG_XFS 2>/dev/null
check "fsck.ext4 -fn of the ext4 image is clean" fsck.ext4 -fn "$EXT_IMG"
check "xfs_repair -n of the xfs image is clean" xfs_repair -n "$XFS_IMG"

after_destroy() {
	local fs mnt
	$CLI snapshot_destroy -i "$SID" || { echo "destroy failed"; return 1; }
	[ ! -e "$EXT_IMG" ] && [ ! -e "$XFS_IMG" ] || echo "note: image nodes still present after DESTROY"
	drop_caches
	for fs in ext4 xfs; do
		mnt=$M/$fs
		check_sums "$mnt/before" "$fs-changed" && check_sums "$mnt/after" "$fs-after" || return 1
	done
	umount $MNT_EXT && umount $MNT_XFS || { echo "umount of the originals failed"; return 1; }
	fsck.ext4 -fn $EXT || { echo "fsck.ext4 of the original"; return 1; }
	xfs_repair -n $XFS >/tmp/cow-fs-repair 2>&1 || { cat /tmp/cow-fs-repair; echo "xfs_repair of the original"; return 1; }
	mount $EXT $MNT_EXT && mount $XFS $MNT_XFS || { echo "remount of the originals failed"; return 1; }
}
stamp_case "after DESTROY the originals hold every change made after TAKE and check clean" after_destroy

# ---- storage in preallocated files on the snapshotted filesystems themselves
STORE_MB=56
SID2="" RANGES_EXT=() RANGES_XFS=()
in_fs_storage() {
	local out r mnt
	for mnt in $MNT_EXT $MNT_XFS; do
		mountpoint -q "$mnt" || { echo "$mnt is not mounted"; return 1; }
		fallocate -l ${STORE_MB}M "$mnt/blksnap.diff" || { echo "fallocate on $mnt failed"; return 1; }
	done
	sync
	out=$(stamp fiemap $MNT_EXT/blksnap.diff) && [ -n "$out" ] ||
		{ echo "FIEMAP of the ext4 file: $out"; return 1; }
	mapfile -t RANGES_EXT <<<"$out"
	out=$(stamp fiemap $MNT_XFS/blksnap.diff) && [ -n "$out" ] ||
		{ echo "FIEMAP of the xfs file: $out"; return 1; }
	mapfile -t RANGES_XFS <<<"$out"
	echo "ext4 file extents (sectors): ${RANGES_EXT[*]}"
	echo "xfs file extents (sectors): ${RANGES_XFS[*]}"
	# filefrag (in 512-byte units) must agree on where the first extent starts.
	out=$(filefrag -b512 -e -v $MNT_EXT/blksnap.diff | awk '$1 == "0:" { print $4 }')
	[ "${out%..}" = "${RANGES_EXT[0]%%:*}" ] ||
		{ echo "filefrag's first extent starts at '$out', FIEMAP says ${RANGES_EXT[0]}"; return 1; }
	# Zero the extents on the device (they are unwritten: the filesystems
	# never read them), so that copy-on-write data in them shows.
	for r in "${RANGES_EXT[@]}"; do
		dd if=/dev/zero of=$EXT bs=4096 seek=$((${r%%:*} / 8)) count=$((${r#*:} / 8)) \
			oflag=direct conv=notrunc status=none || { echo "zeroing $r failed"; return 1; }
	done
	for mnt in $MNT_EXT $MNT_XFS; do
		make_files "$mnt/before2" 16 || return 1
		save_sums "$mnt/before2" "$(basename "$mnt")-before2" || return 1
	done
	sync
	cli_create $EXT $XFS || return 1
	SID2=$SNAP_ID
	$CLI snapshot_appendstorage -i "$SID2" -d $EXT --range "${RANGES_EXT[@]}" &&
		$CLI snapshot_appendstorage -i "$SID2" -d $XFS --range "${RANGES_XFS[@]}" ||
		{ echo "append of the file extents failed"; return 1; }
	$CLI snapshot_take -i "$SID2" || { echo "take failed"; return 1; }
	# Rewrite much of both filesystems: about 20 MiB each.
	for mnt in $MNT_EXT $MNT_XFS; do
		rm -rf "$mnt/after" "$mnt/before/big"
		make_files "$mnt/after2" 20 || return 1
		dd if=/dev/urandom of="$mnt/before2/big" bs=1M count=8 conv=notrunc status=none || return 1
		save_sums "$mnt/after2" "$(basename "$mnt")-after2" || return 1
	done
	sync
	out=$($CLI snapshot_waitevent -i "$SID2" -t 0)
	echo "event after the writes: $out"
	! grep -q event=corrupted <<<"$out" || { echo "the snapshot is corrupted"; return 1; }
}
timed_case "storage = FIEMAP extents of files preallocated on the snapshotted ext4 and xfs; TAKE; 40 MiB rewritten" \
	in_fs_storage

in_fs_images() {
	local out fs img dir mnt r used=0
	out=$($CLI snapshot_collect -i "$SID2") || { echo "collect: $out"; return 1; }
	for fs in ext4 xfs; do
		mnt=$M/$fs dir=$M/$fs-image
		if [ $fs = ext4 ]; then img=$(image_of "$out" "$(devno $EXT)"); else img=$(image_of "$out" "$(devno $XFS)"); fi
		mount_img $fs "$img" "$dir" || { echo "mount of the $fs image $img failed"; return 1; }
		check_sums "$dir/before" "$fs-changed" && check_sums "$dir/before2" "$fs-before2" &&
			check_sums "$dir/after" "$fs-after" || { echo "$fs image: data from before TAKE wrong"; return 1; }
		[ ! -e "$dir/after2" ] || { echo "$fs image has the files written after TAKE"; return 1; }
		[ -e "$dir/blksnap.diff" ] || { echo "$fs image lacks the storage file"; return 1; }
		umount "$dir" || return 1
		fsck_one "$fs" "$img" || return 1
		echo "$fs image ($img) correct and clean"
	done
	# The storage was used: some extents of the files no longer read as zeroes.
	for r in "${RANGES_EXT[@]}"; do
		used=$((used + $(dd if=$EXT bs=512 skip="${r%%:*}" count=$((${r#*:} < 4096 ? ${r#*:} : 4096)) \
			iflag=direct status=none | tr -d '\0' | head -c 1 | wc -c)))
	done
	((used > 0)) || { echo "no copy-on-write data in the ext4 file's extents"; return 1; }
}
fsck_one() {
	if [ "$1" = xfs ]; then
		xfs_repair -n "$2" >/tmp/cow-fs-repair 2>&1 || { tail -n 20 /tmp/cow-fs-repair; echo "xfs_repair -n $2 failed"; return 1; }
	else
		fsck.ext4 -fn "$2" || { echo "fsck.ext4 -fn $2 failed"; return 1; }
	fi
}
stamp_case "images with storage inside their own filesystems: data as at TAKE, fsck clean, storage used" \
	in_fs_images

in_fs_destroy() {
	local fs mnt
	$CLI snapshot_destroy -i "$SID2" || { echo "destroy failed"; return 1; }
	drop_caches
	for fs in ext4 xfs; do
		mnt=$M/$fs
		check_sums "$mnt/after2" "$fs-after2" || return 1
	done
	umount $MNT_EXT && umount $MNT_XFS || { echo "umount failed"; return 1; }
	fsck_one ext4 $EXT && fsck_one xfs $XFS
}
stamp_case "after DESTROY the filesystems holding the storage files are intact and clean" in_fs_destroy

blksnap_clear
unload_case "the module unloads after the filesystem tests"
rm -f /tmp/cow-fs-change /tmp/cow-fs-repair
ktap_finish
