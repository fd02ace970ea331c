// SPDX-License-Identifier: GPL-2.0

//! Bios as the module handles them: what the filter reads of a submitted bio
//! ([`BioInfo`], read once by the C shim), a bio inside the submit call the
//! hook intercepted ([`Submitted`]), a bio the module holds until it passes
//! it on or ends it ([`Bio`]), its redirection to another device through a
//! clone ([`Bio::redirect`], whose completion goes to [`RedirectDone`]), and
//! the module's own I/O ([`pages_io`]) into and out of its buffers
//! ([`IoBuffer`]).
//!
//! Locking: none of its own. A [`BioInfo`] is a copy of the bio's fields at
//! submission; a redirected clone holds references to its target and device
//! until its completion releases them; the bios of one [`pages_io`] call
//! count themselves down with atomics, and the last completion wakes the
//! caller. An [`IoBuffer`] is owned by one holder at a time.

use super::{
    bdev::{BlockDevice, DevNum},
    bindings,
};
use core::{
    ptr::NonNull,
    sync::atomic::{AtomicI32, AtomicUsize, Ordering},
};
use kernel::{
    alloc::{flags::GFP_KERNEL, KVec},
    error::code::{EINVAL, ENOMEM},
    sync::{Arc, ArcBorrow},
    types::Opaque,
};

/// The operation of a bio, as far as change tracking cares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    /// Changes data: write, discard, secure erase, write-zeroes.
    Change,
    /// Everything else: reads, flushes, zone and driver commands.
    Other,
}

/// Which `block_device` a bio or a tracker refers to: a device number can
/// be reused by a new disk after the old one was deleted; this cannot while
/// the tracker holds the old one open.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct DevIdentity(usize);

impl DevIdentity {
    /// The identity of `bdev`.
    pub(super) fn of(bdev: *const bindings::block_device) -> Self {
        DevIdentity(bdev as usize)
    }
}

/// A submitted bio's device, range and operation.
pub(crate) struct BioInfo(bindings::blksnap_bio_info);

impl BioInfo {
    /// Reads the fields of `bio`.
    ///
    /// # Safety
    ///
    /// `bio` is a bio being submitted, owned by the caller until passed on.
    pub(crate) unsafe fn read(bio: *mut bindings::bio) -> Self {
        let mut info = bindings::blksnap_bio_info::default();
        // SAFETY: `bio` is valid (the caller's guarantee); `info` is ours.
        unsafe { bindings::blksnap_bio_get_info(bio, &mut info) };
        BioInfo(info)
    }

    /// The device the bio was submitted to: its number and identity.
    pub(crate) fn dev(&self) -> (DevNum, DevIdentity) {
        (
            DevNum::from_raw(self.0.dev),
            DevIdentity(self.0.bdev as usize),
        )
    }

    /// The whole disk of that device (number and identity) and the bio's
    /// first sector on it.
    pub(crate) fn whole(&self) -> (DevNum, DevIdentity, u64) {
        (
            DevNum::from_raw(self.0.whole_dev),
            DevIdentity(self.0.whole as usize),
            self.0.sector.saturating_add(self.0.start_sect),
        )
    }

    /// The sectors the bio covers, relative to [`BioInfo::dev`].
    pub(crate) fn range(&self) -> super::sectors::Sectors {
        super::sectors::Sectors::new(self.0.sector, self.sectors())
    }

    /// The bio's length in sectors.
    pub(crate) fn sectors(&self) -> u64 {
        self.0.sectors.into()
    }

    /// What the bio does, as far as change tracking cares.
    pub(crate) fn op(&self) -> Op {
        match self.0.op {
            bindings::REQ_OP_WRITE
            | bindings::REQ_OP_DISCARD
            | bindings::REQ_OP_SECURE_ERASE
            | bindings::REQ_OP_WRITE_ZEROES => Op::Change,
            _ => Op::Other,
        }
    }
}

/// A bio inside a call of `submit_bio_noacct` from outside the module, as
/// the bio hook shows it to the filter: it goes on with that call unless the
/// filter takes it over ([`Submitted::take`]).
pub(crate) struct Submitted(core::ptr::NonNull<bindings::bio>);

impl Submitted {
    /// Wraps `bio`, inside the submit call the hook intercepted.
    ///
    /// # Safety
    ///
    /// `bio` is the argument of that call, and the caller lets it go on
    /// unless the [`Submitted`] is taken.
    pub(super) unsafe fn new(bio: core::ptr::NonNull<bindings::bio>) -> Self {
        Submitted(bio)
    }

