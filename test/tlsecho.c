/*
 * tlsecho - a tiny poll() HTTPS server and client on tls.c alone, to
 * test the TLS layer without the proxy around it.
 *
 *   tlsecho -c FILE [-t] [-v]
 *	Serve every [tls] listen of FILE; -t only loads the certificates
 *	(tls_init) and exits 0 or 1 with the error on stderr. HUP reloads
 *	FILE's certificates (tls_reload), TERM exits cleanly; -v logs
 *	failed handshakes.
 *	GET /big/N	N bytes, byte i is i % 251
 *	POST /echo	the request body back, streamed as it arrives
 *	anything else	"sni=NAME\nbytes=N\npath=P\n", N the plaintext
 *			bytes received on this connection so far
 *
 *   tlsecho -u HOST:PORT -a CA [-n NAME] [-p PATH]
 *	Client mode: GET PATH (default /) over tls_client, verified
 *	against CA with the server name NAME (default HOST); prints the
 *	response, exits 1 with tls_error() when TLS fails.
 */
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>

#include "proxy.h"

#define IN_CAP		16384
#define OUT_CAP		65536
#define IDLE_MS		20000

enum { ST_HEAD, ST_ECHO, ST_DISCARD, ST_BIG, ST_CLOSING };

struct conn {
	int fd;			/* -1: free slot */
	struct tls *t;
	int state;
	int close_after;	/* Connection: close or HTTP/1.0 */
	uint64_t left;		/* body bytes to read (echo) or make (big) */
	uint64_t pos;		/* /big: bytes made so far */
	uint64_t rx;		/* plaintext bytes received */
	int64_t deadline;
	size_t inlen, outoff, outlen;
	char in[IN_CAP];
	char out[OUT_CAP];
};

static int verbose;
static volatile sig_atomic_t stop, reload;

/* TERM ends the loop so that the sanitizers' leak check runs at exit. */
static void
on_term(int sig)
{
	stop = 1;
}

/* HUP reloads the certificates (tls_reload), as the proxy will. */
static void
on_hup(int sig)
{
	reload = 1;
}

static void
do_reload(const char *file)
{
	struct config cf;
	char err[512];

	if (conf_load(file, &cf, err, sizeof(err)) < 0 ||
	    tls_reload(&cf, err, sizeof(err)) < 0)
		logmsg(0, "reload failed: %s", err);
	else
		logmsg(0, "reloaded");
	conf_free(&cf);
}

void
logmsg(int prio, const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tlsecho: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fputc('\n', stderr);
}

static int64_t
now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int
nonblock(int fd)
{
	int fl = fcntl(fd, F_GETFL);

	return fl < 0 ? -1 : fcntl(fd, F_SETFL, fl | O_NONBLOCK);
}

/* ------------------------------------------------------------ server */

static void
conn_close(struct conn *c)
{
	if (c->fd < 0)
		return;
	if (c->t != NULL) {
		tls_close(c->t, c->fd);
		tls_release(c->t);
	}
	close(c->fd);
	c->fd = -1;
	c->t = NULL;
}

/* Room at the end of out, compacting when the front has been sent. */
static size_t
out_room(struct conn *c)
{
	if (c->outoff > 0 && c->outoff == c->outlen)
		c->outoff = c->outlen = 0;
	if (c->outoff > 0 && OUT_CAP - c->outlen < 4096) {
		memmove(c->out, c->out + c->outoff, c->outlen - c->outoff);
		c->outlen -= c->outoff;
		c->outoff = 0;
	}
	return OUT_CAP - c->outlen;
}

static void
consume(struct conn *c, size_t n)
{
	memmove(c->in, c->in + n, c->inlen - n);
	c->inlen -= n;
}

static const char *
find_header(const char *head, const char *name)
{
	const char *p = head;
	size_t n = strlen(name);

	while ((p = strstr(p, "\r\n")) != NULL) {
		p += 2;
		if (strncasecmp(p, name, n) == 0 && p[n] == ':')
			return p + n + 1;
	}
	return NULL;
}

