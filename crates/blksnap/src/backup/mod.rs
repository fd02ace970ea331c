// SPDX-License-Identifier: GPL-2.0
//! Full and incremental backups of snapshot images, driven by change
//! tracking (CBT), and their restore and verification.
//!
//! A backup directory holds a chain per device: a full image, then
//! incrementals that each hold only the tracking blocks the CBT map marks
//! as changed since the backup before. `chain.json` records, per device, the
//! CBT `generation_id` and `snap_number` of the last backup; the next one is
//! incremental when the generation is the same (the blocks whose map byte is
//! greater than the saved `snap_number` changed), and full otherwise.
//!
//! Files, for a device named `NAME` and backup number `SEQ` (six digits):
//!
//! * `NAME.SEQ.full`: the raw image (sparse: all-zero blocks are holes);
//! * `NAME.SEQ.incr`: an [`IncrementalHeader`], then the changed blocks'
//!   data in order;
//! * `NAME.SEQ.sums`: the xxh3-64 hash of every tracking block of the image
//!   as it was at that backup (little-endian `u64`s), for [`verify_image`]
//!   and [`verify_files`].
//!
//! A backup of the devices of a taken snapshot:
//!
//! ```no_run
//! use blksnap::backup::{device_name, BackupRun};
//! use blksnap::Control;
//!
//! # fn main() -> blksnap::Result<()> {
//! # let id: blksnap::SnapshotId = Default::default();
//! let ctl = Control::open()?;
//! let mut run = BackupRun::begin("/backup/host1")?;
//! let cbt = ctl.tracker_collect()?;
//! for image in ctl.snapshot_collect_images(id)? {
//!     let info = cbt.iter().find(|c| c.dev_id == image.orig_dev_id).unwrap();
//!     let name = device_name(image.orig_dev_id);
//!     let job = run.prepare(&name, info, false, || ctl.tracker_read_cbt_map_all(image.orig_dev_id))?;
//!     println!("{name}: {:?}, {} bytes to copy", job.plan, job.bytes);
//!     run.copy(&job, image.orig_dev_id, &image.image_path(), &|_bytes| {})?;
//! }
//! for r in run.commit()? {
//!     println!("{}: {} blocks, {} bytes", r.name, r.blocks, r.bytes);
//! }
//! # Ok(())
//! # }
//! ```

mod blocks;
mod chain;
mod copy;
mod format;
mod image;
mod restore;
mod run;
mod verify;

use std::path::Path;

use crate::error::Error;

pub use blocks::{changed_blocks, count_blocks, BlockRange, Geometry};
pub use chain::{
    device_name, valid_name, BackupEntry, Chain, DeviceChain, FullReason, Kind, Plan, CHAIN_FILE,
};
pub use copy::{write_full, write_incremental, CopyStats};
pub use format::{
    block_hash, derive_sums, read_sums, write_sums, IncrementalHeader, INCREMENTAL_MAGIC,
};
pub use image::{is_block_device, open_read, open_stream, size_of};
pub use restore::{apply_full, apply_incremental, restore, restore_bytes, RestoreStats};
pub use run::{BackupRun, DeviceResult, Job};
pub use verify::{compare, verify_files, verify_image, Comparison, FileProblem};

/// The version of the metadata and file formats.
pub const FORMAT: u32 = 1;

