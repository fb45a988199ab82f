/*
 * Unit tests for cache.c. First the RFC 9111 rules as tables of named
 * cases - freshness and age arithmetic, response and request directives,
 * Authorization and Set-Cookie, Vary, conditional requests - each one
 * stored into a fresh cache and looked up. Then the storage: LRU order,
 * max_object, writers, readers of evicted objects, revalidation,
 * invalidation, the exact bytes cache_read produces, stats, and the
 * arena's utilisation with objects of mixed sizes.
 *
 * Dates in the header templates are written "@N;": the IMF-fixdate of
 * T0 + N seconds. Times passed to the cache are T0-relative too.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "proxy.h"
#include "unit.h"

#define T0 1700000000LL		/* Tue, 14 Nov 2023 22:13:20 GMT */
#define HOST "example.org"
#define NOSTORE (-1)		/* fcase.what: refused by store_begin */
#define KB 1024

static struct http_msg qm, pm, rm;
static char qbuf[8192];
static char outbuf[1 << 17], out2[1 << 17];

static const char *
what_name(int w)
{
	static const char *const names[] = { "MISS", "HIT", "STALE",
	    "NOTMOD", "GATEWAY_TIMEOUT" };

	if (w == NOSTORE)
		return "NOSTORE";
	return w >= 0 && w <= CACHE_GATEWAY_TIMEOUT ? names[w] : "?";
}

static void
hdate(int64_t t, char *buf, size_t cap)
{
	struct tm tm;
	time_t tt = (time_t)t;

	gmtime_r(&tt, &tm);
	strftime(buf, cap, "%a, %d %b %Y %H:%M:%S GMT", &tm);
}

/* Copy tpl to out, each "@N;" becoming the HTTP-date of T0 + N. */
static void
expand(const char *tpl, char *out, size_t cap)
{
	size_t n = 0;
	char *end;
	long v;

	while (*tpl != '\0' && n + 40 < cap) {
		if (*tpl == '@') {
			v = strtol(tpl + 1, &end, 10);
			hdate(T0 + v, out + n, cap - n);
			n += strlen(out + n);
			tpl = end + (*end == ';');
		} else
			out[n++] = *tpl++;
	}
	out[n] = '\0';
}

/*
 * Store a response to "GET path": sreq are request lines added to the
 * forwarded head, head the whole response head, body its body (appended
 * in pieces of at most piece bytes). 0: stored; -1: refused by
 * cache_store_begin; -2: dropped later.
 */
static int
store_full(const char *path, const char *sreq, const char *head,
    const char *body, size_t blen, size_t piece, int64_t tq, int64_t tr)
{
	struct cache_stats a, b;
	char req[4096], sx[2048];
	static char hx[16384];
	size_t off, k;
	int w, n;

	expand(sreq, sx, sizeof(sx));
	n = snprintf(req, sizeof(req), "GET %s HTTP/1.1\r\nHost: " HOST
	    "\r\n%sX-Forwarded-For: 192.0.2.1\r\nVia: 1.1 proxy\r\n\r\n",
	    path, sx);
	expand(head, hx, sizeof(hx));
	if (http_parse_response(hx, strlen(hx), 0, &rm) <= 0) {
		printf("  bad test response head: %s\n", hx);
		return -3;
	}
	cache_get_stats(&a);
	if ((w = cache_store_begin(req, (size_t)n, "http", &rm, hx,
	    T0 + tq, T0 + tr)) < 0)
		return -1;
	for (off = 0; off < blen; off += k) {
		k = blen - off < piece ? blen - off : piece;
		if (cache_store_append(w, body + off, k) != 0)
			return -2;
	}
	cache_store_end(w, 1);
	cache_get_stats(&b);
	return b.stores == a.stores + 1 ? 0 : -2;
}

/* A response with status, header lines hdrs and Content-Length. */
static int
store(const char *path, const char *sreq, int status, const char *hdrs,
    const char *body, int64_t tq, int64_t tr)
{
	static char head[8192];

	snprintf(head, sizeof(head), "HTTP/1.1 %d Whatever\r\n%s"
	    "Content-Length: %zu\r\n\r\n", status, hdrs, strlen(body));
	return store_full(path, sreq, head, body, strlen(body), 1000, tq, tr);
}

static int
lookup(const char *method, const char *path, const char *hdrs,
    int64_t now, struct cache_ref *ref, char *cond, size_t condcap)
{
	char hx[4096];
	int n;

	expand(hdrs, hx, sizeof(hx));
	n = snprintf(qbuf, sizeof(qbuf), "%s %s HTTP/1.1\r\nHost: " HOST
	    "\r\n%s\r\n", method, path, hx);
	if (http_parse_request(qbuf, (size_t)n, &qm) != n) {
		printf("  bad test request: %s\n", qbuf);
		return -1;
	}
	return cache_lookup(&qm, "http", T0 + now, ref, cond, condcap);
}

static int
look(const char *path, const char *hdrs, int64_t now)
{
	struct cache_ref ref;
	char cond[512];

	return lookup("GET", path, hdrs, now, &ref, cond, sizeof(cond));
}

/* Read ref to its end in reads of at most step bytes: length or -1. */
static long
read_all(struct cache_ref *ref, const struct http_rsp *o, int head_only,
    size_t step, char *out, size_t cap)
{
	size_t k;
	long r, n = 0;

	while ((size_t)n < cap) {
		k = cap - (size_t)n < step ? cap - (size_t)n : step;
		r = cache_read(ref, out + n, k, o, head_only, T0);
		if (r < 0)
			return -1;
		if (r == 0)
			return n;
		n += r;
	}
	return -1;
}

/* The value of name in the head just parsed into pm, or NULL. */
static const struct slice *
pm_hdr(const char *name)
{
	int i;

	for (i = 0; i < pm.nh; i++)
		if (slice_eq(pm.h[i].name, name))
			return &pm.h[i].value;
	return NULL;
}

static int
pm_count(const char *name)
{
	int i, n = 0;

	for (i = 0; i < pm.nh; i++)
		n += slice_eq(pm.h[i].name, name);
	return n;
}

static int
pm_is(const char *name, const char *value)
{
	const struct slice *v = pm_hdr(name);

	return v != NULL && v->n == strlen(value) &&
	    memcmp(v->p, value, v->n) == 0;
}

/* -------------------------------------------------------- rule tables */

struct fcase {
	const char *name;
	int status;
	const char *resp;	/* response header lines */
	const char *sreq;	/* request lines when it is stored */
	const char *req;	/* request lines when it is looked up */
	int64_t tq, tr, now;	/* request sent, response in, lookup */
	int what;		/* CACHE_* from the lookup, or NOSTORE */
	long age;		/* ref.age wanted; -1: not checked */
};

#define CC_100 "Date: @0;\r\nCache-Control: max-age=100\r\n"
#define ETAG "ETag: \"v1\"\r\n"

