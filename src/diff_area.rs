// SPDX-License-Identifier: GPL-2.0

//! Copy-on-write: the difference storage of a snapshot ([`Storage`]) and the
//! per-device state of a taken snapshot ([`DiffArea`]).
//!
//! A [`DiffArea`] knows, for every chunk of its device touched since TAKE,
//! whether its original data is being copied, is stored (and where), or
//! could not be stored. Chunks never touched cost nothing: their states live
//! in a tree that only grows on first touch. The first write to a chunk
//! after TAKE waits until the chunk's original data is in the difference
//! storage; other chunks, reads and other devices go on. Image reads of a
//! chunk not copied yet read the original, and a write to that chunk waits
//! until those reads are done.
//!
//! When the storage runs out, a chunk cannot be copied or a write to an
//! image fails, the snapshot becomes corrupted: one `corrupted` event, image
//! I/O fails from then on, and writes to the original devices go through
//! untouched.
//!
//! Locking:
//! * `DiffArea::chunks` (IRQ-safe spinlock; the bio filter reads it in
//!   atomic context) protects every chunk's state; `DiffArea::changed`
//!   (a condition variable on it) is signalled when a copy finishes or the
//!   last image read of an uncopied chunk ends.
//! * `Storage::inner` (a mutex) protects the storage accounting and the open
//!   storage devices; it is only taken in process context.
//! * `Storage::devices` (IRQ-safe spinlock) holds the open storage devices,
//!   so the image's submit path finds one without sleeping.
//! * `DiffArea::settled` ([`ChunkBits`], lock-free) caches, for the filter,
//!   the chunks writes pass without copy-on-write from now on: set under
//!   `chunks` once a chunk is stored (or failed) with no image read of the
//!   original in flight, which never changes back.
//! * `DiffArea::inflight` counts image reads sent on from the submit path.
//!   A read that counted as a reader of the original drops it under
//!   `chunks`; one from the difference storage drops it with one atomic
//!   operation, unless [`DiffArea::wait_reads`] raised [`DRAINING`] in it
//!   (under `chunks`): then under `chunks`, with `changed` signalled.
//! * Order: a chunk lock is never held while taking the storage mutex or
//!   the devices lock.

use crate::sys::compat::prelude::*;
use crate::{
    chunk_bits::{self, ChunkBits},
    diff_storage::{self, DiffStorage, Extent, Slot},
    event_queue::EventQueue,
    sys::{
        bdev::{self, BlockDevice},
        bio::{pages_io, Bio, PageIo, RedirectDone},
        sync::{new_irq_spinlock, IrqSpinLock},
        CowQueue,
    },
    tracker::Tracker,
    uapi,
};
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use kernel::{
    alloc::VVec,
    new_condvar, new_mutex,
    page::{Page, PAGE_SIZE},
    rbtree::{RBTree, RBTreeNodeReservation},
    sync::{Arc, CondVar, Mutex},
};

/// What the difference storage holds under its lock.
struct StorageInner {
    accounting: DiffStorage<KVec<Extent>>,
}

/// A snapshot's difference storage: the ranges user space appended, and
/// the snapshot's corruption state.
#[pin_data]
pub(crate) struct Storage {
    #[pin]
    inner: Mutex<StorageInner>,
    /// The storage devices, opened at append and kept until the storage is
    /// freed. Replaced (never changed in place) under `inner`, so lookups
    /// from the image's submit path take only this spinlock.
    #[pin]
    devices: IrqSpinLock<KVec<Arc<BlockDevice>>>,
    corrupted: AtomicBool,
    /// Sectors to ask for in low_free_space events.
    minimum: u64,
    events: Arc<EventQueue>,
}

impl Storage {
    /// Empty storage that reports to `events`.
    pub(crate) fn new(minimum: u64, events: Arc<EventQueue>) -> Result<Arc<Self>> {
        let inner = StorageInner {
            accounting: DiffStorage::new(KVec::new()),
        };
        Arc::pin_init(
            pin_init!(Storage {
                inner <- new_mutex!(inner, "blksnap_storage"),
                devices <- new_irq_spinlock!(KVec::new(), "blksnap_storage_devices"),
                corrupted: AtomicBool::new(false),
                minimum,
                events,
            }),
            GFP_KERNEL,
        )
    }

