// SPDX-License-Identifier: GPL-2.0
//! Generating one fuzzed call: a command number (one of the twelve, one of
//! them with a wrong size or direction, an unknown number of the `'V'` type
//! or any number at all) and its argument struct, built from valid, edge
//! and garbage values and placed in good, read-only, straddling or bad
//! memory; with what the result must be when that is known (`Expect`).

use std::mem::{offset_of, size_of};

use blksnap::uapi::*;
use blksnap::{DevId, Errno};

use crate::arena::{Arena, Racy, BAD_ADDRS, PAGE};
use crate::known::Known;
use crate::rng::Rng;

/// Largest minor the module accepts (`MINORMASK`).
const MINOR_MAX: u32 = (1 << 20) - 1;
/// Largest major the module accepts.
const MAJOR_MAX: u32 = 4095;
/// The module's bound on ranges per call.
const MAX_RANGES: u32 = 1 << 20;
/// The module's bound on devices per snapshot.
const MAX_DEVICES: u32 = 4096;
/// Where arrays start in a worker's arena (the argument struct is before).
const ARRAY_OFFSET: usize = 2 * PAGE;

/// What a call is, for the statistics.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Kind {
    /// One of the twelve commands, by its index in `IOCTL_BLK_SNAP_ALL`.
    Cmd(usize),
    /// A command's type and number with another size or direction.
    WrongSizeDir,
    /// The `'V'` type with a number past the last command.
    UnknownNr,
    /// Any other number (generic VFS ioctls excluded).
    Random,
}

/// The names of the twelve commands, in `IOCTL_BLK_SNAP_ALL` order.
pub const CMD_NAMES: [&str; 12] = [
    "VERSION",
    "TRACKER_REMOVE",
    "TRACKER_COLLECT",
    "TRACKER_READ_CBT_MAP",
    "TRACKER_MARK_DIRTY_BLOCKS",
    "SNAPSHOT_CREATE",
    "SNAPSHOT_DESTROY",
    "SNAPSHOT_APPEND_STORAGE",
    "SNAPSHOT_TAKE",
    "SNAPSHOT_COLLECT",
    "SNAPSHOT_COLLECT_IMAGES",
    "SNAPSHOT_WAIT_EVENT",
];

impl Kind {
    /// Its name in the statistics.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Cmd(i) => CMD_NAMES.get(i).copied().unwrap_or("?"),
            Kind::WrongSizeDir => "V_WRONG_SIZE_OR_DIR",
            Kind::UnknownNr => "V_UNKNOWN_NR",
            Kind::Random => "RANDOM_CMD",
        }
    }
}

/// What the result of a call must be.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expect {
    /// Success or any errno.
    Any,
    /// Success.
    Ok,
    /// Failure with this errno.
    Errno(Errno),
    /// Failure with any errno.
    Fails,
}

/// What to learn from a successful call.
#[derive(Clone, Copy, Debug)]
pub enum Learn {
    /// Nothing.
    Nothing,
    /// The snapshot id CREATE wrote at this address.
    CreatedId(usize),
    /// The image array COLLECT_IMAGES filled: address of its count field,
    /// address of the array.
    Images(usize, usize),
}

/// One generated call, small enough to keep the last few of each worker.
#[derive(Clone, Copy, Debug)]
pub struct Call {
    /// What it is.
    pub kind: Kind,
    /// The command number.
    pub cmd: u32,
    /// The argument (an address).
    pub arg: u64,
    /// Where the argument struct is.
    pub place: &'static str,
    /// Where the struct's array pointer points, if it has one.
    pub array: &'static str,
    /// The struct's count, length or timeout field, if it has one.
    pub count: u64,
    /// What the result must be.
    pub expect: Expect,
    /// What to learn from success.
    pub learn: Learn,
    /// READ_CBT_MAP's length: success may return at most this.
    pub max_ret: u64,
}

/// Little-endian struct bytes built field by field (padding stays zero).
struct Bytes(Vec<u8>);

impl Bytes {
    fn new(size: usize) -> Self {
        Bytes(vec![0; size])
    }
    fn put(&mut self, off: usize, v: &[u8]) -> &mut Self {
        self.0[off..off + v.len()].copy_from_slice(v);
        self
    }
    fn u32(&mut self, off: usize, v: u32) -> &mut Self {
        self.put(off, &v.to_ne_bytes())
    }
    fn u64(&mut self, off: usize, v: u64) -> &mut Self {
        self.put(off, &v.to_ne_bytes())
    }
    fn dev(&mut self, off: usize, (mj, mn): (u32, u32)) -> &mut Self {
        self.u32(off, mj).u32(off + 4, mn)
    }
}

