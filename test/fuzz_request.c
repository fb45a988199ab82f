/*
 * libFuzzer target: http_parse_request and http_write_request.
 *
 * Beyond "does not crash": every slice lies in the input, a complete head
 * ends in CRLF CRLF and parses the same without the bytes after it, and
 * the head we would send upstream parses again with the same framing -
 * the property that keeps requests from being smuggled past us.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUTCAP 8192
#define GUARD 64

static struct http_msg m, m2;
static char out[OUTCAP + GUARD];

#define ASSERT(c) do { if (!(c)) abort(); } while (0)

static void
inside(struct slice s, const char *buf, size_t len)
{
	ASSERT(s.p != NULL);
	if (s.n == 0)
		return;
	ASSERT(s.p >= buf && s.p + s.n <= buf + len);
}

static int
write_req(size_t cap, const struct http_fwd *f)
{
	size_t i;
	int r;

	memset(out, 0x5a, sizeof(out));
	r = http_write_request(out, cap, &m, f);
	ASSERT(r == -1 || (r > 0 && (size_t)r <= cap));
	for (i = cap; i < sizeof(out); i++)
		ASSERT(out[i] == 0x5a);
	return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct http_fwd f;
	unsigned fl;
	int i, r, r2, w;

	r = http_parse_request(buf, size, &m);
	ASSERT(r == 0 || r == -400 || r == -431 || r == -501 || r > 0);
	if (r <= 0)
		return 0;

	/* The head. */
	ASSERT((size_t)r <= size && m.head_len == (uint32_t)r && r >= 4);
	ASSERT(memcmp(buf + r - 4, "\r\n\r\n", 4) == 0);
	ASSERT(m.nh >= 0 && m.nh <= HTTP_MAX_HEADERS);
	ASSERT(m.minor == 0 || m.minor == 1);
	inside(m.method, buf, (size_t)r);
	inside(m.target, buf, (size_t)r);
	inside(m.host, buf, (size_t)r);
	if (m.path.n == 1 && m.path.p[0] == '/')
		;	/* may be the static "/" of an absolute-form */
	else
		inside(m.path, buf, (size_t)r);
	ASSERT(m.method.n > 0 && m.target.n > 0 && m.path.n > 0);
	for (i = 0; i < m.nh; i++) {
		inside(m.h[i].name, buf, (size_t)r);
		inside(m.h[i].value, buf, (size_t)r);
		ASSERT(m.h[i].name.n > 0);
	}

	/* Framing is unambiguous. */
	fl = m.flags;
	ASSERT(!((fl & HF_CL) && (fl & HF_CHUNKED)));
	ASSERT(!(fl & (HF_TE_OTHER | HF_NOBODY)));
	ASSERT(!(fl & HF_CHUNKED) || m.minor == 1);
	ASSERT(!(fl & HF_UPGRADE) || m.minor == 1);
	ASSERT(m.minor == 0 || m.host.n > 0);

	/* The parser looks at nothing after the head... */
	r2 = http_parse_request(buf, (size_t)r, &m2);
	ASSERT(r2 == r && m2.flags == fl && m2.nh == m.nh);
	/* ...and never reports a shorter head as complete or broken. */
	ASSERT(http_parse_request(buf, (size_t)r - 1, &m2) == 0);
	ASSERT(http_parse_request(buf, (size_t)r / 2, &m2) == 0);

	/* Rewrite for upstream, under the four trust/version combinations. */
	memset(&f, 0, sizeof(f));
	f.client_ip = "192.0.2.1";
	f.proto = "https";
	for (i = 0; i < 4; i++) {
		f.trusted = i & 1;
		f.minor = i >> 1;
		w = write_req(OUTCAP, &f);
		ASSERT(w > 0);
		/* Too small by one: refused, and nothing past the cap. */
		ASSERT(write_req((size_t)w - 1, &f) == -1);
		ASSERT(write_req((size_t)w / 2, &f) == -1);
		ASSERT(write_req((size_t)w, &f) == w);

		r2 = http_parse_request(out, (size_t)w, &m2);
		if (r2 == -431 && m.nh > HTTP_MAX_HEADERS - 6)
			continue;	/* our added fields overflowed */
		if (f.minor == 0 && (fl & HF_CHUNKED)) {
			/* A 1.0 upstream cannot take chunked: proxy.c's job. */
			ASSERT(r2 == -400);
			continue;
		}
		ASSERT(r2 == w);
		/* The upstream frames the body exactly as we did. */
		ASSERT((m2.flags & (HF_CL | HF_CHUNKED)) ==
		    (fl & (HF_CL | HF_CHUNKED)));
		ASSERT(!(fl & HF_CL) || m2.clen == m.clen);
		/* Upgrade exists only in HTTP/1.1 (RFC 9110 7.8). */
		ASSERT((m2.flags & HF_UPGRADE) ==
		    (m2.minor == 1 ? (fl & HF_UPGRADE) : 0));
		ASSERT(!(m2.flags & (HF_ABSOLUTE | HF_EXPECT100 | HF_CLOSE)));
		ASSERT(m2.method.n == m.method.n &&
		    memcmp(m2.method.p, m.method.p, m.method.n) == 0);
		ASSERT(m2.path.n == m.path.n &&
		    memcmp(m2.path.p, m.path.p, m.path.n) == 0);
		ASSERT(m2.host.n == m.host.n &&
		    memcmp(m2.host.p, m.host.p, m.host.n) == 0);
		ASSERT(m2.minor == (f.minor && m.host.n > 0));
	}
	return 0;
}
