// SPDX-License-Identifier: GPL-2.0

//! [`ChunkMap`]: the state of every chunk of a taken snapshot's device that
//! copy-on-write has touched, and the image reads in flight on the original.
//!
//! A chunk not in the map is not copied. One that is is being copied, is
//! stored (and where), or could not be stored ([`Entry`]); an entry takes 8
//! bytes. The chunks are grouped by 64 ([`GROUP_CHUNKS`]): a group ([`Group`])
//! has a bitmap of the chunks it holds and a leaf with their entries in
//! chunk order, no longer than a small-allocation size class needs
//! ([`capacity_for`]). A leaf of `n` entries therefore takes at most `2n`
//! words, and never more than 16 bytes per entry: a sequential first pass
//! fills whole leaves (8 bytes per chunk), scattered writes leave short
//! leaves of one size class each. The groups themselves are one array,
//! allocated with the map (40 bytes per 64 chunks of the device).
//!
//! Each group also counts the image reads in flight on the original device
//! of its chunks not copied yet ([`ChunkMap::add_reader`]), and the writers
//! waiting for that count to drop to zero ([`ChunkMap::begin_wait`]); while a
//! writer waits, new reads of the group's uncopied chunks wait too, so the
//! writer waits for reads already in flight and no longer.
//!
//! The map never allocates: a leaf that is full gets a larger one from the
//! caller ([`ChunkMap::grow`]), who allocates it with the chunk lock
//! dropped.
//!
//! Locking: none of its own; the diff area's chunk lock protects it.
//!
//! Needs no kernel types: `cargo test` covers it on the host through the
//! `blksnap-logic` crate.

use core::ops::{DerefMut, Range};

/// Chunks per group: one bitmap word, one leaf, one reader count.
pub const GROUP_CHUNKS: u64 = 64;

/// Leaf capacities in entries, each a small-allocation size class of 8-byte
/// entries (8, 16, 32, 64, 96, 128, 192, 256 and 512 bytes).
const CAPACITIES: [usize; 9] = [1, 2, 4, 8, 12, 16, 24, 32, 64];

/// Bits of a stored entry's storage device index.
const DEV_BITS: u32 = 16;

/// Stored entries hold sectors below this (2^46 sectors: 32 PiB).
pub const SECTOR_LIMIT: u64 = 1 << (64 - 2 - DEV_BITS);

/// What is known of a chunk in the map.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// Being copied; writers and image readers wait.
    Copying,
    /// Could not be stored: the snapshot is corrupted.
    Failed,
    /// Stored at `sector` of the difference storage's device number `dev`.
    Stored {
        /// The storage device's index in the difference storage.
        dev: u16,
        /// The slot's first sector on that device.
        sector: u64,
    },
}

impl Entry {
    /// Stored at `sector` of storage device `dev`; `None` if the sector is
    /// past [`SECTOR_LIMIT`].
    pub fn stored(dev: u16, sector: u64) -> Option<Entry> {
        (sector < SECTOR_LIMIT).then_some(Entry::Stored { dev, sector })
    }

    /// The entry in one word: the tag in the low 2 bits (1 copying,
    /// 2 failed, 3 stored), then a stored entry's device and sector.
    fn pack(self) -> u64 {
        match self {
            Entry::Copying => 1,
            Entry::Failed => 2,
            Entry::Stored { dev, sector } => 3 | u64::from(dev) << 2 | sector << (2 + DEV_BITS),
        }
    }

    fn unpack(word: u64) -> Entry {
        match word & 3 {
            1 => Entry::Copying,
            3 => Entry::Stored {
                dev: (word >> 2) as u16,
                sector: word >> (2 + DEV_BITS),
            },
            // Never written: a failed entry is the safe reading.
            _ => Entry::Failed,
        }
    }
}

/// The smallest leaf capacity that holds `count` entries; `None` past a
/// whole group.
pub fn capacity_for(count: usize) -> Option<usize> {
    CAPACITIES.iter().copied().find(|&c| c >= count)
}

/// 64 chunks of the map: which of them are in it, their entries, and the
/// image reads of the uncopied ones in flight.
pub struct Group<L> {
    /// Bit `i`: chunk `i` of the group is in the map.
    present: u64,
    /// The present chunks' packed entries, in chunk order; its length is
    /// its capacity.
    leaf: Option<L>,
    readers: u32,
    waiting: u32,
}

