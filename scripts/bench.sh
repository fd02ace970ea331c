#!/usr/bin/env bash
# The benchmark: what tracking and snapshots cost the I/O of the devices they
# protect, measured with fio in the test VM, side by side with dm-snapshot.
#
#   scripts/bench.sh [--quick] [--out FILE] [--reps N] [--runtime SECONDS] [--region MIB]
#                    [--brd-clock icount|wall]
#
# On the host: installs missing packages, builds or reuses the release test
# kernel, builds blksnap.ko and the blksnap CLI, creates two file-backed
# virtio disks and boots the kernel under QEMU. In the VM (this script with
# --guest) fio runs every scenario against a ramdisk (brd: the CPU cost of
# the code path) and the virtio disk (I/O bound), alternating the baseline
# and the measured variant inside each repetition. The ramdisk runs in a VM
# of its own whose clock counts instructions (vm.sh --icount), the virtio
# disk, the take stall and the memory figures in a VM on the wall clock.
# Back on the host, scripts/bench-report.py turns the fio JSON into ratios
# (median, min-max over the repetitions) and writes FILE (Markdown table,
# default target/bench/report.md) and a plot next to it (FILE with .png).
#
#   --quick            short runs and small devices, for development
#   --reps N           repetitions (default 5, quick 2)
#   --runtime SECONDS  length of each timed fio run (default 5, quick 2)
#   --region MIB       the part of each device the jobs cover (default 128, quick 32)
#   --out FILE         the report (the raw results go to target/bench/work)
#   --brd-clock wall   run the ramdisk in the wall-clock VM too (the noisy way
#                      of earlier reports, for comparison)
#
# BENCH_ONLY="held cow stall backup mem" runs only the named scenario groups
# (held: 1, 2 and 4; cow: 3; stall: 5; backup: 7; mem: 6), for development.
#
# Scenarios: 1 tracking only; 2 snapshot held, every chunk copied; 3 first
# write to every chunk (COW) against dm-snapshot and the physical limit;
# 4 snapshot image reads; 5 how long writes stall during take; 6 module
# memory; 7 the backup path (full backup with writers, incremental backups
# of large sparse devices, restore). docs/benchmarks.md says what each one
# measures.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

# ---------------------------------------------------------------- guest side

CHUNK=$((256 << 10))   # blksnap chunk_minimum_shift=18 and dm-snapshot chunk size
FIO_COMMON=(--direct=1 --ioengine=libaio --output-format=json --eta=never)

# Sizes in MiB and counts; the host passes BENCH_* (see the host side).
setup_params() {
	REPS=${BENCH_REPS:-2}
	RUNTIME=${BENCH_RUNTIME:-2}
	R=${BENCH_REGION_MIB:-32}        # the region every write/read job covers
	MEM_CHUNKS=${BENCH_MEM_CHUNKS:-10000 100000} # copied chunks, ascending, multiples of 16
	BK_SMALL_GIB=${BENCH_BK_SMALL_GIB:-1} BK_LARGE_GIB=${BENCH_BK_LARGE_GIB:-64}
	BK_CHANGED=${BENCH_BK_CHANGED:-1 10 100} # per mille of the small device's blocks
	BK_WRITE_IOPS=100 BK_HOT_MIB=8           # the writers during the full backup
	DEVICES=${BENCH_DEVICES:-brd virtio} # the devices scenarios 1-4 run on
	CLOCK=${BENCH_CLOCK:-wall}           # how this VM keeps time (the report says)
	RES=$BLKSNAP_VM_OUT/results
	CLI=${BENCH_CLI:-$BLKSNAP_ROOT/target/release/blksnap}
	KO=$BLKSNAP_ROOT/blksnap.ko
	mkdir -p "$RES/fio"
	: >"$RES/results.txt"
}

# Whether scenario group $1 (held, cow, stall, mem) runs: all of them, or
# those in $BENCH_ONLY.
want() { [ -z "${BENCH_ONLY:-}" ] || [[ " $BENCH_ONLY " == *" $1 "* ]]; }
# Whether scenarios 1-4 run on device $1 (brd, virtio) in this VM.
want_dev() { [[ " $DEVICES " == *" $1 "* ]]; }

# A key=value record for the report.
record() { echo "$*" >>"$RES/results.txt"; }
note() { printf '[bench %s] %s\n' "$(date +%T)" "$*"; }

