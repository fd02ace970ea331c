// SPDX-License-Identifier: GPL-2.0

//! The change-tracking (CBT) map of one device: its geometry and its two byte
//! tables.
//!
//! Each byte of a table holds the number of the snapshot in which its block
//! last changed. I/O marks the *active* table with the active number; TAKE
//! copies it into the *readable* table, which user space reads while the
//! snapshot is held, and moves the numbers on. Pure logic with no kernel
//! types (host `cargo test` covers it through crates/blksnap-logic); the
//! tables are whatever storage the caller allocated (`vmalloc` in the
//! kernel, so large devices need no high-order allocation).
//!
//! Locking: none here. The tracker keeps a [`CbtMap`] under one spinlock
//! that I/O marking, TAKE, MARK_DIRTY_BLOCKS and the readers take, so a
//! switch is atomic with respect to every write.

use crate::params::Params;
use crate::sys::sectors::Sectors;
use core::ops::DerefMut;

/// log2 of the sector size the block layer counts in (512 bytes).
pub const SECTOR_SHIFT: u32 = 9;

/// How a device is cut into tracking blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the block size in bytes.
    pub blk_shift: u32,
    /// Number of blocks: the table length.
    pub blk_count: u32,
    /// Device capacity in sectors.
    pub capacity: u64,
}

/// Why a device cannot be tracked.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GeometryError {
    /// Even the largest block size gives more blocks than a table can index.
    TooLarge,
}

impl Geometry {
    /// Chooses the block size for a device of `capacity` sectors: start at
    /// 2^`tracking_block_minimum_shift` and double while the block count
    /// exceeds `tracking_block_maximum_count`, up to
    /// 2^`tracking_block_maximum_shift`.
    pub fn new(capacity: u64, p: &Params) -> Result<Geometry, GeometryError> {
        let bytes = capacity
            .checked_mul(1 << SECTOR_SHIFT)
            .ok_or(GeometryError::TooLarge)?;
        let max_count = u64::try_from(p.tracking_block_maximum_count).unwrap_or(1);
        let min_shift = u32::try_from(p.tracking_block_minimum_shift).unwrap_or(9);
        let max_shift = u32::try_from(p.tracking_block_maximum_shift).unwrap_or(min_shift);
        let mut shift = min_shift.max(SECTOR_SHIFT);
        let count = |shift: u32| bytes.div_ceil(1u64 << shift);
        while count(shift) > max_count && shift < max_shift {
            shift += 1;
        }
        let blk_count = u32::try_from(count(shift)).map_err(|_| GeometryError::TooLarge)?;
        Ok(Geometry {
            blk_shift: shift,
            blk_count,
            capacity,
        })
    }

    /// The block size in bytes.
    pub const fn blk_size(&self) -> u32 {
        1 << self.blk_shift
    }

    /// The blocks `[first, end)` that `sectors` touch, clipped to the
    /// device. Empty when nothing is inside.
    pub fn blocks(&self, sectors: Sectors) -> core::ops::Range<u32> {
        let units = sectors.units(self.blk_shift - SECTOR_SHIFT, self.capacity);
        // Both are at most blk_count because the units end at the capacity.
        let first = u32::try_from(units.start).unwrap_or(self.blk_count);
        let end = u32::try_from(units.end).unwrap_or(self.blk_count);
        first.min(self.blk_count)..end.min(self.blk_count)
    }
}

/// What TAKE did to the map.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Switch {
    /// The numbers moved on; the generation stays.
    Advanced,
    /// The active number wrapped past 255: a new generation started.
    Wrapped,
}

/// One device's change-tracking map: its [`Geometry`], its two tables and
/// their numbers.
///
/// # Invariants
///
/// Both tables are `geometry.blk_count` bytes long; every byte of the active
/// table is at most `active`, every byte of the readable one at most
/// `previous`;
/// `1 <= active`.
pub struct CbtMap<T> {
    geometry: Geometry,
    active_table: T,
    readable_table: T,
    /// Number written into the active table by I/O.
    active: u8,
    /// Number of the snapshot taken last (0 before the first).
    previous: u8,
    generation_id: [u8; 16],
}

