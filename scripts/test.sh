#!/usr/bin/env bash
# The project's test command: builds everything and runs every test, on each
# supported kernel line.
#
#   scripts/test.sh [--debug] [--line 6.12|7.3|all] [--timeout SECONDS] [VM-TEST...]
#
# Steps, each a KTAP test case: install missing packages (scripts/deps.sh),
# build or reuse the 6.12 test kernel (scripts/kernel.sh; KDIR=... uses your
# own), build blksnap.ko, build the user space (cargo build --release
# --workspace), check the rustfmt formatting of both and the module's layers
# (scripts/check-layers.sh), run the host unit tests
# (cargo test --workspace, nested), and boot the test kernel under QEMU to run
# tests/run-vm.sh (nested; VM-TEST names select scripts from tests/vm/).
# The same for Debian's own 7.3 kernel binary: its build environment
# (scripts/debian-kernel.sh, made in the background while the 6.12 kernel
# builds), blksnap.ko built against it, and the VM tests in DEBIAN_TESTS
# below (or the VM-TEST names) booted on Debian's vmlinuz, in a second VM
# beside the one on 6.12 (each keeps one host core busy); after them, in the
# same place, the Debian packages (scripts/package-test.sh: built, checked
# with lintian, installed with DKMS in Debian's root, used and removed on
# Debian's kernel), unless VM-TEST names were given. A failed step does not
# stop the later ones.
#
#   --debug            use the debug kernel (KASAN, lockdep, kmemleak); same as
#                      BLKSNAP_DEBUG=1; a 6.12 build, so only that line runs
#   --line LINE        only this kernel line (default $BLKSNAP_LINES, else all)
#   --timeout SECONDS  limit for each VM run (default $BLKSNAP_VM_TIMEOUT, else 3600, 14400 with --debug)
#
# Output is KTAP; the last line is "N passed, N failed, N skipped" over the
# individual cases (build steps, host tests, VM tests; a VM crash, timeout or
# kernel report is one more failure). Exit status 0 if nothing failed.
# Build logs go to target/test-logs/, kernel console logs to target/vm-logs/.
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
set +e
shopt -s lastpipe

timeout=
lines=${BLKSNAP_LINES:-all}
while (($#)); do
	case $1 in
	--debug) BLKSNAP_DEBUG=1; export BLKSNAP_DEBUG ;;
	--line) lines=${2:?--line wants 6.12, 7.3 or all}; shift ;;
	--line=*) lines=${1#*=} ;;
	--timeout) timeout=${2:?--timeout wants seconds}; shift ;;
	--timeout=*) timeout=${1#*=} ;;
	-h | --help) sed -n '2,/^# shellcheck/{/^# shellcheck/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	--) shift; break ;;
	-*) echo "test.sh: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
	shift
done
case $lines in
all) lines="6.12 7.3" ;;
6.12 | 7.3) ;;
*) echo "test.sh: --line wants 6.12, 7.3 or all, got '$lines'" >&2; exit 2 ;;
esac
[ "$BLKSNAP_DEBUG" = 1 ] && lines=6.12
want_line() { [[ " $lines " == *" $1 "* ]]; }
# The VM tests on Debian's kernel: module load and every ioctl, the UAPI
# call patterns, CBT, copy-on-write with images, the CLI and backup, and a
# short fuzz run. (The whole suite runs on 6.12.)
DEBIAN_TESTS=(01-module 02-ioctl 03-uapi 10-cbt 20-cow 23-multi 30-cli 31-backup 40-fuzz)
: "${BLKSNAP_DEBIAN_FUZZ_CALLS:=5000}"

