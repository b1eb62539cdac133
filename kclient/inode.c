// SPDX-License-Identifier: GPL-2.0
/*
 * Inodes and the namespace: lookup, attributes, create, mkdir, mknod, unlink, rmdir, rename,
 * link, symlink, readlink. Attributes and names are cached for attr_timeout_ms (like the FUSE
 * client without leases); a file's cached data is dropped when the server's change counter
 * (attr.version) moved without this client changing the file (close-to-open consistency).
 */
#include <linux/namei.h>
#include <linux/pagemap.h>
#include <linux/random.h>
#include <linux/slab.h>

#include "pohmelfs.h"

u64 pohmelfs_oid_ino(const struct pohmelfs_oid *oid)
{
	u64 a, b, ino;

	memcpy(&a, oid->bytes, 8);
	memcpy(&b, oid->bytes + 8, 8);
	ino = (a ^ b) & ~(1ull << 63);
	return ino ? ino : POHMELFS_ROOT_INO + 1;
}

static bool attr_fresh(struct inode *inode)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(inode->i_sb);
	unsigned long t = READ_ONCE(POHMELFS_I(inode)->attr_time);

	return t && time_before(jiffies, t + msecs_to_jiffies(sbi->attr_timeout_ms));
}

static void invalidate_attr(struct inode *inode)
{
	WRITE_ONCE(POHMELFS_I(inode)->attr_time, 0);
}

void pohmelfs_local_size(struct inode *inode, loff_t size)
{
	spin_lock(&inode->i_lock);
	if (size > i_size_read(inode))
		i_size_write(inode, size);
	POHMELFS_I(inode)->size_changed = atomic64_inc_return(&POHMELFS_SB(inode->i_sb)->size_seq);
	spin_unlock(&inode->i_lock);
}

void pohmelfs_apply_attr(struct inode *inode, const struct pohmelfs_attr *attr, u64 since)
{
	struct pohmelfs_inode *pi = POHMELFS_I(inode);
	struct address_space *mapping = inode->i_mapping;
	u64 version = le64_to_cpu(attr->version);
	loff_t size = min_t(u64, le64_to_cpu(attr->size), MAX_LFS_FILESIZE);
	bool drop_cache = false;

	spin_lock(&inode->i_lock);
	inode->i_mode = (inode->i_mode & S_IFMT) | (le32_to_cpu(attr->mode) & ~S_IFMT);
	inode->i_uid = make_kuid(&init_user_ns, le32_to_cpu(attr->uid));
	inode->i_gid = make_kgid(&init_user_ns, le32_to_cpu(attr->gid));
	set_nlink(inode, le32_to_cpu(attr->nlink));
	inode->i_atime.tv_sec = le64_to_cpu(attr->atime_sec);
	inode->i_atime.tv_nsec = le32_to_cpu(attr->atime_nsec);
	inode->i_mtime.tv_sec = le64_to_cpu(attr->mtime_sec);
	inode->i_mtime.tv_nsec = le32_to_cpu(attr->mtime_nsec);
	inode->i_ctime.tv_sec = le64_to_cpu(attr->ctime_sec);
	inode->i_ctime.tv_nsec = le32_to_cpu(attr->ctime_nsec);
	inode->i_blocks = le64_to_cpu(attr->blocks);
	/* Data written here but not yet on the server counts, and so does a size this client set
	 * after the request was sent: keep the larger local size. */
	if (!S_ISREG(inode->i_mode) ||
	    (!(mapping_tagged(mapping, PAGECACHE_TAG_DIRTY) ||
	       mapping_tagged(mapping, PAGECACHE_TAG_WRITEBACK)) &&
	     pi->size_changed <= since) ||
	    size > i_size_read(inode))
		i_size_write(inode, size);
	if (S_ISREG(inode->i_mode) && pi->attr_time && version != pi->version && !pi->local_changes)
		drop_cache = true;
	pi->version = version;
	pi->local_changes = false;
	pi->attr_time = jiffies;
	spin_unlock(&inode->i_lock);
	if (drop_cache)
		invalidate_mapping_pages(mapping, 0, -1);
}

/* Attributes from the reply to this client's own change: the version moved because of it. */
void pohmelfs_apply_own_attr(struct inode *inode, const struct pohmelfs_attr *attr)
{
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	pohmelfs_apply_attr(inode, attr, POHMELFS_SEQ_NOW);
}

static int iget_test(struct inode *inode, void *data);

