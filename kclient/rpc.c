// SPDX-License-Identifier: GPL-2.0
/*
 * The mount's servers (docs/replication.md, docs/kclient.md): reads go to one up server of the
 * highest priority, in turn among equals, and move to the next on a transport error; changes
 * go to every writable server in parallel and the answer of the highest-priority one that
 * answered is the result. A server that misses a change another applied is stale for this
 * mount (never read from again) and every server that applied it gets a REPLICA MARK naming
 * it, once per pair, so that a resync (pohmelfsctl, or a FUSE mount) repairs it later.
 * Servers that are down are reconnected in the background every second; a call that finds no
 * usable server waits for one, at most the mount's timeout.
 */
#include <linux/inet.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>

#include "pohmelfs.h"

#define POHMELFS_RECONNECT_MS 1000

struct workqueue_struct *pohmelfs_wq;
struct workqueue_struct *pohmelfs_meta_wq;

int pohmelfs_rpc_init(void)
{
	pohmelfs_wq = alloc_workqueue("pohmelfs", WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	if (!pohmelfs_wq)
		return -ENOMEM;
	pohmelfs_meta_wq = alloc_workqueue("pohmelfs_meta", WQ_MEM_RECLAIM | WQ_UNBOUND, 0);
	if (!pohmelfs_meta_wq) {
		destroy_workqueue(pohmelfs_wq);
		return -ENOMEM;
	}
	return 0;
}

void pohmelfs_rpc_exit(void)
{
	destroy_workqueue(pohmelfs_meta_wq);
	destroy_workqueue(pohmelfs_wq);
}

/* "tcp://A.B.C.D:PORT" or "tcp://[v6]:PORT", then optionally "?prio=N&perm=r|w|rw". */
int pohmelfs_parse_server(struct pohmelfs_server *srv, const char *spec)
{
	const char *host, *end, *query, *p;
	char port_str[8];
	size_t host_len, len;
	u16 port;
	int err;

	if (strlen(spec) >= sizeof(srv->uri))
		return -ENAMETOOLONG;
	strscpy(srv->uri, spec, sizeof(srv->uri));
	if (strncmp(spec, "tcp://", 6)) {
		pr_err("pohmelfs: server '%s': only tcp:// servers are supported by the kernel client\n",
		       spec);
		return -EPROTONOSUPPORT;
	}
	host = spec + 6;
	query = strchr(host, '?');
	len = query ? query - host : strlen(host);
	srv->prio = 0;
	srv->may_read = srv->may_write = true;
	memset(&srv->addr, 0, sizeof(srv->addr));
	if (host[0] == '[') {
		end = strnchr(host, len, ']');
		if (!end || end + 1 >= host + len || end[1] != ':')
			return -EINVAL;
		host_len = end - host - 1;
		p = end + 2;
	} else {
		end = strnchr(host, len, ':');
		if (!end)
			return -EINVAL;
		host_len = end - host;
		p = end + 1;
	}
	if (host + len - p >= sizeof(port_str) || host + len == p)
		return -EINVAL;
	memcpy(port_str, p, host + len - p);
	port_str[host + len - p] = 0;
	err = kstrtou16(port_str, 10, &port);
	if (err || !port)
		return -EINVAL;
	if (host[0] == '[') {
		struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)&srv->addr;

		if (!in6_pton(host + 1, host_len, a6->sin6_addr.s6_addr, -1, NULL))
			return -EINVAL;
		a6->sin6_family = AF_INET6;
		a6->sin6_port = htons(port);
	} else {
		struct sockaddr_in *a4 = (struct sockaddr_in *)&srv->addr;

		if (!in4_pton(host, host_len, (u8 *)&a4->sin_addr.s_addr, -1, NULL)) {
			pr_err("pohmelfs: server '%s': give a numeric IPv4 or [IPv6] address\n",
			       spec);
			return -EINVAL;
		}
		a4->sin_family = AF_INET;
		a4->sin_port = htons(port);
	}
	while (query && *query) {
		char key[8], val[16];
		const char *amp, *eq;

		query++;
		amp = strchrnul(query, '&');
		eq = strnchr(query, amp - query, '=');
		if (!eq || eq - query >= sizeof(key) || amp - eq - 1 >= sizeof(val))
			return -EINVAL;
		memcpy(key, query, eq - query);
		key[eq - query] = 0;
		memcpy(val, eq + 1, amp - eq - 1);
		val[amp - eq - 1] = 0;
		if (!strcmp(key, "prio")) {
			if (kstrtoint(val, 10, &srv->prio))
				return -EINVAL;
		} else if (!strcmp(key, "perm")) {
			if (strcmp(val, "r") && strcmp(val, "w") && strcmp(val, "rw"))
				return -EINVAL;
			srv->may_read = strchr(val, 'r');
			srv->may_write = strchr(val, 'w');
		} else {
			pr_err("pohmelfs: server '%s': unknown option '%s'\n", spec, key);
			return -EINVAL;
		}
		query = *amp ? amp : NULL;
	}
	return 0;
}

