#!/usr/bin/env bash
# The demo: builds everything, boots the test kernel under QEMU and shows
# the module at work inside it.
#
#   scripts/demo.sh [--debug | --line 7.3]
#
#   --debug     on the debug build of the 6.12 test kernel (KASAN, lockdep, kmemleak)
#   --line 7.3  on Debian's own 7.3 kernel binary (scripts/debian-kernel.sh)
#
# On the host: installs missing packages, builds or reuses the test kernel,
# builds blksnap.ko and the blksnap CLI. In the VM (this same script with
# --guest), the story of a backup agent's day: ext4 on a ramdisk with data,
# a snapshot taken while an application writes, a full backup from the
# snapshot image, some files changed, a second snapshot and an incremental
# backup of only the blocks the change tracking marks, then the chain
# restored and proven (checksums, fsck, file checksums) to equal the disk at
# the second snapshot. Exits non-zero if any step fails.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

say() { printf '\n== %s\n' "$*"; }
note() { printf '   %s\n' "$*"; }
show() {
	printf '$ %s\n' "$*"
	"$@"
}
# The value of KEY in key=value output $2 (the first record that has it).
val() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }
mib() { echo "$(($1 >> 20)) MiB"; }

# A writer that keeps changing the file system: appends to a log and
# rewrites one of the files, until /tmp/demo-stop appears.
writer() {
	local i=0
	rm -f /tmp/demo-stop
	while [ ! -e /tmp/demo-stop ]; do
		i=$((i + 1))
		echo "write $i at $(date +%T.%N)" >>"$MNT/app.log"
		dd if=/dev/urandom of="$MNT/files/f$((i % 32))" bs=64K count=1 seek=$((i % 16)) \
			conv=notrunc status=none
		sync "$MNT/app.log"
	done
	echo "$i"
}

# Makes a snapshot of $DISK with difference storage on $STORE and takes it;
# sets SID and IMG.
snapshot() {
	local out
	out=$(show "$CLI" snapshot_create -d "$DISK") || return 1
	echo "$out"
	SID=$(val id "$out")
	show "$CLI" snapshot_appendstorage -i "$SID" -d "$STORE" -r "0:$((STORE_MIB * 2048))" || return 1
	show "$CLI" snapshot_take -i "$SID" || return 1
	out=$(show "$CLI" snapshot_collect -i "$SID") || return 1
	echo "$out"
	IMG=$(val image "$out")
	for _ in 1 2 3 4 5 6 7 8 9 10; do [ -b "$IMG" ] && break; sleep 0.5; done
	[ -b "$IMG" ]
}

