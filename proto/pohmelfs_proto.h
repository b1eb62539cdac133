/* SPDX-License-Identifier: GPL-2.0 OR BSD-2-Clause */
/*
 * POHMELFS wire protocol. Shared, unchanged, by the userspace server and client (C++) and by the
 * Linux kernel client (kclient/). Plain C, uapi style:
 *   - every field is fixed width and little-endian on the wire (__le16/__le32/__le64);
 *   - explicit padding, no bitfields, every struct a multiple of 8 bytes with a size assertion;
 *   - object ids are 16 opaque bytes (no byte order).
 *
 * A message is a pohmelfs_hdr followed by hdr.length payload bytes. A request's payload is one
 * command body (the struct for its opcode, then its variable-length tail); a reply's payload is
 * the reply body for that opcode, present only when hdr.status == 0. Variable tails (names,
 * paths, data) follow their struct directly, in the order the struct's length fields list them.
 * Names are not NUL-terminated on the wire.
 *
 * Version changelog:
 *   1: initial protocol (handshake, namespace, data, xattr, tree ops, batch, ping).
 *   2: replication: server_id in the HELLO reply, per-object versions in pohmelfs_attr,
 *      SETATTR_VERSION, the REPLICA command (stale-replica markers).
 *   3: coherence: LEASE (acquire, release, reclaim), the server-to-client LEASE_BREAK
 *      callback, LOCK (POSIX byte-range locks and flock).
 *   4: security: authentication data in HELLO, hello_rep.flags, the AUTH command, sealed
 *      messages (FLAG_SEALED) under a negotiated channel mode (docs/security.md).
 */
#ifndef POHMELFS_PROTO_H
#define POHMELFS_PROTO_H

#include <linux/types.h> /* __u8, __le16, __le32, __le64: in the kernel and in userspace */

#define POHMELFS_MAGIC 0x4d484f50u /* "POHM" read as little-endian bytes */
#define POHMELFS_PROTO_VERSION_MIN 4
#define POHMELFS_PROTO_VERSION_MAX 4

/* Hard limits. A peer that exceeds one gets an error reply (EINVAL, ENAMETOOLONG, E2BIG) or,
 * when the framing itself is broken, a closed connection. */
#define POHMELFS_NAME_MAX 255u        /* one path component */
#define POHMELFS_PATH_MAX 4095u       /* symlink target, mkpath path */
#define POHMELFS_MKPATH_DEPTH_MAX 64u /* components created by one MKPATH */
#define POHMELFS_XATTR_NAME_MAX 255u
#define POHMELFS_XATTR_SIZE_MAX 65536u    /* one xattr value, one listxattr reply */
#define POHMELFS_IO_MAX (1u << 20)        /* one READ or WRITE */
#define POHMELFS_READDIR_MAX (128u << 10) /* one READDIR reply */
#define POHMELFS_BATCH_MAX 64u            /* commands in one BATCH */
/* Largest payload of any message: an IO_MAX write plus its struct, or a full batch. */
#define POHMELFS_PAYLOAD_MAX (POHMELFS_IO_MAX + 64u * 1024u)

/* hdr.flags */
#define POHMELFS_FLAG_REPLY (1u << 0)  /* this message answers hdr.trans */
#define POHMELFS_FLAG_RESENT (1u << 1) /* the client sent this transaction before */
/* A message from the server that is not a reply (LEASE_BREAK): hdr.trans is the server's own
 * counter and nothing answers it directly. */
#define POHMELFS_FLAG_CALLBACK (1u << 2)
/* The payload is body || tags, protected with the session's channel mode (docs/security.md);
 * the header itself is authenticated, not encrypted. */
#define POHMELFS_FLAG_SEALED (1u << 3)

/* Feature bits negotiated in HELLO: the result is the AND of both sides' masks. */
#define POHMELFS_FEAT_BATCH (1ull << 0)
#define POHMELFS_FEAT_TREE_OPS (1ull << 1) /* RMTREE, MKPATH */
#define POHMELFS_FEAT_XATTR (1ull << 2)
#define POHMELFS_FEAT_FALLOCATE (1ull << 3)
#define POHMELFS_FEAT_REPLICA (1ull << 4) /* versions, REPLICA markers */
#define POHMELFS_FEAT_LEASE (1ull << 5)   /* LEASE, LEASE_BREAK, LOCK */
/* READ_RMA, WRITE_RMA: granted only on connections whose transport has RMA (ofi, verbs). */
#define POHMELFS_FEAT_RMA (1ull << 6)
#define POHMELFS_FEAT_ALL                                                                         \
  (POHMELFS_FEAT_BATCH | POHMELFS_FEAT_TREE_OPS | POHMELFS_FEAT_XATTR | POHMELFS_FEAT_FALLOCATE | \
   POHMELFS_FEAT_REPLICA | POHMELFS_FEAT_LEASE | POHMELFS_FEAT_RMA)

