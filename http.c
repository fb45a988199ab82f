/*
 * http.c - HTTP/1.x heads: strict parsing, rewriting, chunked framing.
 *
 * Every function here is pure: it reads the caller's buffer, writes only
 * into the caller's output, allocates nothing and keeps no state between
 * calls, so each can be unit-tested and fuzzed on its own.
 *
 * The parser is strict on purpose (RFC 9112). A proxy that reads a message
 * differently from the server behind it lets an attacker hide a second
 * request inside the first ("request smuggling"), so anything the RFCs
 * allow a recipient to repair - bare LF, obs-fold, whitespace before a
 * colon, duplicate lengths - is rejected here instead.
 */
#include <limits.h>
#include <stdint.h>
#include <string.h>
#include <arpa/inet.h>

#include "proxy.h"

/* Targets for slices that point at nothing in particular. */
static const char empty[] = "";
static const char root[] = "/";

static const char hexdig[] = "0123456789ABCDEF";

/* Bounds of the chunked scanner; see http_chunk_scan. */
#define CHUNK_MAX_DIGITS	15	/* < 2^60: cannot overflow */
#define CHUNK_MAX_LINE		1024	/* a size or trailer line */
#define CHUNK_MAX_TRAILERS	32

/* Longest Content-Length accepted: 18 digits cannot overflow 64 bits. */
#define CL_MAX_DIGITS		18

/* ------------------------------------------------------------ characters */

/* RFC 9110 5.6.2: the characters of a token (header names, methods). */
static int
is_tchar(unsigned char c)
{
	/* A bit per byte: ALPHA, DIGIT and !#$%&'*+-.^_`|~ set. */
	static const uint32_t map[8] = { 0x00000000, 0x03ff6cfa,
	    0xc7fffffe, 0x57ffffff };

	return (map[c >> 5] >> (c & 31)) & 1;
}

/* Controls that may never appear in a head (HTAB is legal in values). */
static int
is_ctl(unsigned char c)
{
	return (c < 0x20 && c != '\t') || c == 0x7f;
}

static int
is_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') ||
	    (c >= 'A' && c <= 'F');
}

static int
hexval(unsigned char c)
{
	if (c <= '9')
		return c - '0';
	return (c | 0x20) - 'a' + 10;
}

/* RFC 3986 2.3: unreserved characters, safe to decode from %XX. */
static int
is_unreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
	    c == '~';
}

/*
 * Characters of a Host value or absolute-form authority: a reg-name or an
 * IP literal with an optional port. Narrower than RFC 3986 on purpose: no
 * '@' (userinfo, RFC 9110 4.2.4), no '%', no '/', so a host can neither
 * smuggle a path into routing nor confuse a backend's virtual hosts.
 */
static int
is_hostchar(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '.' || c == '-' || c == '_' ||
	    c == ':' || c == '[' || c == ']';
}

static unsigned char
lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

/* ---------------------------------------------------------------- slices */

static int
mem_ieq(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (lower(a[i]) != lower(b[i]))
			return 0;
	return 1;
}

int
slice_eq(struct slice s, const char *lit)
{
	size_t n;

	n = strlen(lit);
	return s.n == n && mem_ieq(s.p, lit, n);
}

static int
slice_ieq(struct slice a, struct slice b)
{
	return a.n == b.n && mem_ieq(a.p, b.p, a.n);
}

static int
slice_prefix(struct slice s, const char *lit)
{
	size_t n;

	n = strlen(lit);
	return s.n >= n && mem_ieq(s.p, lit, n);
}

static struct slice
mkslice(const char *p, size_t n)
{
	struct slice s;

	s.p = p;
	s.n = (uint32_t)n;
	return s;
}

/* Strip optional whitespace at both ends (RFC 9110 5.6.3). */
static struct slice
trim(const char *p, size_t n)
{
	while (n > 0 && (p[0] == ' ' || p[0] == '\t')) {
		p++;
		n--;
	}
	while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
		n--;
	return mkslice(p, n);
}

static int
is_token(struct slice s)
{
	uint32_t i;

	if (s.n == 0)
		return 0;
	for (i = 0; i < s.n; i++)
		if (!is_tchar(s.p[i]))
			return 0;
	return 1;
}

/*
 * RFC 9110 7.2 / RFC 3986 3.2.2: Host is uri-host [ ":" port ], the host
 * a name (letters, digits, '.', '-', '_'), or an IP literal in brackets,
 * the port digits. A proxy that routes on the host must not guess at
 * anything else ("x:abc", "[admin.example]", ":80"): a backend that reads
 * it differently could be reached by a route meant for another host.
 * An empty value is the caller's affair (allowed for HTTP/1.0).
 */
static int
is_host(struct slice s)
{
	uint32_t i = 0, end, digits;
	struct in6_addr a6;
	char lit[64];

	if (s.n == 0)
		return 1;
	if (s.p[0] == '[') {
		for (end = 1; end < s.n && s.p[end] != ']'; end++)
			;
		if (end == s.n || end - 1 >= sizeof(lit))
			return 0;
		memcpy(lit, s.p + 1, end - 1);
		lit[end - 1] = '\0';
		if (inet_pton(AF_INET6, lit, &a6) != 1)
			return 0;
		i = end + 1;
	} else {
		for (; i < s.n && s.p[i] != ':'; i++)
			if (!is_hostchar(s.p[i]) || s.p[i] == '[' ||
			    s.p[i] == ']')
				return 0;
		if (i == 0)
			return 0;	/* ":80": a port without a host */
	}
	if (i == s.n)
		return 1;
	if (s.p[i] != ':')
		return 0;
	for (i++, digits = 0; i < s.n; i++, digits++)
		if (s.p[i] < '0' || s.p[i] > '9' || digits == 5)
			return 0;
	return 1;	/* "host:" with an empty port is allowed (RFC 3986) */
}