impl<T: DerefMut<Target = [u8]>> CbtMap<T> {
    /// Creates a map over two zeroed tables of `geometry.blk_count` bytes;
    /// `None` if a table has the wrong length.
    pub fn new(
        geometry: Geometry,
        active: T,
        readable: T,
        generation_id: [u8; 16],
    ) -> Option<Self> {
        let len = usize::try_from(geometry.blk_count).ok()?;
        if active.len() != len || readable.len() != len {
            return None;
        }
        // INVARIANT: both tables are `blk_count` bytes (checked above) and
        // zeroed (the caller's part), so at most `previous` = 0 < `active`.
        Some(CbtMap {
            geometry,
            active_table: active,
            readable_table: readable,
            active: 1,
            previous: 0,
            generation_id,
        })
    }

    /// The geometry the tables were sized for.
    pub fn geometry(&self) -> &Geometry {
        &self.geometry
    }

    /// The number of the snapshot taken last: `snap_number` of the UAPI.
    pub fn snap_number(&self) -> u8 {
        self.previous
    }

    /// The number I/O marks now.
    pub fn active_number(&self) -> u8 {
        self.active
    }

    /// The generation id, which changes whenever the tables start over.
    pub fn generation_id(&self) -> &[u8; 16] {
        &self.generation_id
    }

    /// The readable table: the one user space reads.
    pub fn readable(&self) -> &[u8] {
        &self.readable_table
    }

    /// The active table: the one I/O marks.
    pub fn active_table(&self) -> &[u8] {
        &self.active_table
    }

    /// Marks the blocks that `sectors` touch as changed in the active
    /// snapshot (a write, discard or write-zeroes).
    pub fn mark(&mut self, sectors: Sectors) {
        let range = self.geometry.blocks(sectors);
        // INVARIANT: bytes are raised to `active` at most.
        raise(&mut self.active_table, range, self.active);
    }

    /// Marks the blocks that `sectors` touch in both tables, so the change
    /// shows in the readable table of the snapshot held now and in the next
    /// one (MARK_DIRTY_BLOCKS and writes to a snapshot image).
    pub fn mark_both(&mut self, sectors: Sectors) {
        let range = self.geometry.blocks(sectors);
        // INVARIANT: bytes are raised to `active` and `previous` at most.
        raise(&mut self.active_table, range.clone(), self.active);
        raise(&mut self.readable_table, range, self.previous);
    }

    /// Switches the map at TAKE: the readable table becomes a copy of the
    /// active one, `previous` the active number, and the active number
    /// moves on.
    ///
    /// When it would reach 256 the active table starts over under
    /// `new_generation`.
    pub fn switch(&mut self, new_generation: [u8; 16]) -> Switch {
        // INVARIANT: the readable table becomes the active one, whose bytes
        // are at most the old `active`, the new `previous`. The active table
        // keeps bytes below the new `active`, or is zeroed when `active`
        // starts over at 1.
        copy_prefix(&mut self.readable_table, &self.active_table);
        self.previous = self.active;
        if self.active == u8::MAX {
            self.active = 1;
            self.active_table.fill(0);
            self.generation_id = new_generation;
            Switch::Wrapped
        } else {
            self.active += 1;
            Switch::Advanced
        }
    }

    /// Starts over with new tables (a capacity change): zeroed tables, new
    /// generation, `previous = 0`, `active = 1`.
    ///
    /// Returns the old tables, or `None` (and changes nothing) if a new
    /// table has the wrong length.
    pub fn reset(
        &mut self,
        geometry: Geometry,
        active: T,
        readable: T,
        generation_id: [u8; 16],
    ) -> Option<(T, T)> {
        let fresh = CbtMap::new(geometry, active, readable, generation_id)?;
        let old = core::mem::replace(self, fresh);
        Some((old.active_table, old.readable_table))
    }

    /// Copies the readable table from byte `offset` into `out`; returns how
    /// many bytes were copied (0 at or past the end).
    pub fn read(&self, offset: usize, out: &mut [u8]) -> usize {
        let table: &[u8] = &self.readable_table;
        let Some(rest) = table.get(offset..) else {
            return 0;
        };
        copy_prefix(out, rest)
    }
}

