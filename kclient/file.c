// SPDX-License-Identifier: GPL-2.0
/*
 * Regular files: open and release (the server's handle count, so an unlinked open file stays
 * readable), the page cache (read_folio, readahead, write_begin/write_end, writepages), fsync,
 * fallocate. Reads are received straight into the page cache's pages; writeback sends runs of
 * contiguous dirty pages, up to IO_MAX per WRITE, from the pages themselves. Dirty data is
 * written back at close (close-to-open consistency, like NFS). O_DIRECT bypasses the cache.
 */
#include <linux/fs.h>
#include <linux/falloc.h>
#include <linux/mm.h>
#include <linux/pagemap.h>
#include <linux/slab.h>
#include <linux/uio.h>
#include <linux/writeback.h>

#include "pohmelfs.h"

#define POHMELFS_IO_PAGES (POHMELFS_IO_MAX / PAGE_SIZE)

/* Handles live on every server that takes changes (so an unlinked open file stays readable
 * there); a mount no server lets write takes none and only refreshes the attributes. */
static bool takes_handles(struct inode *inode)
{
	return !(sb_rdonly(inode->i_sb) && pohmelfs_read_only(POHMELFS_SB(inode->i_sb)));
}

/* file->private_data: whether the servers hold a handle for this open file. */
#define POHMELFS_FILE_HANDLE ((void *)1)

static void release_handle(struct inode *inode)
{
	struct pohmelfs_obj_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_RELEASE };

	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_change_async(POHMELFS_SB(inode->i_sb), &m);
}

static int pohmelfs_open(struct inode *inode, struct file *file)
{
	struct pohmelfs_open_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_OPEN };
	/* create() opened it already (CREATE_OPEN): one round trip for open(O_CREAT). */
	bool created_open = test_and_clear_bit(POHMELFS_I_CREATED_OPEN, &POHMELFS_I(inode)->flags);
	u64 since = pohmelfs_attr_seq(inode->i_sb);
	struct pohmelfs_attr attr;
	int err;

	err = generic_file_open(inode, file);
	if (err) {
		if (created_open)
			release_handle(inode);
		return err;
	}
	if (created_open) {
		file->private_data = POHMELFS_FILE_HANDLE;
		return 0;
	}
	if (!takes_handles(inode))
		return pohmelfs_refresh(inode, true);
	q.flags = cpu_to_le32((file->f_mode & FMODE_WRITE) ? POHMELFS_OPEN_WRITE : 0);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.reply = &attr;
	m.reply_cap = sizeof(attr);
	err = pohmelfs_change_call(POHMELFS_SB(inode->i_sb), &m);
	if (!err && (m.reply_len != sizeof(attr) ||
		     memcmp(&attr.oid, &POHMELFS_I(inode)->oid, sizeof(attr.oid))))
		err = -EIO;
	if (err)
		return err;
	file->private_data = POHMELFS_FILE_HANDLE;
	/* Close-to-open: fresh attributes, and the cache dropped if another client changed it. */
	pohmelfs_apply_attr(inode, &attr, since);
	return 0;
}

/* Nobody waits for a RELEASE: close does not pay a round trip for it. */
static int pohmelfs_release(struct inode *inode, struct file *file)
{
	if (file->private_data == POHMELFS_FILE_HANDLE)
		release_handle(inode);
	return 0;
}

/* An inode evicted with the handle of a create no open used (mknod(2) of a regular file goes
 * through ->create too) gives it back. */
void pohmelfs_release_created(struct inode *inode)
{
	if (test_and_clear_bit(POHMELFS_I_CREATED_OPEN, &POHMELFS_I(inode)->flags))
		release_handle(inode);
}

/* Close writes back what this descriptor dirtied, and reports a failed writeback. */
static int pohmelfs_flush(struct file *file, fl_owner_t id)
{
	if (!(file->f_mode & FMODE_WRITE))
		return 0;
	return filemap_write_and_wait(file->f_mapping);
}

static int fsync_call(struct inode *inode, int datasync)
{
	struct pohmelfs_fsync_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_FSYNC };

	q.datasync = cpu_to_le32(datasync);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	return pohmelfs_change_call(POHMELFS_SB(inode->i_sb), &m);
}