/*
 * Which known field a name is. By length first: most names are rejected
 * there or at their first byte, without a string compare.
 */
int
http_field_id(const char *p, size_t n)
{
#define IS(lit, id) if (mem_ieq(p, lit, n)) return id
	switch (n) {
	case 2:
		IS("te", HN_TE);
		break;
	case 3:
		IS("age", HN_AGE);
		break;
	case 4:
		IS("host", HN_HOST);
		IS("vary", HN_VARY);
		IS("date", HN_DATE);
		IS("etag", HN_ETAG);
		break;
	case 6:
		IS("accept", HN_ACCEPT);
		IS("expect", HN_EXPECT);
		IS("pragma", HN_PRAGMA);
		break;
	case 7:
		IS("upgrade", HN_UPGRADE);
		IS("trailer", HN_TRAILER);
		IS("expires", HN_EXPIRES);
		IS("x-cache", HN_X_CACHE);
		IS("referer", HN_REFERER);
		break;
	case 8:
		IS("location", HN_LOCATION);
		break;
	case 9:
		IS("forwarded", HN_FORWARDED);
		break;
	case 10:
		IS("connection", HN_CONNECTION);
		IS("keep-alive", HN_KEEP_ALIVE);
		IS("set-cookie", HN_SET_COOKIE);
		IS("user-agent", HN_USER_AGENT);
		break;
	case 13:
		IS("cache-control", HN_CACHE_CONTROL);
		IS("authorization", HN_AUTHORIZATION);
		IS("if-none-match", HN_IF_NONE_MATCH);
		IS("last-modified", HN_LAST_MODIFIED);
		break;
	case 14:
		IS("content-length", HN_CONTENT_LENGTH);
		break;
	case 15:
		IS("x-forwarded-for", HN_X_FORWARDED_FOR);
		break;
	case 16:
		IS("x-forwarded-host", HN_X_FORWARDED_HOST);
		IS("content-location", HN_CONTENT_LOCATION);
		IS("proxy-connection", HN_PROXY_CONNECTION);
		break;
	case 17:
		IS("transfer-encoding", HN_TRANSFER_ENCODING);
		IS("x-forwarded-proto", HN_X_FORWARDED_PROTO);
		IS("if-modified-since", HN_IF_MODIFIED_SINCE);
		break;
	}
	return HN_OTHER;
#undef IS
}

/*
 * Yield the next element of a comma-separated list (RFC 9110 5.6.1), OWS
 * trimmed. *off starts at 0. Empty elements are yielded too (n == 0): the
 * caller decides whether they are harmless (Connection) or an error
 * (Transfer-Encoding). Returns 0 after the last element.
 */
static int
list_next(struct slice s, uint32_t *off, struct slice *el)
{
	const char *comma;
	uint32_t at;

	if (*off > s.n)
		return 0;
	at = *off;
	comma = memchr(s.p + at, ',', s.n - at);
	if (comma == NULL) {
		*el = trim(s.p + at, s.n - at);
		*off = s.n + 1;
	} else {
		*el = trim(s.p + at, (size_t)(comma - (s.p + at)));
		*off = (uint32_t)(comma - s.p) + 1;
	}
	return 1;
}

/* ------------------------------------------------------------------ heads */

/*
 * Find the end of a head (the CRLF CRLF) and vet every byte on the way.
 * Returns 1 with *hl set when the head is complete, 0 when more bytes are
 * needed, -1 as soon as a byte is seen that no valid head contains.
 *
 * RFC 9112 2.2 lets a recipient treat a bare LF as a line end and a bare
 * CR as SP; a backend that does not would see different line boundaries
 * from ours, which is how smuggled headers get through. So both are
 * errors, as are NUL and the other controls (HTAB is legal in values and
 * is checked where it matters). A leading empty line, which 2.2 allows a
 * server to skip, is rejected too: nothing legitimate sends one.
 */
static int
head_scan(const char *buf, size_t len, size_t *hl)
{
	size_t i;
	unsigned char c;

	if (len > 0 && buf[0] == '\r')
		return -1;
	for (i = 0; i < len; i++) {
		c = buf[i];
		if (c >= 0x20 && c != 0x7f)
			continue;	/* most bytes: nothing to check */
		if (c == '\n') {
			if (i == 0 || buf[i - 1] != '\r')
				return -1;
			/* buf[i - 2] == '\n' was checked to follow CR. */
			if (i >= 3 && buf[i - 2] == '\n') {
				*hl = i + 1;
				return 1;
			}
		} else if (c == '\r') {
			if (i + 1 < len && buf[i + 1] != '\n')
				return -1;
		} else if (is_ctl(c))
			return -1;
	}
	return 0;
}

static void
msg_reset(struct http_msg *m)
{
	m->method = m->target = m->path = m->host = m->reason =
	    mkslice(empty, 0);
	m->status = 0;
	m->minor = 0;
	m->flags = 0;
	m->clen = 0;
	m->head_len = 0;
	m->nh = 0;
}

/*
 * Split the field lines in [p, end) - end is just past the final CRLF
 * CRLF - into m->h. head_scan guaranteed that every CR is followed by LF
 * and that no control other than HTAB is left, so every remaining byte of
 * a value is VCHAR, obs-text, SP or HTAB (RFC 9110 5.5) and needs no
 * further check. Returns 0, -1 when malformed, -2 when too many.
 */
