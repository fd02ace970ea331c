// SPDX-License-Identifier: GPL-2.0
/*
 * The call patterns of include/uapi/linux/blk_snap.h, driven as existing
 * user space drives them: compiled against the header alone, raw ioctl(2)
 * on /dev/blksnap. One KTAP case per pattern.
 *
 *   uapi_patterns [--first N] ORIG1 ORIG2 ORIG3 STORAGE
 *   uapi_patterns --count
 *
 * ORIG1..3 are three block devices of the same size that nothing else
 * writes (ramdisks), untracked, with the module freshly loaded: no
 * trackers, no snapshots. STORAGE is a fourth device, at least 24 MiB, for
 * the difference storage; it is never tracked. The devices are written.
 *
 * --count prints the number of cases; --first N numbers them from N and
 * leaves out the KTAP header and plan (for a test script that reports
 * cases of its own too). Exit status 0 if every case passed.
 *
 * Build: gcc -Wall -Werror -I include/uapi -o uapi_patterns uapi_patterns.c
 */
#define _GNU_SOURCE
#include <assert.h> /* static_assert, which the header uses */
#include <errno.h>
#include <fcntl.h>
#include <inttypes.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/sysmacros.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>
#include <linux/fs.h>

#include <linux/blk_snap.h>

#define SECTOR 512ULL
#define MIB (1024ULL * 1024ULL)
#define SENTINEL 0xa5

struct dev {
	const char *path;
	struct blk_snap_dev id;
	uint64_t bytes;
	int fd; /* O_DIRECT, read-write */
};

static int ctl = -1;
static struct dev orig[3], storage;
static uint64_t storage_used; /* sectors of STORAGE handed out */

/* Snapshots: A of ORIG1+ORIG2 (taken), B of ORIG3 (never taken), C the
 * second snapshot of ORIG1+ORIG2, E of ORIG3 with too little storage. */
static struct blk_snap_uuid id_a, id_b, id_c, id_e;
static int have_a, have_b, taken_a, have_c, taken_c;
static struct blk_snap_image_info images_a[2];
static int have_images_a;
static struct blk_snap_cbt_info info_before[2]; /* ORIG1, ORIG2 after CREATE */
static int64_t create_ns;
static const struct blk_snap_uuid unknown_id = {
	.b = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
	       0x01, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef }
};

/* ---- KTAP ---- */

static int case_n, failed;

