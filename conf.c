/*
 * conf.c - loading proxy.ini, and the small value parsers (durations,
 * sizes, addresses, CIDR lists) that the rest of the proxy shares.
 *
 * Startup and reload only: allocating and blocking in getaddrinfo are
 * fine here and nowhere else (DESIGN.md, Memory and The loop).
 *
 * inih splits lines into sections and key = value pairs. Debian builds it
 * without INI_HANDLER_LINENO and without a callback for section lines, so
 * the line reader below counts lines and classifies each one the way
 * inih will (section, pair, continuation, comment): it tracks sections
 * itself, rejects what inih would only flag as a bare line number, and
 * stops the parse at the first error by returning end-of-file.
 */
#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <netdb.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <arpa/inet.h>

#include <ini.h>

#include "proxy.h"

enum sect { S_NONE, S_PROXY, S_BACKEND, S_ROUTE, S_TLS, S_CERT, S_CACHE };

/* [proxy] keys, in the order of the bits in loader.seen. */
enum {
	P_LISTEN, P_USER, P_CHROOT, P_PIDFILE, P_LOG, P_MAXCONN, P_BUFFERS,
	P_BUFSIZE, P_MAXBODY, P_HDRTO, P_IDLETO, P_BACKTO, P_TRUSTED, P_HIDE,
	P_STATUS, P_STATUS_ALLOW, P_ALLOW, P_DENY, P_MAXPERIP, P_RATE,
	P_BURST, P_ACCESS, P_PROXYPROTO, P_REUSEPORT
};
static const char *const proxy_keys[] = {
	"listen", "user", "chroot", "pidfile", "log", "max_connections",
	"buffers", "buffer_size", "max_body", "header_timeout",
	"idle_timeout", "backend_timeout", "trusted", "hide_headers",
	"status", "status_allow", "allow", "deny", "max_conns_per_ip",
	"rate", "rate_burst", "access_log", "proxy_protocol", "reuseport",
	NULL
};

/* Keys that may repeat, their values adding up. */
#define P_LISTS	(1u << P_LISTEN | 1u << P_TRUSTED | 1u << P_HIDE | \
	1u << P_STATUS_ALLOW | 1u << P_ALLOW | 1u << P_DENY)

enum { R_HOST, R_PATH, R_BACKEND, R_STRIP, R_ALLOW, R_DENY, R_AUTH,
	R_AUTHFWD, R_CACHE };
static const char *const route_keys[] = { "host", "path", "backend",
	"strip_prefix", "allow", "deny", "auth", "auth_forward", "cache",
	NULL };

enum { B_SERVER, B_HEALTH, B_INTERVAL, B_FAILTO, B_CA };
static const char *const backend_keys[] = { "server", "health_check",
	"health_interval", "fail_timeout", "ca", NULL };

/* [tls] keys, in the order of the bits in loader.tseen. */
enum {
	T_LISTEN, T_CERT, T_KEY, T_SESSIONS, T_CONNS, T_REDIRECT, T_HSTS,
	T_CIPHERS
};
static const char *const tls_keys[] = {
	"listen", "cert", "key", "sessions", "connections", "redirect_http",
	"hsts", "ciphers", NULL
};

/* [cert NAME] keys. */
enum { C_HOSTS, C_CERT, C_KEY };
static const char *const cert_keys[] = { "hosts", "cert", "key", NULL };

/* [cache] keys, in the order of the bits in loader.kseen. */
enum { K_SIZE, K_MAXOBJ };
static const char *const cache_keys[] = { "size", "max_object", NULL };

/*
 * Keys and sections of DESIGN.md whose features this build lacks: saying
 * so beats "unknown key" for a user who copied a newer example.
 */
static const char *const proxy_later[] = {
	NULL
};
static const char *const backend_later[] = { NULL };
static const char *const none_later[] = { NULL };
static const char *const route_later[] = { NULL };
static const char *const sect_later[] = { NULL };

struct loader {
	struct config *c;
	FILE *f;
	const char *file;
	char *err;
	size_t errlen;
	int failed;		/* an error is in err: keep it, stop */
	int line;		/* number of the line inih is looking at */
	int cont;		/* that line continues the previous value */
	int have_key;		/* a pair since the last section (inih's
				   prev_name): indented lines continue it */
	enum sect sect;
	char sname[8];		/* "[backend web]" for messages: the type */
	int proxy_seen;		/* a [proxy] section was opened */
	unsigned seen;		/* [proxy] keys given, 1 << P_* */
	unsigned rseen;		/* keys given in the current route */
	unsigned bseen;		/* keys given in the current backend */
	int tls_line;		/* line of [tls], 0: none yet */
	unsigned tseen;		/* [tls] keys given, 1 << T_* */
	unsigned cseen;		/* keys given in the current [cert] */
	int *bline;		/* per route: line of its backend key */
	int cache_line;		/* line of [cache], 0: none */
	unsigned kseen;		/* [cache] keys given, 1 << K_* */
	int maxobj_line;	/* line of [cache] max_object */
	int cache_route_line;	/* first route with cache = yes */
};

/* ------------------------------------------------------------ errors */

