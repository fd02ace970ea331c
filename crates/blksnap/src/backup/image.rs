// SPDX-License-Identifier: GPL-2.0
//! Reading images, devices and backup files: opening, sizes, and the
//! batched walk over blocks that copies, restores and checks share.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;
use std::sync::mpsc::sync_channel;
use std::thread;

use nix::libc;

use super::{BlockRange, Geometry};
use crate::error::{io_err, Result};

/// How much is read or written at once (at least one block).
pub(super) const BATCH_BYTES: u64 = 8 << 20;

/// Opens a file or block device for reading.
pub fn open_read(path: &Path) -> Result<File> {
    OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| io_err("open", path, &e))
}

/// The size of a file or block device in bytes.
pub fn size_of(file: &File, path: &Path) -> Result<u64> {
    let meta = file.metadata().map_err(|e| io_err("stat", path, &e))?;
    if meta.file_type().is_block_device() {
        let mut f = file;
        f.seek(SeekFrom::End(0))
            .map_err(|e| io_err("seek", path, &e))
    } else {
        Ok(meta.len())
    }
}

/// Whether `file` is a block device.
pub fn is_block_device(file: &File) -> bool {
    file.metadata()
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false)
}

/// Opens a snapshot image (or any file or block device) to be read once
/// through: a block device bypasses the page cache (`O_DIRECT`), so a
/// backup neither fills the cache with data it reads once nor pays for
/// readahead around the scattered blocks of an incremental backup. A
/// regular file, or a device that refuses `O_DIRECT`, is read through the
/// cache.
pub fn open_stream(path: &Path) -> Result<File> {
    let file = open_read(path)?;
    if is_block_device(&file) {
        // Refused: read through the cache.
        let _ = set_direct(&file, true);
    }
    Ok(file)
}

/// The alignment of read buffers: `O_DIRECT` wants the memory aligned to
/// the device's logical block size, which a page covers.
const BUF_ALIGN: usize = 4096;

/// A read buffer of `len` bytes aligned to [`BUF_ALIGN`].
struct AlignedBuf {
    raw: Vec<u8>,
    start: usize,
}

impl AlignedBuf {
    fn new(len: usize) -> Self {
        let raw = vec![0u8; len + BUF_ALIGN - 1];
        let start = raw.as_ptr().align_offset(BUF_ALIGN).min(BUF_ALIGN - 1);
        AlignedBuf { raw, start }
    }

    fn get(&mut self, len: usize) -> &mut [u8] {
        &mut self.raw[self.start..self.start + len]
    }
}

/// How many batches are read ahead of the one being processed.
const BATCHES_AHEAD: usize = 2;

/// One batch read: its first block, its bytes, the buffer holding them.
type Batch = (u64, usize, AlignedBuf);

/// The batches of `ranges`, each as its first block and its block count.
fn batches(ranges: &[BlockRange], per_batch: u64) -> impl Iterator<Item = (u64, u64)> + '_ {
    ranges.iter().flat_map(move |r| {
        let end = r.first + r.count;
        (r.first..end)
            .step_by(per_batch as usize)
            .map(move |b| (b, per_batch.min(end - b)))
    })
}

/// Whether `file` was opened with `O_DIRECT`.
fn is_direct(file: &File) -> bool {
    nix::fcntl::fcntl(file, nix::fcntl::FcntlArg::F_GETFL)
        .is_ok_and(|flags| flags & libc::O_DIRECT != 0)
}

/// Turns `O_DIRECT` on or off on `file`; whether that worked.
fn set_direct(file: &File, on: bool) -> bool {
    use nix::fcntl::{fcntl, FcntlArg, OFlag};
    fcntl(file, FcntlArg::F_GETFL)
        .and_then(|flags| {
            let mut flags = OFlag::from_bits_truncate(flags);
            flags.set(OFlag::O_DIRECT, on);
            fcntl(file, FcntlArg::F_SETFL(flags))
        })
        .is_ok()
}

/// Calls `f(block, data)` for every block of `ranges`, reading `src` in
/// batches; `progress` gets the bytes of every batch. The first error, of
/// the reads or of `f`, ends the walk.
///
/// A source opened with `O_DIRECT` ([`open_stream`]) has no readahead, so
/// a second thread reads its batches ahead (up to [`BATCHES_AHEAD`]) while
/// `f` processes the one before: a backup goes at the pace of the slower
/// of reading and of hashing and writing, not of their sum. A source read
/// through the page cache has the kernel's readahead, and is read in line.
pub(super) fn for_each_block(
    src: &File,
    src_path: &Path,
    geo: Geometry,
    ranges: &[BlockRange],
    progress: &dyn Fn(u64),
    f: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    // Reads at block offsets meet any device's `O_DIRECT` alignment when
    // blocks are whole pages (the tracking block is 64 KiB by default);
    // smaller blocks go through the page cache.
    let ahead = is_direct(src)
        && (geo.block_size.is_multiple_of(BUF_ALIGN as u64) || !set_direct(src, false));
    walk(src, src_path, geo, ranges, progress, ahead, f)
}

