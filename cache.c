/*
 * cache.c - the shared response cache (RFC 9111): its storage and rules.
 *
 * Storage. cache_init takes one piece of memory, the arena, and carves it
 * once into data blocks with their next-index table, object slots, the
 * hash index, the writer table and scratch space for heads; nothing is
 * allocated afterwards. Inside the arena everything refers to everything
 * else by 32-bit index, never by pointer, and no pointer into it is kept
 * by a caller across calls.
 *
 * An object is a chain of fixed-size blocks holding, back to back: its
 * key ("http://host:port/path?q"), its Vary data (the request's values of
 * the fields its Vary names), the response head as the backend sent it,
 * and the body as it went to the client. Objects range from a few hundred
 * bytes to max_object; since any free block serves any object, the arena
 * cannot fragment into holes too small to use, and the only waste is the
 * unfilled end of each object's last block.
 *
 * Index. Objects hang off a power-of-two bucket array by a SipHash-2-4 of
 * the key under a random key from getrandom(): a client choosing URLs
 * cannot compute where they land, so it cannot pile them into one bucket
 * and turn every lookup into a long walk. The variants of one URL (Vary)
 * share a key and a bucket, each its own object, the newest first.
 *
 * LRU. Complete objects are on one doubly-linked list, most recently used
 * first; a writer short of blocks or slots evicts from the tail. Objects
 * being written are not on it, so never evicted. They are in the index,
 * so that a second writer for the same key and variant is refused; a
 * lookup skips them (a miss: that request goes to the backend too).
 *
 * Readers. A cache_ref names an object slot and its generation: the high
 * 24 bits count the slot's incarnations (bumped whenever its object is
 * dropped, so a reader of an evicted object gets -1 instead of another
 * object's bytes), the low 8 bits count rewrites of its head by a
 * revalidation. A reader still sending the head needs the whole
 * generation to match, a reader in the body only the incarnation, since
 * a head rewritten in place leaves the body where it was.
 */
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <sys/random.h>

#include "proxy.h"

/*
 * Block size. Per-object waste is half a block on average (the tail of
 * the last one) plus 4 bytes of next index per block. With 512 bytes an
 * object of a few KB - the typical page, script or JSON answer - loses
 * under 10%, one of 20 KB about 1%; 256-byte blocks would halve the tail
 * but double the index and the walks, 1 KB ones double the tail for the
 * many small objects (redirects, 404s, small API answers). The unit test
 * prints the resulting utilisation for a mix of sizes.
 */
#define BLK		512
#define NIL		0xffffffffu
#define HEAD_MAX	8192	/* longest response head stored */
#define OUT_EXTRA	2048	/* head growth when written: Age, X-Cache,
				   Via, Connection, the loop's extra lines */
#define KEY_MAX		2048	/* longer URLs are not cached */
#define VARY_MAX	1024	/* Vary data, and one joined field value */
#define NWRITER		64	/* responses being stored at once */
#define NVICTIM		4	/* old copies one new store replaces */
#define MAX_VARIANTS	16	/* of one URL: a client sending a new value
				   of a varied-on field each time must not
				   grow one bucket's chain without end */
#define SLOTS_PER	4	/* one object slot per this many blocks */
#define BODY_PHASE	0x80000000u	/* ref->off: head sent, low bits
					   are body bytes sent */
#define GEN_INC		256u	/* one incarnation in obj.gen */
#define DELTA_MAX	2147483648u	/* RFC 9111 1.2.2: "infinity" */
#define HEURISTIC_MAX	86400	/* 4.2.2: most heuristic lifetime */

/* obj.flags */
enum {
	O_WRITING = 1 << 0,	/* a writer is filling it: not servable */
	O_COMPLETE = 1 << 1,	/* servable, on the LRU list */
	O_REVAL = 1 << 2,	/* must-/proxy-revalidate, s-maxage: never
				   served stale (5.2.2.2, 5.2.2.8, 5.2.2.10) */
	O_NOCACHE = 1 << 3,	/* no-cache: revalidate before every use */
	O_VALID = 1 << 4,	/* has ETag or Last-Modified: revalidatable */
	O_CHUNKED = 1 << 5,	/* body stored with its chunked framing */
	O_PINNED = 1 << 6,	/* complete, off the LRU list for a while */
};

struct chain {
	uint32_t first, last;	/* NIL when empty */
	uint32_t len;		/* bytes held */
	uint32_t nblk;
};

/* An object slot. A free slot is linked through next. */
struct obj {
	int64_t resp_time;	/* response_time (4.2.3) */
	uint32_t gen;		/* incarnation << 8 | head rewrites */
	uint32_t hash;		/* of the key */
	uint32_t hnext;		/* next in its bucket */
	uint32_t prev, next;	/* LRU list: prev is the more recent */
	struct chain c;		/* key, Vary data, head, body */
	uint32_t body_off;	/* where the body starts in the chain */
	uint32_t body_len;
	uint32_t lifetime;	/* freshness_lifetime (4.2.1), seconds */
	uint32_t init_age;	/* corrected_initial_age (4.2.3) */
	uint16_t keylen, varylen, headlen, status;
	uint16_t flags;		/* O_* */
};

enum { W_LEN, W_CHUNKED, W_NOBODY };

/* A response being stored. Its id carries seq, so a stale id is inert. */
struct writer {
	uint32_t obj, gen;
	uint16_t seq;
	uint8_t used, mode;	/* W_* */
	uint64_t clen;		/* W_LEN: the Content-Length */
	struct http_chunk ch;	/* W_CHUNKED: the body is checked too */
	uint32_t victim[NVICTIM], vgen[NVICTIM];
	int nvictim;
};

static struct {
	char *arena;
	size_t size, max_object, head_max, outcap;
	uint32_t nblk, nobj, mask;
	char *blk;		/* nblk * BLK */
	uint32_t *bnext;	/* per block: the next in its chain */
	struct obj *obj;
	uint32_t *bucket;
	struct writer *wr;
	struct http_msg *msg;	/* a stored head, parsed */
	struct http_msg *req;	/* the request in cache_store_begin */
	char *raw;		/* a stored head copied out (head_max) */
	char *out;		/* a head written (outcap) */
	char *key;		/* KEY_MAX */
	char *vary;		/* VARY_MAX */
	char *tmp;		/* VARY_MAX */
	uint32_t freeblk, nfree, freeobj;
	uint32_t lru_head, lru_tail;	/* head: most recently used */
	uint64_t sipkey[2];
	char agebuf[16];
	struct cache_stats st;
} C;

/* ------------------------------------------------------------ small text */

static unsigned char
lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? c + ('a' - 'A') : c;
}

static int
mem_ieq(const char *a, const char *b, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		if (lower(a[i]) != lower(b[i]))
			return 0;
	return 1;
}

static int
sl_ieq(struct slice a, struct slice b)
{
	return a.n == b.n && mem_ieq(a.p, b.p, a.n);
}

static struct slice
mksl(const char *p, size_t n)
{
	struct slice s;

	s.p = p;
	s.n = (uint32_t)n;
	return s;
}

static int
is_ows(char c)
{
	return c == ' ' || c == '\t';
}

