#!/usr/bin/env bash
# The control device's ioctl entry: VERSION through the CLI and through a raw
# ioctl, unknown command numbers, permission checks and bad user pointers.
# shellcheck source-path=SCRIPTDIR disable=SC2119 # require_built takes no arguments here
source "$(dirname "$0")/../lib.sh"
require_vm

# Command numbers that are not blksnap ioctls: past the last one, no
# direction or size, garbage, VERSION's size with another type, VERSION's
# type and number with another direction or size.
UNKNOWN_CMDS=(0x4008560c 0x5600 0xdeadbeef 0x40085700 0x80085600 0x40045600)
# Addresses no user buffer can be at.
BAD_ADDRS=(0 1 0xffff888000000000)

ktap_plan $((2 + ${#UNKNOWN_CMDS[@]} + 2 + ${#BAD_ADDRS[@]} + 1))

require_built
blksnap_unload
insmod_or_finish
trap 'blksnap_unload 2>/dev/null' EXIT

# VERSION through an independent raw ioctl.
out=$(kcall version 2>&1) && rc=0 || rc=$?
version=$(sed -n 's/^version=//p' <<<"$out")
if [ "$rc" = 0 ] && [[ $version =~ ^[0-9]+\.[0-9]+\.[0-9]+\.0$ ]]; then
	ktap_diag "VERSION ioctl: $version"
	ktap_ok "raw VERSION ioctl returns major.minor.revision with build 0"
else
	ktap_fail "raw VERSION ioctl returns major.minor.revision with build 0" "exit $rc: $out"
fi

# VERSION through the CLI.
if [ ! -x "$BLKSNAP_CLI" ]; then
	ktap_skip "blksnap version prints the module version" "$BLKSNAP_CLI is not built"
else
	cli=$("$BLKSNAP_CLI" version 2>&1) && rc=0 || rc=$?
	cli_version=$(sed -n 's/^version=//p' <<<"$cli" | head -n1)
	if [ "$rc" = 0 ] && [ -n "$version" ] && [[ $cli_version == "${version%.*}"* ]]; then
		ktap_ok "blksnap version prints the module version"
	else
		ktap_fail "blksnap version prints the module version" \
			"exit $rc: $cli" "raw ioctl: ${version:-unknown}"
	fi
fi

for cmd in "${UNKNOWN_CMDS[@]}"; do
	expect_errno ENOTTY "unknown command $cmd fails with ENOTTY" kcall ioctl "$cmd"
done

# Without CAP_SYS_ADMIN (still root, so the node's 0600 lets it open).
expect_errno EPERM "VERSION without CAP_SYS_ADMIN fails with EPERM" \
	setpriv --inh-caps=-sys_admin --bounding-set=-sys_admin -- \
	"${PYTHON_FAST[@]}" "$TESTS_DIR/tools/kcall.py" version
# A user other than root cannot open the node.
expect_errno EACCES "a non-root user cannot open $BLKSNAP_DEV (EACCES)" \
	setpriv --reuid=65534 --regid=65534 --clear-groups -- \
	"${PYTHON_FAST[@]}" "$TESTS_DIR/tools/kcall.py" open "$BLKSNAP_DEV"

for addr in "${BAD_ADDRS[@]}"; do
	expect_errno EFAULT "VERSION with the argument address $addr fails with EFAULT" \
		kcall ioctl 0x40085600 --addr "$addr"
done

trap - EXIT
unload_case "the module unloads after the ioctl tests"
ktap_finish
