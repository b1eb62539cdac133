// SPDX-License-Identifier: GPL-2.0
/*
 * One TCP connection to one server: the HELLO handshake, sending requests under credits, and
 * a receive thread that matches replies to requests by transaction id. Any framing error or
 * socket error kills the connection: every request on it completes with -ENOTCONN and the
 * server's reconnect work takes over (rpc.c).
 */
#include <linux/kthread.h>
#include <linux/module.h>
#include <linux/net.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/utsname.h>
#include <net/sock.h>
#include <net/tcp.h>

#include "pohmelfs.h"

#define POHMELFS_HANDSHAKE_MAX 4096u

static void fill_hdr(struct pohmelfs_hdr *h, u16 opcode, u32 flags, u32 len, u64 session, u64 trans)
{
	memset(h, 0, sizeof(*h));
	h->magic = cpu_to_le32(POHMELFS_MAGIC);
	h->version = cpu_to_le16(POHMELFS_PROTO_VERSION_MAX);
	h->opcode = cpu_to_le16(opcode);
	h->flags = cpu_to_le32(flags);
	h->length = cpu_to_le32(len);
	h->session = cpu_to_le64(session);
	h->trans = cpu_to_le64(trans);
}

/* Sends the whole of msg's iterator; a short send breaks the stream, so it is an error. */
static int send_iter(struct socket *sock, struct msghdr *msg)
{
	while (msg_data_left(msg)) {
		int n = sock_sendmsg(sock, msg);

		if (n <= 0)
			return n ? n : -EPIPE;
	}
	return 0;
}

/* The socket's write-space callback: also wakes senders waiting in conn_send_iter. */
static void conn_write_space(struct sock *sk)
{
	struct pohmelfs_conn *conn;

	read_lock_bh(&sk->sk_callback_lock);
	conn = sk->sk_user_data;
	if (conn) {
		conn->saved_write_space(sk);
		wake_up_all(&conn->send_wq);
	}
	read_unlock_bh(&sk->sk_callback_lock);
}

static void conn_set_write_space(struct pohmelfs_conn *conn, bool on)
{
	struct sock *sk = conn->sock->sk;

	write_lock_bh(&sk->sk_callback_lock);
	if (on) {
		conn->saved_write_space = sk->sk_write_space;
		sk->sk_user_data = conn;
		sk->sk_write_space = conn_write_space;
	} else {
		sk->sk_write_space = conn->saved_write_space;
		sk->sk_user_data = NULL;
	}
	write_unlock_bh(&sk->sk_callback_lock);
}

/*
 * Sends the whole of msg's iterator without ever sleeping inside the socket: a non-blocking
 * send never looks at signals, so not even SIGKILL can cut a message in half (which would
 * break the stream, and with it every request on the connection). When the send buffer is
 * full it waits uninterruptibly for room, woken by conn_write_space and looking again every
 * second for a reset or a killed connection, at most the mount's timeout.
 */
static int conn_send_iter(struct pohmelfs_conn *conn, struct msghdr *msg)
{
	struct sock *sk = conn->sock->sk;
	unsigned long deadline = jiffies + msecs_to_jiffies(conn->srv->sbi->timeout_ms);

	msg->msg_flags |= MSG_DONTWAIT;
	while (msg_data_left(msg)) {
		int n = sock_sendmsg(conn->sock, msg);

		if (n > 0)
			continue;
		if (n != -EAGAIN)
			return n ? n : -EPIPE;
		if (time_after_eq(jiffies, deadline))
			return -ETIMEDOUT;
		wait_event_timeout(conn->send_wq,
				   sk_stream_is_writeable(sk) || READ_ONCE(sk->sk_err) ||
					   (READ_ONCE(sk->sk_shutdown) & SEND_SHUTDOWN) ||
					   READ_ONCE(conn->dead),
				   min_t(long, HZ, (long)(deadline - jiffies)));
	}
	return 0;
}

static int recv_iter(struct socket *sock, struct iov_iter *iter)
{
	struct msghdr msg = { .msg_flags = MSG_WAITALL | MSG_NOSIGNAL };

	msg.msg_iter = *iter;
	while (msg_data_left(&msg)) {
		int n = sock_recvmsg(sock, &msg, MSG_WAITALL | MSG_NOSIGNAL);

		if (n < 0)
			return n;
		if (n == 0)
			return -ECONNRESET;
	}
	return 0;
}