    /// The bio's fields.
    pub(crate) fn info(&self) -> BioInfo {
        // SAFETY: the bio is valid for the whole submit call.
        unsafe { BioInfo::read(self.0.as_ptr()) }
    }

    /// Takes the bio over: the submit call returns without passing it on,
    /// and the module passes it on or ends it later.
    pub(crate) fn take(self) -> Bio {
        Bio(self.0)
    }
}

/// A bio the module holds: one the filter took over ([`Submitted::take`]),
/// or one given to an image disk's `submit_bio`.
///
/// It must be passed on or ended exactly once; dropping it without either
/// would hang its submitter, so `Drop` ends it with an I/O error.
pub(crate) struct Bio(core::ptr::NonNull<bindings::bio>);

// SAFETY: a bio may be completed or resubmitted from any thread.
unsafe impl Send for Bio {}

impl Bio {
    /// Takes charge of `bio`.
    ///
    /// # Safety
    ///
    /// `bio` is a bio being submitted, and the caller hands over the duty to
    /// pass it on or end it.
    pub(crate) unsafe fn from_raw(bio: *mut bindings::bio) -> Option<Self> {
        // A null bio: nothing to hold (`bio_split_to_limits` ended it).
        core::ptr::NonNull::new(bio).map(Bio)
    }

    /// The bio's fields.
    pub(crate) fn info(&self) -> BioInfo {
        // SAFETY: the bio is valid while we hold it.
        unsafe { BioInfo::read(self.0.as_ptr()) }
    }

    /// Whether the bio changes data (a write, discard, secure erase or
    /// write-zeroes) rather than reading it.
    pub(crate) fn is_write(&self) -> bool {
        self.info().op() == Op::Change
    }

    /// Splits off the first `sectors` (fewer than the bio has) as a bio of
    /// their own, and submits the rest again.
    ///
    /// Only for a bio of an image disk, inside its `submit_bio`: the disk
    /// gets the rest after this call. Gives the bio back if it cannot be
    /// split.
    pub(crate) fn split_front(self, sectors: u64) -> core::result::Result<Bio, Bio> {
        let Ok(sectors) = u32::try_from(sectors) else {
            return Err(self);
        };
        if sectors == 0 || u64::from(sectors) >= self.info().sectors() {
            return Err(self);
        }
        let bio = core::mem::ManuallyDrop::new(self);
        // SAFETY: we hold the bio, and `sectors` is within it; the rest is
        // handed back to the block layer, the split part is ours.
        let front = unsafe { bindings::blksnap_bio_split_front(bio.0.as_ptr(), sectors) };
        match core::ptr::NonNull::new(front) {
            Some(front) => Ok(Bio(front)),
            None => Err(core::mem::ManuallyDrop::into_inner(bio)),
        }
    }

    /// Passes the bio on to its device, from inside the module.
    pub(crate) fn pass(self) {
        let bio = core::mem::ManuallyDrop::new(self);
        // SAFETY: we hold the bio; passing it on hands it back to the block
        // layer.
        unsafe { bindings::blksnap_bio_pass(bio.0.as_ptr()) };
    }

    /// Completes the bio with `result`.
    pub(crate) fn end(self, result: kernel::error::Result) {
        let bio = core::mem::ManuallyDrop::new(self);
        let err = match result {
            Ok(()) => 0,
            Err(e) => e.to_errno(),
        };
        // SAFETY: we hold the bio; ending it hands it back to its owner.
        unsafe { bindings::blksnap_bio_end(bio.0.as_ptr(), err) };
    }

    /// Does the bio's I/O on `bdev` at `sector` instead, through a clone
    /// sharing its pages, and waits for it.
    ///
    /// Sleeps. The bio itself stays held: the caller ends it.
    pub(crate) fn redirect_wait(
        &self,
        bdev: &super::bdev::BlockDevice,
        sector: u64,
    ) -> kernel::error::Result {
        // SAFETY: the bio and the device are valid; the clone is released
        // below after its I/O completed.
        unsafe {
            let clone = bindings::blksnap_bio_clone(self.0.as_ptr(), bdev.raw(), sector);
            if clone.is_null() {
                return Err(kernel::error::code::ENOMEM);
            }
            let ret = bindings::blksnap_bio_submit_wait(clone);
            bindings::bio_put(clone);
            kernel::error::to_result(ret)
        }
    }
}

/// What the completion of a bio sent on by [`Bio::redirect`] reports to.
pub(crate) trait RedirectDone: Send + Sync {
    /// Returns the result the original bio ends with, given its clone's
    /// `result` and the `tag` given to [`Bio::redirect`].
    ///
    /// Called in any context, interrupts included: must not sleep.
    fn redirect_done(&self, tag: u64, result: kernel::error::Result) -> kernel::error::Result;
}