struct inode *pohmelfs_ilookup(struct super_block *sb, const struct pohmelfs_oid *oid)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(sb);
	u64 ino =
		!memcmp(oid, &sbi->root, sizeof(*oid)) ? POHMELFS_ROOT_INO : pohmelfs_oid_ino(oid);

	return ilookup5(sb, ino, iget_test, (void *)oid);
}

static int iget_test(struct inode *inode, void *data)
{
	return !memcmp(&POHMELFS_I(inode)->oid, data, sizeof(struct pohmelfs_oid));
}

static int iget_set(struct inode *inode, void *data)
{
	POHMELFS_I(inode)->oid = *(struct pohmelfs_oid *)data;
	return 0;
}

struct inode *pohmelfs_iget(struct super_block *sb, const struct pohmelfs_attr *attr, u64 since)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(sb);
	struct pohmelfs_oid oid = attr->oid;
	bool is_root = !memcmp(&oid, &sbi->root, sizeof(oid));
	u64 ino = is_root ? POHMELFS_ROOT_INO : pohmelfs_oid_ino(&oid);
	umode_t mode = le32_to_cpu(attr->mode);
	struct inode *inode;

	inode = iget5_locked(sb, ino, iget_test, iget_set, &oid);
	if (!inode)
		return ERR_PTR(-ENOMEM);
	if (!(inode->i_state & I_NEW)) {
		if ((inode->i_mode ^ mode) & S_IFMT) {
			iput(inode);
			return ERR_PTR(-ESTALE);
		}
		pohmelfs_apply_attr(inode, attr, since);
		return inode;
	}
	inode->i_ino = ino;
	inode->i_mode = mode;
	switch (mode & S_IFMT) {
	case S_IFREG:
		inode->i_op = &pohmelfs_file_iops;
		inode->i_fop = &pohmelfs_file_fops;
		inode->i_mapping->a_ops = &pohmelfs_aops;
		break;
	case S_IFDIR:
		inode->i_op = &pohmelfs_dir_iops;
		inode->i_fop = &pohmelfs_dir_fops;
		break;
	case S_IFLNK:
		inode->i_op = &pohmelfs_symlink_iops;
		inode_nohighmem(inode);
		break;
	default:
		inode->i_op = &pohmelfs_file_iops;
		init_special_inode(inode, mode, new_decode_dev(le64_to_cpu(attr->rdev)));
		break;
	}
	pohmelfs_apply_attr(inode, attr, POHMELFS_SEQ_NOW);
	unlock_new_inode(inode);
	return inode;
}

static int getattr_call(struct inode *inode, struct pohmelfs_attr *attr)
{
	struct pohmelfs_obj_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_GETATTR };
	int err;

	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.reply = attr;
	m.reply_cap = sizeof(*attr);
	err = pohmelfs_read_call(POHMELFS_SB(inode->i_sb), &m);
	if (!err && m.reply_len != sizeof(*attr))
		err = -EIO;
	return err;
}

int pohmelfs_refresh(struct inode *inode, bool force)
{
	u64 since = pohmelfs_attr_seq(inode->i_sb);
	struct pohmelfs_attr attr;
	int err;

	if (!force && attr_fresh(inode))
		return 0;
	err = getattr_call(inode, &attr);
	if (err == -ENOENT)
		err = -ESTALE;
	if (!err)
		pohmelfs_apply_attr(inode, &attr, since);
	return err;
}

/* LOOKUP of name in dir: the attributes of the entry. */
static int lookup_call(struct inode *dir, const struct qstr *name, struct pohmelfs_attr *attr)
{
	struct pohmelfs_name_req q = { .parent = POHMELFS_I(dir)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_LOOKUP };
	int err;

	if (name->len > POHMELFS_NAME_MAX)
		return -ENAMETOOLONG;
	q.name_len = cpu_to_le32(name->len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, name->name, name->len);
	m.reply = attr;
	m.reply_cap = sizeof(*attr);
	err = pohmelfs_read_call(POHMELFS_SB(dir->i_sb), &m);
	if (!err && m.reply_len != sizeof(*attr))
		err = -EIO;
	return err;
}

static void dentry_fresh(struct dentry *dentry)
{
	dentry->d_time = jiffies;
}

static struct dentry *pohmelfs_lookup(struct inode *dir, struct dentry *dentry, unsigned int flags)
{
	struct pohmelfs_attr attr;
	struct inode *inode = NULL;
	enum pohmelfs_known known;
	struct pohmelfs_oid oid;
	umode_t type = 0;
	u64 since;
	int err;

