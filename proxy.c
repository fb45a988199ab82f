/*
 * proxy.c - main, command line, the poll loop and the connection state
 * machine, signals, logging, daemon.
 *
 * One thread, one poll(). A session (struct conn) pairs a client half and
 * an upstream half. Bytes from the client collect in the session's rq
 * buffer and go upstream from there; bytes from the upstream collect in rs
 * and go to the client. Buffers are lent from a pool reserved at startup
 * and returned when the session goes idle, so an idle keep-alive client
 * costs a slot and no buffer.
 */
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <poll.h>
#include <pwd.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "proxy.h"

/* Headroom kept free while a head is read: the rewritten head (with the
 * X-Forwarded-* and Via lines) is built in place and may be longer. */
#define HEAD_SLACK	1024
#define LINGER_MS	2000	/* reading leftovers after a final response */
#define DRAIN_MS	5000	/* TERM: how long in-flight requests get */
#define IDLE_PER_SERVER	32	/* idle upstream connections kept per server */
#define LOG_BUF		8192

enum cstate {
	C_FREE,		/* slot unused */
	C_IDLE,		/* keep-alive: waits for the first byte of a request */
	C_HEAD,		/* reading a request head (header_timeout runs) */
	C_BODY,		/* head forwarded; relaying the request body */
	C_SENT,		/* whole request read; waits for the response */
	C_TUNNEL,	/* after 101: raw bytes both ways */
	C_CLOSING,	/* writing a final response, then linger */
	C_LINGER,	/* write side shut; discarding input until EOF */
};

enum ustate {
	U_NONE,		/* no upstream */
	U_CONNECT,	/* non-blocking connect in progress */
	U_HEAD,		/* connected: sending the request, reading a head */
	U_BODY,		/* relaying the response body */
	U_DONE,		/* response read; rs still draining to the client */
	U_TUNNEL,	/* after 101 */
};

/* Body framing of the message in flight on each side. */
enum { M_NONE, M_LEN, M_CHUNK, M_EOF };

/* conn.flags */
enum {
	F_KEEP = 1 << 0,	/* client connection persists after this one */
	F_HEADREQ = 1 << 1,	/* request method is HEAD */
	F_CEOF = 1 << 2,	/* client closed its write side */
	F_UEOF = 1 << 3,	/* upstream closed its write side (tunnel) */
	F_REUSED = 1 << 4,	/* upstream came from the idle pool */
	F_HOLD = 1 << 5,	/* keep sent request bytes for one replay */
	F_UKEEP = 1 << 6,	/* upstream may be reused after the response */
	F_UPGRADE = 1 << 7,	/* request asked for an upgrade */
	F_RSTARTED = 1 << 8,	/* response bytes went to the client */
	F_CLOSE = 1 << 9,	/* close the client after this response */
	F_TRUSTED = 1 << 10,	/* client may set X-Forwarded-* */
	F_CBLOCK = 1 << 11,	/* client write hit EAGAIN: wait for POLLOUT */
	F_UBLOCK = 1 << 12,	/* upstream write hit EAGAIN */
	F_WAITBUF = 1 << 13,	/* wants a buffer; the pool is empty */
	F_CSHUT = 1 << 14,	/* shutdown(SHUT_WR) sent to the client */
	F_USHUT = 1 << 15,	/* shutdown(SHUT_WR) sent upstream */
};

/* Bytes d[off..len) are unconsumed; d is NULL while the buffer is not lent. */
struct buf {
	char *d;
	uint32_t off, len;
};

union addr {
	struct sockaddr sa;
	struct sockaddr_in in;
	struct sockaddr_in6 in6;
};

struct conn {
	int cfd, ufd;		/* -1 when closed */
	int cslot, uslot;	/* pollfd slots, -1 when none */
	uint32_t gen;		/* bumped on reuse: stale events are dropped */
	uint8_t cstate, ustate;
	uint8_t qmode, rmode;	/* request / response body framing */
	uint8_t minor;		/* client's HTTP/1.<minor> */
	uint32_t flags;
	struct buf rq, rs;
	uint32_t qfwd;		/* bytes at rq.off that belong upstream */
	uint32_t qsent;		/* of those, sent but held (F_HOLD) */
	uint32_t rfwd;		/* bytes at rs.off that belong to the client */
	uint64_t qleft, rleft;	/* M_LEN bytes still to come */
	uint64_t qbody;		/* request body bytes seen (max_body) */
	struct http_chunk qch, rch;
	const char *lit;	/* literal output (100 Continue, error page) */
	uint32_t litlen;
	struct server *srv;
	int64_t tstart;		/* when the current state began (ms) */
	int64_t tprog;		/* last progress on either side (ms) */
	union addr peer;
};

struct idle {
	int fd;			/* -1: free entry */
	int slot;
	uint32_t gen;
	struct server *srv;
	int64_t since;
};

/* pollfd owners: index * 4 + kind */
enum { O_LISTEN, O_CLIENT, O_UP, O_IDLE };

static struct config cfg;
static const char *conf_path = "/etc/proxy.ini";
static int foreground;

static struct conn *conns;
static int *free_conns, nfree_conns, nactive;
static struct idle *idles;
static int nidles;
static struct pollfd *pfd;
static int *owner;
static int npfd;
static int *listen_fd;
static int nlisten;

static char *pool_mem, **pool;
static int pool_free, pool_waiters;
static uint32_t bufsz;

static char *scratch;		/* head rewriting */
static char *pathbuf;		/* normalised path */
static struct http_msg msg;

static int64_t now;
static volatile sig_atomic_t sig_term, sig_hup, sig_usr1;
static int draining;
static int64_t drain_deadline;

/* ---------------------------------------------------------------- log */

static char logbuf[LOG_BUF];
static size_t loglen;
static int log_fd = 2, log_syslog;

static void
log_flush(void)
{
	size_t off = 0;
	ssize_t n;

	if (log_syslog) {
		loglen = 0;
		return;
	}
	while (off < loglen) {
		n = write(log_fd, logbuf + off, loglen - off);
		if (n <= 0)
			break;	/* a full disk must not stop the proxy */
		off += n;
	}
	loglen = 0;
}

static void __attribute__((format(printf, 2, 3)))
logmsg(int prio, const char *fmt, ...)
{
	static const char *names[] = { "emerg", "alert", "crit", "error",
	    "warn", "notice", "info", "debug" };
	char line[512];
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	if (log_syslog) {
		syslog(prio, "%s", line);
		return;
	}
	if (loglen + n + 64 > sizeof(logbuf))
		log_flush();
	{
		struct timespec ts;
		struct tm tm;

		clock_gettime(CLOCK_REALTIME, &ts);
		gmtime_r(&ts.tv_sec, &tm);
		loglen += strftime(logbuf + loglen, 32, "%Y-%m-%dT%H:%M:%SZ ",
		    &tm);
	}
	loglen += snprintf(logbuf + loglen, sizeof(logbuf) - loglen,
	    "%s: %.*s\n", names[prio & 7], n, line);
}

