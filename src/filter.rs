// SPDX-License-Identifier: GPL-2.0

//! The bio filter: what every bio submitted on the system goes through
//! before it reaches its device (see [`crate::sys::hook`]).
//!
//! Reads, flushes and other bios that change no data pass untouched, with
//! no lookup. A write, discard, secure erase or write-zeroes costs one RCU
//! lookup in the tracker index (two for a partition: its own device and its
//! whole disk), and marks change tracking where the device is tracked. A bio
//! sent to a partition of a tracked whole disk is tracked on the disk too. If the device is in a taken snapshot and the bio
//! changes a chunk whose original data is not stored yet, the bio is held
//! back and handed to the module's workqueue, which copies the chunk and
//! then passes the bio on. The filter runs with preemption disabled and
//! never sleeps, so bios from stacked drivers (only queued until their
//! driver returns) and `REQ_NOWAIT` submitters are never put to sleep.
//!
//! Locking: the take barrier is held for reading from the lookup until a
//! held write is handed to the workqueue (TAKE and DESTROY switch devices
//! under it for writing, so the filter never drops the last reference to a
//! diff area; it costs a lock only while a switch is announced); inside it,
//! the index lookup runs under RCU, then the tracker's lock, then the chunk
//! lock.

use crate::{
    diff_area::{DiffArea, WriteNeed},
    sys::{
        bdev::DevNum,
        bio::{Bio, DevIdentity, Op, Submitted},
        hook::{bio_filter, BioFilter},
        sectors::Sectors,
        sync::{PreemptOff, TakeBarrier},
        work, NoIo,
    },
    tracker::INDEX,
};
use kernel::{prelude::*, sync::Arc};

/// A write held back until its chunks are copied, with the copy-on-write
/// states it must go through (its device's, and its whole disk's when both
/// a partition and the disk are tracked).
struct Held {
    areas: [Option<(Arc<DiffArea>, u64)>; 2],
    bio: Bio,
    sectors: u64,
}

/// The bio filter: the [`BioFilter`] the bio hook calls for every bio.
pub(crate) struct Filter;

impl BioFilter for Filter {
    #[inline(always)]
    fn submit(bio: Submitted, preempt_off: &PreemptOff) -> Option<Submitted> {
        submit(bio, preempt_off)
    }
}

bio_filter!(Filter);

/// Called for every bio submitted from outside the module, in the
/// submitter's context with preemption disabled: gives the bio back to go
/// on now, or takes it over to pass it on after copy-on-write.
fn submit(bio: Submitted, preempt_off: &PreemptOff) -> Option<Submitted> {
    let info = bio.info();
    if info.op() != Op::Change || info.sectors() == 0 {
        return Some(bio);
    }
    let sectors = info.sectors();
    let (dev, identity) = info.dev();
    let (whole, whole_identity, whole_sector) = info.whole();
    // Held until the write is handed off, so the diff areas cloned here are
    // never the last references (their drop may sleep). While no switch is
    // announced this reads one shared counter and takes no lock.
    let _barrier = TakeBarrier::read(preempt_off);
    let on_dev = decide_for(preempt_off, dev, identity, info.range()).flatten();
    let on_whole = if whole != dev {
        let range = Sectors::new(whole_sector, sectors);
        decide_for(preempt_off, whole, whole_identity, range).flatten()
    } else {
        None
    };
    let Some(queue) = on_dev
        .as_ref()
        .or(on_whole.as_ref())
        .map(|(area, _)| area.queue().clone())
    else {
        return Some(bio);
    };
    let Ok(slot) = work::Slot::new(GFP_ATOMIC) else {
        // No memory for the work item: the write must not wait or be
        // lost, so the snapshot pays.
        for (area, _) in [on_dev, on_whole].iter().flatten() {
            area.corrupt(ENOMEM);
        }
        return Some(bio);
    };
    let held = Held {
        areas: [on_dev, on_whole],
        bio: bio.take(),
        sectors,
    };
    slot.spawn(queue.queue(), held, copy_then_pass);
    None
}

/// The tracker lookup for `dev` and the copy-on-write decision for a write
/// of `range`, under the take barrier: `None` if `dev` is not
/// tracked (or the number now belongs to another disk), `Some(None)` if the
/// write may pass now.
fn decide_for(
    preempt_off: &PreemptOff,
    dev: DevNum,
    identity: DevIdentity,
    range: Sectors,
) -> Option<Option<(Arc<DiffArea>, u64)>> {
    INDEX.with(preempt_off, dev, |t| {
        if t.bdev().identity() != identity {
            return None;
        }
        let area = t.mark(range)?;
        match area.write_need(range) {
            WriteNeed::Nothing => None,
            WriteNeed::Copy => Some((area, range.start)),
        }
    })
}

/// Copies what a held write needs, then passes it on (the work item of a
/// held write, in a no-I/O allocation scope).
fn copy_then_pass(held: Held) {
    let _noio = NoIo::enter();
    for (area, sector) in held.areas.iter().flatten() {
        area.prepare_write(Sectors::new(*sector, held.sectors));
    }
    held.bio.pass();
}
