#!/usr/bin/python3
"""Checks that TAKE switches the CBT tables of all devices of a snapshot at
one point in time.

    cbt_atomic.py DEV... [--writes N] [--start-after K] [--tries T]

A writer thread writes one 4 KiB block at a time with O_DIRECT, going round
the devices (write i goes to device i % n, into tracking block i // n of
it), each write completing before the next starts, while the main thread
creates and takes a snapshot of all the devices. Every write that completed
before the switch must be in the readable tables and every write submitted
after it must not, so the writes marked in the readable tables must be a
prefix of the write order: once one write is unmarked, no later write may
be marked. A device switched later than another breaks this.

The devices get fresh trackers (old ones are removed) and one snapshot
cycle first. If the writer finished before the TAKE or the TAKE came before
the first write (no writes on both sides of the cut), tries again, up to T
times. Exit 0 when the prefix property holds, 1 when it does not (printing
the offending writes), 2 on setup errors.
"""

import argparse
import errno
import mmap
import os
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bsctl  # noqa: E402


def main():
    os.environ["LANGUAGE"] = "C"
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("devices", nargs="+")
    p.add_argument("--writes", type=int, default=0,
                   help="writes in all (default: as many as there are blocks)")
    p.add_argument("--start-after", type=int, default=40)
    p.add_argument("--tries", type=int, default=3)
    a = p.parse_args()
    ctl = bsctl.Ctl()
    devs = [bsctl.parse_dev(d) for d in a.devices]
    n = len(devs)

    def cycle():
        sid = ctl.create(devs)
        ctl.take(sid)
        return sid

    for d in devs:
        try:
            ctl.tracker_remove(d)
        except OSError as e:
            if e.errno != errno.ENODEV:
                print(f"TRACKER_REMOVE {d}: {bsctl.errname(e.errno)}")
                return 2
    fds = [os.open(path, os.O_WRONLY | os.O_DIRECT) for path in a.devices]
    buf = mmap.mmap(-1, 4096)
    buf.write(b"\x5a" * 4096)

    rc = 2
    for attempt in range(1, a.tries + 1):
        ctl.destroy(cycle())
        infos = [ctl.info(d) for d in devs]
        blocks = min(i.blk_count for i in infos)
        bsize = [i.blk_size for i in infos]
        total = min(a.writes or blocks * n, blocks * n)
        done = [0]
        err = []

        def writer():
            try:
                for i in range(total):
                    k = i % n
                    os.pwritev(fds[k], [buf], (i // n) * bsize[k])
                    done[0] = i + 1
            except OSError as e:
                err.append(e)

        t = threading.Thread(target=writer)
        t.start()
        while done[0] < a.start_after and t.is_alive():
            time.sleep(0.001)
        before = done[0]
        t0 = time.monotonic()
        sid = ctl.create(devs)
        ctl.take(sid)
        took = time.monotonic() - t0
        after = done[0]
        t.join()
        if err:
            print(f"write failed: {err[0]}")
            ctl.destroy(sid)
            return 2
        snap = ctl.info(devs[0]).snap_number
        maps = [ctl.read_map(d) for d in devs]
        ctl.destroy(sid)
        marked = [maps[i % n][i // n] == snap for i in range(total)]
        cut = next((i for i in range(total) if not marked[i]), total)
        late = [i for i in range(cut, total) if marked[i]]
        print(f"try {attempt}: {total} writes over {n} devices; {before} done before CREATE, "
              f"{after} after TAKE ({took * 1000:.0f} ms); first unmarked write {cut}")
        if late:
            print(f"NOT ATOMIC: writes after the first unmarked one ({cut}, device "
                  f"{a.devices[cut % n]}) are marked: " +
                  ", ".join(f"{i} ({a.devices[i % n]} block {i // n})" for i in late[:16]))
            if cut > 0 and cut < total:
                print("  around the cut: " + " ".join(
                    f"{i}:{'M' if marked[i] else '-'}" for i in range(max(0, cut - 6),
                                                                     min(total, cut + 6))))
            rc = 1
            break
        # Untracked writes: every write completed before CREATE must be marked.
        if cut < before:
            print(f"write {cut} completed before CREATE but is not marked")
            rc = 1
            break
        if cut > after + 1:
            # Write `after` may have been submitted before TAKE returned.
            print(f"write {after + 1} came after TAKE returned but is marked")
            rc = 1
            break
        if 0 < cut < total:
            rc = 0
            break
        print("  (no writes on both sides of the switch; again)")
    for fd in fds:
        os.close(fd)
    for d in devs:
        try:
            ctl.tracker_remove(d)
        except OSError:
            pass
    return rc


if __name__ == "__main__":
    sys.exit(main())
