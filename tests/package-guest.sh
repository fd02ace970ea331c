#!/usr/bin/env bash
# The packaged module and CLI on Debian's kernel, inside the test VM:
# scripts/package-test.sh boots Debian's 7.3 kernel with the Debian 13 root
# where it installed blksnap-rs-dkms and blksnap-tools shared writable
# (BLKSNAP_PKG_ROOT), and runs this script. Every command that belongs to
# the packages runs in that root (chroot): its modprobe, its blksnap, its
# apt-get and dkms.
#
# modprobe loads the module that DKMS installed; the CLI takes a snapshot,
# a full and an incremental backup, restores and verifies; then, with a
# snapshot held and its image open, `apt-get remove blksnap-rs-dkms` removes
# the package and leaves the module loaded and working (unloading refuses
# with EBUSY); released, the module unloads; `apt-get remove blksnap-tools`;
# and no file that `dpkg -L` listed for either package is left, nor DKMS's
# tree, the prepared kernel or the installed module.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2016,SC2317 # "a && b || c" is meant; cases run through case_fn
source "$(dirname "$0")/lib.sh"
require_vm

R=${BLKSNAP_PKG_ROOT:?set by scripts/package-test.sh}
FILES=${BLKSNAP_PKG_FILES:?set by scripts/package-test.sh}
REL=$(uname -r)
RD_KIB=65536

ktap_plan 10

# The guest's pseudo file systems and a tmpfs for the backups, in the root.
mounts=()
in_root_mount() { mount "$@" && mounts=("${!#}" "${mounts[@]}"); }
cleanup() {
	local m
	for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null; done
}
trap cleanup EXIT
in_root_mount -t proc proc "$R/proc"
in_root_mount -t sysfs sysfs "$R/sys"
in_root_mount --rbind /dev "$R/dev"
in_root_mount -t tmpfs -o mode=1777 tmpfs "$R/tmp"
in_root_mount -t tmpfs -o mode=0755 tmpfs "$R/run"
r() {
	chroot "$R" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive "$@"
}
val() { sed -n "s/^$1=//p" <<<"$2" | head -n1; }

# ---- the module from the package
load_ok() {
	local file
	if ! r modprobe blksnap; then
		ls -l "$R/lib/modules/$REL/updates/dkms"
		grep blksnap "$R/lib/modules/$REL/modules.dep"
		return 1
	fi
	file=$(r modinfo -F filename blksnap)
	echo "filename: $file; signer: $(r modinfo -F signer blksnap)"
	[[ $file == /lib/modules/$REL/updates/dkms/blksnap.ko* ]] && [ -c /dev/blksnap ] && blksnap_loaded
}
# Runs a case's function; its output as diagnostics, with its time.
case_fn() {
	local desc=$1 out rc t0=$SECONDS
	shift
	out=$("$@" 2>&1) && rc=0 || rc=$?
	[ -z "$out" ] || ktap_diag "$out"
	ktap_diag "$1: $((SECONDS - t0))s"
	ktap_result "$rc" "$desc"
}
case_fn "modprobe blksnap loads the module DKMS installed under updates/dkms for $REL" load_ok

# ---- the CLI from the package: backups
modprobe brd rd_nr=3 rd_size=$RD_KIB || ktap_diag "cannot load brd"
B=/tmp/pkg-backup
backups_ok() {
	local out
	dd if=/dev/urandom of=/dev/ram0 bs=1M count=16 oflag=direct status=none || return 1
	out=$(r blksnap backup -d /dev/ram0 --dir "$B" --storage-device /dev/ram1 --storage-range 0:32768) ||
		{ echo "$out"; return 1; }
	echo "$out" | grep -E '^(kind|reason|bytes|blocks_copied)='
	[ "$(val kind "$out")" = full ] || return 1
	dd if=/dev/urandom of=/dev/ram0 bs=64K count=3 seek=100 oflag=direct status=none || return 1
	out=$(r blksnap backup -d /dev/ram0 --dir "$B" --storage-device /dev/ram1 --storage-range 0:32768) ||
		{ echo "$out"; return 1; }
	echo "$out" | grep -E '^(kind|reason|bytes|blocks_copied)='
	[ "$(val kind "$out")" = incremental ] && [ "$(val blocks_copied "$out")" = 3 ]
}
case_fn "blksnap backup: a full backup from a snapshot, then an incremental one of the 3 changed blocks" backups_ok
restore_ok() {
	r blksnap restore --dir "$B" --output /tmp/pkg-restored &&
		r blksnap verify --image /tmp/pkg-restored --against /dev/ram0
}
case_fn "blksnap restore of the chain equals the device (blksnap verify)" restore_ok
rm -rf "$R$B" "$R/tmp/pkg-restored"

