#!/usr/bin/env bash
# Boots the test kernel under QEMU (TCG) and runs one command in it.
#
#   scripts/vm.sh [--debug] [--timeout SECONDS] [--out DIR] [--disk FILE]...
#                 [--tcg single|multi] [--icount SHIFT] [--share DIR]
#                 [-e NAME=VALUE]...
#                 [--] COMMAND...
#
# The guest's root file system is the host's own root, shared read-only over
# virtio-9p, so the command sees this checkout, the kernel tree and the host's
# tools at the same paths. scripts/guest-init.sh is PID 1: it mounts the
# writable places (/tmp, /run, /root, ...), runs COMMAND from the top of the
# checkout with stdin from /dev/null, and powers off.
#
# The command's stdout and stderr arrive live on this script's stdout (second
# serial port). The kernel console (first serial port) goes to a log file that
# is watched during the run and scanned afterwards for kernel reports (panic,
# BUG, WARNING, KASAN, lockdep, hung task, soft lockup, RCU stall, kmemleak).
#
# Options:
#   --debug            boot the debug kernel (same as BLKSNAP_DEBUG=1)
#   --timeout SECONDS  hard limit for the whole run (default $BLKSNAP_VM_TIMEOUT or 1200)
#   --out DIR          use DIR as the guest's writable output share and keep it
#                      (the guest sees it as $BLKSNAP_VM_OUT); default: a temporary dir
#   --disk FILE        attach FILE (raw image) as a virtio disk; the guest sees
#                      the disks as /dev/vda, /dev/vdb, ... in the order given
#   --disk-limit IOPS,MIBPS  throttle each --disk to IOPS I/Os and MIBPS MiB per
#                      second, reads and writes together (QEMU's throttling: a
#                      device with a provisioned rate, like a cloud volume)
#   --tcg single|multi how QEMU runs the two virtual CPUs (default
#                      $BLKSNAP_VM_TCG or single): "single" interleaves them
#                      on one host thread, "multi" gives each its own. With
#                      "multi", QEMU 7.2 sometimes runs a stale int3 after the
#                      guest kernel patched live code (ftrace, static keys), and
#                      the guest dies with "Oops: int3"; the stock function
#                      tracer toggled during direct writes does it within
#                      seconds, with no module loaded. "single" never has.
#                      Benchmarks use "multi" for parallel throughput.
#   --icount SHIFT     count instructions (QEMU -icount shift=SHIFT,sleep=off):
#                      the guest's clock advances 2^SHIFT ns per instruction
#                      executed, and jumps ahead while every vCPU is idle, so
#                      guest timings measure the CPU work done, the same from
#                      run to run whatever the host is doing. The vCPUs then
#                      take turns on one host thread (implies --tcg single).
#                      For benchmarks of CPU-bound paths.
#   --share DIR        share DIR writable with the guest, at the same path
#                      (the rest of the host's root stays read-only), e.g.
#                      a Debian root whose packages the command removes
#   -e NAME=VALUE      pass an environment variable to the command
#
# Environment: KDIR (kernel build tree, or a directory laid out like one by
# scripts/debian-kernel.sh; default: the output of scripts/kernel.sh),
# BLKSNAP_DEBUG, BLKSNAP_VM_TIMEOUT, BLKSNAP_VM_IGNORE (extended regex: console
# lines matching it are not treated as kernel reports). Variables named
# BLKSNAP_*, CI, RUST_BACKTRACE and RUST_LOG are passed to the command.
#
# Exit status: the command's exit status when the VM powered off normally and
# the kernel log is clean; otherwise
#   124  the run hit the timeout
#   125  the kernel log has a report (panic, oops, warning, ...)
#   126  the VM stopped without reporting the command's exit status
# The console log is kept in target/vm-logs/ (the path is printed).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

readonly EXIT_TIMEOUT=124 EXIT_REPORT=125 EXIT_NOSTATUS=126

# What counts as a kernel report in the console log (grep -E).
REPORT_PATTERNS=(
	'Kernel panic'
	'BUG:'
	'kernel BUG at'
	'BUG [^ ]+ \((Not t|T)ainted'
	'Oops'
	'WARNING:'
	'KASAN:'
	'UBSAN:'
	'possible circular locking'
	'possible recursive locking'
	'inconsistent lock state'
	'INFO: task .* blocked'
	'soft lockup'
	'hard LOCKUP'
	'rcu.*detected stall'
	'rcu.*kthread starved'
	'unreferenced object'
	'kmemleak: .* new suspected memory leaks'
	'general protection fault'
	'sleeping function called from invalid context'
)
report_re=$(IFS='|'; echo "${REPORT_PATTERNS[*]}")

