#!/usr/bin/env bash
# Builds the Debian packages from this tree and prints their paths.
#
#   scripts/package.sh [--lintian] [--out DIR]
#
#   blksnap-rs-dkms_<version>_all.deb    the module's source as DKMS builds it
#       (/usr/src/blksnap-rs-<version>: dkms.conf, Kbuild, src/, include/,
#       packaging/blksnap-prepare-kernel), blksnap-prepare-kernel in
#       /usr/sbin with its man page, and the UAPI header
#       /usr/include/linux/blk_snap.h
#   blksnap-tools_<version>_<arch>.deb   the blksnap command, its man pages
#       and bash, zsh and fish completions, generated from its clap
#       definition by crates/blksnap-docgen
#
# The version is the workspace's (Cargo.toml), which packaging/debian/changelog
# and dkms.conf must name too; the maintainer and the date come from the
# changelog's last entry (the date also goes into the man pages and the file
# times, so a rebuild of the same tree gives the same packages). The command
# is built with the machine's cargo (cargo build --release); its library
# dependencies (dpkg-shlibdeps) are glibc's and libgcc's, which Debian 12 and
# 13 both satisfy.
#
#   --lintian    run lintian on both packages; fail on any error
#   --out DIR    write the packages to DIR (default target/deb)
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"

run_lintian=0
out=$BLKSNAP_ROOT/target/deb
while (($#)); do
	case $1 in
	--lintian) run_lintian=1 ;;
	--out) out=${2:?--out wants a directory}; shift ;;
	-h | --help) sed -n '2,/^# shellcheck/{/^# shellcheck/d;s/^# \{0,1\}//;p}' "$0"; exit 0 ;;
	*) die "package.sh: unknown argument $1" ;;
	esac
	shift
done
cd "$BLKSNAP_ROOT"
for t in dpkg-deb dpkg-parsechangelog dpkg-shlibdeps; do
	command -v "$t" >/dev/null || die "$t is missing (apt install dpkg-dev)"
done

PKG=packaging/debian
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"$/\1/p' Cargo.toml)
[ -n "$version" ] || die "no version in Cargo.toml's [workspace.package]"
[ "$(dpkg-parsechangelog -l $PKG/changelog -S Version)" = "$version" ] ||
	die "$PKG/changelog's last entry is not version $version (Cargo.toml's)"
grep -qx "PACKAGE_VERSION=\"$version\"" dkms.conf || die "dkms.conf's PACKAGE_VERSION is not $version"
maintainer=$(dpkg-parsechangelog -l $PKG/changelog -S Maintainer)
SOURCE_DATE_EPOCH=$(dpkg-parsechangelog -l $PKG/changelog -S Timestamp)
export SOURCE_DATE_EPOCH
date=$(date -u -d "@$SOURCE_DATE_EPOCH" +%F)
arch=$(dpkg --print-architecture)

log "package: building the blksnap command and its documentation generator"
cargo build --release --quiet -p blksnap-cli -p blksnap-docgen
work=$out/stage
rm -rf "$work"
mkdir -p "$work/docs" "$out"
target/release/blksnap-docgen "$work/docs" "$date"

# Copies FILE to the stage as PATH with MODE.
put() { install -D -m "$3" "$1" "$2"; }
gz() { mkdir -p "$(dirname "$2")"; gzip -9nc "$1" >"$2"; }
# The package's copyright file and changelog.
doc_files() {
	local pkg=$1 stage=$2
	put $PKG/copyright "$stage/usr/share/doc/$pkg/copyright" 644
	# A native package: changelog.gz.
	gz $PKG/changelog "$stage/usr/share/doc/$pkg/changelog.gz"
}
# Writes DEBIAN/control from the package's template, the md5sums, fixes the
# file times, and builds the .deb; prints its path.
build_deb() {
	local pkg=$1 stage=$2 pkg_arch=$3 depends=${4:-} size deb
	mkdir -p "$stage/DEBIAN"
	size=$(du -sk --exclude=DEBIAN "$stage" | cut -f1)
	sed -e "s/@VERSION@/$version/" -e "s/@MAINTAINER@/$maintainer/" -e "s/@SIZE@/$size/" \
		-e "s/@ARCH@/$pkg_arch/" -e "s/@DEPENDS@/$depends/" "$PKG/$pkg/control" >"$stage/DEBIAN/control"
	for f in preinst postinst prerm postrm; do
		[ -f "$PKG/$pkg/$f" ] || continue
		sed "s/@VERSION@/$version/" "$PKG/$pkg/$f" >"$stage/DEBIAN/$f"
		chmod 755 "$stage/DEBIAN/$f"
	done
	(cd "$stage" && find . -path ./DEBIAN -prune -o -type f -printf '%P\n' | LC_ALL=C sort |
		xargs -r -d '\n' md5sum) >"$stage/DEBIAN/md5sums"
	chmod 644 "$stage/DEBIAN/control" "$stage/DEBIAN/md5sums"
	find "$stage" -type d -exec chmod 755 {} +
	find "$stage" -exec touch -h -d "@$SOURCE_DATE_EPOCH" {} +
	deb=$out/${pkg}_${version}_$pkg_arch.deb
	dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >/dev/null
	echo "$deb"
}