	/* Under the directory's lease the names are known here. */
	known = pohmelfs_lease_lookup(dir, &dentry->d_name, &oid, &type);
	if (known == POHMELFS_ABSENT) {
		dentry_fresh(dentry);
		d_add(dentry, NULL);
		return NULL;
	}
	if (known == POHMELFS_PRESENT) {
		inode = pohmelfs_ilookup(dir->i_sb, &oid);
		if (inode && ((inode->i_mode ^ type) & S_IFMT)) {
			iput(inode);
			inode = NULL;
		}
		if (inode) {
			dentry_fresh(dentry);
			return d_splice_alias(inode, dentry);
		}
		/* Not cached any more: the servers have it (the LOOKUP drains the queue). */
	}
	/* open(O_CREAT | O_EXCL): the create asks the server to fail on an existing name, so the
	 * lookup is not worth a round trip. The negative dentry is born stale. */
	if ((flags & (LOOKUP_CREATE | LOOKUP_EXCL)) == (LOOKUP_CREATE | LOOKUP_EXCL) &&
	    !(flags & LOOKUP_RENAME_TARGET)) {
		dentry->d_time =
			jiffies - msecs_to_jiffies(POHMELFS_SB(dir->i_sb)->attr_timeout_ms) - 1;
		d_add(dentry, NULL);
		return NULL;
	}
	since = pohmelfs_attr_seq(dir->i_sb);
	err = lookup_call(dir, &dentry->d_name, &attr);
	if (err && err != -ENOENT)
		return ERR_PTR(err);
	if (!err) {
		inode = pohmelfs_iget(dir->i_sb, &attr, since);
		if (IS_ERR(inode))
			return ERR_CAST(inode);
	}
	dentry_fresh(dentry);
	return d_splice_alias(inode, dentry);
}

static int pohmelfs_d_revalidate(struct dentry *dentry, unsigned int flags)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dentry->d_sb);
	struct pohmelfs_attr attr;
	enum pohmelfs_known known;
	struct dentry *parent;
	struct inode *inode;
	umode_t type = 0;
	u64 since;
	int err, ret;

	if (time_before(jiffies, dentry->d_time + msecs_to_jiffies(sbi->attr_timeout_ms)))
		return 1;
	if (flags & LOOKUP_RCU)
		return -ECHILD;
	parent = dget_parent(dentry);
	inode = d_inode(dentry);
	known = pohmelfs_lease_lookup(d_inode(parent), &dentry->d_name, &attr.oid, &type);
	if (known != POHMELFS_UNKNOWN) {
		dput(parent);
		if (known == POHMELFS_ABSENT)
			ret = !inode;
		else
			ret = inode &&
			      !memcmp(&attr.oid, &POHMELFS_I(inode)->oid, sizeof(attr.oid)) &&
			      !((inode->i_mode ^ type) & S_IFMT);
		if (ret)
			dentry_fresh(dentry);
		return ret;
	}
	since = pohmelfs_attr_seq(dentry->d_sb);
	err = lookup_call(d_inode(parent), &dentry->d_name, &attr);
	dput(parent);
	if (err == -ENOENT)
		ret = inode ? 0 : 1;
	else if (
		err) /* no server: an error, not a reason to drop the name (and what is under it) */
		ret = err;
	else if (!inode || memcmp(&attr.oid, &POHMELFS_I(inode)->oid, sizeof(attr.oid)) ||
		 ((inode->i_mode ^ le32_to_cpu(attr.mode)) & S_IFMT))
		ret = 0;
	else {
		pohmelfs_apply_attr(inode, &attr, since);
		ret = 1;
	}
	if (ret == 1)
		dentry_fresh(dentry);
	return ret;
}

const struct dentry_operations pohmelfs_dentry_ops = {
	.d_revalidate = pohmelfs_d_revalidate,
};

/* Owner of a new object: the caller, with the directory's group under a setgid directory. */
static void new_owner(struct inode *dir, umode_t *mode, u32 *uid, u32 *gid)
{
	*uid = from_kuid(&init_user_ns, current_fsuid());
	if (dir->i_mode & S_ISGID) {
		*gid = from_kgid(&init_user_ns, dir->i_gid);
		if (S_ISDIR(*mode))
			*mode |= S_ISGID;
	} else {
		*gid = from_kgid(&init_user_ns, current_fsgid());
	}
}

/* The reply to a create names the object the client chose, of the type it asked for: a
 * hostile server must not make a second alias of an existing directory. */
static bool is_new_object(const struct pohmelfs_attr *attr, size_t len,
			  const struct pohmelfs_oid *oid, umode_t mode)
{
	return len == sizeof(*attr) && !memcmp(&attr->oid, oid, sizeof(*oid)) &&
	       !((le32_to_cpu(attr->mode) ^ mode) & S_IFMT);
}

