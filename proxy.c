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
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <netinet/tcp.h>
#include <sys/resource.h>
#ifdef __linux__
#include <sys/epoll.h>
#endif
#include <sys/stat.h>

#include "proxy.h"

/* Headroom kept free while a head is read: the rewritten head (with the
 * X-Forwarded-* and Via lines) is built in place and may be longer. */
#define HEAD_SLACK	1024
#define LINGER_MS	2000	/* reading leftovers after a final response */
#define DRAIN_MS	5000	/* TERM: how long in-flight requests get */
#define IDLE_PER_SERVER	128	/* idle upstream connections kept per server */
#define RELAY_TURNS	8	/* reads in a row for one relay (up_read) */
#define CONNECT_MS	5000	/* connect timeout, when backend_timeout is longer */
#define MIN_BODY_RATE	256	/* bytes/s a request body must average */
#define RECLAIM_MS	1000	/* stalled this long, a session may lose its
				   buffers to a new request (pool_reclaim) */
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
	U_CACHE,	/* no upstream: rs is filled from the cache */
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
	F_SENTANY = 1 << 16,	/* request bytes left rq for the upstream */
	F_GOTRESP = 1 << 17,	/* response bytes came from the upstream */
	F_IDEMP = 1 << 18,	/* idempotent method: may be sent twice */
	F_CHUP = 1 << 19,	/* poll said POLLHUP on the client */
	F_UHUP = 1 << 20,	/* poll said POLLHUP/POLLERR on the upstream */
	F_UERR = 1 << 21,	/* upstream refused our bytes: send no more */
	F_DEFER = 1 << 22,	/* queued to parse a pipelined head */
	F_COUNTED = 1 << 23,	/* counted by acl_conn_open */
	F_CKICK = 1 << 24,	/* queued: TLS plaintext waits for the client */
	F_UKICK = 1 << 25,	/* queued: the same from the upstream */
	F_LOGREQ = 1 << 26,	/* a request to write to the access log */
	F_NEEDPROXY = 1 << 27,	/* a PROXY protocol header must come first */
	F_CACHED = 1 << 28,	/* on a cache route: GET/HEAD looked up */
	F_STORING = 1 << 29,	/* the response is being stored (c->cw) */
	F_REVAL = 1 << 30,	/* revalidating c->cref with the backend */
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

/* Fields ordered so that the compiler adds no padding: 328 bytes. */
struct conn {
	int cfd, ufd;		/* -1 when closed */
	int cslot, uslot;	/* pollfd slots, -1 when none */
	uint32_t gen;		/* bumped on reuse: stale events are dropped */
	uint32_t ugen;		/* the same for each upstream connection */
	uint8_t cstate, ustate;
	uint8_t qmode, rmode;	/* request / response body framing */
	uint8_t minor;		/* client's HTTP/1.<minor> */
	uint8_t tries;		/* servers that failed this request */
	uint8_t parked;		/* idle, watched by epoll (park), not poll */
	uint8_t pfull;		/* the pipe took no more: wait for the client */
	uint32_t flags;
	struct buf rq, rs;
	struct tls *ctls, *utls;	/* TLS engines, NULL: plain */
	uint32_t qfwd;		/* bytes at rq.off that belong upstream */
	uint32_t qsent;		/* of those, sent but held (F_HOLD) */
	uint32_t rfwd;		/* bytes at rs.off that belong to the client */
	uint32_t piped;		/* body bytes in the lent pipe, for the client */
	uint32_t pipe;		/* 1 + index of the lent pipe, 0: none */
	uint32_t litlen;
	uint64_t qleft, rleft;	/* M_LEN bytes still to come */
	struct http_chunk qch, rch;
	const char *lit;	/* literal output (100 Continue, error page) */
	struct server *srv;
	const struct route *rt;	/* the route of the request in flight */
	uint32_t cgen;		/* the config generation rt and srv are from */
	uint32_t rhead;		/* of the bytes sent, head bytes */
	int64_t tbody;		/* when the request body began (ms) */
	int64_t treq;		/* when the request head was complete (ms) */
	uint64_t sent;		/* response bytes sent (access log) */
	int16_t status;		/* final status sent, 0: none yet */
	uint8_t inval;		/* unsafe request on a cache route: its
				   answer's Location is invalidated too */
	int32_t cw;		/* cache writer while F_STORING */
	struct cache_ref cref;	/* the stored response served or revalidated */
	uint32_t host_hash;	/* of its Host (strip_prefix Location) */
	int64_t twreq;		/* wall clock when the request went (Age) */
	uint64_t qbytes;	/* body bytes read since (slow-body check) */
	int64_t tstart;		/* when the current state began (ms) */
	int64_t tprog;		/* last progress on either side (ms) */
	union addr peer;
};

struct idle {
	int fd;			/* -1: free entry */
	struct tls *tls;	/* its engine when the server speaks TLS */
	int slot;
	uint32_t gen;
	struct server *srv;
	int64_t since;
	int prev, next;		/* its server's list, newest first; or the
				   free list (next only); -1 ends a list */
	uint32_t polled;	/* poll_seq when it was pooled */
};

/* pollfd owners are index * 8 + kind (O_* in proxy.h). */
#define OWN(idx, kind)	((idx) * 8 + (kind))
#define OWN_KIND(o)	((o) & 7)
#define OWN_IDX(o)	((o) / 8)

static struct config cfg;
static const char *conf_path = "/etc/proxy.ini";
static int foreground;

static struct conn *conns;
static int *free_conns, nfree_conns, nactive;
static struct idle *idles;
static int nidles;
static int idle_freel = -1;	/* free entries, linked through next */
static uint32_t poll_seq;	/* ppoll() calls made */

/*
 * Large plain-to-plain response bodies go socket -> pipe -> socket with
 * splice(): the bytes never enter the process, so there is no copy in
 * and out of a buffer, and the buffer goes back to the pool meanwhile.
 * The pipes are made at startup and lent like buffers.
 */
#if defined(__linux__) && defined(SPLICE_F_MOVE)
#define HAVE_SPLICE 1
#endif
static int (*pipes)[2];		/* [i][0] read end, [i][1] write end */
static int *pipe_freel, npipe_free, npipes;
static uint32_t pipe_cap;	/* bytes one pipe holds */

/*
 * poll() costs time in proportion to the descriptors it is given, and
 * most of a big table is keep-alive clients with nothing to say. On
 * Linux, a client idle for PARK_MS leaves the pollfd table for an epoll
 * set, itself one slot in the table; its first byte brings it back.
 * Busy connections never pay an epoll_ctl.
 */
#define PARK_MS		1000
#define PIPES_MAX	4096	/* pipes_reserve: at most (64 KB each, kernel) */
static int park_fd = -1;	/* the epoll set; -1: no parking */
static int nparked;

/*
 * Deadlines are not kept sorted: the table is walked only when the
 * earliest deadline known may have come. Whatever can bring a deadline
 * nearer (conn_update after every event, idle_put) lowers timer_next;
 * progress only pushes deadlines later, which the next walk finds. So a
 * busy loop walks the table about once per shortest timeout instead of
 * on every turn. TIMER_WALK_MS bounds the harm of a missed note.
 */
#define TIMER_WALK_MS	1000
static int64_t timer_next;	/* no deadline falls before this */
static int64_t timer_walked;	/* when the table was last walked */

static void
timer_note(int64_t d)
{
	if (d < timer_next)
		timer_next = d;
}
static struct pollfd *pfd;
static int *owner;
static int npfd;
static int *listen_fd;
static uint8_t *listen_is_tls;	/* per listener: a [tls] listen */
static int nlisten;
static int tls_port = 443;	/* for redirect_http: the first TLS port */
static char hsts_line[64];	/* "Strict-Transport-Security: ..." or "" */
static int *deferq, ndefer;	/* sessions with work queued: run_deferred */
static struct server **servers;	/* every backend's servers, flat */
static long nslots_cap;		/* pollfd slots reserved */
static int nservers;

static char *pool_mem, **pool;
static int pool_free, pool_waiters;
static uint32_t bufsz;

static char *scratch;		/* head rewriting */
static char *pathbuf;		/* normalised path */
static struct http_msg msg;

static int64_t now;
static int64_t wall;		/* time(NULL), read once per turn */
static int cache_on;		/* [cache] size > 0 */
static char cache_cond[512];	/* conditional lines for a revalidation */

/*
 * SIGHUP swaps in a new configuration without dropping a connection.
 * Sessions in flight keep pointers into the one they started with
 * (route, servers), so a replaced configuration is kept, counted, until
 * the last of them ends.
 */
#define RETIRED	16
static uint32_t cfg_gen;
static struct {
	struct config c;
	uint32_t gen;
	int refs;		/* sessions still using it; 0: slot free */
} retired[RETIRED];

/* Counters for the status page. */
static struct {
	int64_t start;
	uint64_t accepted, requests;
	uint64_t classes[5];	/* responses sent: 1xx .. 5xx */
	uint64_t spliced;	/* body bytes moved by splice() */
} stats;

/* What reserve() set aside, for the log and the status page. */
static struct {
	size_t conns, buffers, tls, cache, addresses;
	size_t other;		/* poll, idle-upstream and server tables */
} mem;
static volatile sig_atomic_t sig_term, sig_hup, sig_usr1;
/*
 * The handled signals stay blocked except inside ppoll(): one arriving
 * between the loop's look at the flags and the wait would otherwise be
 * noticed only at the next network event (a TERM could hang forever).
 */
static sigset_t poll_mask;
static int draining;
static int64_t drain_deadline;

/* ---------------------------------------------------------------- log */

static char logbuf[LOG_BUF];
static size_t loglen;
static int log_fd = 2, log_syslog;

/* Access log: one line per request, collected and written once a turn. */
static const char *log_bad;	/* the file log_open could not open */
static char alogbuf[2 * LOG_BUF];
static size_t aloglen;
static int alog_fd = -1;

static void
write_all(int fd, const char *p, size_t len)
{
	size_t off = 0;
	ssize_t n;

	while (off < len) {
		n = write(fd, p + off, len - off);
		if (n <= 0)
			break;	/* a full disk must not stop the proxy */
		off += (size_t)n;
	}
}

static void
log_flush(void)
{
	if (!log_syslog)
		write_all(log_fd, logbuf, loglen);
	loglen = 0;
	if (alog_fd != -1)
		write_all(alog_fd, alogbuf, aloglen);
	aloglen = 0;
}

/*
 * A message repeating fast (one per failing request under load, say) is
 * written at most LOG_BURST times a second; the rest are counted and the
 * count is written when its next second begins. Keyed by the format.
 */
#define LOG_BURST	10
#define LOG_KINDS	16

static struct {
	const char *fmt;
	time_t sec;
	uint32_t n, dropped;
} kinds[LOG_KINDS];

static void logline(int prio, const char *line, int n, time_t sec);

/* Write the counts of messages dropped in seconds now past (called once
 * a turn, and before a slot changes hands). */
/* Are counts waiting to be written (the loop then wakes each second)? */
static int
log_pending(void)
{
	int k;

	for (k = 0; k < LOG_KINDS; k++)
		if (kinds[k].dropped > 0)
			return 1;
	return 0;
}

static void
log_dropped(time_t sec)
{
	char line[112];
	int k, n;

	for (k = 0; k < LOG_KINDS; k++) {
		if (kinds[k].dropped == 0 || kinds[k].sec == sec)
			continue;
		n = snprintf(line, sizeof(line), "(%u similar messages dropped: "
		    "\"%.40s\")", kinds[k].dropped, kinds[k].fmt);
		kinds[k].dropped = 0;
		logline(LOG_NOTICE, line, n < (int)sizeof(line) ? n :
		    (int)sizeof(line) - 1, sec);
	}
}

static int
log_allowed(const char *fmt, time_t sec)
{
	unsigned i, h = (unsigned)((uintptr_t)fmt >> 3) % LOG_KINDS;

	log_dropped(sec);
	for (i = 0; i < LOG_KINDS; i++) {
		unsigned k = (h + i) % LOG_KINDS;

		if (kinds[k].fmt != fmt && kinds[k].fmt != NULL &&
		    kinds[k].sec == sec)
			continue;	/* busy with another format */
		if (kinds[k].fmt != fmt || kinds[k].sec != sec) {
			kinds[k].fmt = fmt;
			kinds[k].sec = sec;
			kinds[k].n = 0;
		}
		if (++kinds[k].n <= LOG_BURST)
			return 1;
		kinds[k].dropped++;
		return 0;
	}
	return 1;	/* too many kinds at once: no limit */
}

void
logmsg(int prio, const char *fmt, ...)
{
	char line[512];
	struct timespec ts;
	va_list ap;
	int n;

	clock_gettime(CLOCK_REALTIME, &ts);
	if (!log_allowed(fmt, ts.tv_sec))
		return;
	va_start(ap, fmt);
	n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	if (n >= (int)sizeof(line))
		n = sizeof(line) - 1;
	logline(prio, line, n, ts.tv_sec);
}

static void
logline(int prio, const char *line, int n, time_t sec)
{
	static const char *names[] = { "emerg", "alert", "crit", "error",
	    "warn", "notice", "info", "debug" };
	struct tm tm;

	if (log_syslog) {
		syslog(prio, "%.*s", n, line);
		return;
	}
	if (loglen + n + 64 > sizeof(logbuf))
		log_flush();
	gmtime_r(&sec, &tm);
	loglen += strftime(logbuf + loglen, 32, "%Y-%m-%dT%H:%M:%SZ ", &tm);
	loglen += snprintf(logbuf + loglen, sizeof(logbuf) - loglen,
	    "%s: %.*s\n", names[prio & 7], n, line);
}

static int
log_open(void)
{
	int fd;

	if (cfg.access_log == NULL && alog_fd != -1) {
		close(alog_fd);	/* turned off by a reload */
		alog_fd = -1;
	}
	if (cfg.access_log != NULL) {
		fd = open(cfg.access_log, O_WRONLY | O_APPEND | O_CREAT |
		    O_CLOEXEC, 0640);
		if (fd == -1) {
			log_bad = cfg.access_log;
			return -1;
		}
		if (alog_fd != -1)
			close(alog_fd);
		alog_fd = fd;
	}

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
	if (fd == -1) {
		log_bad = cfg.log;
		return -1;
	}
	if (log_fd > 2)
		close(log_fd);
	log_fd = fd;
	return 0;
}

static const char *client_ip(struct conn *c, char *out, size_t len);

/*
 * Access log records: what the line needs from the request head, kept
 * per connection from the head (which is rewritten and sent on) to the
 * end of the response. Reserved only when access_log is on.
 */
#define ALOG_REQ	160	/* "METHOD target HTTP/1.x", quoted */
#define ALOG_REC	256	/* and "referer" "user-agent" after it */
static char *alog_rec;

/* Quote s into out (at most cap bytes, NUL included): no '"', '\\' or
 * control bytes reach the file (log injection), long values are cut. */
static void
alog_quote(char *out, size_t cap, const struct slice *parts, int nparts)
{
	static const char hex[] = "0123456789abcdef";
	size_t o = 0;
	uint32_t i;
	int k;

	out[o++] = '"';
	for (k = 0; k < nparts; k++) {
		if (k > 0 && o < cap - 2)
			out[o++] = ' ';
		for (i = 0; i < parts[k].n && o < cap - 6; i++) {
			unsigned char ch = (unsigned char)parts[k].p[i];

			if (ch >= 0x20 && ch < 0x7f && ch != '"' && ch != '\\') {
				out[o++] = (char)ch;
				continue;
			}
			out[o++] = '\\';
			out[o++] = 'x';
			out[o++] = hex[ch >> 4];
			out[o++] = hex[ch & 15];
		}
		if (i < parts[k].n && o < cap - 5) {
			memcpy(out + o, "...", 3);
			o += 3;
		}
	}
	out[o++] = '"';
	out[o] = '\0';
}