static const struct fcase fcases[] = {
	/* RFC 9111 4.2: fresh while freshness_lifetime > current_age */
	{ "max-age fresh, age = now - response_time", 200, CC_100, "", "",
	    0, 0, 50, CACHE_HIT, 50 },
	{ "max-age: age 99 of 100 fresh", 200, CC_100, "", "",
	    0, 0, 99, CACHE_HIT, 99 },
	{ "max-age: age 100 of 100 stale, no validator: miss", 200, CC_100,
	    "", "", 0, 0, 100, CACHE_MISS, -1 },
	{ "max-age: stale with ETag: revalidate", 200, CC_100 ETAG, "", "",
	    0, 0, 100, CACHE_STALE, 100 },
	{ "s-maxage beats max-age (4.2.1)", 200,
	    "Cache-Control: max-age=100, s-maxage=10\r\n" ETAG, "", "",
	    0, 0, 10, CACHE_STALE, 10 },
	{ "s-maxage 10 at age 9", 200,
	    "Cache-Control: max-age=100, s-maxage=10\r\n", "", "",
	    0, 0, 9, CACHE_HIT, 9 },
	{ "max-age beats Expires", 200,
	    "Date: @0;\r\nExpires: @1000;\r\nCache-Control: max-age=10\r\n",
	    "", "", 0, 0, 10, CACHE_MISS, -1 },
	{ "Expires - Date = 60: age 59 fresh", 200,
	    "Date: @0;\r\nExpires: @60;\r\n", "", "", 0, 0, 59, CACHE_HIT,
	    59 },
	{ "Expires - Date = 60: age 60 stale", 200,
	    "Date: @0;\r\nExpires: @60;\r\n" ETAG, "", "", 0, 0, 60,
	    CACHE_STALE, 60 },
	{ "Expires without Date: Date is response_time", 200,
	    "Expires: @60;\r\n", "", "", 0, 0, 59, CACHE_HIT, 59 },
	{ "Expires before Date: stale", 200,
	    "Date: @0;\r\nExpires: @-10;\r\n" ETAG, "", "", 0, 0, 0,
	    CACHE_STALE, 0 },
	{ "invalid Expires is already expired (5.3)", 200,
	    "Date: @0;\r\nExpires: 0\r\n" ETAG, "", "", 0, 0, 0,
	    CACHE_STALE, 0 },
	{ "Expires in UTC, not GMT: invalid", 200,
	    "Date: @0;\r\nExpires: Tue, 14 Nov 2023 22:14:20 UTC\r\n" ETAG,
	    "", "", 0, 0, 0, CACHE_STALE, 0 },
	{ "invalid Expires, max-age wins", 200,
	    "Expires: 0\r\nCache-Control: max-age=100\r\n", "", "",
	    0, 0, 10, CACHE_HIT, 10 },
	{ "Expires in RFC 850 form", 200,
	    "Date: @0;\r\nExpires: Tuesday, 14-Nov-23 22:14:20 GMT\r\n", "",
	    "", 0, 0, 59, CACHE_HIT, 59 },
	{ "Expires in RFC 850 form, age 60 stale", 200,
	    "Date: @0;\r\nExpires: Tuesday, 14-Nov-23 22:14:20 GMT\r\n", "",
	    "", 0, 0, 60, CACHE_MISS, -1 },
	{ "Expires in asctime form", 200,
	    "Date: @0;\r\nExpires: Tue Nov 14 22:14:20 2023\r\n", "", "",
	    0, 0, 59, CACHE_HIT, 59 },
	/* 4.2.3 age: max(apparent_age, Age + response_delay) + resident */
	{ "Age 30 + delay 2 + resident 10 = 42", 200, CC_100 "Age: 30\r\n",
	    "", "", -2, 0, 10, CACHE_HIT, 42 },
	{ "apparent age 50 beats Age 10", 200,
	    "Date: @-50;\r\nAge: 10\r\nCache-Control: max-age=100\r\n", "",
	    "", 0, 0, 0, CACHE_HIT, 50 },
	{ "response_delay 5 is age", 200, CC_100, "", "", -5, 0, 0,
	    CACHE_HIT, 5 },
	{ "Date in the future: apparent age 0", 200,
	    "Date: @30;\r\nCache-Control: max-age=100\r\n", "", "", 0, 0, 7,
	    CACHE_HIT, 7 },
	{ "no Date: delay 1 + resident 20", 200,
	    "Cache-Control: max-age=100\r\n", "", "", -1, 0, 20, CACHE_HIT,
	    21 },
	{ "invalid Age ignored", 200, CC_100 "Age: soon\r\n", "", "",
	    0, 0, 0, CACHE_HIT, 0 },
	{ "Age 100 of max-age 100: useless, not stored", 200,
	    CC_100 "Age: 100\r\n", "", "", 0, 0, 0, NOSTORE, -1 },
	/* 4.2.2: heuristic 10% of Date - Last-Modified, at most a day */
	{ "heuristic: 10% of 1000 s = 100, age 99", 200,
	    "Date: @0;\r\nLast-Modified: @-1000;\r\n", "", "", 0, 0, 99,
	    CACHE_HIT, 99 },
	{ "heuristic: age 100 stale, revalidate by date", 200,
	    "Date: @0;\r\nLast-Modified: @-1000;\r\n", "", "", 0, 0, 100,
	    CACHE_STALE, 100 },
	{ "heuristic capped at a day: 86399 fresh", 200,
	    "Date: @0;\r\nLast-Modified: @-2592000;\r\n", "", "", 0, 0,
	    86399, CACHE_HIT, 86399 },
	{ "heuristic capped at a day: 86400 stale", 200,
	    "Date: @0;\r\nLast-Modified: @-2592000;\r\n", "", "", 0, 0,
	    86400, CACHE_STALE, 86400 },
	{ "heuristic with asctime Last-Modified (Nov  6)", 200,
	    "Date: @0;\r\nLast-Modified: Mon Nov  6 22:13:20 2023\r\n", "",
	    "", 0, 0, 69119, CACHE_HIT, 69119 },
	{ "heuristic with asctime Last-Modified, stale", 200,
	    "Date: @0;\r\nLast-Modified: Mon Nov  6 22:13:20 2023\r\n", "",
	    "", 0, 0, 69120, CACHE_STALE, 69120 },
	{ "heuristic 404", 404, "Date: @0;\r\nLast-Modified: @-1000;\r\n",
	    "", "", 0, 0, 10, CACHE_HIT, 10 },
	{ "heuristic 301", 301, "Date: @0;\r\nLast-Modified: @-1000;\r\n",
	    "", "", 0, 0, 10, CACHE_HIT, 10 },
	{ "heuristic 410", 410, "Date: @0;\r\nLast-Modified: @-1000;\r\n",
	    "", "", 0, 0, 10, CACHE_HIT, 10 },
	{ "302 is not heuristic", 302,
	    "Date: @0;\r\nLast-Modified: @-1000;\r\n", "", "", 0, 0, 0,
	    NOSTORE, -1 },
	{ "302 with max-age", 302, CC_100, "", "", 0, 0, 10, CACHE_HIT, 10 },
	{ "302 with Expires", 302, "Date: @0;\r\nExpires: @60;\r\n", "", "",
	    0, 0, 10, CACHE_HIT, 10 },
	{ "500 without explicit freshness", 500, "Date: @0;\r\n" ETAG, "",
	    "", 0, 0, 0, NOSTORE, -1 },
	{ "500 with max-age", 500, CC_100, "", "", 0, 0, 1, CACHE_HIT, 1 },
	{ "206 never", 206, CC_100 "Content-Range: bytes 0-3/10\r\n", "", "",
	    0, 0, 0, NOSTORE, -1 },
	{ "200 without freshness or validator", 200, "Date: @0;\r\n", "", "",
	    0, 0, 0, NOSTORE, -1 },
	{ "200 with only an ETag: stored, always revalidated", 200,
	    "Date: @0;\r\n" ETAG, "", "", 0, 0, 0, CACHE_STALE, 0 },
	{ "204 with max-age", 204, CC_100, "", "", 0, 0, 5, CACHE_HIT, 5 },
	/* Response Cache-Control (5.2.2) */
	{ "no-store", 200, "Cache-Control: max-age=100, no-store\r\n", "",
	    "", 0, 0, 0, NOSTORE, -1 },
	{ "private", 200, "Cache-Control: private, max-age=100\r\n", "", "",
	    0, 0, 0, NOSTORE, -1 },
	{ "private=\"Set-Cookie\" is still private", 200,
	    "Cache-Control: private=\"Set-Cookie\", max-age=100\r\n", "", "",
	    0, 0, 0, NOSTORE, -1 },
	{ "NO-STORE upper case", 200, "CACHE-CONTROL: NO-STORE\r\n" CC_100,
	    "", "", 0, 0, 0, NOSTORE, -1 },
	{ "no-cache with ETag: fresh but revalidated", 200,
	    CC_100 "Cache-Control: no-cache\r\n" ETAG, "", "", 0, 0, 1,
	    CACHE_STALE, 1 },
	{ "no-cache without validator: not stored", 200,
	    "Cache-Control: no-cache, max-age=100\r\n", "", "", 0, 0, 0,
	    NOSTORE, -1 },
	{ "no-cache=\"a,b\" quoted comma, max-age after", 200,
	    "Cache-Control: no-cache=\"a,b\", max-age=100\r\n" ETAG, "", "",
	    0, 0, 1, CACHE_STALE, 1 },
	{ "stale, max-stale: served stale", 200,
	    "Cache-Control: max-age=10\r\n" ETAG, "",
	    "Cache-Control: max-stale\r\n", 0, 0, 20, CACHE_HIT, 20 },
	{ "must-revalidate: never stale", 200,
	    "Cache-Control: max-age=10, must-revalidate\r\n" ETAG, "",
	    "Cache-Control: max-stale\r\n", 0, 0, 20, CACHE_STALE, 20 },
	{ "proxy-revalidate: never stale", 200,
	    "Cache-Control: max-age=10, proxy-revalidate\r\n" ETAG, "",
	    "Cache-Control: max-stale\r\n", 0, 0, 20, CACHE_STALE, 20 },
	{ "s-maxage implies proxy-revalidate", 200,
	    "Cache-Control: s-maxage=10\r\n" ETAG, "",
	    "Cache-Control: max-stale\r\n", 0, 0, 20, CACHE_STALE, 20 },
	{ "must-revalidate, no validator: miss", 200,
	    "Cache-Control: max-age=10, must-revalidate\r\n", "",
	    "Cache-Control: max-stale\r\n", 0, 0, 20, CACHE_MISS, -1 },
	{ "must-revalidate while fresh: hit", 200,
	    "Cache-Control: max-age=10, must-revalidate\r\n", "", "",
	    0, 0, 9, CACHE_HIT, 9 },
	{ "max-age=\"60\" quoted", 200, "Cache-Control: max-age=\"60\"\r\n",
	    "", "", 0, 0, 59, CACHE_HIT, 59 },
	{ "max-age=\"60\" quoted, age 60", 200,
	    "Cache-Control: max-age=\"60\"\r\n" ETAG, "", "", 0, 0, 60,
	    CACHE_STALE, 60 },
	{ "MAX-AGE upper case", 200, "CACHE-CONTROL: MAX-AGE=60\r\n", "",
	    "", 0, 0, 59, CACHE_HIT, 59 },
	{ "repeated max-age: the first counts", 200,
	    "Cache-Control: max-age=60, max-age=5\r\n", "", "", 0, 0, 30,
	    CACHE_HIT, 30 },
	{ "max-age=abc is 0", 200, "Cache-Control: max-age=abc\r\n" ETAG,
	    "", "", 0, 0, 0, CACHE_STALE, 0 },
	{ "max-age=-5 is 0", 200, "Cache-Control: max-age=-5\r\n" ETAG, "",
	    "", 0, 0, 0, CACHE_STALE, 0 },
	{ "huge max-age is 2^31", 200,
	    "Cache-Control: max-age=99999999999999999999\r\n", "", "", 0, 0,
	    2000000000, CACHE_HIT, 2000000000 },
	{ "Cache-Control over two lines", 200,
	    "Cache-Control: public\r\nCache-Control: max-age=60\r\n", "",
	    "", 0, 0, 30, CACHE_HIT, 30 },
	{ "unknown directives and junk ignored", 200,
	    "Cache-Control: foo=\"x, y\", , bar baz, max-age=60\r\n", "",
	    "", 0, 0, 30, CACHE_HIT, 30 },
	/* Request Cache-Control (5.2.1) and Pragma (5.4) */
	{ "request no-cache: revalidate", 200, CC_100 ETAG, "",
	    "Cache-Control: no-cache\r\n", 0, 0, 1, CACHE_STALE, 1 },
	{ "request no-cache, no validator: miss", 200, CC_100, "",
	    "Cache-Control: no-cache\r\n", 0, 0, 1, CACHE_MISS, -1 },
	{ "Pragma: no-cache without Cache-Control", 200, CC_100 ETAG, "",
	    "Pragma: no-cache\r\n", 0, 0, 1, CACHE_STALE, 1 },
	{ "Pragma: no-cache ignored with Cache-Control", 200, CC_100 ETAG,
	    "", "Pragma: no-cache\r\nCache-Control: max-age=100\r\n", 0, 0,
	    1, CACHE_HIT, 1 },
	{ "request max-age=30 at age 50", 200, CC_100 ETAG, "",
	    "Cache-Control: max-age=30\r\n", 0, 0, 50, CACHE_STALE, 50 },
	{ "request max-age=60 at age 50", 200, CC_100 ETAG, "",
	    "Cache-Control: max-age=60\r\n", 0, 0, 50, CACHE_HIT, 50 },
	{ "request max-age=0 at age 0", 200, CC_100, "",
	    "Cache-Control: max-age=0\r\n", 0, 0, 0, CACHE_HIT, 0 },
	{ "request max-age=0 at age 1", 200, CC_100 ETAG, "",
	    "Cache-Control: max-age=0\r\n", 0, 0, 1, CACHE_STALE, 1 },
	{ "min-fresh=40 with 50 left", 200, CC_100 ETAG, "",
	    "Cache-Control: min-fresh=40\r\n", 0, 0, 50, CACHE_HIT, 50 },
	{ "min-fresh=50 with 50 left", 200, CC_100 ETAG, "",
	    "Cache-Control: min-fresh=50\r\n", 0, 0, 50, CACHE_HIT, 50 },
	{ "min-fresh=60 with 50 left", 200, CC_100 ETAG, "",
	    "Cache-Control: min-fresh=60\r\n", 0, 0, 50, CACHE_STALE, 50 },
	{ "max-stale=5, stale by 5", 200,
	    "Cache-Control: max-age=10\r\n" ETAG, "",
	    "Cache-Control: max-stale=5\r\n", 0, 0, 15, CACHE_HIT, 15 },
	{ "max-stale=5, stale by 6", 200,
	    "Cache-Control: max-age=10\r\n" ETAG, "",
	    "Cache-Control: max-stale=5\r\n", 0, 0, 16, CACHE_STALE, 16 },
	{ "max-stale and max-age=12 at age 15", 200,
	    "Cache-Control: max-age=10\r\n" ETAG, "",
	    "Cache-Control: max-stale, max-age=12\r\n", 0, 0, 15,
	    CACHE_STALE, 15 },
	{ "only-if-cached, fresh", 200, CC_100, "",
	    "Cache-Control: only-if-cached\r\n", 0, 0, 1, CACHE_HIT, 1 },
	{ "only-if-cached, stale: 504", 200, CC_100 ETAG, "",
	    "Cache-Control: only-if-cached\r\n", 0, 0, 100,
	    CACHE_GATEWAY_TIMEOUT, -1 },
	{ "only-if-cached, max-stale: stale served", 200, CC_100 ETAG, "",
	    "Cache-Control: only-if-cached, max-stale\r\n", 0, 0, 100,
	    CACHE_HIT, 100 },
	{ "only-if-cached, no-cache: 504", 200, CC_100 ETAG, "",
	    "Cache-Control: only-if-cached, no-cache\r\n", 0, 0, 1,
	    CACHE_GATEWAY_TIMEOUT, -1 },
	{ "request no-store: served from the cache", 200, CC_100, "",
	    "Cache-Control: no-store\r\n", 0, 0, 1, CACHE_HIT, 1 },
	{ "request no-store: response not stored", 200, CC_100,
	    "Cache-Control: no-store\r\n", "", 0, 0, 0, NOSTORE, -1 },
	/* 3.5 Authorization; Set-Cookie (stricter than the RFC) */
	{ "Authorization: not stored", 200, CC_100,
	    "Authorization: Basic dTpw\r\n", "", 0, 0, 0, NOSTORE, -1 },
	{ "Authorization + public", 200, CC_100 "Cache-Control: public\r\n",
	    "Authorization: Basic dTpw\r\n", "", 0, 0, 1, CACHE_HIT, 1 },
	{ "Authorization + s-maxage", 200, "Cache-Control: s-maxage=100\r\n",
	    "Authorization: Basic dTpw\r\n", "", 0, 0, 1, CACHE_HIT, 1 },
	{ "Authorization + must-revalidate", 200,
	    CC_100 "Cache-Control: must-revalidate\r\n",
	    "Authorization: Basic dTpw\r\n", "", 0, 0, 1, CACHE_HIT, 1 },
	{ "Set-Cookie: not stored", 200, CC_100 "Set-Cookie: id=1\r\n", "",
	    "", 0, 0, 0, NOSTORE, -1 },
	{ "Set-Cookie + public", 200,
	    CC_100 "Cache-Control: public\r\nSet-Cookie: id=1\r\n", "", "",
	    0, 0, 1, CACHE_HIT, 1 },
	{ "Set-Cookie + s-maxage", 200,
	    "Cache-Control: s-maxage=100\r\nSet-Cookie: id=1\r\n", "", "",
	    0, 0, 1, CACHE_HIT, 1 },
	{ "Set-Cookie + must-revalidate: not stored", 200,
	    CC_100 "Cache-Control: must-revalidate\r\nSet-Cookie: id=1\r\n",
	    "", "", 0, 0, 0, NOSTORE, -1 },
	/* Vary: * never matches (4.1) */
	{ "Vary: * not stored", 200, CC_100 "Vary: *\r\n", "", "", 0, 0, 0,
	    NOSTORE, -1 },
	{ "Vary: Accept, * not stored", 200, CC_100 "Vary: Accept, *\r\n",
	    "", "", 0, 0, 0, NOSTORE, -1 },
};

