// SPDX-License-Identifier: GPL-2.0

//! Locks the `kernel` crate of the oldest supported kernel line lacks: an
//! IRQ-safe spinlock, the global take barrier, and proof of running with
//! preemption disabled.
//!
//! * [`IrqSpinLock`]: a `kernel::sync::Lock` whose backend disables local
//!   interrupts, for state that bio submission (which may run in softirq
//!   context) touches.
//! * [`TakeBarrier`]: one reader-writer spinlock for the whole module. The bio
//!   filter holds it for reading while it marks change tracking and decides
//!   on copy-on-write for a bio; SNAPSHOT_TAKE and DESTROY hold it for
//!   writing while they switch every device of the snapshot, so all of them
//!   switch at one point in time with respect to every write. Switches are
//!   rare, so they are announced first and wait for an RCU grace period;
//!   while none is announced, the filter (preemption disabled) takes no
//!   lock at all. Lock order: the barrier before any [`IrqSpinLock`].
//! * [`OnceArc`]: a value set once and then read without a lock, for the
//!   storage devices the image's submit path looks up.
//! * [`PreemptOff`]: the bio filter's proof that preemption is disabled,
//!   which also makes it an RCU read-side critical section: RCU grace
//!   periods wait for code that runs with preemption disabled.

use super::bindings;
use core::{
    marker::PhantomData,
    sync::atomic::{AtomicPtr, AtomicUsize, Ordering},
};
use kernel::{
    ffi::c_ulong,
    sync::{lock::Backend, Arc, ArcBorrow},
};

/// The backend of [`IrqSpinLock`]: `spin_lock_irqsave` and
/// `spin_unlock_irqrestore`.
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

    super::compat::lock_backend_extras!();
}

/// The module-wide take barrier (see the module documentation): held for
/// reading by the bio filter ([`TakeBarrier::read`]), for writing by a
/// switch once announced ([`TakeBarrier::announce`],
/// [`TakeAnnounced::write`]).
pub(crate) struct TakeBarrier;

/// How many switches are announced and not over ([`TakeAnnounced`] values
/// alive).
///
/// While it is zero, the filter takes no lock: a switch raises it, then waits for
/// an RCU grace period before taking the lock for writing, so by then every
/// filter that saw zero has finished, and every later one takes the lock.
static ANNOUNCED: AtomicUsize = AtomicUsize::new(0);

/// The barrier held for reading, released when dropped.
pub(crate) struct TakeReadGuard {
    /// `None` on the fast path: no switch was announced, none can happen
    /// before the caller re-enables preemption.
    flags: Option<c_ulong>,
    // Must be released on the CPU (and in the context) that took it.
    _not_send: PhantomData<*mut ()>,
}

/// A switch announced: until it is dropped, the filter takes the barrier's
/// lock.
pub(crate) struct TakeAnnounced(());

/// The barrier held for writing, released when dropped.
pub(crate) struct TakeWriteGuard<'a> {
    flags: c_ulong,
    _announced: PhantomData<&'a TakeAnnounced>,
    _not_send: PhantomData<*mut ()>,
}

impl TakeBarrier {
    /// Takes the barrier for reading: no switch happens while it is held.
    ///
    /// Only for the bio filter, which runs with preemption disabled: while
    /// no switch is announced, that alone keeps switches out (they wait
    /// for an RCU grace period after announcing), and no lock is taken.
    /// Must be dropped before `_preempt_off`.
    pub(crate) fn read(_preempt_off: &PreemptOff) -> TakeReadGuard {
        // The fast path: none announced, and none can complete its grace
        // period before the caller re-enables preemption.
        let flags = (ANNOUNCED.load(Ordering::Relaxed) != 0).then(|| {
            // SAFETY: the lock is a static `rwlock_t` in the C shim, always
            // initialised; the guard releases it.
            unsafe { bindings::blksnap_take_read_lock() }
        });
        TakeReadGuard {
            flags,
            _not_send: PhantomData,
        }
    }

    /// Announces a switch, and returns once every filter call either sees
    /// the announcement (and takes the lock) or has finished.
    ///
    /// Sleeps (one RCU grace period), so it comes before anything that must
    /// be quick.
    pub(crate) fn announce() -> TakeAnnounced {
        ANNOUNCED.fetch_add(1, Ordering::SeqCst);
        // Process context (ioctls): may sleep.
        synchronize_rcu();
        TakeAnnounced(())
    }
}

