#!/usr/bin/env bash
# Debian's own Rust-enabled kernel binary as a build and test target.
#
#   scripts/debian-kernel.sh prepare   make (or reuse) the build environment
#                                      and the boot files; print their directory
#   scripts/debian-kernel.sh module    build blksnap.ko against that kernel
#                                      (in the cache, one per checkout);
#                                      print the path of the module
#
# Debian's headers package ships no Rust metadata (no rust/*.rmeta, no
# `kernel` crate), so a Rust module cannot be built from the headers alone.
# `prepare` reconstructs what is missing with Debian's exact toolchain:
#
#   1. a Debian 13 (trixie) root made by debootstrap, with the compiler,
#      rustc, rust-src and bindgen the kernel was built with, the kernel's
#      headers and its source package (trixie-backports);
#   2. `make olddefconfig modules_prepare` on that source with the headers'
#      .config and the kernel's release name: the Rust metadata of core,
#      kernel, macros, pin_init, ... come out with the same crate hashes as
#      Debian's, so a module's v0-mangled symbol names match the kernel's
#      exports; the headers' Module.symvers goes next to them, so modpost
#      rejects a module that needs a symbol the kernel does not export.
#      packaging/blksnap-prepare-kernel does this step, in the root, as the
#      DKMS package does it on a Debian machine (the result goes to the
#      root's /var/lib/blksnap-rs/kernels);
#   3. the kernel and its modules from the image packages, laid out as
#      scripts/vm.sh boots a kernel (arch/x86/boot/bzImage, modroot/ with
#      depmod's files, and an initramfs that loads the 9p modules the VM's
#      root file system needs, since Debian builds them as modules).
#
# Everything lives in $BLKSNAP_CACHE/debian-<release>-<key>, keyed on the
# package versions and this script, outside the checkout; a second run only
# checks. The host's apt setup is left alone. The first run downloads about
# 450 MB and takes about 12 minutes on 2 cores.
#
# Environment: BLKSNAP_DEBIAN_MIRROR (default http://deb.debian.org/debian).
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

