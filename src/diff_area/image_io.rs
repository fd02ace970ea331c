// SPDX-License-Identifier: GPL-2.0

//! Image I/O: the snapshot image's reads and writes, served from the
//! chunks' states. A read of a chunk not copied yet reads the original and
//! counts as one of its group's readers, which a write to the original
//! waits for (and while one waits, such reads wait for it); a read of a
//! stored chunk reads its slot; a write to the image copies the chunk
//! first, then writes its slot.
//!
//! Reads that need no waiting are sent on from the image's submit path
//! ([`DiffArea::read_fast`]) and complete in [`DiffArea::read_done`], in
//! any context; the rest are served one chunk at a time on the workqueue
//! ([`DiffArea::image_io`]).
//!
//! Locking: chunk states under `DiffArea::chunks` (see `diff_area`).
//! `DiffArea::inflight` counts reads sent on from the submit path. A read
//! that counted as a reader of the original drops it under `chunks`; one
//! from the difference storage drops it with one atomic operation, unless
//! [`DiffArea::wait_reads`] raised [`DRAINING`] in it (under `chunks`):
//! then under `chunks`, with `changed` signalled.

use super::{DiffArea, Step};
use crate::sys::compat::prelude::*;
use crate::{
    chunk_geometry::ReadTag,
    chunk_map::Entry,
    storage::Slot,
    sys::bio::{Bio, RedirectDone, Via},
};
use core::sync::atomic::Ordering;
use kernel::sync::ArcBorrow;

/// The bit of [`DiffArea::inflight`] that says [`DiffArea::wait_reads`]
/// waits for the count to drop to zero.
const DRAINING: usize = 1 << (usize::BITS - 1);

/// Where an image read of a chunk goes.
enum Source {
    /// The original device: the chunk is not copied (the read counts as
    /// one of its group's readers).
    Original,
    /// The chunk's slot in the difference storage.
    Stored(Slot),
}

/// The completion of a read sent on by [`DiffArea::read_fast`].
impl RedirectDone for DiffArea {
    fn redirect_done(&self, tag: u64, result: Result) -> Result {
        self.read_done(tag, result)
    }
}

impl DiffArea {
    /// Serves a bio of the snapshot image, in process context. The bio lies
    /// within one chunk (the image disk's limits split it).
    pub(crate) fn image_io(&self, bio: Bio) {
        let result = self.do_image_io(&bio);
        if let Err(e) = result {
            // A failed write loses what the image was given; a read that
            // failed with a device's I/O error only fails.
            if (bio.is_write() || e != EIO) && self.active.load(Ordering::Acquire) {
                self.corrupt(e);
            }
        }
        bio.end(result);
    }

    fn do_image_io(&self, bio: &Bio) -> Result {
        if !self.usable() {
            return Err(EIO);
        }
        let sectors = bio.info().range();
        if sectors.is_empty() {
            return Ok(());
        }
        let sector = sectors.start;
        let range = self.geometry.range(sectors);
        if range.end - range.start != 1 {
            return Err(EIO);
        }
        let c = range.start;
        let offset = sector - c * self.geometry.chunk_sectors();
        if bio.is_write() {
            let slot = self.ensure_stored(c)?;
            let storage = self.storage.device(slot.dev)?;
            bio.redirect_wait(&storage, slot.sector + offset)?;
            self.tracker.mark_dirty(sectors);
            return Ok(());
        }
        let source = self.with_chunks(GFP_KERNEL, |chunks, _| {
            if !self.usable() {
                return Step::Done(Err(EIO));
            }
            match chunks.get(c) {
                Some(Entry::Stored { dev, sector }) => {
                    Step::Done(Ok(Source::Stored(Slot { dev, sector })))
                }
                Some(Entry::Failed) => Step::Done(Err(EIO)),
                Some(Entry::Copying) => Step::Wait,
                // A writer waits for the group's reads: no new one starts.
                None if chunks.writer_waits(c) => Step::Wait,
                None if chunks.add_reader(c) => Step::Done(Ok(Source::Original)),
                None => Step::Done(Err(EBUSY)),
            }
        })??;
        match source {
            Source::Stored(slot) => {
                let storage = self.storage.device(slot.dev)?;
                bio.redirect_wait(&storage, slot.sector + offset)
            }
            Source::Original => self.read_original(bio, c, sector),
        }
    }