static int pohmelfs_fsync(struct file *file, loff_t start, loff_t end, int datasync)
{
	struct inode *inode = file_inode(file);
	int err = file_write_and_wait_range(file, start, end);

	/* Writeback may have queued the data (a new file's): the queue goes first, and a delayed
	 * create or write of this file that failed on the servers is reported here. */
	pohmelfs_mq_sync(POHMELFS_SB(inode->i_sb));
	if (!err)
		err = file_check_and_advance_wb_err(file);
	if (err)
		return err;
	return fsync_call(inode, datasync);
}

/*
 * O_DIRECT: data moves between the caller's buffer and the servers without the page cache,
 * through a bounce buffer of up to IO_MAX (one READ or WRITE per chunk; the receive thread
 * cannot write into the caller's memory). Dirty cached pages of the range are written back
 * first, so a direct read sees this client's buffered writes, and cached pages are dropped
 * after a direct write, so a buffered read sees it. No alignment is required.
 */
/* Writes back the cached dirty pages of the range; then the bounce buffer (or an ERR_PTR). */
static void *direct_begin(struct inode *inode, loff_t pos, size_t count)
{
	int err = filemap_write_and_wait_range(inode->i_mapping, pos, pos + count - 1);
	void *buf;

	if (err)
		return ERR_PTR(err);
	buf = kvmalloc(min_t(size_t, count, POHMELFS_IO_MAX), GFP_KERNEL);
	return buf ? buf : ERR_PTR(-ENOMEM);
}

static ssize_t direct_read(struct kiocb *iocb, struct iov_iter *to)
{
	struct inode *inode = file_inode(iocb->ki_filp);
	size_t count = iov_iter_count(to);
	loff_t pos = iocb->ki_pos;
	ssize_t done = 0;
	size_t copied;
	void *buf;
	int err;

	if (!count)
		return 0;
	if (iocb->ki_flags & IOCB_NOWAIT) /* every READ waits for a server */
		return -EAGAIN;
	buf = direct_begin(inode, pos, count);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	while (count) {
		size_t len = min_t(size_t, count, POHMELFS_IO_MAX);
		struct pohmelfs_read_req q = { .oid = POHMELFS_I(inode)->oid };
		struct pohmelfs_msg m = { .opcode = POHMELFS_OP_READ };

		q.offset = cpu_to_le64(pos);
		q.size = cpu_to_le32(len);
		pohmelfs_msg_add(&m, &q, sizeof(q));
		m.reply = buf;
		m.reply_cap = len;
		err = pohmelfs_read_call(POHMELFS_SB(inode->i_sb), &m);
		if (err)
			break;
		copied = copy_to_iter(buf, m.reply_len, to);
		pos += copied; /* what reached the caller counts, even on a fault */
		done += copied;
		count -= copied;
		if (copied != m.reply_len) {
			err = -EFAULT;
			break;
		}
		if (m.reply_len < len)
			break; /* end of file */
	}
	kvfree(buf);
	iocb->ki_pos = pos;
	file_accessed(iocb->ki_filp);
	return done ? done : err;
}

/* WRITE of len bytes of buf at pos to every writer: the bytes the server wrote. */
static ssize_t direct_write_chunk(struct inode *inode, const void *buf, size_t len, loff_t pos)
{
	struct pohmelfs_write_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_write_rep rep;
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_WRITE };
	int err;

	q.offset = cpu_to_le64(pos);
	q.size = cpu_to_le32(len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, buf, len);
	m.reply = &rep;
	m.reply_cap = sizeof(rep);
	err = pohmelfs_change_call(POHMELFS_SB(inode->i_sb), &m);
	if (err)
		return err;
	if (m.reply_len != sizeof(rep) || le64_to_cpu(rep.written) > len)
		return -EIO;
	return le64_to_cpu(rep.written);
}