static int
log_open(void)
{
	int fd;

	if (foreground || cfg.log == NULL || strcmp(cfg.log, "stderr") == 0) {
		log_fd = 2;
		return 0;
	}
	if (strcmp(cfg.log, "syslog") == 0) {
		openlog(PROXY_NAME, LOG_PID | LOG_NDELAY, LOG_DAEMON);
		log_syslog = 1;
		return 0;
	}
	fd = open(cfg.log, O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0640);
	if (fd == -1)
		return -1;
	if (log_fd > 2)
		close(log_fd);
	log_fd = fd;
	return 0;
}

/* --------------------------------------------------------------- time */

static int64_t
mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* -------------------------------------------------------- buffer pool */

static char *
pool_get(void)
{
	if (pool_free == 0)
		return NULL;
	return pool[--pool_free];
}

static void
buf_release(struct buf *b)
{
	if (b->d == NULL)
		return;
	pool[pool_free++] = b->d;
	b->d = NULL;
	b->off = b->len = 0;
}

/* Lend a buffer if none is held; 0 when the pool is empty (the caller
 * then simply does not read: backpressure, not failure). */
static int
buf_want(struct conn *c, struct buf *b)
{
	if (b->d != NULL)
		return 1;
	b->d = pool_get();
	b->off = b->len = 0;
	if (b->d == NULL) {
		if (!(c->flags & F_WAITBUF)) {
			c->flags |= F_WAITBUF;
			pool_waiters++;
		}
		return 0;
	}
	return 1;
}

/* Move unconsumed bytes to the front so reads have room. */
static void
buf_compact(struct buf *b)
{
	if (b->off == 0)
		return;
	if (b->len > b->off)
		memmove(b->d, b->d + b->off, b->len - b->off);
	b->len -= b->off;
	b->off = 0;
}

/* ------------------------------------------------------- pollfd slots */

static int
slot_add(int fd, int kind, int idx)
{
	pfd[npfd].fd = fd;
	pfd[npfd].events = 0;
	pfd[npfd].revents = 0;
	owner[npfd] = idx * 4 + kind;
	return npfd++;
}

static void
slot_del(int slot)
{
	int last = --npfd, o, idx;

	if (slot != last) {
		pfd[slot] = pfd[last];
		owner[slot] = owner[last];
		o = owner[slot];
		idx = o / 4;
		switch (o & 3) {
		case O_CLIENT:
			conns[idx].cslot = slot;
			break;
		case O_UP:
			conns[idx].uslot = slot;
			break;
		case O_IDLE:
			idles[idx].slot = slot;
			break;
		}
	}
}

/* ----------------------------------------------------- idle upstreams */

static void
idle_close(struct idle *e)
{
	slot_del(e->slot);
	close(e->fd);
	e->srv->idle--;
	e->fd = -1;
	e->gen++;
}

static void
idle_put(struct server *s, int fd)
{
	int i;

	if (s->idle < IDLE_PER_SERVER && !draining) {
		for (i = 0; i < nidles; i++) {
			struct idle *e = &idles[i];

			if (e->fd != -1)
				continue;
			e->fd = fd;
			e->srv = s;
			e->since = now;
			e->slot = slot_add(fd, O_IDLE, i);
			/* Any event on an idle upstream (data, EOF) ends it. */
			pfd[e->slot].events = POLLIN;
			s->idle++;
			return;
		}
	}
	close(fd);
}

/* Newest first: the most recently used connection is the least likely
 * to have been closed by the backend's own idle timer. */
static int
idle_take(struct server *s)
{
	struct idle *best = NULL;
	int i, fd;

	if (s->idle == 0)
		return -1;
	for (i = 0; i < nidles; i++)
		if (idles[i].fd != -1 && idles[i].srv == s &&
		    (best == NULL || idles[i].since > best->since))
			best = &idles[i];
	if (best == NULL)
		return -1;
	fd = best->fd;
	slot_del(best->slot);
	best->fd = -1;
	best->gen++;
	s->idle--;
	return fd;
}

/* ------------------------------------------------------ session setup */

static void conn_update(struct conn *c);
static void client_flush(struct conn *c);
static void up_flush(struct conn *c);
static void head_step(struct conn *c);
static void resp_absorb(struct conn *c);
static void up_eof(struct conn *c);

static void
up_close(struct conn *c)
{
	if (c->ufd == -1)
		return;
	slot_del(c->uslot);
	close(c->ufd);
	c->ufd = -1;
	c->uslot = -1;
	c->flags &= ~(F_UBLOCK | F_USHUT | F_UEOF);
}

static void
conn_close(struct conn *c)
{
	up_close(c);
	if (c->cfd != -1) {
		slot_del(c->cslot);
		close(c->cfd);
	}
	buf_release(&c->rq);
	buf_release(&c->rs);
	if (c->flags & F_WAITBUF)
		pool_waiters--;
	c->cfd = -1;
	c->cslot = -1;
	c->cstate = C_FREE;
	c->ustate = U_NONE;
	c->flags = 0;
	c->gen++;
	free_conns[nfree_conns++] = (int)(c - conns);
	nactive--;
}

/* Forget the exchange: ready for the next request on this client. */
static void
exchange_reset(struct conn *c)
{
	c->qmode = c->rmode = M_NONE;
	c->qfwd = c->qsent = c->rfwd = 0;
	c->qleft = c->rleft = c->qbody = 0;
	c->lit = NULL;
	c->litlen = 0;
	c->srv = NULL;
	c->flags &= F_TRUSTED | F_CBLOCK | F_WAITBUF | F_CEOF;
}

/*
 * Output is done and the client is to be closed. When it may still be
 * sending (an unread body, an error before the body, pipelined bytes),
 * closing at once would send a RST that can destroy the response before
 * the client reads it: shut our side and discard its input for a bounded
 * time instead (nginx's lingering close).
 */
static void
client_finish(struct conn *c)
{
	int unread = c->cstate != C_SENT ||
	    (c->rq.d != NULL && c->rq.len > c->rq.off + c->qfwd);

	up_close(c);
	if ((c->flags & F_CEOF) || !unread) {
		conn_close(c);
		return;
	}
	shutdown(c->cfd, SHUT_WR);
	c->flags |= F_CSHUT;
	buf_release(&c->rq);
	buf_release(&c->rs);
	c->cstate = C_LINGER;
	c->tstart = now;
}

/* Answer with a proxy-made error page and close. Only possible while no
 * response byte went to the client; otherwise the client just loses the
 * connection (it sees a truncated response, never a mixed one). */
static void
send_error(struct conn *c, int code)
{
	up_close(c);
	c->ustate = U_NONE;
	if (c->flags & F_RSTARTED) {
		conn_close(c);
		return;
	}
	if (code >= 500)
		logmsg(LOG_WARNING, "%d for %s", code,
		    c->srv ? c->srv->name : "client");
	buf_release(&c->rs);
	c->rfwd = 0;
	{
		size_t len;

		c->lit = http_error_page(code, &len);
		c->litlen = (uint32_t)len;
	}
	c->flags |= F_CLOSE | F_RSTARTED;
	c->cstate = C_CLOSING;
	c->tstart = now;
	client_flush(c);
}

/* ---------------------------------------------------------- upstream */