# The packaging test runs with the whole suite, not for chosen VM tests.
package_test=0
(($#)) || package_test=1

# The debug kernel runs the scripts several times slower.
if [ "$BLKSNAP_DEBUG" = 1 ]; then
	: "${BLKSNAP_TEST_TIMEOUT:=3600}"
	export BLKSNAP_TEST_TIMEOUT
fi
if [ -z "$timeout" ]; then
	timeout=${BLKSNAP_VM_TIMEOUT:-$([ "$BLKSNAP_DEBUG" = 1 ] && echo 14400 || echo 3600)}
fi
export CARGO_TERM_COLOR=never

cd "$BLKSNAP_ROOT" || exit 1
logs=$BLKSNAP_ROOT/target/test-logs
mkdir -p "$logs"

pass=0 fail=0 skip=0 n=0
diag() { printf '%s\n' "$@" | sed 's/^/# /'; }
# Reports a top-level case; counted=1 when its subtests already went into the totals.
report() {
	local rc=$1 desc=$2 counted=${3:-0}
	n=$((n + 1))
	if [ "$rc" = 0 ]; then
		echo "ok $n $desc"
		[ "$counted" = 1 ] || pass=$((pass + 1))
	else
		echo "not ok $n $desc"
		[ "$counted" = 1 ] || fail=$((fail + 1))
	fi
}
# Runs a build step with its output in a log; on failure shows the log's tail.
step() {
	local desc=$1 logf=$logs/$2.log t0=$SECONDS rc
	shift 2
	"$@" >"$logf" 2>&1
	rc=$?
	diag "$desc: $((SECONDS - t0))s, log: $logf"
	if [ "$rc" != 0 ]; then
		diag "$desc failed with exit status $rc; last lines of the log:"
		diag "$(tail -n 40 "$logf")"
	fi
	report "$rc" "$desc"
	return "$rc"
}

# Steps: deps, user space, format, layers, host tests, and per kernel line
# the kernel, the module and the VM tests.
planned=5
want_line 6.12 && planned=$((planned + 3))
want_line 7.3 && planned=$((planned + 3 + package_test))
echo "KTAP version 1"
echo "1..$planned"

# 1: packages and bindgen.
step deps deps "$BLKSNAP_ROOT/scripts/deps.sh"

# Debian's kernel: its build environment is made in the background (mostly
# downloads, then about 5 minutes of compiling) while the 6.12 kernel builds.
debian_pid=
if want_line 7.3; then
	debian_t0=$SECONDS
	# Niced: the 6.12 kernel build is the longer path.
	nice -n 10 "$BLKSNAP_ROOT/scripts/debian-kernel.sh" prepare >"$logs/kernel-7.3.log" 2>&1 &
	debian_pid=$!
fi

# Reads the KTAP output of tests/run-vm.sh on stdin, nests it under the next
# case and counts its cases (vm_vp, vm_vf, vm_vs, vm_summary).
vm_lines() {
	local line
	vm_summary='' vm_vp=0 vm_vf=0 vm_vs=0
	while IFS= read -r line; do
		line=${line%$'\r'}
		if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
			vm_summary=$line
			echo "    # $line"
			continue
		fi
		echo "    $line"
		# The individual cases, in case the summary never comes.
		if [[ $line =~ ^\ \ \ \ ok\ [0-9]+.*#\ *SKIP ]]; then
			vm_vs=$((vm_vs + 1))
		elif [[ $line =~ ^\ \ \ \ ok\ [0-9]+ ]]; then
			vm_vp=$((vm_vp + 1))
		elif [[ $line =~ ^\ \ \ \ not\ ok\ [0-9]+ ]]; then
			vm_vf=$((vm_vf + 1))
		fi
	done
}
# Reports VM case $1 from what vm_lines counted, vm.sh's exit status $2 and
# its messages in file $3.
vm_finish() {
	local desc=$1 vmrc=$2 vmerr=$3 vp=$vm_vp vf=$vm_vf vs=$vm_vs
	diag "$desc: exit status $vmrc; host-side messages:"
	diag "$(cat "$vmerr")"
	if [ -n "$vm_summary" ]; then
		read -r vp _ vf _ vs _ <<<"${vm_summary//,/}"
	fi
	case $vmrc in
	124 | 125 | 126)
		diag "$desc: the VM run failed (timeout, kernel report or no exit status): one more failure"
		vf=$((vf + 1))
		;;
	0) ;;
	*) [ "$vf" != 0 ] || vf=1 ;;
	esac
	pass=$((pass + vp)) fail=$((fail + vf)) skip=$((skip + vs))
	report "$vmrc" "$desc" 1
}

# 2: the 6.12 test kernel.
kernel_ok=0
t612=$SECONDS
if want_line 6.12; then
	if [ -n "${KDIR:-}" ]; then
		diag "kernel-6.12: using KDIR=$KDIR"
		[ -f "$KDIR/arch/x86/boot/bzImage" ] && kernel_ok=1
		report $((1 - kernel_ok)) kernel-6.12
	else
		[ "$BLKSNAP_DEBUG" = 1 ] && variant=debug || variant=release
		diag "kernel-6.12: building or reusing the $variant test kernel (a first build takes 15-20 minutes)"
		get_kernel() { KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh"); }
		step kernel-6.12 kernel-6.12 get_kernel && kernel_ok=1
		[ "$kernel_ok" = 1 ] && diag "kernel-6.12: $KDIR"
	fi
	export KDIR

	# 3: the module.
	if [ "$kernel_ok" = 1 ]; then
		# One module build at a time in this checkout (test.sh, demo.sh).
		if ! step module-6.12 module-6.12 flock "$BLKSNAP_ROOT/target/.module-build.lock" \
			make -C "$BLKSNAP_ROOT" KDIR="$KDIR"; then
			[ -f "$BLKSNAP_ROOT/blksnap.ko" ] &&
				diag "module-6.12: the VM tests below use the blksnap.ko of an earlier build"
		fi
	else
		diag "module-6.12: no kernel to build against"
		report 1 module-6.12
	fi
fi
t612=$((SECONDS - t612))

# Debian's 7.3 kernel binary: its build environment (made in the background
# since step 1) and the module built against it.
debian_ko=
if want_line 7.3; then
	wait "$debian_pid"
	rc=$?
	diag "kernel-7.3: $((SECONDS - debian_t0))s in the background, log: $logs/kernel-7.3.log"
	if [ "$rc" != 0 ]; then
		diag "kernel-7.3 failed with exit status $rc; last lines of the log:"
		diag "$(tail -n 40 "$logs/kernel-7.3.log")"
	fi
	report "$rc" kernel-7.3
	debian_dir=$(tail -n1 "$logs/kernel-7.3.log")
	get_debian_module() { debian_ko=$("$BLKSNAP_ROOT/scripts/debian-kernel.sh" module); }
	if [ "$rc" != 0 ]; then
		diag "module-7.3: no build environment"
		report 1 module-7.3
	elif step module-7.3 module-7.3 get_debian_module; then
		diag "module-7.3: $debian_ko, vermagic $(modinfo -F vermagic "$debian_ko")"
	else
		debian_ko=
	fi
fi

# 4: user space.
if [ -f "$BLKSNAP_ROOT/Cargo.toml" ]; then
	step userspace-build userspace-build cargo build --release --workspace
else
	diag "userspace-build: there is no Cargo.toml at $BLKSNAP_ROOT"
	report 1 userspace-build
fi

# 5: rustfmt: the user space workspace and the module's sources.
check_format() {
	cargo fmt --all -- --check &&
		rustfmt --check --edition 2021 "$BLKSNAP_ROOT/src/blksnap.rs"
}
step format format check_format
# sys/ names no domain module; no unsafe outside sys/ but the listed.
step layers layers "$BLKSNAP_ROOT/scripts/check-layers.sh"

# 6: host unit tests, one subtest per Rust test.
if [ -f "$BLKSNAP_ROOT/Cargo.toml" ]; then
	logf=$logs/host-tests.log
	t0=$SECONDS
	cargo test --workspace >"$logf" 2>&1
	rc=$?
	names=() results=()
	while IFS= read -r line; do
		if [[ $line =~ ^test\ (.+)\ \.\.\.\ (ok|FAILED|ignored)(,.*)?$ ]]; then
			names+=("${BASH_REMATCH[1]}")
			results+=("${BASH_REMATCH[2]}")
		fi
	done <"$logf"
	echo "    KTAP version 1"
	echo "    1..${#names[@]}"
	for i in "${!names[@]}"; do
		name=${names[$i]//#/}
		case ${results[$i]} in
		ok) echo "    ok $((i + 1)) $name" ;;
		ignored) echo "    ok $((i + 1)) $name # SKIP ignored" ;;
		*) echo "    not ok $((i + 1)) $name" ;;
		esac
	done
	# The totals come from cargo's own "test result:" lines.
	hp=0 hf=0 hs=0
	while IFS= read -r line; do
		if [[ $line =~ ([0-9]+)\ passed\;\ ([0-9]+)\ failed\;\ ([0-9]+)\ ignored ]]; then
			hp=$((hp + BASH_REMATCH[1])) hf=$((hf + BASH_REMATCH[2])) hs=$((hs + BASH_REMATCH[3]))
		fi
	done < <(grep -a '^test result:' "$logf")
	diag "host-tests: $hp passed, $hf failed, $hs ignored in $((SECONDS - t0))s, log: $logf"
	if [ "$rc" != 0 ] && [ "$hf" = 0 ]; then
		hf=1
		diag "cargo test failed with exit status $rc without a failed test:"
	fi
	if [ "$rc" != 0 ]; then
		diag "$(tail -n 60 "$logf")"
	fi
	pass=$((pass + hp)) fail=$((fail + hf)) skip=$((skip + hs))
	report "$rc" host-tests 1
