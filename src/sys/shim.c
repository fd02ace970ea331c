// SPDX-License-Identifier: GPL-2.0
/*
 * What Rust cannot say to this kernel: macros, static inlines, static
 * initialisers, lock wrappers and the ftrace trampoline, each of which only
 * forwards; and one layout, the context of a redirected clone, which lives
 * in its bio set's front pad (struct blksnap_redirect), with the completion
 * that reads it back and hands it to Rust. Policy, state and validation
 * live in Rust (see shim.h for who calls what).
 */
#include <linux/bio.h>
#include <linux/blkdev.h>
#include <linux/completion.h>
#include <linux/ftrace.h>
#include <linux/gfp.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/ratelimit.h>
#include <linux/rcupdate.h>
#include <linux/sched/mm.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/version.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>

#include "shim.h"

/*
 * What differs between the supported kernel lines on the C side; the Rust
 * side's differences are in compat.rs, with the same split (7.0 and later).
 */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(7, 0, 0)
/* 7.x warns when a workqueue names neither WQ_PERCPU nor WQ_UNBOUND. */
#define BLKSNAP_WQ_PERCPU WQ_PERCPU
#else
#define BLKSNAP_WQ_PERCPU 0
#endif

/* Module parameters: storage and validation in src/sys/params.rs. */

static const struct kernel_param_ops blksnap_param_ops = {
	.set = blksnap_param_set,
	.get = param_get_int,
};

#define BLKSNAP_PARAM(name, desc)                                              \
	extern int blksnap_param_##name;                                       \
	module_param_cb(name, &blksnap_param_ops, &blksnap_param_##name,       \
			0644);                                                 \
	__MODULE_PARM_TYPE(name, "int");                                       \
	MODULE_PARM_DESC(name, desc)

BLKSNAP_PARAM(tracking_block_minimum_shift,
	      "The power of 2 for minimum tracking block size");
BLKSNAP_PARAM(tracking_block_maximum_shift,
	      "The power of 2 for maximum tracking block size");
BLKSNAP_PARAM(tracking_block_maximum_count,
	      "The maximum number of tracking blocks");
BLKSNAP_PARAM(chunk_minimum_shift,
	      "The power of 2 for minimum snapshot chunk size");
BLKSNAP_PARAM(chunk_maximum_shift,
	      "The power of 2 for maximum snapshot chunk size");
BLKSNAP_PARAM(chunk_maximum_count,
	      "The maximum number of snapshot chunks for a device");
BLKSNAP_PARAM(chunk_maximum_in_cache,
	      "The maximum number of chunks kept in memory");
BLKSNAP_PARAM(free_diff_buffer_pool_size,
	      "The size of the pool of preallocated difference buffers");
BLKSNAP_PARAM(diff_storage_minimum,
	      "Difference storage requested at create and kept free (sectors)");

/* The bio hook. */

/*
 * Where a call of submit_bio_noacct() goes when the filter took its bio. A
 * task preempted here is waited for when the ops is unregistered (ftrace
 * does synchronize_rcu_tasks() for ops in modules), before the text goes.
 */
static void notrace blksnap_bio_taken(struct bio *bio)
{
}

static void notrace blksnap_ftrace_handler(unsigned long ip,
					   unsigned long parent_ip,
					   struct ftrace_ops *ops,
					   struct ftrace_regs *fregs)
{
	struct bio *bio;

	/* The module's own submissions (blksnap_bio_pass) go through. */
	if (within_module(parent_ip, THIS_MODULE))
		return;
	bio = (struct bio *)ftrace_regs_get_argument(fregs, 0);
	if (!bio)
		return;
	/*
	 * ftrace's recursion guard already disables preemption; the take
	 * barrier's fast path relies on it, so say it here.
	 */
	preempt_disable_notrace();
	if (blksnap_bio_filter(bio))
		ftrace_regs_set_instruction_pointer(
			fregs, (unsigned long)blksnap_bio_taken);
	preempt_enable_notrace();
}