/* Turn a complete head into a response start; 0 ok, -1 close. */
static int
start_response(struct conn *c, size_t hl)
{
	char head[IN_CAP + 1], method[16], path[1024], body[1400];
	const char *v;
	unsigned long long clen = 0;
	int n;

	memcpy(head, c->in, hl);
	head[hl] = '\0';
	consume(c, hl);
	if (sscanf(head, "%15s %1023s HTTP/1.%*d", method, path) != 2)
		return -1;
	if ((v = find_header(head, "Content-Length")) != NULL)
		clen = strtoull(v, NULL, 10);
	c->close_after = strstr(head, " HTTP/1.0\r\n") != NULL ||
	    ((v = find_header(head, "Connection")) != NULL &&
	    strncasecmp(v + strspn(v, " "), "close", 5) == 0);
	c->left = clen;
	if (strcmp(method, "POST") == 0 && strncmp(path, "/echo", 5) == 0) {
		c->state = ST_ECHO;
		n = snprintf(c->out + c->outlen, out_room(c), "HTTP/1.1 200 "
		    "OK\r\nContent-Length: %llu\r\n%s\r\n", clen,
		    c->close_after ? "Connection: close\r\n" : "");
	} else if (strncmp(path, "/big/", 5) == 0) {
		c->state = ST_BIG;
		c->left = strtoull(path + 5, NULL, 10);
		c->pos = 0;
		n = snprintf(c->out + c->outlen, out_room(c), "HTTP/1.1 200 "
		    "OK\r\nContent-Length: %llu\r\n%s\r\n",
		    (unsigned long long)c->left,
		    c->close_after ? "Connection: close\r\n" : "");
	} else {
		c->state = ST_DISCARD;
		snprintf(body, sizeof(body), "sni=%s\nbytes=%llu\npath=%s\n",
		    tls_sni(c->t), (unsigned long long)c->rx, path);
		n = snprintf(c->out + c->outlen, out_room(c), "HTTP/1.1 200 "
		    "OK\r\nContent-Length: %zu\r\nContent-Type: text/plain\r\n"
		    "%s\r\n%s", strlen(body),
		    c->close_after ? "Connection: close\r\n" : "", body);
	}
	if (n < 0 || (size_t)n >= out_room(c))
		return -1;
	c->outlen += (size_t)n;
	return 0;
}

/* Move input to output as far as the state allows; 1 when it did. */
static int
produce(struct conn *c)
{
	char *e;
	size_t n, room;
	int moved = 0;

	for (;;) {
		switch (c->state) {
		case ST_HEAD:
			if (c->inlen == 0)
				return moved;
			if ((e = memmem(c->in, c->inlen, "\r\n\r\n", 4)) ==
			    NULL) {
				if (c->inlen == IN_CAP)
					return -1;	/* head too large */
				return moved;
			}
			if (out_room(c) < 2048)
				return moved;
			if (start_response(c, (size_t)(e + 4 - c->in)) < 0)
				return -1;
			moved = 1;
			break;
		case ST_ECHO:
		case ST_DISCARD:
			n = c->inlen < c->left ? c->inlen : (size_t)c->left;
			if (c->state == ST_ECHO) {
				room = out_room(c);
				if (n > room)
					n = room;
				memcpy(c->out + c->outlen, c->in, n);
				c->outlen += n;
			}
			consume(c, n);
			c->left -= n;
			moved |= n > 0;
			if (c->left > 0)
				return moved;
			c->state = c->close_after ? ST_CLOSING : ST_HEAD;
			break;
		case ST_BIG:
			room = out_room(c);
			n = c->left < room ? (size_t)c->left : room;
			for (room = 0; room < n; room++)
				c->out[c->outlen + room] =
				    (char)((c->pos + room) % 251);
			c->outlen += n;
			c->pos += n;
			c->left -= n;
			moved |= n > 0;
			if (c->left > 0)
				return moved;
			c->state = c->close_after ? ST_CLOSING : ST_HEAD;
			break;
		case ST_CLOSING:
			return moved;
		}
	}
}