# ---- removal while a snapshot is held
SID="" IMG=""
hold_ok() {
	local out
	out=$(r blksnap snapshot_create -d /dev/ram0) || return 1
	SID=$(val id "$out")
	r blksnap snapshot_appendstorage -i "$SID" -d /dev/ram2 -r 0:65536 &&
		r blksnap snapshot_take -i "$SID" || return 1
	out=$(r blksnap snapshot_collect -i "$SID") || return 1
	IMG=$(val image "$out")
	for _ in $(seq 50); do [ -b "$IMG" ] && break; sleep 0.1; done
	[ -b "$IMG" ] || { echo "no image $IMG"; return 1; }
	echo "snapshot $SID, image $IMG"
}
hold_ok >/tmp/hold.out 2>&1 && rc=0 || rc=$?
ktap_diag "$(cat /tmp/hold.out)"
# A backup agent reading the image: it holds the module.
[ "$rc" = 0 ] && exec 4<"$IMG"
remove_held() {
	local out
	[ -n "$IMG" ] || { echo "no snapshot held"; return 1; }
	out=$(r apt-get remove -y blksnap-rs-dkms 2>&1) || { echo "$out"; return 1; }
	echo "$out" | grep -iE 'blksnap|dkms|error|warn' | head -n 20
	blksnap_loaded || { echo "the module was unloaded"; return 1; }
	out=$(r blksnap snapshot_collect -i "$SID") && [ "$(val image "$out")" = "$IMG" ] ||
		{ echo "the snapshot is gone: $out"; return 1; }
	dd if="$IMG" of=/dev/null bs=1M count=8 iflag=direct status=none || { echo "the image does not read"; return 1; }
	! ls "$R/lib/modules/$REL/updates/dkms/blksnap.ko"* 2>/dev/null || { echo "the module file is still there"; return 1; }
}
case_fn "apt-get remove blksnap-rs-dkms with a snapshot held: removed, the module stays loaded, the snapshot works" \
	remove_held
busy_ok() {
	local out
	out=$(rmmod blksnap 2>&1) && { echo "rmmod unloaded the module in use"; return 1; }
	echo "$out"
	grep -q 'in use' <<<"$out" && blksnap_loaded
}
case_fn "unloading the module in use refuses (rmmod: in use, EBUSY)" busy_ok
release_ok() {
	r blksnap snapshot_destroy -i "$SID" && rmmod blksnap && ! blksnap_loaded
}
exec 4<&-
case_fn "released (image closed, snapshot destroyed), the module unloads" release_ok

tools_ok() {
	r apt-get remove -y blksnap-tools >/tmp/rm.out 2>&1 || { cat /tmp/rm.out; return 1; }
	! r dpkg-query -W -f '${Status}\n' blksnap-rs-dkms blksnap-tools 2>/dev/null | grep -q ' installed$'
}
case_fn "apt-get remove blksnap-tools; neither package is installed any more" tools_ok

# ---- nothing left
left_files() {
	local list path left=()
	for list in "$FILES"/files-*.txt; do
		while IFS= read -r path; do
			# Directories shared with other packages stay (dpkg keeps what
			# is not empty); ours must go.
			[ -d "$R$path" ] && [ ! -L "$R$path" ] && case $path in
			/usr/src/blksnap-rs-* | /usr/share/doc/blksnap-*) ;;
			*) continue ;;
			esac
			[ -e "$R$path" ] || [ -L "$R$path" ] && left+=("$path")
		done <"$list"
	done
	for path in /var/lib/dkms/blksnap-rs /var/lib/blksnap-rs /lib/modules/"$REL"/updates/dkms/blksnap.ko*; do
		[ -e "$R$path" ] && left+=("$path")
	done
	((${#left[@]} == 0)) || { printf 'left: %s\n' "${left[@]}"; return 1; }
	echo "$(cat "$FILES"/files-*.txt | wc -l) paths checked"
}
case_fn "no file of either package is left (dpkg -L before), nor DKMS's tree, the prepared kernel or the module" \
	left_files
dkms_ok() {
	local out
	out=$(r dkms status 2>&1)
	[ -z "$out" ] || { echo "dkms status: $out"; return 1; }
}
case_fn "dkms status lists nothing" dkms_ok
check "the kernel log has no blksnap error" sh -c '! dmesg | grep -iE "blksnap.*(error|fail|bug)" | grep -v "module verification failed"'
rmmod brd 2>/dev/null
ktap_finish
