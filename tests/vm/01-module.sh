#!/usr/bin/env bash
# The module's life cycle: load and unload, the control device node, the
# module parameters and their validation (at load time and through sysfs).
# shellcheck source-path=SCRIPTDIR disable=SC2119 # require_built takes no arguments here
source "$(dirname "$0")/../lib.sh"
require_vm

PARAMS=(
	tracking_block_minimum_shift=16
	tracking_block_maximum_shift=26
	tracking_block_maximum_count=2097152
	chunk_minimum_shift=18
	chunk_maximum_shift=26
	chunk_maximum_count=2097152
	chunk_maximum_in_cache=32
	free_diff_buffer_pool_size=128
	diff_storage_minimum=2097152
)
# Load-time parameter strings the module must refuse, with the parameter
# names one of which the kernel log line has to mention.
BAD_LOADS=(
	"chunk_minimum_shift=3|chunk_minimum_shift"
	"tracking_block_maximum_count=0|tracking_block_maximum_count"
	"chunk_maximum_in_cache=many|chunk_maximum_in_cache"
	"chunk_maximum_count=-1|chunk_maximum_count"
	"chunk_maximum_shift=64|chunk_maximum_shift"
	"tracking_block_minimum_shift=20 tracking_block_maximum_shift=18|tracking_block_minimum_shift tracking_block_maximum_shift"
	"chunk_minimum_shift=22 chunk_maximum_shift=20|chunk_minimum_shift chunk_maximum_shift"
)
# Values a sysfs write must refuse (parameter|value).
BAD_WRITES=(
	"chunk_minimum_shift|3"
	"tracking_block_maximum_count|0"
	"chunk_maximum_in_cache|many"
	"chunk_maximum_count|-1"
)
CYCLES=20

