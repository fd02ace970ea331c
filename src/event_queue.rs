// SPDX-License-Identifier: GPL-2.0

//! A snapshot's event queue: what SNAPSHOT_WAIT_EVENT hands to user space.
//!
//! Events are kept in a [`Ring`] allocated at snapshot create, so queuing
//! one never allocates (it may happen on the I/O path). When the ring is
//! full the oldest event is dropped: the newest state matters most.
//!
//! Locking: `inner` (an [`IrqSpinLock`]) protects the ring and the closed
//! flag; `wait` is signalled on every push and on close. Events are queued
//! from process context and work items, and in one case from the bio filter
//! in the submitter's context, which may be softirq: the `corrupted` event
//! when a held-back write finds no memory for its work item. Hence the lock
//! disables interrupts, as the filter's other locks do.

use crate::{
    cbt_map::copy_prefix,
    ring::Ring,
    sys::sync::{new_irq_spinlock, IrqSpinLock},
};
use kernel::{
    new_condvar,
    prelude::*,
    sync::{CondVar, CondVarTimeoutResult},
    time::msecs_to_jiffies,
};

/// How many events a queue keeps before the oldest is dropped.
const CAPACITY: usize = 64;

/// How many bytes of event data the UAPI's events use.
pub(crate) const DATA_LEN: usize = 16;

/// One event, as SNAPSHOT_WAIT_EVENT reports it.
#[derive(Clone, Copy)]
pub(crate) struct Event {
    /// Its code, one of the UAPI's `blk_snap_event_code_*`.
    pub(crate) code: u32,
    /// When it happened, on the monotonic clock, in nanoseconds.
    pub(crate) time_ns: i64,
    /// The start of the UAPI event's body (zero-padded).
    pub(crate) data: [u8; DATA_LEN],
}

/// What the queue's lock protects.
struct Inner {
    /// `CAPACITY` slots, allocated at creation.
    ring: Ring<KVec<Event>>,
    /// Set by [`EventQueue::close`]: no more events.
    closed: bool,
}

/// The event queue of one snapshot.
#[pin_data]
pub(crate) struct EventQueue {
    #[pin]
    inner: IrqSpinLock<Inner>,
    #[pin]
    wait: CondVar,
}

impl EventQueue {
    /// Creates an empty queue with its ring allocated.
    pub(crate) fn new() -> Result<impl PinInit<Self, Error>> {
        let empty = Event {
            code: 0,
            time_ns: 0,
            data: [0; DATA_LEN],
        };
        let ring = KVec::from_elem(empty, CAPACITY, GFP_KERNEL)?;
        let inner = Inner {
            ring: Ring::new(ring),
            closed: false,
        };
        Ok(try_pin_init!(EventQueue {
            inner <- new_irq_spinlock!(inner, "blksnap_event_queue"),
            wait <- new_condvar!("blksnap_event_wait"),
        }))
    }

    /// Queues an event with `code` and the start of `data`, and wakes a
    /// waiter.
    ///
    /// A full queue drops its oldest event; a closed one drops this one.
    /// Never allocates or sleeps.
    pub(crate) fn push(&self, code: u32, data: &[u8]) {
        let mut event = Event {
            code,
            time_ns: crate::sys::monotonic_ns(),
            data: [0; DATA_LEN],
        };
        copy_prefix(&mut event.data, data);
        {
            let mut q = self.inner.lock();
            if q.closed {
                return;
            }
            q.ring.push(event);
        }
        self.wait.notify_one();
    }

    /// Takes the oldest event, waiting up to `timeout_ms` milliseconds for
    /// one.
    ///
    /// Fails with `ENOENT` on timeout, `EINTR` on a signal and `ESRCH` once
    /// the queue is closed ([`EventQueue::close`], when the snapshot is
    /// destroyed).
    pub(crate) fn wait(&self, timeout_ms: u32) -> Result<Event> {
        let mut jiffies = msecs_to_jiffies(timeout_ms);
        let mut q = self.inner.lock();
        loop {
            if q.closed {
                return Err(ESRCH);
            }
            if let Some(e) = q.ring.pop() {
                return Ok(e);
            }
            if jiffies == 0 {
                return Err(ENOENT);
            }
            match self.wait.wait_interruptible_timeout(&mut q, jiffies) {
                CondVarTimeoutResult::Timeout => jiffies = 0,
                CondVarTimeoutResult::Woken { jiffies: left } => jiffies = left,
                CondVarTimeoutResult::Signal { .. } => return Err(EINTR),
            }
        }
    }

    /// Wakes every waiter with `ESRCH`; later pushes are dropped.
    pub(crate) fn close(&self) {
        self.inner.lock().closed = true;
        self.wait.notify_all();
    }
}
