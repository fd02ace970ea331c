#!/usr/bin/env bash
# The header's call patterns as existing user space makes them: a C program
# (tests/tools/uapi_patterns.c) compiled here with the host's gcc against
# include/uapi/linux/blk_snap.h alone drives every pattern the header
# documents or implies on ramdisks (two-call collections with NULL, too
# small, exact and larger arrays; zero counts; WAIT_EVENT timeouts, signals
# and the first event; READ_CBT_MAP's byte count; MARK_DIRTY_BLOCKS ranges;
# TAKE, DESTROY and COLLECT_IMAGES in each state; overflow), one case each.
# Also: zram with the lz4 backend, as users' kernels have it.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cbt-lib.sh"
require_vm

PROG=/tmp/uapi_patterns
SRC=$TESTS_DIR/tools/uapi_patterns.c
RD_KIB=32768 # four 32 MiB ramdisks: three originals and the storage

build_out=$(gcc -Wall -Werror -I "$BLKSNAP_ROOT/include/uapi" -o "$PROG" "$SRC" 2>&1) &&
	build_rc=0 || build_rc=$?
c_cases=0
[ "$build_rc" = 0 ] && c_cases=$("$PROG" --count)

ktap_plan $((3 + c_cases))

if [ "$build_rc" = 0 ]; then
	ktap_ok "the C program builds with gcc -Wall -Werror against include/uapi/linux/blk_snap.h"
else
	ktap_fail "the C program builds with gcc -Wall -Werror against include/uapi/linux/blk_snap.h" \
		"$(tail -n 30 <<<"$build_out")"
fi

# zram with the lz4 backend (CONFIG_ZRAM_BACKEND_LZ4).
zram_lz4() {
	local dev alg orig compr rc=0
	[ ! -e /sys/module/zram ] || rmmod zram || return 1
	modprobe zram num_devices=1 || { echo "modprobe zram failed"; return 1; }
	dev=$(zramctl --find --size 16M --algorithm lz4) || { rmmod zram; return 1; }
	alg=$(cat "/sys/block/${dev#/dev/}/comp_algorithm")
	echo "note: $dev: comp_algorithm: $alg"
	[[ $alg == *"[lz4]"* ]] || { echo "lz4 is not the selected algorithm"; rc=1; }
	# Text (compressible, and no page of one repeated byte, which zram
	# would keep without compressing), written through to the device.
	seq 1000000 | head -c 1M >/tmp/zram-data
	dd if=/tmp/zram-data of="$dev" bs=64k oflag=direct status=none ||
		{ echo "write to $dev failed"; rc=1; }
	cmp -n 1048576 /tmp/zram-data "$dev" || { echo "$dev: the data read back differs"; rc=1; }
	rm -f /tmp/zram-data
	# mm_stat: orig_data_size compr_data_size ...
	read -r orig compr _ <"/sys/block/${dev#/dev/}/mm_stat"
	echo "note: 1 MiB of text stored in $compr bytes"
	((orig > 0 && compr > 0 && compr < orig)) ||
		{ echo "not compressed: orig_data_size $orig compr_data_size $compr"; rc=1; }
	zramctl --reset "$dev" && rmmod zram || { echo "zram reset or unload failed"; rc=1; }
	return $rc
}
case_fn "zramctl --algorithm lz4 sets up a zram device that compresses with lz4" zram_lz4

cbt_start
ram_setup 4 $RD_KIB

# The program's cases, numbered on from here, count as this script's.
if [ "$build_rc" = 0 ]; then
	while IFS= read -r line; do
		echo "$line"
		if [[ $line =~ ^ok\ [0-9]+ ]]; then
			KTAP_N=$((KTAP_N + 1)) KTAP_PASS=$((KTAP_PASS + 1))
		elif [[ $line =~ ^not\ ok\ [0-9]+ ]]; then
			KTAP_N=$((KTAP_N + 1)) KTAP_FAIL=$((KTAP_FAIL + 1))
		fi
	done < <("$PROG" --first $((KTAP_N + 1)) /dev/ram0 /dev/ram1 /dev/ram2 /dev/ram3 2>&1)
fi
while ((KTAP_N < 2 + c_cases)); do
	ktap_fail "not run: the C program stopped early"
done

blksnap_clear
unload_case "the module unloads afterwards"
rm -f "$PROG"
ktap_finish
