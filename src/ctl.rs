// SPDX-License-Identifier: GPL-2.0

//! The ioctl dispatcher of `/dev/blksnap`.
//!
//! Every command needs `CAP_SYS_ADMIN`. Commands are matched on their full
//! number (type, number, size and direction), so a client built against
//! another layout gets `ENOTTY` instead of a misread argument. Arguments are
//! copied through user-slice readers and writers only.
//!
//! Locking: none yet; the dispatcher holds no state of its own.

use crate::sys::{self, miscdev::FileOps};
use crate::uapi::*;
use core::mem::size_of;
use kernel::{prelude::*, uaccess::UserSlice};

/// The version VERSION reports.
const VERSION: blk_snap_version = blk_snap_version {
    major: 1,
    minor: 0,
    revision: 0,
    build: 0,
};

/// The handler behind `/dev/blksnap`.
pub(crate) struct Control;

impl Control {
    /// `IOCTL_BLK_SNAP_VERSION`: writes the module version.
    fn version(&self, arg: usize) -> Result<isize> {
        UserSlice::new(arg, size_of::<blk_snap_version>())
            .writer()
            .write(&VERSION)?;
        Ok(0)
    }
}

impl FileOps for Control {
    fn ioctl(&self, cmd: u32, arg: usize) -> Result<isize> {
        if !sys::capable_sys_admin() {
            return Err(EPERM);
        }
        match cmd {
            IOCTL_BLK_SNAP_VERSION => self.version(arg),
            // Known commands that this build does not implement yet, and
            // everything else.
            _ => Err(ENOTTY),
        }
    }
}