ktap_plan $((1 + 2 + 2 + ${#PARAMS[@]} + ${#BAD_LOADS[@]} + ${#BAD_WRITES[@]} + 2))

require_built
if blksnap_loaded; then
	ktap_diag "blksnap was loaded before the test; unloading it"
	rmmod blksnap
fi

# 1: built for the running kernel: its vermagic is the running kernel's, as
# a module the kernel's own build made has it.
vermagic=$(modinfo -F vermagic "$BLKSNAP_KO" 2>&1)
want=$(modinfo -F vermagic brd 2>&1)
if [ -n "$want" ] && [ "$vermagic" = "$want" ] && [ "${vermagic%% *}" = "$(uname -r)" ]; then
	ktap_ok "vermagic is the running kernel's ($vermagic)"
else
	ktap_fail "vermagic is the running kernel's" "blksnap.ko: '$vermagic'; brd.ko: '$want'; uname -r: $(uname -r)"
fi

# 2-3: load/unload cycles.
load_bad="" unload_bad=""
for ((c = 1; c <= CYCLES; c++)); do
	if ! out=$(insmod "$BLKSNAP_KO" 2>&1); then
		load_bad+="cycle $c: insmod failed: $out"$'\n'
		break
	fi
	[ -c "$BLKSNAP_DEV" ] || load_bad+="cycle $c: no $BLKSNAP_DEV after insmod"$'\n'
	[ -d /sys/module/blksnap ] || load_bad+="cycle $c: no /sys/module/blksnap after insmod"$'\n'
	if ! out=$(rmmod blksnap 2>&1); then
		unload_bad+="cycle $c: rmmod failed: $out"$'\n'
		break
	fi
	[ ! -e "$BLKSNAP_DEV" ] || unload_bad+="cycle $c: $BLKSNAP_DEV still exists after rmmod"$'\n'
	[ ! -e /sys/module/blksnap ] || unload_bad+="cycle $c: /sys/module/blksnap still exists after rmmod"$'\n'
done
if [ -z "$load_bad" ]; then
	ktap_ok "each of $CYCLES loads creates $BLKSNAP_DEV and /sys/module/blksnap"
else
	ktap_fail "each of $CYCLES loads creates $BLKSNAP_DEV and /sys/module/blksnap" "$load_bad"
fi
if [ -z "$unload_bad$load_bad" ]; then
	ktap_ok "each of $CYCLES unloads removes $BLKSNAP_DEV and /sys/module/blksnap"
else
	ktap_fail "each of $CYCLES unloads removes $BLKSNAP_DEV and /sys/module/blksnap" "${unload_bad:-not reached}"
fi
blksnap_unload

insmod_or_finish

# 4-5: the control device.
misc_dev=$(cat /sys/class/misc/blksnap/dev 2>/dev/null)
node_dev=$(stat -c '%t:%T' "$BLKSNAP_DEV" 2>/dev/null)
node_dev=$(printf '%d:%d' "0x${node_dev%%:*}" "0x${node_dev##*:}" 2>/dev/null)
if [ -c "$BLKSNAP_DEV" ] && [ "${misc_dev%%:*}" = 10 ] && [ "$misc_dev" = "$node_dev" ]; then
	ktap_ok "$BLKSNAP_DEV is the misc character device $misc_dev"
else
	ktap_fail "$BLKSNAP_DEV is the misc character device 10:N" \
		"node: $(ls -l "$BLKSNAP_DEV" 2>&1)" "sysfs misc dev: ${misc_dev:-none}"
fi
mode=$(stat -c '%A %U %G' "$BLKSNAP_DEV" 2>&1)
if [ "$mode" = "crw------- root root" ]; then
	ktap_ok "$BLKSNAP_DEV has mode 0600 and belongs to root"
else
	ktap_fail "$BLKSNAP_DEV has mode 0600 and belongs to root" "got: $mode"
fi

# 6..: the parameters and their defaults.
for pv in "${PARAMS[@]}"; do
	p=${pv%%=*} want=${pv#*=}
	f=/sys/module/blksnap/parameters/$p
	got=$(cat "$f" 2>&1) perm=$(stat -c '%a' "$f" 2>&1)
	if [ "$got" = "$want" ] && [ "$perm" = 644 ]; then
		ktap_ok "parameter $p defaults to $want, mode 0644"
	else
		ktap_fail "parameter $p defaults to $want, mode 0644" "value: $got" "mode: $perm"
	fi
done
blksnap_unload || ktap_diag "rmmod failed"

# Refused loads: EINVAL, a kernel log line, nothing left behind, and the
# next plain load works.
for bad in "${BAD_LOADS[@]}"; do
	params=${bad%%|*} names=${bad#*|}
	desc="insmod with '$params' is refused with EINVAL and leaves nothing behind"
	problems=()
	mark=$(kmsg_mark)
	out=$(kcall finit_module "$BLKSNAP_KO" "$params" 2>&1) && rc=0 || rc=$?
	if [ "$rc" != 1 ] || ! grep -qx 'errno=EINVAL' <<<"$out"; then
		problems+=("finit_module: exit $rc: $out")
	fi
	[ ! -e /sys/module/blksnap ] || problems+=("/sys/module/blksnap exists")
	[ ! -e "$BLKSNAP_DEV" ] || problems+=("$BLKSNAP_DEV exists")
	klog=$(kmsg_since "$mark")
	mentioned=
	for n in $names; do
		grep -q "$n" <<<"$klog" && mentioned=1
	done
	[ -n "$mentioned" ] || problems+=("no kernel log line names $names; new log: ${klog:-nothing}")
	blksnap_unload 2>/dev/null
	if out=$(insmod "$BLKSNAP_KO" 2>&1); then
		[ -c "$BLKSNAP_DEV" ] || problems+=("the following plain insmod made no $BLKSNAP_DEV")
		blksnap_unload || problems+=("rmmod after the plain insmod failed")
	else
		problems+=("the following plain insmod failed: $out")
	fi
	if ((${#problems[@]} == 0)); then
		ktap_ok "$desc"
	else
		ktap_fail "$desc" "${problems[@]}"
	fi
done

insmod_or_finish

# Refused sysfs writes keep the old value.
for bad in "${BAD_WRITES[@]}"; do
	p=${bad%%|*} v=${bad#*|}
	f=/sys/module/blksnap/parameters/$p
	desc="writing '$v' to parameter $p is refused and the value stays"
	before=$(cat "$f" 2>&1)
	out=$(kcall write "$f" "$v" 2>&1) && rc=0 || rc=$?
	after=$(cat "$f" 2>&1)
	if [ "$rc" = 1 ] && grep -qx 'errno=EINVAL' <<<"$out" && [ "$after" = "$before" ]; then
		ktap_ok "$desc"
	else
		ktap_fail "$desc" "write: exit $rc: $out" "value before: $before, after: $after"
	fi
done

# An in-range write (the current value) is accepted.
f=/sys/module/blksnap/parameters/chunk_maximum_in_cache
out=$(kcall write "$f" 32 2>&1) && rc=0 || rc=$?
after=$(cat "$f" 2>&1)
if [ "$rc" = 0 ] && [ "$after" = 32 ]; then
	ktap_ok "writing an in-range value to a parameter is accepted"
else
	ktap_fail "writing an in-range value to a parameter is accepted" "write: exit $rc: $out" "value: $after"
fi

out=$(rmmod blksnap 2>&1) && rc=0 || rc=$?
if [ "$rc" = 0 ] && ! blksnap_loaded && [ ! -e "$BLKSNAP_DEV" ]; then
	ktap_ok "the module unloads after the parameter tests"
else
	ktap_fail "the module unloads after the parameter tests" "rmmod: exit $rc: $out"
fi
ktap_finish
