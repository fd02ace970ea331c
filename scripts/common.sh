# shellcheck shell=bash
# Shared settings for the build, test and demo scripts. Sourced, never run.
#
# Every fact about which kernel we build against lives here and in
# scripts/kernel.sh; nothing else in the tree names a kernel version.

set -euo pipefail

BLKSNAP_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
export BLKSNAP_ROOT

# The kernel line the test kernel is built from (Debian's linux-source-<line>).
: "${BLKSNAP_KERNEL_LINE:=6.12}"
# Cache outside the checkout; the kernel tree is keyed on version and config.
: "${BLKSNAP_CACHE:=${XDG_CACHE_HOME:-$HOME/.cache}/blksnap-rs}"
# BLKSNAP_DEBUG=1 selects the debug kernel (KASAN, lockdep, kmemleak, fault injection).
: "${BLKSNAP_DEBUG:=0}"
export BLKSNAP_KERNEL_LINE BLKSNAP_CACHE BLKSNAP_DEBUG

LLVM_DIR=/usr/lib/llvm-19
# The kernel's Rust support needs the core sources, which Debian's rustc-web ships.
KERNEL_RUSTC=/usr/bin/rustc
export LIBCLANG_PATH="$LLVM_DIR/lib"
export PATH="$LLVM_DIR/bin:$HOME/.cargo/bin:$PATH"

# Arguments for every make that touches the kernel or the module.
kmake_args() {
	echo "LLVM=1 RUSTC=$KERNEL_RUSTC BINDGEN=$HOME/.cargo/bin/bindgen"
}

log() { printf '[blksnap] %s\n' "$*" >&2; }
die() { printf '[blksnap] error: %s\n' "$*" >&2; exit 1; }
