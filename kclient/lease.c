// SPDX-License-Identifier: GPL-2.0
/*
 * Directory leases (docs/kclient.md, "Directory leases"). A directory this mount creates is
 * created with CREATE_LEASE: the servers give the mount its WRITE lease with the create, and
 * since the directory was empty then, every entry made in it afterwards is known here. While
 * the lease is held:
 *
 *   - lookups and dentry revalidation in it are answered from the names kept here;
 *   - create, mknod, mkdir (which takes the new directory's lease the same way), unlink and
 *     rmdir (of a directory known empty) are answered here and queued (mq.c);
 *   - so are setattrs (not truncation) and writes of up to 64 KiB at a time to the objects
 *     created that way: nobody else can reach them without a lookup in the directory;
 *   - changes sent at once (rename, link, symlink...) keep the names up to date.
 *
 * Another client that asks for the directory's lease makes the server send LEASE_BREAK: the
 * queue is drained, the names are forgotten and the lease is given back (LEASE RELEASE), all
 * well inside the server's break timeout. A break can arrive before the reply that granted the
 * lease (the grant and a competing acquire race on the server): a lease is therefore recorded
 * as expected before its MKDIR is sent, and a break of an expected lease makes the creator
 * give it back as soon as the reply is in. A lost connection to a writer may have cost a break:
 * every lease is forgotten then (the servers keep theirs until broken; a break of a lease
 * unknown here is answered with a RELEASE too).
 */
#include <linux/slab.h>

#include "pohmelfs.h"

enum lease_state {
	LEASE_EXPECTED, /* MKDIR sent, reply not in */
	LEASE_BROKEN,	/* broken before the reply: give it back after */
	LEASE_HELD,
	LEASE_BREAKING, /* break work draining: no new delayed changes */
};

struct pohmelfs_name {
	struct rb_node node;
	struct pohmelfs_oid oid;
	umode_t type; /* S_IFMT bits */
	u32 len;
	char name[];
};

struct pohmelfs_dlease {
	struct hlist_node hash;
	struct pohmelfs_oid oid;
	struct inode *inode; /* not a reference: cleared by pohmelfs_lease_evict */
	enum lease_state state;
	bool complete; /* names holds every entry of the directory */
	struct rb_root names;
	unsigned int nr_names;
};

struct break_work {
	struct work_struct work;
	struct pohmelfs_sb_info *sbi;
	struct pohmelfs_oid oid;
};

static u64 oid_key(const struct pohmelfs_oid *oid)
{
	return pohmelfs_oid_ino(oid);
}

static struct pohmelfs_dlease *find_lease(struct pohmelfs_sb_info *sbi,
					  const struct pohmelfs_oid *oid)
{
	struct pohmelfs_dlease *l;

	hash_for_each_possible(sbi->lease_table, l, hash,
			       oid_key(oid)) if (!memcmp(&l->oid, oid, sizeof(*oid))) return l;
	return NULL;
}

static int name_cmp(const char *a, u32 alen, const char *b, u32 blen)
{
	int c = memcmp(a, b, min(alen, blen));

	return c ? c : (alen < blen ? -1 : alen > blen);
}

static struct pohmelfs_name *find_name(struct pohmelfs_dlease *l, const struct qstr *q)
{
	struct rb_node *node = l->names.rb_node;

	while (node) {
		struct pohmelfs_name *n = rb_entry(node, struct pohmelfs_name, node);
		int c = name_cmp(q->name, q->len, n->name, n->len);

		if (!c)
			return n;
		node = c < 0 ? node->rb_left : node->rb_right;
	}
	return NULL;
}

/* Inserts n unless its name is there; returns the entry that has the name. */
static struct pohmelfs_name *insert_name(struct pohmelfs_dlease *l, struct pohmelfs_name *n)
{
	struct rb_node **link = &l->names.rb_node, *parent = NULL;

	while (*link) {
		struct pohmelfs_name *e = rb_entry(*link, struct pohmelfs_name, node);
		int c = name_cmp(n->name, n->len, e->name, e->len);

		if (!c)
			return e;
		parent = *link;
		link = c < 0 ? &(*link)->rb_left : &(*link)->rb_right;
	}
	rb_link_node(&n->node, parent, link);
	rb_insert_color(&n->node, &l->names);
	l->nr_names++;
	return n;
}

static void erase_name(struct pohmelfs_dlease *l, struct pohmelfs_name *n)
{
	rb_erase(&n->node, &l->names);
	l->nr_names--;
	kfree(n);
}

static void forget_names(struct pohmelfs_dlease *l)
{
	struct pohmelfs_name *n, *tmp;

	rbtree_postorder_for_each_entry_safe(n, tmp, &l->names, node) kfree(n);
	l->names = RB_ROOT;
	l->nr_names = 0;
	l->complete = false;
}