impl TakeAnnounced {
    /// Takes the barrier for writing: while it is held, no bio is between
    /// its filter decision and its submission.
    ///
    /// The holder must not sleep.
    pub(crate) fn write(&self) -> TakeWriteGuard<'_> {
        // SAFETY: as in `TakeBarrier::read`.
        let flags = unsafe { bindings::blksnap_take_write_lock() };
        TakeWriteGuard {
            flags,
            _announced: PhantomData,
            _not_send: PhantomData,
        }
    }
}

impl Drop for TakeReadGuard {
    fn drop(&mut self) {
        if let Some(flags) = self.flags {
            // SAFETY: taken for reading by `TakeBarrier::read` with these
            // flags.
            unsafe { bindings::blksnap_take_read_unlock(flags) }
        }
    }
}

impl Drop for TakeAnnounced {
    fn drop(&mut self) {
        // Announced by `TakeBarrier::announce`, exactly once.
        ANNOUNCED.fetch_sub(1, Ordering::Release);
    }
}

impl Drop for TakeWriteGuard<'_> {
    fn drop(&mut self) {
        // SAFETY: taken for writing by `TakeAnnounced::write` with these
        // flags.
        unsafe { bindings::blksnap_take_write_unlock(self.flags) }
    }
}

/// Proof that the code holding it runs with preemption disabled, for as
/// long as it is held.
///
/// Nothing may sleep then, and it is an RCU read-side critical section (an
/// RCU grace period waits for it to end).
pub(crate) struct PreemptOff {
    _not_send: PhantomData<*mut ()>,
}

impl PreemptOff {
    /// Makes the proof, for a caller that knows preemption is disabled.
    ///
    /// # Safety
    ///
    /// Preemption stays disabled until the value is dropped.
    pub(crate) unsafe fn assume() -> Self {
        // SAFETY: a debug kernel checks the caller's promise.
        unsafe { bindings::blksnap_assert_preemption_disabled() };
        PreemptOff {
            _not_send: PhantomData,
        }
    }
}

/// Waits until every RCU read-side critical section in progress has ended.
pub(crate) fn synchronize_rcu() {
    // SAFETY: called from process context (ioctls and module unload only).
    unsafe { bindings::synchronize_rcu() };
}

/// A reference-counted value set at most once and read without a lock:
/// once set, it stays until the cell is dropped, so a reader borrows it for
/// as long as it borrows the cell.
pub(crate) struct OnceArc<T> {
    /// Null until set; then from [`Arc::into_raw`], holding one reference.
    ptr: AtomicPtr<T>,
}

// SAFETY: the cell holds an `Arc<T>`, which may be sent and shared between
// threads when `T` is `Send + Sync`.
unsafe impl<T: Send + Sync> Send for OnceArc<T> {}
// SAFETY: as above; `set` and `get` synchronise through the atomic pointer.
unsafe impl<T: Send + Sync> Sync for OnceArc<T> {}

impl<T> OnceArc<T> {
    /// An empty cell.
    pub(crate) const fn new() -> Self {
        OnceArc {
            ptr: AtomicPtr::new(core::ptr::null_mut()),
        }
    }

    /// Stores `value` if the cell is empty; gives it back otherwise.
    pub(crate) fn set(&self, value: Arc<T>) -> core::result::Result<(), Arc<T>> {
        let raw = Arc::into_raw(value).cast_mut();
        match self.ptr.compare_exchange(
            core::ptr::null_mut(),
            raw,
            Ordering::AcqRel,
            Ordering::Acquire,
        ) {
            Ok(_) => Ok(()),
            // SAFETY: `raw` came from `Arc::into_raw` above and was not
            // stored: its reference is ours again.
            Err(_) => Err(unsafe { Arc::from_raw(raw) }),
        }
    }

    /// The value, if set.
    pub(crate) fn get(&self) -> Option<ArcBorrow<'_, T>> {
        let raw = self.ptr.load(Ordering::Acquire);
        if raw.is_null() {
            return None;
        }
        // SAFETY: a non-null pointer came from `Arc::into_raw` in `set`, and
        // the cell keeps that reference until it is dropped, which cannot
        // happen while `self` is borrowed; no `UniqueArc` of it exists.
        Some(unsafe { ArcBorrow::from_raw(raw) })
    }
}

impl<T> Drop for OnceArc<T> {
    fn drop(&mut self) {
        let raw = *self.ptr.get_mut();
        if !raw.is_null() {
            // SAFETY: from `Arc::into_raw` in `set`; the cell's reference,
            // given up here once.
            drop(unsafe { Arc::from_raw(raw) });
        }
    }
}
