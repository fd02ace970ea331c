// SPDX-License-Identifier: GPL-2.0
//! The metadata of a backup directory (`chain.json`): the backups of each
//! device, the CBT state the next one starts from, what the next one is
//! ([`Plan`]), and the names the devices' files get.

use std::fmt;
use std::fs::File;
use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use super::{backup_err, Geometry, FORMAT};
use crate::error::{io_err, Result};
use crate::types::{CbtInfo, DevId};

/// The metadata file of a backup directory.
pub const CHAIN_FILE: &str = "chain.json";

/// The kind of a backup.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// The whole image.
    Full,
    /// The blocks changed since the previous backup.
    Incremental,
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Kind::Full => "full",
            Kind::Incremental => "incremental",
        })
    }
}

/// One backup of one device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BackupEntry {
    /// The backup number (shared by the devices backed up together).
    pub seq: u64,
    /// Full or incremental.
    pub kind: Kind,
    /// The data file, relative to the backup directory.
    pub file: String,
    /// The block hashes file, relative to the backup directory.
    pub sums: String,
    /// When it was made (seconds since the epoch).
    pub time: u64,
    /// The CBT generation at this backup.
    pub generation_id: Uuid,
    /// The CBT snapshot number of the snapshot this backup was read from.
    pub snap_number: u8,
    /// For an incremental: the `snap_number` it counts changes from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since_snap_number: Option<u8>,
    /// Tracking blocks copied.
    pub blocks: u64,
    /// Bytes of data copied.
    pub bytes: u64,
}

/// The backups of one device and the CBT state of the last one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceChain {
    /// The device's name (see [`device_name`]).
    pub name: String,
    /// Its `MAJOR:MINOR` at the last backup.
    pub dev_id: String,
    /// The CBT block size in bytes.
    pub block_size: u32,
    /// The device capacity in bytes.
    pub capacity: u64,
    /// The CBT generation at the last backup.
    pub generation_id: Uuid,
    /// The CBT snapshot number of the last backup.
    pub snap_number: u8,
    /// Every backup, oldest first.
    pub backups: Vec<BackupEntry>,
}

impl DeviceChain {
    /// The geometry of the device's images.
    pub fn geometry(&self) -> Geometry {
        Geometry::new(self.block_size.into(), self.capacity)
    }

    /// The backups to apply, in order, to rebuild the image as of backup
    /// `seq` (the last one if `None`): the last full backup up to it and
    /// the incrementals after that.
    pub fn restore_chain(
        &self,
        seq: Option<u64>,
    ) -> std::result::Result<Vec<&BackupEntry>, String> {
        let upto: Vec<&BackupEntry> = match seq {
            None => self.backups.iter().collect(),
            Some(seq) => {
                if !self.backups.iter().any(|b| b.seq == seq) {
                    return Err(format!("device {} has no backup number {seq}", self.name));
                }
                self.backups.iter().filter(|b| b.seq <= seq).collect()
            }
        };
        let start = upto
            .iter()
            .rposition(|b| b.kind == Kind::Full)
            .ok_or_else(|| format!("device {} has no full backup", self.name))?;
        Ok(upto[start..].to_vec())
    }

    /// The entry of backup `seq`, or the last one.
    pub fn entry(&self, seq: Option<u64>) -> Option<&BackupEntry> {
        match seq {
            None => self.backups.last(),
            Some(seq) => self.backups.iter().find(|b| b.seq == seq),
        }
    }
}

/// Why a backup must be full.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FullReason {
    /// The device has no backup yet.
    FirstBackup,
    /// A full backup was asked for.
    Requested,
    /// The CBT generation changed: the change history is lost (tracker
    /// removed or recreated, module reloaded, device resized, or the 255
    /// snapshots of a generation used up).
    GenerationChanged,
    /// The CBT block size or the capacity changed.
    GeometryChanged,
}

impl fmt::Display for FullReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            FullReason::FirstBackup => "first_backup",
            FullReason::Requested => "requested",
            FullReason::GenerationChanged => "generation_changed",
            FullReason::GeometryChanged => "geometry_changed",
        })
    }
}