static int recv_buf(struct socket *sock, void *buf, size_t len)
{
	struct kvec kv = { .iov_base = buf, .iov_len = len };
	struct iov_iter it;

	iov_iter_kvec(&it, ITER_DEST, &kv, 1, len);
	return recv_iter(sock, &it);
}

static int recv_discard(struct socket *sock, size_t len)
{
	struct iov_iter it;

	iov_iter_discard(&it, ITER_DEST, len);
	return recv_iter(sock, &it);
}

static int check_hdr(const struct pohmelfs_hdr *h)
{
	if (le32_to_cpu(h->magic) != POHMELFS_MAGIC)
		return -EPROTO;
	if (le16_to_cpu(h->version) != POHMELFS_PROTO_VERSION_MAX)
		return -EPROTONOSUPPORT;
	if (le32_to_cpu(h->length) > POHMELFS_PAYLOAD_MAX)
		return -EMSGSIZE;
	return 0;
}

/* The next message's header, checked for magic, version and payload size. */
static int recv_hdr(struct socket *sock, struct pohmelfs_hdr *h)
{
	int err = recv_buf(sock, h, sizeof(*h));

	return err ? err : check_hdr(h);
}

/* A server status as a kernel error: ordinary Linux errno values only (kernel-internal codes
 * such as EIOCBQUEUED must never reach the VFS from a server). */
int pohmelfs_status_err(u32 status)
{
	return status && status <= EHWPOISON ? -(int)status : -EIO;
}

/* One synchronous request and reply, before the receive thread runs (handshake). */
static int handshake_call(struct pohmelfs_server *srv, struct socket *sock, u16 opcode,
			  const void *body, size_t body_len, u64 session, void *reply,
			  size_t *reply_len)
{
	struct pohmelfs_hdr h;
	struct kvec iov[2];
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
	u64 trans = atomic64_inc_return(&srv->next_trans);
	u32 len, status;
	int err;

	fill_hdr(&h, opcode, 0, body_len, session, trans);
	iov[0].iov_base = &h;
	iov[0].iov_len = sizeof(h);
	iov[1].iov_base = (void *)body;
	iov[1].iov_len = body_len;
	iov_iter_kvec(&msg.msg_iter, ITER_SOURCE, iov, body_len ? 2 : 1, sizeof(h) + body_len);
	err = send_iter(sock, &msg);
	if (err)
		return err;
	err = recv_hdr(sock, &h);
	if (err)
		return err;
	len = le32_to_cpu(h.length);
	status = le32_to_cpu(h.status);
	if (!(le32_to_cpu(h.flags) & POHMELFS_FLAG_REPLY) || le64_to_cpu(h.trans) != trans ||
	    le16_to_cpu(h.opcode) != opcode || len > POHMELFS_HANDSHAKE_MAX)
		return -EPROTO;
	if (status) {
		recv_discard(sock, len);
		return pohmelfs_status_err(status);
	}
	if (len > *reply_len)
		return -EPROTO;
	*reply_len = len;
	return recv_buf(sock, reply, len);
}

