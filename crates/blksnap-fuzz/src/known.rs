// SPDX-License-Identifier: GPL-2.0
//! What the workers know about the module's state, to aim some of their
//! calls at real objects: the original and storage devices given on the
//! command line, snapshot ids seen (live or destroyed), and image devices.

use std::sync::Mutex;

use blksnap::DevId;

use crate::rng::Rng;

/// Most snapshot ids remembered (the oldest are forgotten first).
const MAX_IDS: usize = 64;

/// A block device the fuzzer may use.
#[derive(Clone, Copy, Debug)]
pub struct Device {
    /// Its device number.
    pub id: DevId,
    /// Its size in 512-byte sectors.
    pub sectors: u64,
}

impl Device {
    /// The device at `path` and its size (from sysfs).
    pub fn of_path(path: &str) -> Result<Self, String> {
        let id = DevId::of_path(path).map_err(|e| format!("{path}: {e}"))?;
        let size = format!("/sys/dev/block/{}:{}/size", id.major, id.minor);
        let sectors = std::fs::read_to_string(&size)
            .map_err(|e| format!("{size}: {e}"))?
            .trim()
            .parse()
            .map_err(|e| format!("{size}: {e}"))?;
        Ok(Device { id, sectors })
    }
}

/// Shared knowledge of the workers and the lifecycle driver.
#[derive(Debug, Default)]
pub struct Known {
    /// Devices snapshots are made of.
    pub originals: Vec<Device>,
    /// Devices difference storage is taken from.
    pub storage: Vec<Device>,
    ids: Mutex<Vec<[u8; 16]>>,
    images: Mutex<Vec<DevId>>,
}

impl Known {
    /// Knowledge of these devices and nothing else yet.
    pub fn new(originals: Vec<Device>, storage: Vec<Device>) -> Self {
        Known {
            originals,
            storage,
            ..Default::default()
        }
    }

    /// Remembers a snapshot id.
    pub fn add_id(&self, id: [u8; 16]) {
        let mut ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        if ids.contains(&id) {
            return;
        }
        if ids.len() >= MAX_IDS {
            ids.remove(0);
        }
        ids.push(id);
    }

    /// A remembered snapshot id, if any.
    pub fn pick_id(&self, rng: &mut Rng) -> Option<[u8; 16]> {
        let ids = self.ids.lock().unwrap_or_else(|e| e.into_inner());
        (!ids.is_empty()).then(|| *rng.pick(&ids))
    }

    /// Remembers an image device.
    pub fn add_image(&self, dev: DevId) {
        let mut images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        if !images.contains(&dev) {
            images.push(dev);
        }
    }

    /// Replaces the image devices (by the lifecycle driver).
    pub fn set_images(&self, devs: Vec<DevId>) {
        *self.images.lock().unwrap_or_else(|e| e.into_inner()) = devs;
    }

    /// A remembered image device, if any.
    pub fn pick_image(&self, rng: &mut Rng) -> Option<DevId> {
        let images = self.images.lock().unwrap_or_else(|e| e.into_inner());
        (!images.is_empty()).then(|| *rng.pick(&images))
    }
}
