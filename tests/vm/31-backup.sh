#!/usr/bin/env bash
# Incremental backups with change tracking, through `blksnap backup`: ext4 on
# a ramdisk and a raw ramdisk, each with a random writer running while every
# backup copies, over several cycles. Each cycle takes one snapshot of both
# devices (difference storage on a third ramdisk), backs up its images with
# `blksnap backup --snapshot`, and checks that:
#   * the image rebuilt from the chain (full + incrementals) with
#     `blksnap restore` equals the snapshot image byte for byte, and
#     `blksnap verify` agrees;
#   * the incremental copied exactly the tracking blocks the writer wrote
#     since the previous TAKE, by the writer's own log of offsets mapped to
#     CBT blocks: on the raw device exactly those; on ext4 exactly those
#     inside the written file's extents (found with FIEMAP), the rest being
#     filesystem metadata and journal outside them.
# Then a new CBT generation (trackers removed) forces full backups, every
# earlier backup number still restores to its image's checksum, and the
# restored ext4 image passes fsck; and a restore onto a block device holds
# the image of the backup it restores.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119,SC2086 # "test && test || fail" is meant; names have no spaces
source "$(dirname "$0")/../cow-lib.sh"
require_vm

RD_KIB=65536
EXT=/dev/ram0 RAW=/dev/ram1 STORE=/dev/ram2 OUTDEV=/dev/ram3
MNT=/mnt/backup-src
DATA=$MNT/data.bin
DATA_MIB=24
BDIR=/tmp/backup-chain
W=/tmp/backup-work
CLI=$BLKSNAP_CLI
CYCLES=4
# Writes per writer and burst.
BURST=60

ktap_plan $((1 + CYCLES * 3 + 5))

cbt_start "$CLI"
# 64 KiB chunks: less copy-on-write per random write.
ram_setup 4 $RD_KIB chunk_minimum_shift=16
rm -rf $BDIR $W
mkdir -p $MNT $W
at_exit "umount $MNT; rm -rf $BDIR $W"

# ---- the tools: a random writer with a log, and the log/CBT comparison
cat >$W/tool.py <<'EOF'
import fcntl, mmap, os, random, struct, sys