static struct pohmelfs_conn *server_conn(struct pohmelfs_server *srv)
{
	struct pohmelfs_conn *conn;

	spin_lock(&srv->lock);
	conn = srv->conn;
	if (conn && !pohmelfs_conn_dead(conn))
		kref_get(&conn->ref);
	else
		conn = NULL;
	spin_unlock(&srv->lock);
	return conn;
}

static bool server_up(struct pohmelfs_server *srv)
{
	bool up;

	spin_lock(&srv->lock);
	up = srv->conn && !pohmelfs_conn_dead(srv->conn);
	spin_unlock(&srv->lock);
	return up;
}

/* Detaches a dead connection; returns it for the caller to put outside the lock. */
static struct pohmelfs_conn *detach_dead(struct pohmelfs_server *srv)
{
	struct pohmelfs_conn *old = NULL;

	spin_lock(&srv->lock);
	if (srv->conn && pohmelfs_conn_dead(srv->conn)) {
		old = srv->conn;
		srv->conn = NULL;
	}
	spin_unlock(&srv->lock);
	return old;
}

static int server_connect(struct pohmelfs_server *srv)
{
	struct pohmelfs_conn *conn, *old;
	int err;

	mutex_lock(&srv->connect_mutex);
	pohmelfs_conn_put(detach_dead(srv));
	if (server_up(srv)) {
		mutex_unlock(&srv->connect_mutex);
		return 0;
	}
	err = pohmelfs_conn_open(srv, &conn);
	if (!err) {
		spin_lock(&srv->lock);
		old = srv->conn;
		srv->conn = conn;
		spin_unlock(&srv->lock);
		pohmelfs_conn_put(old);
		wake_up_all(&srv->sbi->up_wq);
	}
	mutex_unlock(&srv->connect_mutex);
	return err;
}

static void reconnect_work(struct work_struct *work)
{
	struct pohmelfs_server *srv =
		container_of(to_delayed_work(work), struct pohmelfs_server, reconnect);
	unsigned int noio = memalloc_noio_save();
	int err;

	if (READ_ONCE(srv->sbi->shutting_down))
		goto out;
	err = server_connect(srv);
	if (err) {
		queue_delayed_work(pohmelfs_wq, &srv->reconnect,
				   msecs_to_jiffies(POHMELFS_RECONNECT_MS));
	} else {
		pr_info("pohmelfs: server %s: connected (session %016llx)%s\n", srv->uri,
			srv->session, srv->stale ? ", stale: not read from by this mount" : "");
	}
out:
	memalloc_noio_restore(noio);
}