static void free_lease(struct pohmelfs_dlease *l)
{
	forget_names(l);
	hash_del(&l->hash);
	if (l->inode) {
		POHMELFS_I(l->inode)->lease = NULL;
		/* Its attributes were kept up to date by this mount's changes only. */
		WRITE_ONCE(POHMELFS_I(l->inode)->attr_time, 0);
	}
	kfree(l);
}

static struct pohmelfs_name *new_name(const struct qstr *q, const struct pohmelfs_oid *oid,
				      umode_t type)
{
	struct pohmelfs_name *n = kmalloc(sizeof(*n) + q->len, GFP_KERNEL);

	if (!n)
		return NULL;
	n->oid = *oid;
	n->type = type & S_IFMT;
	n->len = q->len;
	memcpy(n->name, q->name, q->len);
	return n;
}

/* The lease of dir, when it is held and its names are complete (under lease_lock). */
static struct pohmelfs_dlease *usable(struct inode *dir)
{
	struct pohmelfs_dlease *l = POHMELFS_I(dir)->lease;

	return l && l->state == LEASE_HELD && l->complete ? l : NULL;
}

static void send_release(struct pohmelfs_sb_info *sbi, const struct pohmelfs_oid *oid)
{
	struct pohmelfs_lease_req q = { .oid = *oid };
	struct pohmelfs_msg m = { .opcode = POHMELFS_OP_LEASE };

	q.cmd = cpu_to_le32(POHMELFS_LEASE_RELEASE);
	q.mode = cpu_to_le32(POHMELFS_LEASE_NONE);
	pohmelfs_msg_add(&m, &q, sizeof(q));
	pohmelfs_send_async_all(sbi, &m);
}

struct pohmelfs_dlease *pohmelfs_lease_expect(struct pohmelfs_sb_info *sbi,
					      const struct pohmelfs_oid *oid)
{
	struct pohmelfs_dlease *l = kzalloc(sizeof(*l), GFP_KERNEL);

	if (!l)
		return NULL;
	l->oid = *oid;
	l->state = LEASE_EXPECTED;
	l->complete = true; /* a new directory is empty */
	l->names = RB_ROOT;
	spin_lock(&sbi->lease_lock);
	hash_add(sbi->lease_table, &l->hash, oid_key(oid));
	spin_unlock(&sbi->lease_lock);
	return l;
}

static void bind(struct pohmelfs_dlease *l, struct inode *dir)
{
	struct pohmelfs_inode *pi = POHMELFS_I(dir);

	if (pi->lease && pi->lease != l)
		free_lease(pi->lease);
	pi->lease = l;
	l->inode = dir;
}

void pohmelfs_lease_created(struct pohmelfs_sb_info *sbi, struct pohmelfs_dlease *l,
			    struct inode *dir, int err)
{
	bool give_back;

	spin_lock(&sbi->lease_lock);
	give_back = !err && l->state == LEASE_BROKEN;
	if (err || !dir || l->state != LEASE_EXPECTED) {
		struct pohmelfs_oid oid = l->oid;

		free_lease(l);
		spin_unlock(&sbi->lease_lock);
		if (give_back)
			send_release(sbi, &oid);
		return;
	}
	l->state = LEASE_HELD;
	bind(l, dir);
	spin_unlock(&sbi->lease_lock);
}

void pohmelfs_lease_bind(struct inode *dir)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	struct pohmelfs_dlease *l;

	spin_lock(&sbi->lease_lock);
	l = find_lease(sbi, &POHMELFS_I(dir)->oid);
	if (l && l->state == LEASE_HELD && !l->inode)
		bind(l, dir);
	spin_unlock(&sbi->lease_lock);
}

enum pohmelfs_known pohmelfs_lease_lookup(struct inode *dir, const struct qstr *name,
					  struct pohmelfs_oid *oid, umode_t *type)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	enum pohmelfs_known known = POHMELFS_UNKNOWN;
	struct pohmelfs_dlease *l;
	struct pohmelfs_name *n;

	if (!READ_ONCE(POHMELFS_I(dir)->lease))
		return POHMELFS_UNKNOWN;
	spin_lock(&sbi->lease_lock);
	l = usable(dir);
	if (l) {
		n = find_name(l, name);
		known = n ? POHMELFS_PRESENT : POHMELFS_ABSENT;
		if (n) {
			*oid = n->oid;
			*type = n->type;
		}
	}
	spin_unlock(&sbi->lease_lock);
	return known;
}

