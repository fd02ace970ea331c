// SPDX-License-Identifier: GPL-2.0

//! Locks the `kernel` crate of the oldest supported kernel line lacks: an
//! IRQ-safe spinlock, the global take barrier, and RCU read sections.
//!
//! * [`IrqSpinLock`]: a `kernel::sync::Lock` whose backend disables local
//!   interrupts, for state that bio submission (which may run in softirq
//!   context) touches.
//! * [`TakeBarrier`]: one reader-writer spinlock for the whole module. The bio
//!   filter holds it for reading while it marks change tracking and decides
//!   on copy-on-write for a bio; SNAPSHOT_TAKE holds it for writing while it
//!   switches every device of the snapshot, so all of them switch at one
//!   point in time with respect to every write. Lock order: the barrier
//!   before any [`IrqSpinLock`].
//! * [`RcuReadGuard`]: an RCU read-side critical section.

use super::bindings;
use core::marker::PhantomData;
use kernel::{ffi::c_ulong, sync::lock::Backend};

/// Backend of [`IrqSpinLock`]: `spin_lock_irqsave`/`spin_unlock_irqrestore`.
pub(crate) struct IrqSpinLockBackend;

/// A spinlock taken with local interrupts disabled.
pub(crate) type IrqSpinLock<T> = kernel::sync::lock::Lock<T, IrqSpinLockBackend>;

/// Creates an [`IrqSpinLock`] initialiser with a static lock class.
macro_rules! new_irq_spinlock {
    ($inner:expr, $name:literal) => {
        kernel::sync::lock::Lock::<_, $crate::sys::sync::IrqSpinLockBackend>::new(
            $inner,
            kernel::c_str!($name),
            kernel::static_lock_class!(),
        )
    };
}
pub(crate) use new_irq_spinlock;

// SAFETY: `lock` and `unlock` are the matching irqsave pair on an initialised
// spinlock; the saved flags travel in the guard and are restored exactly once.
unsafe impl Backend for IrqSpinLockBackend {
    type State = kernel::bindings::spinlock_t;
    type GuardState = c_ulong;

    unsafe fn init(
        ptr: *mut Self::State,
        name: *const kernel::ffi::c_char,
        key: *mut kernel::bindings::lock_class_key,
    ) {
        // SAFETY: the caller guarantees `ptr` is valid for writes and `name`
        // and `key` live forever.
        unsafe { kernel::bindings::__spin_lock_init(ptr, name, key) }
    }

    unsafe fn lock(ptr: *mut Self::State) -> Self::GuardState {
        // SAFETY: the caller guarantees `ptr` is an initialised spinlock.
        unsafe { bindings::blksnap_spin_lock_irqsave(ptr.cast()) }
    }

    unsafe fn unlock(ptr: *mut Self::State, flags: &Self::GuardState) {
        // SAFETY: the caller holds the lock, taken by `lock` with `flags`.
        unsafe { bindings::blksnap_spin_unlock_irqrestore(ptr.cast(), *flags) }
    }
}

/// The module-wide take barrier (see the module documentation).
pub(crate) struct TakeBarrier;

/// The barrier held for reading; released on drop.
pub(crate) struct TakeReadGuard {
    flags: c_ulong,
    // Must be released on the CPU (and in the context) that took it.
    _not_send: PhantomData<*mut ()>,
}

/// The barrier held for writing; released on drop.
pub(crate) struct TakeWriteGuard {
    flags: c_ulong,
    _not_send: PhantomData<*mut ()>,
}

impl TakeBarrier {
    /// Takes the barrier for reading: no TAKE switches while it is held.
    pub(crate) fn read() -> TakeReadGuard {
        // SAFETY: the lock is a static `rwlock_t` in the C shim, always
        // initialised; the guard releases it.
        let flags = unsafe { bindings::blksnap_take_read_lock() };
        TakeReadGuard {
            flags,
            _not_send: PhantomData,
        }
    }

    /// Takes the barrier for writing: no bio is between its filter decision
    /// and its submission while it is held. Must not sleep while held.
    pub(crate) fn write() -> TakeWriteGuard {
        // SAFETY: as in `read`.
        let flags = unsafe { bindings::blksnap_take_write_lock() };
        TakeWriteGuard {
            flags,
            _not_send: PhantomData,
        }
    }
}

impl Drop for TakeReadGuard {
    fn drop(&mut self) {
        // SAFETY: taken for reading by `TakeBarrier::read` with these flags.
        unsafe { bindings::blksnap_take_read_unlock(self.flags) }
    }
}

impl Drop for TakeWriteGuard {
    fn drop(&mut self) {
        // SAFETY: taken for writing by `TakeBarrier::write` with these flags.
        unsafe { bindings::blksnap_take_write_unlock(self.flags) }
    }
}

/// An RCU read-side critical section; ends on drop. Must not sleep.
pub(crate) struct RcuReadGuard {
    _not_send: PhantomData<*mut ()>,
}

impl RcuReadGuard {
    /// Enters a read-side critical section.
    pub(crate) fn new() -> Self {
        // SAFETY: always allowed; the guard ends the section.
        unsafe { bindings::blksnap_rcu_read_lock() };
        RcuReadGuard {
            _not_send: PhantomData,
        }
    }
}

impl Drop for RcuReadGuard {
    fn drop(&mut self) {
        // SAFETY: entered by `RcuReadGuard::new` in this context.
        unsafe { bindings::blksnap_rcu_read_unlock() };
    }
}

/// Waits until every RCU read-side critical section in progress has ended.
pub(crate) fn synchronize_rcu() {
    // SAFETY: called from process context (ioctls and module unload only).
    unsafe { bindings::synchronize_rcu() };
}