static void
up_connect(struct conn *c)
{
	struct server *s = c->srv;
	int fd, one = 1;

	c->flags &= ~(F_REUSED | F_HOLD);
	fd = idle_take(s);
	if (fd != -1) {
		c->flags |= F_REUSED;
		c->ustate = U_HEAD;
		goto attached;
	}
	fd = socket(s->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1) {
		logmsg(LOG_ERR, "socket: %s", strerror(errno));
		send_error(c, 502);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&s->sa, s->salen) == 0) {
		c->ustate = U_HEAD;
	} else if (errno == EINPROGRESS) {
		c->ustate = U_CONNECT;
	} else {
		logmsg(LOG_ERR, "connect %s: %s", s->name, strerror(errno));
		close(fd);
		s->failures++;
		send_error(c, 502);
		return;
	}
attached:
	s->requests++;
	c->ufd = fd;
	c->uslot = slot_add(fd, O_UP, (int)(c - conns));
	c->tprog = now;
}

static void
up_connected(struct conn *c)
{
	int err = 0;
	socklen_t len = sizeof(err);

	if (getsockopt(c->ufd, SOL_SOCKET, SO_ERROR, &err, &len) == -1)
		err = errno;
	if (err == EINPROGRESS || err == EALREADY)
		return;
	if (err != 0) {
		logmsg(LOG_ERR, "connect %s: %s", c->srv->name, strerror(err));
		c->srv->failures++;
		send_error(c, 502);
		return;
	}
	c->ustate = U_HEAD;
	c->tprog = now;
}

/* The request is sent and held: once a response byte arrives it can no
 * longer be replayed, so its bytes are released. */
static void
hold_release(struct conn *c)
{
	if (!(c->flags & F_HOLD))
		return;
	c->rq.off += c->qsent;
	c->qfwd -= c->qsent;
	c->qsent = 0;
	c->flags &= ~F_HOLD;
	if (c->rq.off == c->rq.len)
		c->rq.off = c->rq.len = 0;
}

/*
 * A reused idle connection failed before any response byte: the backend
 * had closed it while it sat in the pool. The whole request is still held
 * in rq, so send it again on a fresh connection.
 */
static int
up_replay(struct conn *c)
{
	if (!(c->flags & F_HOLD) || (c->flags & F_RSTARTED) ||
	    c->rs.len != 0)
		return 0;
	up_close(c);
	c->qsent = 0;
	c->flags &= ~F_HOLD;
	{
		struct server *s = c->srv;
		int fd, one = 1;

		fd = socket(s->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
		    SOCK_CLOEXEC, 0);
		if (fd == -1)
			return 0;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		if (connect(fd, (struct sockaddr *)&s->sa, s->salen) == 0)
			c->ustate = U_HEAD;
		else if (errno == EINPROGRESS)
			c->ustate = U_CONNECT;
		else {
			close(fd);
			return 0;
		}
		c->flags &= ~F_REUSED;
		c->ufd = fd;
		c->uslot = slot_add(fd, O_UP, (int)(c - conns));
		c->tprog = now;
	}
	return 1;
}

static void
up_flush(struct conn *c)
{
	ssize_t n;
	uint32_t pend;

	if (c->ufd == -1 || c->ustate == U_CONNECT || c->ustate == U_DONE ||
	    (c->flags & F_UBLOCK))
		return;
	pend = c->qfwd - c->qsent;
	if (pend > 0) {
		n = send(c->ufd, c->rq.d + c->rq.off + c->qsent, pend,
		    MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				c->flags |= F_UBLOCK;
				return;
			}
			/* The read side sees the error too and decides. */
			c->flags |= F_UBLOCK;
			return;
		}
		c->tprog = now;
		if (c->flags & F_HOLD) {
			c->qsent += n;
		} else {
			c->rq.off += n;
			c->qfwd -= n;
			if (c->rq.off == c->rq.len)
				c->rq.off = c->rq.len = 0;
		}
		pend -= n;
	}
	/* Tunnel: the client closed its side; pass the half-close on. */
	if (pend == 0 && c->cstate == C_TUNNEL && (c->flags & F_CEOF) &&
	    !(c->flags & F_USHUT)) {
		shutdown(c->ufd, SHUT_WR);
		c->flags |= F_USHUT;
	}
}

/* --------------------------------------------------------- responses */

/* The response was read to its end: release or pool the upstream. */
static void
resp_done(struct conn *c)
{
	int reuse = (c->flags & F_UKEEP) && c->cstate == C_SENT &&
	    c->qfwd == 0 && !draining;

	/* Extra bytes after the response: the backend broke framing, so
	 * its connection is not trusted again. */
	if (c->rs.len > c->rs.off + c->rfwd) {
		c->rs.len = c->rs.off + c->rfwd;
		reuse = 0;
	}
	if (c->ufd != -1) {
		slot_del(c->uslot);
		if (reuse)
			idle_put(c->srv, c->ufd);
		else
			close(c->ufd);
		c->ufd = -1;
		c->uslot = -1;
		c->flags &= ~(F_UBLOCK | F_USHUT);
	}
	/* An early response (the request body still coming) ends the
	 * client connection: we cannot know the backend skipped the rest. */
	if (c->cstate != C_SENT)
		c->flags |= F_CLOSE;
	c->ustate = U_DONE;
}

/* Rewrite the response head at rs[pos..] in place; returns its new
 * length or -1 when it does not fit. */
static int
resp_rewrite(struct conn *c, uint32_t pos, int close)
{
	struct buf *b = &c->rs;
	uint32_t tail = b->len - pos - msg.head_len;
	int n;

	n = http_write_response(scratch, bufsz, &msg, close, c->minor,
	    cfg.hide_headers);
	if (n < 0 || pos + n + tail > bufsz)
		return -1;
	memmove(b->d + pos + n, b->d + pos + msg.head_len, tail);
	memcpy(b->d + pos, scratch, n);
	b->len = pos + n + tail;
	return n;
}

/* Parse response heads while in U_HEAD; 1xx interim heads pass through
 * to HTTP/1.1 clients and the next head follows. */
