// SPDX-License-Identifier: GPL-2.0

//! [`spawn`]: runs a function on a workqueue with a payload, and gives the
//! payload back if the work item cannot be allocated; [`Slot`] allocates
//! the work item before the payload is at hand.
//!
//! `Queue::try_spawn` of the `kernel` crate drops its closure when the
//! allocation fails. A held-back write must never be dropped, so the
//! allocation here happens before the payload moves, and a failure returns
//! it to the caller, who then passes the write on by itself.
//!
//! Locking: none; the workqueue serializes nothing.

use kernel::{
    alloc::Flags,
    impl_has_work, new_work,
    prelude::*,
    workqueue::{Queue, Work, WorkItem},
};

/// A work item with its payload and the function to run on it.
#[pin_data]
struct Job<T> {
    #[pin]
    work: Work<Job<T>>,
    payload: Option<T>,
    run: fn(T),
}

impl_has_work! {
    impl{T} HasWork<Self> for Job<T> { self.work }
}

impl<T> Job<T> {
    /// Takes the payload out of the pinned job.
    fn take(self: Pin<&mut Self>) -> Option<T> {
        // SAFETY: `payload` is not structurally pinned.
        unsafe { self.get_unchecked_mut().payload.take() }
    }
}

impl<T> WorkItem for Job<T> {
    type Pointer = Pin<KBox<Self>>;

    fn run(mut this: Pin<KBox<Self>>) {
        let run = this.run;
        if let Some(payload) = this.as_mut().take() {
            run(payload);
        }
    }
}

/// A work item allocated for a payload of type `T`, not queued yet.
pub(crate) struct Slot<T: Send + 'static>(Pin<KBox<Job<T>>>);

impl<T: Send + 'static> Slot<T> {
    /// Allocates a work item with `flags`; `ENOMEM` if there is no memory.
    pub(crate) fn new(flags: Flags) -> Result<Self> {
        let slot = KBox::<Job<T>>::new_uninit(flags)?;
        let job = slot.write_pin_init(pin_init!(Job {
            work <- new_work!("blksnap_job"),
            payload: None,
            run: |_| {},
        }));
        // The initialiser cannot fail: `Work::new` is infallible.
        match job {
            Ok(job) => Ok(Slot(job)),
            Err(never) => match never {},
        }
    }

    /// Queues `run(payload)` on `queue`; cannot fail.
    pub(crate) fn spawn(mut self, queue: &Queue, payload: T, run: fn(T)) {
        // SAFETY: `payload` and `run` are not structurally pinned.
        let job = unsafe { self.0.as_mut().get_unchecked_mut() };
        job.payload = Some(payload);
        job.run = run;
        queue.enqueue(self.0);
    }
}

/// Queues `run(payload)` on `queue`, allocating with `flags`; gives the
/// payload back untouched if the work item cannot be allocated.
pub(crate) fn spawn<T: Send + 'static>(
    queue: &Queue,
    flags: Flags,
    payload: T,
    run: fn(T),
) -> core::result::Result<(), T> {
    match Slot::new(flags) {
        Ok(slot) => {
            slot.spawn(queue, payload, run);
            Ok(())
        }
        Err(_) => Err(payload),
    }
}