/* Replies with an attr: makes the inode and binds it to dentry. */
static int instantiate(struct inode *dir, struct dentry *dentry, const struct pohmelfs_attr *attr)
{
	struct inode *inode = pohmelfs_iget(dir->i_sb, attr, POHMELFS_SEQ_NOW);

	if (IS_ERR(inode))
		return PTR_ERR(inode);
	d_instantiate(dentry, inode);
	dentry_fresh(dentry);
	invalidate_attr(dir);
	pohmelfs_lease_name_added(dir, &dentry->d_name, &attr->oid, inode->i_mode);
	return 0;
}

/* Sends a create (MKDIR, MKNOD, SYMLINK) to every writer and binds the new object, which the
 * reply must name, to dentry. */
static int send_create(struct inode *dir, struct dentry *dentry, struct pohmelfs_msg *m,
		       const struct pohmelfs_oid *new_oid, umode_t mode)
{
	struct pohmelfs_attr attr;
	int err;

	m->reply = &attr;
	m->reply_cap = sizeof(attr);
	err = pohmelfs_change_call(POHMELFS_SB(dir->i_sb), m);
	if (!err && !is_new_object(&attr, m->reply_len, new_oid, mode))
		err = -EIO;
	if (err)
		return err;
	return instantiate(dir, dentry, &attr);
}

/*
 * Under the directory's lease: the object is made here with attributes the servers will give it
 * too, and its create is queued (mq.c). -EAGAIN when the lease does not allow it.
 */
static int delayed_create(struct inode *dir, struct dentry *dentry,
			  const struct pohmelfs_create_req *q, u16 opcode)
{
	umode_t mode = le32_to_cpu(q->mode);
	struct pohmelfs_mq_cmd *cmd;
	struct pohmelfs_attr attr;
	struct timespec64 now;
	struct inode *inode;
	int err;

	if (!READ_ONCE(POHMELFS_I(dir)->lease))
		return -EAGAIN;
	memset(&attr, 0, sizeof(attr));
	ktime_get_real_ts64(&now);
	attr.oid = q->new_oid;
	attr.mode = q->mode;
	attr.uid = q->uid;
	attr.gid = q->gid;
	attr.rdev = q->rdev;
	attr.nlink = cpu_to_le32(S_ISDIR(mode) ? 2 : 1);
	attr.atime_sec = attr.mtime_sec = attr.ctime_sec = cpu_to_le64(now.tv_sec);
	attr.atime_nsec = attr.mtime_nsec = attr.ctime_nsec = cpu_to_le32(now.tv_nsec);
	/* The inode first: once the create is queued, it must not fail. */
	inode = pohmelfs_iget(dir->i_sb, &attr, POHMELFS_SEQ_NOW);
	if (IS_ERR(inode))
		return -EAGAIN;
	/* The servers' first attributes carry their change counter: not another client's. */
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	POHMELFS_I(inode)->parent = q->parent;
	set_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(inode)->flags);
	cmd = pohmelfs_mq_cmd_new(opcode, q, sizeof(*q), dentry->d_name.name, dentry->d_name.len,
				  &q->parent, &q->new_oid, GFP_KERNEL);
	err = cmd ? pohmelfs_lease_add_delayed(dir, &dentry->d_name, &q->new_oid, mode, cmd,
					       le32_to_cpu(q->flags) & POHMELFS_CREATE_LEASE)
		  : -EAGAIN;
	if (err) { /* never existed: the inode goes at once */
		pohmelfs_mq_cmd_free(cmd);
		clear_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(inode)->flags);
		clear_nlink(inode);
		iput(inode);
		return err;
	}
	if (S_ISDIR(mode))
		pohmelfs_lease_bind(inode);
	d_instantiate(dentry, inode);
	dentry_fresh(dentry);
	invalidate_attr(dir);
	return 0;
}