static struct ftrace_ops blksnap_ftrace_ops = {
	.func = blksnap_ftrace_handler,
	/*
	 * Where ftrace_regs carry the arguments and the return address, the
	 * light trampoline does (as for livepatch); elsewhere the handler
	 * needs the full register save to change the instruction pointer.
	 */
#ifdef CONFIG_HAVE_DYNAMIC_FTRACE_WITH_ARGS
	.flags = FTRACE_OPS_FL_IPMODIFY,
#else
	.flags = FTRACE_OPS_FL_SAVE_REGS | FTRACE_OPS_FL_IPMODIFY,
#endif
};

int blksnap_hook_install(void)
{
	unsigned long ip = (unsigned long)submit_bio_noacct;
	int ret;

	ret = ftrace_set_filter_ip(&blksnap_ftrace_ops, ip, 0, 0);
	if (ret)
		return ret;
	ret = register_ftrace_function(&blksnap_ftrace_ops);
	if (ret)
		ftrace_set_filter_ip(&blksnap_ftrace_ops, ip, 1, 0);
	return ret;
}

void blksnap_hook_remove(void)
{
	unregister_ftrace_function(&blksnap_ftrace_ops);
	ftrace_set_filter_ip(&blksnap_ftrace_ops,
			     (unsigned long)submit_bio_noacct, 1, 0);
}

void blksnap_bio_pass(struct bio *bio)
{
	submit_bio_noacct(bio);
	/*
	 * Keep the call a real call: as a tail call, the hook would see the
	 * original caller as the parent and redirect the bio forever.
	 */
	barrier();
}

void blksnap_bio_get_info(struct bio *bio, struct blksnap_bio_info *info)
{
	struct block_device *bdev = bio->bi_bdev;

	info->bdev = bdev;
	info->whole = bdev_whole(bdev);
	info->dev = bdev->bd_dev;
	info->whole_dev = info->whole->bd_dev;
	info->start_sect = bdev_is_partition(bdev) ? bdev->bd_start_sect : 0;
	info->sector = bio->bi_iter.bi_sector;
	/*
	 * A remapped bio (the rest of a split one, resubmitted) still names the
	 * partition but already counts sectors on the whole disk.
	 */
	if (bio_flagged(bio, BIO_REMAPPED))
		info->sector -= info->start_sect;
	info->sectors = bio_sectors(bio);
	info->op = bio_op(bio);
}

/* Locks and RCU. */

DEFINE_XARRAY(blksnap_tracker_index);
static DEFINE_RWLOCK(blksnap_take_lock);

void blksnap_assert_preemption_disabled(void)
{
	lockdep_assert_preemption_disabled();
}

unsigned long blksnap_spin_lock_irqsave(struct spinlock *lock)
{
	unsigned long flags;

	spin_lock_irqsave(lock, flags);
	return flags;
}

void blksnap_spin_unlock_irqrestore(struct spinlock *lock, unsigned long flags)
{
	spin_unlock_irqrestore(lock, flags);
}

bool blksnap_spin_trylock_irqsave(struct spinlock *lock, unsigned long *flags)
{
	return spin_trylock_irqsave(lock, *flags);
}

void blksnap_spin_assert_held(struct spinlock *lock)
{
	lockdep_assert_held(lock);
}

unsigned long blksnap_take_read_lock(void)
{
	unsigned long flags;

	read_lock_irqsave(&blksnap_take_lock, flags);
	return flags;
}

void blksnap_take_read_unlock(unsigned long flags)
{
	read_unlock_irqrestore(&blksnap_take_lock, flags);
}

unsigned long blksnap_take_write_lock(void)
{
	unsigned long flags;

	write_lock_irqsave(&blksnap_take_lock, flags);
	return flags;
}

void blksnap_take_write_unlock(unsigned long flags)
{
	write_unlock_irqrestore(&blksnap_take_lock, flags);
}