static void
fcase_run(const struct fcase *c)
{
	struct cache_ref ref;
	char cond[512];
	int rc, what, ok;

	cache_init(256 * KB, 64 * KB);
	rc = store("/f", c->sreq, c->status, c->resp,
	    c->status == 204 ? "" : "body", c->tq, c->tr);
	if (c->what == NOSTORE) {
		ok = rc == -1 && look("/f", "", c->now) == CACHE_MISS;
		CHECK(ok, c->name);
		if (!ok)
			printf("  stored (%d), want refused\n", rc);
		return;
	}
	if (rc != 0) {
		CHECK(0, c->name);
		printf("  not stored (%d)\n", rc);
		return;
	}
	what = lookup("GET", "/f", c->req, c->now, &ref, cond, sizeof(cond));
	ok = what == c->what && (c->age < 0 || ref.age == (uint32_t)c->age);
	CHECK(ok, c->name);
	if (!ok)
		printf("  got %s age %u, want %s age %ld\n", what_name(what),
		    ref.age, what_name(c->what), c->age);
}

/* Conditional requests on a stored response (RFC 9111 4.3.2). */
struct ccase {
	const char *name;
	int status;		/* 0: 200 */
	const char *resp;	/* lines besides Date and max-age=100 */
	const char *method;	/* NULL: GET */
	const char *req;
	int64_t now;		/* 0: 10 */
	int what;
};

