// SPDX-License-Identifier: GPL-2.0

//! Snapshot image disks: the block major they share ([`ImageMajor`]) and one
//! bio-based disk per image ([`ImageDisk`]), whose bios go to
//! `crate::snapimage::submit`.
//!
//! Each disk's limits keep a bio to at most 1 MiB or one chunk, whichever
//! is larger, and `bio_split_to_limits` enforces them before the image sees
//! a bio; the image splits further at chunk boundaries where it must.
//!
//! Locking: none of its own. The disk's `private_data` is the address of the
//! image that owns the [`ImageDisk`]; `del_gendisk` (in `Drop`) returns only
//! when no call into `submit_bio` is left, so the image outlives them all.

use super::{bindings, bio::Bio};
use crate::snapimage::Image;
use kernel::{error::from_err_ptr, prelude::*, str::CStr, sync::ArcBorrow};

/// The dynamic block major of all image disks.
pub(crate) struct ImageMajor(u32);

impl ImageMajor {
    /// Registers `blksnap-image` as a block major.
    pub(crate) fn register() -> Result<Self> {
        // SAFETY: the name is a static C string; `Drop` unregisters.
        let major = unsafe { bindings::blksnap_register_blkdev() };
        kernel::error::to_result(major)?;
        Ok(ImageMajor(major as u32))
    }

    /// The major number.
    pub(crate) fn major(&self) -> u32 {
        self.0
    }
}

impl Drop for ImageMajor {
    fn drop(&mut self) {
        // SAFETY: registered by `register`; every disk is gone (they are
        // owned by snapshots, dropped before the module's major).
        unsafe { bindings::blksnap_unregister_blkdev(self.0) };
    }
}

/// One image disk, `/dev/<name>`.
///
/// # Invariants
///
/// `disk` was added by `blksnap_disk_create` and is removed only by `Drop`.
pub(crate) struct ImageDisk {
    disk: *mut bindings::gendisk,
}

// SAFETY: the disk may be removed from any thread in process context.
unsafe impl Send for ImageDisk {}
// SAFETY: no method but `Drop` touches the disk.
unsafe impl Sync for ImageDisk {}

impl ImageDisk {
    /// Creates and adds the disk. Its bios reach
    /// `crate::snapimage::submit(private, ..)`.
    ///
    /// # Safety
    ///
    /// `private` must point at the `Image` inside an `Arc` that stays alive
    /// until the returned value is dropped.
    pub(crate) unsafe fn create(
        major: &ImageMajor,
        minor: u32,
        name: &CStr,
        capacity: u64,
        chunk_sectors: u32,
        private: *const core::ffi::c_void,
    ) -> Result<Self> {
        // SAFETY: `name` is NUL-terminated; `private` is valid as long as the
        // disk (the caller's guarantee).
        let disk = from_err_ptr(unsafe {
            bindings::blksnap_disk_create(
                major.0 as i32,
                minor as i32,
                name.as_char_ptr(),
                capacity,
                chunk_sectors,
                private.cast_mut().cast(),
            )
        })?;
        Ok(ImageDisk { disk })
    }
}

impl Drop for ImageDisk {
    fn drop(&mut self) {
        // SAFETY: added by `create` (the invariant), removed once.
        unsafe { bindings::blksnap_disk_destroy(self.disk) };
    }
}

/// The image disks' `submit_bio`.
///
/// # Safety
///
/// Called by the block layer with a bio for one of our disks.
#[no_mangle]
unsafe extern "C" fn blksnap_image_submit_bio(bio: *mut bindings::bio) {
    // SAFETY: splitting is the driver's job for bio-based disks; the
    // remainder is resubmitted by the block layer.
    let bio = unsafe { bindings::bio_split_to_limits(bio) };
    // SAFETY: the disk's private data is its image (see `create`).
    let private = unsafe { bindings::blksnap_bio_disk_private(bio) };
    // SAFETY: the block layer hands the bio to us.
    let Some(bio) = (unsafe { Bio::from_raw(bio) }) else {
        return;
    };
    // SAFETY: `private` is the `Arc<Image>` of the handle that owns this
    // disk, alive while the disk is (see `create`).
    let image = unsafe { ArcBorrow::from_raw(private.cast_const().cast::<Image>()) };
    crate::snapimage::submit(image, bio);
}