/*
 * Channel protection modes. The client offers the modes it accepts in HELLO as a bit mask
 * (pohmelfs_hello.crypto_modes); the server picks exactly one of them and returns that single
 * bit (pohmelfs_hello_reply.crypto_mode). NONE and CRC32C need no key (CRC32C detects accidental
 * corruption only); the others need the cluster key and a mutual proof in the handshake.
 * HMAC_SHA256 authenticates without encrypting; the two AEAD modes authenticate and encrypt.
 */
#define POHMELFS_CRYPTO_NONE (1u << 0)
#define POHMELFS_CRYPTO_CRC32C (1u << 1)
#define POHMELFS_CRYPTO_HMAC_SHA256 (1u << 2)
#define POHMELFS_CRYPTO_AES_256_GCM (1u << 3)
#define POHMELFS_CRYPTO_CHACHA20_POLY1305 (1u << 4)

enum pohmelfs_opcode {
  POHMELFS_OP_HELLO = 1,
  POHMELFS_OP_PING = 2,
  POHMELFS_OP_BATCH = 3,
  POHMELFS_OP_LOOKUP = 10,
  POHMELFS_OP_GETATTR = 11,
  POHMELFS_OP_SETATTR = 12,
  POHMELFS_OP_READDIR = 13,
  POHMELFS_OP_MKDIR = 14,
  POHMELFS_OP_RMDIR = 15,
  POHMELFS_OP_MKNOD = 16, /* create: regular, fifo, char, block, socket */
  POHMELFS_OP_OPEN = 17,
  POHMELFS_OP_RELEASE = 18,
  POHMELFS_OP_READ = 19,
  POHMELFS_OP_WRITE = 20,
  POHMELFS_OP_FSYNC = 21,
  POHMELFS_OP_UNLINK = 22,
  POHMELFS_OP_RENAME = 23,
  POHMELFS_OP_LINK = 24,
  POHMELFS_OP_SYMLINK = 25,
  POHMELFS_OP_READLINK = 26,
  POHMELFS_OP_STATFS = 27,
  POHMELFS_OP_GETXATTR = 28,
  POHMELFS_OP_SETXATTR = 29,
  POHMELFS_OP_LISTXATTR = 30,
  POHMELFS_OP_REMOVEXATTR = 31,
  POHMELFS_OP_FALLOCATE = 32,
  POHMELFS_OP_RMTREE = 33,
  POHMELFS_OP_MKPATH = 34,
  POHMELFS_OP_REPLICA = 35,     /* stale-replica markers (replication bookkeeping) */
  POHMELFS_OP_LEASE = 36,       /* acquire, release or reclaim a lease (the authority only) */
  POHMELFS_OP_LEASE_BREAK = 37, /* server to client: give a lease back (a callback) */
  POHMELFS_OP_LOCK = 38,        /* POSIX byte-range lock or flock (the authority only) */
  POHMELFS_OP_READ_RMA = 39,    /* READ whose data the server RDMA-writes to the client */
  POHMELFS_OP_WRITE_RMA = 40,   /* WRITE whose data the server RDMA-reads from the client */
  POHMELFS_OP_AUTH = 41,        /* the handshake's last step (after a HELLO_AUTH reply) */
  POHMELFS_OP_MAX = 42
};

struct pohmelfs_hdr {
  __le32 magic;
  __le16 version;
  __le16 opcode;
  __le32 flags;
  __le32 length;  /* payload bytes after this header */
  __le64 session; /* chosen by the server in HELLO; 0 before */
  __le64 trans;   /* unique per session, chosen by the client */
  __le32 status;  /* replies: 0 or a positive Linux errno */
  __le32 credits; /* replies: requests the sender may have in flight from now on */
};

struct pohmelfs_oid {
  __u8 bytes[16];
};

