/*
 * libFuzzer target: cache.c. The input is four NUL-separated parts: the
 * request stored for, the response head and body, and a second request
 * to look up with; the first byte picks options (read size, complete or
 * not, HEAD, a refresh, an invalidation). Whatever comes in, what the
 * cache hands out must be a head that parses again, followed by exactly
 * the body that was stored, and revalidation lines that cannot split a
 * request.
 */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ASSERT(c) do { if (!(c)) abort(); } while (0)
#define T0 1700000000LL

static struct http_msg rq, rs, lq, pm;
static char out[1 << 16], cond[512], creq[1024];

/* The next NUL-terminated part of [*p, end), or the rest. */
static const char *
part(const char **p, const char *end, size_t *n)
{
	const char *s = *p, *z;

	z = memchr(s, '\0', (size_t)(end - s));
	*n = (size_t)((z != NULL ? z : end) - s);
	*p = z != NULL ? z + 1 : end;
	return s;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static int ready;
	static const char dflt[] = "GET /f HTTP/1.1\r\nHost: a\r\n\r\n";
	const char *p, *end, *req, *resp, *body, *req2;
	size_t nreq, nresp, nbody, nreq2, step, off, k, hl;
	struct cache_ref ref;
	struct http_rsp o;
	long n, r;
	int w, what, opt, head_only, nlen;

	if (!ready) {
		ASSERT(cache_init(128 * 1024, 16 * 1024) == 0);
		ready = 1;
	}
	if (size < 1)
		return 0;
	opt = data[0];
	p = (const char *)data + 1;
	end = (const char *)data + size;
	req = part(&p, end, &nreq);
	resp = part(&p, end, &nresp);
	body = part(&p, end, &nbody);
	req2 = part(&p, end, &nreq2);
	if (http_parse_request(req, nreq, &rq) <= 0) {
		req = dflt;
		nreq = sizeof(dflt) - 1;
	}
	if (http_parse_response(resp, nresp, 0, &rs) > 0) {
		w = cache_store_begin(req, nreq, (opt & 64) ? "https" : "http",
		    &rs, resp, T0, T0 + (opt & 3));
		for (off = 0; w >= 0 && off < nbody; off += k) {
			k = nbody - off < 100 ? nbody - off : 100;
			if (cache_store_append(w, body + off, k) != 0)
				w = -1;
		}
		if (w >= 0)
			cache_store_end(w, !(opt & 4));
	}
	if (http_parse_request(req2, nreq2, &lq) <= 0 &&
	    http_parse_request(req, nreq, &lq) <= 0)
		return 0;
	what = cache_lookup(&lq, (opt & 64) ? "https" : "http",
	    T0 + (opt & 8 ? 100000 : 5), &ref, cond, sizeof(cond));
	ASSERT(what >= CACHE_MISS && what <= CACHE_GATEWAY_TIMEOUT);
	if (what == CACHE_STALE) {
		/* The conditional lines must not split or end the request. */
		nlen = snprintf(creq, sizeof(creq),
		    "GET / HTTP/1.1\r\nHost: a\r\n%s\r\n", cond);
		ASSERT(nlen > 0 && (size_t)nlen < sizeof(creq));
		ASSERT(http_parse_request(creq, (size_t)nlen, &pm) == nlen);
		if (!(opt & 16) || http_parse_response(resp, nresp, 0, &rs) <=
		    0 || rs.status != 304 ||
		    cache_refresh(&ref, &rs, T0 + 6, T0 + 6) != 0)
			return 0;
	}
	if (what != CACHE_HIT && what != CACHE_NOTMOD && what != CACHE_STALE)
		return 0;
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	o.close = (opt >> 5) & 1;
	head_only = (opt >> 7) & 1;
	step = 1 + (size_t)(opt & 3) * 200;
	for (n = 0; (size_t)n < sizeof(out); n += r) {
		k = sizeof(out) - (size_t)n < step ? sizeof(out) - (size_t)n :
		    step;
		r = cache_read(&ref, out + n, k, &o, head_only, T0);
		ASSERT(r >= -1 && r <= (long)k);
		if (r <= 0)
			break;
	}
	ASSERT(r == 0);
	hl = (size_t)http_parse_response(out, (size_t)n, head_only, &pm);
	ASSERT((int)hl > 0);
	if (what == CACHE_NOTMOD || head_only)
		ASSERT(hl == (size_t)n);
	if (what == CACHE_NOTMOD)
		ASSERT(pm.status == 304);
	else if (!head_only && (pm.flags & HF_CL))
		ASSERT(pm.clen == (size_t)n - hl);
	if (opt & 32)
		cache_invalidate("http", lq.host, lq.path);
	return 0;
}
