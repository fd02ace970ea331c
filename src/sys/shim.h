/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What src/sys/shim.c and the Rust side export to each other. Everything
 * here wraps a macro, a static inline or a static object of the kernel, or
 * is the ftrace trampoline or the redirected clone's completion; the logic
 * is in Rust.
 */
#ifndef BLKSNAP_SHIM_H
#define BLKSNAP_SHIM_H

#include <linux/blkdev.h>
#include <linux/types.h>

/* Macros with casts that bindgen cannot evaluate. */
enum { BLKSNAP_OPEN_READ = (__force unsigned int)BLK_OPEN_READ };

struct bio;
struct block_device;
struct kernel_param;
struct xarray;
struct spinlock;
struct rwlock;

/* Rust: validates and stores a module parameter (kernel_param_ops.set). */
int blksnap_param_set(const char *val, const struct kernel_param *kp);

/* The bio hook: an ftrace ops on submit_bio_noacct() that shows every bio
 * submitted from outside the module to blksnap_bio_filter() (Rust), with
 * preemption disabled. A bio the filter takes over (true) does not go on:
 * that call of submit_bio_noacct() returns at once. */
int blksnap_hook_install(void);
void blksnap_hook_remove(void);
bool blksnap_bio_filter(struct bio *bio);
/* Passes a bio on to submit_bio_noacct() from inside the module. */
void blksnap_bio_pass(struct bio *bio);

/* What the bio filter needs to know of a bio, read with the static inlines
 * of the block layer. */
struct blksnap_bio_info {
	const struct block_device *bdev;	/* the device it was submitted to */
	const struct block_device *whole;	/* its whole disk */
	dev_t dev;		/* bdev's number */
	dev_t whole_dev;	/* whole's number (== dev unless a partition) */
	u64 sector;		/* first sector, relative to dev */
	u64 start_sect;		/* dev's first sector on whole_dev */
	u32 sectors;		/* length in sectors */
	u32 op;			/* REQ_OP_* */
};
void blksnap_bio_get_info(struct bio *bio, struct blksnap_bio_info *info);

/* The index of tracked devices: dev_t -> tracker, RCU-safe loads. */
extern struct xarray blksnap_tracker_index;
int blksnap_xa_insert(struct xarray *xa, unsigned long index, void *entry);

void blksnap_assert_preemption_disabled(void);

/* IRQ-safe spinlock and reader-writer lock operations. */
unsigned long blksnap_spin_lock_irqsave(struct spinlock *lock);
void blksnap_spin_unlock_irqrestore(struct spinlock *lock, unsigned long flags);
bool blksnap_spin_trylock_irqsave(struct spinlock *lock, unsigned long *flags);
void blksnap_spin_assert_held(struct spinlock *lock);
/* The take barrier's reader-writer lock, IRQ-safe (the protocol around it
 * is in src/sys/sync.rs). */
unsigned long blksnap_take_read_lock(void);
void blksnap_take_read_unlock(unsigned long flags);
unsigned long blksnap_take_write_lock(void);
void blksnap_take_write_unlock(unsigned long flags);

sector_t blksnap_bdev_nr_sectors(struct block_device *bdev);
unsigned int blksnap_bdev_io_min(struct block_device *bdev);

/* The module's own I/O. Bios come from the module's bio set and are
 * submitted from inside the module, so the hook lets them through. */
int blksnap_bioset_init(void);
void blksnap_bioset_exit(void);
struct bio *blksnap_bio_new(struct block_device *bdev, u64 sector,
			    unsigned int op, unsigned short nr_vecs);
struct bio *blksnap_bio_clone(struct bio *src, struct block_device *bdev,
			      u64 sector);
/* Submits and waits; returns 0 or a negative errno. Does not put the bio. */
int blksnap_bio_submit_wait(struct bio *bio);
void blksnap_bio_end(struct bio *bio, int err);
/* Submits one of the module's own bios (see blksnap_bio_pass) as a
 * synchronous I/O whose completion calls end_io with private. */
void blksnap_bio_submit_endio(struct bio *bio, bio_end_io_t *end_io,
			      void *private);
struct completion;
void blksnap_completion_init(struct completion *c);
/* 2^order physically contiguous pages (one compound page) for the
 * module's own I/O, or NULL: above MAX_PAGE_ORDER, or when the allocator
 * has none (above order 0 it neither retries hard nor warns). GFP_NOIO.
 * Freed with __free_pages(page, order). */
struct page *blksnap_alloc_block(unsigned int order);
/* What a redirected bio's completion calls, after the clone is put: the
 * errno (or 0) the original bio ends with, given ctx, dev, tag and the
 * clone's errno. It owns ctx and dev from then on. */
typedef int (*blksnap_redirect_done_fn)(const void *ctx, const void *dev,
					u64 tag, int err);
/* Sends orig's I/O to bdev at sector through a clone, without waiting (it
 * does not sleep); on completion orig ends with the errno that done (Rust)
 * makes of the clone's. -ENOMEM if there is no clone to be had without
 * sleeping. */
int blksnap_bio_redirect(struct bio *orig, struct block_device *bdev,
			 u64 sector, blksnap_redirect_done_fn done,
			 const void *ctx, const void *dev, u64 tag);

/* Whether a message user space caused may be logged now (rate limit). */
bool blksnap_log_allowed(void);

/* Snapshot image disks. */
struct workqueue_struct;
struct workqueue_struct *blksnap_alloc_workqueue(void);
/* Splits the first @sectors (fewer than the bio has) off an image disk's
 * bio: returns them as a bio of their own, chained to @bio, and submits the
 * rest of @bio again. NULL (and @bio untouched) if that cannot be done. */
struct bio *blksnap_bio_split_front(struct bio *bio, unsigned int sectors);
/* Allocates and adds a disk with no partitions, logical blocks of 512
 * bytes, bios of up to max_hw_sectors, and the given private data. */
struct gendisk *blksnap_disk_create(int major, int minor, const char *name,
				    u64 capacity, unsigned int max_hw_sectors,
				    void *private_data);
void blksnap_disk_destroy(struct gendisk *disk);
void *blksnap_bio_disk_private(struct bio *bio);
int blksnap_register_blkdev(void);
void blksnap_unregister_blkdev(unsigned int major);
unsigned int blksnap_noio_save(void);
void blksnap_noio_restore(unsigned int flags);
/* Rust: the image disks' submit_bio. */
void blksnap_image_submit_bio(struct bio *bio);
dev_t blksnap_bdev_dev(struct block_device *bdev);

#endif