# ---- blksnap-rs-dkms
stage=$work/blksnap-rs-dkms
src=$stage/usr/src/blksnap-rs-$version
log "package: blksnap-rs-dkms $version"
# The module's files as git knows them (what is committed or would be),
# without build products.
git ls-files --cached --others --exclude-standard -- Kbuild src include |
	while IFS= read -r f; do
		[ -f "$f" ] && put "$f" "$src/$f" 644
	done
[ -f "$src/src/blksnap.rs" ] || die "no module sources found (is this a git checkout?)"
put dkms.conf "$src/dkms.conf" 644
put packaging/blksnap-prepare-kernel "$src/packaging/blksnap-prepare-kernel" 755
put packaging/blksnap-prepare-kernel "$stage/usr/sbin/blksnap-prepare-kernel" 755
gz packaging/blksnap-prepare-kernel.8 "$stage/usr/share/man/man8/blksnap-prepare-kernel.8.gz"
put include/uapi/linux/blk_snap.h "$stage/usr/include/linux/blk_snap.h" 644
doc_files blksnap-rs-dkms "$stage"
debs=("$(build_deb blksnap-rs-dkms "$stage" all)")

# ---- blksnap-tools
stage=$work/blksnap-tools
log "package: blksnap-tools $version ($arch)"
put target/release/blksnap "$stage/usr/bin/blksnap" 755
strip --strip-all --remove-section=.comment --remove-section=.note "$stage/usr/bin/blksnap"
for f in "$work"/docs/man/*.1; do
	gz "$f" "$stage/usr/share/man/man1/$(basename "$f").gz"
done
put "$work/docs/completions/blksnap.bash" "$stage/usr/share/bash-completion/completions/blksnap" 644
put "$work/docs/completions/_blksnap" "$stage/usr/share/zsh/vendor-completions/_blksnap" 644
put "$work/docs/completions/blksnap.fish" "$stage/usr/share/fish/vendor_completions.d/blksnap.fish" 644
doc_files blksnap-tools "$stage"
# The crates.io crates linked into the binary, with their licenses.
{
	cat $PKG/copyright
	echo
	echo "Files: usr/bin/blksnap"
	echo "Copyright: 2026 blksnap-rs developers, and the authors of these Rust crates"
	echo " linked into it, under the licenses named:"
	cargo tree -p blksnap-cli -e normal,no-proc-macro --prefix none --format '{p}|{l}' |
		sed 's/ (\*)$//' | grep -v ' (/' | LC_ALL=C sort -u |
		awk -F'|' '{ sub(/^v/, "", $1); printf " %s: %s\n", $1, $2 }'
	echo "License: GPL-2 and MIT and Apache-2.0 and Zlib and BSL-1.0"
	cat $PKG/copyright.crates
} >"$stage/usr/share/doc/blksnap-tools/copyright"
mkdir -p "$work/shlibdeps/debian"
printf 'Source: blksnap-rs\n\nPackage: blksnap-tools\nArchitecture: any\n' >"$work/shlibdeps/debian/control"
depends=$(cd "$work/shlibdeps" && dpkg-shlibdeps -O -e"$stage/usr/bin/blksnap" 2>/dev/null |
	sed -n 's/^shlibs:Depends=//p')
[ -n "$depends" ] || die "dpkg-shlibdeps found no dependencies of the blksnap command"
debs+=("$(build_deb blksnap-tools "$stage" "$arch" "$depends")")
rm -rf "$work"

if [ "$run_lintian" = 1 ]; then
	command -v lintian >/dev/null || die "lintian is missing (apt install lintian)"
	log "package: lintian ${debs[*]##*/}"
	lintian --fail-on error --info "${debs[@]}" >&2 || die "lintian found errors"
fi
printf '%s\n' "${debs[@]}"
