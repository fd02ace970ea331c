// SPDX-License-Identifier: GPL-2.0

//! Difference storage accounting: the sector ranges user space hands in
//! with SNAPSHOT_APPEND_STORAGE, carved into chunk-sized slots, and when to
//! ask for more.
//!
//! Pure logic with no kernel types (host `cargo test` covers it through
//! crates/blksnap-logic). A slot never spans two ranges: the tail of a range
//! too short for the next slot is skipped. Ranges are used in the order they
//! were appended.
//!
//! Locking: none here; the snapshot keeps its `DiffStorage` under a lock.

/// Sectors in a page: ranges must be page-aligned.
pub const PAGE_SECTORS: u64 = 8;

/// A range of difference storage on one device (`D`: the device number's
/// type, `DevNum` in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent<D> {
    /// The device.
    pub dev: D,
    /// First sector.
    pub start: u64,
    /// Length in sectors.
    pub count: u64,
}

/// Where one slot of difference storage is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot<D> {
    /// The device.
    pub dev: D,
    /// First sector of the slot.
    pub sector: u64,
}

/// Why a range was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RangeError {
    /// Empty, not page-aligned, or overflowing.
    Malformed,
    /// Past the end of the device.
    OutOfDevice,
    /// Overlaps a range appended before.
    Overlaps,
}

/// Checks one range of a device with `capacity` sectors.
pub fn check_range(start: u64, count: u64, capacity: u64) -> Result<(), RangeError> {
    let end = start.checked_add(count).ok_or(RangeError::Malformed)?;
    if count == 0 || (start | count) & (PAGE_SECTORS - 1) != 0 {
        return Err(RangeError::Malformed);
    }
    if end > capacity {
        return Err(RangeError::OutOfDevice);
    }
    Ok(())
}

/// The difference storage of one snapshot, generic over how the extent list
/// is stored (`KVec` in the kernel, `Vec` on the host).
pub struct DiffStorage<L> {
    extents: L,
    /// Index of the extent slots come from now.
    current: usize,
    /// Sectors of `extents[current]` already handed out.
    used_in_current: u64,
    /// Sectors appended in all.
    total: u64,
    /// Sectors handed out or skipped.
    consumed: u64,
    /// A low-space request is outstanding (cleared by the next append).
    requested: bool,
}

impl<D: Copy + PartialEq, L: core::ops::Deref<Target = [Extent<D>]>> DiffStorage<L> {
    /// No storage yet; `extents` must be empty.
    pub fn new(extents: L) -> Self {
        let total = extents.iter().map(|e| e.count).sum();
        DiffStorage {
            extents,
            current: 0,
            used_in_current: 0,
            total,
            consumed: 0,
            requested: false,
        }
    }

    /// Whether `e` overlaps an extent appended before.
    pub fn overlaps(&self, e: &Extent<D>) -> bool {
        self.extents.iter().any(|x| {
            x.dev == e.dev
                && x.start < e.start.saturating_add(e.count)
                && e.start < x.start + x.count
        })
    }

    /// Records that `count` sectors were appended (after the caller pushed
    /// the extent onto the list it owns).
    pub fn appended(&mut self, count: u64) {
        self.total = self.total.saturating_add(count);
        self.requested = false;
    }

    /// The extents, for the owner to append to.
    pub fn extents_mut(&mut self) -> &mut L {
        &mut self.extents
    }

    /// Sectors appended so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// Sectors not handed out yet (skipped tails included as used).
    pub fn free(&self) -> u64 {
        self.total - self.consumed
    }

    /// Hands out a slot of `sectors`, or `None` when the storage is full.
    pub fn alloc(&mut self, sectors: u64) -> Option<Slot<D>> {
        loop {
            let e = *self.extents.get(self.current)?;
            if e.count - self.used_in_current >= sectors {
                let slot = Slot {
                    dev: e.dev,
                    sector: e.start + self.used_in_current,
                };
                self.used_in_current += sectors;
                self.consumed += sectors;
                return Some(slot);
            }
            // The tail is too short for a slot: skip it.
            self.consumed += e.count - self.used_in_current;
            self.current += 1;
            self.used_in_current = 0;
        }
    }

    /// Whether to queue a low_free_space event now: free space has dropped
    /// below half of `minimum` and no request is outstanding. Marks the
    /// request outstanding.
    pub fn should_request(&mut self, minimum: u64) -> bool {
        if !self.requested && self.free() < minimum / 2 {
            self.requested = true;
            return true;
        }
        false
    }
}

