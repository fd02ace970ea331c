// SPDX-License-Identifier: GPL-2.0

//! Snapshot images: one disk, `blksnap-image<minor>`, per original device
//! of a taken snapshot, showing the device as it was at TAKE.
//!
//! Image bios arrive in the block layer's submit path, where the module may
//! not wait for I/O of its own. Reads that need no waiting go on to the
//! device holding their data from there, whole when their chunks are alike
//! ([`DiffArea::read_fast`]); the rest are split at chunk boundaries and go
//! to the module's workqueue one chunk at a time, which serves them from the
//! diff area (see [`crate::diff_area`]). Images are writable: writes land in
//! the difference storage.
//!
//! Each image holds its minor as a [`Minor`], taken from the module's
//! [`Minors`] (the lowest free one, by [`crate::minors::MinorMap`]) and
//! given back when the image is dropped, after its disk is gone; so the
//! images of a TAKE that fails give their minors back as they go.
//!
//! Locking: [`Minors`] has its own mutex, taken by [`ImageHandle::create`]
//! and by the drop of an [`ImageHandle`], inside the control state mutex
//! and the snapshot's image list mutex (never the other way round). When an
//! image goes, its disk is removed (`del_gendisk`, which waits for callers
//! of `submit_bio` to leave), then the reads sent on from the submit path
//! are waited for, before its [`Image`] can be freed; bios queued for the
//! worker hold a reference to the image.

use crate::{
    diff_area::DiffArea,
    minors::{MinorMap, Slots, TakeError},
    sys::{
        bdev::MINOR_MAX,
        bio::Bio,
        disk::{image_disk, DiskOperations, ImageDisk, ImageMajor},
        work, NoIo,
    },
};
use kernel::{
    alloc::AllocError,
    new_mutex,
    prelude::*,
    str::CString,
    sync::{Arc, ArcBorrow, Mutex},
};

/// The image minors in use, shared by the module's images; each new image
/// gets the lowest free one.
#[pin_data]
pub(crate) struct Minors {
    #[pin]
    map: Mutex<MinorMap<KVec<bool>>>,
}

impl Slots for KVec<bool> {
    type Error = AllocError;

    fn push_free(&mut self) -> Result<(), AllocError> {
        self.push(false, GFP_KERNEL)
    }
}

impl Minors {
    /// Creates the set with no minor in use; any minor a `dev_t` can carry
    /// may be handed out.
    pub(crate) fn new() -> Result<Arc<Self>> {
        Arc::pin_init(
            pin_init!(Minors {
                map <- new_mutex!(MinorMap::new(KVec::new(), MINOR_MAX), "blksnap_minors"),
            }),
            GFP_KERNEL,
        )
    }

    /// Takes the lowest free minor, which is free again when the returned
    /// [`Minor`] is dropped.
    ///
    /// Fails with `ENOMEM` when the map cannot grow, and with `ENOSPC` when
    /// every minor is in use.
    fn take(pool: &Arc<Self>) -> Result<Minor> {
        let number = pool.map.lock().take().map_err(|e| match e {
            TakeError::Exhausted => ENOSPC,
            TakeError::Grow(e) => Error::from(e),
        })?;
        Ok(Minor {
            pool: pool.clone(),
            number,
        })
    }
}

/// One image minor in use, released when dropped.
struct Minor {
    pool: Arc<Minors>,
    number: u32,
}

impl Drop for Minor {
    fn drop(&mut self) {
        self.pool.map.lock().release(self.number);
    }
}

/// What an image disk serves its bios from.
pub(crate) struct Image {
    area: Arc<DiffArea>,
}

/// An image disk and its [`Image`], owned by the snapshot.
///
/// Dropping it removes the disk, waits for the reads it sent on, then frees
/// its minor.
pub(crate) struct ImageHandle {
    /// `None` only while dropping.
    disk: Option<ImageDisk<Image>>,
    image: Arc<Image>,
    major: u32,
    /// Last: freed once the disk is gone.
    minor: Minor,
}

impl ImageHandle {
    /// Creates the disk `blksnap-image<minor>` for `area`, with the lowest
    /// free minor of `minors` and a number of `major`.
    ///
    /// Fails with `ENOSPC` when every minor is in use, `EFBIG` when the
    /// area's chunk is too large for a disk's limits, `ENOMEM` when memory
    /// runs out, or with the error of the disk's creation; nothing is left
    /// behind then (the minor is free again).
    pub(crate) fn create(
        area: Arc<DiffArea>,
        major: &ImageMajor,
        minors: &Arc<Minors>,
    ) -> Result<Self> {
        let minor = Minors::take(minors)?;
        let name = CString::try_from_fmt(format_args!("blksnap-image{}", minor.number))?;
        let chunk_sectors = u32::try_from(area.chunk_sectors()).map_err(|_| EFBIG)?;
        let capacity = area.capacity();
        let image = Arc::new(Image { area }, GFP_KERNEL)?;
        let disk = ImageDisk::create(
            major,
            minor.number,
            &name,
            capacity,
            chunk_sectors,
            image.clone(),
        )?;
        Ok(ImageHandle {
            disk: Some(disk),
            image,
            major: major.major(),
            minor,
        })
    }

    /// The image's device number, as its major and minor.
    pub(crate) fn dev(&self) -> (u32, u32) {
        (self.major, self.minor.number)
    }

    /// The diff area behind the image.
    pub(crate) fn area(&self) -> &Arc<DiffArea> {
        &self.image.area
    }
}

/// A bio for an image, with the image it belongs to.
struct ImageBio {
    image: Arc<Image>,
    bio: Bio,
}

impl DiskOperations for Image {
    #[inline(always)]
    fn submit_bio(this: ArcBorrow<'_, Self>, bio: Bio) {
        submit(this, bio)
    }
}

image_disk!(Image);

/// Serves a bio of the image disk in its `submit_bio` (see
/// [`crate::sys::disk`]): reads go on to the device holding their data when
/// that needs no waiting, everything else goes to the worker.
fn submit(image: ArcBorrow<'_, Image>, bio: Bio) {
    let Some(bio) = DiffArea::read_fast(image.area.as_arc_borrow(), bio) else {
        return;
    };
    // From here a bio is served one chunk at a time: one that goes on past
    // its first chunk keeps that part, and the rest comes back later.
    let bio = match image.area.first_chunk_part(&bio) {
        Some(part) => match bio.split_front(part) {
            Ok(front) => match DiffArea::read_fast(image.area.as_arc_borrow(), front) {
                Some(front) => front,
                None => return,
            },
            Err(bio) => {
                bio.end(Err(ENOMEM));
                return;
            }
        },
        None => bio,
    };
    let image: Arc<Image> = image.into();
    let queue = image.area.queue().clone();
    if let Err(lost) = work::spawn(queue.queue(), GFP_ATOMIC, ImageBio { image, bio }, serve) {
        lost.bio.end(Err(ENOMEM));
    }
}

/// Serves an image bio on the workqueue, in a no-I/O allocation scope.
fn serve(ib: ImageBio) {
    let _noio = NoIo::enter();
    ib.image.area.image_io(ib.bio);
}

impl Drop for ImageHandle {
    fn drop(&mut self) {
        // No bio reaches the image once the disk is gone; then the reads
        // sent on from its submit path finish.
        drop(self.disk.take());
        self.image.area.wait_reads();
    }
}