static int
parse_fields(const char *p, const char *end, struct http_msg *m)
{
	const char *eol, *q;
	struct http_hdr *h;

	while (p < end - 2) {
		eol = memchr(p, '\r', (size_t)(end - p));
		/*
		 * obs-fold (RFC 9112 5.2): some servers join the line to the
		 * previous field, some start a new one. Reject.
		 */
		if (*p == ' ' || *p == '\t')
			return -1;
		for (q = p; q < eol && is_tchar(*q); q++)
			;
		/*
		 * Whitespace between name and colon must be rejected (RFC
		 * 9112 5.1): "Transfer-Encoding : chunked" is read as TE by
		 * some servers and ignored by others.
		 */
		if (q == p || q == eol || *q != ':')
			return -1;
		if (m->nh == HTTP_MAX_HEADERS)
			return -2;
		h = &m->h[m->nh++];
		h->name = mkslice(p, (size_t)(q - p));
		h->id = http_field_id(p, (size_t)(q - p));
		h->value = trim(q + 1, (size_t)(eol - q - 1));
		p = eol + 2;
	}
	return 0;
}

/* Content-Length = 1*DIGIT (RFC 9110 8.6); no lists, no signs, no OWS. */
static int
parse_clen(struct slice v, uint64_t *clen)
{
	uint64_t n;
	uint32_t i;

	if (v.n == 0 || v.n > CL_MAX_DIGITS)
		return -1;
	n = 0;
	for (i = 0; i < v.n; i++) {
		if (v.p[i] < '0' || v.p[i] > '9')
			return -1;
		n = n * 10 + (uint64_t)(v.p[i] - '0');
	}
	*clen = n;
	return 0;
}

/* Transfer-Encoding across all its field lines (RFC 9112 6.1). */
struct te_list {
	int nchunked;		/* how many of them were chunked */
	int last_chunked;	/* the final one was chunked */
};

static int
te_add(struct te_list *te, struct slice v)
{
	struct slice el;
	uint32_t off;

	off = 0;
	while (list_next(v, &off, &el)) {
		/*
		 * Only bare tokens: a parameter or an empty element is a
		 * place where two parsers can disagree on the final coding.
		 */
		if (!is_token(el))
			return -1;
		te->last_chunked = slice_eq(el, "chunked");
		if (te->last_chunked)
			te->nchunked++;
	}
	return 0;
}

/* Connection options (RFC 9110 7.6.1); sets *upgrade for "upgrade". */
static int
conn_add(struct http_msg *m, struct slice v, int *upgrade)
{
	struct slice el;
	uint32_t off;

	off = 0;
	while (list_next(v, &off, &el)) {
		if (el.n == 0)
			continue;	/* 5.6.1: empty elements are legal */
		/* An option names a header field: it must be a token. */
		if (!is_token(el))
			return -1;
		if (slice_eq(el, "close"))
			m->flags |= HF_CLOSE;
		else if (slice_eq(el, "keep-alive"))
			m->flags |= HF_KEEPALIVE;
		else if (slice_eq(el, "upgrade"))
			*upgrade = 1;
		else
			m->flags |= HF_CONNOPT;
	}
	return 0;
}

/*
 * The semantic checks shared by requests and responses: framing (RFC 9112
 * 6), Host, Connection, Expect. req says which rules apply. Returns 0 or
 * -1; the caller turns -1 into 400 or 502.
 */
static int
check_fields(struct http_msg *m, int req)
{
	struct http_hdr *h;
	struct slice host;
	struct te_list te;
	int i, nhost, ncl, nte, upgrade_hdr, conn_upgrade;

	memset(&te, 0, sizeof(te));
	host = mkslice(empty, 0);
	nhost = ncl = nte = upgrade_hdr = conn_upgrade = 0;
	for (i = 0; i < m->nh; i++) {
		h = &m->h[i];
		switch (h->id) {
		case HN_CONTENT_LENGTH:
			/*
			 * Even identical duplicates are refused: "5, 5" or two
			 * lines are read as one value by some and as an error
			 * by others.
			 */
			if (++ncl > 1 || parse_clen(h->value, &m->clen) != 0)
				return -1;
			break;
		case HN_TRANSFER_ENCODING:
			nte++;
			if (te_add(&te, h->value) != 0)
				return -1;
			break;
		case HN_CONNECTION:
			if (conn_add(m, h->value, &conn_upgrade) != 0)
				return -1;
			break;
		case HN_UPGRADE:
			upgrade_hdr = 1;
			break;
		case HN_HOST:
			if (req) {
				nhost++;
				host = h->value;
			}
			break;
		case HN_EXPECT:
			/*
			 * We only know 100-continue, and answer it ourselves;
			 * RFC 9110 10.1.1 says to ignore it from HTTP/1.0.
			 */
			if (!req)
				break;
			if (!slice_eq(h->value, "100-continue"))
				return -1;
			if (m->minor == 1)
				m->flags |= HF_EXPECT100;
			break;
		}
	}

	if (req) {
		/*
		 * RFC 9112 3.2: exactly one Host, required in HTTP/1.1. Two
		 * Host lines let us route by one and the backend by the other.
		 */
		if (nhost > 1 || (nhost == 0 && m->minor == 1))
			return -1;
		if (nhost == 1) {
			if (!is_host(host) || (host.n == 0 && m->minor == 1))
				return -1;
			if (!(m->flags & HF_ABSOLUTE))
				m->host = host;
		}
	}

	if (ncl)
		m->flags |= HF_CL;
	if (nte) {
		/*
		 * RFC 9112 6.1: TE with Content-Length is the classic
		 * smuggling pair; TE from an HTTP/1.0 peer was likely
		 * forwarded by something that did not decode it.
		 */
		if (ncl || m->minor == 0)
			return -1;
		/* 6.1: chunked is applied at most once. */
		if (te.nchunked > 1)
			return -1;
		if (te.last_chunked)
			m->flags |= HF_CHUNKED;
		else if (req)
			return -1;	/* 6.3: a body we cannot frame */
		else
			m->flags |= HF_TE_OTHER; /* 6.3: read until close */
	}

	if (req) {
		/* RFC 9110 7.8: an Upgrade in HTTP/1.0 is to be ignored. */
		if (upgrade_hdr && conn_upgrade && m->minor == 1)
			m->flags |= HF_UPGRADE;
	} else {
		/*
		 * A 101 must carry Upgrade (RFC 9110 15.2.2); its framing is
		 * that of the new protocol, so no length rules apply.
		 */
		if (m->status == 101 && upgrade_hdr)
			m->flags |= HF_UPGRADE;
		if (m->flags & HF_NOBODY)
			m->flags &= ~(HF_CL | HF_CHUNKED | HF_TE_OTHER);
	}
	return 0;
}