/* RFC 9110 5.6.2 */
static int
is_tchar(unsigned char c)
{
	if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9'))
		return 1;
	return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* The first value of a field, or NULL. */
static const struct slice *
hdr(const struct http_msg *m, int id)
{
	int i;

	for (i = 0; i < m->nh; i++)
		if (m->h[i].id == id)
			return &m->h[i].value;
	return NULL;
}

/* The next element of a comma-separated list, trimmed; 0 at the end. */
static int
list_el(struct slice s, uint32_t *off, struct slice *el)
{
	uint32_t a, b;

	while (*off < s.n && (s.p[*off] == ',' || is_ows(s.p[*off])))
		(*off)++;
	if (*off >= s.n)
		return 0;
	a = *off;
	while (*off < s.n && s.p[*off] != ',')
		(*off)++;
	b = *off;
	while (b > a && is_ows(s.p[b - 1]))
		b--;
	*el = mksl(s.p + a, b - a);
	return 1;
}

/* delta-seconds (RFC 9111 1.2.2); 0 when invalid (the stale choice). */
static uint32_t
delta(const char *p, size_t n)
{
	uint64_t v = 0;
	size_t i;

	if (n == 0)
		return 0;
	for (i = 0; i < n; i++) {
		if (p[i] < '0' || p[i] > '9')
			return 0;
		v = v * 10 + (uint64_t)(p[i] - '0');
		if (v > DELTA_MAX)
			v = DELTA_MAX;
	}
	return (uint32_t)v;
}

/* ---------------------------------------------------------- HTTP-date */

static int
num(const char **p, const char *end, int digits, int *v)
{
	int i;

	*v = 0;
	for (i = 0; i < digits; i++, (*p)++) {
		if (*p >= end || **p < '0' || **p > '9')
			return 0;
		*v = *v * 10 + (**p - '0');
	}
	return 1;
}

static int
expect(const char **p, const char *end, const char *lit)
{
	size_t n = strlen(lit);

	if ((size_t)(end - *p) < n || memcmp(*p, lit, n) != 0)
		return 0;
	*p += n;
	return 1;
}

static int
month(const char **p, const char *end, int *mo)
{
	static const char names[] = "JanFebMarAprMayJunJulAugSepOctNovDec";
	int i;

	if (end - *p < 3)
		return 0;
	for (i = 0; i < 12; i++)
		if (memcmp(*p, names + 3 * i, 3) == 0) {
			*mo = i + 1;
			*p += 3;
			return 1;
		}
	return 0;
}

static int
hms(const char **p, const char *end, int *h, int *mi, int *s)
{
	return num(p, end, 2, h) && expect(p, end, ":") &&
	    num(p, end, 2, mi) && expect(p, end, ":") && num(p, end, 2, s);
}

/* Days since 1970-01-01 of a proleptic Gregorian date. */
static int64_t
days_from_civil(int64_t y, int m, int d)
{
	int64_t era, yoe, doy, doe;

	y -= m <= 2;
	era = (y >= 0 ? y : y - 399) / 400;
	yoe = y - era * 400;
	doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
	doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
	return era * 146097 + doe - 719468;
}

/*
 * An HTTP-date (RFC 9110 5.6.7) in any of the three forms a recipient
 * must accept: "Sun, 06 Nov 1994 08:49:37 GMT", "Sunday, 06-Nov-94
 * 08:49:37 GMT", "Sun Nov  6 08:49:37 1994". A two-digit year below 70
 * is 20xx. Returns 0 with *t in seconds since the epoch, or -1.
 */
static int
http_date(struct slice v, int64_t *t)
{
	const char *p = v.p, *end = v.p + v.n;
	int d, mo, y, h, mi, s, nday = 0;

	while (p < end && ((*p >= 'A' && *p <= 'Z') ||
	    (*p >= 'a' && *p <= 'z'))) {
		p++;
		nday++;
	}
	if (nday < 3 || p == end)
		return -1;
	if (*p == ',') {
		p++;
		if (!expect(&p, end, " ") || !num(&p, end, 2, &d))
			return -1;
		if (p < end && *p == ' ') {
			p++;
			if (!month(&p, end, &mo) || !expect(&p, end, " ") ||
			    !num(&p, end, 4, &y))
				return -1;
		} else if (p < end && *p == '-') {
			p++;
			if (!month(&p, end, &mo) || !expect(&p, end, "-") ||
			    !num(&p, end, 2, &y))
				return -1;
			y += y < 70 ? 2000 : 1900;
		} else
			return -1;
		if (!expect(&p, end, " ") || !hms(&p, end, &h, &mi, &s) ||
		    !expect(&p, end, " GMT"))
			return -1;
	} else if (*p == ' ') {
		p++;
		if (!month(&p, end, &mo) || !expect(&p, end, " "))
			return -1;
		if (p < end && *p == ' ') {
			p++;
			if (!num(&p, end, 1, &d))
				return -1;
		} else if (!num(&p, end, 2, &d))
			return -1;
		if (!expect(&p, end, " ") || !hms(&p, end, &h, &mi, &s) ||
		    !expect(&p, end, " ") || !num(&p, end, 4, &y))
			return -1;
	} else
		return -1;
	if (p != end || d < 1 || d > 31 || h > 23 || mi > 59 || s > 60)
		return -1;
	*t = days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + s;
	return 0;
}

static int
hdr_date(const struct http_msg *m, int id, int64_t *t)
{
	const struct slice *v;

	v = hdr(m, id);
	return v != NULL && http_date(*v, t) == 0;
}

/* ------------------------------------------------------- Cache-Control */

enum {
	CC_NO_STORE = 1 << 0,
	CC_NO_CACHE = 1 << 1,
	CC_PRIVATE = 1 << 2,
	CC_PUBLIC = 1 << 3,
	CC_MAX_AGE = 1 << 4,
	CC_S_MAXAGE = 1 << 5,
	CC_MUST_REVAL = 1 << 6,
	CC_PROXY_REVAL = 1 << 7,
	CC_MAX_STALE = 1 << 8,
	CC_MIN_FRESH = 1 << 9,
	CC_ONLY_IF_CACHED = 1 << 10,
	CC_PRESENT = 1 << 11,	/* a Cache-Control field at all */
};

struct cc {
	unsigned f;		/* CC_* */
	uint32_t max_age, s_maxage, min_fresh;
	uint32_t max_stale;	/* UINT32_MAX: any staleness */
};

static int
name_is(const char *p, size_t n, const char *lit)
{
	return strlen(lit) == n && mem_ieq(p, lit, n);
}

/* One directive; for repeated ones the first counts (RFC 9111 4.2.1). */
static void
cc_apply(struct cc *cc, const char *n, size_t nl, const char *v, size_t vl,
    int has_v)
{
	if (name_is(n, nl, "no-store"))
		cc->f |= CC_NO_STORE;
	else if (name_is(n, nl, "no-cache"))
		/* no-cache="field" is taken as plain no-cache: stricter. */
		cc->f |= CC_NO_CACHE;
	else if (name_is(n, nl, "private"))
		cc->f |= CC_PRIVATE;
	else if (name_is(n, nl, "public"))
		cc->f |= CC_PUBLIC;
	else if (name_is(n, nl, "must-revalidate"))
		cc->f |= CC_MUST_REVAL;
	else if (name_is(n, nl, "proxy-revalidate"))
		cc->f |= CC_PROXY_REVAL;
	else if (name_is(n, nl, "only-if-cached"))
		cc->f |= CC_ONLY_IF_CACHED;
	else if (name_is(n, nl, "max-age") && !(cc->f & CC_MAX_AGE)) {
		cc->f |= CC_MAX_AGE;
		cc->max_age = delta(v, vl);
	} else if (name_is(n, nl, "s-maxage") && !(cc->f & CC_S_MAXAGE)) {
		cc->f |= CC_S_MAXAGE;
		cc->s_maxage = delta(v, vl);
	} else if (name_is(n, nl, "min-fresh") && !(cc->f & CC_MIN_FRESH)) {
		cc->f |= CC_MIN_FRESH;
		cc->min_fresh = delta(v, vl);
	} else if (name_is(n, nl, "max-stale") && !(cc->f & CC_MAX_STALE)) {
		cc->f |= CC_MAX_STALE;
		cc->max_stale = has_v ? delta(v, vl) : UINT32_MAX;
	}
}

/* Past a quoted-string that starts at p; *inner gets its inside. */
static const char *
quoted(const char *p, const char *end, struct slice *inner)
{
	const char *v = ++p;

	for (; p < end && *p != '"'; p++)
		if (*p == '\\' && p + 1 < end)
			p++;
	*inner = mksl(v, (size_t)(p - v));
	return p < end ? p + 1 : p;
}

/*
 * One Cache-Control field value (RFC 9111 5.2): directives are tokens,
 * arguments tokens or quoted strings ("max-age=5" and max-age="5" are the
 * same), and a quoted string may hold commas.
 */
static void
cc_parse_value(struct cc *cc, struct slice s)
{
	const char *p = s.p, *end = s.p + s.n, *n;
	struct slice v, junk;
	size_t nl;
	int has_v;

	while (p < end) {
		while (p < end && (*p == ',' || is_ows(*p)))
			p++;
		if (p == end)
			break;
		for (n = p; p < end && is_tchar(*p); p++)
			;
		nl = (size_t)(p - n);
		v = mksl(p, 0);
		has_v = 0;
		while (p < end && is_ows(*p))
			p++;
		if (p < end && *p == '=') {
			has_v = 1;
			for (p++; p < end && is_ows(*p); p++)
				;
			if (p < end && *p == '"')
				p = quoted(p, end, &v);
			else {
				for (v.p = p; p < end && is_tchar(*p); p++)
					;
				v.n = (uint32_t)(p - v.p);
			}
		}
		/* Whatever is left up to the comma is junk: skip it. */
		while (p < end && *p != ',')
			p = *p == '"' ? quoted(p, end, &junk) : p + 1;
		if (nl > 0)
			cc_apply(cc, n, nl, v.p, v.n, has_v);
	}
}

static void
cc_parse(const struct http_msg *m, struct cc *cc)
{
	int i;

	memset(cc, 0, sizeof(*cc));
	for (i = 0; i < m->nh; i++)
		if (m->h[i].id == HN_CACHE_CONTROL) {
			cc->f |= CC_PRESENT;
			cc_parse_value(cc, m->h[i].value);
		}
}

/* Pragma: no-cache, which counts only without Cache-Control (5.4). */
static int
pragma_no_cache(const struct http_msg *m)
{
	struct slice el;
	uint32_t off;
	int i;

	for (i = 0; i < m->nh; i++) {
		if (m->h[i].id != HN_PRAGMA)
			continue;
		off = 0;
		while (list_el(m->h[i].value, &off, &el))
			if (slice_eq(el, "no-cache"))
				return 1;
	}
	return 0;
}

/* ------------------------------------------------------------ freshness */

struct meta {
	struct cc cc;		/* the response's directives */
	uint32_t lifetime;
	uint32_t init_age;
	int expl;		/* s-maxage, max-age or Expires given */
	uint16_t flags;		/* O_REVAL, O_NOCACHE, O_VALID */
};

/* RFC 9110 15.1: statuses that are heuristically cacheable. */
static int
heuristic(int st)
{
	switch (st) {
	case 200: case 203: case 204: case 206: case 300: case 301: case 308:
	case 404: case 405: case 410: case 414: case 501:
		return 1;
	}
	return 0;
}

static uint32_t
clamp(int64_t v)
{
	if (v < 0)
		return 0;
	return v > DELTA_MAX ? DELTA_MAX : (uint32_t)v;
}

/*
 * Freshness of a response r with status st (RFC 9111 4.2). Its age comes
 * from am, the message whose Date and Age were just received: r itself
 * when storing, the 304 when refreshing (r is then the merged head).
 */
static void
meta_compute(const struct http_msg *r, int st, const struct http_msg *am,
    int64_t req_time, int64_t resp_time, struct meta *mt)
{
	const struct slice *v;
	int64_t date, exp, lm, adate, apparent, delay, corrected, life;
	uint32_t age_value;
	int have_lm;

	memset(mt, 0, sizeof(*mt));
	cc_parse(r, &mt->cc);
	/* 4.2.1: no Date means the time it was received. */
	if (!hdr_date(r, HN_DATE, &date))
		date = resp_time;
	have_lm = hdr_date(r, HN_LAST_MODIFIED, &lm);
	life = 0;
	if (mt->cc.f & CC_S_MAXAGE) {
		/* 5.2.2.10: a shared cache's own max-age; wins (4.2.1). */
		life = mt->cc.s_maxage;
		mt->expl = 1;
	} else if (mt->cc.f & CC_MAX_AGE) {
		life = mt->cc.max_age;
		mt->expl = 1;
	} else if ((v = hdr(r, HN_EXPIRES)) != NULL) {
		/* 5.3: an invalid Expires ("0") means already expired. */
		mt->expl = 1;
		life = http_date(*v, &exp) == 0 ? exp - date : 0;
	} else if (heuristic(st) && have_lm && lm < date) {
		/* 4.2.2: 10% of the time since it last changed, capped. */
		life = (date - lm) / 10;
		if (life > HEURISTIC_MAX)
			life = HEURISTIC_MAX;
	}
	mt->lifetime = clamp(life);

	/* 4.2.3 */
	if (!hdr_date(am, HN_DATE, &adate))
		adate = resp_time;
	v = hdr(am, HN_AGE);
	age_value = v != NULL ? delta(v->p, v->n) : 0;
	apparent = resp_time - adate > 0 ? resp_time - adate : 0;
	delay = resp_time - req_time > 0 ? resp_time - req_time : 0;
	corrected = (int64_t)age_value + delay;
	mt->init_age = clamp(apparent > corrected ? apparent : corrected);

	if (mt->cc.f & (CC_MUST_REVAL | CC_PROXY_REVAL | CC_S_MAXAGE))
		mt->flags |= O_REVAL;
	if (mt->cc.f & CC_NO_CACHE)
		mt->flags |= O_NOCACHE;
	if (hdr(r, HN_ETAG) != NULL || have_lm)
		mt->flags |= O_VALID;
}

/*
 * May this response to this GET be stored (RFC 9111 3)? req is the
 * request as forwarded, resp the backend's head, mt its freshness.
 */
static int
storable(const struct http_msg *req, const struct http_msg *resp,
    const struct meta *mt)
{
	struct cc rq;
	int st = resp->status;

	/* Partial and not-modified answers are not whole responses. */
	if (st < 200 || st == 206 || st == 304)
		return 0;
	/* A body we can replay needs a length, chunks, or none at all. */
	if (resp->flags & (HF_TE_OTHER | HF_UPGRADE))
		return 0;
	if (!(resp->flags & (HF_CL | HF_CHUNKED | HF_NOBODY)))
		return 0;
	/* 5.2.2.3, 5.2.2.7: private is for the user's own cache only. */
	if (mt->cc.f & (CC_NO_STORE | CC_PRIVATE))
		return 0;
	/* 3: other statuses only with explicit freshness. */
	if (!heuristic(st) && !mt->expl)
		return 0;
	cc_parse(req, &rq);
	if (rq.f & CC_NO_STORE)		/* 5.2.1.5 */
		return 0;
	/* 3.5: an answer to credentials is that user's, unless it says. */
	if (hdr(req, HN_AUTHORIZATION) != NULL &&
	    !(mt->cc.f & (CC_PUBLIC | CC_S_MAXAGE | CC_MUST_REVAL)))
		return 0;
	/*
	 * A cookie handed to one client must not be handed to the next;
	 * stricter than RFC 9111, which leaves this to the origin.
	 */
	if (hdr(resp, HN_SET_COOKIE) != NULL &&
	    !(mt->cc.f & (CC_PUBLIC | CC_S_MAXAGE)))
		return 0;
	/* Never usable without asking, and nothing to ask with: useless. */
	if (!(mt->flags & O_VALID) && ((mt->flags & O_NOCACHE) ||
	    mt->lifetime <= mt->init_age))
		return 0;
	return 1;
}

/* ---------------------------------------------------------------- hash */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))