    /// SNAPSHOT_APPEND_STORAGE: adds page-aligned ranges of `dev`. `EINVAL`
    /// for an empty, misaligned, overflowing, out-of-device or overlapping
    /// range; nothing is added unless every range is valid.
    pub(crate) fn append(&self, dev: u32, ranges: &[uapi::blk_snap_block_range]) -> Result {
        let bdev = BlockDevice::open(dev)?;
        let capacity = bdev.nr_sectors();
        let mut inner = self.inner.lock();
        for (i, r) in ranges.iter().enumerate() {
            diff_storage::check_range(r.sector_offset, r.sector_count, capacity)
                .map_err(|_| EINVAL)?;
            let e = Extent {
                dev,
                start: r.sector_offset,
                count: r.sector_count,
            };
            let earlier = ranges.get(..i).unwrap_or(&[]);
            let overlaps_earlier = earlier.iter().any(|o| {
                o.sector_offset < e.start + e.count && e.start < o.sector_offset + o.sector_count
            });
            if overlaps_earlier || inner.accounting.overlaps(&e) {
                return Err(EINVAL);
            }
        }
        inner
            .accounting
            .extents_mut()
            .reserve(ranges.len(), GFP_KERNEL)?;
        if self.device(dev).is_err() {
            // A new list with room for the new device, built outside the
            // spinlock; appends are serialized by `inner`.
            let bdev = Arc::new(bdev, GFP_KERNEL)?;
            // (Its own statement: the guard must be gone before allocating.)
            let count = self.devices.lock().len();
            let mut devices = KVec::with_capacity(count + 1, GFP_KERNEL)?;
            let mut current = self.devices.lock();
            for d in Iterator::chain(current.iter(), core::iter::once(&bdev)) {
                // Within the capacity allocated above: does not allocate.
                devices.push(d.clone(), GFP_NOWAIT)?;
            }
            core::mem::swap(&mut *current, &mut devices);
        }
        for r in ranges {
            let e = Extent {
                dev,
                start: r.sector_offset,
                count: r.sector_count,
            };
            // Reserved above: does not allocate.
            inner.accounting.extents_mut().push(e, GFP_KERNEL)?;
            inner.accounting.appended(r.sector_count);
        }
        Ok(())
    }

    /// Whether the snapshot is corrupted.
    pub(crate) fn is_corrupted(&self) -> bool {
        self.corrupted.load(Ordering::Acquire)
    }

    /// Marks the snapshot corrupted because of `err` on `orig` (queues the
    /// one `corrupted` event).
    pub(crate) fn corrupt(&self, orig: u32, err: Error) {
        if self.corrupted.swap(true, Ordering::AcqRel) {
            return;
        }
        if crate::sys::log_allowed() {
            pr_err!(
                "snapshot of {}:{} corrupted: error {}\n",
                bdev::major(orig),
                bdev::minor(orig),
                err.to_errno()
            );
        }
        // struct blk_snap_event_corrupted: orig_dev_id, err_code.
        let mut data = [0u8; 12];
        let (mj, mn) = (
            bdev::major(orig).to_ne_bytes(),
            bdev::minor(orig).to_ne_bytes(),
        );
        let code = (-err.to_errno()).to_ne_bytes();
        let fields = Iterator::chain(Iterator::chain(mj.iter(), mn.iter()), code.iter());
        for (d, s) in data.iter_mut().zip(fields) {
            *d = *s;
        }
        self.events.push(uapi::blk_snap_event_code_corrupted, &data);
    }

    /// Hands out a slot of `sectors` and the device it is on; asks user
    /// space for more storage when free space drops below half the minimum.
    fn alloc(&self, sectors: u64) -> Result<(Slot, Arc<BlockDevice>)> {
        let mut inner = self.inner.lock();
        let slot = inner.accounting.alloc(sectors).ok_or(ENOSPC)?;
        if inner.accounting.should_request(self.minimum) {
            self.events.push(
                uapi::blk_snap_event_code_low_free_space,
                &self.minimum.to_ne_bytes(),
            );
        }
        drop(inner);
        let bdev = self.device(slot.dev)?;
        Ok((slot, bdev))
    }

    /// The open storage device `dev`. Does not sleep.
    fn device(&self, dev: u32) -> Result<Arc<BlockDevice>> {
        self.devices
            .lock()
            .iter()
            .find(|d| d.dev() == dev)
            .cloned()
            .ok_or(EIO)
    }
}

