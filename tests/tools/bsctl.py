#!/usr/bin/python3
"""Raw blksnap ioctls for the tests: a small library and a command line.

Independent of the project's own user-space code: the structures are packed
by hand from include/uapi/linux/blk_snap.h (x86_64 layout).

Command line (DEV is a block device path or MAJOR:MINOR; ID is the 32 hex
digits of a snapshot id; a RANGE is START+COUNT in sectors):

    bsctl.py create DEV... [--count N] [--ptr ADDR]     prints "id=ID"
    bsctl.py destroy ID
    bsctl.py take ID
    bsctl.py collect [--count N] [--null] [--ptr ADDR]  prints "count=N", then "id=ID" lines
    bsctl.py trackers [--count N] [--null] [--ptr ADDR] prints "count=N", then one line a tracker
    bsctl.py info DEV                                   the tracker line of DEV (exit 4 if untracked)
    bsctl.py remove DEV
    bsctl.py read-map DEV [--offset O] [--length L] [--ptr ADDR] [--out FILE]
                                                        prints "ret=N" (bytes copied)
    bsctl.py map DEV [--out FILE]                       the whole readable table; prints
                                                        "len=N changed=N max=N"
    bsctl.py mark-dirty DEV RANGE... [--count N] [--ptr ADDR]
    bsctl.py append-storage ID DEV RANGE... [--count N] [--ptr ADDR]
    bsctl.py raw CMD --addr ADDR                        any ioctl with a raw argument address
    bsctl.py serve                                      runs command lines read from stdin
                                                        (see serve())
    bsctl.py wait-event ID [--timeout MS]               prints "code=N time_label=NS
                                                        requested=N" (or dev/err for corrupted)
                                                        and "elapsed_ms=N now_ns=CLOCK_MONOTONIC"

A tracker line is "dev=MJ:MN blk_size=N capacity=BYTES blk_count=N
generation=HEX snap=N". Exit status 0 on success; when the ioctl fails,
prints "errno=NAME" (and "elapsed_ms=N" for wait-event) and exits 1; when
opening /dev/blksnap fails, "open-errno=NAME" and exit 3; usage errors 2.
SIGUSR1 is caught (so that it interrupts a wait instead of killing).
"""

import argparse
import ctypes
import errno
import os
import signal
import stat
import struct
import sys
import time

CTL = "/dev/blksnap"

IOCTL_VERSION = 0x40085600
IOCTL_TRACKER_REMOVE = 0x40085601
IOCTL_TRACKER_COLLECT = 0x40105602
IOCTL_TRACKER_READ_CBT_MAP = 0x80185603
IOCTL_TRACKER_MARK_DIRTY_BLOCKS = 0x80185604
IOCTL_SNAPSHOT_CREATE = 0x40205605
IOCTL_SNAPSHOT_DESTROY = 0x80105606
IOCTL_SNAPSHOT_APPEND_STORAGE = 0x40285607
IOCTL_SNAPSHOT_TAKE = 0x80105608
IOCTL_SNAPSHOT_COLLECT = 0x40105609
IOCTL_SNAPSHOT_COLLECT_IMAGES = 0x4020560A
IOCTL_SNAPSHOT_WAIT_EVENT = 0x5000560B

EVENT_LOW_FREE_SPACE = 0
EVENT_CORRUPTED = 1

CBT_INFO_SIZE = 48
EVENT_SIZE = 4096

_libc = ctypes.CDLL(None, use_errno=True)
_libc.ioctl.argtypes = [ctypes.c_int, ctypes.c_ulong, ctypes.c_void_p]
_libc.ioctl.restype = ctypes.c_int


def errname(e):
    return errno.errorcode.get(e, str(e))


class CbtInfo:
    """One blk_snap_cbt_info."""

    __slots__ = ("mj", "mn", "blk_size", "capacity", "blk_count", "generation", "snap_number")

    def __init__(self, raw):
        (self.mj, self.mn, self.blk_size, self.capacity, self.blk_count, gen,
         self.snap_number) = struct.unpack_from("<IIIxxxxQI16sB", raw)
        self.generation = bytes(gen)

    @property
    def dev(self):
        return (self.mj, self.mn)

    def line(self):
        return (f"dev={self.mj}:{self.mn} blk_size={self.blk_size} capacity={self.capacity} "
                f"blk_count={self.blk_count} generation={self.generation.hex()} "
                f"snap={self.snap_number}")


