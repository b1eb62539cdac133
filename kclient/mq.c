// SPDX-License-Identifier: GPL-2.0
/*
 * The delayed-change queue (docs/kclient.md, "Directory leases"). Creates, mkdirs, unlinks and
 * rmdirs answered here under a directory lease (lease.c), and the RELEASEs that must not
 * overtake them, wait here and go to every writer as BATCHes of up to POHMELFS_BATCH_MAX
 * commands. A server runs a batch's commands in order and stops at the first failure; the
 * commands after a failed one are sent again. Every other request of the mount waits until
 * everything queued before it was answered (rpc.c drains first), so the servers see the changes
 * in the order they were made here.
 *
 * The queue is sent meta_delay_ms after its first command, at once when it holds a full batch,
 * and by every drain: another request, a lease break, fsync, syncfs, unmount.
 *
 * A command that fails on the servers was already reported done to the application: the
 * failure is logged, the directory's names are forgotten (asked from the servers again) and
 * the object's mapping carries the error, so that its next fsync reports it.
 */
#include <linux/pagemap.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "pohmelfs.h"

/* A BATCH carries at most this much command data (small delayed WRITEs add up), well inside a
 * message's payload limit; a queue holding that much is sent at once. */
#define POHMELFS_MQ_BATCH_BYTES (512u << 10)
/* Past this the queue takes no more: changes are sent at once (after the queue) instead. */
#define POHMELFS_MQ_MAX_COUNT 4096u
#define POHMELFS_MQ_MAX_BYTES (16u << 20)

struct pohmelfs_mq_cmd {
	struct list_head list;
	u64 seq;
	u16 opcode;
	bool has_parent, has_obj;
	struct pohmelfs_oid parent, obj;
	u32 len;
	u8 body[];
};

/* A failed command's objects, marked by failed_work (not on the flushing thread, which may be
 * writing back an inode that a lookup here could end up evicting). */
struct pohmelfs_mq_failure {
	struct list_head list;
	u16 opcode;
	bool has_parent, has_obj;
	struct pohmelfs_oid parent, obj;
};

struct pohmelfs_mq_cmd *pohmelfs_mq_cmd_new(u16 opcode, const void *a, size_t alen, const void *b,
					    size_t blen, const struct pohmelfs_oid *parent,
					    const struct pohmelfs_oid *obj, gfp_t gfp)
{
	struct pohmelfs_mq_cmd *cmd = kmalloc(sizeof(*cmd) + alen + blen, gfp);

	if (!cmd)
		return NULL;
	cmd->opcode = opcode;
	cmd->len = alen + blen;
	memcpy(cmd->body, a, alen);
	if (b && blen)
		memcpy(cmd->body + alen, b, blen);
	cmd->has_parent = parent;
	if (parent)
		cmd->parent = *parent;
	cmd->has_obj = obj;
	if (obj)
		cmd->obj = *obj;
	return cmd;
}

void pohmelfs_mq_cmd_free(struct pohmelfs_mq_cmd *cmd)
{
	kfree(cmd);
}

void *pohmelfs_mq_cmd_tail(struct pohmelfs_mq_cmd *cmd, size_t alen)
{
	return cmd->body + alen;
}

void pohmelfs_mq_push(struct pohmelfs_sb_info *sbi, struct pohmelfs_mq_cmd *cmd)
{
	struct pohmelfs_mq *mq = &sbi->mq;

	spin_lock(&mq->lock);
	cmd->seq = ++mq->queued;
	list_add_tail(&cmd->list, &mq->pending);
	mq->bytes += cmd->len;
	if (++mq->count >= POHMELFS_BATCH_MAX || mq->bytes >= POHMELFS_MQ_BATCH_BYTES)
		mod_delayed_work(pohmelfs_meta_wq, &mq->work, 0);
	else if (mq->count == 1)
		queue_delayed_work(pohmelfs_meta_wq, &mq->work,
				   msecs_to_jiffies(READ_ONCE(sbi->meta_delay_ms)));
	spin_unlock(&mq->lock);
}

bool pohmelfs_mq_full(struct pohmelfs_sb_info *sbi)
{
	return READ_ONCE(sbi->mq.count) >= POHMELFS_MQ_MAX_COUNT ||
	       READ_ONCE(sbi->mq.bytes) >= POHMELFS_MQ_MAX_BYTES;
}

bool pohmelfs_mq_busy(struct pohmelfs_sb_info *sbi)
{
	return atomic64_read(&sbi->mq.done) < READ_ONCE(sbi->mq.queued);
}