struct pohmelfs_attr {
  struct pohmelfs_oid oid;
  __le64 size;
  __le64 blocks;  /* 512-byte units */
  __le64 version; /* per-object change counter: the server adds one on every change to the
                   * object's data, attributes or xattrs (not to a directory's entries); 0 for
                   * an object never changed since its creation. Replicas that applied the
                   * same changes agree; a replica that missed one has a smaller value. */
  __le64 rdev;    /* Linux encoding, as st_rdev */
  __le64 atime_sec;
  __le64 mtime_sec;
  __le64 ctime_sec;
  __le32 atime_nsec;
  __le32 mtime_nsec;
  __le32 ctime_nsec;
  __le32 mode;
  __le32 uid;
  __le32 gid;
  __le32 nlink;
  __le32 blksize;
};

/* HELLO: the first message on every connection, trans 0, session 0 or a session to resume. */
struct pohmelfs_hello_req {
  __le16 version_min;
  __le16 version_max;
  __le32 max_payload; /* largest payload the client accepts */
  __le64 features;
  __le64 resume_session; /* 0: new session */
  __le32 credits;        /* replies the client can buffer (informative) */
  __le32 crypto_modes;   /* POHMELFS_CRYPTO_* offered */
  __le32 auth_len;       /* bytes of authentication data after this struct (0 in version 1) */
  __le32 name_len;       /* bytes of client name (for logs) after the auth data */
};

struct pohmelfs_hello_rep {
  __le16 version;
  __le16 flags;       /* POHMELFS_HELLO_* */
  __le32 max_payload; /* largest payload the server accepts */
  __le64 features;
  __le64 session;
  __le32 credits;     /* requests the client may have in flight */
  __le32 crypto_mode; /* the chosen POHMELFS_CRYPTO_* */
  struct pohmelfs_oid root;
  __le32 auth_len; /* bytes of authentication data after this struct */
  __le32 pad1;
  struct pohmelfs_oid server_id; /* this export's identity, stable across restarts */
};

#define POHMELFS_HELLO_AUTH 1     /* finish with AUTH; session, root and server_id are 0 */
#define POHMELFS_HELLO_READONLY 2 /* this client may not change the export (EROFS) */

/* Authentication data (auth_len bytes) of a HELLO request: empty, or the client's nonce. */
struct pohmelfs_hello_auth {
  __u8 nonce[32];
};

/* Of a HELLO reply with POHMELFS_HELLO_AUTH: the server's nonce, and its proof of the key
 * (HMAC-SHA256 over the transcript, docs/security.md) when it has one (auth_len 64), else
 * auth_len 32. */
struct pohmelfs_hello_rep_auth {
  __u8 nonce[32];
  __u8 proof[32];
};

/* AUTH: the client's proof (32 bytes) when the server sent one, else an empty payload. The
 * reply (sealed when a channel mode other than none was chosen) is a pohmelfs_hello_rep with
 * the session, root and server_id filled in, and no auth data. EACCES: wrong or missing key. */
struct pohmelfs_auth_req {
  __u8 proof[32];
};

/* Requests that name one object. GETATTR, READLINK, RELEASE: no reply body other than the
 * attr (GETATTR) or the target bytes (READLINK). */
struct pohmelfs_obj_req {
  struct pohmelfs_oid oid;
};

/* LOOKUP, UNLINK, RMDIR, RMTREE: a name in a directory. Name follows. */
struct pohmelfs_name_req {
  struct pohmelfs_oid parent;
  __le32 name_len;
  __le32 pad;
};

/* setattr valid bits */
#define POHMELFS_SETATTR_MODE (1u << 0)
#define POHMELFS_SETATTR_UID (1u << 1)
#define POHMELFS_SETATTR_GID (1u << 2)
#define POHMELFS_SETATTR_SIZE (1u << 3)
#define POHMELFS_SETATTR_ATIME (1u << 4)
#define POHMELFS_SETATTR_MTIME (1u << 5)
#define POHMELFS_SETATTR_ATIME_NOW (1u << 6)
#define POHMELFS_SETATTR_MTIME_NOW (1u << 7)
/* Sets attr.version to `version` instead of adding one (used by resync, after copying). */
#define POHMELFS_SETATTR_VERSION (1u << 8)

struct pohmelfs_setattr_req {
  struct pohmelfs_oid oid;
  __le32 valid;
  __le32 mode;
  __le32 uid;
  __le32 gid;
  __le64 size;
  __le64 atime_sec;
  __le64 mtime_sec;
  __le32 atime_nsec;
  __le32 mtime_nsec;
  __le64 version; /* with POHMELFS_SETATTR_VERSION */
};                /* reply: pohmelfs_attr */