static const struct ccase ccases[] = {
	{ "INM strong match", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: \"abc\"\r\n", 0, CACHE_NOTMOD },
	{ "INM weak matches strong", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: W/\"abc\"\r\n", 0, CACHE_NOTMOD },
	{ "INM strong matches weak", 0, "ETag: W/\"abc\"\r\n", NULL,
	    "If-None-Match: \"abc\"\r\n", 0, CACHE_NOTMOD },
	{ "INM differs", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: \"abd\"\r\n", 0, CACHE_HIT },
	{ "INM list with a match", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: \"x\", W/\"y\",\"abc\"\r\n", 0, CACHE_NOTMOD },
	{ "INM list without", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: \"x\", \"y\"\r\n", 0, CACHE_HIT },
	{ "INM over two lines", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: \"x\"\r\nIf-None-Match: \"abc\"\r\n", 0,
	    CACHE_NOTMOD },
	{ "INM comma inside a tag", 0, "ETag: \"a,b\"\r\n", NULL,
	    "If-None-Match: \"a,b\"\r\n", 0, CACHE_NOTMOD },
	{ "INM tag pieces do not match", 0, "ETag: \"a,b\"\r\n", NULL,
	    "If-None-Match: \"a\", \"b\"\r\n", 0, CACHE_HIT },
	{ "INM *", 0, "ETag: \"abc\"\r\n", NULL, "If-None-Match: *\r\n", 0,
	    CACHE_NOTMOD },
	{ "INM * without stored ETag", 0, "", NULL, "If-None-Match: *\r\n",
	    0, CACHE_NOTMOD },
	{ "INM tag without stored ETag", 0, "", NULL,
	    "If-None-Match: \"abc\"\r\n", 0, CACHE_HIT },
	{ "INM lower-case field name", 0, "ETag: \"abc\"\r\n", NULL,
	    "if-none-match: \"abc\"\r\n", 0, CACHE_NOTMOD },
	{ "INM no match wins over IMS", 0,
	    "ETag: \"abc\"\r\nLast-Modified: @-1000;\r\n", NULL,
	    "If-None-Match: \"x\"\r\nIf-Modified-Since: @0;\r\n", 0,
	    CACHE_HIT },
	{ "IMS = Last-Modified", 0, "Last-Modified: @-1000;\r\n", NULL,
	    "If-Modified-Since: @-1000;\r\n", 0, CACHE_NOTMOD },
	{ "IMS after Last-Modified", 0, "Last-Modified: @-1000;\r\n", NULL,
	    "If-Modified-Since: @-10;\r\n", 0, CACHE_NOTMOD },
	{ "IMS before Last-Modified", 0, "Last-Modified: @-1000;\r\n", NULL,
	    "If-Modified-Since: @-1001;\r\n", 0, CACHE_HIT },
	{ "IMS invalid", 0, "Last-Modified: @-1000;\r\n", NULL,
	    "If-Modified-Since: yesterday\r\n", 0, CACHE_HIT },
	{ "IMS in RFC 850 form", 0, "Last-Modified: @-1000;\r\n", NULL,
	    "If-Modified-Since: Tuesday, 14-Nov-23 22:13:20 GMT\r\n", 0,
	    CACHE_NOTMOD },
	{ "IMS against Date without Last-Modified", 0, ETAG, NULL,
	    "If-Modified-Since: @0;\r\n", 0, CACHE_NOTMOD },
	{ "IMS before Date without Last-Modified", 0, ETAG, NULL,
	    "If-Modified-Since: @-1;\r\n", 0, CACHE_HIT },
	{ "HEAD with INM", 0, "ETag: \"abc\"\r\n", "HEAD",
	    "If-None-Match: \"abc\"\r\n", 0, CACHE_NOTMOD },
	{ "stored 404: no 304", 404, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: *\r\n", 0, CACHE_HIT },
	{ "stale entry: revalidate instead", 0, "ETag: \"abc\"\r\n", NULL,
	    "If-None-Match: \"abc\"\r\n", 100, CACHE_STALE },
};

static void
ccase_run(const struct ccase *c)
{
	struct cache_ref ref;
	char hdrs[512], cond[512];
	int rc, what;

	cache_init(256 * KB, 64 * KB);
	snprintf(hdrs, sizeof(hdrs), CC_100 "%s", c->resp);
	rc = store("/c", "", c->status ? c->status : 200, hdrs, "body", 0, 0);
	what = lookup(c->method ? c->method : "GET", "/c", c->req,
	    c->now ? c->now : 10, &ref, cond, sizeof(cond));
	CHECK(rc == 0 && what == c->what, c->name);
	if (rc != 0 || what != c->what)
		printf("  stored %d, got %s want %s\n", rc, what_name(what),
		    what_name(c->what));
}

/* ------------------------------------------------------------- tests */

/* The 304 the cache makes itself from a stored 200. */
static void
notmod_head(void)
{
	struct cache_ref ref;
	struct http_rsp o;
	char cond[64];
	long n, r;

	cache_init(256 * KB, 64 * KB);
	store("/n", "", 200, CC_100 "ETag: \"abc\"\r\n"
	    "Last-Modified: @-1000;\r\nContent-Type: text/plain\r\n"
	    "Vary: Accept\r\nExpires: @100;\r\nX-Other: 1\r\n", "hello", 0, 0);
	CHECK(lookup("GET", "/n", "If-None-Match: \"abc\"\r\n", 7, &ref, cond,
	    sizeof(cond)) == CACHE_NOTMOD, "304: lookup NOTMOD");
	CHECK(cache_status(&ref) == 304 && cache_chunked(&ref) == 0,
	    "304: cache_status, not chunked");
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	n = read_all(&ref, &o, 0, 4096, outbuf, sizeof(outbuf));
	CHECK(n > 0 && http_parse_response(outbuf, (size_t)n, 0, &pm) == n,
	    "304: the head parses and is all there is");
	if (n <= 0)
		return;
	CHECK(pm.status == 304 && (pm.flags & HF_NOBODY),
	    "304: status 304, no body");
	CHECK(pm_is("ETag", "\"abc\"") && pm_hdr("Cache-Control") != NULL &&
	    pm_hdr("Date") != NULL && pm_hdr("Last-Modified") != NULL &&
	    pm_is("Vary", "Accept") && pm_hdr("Expires") != NULL,
	    "304: ETag, Cache-Control, Date, Last-Modified, Vary, Expires");
	CHECK(pm_hdr("Content-Type") == NULL && pm_hdr("X-Other") == NULL &&
	    pm_hdr("Content-Length") == NULL, "304: nothing else");
	CHECK(pm_is("Age", "7") && pm_is("X-Cache", "HIT"),
	    "304: Age and X-Cache");
	r = cache_read(&ref, outbuf, 100, &o, 0, T0);
	CHECK(r == 0, "304: then the end");
}

/* The head and body cache_read produces, in any read size. */
static void
read_exact(void)
{
	static char body[3000];
	static const char want_head[] =
	    "HTTP/1.1 200 OK\r\n"
	    "Cache-Control: max-age=100\r\n"
	    "Content-Type: text/plain\r\n"
	    "Content-Length: 3000\r\n"
	    "Age: 13\r\n"
	    "X-Cache: HIT\r\n"
	    "Via: 1.1 proxy\r\n"
	    "\r\n";
	static const size_t steps[] = { 1, 2, 7, 100, 511, 512, 513, 4096 };
	struct cache_ref ref, r2;
	struct http_rsp o;
	char head[1024], cond[64];
	size_t i, hl = strlen(want_head);
	long n, m;

	for (i = 0; i < sizeof(body); i++)
		body[i] = (char)(i * 7 + (i >> 8));
	cache_init(256 * KB, 64 * KB);
	snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n"
	    "Cache-Control: max-age=100\r\n"
	    "Connection: keep-alive, X-Hop\r\n"
	    "Keep-Alive: timeout=5\r\n"
	    "X-Hop: 1\r\n"
	    "Age: 3\r\n"
	    "Content-Type: text/plain\r\n"
	    "X-Cache: MISS\r\n"
	    "Content-Length: 3000\r\n\r\n");
	CHECK(store_full("/r", "", head, body, sizeof(body), 333, 0, 0) == 0,
	    "read: stored in odd pieces");
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	CHECK(lookup("GET", "/r", "", 10, &ref, cond, sizeof(cond)) ==
	    CACHE_HIT && ref.age == 13, "read: HIT, Age 3 + 10");
	r2 = ref;
	n = read_all(&ref, &o, 0, sizeof(outbuf), outbuf, sizeof(outbuf));
	CHECK(n == (long)(hl + sizeof(body)) &&
	    memcmp(outbuf, want_head, hl) == 0 &&
	    memcmp(outbuf + hl, body, sizeof(body)) == 0,
	    "read: exact head (hop-by-hop out, Age and X-Cache replaced, "
	    "Via) and body");
	if (n > 0 && memcmp(outbuf, want_head, hl) != 0)
		printf("  got: %.*s\n", (int)hl, outbuf);
	CHECK(n > 0 && http_parse_response(outbuf, (size_t)n, 0, &pm) ==
	    (int)hl && pm.status == 200 && pm.clen == 3000 &&
	    pm_count("Age") == 1 && pm_count("X-Cache") == 1,
	    "read: the head re-parses, one Age, one X-Cache");
	for (i = 0; i < sizeof(steps) / sizeof(steps[0]); i++) {
		ref = r2;
		m = read_all(&ref, &o, 0, steps[i], out2, sizeof(out2));
		CHECK(m == n && memcmp(out2, outbuf, (size_t)n) == 0,
		    "read: same bytes in small reads");
		if (m != n)
			printf("  step %zu: %ld bytes\n", steps[i], m);
	}
	ref = r2;
	m = read_all(&ref, &o, 1, 5, out2, sizeof(out2));
	CHECK(m == (long)hl && memcmp(out2, want_head, hl) == 0,
	    "read: HEAD gets the head only");

	/* HEAD looks up the stored GET, head only. */
	CHECK(lookup("HEAD", "/r", "", 10, &ref, cond, sizeof(cond)) ==
	    CACHE_HIT, "read: HEAD hits the stored GET");
	m = read_all(&ref, &o, 1, 4096, out2, sizeof(out2));
	CHECK(m == (long)hl && memcmp(out2, want_head, hl) == 0,
	    "read: HEAD head equals the GET head");

	/* Connection: close, a hidden field, extra lines from the loop. */
	lookup("GET", "/r", "", 10, &ref, cond, sizeof(cond));
	o.close = 1;
	o.hide = "Content-Type";
	o.extra = "X-Extra: 1\r\n";
	m = read_all(&ref, &o, 0, 100, out2, sizeof(out2));
	CHECK(m > 0 && http_parse_response(out2, (size_t)m, 0, &pm) > 0 &&
	    (pm.flags & HF_CLOSE) && pm_hdr("Content-Type") == NULL &&
	    pm_is("X-Extra", "1") && pm_is("X-Cache", "HIT"),
	    "read: close, hide, extra");

	/* Not a GET or HEAD: not looked up. */
	CHECK(lookup("POST", "/r", "", 10, &ref, cond, sizeof(cond)) ==
	    CACHE_MISS, "POST: miss");
	CHECK(cache_read(&ref, out2, 100, &o, 0, T0) == -1,
	    "read of a miss ref: -1");
	/* Keys: scheme, host (any case), path and query. */
	CHECK(look("/r?", "", 10) == CACHE_MISS && look("/R", "", 10) ==
	    CACHE_MISS, "key: query and path case count");
	strcpy(qbuf, "GET /r HTTP/1.1\r\nHost: EXAMPLE.Org\r\n\r\n");
	CHECK(http_parse_request(qbuf, strlen(qbuf), &qm) > 0 &&
	    cache_lookup(&qm, "http", T0, &ref, cond, sizeof(cond)) ==
	    CACHE_HIT, "key: host case ignored");
	CHECK(cache_lookup(&qm, "https", T0, &ref, cond, sizeof(cond)) ==
	    CACHE_MISS, "key: scheme counts");
	strcpy(qbuf, "GET /r HTTP/1.1\r\nHost: example.org:80\r\n\r\n");
	CHECK(http_parse_request(qbuf, strlen(qbuf), &qm) > 0 &&
	    cache_lookup(&qm, "http", T0, &ref, cond, sizeof(cond)) ==
	    CACHE_MISS, "key: port kept");
}