/*
 * Split the request target (RFC 9112 3.2) into path and, for the
 * absolute-form, the authority. The path is what routing and the backend
 * see, always in origin-form.
 */
static int
parse_target(struct http_msg *m)
{
	const char *t, *end, *a, *q;

	t = m->target.p;
	end = t + m->target.n;
	if (t[0] == '/') {
		m->path = m->target;
		return 0;
	}
	if (m->target.n == 1 && t[0] == '*') {
		/* 3.2.4: asterisk-form is only for a server-wide OPTIONS. */
		if (m->method.n != 7 || memcmp(m->method.p, "OPTIONS", 7) != 0)
			return -400;
		m->path = m->target;
		return 0;
	}
	if (slice_prefix(m->target, "http://"))
		q = t + 7;
	else if (slice_prefix(m->target, "https://"))
		q = t + 8;
	else
		return -400;
	for (a = q; q < end && *q != '/' && *q != '?'; q++)
		;
	m->host = mkslice(a, (size_t)(q - a));
	if (m->host.n == 0 || !is_host(m->host))
		return -400;
	if (q == end)
		m->path = mkslice(root, 1);
	else if (*q == '/')
		m->path = mkslice(q, (size_t)(end - q));
	else
		/*
		 * "http://h?q" means "/?q", which is not a slice of the
		 * buffer; nothing real sends it, so refuse it.
		 */
		return -400;
	m->flags |= HF_ABSOLUTE;
	return 0;
}

/* method SP request-target SP HTTP-version (RFC 9112 3). */
static int
parse_request_line(const char *p, const char *eol, struct http_msg *m)
{
	const char *q, *t;

	for (q = p; q < eol && is_tchar(*q); q++)
		;
	if (q == p || q == eol || *q != ' ')
		return -400;
	m->method = mkslice(p, (size_t)(q - p));
	/* Methods are case-sensitive (RFC 9110 9.1); we do not tunnel. */
	if (m->method.n == 7 && memcmp(p, "CONNECT", 7) == 0)
		return -501;

	/*
	 * Exactly one SP between parts, and a target of visible ASCII only:
	 * a second SP or a control is where parsers start to disagree on
	 * where the target ends. A fragment is never sent (RFC 9110 4.2.4).
	 */
	t = ++q;
	for (; q < eol && *(const unsigned char *)q > 0x20 &&
	    *(const unsigned char *)q < 0x7f && *q != '#'; q++)
		;
	if (q == t || q == eol || *q != ' ')
		return -400;
	m->target = mkslice(t, (size_t)(q - t));
	q++;

	/* Only HTTP/1.0 and HTTP/1.1: we know no other framing. */
	if (eol - q != 8 || memcmp(q, "HTTP/1.", 7) != 0 ||
	    (q[7] != '0' && q[7] != '1'))
		return -400;
	m->minor = q[7] - '0';
	return parse_target(m);
}

/* HTTP-version SP status-code SP [ reason-phrase ] (RFC 9112 4). */
static int
parse_status_line(const char *p, const char *eol, struct http_msg *m)
{
	int i, st;

	if (eol - p < 12 || memcmp(p, "HTTP/1.", 7) != 0 ||
	    (p[7] != '0' && p[7] != '1') || p[8] != ' ')
		return -1;
	m->minor = p[7] - '0';
	st = 0;
	for (i = 9; i < 12; i++) {
		if (p[i] < '0' || p[i] > '9')
			return -1;
		st = st * 10 + (p[i] - '0');
	}
	if (st < 100 || st > 599)
		return -1;
	m->status = st;
	/*
	 * The SP before an empty reason is required by the grammar, but
	 * servers drop it; accepting it is harmless. Every byte left on the
	 * line is already known to be HTAB, SP, VCHAR or obs-text.
	 */
	if (eol - p == 12)
		m->reason = mkslice(p + 12, 0);
	else if (p[12] != ' ')
		return -1;
	else
		m->reason = mkslice(p + 13, (size_t)(eol - p - 13));
	return 0;
}

int
http_parse_request(const char *buf, size_t len, struct http_msg *m)
{
	const char *eol;
	size_t hl;
	int r;

	hl = 0;
	r = head_scan(buf, len, &hl);
	if (r <= 0)
		return r < 0 ? -400 : 0;
	if (hl > INT_MAX)
		return -431;
	msg_reset(m);
	eol = memchr(buf, '\r', hl);
	if ((r = parse_request_line(buf, eol, m)) != 0)
		return r;
	if ((r = parse_fields(eol + 2, buf + hl, m)) != 0)
		return r == -2 ? -431 : -400;
	if (check_fields(m, 1) != 0)
		return -400;
	m->head_len = (uint32_t)hl;
	return (int)hl;
}