usage() {
	sed -n '2,/^# shellcheck source-path/{/^# shellcheck/d;s/^# \{0,1\}//;p}' "$0" >&2
	exit 2
}

timeout=${BLKSNAP_VM_TIMEOUT:-1200}
tcg_thread=${BLKSNAP_VM_TCG:-single}
icount=
keep_out=
share=
extra_env=()
disks=() disk_opts=
while (($#)); do
	case $1 in
	--debug) BLKSNAP_DEBUG=1; export BLKSNAP_DEBUG ;;
	--timeout) (($# >= 2)) || usage; timeout=$2; shift ;;
	--timeout=*) timeout=${1#*=} ;;
	--out) (($# >= 2)) || usage; keep_out=$2; shift ;;
	--out=*) keep_out=${1#*=} ;;
	--disk) (($# >= 2)) || usage; disks+=("$2"); shift ;;
	--disk=*) disks+=("${1#*=}") ;;
	--disk-limit) (($# >= 2)) || usage
		[[ $2 =~ ^([1-9][0-9]*),([1-9][0-9]*)$ ]] || die "--disk-limit wants IOPS,MIBPS, got '$2'"
		disk_opts=",throttling.iops-total=${BASH_REMATCH[1]},throttling.bps-total=$((BASH_REMATCH[2] << 20))"
		shift ;;
	--share) (($# >= 2)) || usage; share=$2; shift ;;
	--share=*) share=${1#*=} ;;
	-e) (($# >= 2)) || usage; extra_env+=("$2"); shift ;;
	--tcg) (($# >= 2)) || usage; tcg_thread=$2; shift ;;
	--tcg=*) tcg_thread=${1#*=} ;;
	--icount) (($# >= 2)) || usage; icount=$2; shift ;;
	--icount=*) icount=${1#*=} ;;
	-h | --help) usage ;;
	--) shift; break ;;
	-*) echo "vm.sh: unknown option $1" >&2; usage ;;
	*) break ;;
	esac
	shift
done
(($#)) || usage
if ! [[ $timeout =~ ^[0-9]+$ ]] || ((timeout == 0)); then
	die "--timeout wants a positive number of seconds"
fi
case $tcg_thread in
single | multi) ;;
*) die "--tcg wants single or multi, got '$tcg_thread'" ;;
esac
if [ -n "$icount" ]; then
	[[ $icount =~ ^[0-9]$ ]] || die "--icount wants a shift from 0 to 9, got '$icount'"
	tcg_thread=single
fi
for e in "${extra_env[@]}"; do
	[[ $e =~ ^[A-Za-z_][A-Za-z0-9_]*= ]] || die "-e wants NAME=VALUE, got '$e'"
done

command -v qemu-system-x86_64 >/dev/null || die "qemu-system-x86_64 is missing (run scripts/deps.sh)"
if [ -z "${KDIR:-}" ]; then
	KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh") || die "no test kernel"
fi
KDIR=$(cd "$KDIR" && pwd)
export KDIR
bzimage=$KDIR/arch/x86/boot/bzImage
[ -f "$bzimage" ] || die "no kernel image at $bzimage"
[ -d "$KDIR/modroot/lib/modules" ] || die "no installed modules in $KDIR/modroot"
if [ -n "$share" ]; then
	[ -d "$share" ] || die "--share: no such directory: $share"
	share=$(cd "$share" && pwd)
	case $share in *,*) die "--share: the path must not contain a comma: $share" ;; esac
fi
case "$BLKSNAP_ROOT$KDIR$share" in
*[[:space:]]*) die "the checkout and kernel paths must not contain white space (they go on the kernel command line)" ;;
esac

# Per-run files: the output share (command, environment, exit status) and the logs.
logdir=$BLKSNAP_ROOT/target/vm-logs
mkdir -p "$logdir"
stamp=$(date +%Y%m%d-%H%M%S)-$$
console=$logdir/$stamp-console.log
qemu_log=$logdir/$stamp-qemu.log
if [ -n "$keep_out" ]; then
	mkdir -p "$keep_out"
	out=$(cd "$keep_out" && pwd)
	rm -f "$out/status" "$out/booted" "$out/env.sh" "$out/cmd.sh"
else
	out=$(mktemp -d "${TMPDIR:-/tmp}/blksnap-vm.XXXXXX")
fi
: >"$console"
ln -sfn "$(basename "$console")" "$logdir/latest-console.log"
# Keep the newest 100 runs' logs, and anything from the last 3 hours (a run
# still going on elsewhere may be quiet for a while).
# shellcheck disable=SC2012
ls -1t "$logdir"/*-console.log 2>/dev/null | tail -n +101 | while IFS= read -r old; do
	if [ -n "$(find "$old" -mmin +180)" ]; then
		rm -f "$old" "${old%-console.log}-qemu.log"
	fi
done

qpid=
# shellcheck disable=SC2317 # called from the EXIT trap
cleanup() {
	if [ -n "$qpid" ] && kill -0 "$qpid" 2>/dev/null; then
		kill -TERM "$qpid" 2>/dev/null || true
		sleep 1
		kill -KILL "$qpid" 2>/dev/null || true
	fi
	[ -n "$keep_out" ] || rm -rf "$out"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

# POSIX shell quoting, for the files guest-init.sh reads with /bin/sh.
shq() { printf "'%s'" "${1//\'/\'\\\'\'}"; }
{
	for name in $(compgen -e | grep -E '^(BLKSNAP_[A-Z0-9_]*|CI|RUST_BACKTRACE|RUST_LOG)$' | sort); do
		printf 'export %s=%s\n' "$name" "$(shq "${!name}")"
	done
	printf 'export KDIR=%s\n' "$(shq "$KDIR")"
	[ -z "$share" ] || printf 'export BLKSNAP_VM_SHARE=%s\n' "$(shq "$share")"
	for e in "${extra_env[@]}"; do
		printf 'export %s=%s\n' "${e%%=*}" "$(shq "${e#*=}")"
	done
} >"$out/env.sh"
{
	printf 'cd %s || exit 127\n' "$(shq "$BLKSNAP_ROOT")"
	printf 'exec'
	for a in "$@"; do printf ' %s' "$(shq "$a")"; done
	printf '\n'
} >"$out/cmd.sh"

# shellcheck disable=SC2054 # commas belong to the option values
cmdline=(
	console=ttyS0
	root=blksnap-root rootfstype=9p
	rootflags=trans=virtio,version=9p2000.L,cache=loose,msize=262144 ro
	"init=$BLKSNAP_ROOT/scripts/guest-init.sh"
	panic=-1 oops=panic softlockup_panic=1 hung_task_panic=1
	sysctl.kernel.hung_task_timeout_secs=60
	# Emulated CPUs on a busy host can be starved for a while: no false
	# RCU stall reports before a minute.
	rcupdate.rcu_cpu_stall_timeout=60
	mitigations=off
	# -cpu max offers 5-level paging; KASAN's early shadow under it reports
	# a wild access in the first interrupts at boot. 4 levels are plenty.
	no5lvl
)
[ "$BLKSNAP_DEBUG" = 1 ] && cmdline+=(kasan.fault=report)

# shellcheck disable=SC2054
qemu=(
	qemu-system-x86_64 -accel "tcg,thread=$tcg_thread" -cpu max -smp 2 -m 2G -no-reboot
	-nodefaults -no-user-config -display none -monitor none
	-kernel "$bzimage" -append "${cmdline[*]}"
	-fsdev local,id=root,path=/,security_model=none,readonly=on,multidevs=remap
	-device virtio-9p-pci,fsdev=root,mount_tag=blksnap-root
	-fsdev "local,id=out,path=$out,security_model=none,multidevs=remap"
	-device virtio-9p-pci,fsdev=out,mount_tag=blksnap-out
	-serial "file:$console"
	-chardev stdio,id=cmdout,signal=off -serial chardev:cmdout
)

[ -n "$icount" ] && qemu+=(-icount "shift=$icount,sleep=off")
if [ -n "$share" ]; then
	# shellcheck disable=SC2054
	qemu+=(-fsdev "local,id=share,path=$share,security_model=none,multidevs=remap"
		-device virtio-9p-pci,fsdev=share,mount_tag=blksnap-share)
fi
# A distribution kernel loads its 9p support from an initramfs
# (scripts/debian-kernel.sh makes one); a kernel built here has it built in.
[ -f "$KDIR/initrd.img" ] && qemu+=(-initrd "$KDIR/initrd.img")

for d in "${disks[@]}"; do
	[ -f "$d" ] || die "--disk: no such file: $d"
	case $d in *,*) die "--disk: the path must not contain a comma: $d" ;; esac
	# The host's page cache stays out of the way (cache=none), so the disk is
	# as slow as the file under it.
	qemu+=(-drive "file=$d,format=raw,if=virtio,cache=none,aio=threads$disk_opts")
done

log "vm: booting $(basename "$KDIR") (timeout ${timeout}s), console log: $console"
start=$SECONDS
# QEMU dies with this script, even if it is killed with SIGKILL.
setpriv --pdeathsig KILL -- "${qemu[@]}" </dev/null 2>"$qemu_log" &
qpid=$!

# Scans the console log; prints the matching lines (with line numbers).
reports() {
	local hits
	# guest-init.sh's own lines ("guest-init: ...") are never reports.
	hits=$(grep -naE "$report_re" "$console" | grep -vE '^[0-9]+:guest-init: ' || true)
	if [ -n "${BLKSNAP_VM_IGNORE:-}" ] && [ -n "$hits" ]; then
		hits=$(grep -vE "$BLKSNAP_VM_IGNORE" <<<"$hits" || true)
	fi
	[ -z "$hits" ] || printf '%s\n' "$hits"
}

reason=
report_at='' last_size=-1 still=0 booted_at=''
while kill -0 "$qpid" 2>/dev/null; do
	sleep 0.5
	if [ -z "$booted_at" ] && [ -e "$out/booted" ]; then
		booted_at=$((SECONDS - start))
	fi
	if [ -z "$report_at" ] && [ -n "$(reports | head -n1)" ]; then
		report_at=$SECONDS
		log "vm: kernel report in the console log, stopping the VM shortly"
	fi
	if [ -n "$report_at" ]; then
		# Let the report finish: stop once the log has been quiet for 3 s
		# (at most 20 s after the first line).
		size=$(stat -c %s "$console")
		if [ "$size" = "$last_size" ]; then still=$((still + 1)); else still=0; fi
		last_size=$size
		if ((still >= 6 || SECONDS - report_at >= 20)); then
			reason=report
			break
		fi
	fi
	if ((SECONDS - start >= timeout)); then
		reason=timeout
		break
	fi
done
if [ -n "$reason" ]; then
	kill -TERM "$qpid" 2>/dev/null || true
	for _ in 1 2 3 4 5 6 7 8 9 10; do
		kill -0 "$qpid" 2>/dev/null || break
		sleep 0.5
	done
	kill -KILL "$qpid" 2>/dev/null || true
fi
qrc=0
wait "$qpid" || qrc=$?
qpid=
elapsed=$((SECONDS - start))

status=
if [ -s "$out/status" ]; then
	status=$(tr -dc '0-9' <"$out/status")
fi
hits=$(reports)
[ -z "$hits" ] || reason=report
if [ ! -f "$console" ]; then
	log "vm: FAILED: the console log $console disappeared"
	exit $EXIT_NOSTATUS
fi

excerpt() {
	local first from to total
	first=$(head -n1 <<<"$hits" | cut -d: -f1)
	from=$((first > 10 ? first - 10 : 1)) to=$((first + 80))
	total=$(wc -l <"$console")
	echo "---- kernel report (console log lines $from-$to) ----"
	sed -n "${from},${to}p" "$console"
	echo "---- all report lines ----"
	head -n 40 <<<"$hits"
	# The end of the log, unless the excerpt showed it already.
	if ((total > to)); then
		tail_log $((total - to < 50 ? total - to : 50))
	else
		echo "----"
	fi
}
tail_log() {
	echo "---- last ${1:-50} lines of the console log ----"
	tail -n "${1:-50}" "$console"
	echo "----"
}

case $reason in
report)
	excerpt >&2
	log "vm: FAILED: the kernel reported a problem (after ${elapsed}s); full log: $console"
	exit $EXIT_REPORT
	;;
timeout)
	tail_log >&2
	log "vm: FAILED: timeout after ${timeout}s; QEMU killed; full log: $console"
	exit $EXIT_TIMEOUT
	;;
esac
if [ -z "$status" ]; then
	{
		tail_log
		if [ -s "$qemu_log" ]; then
			echo "---- QEMU (exit status $qrc) ----"
			tail -n 20 "$qemu_log"
		fi
	} >&2
	log "vm: FAILED: the VM stopped without the command's exit status (after ${elapsed}s); full log: $console"
	exit $EXIT_NOSTATUS
fi
[ -s "$qemu_log" ] || rm -f "$qemu_log"
log "vm: command exited with $status (user space after ${booted_at:-?}s, total ${elapsed}s); log: $console"
exit "$status"