static struct slice
header_value(const struct http_msg *m, int id)
{
	struct slice none = { "-", 1 };
	int i;

	for (i = 0; i < m->nh; i++)
		if (m->h[i].id == id)
			return m->h[i].value;
	return none;
}

/* A request begins (m NULL: a head that could not be parsed). */
static void
alog_begin(struct conn *c, const struct http_msg *m)
{
	char *rec;
	struct slice v[3];
	char ver[9];
	size_t len;

	if (alog_rec == NULL)
		return;
	rec = alog_rec + (size_t)(c - conns) * ALOG_REC;
	c->flags |= F_LOGREQ;
	c->treq = now;
	if (m == NULL) {
		strcpy(rec, "\"-\"");
		strcpy(rec + ALOG_REQ, "\"-\" \"-\"");
		return;
	}
	snprintf(ver, sizeof(ver), "HTTP/1.%d", m->minor);
	v[0] = m->method;
	v[1] = m->target;
	v[2].p = ver;
	v[2].n = 8;
	alog_quote(rec, ALOG_REQ, v, 3);
	v[0] = header_value(m, HN_REFERER);
	alog_quote(rec + ALOG_REQ, (ALOG_REC - ALOG_REQ) / 2, v, 1);
	v[0] = header_value(m, HN_USER_AGENT);
	len = strlen(rec + ALOG_REQ);
	rec[ALOG_REQ + len] = ' ';
	alog_quote(rec + ALOG_REQ + len + 1, ALOG_REC - ALOG_REQ - len - 1,
	    v, 1);
}

/*
 * The request ended: Combined Log Format, then the request time in
 * seconds and the upstream server ("-" when none):
 * 127.0.0.1 - - [30/Nov/2026:02:13:14 +0000] "GET / HTTP/1.1" 200 27
 * "-" "curl/7.88.1" 0.002 127.0.0.1:9001
 */
static void
alog_end(struct conn *c)
{
	static time_t last;
	static char when[40];
	char ip[INET6_ADDRSTRLEN], st[8];
	const char *rec;
	struct timespec ts;
	int n;

	if (!(c->flags & F_LOGREQ))
		return;
	c->flags &= ~F_LOGREQ;
	rec = alog_rec + (size_t)(c - conns) * ALOG_REC;
	clock_gettime(CLOCK_REALTIME, &ts);
	if (ts.tv_sec != last) {
		struct tm tm;

		gmtime_r(&ts.tv_sec, &tm);
		strftime(when, sizeof(when), "[%d/%b/%Y:%H:%M:%S +0000]", &tm);
		last = ts.tv_sec;
	}
	if (c->status > 0)
		snprintf(st, sizeof(st), "%d", c->status);
	else
		strcpy(st, "-");	/* closed before an answer */
	if (aloglen + 2 * ALOG_REC + 160 > sizeof(alogbuf))
		log_flush();
	n = snprintf(alogbuf + aloglen, sizeof(alogbuf) - aloglen,
	    "%s - - %s %s %s %llu %s %lld.%03lld %s\n",
	    client_ip(c, ip, sizeof(ip)), when, rec, st,
	    (unsigned long long)(c->sent > c->rhead ? c->sent - c->rhead : 0),
	    rec + ALOG_REQ, (long long)(now - c->treq) / 1000,
	    (long long)(now - c->treq) % 1000,
	    c->srv != NULL ? c->srv->name : "-");
	if (n > 0 && (size_t)n < sizeof(alogbuf) - aloglen)
		aloglen += (size_t)n;
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

/*
 * A session holding a request buffer but no response buffer will want
 * one more. A request buffer is lent only while the pool can still pay
 * every such debt: otherwise N requests in flight could hold all N
 * buffers and wait forever for the response buffers they need.
 */
static int debts;

static int
owes(const struct conn *c)
{
	return c->rq.d != NULL && c->rs.d == NULL;
}

/* Buffers b could be lent now (it must be one of c's). */
static int
buf_available(const struct conn *c, const struct buf *b)
{
	if (b == &c->rq && c->rs.d == NULL)
		return pool_free >= debts + 2;
	return pool_free >= 1;
}

static void
buf_wait(struct conn *c)
{
	if (!(c->flags & F_WAITBUF)) {
		c->flags |= F_WAITBUF;
		pool_waiters++;
	}
}

static void
buf_unwait(struct conn *c)
{
	if (c->flags & F_WAITBUF) {
		c->flags &= ~F_WAITBUF;
		pool_waiters--;
	}
}

static void conn_close(struct conn *c);

/*
 * The pool is out of buffers and a client has sent a request. Buffers
 * held by sessions that stall are taken back, as the connection table
 * does with its slots (DESIGN.md): the oldest head still being sent, or
 * the session whose client stopped reading its response longest, once it
 * has stalled RECLAIM_MS. A few slow clients must not lock out the rest.
 * Returns 1 when c may now have a buffer.
 */
static int
pool_reclaim(struct conn *self)
{
	struct conn *c, *old;
	int64_t age, oldest;
	long i;
	int round;

	for (round = 0; round < 4 && !buf_available(self, &self->rq);
	    round++) {
		old = NULL;
		oldest = RECLAIM_MS - 1;
		for (i = 0; i < cfg.max_connections; i++) {
			c = &conns[i];
			if (c == self)
				continue;
			if (c->cstate == C_HEAD && c->rq.d != NULL)
				age = now - c->tstart;
			else if ((c->cstate == C_SENT || c->cstate == C_BODY) &&
			    (c->rfwd > 0 || c->litlen > 0))
				age = now - c->tprog;
			else
				continue;
			if (age > oldest) {
				oldest = age;
				old = c;
			}
		}
		if (old == NULL)
			return 0;
		logmsg(LOG_INFO, "buffers exhausted: closing a connection "
		    "stalled for %lld ms", (long long)oldest);
		conn_close(old);
	}
	return buf_available(self, &self->rq);
}

/* Return c's buffer b to the pool. */
static void
buf_put(struct conn *c, struct buf *b)
{
	int before = owes(c);

	if (b->d == NULL)
		return;
	pool[pool_free++] = b->d;
	b->d = NULL;
	b->off = b->len = 0;
	debts += owes(c) - before;
}

/* Lend c a buffer b if none is held; 0 when none may be lent now (the
 * caller then simply does not read: backpressure, not failure). */
static int
buf_want(struct conn *c, struct buf *b)
{
	int before = owes(c);

	if (b->d != NULL)
		return 1;
	if (!buf_available(c, b)) {
		buf_wait(c);
		return 0;
	}
	b->d = pool[--pool_free];
	b->off = b->len = 0;
	debts += owes(c) - before;
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

int
loop_watch(int fd, int kind, int idx)
{
	pfd[npfd].fd = fd;
	pfd[npfd].events = 0;
	pfd[npfd].revents = 0;
	owner[npfd] = OWN(idx, kind);
	return npfd++;
}

/* The last slot moves into the freed one; its owner learns its new slot. */
void
loop_unwatch(int slot)
{
	int last = --npfd, o, idx;

	if (slot == last)
		return;
	pfd[slot] = pfd[last];
	owner[slot] = owner[last];
	o = owner[slot];
	idx = OWN_IDX(o);
	switch (OWN_KIND(o)) {
	case O_CLIENT:
		conns[idx].cslot = slot;
		break;
	case O_UP:
		conns[idx].uslot = slot;
		break;
	case O_IDLE:
		idles[idx].slot = slot;
		break;
	case O_CHECK:
		servers[idx]->hc.slot = slot;
		break;
	}
}

void
loop_events(int slot, short events)
{
	pfd[slot].events = events;
}

int
loop_server_index(const struct server *s)
{
	int i;

	for (i = 0; i < nservers; i++)
		if (servers[i] == s)
			return i;
	return -1;
}

/* ----------------------------------------------------- idle upstreams */

/* Unlink an entry from its server's list and put it on the free list. */
static void
idle_unlink(struct idle *e)
{
	struct server *s = e->srv;

	if (e->prev != -1)
		idles[e->prev].next = e->next;
	else
		s->idle_top = e->next + 1;
	if (e->next != -1)
		idles[e->next].prev = e->prev;
	s->idle--;
	e->fd = -1;
	e->tls = NULL;
	e->gen++;
	e->prev = -1;
	e->next = idle_freel;
	idle_freel = (int)(e - idles);
}

static void
idle_close(struct idle *e)
{
	loop_unwatch(e->slot);
	close(e->fd);
	if (e->tls != NULL)
		tls_release(e->tls);
	idle_unlink(e);
}

static void
idle_put(struct server *s, int fd, struct tls *t)
{
	struct idle *e;
	int i;

	if (s->idle < IDLE_PER_SERVER && !draining && idle_freel != -1) {
		i = idle_freel;
		e = &idles[i];
		idle_freel = e->next;
		e->fd = fd;
		e->tls = t;
		e->srv = s;
		e->since = now;
		e->polled = poll_seq;
		e->slot = loop_watch(fd, O_IDLE, i);
		/* Any event on an idle upstream (data, EOF) ends it. */
		pfd[e->slot].events = POLLIN;
		e->prev = -1;
		e->next = s->idle_top - 1;
		if (e->next != -1)
			idles[e->next].prev = i;
		s->idle_top = i + 1;
		s->idle++;
		timer_note(e->since + cfg.idle_timeout_ms);
		return;
	}
	close(fd);
	if (t != NULL)
		tls_release(t);
}

/*
 * Newest first: the most recently used connection is the least likely
 * to have been closed by the backend's own idle timer. One that has
 * anything to read (late bytes of an earlier response, or its close) is
 * not used: those bytes must never reach another client. This turn's
 * poll() tells whether anything had come for it (an event not yet
 * dispatched is still in revents), which a request that can be replayed
 * may trust: should the backend close in the microseconds since, it is
 * retried. careful: a request that cannot be replayed asks the socket,
 * and so does any request for a connection pooled since that poll().
 */
static int
idle_take(struct server *s, struct tls **t, int careful)
{
	struct idle *e;
	char b;
	int fd;

	while (s->idle_top != 0) {
		e = &idles[s->idle_top - 1];
		fd = e->fd;
		if (pfd[e->slot].revents == 0 &&
		    ((!careful && e->polled != poll_seq) ||
		    (recv(fd, &b, 1, MSG_PEEK | MSG_DONTWAIT) == -1 &&
		    (errno == EAGAIN || errno == EWOULDBLOCK)))) {
			loop_unwatch(e->slot);
			*t = e->tls;
			idle_unlink(e);
			return fd;
		}
		idle_close(e);
	}
	return -1;
}

/* ------------------------------------------------ socket or TLS I/O */

/* The halves read and write through these: plain sockets, or a BearSSL
 * engine in between (tls.c), with the same EAGAIN conventions. */
static ssize_t
c_recv(struct conn *c, void *p, size_t n)
{
	return c->ctls ? tls_recv(c->ctls, c->cfd, p, n) :
	    recv(c->cfd, p, n, 0);
}

static ssize_t
c_send(struct conn *c, const void *p, size_t n)
{
	return c->ctls ? tls_send(c->ctls, c->cfd, p, n) :
	    send(c->cfd, p, n, MSG_NOSIGNAL);
}

static ssize_t
u_recv(struct conn *c, void *p, size_t n)
{
	return c->utls ? tls_recv(c->utls, c->ufd, p, n) :
	    recv(c->ufd, p, n, 0);
}

static ssize_t
u_send(struct conn *c, const void *p, size_t n)
{
	return c->utls ? tls_send(c->utls, c->ufd, p, n) :
	    send(c->ufd, p, n, MSG_NOSIGNAL);
}

/* ------------------------------------------------------ session setup */

static void conn_update(struct conn *c);
static void park_due(const struct conn *c);
static void unpark(struct conn *c);
static void client_event(struct conn *c, short rev);
static void pipe_put(struct conn *c);
static int64_t conn_deadline(const struct conn *c);
static void client_flush(struct conn *c);
static void up_flush(struct conn *c);
static void head_step(struct conn *c);
static void proxy_apply(struct conn *c, const struct sockaddr_storage *ss);
static int proxy_peek(struct conn *c);
static struct slice header_value(const struct http_msg *m, int id);
static void status_request(struct conn *c);
static void own_close(struct conn *c);
static void cfg_release(struct conn *c);
static void reload(void);
static int same_list(char **a, int na, char **b, int nb);
static void alog_begin(struct conn *c, const struct http_msg *m);
static void redirect_request(struct conn *c);
static void listeners_pause(int pause);
static void tls_listeners(void);
static void resp_absorb(struct conn *c);
static int resp_claim(struct conn *c);
static int cache_try(struct conn *c, const struct route *rt);
static int cache_revalidated(struct conn *c, uint32_t pos);
static void cache_store(struct conn *c, uint32_t pos);
static void cache_fill(struct conn *c);
static void cache_invalidate_location(struct conn *c);
static void cache_serve(struct conn *c, int status);
static int reval_resend(struct conn *c, uint32_t pos);
static int is_idempotent(struct slice m);
static void up_eof(struct conn *c);

static void
up_close(struct conn *c)
{
	if (c->ufd == -1)
		return;
	c->srv->active--;
	loop_unwatch(c->uslot);
	close(c->ufd);
	if (c->utls != NULL) {
		tls_release(c->utls);
		c->utls = NULL;
	}
	c->ufd = -1;
	c->uslot = -1;
	c->ugen++;
	c->flags &= ~(F_UBLOCK | F_USHUT | F_UEOF | F_UHUP | F_UERR);
}

static void
conn_close(struct conn *c)
{
	alog_end(c);
	up_close(c);
	cfg_release(c);
	if (c->cfd != -1) {
		if (c->parked)
			unpark(c);	/* close() alone would do, but count */
		loop_unwatch(c->cslot);
		if (c->ctls != NULL && !(c->flags & (F_CSHUT | F_CHUP)))
			tls_close(c->ctls, c->cfd);	/* best effort */
		close(c->cfd);
	}
	if (c->ctls != NULL) {
		tls_release(c->ctls);
		c->ctls = NULL;
		tls_listeners();	/* an engine is free again */
	}
	if (c->flags & F_COUNTED)
		acl_conn_close(&c->peer.sa);
	buf_put(c, &c->rq);
	buf_put(c, &c->rs);
	pipe_put(c);
	if (c->flags & F_WAITBUF)
		pool_waiters--;
	c->cfd = -1;
	c->cslot = -1;
	c->cstate = C_FREE;
	c->ustate = U_NONE;
	/* It may still sit in deferq: keep the marks that say so. */
	c->flags &= F_DEFER | F_CKICK | F_UKICK;
	c->gen++;
	free_conns[nfree_conns++] = (int)(c - conns);
	nactive--;
}

/* The session no longer points into its configuration: a replaced one
 * is freed with its last user. */
static void
cfg_release(struct conn *c)
{
	int i;

	/* A response not read to its end is never kept (a cut copy). */
	if (c->flags & F_STORING) {
		cache_store_end(c->cw, 0);
		c->flags &= ~F_STORING;
	}
	if (c->srv == NULL && c->rt == NULL)
		return;
	c->srv = NULL;
	c->rt = NULL;
	if (c->cgen == cfg_gen)
		return;
	for (i = 0; i < RETIRED; i++)
		if (retired[i].refs > 0 && retired[i].gen == c->cgen) {
			if (--retired[i].refs == 0)
				conf_free(&retired[i].c);
			return;
		}
}

/* Forget the exchange: ready for the next request on this client. */
static void
exchange_reset(struct conn *c)
{
	c->qmode = c->rmode = M_NONE;
	c->qfwd = c->qsent = c->rfwd = 0;
	c->qleft = c->rleft = 0;
	c->lit = NULL;
	c->litlen = 0;
	cfg_release(c);
	c->tries = 0;
	c->inval = 0;
	c->status = 0;
	c->sent = 0;
	c->rhead = 0;
	c->flags &= F_TRUSTED | F_CBLOCK | F_WAITBUF | F_CEOF | F_CHUP |
	    F_DEFER | F_COUNTED | F_CKICK | F_UKICK | F_NEEDPROXY;
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

	alog_end(c);
	up_close(c);
	if ((c->flags & F_CEOF) || !unread) {
		conn_close(c);
		return;
	}
	if (c->ctls != NULL)
		tls_close(c->ctls, c->cfd);
	shutdown(c->cfd, SHUT_WR);
	c->flags |= F_CSHUT;
	buf_put(c, &c->rq);
	buf_put(c, &c->rs);
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
	stats.classes[code / 100 - 1]++;
	if (!(c->flags & F_LOGREQ))
		alog_begin(c, NULL);	/* a head we could not parse */
	c->status = (int16_t)code;
	buf_put(c, &c->rs);
	c->rfwd = 0;
	{
		size_t len;
		const char *p = http_error_page(code, &len), *eol;

		c->lit = p;
		c->litlen = (uint32_t)len;
		/* The access log counts the page's body, not its head. */
		{
			const char *end = memmem(p, len, "\r\n\r\n", 4);

			c->rhead += end != NULL ? (uint32_t)(end + 4 - p) :
			    (uint32_t)len;
		}
		/* Over TLS with hsts, our own answers carry it too: the page
		 * is copied into rs with the header after its status line. */
		eol = memchr(p, '\n', len);
		if (c->ctls != NULL && hsts_line[0] != '\0' && eol != NULL &&
		    buf_want(c, &c->rs)) {
			size_t st = (size_t)(eol + 1 - p), hl = strlen(hsts_line);

			memcpy(c->rs.d, p, st);
			memcpy(c->rs.d + st, hsts_line, hl);
			memcpy(c->rs.d + st + hl, eol + 1, len - st);
			c->rhead += (uint32_t)hl;
			c->rs.off = 0;
			c->rs.len = (uint32_t)(len + hl);
			c->rfwd = c->rs.len;
			c->lit = NULL;
			c->litlen = 0;
		}
	}
	c->flags |= F_CLOSE | F_RSTARTED;
	c->cstate = C_CLOSING;
	c->tstart = now;
	client_flush(c);
}

/* ---------------------------------------------------------- upstream */

/* Queue c for run_deferred with the reason flag (once per turn). */
static void
kick(struct conn *c, uint32_t why)
{
	if (!(c->flags & (F_DEFER | F_CKICK | F_UKICK)))
		deferq[ndefer++] = (int)(c - conns);
	c->flags |= why;
}

/* Still relaying (not closing, not closed)? */
static int
in_exchange(const struct conn *c)
{
	return c->cstate == C_BODY || c->cstate == C_SENT;
}


/*
 * Attach an upstream connection to c->srv: an idle pooled one unless
 * fresh, else a non-blocking connect. -1 when the connect failed at once
 * (the server's fault), -2 on a local failure.
 */
static int
up_connect(struct conn *c, int fresh)
{
	struct server *s = c->srv;
	int fd, one = 1;

	c->flags &= ~F_REUSED;
	c->utls = NULL;
	fd = fresh ? -1 : idle_take(s, &c->utls,
	    !((c->flags & F_IDEMP) && (c->flags & F_HOLD)));
	if (fd != -1) {
		c->flags |= F_REUSED;
		c->ustate = U_HEAD;
		goto attached;
	}
	if (s->tls && (c->utls = tls_client(s)) == NULL) {
		logmsg(LOG_ERR, "%s: no TLS engine free", s->name);
		return -2;
	}
	fd = socket(s->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1) {
		logmsg(LOG_ERR, "socket: %s", strerror(errno));
		if (c->utls != NULL)
			tls_release(c->utls);
		c->utls = NULL;
		return -2;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (connect(fd, (struct sockaddr *)&s->sa, s->salen) == 0) {
		c->ustate = U_HEAD;
	} else if (errno == EINPROGRESS) {
		c->ustate = U_CONNECT;
	} else {
		int err = errno;

		logmsg(LOG_WARNING, "connect %s: %s", s->name, strerror(err));
		close(fd);
		if (c->utls != NULL)
			tls_release(c->utls);
		c->utls = NULL;
		/* Out of ports or descriptors is our trouble, not the
		 * server's: do not take it out of rotation for that. */
		return err == EADDRNOTAVAIL || err == EAGAIN ||
		    err == ENOBUFS || err == ENOMEM ? -2 : -1;
	}
attached:
	s->requests++;
	s->active++;
	c->ufd = fd;
	c->uslot = loop_watch(fd, O_UP, (int)(c - conns));
	c->tprog = now;
	return 0;
}

/* Connect, moving on to the next server in rotation while connects fail
 * at once; 502 when none is left. */
static void
up_start(struct conn *c, int fresh)
{
	int r;

	while ((r = up_connect(c, fresh)) != 0) {
		if (r == -2) {
			send_error(c, 502);	/* our fault, not the server's */
			return;
		}
		bal_fail(c->srv, now);
		fresh = 0;
		if (++c->tries >= c->srv->b->nsrv ||
		    (c->srv = bal_pick(c->srv->b, now)) == NULL) {
			send_error(c, 502);
			return;
		}
	}
}

/*
 * May the request go to another connection? Only while the client got
 * no response byte and the request is still whole: held in rq (F_HOLD),
 * or not a byte of it sent yet. Once sent, only idempotent requests
 * (RFC 9110 9.2.2) are repeated, or any request on a reused connection
 * the backend had closed (it never read it).
 */
static int
up_replayable(const struct conn *c)
{
	if (c->flags & (F_RSTARTED | F_GOTRESP))
		return 0;
	if (!(c->flags & F_SENTANY))
		return 1;
	return (c->flags & F_HOLD) && (c->flags & F_IDEMP);
}

/*
 * The upstream failed before answering: a refused or timed-out connect
 * (connect_failed), or a close or reset before any response byte. Send
 * the request again: on a fresh connection to the same server when a
 * pooled connection had gone stale, else to the next server. Only a
 * failed connect takes a server out of rotation: a request that makes
 * backends drop it (a "query of death") must not mark them all down.
 * Returns 0 when it cannot be retried (the caller answers the client).
 */
static int
up_retry(struct conn *c, int connect_failed)
{
	int stale = (c->flags & F_REUSED) != 0 && !connect_failed;

	if (!up_replayable(c))
		return 0;
	up_close(c);
	c->qsent = 0;
	c->flags &= ~(F_SENTANY | F_UBLOCK);
	if (!stale) {
		if (connect_failed)
			bal_fail(c->srv, now);
		else
			c->srv->failures++;
		if (++c->tries >= c->srv->b->nsrv ||
		    (c->srv = bal_pick(c->srv->b, now)) == NULL)
			return 0;
		logmsg(LOG_INFO, "retrying on %s", c->srv->name);
	}
	up_start(c, stale);
	if (in_exchange(c))
		up_flush(c);
	return 1;
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
		logmsg(LOG_WARNING, "connect %s: %s", c->srv->name,
		    strerror(err));
		if (!up_retry(c, 1))
			send_error(c, 502);
		return;
	}
	c->ustate = U_HEAD;
	c->tprog = now;
}

/* Bytes left rq. Once a finished request has all gone upstream, its
 * buffer goes back to the pool while the response is awaited. */
static void
rq_consumed(struct conn *c)
{
	if (c->rq.off != c->rq.len)
		return;
	c->rq.off = c->rq.len = 0;
	if (c->cstate == C_SENT && !(c->flags & F_HOLD))
		buf_put(c, &c->rq);
}

/* A response byte arrived: the request can no longer be replayed, so
 * held bytes are released. */
static void
hold_release(struct conn *c)
{
	c->flags |= F_GOTRESP;
	if (!(c->flags & F_HOLD))
		return;
	c->rq.off += c->qsent;
	c->qfwd -= c->qsent;
	c->qsent = 0;
	c->flags &= ~F_HOLD;
	rq_consumed(c);
}

static void
up_flush(struct conn *c)
{
	ssize_t n;
	uint32_t pend;

	if (c->ufd == -1 || c->ustate == U_CONNECT || c->ustate == U_DONE ||
	    (c->flags & (F_UBLOCK | F_UERR)))
		return;
	pend = c->qfwd - c->qsent;
	/* Nothing of ours to send, but the engine may have handshake
	 * records for the server. */
	if (pend == 0 && c->utls != NULL && tls_flush(c->utls, c->ufd) == -1) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			c->flags |= F_UBLOCK;
		else
			c->flags |= F_UERR;
		return;
	}
	if (pend > 0) {
		n = u_send(c, c->rq.d + c->rq.off + c->qsent, pend);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK) {
				c->flags |= F_UBLOCK;
				return;
			}
			/* The backend is gone or stopped reading: send no
			 * more. Its answer (or EOF) is still read. */
			c->flags |= F_UERR;
			return;
		}
		c->tprog = now;
		c->flags |= F_SENTANY;
		if (c->flags & F_HOLD) {
			c->qsent += n;
		} else {
			c->rq.off += n;
			c->qfwd -= n;
			rq_consumed(c);
		}
		pend -= n;
	}
	/* Tunnel: the client closed its side; pass the half-close on. */
	if (pend == 0 && c->cstate == C_TUNNEL && (c->flags & F_CEOF) &&
	    !(c->flags & F_USHUT)) {
		shutdown(c->ufd, SHUT_WR);
		c->flags |= F_USHUT;
		if (c->flags & F_UEOF) {
			up_close(c);	/* both ways done */
			c->flags |= F_UEOF;	/* up_close cleared it */
		}
	}
	/* An idle tunnel gives its request buffer back (websockets may idle
	 * for hours); it is lent again when the client sends. */
	if (pend == 0 && c->cstate == C_TUNNEL && c->rq.d != NULL &&
	    c->rq.off == c->rq.len)
		buf_put(c, &c->rq);
}

