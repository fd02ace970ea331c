#!/usr/bin/env bash
# The Debian packages on Debian's own 7.3 kernel: built, installed, used,
# removed.
#
#   scripts/package-test.sh
#
#   1. scripts/package.sh --lintian builds blksnap-rs-dkms and blksnap-tools;
#      lintian reports no error;
#   2. in a copy-on-write view (overlayfs) of the Debian 13 root of
#      scripts/debian-kernel.sh, with Debian's 7.3 kernel installed (its
#      image packages, but for its modules) and DKMS set to sign with a
#      throwaway key
#      (mok_signing_key/mok_certificate in /etc/dkms/framework.conf.d):
#      `apt-get install ./blksnap-rs-dkms_*.deb ./blksnap-tools_*.deb`; DKMS
#      builds and installs the module for Debian's kernel (the preparation
#      step finds the kernel that debian-kernel.sh prepared in that root,
#      with the same script) and signs it: modinfo shows the key as signer
#      and sig_key, the vermagic is the kernel's;
#   3. boots Debian's kernel (scripts/vm.sh) with that root shared writable;
#      tests/package-guest.sh, from that root: `modprobe blksnap`, the
#      packaged CLI's snapshot and full and incremental backups, removal of
#      the DKMS package while a snapshot is held (the module stays loaded
#      and in use), and removal of both packages with no file of theirs
#      left;
#   4. back in the view: with a rustc other than the kernel's (RUSTC), the
#      installation stops with an error that names it, and installs no
#      module.
#
# The view is thrown away at the end: the root is left as it was. Packages
# apt downloads (dkms and its dependencies) are kept for the next run.
#
# Output is KTAP; the last line is "N passed, N failed, N skipped". The
# command output of each step goes to target/test-logs/package-*.log. Needs
# a prepared root (scripts/debian-kernel.sh prepare): without it every case
# is skipped.
# shellcheck source-path=SCRIPTDIR disable=SC2317 # functions called through step
source "$(dirname "$0")/common.sh"

# The rest runs in a mount namespace of its own: the overlay and the
# mounts in it go away with it.
if [ "${BLKSNAP_PKG_NS:-}" != 1 ]; then
	exec unshare --mount --propagation private -- env BLKSNAP_PKG_NS=1 "$0" "$@"
fi
set +e

