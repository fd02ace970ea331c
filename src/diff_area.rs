// SPDX-License-Identifier: GPL-2.0

//! Copy-on-write state of one device in a taken snapshot ([`DiffArea`]):
//! the per-chunk state machine and the write side.
//!
//! A [`DiffArea`] knows, for every chunk of its device copied since TAKE,
//! whether its original data is being copied, is stored (and where), or
//! could not be stored ([`ChunkMap`]: 8 bytes a chunk, in leaves that only
//! grow on first touch). The first write to a chunk
//! after TAKE waits until the chunk's original data is in the difference
//! storage (`copy` does the copying); other chunks, reads and other devices
//! go on. Image reads of a chunk not copied yet read the original, and a
//! write to a chunk of the same group (64 chunks) waits until those reads
//! are done (`image_io` serves the image).
//!
//! When the storage runs out, a chunk cannot be copied or a write to an
//! image fails, the snapshot becomes corrupted (see [`Storage`]): image I/O
//! fails from then on, and writes to the original devices go through
//! untouched.
//!
//! Locking:
//! * `DiffArea::chunks` (IRQ-safe spinlock; the bio filter reads it in
//!   atomic context) protects every chunk's state and the reader counts;
//!   `DiffArea::changed` (a condition variable on it) is signalled when a
//!   copy finishes, when the last image read of a group a writer waits for
//!   ends, and when the last writer waiting for a group is done. Leaves for
//!   the map are allocated with the lock dropped ([`DiffArea::with_chunks`]).
//! * `DiffArea::settled` ([`ChunkBits`], lock-free) caches, for the filter,
//!   the chunks writes pass without copy-on-write from now on: set under
//!   `chunks` once a chunk is stored (or failed) with no image read of the
//!   original in flight, which never changes back.
//! * `DiffArea::inflight`: see `image_io`.
//! * Order: a chunk lock is never held while taking the storage's locks or
//!   `DiffArea::spare`.

use crate::sys::compat::prelude::*;
use crate::{
    chunk_bits::{self, ChunkBits},
    chunk_geometry::Geometry,
    chunk_map::{self, ChunkMap, Entry, Full, Group},
    storage::{Slot, Storage},
    sys::{
        bio::IoBuffer,
        sectors::Sectors,
        sync::{new_irq_spinlock, IrqSpinLock},
        CowQueue,
    },
    tracker::Tracker,
};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use kernel::{
    alloc::{Flags, VVec},
    new_condvar, new_mutex,
    sync::{Arc, CondVar, Mutex},
};

mod copy;
mod image_io;

/// The copied chunks' states and the image reads in flight, by chunk.
type Chunks = ChunkMap<VVec<Group<KVec<u64>>>>;

/// What a write to the original device needs.
pub(crate) enum WriteNeed {
    /// Nothing: every chunk it touches is stored (or the snapshot is dead).
    Nothing,
    /// Some chunk must be copied (or waited for) first.
    Copy,
}

/// A device's copy-on-write state in a taken snapshot.
#[pin_data]
pub(crate) struct DiffArea {
    tracker: Arc<Tracker>,
    storage: Arc<Storage>,
    queue: Arc<CowQueue>,
    geometry: Geometry,
    /// Cleared when the snapshot is destroyed: held-back writes then pass,
    /// image I/O fails.
    active: AtomicBool,
    #[pin]
    chunks: IrqSpinLock<Chunks>,
    /// The chunks whose writes pass from now on (see the locking rules).
    settled: ChunkBits<VVec<AtomicU64>>,
    #[pin]
    changed: CondVar,
    /// Chunk buffers kept for the next copies (at most a batch's worth,
    /// room reserved at creation).
    #[pin]
    spare: Mutex<KVec<IoBuffer>>,
    /// Image reads sent on from the submit path and not completed (see
    /// `image_io`).
    inflight: AtomicUsize,
}

/// What one look at the chunks under their lock came to
/// (see [`DiffArea::with_chunks`]).
enum Step<R> {
    /// Done, with this result.
    Done(R),
    /// Wait until the chunks change, then look again.
    Wait,
    /// Look again with a leaf of this capacity at hand.
    Leaf(usize),
}

/// A leaf for the chunk map, allocated outside the chunk lock.
struct Room {
    leaf: Option<KVec<u64>>,
    /// An allocation failed: no more leaves come.
    exhausted: bool,
}

impl Room {
    /// Nothing at hand.
    fn new() -> Self {
        Room {
            leaf: None,
            exhausted: false,
        }
    }

    /// Allocates a leaf of `capacity` entries with `flags` (replacing the
    /// one at hand); marks the supply exhausted if that fails.
    fn add(&mut self, capacity: usize, flags: Flags) {
        self.leaf = None;
        let Ok(mut leaf) = KVec::with_capacity(capacity, flags) else {
            self.exhausted = true;
            return;
        };
        for _ in 0..capacity {
            // Within the capacity allocated above: does not allocate.
            if leaf.push(0, GFP_NOWAIT).is_err() {
                self.exhausted = true;
                return;
            }
        }
        self.leaf = Some(leaf);
    }