static int
wants_input(const struct conn *c)
{
	return c->inlen < IN_CAP && (c->state == ST_HEAD ||
	    c->state == ST_ECHO || c->state == ST_DISCARD);
}

/* Do all that can be done without blocking; returns poll events. */
static short
service(struct conn *c, int64_t now)
{
	ssize_t n;
	int progress, r;
	short ev;

	do {
		progress = 0;
		if ((tls_events(c->t) & POLLOUT) &&
		    tls_flush(c->t, c->fd) < 0 && errno != EAGAIN)
			goto dead;
		if (c->outlen > c->outoff) {
			n = tls_send(c->t, c->fd, c->out + c->outoff,
			    c->outlen - c->outoff);
			if (n > 0) {
				c->outoff += (size_t)n;
				progress = 1;
			} else if (errno != EAGAIN)
				goto dead;
		}
		if ((r = produce(c)) < 0)
			goto dead;
		progress |= r;
		if (wants_input(c)) {
			n = tls_recv(c->t, c->fd, c->in + c->inlen,
			    IN_CAP - c->inlen);
			if (n > 0) {
				c->inlen += (size_t)n;
				c->rx += (uint64_t)n;
				progress = 1;
			} else if (n == 0 || errno != EAGAIN)
				goto dead;
		}
		if (progress)
			c->deadline = now + IDLE_MS;
	} while (progress);
	if (c->state == ST_CLOSING && c->outlen == c->outoff &&
	    !(tls_events(c->t) & POLLOUT)) {
		conn_close(c);
		return 0;
	}
	ev = tls_events(c->t);
	if (wants_input(c))
		ev |= POLLIN;
	if (c->outlen > c->outoff)
		ev |= POLLOUT;
	return ev;
dead:
	if (verbose && c->t != NULL && !tls_ready(c->t))
		logmsg(0, "handshake failed: %s", tls_error(c->t));
	conn_close(c);
	return 0;
}

static int
listen_on(const char *addr)
{
	struct sockaddr_storage ss;
	socklen_t len;
	int fd, one = 1;

	if (conf_addr(addr, &ss, &len, 1) < 0) {
		logmsg(0, "bad address %s", addr);
		return -1;
	}
	if ((fd = socket(ss.ss_family, SOCK_STREAM, 0)) < 0 ||
	    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) < 0 ||
	    bind(fd, (struct sockaddr *)&ss, len) < 0 || listen(fd, 128) < 0 ||
	    nonblock(fd) < 0) {
		logmsg(0, "listen %s: %s", addr, strerror(errno));
		return -1;
	}
	return fd;
}

static void
accept_one(int lfd, struct conn *conns, int n, int64_t now)
{
	struct conn *c = NULL;
	int fd, i, one = 1;

	for (i = 0; i < n; i++)
		if (conns[i].fd < 0) {
			c = &conns[i];
			break;
		}
	if (c == NULL || (fd = accept(lfd, NULL, NULL)) < 0)
		return;
	if (nonblock(fd) < 0 || (c->t = tls_server()) == NULL) {
		close(fd);
		return;
	}
	setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	c->fd = fd;
	c->state = ST_HEAD;
	c->inlen = c->outoff = c->outlen = 0;
	c->rx = 0;
	c->left = 0;
	c->deadline = now + IDLE_MS;
}