class Event:
    __slots__ = ("code", "time_label", "data")

    def __init__(self, code, time_label, data):
        self.code, self.time_label, self.data = code, time_label, data

    def describe(self):
        s = f"code={self.code} time_label={self.time_label}"
        if self.code == EVENT_LOW_FREE_SPACE:
            (req,) = struct.unpack_from("<Q", self.data)
            s += f" requested={req}"
        elif self.code == EVENT_CORRUPTED:
            mj, mn, err = struct.unpack_from("<IIi", self.data)
            s += f" dev={mj}:{mn} err={err}"
        return s


def parse_dev(spec):
    """(major, minor) of a block device path or a MAJOR:MINOR string."""
    if ":" in spec and not spec.startswith("/"):
        a, b = spec.split(":", 1)
        return (int(a, 0), int(b, 0))
    try:
        st = os.stat(spec)
    except OSError as e:
        raise ValueError(f"{spec}: {e.strerror}") from None
    if not stat.S_ISBLK(st.st_mode):
        raise ValueError(f"{spec} is not a block device")
    return (os.major(st.st_rdev), os.minor(st.st_rdev))


def parse_range(spec):
    a, b = spec.split("+", 1)
    return (int(a, 0), int(b, 0))


def _addr(buf):
    return ctypes.addressof(buf) if buf is not None else 0