/* READDIR: entries after the cookie, up to max_bytes of reply. Cookie 0 starts. */
struct pohmelfs_readdir_req {
  struct pohmelfs_oid dir;
  __le64 cookie;
  __le32 max_bytes;
  __le32 pad;
};
struct pohmelfs_readdir_rep {
  __le32 count;
  __le32 eof;
}; /* then count entries, each pohmelfs_dirent + name padded to 8 bytes */
struct pohmelfs_dirent {
  struct pohmelfs_attr attr;
  __le64 next_cookie;
  __le32 name_len;
  __le32 pad;
};

/* MKDIR and MKNOD: new_oid is chosen by the client, so that every replica agrees. Name
 * follows. Reply: pohmelfs_attr. */
struct pohmelfs_create_req {
  struct pohmelfs_oid parent;
  struct pohmelfs_oid new_oid;
  __le32 mode; /* with S_IFMT for MKNOD */
  __le32 uid;
  __le32 gid;
  __le32 name_len;
  __le64 rdev;
  __le32 flags; /* MKNOD: POHMELFS_CREATE_EXCL */
  __le32 pad;
};
#define POHMELFS_CREATE_EXCL (1u << 0)
#define POHMELFS_CREATE_OPEN                                          \
  (1u << 1) /* MKNOD of a regular file: also OPEN it (one round trip) \
             */
/* MKNOD, MKDIR: the creating session takes a WRITE lease on the new object (version 3), so
 * that it may go on caching and delaying changes to it without asking. The server grants it
 * before the create runs (a session that finds the new object and asks for it breaks the
 * creator's lease, which may reach the creator before the create's reply) and drops it again
 * when the create fails or, in a BATCH, does not run. */
#define POHMELFS_CREATE_LEASE (1u << 2)

/* OPEN: checks the object and applies O_TRUNC; the handle lives in the client. Reply: attr. */
struct pohmelfs_open_req {
  struct pohmelfs_oid oid;
  __le32 flags; /* POHMELFS_OPEN_* */
  __le32 pad;
};
#define POHMELFS_OPEN_WRITE (1u << 0)
#define POHMELFS_OPEN_TRUNC (1u << 1)

/* READ: reply is the data (short at end of file). */
struct pohmelfs_read_req {
  struct pohmelfs_oid oid;
  __le64 offset;
  __le32 size;
  __le32 pad;
};

/* WRITE: data follows. Reply: pohmelfs_write_rep. */
struct pohmelfs_write_req {
  struct pohmelfs_oid oid;
  __le64 offset;
  __le32 size;
  __le32 flags; /* POHMELFS_WRITE_APPEND */
};
#define POHMELFS_WRITE_APPEND (1u << 0)
struct pohmelfs_write_rep {
  __le64 written;
  __le64 size; /* file size after the write */
};

/* A client buffer registered for RMA: the server reads or writes len bytes at addr with key
 * (FEAT_RMA). */
struct pohmelfs_rma_buf {
  __le64 addr;
  __le64 key;
  __le32 len;
  __le32 pad;
};

/* Sealed RMA data (docs/security.md): the bytes in the RMA buffer are protected with a fresh
 * key of their own, in the channel's mode (ciphertext for the AEAD modes), and the message
 * that names the buffer carries that key and the tags, protected by the channel. The tags
 * follow this struct (tags_len bytes, the channel cipher's segment tags for the data, with
 * seq 0 and the associated data oid, offset and size of the transfer). */
struct pohmelfs_rma_seal {
  __le32 mode; /* a POHMELFS_CRYPTO_* bit */
  __le32 tags_len;
  __u8 key[32];
};

/* READ_RMA: the server writes up to size bytes from offset into buf (size <= buf.len <=
 * IO_MAX), then replies with pohmelfs_read_rma_rep (bytes placed; fewer at end of file). On a
 * channel with a mode other than none, or when the request asks with POHMELFS_RMA_SEALED, the
 * data is sealed: the reply has POHMELFS_RMA_SEALED and a pohmelfs_rma_seal with its tags. */
