// SPDX-License-Identifier: GPL-2.0
//! Tracking blocks: the block layout of an image ([`Geometry`]) and the
//! runs of blocks a CBT map marks as changed.

/// The tracking-block layout of an image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Geometry {
    /// Block size in bytes.
    pub block_size: u64,
    /// Image size in bytes.
    pub capacity: u64,
}

impl Geometry {
    /// A geometry (a zero block size counts as 1).
    pub fn new(block_size: u64, capacity: u64) -> Self {
        Geometry {
            block_size: block_size.max(1),
            capacity,
        }
    }

    /// The number of blocks (the last may be partial).
    pub fn blocks(&self) -> u64 {
        self.capacity.div_ceil(self.block_size)
    }

    /// The byte offset of block `b`.
    pub fn offset(&self, b: u64) -> u64 {
        b * self.block_size
    }

    /// The bytes of `count` blocks from `first` (the last may be partial).
    pub fn bytes(&self, first: u64, count: u64) -> u64 {
        let start = self.offset(first).min(self.capacity);
        let end = self.offset(first + count).min(self.capacity);
        end - start
    }

    /// The bytes of the blocks of `ranges`.
    pub fn range_bytes(&self, ranges: &[BlockRange]) -> u64 {
        ranges.iter().map(|r| self.bytes(r.first, r.count)).sum()
    }
}

/// A run of tracking blocks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct BlockRange {
    /// The first block.
    pub first: u64,
    /// The number of blocks.
    pub count: u64,
}

/// The runs of blocks whose CBT byte is greater than `since`, among the
/// first `blocks` bytes of `map`.
///
/// ```
/// use blksnap::backup::{changed_blocks, BlockRange};
///
/// let map = [1, 3, 3, 1, 0, 2, 4];
/// assert_eq!(
///     changed_blocks(&map, 1, 7),
///     [BlockRange { first: 1, count: 2 }, BlockRange { first: 5, count: 2 }]
/// );
/// ```
pub fn changed_blocks(map: &[u8], since: u8, blocks: u64) -> Vec<BlockRange> {
    let n = usize::try_from(blocks).unwrap_or(usize::MAX).min(map.len());
    let mut out: Vec<BlockRange> = Vec::new();
    for (i, &b) in map[..n].iter().enumerate() {
        if b > since {
            let i = i as u64;
            match out.last_mut() {
                Some(r) if r.first + r.count == i => r.count += 1,
                _ => out.push(BlockRange { first: i, count: 1 }),
            }
        }
    }
    out
}

/// The number of blocks in `ranges`.
pub fn count_blocks(ranges: &[BlockRange]) -> u64 {
    ranges.iter().map(|r| r.count).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn geometry() {
        let g = Geometry::new(4096, 10_000);
        assert_eq!(g.blocks(), 3);
        assert_eq!(g.bytes(0, 3), 10_000);
        assert_eq!(g.bytes(2, 1), 10_000 - 8192);
        assert_eq!(g.bytes(1, 5), 10_000 - 4096);
        assert_eq!(
            g.range_bytes(&[
                BlockRange { first: 0, count: 1 },
                BlockRange { first: 2, count: 1 }
            ]),
            4096 + 1808
        );
        assert_eq!(Geometry::new(0, 5).block_size, 1);
    }

    #[test]
    fn changed() {
        let map = [0u8, 1, 2, 2, 5, 1, 0, 7];
        assert_eq!(changed_blocks(&map, 1, 8).len(), 2);
        assert_eq!(count_blocks(&changed_blocks(&map, 1, 8)), 4);
        assert_eq!(count_blocks(&changed_blocks(&map, 0, 8)), 6);
        assert_eq!(changed_blocks(&map, 7, 8), vec![]);
        // Only the device's blocks count, whatever the map's length.
        assert_eq!(
            changed_blocks(&map, 1, 4),
            vec![BlockRange { first: 2, count: 2 }]
        );
        assert_eq!(count_blocks(&changed_blocks(&map, 0, 100)), 6);
    }
}
