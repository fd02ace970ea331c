#!/usr/bin/python3
"""Sector-stamp checker for blksnap snapshots (copy-on-write and images).

Every 512-byte sector is stamped with (device tag, LBA, generation, writer,
sequence number) and a CRC32, so that any sector read back says where it came
from. The checker fills devices with generation-0 stamps, takes a snapshot,
lets several writer threads rewrite the originals with newer stamps (random
sizes and offsets, many of them on or across chunk boundaries), and requires:

  * every image sector to hold exactly the stamp its original had at TAKE,
    while the writers run and after they stop (O_DIRECT reads);
  * every original sector to hold exactly the newest stamp written to it
    (tracked in memory); with --io-errors (faults injected on the originals)
    a write that fails leaves each of its sectors holding either what it
    held before or what the write carried, and the first read of such a
    sector settles which (after that the model is exact again);
  * difference storage never to spill outside its ranges, and (with
    --check-storage) the storage ranges to hold only copies of data that was
    on an original at TAKE (or image writes), never writer data.

Mismatches are reported as "FAIL ..." lines naming the device, the LBAs and
the expected and found stamps. Standard library only.

    stamp.py fill DEV[=TAG]... [--range S:C]...
        writes generation-0 stamps (all of each DEV, or the ranges)
    stamp.py check-fill DEV[=TAG] [--range S:C]... [--exclude S:C]...
        checks that the sectors still hold their generation-0 stamps
    stamp.py chunk DEV
        prints the copy-on-write chunk size of DEV (module parameters, size)
    stamp.py fiemap FILE
        prints the file's physical extents as START:COUNT sector lines
    stamp.py read-loop DEV --seconds S [--delay S] [--stop-file PATH] [--buffered]
        opens DEV (prints "open size=BYTES"), reads 64 KiB pieces of it over
        and over, then prints "reads_ok=N reads_failed=N first_errno=NAME
        ok_after_fail=N last=ok|NAME" (NAME is an errno name, or EOF or SHORT
        for a read that returned nothing or less than asked: a deleted disk
        has no sectors any more)
    stamp.py run --dev DEV[=TAG]... [options]
        the whole check; see --help. Exit 0 if everything held, 1 if not.

DEV is a block device path; TAG (at most 16 characters) defaults to its base
name. S:C are sector ranges (start:count). Sizes are in 512-byte sectors.
"""

import argparse
import contextlib
import ctypes
import errno
import faulthandler
import fcntl
import itertools
import mmap
import os
import random
import stat
import struct
import subprocess
import sys
import threading
import time
import zlib

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bsctl  # noqa: E402  (the raw-ioctl library next to this file)