/// Where a chunk's original data is.
#[derive(Clone, Copy)]
enum State {
    /// Still only on the original device.
    NotCopied,
    /// Being copied; writers and image readers wait.
    Copying,
    /// In the difference storage.
    Stored(Slot),
    /// Could not be stored: the snapshot is corrupted.
    Failed,
}

/// One touched chunk.
#[derive(Clone, Copy)]
struct Chunk {
    state: State,
    /// Image reads of this chunk in flight on the original device.
    readers: u32,
}

/// Which chunks a read sent on from the image's submit path covers, and
/// whether it counts as a reader of them on the original; travels with the
/// read as one `u64` (first chunk: 48 bits, chunk count: 15, the flag: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct ReadTag {
    first: u64,
    count: u64,
    counted: bool,
}

impl ReadTag {
    /// A tag for `count` chunks from `first`, if that fits.
    fn new(first: u64, count: u64) -> Option<Self> {
        (first < 1 << 48 && (1..1 << 15).contains(&count)).then_some(ReadTag {
            first,
            count,
            counted: false,
        })
    }

    fn counted(self, counted: bool) -> Self {
        ReadTag { counted, ..self }
    }

    fn into_raw(self) -> u64 {
        self.first << 16 | self.count << 1 | u64::from(self.counted)
    }

    fn from_raw(raw: u64) -> Self {
        ReadTag {
            first: raw >> 16,
            count: raw >> 1 & 0x7fff,
            counted: raw & 1 != 0,
        }
    }

    fn chunks(self) -> core::ops::Range<u64> {
        self.first..self.first + self.count
    }
}

/// What a write to the original device needs.
pub(crate) enum WriteNeed {
    /// Nothing: every chunk it touches is stored (or the snapshot is dead).
    Nothing,
    /// Some chunk must be copied (or waited for) first.
    Copy,
}

/// How much one held-back write copies with its I/O in flight together:
/// the chunks it touches are read from the original in one go and written
/// to their slots in one go, in batches of this many bytes (or one chunk).
/// A diff area keeps chunk buffers for one batch for reuse.
const COPY_BATCH_BYTES: u64 = 1 << 20;

/// The bit of [`DiffArea::inflight`] that says [`DiffArea::wait_reads`]
/// waits for the count to drop to zero.
const DRAINING: usize = 1 << (usize::BITS - 1);

/// A device's copy-on-write state in a taken snapshot.
#[pin_data]
pub(crate) struct DiffArea {
    tracker: Arc<Tracker>,
    storage: Arc<Storage>,
    queue: Arc<CowQueue>,
    /// log2 of the chunk size in bytes.
    chunk_shift: u32,
    /// Device capacity at TAKE, in sectors: the image's capacity.
    capacity: u64,
    /// Cleared when the snapshot is destroyed: held-back writes then pass,
    /// image I/O fails.
    active: AtomicBool,
    #[pin]
    chunks: IrqSpinLock<RBTree<u64, Chunk>>,
    /// The chunks whose writes pass from now on (see the locking rules).
    settled: ChunkBits<VVec<AtomicU64>>,
    #[pin]
    changed: CondVar,
    /// Chunk buffers kept for the next copies (at most a batch's worth,
    /// room reserved at creation).
    #[pin]
    spare: Mutex<KVec<KVec<Page>>>,
    /// Image reads sent on by [`DiffArea::read_fast`] and not completed,
    /// and [`DRAINING`] once [`DiffArea::wait_reads`] waits for them (see
    /// the locking rules).
    inflight: AtomicUsize,
}

