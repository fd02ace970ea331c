#!/usr/bin/env bash
# Checks the module's two layers (docs/design.md, "Layers"):
#
#   1. no file under src/sys/ (the boundary to the kernel's C API) names a
#      domain module (`crate::<module>` for any module of src/blksnap.rs
#      but `sys`);
#   2. `unsafe` outside src/sys/ appears only where ALLOWED_UNSAFE below
#      says, at most that many times per file.
#
# The lists of exceptions below are what is left to move behind the
# boundary; an entry may only be removed, never added. Prints each
# violation and exits 1 if there is one.
#
#   scripts/check-layers.sh
# shellcheck source-path=SCRIPTDIR
source "$(dirname "$0")/common.sh"
cd "$BLKSNAP_ROOT" || exit 1

# Upcalls from sys/ that still name domain code: "file module".
ALLOWED_UPCALLS=()
# `unsafe` outside sys/: "file count".
ALLOWED_UNSAFE=(
	"src/uapi/mod.rs 2"  # unsafe impl AsBytes/FromBytes of the plain-data UAPI types
)

bad=0
violation() { echo "check-layers: $*"; bad=1; }

mapfile -t domain < <(sed -n 's/^\(pub[^ ]* \)\{0,1\}mod \([a-z_0-9]*\);.*/\2/p' src/blksnap.rs | grep -vx sys)
[ "${#domain[@]}" -gt 0 ] || die "no modules found in src/blksnap.rs"

for f in $(find src/sys -name '*.rs' | sort); do
	for m in "${domain[@]}"; do
		grep -qE "crate::$m\b" "$f" || continue
		[[ " ${ALLOWED_UPCALLS[*]} " == *" $f $m "* ]] && continue
		violation "$f names the domain module crate::$m:"
		grep -nE "crate::$m\b" "$f" | sed 's/^/  /'
	done
done

for f in $(find src -name '*.rs' -not -path 'src/sys/*' -not -name generated.rs | sort); do
	# Code lines only: comments may say the word.
	n=$(grep -vE '^\s*//' "$f" | grep -cE '\bunsafe\b' || true)
	allowed=0
	for entry in "${ALLOWED_UNSAFE[@]}"; do
		[ "${entry% *}" = "$f" ] && allowed=${entry##* }
	done
	if [ "$n" -gt "$allowed" ]; then
		violation "$f has $n unsafe outside src/sys/ (allowed: $allowed):"
		grep -nE '\bunsafe\b' "$f" | grep -vE '^[0-9]+:\s*//' | sed 's/^/  /'
	fi
done
exit "$bad"