/* --------------------------------------------------------- responses */

/* The response was read to its end: release or pool the upstream. */
static void
resp_done(struct conn *c)
{
	if (c->flags & F_STORING) {
		cache_store_end(c->cw, 1);
		c->flags &= ~F_STORING;
	}
	int reuse = (c->flags & F_UKEEP) && c->cstate == C_SENT &&
	    c->qfwd == 0 && !draining;

	/* Request bytes the backend answered without reading: drop them,
	 * or they would be parsed as the client's next request. */
	if (c->cstate == C_SENT && c->qfwd > 0) {
		hold_release(c);
		c->rq.off += c->qfwd;
		c->qfwd = 0;
		rq_consumed(c);
	}
	/* Servers of a configuration replaced by a reload keep no pool. */
	if (c->cgen != cfg_gen)
		reuse = 0;
	/* Extra bytes after the response: the backend broke framing, so
	 * its connection is not trusted again. */
	if (c->rs.len > c->rs.off + c->rfwd) {
		c->rs.len = c->rs.off + c->rfwd;
		reuse = 0;
	}
	if (c->ufd != -1) {
		c->srv->active--;
		loop_unwatch(c->uslot);
		if (reuse) {
			idle_put(c->srv, c->ufd, c->utls);
		} else {
			close(c->ufd);
			if (c->utls != NULL)
				tls_release(c->utls);
		}
		c->utls = NULL;
		c->ufd = -1;
		c->uslot = -1;
		c->ugen++;
		c->flags &= ~(F_UBLOCK | F_USHUT | F_UHUP | F_UERR);
	}
	/* An early response (the request body still coming) ends the
	 * client connection: we cannot know the backend skipped the rest. */
	if (c->cstate != C_SENT)
		c->flags |= F_CLOSE;
	c->ustate = U_DONE;
}

/* Extra response header lines: HSTS on TLS, X-Cache on cache routes. */
static const char *
rsp_extra(const struct conn *c, const char *xcache)
{
	static char line[128];

	snprintf(line, sizeof(line), "%s%s%s%s",
	    c->ctls != NULL ? hsts_line : "",
	    c->flags & F_CACHED ? "X-Cache: " : "",
	    c->flags & F_CACHED ? xcache : "",
	    c->flags & F_CACHED ? "\r\n" : "");
	return line[0] != '\0' ? line : NULL;
}

/* ------------------------------------------------------------- cache */

static const char *
scheme(const struct conn *c)
{
	return c->ctls != NULL ? "https" : "http";
}

/*
 * A GET or HEAD on a cache route (after the ACLs): serve it from the
 * cache when it may be, or note what the backend exchange must do (store
 * the answer, revalidate a stale copy). An unsafe method drops the
 * target's entries (RFC 9111 4.4). Returns 1 when c was answered.
 */
static int
cache_try(struct conn *c, const struct route *rt)
{
	int r, i;

	if (!slice_eq(msg.method, "GET") && !slice_eq(msg.method, "HEAD")) {
		if (!is_idempotent(msg.method) || slice_eq(msg.method, "PUT") ||
		    slice_eq(msg.method, "DELETE")) {
			cache_invalidate(scheme(c), msg.host, msg.path);
			c->inval = 1;
		}
		return 0;
	}
	c->flags |= F_CACHED;
	cache_cond[0] = '\0';
	r = cache_lookup(&msg, scheme(c), wall, &c->cref, cache_cond,
	    sizeof(cache_cond));
	/* An HTTP/1.0 client cannot take a stored chunked body. */
	if ((r == CACHE_HIT || r == CACHE_NOTMOD) && c->minor == 0 &&
	    cache_chunked(&c->cref))
		r = CACHE_MISS;
	switch (r) {
	case CACHE_HIT:
	case CACHE_NOTMOD:
		c->rt = rt;
		c->cgen = cfg_gen;
		cache_serve(c, r == CACHE_NOTMOD ? 304 : cache_status(&c->cref));
		return 1;
	case CACHE_GATEWAY_TIMEOUT:
		send_error(c, 504);	/* only-if-cached, nothing fresh */
		return 1;
	case CACHE_STALE:
		/* A copy an HTTP/1.0 client cannot take is not revalidated
		 * for it: it gets the backend's own answer. */
		if (c->minor == 0 && cache_chunked(&c->cref))
			return 0;
		/* Revalidate with our validators, unless the client sent
		 * its own: then its backend answer is its own. */
		for (i = 0; i < msg.nh; i++)
			if (msg.h[i].id == HN_IF_NONE_MATCH ||
			    msg.h[i].id == HN_IF_MODIFIED_SINCE)
				return 0;
		if (cache_cond[0] != '\0')
			c->flags |= F_REVAL;
		return 0;
	default:
		return 0;
	}
}

/* Answer c from its cache_ref: rs is filled from the cache as the
 * client drains it (cache_fill), like a response from a backend. */
static void
cache_serve(struct conn *c, int status)
{
	if (!buf_want(c, &c->rs)) {
		send_error(c, 503);
		return;
	}
	own_close(c);
	c->rq.off += msg.head_len;
	c->rs.off = c->rs.len = 0;
	c->rfwd = 0;
	stats.classes[status / 100 - 1]++;
	c->status = (int16_t)status;
	c->flags |= F_RSTARTED;
	c->cstate = C_SENT;
	c->ustate = U_CACHE;
	cache_fill(c);
	client_flush(c);
}

/* Refill the empty rs from the stored response; U_DONE at its end. */
static void
cache_fill(struct conn *c)
{
	struct http_rsp o;
	long n;

	if (c->rfwd > 0 || c->rs.d == NULL)
		return;
	memset(&o, 0, sizeof(o));
	o.close = (c->flags & F_CLOSE) != 0;
	o.client_minor = c->minor;
	o.hide = cfg.hide_headers;
	o.extra = c->ctls != NULL && hsts_line[0] != '\0' ? hsts_line : NULL;
	n = cache_read(&c->cref, c->rs.d, bufsz, &o,
	    (c->flags & F_HEADREQ) != 0, wall);
	if (n < 0) {
		/* Evicted while we sent it: the client must not get a
		 * copy that changes in the middle. */
		conn_close(c);
		return;
	}
	if (n == 0) {
		c->ustate = U_DONE;
		return;
	}
	c->rs.off = 0;
	c->rs.len = (uint32_t)n;
	c->rfwd = (uint32_t)n;
}

