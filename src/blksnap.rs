// SPDX-License-Identifier: GPL-2.0

//! blksnap: block-device snapshots and changed-block tracking for backup
//! agents, driven through the ioctls of `include/uapi/linux/blk_snap.h` on
//! `/dev/blksnap`.
//!
//! The crate root owns the module's lifetime: init validates the parameters,
//! sets up the module's I/O resources, installs the bio hook and registers
//! the control device; unload (`Drop`, fields in declaration order) undoes
//! it in reverse. See `docs/design.md`
//! for the data path, locking and lifetimes.

use kernel::{c_str, prelude::*, sync::Arc};

// Kernel-free logic shared with the host tests (crates/blksnap-logic): its
// `pub` items and test-only accessors are the host crate's API.
#[expect(dead_code, unreachable_pub, reason = "also the host tests' API")]
mod cbt_map;
#[expect(unreachable_pub, reason = "also the host tests' API")]
mod chunk_bits;
#[expect(unreachable_pub, reason = "also the host tests' API")]
mod chunk_geometry;
#[expect(dead_code, unreachable_pub, reason = "also the host tests' API")]
mod chunk_map;
mod ctl;
mod diff_area;
#[expect(dead_code, unreachable_pub, reason = "also the host tests' API")]
mod diff_storage;
mod event_queue;
mod filter;
#[expect(unreachable_pub, reason = "also the host tests' API")]
mod minors;
#[expect(dead_code, unreachable_pub, reason = "also the host tests' API")]
mod params;
#[expect(dead_code, unreachable_pub, reason = "also the host tests' API")]
mod ring;
mod snapimage;
mod snapshot;
mod storage;
mod sys;
mod tracker;
mod uapi;

// The nine module parameters: `int`s whose writes are range-checked.
sys::params::int_params!(params::Params, check: params::check_value, {
    tracking_block_minimum_shift => blksnap_param_tracking_block_minimum_shift,
    tracking_block_maximum_shift => blksnap_param_tracking_block_maximum_shift,
    tracking_block_maximum_count => blksnap_param_tracking_block_maximum_count,
    chunk_minimum_shift => blksnap_param_chunk_minimum_shift,
    chunk_maximum_shift => blksnap_param_chunk_maximum_shift,
    chunk_maximum_count => blksnap_param_chunk_maximum_count,
    chunk_maximum_in_cache => blksnap_param_chunk_maximum_in_cache,
    free_diff_buffer_pool_size => blksnap_param_free_diff_buffer_pool_size,
    diff_storage_minimum => blksnap_param_diff_storage_minimum,
});

sys::compat::kernel_module! {
    type: Blksnap,
    name: "blksnap",
    author: "blksnap-rs developers",
    description: "Block device snapshots and changed-block tracking",
    license: "GPL",
}

/// The loaded module: what unload must tear down, in this order. The
/// control device goes first (its state destroys every snapshot and
/// tracker), then the hook (no bio enters the filter any more), then the
/// workqueue (drained), then the bio set the module's bios come from.
struct Blksnap {
    _control: sys::miscdev::MiscDevice<ctl::Control>,
    _hook: sys::hook::BioHook,
    _queue: sys::QueueGuard,
    _bio_set: sys::BioSet,
}

impl kernel::Module for Blksnap {
    fn init(module: &'static ThisModule) -> Result<Self> {
        if let Err(e) = params::Params::current().check() {
            pr_err!("parameter {}\n", format_args!("{e}"));
            return Err(EINVAL);
        }
        let bio_set = sys::BioSet::new()?;
        let queue = Arc::new(sys::CowQueue::new()?, GFP_KERNEL)?;
        let major = sys::disk::ImageMajor::register()?;
        let hook = sys::hook::BioHook::install()?;
        let control = sys::miscdev::MiscDevice::register(
            c_str!("blksnap"),
            0o600,
            module,
            ctl::Control::new(queue.clone(), major)?,
        )?;
        Ok(Self {
            _control: control,
            _hook: hook,
            _queue: sys::QueueGuard(queue),
            _bio_set: bio_set,
        })
    }
}
