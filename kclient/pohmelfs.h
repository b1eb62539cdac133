/* SPDX-License-Identifier: GPL-2.0 */
/*
 * POHMELFS kernel client: shared declarations.
 *
 * Layers, bottom up:
 *   net.c    one TCP connection to one server: handshake, a receive thread that matches
 *            replies to requests by transaction id, credits, death of the connection;
 *   rpc.c    the mount's server set: reconnects, reads to one server with failover,
 *            changes to every writable server, stale-replica markers;
 *   mq.c     the delayed-change queue: changes answered here, sent later in BATCHes, in order;
 *   lease.c  directory WRITE leases: what makes answering those changes here safe;
 *   super.c, inode.c, dir.c, file.c, xattr.c: the VFS side.
 */
#ifndef POHMELFS_KCLIENT_H
#define POHMELFS_KCLIENT_H

#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/net.h>
#include <linux/rbtree.h>
#include <linux/socket.h>
#include <linux/uio.h>
#include <linux/workqueue.h>
#include <linux/xarray.h>
#include <linux/xattr.h>

#include "pohmelfs_proto.h"

#define POHMELFS_FS_MAGIC 0x4d484f50 /* statfs f_type: "POHM" */
#define POHMELFS_MAX_SERVERS 8
#define POHMELFS_ROOT_INO 1

/* A request in flight on one connection. Completed exactly once, by the receive thread (reply
 * or death of the connection); a request that could not be sent is never seen by it. A
 * waited-for request's waiter always waits for that completion, so the request and its reply
 * destination may live on the waiter's stack. An async or on_done request belongs to the
 * receive thread once sent, and is freed by it (or by on_done). */
struct pohmelfs_req {
	u64 trans;
	u16 opcode;
	int err;	     /* 0, -errno from the server's status, or a transport error */
	struct iov_iter dst; /* where the reply payload goes */
	struct kvec dst_kv;
	size_t reply_len;	/* payload bytes received */
	unsigned long deadline; /* jiffies: the connection is killed if no reply by then */
	bool async;		/* nobody waits: kmalloc'ed, freed when done, no reply payload */
	/* Nobody waits either, but this runs (on the receive thread) when it is done. */
	void (*on_done)(struct pohmelfs_req *req);
	struct completion done;
};

struct pohmelfs_conn {
	struct kref ref;
	struct pohmelfs_server *srv;
	struct socket *sock;
	struct task_struct *rx;
	struct mutex send_mutex;
	wait_queue_head_t send_wq; /* room in the socket's send buffer (conn_write_space) */
	void (*saved_write_space)(struct sock *sk);
	struct xarray pending; /* trans -> struct pohmelfs_req */
	wait_queue_head_t credit_wq;
	struct delayed_work watchdog; /* kills the connection when a request is overdue */
	u32 credits;		      /* requests the server lets us have in flight */
	u32 inflight;		      /* under pending's lock */
	bool dead;		      /* under pending's lock */
	u64 session;
	u64 features;	/* POHMELFS_FEAT_* the server granted */
	bool read_only; /* the server's allow list gives us read access only */
};

/* One configured server of the mount. */
struct pohmelfs_server {
	struct pohmelfs_sb_info *sbi;
	char uri[128];
	struct sockaddr_storage addr;
	int prio;
	bool may_read, may_write;
	int index;

	spinlock_t lock;	    /* conn, up */
	struct pohmelfs_conn *conn; /* a reference, or NULL while down */
	struct mutex connect_mutex; /* one connect attempt at a time */
	atomic64_t next_trans;	    /* unique per session: kept across reconnects */
	u64 session;		    /* to resume after a reconnect */
	struct pohmelfs_oid server_id;
	bool known_id;
	/* Missed a change that another server applied: never read from again by this mount
	 * (docs/kclient.md), and the others hold a marker naming it. */
	bool stale;
	unsigned long marked; /* bit i: server i holds a marker for this one */
	struct delayed_work reconnect;
};

/* Changes answered here and sent later, in order (mq.c). */
struct pohmelfs_mq {
	spinlock_t lock;
	struct list_head pending; /* struct pohmelfs_mq_cmd, oldest first */
	unsigned int count;
	size_t bytes;		  /* of the queued command bodies */
	u64 queued;		  /* number of the last command queued (under lock) */
	atomic64_t done;	  /* every command up to this number was sent and answered */
	struct mutex flush_mutex; /* one flush at a time */
	struct delayed_work work; /* sends the queue delay_ms after its first command */
	struct list_head failed;  /* struct pohmelfs_mq_failure, under lock */
	struct work_struct failed_work;
};

