//! The parts of the blksnap kernel module that need no kernel types, built on
//! the host so `cargo test` can cover them exhaustively. The sources live in
//! the module's tree (`src/`); this crate only includes them.

#![cfg_attr(not(test), no_std)]

#[path = "../../../src/sys/sectors.rs"]
pub mod sectors;

/// The boundary's plain-data types the logic uses, where the module has them.
pub mod sys {
    pub use super::sectors;
}

#[path = "../../../src/params.rs"]
pub mod params;

#[path = "../../../src/cbt_map.rs"]
pub mod cbt_map;

#[path = "../../../src/chunk_bits.rs"]
pub mod chunk_bits;

#[path = "../../../src/chunk_map.rs"]
pub mod chunk_map;

#[path = "../../../src/chunk_geometry.rs"]
pub mod chunk_geometry;

#[path = "../../../src/ring.rs"]
pub mod ring;

#[path = "../../../src/minors.rs"]
pub mod minors;

#[path = "../../../src/diff_storage.rs"]
pub mod diff_storage;