static void
resp_head(struct conn *c)
{
	struct buf *b = &c->rs;
	uint32_t pos;
	int r, n, close, ukeep;

	for (;;) {
		buf_compact(b);
		pos = c->rfwd;
		r = http_parse_response(b->d + pos, b->len - pos,
		    c->flags & F_HEADREQ, &msg);
		if (r == 0) {
			if (b->len >= bufsz - HEAD_SLACK) {
				logmsg(LOG_WARNING, "%s: response head too "
				    "large", c->srv->name);
				send_error(c, 502);
			}
			return;
		}
		if (r < 0) {
			logmsg(LOG_WARNING, "%s: malformed response",
			    c->srv->name);
			send_error(c, 502);
			return;
		}
		if (msg.status == 101) {
			if (!(c->flags & F_UPGRADE) ||
			    !(msg.flags & HF_UPGRADE)) {
				send_error(c, 502);
				return;
			}
			n = resp_rewrite(c, pos, 0);
			if (n < 0) {
				send_error(c, 502);
				return;
			}
			/* Everything after the 101 is tunnel data. */
			c->rfwd = b->len;
			c->qfwd = c->rq.len - c->rq.off;
			c->cstate = C_TUNNEL;
			c->ustate = U_TUNNEL;
			c->flags |= F_RSTARTED;
			return;
		}
		if (msg.status < 200) {
			/* HTTP/1.0 clients cannot take interim responses. */
			if (c->minor == 0) {
				memmove(b->d + pos, b->d + pos + msg.head_len,
				    b->len - pos - msg.head_len);
				b->len -= msg.head_len;
				continue;
			}
			n = resp_rewrite(c, pos, 0);
			if (n < 0) {
				send_error(c, 502);
				return;
			}
			c->rfwd += n;
			c->flags |= F_RSTARTED;
			continue;
		}
		break;
	}
	if (msg.flags & HF_NOBODY)
		c->rmode = M_NONE;
	else if (msg.flags & HF_CHUNKED) {
		/* A 1.0 client cannot decode chunked; we asked the backend
		 * in HTTP/1.0, so it had no right to send it. */
		if (c->minor == 0) {
			send_error(c, 502);
			return;
		}
		c->rmode = M_CHUNK;
		http_chunk_init(&c->rch);
	} else if (msg.flags & HF_CL) {
		c->rmode = M_LEN;
		c->rleft = msg.clen;
	} else
		c->rmode = M_EOF;
	ukeep = msg.minor == 1 ? !(msg.flags & HF_CLOSE) :
	    (msg.flags & HF_KEEPALIVE) != 0;
	if (ukeep && c->rmode != M_EOF && !(msg.flags & HF_TE_OTHER))
		c->flags |= F_UKEEP;
	else
		c->flags &= ~F_UKEEP;
	close = !(c->flags & F_KEEP) || c->rmode == M_EOF || draining ||
	    (c->flags & F_CEOF) || c->cstate != C_SENT;
	if (close)
		c->flags |= F_CLOSE;
	n = resp_rewrite(c, pos, close);
	if (n < 0) {
		send_error(c, 502);
		return;
	}
	c->rfwd += n;
	c->flags |= F_RSTARTED;
	c->ustate = U_BODY;
	resp_absorb(c);
}

/* Claim response body bytes that arrived after rfwd for the client. */
static void
resp_absorb(struct conn *c)
{
	struct buf *b = &c->rs;
	uint32_t avail = b->len - b->off - c->rfwd;
	long n;
	int done = 0;

	switch (c->rmode) {
	case M_NONE:
		resp_done(c);
		return;
	case M_LEN:
		if (avail > c->rleft)
			avail = (uint32_t)c->rleft;
		c->rfwd += avail;
		c->rleft -= avail;
		if (c->rleft == 0)
			resp_done(c);
		return;
	case M_CHUNK:
		n = http_chunk_scan(&c->rch, b->d + b->off + c->rfwd, avail,
		    &done);
		if (n < 0) {
			logmsg(LOG_WARNING, "%s: bad chunked response",
			    c->srv->name);
			/* Already streaming: the client sees a cut body. */
			c->rs.len = c->rs.off + c->rfwd;
			up_close(c);
			c->flags |= F_CLOSE;
			c->ustate = U_DONE;
			return;
		}
		c->rfwd += (uint32_t)n;
		if (done)
			resp_done(c);
		return;
	case M_EOF:
		c->rfwd += avail;
		return;
	}
}

/* -------------------------------------------------------- the client */

static void
client_next(struct conn *c)
{
	exchange_reset(c);
	buf_release(&c->rs);
	c->ustate = U_NONE;
	if (draining && c->rq.len == c->rq.off) {
		conn_close(c);
		return;
	}
	c->tstart = c->tprog = now;
	if (c->rq.d != NULL && c->rq.len > c->rq.off) {
		c->cstate = C_HEAD;	/* a pipelined request is waiting */
		head_step(c);
		return;
	}
	if (c->flags & F_CEOF) {
		conn_close(c);	/* the client said all it had to say */
		return;
	}
	c->cstate = C_IDLE;
	buf_release(&c->rq);
}

/* Write what is pending to the client: a literal, then rs. */
static void
client_flush(struct conn *c)
{
	ssize_t n;

	if (c->cfd == -1 || (c->flags & (F_CBLOCK | F_CSHUT)))
		return;
	while (c->litlen > 0) {
		n = send(c->cfd, c->lit, c->litlen, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				c->flags |= F_CBLOCK;
			else
				conn_close(c);
			return;
		}
		c->lit += n;
		c->litlen -= n;
		c->tprog = now;
	}
	if (c->rfwd > 0) {
		n = send(c->cfd, c->rs.d + c->rs.off, c->rfwd, MSG_NOSIGNAL);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				c->flags |= F_CBLOCK;
			else
				conn_close(c);
			return;
		}
		c->rs.off += n;
		c->rfwd -= n;
		c->tprog = now;
		if (c->rs.off == c->rs.len)
			c->rs.off = c->rs.len = 0;
		if (c->rfwd > 0)
			return;
	}
	switch (c->cstate) {
	case C_CLOSING:
		client_finish(c);
		return;
	case C_TUNNEL:
		if ((c->flags & F_UEOF) && !(c->flags & F_CSHUT)) {
			shutdown(c->cfd, SHUT_WR);
			c->flags |= F_CSHUT;
		}
		return;
	default:
		break;
	}
	if (c->ustate == U_DONE) {
		if (c->flags & F_CLOSE)
			client_finish(c);
		else
			client_next(c);
	}
}

/* Still relaying (not closing, not closed)? */
static int
in_exchange(const struct conn *c)
{
	return c->cstate == C_BODY || c->cstate == C_SENT;
}

/* Claim request body bytes that arrived after qfwd for the upstream. */
static void
req_absorb(struct conn *c)
{
	struct buf *b = &c->rq;
	uint32_t avail = b->len - b->off - c->qfwd;
	long n;
	int done = 0;

	if (c->cstate != C_BODY)
		return;
	switch (c->qmode) {
	case M_LEN:
		if (avail > c->qleft)
			avail = (uint32_t)c->qleft;
		c->qfwd += avail;
		c->qleft -= avail;
		if (c->qleft == 0)
			c->cstate = C_SENT;
		return;
	case M_CHUNK:
		n = http_chunk_scan(&c->qch, b->d + b->off + c->qfwd, avail,
		    &done);
		if (n < 0) {
			send_error(c, 400);
			return;
		}
		c->qfwd += (uint32_t)n;
		c->qbody += (uint64_t)n;
		if (cfg.max_body > 0 && c->qbody > cfg.max_body + 32) {
			send_error(c, 413);
			return;
		}
		if (done)
			c->cstate = C_SENT;
		return;
	default:
		c->cstate = C_SENT;
		return;
	}
}

static const char *
client_ip(struct conn *c, char *out, size_t len)
{
	if (c->peer.sa.sa_family == AF_INET6)
		inet_ntop(AF_INET6, &c->peer.in6.sin6_addr, out, len);
	else
		inet_ntop(AF_INET, &c->peer.in.sin_addr, out, len);
	return out;
}

/*
 * A complete request head is at rq[0..msg.head_len): decide where it goes,
 * rewrite it in place for the upstream and start the exchange.
 */
