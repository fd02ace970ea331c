// SPDX-License-Identifier: GPL-2.0
//! Generates the Rust types of `include/uapi/linux/blk_snap.h` with the same
//! options the module's Kbuild uses, so `src/uapi/abi.rs` can be included
//! after them in both places.

use std::env;
use std::path::PathBuf;

/// Where Debian's libclang 19 lives; used when `LIBCLANG_PATH` is not set.
const DEFAULT_LIBCLANG_PATH: &str = "/usr/lib/llvm-19/lib";

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let header = manifest_dir.join("../../include/uapi/linux/blk_snap.h");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("blk_snap.rs");

    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");

    if env::var_os("LIBCLANG_PATH").is_none()
        && std::path::Path::new(DEFAULT_LIBCLANG_PATH).is_dir()
    {
        env::set_var("LIBCLANG_PATH", DEFAULT_LIBCLANG_PATH);
    }

    let bindings = bindgen::Builder::default()
        .header(header.to_string_lossy())
        .allowlist_type("blk_snap_.*")
        .allowlist_var("BLK_SNAP.*")
        .prepend_enum_name(false)
        .derive_default(true)
        .layout_tests(false)
        .generate_comments(false)
        .formatter(bindgen::Formatter::Prettyplease)
        // The header uses C23's `static_assert` keyword; older C modes only
        // know `_Static_assert`.
        .clang_arg("-Dstatic_assert=_Static_assert")
        .generate()
        .unwrap_or_else(|e| panic!("bindgen failed on {}: {e}", header.display()));

    bindings
        .write_to_file(&out)
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", out.display()));
}