int
http_parse_response(const char *buf, size_t len, int head_req,
    struct http_msg *m)
{
	const char *eol;
	size_t hl;
	int r;

	hl = 0;
	r = head_scan(buf, len, &hl);
	if (r <= 0)
		return r < 0 ? -502 : 0;
	if (hl > INT_MAX)
		return -502;
	msg_reset(m);
	eol = memchr(buf, '\r', hl);
	if (parse_status_line(buf, eol, m) != 0 ||
	    parse_fields(eol + 2, buf + hl, m) != 0)
		return -502;
	/* RFC 9112 6.3 items 1-2: these responses never have content. */
	if (head_req || m->status < 200 || m->status == 204 ||
	    m->status == 304)
		m->flags |= HF_NOBODY;
	if (check_fields(m, 0) != 0)
		return -502;
	m->head_len = (uint32_t)hl;
	return (int)hl;
}

/* ---------------------------------------------------------------- chunked */

/*
 * RFC 9112 7.1: chunk = chunk-size [ chunk-ext ] CRLF chunk-data CRLF,
 * then last-chunk, trailer fields and a final CRLF. One state per place
 * the scanner can stop, so a body split anywhere scans the same as whole.
 */
enum {
	CK_SIZE0,	/* first hex digit of a chunk-size */
	CK_SIZE,	/* further hex digits */
	CK_BWS,		/* whitespace after the size: ';' must follow */
	CK_EXT,		/* chunk extensions, up to CR */
	CK_SIZE_LF,	/* LF ending the size line */
	CK_DATA,	/* c->left bytes of data */
	CK_DATA_CR,	/* CRLF after the data */
	CK_DATA_LF,
	CK_TRL,		/* start of a trailer line, or the final CR */
	CK_TRL_NAME,
	CK_TRL_VAL,
	CK_TRL_LF,
	CK_END_LF,	/* LF of the final CRLF */
	CK_DONE,
	CK_ERR
};

void
http_chunk_init(struct http_chunk *c)
{
	memset(c, 0, sizeof(*c));
	c->st = CK_SIZE0;
}

long
http_chunk_scan(struct http_chunk *c, const char *buf, size_t len,
    int *done)
{
	size_t i, n;
	unsigned char ch;

	*done = 0;
	if (c->st == CK_DONE) {
		*done = 1;
		return 0;
	}
	if (c->st == CK_ERR)
		return -1;
	i = 0;
	while (i < len) {
		if (c->st == CK_DATA) {
			n = len - i;
			if (n > c->left)
				n = (size_t)c->left;
			i += n;
			c->left -= n;
			c->data += n;
			if (c->left == 0)
				c->st = CK_DATA_CR;
			continue;
		}
		ch = buf[i++];
		/*
		 * A size or trailer line is bounded: a peer must not keep us
		 * scanning an endless extension while it holds a buffer.
		 */
		if (ch != '\r' && (c->st <= CK_EXT ||
		    (c->st >= CK_TRL && c->st <= CK_TRL_VAL)) &&
		    ++c->linelen > CHUNK_MAX_LINE)
			goto bad;
		switch (c->st) {
		case CK_SIZE0:
		case CK_SIZE:
			if (is_hex(ch)) {
				/* Bounded digits: no overflow, no wrap to 0. */
				if (c->ndig == CHUNK_MAX_DIGITS)
					goto bad;
				c->ndig++;
				c->left = c->left << 4 | (uint64_t)hexval(ch);
				c->st = CK_SIZE;
			} else if (c->st == CK_SIZE0)
				goto bad;
			else if (ch == '\r')
				c->st = CK_SIZE_LF;
			else if (ch == ';')
				c->st = CK_EXT;
			else if (ch == ' ' || ch == '\t')
				c->st = CK_BWS;
			else
				goto bad;
			break;
		case CK_BWS:
			/* 7.1.1: BWS is allowed only before ';'. */
			if (ch == ';')
				c->st = CK_EXT;
			else if (ch != ' ' && ch != '\t')
				goto bad;
			break;
		case CK_EXT:
			/*
			 * Extensions are passed on, not interpreted; what
			 * matters is that no parser can see a line end in
			 * them that we did not (bare LF, bare CR, NUL).
			 */
			if (ch == '\r')
				c->st = CK_SIZE_LF;
			else if (is_ctl(ch))
				goto bad;
			break;
		case CK_SIZE_LF:
			if (ch != '\n')
				goto bad;
			c->linelen = 0;
			c->ndig = 0;	/* in trailers: lines seen */
			c->st = c->left == 0 ? CK_TRL : CK_DATA;
			break;
		case CK_DATA_CR:
			if (ch != '\r')
				goto bad;
			c->st = CK_DATA_LF;
			break;
		case CK_DATA_LF:
			if (ch != '\n')
				goto bad;
			c->st = CK_SIZE0;
			break;
		case CK_TRL:
			if (ch == '\r') {
				c->st = CK_END_LF;
			} else if (is_tchar(ch)) {
				/* Trailers are header lines (7.1.2). */
				if (++c->ndig > CHUNK_MAX_TRAILERS)
					goto bad;
				c->st = CK_TRL_NAME;
			} else
				goto bad;	/* obs-fold, garbage */
			break;
		case CK_TRL_NAME:
			if (ch == ':')
				c->st = CK_TRL_VAL;
			else if (!is_tchar(ch))
				goto bad;
			break;
		case CK_TRL_VAL:
			if (ch == '\r')
				c->st = CK_TRL_LF;
			else if (is_ctl(ch))
				goto bad;
			break;
		case CK_TRL_LF:
			if (ch != '\n')
				goto bad;
			c->linelen = 0;
			c->st = CK_TRL;
			break;
		case CK_END_LF:
			if (ch != '\n')
				goto bad;
			/* What follows is the next message, not ours. */
			c->st = CK_DONE;
			*done = 1;
			return (long)i;
		default:
			goto bad;
		}
	}
	return (long)i;
bad:
	c->st = CK_ERR;
	return -1;
}