/// The completion of a read sent on by [`DiffArea::read_fast`].
impl RedirectDone for DiffArea {
    fn redirect_done(&self, tag: u64, result: Result) -> Result {
        self.read_done(tag, result)
    }
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
        let spare = KVec::with_capacity(batch_chunks(chunk_shift), GFP_KERNEL)?;
        let chunk_count = capacity.div_ceil(1 << (chunk_shift - 9));
        let words = usize::try_from(chunk_bits::words_for(chunk_count)).map_err(|_| ENOMEM)?;
        let mut bits = VVec::with_capacity(words, GFP_KERNEL)?;
        for _ in 0..words {
            bits.push(AtomicU64::new(0), GFP_KERNEL)?;
        }
        let settled = ChunkBits::new(bits, chunk_count).ok_or(EINVAL)?;
        Arc::pin_init(
            pin_init!(DiffArea {
                tracker,
                storage,
                queue,
                chunk_shift,
                capacity,
                active: AtomicBool::new(true),
                chunks <- new_irq_spinlock!(RBTree::new(), "blksnap_chunks"),
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
        self.capacity
    }

    /// Chunk size in sectors.
    pub(crate) fn chunk_sectors(&self) -> u64 {
        1 << (self.chunk_shift - 9)
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

    /// The chunks sectors `[sector, sector + count)` touch, clipped to the
    /// capacity at TAKE.
    fn chunk_range(&self, sector: u64, count: u64) -> core::ops::Range<u64> {
        let end = sector.saturating_add(count).min(self.capacity);
        if count == 0 || sector >= end {
            return 0..0;
        }
        let shift = self.chunk_shift - 9;
        (sector >> shift)..(((end - 1) >> shift) + 1)
    }

    /// For the bio filter, lock-free: whether a write of these sectors
    /// surely passes without copy-on-write. `false` means "ask
    /// [`DiffArea::write_need`]".
    pub(crate) fn write_passes(&self, sector: u64, count: u64) -> bool {
        !self.usable() || self.settled.all_set(self.chunk_range(sector, count))
    }

    /// For the bio filter, in atomic context: whether a write of these
    /// sectors must wait for copy-on-write.
    pub(crate) fn write_need(&self, sector: u64, count: u64) -> WriteNeed {
        if self.write_passes(sector, count) {
            return WriteNeed::Nothing;
        }
        let chunks = self.chunks.lock();
        for c in self.chunk_range(sector, count) {
            match chunks.get(&c) {
                Some(Chunk {
                    state: State::Stored(_) | State::Failed,
                    readers: 0,
                }) => {}
                _ => return WriteNeed::Copy,
            }
        }
        WriteNeed::Nothing
    }

    /// In process context, for a held-back write: copies every chunk the
    /// write touches that is not stored yet, and waits until no image read
    /// of them is in flight on the original. A failure corrupts the snapshot
    /// but never the write: it goes on afterwards either way.
    pub(crate) fn prepare_write(&self, sector: u64, count: u64) {
        let range = self.chunk_range(sector, count);
        let batch = batch_chunks(self.chunk_shift) as u64;
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
                    self.storage.corrupt(self.tracker.dev(), e);
                }
                self.wait_no_readers(c);
            }
            start = end;
        }
    }

    /// Waits until no image read of chunk `c` is in flight on the original;
    /// then, if `c` is stored (or failed), writes to it pass from now on.
    fn wait_no_readers(&self, c: u64) {
        let mut chunks = self.chunks.lock();
        while chunks.get(&c).is_some_and(|ch| ch.readers > 0) && self.active.load(Ordering::Acquire)
        {
            self.changed.wait(&mut chunks);
        }
        // Readers only count on a chunk not copied yet, so a stored or
        // failed chunk with none stays so.
        if let Some(Chunk {
            state: State::Stored(_) | State::Failed,
            readers: 0,
        }) = chunks.get(&c)
        {
            self.settled.set(c);
        }
    }

