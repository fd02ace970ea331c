// SPDX-License-Identifier: GPL-2.0
//! `blksnap-fuzz`: issues random and mutated ioctls on /dev/blksnap from
//! several threads, with the module put into every lifecycle state in turn,
//! and checks that every call returns success or a proper errno (and the
//! errno the call must give when that is known), that the module's state
//! stays consistent, and that no call hangs. Prints an errno histogram.
//!
//! Runs as root in the test VM (tests/vm/40-fuzz.sh): it creates and takes
//! snapshots of the devices given with `--dev` and writes random data to
//! them with `--io`. With `--unprivileged` (run without CAP_SYS_ADMIN) every
//! call must fail with EPERM.
//!
//! Exit status: 0 clean, 1 a check failed, 2 bad usage or setup, 3 a call
//! hung.

mod arena;
mod gen;
mod known;
mod lifecycle;
mod rng;
mod stats;

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::io::Write as _;
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::process::ExitCode;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use blksnap::{Errno, SnapshotId, DEFAULT_CONTROL_PATH};
use clap::Parser;
use nix::libc;
use nix::sys::signal::{sigaction, SaFlags, SigAction, SigHandler, SigSet, Signal};

use arena::{Arena, Racy, PAGE};
use gen::{Call, Expect, Gen, Learn};
use known::{Device, Known};
use lifecycle::{Driver, Phase, PHASES};
use rng::Rng;
use stats::{result_name, Stats};

