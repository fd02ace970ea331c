#!/usr/bin/env bash
# Installs whatever the build and the tests need and is missing. Idempotent:
# a second run only checks.
source "$(dirname "$0")/common.sh"

PACKAGES=(
	# kernel and module build
	clang-19 lld-19 llvm-19 libclang-19-dev rustc-web rust-web-src rust-web-clippy
	flex bison bc libelf-dev libssl-dev cpio kmod make
	"linux-source-$BLKSNAP_KERNEL_LINE"
	# the VM and what the tests run inside it
	qemu-system-x86 busybox-static util-linux e2fsprogs xfsprogs dmsetup
	mdadm fio xz-utils zstd python3
	# the Debian 13 root for the distribution kernel (scripts/debian-kernel.sh),
	# and the check of the Debian packages (scripts/package.sh)
	debootstrap lintian
	# the benchmark's plot
	gnuplot-nox
)

missing=()
for p in "${PACKAGES[@]}"; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if ((${#missing[@]})); then
	log "installing: ${missing[*]}"
	SUDO=; [ "$(id -u)" = 0 ] || SUDO=sudo
	$SUDO apt-get update -qq
	DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

if ! "$HOME/.cargo/bin/bindgen" --version >/dev/null 2>&1; then
	log "installing bindgen-cli"
	cargo install --locked --quiet bindgen-cli --version 0.73.2
fi