/* The name a command carries, for the log. */
static void cmd_name(const struct pohmelfs_mq_cmd *cmd, const char **op, const char **name,
		     int *name_len)
{
	size_t fixed = 0;

	*op = "change";
	switch (cmd->opcode) {
	case POHMELFS_OP_MKNOD:
		*op = "create";
		fixed = sizeof(struct pohmelfs_create_req);
		break;
	case POHMELFS_OP_MKDIR:
		*op = "mkdir";
		fixed = sizeof(struct pohmelfs_create_req);
		break;
	case POHMELFS_OP_UNLINK:
		*op = "unlink";
		fixed = sizeof(struct pohmelfs_name_req);
		break;
	case POHMELFS_OP_RMDIR:
		*op = "rmdir";
		fixed = sizeof(struct pohmelfs_name_req);
		break;
	case POHMELFS_OP_RELEASE:
		*op = "release";
		break;
	case POHMELFS_OP_WRITE:
		*op = "write";
		break;
	case POHMELFS_OP_SETATTR:
		*op = "setattr";
		break;
	}
	*name = fixed && cmd->len > fixed ? (const char *)cmd->body + fixed : "";
	*name_len = fixed && cmd->len > fixed ? cmd->len - fixed : 0;
}

static void fail_cmd(struct pohmelfs_sb_info *sbi, struct pohmelfs_mq_cmd *cmd, int err)
{
	struct pohmelfs_mq_failure *f;
	const char *op, *name;
	int name_len;

	cmd_name(cmd, &op, &name, &name_len);
	pr_warn("pohmelfs: a delayed %s '%.*s' failed on the servers (%d); it was reported done\n",
		op, name_len, name, err);
	/* syncfs(2) reports it, whatever else is lost below. */
	errseq_set(&sbi->sb->s_wb_err, -EIO);
	if (!cmd->has_parent && !cmd->has_obj)
		return;
	f = kmalloc(sizeof(*f), GFP_NOFS);
	if (!f)
		return;
	f->opcode = cmd->opcode;
	f->has_parent = cmd->has_parent;
	f->parent = cmd->parent;
	f->has_obj = cmd->has_obj;
	f->obj = cmd->obj;
	spin_lock(&sbi->mq.lock);
	list_add_tail(&f->list, &sbi->mq.failed);
	spin_unlock(&sbi->mq.lock);
	queue_work(pohmelfs_meta_wq, &sbi->mq.failed_work);
}

static void failed_work(struct work_struct *work)
{
	struct pohmelfs_sb_info *sbi = container_of(work, struct pohmelfs_sb_info, mq.failed_work);
	LIST_HEAD(failed);
	struct pohmelfs_mq_failure *f, *tmp;

	spin_lock(&sbi->mq.lock);
	list_splice_init(&sbi->mq.failed, &failed);
	spin_unlock(&sbi->mq.lock);
	list_for_each_entry_safe (f, tmp, &failed, list) {
		if (f->has_parent) {
			struct inode *dir = pohmelfs_ilookup(sbi->sb, &f->parent);

			pohmelfs_lease_forget_names_of(sbi, &f->parent);
			if (dir) { /* fsync of the directory reports it */
				mapping_set_error(dir->i_mapping, -EIO);
				WRITE_ONCE(POHMELFS_I(dir)->attr_time, 0);
				iput(dir);
			}
		}
		/* A directory that was never made holds no lease and nothing can go in it. */
		if (f->opcode == POHMELFS_OP_MKDIR && f->has_obj)
			pohmelfs_lease_drop(sbi, &f->obj);
		if (f->has_obj) {
			struct inode *inode = pohmelfs_ilookup(sbi->sb, &f->obj);

			if (inode) {
				/* fsync's errno for "what you wrote did not land" */
				mapping_set_error(inode->i_mapping, -EIO);
				WRITE_ONCE(POHMELFS_I(inode)->attr_time, 0);
				iput(inode);
			}
		}
		list_del(&f->list);
		kfree(f);
	}
}

bool pohmelfs_batch_next(const u8 *rep, size_t len, size_t *off, struct pohmelfs_cmd_rep *cr,
			 const u8 **body)
{
	u32 clen;

	if (len - *off < sizeof(*cr))
		return false;
	memcpy(cr, rep + *off, sizeof(*cr));
	*off += sizeof(*cr);
	clen = le32_to_cpu(cr->length);
	if (clen > len - *off)
		return false;
	*body = rep + *off;
	*off += min_t(size_t, POHMELFS_PAD8(clen), len - *off);
	return true;
}

/* Reports the commands of batch from the k-th on as failed; returns how many there are in all. */
static int fail_from(struct pohmelfs_sb_info *sbi, struct list_head *batch, int k, int err)
{
	struct pohmelfs_mq_cmd *cmd;
	int n = 0;

	list_for_each_entry (cmd, batch, list)
		if (n++ >= k)
			fail_cmd(sbi, cmd, err);
	return n;
}

