// SPDX-License-Identifier: GPL-2.0
//! Counting results: per kind of call, how many succeeded and how many
//! failed with each errno; the same for the block I/O mixed in.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use blksnap::Errno;

use crate::gen::Kind;

/// The name of a result: `OK` for success, else the errno's name.
pub fn result_name(errno: i32) -> String {
    if errno == 0 {
        return "OK".into();
    }
    match Errno::from_raw(errno) {
        Errno::UnknownErrno => format!("errno{errno}"),
        e => format!("{e:?}"),
    }
}

/// Result counts.
#[derive(Debug, Default)]
pub struct Stats {
    /// Ioctls by kind and result (0 for success, else the errno).
    pub ioctls: BTreeMap<(Kind, i32), u64>,
    /// Block I/O by operation and result.
    pub io: BTreeMap<(&'static str, i32), u64>,
}

impl Stats {
    /// Counts an ioctl.
    pub fn ioctl(&mut self, kind: Kind, errno: i32) {
        *self.ioctls.entry((kind, errno)).or_default() += 1;
    }

    /// Counts a block I/O.
    pub fn io(&mut self, op: &'static str, errno: i32) {
        *self.io.entry((op, errno)).or_default() += 1;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Stats) {
        for (k, v) in &other.ioctls {
            *self.ioctls.entry(*k).or_default() += v;
        }
        for (k, v) in &other.io {
            *self.io.entry(*k).or_default() += v;
        }
    }

    /// Ioctls counted.
    pub fn calls(&self) -> u64 {
        self.ioctls.values().sum()
    }

    /// Block I/Os counted.
    pub fn ios(&self) -> u64 {
        self.io.values().sum()
    }

    /// The report: the overall histogram, then one line per kind of call
    /// and per I/O operation.
    pub fn report(&self) -> String {
        let mut out = String::new();
        let mut total: BTreeMap<i32, u64> = BTreeMap::new();
        for ((_, e), n) in &self.ioctls {
            *total.entry(*e).or_default() += n;
        }
        let _ = writeln!(out, "errno histogram: {}", histogram(total.into_iter()));
        let mut kinds: Vec<Kind> = self.ioctls.keys().map(|(k, _)| *k).collect();
        kinds.dedup();
        for kind in kinds {
            let line = histogram(
                self.ioctls
                    .iter()
                    .filter(|((k, _), _)| *k == kind)
                    .map(|((_, e), n)| (*e, *n)),
            );
            let _ = writeln!(out, "  {:<26} {line}", kind.name());
        }
        let mut ops: Vec<&str> = self.io.keys().map(|(op, _)| *op).collect();
        ops.dedup();
        for op in ops {
            let line = histogram(
                self.io
                    .iter()
                    .filter(|((o, _), _)| *o == op)
                    .map(|((_, e), n)| (*e, *n)),
            );
            let _ = writeln!(out, "  io {op:<23} {line}");
        }
        out
    }
}

/// "NAME=COUNT ..." with the most frequent first.
fn histogram(counts: impl Iterator<Item = (i32, u64)>) -> String {
    let mut v: Vec<(i32, u64)> = counts.collect();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    v.iter()
        .map(|(e, n)| format!("{}={n}", result_name(*e)))
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_report() {
        assert_eq!(result_name(0), "OK");
        assert_eq!(result_name(14), "EFAULT");
        assert_eq!(result_name(512), "errno512");
        let mut s = Stats::default();
        s.ioctl(Kind::Cmd(0), 0);
        s.ioctl(Kind::Cmd(0), 14);
        s.ioctl(Kind::Cmd(0), 14);
        s.io("write", 0);
        assert_eq!(s.calls(), 3);
        let r = s.report();
        assert!(r.contains("errno histogram: EFAULT=2 OK=1"), "{r}");
        assert!(r.contains("VERSION"), "{r}");
        assert!(r.contains("io write"), "{r}");
    }
}