/// Copies as much of `src` as fits into the start of `dst`; returns how
/// many bytes.
///
/// Cannot panic, unlike [`copy_from_slice`](slice::copy_from_slice).
pub fn copy_prefix(dst: &mut [u8], src: &[u8]) -> usize {
    let mut n = 0;
    for (d, s) in dst.iter_mut().zip(src) {
        *d = *s;
        n += 1;
    }
    n
}

/// Raises every byte of `table[range]` to at least `number`.
fn raise(table: &mut [u8], range: core::ops::Range<u32>, number: u8) {
    let (Ok(start), Ok(end)) = (usize::try_from(range.start), usize::try_from(range.end)) else {
        return;
    };
    if let Some(bytes) = table.get_mut(start..end) {
        for b in bytes {
            if *b < number {
                *b = number;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::vec;
    use std::vec::Vec;

    fn params(min: i32, max: i32, count: i32) -> Params {
        Params {
            tracking_block_minimum_shift: min,
            tracking_block_maximum_shift: max,
            tracking_block_maximum_count: count,
            ..Params::DEFAULT
        }
    }

    fn map(capacity: u64, p: &Params) -> CbtMap<Vec<u8>> {
        let g = Geometry::new(capacity, p).unwrap();
        let n = g.blk_count as usize;
        CbtMap::new(g, vec![0; n], vec![0; n], [7; 16]).unwrap()
    }

    #[test]
    fn block_size_starts_at_minimum_and_doubles() {
        // 1 GiB with defaults (64 KiB blocks, 2M blocks max): 16384 blocks.
        let g = Geometry::new(1 << 21, &Params::DEFAULT).unwrap();
        assert_eq!((g.blk_shift, g.blk_count), (16, 16384));
        // 4 blocks at most: 1 MiB of 4 KiB blocks doubles to 256 KiB.
        let g = Geometry::new(2048, &params(12, 26, 4)).unwrap();
        assert_eq!((g.blk_shift, g.blk_count), (18, 4));
        // Capped at the maximum shift even if the count stays too high.
        let g = Geometry::new(2048, &params(12, 13, 4)).unwrap();
        assert_eq!((g.blk_shift, g.blk_count), (13, 128));
        // A partial last block counts.
        let g = Geometry::new(129, &params(16, 26, 1 << 20)).unwrap();
        assert_eq!(g.blk_count, 2);
        assert_eq!(Geometry::new(0, &Params::DEFAULT).unwrap().blk_count, 0);
        assert_eq!(
            Geometry::new(u64::MAX, &Params::DEFAULT),
            Err(GeometryError::TooLarge)
        );
    }

    #[test]
    fn sector_ranges_map_to_touched_blocks() {
        // 8 blocks of 4 KiB (8 sectors each).
        let g = Geometry::new(64, &params(12, 12, 100)).unwrap();
        assert_eq!(g.blocks(Sectors::new(0, 1)), 0..1);
        assert_eq!(g.blocks(Sectors::new(7, 2)), 0..2);
        assert_eq!(g.blocks(Sectors::new(8, 8)), 1..2);
        assert_eq!(g.blocks(Sectors::new(60, 100)), 7..8);
        assert_eq!(g.blocks(Sectors::new(64, 8)), 0..0);
        assert_eq!(g.blocks(Sectors::new(3, 0)), 0..0);
        assert_eq!(g.blocks(Sectors::new(u64::MAX, u64::MAX)), 0..0);
    }

    #[test]
    fn take_copies_and_advances() {
        let mut m = map(64, &params(12, 12, 100));
        assert_eq!((m.snap_number(), m.active_number()), (0, 1));
        m.mark(Sectors::new(0, 8));
        assert_eq!(m.switch([1; 16]), Switch::Advanced);
        assert_eq!((m.snap_number(), m.active_number()), (1, 2));
        assert_eq!(m.readable(), &[1, 0, 0, 0, 0, 0, 0, 0]);
        // Writes while held change only the active table.
        m.mark(Sectors::new(8, 8));
        assert_eq!(m.readable(), &[1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(m.active_table(), &[1, 2, 0, 0, 0, 0, 0, 0]);
        m.switch([1; 16]);
        assert_eq!(m.readable(), &[1, 2, 0, 0, 0, 0, 0, 0]);
        assert_eq!(m.generation_id(), &[7; 16]);
    }

    #[test]
    fn wrap_starts_a_new_generation() {
        let mut m = map(64, &params(12, 12, 100));
        m.mark(Sectors::new(0, 1));
        for _ in 1..255 {
            assert_eq!(m.switch([9; 16]), Switch::Advanced);
        }
        assert_eq!(m.active_number(), 255);
        m.mark(Sectors::new(8, 1));
        assert_eq!(m.switch([9; 16]), Switch::Wrapped);
        assert_eq!((m.snap_number(), m.active_number()), (255, 1));
        assert_eq!(m.generation_id(), &[9; 16]);
        assert_eq!(&m.readable()[..2], &[1, 255]);
        assert!(m.active_table().iter().all(|&b| b == 0));
    }

    #[test]
    fn mark_both_reaches_the_readable_table() {
        let mut m = map(64, &params(12, 12, 100));
        m.switch([0; 16]);
        m.mark_both(Sectors::new(16, 1));
        assert_eq!(m.readable()[2], 1);
        assert_eq!(m.active_table()[2], 2);
        // Never lowers a byte.
        m.mark(Sectors::new(24, 1));
        m.mark_both(Sectors::new(24, 1));
        assert_eq!(m.active_table()[3], 2);
    }

    #[test]
    fn read_copies_from_offset() {
        let mut m = map(64, &params(12, 12, 100));
        m.mark(Sectors::new(56, 8));
        m.switch([0; 16]);
        let mut buf = [0xffu8; 5];
        assert_eq!(m.read(5, &mut buf), 3);
        assert_eq!(buf, [0, 0, 1, 0xff, 0xff]);
        assert_eq!(m.read(8, &mut buf), 0);
        assert_eq!(m.read(usize::MAX, &mut buf), 0);
    }

    #[test]
    fn reset_starts_over() {
        let mut m = map(64, &params(12, 12, 100));
        m.mark(Sectors::new(0, 64));
        m.switch([0; 16]);
        let g = Geometry::new(128, &params(12, 12, 100)).unwrap();
        assert!(m.reset(g, vec![0; 3], vec![0; 3], [5; 16]).is_none());
        let (a, _) = m.reset(g, vec![0; 16], vec![0; 16], [5; 16]).unwrap();
        assert_eq!(a.len(), 8);
        assert_eq!((m.snap_number(), m.active_number()), (0, 1));
        assert_eq!(m.geometry().blk_count, 16);
        assert_eq!(m.generation_id(), &[5; 16]);
    }

    /// An independent model: per block, the snapshot number of its last
    /// change; checked against the map over random operations.
    #[test]
    fn random_operations_match_a_model() {
        let mut seed = 0x1234_5678_9abc_def0u64;
        let mut rnd = |n: u64| {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed % n
        };
        let p = params(12, 14, 20);
        let capacity = 1000;
        let mut m = map(capacity, &p);
        let bs = 1u64 << (m.geometry().blk_shift - 9);
        let mut model = vec![0u8; m.geometry().blk_count as usize];
        let mut active = 1u8;
        for _ in 0..2000 {
            match rnd(10) {
                0 => {
                    let prev = active;
                    let r = m.switch([0; 16]);
                    if prev == 255 {
                        assert_eq!(r, Switch::Wrapped);
                    }
                    let readable: Vec<u8> = model.clone();
                    assert_eq!(m.readable(), &readable[..]);
                    if prev == 255 {
                        model.iter_mut().for_each(|b| *b = 0);
                        active = 1;
                    } else {
                        active += 1;
                    }
                }
                _ => {
                    let s = rnd(capacity + 10);
                    let c = rnd(3 * bs) + 1;
                    m.mark(Sectors::new(s, c));
                    let end = (s + c).min(capacity);
                    if s < end {
                        for b in (s / bs)..=((end - 1) / bs) {
                            model[b as usize] = active;
                        }
                    }
                }
            }
            assert_eq!(m.active_table(), &model[..]);
        }
    }
}