static void
req_start(struct conn *c)
{
	static const char cont[] = "HTTP/1.1 100 Continue\r\n\r\n";
	struct buf *b = &c->rq;
	struct http_fwd fwd;
	char ip[INET6_ADDRSTRLEN];
	uint32_t tail;
	int r, n;

	c->minor = (uint8_t)msg.minor;
	if (msg.minor == 1 ? !(msg.flags & HF_CLOSE) :
	    (msg.flags & HF_KEEPALIVE) != 0)
		c->flags |= F_KEEP;
	if (slice_eq(msg.method, "HEAD"))
		c->flags |= F_HEADREQ;
	if (msg.flags & HF_UPGRADE)
		c->flags |= F_UPGRADE;

	/* Route and ACL decisions see the normalised path (DESIGN.md). */
	n = http_normalize_path(msg.path.p, msg.path.n, pathbuf, bufsz);
	if (n < 0) {
		send_error(c, -n);
		return;
	}
	r = bal_route(&cfg, msg.host, pathbuf, (size_t)n);
	if (r < 0) {
		send_error(c, 404);
		return;
	}
	if ((msg.flags & HF_CL) && cfg.max_body > 0 &&
	    msg.clen > cfg.max_body) {
		send_error(c, 413);
		return;
	}
	c->srv = bal_pick(&cfg.backends[cfg.routes[r].backend]);
	if (c->srv == NULL) {
		send_error(c, 503);
		return;
	}

	fwd.client_ip = client_ip(c, ip, sizeof(ip));
	fwd.proto = "http";
	fwd.trusted = (c->flags & F_TRUSTED) != 0;
	fwd.minor = msg.minor;
	n = http_write_request(scratch, bufsz, &msg, &fwd);
	tail = b->len - msg.head_len;
	if (n < 0 || n + tail > bufsz) {
		send_error(c, 431);
		return;
	}
	memmove(b->d + n, b->d + msg.head_len, tail);
	memcpy(b->d, scratch, n);
	b->len = n + tail;
	c->qfwd = n;

	if (msg.flags & HF_CHUNKED) {
		c->qmode = M_CHUNK;
		http_chunk_init(&c->qch);
		c->cstate = C_BODY;
	} else if ((msg.flags & HF_CL) && msg.clen > 0) {
		c->qmode = M_LEN;
		c->qleft = msg.clen;
		c->cstate = C_BODY;
	} else {
		c->qmode = M_NONE;
		c->cstate = C_SENT;
	}
	/* We answer 100-continue ourselves (the Expect header is not
	 * forwarded): the limits above were checked, the body may come. */
	if ((msg.flags & HF_EXPECT100) && c->minor == 1 &&
	    c->cstate == C_BODY && b->len == (uint32_t)n) {
		c->lit = cont;
		c->litlen = sizeof(cont) - 1;
	}
	req_absorb(c);
	if (!in_exchange(c))
		return;
	c->tprog = now;
	up_connect(c);
	if (c->ufd == -1)
		return;
	/* A reused connection may turn out closed by the backend: keep the
	 * request (when it is all here) so it can be sent once more. */
	if ((c->flags & F_REUSED) && c->cstate == C_SENT)
		c->flags |= F_HOLD;
	up_flush(c);
	client_flush(c);
}

/* Try to parse a request head from rq. */
static void
head_step(struct conn *c)
{
	struct buf *b = &c->rq;
	int r;

	buf_compact(b);
	r = http_parse_request(b->d, b->len, &msg);
	if (r > 0) {
		req_start(c);
		return;
	}
	if (r < 0) {
		send_error(c, -r);
		return;
	}
	if (b->len >= bufsz - HEAD_SLACK)
		send_error(c, memchr(b->d, '\n', b->len) ? 431 : 414);
}

/* Readable client: read into rq and move the state machine on. */
static void
client_read(struct conn *c)
{
	struct buf *b = &c->rq;
	char sink[4096];
	ssize_t n;
	uint32_t room;

	if (c->cstate == C_LINGER) {
		n = recv(c->cfd, sink, sizeof(sink), 0);
		if (n == 0 || (n < 0 && errno != EAGAIN && errno != EINTR))
			conn_close(c);
		return;
	}
	if (!buf_want(c, b))
		return;
	if (b->len == bufsz)
		buf_compact(b);
	room = bufsz - b->len;
	if (c->cstate == C_IDLE || c->cstate == C_HEAD ||
	    c->cstate == C_SENT) {
		if (b->len >= bufsz - HEAD_SLACK)
			return;
		room -= HEAD_SLACK;
	}
	if (room == 0)
		return;
	n = recv(c->cfd, b->d + b->len, room, 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		conn_close(c);
		return;
	}
	if (n == 0) {
		c->flags |= F_CEOF;
		switch (c->cstate) {
		case C_SENT:
			return;	/* half-close: the response still goes out */
		case C_TUNNEL:
			up_flush(c);
			return;
		default:
			conn_close(c);
			return;
		}
	}
	b->len += n;
	c->tprog = now;
	switch (c->cstate) {
	case C_IDLE:
		c->cstate = C_HEAD;
		c->tstart = now;
		/* FALLTHROUGH */
	case C_HEAD:
		head_step(c);
		return;
	case C_BODY:
		req_absorb(c);
		if (in_exchange(c))
			up_flush(c);
		return;
	case C_TUNNEL:
		c->qfwd = b->len - b->off;
		up_flush(c);
		return;
	default:
		return;		/* C_SENT: pipelined bytes wait their turn */
	}
}

/* ------------------------------------------------------- the upstream */

static void
up_read(struct conn *c)
{
	struct buf *b = &c->rs;
	ssize_t n;
	uint32_t room;

	if (!buf_want(c, b))
		return;
	if (b->len == bufsz)
		buf_compact(b);
	room = bufsz - b->len;
	if (c->ustate == U_HEAD) {
		if (b->len >= bufsz - HEAD_SLACK)
			return;
		room -= HEAD_SLACK;
	}
	if (room == 0)
		return;
	n = recv(c->ufd, b->d + b->len, room, 0);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return;
		logmsg(LOG_WARNING, "%s: %s", c->srv->name, strerror(errno));
		n = 0;		/* a reset is handled as an early close */
	}
	if (n == 0) {
		up_eof(c);
		return;
	}
	hold_release(c);
	b->len += n;
	c->tprog = now;
	if (c->ustate == U_HEAD)
		resp_head(c);
	else if (c->ustate == U_BODY)
		resp_absorb(c);
	else if (c->ustate == U_TUNNEL)
		c->rfwd = b->len - b->off;
	if (c->cstate != C_FREE)
		client_flush(c);
}

/* The upstream closed (or reset) its side. */
static void
up_eof(struct conn *c)
{
	switch (c->ustate) {
	case U_HEAD:
		if (up_replay(c)) {
			up_flush(c);
			return;
		}
		logmsg(LOG_WARNING, "%s: closed before a response",
		    c->srv->name);
		c->srv->failures++;
		send_error(c, 502);
		return;
	case U_BODY:
		if (c->rmode == M_EOF) {
			resp_done(c);	/* close-delimited: this is the end */
		} else {
			logmsg(LOG_WARNING, "%s: response cut short",
			    c->srv->name);
			up_close(c);
			c->flags |= F_CLOSE;
			c->ustate = U_DONE;
		}
		client_flush(c);
		return;
	case U_TUNNEL:
		c->flags |= F_UEOF;
		client_flush(c);
		return;
	default:
		send_error(c, 502);
		return;
	}
}