static void
sipround(uint64_t v[4])
{
	v[0] += v[1];
	v[1] = ROTL(v[1], 13);
	v[1] ^= v[0];
	v[0] = ROTL(v[0], 32);
	v[2] += v[3];
	v[3] = ROTL(v[3], 16);
	v[3] ^= v[2];
	v[0] += v[3];
	v[3] = ROTL(v[3], 21);
	v[3] ^= v[0];
	v[2] += v[1];
	v[1] = ROTL(v[1], 17);
	v[1] ^= v[2];
	v[2] = ROTL(v[2], 32);
}

/* SipHash-2-4 of p[0..n) under C.sipkey, folded to 32 bits. */
static uint32_t
key_hash(const char *p, size_t n)
{
	const unsigned char *s = (const unsigned char *)p;
	uint64_t v[4], m, r;
	size_t i, j;

	v[0] = C.sipkey[0] ^ 0x736f6d6570736575ULL;
	v[1] = C.sipkey[1] ^ 0x646f72616e646f6dULL;
	v[2] = C.sipkey[0] ^ 0x6c7967656e657261ULL;
	v[3] = C.sipkey[1] ^ 0x7465646279746573ULL;
	for (i = 0; i + 8 <= n; i += 8) {
		m = 0;
		for (j = 0; j < 8; j++)
			m |= (uint64_t)s[i + j] << (8 * j);
		v[3] ^= m;
		sipround(v);
		sipround(v);
		v[0] ^= m;
	}
	m = (uint64_t)(n & 0xff) << 56;
	for (j = 0; i + j < n; j++)
		m |= (uint64_t)s[i + j] << (8 * j);
	v[3] ^= m;
	sipround(v);
	sipround(v);
	v[0] ^= m;
	v[2] ^= 0xff;
	for (j = 0; j < 4; j++)
		sipround(v);
	r = v[0] ^ v[1] ^ v[2] ^ v[3];
	return (uint32_t)(r ^ (r >> 32));
}

/* "scheme://host/path", the host lower-cased (RFC 9110 4.2.3), port
 * kept. Returns its length in out (KEY_MAX), or -1. */