static ssize_t direct_write_locked(struct kiocb *iocb, struct iov_iter *from)
{
	struct file *file = iocb->ki_filp;
	struct inode *inode = file_inode(file);
	loff_t start, pos, end;
	ssize_t done = 0, n;
	size_t count;
	void *buf;
	int err;

	/* An append goes after what the server has now. */
	if (iocb->ki_flags & IOCB_APPEND) {
		err = pohmelfs_refresh(inode, true);
		if (err)
			return err;
	}
	n = generic_write_checks(iocb, from);
	if (n <= 0)
		return n;
	err = file_modified(file);
	if (err)
		return err;
	start = pos = iocb->ki_pos;
	count = iov_iter_count(from);
	buf = direct_begin(inode, pos, count);
	if (IS_ERR(buf))
		return PTR_ERR(buf);
	end = pos + count - 1;
	while (count) {
		size_t len = copy_from_iter(buf, min_t(size_t, count, POHMELFS_IO_MAX), from);

		if (!len) {
			err = -EFAULT;
			break;
		}
		/* Set per chunk: a refresh between chunks clears it. */
		WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
		n = direct_write_chunk(inode, buf, len, pos);
		if (n <= 0) {
			err = n ? n : -EIO; /* nothing written is an error, not a 0 return */
			iov_iter_revert(from, len);
			break;
		}
		pos += n;
		done += n;
		count -= n;
		if ((size_t)n < len) {
			iov_iter_revert(from, len - n);
			break;
		}
	}
	kvfree(buf);
	/* Even a failed WRITE may have reached a server: no cached page of the range is trusted. */
	invalidate_inode_pages2_range(inode->i_mapping, start >> PAGE_SHIFT, end >> PAGE_SHIFT);
	if (done)
		pohmelfs_local_size(inode, pos);
	iocb->ki_pos = pos;
	return done ? done : err;
}

static ssize_t direct_write(struct kiocb *iocb, struct iov_iter *from)
{
	struct inode *inode = file_inode(iocb->ki_filp);
	ssize_t n;

	if (iocb->ki_flags & IOCB_NOWAIT) /* every WRITE waits for the servers */
		return -EAGAIN;
	inode_lock(inode);
	n = direct_write_locked(iocb, from);
	inode_unlock(inode);
	if (n > 0)
		n = generic_write_sync(iocb, n); /* O_SYNC, O_DSYNC: FSYNC on the servers */
	return n;
}

static ssize_t pohmelfs_read_iter(struct kiocb *iocb, struct iov_iter *to)
{
	int err;

	if (iocb->ki_flags & IOCB_DIRECT)
		return direct_read(iocb, to);
	err = pohmelfs_refresh(file_inode(iocb->ki_filp), false);
	if (err)
		return err;
	return generic_file_read_iter(iocb, to);
}

static ssize_t pohmelfs_write_iter(struct kiocb *iocb, struct iov_iter *from)
{
	int err;

	if (iocb->ki_flags & IOCB_DIRECT)
		return direct_write(iocb, from);
	/* Appends go after what the server has now. */
	err = pohmelfs_refresh(file_inode(iocb->ki_filp), iocb->ki_flags & IOCB_APPEND);
	if (err)
		return err;
	return generic_file_write_iter(iocb, from);
}

static long fallocate_locked(struct file *file, struct inode *inode, int mode, loff_t offset,
			     loff_t len);