logs=$BLKSNAP_ROOT/target/test-logs
mkdir -p "$logs"
PLAN=6
n=0 pass=0 fail=0 skip=0
ok() { n=$((n + 1)) pass=$((pass + 1)); echo "ok $n $1"; }
not_ok() {
	local desc=$1
	shift
	(($#)) && printf '%s\n' "$@" | sed 's/^/# /'
	n=$((n + 1)) fail=$((fail + 1))
	echo "not ok $n $desc"
}
skip_rest() {
	while ((n < PLAN)); do
		n=$((n + 1)) skip=$((skip + 1))
		echo "ok $n ${2:-not run} # SKIP $1"
	done
}
finish() {
	while ((n < PLAN)); do not_ok "not run: an earlier step failed"; done
	echo "$pass passed, $fail failed, $skip skipped"
	((fail == 0))
	exit $?
}
# Runs a step with its output in target/test-logs/package-NAME.log: ok, or
# not ok with the log's tail.
step() {
	local desc=$1 name=$2 logf=$logs/package-$2.log t0=$SECONDS rc
	shift 2
	"$@" >"$logf" 2>&1
	rc=$?
	if [ "$rc" = 0 ]; then
		echo "# $name: $((SECONDS - t0))s"
		ok "$desc"
	else
		not_ok "$desc" "$name failed with exit status $rc after $((SECONDS - t0))s; end of $logf:" \
			"$(tail -n 30 "$logf")"
	fi
	return "$rc"
}

echo "KTAP version 1"
echo "1..$PLAN"

# The root of scripts/debian-kernel.sh, if it was prepared.
dir=
for d in "$BLKSNAP_CACHE"/debian-*/; do
	[ -e "$d/.kernel-prepared" ] && [ -e "$d/.boot-done" ] && dir=${d%/}
done
if [ -z "$dir" ]; then
	echo "# no prepared Debian environment in $BLKSNAP_CACHE (scripts/debian-kernel.sh prepare)"
	skip_rest "no Debian 13 root with a prepared 7.3 kernel"
	finish
fi
root=$dir/root
release=$(cat "$dir/release")

# 1: the packages, and lintian.
debs=()
build_packages() {
	local out
	out=$("$BLKSNAP_ROOT/scripts/package.sh" --lintian) || return 1
	mapfile -t debs <<<"$out"
}
step "packages built, lintian reports no error" build build_packages ||
	finish
# (step ran build_packages in this shell: debs is set.)

# 2: installed in a view of the root.
t=$dir/pkgtest-$(echo "$BLKSNAP_ROOT" | sha256sum | cut -c1-12)
view=$t/root
exec 9>"$t.lock"
flock 9
umount -R "$view" 2>/dev/null
rm -rf "$t"
mkdir -p "$t/upper" "$t/work" "$view" "$dir/pkgtest-apt-archives/partial"
mount -t overlay overlay -o "lowerdir=$root,upperdir=$t/upper,workdir=$t/work" "$view" ||
	{ not_ok "a view of the Debian root" "cannot mount an overlay on $view"; finish; }
in_view() {
	chroot "$view" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
		DEBIAN_FRONTEND=noninteractive "$@"
}
mount_view() {
	mount -t proc proc "$view/proc" && mount --rbind /dev "$view/dev" &&
		mount --make-rslave "$view/dev" && mount -t sysfs sysfs "$view/sys" &&
		mount --bind "$dir/pkgtest-apt-archives" "$view/var/cache/apt/archives"
}
mount_view || { not_ok "a view of the Debian root" "cannot mount /proc, /dev, /sys in $view"; finish; }

key_cn="blksnap-rs package test key $$"
install_cmd='apt-get install -y --no-install-recommends /tmp/debs/*.deb'
install_packages() {
	local d
	# The kernel itself, as on a machine that runs it (DKMS runs depmod only
	# for a kernel with a modules.dep): its image packages, which
	# debian-kernel.sh downloaded, less the one with its 4,000 modules, which
	# the test does not use (the VM loads them from the kernel's tree) and
	# over which every depmod would take minutes under the emulated CPU.
	in_view sh -c 'dpkg -i /build/debs/linux-base-*.deb /build/debs/linux-binary-*.deb' &&
		in_view depmod -a "$release" || return 1
	mkdir -p "$view/tmp/debs"
	for d in "${debs[@]}"; do cp "$d" "$view/tmp/debs/"; done
	# The throwaway signing key, as an administrator would configure it.
	mkdir -p "$view/root/mok" "$view/etc/dkms/framework.conf.d"
	in_view openssl req -new -x509 -nodes -days 2 -subj "/CN=$key_cn/" -newkey rsa:2048 \
		-keyout /root/mok/signing.key -addext extendedKeyUsage=codeSigning \
		-outform DER -out /root/mok/signing.der 2>&1 || return 1
	printf 'mok_signing_key=/root/mok/signing.key\nmok_certificate=/root/mok/signing.der\n' \
		>"$view/etc/dkms/framework.conf.d/blksnap-test.conf"
	# (apt's package lists may be old: fetched again if that fails.)
	in_view sh -c "$install_cmd" || { in_view apt-get update -qq && in_view sh -c "$install_cmd"; } ||
		return 1
	echo "---- dkms status"
	in_view dkms status
	[ "$(in_view dkms status -m blksnap-rs -k "$release")" = "blksnap-rs/$(pkg_version), $release, x86_64: installed" ] ||
		return 1
	# The removals in the VM need no package lists: without them apt's
	# cache is rebuilt from dpkg's status alone, quickly under the emulated CPU.
	find "$view/var/lib/apt/lists" -maxdepth 1 -type f ! -name lock -delete
	rm -f "$view"/var/cache/apt/*.bin
}
pkg_version() { dpkg-deb -f "${debs[0]}" Version; }
step "apt-get install of both packages: DKMS builds and installs blksnap for $release" install \
	install_packages || finish

ko=$(find "$view/lib/modules/$release/updates/dkms" -name 'blksnap.ko*' 2>/dev/null | head -n1)
check_module() {
	local signer sig_key serial want
	[ -n "$ko" ] || { echo "no blksnap.ko* under /lib/modules/$release/updates/dkms"; return 1; }
	modinfo "$ko" | grep -E '^(filename|vermagic|signer|sig_key|sig_hashalgo):'
	want=$(modinfo -b "$dir/modroot" -k "$release" -F vermagic brd)
	[ "$(modinfo -F vermagic "$ko")" = "$want" ] || { echo "vermagic is not the kernel's: $want"; return 1; }
	signer=$(modinfo -F signer "$ko")
	# (both as hex digits without leading zeros)
	sig_key=$(modinfo -F sig_key "$ko" | tr -d ':' | tr 'a-f' 'A-F' | sed 's/^0*//')
	serial=$(in_view openssl x509 -inform DER -in /root/mok/signing.der -noout -serial | sed 's/^serial=0*//')
	echo "the key's serial: $serial"
	[ "$signer" = "$key_cn" ] || { echo "signer is '$signer', not '$key_cn'"; return 1; }
	[ "$sig_key" = "$serial" ] || { echo "sig_key is not the key's serial"; return 1; }
}
if step "the installed module is signed with DKMS's configured key, vermagic is the kernel's" module check_module; then
	modinfo -F signer "$ko" | sed 's/^/# signer: /'
	modinfo -F sig_key "$ko" | sed 's/^/# sig_key: /'
fi

# What the packages installed, for the check after their removal.
files_ok() {
	local p
	for p in blksnap-rs-dkms blksnap-tools; do
		in_view dpkg -L "$p" >"$t/files-$p.txt" || return 1
		echo "$p: $(wc -l <"$t/files-$p.txt") paths"
	done
	in_view blksnap --version &&
		[ -f "$view/usr/share/man/man1/blksnap.1.gz" ] &&
		[ -f "$view/usr/share/bash-completion/completions/blksnap" ] &&
		[ -f "$view/usr/include/linux/blk_snap.h" ]
}
step "dpkg -L lists the files; the CLI runs, its man page, completions and the UAPI header are there" \
	files files_ok

# 3: the VM, on Debian's kernel, with the view as its writable share (the
# kernel's /proc, /dev and /sys are mounted there by the guest).
umount -R "$view/proc" "$view/dev" "$view/sys" "$view/var/cache/apt/archives"
# The prepared kernel's source and build trees (2 GB, 100,000 files) are of
# no more use: deleted here, as the package's removal in the VM would spend
# minutes deleting them through the emulated CPU. The rest of
# /var/lib/blksnap-rs (the cache's key and log) stays for that removal.
rm -rf "$view/var/lib/blksnap-rs/kernels/$release/source" "$view/var/lib/blksnap-rs/kernels/$release/build"
t0=$SECONDS
KDIR=$dir BLKSNAP_PKG_ROOT=$view BLKSNAP_PKG_FILES=$t BLKSNAP_PKG_RELEASE=$release \
	"$BLKSNAP_ROOT/scripts/vm.sh" --timeout 900 --share "$view" -- tests/package-guest.sh \
	>"$t/guest.out" 2>"$logs/package-vm.log"
vmrc=$?
sed 's/\r$//' "$t/guest.out" >"$logs/package-guest.out"
echo "# vm: exit status $vmrc after $((SECONDS - t0))s; host messages: $logs/package-vm.log"
# The guest's cases, nested under this one and counted one by one.
sed 's/^/    /' "$logs/package-guest.out"
gs=$(grep -cE '^ok [0-9]+.*# *SKIP' "$logs/package-guest.out")
gp=$(($(grep -cE '^ok [0-9]+' "$logs/package-guest.out") - gs))
gf=$(grep -cE '^not ok [0-9]+' "$logs/package-guest.out")
desc="in the VM on $release: modprobe, CLI snapshot and backups, removal while in use, nothing left"
n=$((n + 1)) pass=$((pass + gp)) skip=$((skip + gs))
if [ "$vmrc" = 0 ] && ((gf == 0 && gp > 0)); then
	echo "ok $n $desc"
else
	# A VM that failed without a failed case is one more failure.
	((gf > 0)) || gf=1
	fail=$((fail + gf))
	tail -n 15 "$logs/package-vm.log" | sed 's/^/# /'
	echo "not ok $n $desc"
fi

# 4: after the removal, with a rustc other than the kernel's, the
# installation stops with an error that says so, and installs no module.
wrong_rustc() {
	local out
	mount_view || return 1
	printf '#!/bin/sh\necho "rustc 1.96.0 (000000000 2026-05-28)"\n' >"$view/tmp/rustc-1.96"
	chmod 755 "$view/tmp/rustc-1.96"
	out=$(in_view env RUSTC=/tmp/rustc-1.96 sh -c "$install_cmd" 2>&1)
	echo "$out"
	grep -q "was built with rustc 1.85.1, but /tmp/rustc-1.96 is rustc 1.96.0: a Rust module must be built with the kernel's exact rustc" <<<"$out" ||
		{ echo "---- no error naming the rustc"; return 1; }
	! ls "$view/lib/modules/$release/updates/dkms/blksnap.ko"* 2>/dev/null || { echo "---- a module was installed"; return 1; }
}
step "with a rustc other than the kernel's, apt-get install stops, names it, installs no module" wrong_rustc \
	wrong_rustc && grep -m1 'blksnap-prepare-kernel: error' "$logs/package-wrong_rustc.log" | sed 's/^/# /'

# (lazily: a /dev submount may still be busy for a moment)
umount -R -l "$view"
rm -rf "$t"
finish