/* ------------------------------------------------ interest and timers */

/* Reading needs a buffer with room, or one the pool can still lend. */
static int
can_read(struct conn *c, struct buf *b, int head)
{
	uint32_t limit = head ? bufsz - HEAD_SLACK : bufsz;

	if (b->d != NULL)
		return b->len < limit || b->off > 0;
	if (pool_free > 0)
		return 1;
	if (!(c->flags & F_WAITBUF)) {
		c->flags |= F_WAITBUF;
		pool_waiters++;
	}
	return 0;
}

static int
client_wants_read(struct conn *c)
{
	switch (c->cstate) {
	case C_LINGER:
		return 1;
	case C_IDLE:
	case C_HEAD:
		return can_read(c, &c->rq, 1);
	case C_BODY:
		return can_read(c, &c->rq, 0);
	case C_SENT:
		/* Read ahead pipelined requests, or notice a close. */
		return !(c->flags & F_CEOF) && c->rq.d != NULL &&
		    c->rq.len < bufsz - HEAD_SLACK;
	case C_TUNNEL:
		return !(c->flags & F_CEOF) && can_read(c, &c->rq, 0);
	default:
		return 0;
	}
}

/* Derive both halves' poll interest from the state and the buffers. */
static void
conn_update(struct conn *c)
{
	short ev = 0;

	if (c->cstate == C_FREE)
		return;
	if (c->cstate == C_TUNNEL && (c->flags & F_CEOF) &&
	    (c->flags & F_UEOF) && c->rfwd == 0 && c->qfwd == 0) {
		conn_close(c);
		return;
	}
	if ((c->litlen > 0 || c->rfwd > 0) && !(c->flags & F_CSHUT))
		ev |= POLLOUT;
	if (client_wants_read(c))
		ev |= POLLIN;
	pfd[c->cslot].events = ev;
	if (c->ufd == -1)
		return;
	ev = 0;
	if (c->ustate == U_CONNECT) {
		ev = POLLOUT;
	} else {
		if (c->qfwd > c->qsent && !(c->flags & F_USHUT))
			ev |= POLLOUT;
		if (!(c->flags & F_UEOF) &&
		    can_read(c, &c->rs, c->ustate == U_HEAD))
			ev |= POLLIN;
	}
	pfd[c->uslot].events = ev;
}

/* Is the session waiting on its backend (backend_timeout) rather than
 * on its client (idle_timeout)? */
static int
waits_on_backend(const struct conn *c)
{
	if (c->litlen > 0 || c->rfwd > 0)
		return 0;
	if (c->ustate == U_CONNECT || c->qfwd > c->qsent)
		return 1;
	if (c->ustate == U_HEAD)
		return c->cstate == C_SENT;
	return c->ustate == U_BODY;
}

static int64_t
conn_deadline(const struct conn *c)
{
	switch (c->cstate) {
	case C_IDLE:
		return c->tstart + cfg.idle_timeout_ms;
	case C_HEAD:
		/* The whole head, not each byte: a trickling client is cut. */
		return c->tstart + cfg.header_timeout_ms;
	case C_LINGER:
		return c->tstart + LINGER_MS;
	case C_CLOSING:
	case C_TUNNEL:
		return c->tprog + cfg.idle_timeout_ms;
	default:
		return c->tprog + (waits_on_backend(c) ?
		    cfg.backend_timeout_ms : cfg.idle_timeout_ms);
	}
}

static void
conn_expire(struct conn *c)
{
	switch (c->cstate) {
	case C_HEAD:
		send_error(c, 408);
		break;
	case C_BODY:
	case C_SENT:
		if (waits_on_backend(c) && (c->ustate == U_CONNECT ||
		    c->ustate == U_HEAD) && !(c->flags & F_RSTARTED)) {
			logmsg(LOG_WARNING, "%s: timed out", c->srv->name);
			c->srv->failures++;
			send_error(c, 504);
			break;
		}
		conn_close(c);
		return;
	default:
		conn_close(c);
		return;
	}
	if (c->cstate != C_FREE)
		conn_update(c);
}

/* Fire expired deadlines; return the poll timeout to the nearest one. */
static int
run_timers(void)
{
	int64_t next = now + 60000, d;
	long i;

	for (i = 0; i < cfg.max_connections; i++) {
		struct conn *c = &conns[i];

		if (c->cstate == C_FREE)
			continue;
		d = conn_deadline(c);
		if (d <= now) {
			conn_expire(c);
			if (c->cstate == C_FREE)
				continue;
			d = conn_deadline(c);
			if (d <= now)
				d = now + 10;
		}
		if (d < next)
			next = d;
	}
	for (i = 0; i < nidles; i++) {
		struct idle *e = &idles[i];

		if (e->fd == -1)
			continue;
		d = e->since + cfg.idle_timeout_ms;
		if (d <= now) {
			idle_close(e);
			continue;
		}
		if (d < next)
			next = d;
	}
	if (draining && drain_deadline < next)
		next = drain_deadline;
	return next > now ? (int)(next - now) : 0;
}

/* A buffer came back: wake the sessions that waited for one. */
static void
pool_kick(void)
{
	long i;

	if (pool_waiters == 0 || pool_free == 0)
		return;
	for (i = 0; i < cfg.max_connections && pool_waiters > 0; i++) {
		struct conn *c = &conns[i];

		if (c->flags & F_WAITBUF) {
			c->flags &= ~F_WAITBUF;
			pool_waiters--;
			conn_update(c);
		}
	}
}

/* ------------------------------------------------------------- events */

static void
client_event(struct conn *c, short rev)
{
	if (rev & (POLLOUT | POLLERR | POLLHUP)) {
		c->flags &= ~F_CBLOCK;
		client_flush(c);
	}
	if (c->cstate != C_FREE && (rev & (POLLIN | POLLERR | POLLHUP)))
		client_read(c);
}

static void
up_event(struct conn *c, short rev)
{
	if (c->ustate == U_CONNECT) {
		if (rev & (POLLOUT | POLLERR | POLLHUP))
			up_connected(c);
		if (c->cstate == C_FREE || c->ustate != U_HEAD)
			return;
		up_flush(c);
		return;
	}
	if (rev & (POLLOUT | POLLERR | POLLHUP)) {
		c->flags &= ~F_UBLOCK;
		up_flush(c);
	}
	if (c->cstate != C_FREE && c->ufd != -1 &&
	    (rev & (POLLIN | POLLERR | POLLHUP)))
		up_read(c);
}

/* The table is full: evict the oldest connection that is idle or still
 * sending its head (DESIGN.md), so slow clients cannot lock out others. */
static int
evict_one(void)
{
	struct conn *old = NULL;
	long i;

	for (i = 0; i < cfg.max_connections; i++) {
		struct conn *c = &conns[i];

		if ((c->cstate == C_IDLE || c->cstate == C_HEAD ||
		    c->cstate == C_LINGER) &&
		    (old == NULL || c->tstart < old->tstart))
			old = c;
	}
	if (old == NULL)
		return 0;
	conn_close(old);
	return 1;
}

