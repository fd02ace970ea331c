// SPDX-License-Identifier: GPL-2.0

//! The copy engine: copies claimed chunks of the original device into new
//! slots of the difference storage, a batch at a time (see
//! [`COPY_BATCH_BYTES`](crate::chunk_geometry::COPY_BATCH_BYTES)), with
//! every read in flight together and then every write, and keeps chunk
//! buffers for reuse.
//!
//! Locking: `DiffArea::spare` (a mutex) holds the kept buffers; the chunk
//! lock is taken only to record the outcome, never around I/O.

use super::DiffArea;
use crate::chunk_map::Entry;
use crate::sys::bio::{pages_io, IoBuffer, PageIo};
use crate::sys::compat::prelude::*;
use core::sync::atomic::Ordering;

impl DiffArea {
    /// Copies the chunks the caller claimed (in order) into new slots, all
    /// read in one go and written in one go; each ends stored or, if
    /// anything failed, failed with the snapshot corrupted. Wakes waiters.
    pub(super) fn copy_claimed(&self, claimed: &[u64]) {
        if claimed.is_empty() {
            return;
        }
        let result = self.copy(claimed);
        if let Err(e) = &result {
            // The chunks' original data is lost to the snapshot.
            if self.active.load(Ordering::Acquire) {
                self.corrupt(*e);
            }
        }
        let mut chunks = self.chunks.lock();
        for (i, &c) in claimed.iter().enumerate() {
            let entry = match &result {
                Ok(stored) => stored.get(i).copied().unwrap_or(Entry::Failed),
                Err(_) => Entry::Failed,
            };
            chunks.update(c, entry);
        }
        self.changed.notify_all();
    }

    /// Copies chunks `claimed` from the original device into new slots;
    /// returns their entries, in the same order.
    fn copy(&self, claimed: &[u64]) -> Result<KVec<Entry>> {
        let cs = self.geometry.chunk_sectors();
        let mut stored = KVec::with_capacity(claimed.len(), GFP_KERNEL)?;
        let mut targets = KVec::with_capacity(claimed.len(), GFP_KERNEL)?;
        for _ in claimed {
            let (slot, bdev) = self.storage.alloc(cs)?;
            // The storage refuses sectors an entry cannot hold.
            let entry = Entry::stored(slot.dev, slot.sector).ok_or(EINVAL)?;
            // Within the capacities allocated above: do not allocate.
            stored.push(entry, GFP_NOWAIT)?;
            targets.push(bdev, GFP_NOWAIT)?;
        }
        let mut buffers = KVec::with_capacity(claimed.len(), GFP_KERNEL)?;
        let mut result = Ok(());
        for _ in claimed {
            // Within the capacity allocated above: does not allocate.
            let pushed = self
                .buffer()
                .and_then(|b| buffers.push(b, GFP_NOWAIT).map_err(Error::from));
            if let Err(e) = pushed {
                result = Err(e);
                break;
            }
        }
        let geometry = self.geometry;
        if result.is_ok() {
            // By index over the chunks, not zipped iterators: the nested
            // iterator types made symbol names too long for objtool.
            let read = |i: usize| {
                let c = *claimed.get(i)?;
                Some(PageIo {
                    bdev: self.tracker.bdev(),
                    sector: c * cs,
                    sectors: geometry.sectors_of(c),
                    buffer: buffers.get(i)?,
                })
            };
            let write = |i: usize| {
                // Every entry is a stored one (made above).
                let Entry::Stored { sector, .. } = *stored.get(i)? else {
                    return None;
                };
                Some(PageIo {
                    bdev: targets.get(i)?,
                    sector,
                    sectors: geometry.sectors_of(*claimed.get(i)?),
                    buffer: buffers.get(i)?,
                })
            };
            let n = claimed.len();
            result = pages_io((0..n).map_while(read), false)
                .and_then(|()| pages_io((0..n).map_while(write), true));
        }
        let mut spare = self.spare.lock();
        for buffer in buffers {
            if spare.len() == spare.capacity() {
                break;
            }
            // Within the capacity reserved at creation: does not allocate.
            let _ = spare.push(buffer, GFP_NOWAIT);
        }
        drop(spare);
        result.map(|()| stored)
    }

    /// A chunk's worth of memory: a spare buffer, or a new one.
    fn buffer(&self) -> Result<IoBuffer> {
        if let Some(buffer) = self.spare.lock().pop() {
            return Ok(buffer);
        }
        IoBuffer::new(self.geometry.chunk_sectors() * 512)
    }
}
