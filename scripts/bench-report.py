#!/usr/bin/env python3
"""Turns the results of a benchmark run (scripts/bench.sh) into a report: a
Markdown file with the tables and a PNG plot next to it (made with gnuplot
when it is installed).

Every figure is a ratio of two fio runs of the same repetition in the same
VM run (variant / baseline, in IOPS; for a fixed block size that is also the
throughput ratio); the tables show the median over the repetitions and the
range (min-max). The baseline is the same device with no tracker and no
snapshot.

  scripts/bench-report.py --results DIR [--results DIR]... --out FILE.md

Each DIR holds the results of one VM run (the ramdisk and the virtio disk
may come from different runs, each with its own clock).
"""
import argparse
import glob
import json
import os
import shutil
import statistics
import subprocess
import sys

DEVICES = [("brd", "ramdisk (brd)"), ("virtio", "virtio disk (file)")]
WRITES = [("w4k1", "4 KiB randwrite QD1"), ("w4k32", "4 KiB randwrite QD32"), ("s1m", "1 MiB seq write")]
# first-touch workload, its baseline, queue depth, bytes per write, name
FIRST = [("ft4k1", "w4k1", 1, 4096, "4 KiB randwrite QD1"),
         ("ft4k32", "w4k32", 32, 4096, "4 KiB randwrite QD32"),
         ("ft1m", "s1m", 1, 1 << 20, "1 MiB seq write")]
LIMIT_IO = 4 << 20  # the I/O size of the limit's read and write passes
READS = [("r1m", "1 MiB seq read", 0.90), ("r4k", "4 KiB randread QD1", 0.90)]
COW = [("blksnap-other", "blksnap, storage on another device"),
       ("blksnap-same", "blksnap, storage on the same device"),
       ("dmN-other", "dm-snapshot transient, another device"),
       ("dmP-other", "dm-snapshot persistent, another device"),
       ("dmN-same", "dm-snapshot transient, same device"),
       ("dmP-same", "dm-snapshot persistent, same device")]


def load_fio(d, res):
    """Adds {(kind, dev, wl): {rep: iops}} from the results in d to res."""
    for path in glob.glob(os.path.join(d, "fio", "*.json")):
        try:
            with open(path) as f:
                text = f.read()
            # fio may print notes before the JSON
            j = json.loads(text[text.index("{"):])
        except (ValueError, OSError) as e:
            print(f"bench-report: skipping {path}: {e}", file=sys.stderr)
            continue
        for job in j["jobs"]:
            parts = job["jobname"].split(".")
            if len(parts) != 4:
                continue
            kind, dev, wl, rep = parts
            op = job["read"] if job["read"]["total_ios"] > 0 else job["write"]
            iops = op["iops"]
            # A replay (read_iolog) at queue depth > 1 ends when its last
            # entry is issued: fio stops the clock there and leaves the
            # I/Os still in flight out of both the clock and the latency
            # samples, but counts them in total_ios and so in iops. The
            # samples' count over the runtime is the rate of the I/Os the
            # clock saw.
            n = op.get("lat_ns", {}).get("N", 0)
            if 0 < n < op["total_ios"] and op["runtime"] > 0:
                iops = n * 1000 / op["runtime"]
            if iops > 0:
                res.setdefault((kind, dev, wl), {})[int(rep)] = iops


def merge_baselines(res, drift):
    """The baseline is measured before and after the variants of a
    repetition; their mean cancels a drift of the VM over the repetition.
    Adds to drift {(dev, wl): [after / before]}: how far it moved."""
    for (kind, dev, wl), after in list(res.items()):
        if kind == "base2":
            before = res.get(("base", dev, wl), {})
            for r in before:
                if r in after and before[r] > 0:
                    drift.setdefault((dev, wl), []).append(after[r] / before[r])
                    before[r] = (before[r] + after[r]) / 2


def load_records(d, recs):
    try:
        with open(os.path.join(d, "results.txt")) as f:
            for line in f:
                words = line.split()
                if not words:
                    continue
                rec = {"type": words[0]}
                part = ""
                for w in words[1:]:
                    if w.endswith(":"):
                        part = w[:-1] + "."
                    elif "=" in w:
                        k, v = w.split("=", 1)
                        rec[part + k] = v
                recs.append(rec)
    except OSError:
        pass