/*
 * The backend answered our revalidation. A 304 refreshes the stored copy
 * and the client gets that, X-Cache: REVALIDATED; the upstream goes back
 * to the pool. Returns 1 when so.
 */
static int
cache_revalidated(struct conn *c, uint32_t pos)
{
	c->flags &= ~F_REVAL;
	if (msg.status != 304)
		return 0;
	if (cache_refresh(&c->cref, &msg, c->twreq, wall) == -1) {
		/* The copy went meanwhile (evicted, refreshed by a request
		 * beside this one, no room to rewrite it): this 304 answers
		 * a question the client never asked. Ask the plain one. */
		if (reval_resend(c, pos))
			return 1;
		logmsg(LOG_WARNING, "%s: revalidated copy gone", c->srv->name);
		send_error(c, 502);
		return 1;
	}
	hold_release(c);
	/* Bytes after the 304: the backend broke framing, no reuse. */
	if (c->rs.len == c->rs.off + pos + msg.head_len &&
	    (msg.minor == 1 ? !(msg.flags & HF_CLOSE) :
	    (msg.flags & HF_KEEPALIVE) != 0))
		c->flags |= F_UKEEP;
	c->rs.len = c->rs.off + pos;	/* the 304 head is ours, not theirs */
	c->rmode = M_NONE;
	if (!(c->flags & F_KEEP) || draining)
		c->flags |= F_CLOSE;
	resp_done(c);
	stats.classes[cache_status(&c->cref) / 100 - 1]++;
	c->status = (int16_t)cache_status(&c->cref);
	c->flags |= F_RSTARTED;
	c->ustate = U_CACHE;
	cache_fill(c);
	return 1;
}

/*
 * Send the held request again on the same upstream connection, without
 * the conditional lines the cache added (the client sent none), after a
 * 304 that could not refresh the copy. Its full answer is then stored
 * and sent like any miss. 0 when that cannot be done.
 */
static int
reval_resend(struct conn *c, uint32_t pos)
{
	static const char *const cond[] = { "If-None-Match:",
	    "If-Modified-Since:" };
	struct buf *b = &c->rq;
	char *p, *end, *eol;
	size_t i, n, k;

	if (!(c->flags & F_HOLD) || c->qsent != c->qfwd ||
	    !(msg.minor == 1 ? !(msg.flags & HF_CLOSE) :
	    (msg.flags & HF_KEEPALIVE) != 0))
		return 0;
	c->rs.len = c->rs.off + pos;	/* forget the 304 */
	p = b->d + b->off;
	end = p + c->qfwd;
	while (p < end && (eol = memchr(p, '\n', (size_t)(end - p))) != NULL) {
		n = (size_t)(eol + 1 - p);
		for (k = 0, i = 0; i < 2; i++)
			if (n > strlen(cond[i]) &&
			    strncasecmp(p, cond[i], strlen(cond[i])) == 0)
				k = 1;
		if (!k) {
			p = eol + 1;
			continue;
		}
		memmove(p, eol + 1, (size_t)(b->d + b->len - (eol + 1)));
		b->len -= (uint32_t)n;
		c->qfwd -= (uint32_t)n;
		end -= n;
	}
	c->qsent = 0;
	c->flags &= ~(F_GOTRESP | F_UBLOCK);
	c->ustate = U_HEAD;
	c->tprog = now;
	logmsg(LOG_INFO, "%s: revalidated copy gone, asking again",
	    c->srv->name);
	up_flush(c);
	return 1;
}

/*
 * Does the response Vary on a header the proxy writes or drops on its way
 * upstream? The stored variant would be keyed by our value while lookups
 * see the client's: a client sending "X-Forwarded-For: victim" would get
 * the victim's copy. Such responses are not stored.
 */
static int
vary_rewritten(void)
{
	static const char *const ours[] = { "x-forwarded-for",
	    "x-forwarded-proto", "x-forwarded-host", "forwarded", "via",
	    "authorization", "if-none-match", "if-modified-since",
	    "connection", "keep-alive", "te", "trailer", "upgrade", "expect",
	    "proxy-connection", "proxy-authorization", NULL };
	const struct slice *v;
	uint32_t i, j, k;
	int h;

	for (h = 0; h < msg.nh; h++) {
		if (msg.h[h].id != HN_VARY)
			continue;
		v = &msg.h[h].value;
		for (i = 0; i < v->n; i = j + 1) {
			struct slice t;

			for (j = i; j < v->n && v->p[j] != ','; j++)
				;
			t.p = v->p + i;
			t.n = j - i;
			while (t.n > 0 && (*t.p == ' ' || *t.p == '\t')) {
				t.p++;
				t.n--;
			}
			while (t.n > 0 && (t.p[t.n - 1] == ' ' ||
			    t.p[t.n - 1] == '\t'))
				t.n--;
			for (k = 0; ours[k] != NULL; k++)
				if (slice_eq(t, ours[k]))
					return 1;
		}
	}
	return 0;
}

/*
 * RFC 9111 4.4: a successful unsafe request also invalidates what its
 * answer's Location and Content-Location name on the same host. A
 * relative reference needs the request's host: it is read from the
 * request head, still held (when it was whole in the buffer).
 */
static void
cache_invalidate_location(struct conn *c)
{
	static struct http_msg req;
	struct slice v, host, path;
	const char *sch;
	uint32_t i;
	int h;

	if (!(c->flags & F_HOLD) ||
	    http_parse_request(c->rq.d + c->rq.off, c->qfwd, &req) <= 0)
		return;
	for (h = 0; h < msg.nh; h++) {
		if (msg.h[h].id != HN_LOCATION &&
		    msg.h[h].id != HN_CONTENT_LOCATION)
			continue;
		v = msg.h[h].value;
		sch = scheme(c);
		host = req.host;
		path = v;
		if (v.n == 0 || v.p[0] != '/' || (v.n > 1 && v.p[1] == '/')) {
			/* "http://host/path", for the request's host only:
			 * another site's entries are not for it to drop. */
			for (i = 0; i < v.n && v.p[i] != ':'; i++)
				;
			if (i + 3 > v.n || memcmp(v.p + i, "://", 3) != 0)
				continue;
			sch = i == 5 && strncasecmp(v.p, "https", 5) == 0 ?
			    "https" : "http";
			host.p = v.p + i + 3;
			for (host.n = 0; host.p + host.n < v.p + v.n &&
			    host.p[host.n] != '/'; host.n++)
				;
			path.p = host.p + host.n;
			path.n = (uint32_t)(v.p + v.n - path.p);
			if (path.n == 0 || host.n != req.host.n ||
			    strncasecmp(host.p, req.host.p, host.n) != 0)
				continue;
		}
		cache_invalidate(sch, host, path);
	}
}

/* A response head on a cache route: begin storing it if it may be. The
 * request head as sent is still held at rq.off (up_read kept it). */
static void
cache_store(struct conn *c, uint32_t pos)
{
	int w;

	if ((c->flags & F_HEADREQ) || !(c->flags & F_HOLD) || vary_rewritten())
		return;
	w = cache_store_begin(c->rq.d + c->rq.off, c->qfwd, scheme(c), &msg,
	    c->rs.d + c->rs.off + pos, c->twreq, wall);
	if (w < 0)
		return;
	c->cw = w;
	c->flags |= F_STORING;
}

/* Rewrite the response head at rs[pos..] in place; returns its new
 * length or -1 when it does not fit. */
static int
resp_rewrite(struct conn *c, uint32_t pos, int close)
{
	const struct route *rt = c->rt;
	struct buf *b = &c->rs;
	uint32_t tail = b->len - pos - msg.head_len;
	struct http_rsp o;
	int n;

	memset(&o, 0, sizeof(o));
	o.close = close;
	o.client_minor = c->minor;
	o.hide = cfg.hide_headers;
	o.extra = rsp_extra(c, "MISS");
	if (rt->strip_prefix && rt->path != NULL) {
		o.prefix = rt->path;
		o.host_hash = c->host_hash;
		o.server = c->srv->name;
	}
	n = http_write_response(scratch, bufsz, &msg, &o);
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
			hold_release(c);
			stats.classes[0]++;
			c->status = 101;
			c->rhead += (uint32_t)n;
			/* Everything after the 101 is tunnel data. */
			c->rfwd = b->len;
			c->qfwd = c->rq.len - c->rq.off;
			c->cstate = C_TUNNEL;
			c->ustate = U_TUNNEL;
			c->flags |= F_RSTARTED;
			if (c->flags & F_CEOF)
				up_flush(c);	/* pass the half-close on */
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
			c->rhead += (uint32_t)n;
			c->flags |= F_RSTARTED;
			continue;
		}
		break;
	}
	if ((c->flags & F_REVAL) && cache_revalidated(c, pos))
		return;
	if (c->flags & F_CACHED)
		cache_store(c, pos);
	if (c->inval && msg.status >= 200 && msg.status < 400)
		cache_invalidate_location(c);
	hold_release(c);	/* kept for the cache until now (up_read) */
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
	/* A client that half-closed gets the answers to what it sent
	 * (pipelined requests included), then the connection ends. */
	close = !(c->flags & F_KEEP) || c->rmode == M_EOF || draining ||
	    ((c->flags & F_CEOF) && c->rq.len == c->rq.off + c->qfwd) ||
	    c->cstate != C_SENT;
	if (close)
		c->flags |= F_CLOSE;
	n = resp_rewrite(c, pos, close);
	if (n < 0) {
		send_error(c, 502);
		return;
	}
	stats.classes[msg.status / 100 - 1]++;
	c->status = (int16_t)msg.status;
	c->rhead += (uint32_t)n;
	c->rfwd += n;
	c->flags |= F_RSTARTED;
	c->ustate = U_BODY;
	resp_absorb(c);
}

static void
resp_absorb(struct conn *c)
{
	uint32_t before = c->rfwd;
	int r;

	r = resp_claim(c);
	/* What became the client's is stored too, as it passes. */
	if ((c->flags & F_STORING) && c->rfwd > before &&
	    cache_store_append(c->cw, c->rs.d + c->rs.off + before,
	    c->rfwd - before) == -1)
		c->flags &= ~F_STORING;
	if (r == 1)
		resp_done(c);
}

/* Claim response body bytes that arrived after rfwd for the client:
 * 1 when the body is complete, 0 when more is to come, -1 when the
 * backend broke its framing (the client gets a cut response). */
static int
resp_claim(struct conn *c)
{
	struct buf *b = &c->rs;
	uint32_t avail = b->len - b->off - c->rfwd;
	long n;
	int done = 0;

	switch (c->rmode) {
	case M_NONE:
		return 1;
	case M_LEN:
		if (avail > c->rleft)
			avail = (uint32_t)c->rleft;
		c->rfwd += avail;
		c->rleft -= avail;
		return c->rleft == 0;
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
			return -1;
		}
		c->rfwd += (uint32_t)n;
		return done;
	default:
		c->rfwd += avail;	/* M_EOF: ends when the backend closes */
		return 0;
	}
}

/* ------------------------------------------------------------ splice */

#ifdef HAVE_SPLICE
static int
pipe_make(int fd[2])
{
	if (pipe2(fd, O_NONBLOCK | O_CLOEXEC) == -1)
		return -1;
	/* The kernel rounds up to pages; a smaller pipe than asked for
	 * only means more splice() calls. */
	(void)fcntl(fd[0], F_SETPIPE_SZ, (int)pipe_cap);
	return 0;
}

/*
 * At the start of a large body, once every byte buffered for it has
 * gone out: relay the rest through a pipe. Only plain sockets on both
 * sides (TLS needs the bytes), only bodies the proxy need not look at
 * (chunked is validated, a stored response is copied into the cache).
 */
static void
pipe_try(struct conn *c)
{
	if (npipe_free == 0 || c->ctls != NULL || c->utls != NULL ||
	    c->cstate != C_SENT || c->ufd == -1 || c->litlen > 0 ||
	    c->rfwd > 0 || (c->flags & F_STORING) ||
	    (c->rs.d != NULL && c->rs.len != c->rs.off))
		return;
	if (!(c->rmode == M_EOF || (c->rmode == M_LEN &&
	    c->rleft > 2 * (uint64_t)bufsz)))
		return;
	c->pipe = (uint32_t)(pipe_freel[--npipe_free] + 1);
	c->piped = 0;
	c->pfull = 0;
	buf_put(c, &c->rs);	/* not needed while the pipe carries it */
}

/* Give the pipe back. One with bytes left in it (the client went away)
 * is replaced: those bytes must never reach another client. */
static void
pipe_put(struct conn *c)
{
	int i = c->pipe - 1;

	if (c->pipe == 0)
		return;
	c->pipe = 0;
	c->pfull = 0;
	if (c->piped > 0) {
		c->piped = 0;
		close(pipes[i][0]);
		close(pipes[i][1]);
		if (pipe_make(pipes[i]) == -1) {
			logmsg(LOG_WARNING, "pipe: %s (one pipe fewer)",
			    strerror(errno));
			return;
		}
	}
	pipe_freel[npipe_free++] = i;
}

/* Move body bytes from the upstream into the pipe; 1 when it took all
 * that was asked (more is likely waiting). */
static int
pipe_in(struct conn *c)
{
	size_t want = pipe_cap - c->piped;
	ssize_t n;

	if (c->rmode == M_LEN && c->rleft < want)
		want = (size_t)c->rleft;
	if (want == 0)
		return 0;
	n = splice(c->ufd, NULL, pipes[c->pipe - 1][1], NULL, want,
	    SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
	if (n < 0) {
		/* With bytes in it, the pipe may be what is full: the kernel
		 * counts pages or packets, not bytes. Read again once the
		 * client has taken some (pipe_out); else the socket would
		 * wake poll() on every turn. */
		if (errno == EAGAIN || errno == EWOULDBLOCK) {
			if (c->piped > 0)
				c->pfull = 1;
			return 0;
		}
		if (errno == EINTR)
			return 0;
		logmsg(LOG_WARNING, "%s: %s", c->srv->name, strerror(errno));
		n = 0;		/* a reset is handled as an early close */
	}
	if (n == 0) {
		up_eof(c);
		return 0;
	}
	c->piped += (uint32_t)n;
	c->tprog = now;
	stats.spliced += (uint64_t)n;
	if (c->rmode == M_LEN) {
		c->rleft -= (uint64_t)n;
		if (c->rleft == 0)
			resp_done(c);
	}
	client_flush(c);
	return (size_t)n == want;
}

/* Move the pipe's bytes to the client: 1 when it is empty, 0 when the
 * client cannot take more now, -1 when the connection was closed. */
static int
pipe_out(struct conn *c)
{
	ssize_t n;

	while (c->piped > 0) {
		n = splice(pipes[c->pipe - 1][0], NULL, c->cfd, NULL,
		    c->piped, SPLICE_F_MOVE | SPLICE_F_NONBLOCK);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK ||
			    errno == EINTR) {
				c->flags |= F_CBLOCK;
				return 0;
			}
			conn_close(c);
			return -1;
		}
		c->piped -= (uint32_t)n;
		c->sent += (uint64_t)n;
		c->tprog = now;
		c->pfull = 0;
	}
	return 1;
}
#else
static void pipe_try(struct conn *c) { (void)c; }
static void pipe_put(struct conn *c) { (void)c; }
static int pipe_in(struct conn *c) { (void)c; return 0; }
static int pipe_out(struct conn *c) { (void)c; return 1; }
#endif