static void
do_accept(int lfd)
{
	static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
	    "Content-Type: text/plain\r\nContent-Length: 24\r\n"
	    "Connection: close\r\n\r\n503 Service Unavailable\n";
	union addr a;
	socklen_t alen;
	struct conn *c;
	int i, fd, one = 1;

	for (i = 0; i < 64; i++) {
		alen = sizeof(a);
		fd = accept4(lfd, &a.sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EMFILE || errno == ENFILE)
				logmsg(LOG_ERR, "accept: %s", strerror(errno));
			return;
		}
		if (nfree_conns == 0 && !evict_one()) {
			(void)send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL);
			close(fd);
			continue;
		}
		c = &conns[free_conns[--nfree_conns]];
		nactive++;
		c->cfd = fd;
		c->ufd = -1;
		c->uslot = -1;
		c->peer = a;
		c->flags = 0;
		exchange_reset(c);
		c->ustate = U_NONE;
		c->cstate = C_IDLE;
		c->tstart = c->tprog = now;
		if (cidr_match(cfg.trusted, cfg.ntrusted, &a.sa))
			c->flags |= F_TRUSTED;
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
		c->cslot = slot_add(fd, O_CLIENT, (int)(c - conns));
		conn_update(c);
	}
}

/* --------------------------------------------------------- the loop */

struct ready {
	int own;
	uint32_t gen;
	short rev;
};

static struct ready *ready;

static void
drain_start(void)
{
	long i;

	draining = 1;
	drain_deadline = now + DRAIN_MS;
	logmsg(LOG_NOTICE, "stopping: draining %d connections", nactive);
	/* Stop accepting: new clients are refused by the kernel. */
	for (i = 0; i < npfd; i++) {
		if ((owner[i] & 3) == O_LISTEN) {
			close(pfd[i].fd);
			slot_del((int)i);
			i--;
		}
	}
	for (i = 0; i < nidles; i++)
		if (idles[i].fd != -1)
			idle_close(&idles[i]);
	for (i = 0; i < cfg.max_connections; i++)
		if (conns[i].cstate == C_IDLE)
			conn_close(&conns[i]);
}

static void
dispatch(const struct ready *r)
{
	int idx = r->own / 4;
	struct conn *c = &conns[idx];

	switch (r->own & 3) {
	case O_LISTEN:
		if (!draining)
			do_accept(listen_fd[idx]);
		return;
	case O_IDLE:
		/* The backend closed an idle connection (or sent junk). */
		if (idles[idx].fd != -1 && idles[idx].gen == r->gen)
			idle_close(&idles[idx]);
		return;
	case O_CLIENT:
		if (c->gen != r->gen || c->cfd == -1)
			return;
		client_event(c, r->rev);
		break;
	case O_UP:
		if (c->gen != r->gen || c->ufd == -1)
			return;
		up_event(c, r->rev);
		break;
	}
	if (c->cstate != C_FREE)
		conn_update(c);
}

static void
loop(void)
{
	int n, i, nready, timeout;

	for (;;) {
		now = mono_ms();
		if (sig_term && !draining)
			drain_start();
		if (sig_usr1) {
			sig_usr1 = 0;
			if (log_open() == -1)
				logmsg(LOG_ERR, "reopen %s: %s", cfg.log,
				    strerror(errno));
			else
				logmsg(LOG_NOTICE, "log reopened");
		}
		if (sig_hup) {
			sig_hup = 0;
			logmsg(LOG_WARNING, "SIGHUP: reload is not supported "
			    "by this build; restart to apply changes");
		}
		timeout = run_timers();
		if (draining && (nactive == 0 || now >= drain_deadline))
			break;
		pool_kick();
		log_flush();
		n = poll(pfd, npfd, timeout);
		if (n < 0) {
			if (errno != EINTR)
				logmsg(LOG_ERR, "poll: %s", strerror(errno));
			continue;
		}
		now = mono_ms();
		/* Collect first: handlers add and remove slots. */
		nready = 0;
		for (i = 0; i < npfd && nready < n; i++) {
			int o = owner[i];

			if (pfd[i].revents == 0)
				continue;
			ready[nready].own = o;
			ready[nready].rev = pfd[i].revents;
			ready[nready].gen = (o & 3) == O_IDLE ?
			    idles[o / 4].gen : (o & 3) == O_LISTEN ? 0 :
			    conns[o / 4].gen;
			nready++;
		}
		for (i = 0; i < nready; i++)
			dispatch(&ready[i]);
	}
	if (nactive > 0)
		logmsg(LOG_WARNING, "stopped with %d connections open",
		    nactive);
	log_flush();
}

/* ------------------------------------------------------------ startup */

static void
on_signal(int sig)
{
	switch (sig) {
	case SIGTERM:
	case SIGINT:
		sig_term = 1;
		break;
	case SIGHUP:
		sig_hup = 1;
		break;
	case SIGUSR1:
		sig_usr1 = 1;
		break;
	}
}

static void
signals_init(void)
{
	struct sigaction sa;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_signal;
	sigemptyset(&sa.sa_mask);
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGHUP, &sa, NULL);
	sigaction(SIGUSR1, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

static int
listen_on(const char *spec)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	if (conf_addr(spec, &ss, &len, 1) == -1) {
		fprintf(stderr, "%s: listen %s: bad address\n", cfg.file, spec);
		return -1;
	}
	fd = socket(ss.ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC,
	    0);
	if (fd == -1)
		goto fail;
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	if (bind(fd, (struct sockaddr *)&ss, len) == -1 ||
	    listen(fd, 511) == -1)
		goto fail;
	return fd;
fail:
	fprintf(stderr, "%s: listen %s: %s\n", cfg.file, spec,
	    strerror(errno));
	if (fd != -1)
		close(fd);
	return -1;
}

/* Reserve every table once; the loop never allocates. */
static int
reserve(void)
{
	long i, nconn = cfg.max_connections, nslots;
	int nsrv = 0;

	for (i = 0; i < cfg.nbackends; i++)
		nsrv += cfg.backends[i].nsrv;
	bufsz = (uint32_t)cfg.buffer_size;
	nidles = nsrv * IDLE_PER_SERVER;
	if (nidles > nconn)
		nidles = (int)nconn;
	nslots = nlisten + 2 * nconn + nidles;
	conns = calloc(nconn, sizeof(*conns));
	free_conns = calloc(nconn, sizeof(*free_conns));
	idles = calloc(nidles ? nidles : 1, sizeof(*idles));
	pfd = calloc(nslots, sizeof(*pfd));
	owner = calloc(nslots, sizeof(*owner));
	ready = calloc(nslots, sizeof(*ready));
	pool = calloc(cfg.buffers, sizeof(*pool));
	/* Not touched here: pages cost RSS only once a buffer is used. */
	pool_mem = malloc((size_t)cfg.buffers * bufsz);
	scratch = malloc(bufsz);
	pathbuf = malloc(bufsz);
	if (!conns || !free_conns || !idles || !pfd || !owner || !ready ||
	    !pool || !pool_mem || !scratch || !pathbuf)
		return -1;
	for (i = 0; i < nconn; i++) {
		conns[i].cfd = conns[i].ufd = -1;
		conns[i].cslot = conns[i].uslot = -1;
		free_conns[nfree_conns++] = (int)(nconn - 1 - i);
	}
	for (i = 0; i < nidles; i++)
		idles[i].fd = -1;
	for (i = 0; i < cfg.buffers; i++)
		pool[pool_free++] = pool_mem + (size_t)i * bufsz;
	for (i = 0; i < nlisten; i++)
		pfd[slot_add(listen_fd[i], O_LISTEN, (int)i)].events = POLLIN;
	logmsg(LOG_INFO, "reserved: %ld connections (%zu B each), "
	    "%ld buffers of %u B, %d idle upstream slots",
	    nconn, sizeof(struct conn), cfg.buffers, bufsz, nidles);
	return 0;
}