static int
key_build(const char *scheme, struct slice host, struct slice path,
    char *out)
{
	size_t sl = strlen(scheme), n;
	uint32_t i;

	if (host.n == 0 || path.n == 0)
		return -1;
	n = sl + 3 + host.n + path.n;
	if (n > KEY_MAX)
		return -1;
	memcpy(out, scheme, sl);
	memcpy(out + sl, "://", 3);
	for (i = 0; i < host.n; i++)
		out[sl + 3 + i] = (char)lower(host.p[i]);
	memcpy(out + sl + 3 + host.n, path.p, path.n);
	return (int)n;
}

/* -------------------------------------------------------------- blocks */

static char *
bptr(uint32_t b)
{
	return C.blk + (size_t)b * BLK;
}

static void
chain_free(struct chain *c)
{
	uint32_t b, nx;

	for (b = c->first; b != NIL; b = nx) {
		nx = C.bnext[b];
		C.bnext[b] = C.freeblk;
		C.freeblk = b;
		C.nfree++;
	}
	c->first = c->last = NIL;
	c->len = c->nblk = 0;
}

static int evict_one(void);

static uint32_t
blk_alloc(void)
{
	uint32_t b;

	while (C.freeblk == NIL)
		if (!evict_one())
			return NIL;
	b = C.freeblk;
	C.freeblk = C.bnext[b];
	C.bnext[b] = NIL;
	C.nfree--;
	return b;
}

/* Append p[0..n), taking blocks (evicting for them); -1 when none. */
static int
chain_append(struct chain *c, const char *p, size_t n)
{
	uint32_t b, in;
	size_t k;

	while (n > 0) {
		in = c->len % BLK;
		if (c->first == NIL || in == 0) {
			if ((b = blk_alloc()) == NIL)
				return -1;
			if (c->first == NIL)
				c->first = b;
			else
				C.bnext[c->last] = b;
			c->last = b;
			c->nblk++;
		}
		k = BLK - in;
		if (k > n)
			k = n;
		memcpy(bptr(c->last) + in, p, k);
		c->len += (uint32_t)k;
		p += k;
		n -= k;
	}
	return 0;
}

/* The block holding byte off of c; *in is its place in that block. */
static uint32_t
chain_seek(const struct chain *c, uint32_t off, uint32_t *in)
{
	uint32_t b = c->first;

	while (off >= BLK) {
		b = C.bnext[b];
		off -= BLK;
	}
	*in = off;
	return b;
}

/* Callers keep off + n within c->len. */
static void
chain_read(const struct chain *c, uint32_t off, char *dst, size_t n)
{
	uint32_t b, in;
	size_t k;

	b = chain_seek(c, off, &in);
	for (; n > 0; b = C.bnext[b], in = 0) {
		k = BLK - in < n ? BLK - in : n;
		memcpy(dst, bptr(b) + in, k);
		dst += k;
		n -= k;
	}
}

static void
chain_write(const struct chain *c, uint32_t off, const char *src, size_t n)
{
	uint32_t b, in;
	size_t k;

	b = chain_seek(c, off, &in);
	for (; n > 0; b = C.bnext[b], in = 0) {
		k = BLK - in < n ? BLK - in : n;
		memcpy(bptr(b) + in, src, k);
		src += k;
		n -= k;
	}
}

static int
chain_eq(const struct chain *c, uint32_t off, const char *p, size_t n)
{
	uint32_t b, in;
	size_t k;

	b = chain_seek(c, off, &in);
	for (; n > 0; b = C.bnext[b], in = 0) {
		k = BLK - in < n ? BLK - in : n;
		if (memcmp(bptr(b) + in, p, k) != 0)
			return 0;
		p += k;
		n -= k;
	}
	return 1;
}

/* Append n bytes of src from off to dst (src must not be evictable). */
static int
chain_copy(struct chain *dst, const struct chain *src, uint32_t off,
    size_t n)
{
	uint32_t b, in;
	size_t k;

	if (n == 0)
		return 0;
	b = chain_seek(src, off, &in);
	for (; n > 0; b = C.bnext[b], in = 0) {
		k = BLK - in < n ? BLK - in : n;
		if (chain_append(dst, bptr(b) + in, k) != 0)
			return -1;
		n -= k;
	}
	return 0;
}

/* ------------------------------------------------------------- objects */

static void
lru_unlink(uint32_t i)
{
	struct obj *o = &C.obj[i];

	if (o->prev != NIL)
		C.obj[o->prev].next = o->next;
	else
		C.lru_head = o->next;
	if (o->next != NIL)
		C.obj[o->next].prev = o->prev;
	else
		C.lru_tail = o->prev;
	o->prev = o->next = NIL;
}

static void
lru_push(uint32_t i)
{
	struct obj *o = &C.obj[i];

	o->prev = NIL;
	o->next = C.lru_head;
	if (C.lru_head != NIL)
		C.obj[C.lru_head].prev = i;
	else
		C.lru_tail = i;
	C.lru_head = i;
}

/* Drop an object whatever its state: readers and its writer see -1. */
static void
obj_drop(uint32_t i)
{
	struct obj *o = &C.obj[i];
	uint32_t *pp;

	for (pp = &C.bucket[o->hash & C.mask]; *pp != i;
	    pp = &C.obj[*pp].hnext)
		;
	*pp = o->hnext;
	if (o->flags & O_COMPLETE) {
		if (!(o->flags & O_PINNED))
			lru_unlink(i);
		C.st.objects--;
	}
	chain_free(&o->c);
	o->gen = (o->gen | 0xff) + 1;
	if (o->gen < GEN_INC)
		o->gen = GEN_INC;	/* after 2^24 reuses: never 0 */
	o->flags = 0;
	o->next = C.freeobj;
	C.freeobj = i;
}

/* The least recently used complete object goes; 0 when there is none. */
static int
evict_one(void)
{
	if (C.lru_tail == NIL)
		return 0;
	obj_drop(C.lru_tail);
	C.st.evictions++;
	return 1;
}

static uint32_t
obj_alloc(void)
{
	struct obj *o;
	uint32_t i, gen;

	while (C.freeobj == NIL)
		if (!evict_one())
			return NIL;
	i = C.freeobj;
	o = &C.obj[i];
	C.freeobj = o->next;
	gen = o->gen;
	memset(o, 0, sizeof(*o));
	o->gen = gen;
	o->prev = o->next = o->hnext = NIL;
	o->c.first = o->c.last = NIL;
	return i;
}

static int
key_eq(const struct obj *o, uint32_t h, const char *key, size_t klen)
{
	return o->hash == h && o->keylen == klen &&
	    chain_eq(&o->c, 0, key, klen);
}

/* The object a ref names, if it still exists; whole: the head too. */
static struct obj *
ref_obj(const struct cache_ref *r, int whole)
{
	struct obj *o;

	if (C.arena == NULL || r->obj >= C.nobj)
		return NULL;
	o = &C.obj[r->obj];
	if (!(o->flags & O_COMPLETE))
		return NULL;
	if (whole ? o->gen != r->gen : (o->gen >> 8) != (r->gen >> 8))
		return NULL;
	return o;
}

/* ---------------------------------------------------------------- Vary */

/*
 * The values of field name[0..nl) in m joined by ", " (RFC 9110 5.3)
 * into out; -1 when absent, -2 when longer than cap.
 */
static int
req_value(const struct http_msg *m, const char *name, size_t nl, char *out,
    size_t cap)
{
	size_t n = 0;
	int i, found = 0;

	for (i = 0; i < m->nh; i++) {
		if (m->h[i].name.n != nl || !mem_ieq(m->h[i].name.p, name, nl))
			continue;
		if (found) {
			if (cap - n < 2)
				return -2;
			memcpy(out + n, ", ", 2);
			n += 2;
		}
		found = 1;
		if (cap - n < m->h[i].value.n)
			return -2;
		memcpy(out + n, m->h[i].value.p, m->h[i].value.n);
		n += m->h[i].value.n;
	}
	return found ? (int)n : -1;
}

/*
 * Vary data (RFC 9111 4.1): one line per field the response's Vary names,
 * "name:value\n" with the request's value, or "name\n" when the request
 * had none. -1 for Vary: * (never matches) or when it does not fit.
 */
static int
vary_build(const struct http_msg *resp, const struct http_msg *req,
    char *out, size_t cap)
{
	struct slice el;
	uint32_t off, j;
	size_t n = 0;
	int i, v;

	for (i = 0; i < resp->nh; i++) {
		if (resp->h[i].id != HN_VARY)
			continue;
		off = 0;
		while (list_el(resp->h[i].value, &off, &el)) {
			if (el.n == 1 && el.p[0] == '*')
				return -1;
			for (j = 0; j < el.n; j++)
				if (!is_tchar(el.p[j]))
					return -1;
			if (cap - n < (size_t)el.n + 2)
				return -1;
			for (j = 0; j < el.n; j++)
				out[n + j] = (char)lower(el.p[j]);
			v = req_value(req, el.p, el.n, out + n + el.n + 1,
			    cap - n - el.n - 2);
			if (v == -2)
				return -1;
			if (v >= 0) {
				out[n + el.n] = ':';
				n += el.n + 1 + (size_t)v;
			} else
				n += el.n;
			out[n++] = '\n';
		}
	}
	return (int)n;
}