/// Random and mutated ioctls on /dev/blksnap.
#[derive(Parser, Debug)]
#[command(version)]
struct Args {
    /// Seed of the random numbers (the same seed with one thread repeats
    /// the same calls).
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Fuzzed ioctls to issue in all (the lifecycle driver's own calls are
    /// not counted).
    #[arg(long, default_value_t = 100_000)]
    calls: u64,
    /// Threads issuing them at once.
    #[arg(long, default_value_t = 4)]
    threads: usize,
    /// Fuzzed ioctls per batch; the module is put into the next lifecycle
    /// state between batches.
    #[arg(long, default_value_t = 2_000)]
    batch: u64,
    /// A device to take snapshots of (repeat for more); its data is
    /// overwritten with --io.
    #[arg(long = "dev", value_name = "PATH")]
    devs: Vec<String>,
    /// A device for difference storage (repeat for more); its data is lost.
    #[arg(long = "storage", value_name = "PATH")]
    storage: Vec<String>,
    /// Also write the original devices and read the images now and then.
    #[arg(long)]
    io: bool,
    /// Expect EPERM from every call (run without CAP_SYS_ADMIN); no
    /// lifecycle changes.
    #[arg(long)]
    unprivileged: bool,
    /// A snapshot id to aim calls at (with --unprivileged; repeatable).
    #[arg(long = "snapshot", value_name = "UUID")]
    snapshots: Vec<SnapshotId>,
    /// Seconds one call may take before the run counts as hung.
    #[arg(long, default_value_t = 60)]
    hang_secs: u64,
    /// The control device.
    #[arg(long, default_value = DEFAULT_CONTROL_PATH)]
    control: String,
    /// Print every call on stderr before issuing it.
    #[arg(long)]
    trace: bool,
}

/// One raw ioctl: its return value and errno (0 on success).
pub fn raw_ioctl(fd: RawFd, cmd: u32, arg: u64) -> (i64, i32) {
    // SAFETY: the argument is passed as a plain integer; the kernel checks
    // every user address it is given, and whatever it writes lands in
    // memory the fuzzer owns and reads only through its arena.
    let ret = unsafe { libc::ioctl(fd, cmd as libc::c_ulong, arg as libc::c_ulong) };
    if ret < 0 {
        (i64::from(ret), Errno::last_raw())
    } else {
        (i64::from(ret), 0)
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

/// What the watchdog sees of a worker: the call it is in, since when.
#[derive(Default)]
struct Slot {
    /// Milliseconds since the run's start when the call began (+1), 0 when
    /// not in a call.
    since_ms: AtomicU64,
    /// When it was last interrupted with SIGUSR1.
    poked_ms: AtomicU64,
    thread: AtomicU64,
    cmd: AtomicU32,
    arg: AtomicU64,
}

/// A worker: its generator, its open devices, its counts and findings.
struct Worker<'a> {
    index: usize,
    gen: Gen<'a>,
    fd: RawFd,
    originals: Vec<File>,
    stats: Stats,
    violations: Vec<String>,
    recent: VecDeque<String>,
}

/// Most violations kept per worker (the count goes on).
const MAX_VIOLATIONS: usize = 20;
/// Recent calls shown with a violation.
const RECENT: usize = 8;

fn describe(call: &Call) -> String {
    format!(
        "{} cmd={:#010x} arg={:#x} ({}) array={} count={:#x} expect={:?}",
        call.kind.name(),
        call.cmd,
        call.arg,
        call.place,
        call.array,
        call.count,
        call.expect
    )
}

/// Why a call's result is wrong, if it is.
fn check(call: &Call, ret: i64, errno: i32) -> Option<String> {
    if ret < 0 {
        if ret != -1 {
            return Some(format!("returned {ret}"));
        }
        if errno <= 0 || errno >= 512 {
            return Some(format!("kernel-internal or no errno ({errno})"));
        }
        if Errno::from_raw(errno) == Errno::UnknownErrno {
            return Some(format!("unknown errno {errno}"));
        }
    } else if call.cmd == blksnap::uapi::IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP {
        if ret as u64 > call.max_ret {
            return Some(format!("returned {ret}, more than the length asked for"));
        }
    } else if ret != 0 {
        return Some(format!("succeeded with {ret}, not 0"));
    }
    let got = if ret < 0 { errno } else { 0 };
    let ok = match call.expect {
        Expect::Any => true,
        Expect::Ok => got == 0,
        Expect::Errno(e) => got == e as i32,
        Expect::Fails => got != 0,
    };
    (!ok).then(|| format!("got {}", result_name(got)))
}

impl Worker<'_> {
    /// One write to an original device or one read of an image.
    fn io(&mut self) {
        let rng = &mut self.gen.rng;
        if !self.originals.is_empty() && rng.chance(3, 5) {
            let i = rng.index(self.originals.len());
            let dev = self.gen.known.originals[i];
            let off = rng.below((dev.sectors / 8).max(1)) * PAGE as u64;
            // The last read-write page of the arena: page-aligned, as
            // O_DIRECT wants.
            let buf = self
                .gen
                .arena
                .rw()
                .wrapping_add(self.gen.arena.rw_len() - PAGE);
            // SAFETY: `buf` is a page of this worker's arena; the kernel
            // only reads it.
            let ret = unsafe {
                libc::pwrite(self.originals[i].as_raw_fd(), buf.cast(), PAGE, off as i64)
            };
            let errno = if ret < 0 { Errno::last_raw() } else { 0 };
            self.stats.io("write-original", errno);
        } else if let Some(img) = self.gen.known.pick_image(rng) {
            let path = format!("/dev/blksnap-image{}", img.minor);
            let sectors = self.gen.known.originals.first().map_or(8, |d| d.sectors);
            let off = rng.below((sectors / 8).max(1)) * PAGE as u64;
            let errno = match File::open(&path) {
                Err(e) => e.raw_os_error().unwrap_or(0),
                Ok(f) => {
                    let mut buf = [0u8; PAGE];
                    match f.read_at(&mut buf, off) {
                        Ok(_) => 0,
                        Err(e) => e.raw_os_error().unwrap_or(0),
                    }
                }
            };
            self.stats.io("read-image", errno);
        }
    }

    /// Learns ids and images from a successful call.
    fn learn(&mut self, call: &Call) {
        match call.learn {
            Learn::Nothing => {}
            Learn::CreatedId(addr) => {
                let mut id = [0u8; 16];
                if self.gen.arena.read_at(addr, &mut id) {
                    self.gen.known.add_id(id);
                }
            }
            Learn::Images(count_at, array) => {
                let mut c = [0u8; 4];
                if !self.gen.arena.read_at(count_at, &mut c) {
                    return;
                }
                let n = u32::from_ne_bytes(c).min(64) as usize;
                for i in 0..n {
                    let mut e = [0u8; 16];
                    if self.gen.arena.read_at(array + i * 16, &mut e) {
                        let mj = u32::from_ne_bytes([e[8], e[9], e[10], e[11]]);
                        let mn = u32::from_ne_bytes([e[12], e[13], e[14], e[15]]);
                        self.gen.known.add_image(blksnap::DevId::new(mj, mn));
                    }
                }
            }
        }
    }

    /// Issues `n` calls.
    fn run(&mut self, n: u64, slot: &Slot, t0: Instant, opts: &Opts) {
        // SAFETY: pthread_self has no preconditions.
        slot.thread
            .store(unsafe { libc::pthread_self() } as u64, Ordering::Relaxed);
        for _ in 0..n {
            if opts.io && self.gen.rng.chance(1, 40) {
                self.io();
            }
            let mut call = self.gen.call();
            if opts.unprivileged {
                call.expect = Expect::Errno(Errno::EPERM);
                call.learn = Learn::Nothing;
            }
            if opts.trace {
                eprintln!("w{} {}", self.index, describe(&call));
            }
            slot.cmd.store(call.cmd, Ordering::Relaxed);
            slot.arg.store(call.arg, Ordering::Relaxed);
            slot.since_ms
                .store(t0.elapsed().as_millis() as u64 + 1, Ordering::Release);
            let (ret, errno) = raw_ioctl(self.fd, call.cmd, call.arg);
            slot.since_ms.store(0, Ordering::Release);
            self.stats.ioctl(call.kind, errno);
            let line = format!("{} -> {ret} {}", describe(&call), result_name(errno));
            if let Some(why) = check(&call, ret, errno) {
                if self.violations.len() < MAX_VIOLATIONS {
                    let mut v = format!("worker {}: {why}: {line}", self.index);
                    for r in &self.recent {
                        v.push_str(&format!("\n    after: {r}"));
                    }
                    self.violations.push(v);
                } else {
                    self.violations.push(String::new());
                }
            }
            if ret >= 0 {
                self.learn(&call);
            }
            if self.recent.len() == RECENT {
                self.recent.pop_front();
            }
            self.recent.push_back(line);
        }
    }
}

/// The options the workers need.
struct Opts {
    io: bool,
    unprivileged: bool,
    trace: bool,
}

/// Runs one batch on every worker at once while watching for calls that
/// block: they get SIGUSR1 (WAIT_EVENT then fails with EINTR); one stuck
/// for `hang` ends the run.
fn run_batch(workers: &mut [Worker<'_>], slots: &[Slot], n: u64, hang: Duration, opts: &Opts) {
    let t0 = Instant::now();
    let done = AtomicUsize::new(0);
    let per = n / workers.len() as u64;
    let extra = n % workers.len() as u64;
    std::thread::scope(|s| {
        for (i, (w, slot)) in workers.iter_mut().zip(slots).enumerate() {
            let count = per + u64::from((i as u64) < extra);
            let done = &done;
            s.spawn(move || {
                w.run(count, slot, t0, opts);
                done.fetch_add(1, Ordering::Release);
            });
        }
        while done.load(Ordering::Acquire) < slots.len() {
            std::thread::sleep(Duration::from_millis(20));
            let now = t0.elapsed().as_millis() as u64 + 1;
            for (i, slot) in slots.iter().enumerate() {
                let since = slot.since_ms.load(Ordering::Acquire);
                if since == 0 {
                    continue;
                }
                let busy = now.saturating_sub(since);
                if busy > hang.as_millis() as u64 {
                    println!(
                        "HANG: worker {i} has been in ioctl cmd={:#010x} arg={:#x} for {} s",
                        slot.cmd.load(Ordering::Relaxed),
                        slot.arg.load(Ordering::Relaxed),
                        busy / 1000
                    );
                    let _ = std::io::stdout().flush();
                    std::process::exit(3);
                }
                let poked = slot.poked_ms.load(Ordering::Relaxed);
                if busy > 100 && now.saturating_sub(poked) > 100 {
                    slot.poked_ms.store(now, Ordering::Relaxed);
                    let t = slot.thread.load(Ordering::Relaxed) as libc::pthread_t;
                    // SAFETY: the thread is alive: it is inside `run`, which
                    // it leaves only after clearing `since_ms`; a signal
                    // landing just after that is harmless (no-op handler).
                    unsafe { libc::pthread_kill(t, libc::SIGUSR1) };
                }
            }
        }
    });
}

fn setup(args: &Args) -> Result<(Known, Vec<String>), String> {
    let originals: Vec<Device> = args
        .devs
        .iter()
        .map(|p| Device::of_path(p))
        .collect::<Result<_, _>>()?;
    let storage: Vec<Device> = args
        .storage
        .iter()
        .map(|p| Device::of_path(p))
        .collect::<Result<_, _>>()?;
    if args.threads == 0 || args.batch == 0 {
        return Err("--threads and --batch must be at least 1".into());
    }
    let known = Known::new(originals, storage);
    for id in &args.snapshots {
        known.add_id(*id.as_bytes());
    }
    // A no-op handler without SA_RESTART: a blocked call returns EINTR.
    let action = SigAction::new(
        SigHandler::Handler(on_sigusr1),
        SaFlags::empty(),
        SigSet::empty(),
    );
    // SAFETY: the handler does nothing, so it is async-signal-safe.
    unsafe { sigaction(Signal::SIGUSR1, &action) }.map_err(|e| format!("sigaction: {e}"))?;
    Ok((known, Vec::new()))
}

fn main() -> ExitCode {
    let args = Args::parse();
    let (known, mut problems) = match setup(&args) {
        Ok(k) => k,
        Err(e) => {
            eprintln!("blksnap-fuzz: {e}");
            return ExitCode::from(2);
        }
    };
    let racy = match Racy::new(4) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("blksnap-fuzz: mmap: {e}");
            return ExitCode::from(2);
        }
    };
    let ctl = match OpenOptions::new()
        .read(true)
        .write(true)
        .open(&args.control)
    {
        Ok(f) => f,
        Err(e) => {
            eprintln!("blksnap-fuzz: {}: {e}", args.control);
            return ExitCode::from(2);
        }
    };
    let driver = if args.unprivileged {
        None
    } else {
        match Driver::new(&args.control, &known) {
            Ok(d) => Some(d),
            Err(e) => {
                eprintln!("blksnap-fuzz: {e}");
                return ExitCode::from(2);
            }
        }
    };
    let mut master = Rng::new(args.seed);
    let mut workers = Vec::with_capacity(args.threads);
    for index in 0..args.threads {
        let arena = match Arena::new(8) {
            Ok(a) => a,
            Err(e) => {
                eprintln!("blksnap-fuzz: mmap: {e}");
                return ExitCode::from(2);
            }
        };
        let mut originals = Vec::new();
        if args.io && !args.unprivileged {
            for p in &args.devs {
                match OpenOptions::new()
                    .write(true)
                    .custom_flags(libc::O_DIRECT)
                    .open(p)
                {
                    Ok(f) => originals.push(f),
                    Err(e) => {
                        eprintln!("blksnap-fuzz: {p}: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
        }
        workers.push(Worker {
            index,
            gen: Gen {
                rng: master.fork(index as u64),
                arena,
                racy: &racy,
                known: &known,
            },
            fd: ctl.as_raw_fd(),
            originals,
            stats: Stats::default(),
            violations: Vec::new(),
            recent: VecDeque::new(),
        });
    }
    let mut probe_arena = match Arena::new(2) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("blksnap-fuzz: mmap: {e}");
            return ExitCode::from(2);
        }
    };
    let slots: Vec<Slot> = (0..args.threads).map(|_| Slot::default()).collect();
    let opts = Opts {
        io: args.io,
        unprivileged: args.unprivileged,
        trace: args.trace,
    };
    println!(
        "blksnap-fuzz: seed={} calls={} threads={} batch={} io={} mode={} devices={} storage={}",
        args.seed,
        args.calls,
        args.threads,
        args.batch,
        args.io,
        if args.unprivileged {
            "unprivileged"
        } else {
            "privileged"
        },
        known.originals.len(),
        known.storage.len()
    );
    let start = Instant::now();
    let mut issued = 0u64;
    let mut batches = 0u64;
    let mut probes = 0u64;
    let mut phase_batches = [0u64; PHASES.len()];
    let mut order: Vec<Phase> = PHASES.to_vec();
    while issued < args.calls {
        let slot = (batches % PHASES.len() as u64) as usize;
        if slot == 0 {
            // A new cycle through the phases, in a random order.
            for i in (1..order.len()).rev() {
                order.swap(i, master.index(i + 1));
            }
        }
        let phase = order[slot];
        if let Some(d) = &driver {
            if let Err(e) = d.enter(phase) {
                problems.push(format!("entering {phase:?}: {e}"));
                break;
            }
        }
        let n = args.batch.min(args.calls - issued);
        run_batch(
            &mut workers,
            &slots,
            n,
            Duration::from_secs(args.hang_secs),
            &opts,
        );
        issued += n;
        batches += 1;
        phase_batches[PHASES.iter().position(|p| *p == phase).unwrap_or(0)] += 1;
        if let Some(d) = &driver {
            for p in d.check() {
                problems.push(format!("after a batch in {phase:?}: {p}"));
            }
            if let Some(p) = d.probe_create_readonly(&mut probe_arena) {
                problems.push(format!("probe in {phase:?}: {p}"));
            }
            probes += 1;
        }
        if problems.len() > 50 {
            break;
        }
    }
    let secs = start.elapsed().as_secs_f64();
    if let Some(d) = &driver {
        if let Err(e) = d.reset() {
            problems.push(format!("final reset: {e}"));
        }
        let left = lifecycle::image_nodes();
        if !left.is_empty() {
            problems.push(format!(
                "image nodes left after destroying every snapshot: {left:?}"
            ));
        }
    }
    let mut stats = Stats::default();
    let mut violations = 0usize;
    for w in &workers {
        stats.merge(&w.stats);
        violations += w.violations.len();
        for v in w.violations.iter().filter(|v| !v.is_empty()) {
            println!("VIOLATION: {v}");
        }
    }
    for p in &problems {
        println!("PROBLEM: {p}");
    }
    let calls = stats.calls();
    println!(
        "calls={calls} seconds={secs:.1} calls_per_second={:.0} batches={batches} probes={probes} io={} violations={violations} problems={}",
        calls as f64 / secs.max(1e-9),
        stats.ios(),
        problems.len()
    );
    if driver.is_some() {
        println!(
            "phases (batches): {}",
            PHASES
                .iter()
                .zip(phase_batches)
                .map(|(p, n)| format!("{p:?}={n}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
    print!("{}", stats.report());
    if violations > 0 || !problems.is_empty() {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    }
}