/* Enough descriptors for every slot, or accept() would spin on EMFILE. */
static void
raise_nofile(void)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)(2 * cfg.max_connections + nidles + 64);

	if (getrlimit(RLIMIT_NOFILE, &rl) == -1)
		return;
	if (rl.rlim_cur >= need)
		return;
	rl.rlim_cur = rl.rlim_max < need ? rl.rlim_max : need;
	if (rl.rlim_max < need)
		rl.rlim_max = need;	/* root may raise the hard limit */
	if (setrlimit(RLIMIT_NOFILE, &rl) == -1) {
		getrlimit(RLIMIT_NOFILE, &rl);
		rl.rlim_cur = rl.rlim_max;
		setrlimit(RLIMIT_NOFILE, &rl);
	}
	if (rl.rlim_cur < need)
		logmsg(LOG_WARNING, "open file limit %lu is below the %lu "
		    "max_connections needs", (unsigned long)rl.rlim_cur,
		    (unsigned long)need);
}

/* Fork into the background; the parent exits once the child is ready
 * (pidfile written), so init scripts can rely on it. */
static int
daemonize(void)
{
	int p[2], fd;
	pid_t pid;
	char ok;

	if (pipe(p) == -1)
		return -1;
	pid = fork();
	if (pid == -1)
		return -1;
	if (pid > 0) {
		close(p[1]);
		_exit(read(p[0], &ok, 1) == 1 ? 0 : 1);
	}
	close(p[0]);
	setsid();
	if (chdir("/") == -1)
		return -1;
	fd = open("/dev/null", O_RDWR);
	if (fd != -1) {
		dup2(fd, 0);
		dup2(fd, 1);
		if (log_fd != 2)
			dup2(fd, 2);
		if (fd > 2)
			close(fd);
	}
	return p[1];
}

static int
write_pidfile(void)
{
	char line[32];
	int fd, n;

	if (cfg.pidfile == NULL)
		return 0;
	fd = open(cfg.pidfile, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
	if (fd == -1)
		return -1;
	n = snprintf(line, sizeof(line), "%ld\n", (long)getpid());
	if (write(fd, line, n) != n) {
		close(fd);
		return -1;
	}
	return close(fd);
}

/* chroot and drop root after the listeners are bound. */
static int
drop_privileges(void)
{
	struct passwd *pw = NULL;

	if (cfg.user != NULL) {
		pw = getpwnam(cfg.user);
		if (pw == NULL) {
			logmsg(LOG_ERR, "user %s: no such user", cfg.user);
			return -1;
		}
	}
	if (cfg.chroot_dir != NULL &&
	    (chroot(cfg.chroot_dir) == -1 || chdir("/") == -1)) {
		logmsg(LOG_ERR, "chroot %s: %s", cfg.chroot_dir,
		    strerror(errno));
		return -1;
	}
	if (pw == NULL)
		return 0;
	if (setgroups(1, &pw->pw_gid) == -1 || setgid(pw->pw_gid) == -1 ||
	    setuid(pw->pw_uid) == -1) {
		logmsg(LOG_ERR, "cannot become %s: %s", cfg.user,
		    strerror(errno));
		return -1;
	}
	/* Refuse to go on as root when asked not to be. */
	if (pw->pw_uid != 0 && (getuid() == 0 || geteuid() == 0 ||
	    setuid(0) != -1)) {
		logmsg(LOG_ERR, "still root after dropping to %s", cfg.user);
		return -1;
	}
	return 0;
}

static void
usage(void)
{
	fprintf(stderr, "usage: %s [-c FILE] [-t] [-f] [-v]\n", PROXY_NAME);
	exit(1);
}

int
main(int argc, char **argv)
{
	char err[512];
	int ch, test = 0, ready_fd = -1, i, rc = 0;

	while ((ch = getopt(argc, argv, "c:tfv")) != -1) {
		switch (ch) {
		case 'c':
			conf_path = optarg;
			break;
		case 't':
			test = 1;
			break;
		case 'f':
			foreground = 1;
			break;
		case 'v':
			printf("%s %s (HTTP/1.1, poll; inih, BearSSL linked "
			    "statically)\n", PROXY_NAME, PROXY_VERSION);
			return 0;
		default:
			usage();
		}
	}
	if (optind != argc)
		usage();
	if (conf_load(conf_path, &cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		conf_free(&cfg);
		return 1;
	}
	if (test) {
		printf("%s: configuration ok\n", conf_path);
		conf_free(&cfg);
		return 0;
	}
	listen_fd = calloc(cfg.nlisten, sizeof(*listen_fd));
	if (listen_fd == NULL)
		return 1;
	for (i = 0; i < cfg.nlisten; i++) {
		listen_fd[nlisten] = listen_on(cfg.listen[i]);
		if (listen_fd[nlisten] == -1)
			return 1;
		nlisten++;
	}
	if (log_open() == -1) {
		fprintf(stderr, "%s: log %s: %s\n", cfg.file, cfg.log,
		    strerror(errno));
		return 1;
	}
	if (!foreground && (ready_fd = daemonize()) == -1) {
		fprintf(stderr, "daemon: %s\n", strerror(errno));
		return 1;
	}
	signals_init();
	now = mono_ms();
	if (write_pidfile() == -1) {
		logmsg(LOG_ERR, "pidfile %s: %s", cfg.pidfile, strerror(errno));
		log_flush();
		return 1;
	}
	if (reserve() == -1) {
		logmsg(LOG_ERR, "cannot reserve memory");
		rc = 1;
		goto out;
	}
	raise_nofile();
	if (drop_privileges() == -1) {
		rc = 1;
		goto out;
	}
	for (i = 0; i < cfg.nlisten; i++)
		logmsg(LOG_NOTICE, "listening on %s", cfg.listen[i]);
	if (ready_fd != -1) {
		(void)write(ready_fd, "", 1);
		close(ready_fd);
	}
	loop();
	logmsg(LOG_NOTICE, "stopped");
out:
	log_flush();
	if (cfg.pidfile != NULL && unlink(cfg.pidfile) == -1 && rc == 0)
		logmsg(LOG_WARNING, "pidfile %s: %s", cfg.pidfile,
		    strerror(errno));
	log_flush();
	return rc;
}
