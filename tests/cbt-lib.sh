# shellcheck shell=bash
# Helpers for the change-tracking and snapshot tests (tests/vm/03-*.sh and on), on
# top of tests/lib.sh: test devices that are cleaned up at exit, module
# loading, and the raw ioctl tools.
#
#   bs ARGS...                  tests/tools/bsctl.py (raw blksnap ioctls), run by a
#                               server process (see bs_start)
#   cbt_model ARGS...           tests/tools/cbt_model.py (the CBT model check)
#   at_exit CMD                 run the shell command CMD at exit (last added first)
#   cbt_setup_exit_trap         install the exit trap and start the bs server (call
#                               once, after ktap_plan, in the main shell)
#   cbt_start [FILE...]         require_built FILE..., cbt_setup_exit_trap, and
#                               blksnap unloaded: the start of a test
#   blksnap_load [PARAM=V...]   (re)load blksnap.ko with these parameters
#   blksnap_clear               destroy every snapshot and remove every tracker
#   brd_setup COUNT SIZE_KIB [MAX_PART]  load brd with COUNT ramdisks /dev/ram0.. of
#                               SIZE_KIB (max_part=MAX_PART, default 0)
#   ram_setup COUNT SIZE_KIB [PARAM=V...]  brd_setup and blksnap_load, or setup_abort
#   sd_setup COUNT [PARAM=V...] scsi_debug with COUNT 16 MiB disks (a host each); sets
#                               SD to their names
#   loop_setup VAR SIZE [ARGS...]  a loop device over a new file in /tmp; sets
#                               VAR to its path (ARGS go to losetup, e.g. -P)
#   dm_linear VAR NAME DEV START LEN  a dm-linear device over sectors START..+LEN
#                               of DEV; sets VAR to its /dev/dm-N path
# (These register their cleanup: call them in the test's shell, not in $(...).)
#   devno PATH                  MAJOR:MINOR of a block device
#   kv KEY TEXT                 the VALUE of the first KEY=VALUE word in TEXT
#   val KEY TEXT                the VALUE of the first line KEY=VALUE of TEXT
#   snap_id OUTPUT              the id from "bs create" output
#   wait_for PATH [SECONDS]     wait until PATH exists
#   expect_errno_in A|B DESC CMD...  like expect_errno, any of the errno names
#   case_fn DESC CMD...         one case: ok if CMD succeeds, else its output; its
#                               "note: " lines are shown either way
#   want_errno NAME CMD...      succeeds if CMD fails with errno=NAME, else says why
#   kmemleak_clear, kmemleak_case DESC  forget allocations so far; one case: kmemleak
#                               finds no leak (skipped without kmemleak)
#   sd_disks, sd_ready NAME, sd_delete NAME, sd_gone NAME [SECONDS]
#                               scsi_debug disks: their names; wait until NAME reads;
#                               delete it through sysfs; wait until it is gone
#   write_mbr PATH START:COUNT...  an MBR with a Linux partition for each range
#   mkfs_xfs_small DEV          mkfs.xfs of a filesystem below xfs's minimum size
#
# Devices are released in reverse order of creation at exit, after blksnap is
# unloaded (it holds the devices it tracks open).

# shellcheck source-path=SCRIPTDIR
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"