static void
chunked(void)
{
	static const char body[] = "5\r\nhello\r\n6;x=y\r\n world\r\n0\r\n"
	    "Trailer-X: 1\r\n\r\n";
	struct cache_ref ref;
	struct http_rsp o;
	char cond[64];
	long n;

	cache_init(256 * KB, 64 * KB);
	CHECK(store_full("/ch", "", "HTTP/1.1 200 OK\r\n"
	    "Cache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n",
	    body, sizeof(body) - 1, 3, 0, 0) == 0, "chunked: stored");
	CHECK(lookup("GET", "/ch", "", 0, &ref, cond, sizeof(cond)) ==
	    CACHE_HIT && cache_chunked(&ref) == 1 && cache_status(&ref) == 200,
	    "chunked: cache_chunked 1, status 200");
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	n = read_all(&ref, &o, 0, 7, outbuf, sizeof(outbuf));
	CHECK(n > 0 && http_parse_response(outbuf, (size_t)n, 0, &pm) > 0 &&
	    (pm.flags & HF_CHUNKED) && n - (long)pm.head_len ==
	    (long)sizeof(body) - 1 && memcmp(outbuf + pm.head_len, body,
	    sizeof(body) - 1) == 0, "chunked: framing kept byte for byte");

	/* A broken or unfinished chunked body is not kept. */
	CHECK(store_full("/ch2", "", "HTTP/1.1 200 OK\r\n"
	    "Cache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n",
	    "5\r\nhelloX", 8, 100, 0, 0) == -2, "chunked: bad framing dropped");
	CHECK(store_full("/ch3", "", "HTTP/1.1 200 OK\r\n"
	    "Cache-Control: max-age=60\r\nTransfer-Encoding: chunked\r\n\r\n",
	    "5\r\nhello\r\n", 10, 100, 0, 0) == -2,
	    "chunked: unfinished body dropped");
	/* Close-delimited bodies cannot be replayed: not stored. */
	CHECK(store_full("/cd", "", "HTTP/1.1 200 OK\r\n"
	    "Cache-Control: max-age=60\r\n\r\n", "abc", 3, 100, 0, 0) == -1,
	    "close-delimited: not stored");
}