/// The device [`Bio::redirect`] sends a bio to, kept open until the read
/// completes.
pub(crate) enum Via<T> {
    /// A device the read holds a reference to.
    Device(Arc<BlockDevice>),
    /// One of the target's own devices, which the target (held by the
    /// read) keeps open.
    Own(fn(&T) -> &BlockDevice),
}

impl Bio {
    /// Sends the bio's I/O to the device `via` names, at `sector`, through
    /// a clone sharing its pages, without waiting and without sleeping.
    ///
    /// The clone holds a reference to `to` (and to the device, for
    /// [`Via::Device`]) until it completes; then, in any context, `to`'s
    /// [`RedirectDone::redirect_done`] turns its result into the bio's, the
    /// references go, and the bio ends. Gives the bio back if no clone was
    /// to be had without sleeping.
    pub(crate) fn redirect<T: RedirectDone>(
        self,
        to: ArcBorrow<'_, T>,
        via: Via<T>,
        sector: u64,
        tag: u64,
    ) -> core::result::Result<(), Bio> {
        let to: Arc<T> = to.into();
        let (bdev, dev) = match via {
            Via::Device(d) => (d.raw(), Arc::into_raw(d)),
            Via::Own(own) => (own(&to).raw(), core::ptr::null()),
        };
        let ctx = Arc::into_raw(to);
        // SAFETY: we hold the bio; the device is open for as long as the
        // clone: a `Via::Device` is held by the reference in `dev`, a
        // `Via::Own` by `to`, held in `ctx` (the shim gives both back to
        // `redirect_done_of::<T>`, which releases them). On success the
        // clone's completion ends the bio, so we let go of it.
        let ret = unsafe {
            bindings::blksnap_bio_redirect(
                self.0.as_ptr(),
                bdev,
                sector,
                Some(redirect_done_of::<T>),
                ctx.cast(),
                dev.cast(),
                tag,
            )
        };
        if ret != 0 {
            // SAFETY: not sent: the references are ours again.
            unsafe { release::<T>(ctx, dev) };
            return Err(self);
        }
        core::mem::forget(self);
        Ok(())
    }
}

/// Drops the references [`Bio::redirect`] made of `ctx` and `dev`.
///
/// # Safety
///
/// `ctx` came from `Arc::<T>::into_raw`, `dev` from
/// `Arc::<BlockDevice>::into_raw` or is null, and neither is used again.
unsafe fn release<T>(ctx: *const T, dev: *const BlockDevice) {
    if !dev.is_null() {
        // SAFETY: from `Arc::into_raw` (the function's requirements).
        drop(unsafe { Arc::from_raw(dev) });
    }
    // SAFETY: as above.
    drop(unsafe { Arc::from_raw(ctx) });
}

/// The shim's completion of a clone sent on by [`Bio::redirect`] for a `T`:
/// the errno (or 0) the original bio ends with.
///
/// # Safety
///
/// `ctx`, `dev` and `tag` are those [`Bio::redirect`] gave the shim, which
/// hands them over once.
unsafe extern "C" fn redirect_done_of<T: RedirectDone>(
    ctx: *const core::ffi::c_void,
    dev: *const core::ffi::c_void,
    tag: u64,
    err: core::ffi::c_int,
) -> core::ffi::c_int {
    let result = if err == 0 {
        Ok(())
    } else {
        Err(kernel::error::Error::from_errno(err))
    };
    let ctx = ctx.cast::<T>();
    // SAFETY: `ctx` is a reference to a `T` the clone held (the function's
    // requirements), released below.
    let result = unsafe { &*ctx }.redirect_done(tag, result);
    // SAFETY: the clone's references, handed over once.
    unsafe { release::<T>(ctx, dev.cast()) };
    match result {
        Ok(()) => 0,
        Err(e) => e.to_errno(),
    }
}

impl Drop for Bio {
    fn drop(&mut self) {
        // SAFETY: we still hold the bio: fail it rather than leak it.
        unsafe { bindings::blksnap_bio_end(self.0.as_ptr(), kernel::error::code::EIO.to_errno()) };
    }
}

/// Memory for the module's own I/O: physically contiguous blocks of pages,
/// each as large as the page allocator would give at once (one block, one
/// bio vector, for up to 2^`MAX_PAGE_ORDER` pages of unfragmented memory),
/// smaller blocks where it would not.
pub(crate) struct IoBuffer {
    /// The blocks, in order; the first ones are the largest.
    blocks: KVec<Block>,
}

