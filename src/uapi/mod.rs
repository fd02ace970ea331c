// SPDX-License-Identifier: GPL-2.0

//! The blk_snap v1 ABI as Rust types.
//!
//! The structs and enum values are generated at build time from
//! `include/uapi/linux/blk_snap.h`; the ioctl numbers and the compile-time
//! checks of every size, offset and number are in `abi.rs`, which user space
//! (crates/blksnap) includes the same way.
//!
//! Locking: none; plain data.

#![allow(
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    clippy::all
)]

include!("generated.rs");
include!("abi.rs");

// SAFETY: four `u16`s, no padding: every byte is initialised.
unsafe impl kernel::types::AsBytes for blk_snap_version {}