    /// Records chunk `c`, not copied, as `entry`, growing its leaf with the
    /// one at hand if it must. `Err(Some(capacity))`: a leaf that large is
    /// needed first; `Err(None)`: `c` is past the end.
    fn insert(&mut self, chunks: &mut Chunks, c: u64, entry: Entry) -> Result<(), Option<usize>> {
        loop {
            match chunks.insert(c, entry) {
                Ok(()) => return Ok(()),
                Err(Full::Outside) => return Err(None),
                Err(Full::Leaf(capacity)) => match self.leaf.take() {
                    // The old leaf (freed here) is not used any more.
                    Some(leaf) if leaf.len() >= capacity => drop(chunks.grow(c, leaf)),
                    leaf => {
                        self.leaf = leaf;
                        return Err(Some(capacity));
                    }
                },
            }
        }
    }
}

/// `n` values made by `f`, in one virtually contiguous allocation.
fn filled<T>(n: u64, f: impl Fn() -> T) -> Result<VVec<T>> {
    let n = usize::try_from(n).map_err(|_| ENOMEM)?;
    let mut v = VVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        // Within the capacity allocated above: does not allocate.
        v.push(f(), GFP_KERNEL)?;
    }
    Ok(v)
}

impl DiffArea {
    /// The copy-on-write state of `tracker`'s device for a snapshot being
    /// taken, with chunks of 2^`chunk_shift` bytes.
    pub(crate) fn new(
        tracker: Arc<Tracker>,
        storage: Arc<Storage>,
        queue: Arc<CowQueue>,
        chunk_shift: u32,
        capacity: u64,
    ) -> Result<Arc<Self>> {
        let geometry = Geometry::new(chunk_shift, capacity).ok_or(EINVAL)?;
        let spare = KVec::with_capacity(geometry.batch_chunks(), GFP_KERNEL)?;
        let chunk_count = geometry.chunk_count();
        let bits = filled(chunk_bits::words_for(chunk_count), || AtomicU64::new(0))?;
        let settled = ChunkBits::new(bits, chunk_count).ok_or(EINVAL)?;
        let groups = filled(chunk_map::groups_for(chunk_count), Group::new)?;
        let map = ChunkMap::new(groups, chunk_count).ok_or(EINVAL)?;
        Arc::pin_init(
            pin_init!(DiffArea {
                tracker,
                storage,
                queue,
                geometry,
                active: AtomicBool::new(true),
                chunks <- new_irq_spinlock!(map, "blksnap_chunks"),
                settled,
                changed <- new_condvar!("blksnap_chunk_changed"),
                spare <- new_mutex!(spare, "blksnap_spare_buffers"),
                inflight: AtomicUsize::new(0),
            }),
            GFP_KERNEL,
        )
    }

    /// The original device's tracker.
    pub(crate) fn tracker(&self) -> &Arc<Tracker> {
        &self.tracker
    }

    /// The workqueue copy-on-write and image I/O run on.
    pub(crate) fn queue(&self) -> &Arc<CowQueue> {
        &self.queue
    }

    /// Marks the snapshot corrupted because of `err` on this device.
    pub(crate) fn corrupt(&self, err: Error) {
        self.storage.corrupt(self.tracker.dev(), err);
    }

    /// Image capacity in sectors.
    pub(crate) fn capacity(&self) -> u64 {
        self.geometry.capacity()
    }

    /// Chunk size in sectors.
    pub(crate) fn chunk_sectors(&self) -> u64 {
        self.geometry.chunk_sectors()
    }

    /// Whether image I/O may proceed.
    pub(crate) fn usable(&self) -> bool {
        self.active.load(Ordering::Acquire) && !self.storage.is_corrupted()
    }

    /// Ends copy-on-write: held-back writes pass, image I/O fails, waiters
    /// wake up.
    pub(crate) fn deactivate(&self) {
        self.active.store(false, Ordering::Release);
        let _guard = self.chunks.lock();
        self.changed.notify_all();
    }

    /// Runs `step` on the chunks under their lock until it is done: waits
    /// for [`DiffArea::changed`] when it says so, and when it wants a leaf,
    /// drops the lock, allocates it with `flags` and looks again (what
    /// `step` changed before asking stays). `ENOMEM` if it still wants one
    /// once an allocation failed ([`Room::exhausted`]).
    fn with_chunks<R>(
        &self,
        flags: Flags,
        mut step: impl FnMut(&mut Chunks, &mut Room) -> Step<R>,
    ) -> Result<R> {
        let mut room = Room::new();
        let mut chunks = self.chunks.lock();
        loop {
            match step(&mut chunks, &mut room) {
                Step::Done(r) => return Ok(r),
                Step::Wait => self.changed.wait(&mut chunks),
                Step::Leaf(_) if room.exhausted => return Err(ENOMEM),
                Step::Leaf(capacity) => {
                    drop(chunks);
                    room.add(capacity, flags);
                    chunks = self.chunks.lock();
                }
            }
        }
    }

    /// For the bio filter, lock-free: whether a write of these sectors
    /// surely passes without copy-on-write. `false` means "ask
    /// [`DiffArea::write_need`]".
    pub(crate) fn write_passes(&self, sectors: Sectors) -> bool {
        !self.usable() || self.settled.all_set(self.geometry.range(sectors))
    }

