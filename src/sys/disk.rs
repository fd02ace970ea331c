// SPDX-License-Identifier: GPL-2.0

//! Snapshot image disks: the block major they share ([`ImageMajor`]) and one
//! bio-based disk per image ([`ImageDisk`]), whose bios go to the
//! [`DiskOperations`] of its data, the type that [`image_disk!`] names.
//!
//! Each disk's limits keep a bio to at most 1 MiB or one chunk, whichever
//! is larger, and `bio_split_to_limits` enforces them before the image sees
//! a bio; the image splits further at chunk boundaries where it must.
//!
//! Locking: none of its own. The disk's `private_data` is the address of the
//! data the [`ImageDisk`] holds a reference to; `del_gendisk` (in `Drop`)
//! returns only when no call into `submit_bio` is left, so the data outlives
//! them all.

use super::{bindings, bio::Bio};
use kernel::{
    error::from_err_ptr,
    prelude::*,
    str::CStr,
    sync::{Arc, ArcBorrow},
};

/// What an image disk does with its bios, implemented by the data type
/// that [`image_disk!`] names.
pub(crate) trait DiskOperations: Send + Sync + Sized {
    /// Serves `bio`, in the block layer's submit path (it may not wait for
    /// I/O of its own): passes it on, ends it, or hands it to a worker.
    fn submit_bio(this: ArcBorrow<'_, Self>, bio: Bio);
}

/// The one type whose [`DiskOperations`] the image disks' `submit_bio`
/// calls.
///
/// # Safety
///
/// Implemented only by [`image_disk!`], for the type its entry casts the
/// disks' private data to.
pub(crate) unsafe trait ImageDiskData: DiskOperations {}

/// Makes `$data`, a type implementing [`DiskOperations`], the data of the
/// image disks: defines their `submit_bio`, which calls `$data`'s directly.
/// Once per module.
macro_rules! image_disk {
    ($data:ty) => {
        /// The image disks' `submit_bio` (see
        /// [`sys::disk::submit_bio`](crate::sys::disk::submit_bio)).
        ///
        /// # Safety
        ///
        /// As for [`sys::disk::submit_bio`](crate::sys::disk::submit_bio);
        /// only the block layer calls it.
        #[no_mangle]
        unsafe extern "C" fn blksnap_image_submit_bio(bio: *mut $crate::sys::disk::RawBio) {
            // SAFETY: the caller's guarantee, passed on.
            unsafe { $crate::sys::disk::submit_bio::<$data>(bio) }
        }

        // SAFETY: the entry above casts every image disk's private data to
        // `$data`, and only `ImageDisk<$data>` can be created.
        unsafe impl $crate::sys::disk::ImageDiskData for $data {}
    };
}
pub(crate) use image_disk;

/// The C `struct bio`, as the disks' `submit_bio` receives it.
pub(crate) type RawBio = bindings::bio;

/// The dynamic block major of all image disks, unregistered when dropped.
pub(crate) struct ImageMajor(u32);

impl ImageMajor {
    /// Registers `blksnap-image` as a block major with a dynamic number.
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

/// One image disk, `/dev/<name>`, serving its bios with `T`, removed when
/// dropped.
///
/// # Invariants
///
/// `disk` was added by `blksnap_disk_create` with the address of `*_data` as
/// its private data and is removed only by `Drop`.
pub(crate) struct ImageDisk<T: ImageDiskData> {
    disk: *mut bindings::gendisk,
    /// Only kept: its address is the disk's private data until `Drop`
    /// removed the disk.
    _data: Arc<T>,
}

// SAFETY: the disk may be removed from any thread in process context; `T`
// is `Send + Sync`.
unsafe impl<T: ImageDiskData> Send for ImageDisk<T> {}
// SAFETY: no method but `Drop` touches the disk.
unsafe impl<T: ImageDiskData> Sync for ImageDisk<T> {}

impl<T: ImageDiskData> ImageDisk<T> {
    /// Creates and adds the disk `name` with the number `major:minor`, of
    /// `capacity` sectors, whose bios go to `T::submit_bio(data, ..)` until
    /// it is dropped.
    ///
    /// The disk's bios are at most `chunk_sectors` or 1 MiB long, whichever
    /// is larger.
    pub(crate) fn create(
        major: &ImageMajor,
        minor: u32,
        name: &CStr,
        capacity: u64,
        chunk_sectors: u32,
        data: Arc<T>,
    ) -> Result<Self> {
        let private = core::ptr::from_ref::<T>(&data);
        // Bios may span chunks: the image splits them where it must.
        let max_hw_sectors = chunk_sectors.max(2048);
        // SAFETY: `name` is NUL-terminated; `private` stays valid as long
        // as the disk: the value keeps `data` until after `Drop` removed it.
        let disk = from_err_ptr(unsafe {
            bindings::blksnap_disk_create(
                major.0 as i32,
                minor as i32,
                name.as_char_ptr(),
                capacity,
                max_hw_sectors,
                private.cast_mut().cast(),
            )
        })
        // Every argument is valid here, yet device_add() reports a failed
        // allocation of the device's name (dev_set_name() in add_disk()) as
        // EINVAL: to the caller that is running out of memory.
        .map_err(|e| if e == EINVAL { ENOMEM } else { e })?;
        // INVARIANT: added with `data`'s address, which the value keeps.
        Ok(ImageDisk { disk, _data: data })
    }
}

impl<T: ImageDiskData> Drop for ImageDisk<T> {
    fn drop(&mut self) {
        // SAFETY: added by `create` (the invariant), removed once; `_data`
        // is dropped after this returns, when no `submit_bio` is left.
        unsafe { bindings::blksnap_disk_destroy(self.disk) };
    }
}

/// Serves a bio of an image disk for the data type `T` that [`image_disk!`]
/// named: splits it to the disk's limits, then hands it to `T`'s
/// [`DiskOperations::submit_bio`].
///
/// # Safety
///
/// Called by the block layer with a bio for one of the image disks, all of
/// which are `ImageDisk<T>`.
#[inline(always)]
pub(crate) unsafe fn submit_bio<T: ImageDiskData>(bio: *mut RawBio) {
    // SAFETY: splitting is the driver's job for bio-based disks; the
    // remainder is resubmitted by the block layer.
    let bio = unsafe { bindings::bio_split_to_limits(bio) };
    // SAFETY: a bio for one of the image disks (the caller's guarantee).
    let private = unsafe { bindings::blksnap_bio_disk_private(bio) };
    // SAFETY: the block layer hands the bio to us.
    let Some(bio) = (unsafe { Bio::from_raw(bio) }) else {
        return;
    };
    // SAFETY: `private` is the address of the `Arc<T>`'s data the disk's
    // `ImageDisk<T>` holds until the disk is removed (the invariant), and
    // the block layer is inside the disk's `submit_bio`.
    let data = unsafe { ArcBorrow::from_raw(private.cast_const().cast::<T>()) };
    T::submit_bio(data, bio);
}