static void
vary(void)
{
	struct cache_ref ref;
	struct cache_stats st;
	struct http_rsp o;
	char cond[64];
	long n;
	int i;

	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	cache_init(256 * KB, 64 * KB);
	CHECK(store("/v", "Accept-Encoding: gzip\r\n", 200,
	    CC_100 "Vary: Accept-Encoding\r\n", "GZ", 0, 0) == 0,
	    "vary: gzip variant stored");
	CHECK(look("/v", "Accept-Encoding: gzip\r\n", 1) == CACHE_HIT,
	    "vary: same value hits");
	CHECK(look("/v", "accept-encoding:    gzip  \r\n", 1) == CACHE_HIT,
	    "vary: name case, OWS trimmed");
	CHECK(look("/v", "Accept-Encoding: br\r\n", 1) == CACHE_MISS,
	    "vary: other value misses");
	CHECK(look("/v", "", 1) == CACHE_MISS, "vary: absent misses");
	CHECK(store("/v", "", 200, CC_100 "Vary: Accept-Encoding\r\n", "ID",
	    0, 0) == 0, "vary: identity variant stored too");
	CHECK(lookup("GET", "/v", "", 1, &ref, cond, sizeof(cond)) ==
	    CACHE_HIT && (n = read_all(&ref, &o, 0, 4096, outbuf,
	    sizeof(outbuf))) > 2 && memcmp(outbuf + n - 2, "ID", 2) == 0,
	    "vary: absent = absent, its own body");
	CHECK(lookup("GET", "/v", "Accept-Encoding: gzip\r\n", 1, &ref, cond,
	    sizeof(cond)) == CACHE_HIT && (n = read_all(&ref, &o, 0, 4096,
	    outbuf, sizeof(outbuf))) > 2 && memcmp(outbuf + n - 2, "GZ", 2) ==
	    0, "vary: gzip variant still there");
	CHECK(store("/v", "Accept-Encoding: gzip\r\n", 200,
	    CC_100 "Vary: Accept-Encoding\r\n", "G2", 0, 0) == 0,
	    "vary: gzip variant stored again");
	cache_get_stats(&st);
	CHECK(st.objects == 2, "vary: the new copy replaced the old one");
	CHECK(lookup("GET", "/v", "Accept-Encoding: gzip\r\n", 1, &ref, cond,
	    sizeof(cond)) == CACHE_HIT && (n = read_all(&ref, &o, 0, 4096,
	    outbuf, sizeof(outbuf))) > 2 && memcmp(outbuf + n - 2, "G2", 2) ==
	    0, "vary: the new copy is served");

	CHECK(store("/l", "Accept-Language: en\r\nAccept-Language: fr\r\n",
	    200, CC_100 "Vary: Accept-Language\r\n", "x", 0, 0) == 0,
	    "vary: repeated field stored");
	CHECK(look("/l", "Accept-Language: en, fr\r\n", 1) == CACHE_HIT,
	    "vary: repeated lines = one comma-joined line");
	CHECK(look("/l", "Accept-Language: fr, en\r\n", 1) == CACHE_MISS,
	    "vary: order counts");

	CHECK(store("/m", "Accept: a\r\nX-Foo: 1\r\n", 200,
	    CC_100 "Vary: accept\r\nVary: X-FOO, Accept-Charset\r\n", "x", 0,
	    0) == 0, "vary: three names over two lines");
	CHECK(look("/m", "X-Foo: 1\r\nAccept: a\r\n", 1) == CACHE_HIT,
	    "vary: all three match");
	CHECK(look("/m", "X-Foo: 2\r\nAccept: a\r\n", 1) == CACHE_MISS,
	    "vary: values are case-sensitive, one differs");
	CHECK(look("/m", "X-Foo: 1\r\nAccept: a\r\nAccept-Charset: u\r\n",
	    1) == CACHE_MISS, "vary: one absent before, present now");

	/* At most 16 variants of one URL: the oldest make room. */
	{
		char rq[64];
		int all = 1;

		for (i = 0; i < 20; i++) {
			snprintf(rq, sizeof(rq), "X-V: %d\r\n", i);
			all &= store("/mv", rq, 200, CC_100 "Vary: X-V\r\n",
			    "x", 0, 0) == 0;
		}
		CHECK(all, "variants: 20 stored");
		for (n = 0, i = 0; i < 20; i++) {
			snprintf(rq, sizeof(rq), "X-V: %d\r\n", i);
			n += look("/mv", rq, 1) == CACHE_HIT;
		}
		CHECK(n == 16 && look("/mv", "X-V: 0\r\n", 1) == CACHE_MISS &&
		    look("/mv", "X-V: 19\r\n", 1) == CACHE_HIT,
		    "variants: the 16 newest kept");
	}

	/* Invalidation takes every variant. */
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "/v", 2 });
	CHECK(look("/v", "", 1) == CACHE_MISS &&
	    look("/v", "Accept-Encoding: gzip\r\n", 1) == CACHE_MISS,
	    "invalidate: both variants gone");
	CHECK(look("/l", "Accept-Language: en, fr\r\n", 1) == CACHE_HIT,
	    "invalidate: other URLs stay");
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "http://other.org/l", 18 });
	CHECK(look("/l", "Accept-Language: en, fr\r\n", 1) == CACHE_HIT,
	    "invalidate: another host's Location ignored");
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "http://Example.ORG/l", 20 });
	CHECK(look("/l", "Accept-Language: en, fr\r\n", 1) == CACHE_MISS,
	    "invalidate: absolute Location on the same host");
	cache_invalidate("http", (struct slice){ "EXAMPLE.org", 11 },
	    (struct slice){ "/m", 2 });
	CHECK(look("/m", "X-Foo: 1\r\nAccept: a\r\n", 1) == CACHE_MISS,
	    "invalidate: host case ignored");
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "/mv", 3 });
	cache_get_stats(&st);
	CHECK(st.objects == 0 && st.bytes_used == 0,
	    "invalidate: all blocks back");
}

/* Store n objects "/o0".. of about size bytes; returns how many went. */
static int
fill(int from, int to, size_t size)
{
	static char body[64 * KB];
	char path[32];
	int i, ok = 0;

	memset(body, 'b', sizeof(body));
	body[size] = '\0';
	for (i = from; i < to; i++) {
		snprintf(path, sizeof(path), "/o%d", i);
		ok += store(path, "", 200, CC_100, body, 0, 0) == 0;
	}
	body[size] = 'b';
	return ok;
}

static int
present(int i)
{
	char path[32];

	snprintf(path, sizeof(path), "/o%d", i);
	return look(path, "", 1) == CACHE_HIT;
}

static void
lru(void)
{
	struct cache_stats st;
	struct cache_ref ref, r2;
	struct http_rsp o;
	char cond[64];
	int cap, i, all;

	/* How many ~1.4 KB objects fit in a small arena? */
	cache_init(64 * KB, 8 * KB);
	for (cap = 0; cap < 1000; cap++) {
		fill(cap, cap + 1, 1400);
		cache_get_stats(&st);
		if (st.evictions > 0)
			break;
	}
	CHECK(cap > 3 && cap < 1000, "lru: a small arena fills");
	cache_init(64 * KB, 8 * KB);
	CHECK(fill(0, cap, 1400) == cap, "lru: fill it");
	cache_get_stats(&st);
	CHECK(st.evictions == 0 && st.objects == (uint32_t)cap,
	    "lru: full, nothing evicted yet");
	CHECK(present(0), "lru: touch the oldest");
	fill(cap, cap + 1, 1400);
	cache_get_stats(&st);
	CHECK(st.evictions == 1, "lru: one more evicts one");
	CHECK(!present(1), "lru: the least recently used went");
	for (all = 1, i = 2; i <= cap; i++)
		all &= present(i);
	CHECK(present(0) && all, "lru: the touched one and the rest stay");

	/* A reader of an evicted object gets -1, never other bytes. */
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	CHECK(lookup("GET", "/o2", "", 1, &ref, cond, sizeof(cond)) ==
	    CACHE_HIT, "evicted reader: hit");
	r2 = ref;
	CHECK(cache_read(&ref, outbuf, 10, &o, 0, T0) == 10,
	    "evicted reader: part of the head");
	CHECK(cache_read(&r2, outbuf, 200, &o, 0, T0) == 200,
	    "evicted reader: head and some body");
	fill(1000, 1000 + cap, 1400);	/* everything old goes */
	CHECK(!present(2), "evicted reader: evicted");
	CHECK(cache_read(&ref, outbuf, 10, &o, 0, T0) == -1,
	    "evicted reader in the head: -1");
	CHECK(cache_read(&r2, outbuf, 10, &o, 0, T0) == -1,
	    "evicted reader in the body: -1");
	CHECK(cache_chunked(&r2) == -1 && cache_status(&r2) == -1,
	    "evicted: chunked and status -1");
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "/o1005", 6 });
	CHECK(!present(1005), "invalidate one");
}

