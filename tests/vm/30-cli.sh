#!/usr/bin/env bash
# The blksnap CLI against the real module: every command (version, tracker_*,
# snapshot_*, stretch_snapshot, backup/restore/verify), key=value and --json
# output, and the error paths with their messages and errno names (bad ids,
# bad devices, missing storage, misaligned ranges, a snapshot not taken, no
# CAP_SYS_ADMIN). Storage as device ranges and as files on ext4 (FIEMAP,
# immutable while in use); stretch_snapshot growing its storage on
# low_free_space, reporting corruption at its limit, and stopping on a signal
# or on snapshot_destroy from another process, deleting its files.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

RD_KIB=65536
SNAP0=/dev/ram0 SNAP1=/dev/ram1 RAW=/dev/ram2 EXTDEV=/dev/ram3
STORE=/mnt/cli-store
MIN_SECT=32768 # diff_storage_minimum for this test: 16 MiB
CLI=$BLKSNAP_CLI
NOID=0f1e2d3c-4b5a-6978-8796-a5b4c3d2e1f0

ktap_plan 42

cbt_start "$CLI"
ram_setup 4 $RD_KIB diff_storage_minimum=$MIN_SECT
mkdir -p $STORE
at_exit "chattr -R -i $STORE; umount $STORE"
mkfs.ext4 -q -F -b 4096 $EXTDEV && mount $EXTDEV $STORE || setup_abort "ext4 on $EXTDEV"

