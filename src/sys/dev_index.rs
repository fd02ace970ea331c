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
//! Locking: entries come and go only through the index's one
//! [`IndexOwner`], whose `&mut self` serializes insertions and removals
//! (its holder keeps it under a mutex of its own); the xarray's own lock
//! serializes its updates. Lookups need no lock.

use super::{bdev::DevNum, bindings, sync::PreemptOff};
use core::{
    marker::PhantomData,
    ptr,
    sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering},
};
use kernel::{
    error::to_result,
    prelude::*,
    sync::{Arc, ArcBorrow},
};

/// What the index keys an object by.
pub(crate) trait Keyed {
    /// The device number the object is indexed at.
    fn key(&self) -> DevNum;
}

/// How many slots the front table has (a power of two).
const SLOTS: usize = 64;

/// The front slot of device number `dev` (`major << 20 | minor`): the
/// minor's low bits, mixed with the major.
fn slot_of(dev: DevNum) -> usize {
    let dev = dev.raw();
    ((dev ^ (dev >> 20).wrapping_mul(0x9e37)) as usize) % SLOTS
}

/// The index of `T` by device number, with lock-free lookups.
///
/// # Invariants
///
/// While an [`IndexOwner`] of this index exists, every entry of the shim's
/// `blksnap_tracker_index` is a pointer from `Arc::<T>::into_raw` owned by
/// this index; while none does, this index has no entries. Every non-null
/// `front` slot holds one of its entries, whose key hashes to the slot;
/// `overflow` is the number of its entries in no slot.
pub(crate) struct DevIndex<T: Keyed + Send + Sync> {
    front: [AtomicPtr<T>; SLOTS],
    overflow: AtomicUsize,
    _entries: PhantomData<Arc<T>>,
}

impl<T: Keyed + Send + Sync> DevIndex<T> {
    /// Creates an empty index (for a `static`); entries come through its
    /// [`IndexOwner`].
    pub(crate) const fn new() -> Self {
        // INVARIANT: no owner, no entries.
        DevIndex {
            front: [const { AtomicPtr::new(ptr::null_mut()) }; SLOTS],
            overflow: AtomicUsize::new(0),
            _entries: PhantomData,
        }
    }

    /// Makes the one owner of the index, which alone adds and removes
    /// entries.
    ///
    /// Fails with `EBUSY` while an owner (of this or any other index: they
    /// share the shim's xarray) exists.
    pub(crate) fn own(&'static self) -> Result<IndexOwner<T>> {
        OWNED
            .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
            .map_err(|_| EBUSY)?;
        // INVARIANT: the xarray is empty (the last owner let go of it only
        // once it had removed every entry), so this index owns every entry
        // from now on.
        Ok(IndexOwner {
            index: self,
            entries: 0,
        })
    }

    /// The shim's xarray behind every index.
    fn xa() -> *mut bindings::xarray {
        core::ptr::addr_of_mut!(bindings::blksnap_tracker_index)
    }

    /// Runs `f` on the object indexed at `dev`, with preemption disabled
    /// (an RCU read section: `f` must not sleep). For the bio hot path: no
    /// reference count traffic.
    pub(crate) fn with<R>(
        &self,
        _rcu: &PreemptOff,
        dev: DevNum,
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
        let p = unsafe { bindings::xa_load(Self::xa(), dev.raw() as usize) };
        if p.is_null() {
            return None;
        }
        // SAFETY: the entry came from `Arc::into_raw` (the type invariant)
        // and is not dropped before a grace period after its removal; we are
        // inside a read section (`_rcu`) until `f` returns.
        let obj = unsafe { ArcBorrow::from_raw(p.cast::<T>()) };
        Some(f(obj))
    }
}

/// Whether an [`IndexOwner`] exists.
static OWNED: AtomicBool = AtomicBool::new(false);

/// The one owner of a [`DevIndex`], which adds and removes its entries.
///
/// # Invariants
///
/// `entries` is the number of entries of the index; `OWNED` is set while
/// the owner exists.
pub(crate) struct IndexOwner<T: Keyed + Send + Sync + 'static> {
    index: &'static DevIndex<T>,
    entries: usize,
}

impl<T: Keyed + Send + Sync + 'static> IndexOwner<T> {
    /// Indexes `obj` at its key; `EBUSY` if something already is.
    pub(crate) fn insert(&mut self, obj: Arc<T>) -> Result {
        let dev = obj.key();
        let p = Arc::into_raw(obj);
        // SAFETY: `xa_insert` (GFP_KERNEL) in process context; on success
        // the index owns `p` (the type invariant).
        let ret = unsafe {
            bindings::blksnap_xa_insert(
                DevIndex::<T>::xa(),
                dev.raw() as usize,
                p.cast_mut().cast(),
            )
        };
        if ret != 0 {
            // SAFETY: not stored: give the reference back.
            drop(unsafe { Arc::from_raw(p) });
            return to_result(ret);
        }
        // INVARIANT: the index owns `p` now; it goes into its slot if that
        // is free, else it is counted in `overflow`; `entries` counts it.
        self.entries += 1;
        let slot = &self.index.front[slot_of(dev)];
        if slot.load(Ordering::Relaxed).is_null() {
            slot.store(p.cast_mut(), Ordering::Release);
        } else {
            self.index.overflow.fetch_add(1, Ordering::Release);
        }
        Ok(())
    }

    /// Removes the object indexed at `dev` and returns the index's
    /// reference once no lookup can still see it. Sleeps.
    pub(crate) fn remove(&mut self, dev: DevNum) -> Option<Arc<T>> {
        // SAFETY: process context; `xa_load` may be called anywhere.
        let p = unsafe { bindings::xa_load(DevIndex::<T>::xa(), dev.raw() as usize) };
        if p.is_null() {
            return None;
        }
        // INVARIANT: the entry leaves its slot (or `overflow`), then the
        // xarray; the index gives up `p` below.
        let slot = &self.index.front[slot_of(dev)];
        if slot.load(Ordering::Relaxed) == p.cast::<T>() {
            slot.store(ptr::null_mut(), Ordering::Release);
        } else {
            self.index.overflow.fetch_sub(1, Ordering::Release);
        }
        // SAFETY: process context; the xarray serializes with other writers.
        let p = unsafe { bindings::xa_erase(DevIndex::<T>::xa(), dev.raw() as usize) };
        if p.is_null() {
            // Only the owner removes: the entry loaded above is still there.
            return None;
        }
        self.entries -= 1;
        super::sync::synchronize_rcu();
        // SAFETY: the entry came from `Arc::into_raw`; it is in no slot and
        // not in the xarray any more, and after the grace period no lookup
        // holds it.
        Some(unsafe { Arc::from_raw(p.cast::<T>()) })
    }
}

impl<T: Keyed + Send + Sync + 'static> Drop for IndexOwner<T> {
    /// Lets go of the index once it is empty. An owner dropped with entries
    /// left keeps the index owned for good: those entries (and the objects
    /// they hold) leak, but no later owner can remove what lookups through
    /// this index may still see.
    fn drop(&mut self) {
        if self.entries == 0 {
            OWNED.store(false, Ordering::Release);
        } else {
            pr_warn!("device index dropped with {} entries\n", self.entries);
        }
    }
}