static int create_call(struct inode *dir, struct dentry *dentry, u16 opcode, umode_t mode,
		       dev_t rdev, u32 flags)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	struct pohmelfs_create_req q = { .parent = POHMELFS_I(dir)->oid };
	struct pohmelfs_msg m = { .opcode = opcode };
	struct pohmelfs_dlease *lease = NULL;
	u32 uid, gid;
	int err;

	if (dentry->d_name.len > POHMELFS_NAME_MAX)
		return -ENAMETOOLONG;
	new_owner(dir, &mode, &uid, &gid);
	get_random_bytes(&q.new_oid, sizeof(q.new_oid));
	/* A new directory comes with its WRITE lease: its entries are all known here. */
	if (opcode == POHMELFS_OP_MKDIR && READ_ONCE(sbi->leases) && pohmelfs_writers_lease(sbi))
		flags |= POHMELFS_CREATE_LEASE;
	q.mode = cpu_to_le32(mode);
	q.uid = cpu_to_le32(uid);
	q.gid = cpu_to_le32(gid);
	q.name_len = cpu_to_le32(dentry->d_name.len);
	q.rdev = cpu_to_le64(new_encode_dev(rdev));
	q.flags = cpu_to_le32(flags);
	err = delayed_create(dir, dentry, &q, opcode);
	if (err != -EAGAIN)
		return err;
	if (flags & POHMELFS_CREATE_LEASE) {
		lease = pohmelfs_lease_expect(sbi, &q.new_oid);
		if (!lease)
			q.flags = cpu_to_le32(flags & ~POHMELFS_CREATE_LEASE);
	}
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, dentry->d_name.name, dentry->d_name.len);
	err = send_create(dir, dentry, &m, &q.new_oid, mode);
	if (lease)
		pohmelfs_lease_created(sbi, lease, err ? NULL : d_inode(dentry), err);
	return err;
}

/* Always followed by ->open of the new file, so the server opens it too (CREATE_OPEN) and
 * that open skips its round trip. */
static int pohmelfs_create(struct user_namespace *ns, struct inode *dir, struct dentry *dentry,
			   umode_t mode, bool excl)
{
	int err = create_call(dir, dentry, POHMELFS_OP_MKNOD, (mode & ~S_IFMT) | S_IFREG, 0,
			      POHMELFS_CREATE_OPEN | (excl ? POHMELFS_CREATE_EXCL : 0));

	if (!err)
		set_bit(POHMELFS_I_CREATED_OPEN, &POHMELFS_I(d_inode(dentry))->flags);
	return err;
}

static int pohmelfs_mknod(struct user_namespace *ns, struct inode *dir, struct dentry *dentry,
			  umode_t mode, dev_t rdev)
{
	return create_call(dir, dentry, POHMELFS_OP_MKNOD, mode, rdev, POHMELFS_CREATE_EXCL);
}

static int pohmelfs_mkdir(struct user_namespace *ns, struct inode *dir, struct dentry *dentry,
			  umode_t mode)
{
	return create_call(dir, dentry, POHMELFS_OP_MKDIR, (mode & ~S_IFMT) | S_IFDIR, 0, 0);
}

static int pohmelfs_symlink(struct user_namespace *ns, struct inode *dir, struct dentry *dentry,
			    const char *target)
{
	struct pohmelfs_symlink_req q = { .parent = POHMELFS_I(dir)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_SYMLINK };
	size_t target_len = strlen(target);
	umode_t mode = S_IFLNK | 0777;
	u32 uid, gid;

	if (dentry->d_name.len > POHMELFS_NAME_MAX)
		return -ENAMETOOLONG;
	if (target_len > POHMELFS_PATH_MAX)
		return -ENAMETOOLONG;
	new_owner(dir, &mode, &uid, &gid);
	get_random_bytes(&q.new_oid, sizeof(q.new_oid));
	q.uid = cpu_to_le32(uid);
	q.gid = cpu_to_le32(gid);
	q.name_len = cpu_to_le32(dentry->d_name.len);
	q.target_len = cpu_to_le32(target_len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, dentry->d_name.name, dentry->d_name.len);
	pohmelfs_msg_add(&m, target, target_len);
	return send_create(dir, dentry, &m, &q.new_oid, mode);
}

static int name_call(struct inode *dir, struct dentry *dentry, u16 opcode)
{
	struct pohmelfs_name_req q = { .parent = POHMELFS_I(dir)->oid };
	struct pohmelfs_msg m = { .opcode = opcode };

	q.name_len = cpu_to_le32(dentry->d_name.len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, dentry->d_name.name, dentry->d_name.len);
	return pohmelfs_change_call(POHMELFS_SB(dir->i_sb), &m);
}

/* Under the directory's lease: removed here, the UNLINK or RMDIR queued (mq.c). */
static int delayed_remove(struct inode *dir, struct dentry *dentry, u16 opcode)
{
	struct pohmelfs_name_req q = { .parent = POHMELFS_I(dir)->oid };
	struct inode *inode = d_inode(dentry);
	struct pohmelfs_mq_cmd *cmd;
	int err;

	if (!READ_ONCE(POHMELFS_I(dir)->lease))
		return -EAGAIN;
	q.name_len = cpu_to_le32(dentry->d_name.len);
	cmd = pohmelfs_mq_cmd_new(opcode, &q, sizeof(q), dentry->d_name.name, dentry->d_name.len,
				  &q.parent, &POHMELFS_I(inode)->oid, GFP_KERNEL);
	if (!cmd)
		return -EAGAIN;
	err = pohmelfs_lease_remove_delayed(dir, &dentry->d_name, inode, cmd);
	if (err)
		pohmelfs_mq_cmd_free(cmd);
	return err;
}

