/*
 * balance.c - choosing a route for a request and a server for a route.
 *
 * Routing and picking are called once per request: no allocation, no
 * I/O. Health checks are non-blocking sockets driven by the loop.
 */
#include <errno.h>
#include <poll.h>
#include <stdio.h>
#include <string.h>
#include <syslog.h>
#include <unistd.h>

#include "proxy.h"

/* ASCII only: host names are compared the same in every locale. */
static int
lower(int ch)
{
	return ch >= 'A' && ch <= 'Z' ? ch - 'A' + 'a' : ch;
}

static int
same_nocase(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (lower((unsigned char)a[i]) != lower((unsigned char)b[i]))
			return 0;
	return 1;
}

/*
 * pat is lower-case (conf.c): "example.org" matches that host only,
 * "*.example.org" matches one or more labels in front of the suffix but
 * not the bare "example.org".
 */
static int
host_match(const char *pat, const char *h, size_t n)
{
	size_t pn = strlen(pat);

	if (pat[0] == '*') {
		pat++;
		pn--;
		return n > pn && same_nocase(h + n - pn, pat, pn);
	}
	return n == pn && same_nocase(h, pat, pn);
}

int
bal_route(const struct config *c, struct slice host, const char *path,
    size_t pathlen)
{
	const struct route *r;
	const char *h = host.p;
	size_t n = h != NULL ? host.n : 0, i;
	int k;

	/* Host is "name[:port]" or "[v6]:port" (RFC 9110 7.2): drop the port */
	if (n > 0 && h[0] == '[') {
		for (i = 0; i < n && h[i] != ']'; i++)
			;
		if (i < n)
			n = i + 1;
	} else {
		for (i = 0; i < n && h[i] != ':'; i++)
			;
		n = i;
	}
	/* "example.org." is the fully qualified spelling of the same name. */
	if (n > 1 && h[n - 1] == '.')
		n--;

	for (k = 0; k < c->nroutes; k++) {
		r = &c->routes[k];
		if (r->host != NULL && !host_match(r->host, h, n))
			continue;
		if (r->path != NULL && (pathlen < r->pathlen ||
		    memcmp(path, r->path, r->pathlen) != 0))
			continue;
		return k;
	}
	return -1;
}

int
bal_available(struct server *s, int64_t now)
{
	return !s->check_down && now >= s->down_until;
}

/* Log a server's state when it changes, not at every check. */
static void
note_state(struct server *s, int64_t now)
{
	int down = !bal_available(s, now);

	if (down == s->logged_down)
		return;
	s->logged_down = (uint8_t)down;
	if (down)
		logmsg(LOG_WARNING, "backend %s: server %s is down",
		    s->b->name, s->name);
	else
		logmsg(LOG_NOTICE, "backend %s: server %s is up",
		    s->b->name, s->name);
}

void
bal_fail(struct server *s, int64_t now)
{
	s->failures++;
	s->down_until = now + s->b->fail_timeout_ms;
	note_state(s, now);
}

/*
 * Smooth weighted round-robin (as in nginx) over the servers in rotation:
 * every pick raises each one's cur by its weight, takes the highest (the
 * first on ties) and lowers it by the total. Over sum(weights) picks each
 * server is chosen exactly weight times, and the heavy ones are spread
 * out rather than sent in a burst: weights 5:1:1 give a a b a c a a.
 */
struct server *
bal_pick(struct backend *b, int64_t now)
{
	struct server *s, *best = NULL;
	int i, total = 0;

	for (i = 0; i < b->nsrv; i++) {
		s = &b->srv[i];
		note_state(s, now);
		if (!bal_available(s, now))
			continue;
		s->cur += s->weight;
		total += s->weight;
		if (best == NULL || s->cur > best->cur)
			best = s;
	}
	if (best != NULL)
		best->cur -= total;
	return best;
}

/* ------------------------------------------------------ health checks */

/*
 * Each server of a backend with health_check gets a GET every
 * health_interval over a fresh non-blocking connection inside the loop:
 * connect, send, read the status line, close. 2xx and 3xx mean up;
 * anything else, a refused connection or no answer in time mean down.
 */
enum { HC_IDLE, HC_CONNECT, HC_READ };

static void
check_end(struct server *s, int status, int64_t now)
{
	struct check *h = &s->hc;

	if (h->fd != -1) {
		loop_unwatch(h->slot);
		close(h->fd);
		h->fd = -1;
	}
	h->st = HC_IDLE;
	h->due = now + s->b->health_interval_ms;
	s->last_check = status;
	if (status >= 200 && status < 400) {
		/* A success ends a passive penalty early too. */
		s->check_down = 0;
		s->down_until = 0;
	} else {
		s->check_down = 1;
	}
	note_state(s, now);
}

