// SPDX-License-Identifier: GPL-2.0

//! Chunk arithmetic of a diff area: which chunks a sector range touches,
//! how long a chunk is (the device's last one may be short), how many
//! chunks one copy batch holds, and the tag a redirected image read carries
//! to its completion ([`ReadTag`]).
//!
//! Pure logic with no kernel types (host `cargo test` covers it through
//! crates/blksnap-logic).
//!
//! Locking: none; [`Geometry`] is fixed at TAKE and copied freely.

use crate::sys::sectors::Sectors;
use core::ops::Range;

/// How much one held-back write copies with its I/O in flight together:
/// the chunks it touches are read from the original in one go and written
/// to their slots in one go, in batches of this many bytes (or one chunk).
pub const COPY_BATCH_BYTES: u64 = 1 << 20;

/// The chunks of one device in a taken snapshot.
///
/// # Invariants
///
/// `12 <= chunk_shift < 64`: a chunk is at least a page and its size in
/// bytes fits a `u64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// log2 of the chunk size in bytes.
    chunk_shift: u32,
    /// Device capacity at TAKE, in sectors.
    capacity: u64,
}

impl Geometry {
    /// Chunks of 2^`chunk_shift` bytes over `capacity` sectors, if the
    /// chunk size is at least a page and representable.
    pub fn new(chunk_shift: u32, capacity: u64) -> Option<Self> {
        // INVARIANT: checked here.
        (12..64).contains(&chunk_shift).then_some(Geometry {
            chunk_shift,
            capacity,
        })
    }

    /// Device capacity at TAKE, in sectors.
    pub fn capacity(self) -> u64 {
        self.capacity
    }

    /// Chunk size in sectors.
    pub fn chunk_sectors(self) -> u64 {
        1 << (self.chunk_shift - 9)
    }

    /// How many chunks cover the device.
    pub fn chunk_count(self) -> u64 {
        self.capacity.div_ceil(self.chunk_sectors())
    }

    /// The chunks `sectors` touch, clipped to the capacity.
    pub fn range(self, sectors: Sectors) -> Range<u64> {
        sectors.units(self.chunk_shift - 9, self.capacity)
    }

    /// The sectors of chunk `c` on the device: a whole chunk but for the
    /// last one, which may be short (none past the end).
    pub fn sectors_of(self, c: u64) -> u64 {
        let cs = self.chunk_sectors();
        cs.min(self.capacity.saturating_sub(c.saturating_mul(cs)))
    }

    /// The part of `sectors` that lies in its first chunk, in sectors, if
    /// the range goes on past that chunk.
    pub fn first_part(self, sectors: Sectors) -> Option<u64> {
        let cs = self.chunk_sectors();
        let part = cs - sectors.start % cs;
        (part < sectors.count).then_some(part)
    }

    /// Chunks per copy batch (see [`COPY_BATCH_BYTES`]): at least one.
    pub fn batch_chunks(self) -> usize {
        usize::try_from(COPY_BATCH_BYTES.checked_shr(self.chunk_shift).unwrap_or(0))
            .unwrap_or(1)
            .max(1)
    }
}

/// Which chunks a read sent on from the image's submit path covers, and
/// whether it counts as a reader of them on the original; travels with the
/// read as one `u64` (first chunk: 48 bits, chunk count: 15, the flag: 1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReadTag {
    first: u64,
    count: u64,
    counted: bool,
}

impl ReadTag {
    /// A tag for the chunks of `range`, not counted, if it fits: at least
    /// one chunk and fewer than 2^15, the first below 2^48.
    pub fn new(range: Range<u64>) -> Option<Self> {
        let count = range.end.checked_sub(range.start)?;
        (range.start < 1 << 48 && (1..1 << 15).contains(&count)).then_some(ReadTag {
            first: range.start,
            count,
            counted: false,
        })
    }

    /// The same chunks, counted as readers of the original or not.
    pub fn counted(self, counted: bool) -> Self {
        ReadTag { counted, ..self }
    }

    /// Whether the read counts as a reader of its chunks on the original.
    pub fn is_counted(self) -> bool {
        self.counted
    }

    /// The tag as one `u64`.
    pub fn into_raw(self) -> u64 {
        self.first << 16 | self.count << 1 | u64::from(self.counted)
    }

    /// The tag [`ReadTag::into_raw`] made `raw` of.
    pub fn from_raw(raw: u64) -> Self {
        ReadTag {
            first: raw >> 16,
            count: raw >> 1 & 0x7fff,
            counted: raw & 1 != 0,
        }
    }