/// Chooses the chunk size of a device of `capacity` sectors: start at
/// 2^`min_shift` bytes, double while the chunk count exceeds `max_count` or
/// the chunk is smaller than `io_min` bytes; `None` past 2^`max_shift`.
/// Returns log2 of the chunk size in bytes.
pub fn chunk_shift(
    capacity: u64,
    min_shift: u32,
    max_shift: u32,
    max_count: u64,
    io_min: u32,
) -> Option<u32> {
    let bytes = capacity.checked_mul(512)?;
    let mut shift = min_shift.max(12);
    loop {
        let count = bytes.div_ceil(1u64.checked_shl(shift)?);
        if count <= max_count && (1u64 << shift) >= u64::from(io_min) {
            return Some(shift);
        }
        if shift >= max_shift {
            return None;
        }
        shift += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn storage(extents: &[(u64, u64)]) -> DiffStorage<Vec<Extent<u32>>> {
        DiffStorage::new(
            extents
                .iter()
                .map(|&(start, count)| Extent {
                    dev: 7,
                    start,
                    count,
                })
                .collect(),
        )
    }

    #[test]
    fn ranges_must_be_page_aligned_and_inside() {
        assert_eq!(check_range(8, 16, 64), Ok(()));
        assert_eq!(check_range(0, 0, 64), Err(RangeError::Malformed));
        assert_eq!(check_range(4, 8, 64), Err(RangeError::Malformed));
        assert_eq!(check_range(8, 12, 64), Err(RangeError::Malformed));
        assert_eq!(check_range(56, 16, 64), Err(RangeError::OutOfDevice));
        assert_eq!(
            check_range(u64::MAX - 7, 16, u64::MAX),
            Err(RangeError::Malformed)
        );
    }

    #[test]
    fn slots_come_in_order_and_skip_short_tails() {
        let mut s = storage(&[(0, 24), (100, 16)]);
        assert_eq!(s.total(), 40);
        assert_eq!(s.alloc(16), Some(Slot { dev: 7, sector: 0 }));
        // 8 sectors left in the first extent: too short, skipped.
        assert_eq!(
            s.alloc(16),
            Some(Slot {
                dev: 7,
                sector: 100
            })
        );
        assert_eq!(s.free(), 0);
        assert_eq!(s.alloc(8), None);
    }

    #[test]
    fn appending_makes_room_again() {
        let mut s = storage(&[(0, 16)]);
        assert!(s.alloc(16).is_some());
        assert!(s.alloc(16).is_none());
        s.extents_mut().push(Extent {
            dev: 9,
            start: 64,
            count: 32,
        });
        s.appended(32);
        assert_eq!(s.alloc(16), Some(Slot { dev: 9, sector: 64 }));
        assert_eq!(s.alloc(16), Some(Slot { dev: 9, sector: 80 }));
        assert_eq!(s.alloc(16), None);
    }

    #[test]
    fn overlaps_only_on_the_same_device() {
        let s = storage(&[(16, 16)]);
        let e = |dev, start, count| Extent { dev, start, count };
        assert!(s.overlaps(&e(7, 24, 8)));
        assert!(s.overlaps(&e(7, 0, 24)));
        assert!(!s.overlaps(&e(7, 32, 8)));
        assert!(!s.overlaps(&e(7, 0, 16)));
        assert!(!s.overlaps(&e(8, 16, 16)));
    }

    #[test]
    fn low_space_is_requested_once_per_append() {
        let mut s = storage(&[(0, 64)]);
        assert!(!s.should_request(64));
        s.alloc(40);
        assert!(s.should_request(64));
        assert!(!s.should_request(64));
        s.extents_mut().push(Extent {
            dev: 7,
            start: 64,
            count: 8,
        });
        s.appended(8);
        // 32 free: not below half of 64 yet.
        assert!(!s.should_request(64));
        s.alloc(8);
        assert!(s.should_request(64));
        let empty: DiffStorage<Vec<Extent<u32>>> = DiffStorage::new(vec![]);
        assert_eq!(empty.free(), 0);
    }

    #[test]
    fn chunk_size_doubles_until_the_count_fits() {
        // 1 GiB, 256 KiB chunks, 2M chunks at most: 4096 chunks.
        assert_eq!(chunk_shift(1 << 21, 18, 26, 2 << 20, 512), Some(18));
        // At most 1024 chunks: 1 MiB chunks.
        assert_eq!(chunk_shift(1 << 21, 18, 26, 1024, 512), Some(20));
        // Not possible below the maximum shift.
        assert_eq!(chunk_shift(1 << 21, 18, 19, 1024, 512), None);
        // The device's minimum I/O size wins.
        assert_eq!(chunk_shift(1 << 21, 12, 26, 2 << 20, 65536), Some(16));
        assert_eq!(chunk_shift(u64::MAX, 12, 30, 1, 512), None);
    }
}