static int handshake(struct pohmelfs_server *srv, struct socket *sock, struct pohmelfs_conn *conn)
{
	struct pohmelfs_sb_info *sbi = srv->sbi;
	size_t name_len = strlen(sbi->name);
	struct {
		struct pohmelfs_hello_req q;
		char name[64];
	} hello;
	u8 *rep_buf;
	struct pohmelfs_hello_rep *rep;
	size_t rep_len = POHMELFS_HANDSHAKE_MAX;
	u16 flags;
	int err;

	rep_buf = kmalloc(POHMELFS_HANDSHAKE_MAX, GFP_KERNEL);
	if (!rep_buf)
		return -ENOMEM;
	rep = (struct pohmelfs_hello_rep *)rep_buf;
	memset(&hello, 0, sizeof(hello));
	hello.q.version_min = cpu_to_le16(POHMELFS_PROTO_VERSION_MIN);
	hello.q.version_max = cpu_to_le16(POHMELFS_PROTO_VERSION_MAX);
	hello.q.max_payload = cpu_to_le32(POHMELFS_PAYLOAD_MAX);
	hello.q.features =
		cpu_to_le64(POHMELFS_FEAT_BATCH | POHMELFS_FEAT_LEASE | POHMELFS_FEAT_XATTR |
			    POHMELFS_FEAT_FALLOCATE | POHMELFS_FEAT_REPLICA);
	hello.q.resume_session = cpu_to_le64(srv->session);
	hello.q.credits = cpu_to_le32(256);
	/* This client has no keys yet: it offers the unprotected channel only. */
	hello.q.crypto_modes = cpu_to_le32(POHMELFS_CRYPTO_NONE);
	hello.q.name_len = cpu_to_le32(name_len);
	memcpy(hello.name, sbi->name, name_len);

	err = handshake_call(srv, sock, POHMELFS_OP_HELLO, &hello, sizeof(hello.q) + name_len, 0,
			     rep_buf, &rep_len);
	if (err)
		goto out;
	if (rep_len < sizeof(*rep) || rep_len != sizeof(*rep) + le32_to_cpu(rep->auth_len)) {
		err = -EPROTO;
		goto out;
	}
	flags = le16_to_cpu(rep->flags);
	if (flags & POHMELFS_HELLO_AUTH) {
		if (le32_to_cpu(rep->auth_len) > sizeof(struct pohmelfs_hello_auth) ||
		    le32_to_cpu(rep->crypto_mode) != POHMELFS_CRYPTO_NONE) {
			pr_err("pohmelfs: server %s requires a key; the kernel client has no key support (docs/kclient.md)\n",
			       srv->uri);
			err = -EACCES;
			goto out;
		}
		rep_len = POHMELFS_HANDSHAKE_MAX;
		err = handshake_call(srv, sock, POHMELFS_OP_AUTH, NULL, 0, 0, rep_buf, &rep_len);
		if (err)
			goto out;
		if (rep_len < sizeof(*rep)) {
			err = -EPROTO;
			goto out;
		}
	}
	if (le32_to_cpu(rep->crypto_mode) != POHMELFS_CRYPTO_NONE ||
	    le16_to_cpu(rep->version) != POHMELFS_PROTO_VERSION_MAX) {
		err = -EPROTO;
		goto out;
	}
	conn->session = le64_to_cpu(rep->session);
	conn->features = le64_to_cpu(rep->features);
	conn->credits = max(le32_to_cpu(rep->credits), 1u);
	conn->read_only = le16_to_cpu(rep->flags) & POHMELFS_HELLO_READONLY;
	if (sbi->have_root && memcmp(&sbi->root, &rep->root, sizeof(sbi->root))) {
		pr_err("pohmelfs: server %s exports a different tree (root id differs)\n",
		       srv->uri);
		err = -ESTALE;
		goto out;
	}
	if (!sbi->have_root) {
		sbi->root = rep->root;
		sbi->have_root = true;
	}
	if (srv->known_id && memcmp(&srv->server_id, &rep->server_id, sizeof(srv->server_id)))
		pr_warn("pohmelfs: server %s came back with another export id\n", srv->uri);
	srv->server_id = rep->server_id;
	srv->known_id = true;
	if (srv->session && srv->session != conn->session)
		pr_info("pohmelfs: server %s: session %016llx gone, new session %016llx\n",
			srv->uri, srv->session, conn->session);
	srv->session = conn->session;
out:
	kfree(rep_buf);
	return err;
}

/* The end of a request: its waiter wakes up, or nobody waits and it is freed. */
static void pohmelfs_req_done(struct pohmelfs_req *req)
{
	if (req->on_done)
		req->on_done(req);
	else if (req->async)
		kfree(req);
	else
		complete(&req->done);
}

/* Fails every request still waiting for a reply. */
static void fail_pending(struct pohmelfs_conn *conn)
{
	struct pohmelfs_req *req;
	unsigned long idx;

	xa_lock(&conn->pending);
	conn->dead = true;
	xa_unlock(&conn->pending);
	xa_for_each (&conn->pending, idx, req) {
		if (xa_erase(&conn->pending, idx) != req)
			continue;
		req->err = -ENOTCONN;
		pohmelfs_req_done(req);
	}
	xa_lock(&conn->pending);
	conn->inflight = 0;
	xa_unlock(&conn->pending);
	wake_up_all(&conn->credit_wq);
}