/* --------------------------------------------------------------- writers */

/*
 * A bounded output cursor: once something does not fit, nothing more is
 * written and the result is -1.
 */
struct wbuf {
	char *p;
	size_t n, cap;
	int over;
};

static void
put(struct wbuf *w, const char *s, size_t n)
{
	if (w->over || n > w->cap - w->n) {
		w->over = 1;
		return;
	}
	if (n > 0)
		memcpy(w->p + w->n, s, n);
	w->n += n;
}

static void
put_str(struct wbuf *w, const char *s)
{
	put(w, s, strlen(s));
}

static void
put_slice(struct wbuf *w, struct slice s)
{
	put(w, s.p, s.n);
}

static void
put_field(struct wbuf *w, struct slice name, struct slice value)
{
	put_slice(w, name);
	put(w, ": ", 2);
	put_slice(w, value);
	put(w, "\r\n", 2);
}

static void
put_via(struct wbuf *w, int minor)
{
	/* RFC 9110 7.6.3: the protocol of the message as we received it. */
	put_str(w, minor == 0 ? "Via: 1.0 proxy\r\n" : "Via: 1.1 proxy\r\n");
}

static int
wend(struct wbuf *w)
{
	put(w, "\r\n", 2);
	if (w->over || w->n > INT_MAX)
		return -1;
	return (int)w->n;
}

/* Does any Connection header of m list h's name as an option? */
static int
conn_listed(const struct http_msg *m, const struct http_hdr *h)
{
	struct slice el;
	uint32_t off;
	int i;

	/* The common cases, without a walk: no options but close. */
	if (!(m->flags & HF_CONNOPT))
		return (m->flags & HF_CLOSE) && slice_eq(h->name, "close");
	for (i = 0; i < m->nh; i++) {
		if (m->h[i].id != HN_CONNECTION)
			continue;
		off = 0;
		while (list_next(m->h[i].value, &off, &el))
			if (slice_ieq(el, h->name))
				return 1;
	}
	return 0;
}

/*
 * Fields that a Connection option or a hide list may never remove:
 * "Connection: content-length" would otherwise make the next hop frame
 * the body differently from us (smuggling or response splitting), and
 * RFC 9110 7.6.1 forbids listing end-to-end fields as options anyway.
 */
static int
is_framing(const struct http_hdr *h)
{
	return h->id == HN_CONTENT_LENGTH || h->id == HN_TRANSFER_ENCODING ||
	    h->id == HN_HOST;
}

/*
 * Hop-by-hop fields (RFC 9110 7.6.1) are for this connection only. keep
 * names the one listed field that survives (Upgrade while upgrading).
 */
static int
is_hop(const struct http_msg *m, const struct http_hdr *h, int keep_upgrade)
{
	switch (h->id) {
	case HN_CONNECTION:
	case HN_KEEP_ALIVE:
	case HN_TE:
	case HN_TRAILER:
	case HN_PROXY_CONNECTION:
		return 1;
	case HN_UPGRADE:
		return !keep_upgrade;
	}
	return conn_listed(m, h) && !is_framing(h);
}

/*
 * Is this request field one the proxy removes? Besides hop-by-hop
 * fields: every Proxy-* (credentials for a proxy are not the backend's)
 * and Expect (we answer 100-continue ourselves, RFC 9110 10.1.1).
 */
static int
req_drop(const struct http_msg *m, const struct http_hdr *h)
{
	if (h->id == HN_EXPECT || (h->name.n >= 6 && lower(h->name.p[0]) == 'p' &&
	    slice_prefix(h->name, "proxy-")))
		return 1;
	return is_hop(m, h, m->flags & HF_UPGRADE);
}