static long pohmelfs_fallocate(struct file *file, int mode, loff_t offset, loff_t len)
{
	struct inode *inode = file_inode(file);
	long err;

	if (mode & ~(FALLOC_FL_KEEP_SIZE | FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
		return -EOPNOTSUPP;
	/* No write or page fault may slip in between the write-back and the server's change. */
	inode_lock(inode);
	filemap_invalidate_lock(inode->i_mapping);
	err = fallocate_locked(file, inode, mode, offset, len);
	filemap_invalidate_unlock(inode->i_mapping);
	inode_unlock(inode);
	return err;
}

static long fallocate_locked(struct file *file, struct inode *inode, int mode, loff_t offset,
			     loff_t len)
{
	struct pohmelfs_fallocate_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_FALLOCATE };
	int err;

	/* Local dirty data in the range must reach the server first, and stale pages go. */
	err = filemap_write_and_wait(inode->i_mapping);
	if (err)
		return err;
	q.offset = cpu_to_le64(offset);
	q.length = cpu_to_le64(len);
	q.mode = cpu_to_le32(mode);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	err = pohmelfs_change_call(POHMELFS_SB(inode->i_sb), &m);
	if (err)
		return err;
	if (mode & (FALLOC_FL_PUNCH_HOLE | FALLOC_FL_ZERO_RANGE))
		truncate_pagecache_range(inode, offset, offset + len - 1);
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	return pohmelfs_refresh(inode, true);
}

const struct file_operations pohmelfs_file_fops = {
	.open = pohmelfs_open,
	.release = pohmelfs_release,
	.flush = pohmelfs_flush,
	.llseek = generic_file_llseek,
	.read_iter = pohmelfs_read_iter,
	.write_iter = pohmelfs_write_iter,
	.mmap = generic_file_mmap,
	.splice_read = generic_file_splice_read,
	.splice_write = iter_file_splice_write,
	.fsync = pohmelfs_fsync,
	.fallocate = pohmelfs_fallocate,
};

/* A READ reply shorter than asked (end of file): the rest of the pages reads as zeros. */
static void zero_unread(struct bio_vec *bv, int nbv, size_t len, size_t got)
{
	struct iov_iter rest;

	iov_iter_bvec(&rest, ITER_DEST, bv, nbv, len);
	iov_iter_advance(&rest, got);
	iov_iter_zero(iov_iter_count(&rest), &rest);
}

/* A READ of len bytes at pos whose reply goes straight into the pages of bv. */
static void read_msg(struct pohmelfs_msg *m, struct pohmelfs_read_req *q, struct inode *inode,
		     loff_t pos, struct bio_vec *bv, int nbv, size_t len)
{
	*q = (struct pohmelfs_read_req){ .oid = POHMELFS_I(inode)->oid };
	q->offset = cpu_to_le64(pos);
	q->size = cpu_to_le32(len);
	*m = (struct pohmelfs_msg){ .opcode = POHMELFS_OP_READ };
	pohmelfs_msg_add(m, q, sizeof(*q));
	m->rpages = bv;
	m->nrpages = nbv;
	m->rlen = len;
}

/* READ of len bytes at pos into the pages of bv; what the server did not have is zeroed. */
static int read_pages(struct inode *inode, loff_t pos, struct bio_vec *bv, int nbv, size_t len)
{
	struct pohmelfs_read_req q;
	struct pohmelfs_msg m;
	int err;

	read_msg(&m, &q, inode, pos, bv, nbv, len);
	err = pohmelfs_read_call(POHMELFS_SB(inode->i_sb), &m);
	if (!err)
		zero_unread(bv, nbv, len, m.reply_len);
	return err;
}

static int pohmelfs_read_folio(struct file *file, struct folio *folio)
{
	struct bio_vec bv;
	int err;

	bvec_set_page(&bv, &folio->page, folio_size(folio), 0);
	err = read_pages(folio->mapping->host, folio_pos(folio), &bv, 1, folio_size(folio));
	if (!err)
		folio_mark_uptodate(folio);
	folio_unlock(folio);
	return err;
}

/* One readahead READ in flight: the receive thread fills the locked folios and unlocks them;
 * the reader waits on the folio locks, so several READs are in flight at once. */
struct ra_read {
	struct pohmelfs_req req;
	int n;
	size_t len;
	struct folio *folios[POHMELFS_IO_PAGES];
	struct bio_vec bv[POHMELFS_IO_PAGES];
};

static void ra_finish(struct ra_read *ra, int err)
{
	int i;

	if (!err)
		zero_unread(ra->bv, ra->n, ra->len, ra->req.reply_len);
	/* A folio left !uptodate is read again, with failover, by read_folio. */
	for (i = 0; i < ra->n; i++) {
		if (!err)
			folio_mark_uptodate(ra->folios[i]);
		folio_unlock(ra->folios[i]);
	}
	kfree(ra);
}

static void ra_done(struct pohmelfs_req *req)
{
	ra_finish(container_of(req, struct ra_read, req), req->err);
}

static void pohmelfs_readahead(struct readahead_control *rac)
{
	struct inode *inode = rac->mapping->host;

	while (readahead_count(rac)) {
		struct pohmelfs_read_req q;
		struct pohmelfs_msg m;
		struct ra_read *ra = kzalloc(sizeof(*ra), GFP_NOFS);
		struct folio *folio;
		loff_t pos;

		if (!ra)
			return; /* the pages stay !uptodate: read_folio reads them one by one */
		while (ra->n < POHMELFS_IO_PAGES && ra->len < POHMELFS_IO_MAX &&
		       (folio = readahead_folio(rac))) {
			ra->folios[ra->n] = folio;
			bvec_set_page(&ra->bv[ra->n], &folio->page, folio_size(folio), 0);
			ra->len += folio_size(folio);
			ra->n++;
		}
		if (!ra->n) {
			kfree(ra);
			return;
		}
		/* Not readahead_pos(): it lags one folio behind the ones taken so far. */
		pos = folio_pos(ra->folios[0]);
		read_msg(&m, &q, inode, pos, ra->bv, ra->n, ra->len);
		ra->req.on_done = ra_done;
		if (pohmelfs_read_send(POHMELFS_SB(inode->i_sb), &m, &ra->req))
			ra_finish(ra, -EIO);
	}
}

static int pohmelfs_write_begin(struct file *file, struct address_space *mapping, loff_t pos,
				unsigned int len, struct page **pagep, void **fsdata)
{
	struct inode *inode = mapping->host;
	pgoff_t index = pos >> PAGE_SHIFT;
	unsigned int from = pos & (PAGE_SIZE - 1);
	struct page *page;
	int err;

	page = grab_cache_page_write_begin(mapping, index);
	if (!page)
		return -ENOMEM;
	*pagep = page;
	if (PageUptodate(page) || len == PAGE_SIZE)
		return 0;
	if (page_offset(page) >= i_size_read(inode)) {
		/* Nothing on the server there yet: zeros around the new data. */
		zero_user_segments(page, 0, from, from + len, PAGE_SIZE);
		return 0;
	}
	{
		struct bio_vec bv;

		bvec_set_page(&bv, page, PAGE_SIZE, 0);
		err = read_pages(inode, page_offset(page), &bv, 1, PAGE_SIZE);
	}
	if (err) {
		unlock_page(page);
		put_page(page);
		return err;
	}
	SetPageUptodate(page);
	return 0;
}

static int pohmelfs_write_end(struct file *file, struct address_space *mapping, loff_t pos,
			      unsigned int len, unsigned int copied, struct page *page,
			      void *fsdata)
{
	struct inode *inode = mapping->host;

	if (!PageUptodate(page)) {
		if (copied < len) { /* a short copy into a page never read: try again */
			copied = 0;
			goto out;
		}
		SetPageUptodate(page);
	}
	/* Dirty before the size grows: apply_attr keeps a local size larger than the server's
	 * while pages are dirty, and against replies to requests sent before it grew. */
	set_page_dirty(page);
	if (pos + copied > i_size_read(inode))
		pohmelfs_local_size(inode, pos + copied);
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
out:
	unlock_page(page);
	put_page(page);
	return copied;
}

/* A run of contiguous pages under writeback, sent as one WRITE. */
struct wb_run {
	struct inode *inode;
	struct page *pages[POHMELFS_IO_PAGES];
	struct bio_vec bv[POHMELFS_IO_PAGES];
	int n;
	loff_t pos;
	size_t len;
	int err;
};

/* Largest run of a new file's pages (POHMELFS_I_NEW_UNDER_LEASE) queued as a delayed WRITE. */
#define POHMELFS_DELAYED_WRITE_MAX (64u << 10)

/* A new file's small run: copied into a WRITE queued behind its create (mq.c), so that close
 * does not wait for the servers. false: send it now. */
static bool wb_delay(struct wb_run *run)
{
	struct inode *inode = run->inode;
	struct pohmelfs_write_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_mq_cmd *cmd;
	u8 *p;
	int i;

	if (run->len > POHMELFS_DELAYED_WRITE_MAX ||
	    !test_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(inode)->flags) ||
	    pohmelfs_mq_full(POHMELFS_SB(inode->i_sb)))
		return false;
	q.offset = cpu_to_le64(run->pos);
	q.size = cpu_to_le32(run->len);
	cmd = pohmelfs_mq_cmd_new(POHMELFS_OP_WRITE, &q, sizeof(q), NULL, run->len, NULL, &q.oid,
				  GFP_NOFS);
	if (!cmd)
		return false;
	p = pohmelfs_mq_cmd_tail(cmd, sizeof(q));
	for (i = 0; i < run->n; i++) {
		memcpy_from_page(p, run->pages[i], 0, run->bv[i].bv_len);
		p += run->bv[i].bv_len;
	}
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	if (pohmelfs_lease_delay_change(inode, cmd)) {
		pohmelfs_mq_cmd_free(cmd);
		return false;
	}
	for (i = 0; i < run->n; i++)
		end_page_writeback(run->pages[i]);
	run->n = 0;
	run->len = 0;
	return true;
}

