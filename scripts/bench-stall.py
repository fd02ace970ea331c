#!/usr/bin/env python3
"""Measures how long writes stall while a snapshot is taken (benchmark
scenario 5, run by scripts/bench.sh in the VM).

One thread per device writes 4 KiB blocks (O_DIRECT, queue depth 1) at
random places of the device's first 16 MiB and notes when each write started
and ended. After a second of writing, the main thread runs
`blksnap snapshot_take`; writing goes on for another second. Prints one line:
  take_ms=      how long the take command ran
  stall_ms=     the longest write that was in flight while the take ran
  gap_ms=       the longest time, during the take, with no write completing
                on some device
  base_ms=      the longest write in the second before the take
"""
import argparse
import mmap
import os
import random
import subprocess
import threading
import time

SPAN = 16 << 20
BS = 4096


def writer(path, stop, log):
    fd = os.open(path, os.O_WRONLY | os.O_DIRECT)
    buf = mmap.mmap(-1, BS)
    buf.write(os.urandom(BS))
    rnd = random.Random(path)
    try:
        while not stop.is_set():
            off = rnd.randrange(SPAN // BS) * BS
            t0 = time.monotonic()
            os.pwrite(fd, buf, off)
            log.append((t0, time.monotonic()))
    finally:
        os.close(fd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--id", required=True)
    ap.add_argument("devices", nargs="+")
    a = ap.parse_args()
    stop = threading.Event()
    logs = [[] for _ in a.devices]
    threads = [threading.Thread(target=writer, args=(d, stop, lg)) for d, lg in zip(a.devices, logs)]
    for t in threads:
        t.start()
    time.sleep(1.0)
    t0 = time.monotonic()
    subprocess.run([a.cli, "snapshot_take", "-i", a.id], check=True, stdout=subprocess.DEVNULL)
    t1 = time.monotonic()
    time.sleep(1.0)
    stop.set()
    for t in threads:
        t.join()
    stall = base = gap = 0.0
    for lg in logs:
        for s, e in lg:
            if s < t1 and e > t0:
                stall = max(stall, e - s)
            elif e <= t0 and s >= t0 - 1.0:
                base = max(base, e - s)
        # gaps between completions that overlap the take
        ends = [e for _, e in lg]
        for p, n in zip(ends, ends[1:]):
            if p < t1 and n > t0:
                gap = max(gap, n - p)
    writes = sum(len(lg) for lg in logs)
    print(f"take_ms={(t1 - t0) * 1e3:.1f} stall_ms={stall * 1e3:.1f} gap_ms={gap * 1e3:.1f} "
          f"base_ms={base * 1e3:.1f} writes={writes}")


if __name__ == "__main__":
    main()