impl<L> Group<L> {
    /// A group with no chunk in the map and nothing in flight.
    pub const fn new() -> Self {
        Group {
            present: 0,
            leaf: None,
            readers: 0,
            waiting: 0,
        }
    }
}

impl<L> Default for Group<L> {
    fn default() -> Self {
        Self::new()
    }
}

/// Why [`ChunkMap::insert`] did not insert.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Full {
    /// The chunk's leaf is full: [`ChunkMap::grow`] it to this capacity.
    Leaf(usize),
    /// The chunk is past the device's end.
    Outside,
}

/// The touched chunks of a device of `count` chunks, in the groups `G`
/// holds ([`groups_for`] of them), with leaves `L` (word slices).
pub struct ChunkMap<G> {
    groups: G,
    count: u64,
}

/// How many groups `count` chunks need.
pub fn groups_for(count: u64) -> u64 {
    count.div_ceil(GROUP_CHUNKS)
}

/// Chunk `c`'s group index and bit.
fn split(c: u64) -> (u64, u64) {
    (c / GROUP_CHUNKS, 1 << (c % GROUP_CHUNKS))
}

impl<G, L> ChunkMap<G>
where
    G: DerefMut<Target = [Group<L>]>,
    L: DerefMut<Target = [u64]>,
{
    /// An empty map of `count` chunks in `groups` (which it empties);
    /// `None` if there are fewer than [`groups_for`] of them.
    pub fn new(mut groups: G, count: u64) -> Option<Self> {
        if u64::try_from(groups.len()).ok()? < groups_for(count) {
            return None;
        }
        for g in groups.iter_mut() {
            *g = Group::new();
        }
        Some(ChunkMap { groups, count })
    }

    fn group(&self, c: u64) -> Option<(&Group<L>, u64)> {
        if c >= self.count {
            return None;
        }
        let (g, bit) = split(c);
        Some((self.groups.get(usize::try_from(g).ok()?)?, bit))
    }

    fn group_mut(&mut self, c: u64) -> Option<(&mut Group<L>, u64)> {
        if c >= self.count {
            return None;
        }
        let (g, bit) = split(c);
        Some((self.groups.get_mut(usize::try_from(g).ok()?)?, bit))
    }

    /// Chunk `c`'s entry; `None` if it is not in the map (not copied).
    pub fn get(&self, c: u64) -> Option<Entry> {
        let (g, bit) = self.group(c)?;
        if g.present & bit == 0 {
            return None;
        }
        let rank = (g.present & (bit - 1)).count_ones() as usize;
        let word = g.leaf.as_ref()?.get(rank)?;
        Some(Entry::unpack(*word))
    }

    /// Changes the entry of chunk `c`, which is in the map; `false` (and
    /// nothing changed) if it is not.
    pub fn update(&mut self, c: u64, entry: Entry) -> bool {
        let Some((g, bit)) = self.group_mut(c) else {
            return false;
        };
        if g.present & bit == 0 {
            return false;
        }
        let rank = (g.present & (bit - 1)).count_ones() as usize;
        match g.leaf.as_mut().and_then(|l| l.get_mut(rank)) {
            Some(word) => {
                *word = entry.pack();
                true
            }
            None => false,
        }
    }

    /// Puts chunk `c`, not in the map, into it with `entry`, if its leaf
    /// has room. A chunk already in the map is left as it is ([`Ok`]).
    pub fn insert(&mut self, c: u64, entry: Entry) -> Result<(), Full> {
        let (g, bit) = self.group_mut(c).ok_or(Full::Outside)?;
        if g.present & bit != 0 {
            return Ok(());
        }
        let count = g.present.count_ones() as usize;
        let leaf = match g.leaf.as_mut() {
            Some(leaf) if leaf.len() > count => leaf,
            _ => return Err(Full::Leaf(capacity_for(count + 1).unwrap_or(count + 1))),
        };
        let rank = (g.present & (bit - 1)).count_ones() as usize;
        leaf.copy_within(rank..count, rank + 1);
        if let Some(word) = leaf.get_mut(rank) {
            *word = entry.pack();
        }
        g.present |= bit;
        Ok(())
    }

    /// Gives chunk `c`'s group the larger leaf `leaf` (its entries move
    /// there); returns the leaf that is no longer used: the old one, or
    /// `leaf` itself if it is not larger (or `c` is outside).
    pub fn grow(&mut self, c: u64, mut leaf: L) -> Option<L> {
        let Some((g, _)) = self.group_mut(c) else {
            return Some(leaf);
        };
        let count = g.present.count_ones() as usize;
        let current = g.leaf.as_ref().map_or(0, |l| l.len());
        if leaf.len() <= current {
            return Some(leaf);
        }
        if let (Some(old), Some(new)) = (g.leaf.as_ref(), leaf.get_mut(..count)) {
            new.copy_from_slice(old.get(..count).unwrap_or(&[]));
        }
        g.leaf.replace(leaf)
    }

    /// Counts one more image read in flight on the original in chunk `c`'s
    /// group; `false` (nothing counted) if `c` is outside or the count is
    /// at its limit.
    pub fn add_reader(&mut self, c: u64) -> bool {
        let Some((g, _)) = self.group_mut(c) else {
            return false;
        };
        match g.readers.checked_add(1) {
            Some(n) => {
                g.readers = n;
                true
            }
            None => false,
        }
    }

    /// Counts one read in flight on the original for each chunk of
    /// `range`, in each chunk's group; `false` (nothing counted) if a chunk
    /// is outside or a count would pass its limit.
    pub fn add_readers(&mut self, range: Range<u64>) -> bool {
        let counted = range.clone().take_while(|&c| self.add_reader(c)).count();
        if counted == range.clone().count() {
            return true;
        }
        // Under the same lock as the counting: nobody saw these counts.
        for c in range.take(counted) {
            self.drop_reader(c);
        }
        false
    }

    /// Counts one read fewer in chunk `c`'s group; returns whether a
    /// writer waits for the group and none is left now (wake it).
    pub fn drop_reader(&mut self, c: u64) -> bool {
        let Some((g, _)) = self.group_mut(c) else {
            return false;
        };
        g.readers = g.readers.saturating_sub(1);
        g.readers == 0 && g.waiting > 0
    }

    /// The image reads in flight on the original in chunk `c`'s group.
    pub fn readers(&self, c: u64) -> u32 {
        self.group(c).map_or(0, |(g, _)| g.readers)
    }

    /// Whether a writer waits for chunk `c`'s group's reads: new reads of
    /// its uncopied chunks wait until it is done.
    pub fn writer_waits(&self, c: u64) -> bool {
        self.group(c).is_some_and(|(g, _)| g.waiting > 0)
    }

    /// A writer begins to wait for the reads of chunk `c`'s group.
    pub fn begin_wait(&mut self, c: u64) {
        if let Some((g, _)) = self.group_mut(c) {
            g.waiting = g.waiting.saturating_add(1);
        }
    }

    /// A writer is done waiting for chunk `c`'s group; returns whether it
    /// was the last (reads held back may go: wake them).
    pub fn end_wait(&mut self, c: u64) -> bool {
        let Some((g, _)) = self.group_mut(c) else {
            return false;
        };
        g.waiting = g.waiting.saturating_sub(1);
        g.waiting == 0
    }

    /// Words of leaf allocated, for the memory accounting of tests.
    pub fn leaf_words(&self) -> usize {
        self.groups
            .iter()
            .map(|g| g.leaf.as_ref().map_or(0, |l| l.len()))
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    type Map = ChunkMap<Vec<Group<Vec<u64>>>>;

    fn map(count: u64) -> Map {
        let groups = (0..groups_for(count)).map(|_| Group::new()).collect();
        ChunkMap::new(groups, count).expect("enough groups")
    }

    /// Inserts as the diff area does: grows the leaf when asked to.
    fn put(m: &mut Map, c: u64, e: Entry) {
        loop {
            match m.insert(c, e) {
                Ok(()) => return,
                Err(Full::Leaf(cap)) => {
                    assert!(cap <= 64, "capacity {cap}");
                    drop(m.grow(c, vec![0; cap]));
                }
                Err(Full::Outside) => panic!("{c} outside"),
            }
        }
    }

    #[test]
    fn entries_pack_and_unpack() {
        let all = [
            Entry::Copying,
            Entry::Failed,
            Entry::Stored { dev: 0, sector: 0 },
            Entry::Stored {
                dev: u16::MAX,
                sector: SECTOR_LIMIT - 1,
            },
            Entry::Stored {
                dev: 7,
                sector: 123_456_789,
            },
        ];
        for e in all {
            assert_eq!(Entry::unpack(e.pack()), e);
        }
        assert_eq!(Entry::stored(1, SECTOR_LIMIT), None);
        assert!(Entry::stored(1, SECTOR_LIMIT - 1).is_some());
    }

    #[test]
    fn too_few_groups_is_refused() {
        let groups: Vec<Group<Vec<u64>>> = (0..2).map(|_| Group::new()).collect();
        assert!(ChunkMap::new(groups, 129).is_none());
    }

    #[test]
    fn a_full_leaf_asks_for_the_next_class() {
        let mut m = map(128);
        assert_eq!(m.insert(5, Entry::Copying), Err(Full::Leaf(1)));
        assert_eq!(m.grow(5, vec![0; 1]), None);
        assert_eq!(m.insert(5, Entry::Copying), Ok(()));
        assert_eq!(m.insert(5, Entry::Failed), Ok(()), "present: left alone");
        assert_eq!(m.get(5), Some(Entry::Copying));
        assert_eq!(m.insert(3, Entry::Failed), Err(Full::Leaf(2)));
        // A leaf no larger is given back.
        assert_eq!(m.grow(3, vec![0; 1]).map(|l| l.len()), Some(1));
        assert_eq!(m.grow(3, vec![0; 2]).map(|l| l.len()), Some(1));
        assert_eq!(m.insert(3, Entry::Failed), Ok(()));
        assert_eq!(m.get(3), Some(Entry::Failed));
        assert_eq!(m.get(5), Some(Entry::Copying));
        // The other group is untouched.
        assert_eq!(m.insert(64, Entry::Copying), Err(Full::Leaf(1)));
        assert_eq!(m.insert(128, Entry::Copying), Err(Full::Outside));
        assert_eq!(m.get(128), None);
        assert!(!m.update(4, Entry::Failed), "not in the map");
    }

    #[test]
    fn matches_a_plain_model() {
        // Random inserts and updates over a few groups against a BTreeMap,
        // checking every chunk after each step.
        let n = 300u64;
        let mut m = map(n);
        let mut model = BTreeMap::new();
        let mut seed = 11u64;
        for step in 0..3000u64 {
            seed = seed
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let c = (seed >> 33) % n;
            let e = match (seed >> 20) % 3 {
                0 => Entry::Copying,
                1 => Entry::Failed,
                _ => Entry::Stored {
                    dev: (step % 5) as u16,
                    sector: step * 8,
                },
            };
            if model.insert(c, e).is_some() {
                assert!(m.update(c, e));
            } else {
                put(&mut m, c, e);
            }
            if step % 37 == 0 {
                for c in 0..n {
                    assert_eq!(m.get(c), model.get(&c).copied(), "chunk {c} at {step}");
                }
            }
        }
        for c in 0..n {
            assert_eq!(m.get(c), model.get(&c).copied());
        }
    }

    #[test]
    fn at_most_16_bytes_per_entry() {
        // Dense: a sequential pass fills whole leaves.
        let mut m = map(64 * 100);
        for c in 0..64 * 100 {
            put(&mut m, c, Entry::Copying);
        }
        assert_eq!(m.leaf_words(), 64 * 100);
        // Scattered, in every fill of a group: never more than 2 words
        // per entry.
        let mut m = map(64);
        for (i, c) in (0..64u64).map(|i| (i * 37) % 64).enumerate() {
            put(&mut m, c, Entry::Failed);
            let entries = i + 1;
            assert!(m.leaf_words() <= 2 * entries, "{} words", m.leaf_words());
        }
    }

    #[test]
    fn readers_and_waiting_writers() {
        let mut m = map(200);
        assert!(m.add_reader(3));
        assert!(m.add_reader(60));
        assert_eq!(m.readers(10), 2, "counted per group");
        assert_eq!(m.readers(64), 0);
        assert!(!m.drop_reader(3), "nobody waits");
        m.begin_wait(10);
        assert!(m.writer_waits(63));
        assert!(!m.writer_waits(64));
        assert!(m.drop_reader(60), "the last read: wake the writer");
        m.begin_wait(1);
        assert!(!m.end_wait(10));
        assert!(m.end_wait(1), "the last writer: reads may go");
        assert!(!m.writer_waits(0));
        assert!(!m.add_reader(200), "outside");
        assert!(!m.add_readers(190..201), "partly outside: nothing counted");
        assert_eq!(m.readers(190), 0);
        assert!(m.add_readers(120..130));
        assert_eq!(m.readers(120), 8, "one per chunk");
        assert_eq!(m.readers(128), 2);
        m.groups[1].readers = u32::MAX - 1;
        assert!(!m.add_readers(126..130), "at the limit: nothing counted");
        assert_eq!(m.readers(64), u32::MAX - 1);
        assert_eq!(m.readers(128), 2);
        assert_eq!(m.readers(200), 0);
    }
}