void pohmelfs_server_conn_lost(struct pohmelfs_server *srv)
{
	if (READ_ONCE(srv->sbi->shutting_down))
		return;
	/* A break sent while the connection was going down is lost: leases are not trusted. */
	if (srv->may_write)
		pohmelfs_leases_drop_all(srv->sbi);
	queue_delayed_work(pohmelfs_wq, &srv->reconnect, 0);
}

int pohmelfs_servers_start(struct pohmelfs_sb_info *sbi)
{
	int i, err, first_err = -EHOSTUNREACH, up = 0;

	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];

		srv->sbi = sbi;
		srv->index = i;
		spin_lock_init(&srv->lock);
		mutex_init(&srv->connect_mutex);
		atomic64_set(&srv->next_trans, 0);
		INIT_DELAYED_WORK(&srv->reconnect, reconnect_work);
	}
	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];

		err = server_connect(srv);
		if (err) {
			pr_warn("pohmelfs: server %s: cannot connect (%d); retrying in the background\n",
				srv->uri, err);
			if (first_err == -EHOSTUNREACH || err == -EACCES || err == -ESTALE)
				first_err = err;
			if (err == -EACCES || err == -ESTALE)
				return err;
			queue_delayed_work(pohmelfs_wq, &srv->reconnect,
					   msecs_to_jiffies(POHMELFS_RECONNECT_MS));
		} else {
			up++;
			pr_info("pohmelfs: server %s: connected (session %016llx)\n", srv->uri,
				srv->session);
		}
	}
	return up ? 0 : first_err;
}

void pohmelfs_servers_stop(struct pohmelfs_sb_info *sbi)
{
	int i;

	WRITE_ONCE(sbi->shutting_down, true);
	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];
		struct pohmelfs_conn *conn;

		if (!srv->sbi)
			continue;
		cancel_delayed_work_sync(&srv->reconnect);
		mutex_lock(&srv->connect_mutex);
		spin_lock(&srv->lock);
		conn = srv->conn;
		srv->conn = NULL;
		spin_unlock(&srv->lock);
		mutex_unlock(&srv->connect_mutex);
		/* Stops the receive thread, the only other source of reconnect work. */
		pohmelfs_conn_put(conn);
		cancel_delayed_work_sync(&srv->reconnect);
	}
	wake_up_all(&sbi->up_wq);
}

bool pohmelfs_read_only(struct pohmelfs_sb_info *sbi)
{
	int i, writers = 0;
	bool ro = false;

	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];
		struct pohmelfs_conn *conn;

		if (!srv->may_write)
			continue;
		writers++;
		conn = server_conn(srv);
		if (conn && conn->read_only)
			ro = true;
		pohmelfs_conn_put(conn);
	}
	return ro || !writers;
}

bool pohmelfs_writers_lease(struct pohmelfs_sb_info *sbi)
{
	const u64 need = POHMELFS_FEAT_BATCH | POHMELFS_FEAT_LEASE;
	int i, up = 0;

	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];
		struct pohmelfs_conn *conn;
		bool ok;

		if (!srv->may_write)
			continue;
		conn = server_conn(srv);
		if (!conn)
			continue;
		ok = (conn->features & need) == need;
		pohmelfs_conn_put(conn);
		if (!ok)
			return false;
		up++;
	}
	return up;
}

static bool is_transport_error(int err)
{
	return err == -ENOTCONN || err == -ETIMEDOUT;
}

/* The reader to try next: up, readable, not stale, not tried yet, highest priority; in turn
 * among equals. */
static struct pohmelfs_server *pick_reader(struct pohmelfs_sb_info *sbi, unsigned long tried)
{
	struct pohmelfs_server *cand[POHMELFS_MAX_SERVERS];
	int i, n = 0, best = INT_MIN;

	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];

		if (!srv->may_read || READ_ONCE(srv->stale) || (tried & BIT(i)) || !server_up(srv))
			continue;
		if (srv->prio > best) {
			best = srv->prio;
			n = 0;
		}
		if (srv->prio == best)
			cand[n++] = srv;
	}
	if (!n)
		return NULL;
	return cand[(unsigned int)atomic_inc_return(&sbi->read_turn) % n];
}

