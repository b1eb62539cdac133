// SPDX-License-Identifier: GPL-2.0
/*
 * readdir. The server's cookies are opaque 64-bit directory offsets, so f_pos is a plain entry
 * count (2 + entries emitted) and the open directory remembers the cookie that goes with it;
 * a seek elsewhere restarts from the beginning and skips.
 */
#include <linux/slab.h>

#include "pohmelfs.h"

#define POHMELFS_READDIR_BYTES (32u << 10)

struct pohmelfs_dir_pos {
	loff_t pos; /* f_pos that `cookie` continues from */
	u64 cookie;
	bool eof;
};

static int pohmelfs_dir_open(struct inode *inode, struct file *file)
{
	struct pohmelfs_dir_pos *dp = kzalloc(sizeof(*dp), GFP_KERNEL);

	if (!dp)
		return -ENOMEM;
	dp->pos = 2;
	file->private_data = dp;
	return 0;
}

static int pohmelfs_dir_release(struct inode *inode, struct file *file)
{
	kfree(file->private_data);
	return 0;
}

static int pohmelfs_readdir(struct file *file, struct dir_context *ctx)
{
	struct inode *dir = file_inode(file);
	struct pohmelfs_dir_pos *dp = file->private_data;
	struct pohmelfs_readdir_req q = { .dir = POHMELFS_I(dir)->oid };
	loff_t skip = 0;
	u8 *buf;
	int err = 0;

	if (ctx->pos < 2) { /* from the start (rewinddir): the directory may have changed */
		dp->pos = 2;
		dp->cookie = 0;
		dp->eof = false;
	}
	if (!dir_emit_dots(file, ctx))
		return 0;
	if (ctx->pos != dp->pos) {
		dp->pos = 2;
		dp->cookie = 0;
		dp->eof = false;
		skip = ctx->pos - 2;
	}
	if (dp->eof)
		return 0;
	buf = kvmalloc(POHMELFS_READDIR_BYTES, GFP_KERNEL);
	if (!buf)
		return -ENOMEM;
	while (!dp->eof) {
		struct pohmelfs_msg m = { .opcode = POHMELFS_OP_READDIR };
		struct pohmelfs_readdir_rep *rep = (void *)buf;
		size_t off = sizeof(*rep);
		u32 i, count;

		q.cookie = cpu_to_le64(dp->cookie);
		q.max_bytes = cpu_to_le32(POHMELFS_READDIR_BYTES);
		pohmelfs_msg_add(&m, &q, sizeof(q));
		m.reply = buf;
		m.reply_cap = POHMELFS_READDIR_BYTES;
		err = pohmelfs_read_call(POHMELFS_SB(dir->i_sb), &m);
		if (err)
			break;
		if (m.reply_len < sizeof(*rep)) {
			err = -EIO;
			break;
		}
		count = le32_to_cpu(rep->count);
		if (!count && !rep->eof) { /* no progress: a broken server */
			err = -EIO;
			break;
		}
		for (i = 0; i < count; i++) {
			struct pohmelfs_dirent *de = (void *)(buf + off);
			u32 name_len;
			const char *name;

			if (off + sizeof(*de) > m.reply_len) {
				err = -EIO;
				goto out;
			}
			name_len = le32_to_cpu(de->name_len);
			if (!name_len || name_len > POHMELFS_NAME_MAX ||
			    off + sizeof(*de) + name_len > m.reply_len) {
				err = -EIO;
				goto out;
			}
			name = (const char *)(de + 1);
			if (skip) {
				skip--;
			} else if (!dir_emit(ctx, name, name_len, pohmelfs_oid_ino(&de->attr.oid),
					     fs_umode_to_dtype(le32_to_cpu(de->attr.mode)))) {
				goto out; /* the caller's buffer is full: dp still points here */
			} else {
				ctx->pos++;
			}
			dp->pos = ctx->pos - skip;
			dp->cookie = le64_to_cpu(de->next_cookie);
			off += sizeof(*de) + POHMELFS_PAD8(name_len);
		}
		dp->eof = rep->eof;
	}
out:
	kvfree(buf);
	return err;
}

/* Everything changed before it (delayed changes included) is on every writer's disk. */
static int pohmelfs_dir_fsync(struct file *file, loff_t start, loff_t end, int datasync)
{
	struct inode *dir = file_inode(file);
	struct pohmelfs_fsync_req q = { .oid = POHMELFS_I(dir)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_FSYNC };
	int err;

	q.datasync = cpu_to_le32(datasync);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	/* A delayed change in it that failed on the servers is reported here. */
	pohmelfs_mq_sync(POHMELFS_SB(dir->i_sb));
	err = file_check_and_advance_wb_err(file);
	if (err)
		return err;
	return pohmelfs_change_call(POHMELFS_SB(dir->i_sb), &m);
}

const struct file_operations pohmelfs_dir_fops = {
	.open = pohmelfs_dir_open,
	.release = pohmelfs_dir_release,
	.iterate_shared = pohmelfs_readdir,
	.llseek = generic_file_llseek,
	.read = generic_read_dir,
	.fsync = pohmelfs_dir_fsync,
};