static void
check_start(struct server *s, int64_t now, long timeout_ms)
{
	struct check *h = &s->hc;
	int fd;

	h->len = 0;
	h->deadline = now + timeout_ms;
	fd = socket(s->sa.ss_family, SOCK_STREAM | SOCK_NONBLOCK |
	    SOCK_CLOEXEC, 0);
	if (fd == -1) {
		check_end(s, -1, now);
		return;
	}
	if (connect(fd, (struct sockaddr *)&s->sa, s->salen) == -1 &&
	    errno != EINPROGRESS) {
		close(fd);
		check_end(s, -1, now);
		return;
	}
	h->fd = fd;
	h->st = HC_CONNECT;
	h->slot = loop_watch(fd, O_CHECK, loop_server_index(s));
	loop_events(h->slot, POLLOUT);
}

int64_t
bal_checks_run(struct config *c, int64_t now)
{
	int64_t next = now + 60000;
	long timeout;
	int i, j;

	for (i = 0; i < c->nbackends; i++) {
		struct backend *b = &c->backends[i];

		if (b->health_check == NULL)
			continue;
		/* A check must end before the next one is due. */
		timeout = b->health_interval_ms < c->backend_timeout_ms ?
		    b->health_interval_ms : c->backend_timeout_ms;
		for (j = 0; j < b->nsrv; j++) {
			struct server *s = &b->srv[j];
			struct check *h = &s->hc;

			if (h->fd != -1 && now >= h->deadline)
				check_end(s, 0, now);
			if (h->fd == -1 && now >= h->due)
				check_start(s, now, timeout);
			if (h->fd != -1 && h->deadline < next)
				next = h->deadline;
			if (h->fd == -1 && h->due < next)
				next = h->due;
		}
	}
	return next;
}

static void
check_send(struct server *s, int64_t now)
{
	struct check *h = &s->hc;
	char req[512];
	int err = 0, n;
	socklen_t len = sizeof(err);

	if (getsockopt(h->fd, SOL_SOCKET, SO_ERROR, &err, &len) == -1 ||
	    err != 0) {
		check_end(s, -1, now);
		return;
	}
	n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: %s\r\n"
	    "User-Agent: proxy-check\r\nConnection: close\r\n\r\n",
	    s->b->health_check, s->name);
	/* A fresh socket takes a few hundred bytes at once; anything less
	 * is a failure, not a reason to keep state. */
	if (n <= 0 || n >= (int)sizeof(req) ||
	    send(h->fd, req, (size_t)n, MSG_NOSIGNAL) != n) {
		check_end(s, -1, now);
		return;
	}
	h->st = HC_READ;
	loop_events(h->slot, POLLIN);
}

/* "HTTP/1.x NNN": the status of the answer, or -1 when malformed. */
static int
check_status(const char *p, size_t n)
{
	if (n < 12 || memcmp(p, "HTTP/1.", 7) != 0 || p[8] != ' ' ||
	    p[9] < '1' || p[9] > '5' || p[10] < '0' || p[10] > '9' ||
	    p[11] < '0' || p[11] > '9')
		return -1;
	return (p[9] - '0') * 100 + (p[10] - '0') * 10 + (p[11] - '0');
}

static void
check_read(struct server *s, int64_t now)
{
	struct check *h = &s->hc;
	ssize_t n;

	n = recv(h->fd, h->buf + h->len, sizeof(h->buf) - h->len, 0);
	if (n < 0 && (errno == EAGAIN || errno == EINTR))
		return;
	if (n <= 0) {
		check_end(s, -1, now);
		return;
	}
	h->len += (uint16_t)n;
	if (h->len >= 12)
		check_end(s, check_status(h->buf, h->len), now);
}

void
bal_check_event(struct server *s, short revents, int64_t now)
{
	switch (s->hc.st) {
	case HC_CONNECT:
		check_send(s, now);
		return;
	case HC_READ:
		check_read(s, now);
		return;
	default:
		return;
	}
}

void
bal_checks_stop(struct config *c)
{
	int i, j;

	for (i = 0; i < c->nbackends; i++)
		for (j = 0; j < c->backends[i].nsrv; j++) {
			struct check *h = &c->backends[i].srv[j].hc;

			if (h->fd == -1)
				continue;
			loop_unwatch(h->slot);
			close(h->fd);
			h->fd = -1;
			h->st = HC_IDLE;
		}
}