/* Pipes for splice(), about a pipe per eight buffers; fewer when the
 * system gives fewer. Each holds what four buffers would. */
static void
pipes_reserve(void)
{
#ifdef HAVE_SPLICE
	struct rlimit rl;
	long want = cfg.buffers / 8, spare;
	int i;

	/* Never at the cost of descriptors the connections need. */
	if (getrlimit(RLIMIT_NOFILE, &rl) == 0 && rl.rlim_cur != RLIM_INFINITY) {
		spare = (long)rl.rlim_cur - (2 * cfg.max_connections + nidles +
		    64);
		if (want > spare / 2)
			want = spare > 0 ? spare / 2 : 0;
	}
	if (want > PIPES_MAX)
		want = PIPES_MAX;
	pipe_cap = bufsz * 4;
	if (want == 0 || (pipes = calloc(want, sizeof(*pipes))) == NULL ||
	    (pipe_freel = calloc(want, sizeof(*pipe_freel))) == NULL)
		return;
	for (i = 0; i < want; i++) {
		if (pipe_make(pipes[i]) == -1)
			break;
		pipe_freel[npipe_free++] = i;
	}
	npipes = i;
	/* What the kernel granted; a pipe it left at its default size
	 * then just needs more splice() calls. */
	if (npipes > 0 && (spare = fcntl(pipes[0][0], F_GETPIPE_SZ)) > 0 &&
	    (uint32_t)spare < pipe_cap)
		pipe_cap = (uint32_t)spare;
	logmsg(LOG_INFO, "%d pipes for splice(), up to %u B each in the "
	    "kernel while a body passes", npipes, pipe_cap);
#endif
}

/* -------------------------------------------------------- the client */

static void
client_next(struct conn *c)
{
	alog_end(c);
	exchange_reset(c);
	buf_put(c, &c->rs);
	c->ustate = U_NONE;
	if (draining && c->rq.len == c->rq.off) {
		conn_close(c);
		return;
	}
	c->tstart = c->tprog = now;
	if (c->rq.d != NULL && c->rq.len > c->rq.off) {
		/* A pipelined request is waiting. It is parsed after this
		 * turn's events, not here: a buffer of pipelined requests the
		 * proxy answers itself would otherwise recurse per request. */
		c->cstate = C_HEAD;
		kick(c, F_DEFER);
		return;
	}
	if (c->flags & F_CEOF) {
		conn_close(c);	/* the client said all it had to say */
		return;
	}
	c->cstate = C_IDLE;
	buf_put(c, &c->rq);
}