void pohmelfs_lease_name_added(struct inode *dir, const struct qstr *name,
			       const struct pohmelfs_oid *oid, umode_t type)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	struct pohmelfs_name *n, *had;
	struct pohmelfs_dlease *l;

	if (!READ_ONCE(POHMELFS_I(dir)->lease))
		return;
	n = new_name(name, oid, type);
	spin_lock(&sbi->lease_lock);
	l = usable(dir);
	if (l && !n) {
		forget_names(l);
	} else if (l) {
		had = insert_name(l, n);
		if (had != n) { /* replaced (rename over an entry) */
			had->oid = *oid;
			had->type = type & S_IFMT;
		} else {
			n = NULL;
		}
	}
	spin_unlock(&sbi->lease_lock);
	kfree(n);
}

void pohmelfs_lease_name_removed(struct inode *dir, const struct qstr *name)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	struct pohmelfs_dlease *l;
	struct pohmelfs_name *n;

	if (!READ_ONCE(POHMELFS_I(dir)->lease))
		return;
	spin_lock(&sbi->lease_lock);
	l = usable(dir);
	n = l ? find_name(l, name) : NULL;
	if (n)
		erase_name(l, n);
	spin_unlock(&sbi->lease_lock);
}

void pohmelfs_lease_drop(struct pohmelfs_sb_info *sbi, const struct pohmelfs_oid *oid)
{
	struct pohmelfs_dlease *l;

	spin_lock(&sbi->lease_lock);
	l = find_lease(sbi, oid);
	if (l && l->state == LEASE_HELD)
		free_lease(l);
	spin_unlock(&sbi->lease_lock);
}

void pohmelfs_lease_forget_names(struct inode *dir)
{
	pohmelfs_lease_forget_names_of(POHMELFS_SB(dir->i_sb), &POHMELFS_I(dir)->oid);
}

void pohmelfs_lease_forget_names_of(struct pohmelfs_sb_info *sbi, const struct pohmelfs_oid *dir)
{
	struct pohmelfs_dlease *l;

	spin_lock(&sbi->lease_lock);
	l = find_lease(sbi, dir);
	if (l)
		forget_names(l);
	spin_unlock(&sbi->lease_lock);
}

int pohmelfs_lease_add_delayed(struct inode *dir, const struct qstr *name,
			       const struct pohmelfs_oid *oid, umode_t type,
			       struct pohmelfs_mq_cmd *cmd, bool new_dir)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	struct pohmelfs_dlease *l, *nl = NULL;
	struct pohmelfs_name *n;

	if (!READ_ONCE(sbi->leases) || !READ_ONCE(POHMELFS_I(dir)->lease) || pohmelfs_mq_full(sbi))
		return -EAGAIN;
	n = new_name(name, oid, type);
	if (new_dir)
		nl = kzalloc(sizeof(*nl), GFP_KERNEL);
	if (!n || (new_dir && !nl))
		goto no;
	spin_lock(&sbi->lease_lock);
	l = usable(dir);
	if (!l || find_name(l, name)) {
		spin_unlock(&sbi->lease_lock);
		goto no;
	}
	insert_name(l, n);
	if (nl) { /* granted with the MKDIR when it runs; nobody can ask for it before */
		nl->oid = *oid;
		nl->state = LEASE_HELD;
		nl->complete = true;
		nl->names = RB_ROOT;
		hash_add(sbi->lease_table, &nl->hash, oid_key(oid));
	}
	pohmelfs_mq_push(sbi, cmd);
	spin_unlock(&sbi->lease_lock);
	return 0;
no:
	kfree(n);
	kfree(nl);
	return -EAGAIN;
}

int pohmelfs_lease_remove_delayed(struct inode *dir, const struct qstr *name, struct inode *victim,
				  struct pohmelfs_mq_cmd *cmd)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(dir->i_sb);
	struct pohmelfs_dlease *l, *vl = NULL;
	struct pohmelfs_name *n;

	if (!READ_ONCE(sbi->leases) || !READ_ONCE(POHMELFS_I(dir)->lease) || pohmelfs_mq_full(sbi))
		return -EAGAIN;
	spin_lock(&sbi->lease_lock);
	l = usable(dir);
	n = l ? find_name(l, name) : NULL;
	if (!n || memcmp(&n->oid, &POHMELFS_I(victim)->oid, sizeof(n->oid)) ||
	    n->type != (victim->i_mode & S_IFMT))
		goto no;
	if (S_ISDIR(victim->i_mode)) { /* only a directory known to be empty */
		vl = usable(victim);
		if (!vl || vl->nr_names)
			goto no;
		free_lease(vl);
	}
	erase_name(l, n);
	pohmelfs_mq_push(sbi, cmd);
	spin_unlock(&sbi->lease_lock);
	return 0;