int
http_write_request(char *out, size_t cap, const struct http_msg *m,
    const struct http_fwd *f)
{
	struct wbuf w;
	const struct http_hdr *h;
	const char *ip, *proto;
	int i, minor, xff, xfp, xfh;

	w.p = out;
	w.n = 0;
	w.cap = cap;
	w.over = 0;
	ip = f->client_ip != NULL ? f->client_ip : "unknown";
	proto = f->proto != NULL ? f->proto : "http";

	/*
	 * HTTP/1.1 requires a Host (RFC 9112 3.2) and we have none to give
	 * when an HTTP/1.0 client sent none: forward such a request as
	 * HTTP/1.0, as it came.
	 */
	minor = f->minor != 0 && m->host.n > 0;
	put_slice(&w, m->method);
	put(&w, " ", 1);
	put_slice(&w, m->path);
	put_str(&w, minor ? " HTTP/1.1\r\n" : " HTTP/1.0\r\n");
	/* RFC 9112 3.2.2: the absolute-form authority replaces Host. */
	if (m->flags & HF_ABSOLUTE)
		put_field(&w, mkslice("Host", 4), m->host);

	xff = xfp = xfh = 0;
	for (i = 0; i < m->nh; i++) {
		h = &m->h[i];
		if (req_drop(m, h))
			continue;
		switch (h->id) {
		case HN_HOST:
			/* RFC 9112 3.2.2: the absolute-form authority wins. */
			if (m->flags & HF_ABSOLUTE)
				continue;
			break;
		/*
		 * X-Forwarded-* from an untrusted client are lies waiting to
		 * be believed by the backend's access control: drop them.
		 */
		case HN_X_FORWARDED_FOR:
			xff = 1;	/* merged into one line below */
			continue;
		case HN_X_FORWARDED_PROTO:
			if (!f->trusted)
				continue;
			xfp = 1;
			break;
		case HN_X_FORWARDED_HOST:
			if (!f->trusted)
				continue;
			xfh = 1;
			break;
		case HN_FORWARDED:
			if (!f->trusted)
				continue;
			break;
		case HN_AUTHORIZATION:
			/* Credentials checked by the proxy stay with it. */
			if (f->drop_auth)
				continue;
			break;
		}
		put_field(&w, h->name, h->value);
	}

	put_str(&w, "X-Forwarded-For: ");
	if (xff && f->trusted) {
		for (i = 0; i < m->nh; i++) {
			h = &m->h[i];
			if (h->value.n == 0 || h->id != HN_X_FORWARDED_FOR ||
			    req_drop(m, h))
				continue;
			put_slice(&w, h->value);
			put(&w, ", ", 2);
		}
	}
	put_str(&w, ip);
	put(&w, "\r\n", 2);
	if (!xfp) {
		put_str(&w, "X-Forwarded-Proto: ");
		put_str(&w, proto);
		put(&w, "\r\n", 2);
	}
	if (!xfh && m->host.n > 0)
		put_field(&w, mkslice("X-Forwarded-Host", 16), m->host);
	put_via(&w, m->minor);
	if (f->extra != NULL)
		put_str(&w, f->extra);
	if (m->flags & HF_UPGRADE)
		put_str(&w, "Connection: upgrade\r\n");
	else if (!minor)
		/* HTTP/1.0 closes by default; keep the upstream reusable. */
		put_str(&w, "Connection: keep-alive\r\n");
	return wend(&w);
}

/* Is name in hide, a list of names separated by spaces (or tabs, commas)? */
static int
is_hidden(const char *hide, struct slice name)
{
	const char *p, *q;

	if (hide == NULL)
		return 0;
	for (p = hide; *p != '\0'; p = q) {
		while (*p == ' ' || *p == '\t' || *p == ',')
			p++;
		for (q = p; *q != '\0' && *q != ' ' && *q != '\t' && *q != ',';
		    q++)
			;
		if (q > p && slice_ieq(name, mkslice(p, (size_t)(q - p))))
			return 1;
	}
	return 0;
}

uint32_t
http_host_hash(const char *p, size_t n)
{
	uint32_t h = 2166136261u;
	size_t i;

	for (i = 0; i < n; i++) {
		h ^= (uint32_t)(unsigned char)(p[i] >= 'A' && p[i] <= 'Z' ?
		    p[i] - 'A' + 'a' : p[i]);
		h *= 16777619u;
	}
	return h != 0 ? h : 1;
}

/* Does the authority a[0..n) name the request's host or the server? */
static int
is_us(const char *a, size_t n, const struct http_rsp *o)
{
	struct slice s;

	s.p = a;
	s.n = (uint32_t)n;
	if (o->host_hash != 0 && http_host_hash(a, n) == o->host_hash)
		return 1;
	return o->server != NULL && slice_eq(s, o->server);
}

/*
 * strip_prefix: the backend thinks it lives at "/", so its redirects say
 * "/login" or "http://host/login"; the client must go to "/app/login".
 * Relative references ("login") resolve under the prefix by themselves.
 */
static void
put_location(struct wbuf *w, struct slice name, struct slice v,
    const struct http_rsp *o)
{
	size_t plen = strlen(o->prefix), i, end;
	const char *path = NULL;

	if (plen > 0 && o->prefix[plen - 1] == '/')
		plen--;
	if (v.n > 0 && v.p[0] == '/' && (v.n == 1 || v.p[1] != '/')) {
		path = v.p;
	} else {
		/* scheme "://" authority path */
		for (i = 0; i < v.n && v.p[i] != ':'; i++)
			;
		if (i + 3 <= v.n && memcmp(v.p + i, "://", 3) == 0) {
			i += 3;
			for (end = i; end < v.n && v.p[end] != '/' &&
			    v.p[end] != '?'; end++)
				;
			if (end < v.n && v.p[end] == '/' &&
			    is_us(v.p + i, end - i, o))
				path = v.p + end;
		}
	}
	if (path == NULL) {
		put_field(w, name, v);	/* relative, or another site */
		return;
	}
	put_slice(w, name);
	put(w, ": ", 2);
	put(w, v.p, (size_t)(path - v.p));
	put(w, o->prefix, plen);
	put(w, path, (size_t)(v.p + v.n - path));
	put(w, "\r\n", 2);
}

int
http_write_response(char *out, size_t cap, const struct http_msg *m,
    const struct http_rsp *o)
{
	struct wbuf w;
	const struct http_hdr *h;
	char code[4];
	int i, up;

	if (m->status < 100 || m->status > 999)
		return -1;
	w.p = out;
	w.n = 0;
	w.cap = cap;
	w.over = 0;
	up = m->status == 101;

	code[0] = (char)('0' + m->status / 100);
	code[1] = (char)('0' + m->status / 10 % 10);
	code[2] = (char)('0' + m->status % 10);
	code[3] = ' ';
	put_str(&w, "HTTP/1.1 ");
	put(&w, code, 4);
	put_slice(&w, m->reason);
	put(&w, "\r\n", 2);
	for (i = 0; i < m->nh; i++) {
		h = &m->h[i];
		if (is_hop(m, h, up))
			continue;
		if (is_hidden(o->hide, h->name) && !is_framing(h))
			continue;
		if (o->prefix != NULL && (h->id == HN_LOCATION ||
		    h->id == HN_CONTENT_LOCATION))
			put_location(&w, h->name, h->value, o);
		else
			put_field(&w, h->name, h->value);
	}
	put_via(&w, m->minor);
	if (o->extra != NULL)
		put_str(&w, o->extra);
	if (up)
		put_str(&w, "Connection: upgrade\r\n");
	else if (o->close)
		put_str(&w, "Connection: close\r\n");
	else if (o->client_minor == 0)
		put_str(&w, "Connection: keep-alive\r\n");
	return wend(&w);
}