#define POHMELFS_RMA_SEALED (1u << 1)
struct pohmelfs_read_rma_req {
  struct pohmelfs_oid oid;
  __le64 offset;
  __le32 size;
  __le32 flags; /* POHMELFS_RMA_SEALED */
  struct pohmelfs_rma_buf buf;
};
struct pohmelfs_read_rma_rep {
  __le32 bytes;
  __le32 flags; /* POHMELFS_RMA_SEALED: a pohmelfs_rma_seal and its tags follow */
};

/* WRITE_RMA: a WRITE whose size bytes the server reads from buf (size <= buf.len <= IO_MAX)
 * instead of from the message. Reply: pohmelfs_write_rep. With POHMELFS_RMA_SEALED (required
 * on a channel with a mode other than none) a pohmelfs_rma_seal and its tags follow, and the
 * server checks (and decrypts) the data before writing it. */
struct pohmelfs_write_rma_req {
  struct pohmelfs_oid oid;
  __le64 offset;
  __le32 size;
  __le32 flags; /* POHMELFS_WRITE_APPEND, POHMELFS_RMA_SEALED */
  struct pohmelfs_rma_buf buf;
};

struct pohmelfs_fsync_req {
  struct pohmelfs_oid oid;
  __le32 datasync;
  __le32 pad;
};

/* RENAME: old name then new name follow. */
#define POHMELFS_RENAME_NOREPLACE (1u << 0)
#define POHMELFS_RENAME_EXCHANGE (1u << 1)
struct pohmelfs_rename_req {
  struct pohmelfs_oid old_parent;
  struct pohmelfs_oid new_parent;
  __le32 old_len;
  __le32 new_len;
  __le32 flags;
  __le32 pad;
};

/* LINK: new name follows. Reply: attr of the target. */
struct pohmelfs_link_req {
  struct pohmelfs_oid oid;
  struct pohmelfs_oid new_parent;
  __le32 name_len;
  __le32 pad;
};

/* SYMLINK: name then target follow. Reply: attr. */
struct pohmelfs_symlink_req {
  struct pohmelfs_oid parent;
  struct pohmelfs_oid new_oid;
  __le32 uid;
  __le32 gid;
  __le32 name_len;
  __le32 target_len;
};

struct pohmelfs_statfs_rep {
  __le64 blocks;
  __le64 bfree;
  __le64 bavail;
  __le64 files;
  __le64 ffree;
  __le32 bsize;
  __le32 namemax;
};

/* GETXATTR: name follows; size 0 asks for the value's size (reply: __le32 size). */
struct pohmelfs_getxattr_req {
  struct pohmelfs_oid oid;
  __le32 size;
  __le32 name_len;
};
/* SETXATTR: name then value follow. flags: XATTR_CREATE (1), XATTR_REPLACE (2). */
struct pohmelfs_setxattr_req {
  struct pohmelfs_oid oid;
  __le32 flags;
  __le32 name_len;
  __le32 value_len;
  __le32 pad;
};
/* LISTXATTR: size 0 asks for the size (reply: __le32 size); else reply is the list. */
struct pohmelfs_listxattr_req {
  struct pohmelfs_oid oid;
  __le32 size;
  __le32 pad;
};
/* REMOVEXATTR: name follows. */
struct pohmelfs_removexattr_req {
  struct pohmelfs_oid oid;
  __le32 name_len;
  __le32 pad;
};

struct pohmelfs_fallocate_req {
  struct pohmelfs_oid oid;
  __le64 offset;
  __le64 length;
  __le32 mode; /* FALLOC_FL_* */
  __le32 pad;
};

/* MKPATH: creates "a/b/c" below parent with every missing directory; component i that must be
 * created gets oids[i]. path_len bytes of path follow, then count oids. Reply: attr of the
 * last component. An existing component that is not a directory fails with ENOTDIR. */
struct pohmelfs_mkpath_req {
  struct pohmelfs_oid parent;
  __le32 mode;
  __le32 uid;
  __le32 gid;
  __le32 path_len;
  __le32 count;
  __le32 pad;
};

/* BATCH: count commands, each a pohmelfs_cmd + body padded to 8 bytes. Executed in order;
 * the first failure stops the batch. Reply: pohmelfs_batch_rep, then one pohmelfs_cmd_rep +
 * body (padded to 8) per executed command. */
struct pohmelfs_batch_req {
  __le32 count;
  __le32 pad;
};
struct pohmelfs_cmd {
  __le16 opcode;
  __le16 pad0;
  __le32 length;
};
struct pohmelfs_batch_rep {
  __le32 count; /* commands executed, including a failed last one */
  __le32 pad;
};
struct pohmelfs_cmd_rep {
  __le16 opcode;
  __le16 pad0;
  __le32 status;
  __le32 length;
  __le32 pad1;
};