/// What the next backup of a device is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    /// The whole image.
    Full(FullReason),
    /// The blocks whose CBT byte is greater than `since`.
    Incremental {
        /// The `snap_number` of the previous backup.
        since: u8,
    },
}

/// The metadata of a backup directory (`chain.json`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Chain {
    /// [`FORMAT`].
    pub format: u32,
    /// The number the next backup gets.
    pub next_seq: u64,
    /// The devices.
    pub devices: Vec<DeviceChain>,
}

impl Default for Chain {
    fn default() -> Self {
        Chain {
            format: FORMAT,
            next_seq: 1,
            devices: Vec::new(),
        }
    }
}

impl Chain {
    /// Reads `dir/chain.json`; an empty chain when there is none.
    pub fn load(dir: &Path) -> Result<Chain> {
        let path = dir.join(CHAIN_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Chain::default()),
            Err(e) => return Err(io_err("read", &path, &e)),
        };
        Chain::parse(&text).map_err(|reason| backup_err(&path, reason))
    }

    /// Parses the text of a `chain.json`.
    pub fn parse(text: &str) -> std::result::Result<Chain, String> {
        let chain: Chain =
            serde_json::from_str(text).map_err(|e| format!("bad backup metadata: {e}"))?;
        if chain.format != FORMAT {
            return Err(format!(
                "backup metadata format {} is not supported (this tool reads {FORMAT})",
                chain.format
            ));
        }
        Ok(chain)
    }

    /// Writes `dir/chain.json` atomically (a temporary file, fsync, rename).
    pub fn save(&self, dir: &Path) -> Result<()> {
        let path = dir.join(CHAIN_FILE);
        let tmp = dir.join(format!("{CHAIN_FILE}.tmp"));
        let mut text = serde_json::to_string_pretty(self).expect("chain serializes");
        text.push('\n');
        let mut f = File::create(&tmp).map_err(|e| io_err("create", &tmp, &e))?;
        f.write_all(text.as_bytes())
            .and_then(|()| f.sync_all())
            .map_err(|e| io_err("write", &tmp, &e))?;
        std::fs::rename(&tmp, &path).map_err(|e| io_err("rename", &tmp, &e))?;
        if let Ok(d) = File::open(dir) {
            let _ = d.sync_all();
        }
        Ok(())
    }

    /// The chain of the device named `name`.
    pub fn device(&self, name: &str) -> Option<&DeviceChain> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// What the next backup of `name` is, given the device's CBT state
    /// now (read after TAKE) and whether a full one is asked for.
    pub fn plan(&self, name: &str, cbt: &CbtInfo, force_full: bool) -> Plan {
        if force_full {
            return Plan::Full(FullReason::Requested);
        }
        let Some(dc) = self.device(name).filter(|d| !d.backups.is_empty()) else {
            return Plan::Full(FullReason::FirstBackup);
        };
        if dc.generation_id != cbt.generation_id {
            return Plan::Full(FullReason::GenerationChanged);
        }
        if dc.block_size != cbt.block_size || dc.capacity != cbt.device_capacity {
            return Plan::Full(FullReason::GeometryChanged);
        }
        Plan::Incremental {
            since: dc.snap_number,
        }
    }

    /// Records a finished backup of `name` and its CBT state.
    pub fn record(&mut self, name: &str, dev: DevId, cbt: &CbtInfo, entry: BackupEntry) {
        let idx = match self.devices.iter().position(|d| d.name == name) {
            Some(i) => i,
            None => {
                self.devices.push(DeviceChain {
                    name: name.to_string(),
                    dev_id: String::new(),
                    block_size: 0,
                    capacity: 0,
                    generation_id: Uuid::nil(),
                    snap_number: 0,
                    backups: Vec::new(),
                });
                self.devices.len() - 1
            }
        };
        let dc = &mut self.devices[idx];
        dc.dev_id = dev.to_string();
        dc.block_size = cbt.block_size;
        dc.capacity = cbt.device_capacity;
        dc.generation_id = cbt.generation_id;
        dc.snap_number = cbt.snap_number;
        self.next_seq = self.next_seq.max(entry.seq + 1);
        dc.backups.push(entry);
    }
}