static int remove_call(struct inode *dir, struct dentry *dentry, u16 opcode)
{
	int err = delayed_remove(dir, dentry, opcode);

	if (err != -EAGAIN)
		return err;
	err = name_call(dir, dentry, opcode);
	if (!err)
		pohmelfs_lease_name_removed(dir, &dentry->d_name);
	return err;
}

static int pohmelfs_unlink(struct inode *dir, struct dentry *dentry)
{
	struct inode *inode = d_inode(dentry);
	int err = remove_call(dir, dentry, POHMELFS_OP_UNLINK);

	if (err)
		return err;
	if (inode->i_nlink)
		drop_nlink(inode);
	invalidate_attr(inode);
	invalidate_attr(dir);
	return 0;
}

static int pohmelfs_rmdir(struct inode *dir, struct dentry *dentry)
{
	int err = remove_call(dir, dentry, POHMELFS_OP_RMDIR);

	if (err)
		return err;
	clear_nlink(d_inode(dentry));
	invalidate_attr(dir);
	return 0;
}

static int pohmelfs_rename(struct user_namespace *ns, struct inode *old_dir,
			   struct dentry *old_dentry, struct inode *new_dir,
			   struct dentry *new_dentry, unsigned int flags)
{
	struct pohmelfs_rename_req q = { .old_parent = POHMELFS_I(old_dir)->oid,
					 .new_parent = POHMELFS_I(new_dir)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_RENAME };
	struct inode *target = d_inode(new_dentry);
	u32 wire_flags = 0;
	int err;

	if (flags & ~(RENAME_NOREPLACE | RENAME_EXCHANGE))
		return -EINVAL;
	if (flags & RENAME_NOREPLACE)
		wire_flags |= POHMELFS_RENAME_NOREPLACE;
	if (flags & RENAME_EXCHANGE)
		wire_flags |= POHMELFS_RENAME_EXCHANGE;
	if (new_dentry->d_name.len > POHMELFS_NAME_MAX)
		return -ENAMETOOLONG;
	q.old_len = cpu_to_le32(old_dentry->d_name.len);
	q.new_len = cpu_to_le32(new_dentry->d_name.len);
	q.flags = cpu_to_le32(wire_flags);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, old_dentry->d_name.name, old_dentry->d_name.len);
	pohmelfs_msg_add(&m, new_dentry->d_name.name, new_dentry->d_name.len);
	err = pohmelfs_change_call(POHMELFS_SB(old_dir->i_sb), &m);
	if (err)
		return err;
	/* Reachable without a lookup in its first directory now: its changes are sent at once. */
	clear_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(d_inode(old_dentry))->flags);
	if (target)
		clear_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(target)->flags);
	if (flags & RENAME_EXCHANGE) {
		pohmelfs_lease_forget_names(old_dir);
		pohmelfs_lease_forget_names(new_dir);
	} else {
		pohmelfs_lease_name_removed(old_dir, &old_dentry->d_name);
		pohmelfs_lease_name_added(new_dir, &new_dentry->d_name,
					  &POHMELFS_I(d_inode(old_dentry))->oid,
					  d_inode(old_dentry)->i_mode);
	}
	if (target && !(flags & RENAME_EXCHANGE)) {
		if (S_ISDIR(target->i_mode))
			clear_nlink(target);
		else if (target->i_nlink)
			drop_nlink(target);
		invalidate_attr(target);
	}
	invalidate_attr(d_inode(old_dentry));
	invalidate_attr(old_dir);
	invalidate_attr(new_dir);
	return 0;
}

