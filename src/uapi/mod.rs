// SPDX-License-Identifier: GPL-2.0

//! The blk_snap v1 ABI as Rust types: the structs, enum values and ioctl
//! numbers of `include/uapi/linux/blk_snap.h`.
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
    unreachable_pub,
    clippy::all,
    clippy::undocumented_unsafe_blocks
)]

include!("generated.rs");
include!("abi.rs");

// SAFETY: four `u16`s, no padding: every byte is initialised.
unsafe impl crate::sys::compat::AsBytes for blk_snap_version {}

/// Marks the UAPI structs that user space hands in as readable from any
/// bytes ([`FromBytes`](crate::sys::compat::FromBytes)).
macro_rules! from_user_bytes {
    ($($t:ty),*) => {
        // SAFETY: integers, byte arrays and raw pointers only (the layout is
        // pinned by abi.rs): every bit pattern is a valid value.
        $(unsafe impl crate::sys::compat::FromBytes for $t {})*
    };
}

/// The part of `blk_snap_snapshot_event` that SNAPSHOT_WAIT_EVENT reads:
/// the snapshot and the timeout (the rest is written back).
#[repr(C)]
#[derive(Clone, Copy)]
pub(crate) struct blk_snap_snapshot_event_head {
    /// The snapshot whose event is waited for.
    pub(crate) id: blk_snap_uuid,
    /// How long to wait, in milliseconds.
    pub(crate) timeout_ms: u32,
}

from_user_bytes!(
    blk_snap_snapshot_event_head,
    blk_snap_dev,
    blk_snap_uuid,
    blk_snap_block_range,
    blk_snap_tracker_remove,
    blk_snap_tracker_collect,
    blk_snap_tracker_read_cbt_bitmap,
    blk_snap_tracker_mark_dirty_blocks,
    blk_snap_snapshot_create,
    blk_snap_snapshot_destroy,
    blk_snap_snapshot_append_storage,
    blk_snap_snapshot_take,
    blk_snap_snapshot_collect,
    blk_snap_snapshot_collect_images
);