static bool reader_up(struct pohmelfs_sb_info *sbi)
{
	return READ_ONCE(sbi->shutting_down) || pick_reader(sbi, 0);
}

int pohmelfs_read_call(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(sbi->timeout_ms);
	unsigned long tried = 0;
	struct pohmelfs_req req;
	int err;

	/* A send cut by SIGKILL would break the connection for every user of it. */
	if (fatal_signal_pending(current))
		return -EINTR;
	pohmelfs_mq_drain(sbi);
	for (;;) {
		struct pohmelfs_server *srv = pick_reader(sbi, tried);
		struct pohmelfs_conn *conn;

		if (!srv) {
			long left = (long)(deadline - jiffies);

			if (left <= 0 || READ_ONCE(sbi->shutting_down) ||
			    !wait_event_timeout(sbi->up_wq, reader_up(sbi), left))
				return -EIO;
			tried = 0;
			continue;
		}
		conn = server_conn(srv);
		if (!conn) {
			tried |= BIT(srv->index);
			continue;
		}
		err = pohmelfs_conn_send(conn, &req, m, false);
		if (!err)
			err = pohmelfs_conn_wait(conn, &req);
		pohmelfs_conn_put(conn);
		if (is_transport_error(err)) {
			tried |= BIT(srv->index);
			continue;
		}
		m->reply_len = req.reply_len;
		return err;
	}
}

int pohmelfs_read_send(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m,
		       struct pohmelfs_req *req)
{
	struct pohmelfs_server *srv;
	struct pohmelfs_conn *conn;
	int err;

	pohmelfs_mq_drain(sbi);
	srv = pick_reader(sbi, 0);
	conn = srv ? server_conn(srv) : NULL;
	if (!conn)
		return -ENOTCONN;
	err = pohmelfs_conn_send(conn, req, m, false);
	pohmelfs_conn_put(conn);
	return err;
}

static bool writer_up(struct pohmelfs_sb_info *sbi)
{
	int i;

	if (READ_ONCE(sbi->shutting_down))
		return true;
	for (i = 0; i < sbi->nr_servers; i++)
		if (sbi->servers[i].may_write && server_up(&sbi->servers[i]))
			return true;
	return false;
}

/* Every server in `applied` records a marker naming `missed`, once per pair per mount. */
static void mark_stale(struct pohmelfs_sb_info *sbi, struct pohmelfs_server *missed,
		       unsigned long applied)
{
	struct pohmelfs_replica_req q;
	int i;

	if (!READ_ONCE(missed->stale))
		pr_warn("pohmelfs: server %s missed a change; it is not read from again by this mount until resynced\n",
			missed->uri);
	WRITE_ONCE(missed->stale, true);
	if (!missed->known_id) {
		pr_warn("pohmelfs: server %s was never reached, so no marker can name it\n",
			missed->uri);
		return;
	}
	memset(&q, 0, sizeof(q));
	q.cmd = cpu_to_le32(POHMELFS_REPLICA_MARK);
	q.peer = missed->server_id;
	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];
		struct pohmelfs_msg m = { .opcode = POHMELFS_OP_REPLICA };
		struct pohmelfs_conn *conn;
		struct pohmelfs_req req;
		int err;

		if (!(applied & BIT(i)) || test_bit(i, &missed->marked))
			continue;
		conn = server_conn(srv);
		if (!conn)
			continue;
		pohmelfs_msg_add(&m, &q, sizeof(q));
		err = pohmelfs_conn_send(conn, &req, &m, false);
		if (!err)
			err = pohmelfs_conn_wait(conn, &req);
		pohmelfs_conn_put(conn);
		if (!err)
			set_bit(i, &missed->marked);
		else
			pr_warn("pohmelfs: server %s: REPLICA MARK for %s failed (%d)\n", srv->uri,
				missed->uri, err);
	}
}