class Ctl:
    """The control device, with one method per ioctl. Failures raise OSError."""

    def __init__(self, path=CTL):
        self.fd = os.open(path, os.O_RDWR)

    def close(self):
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1

    def __enter__(self):
        return self

    def __exit__(self, *a):
        self.close()

    def ioctl(self, cmd, arg):
        """Raw ioctl; arg is a ctypes buffer or an integer address."""
        addr = arg if isinstance(arg, int) else ctypes.addressof(arg)
        ret = _libc.ioctl(self.fd, cmd, addr)
        if ret < 0:
            e = ctypes.get_errno()
            raise OSError(e, os.strerror(e))
        return ret

    # ---- service ----
    def version(self):
        buf = ctypes.create_string_buffer(8)
        self.ioctl(IOCTL_VERSION, buf)
        return struct.unpack("<4H", buf.raw)

    # ---- trackers ----
    def tracker_remove(self, dev):
        buf = ctypes.create_string_buffer(struct.pack("<II", *dev), 8)
        return self.ioctl(IOCTL_TRACKER_REMOVE, buf)

    def _collect(self, nr, size, count, ptr, array_len):
        """A collection ioctl nr ({u32 count; u64 ptr} in, count out) with
        an array of array_len entries of size bytes (or the raw address ptr;
        None array_len and ptr: a null pointer). Returns (ret, count_out,
        [the entries filled in, as bytes]) or raises; on ENODATA the OSError
        carries the count as .count_out."""
        arr = None
        if ptr is None and array_len is not None:
            arr = ctypes.create_string_buffer(max(array_len, 1) * size)
        p = ptr if ptr is not None else _addr(arr)
        arg = ctypes.create_string_buffer(struct.pack("<IxxxxQ", count & 0xFFFFFFFF, p), 16)
        try:
            ret = self.ioctl(nr, arg)
        except OSError as e:
            e.count_out = struct.unpack_from("<I", arg.raw)[0]
            raise
        n = struct.unpack_from("<I", arg.raw)[0]
        entries = []
        if arr is not None:
            entries = [arr.raw[i * size:(i + 1) * size] for i in range(min(n, array_len))]
        return ret, n, entries

    def tracker_collect_raw(self, count, ptr=None, array_len=None):
        """TRACKER_COLLECT with count and an array of array_len entries (or
        the raw address ptr; None array_len and ptr: a null pointer).
        Returns (ret, count_out, [CbtInfo...]) or raises; on ENODATA the
        OSError carries the count as .count_out."""
        ret, n, raw = self._collect(IOCTL_TRACKER_COLLECT, CBT_INFO_SIZE, count, ptr, array_len)
        return ret, n, [CbtInfo(r) for r in raw]

    def trackers(self):
        """Every tracker, by the two-call protocol."""
        for _ in range(10):
            _, n, _ = self.tracker_collect_raw(0)
            try:
                _, m, infos = self.tracker_collect_raw(n, array_len=n)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue
                raise
            return infos[:m]
        raise RuntimeError("the tracker count keeps changing")

    def info(self, dev):
        for i in self.trackers():
            if i.dev == tuple(dev):
                return i
        return None

    def read_cbt_raw(self, dev, offset, length, buf=None, ptr=None):
        """READ_CBT_MAP into buf (a ctypes buffer of at least length bytes)
        or the raw address ptr. Returns the ioctl's return value."""
        p = ptr if ptr is not None else _addr(buf)
        arg = ctypes.create_string_buffer(
            struct.pack("<IIIIQ", dev[0], dev[1], offset & 0xFFFFFFFF, length & 0xFFFFFFFF, p), 24)
        return self.ioctl(IOCTL_TRACKER_READ_CBT_MAP, arg)

    def read_cbt(self, dev, offset, length):
        buf = ctypes.create_string_buffer(max(length, 1))
        n = self.read_cbt_raw(dev, offset, length, buf)
        return buf.raw[:n]

    def read_map(self, dev, blk_count=None, piece=65536):
        """The whole readable table, read in pieces until a read returns 0."""
        out = bytearray()
        while True:
            chunk = self.read_cbt(dev, len(out), piece)
            if not chunk:
                break
            out += chunk
            if blk_count is not None and len(out) > blk_count:
                break
        return bytes(out)

    def _ranges_buf(self, ranges):
        data = b"".join(struct.pack("<QQ", s, c) for s, c in ranges)
        return ctypes.create_string_buffer(data, max(len(data), 1))

    def mark_dirty(self, dev, ranges, count=None, ptr=None):
        arr = self._ranges_buf(ranges)
        n = len(ranges) if count is None else count
        p = ptr if ptr is not None else _addr(arr)
        arg = ctypes.create_string_buffer(
            struct.pack("<IIIxxxxQ", dev[0], dev[1], n & 0xFFFFFFFF, p), 24)
        return self.ioctl(IOCTL_TRACKER_MARK_DIRTY_BLOCKS, arg)

    # ---- snapshots ----
    def create(self, devs, count=None, ptr=None):
        data = b"".join(struct.pack("<II", *d) for d in devs)
        arr = ctypes.create_string_buffer(data, max(len(data), 1))
        n = len(devs) if count is None else count
        p = ptr if ptr is not None else _addr(arr)
        arg = ctypes.create_string_buffer(struct.pack("<IxxxxQ16x", n & 0xFFFFFFFF, p), 32)
        self.ioctl(IOCTL_SNAPSHOT_CREATE, arg)
        return bytes(arg.raw[16:32])

    def _id_arg(self, sid):
        return ctypes.create_string_buffer(bytes(sid), 16)

    def destroy(self, sid):
        return self.ioctl(IOCTL_SNAPSHOT_DESTROY, self._id_arg(sid))

    def take(self, sid):
        return self.ioctl(IOCTL_SNAPSHOT_TAKE, self._id_arg(sid))

    def append_storage(self, sid, dev, ranges, count=None, ptr=None):
        arr = self._ranges_buf(ranges)
        n = len(ranges) if count is None else count
        p = ptr if ptr is not None else _addr(arr)
        arg = ctypes.create_string_buffer(
            bytes(sid) + struct.pack("<IIIxxxxQ", dev[0], dev[1], n & 0xFFFFFFFF, p), 40)
        return self.ioctl(IOCTL_SNAPSHOT_APPEND_STORAGE, arg)

    def collect_raw(self, count, ptr=None, array_len=None):
        return self._collect(IOCTL_SNAPSHOT_COLLECT, 16, count, ptr, array_len)

    def snapshots(self):
        for _ in range(10):
            try:
                _, n, _ = self.collect_raw(0)
            except OSError as e:
                if e.errno != errno.ENODATA:
                    raise
                n = e.count_out
            if n == 0:
                return []
            try:
                _, m, ids = self.collect_raw(n, array_len=n)
            except OSError as e:
                if e.errno == errno.ENODATA:
                    continue
                raise
            return ids[:m]
        raise RuntimeError("the snapshot count keeps changing")

    def wait_event(self, sid, timeout_ms):
        arg = ctypes.create_string_buffer(bytes(sid) + struct.pack("<I", timeout_ms & 0xFFFFFFFF),
                                          EVENT_SIZE)
        self.ioctl(IOCTL_SNAPSHOT_WAIT_EVENT, arg)
        code, tl = struct.unpack_from("<Iq", arg.raw, 20)
        return Event(code, tl, bytes(arg.raw[32:]))


