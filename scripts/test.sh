#!/usr/bin/env bash
# The project's test command: builds everything and runs every test.
#
#   scripts/test.sh [--debug] [--timeout SECONDS] [VM-TEST...]
#
# Steps, each a KTAP test case: install missing packages (scripts/deps.sh),
# build or reuse the test kernel (scripts/kernel.sh; KDIR=... uses your own),
# build blksnap.ko, build the user space (cargo build --release --workspace),
# check the rustfmt formatting of both, run the host unit tests (cargo test
# --workspace, nested), and boot the test kernel under QEMU to run
# tests/run-vm.sh (nested; VM-TEST names select scripts from tests/vm/). A
# failed step does not stop the later ones.
#
#   --debug            use the debug kernel (KASAN, lockdep, kmemleak); same as BLKSNAP_DEBUG=1
#   --timeout SECONDS  limit for the VM run (default $BLKSNAP_VM_TIMEOUT, else 3600, 14400 with --debug)
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
while (($#)); do
	case $1 in
	--debug) BLKSNAP_DEBUG=1; export BLKSNAP_DEBUG ;;
	--timeout) timeout=${2:?--timeout wants seconds}; shift ;;
	--timeout=*) timeout=${1#*=} ;;
	-h | --help) sed -n '2,/^# shellcheck/{/^# shellcheck/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	--) shift; break ;;
	-*) echo "test.sh: unknown option $1" >&2; exit 2 ;;
	*) break ;;
	esac
	shift
done
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

echo "KTAP version 1"
echo "1..7"

# 1: packages and bindgen.
step deps deps "$BLKSNAP_ROOT/scripts/deps.sh"

# 2: the test kernel.
kernel_ok=0
if [ -n "${KDIR:-}" ]; then
	diag "kernel: using KDIR=$KDIR"
	[ -f "$KDIR/arch/x86/boot/bzImage" ] && kernel_ok=1
	report $((1 - kernel_ok)) kernel
else
	[ "$BLKSNAP_DEBUG" = 1 ] && variant=debug || variant=release
	diag "kernel: building or reusing the $variant test kernel (a first build takes 15-20 minutes)"
	get_kernel() { KDIR=$("$BLKSNAP_ROOT/scripts/kernel.sh"); }
	step kernel kernel get_kernel && kernel_ok=1
	[ "$kernel_ok" = 1 ] && diag "kernel: $KDIR"
fi
export KDIR

# 3: the module.
if [ "$kernel_ok" = 1 ]; then
	# One module build at a time in this checkout (test.sh, demo.sh).
	if ! step module-build module-build flock "$BLKSNAP_ROOT/target/.module-build.lock" \
		make -C "$BLKSNAP_ROOT" KDIR="$KDIR"; then
		[ -f "$BLKSNAP_ROOT/blksnap.ko" ] &&
			diag "module-build: the VM tests below use the blksnap.ko of an earlier build"
	fi
else
	diag "module-build: no kernel to build against"
	report 1 module-build
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

# 7: the VM tests, nested.
if [ "$kernel_ok" = 1 ]; then
	vmerr=$logs/vm-host.log
	vm_args=(--timeout "$timeout")
	summary='' vp=0 vf=0 vs=0
	"$BLKSNAP_ROOT/scripts/vm.sh" "${vm_args[@]}" -- tests/run-vm.sh "$@" 2>"$vmerr" |
		while IFS= read -r line; do
			line=${line%$'\r'}
			if [[ $line =~ ^([0-9]+)\ passed,\ ([0-9]+)\ failed,\ ([0-9]+)\ skipped$ ]]; then
				summary=$line
				echo "    # $line"
				continue
			fi
			echo "    $line"
			# The individual cases, in case the summary never comes.
			if [[ $line =~ ^\ \ \ \ ok\ [0-9]+.*#\ *SKIP ]]; then
				vs=$((vs + 1))
			elif [[ $line =~ ^\ \ \ \ ok\ [0-9]+ ]]; then
				vp=$((vp + 1))
			elif [[ $line =~ ^\ \ \ \ not\ ok\ [0-9]+ ]]; then
				vf=$((vf + 1))
			fi
		done
	vmrc=${PIPESTATUS[0]}
	diag "vm: exit status $vmrc; host-side messages:"
	diag "$(cat "$vmerr")"
	if [ -n "$summary" ]; then
		read -r vp _ vf _ vs _ <<<"${summary//,/}"
	fi
	case $vmrc in
	124 | 125 | 126)
		diag "vm: the VM run failed (timeout, kernel report or no exit status): one more failure"
		vf=$((vf + 1))
		;;
	0) ;;
	*) [ "$vf" != 0 ] || vf=1 ;;
	esac
	pass=$((pass + vp)) fail=$((fail + vf)) skip=$((skip + vs))
	report "$vmrc" vm-tests 1
else
	diag "vm-tests: no kernel to boot"
	report 1 vm-tests
fi

echo "$pass passed, $fail failed, $skip skipped"
((fail == 0))