/* Does req select the stored variant o (same values, absent = absent)? */
static int
vary_match(const struct obj *o, const struct http_msg *req)
{
	const char *p, *end, *nl, *colon;
	size_t namelen;
	int v;

	if (o->varylen == 0)
		return 1;
	chain_read(&o->c, o->keylen, C.vary, o->varylen);
	p = C.vary;
	end = p + o->varylen;
	while (p < end) {
		nl = memchr(p, '\n', (size_t)(end - p));
		if (nl == NULL)
			return 0;
		colon = memchr(p, ':', (size_t)(nl - p));
		namelen = (size_t)((colon != NULL ? colon : nl) - p);
		v = req_value(req, p, namelen, C.tmp, VARY_MAX);
		if (colon == NULL) {
			if (v != -1)
				return 0;
		} else if (v < 0 || (size_t)v != (size_t)(nl - colon - 1) ||
		    memcmp(C.tmp, colon + 1, (size_t)v) != 0)
			return 0;
		p = nl + 1;
	}
	return 1;
}

/* ------------------------------------------------------------- init */

static size_t
align16(size_t n)
{
	return (n + 15) & ~(size_t)15;
}

/* Bytes of arena for nblk blocks, with the slot and bucket counts. */
static size_t
layout(size_t nblk, size_t head_max, uint32_t *nobj, uint32_t *nbucket)
{
	size_t no, nb;

	no = nblk / SLOTS_PER;
	if (no < 2)
		no = 2;
	for (nb = 1; nb < no; nb <<= 1)
		;
	*nobj = (uint32_t)no;
	*nbucket = (uint32_t)nb;
	return align16(nblk * BLK) + align16(nblk * sizeof(uint32_t)) +
	    align16(no * sizeof(struct obj)) +
	    align16(nb * sizeof(uint32_t)) +
	    align16(NWRITER * sizeof(struct writer)) +
	    2 * align16(sizeof(struct http_msg)) + align16(head_max) +
	    align16(head_max + OUT_EXTRA) + align16(KEY_MAX) +
	    2 * align16(VARY_MAX);
}

static uint64_t
mix64(uint64_t x)
{
	x += 0x9e3779b97f4a7c15ULL;
	x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
	x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
	return x ^ (x >> 31);
}

static void
seed(void)
{
	struct timespec a, b;

	if (getrandom(C.sipkey, sizeof(C.sipkey), GRND_NONBLOCK) ==
	    (ssize_t)sizeof(C.sipkey))
		return;
	/* No entropy yet (early boot): weaker, but still not guessable
	 * from outside without the clocks and the address layout. */
	clock_gettime(CLOCK_REALTIME, &a);
	clock_gettime(CLOCK_MONOTONIC, &b);
	C.sipkey[0] = mix64((uint64_t)a.tv_nsec ^ (uint64_t)a.tv_sec << 30 ^
	    (uint64_t)(uintptr_t)C.arena);
	C.sipkey[1] = mix64((uint64_t)b.tv_nsec ^ (uint64_t)b.tv_sec << 30 ^
	    (uint64_t)getpid() ^ C.sipkey[0]);
}

int
cache_init(size_t size, size_t max_object)
{
	size_t head_max, nblk, fixed, per;
	uint32_t nobj, nbucket, i;
	char *p;

	cache_free();
	if (size == 0)
		return 0;
	if (max_object == 0 || max_object > size)
		max_object = size;
	/* ref->off keeps a body offset in 31 bits. */
	if (max_object >= BODY_PHASE)
		max_object = BODY_PHASE - 1;
	head_max = max_object < HEAD_MAX ? max_object : HEAD_MAX;

	fixed = layout(0, head_max, &nobj, &nbucket);
	per = BLK + sizeof(uint32_t) +
	    (sizeof(struct obj) + 2 * sizeof(uint32_t)) / SLOTS_PER + 1;
	if (size <= fixed)
		return -1;
	nblk = (size - fixed) / per;
	if (nblk >= NIL / 2)
		nblk = NIL / 2;
	while (nblk >= 4 && layout(nblk, head_max, &nobj, &nbucket) > size)
		nblk--;
	if (nblk < 4)
		return -1;

	if ((C.arena = calloc(1, size)) == NULL)
		return -1;
	p = C.arena;
	C.blk = p;
	p += align16(nblk * BLK);
	C.bnext = (uint32_t *)(void *)p;
	p += align16(nblk * sizeof(uint32_t));
	C.obj = (struct obj *)(void *)p;
	p += align16((size_t)nobj * sizeof(struct obj));
	C.bucket = (uint32_t *)(void *)p;
	p += align16((size_t)nbucket * sizeof(uint32_t));
	C.wr = (struct writer *)(void *)p;
	p += align16(NWRITER * sizeof(struct writer));
	C.msg = (struct http_msg *)(void *)p;
	p += align16(sizeof(struct http_msg));
	C.req = (struct http_msg *)(void *)p;
	p += align16(sizeof(struct http_msg));
	C.raw = p;
	p += align16(head_max);
	C.out = p;
	p += align16(head_max + OUT_EXTRA);
	C.key = p;
	p += align16(KEY_MAX);
	C.vary = p;
	p += align16(VARY_MAX);
	C.tmp = p;

	C.size = size;
	C.max_object = max_object;
	C.head_max = head_max;
	C.outcap = head_max + OUT_EXTRA;
	C.nblk = (uint32_t)nblk;
	C.nobj = nobj;
	C.mask = nbucket - 1;
	seed();
	for (i = 0; i < C.nblk; i++)
		C.bnext[i] = i + 1 < C.nblk ? i + 1 : NIL;
	C.freeblk = 0;
	C.nfree = C.nblk;
	/*
	 * Generations and writer ids start at random: a ref or a writer id
	 * kept across cache_free and cache_init (a reload) then matches
	 * nothing, bar a 2^-24 (2^-15 for writers) chance.
	 */
	for (i = 0; i < nobj; i++) {
		C.obj[i].gen = (uint32_t)mix64(C.sipkey[0] + i) & ~0xffu;
		if (C.obj[i].gen < GEN_INC)
			C.obj[i].gen = GEN_INC;
		C.obj[i].next = i + 1 < nobj ? i + 1 : NIL;
	}
	C.freeobj = 0;
	for (i = 0; i < nbucket; i++)
		C.bucket[i] = NIL;
	for (i = 0; i < NWRITER; i++)
		C.wr[i].seq = (uint16_t)(mix64(C.sipkey[1] + i) % 0x7fff + 1);
	C.lru_head = C.lru_tail = NIL;
	C.st.bytes_total = size;
	return 0;
}

void
cache_free(void)
{
	free(C.arena);
	memset(&C, 0, sizeof(C));
}

/* ------------------------------------------------------ validators */

/* Copy o's head out and parse it into C.msg. */
static int
head_load(const struct obj *o)
{
	chain_read(&o->c, (uint32_t)o->keylen + o->varylen, C.raw,
	    o->headlen);
	return http_parse_response(C.raw, o->headlen, 0, C.msg) ==
	    (int)o->headlen ? 0 : -1;
}

/* The next entity-tag of an If-None-Match list; quotes may hold commas. */
static int
etag_next(struct slice s, uint32_t *off, struct slice *el)
{
	uint32_t a, i = *off;

	while (i < s.n && (s.p[i] == ',' || is_ows(s.p[i])))
		i++;
	if (i >= s.n)
		return 0;
	a = i;
	if (s.n - i >= 2 && (s.p[i] == 'W' || s.p[i] == 'w') &&
	    s.p[i + 1] == '/')
		i += 2;
	if (i < s.n && s.p[i] == '"') {
		for (i++; i < s.n && s.p[i] != '"'; i++)
			;
		if (i < s.n)
			i++;
	} else
		while (i < s.n && s.p[i] != ',' && !is_ows(s.p[i]))
			i++;
	*el = mksl(s.p + a, i - a);
	while (i < s.n && s.p[i] != ',')
		i++;
	*off = i;
	return 1;
}