no:
	spin_unlock(&sbi->lease_lock);
	return -EAGAIN;
}

int pohmelfs_lease_delay_change(struct inode *inode, struct pohmelfs_mq_cmd *cmd)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(inode->i_sb);
	struct pohmelfs_inode *pi = POHMELFS_I(inode);
	struct pohmelfs_dlease *l;
	int err = -EAGAIN;

	if (!READ_ONCE(sbi->leases) || !test_bit(POHMELFS_I_NEW_UNDER_LEASE, &pi->flags) ||
	    pohmelfs_mq_full(sbi))
		return -EAGAIN;
	spin_lock(&sbi->lease_lock);
	l = find_lease(sbi, &pi->parent);
	if (l && l->state == LEASE_HELD) {
		pohmelfs_mq_push(sbi, cmd);
		err = 0;
	}
	spin_unlock(&sbi->lease_lock);
	if (err) /* the directory's lease went: from now on like any object */
		clear_bit(POHMELFS_I_NEW_UNDER_LEASE, &pi->flags);
	return err;
}

void pohmelfs_lease_evict(struct inode *inode)
{
	struct pohmelfs_sb_info *sbi = POHMELFS_SB(inode->i_sb);

	if (!READ_ONCE(POHMELFS_I(inode)->lease))
		return;
	/* Forgotten here; the servers keep it until it is broken (then given back) or the
	 * session ends. */
	spin_lock(&sbi->lease_lock);
	if (POHMELFS_I(inode)->lease)
		free_lease(POHMELFS_I(inode)->lease);
	spin_unlock(&sbi->lease_lock);
}

static void lease_break_work(struct work_struct *work)
{
	struct break_work *bw = container_of(work, struct break_work, work);
	struct pohmelfs_sb_info *sbi = bw->sbi;
	struct pohmelfs_dlease *l;

	spin_lock(&sbi->lease_lock);
	l = find_lease(sbi, &bw->oid);
	if (l && l->state == LEASE_EXPECTED) {
		l->state = LEASE_BROKEN; /* the creator gives it back after the reply */
		spin_unlock(&sbi->lease_lock);
		goto out;
	}
	if (l)
		l->state = LEASE_BREAKING;
	spin_unlock(&sbi->lease_lock);
	/* What was delayed under the lease reaches the servers before the lease goes back. */
	pohmelfs_mq_drain(sbi);
	spin_lock(&sbi->lease_lock);
	l = find_lease(sbi, &bw->oid);
	if (l && l->state != LEASE_EXPECTED && l->state != LEASE_BROKEN)
		free_lease(l);
	spin_unlock(&sbi->lease_lock);
	send_release(sbi, &bw->oid);
out:
	kfree(bw);
	if (atomic_dec_and_test(&sbi->lease_works))
		wake_up_var(&sbi->lease_works);
}

void pohmelfs_lease_break(struct pohmelfs_sb_info *sbi, const void *payload, size_t len)
{
	struct pohmelfs_lease_break b;
	struct break_work *bw;

	if (len < sizeof(b)) {
		pr_warn("pohmelfs: LEASE_BREAK of %zu bytes ignored\n", len);
		return;
	}
	memcpy(&b, payload, sizeof(b));
	bw = kmalloc(sizeof(*bw), GFP_NOFS);
	if (!bw) {
		pr_warn("pohmelfs: no memory to handle a lease break; the server will evict this mount from the object\n");
		return;
	}
	bw->sbi = sbi;
	bw->oid = b.oid;
	INIT_WORK(&bw->work, lease_break_work);
	atomic_inc(&sbi->lease_works);
	queue_work(pohmelfs_meta_wq, &bw->work);
}

void pohmelfs_leases_drop_all(struct pohmelfs_sb_info *sbi)
{
	struct pohmelfs_dlease *l;
	struct hlist_node *tmp;
	int bkt;

	spin_lock(&sbi->lease_lock);
	hash_for_each_safe(sbi->lease_table, bkt, tmp, l, hash)
	{
		if (l->state == LEASE_EXPECTED)
			l->state = LEASE_BROKEN;
		else if (l->state == LEASE_HELD)
			free_lease(l);
	}
	spin_unlock(&sbi->lease_lock);
}

void pohmelfs_leases_stop(struct pohmelfs_sb_info *sbi)
{
	struct pohmelfs_dlease *l;
	struct hlist_node *tmp;
	int bkt;

	wait_var_event(&sbi->lease_works, !atomic_read(&sbi->lease_works));
	spin_lock(&sbi->lease_lock);
	hash_for_each_safe(sbi->lease_table, bkt, tmp, l, hash) free_lease(l);
	spin_unlock(&sbi->lease_lock);
}