/* Write what is pending to the client: a literal, then rs. */
static void
client_flush(struct conn *c)
{
	ssize_t n;

	if (c->cfd == -1 || (c->flags & (F_CBLOCK | F_CSHUT)))
		return;
	while (c->litlen > 0) {
		n = c_send(c, c->lit, c->litlen);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				c->flags |= F_CBLOCK;
			else
				conn_close(c);
			return;
		}
		c->lit += n;
		c->litlen -= n;
		c->sent += (uint64_t)n;
		c->tprog = now;
	}
	if (c->rfwd == 0 && c->ustate == U_CACHE) {
		cache_fill(c);
		if (c->cstate == C_FREE)
			return;
	}
	while (c->rfwd > 0) {
		n = c_send(c, c->rs.d + c->rs.off, c->rfwd);
		if (n < 0) {
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				c->flags |= F_CBLOCK;
			else
				conn_close(c);
			return;
		}
		c->rs.off += n;
		c->rfwd -= n;
		c->sent += (uint64_t)n;
		c->tprog = now;
		if (c->rs.off == c->rs.len)
			c->rs.off = c->rs.len = 0;
		if (c->rfwd > 0)
			return;
		/* Served from the cache: the next piece, until its end. */
		if (c->ustate == U_CACHE) {
			cache_fill(c);
			if (c->cstate == C_FREE)
				return;
		}
	}
	if (c->pipe != 0) {
		if (pipe_out(c) <= 0)
			return;
		if (c->ustate == U_BODY)
			return;		/* the rest comes through the pipe */
		pipe_put(c);
	} else if (c->ustate == U_BODY) {
		pipe_try(c);
	}
	/* Records the TLS engine still holds must leave before the state
	 * moves on (a close would lose them). */
	if (c->ctls != NULL && tls_flush(c->ctls, c->cfd) == -1) {
		if (errno == EAGAIN || errno == EWOULDBLOCK)
			c->flags |= F_CBLOCK;
		else
			conn_close(c);
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
		/* Drained: the response buffer goes back while it idles. */
		if (c->rs.d != NULL && c->rs.off == c->rs.len)
			buf_put(c, &c->rs);
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
		if (cfg.max_body > 0 && c->qch.data > cfg.max_body) {
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

/*
 * strip_prefix: forward /app/x as /x. The route matched the normalised
 * path (pathbuf, n bytes); the raw target usually starts with the prefix
 * as written, and then only the prefix is cut from it, keeping the rest
 * byte for byte. An encoded spelling of the prefix (/%61pp/x) is cut from
 * the normalised path instead, with the raw query kept.
 */
static void
strip_prefix(const struct route *rt, int n)
{
	size_t plen = rt->pathlen;
	const char *q;
	uint32_t qlen;

	if (plen > 0 && rt->path[plen - 1] == '/')
		plen--;		/* keep the slash that starts the rest */
	if (msg.path.n >= plen && memcmp(msg.path.p, rt->path, plen) == 0) {
		msg.path.p += plen;
		msg.path.n -= (uint32_t)plen;
	} else {
		q = memchr(msg.path.p, '?', msg.path.n);
		qlen = q ? (uint32_t)(msg.path.p + msg.path.n - q) : 0;
		if ((size_t)n - plen + qlen >= bufsz)
			return;
		memmove(pathbuf, pathbuf + plen, (size_t)n - plen);
		if (qlen > 0)
			memcpy(pathbuf + n - plen, q, qlen);
		msg.path.p = pathbuf;
		msg.path.n = (uint32_t)(n - plen) + qlen;
	}
	/* "/app" itself, or "/app?x", becomes "/" and "/?x". */
	if ((msg.path.n == 0 || msg.path.p[0] != '/') &&
	    msg.path.n + 1 < bufsz) {
		memmove(pathbuf + 1, msg.path.p, msg.path.n);
		pathbuf[0] = '/';
		msg.path.p = pathbuf;
		msg.path.n++;
	}
}

/* RFC 9110 9.2.2: safe methods, PUT and DELETE may be repeated. */
static int
is_idempotent(struct slice m)
{
	static const char *const names[] = { "GET", "HEAD", "OPTIONS",
	    "TRACE", "PUT", "DELETE", NULL };
	int i;

	for (i = 0; names[i] != NULL; i++)
		if (m.n == strlen(names[i]) && memcmp(m.p, names[i], m.n) == 0)
			return 1;
	return 0;
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

	stats.requests++;
	alog_begin(c, &msg);
	c->minor = (uint8_t)msg.minor;
	if (msg.minor == 1 ? !(msg.flags & HF_CLOSE) :
	    (msg.flags & HF_KEEPALIVE) != 0)
		c->flags |= F_KEEP;
	if (slice_eq(msg.method, "HEAD"))
		c->flags |= F_HEADREQ;
	if (msg.flags & HF_UPGRADE)
		c->flags |= F_UPGRADE;

	/* Route and ACL decisions see the normalised path (DESIGN.md).
	 * "OPTIONS *" asks about the server: only a route for any path
	 * matches it. */
	if (msg.path.n == 1 && msg.path.p[0] == '*') {
		pathbuf[0] = '*';
		n = 1;
	} else
		n = http_normalize_path(msg.path.p, msg.path.n, pathbuf, bufsz);
	if (n < 0) {
		send_error(c, -n);
		return;
	}
	if (cfg.status != NULL && (size_t)n == strlen(cfg.status) &&
	    memcmp(pathbuf, cfg.status, (size_t)n) == 0) {
		status_request(c);
		return;
	}
	if (cfg.tls.redirect_http && c->ctls == NULL) {
		redirect_request(c);
		return;
	}
	/* Refuse before any byte reaches a backend: ACLs, then the rate. */
	if (!acl_allowed(cfg.allow, cfg.nallow, cfg.deny, cfg.ndeny,
	    &c->peer.sa)) {
		send_error(c, 403);
		return;
	}
	r = bal_route(&cfg, msg.host, pathbuf, (size_t)n);
	if (r < 0) {
		send_error(c, 404);
		return;
	}
	if (!acl_allowed(cfg.routes[r].allow, cfg.routes[r].nallow,
	    cfg.routes[r].deny, cfg.routes[r].ndeny, &c->peer.sa)) {
		send_error(c, 403);
		return;
	}
	{
		int retry;

		if (!acl_rate(&c->peer.sa, cfg.rate, cfg.rate_burst, now,
		    &retry)) {
			send_error(c, 429);
			return;
		}
	}
	/* After the rate limit: a client past it spends no hashing. */
	if (cfg.routes[r].auth != NULL) {
		int ok = -2, i, nauth = 0;

		/* Two Authorization headers: which one would the backend
		 * believe? Refuse rather than guess. */
		for (i = 0; i < msg.nh; i++)
			nauth += msg.h[i].id == HN_AUTHORIZATION;
		if (nauth <= 1)
			ok = acl_auth_check(cfg.routes[r].auth,
			    header_value(&msg, HN_AUTHORIZATION), now);
		if (ok <= 0) {
			send_error(c, ok == -2 ? 400 : ok < 0 ? 503 : 401);
			return;
		}
	}
	if ((msg.flags & HF_CL) && cfg.max_body > 0 &&
	    msg.clen > cfg.max_body) {
		send_error(c, 413);
		return;
	}
	/* Not with strip_prefix: two such routes on one host would share
	 * keys for different backends. */
	if (cache_on && cfg.routes[r].cache && !cfg.routes[r].strip_prefix &&
	    cache_try(c, &cfg.routes[r]))
		return;		/* answered from the cache */
	c->srv = bal_pick(&cfg.backends[cfg.routes[r].backend], now);
	c->cgen = cfg_gen;
	if (c->srv == NULL) {
		send_error(c, 503);	/* every server is down: say so fast */
		return;
	}
	if (is_idempotent(msg.method))
		c->flags |= F_IDEMP;
	c->rt = &cfg.routes[r];
	if (cfg.routes[r].strip_prefix && cfg.routes[r].path != NULL) {
		c->host_hash = http_host_hash(msg.host.p, msg.host.n);
		strip_prefix(&cfg.routes[r], n);
	}

	fwd.client_ip = client_ip(c, ip, sizeof(ip));
	fwd.proto = c->ctls != NULL ? "https" : "http";
	fwd.trusted = (c->flags & F_TRUSTED) != 0;
	fwd.minor = msg.minor;
	fwd.drop_auth = c->rt->auth != NULL && !c->rt->auth_forward;
	fwd.extra = (c->flags & F_REVAL) ? cache_cond : NULL;
	c->twreq = wall;
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

	c->tbody = now;
	c->qbytes = 0;
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
		c->rhead += c->litlen;	/* an interim head, no body */
	}
	req_absorb(c);
	if (!in_exchange(c))
		return;
	c->tprog = now;
	/* When the whole request is here, keep it until the response
	 * starts, so a failed or stale upstream can be given it again. */
	if (c->cstate == C_SENT)
		c->flags |= F_HOLD;
	up_start(c, 0);
	if (c->ufd == -1)
		return;
	up_flush(c);
	client_flush(c);
}

/* ------------------------------------------------------ status page */

/*
 * Answers the proxy makes itself (status page, redirect, cache hits)
 * keep the connection unless the request has a body we will not read,
 * or the client (or a stop) wants it closed.
 */
static void
own_close(struct conn *c)
{
	if ((msg.flags & (HF_CL | HF_CHUNKED)) && !((msg.flags & HF_CL) &&
	    msg.clen == 0))
		c->flags |= F_CLOSE;	/* a body we will not read */
	if (!(c->flags & F_KEEP) || draining)
		c->flags |= F_CLOSE;
}

/* rs[0..len) is our own complete answer, its head headlen bytes. */
static void
own_send(struct conn *c, int status, uint32_t len, uint32_t headlen)
{
	c->rs.off = 0;
	c->rs.len = len;
	c->rfwd = len;
	c->rq.off += msg.head_len;
	stats.classes[status / 100 - 1]++;
	c->status = (int16_t)status;
	c->rhead = headlen;
	c->flags |= F_RSTARTED;
	c->cstate = C_SENT;
	c->ustate = U_DONE;
	client_flush(c);
}

/* Bounded appends: a full buffer truncates, it never overflows. */
struct out {
	char *p;
	size_t n, cap;
};

static void __attribute__((format(printf, 2, 3)))
out_add(struct out *o, const char *fmt, ...)
{
	va_list ap;
	int n;

	if (o->n >= o->cap)
		return;
	va_start(ap, fmt);
	n = vsnprintf(o->p + o->n, o->cap - o->n, fmt, ap);
	va_end(ap);
	if (n < 0)
		return;
	o->n += (size_t)n < o->cap - o->n ? (size_t)n : o->cap - o->n - 1;
}

static const char *
server_state(struct server *s)
{
	if (!bal_available(s, now))
		return s->hc.fd != -1 ? "checking" : "down";
	return "up";
}

/* The figures, as text or JSON, into o. A server list too long for the
 * buffer ends with a "truncated" mark rather than broken output. */
static void
status_body(struct out *o, int json)
{
	static const char *cls[] = { "1xx", "2xx", "3xx", "4xx", "5xx" };
	int64_t up = (now - stats.start) / 1000;
	int i, j, k;

	if (json)
		out_add(o, "{\"uptime\":%lld,\"connections\":{\"current\":%d,"
		    "\"max\":%ld,\"total\":%llu,\"parked\":%d},\"buffers\":"
		    "{\"free\":%d,\"total\":%ld,\"size\":%u},\"pipes\":"
		    "{\"free\":%d,\"total\":%d,\"spliced\":%llu},"
		    "\"requests\":{\"total\":%llu",
		    (long long)up, nactive, cfg.max_connections,
		    (unsigned long long)stats.accepted, nparked, pool_free,
		    cfg.buffers, bufsz, npipe_free, npipes,
		    (unsigned long long)stats.spliced,
		    (unsigned long long)stats.requests);
	else
		out_add(o, "uptime %llds\nconnections current %d max %ld "
		    "total %llu parked %d\nbuffers free %d of %ld (%u bytes "
		    "each)\npipes free %d of %d spliced %llu\nrequests total "
		    "%llu", (long long)up, nactive, cfg.max_connections,
		    (unsigned long long)stats.accepted, nparked, pool_free,
		    cfg.buffers,
		    bufsz, npipe_free, npipes,
		    (unsigned long long)stats.spliced,
		    (unsigned long long)stats.requests);
	for (k = 0; k < 5; k++)
		out_add(o, json ? ",\"%s\":%llu" : " %s %llu", cls[k],
		    (unsigned long long)stats.classes[k]);
	out_add(o, json ? "},\"reserved\":{\"connections\":%zu,\"buffers\":%zu,"
	    "\"tls\":%zu,\"cache\":%zu,\"addresses\":%zu,\"other\":%zu}," :
	    "\nreserved bytes connections %zu buffers %zu tls %zu cache %zu "
	    "addresses %zu other %zu\n", mem.conns, mem.buffers, mem.tls,
	    mem.cache, mem.addresses, mem.other);
	if (cache_on) {
		struct cache_stats cs;

		cache_get_stats(&cs);
		out_add(o, json ? "\"cache\":{\"hits\":%llu,\"misses\":%llu,"
		    "\"revalidated\":%llu,\"evictions\":%llu,\"stores\":%llu,"
		    "\"bytes_used\":%llu,\"bytes_total\":%llu,\"objects\":%u},"
		    : "cache hits %llu misses %llu revalidated %llu evictions "
		    "%llu stores %llu bytes_used %llu of %llu objects %u\n",
		    (unsigned long long)cs.hits, (unsigned long long)cs.misses,
		    (unsigned long long)cs.revalidated,
		    (unsigned long long)cs.evictions,
		    (unsigned long long)cs.stores,
		    (unsigned long long)cs.bytes_used,
		    (unsigned long long)cs.bytes_total, cs.objects);
	}
	if (json)
		out_add(o, "\"backends\":[");
	for (i = 0; i < cfg.nbackends; i++) {
		struct backend *b = &cfg.backends[i];

		out_add(o, json ? "%s{\"name\":\"%s\",\"servers\":[" :
		    "backend %s\n", json ? (i ? "," : "") : b->name,
		    b->name);
		for (j = 0; j < b->nsrv; j++) {
			struct server *s = &b->srv[j];

			if (o->cap - o->n < 256) {
				out_add(o, json ? "{\"truncated\":true}" :
				    "  (truncated)\n");
				break;
			}
			out_add(o, json ? "%s{\"address\":\"%s\",\"state\":\"%s\","
			    "\"weight\":%d,\"active\":%d,\"idle\":%d,"
			    "\"requests\":%llu,\"failures\":%llu,"
			    "\"last_check\":%d}" :
			    "%s server %s state %s weight %d active %d idle %d "
			    "requests %llu failures %llu last_check %d\n",
			    json ? (j ? "," : "") : "", s->name,
			    server_state(s), s->weight, s->active, s->idle,
			    (unsigned long long)s->requests,
			    (unsigned long long)s->failures, s->last_check);
		}
		if (json)
			out_add(o, "]}");
	}
	if (json)
		out_add(o, "]}\n");
}

static int
wants_json(void)
{
	const char *q = memchr(msg.path.p, '?', msg.path.n);
	int i;

	if (q != NULL && (size_t)(msg.path.p + msg.path.n - q) >= 5 &&
	    memcmp(q, "?json", 5) == 0)
		return 1;
	for (i = 0; i < msg.nh; i++)
		if (msg.h[i].id == HN_ACCEPT &&
		    memmem(msg.h[i].value.p, msg.h[i].value.n,
		    "application/json", 16) != NULL)
			return 1;
	return 0;
}

/*
 * The proxy answers its status page itself, only to status_allow. The
 * page is built in the response buffer like any response, so it costs no
 * allocation, and the connection stays alive after it.
 */
static void
status_request(struct conn *c)
{
	struct out body, head;
	int json = wants_json();

	if (!cidr_match(cfg.status_allow, cfg.nstatus_allow, &c->peer.sa)) {
		send_error(c, 403);
		return;
	}
	if (!buf_want(c, &c->rs)) {
		send_error(c, 503);
		return;
	}
	/* The body goes to scratch first: the head needs its length. */
	body.p = scratch;
	body.n = 0;
	body.cap = bufsz - 256;
	status_body(&body, json);
	head.p = c->rs.d;
	head.n = 0;
	head.cap = 256;
	own_close(c);
	out_add(&head, "HTTP/1.1 200 OK\r\nContent-Type: %s\r\n"
	    "Content-Length: %zu\r\nCache-Control: no-store\r\n%s%s\r\n",
	    json ? "application/json" : "text/plain", body.n,
	    c->ctls != NULL ? hsts_line : "",
	    c->flags & F_CLOSE ? "Connection: close\r\n" :
	    c->minor == 0 ? "Connection: keep-alive\r\n" : "");
	if (!(c->flags & F_HEADREQ))
		memcpy(c->rs.d + head.n, body.p, body.n);
	own_send(c, 200, (uint32_t)(head.n + (c->flags & F_HEADREQ ? 0 :
	    body.n)), (uint32_t)head.n);
}

/* redirect_http: a plain request gets 301 to the same URL over TLS. */
static void
redirect_request(struct conn *c)
{
	struct out head;
	struct slice h = msg.host;
	char port[16] = "";
	uint32_t i;

	if (!buf_want(c, &c->rs)) {
		send_error(c, 503);
		return;
	}
	/* The host without its port; ours is the TLS listener's. */
	for (i = 0; i < h.n && h.p[0] != '['; i++)
		if (h.p[i] == ':') {
			h.n = i;
			break;
		}
	if (h.p != NULL && h.p[0] == '[')
		for (i = 0; i < h.n; i++)
			if (h.p[i] == ']') {
				h.n = i + 1;
				break;
			}
	if (tls_port != 443)
		snprintf(port, sizeof(port), ":%d", tls_port);
	own_close(c);
	head.p = c->rs.d;
	head.n = 0;
	head.cap = bufsz;
	out_add(&head, "HTTP/1.1 301 Moved Permanently\r\nLocation: "
	    "https://%.*s%s%.*s\r\nContent-Length: 0\r\n%s\r\n",
	    (int)h.n, h.p ? h.p : "", port, (int)msg.path.n, msg.path.p,
	    c->flags & F_CLOSE ? "Connection: close\r\n" :
	    c->minor == 0 ? "Connection: keep-alive\r\n" : "");
	if (head.n >= bufsz - 1) {
		send_error(c, 414);
		return;
	}
	own_send(c, 301, (uint32_t)head.n, (uint32_t)head.n);
}

/*
 * proxy_protocol: a trusted balancer in front says who the client is
 * (PROXY v1 or v2) before the first request. From then on the client's
 * address is used for ACLs, limits, logs and X-Forwarded-For. Returns 1
 * when done (the header consumed), 0 for more bytes, -1 after an error.
 */
static int
proxy_step(struct conn *c)
{
	struct buf *b = &c->rq;
	struct sockaddr_storage ss;
	int r;

	ss.ss_family = AF_UNSPEC;	/* LOCAL/UNKNOWN leave it so */
	r = acl_proxy_header(b->d + b->off, b->len - b->off, &ss);
	if (r == 0) {
		if (b->len >= bufsz - HEAD_SLACK)
			send_error(c, 400);
		return 0;
	}
	if (r < 0) {
		send_error(c, 400);
		return -1;
	}
	b->off += (uint32_t)r;
	proxy_apply(c, &ss);
	buf_compact(b);		/* the head is parsed and rewritten at 0 */
	return 1;
}

/* The client named by a PROXY header becomes the session's peer. */
static void
proxy_apply(struct conn *c, const struct sockaddr_storage *ss)
{
	c->flags &= ~F_NEEDPROXY;
	if (ss->ss_family != AF_INET && ss->ss_family != AF_INET6)
		return;		/* LOCAL or UNKNOWN: the balancer itself */
	/* Connection caps counted the balancer, not the client. */
	if (c->flags & F_COUNTED)
		acl_conn_close(&c->peer.sa);
	c->flags &= ~(F_COUNTED | F_TRUSTED);
	memcpy(&c->peer, ss, ss->ss_family == AF_INET ?
	    sizeof(struct sockaddr_in) : sizeof(struct sockaddr_in6));
	if (cidr_match(cfg.trusted, cfg.ntrusted, &c->peer.sa))
		c->flags |= F_TRUSTED;
}

/*
 * On a TLS listener the PROXY header comes before the TLS handshake, in
 * the clear: it is taken off the socket (peeked, then exactly its bytes
 * read) before the engine sees anything. Balancers send it in one
 * write; one that arrives in pieces is refused (a peek that waited for
 * the rest would wake the loop on every turn). 1: done, 0: wait, -1:
 * closed.
 */
static int
proxy_peek(struct conn *c)
{
	struct sockaddr_storage ss;
	char pb[16 + 520];
	ssize_t n;
	int r;

	n = recv(c->cfd, pb, sizeof(pb), MSG_PEEK);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return 0;
	ss.ss_family = AF_UNSPEC;
	r = n > 0 ? acl_proxy_header(pb, (size_t)n, &ss) : -1;
	if (r <= 0 || recv(c->cfd, pb, (size_t)r, 0) != r) {
		conn_close(c);
		return -1;
	}
	proxy_apply(c, &ss);
	return 1;
}

/* Try to parse a request head from rq. */
static void
head_step(struct conn *c)
{
	struct buf *b = &c->rq;
	int r;

	buf_compact(b);
	if ((c->flags & F_NEEDPROXY) && proxy_step(c) <= 0)
		return;
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
	if ((c->flags & F_NEEDPROXY) && c->ctls != NULL &&
	    proxy_peek(c) <= 0)
		return;
	if (!buf_want(c, b)) {
		if (c->cstate != C_IDLE || !pool_reclaim(c))
			return;
		buf_unwait(c);
		if (!buf_want(c, b))
			return;
	}
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
	n = c_recv(c, b->d + b->len, room);
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
		head_step(c);	/* garbage is refused at its first read */
		return;
	case C_HEAD:
		/* The parser starts over at each call: a head dribbled a
		 * byte at a time would cost its square. Go on at line ends
		 * (the end of a head is one) or when the buffer is full. */
		if (memchr(b->d + b->len - n, '\n', (size_t)n) != NULL ||
		    b->len >= bufsz - HEAD_SLACK)
			head_step(c);
		return;
	case C_BODY:
		/* A body trickled in slower than MIN_BODY_RATE (past a grace
		 * of header_timeout) holds a backend hostage: cut it. */
		c->qbytes += (uint64_t)n;
		if (now - c->tbody > cfg.header_timeout_ms &&
		    c->qbytes * 1000 < (uint64_t)(now - c->tbody) *
		    MIN_BODY_RATE) {
			logmsg(LOG_INFO, "request body too slow: %llu bytes "
			    "in %lld ms", (unsigned long long)c->qbytes,
			    (long long)(now - c->tbody));
			send_error(c, 408);
			return;
		}
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

/*
 * One read from the upstream, passed on to the client. 1 when it filled
 * all the room there was: more is likely waiting in the socket.
 */
static int
up_read_once(struct conn *c)
{
	struct buf *b = &c->rs;
	ssize_t n;
	uint32_t room;

	if (!buf_want(c, b))
		return 0;
	if (b->len == bufsz)
		buf_compact(b);
	room = bufsz - b->len;
	if (c->ustate == U_HEAD) {
		if (b->len >= bufsz - HEAD_SLACK)
			return 0;
		room -= HEAD_SLACK;
	}
	if (room == 0)
		return 0;
	n = u_recv(c, b->d + b->len, room);
	if (n < 0) {
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR)
			return 0;
		logmsg(LOG_WARNING, "%s: %s", c->srv->name,
		    c->utls != NULL && errno == EPROTO ? tls_error(c->utls) :
		    strerror(errno));
		n = 0;		/* a reset is handled as an early close */
	}
	if (n == 0) {
		up_eof(c);
		return 0;
	}
	/* The cache reads the request head when the response head comes:
	 * keep it held until then (resp_head releases it). */
	if ((c->flags & F_CACHED || c->inval) && c->ustate == U_HEAD)
		c->flags |= F_GOTRESP;
	else
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
	return (uint32_t)n == room;
}

/*
 * While the client takes all it is given, read the upstream again at
 * once instead of after another poll(): a large body then costs a read
 * and a write per buffer, not a loop turn. Bounded, so that one fast
 * transfer cannot keep the loop from everyone else.
 */
static void
up_read(struct conn *c)
{
	int turns = RELAY_TURNS, more;

	for (;;) {
		/* client_flush may have lent a pipe since the last read. */
		more = c->pipe != 0 ? pipe_in(c) : up_read_once(c);
		if (!more || --turns == 0 || c->cstate == C_FREE ||
		    c->ufd == -1 ||
		    (c->ustate != U_BODY && c->ustate != U_TUNNEL) ||
		    c->rfwd > 0 || c->piped > 0 ||
		    (c->flags & (F_CBLOCK | F_CSHUT)))
			return;
	}
}


/* The upstream closed (or reset) its side. */
static void
up_eof(struct conn *c)
{
	switch (c->ustate) {
	case U_HEAD:
		if (!(c->flags & F_GOTRESP))
			logmsg(c->flags & F_REUSED ? LOG_INFO : LOG_WARNING,
			    "%s: closed before a response%s", c->srv->name,
			    c->flags & F_REUSED ? " (stale keep-alive)" : "");
		if (up_retry(c, 0))
			return;
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
		/* Both ways done, or the backend is gone: close it (a hung-up
		 * socket would wake every turn); what it had not taken yet
		 * has nowhere to go. Else it only closed its side. */
		if (c->flags & (F_USHUT | F_UHUP | F_UERR)) {
			up_close(c);
			c->rq.off += c->qfwd;
			c->qfwd = 0;
			rq_consumed(c);
		}
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
	if (buf_available(c, b))
		return 1;
	/* An idle client is still watched: when it sends a request, a
	 * buffer is taken back from a session that stalls (pool_reclaim). */
	if (b == &c->rq && c->cstate == C_IDLE && !(c->flags & F_WAITBUF))
		return 1;
	buf_wait(c);
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

/*
 * poll() reports POLLHUP and POLLERR whatever was asked. A hung-up socket
 * we cannot act on now (no room to read its last bytes, nothing to send)
 * would wake every turn: leave it out (a negative fd) until we can.
 */
static void
slot_set(int slot, int fd, short ev, int hup)
{
	pfd[slot].events = ev;
	pfd[slot].fd = hup && ev == 0 ? -1 : fd;
}

/* Derive both halves' poll interest from the state and the buffers. */
static void
conn_update(struct conn *c)
{
	short ev = 0;

	if (c->cstate == C_FREE)
		return;
	timer_note(conn_deadline(c));
	if (c->parked)
		return;		/* epoll watches it for input, all it wants */
	park_due(c);
	if (c->cstate == C_TUNNEL && (c->flags & F_UEOF) && c->rfwd == 0 &&
	    (c->ufd == -1 || ((c->flags & F_CEOF) && c->qfwd == 0))) {
		conn_close(c);
		return;
	}
	if ((c->litlen > 0 || c->rfwd > 0 || c->piped > 0) &&
	    !(c->flags & F_CSHUT))
		ev |= POLLOUT;
	if (client_wants_read(c)) {
		ev |= POLLIN;
		if (c->ctls != NULL && tls_pending(c->ctls))
			kick(c, F_CKICK);
	}
	/* The engine's own wants; its reads only when we may read too (a
	 * handshake with no buffer to go on would wake every turn). */
	if (c->ctls != NULL && !(c->flags & F_CSHUT))
		ev |= tls_events(c->ctls) & ((ev & POLLIN) ? (POLLIN | POLLOUT) :
		    POLLOUT);
	slot_set(c->cslot, c->cfd, ev, c->flags & F_CHUP);
	if (c->ufd == -1)
		return;
	ev = 0;
	if (c->ustate == U_CONNECT) {
		ev = POLLOUT;
	} else {
		if (c->qfwd > c->qsent && !(c->flags & (F_USHUT | F_UERR)))
			ev |= POLLOUT;
		if (c->pipe != 0) {
			if (!c->pfull && c->piped < pipe_cap &&
			    c->ustate == U_BODY)
				ev |= POLLIN;
		} else if (!(c->flags & F_UEOF) &&
		    can_read(c, &c->rs, c->ustate == U_HEAD)) {
			ev |= POLLIN;
			if (c->utls != NULL && tls_pending(c->utls))
				kick(c, F_UKICK);
		}
		if (c->utls != NULL)
			ev |= tls_events(c->utls);
	}
	slot_set(c->uslot, c->ufd, ev, c->flags & F_UHUP);
}

/* Is the session waiting on its backend (backend_timeout) rather than
 * on its client (idle_timeout)? */
static int
waits_on_backend(const struct conn *c)
{
	if (c->litlen > 0 || c->rfwd > 0 || c->piped > 0)
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
		/* A TLS handshake is part of the head: header_timeout. */
		if (c->ctls != NULL && !tls_ready(c->ctls))
			return c->tstart + cfg.header_timeout_ms;
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
		if (c->ustate == U_CONNECT)
			return c->tprog + (cfg.backend_timeout_ms < CONNECT_MS ?
			    cfg.backend_timeout_ms : CONNECT_MS);
		if (waits_on_backend(c))
			return c->tprog + cfg.backend_timeout_ms;
		/* A body that stops coming ties up a backend connection:
		 * it gets no more than a head would. */
		if (c->cstate == C_BODY && c->litlen == 0 && c->rfwd == 0)
			return c->tprog + cfg.header_timeout_ms;
		return c->tprog + cfg.idle_timeout_ms;
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
		if (c->ustate == U_CONNECT) {
			/* A server that does not even answer SYNs is down. */
			logmsg(LOG_WARNING, "connect %s: timed out",
			    c->srv->name);
			if (!up_retry(c, 1))
				send_error(c, 504);
			break;
		}
		if (waits_on_backend(c) && c->ustate == U_HEAD &&
		    !(c->flags & F_RSTARTED)) {
			logmsg(LOG_WARNING, "%s: no response in time",
			    c->srv->name);
			c->srv->failures++;
			send_error(c, 504);
			break;
		}
		if (c->cstate == C_BODY && !waits_on_backend(c)) {
			send_error(c, 408);	/* the body stopped coming */
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

/* ------------------------------------------------------------ parking */

#ifdef __linux__
/* Nothing in flight, nothing buffered, nothing an engine holds. */
static int
can_park(const struct conn *c)
{
	if (park_fd == -1 || c->parked || c->cstate != C_IDLE ||
	    c->cslot == -1 || c->rq.d != NULL || c->rs.d != NULL ||
	    c->litlen > 0 || c->ufd != -1 || now - c->tprog < PARK_MS ||
	    (c->flags & (F_WAITBUF | F_DEFER | F_CKICK | F_UKICK | F_CHUP)))
		return 0;
	return c->ctls == NULL || (tls_ready(c->ctls) &&
	    !tls_pending(c->ctls) && !(tls_events(c->ctls) & POLLOUT));
}

static void
park(struct conn *c)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLRDHUP;
	ev.data.u64 = (uint64_t)c->gen << 32 | (uint32_t)(c - conns);
	if (epoll_ctl(park_fd, EPOLL_CTL_ADD, c->cfd, &ev) == -1)
		return;		/* it stays in the table: no harm */
	loop_unwatch(c->cslot);
	c->cslot = -1;
	c->parked = 1;
	nparked++;
}

/* An idle client not yet parked: have the timers walk when it may be. */
static void
park_due(const struct conn *c)
{
	if (c->cstate == C_IDLE && !c->parked && park_fd != -1 &&
	    c->tprog + PARK_MS > now)
		timer_note(c->tprog + PARK_MS);
}

/* Back into the pollfd table. */
static void
unpark(struct conn *c)
{
	(void)epoll_ctl(park_fd, EPOLL_CTL_DEL, c->cfd, NULL);
	c->cslot = loop_watch(c->cfd, O_CLIENT, (int)(c - conns));
	c->parked = 0;
	nparked--;
}

/* The epoll set is readable: the parked clients that spoke. */
static void
park_events(void)
{
	struct epoll_event evs[64];
	struct conn *c;
	uint32_t idx;
	short rev;
	int i, n;

	n = epoll_wait(park_fd, evs, 64, 0);
	for (i = 0; i < n; i++) {
		idx = (uint32_t)evs[i].data.u64;
		c = &conns[idx];
		if (!c->parked || c->gen != (uint32_t)(evs[i].data.u64 >> 32))
			continue;
		unpark(c);
		rev = POLLIN;
		if (evs[i].events & (EPOLLHUP | EPOLLRDHUP))
			rev |= POLLHUP;
		if (evs[i].events & EPOLLERR)
			rev |= POLLERR;
		client_event(c, rev);
		if (c->cstate != C_FREE)
			conn_update(c);
	}
}

static void
park_init(void)
{
	if ((park_fd = epoll_create1(EPOLL_CLOEXEC)) == -1) {
		logmsg(LOG_WARNING, "epoll: %s (idle clients stay in the "
		    "poll table)", strerror(errno));
		return;
	}
	pfd[loop_watch(park_fd, O_PARK, 0)].events = POLLIN;
}
#else
static int can_park(const struct conn *c) { (void)c; return 0; }
static void park(struct conn *c) { (void)c; }
static void park_due(const struct conn *c) { (void)c; }
static void unpark(struct conn *c) { (void)c; }
static void park_events(void) { }
static void park_init(void) { }
#endif

/* Walk the table: fire expired deadlines and find the nearest one. */
static void
timers_walk(void)
{
	int64_t d;
	long i;

	timer_next = now + 60000;
	timer_walked = now;
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
		}
		timer_note(d);
		if (can_park(c))
			park(c);
		else
			park_due(c);
	}
	for (i = 0; i < nidles; i++) {
		struct idle *e = &idles[i];

		if (e->fd == -1)
			continue;
		d = e->since + cfg.idle_timeout_ms;
		if (d <= now)
			idle_close(e);
		else
			timer_note(d);
	}
	/* Expired and still there (an error page being sent, say): look
	 * again shortly, not on every turn. */
	if (timer_next <= now)
		timer_next = now + 10;
}

/* Fire expired deadlines; return the poll timeout to the nearest one. */
static int
run_timers(void)
{
	int64_t next, d;

	if (now >= timer_next || now - timer_walked >= TIMER_WALK_MS)
		timers_walk();
	next = timer_next;
	if (!draining) {
		d = bal_checks_run(&cfg, now);
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

	static int64_t reclaim_next;
	int reclaim;

	if (pool_waiters == 0)
		return;
	/* A request waiting for a buffer tries pool_reclaim again now and
	 * then: a session may have stalled long enough meanwhile. */
	reclaim = now >= reclaim_next;
	if (reclaim)
		reclaim_next = now + RECLAIM_MS / 2;
	for (i = 0; i < cfg.max_connections && pool_waiters > 0; i++) {
		struct conn *c = &conns[i];
		struct buf *want;

		if (!(c->flags & F_WAITBUF))
			continue;
		/* Woken only when what it waits for can be lent: else it
		 * would fail again at once, every turn (a spin). */
		want = c->rq.d == NULL && (c->cstate == C_IDLE ||
		    c->cstate == C_HEAD || c->cstate == C_BODY ||
		    c->cstate == C_TUNNEL) ? &c->rq : &c->rs;
		if (!buf_available(c, want) &&
		    !(reclaim && c->cstate == C_IDLE))
			continue;
		c->flags &= ~F_WAITBUF;
		pool_waiters--;
		conn_update(c);
	}
}

/* ------------------------------------------------------------- events */

static void
client_event(struct conn *c, short rev)
{
	/* A reset client can take nothing more; without this its error
	 * would be reported on every turn. */
	if (rev & POLLERR) {
		conn_close(c);
		return;
	}
	if (rev & POLLHUP)
		c->flags |= F_CHUP;
	if (rev & (POLLOUT | POLLHUP)) {
		c->flags &= ~F_CBLOCK;
		client_flush(c);
	}
	if (c->cstate != C_FREE && (rev & (POLLIN | POLLHUP)))
		client_read(c);
}

static void
up_event(struct conn *c, short rev)
{
	if (rev & (POLLHUP | POLLERR))
		c->flags |= F_UHUP;
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
do_accept(int lfd, int is_tls)
{
	static const char busy[] = "HTTP/1.1 503 Service Unavailable\r\n"
	    "Content-Type: text/plain\r\nContent-Length: 24\r\n"
	    "Connection: close\r\n\r\n503 Service Unavailable\n";
	union addr a;
	socklen_t alen;
	struct conn *c;
	int i, fd, counted;

	for (i = 0; i < 64; i++) {
		/* No TLS engine free: leave the client in the backlog. */
		if (is_tls && tls_server_free() == 0)
			return;
		alen = sizeof(a);
		fd = accept4(lfd, &a.sa, &alen, SOCK_NONBLOCK | SOCK_CLOEXEC);
		if (fd == -1) {
			if (errno == EMFILE || errno == ENFILE) {
				static int64_t logged;

				if (now - logged >= 1000) {
					logmsg(LOG_ERR, "accept: %s",
					    strerror(errno));
					logged = now;
				}
				listeners_pause(1);
			}
			return;
		}
		/* Refused cheaply: one write of a static answer, no slot. */
		if ((counted = acl_conn_open(&a.sa, cfg.max_conns_per_ip,
		    now)) == 0) {
			const char *p;
			size_t len;

			p = http_error_page(429, &len);
			(void)send(fd, p, len, MSG_NOSIGNAL);
			close(fd);
			continue;
		}
		if (nfree_conns == 0 && !evict_one()) {
			if (counted == 1)
				acl_conn_close(&a.sa);
			(void)send(fd, busy, sizeof(busy) - 1, MSG_NOSIGNAL);
			close(fd);
			continue;
		}
		c = &conns[free_conns[--nfree_conns]];
		nactive++;
		stats.accepted++;
		c->ctls = is_tls ? tls_server() : NULL;
		if (is_tls && c->ctls == NULL) {
			/* Never plain HTTP on a TLS port. */
			logmsg(LOG_ERR, "TLS engine reset failed");
			c->cfd = fd;
			c->cslot = loop_watch(fd, O_CLIENT, (int)(c - conns));
			c->ufd = -1;
			c->uslot = -1;
			c->flags &= F_DEFER | F_CKICK | F_UKICK;
			if (counted == 1)
				c->flags |= F_COUNTED;
			c->peer = a;
			conn_close(c);
			continue;
		}
		c->cfd = fd;
		c->ufd = -1;
		c->uslot = -1;
		c->peer = a;
		c->flags &= F_DEFER | F_CKICK | F_UKICK;
		if (counted == 1)
			c->flags |= F_COUNTED;
		exchange_reset(c);
		c->ustate = U_NONE;
		c->cstate = C_IDLE;
		c->tstart = c->tprog = now;
		if (cidr_match(cfg.trusted, cfg.ntrusted, &a.sa)) {
			c->flags |= F_TRUSTED;
			if (cfg.proxy_protocol)
				c->flags |= F_NEEDPROXY;
		}
#ifndef __linux__
		setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &(int){ 1 },
		    sizeof(int));
#endif
		c->cslot = loop_watch(fd, O_CLIENT, (int)(c - conns));
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
static int64_t accept_resume;	/* listeners paused (out of fds) until */

/*
 * Work queued for after this turn's events: pipelined heads to parse
 * (F_DEFER) and TLS plaintext buffered in an engine, which poll() cannot
 * report (F_CKICK, F_UKICK).
 */
static void
run_deferred(void)
{
	int i, n = ndefer;
	uint32_t f;

	for (i = 0; i < n; i++) {
		struct conn *c = &conns[deferq[i]];

		f = c->flags & (F_DEFER | F_CKICK | F_UKICK);
		c->flags &= ~(F_DEFER | F_CKICK | F_UKICK);
		if ((f & F_DEFER) && c->cstate == C_HEAD && c->rq.d != NULL)
			head_step(c);
		if ((f & F_CKICK) && c->cstate != C_FREE && c->ctls != NULL)
			client_read(c);
		if ((f & F_UKICK) && c->cstate != C_FREE && c->ufd != -1)
			up_read(c);
		if (c->cstate != C_FREE)
			conn_update(c);
	}
	/* Those queued meanwhile wait for the next turn. */
	memmove(deferq, deferq + n, (size_t)(ndefer - n) * sizeof(*deferq));
	ndefer -= n;
}

/* Out of descriptors: a listener would be readable on every turn and
 * accept() fail each time. Leave the listeners out for a moment. */
static void
listeners_pause(int pause)
{
	int i;

	for (i = 0; i < npfd; i++)
		if (OWN_KIND(owner[i]) == O_LISTEN)
			pfd[i].fd = pause ? -1 : listen_fd[OWN_IDX(owner[i])];
	accept_resume = pause ? now + 100 : 0;
	if (!pause)
		tls_listeners();
}

/* A TLS listener is polled only while an engine is free for a client:
 * without one, new clients wait in the kernel's backlog. */
static void
tls_listeners(void)
{
	int i, on = tls_server_free() > 0 && accept_resume == 0;

	for (i = 0; i < npfd; i++)
		if (OWN_KIND(owner[i]) == O_LISTEN &&
		    listen_is_tls[OWN_IDX(owner[i])])
			pfd[i].fd = on ? listen_fd[OWN_IDX(owner[i])] : -1;
}

/* Keys whose change needs a restart keep their running values. */
static void
keep_restart_keys(struct config *nc)
{
	char **l;
	int n;

#define KEEP_NUM(f) do { \
	if (nc->f != cfg.f) \
		logmsg(LOG_WARNING, "reload: " #f " changed: restart to " \
		    "apply it"); \
	nc->f = cfg.f; \
} while (0)
	KEEP_NUM(max_connections);
	KEEP_NUM(buffers);
	KEEP_NUM(buffer_size);
	KEEP_NUM(cache_size);
	KEEP_NUM(cache_max_object);
	KEEP_NUM(tls.connections);
	KEEP_NUM(tls.sessions);
#undef KEEP_NUM
	/* Strings: swap, so each configuration still frees what it owns. */
#define KEEP_STR(f) do { \
	char *t = nc->f; \
	if ((t == NULL) != (cfg.f == NULL) || (t && strcmp(t, cfg.f))) \
		logmsg(LOG_WARNING, "reload: " #f " changed: restart to " \
		    "apply it"); \
	nc->f = cfg.f; \
	cfg.f = t; \
} while (0)
	KEEP_STR(user);
	KEEP_STR(chroot_dir);
	KEEP_STR(pidfile);
#undef KEEP_STR
	if (!same_list(nc->listen, nc->nlisten, cfg.listen, cfg.nlisten) ||
	    !same_list(nc->tls.listen, nc->tls.nlisten, cfg.tls.listen,
	    cfg.tls.nlisten))
		logmsg(LOG_WARNING, "reload: listen changed: restart to "
		    "apply it");
	l = nc->listen, n = nc->nlisten;
	nc->listen = cfg.listen, nc->nlisten = cfg.nlisten;
	cfg.listen = l, cfg.nlisten = n;
	l = nc->tls.listen, n = nc->tls.nlisten;
	nc->tls.listen = cfg.tls.listen, nc->tls.nlisten = cfg.tls.nlisten;
	cfg.tls.listen = l, cfg.tls.nlisten = n;
}

static int
same_list(char **a, int na, char **b, int nb)
{
	int i;

	if (na != nb)
		return 0;
	for (i = 0; i < na; i++)
		if (strcmp(a[i], b[i]) != 0)
			return 0;
	return 1;
}

/* The flat server table (health-check owners) and enough poll slots for
 * the configuration now in force. Reload path: it may allocate. */
static int
servers_build(void)
{
	struct server **ns;
	struct pollfd *np;
	struct ready *nr;
	int *no;
	long need;
	int i, j, nsrv = 0;

	for (i = 0; i < cfg.nbackends; i++)
		nsrv += cfg.backends[i].nsrv;
	if ((ns = realloc(servers, (nsrv ? nsrv : 1) * sizeof(*ns))) == NULL)
		return -1;
	servers = ns;
	nservers = 0;
	for (i = 0; i < cfg.nbackends; i++)
		for (j = 0; j < cfg.backends[i].nsrv; j++)
			servers[nservers++] = &cfg.backends[i].srv[j];
	need = nlisten + 2 * cfg.max_connections + nidles + nsrv + 1;
	if (need > nslots_cap) {
		np = realloc(pfd, need * sizeof(*pfd));
		if (np != NULL)
			pfd = np;
		no = realloc(owner, need * sizeof(*owner));
		if (no != NULL)
			owner = no;
		nr = realloc(ready, need * sizeof(*ready));
		if (nr != NULL)
			ready = nr;
		if (np == NULL || no == NULL || nr == NULL)
			return -1;
		nslots_cap = need;
	}
	return 0;
}

/*
 * SIGHUP: read the file again. A file that fails to load is logged and
 * the running configuration stays. Otherwise routes, backends, ACLs,
 * limits, timeouts and log paths take effect for new requests at once;
 * sessions in flight finish with what they started with.
 */
static void
reload(void)
{
	struct config nc;
	char err[512];
	long i;
	int slot;

	if (conf_load(conf_path, &nc, err, sizeof(err)) == -1) {
		logmsg(LOG_ERR, "reload failed, configuration unchanged: %s",
		    err);
		conf_free(&nc);
		return;
	}
	for (slot = 0; slot < RETIRED && retired[slot].refs > 0; slot++)
		;
	if (slot == RETIRED) {
		logmsg(LOG_ERR, "reload refused: %d older configurations "
		    "still serve requests", RETIRED);
		conf_free(&nc);
		return;
	}
	if (tls_reload(&nc, err, sizeof(err)) == -1) {
		logmsg(LOG_ERR, "reload failed, configuration unchanged: %s",
		    err);
		conf_free(&nc);
		return;
	}
	keep_restart_keys(&nc);
	acl_auth_forget();	/* verified credentials were for the old files */
	bal_checks_stop(&cfg);
	for (i = 0; i < nidles; i++)
		if (idles[i].fd != -1)
			idle_close(&idles[i]);
	retired[slot].c = cfg;
	retired[slot].gen = cfg_gen;
	retired[slot].refs = 0;
	for (i = 0; i < cfg.max_connections; i++)
		if ((conns[i].srv != NULL || conns[i].rt != NULL) &&
		    conns[i].cgen == cfg_gen)
			retired[slot].refs++;
	cfg = nc;
	cfg_gen++;
	timer_next = now;	/* timeouts may have changed: walk at once */
	if (retired[slot].refs == 0)
		conf_free(&retired[slot].c);
	if (servers_build() == -1)
		logmsg(LOG_ERR, "reload: out of memory for the server table");
	if (cfg.access_log != NULL && alog_rec == NULL &&
	    (alog_rec = calloc(cfg.max_connections, ALOG_REC)) == NULL)
		logmsg(LOG_ERR, "reload: out of memory for access_log");
	if (log_open() == -1)
		logmsg(LOG_ERR, "reload: log %s: %s", log_bad, strerror(errno));
	hsts_line[0] = '\0';
	if (cfg.tls.hsts > 0)
		snprintf(hsts_line, sizeof(hsts_line),
		    "Strict-Transport-Security: max-age=%ld\r\n", cfg.tls.hsts);
	logmsg(LOG_NOTICE, "reloaded %s", conf_path);
}

static void
drain_start(void)
{
	long i;

	draining = 1;
	drain_deadline = now + DRAIN_MS;
	logmsg(LOG_NOTICE, "stopping: draining %d connections", nactive);
	/* Stop accepting: new clients are refused by the kernel. */
	for (i = 0; i < npfd; i++) {
		if (OWN_KIND(owner[i]) == O_LISTEN) {
			close(pfd[i].fd);
			loop_unwatch((int)i);
			i--;
		}
	}
	for (i = 0; i < nidles; i++)
		if (idles[i].fd != -1)
			idle_close(&idles[i]);
	bal_checks_stop(&cfg);
	for (i = 0; i < cfg.max_connections; i++)
		if (conns[i].cstate == C_IDLE)
			conn_close(&conns[i]);
}

static void
dispatch(const struct ready *r)
{
	int idx = OWN_IDX(r->own);
	struct conn *c = &conns[idx];

	switch (OWN_KIND(r->own)) {
	case O_LISTEN:
		if (!draining) {
			do_accept(listen_fd[idx], listen_is_tls[idx]);
			if (listen_is_tls[idx])
				tls_listeners();
		}
		return;
	case O_CHECK:
		if (servers[idx]->hc.fd != -1)
			bal_check_event(servers[idx], r->rev, now);
		return;
	case O_PARK:
		park_events();
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
		if (c->ugen != r->gen || c->ufd == -1)
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
	struct timespec ts;
	int n, i, nready, timeout;

	for (;;) {
		now = mono_ms();
		wall = time(NULL);
		if (sig_term && !draining)
			drain_start();
		if (sig_usr1) {
			sig_usr1 = 0;
			if (log_open() == -1)
				logmsg(LOG_ERR, "reopen %s: %s", log_bad,
				    strerror(errno));
			else
				logmsg(LOG_NOTICE, "logs reopened");
		}
		if (sig_hup) {
			sig_hup = 0;
			reload();
		}
		timeout = run_timers();
		if (draining && (nactive == 0 || now >= drain_deadline))
			break;
		if (accept_resume != 0 && !draining) {
			if (now >= accept_resume)
				listeners_pause(0);
			else if (accept_resume - now < timeout)
				timeout = (int)(accept_resume - now);
		}
		pool_kick();
		if (ndefer > 0)
			timeout = 0;
		else if (timeout > 1000 && log_pending())
			timeout = 1000;
		/* Requests waiting for a buffer retry pool_reclaim soon. */
		if (pool_waiters > 0 && timeout > RECLAIM_MS / 2)
			timeout = RECLAIM_MS / 2;
		log_dropped(wall);
		log_flush();
		ts.tv_sec = timeout / 1000;
		ts.tv_nsec = (long)(timeout % 1000) * 1000000;
		n = ppoll(pfd, (nfds_t)npfd, &ts, &poll_mask);
		poll_seq++;
		if (n < 0) {
			if (errno != EINTR)
				logmsg(LOG_ERR, "poll: %s", strerror(errno));
			continue;
		}
		now = mono_ms();
		wall = time(NULL);
		/* Collect first: handlers add and remove slots. */
		nready = 0;
		for (i = 0; i < npfd && nready < n; i++) {
			int o = owner[i];

			if (pfd[i].revents == 0)
				continue;
			ready[nready].own = o;
			ready[nready].rev = pfd[i].revents;
			switch (OWN_KIND(o)) {
			case O_IDLE:
				ready[nready].gen = idles[OWN_IDX(o)].gen;
				break;
			case O_CLIENT:
				ready[nready].gen = conns[OWN_IDX(o)].gen;
				break;
			case O_UP:
				ready[nready].gen = conns[OWN_IDX(o)].ugen;
				break;
			default:
				ready[nready].gen = 0;
				break;
			}
			nready++;
		}
		for (i = 0; i < nready; i++)
			dispatch(&ready[i]);
		run_deferred();
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
	sigset_t block;

	sigemptyset(&block);
	sigaddset(&block, SIGTERM);
	sigaddset(&block, SIGINT);
	sigaddset(&block, SIGHUP);
	sigaddset(&block, SIGUSR1);
	sigprocmask(SIG_BLOCK, &block, &poll_mask);
	sigdelset(&poll_mask, SIGTERM);
	sigdelset(&poll_mask, SIGINT);
	sigdelset(&poll_mask, SIGHUP);
	sigdelset(&poll_mask, SIGUSR1);
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
#ifdef SO_REUSEPORT
	/* One instance per core, each with its own config, all bound to the
	 * same address: the kernel spreads new connections over them. */
	if (cfg.reuseport &&
	    setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) == -1)
		goto fail;
#endif
	if (ss.ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one));
	/* Linux gives accepted sockets the listener's TCP_NODELAY: set
	 * once here, not once per client (do_accept). */
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
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

static int
listen_port(int fd)
{
	union addr a;
	socklen_t len = sizeof(a);

	if (getsockname(fd, &a.sa, &len) == -1)
		return 443;
	return ntohs(a.sa.sa_family == AF_INET6 ? a.in6.sin6_port :
	    a.in.sin_port);
}

/* TLS engines: one per client connection on a TLS listener, up to
 * [tls] connections; as many for upstream TLS when a server has tls. */
static int
tls_servers_needed(void)
{
	return cfg.tls.nlisten > 0 ? (int)cfg.tls.connections : 0;
}

static int
tls_clients_needed(void)
{
	int i, j;

	for (i = 0; i < cfg.nbackends; i++)
		for (j = 0; j < cfg.backends[i].nsrv; j++)
			if (cfg.backends[i].srv[j].tls)
				return (int)cfg.tls.connections;
	return 0;
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
	nslots = nlisten + 2 * nconn + nidles + nsrv + 1;	/* + park_fd */
	nslots_cap = nslots;
	conns = calloc(nconn, sizeof(*conns));
	free_conns = calloc(nconn, sizeof(*free_conns));
	idles = calloc(nidles ? nidles : 1, sizeof(*idles));
	pfd = calloc(nslots, sizeof(*pfd));
	owner = calloc(nslots, sizeof(*owner));
	ready = calloc(nslots, sizeof(*ready));
	if (cfg.access_log != NULL &&
	    (alog_rec = calloc(nconn, ALOG_REC)) == NULL)
		return -1;
	deferq = calloc(nconn, sizeof(*deferq));
	pool = calloc(cfg.buffers, sizeof(*pool));
	/* Not touched here: pages cost RSS only once a buffer is used. */
	pool_mem = malloc((size_t)cfg.buffers * bufsz);
	scratch = malloc(bufsz);
	pathbuf = malloc(bufsz);
	if (!conns || !free_conns || !idles || !pfd || !owner || !ready ||
	    !deferq || !pool || !pool_mem || !scratch || !pathbuf ||
	    servers_build() == -1)
		return -1;
	/* Every slot is written now: the table's memory is the process's
	 * from the start, and an idle client costs no more of it. */
	for (i = 0; i < nconn; i++) {
		conns[i].cfd = conns[i].ufd = -1;
		conns[i].cslot = conns[i].uslot = -1;
		free_conns[nfree_conns++] = (int)(nconn - 1 - i);
	}
	for (i = nidles - 1; i >= 0; i--) {
		idles[i].fd = -1;
		idles[i].prev = -1;
		idles[i].next = idle_freel;
		idle_freel = (int)i;
	}
	for (i = 0; i < cfg.buffers; i++)
		pool[pool_free++] = pool_mem + (size_t)i * bufsz;
	for (i = 0; i < nlisten; i++)
		pfd[loop_watch(listen_fd[i], O_LISTEN, (int)i)].events = POLLIN;
	tls_listeners();
	park_init();
	/* Twice the connections: room for the addresses behind them and
	 * for recent ones that the rate limit must remember. */
	if (acl_init(2 * nconn) == -1)
		return -1;
	if (cfg.cache_size > 0) {
		if (cache_init(cfg.cache_size, cfg.cache_max_object) == -1)
			return -1;
		cache_on = 1;
	}
	mem.conns = (size_t)nconn * (sizeof(*conns) + sizeof(*free_conns));
	mem.buffers = (size_t)cfg.buffers * (bufsz + sizeof(*pool)) + 2 * bufsz;
	mem.tls = (size_t)(tls_servers_needed() + tls_clients_needed()) *
	    tls_engine_size();
	mem.cache = (size_t)cfg.cache_size;
	mem.addresses = acl_table_size();
	mem.other = (size_t)nidles * sizeof(*idles) + (size_t)nslots *
	    (sizeof(*pfd) + sizeof(*owner) + sizeof(*ready)) +
	    (size_t)nsrv * sizeof(*servers);
	logmsg(LOG_INFO, "reserved %zu KB: %ld connections of %zu B (%zu KB), "
	    "%ld buffers of %u B (%zu KB), TLS engines %zu KB, cache %zu KB, "
	    "address table %zu KB, idle upstream and poll tables (%d + %ld "
	    "slots) %zu KB", (mem.conns + mem.buffers + mem.tls + mem.cache +
	    mem.addresses + mem.other) / 1024, nconn, sizeof(struct conn),
	    mem.conns / 1024, cfg.buffers, bufsz, mem.buffers / 1024,
	    mem.tls / 1024, mem.cache / 1024, mem.addresses / 1024, nidles,
	    nslots, mem.other / 1024);
	return 0;
}

/* Enough descriptors for every slot, or accept() would spin on EMFILE. */
static void
raise_nofile(void)
{
	struct rlimit rl;
	rlim_t need = (rlim_t)(2 * cfg.max_connections + nidles + 64 +
	    2 * (cfg.buffers / 8));	/* pipes_reserve */

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
	/* The working directory stays the config's (conf_home): a reload
	 * resolves its relative paths the same way. */
	fd = open("/dev/null", O_RDWR);
	if (fd != -1) {
		dup2(fd, 0);
		dup2(fd, 1);
		if (log_fd != 2 || log_syslog)
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

/*
 * Relative paths in the config (certificates, logs, htpasswd) mean
 * relative to the config file, at start and at every reload: work from
 * its directory, and keep its absolute path.
 */
static int
conf_home(void)
{
	static char abs[4096];
	char *slash;

	if (realpath(conf_path, abs) == NULL) {
		fprintf(stderr, "%s: %s\n", conf_path, strerror(errno));
		return -1;
	}
	conf_path = abs;
	slash = strrchr(abs, '/');
	*slash = '\0';
	if (chdir(abs[0] != '\0' ? abs : "/") == -1) {
		fprintf(stderr, "%s: %s\n", abs, strerror(errno));
		return -1;
	}
	*slash = '/';
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
	if (conf_home() == -1)
		return 1;
	if (conf_load(conf_path, &cfg, err, sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		conf_free(&cfg);
		return 1;
	}
	/* Certificates and keys are read now, as root, before the fork:
	 * a bad file is reported on the terminal (and by -t). */
	if (tls_init(&cfg, test ? 0 : tls_servers_needed(), test ? 0 :
	    tls_clients_needed(), err, sizeof(err)) == -1) {
		fprintf(stderr, "%s\n", err);
		conf_free(&cfg);
		return 1;
	}
	if (test) {
		printf("%s: configuration ok\n", conf_path);
		tls_free();
		conf_free(&cfg);
		return 0;
	}
	listen_fd = calloc(cfg.nlisten + cfg.tls.nlisten, sizeof(*listen_fd));
	listen_is_tls = calloc(cfg.nlisten + cfg.tls.nlisten, 1);
	if (listen_fd == NULL || listen_is_tls == NULL)
		return 1;
	for (i = 0; i < cfg.nlisten + cfg.tls.nlisten; i++) {
		int is_tls = i >= cfg.nlisten;
		const char *spec = is_tls ? cfg.tls.listen[i - cfg.nlisten] :
		    cfg.listen[i];

		listen_fd[nlisten] = listen_on(spec);
		if (listen_fd[nlisten] == -1)
			return 1;
		listen_is_tls[nlisten] = (uint8_t)is_tls;
		if (is_tls && tls_port == 443 && i == cfg.nlisten)
			tls_port = listen_port(listen_fd[nlisten]);
		nlisten++;
	}
	if (cfg.tls.hsts > 0)
		snprintf(hsts_line, sizeof(hsts_line),
		    "Strict-Transport-Security: max-age=%ld\r\n", cfg.tls.hsts);
	if (log_open() == -1) {
		fprintf(stderr, "%s: log %s: %s\n", cfg.file, log_bad,
		    strerror(errno));
		return 1;
	}
	if (!foreground && (ready_fd = daemonize()) == -1) {
		fprintf(stderr, "daemon: %s\n", strerror(errno));
		return 1;
	}
	signals_init();
	now = mono_ms();
	stats.start = now;
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
	pipes_reserve();
	if (drop_privileges() == -1) {
		rc = 1;
		goto out;
	}
	for (i = 0; i < cfg.nlisten; i++)
		logmsg(LOG_NOTICE, "listening on %s", cfg.listen[i]);
	for (i = 0; i < cfg.tls.nlisten; i++)
		logmsg(LOG_NOTICE, "listening on %s (TLS)", cfg.tls.listen[i]);
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