/* A message the server sends on its own: a LEASE_BREAK (lease.c handles it off this thread). */
static int receive_callback(struct pohmelfs_conn *conn, const struct pohmelfs_hdr *h)
{
	u32 len = le32_to_cpu(h->length);
	u8 buf[sizeof(struct pohmelfs_lease_break)];
	int err;

	if (le16_to_cpu(h->opcode) != POHMELFS_OP_LEASE_BREAK || len < sizeof(buf)) {
		pr_warn("pohmelfs: server %s: callback opcode %u of %u bytes ignored\n",
			conn->srv->uri, le16_to_cpu(h->opcode), len);
		return recv_discard(conn->sock, len);
	}
	err = recv_buf(conn->sock, buf, sizeof(buf));
	if (!err && len > sizeof(buf)) /* fields a newer server appended */
		err = recv_discard(conn->sock, len - sizeof(buf));
	if (!err)
		pohmelfs_lease_break(conn->srv->sbi, buf, sizeof(buf));
	return err;
}

static int receive_one(struct pohmelfs_conn *conn)
{
	struct pohmelfs_hdr h;
	struct pohmelfs_req *req;
	u32 len, flags, status, credits;
	int err;

	err = recv_hdr(conn->sock, &h);
	if (err)
		return err;
	len = le32_to_cpu(h.length);
	flags = le32_to_cpu(h.flags);
	if (flags & POHMELFS_FLAG_SEALED)
		return -EPROTO; /* never negotiated */
	if (flags & POHMELFS_FLAG_CALLBACK)
		return receive_callback(conn, &h);
	if (!(flags & POHMELFS_FLAG_REPLY))
		return -EPROTO;

	credits = le32_to_cpu(h.credits);
	xa_lock(&conn->pending);
	req = __xa_erase(&conn->pending, le64_to_cpu(h.trans));
	if (req && conn->inflight)
		conn->inflight--;
	if (credits)
		conn->credits = credits;
	xa_unlock(&conn->pending);
	wake_up(&conn->credit_wq);
	if (!req) /* abandoned: its waiter killed the connection, which ends here */
		return recv_discard(conn->sock, len);

	status = le32_to_cpu(h.status);
	if (status) {
		req->err = pohmelfs_status_err(status);
		err = recv_discard(conn->sock, len);
	} else if (len > iov_iter_count(&req->dst)) {
		pr_warn("pohmelfs: server %s: reply to %llu too long (%u bytes for opcode %u)\n",
			conn->srv->uri, le64_to_cpu(h.trans), len, req->opcode);
		req->err = -EPROTO;
		err = -EPROTO; /* a broken server: the connection goes */
	} else {
		iov_iter_truncate(&req->dst, len);
		err = recv_iter(conn->sock, &req->dst);
		req->reply_len = len;
		req->err = err ? -ENOTCONN : 0;
	}
	pohmelfs_req_done(req);
	return err;
}

static int pohmelfs_rx(void *arg)
{
	struct pohmelfs_conn *conn = arg;
	unsigned int noio = memalloc_noio_save();
	int err;

	do {
		err = receive_one(conn);
	} while (!err && !kthread_should_stop());
	memalloc_noio_restore(noio);

	fail_pending(conn);
	if (!kthread_should_stop()) {
		if (err != -ECONNRESET && err != -EPIPE)
			pr_warn("pohmelfs: server %s: connection lost (%d)\n", conn->srv->uri, err);
		else
			pr_info("pohmelfs: server %s: connection closed\n", conn->srv->uri);
		pohmelfs_server_conn_lost(conn->srv);
	}
	/* The connection's last reference stops this thread. */
	for (;;) {
		set_current_state(TASK_INTERRUPTIBLE);
		if (kthread_should_stop())
			break;
		schedule();
	}
	__set_current_state(TASK_RUNNING);
	return 0;
}

/* Requests nobody waits for (readahead, RELEASE) have deadlines too: a connection whose
 * oldest request is overdue is considered hung and killed, which completes them all. */
