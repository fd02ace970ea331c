// SPDX-License-Identifier: GPL-2.0

//! [`DevIndex`]: the module's one index from a device number to the object
//! that tracks it, with lock-free lookups for the bio hot path.
//!
//! It is the C shim's static `xarray`. Each entry is a reference
//! (`Arc::into_raw`) owned by the index. Lookups run under RCU; removal
//! erases the entry, waits for an RCU grace period and only then drops the
//! reference, so a lookup never sees a freed object.
//!
//! Locking: the xarray's own lock serializes insertions and removals; the
//! owner serializes insert-versus-remove decisions for one device (the
//! tracker registry does so under its mutex).

use super::{bindings, sync::PreemptOff};
use core::marker::PhantomData;
use kernel::{
    error::to_result,
    prelude::*,
    sync::{Arc, ArcBorrow},
};

/// The index of `T` by device number.
///
/// # Invariants
///
/// Only one `DevIndex` exists, and every entry of the shim's
/// `blksnap_tracker_index` is a pointer from `Arc::<T>::into_raw` owned by
/// the index. Its owner removes every entry before the module unloads.
pub(crate) struct DevIndex<T: Send + Sync> {
    _entries: PhantomData<Arc<T>>,
}

impl<T: Send + Sync> DevIndex<T> {
    /// Takes ownership of the (empty) static index.
    ///
    /// # Safety
    ///
    /// At most one `DevIndex` may exist, and its owner must remove every
    /// entry before the module unloads.
    pub(crate) const unsafe fn new() -> Self {
        DevIndex {
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

    /// Indexes `obj` at `dev`; `EBUSY` if something already is.
    pub(crate) fn insert(&self, dev: u32, obj: Arc<T>) -> Result {
        let p = Arc::into_raw(obj);
        // SAFETY: `xa_insert` (GFP_KERNEL) in process context; on success
        // the index owns `p` (the type invariant).
        let ret =
            unsafe { bindings::blksnap_xa_insert(Self::xa(), dev as usize, p.cast_mut().cast()) };
        if ret != 0 {
            // SAFETY: not stored: give the reference back.
            drop(unsafe { Arc::from_raw(p) });
        }
        to_result(ret)
    }

    /// Removes the object indexed at `dev` and returns the index's
    /// reference once no lookup can still see it. Sleeps.
    pub(crate) fn remove(&self, dev: u32) -> Option<Arc<T>> {
        // SAFETY: process context; the xarray serializes with other writers.
        let p = unsafe { bindings::xa_erase(Self::xa(), dev as usize) };
        if p.is_null() {
            return None;
        }
        super::sync::synchronize_rcu();
        // SAFETY: the entry came from `Arc::into_raw`; after the grace period
        // no lookup holds it.
        Some(unsafe { Arc::from_raw(p.cast::<T>()) })
    }
}