/* Weak comparison (RFC 9110 8.8.3.2): equal opaque tags, W/ or not. */
static int
etag_weak_eq(struct slice a, struct slice b)
{
	if (a.n >= 2 && (a.p[0] == 'W' || a.p[0] == 'w') && a.p[1] == '/')
		a = mksl(a.p + 2, a.n - 2);
	if (b.n >= 2 && (b.p[0] == 'W' || b.p[0] == 'w') && b.p[1] == '/')
		b = mksl(b.p + 2, b.n - 2);
	return a.n > 0 && a.n == b.n && memcmp(a.p, b.p, a.n) == 0;
}

/*
 * The client's own conditions against a fresh stored 200 (RFC 9111
 * 4.3.2, RFC 9110 13.1.2-3): If-None-Match by weak comparison; without
 * it, If-Modified-Since against Last-Modified, else Date, else when it
 * was received. 1: answer 304.
 */
static int
not_modified(const struct obj *o, const struct http_msg *m)
{
	const struct slice *etag;
	struct slice el;
	int64_t ims, lm;
	uint32_t off;
	int i, inm = 0;

	for (i = 0; i < m->nh; i++)
		if (m->h[i].id == HN_IF_NONE_MATCH)
			inm = 1;
	if (!inm && !hdr_date(m, HN_IF_MODIFIED_SINCE, &ims))
		return 0;
	if (head_load(o) != 0)
		return 0;
	if (inm) {
		etag = hdr(C.msg, HN_ETAG);
		for (i = 0; i < m->nh; i++) {
			if (m->h[i].id != HN_IF_NONE_MATCH)
				continue;
			off = 0;
			while (etag_next(m->h[i].value, &off, &el))
				if ((el.n == 1 && el.p[0] == '*') ||
				    (etag != NULL && etag_weak_eq(el, *etag)))
					return 1;
		}
		return 0;
	}
	if (!hdr_date(C.msg, HN_LAST_MODIFIED, &lm) &&
	    !hdr_date(C.msg, HN_DATE, &lm))
		lm = o->resp_time;
	return lm <= ims;
}

static int
cond_put(char *cond, size_t cap, size_t *n, const char *name,
    struct slice v)
{
	size_t nl = strlen(name);

	if (cap - *n < nl + v.n + 3)
		return -1;
	memcpy(cond + *n, name, nl);
	memcpy(cond + *n + nl, v.p, v.n);
	memcpy(cond + *n + nl + v.n, "\r\n", 2);
	*n += nl + v.n + 2;
	cond[*n] = '\0';
	return 0;
}

/* The conditional lines to revalidate o with (RFC 9111 4.3.1). */
static int
cond_build(const struct obj *o, char *cond, size_t cap)
{
	const struct slice *v;
	int64_t t;
	size_t n = 0;

	if (cap == 0 || head_load(o) != 0)
		return -1;
	if ((v = hdr(C.msg, HN_ETAG)) != NULL &&
	    cond_put(cond, cap, &n, "If-None-Match: ", *v) != 0)
		return -1;
	if ((v = hdr(C.msg, HN_LAST_MODIFIED)) != NULL &&
	    http_date(*v, &t) == 0 &&
	    cond_put(cond, cap, &n, "If-Modified-Since: ", *v) != 0)
		return -1;
	return n > 0 ? 0 : -1;
}

/* ------------------------------------------------------------- lookup */

static uint32_t
cur_age(const struct obj *o, int64_t now)
{
	int64_t a = o->init_age;

	if (now > o->resp_time)
		a += now - o->resp_time;
	return clamp(a);
}

static int
method_is(const struct http_msg *m, const char *lit)
{
	size_t n = strlen(lit);

	return m->method.n == n && memcmp(m->method.p, lit, n) == 0;
}

/* The newest complete variant of key that m selects, or NIL. */
static uint32_t
find(const char *key, size_t klen, uint32_t h, const struct http_msg *m)
{
	uint32_t i;

	for (i = C.bucket[h & C.mask]; i != NIL; i = C.obj[i].hnext)
		if ((C.obj[i].flags & O_COMPLETE) &&
		    key_eq(&C.obj[i], h, key, klen) && vary_match(&C.obj[i], m))
			return i;
	return NIL;
}

/*
 * Stats: hits count what is answered from the cache alone (HIT, NOTMOD),
 * misses every GET or HEAD that needs the backend (MISS, STALE, 504),
 * revalidated the STALE ones a 304 then refreshed.
 */
int
cache_lookup(const struct http_msg *m, const char *scheme, int64_t now,
    struct cache_ref *ref, char *cond, size_t condcap)
{
	struct cc rq;
	struct obj *o;
	uint32_t i, age;
	int klen, fresh, usable, what;

	memset(ref, 0, sizeof(*ref));
	ref->what = CACHE_MISS;
	if (cond != NULL && condcap > 0)
		cond[0] = '\0';
	if (C.arena == NULL || (!method_is(m, "GET") && !method_is(m, "HEAD")))
		return CACHE_MISS;
	cc_parse(m, &rq);
	if (!(rq.f & CC_PRESENT) && pragma_no_cache(m))
		rq.f |= CC_NO_CACHE;		/* RFC 9111 5.4 */
	klen = key_build(scheme, m->host, m->path, C.key);
	i = klen > 0 ? find(C.key, (size_t)klen,
	    key_hash(C.key, (size_t)klen), m) : NIL;
	if (i == NIL)
		goto miss;
	o = &C.obj[i];
	age = cur_age(o, now);
	fresh = o->lifetime > age;		/* 4.2 */
	if (fresh)
		usable = 1;
	else
		/* 5.2.1.2: the client takes it stale, unless forbidden. */
		usable = (rq.f & CC_MAX_STALE) && !(o->flags & O_REVAL) &&
		    (rq.max_stale == UINT32_MAX ||
		    age - o->lifetime <= rq.max_stale);
	if ((rq.f & CC_MAX_AGE) && age > rq.max_age)	/* 5.2.1.1 */
		usable = 0;
	if (fresh && (rq.f & CC_MIN_FRESH) &&		/* 5.2.1.3 */
	    (uint64_t)age + rq.min_fresh > o->lifetime)
		usable = 0;
	if ((rq.f & CC_NO_CACHE) || (o->flags & O_NOCACHE))
		usable = 0;			/* 5.2.1.4, 5.2.2.4 */
	lru_unlink(i);
	lru_push(i);
	if (usable) {
		what = CACHE_HIT;
		if (o->status == 200 && not_modified(o, m))
			what = CACHE_NOTMOD;
		C.st.hits++;
		ref->obj = i;
		ref->gen = o->gen;
		ref->age = age;
		ref->what = (uint8_t)what;
		return what;
	}
	if (!(rq.f & CC_ONLY_IF_CACHED) && (o->flags & O_VALID) &&
	    cond != NULL && cond_build(o, cond, condcap) == 0) {
		C.st.misses++;
		ref->obj = i;
		ref->gen = o->gen;
		ref->age = age;
		ref->what = CACHE_STALE;
		return CACHE_STALE;
	}
	if (cond != NULL && condcap > 0)
		cond[0] = '\0';
miss:
	C.st.misses++;
	/* 5.2.1.7: only-if-cached and nothing we may serve: 504. */
	if (rq.f & CC_ONLY_IF_CACHED) {
		ref->what = CACHE_GATEWAY_TIMEOUT;
		return CACHE_GATEWAY_TIMEOUT;
	}
	return CACHE_MISS;
}

/* ------------------------------------------------------------ reading */

/* Fields a 304 carries over from the 200 it stands for (RFC 9110 15.4.5). */
static int
keep_in_304(int id)
{
	return id == HN_CACHE_CONTROL || id == HN_CONTENT_LOCATION ||
	    id == HN_DATE || id == HN_ETAG || id == HN_EXPIRES ||
	    id == HN_VARY || id == HN_LAST_MODIFIED;
}

/*
 * Write the head a reader of ref gets into out: the stored head through
 * http_write_response with our Age and X-Cache in place of any stored
 * ones, or the 304 made from it. -1 when it does not fit in cap.
 */
