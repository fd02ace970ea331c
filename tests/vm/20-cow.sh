#!/usr/bin/env bash
# Copy-on-write, checked sector by sector (tests/tools/stamp.py): ramdisks
# filled with stamped sectors, a snapshot taken, writer threads rewriting the
# original at random sizes and offsets (many on or across chunk boundaries,
# with write-zeroes and discards) while the image is read; the image must
# show exactly the data at TAKE, the original exactly the newest data.
# Difference storage on another ramdisk, and interleaved with the written
# regions of the snapshotted ramdisk itself: storage writes stay inside their
# ranges, each written chunk sits in exactly one storage slot. Image writes
# are read back and never reach the original. With the default chunk size
# and with small chunks (chunk_minimum_shift=12 and 16, and a chunk count
# limit that doubles the chunk size), and on a device whose last chunk is a
# single sector.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

ktap_plan 9

cbt_start
RD_KIB=32768 # 65536 sectors each
ram_setup 4 $RD_KIB

# ---- storage on a second ramdisk
stamp_case "stamp check, default chunks, storage on another ramdisk: image = TAKE data, original = newest" \
	stamp run --dev /dev/ram0 --storage /dev/ram1:0:65536 --writers 4 --writes 400 \
	--seconds 10 --zeroout --discard --image-writes 40 --check-storage --events --seed 11

# ---- storage interleaved with the written regions of the same device
# ram2 (65536 sectors): untouched (U), written (W) and storage (S) ranges.
# Every storage range starts on a 512-sector boundary (a chunk boundary for
# every chunk size used here); S1 is shorter than a 256 KiB chunk (never
# used then) and S2 leaves a tail shorter than a chunk. The storage then
# continues on ram1 (whose first 4096 sectors must stay untouched).
#   U 0+2048  W 2048+8192  S1 10240+24  W 10264+8168  S2 18432+8200
#   W 26632+8184  U 34816+2048  S3 36864+16384  W 53248+8192  U 61440+4096
SAME=(--dev /dev/ram2
	--storage /dev/ram2:10240:24 --storage /dev/ram2:18432:8200
	--storage /dev/ram2:36864:16384 --storage /dev/ram1:4096:61440
	--region /dev/ram2:2048:8192 --region /dev/ram2:10264:8168
	--region /dev/ram2:26632:8184 --region /dev/ram2:53248:8192)
stamp_case "stamp check, default chunks, storage interleaved with written ranges on the same device" \
	stamp run "${SAME[@]}" --writers 4 --writes 400 --seconds 10 --zeroout --discard \
	--image-writes 40 --check-storage --events --seed 12

# ---- image writes through the block layer, with the CLI driving the snapshot
image_writes() {
	local id img off
	stamp fill /dev/ram3 >/dev/null || { echo "fill failed"; return 1; }
	cli_snapshot /dev/ram1 0:32768 /dev/ram3 || return 1
	id=$SNAP_ID img=$SNAP_IMG
	echo "images: $SNAP_IMAGES"
	[ -b "$img" ] || { echo "no image node '$img'"; return 1; }
	# 64 KiB of random data at offsets on, across and inside chunks.
	head -c $((64 * 1024)) /dev/urandom >/tmp/cow-pattern
	for off in 0 384 512 1000 4095 65408; do
		dd if=/tmp/cow-pattern of="$img" bs=512 seek=$off oflag=direct conv=notrunc status=none ||
			{ echo "image write at sector $off failed"; return 1; }
		dd if="$img" of=/tmp/cow-back bs=512 skip=$off count=128 iflag=direct status=none &&
			cmp /tmp/cow-pattern /tmp/cow-back ||
			{ echo "image read-back at sector $off differs"; return 1; }
	done
	# The original keeps its stamps everywhere; the image keeps them where
	# nothing was written to it.
	stamp check-fill /dev/ram3 || { echo "the original changed"; return 1; }
	local ex=()
	for off in 0 384 512 1000 4095 65408; do ex+=(--exclude "$off:128"); done
	stamp check-fill "$img=ram3" "${ex[@]}" || { echo "the image changed where not written"; return 1; }
	# After all the writes, each one is still there.
	for off in 0 384 512 1000 4095 65408; do
		dd if="$img" of=/tmp/cow-back bs=512 skip=$off count=128 iflag=direct status=none &&
			cmp /tmp/cow-pattern /tmp/cow-back ||
			{ echo "image data at sector $off changed after the later writes"; return 1; }
	done
	"$BLKSNAP_CLI" snapshot_destroy -i "$id" || { echo "destroy failed"; return 1; }
	stamp check-fill /dev/ram3 || { echo "the original changed after DESTROY"; return 1; }
	rm -f /tmp/cow-pattern /tmp/cow-back
}
stamp_case "image writes (CLI-driven snapshot): read back equal, original unchanged, rest of image unchanged" \
	image_writes

