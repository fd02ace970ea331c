#!/usr/bin/env bash
# Races between control operations and I/O, each repeated in rounds and
# checked sector by sector (tests/tools/race.py and stamp.py):
#   1. SNAPSHOT_DESTROY while writers make the first writes to every chunk
#      (copy-on-write in flight) and the image is read;
#   2. TAKE of one snapshot of three ramdisks while all three are written
#      (each image one point in time across the three);
#   3. image reads of a chunk at the same moment as its first write;
#   4. TRACKER_REMOVE while the device is written, tracking re-added by
#      SNAPSHOT_CREATE;
#   5. delete_module while a taken snapshot's originals are written, with
#      /dev/blksnap closed (refused while an image is open), module reloaded.
# Every write must succeed and every original must hold exactly what was
# written; image reads that succeed must return the data at TAKE; nothing
# may hang; the module must unload at the end with no kernel report.
# BLKSNAP_RACE_ROUNDS (default 8) scales the number of rounds of each race.
# shellcheck source-path=SCRIPTDIR disable=SC2015,SC2119 # "test && test || fail" is meant
source "$(dirname "$0")/../cow-lib.sh"
require_vm

R=${BLKSNAP_RACE_ROUNDS:-8}
[[ $R =~ ^[1-9][0-9]*$ ]] || R=8
R1=$R                          # DESTROY vs copy-on-write
R2=$(((R + 2) / 3))            # TAKE during writes on three devices (a stamp.py run each)
R3=$(((R + 1) / 2))            # image reads vs first writes
R4=$((3 * R))                  # TRACKER_REMOVE vs I/O
R5=$R                          # rmmod vs I/O (a module unload and load each)
PARAMS=(chunk_minimum_shift=15) # 32 KiB chunks: 128 on each 4 MiB ramdisk

# What stamp_case shows of a passing case: the summary lines of the tools.
CASE_SUMMARY='destroy-cow:|read-vs-cow:|remove-io:|rmmod-io:|take-multi:|^run [0-9]+: point in time'
CASE_TAIL=30

ktap_plan 8

cbt_start
RD_KIB=4096 # 8192 sectors each
ram_setup 6 $RD_KIB "${PARAMS[@]}"
ktap_diag "rounds: $R1 DESTROY, $R2 TAKE, $R3 image-read, $R4 TRACKER_REMOVE, $R5 rmmod (BLKSNAP_RACE_ROUNDS=$R)"
MARK=$(kmsg_mark)

race() { "${PYTHON_FAST[@]}" "$TESTS_DIR/tools/race.py" "$@"; }
# Storage for every chunk of three ramdisks.
STORAGE=(--storage /dev/ram3:0:8192 --storage /dev/ram4:0:8192 --storage /dev/ram5:0:8192)

# ---- 1. DESTROY while copy-on-write is in flight
stamp_case "DESTROY during first writes to every chunk ($R1 rounds): returns 0, writes finish, originals exact" \
	race destroy-cow --dev /dev/ram0 --dev /dev/ram1 "${STORAGE[@]}" --writers 4 \
	--rounds "$R1" --seed 1

# ---- 2. TAKE while three devices are written
take_multi() {
	local i n rc=0 out line flight=0
	for ((i = 0; i < R2; i++)); do
		out=$(stamp run --dev /dev/ram0 --dev /dev/ram1 --dev /dev/ram2 "${STORAGE[@]}" \
			--no-storage-fill --writers 4 --writes 400 --seconds 3 \
			--take-during-writes "0.$((3 + i % 7))" --seed $((200 + i)) 2>&1) ||
			{ rc=1; echo "---- run $i failed:"; echo "$out"; break; }
		grep -q 'point in time checked' <<<"$out" || { rc=1; echo "run $i: no point-in-time check"; echo "$out"; break; }
		line=$(grep -h 'point in time checked' <<<"$out" | sed -E 's/^\[ *[0-9.]+\] //')
		((i >= 3)) || echo "run $i: $line"
		n=$(sed -n 's/.* \([0-9]*\) of them still running.*/\1/p' <<<"$line")
		flight=$((flight + ${n:-0}))
	done
	echo "take-multi: $i of $R2 runs checked, $flight writes in flight at TAKE in all"
	return $rc
}
stamp_case "TAKE of three ramdisks while all are written ($R2 runs): each image one point in time" take_multi

# ---- 3. image reads vs first writes of the same chunk
stamp_case "image reads racing first writes of the same chunks ($R3 rounds): TAKE data, originals newest" \
	race read-vs-cow --dev /dev/ram0 --dev /dev/ram1 "${STORAGE[@]}" --pairs 3 \
	--rounds "$R3" --seed 3

# ---- 4. TRACKER_REMOVE vs I/O
stamp_case "TRACKER_REMOVE while the device is written ($R4 rounds): writes intact, CREATE re-adds tracking" \
	race remove-io --dev /dev/ram2 --storage /dev/ram3:0:8192 --writers 3 \
	--rounds "$R4" --seed 4

# ---- 5. rmmod vs I/O
stamp_case "rmmod during writes to a taken snapshot ($R5 rounds): ok or EBUSY, writes never lost" \
	race rmmod-io --dev /dev/ram0 --dev /dev/ram1 "${STORAGE[@]}" --writers 4 \
	--ko "$BLKSNAP_KO" "${PARAMS[@]/#/--param=}" --rounds "$R5" --seed 5

# ---- afterwards: a fresh load works and has nothing left over
fresh() {
	local out
	if ! blksnap_loaded; then
		insmod "$BLKSNAP_KO" "${PARAMS[@]}" && wait_for "$BLKSNAP_DEV" 5 || { echo "insmod failed"; return 1; }
	fi
	out=$(bs trackers --null) && grep -qx count=0 <<<"$out" || { echo "trackers after reload: $out"; return 1; }
	out=$(bs collect --null 2>&1)
	grep -qx count=0 <<<"$out" || { echo "snapshots after reload: $out"; return 1; }
	id=$(snap_id "$(bs create /dev/ram0 /dev/ram1)") && [ -n "$id" ] || { echo "CREATE failed"; return 1; }
	bs take "$id" && bs destroy "$id" || { echo "TAKE/DESTROY failed"; return 1; }
}
case_fn "after the races: the module loads fresh, no tracker or snapshot left, CREATE/TAKE/DESTROY work" fresh

reports() {
	local bad
	bad=$(kmsg_since "$MARK" | grep -E 'BUG|WARNING|Oops|KASAN|UBSAN|lockdep|circular locking|blocked for more|soft lockup|rcu.*stall|general protection' | head -n 20)
	[ -z "$bad" ] || { echo "$bad"; return 1; }
}
case_fn "no kernel report (BUG, WARNING, KASAN, lockdep, hung task) during the races" reports

blksnap_clear
unload_case "the module unloads after the races"
ktap_finish