/* Messages quote the file's text; keep terminal controls out of them. */
static void
sanitize(char *s)
{
	for (; *s != '\0'; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			*s = '?';
}

static void
vreport(struct loader *l, int line, const char *fmt, va_list ap)
{
	int n;

	if (l->failed)
		return;
	l->failed = 1;
	if (l->errlen == 0)
		return;
	if (line > 0)
		n = snprintf(l->err, l->errlen, "%s:%d: ", l->file, line);
	else
		n = snprintf(l->err, l->errlen, "%s: ", l->file);
	if (n >= 0 && (size_t)n < l->errlen)
		vsnprintf(l->err + n, l->errlen - n, fmt, ap);
	sanitize(l->err);
}

/* Record the first error at a line (0: the whole file); returns 0. */
static int
fail_at(struct loader *l, int line, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int
fail_at(struct loader *l, int line, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(l, line, fmt, ap);
	va_end(ap);
	return 0;
}

/* The usual case: an error on the line being parsed. */
static int
fail(struct loader *l, const char *fmt, ...)
	__attribute__((format(printf, 2, 3)));
static int
fail(struct loader *l, const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	vreport(l, l->line, fmt, ap);
	va_end(ap);
	return 0;
}

static char *
dup(struct loader *l, const char *s)
{
	char *p;

	if ((p = strdup(s)) == NULL)
		fail(l, "out of memory");
	return p;
}

/* Grow *arr (n elements of size sz) by one zeroed element. */
static void *
grow(struct loader *l, void *arr, int n, size_t sz)
{
	char *p;

	if ((p = realloc(arr, (size_t)(n + 1) * sz)) == NULL) {
		fail(l, "out of memory");
		return NULL;
	}
	memset(p + (size_t)n * sz, 0, sz);
	return p;
}

static int
lookup(const char *const *names, const char *name)
{
	int i;

	for (i = 0; names[i] != NULL; i++)
		if (strcasecmp(names[i], name) == 0)
			return i;
	return -1;
}

static int
unknown_key(struct loader *l, const char *name, const char *const *later)
{
	struct config *c = l->c;

	if (lookup(later, name) >= 0)
		return fail(l, "'%s' is not supported by this build", name);
	if (l->sect == S_PROXY)
		return fail(l, "unknown key '%s' in [proxy]", name);
	if (l->sect == S_TLS)
		return fail(l, "unknown key '%s' in [tls]", name);
	if (l->sect == S_CACHE)
		return fail(l, "unknown key '%s' in [cache]", name);
	return fail(l, "unknown key '%s' in [%s %s]", name, l->sname,
	    l->sect == S_BACKEND ? c->backends[c->nbackends - 1].name :
	    l->sect == S_CERT ? c->tls.certs[c->tls.ncerts - 1].name :
	    c->routes[c->nroutes - 1].name);
}

/* ------------------------------------------------------ value parsers */

static int
is_space(int ch)
{
	return ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r' ||
	    ch == '\v' || ch == '\f';
}

static int
is_digit(int ch)
{
	return ch >= '0' && ch <= '9';
}

/* A plain decimal: digits only, no sign, no suffix; -1 on junk/overflow. */
static long
parse_long(const char *s)
{
	long v = 0;

	if (!is_digit(*s))
		return -1;
	for (; is_digit(*s); s++) {
		if (v > (LONG_MAX - (*s - '0')) / 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	return *s == '\0' ? v : -1;
}

long
conf_duration_ms(const char *s)
{
	long v = 0, mul;

	if (!is_digit(*s))
		return -1;
	for (; is_digit(*s); s++) {
		if (v > (LONG_MAX - (*s - '0')) / 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	if (*s == '\0' || strcasecmp(s, "s") == 0)
		mul = 1000;
	else if (strcasecmp(s, "ms") == 0)
		mul = 1;
	else
		return -1;
	if (v > LONG_MAX / mul)
		return -1;
	return v * mul;
}

int64_t
conf_size(const char *s)
{
	int64_t v = 0;
	int shift = 0;

	if (!is_digit(*s))
		return -1;
	for (; is_digit(*s); s++) {
		if (v > (INT64_MAX - (*s - '0')) / 10)
			return -1;
		v = v * 10 + (*s - '0');
	}
	switch (*s) {
	case 'k': case 'K':
		shift = 10;
		s++;
		break;
	case 'm': case 'M':
		shift = 20;
		s++;
		break;
	case 'g': case 'G':
		shift = 30;
		s++;
		break;
	}
	if (*s != '\0' || v > (INT64_MAX >> shift))
		return -1;
	return v << shift;
}

/*
 * conf_addr with the reason for a failure: *gai is the getaddrinfo error
 * when the syntax was fine but the name did not resolve, else 0.
 */
static int
parse_addr(const char *s, struct sockaddr_storage *sa, socklen_t *len,
    int passive, int *gai)
{
	char host[256];
	const char *h = NULL, *port, *e;
	size_t hn = 0;
	struct addrinfo hints, *res;
	long pn;
	int rc;

	*gai = 0;
	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	if (s[0] == '[') {
		/* Brackets hold an IPv6 literal (RFC 3986 3.2.2), no name. */
		if ((e = strchr(s, ']')) == NULL || e[1] != ':')
			return -1;
		h = s + 1;
		hn = (size_t)(e - h);
		port = e + 2;
		hints.ai_family = AF_INET6;
		hints.ai_flags |= AI_NUMERICHOST;
	} else if ((e = strrchr(s, ':')) != NULL) {
		h = s;
		hn = (size_t)(e - s);
		port = e + 1;
		/* A bare IPv6 literal: which colon starts the port? */
		if (memchr(h, ':', hn) != NULL)
			return -1;
		if (hn == 1 && h[0] == '*')
			h = NULL;
	} else
		port = s;
	if (h != NULL) {
		if (hn == 0 || hn >= sizeof(host))
			return -1;
		memcpy(host, h, hn);
		host[hn] = '\0';
		for (e = host; *e != '\0'; e++)
			if ((unsigned char)*e <= ' ' || *e == 0x7f ||
			    *e == '/' || *e == '[' || *e == ']')
				return -1;
	}
	if (strlen(port) > 5 || (pn = parse_long(port)) < 1 || pn > 65535)
		return -1;

	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags |= AI_NUMERICSERV | (passive ? AI_PASSIVE : 0);
	if ((rc = getaddrinfo(h != NULL ? host : NULL, port, &hints,
	    &res)) != 0) {
		/* A literal that does not parse is bad syntax, not DNS. */
		if (!(hints.ai_flags & AI_NUMERICHOST))
			*gai = rc;
		return -1;
	}
	if (res == NULL || res->ai_addrlen > sizeof(*sa)) {
		if (res != NULL)
			freeaddrinfo(res);
		*gai = EAI_FAIL;
		return -1;
	}
	memset(sa, 0, sizeof(*sa));
	memcpy(sa, res->ai_addr, res->ai_addrlen);
	*len = res->ai_addrlen;
	freeaddrinfo(res);
	return 0;
}

int
conf_addr(const char *s, struct sockaddr_storage *sa, socklen_t *len,
    int passive)
{
	int gai;

	return parse_addr(s, sa, len, passive, &gai);
}

static const uint8_t v4mapped[12] = {
	0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff
};

int
conf_cidr(const char *s, struct cidr *out)
{
	char buf[INET6_ADDRSTRLEN + 1];
	const char *slash = strchr(s, '/');
	size_t n = slash != NULL ? (size_t)(slash - s) : strlen(s);
	long bits;
	int max, i, keep;

	memset(out, 0, sizeof(*out));
	if (n == 0 || n >= sizeof(buf))
		return -1;
	memcpy(buf, s, n);
	buf[n] = '\0';
	if (inet_pton(AF_INET, buf, out->addr) == 1) {
		out->family = AF_INET;
		max = 32;
	} else if (inet_pton(AF_INET6, buf, out->addr) == 1) {
		out->family = AF_INET6;
		max = 128;
	} else
		return -1;
	bits = max;
	if (slash != NULL) {
		if (strlen(slash + 1) > 3 ||
		    (bits = parse_long(slash + 1)) < 0 || bits > max)
			return -1;
	}
	/*
	 * ::ffff:10.0.0.0/104 is 10.0.0.0/8: clients are matched as IPv4
	 * whichever way their socket reports them, so store it that way.
	 */
	if (out->family == AF_INET6 && bits >= 96 &&
	    memcmp(out->addr, v4mapped, sizeof(v4mapped)) == 0) {
		memmove(out->addr, out->addr + 12, 4);
		memset(out->addr + 4, 0, 12);
		out->family = AF_INET;
		bits -= 96;
	}
	out->bits = (uint8_t)bits;
	/* Host bits off, so matching is a plain prefix compare. */
	for (i = 0; i < 16; i++) {
		keep = (int)bits - 8 * i;
		if (keep <= 0)
			out->addr[i] = 0;
		else if (keep < 8)
			out->addr[i] &= (uint8_t)(0xff << (8 - keep));
	}
	return 0;
}

static int
prefix_eq(const uint8_t *a, const uint8_t *b, int bits)
{
	int full = bits / 8, rest = bits % 8;
	uint8_t mask;

	if (memcmp(a, b, (size_t)full) != 0)
		return 0;
	if (rest == 0)
		return 1;
	mask = (uint8_t)(0xff << (8 - rest));
	return (a[full] & mask) == (b[full] & mask);
}

int
cidr_match(const struct cidr *list, int n, const struct sockaddr *sa)
{
	const uint8_t *a4 = NULL, *a6 = NULL;
	int i;

	if (sa->sa_family == AF_INET)
		a4 = (const uint8_t *)
		    &((const struct sockaddr_in *)(const void *)sa)->sin_addr;
	else if (sa->sa_family == AF_INET6) {
		a6 = ((const struct sockaddr_in6 *)(const void *)sa)
		    ->sin6_addr.s6_addr;
		/* A dual-stack socket reports IPv4 clients as ::ffff:a.b.c.d */
		if (memcmp(a6, v4mapped, sizeof(v4mapped)) == 0)
			a4 = a6 + 12;
	} else
		return 0;
	for (i = 0; i < n; i++) {
		if (list[i].family == AF_INET && a4 != NULL &&
		    prefix_eq(list[i].addr, a4, list[i].bits))
			return 1;
		if (list[i].family == AF_INET6 && a6 != NULL &&
		    prefix_eq(list[i].addr, a6, list[i].bits))
			return 1;
	}
	return 0;
}

/* ------------------------------------------------------------ [proxy] */

static int
set_str(struct loader *l, char **dst, const char *name, const char *v,
    int off_ok)
{
	if (*v == '\0')
		return fail(l, "%s: empty value", name);
	free(*dst);
	*dst = NULL;
	if (off_ok && strcmp(v, "off") == 0)
		return 1;
	return (*dst = dup(l, v)) != NULL;
}

static int
set_num(struct loader *l, long *dst, const char *name, const char *v,
    long min, long max)
{
	long n;

	if ((n = parse_long(v)) < 0)
		return fail(l, "%s: bad number '%s'", name, v);
	if (n < min || n > max)
		return fail(l, "%s: %ld is out of range %ld..%ld", name, n,
		    min, max);
	*dst = n;
	return 1;
}

/* Timeouts end up in poll's int milliseconds: keep them in range. */
static int
set_dur(struct loader *l, long *dst, const char *name, const char *v)
{
	long ms;

	if ((ms = conf_duration_ms(v)) < 0)
		return fail(l, "%s: bad duration '%s'", name, v);
	if (ms == 0 || ms > INT_MAX)
		return fail(l, "%s: '%s' is out of range 1ms..%ds", name, v,
		    INT_MAX / 1000);
	*dst = ms;
	return 1;
}

/* Append a listen address to a list ([proxy] or [tls] listen). */
static int
add_addr(struct loader *l, const char *name, const char *v, char ***list,
    int *n)
{
	struct sockaddr_storage ss;
	socklen_t len;
	char **p;
	int gai;

	if (parse_addr(v, &ss, &len, 1, &gai) < 0) {
		if (gai != 0)
			return fail(l, "%s: cannot resolve '%s': %s", name, v,
			    gai_strerror(gai));
		return fail(l, "%s: bad address '%s'", name, v);
	}
	if ((p = grow(l, *list, *n, sizeof(*p))) == NULL)
		return 0;
	*list = p;
	(*n)++;
	return (p[*n - 1] = dup(l, v)) != NULL;
}

static int
add_listen(struct loader *l, const char *name, const char *v)
{
	return add_addr(l, name, v, &l->c->listen, &l->c->nlisten);
}

/* A value holding several words: split on whitespace, in place. */
static char *
next_word(char **s)
{
	char *w = *s;

	while (is_space(*w))
		w++;
	if (*w == '\0')
		return NULL;
	*s = w;
	while (**s != '\0' && !is_space(**s))
		(*s)++;
	if (**s != '\0')
		*(*s)++ = '\0';
	return w;
}

/* Append space-separated CIDRs to a list (trusted, status_allow). */
static int
add_cidrs(struct loader *l, const char *name, const char *v,
    struct cidr **list, int *n)
{
	struct cidr *p;
	char *copy, *rest, *w;
	int ok = 1;

	/* An empty value or "off" allows nobody: the default is replaced. */
	if (strcmp(v, "off") == 0)
		return 1;
	if ((copy = rest = dup(l, v)) == NULL)
		return 0;
	while (ok && (w = next_word(&rest)) != NULL) {
		if ((p = grow(l, *list, *n, sizeof(*p))) == NULL) {
			ok = 0;
			break;
		}
		*list = p;
		if (conf_cidr(w, &p[*n]) < 0)
			ok = fail(l, "%s: bad CIDR '%s'", name, w);
		else
			(*n)++;
	}
	free(copy);
	return ok;
}

static int
add_trusted(struct loader *l, const char *name, const char *v)
{
	return add_cidrs(l, name, v, &l->c->trusted, &l->c->ntrusted);
}

static int
set_bool(struct loader *l, int *dst, const char *name, const char *v)
{
	if (strcasecmp(v, "yes") == 0 || strcasecmp(v, "on") == 0)
		*dst = 1;
	else if (strcasecmp(v, "no") == 0 || strcasecmp(v, "off") == 0)
		*dst = 0;
	else
		return fail(l, "%s: want yes or no, not '%s'", name, v);
	return 1;
}

/* A path the proxy serves itself or asks for: "/..." with no spaces. */
static int
set_url_path(struct loader *l, char **dst, const char *name, const char *v,
    int off_ok)
{
	const char *s;

	if (off_ok && strcmp(v, "off") == 0) {
		free(*dst);
		*dst = NULL;
		return 1;
	}
	if (v[0] != '/')
		return fail(l, "%s: '%s' must start with '/'", name, v);
	for (s = v; *s != '\0'; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f || *s == '#')
			return fail(l, "%s: bad character in '%s'", name, v);
	return set_str(l, dst, name, v, 0);
}

/*
 * RFC 9110 5.1: a field name is a token. Checking here keeps a typo from
 * silently hiding nothing.
 */
static int
is_token(const char *s)
{
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) &&
		    strchr("!#$%&'*+-.^_`|~", *s) == NULL)
			return 0;
	return 1;
}

static int
add_hide(struct loader *l, const char *name, const char *v)
{
	struct config *c = l->c;
	char *copy, *rest, *w, *p;
	size_t have;
	int ok = 1;

	if (strcmp(v, "off") == 0)
		return 1;
	if ((copy = rest = dup(l, v)) == NULL)
		return 0;
	while (ok && (w = next_word(&rest)) != NULL) {
		if (!is_token(w)) {
			ok = fail(l, "%s: bad header name '%s'", name, w);
			break;
		}
		have = c->hide_headers != NULL ? strlen(c->hide_headers) : 0;
		if ((p = realloc(c->hide_headers, have + strlen(w) + 2)) ==
		    NULL) {
			ok = fail(l, "out of memory");
			break;
		}
		c->hide_headers = p;
		if (have > 0)
			p[have++] = ' ';
		strcpy(p + have, w);
	}
	free(copy);
	return ok;
}

static int
proxy_key(struct loader *l, const char *name, const char *v)
{
	struct config *c = l->c;
	int64_t sz;
	int k;

	if ((k = lookup(proxy_keys, name)) < 0)
		return unknown_key(l, name, proxy_later);
	if (l->cont && !(P_LISTS & 1u << k))
		return fail(l, "%s: takes one value (indented line continues "
		    "it)", name);
	if (!l->cont && (k == P_HIDE || !(P_LISTS & 1u << k)) &&
	    (l->seen & 1u << k))
		return fail(l, "duplicate key '%s' in [proxy]", name);
	l->seen |= 1u << k;

	switch (k) {
	case P_LISTEN:
		return add_listen(l, name, v);
	case P_USER:
		return set_str(l, &c->user, name, v, 0);
	case P_CHROOT:
		return set_str(l, &c->chroot_dir, name, v, 1);
	case P_PIDFILE:
		return set_str(l, &c->pidfile, name, v, 1);
	case P_LOG:
		return set_str(l, &c->log, name, v, 0);
	case P_MAXCONN:
		return set_num(l, &c->max_connections, name, v, 1, 100000);
	case P_BUFFERS:
		return set_num(l, &c->buffers, name, v, 2, 1000000);
	case P_BUFSIZE:
		if ((sz = conf_size(v)) < 0)
			return fail(l, "%s: bad size '%s'", name, v);
		if (sz < 4096 || sz > 1048576)
			return fail(l, "%s: '%s' is out of range 4K..1M",
			    name, v);
		c->buffer_size = (long)sz;
		return 1;
	case P_MAXBODY:
		if ((sz = conf_size(v)) < 0)
			return fail(l, "%s: bad size '%s'", name, v);
		c->max_body = (uint64_t)sz;
		return 1;
	case P_HDRTO:
		return set_dur(l, &c->header_timeout_ms, name, v);
	case P_IDLETO:
		return set_dur(l, &c->idle_timeout_ms, name, v);
	case P_BACKTO:
		return set_dur(l, &c->backend_timeout_ms, name, v);
	case P_TRUSTED:
		return add_trusted(l, name, v);
	case P_HIDE:
		return add_hide(l, name, v);
	case P_STATUS:
		return set_url_path(l, &c->status, name, v, 1);
	case P_STATUS_ALLOW:
		return add_cidrs(l, name, v, &c->status_allow,
		    &c->nstatus_allow);
	case P_ALLOW:
		return add_cidrs(l, name, v, &c->allow, &c->nallow);
	case P_DENY:
		return add_cidrs(l, name, v, &c->deny, &c->ndeny);
	case P_MAXPERIP:
		return set_num(l, &c->max_conns_per_ip, name, v, 0, 100000);
	case P_RATE:
		return set_num(l, &c->rate, name, v, 0, 1000000);
	case P_BURST:
		return set_num(l, &c->rate_burst, name, v, 0, 1000000);
	case P_REUSEPORT:
		return set_bool(l, &c->reuseport, name, v);
	case P_PROXYPROTO:
		return set_bool(l, &c->proxy_protocol, name, v);
	case P_ACCESS:
		return set_str(l, &c->access_log, name, v, 1);
	}
	return 0;
}

/* ---------------------------------------------------------- [backend] */

static int
parse_weight(const char *w)
{
	long n;

	if (strncasecmp(w, "weight=", 7) != 0)
		return 0;
	if (strlen(w + 7) > 3 || (n = parse_long(w + 7)) < 1 || n > 100)
		return -1;
	return (int)n;
}

/*
 * The HOST of "HOST:PORT" or "[v6]:PORT": the name TLS sends as SNI and
 * checks in the server's certificate.
 */
static char *
server_host(struct loader *l, const char *addr)
{
	const char *h = addr, *e;
	char *p;

	if (addr[0] == '[') {
		h = addr + 1;
		e = strchr(h, ']');
	} else
		e = strrchr(addr, ':');
	if (e == NULL)
		e = h + strlen(h);
	if ((p = malloc((size_t)(e - h) + 1)) == NULL) {
		fail(l, "out of memory");
		return NULL;
	}
	memcpy(p, h, (size_t)(e - h));
	p[e - h] = '\0';
	return p;
}

static int
add_server(struct loader *l, struct backend *b, const char *v)
{
	struct server *s, *p;
	char *copy, *rest, *addr, *w;
	int weight = 0, tls = 0, n, gai = 0, ok = 0;

	if ((copy = rest = dup(l, v)) == NULL)
		return 0;
	if ((addr = next_word(&rest)) == NULL) {
		fail(l, "server: empty value");
		goto out;
	}
	while ((w = next_word(&rest)) != NULL) {
		if (strcasecmp(w, "tls") == 0) {
			if (tls) {
				fail(l, "server: tls given twice");
				goto out;
			}
			tls = 1;
			continue;
		}
		if ((n = parse_weight(w)) == 0) {
			fail(l, "server: unexpected '%s' after the address",
			    w);
			goto out;
		}
		if (n < 0) {
			fail(l, "server: bad weight '%s' (1..100)", w);
			goto out;
		}
		if (weight != 0) {
			fail(l, "server: weight given twice");
			goto out;
		}
		weight = n;
	}
	if ((p = grow(l, b->srv, b->nsrv, sizeof(*p))) == NULL)
		goto out;
	b->srv = p;
	s = &p[b->nsrv];
	/* Upstreams need a host: "PORT" or "*:PORT" only make sense to bind. */
	if (strchr(addr, ':') == NULL || addr[0] == ':' ||
	    strncmp(addr, "*:", 2) == 0 ||
	    parse_addr(addr, &s->sa, &s->salen, 0, &gai) < 0) {
		if (strchr(addr, ':') != NULL && gai != 0)
			fail(l, "server: cannot resolve '%s': %s", addr,
			    gai_strerror(gai));
		else
			fail(l, "server: bad address '%s' (want HOST:PORT)",
			    addr);
		memset(s, 0, sizeof(*s));
		goto out;
	}
	s->weight = weight != 0 ? weight : 1;
	s->tls = tls;
	b->nsrv++;
	ok = (s->name = dup(l, addr)) != NULL &&
	    (s->host = server_host(l, addr)) != NULL;
out:
	free(copy);
	return ok;
}

static int
backend_key(struct loader *l, const char *name, const char *v)
{
	struct backend *b = &l->c->backends[l->c->nbackends - 1];
	int k;

	if ((k = lookup(backend_keys, name)) < 0)
		return unknown_key(l, name, backend_later);
	if (k == B_SERVER)
		return add_server(l, b, v);
	if (l->cont)
		return fail(l, "%s: takes one value (indented line continues "
		    "it)", name);
	if (l->bseen & 1u << k)
		return fail(l, "duplicate key '%s' in [backend %s]", name,
		    b->name);
	l->bseen |= 1u << k;
	switch (k) {
	case B_HEALTH:
		return set_url_path(l, &b->health_check, name, v, 1);
	case B_INTERVAL:
		return set_dur(l, &b->health_interval_ms, name, v);
	case B_FAILTO:
		return set_dur(l, &b->fail_timeout_ms, name, v);
	case B_CA:
		return set_str(l, &b->ca, name, v, 0);
	}
	return 0;
}

/* ------------------------------------------------------------ [route] */

static int
set_host(struct loader *l, struct route *r, const char *v)
{
	const char *s = v;
	size_t n;
	char *p;

	if (s[0] == '*') {
		/* "*.example.org": one or more labels before the suffix */
		if (s[1] != '.' || s[2] == '\0' || s[2] == '.')
			return fail(l, "host: bad wildcard '%s' (want "
			    "*.suffix)", v);
		s += 2;
	}
	if (*s == '\0')
		return fail(l, "host: empty value");
	for (; *s != '\0'; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f || *s == '*' ||
		    *s == '/' || (*s == ':' && v[0] != '['))
			return fail(l, "host: bad host name '%s'", v);
	if ((r->host = dup(l, v)) == NULL)
		return 0;
	/* Host names compare without case; "example.org." is the same. */
	for (p = r->host; *p != '\0'; p++)
		*p = (char)tolower((unsigned char)*p);
	n = strlen(r->host);
	if (n > 1 && r->host[n - 1] == '.')
		r->host[n - 1] = '\0';
	return 1;
}

static int
set_path(struct loader *l, struct route *r, const char *v)
{
	const char *s;
	size_t n;

	if (v[0] != '/')
		return fail(l, "path: '%s' must start with '/'", v);
	for (s = v; *s != '\0'; s++)
		if ((unsigned char)*s <= ' ' || *s == 0x7f || *s == '?' ||
		    *s == '#')
			return fail(l, "path: bad character in '%s'", v);
	/*
	 * Requests are matched after dot segments are removed, so a prefix
	 * holding one could never match.
	 */
	n = strlen(v);
	if (strstr(v, "/./") != NULL || strstr(v, "/../") != NULL ||
	    (n >= 2 && strcmp(v + n - 2, "/.") == 0) ||
	    (n >= 3 && strcmp(v + n - 3, "/..") == 0))
		return fail(l, "path: '%s' has a dot segment", v);
	if ((r->path = dup(l, v)) == NULL)
		return 0;
	r->pathlen = strlen(v);
	return 1;
}

static int
route_key(struct loader *l, const char *name, const char *v)
{
	struct config *c = l->c;
	struct route *r = &c->routes[c->nroutes - 1];
	int k;

	if ((k = lookup(route_keys, name)) < 0)
		return unknown_key(l, name, route_later);
	if (k == R_ALLOW)
		return add_cidrs(l, name, v, &r->allow, &r->nallow);
	if (k == R_DENY)
		return add_cidrs(l, name, v, &r->deny, &r->ndeny);
	if (l->cont)
		return fail(l, "%s: takes one value (indented line continues "
		    "it)", name);
	if (l->rseen & 1u << k)
		return fail(l, "duplicate key '%s' in [route %s]", name,
		    r->name);
	l->rseen |= 1u << k;
	switch (k) {
	case R_HOST:
		return set_host(l, r, v);
	case R_PATH:
		return set_path(l, r, v);
	case R_BACKEND:
		if (*v == '\0')
			return fail(l, "backend: empty value");
		l->bline[c->nroutes - 1] = l->line;
		return (r->backend_name = dup(l, v)) != NULL;
	case R_STRIP:
		return set_bool(l, &r->strip_prefix, name, v);
	case R_CACHE:
		if (!set_bool(l, &r->cache, name, v))
			return 0;
		if (r->cache && l->cache_route_line == 0)
			l->cache_route_line = l->line;
		return 1;
	case R_AUTHFWD:
		return set_bool(l, &r->auth_forward, name, v);
	case R_AUTH: {
		char aerr[256];

		/* Read now, so -t and a reload report a bad file. */
		if ((r->auth = acl_auth_load(v, aerr, sizeof(aerr))) == NULL)
			return fail(l, "auth: %s", aerr);
		return 1;
	}
	}
	return 0;
}

/* ------------------------------------------------------ [tls] [cert] */

/*
 * certs[0] is [tls]'s own certificate, whichever of [tls] and [cert NAME]
 * comes first in the file: make room for it before any other.
 */
static int
tls_certs_start(struct loader *l)
{
	struct tls_conf *t = &l->c->tls;

	if (t->ncerts > 0)
		return 1;
	if ((t->certs = grow(l, t->certs, 0, sizeof(*t->certs))) == NULL)
		return 0;
	t->ncerts = 1;
	return (t->certs[0].name = dup(l, "tls")) != NULL;
}

/*
 * A name to match against SNI: "example.org" or "*.example.org" (one or
 * more labels before the suffix). SNI carries DNS names only (RFC 6066
 * 3), so addresses, ports and inner '*' are mistakes.
 */
static int
add_cert_host(struct loader *l, struct tls_cert *tc, const char *w)
{
	const char *s = w;
	char **p, *h;
	size_t n;

	if (s[0] == '*') {
		if (s[1] != '.' || s[2] == '\0' || s[2] == '.')
			return fail(l, "hosts: bad wildcard '%s' (want "
			    "*.suffix)", w);
		s += 2;
	}
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) && *s != '-' && *s != '.' &&
		    *s != '_')
			return fail(l, "hosts: bad host name '%s'", w);
	if ((p = grow(l, tc->hosts, tc->nhosts, sizeof(*p))) == NULL)
		return 0;
	tc->hosts = p;
	if ((h = dup(l, w)) == NULL)
		return 0;
	p[tc->nhosts++] = h;
	/* Compared without case; "example.org." is the same name. */
	for (; *h != '\0'; h++)
		*h = (char)tolower((unsigned char)*h);
	n = strlen(p[tc->nhosts - 1]);
	if (n > 1 && p[tc->nhosts - 1][n - 1] == '.')
		p[tc->nhosts - 1][n - 1] = '\0';
	return 1;
}

/* Apply fn to each space-separated word of v. */
static int
each_word(struct loader *l, const char *v, int (*fn)(struct loader *,
    const char *, void *), void *arg)
{
	char *copy, *rest, *w;
	int ok = 1;

	if ((copy = rest = dup(l, v)) == NULL)
		return 0;
	while (ok && (w = next_word(&rest)) != NULL)
		ok = fn(l, w, arg);
	free(copy);
	return ok;
}

static int
tls_listen_word(struct loader *l, const char *w, void *arg)
{
	struct tls_conf *t = &l->c->tls;

	return add_addr(l, "listen", w, &t->listen, &t->nlisten);
}

static int
cert_host_word(struct loader *l, const char *w, void *arg)
{
	return add_cert_host(l, arg, w);
}

static int
tls_key(struct loader *l, const char *name, const char *v)
{
	struct tls_conf *t = &l->c->tls;
	int k;

	if ((k = lookup(tls_keys, name)) < 0)
		return unknown_key(l, name, none_later);
	if (l->cont && k != T_LISTEN)
		return fail(l, "%s: takes one value (indented line continues "
		    "it)", name);
	if (!l->cont && k != T_LISTEN && (l->tseen & 1u << k))
		return fail(l, "duplicate key '%s' in [tls]", name);
	l->tseen |= 1u << k;

	switch (k) {
	case T_LISTEN:
		if (*v == '\0')
			return fail(l, "listen: bad address ''");
		return each_word(l, v, tls_listen_word, NULL);
	case T_CERT:
		return set_str(l, &t->certs[0].cert, name, v, 0);
	case T_KEY:
		return set_str(l, &t->certs[0].key, name, v, 0);
	case T_SESSIONS:
		return set_num(l, &t->sessions, name, v, 0, 100000);
	case T_CONNS:
		return set_num(l, &t->connections, name, v, 1, 100000);
	case T_REDIRECT:
		return set_bool(l, &t->redirect_http, name, v);
	case T_HSTS:
		return set_num(l, &t->hsts, name, v, 0, 1000000000);
	case T_CIPHERS:
		if (strcasecmp(v, "modern") == 0)
			t->compat = 0;
		else if (strcasecmp(v, "compat") == 0)
			t->compat = 1;
		else
			return fail(l, "ciphers: want modern or compat, not "
			    "'%s'", v);
		return 1;
	}
	return 0;
}

static int
cert_key(struct loader *l, const char *name, const char *v)
{
	struct tls_conf *t = &l->c->tls;
	struct tls_cert *tc = &t->certs[t->ncerts - 1];
	int k;

	if ((k = lookup(cert_keys, name)) < 0)
		return unknown_key(l, name, none_later);
	if (l->cont && k != C_HOSTS)
		return fail(l, "%s: takes one value (indented line continues "
		    "it)", name);
	if (!l->cont && (l->cseen & 1u << k))
		return fail(l, "duplicate key '%s' in [cert %s]", name,
		    tc->name);
	l->cseen |= 1u << k;

	switch (k) {
	case C_HOSTS:
		return each_word(l, v, cert_host_word, tc);
	case C_CERT:
		return set_str(l, &tc->cert, name, v, 0);
	case C_KEY:
		return set_str(l, &tc->key, name, v, 0);
	}
	return 0;
}

/* ------------------------------------------------------------ [cache] */

static int
cache_key(struct loader *l, const char *name, const char *v)
{
	struct config *c = l->c;
	int64_t sz;
	int k;

	if ((k = lookup(cache_keys, name)) < 0)
		return unknown_key(l, name, none_later);
	if (l->cont)
		return fail(l, "%s: takes one value (indented line continues "
		    "it)", name);
	if (l->kseen & 1u << k)
		return fail(l, "duplicate key '%s' in [cache]", name);
	l->kseen |= 1u << k;
	if ((sz = conf_size(v)) < 0)
		return fail(l, "%s: bad size '%s'", name, v);
	if (k == K_SIZE) {
		/* The arena is reserved at startup: keep it plausible. */
		if (sz != 0 && (sz < 64 * 1024 || sz > 1024 * 1024 * 1024))
			return fail(l, "size: '%s' is out of range 64K..1G "
			    "(0: off)", v);
		c->cache_size = (uint64_t)sz;
	} else {
		if (sz < 1024 || sz > 1024 * 1024 * 1024)
			return fail(l, "max_object: '%s' is out of range "
			    "1K..1G", v);
		c->cache_max_object = (uint64_t)sz;
		l->maxobj_line = l->line;
	}
	return 1;
}

static int
handler(void *user, const char *section, const char *name, const char *value)
{
	struct loader *l = user;

	if (l->failed)
		return 0;
	switch (l->sect) {
	case S_PROXY:
		return proxy_key(l, name, value);
	case S_BACKEND:
		return backend_key(l, name, value);
	case S_ROUTE:
		return route_key(l, name, value);
	case S_TLS:
		return tls_key(l, name, value);
	case S_CERT:
		return cert_key(l, name, value);
	case S_CACHE:
		return cache_key(l, name, value);
	case S_NONE:
		break;
	}
	return fail(l, "key '%s' outside any section", name);
}

/* ---------------------------------------------------------- sections */

static int
good_name(const char *s)
{
	if (*s == '\0')
		return 0;
	for (; *s != '\0'; s++)
		if (!isalnum((unsigned char)*s) && strchr("_-.", *s) == NULL)
			return 0;
	return 1;
}

static int
section_tls(struct loader *l, const char *name)
{
	if (*name != '\0')
		return fail(l, "[tls] takes no name");
	if (l->tls_line != 0)
		return fail(l, "duplicate section [tls]");
	if (!tls_certs_start(l))
		return 0;
	l->tls_line = l->line;
	l->c->tls.certs[0].line = l->line;
	l->sect = S_TLS;
	return 1;
}

static int
section_cert(struct loader *l, const char *name)
{
	struct tls_conf *t = &l->c->tls;
	struct tls_cert *tc;
	int i;

	snprintf(l->sname, sizeof(l->sname), "cert");
	if (*name == '\0')
		return fail(l, "[cert] needs a name: [cert NAME]");
	if (!good_name(name))
		return fail(l, "bad cert name '%s' (letters, digits, '_', "
		    "'-', '.')", name);
	/* certs[0] is "tls": messages and logs name [tls]'s own that way */
	if (strcmp(name, "tls") == 0)
		return fail(l, "cert name 'tls' is taken by [tls]");
	if (!tls_certs_start(l))
		return 0;
	for (i = 1; i < t->ncerts; i++)
		if (strcmp(t->certs[i].name, name) == 0)
			return fail(l, "duplicate cert '%s'", name);
	if ((tc = grow(l, t->certs, t->ncerts, sizeof(*tc))) == NULL)
		return 0;
	t->certs = tc;
	tc = &tc[t->ncerts++];
	tc->line = l->line;
	l->sect = S_CERT;
	l->cseen = 0;
	return (tc->name = dup(l, name)) != NULL;
}

static int
section_cache(struct loader *l, const char *name)
{
	if (*name != '\0')
		return fail(l, "[cache] takes no name");
	if (l->cache_line != 0)
		return fail(l, "duplicate section [cache]");
	l->cache_line = l->line;
	l->sect = S_CACHE;
	return 1;
}

/* A "[type name]" line: s is the text between the brackets. */
static int
section(struct loader *l, char *s)
{
	struct config *c = l->c;
	char *type, *name, *e;
	int i, is_route;

	while (is_space(*s))
		s++;
	for (e = s + strlen(s); e > s && is_space(e[-1]); e--)
		e[-1] = '\0';
	type = s;
	for (name = s; *name != '\0' && !is_space(*name); name++)
		;
	if (*name != '\0') {
		*name++ = '\0';
		while (is_space(*name))
			name++;
	}
	l->cont = 0;
	l->have_key = 0;

	if (strcasecmp(type, "proxy") == 0) {
		if (*name != '\0')
			return fail(l, "[proxy] takes no name");
		if (l->proxy_seen)
			return fail(l, "duplicate section [proxy]");
		l->proxy_seen = 1;
		l->sect = S_PROXY;
		return 1;
	}
	if (strcasecmp(type, "tls") == 0)
		return section_tls(l, name);
	if (strcasecmp(type, "cert") == 0)
		return section_cert(l, name);
	if (strcasecmp(type, "cache") == 0)
		return section_cache(l, name);
	if (strcasecmp(type, "backend") != 0 &&
	    strcasecmp(type, "route") != 0) {
		if (lookup(sect_later, type) >= 0)
			return fail(l, "[%s] is not supported by this build",
			    type);
		if (*name != '\0')
			return fail(l, "unknown section [%s %s]", type, name);
		return fail(l, "unknown section [%s]", type);
	}
	is_route = strcasecmp(type, "route") == 0;
	snprintf(l->sname, sizeof(l->sname), "%s",
	    is_route ? "route" : "backend");
	if (*name == '\0')
		return fail(l, "[%s] needs a name: [%s NAME]", l->sname,
		    l->sname);
	if (!good_name(name))
		return fail(l, "bad %s name '%s' (letters, digits, '_', '-', "
		    "'.')", l->sname, name);

	if (!is_route) {
		struct backend *b;

		for (i = 0; i < c->nbackends; i++)
			if (strcmp(c->backends[i].name, name) == 0)
				return fail(l, "duplicate backend '%s'", name);
		if ((b = grow(l, c->backends, c->nbackends, sizeof(*b))) ==
		    NULL)
			return 0;
		c->backends = b;
		b = &b[c->nbackends++];
		b->line = l->line;
		l->sect = S_BACKEND;
		l->bseen = 0;
		return (b->name = dup(l, name)) != NULL;
	} else {
		struct route *r;
		int *bl;

		for (i = 0; i < c->nroutes; i++)
			if (strcmp(c->routes[i].name, name) == 0)
				return fail(l, "duplicate route '%s'", name);
		if ((bl = grow(l, l->bline, c->nroutes, sizeof(*bl))) == NULL)
			return 0;
		l->bline = bl;
		if ((r = grow(l, c->routes, c->nroutes, sizeof(*r))) == NULL)
			return 0;
		c->routes = r;
		r = &r[c->nroutes++];
		r->line = l->line;
		r->backend = -1;
		l->sect = S_ROUTE;
		l->rseen = 0;
		return (r->name = dup(l, name)) != NULL;
	}
}

/*
 * inih's find_chars_or_comment: the first of chars, or of a ';' comment
 * that follows whitespace, or the end.
 */
static char *
scan_to(char *s, const char *chars)
{
	int was_space = 0;

	for (; *s != '\0'; s++) {
		if (strchr(chars, *s) != NULL || (was_space && *s == ';'))
			break;
		was_space = is_space(*s);
	}
	return s;
}

/*
 * Classify a line as inih will (ini.c, ini_parse_stream): comment,
 * continuation, section or pair. Sections are handled here, since inih
 * tells the handler nothing about a section without keys; lines inih
 * would reject without calling the handler are reported here, with the
 * line number and a message.
 */
static int
classify(struct loader *l, char *line)
{
	char *s = line, *e;

	l->cont = 0;
	if (l->line == 1 && strncmp(s, "\xef\xbb\xbf", 3) == 0)
		s += 3;
	while (is_space(*s))
		s++;
	if (*s == '\0' || *s == ';' || *s == '#')
		return 1;
	if (l->have_key && s > line) {
		l->cont = 1;
		return 1;
	}
	if (*s == '[') {
		e = scan_to(s + 1, "]");
		if (*e != ']')
			return fail(l, "bad section line: no ']'");
		*e++ = '\0';
		while (is_space(*e))
			e++;
		if (*e != '\0' && *e != ';')
			return fail(l, "text after the section name");
		return section(l, s + 1);
	}
	e = scan_to(s, "=:");
	if (*e != '=' && *e != ':')
		return fail(l, "expected 'key = value' or '[section]'");
	l->have_key = 1;
	return 1;
}

/*
 * fgets for inih that counts lines and refuses what inih would silently
 * cut: over-long lines (the rest would be read as a new line) and NUL
 * bytes. Returning NULL ends the parse, which is how the first error
 * stops it.
 */
static char *
reader(char *buf, int num, void *stream)
{
	struct loader *l = stream;
	char copy[512];
	int ch, i = 0;

	if (l->failed || num < 3)
		return NULL;
	while (i < num - 1 && (ch = getc(l->f)) != EOF) {
		if (ch == '\0') {
			fail_at(l, l->line + 1, "NUL byte in line");
			return NULL;
		}
		buf[i++] = (char)ch;
		if (ch == '\n')
			break;
	}
	if (i == 0)
		return NULL;
	buf[i] = '\0';
	l->line++;
	if (buf[i - 1] != '\n' && i == num - 1) {
		if ((ch = getc(l->f)) != EOF) {
			fail(l, "line too long (at most %d bytes)", num - 2);
			return NULL;
		}
	}
	/* classify() edits section lines: it gets a copy, inih the line */
	if ((size_t)i >= sizeof(copy)) {
		fail(l, "line too long (at most %d bytes)", (int)sizeof(copy));
		return NULL;
	}
	memcpy(copy, buf, (size_t)i + 1);
	if (!classify(l, copy))
		return NULL;
	return buf;
}

/* ------------------------------------------------------------- load */

/* Keep the message of the earliest problem found by tls_check. */
static void
early(int *best, char *msg, size_t len, int line, const char *fmt, ...)
	__attribute__((format(printf, 5, 6)));
static void
early(int *best, char *msg, size_t len, int line, const char *fmt, ...)
{
	va_list ap;

	if (line >= *best)
		return;
	*best = line;
	va_start(ap, fmt);
	vsnprintf(msg, len, fmt, ap);
	va_end(ap);
}

/*
 * What [tls], [cert NAME] and tls servers need from the rest of the
 * file. Returns the line of the earliest problem (INT_MAX: none) with its
 * message in msg. The files themselves are read by tls_init.
 */
static int
tls_check(struct loader *l, char *msg, size_t len)
{
	struct config *c = l->c;
	struct tls_conf *t = &c->tls;
	struct tls_cert *tc;
	struct backend *b;
	int i, j, best = INT_MAX;

	if (t->nlisten > 0 && t->certs[0].cert == NULL)
		early(&best, msg, len, l->tls_line, "[tls]: cert is required");
	if (t->nlisten > 0 && t->certs[0].key == NULL)
		early(&best, msg, len, l->tls_line, "[tls]: key is required");
	for (i = 1; i < t->ncerts; i++) {
		tc = &t->certs[i];
		if (l->tls_line == 0)
			early(&best, msg, len, tc->line, "[cert %s]: needs a "
			    "[tls] section", tc->name);
		if (tc->nhosts == 0)
			early(&best, msg, len, tc->line, "[cert %s]: hosts is "
			    "required", tc->name);
		if (tc->cert == NULL)
			early(&best, msg, len, tc->line, "[cert %s]: cert is "
			    "required", tc->name);
		if (tc->key == NULL)
			early(&best, msg, len, tc->line, "[cert %s]: key is "
			    "required", tc->name);
	}
	/* Unverified TLS would hand requests to whoever answers. */
	for (i = 0; i < c->nbackends; i++) {
		b = &c->backends[i];
		for (j = 0; j < b->nsrv && b->ca == NULL; j++)
			if (b->srv[j].tls) {
				early(&best, msg, len, b->line, "backend '%s': "
				    "server %s tls needs ca", b->name,
				    b->srv[j].name);
				break;
			}
	}
	return best;
}

/* "1M", "64K" or bytes, for messages. */
static void
size_text(uint64_t v, char *buf, size_t len)
{
	if (v > 0 && v % (1024 * 1024) == 0)
		snprintf(buf, len, "%lluM", (unsigned long long)(v >> 20));
	else if (v > 0 && v % 1024 == 0)
		snprintf(buf, len, "%lluK", (unsigned long long)(v >> 10));
	else
		snprintf(buf, len, "%llu", (unsigned long long)v);
}

/*
 * [cache] defaults (size 1M, max_object 64K when the section is there;
 * no section: size 0, the cache is off) and what its keys and the
 * routes' cache keys need from the whole file. Returns the line of the
 * earliest problem (INT_MAX: none) with its message in msg.
 */
static int
cache_check(struct loader *l, char *msg, size_t len)
{
	struct config *c = l->c;
	char a[32], b[32];
	int best = INT_MAX;

	if (l->cache_line != 0) {
		if (!(l->kseen & 1u << K_SIZE))
			c->cache_size = 1024 * 1024;
		if (!(l->kseen & 1u << K_MAXOBJ))
			c->cache_max_object = 64 * 1024;
		else if (c->cache_size > 0 &&
		    c->cache_max_object > c->cache_size) {
			size_text(c->cache_max_object, a, sizeof(a));
			size_text(c->cache_size, b, sizeof(b));
			early(&best, msg, len, l->maxobj_line, "max_object: "
			    "%s is larger than size (%s)", a, b);
		}
	}
	/* A route that asks for a cache nobody configured is a typo. */
	if (l->cache_route_line != 0 && l->cache_line == 0)
		early(&best, msg, len, l->cache_route_line,
		    "cache: yes needs a [cache] section");
	return best;
}

/* Checks that need the whole file; the earliest line is reported. */
static void
finish(struct loader *l)
{
	struct config *c = l->c;
	struct route *r;
	char tmsg[300], kmsg[300];
	int i, j, best = INT_MAX, bi = -1, kind = 0, tline, kline;

	for (i = 0; i < c->nbackends; i++)
		if (c->backends[i].nsrv == 0 && c->backends[i].line < best) {
			best = c->backends[i].line;
			bi = i;
			kind = 1;
		}
	for (i = 0; i < c->nroutes; i++) {
		r = &c->routes[i];
		if (r->backend_name == NULL) {
			if (r->line < best) {
				best = r->line;
				bi = i;
				kind = 2;
			}
			continue;
		}
		for (j = 0; j < c->nbackends; j++)
			if (strcmp(c->backends[j].name, r->backend_name) == 0)
				break;
		if (j < c->nbackends)
			r->backend = j;
		else if (l->bline[i] < best) {
			best = l->bline[i];
			bi = i;
			kind = 3;
		}
	}
	tline = tls_check(l, tmsg, sizeof(tmsg));
	if ((kline = cache_check(l, kmsg, sizeof(kmsg))) < tline) {
		tline = kline;
		memcpy(tmsg, kmsg, sizeof(tmsg));
	}
	if (tline < best) {
		fail_at(l, tline, "%s", tmsg);
		return;
	}
	if (kind == 1)
		fail_at(l, best, "backend '%s': no server",
		    c->backends[bi].name);
	else if (kind == 2)
		fail_at(l, best, "route '%s': no backend", c->routes[bi].name);
	else if (kind == 3)
		fail_at(l, best, "route '%s': backend '%s' is not defined",
		    c->routes[bi].name, c->routes[bi].backend_name);
	if (l->failed)
		return;

	/* Defaults for what never appeared (DESIGN.md, Config). */
	if (c->nlisten == 0)
		add_listen(l, "listen", "0.0.0.0:8080");
	if (!(l->seen & 1u << P_TRUSTED))
		add_trusted(l, "trusted", "127.0.0.1/32");
	if (!(l->seen & 1u << P_HIDE))
		add_hide(l, "hide_headers", "Server X-Powered-By");
	if (!(l->seen & 1u << P_STATUS))
		set_url_path(l, &c->status, "status", "/.proxy/status", 0);
	if (!(l->seen & 1u << P_STATUS_ALLOW))
		add_cidrs(l, "status_allow", "127.0.0.0/8 ::1/128",
		    &c->status_allow, &c->nstatus_allow);
	for (i = 0; i < c->nbackends; i++) {
		struct backend *b = &c->backends[i];

		if (b->health_interval_ms == 0)
			b->health_interval_ms = 5000;
		if (b->fail_timeout_ms == 0)
			b->fail_timeout_ms = 10000;
		for (j = 0; j < b->nsrv; j++) {
			b->srv[j].b = b;
			b->srv[j].hc.fd = -1;
			b->srv[j].last_check = -2;
		}
	}
	if (c->log == NULL)
		c->log = dup(l, "stderr");
}

int
conf_load(const char *path, struct config *c, char *err, size_t errlen)
{
	struct loader l;
	int rc;

	memset(c, 0, sizeof(*c));
	memset(&l, 0, sizeof(l));
	l.c = c;
	l.file = path;
	l.err = err;
	l.errlen = errlen;
	if (errlen > 0)
		err[0] = '\0';

	c->max_connections = 1024;
	c->buffers = 128;
	c->buffer_size = 16 * 1024;
	c->max_body = 1024 * 1024;
	c->header_timeout_ms = 10 * 1000;
	c->idle_timeout_ms = 60 * 1000;
	c->backend_timeout_ms = 30 * 1000;
	c->tls.sessions = 128;
	c->tls.connections = 64;
	if ((c->file = strdup(path)) == NULL) {
		fail_at(&l, 0, "out of memory");
		return -1;
	}

	if ((l.f = fopen(path, "r")) == NULL) {
		fail_at(&l, 0, "cannot open: %s", strerror(errno));
		return -1;
	}
	rc = ini_parse_stream(reader, &l, handler, &l);
	if (ferror(l.f))
		fail_at(&l, 0, "cannot read: %s", strerror(errno));
	fclose(l.f);
	if (rc > 0)
		fail_at(&l, rc, "syntax error");
	else if (rc < 0)
		fail_at(&l, 0, "cannot parse (error %d)", rc);
	if (!l.failed)
		finish(&l);
	free(l.bline);
	return l.failed ? -1 : 0;
}

void
conf_free(struct config *c)
{
	int i, j;

	free(c->file);
	for (i = 0; i < c->nlisten; i++)
		free(c->listen[i]);
	free(c->listen);
	free(c->user);
	free(c->chroot_dir);
	free(c->pidfile);
	free(c->log);
	free(c->access_log);
	free(c->trusted);
	free(c->hide_headers);
	free(c->status);
	free(c->status_allow);
	free(c->allow);
	free(c->deny);
	for (i = 0; i < c->nbackends; i++) {
		free(c->backends[i].health_check);
		free(c->backends[i].ca);
		for (j = 0; j < c->backends[i].nsrv; j++) {
			free(c->backends[i].srv[j].name);
			free(c->backends[i].srv[j].host);
		}
		free(c->backends[i].srv);
		free(c->backends[i].name);
	}
	free(c->backends);
	for (i = 0; i < c->nroutes; i++) {
		free(c->routes[i].name);
		free(c->routes[i].host);
		free(c->routes[i].path);
		free(c->routes[i].backend_name);
		free(c->routes[i].allow);
		free(c->routes[i].deny);
		acl_auth_free(c->routes[i].auth);
	}
	free(c->routes);
	for (i = 0; i < c->tls.nlisten; i++)
		free(c->tls.listen[i]);
	free(c->tls.listen);
	for (i = 0; i < c->tls.ncerts; i++) {
		free(c->tls.certs[i].name);
		free(c->tls.certs[i].cert);
		free(c->tls.certs[i].key);
		for (j = 0; j < c->tls.certs[i].nhosts; j++)
			free(c->tls.certs[i].hosts[j]);
		free(c->tls.certs[i].hosts);
	}
	free(c->tls.certs);
	memset(c, 0, sizeof(*c));
}