guest() {
	local ko=${BLKSNAP_KO:-$BLKSNAP_ROOT/blksnap.ko} out sum2 sum_restored n seq full incr
	CLI=$BLKSNAP_ROOT/target/release/blksnap
	DISK=/dev/ram0 STORE=/dev/ram1 MNT=/mnt/data DISK_MIB=128 STORE_MIB=128
	local backups=/tmp/backups restored=/tmp/restored.img
	say "Inside the VM: Linux $(uname -r), $(nproc) CPUs"
	[ -x "$CLI" ] || { echo "the CLI is not built ($CLI)"; return 1; }

	say "1. Loading the module"
	show insmod "$ko" || return 1
	show ls -l /dev/blksnap
	show "$CLI" version
	for p in /sys/module/blksnap/parameters/*; do
		printf '   %-30s %s\n' "$(basename "$p")" "$(cat "$p")"
	done

	say "2. A disk with a file system and some data"
	show modprobe brd rd_nr=2 rd_size=$((DISK_MIB * 1024)) max_part=0 || return 1
	note "$DISK ($DISK_MIB MiB) is the disk to protect; $STORE holds the snapshots' difference storage"
	show mkfs.ext4 -q -F -b 4096 "$DISK" || return 1
	mkdir -p "$MNT" && show mount "$DISK" "$MNT" || return 1
	mkdir -p "$MNT/files"
	for n in $(seq 0 31); do
		dd if=/dev/urandom of="$MNT/files/f$n" bs=1M count=1 status=none
	done
	cp -r /usr/share/doc/bash "$MNT/docs" 2>/dev/null || mkdir -p "$MNT/docs"
	sync
	show df -h "$MNT"

	say "3. First snapshot, taken while an application keeps writing"
	writer >/tmp/demo-writes &
	local wpid=$!
	sleep 1
	snapshot || return 1
	note "the snapshot image $IMG is $DISK frozen at the moment of the take"
	note "(the file system was frozen for the take, so the image is consistent)"

	say "4. Full backup from the snapshot image, while the application still writes"
	show "$CLI" backup --snapshot "$SID" --dir "$backups" --no-progress | tee /tmp/demo-b1 || return 1
	full=$(val bytes "$(cat /tmp/demo-b1)")
	touch /tmp/demo-stop
	wait "$wpid"
	note "the application wrote $(cat /tmp/demo-writes) times during the snapshot and the backup;"
	note "none of that is in the backup: it copied the image, not the live disk"
	show "$CLI" snapshot_destroy -i "$SID" || return 1

	say "5. Changing some files"
	show dd if=/dev/urandom of="$MNT/files/f3" bs=4K count=8 seek=40 conv=notrunc status=none
	show dd if=/dev/urandom of="$MNT/files/f17" bs=1M count=1 conv=notrunc status=none
	show rm "$MNT/files/f30"
	show cp "$MNT/files/f1" "$MNT/files/new"
	sync
	(cd "$MNT" && find . -type f ! -name app.log -print0 | sort -z | xargs -0 sha256sum) >/tmp/demo-manifest
	note "$(wc -l </tmp/demo-manifest) files, checksums noted"

	say "6. Second snapshot, then an incremental backup (the application writes again)"
	snapshot || return 1
	out=$(sha256sum <"$IMG")
	sum2=${out%% *}
	note "sha256 of the image (= $DISK at the second snapshot): $sum2"
	writer >/tmp/demo-writes &
	wpid=$!
	show "$CLI" backup --snapshot "$SID" --dir "$backups" --no-progress | tee /tmp/demo-b2 || return 1
	incr=$(val bytes "$(cat /tmp/demo-b2)")
	touch /tmp/demo-stop
	wait "$wpid"
	show "$CLI" snapshot_destroy -i "$SID" || return 1
	note "$DISK has moved on: the application wrote $(cat /tmp/demo-writes) more times"

	say "7. Restoring the chain (full + incremental) and proving it"
	show "$CLI" restore --dir "$backups" --output "$restored" --no-progress || return 1
	out=$(sha256sum <"$restored")
	sum_restored=${out%% *}
	note "sha256 of the restored image: $sum_restored"
	if [ "$sum_restored" != "$sum2" ]; then
		echo "MISMATCH: the restored image differs from the disk at the second snapshot"
		return 1
	fi
	note "equal to the disk at the second snapshot"
	show "$CLI" verify --dir "$backups" --image "$restored" --no-progress || return 1
	show fsck.ext4 -f -n "$restored" || return 1
	mkdir -p /mnt/restored && show mount -o loop,ro "$restored" /mnt/restored || return 1
	(cd /mnt/restored && sha256sum --quiet -c /tmp/demo-manifest) || { echo "file checksums differ"; return 1; }
	note "every file in the restored file system has the checksum it had when the second snapshot was taken"
	umount /mnt/restored

	say "8. What the incremental backup cost"
	n=$(val blocks_total "$(cat /tmp/demo-b2)")
	seq=$(val blocks_copied "$(cat /tmp/demo-b2)")
	printf '   %-22s %12s %14s\n' backup copied "blocks copied"
	printf '   %-22s %12s %14s\n' "1: full" "$(mib "$full")" "$(val blocks_copied "$(cat /tmp/demo-b1)") of $n"
	printf '   %-22s %12s %14s\n' "2: incremental" "$(mib "$incr")" "$seq of $n"
	note "the change tracking map let the incremental copy $((incr * 100 / full))% of what the full one did"
	note "(the files changed in step 5, what the application wrote after the first take, file system metadata)"

	say "9. Cleaning up and unloading"
	umount "$MNT"
	show rmmod blksnap || return 1
	rmmod brd
	[ ! -e /dev/blksnap ] && echo "/dev/blksnap is gone"
	say "What the module wrote to the kernel log"
	dmesg | grep 'blksnap:' || echo "(nothing)"
}

if [ "${1:-}" = --guest ]; then
	[ "${BLKSNAP_VM:-}" = 1 ] || die "--guest runs inside the test VM only"
	guest
	exit
fi

line=6.12
while (($#)); do
	case $1 in
	--debug) BLKSNAP_DEBUG=1; export BLKSNAP_DEBUG ;;
	--line) line=${2:-}; shift ;;
	--line=*) line=${1#*=} ;;
	*) die "usage: scripts/demo.sh [--debug | --line 7.3]" ;;
	esac
	shift
done
case $line in
6.12 | 7.3) ;;
*) die "--line wants 6.12 or 7.3" ;;
esac
[ "$line" = 6.12 ] || [ "$BLKSNAP_DEBUG" != 1 ] || die "--debug is a 6.12 build"

say "1. Packages the build and the VM need"
"$BLKSNAP_ROOT/scripts/deps.sh"
echo "ok"

if [ "$line" = 7.3 ]; then
	say "2. Debian's 7.3 kernel binary and its build environment (made once and cached; about 12 minutes)"
	KDIR=$("$BLKSNAP_ROOT/scripts/debian-kernel.sh" prepare | tail -n1)
	export KDIR
	echo "$KDIR ($(cat "$KDIR/release"))"

	say "3. Building blksnap.ko against it (in its Debian 13 root)"
	BLKSNAP_KO=$("$BLKSNAP_ROOT/scripts/debian-kernel.sh" module)
	export BLKSNAP_KO
	ls -l "$BLKSNAP_KO"
	modinfo -F vermagic "$BLKSNAP_KO"
else
	say "2. The test kernel (built once and cached; a first build takes 15-20 minutes)"
	if [ -z "${KDIR:-}" ]; then
		KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh")
	fi
	export KDIR
	echo "$KDIR ($(cat "$KDIR/include/config/kernel.release" 2>/dev/null))"

	say "3. Building blksnap.ko against it"
	mkdir -p "$BLKSNAP_ROOT/target"
	flock "$BLKSNAP_ROOT/target/.module-build.lock" make -s -C "$BLKSNAP_ROOT" KDIR="$KDIR"
	ls -l "$BLKSNAP_ROOT/blksnap.ko"
fi

say "4. Building the user space (the blksnap CLI)"
(cd "$BLKSNAP_ROOT" && cargo build --release --workspace --quiet)
ls -l "$BLKSNAP_ROOT/target/release/blksnap"

say "5. Booting the kernel under QEMU and running the demo inside"
"$BLKSNAP_ROOT/scripts/vm.sh" -- scripts/demo.sh --guest
say "Done"