sector_t blksnap_bdev_nr_sectors(struct block_device *bdev)
{
	return bdev_nr_sectors(bdev);
}

dev_t blksnap_bdev_dev(struct block_device *bdev)
{
	return bdev->bd_dev;
}

int blksnap_xa_insert(struct xarray *xa, unsigned long index, void *entry)
{
	return xa_insert(xa, index, entry, GFP_KERNEL);
}

unsigned int blksnap_bdev_io_min(struct block_device *bdev)
{
	return bdev_io_min(bdev);
}

/* The module's own I/O. */

static struct bio_set blksnap_bio_set;

/* A clone sent on by blksnap_bio_redirect(), and where its completion goes. */
struct blksnap_redirect {
	blksnap_redirect_done_fn done;
	const void *ctx;
	const void *dev;
	u64 tag;
	struct bio *orig;
	struct bio clone; /* last: the bio set's front pad ends here */
};

static struct bio_set blksnap_redirect_set;

int blksnap_bioset_init(void)
{
	int ret = bioset_init(&blksnap_bio_set, 64, 0, BIOSET_NEED_BVECS);

	if (ret)
		return ret;
	ret = bioset_init(&blksnap_redirect_set, 64,
			  offsetof(struct blksnap_redirect, clone), 0);
	if (ret)
		bioset_exit(&blksnap_bio_set);
	return ret;
}

void blksnap_bioset_exit(void)
{
	bioset_exit(&blksnap_redirect_set);
	bioset_exit(&blksnap_bio_set);
}

struct bio *blksnap_bio_new(struct block_device *bdev, u64 sector,
			    unsigned int op, unsigned short nr_vecs)
{
	struct bio *bio = bio_alloc_bioset(bdev, nr_vecs, op, GFP_NOIO,
					   &blksnap_bio_set);

	if (bio)
		bio->bi_iter.bi_sector = sector;
	return bio;
}

struct bio *blksnap_bio_clone(struct bio *src, struct block_device *bdev,
			      u64 sector)
{
	struct bio *bio = bio_alloc_clone(bdev, src, GFP_NOIO, &blksnap_bio_set);

	if (bio)
		bio->bi_iter.bi_sector = sector;
	return bio;
}

static void blksnap_bio_wait_endio(struct bio *bio)
{
	complete(bio->bi_private);
}

int blksnap_bio_submit_wait(struct bio *bio)
{
	DECLARE_COMPLETION_ONSTACK(done);

	bio->bi_private = &done;
	bio->bi_end_io = blksnap_bio_wait_endio;
	bio->bi_opf |= REQ_SYNC;
	blksnap_bio_pass(bio);
	wait_for_completion_io(&done);
	return blk_status_to_errno(bio->bi_status);
}

void blksnap_bio_submit_endio(struct bio *bio, bio_end_io_t *end_io,
			      void *private)
{
	bio->bi_private = private;
	bio->bi_end_io = end_io;
	bio->bi_opf |= REQ_SYNC;
	blksnap_bio_pass(bio);
}

struct page *blksnap_alloc_block(unsigned int order)
{
	gfp_t gfp = GFP_NOIO | __GFP_COMP;

	if (order > MAX_PAGE_ORDER)
		return NULL;
	if (order)
		gfp |= __GFP_NORETRY | __GFP_NOWARN;
	return alloc_pages(gfp, order);
}

void blksnap_completion_init(struct completion *c)
{
	init_completion(c);
}

void blksnap_bio_end(struct bio *bio, int err)
{
	bio->bi_status = errno_to_blk_status(err);
	bio_endio(bio);
}

static void blksnap_redirect_endio(struct bio *clone)
{
	struct blksnap_redirect *r =
		container_of(clone, struct blksnap_redirect, clone);
	blksnap_redirect_done_fn done = r->done;
	const void *ctx = r->ctx, *dev = r->dev;
	struct bio *orig = r->orig;
	u64 tag = r->tag;
	int err = blk_status_to_errno(clone->bi_status);

	/* The clone (and its front pad) goes first; done owns ctx and dev. */
	bio_put(clone);
	blksnap_bio_end(orig, done(ctx, dev, tag, err));
}

