// SPDX-License-Identifier: GPL-2.0

//! [`DevIndex`]: the module's one index from a device number to the object
//! that tracks it, with lock-free lookups for the bio hot path.
//!
//! The C shim's static `xarray` holds every entry: a reference
//! (`Arc::into_raw`) owned by the index. In front of it, a small table of
//! atomic pointers holds, for each of its slots, one of the entries whose
//! device number hashes there; `overflow` counts the entries that are in
//! the xarray only. A lookup reads one slot and is done when the slot holds
//! its device, or when nothing overflowed: an untracked device costs a
//! load or two, not a walk of the xarray (four levels for device 1:0).
//! Lookups run under RCU; removal clears the slot, erases the entry, waits
//! for an RCU grace period and only then drops the reference, so a lookup
//! never sees a freed object.
//!
//! Locking: insertions and removals take `&mut self`'s place by contract:
//! the owner serializes them (the tracker registry does so under the
//! control mutex); the xarray's own lock serializes its updates.

use super::{bindings, sync::PreemptOff};
use core::{
    marker::PhantomData,
    ptr,
    sync::atomic::{AtomicPtr, AtomicUsize, Ordering},
};
use kernel::{
    error::to_result,
    prelude::*,
    sync::{Arc, ArcBorrow},
};

/// What the index keys an object by.
pub(crate) trait Keyed {
    /// The device number the object is indexed at.
    fn key(&self) -> u32;
}

/// Slots of the front table (a power of two).
const SLOTS: usize = 64;

/// The front slot of device number `dev` (`major << 20 | minor`): the
/// minor's low bits, mixed with the major.
fn slot_of(dev: u32) -> usize {
    ((dev ^ (dev >> 20).wrapping_mul(0x9e37)) as usize) % SLOTS
}

/// The index of `T` by device number.
///
/// # Invariants
///
/// Only one `DevIndex` exists, and every entry of the shim's
/// `blksnap_tracker_index` is a pointer from `Arc::<T>::into_raw` owned by
/// the index. Every non-null `front` slot holds one of those entries, whose
/// key hashes to the slot; `overflow` is the number of entries in no slot.
/// Its owner removes every entry before the module unloads.
pub(crate) struct DevIndex<T: Keyed + Send + Sync> {
    front: [AtomicPtr<T>; SLOTS],
    overflow: AtomicUsize,
    _entries: PhantomData<Arc<T>>,
}

impl<T: Keyed + Send + Sync> DevIndex<T> {
    /// Takes ownership of the (empty) static index.
    ///
    /// # Safety
    ///
    /// At most one `DevIndex` may exist; its owner must serialize
    /// [`DevIndex::insert`] and [`DevIndex::remove`] and remove every entry
    /// before the module unloads.
    pub(crate) const unsafe fn new() -> Self {
        DevIndex {
            front: [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS],
            overflow: AtomicUsize::new(0),
            _entries: PhantomData,
        }
    }

    fn xa() -> *mut bindings::xarray {
        core::ptr::addr_of_mut!(bindings::blksnap_tracker_index)
    }

    /// Runs `f` on the object indexed at `dev`, with preemption disabled
    /// (an RCU read section: `f` must not sleep). For the bio hot path: no
    /// reference count traffic.
    pub(crate) fn with<R>(
        &self,
        _rcu: &PreemptOff,
        dev: u32,
        f: impl FnOnce(ArcBorrow<'_, T>) -> R,
    ) -> Option<R> {
        let p = self.front[slot_of(dev)].load(Ordering::Acquire);
        if !p.is_null() {
            // SAFETY: a slot holds an entry of the index (the type
            // invariant), which is not dropped before a grace period after
            // it left both the slot and the xarray; we are inside a read
            // section (`_rcu`) until `f` returns.
            let obj = unsafe { ArcBorrow::from_raw(p) };
            if obj.key() == dev {
                return Some(f(obj));
            }
        }
        if self.overflow.load(Ordering::Acquire) == 0 {
            return None;
        }
        // SAFETY: `xa_load` may be called in any context on an initialised
        // xarray.
        let p = unsafe { bindings::xa_load(Self::xa(), dev as usize) };
        if p.is_null() {
            return None;
        }
        // SAFETY: the entry came from `Arc::into_raw` (the type invariant)
        // and is not dropped before a grace period after its removal; we are
        // inside a read section (`_rcu`) until `f` returns.
        let obj = unsafe { ArcBorrow::from_raw(p.cast::<T>()) };
        Some(f(obj))
    }

    /// Indexes `obj` at its key; `EBUSY` if something already is. Callers
    /// serialize insertions and removals (see [`DevIndex::new`]).
    pub(crate) fn insert(&self, obj: Arc<T>) -> Result {
        let dev = obj.key();
        let p = Arc::into_raw(obj);
        // SAFETY: `xa_insert` (GFP_KERNEL) in process context; on success
        // the index owns `p` (the type invariant).
        let ret =
            unsafe { bindings::blksnap_xa_insert(Self::xa(), dev as usize, p.cast_mut().cast()) };
        if ret != 0 {
            // SAFETY: not stored: give the reference back.
            drop(unsafe { Arc::from_raw(p) });
            return to_result(ret);
        }
        let slot = &self.front[slot_of(dev)];
        if slot.load(Ordering::Relaxed).is_null() {
            slot.store(p.cast_mut(), Ordering::Release);
        } else {
            self.overflow.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Removes the object indexed at `dev` and returns the index's
    /// reference once no lookup can still see it. Sleeps. Callers
    /// serialize insertions and removals (see [`DevIndex::new`]).
    pub(crate) fn remove(&self, dev: u32) -> Option<Arc<T>> {
        // SAFETY: process context; `xa_load` may be called anywhere.
        let p = unsafe { bindings::xa_load(Self::xa(), dev as usize) };
        if p.is_null() {
            return None;
        }
        let slot = &self.front[slot_of(dev)];
        if slot.load(Ordering::Relaxed) == p.cast::<T>() {
            slot.store(ptr::null_mut(), Ordering::Release);
        } else {
            self.overflow.fetch_sub(1, Ordering::Release);
        }
        // SAFETY: process context; the xarray serializes with other writers.
        let p = unsafe { bindings::xa_erase(Self::xa(), dev as usize) };
        if p.is_null() {
            // Serialized callers: the entry loaded above is still there.
            return None;
        }
        super::sync::synchronize_rcu();
        // SAFETY: the entry came from `Arc::into_raw`; it is in no slot and
        // not in the xarray any more, and after the grace period no lookup
        // holds it.
        Some(unsafe { Arc::from_raw(p.cast::<T>()) })
    }
}