static int pohmelfs_link(struct dentry *old_dentry, struct inode *dir, struct dentry *dentry)
{
	struct inode *inode = d_inode(old_dentry);
	struct pohmelfs_link_req q = { .oid = POHMELFS_I(inode)->oid,
				       .new_parent = POHMELFS_I(dir)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_LINK };
	struct pohmelfs_attr attr;
	int err;

	if (dentry->d_name.len > POHMELFS_NAME_MAX)
		return -ENAMETOOLONG;
	q.name_len = cpu_to_le32(dentry->d_name.len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, dentry->d_name.name, dentry->d_name.len);
	m.reply = &attr;
	m.reply_cap = sizeof(attr);
	err = pohmelfs_change_call(POHMELFS_SB(dir->i_sb), &m);
	if (!err && !is_new_object(&attr, m.reply_len, &q.oid, inode->i_mode))
		err = -EIO; /* not a new object, but the reply must name the linked one */
	if (err)
		return err;
	pohmelfs_apply_own_attr(inode, &attr);
	clear_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(inode)->flags); /* reachable elsewhere */
	ihold(inode);
	d_instantiate(dentry, inode);
	dentry_fresh(dentry);
	invalidate_attr(dir);
	pohmelfs_lease_name_added(dir, &dentry->d_name, &q.oid, inode->i_mode);
	return 0;
}

/* The request for ia; times the VFS filled in ("now") are sent as given when explicit_times,
 * so that a delayed SETATTR sets what this client shows. Returns the valid bits. */
static u32 setattr_req(struct pohmelfs_setattr_req *q, const struct iattr *ia, bool explicit_times)
{
	u32 valid = 0;

	if (ia->ia_valid & ATTR_MODE) {
		valid |= POHMELFS_SETATTR_MODE;
		q->mode = cpu_to_le32(ia->ia_mode & ~S_IFMT);
	}
	if (ia->ia_valid & ATTR_UID) {
		valid |= POHMELFS_SETATTR_UID;
		q->uid = cpu_to_le32(from_kuid(&init_user_ns, ia->ia_uid));
	}
	if (ia->ia_valid & ATTR_GID) {
		valid |= POHMELFS_SETATTR_GID;
		q->gid = cpu_to_le32(from_kgid(&init_user_ns, ia->ia_gid));
	}
	if (ia->ia_valid & ATTR_SIZE) {
		valid |= POHMELFS_SETATTR_SIZE;
		q->size = cpu_to_le64(ia->ia_size);
	}
	if (ia->ia_valid & (explicit_times ? ATTR_ATIME : ATTR_ATIME_SET)) {
		valid |= POHMELFS_SETATTR_ATIME;
		q->atime_sec = cpu_to_le64(ia->ia_atime.tv_sec);
		q->atime_nsec = cpu_to_le32(ia->ia_atime.tv_nsec);
	} else if (ia->ia_valid & ATTR_ATIME) {
		valid |= POHMELFS_SETATTR_ATIME_NOW;
	}
	if (ia->ia_valid & (explicit_times ? ATTR_MTIME : ATTR_MTIME_SET)) {
		valid |= POHMELFS_SETATTR_MTIME;
		q->mtime_sec = cpu_to_le64(ia->ia_mtime.tv_sec);
		q->mtime_nsec = cpu_to_le32(ia->ia_mtime.tv_nsec);
	} else if (ia->ia_valid & ATTR_MTIME) {
		valid |= POHMELFS_SETATTR_MTIME_NOW;
	}
	q->valid = cpu_to_le32(valid);
	return valid;
}

/* Of an object created here under a lease still held: applied here, the SETATTR queued. */
static int delayed_setattr(struct inode *inode, struct iattr *ia)
{
	struct pohmelfs_setattr_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_mq_cmd *cmd;
	struct iattr before;
	int err;

	if ((ia->ia_valid & ATTR_SIZE) ||
	    !test_bit(POHMELFS_I_NEW_UNDER_LEASE, &POHMELFS_I(inode)->flags))
		return -EAGAIN;
	if (!setattr_req(&q, ia, true))
		return 0;
	cmd = pohmelfs_mq_cmd_new(POHMELFS_OP_SETATTR, &q, sizeof(q), NULL, 0, NULL, &q.oid,
				  GFP_KERNEL);
	if (!cmd)
		return -EAGAIN;
	/* Applied here first: the mode sent is the one setattr_copy settles on (it may drop
	 * the set-group-ID bit); put back if the change cannot be queued. */
	before.ia_valid = ATTR_MODE | ATTR_UID | ATTR_GID | ATTR_ATIME | ATTR_MTIME | ATTR_CTIME;
	before.ia_mode = inode->i_mode;
	before.ia_uid = inode->i_uid;
	before.ia_gid = inode->i_gid;
	before.ia_atime = inode->i_atime;
	before.ia_mtime = inode->i_mtime;
	before.ia_ctime = inode->i_ctime;
	setattr_copy(&init_user_ns, inode, ia);
	if (ia->ia_valid & ATTR_MODE) {
		struct pohmelfs_setattr_req *cq = pohmelfs_mq_cmd_tail(cmd, 0);

		cq->mode = cpu_to_le32(inode->i_mode & ~S_IFMT);
	}
	err = pohmelfs_lease_delay_change(inode, cmd);
	if (err) {
		pohmelfs_mq_cmd_free(cmd);
		inode->i_mode = before.ia_mode;
		inode->i_uid = before.ia_uid;
		inode->i_gid = before.ia_gid;
		inode->i_atime = before.ia_atime;
		inode->i_mtime = before.ia_mtime;
		inode->i_ctime = before.ia_ctime;
		return err;
	}
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	return 0;
}