/* A command the server ran: its reply body must be what the command makes. */
static int check_reply(const struct pohmelfs_mq_cmd *cmd, const u8 *body, u32 len)
{
	if (cmd->opcode == POHMELFS_OP_WRITE) {
		const struct pohmelfs_write_req *q = (const void *)cmd->body;
		struct pohmelfs_write_rep rep;

		if (len != sizeof(rep))
			return -EIO;
		memcpy(&rep, body, sizeof(rep));
		return le64_to_cpu(rep.written) == le32_to_cpu(q->size) ? 0 : -EIO;
	}
	if (cmd->opcode == POHMELFS_OP_MKNOD || cmd->opcode == POHMELFS_OP_MKDIR) {
		const struct pohmelfs_create_req *q = (const void *)cmd->body;
		struct pohmelfs_attr attr;

		if (len != sizeof(attr))
			return -EIO;
		memcpy(&attr, body, sizeof(attr));
		return !memcmp(&attr.oid, &q->new_oid, sizeof(attr.oid)) &&
				       !((le32_to_cpu(attr.mode) ^ le32_to_cpu(q->mode)) & S_IFMT)
			       ? 0
			       : -EIO;
	}
	return 0;
}

/*
 * Sends the first `limit` commands on batch as one BATCH and checks every length of the reply.
 * Returns how many of them are dealt with (answered, or failed and reported): the caller sends
 * the rest (those after a failed command, which the servers did not run) again. A negative
 * errno: the servers refused the BATCH as a whole (nothing reported yet).
 */
static int send_batch(struct pohmelfs_sb_info *sbi, struct list_head *batch, unsigned int limit)
{
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_BATCH };
	struct pohmelfs_batch_req *bq;
	struct pohmelfs_batch_rep br;
	struct pohmelfs_mq_cmd *cmd;
	size_t len = sizeof(*bq), cap = sizeof(br), off;
	u32 n = 0, count, i;
	u8 *buf = NULL, *rep = NULL;
	bool answered = false;
	int err, dealt;

	list_for_each_entry (cmd, batch, list) {
		if (n == limit)
			break;
		len += sizeof(struct pohmelfs_cmd) + POHMELFS_PAD8(cmd->len);
		cap += sizeof(struct pohmelfs_cmd_rep) +
		       POHMELFS_PAD8(sizeof(struct pohmelfs_attr));
		n++;
	}
	buf = kvzalloc(len, GFP_NOFS);
	rep = kvmalloc(cap, GFP_NOFS);
	if (!buf || !rep) {
		dealt = fail_from(sbi, batch, 0, -ENOMEM);
		goto out;
	}
	bq = (struct pohmelfs_batch_req *)buf;
	bq->count = cpu_to_le32(n);
	off = sizeof(*bq);
	i = 0;
	list_for_each_entry (cmd, batch, list) {
		struct pohmelfs_cmd *c = (struct pohmelfs_cmd *)(buf + off);

		if (i++ == n)
			break;
		c->opcode = cpu_to_le16(cmd->opcode);
		c->length = cpu_to_le32(cmd->len);
		memcpy(buf + off + sizeof(*c), cmd->body, cmd->len);
		off += sizeof(*c) + POHMELFS_PAD8(cmd->len);
	}
	pohmelfs_msg_add(&m, buf, len);
	m.reply = rep;
	m.reply_cap = cap;
	err = pohmelfs_change_call_queued(sbi, &m, &answered);
	if (err && answered) {
		dealt = err;
		goto out;
	}
	if (err) { /* no writer answered within the timeout: the whole queue fails alike */
		dealt = fail_from(sbi, batch, 0, err);
		goto out;
	}
	memcpy(&br, rep, min(m.reply_len, sizeof(br)));
	count = m.reply_len >= sizeof(br) ? le32_to_cpu(br.count) : 0;
	if (!count || count > n) {
		pr_warn("pohmelfs: BATCH reply of %zu bytes counts %u of %u commands\n",
			m.reply_len, count, n);
		dealt = fail_from(sbi, batch, 0, -EIO);
		goto out;
	}
	off = sizeof(br);
	i = 0;
	list_for_each_entry (cmd, batch, list) {
		struct pohmelfs_cmd_rep cr;
		const u8 *body;
		u32 status;

		if (i == count)
			break;
		if (!pohmelfs_batch_next(rep, m.reply_len, &off, &cr, &body))
			goto short_reply;
		status = le32_to_cpu(cr.status);
		err = status ? pohmelfs_status_err(status)
			     : check_reply(cmd, body, le32_to_cpu(cr.length));
		i++;
		if (err)
			fail_cmd(sbi, cmd, err);
		if (status) {
			dealt = i; /* the servers stopped here: the rest go again */
			goto out;
		}
	}
	if (count < n) {
		pr_warn("pohmelfs: BATCH stopped after %u of %u commands without a failure\n",
			count, n);
		fail_from(sbi, batch, count, -EIO);
		dealt = n;
		goto out;
	}
	dealt = n;
	goto out;
