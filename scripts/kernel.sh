#!/usr/bin/env bash
# Builds the test kernel (or reuses the cached build) and prints its build
# directory. The tree lives under $BLKSNAP_CACHE, keyed on the source version
# and the config fragments, so a changed fragment builds a new tree and an
# unchanged one is reused. BLKSNAP_DEBUG=1 selects the debug variant.
#
# Users with their own Rust-enabled kernel build tree set KDIR and skip this.
source "$(dirname "$0")/common.sh"

tarball=$(ls /usr/src/linux-source-"$BLKSNAP_KERNEL_LINE".tar.* 2>/dev/null | head -n1) ||
	true
[ -n "$tarball" ] || die "linux-source-$BLKSNAP_KERNEL_LINE is not installed (run scripts/deps.sh)"
version=$(dpkg-query -W -f='${Version}' "linux-source-$BLKSNAP_KERNEL_LINE")

fragments=("$BLKSNAP_ROOT/scripts/kconfig/base.config")
variant=release
if [ "$BLKSNAP_DEBUG" = 1 ]; then
	fragments+=("$BLKSNAP_ROOT/scripts/kconfig/debug.config")
	variant=debug
fi
key=$( (echo "$version"; cat "${fragments[@]}"; kmake_args) | sha256sum | cut -c1-12)
tree="$BLKSNAP_CACHE/linux-$version-$variant-$key"
stamp="$tree/.blksnap-built"

mkdir -p "$BLKSNAP_CACHE"
exec 9>"$BLKSNAP_CACHE/.lock-$variant-$key"
flock 9

configured="$tree/.blksnap-configured"
if [ ! -e "$stamp" ] && [ ! -e "$configured" ]; then
	log "configuring the $variant test kernel $version in $tree"
	rm -rf "$tree" "$tree.tmp"
	mkdir -p "$tree.tmp"
	tar -xf "$tarball" -C "$tree.tmp" --strip-components=1
	mv "$tree.tmp" "$tree"
	# shellcheck disable=SC2046
	(
		cd "$tree"
		make $(kmake_args) defconfig >/dev/null
		./scripts/kconfig/merge_config.sh -m .config kernel/configs/kvm_guest.config "${fragments[@]}" >/dev/null
		make $(kmake_args) olddefconfig >/dev/null
		# Fail early if a fragment line did not take.
		for f in "${fragments[@]}"; do
			grep -E '^CONFIG_[A-Z0-9_]+=' "$f" | while IFS= read -r want; do
				grep -qx "$want" .config || { echo "config: wanted $want, got: $(grep "^${want%%=*}=" .config || echo unset)" >&2; exit 1; }
			done
		done
		make $(kmake_args) rustavailable >/dev/null
	) || die "kernel configuration failed in $tree"
	touch "$configured"
fi
if [ ! -e "$stamp" ]; then
	# An interrupted build resumes here: make picks up where it stopped.
	log "building the $variant test kernel $version in $tree (takes a while once)"
	# shellcheck disable=SC2046
	(
		cd "$tree"
		make $(kmake_args) -j"$(($(nproc) + 1))" bzImage modules >build.log 2>&1 ||
			{ tail -n 40 build.log >&2; exit 1; }
		make $(kmake_args) INSTALL_MOD_PATH="$tree/modroot" modules_install >/dev/null
	) || die "kernel build failed (see $tree/build.log)"
	touch "$stamp"
fi
echo "$tree"