class Report:
    def __init__(self, fio, clocks=None, chunk=262144):
        self.fio = fio
        self.clocks = clocks or {}  # device label -> the clock of its VM
        self.chunk = chunk
        self.plot = []  # (label, median, min, max)
        self.targets = []  # (text, ok, detail)

    def ratios(self, num, den):
        """Per-repetition ratios fio[num] / fio[den] (both (kind, dev, wl))."""
        a = self.fio.get(num, {})
        b = self.fio.get(den, {})
        return [a[r] / b[r] for r in sorted(a) if r in b and b[r] > 0]

    @staticmethod
    def cell(vals, digits=2):
        if not vals:
            return "n/a"
        m = statistics.median(vals)
        if len(vals) == 1:
            return f"{m:.{digits}f}"
        return f"{m:.{digits}f} ({min(vals):.{digits}f}-{max(vals):.{digits}f})"

    def target(self, text, vals, ok_fn):
        if not vals:
            self.targets.append((text, None, "no data"))
            return
        m = statistics.median(vals)
        self.targets.append((text, ok_fn(m), f"median {m:.3f}"))

    def add_plot(self, label, vals):
        if vals:
            self.plot.append((label, statistics.median(vals), min(vals), max(vals)))

    def best_chunk_time(self, kind, dev):
        """Per repetition, the shortest time per chunk of data over the limit
        passes of kind (4 MiB I/O at queue depth 1 and 32): the device's best
        rate for that direction."""
        per_io = LIMIT_IO // self.chunk
        out = {}
        for wl in ("rd4m1", "rd4m32", "wr4m1", "wr4m32"):
            for r, iops in self.fio.get((kind, dev, wl), {}).items():
                t = 1 / (iops * per_io)
                out[r] = min(out.get(r, t), t)
        return out

    # the copy passes: workload, I/O size, queue depth
    COPY_PASSES = [("cp256k1", 256 << 10, 1), ("cp256k32", 256 << 10, 32), ("cp1m1", 1 << 20, 1)]

    def best_copy_time(self, dev, max_io, max_flight):
        """Per repetition, the shortest time per chunk copied over the copy
        passes (a reader and a writer on the same disk at the same time) with
        I/O of at most max_io bytes and at most max_flight bytes in flight
        per direction: the pass lasts as long as its slower job, and both
        move the same bytes."""
        out = {}
        for wl, io, qd in self.COPY_PASSES:
            if io > max_io or io * qd > max_flight:
                continue
            per_io = io / self.chunk
            rd = self.fio.get(("limit-copy", dev, wl + "r"), {})
            wr = self.fio.get(("limit-copy", dev, wl + "w"), {})
            for r in rd:
                if r in wr:
                    t = 1 / (min(rd[r], wr[r]) * per_io)
                    out[r] = min(out.get(r, t), t)
        return out

    def limit(self, dev, ft, qd, wbytes, where):
        """Per-repetition IOPS of the physical limit of first-touch workload
        ft with the storage on the other or the same device: a lower bound
        on the time of each write for any copy-on-write implementation with
        this chunk size (docs/benchmarks.md, scenario 3).

        W: the same write pass on the device without snapshot; R: per chunk,
        the device's best read rate; S: per chunk, the storage's best write
        rate (Sd: the original device's, measured at the storage's place on
        it); k: chunks a write touches first; kw: its size in chunks.
        Where one clock counts the work of every device (the ramdisks in the
        instruction-counted VM), nothing overlaps: W + k(R + S). A throttled
        disk has its own budget, shared by its reads and writes: the
        original disk needs kR + kw Sd (its copy reads and the writes' own
        bytes), plus kS when it holds the storage too; another disk needs
        kS. The bound is the largest of these. Reads and writes of the same
        throttled disk are paired into C, a chunk read and a chunk written
        measured as one pass of both at once, with I/O no larger than the
        chunks a write touches first and no more of them in flight than the
        workload's queue depth has (where the copy passes were run: they
        share the throttle's budget and its burst as the real pass does,
        where two passes would get two bursts; else R + Sd): with the
        storage on it, kC + kw Sd; without, with p = min(k, kw),
        pC + (k - p)R + (kw - p)Sd. (No latency term is added on
        a throttled disk: a write at queue depth 1 waits for its chunk's
        read, but a read there takes chunk / rate only while the throttle's
        budget is spent, and W + kR in a row came out above blksnap's time
        in every repetition.)"""
        nosnap = self.fio.get(("nosnap", dev, ft), {})
        rd = self.best_chunk_time("limit", dev)
        wr = self.best_chunk_time(f"limit-{where}", dev)
        wd = self.best_chunk_time("limit-same", dev)
        k = max(1, wbytes // self.chunk)
        kw = wbytes / self.chunk
        p = min(k, kw)
        shared = self.clocks.get(dev) == "icount"
        cp = {} if shared else self.best_copy_time(dev, k * self.chunk, qd * k * self.chunk)
        out = {}
        for r in nosnap:
            if r not in rd or r not in wr or r not in wd or nosnap[r] <= 0:
                continue
            w, rt, st, sd = 1 / nosnap[r], rd[r], wr[r], wd[r]
            c = cp.get(r, rt + sd)
            if shared:
                t = w + k * (rt + st)
            elif where == "same":
                t = k * c + kw * sd
            else:
                t = max(p * c + (k - p) * rt + (kw - p) * sd, k * st)
            out[r] = 1 / t
        return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", required=True, action="append")
    ap.add_argument("--out", required=True)
    a = ap.parse_args()
    fio, drift, recs = {}, {}, []
    for d in a.results:
        load_fio(d, fio)
        load_records(d, recs)
    merge_baselines(fio, drift)
    runs = [r for r in recs if r["type"] == "params"]
    params = runs[0] if runs else {}
    clocks = {}
    for r in runs:  # the first run that names a device measured it
        for dev in r.get("devices", "brd,virtio").split(","):
            clocks.setdefault(dev, r.get("clock", "wall"))
    rp = Report(fio, clocks, int(params.get("chunk", 262144)))
    md = []
    w = md.append

    w("# blksnap-rs benchmark")
    w("")
    w(f"Kernel {params.get('kernel', '?')} (release build) under QEMU TCG, 2 vCPUs; "
      f"{params.get('reps', '?')} repetitions, {params.get('runtime', '?')} s per timed fio run, "
      f"{params.get('region_mib', '?')} MiB region per job, chunk size "
      f"{int(params.get('chunk', 262144)) >> 10} KiB (blksnap and dm-snapshot). "
      "Each figure is a ratio of two fio runs of the same repetition in the same VM run; "
      "cells are `median (min-max)` over the repetitions. The baseline is the same device "
      "with no tracker and no snapshot, measured before and after the variants of each "
      "repetition (the mean of the two).")
    w("")
    clocks = {"icount": "instruction-counted: QEMU `-icount`, the guest clock advances a fixed "
                        "time per instruction executed and both vCPUs take turns, so a ratio is "
                        "one of CPU work per I/O, repeatable whatever the host does",
              "wall": "wall clock: multi-threaded TCG, both vCPUs in parallel, subject to the "
                      "host's speed from one second to the next"}
    for r in runs:
        devs = r.get("devices", "brd,virtio").replace(",", ", ")
        w(f"- {devs}: {clocks.get(r.get('clock', 'wall'), r.get('clock'))}.")
    for r in runs:
        disk = r.get("disk", "unthrottled").split(",")
        if "virtio" in r.get("devices", "brd,virtio") and len(disk) == 3:
            w(f"- virtio disk: two files in the host's {disk[2]}, each throttled by QEMU to "
              f"{disk[0]} I/Os and {disk[1]} MiB per second, reads and writes together, like a "
              "provisioned cloud volume: the device, not the CPU, is the limit.")
    w("")
    if drift:
        w("How far the baseline itself moved within a repetition (the baseline after the "
          "variants / before them; 1.00 is no drift), a measure of the noise:")
        w("")
        w("| device | " + " | ".join(n for _, n in WRITES) + " | " + " | ".join(n for _, n, _ in READS) + " |")
        w("|---|" + "---|" * (len(WRITES) + len(READS)))
        for dev, dname in DEVICES:
            cells = [Report.cell(drift.get((dev, wl), [])) for wl, _ in WRITES]
            cells += [Report.cell(drift.get((dev, wl), [])) for wl, _, _ in READS]
            w(f"| {dname} | " + " | ".join(cells) + " |")
        w("")

    w("## 1, 2: tracking only, and a snapshot held with every chunk copied")
    w("")
    w("| device | workload | 1. tracking only / untracked | 2. steady state / no snapshot |")
    w("|---|---|---|---|")
    for dev, dname in DEVICES:
        for wl, wname in WRITES:
            t = rp.ratios(("track", dev, wl), ("base", dev, wl))
            s = rp.ratios(("steady", dev, wl), ("base", dev, wl))
            w(f"| {dname} | {wname} | {rp.cell(t)} | {rp.cell(s)} |")
            rp.target(f"tracking only >= 0.98: {dev} {wname}", t, lambda m: m >= 0.98)
            rp.target(f"steady state >= 0.95: {dev} {wname}", s, lambda m: m >= 0.95)
            rp.add_plot(f"1 track {dev} {wl}", t)
            rp.add_plot(f"2 steady {dev} {wl}", s)
    w("")

    w("## 3: first write to every chunk (copy-on-write)")
    w("")
    w("Ratio to the same workload on the device without snapshot. 4 KiB writes go to a "
      "random place of every chunk of the region once, in random order; 1 MiB writes make "
      "one sequential pass. The physical limit is a lower bound on the time of each write: "
      "the same write pass without snapshot (W) plus, per chunk first touched, one chunk "
      "read of the original (R) and one chunk write to the storage (S), R and S at the "
      "devices' best rates in this run (4 MiB sequential I/O through io_uring with "
      "registered buffers, the faster of queue depth 1 and 32). On the ramdisks one "
      "instruction-counted clock counts every device's work, so nothing overlaps: W + R + S "
      "wherever the storage is. On the throttled disks each disk has its own budget of "
      "bytes, shared by its reads and writes: the original disk needs R plus the write's "
      "own bytes (plus S when it holds the storage), another storage disk S; the limit is "
      "the larger of these, with a disk's reads and writes paired and measured as one pass "
      "of both at once (C) with the I/O sizes and queue depth a copy can use, which gets one "
      "burst of the throttle as the real pass does. Per write, R and S count once per chunk "
      "the write touches first. "
      "docs/benchmarks.md says why this is a lower bound.")
    w("")
    w("| device | workload | " + " | ".join(n for _, n in COW)
      + " | physical limit (other device) | physical limit (same device) |")
    w("|---|---|" + "---|" * (len(COW) + 2))
    comp = []
    for dev, dname in DEVICES:
        for ft, bwl, qd, wbytes, wname in FIRST:
            cells = []
            per = {}
            for kind, _ in COW:
                v = rp.ratios((f"cow-{kind}", dev, ft), ("base", dev, bwl))
                per[kind] = fio.get((f"cow-{kind}", dev, ft), {})
                cells.append(rp.cell(v))
                if kind in ("blksnap-other", "dmN-other"):
                    rp.add_plot(f"3 {kind} {dev} {ft}", v)
            base = fio.get(("base", dev, bwl), {})
            lim = {}
            for where in ("other", "same"):
                lim[where] = rp.limit(dev, ft, qd, wbytes, where)
                lv = [lim[where][r] / base[r] for r in sorted(lim[where]) if r in base]
                cells.append(rp.cell(lv))
            w(f"| {dname} | {wname} | " + " | ".join(cells) + " |")
            row = []
            for where in ("other", "same"):
                b = per[f"blksnap-{where}"]
                for mode in ("N", "P"):
                    d = per[f"dm{mode}-{where}"]
                    v = [b[r] / d[r] for r in sorted(b) if r in d]
                    row.append(rp.cell(v))
                    rp.target(f"first-touch COW faster than dm-snapshot ({'transient' if mode == 'N' else 'persistent'}, "
                              f"storage on the {where} device): {dev} {wname}", v, lambda m: m > 1.0)
                v = [b[r] / lim[where][r] for r in sorted(b) if r in lim[where]]
                row.append(rp.cell(v, 3))
                rp.target(f"first-touch COW >= 0.9 of the physical limit (storage on the {where} device): "
                          f"{dev} {wname}", v, lambda m: m >= 0.9)
                if v:
                    rp.add_plot(f"3 /limit-{where} {dev} {ft}", v)
                    worst = max(v)
                    rp.targets.append((f"the physical limit holds, blksnap / limit <= 1 in every repetition "
                                       f"(storage on the {where} device): {dev} {wname}", worst <= 1.0,
                                       f"max {worst:.3f}"))
            comp.append(f"| {dname} | {wname} | " + " | ".join(row) + " |")
    w("")
    w("blksnap against dm-snapshot (above 1: blksnap is faster) and against the physical "
      "limit (at most 1: 1 is the limit reached):")
    w("")
    w("| device | workload | / dm transient (other) | / dm persistent (other) | / limit (other) "
      "| / dm transient (same) | / dm persistent (same) | / limit (same) |")
    w("|---|---|---|---|---|---|---|---|")
    md.extend(comp)
    w("")

    w("## 4: snapshot image reads")
    w("")
    w("| device | workload | unchanged image / original | fully copied image / original "
      "| dm-linear / original |")
    w("|---|---|---|---|---|")
    for dev, dname in DEVICES:
        for wl, wname, goal in READS:
            c = rp.ratios(("imgclean", dev, wl), ("base", dev, wl))
            f = rp.ratios(("imgcopied", dev, wl), ("base", dev, wl))
            lin = rp.ratios(("linear", dev, wl), ("base", dev, wl))
            w(f"| {dname} | {wname} | {rp.cell(c)} | {rp.cell(f)} | {rp.cell(lin)} |")
            rp.target(f"image reads >= {goal}: unchanged image, {dev} {wname}", c, lambda m, g=goal: m >= g)
            rp.target(f"image reads >= {goal}: copied image, {dev} {wname}", f, lambda m, g=goal: m >= g)
            rp.add_plot(f"4 img {dev} {wl}", c)
            rp.add_plot(f"4 imgcopied {dev} {wl}", f)
    w("")

    w("## 5: write stall during take (ramdisks)")
    w("")
    w("One thread per device writes 4 KiB blocks at queue depth 1 while `blksnap snapshot_take` runs. "
      "*stall*: the longest write in flight during the take; *gap*: the longest time without a "
      "completed write on a device during the take; *before*: the longest write in the second "
      "before the take. Milliseconds, median (min-max).")
    w("")
    w("| devices | take command | stall | gap | before |")
    w("|---|---|---|---|---|")
    for n in ("1", "4"):
        rs = [r for r in recs if r["type"] == "stall" and r.get("devices") == n]

        def col(k):
            v = [float(r[k]) for r in rs if k in r]
            if not v:
                return "n/a"
            return f"{statistics.median(v):.1f} ({min(v):.1f}-{max(v):.1f})"
        w(f"| {n} | {col('take_ms')} | {col('stall_ms')} | {col('gap_ms')} | {col('base_ms')} |")
        v = [float(r["stall_ms"]) for r in rs if "stall_ms" in r]
        if v:
            m = statistics.median(v)
            rp.targets.append((f"take stall < 50 ms ({n} device{'s' if n != '1' else ''})", m < 50,
                               f"median {m:.1f} ms"))
    w("")

    w("## 6: module memory")
    w("")
    w("Changes of the kernel's counters (`/proc/meminfo`, caches dropped before each reading): "
      "Slab + VmallocUsed + Percpu, and the drop of MemFree (which also sees page allocations "
      "outside slab and vmalloc, and noise). Copied chunks are 4 KiB (`chunk_minimum_shift=12`) "
      "of a 64 GiB dm-zero device (16 Mi chunks), each pattern in a snapshot of its own: "
      "*dense*, a sequential first pass; *scattered*, one 4 KiB write into each of as many "
      "chunks drawn at random from the whole device. Counts are cumulative.")
    w("")
    w("| what | slab | vmalloc | percpu | slab+vmalloc+percpu | MemFree drop | theoretical minimum | ratio |")
    w("|---|---|---|---|---|---|---|---|")

    def kib(x):
        return f"{x / 1024:.2f} MiB" if abs(x) >= 1024 else f"{x} KiB"
    per_chunk = {}  # (pattern, chunks) -> bytes per chunk, (Slab + VmallocUsed) / chunks
    for r in recs:
        if r["type"] != "mem":
            continue
        d = {k: int(r.get(f"after.{k}", 0)) - int(r.get(f"before.{k}", 0))
             for k in ("Slab", "VmallocUsed", "Percpu", "MemFree")}
        total = d["Slab"] + d["VmallocUsed"] + d["Percpu"]
        if r.get("what") == "tracking":
            shift = int(r.get("block_shift", 16))
            blocks = (int(r.get("size_gib", 64)) << 30) >> shift
            minimum = blocks // 1024  # one byte per tracking block, KiB
            what = f"tracking a {r.get('size_gib')} GiB sparse device ({blocks} blocks of {1 << shift >> 10} KiB)"
            mind = f"{kib(minimum)} (1 byte per block)"
        else:
            n = int(r.get("chunks", 0))
            pattern = r.get("pattern", "dense")
            per_chunk[(pattern, n)] = (d["Slab"] + d["VmallocUsed"]) * 1024 / max(n, 1)
            minimum = n * 8 // 1024  # chunk number -> storage slot, 2 x 32 bits
            what = f"{n} copied chunks of {r.get('chunk_kib')} KiB, {pattern}"
            mind = f"{kib(minimum)} (8 bytes per chunk)"
        ratio = f"{total / minimum:.1f}x" if minimum else "n/a"
        w(f"| {what} | {kib(d['Slab'])} | {kib(d['VmallocUsed'])} | {kib(d['Percpu'])} | {kib(total)} "
          f"| {kib(-d['MemFree'])} | {mind} | {ratio} |")
    w("")
    if per_chunk:
        counts = sorted({n for _, n in per_chunk})
        pats = [p for p in ("dense", "scattered") if any(q == p for q, _ in per_chunk)]
        w("Memory per copied chunk, (Slab + VmallocUsed) delta / copied chunks, in bytes:")
        w("")
        w("| copied chunks | " + " | ".join(pats) + " |")
        w("|---|" + "---|" * len(pats))
        for n in counts:
            w(f"| {n} | " + " | ".join(f"{per_chunk[(p, n)]:.1f}" if (p, n) in per_chunk else "n/a"
                                       for p in pats) + " |")
        w("")
        for p in pats:
            n = max(c for q, c in per_chunk if q == p)
            v = per_chunk[(p, n)]
            rp.targets.append((f"memory per copied chunk <= 16 bytes ({p}, {n} chunks)", v <= 16,
                               f"{v:.1f} bytes"))

    w("## 7: the backup path")
    w("")
    bk = [r for r in recs if r["type"] == "backup"]
    by = {}
    for r in bk:
        by.setdefault(r.get("what"), []).append(r)

    def rates(what, key="seconds"):
        """{rep: MiB/s} of the backup records of what."""
        out = {}
        for r in by.get(what, []):
            s = float(r.get(key, 0) or 0)
            if s > 0:
                out[int(r.get("rep", 0))] = int(r.get("bytes", 0)) / s / (1 << 20)
        return out

    def fio_rate(wl):
        # 1 MiB I/Os: IOPS are MiB/s
        return fio.get(("bkraw", "virtio", wl), {})

    def mibs(d):
        v = list(d.values())
        if not v:
            return "n/a"
        m = statistics.median(v)
        return f"{m:.1f}" if len(v) == 1 else f"{m:.1f} ({min(v):.1f}-{max(v):.1f})"

    def over(num, den):
        return [num[r] / den[r] for r in sorted(num) if r in den and den[r] > 0]
    if by.get("full") or fio_rate("devread"):
        w("Full backup and restore of the virtio disk (the whole device, throttled like the "
          "other scenarios' disks). During the raw read, the buffered read and the backup, "
          "writers run on the device: random 4 KiB writes at 100 per second into its first "
          "8 MiB, whose first touches make the snapshot copy up to 32 chunks. Backup files go "
          "to a tmpfs in the guest. MiB/s, median (min-max) over the repetitions, and the "
          "ratio to the raw rate of the same repetition.")
        w("")
        w("| what | MiB/s | / raw | CPU: user + kernel seconds / elapsed |")
        w("|---|---|---|---|")

        def cpu(what):
            v = [(float(r["user_seconds"]) + float(r["sys_seconds"])) / float(r["seconds"])
                 for r in by.get(what, [])
                 if r.get("user_seconds") and r.get("sys_seconds") and float(r.get("seconds", 0)) > 0]
            if not v:
                return ""
            u = statistics.median(float(r["user_seconds"]) for r in by[what] if r.get("user_seconds"))
            k = statistics.median(float(r["sys_seconds"]) for r in by[what] if r.get("sys_seconds"))
            return f"{rp.cell(v)} (user {u:.2f} s, kernel {k:.2f} s)"
        raw_r, raw_w = fio_rate("devread"), fio_rate("devwrite")
        rows = [("raw sequential read (fio, 1 MiB, queue depth 4, O_DIRECT), writers running", raw_r, raw_r, ""),
                ("buffered sequential read (dd, 8 MiB reads through the page cache; the CLI reads with O_DIRECT), "
                 "writers running", rates("bufread"), raw_r, ""),
                ("sequential read as the CLI reads (dd, 8 MiB O_DIRECT reads, one at a time), "
                 "writers running", rates("dirread"), raw_r, ""),
                ("a snapshot's image read the same way (no hashing, nothing written), writers running",
                 rates("imgread"), raw_r, ""),
                ("the backup's image file written into the tmpfs again (dd, 64 KiB writes, "
                 "as the CLI writes it), by itself", rates("tmpfswrite"), raw_r, ""),
                ("`blksnap backup`, full: the copy", rates("full", "copy_seconds"), raw_r, ""),
                ("`blksnap backup`, full: the whole command (snapshot made and destroyed)",
                 rates("full"), raw_r, cpu("full")),
                ("raw sequential write (fio, 1 MiB, queue depth 4, O_DIRECT)", raw_w, raw_w, ""),
                ("the backup's image file copied onto the device (dd, 8 MiB writes through the "
                 "page cache, then fsync)", rates("bufwrite"), raw_w, ""),
                ("`blksnap restore` of that full backup onto the device", rates("restore"), raw_w,
                 cpu("restore"))]
        for text, num, den, c in rows:
            w(f"| {text} | {mibs(num)} | {rp.cell(over(num, den))} | {c} |")
        w("")
        v = over(rates("full", "copy_seconds"), raw_r)
        rp.target("full backup with writers >= 0.95 of a raw sequential read (the copy)", v, lambda m: m >= 0.95)
        rp.add_plot("7 full backup / raw read", v)
        rp.add_plot("7 restore / raw write", over(rates("restore"), raw_w))
    inc = by.get("incr", [])
    if inc:
        w("Incremental backups of sparse devices (dm-zero: reads return zeros, writes are "
          "dropped and marked in the CBT map). Before each backup, one write into each of "
          "*changed* tracking blocks drawn at random; the same numbers of blocks on both "
          "devices. The first (full) backup of each device is seeded, not read "
          "(docs/benchmarks.md). Each backup reads a snapshot taken for it "
          "(`blksnap backup --snapshot`; *the whole command* is that command, *the copy* "
          "its reading and writing of the blocks). Seconds, median (min-max); *CBT map "
          "read* is `blksnap tracker_readcbtmap` of the same snapshot, less the time of "
          "`blksnap version` just before it (starting the CLI: about a second here).")
        w("")
        w("| device | changed blocks | of the device | changed data | CBT map read | "
          "incremental: the copy | incremental: the whole command | copy MiB/s |")
        w("|---|---|---|---|---|---|---|---|")
        groups = {}
        for r in inc:
            key = (int(r["size_gib"]), int(r["changed"]))
            groups.setdefault(key, []).append(r)

        def secs(rs, k):
            v = [float(r[k]) for r in rs if k in r]
            if not v:
                return "n/a", []
            m = statistics.median(v)
            return (f"{m:.3f}" if len(v) == 1 else f"{m:.3f} ({min(v):.3f}-{max(v):.3f})"), v
        med = {}
        for (g, n), rs in sorted(groups.items()):
            blocks = int(rs[0]["blocks"])
            bs = int(rs[0]["block"])
            for r in rs:
                if "map_seconds" in r and "cli_seconds" in r:
                    r["map_net"] = max(0.0, float(r["map_seconds"]) - float(r["cli_seconds"]))
            mp, _ = secs(rs, "map_net")
            cp, cv = secs(rs, "copy_seconds")
            tot, tv = secs(rs, "seconds")
            med[(g, n)] = (statistics.median(cv) if cv else 0, statistics.median(tv) if tv else 0)
            rate = [int(r["bytes"]) / float(r["copy_seconds"]) / (1 << 20) for r in rs
                    if float(r.get("copy_seconds", 0)) > 0]
            w(f"| {g} GiB ({blocks} blocks of {bs >> 10} KiB) | {n} | {100 * n / blocks:.3g}% "
              f"| {n * bs / (1 << 20):.1f} MiB | {mp} | {cp} | {tot} | "
              f"{rp.cell(rate, 1) if rate else 'n/a'} |")
        w("")
        for (g, n), rs in sorted(groups.items()):
            raw = fio.get(("bkincrraw", f"z{g}", "blkread"), {})
            if raw and n == max(c for h, c in groups if h == g):
                t = [n / v for v in raw.values() if v > 0]
                w(f"For comparison, {n} random reads of one block each from the {g} GiB device itself, "
                  f"through the page cache with no snapshot (fio): {rp.cell(t, 3)} s.")
                w("")
        sizes = sorted({g for g, _ in groups})
        if len(sizes) >= 2:
            small, large = sizes[0], sizes[-1]
            counts = sorted({n for g, n in groups if g == small})
            w(f"The same changed blocks on a device {large // small} times larger "
              f"({large} GiB / {small} GiB; 1 means the time does not depend on the device's size):")
            w("")
            w("| changed blocks | the copy | the whole command |")
            w("|---|---|---|")
            for n in counts:
                if (large, n) not in med or (small, n) not in med:
                    continue
                (c1, t1), (c2, t2) = med[(small, n)], med[(large, n)]
                w(f"| {n} | {c2 / c1 if c1 else 0:.2f} | {t2 / t1 if t1 else 0:.2f} |")
                if n != counts[0]:  # the smallest is mostly fixed costs
                    rp.targets.append((f"incremental backup independent of the device size: {large} GiB / "
                                       f"{small} GiB with {n} changed blocks <= 1.25 (whole command)",
                                       t1 > 0 and t2 / t1 <= 1.25, f"{t2 / t1 if t1 else 0:.2f}"))
            w("")

    w("## Targets")
    w("")
    w("| target | met | |")
    w("|---|---|---|")
    for text, ok, detail in rp.targets:
        mark = "n/a" if ok is None else ("yes" if ok else "**no**")
        w(f"| {text} | {mark} | {detail} |")
    w("")

    png = os.path.splitext(a.out)[0] + ".png"
    if make_plot(rp.plot, png):
        w(f"![ratios]({os.path.basename(png)})")
        w("")
    with open(a.out, "w") as f:
        f.write("\n".join(md))
    print(a.out)


def make_plot(rows, png):
    if not rows:
        return False
    gp = shutil.which("gnuplot")
    if not gp:
        print("bench-report: gnuplot is missing, no plot", file=sys.stderr)
        return False
    dat = png[:-4] + ".dat"
    with open(dat, "w") as f:
        for i, (label, m, lo, hi) in enumerate(rows):
            f.write(f'{i} "{label}" {m:.4f} {lo:.4f} {hi:.4f}\n')
    width = max(900, 22 * len(rows) + 200)
    script = f"""
set terminal pngcairo size {width},600 font ",9"
set output "{png}"
set title "blksnap-rs: ratio to the baseline in the same run (median, min-max)"
set style fill solid 0.6 border -1
set boxwidth 0.7
set yrange [0:*]
set grid ytics
set xtics rotate by -60 left nomirror
set key off
set ylabel "ratio"
set bmargin 12
set rmargin 12
plot "{dat}" using 1:3:xtic(2) with boxes lc rgb "#4477aa", \\
     "{dat}" using 1:3:4:5 with yerrorbars lc rgb "black" pt 0, \\
     1 with lines lc rgb "#cc3311" dt 2
"""
    try:
        subprocess.run([gp], input=script, text=True, check=True)
    except (subprocess.CalledProcessError, OSError) as e:
        print(f"bench-report: gnuplot failed: {e}", file=sys.stderr)
        return False
    return os.path.exists(png)


if __name__ == "__main__":
    main()