/// 2^`order` contiguous pages of an [`IoBuffer`], owned.
struct Block {
    /// The first page of a compound page of `order`.
    page: NonNull<bindings::page>,
    order: u32,
}

// SAFETY: a block is plain memory owned by whoever holds it; pages have no
// tie to the thread that allocated them.
unsafe impl Send for Block {}

impl Block {
    /// How many sectors the block holds.
    fn sectors(&self) -> u64 {
        PAGE_SECTORS << self.order
    }
}

impl Drop for Block {
    fn drop(&mut self) {
        // SAFETY: the page came from `blksnap_alloc_block(order)` and is
        // ours; no I/O uses it (an `IoBuffer` is borrowed for the whole of
        // a `pages_io` call, which waits for its bios).
        unsafe { bindings::__free_pages(self.page.as_ptr(), self.order) };
    }
}

impl IoBuffer {
    /// At least `bytes` of memory in as few blocks as the allocator gives
    /// without reclaiming hard: each block the largest that fits what is
    /// left, down to single pages; the pages with `GFP_NOIO`, the vector of
    /// blocks as the caller's allocation scope has it (the copy engine's
    /// is a no-I/O one). Fails with `ENOMEM` only when a single page cannot
    /// be had.
    pub(crate) fn new(bytes: u64) -> kernel::error::Result<Self> {
        let mut left = bytes.div_ceil(PAGE_SIZE);
        let mut blocks = KVec::new();
        // No cap yet: each try asks for the largest block that fits what is
        // left, and after a refusal (the shim refuses orders above
        // MAX_PAGE_ORDER) for one order less, from then on.
        let mut order = u32::MAX;
        while left > 0 {
            order = order.min(left.ilog2());
            // SAFETY: any order may be asked for; a null return is checked.
            let page = unsafe { bindings::blksnap_alloc_block(order) };
            match NonNull::new(page) {
                Some(page) => {
                    // Dropped (and freed) with the vector if the push fails.
                    blocks.push(Block { page, order }, GFP_KERNEL)?;
                    left -= 1 << order;
                }
                None if order == 0 => return Err(ENOMEM),
                None => order -= 1,
            }
        }
        Ok(IoBuffer { blocks })
    }

    /// How many sectors the buffer holds.
    fn sectors(&self) -> u64 {
        self.blocks.iter().map(Block::sectors).sum()
    }
}

/// One contiguous piece of the module's own I/O for [`pages_io`]: `sectors`
/// sectors at `sector` of `bdev`, from or into the start of `buffer`.
#[derive(Clone, Copy)]
pub(crate) struct PageIo<'a> {
    /// The device, held open by the caller.
    pub(crate) bdev: &'a super::bdev::BlockDevice,
    /// The first sector on it.
    pub(crate) sector: u64,
    /// How many sectors.
    pub(crate) sectors: u64,
    /// The memory: at least `sectors` worth.
    pub(crate) buffer: &'a IoBuffer,
}

/// A block's worth (or the tail) of a [`PageIo`]: one bio vector.
#[derive(Clone, Copy)]
struct Unit {
    bdev: *mut bindings::block_device,
    sector: u64,
    sectors: u64,
    /// Whether the unit fills its block (only a piece's tail does not).
    whole: bool,
    page: *mut bindings::page,
}

/// How many sectors a page holds.
const PAGE_SECTORS: u64 = PAGE_SIZE / 512;

/// A page's size in bytes.
const PAGE_SIZE: u64 = kernel::page::PAGE_SIZE as u64;