/// [`for_each_block`], with the reads in a thread of their own if `ahead`.
fn walk(
    src: &File,
    src_path: &Path,
    geo: Geometry,
    ranges: &[BlockRange],
    progress: &dyn Fn(u64),
    ahead: bool,
    mut f: impl FnMut(u64, &[u8]) -> Result<()>,
) -> Result<()> {
    let per_batch = (BATCH_BYTES / geo.block_size).max(1);
    let buf_len = (per_batch * geo.block_size) as usize;
    let read = |(b, n): (u64, u64), mut buf: AlignedBuf| -> Result<Batch> {
        let len = geo.bytes(b, n) as usize;
        src.read_exact_at(buf.get(len), geo.offset(b))
            .map_err(|e| io_err("read", src_path, &e))?;
        Ok((b, len, buf))
    };
    let mut process = |(b, len, mut buf): Batch| -> Result<AlignedBuf> {
        let data = buf.get(len);
        for (i, chunk) in data.chunks(geo.block_size as usize).enumerate() {
            f(b + i as u64, chunk)?;
        }
        progress(len as u64);
        Ok(buf)
    };
    if !ahead {
        let mut buf = AlignedBuf::new(buf_len);
        for batch in batches(ranges, per_batch) {
            buf = process(read(batch, buf)?)?;
        }
        return Ok(());
    }
    let (full_tx, full_rx) = sync_channel::<Result<Batch>>(BATCHES_AHEAD);
    let (free_tx, free_rx) = sync_channel::<AlignedBuf>(BATCHES_AHEAD + 1);
    thread::scope(|scope| {
        // Owned here, so both close when the walk ends, early or not: the
        // reader, waiting to send a batch or for a buffer, then stops.
        let (full_rx, free_tx) = (full_rx, free_tx);
        scope.spawn(move || {
            let mut made = 0;
            for batch in batches(ranges, per_batch) {
                // A new buffer while fewer than all are in use, else the
                // next one the walk gives back (none: it ended).
                let buf = if made < BATCHES_AHEAD + 1 {
                    made += 1;
                    AlignedBuf::new(buf_len)
                } else {
                    match free_rx.recv() {
                        Ok(buf) => buf,
                        Err(_) => return,
                    }
                };
                let batch = read(batch, buf);
                let failed = batch.is_err();
                if full_tx.send(batch).is_err() || failed {
                    return;
                }
            }
        });
        for batch in full_rx {
            let buf = process(batch?)?;
            // The reader may have stopped needing buffers: nothing to do.
            let _ = free_tx.send(buf);
        }
        Ok(())
    })
}

pub(super) fn all_zero(data: &[u8]) -> bool {
    let words = data.chunks_exact(8);
    let tail = words.remainder();
    tail.iter().all(|&b| b == 0) && words.into_iter().all(|c| c == [0u8; 8])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil::TempDir;

    /// A file of `blocks` blocks of 4 KiB, block `b` filled with `b as u8`.
    struct Numbered {
        _dir: TempDir,
        path: std::path::PathBuf,
        file: File,
    }

    impl Numbered {
        fn new(blocks: u64) -> (Self, Geometry) {
            let dir = TempDir::new("walk");
            let path = dir.path().join("image");
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create_new(true)
                .open(&path)
                .unwrap();
            for b in 0..blocks {
                file.write_all_at(&[b as u8; 4096], b * 4096).unwrap();
            }
            let geo = Geometry::new(4096, blocks * 4096);
            (
                Numbered {
                    _dir: dir,
                    path,
                    file,
                },
                geo,
            )
        }
        fn as_file(&self) -> &File {
            &self.file
        }
        fn path(&self) -> &Path {
            &self.path
        }
    }

    #[test]
    fn walk_visits_every_block_in_order_across_batches() {
        let per_batch = BATCH_BYTES / 4096;
        let blocks = 3 * per_batch + 5;
        let (f, geo) = Numbered::new(blocks);
        let ranges = [
            BlockRange { first: 1, count: 2 },
            BlockRange {
                first: 7,
                count: 2 * per_batch + 3,
            },
        ];
        for ahead in [false, true] {
            let mut seen = Vec::new();
            let read = std::cell::Cell::new(0);
            walk(
                f.as_file(),
                f.path(),
                geo,
                &ranges,
                &|n| read.set(read.get() + n),
                ahead,
                |b, data| {
                    assert!(data.iter().all(|&x| x == b as u8), "block {b}");
                    seen.push(b);
                    Ok(())
                },
            )
            .unwrap();
            let want: Vec<u64> = (1..3).chain(7..7 + 2 * per_batch + 3).collect();
            assert_eq!(seen, want, "ahead={ahead}");
            assert_eq!(read.get(), want.len() as u64 * 4096);
        }
    }

    #[test]
    fn walk_stops_at_the_first_error_of_either_side() {
        let per_batch = BATCH_BYTES / 4096;
        let (f, geo) = Numbered::new(4 * per_batch);
        let all = [BlockRange {
            first: 0,
            count: 4 * per_batch,
        }];
        for ahead in [false, true] {
            let mut calls = 0;
            let r = walk(f.as_file(), f.path(), geo, &all, &|_| {}, ahead, |b, _| {
                calls += 1;
                if b == per_batch + 1 {
                    return Err(io_err("check", f.path(), &std::io::Error::other("stop")));
                }
                Ok(())
            });
            assert!(r.is_err());
            assert_eq!(calls, per_batch + 2);
            // A read past the end of the file (shorter than the geometry says)
            // fails the walk.
            let longer = Geometry::new(4096, (4 * per_batch + 2) * 4096);
            let past = [BlockRange {
                first: 4 * per_batch - 1,
                count: 2,
            }];
            let r = walk(
                f.as_file(),
                f.path(),
                longer,
                &past,
                &|_| {},
                ahead,
                |_, _| Ok(()),
            );
            assert!(r.is_err());
        }
    }

    #[test]
    fn zero_detection() {
        assert!(all_zero(&[0; 4099]));
        let mut v = vec![0u8; 4099];
        v[4098] = 1;
        assert!(!all_zero(&v));
        v[4098] = 0;
        v[3] = 1;
        assert!(!all_zero(&v));
        assert!(all_zero(&[]));
    }
}
