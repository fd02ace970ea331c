// SPDX-License-Identifier: GPL-2.0

//! [`BioHook`]: every bio submitted on the system passes through the bio
//! filter first.
//!
//! The C shim's ftrace ops on `submit_bio_noacct` redirects each call made
//! from outside the module to `blksnap_bio_hook`, which hands the bio to the
//! filter (`crate::filter::submit`); the filter passes it on from inside the
//! module, where the ops lets it through. The module's own I/O therefore
//! never reaches the filter.
//!
//! Locking: none; [`INFLIGHT`] counts the calls inside the hook so removal
//! can wait for them to leave the module's text.

use super::{bindings, bio::Bio};
use core::sync::atomic::{AtomicUsize, Ordering};
use kernel::{error::to_result, prelude::*};

/// Calls currently inside `blksnap_bio_hook`.
static INFLIGHT: AtomicUsize = AtomicUsize::new(0);

/// The installed hook; removed on drop.
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
        // is in the ftrace handler any more.
        unsafe { bindings::blksnap_hook_remove() };
        super::sync::synchronize_rcu();
        while INFLIGHT.load(Ordering::Acquire) != 0 {
            // SAFETY: process context (module unload).
            unsafe { bindings::msleep(1) };
        }
    }
}

/// Where the ftrace ops sends `submit_bio_noacct(bio)` calls.
///
/// # Safety
///
/// Called in place of `submit_bio_noacct` with the caller's bio.
#[no_mangle]
unsafe extern "C" fn blksnap_bio_hook(bio: *mut bindings::bio) {
    INFLIGHT.fetch_add(1, Ordering::AcqRel);
    // SAFETY: the submitter hands the bio over, as to `submit_bio_noacct`;
    // the filter passes it on, now or after copy-on-write.
    if let Some(bio) = unsafe { Bio::from_raw(bio) } {
        crate::filter::submit(bio);
    }
    INFLIGHT.fetch_sub(1, Ordering::AcqRel);
}