short_reply:
	pr_warn("pohmelfs: BATCH reply of %zu bytes is cut short\n", m.reply_len);
	fail_from(sbi, batch, i, -EIO);
	dealt = n;
out:
	kvfree(buf);
	kvfree(rep);
	return dealt;
}

/* Under flush_mutex: sends the queue until it is empty. */
static void flush_locked(struct pohmelfs_sb_info *sbi)
{
	struct pohmelfs_mq *mq = &sbi->mq;
	unsigned int noio = memalloc_noio_save();

	for (;;) {
		struct pohmelfs_mq_cmd *cmd, *tmp;
		LIST_HEAD(batch);
		unsigned int n = 0;
		bool one_by_one = false;
		size_t bytes = 0;
		u64 last = 0;

		spin_lock(&mq->lock);
		while (n < POHMELFS_BATCH_MAX && !list_empty(&mq->pending)) {
			cmd = list_first_entry(&mq->pending, struct pohmelfs_mq_cmd, list);
			if (n && bytes + cmd->len > POHMELFS_MQ_BATCH_BYTES)
				break;
			list_move_tail(&cmd->list, &batch);
			last = cmd->seq;
			bytes += cmd->len;
			mq->bytes -= cmd->len;
			mq->count--;
			n++;
		}
		spin_unlock(&mq->lock);
		if (!n)
			break;
		while (!list_empty(&batch)) {
			int dealt = send_batch(sbi, &batch, one_by_one ? 1 : n);

			/* Refused as a whole (one command fenced, say): one at a time, so that only
			 * the culprit fails. */
			if (dealt < 0 && !one_by_one) {
				one_by_one = true;
				continue;
			}
			if (dealt < 0) {
				fail_cmd(sbi,
					 list_first_entry(&batch, struct pohmelfs_mq_cmd, list),
					 dealt);
				dealt = 1;
			}
			list_for_each_entry_safe (cmd, tmp, &batch, list) {
				if (dealt-- <= 0)
					break;
				list_del(&cmd->list);
				kfree(cmd);
			}
		}
		atomic64_set(&mq->done, last);
	}
	memalloc_noio_restore(noio);
}

void pohmelfs_mq_drain(struct pohmelfs_sb_info *sbi)
{
	struct pohmelfs_mq *mq = &sbi->mq;
	u64 target = READ_ONCE(mq->queued);

	if (atomic64_read(&mq->done) >= target)
		return;
	mutex_lock(&mq->flush_mutex);
	if (atomic64_read(&mq->done) < target)
		flush_locked(sbi);
	mutex_unlock(&mq->flush_mutex);
}

void pohmelfs_mq_sync(struct pohmelfs_sb_info *sbi)
{
	pohmelfs_mq_drain(sbi);
	flush_work(&sbi->mq.failed_work);
}

static void mq_work(struct work_struct *work)
{
	struct pohmelfs_sb_info *sbi =
		container_of(to_delayed_work(work), struct pohmelfs_sb_info, mq.work);

	mutex_lock(&sbi->mq.flush_mutex);
	flush_locked(sbi);
	mutex_unlock(&sbi->mq.flush_mutex);
}

void pohmelfs_mq_init(struct pohmelfs_sb_info *sbi)
{
	struct pohmelfs_mq *mq = &sbi->mq;

	spin_lock_init(&mq->lock);
	INIT_LIST_HEAD(&mq->pending);
	INIT_LIST_HEAD(&mq->failed);
	mutex_init(&mq->flush_mutex);
	atomic64_set(&mq->done, 0);
	INIT_DELAYED_WORK(&mq->work, mq_work);
	INIT_WORK(&mq->failed_work, failed_work);
}

/* Unmount, after the last drain: anything still queued could not be sent. */
void pohmelfs_mq_stop(struct pohmelfs_sb_info *sbi)
{
	struct pohmelfs_mq *mq = &sbi->mq;
	struct pohmelfs_mq_cmd *cmd, *tmp;
	struct pohmelfs_mq_failure *f, *ftmp;

	cancel_delayed_work_sync(&mq->work);
	cancel_work_sync(&mq->failed_work);
	if (mq->count)
		pr_warn("pohmelfs: %u delayed changes could not be sent before unmount\n",
			mq->count);
	list_for_each_entry_safe (cmd, tmp, &mq->pending, list)
		kfree(cmd);
	list_for_each_entry_safe (f, ftmp, &mq->failed, list)
		kfree(f);
	INIT_LIST_HEAD(&mq->pending);
	INIT_LIST_HEAD(&mq->failed);
	mq->count = 0;
	mq->bytes = 0;
}