void pohmelfs_change_async(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m)
{
	/* Behind delayed changes it goes into their queue: sent now, it could overtake them. */
	if (pohmelfs_mq_busy(sbi) && m->niov >= 1 && m->niov <= 2 && !m->ndata) {
		struct pohmelfs_mq_cmd *cmd = pohmelfs_mq_cmd_new(
			m->opcode, m->iov[0].iov_base, m->iov[0].iov_len,
			m->niov > 1 ? m->iov[1].iov_base : NULL,
			m->niov > 1 ? m->iov[1].iov_len : 0, NULL, NULL, GFP_NOFS);

		if (cmd) {
			pohmelfs_mq_push(sbi, cmd);
			return;
		}
	}
	pohmelfs_mq_drain(sbi);
	pohmelfs_send_async_all(sbi, m);
}

void pohmelfs_send_async_all(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m)
{
	int i;

	for (i = 0; i < sbi->nr_servers; i++) {
		struct pohmelfs_server *srv = &sbi->servers[i];
		struct pohmelfs_conn *conn;
		struct pohmelfs_req *req;

		if (!srv->may_write)
			continue;
		conn = server_conn(srv);
		if (!conn)
			continue;
		req = kzalloc(sizeof(*req), GFP_NOFS);
		if (req) {
			req->async = true;
			m->reply = NULL;
			m->reply_cap = 0;
			if (pohmelfs_conn_send(conn, req, m, false))
				kfree(req); /* not sent: never seen by the receive thread */
		}
		pohmelfs_conn_put(conn);
	}
}

struct change_slot {
	struct pohmelfs_req req;
	struct pohmelfs_conn *conn;
	u8 *reply;
	bool sent_before;
	int err;
};

int pohmelfs_change_call(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m)
{
	if (fatal_signal_pending(current))
		return -EINTR; /* see read_call: nothing sent, nothing diverges */
	pohmelfs_mq_drain(sbi);
	return pohmelfs_change_call_queued(sbi, m, NULL);
}

/* The outcome of a BATCH: how many commands ran and each one's status. Two servers that
 * answered the same BATCH differently diverged, even if both answered it with status 0. */
static bool batch_replies_agree(const u8 *a, size_t alen, const u8 *b, size_t blen)
{
	struct pohmelfs_batch_rep ra, rb;
	size_t ao = sizeof(ra), bo = sizeof(rb);
	u32 i;

	if (alen < sizeof(ra) || blen < sizeof(rb))
		return alen == blen;
	memcpy(&ra, a, sizeof(ra));
	memcpy(&rb, b, sizeof(rb));
	if (ra.count != rb.count)
		return false;
	for (i = 0; i < le32_to_cpu(ra.count); i++) {
		struct pohmelfs_cmd_rep ca, cb;
		const u8 *body;
		bool a_ok = pohmelfs_batch_next(a, alen, &ao, &ca, &body);
		bool b_ok = pohmelfs_batch_next(b, blen, &bo, &cb, &body);

		if (!a_ok || !b_ok)
			return a_ok == b_ok;
		if (ca.status != cb.status)
			return false;
	}
	return true;
}