# fio_jobs KIND D REP DEV WORKLOAD...: one fio run of these workloads on DEV,
# one after the other (fio starts slowly under TCG); the JSON goes to
# $RES/fio/KIND.D.REP.WORKLOADS.json, and the report finds each job by its name,
# KIND.D.WORKLOAD.REP (D is the device's label). Workloads:
#   w4k1 w4k32  random 4 KiB writes, queue depth 1 / 32, timed
#   s1m         sequential 1 MiB writes, timed
#   r1m r4k     sequential 1 MiB / random 4 KiB reads, timed
#   ft4k1 ft4k32  one 4 KiB write into every chunk of the region, random order
#   ft1m        one pass of sequential 1 MiB writes over the region
#   fill        the same as ft1m, at queue depth 8 (not reported)
#   devread devwrite  one pass of sequential 1 MiB reads / writes over the
#               whole device, queue depth 4 (the raw rates of the backup path)
#   blkread     FIO_N random reads of FIO_BS bytes through the page cache
#   rd4m1 rd4m32  one pass of sequential 4 MiB reads over the region, queue
#               depth 1 / 32, through io_uring with registered buffers (no
#               page pinning per I/O): the device's best read rate, for the
#               copy reads of the physical limit
#   wr4m1 wr4m32  the same with writes: the copy writes of the physical limit
#   cp256k1 cp256k32 cp1m1  a copy as one pass on one disk: a reader over
#               the region and, at the same time, a writer over the region
#               after it (jobs *r and *w), with 256 KiB I/O at queue depth
#               1 / 32 and 1 MiB I/O at depth 1 (what a copy of one chunk or
#               of a 1 MiB write's four chunks can have in flight at the
#               first-touch workloads' queue depths), through io_uring with
#               registered buffers: the paired copy reads and writes of the
#               physical limit on a throttled disk, which share its budget,
#               and its burst, as the real pass does
# With FIO_OFFSET set (fio's --offset, e.g. 64M), every job starts there.
fio_jobs() {
	local kind=$1 d=$2 rep=$3 dev=$4 name wl args=() loops=1
	shift 4
	# The passes of the physical limit (kinds nosnap and limit*) can be run
	# several times over where the clock counts instructions (no burst of a
	# throttle to keep alike): their runtimes are counted in milliseconds.
	if [ "$CLOCK" = icount ]; then
		case $kind in nosnap) loops=8 ;; limit*) loops=4 ;; esac
	fi
	# (fio would make a regular file of a missing device node)
	[ -b "$dev" ] || { note "$dev is not a block device"; return 1; }
	for wl in "$@"; do
		name=$kind.$d.$wl.$rep
		# (a copy pass is two jobs: the reader's name ends in r, the
		# writer's in w; the writer has no stonewall, so they run together)
		if [[ $wl == cp* ]]; then name=$kind.$d.${wl}r.$rep; fi
		args+=(--name="$name" --filename="$dev" --stonewall)
		if [ -n "${FIO_OFFSET:-}" ]; then args+=(--offset="$FIO_OFFSET"); fi
		case $wl in
		w4k1) args+=(--rw=randwrite --bs=4k --iodepth=1) ;;
		w4k32) args+=(--rw=randwrite --bs=4k --iodepth=32) ;;
		s1m) args+=(--rw=write --bs=1M --iodepth=1) ;;
		r1m) args+=(--rw=read --bs=1M --iodepth=1) ;;
		devread) args+=(--rw=read --bs=1M --iodepth=4) ;;
		blkread) args+=(--rw=randread --bs="$FIO_BS" --number_ios="$FIO_N" --direct=0 --invalidate=1) ;;
		devwrite) args+=(--rw=write --bs=1M --iodepth=4) ;;
		r4k) args+=(--rw=randread --bs=4k --iodepth=1) ;;
		rd4m1 | rd4m32 | wr4m1 | wr4m32)
			if [[ $wl == rd* ]]; then args+=(--rw=read); else args+=(--rw=write); fi
			args+=(--ioengine=io_uring --fixedbufs --registerfiles --bs=4M
				--iodepth="${wl#??4m}" --size="${R}M" --loops="$loops")
			;;
		cp256k1 | cp256k32 | cp1m1)
			local bs pass
			case $wl in cp256k*) bs=256k ;; *) bs=1M ;; esac
			pass=(--ioengine=io_uring --fixedbufs --registerfiles --bs="$bs"
				--iodepth="${wl#cp*[km]}" --size="${R}M" --loops="$loops")
			args+=(--rw=read "${pass[@]}"
				--name="$kind.$d.${wl}w.$rep" --filename="$dev" --offset="${R}M" --rw=write "${pass[@]}")
			;;
		ft4k1 | ft4k32)
			iolog "$dev" "$loops" >"/tmp/bench-$name.iolog"
			args+=(--read_iolog="/tmp/bench-$name.iolog" --iodepth="${wl#ft4k}")
			;;
		ft1m) args+=(--rw=write --bs=1M --iodepth=1 --size="${R}M" --loops="$loops") ;;
		fill) args+=(--rw=write --bs=1M --iodepth=8 --size="${R}M") ;;
		*) die "unknown workload $wl" ;;
		esac
		case $wl in
		ft* | fill | rd4m* | wr4m* | cp* | dev* | blkread) ;;
		*) args+=(--size="${R}M" --time_based --runtime="$RUNTIME" --randrepeat=0 --norandommap) ;;
		esac
	done
	# The last job of a fio run comes out about 2% slower than the same job
	# in the middle (fio's wind-down runs beside it; with an instruction-
	# counted clock that shows): a short read after it keeps every measured
	# job in the middle. The report ignores it.
	args+=(--name=pad --filename="$dev" --stonewall --rw=read --bs=4k --size=64k)
	fio "${FIO_COMMON[@]}" "${args[@]}" --output="$RES/fio/$kind.$d.$rep.$(IFS=-; echo "$*").json" >/dev/null ||
		{ note "fio failed: $kind $d $rep $*"; return 1; }
	rm -f /tmp/bench-*.iolog
}

# A fio replay log: one 4 KiB write at a random place of every chunk of the
# region, the chunks in random order; all of it TIMES times.
iolog() {
	local dev=$1 times=${2:-1}
	echo "fio version 2 iolog"
	echo "$dev add"
	echo "$dev open"
	seq 0 $((R * 1048576 / CHUNK - 1)) | shuf |
		awk -v dev="$dev" -v cs=$CHUNK -v times="$times" 'BEGIN { srand() }
			{ line[NR] = sprintf("%s write %d 4096", dev, $1 * cs + int(rand() * cs / 4096) * 4096) }
			END { for (t = 0; t < times; t++) for (i = 1; i <= NR; i++) print line[i] }'
	echo "$dev close"
}

val() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }

