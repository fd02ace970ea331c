#!/usr/bin/python3
"""Model check of blksnap change tracking (CBT), with raw ioctls.

    cbt_model.py [options] DEV[=TARGET[@SECTOR],...]...

Runs snapshot cycles over the block devices DEV (all in one snapshot).
Each cycle writes to the devices at random (buffered writes of unaligned
byte ranges followed by fsync, O_DIRECT writes, BLKDISCARD and BLKZEROOUT
where the device supports them; random sizes and offsets, many straddling
tracking-block boundaries), keeps its own model of the two CBT tables of
each device, then creates and takes a snapshot, reads the CBT map with
TRACKER_READ_CBT_MAP in pieces of random sizes at random offsets, compares
it with the model byte for byte, checks the tracker's cbt_info (block size
and count computed here from the module parameters and the device size,
capacity, snap_number, generation_id), optionally writes more and marks
blocks dirty while the snapshot is held, reads again, and destroys the
snapshot.

Writes go to DEV itself, or to the TARGETs given after "=": other block
devices that map linearly onto DEV, starting at SECTOR of DEV (a partition
of DEV finds its start itself; a dm-linear device needs @SECTOR). Name DEV
among its own targets to write to it too. A target named for several DEVs
(a partition of a tracked disk that is tracked too) changes all of them.

The model's rules (the module's documented behaviour): a new tracker has
previous = 0, active = 1, a random generation_id and zeroed tables. I/O
raises the active table's bytes of the blocks it touches to the active
number. TAKE copies the active table into the readable one, previous =
active and active += 1; when active would reach 256, the active table is
zeroed, active = 1 and the generation_id changes. After a capacity change,
the next TAKE starts over: new geometry and generation, zeroed tables,
then the switch (so snap_number = 1). cbt_info.snap_number = previous.
MARK_DIRTY_BLOCKS raises the active table to active and the readable one
to previous. READ_CBT_MAP works only while the snapshot is taken (EPERM
otherwise) and its table does not change while the snapshot is held.

On a mismatch prints the first differing blocks with the operations that
touched them, the seed, and exits 1. Exit 2 for usage or setup errors.
The last line is "summary: ..." with the counts.
"""

import argparse
import ctypes
import errno
import fcntl
import mmap
import os
import random
import struct
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bsctl  # noqa: E402

BLKGETSIZE64 = 0x80081272
BLKSSZGET = 0x1268
BLKBSZGET = 0x80081270
BLKDISCARD = 0x1277
BLKZEROOUT = 0x127F
LOOP_SET_CAPACITY = 0x4C07

PARAMS_DIR = "/sys/module/blksnap/parameters"


class Mismatch(Exception):
    pass


class SetupError(Exception):
    pass


def log(*a):
    print(*a, flush=True)


def read_param(name):
    with open(os.path.join(PARAMS_DIR, name)) as f:
        return int(f.read().strip())