/// Reads (or, with `write`, writes) every piece of `ios` with the module's
/// own bios, and waits for them all.
///
/// Every bio is submitted before any is waited for; pieces that continue
/// each other on one device share bios. Sleeps. Fails with `EINVAL` (and no
/// I/O) if a piece's buffer is too small; otherwise with `ENOMEM` or the
/// first I/O error, once every bio submitted has completed.
pub(crate) fn pages_io<'a, I>(ios: I, write: bool) -> kernel::error::Result
where
    I: Iterator<Item = PageIo<'a>> + Clone,
{
    let op = if write {
        bindings::REQ_OP_WRITE
    } else {
        bindings::REQ_OP_READ
    };
    if ios.clone().any(|io| io.buffer.sectors() < io.sectors) {
        return Err(EINVAL);
    }
    let mut units = ios.flat_map(|io| {
        let mut done = 0;
        io.buffer.blocks.iter().map_while(move |b| {
            let sectors = (io.sectors - done).min(b.sectors());
            let unit = Unit {
                bdev: io.bdev.raw(),
                sector: io.sector + done,
                sectors,
                whole: sectors == b.sectors(),
                page: b.page.as_ptr(),
            };
            done += sectors;
            (sectors > 0).then_some(unit)
        })
    });
    let batch = core::pin::pin!(Batch {
        remaining: AtomicUsize::new(1),
        error: AtomicI32::new(0),
        done: Opaque::uninit(),
    });
    // SAFETY: the completion is pinned on this stack frame, which outlives
    // every bio of the batch (they are waited for below).
    unsafe { bindings::blksnap_completion_init(batch.done.get()) };
    let mut result = Ok(());
    while let Some(first) = units.next() {
        // How many units from `first` on continue each other on its device
        // (a unit that does not fill its block ends a bio).
        let (mut count, mut last, mut end) = (1, first, first.sector + first.sectors);
        for u in units.clone() {
            if count == MAX_VECS || !last.whole || u.bdev != first.bdev || u.sector != end {
                break;
            }
            (count, last, end) = (count + 1, u, end + u.sectors);
        }
        // SAFETY: the device is open (borrowed from a `PageIo`); the bio is
        // ours until handed to the batch.
        let bio = unsafe { bindings::blksnap_bio_new(first.bdev, first.sector, op, count) };
        if bio.is_null() {
            result = Err(ENOMEM);
            break;
        }
        let mut added = true;
        for u in core::iter::once(first).chain(units.by_ref().take(usize::from(count) - 1)) {
            // Fits a `u32`: a block is at most 2^MAX_PAGE_ORDER pages.
            let len = (u.sectors * 512) as u32;
            // SAFETY: the bio is ours, with room for `count` vectors; each
            // block outlives the batch, which is waited for below.
            added = added && unsafe { bindings::bio_add_page(bio, u.page, len, 0) } == len as i32;
        }
        if !added {
            // SAFETY: the bio is ours and was never submitted.
            unsafe { bindings::bio_put(bio) };
            result = Err(ENOMEM);
            break;
        }
        batch.remaining.fetch_add(1, Ordering::Relaxed);
        // SAFETY: the bio is ours and complete; `batch` lives until every
        // bio of it has completed (waited for below), and `batch_endio`
        // takes `bi_private` for what it is.
        unsafe {
            bindings::blksnap_bio_submit_endio(
                bio,
                Some(batch_endio),
                core::ptr::from_ref::<Batch>(&batch).cast_mut().cast(),
            )
        };
    }
    // Our own count: if bios are still in flight, the last one completes.
    if batch.remaining.fetch_sub(1, Ordering::AcqRel) != 1 {
        // SAFETY: initialised above; the last `batch_endio` completes it.
        unsafe { bindings::wait_for_completion_io(batch.done.get()) };
    }
    result.and(kernel::error::to_result(
        batch.error.load(Ordering::Acquire),
    ))
}

/// The most vectors one bio of [`pages_io`] takes (`BIO_MAX_VECS`).
const MAX_VECS: u16 = 256;

/// The bios of one [`pages_io`] call in flight, waited for together.
struct Batch {
    /// Bios in flight, plus one until [`pages_io`] waits.
    remaining: AtomicUsize,
    /// The first error (a negative errno), or 0.
    error: AtomicI32,
    /// Completed when `remaining` drops to zero.
    done: Opaque<bindings::completion>,
}

/// The completion of a bio of a [`Batch`]: keeps its first error, puts the
/// bio, and completes the batch with the last one.
///
/// # Safety
///
/// `bio` is a completed bio submitted by [`pages_io`], its `bi_private` a
/// [`Batch`] that counts it.
unsafe extern "C" fn batch_endio(bio: *mut bindings::bio) {
    // SAFETY: the function's safety requirements: the batch lives until
    // its count drops to zero, which this bio's completion has not done yet.
    let (batch, status) = unsafe { (&*(*bio).bi_private.cast::<Batch>(), (*bio).bi_status) };
    // SAFETY: any status may be converted.
    let err = unsafe { bindings::blk_status_to_errno(status) };
    if err != 0 {
        let _ = batch
            .error
            .compare_exchange(0, err, Ordering::AcqRel, Ordering::Acquire);
    }
    // SAFETY: the bio is ours (from the module's bio set) and done.
    unsafe { bindings::bio_put(bio) };
    // The last touch of `batch` unless this drops the count to zero: then
    // `pages_io` waits for the completion, which outlives `complete`.
    if batch.remaining.fetch_sub(1, Ordering::AcqRel) == 1 {
        // SAFETY: initialised by `pages_io`, which waits for it.
        unsafe { bindings::complete(batch.done.get()) };
    }
}
