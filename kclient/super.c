// SPDX-License-Identifier: GPL-2.0
/*
 * The module, the filesystem type and its mount options, the superblock.
 *
 *   mount -t pohmelfs -o server=tcp://10.0.0.1:7000,server=tcp://10.0.0.2:7000?perm=w none /mnt
 */
#include <linux/backing-dev.h>
#include <linux/fs_context.h>
#include <linux/fs_parser.h>
#include <linux/module.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/statfs.h>
#include <linux/utsname.h>

#include "pohmelfs.h"

static struct kmem_cache *pohmelfs_inode_cachep;

static struct inode *pohmelfs_alloc_inode(struct super_block *sb)
{
	struct pohmelfs_inode *pi = alloc_inode_sb(sb, pohmelfs_inode_cachep, GFP_KERNEL);

	if (!pi)
		return NULL;
	memset(&pi->oid, 0, sizeof(pi->oid));
	pi->attr_time = 0;
	pi->version = 0;
	pi->local_changes = false;
	pi->flags = 0;
	pi->lease = NULL;
	return &pi->vfs_inode;
}

static void pohmelfs_free_inode(struct inode *inode)
{
	kmem_cache_free(pohmelfs_inode_cachep, POHMELFS_I(inode));
}

static void pohmelfs_inode_once(void *p)
{
	struct pohmelfs_inode *pi = p;

	inode_init_once(&pi->vfs_inode);
}

static void pohmelfs_evict_inode(struct inode *inode)
{
	if (S_ISREG(inode->i_mode))
		pohmelfs_release_created(inode);
	if (S_ISDIR(inode->i_mode))
		pohmelfs_lease_evict(inode);
	truncate_inode_pages_final(&inode->i_data);
	clear_inode(inode);
}

static int pohmelfs_statfs(struct dentry *dentry, struct kstatfs *buf)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dentry->d_sb);
	struct pohmelfs_obj_req q = { .oid = sbi->root };
	struct pohmelfs_statfs_rep rep;
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_STATFS };
	int err;

	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.reply = &rep;
	m.reply_cap = sizeof(rep);
	err = pohmelfs_read_call(sbi, &m);
	if (err)
		return err;
	if (m.reply_len != sizeof(rep))
		return -EIO;
	buf->f_type = POHMELFS_FS_MAGIC;
	buf->f_bsize = le32_to_cpu(rep.bsize);
	buf->f_frsize = buf->f_bsize;
	buf->f_blocks = le64_to_cpu(rep.blocks);
	buf->f_bfree = le64_to_cpu(rep.bfree);
	buf->f_bavail = le64_to_cpu(rep.bavail);
	buf->f_files = le64_to_cpu(rep.files);
	buf->f_ffree = le64_to_cpu(rep.ffree);
	buf->f_namelen = le32_to_cpu(rep.namemax);
	return 0;
}

static int pohmelfs_show_options(struct seq_file *m, struct dentry *root)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(root->d_sb);
	int i;

	for (i = 0; i < sbi->nr_servers; i++) {
		seq_puts(m, ",server=");
		seq_escape(m, sbi->servers[i].uri, ", \t\n\\");
	}
	seq_printf(m, ",timeout_ms=%u,attr_timeout_ms=%u,leases=%d,meta_delay_ms=%u",
		   sbi->timeout_ms, sbi->attr_timeout_ms, READ_ONCE(sbi->leases),
		   READ_ONCE(sbi->meta_delay_ms));
	seq_puts(m, ",name=");
	seq_escape(m, sbi->name, ", \t\n\\");
	return 0;
}

/* sync(2), syncfs(2) and unmount: the delayed changes reach the servers. */
static int pohmelfs_sync_fs(struct super_block *sb, int wait)
{
	if (wait)
		pohmelfs_mq_sync(POHMELFS_SB(sb));
	return 0;
}

static const struct super_operations pohmelfs_sops = {
	.alloc_inode = pohmelfs_alloc_inode,
	.sync_fs = pohmelfs_sync_fs,
	.free_inode = pohmelfs_free_inode,
	.evict_inode = pohmelfs_evict_inode,
	.statfs = pohmelfs_statfs,
	.show_options = pohmelfs_show_options,
};

enum { Opt_server, Opt_timeout_ms, Opt_attr_timeout_ms, Opt_name, Opt_leases, Opt_meta_delay_ms };

static const struct fs_parameter_spec pohmelfs_params[] = {
	fsparam_string("server", Opt_server),
	fsparam_u32("timeout_ms", Opt_timeout_ms),
	fsparam_u32("attr_timeout_ms", Opt_attr_timeout_ms),
	fsparam_string("name", Opt_name),
	fsparam_u32("leases", Opt_leases),
	fsparam_u32("meta_delay_ms", Opt_meta_delay_ms),
	{}
};