# ---- a device whose size is neither a chunk nor a page multiple: 16 MiB
# and one sector (a loop device); its last chunk is one sector long.
odd_size() {
	local f=/tmp/cow-odd l rc
	truncate -s $((16 * 1024 * 1024 + 512)) $f && l=$(losetup -f --show $f) || { echo "losetup failed"; return 1; }
	wait_for "$l" 5
	stamp run --dev "$l" --storage /dev/ram1:0:65536 --region "$l:30720:2049" --writers 3 --writes 150 \
		--seconds 6 --image-writes 10 --zeroout --check-storage --events --seed 19 && rc=0 || rc=$?
	losetup -d "$l"
	rm -f $f
	return $rc
}
stamp_case "a device of 16 MiB and one sector (a one-sector last chunk): image = TAKE data, slots right" odd_size

# ---- small chunks
for shift in 12 16; do
	if blksnap_load chunk_minimum_shift=$shift; then
		want=$((1 << (shift - 9)))
		got=$(stamp chunk /dev/ram2)
		echo "# chunk_minimum_shift=$shift: chunk $got sectors"
		stamp_case "chunk_minimum_shift=$shift: stamp check, same-device interleaved storage (chunk $want sectors)" \
			stamp run "${SAME[@]}" --writers 4 --writes 500 --seconds 10 --zeroout --discard \
			--image-writes 30 --check-storage --events --seed $((20 + shift))
	else
		ktap_fail "chunk_minimum_shift=$shift: stamp check" "insmod chunk_minimum_shift=$shift failed"
	fi
done

# ---- the chunk count limit doubles the chunk size: 4 KiB chunks would be
# 8192 on a 32 MiB disk, at most 2048 allowed: 16 KiB chunks (32 sectors).
# The storage check fails if the module's slots are not 32 sectors.
if blksnap_load chunk_minimum_shift=12 chunk_maximum_count=2048; then
	got=$(stamp chunk /dev/ram0)
	if [ "$got" = 32 ]; then
		ktap_ok "chunk size rule: 4 KiB minimum, at most 2048 chunks on 32 MiB gives 32 sectors"
	else
		ktap_fail "chunk size rule: 4 KiB minimum, at most 2048 chunks on 32 MiB gives 32 sectors" \
			"stamp.py chunk says $got"
	fi
	stamp_case "chunk_maximum_count=2048: stamp check, each storage slot holds one 16 KiB chunk" \
		stamp run --dev /dev/ram0 --storage /dev/ram1:0:65536 --writers 3 --writes 300 \
		--seconds 10 --image-writes 20 --check-storage --events --seed 31
else
	ktap_fail "chunk size rule: 4 KiB minimum, at most 2048 chunks on 32 MiB gives 32 sectors" "insmod failed"
	ktap_fail "chunk_maximum_count=2048: stamp check, each storage slot holds one 16 KiB chunk" "insmod failed"
fi

blksnap_clear
unload_case "the module unloads after the copy-on-write tests"
ktap_finish
