// SPDX-License-Identifier: GPL-2.0

//! blksnap: block-device snapshots and changed-block tracking for backup
//! agents, driven through the ioctls of `include/uapi/linux/blk_snap.h` on
//! `/dev/blksnap`.
//!
//! The crate root owns the module's lifetime: init validates the parameters
//! and registers the control device; unload (`Drop`) undoes it. See
//! `docs/design.md` for the data path, locking and lifetimes.

use kernel::{c_str, prelude::*};

mod ctl;
mod params;
mod sys;
mod uapi;

module! {
    type: Blksnap,
    name: "blksnap",
    author: "blksnap-rs developers",
    description: "Block device snapshots and changed-block tracking",
    license: "GPL",
}

/// The loaded module: what unload must tear down.
struct Blksnap {
    _control: sys::miscdev::MiscDevice<ctl::Control>,
}

impl kernel::Module for Blksnap {
    fn init(module: &'static ThisModule) -> Result<Self> {
        if let Err(e) = sys::params::current().check() {
            pr_err!("parameter {e}\n");
            return Err(EINVAL);
        }
        let control =
            sys::miscdev::MiscDevice::register(c_str!("blksnap"), 0o600, module, ctl::Control)?;
        Ok(Self { _control: control })
    }
}