static void diag(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void diag(const char *fmt, ...)
{
	va_list ap;

	fputs("# ", stdout);
	va_start(ap, fmt);
	vprintf(fmt, ap);
	va_end(ap);
	fputc('\n', stdout);
}

/* ---- helpers ---- */

/* ioctl: its return value, or -errno. */
static long call(unsigned long req, void *arg)
{
	long r = ioctl(ctl, req, arg);

	return r < 0 ? -errno : r;
}

static const char *errname(long r)
{
	static char buf[32];

	switch (-r) {
	case 0: return "0";
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EINTR: return "EINTR";
	case EFAULT: return "EFAULT";
	case EBUSY: return "EBUSY";
	case ENODEV: return "ENODEV";
	case EINVAL: return "EINVAL";
	case ENOSPC: return "ENOSPC";
	case ENOTTY: return "ENOTTY";
	case ENODATA: return "ENODATA";
	case EALREADY: return "EALREADY";
	case ENOMEM: return "ENOMEM";
	}
	snprintf(buf, sizeof(buf), r < 0 ? "errno %ld" : "%ld", r < 0 ? -r : r);
	return buf;
}

/* Fails the case (returns 0) unless r is want (0 or -ERRNO). */
static int want(long r, long want_r, const char *what)
{
	if (r == want_r)
		return 1;
	diag("%s: got %s, expected %s", what, errname(r),
	     want_r ? errname(want_r) : "0");
	return 0;
}

static int64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int same_dev(struct blk_snap_dev a, struct blk_snap_dev b)
{
	return a.mj == b.mj && a.mn == b.mn;
}

static int same_id(const struct blk_snap_uuid *a, const struct blk_snap_uuid *b)
{
	return !memcmp(a->b, b->b, sizeof(a->b));
}

static int is_zero(const void *p, size_t n)
{
	const unsigned char *c = p;

	while (n--)
		if (*c++)
			return 0;
	return 1;
}

static int untouched(const void *p, size_t n)
{
	const unsigned char *c = p;

	while (n--)
		if (*c++ != SENTINEL)
			return 0;
	return 1;
}

static long read_param(const char *name)
{
	char path[128];
	long v = -1;
	FILE *f;

	snprintf(path, sizeof(path), "/sys/module/blksnap/parameters/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	if (fscanf(f, "%ld", &v) != 1)
		v = -1;
	fclose(f);
	return v;
}

static int open_dev(struct dev *d, const char *path)
{
	struct stat st;

	d->path = path;
	d->fd = open(path, O_RDWR | O_DIRECT);
	if (d->fd < 0 || fstat(d->fd, &st) || !S_ISBLK(st.st_mode) ||
	    ioctl(d->fd, BLKGETSIZE64, &d->bytes)) {
		fprintf(stderr, "uapi_patterns: %s: not a usable block device: %s\n",
			path, strerror(errno));
		return -1;
	}
	d->id.mj = major(st.st_rdev);
	d->id.mn = minor(st.st_rdev);
	return 0;
}

/* Writes 4 KiB of `byte` at `offset` of the device, directly. */
static int write_at(struct dev *d, uint64_t offset, int byte)
{
	void *buf;
	ssize_t n;

	if (posix_memalign(&buf, 4096, 4096))
		return -1;
	memset(buf, byte, 4096);
	n = pwrite(d->fd, buf, 4096, (off_t)offset);
	free(buf);
	if (n != 4096) {
		diag("write of %s at %" PRIu64 ": %s", d->path, offset,
		     n < 0 ? strerror(errno) : "short write");
		return -1;
	}
	return 0;
}

static long create(struct blk_snap_uuid *id, struct blk_snap_dev *devs, __u32 count)
{
	struct blk_snap_snapshot_create a = { .count = count, .dev_id_array = devs };
	long r = call(IOCTL_BLK_SNAP_SNAPSHOT_CREATE, &a);

	if (r == 0 && id)
		*id = a.id;
	return r;
}

static long destroy(const struct blk_snap_uuid *id)
{
	struct blk_snap_snapshot_destroy a = { .id = *id };

	return call(IOCTL_BLK_SNAP_SNAPSHOT_DESTROY, &a);
}

static long take(const struct blk_snap_uuid *id)
{
	struct blk_snap_snapshot_take a = { .id = *id };

	return call(IOCTL_BLK_SNAP_SNAPSHOT_TAKE, &a);
}

static long append(const struct blk_snap_uuid *id, struct blk_snap_dev dev,
		   struct blk_snap_block_range *ranges, __u32 count)
{
	struct blk_snap_snapshot_append_storage a = {
		.id = *id, .dev_id = dev, .count = count, .ranges = ranges,
	};

	return call(IOCTL_BLK_SNAP_SNAPSHOT_APPEND_STORAGE, &a);
}

/* Appends the next `sectors` of STORAGE (page-aligned) to snapshot `id`. */
static long append_next(const struct blk_snap_uuid *id, uint64_t sectors)
{
	struct blk_snap_block_range r = { storage_used, sectors };
	long ret;

	if ((storage_used + sectors) * SECTOR > storage.bytes) {
		diag("STORAGE is too small");
		return -ENOSPC;
	}
	ret = append(id, storage.id, &r, 1);
	if (ret == 0)
		storage_used += sectors;
	return ret;
}

static long wait_event(const struct blk_snap_uuid *id, __u32 timeout_ms,
		       struct blk_snap_snapshot_event *ev)
{
	memset(ev, 0, sizeof(*ev));
	ev->id = *id;
	ev->timeout_ms = timeout_ms;
	return call(IOCTL_BLK_SNAP_SNAPSHOT_WAIT_EVENT, ev);
}

static long mark(struct blk_snap_dev dev, struct blk_snap_block_range *r, __u32 count)
{
	struct blk_snap_tracker_mark_dirty_blocks a = {
		.dev_id = dev, .count = count, .dirty_blocks_array = r,
	};

	return call(IOCTL_BLK_SNAP_TRACKER_MARK_DIRTY_BLOCKS, &a);
}

static long read_map(struct blk_snap_dev dev, __u32 offset, __u32 length, void *buf)
{
	struct blk_snap_tracker_read_cbt_bitmap a = {
		.dev_id = dev, .offset = offset, .length = length, .buff = buf,
	};

	return call(IOCTL_BLK_SNAP_TRACKER_READ_CBT_MAP, &a);
}

/* TRACKER_COLLECT into an array of `count` (NULL when `arr` is NULL). */
static long tracker_collect(struct blk_snap_cbt_info *arr, __u32 count, __u32 *out)
{
	struct blk_snap_tracker_collect a = { .count = count, .cbt_info_array = arr };
	long r = call(IOCTL_BLK_SNAP_TRACKER_COLLECT, &a);

	*out = a.count;
	return r;
}

static long snapshot_collect(struct blk_snap_uuid *ids, __u32 count, __u32 *out)
{
	struct blk_snap_snapshot_collect a = { .count = count, .ids = ids };
	long r = call(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT, &a);

	*out = a.count;
	return r;
}

static long collect_images(const struct blk_snap_uuid *id, struct blk_snap_image_info *arr,
			   __u32 count, __u32 *out)
{
	struct blk_snap_snapshot_collect_images a = {
		.id = *id, .count = count, .image_info_array = arr,
	};
	long r = call(IOCTL_BLK_SNAP_SNAPSHOT_COLLECT_IMAGES, &a);

	*out = a.count;
	return r;
}

/* The cbt_info of `dev` from TRACKER_COLLECT (two calls). */
static int tracker_info(struct blk_snap_dev dev, struct blk_snap_cbt_info *info)
{
	struct blk_snap_cbt_info arr[16];
	__u32 n, i;
	long r;

	r = tracker_collect(arr, 16, &n);
	if (r) {
		diag("TRACKER_COLLECT: %s", errname(r));
		return 0;
	}
	for (i = 0; i < n && i < 16; i++) {
		if (same_dev(arr[i].dev_id, dev)) {
			*info = arr[i];
			return 1;
		}
	}
	diag("%u:%u is not tracked", dev.mj, dev.mn);
	return 0;
}

/* The whole readable table of `dev` (blk_count bytes) into `map`. */
static int whole_map(struct blk_snap_dev dev, unsigned char *map, __u32 blk_count)
{
	long r = read_map(dev, 0, blk_count, map);

	if (r != (long)blk_count) {
		diag("READ_CBT_MAP of %u:%u, %u bytes: got %s", dev.mj, dev.mn,
		     blk_count, errname(r));
		return 0;
	}
	return 1;
}

/* Checks that map[b] is `marked` for the blocks in `blocks` and 0 elsewhere
 * (a block listed with value 0 is skipped). */
static int map_is(const unsigned char *map, __u32 blk_count, const __u32 *blocks,
		  const unsigned char *values, int nblocks)
{
	int ok = 1, bad = 0, j;
	__u32 b;

	for (b = 0; b < blk_count; b++) {
		unsigned char want_v = 0;

		for (j = 0; j < nblocks; j++)
			if (blocks[j] == b)
				want_v = values[j];
		if (map[b] != want_v) {
			if (bad++ < 8)
				diag("block %u: byte %u, expected %u", b, map[b], want_v);
			ok = 0;
		}
	}
	if (bad > 8)
		diag("... %d blocks differ", bad);
	return ok;
}

/* Waits up to `ms` for an event of `code`, skipping low_free_space ones. */
static long wait_for_code(const struct blk_snap_uuid *id, __u32 code, int ms,
			  struct blk_snap_snapshot_event *ev)
{
	int64_t end = now_ns() + (int64_t)ms * 1000000;
	long r;

	do {
		r = wait_event(id, 200, ev);
		if (r == 0 && ev->code == code)
			return 0;
	} while ((r == 0 || r == -ENOENT) && now_ns() < end);
	return r ? r : -ENOENT;
}

static volatile sig_atomic_t alarms;
static void on_alarm(int sig)
{
	(void)sig;
	alarms++;
}

/* ---- the cases, in order ---- */

static int t_version(void)
{
	struct blk_snap_version v;

	memset(&v, 0xff, sizeof(v));
	if (!want(call(IOCTL_BLK_SNAP_VERSION, &v), 0, "VERSION"))
		return 0;
	diag("version %u.%u.%u.%u", v.major, v.minor, v.revision, v.build);
	if (v.build != 0) {
		diag("build is %u", v.build);
		return 0;
	}
	return 1;
}

static int t_empty_tracker_query(void)
{
	__u32 n = 77;

	return want(tracker_collect(NULL, 0, &n), 0, "TRACKER_COLLECT(NULL, 0)") &&
	       (n == 0 || (diag("count %u, expected 0", n), 0));
}

static int t_empty_snapshot_query(void)
{
	__u32 n = 77;

	return want(snapshot_collect(NULL, 0, &n), 0, "SNAPSHOT_COLLECT(NULL, 0)") &&
	       (n == 0 || (diag("count %u, expected 0", n), 0));
}

static int t_create_zero(void)
{
	__u32 n;

	return want(create(NULL, NULL, 0), -EINVAL, "CREATE(NULL, 0)") &&
	       want(snapshot_collect(NULL, 0, &n), 0, "SNAPSHOT_COLLECT") &&
	       (n == 0 || (diag("a snapshot was left: count %u", n), 0));
}

static int t_create_duplicate(void)
{
	struct blk_snap_dev d[2] = { orig[0].id, orig[0].id };
	__u32 n;

	return want(create(NULL, d, 2), -EINVAL, "CREATE(ORIG1, ORIG1)") &&
	       want(tracker_collect(NULL, 0, &n), 0, "TRACKER_COLLECT") &&
	       (n == 0 || (diag("a tracker was left: count %u", n), 0));
}

static int t_create(void)
{
	struct blk_snap_dev d[2] = { orig[0].id, orig[1].id };
	struct blk_snap_dev d3 = orig[2].id;

	create_ns = now_ns();
	memset(&id_a, 0, sizeof(id_a));
	if (!want(create(&id_a, d, 2), 0, "CREATE(ORIG1, ORIG2)"))
		return 0;
	have_a = 1;
	if (is_zero(&id_a, sizeof(id_a))) {
		diag("the id is all zero");
		return 0;
	}
	if (!want(create(&id_b, &d3, 1), 0, "CREATE(ORIG3)"))
		return 0;
	have_b = 1;
	if (same_id(&id_a, &id_b)) {
		diag("both snapshots got the same id");
		return 0;
	}
	return 1;
}

static int t_create_busy(void)
{
	struct blk_snap_dev d[2] = { orig[1].id, storage.id };
	__u32 n;

	return want(create(NULL, d, 2), -EALREADY, "CREATE(ORIG2, STORAGE)") &&
	       want(snapshot_collect(NULL, 0, &n), 0, "SNAPSHOT_COLLECT") &&
	       (n == 2 || (diag("count %u, expected 2", n), 0));
}

static int t_tracker_query(void)
{
	__u32 n = 0;

	return want(tracker_collect(NULL, 0, &n), 0, "TRACKER_COLLECT(NULL, 0)") &&
	       (n == 3 || (diag("count %u, expected 3", n), 0));
}

static int t_tracker_small(void)
{
	struct blk_snap_cbt_info arr[2];
	__u32 c, n;

	for (c = 0; c < 3; c++) {
		memset(arr, SENTINEL, sizeof(arr));
		n = 99;
		if (!want(tracker_collect(arr, c, &n), -ENODATA, "TRACKER_COLLECT(array, too small)"))
			return 0;
		if (n != 3) {
			diag("count %u passed: count %u, expected 3", c, n);
			return 0;
		}
		if (!untouched(arr, sizeof(arr))) {
			diag("count %u passed: the array was written", c);
			return 0;
		}
	}
	return 1;
}

static int t_tracker_fill(void)
{
	struct blk_snap_cbt_info arr[5];
	__u32 c, n, i, j;

	for (c = 3; c <= 5; c += 2) {
		memset(arr, SENTINEL, sizeof(arr));
		if (!want(tracker_collect(arr, c, &n), 0, "TRACKER_COLLECT(array)"))
			return 0;
		if (n != 3) {
			diag("count %u passed: count %u, expected 3", c, n);
			return 0;
		}
		if (!untouched(&arr[3], sizeof(arr[0]) * (c - 3))) {
			diag("count %u passed: entries past the third were written", c);
			return 0;
		}
		for (j = 0; j < 3; j++) {
			struct blk_snap_cbt_info *e = NULL;

			for (i = 0; i < 3; i++)
				if (same_dev(arr[i].dev_id, orig[j].id))
					e = &arr[i];
			if (!e) {
				diag("%s is not listed", orig[j].path);
				return 0;
			}
			if (e->blk_size < 512 || (e->blk_size & (e->blk_size - 1)) ||
			    e->device_capacity != orig[j].bytes ||
			    e->blk_count != (orig[j].bytes + e->blk_size - 1) / e->blk_size ||
			    e->snap_number != 0 ||
			    is_zero(&e->generation_id, sizeof(e->generation_id))) {
				diag("%s: blk_size %u capacity %llu blk_count %u snap_number %u",
				     orig[j].path, e->blk_size,
				     (unsigned long long)e->device_capacity, e->blk_count,
				     e->snap_number);
				return 0;
			}
			if (j < 2)
				info_before[j] = *e;
		}
	}
	diag("blk_size %u, blk_count %u", info_before[0].blk_size, info_before[0].blk_count);
	return 1;
}

static int t_snapshot_query(void)
{
	__u32 n = 0;

	return want(snapshot_collect(NULL, 0, &n), 0, "SNAPSHOT_COLLECT(NULL, 0)") &&
	       (n == 2 || (diag("count %u, expected 2", n), 0));
}

static int t_snapshot_small(void)
{
	struct blk_snap_uuid ids[2];
	__u32 c, n;

	for (c = 0; c < 2; c++) {
		memset(ids, SENTINEL, sizeof(ids));
		n = 99;
		if (!want(snapshot_collect(ids, c, &n), -ENODATA, "SNAPSHOT_COLLECT(array, too small)"))
			return 0;
		if (n != 2) {
			diag("count %u passed: count %u, expected 2", c, n);
			return 0;
		}
		if (!untouched(ids, sizeof(ids))) {
			diag("count %u passed: the array was written", c);
			return 0;
		}
	}
	return 1;
}

static int t_snapshot_fill(void)
{
	struct blk_snap_uuid ids[5];
	__u32 c, n;

	for (c = 2; c <= 5; c += 3) {
		memset(ids, SENTINEL, sizeof(ids));
		if (!want(snapshot_collect(ids, c, &n), 0, "SNAPSHOT_COLLECT(array)"))
			return 0;
		if (n != 2) {
			diag("count %u passed: count %u, expected 2", c, n);
			return 0;
		}
		if (!((same_id(&ids[0], &id_a) && same_id(&ids[1], &id_b)) ||
		      (same_id(&ids[0], &id_b) && same_id(&ids[1], &id_a)))) {
			diag("count %u passed: the ids are not those CREATE returned", c);
			return 0;
		}
		if (!untouched(&ids[2], sizeof(ids[0]) * (c - 2))) {
			diag("count %u passed: entries past the second were written", c);
			return 0;
		}
	}
	return 1;
}

static int t_images_before_take(void)
{
	struct blk_snap_image_info arr[2];
	__u32 n;

	return want(collect_images(&id_a, NULL, 0, &n), -ENODEV,
		    "COLLECT_IMAGES(NULL, 0) before TAKE") &&
	       want(collect_images(&id_a, arr, 2, &n), -ENODEV,
		    "COLLECT_IMAGES(array of 2) before TAKE");
}

static int t_images_unknown(void)
{
	__u32 n;

	return want(collect_images(&unknown_id, NULL, 0, &n), -ESRCH,
		    "COLLECT_IMAGES of an unknown id");
}

static int t_map_before_take(void)
{
	unsigned char buf[64];

	return want(read_map(orig[0].id, 0, sizeof(buf), buf), -EPERM,
		    "READ_CBT_MAP before TAKE");
}

static int t_map_untracked(void)
{
	unsigned char buf[64];

	return want(read_map(storage.id, 0, sizeof(buf), buf), -ENODEV,
		    "READ_CBT_MAP of STORAGE (untracked)");
}

static int t_first_event(void)
{
	static struct blk_snap_snapshot_event ev;
	struct blk_snap_event_low_free_space lfs;
	long minimum = read_param("diff_storage_minimum");
	int64_t now;

	if (!want(wait_event(&id_a, 5000, &ev), 0, "WAIT_EVENT(5000 ms) after CREATE"))
		return 0;
	now = now_ns();
	memcpy(&lfs, ev.data, sizeof(lfs));
	if (ev.code != blk_snap_event_code_low_free_space ||
	    (long long)lfs.requested_nr_sect != minimum) {
		diag("code %u requested_nr_sect %llu, expected code %d and diff_storage_minimum %ld",
		     ev.code, (unsigned long long)lfs.requested_nr_sect,
		     blk_snap_event_code_low_free_space, minimum);
		return 0;
	}
	if (ev.time_label < create_ns || ev.time_label > now) {
		diag("time_label %lld is not between CREATE (%lld) and now (%lld), CLOCK_MONOTONIC ns",
		     (long long)ev.time_label, (long long)create_ns, (long long)now);
		return 0;
	}
	/* The other snapshot has its own. */
	return want(wait_event(&id_b, 5000, &ev), 0, "WAIT_EVENT of the second snapshot") &&
	       (ev.code == blk_snap_event_code_low_free_space ||
		(diag("second snapshot: code %u", ev.code), 0));
}

static int t_wait_zero(void)
{
	static struct blk_snap_snapshot_event ev;
	int64_t t = now_ns();
	long r = wait_event(&id_a, 0, &ev);
	int64_t ms = (now_ns() - t) / 1000000;

	diag("returned after %lld ms", (long long)ms);
	return want(r, -ENOENT, "WAIT_EVENT(0 ms), nothing pending") &&
	       (ms < 1000 || (diag("took %lld ms", (long long)ms), 0));
}

static int t_wait_timeout(void)
{
	static struct blk_snap_snapshot_event ev;
	int64_t t = now_ns();
	long r = wait_event(&id_a, 300, &ev);
	int64_t ms = (now_ns() - t) / 1000000;

	diag("returned after %lld ms", (long long)ms);
	if (!want(r, -ENOENT, "WAIT_EVENT(300 ms), nothing pending"))
		return 0;
	if (ms < 290 || ms > 5000) {
		diag("took %lld ms, expected about 300", (long long)ms);
		return 0;
	}
	return 1;
}

static int t_wait_signal(void)
{
	static struct blk_snap_snapshot_event ev;
	struct sigaction sa = { .sa_handler = on_alarm }; /* no SA_RESTART */
	struct itimerval it = { .it_value = { .tv_usec = 200000 } };
	struct itimerval off = { { 0, 0 }, { 0, 0 } };
	int64_t t, ms;
	long r;

	sigemptyset(&sa.sa_mask);
	sigaction(SIGALRM, &sa, NULL);
	alarms = 0;
	t = now_ns();
	setitimer(ITIMER_REAL, &it, NULL);
	r = wait_event(&id_a, 20000, &ev);
	setitimer(ITIMER_REAL, &off, NULL);
	ms = (now_ns() - t) / 1000000;
	signal(SIGALRM, SIG_DFL);
	diag("returned after %lld ms", (long long)ms);
	if (!want(r, -EINTR, "WAIT_EVENT(20000 ms) with a signal after 200 ms"))
		return 0;
	if (!alarms || ms > 10000) {
		diag("signal handled %d times, %lld ms", (int)alarms, (long long)ms);
		return 0;
	}
	return 1;
}

static int t_wait_unknown(void)
{
	static struct blk_snap_snapshot_event ev;

	return want(wait_event(&unknown_id, 0, &ev), -ESRCH, "WAIT_EVENT of an unknown id");
}

static int t_append_misaligned(void)
{
	struct blk_snap_block_range r[2] = { { 1, 8 }, { 16, 7 } };

	return want(append(&id_a, storage.id, &r[0], 1), -EINVAL,
		    "APPEND_STORAGE(sector 1, 8 sectors)") &&
	       want(append(&id_a, storage.id, &r[1], 1), -EINVAL,
		    "APPEND_STORAGE(sector 16, 7 sectors)");
}

static int t_append_unknown(void)
{
	struct blk_snap_block_range r = { 0, 2048 };

	return want(append(&unknown_id, storage.id, &r, 1), -ESRCH,
		    "APPEND_STORAGE to an unknown id");
}

static int t_append_zero(void)
{
	return want(append(&id_a, storage.id, NULL, 0), 0, "APPEND_STORAGE(NULL, 0)");
}

static int t_append_before_take(void)
{
	/* 16 MiB: far more than the chunks written below. */
	return want(append_next(&id_a, 16 * MIB / SECTOR), 0, "APPEND_STORAGE before TAKE");
}

static int t_mark_untracked(void)
{
	struct blk_snap_block_range r = { 0, 8 };

	return want(mark(storage.id, &r, 1), -ENODEV, "MARK_DIRTY_BLOCKS of STORAGE (untracked)");
}

static int t_mark_past_end(void)
{
	uint64_t sectors = orig[0].bytes / SECTOR;
	struct blk_snap_block_range r[2] = { { sectors - 4, 8 }, { sectors, 1 } };

	return want(mark(orig[0].id, &r[0], 1), -EINVAL, "MARK_DIRTY_BLOCKS across the end") &&
	       want(mark(orig[0].id, &r[1], 1), -EINVAL, "MARK_DIRTY_BLOCKS past the end");
}

static int t_mark_zero(void)
{
	return want(mark(orig[0].id, NULL, 0), 0, "MARK_DIRTY_BLOCKS(NULL, 0)");
}

static int t_take(void)
{
	/* A write between CREATE and TAKE, to block 5 of ORIG1. */
	if (write_at(&orig[0], 5ULL * info_before[0].blk_size, 0x11))
		return 0;
	if (!want(take(&id_a), 0, "TAKE"))
		return 0;
	taken_a = 1;
	return 1;
}

static int t_take_again(void)
{
	return want(take(&id_a), -EALREADY, "second TAKE");
}

static int t_take_unknown(void)
{
	return want(take(&unknown_id), -ESRCH, "TAKE of an unknown id");
}

static int t_images_query(void)
{
	__u32 n = 0;

	return want(collect_images(&id_a, NULL, 0, &n), 0, "COLLECT_IMAGES(NULL, 0)") &&
	       (n == 2 || (diag("count %u, expected 2", n), 0));
}

static int t_images_small(void)
{
	struct blk_snap_image_info arr[2];
	__u32 c, n;

	for (c = 0; c < 2; c++) {
		memset(arr, SENTINEL, sizeof(arr));
		n = 99;
		if (!want(collect_images(&id_a, arr, c, &n), -ENODATA,
			  "COLLECT_IMAGES(array, too small)"))
			return 0;
		if (n != 2) {
			diag("count %u passed: count %u, expected 2", c, n);
			return 0;
		}
		if (!untouched(arr, sizeof(arr))) {
			diag("count %u passed: the array was written", c);
			return 0;
		}
	}
	return 1;
}

static int t_images_fill(void)
{
	struct blk_snap_image_info arr[4];
	__u32 c, n, i, j;

	for (c = 2; c <= 4; c += 2) {
		memset(arr, SENTINEL, sizeof(arr));
		if (!want(collect_images(&id_a, arr, c, &n), 0, "COLLECT_IMAGES(array)"))
			return 0;
		if (n != 2) {
			diag("count %u passed: count %u, expected 2", c, n);
			return 0;
		}
		if (!untouched(&arr[2], sizeof(arr[0]) * (c - 2))) {
			diag("count %u passed: entries past the second were written", c);
			return 0;
		}
		for (j = 0; j < 2; j++) {
			for (i = 0; i < 2 && !same_dev(arr[i].orig_dev_id, orig[j].id); i++)
				;
			if (i == 2) {
				diag("%s is not listed", orig[j].path);
				return 0;
			}
			images_a[j] = arr[i];
		}
	}
	have_images_a = 1;
	return 1;
}

static int t_image_nodes(void)
{
	char path[64];
	struct stat st;
	uint64_t bytes;
	int j, fd;

	if (!have_images_a)
		return diag("no images collected"), 0;
	for (j = 0; j < 2; j++) {
		struct blk_snap_dev im = images_a[j].image_dev_id;

		snprintf(path, sizeof(path), "/dev/%s%u", BLK_SNAP_IMAGE_NAME, im.mn);
		fd = open(path, O_RDONLY);
		if (fd < 0 || fstat(fd, &st) || !S_ISBLK(st.st_mode) ||
		    major(st.st_rdev) != im.mj || minor(st.st_rdev) != im.mn ||
		    ioctl(fd, BLKGETSIZE64, &bytes) || bytes != orig[j].bytes) {
			diag("%s (image of %s, %u:%u): missing, another device or another size",
			     path, orig[j].path, im.mj, im.mn);
			if (fd >= 0)
				close(fd);
			return 0;
		}
		close(fd);
		diag("%s: image %s", orig[j].path, path);
	}
	return 1;
}

static int t_snap_number(void)
{
	struct blk_snap_cbt_info info;
	int j;

	for (j = 0; j < 2; j++) {
		if (!tracker_info(orig[j].id, &info))
			return 0;
		if (info.snap_number != 1 ||
		    !same_id(&info.generation_id, &info_before[j].generation_id)) {
			diag("%s: snap_number %u (expected 1), generation %s", orig[j].path,
			     info.snap_number,
			     same_id(&info.generation_id, &info_before[j].generation_id) ?
				     "unchanged" : "changed");
			return 0;
		}
	}
	return 1;
}

static int t_map_bytes(void)
{
	__u32 blk_count = info_before[0].blk_count, total = 0;
	unsigned char buf[100];
	long r;

	if (!taken_a)
		return diag("not taken"), 0;
	for (;;) {
		r = read_map(orig[0].id, total, sizeof(buf), buf);
		if (r < 0 || r > (long)sizeof(buf))
			return want(r, sizeof(buf), "READ_CBT_MAP of 100 bytes"), 0;
		if (r == 0)
			break;
		if (r != (long)sizeof(buf) && total + r != blk_count) {
			diag("a short read of %ld bytes at %u before the end (%u)", r, total, blk_count);
			return 0;
		}
		total += r;
		if (total > blk_count)
			break;
	}
	if (total != blk_count) {
		diag("read %u bytes in all, expected blk_count %u", total, blk_count);
		return 0;
	}
	return want(read_map(orig[0].id, blk_count, sizeof(buf), buf), 0,
		    "READ_CBT_MAP at offset blk_count") &&
	       want(read_map(orig[0].id, 0, 0, buf), 0, "READ_CBT_MAP of 0 bytes");
}

static unsigned char map1[1 << 16];

static int t_map_marks_write(void)
{
	__u32 blk_count = info_before[0].blk_count;
	__u32 blocks[1] = { 5 };
	unsigned char values[1] = { 1 };

	if (blk_count > sizeof(map1))
		return diag("blk_count %u is too large for this test", blk_count), 0;
	return whole_map(orig[0].id, map1, blk_count) &&
	       map_is(map1, blk_count, blocks, values, 1);
}

static int t_map_frozen(void)
{
	static unsigned char again[sizeof(map1)];
	__u32 blk_count = info_before[0].blk_count;

	/* Block 7 written after TAKE (a copy-on-write). */
	if (write_at(&orig[0], 7ULL * info_before[0].blk_size, 0x22))
		return 0;
	if (!whole_map(orig[0].id, again, blk_count))
		return 0;
	if (memcmp(map1, again, blk_count)) {
		diag("the readable table changed");
		return 0;
	}
	return 1;
}

/* 4 KiB of the device `path` at `offset`, compared with `byte`. */
static int reads_as(const char *path, uint64_t offset, int byte)
{
	unsigned char *buf;
	ssize_t n;
	int fd, ok, i;

	if (posix_memalign((void **)&buf, 4096, 4096))
		return 0;
	fd = open(path, O_RDONLY | O_DIRECT);
	n = fd < 0 ? -1 : pread(fd, buf, 4096, (off_t)offset);
	ok = n == 4096;
	if (!ok)
		diag("read of %s at %" PRIu64 ": %s", path, offset,
		     n < 0 ? strerror(errno) : "short read");
	for (i = 0; ok && i < 4096; i++) {
		if (buf[i] != byte) {
			diag("%s at %" PRIu64 ": byte %d is 0x%02x, expected 0x%02x", path,
			     offset, i, buf[i], byte);
			ok = 0;
		}
	}
	if (fd >= 0)
		close(fd);
	free(buf);
	return ok;
}

static int t_image_data(void)
{
	char path[64];
	uint64_t bs = info_before[0].blk_size;

	if (!have_images_a)
		return diag("no images collected"), 0;
	snprintf(path, sizeof(path), "/dev/%s%u", BLK_SNAP_IMAGE_NAME,
		 images_a[0].image_dev_id.mn);
	return reads_as(path, 5 * bs, 0x11) && reads_as(path, 7 * bs, 0) &&
	       reads_as(orig[0].path, 7 * bs, 0x22);
}

static int t_mark_ranges(void)
{
	static unsigned char map[sizeof(map1)];
	__u32 bs = info_before[1].blk_size, blk_count = info_before[1].blk_count;
	uint64_t bsect = bs / SECTOR, sectors = orig[1].bytes / SECTOR;
	struct blk_snap_block_range r[3] = {
		{ 0, 1 },                 /* one sector: block 0 */
		{ 3 * bsect - 1, 2 },     /* across the boundary of blocks 2 and 3 */
		{ sectors - 1, 1 },       /* the last sector: the last block */
	};
	__u32 blocks[4] = { 0, 2, 3, blk_count - 1 };
	unsigned char values[4] = { 1, 1, 1, 1 };

	return want(mark(orig[1].id, r, 3), 0, "MARK_DIRTY_BLOCKS(3 ranges)") &&
	       whole_map(orig[1].id, map, blk_count) &&
	       map_is(map, blk_count, blocks, values, 4);
}

static int t_mark_image(void)
{
	static unsigned char map[sizeof(map1)];
	__u32 bs = info_before[1].blk_size, blk_count = info_before[1].blk_count;
	struct blk_snap_block_range r = { 10ULL * bs / SECTOR, 8 };
	__u32 blocks[5] = { 0, 2, 3, blk_count - 1, 10 };
	unsigned char values[5] = { 1, 1, 1, 1, 1 };

	if (!have_images_a)
		return diag("no images collected"), 0;
	return want(mark(images_a[1].image_dev_id, &r, 1), 0,
		    "MARK_DIRTY_BLOCKS of ORIG2's image") &&
	       whole_map(orig[1].id, map, blk_count) &&
	       map_is(map, blk_count, blocks, values, 5);
}

static int t_remove_busy(void)
{
	struct blk_snap_tracker_remove a = { .dev_id = orig[0].id };

	return want(call(IOCTL_BLK_SNAP_TRACKER_REMOVE, &a), -EBUSY,
		    "TRACKER_REMOVE of ORIG1 in a snapshot");
}

static int t_append_after_take(void)
{
	return want(append_next(&id_a, 4 * MIB / SECTOR), 0, "APPEND_STORAGE after TAKE");
}

static int t_destroy_not_taken(void)
{
	struct blk_snap_uuid ids[4];
	__u32 n;

	if (!want(destroy(&id_b), 0, "DESTROY of the snapshot never taken"))
		return 0;
	have_b = 0;
	if (!want(snapshot_collect(ids, 4, &n), 0, "SNAPSHOT_COLLECT"))
		return 0;
	if (n != 1 || !same_id(&ids[0], &id_a)) {
		diag("SNAPSHOT_COLLECT: count %u, expected only the first snapshot", n);
		return 0;
	}
	return want(tracker_collect(NULL, 0, &n), 0, "TRACKER_COLLECT") &&
	       (n == 3 || (diag("%u trackers, expected 3 (ORIG3's stays)", n), 0));
}

static int t_destroy_taken(void)
{
	char path[64];
	int j;

	if (!want(destroy(&id_a), 0, "DESTROY of the taken snapshot"))
		return 0;
	have_a = 0;
	for (j = 0; j < 2 && have_images_a; j++) {
		snprintf(path, sizeof(path), "/sys/block/%s%u", BLK_SNAP_IMAGE_NAME,
			 images_a[j].image_dev_id.mn);
		if (!access(path, F_OK)) {
			diag("%s is still there", path);
			return 0;
		}
	}
	return 1;
}

static int t_destroy_unknown(void)
{
	return want(destroy(&id_a), -ESRCH, "DESTROY of a destroyed snapshot") &&
	       want(destroy(&unknown_id), -ESRCH, "DESTROY of an unknown id");
}

static int t_second_snapshot(void)
{
	static struct blk_snap_snapshot_event ev;
	static unsigned char map[sizeof(map1)];
	struct blk_snap_dev d[2] = { orig[0].id, orig[1].id };
	struct blk_snap_cbt_info info;
	__u32 blk_count = info_before[0].blk_count;
	/* ORIG1: block 5 changed in snapshot 1, block 7 after it. ORIG2: the
	 * blocks marked while snapshot 1 was held (both tables). */
	__u32 b1[2] = { 5, 7 }, b2[5] = { 0, 2, 3, blk_count - 1, 10 };
	unsigned char v1[2] = { 1, 2 }, v2[5] = { 2, 2, 2, 2, 2 };
	int j;

	if (!want(create(&id_c, d, 2), 0, "CREATE(ORIG1, ORIG2) again"))
		return 0;
	have_c = 1;
	if (!want(wait_event(&id_c, 5000, &ev), 0, "WAIT_EVENT") ||
	    !want(append_next(&id_c, 2 * MIB / SECTOR), 0, "APPEND_STORAGE") ||
	    !want(take(&id_c), 0, "TAKE"))
		return 0;
	taken_c = 1;
	for (j = 0; j < 2; j++) {
		if (!tracker_info(orig[j].id, &info))
			return 0;
		if (info.snap_number != 2 ||
		    !same_id(&info.generation_id, &info_before[j].generation_id)) {
			diag("%s: snap_number %u (expected 2), generation %s", orig[j].path,
			     info.snap_number,
			     same_id(&info.generation_id, &info_before[j].generation_id) ?
				     "unchanged" : "changed");
			return 0;
		}
	}
	if (!whole_map(orig[0].id, map, blk_count) || !map_is(map, blk_count, b1, v1, 2))
		return diag("(ORIG1)"), 0;
	if (!whole_map(orig[1].id, map, blk_count) || !map_is(map, blk_count, b2, v2, 5))
		return diag("(ORIG2)"), 0;
	return 1;
}

static int t_overflow(void)
{
	static struct blk_snap_snapshot_event ev;
	struct blk_snap_event_corrupted c;
	struct blk_snap_dev d3 = orig[2].id;
	long chunk_shift = read_param("chunk_minimum_shift");
	uint64_t chunk = 1ULL << (chunk_shift > 0 ? chunk_shift : 18);
	uint64_t off;
	long r;

	if (!want(create(&id_e, &d3, 1), 0, "CREATE(ORIG3)"))
		return 0;
	/* Room for two chunks; then four chunks are written. */
	if (!want(wait_event(&id_e, 5000, &ev), 0, "WAIT_EVENT") ||
	    !want(append_next(&id_e, 2 * chunk / SECTOR), 0, "APPEND_STORAGE") ||
	    !want(take(&id_e), 0, "TAKE"))
		goto out;
	for (off = 0; off < 4 * chunk; off += chunk)
		if (write_at(&orig[2], off, 0x33))
			goto out;
	r = wait_for_code(&id_e, blk_snap_event_code_corrupted, 10000, &ev);
	if (!want(r, 0, "WAIT_EVENT for corrupted"))
		goto out;
	memcpy(&c, ev.data, sizeof(c));
	if (!same_dev(c.orig_dev_id, d3) || c.err_code != ENOSPC) {
		diag("corrupted: orig_dev_id %u:%u err_code %d, expected %u:%u and ENOSPC (%d)",
		     c.orig_dev_id.mj, c.orig_dev_id.mn, c.err_code, d3.mj, d3.mn, ENOSPC);
		goto out;
	}
	r = wait_for_code(&id_e, blk_snap_event_code_corrupted, 500, &ev);
	if (!want(r, -ENOENT, "WAIT_EVENT for a second corrupted event"))
		goto out;
	return want(destroy(&id_e), 0, "DESTROY");
out:
	destroy(&id_e);
	return 0;
}

static int t_remove(void)
{
	struct blk_snap_tracker_remove a;
	__u32 n;
	int j;

	if (have_c && !want(destroy(&id_c), 0, "DESTROY of the second snapshot"))
		return 0;
	have_c = 0;
	for (j = 0; j < 3; j++) {
		a.dev_id = orig[j].id;
		if (!want(call(IOCTL_BLK_SNAP_TRACKER_REMOVE, &a), 0, "TRACKER_REMOVE"))
			return diag("(%s)", orig[j].path), 0;
	}
	a.dev_id = orig[0].id;
	return want(call(IOCTL_BLK_SNAP_TRACKER_REMOVE, &a), -ENODEV,
		    "TRACKER_REMOVE of a removed tracker") &&
	       want(tracker_collect(NULL, 0, &n), 0, "TRACKER_COLLECT(NULL, 0)") &&
	       (n == 0 || (diag("%u trackers left", n), 0));
}

static int t_empty_arrays(void)
{
	struct blk_snap_cbt_info info[1];
	struct blk_snap_uuid ids[1];
	__u32 n = 9;

	memset(info, SENTINEL, sizeof(info));
	memset(ids, SENTINEL, sizeof(ids));
	if (!want(tracker_collect(info, 0, &n), 0, "TRACKER_COLLECT(array, 0)") || n != 0 ||
	    !untouched(info, sizeof(info)))
		return diag("TRACKER_COLLECT: count %u", n), 0;
	n = 9;
	if (!want(snapshot_collect(ids, 0, &n), 0, "SNAPSHOT_COLLECT(array, 0)") || n != 0 ||
	    !untouched(ids, sizeof(ids)))
		return diag("SNAPSHOT_COLLECT: count %u", n), 0;
	return 1;
}

struct test {
	const char *desc;
	int (*fn)(void);
};

static const struct test tests[] = {
	{ "VERSION returns 0 and the version with build 0", t_version },
	{ "TRACKER_COLLECT with a NULL array and count 0 returns 0 and count 0 when nothing is tracked",
	  t_empty_tracker_query },
	{ "SNAPSHOT_COLLECT with a NULL array and count 0 returns 0 and count 0 when there is no snapshot",
	  t_empty_snapshot_query },
	{ "SNAPSHOT_CREATE of zero devices fails with EINVAL and creates nothing", t_create_zero },
	{ "SNAPSHOT_CREATE naming one device twice fails with EINVAL and attaches no tracker",
	  t_create_duplicate },
	{ "SNAPSHOT_CREATE returns 0 and a nonzero id, distinct for two snapshots", t_create },
	{ "SNAPSHOT_CREATE of a device already in a snapshot fails with EALREADY", t_create_busy },
	{ "TRACKER_COLLECT with a NULL array and count 0 returns 0 and the count (CREATE attached the trackers)",
	  t_tracker_query },
	{ "TRACKER_COLLECT with a non-NULL array too small (count 0 to 2) fails with ENODATA, sets the count, leaves the array",
	  t_tracker_small },
	{ "TRACKER_COLLECT with an array of exactly the count and a larger one fills every cbt_info and sets the count",
	  t_tracker_fill },
	{ "SNAPSHOT_COLLECT with a NULL array and count 0 returns 0 and the count", t_snapshot_query },
	{ "SNAPSHOT_COLLECT with a non-NULL array too small (count 0 and 1) fails with ENODATA, sets the count, leaves the array",
	  t_snapshot_small },
	{ "SNAPSHOT_COLLECT with an array of exactly the count and a larger one returns 0 and the ids",
	  t_snapshot_fill },
	{ "SNAPSHOT_COLLECT_IMAGES before TAKE fails with ENODEV (NULL query and array)",
	  t_images_before_take },
	{ "SNAPSHOT_COLLECT_IMAGES of an unknown snapshot fails with ESRCH", t_images_unknown },
	{ "TRACKER_READ_CBT_MAP before TAKE fails with EPERM", t_map_before_take },
	{ "TRACKER_READ_CBT_MAP of an untracked device fails with ENODEV", t_map_untracked },
	{ "SNAPSHOT_WAIT_EVENT: the first event after CREATE is low_free_space for diff_storage_minimum sectors, time_label in ktime ns",
	  t_first_event },
	{ "SNAPSHOT_WAIT_EVENT with timeout_ms 0 and no event fails with ENOENT at once", t_wait_zero },
	{ "SNAPSHOT_WAIT_EVENT with no event fails with ENOENT after timeout_ms milliseconds",
	  t_wait_timeout },
	{ "SNAPSHOT_WAIT_EVENT interrupted by a signal fails with EINTR", t_wait_signal },
	{ "SNAPSHOT_WAIT_EVENT of an unknown snapshot fails with ESRCH", t_wait_unknown },
	{ "SNAPSHOT_APPEND_STORAGE of ranges not page-aligned fails with EINVAL", t_append_misaligned },
	{ "SNAPSHOT_APPEND_STORAGE to an unknown snapshot fails with ESRCH", t_append_unknown },
	{ "SNAPSHOT_APPEND_STORAGE with a NULL array and count 0 returns 0", t_append_zero },
	{ "SNAPSHOT_APPEND_STORAGE before TAKE returns 0", t_append_before_take },
	{ "TRACKER_MARK_DIRTY_BLOCKS of an untracked device fails with ENODEV", t_mark_untracked },
	{ "TRACKER_MARK_DIRTY_BLOCKS of a range past the end of the device fails with EINVAL",
	  t_mark_past_end },
	{ "TRACKER_MARK_DIRTY_BLOCKS with a NULL array and count 0 returns 0", t_mark_zero },
	{ "SNAPSHOT_TAKE returns 0", t_take },
	{ "SNAPSHOT_TAKE of a taken snapshot fails with EALREADY", t_take_again },
	{ "SNAPSHOT_TAKE of an unknown snapshot fails with ESRCH", t_take_unknown },
	{ "SNAPSHOT_COLLECT_IMAGES with a NULL array and count 0 returns 0 and the count",
	  t_images_query },
	{ "SNAPSHOT_COLLECT_IMAGES with a non-NULL array too small (count 0 and 1) fails with ENODATA, sets the count, leaves the array",
	  t_images_small },
	{ "SNAPSHOT_COLLECT_IMAGES with an array of exactly the count and a larger one maps every original to an image",
	  t_images_fill },
	{ "each image is /dev/blksnap-image<minor> of the collected number, as large as its original",
	  t_image_nodes },
	{ "TRACKER_COLLECT after TAKE: snap_number is 1, generation_id unchanged", t_snap_number },
	{ "TRACKER_READ_CBT_MAP returns the number of bytes copied: pieces until 0, blk_count bytes in all; 0 at the end and for length 0",
	  t_map_bytes },
	{ "the readable table has snap_number for the block written between CREATE and TAKE, 0 elsewhere",
	  t_map_marks_write },
	{ "the readable table does not change while the snapshot is held (a write after TAKE)",
	  t_map_frozen },
	{ "the image shows the data at TAKE: the block written before TAKE as written, the one written after as before",
	  t_image_data },
	{ "TRACKER_MARK_DIRTY_BLOCKS marks sector ranges in the readable table (one sector, across a block boundary, the last sector)",
	  t_mark_ranges },
	{ "TRACKER_MARK_DIRTY_BLOCKS of a snapshot image marks its original's tracker", t_mark_image },
	{ "TRACKER_REMOVE of a device in a snapshot fails with EBUSY", t_remove_busy },
	{ "SNAPSHOT_APPEND_STORAGE after TAKE returns 0", t_append_after_take },
	{ "SNAPSHOT_DESTROY of a snapshot never taken returns 0; it leaves SNAPSHOT_COLLECT, its tracker stays",
	  t_destroy_not_taken },
	{ "SNAPSHOT_DESTROY of a taken snapshot returns 0 and its images go", t_destroy_taken },
	{ "SNAPSHOT_DESTROY of a destroyed or unknown snapshot fails with ESRCH", t_destroy_unknown },
	{ "a second snapshot: snap_number 2, same generation_id; the table has the writes and marks since the first TAKE",
	  t_second_snapshot },
	{ "out of difference storage: one corrupted event naming the original, err_code ENOSPC",
	  t_overflow },
	{ "TRACKER_REMOVE after DESTROY returns 0, the trackers go; a second TRACKER_REMOVE fails with ENODEV",
	  t_remove },
	{ "TRACKER_COLLECT and SNAPSHOT_COLLECT with nothing left and a non-NULL array of count 0 return 0 and count 0",
	  t_empty_arrays },
};

#define NTESTS ((int)(sizeof(tests) / sizeof(tests[0])))

int main(int argc, char **argv)
{
	int first = 1, i, j;

	setvbuf(stdout, NULL, _IOLBF, 0);
	if (argc == 2 && !strcmp(argv[1], "--count")) {
		printf("%d\n", NTESTS);
		return 0;
	}
	if (argc > 2 && !strcmp(argv[1], "--first")) {
		first = atoi(argv[2]);
		argv += 2;
		argc -= 2;
	}
	if (argc != 5) {
		fprintf(stderr, "usage: %s [--first N] ORIG1 ORIG2 ORIG3 STORAGE | --count\n",
			argv[0]);
		return 2;
	}
	if (first == 1) {
		printf("KTAP version 1\n");
		printf("1..%d\n", NTESTS);
	}
	ctl = open(BLK_SNAP_CTL, O_RDWR);
	if (ctl < 0)
		diag("open %s: %s", BLK_SNAP_CTL, strerror(errno));
	for (j = 0; j < 3; j++)
		if (open_dev(&orig[j], argv[1 + j]))
			ctl = -1;
	if (open_dev(&storage, argv[4]))
		ctl = -1;
	if (ctl >= 0 && (orig[1].bytes != orig[0].bytes || orig[2].bytes != orig[0].bytes)) {
		diag("the three originals must be of one size");
		ctl = -1;
	}
	case_n = first - 1;
	for (i = 0; i < NTESTS; i++) {
		int ok = ctl >= 0 && tests[i].fn();

		case_n++;
		if (!ok)
			failed++;
		printf("%s %d %s\n", ok ? "ok" : "not ok", case_n, tests[i].desc);
	}
	/* Whatever a failed case left behind. */
	if (ctl >= 0) {
		if (have_a)
			destroy(&id_a);
		if (have_b)
			destroy(&id_b);
		if (have_c)
			destroy(&id_c);
	}
	if (first == 1)
		printf("# Totals: pass:%d fail:%d xfail:0 xpass:0 skip:0 error:0\n",
		       NTESTS - failed, failed);
	return failed ? 1 : 0;
}