static void wb_flush(struct wb_run *run)
{
	struct pohmelfs_write_req q = { .oid = POHMELFS_I(run->inode)->oid };
	struct pohmelfs_write_rep rep;
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_WRITE };
	int i, err;

	if (!run->n || wb_delay(run))
		return;
	q.offset = cpu_to_le64(run->pos);
	q.size = cpu_to_le32(run->len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.data = run->bv;
	m.ndata = run->n;
	m.data_len = run->len;
	m.reply = &rep;
	m.reply_cap = sizeof(rep);
	WRITE_ONCE(POHMELFS_I(run->inode)->local_changes, true);
	err = pohmelfs_change_call(POHMELFS_SB(run->inode->i_sb), &m);
	if (!err && (m.reply_len != sizeof(rep) || le64_to_cpu(rep.written) != run->len))
		err = -EIO;
	if (err && err != -EINTR) {
		pr_warn_ratelimited("pohmelfs: write of %zu bytes at %lld failed (%d)\n", run->len,
				    run->pos, err);
		mapping_set_error(run->inode->i_mapping, err);
		run->err = err;
	}
	for (i = 0; i < run->n; i++) {
		if (err && err != -EINTR)
			SetPageError(run->pages[i]);
		end_page_writeback(run->pages[i]);
		/* A dying task's writeback sent nothing: the flusher writes the pages later. */
		if (err == -EINTR)
			__set_page_dirty_nobuffers(run->pages[i]);
	}
	run->n = 0;
	run->len = 0;
}