# cli_errno ERRNO DESC ARGS...: the CLI fails with exit status 1 and a
# "blksnap: <op>: <message> (ERRNO)" line.
cli_errno() {
	local want=$1 desc=$2 out rc
	shift 2
	out=$("$CLI" "$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 1 ] && grep -qE "^blksnap: .+: .+ \($want\)\$" <<<"$out"; then
		ktap_diag "$(grep '^blksnap:' <<<"$out" | tail -n1)"
		ktap_ok "$desc"
	else
		ktap_fail "$desc" "expected exit 1 and ($want)" "command: blksnap $*" "exit $rc: $out"
	fi
}
json_ok() { "${PYTHON_FAST[@]}" -c 'import json,sys; json.load(sys.stdin)'; }

# ---- version, output formats, permission, control device
ver_ok() {
	local out
	out=$("$CLI" version) || return 1
	[[ $(val version "$out") =~ ^[0-9]+\.[0-9]+\.[0-9]+\.0$ ]] || { echo "version: $out"; return 1; }
	out=$("$CLI" --json version) || return 1
	echo "$out"
	json_ok <<<"$out" && grep -q '"major":' <<<"$out"
}
case_fn "version prints version=M.m.r.0, and a JSON object with --json" ver_ok
out=$(setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin -- "$CLI" version 2>&1) && rc=0 || rc=$?
if [ "$rc" = 1 ] && grep -qx 'blksnap: version: permission denied: needs CAP_SYS_ADMIN (EPERM)' <<<"$out"; then
	ktap_ok "without CAP_SYS_ADMIN: permission denied (EPERM)"
else
	ktap_fail "without CAP_SYS_ADMIN: permission denied (EPERM)" "exit $rc: $out"
fi
cli_errno ENOENT "a missing control device: is the module loaded? (ENOENT)" --device /nonexistent/blksnap version
out=$("$CLI" snapshot_create 2>&1) && rc=0 || rc=$?
[ "$rc" = 2 ] && ktap_ok "usage errors exit with status 2" || ktap_fail "usage errors exit with status 2" "exit $rc: $out"

# ---- trackers and snapshots, the error paths
empty_lists() {
	local out
	out=$("$CLI" tracker_collect) && [ -z "$out" ] || { echo "tracker_collect: '$out'"; return 1; }
	out=$("$CLI" --json tracker_collect) && [ "$out" = "[]" ] || { echo "json: '$out'"; return 1; }
	out=$("$CLI" --json snapshot_collect) && [ "$out" = "[]" ] || { echo "json: '$out'"; return 1; }
}
case_fn "tracker_collect and snapshot_collect are empty at first (text and JSON)" empty_lists

SID=
create_ok() {
	local out
	out=$("$CLI" snapshot_create -d $SNAP0) || return 1
	SID=$(val id "$out")
	[[ $SID =~ ^[0-9a-f]{8}-([0-9a-f]{4}-){3}[0-9a-f]{12}$ ]] || { echo "id: $out"; return 1; }
	out=$("$CLI" snapshot_collect)
	[ "$(val id "$out")" = "$SID" ] || { echo "collect: $out"; return 1; }
}
case_fn "snapshot_create prints id=UUID; snapshot_collect lists it" create_ok
cli_errno EALREADY "snapshot_create of a device already in a snapshot (EALREADY)" snapshot_create -d $SNAP0
cli_errno EINVAL "snapshot_create with a device given twice (EINVAL)" snapshot_create -d $SNAP1 $SNAP1
cli_errno ENOTBLK "snapshot_create of a character device (ENOTBLK)" snapshot_create -d /dev/null
cli_errno ENOENT "snapshot_create of a missing path (ENOENT)" snapshot_create -d /dev/nonexistent
out=$("$CLI" snapshot_create -d 4095:1048575 2>&1) && rc=0 || rc=$?
if [ "$rc" = 1 ] && grep -qE '\((ENODEV|ENXIO)\)$' <<<"$out"; then
	ktap_ok "snapshot_create of a device number nobody has (ENODEV)"
else
	ktap_fail "snapshot_create of a device number nobody has (ENODEV)" "exit $rc: $out"
fi

first_event() {
	local out
	out=$("$CLI" snapshot_waitevent -i "$SID" -t 5000) || return 1
	echo "$out"
	[ "$(val event "$out")" = low_free_space ] && [ "$(val requested_nr_sect "$out")" = $MIN_SECT ] || return 1
	out=$("$CLI" snapshot_waitevent -i "$SID" -t 100) || return 1
	[ "$(val result "$out")" = timeout ] || { echo "second wait: $out"; return 1; }
	out=$("$CLI" --json snapshot_waitevent -i "$SID" -t 0) && json_ok <<<"$out" || return 1
}
case_fn "snapshot_waitevent: low_free_space for diff_storage_minimum, then result=timeout" first_event
cli_errno ENODEV "snapshot_collect -i of a snapshot not taken: not taken yet (ENODEV)" snapshot_collect -i "$SID"
cli_errno EPERM "tracker_readcbtmap before TAKE (EPERM)" tracker_readcbtmap -d $SNAP0 -f /tmp/cli-map
cli_errno EINVAL "snapshot_appendstorage of a misaligned range (EINVAL)" \
	snapshot_appendstorage -i "$SID" -d $RAW -r 1:7
cli_errno ESRCH "snapshot_appendstorage to an unknown snapshot (ESRCH)" \
	snapshot_appendstorage -i $NOID -d $RAW -r 0:8
cli_errno ENOENT "snapshot_appendstorage --file of a missing file without --size (ENOENT)" \
	snapshot_appendstorage -i "$SID" -f $STORE/none
head -c 1M /dev/zero >/tmp/cli-tmpfs-file
out=$("$CLI" snapshot_appendstorage -i "$SID" -f /tmp/cli-tmpfs-file 2>&1) && rc=0 || rc=$?
if [ "$rc" = 1 ] && grep -q 'not a block device' <<<"$out"; then
	ktap_diag "$out"
	ktap_ok "snapshot_appendstorage --file on tmpfs is refused: not on a block device"
else
	ktap_fail "snapshot_appendstorage --file on tmpfs is refused: not on a block device" "exit $rc: $out"
fi
rm -f /tmp/cli-tmpfs-file

FILE=$STORE/diff0
append_file() {
	local out sectors
	out=$("$CLI" snapshot_appendstorage -i "$SID" -f $FILE --size 16) || return 1
	echo "$out"
	sectors=$(val sectors "$out")
	[ "$(val device "$out")" = "$(devno $EXTDEV)" ] || { echo "device: $out"; return 1; }
	((sectors > 0 && sectors <= 32768)) || { echo "sectors: $sectors"; return 1; }
	[ "$(val immutable "$out")" = 1 ] || return 1
	lsattr $FILE | grep -q '^[^ ]*i' || { echo "not immutable: $(lsattr $FILE)"; return 1; }
	! rm -f $FILE 2>/dev/null && [ -e $FILE ] || { echo "the file could be deleted"; return 1; }
	out=$("$CLI" snapshot_appendstorage -i "$SID" -d $RAW -r 0:8192 16384:8192) && [ -z "$out" ] ||
		{ echo "ranges: $out"; return 1; }
}
case_fn "snapshot_appendstorage --file --size: FIEMAP ranges on the ext4 device, immutable; and device ranges" \
	append_file
cli_errno EEXIST "snapshot_appendstorage --file --size of an existing file (EEXIST)" \
	snapshot_appendstorage -i "$SID" -f $FILE --size 1

take_ok() {
	local out img
	"$CLI" snapshot_take -i "$SID" || return 1
	out=$("$CLI" snapshot_collect -i "$SID") || return 1
	echo "$out"
	[ "$(val orig_dev_id "$out")" = "$(devno $SNAP0)" ] || return 1
	img=$(val image "$out")
	wait_for "$img" 5 && [ -b "$img" ] || { echo "no image node $img"; return 1; }
	[ "$(blockdev --getsize64 "$img")" = "$(blockdev --getsize64 $SNAP0)" ] || return 1
	out=$("$CLI" --json snapshot_collect -i "$SID") && json_ok <<<"$out"
}
case_fn "snapshot_take; snapshot_collect -i maps the device to its image" take_ok
cli_errno EALREADY "a second snapshot_take (EALREADY)" snapshot_take -i "$SID"

trackers_ok() {
	local out size count
	out=$("$CLI" tracker_collect) || return 1
	echo "$out"
	[ "$(val device "$out")" = "$(devno $SNAP0)" ] && [ "$(val snap_number "$out")" = 1 ] || return 1
	count=$(val blk_count "$out")
	"$CLI" tracker_readcbtmap -d $SNAP0 -f /tmp/cli-map || return 1
	size=$(stat -c %s /tmp/cli-map)
	[ "$size" = "$count" ] || { echo "map of $size bytes, blk_count $count"; return 1; }
	"$CLI" tracker_markdirtyblock -d $SNAP0 -r 0:8 1024:2048 || return 1
	out=$("$CLI" --json tracker_collect) && json_ok <<<"$out"
}
case_fn "tracker_collect (snap_number=1), tracker_readcbtmap (blk_count bytes), tracker_markdirtyblock" trackers_ok
cli_errno ENODEV "tracker_markdirtyblock of an untracked device (ENODEV)" tracker_markdirtyblock -d $SNAP1 -r 0:8
cli_errno EINVAL "tracker_markdirtyblock of an empty range (EINVAL)" tracker_markdirtyblock -d $SNAP0 -r 8:0
cli_errno EBUSY "tracker_remove of a device in a snapshot (EBUSY)" tracker_remove -d $SNAP0

destroy_ok() {
	"$CLI" snapshot_destroy -i "$SID" || return 1
	out=$("$CLI" snapshot_collect) && [ -z "$out" ] || { echo "still listed: $out"; return 1; }
	chattr -i $FILE && rm $FILE || { echo "cannot remove the storage file"; return 1; }
}
case_fn "snapshot_destroy; the storage file can then be released (chattr -i) and removed" destroy_ok
cli_errno ESRCH "snapshot_destroy of a destroyed snapshot (ESRCH)" snapshot_destroy -i "$SID"
cli_errno ESRCH "snapshot_take of an unknown snapshot (ESRCH)" snapshot_take -i $NOID
cli_errno ESRCH "snapshot_waitevent of an unknown snapshot (ESRCH)" snapshot_waitevent -i $NOID -t 10
cli_errno ESRCH "snapshot_collect -i of an unknown snapshot (ESRCH)" snapshot_collect -i $NOID
out=$("$CLI" snapshot_take -i not-a-uuid 2>&1) && rc=0 || rc=$?
[ "$rc" = 2 ] && grep -q 'snapshot id' <<<"$out" && ktap_ok "a malformed snapshot id is a usage error" ||
	ktap_fail "a malformed snapshot id is a usage error" "exit $rc: $out"
check "tracker_remove after destroy" "$CLI" tracker_remove -d $SNAP0
cli_errno ENODEV "tracker_remove of an untracked device (ENODEV)" tracker_remove -d $SNAP0

# ---- stretch_snapshot
# Waits until FILE has a line matching REGEX (up to $3 seconds).
wait_line() {
	local n=$((${3:-60} * 10))
	while ! grep -qE "$2" "$1" 2>/dev/null && ((n-- > 0)); do
		sleep 0.1
	done
	grep -qE "$2" "$1"
}
ST_OUT=/tmp/cli-stretch.out
ST_PID=
start_stretch() {
	: >$ST_OUT
	"$CLI" stretch_snapshot "$@" >$ST_OUT 2>&1 &
	ST_PID=$!
	at_exit "kill $ST_PID"
	wait_line $ST_OUT '^image=' 120 || { cat $ST_OUT; return 1; }
}
# Waits for the stretch process to end; its exit status.
end_stretch() {
	local n=600
	while kill -0 "$ST_PID" 2>/dev/null && ((n-- > 0)); do
		sleep 0.1
	done
	wait "$ST_PID"
}
stretch_grows() {
	local sid img added files
	start_stretch -d $SNAP0 $SNAP1 --path $STORE --size 8 --limit 56 || return 1
	sid=$(val id "$(cat $ST_OUT)")
	img=$(val image "$(cat $ST_OUT)")
	[ "$(grep -c '^image=' $ST_OUT)" = 2 ] || { cat $ST_OUT; return 1; }
	files=$(find $STORE -name 'blksnap-*.diff' | wc -l)
	((files == 1)) || { echo "$files files at first"; return 1; }
	# 40 MiB of changes: more than the first file holds.
	dd if=/dev/urandom of=$SNAP0 bs=1M count=40 oflag=direct status=none || return 1
	wait_line $ST_OUT '^event=storage_added' 60 || { cat $ST_OUT; return 1; }
	sleep 2
	added=$(grep -c '^event=storage_added' $ST_OUT)
	files=$(find $STORE -name 'blksnap-*.diff' | wc -l)
	echo "storage_added events: $added, files: $files"
	((added >= 3 && files == added)) || { cat $ST_OUT; return 1; }
	! grep -q '^event=corrupted' $ST_OUT || { cat $ST_OUT; return 1; }
	# The image still reads (its data came from the storage files).
	dd if="$img" of=/dev/null bs=1M iflag=direct status=none || { echo "image read failed"; return 1; }
	# Destroyed from another process: stretch notices, cleans up, exits 0.
	"$CLI" snapshot_destroy -i "$sid" || return 1
	end_stretch || { echo "stretch exited with $?"; cat $ST_OUT; return 1; }
	grep -qx 'reason=destroyed' $ST_OUT || { cat $ST_OUT; return 1; }
	! ls $STORE/blksnap-*.diff 2>/dev/null || { echo "storage files left"; return 1; }
}
case_fn "stretch_snapshot: storage grows on low_free_space; snapshot_destroy elsewhere stops it and files go" \
	stretch_grows

stretch_limit() {
	start_stretch -d $SNAP0 --path $STORE --size 4 --limit 8 || return 1
	dd if=/dev/urandom of=$SNAP0 bs=1M count=32 oflag=direct status=none || { echo "writes to the original failed"; return 1; }
	wait_line $ST_OUT '^event=corrupted' 60 || { cat $ST_OUT; return 1; }
	grep -q '^event=storage_not_added' $ST_OUT || { cat $ST_OUT; return 1; }
	grep -qx 'error=ENOSPC' $ST_OUT || { cat $ST_OUT; return 1; }
	kill -TERM "$ST_PID"
	end_stretch || { echo "stretch exited with $?"; cat $ST_OUT; return 1; }
	cat $ST_OUT
	grep -qx 'reason=signal SIGTERM' $ST_OUT && grep -qx 'corrupted=1' $ST_OUT || return 1
	out=$("$CLI" snapshot_collect) && [ -z "$out" ] || { echo "snapshot left: $out"; return 1; }
	! ls $STORE/blksnap-*.diff 2>/dev/null || { echo "storage files left"; return 1; }
}
case_fn "stretch_snapshot at its --limit: storage_not_added, corrupted ENOSPC; SIGTERM destroys and cleans up" \
	stretch_limit

stretch_json() {
	start_stretch -d $SNAP1 --path $STORE --size 8 --duration 3 || return 1
	end_stretch || return 1
	: >$ST_OUT.json
	"$CLI" --json stretch_snapshot -d $SNAP1 --path $STORE --size 8 --duration 1 >$ST_OUT.json || return 1
	while IFS= read -r line; do json_ok <<<"$line" || { echo "bad JSON line: $line"; return 1; }; done <$ST_OUT.json
	grep -q '"reason":"duration"' $ST_OUT.json
}
case_fn "stretch_snapshot --duration ends by itself; --json prints one JSON object per line" stretch_json

# ---- backup, restore, verify (short; tests/vm/31-backup.sh does the cycles)
BDIR=/tmp/cli-backup
backup_ok() {
	local out
	rm -rf $BDIR
	dd if=/dev/urandom of=$SNAP1 bs=1M count=8 seek=4 oflag=direct status=none
	out=$("$CLI" backup -d $SNAP1 --dir $BDIR --storage-device $RAW --storage-range 0:32768) || return 1
	echo "$out"
	[ "$(val kind "$out")" = full ] && [ "$(val reason "$out")" = first_backup ] || return 1
	[ "$(val bytes "$out")" = $((RD_KIB * 1024)) ] || return 1
	grep -q '^mib_per_s=' <<<"$out" && grep -q '^summary=backup' <<<"$out" || return 1
	dd if=/dev/urandom of=$SNAP1 bs=64K count=3 seek=100 oflag=direct status=none
	out=$("$CLI" backup -d $SNAP1 --dir $BDIR --storage-dir $STORE --storage-size 8) || return 1
	echo "$out"
	[ "$(val kind "$out")" = incremental ] && [ "$(val blocks_copied "$out")" = 3 ] || return 1
	! ls $STORE/blksnap-*.diff 2>/dev/null || { echo "storage files left"; return 1; }
	"$CLI" restore --dir $BDIR --output /tmp/cli-restored || return 1
	"$CLI" verify --dir $BDIR || return 1
	"$CLI" verify --dir $BDIR -d $SNAP1 --image /tmp/cli-restored || return 1
	"$CLI" verify --image /tmp/cli-restored --against $SNAP1
}
case_fn "backup (full, then incremental of 3 blocks), restore, verify of the files and of the image" backup_ok
bad_verify() {
	local out rc
	printf 'x' | dd of=/tmp/cli-restored bs=1 seek=5000000 conv=notrunc status=none
	out=$("$CLI" verify --dir $BDIR --image /tmp/cli-restored 2>&1) && rc=0 || rc=$?
	echo "$out"
	[ "$rc" = 1 ] && grep -qx 'bad_blocks=1' <<<"$out" || return 1
	out=$("$CLI" verify --image /tmp/cli-restored --against $SNAP1 2>&1) && rc=0 || rc=$?
	echo "$out"
	[ "$rc" = 1 ] && grep -qx 'result=different' <<<"$out" && grep -qx 'first_difference=5000000' <<<"$out"
}
case_fn "verify finds a changed byte in a restored image (exit 1, the block, the offset)" bad_verify
cli_errno ENOENT "restore from a directory without backups (ENOENT)" restore --dir /tmp/none --output /tmp/x
cli_errno ESRCH "backup --snapshot of an unknown snapshot (ESRCH)" backup --dir $BDIR --snapshot $NOID
rm -rf $BDIR /tmp/cli-restored /tmp/cli-map $ST_OUT $ST_OUT.json

blksnap_clear
unload_case "the module unloads after the CLI tests"
ktap_finish
