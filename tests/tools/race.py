#!/usr/bin/python3
"""Races between blksnap's control operations and I/O, repeated in rounds,
with sector-stamp checks (the stamps and models of tests/tools/stamp.py).

Every write carries stamps naming its device, LBA, writer and sequence
number; an in-memory model holds what each original must contain. Each
subcommand runs ROUNDS rounds and checks, at the end of every round (with
the writers paused), that every original sector holds exactly the newest
data written to it. A thread that does not finish in time is reported as a
hang (FAIL) with the threads' stacks. Failures are "FAIL ..." lines; the last
line is "RESULT: ok" or "RESULT: N failure(s)" (exit 0 or 1).

    race.py destroy-cow --dev DEV... --storage DEV:S:C... [--rounds N]
        SNAPSHOT_DESTROY while writers make first writes to every chunk of
        the originals (copy-on-write in flight) and an image reader runs:
        DESTROY returns 0 at a random point of the writes, the image goes,
        every write succeeds, the originals hold exactly what was written;
        an image read that succeeds returns TAKE data.
    race.py read-vs-cow --dev DEV... --storage DEV:S:C... [--rounds N] [--pairs P]
        pairs of threads meet at each chunk: one makes the first write to
        it on the original while the other reads the chunk from the image;
        image reads must return TAKE data, originals read back the write.
    race.py remove-io --dev DEV [--rounds N]
        TRACKER_REMOVE (no snapshot) while writers write the device, then
        tracking re-added by SNAPSHOT_CREATE (new generation_id, and the
        blocks written between CREATE and TAKE marked in the map; then
        TRACKER_REMOVE fails with EBUSY until DESTROY), in rounds; writes
        never fail; at the end a snapshot taken with the writers stopped
        shows exactly the model.
    race.py rmmod-io --dev DEV... --storage DEV:S:C... --ko PATH [--rounds N]
        delete_module(blksnap) while writers write the originals of a taken
        snapshot (trackers present, /dev/blksnap closed): it fails with
        EBUSY/EAGAIN while an image is held open (and read), and otherwise
        succeeds or fails with EBUSY/EAGAIN; after it fails the image is
        closed and unloading must then succeed; writes never fail or get
        lost; the module is reloaded for the next round.

DEV is a block device path; S:C are sector ranges (start:count).
"""

import argparse
import ctypes
import errno
import faulthandler
import itertools
import os
import random
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bsctl  # noqa: E402
import stamp  # noqa: E402
from stamp import SECTOR, AlignedBuf, log, errname  # noqa: E402

HANG = 120.0  # seconds a thread or call may take before it counts as hung