static int
serve(const struct config *cf, const char *file)
{
	struct pollfd *pfd;
	struct conn *conns;
	short *ev;
	int n = (int)cf->tls.connections, nl = cf->tls.nlisten, i, k;
	int *lfd, timeout;
	int64_t now;

	conns = calloc((size_t)n, sizeof(*conns));
	pfd = calloc((size_t)(n + nl), sizeof(*pfd));
	ev = calloc((size_t)n, sizeof(*ev));
	lfd = calloc((size_t)nl, sizeof(*lfd));
	if (conns == NULL || pfd == NULL || ev == NULL || lfd == NULL)
		return 1;
	for (i = 0; i < nl; i++)
		if ((lfd[i] = listen_on(cf->tls.listen[i])) < 0)
			return 1;
	for (i = 0; i < n; i++)
		conns[i].fd = -1;
	fprintf(stderr, "tlsecho: ready, %d engines of %zu bytes\n", n,
	    tls_engine_size());
	while (!stop) {
		if (reload) {
			reload = 0;
			do_reload(file);
		}
		now = now_ms();
		timeout = IDLE_MS;
		for (i = 0; i < nl; i++) {
			pfd[i].fd = lfd[i];
			/* no free engine: stop accepting, as the proxy will */
			pfd[i].events = tls_server_free() > 0 ? POLLIN : 0;
			pfd[i].revents = 0;
		}
		for (i = 0; i < n; i++) {
			pfd[nl + i].fd = conns[i].fd;
			pfd[nl + i].events = conns[i].fd >= 0 ? ev[i] : 0;
			pfd[nl + i].revents = 0;
			if (conns[i].fd >= 0 &&
			    conns[i].deadline - now < timeout)
				timeout = (int)(conns[i].deadline - now);
		}
		if (poll(pfd, (nfds_t)(n + nl), timeout < 0 ? 0 : timeout) <
		    0 && errno != EINTR)
			return 1;
		now = now_ms();
		for (i = 0; i < nl; i++)
			if (pfd[i].revents & POLLIN)
				for (k = 0; k < 16; k++)
					accept_one(lfd[i], conns, n, now);
		for (i = 0; i < n; i++) {
			if (conns[i].fd < 0)
				continue;
			if (now >= conns[i].deadline) {
				conn_close(&conns[i]);
				continue;
			}
			ev[i] = service(&conns[i], now);
		}
	}
	for (i = 0; i < n; i++)
		conn_close(&conns[i]);
	for (i = 0; i < nl; i++)
		close(lfd[i]);
	free(conns);
	free(pfd);
	free(ev);
	free(lfd);
	return 0;
}

/* ------------------------------------------------------------ client */