/// The name a device's files get: its kernel name (`DEVNAME` of
/// `/sys/dev/block/MAJOR:MINOR/uevent`, `/` replaced by `_`), or
/// `dev-MAJOR-MINOR`.
pub fn device_name(dev: DevId) -> String {
    let uevent =
        std::fs::read_to_string(format!("/sys/dev/block/{dev}/uevent")).unwrap_or_default();
    uevent
        .lines()
        .find_map(|l| l.strip_prefix("DEVNAME="))
        .filter(|n| valid_name(n))
        .map(|n| n.replace('/', "_"))
        .unwrap_or_else(|| format!("dev-{}-{}", dev.major, dev.minor))
}

/// Whether `name` is usable as a device name in a backup directory.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./".contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backup::tests::cbt;
    use crate::testutil::TempDir;

    #[test]
    fn plans() {
        let mut chain = Chain::default();
        let now = cbt(65536, 1 << 20, 1, 3);
        assert_eq!(
            chain.plan("ram0", &now, false),
            Plan::Full(FullReason::FirstBackup)
        );
        let entry = |seq, kind| BackupEntry {
            seq,
            kind,
            file: format!("ram0.{seq}"),
            sums: format!("ram0.{seq}.sums"),
            time: 0,
            generation_id: now.generation_id,
            snap_number: now.snap_number,
            since_snap_number: None,
            blocks: 0,
            bytes: 0,
        };
        chain.record("ram0", DevId::new(1, 0), &now, entry(1, Kind::Full));
        assert_eq!(chain.next_seq, 2);
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 1 << 20, 1, 4), false),
            Plan::Incremental { since: 3 }
        );
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 1 << 20, 1, 4), true),
            Plan::Full(FullReason::Requested)
        );
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 1 << 20, 2, 1), false),
            Plan::Full(FullReason::GenerationChanged)
        );
        assert_eq!(
            chain.plan("ram0", &cbt(65536, 2 << 20, 1, 4), false),
            Plan::Full(FullReason::GeometryChanged)
        );
        assert_eq!(
            chain.plan("ram0", &cbt(4096, 1 << 20, 1, 4), false),
            Plan::Full(FullReason::GeometryChanged)
        );
        assert_eq!(
            chain.plan("ram1", &now, false),
            Plan::Full(FullReason::FirstBackup)
        );

        // Restore chains: the last full one and what follows.
        chain.record("ram0", DevId::new(1, 0), &now, entry(2, Kind::Incremental));
        chain.record("ram0", DevId::new(1, 0), &now, entry(3, Kind::Full));
        chain.record("ram0", DevId::new(1, 0), &now, entry(5, Kind::Incremental));
        let dc = chain.device("ram0").unwrap();
        let seqs = |s| {
            dc.restore_chain(s)
                .unwrap()
                .iter()
                .map(|e| e.seq)
                .collect::<Vec<_>>()
        };
        assert_eq!(seqs(None), vec![3, 5]);
        assert_eq!(seqs(Some(2)), vec![1, 2]);
        assert_eq!(seqs(Some(1)), vec![1]);
        assert_eq!(seqs(Some(3)), vec![3]);
        assert!(dc.restore_chain(Some(4)).is_err());
        assert_eq!(chain.next_seq, 6);

        // Save and load round trip, and the format check.
        let text = serde_json::to_string(&chain).unwrap();
        assert_eq!(Chain::parse(&text).unwrap(), chain);
        assert!(text.contains("\"kind\":\"incremental\""));
        let bad = text.replace("\"format\":1", "\"format\":9");
        assert!(Chain::parse(&bad).unwrap_err().contains("format 9"));
        assert!(Chain::parse("{").is_err());
        let dir = TempDir::new("chain");
        assert_eq!(Chain::load(dir.path()).unwrap(), Chain::default());
        chain.save(dir.path()).unwrap();
        assert_eq!(Chain::load(dir.path()).unwrap(), chain);
    }

    #[test]
    fn names_of_devices() {
        // A device number nobody has.
        assert_eq!(device_name(DevId::new(4095, 1048575)), "dev-4095-1048575");
    }
}
