// SPDX-License-Identifier: GPL-2.0

//! The boundary to the kernel's C API, which knows nothing of snapshots.
//!
//! Everything `unsafe` lives below this module, but for the plain-data
//! `unsafe impl`s of the UAPI types (`scripts/check-layers.sh` checks it):
//! the bindings bindgen generates at build time for what the `kernel` crate
//! lacks, the C shim's entry points, and the safe types built on them (an
//! open block device, bios and their redirection, the image disks, the bio
//! hook, a registered misc device, the module parameters, locks the
//! `kernel` crate lacks, the device index, work items). The rest of the
//! module uses only these safe types, and where this layer calls back into
//! it, it does so through traits the module implements ([`hook::BioFilter`],
//! [`disk::DiskOperations`], [`bio::RedirectDone`], [`miscdev::FileOps`]);
//! no file here names a module above it. Facts that differ between kernel
//! lines belong here too ([`compat`]).
//!
//! Locking: none of its own; each submodule documents its rules.

pub(crate) mod bdev;
pub(crate) mod bio;
pub(crate) mod compat;
pub(crate) mod dev_index;
pub(crate) mod disk;
pub(crate) mod hook;
pub(crate) mod miscdev;
pub(crate) mod params;
// Plain data shared with the host tests (crates/blksnap-logic).
#[expect(unreachable_pub, reason = "also the host tests' API")]
pub(crate) mod sectors;
pub(crate) mod sync;
pub(crate) mod work;

/// Generated at build time from `src/sys/bindings.h` with the kernel's own
/// bindgen flags (see `Kbuild`). Which of these lints fire depends on the
/// kernel's headers, so they are allowed, not expected.
#[allow(
    dead_code,
    missing_docs,
    non_camel_case_types,
    non_upper_case_globals,
    non_snake_case,
    improper_ctypes,
    unreachable_pub,
    unsafe_op_in_unsafe_fn,
    clippy::all,
    // As the kernel's own `bindings` crate allows them.
    clippy::as_underscore,
    clippy::cast_lossless,
    clippy::ptr_as_ptr,
    clippy::ref_as_ptr,
    clippy::undocumented_unsafe_blocks
)]
mod bindings {
    // The kernel's bindgen flags leave these to the bindings crate.
    type __kernel_size_t = usize;
    type __kernel_ssize_t = isize;
    type __kernel_ptrdiff_t = isize;

    include!("bindings_generated.rs");
}

/// Error codes the `kernel` crate of the oldest supported line does not name.
pub(crate) mod errno {
    use super::bindings;
    use kernel::error::Error;

    /// `ENODATA`: no data available.
    pub(crate) fn enodata() -> Error {
        Error::from_errno(-(bindings::ENODATA as i32))
    }

    /// `EALREADY`: the operation was done already.
    pub(crate) fn ealready() -> Error {
        Error::from_errno(-(bindings::EALREADY as i32))
    }

    /// `EOVERFLOW`: a value does not fit the field it goes in.
    pub(crate) fn eoverflow() -> Error {
        Error::from_errno(-(bindings::EOVERFLOW as i32))
    }
}

/// Whether a kernel log message that user space can cause may be written
/// now: one rate limit (the kernel's default, 10 per 5 s) for all of them.
/// Any context.
pub(crate) fn log_allowed() -> bool {
    // SAFETY: `__ratelimit` on the shim's static state may be called from
    // any context.
    unsafe { bindings::blksnap_log_allowed() }
}

/// Whether the current task has `CAP_SYS_ADMIN` in the initial user namespace.
pub(crate) fn capable_sys_admin() -> bool {
    // SAFETY: `capable` only reads the current task's credentials and may be
    // called from any process context.
    unsafe { bindings::capable(bindings::CAP_SYS_ADMIN as kernel::ffi::c_int) }
}

/// The monotonic clock (`CLOCK_MONOTONIC`) in nanoseconds. Any context.
pub(crate) fn monotonic_ns() -> i64 {
    // SAFETY: `ktime_get` only reads the timekeeper; any context.
    unsafe { bindings::ktime_get() }
}