static int
client(const char *hostport, const char *ca, const char *name,
    const char *path)
{
	struct config cf;
	struct backend b;
	struct server s;
	struct pollfd pfd;
	struct tls *t;
	char err[512], req[1200], buf[16384], *colon;
	size_t reqlen, sent = 0;
	ssize_t n;
	int fd, soerr = ETIMEDOUT;
	socklen_t sl = sizeof(soerr);
	int64_t deadline = now_ms() + 10000;

	memset(&cf, 0, sizeof(cf));
	memset(&b, 0, sizeof(b));
	memset(&s, 0, sizeof(s));
	cf.file = "tlsecho";
	cf.backends = &b;
	cf.nbackends = 1;
	b.name = "upstream";
	b.ca = (char *)ca;
	b.srv = &s;
	b.nsrv = 1;
	s.b = &b;
	s.tls = 1;
	s.name = (char *)hostport;
	if (conf_addr(hostport, &s.sa, &s.salen, 0) < 0 ||
	    (colon = strrchr(hostport, ':')) == NULL) {
		logmsg(0, "bad address %s", hostport);
		return 2;
	}
	if (name == NULL) {
		snprintf(buf, sizeof(buf), "%.*s", (int)(colon - hostport),
		    hostport);
		name = buf;
	}
	if ((s.host = strdup(name)) == NULL)
		return 2;
	if (tls_init(&cf, 0, 1, err, sizeof(err)) < 0) {
		logmsg(0, "%s", err);
		return 2;
	}
	reqlen = (size_t)snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\n"
	    "Host: %s\r\n\r\n", path, s.host);
	if ((t = tls_client(&s)) == NULL) {
		logmsg(0, "tls_client: %s", strerror(errno));
		return 2;
	}
	if ((fd = socket(s.sa.ss_family, SOCK_STREAM, 0)) < 0 ||
	    nonblock(fd) < 0 ||
	    (connect(fd, (struct sockaddr *)&s.sa, s.salen) < 0 &&
	    errno != EINPROGRESS)) {
		logmsg(0, "connect %s: %s", hostport, strerror(errno));
		return 2;
	}
	pfd.fd = fd;
	pfd.events = POLLOUT;
	if (poll(&pfd, 1, 5000) != 1 ||
	    getsockopt(fd, SOL_SOCKET, SO_ERROR, &soerr, &sl) < 0 ||
	    soerr != 0) {
		logmsg(0, "connect %s: %s", hostport, strerror(soerr));
		return 2;
	}
	for (;;) {
		if (sent < reqlen) {
			if ((n = tls_send(t, fd, req + sent, reqlen - sent)) >
			    0) {
				sent += (size_t)n;
				continue;
			}
			if (errno != EAGAIN)
				break;
		} else {
			if ((n = tls_recv(t, fd, buf, sizeof(buf))) > 0) {
				fwrite(buf, 1, (size_t)n, stdout);
				continue;
			}
			if (n == 0) {
				fflush(stdout);
				tls_release(t);
				tls_free();
				free(s.host);
				close(fd);
				return 0;
			}
			if (errno != EAGAIN)
				break;
		}
		pfd.events = tls_events(t) | (sent == reqlen ? POLLIN : 0);
		if (now_ms() > deadline || poll(&pfd, 1, 1000) < 0) {
			errno = ETIMEDOUT;
			break;
		}
	}
	logmsg(0, "TLS to %s failed: %s (%s)", hostport, tls_error(t),
	    strerror(errno));
	tls_release(t);
	tls_free();
	free(s.host);
	close(fd);
	return 1;
}

/* -------------------------------------------------------------- main */

static void
usage(void)
{
	fprintf(stderr, "usage: tlsecho -c FILE [-t] [-v]\n"
	    "       tlsecho -u HOST:PORT -a CA [-n NAME] [-p PATH]\n");
	exit(2);
}

int
main(int argc, char **argv)
{
	struct config cf;
	char err[512];
	const char *file = NULL, *up = NULL, *ca = NULL, *name = NULL;
	const char *path = "/";
	struct sigaction sa;
	int ch, check = 0, rc;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	signal(SIGPIPE, SIG_IGN);
	while ((ch = getopt(argc, argv, "a:c:n:p:tu:v")) != -1) {
		switch (ch) {
		case 'a':
			ca = optarg;
			break;
		case 'c':
			file = optarg;
			break;
		case 'n':
			name = optarg;
			break;
		case 'p':
			path = optarg;
			break;
		case 't':
			check = 1;
			break;
		case 'u':
			up = optarg;
			break;
		case 'v':
			verbose = 1;
			break;
		default:
			usage();
		}
	}
	if (up != NULL) {
		if (ca == NULL)
			usage();
		return client(up, ca, name, path);
	}
	if (file == NULL)
		usage();
	if (conf_load(file, &cf, err, sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		conf_free(&cf);
		return 1;
	}
	if (tls_init(&cf, check ? 0 : (int)cf.tls.connections, 0, err,
	    sizeof(err)) < 0) {
		fprintf(stderr, "%s\n", err);
		conf_free(&cf);
		return 1;
	}
	if (check) {
		printf("%s: TLS ok, %d engines of %zu bytes\n", file,
		    (int)cf.tls.connections, tls_engine_size());
		tls_free();
		conf_free(&cf);
		return 0;
	}
	if (cf.tls.nlisten == 0) {
		fprintf(stderr, "%s: no [tls] listen\n", file);
		return 1;
	}
	rc = serve(&cf, file);
	tls_free();
	conf_free(&cf);
	return rc;
}