struct pohmelfs_sb_info {
	struct super_block *sb;
	struct pohmelfs_server servers[POHMELFS_MAX_SERVERS];
	int nr_servers;
	char name[64];
	unsigned int timeout_ms;      /* one request's reply, and waiting for a server */
	unsigned int attr_timeout_ms; /* cached attributes and names */
	struct pohmelfs_oid root;
	bool have_root;
	atomic_t read_turn;	 /* round robin among equal readers */
	wait_queue_head_t up_wq; /* a server came up */
	bool shutting_down;
	/* Counts local size changes (pohmelfs_local_size): a server's attributes for a request
	 * sent before an inode's last one may hold an older size (pohmelfs_attr_seq). */
	atomic64_t size_seq;
	/* Directory leases (lease.c): on, and how long a delayed change may wait. */
	bool leases;
	unsigned int meta_delay_ms;
	spinlock_t lease_lock;		   /* the table, every lease's state and names */
	DECLARE_HASHTABLE(lease_table, 8); /* struct pohmelfs_dlease by oid */
	atomic_t lease_works;		   /* break work queued or running */
	struct pohmelfs_mq mq;
};

struct pohmelfs_inode {
	struct pohmelfs_oid oid;
	unsigned long attr_time;       /* jiffies of the last attributes from a server */
	u64 version;		       /* the server's change counter at that time */
	bool local_changes;	       /* we changed it since: a newer version is ours */
	u64 size_changed;	       /* size_seq of its last local size change (under i_lock) */
	unsigned long flags;	       /* POHMELFS_I_* bits */
	struct pohmelfs_dlease *lease; /* a directory's lease (under sbi->lease_lock) */
	struct pohmelfs_oid parent;    /* with POHMELFS_I_NEW_UNDER_LEASE: its directory */
	struct inode vfs_inode;
};

/* Created with CREATE_OPEN: the servers hold a handle for the ->open that follows. */
#define POHMELFS_I_CREATED_OPEN 0
/* Created here by a delayed create: while the directory's lease is held nobody else can have
 * reached it, so its setattrs and small writes may be delayed too. */
#define POHMELFS_I_NEW_UNDER_LEASE 1

static inline struct pohmelfs_inode *POHMELFS_I(struct inode *inode)
{
	return container_of(inode, struct pohmelfs_inode, vfs_inode);
}

static inline struct pohmelfs_sb_info *POHMELFS_SB(struct super_block *sb)
{
	return sb->s_fs_info;
}

/* One outgoing message: a command body in up to 4 pieces, then optional page data. */
struct pohmelfs_msg {
	u16 opcode;
	struct kvec iov[4];
	int niov;
	struct bio_vec *data; /* WRITE payload from the page cache */
	int ndata;
	size_t data_len;
	/* Reply destination: a buffer (reply, reply_cap) or pages (rpages, nrpages, rlen). */
	void *reply;
	size_t reply_cap;
	struct bio_vec *rpages;
	int nrpages;
	size_t rlen;
	size_t reply_len; /* out */
};

static inline void pohmelfs_msg_add(struct pohmelfs_msg *m, const void *p, size_t len)
{
	if (len) {
		m->iov[m->niov].iov_base = (void *)p;
		m->iov[m->niov].iov_len = len;
		m->niov++;
	}
}

/* net.c */
int pohmelfs_conn_open(struct pohmelfs_server *srv, struct pohmelfs_conn **out);
void pohmelfs_conn_put(struct pohmelfs_conn *conn);
void pohmelfs_conn_kill(struct pohmelfs_conn *conn);
bool pohmelfs_conn_dead(struct pohmelfs_conn *conn);
int pohmelfs_conn_send(struct pohmelfs_conn *conn, struct pohmelfs_req *req, struct pohmelfs_msg *m,
		       bool resent);
int pohmelfs_conn_wait(struct pohmelfs_conn *conn, struct pohmelfs_req *req);
/* A server's status as a kernel error (Linux errno values only, else -EIO). */
int pohmelfs_status_err(u32 status);

/* rpc.c. Every call but change_call_queued and send_async_all first drains the mount's
 * delayed-change queue (mq.c), so that no request overtakes a change made before it. */
extern struct workqueue_struct *pohmelfs_wq;
/* The queue's flusher, its failures and lease breaks: apart from reconnects, which they may
 * wait for. */