static void
writers(void)
{
	static char big[8 * KB];
	struct cache_stats st;
	char req[] = "GET /w HTTP/1.1\r\nHost: " HOST "\r\n\r\n";
	char reqgz[] = "GET /w HTTP/1.1\r\nHost: " HOST "\r\n"
	    "Accept-Encoding: gzip\r\n\r\n";
	char head[] = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
	    "Content-Length: 10\r\n\r\n";
	char vhead[] = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
	    "Vary: Accept-Encoding\r\nContent-Length: 2\r\n\r\n";
	char chead[] = "HTTP/1.1 200 OK\r\nCache-Control: max-age=60\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n";
	struct http_msg vm;
	int w, w2, i, r;

	memset(big, 'x', sizeof(big));
	cache_init(256 * KB, 4 * KB);
	http_parse_response(head, strlen(head), 0, &rm);

	/* Incomplete: nothing stays. */
	w = cache_store_begin(req, strlen(req), "http", &rm, head, T0, T0);
	CHECK(w >= 0, "writer: begin");
	CHECK(cache_store_append(w, "01234", 5) == 0, "writer: append");
	CHECK(look("/w", "", 0) == CACHE_MISS,
	    "writer: being written is a miss");
	w2 = cache_store_begin(req, strlen(req), "http", &rm, head, T0, T0);
	CHECK(w2 == -1, "writer: same key being written: -1");
	cache_store_end(w, 0);
	cache_get_stats(&st);
	CHECK(st.objects == 0 && st.bytes_used == 0 && look("/w", "", 0) ==
	    CACHE_MISS, "writer: ended incomplete leaves nothing");
	CHECK(cache_store_append(w, "56789", 5) == -1,
	    "writer: a stale id is inert");
	cache_store_end(w, 1);

	/* Complete flag, but fewer bytes than Content-Length. */
	w = cache_store_begin(req, strlen(req), "http", &rm, head, T0, T0);
	cache_store_append(w, "01234", 5);
	cache_store_end(w, 1);
	CHECK(look("/w", "", 0) == CACHE_MISS, "writer: short body dropped");
	/* More bytes than Content-Length. */
	w = cache_store_begin(req, strlen(req), "http", &rm, head, T0, T0);
	CHECK(cache_store_append(w, "0123456789A", 11) == -1,
	    "writer: body over Content-Length: -1");
	cache_store_end(w, 1);
	CHECK(look("/w", "", 0) == CACHE_MISS, "writer: long body dropped");

	/* Another variant may be written at the same time. */
	http_parse_response(vhead, strlen(vhead), 0, &vm);
	w = cache_store_begin(req, strlen(req), "http", &vm, vhead, T0, T0);
	w2 = cache_store_begin(reqgz, strlen(reqgz), "http", &vm, vhead, T0,
	    T0);
	CHECK(w >= 0 && w2 >= 0 && w != w2, "writer: two variants at once");
	CHECK(cache_store_begin(reqgz, strlen(reqgz), "http", &vm, vhead, T0,
	    T0) == -1, "writer: but not one variant twice");
	cache_store_append(w, "id", 2);
	cache_store_append(w2, "gz", 2);
	cache_store_end(w2, 1);
	cache_store_end(w, 1);
	cache_get_stats(&st);
	CHECK(st.objects == 2 && look("/w", "", 0) == CACHE_HIT &&
	    look("/w", "Accept-Encoding: gzip\r\n", 0) == CACHE_HIT,
	    "writer: both variants kept");

	/* Invalidated while being written: the writer's appends fail. */
	w = cache_store_begin(req, strlen(req), "http", &rm, head, T0, T0);
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "/w", 2 });
	CHECK(w >= 0 && cache_store_append(w, "0123456789", 10) == -1,
	    "writer: invalidated meanwhile: -1");
	cache_store_end(w, 1);
	CHECK(look("/w", "", 0) == CACHE_MISS, "writer: and nothing stored");

	/* Over max_object: refused at once when the length says so ... */
	{
		char lhead[] = "HTTP/1.1 200 OK\r\n"
		    "Cache-Control: max-age=60\r\nContent-Length: 5000\r\n\r\n";

		http_parse_response(lhead, strlen(lhead), 0, &vm);
		CHECK(cache_store_begin(req, strlen(req), "http", &vm, lhead,
		    T0, T0) == -1, "max_object: Content-Length over it");
	}
	/* ... and dropped when a chunked body outgrows it. */
	http_parse_response(chead, strlen(chead), 0, &vm);
	w = cache_store_begin(req, strlen(req), "http", &vm, chead, T0, T0);
	CHECK(w >= 0 && cache_store_append(w, "1000\r\n", 6) == 0,
	    "max_object: chunked begins");
	for (r = 0, i = 0; i < 10 && r == 0; i++)
		r = cache_store_append(w, big, 512);
	CHECK(r == -1 && i == 8, "max_object: the append past 4K fails");
	cache_get_stats(&st);
	CHECK(st.bytes_used == 0 && st.objects == 0,
	    "max_object: its blocks are free again");
	CHECK(cache_store_append(w, big, 1) == -1,
	    "max_object: the writer is ended");
	cache_store_end(w, 1);
	CHECK(look("/w", "", 0) == CACHE_MISS, "max_object: nothing stored");

	/* Writers run out: more stores at once are refused, not queued. */
	{
		int ids[70], n = 0, all = 1;
		char path[32], rq[128];

		for (i = 0; i < 70; i++) {
			snprintf(path, sizeof(path), "/x%d", i);
			snprintf(rq, sizeof(rq), "GET %s HTTP/1.1\r\nHost: "
			    HOST "\r\n\r\n", path);
			ids[i] = cache_store_begin(rq, strlen(rq), "http", &rm,
			    head, T0, T0);
			n += ids[i] >= 0;
		}
		CHECK(n == 64 && ids[64] == -1, "writers: 64 at once");
		for (i = 0; i < 70; i++)
			if (ids[i] >= 0) {
				all &= cache_store_append(ids[i], "0123456789",
				    10) == 0;
				cache_store_end(ids[i], 1);
			}
		cache_get_stats(&st);
		CHECK(all && st.objects == 64, "writers: all 64 complete");
	}
	/* Requests the cache must not store for. */
	{
		char post[] = "POST /w HTTP/1.1\r\nHost: " HOST "\r\n"
		    "Content-Length: 0\r\n\r\n";
		char head10[] = "HEAD /w HTTP/1.1\r\nHost: " HOST "\r\n\r\n";
		char nohost[] = "GET /w HTTP/1.0\r\n\r\n";

		CHECK(cache_store_begin(post, strlen(post), "http", &rm, head,
		    T0, T0) == -1, "store: POST not stored");
		CHECK(cache_store_begin(head10, strlen(head10), "http", &rm,
		    head, T0, T0) == -1, "store: HEAD not stored");
		CHECK(cache_store_begin(nohost, strlen(nohost), "http", &rm,
		    head, T0, T0) == -1, "store: no Host not stored");
		CHECK(cache_store_begin("GET /", 5, "http", &rm, head, T0,
		    T0) == -1, "store: bad request head");
	}
}