    /// Serves an image read without waiting, from the image's submit path:
    /// a read whose chunks are all not copied is sent on to the original,
    /// and one whose chunks are all stored, one after the other on one
    /// storage device, to that device; it completes in
    /// [`DiffArea::read_done`]. Gives the bio back when it needs the worker
    /// or must be served chunk by chunk: a write, a chunk being copied,
    /// chunks of both kinds, a failed allocation, or an error to report.
    /// Does not sleep.
    pub(crate) fn read_fast(this: ArcBorrow<'_, Self>, bio: Bio) -> Option<Bio> {
        if bio.is_write() || !this.usable() {
            return Some(bio);
        }
        let sectors = bio.info().range();
        let sector = sectors.start;
        let range = this.geometry.range(sectors);
        let Some(tag) = ReadTag::new(range.clone()) else {
            return Some(bio);
        };
        let cs = this.geometry.chunk_sectors();
        let mut chunks = this.chunks.lock();
        // Where the first chunk's data is; every other chunk must agree.
        let mut first: Option<Source> = None;
        for c in range.clone() {
            let here = match chunks.get(c) {
                None if !chunks.writer_waits(c) => Source::Original,
                Some(Entry::Stored { dev, sector }) => Source::Stored(Slot { dev, sector }),
                _ => return Some(bio),
            };
            let agrees = match (&first, &here) {
                (None, _) | (Some(Source::Original), Source::Original) => true,
                (Some(Source::Stored(a)), Source::Stored(b)) => {
                    a.dev == b.dev && b.sector == a.sector + (c - range.start) * cs
                }
                _ => false,
            };
            if !agrees {
                return Some(bio);
            }
            first.get_or_insert(here);
        }
        let Some(source) = first else {
            return Some(bio);
        };
        // A count at its limit: the worker serves it.
        if matches!(source, Source::Original) && !chunks.add_readers(range.clone()) {
            return Some(bio);
        }
        drop(chunks);
        let (via, target, counted) = match source {
            Source::Stored(slot) => {
                let Ok(storage) = this.storage.device(slot.dev) else {
                    return Some(bio);
                };
                let offset = sector - range.start * cs;
                (Via::Device(storage), slot.sector + offset, false)
            }
            Source::Original => (Via::Own(|area: &Self| area.tracker.bdev()), sector, true),
        };
        this.inflight.fetch_add(1, Ordering::AcqRel);
        let tag = tag.counted(counted).into_raw();
        match bio.redirect(this, via, target, tag) {
            Ok(()) => None,
            Err(bio) => {
                // Not sent: undo the counting; the worker serves it.
                let _ = this.read_done(tag, Ok(()));
                Some(bio)
            }
        }
    }

    /// The part of an image bio that lies in its first chunk, in sectors,
    /// if the bio goes on past that chunk.
    pub(crate) fn first_chunk_part(&self, bio: &Bio) -> Option<u64> {
        self.geometry.first_part(bio.info().range())
    }

    /// Completes a read sent on by [`DiffArea::read_fast`] (`tag` says
    /// which chunks, and whether they counted it as a reader of the
    /// original), in any context; returns the bio's result. A read of the
    /// original that ends after the snapshot stopped holding back writes
    /// may have seen new data: it fails.
    pub(crate) fn read_done(&self, tag: u64, result: Result) -> Result {
        let tag = ReadTag::from_raw(tag);
        let counted = tag.is_counted();
        let result = if counted && result.is_ok() && !self.usable() {
            Err(EIO)
        } else {
            result
        };
        if !counted {
            // Nobody waits for this read unless `wait_reads` said so.
            let dropped = self
                .inflight
                .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                    (n & DRAINING == 0).then(|| n.saturating_sub(1))
                });
            if dropped.is_ok() {
                // `wait_reads` may return now; the read's own reference
                // keeps `self` until its completion is over.
                return result;
            }
        }
        let mut chunks = self.chunks.lock();
        let mut wake = false;
        if counted {
            for c in tag.chunks() {
                wake |= chunks.drop_reader(c);
            }
        }
        let left = self.inflight.fetch_sub(1, Ordering::AcqRel).wrapping_sub(1);
        if wake || left == DRAINING {
            self.changed.notify_all();
        }
        // `wait_reads` may return once the lock is released.
        drop(chunks);
        result
    }

    /// Waits until every read sent on by [`DiffArea::read_fast`] has
    /// completed. The image disk is gone, so no new one starts: once the
    /// image is gone, none of its reads is in flight (the module may unload).
    pub(crate) fn wait_reads(&self) {
        let mut chunks = self.chunks.lock();
        self.inflight.fetch_or(DRAINING, Ordering::AcqRel);
        while self.inflight.load(Ordering::Acquire) & !DRAINING > 0 {
            self.changed.wait(&mut chunks);
        }
    }

    /// Reads an uncopied chunk from the original; the caller counted this
    /// read in its group's readers, which a write waits for. Writes stop
    /// waiting once the snapshot is corrupted or destroyed, so a read that
    /// ends after that may have seen new data: it fails instead.
    fn read_original(&self, bio: &Bio, c: u64, sector: u64) -> Result {
        let result = bio
            .redirect_wait(self.tracker.bdev(), sector)
            .and_then(|()| if self.usable() { Ok(()) } else { Err(EIO) });
        if self.chunks.lock().drop_reader(c) {
            self.changed.notify_all();
        }
        result
    }
}