int blksnap_bio_redirect(struct bio *orig, struct block_device *bdev,
			 u64 sector, blksnap_redirect_done_fn done,
			 const void *ctx, const void *dev, u64 tag)
{
	struct bio *clone = bio_alloc_clone(bdev, orig, GFP_NOWAIT,
					    &blksnap_redirect_set);
	struct blksnap_redirect *r;

	if (!clone)
		return -ENOMEM;
	r = container_of(clone, struct blksnap_redirect, clone);
	r->done = done;
	r->ctx = ctx;
	r->dev = dev;
	r->tag = tag;
	r->orig = orig;
	clone->bi_iter.bi_sector = sector;
	clone->bi_end_io = blksnap_redirect_endio;
	blksnap_bio_pass(clone);
	return 0;
}

/* Kernel log messages user space can cause, one shared rate limit. */
static DEFINE_RATELIMIT_STATE(blksnap_log_rs, DEFAULT_RATELIMIT_INTERVAL,
			      DEFAULT_RATELIMIT_BURST);

bool blksnap_log_allowed(void)
{
	return __ratelimit(&blksnap_log_rs);
}

/* Snapshot image disks. */

struct workqueue_struct *blksnap_alloc_workqueue(void)
{
	return alloc_workqueue("blksnap", WQ_MEM_RECLAIM | BLKSNAP_WQ_PERCPU, 0);
}

static const struct block_device_operations blksnap_image_fops = {
	.owner = THIS_MODULE,
	.submit_bio = blksnap_image_submit_bio,
};

struct bio *blksnap_bio_split_front(struct bio *bio, unsigned int sectors)
{
	struct bio *split = bio_split(bio, sectors, GFP_NOIO,
				      &bio->bi_bdev->bd_disk->bio_split);

	if (!split)
		return NULL;
	bio_chain(split, bio);
	/* Inside the disk's submit_bio: queued, and served after it returns. */
	submit_bio_noacct(bio);
	return split;
}

struct gendisk *blksnap_disk_create(int major, int minor, const char *name,
				    u64 capacity, unsigned int max_hw_sectors,
				    void *private_data)
{
	struct queue_limits lim = {
		.logical_block_size = SECTOR_SIZE,
		.max_hw_sectors = max_hw_sectors,
		.max_segments = USHRT_MAX,
		.max_segment_size = UINT_MAX,
	};
	struct gendisk *disk;
	int ret;

	disk = blk_alloc_disk(&lim, NUMA_NO_NODE);
	if (IS_ERR(disk))
		return disk;
	disk->major = major;
	disk->first_minor = minor;
	disk->minors = 1;
	disk->fops = &blksnap_image_fops;
	disk->private_data = private_data;
	disk->flags |= GENHD_FL_NO_PART;
	strscpy(disk->disk_name, name, DISK_NAME_LEN);
	set_capacity(disk, capacity);
	ret = add_disk(disk);
	if (ret) {
		put_disk(disk);
		return ERR_PTR(ret);
	}
	return disk;
}

void blksnap_disk_destroy(struct gendisk *disk)
{
	del_gendisk(disk);
	put_disk(disk);
}

void *blksnap_bio_disk_private(struct bio *bio)
{
	return bio->bi_bdev->bd_disk->private_data;
}

int blksnap_register_blkdev(void)
{
	return register_blkdev(0, "blksnap-image");
}

void blksnap_unregister_blkdev(unsigned int major)
{
	unregister_blkdev(major, "blksnap-image");
}

unsigned int blksnap_noio_save(void)
{
	return memalloc_noio_save();
}

void blksnap_noio_restore(unsigned int flags)
{
	memalloc_noio_restore(flags);
}