# ---------------------------------------------------------------- CLI


def _print_err(e, extra=None):
    print(f"errno={errname(e.errno)}")
    if extra:
        print(extra)
    print(f"bsctl: {os.strerror(e.errno)}", file=sys.stderr)
    sys.exit(1)


def _int(s):
    return int(s, 0)


def _sid(s):
    b = bytes.fromhex(s.replace("-", ""))
    if len(b) != 16:
        raise argparse.ArgumentTypeError("a snapshot id is 32 hex digits")
    return b


_PARSER = None


def parser():
    """The command line parser, built once (serve mode parses many lines)."""
    global _PARSER
    if _PARSER is None:
        _PARSER = _build_parser()
    return _PARSER


def main(argv=None):
    # Untranslated messages, and no gettext catalogue lookups (slow on the
    # test VM's 9p root).
    os.environ["LANGUAGE"] = "C"
    a = parser().parse_args(argv)

    if a.op == "serve":
        serve()
        return
    signal.signal(signal.SIGUSR1, lambda *_: None)
    try:
        ctl = Ctl(a.ctl)
    except OSError as e:
        print(f"open-errno={errname(e.errno)}")
        sys.exit(3)
    try:
        run(a, ctl)
    finally:
        ctl.close()


def _build_parser():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--ctl", default=CTL)
    sub = p.add_subparsers(dest="op", required=True)

    s = sub.add_parser("create")
    s.add_argument("devs", nargs="*")
    s.add_argument("--count", type=_int)
    s.add_argument("--ptr", type=_int)
    s = sub.add_parser("destroy")
    s.add_argument("id", type=_sid)
    s = sub.add_parser("take")
    s.add_argument("id", type=_sid)
    for name in ("collect", "trackers"):
        s = sub.add_parser(name)
        s.add_argument("--count", type=_int)
        s.add_argument("--null", action="store_true", help="pass a null array pointer")
        s.add_argument("--ptr", type=_int)
    s = sub.add_parser("info")
    s.add_argument("dev")
    s = sub.add_parser("remove")
    s.add_argument("dev")
    s = sub.add_parser("read-map")
    s.add_argument("dev")
    s.add_argument("--offset", type=_int, default=0)
    s.add_argument("--length", type=_int, default=4096)
    s.add_argument("--ptr", type=_int)
    s.add_argument("--out")
    s = sub.add_parser("map")
    s.add_argument("dev")
    s.add_argument("--out")
    s = sub.add_parser("mark-dirty")
    s.add_argument("dev")
    s.add_argument("ranges", nargs="*")
    s.add_argument("--count", type=_int)
    s.add_argument("--ptr", type=_int)
    s = sub.add_parser("append-storage")
    s.add_argument("id", type=_sid)
    s.add_argument("dev")
    s.add_argument("ranges", nargs="*")
    s.add_argument("--count", type=_int)
    s.add_argument("--ptr", type=_int)
    s = sub.add_parser("wait-event")
    s.add_argument("id", type=_sid)
    s.add_argument("--timeout", type=_int, default=0)
    s = sub.add_parser("raw")
    s.add_argument("cmd", type=_int)
    s.add_argument("--addr", type=_int, required=True)
    sub.add_parser("serve")
    return p