/* Revalidation: a 304 refreshes the entry (RFC 9111 4.3.4). */
static void
refresh(void)
{
	static char body[2000];
	struct cache_ref a, b, c, d;
	struct http_rsp o;
	struct http_msg nm;
	struct cache_stats st;
	char cond[256], want[256], lm[64], r304[512];
	long n;
	size_t i, seen;
	int hl;

	for (i = 0; i < sizeof(body); i++)
		body[i] = (char)('a' + i % 26);
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	cache_init(256 * KB, 64 * KB);
	CHECK(store_full("/e", "", "HTTP/1.1 200 OK\r\nDate: @0;\r\n"
	    "Cache-Control: max-age=10\r\nETag: \"v1\"\r\n"
	    "Last-Modified: @-1000;\r\nContent-Length: 2000\r\n\r\n", body,
	    sizeof(body), 700, 0, 0) == 0, "refresh: stored");
	/* Readers from while it was fresh. */
	CHECK(lookup("GET", "/e", "", 5, &a, cond, sizeof(cond)) == CACHE_HIT,
	    "refresh: fresh at 5");
	b = a;
	CHECK(cache_read(&a, outbuf, 10, &o, 0, T0) == 10,
	    "refresh: reader a in the head");
	n = cache_read(&b, outbuf, 300, &o, 0, T0);
	hl = http_parse_response(outbuf, 300, 0, &pm);
	CHECK(n == 300 && hl > 0 && hl < 300, "refresh: reader b in the body");
	if (hl <= 0)
		return;
	seen = 300 - (size_t)hl;

	CHECK(lookup("GET", "/e", "", 20, &c, cond, sizeof(cond)) ==
	    CACHE_STALE, "refresh: stale at 20");
	hdate(T0 - 1000, lm, sizeof(lm));
	snprintf(want, sizeof(want), "If-None-Match: \"v1\"\r\n"
	    "If-Modified-Since: %s\r\n", lm);
	CHECK(strcmp(cond, want) == 0, "refresh: both validators in cond");
	CHECK(lookup("GET", "/e", "", 20, &d, cond, 30) == CACHE_MISS,
	    "refresh: cond does not fit: miss");

	/* Same length: rewritten in place. */
	expand("HTTP/1.1 304 Not Modified\r\nDate: @20;\r\n"
	    "Cache-Control: max-age=99\r\nETag: \"v1\"\r\n\r\n", r304,
	    sizeof(r304));
	CHECK(http_parse_response(r304, strlen(r304), 0, &nm) > 0 &&
	    cache_refresh(&c, &nm, T0 + 20, T0 + 20) == 0,
	    "refresh: 304 accepted");
	CHECK(cache_read(&a, outbuf, 100, &o, 0, T0) == -1,
	    "refresh: reader in the old head gets -1");
	n = read_all(&b, &o, 0, 100, out2, sizeof(out2));
	CHECK(n == (long)(sizeof(body) - seen) &&
	    memcmp(out2, body + seen, sizeof(body) - seen) == 0,
	    "refresh: reader in the body goes on with the body's bytes");
	n = read_all(&c, &o, 0, 4096, outbuf, sizeof(outbuf));
	CHECK(n > 0 && http_parse_response(outbuf, (size_t)n, 0, &pm) > 0 &&
	    pm.status == 200 && pm_is("X-Cache", "REVALIDATED") &&
	    pm_is("Age", "0") && pm_is("Cache-Control", "max-age=99") &&
	    pm_count("Cache-Control") == 1 && pm_count("Date") == 1 &&
	    n - (long)pm.head_len == 2000 &&
	    memcmp(outbuf + pm.head_len, body, 2000) == 0,
	    "refresh: served REVALIDATED with the new fields, same body");
	CHECK(look("/e", "", 118) == CACHE_HIT && look("/e", "", 119) ==
	    CACHE_STALE, "refresh: fresh for 99 more seconds");

	/* Longer: copied into a new chain; still the same body. */
	CHECK(lookup("GET", "/e", "", 200, &c, cond, sizeof(cond)) ==
	    CACHE_STALE, "refresh: stale again");
	expand("HTTP/1.1 304 Not Modified\r\nDate: @200;\r\n"
	    "Cache-Control: max-age=1000, must-revalidate\r\nETag: \"v1\"\r\n"
	    "X-New: a-field-that-was-not-there-before\r\nAge: 5\r\n\r\n",
	    r304, sizeof(r304));
	http_parse_response(r304, strlen(r304), 0, &nm);
	CHECK(cache_refresh(&c, &nm, T0 + 198, T0 + 200) == 0 && c.age == 7,
	    "refresh: longer head, Age 5 + delay 2");
	n = read_all(&c, &o, 0, 33, outbuf, sizeof(outbuf));
	CHECK(n > 0 && http_parse_response(outbuf, (size_t)n, 0, &pm) > 0 &&
	    pm_is("X-New", "a-field-that-was-not-there-before") &&
	    pm_is("Age", "7") && pm.clen == 2000 &&
	    n - (long)pm.head_len == 2000 &&
	    memcmp(outbuf + pm.head_len, body, 2000) == 0,
	    "refresh: rebuilt copy correct");
	CHECK(look("/e", "", 1192) == CACHE_HIT, "refresh: fresh until 1193");
	CHECK(lookup("GET", "/e", "Cache-Control: max-stale\r\n", 1193, &c,
	    cond, sizeof(cond)) == CACHE_STALE,
	    "refresh: must-revalidate taken from the 304");

	/* A 304 for another ETag is not about this entry. */
	expand("HTTP/1.1 304 Not Modified\r\nDate: @1200;\r\n"
	    "Cache-Control: max-age=1000\r\nETag: \"v2\"\r\n\r\n", r304,
	    sizeof(r304));
	http_parse_response(r304, strlen(r304), 0, &nm);
	CHECK(cache_refresh(&c, &nm, T0 + 1200, T0 + 1200) == -1,
	    "refresh: other ETag refused");
	CHECK(look("/e", "", 1200) == CACHE_STALE, "refresh: entry unchanged");
	/* Gone meanwhile. */
	cache_invalidate("http", (struct slice){ HOST, 11 },
	    (struct slice){ "/e", 2 });
	CHECK(cache_refresh(&c, &nm, T0 + 1200, T0 + 1200) == -1,
	    "refresh: entry gone: -1");
	cache_get_stats(&st);
	CHECK(st.revalidated == 2, "refresh: revalidated counted");
}

static void
stats(void)
{
	struct cache_stats st;

	cache_init(256 * KB, 64 * KB);
	store("/s1", "", 200, CC_100, "one", 0, 0);
	store("/s2", "", 200, CC_100 ETAG, "two", 0, 0);
	store("/s3", "", 200, CC_100 "Cache-Control: no-store\r\n", "x", 0,
	    0);
	look("/s1", "", 1);			/* hit */
	look("/s1", "If-None-Match: *\r\n", 1);	/* hit (304) */
	look("/s2", "", 200);			/* miss (stale) */
	look("/s3", "", 1);			/* miss */
	look("/none", "Cache-Control: only-if-cached\r\n", 1); /* miss */
	cache_get_stats(&st);
	CHECK(st.hits == 2 && st.misses == 3 && st.stores == 2 &&
	    st.objects == 2 && st.evictions == 0 && st.revalidated == 0,
	    "stats: hits, misses, stores, objects");
	CHECK(st.bytes_total == 256 * KB && st.bytes_used == 2 * 512,
	    "stats: bytes: two objects of one block each");
	if (st.hits != 2 || st.misses != 3)
		printf("  hits %llu misses %llu\n",
		    (unsigned long long)st.hits,
		    (unsigned long long)st.misses);
}

/*
 * Fill a 1 MB arena with objects of mixed sizes, far past capacity, and
 * count the bytes of the objects still there against the arena.
 */
static double
utilisation(const char *label, size_t lo, size_t hi, int count)
{
	static char body[64 * KB];
	static size_t size[4000];
	struct cache_stats st;
	uint32_t x = 12345;
	char path[32], head[256];
	double used = 0, u;
	size_t k, j, octaves;
	int i, hl;

	for (octaves = 0, k = lo; k < hi; k *= 2)
		octaves++;
	memset(body, 'u', sizeof(body));
	cache_init(1024 * KB, 64 * KB);
	for (i = 0; i < count; i++) {
		/* about log-uniform: a random octave, a random size in it */
		x = x * 1103515245u + 12345u;
		for (k = lo, j = (x >> 16) % octaves; j > 0; j--)
			k *= 2;
		x = x * 1103515245u + 12345u;
		size[i] = k + (x >> 8) % k;
		if (size[i] > hi)
			size[i] = hi;
		snprintf(path, sizeof(path), "/u%d", i);
		hl = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n"
		    "Cache-Control: max-age=100\r\nContent-Length: %zu\r\n\r\n",
		    size[i]);
		store_full(path, "", head, body, size[i], 4096, 0, 0);
		/* bytes held: key, head and body */
		size[i] += (size_t)hl + strlen("http://" HOST) + strlen(path);
	}
	for (i = 0; i < count; i++) {
		snprintf(path, sizeof(path), "/u%d", i);
		if (look(path, "", 1) == CACHE_HIT)
			used += (double)size[i];
	}
	cache_get_stats(&st);
	u = used / (double)st.bytes_total;
	printf("cache: %s %zu..%zu B: %u objects, %.1f%% of the 1 MB arena "
	    "holds them (blocks in use %.1f%%)\n", label, lo, hi, st.objects,
	    100 * u, 100.0 * (double)st.bytes_used / (double)st.bytes_total);
	return u;
}

void
unit_cache(void)
{
	size_t i;
	char cond[16];
	struct cache_ref ref;

	/* Off: everything misses, nothing is stored. */
	CHECK(cache_init(0, 0) == 0, "cache off: init");
	CHECK(store("/f", "", 200, CC_100, "x", 0, 0) == -1 &&
	    lookup("GET", "/f", "", 0, &ref, cond, sizeof(cond)) ==
	    CACHE_MISS, "cache off: miss");
	CHECK(cache_init(1000, 100) == -1, "too small an arena: -1");

	for (i = 0; i < sizeof(fcases) / sizeof(fcases[0]); i++)
		fcase_run(&fcases[i]);
	for (i = 0; i < sizeof(ccases) / sizeof(ccases[0]); i++)
		ccase_run(&ccases[i]);
	notmod_head();
	read_exact();
	chunked();
	vary();
	lru();
	writers();
	refresh();
	stats();
	CHECK(utilisation("mixed", 256, 60 * KB, 3000) > 0.80,
	    "utilisation of mixed sizes > 80%");
	utilisation("small", 200, 4 * KB, 4000);
	cache_free();
}
