/*
 * libFuzzer target: http_normalize_path. What routing and ACLs compare
 * against must be canonical: no "//", no dot segments, no encoded
 * separators, escapes only where needed and in upper case, and
 * normalising again changes nothing.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define CAP 8192
#define GUARD 64

static char out[CAP + GUARD], again[CAP + GUARD];

#define ASSERT(c) do { if (!(c)) abort(); } while (0)

static int
unreserved(unsigned char c)
{
	return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
	    (c >= '0' && c <= '9') || c == '-' || c == '.' || c == '_' ||
	    c == '~';
}

static int
upper_hex(unsigned char c)
{
	return (c >= '0' && c <= '9') || (c >= 'A' && c <= 'F');
}

static int
hv(unsigned char c)
{
	return c <= '9' ? c - '0' : c - 'A' + 10;
}

static int
norm(const char *p, size_t n, char *o, size_t cap)
{
	size_t i;
	int r;

	memset(o, 0x5a, CAP + GUARD);
	r = http_normalize_path(p, n, o, cap);
	ASSERT(r == -400 || r == -414 || (r > 0 && (size_t)r <= cap));
	for (i = cap; i < CAP + GUARD; i++)
		ASSERT(o[i] == 0x5a);
	return r;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p = (const char *)data;
	size_t i, small;
	int r, r2, v;

	if (size > CAP)
		return 0;
	r = norm(p, size, out, CAP);
	/* Decoding never lengthens, so CAP >= size always suffices. */
	ASSERT(r != -414);

	/* A smaller cap: the same answer when it fits, else 414. */
	small = size ? data[size - 1] % (size + 1) : 0;
	r2 = norm(p, size, again, small);
	ASSERT(r2 == r || r2 == -414);
	if (r2 > 0)
		ASSERT(memcmp(out, again, (size_t)r) == 0);
	r2 = norm(p, size, again, size);
	ASSERT(r2 == r);
	if (r < 0)
		return 0;

	ASSERT(out[0] == '/');
	for (i = 0; i < (size_t)r; i++) {
		unsigned char c = (unsigned char)out[i];

		ASSERT(c > 0x20 && c < 0x7f && c != '?' && c != '\\');
		if (c == '/' && i + 1 < (size_t)r)
			ASSERT(out[i + 1] != '/');
		if (c == '/' && i + 1 < (size_t)r && out[i + 1] == '.') {
			/* "/." and "/.." only as the start of a longer name */
			if (i + 2 == (size_t)r || out[i + 2] == '/')
				abort();
			if (out[i + 2] == '.' &&
			    (i + 3 == (size_t)r || out[i + 3] == '/'))
				abort();
		}
		if (c == '%') {
			ASSERT(i + 2 < (size_t)r && upper_hex(out[i + 1]) &&
			    upper_hex(out[i + 2]));
			v = hv(out[i + 1]) << 4 | hv(out[i + 2]);
			ASSERT(!unreserved((unsigned char)v) && v != '/' &&
			    v != '\\' && v != 0);
		}
	}

	/* Idempotent: canonical output is a fixed point. */
	r2 = norm(out, (size_t)r, again, CAP);
	ASSERT(r2 == r && memcmp(out, again, (size_t)r) == 0);
	return 0;
}
