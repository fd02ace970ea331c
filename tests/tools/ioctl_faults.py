#!/usr/bin/python3
"""Snapshot lifecycles under injected allocation failures (failslab with
task-filter=Y): marks its own task with /proc/self/make-it-fail once its
set-up is done, then loops CREATE, WAIT_EVENT, APPEND_STORAGE, TAKE,
COLLECT, COLLECT_IMAGES, a few writes to the originals (the copy-on-write
work item is allocated in the writer's context), image reads, READ_CBT_MAP,
MARK_DIRTY, DESTROY and now and then TRACKER_REMOVE, and requires every
failure to be a clean one: an ioctl fails with ENOMEM or works; data I/O
fails with ENOMEM or EIO (a snapshot whose copy-on-write could not allocate
is corrupted: its images fail with EIO) or works. After the loop it clears
the mark and destroys whatever is left (without faults: that must work).

    ioctl_faults.py --dev DEV... --storage DEV:START:COUNT [--iterations N] [--seed S]

Prints per-operation counts ("op: N ok, N ENOMEM") and "FAIL ..." lines;
exit 0 if every failure was clean, 1 if not. Standard library only.
"""

import argparse
import errno
import mmap
import os
import random
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import bsctl  # noqa: E402
from stamp import collect_images, image_path  # noqa: E402

SECTOR = 512
failures = 0
counts = {}


def fail(msg):
    global failures
    failures += 1
    if failures <= 40:
        print(f"FAIL {msg}", flush=True)


def note(op, e=None):
    c = counts.setdefault(op, {})
    key = "ok" if e is None else errno.errorcode.get(e, str(e))
    c[key] = c.get(key, 0) + 1


def attempt(op, fn, ok_errnos=(errno.ENOMEM,)):
    """(True, result) if fn worked, (False, errno) if it failed cleanly;
    an unclean failure is reported and counts as a clean one for the flow."""
    try:
        r = fn()
    except OSError as e:
        note(op, e.errno)
        if e.errno not in ok_errnos:
            fail(f"{op}: {bsctl.errname(e.errno)} (only {'/'.join(map(bsctl.errname, ok_errnos))} "
                 f"may come from an allocation failure)")
        return False, e.errno
    note(op)
    return True, r


# Opened before the task is marked: opening it while marked may itself fail
# with ENOMEM, and a write to an open fd allocates nothing.
MAKE_IT_FAIL = os.open("/proc/self/make-it-fail", os.O_WRONLY)


def mark(on):
    os.pwrite(MAKE_IT_FAIL, b"1" if on else b"0", 0)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dev", action="append", required=True)
    p.add_argument("--storage", required=True)
    p.add_argument("--iterations", type=int, default=100)
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args()
    rng = random.Random(a.seed)
    devs = [bsctl.parse_dev(d) for d in a.dev]
    sdev, sstart, scount = a.storage.split(":")
    sdevno, sstart, scount = bsctl.parse_dev(sdev), int(sstart), int(scount)
    fds = [os.open(d, os.O_RDWR | os.O_DIRECT) for d in a.dev]
    buf = mmap.mmap(-1, 64 * 1024)
    buf.write(os.urandom(64 * 1024))
    ctl = bsctl.Ctl()
    mark(True)
    try:
        for _ in range(a.iterations):
            ok, sid = attempt("create", lambda: ctl.create(devs))
            if not ok:
                continue
            ok, _ev = attempt("wait_event", lambda: ctl.wait_event(sid, 1000))
            ok, _ = attempt("append_storage",
                            lambda: ctl.append_storage(sid, sdevno, [(sstart, scount)]))
            taken = False
            for _ in range(5 if ok else 0):
                taken, _ = attempt("take", lambda: ctl.take(sid))
                if taken:
                    break
            if taken:
                attempt("collect", ctl.snapshots)
                ok, imgs = attempt("collect_images", lambda: collect_images(ctl, sid))
                for fd in fds:
                    for _ in range(4):
                        lba = rng.randrange(0, 2048) * 8
                        attempt("write original", lambda: os.pwrite(fd, buf[:4096 * rng.randint(1, 16)],
                                                                    lba * SECTOR),
                                (errno.ENOMEM, errno.EIO))
                if ok:
                    for _, im in imgs:
                        try:
                            path = image_path(im, 2.0)
                        except Exception:  # noqa: BLE001 (the node may be slow to appear)
                            continue
                        ok2, fd = attempt("open image", lambda: os.open(path, os.O_RDONLY | os.O_DIRECT),
                                          (errno.ENOMEM, errno.ENXIO, errno.ENOENT))
                        if ok2:
                            for _ in range(4):
                                attempt("read image",
                                        lambda: os.preadv(fd, [buf], rng.randrange(0, 2048) * 4096),
                                        (errno.ENOMEM, errno.EIO))
                            os.close(fd)
            for d in devs:  # the trackers exist: CREATE worked
                if taken:  # (EPERM before TAKE)
                    attempt("read_cbt_map", lambda: ctl.read_cbt(d, 0, 4096))
                attempt("mark_dirty", lambda: ctl.mark_dirty(d, [(rng.randrange(0, 30000), 64)]))
            for _ in range(50):
                ok, e = attempt("destroy", lambda: ctl.destroy(sid))
                if ok or e != errno.ENOMEM:
                    break
            if rng.random() < 0.2:
                for d in devs:
                    attempt("tracker_remove", lambda: ctl.tracker_remove(d))
    finally:
        mark(False)
    # Without faults: everything left can be destroyed and removed.
    for sid in ctl.snapshots():
        try:
            ctl.destroy(sid)
        except OSError as e:
            fail(f"destroy after the faults: {bsctl.errname(e.errno)}")
    for op, c in sorted(counts.items()):
        print(f"{op}: " + ", ".join(f"{v} {k}" for k, v in sorted(c.items())), flush=True)
    enomem = sum(c.get("ENOMEM", 0) for c in counts.values())
    print(f"total: {sum(sum(c.values()) for c in counts.values())} calls, {enomem} ENOMEM",
          flush=True)
    if enomem == 0:
        fail("no allocation failure reached the module's paths (is failslab on?)")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