int pohmelfs_change_call_queued(struct pohmelfs_sb_info *sbi, struct pohmelfs_msg *m,
				bool *answered)
{
	unsigned long deadline = jiffies + msecs_to_jiffies(sbi->timeout_ms);
	struct change_slot *slots;
	void *const reply = m->reply;
	int i, writers = 0, result = -EIO, chosen = -1;
	unsigned long applied, missed;

	for (i = 0; i < sbi->nr_servers; i++)
		writers += sbi->servers[i].may_write;
	if (!writers)
		return -EROFS;
	slots = kcalloc(sbi->nr_servers, sizeof(*slots), GFP_NOFS);
	if (!slots)
		return -ENOMEM;
	if (writers > 1 && m->reply_cap) {
		for (i = 0; i < sbi->nr_servers; i++) {
			slots[i].reply = kmalloc(m->reply_cap, GFP_NOFS);
			if (!slots[i].reply) {
				result = -ENOMEM;
				goto out;
			}
		}
	}

	for (;;) {
		int sent = 0;

		applied = missed = 0;
		for (i = 0; i < sbi->nr_servers; i++) {
			struct pohmelfs_server *srv = &sbi->servers[i];
			struct change_slot *s = &slots[i];

			s->conn = NULL;
			s->err = -ENOTCONN;
			if (!srv->may_write)
				continue;
			s->conn = server_conn(srv);
			if (!s->conn)
				continue;
			if (s->reply)
				m->reply = s->reply;
			s->err = pohmelfs_conn_send(s->conn, &s->req, m, s->sent_before);
			m->reply = reply;
			if (!s->err) {
				s->sent_before = true;
				sent++;
			}
		}
		for (i = 0; i < sbi->nr_servers; i++) {
			struct change_slot *s = &slots[i];

			if (!s->conn)
				continue;
			if (!s->err)
				s->err = pohmelfs_conn_wait(s->conn, &s->req);
			pohmelfs_conn_put(s->conn);
			s->conn = NULL;
		}
		/* The result: the highest-priority server that answered (an errno is an answer). */
		for (i = 0; i < sbi->nr_servers; i++) {
			struct pohmelfs_server *srv = &sbi->servers[i];

			if (!srv->may_write)
				continue;
			if (is_transport_error(slots[i].err)) {
				missed |= BIT(i);
				continue;
			}
			applied |= BIT(i);
			if (chosen < 0 || srv->prio > sbi->servers[chosen].prio)
				chosen = i;
		}
		if (chosen >= 0) {
			if (answered)
				*answered = true;
			break;
		}
		/* Nobody answered: wait for a writer and send again (resent where it was sent, so
		 * a server that did apply it answers from its reply record). */
		{
			long left = (long)(deadline - jiffies);

			if (left <= 0 || READ_ONCE(sbi->shutting_down) ||
			    !wait_event_timeout(sbi->up_wq, writer_up(sbi), left)) {
				result = -EIO;
				goto out;
			}
		}
	}
	result = slots[chosen].err;
	m->reply_len = slots[chosen].req.reply_len;
	if (slots[chosen].reply && !result)
		memcpy(reply, slots[chosen].reply, min(m->reply_len, m->reply_cap));
	/* A server that answered differently from the chosen one diverged: treat it as stale. */
	for (i = 0; i < sbi->nr_servers; i++) {
		if ((applied & BIT(i)) && i != chosen && !result && !slots[i].err &&
		    m->opcode == POHMELFS_OP_BATCH && slots[i].reply &&
		    !batch_replies_agree(slots[i].reply, slots[i].req.reply_len,
					 slots[chosen].reply, m->reply_len)) {
			pr_warn("pohmelfs: server %s ran a BATCH differently from %s\n",
				sbi->servers[i].uri, sbi->servers[chosen].uri);
			applied &= ~BIT(i);
			missed |= BIT(i);
			continue;
		}
		if ((applied & BIT(i)) && slots[i].err != result) {
			pr_warn("pohmelfs: server %s answered %d where %s answered %d (opcode %u)\n",
				sbi->servers[i].uri, slots[i].err, sbi->servers[chosen].uri, result,
				m->opcode);
			applied &= ~BIT(i);
			missed |= BIT(i);
		}
	}
	if (missed && applied && !result) {
		for (i = 0; i < sbi->nr_servers; i++)
			if (missed & BIT(i))
				mark_stale(sbi, &sbi->servers[i], applied);
	}
out:
	for (i = 0; i < sbi->nr_servers; i++)
		kfree(slots[i].reply);
	kfree(slots);
	return result;
}