    /// For the bio filter, in atomic context: whether a write of these
    /// sectors must wait for copy-on-write.
    pub(crate) fn write_need(&self, sectors: Sectors) -> WriteNeed {
        if self.write_passes(sectors) {
            return WriteNeed::Nothing;
        }
        let chunks = self.chunks.lock();
        for c in self.geometry.range(sectors) {
            match chunks.get(c) {
                Some(Entry::Stored { .. } | Entry::Failed) if chunks.readers(c) == 0 => {}
                _ => return WriteNeed::Copy,
            }
        }
        WriteNeed::Nothing
    }

    /// In process context, for a held-back write: copies every chunk the
    /// write touches that is not stored yet, and waits until no image read
    /// of them is in flight on the original. A failure corrupts the snapshot
    /// but never the write: it goes on afterwards either way.
    pub(crate) fn prepare_write(&self, sectors: Sectors) {
        let range = self.geometry.range(sectors);
        let batch = self.geometry.batch_chunks() as u64;
        let mut start = range.start;
        while start < range.end {
            let end = range.end.min(start.saturating_add(batch));
            let (claimed, _) = self.claim(start..end);
            self.copy_claimed(&claimed);
            for c in start..end {
                if !self.usable() {
                    return;
                }
                // Chunks copied by others (or not claimed for lack of
                // memory) are waited for (or copied) here.
                if let Err(e) = self.ensure_stored(c) {
                    self.corrupt(e);
                }
                self.wait_no_readers(c);
            }
            start = end;
        }
    }

    /// Waits until no image read of chunk `c`'s group is in flight on the
    /// original (new ones wait meanwhile); then, if `c` is stored (or
    /// failed), writes to it pass from now on.
    fn wait_no_readers(&self, c: u64) {
        let mut chunks = self.chunks.lock();
        chunks.begin_wait(c);
        while chunks.readers(c) > 0 && self.active.load(Ordering::Acquire) {
            self.changed.wait(&mut chunks);
        }
        if chunks.end_wait(c) {
            self.changed.notify_all();
        }
        // Reads only count for chunks not copied yet, so with none in
        // flight a stored or failed chunk stays readerless.
        if matches!(chunks.get(c), Some(Entry::Stored { .. } | Entry::Failed))
            && chunks.readers(c) == 0
        {
            self.settled.set(c);
        }
    }

    /// Makes sure chunk `c`'s original data is in the difference storage,
    /// copying it if nobody has; returns where it is.
    fn ensure_stored(&self, c: u64) -> Result<Slot> {
        loop {
            let stored = self.with_chunks(GFP_KERNEL, |chunks, _| {
                if !self.active.load(Ordering::Acquire) {
                    return Step::Done(Some(Err(EIO)));
                }
                match chunks.get(c) {
                    Some(Entry::Stored { dev, sector }) => {
                        Step::Done(Some(Ok(Slot { dev, sector })))
                    }
                    Some(Entry::Failed) => Step::Done(Some(Err(EIO))),
                    Some(Entry::Copying) => Step::Wait,
                    None => Step::Done(None),
                }
            })?;
            if let Some(stored) = stored {
                return stored;
            }
            let (claimed, short) = self.claim(c..c + 1);
            if claimed.is_empty() && short {
                return Err(ENOMEM);
            }
            // Now stored or failed, unless somebody else claimed it first:
            // then the next round waits for them.
            self.copy_claimed(&claimed);
        }
    }

    /// Marks the chunks of `range` that are not copied and that nobody
    /// copies as being copied by the caller, who must pass them to
    /// [`DiffArea::copy_claimed`]. Returns them in order, and whether any
    /// was left out for lack of memory.
    fn claim(&self, range: core::ops::Range<u64>) -> (KVec<u64>, bool) {
        let len = usize::try_from(range.end - range.start).unwrap_or(usize::MAX);
        let Ok(mut claimed) = KVec::with_capacity(len, GFP_KERNEL) else {
            return (KVec::new(), true);
        };
        let claim = self.with_chunks(GFP_KERNEL, |chunks, room| {
            let mut short = false;
            for c in range.clone() {
                // Chunks in the map are being copied, stored or failed;
                // this claims the rest. Each is recorded in `claimed`
                // (which has room) before its state changes, so no chunk
                // is left copying with nobody copying it.
                if chunks.get(c).is_some() {
                    continue;
                }
                if claimed.push(c, GFP_NOWAIT).is_err() {
                    short = true;
                    continue;
                }
                match room.insert(chunks, c, Entry::Copying) {
                    Ok(()) => {}
                    Err(need) => {
                        claimed.pop();
                        match need {
                            Some(capacity) => return Step::Leaf(capacity),
                            None => short = true,
                        }
                    }
                }
            }
            Step::Done(short)
        });
        // `with_chunks` fails if a leaf could not be allocated: the chunks
        // claimed before stay claimed, the rest are short.
        let short = claim.unwrap_or(true);
        (claimed, short)
    }
}