static int
head_write(const struct obj *ob, const struct cache_ref *ref,
    const struct http_rsp *o, char *out, size_t cap)
{
	static const struct http_rsp none;
	struct http_msg *m = C.msg;
	const char *xc;
	int i, j, n;

	if (head_load(ob) != 0)
		return -1;
	for (i = j = 0; i < m->nh; i++) {
		if (m->h[i].id == HN_AGE || m->h[i].id == HN_X_CACHE)
			continue;
		if (ref->what == CACHE_NOTMOD && !keep_in_304(m->h[i].id))
			continue;
		m->h[j++] = m->h[i];
	}
	if (j > HTTP_MAX_HEADERS - 2)
		return -1;
	n = snprintf(C.agebuf, sizeof(C.agebuf), "%u", (unsigned)ref->age);
	xc = ref->what == CACHE_STALE ? "REVALIDATED" : "HIT";
	m->h[j].name = mksl("Age", 3);
	m->h[j].id = HN_AGE;
	m->h[j++].value = mksl(C.agebuf, (size_t)n);
	m->h[j].name = mksl("X-Cache", 7);
	m->h[j].id = HN_X_CACHE;
	m->h[j++].value = mksl(xc, strlen(xc));
	m->nh = j;
	if (ref->what == CACHE_NOTMOD) {
		m->status = 304;
		m->reason = mksl("Not Modified", 12);
	}
	return http_write_response(out, cap, m, o != NULL ? o : &none);
}

/*
 * ref->off: while the head is being sent, the bytes of it sent; then
 * BODY_PHASE plus the body bytes sent. The head is written afresh on
 * each call until it is out (the same bytes: same object, same Age).
 * cap must be > 0, or 0 would read as the end.
 */
long
cache_read(struct cache_ref *ref, char *dst, size_t cap,
    const struct http_rsp *o, int head_only, int64_t now)
{
	struct obj *ob;
	size_t done = 0, k;
	uint32_t boff;
	int hl;

	if ((ob = ref_obj(ref, !(ref->off & BODY_PHASE))) == NULL)
		return -1;
	if (!(ref->off & BODY_PHASE)) {
		hl = -1;
		if (ref->off == 0 && cap > 0)
			hl = head_write(ob, ref, o, dst, cap);
		if (hl >= 0) {
			done = (size_t)hl;
		} else {
			hl = head_write(ob, ref, o, C.out, C.outcap);
			if (hl < 0 || (uint32_t)hl <= ref->off)
				return -1;
			k = (size_t)hl - ref->off;
			if (k > cap)
				k = cap;
			memcpy(dst, C.out + ref->off, k);
			ref->off += (uint32_t)k;
			if (ref->off < (uint32_t)hl)
				return (long)k;
			done = k;
		}
		ref->off = BODY_PHASE;
	}
	if (head_only || ref->what == CACHE_NOTMOD)
		return (long)done;
	boff = ref->off & ~BODY_PHASE;
	k = ob->body_len - boff;
	if (k > cap - done)
		k = cap - done;
	if (k > 0) {
		chain_read(&ob->c, ob->body_off + boff, dst + done, k);
		ref->off += (uint32_t)k;
		done += k;
	}
	return (long)done;
}

int
cache_chunked(const struct cache_ref *ref)
{
	struct obj *o;

	if ((o = ref_obj(ref, 0)) == NULL)
		return -1;
	if (ref->what == CACHE_NOTMOD)
		return 0;
	return (o->flags & O_CHUNKED) != 0;
}

int
cache_status(const struct cache_ref *ref)
{
	struct obj *o;

	if ((o = ref_obj(ref, 0)) == NULL)
		return -1;
	return ref->what == CACHE_NOTMOD ? 304 : o->status;
}

/* ------------------------------------------------------------ writing */

static struct writer *
writer_get(int id)
{
	struct writer *w;

	if (C.arena == NULL || id < 0 || (id & 0xff) >= NWRITER)
		return NULL;
	w = &C.wr[id & 0xff];
	if (!w->used || w->seq != (unsigned)id >> 8)
		return NULL;
	return w;
}

static void
writer_end(struct writer *w)
{
	w->used = 0;
	w->seq = (uint16_t)(w->seq % 0x7fff + 1);
}

/* The writer's object, unless it was invalidated meanwhile. */
static struct obj *
writer_obj(const struct writer *w)
{
	struct obj *o = &C.obj[w->obj];

	return o->gen == w->gen && (o->flags & O_WRITING) ? o : NULL;
}

int
cache_store_begin(const char *req, size_t reqlen, const char *scheme,
    const struct http_msg *resp, const char *resp_raw, int64_t req_time,
    int64_t resp_time)
{
	struct http_msg *rq = C.req;
	struct meta mt;
	struct writer *w;
	struct obj *o;
	uint32_t h, i, oldest, victim[NVICTIM], vgen[NVICTIM];
	int klen, vlen, wi, nv, nsame;

	if (C.arena == NULL || resp == NULL || resp_raw == NULL ||
	    http_parse_request(req, reqlen, rq) <= 0 || !method_is(rq, "GET"))
		return -1;
	/* Room for Age, X-Cache, Via and Connection when written out. */
	if (resp->head_len == 0 || resp->head_len > C.head_max ||
	    resp->nh > HTTP_MAX_HEADERS - 4)
		return -1;
	if ((resp->flags & HF_CL) &&
	    resp->clen > C.max_object - resp->head_len)
		return -1;
	meta_compute(resp, resp->status, resp, req_time, resp_time, &mt);
	if (!storable(rq, resp, &mt))
		return -1;
	if ((klen = key_build(scheme, rq->host, rq->path, C.key)) < 0)
		return -1;
	for (wi = 0; wi < NWRITER && C.wr[wi].used; wi++)
		;
	if (wi == NWRITER)
		return -1;

	/*
	 * Another writer of this variant: refuse, one copy is enough. The
	 * complete ones this request selects are replaced when this one
	 * completes (RFC 9111 4.1: the newest is the one to use).
	 */
	h = key_hash(C.key, (size_t)klen);
	nv = nsame = 0;
	oldest = NIL;
	for (i = C.bucket[h & C.mask]; i != NIL; i = C.obj[i].hnext) {
		o = &C.obj[i];
		if (!key_eq(o, h, C.key, (size_t)klen))
			continue;
		if (o->flags & O_COMPLETE) {
			nsame++;
			oldest = i;	/* the newest are first */
		}
		if (!vary_match(o, rq))
			continue;
		if (o->flags & O_WRITING)
			return -1;
		if (nv < NVICTIM) {
			victim[nv] = i;
			vgen[nv++] = o->gen;
		}
	}
	if ((vlen = vary_build(resp, rq, C.vary, VARY_MAX)) < 0)
		return -1;
	if (nsame >= MAX_VARIANTS)
		obj_drop(oldest);

	if ((i = obj_alloc()) == NIL)
		return -1;
	o = &C.obj[i];
	o->flags = O_WRITING | mt.flags |
	    ((resp->flags & HF_CHUNKED) ? O_CHUNKED : 0);
	o->hash = h;
	o->keylen = (uint16_t)klen;
	o->varylen = (uint16_t)vlen;
	o->headlen = (uint16_t)resp->head_len;
	o->status = (uint16_t)resp->status;
	o->lifetime = mt.lifetime;
	o->init_age = mt.init_age;
	o->resp_time = resp_time;
	o->hnext = C.bucket[h & C.mask];
	C.bucket[h & C.mask] = i;
	if (chain_append(&o->c, C.key, (size_t)klen) != 0 ||
	    chain_append(&o->c, C.vary, (size_t)vlen) != 0 ||
	    chain_append(&o->c, resp_raw, resp->head_len) != 0) {
		obj_drop(i);
		return -1;
	}
	o->body_off = o->c.len;

	w = &C.wr[wi];
	w->used = 1;
	w->obj = i;
	w->gen = o->gen;
	w->clen = resp->clen;
	w->mode = (resp->flags & HF_NOBODY) ? W_NOBODY :
	    (resp->flags & HF_CHUNKED) ? W_CHUNKED : W_LEN;
	http_chunk_init(&w->ch);
	w->nvictim = nv;
	memcpy(w->victim, victim, sizeof(victim[0]) * (size_t)nv);
	memcpy(w->vgen, vgen, sizeof(vgen[0]) * (size_t)nv);
	return (int)((unsigned)w->seq << 8 | (unsigned)wi);
}

static int
store_fail(struct writer *w)
{
	struct obj *o;

	if ((o = writer_obj(w)) != NULL)
		obj_drop(w->obj);
	writer_end(w);
	return -1;
}

int
cache_store_append(int id, const char *p, size_t n)
{
	struct writer *w;
	struct obj *o;
	long r;
	int done;

	if ((w = writer_get(id)) == NULL)
		return -1;
	if ((o = writer_obj(w)) == NULL)
		return store_fail(w);
	if (n == 0)
		return 0;
	if (n > C.max_object - o->headlen - o->body_len)
		return store_fail(w);
	switch (w->mode) {
	case W_NOBODY:
		return store_fail(w);
	case W_LEN:
		if (o->body_len + n > w->clen)
			return store_fail(w);
		break;
	case W_CHUNKED:
		/* The loop checked the framing; a stored copy is checked
		 * again, since we will replay it to many. */
		r = http_chunk_scan(&w->ch, p, n, &done);
		if (r < 0 || (size_t)r != n)
			return store_fail(w);
		break;
	}
	if (chain_append(&o->c, p, n) != 0)
		return store_fail(w);
	o->body_len += (uint32_t)n;
	return 0;
}