else
	diag "host-tests: there is no Cargo.toml at $BLKSNAP_ROOT"
	report 1 host-tests
fi

# The VM tests on 7.3 run in the background, beside those on 6.12: each VM
# keeps one host core busy (TCG on one thread).
debian_vm_pid=
if [ -n "$debian_ko" ]; then
	debian_tests=("$@")
	if ((${#debian_tests[@]} == 0)); then
		for t in "${DEBIAN_TESTS[@]}"; do
			[ -f "$BLKSNAP_ROOT/tests/vm/$t.sh" ] && debian_tests+=("$t")
		done
	fi
	t73=$SECONDS
	(
		KDIR=$debian_dir BLKSNAP_KO=$debian_ko \
			BLKSNAP_FUZZ_CALLS=${BLKSNAP_FUZZ_CALLS:-$BLKSNAP_DEBIAN_FUZZ_CALLS} \
			"$BLKSNAP_ROOT/scripts/vm.sh" --timeout "$timeout" -- tests/run-vm.sh "${debian_tests[@]}" \
			>"$logs/vm-tests-7.3.out" 2>"$logs/vm-tests-7.3-host.log"
		echo $? >"$logs/vm-tests-7.3.rc"
		echo $((SECONDS - t73)) >"$logs/vm-tests-7.3.time"
		if [ "$package_test" = 1 ]; then
			tp=$SECONDS
			# Niced: the VM tests on 6.12 beside it are the longer path.
			nice -n 5 "$BLKSNAP_ROOT/scripts/package-test.sh" >"$logs/package-7.3.out" 2>"$logs/package-7.3-host.log"
			echo $? >"$logs/package-7.3.rc"
			echo $((SECONDS - tp)) >"$logs/package-7.3.time"
		fi
	) &
	debian_vm_pid=$!
fi

# 7: the VM tests on 6.12.
if want_line 6.12; then
	t0=$SECONDS
	if [ "$kernel_ok" = 1 ]; then
		"$BLKSNAP_ROOT/scripts/vm.sh" --timeout "$timeout" -- tests/run-vm.sh "$@" \
			2>"$logs/vm-tests-6.12-host.log" | vm_lines
		vmrc=${PIPESTATUS[0]}
		vm_finish vm-tests-6.12 "$vmrc" "$logs/vm-tests-6.12-host.log"
	else
		diag "vm-tests-6.12: no kernel to boot"
		report 1 vm-tests-6.12
	fi
	t612=$((t612 + SECONDS - t0))
	diag "line 6.12: ${t612}s (kernel, module and VM tests)"
fi

# 8: the VM tests on 7.3.
if want_line 7.3; then
	if [ -n "$debian_vm_pid" ]; then
		wait "$debian_vm_pid"
		vm_lines <"$logs/vm-tests-7.3.out"
		vm_finish vm-tests-7.3 "$(cat "$logs/vm-tests-7.3.rc" 2>/dev/null || echo 126)" \
			"$logs/vm-tests-7.3-host.log"
		diag "line 7.3: VM tests $(cat "$logs/vm-tests-7.3.time" 2>/dev/null)s, beside those on 6.12; the 6.12 line ended $((SECONDS - t73))s after they began"
	else
		diag "vm-tests-7.3: no module for Debian's kernel"
		report 1 vm-tests-7.3
	fi
fi

# 9: the Debian packages on 7.3 (run after the VM tests on 7.3, above).
if want_line 7.3 && [ "$package_test" = 1 ]; then
	if [ -n "$debian_vm_pid" ]; then
		vm_lines <"$logs/package-7.3.out"
		vm_finish package-7.3 "$(cat "$logs/package-7.3.rc" 2>/dev/null || echo 126)" \
			"$logs/package-7.3-host.log"
		diag "package-7.3: $(cat "$logs/package-7.3.time" 2>/dev/null)s, after the VM tests on 7.3; logs: $logs/package-*.log"
	else
		n=$((n + 1)) skip=$((skip + 1))
		echo "ok $n package-7.3 # SKIP no Debian build environment or module for 7.3 (see kernel-7.3, module-7.3)"
	fi
fi

echo "$pass passed, $fail failed, $skip skipped"
((fail == 0))