/// Fills `id` with a random (version 4) UUID.
pub(crate) fn generate_random_uuid(id: &mut [u8; 16]) {
    // SAFETY: `id` is 16 writable bytes, as the function requires.
    unsafe { bindings::generate_random_uuid(id.as_mut_ptr()) }
}

/// A scope in which the current task's allocations do no I/O
/// (`memalloc_noio_save`), until it is dropped.
///
/// Work that serves I/O runs in one, so no allocation there can recurse into
/// the I/O it is serving.
pub(crate) struct NoIo {
    flags: kernel::ffi::c_uint,
    _not_send: core::marker::PhantomData<*mut ()>,
}

impl NoIo {
    /// Enters the scope; dropping the value leaves it.
    pub(crate) fn enter() -> Self {
        // SAFETY: always allowed; the guard restores the flags.
        let flags = unsafe { bindings::blksnap_noio_save() };
        NoIo {
            flags,
            _not_send: core::marker::PhantomData,
        }
    }
}

impl Drop for NoIo {
    fn drop(&mut self) {
        // SAFETY: saved by `enter` in this task.
        unsafe { bindings::blksnap_noio_restore(self.flags) };
    }
}

/// The bio set the module's own bios come from, which exists while the
/// value does.
pub(crate) struct BioSet(());

impl BioSet {
    /// Initialises the module's bio set.
    pub(crate) fn new() -> kernel::error::Result<Self> {
        // SAFETY: once at module init; `Drop` exits it.
        kernel::error::to_result(unsafe { bindings::blksnap_bioset_init() })?;
        Ok(BioSet(()))
    }
}

impl Drop for BioSet {
    fn drop(&mut self) {
        // SAFETY: initialised by `new`; dropped after everything that
        // allocates from it (the module's field order).
        unsafe { bindings::blksnap_bioset_exit() };
    }
}

/// The module's workqueue (per-CPU, `WQ_MEM_RECLAIM`: the work on it serves
/// writeback), drained and destroyed when dropped.
pub(crate) struct CowQueue(*mut bindings::workqueue_struct);

// SAFETY: workqueues are used from any thread.
unsafe impl Send for CowQueue {}
// SAFETY: as above.
unsafe impl Sync for CowQueue {}

impl CowQueue {
    /// Allocates the workqueue.
    pub(crate) fn new() -> kernel::error::Result<Self> {
        // SAFETY: process context (module init).
        let wq = unsafe { bindings::blksnap_alloc_workqueue() };
        if wq.is_null() {
            return Err(kernel::error::code::ENOMEM);
        }
        Ok(CowQueue(wq))
    }

    /// Waits until every work item queued so far has run.
    pub(crate) fn flush(&self) {
        // SAFETY: valid until `Drop`; process context.
        unsafe { bindings::__flush_workqueue(self.0) };
    }

    /// The queue as the `kernel` crate's [`Queue`](kernel::workqueue::Queue),
    /// to spawn work on.
    pub(crate) fn queue(&self) -> &kernel::workqueue::Queue {
        // SAFETY: valid until `Drop`, which outlives `&self`.
        unsafe { kernel::workqueue::Queue::from_raw(self.0.cast()) }
    }
}

/// The module's own reference to its workqueue, which waits for every
/// queued work item when dropped.
///
/// Dropped after the bio hook is gone, it waits first because work items
/// hold references to the queue too, and the last reference must not be
/// dropped by a work item of the queue itself.
pub(crate) struct QueueGuard(pub(crate) kernel::sync::Arc<CowQueue>);

impl Drop for QueueGuard {
    fn drop(&mut self) {
        self.0.flush();
    }
}

impl Drop for CowQueue {
    fn drop(&mut self) {
        // SAFETY: allocated by `new`; waits for queued work, then frees.
        unsafe { bindings::destroy_workqueue(self.0) };
    }
}