void
cache_store_end(int id, int complete)
{
	struct writer *w;
	struct obj *o, *v;
	int i, done;

	if ((w = writer_get(id)) == NULL)
		return;
	if ((o = writer_obj(w)) == NULL) {
		writer_end(w);
		return;
	}
	if (w->mode == W_LEN && o->body_len != w->clen)
		complete = 0;
	if (w->mode == W_CHUNKED &&
	    (http_chunk_scan(&w->ch, "", 0, &done) < 0 || !done))
		complete = 0;
	if (!complete) {
		store_fail(w);
		return;
	}
	for (i = 0; i < w->nvictim; i++) {
		v = &C.obj[w->victim[i]];
		if (v->gen == w->vgen[i] && (v->flags & O_COMPLETE))
			obj_drop(w->victim[i]);
	}
	o->flags = (uint16_t)((o->flags & ~O_WRITING) | O_COMPLETE);
	lru_push(w->obj);
	C.st.objects++;
	C.st.stores++;
	writer_end(w);
}

/* ---------------------------------------------------------- refreshing */

/*
 * Fields a 304 does not update (RFC 9111 3.2): framing, and what is
 * about the connection it came on rather than the response.
 */
static int
not_updated(int id)
{
	switch (id) {
	case HN_CONTENT_LENGTH:
	case HN_TRANSFER_ENCODING:
	case HN_CONNECTION:
	case HN_KEEP_ALIVE:
	case HN_TE:
	case HN_TRAILER:
	case HN_UPGRADE:
	case HN_PROXY_CONNECTION:
	case HN_X_CACHE:
		return 1;
	}
	return 0;
}

static int
put(char *out, size_t cap, size_t *n, const char *p, size_t k)
{
	if (cap - *n < k)
		return -1;
	memcpy(out + *n, p, k);
	*n += k;
	return 0;
}

static int
put_field(char *out, size_t cap, size_t *n, const struct http_hdr *h)
{
	if (put(out, cap, n, h->name.p, h->name.n) != 0 ||
	    put(out, cap, n, ": ", 2) != 0 ||
	    put(out, cap, n, h->value.p, h->value.n) != 0)
		return -1;
	return put(out, cap, n, "\r\n", 2);
}

/* The stored head old (raw bytes raw) updated by the 304 r, into out. */
static int
merge_head(const struct http_msg *old, const char *raw,
    const struct http_msg *r, char *out, size_t cap)
{
	const char *eol;
	size_t n = 0;
	int i, j, replaced;

	eol = memchr(raw, '\n', old->head_len);
	if (eol == NULL ||
	    put(out, cap, &n, raw, (size_t)(eol - raw) + 1) != 0)
		return -1;
	for (i = 0; i < old->nh; i++) {
		replaced = 0;
		for (j = 0; j < r->nh && !replaced; j++)
			replaced = !not_updated(r->h[j].id) &&
			    sl_ieq(r->h[j].name, old->h[i].name);
		if (!replaced && put_field(out, cap, &n, &old->h[i]) != 0)
			return -1;
	}
	for (j = 0; j < r->nh; j++)
		if (!not_updated(r->h[j].id) &&
		    put_field(out, cap, &n, &r->h[j]) != 0)
			return -1;
	if (put(out, cap, &n, "\r\n", 2) != 0)
		return -1;
	return (int)n;
}

/*
 * RFC 9111 4.3.4. The merged head goes where the old one was when it
 * fits there (readers of the body carry on); else the object is copied
 * into a new chain and readers of the old one get -1.
 */
int
cache_refresh(struct cache_ref *ref, const struct http_msg *resp,
    int64_t req_time, int64_t resp_time)
{
	const struct slice *new_tag, *old_tag;
	struct chain nc;
	struct meta mt;
	struct obj *o;
	uint32_t i, hoff;
	int mlen, ok;

	if ((o = ref_obj(ref, 0)) == NULL || resp->status != 304)
		return -1;
	i = ref->obj;
	if (head_load(o) != 0)
		return -1;
	/* 4.3.4: a 304 naming another ETag is about another response. */
	new_tag = hdr(resp, HN_ETAG);
	old_tag = hdr(C.msg, HN_ETAG);
	if (new_tag != NULL && old_tag != NULL &&
	    !etag_weak_eq(*new_tag, *old_tag))
		return -1;
	mlen = merge_head(C.msg, C.raw, resp, C.out, C.head_max);
	if (mlen < 0 || http_parse_response(C.out, (size_t)mlen, 0, C.msg) !=
	    mlen || C.msg->nh > HTTP_MAX_HEADERS - 4) {
		obj_drop(i);
		return -1;
	}
	meta_compute(C.msg, o->status, resp, req_time, resp_time, &mt);

	hoff = (uint32_t)o->keylen + o->varylen;
	if ((uint32_t)mlen <= o->body_off - hoff) {
		chain_write(&o->c, hoff, C.out, (size_t)mlen);
		o->gen = (o->gen & ~0xffu) | ((o->gen + 1) & 0xffu);
	} else {
		/* Off the LRU list while its copy takes blocks. */
		lru_unlink(i);
		o->flags |= O_PINNED;
		nc.first = nc.last = NIL;
		nc.len = nc.nblk = 0;
		ok = chain_copy(&nc, &o->c, 0, hoff) == 0 &&
		    chain_append(&nc, C.out, (size_t)mlen) == 0 &&
		    chain_copy(&nc, &o->c, o->body_off, o->body_len) == 0;
		o->flags &= ~O_PINNED;
		lru_push(i);
		if (!ok) {
			chain_free(&nc);
			obj_drop(i);
			return -1;
		}
		chain_free(&o->c);
		o->c = nc;
		o->body_off = hoff + (uint32_t)mlen;
		o->gen = (o->gen | 0xff) + 1;
		if (o->gen < GEN_INC)
			o->gen = GEN_INC;
	}
	o->headlen = (uint16_t)mlen;
	o->lifetime = mt.lifetime;
	o->init_age = mt.init_age;
	o->resp_time = resp_time;
	o->flags = (uint16_t)((o->flags & ~(O_REVAL | O_NOCACHE | O_VALID)) |
	    mt.flags);
	lru_unlink(i);
	lru_push(i);
	ref->gen = o->gen;
	ref->off = 0;
	ref->age = o->init_age;
	ref->what = CACHE_STALE;
	C.st.revalidated++;
	return 0;
}

/* ---------------------------------------------------------- invalidate */

/*
 * RFC 9111 4.4: every variant of the target goes, and objects being
 * written for it (their answer may predate the change). target is a
 * path, or an absolute URL that must name the same host.
 */
void
cache_invalidate(const char *scheme, struct slice host, struct slice target)
{
	struct slice path = target;
	const char *sch = scheme, *a, *e;
	uint32_t h, i, nx;
	int klen;

	if (C.arena == NULL)
		return;
	if (target.n >= 7 && (mem_ieq(target.p, "http://", 7) ||
	    (target.n >= 8 && mem_ieq(target.p, "https://", 8)))) {
		sch = lower(target.p[4]) == 's' ? "https" : "http";
		a = target.p + (sch[4] == 's' ? 8 : 7);
		e = target.p + target.n;
		path = mksl(a, (size_t)(e - a));
		while (path.n > 0 && path.p[0] != '/' && path.p[0] != '?') {
			path.p++;
			path.n--;
		}
		if (!sl_ieq(mksl(a, (size_t)(path.p - a)), host))
			return;
		if (path.n == 0)
			path = mksl("/", 1);
	}
	if (path.n == 0 || path.p[0] != '/')
		return;
	if ((klen = key_build(sch, host, path, C.key)) < 0)
		return;
	h = key_hash(C.key, (size_t)klen);
	for (i = C.bucket[h & C.mask]; i != NIL; i = nx) {
		nx = C.obj[i].hnext;
		if (key_eq(&C.obj[i], h, C.key, (size_t)klen))
			obj_drop(i);
	}
}

void
cache_get_stats(struct cache_stats *s)
{
	*s = C.st;
	s->bytes_used = (uint64_t)(C.nblk - C.nfree) * BLK;
	s->bytes_total = C.size;
}