def write(path, seed, count, log, size):
    """count random writes (4 KiB..64 KiB, 4 KiB aligned) below size; logs "offset length"."""
    rng = random.Random(seed)
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, 1 << 16)
    with open(log, "a") as lf:
        for _ in range(count):
            n = rng.randint(1, 16) * 4096
            off = rng.randrange(0, (size - n) // 4096 + 1) * 4096
            buf[:n] = rng.randbytes(n)
            if os.pwrite(fd, memoryview(buf)[:n], off) != n:
                sys.exit("short write")
            lf.write(f"{off} {n}\n")
    os.close(fd)

def fiemap(path):
    fd = os.open(path, os.O_RDONLY)
    exts, start = [], 0
    while True:
        n = 128
        buf = bytearray(struct.pack("=QQIIII", start, (1 << 64) - 1 - start, 1, 0, n, 0) + bytes(56 * n))
        fcntl.ioctl(fd, 0xC020660B, buf, True)
        mapped = struct.unpack_from("=I", buf, 20)[0]
        if not mapped:
            break
        last = False
        for i in range(mapped):
            lo, ph, ln, _, _, fl = struct.unpack_from("=QQQQQI", buf, 32 + 56 * i)
            exts.append((lo, ph, ln))
            last = fl & 1
        if last:
            break
        start = lo + ln
    os.close(fd)
    return exts

def incr_blocks(path):
    """The blocks of an incremental backup file (see crates/blksnap/src/backup.rs)."""
    with open(path, "rb") as f:
        h = f.read(56)
        assert h[:8] == b"BLKSNAPI", "bad magic"
        n = struct.unpack_from("<Q", h, 48)[0]
        blocks = set()
        for _ in range(n):
            first, count = struct.unpack("<QQ", f.read(16))
            blocks.update(range(first, first + count))
    return blocks

def compare(mode, log, blk, incr, datafile=None):
    writes = [tuple(map(int, l.split())) for l in open(log)] if os.path.exists(log) else []
    cbt = incr_blocks(incr)
    if mode == "raw":
        ext = None
        wrote = {b for off, n in writes for b in range(off // blk, (off + n - 1) // blk + 1)}
        inside = None
    else:
        ext = fiemap(datafile)
        def phys(o):
            for lo, ph, ln in ext:
                if lo <= o < lo + ln:
                    return ph + o - lo
            sys.exit(f"file offset {o} is not mapped")
        wrote = set()
        for off, n in writes:
            for o in range(off, off + n, 4096):
                wrote.add(phys(o) // blk)
        # Blocks wholly inside the file's extents: only the writer changes them.
        inside = set()
        for lo, ph, ln in ext:
            inside.update(range(-(-ph // blk), (ph + ln) // blk))
    missing = sorted(wrote - cbt)
    if inside is None:
        extra = sorted(cbt - wrote)
        other = 0
    else:
        extra = sorted((cbt & inside) - wrote)
        other = len(cbt - inside - wrote)
    print(f"writes={len(writes)} writer_blocks={len(wrote)} copied_blocks={len(cbt)} "
          f"missing={len(missing)} extra={len(extra)} outside_file={other}")
    if missing:
        print(f"written but not copied: {missing[:20]}")
    if extra:
        print(f"copied but not written: {extra[:20]}")
    sys.exit(1 if missing or extra else 0)

def chain(path):
    import json
    c = json.load(open(path))
    print(" ".join(f"{d['name']}:{len(d['backups'])}:{d['snap_number']}" for d in c["devices"]))

if __name__ == "__main__":
    cmd = sys.argv[1]
    if cmd == "chain":
        chain(sys.argv[2])
    if cmd == "write":
        write(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5], int(sys.argv[6]))
    elif cmd == "compare":
        compare(sys.argv[2], sys.argv[3], int(sys.argv[4]), sys.argv[5], *sys.argv[6:])
EOF
tool() { "${PYTHON_FAST[@]}" $W/tool.py "$@"; }
# The value of KEY in the record of output $3 whose device= is $2.
rec() { awk -v d="device=$2" -v k="$1=" '$0 == d { f = 1 } f && index($0, k) == 1 { print substr($0, length(k) + 1); exit } /^$/ { f = 0 }' <<<"$3"; }

# ---- the source devices
setup_src() {
	mkfs.ext4 -q -F -b 4096 $EXT && mount $EXT $MNT || return 1
	dd if=/dev/urandom of=$DATA bs=1M count=$DATA_MIB status=none conv=fsync || return 1
	mkdir -p $MNT/churn && cp -r /usr/share/doc/bash $MNT/churn/ 2>/dev/null
	dd if=/dev/urandom of=$RAW bs=1M count=16 oflag=direct status=none || return 1
	sync
}
case_fn "ext4 with a ${DATA_MIB} MiB data file on $EXT, random data on raw $RAW" setup_src

EXT_NAME=$(basename $EXT) RAW_NAME=$(basename $RAW)
DEV_SIZE=$((RD_KIB * 1024))
SID='' IMG_EXT='' IMG_RAW=''
declare -A SUMS
take() {
	cli_create $EXT $RAW || return 1
	SID=$SNAP_ID
	"$CLI" snapshot_waitevent -i "$SID" -t 5000 >/dev/null || return 1
	cli_take $STORE 0:$((RD_KIB * 2)) || return 1
	IMG_EXT=$(image_of "$SNAP_IMAGES" "$(devno $EXT)")
	IMG_RAW=$(image_of "$SNAP_IMAGES" "$(devno $RAW)")
	wait_for "$IMG_EXT" 5 && wait_for "$IMG_RAW" 5
}
# Random writes on both devices (and some file churn on ext4) into the logs
# of cycle $1, in the background; $WPIDS to wait for.
WPIDS=()
start_writers() {
	local c=$1
	tool write $DATA $((c * 7 + 1)) $BURST $W/log-ext-$c $((DATA_MIB << 20)) &
	WPIDS=($!)
	tool write $RAW $((c * 7 + 2)) $BURST $W/log-raw-$c $DEV_SIZE &
	WPIDS+=($!)
	(for i in 1 2 3 4 5; do head -c $((RANDOM * 4)) /dev/urandom >$MNT/churn/f$c-$i; done
		rm -f $MNT/churn/f$((c - 1))-*) &
	WPIDS+=($!)
}
wait_writers() {
	local p rc=0
	for p in "${WPIDS[@]}"; do wait "$p" || rc=1; done
	WPIDS=()
	return $rc
}
BLK=
# One cycle: snapshot, writers running during the backup, checks.
OUT=
cycle() {
	local c=$1 want=$2 out kind d img
	take || { echo "snapshot failed"; return 1; }
	start_writers $((c + 1))
	OUT=$("$CLI" backup --snapshot "$SID" --dir $BDIR) || { echo "$OUT"; wait_writers; return 1; }
	echo "$OUT"
	wait_writers || { echo "a writer failed"; return 1; }
	for d in $EXT_NAME $RAW_NAME; do
		kind=$(rec kind $d "$OUT")
		[ "$kind" = "$want" ] || { echo "$d: a $kind backup, expected $want"; return 1; }
	done
	out=$("$CLI" tracker_collect) || return 1
	BLK=$(val blk_size "$out")
}
restore_check() {
	local c=$1 d img out
	for d in $EXT_NAME $RAW_NAME; do
		[ $d = $EXT_NAME ] && img=$IMG_EXT || img=$IMG_RAW
		out=$("$CLI" restore --dir $BDIR -d $d --output $W/restored-$d) || { echo "$out"; return 1; }
		echo "$out"
		cmp $W/restored-$d "$img" || { echo "$d: the restored image differs from the snapshot image"; return 1; }
		"$CLI" verify --dir $BDIR -d $d --image $W/restored-$d >/dev/null || return 1
		SUMS[$d-$(val seq "$out")]=$(sha256sum <"$img" | cut -d' ' -f1)
	done
}
incr_check() {
	local c=$1 rc=0 file out copied wrote
	file=$(rec file $RAW_NAME "$OUT")
	out=$(tool compare raw $W/log-raw-$c "$BLK" "$BDIR/$file") || rc=1
	echo "raw $RAW_NAME: $out"
	copied=$(rec blocks_copied $RAW_NAME "$OUT")
	wrote=$(sed -n 's/.*writer_blocks=\([0-9]*\).*/\1/p' <<<"$out")
	[ "$copied" = "$wrote" ] || { echo "raw: blksnap backup copied $copied blocks, the writer wrote $wrote"; rc=1; }
	file=$(rec file $EXT_NAME "$OUT")
	out=$(tool compare file $W/log-ext-$c "$BLK" "$BDIR/$file" $DATA) || rc=1
	echo "ext4 $EXT_NAME: $out"
	return $rc
}

for ((c = 1; c <= CYCLES; c++)); do
	[ $c = 1 ] && want=full || want=incremental
	case_fn "cycle $c: $want backup of both devices while random writers run" cycle $c $want
	case_fn "cycle $c: each image rebuilt from the chain equals the snapshot image byte for byte" restore_check $c
	if [ $c = 1 ]; then
		out=$(rec reason $EXT_NAME "$OUT")
		[ "$out" = first_backup ] && [ "$(rec bytes $RAW_NAME "$OUT")" = $DEV_SIZE ] &&
			ktap_ok "cycle 1: full backups (first_backup) copy the whole devices" ||
			ktap_fail "cycle 1: full backups (first_backup) copy the whole devices" "$OUT"
	else
		desc="cycle $c: the incremental copied exactly the blocks the writers wrote since the last TAKE"
		if out=$(incr_check $c 2>&1); then
			ktap_diag "$out"
			ktap_ok "$desc"
		else
			ktap_fail "$desc" "$out"
		fi
	fi
	"$CLI" snapshot_destroy -i "$SID" 2>/dev/null
done

gen_change() {
	local d
	for d in $EXT $RAW; do "$CLI" tracker_remove -d $d || return 1; done
	cycle $((CYCLES + 1)) full || return 1
	for d in $EXT_NAME $RAW_NAME; do
		[ "$(rec reason $d "$OUT")" = generation_changed ] || { echo "$d: reason $(rec reason $d "$OUT")"; return 1; }
	done
	restore_check $((CYCLES + 1)) || return 1
	fsck.ext4 -fn $W/restored-$EXT_NAME || { echo "fsck of the restored ext4 image failed"; return 1; }
	"$CLI" snapshot_destroy -i "$SID"
}
case_fn "a new CBT generation (trackers removed) forces full backups (generation_changed); fsck of the restored ext4 is clean" \
	gen_change

old_points() {
	local key d seq want got
	for key in "${!SUMS[@]}"; do
		d=${key%-*} seq=${key##*-}
		"$CLI" restore --dir $BDIR -d "$d" --seq "$seq" --output $W/old >/dev/null || return 1
		got=$(sha256sum <$W/old | cut -d' ' -f1)
		want=${SUMS[$key]}
		[ "$got" = "$want" ] || { echo "$d backup $seq restores to $got, its image was $want"; return 1; }
		echo "$d backup $seq: ok"
	done
	"$CLI" verify --dir $BDIR
}
case_fn "every earlier backup number restores to its snapshot image; verify of all backup files" old_points

# The raw device's chain up to the last cycle of the first generation (a
# full backup and its incrementals) restored onto a ramdisk of random data:
# every block is written, holes included.
device_restore() {
	local want got
	want=${SUMS[$RAW_NAME-$CYCLES]}
	dd if=/dev/urandom of=$OUTDEV bs=1M count=$((RD_KIB / 1024)) oflag=direct status=none || return 1
	"$CLI" restore --dir $BDIR -d $RAW_NAME --seq $CYCLES --output $OUTDEV || return 1
	got=$(head -c "$DEV_SIZE" $OUTDEV | sha256sum | cut -d' ' -f1)
	[ "$got" = "$want" ] || { echo "$OUTDEV holds $got, backup $CYCLES's image was $want"; return 1; }
}
case_fn "a restore onto a block device (full + incrementals) holds the snapshot image" device_restore

chain_ok() {
	local n
	n=$(tool chain $BDIR/chain.json) || return 1
	echo "$n"
	[ "$n" = "$EXT_NAME:$((CYCLES + 1)):1 $RAW_NAME:$((CYCLES + 1)):1" ]
}
case_fn "chain.json: $((CYCLES + 1)) backups per device; snap_number 1 of the new generation" chain_ok

umount $MNT
blksnap_clear
unload_case "the module unloads after the backup tests"
ktap_finish