    /// The chunks the read covers.
    pub fn chunks(self) -> Range<u64> {
        self.first..self.first + self.count
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 64 KiB chunks (128 sectors) over 1000 sectors: 7 whole, one of 104.
    fn g() -> Geometry {
        Geometry::new(16, 1000).expect("valid geometry")
    }

    #[test]
    fn new_refuses_sub_page_and_huge_chunks() {
        assert_eq!(Geometry::new(11, 8), None);
        assert_eq!(Geometry::new(64, 8), None);
        assert!(Geometry::new(12, 0).is_some());
        assert!(Geometry::new(63, u64::MAX).is_some());
    }

    #[test]
    fn sizes() {
        assert_eq!(g().chunk_sectors(), 128);
        assert_eq!(g().chunk_count(), 8);
        assert_eq!(g().sectors_of(0), 128);
        assert_eq!(g().sectors_of(7), 1000 - 7 * 128);
        assert_eq!(g().sectors_of(8), 0);
        assert_eq!(g().sectors_of(u64::MAX), 0);
        assert_eq!(Geometry::new(16, 1024).map(|g| g.chunk_count()), Some(8));
    }

    #[test]
    fn range_is_clipped_and_exact() {
        let g = g();
        assert_eq!(g.range(Sectors::new(0, 0)), 0..0);
        assert_eq!(g.range(Sectors::new(0, 1)), 0..1);
        assert_eq!(g.range(Sectors::new(127, 1)), 0..1);
        assert_eq!(g.range(Sectors::new(127, 2)), 0..2);
        assert_eq!(g.range(Sectors::new(128, 128)), 1..2);
        assert_eq!(g.range(Sectors::new(0, 1000)), 0..8);
        assert_eq!(g.range(Sectors::new(999, 100)), 7..8);
        assert_eq!(g.range(Sectors::new(1000, 8)), 0..0);
        assert_eq!(g.range(Sectors::new(u64::MAX, u64::MAX)), 0..0);
        assert_eq!(g.range(Sectors::new(5, u64::MAX)), 0..8);
    }

    #[test]
    fn range_matches_a_sector_walk() {
        let g = Geometry::new(12, 100).expect("valid geometry");
        for sector in 0..110 {
            for count in 0..40 {
                let touched: Vec<u64> = (sector..sector + count)
                    .filter(|s| *s < 100)
                    .map(|s| s / 8)
                    .collect();
                let want = match (touched.first(), touched.last()) {
                    (Some(a), Some(b)) => *a..*b + 1,
                    _ => 0..0,
                };
                assert_eq!(
                    g.range(Sectors::new(sector, count)),
                    want,
                    "{sector}+{count}"
                );
            }
        }
    }

    #[test]
    fn first_part() {
        let g = g();
        assert_eq!(g.first_part(Sectors::new(0, 128)), None);
        assert_eq!(g.first_part(Sectors::new(0, 129)), Some(128));
        assert_eq!(g.first_part(Sectors::new(100, 28)), None);
        assert_eq!(g.first_part(Sectors::new(100, 29)), Some(28));
    }

    #[test]
    fn batch_chunks() {
        assert_eq!(Geometry::new(12, 8).map(|g| g.batch_chunks()), Some(256));
        assert_eq!(Geometry::new(20, 8).map(|g| g.batch_chunks()), Some(1));
        assert_eq!(Geometry::new(30, 8).map(|g| g.batch_chunks()), Some(1));
    }

    #[test]
    fn read_tag_round_trips_and_refuses_what_does_not_fit() {
        for (range, counted) in [(0..1, false), (5..9, true), ((1 << 48) - 1..1 << 48, true)] {
            let tag = ReadTag::new(range.clone()).map(|t| t.counted(counted));
            let back = tag.map(|t| ReadTag::from_raw(t.into_raw()));
            assert_eq!(back, tag);
            assert_eq!(back.map(|t| t.chunks()), Some(range));
            assert_eq!(back.map(|t| t.is_counted()), Some(counted));
        }
        assert_eq!(ReadTag::new(3..3), None);
        #[expect(
            clippy::reversed_empty_ranges,
            reason = "a reversed range is what is tested"
        )]
        let reversed = 4..3;
        assert_eq!(ReadTag::new(reversed), None);
        assert_eq!(ReadTag::new(0..1 << 15), None);
        assert!(ReadTag::new(0..(1 << 15) - 1).is_some());
        assert_eq!(ReadTag::new(1 << 48..(1 << 48) + 1), None);
    }
}
