// SPDX-License-Identifier: GPL-2.0
/*
 * Extended attributes in the user. and trusted. namespaces, stored by the servers on the
 * exported files. POSIX ACLs and security labels are not carried (docs/kclient.md).
 */
#include <linux/slab.h>
#include <linux/xattr.h>

#include "pohmelfs.h"

/* GETXATTR and LISTXATTR: with size 0 the server answers the size needed (a __le32), else
 * the data, at most size bytes. */
static ssize_t sized_call(struct inode *inode, struct pohmelfs_msg *m, void *buf, size_t size)
{
	__le32 needed;
	int err;

	if (size) {
		m->reply = buf;
		m->reply_cap = size;
	} else {
		m->reply = &needed;
		m->reply_cap = sizeof(needed);
	}
	err = pohmelfs_read_call(POHMELFS_SB(inode->i_sb), m);
	if (err)
		return err;
	if (size)
		return m->reply_len;
	if (m->reply_len != sizeof(needed))
		return -EIO;
	return min_t(u32, le32_to_cpu(needed), POHMELFS_XATTR_SIZE_MAX);
}

static int pohmelfs_xattr_get(const struct xattr_handler *handler, struct dentry *dentry,
			      struct inode *inode, const char *suffix, void *buffer, size_t size)
{
	const char *name = xattr_full_name(handler, suffix);
	size_t name_len = strlen(name);
	struct pohmelfs_getxattr_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_GETXATTR };

	if (name_len > POHMELFS_XATTR_NAME_MAX)
		return -ERANGE;
	size = min_t(size_t, size, POHMELFS_XATTR_SIZE_MAX);
	q.size = cpu_to_le32(size);
	q.name_len = cpu_to_le32(name_len);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_msg_add(&m, name, name_len);
	return sized_call(inode, &m, buffer, size);
}

static int pohmelfs_xattr_set(const struct xattr_handler *handler, struct user_namespace *ns,
			      struct dentry *dentry, struct inode *inode, const char *suffix,
			      const void *value, size_t size, int flags)
{
	const char *name = xattr_full_name(handler, suffix);
	size_t name_len = strlen(name);
	struct pohmelfs_msg m = {};
	struct pohmelfs_setxattr_req sq = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_removexattr_req rq = { .oid = POHMELFS_I(inode)->oid };

	if (name_len > POHMELFS_XATTR_NAME_MAX)
		return -ERANGE;
	if (size > POHMELFS_XATTR_SIZE_MAX)
		return -E2BIG;
	if (value) {
		m.opcode = POHMELFS_OP_SETXATTR;
		sq.flags = cpu_to_le32(flags);
		sq.name_len = cpu_to_le32(name_len);
		sq.value_len = cpu_to_le32(size);
		pohmelfs_msg_add(&m, &sq, sizeof(sq));
		pohmelfs_msg_add(&m, name, name_len);
		pohmelfs_msg_add(&m, value, size);
	} else {
		m.opcode = POHMELFS_OP_REMOVEXATTR;
		rq.name_len = cpu_to_le32(name_len);
		pohmelfs_msg_add(&m, &rq, sizeof(rq));
		pohmelfs_msg_add(&m, name, name_len);
	}
	/* The server's change counter moves: that is this client's doing. */
	WRITE_ONCE(POHMELFS_I(inode)->local_changes, true);
	WRITE_ONCE(POHMELFS_I(inode)->attr_time, 0);
	return pohmelfs_change_call(POHMELFS_SB(inode->i_sb), &m);
}

/* trusted. names are listed to CAP_SYS_ADMIN only, as local filesystems do. The list is
 * NUL-separated names; a last name without its NUL is dropped. */
static ssize_t hide_trusted(char *list, size_t len)
{
	size_t in = 0, out = 0;

	if (capable(CAP_SYS_ADMIN))
		return len;
	while (in < len) {
		size_t n = strnlen(list + in, len - in);

		if (in + n == len)
			break;
		if (strncmp(list + in, XATTR_TRUSTED_PREFIX, XATTR_TRUSTED_PREFIX_LEN)) {
			memmove(list + out, list + in, n + 1);
			out += n + 1;
		}
		in += n + 1;
	}
	return out;
}

ssize_t pohmelfs_listxattr(struct dentry *dentry, char *list, size_t size)
{
	struct inode *inode = d_inode(dentry);
	struct pohmelfs_listxattr_req q = { .oid = POHMELFS_I(inode)->oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_LISTXATTR };
	ssize_t len;

	size = min_t(size_t, size, POHMELFS_XATTR_SIZE_MAX);
	q.size = cpu_to_le32(size);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	/* With size 0, an upper bound when trusted. names are hidden: all that callers need. */
	len = sized_call(inode, &m, list, size);
	return len > 0 && size ? hide_trusted(list, len) : len;
}

static const struct xattr_handler pohmelfs_user_xattr = {
	.prefix = XATTR_USER_PREFIX,
	.get = pohmelfs_xattr_get,
	.set = pohmelfs_xattr_set,
};

static const struct xattr_handler pohmelfs_trusted_xattr = {
	.prefix = XATTR_TRUSTED_PREFIX,
	.get = pohmelfs_xattr_get,
	.set = pohmelfs_xattr_set,
};

const struct xattr_handler *pohmelfs_xattr_handlers[] = {
	&pohmelfs_user_xattr,
	&pohmelfs_trusted_xattr,
	NULL,
};
