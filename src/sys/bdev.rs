// SPDX-License-Identifier: GPL-2.0

//! [`BlockDevice`]: a block device the module holds open.
//!
//! Opening by device number (`bdev_file_open_by_dev`) pins the
//! `block_device` for as long as the value lives, without claiming it: the
//! device stays usable (and mountable) by everyone else. If the disk goes
//! away meanwhile, the `block_device` stays valid and reports zero capacity.
//!
//! Locking: none of its own; freezing uses the block layer's freeze mutex.

use super::bindings;
use kernel::{error::from_err_ptr, prelude::*};

/// The largest major number a `dev_t` can carry.
const MAJOR_MAX: u32 = (1 << 12) - 1;
/// The largest minor number a `dev_t` can carry.
pub(crate) const MINOR_MAX: u32 = (1 << 20) - 1;

/// A device number: the kernel's `dev_t` (`MKDEV(major, minor)`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct DevNum(u32);

impl DevNum {
    /// Makes the number of `major:minor`; `None` if a part does not fit.
    pub(crate) fn new(major: u32, minor: u32) -> Option<Self> {
        (major <= MAJOR_MAX && minor <= MINOR_MAX).then_some(DevNum((major << 20) | minor))
    }

    /// Takes a number as the kernel stores it (every `u32` is one).
    pub(super) fn from_raw(dev: u32) -> Self {
        DevNum(dev)
    }

    /// The number as the kernel stores it.
    pub(crate) fn raw(self) -> u32 {
        self.0
    }

    /// The major part.
    pub(crate) fn major(self) -> u32 {
        self.0 >> 20
    }

    /// The minor part.
    pub(crate) fn minor(self) -> u32 {
        self.0 & MINOR_MAX
    }
}

/// A block device the module holds open, shared (not claimed).
///
/// # Invariants
///
/// `file` is a block-device file from `bdev_file_open_by_dev` that this value
/// owns, and `bdev` is its `block_device`.
pub(crate) struct BlockDevice {
    file: *mut bindings::file,
    bdev: *mut bindings::block_device,
}

// SAFETY: the file and block device may be used and released from any
// thread.
unsafe impl Send for BlockDevice {}
// SAFETY: every method takes `&self` and calls thread-safe block-layer
// functions.
unsafe impl Sync for BlockDevice {}

impl BlockDevice {
    /// Opens the block device `dev` for reading; `ENXIO` or `ENODEV` if
    /// there is none.
    pub(crate) fn open(dev: DevNum) -> Result<Self> {
        // SAFETY: no holder, no holder ops: a shared, non-exclusive open.
        let file = from_err_ptr(unsafe {
            bindings::bdev_file_open_by_dev(
                dev.raw(),
                bindings::BLKSNAP_OPEN_READ,
                core::ptr::null_mut(),
                core::ptr::null(),
            )
        })?;
        // SAFETY: `file` is an open block-device file.
        let bdev = unsafe { bindings::file_bdev(file) };
        // INVARIANT: both come from the open just above.
        Ok(BlockDevice { file, bdev })
    }

    /// The `block_device`, for the rest of the boundary layer.
    pub(super) fn raw(&self) -> *mut bindings::block_device {
        self.bdev
    }

    /// The smallest I/O size the device performs well, in bytes.
    pub(crate) fn io_min(&self) -> u32 {
        // SAFETY: `bdev` is valid while the file is open (invariant).
        unsafe { bindings::blksnap_bdev_io_min(self.bdev) }
    }

    /// Which `block_device` this is, to compare with a bio's
    /// ([`BioInfo::dev`](super::bio::BioInfo::dev)).
    pub(crate) fn identity(&self) -> super::bio::DevIdentity {
        super::bio::DevIdentity::of(self.bdev)
    }

    /// The device's number.
    pub(crate) fn dev(&self) -> DevNum {
        // SAFETY: `bdev` is valid while the file is open (invariant).
        DevNum(unsafe { bindings::blksnap_bdev_dev(self.bdev) })
    }

    /// The device's capacity in sectors (0 once the disk is gone).
    pub(crate) fn nr_sectors(&self) -> u64 {
        // SAFETY: `bdev` is valid while the file is open (invariant).
        unsafe { bindings::blksnap_bdev_nr_sectors(self.bdev) }
    }

    /// Freezes the filesystem on the device, if any; [`Frozen`] thaws it.
    pub(crate) fn freeze(&self) -> Result<Frozen<'_>> {
        // SAFETY: `bdev` is valid (invariant); process context.
        kernel::error::to_result(unsafe { bindings::bdev_freeze(self.bdev) })?;
        Ok(Frozen { bdev: self })
    }
}

impl Drop for BlockDevice {
    fn drop(&mut self) {
        // SAFETY: the file is ours (invariant) and released exactly once.
        unsafe { bindings::fput(self.file) };
    }
}

/// A device frozen by [`BlockDevice::freeze`], thawed when dropped.
pub(crate) struct Frozen<'a> {
    bdev: &'a BlockDevice,
}

impl Drop for Frozen<'_> {
    fn drop(&mut self) {
        // SAFETY: frozen by `freeze`; each freeze is thawed exactly once.
        // A thaw error only means the filesystem was already thawed.
        let _ = unsafe { bindings::bdev_thaw(self.bdev.bdev) };
    }
}