static int setattr_call(struct inode *inode, struct iattr *ia)
{
	struct pohmelfs_setattr_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_SETATTR };
	struct pohmelfs_attr attr;
	int err;

	if (!setattr_req(&q, ia, false))
		return 0;
	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.reply = &attr;
	m.reply_cap = sizeof(attr);
	err = pohmelfs_change_call(POHMELFS_SB(inode->i_sb), &m);
	if (!err && m.reply_len != sizeof(attr))
		err = -EIO;
	if (!err) /* the reply's size is the new size: local pages beyond it go below */
		pohmelfs_apply_own_attr(inode, &attr);
	return err;
}

static int pohmelfs_setattr(struct user_namespace *ns, struct dentry *dentry, struct iattr *ia)
{
	struct inode *inode = d_inode(dentry);
	int err;

	err = setattr_prepare(&init_user_ns, dentry, ia);
	if (err)
		return err;
	err = delayed_setattr(inode, ia);
	if (err != -EAGAIN)
		return err;
	if ((ia->ia_valid & ATTR_SIZE) && S_ISREG(inode->i_mode)) {
		/* Written data must not land after the new size is set on the server. */
		err = filemap_write_and_wait(inode->i_mapping);
		if (err)
			return err;
	}
	err = setattr_call(inode, ia);
	if (err)
		return err;
	if ((ia->ia_valid & ATTR_SIZE) && S_ISREG(inode->i_mode))
		truncate_setsize(inode, ia->ia_size);
	return 0;
}

static int pohmelfs_getattr(struct user_namespace *ns, const struct path *path, struct kstat *stat,
			    u32 request_mask, unsigned int flags)
{
	struct inode *inode = d_inode(path->dentry);
	int err = 0;

	if (!(flags & AT_STATX_DONT_SYNC))
		err = pohmelfs_refresh(inode, flags & AT_STATX_FORCE_SYNC);
	if (err)
		return err;
	generic_fillattr(&init_user_ns, inode, stat);
	stat->blksize = POHMELFS_IO_MAX;
	return 0;
}

static const char *pohmelfs_get_link(struct dentry *dentry, struct inode *inode,
				     struct delayed_call *done)
{
	struct pohmelfs_obj_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_READLINK };
	char *target;
	int err;

	if (!dentry)
		return ERR_PTR(-ECHILD);
	target = kmalloc(POHMELFS_PATH_MAX + 1, GFP_KERNEL);
	if (!target)
		return ERR_PTR(-ENOMEM);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.reply = target;
	m.reply_cap = POHMELFS_PATH_MAX;
	err = pohmelfs_read_call(POHMELFS_SB(inode->i_sb), &m);
	if (err) {
		kfree(target);
		return ERR_PTR(err);
	}
	target[m.reply_len] = 0;
	set_delayed_call(done, kfree_link, target);
	return target;
}

const struct inode_operations pohmelfs_dir_iops = {
	.lookup = pohmelfs_lookup,
	.create = pohmelfs_create,
	.mknod = pohmelfs_mknod,
	.mkdir = pohmelfs_mkdir,
	.symlink = pohmelfs_symlink,
	.unlink = pohmelfs_unlink,
	.rmdir = pohmelfs_rmdir,
	.rename = pohmelfs_rename,
	.link = pohmelfs_link,
	.setattr = pohmelfs_setattr,
	.getattr = pohmelfs_getattr,
	.listxattr = pohmelfs_listxattr,
};

/* Regular files and special files (fifos, sockets, devices). */
const struct inode_operations pohmelfs_file_iops = {
	.setattr = pohmelfs_setattr,
	.getattr = pohmelfs_getattr,
	.listxattr = pohmelfs_listxattr,
};

const struct inode_operations pohmelfs_symlink_iops = {
	.get_link = pohmelfs_get_link,
	.setattr = pohmelfs_setattr,
	.getattr = pohmelfs_getattr,
	.listxattr = pohmelfs_listxattr,
};