/* REPLICA: stale-replica markers, kept durably by each server. A marker for peer P on server S
 * means "S holds changes that P missed" (P was down or failed while S applied them). MARK and
 * CLEAR are idempotent; LIST replies pohmelfs_replica_list_rep followed by count oids. */
#define POHMELFS_REPLICA_MARK 1u
#define POHMELFS_REPLICA_CLEAR 2u
#define POHMELFS_REPLICA_LIST 3u
#define POHMELFS_REPLICA_LIST_MAX 256u
struct pohmelfs_replica_req {
  __le32 cmd;
  __le32 pad;
  struct pohmelfs_oid peer; /* MARK, CLEAR: the peer's server_id */
};
struct pohmelfs_replica_list_rep {
  __le32 count;
  __le32 pad;
};

/* LEASE. One server per object, the lease authority, grants leases: READ to many sessions at
 * once, WRITE to one. A holder caches the object's attributes and data (and, for a directory,
 * its entries) while it holds a lease, and with WRITE it may also delay its changes.
 *
 * ACQUIRE waits until the lease can be granted: conflicting holders get a LEASE_BREAK and must
 * flush and RELEASE (or downgrade) within the server's break timeout, or they are evicted: their
 * leases are dropped, and their next change to the object fails with EIO. The reply carries the
 * object's current attributes. ACQUIRE of a mode already held (or weaker) is granted at once.
 * RELEASE with mode READ downgrades a WRITE lease; with mode 0 it drops the lease.
 * RECLAIM (flag of ACQUIRE) re-takes, from a new authority, a lease held from the previous one:
 * the first reclaim opens a grace period during which ordinary acquires wait.
 * The byte range travels on the wire; this version always grants the whole object. */
#define POHMELFS_LEASE_ACQUIRE 1u
#define POHMELFS_LEASE_RELEASE 2u
#define POHMELFS_LEASE_NONE 0u
#define POHMELFS_LEASE_READ 1u
#define POHMELFS_LEASE_WRITE 2u
#define POHMELFS_LEASE_RECLAIM (1u << 0)
struct pohmelfs_lease_req {
  struct pohmelfs_oid oid;
  __le32 cmd;
  __le32 mode;
  __le64 start;
  __le64 length; /* 0: to the end of the object */
  __le32 flags;  /* POHMELFS_LEASE_RECLAIM */
  __le32 pad;
};
struct pohmelfs_lease_rep { /* ACQUIRE */
  struct pohmelfs_attr attr;
  __le64 start;
  __le64 length;
  __le32 mode;     /* granted */
  __le32 break_ms; /* the server's break timeout: how long a holder has to give a lease back */
  __le64 seq;      /* this grant's number; a later break names the grant it breaks */
};
/* LEASE_BREAK (flag CALLBACK): give back the lease on oid, keeping at most `keep` (NONE or
 * READ). The holder flushes what it delayed, drops what it cached beyond `keep`, and sends
 * LEASE RELEASE with mode = keep. */
struct pohmelfs_lease_break {
  struct pohmelfs_oid oid;
  __le32 keep;
  __le32 pad;
  __le64 start;
  __le64 length;
  __le64 seq; /* the grant broken: a client that has not seen that grant's reply yet waits
               * for it before acting on the break */
};

/* LOCK: POSIX byte-range locks (owner = the client's lock owner) and flock (flag FLOCK, whole
 * file). GETLK replies pohmelfs_lock_rep (type F_UNLCK when the lock could be placed).
 * SETLK fails with EAGAIN on a conflict. SETLKW waits for at most a bound the server chooses
 * and then fails with EINPROGRESS: the client asks again. Locks of a session that loses its
 * connection for longer than the break timeout are dropped. Types are F_RDLCK (0), F_WRLCK (1),
 * F_UNLCK (2) as on Linux. */
#define POHMELFS_LOCK_GETLK 1u
#define POHMELFS_LOCK_SETLK 2u
#define POHMELFS_LOCK_SETLKW 3u
#define POHMELFS_LOCK_FLOCK (1u << 0)
/* A lock placed again with a new authority after a failover: not held back by the grace
 * period, during which ordinary lock requests wait. */