static void conn_watchdog(struct work_struct *work)
{
	struct pohmelfs_conn *conn =
		container_of(to_delayed_work(work), struct pohmelfs_conn, watchdog);
	struct pohmelfs_req *req;
	unsigned long idx;
	u64 overdue = 0;

	xa_lock(&conn->pending);
	xa_for_each (&conn->pending, idx, req) {
		if (time_after(jiffies, req->deadline)) {
			overdue = req->trans;
			break;
		}
	}
	xa_unlock(&conn->pending);
	if (overdue) {
		pr_warn("pohmelfs: server %s: no reply to transaction %llu in %u ms\n",
			conn->srv->uri, overdue, conn->srv->sbi->timeout_ms);
		pohmelfs_conn_kill(conn);
	} else if (!READ_ONCE(conn->dead)) {
		schedule_delayed_work(&conn->watchdog, HZ);
	}
}

int pohmelfs_conn_open(struct pohmelfs_server *srv, struct pohmelfs_conn **out)
{
	struct pohmelfs_sb_info *sbi = srv->sbi;
	struct pohmelfs_conn *conn;
	struct socket *sock;
	int addrlen = srv->addr.ss_family == AF_INET6 ? sizeof(struct sockaddr_in6)
						      : sizeof(struct sockaddr_in);
	long tmo = msecs_to_jiffies(sbi->timeout_ms);
	int err;

	conn = kzalloc(sizeof(*conn), GFP_KERNEL);
	if (!conn)
		return -ENOMEM;
	kref_init(&conn->ref);
	conn->srv = srv;
	mutex_init(&conn->send_mutex);
	init_waitqueue_head(&conn->send_wq);
	xa_init(&conn->pending);
	init_waitqueue_head(&conn->credit_wq);
	INIT_DELAYED_WORK(&conn->watchdog, conn_watchdog);

	err = sock_create_kern(&init_net, srv->addr.ss_family, SOCK_STREAM, IPPROTO_TCP, &sock);
	if (err)
		goto free;
	sock->sk->sk_allocation = GFP_NOFS;
	sock->sk->sk_sndtimeo = tmo;
	sock->sk->sk_rcvtimeo = tmo;
	tcp_sock_set_nodelay(sock->sk);
	err = kernel_connect(sock, (struct sockaddr *)&srv->addr, addrlen, 0);
	if (err)
		goto release;
	err = handshake(srv, sock, conn);
	if (err)
		goto release;
	/* From now on the receive thread waits as long as it takes; requests have deadlines. */
	sock->sk->sk_rcvtimeo = MAX_SCHEDULE_TIMEOUT;
	conn->sock = sock;
	conn->rx = kthread_create(pohmelfs_rx, conn, "pohmelfs-rx/%d", srv->index);
	if (IS_ERR(conn->rx)) {
		err = PTR_ERR(conn->rx);
		conn->sock = NULL;
		goto release;
	}
	get_task_struct(conn->rx);
	conn_set_write_space(conn, true);
	wake_up_process(conn->rx);
	schedule_delayed_work(&conn->watchdog, HZ);
	*out = conn;
	return 0;
release:
	sock_release(sock);
free:
	kfree(conn);
	return err;
}

static void conn_release(struct kref *ref)
{
	struct pohmelfs_conn *conn = container_of(ref, struct pohmelfs_conn, ref);

	kernel_sock_shutdown(conn->sock, SHUT_RDWR);
	cancel_delayed_work_sync(&conn->watchdog);
	kthread_stop(conn->rx);
	put_task_struct(conn->rx);
	conn_set_write_space(conn, false);
	sock_release(conn->sock);
	WARN_ON(!xa_empty(&conn->pending));
	xa_destroy(&conn->pending);
	kfree(conn);
}

/* Never called from the receive thread: the last reference stops it. */
void pohmelfs_conn_put(struct pohmelfs_conn *conn)
{
	if (conn)
		kref_put(&conn->ref, conn_release);
}

/* Breaks the connection; the receive thread fails what is pending. */
void pohmelfs_conn_kill(struct pohmelfs_conn *conn)
{
	kernel_sock_shutdown(conn->sock, SHUT_RDWR);
	wake_up_all(&conn->send_wq);
}

bool pohmelfs_conn_dead(struct pohmelfs_conn *conn)
{
	return READ_ONCE(conn->dead);
}