static int pohmelfs_parse_param(struct fs_context *fc, struct fs_parameter *param)
{
	struct pohmelfs_sb_info *sbi = fc->s_fs_info;
	struct fs_parse_result result;
	int opt, err;

	opt = fs_parse(fc, pohmelfs_params, param, &result);
	if (opt < 0)
		return opt;
	switch (opt) {
	case Opt_server:
		if (sbi->nr_servers == POHMELFS_MAX_SERVERS)
			return invalfc(fc, "at most %d servers", POHMELFS_MAX_SERVERS);
		err = pohmelfs_parse_server(&sbi->servers[sbi->nr_servers], param->string);
		if (err)
			return invalfc(fc, "bad server '%s' (tcp://ADDR:PORT[?prio=N&perm=r|w|rw])",
				       param->string);
		sbi->nr_servers++;
		break;
	case Opt_timeout_ms:
		if (result.uint_32 < 100)
			return invalfc(fc, "timeout_ms must be at least 100");
		sbi->timeout_ms = result.uint_32;
		break;
	case Opt_attr_timeout_ms:
		sbi->attr_timeout_ms = result.uint_32;
		break;
	case Opt_name:
		if (strlen(param->string) >= sizeof(sbi->name))
			return invalfc(fc, "name too long");
		strscpy(sbi->name, param->string, sizeof(sbi->name));
		break;
	case Opt_leases:
		if (result.uint_32 > 1)
			return invalfc(fc, "leases is 0 or 1");
		sbi->leases = result.uint_32;
		break;
	case Opt_meta_delay_ms:
		if (result.uint_32 > 600000)
			return invalfc(fc, "meta_delay_ms is at most 600000");
		sbi->meta_delay_ms = result.uint_32;
		break;
	}
	return 0;
}

static int pohmelfs_fill_super(struct super_block *sb, struct fs_context *fc)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(sb);
	struct pohmelfs_obj_req q;
	struct pohmelfs_attr attr;
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_GETATTR };
	struct inode *root;
	int err;

	sbi->sb = sb;
	sb->s_magic = POHMELFS_FS_MAGIC;
	sb->s_op = &pohmelfs_sops;
	sb->s_d_op = &pohmelfs_dentry_ops;
	sb->s_xattr = pohmelfs_xattr_handlers;
	sb->s_maxbytes = MAX_LFS_FILESIZE;
	sb->s_blocksize = PAGE_SIZE;
	sb->s_blocksize_bits = PAGE_SHIFT;
	sb->s_time_gran = 1;
	/* Pages do not change while a WRITE copies them to each replica in turn. */
	sb->s_iflags |= SB_I_STABLE_WRITES;
	err = super_setup_bdi(sb);
	if (err)
		return err;
	/* Readahead windows of 4 IO_MAX READs in flight; writeback in IO_MAX requests. */
	sb->s_bdi->ra_pages = 4 * POHMELFS_IO_MAX / PAGE_SIZE;
	sb->s_bdi->io_pages = POHMELFS_IO_MAX / PAGE_SIZE;

	err = pohmelfs_servers_start(sbi);
	if (err) {
		errorfc(fc, "no server could be reached (%d)", err);
		return err;
	}
	if (pohmelfs_read_only(sbi)) {
		pr_info("pohmelfs: no server lets this client write: mounted read-only\n");
		sb->s_flags |= SB_RDONLY;
	}
	q.oid = sbi->root;
	pohmelfs_msg_add(&m, &q, sizeof(q));
	m.reply = &attr;
	m.reply_cap = sizeof(attr);
	err = pohmelfs_read_call(sbi, &m);
	if (err)
		return err;
	if (m.reply_len != sizeof(attr))
		return -EIO;
	root = pohmelfs_iget(sb, &attr, POHMELFS_SEQ_NOW);
	if (IS_ERR(root))
		return PTR_ERR(root);
	sb->s_root = d_make_root(root);
	return sb->s_root ? 0 : -ENOMEM;
}

static int pohmelfs_get_tree(struct fs_context *fc)
{
	struct pohmelfs_sb_info *sbi = fc->s_fs_info;

	if (!sbi->nr_servers)
		return invalfc(fc, "no server given (-o server=tcp://ADDR:PORT)");
	return get_tree_nodev(fc, pohmelfs_fill_super);
}

static bool same_server(const struct pohmelfs_server *a, const struct pohmelfs_server *b)
{
	return !memcmp(&a->addr, &b->addr, sizeof(a->addr)) && a->prio == b->prio &&
	       a->may_read == b->may_read && a->may_write == b->may_write;
}

/*
 * Remount: timeout_ms and attr_timeout_ms change (the parse started from the mount's current
 * values, so options not given keep them), ro and rw switch. The servers and the name are
 * the mount's identity: giving them again is accepted only unchanged (mount(8) may pass the
 * mount's options back), anything else is refused.
 */