# bs runs its commands in one bsctl.py server started at the first call
# (starting Python for every call is slow in the VM). Start it in the main
# shell (bs_start, or any bs call outside a subshell) before using bs in
# $(...) or pipelines; calls must not run concurrently.
BS_PID=
bs_start() {
	[ -n "$BS_PID" ] && kill -0 "$BS_PID" 2>/dev/null && return 0
	coproc BS_SERVER { exec "$PYTHON" "$TESTS_DIR/tools/bsctl.py" serve 2>&1; }
	BS_PID=$BS_SERVER_PID
	exec {BS_W}>&"${BS_SERVER[1]}" {BS_R}<&"${BS_SERVER[0]}"
}
bs() {
	local line rc=
	[ -n "$BS_PID" ] || bs_start
	{ printf '%q ' "$@"; echo; } >&"$BS_W" || { echo "bs: the bsctl server is gone"; return 1; }
	while IFS= read -r line <&"$BS_R"; do
		if [[ $line == $'\x1e'* ]]; then
			rc=${line#$'\x1e'}
			break
		fi
		printf '%s\n' "$line"
	done
	[ -n "$rc" ] || { echo "bs: no answer from the bsctl server"; return 1; }
	return "$rc"
}
bs_stop() {
	[ -n "$BS_PID" ] || return 0
	exec {BS_W}>&- {BS_R}<&-
	kill "$BS_PID" 2>/dev/null
	wait "$BS_PID" 2>/dev/null
	BS_PID=
}
cbt_model() { "$PYTHON" "$TESTS_DIR/tools/cbt_model.py" "$@"; }

_AT_EXIT=()
at_exit() { _AT_EXIT+=("$1"); }

_cbt_exit() {
	local rc=$? i
	set +e
	blksnap_clear >/dev/null 2>&1
	blksnap_unload >/dev/null 2>&1 || { sleep 1; rmmod blksnap >/dev/null 2>&1; }
	for ((i = ${#_AT_EXIT[@]} - 1; i >= 0; i--)); do
		eval "${_AT_EXIT[i]}" >/dev/null 2>&1
	done
	_AT_EXIT=()
	bs_stop
	return "$rc"
}

cbt_setup_exit_trap() {
	bs_start
	trap _cbt_exit EXIT
	trap 'exit 130' INT
	trap 'exit 143' TERM
}

# The start of a test script, after its plan: ends it unless blksnap.ko and
# FILEs are built; installs the exit trap; unloads blksnap.
cbt_start() {
	require_built "$@"
	cbt_setup_exit_trap
	blksnap_unload
}

blksnap_clear() {
	blksnap_loaded || return 0
	local id dev
	for id in $(bs collect --count 64 2>/dev/null | sed -n 's/^id=//p'); do
		bs destroy "$id" >/dev/null 2>&1
	done
	for dev in $(bs trackers --count 256 2>/dev/null | sed -n 's/^dev=\([0-9:]*\) .*/\1/p'); do
		bs remove "$dev" >/dev/null 2>&1
	done
}

blksnap_load() {
	if blksnap_loaded; then
		blksnap_clear
		rmmod blksnap || return 1
	fi
	insmod "$BLKSNAP_KO" "$@" || return 1
	wait_for "$BLKSNAP_DEV" 5
}

wait_for() {
	local path=$1 n=$((${2:-10} * 10))
	while [ ! -e "$path" ] && ((n-- > 0)); do
		sleep 0.1
	done
	[ -e "$path" ]
}

brd_setup() {
	local count=$1 size=$2 i
	if [ -e /sys/module/brd ]; then
		rmmod brd || return 1
	fi
	modprobe brd rd_nr="$count" rd_size="$size" max_part="${3:-0}" || return 1
	at_exit "rmmod brd || { sleep 1; rmmod brd; }"
	for ((i = 0; i < count; i++)); do
		wait_for "/dev/ram$i" 5 || return 1
	done
}

# COUNT ramdisks of SIZE_KIB and blksnap loaded with PARAMs; the script ends
# if either fails.
ram_setup() {
	local count=$1 size=$2
	shift 2
	brd_setup "$count" "$size" || setup_abort "brd: cannot load $count ramdisks"
	blksnap_load "$@" || setup_abort "insmod $BLKSNAP_KO${*:+ $*} failed"
}

loop_setup() {
	local var=$1 size=$2 file dev
	shift 2
	printf -v "$var" '%s' ""
	file=$(mktemp /tmp/cbt-loop.XXXXXX) || return 1
	at_exit "rm -f '$file'"
	truncate -s "$size" "$file" || return 1
	dev=$(losetup -f --show "$@" "$file") || return 1
	at_exit "losetup -d '$dev'"
	wait_for "$dev" 5 || return 1
	printf -v "$var" '%s' "$dev"
}

dm_linear() {
	local var=$1 name=$2 dev=$3 start=$4 len=$5 mm
	printf -v "$var" '%s' ""
	dmsetup create --noudevsync "$name" --table "0 $len linear $dev $start" || return 1
	at_exit "dmsetup remove --noudevsync '$name'"
	mm=$(dmsetup info -c --noheadings -o major,minor "$name") || return 1
	mm=${mm// /}
	wait_for "/dev/dm-${mm#*:}" 5 || return 1
	printf -v "$var" '%s' "/dev/dm-${mm#*:}"
}

devno() {
	local t
	t=$(stat -L -c '%t:%T' "$1") || return 1
	printf '%d:%d\n' "0x${t%%:*}" "0x${t##*:}"
}

snap_id() { sed -n 's/^id=//p' <<<"$1"; }

# The value of KEY=VALUE words in output lines.
kv() { grep -o "\\b$1=[^ ]*" <<<"$2" | head -n1 | cut -d= -f2-; }
# The value of KEY in key=value output lines.
val() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }

# Like expect_errno, with a |-separated list of acceptable errno names.
expect_errno_in() {
	local want=$1 desc=$2 out rc got
	shift 2
	out=$("$@" 2>&1) && rc=0 || rc=$?
	got=$(sed -n 's/^errno=//p' <<<"$out" | head -n1)
	if [ "$rc" = 1 ] && [ -n "$got" ] && [[ "|$want|" == *"|$got|"* ]]; then
		ktap_ok "$desc"
	else
		ktap_diag "expected errno in $want"
		ktap_diag "command: $*" "exit status: $rc"
		[ -z "$out" ] || ktap_diag "$(tail -n 25 <<<"$out")"
		ktap_fail "$desc"
	fi
}

# Runs a function (or command) as one case: ok if it succeeds, otherwise
# not ok with its output. It runs in this shell (so the variables it sets
# stay), with its output collected in a file.
case_fn() {
	local desc=$1 out rc log
	shift
	log=$(mktemp /tmp/cbt-case.XXXXXX)
	"$@" >"$log" 2>&1 </dev/null && rc=0 || rc=$?
	out=$(cat "$log")
	rm -f "$log"
	if [ "$rc" = 0 ]; then
		grep -q '^note: ' <<<"$out" && ktap_diag "$(sed -n 's/^note: //p' <<<"$out")"
		ktap_ok "$desc"
	else
		ktap_fail "$desc" "$(tail -n 30 <<<"$out")"
	fi
}

# Fails (prints why) unless the output of a bsctl call has errno=NAME.
want_errno() {
	local want=$1 out rc
	shift
	out=$("$@" 2>&1) && rc=0 || rc=$?
	if [ "$rc" = 1 ] && grep -qx "errno=$want" <<<"$out"; then
		return 0
	fi
	echo "$*: expected errno=$want, got exit $rc: $out"
	return 1
}

# kmemleak (debug kernel). kmemleak_clear forgets the objects allocated so
# far; kmemleak_case DESC is one case: a scan reports no leak (skipped on a
# kernel without kmemleak). kmemleak does not report objects younger than
# 5 s: it waits, then scans twice.
KMEMLEAK=/sys/kernel/debug/kmemleak
kmemleak_clear() {
	[ -e $KMEMLEAK ] || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	[ ! -w $KMEMLEAK ] || echo clear >$KMEMLEAK 2>/dev/null
	return 0
}
kmemleak_case() {
	local leaks
	[ -e $KMEMLEAK ] || mount -t debugfs debugfs /sys/kernel/debug 2>/dev/null
	if [ ! -w $KMEMLEAK ]; then
		ktap_skip "$1" "no kmemleak (release kernel)"
		return
	fi
	sleep 6
	echo scan >$KMEMLEAK
	sleep 1
	echo scan >$KMEMLEAK
	leaks=$(cat $KMEMLEAK)
	if [ -z "$leaks" ]; then
		ktap_ok "$1"
	else
		ktap_fail "$1" "$(head -n 60 <<<"$leaks")"
	fi
}

# ---- scsi_debug disks

# The names of the scsi_debug disks, sorted.
sd_disks() {
	local d
	for d in /sys/bus/pseudo/drivers/scsi_debug/adapter*/host*/target*/*/block/*; do
		[ -e "$d" ] && basename "$d"
	done | sort
}
# scsi_debug with COUNT disks of 16 MiB, one host each, and PARAMs; unloaded
# at exit. Sets SD to the disks' names once each can be read.
SD=()
sd_setup() {
	local count=$1 n=100 d
	shift
	[ ! -e /sys/module/scsi_debug ] || rmmod scsi_debug || return 1
	modprobe scsi_debug dev_size_mb=16 add_host="$count" num_tgts=1 max_luns=1 "$@" || return 1
	at_exit "rmmod scsi_debug"
	while (($(sd_disks | wc -l) < count)) && ((n-- > 0)); do sleep 0.1; done
	mapfile -t SD < <(sd_disks)
	((${#SD[@]} == count)) || { echo "scsi_debug disks: ${SD[*]}"; return 1; }
	for d in "${SD[@]}"; do sd_ready "$d" || return 1; done
	echo "scsi_debug disks: ${SD[*]}"
}
# Waits until disk $1 can be read: a fresh scsi_debug disk answers its first
# commands with a unit attention (power-on reset), and the slow debug kernel
# may still be scanning it.
sd_ready() {
	local n=50
	wait_for "/dev/$1" 5 || { echo "no /dev/$1"; return 1; }
	until dd if="/dev/$1" of=/dev/null bs=4k count=1 iflag=direct status=none 2>/dev/null; do
		((n-- > 0)) || { echo "/dev/$1 cannot be read"; return 1; }
		sleep 0.2
	done
}
# Deletes scsi_debug disk $1 through sysfs.
sd_delete() { echo 1 >"/sys/block/$1/device/delete"; }
# Waits up to $2 seconds (default 5) until disk $1 is gone from sysfs.
sd_gone() {
	local n=$((${2:-5} * 10))
	while [ -e "/sys/block/$1" ] && ((n-- > 0)); do sleep 0.1; done
	[ ! -e "/sys/block/$1" ]
}

# ---- partitions and filesystems

# Writes an MBR to $1 (a device or an image file) with a Linux partition
# (type 0x83) for each START:COUNT range of sectors after it, in order.
write_mbr() {
	"${PYTHON_FAST[@]}" - "$@" <<-'EOF'
		import struct, sys
		mbr = bytearray(512)
		for i, r in enumerate(sys.argv[2:]):
		    start, count = map(int, r.split(":"))
		    mbr[446 + 16 * i:462 + 16 * i] = struct.pack("<B3sB3sII", 0, bytes(3), 0x83, bytes(3), start, count)
		mbr[510:512] = b"\x55\xaa"
		with open(sys.argv[1], "r+b") as f:
		    f.write(mbr)
	EOF
}

# mkfs.xfs of DEV: it refuses filesystems below 300 MB unless it runs under
# fstests.
mkfs_xfs_small() { env TEST_DIR=/tmp TEST_DEV="$1" QA_CHECK_FS=1 mkfs.xfs -q -f "$1"; }