static bool credit_ok(struct pohmelfs_conn *conn)
{
	bool ok;

	xa_lock(&conn->pending);
	ok = conn->dead || conn->inflight < conn->credits;
	xa_unlock(&conn->pending);
	return ok;
}

int pohmelfs_conn_send(struct pohmelfs_conn *conn, struct pohmelfs_req *req, struct pohmelfs_msg *m,
		       bool resent)
{
	struct pohmelfs_server *srv = conn->srv;
	struct pohmelfs_hdr h;
	struct kvec iov[5];
	struct msghdr msg = { .msg_flags = MSG_NOSIGNAL };
	size_t body = 0, len;
	u64 trans;
	long left;
	int i, err;

	for (i = 0; i < m->niov; i++) {
		iov[i + 1] = m->iov[i];
		body += m->iov[i].iov_len;
	}
	len = body + m->data_len;
	if (!resent)
		req->trans = atomic64_inc_return(&srv->next_trans);
	req->opcode = m->opcode;
	req->err = 0;
	req->reply_len = 0;
	init_completion(&req->done);
	if (m->rpages) {
		iov_iter_bvec(&req->dst, ITER_DEST, m->rpages, m->nrpages, m->rlen);
	} else {
		req->dst_kv.iov_base = m->reply;
		req->dst_kv.iov_len = m->reply_cap;
		iov_iter_kvec(&req->dst, ITER_DEST, &req->dst_kv, 1, m->reply_cap);
	}

	left = wait_event_timeout(conn->credit_wq, credit_ok(conn),
				  msecs_to_jiffies(srv->sbi->timeout_ms));
	if (!left)
		return -ETIMEDOUT;
	/* Built before the request is visible: from then on the receive thread owns it, and an
	 * async one may be freed at any moment. */
	trans = req->trans;
	fill_hdr(&h, m->opcode, resent ? POHMELFS_FLAG_RESENT : 0, len, conn->session, trans);
	req->deadline = jiffies + msecs_to_jiffies(srv->sbi->timeout_ms);
	xa_lock(&conn->pending);
	if (conn->dead) {
		xa_unlock(&conn->pending);
		return -ENOTCONN;
	}
	/* May drop the lock to allocate: the connection may die meanwhile, so look again. */
	err = __xa_insert(&conn->pending, trans, req, GFP_NOFS);
	if (!err && conn->dead) {
		__xa_erase(&conn->pending, trans);
		err = -ENOTCONN;
	}
	if (!err)
		conn->inflight++;
	xa_unlock(&conn->pending);
	if (err)
		return err == -EBUSY ? -EPROTO : err;

	iov[0].iov_base = &h;
	iov[0].iov_len = sizeof(h);
	/* No signal cuts a message in half (conn_send_iter). */
	mutex_lock(&conn->send_mutex);
	if (m->ndata)
		msg.msg_flags |= MSG_MORE;
	iov_iter_kvec(&msg.msg_iter, ITER_SOURCE, iov, m->niov + 1, sizeof(h) + body);
	err = conn_send_iter(conn, &msg);
	if (!err && m->ndata) {
		msg.msg_flags = MSG_NOSIGNAL;
		iov_iter_bvec(&msg.msg_iter, ITER_SOURCE, m->data, m->ndata, m->data_len);
		err = conn_send_iter(conn, &msg);
	}
	mutex_unlock(&conn->send_mutex);
	/* A partial message breaks the stream: the receive thread fails the request. */
	if (err)
		pohmelfs_conn_kill(conn);
	return 0;
}

/* Waits for the reply, at most the mount's timeout; then the connection is considered hung
 * and killed, which completes the request too. */
int pohmelfs_conn_wait(struct pohmelfs_conn *conn, struct pohmelfs_req *req)
{
	if (!wait_for_completion_timeout(&req->done,
					 msecs_to_jiffies(conn->srv->sbi->timeout_ms))) {
		pr_warn("pohmelfs: server %s: no reply to transaction %llu (opcode %u) in %u ms\n",
			conn->srv->uri, req->trans, req->opcode, conn->srv->sbi->timeout_ms);
		pohmelfs_conn_kill(conn);
		wait_for_completion(&req->done);
	}
	return req->err;
}