static int pohmelfs_reconfigure(struct fs_context *fc)
{
	struct pohmelfs_sb_info *want = fc->s_fs_info;
	struct super_block *sb = fc->root->d_sb;
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(sb);
	int i;

	if (want->nr_servers) {
		if (want->nr_servers != sbi->nr_servers)
			return invalfc(fc, "the servers of a mount cannot change on remount");
		for (i = 0; i < sbi->nr_servers; i++)
			if (!same_server(&want->servers[i], &sbi->servers[i]))
				return invalfc(fc,
					       "the servers of a mount cannot change on remount");
	}
	if (strcmp(want->name, sbi->name))
		return invalfc(fc, "the name of a mount cannot change on remount");
	if (!(fc->sb_flags & SB_RDONLY) && (sb->s_flags & SB_RDONLY) && pohmelfs_read_only(sbi))
		return invalfc(fc, "no server lets this client write");
	WRITE_ONCE(sbi->timeout_ms, want->timeout_ms);
	WRITE_ONCE(sbi->attr_timeout_ms, want->attr_timeout_ms);
	WRITE_ONCE(sbi->leases, want->leases);
	WRITE_ONCE(sbi->meta_delay_ms, want->meta_delay_ms);
	return 0;
}

static void pohmelfs_free_fc(struct fs_context *fc)
{
	kfree(fc->s_fs_info);
}

static const struct fs_context_operations pohmelfs_context_ops = {
	.parse_param = pohmelfs_parse_param,
	.get_tree = pohmelfs_get_tree,
	.reconfigure = pohmelfs_reconfigure,
	.free = pohmelfs_free_fc,
};

static int pohmelfs_init_fs_context(struct fs_context *fc)
{
	struct pohmelfs_sb_info *sbi = kzalloc(sizeof(*sbi), GFP_KERNEL);

	if (!sbi)
		return -ENOMEM;
	sbi->timeout_ms = 30000;
	sbi->attr_timeout_ms = 1000;
	sbi->leases = true;
	sbi->meta_delay_ms = 5;
	snprintf(sbi->name, sizeof(sbi->name), "%s", utsname()->nodename);
	if (fc->purpose == FS_CONTEXT_FOR_RECONFIGURE) { /* options not given stay as they are */
		const struct pohmelfs_sb_info *cur = POHMELFS_SB(fc->root->d_sb);

		sbi->timeout_ms = cur->timeout_ms;
		sbi->attr_timeout_ms = cur->attr_timeout_ms;
		sbi->leases = cur->leases;
		sbi->meta_delay_ms = cur->meta_delay_ms;
		strscpy(sbi->name, cur->name, sizeof(sbi->name));
	}
	init_waitqueue_head(&sbi->up_wq);
	spin_lock_init(&sbi->lease_lock);
	hash_init(sbi->lease_table);
	atomic_set(&sbi->lease_works, 0);
	pohmelfs_mq_init(sbi);
	fc->s_fs_info = sbi;
	fc->ops = &pohmelfs_context_ops;
	return 0;
}

static void pohmelfs_kill_sb(struct super_block *sb)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(sb);

	/* Writes back, sends the delayed changes (sync_fs) and evicts every inode while the
	 * servers are still there; then the RELEASEs that eviction queued. */
	kill_anon_super(sb);
	if (sbi) {
		pohmelfs_mq_drain(sbi);
		pohmelfs_servers_stop(sbi);
		pohmelfs_leases_stop(sbi);
		pohmelfs_mq_stop(sbi);
		kfree(sbi);
	}
}

static struct file_system_type pohmelfs_fs_type = {
	.owner = THIS_MODULE,
	.name = "pohmelfs",
	.init_fs_context = pohmelfs_init_fs_context,
	.parameters = pohmelfs_params,
	.kill_sb = pohmelfs_kill_sb,
};
MODULE_ALIAS_FS("pohmelfs");

static int __init pohmelfs_init(void)
{
	int err;

	pohmelfs_inode_cachep =
		kmem_cache_create("pohmelfs_inode", sizeof(struct pohmelfs_inode), 0,
				  SLAB_RECLAIM_ACCOUNT | SLAB_ACCOUNT, pohmelfs_inode_once);
	if (!pohmelfs_inode_cachep)
		return -ENOMEM;
	err = pohmelfs_rpc_init();
	if (err)
		goto free_cache;
	err = register_filesystem(&pohmelfs_fs_type);
	if (err)
		goto rpc_exit;
	pr_info("pohmelfs: protocol version %u\n", POHMELFS_PROTO_VERSION_MAX);
	return 0;
rpc_exit:
	pohmelfs_rpc_exit();
free_cache:
	kmem_cache_destroy(pohmelfs_inode_cachep);
	return err;
}

static void __exit pohmelfs_exit(void)
{
	unregister_filesystem(&pohmelfs_fs_type);
	pohmelfs_rpc_exit();
	rcu_barrier(); /* inodes are freed after a grace period */
	kmem_cache_destroy(pohmelfs_inode_cachep);
}

module_init(pohmelfs_init);
module_exit(pohmelfs_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("POHMELFS: parallel replicated network filesystem client");