def run(a, ctl):
    try:
        if a.op == "raw":
            print(f"ret={ctl.ioctl(a.cmd, a.addr)}")
        elif a.op == "create":
            sid = ctl.create([parse_dev(d) for d in a.devs], count=a.count, ptr=a.ptr)
            print(f"id={sid.hex()}")
        elif a.op == "destroy":
            ctl.destroy(a.id)
        elif a.op == "take":
            ctl.take(a.id)
        elif a.op in ("collect", "trackers"):
            raw = ctl.collect_raw if a.op == "collect" else ctl.tracker_collect_raw
            count = a.count if a.count is not None else 0
            if a.ptr is not None:
                ret, n, items = raw(count, ptr=a.ptr)
            elif a.null:
                ret, n, items = raw(count)
            else:
                ret, n, items = raw(count, array_len=count)
            print(f"ret={ret}")
            print(f"count={n}")
            for it in items:
                print(f"id={it.hex()}" if a.op == "collect" else it.line())
        elif a.op == "info":
            i = ctl.info(parse_dev(a.dev))
            if i is None:
                print("not-tracked")
                sys.exit(4)
            print(i.line())
        elif a.op == "remove":
            ctl.tracker_remove(parse_dev(a.dev))
        elif a.op == "read-map":
            dev = parse_dev(a.dev)
            if a.ptr is not None:
                ret = ctl.read_cbt_raw(dev, a.offset, a.length, ptr=a.ptr)
                data = b""
            else:
                buf = ctypes.create_string_buffer(max(a.length, 1))
                ret = ctl.read_cbt_raw(dev, a.offset, a.length, buf)
                data = buf.raw[:max(ret, 0)]
            print(f"ret={ret}")
            if a.out:
                with open(a.out, "wb") as f:
                    f.write(data)
        elif a.op == "map":
            data = ctl.read_map(parse_dev(a.dev))
            if a.out:
                with open(a.out, "wb") as f:
                    f.write(data)
            changed = sum(1 for b in data if b)
            print(f"len={len(data)} changed={changed} max={max(data) if data else 0}")
        elif a.op == "mark-dirty":
            ctl.mark_dirty(parse_dev(a.dev), [parse_range(r) for r in a.ranges],
                           count=a.count, ptr=a.ptr)
        elif a.op == "append-storage":
            ctl.append_storage(a.id, parse_dev(a.dev), [parse_range(r) for r in a.ranges],
                               count=a.count, ptr=a.ptr)
        elif a.op == "wait-event":
            t0 = time.monotonic()
            try:
                ev = ctl.wait_event(a.id, a.timeout)
            except OSError as e:
                _print_err(e, f"elapsed_ms={int((time.monotonic() - t0) * 1000)}")
            now = time.monotonic_ns()
            print(ev.describe())
            print(f"elapsed_ms={int((time.monotonic() - t0) * 1000)} now_ns={now}")
    except ValueError as e:
        print(f"bsctl: {e}", file=sys.stderr)
        sys.exit(2)
    except OSError as e:
        if getattr(e, "count_out", None) is not None:
            print(f"count={e.count_out}")
        _print_err(e)


def serve():
    """Runs one command line a line from stdin (shell words, as bash's
    printf %q writes them) and answers with its output, then a line of
    "\\x1e" and the exit status. Saves starting Python for every call."""
    import contextlib
    import io
    import shlex
    import traceback
    out = sys.stdout
    for line in sys.stdin:
        buf = io.StringIO()
        rc = 0
        with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(buf):
            try:
                main(shlex.split(line))
            except SystemExit as e:
                rc = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
                if not isinstance(e.code, int) and e.code is not None:
                    print(e.code)
            except Exception:  # noqa: BLE001 - reported to the caller
                traceback.print_exc()
                rc = 1
        out.write(buf.getvalue())
        out.write(f"\x1e{rc}\n")
        out.flush()


if __name__ == "__main__":
    main()