#define POHMELFS_LOCK_RECLAIM (1u << 1)
struct pohmelfs_lock_req {
  struct pohmelfs_oid oid;
  __le64 owner;
  __le64 start;
  __le64 length; /* 0: to the end of the file */
  __le32 cmd;
  __le32 type;
  __le32 flags;
  __le32 pid; /* for GETLK answers, informative */
};
struct pohmelfs_lock_rep {
  __le64 start;
  __le64 length;
  __le32 type;
  __le32 pid;
};

#define POHMELFS_PAD8(n) (((n) + 7u) & ~7u)

#ifdef __cplusplus
#define POHMELFS_ASSERT_SIZE(t, n) static_assert(sizeof(struct t) == (n), #t)
#else
#define POHMELFS_ASSERT_SIZE(t, n) _Static_assert(sizeof(struct t) == (n), #t)
#endif
POHMELFS_ASSERT_SIZE(pohmelfs_hdr, 40);
POHMELFS_ASSERT_SIZE(pohmelfs_oid, 16);
POHMELFS_ASSERT_SIZE(pohmelfs_attr, 104);
POHMELFS_ASSERT_SIZE(pohmelfs_hello_req, 40);
POHMELFS_ASSERT_SIZE(pohmelfs_hello_rep, 72);
POHMELFS_ASSERT_SIZE(pohmelfs_hello_auth, 32);
POHMELFS_ASSERT_SIZE(pohmelfs_hello_rep_auth, 64);
POHMELFS_ASSERT_SIZE(pohmelfs_auth_req, 32);
POHMELFS_ASSERT_SIZE(pohmelfs_obj_req, 16);
POHMELFS_ASSERT_SIZE(pohmelfs_name_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_setattr_req, 72);
POHMELFS_ASSERT_SIZE(pohmelfs_readdir_req, 32);
POHMELFS_ASSERT_SIZE(pohmelfs_readdir_rep, 8);
POHMELFS_ASSERT_SIZE(pohmelfs_dirent, 120);
POHMELFS_ASSERT_SIZE(pohmelfs_create_req, 64);
POHMELFS_ASSERT_SIZE(pohmelfs_open_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_read_req, 32);
POHMELFS_ASSERT_SIZE(pohmelfs_write_req, 32);
POHMELFS_ASSERT_SIZE(pohmelfs_write_rep, 16);
POHMELFS_ASSERT_SIZE(pohmelfs_rma_buf, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_read_rma_req, 56);
POHMELFS_ASSERT_SIZE(pohmelfs_read_rma_rep, 8);
POHMELFS_ASSERT_SIZE(pohmelfs_write_rma_req, 56);
POHMELFS_ASSERT_SIZE(pohmelfs_rma_seal, 40);
POHMELFS_ASSERT_SIZE(pohmelfs_fsync_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_rename_req, 48);
POHMELFS_ASSERT_SIZE(pohmelfs_link_req, 40);
POHMELFS_ASSERT_SIZE(pohmelfs_symlink_req, 48);
POHMELFS_ASSERT_SIZE(pohmelfs_statfs_rep, 48);
POHMELFS_ASSERT_SIZE(pohmelfs_getxattr_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_setxattr_req, 32);
POHMELFS_ASSERT_SIZE(pohmelfs_listxattr_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_removexattr_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_fallocate_req, 40);
POHMELFS_ASSERT_SIZE(pohmelfs_mkpath_req, 40);
POHMELFS_ASSERT_SIZE(pohmelfs_batch_req, 8);
POHMELFS_ASSERT_SIZE(pohmelfs_cmd, 8);
POHMELFS_ASSERT_SIZE(pohmelfs_batch_rep, 8);
POHMELFS_ASSERT_SIZE(pohmelfs_cmd_rep, 16);
POHMELFS_ASSERT_SIZE(pohmelfs_replica_req, 24);
POHMELFS_ASSERT_SIZE(pohmelfs_replica_list_rep, 8);
POHMELFS_ASSERT_SIZE(pohmelfs_lease_req, 48);
POHMELFS_ASSERT_SIZE(pohmelfs_lease_rep, 136);
POHMELFS_ASSERT_SIZE(pohmelfs_lease_break, 48);
POHMELFS_ASSERT_SIZE(pohmelfs_lock_req, 56);
POHMELFS_ASSERT_SIZE(pohmelfs_lock_rep, 24);

#endif /* POHMELFS_PROTO_H */