SECTOR = 512
MAGIC = b"BSSTAMP\x01"
HDR = struct.Struct("<8s16sQIIQ")  # magic, tag, lba, generation, writer, sequence
CRC = struct.Struct("<I")
HDR_LEN = HDR.size  # 48
FILLER = bytes((i * 37 + 11) & 0xFF for i in range(SECTOR - HDR_LEN - CRC.size))
TEMPLATE = bytes(HDR_LEN) + FILLER + bytes(CRC.size)
ZERO_SECTOR = bytes(SECTOR)
# Read buffers are filled with this before each read, so that a read that
# claims success without transferring data shows up as such.
POISON_SECTOR = b"BSPOISON" * (SECTOR // 8)

GEN_FILL = 0
GEN_WRITE = 1
GEN_IMAGE = 2

IOCTL_SNAPSHOT_COLLECT_IMAGES = 0x4020560A
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
PARAMS = "/sys/module/blksnap/parameters"

T0 = time.monotonic()


def log(msg):
    print(f"[{time.monotonic() - T0:7.2f}] {msg}", flush=True)


# ------------------------------------------------------------------ stamps


def stamps(tagb, lba, n, gen, wid=0, seq=0):
    """n consecutive stamped sectors starting at lba."""
    out = bytearray(TEMPLATE * n)
    mv = memoryview(out)
    pack, cpack, crc = HDR.pack_into, CRC.pack_into, zlib.crc32
    o = 0
    for i in range(lba, lba + n):
        pack(out, o, MAGIC, tagb, i, gen, wid, seq)
        cpack(out, o + 508, crc(mv[o:o + 508]))
        o += SECTOR
    return out


def describe(sec):
    """What a sector holds, in words."""
    sec = bytes(sec)
    if sec == ZERO_SECTOR:
        return "[zeroes]"
    if sec == POISON_SECTOR:
        return "[untouched read buffer: the read reported success without data]"
    if sec[:8] != MAGIC:
        return f"[not a stamp: {sec[:24].hex()}...]"
    _, tag, lba, gen, wid, seq = HDR.unpack_from(sec)
    ok = zlib.crc32(sec[:508]) == CRC.unpack_from(sec, 508)[0]
    fill_ok = sec[HDR_LEN:508] == FILLER
    s = f"[{tag.rstrip(bytes(1)).decode(errors='replace')} lba={lba} gen={gen} w={wid} seq={seq}"
    if not ok:
        s += " BAD-CRC"
    if not fill_ok:
        s += " BAD-FILLER"
    return s + "]"


def parse_stamp(sec):
    """(tag, lba, gen, wid, seq) of a valid stamp, else None."""
    if sec[:8] != MAGIC or zlib.crc32(sec[:508]) != CRC.unpack_from(sec, 508)[0]:
        return None
    _, tag, lba, gen, wid, seq = HDR.unpack_from(sec)
    return tag, lba, gen, wid, seq


class Report:
    """Failures, printed as they come (bounded), and counted."""

    def __init__(self, limit=60):
        self.lock = threading.Lock()
        self.failures = 0
        self.limit = limit
        self.printed = 0

    def fail(self, msg):
        with self.lock:
            self.failures += 1
            if self.printed < self.limit:
                self.printed += 1
                log("FAIL " + msg)
            elif self.printed == self.limit:
                self.printed += 1
                log("FAIL (more failures follow, not printed)")

    def compare(self, what, lba, got, exp, max_runs=4):
        """Compares sectors read at lba with the expected ones; reports the
        mismatching runs. True if equal."""
        if got == exp:
            return True
        n = min(len(got), len(exp)) // SECTOR
        gm, em = memoryview(got), memoryview(exp)
        runs = []
        i = 0
        bad = 0
        while i < n:
            o = i * SECTOR
            if gm[o:o + SECTOR] == em[o:o + SECTOR]:
                i += 1
                continue
            j = i
            while j < n and gm[j * SECTOR:(j + 1) * SECTOR] != em[j * SECTOR:(j + 1) * SECTOR]:
                j += 1
            runs.append((i, j))
            bad += j - i
            i = j
        for a, b in runs[:max_runs]:
            o = a * SECTOR
            self.fail(f"{what}: LBA {lba + a}..{lba + b - 1} ({b - a} sectors) differ; "
                      f"first: expected {describe(em[o:o + SECTOR])} "
                      f"found {describe(gm[o:o + SECTOR])}")
        if len(runs) > max_runs:
            self.fail(f"{what}: {len(runs) - max_runs} more differing runs "
                      f"({bad} differing sectors in LBA {lba}..{lba + n - 1})")
        if len(got) != len(exp):
            self.fail(f"{what}: short read at LBA {lba}: {len(got)} bytes, expected {len(exp)}")
        return False


# ------------------------------------------------------------------ devices


class AlignedBuf:
    """A page-aligned buffer for O_DIRECT I/O."""

    def __init__(self, size):
        self.size = (size + 4095) & ~4095
        self.m = mmap.mmap(-1, self.size)
        self.mv = memoryview(self.m)
        self.poison = POISON_SECTOR * (self.size // SECTOR)

    def pread(self, fd, sectors, lba):
        n = sectors * SECTOR
        self.mv[:n] = self.poison[:n]
        got = os.preadv(fd, [self.mv[:n]], lba * SECTOR)
        return bytes(self.mv[:got])

    def pwrite(self, fd, data, lba):
        n = len(data)
        self.mv[:n] = data
        done = os.pwrite(fd, self.mv[:n], lba * SECTOR)
        if done != n:
            raise OSError(errno.EIO, f"short write: {done} of {n} bytes")


def dev_sysfs(path):
    st = os.stat(path)
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{path} is not a block device")
    mj, mn = os.major(st.st_rdev), os.minor(st.st_rdev)
    return (mj, mn), os.path.realpath(f"/sys/dev/block/{mj}:{mn}")


def read_int(path, default=None):
    try:
        with open(path) as f:
            return int(f.read().strip())
    except OSError:
        return default


def param(name):
    v = read_int(f"{PARAMS}/{name}")
    if v is None:
        raise RuntimeError(f"cannot read {PARAMS}/{name} (is blksnap loaded?)")
    return v


def chunk_sectors_of(sysdir, capacity):
    """The module's rule: start at 2^chunk_minimum_shift bytes (at least a
    page), double while the chunk count exceeds chunk_maximum_count or the
    chunk is below the device's minimum I/O size; None past the maximum."""
    min_shift = param("chunk_minimum_shift")
    max_shift = param("chunk_maximum_shift")
    max_count = param("chunk_maximum_count")
    qdir = sysdir + "/queue"
    if not os.path.isdir(qdir):
        qdir = os.path.dirname(sysdir) + "/queue"
    io_min = read_int(qdir + "/minimum_io_size", 512)
    nbytes = capacity * SECTOR
    shift = max(min_shift, 12)
    while True:
        count = -(-nbytes // (1 << shift))
        if count <= max_count and (1 << shift) >= io_min:
            return 1 << (shift - 9)
        if shift >= max_shift:
            return None
        shift += 1


class Dev:
    """A block device under test."""

    def __init__(self, spec):
        path, _, tag = spec.partition("=")
        self.path = path
        self.tag = tag or os.path.basename(path)
        if len(self.tag.encode()) > 16:
            raise ValueError(f"tag {self.tag!r} is longer than 16 bytes")
        self.tagb = self.tag.encode().ljust(16, b"\0")
        self.devno, self.sysdir = dev_sysfs(path)
        self.sectors = read_int(self.sysdir + "/size")
        self.fd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self.chunk = None

    def __str__(self):
        return f"{self.path}({self.tag})"


def parse_range(s):
    a, _, b = s.partition(":")
    return int(a, 0), int(b, 0)


def subtract(ranges, holes):
    """ranges minus holes (both lists of (start, count))."""
    out = []
    for s, c in ranges:
        pieces = [(s, s + c)]
        for hs, hc in holes:
            he = hs + hc
            nxt = []
            for a, b in pieces:
                if he <= a or hs >= b:
                    nxt.append((a, b))
                    continue
                if a < hs:
                    nxt.append((a, hs))
                if he < b:
                    nxt.append((he, b))
            pieces = nxt
        out += [(a, b - a) for a, b in pieces if b > a]
    return out


def blocks(ranges, step):
    for s, c in ranges:
        off = s
        while off < s + c:
            n = min(step, s + c - off)
            yield off, n
            off += n


def fill_dev(dev, ranges, model=None, step=2048):
    buf = AlignedBuf(step * SECTOR)
    for lba, n in blocks(ranges, step):
        data = stamps(dev.tagb, lba, n, GEN_FILL)
        buf.pwrite(dev.fd, data, lba)
        if model is not None:
            model[lba * SECTOR:(lba + n) * SECTOR] = data
    os.fsync(dev.fd)


def check_fill(report, dev, ranges, what=None, step=2048):
    buf = AlignedBuf(step * SECTOR)
    ok = True
    for lba, n in blocks(ranges, step):
        try:
            got = buf.pread(dev.fd, n, lba)
        except OSError as e:
            report.fail(f"{what or dev}: read at LBA {lba}: {errno.errorcode.get(e.errno, e)}")
            return False
        ok &= report.compare(what or str(dev), lba, got, stamps(dev.tagb, lba, n, GEN_FILL))
    return ok


class RangeLock:
    """Sector ranges in flight: overlapping holders wait for each other, so
    the in-memory model always matches the device."""

    def __init__(self):
        self.cv = threading.Condition()
        self.busy = []

    @contextlib.contextmanager
    def hold(self, start, n):
        end = start + n
        with self.cv:
            while any(s < end and start < e for s, e in self.busy):
                self.cv.wait()
            self.busy.append((start, end))
        try:
            yield
        finally:
            with self.cv:
                self.busy.remove((start, end))
                self.cv.notify_all()


# ------------------------------------------------------------------ snapshot


def collect_images(ctl, sid):
    """[(orig (mj, mn), image (mj, mn))] by the two-call protocol."""
    arg = ctypes.create_string_buffer(bytes(sid) + struct.pack("<IxxxxQ", 0, 0), 32)
    try:
        ctl.ioctl(IOCTL_SNAPSHOT_COLLECT_IMAGES, arg)
    except OSError as e:
        if e.errno != errno.ENODATA:
            raise
    n = struct.unpack_from("<I", arg.raw, 16)[0]
    arr = ctypes.create_string_buffer(max(n, 1) * 16)
    arg = ctypes.create_string_buffer(
        bytes(sid) + struct.pack("<IxxxxQ", n, ctypes.addressof(arr)), 32)
    ctl.ioctl(IOCTL_SNAPSHOT_COLLECT_IMAGES, arg)
    m = struct.unpack_from("<I", arg.raw, 16)[0]
    out = []
    for i in range(min(n, m)):
        omj, omn, imj, imn = struct.unpack_from("<IIII", arr.raw, i * 16)
        out.append(((omj, omn), (imj, imn)))
    return out


def image_path(imdev, timeout=10.0):
    """The /dev node of an image (named blksnap-image<minor>)."""
    path = f"/dev/blksnap-image{imdev[1]}"
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            st = os.stat(path)
            if stat.S_ISBLK(st.st_mode) and st.st_rdev == os.makedev(*imdev):
                return path
        except OSError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"{path} ({imdev[0]}:{imdev[1]}) did not appear")


def errname(e):
    return errno.errorcode.get(e, str(e))


# ------------------------------------------------------------------ the run


class Target:
    """An original device of the snapshot with its models and image."""

    def __init__(self, dev):
        self.dev = dev
        self.model = None  # newest content of the original
        self.image_model = None  # content of the image (TAKE state + image writes)
        self.lock = RangeLock()  # original I/O
        self.image_lock = RangeLock()  # image I/O
        self.regions = []  # where writers write on the original
        self.storage = []  # storage ranges on this device (excluded from checks)
        self.image = None
        self.image_fd = -1
        self.touched = set()  # chunks written (original or image) after TAKE
        # --io-errors: sector -> contents a failed write may have left there
        # besides the model's (each sector is the model's or one of these).
        self.alt = {}
        self.alt_lock = threading.Lock()

    def forget_alt(self, lba, n):
        """A write to lba+n succeeded: those sectors are exact again."""
        if self.alt:
            with self.alt_lock:
                for sec in range(lba, lba + n):
                    self.alt.pop(sec, None)

    def add_alt(self, lba, data):
        """A write of data at lba failed: each sector may or may not hold it."""
        with self.alt_lock:
            for i in range(len(data) // SECTOR):
                self.alt.setdefault(lba + i, []).append(bytes(data[i * SECTOR:(i + 1) * SECTOR]))

    def settle(self, lba, got):
        """Sectors read at lba (under the original's range lock) that hold
        what a failed write may have left there become the model; returns
        the expected data for the comparison."""
        exp = self.model[lba * SECTOR:lba * SECTOR + len(got)]
        if not self.alt:
            return exp
        with self.alt_lock:
            for i in range(len(got) // SECTOR):
                sec = lba + i
                if sec not in self.alt:
                    continue
                g = bytes(got[i * SECTOR:(i + 1) * SECTOR])
                if g == exp[i * SECTOR:(i + 1) * SECTOR] or g in self.alt[sec]:
                    self.model[sec * SECTOR:(sec + 1) * SECTOR] = g
                    del self.alt[sec]
        return self.model[lba * SECTOR:lba * SECTOR + len(got)]

    def touch(self, lba, n):
        c = self.dev.chunk
        self.touched.update(range(lba // c, (lba + n - 1) // c + 1))


class Write:
    """One write to an original: its sequence number, writer, target,
    sectors, and when it started and ended (time.monotonic())."""

    __slots__ = ("seq", "wid", "t", "lba", "n", "t0", "t1")

    def __init__(self, seq, wid, t, lba, n, t0, t1):
        self.seq, self.wid, self.t, self.lba, self.n, self.t0, self.t1 = \
            seq, wid, t, lba, n, t0, t1

    def __str__(self):
        return f"write seq={self.seq} of {self.t.dev.path} LBA {self.lba}+{self.n}"


class Run:
    def __init__(self, a):
        self.a = a
        self.report = Report()
        self.rng = random.Random(a.seed)
        self.seq = itertools.count(1)
        self.stop = threading.Event()
        self.corrupt_seen = threading.Event()  # image I/O failed (overflow mode)
        self.events = []
        self.events_lock = threading.Lock()
        self.ev_stop = threading.Event()
        self.stats = {"writes": 0, "zeroout": 0, "discard": 0, "straddle": 0, "on_boundary": 0,
                      "sectors": 0, "image_writes": 0, "image_reads": 0, "image_passes": 0,
                      "orig_reads": 0, "failed_writes": 0, "failed_orig_reads": 0}
        self.stats_lock = threading.Lock()
        self.appended = {}  # storage dev path -> [(s, c)]
        self.ctl = None
        self.sid = None
        self.created = False
        self.history = []  # every write to an original, as a Write

    def corrupt_error(self, e, write=False):
        """Whether an image I/O error is what a corrupted snapshot gives:
        EIO, or ENOSPC for the image write that ran out of storage itself;
        with --corrupt-errno other than ENOSPC (a storage device going away)
        any error, as I/O in flight then fails as the device does."""
        if not self.a.overflow:
            return False
        if (e.errno == errno.EIO or (write and e.errno == errno.ENOSPC)
                or self.a.corrupt_errno != errno.ENOSPC):
            self.corrupt_seen.set()
            return True
        return False

    def bump(self, key, n=1):
        with self.stats_lock:
            self.stats[key] += n

    # ---- setup
    def setup(self):
        a = self.a
        self.targets = [Target(Dev(s)) for s in a.dev]
        by_path = {t.dev.path: t for t in self.targets}
        self.storage_devs = {}
        self.storage_ranges = []  # (Dev, s, c) appended before TAKE
        for spec in a.storage:
            path, rest = spec.split(":", 1)
            s, c = parse_range(rest)
            self.storage_ranges.append((self._sdev(path, by_path), s, c))
        self.grow = None
        if a.grow:
            path, s, c, step = a.grow.split(":")
            self.grow = [self._sdev(path, by_path), int(s, 0), int(c, 0), int(step, 0)]
        excluded = {}
        for spec in a.exclude:
            path, rest = spec.split(":", 1)
            excluded.setdefault(path, []).append(parse_range(rest))
        for t in self.targets:
            t.storage = [(s, c) for d, s, c in self.storage_ranges if d is t.dev]
            if self.grow and self.grow[0] is t.dev:
                t.storage.append((self.grow[1], self.grow[2]))
            t.storage += excluded.get(t.dev.path, [])
            whole = [(0, t.dev.sectors)]
            t.regions = subtract(whole, t.storage)
            t.check = subtract(whole, t.storage)  # image and original checks
            t.dev.chunk = a.chunk_sectors or chunk_sectors_of(t.dev.sysdir, t.dev.sectors)
            if t.dev.chunk is None:
                raise RuntimeError(f"{t.dev}: no valid chunk size for its capacity")
        explicit = {}
        for spec in a.region:
            path, rest = spec.split(":", 1)
            if path not in by_path:
                raise ValueError(f"--region {spec}: {path} is not a --dev")
            explicit.setdefault(path, []).append(parse_range(rest))
        for path, ranges in explicit.items():
            t = by_path[path]
            t.regions = subtract(ranges, t.storage)
        self.via = None
        if a.via:
            # Writes to the first original go through another device (a
            # partition of it, a dm device on it) that maps its sector 0 to
            # the original's sector OFFSET.
            path, off = a.via.rsplit(":", 1)
            vd = Dev(path)
            off = int(off, 0)
            t = self.targets[0]
            t.regions = subtract(t.regions, [(0, off), (off + vd.sectors, 1 << 62)])
            self.via = (vd, off)
            log(f"writes to {t.dev} go through {vd} at offset {off}")
        for t in self.targets:
            log(f"{t.dev}: {t.dev.sectors} sectors, chunk {t.dev.chunk} sectors, "
                f"writer regions {t.regions}, storage here {t.storage}")
        self.max_io = a.max_io or min(2 * max(t.dev.chunk for t in self.targets) + 16, 2048)

    def _sdev(self, path, by_path):
        if path in by_path:
            return by_path[path].dev
        if path not in self.storage_devs:
            self.storage_devs[path] = Dev(path)
        return self.storage_devs[path]

    def fill(self):
        for t in self.targets:
            t.model = bytearray(t.dev.sectors * SECTOR)
            if self.a.no_fill:
                # Filled by an earlier "stamp.py fill": the model is the fill.
                for lba, n in blocks([(0, t.dev.sectors)], 4096):
                    t.model[lba * SECTOR:(lba + n) * SECTOR] = stamps(t.dev.tagb, lba, n, GEN_FILL)
            else:
                fill_dev(t.dev, [(0, t.dev.sectors)], t.model)
        if not self.a.no_fill and not self.a.no_storage_fill:
            for d in self.storage_devs.values():
                fill_dev(d, [(0, d.sectors)])
        log("filled" if not self.a.no_fill else "model of the fill built")

    # ---- snapshot
    def snapshot(self):
        a = self.a
        self.ctl = bsctl.Ctl()
        if a.attach:
            self.sid = bytes.fromhex(a.attach.replace("-", ""))
            # Appended by whoever took the snapshot.
            for d, s, c in self.storage_ranges:
                self.appended.setdefault(d.path, []).append((s, c))
        else:
            self.sid = self.ctl.create([t.dev.devno for t in self.targets])
            self.created = True
            log(f"created snapshot {self.sid.hex()}")
            ev = self.ctl.wait_event(self.sid, 5000)
            if ev.code != bsctl.EVENT_LOW_FREE_SPACE:
                self.report.fail(f"first event after CREATE: {ev.describe()}, expected low_free_space")
            else:
                log(f"first event: {ev.describe()}")
            for d, s, c in self.storage_ranges:
                self.ctl.append_storage(self.sid, d.devno, [(s, c)])
                self.appended.setdefault(d.path, []).append((s, c))
            if self.grow:
                d, s, c, step = self.grow
                self.grow_pos = s
                self.grow_end = s + c
            if a.events:
                self.ev_thread = threading.Thread(target=self.event_loop, daemon=True)
                self.ev_thread.start()
            if a.take_during_writes:
                return  # go() takes it while the writers run
            self.ctl.take(self.sid)
            log("snapshot taken")
        for t in self.targets:
            t.image_model = bytearray(t.model)
        self.collect()

    def collect(self):
        imgs = dict(collect_images(self.ctl, self.sid))
        for t in self.targets:
            im = imgs.get(t.dev.devno)
            if im is None:
                raise RuntimeError(f"COLLECT_IMAGES has no image for {t.dev} ({imgs})")
            t.image = image_path(im)
            t.image_fd = os.open(t.image, os.O_RDWR | os.O_DIRECT)
            isize = read_int(f"/sys/dev/block/{im[0]}:{im[1]}/size")
            if isize != t.dev.sectors:
                self.report.fail(f"{t.image}: capacity {isize} sectors, original has {t.dev.sectors}")
            ics = read_int(f"/sys/dev/block/{im[0]}:{im[1]}/queue/chunk_sectors", 0)
            note = "" if ics in (0, t.dev.chunk) else f" (the image's queue/chunk_sectors is {ics})"
            log(f"image of {t.dev}: {t.image}{note}")

    def event_loop(self):
        ctl = bsctl.Ctl()
        try:
            while not self.ev_stop.is_set():
                try:
                    ev = ctl.wait_event(self.sid, 200)
                except OSError as e:
                    if e.errno in (errno.ENOENT, errno.EINTR):
                        continue
                    if e.errno == errno.ENOMEM and self.a.io_errors:
                        time.sleep(0.01)  # an injected allocation failure
                        continue
                    if e.errno != errno.ESRCH or not self.ev_stop.is_set():
                        log(f"WAIT_EVENT: {errname(e.errno)}")
                    return
                with self.events_lock:
                    self.events.append(ev)
                log(f"event: {ev.describe()}")
                if ev.code == bsctl.EVENT_LOW_FREE_SPACE and self.grow:
                    d, _, _, step = self.grow
                    if self.grow_pos + step <= self.grow_end:
                        ctl.append_storage(self.sid, d.devno, [(self.grow_pos, step)])
                        self.appended.setdefault(d.path, []).append((self.grow_pos, step))
                        log(f"appended {d.path} {self.grow_pos}:{step}")
                        self.grow_pos += step
                    else:
                        log("storage pool exhausted")
        finally:
            ctl.close()

    # ---- I/O plans
    def plan(self, rng, t, regions):
        """(lba, n) of a write in regions, often on or across a chunk boundary."""
        total = sum(c for _, c in regions)
        x = rng.randrange(total)
        for rs, rc in regions:
            if x < rc:
                break
            x -= rc
        chunk = t.dev.chunk
        n = rng.randint(1, self.max_io) if rng.random() < 0.7 else rng.randint(1, 16)
        kind = rng.random()
        pos = rs + x
        b = (pos // chunk) * chunk  # a chunk boundary near pos
        if kind < 0.25:
            lba = pos  # anywhere
        elif kind < 0.45:
            lba = b  # starts on a boundary
        elif kind < 0.65:
            lba = b - n  # ends on a boundary
        elif kind < 0.9:
            lba = b - rng.randint(1, max(1, n - 1))  # straddles a boundary
        else:
            lba, n = b - rng.randint(0, 1), rng.randint(1, 2)  # around the boundary sector
        lba = max(rs, min(lba, rs + rc - 1))
        n = max(1, min(n, rs + rc - lba))
        return lba, n

    def note_shape(self, t, lba, n):
        c = t.dev.chunk
        if lba // c != (lba + n - 1) // c:
            self.bump("straddle")
        if lba % c == 0 or (lba + n) % c == 0:
            self.bump("on_boundary")

    def sweep_plan(self, wid):
        """For --sweep: writer wid's share of every target's regions, walked
        from start to end (then again), so that every chunk gets written."""
        plans = []
        for t in self.targets:
            total = sum(c for _, c in t.regions)
            share = total // self.a.writers
            lo, hi = wid * share, (wid + 1) * share if wid + 1 < self.a.writers else total
            # Map [lo, hi) of the concatenated regions back to ranges.
            out, base = [], 0
            for rs, rc in t.regions:
                a0, b0 = max(lo, base), min(hi, base + rc)
                if a0 < b0:
                    out.append((rs + a0 - base, b0 - a0))
                base += rc
            plans.append([t, out, 0, 0])  # target, ranges, range index, offset
        return plans

    def sweep_next(self, rng, plan):
        """The next write of a sweep; None once the sweep is through."""
        t, ranges, i, off = plan
        if i >= len(ranges):
            return None
        rs, rc = ranges[i]
        n = rng.randint(1, self.max_io) if rng.random() < 0.8 else rng.randint(1, 16)
        n = min(n, rc - off)
        lba = rs + off
        off += n
        if off >= rc:
            i, off = i + 1, 0
        plan[2], plan[3] = i, off
        return t, lba, n

    def writer(self, wid, deadline):
        a = self.a
        rng = random.Random(a.seed * 1000 + wid)
        buf = AlignedBuf(self.max_io * SECTOR)
        weights = [sum(c for _, c in t.regions) for t in self.targets]
        sweeps = self.sweep_plan(wid) if a.sweep else None
        done = 0
        # At least one write each, however late the thread gets the CPU: on
        # a loaded host (debug kernel, TAKE taking seconds) all of them
        # once started after their deadline and the run wrote nothing.
        while (done < a.writes and (done == 0 or time.monotonic() < deadline)
               and not self.stop.is_set()):
            if sweeps:
                nxt = None
                for k in range(len(sweeps)):
                    nxt = self.sweep_next(rng, sweeps[(done + k) % len(sweeps)])
                    if nxt:
                        break
                if nxt is None:
                    return
                t, lba, n = nxt
            else:
                t = rng.choices(self.targets, weights)[0]
                if not t.regions:
                    return
                lba, n = self.plan(rng, t, t.regions)
            r = rng.random()
            op = "write"
            if a.zeroout and r < 0.05:
                op = "zeroout"
            elif a.discard and r < 0.10:
                # brd frees (zeroes) only whole pages.
                s = (lba + 7) & ~7
                e = (lba + n) & ~7
                if e - s >= 8:
                    op, lba, n = "discard", s, e - s
            self.note_shape(t, lba, n)
            t.touch(lba, n)
            fd, base = t.dev.fd, 0
            if self.via and t is self.targets[0]:
                fd, base = self.via[0].fd, self.via[1]
            with t.lock.hold(lba, n):
                seq = next(self.seq)
                t0 = time.monotonic()
                try:
                    if op == "write":
                        data = stamps(t.dev.tagb, lba, n, GEN_WRITE, wid, seq)
                        buf.pwrite(fd, data, lba - base)
                    else:
                        fcntl.ioctl(fd, BLKZEROOUT if op == "zeroout" else BLKDISCARD,
                                    struct.pack("QQ", (lba - base) * SECTOR, n * SECTOR))
                        data = bytes(n * SECTOR)
                except OSError as e:
                    if a.io_errors:
                        # Injected fault: each sector is old or new now.
                        if op != "write":
                            data = bytes(n * SECTOR)
                        t.add_alt(lba, data)
                        self.bump("failed_writes")
                        if self.stats["failed_writes"] <= 3:
                            log(f"{op} of {t.dev} LBA {lba}+{n} failed: {errname(e.errno)} "
                                f"(faults injected: its sectors are old or new now)")
                        done += 1
                        continue
                    self.report.fail(f"{op} of {t.dev} LBA {lba}+{n} failed: {errname(e.errno)} "
                                     f"(the original must keep working)")
                    self.stop.set()
                    return
                t.forget_alt(lba, n)
                t.model[lba * SECTOR:(lba + n) * SECTOR] = data
                self.history.append(Write(seq, wid, t, lba, n, t0, time.monotonic()))
            self.bump("writes" if op == "write" else op)
            self.bump("sectors", n)
            done += 1

    def image_writer(self, count):
        rng = random.Random(self.a.seed * 7919 + 1)
        buf = AlignedBuf(self.max_io * SECTOR)
        for _ in range(count):
            if self.stop.is_set():
                return
            t = rng.choice(self.targets)
            lba, n = self.plan(rng, t, t.check)
            t.touch(lba, n)
            with t.image_lock.hold(lba, n):
                seq = next(self.seq)
                data = stamps(t.dev.tagb, lba, n, GEN_IMAGE, 99, seq)
                try:
                    buf.pwrite(t.image_fd, data, lba)
                except OSError as e:
                    if self.corrupt_error(e, write=True):
                        self.corrupt_seen.set()
                        return
                    self.report.fail(f"image write {t.image} LBA {lba}+{n}: {errname(e.errno)}")
                    return
                t.image_model[lba * SECTOR:(lba + n) * SECTOR] = data
                # Read it back at once.
                try:
                    got = buf.pread(t.image_fd, n, lba)
                except OSError as e:
                    if self.corrupt_error(e):
                        self.corrupt_seen.set()
                        return
                    self.report.fail(f"image read-back {t.image} LBA {lba}+{n}: {errname(e.errno)}")
                    return
                self.report.compare(f"image {t.image} read back after an image write", lba, got, data)
            self.bump("image_writes")
            time.sleep(0.002)

    def read_image(self, t, buf, lba, n, what):
        """Reads and compares a piece of the image; False to stop reading."""
        with t.image_lock.hold(lba, n):
            try:
                got = buf.pread(t.image_fd, n, lba)
            except OSError as e:
                if self.corrupt_error(e):
                    self.corrupt_seen.set()
                    return False
                self.report.fail(f"{what} {t.image} LBA {lba}+{n}: {errname(e.errno)}")
                return False
            exp = t.image_model[lba * SECTOR:(lba + n) * SECTOR]
        self.bump("image_reads")
        return self.report.compare(f"image {t.image} of {t.dev.path} ({what})", lba, got, exp)

    def image_scanner(self):
        """Reads every image through, again and again, while the writers run."""
        buf = AlignedBuf(256 * SECTOR)
        while not self.stop.is_set():
            for t in self.targets:
                for lba, n in blocks(t.check, 256):
                    if self.stop.is_set():
                        return
                    if not self.read_image(t, buf, lba, n, "scan during writes"):
                        if self.corrupt_seen.is_set() or self.report.failures > 20:
                            return
            self.bump("image_passes")

    def image_prober(self):
        """Random image reads, on and across chunk boundaries."""
        rng = random.Random(self.a.seed * 31 + 5)
        buf = AlignedBuf(self.max_io * SECTOR)
        while not self.stop.is_set():
            t = rng.choice(self.targets)
            lba, n = self.plan(rng, t, t.check)
            if not self.read_image(t, buf, lba, n, "random read during writes"):
                if self.corrupt_seen.is_set() or self.report.failures > 20:
                    return

    def orig_prober(self):
        """Random reads of the originals while they are written."""
        rng = random.Random(self.a.seed * 17 + 3)
        buf = AlignedBuf(self.max_io * SECTOR)
        while not self.stop.is_set():
            t = rng.choice(self.targets)
            lba, n = self.plan(rng, t, t.check)
            with t.lock.hold(lba, n):
                try:
                    got = buf.pread(t.dev.fd, n, lba)
                except OSError as e:
                    if self.a.io_errors:
                        self.bump("failed_orig_reads")
                        time.sleep(0.01)
                        continue
                    self.report.fail(f"read of {t.dev} LBA {lba}+{n}: {errname(e.errno)}")
                    return
                exp = t.settle(lba, got)
            self.bump("orig_reads")
            if not self.report.compare(f"original {t.dev} (read during writes)", lba, got, exp):
                return

    def check_point_in_time(self):
        """For a snapshot taken while the writers ran: every image sector
        holds the data of the fill or of a write that started before TAKE
        returned, never older than the last write to it that ended before
        TAKE began; a write whose sectors are partly in the image and partly
        not was in flight during TAKE; and no write is in the image while a
        write that ended before it began is not (one point in time, across
        every device of the snapshot). The image read here becomes the model
        the later checks hold it to."""
        T1, T2 = self.T1, self.T2
        hist = sorted((w for w in list(self.history) if w.t0 < T2), key=lambda w: w.seq)
        ins, outs = set(), set()
        buf = AlignedBuf(2048 * SECTOR)
        bad = 0
        for t in self.targets:
            per = {}
            for w in hist:
                if w.t is t:
                    for sec in range(w.lba, w.lba + w.n):
                        per.setdefault(sec, []).append(w)
            img = bytearray(t.dev.sectors * SECTOR)
            for lba, n in blocks(t.check, 2048):
                img[lba * SECTOR:(lba + n) * SECTOR] = buf.pread(t.image_fd, n, lba)
            exp = bytearray(t.fill_model)
            for sec, ws in per.items():
                if not any(a <= sec < a + c for a, c in t.check):
                    continue
                got = bytes(img[sec * SECTOR:(sec + 1) * SECTOR])
                lower = -1
                for i, w in enumerate(ws):
                    if w.t1 < T1:
                        lower = i
                if got == t.fill_model[sec * SECTOR:(sec + 1) * SECTOR]:
                    f = -1
                else:
                    p = parse_stamp(got)
                    f = None
                    if p and p[0] == t.dev.tagb and p[1] == sec and p[2] == GEN_WRITE:
                        for i, w in enumerate(ws):
                            if w.seq == p[4] and w.wid == p[3]:
                                f = i
                        if f is not None and got != bytes(stamps(t.dev.tagb, sec, 1, GEN_WRITE,
                                                                 p[3], p[4])):
                            f = None
                if f is None or f < lower:
                    bad += 1
                    if bad <= 5:
                        why = (f"the last write to it that ended before TAKE began is "
                               f"{ws[lower]}" if lower >= 0 else "no write to it ended before TAKE")
                        self.report.fail(f"image {t.image} LBA {sec}: found {describe(got)}, "
                                         f"which no write that started before TAKE returned "
                                         f"leaves there, or too old ({why})")
                    continue
                exp[sec * SECTOR:(sec + 1) * SECTOR] = got
                for i, w in enumerate(ws):
                    (ins if i <= f else outs).add(w)
            for lba, n in blocks(t.check, 2048):
                a0, b0 = lba * SECTOR, (lba + n) * SECTOR
                self.report.compare(f"image {t.image} of {t.dev.path} (taken during writes)",
                                    lba, bytes(img[a0:b0]), bytes(exp[a0:b0]))
            t.image_model = img
        partial = ins & outs
        flight = [w for w in hist if w.t1 > T1]
        for w in partial:
            if not (w.t0 < T2 and w.t1 > T1):
                self.report.fail(f"{w} (not in flight during TAKE) is only partly in the image")
        if ins and outs:
            x = max(ins, key=lambda w: w.t0)
            y = min(outs, key=lambda w: w.t1)
            if y.t1 < x.t0:
                self.report.fail(f"not one point in time: {x} is in the image but {y}, which "
                                 f"ended {(x.t0 - y.t1) * 1000:.1f} ms before it began, is not")
        log(f"point in time checked: {len(hist)} writes started before TAKE returned, "
            f"{len(flight)} of them still running when it began; {len(ins)} in the image, "
            f"{len(outs - ins)} not, {len(partial)} partly")

    # ---- final checks
    def verify_images(self):
        buf = AlignedBuf(2048 * SECTOR)
        for t in self.targets:
            for lba, n in blocks(t.check, 2048):
                if not self.read_image(t, buf, lba, n, "final scan"):
                    if self.report.failures > 20:
                        return
        log("images checked")

    def verify_originals(self):
        buf = AlignedBuf(2048 * SECTOR)
        for t in self.targets:
            for lba, n in blocks(t.check, 2048):
                try:
                    got = buf.pread(t.dev.fd, n, lba)
                except OSError as e:
                    self.report.fail(f"read of {t.dev} LBA {lba}+{n}: {errname(e.errno)}")
                    break
                self.report.compare(f"original {t.dev} (final)", lba, got, t.settle(lba, got))
        log("originals checked")
        if self.a.io_errors:
            left = sum(len(t.alt) for t in self.targets)
            log(f"original sectors written by failed writes: all settled"
                f"{f' ({left} not)' if left else ''}")

    def verify_storage_devs(self):
        """Separate storage devices: nothing outside the appended ranges changed."""
        if self.a.no_storage_fill:
            return
        for path, d in self.storage_devs.items():
            outside = subtract([(0, d.sectors)], self.appended.get(path, []))
            check_fill(self.report, d, outside, f"storage device {d} outside its appended ranges")
        if self.storage_devs:
            log("storage devices outside their ranges checked")

    def check_storage(self):
        """What the storage ranges hold. With one chunk size C for all
        originals, the ranges are slots of C sectors from each range's start
        (a shorter tail is never used): every used slot must hold exactly
        the image's content of one chunk, and the chunks stored must be
        exactly the chunks written since TAKE, each once. Otherwise each
        sector must be a copy of TAKE data or an image write."""
        chunks = {t.dev.chunk for t in self.targets}
        if len(chunks) == 1:
            self.check_slots(chunks.pop())
        else:
            self.check_storage_sectors()

    def _storage_dev(self, path):
        for t in self.targets:
            if t.dev.path == path:
                return t.dev
        return self.storage_devs[path]

    def check_slots(self, C):
        tags = {t.dev.tagb: t for t in self.targets}
        stored = {}  # (target, chunk) -> storage place
        per_read = max(1, 2048 // C) * C
        buf = AlignedBuf(per_read * SECTOR)
        used = unused = 0
        for path, ranges in self.appended.items():
            d = self._storage_dev(path)
            for rs, rc in ranges:
                for blba, bn in blocks([(rs, rc)], per_read):
                    data = buf.pread(d.fd, bn, blba)
                    owns = stamps(d.tagb, blba, bn, GEN_FILL)
                    if data == owns:
                        unused += bn // C
                        continue
                    for k in range(0, bn, C):
                        lba = blba + k
                        n = min(C, bn - k)
                        got = data[k * SECTOR:(k + n) * SECTOR]
                        own = owns[k * SECTOR:(k + n) * SECTOR]
                        where = f"storage {d} slot at LBA {lba} (range {rs}:{rc})"
                        if n < C:
                            self.report.compare(f"{where}: a tail shorter than a chunk must stay "
                                                f"unused", lba, got, own)
                            continue
                        if got == own:
                            unused += 1
                            continue
                        p = None
                        for i in range(n):
                            p = parse_stamp(got[i * SECTOR:(i + 1) * SECTOR])
                            if p and p[0] in tags:
                                break
                            p = None
                        if p is None:
                            self.report.fail(f"{where}: no stamp of an original in it; first "
                                             f"sector {describe(got[:SECTOR])}")
                            continue
                        t = tags[p[0]]
                        c = p[1] // C
                        key = (t.dev.path, c)
                        if key in stored:
                            self.report.fail(f"{where}: chunk {c} of {t.dev} again (first copy "
                                             f"at {stored[key]})")
                        stored[key] = f"{d.path}:{lba}"
                        a0 = c * C
                        m = min(C, t.dev.sectors - a0)
                        exp = t.image_model[a0 * SECTOR:(a0 + m) * SECTOR] + own[m * SECTOR:]
                        if self.report.compare(f"{where} holding chunk {c} (LBA {a0}) of "
                                               f"{t.dev}: LBA here", lba, got, exp):
                            used += 1
        for t in self.targets:
            have = {c for p, c in stored if p == t.dev.path}
            missing = sorted(t.touched - have)
            extra = sorted(have - t.touched)
            if missing:
                self.report.fail(f"{t.dev}: {len(missing)} chunks written after TAKE are in no "
                                 f"storage slot, e.g. {missing[:8]} (chunk {C} sectors)")
            if extra:
                self.report.fail(f"{t.dev}: {len(extra)} chunks never written after TAKE were "
                                 f"copied, e.g. {extra[:8]} (is the chunk size {C} sectors?)")
            log(f"{t.dev}: {len(t.touched)} chunks written, {len(have)} stored")
        log(f"storage slots checked: {used} hold the right chunk, {unused} unused")

    def check_storage_sectors(self):
        tags = {t.dev.tagb: t for t in self.targets}
        used = 0
        buf = AlignedBuf(2048 * SECTOR)
        for path, ranges in self.appended.items():
            d = self._storage_dev(path)
            for rs, rc in ranges:
                for lba, n in blocks([(rs, rc)], 2048):
                    got = buf.pread(d.fd, n, lba)
                    own = stamps(d.tagb, lba, n, GEN_FILL)
                    if got == own:
                        continue
                    bad = 0
                    for i in range(n):
                        sec = got[i * SECTOR:(i + 1) * SECTOR]
                        if sec == own[i * SECTOR:(i + 1) * SECTOR]:
                            continue
                        p = parse_stamp(sec)
                        why = None
                        if p is None:
                            why = "not a valid stamp"
                        elif p[0] not in tags:
                            why = "stamp of a device not in the snapshot"
                        elif p[2] == GEN_WRITE:
                            why = "data written to an original after TAKE"
                        elif p[2] not in (GEN_FILL, GEN_IMAGE):
                            why = "unknown generation"
                        if why:
                            bad += 1
                            if bad <= 3:
                                self.report.fail(f"storage {d} LBA {lba + i} (range {rs}:{rc}): "
                                                 f"{why}: {describe(sec)}")
                        else:
                            used += 1
        log(f"storage ranges checked: {used} sectors hold copied or image data")

    def check_events(self):
        a = self.a
        with self.events_lock:
            evs = list(self.events)
        corrupted = [e for e in evs if e.code == bsctl.EVENT_CORRUPTED]
        low = [e for e in evs if e.code == bsctl.EVENT_LOW_FREE_SPACE]
        log(f"events after CREATE: {len(low)} low_free_space, {len(corrupted)} corrupted")
        if a.overflow:
            if len(corrupted) != 1:
                self.report.fail(f"expected exactly one corrupted event, got {len(corrupted)}: "
                                 f"{[e.describe() for e in corrupted]}")
            for e in corrupted[:1]:
                mj, mn, err = struct.unpack_from("<IIi", e.data)
                if (mj, mn) not in [t.dev.devno for t in self.targets]:
                    self.report.fail(f"corrupted event names {mj}:{mn}, not an original device")
                want = a.corrupt_errno
                if (want and err != want) or (not want and err <= 0):
                    self.report.fail(f"corrupted event err_code {err}, expected "
                                     f"{errname(want) + f' ({want})' if want else 'an errno'}")
        elif corrupted:
            self.report.fail(f"unexpected corrupted event(s): {[e.describe() for e in corrupted]}")
        for e in evs:
            if e.code not in (bsctl.EVENT_LOW_FREE_SPACE, bsctl.EVENT_CORRUPTED):
                self.report.fail(f"unknown event: {e.describe()}")

    def expect_image_eio(self):
        """After corruption every image read and write fails with EIO."""
        buf = AlignedBuf(64 * SECTOR)
        for t in self.targets:
            for lba in (0, t.dev.sectors // 2 // 8 * 8, t.dev.sectors - 8):
                try:
                    buf.pread(t.image_fd, 8, lba)
                    self.report.fail(f"{t.image}: read at LBA {lba} succeeded after corruption")
                except OSError as e:
                    if e.errno != errno.EIO:
                        self.report.fail(f"{t.image}: read at LBA {lba}: {errname(e.errno)}, "
                                         f"expected EIO")
            try:
                buf.pwrite(t.image_fd, stamps(t.dev.tagb, 8, 8, GEN_IMAGE, 98, 0), 8)
                self.report.fail(f"{t.image}: write succeeded after corruption")
            except OSError as e:
                if e.errno != errno.EIO:
                    self.report.fail(f"{t.image}: write: {errname(e.errno)}, expected EIO")
        log("image I/O fails with EIO")

    def run_at(self, when, cmd):
        """--at: runs a shell command while the writers run."""
        time.sleep(when)
        r = subprocess.run(["sh", "-c", cmd], stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           check=False)
        log(f"ran '{cmd}': exit {r.returncode} {r.stdout.decode(errors='replace').strip()}")

    # ---- the whole run
    def go(self):
        a = self.a
        self.setup()
        self.fill()
        if a.no_fill:
            # Nothing may have changed the originals since the fill.
            self.verify_originals()
        self.snapshot()
        deadline = time.monotonic() + a.seconds
        threads = [threading.Thread(target=self.writer, args=(w, deadline), name=f"writer{w}")
                   for w in range(a.writers)]
        started = []
        if a.take_during_writes:
            for t in self.targets:
                t.fill_model = bytes(t.model)
            for th in threads:
                th.start()
            time.sleep(a.take_during_writes)
            self.T1 = time.monotonic()
            self.ctl.take(self.sid)
            self.T2 = time.monotonic()
            log(f"snapshot taken while {a.writers} writers run ({len(self.history)} writes "
                f"done; the ioctl took {(self.T2 - self.T1) * 1000:.1f} ms)")
            self.collect()
            self.check_point_in_time()
            started, threads = threads, []
        readers = [threading.Thread(target=self.image_scanner, name="scanner"),
                   threading.Thread(target=self.image_prober, name="prober"),
                   threading.Thread(target=self.orig_prober, name="orig-prober")]
        if a.image_writes:
            threads.append(threading.Thread(target=self.image_writer, args=(a.image_writes,),
                                            name="image-writer"))
        at = None
        if a.at:
            when, _, cmd = a.at.partition(":")
            at = threading.Thread(target=self.run_at, args=(float(when), cmd), daemon=True)
            at.start()
        for th in threads + readers:
            th.start()
        for th in started + threads:
            th.join()
        if at:
            at.join()  # the final checks come after the command (e.g. faults off)
        self.stop.set()
        for th in readers:
            th.join()
        s = self.stats
        log(f"writers done: {s['writes']} writes, {s['zeroout']} zeroouts, {s['discard']} discards, "
            f"{s['sectors']} sectors, {s['straddle']} across and {s['on_boundary']} on chunk "
            f"boundaries; {s['image_writes']} image writes, {s['image_reads']} image reads "
            f"({s['image_passes']} full passes), {s['orig_reads']} original reads")
        if a.io_errors:
            log(f"faults: {s['failed_writes']} writes and {s['failed_orig_reads']} reads of the "
                f"originals failed")
        if s["writes"] == 0:
            self.report.fail("no write was done")
        if a.overflow:
            end = time.monotonic() + 10
            while time.monotonic() < end:
                with self.events_lock:
                    if any(e.code == bsctl.EVENT_CORRUPTED for e in self.events):
                        break
                time.sleep(0.1)
            time.sleep(1)  # a second corrupted event would come now
            self.expect_image_eio()
        else:
            self.verify_images()
        self.verify_originals()
        self.verify_storage_devs()
        if a.check_storage:
            self.check_storage()
        if a.events and not a.attach:
            self.check_events()
        for t in self.targets:
            os.close(t.image_fd)
        if self.created and not a.keep:
            self.ev_stop.set()
            self.ctl.destroy(self.sid)
            log("snapshot destroyed")
            for t in self.targets:
                name = os.path.basename(t.image)
                end = time.monotonic() + 5
                while os.path.exists(f"/sys/block/{name}") and time.monotonic() < end:
                    time.sleep(0.05)
                if os.path.exists(f"/sys/block/{name}"):
                    self.report.fail(f"{name} still exists after DESTROY")
            # The originals are unchanged by DESTROY.
            self.verify_originals()
        elif self.created:
            print(f"id={self.sid.hex()}", flush=True)
        self.ev_stop.set()
        if self.report.failures:
            log(f"RESULT: {self.report.failures} failure(s)")
            return 1
        log("RESULT: ok")
        return 0


# ------------------------------------------------------------------ CLI


def cmd_run(a):
    if a.take_during_writes and (a.attach or a.zeroout or a.discard or a.check_storage
                                 or a.overflow):
        raise ValueError("--take-during-writes goes with neither --attach, --zeroout, "
                         "--discard, --check-storage nor --overflow")
    if a.overflow or a.grow:
        a.events = True
    if a.attach:
        a.events = False
    faulthandler.dump_traceback_later(a.timeout, exit=True)
    r = Run(a)
    try:
        return r.go()
    except Exception as e:  # noqa: BLE001 (a test tool: report anything)
        import traceback
        traceback.print_exc()
        log(f"FAIL {type(e).__name__}: {e}")
        if r.created and not a.keep:
            with contextlib.suppress(Exception):
                r.ev_stop.set()
                r.ctl.destroy(r.sid)
        return 1


def cmd_fill(a):
    for spec in a.devs:
        d = Dev(spec)
        ranges = [parse_range(x) for x in a.range] or [(0, d.sectors)]
        fill_dev(d, ranges)
        log(f"filled {d} {ranges}")
    return 0


def cmd_check_fill(a):
    d = Dev(a.dev)
    ranges = [parse_range(x) for x in a.range] or [(0, d.sectors)]
    ranges = subtract(ranges, [parse_range(x) for x in a.exclude])
    rep = Report()
    check_fill(rep, d, ranges)
    if rep.failures:
        log(f"RESULT: {rep.failures} failure(s)")
        return 1
    log(f"RESULT: ok ({sum(c for _, c in ranges)} sectors hold their fill stamps)")
    return 0


def cmd_chunk(a):
    _, sysdir = dev_sysfs(a.dev)
    print(chunk_sectors_of(sysdir, read_int(sysdir + "/size")))
    return 0


FS_IOC_FIEMAP = 0xC020660B
FIEMAP_FLAG_SYNC = 1
FIEMAP_EXTENT_LAST = 1
FIEMAP_EXTENT_UNKNOWN = 2
FIEMAP_EXTENT_ENCODED = 8
FIEMAP_EXTENT_DATA_INLINE = 0x200
FIEMAP_EXTENT_NOT_ALIGNED = 0x100


def fiemap(path):
    """The physical extents of a file as (start, count) in sectors."""
    fd = os.open(path, os.O_RDONLY)
    try:
        out, start, n = [], 0, 256
        while True:
            buf = bytearray(struct.pack("<QQIIII", start, 2**64 - 1, FIEMAP_FLAG_SYNC, 0, n, 0))
            buf += bytes(56 * n)
            fcntl.ioctl(fd, FS_IOC_FIEMAP, buf)
            mapped = struct.unpack_from("<I", buf, 20)[0]
            if mapped == 0:
                return out
            last = False
            for i in range(mapped):
                lo, ph, ln, _, _, fl = struct.unpack_from("<QQQQQI", buf, 32 + 56 * i)
                bad = FIEMAP_EXTENT_UNKNOWN | FIEMAP_EXTENT_ENCODED | FIEMAP_EXTENT_DATA_INLINE \
                    | FIEMAP_EXTENT_NOT_ALIGNED
                if fl & bad:
                    raise RuntimeError(f"{path}: extent at {lo} has flags {fl:#x}")
                out.append((ph // SECTOR, ln // SECTOR))
                start = lo + ln
                last = bool(fl & FIEMAP_EXTENT_LAST)
            if last:
                return out
    finally:
        os.close(fd)


def cmd_fiemap(a):
    ext = fiemap(a.file)
    # Merge physically adjacent extents.
    merged = []
    for s, c in ext:
        if merged and merged[-1][0] + merged[-1][1] == s:
            merged[-1] = (merged[-1][0], merged[-1][1] + c)
        else:
            merged.append((s, c))
    for s, c in merged:
        if (s | c) & 7:
            raise RuntimeError(f"{a.file}: extent {s}:{c} is not page-aligned")
        print(f"{s}:{c}")
    return 0


def cmd_read_loop(a):
    flags = os.O_RDONLY | (0 if a.buffered else os.O_DIRECT)
    fd = os.open(a.dev, flags)
    size = os.lseek(fd, 0, os.SEEK_END)
    print(f"open size={size}", flush=True)
    buf = AlignedBuf(65536)
    ok = failed = ok_after_fail = 0
    first = last = None
    first_at = None
    rng = random.Random(1)
    t0 = time.monotonic()
    end = t0 + a.seconds
    while time.monotonic() < end:
        if a.stop_file and os.path.exists(a.stop_file):
            break
        off = rng.randrange(max(size // 65536, 1)) * 65536
        try:
            got = os.preadv(fd, [buf.mv], off)
            err = None if got == len(buf.mv) else ("EOF" if got == 0 else "SHORT")
        except OSError as e:
            err = errname(e.errno)
        if err is None:
            ok += 1
            if failed:
                ok_after_fail += 1
            last = "ok"
        else:
            failed += 1
            if first is None:
                first, first_at = err, time.monotonic() - t0
            last = err
        if a.delay:
            time.sleep(a.delay)
    print(f"reads_ok={ok} reads_failed={failed} first_errno={first or '-'} "
          f"ok_after_fail={ok_after_fail} last={last or '-'} "
          f"first_fail_after={'-' if first_at is None else f'{first_at:.1f}s'} "
          f"ran={time.monotonic() - t0:.1f}s", flush=True)
    return 0


def main():
    # Untranslated messages, and no gettext catalogue lookups (slow on the
    # test VM's 9p root).
    os.environ["LANGUAGE"] = "C"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="op", required=True)
    s = sub.add_parser("fill")
    s.add_argument("devs", nargs="+")
    s.add_argument("--range", action="append", default=[])
    s = sub.add_parser("check-fill")
    s.add_argument("dev")
    s.add_argument("--range", action="append", default=[])
    s.add_argument("--exclude", action="append", default=[])
    s = sub.add_parser("chunk")
    s.add_argument("dev")
    s = sub.add_parser("fiemap")
    s.add_argument("file")
    s = sub.add_parser("read-loop")
    s.add_argument("dev")
    s.add_argument("--seconds", type=float, default=5)
    s.add_argument("--delay", type=float, default=0)
    s.add_argument("--stop-file", help="stop once this path exists")
    s.add_argument("--buffered", action="store_true")
    s = sub.add_parser("run")
    s.add_argument("--dev", action="append", required=True,
                   help="original device DEV[=TAG] (repeat for a multi-device snapshot)")
    s.add_argument("--storage", action="append", default=[],
                   help="DEV:START:COUNT appended before TAKE (DEV may be an original)")
    s.add_argument("--region", action="append", default=[],
                   help="DEV:START:COUNT where the writers write (default: all but storage)")
    s.add_argument("--grow", help="DEV:START:COUNT:STEP: on each low_free_space event after "
                   "CREATE append the next STEP sectors of this pool")
    s.add_argument("--attach", metavar="ID", help="use a snapshot taken by someone else "
                   "(devices filled with 'stamp.py fill' before TAKE; implies --no-fill)")
    s.add_argument("--no-fill", action="store_true")
    s.add_argument("--writers", type=int, default=4)
    s.add_argument("--writes", type=int, default=400, help="writes per writer at most")
    s.add_argument("--seconds", type=float, default=30, help="writers stop after this")
    s.add_argument("--max-io", type=int, default=0, help="largest write in sectors")
    s.add_argument("--via", metavar="PATH:OFFSET",
                   help="write to the first --dev through PATH (a partition of it, a dm "
                   "device on it) whose sector 0 is its sector OFFSET")
    s.add_argument("--take-during-writes", type=float, default=0, metavar="SECONDS",
                   help="start the writers first and TAKE after SECONDS; check that the "
                   "image is one point in time")
    s.add_argument("--sweep", action="store_true",
                   help="each writer walks once through its share of the regions (every "
                   "chunk gets written) instead of writing at random places")
    s.add_argument("--chunk-sectors", type=int, default=0, help="override the chunk size")
    s.add_argument("--image-writes", type=int, default=0)
    s.add_argument("--zeroout", action="store_true", help="also BLKZEROOUT")
    s.add_argument("--discard", action="store_true", help="also BLKDISCARD (brd: zeroes pages)")
    s.add_argument("--check-storage", action="store_true",
                   help="check what the storage ranges hold")
    s.add_argument("--overflow", action="store_true",
                   help="storage is too small: expect one corrupted event (ENOSPC) and EIO "
                   "from the images; the originals must stay correct")
    s.add_argument("--corrupt-errno", type=int, default=errno.ENOSPC,
                   help="err_code the corrupted event must carry (0: any positive errno)")
    s.add_argument("--io-errors", action="store_true",
                   help="faults are injected on the originals while the writers run: a failed "
                   "write leaves each of its sectors old or new, failed reads are counted "
                   "(the final checks run after the faults stop and must read everything)")
    s.add_argument("--exclude", action="append", default=[],
                   help="DEV:START:COUNT neither written nor checked (e.g. another "
                   "snapshot's storage)")
    s.add_argument("--no-storage-fill", action="store_true",
                   help="do not fill or check separate storage devices")
    s.add_argument("--events", action="store_true", help="watch events (no corrupted one)")
    s.add_argument("--at", metavar="SECONDS:CMD",
                   help="run the shell command CMD SECONDS after the writers start (the final "
                   "checks wait for it to finish)")
    s.add_argument("--keep", action="store_true", help="do not destroy the snapshot")
    s.add_argument("--seed", type=int, default=1)
    s.add_argument("--timeout", type=float, default=170,
                   help="dump the threads' stacks and exit after this many seconds")
    a = p.parse_args()
    if a.op == "run" and a.attach:
        a.no_fill = True
    try:
        rc = {"fill": cmd_fill, "check-fill": cmd_check_fill, "chunk": cmd_chunk,
              "read-loop": cmd_read_loop, "run": cmd_run, "fiemap": cmd_fiemap}[a.op](a)
    except (OSError, ValueError, RuntimeError) as e:
        print(f"stamp.py: {e}", file=sys.stderr)
        rc = 2
    sys.stdout.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