/// Where the argument struct went.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Place {
    /// In read-write memory.
    Good,
    /// In the read-only page.
    ReadOnly,
    /// The first `k` bytes writable, the rest read-only.
    IntoReadOnly(usize),
    /// The first `k` bytes readable, the rest in the unmapped hole.
    IntoHole(usize),
    /// At an address that is never user memory.
    Bad,
    /// At a random address.
    Random,
}

impl Place {
    fn name(self) -> &'static str {
        match self {
            Place::Good => "good",
            Place::ReadOnly => "read-only",
            Place::IntoReadOnly(_) => "straddling-into-read-only",
            Place::IntoHole(_) => "straddling-into-unmapped",
            Place::Bad => "bad-address",
            Place::Random => "random-address",
        }
    }
}

/// The generator of one worker.
pub struct Gen<'a> {
    /// The worker's random numbers.
    pub rng: Rng,
    /// The worker's memory.
    pub arena: Arena,
    /// Memory shared with (and rewritten by) the other workers.
    pub racy: &'a Racy,
    /// Shared knowledge of devices and ids.
    pub known: &'a Known,
}

impl Gen<'_> {
    /// Generates one call and writes its argument into the arena.
    pub fn call(&mut self) -> Call {
        let r = self.rng.below(100);
        if r < 72 {
            let i = self.rng.index(IOCTL_BLK_SNAP_ALL.len());
            self.command(i)
        } else if r < 84 {
            self.wrong_size_dir()
        } else if r < 90 {
            self.unknown_nr()
        } else {
            self.random_cmd()
        }
    }

    fn garbage_arg(&mut self, kind: Kind, cmd: u32) -> Call {
        let mut junk = [0u8; 64];
        self.rng.fill(&mut junk);
        let (arg, place) = if self.rng.chance(3, 4) {
            self.arena.write_rw(0, &junk);
            (self.arena.rw() as u64, Place::Good)
        } else {
            (*self.rng.pick(BAD_ADDRS), Place::Bad)
        };
        Call {
            kind,
            cmd,
            arg,
            place: place.name(),
            array: "-",
            count: 0,
            expect: Expect::Errno(Errno::ENOTTY),
            learn: Learn::Nothing,
            max_ret: 0,
        }
    }

    fn wrong_size_dir(&mut self) -> Call {
        let i = self.rng.index(IOCTL_BLK_SNAP_ALL.len());
        let real = IOCTL_BLK_SNAP_ALL[i];
        let real_size = (real >> 16) & 0x3fff;
        let cmd = loop {
            let dir = if self.rng.chance(1, 2) {
                (real >> 30) & 3
            } else {
                self.rng.next_u32() & 3
            };
            let size = match self.rng.below(6) {
                0 => 0,
                1 => real_size,
                2 => real_size.wrapping_add(8) & 0x3fff,
                3 => real_size.wrapping_sub(8) & 0x3fff,
                4 => *self.rng.pick(&[8, 16, 24, 32, 40, 48, 4096]),
                _ => self.rng.next_u32() & 0x3fff,
            };
            let cmd = (dir << 30) | (size << 16) | (real & 0xffff);
            if cmd != real {
                break cmd;
            }
        };
        self.garbage_arg(Kind::WrongSizeDir, cmd)
    }

    fn unknown_nr(&mut self) -> Call {
        let nr = 12 + self.rng.below(244) as u32;
        let cmd = (self.rng.next_u32() & 0xffff_0000) | ((BLK_SNAP as u32) << 8) | nr;
        self.garbage_arg(Kind::UnknownNr, cmd)
    }

    fn random_cmd(&mut self) -> Call {
        let cmd = loop {
            let cmd = if self.rng.chance(1, 3) {
                // A real command under another type byte.
                let real = *self.rng.pick(&IOCTL_BLK_SNAP_ALL);
                (real & 0xffff_00ff) | ((self.rng.next_u32() & 0xff) << 8)
            } else {
                self.rng.next_u32()
            };
            // Leave out the types do_vfs_ioctl() answers for every file
            // (FIOCLEX, FIONBIO, FIFREEZE, FICLONE, FS_IOC_*...).
            let ty = (cmd >> 8) & 0xff;
            if ty != BLK_SNAP as u32 && ty != 0 && ![0x54, 0x58, 0x66, 0x94, 0x15].contains(&ty) {
                break cmd;
            }
        };
        self.garbage_arg(Kind::Random, cmd)
    }

    /// Places the argument struct `bytes` of which the module reads the
    /// first `reads` bytes; returns its address and where it went.
    fn place(&mut self, bytes: &[u8]) -> (u64, Place) {
        let size = bytes.len();
        let r = self.rng.below(100);
        let (addr, place) = if r < 78 {
            let off = if self.rng.chance(1, 4) {
                self.rng.index(64)
            } else {
                0
            };
            (self.arena.rw().wrapping_add(off), Place::Good)
        } else if r < 82 {
            (self.arena.ro(), Place::ReadOnly)
        } else if r < 86 && size > 1 {
            let k = 1 + self.rng.index(size - 1);
            (self.arena.ro().wrapping_sub(k), Place::IntoReadOnly(k))
        } else if r < 91 && size > 1 {
            let k = 1 + self.rng.index(size - 1);
            (self.arena.hole().wrapping_sub(k), Place::IntoHole(k))
        } else if r < 98 {
            let addr = match self.rng.below(3) {
                0 => self.arena.hole() as u64,
                1 => self.arena.none() as u64 + self.rng.below(PAGE as u64 - 64),
                _ => *self.rng.pick(BAD_ADDRS),
            };
            return (addr, Place::Bad);
        } else {
            return (self.rng.next_u64(), Place::Random);
        };
        // Errors here only leave the struct unwritten: still a valid call.
        let _ = self.arena.write_at(addr, bytes);
        (addr as u64, place)
    }

    /// Places an array of `bytes` the struct points at; returns its
    /// address, where it went and whether it surely cannot be read.
    fn array(&mut self, bytes: &[u8]) -> (u64, &'static str, bool) {
        let r = self.rng.below(100);
        if r < 70 {
            let off = ARRAY_OFFSET
                + if self.rng.chance(1, 4) {
                    self.rng.index(16)
                } else {
                    0
                };
            self.arena.write_rw(off, bytes);
            (self.arena.rw() as u64 + off as u64, "good", false)
        } else if r < 74 {
            (0, "null", true)
        } else if r < 79 {
            let k = 1 + self.rng.index(bytes.len().max(1));
            let addr = self.arena.hole().wrapping_sub(k);
            let _ = self.arena.write_at(addr, bytes);
            (addr as u64, "straddling-into-unmapped", false)
        } else if r < 83 {
            let _ = self.arena.write_at(self.arena.ro(), bytes);
            (self.arena.ro() as u64, "read-only", false)
        } else if r < 87 {
            (self.arena.hole() as u64, "unmapped", true)
        } else if r < 91 {
            (*self.rng.pick(BAD_ADDRS), "bad-address", true)
        } else if r < 97 {
            for _ in 0..8 {
                let w = self.rng.index(self.racy.len() / 8);
                self.racy.store(w, self.rng.next_u64());
            }
            let off = self.rng.index(self.racy.len() / 2);
            (self.racy.addr() as u64 + off as u64, "racy", false)
        } else {
            (self.rng.next_u64(), "random-address", false)
        }
    }

    /// A count for an input array of `built` elements, bounded by `max`.
    fn count(&mut self, built: usize, max: u32) -> u32 {
        let built = built as u32;
        match self.rng.below(100) {
            // At the bounds the module allocates up to 16 MiB per call:
            // rarely, as that is slow in an emulated VM.
            0..=57 => built,
            58..=65 => 0,
            66..=72 => 1 + self.rng.below(8) as u32,
            73..=80 => built + 1,
            81..=82 => max,
            83..=84 => max + 1,
            85..=86 => *self.rng.pick(&[MAX_DEVICES, MAX_DEVICES + 1, MAX_RANGES]),
            87..=93 => *self.rng.pick(&[u32::MAX, 0x8000_0000, 0x1000_0000]),
            _ => self.rng.next_u32(),
        }
    }

    /// A count for an output array (the module says how many it needs).
    fn out_count(&mut self) -> u32 {
        match self.rng.below(10) {
            0..=2 => 0,
            3..=6 => 1 + self.rng.below(8) as u32,
            7 => 64,
            8 => u32::MAX,
            _ => self.rng.next_u32(),
        }
    }

    /// A device id: real, image, nearby, edge or random.
    fn dev(&mut self) -> (u32, u32) {
        let known = self.known;
        let real = |rng: &mut Rng, devs: &[crate::known::Device]| {
            (!devs.is_empty()).then(|| {
                let d = rng.pick(devs).id;
                (d.major, d.minor)
            })
        };
        let r = self.rng.below(100);
        let pick = if r < 35 {
            real(&mut self.rng, &known.originals)
        } else if r < 45 {
            real(&mut self.rng, &known.storage)
        } else if r < 55 {
            known.pick_image(&mut self.rng).map(|d| (d.major, d.minor))
        } else if r < 62 {
            Some((0, 0))
        } else if r < 70 {
            Some((1, self.rng.below(32) as u32))
        } else if r < 71 {
            // Mostly majors nobody registered: the block layer then runs
            // modprobe for them, which is slow, so rarely.
            Some((self.rng.below(260) as u32, self.rng.below(16) as u32))
        } else if r < 75 {
            Some((
                *self.rng.pick(&[1, 7, 8, 253, 259]),
                self.rng.below(16) as u32,
            ))
        } else if r < 80 {
            Some(*self.rng.pick(&[
                (MAJOR_MAX, MINOR_MAX),
                (MAJOR_MAX + 1, 0),
                (0, MINOR_MAX + 1),
                (u32::MAX, u32::MAX),
            ]))
        } else if r < 85 {
            real(&mut self.rng, &known.originals).map(|(mj, mn)| {
                if self.rng.chance(1, 2) {
                    (mj, mn.wrapping_add(1))
                } else {
                    (mj.wrapping_add(1), mn)
                }
            })
        } else if r < 90 {
            Some((10, self.rng.below(256) as u32))
        } else {
            None
        };
        pick.unwrap_or_else(|| (self.rng.next_u32(), self.rng.next_u32()))
    }

    /// A snapshot id: known, damaged, zero, all ones or random.
    fn uuid(&mut self) -> [u8; 16] {
        let r = self.rng.below(100);
        let known = self.known.pick_id(&mut self.rng);
        let mut id = [0u8; 16];
        match (r, known) {
            (0..=54, Some(k)) => id = k,
            (55..=64, Some(mut k)) => {
                let bit = self.rng.index(128);
                k[bit / 8] ^= 1 << (bit % 8);
                id = k;
            }
            (65..=74, _) => {}
            (75..=82, _) => id = [0xff; 16],
            _ => self.rng.fill(&mut id),
        }
        id
    }

    /// Sector ranges on a device of `sectors` sectors: aligned and inside,
    /// misaligned, empty, overflowing, past the end, whole, overlapping,
    /// duplicated or random.
    fn ranges(&mut self, sectors: u64, n: usize) -> Vec<(u64, u64)> {
        let pages = (sectors / 8).max(1);
        let mut out: Vec<(u64, u64)> = Vec::with_capacity(n);
        for _ in 0..n {
            let prev = out.last().copied();
            let r = self.rng.below(100);
            let range = match (r, prev) {
                (0..=39, _) => {
                    let first = self.rng.below(pages);
                    let len = 1 + self.rng.below((pages - first).clamp(1, 64));
                    (first * 8, len * 8)
                }
                (40..=49, _) => (self.rng.below(sectors.max(1)), 1 + self.rng.below(64)),
                (50..=54, _) => (self.rng.below(sectors.max(1)), 0),
                (55..=59, _) => (u64::MAX - self.rng.below(16), 1 + self.rng.below(32)),
                (60..=64, _) => (0, u64::MAX),
                (65..=71, _) => (
                    sectors.saturating_sub(self.rng.below(16)),
                    8 + self.rng.below(32) * 8,
                ),
                (72..=79, _) => (0, sectors & !7),
                (80..=89, Some((o, c))) => (o + self.rng.below(c.max(1)), c),
                (90..=94, Some(p)) => p,
                _ => (self.rng.next_u64(), self.rng.next_u64()),
            };
            out.push(range);
        }
        out
    }

    /// How many elements to build for an array.
    fn elements(&mut self) -> usize {
        match self.rng.below(10) {
            0..=5 => 1 + self.rng.index(3),
            6..=8 => 1 + self.rng.index(16),
            _ => 1 + self.rng.index(200),
        }
    }

    /// The capacity of a device id, if it is one the fuzzer knows.
    fn sectors_of(&mut self, (mj, mn): (u32, u32)) -> u64 {
        let dev = DevId::new(mj, mn);
        let known = self.known;
        known
            .originals
            .iter()
            .chain(known.storage.iter())
            .find(|d| d.id == dev)
            .map(|d| d.sectors)
            .unwrap_or_else(|| 1 + self.rng.below(1 << 20))
    }

    /// One of the twelve commands with a fuzzed argument.
    fn command(&mut self, i: usize) -> Call {
        let cmd = IOCTL_BLK_SNAP_ALL[i];
        let mut array = "-";
        let mut array_bad = false;
        let mut count = 0u64;
        let mut max_ret = 0u64;
        let mut arg_learn = None;
        let mut images_at = 0u64;
        let bytes = match cmd {
            IOCTL_BLK_SNAP_VERSION => {
                let mut b = Bytes::new(size_of::<blk_snap_version>());
                self.rng.fill(&mut b.0);
                b
            }
            IOCTL_BLK_SNAP_TRACKER_REMOVE => {
                let mut b = Bytes::new(size_of::<blk_snap_tracker_remove>());
                b.dev(0, self.dev());
                b
            }
            IOCTL_BLK_SNAP_TRACKER_COLLECT => {
                type T = blk_snap_tracker_collect;
                let n = self.out_count();
                let len = (n as usize).min(64) * size_of::<blk_snap_cbt_info>();
                let (ptr, name, _) = self.array(&vec![0xa5; len.max(1)]);
                array = name;
                count = n.into();
                let mut b = Bytes::new(size_of::<T>());
                b.u32(offset_of!(T, count), n)
                    .u64(offset_of!(T, cbt_info_array), ptr);
                b
            }
            IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP => {
                type T = blk_snap_tracker_read_cbt_bitmap;
                let offset = match self.rng.below(6) {
                    0..=2 => 0,
                    3 => self.rng.below(4096) as u32,
                    4 => u32::MAX - self.rng.below(16) as u32,
                    _ => self.rng.next_u32(),
                };
                let length = match self.rng.below(8) {
                    0 => 0,
                    1..=4 => 1 + self.rng.below(8192) as u32,
                    5 => (4 * PAGE) as u32,
                    6 => u32::MAX,
                    _ => self.rng.next_u32(),
                };
                let (ptr, name, _) = self.array(&[0u8; 64]);
                array = name;
                count = length.into();
                max_ret = length.into();
                let mut b = Bytes::new(size_of::<T>());
                b.dev(offset_of!(T, dev_id), self.dev())
                    .u32(offset_of!(T, offset), offset)
                    .u32(offset_of!(T, length), length)
                    .u64(offset_of!(T, buff), ptr);
                b
            }
            IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS | IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE => {
                let append = cmd == IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE;
                let dev = if append && self.rng.chance(1, 2) && !self.known.storage.is_empty() {
                    let d = self.rng.pick(&self.known.storage).id;
                    (d.major, d.minor)
                } else {
                    self.dev()
                };
                let n = self.elements();
                let sectors = self.sectors_of(dev);
                let mut raw = Vec::with_capacity(n * 16);
                for (o, c) in self.ranges(sectors, n) {
                    raw.extend_from_slice(&o.to_ne_bytes());
                    raw.extend_from_slice(&c.to_ne_bytes());
                }
                let (ptr, name, bad) = self.array(&raw);
                let c = self.count(n, MAX_RANGES);
                array = name;
                array_bad = bad && c > 0 && c <= MAX_RANGES;
                count = c.into();
                if append {
                    type T = blk_snap_snapshot_append_storage;
                    let mut b = Bytes::new(size_of::<T>());
                    b.put(offset_of!(T, id), &self.uuid())
                        .dev(offset_of!(T, dev_id), dev)
                        .u32(offset_of!(T, count), c)
                        .u64(offset_of!(T, ranges), ptr);
                    b
                } else {
                    type T = blk_snap_tracker_mark_dirty_blocks;
                    let mut b = Bytes::new(size_of::<T>());
                    b.dev(offset_of!(T, dev_id), dev)
                        .u32(offset_of!(T, count), c)
                        .u64(offset_of!(T, dirty_blocks_array), ptr);
                    b
                }
            }
            IOCTL_BLK_SNAP_SNAPSHOT_CREATE => {
                type T = blk_snap_snapshot_create;
                let devs: Vec<(u32, u32)> = match self.rng.below(10) {
                    0..=2 if !self.known.originals.is_empty() => {
                        let d = self.rng.pick(&self.known.originals).id;
                        vec![(d.major, d.minor)]
                    }
                    3..=5 => self
                        .known
                        .originals
                        .iter()
                        .map(|d| (d.id.major, d.id.minor))
                        .collect(),
                    _ => {
                        let n = self.elements().min(8);
                        (0..n).map(|_| self.dev()).collect()
                    }
                };
                let mut raw = Vec::with_capacity(devs.len() * 8);
                for (mj, mn) in &devs {
                    raw.extend_from_slice(&mj.to_ne_bytes());
                    raw.extend_from_slice(&mn.to_ne_bytes());
                }
                let (ptr, name, bad) = self.array(&raw);
                let c = self.count(devs.len(), MAX_DEVICES);
                array = name;
                array_bad = bad && c > 0 && c <= MAX_DEVICES;
                count = c.into();
                let mut b = Bytes::new(size_of::<T>());
                let mut junk = [0u8; 16];
                self.rng.fill(&mut junk);
                b.u32(offset_of!(T, count), c)
                    .u64(offset_of!(T, dev_id_array), ptr)
                    .put(offset_of!(T, id), &junk);
                arg_learn = Some(offset_of!(T, id));
                b
            }
            IOCTL_BLK_SNAP_SNAPSHOT_DESTROY | IOCTL_BLK_SNAP_SNAPSHOT_TAKE => {
                let mut b = Bytes::new(16);
                b.put(0, &self.uuid());
                b
            }
            IOCTL_BLK_SNAP_SNAPSHOT_COLLECT => {
                type T = blk_snap_snapshot_collect;
                let n = self.out_count();
                let len = (n as usize).min(64) * 16;
                let (ptr, name, _) = self.array(&vec![0x5a; len.max(1)]);
                array = name;
                count = n.into();
                let mut b = Bytes::new(size_of::<T>());
                b.u32(offset_of!(T, count), n).u64(offset_of!(T, ids), ptr);
                b
            }
            IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES => {
                type T = blk_snap_snapshot_collect_images;
                let n = self.out_count();
                let len = (n as usize).min(64) * size_of::<blk_snap_image_info>();
                let (ptr, name, _) = self.array(&vec![0x3c; len.max(1)]);
                array = name;
                count = n.into();
                images_at = ptr;
                let mut b = Bytes::new(size_of::<T>());
                b.put(offset_of!(T, id), &self.uuid())
                    .u32(offset_of!(T, count), n)
                    .u64(offset_of!(T, image_info_array), ptr);
                b
            }
            _ => {
                // IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT
                type T = blk_snap_snapshot_event;
                let timeout = match self.rng.below(1000) {
                    0..=699 => 0,
                    700..=979 => 1 + self.rng.below(5) as u32,
                    980..=989 => 20 + self.rng.below(30) as u32,
                    _ => *self.rng.pick(&[u32::MAX, 0x8000_0000, 3_600_000]),
                };
                count = timeout.into();
                let mut b = Bytes::new(size_of::<T>());
                b.put(offset_of!(T, id), &self.uuid())
                    .u32(offset_of!(T, timeout_ms), timeout);
                b
            }
        };
        let (arg, place) = self.place(&bytes.0);
        let is_wait = cmd == IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT;
        let expect = match place {
            // The module reads the whole struct first (WAIT_EVENT: its
            // first 20 bytes); VERSION writes its 8 bytes.
            Place::Bad => Expect::Errno(Errno::EFAULT),
            Place::IntoHole(k) if !is_wait || k < 20 => Expect::Errno(Errno::EFAULT),
            Place::IntoHole(_) => Expect::Fails,
            Place::ReadOnly | Place::IntoReadOnly(_) if cmd == IOCTL_BLK_SNAP_VERSION => {
                Expect::Errno(Errno::EFAULT)
            }
            Place::Good if cmd == IOCTL_BLK_SNAP_VERSION => Expect::Ok,
            _ if array_bad => Expect::Fails,
            _ => Expect::Any,
        };
        let learn = match (place, arg_learn) {
            (Place::Good, Some(off)) => Learn::CreatedId(arg as usize + off),
            (Place::Good, None)
                if cmd == IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES && array == "good" =>
            {
                type T = blk_snap_snapshot_collect_images;
                Learn::Images(arg as usize + offset_of!(T, count), images_at as usize)
            }
            _ => Learn::Nothing,
        };
        Call {
            kind: Kind::Cmd(i),
            cmd,
            arg,
            place: place.name(),
            array,
            count,
            expect,
            learn,
            max_ret,
        }
    }
}