def geometry(cap_bytes, min_shift, max_shift, max_count):
    """(block size, block count) the way the module computes them."""
    shift = max(min_shift, 9)

    def count(s):
        return -(-cap_bytes // (1 << s))
    while count(shift) > max_count and shift < max_shift:
        shift += 1
    return 1 << shift, count(shift)


def dev_size(fd):
    buf = bytearray(8)
    fcntl.ioctl(fd, BLKGETSIZE64, buf)
    return struct.unpack("<Q", buf)[0]


def dev_lbs(fd):
    buf = bytearray(4)
    fcntl.ioctl(fd, BLKSSZGET, buf)
    return struct.unpack("<I", buf)[0]


def dev_bsz(fd):
    """The block size of the device's page cache (buffer size)."""
    buf = bytearray(8)
    fcntl.ioctl(fd, BLKBSZGET, buf)
    return struct.unpack_from("<I", buf)[0]


def sysfs_dir(devno):
    return os.path.realpath(f"/sys/dev/block/{devno[0]}:{devno[1]}")


def partition_start(target_devno, disk_devno):
    """Start sector of a partition of disk, or None if it is not one."""
    d = sysfs_dir(target_devno)
    try:
        with open(os.path.join(d, "partition")):
            pass
        with open(os.path.join(d, "start")) as f:
            start = int(f.read())
        with open(os.path.join(os.path.dirname(d), "dev")) as f:
            mj, mn = f.read().strip().split(":")
    except OSError:
        return None
    if (int(mj), int(mn)) != tuple(disk_devno):
        return None
    return start


class Target:
    """Something the test writes to, mapped linearly onto one or more tracked
    devices (maps: [(Model, byte offset on it)])."""

    def __init__(self, path):
        self.path = path
        self.maps = []
        self.fd = os.open(path, os.O_RDWR)
        self.dfd = os.open(path, os.O_RDWR | os.O_DIRECT)
        self.lbs = dev_lbs(self.fd)
        self.refresh()
        self.can_discard = True
        self.can_zeroout = True

    def refresh(self):
        self.size = dev_size(self.fd)
        self.bsz = dev_bsz(self.fd)

    def offset_on(self, m):
        return next(off for mm, off in self.maps if mm is m)

    def close(self):
        for fd in (self.fd, self.dfd):
            try:
                os.close(fd)
            except OSError:
                pass


class Model:
    """What one device's tracker should hold."""

    def __init__(self, path, devno, params, log_ops):
        self.path = path
        self.devno = devno
        self.params = params
        self.fd = os.open(path, os.O_RDONLY)
        self.capacity = dev_size(self.fd)
        self.blk_size, self.blk_count = geometry(self.capacity, *params)
        self.active_tab = bytearray(self.blk_count)
        self.readable = bytearray(self.blk_count)
        self.previous = 0
        self.active = 1
        self.generation = None  # learnt at the first look
        self.synced = True  # False: the tables are unknown until the next TAKE
        self.pending_reset = False
        self.targets = []
        self.log_ops = log_ops
        self.ops = []  # (cycle, phase, description, first block, last block)
        self.takes = 0
        self.generation_changes = 0
        self.resets = 0

    def start_unknown(self):
        self.synced = False

    def blocks(self, start, length):
        if length <= 0:
            return None
        end = min(start + length, self.capacity)
        if start >= end:
            return None
        return start // self.blk_size, (end - 1) // self.blk_size

    def mark(self, start, length, desc, cycle, phase):
        r = self.blocks(start, length)
        if r is None:
            return
        a, b = r
        n = self.active
        t = self.active_tab
        for i in range(a, b + 1):
            if t[i] < n:
                t[i] = n
        if self.log_ops:
            self.ops.append((cycle, phase, desc, a, b))

    def mark_dirty(self, start, length, desc, cycle, phase):
        r = self.blocks(start, length)
        if r is None:
            return
        a, b = r
        for i in range(a, b + 1):
            if self.active_tab[i] < self.active:
                self.active_tab[i] = self.active
            if self.readable[i] < self.previous:
                self.readable[i] = self.previous
        if self.log_ops:
            self.ops.append((cycle, phase, desc, a, b))

    def take(self):
        """The model's TAKE; returns whether the generation must change."""
        self.takes += 1
        if self.pending_reset:
            self.pending_reset = False
            self.resets += 1
            self.capacity = dev_size(self.fd)
            self.blk_size, self.blk_count = geometry(self.capacity, *self.params)
            self.active_tab = bytearray(self.blk_count)
            self.readable = bytearray(self.blk_count)
            self.previous = 1
            self.active = 2
            self.synced = True
            return True
        self.readable = bytearray(self.active_tab)
        self.previous = self.active
        if self.active == 255:
            self.active = 1
            self.active_tab = bytearray(self.blk_count)
            return True
        self.active += 1
        return False

    def sync_from(self, info, table):
        """Adopts the observed state right after a TAKE (unknown history)."""
        self.previous = info.snap_number
        self.readable = bytearray(table)
        if self.previous == 255:
            self.active = 1
            self.active_tab = bytearray(self.blk_count)
        else:
            self.active = self.previous + 1
            self.active_tab = bytearray(table)
        self.generation = info.generation
        self.synced = True

    def ops_touching(self, blk, limit=6):
        hits = [o for o in self.ops if o[3] <= blk <= o[4]]
        return hits[-limit:]


class Checker:
    def __init__(self, a):
        self.a = a
        self.rng = random.Random(a.seed)
        self.ctl = bsctl.Ctl()
        self.params = (read_param("tracking_block_minimum_shift"),
                       read_param("tracking_block_maximum_shift"),
                       read_param("tracking_block_maximum_count"))
        self.models = []
        self.targets = {}  # path -> Target
        self.kinds = [k for k in a.kinds.split(",") if k]
        self.counts = {k: 0 for k in ("buffered", "direct", "discard", "zeroout", "markdirty")}
        self.reads = 0
        self.sid = None
        self.phase = ""
        self.cycle = 0

    # ---------------- setup
    def setup(self):
        for spec in self.a.devices:
            path, _, tspec = spec.partition("=")
            devno = bsctl.parse_dev(path)
            m = Model(path, devno, self.params, not self.a.no_op_log)
            specs = tspec.split(",") if tspec else [path]
            for ts in specs:
                tpath, _, off = ts.partition("@")
                if off:
                    off = int(off, 0)
                elif bsctl.parse_dev(tpath) == devno:
                    off = 0
                else:
                    off = partition_start(bsctl.parse_dev(tpath), devno)
                    if off is None:
                        raise SetupError(f"{tpath}: not a partition of {path}; give @SECTOR")
                t = self.targets.get(tpath)
                if t is None:
                    t = self.targets[tpath] = Target(tpath)
                t.maps.append((m, off * 512))
                m.targets.append(t)
            self.models.append(m)
        log(f"# seed={self.a.seed} params(min_shift,max_shift,max_count)={self.params}")
        for m in self.models:
            log(f"# {m.path} {m.devno[0]}:{m.devno[1]} capacity={m.capacity} "
                f"expect blk_size={m.blk_size} blk_count={m.blk_count}; targets: " +
                ", ".join(f"{t.path}@{t.offset_on(m) // 512} ({t.size} bytes, lbs {t.lbs}, "
                          f"bsz {t.bsz})"
                          for t in m.targets))
            info = self.ctl.info(m.devno)
            if info is not None:
                if self.a.reuse:
                    log(f"# {m.path}: reusing its tracker ({info.line()})")
                    m.start_unknown()
                    continue
                try:
                    self.ctl.tracker_remove(m.devno)
                except OSError as e:
                    raise SetupError(f"{m.path}: cannot remove its old tracker: "
                                     f"{bsctl.errname(e.errno)}")
                log(f"# {m.path}: removed its old tracker")
            elif self.a.reuse:
                raise SetupError(f"{m.path}: --reuse, but it is not tracked")

    # ---------------- checks
    def fail(self, msg):
        raise Mismatch(msg)

    def expect_errno(self, want, what, fn, *args):
        try:
            fn(*args)
        except OSError as e:
            if e.errno != want:
                self.fail(f"{what}: expected {errno.errorcode[want]}, got "
                          f"{bsctl.errname(e.errno)}")
            return
        self.fail(f"{what}: expected {errno.errorcode[want]}, but it succeeded")

    def check_info(self, m, when, generation_may_change=False):
        info = self.ctl.info(m.devno)
        if info is None:
            self.fail(f"{m.path}: not listed by TRACKER_COLLECT ({when})")
        problems = []
        geo = [(m.blk_size, m.blk_count, m.capacity)]
        if m.pending_reset:
            # Grown, not taken yet: either the old or the new geometry.
            cap = dev_size(m.fd)
            geo.append(geometry(cap, *self.params) + (cap,))
        if (info.blk_size, info.blk_count, info.capacity) in geo:
            pass
        elif (info.blk_size, info.blk_count) not in [g[:2] for g in geo]:
            problems.append(f"blk_size/blk_count {info.blk_size}/{info.blk_count}, "
                            f"expected {m.blk_size}/{m.blk_count} (capacity {m.capacity}, "
                            f"params {self.params})")
        else:
            problems.append(f"device_capacity {info.capacity}, expected {m.capacity}")
        if m.synced and info.snap_number != m.previous:
            problems.append(f"snap_number {info.snap_number}, expected {m.previous}")
        if m.synced and m.generation is not None and not generation_may_change:
            if info.generation != m.generation:
                problems.append(f"generation_id changed: {m.generation.hex()} -> "
                                f"{info.generation.hex()}")
        if info.generation == bytes(16):
            problems.append("generation_id is all zeroes")
        if problems:
            self.fail(f"{m.path}: cbt_info {when}: " + "; ".join(problems) +
                      f"\n  got: {info.line()}")
        return info

    def read_pieces(self, m):
        """The whole readable table, in random pieces."""
        out = bytearray()
        n = m.blk_count
        calls = 0
        while True:
            left = n - len(out)
            r = self.rng.random()
            if r < 0.3:
                length = self.rng.randint(1, 16)
            elif r < 0.6:
                length = self.rng.randint(1, max(1, left))
            elif r < 0.8:
                length = max(1, left) + self.rng.randint(0, 4096)
            else:
                length = self.rng.randint(1, 4096)
            if calls > 400:
                length = max(1, left) + 1
            chunk = self.read_checked(m, len(out), length)
            calls += 1
            if not chunk:
                break
            out += chunk
            if len(out) > n:
                self.fail(f"{m.path}: READ_CBT_MAP returned more than blk_count={n} bytes")
        return bytes(out)

    def read_checked(self, m, offset, length):
        """One READ_CBT_MAP with canary bytes around what it may fill."""
        canary = 0xA5
        pad = 64
        buf = ctypes.create_string_buffer(bytes([canary]) * (length + pad), length + pad)
        try:
            ret = self.ctl.read_cbt_raw(m.devno, offset, length, buf)
        except OSError as e:
            self.fail(f"{m.path}: READ_CBT_MAP offset={offset} length={length}: "
                      f"{bsctl.errname(e.errno)}")
        self.reads += 1
        want = max(0, min(length, m.blk_count - offset))
        if ret != want:
            self.fail(f"{m.path}: READ_CBT_MAP offset={offset} length={length} returned "
                      f"{ret}, expected {want} (blk_count {m.blk_count})")
        raw = buf.raw
        if raw[ret:] != bytes([canary]) * (length + pad - ret):
            bad = next(i for i in range(ret, length + pad) if raw[i] != canary)
            self.fail(f"{m.path}: READ_CBT_MAP offset={offset} length={length} returned "
                      f"{ret} but changed the buffer at byte {bad}")
        return raw[:ret]

    def random_reads(self, m, table, count):
        for _ in range(count):
            r = self.rng.random()
            if r < 0.1:
                off = m.blk_count + self.rng.randint(0, 3)
            elif r < 0.2:
                off = max(0, m.blk_count - self.rng.randint(1, 8))
            else:
                off = self.rng.randint(0, max(0, m.blk_count - 1))
            length = self.rng.choice([0, 1, 2, 7, self.rng.randint(1, 64),
                                      self.rng.randint(1, m.blk_count + 8)])
            got = self.read_checked(m, off, length)
            if got != table[off:off + length]:
                self.fail(f"{m.path}: READ_CBT_MAP offset={off} length={length} differs "
                          f"from the same bytes of the whole-table read")

    def compare(self, m, got, when):
        want = bytes(m.readable)
        if got == want:
            return
        lines = [f"{m.path}: CBT map {when} differs from the model "
                 f"(snap_number {m.previous}, active {m.active}, blk_size {m.blk_size}, "
                 f"blk_count {m.blk_count}, got {len(got)} bytes)"]
        diffs = [i for i in range(max(len(got), len(want)))
                 if (got[i] if i < len(got) else None) != (want[i] if i < len(want) else None)]
        lines.append(f"  {len(diffs)} differing blocks; the first:")
        for i in diffs[:16]:
            g = got[i] if i < len(got) else None
            w = want[i] if i < len(want) else None
            lines.append(f"  block {i} (bytes {i * m.blk_size}..{(i + 1) * m.blk_size - 1}): "
                         f"module {g}, model {w}")
            for o in m.ops_touching(i):
                lines.append(f"      cycle {o[0]} {o[1]}: {o[2]} -> blocks {o[3]}..{o[4]}")
        self.fail("\n".join(lines))

    # ---------------- I/O
    def pick_range(self, m, t, align, cap=4 << 20):
        """A random [offset, length) inside target t, a multiple of align,
        at most cap bytes long (None: no limit)."""
        size = t.size - t.size % align
        if size < align:
            return None
        bs = m.blk_size
        r = self.rng.random()
        if r < 0.4:
            length = self.rng.randint(1, 16) if align == 1 else align * self.rng.randint(1, 4)
        elif r < 0.8:
            length = self.rng.randint(1, 3 * bs)
        elif r < 0.95:
            length = self.rng.randint(bs, 5 * bs)
        else:
            length = self.rng.randint(1, max(1, size // 4))
        length = max(align, length - length % align)
        length = min(length, size, cap or size)
        r = self.rng.random()
        if r < 0.45:
            # Straddle a tracking-block boundary of the device.
            toff = t.offset_on(m)
            lo = toff // bs + 1
            hi = (toff + size) // bs
            if hi >= lo:
                b = self.rng.randint(lo, hi) * bs - toff
                back = self.rng.randint(1, max(1, length - 1))
                off = b - back
            else:
                off = self.rng.randint(0, size - length)
        elif r < 0.55:
            off = size - length  # the end of the target
        elif r < 0.6:
            off = 0
        else:
            off = self.rng.randint(0, size - length)
        off -= off % align
        off = max(0, min(off, size - length))
        return off, length

    def do_op(self, m, cycle, phase):
        t = self.rng.choice(m.targets)
        kinds = [k for k in self.kinds
                 if (k != "discard" or t.can_discard) and (k != "zeroout" or t.can_zeroout)]
        kind = self.rng.choice(kinds)
        if kind == "buffered":
            rr = self.pick_range(m, t, 1)
            if rr is None:
                return
            off, length = rr
            os.pwrite(t.fd, self.rng.randbytes(length), off)
            os.fsync(t.fd)
            # Write-back writes whole page-cache blocks (buffers).
            lo = off - off % t.bsz
            hi = min(-(-(off + length) // t.bsz) * t.bsz, t.size)
            self.counts[kind] += 1
            for mm, toff in t.maps:
                mm.mark(toff + lo, hi - lo, f"buffered {t.path} bytes {off}+{length} "
                        f"(buffers {lo}..{hi - 1})", cycle, phase)
            return
        elif kind == "direct":
            rr = self.pick_range(m, t, max(t.lbs, 512))
            if rr is None:
                return
            off, length = rr
            buf = mmap.mmap(-1, length)
            buf.write(self.rng.randbytes(length))
            try:
                n = os.pwritev(t.dfd, [buf], off)
            finally:
                buf.close()
            if n != length:
                raise OSError(errno.EIO, f"short O_DIRECT write {n} of {length}")
        else:
            rr = self.pick_range(m, t, max(t.lbs, 512), cap=None)
            if rr is None:
                return
            off, length = rr
            req = BLKDISCARD if kind == "discard" else BLKZEROOUT
            try:
                fcntl.ioctl(t.fd, req, struct.pack("<QQ", off, length))
            except OSError as e:
                if e.errno in (errno.EOPNOTSUPP, errno.ENOTTY):
                    log(f"# {t.path}: {kind} not supported ({bsctl.errname(e.errno)}); "
                        "not used any more")
                    if kind == "discard":
                        t.can_discard = False
                    else:
                        t.can_zeroout = False
                    return
                raise
        self.counts[kind] += 1
        desc = f"{kind} {t.path} bytes {off}+{length}"
        for mm, toff in t.maps:
            mm.mark(toff + off, length, desc, cycle, phase)

    def do_mark_dirty(self, m, cycle, phase):
        sectors = m.capacity // 512
        if sectors == 0:
            return
        ranges = []
        for _ in range(self.rng.randint(1, 4)):
            start = self.rng.randint(0, sectors - 1)
            count = self.rng.randint(1, min(sectors - start, 3 * m.blk_size // 512))
            ranges.append((start, count))
        try:
            self.ctl.mark_dirty(m.devno, ranges)
        except OSError as e:
            self.fail(f"{m.path}: MARK_DIRTY_BLOCKS {ranges}: {bsctl.errname(e.errno)}")
        for s, c in ranges:
            m.mark_dirty(s * 512, c * 512, f"mark-dirty sectors {s}+{c}", cycle, phase)
        self.counts["markdirty"] += 1

    def ops(self, n, cycle, phase):
        for _ in range(n):
            self.do_op(self.rng.choice(self.models), cycle, phase)

    def grow(self, m, new_size):
        name = os.path.basename(sysfs_dir(m.devno))
        with open(f"/sys/block/{name}/loop/backing_file") as f:
            backing = f.read().strip()
        os.truncate(backing, new_size)
        fd = os.open(m.path, os.O_RDONLY)
        try:
            fcntl.ioctl(fd, LOOP_SET_CAPACITY, 0)
        finally:
            os.close(fd)
        for t in m.targets:
            t.refresh()
        log(f"# cycle {self.cycle}: {m.path} grown to {dev_size(m.fd)} bytes")
        m.pending_reset = True

    # ---------------- the cycles
    def run_cycle(self, c):
        a = self.a
        self.cycle = c
        grow_here = a.grow_at is not None and a.grow_at[0] == c
        if c > 0:
            self.ops(a.ops_before, c, "before create")
        if grow_here:
            self.grow(self.models[0], a.grow_at[1])
        devs = [m.devno for m in self.models]
        try:
            self.sid = self.ctl.create(devs)
        except OSError as e:
            self.fail(f"SNAPSHOT_CREATE: {bsctl.errname(e.errno)}")
        for m in self.models:
            info = self.check_info(m, "after create")
            if m.generation is None and m.synced:
                m.generation = info.generation
            self.expect_errno(errno.EPERM, f"{m.path}: READ_CBT_MAP before TAKE",
                              self.ctl.read_cbt, m.devno, 0, 16)
        if not grow_here:
            self.ops(a.ops_between, c, "between create and take")
        try:
            self.ctl.take(self.sid)
        except OSError as e:
            self.fail(f"SNAPSHOT_TAKE: {bsctl.errname(e.errno)}")
        tables = {}
        for m in self.models:
            if not m.synced:
                info = self.check_info(m, "after the first take (unknown history)")
                table = self.read_pieces(m)
                m.sync_from(info, table)
                tables[m.path] = table
                log(f"# {m.path}: synced at snap_number {m.previous}")
                continue
            old_gen = m.generation
            new_gen = m.take()
            info = self.check_info(m, "after take", generation_may_change=new_gen)
            if new_gen:
                if info.generation == old_gen:
                    self.fail(f"{m.path}: take {m.takes}: generation_id did not change "
                              f"(snap_number {info.snap_number}; "
                              f"{'capacity change' if m.resets and m.previous == 1 else 'wrap'})")
                m.generation = info.generation
                m.generation_changes += 1
                log(f"# cycle {c}: {m.path}: new generation {info.generation.hex()} at "
                    f"snap_number {info.snap_number} as expected")
            table = self.read_pieces(m)
            self.compare(m, table, f"after take {m.takes} (cycle {c})")
            tables[m.path] = table
        for m in self.models:
            self.random_reads(m, tables[m.path], a.random_reads)
        # While the snapshot is held: more I/O, then the table must be the same.
        self.ops(a.ops_held, c, "while held")
        for m in self.models:
            if a.ops_held:
                again = self.read_pieces(m)
                if again != tables[m.path]:
                    diffs = [i for i in range(min(len(again), len(tables[m.path])))
                             if again[i] != tables[m.path][i]]
                    self.fail(f"{m.path}: the readable table changed while the snapshot "
                              f"was held ({len(diffs)} blocks differ, first "
                              f"{diffs[:8]}; lengths {len(tables[m.path])} -> {len(again)})")
            for _ in range(a.mark_dirty):
                self.do_mark_dirty(m, c, "mark-dirty while held")
            if a.mark_dirty:
                again = self.read_pieces(m)
                self.compare(m, again, f"after MARK_DIRTY_BLOCKS (cycle {c})")
        try:
            self.ctl.take(self.sid)
            self.fail("a second SNAPSHOT_TAKE of the same snapshot succeeded")
        except OSError as e:
            if e.errno != errno.EALREADY:
                self.fail(f"second SNAPSHOT_TAKE: expected EALREADY, got "
                          f"{bsctl.errname(e.errno)}")
        sid, self.sid = self.sid, None
        try:
            self.ctl.destroy(sid)
        except OSError as e:
            self.fail(f"SNAPSHOT_DESTROY: {bsctl.errname(e.errno)}")
        for m in self.models:
            self.expect_errno(errno.EPERM, f"{m.path}: READ_CBT_MAP after DESTROY",
                              self.ctl.read_cbt, m.devno, 0, 16)
            self.check_info(m, "after destroy")

    def run(self):
        self.setup()
        t0 = time.monotonic()
        for c in range(self.a.cycles):
            self.run_cycle(c)
            if self.a.verbose or (c + 1) % 50 == 0:
                log(f"# cycle {c} done ({time.monotonic() - t0:.1f}s)")
        for m in self.models:
            if self.a.expect_generation_changes is not None and \
                    m.generation_changes != self.a.expect_generation_changes:
                self.fail(f"{m.path}: {m.generation_changes} generation changes, expected "
                          f"{self.a.expect_generation_changes}")

    def cleanup(self):
        if self.sid is not None:
            try:
                self.ctl.destroy(self.sid)
            except OSError as e:
                log(f"# cleanup: SNAPSHOT_DESTROY: {bsctl.errname(e.errno)}")
        for t in self.targets.values():
            t.close()
        for m in self.models:
            if not self.a.keep_tracker:
                try:
                    self.ctl.tracker_remove(m.devno)
                except OSError as e:
                    log(f"# cleanup: TRACKER_REMOVE {m.path}: {bsctl.errname(e.errno)}")
                    continue
                if self.ctl.info(m.devno) is not None:
                    raise Mismatch(f"{m.path}: still listed after TRACKER_REMOVE")

    def summary(self):
        ms = " ".join(f"{m.path}:takes={m.takes},gen_changes={m.generation_changes},"
                      f"resets={m.resets},snap={m.previous}" for m in self.models)
        ops = " ".join(f"{k}={v}" for k, v in self.counts.items())
        return f"summary: {ops} reads={self.reads} {ms}"


def main():
    os.environ["LANGUAGE"] = "C"  # no gettext catalogue lookups
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="\n".join(__doc__.splitlines()[2:]))
    p.add_argument("devices", nargs="+", metavar="DEV[=TARGET[@SECTOR],...]")
    p.add_argument("--cycles", type=int, default=10)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ops-before", type=int, default=30, help="I/O before each create")
    p.add_argument("--ops-between", type=int, default=5, help="I/O between create and take")
    p.add_argument("--ops-held", type=int, default=10, help="I/O while the snapshot is held")
    p.add_argument("--mark-dirty", type=int, default=0,
                   help="MARK_DIRTY_BLOCKS calls per device while held")
    p.add_argument("--random-reads", type=int, default=10,
                   help="extra READ_CBT_MAP calls at random offsets per cycle")
    p.add_argument("--kinds", default="buffered,direct,discard,zeroout")
    p.add_argument("--grow-at", metavar="CYCLE:BYTES",
                   help="grow the first device (a loop device) before that cycle's create")
    p.add_argument("--expect-generation-changes", type=int)
    p.add_argument("--reuse", action="store_true",
                   help="keep existing trackers (history unknown until the first take)")
    p.add_argument("--keep-tracker", action="store_true", help="do not remove the trackers")
    p.add_argument("--no-op-log", action="store_true", help="do not remember operations")
    p.add_argument("-v", "--verbose", action="store_true")
    a = p.parse_args()
    if a.seed is None:
        a.seed = int.from_bytes(os.urandom(4), "little")
    if a.grow_at:
        c, _, b = a.grow_at.partition(":")
        a.grow_at = (int(c), int(b, 0))
    chk = Checker(a)
    rc = 0
    try:
        chk.run()
    except Mismatch as e:
        log(f"MISMATCH in cycle {chk.cycle}: {e}")
        log(f"# reproduce with --seed {a.seed}")
        rc = 1
    except SetupError as e:
        log(f"SETUP ERROR: {e}")
        rc = 2
    except OSError as e:
        log(f"ERROR in cycle {chk.cycle}: {e}")
        log(f"# seed {a.seed}")
        rc = 1
    finally:
        try:
            chk.cleanup()
        except Mismatch as e:
            log(f"MISMATCH at cleanup: {e}")
            rc = 1
        except OSError as e:
            log(f"ERROR at cleanup: {e}")
            rc = 1
    log(chk.summary())
    sys.exit(rc)


if __name__ == "__main__":
    main()