static int wb_page(struct page *page, struct writeback_control *wbc, void *data)
{
	struct wb_run *run = data;
	loff_t size = i_size_read(run->inode);
	loff_t off = page_offset(page);
	size_t len;

	if (off >= size) { /* truncated meanwhile */
		unlock_page(page);
		return 0;
	}
	len = min_t(loff_t, PAGE_SIZE, size - off);
	if (run->n &&
	    (run->n == POHMELFS_IO_PAGES || off != run->pos + run->len || run->len % PAGE_SIZE))
		wb_flush(run);
	set_page_writeback(page);
	unlock_page(page);
	if (!run->n)
		run->pos = off;
	run->pages[run->n] = page;
	bvec_set_page(&run->bv[run->n], page, len, 0);
	run->n++;
	run->len += len;
	return 0;
}

static int pohmelfs_writepages(struct address_space *mapping, struct writeback_control *wbc)
{
	struct wb_run *run = kzalloc(sizeof(*run), GFP_NOFS);
	int err;

	if (!run)
		return -ENOMEM;
	run->inode = mapping->host;
	err = write_cache_pages(mapping, wbc, wb_page, run);
	wb_flush(run);
	if (!err)
		err = run->err;
	kfree(run);
	return err;
}

const struct address_space_operations pohmelfs_aops = {
	.read_folio = pohmelfs_read_folio,
	.readahead = pohmelfs_readahead,
	.write_begin = pohmelfs_write_begin,
	.write_end = pohmelfs_write_end,
	.writepages = pohmelfs_writepages,
	.dirty_folio = filemap_dirty_folio,
	/* Never called: read_iter and write_iter handle O_DIRECT; its presence lets open(2) and
	 * fcntl(F_SETFL) accept O_DIRECT. */
	.direct_IO = noop_direct_IO,
};