extern struct workqueue_struct *pohmelfs_meta_wq;
int pohmelfs_rpc_init(void);
void pohmelfs_rpc_exit(void);
/* From a connection's receive thread when the connection died: reconnect in the background. */
void pohmelfs_server_conn_lost(struct pohmelfs_server *srv);
int pohmelfs_servers_start(struct pohmelfs_sb_info *sbi);
void pohmelfs_servers_stop(struct pohmelfs_sb_info *sbi);
int pohmelfs_parse_server(struct pohmelfs_server *srv, const char *spec);
/* A read-only command to one server (failover on a transport error). */
int pohmelfs_read_call(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m);
/* A change: to every writable server; the result of the highest-priority one that answered. */
int pohmelfs_change_call(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m);
/* The queue's own BATCHes: change_call without draining; *answered (if not NULL) tells a
 * server's answer from no answer within the timeout. */
int pohmelfs_change_call_queued(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m,
				bool *answered);
/* A change nobody waits for (RELEASE): sent to every up writable server, answers ignored; queued
 * behind the delayed changes when there are any. */
void pohmelfs_change_async(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m);
/* The same, never queued (LEASE RELEASE, which a BATCH cannot carry). */
void pohmelfs_send_async_all(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m);
bool pohmelfs_read_only(struct pohmelfs_sb_info *sbi);
/* Every up writer granted BATCH and LEASE: new directories may come with their lease. */
bool pohmelfs_writers_lease(struct pohmelfs_sb_info *sbi);
/* A read-only command whose reply req->on_done handles: sent to one up reader, no failover.
 * 0, or an error when it could not be sent (req->on_done then never runs). */
int pohmelfs_read_send(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m,
		       struct pohmelfs_req *req);

/* inode.c */
extern const struct inode_operations pohmelfs_dir_iops;
extern const struct inode_operations pohmelfs_file_iops;
extern const struct inode_operations pohmelfs_symlink_iops;
extern const struct dentry_operations pohmelfs_dentry_ops;
/* Attributes from a server are applied with the size_seq read before their request was sent
 * (pohmelfs_attr_seq): a size older than this client's last local size change is ignored. */
static inline u64 pohmelfs_attr_seq(struct super_block *sb)
{
	return atomic64_read(&POHMELFS_SB(sb)->size_seq);
}
/* For replies that cannot predate the local size (new objects, replies to own changes). */
#define POHMELFS_SEQ_NOW U64_MAX
struct inode *pohmelfs_iget(struct super_block *sb, const struct pohmelfs_attr *attr, u64 since);
void pohmelfs_apply_attr(struct inode *inode, const struct pohmelfs_attr *attr, u64 since);
/* This client made the file at least size bytes long (a write past the end). */
void pohmelfs_local_size(struct inode *inode, loff_t size);
void pohmelfs_apply_own_attr(struct inode *inode, const struct pohmelfs_attr *attr);
int pohmelfs_refresh(struct inode *inode, bool force);
u64 pohmelfs_oid_ino(const struct pohmelfs_oid *oid);
/* The cached inode of oid (a reference), or NULL. */
struct inode *pohmelfs_ilookup(struct super_block *sb, const struct pohmelfs_oid *oid);

/* dir.c */
extern const struct file_operations pohmelfs_dir_fops;

/* file.c */
extern const struct file_operations pohmelfs_file_fops;
extern const struct address_space_operations pohmelfs_aops;
void pohmelfs_release_created(struct inode *inode);

/* mq.c: a change sent later. Commands are sent in the order queued, before any other request
 * of the mount (every rpc.c call drains the queue first), as BATCHes to every writer. */
struct pohmelfs_mq_cmd;
/* A command: opcode, body in up to two pieces (b NULL: blen bytes left for the caller to fill
 * through pohmelfs_mq_cmd_tail); parent and obj (either may be NULL) are the directory whose
 * lease knowledge and the object whose mapping take the blame for a failure. */
struct pohmelfs_mq_cmd *pohmelfs_mq_cmd_new(u16 opcode, const void *a, size_t alen, const void *b,
					    size_t blen, const struct pohmelfs_oid *parent,
					    const struct pohmelfs_oid *obj, gfp_t gfp);