fn backup_err(path: &Path, reason: impl Into<String>) -> Error {
    Error::Backup {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testutil::TempDir;
    use crate::types::{CbtInfo, DevId};
    use uuid::Uuid;

    /// The CBT state of device 1:0 with these numbers.
    pub(crate) fn cbt(block_size: u32, capacity: u64, generation: u8, snap: u8) -> CbtInfo {
        CbtInfo {
            dev_id: DevId::new(1, 0),
            block_size,
            device_capacity: capacity,
            block_count: capacity.div_ceil(block_size.into()) as u32,
            generation_id: Uuid::from_bytes([generation; 16]),
            snap_number: snap,
        }
    }

    /// A pseudo-random generator for test data.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            self.0
        }
    }

    /// Full + incrementals from a file standing for a snapshot image, with a
    /// model CBT map; restore of every point; verify; corruption found.
    #[test]
    fn backup_restore_cycle() {
        let dir = TempDir::new("cycle");
        let bdir = dir.path().join("backup");
        let img = dir.path().join("image");
        const BS: u32 = 4096;
        let cap: u64 = 64 * 4096 + 1000; // a partial last block
        let geo = Geometry::new(BS.into(), cap);
        let mut data = vec![0u8; cap as usize];
        let mut rng = Rng(0x1234_5678);
        for b in data[..20 * 4096].iter_mut() {
            *b = rng.next() as u8;
        }
        let mut map = vec![1u8; geo.blocks() as usize];
        let generation = 3;
        let mut snap = 1u8;
        let mut snapshots = Vec::new();
        for cycle in 0..4 {
            std::fs::write(&img, &data).unwrap();
            let info = cbt(BS, cap, generation, snap);
            let mut run = BackupRun::begin(&bdir).unwrap();
            let job = run
                .prepare("dev0", &info, false, || Ok(map.clone()))
                .unwrap();
            if cycle == 0 {
                assert_eq!(job.plan, Plan::Full(FullReason::FirstBackup));
                assert_eq!(job.bytes, cap);
            } else {
                assert_eq!(job.plan, Plan::Incremental { since: snap - 1 });
            }
            let expected_blocks = count_blocks(&job.ranges);
            let r = run.copy(&job, DevId::new(1, 0), &img, &|_| {}).unwrap();
            assert_eq!(r.blocks, expected_blocks);
            let results = run.commit().unwrap();
            assert_eq!(results.len(), 1);
            snapshots.push((results[0].seq, data.clone()));

            // Writes after TAKE: random blocks (and the partial last one).
            snap += 1;
            let mut written = std::collections::BTreeSet::new();
            for _ in 0..6 {
                let off = rng.next() % cap;
                let len = (rng.next() % 6000 + 1).min(cap - off);
                for i in off..off + len {
                    data[i as usize] = rng.next() as u8;
                }
                for b in off / 4096..=(off + len - 1) / 4096 {
                    written.insert(b);
                    map[b as usize] = snap;
                }
            }
            if cycle == 2 {
                data[cap as usize - 1] ^= 0xff;
                map[geo.blocks() as usize - 1] = snap;
                written.insert(geo.blocks() - 1);
            }
            // The next incremental copies exactly the written blocks.
            let next = changed_blocks(&map, snap - 1, geo.blocks());
            assert_eq!(count_blocks(&next), written.len() as u64);
        }
        let chain = Chain::load(&bdir).unwrap();
        let dc = chain.device("dev0").unwrap();
        assert_eq!(dc.backups.len(), 4);
        assert_eq!(dc.backups[0].kind, Kind::Full);
        assert!(dc.backups[1..].iter().all(|b| b.kind == Kind::Incremental));
        assert_eq!(dc.snap_number, 4);
        // Full image files are sparse where the image is zero.
        assert_eq!(
            std::fs::metadata(bdir.join(&dc.backups[0].file))
                .unwrap()
                .len(),
            cap
        );

        for (seq, want) in &snapshots {
            let out = dir.path().join(format!("restored-{seq}"));
            let st = restore(&bdir, dc, Some(*seq), &out, &|_| {}).unwrap();
            assert_eq!(st.seq, *seq);
            assert_eq!(st.applied.first(), Some(&1));
            assert_eq!(&std::fs::read(&out).unwrap(), want, "backup {seq}");
            // The restored image matches the recorded hashes of its backup.
            let sums = read_sums(
                &bdir.join(&dc.entry(Some(*seq)).unwrap().sums),
                geo.blocks(),
            )
            .unwrap();
            let f = open_read(&out).unwrap();
            assert_eq!(
                verify_image(&f, &out, geo, &sums, &|_| {}).unwrap(),
                Vec::<u64>::new()
            );
        }
        std::fs::write(&img, &data).unwrap();
        let last = dir.path().join(format!("restored-{}", snapshots[3].0));
        let c = compare(&last, &img, 4096, &|_| {}).unwrap();
        assert!(!c.equal(), "the image changed after the last backup");
        let same = compare(&last, &last, 4096, &|_| {}).unwrap();
        assert!(same.equal());
        assert_eq!(verify_files(&bdir, dc, &|_| {}), vec![]);

        // A flipped byte in an incremental is found, and in a restored image.
        let incr = bdir.join(&dc.backups[2].file);
        let mut raw = std::fs::read(&incr).unwrap();
        let n = raw.len();
        raw[n - 10] ^= 1;
        std::fs::write(&incr, &raw).unwrap();
        let problems = verify_files(&bdir, dc, &|_| {});
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].seq, dc.backups[2].seq);
        let out = dir.path().join("restored-bad");
        restore(&bdir, dc, None, &out, &|_| {}).unwrap();
        let sums = read_sums(&bdir.join(&dc.backups[3].sums), geo.blocks()).unwrap();
        let bad = verify_image(&open_read(&out).unwrap(), &out, geo, &sums, &|_| {}).unwrap();
        assert!(bad.len() <= 1);
        let c = compare(
            &out,
            &dir.path().join(format!("restored-{}", snapshots[3].0)),
            4096,
            &|_| {},
        )
        .unwrap();
        assert!(c.differing_blocks <= 1);
        // A truncated incremental fails to restore.
        std::fs::write(&incr, &raw[..n - 5000]).unwrap();
        assert!(restore(&bdir, dc, None, &out, &|_| {}).is_err());
    }

    #[test]
    fn generation_change_forces_full_and_uncommitted_runs_leave_nothing() {
        let dir = TempDir::new("gen");
        let bdir = dir.path().join("b");
        let img = dir.path().join("image");
        std::fs::write(&img, vec![5u8; 8192]).unwrap();
        let mut run = BackupRun::begin(&bdir).unwrap();
        let job = run
            .prepare("d", &cbt(4096, 8192, 1, 1), false, || unreachable!())
            .unwrap();
        run.copy(&job, DevId::new(1, 0), &img, &|_| {}).unwrap();
        run.commit().unwrap();
        let run = BackupRun::begin(&bdir).unwrap();
        assert_eq!(run.seq(), 2);
        let job = run
            .prepare("d", &cbt(4096, 8192, 2, 1), false, || unreachable!())
            .unwrap();
        assert_eq!(job.plan, Plan::Full(FullReason::GenerationChanged));
        // Not committed: the files it wrote go away with it.
        let mut run = run;
        run.copy(&job, DevId::new(1, 0), &img, &|_| {}).unwrap();
        assert!(bdir.join("d.000002.full").exists());
        drop(run);
        assert!(!bdir.join("d.000002.full").exists());
        assert!(!bdir.join("d.000002.sums").exists());
        assert_eq!(Chain::load(&bdir).unwrap().next_seq, 2);
        // Names are checked.
        let run = BackupRun::begin(&bdir).unwrap();
        assert!(run
            .prepare("../x", &cbt(4096, 8192, 1, 2), false, || unreachable!())
            .is_err());
        assert!(valid_name("ram0") && valid_name("dev-8-1") && !valid_name("a b"));
    }
}