# The kernel and the toolchain it was built with (its config says
# CONFIG_RUSTC_VERSION=108501, bindgen 0.71.1, x86_64-linux-gnu-gcc-14).
DEB_RELEASE=7.3.4+deb13-amd64
DEB_VERSION=7.3.4-1~bpo13+1
DEB_LINE=7.3
DEB_RUSTC=1.85.1+dfsg1-1+deb13u1
DEB_BINDGEN=0.71.1-6
MIRROR=${BLKSNAP_DEBIAN_MIRROR:-http://deb.debian.org/debian}

# What the root holds: the toolchain and the kernel's packages.
ROOT_PACKAGES=(
	"gcc-14=14.2.0-19" "rustc=$DEB_RUSTC" "rust-src=$DEB_RUSTC" "rust-clippy=$DEB_RUSTC"
	"bindgen=$DEB_BINDGEN" make flex bison bc libelf-dev libssl-dev dwarves xz-utils kmod
	python3 openssl "linux-source-$DEB_LINE=$DEB_VERSION" "linux-headers-$DEB_RELEASE=$DEB_VERSION"
)
# (linux-image-<release> is a meta package: the kernel, its modules, and
# modules.builtin/modules.order are in these.)
IMAGE_PACKAGES=(
	"linux-binary-$DEB_RELEASE=$DEB_VERSION" "linux-modules-$DEB_RELEASE=$DEB_VERSION"
	"linux-base-$DEB_RELEASE=$DEB_VERSION"
)

key=$(echo "$DEB_RELEASE ${ROOT_PACKAGES[*]} ${IMAGE_PACKAGES[*]}" | sha256sum | cut -c1-12)
dir=$BLKSNAP_CACHE/debian-$DEB_RELEASE-$key
root=$dir/root
# Paths inside the root.
PREPARE=/build/bin/blksnap-prepare-kernel
MODSRC=/build/blksnap

# Runs a command in the root, with /proc, /dev and /sys mounted in a private
# mount namespace: the mounts go away with the command.
in_root() {
	unshare --mount --propagation private -- /bin/sh -ec '
		root=$1; shift
		mount -t proc proc "$root/proc"
		mount --rbind /dev "$root/dev"
		mount -t sysfs sysfs "$root/sys"
		exec chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin \
			HOME=/root LANG=C.UTF-8 DEBIAN_FRONTEND=noninteractive "$@"
	' in_root "$root" "$@"
}

make_root() {
	local tmp=$dir/root.tmp
	command -v debootstrap >/dev/null || die "debootstrap is missing (run scripts/deps.sh)"
	log "debian: making a trixie root in $root (downloads the toolchain and the kernel packages)"
	rm -rf "$tmp"
	mkdir -p "$dir"
	debootstrap --variant=minbase trixie "$tmp" "$MIRROR" >"$dir/debootstrap.log" 2>&1 ||
		{ tail -n 20 "$dir/debootstrap.log" >&2; die "debootstrap failed (log: $dir/debootstrap.log)"; }
	cat >"$tmp/etc/apt/sources.list" <<-EOF
		deb $MIRROR trixie main
		deb $MIRROR trixie-backports main
	EOF
	cp /etc/resolv.conf "$tmp/etc/resolv.conf"
	# No daemons start in the root.
	printf '#!/bin/sh\nexit 101\n' >"$tmp/usr/sbin/policy-rc.d"
	chmod 755 "$tmp/usr/sbin/policy-rc.d"
	mv "$tmp" "$root"
	in_root apt-get update -qq
	in_root apt-get install -y -qq --no-install-recommends "${ROOT_PACKAGES[@]}" >"$dir/apt.log" 2>&1 ||
		{ tail -n 20 "$dir/apt.log" >&2; die "installing the toolchain in the root failed (log: $dir/apt.log)"; }
	# The kernel binary and its modules: unpacked, not installed.
	mkdir -p "$root/build/debs"
	in_root sh -c 'cd /build/debs && apt-get download -qq -o APT::Sandbox::User=root "$@"' download "${IMAGE_PACKAGES[@]}" ||
		die "downloading the kernel image packages failed"
	in_root apt-get clean
	touch "$dir/.root-done"
}

# The Rust part of the build tree, regenerated from the source package by
# packaging/blksnap-prepare-kernel: the same script the DKMS package runs on
# a Debian machine, here run in the root, whose kernel cache
# (/var/lib/blksnap-rs/kernels) it fills.
prepare_tree() {
	install_prepare_script
	log "debian: preparing the kernel for Rust modules (modules_prepare: about 5 minutes unless done before)"
	in_root "$PREPARE" "$DEB_RELEASE" >"$dir/prepare.log" 2>&1 ||
		{ tail -n 30 "$dir/prepare.log" >&2; die "preparing the kernel failed (log: $dir/prepare.log)"; }
	touch "$dir/.kernel-prepared"
}

# The checkout's preparation script, in the root.
install_prepare_script() {
	mkdir -p "$root${PREPARE%/*}"
	install -m 755 "$BLKSNAP_ROOT/packaging/blksnap-prepare-kernel" "$root$PREPARE"
}

# The kernel and modules, laid out for scripts/vm.sh.
boot_files() {
	local img=$dir/image mods initrd=$dir/initrd.tmp m f
	log "debian: unpacking the kernel image and its modules"
	rm -rf "$img" "$dir/modroot" "$dir/arch" "$initrd"
	mkdir -p "$img"
	for f in "$root"/build/debs/*.deb; do dpkg-deb -x "$f" "$img"; done
	mods=$img/usr/lib/modules/$DEB_RELEASE
	[ -f "$mods/vmlinuz" ] || die "no vmlinuz in the image packages"
	mkdir -p "$dir/arch/x86/boot" "$dir/modroot/lib/modules"
	mv "$mods" "$dir/modroot/lib/modules/"
	mods=$dir/modroot/lib/modules/$DEB_RELEASE
	ln -s "$mods/vmlinuz" "$dir/arch/x86/boot/bzImage"
	depmod -b "$dir/modroot" "$DEB_RELEASE"
	cp "$root/usr/src/linux-headers-$DEB_RELEASE/.config" "$dir/config"

	# The initramfs: busybox, the modules the 9p root needs (in dependency
	# order, uncompressed), and scripts/initramfs-init.sh as /init.
	mkdir -p "$initrd"/{bin,dev,proc,sys,newroot,lib/modules}
	cp /bin/busybox "$initrd/bin/busybox"
	cp "$BLKSNAP_ROOT/scripts/initramfs-init.sh" "$initrd/init"
	: >"$initrd/lib/modules/load"
	local deps=()
	for m in virtio_pci 9pnet_virtio 9p; do
		# "builtin NAME" for what is built in, "insmod PATH" for a module.
		mapfile -t -O "${#deps[@]}" deps < <(modprobe -d "$dir/modroot" -S "$DEB_RELEASE" \
			--show-depends "$m" | awk '$1 == "insmod" { print $2 }')
	done
	for f in "${deps[@]}"; do
		local name
		name=$(basename "$f")
		name=${name%.xz}
		name=${name%.zst}
		[ -e "$initrd/lib/modules/$name" ] && continue
		case $f in
		*.xz) xz -dc "$f" ;;
		*.zst) zstd -qdc "$f" ;;
		*) cat "$f" ;;
		esac >"$initrd/lib/modules/$name"
		echo "$name" >>"$initrd/lib/modules/load"
	done
	grep -qx '9p.ko' "$initrd/lib/modules/load" ||
		grep -q '^CONFIG_9P_FS=y' "$dir/config" || die "no 9p module found for the initramfs"
	(cd "$initrd" && find . | cpio -o -H newc --quiet) | gzip -1 >"$dir/initrd.img"
	rm -rf "$initrd"
	echo "$DEB_RELEASE" >"$dir/release"
	touch "$dir/.boot-done"
}

prepare() {
	mkdir -p "$BLKSNAP_CACHE"
	exec 9>"$BLKSNAP_CACHE/.lock-debian-$key"
	flock 9
	[ -e "$dir/.root-done" ] || make_root
	[ -e "$dir/.kernel-prepared" ] || prepare_tree
	[ -e "$dir/.boot-done" ] || boot_files
}

# Builds the module in the root from a copy of this checkout's module
# sources, in a directory of the root's own per checkout (outside the
# checkout: kbuild's `clean` there removes every .ko below it); prints the
# path of the module.
module() {
	local src vermagic want
	prepare
	src=$MODSRC-$(echo "$BLKSNAP_ROOT" | sha256sum | cut -c1-12)
	exec 8>"$dir/.lock-module-${src##*-}"
	flock 8
	rm -rf "$root$src"
	mkdir -p "$root$src"
	(cd "$BLKSNAP_ROOT" && tar -cf - --exclude='*.o' --exclude='*.ko' --exclude='.*.cmd' \
		Kbuild include src) | tar -xf - -C "$root$src"
	install_prepare_script
	in_root "$PREPARE" --make "$DEB_RELEASE" M="$src" CLIPPY=1 modules >&2 ||
		die "the module build against $DEB_RELEASE failed"
	vermagic=$(modinfo -F vermagic "$root$src/blksnap.ko")
	want=$(modinfo -b "$dir/modroot" -k "$DEB_RELEASE" -F vermagic brd)
	[ "$vermagic" = "$want" ] || die "vermagic '$vermagic' is not the kernel's '$want'"
	echo "$root$src/blksnap.ko"
}

case ${1:-} in
prepare) prepare; echo "$dir" ;;
module) module ;;
*) sed -n '2,/^# shellcheck/{/^# shellcheck/d;s/^# \{0,1\}//;p}' "$0" >&2; exit 2 ;;
esac