void pohmelfs_mq_cmd_free(struct pohmelfs_mq_cmd *cmd);
void *pohmelfs_mq_cmd_tail(struct pohmelfs_mq_cmd *cmd, size_t alen);
/* Queues it (no allocation, no sleep: callable under spinlocks). */
void pohmelfs_mq_push(struct pohmelfs_sb_info *sbi, struct pohmelfs_mq_cmd *cmd);
/* Whether the queue is too long to take more (the change is then sent at once). */
bool pohmelfs_mq_full(struct pohmelfs_sb_info *sbi);
/* Whether commands are queued or in flight (a later request must wait for them). */
bool pohmelfs_mq_busy(struct pohmelfs_sb_info *sbi);
/* Sends everything queued so far and waits for the answers. */
void pohmelfs_mq_drain(struct pohmelfs_sb_info *sbi);
/* Drains, and marks the objects of failed commands (their next fsync reports the error). */
void pohmelfs_mq_sync(struct pohmelfs_sb_info *sbi);
/* Steps over one command's reply in a BATCH reply of len bytes at *off: its header in *cr, its
 * body at *body (cr->length bytes). false when the reply is cut short. */
bool pohmelfs_batch_next(const u8 *rep, size_t len, size_t *off, struct pohmelfs_cmd_rep *cr,
			 const u8 **body);
void pohmelfs_mq_init(struct pohmelfs_sb_info *sbi);
void pohmelfs_mq_stop(struct pohmelfs_sb_info *sbi);

/* lease.c: WRITE leases on directories this mount created (MKDIR with CREATE_LEASE). While one
 * is held, the directory's entries are known here completely: lookups are answered here, and
 * creates, unlinks, mkdirs and rmdirs in it are answered here and queued (mq.c). */
struct pohmelfs_dlease;
enum pohmelfs_known { POHMELFS_UNKNOWN, POHMELFS_ABSENT, POHMELFS_PRESENT };
/* Before a MKDIR with CREATE_LEASE: the lease to be (a break may arrive before the reply). */
struct pohmelfs_dlease *pohmelfs_lease_expect(struct pohmelfs_sb_info *sbi,
					      const struct pohmelfs_oid *oid);
/* After it: err from the servers; dir the new directory's inode (NULL on error). */
void pohmelfs_lease_created(struct pohmelfs_sb_info *sbi, struct pohmelfs_dlease *l,
			    struct inode *dir, int err);
/* What the lease of dir says of name; on PRESENT, *oid and *type (S_IFMT bits) of the entry. */
enum pohmelfs_known pohmelfs_lease_lookup(struct inode *dir, const struct qstr *name,
					  struct pohmelfs_oid *oid, umode_t *type);
/* The namespace changed by a change already sent: keep the names right, or forget them. */
void pohmelfs_lease_name_added(struct inode *dir, const struct qstr *name,
			       const struct pohmelfs_oid *oid, umode_t type);
void pohmelfs_lease_name_removed(struct inode *dir, const struct qstr *name);
void pohmelfs_lease_forget_names(struct inode *dir);
void pohmelfs_lease_forget_names_of(struct pohmelfs_sb_info *sbi, const struct pohmelfs_oid *dir);
/* Forgets the lease of oid (a directory whose delayed mkdir failed). */
void pohmelfs_lease_drop(struct pohmelfs_sb_info *sbi, const struct pohmelfs_oid *oid);
/* Delayed namespace changes: 0 when answered here and queued; -EAGAIN when not possible (send
 * it now instead). The caller made cmd; it is consumed on 0. */
int pohmelfs_lease_add_delayed(struct inode *dir, const struct qstr *name,
			       const struct pohmelfs_oid *oid, umode_t type,
			       struct pohmelfs_mq_cmd *cmd, bool new_dir);
int pohmelfs_lease_remove_delayed(struct inode *dir, const struct qstr *name, struct inode *victim,
				  struct pohmelfs_mq_cmd *cmd);
/* A change to an object created here under its directory's lease (POHMELFS_I_NEW_UNDER_LEASE):
 * queued while that lease is held (0), else -EAGAIN. cmd is consumed on 0. */
int pohmelfs_lease_delay_change(struct inode *inode, struct pohmelfs_mq_cmd *cmd);
/* A directory inode made for a lease taken with its create: bind them. */
void pohmelfs_lease_bind(struct inode *dir);
void pohmelfs_lease_evict(struct inode *inode);
/* From a receive thread: a LEASE_BREAK payload. */
void pohmelfs_lease_break(struct pohmelfs_sb_info *sbi, const void *payload, size_t len);
/* A connection to a writer was lost: breaks may have been missed, forget every lease. */
void pohmelfs_leases_drop_all(struct pohmelfs_sb_info *sbi);
/* Unmount: drops them and waits for break work in progress. */
void pohmelfs_leases_stop(struct pohmelfs_sb_info *sbi);

/* xattr.c */
extern const struct xattr_handler *pohmelfs_xattr_handlers[];
ssize_t pohmelfs_listxattr(struct dentry *dentry, char *list, size_t size);

#endif