/* ------------------------------------------------------------------ paths */

/*
 * Normalise p[0..n) into out for routing and ACLs. One pass: each segment
 * is decoded into out, then judged - so dot segments made by decoding
 * ("%2e%2e") are removed like literal ones (RFC 3986 6.2.2, 5.2.4).
 * Decoding never lengthens the path, so cap >= n always suffices.
 */
int
http_normalize_path(const char *p, size_t n, char *out, size_t cap)
{
	const char *q;
	size_t i, o, seg;
	unsigned char c;
	int v;

	if ((q = memchr(p, '?', n)) != NULL)
		n = (size_t)(q - p);
	if (n == 0 || p[0] != '/')
		return -400;
	if (cap == 0)
		return -414;
	out[0] = '/';
	o = 1;
	i = 1;
	while (i < n) {
		seg = o;
		for (; i < n && p[i] != '/'; i++) {
			c = p[i];
			if (c == '%') {
				if (n - i < 3 || !is_hex(p[i + 1]) ||
				    !is_hex(p[i + 2]))
					return -400;
				v = hexval(p[i + 1]) << 4 | hexval(p[i + 2]);
				/*
				 * An encoded '/' or '\' is a separator to some
				 * backends and not to us; NUL ends strings in
				 * others. All three dodge prefix rules.
				 */
				if (v == '/' || v == '\\' || v == 0)
					return -400;
				i += 2;
				if (is_unreserved((unsigned char)v)) {
					if (o >= cap)
						return -414;
					out[o++] = (char)v;
					continue;
				}
				if (cap - o < 3)
					return -414;
				out[o++] = '%';
				out[o++] = hexdig[v >> 4];
				out[o++] = hexdig[v & 15];
				continue;
			}
			/* '\' is a separator on some backends' filesystems. */
			if (c == '\\' || c <= 0x20 || c >= 0x7f)
				return -400;
			if (o >= cap)
				return -414;
			out[o++] = (char)c;
		}
		if (o - seg == 1 && out[seg] == '.') {
			o = seg;
		} else if (o - seg == 2 && out[seg] == '.' &&
		    out[seg + 1] == '.') {
			/* Climbing above the root is an attack, not a path. */
			if (seg == 1)
				return -400;
			o = seg - 1;
			while (out[o - 1] != '/')
				o--;
		} else if (o > seg && i < n) {
			if (o >= cap)
				return -414;
			out[o++] = '/';
		}
		/* An empty segment ("//") adds nothing: it collapses. */
		if (i < n)
			i++;
	}
	if (o > INT_MAX)
		return -414;
	return (int)o;
}

/* ----------------------------------------------------------- error pages */

/*
 * Complete responses for the statuses the proxy produces itself, built at
 * compile time. They name neither the software nor its version, and close
 * the connection: after an error we do not trust the framing any more.
 */
#define PAGE(code, reason, clen, extra)					\
	"HTTP/1.1 " #code " " reason "\r\n"				\
	"Content-Type: text/plain\r\n"					\
	"Content-Length: " #clen "\r\n"					\
	extra								\
	"Connection: close\r\n"						\
	"\r\n"								\
	#code " " reason "\n"
#define ENTRY(code, reason, clen, extra)				\
	{ code, PAGE(code, reason, clen, extra),			\
	    sizeof(PAGE(code, reason, clen, extra)) - 1 }

static const struct {
	int code;
	const char *text;
	size_t len;
} pages[] = {
	/* The first entry is the fallback for codes not listed. */
	ENTRY(500, "Internal Server Error", 26, ""),
	ENTRY(400, "Bad Request", 16, ""),
	ENTRY(401, "Unauthorized", 17,
	    "WWW-Authenticate: Basic realm=\"restricted\", charset=\"UTF-8\"\r\n"),
	ENTRY(403, "Forbidden", 14, ""),
	ENTRY(404, "Not Found", 14, ""),
	ENTRY(408, "Request Timeout", 20, ""),
	ENTRY(413, "Content Too Large", 22, ""),
	ENTRY(414, "URI Too Long", 17, ""),
	ENTRY(417, "Expectation Failed", 23, ""),
	ENTRY(429, "Too Many Requests", 22, "Retry-After: 1\r\n"),
	ENTRY(431, "Request Header Fields Too Large", 36, ""),
	ENTRY(501, "Not Implemented", 20, ""),
	ENTRY(502, "Bad Gateway", 16, ""),
	ENTRY(503, "Service Unavailable", 24, ""),
	ENTRY(504, "Gateway Timeout", 20, ""),
};

const char *
http_error_page(int code, size_t *len)
{
	size_t i;

	for (i = 0; i < sizeof(pages) / sizeof(pages[0]); i++)
		if (pages[i].code == code)
			break;
	if (i == sizeof(pages) / sizeof(pages[0]))
		i = 0;
	*len = pages[i].len;
	return pages[i].text;
}