    /// Makes sure chunk `c`'s original data is in the difference storage,
    /// copying it if nobody has; returns where it is.
    fn ensure_stored(&self, c: u64) -> Result<Slot> {
        loop {
            if !self.active.load(Ordering::Acquire) {
                return Err(EIO);
            }
            let mut chunks = self.chunks.lock();
            match chunks.get(&c).map(|ch| ch.state) {
                Some(State::Stored(slot)) => return Ok(slot),
                Some(State::Failed) => return Err(EIO),
                Some(State::Copying) => self.changed.wait(&mut chunks),
                Some(State::NotCopied) | None => {
                    drop(chunks);
                    let (claimed, short) = self.claim(c..c + 1);
                    if claimed.is_empty() && short {
                        return Err(ENOMEM);
                    }
                    // Now stored or failed, unless somebody else claimed it
                    // first: then the next round waits for them.
                    self.copy_claimed(&claimed);
                }
            }
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
        // Tree nodes for the chunks never touched, allocated unlocked.
        let missing = {
            let chunks = self.chunks.lock();
            range.clone().filter(|c| chunks.get(c).is_none()).count()
        };
        let mut nodes = KVec::new();
        if nodes.reserve(missing, GFP_KERNEL).is_ok() {
            while nodes.len() < missing {
                let Ok(node) = RBTreeNodeReservation::new(GFP_KERNEL) else {
                    break;
                };
                // Within the capacity reserved above: does not allocate.
                if nodes.push(node, GFP_NOWAIT).is_err() {
                    break;
                }
            }
        }
        let mut short = false;
        let mut chunks = self.chunks.lock();
        for c in range {
            // Recorded in `claimed` (which has room) before the state
            // changes, so no chunk is left copying with nobody copying it.
            match chunks.get_mut(&c) {
                Some(ch) => {
                    if matches!(ch.state, State::NotCopied) && claimed.push(c, GFP_NOWAIT).is_ok() {
                        ch.state = State::Copying;
                    }
                }
                None => match nodes.pop() {
                    Some(node) if claimed.push(c, GFP_NOWAIT).is_ok() => {
                        let chunk = Chunk {
                            state: State::Copying,
                            readers: 0,
                        };
                        chunks.insert(RBTreeNodeReservation::into_node(node, c, chunk));
                    }
                    _ => short = true,
                },
            }
        }
        drop(chunks);
        (claimed, short)
    }

    /// Copies the chunks the caller claimed (in order) into new slots, all
    /// read in one go and written in one go; each ends stored or, if
    /// anything failed, failed with the snapshot corrupted. Wakes waiters.
    fn copy_claimed(&self, claimed: &[u64]) {
        if claimed.is_empty() {
            return;
        }
        let result = self.copy(claimed);
        if let Err(e) = &result {
            // The chunks' original data is lost to the snapshot.
            if self.active.load(Ordering::Acquire) {
                self.storage.corrupt(self.tracker.dev(), *e);
            }
        }
        let mut chunks = self.chunks.lock();
        for (i, c) in claimed.iter().enumerate() {
            if let Some(ch) = chunks.get_mut(c) {
                ch.state = match &result {
                    Ok(slots) => slots.get(i).map_or(State::Failed, |s| State::Stored(*s)),
                    Err(_) => State::Failed,
                };
            }
        }
        self.changed.notify_all();
    }

    /// Copies chunks `claimed` from the original device into new slots;
    /// returns the slots, in the same order.
    fn copy(&self, claimed: &[u64]) -> Result<KVec<Slot>> {
        let cs = self.chunk_sectors();
        let mut slots = KVec::with_capacity(claimed.len(), GFP_KERNEL)?;
        let mut targets = KVec::with_capacity(claimed.len(), GFP_KERNEL)?;
        for _ in claimed {
            let (slot, bdev) = self.storage.alloc(cs)?;
            // Within the capacities allocated above: do not allocate.
            slots.push(slot, GFP_NOWAIT)?;
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
        // The last chunk of the device may be short.
        let sectors = |c: u64| cs.min(self.capacity.saturating_sub(c * cs));
        if result.is_ok() {
            // By index over the chunks, not zipped iterators: the nested
            // iterator types made symbol names too long for objtool.
            let read = |i: usize| {
                let c = *claimed.get(i)?;
                Some(PageIo {
                    bdev: self.tracker.bdev(),
                    sector: c * cs,
                    sectors: sectors(c),
                    pages: buffers.get(i)?,
                })
            };
            let write = |i: usize| {
                Some(PageIo {
                    bdev: targets.get(i)?,
                    sector: slots.get(i)?.sector,
                    sectors: sectors(*claimed.get(i)?),
                    pages: buffers.get(i)?,
                })
            };
            let n = claimed.len();
            result = pages_io((0..n).map_while(read), false)
                .and_then(|()| pages_io((0..n).map_while(write), true));
        }
        let mut spare = self.spare.lock();
        for pages in buffers {
            if spare.len() == spare.capacity() {
                break;
            }
            // Within the capacity reserved at creation: does not allocate.
            let _ = spare.push(pages, GFP_NOWAIT);
        }
        drop(spare);
        result.map(|()| slots)
    }

    /// A chunk's worth of pages: a spare buffer, or new pages.
    fn buffer(&self) -> Result<KVec<Page>> {
        if let Some(pages) = self.spare.lock().pop() {
            return Ok(pages);
        }
        let page_count =
            usize::try_from(self.chunk_sectors() * 512 / PAGE_SIZE as u64).map_err(|_| EINVAL)?;
        let mut pages = KVec::with_capacity(page_count, GFP_KERNEL)?;
        for _ in 0..page_count {
            pages.push(Page::alloc_page(GFP_KERNEL)?, GFP_KERNEL)?;
        }
        Ok(pages)
    }

    /// Serves a bio of the snapshot image, in process context. The bio lies
    /// within one chunk (the image disk's limits split it).
    pub(crate) fn image_io(&self, bio: Bio) {
        let result = self.do_image_io(&bio);
        if let Err(e) = result {
            // A failed write loses what the image was given; a read that
            // failed with a device's I/O error only fails.
            if (bio.is_write() || e != EIO) && self.active.load(Ordering::Acquire) {
                self.storage.corrupt(self.tracker.dev(), e);
            }
        }
        bio.end(result);
    }

    fn do_image_io(&self, bio: &Bio) -> Result {
        if !self.usable() {
            return Err(EIO);
        }
        let info = bio.info();
        let (sector, count) = (info.sector(), info.sectors());
        if count == 0 {
            return Ok(());
        }
        let range = self.chunk_range(sector, count);
        if range.end - range.start != 1 {
            return Err(EIO);
        }
        let c = range.start;
        let offset = sector - c * self.chunk_sectors();
        if bio.is_write() {
            let slot = self.ensure_stored(c)?;
            let storage = self.storage.device(slot.dev)?;
            bio.redirect_wait(&storage, slot.sector + offset)?;
            self.tracker.mark_dirty(sector, count);
            return Ok(());
        }
        let mut node = None;
        loop {
            if !self.usable() {
                return Err(EIO);
            }
            let mut chunks = self.chunks.lock();
            match chunks.get(&c).map(|ch| ch.state) {
                Some(State::Stored(slot)) => {
                    drop(chunks);
                    let storage = self.storage.device(slot.dev)?;
                    return bio.redirect_wait(&storage, slot.sector + offset);
                }
                Some(State::Failed) => return Err(EIO),
                Some(State::Copying) => {
                    self.changed.wait(&mut chunks);
                }
                Some(State::NotCopied) => {
                    if let Some(ch) = chunks.get_mut(&c) {
                        ch.readers += 1;
                    }
                    drop(chunks);
                    return self.read_original(bio, c, sector);
                }
                None => {
                    let Some(reservation) = node.take() else {
                        drop(chunks);
                        node = Some(RBTreeNodeReservation::new(GFP_KERNEL)?);
                        continue;
                    };
                    let chunk = Chunk {
                        state: State::NotCopied,
                        readers: 1,
                    };
                    chunks.insert(RBTreeNodeReservation::into_node(reservation, c, chunk));
                    drop(chunks);
                    return self.read_original(bio, c, sector);
                }
            }
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
    pub(crate) fn read_fast(&self, bio: Bio) -> Option<Bio> {
        if bio.is_write() || !self.usable() {
            return Some(bio);
        }
        let info = bio.info();
        let (sector, count) = (info.sector(), info.sectors());
        let range = self.chunk_range(sector, count);
        let Some(tag) = ReadTag::new(range.start, range.end - range.start) else {
            return Some(bio);
        };
        let cs = self.chunk_sectors();
        let mut node = None;
        let (storage, target, counted) = 'decide: loop {
            let mut chunks = self.chunks.lock();
            // Where the first chunk's data is; every other chunk must agree.
            let mut first: Option<State> = None;
            for c in range.clone() {
                let state = match chunks.get(&c) {
                    Some(ch) => ch.state,
                    None => {
                        // Recorded as not copied, so its readers can count.
                        let Some(reservation) = node.take() else {
                            drop(chunks);
                            match RBTreeNodeReservation::new(GFP_NOWAIT) {
                                Ok(r) => node = Some(r),
                                Err(_) => return Some(bio),
                            }
                            continue 'decide;
                        };
                        let chunk = Chunk {
                            state: State::NotCopied,
                            readers: 0,
                        };
                        chunks.insert(RBTreeNodeReservation::into_node(reservation, c, chunk));
                        State::NotCopied
                    }
                };
                let agrees = match (first, state) {
                    (None, State::NotCopied | State::Stored(_)) => true,
                    (Some(State::NotCopied), State::NotCopied) => true,
                    (Some(State::Stored(a)), State::Stored(b)) => {
                        a.dev == b.dev && b.sector == a.sector + (c - range.start) * cs
                    }
                    _ => false,
                };
                if !agrees {
                    return Some(bio);
                }
                first.get_or_insert(state);
            }
            match first {
                Some(State::Stored(slot)) => {
                    drop(chunks);
                    let Ok(storage) = self.storage.device(slot.dev) else {
                        return Some(bio);
                    };
                    let offset = sector - range.start * cs;
                    break (Some(storage), slot.sector + offset, false);
                }
                Some(State::NotCopied) => {
                    for c in range.clone() {
                        if let Some(ch) = chunks.get_mut(&c) {
                            ch.readers += 1;
                        }
                    }
                    break (None, sector, true);
                }
                _ => return Some(bio),
            }
        };
        let bdev = storage.as_deref().unwrap_or(self.tracker.bdev());
        self.inflight.fetch_add(1, Ordering::AcqRel);
        let tag = tag.counted(counted).into_raw();
        // SAFETY: `self` and `bdev` (a storage device of `self.storage`, or
        // the original) outlive the read: `wait_reads` waits for `inflight`
        // to drop to zero before the image lets go of its area.
        match unsafe { bio.redirect(bdev, target, self, tag) } {
            Ok(()) => None,
            Err(bio) => {
                // Not sent: undo the counting; the worker serves it.
                let _ = self.read_done(tag, Ok(()));
                Some(bio)
            }
        }
    }

    /// The part of an image bio that lies in its first chunk, in sectors,
    /// if the bio goes on past that chunk.
    pub(crate) fn first_chunk_part(&self, bio: &Bio) -> Option<u64> {
        let info = bio.info();
        let (sector, count) = (info.sector(), info.sectors());
        let cs = self.chunk_sectors();
        let part = cs - sector % cs;
        (part < count).then_some(part)
    }

    /// Completes a read sent on by [`DiffArea::read_fast`] (`tag` says
    /// which chunks, and whether they counted it as a reader of the
    /// original), in any context; returns the bio's result. A read of the
    /// original that ends after the snapshot stopped holding back writes
    /// may have seen new data: it fails.
    pub(crate) fn read_done(&self, tag: u64, result: Result) -> Result {
        let tag = ReadTag::from_raw(tag);
        let counted = tag.counted;
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
                // The last touch of `self`: `wait_reads` may free it now.
                return result;
            }
        }
        let mut chunks = self.chunks.lock();
        let mut wake = false;
        if counted {
            for c in tag.chunks() {
                if let Some(ch) = chunks.get_mut(&c) {
                    ch.readers = ch.readers.saturating_sub(1);
                    wake |= ch.readers == 0;
                }
            }
        }
        let left = self.inflight.fetch_sub(1, Ordering::AcqRel).wrapping_sub(1);
        if wake || left == DRAINING {
            self.changed.notify_all();
        }
        // The last touch of `self`: `wait_reads` may free it once the lock
        // is released.
        drop(chunks);
        result
    }

    /// Waits until every read sent on by [`DiffArea::read_fast`] has
    /// completed. The image disk is gone, so no new one starts.
    pub(crate) fn wait_reads(&self) {
        let mut chunks = self.chunks.lock();
        self.inflight.fetch_or(DRAINING, Ordering::AcqRel);
        while self.inflight.load(Ordering::Acquire) & !DRAINING > 0 {
            self.changed.wait(&mut chunks);
        }
    }

    /// Reads an uncopied chunk from the original; the caller counted this
    /// read in the chunk's readers, which a write waits for. Writes stop
    /// waiting once the snapshot is corrupted or destroyed, so a read that
    /// ends after that may have seen new data: it fails instead.
    fn read_original(&self, bio: &Bio, c: u64, sector: u64) -> Result {
        let result = bio
            .redirect_wait(self.tracker.bdev(), sector)
            .and_then(|()| if self.usable() { Ok(()) } else { Err(EIO) });
        let mut chunks = self.chunks.lock();
        if let Some(ch) = chunks.get_mut(&c) {
            ch.readers = ch.readers.saturating_sub(1);
            if ch.readers == 0 {
                self.changed.notify_all();
            }
        }
        result
    }
}

/// Chunks per copy batch (see [`COPY_BATCH_BYTES`]) for chunks of
/// 2^`chunk_shift` bytes.
fn batch_chunks(chunk_shift: u32) -> usize {
    usize::try_from(COPY_BATCH_BYTES.checked_shr(chunk_shift).unwrap_or(0))
        .unwrap_or(1)
        .max(1)
}