class Target:
    """An original device and the model of its content."""

    def __init__(self, path):
        self.dev = stamp.Dev(path)
        self.path = path
        self.model = None
        self.lock = stamp.RangeLock()
        self.chunk = None
        self.image_model = None
        self.image = None
        self.image_fd = -1

    def fill(self):
        self.model = bytearray(self.dev.sectors * SECTOR)
        stamp.fill_dev(self.dev, [(0, self.dev.sectors)], self.model)

    def chunks(self):
        return -(-self.dev.sectors // self.chunk)


class Gate:
    """Lets the main thread stop the writers between two writes."""

    def __init__(self):
        self.cv = threading.Condition()
        self.paused = False
        self.active = 0

    def enter(self):
        with self.cv:
            while self.paused:
                self.cv.wait()
            self.active += 1

    def leave(self):
        with self.cv:
            self.active -= 1
            self.cv.notify_all()

    def pause(self, timeout=HANG):
        end = time.monotonic() + timeout
        with self.cv:
            self.paused = True
            while self.active:
                left = end - time.monotonic()
                if left <= 0:
                    return False
                self.cv.wait(left)
        return True

    def resume(self):
        with self.cv:
            self.paused = False
            self.cv.notify_all()


class Race:
    def __init__(self, a):
        self.a = a
        self.report = stamp.Report()
        self.rng = random.Random(a.seed)
        self.seq = itertools.count(1)
        self.targets = [Target(p) for p in a.dev]
        self.storage = []
        for spec in a.storage:
            path, rest = spec.split(":", 1)
            s, c = stamp.parse_range(rest)
            self.storage.append((bsctl.parse_dev(path), s, c))
        self.stats_lock = threading.Lock()
        self.stats = {"writes": 0, "write_errors": 0, "image_reads": 0, "image_read_errors": 0}
        self.inflight = 0
        self.gate = Gate()
        self.history = []  # (target, lba, n, t0, t1) of every write, for remove-io
        self.keep_history = False

    def bump(self, key, n=1):
        with self.stats_lock:
            self.stats[key] += n

    def hung(self, what):
        self.report.fail(f"{what} did not finish within {HANG:.0f} s (hang); thread stacks follow")
        faulthandler.dump_traceback(all_threads=True)
        sys.stdout.flush()
        os._exit(1)

    def join(self, threads, what):
        end = time.monotonic() + HANG
        for th in threads:
            th.join(max(0.0, end - time.monotonic()))
            if th.is_alive():
                self.hung(f"{what} ({th.name})")

    # ---- I/O
    def write(self, t, lba, n, wid, buf):
        """One stamped write; the model follows. False if it failed."""
        with t.lock.hold(lba, n):
            seq = next(self.seq)
            data = stamp.stamps(t.dev.tagb, lba, n, stamp.GEN_WRITE, wid, seq)
            with self.stats_lock:
                self.inflight += 1
            t0 = time.monotonic()
            try:
                buf.pwrite(t.dev.fd, data, lba)
            except OSError as e:
                self.bump("write_errors")
                self.report.fail(f"write of {t.dev} LBA {lba}+{n} failed: {errname(e.errno)}")
                return False
            finally:
                with self.stats_lock:
                    self.inflight -= 1
            t.model[lba * SECTOR:(lba + n) * SECTOR] = data
            if self.keep_history:
                self.history.append((t, lba, n, t0, time.monotonic()))
        self.bump("writes")
        return True

    def verify_originals(self, what):
        buf = AlignedBuf(2048 * SECTOR)
        ok = True
        for t in self.targets:
            for lba, n in stamp.blocks([(0, t.dev.sectors)], 2048):
                try:
                    got = buf.pread(t.dev.fd, n, lba)
                except OSError as e:
                    self.report.fail(f"read of {t.dev} LBA {lba}+{n}: {errname(e.errno)}")
                    return False
                exp = t.model[lba * SECTOR:(lba + n) * SECTOR]
                ok &= self.report.compare(f"original {t.dev} ({what})", lba, got, exp)
        return ok

    def verify_images(self, what):
        buf = AlignedBuf(2048 * SECTOR)
        for t in self.targets:
            for lba, n in stamp.blocks([(0, t.dev.sectors)], 2048):
                try:
                    got = buf.pread(t.image_fd, n, lba)
                except OSError as e:
                    self.report.fail(f"read of {t.image} LBA {lba}+{n}: {errname(e.errno)}")
                    return
                exp = t.image_model[lba * SECTOR:(lba + n) * SECTOR]
                self.report.compare(f"image {t.image} of {t.dev.path} ({what})", lba, got, exp)

    # ---- snapshots
    def snapshot(self, ctl, open_images=True):
        """CREATE (every target), APPEND_STORAGE, TAKE, images opened; the
        image models are the originals' models now (no writer may run)."""
        sid = ctl.create([t.dev.devno for t in self.targets])
        for dev, s, c in self.storage:
            ctl.append_storage(sid, dev, [(s, c)])
        ctl.take(sid)
        imgs = dict(stamp.collect_images(ctl, sid))
        for t in self.targets:
            t.image = stamp.image_path(imgs[t.dev.devno])
            t.image_model = bytes(t.model)
            t.image_fd = os.open(t.image, os.O_RDWR | os.O_DIRECT) if open_images else -1
        return sid

    def close_images(self):
        for t in self.targets:
            if t.image_fd >= 0:
                os.close(t.image_fd)
                t.image_fd = -1

    def image_gone(self, t, timeout=10.0):
        name = os.path.basename(t.image)
        end = time.monotonic() + timeout
        while os.path.exists(f"/sys/block/{name}") and time.monotonic() < end:
            time.sleep(0.02)
        return not os.path.exists(f"/sys/block/{name}")

    def chunk_write(self, rng, t, c):
        """(lba, n): a write inside chunk c, sometimes reaching into the next."""
        C = t.chunk
        base = c * C
        n = rng.randint(1, C) if rng.random() < 0.7 else rng.randint(1, 8)
        r = rng.random()
        if r < 0.3:
            lba = base
        elif r < 0.5:
            lba = base + C - n  # ends on the boundary
        elif r < 0.65:
            lba = base + C - max(1, n // 2)  # straddles into the next chunk
        else:
            lba = base + rng.randrange(C)
        lba = max(0, min(lba, t.dev.sectors - 1))
        n = max(1, min(n, t.dev.sectors - lba))
        return lba, n

    # ================================================================ 1
    def destroy_cow(self):
        a = self.a
        total_inflight = 0
        early = 0
        for rnd in range(a.rounds):
            with bsctl.Ctl() as ctl:
                sid = self.snapshot(ctl)
                # Every chunk of every original, shuffled, dealt to the writers.
                work = [(t, c) for t in self.targets for c in range(t.chunks())]
                self.rng.shuffle(work)
                shares = [work[w::a.writers] for w in range(a.writers)]
                done = [0]
                stop_reader = threading.Event()

                def writer(wid, items):
                    rng = random.Random(a.seed * 1000 + rnd * 10 + wid)
                    buf = AlignedBuf(2 * max(t.chunk for t in self.targets) * SECTOR)
                    for t, c in items:
                        lba, n = self.chunk_write(rng, t, c)
                        if not self.write(t, lba, n, wid, buf):
                            return
                        done[0] += 1

                def reader():
                    """Image reads during the writes and the DESTROY: any read
                    that succeeds returns TAKE data."""
                    rng = random.Random(a.seed * 77 + rnd)
                    buf = AlignedBuf(256 * SECTOR)
                    while not stop_reader.is_set():
                        t = rng.choice(self.targets)
                        c = rng.randrange(t.chunks())
                        lba, n = c * t.chunk, min(t.chunk, 256)
                        try:
                            got = buf.pread(t.image_fd, n, lba)
                        except OSError:
                            got = None
                        if got is None or len(got) < n * SECTOR:
                            # A failed read, or a short one (a deleted disk
                            # has no sectors any more): what it did return
                            # must still be TAKE data.
                            self.bump("image_read_errors")
                            if got:
                                k = len(got) // SECTOR
                                self.report.compare(f"image {t.image} short read racing DESTROY",
                                                    lba, got[:k * SECTOR],
                                                    t.image_model[lba * SECTOR:(lba + k) * SECTOR])
                            time.sleep(0.005)
                            continue
                        self.bump("image_reads")
                        self.report.compare(f"image {t.image} read racing DESTROY", lba, got,
                                            t.image_model[lba * SECTOR:(lba + n) * SECTOR])

                threads = [threading.Thread(target=writer, args=(w, shares[w]), name=f"writer{w}")
                           for w in range(a.writers)]
                rd = threading.Thread(target=reader, name="image-reader")
                # DESTROY once a random share of the first writes is done.
                at = int(len(work) * self.rng.uniform(0.02, 0.7))
                rd.start()
                for th in threads:
                    th.start()
                end = time.monotonic() + HANG
                while done[0] < at and any(th.is_alive() for th in threads):
                    if time.monotonic() > end:
                        self.hung("the writers before DESTROY")
                    time.sleep(0.001)
                before, inflight = done[0], self.inflight
                total_inflight += inflight
                t0 = time.monotonic()
                try:
                    ctl.destroy(sid)
                except OSError as e:
                    self.report.fail(f"round {rnd}: DESTROY failed: {errname(e.errno)}")
                dt = time.monotonic() - t0
                after = done[0]
                if after < len(work):
                    early += 1
                self.join(threads, "writers after DESTROY")
                stop_reader.set()
                self.join([rd], "image reader after DESTROY")
                self.close_images()
                for t in self.targets:
                    if not self.image_gone(t):
                        self.report.fail(f"round {rnd}: {t.image} still exists after DESTROY")
                if sid in ctl.snapshots():
                    self.report.fail(f"round {rnd}: SNAPSHOT_COLLECT still lists the snapshot")
                self.verify_originals(f"after DESTROY in round {rnd}")
                log(f"round {rnd}: DESTROY after {before} of {len(work)} first writes "
                    f"({inflight} writes in flight) took {dt * 1000:.1f} ms; {after} done when "
                    f"it returned")
            if self.report.failures:
                break
        s = self.stats
        log(f"destroy-cow: {rnd + 1} rounds, {s['writes']} writes, {early} DESTROYs returned "
            f"before the last first write, {total_inflight} writes in flight at DESTROY in all; "
            f"image reads {s['image_reads']} ok, {s['image_read_errors']} failed or short (after DESTROY); "
            f"{time.monotonic() - stamp.T0:.0f} s")

    # ================================================================ 3
    def read_vs_cow(self):
        a = self.a
        P = a.pairs
        for rnd in range(a.rounds):
            with bsctl.Ctl() as ctl:
                sid = self.snapshot(ctl)
                work = [(t, c) for t in self.targets for c in range(t.chunks())]
                self.rng.shuffle(work)
                shares = [work[p::P] for p in range(P)]
                barriers = [threading.Barrier(2, timeout=HANG) for _ in range(P)]
                maxc = max(t.chunk for t in self.targets)

                def writer(p):
                    rng = random.Random(a.seed * 1000 + rnd * 10 + p)
                    buf = AlignedBuf(2 * maxc * SECTOR)
                    rbuf = AlignedBuf(2 * maxc * SECTOR)
                    for t, c in shares[p]:
                        lba, n = self.chunk_write(rng, t, c)
                        try:
                            barriers[p].wait()
                        except threading.BrokenBarrierError:
                            return
                        if not self.write(t, lba, n, p, buf):
                            barriers[p].abort()
                            return
                        # The original reads back the newest data at once.
                        with t.lock.hold(lba, n):
                            got = rbuf.pread(t.dev.fd, n, lba)
                            self.report.compare(f"original {t.dev} read back after a first write",
                                                lba, got, t.model[lba * SECTOR:(lba + n) * SECTOR])

                def reader(p):
                    rng = random.Random(a.seed * 2000 + rnd * 10 + p)
                    buf = AlignedBuf(2 * maxc * SECTOR)
                    for t, c in shares[p]:
                        try:
                            barriers[p].wait()
                        except threading.BrokenBarrierError:
                            return
                        # The whole chunk, or a piece of it, as the write is made.
                        if rng.random() < 0.5:
                            lba, n = c * t.chunk, min(t.chunk, t.dev.sectors - c * t.chunk)
                        else:
                            lba, n = self.chunk_write(rng, t, c)
                        for _ in range(2):
                            try:
                                got = buf.pread(t.image_fd, n, lba)
                            except OSError as e:
                                self.report.fail(f"image read {t.image} LBA {lba}+{n}: "
                                                 f"{errname(e.errno)}")
                                barriers[p].abort()
                                return
                            self.bump("image_reads")
                            self.report.compare(f"image {t.image} read racing a first write", lba,
                                                got, t.image_model[lba * SECTOR:(lba + n) * SECTOR])

                threads = []
                for p in range(P):
                    threads.append(threading.Thread(target=writer, args=(p,), name=f"writer{p}"))
                    threads.append(threading.Thread(target=reader, args=(p,), name=f"reader{p}"))
                for th in threads:
                    th.start()
                self.join(threads, "writers and image readers")
                self.verify_images(f"after the first writes, round {rnd}")
                self.verify_originals(f"after the first writes, round {rnd}")
                self.close_images()
                ctl.destroy(sid)
                log(f"round {rnd}: {len(work)} chunks first-written while read from the image")
            if self.report.failures:
                break
        log(f"read-vs-cow: {rnd + 1} rounds, {self.stats['writes']} first writes, "
            f"{self.stats['image_reads']} image reads racing them; {time.monotonic() - stamp.T0:.0f} s")

    # ================================================================ 4
    def remove_io(self):
        a = self.a
        t = self.targets[0]
        blk = None
        stop = threading.Event()
        self.keep_history = True

        def writer(wid):
            rng = random.Random(a.seed * 1000 + wid)
            buf = AlignedBuf(256 * SECTOR)
            while not stop.is_set():
                n = rng.randint(1, 256) if rng.random() < 0.5 else rng.randint(1, 16)
                lba = rng.randrange(t.dev.sectors - n + 1)
                self.gate.enter()
                try:
                    ok = self.write(t, lba, n, wid, buf)
                finally:
                    self.gate.leave()
                if not ok:
                    return

        # A tracker to begin with.
        with bsctl.Ctl() as ctl:
            ctl.destroy(ctl.create([t.dev.devno]))
        threads = [threading.Thread(target=writer, args=(w,), name=f"writer{w}")
                   for w in range(a.writers)]
        for th in threads:
            th.start()
        removed = marked_checked = rm_inflight = 0
        for rnd in range(a.rounds):
            with bsctl.Ctl() as ctl:
                info = ctl.info(t.dev.devno)
                if info is None:
                    self.report.fail(f"round {rnd}: {t.dev} is not tracked before TRACKER_REMOVE")
                    break
                g0 = info.generation
                time.sleep(self.rng.uniform(0, 0.15))
                w0 = self.stats["writes"]
                rm_inflight += self.inflight
                try:
                    ctl.tracker_remove(t.dev.devno)
                    removed += 1
                except OSError as e:
                    self.report.fail(f"round {rnd}: TRACKER_REMOVE during writes: "
                                     f"{errname(e.errno)} (no snapshot holds the device)")
                if ctl.info(t.dev.devno) is not None:
                    self.report.fail(f"round {rnd}: still tracked after TRACKER_REMOVE")
                time.sleep(self.rng.uniform(0, 0.1))
                # Tracking back, by CREATE, while the writes go on.
                try:
                    sid = ctl.create([t.dev.devno])
                except OSError as e:
                    self.report.fail(f"round {rnd}: CREATE after TRACKER_REMOVE: {errname(e.errno)}")
                    break
                t_created = time.monotonic()
                info = ctl.info(t.dev.devno)
                if info is None:
                    self.report.fail(f"round {rnd}: not tracked after CREATE")
                elif info.generation == g0:
                    self.report.fail(f"round {rnd}: the new tracker has the old generation_id")
                blk = info.blk_size // SECTOR if info else None
                time.sleep(self.rng.uniform(0.02, 0.1))
                for dev, s, c in self.storage:
                    ctl.append_storage(sid, dev, [(s, c)])
                t_take = time.monotonic()
                ctl.take(sid)
                # The device is in a snapshot now: TRACKER_REMOVE is refused.
                try:
                    ctl.tracker_remove(t.dev.devno)
                    self.report.fail(f"round {rnd}: TRACKER_REMOVE of a device in a taken "
                                     f"snapshot succeeded")
                    break
                except OSError as e:
                    if e.errno != errno.EBUSY:
                        self.report.fail(f"round {rnd}: TRACKER_REMOVE of a device in a taken "
                                         f"snapshot: {errname(e.errno)}, expected EBUSY")
                # The writes that ran wholly between CREATE and TAKE are marked.
                if blk:
                    cbt = ctl.read_map(t.dev.devno)
                    for wt, lba, n, w_t0, w_t1 in list(self.history):
                        if wt is t and w_t0 > t_created and w_t1 < t_take:
                            for b in range(lba // blk, (lba + n - 1) // blk + 1):
                                marked_checked += 1
                                if b >= len(cbt) or cbt[b] == 0:
                                    self.report.fail(f"round {rnd}: block {b} written between "
                                                     f"CREATE and TAKE is not marked in the map")
                                    break
                ctl.destroy(sid)
                self.history.clear()
                log(f"round {rnd}: TRACKER_REMOVE after {w0} writes; tracking back by CREATE, "
                    f"new generation_id")
            if rnd % 4 == 3 or rnd == a.rounds - 1:
                if not self.gate.pause():
                    self.hung("pausing the writers")
                self.verify_originals(f"after round {rnd}")
                self.gate.resume()
            if self.report.failures:
                break
        stop.set()
        self.join(threads, "writers")
        self.verify_originals("after the writers stopped")
        # A snapshot of the re-added tracker shows exactly the model.
        with bsctl.Ctl() as ctl:
            sid = self.snapshot(ctl)
            self.verify_images("snapshot after the last re-add, writers stopped")
            self.close_images()
            ctl.destroy(sid)
        log(f"remove-io: {rnd + 1} rounds, {removed} TRACKER_REMOVEs during "
            f"{self.stats['writes']} writes ({rm_inflight} in flight at TRACKER_REMOVE in all); "
            f"{marked_checked} block marks checked; "
            f"{time.monotonic() - stamp.T0:.0f} s")

    # ================================================================ 5
    def rmmod_io(self):
        a = self.a
        libc = ctypes.CDLL(None, use_errno=True)
        stop = threading.Event()
        count = {"ok": 0, "busy": 0, "busy_open": 0, "retries": 0, "inflight": 0}

        def delete_module():
            r = libc.syscall(176, b"blksnap", os.O_NONBLOCK)  # delete_module (x86_64)
            return 0 if r == 0 else ctypes.get_errno()

        def writer(wid):
            rng = random.Random(a.seed * 1000 + wid)
            maxc = max(t.chunk for t in self.targets)
            buf = AlignedBuf(2 * maxc * SECTOR)
            while not stop.is_set():
                t = rng.choice(self.targets)
                lba, n = self.chunk_write(rng, t, rng.randrange(t.chunks()))
                self.gate.enter()
                try:
                    ok = self.write(t, lba, n, wid, buf)
                finally:
                    self.gate.leave()
                if not ok:
                    return

        def load():
            r = subprocess.run(["insmod", a.ko] + a.param, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, check=False)
            if r.returncode:
                self.report.fail(f"insmod: {r.stdout.decode(errors='replace').strip()}")
                return False
            end = time.monotonic() + 10
            while not os.path.exists(bsctl.CTL) and time.monotonic() < end:
                time.sleep(0.02)
            return True

        threads = [threading.Thread(target=writer, args=(w,), name=f"writer{w}")
                   for w in range(a.writers)]
        for th in threads:
            th.start()
        for rnd in range(a.rounds):
            t_load = time.monotonic()
            if not os.path.exists("/sys/module/blksnap") and not load():
                break
            t_load = time.monotonic() - t_load
            hold = rnd % 2 == 1  # odd rounds: an image stays open and is read
            # The snapshot is taken with the writers paused, so the images'
            # content is known; they go on at once afterwards.
            if not self.gate.pause():
                self.hung("pausing the writers")
            with bsctl.Ctl() as ctl:
                self.snapshot(ctl, open_images=hold)
            self.gate.resume()
            stop_reader = threading.Event()

            def reader():
                rng = random.Random(a.seed + rnd)
                buf = AlignedBuf(256 * SECTOR)
                while not stop_reader.is_set():
                    t = rng.choice(self.targets)
                    lba = rng.randrange(t.dev.sectors - 256)
                    try:
                        got = buf.pread(t.image_fd, 256, lba)
                    except OSError as e:
                        self.report.fail(f"image read {t.image} LBA {lba}: {errname(e.errno)} "
                                         f"(the snapshot must stay while the image is open)")
                        return
                    self.bump("image_reads")
                    self.report.compare(f"image {t.image} read during rmmod attempts", lba, got,
                                        t.image_model[lba * SECTOR:(lba + 256) * SECTOR])

            rd = threading.Thread(target=reader, name="image-reader") if hold else None
            if rd:
                rd.start()
            time.sleep(self.rng.uniform(0, 0.3))
            w0 = self.stats["writes"]
            t_unload = time.monotonic()
            count["inflight"] += self.inflight
            err = delete_module()
            if err == 0:
                count["ok"] += 1
                if hold:
                    self.report.fail(f"round {rnd}: delete_module succeeded while an image is open")
            elif err in (errno.EBUSY, errno.EAGAIN):
                count["busy_open" if hold else "busy"] += 1
            else:
                self.report.fail(f"round {rnd}: delete_module: {errname(err)}, expected success, "
                                 f"EBUSY or EAGAIN")
            if rd:
                time.sleep(0.05)
                stop_reader.set()
                self.join([rd], "image reader")
            self.close_images()
            # Now nothing holds the module: it must go, the writers still running.
            tries = 0
            while os.path.exists("/sys/module/blksnap") and tries < 100:
                tries += 1
                e2 = delete_module()
                if e2 and e2 not in (errno.EBUSY, errno.EAGAIN):
                    self.report.fail(f"round {rnd}: delete_module retry: {errname(e2)}")
                    break
                if e2:
                    time.sleep(0.05)
            count["retries"] += tries
            t_unload = time.monotonic() - t_unload
            if os.path.exists("/sys/module/blksnap"):
                self.report.fail(f"round {rnd}: the module stays loaded with nothing open "
                                 f"({tries} attempts)")
                break
            for t in self.targets:
                if not self.image_gone(t):
                    self.report.fail(f"round {rnd}: {t.image} still exists after unload")
            if not self.gate.pause():
                self.hung("pausing the writers after unload")
            self.verify_originals(f"after unload in round {rnd}")
            self.gate.resume()
            log(f"round {rnd}: delete_module {'with an image open and read' if hold else 'with nothing open'}"
                f" after {self.stats['writes'] - w0} writes of the snapshot: "
                f"{'ok' if err == 0 else errname(err)}; unloaded after {tries} more attempts "
                f"(insmod {t_load:.1f} s, unload {t_unload:.1f} s)")
            if self.report.failures:
                break
        stop.set()
        self.join(threads, "writers")
        self.verify_originals("after the writers stopped")
        log(f"rmmod-io: {rnd + 1} rounds, {self.stats['writes']} writes ({count['inflight']} in flight "
            f"at the first delete_module of the rounds in all); delete_module with "
            f"nothing open: {count['ok']} ok, {count['busy']} busy; with an image open: "
            f"{count['busy_open']} busy; {count['retries']} attempts after closing; "
            f"{time.monotonic() - stamp.T0:.0f} s")

    def go(self):
        for t in self.targets:
            t.fill()
            if self.a.op != "remove-io":
                t.chunk = stamp.chunk_sectors_of(t.dev.sysdir, t.dev.sectors)
        log(f"filled {', '.join(str(t.dev) for t in self.targets)}"
            + (f"; chunk {self.targets[0].chunk} sectors" if self.targets[0].chunk else ""))
        {"destroy-cow": self.destroy_cow, "read-vs-cow": self.read_vs_cow,
         "remove-io": self.remove_io, "rmmod-io": self.rmmod_io}[self.a.op]()
        if self.stats["write_errors"]:
            self.report.fail(f"{self.stats['write_errors']} writes failed")
        if self.report.failures:
            log(f"RESULT: {self.report.failures} failure(s)")
            return 1
        log("RESULT: ok")
        return 0


def main():
    os.environ["LANGUAGE"] = "C"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="op", required=True)
    for name in ("destroy-cow", "read-vs-cow", "remove-io", "rmmod-io"):
        s = sub.add_parser(name)
        s.add_argument("--dev", action="append", required=True)
        s.add_argument("--storage", action="append", default=[], help="DEV:START:COUNT")
        s.add_argument("--rounds", type=int, default=5)
        s.add_argument("--writers", type=int, default=4)
        s.add_argument("--seed", type=int, default=1)
        s.add_argument("--timeout", type=float, default=600,
                       help="dump the threads' stacks and exit after this many seconds")
        if name == "read-vs-cow":
            s.add_argument("--pairs", type=int, default=3)
        if name == "rmmod-io":
            s.add_argument("--ko", required=True)
            s.add_argument("--param", action="append", default=[],
                           help="module parameter NAME=VALUE for insmod")
    a = p.parse_args()
    faulthandler.dump_traceback_later(a.timeout, exit=True)
    try:
        rc = Race(a).go()
    except Exception as e:  # noqa: BLE001 (a test tool: report anything)
        import traceback
        traceback.print_exc()
        log(f"FAIL {type(e).__name__}: {e}")
        rc = 1
    sys.stdout.flush()
    os._exit(rc)


if __name__ == "__main__":
    main()
