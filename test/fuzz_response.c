/*
 * libFuzzer target: http_parse_response and http_write_response. The
 * first input byte picks head_req and the writer's options; the rest is
 * the response. The head we give the client must parse again with the
 * same framing, or a backend could split responses through us.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define OUTCAP 8192
#define GUARD 64
#define FRAMING (HF_CL | HF_CHUNKED | HF_TE_OTHER | HF_NOBODY)

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

static int with_prefix;

static int
write_resp(size_t cap, int close, int minor, const char *hide)
{
	size_t i;
	int r;

	memset(out, 0x5a, sizeof(out));
	{
		struct http_rsp o;

		memset(&o, 0, sizeof(o));
		o.close = close;
		o.client_minor = minor;
		o.hide = hide;
		/* Exercise the Location rewriting on half the inputs. */
		if (with_prefix) {
			o.prefix = "/app/";
			o.server = "127.0.0.1:9001";
			o.host_hash = http_host_hash("example.org", 11);
			o.extra = "Strict-Transport-Security: max-age=1\r\n";
		}
		r = http_write_response(out, cap, &m, &o);
	}
	ASSERT(r == -1 || (r > 0 && (size_t)r <= cap));
	for (i = cap; i < sizeof(out); i++)
		ASSERT(out[i] == 0x5a);
	return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *hides[] = { NULL, "Server X-Powered-By",
	    "content-length transfer-encoding date", "" };
	const char *buf, *hide;
	unsigned fl;
	int i, r, r2, w, head_req, close, minor;

	if (size < 1)
		return 0;
	head_req = data[0] & 1;
	close = (data[0] >> 1) & 1;
	minor = (data[0] >> 2) & 1;
	hide = hides[(data[0] >> 3) & 3];
	with_prefix = (data[0] >> 5) & 1;
	buf = (const char *)data + 1;
	size--;

	r = http_parse_response(buf, size, head_req, &m);
	ASSERT(r == 0 || r == -502 || r > 0);
	if (r <= 0)
		return 0;

	ASSERT((size_t)r <= size && m.head_len == (uint32_t)r && r >= 4);
	ASSERT(memcmp(buf + r - 4, "\r\n\r\n", 4) == 0);
	ASSERT(m.nh >= 0 && m.nh <= HTTP_MAX_HEADERS);
	ASSERT(m.status >= 100 && m.status <= 599);
	ASSERT(m.minor == 0 || m.minor == 1);
	inside(m.reason, buf, (size_t)r);
	for (i = 0; i < m.nh; i++) {
		inside(m.h[i].name, buf, (size_t)r);
		inside(m.h[i].value, buf, (size_t)r);
		ASSERT(m.h[i].name.n > 0);
	}

	/* At most one way to find the end of the body. */
	fl = m.flags;
	ASSERT(((fl & HF_CL) != 0) + ((fl & HF_CHUNKED) != 0) +
	    ((fl & HF_TE_OTHER) != 0) + ((fl & HF_NOBODY) != 0) <= 1);
	ASSERT(((fl & HF_NOBODY) != 0) == (head_req || m.status < 200 ||
	    m.status == 204 || m.status == 304));
	ASSERT(!(fl & HF_UPGRADE) || m.status == 101);
	ASSERT(!(fl & (HF_ABSOLUTE | HF_EXPECT100)));

	r2 = http_parse_response(buf, (size_t)r, head_req, &m2);
	ASSERT(r2 == r && m2.flags == fl);
	ASSERT(http_parse_response(buf, (size_t)r - 1, head_req, &m2) == 0);

	w = write_resp(OUTCAP, close, minor, hide);
	ASSERT(w > 0);
	ASSERT(write_resp((size_t)w - 1, close, minor, hide) == -1);
	ASSERT(write_resp((size_t)w / 3, close, minor, hide) == -1);
	ASSERT(write_resp((size_t)w, close, minor, hide) == w);

	r2 = http_parse_response(out, (size_t)w, head_req, &m2);
	if (r2 == -502 && m.nh > HTTP_MAX_HEADERS - 2)
		return 0;	/* Via and Connection overflowed the table */
	ASSERT(r2 == w);
	ASSERT(m2.status == m.status && m2.minor == 1);
	ASSERT((m2.flags & FRAMING) == (fl & FRAMING));
	ASSERT(!(fl & HF_CL) || m2.clen == m.clen);
	ASSERT((m2.flags & HF_UPGRADE) == (fl & HF_UPGRADE));
	if (m.status != 101) {
		ASSERT(!!(m2.flags & HF_CLOSE) == !!close);
		ASSERT(!!(m2.flags & HF_KEEPALIVE) == (!close && minor == 0));
	}
	return 0;
}