# snap_make DEV STORE_DEV START_SECTOR COUNT: a taken snapshot of DEV; sets SID
# and IMG.
snap_make() {
	local out
	out=$("$CLI" snapshot_create -d "$1") || return 1
	SID=$(val id "$out")
	"$CLI" snapshot_appendstorage -i "$SID" -d "$2" -r "$3:$4" >/dev/null || return 1
	"$CLI" snapshot_take -i "$SID" >/dev/null || return 1
	out=$("$CLI" snapshot_collect -i "$SID") || return 1
	IMG=$(val image "$out")
	for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b "$IMG" ] && break; sleep 0.2; done
	[ -b "$IMG" ]
}
snap_drop() { "$CLI" snapshot_destroy -i "$SID" >/dev/null; }
# Attaches a tracker to DEV (a snapshot created and destroyed leaves it).
track() {
	local out
	out=$("$CLI" snapshot_create -d "$1") || return 1
	"$CLI" snapshot_destroy -i "$(val id "$out")" >/dev/null
}
untrack() { "$CLI" tracker_remove -d "$1" >/dev/null 2>&1 || true; }

# dm_create NAME TABLE: a device-mapper device; prints its /dev/dm-N path
# (devtmpfs makes that node; nothing here makes /dev/mapper links).
dm_create() {
	local mm path
	dmsetup create --noudevsync "$1" --table "$2" >/dev/null || return 1
	mm=$(dmsetup info -c --noheadings -o major,minor "$1") || return 1
	mm=${mm// /}
	path=/dev/dm-${mm#*:}
	for _ in 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20; do
		[ -b "$path" ] && break
		sleep 0.2
	done
	[ -b "$path" ] || { note "no device node $path for $1"; return 1; }
	echo "$path"
}

# dm-snapshot of DEV with COW on COWDEV (N transient, P persistent); sets
# ORIGIN, the device the writes go to.
dm_make() {
	local dev=$1 cow=$2 mode=$3 sect
	sect=$(blockdev --getsz "$dev")
	ORIGIN=$(dm_create bench-origin "0 $sect snapshot-origin $dev") || return 1
	# A persistent store starts from a clean header.
	if [ "$mode" = P ]; then
		dd if=/dev/zero of="$cow" bs=$CHUNK count=1 oflag=direct status=none || return 1
	fi
	dm_create bench-snap "0 $sect snapshot $dev $cow $mode $((CHUNK / 512))" >/dev/null || return 1
	# The origin splits writes at chunk boundaries only from its next
	# resume on (as LVM does it): before that, a write across chunks copies
	# only the chunk of its first sector.
	dmsetup suspend --noudevsync bench-origin && dmsetup resume --noudevsync bench-origin
}
# dm_copied SECTORS: fails unless the snapshot holds at least SECTORS
# sectors of copied chunks (metadata not counted): a check that the
# dm-snapshot figures include every copy.
dm_copied() {
	local st used
	st=$(dmsetup status bench-snap) || return 1
	used=$(awk '{ split($4, a, "/"); print a[1] - $5 }' <<<"$st")
	((used >= $1)) || { note "dm-snapshot copied $used sectors, expected $1: $st"; return 1; }
}
dm_drop() {
	dmsetup remove --noudevsync bench-snap 2>/dev/null
	dmsetup remove --noudevsync bench-origin 2>/dev/null
	true
}

# Scenarios 1, 2 and 4 for one device: D is its label, DEV the device, STORE
# the other device that holds the difference storage.
bench_held() {
	local d=$1 dev=$2 store=$3 rep=$4 wl lin
	note "$d rep $rep: baseline, tracking only, image reads, steady state"
	# Tracking only runs before the baseline in odd repetitions, so the
	# order does not favour either.
	if ((rep % 2)); then
		track "$dev" || return 1
		fio_jobs track "$d" "$rep" "$dev" w4k1 w4k32 s1m || return 1
		untrack "$dev"
	fi
	untrack "$dev"
	fio_jobs base "$d" "$rep" "$dev" w4k1 w4k32 s1m r1m r4k || return 1
	track "$dev" || return 1
	if ((rep % 2 == 0)); then
		fio_jobs track "$d" "$rep" "$dev" w4k1 w4k32 s1m || return 1
	fi
	# The reference for the image's reads: dm-linear over the tracked
	# device, the kernel's own thinnest remapping layer (a clone per bio,
	# sent on to the device below), so the cost of a stacked bio-based
	# device by itself.
	lin=$(dm_create "bench-lin-$d" "0 $((R * 2048)) linear $dev 0") || return 1
	fio_jobs linear "$d" "$rep" "$lin" r1m r4k || return 1
	dmsetup remove --noudevsync "bench-lin-$d" || return 1
	snap_make "$dev" "$store" 0 $((2 * R * 2048)) || return 1
	fio_jobs imgclean "$d" "$rep" "$IMG" r1m r4k || return 1
	fio_jobs fill "$d" "$rep" "$dev" fill || return 1
	fio_jobs imgcopied "$d" "$rep" "$IMG" r1m r4k || return 1
	fio_jobs steady "$d" "$rep" "$dev" w4k1 w4k32 s1m || return 1
	snap_drop || return 1
	untrack "$dev"
	# The baseline again: the report uses the mean of both.
	fio_jobs base2 "$d" "$rep" "$dev" w4k1 w4k32 s1m r1m r4k || return 1
}

# Scenario 3 for one device: first writes to every chunk, blksnap and
# dm-snapshot, storage on STORE (another device) and on SAME (a dm-linear
# device over the second part of DEV), and what the physical limit is made
# of: the same write passes with no snapshot, the device's best read rate
# and the storage's best write rate (docs/benchmarks.md, scenario 3).
bench_cow() {
	local d=$1 dev=$2 store=$3 same=$4 rep=$5 wl where cow mode
	note "$d rep $rep: first-touch copy-on-write"
	for wl in ft4k1 ft4k32 ft1m; do
		for where in other same; do
			untrack "$dev"
			if [ $where = other ]; then
				snap_make "$dev" "$store" 0 $((2 * R * 2048)) || return 1
			else
				snap_make "$dev" "$dev" $((R * 2048)) $((2 * R * 2048)) || return 1
			fi
			fio_jobs "cow-blksnap-$where" "$d" "$rep" "$dev" $wl || return 1
			snap_drop || return 1
			untrack "$dev"
			for mode in N P; do
				if [ $where = other ]; then cow=$store; else cow=$same; fi
				dm_make "$dev" "$cow" $mode || { dm_drop; return 1; }
				fio_jobs "cow-dm$mode-$where" "$d" "$rep" "$ORIGIN" $wl || { dm_drop; return 1; }
				dm_copied $((R * 2048)) || { dm_drop; return 1; }
				dm_drop
			done
		done
	done
	# The physical limit: the writes alone, the copy reads from DEV and the
	# copy writes to the storage, each measured alone.
	untrack "$dev"
	fio_jobs nosnap "$d" "$rep" "$dev" ft4k1 ft4k32 ft1m || return 1
	fio_jobs limit "$d" "$rep" "$dev" rd4m1 rd4m32 || return 1
	fio_jobs limit-other "$d" "$rep" "$store" wr4m1 wr4m32 || return 1
	# (the storage on the same device is DEV's second part, as blksnap has
	# it, not the dm-linear device that dm-snapshot uses)
	FIO_OFFSET=${R}M fio_jobs limit-same "$d" "$rep" "$dev" wr4m1 wr4m32 || return 1
	# The copy passes pair a throttled disk's reads and writes; where one
	# clock counts every device's work, the report sums R and S instead.
	if [ "$CLOCK" != icount ]; then
		fio_jobs limit-copy "$d" "$rep" "$dev" cp256k1 cp256k32 cp1m1 || return 1
	fi
}

# Scenario 5: writes to 1 or 4 ramdisks while their snapshot is taken.
bench_stall() {
	local rep=$1 n out sid devs
	for n in 1 4; do
		devs=(/dev/ram0 /dev/ram2 /dev/ram3 /dev/ram4)
		devs=("${devs[@]:0:n}")
		for d in "${devs[@]}"; do untrack "$d"; done
		out=$("$CLI" snapshot_create -d "${devs[@]}") || return 1
		sid=$(val id "$out")
		"$CLI" snapshot_appendstorage -i "$sid" -d /dev/ram1 -r "0:$((2 * R * 2048))" >/dev/null || return 1
		out=$(python3 "$BLKSNAP_ROOT/scripts/bench-stall.py" --cli "$CLI" --id "$sid" "${devs[@]}") ||
			{ echo "$out"; return 1; }
		record "stall devices=$n rep=$rep $out"
		note "take stall, $n device(s): $out"
		"$CLI" snapshot_destroy -i "$sid" >/dev/null || return 1
		for d in "${devs[@]}"; do untrack "$d"; done
	done
}

# /proc/meminfo figures (KiB) after the caches are dropped.
meminfo() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
	sleep 1
	awk '/^(Slab|VmallocUsed|Percpu|MemFree):/ { sub(":", "", $1); printf "%s=%s ", $1, $2 }' /proc/meminfo
}

# Scenario 6: module memory for tracking a sparse 64 GiB device (dm-zero),
# and per copied 4 KiB chunk in two patterns: dense, a sequential first
# pass, and scattered, one 4 KiB write into each of as many chunks drawn at
# random from the whole 64 GiB (16 Mi chunks). Each pattern has a snapshot
# of its own and is read at each count of MEM_CHUNKS (cumulative: the next
# count's writes go to chunks not copied yet). The storage is a second
# dm-zero device: the copies' data is dropped, and the memory does not
# depend on where it goes.
bench_mem() {
	local zero sink m0 m1 m2 m3 out sid pattern n done_n more span=$((64 << 21))
	insmod "$KO" chunk_minimum_shift=12 chunk_maximum_count=16777216 || return 1
	zero=$(dm_create bench-zero "0 $span zero") || return 1
	sink=$(dm_create bench-sink "0 $span zero") || return 1
	m0=$(meminfo)
	track "$zero" || return 1
	m1=$(meminfo)
	record "mem what=tracking size_gib=64 block_shift=$(cat /sys/module/blksnap/parameters/tracking_block_minimum_shift) before: $m0 after: $m1"
	note "memory: tracking 64 GiB: $m0 -> $m1"
	# The scattered chunks: distinct chunk numbers in random order, as many
	# as the largest count.
	shuf -i 0-$((span / 8 - 1)) -n "${MEM_CHUNKS##* }" >/tmp/bench-scattered
	for pattern in dense scattered; do
		out=$("$CLI" snapshot_create -d "$zero") || return 1
		sid=$(val id "$out")
		"$CLI" snapshot_appendstorage -i "$sid" -d "$sink" -r "0:$((${MEM_CHUNKS##* } * 8 + 65536))" >/dev/null || return 1
		"$CLI" snapshot_take -i "$sid" >/dev/null || return 1
		m2=$(meminfo)
		done_n=0
		for n in $MEM_CHUNKS; do
			more=$((n - done_n))
			if [ $pattern = dense ]; then
				fio --name=memdense --filename="$zero" "${FIO_COMMON[@]}" --rw=write --bs=64k --iodepth=8 \
					--offset=$((done_n * 4))k --size=$((more * 4))k --output=/dev/null || return 1
			else
				{
					echo "fio version 2 iolog"
					echo "$zero add"
					echo "$zero open"
					sed -n "$((done_n + 1)),${n}p" /tmp/bench-scattered |
						awk -v dev="$zero" '{ printf "%s write %.0f 4096\n", dev, $1 * 4096 }'
					echo "$zero close"
				} >/tmp/bench-scattered.iolog
				fio --name=memscattered --filename="$zero" "${FIO_COMMON[@]}" --iodepth=32 \
					--read_iolog=/tmp/bench-scattered.iolog --output=/dev/null || return 1
			fi
			m3=$(meminfo)
			record "mem what=chunks pattern=$pattern chunks=$n chunk_kib=4 before: $m2 after: $m3"
			note "memory: $n chunks copied, $pattern: $m2 -> $m3"
			done_n=$n
		done
		"$CLI" snapshot_destroy -i "$sid" >/dev/null || return 1
	done
	rm -f /tmp/bench-scattered /tmp/bench-scattered.iolog
	untrack "$zero"
	rmmod blksnap
	dmsetup remove --noudevsync bench-sink
	dmsetup remove --noudevsync bench-zero
}

# Scenario 7, the backup path: what a backup agent does with a taken
# snapshot. The backups go to BK, a tmpfs in the guest's memory, so the
# destination is not what is measured.
BK=/tmp/bench-backup

drop_caches() {
	sync
	echo 3 >/proc/sys/vm/drop_caches
}
# Seconds since T0 (from date +%s%N).
elapsed() { awk -v a="$1" -v b="$(date +%s%N)" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
# The Nth value of KEY in the CLI's output (one value per record, in order).
valn() { sed -n "s/^$1=//p" <<<"$3" | sed -n "$2p"; }
# Runs a command and prints its output, then its CPU time in user space and
# in the kernel (cpu_user=, cpu_sys=; GNU time, when installed).
cpu_time() {
	local rc=0
	if [ -x /usr/bin/time ]; then
		/usr/bin/time -o /tmp/bench-time -f "%U %S" "$@" || rc=$?
		awk '{ printf "\ncpu_user=%s\ncpu_sys=%s\n", $1, $2 }' /tmp/bench-time
		return $rc
	fi
	"$@"
}
# The record of device MAJ:MIN in the output of tracker_collect.
cbt_of() { awk -v RS= -v want="device=$1" '{ for (i = 1; i <= NF; i++) if ($i == want) { print; exit } }' <<<"$2"; }

# 7a and 7c on the virtio disk DEV: a full backup while writers run on DEV,
# against a raw sequential read of DEV with the same writers; then a
# restore of that backup onto DEV, against a raw sequential write.
bench_backup_full() {
	local rep=$1 dev=/dev/vda store=/dev/vdb mib wpid t0 out file rc=0
	mib=$(($(blockdev --getsize64 "$dev") >> 20))
	note "virtio rep $rep: full backup of $mib MiB with writers, restore"
	untrack "$dev"
	# Data in every block (fio's random buffers): no block is a hole.
	fio --name=bkfill --filename="$dev" "${FIO_COMMON[@]}" --rw=write --bs=1M --iodepth=4 \
		--output=/dev/null || return 1
	# The writers: BK_WRITE_IOPS random 4 KiB writes per second into the
	# first BK_HOT_MIB of the device (a log, a database's hot pages).
	fio --name=bkwriters --filename="$dev" "${FIO_COMMON[@]}" --rw=randwrite --bs=4k --iodepth=1 \
		--rate_iops="$BK_WRITE_IOPS" --size="${BK_HOT_MIB}M" --time_based --runtime=3600 \
		--output=/dev/null &
	wpid=$!
	sleep 3 # fio starts slowly under TCG
	{
		fio_jobs bkraw virtio "$rep" "$dev" devread &&
			drop_caches && t0=$(date +%s%N) &&
			dd if="$dev" of=/dev/null bs=8M status=none &&
			record "backup what=bufread rep=$rep bytes=$((mib << 20)) seconds=$(elapsed "$t0")" &&
			t0=$(date +%s%N) &&
			dd if="$dev" of=/dev/null bs=8M iflag=direct status=none &&
			record "backup what=dirread rep=$rep bytes=$((mib << 20)) seconds=$(elapsed "$t0")" &&
			rm -rf "$BK/full" && drop_caches &&
			out=$(cpu_time "$CLI" backup -d "$dev" --dir "$BK/full" --storage-device "$store" \
				--storage-range "0:$((2 * R * 2048))" --no-progress) &&
			# The parts of the backup by themselves: the image of a snapshot
			# read as the CLI reads it (8 MiB O_DIRECT reads, one at a time,
			# no hashing, nothing written), and the backup's image file
			# written into the tmpfs again in the CLI's 64 KiB writes (its
			# first 128 MiB: the VM's memory holds the backup already).
			snap_make "$dev" "$store" 0 $((2 * R * 2048)) &&
			t0=$(date +%s%N) &&
			dd if="$IMG" of=/dev/null bs=8M iflag=direct status=none &&
			record "backup what=imgread rep=$rep bytes=$((mib << 20)) seconds=$(elapsed "$t0")" &&
			snap_drop && untrack "$dev" &&
			file=$BK/full/$(val file "$out") && cat "$file" >/dev/null &&
			t0=$(date +%s%N) &&
			dd if="$file" of="$BK/tmpfs-write" bs=64k count=2048 status=none &&
			record "backup what=tmpfswrite rep=$rep bytes=$((128 << 20)) seconds=$(elapsed "$t0")" &&
			rm -f "$BK/tmpfs-write"
	} || rc=1
	kill "$wpid" 2>/dev/null
	wait "$wpid" 2>/dev/null || true
	((rc == 0)) || return 1
	record "backup what=full rep=$rep bytes=$(val bytes "$out") copy_seconds=$(val seconds "$out") seconds=$(valn seconds 2 "$out") corrupted=$(valn corrupted 1 "$out") user_seconds=$(val cpu_user "$out") sys_seconds=$(val cpu_sys "$out")"
	note "full backup: $(val mib_per_s "$out") MiB/s (copy), $(valn seconds 2 "$out") s in all"
	[ "$(valn corrupted 1 "$out")" = 0 ] || { note "the snapshot of the backup was corrupted"; return 1; }
	# The restore writes the device with no tracker, as the raw write does.
	untrack "$dev"
	fio_jobs bkraw virtio "$rep" "$dev" devwrite || return 1
	drop_caches
	t0=$(date +%s%N)
	dd if="$file" of="$dev" bs=8M conv=fsync status=none || return 1
	record "backup what=bufwrite rep=$rep bytes=$((mib << 20)) seconds=$(elapsed "$t0")"
	drop_caches
	out=$(cpu_time "$CLI" restore --dir "$BK/full" --output "$dev" --no-progress) || return 1
	record "backup what=restore rep=$rep bytes=$(val bytes "$out") seconds=$(val seconds "$out") user_seconds=$(val cpu_user "$out") sys_seconds=$(val cpu_sys "$out")"
	note "restore: $(val mib_per_s "$out") MiB/s"
	rm -rf "$BK/full"
}

# 7b: incremental backups of two sparse devices (dm-zero: reads return
# zeros, writes are dropped and marked in the CBT map), BK_SMALL_GIB and
# BK_LARGE_GIB, after BK_CHANGED per mille of the small device's blocks
# were written (the same number of blocks on both), each from a snapshot
# taken for it (`blksnap backup --snapshot`). The first backup of
# each is seeded (scripts/bench-backup-seed.py) from a real full backup of
# a 64 MiB dm-zero device: reading 64 GiB through the page cache would take
# a quarter of an hour here.
bench_backup_incr() {
	local rep=$1 seed dev g mm out cbt bs blocks small_blocks=0 pm n t0 map_s cli_s sid
	note "dm-zero rep $rep: incremental backups"
	rm -rf "$BK/seed" "$BK/incr"
	seed=$(dm_create bench-bk-seed "0 $((64 << 11)) zero") || return 1
	"$CLI" backup -d "$seed" --dir "$BK/seed" --storage-device /dev/vdb \
		--storage-range "0:$((2 * R * 2048))" --no-progress >/dev/null || return 1
	untrack "$seed"
	dmsetup remove --noudevsync bench-bk-seed
	for g in $BK_SMALL_GIB $BK_LARGE_GIB; do
		dev=$(dm_create bench-bk "0 $((g << 21)) zero") || return 1
		mm=$(dmsetup info -c --noheadings -o major,minor bench-bk)
		mm=${mm// /}
		# A snapshot taken and destroyed: the CBT state that a full backup
		# read from it records.
		out=$("$CLI" snapshot_create -d "$dev") || return 1
		sid=$(val id "$out")
		"$CLI" snapshot_appendstorage -i "$sid" -d /dev/vdb -r "0:$((2 * R * 2048))" >/dev/null || return 1
		"$CLI" snapshot_take -i "$sid" >/dev/null || return 1
		cbt=$(cbt_of "$mm" "$("$CLI" tracker_collect)")
		"$CLI" snapshot_destroy -i "$sid" >/dev/null || return 1
		bs=$(val blk_size "$cbt")
		blocks=$(val blk_count "$cbt")
		((small_blocks)) || small_blocks=$blocks
		python3 "$BLKSNAP_ROOT/scripts/bench-backup-seed.py" --seed "$BK/seed" --dir "$BK/incr" \
			--device "$dev" --generation "$(val generation_id "$cbt")" \
			--snap-number "$(val snap_number "$cbt")" --block-size "$bs" \
			--capacity "$(val device_capacity "$cbt")" >/dev/null || return 1
		for pm in $BK_CHANGED; do
			n=$((small_blocks * pm / 1000))
			# n distinct blocks at random (fio's random map)
			fio --name=bkchange --filename="$dev" "${FIO_COMMON[@]}" --rw=randwrite --bs="$bs" \
				--iodepth=16 --number_ios="$n" --output=/dev/null || return 1
			# The snapshot is taken here, so the CBT map can be read by
			# itself before the backup reads it again.
			out=$("$CLI" snapshot_create -d "$dev") || return 1
			sid=$(val id "$out")
			"$CLI" snapshot_appendstorage -i "$sid" -d /dev/vdb -r "0:$((2 * R * 2048))" >/dev/null || return 1
			"$CLI" snapshot_take -i "$sid" >/dev/null || return 1
			# (what starting the CLI costs, for the map read's time)
			t0=$(date +%s%N)
			"$CLI" version >/dev/null || return 1
			cli_s=$(elapsed "$t0")
			t0=$(date +%s%N)
			"$CLI" tracker_readcbtmap -d "$dev" -f "$BK/map" || return 1
			map_s=$(elapsed "$t0")
			drop_caches
			out=$("$CLI" backup --snapshot "$sid" --dir "$BK/incr" --no-progress) || return 1
			"$CLI" snapshot_destroy -i "$sid" >/dev/null || return 1
			record "backup what=incr rep=$rep size_gib=$g block=$bs blocks=$blocks changed=$n kind=$(val kind "$out") copied=$(val blocks_copied "$out") bytes=$(val bytes "$out") copy_seconds=$(val seconds "$out") seconds=$(valn seconds 2 "$out") map_seconds=$map_s cli_seconds=$cli_s"
			note "incremental, $g GiB, $n blocks changed: $(val kind "$out"), $(valn seconds 2 "$out") s"
			if [ "$(val kind "$out")" != incremental ] || [ "$(val blocks_copied "$out")" != "$n" ]; then
				note "expected an incremental backup of $n blocks: $out"
				return 1
			fi
			rm -f "$BK/incr/"*.incr "$BK/map"
		done
		# The same number of blocks as the last backup, read at random
		# from the device itself through the page cache (no snapshot, no
		# hashes, no file): what reading them costs by itself.
		if ((g == BK_SMALL_GIB)); then
			FIO_BS=$bs FIO_N=$n fio_jobs bkincrraw "z$g" "$rep" "$dev" blkread || return 1
		fi
		untrack "$dev"
		dmsetup remove --noudevsync bench-bk
		rm -rf "$BK/incr"
	done
	rm -rf "$BK/seed"
}

bench_backup() {
	local rc=0
	mkdir -p "$BK"
	mount -t tmpfs -o size=1600m bench-backup "$BK" || return 1
	bench_backup_full "$1" && bench_backup_incr "$1" || rc=1
	umount "$BK"
	return $rc
}

guest() {
	local rep same vsame
	setup_params
	note "Linux $(uname -r), $(nproc) CPUs; reps=$REPS runtime=${RUNTIME}s region=${R}MiB devices=$DEVICES clock=$CLOCK"
	record "params reps=$REPS runtime=$RUNTIME region_mib=$R chunk=$CHUNK kernel=$(uname -r) clock=$CLOCK devices=${DEVICES// /,} disk=${BENCH_DISK:-unthrottled}"
	[ -x "$CLI" ] || die "the CLI is not built ($CLI)"
	if want_dev virtio || want mem || want backup; then
		{ [ -b /dev/vda ] && [ -b /dev/vdb ]; } || die "the virtio disks are missing"
	fi
	# brd devices of 3 regions: the region, then room for storage on the same device.
	modprobe brd rd_nr=5 rd_size=$((3 * R * 1024)) max_part=0 || return 1
	for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b /dev/ram4 ] && break; sleep 0.2; done
	# Every block written once first: brd allocates its pages on the first
	# write, and that must not count against whatever runs first.
	dd if=/dev/zero of=/dev/ram0 bs=1M count=$((3 * R)) oflag=direct status=none
	dd if=/dev/zero of=/dev/ram1 bs=1M count=$((3 * R)) oflag=direct status=none
	for n in 2 3 4; do dd if=/dev/zero of=/dev/ram$n bs=1M count=16 oflag=direct status=none; done
	insmod "$KO" chunk_minimum_shift=18 || return 1
	if want_dev brd; then
		same=$(dm_create bench-same-brd "0 $((2 * R * 2048)) linear /dev/ram0 $((R * 2048))") || return 1
	fi
	if want_dev virtio; then
		vsame=$(dm_create bench-same-vd "0 $((2 * R * 2048)) linear /dev/vda $((R * 2048))") || return 1
	fi
	for ((rep = 0; rep < REPS; rep++)); do
		if want held; then
			if want_dev brd; then bench_held brd /dev/ram0 /dev/ram1 $rep || return 1; fi
			if want_dev virtio; then bench_held virtio /dev/vda /dev/vdb $rep || return 1; fi
		fi
		if want cow; then
			if want_dev brd; then bench_cow brd /dev/ram0 /dev/ram1 "$same" $rep || return 1; fi
			if want_dev virtio; then bench_cow virtio /dev/vda /dev/vdb "$vsame" $rep || return 1; fi
		fi
		if want stall; then bench_stall $rep || return 1; fi
		if want backup; then bench_backup $rep || return 1; fi
	done
	if want_dev brd; then dmsetup remove --noudevsync bench-same-brd; fi
	if want_dev virtio; then dmsetup remove --noudevsync bench-same-vd; fi
	rmmod blksnap || return 1
	if want mem; then bench_mem || return 1; fi
	rmmod brd
	note "done"
}

if [ "${1:-}" = --guest ]; then
	[ "${BLKSNAP_VM:-}" = 1 ] || die "--guest runs inside the test VM only"
	guest
	exit
fi

# ----------------------------------------------------------------- host side

quick=0 out='' reps='' runtime='' region='' brd_clock=icount
while (($#)); do
	case $1 in
	--quick) quick=1 ;;
	--out) (($# >= 2)) || die "--out wants a file"; out=$2; shift ;;
	--out=*) out=${1#*=} ;;
	--reps) (($# >= 2)) || die "--reps wants a number"; reps=$2; shift ;;
	--runtime) (($# >= 2)) || die "--runtime wants seconds"; runtime=$2; shift ;;
	--region) (($# >= 2)) || die "--region wants MiB"; region=$2; shift ;;
	--brd-clock) (($# >= 2)) || die "--brd-clock wants icount or wall"; brd_clock=$2; shift ;;
	-h | --help) sed -n '2,/^# shellcheck/{/^# shellcheck/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "usage: scripts/bench.sh [--quick] [--out FILE] [--reps N] [--runtime SECONDS] [--region MIB] [--brd-clock icount|wall]" ;;
	esac
	shift
done
if ((quick)); then
	: "${reps:=2}" "${runtime:=2}" "${region:=32}"
	mem_chunks="10000 100000" bk_small_gib=1 timeout=2400
else
	: "${reps:=5}" "${runtime:=5}" "${region:=128}"
	mem_chunks="10000 100000 1000000" bk_small_gib=2 timeout=$((3600 * 3))
fi
[[ $reps =~ ^[1-9][0-9]*$ && $runtime =~ ^[1-9][0-9]*$ && $region =~ ^[1-9][0-9]*$ ]] ||
	die "--reps, --runtime and --region want positive numbers"
case $brd_clock in icount | wall) ;; *) die "--brd-clock wants icount or wall" ;; esac
: "${out:=$BLKSNAP_ROOT/target/bench/report.md}"
mkdir -p "$(dirname "$out")"
out=$(cd "$(dirname "$out")" && pwd)/$(basename "$out")

log "packages"
"$BLKSNAP_ROOT/scripts/deps.sh"
# The benchmark is about the release kernel, whatever the environment says.
BLKSNAP_DEBUG=0
if [ -z "${KDIR:-}" ]; then
	KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh")
fi
export KDIR BLKSNAP_DEBUG
log "kernel: $KDIR"
mkdir -p "$BLKSNAP_ROOT/target"
flock "$BLKSNAP_ROOT/target/.module-build.lock" make -s -C "$BLKSNAP_ROOT" KDIR="$KDIR"
(cd "$BLKSNAP_ROOT" && cargo build --release --workspace --quiet)

# The raw results stay in target/ whatever --out says.
work=$BLKSNAP_ROOT/target/bench/work
rm -rf "$work"
mkdir -p "$work"
# The virtio disks model provisioned cloud volumes: files in the host's
# memory, each throttled by QEMU to DISK_IOPS I/Os and DISK_MIBPS MiB per
# second (the baseline of an AWS gp3 volume), so I/O, not the CPU, is the
# limit, and the rate does not depend on this host's own disk. (That disk
# is the noise: an A/A comparison of two regions of a disk file there, in
# alternating 1 s fio runs, came out 0.31-1.71; throttled in memory,
# 0.99-1.01.) Without room in /dev/shm for them, the files stay on the
# host's disk, throttled the same way. Created fresh for every run and
# written in full, so no first write allocates blocks.
DISK_IOPS=3000 DISK_MIBPS=125
# The first disk holds three regions (scenarios 1-4), and at least 512 MiB:
# scenario 7 backs up all of it, and a shorter read is shaped by the
# throttle's burst (QEMU lets a tenth of a second's worth through at once).
vda_mib=$((3 * region > 512 ? 3 * region : 512))
store_mib=$((2 * region))
disk_mib=$((vda_mib + store_mib))
disk_dir=$work disk_where=disk
if [ -d /dev/shm ] && [ -w /dev/shm ] &&
	(($(df -Pk /dev/shm | awk 'NR == 2 { print $4 }') > (disk_mib + 1024) * 1024)); then
	disk_dir=$(mktemp -d /dev/shm/blksnap-bench.XXXXXX)
	disk_where=memory
	# QEMU opens the files with O_DIRECT (cache=none): tmpfs has it since Linux 6.6.
	if ! dd if=/dev/zero of="$disk_dir/probe" bs=4k count=1 oflag=direct status=none 2>/dev/null; then
		rm -rf "$disk_dir"
		disk_dir=$work disk_where=disk
	fi
	rm -f "$disk_dir/probe"
fi
disk_img=$disk_dir/disk.img store_img=$disk_dir/store.img
cleanup_disks() {
	rm -f "$disk_img" "$store_img"
	[ "$disk_dir" = "$work" ] || rmdir "$disk_dir" 2>/dev/null || true
}
trap cleanup_disks EXIT
dd if=/dev/zero of="$disk_img" bs=1M count="$vda_mib" status=none
dd if=/dev/zero of="$store_img" bs=1M count="$store_mib" status=none
log "virtio disks: files in the host's $disk_where, $DISK_IOPS I/Os and $DISK_MIBPS MiB per second each"

groups=${BENCH_ONLY:-held cow stall backup mem}
common_env=(-e BENCH_REPS="$reps" -e BENCH_RUNTIME="$runtime" -e BENCH_REGION_MIB="$region"
	-e BENCH_MEM_CHUNKS="$mem_chunks" -e BENCH_BK_SMALL_GIB="$bk_small_gib")
rc=0 results=()
# The ramdisk measures the CPU cost of the code paths. Timed by the wall
# clock, TCG on this host swings by tens of percent from one second to the
# next (an A/A comparison of two idle ramdisks came out 0.68-1.11), which
# buries differences of a few percent. Counted in instructions (vm.sh
# --icount), the same comparison comes out 1.00 (0.996-1.000), so the
# ramdisk runs in a VM of its own that counts instructions; both vCPUs take
# turns, and the figures are ratios of CPU work per I/O.
brd_groups=
for g in held cow; do
	if [[ " $groups " == *" $g "* ]]; then brd_groups+=" $g"; fi
done
if [ "$brd_clock" = icount ] && [ -n "$brd_groups" ]; then
	log "ramdisk, instruction-counted VM (reps=$reps, runtime=${runtime}s, region=${region} MiB)"
	"$BLKSNAP_ROOT/scripts/vm.sh" --timeout "$timeout" --out "$work/vm-brd" --icount 2 \
		"${common_env[@]}" -e BENCH_DEVICES=brd -e BENCH_CLOCK=icount -e BENCH_ONLY="$brd_groups" \
		-- scripts/bench.sh --guest || rc=$?
	results+=(--results "$work/vm-brd/results")
	devices=virtio
else
	devices="brd virtio"
fi
log "$devices, wall-clock VM (reps=$reps, runtime=${runtime}s, region=${region} MiB)"
# Both virtual CPUs run in parallel (--tcg multi): QD32 and the copy-on-write
# workers need the second host core. The module loads and unloads only while
# no I/O runs, which keeps clear of QEMU's stale-int3 fault (scripts/vm.sh).
"$BLKSNAP_ROOT/scripts/vm.sh" --timeout "$timeout" --out "$work/vm" --tcg multi \
	--disk "$disk_img" --disk "$store_img" --disk-limit "$DISK_IOPS,$DISK_MIBPS" \
	-e BENCH_DISK="$DISK_IOPS,$DISK_MIBPS,$disk_where" \
	"${common_env[@]}" -e BENCH_DEVICES="$devices" -e BENCH_CLOCK=wall -e BENCH_ONLY="$groups" \
	-- scripts/bench.sh --guest || rc=$?
results+=(--results "$work/vm/results")
cleanup_disks

# A failed run still reports what it measured.
python3 "$BLKSNAP_ROOT/scripts/bench-report.py" "${results[@]}" --out "$out"
log "report: $out"
((rc == 0)) || die "the benchmark failed in the VM (exit status $rc); the report is partial"
