// SPDX-License-Identifier: GPL-2.0
//! Generates the Rust types of `include/uapi/linux/blk_snap.h` with the same
//! options the module's Kbuild uses, so `src/uapi/abi.rs` can be included
//! after them in both places.
//!
//! bindgen loads libclang while this runs. `LIBCLANG_PATH` names its
//! directory when set; otherwise the first LLVM on the `PATH` that has one
//! gives it (`llvm-config --libdir` of `$LLVM_CONFIG_PATH`, `llvm-config`,
//! then the versioned `llvm-config-NN`, newest first); failing that,
//! clang-sys searches the usual library directories itself.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let manifest_dir =
        PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("CARGO_MANIFEST_DIR"));
    let header = manifest_dir.join("../../include/uapi/linux/blk_snap.h");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("OUT_DIR")).join("blk_snap.rs");

    println!("cargo:rerun-if-changed={}", header.display());
    println!("cargo:rerun-if-env-changed=LIBCLANG_PATH");
    println!("cargo:rerun-if-env-changed=LLVM_CONFIG_PATH");

    if env::var_os("LIBCLANG_PATH").is_none() {
        if let Some(dir) = llvm_libclang_dir() {
            env::set_var("LIBCLANG_PATH", dir);
        }
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

/// The library directory of the first `llvm-config` that names one holding
/// a libclang (Debian's plain `llvm-config` may be an LLVM without it).
fn llvm_libclang_dir() -> Option<PathBuf> {
    let mut versioned: Vec<(u32, OsString)> = env::split_paths(&env::var_os("PATH")?)
        .filter_map(|dir| fs::read_dir(dir).ok())
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name();
            let version = name.to_str()?.strip_prefix("llvm-config-")?.parse().ok()?;
            Some((version, name))
        })
        .collect();
    versioned.sort_by_key(|(version, _)| std::cmp::Reverse(*version));
    env::var_os("LLVM_CONFIG_PATH")
        .into_iter()
        .chain([OsString::from("llvm-config")])
        .chain(versioned.into_iter().map(|(_, name)| name))
        .filter_map(|cmd| Command::new(cmd).arg("--libdir").output().ok())
        .filter(|out| out.status.success())
        .map(|out| PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()))
        .find(|dir| has_libclang(dir))
}

/// Whether `dir` holds a shared libclang (`libclang.so`, `libclang-19.so.1`...).
fn has_libclang(dir: &Path) -> bool {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .any(|entry| {
            entry.file_name().to_str().is_some_and(|name| {
                name.starts_with("libclang")
                    && !name.starts_with("libclang-cpp")
                    && name.contains(".so")
            })
        })
}
