// SPDX-License-Identifier: GPL-2.0

//! [`BioHook`]: every bio submitted on the system passes through the bio
//! filter first.
//!
//! The C shim's ftrace ops on `submit_bio_noacct` shows each call made from
//! outside the module to `blksnap_bio_filter`, which [`bio_filter!`]
//! defines for the module's [`BioFilter`], in the submitter's context
//! with preemption disabled. The filter lets the bio go on with that call,
//! or takes it over (the call then returns at once) and passes it on later
//! from inside the module, where the ops lets it through. The module's own
//! I/O therefore never reaches the filter.
//!
//! Locking: none. Unregistering the ops waits for every CPU to leave the
//! handler and for every task to leave the module's text it jumped to.

use super::{bindings, bio::Submitted, sync::PreemptOff};
use kernel::{error::to_result, prelude::*};

/// The installed bio hook, removed when dropped.
pub(crate) struct BioHook(());

impl BioHook {
    /// Installs the hook: from now on every bio goes through the filter.
    pub(crate) fn install() -> Result<Self> {
        // SAFETY: registers the shim's static ftrace ops once; `Drop`
        // unregisters it.
        to_result(unsafe { bindings::blksnap_hook_install() })?;
        Ok(BioHook(()))
    }
}

impl Drop for BioHook {
    fn drop(&mut self) {
        // SAFETY: installed by `install`. Unregistering waits until no CPU
        // is in the ftrace handler, and no task in `blksnap_bio_taken`, any
        // more (synchronize_rcu_tasks for an ops in a module).
        unsafe { bindings::blksnap_hook_remove() };
    }
}

/// What the bio hook hands every bio to, implemented by the module's bio
/// filter and named by [`bio_filter!`].
pub(crate) trait BioFilter {
    /// Called for every bio submitted from outside the module, in the
    /// submitter's context with preemption disabled: gives the bio back to
    /// go on now, or takes it over (and passes it on or ends it later).
    fn submit(bio: Submitted, preempt_off: &PreemptOff) -> Option<Submitted>;
}

/// Makes `$filter`, a type implementing [`BioFilter`], the filter of the
/// bio hook: defines the entry the shim's ftrace handler calls, which calls
/// the filter directly (no indirect call on the path of every bio).
macro_rules! bio_filter {
    ($filter:ty) => {
        /// The bio hook's entry, for `submit_bio_noacct(bio)`: whether the
        /// filter took the bio over.
        ///
        /// # Safety
        ///
        /// As for [`sys::hook::enter`](crate::sys::hook::enter); only the
        /// shim's ftrace handler calls it.
        #[no_mangle]
        unsafe extern "C" fn blksnap_bio_filter(bio: *mut $crate::sys::hook::RawBio) -> bool {
            // SAFETY: the caller's guarantee, passed on.
            unsafe { $crate::sys::hook::enter::<$filter>(bio) }
        }
    };
}
pub(crate) use bio_filter;

/// The C `struct bio`, as the hook's entry receives it.
pub(crate) type RawBio = bindings::bio;

/// Runs `F`'s filter for `submit_bio_noacct(bio)`, the work of the hook's
/// entry, and returns whether it took the bio over.
///
/// # Safety
///
/// Called in the submitter's context, with preemption disabled, with the
/// argument of that call; the call goes on with the bio unless this returns
/// true.
#[inline(always)]
pub(crate) unsafe fn enter<F: BioFilter>(bio: *mut RawBio) -> bool {
    let Some(bio) = core::ptr::NonNull::new(bio) else {
        return false;
    };
    // SAFETY: the caller's guarantee: the bio goes on unless taken, which
    // `submit` tells by not giving it back.
    let bio = unsafe { Submitted::new(bio) };
    // SAFETY: the shim's ftrace handler disables preemption around this
    // call, and the proof does not outlive it.
    let preempt_off = unsafe { PreemptOff::assume() };
    F::submit(bio, &preempt_off).is_none()
}
