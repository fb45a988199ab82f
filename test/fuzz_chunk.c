/*
 * libFuzzer target: http_chunk_scan. The answer must not depend on how
 * the body is cut into reads: one call, splits at several points and byte
 * by byte must consume the same bytes and agree on done or error.
 */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "proxy.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

#define ASSERT(c) do { if (!(c)) abort(); } while (0)

/*
 * Feed buf in pieces ending at cuts[] (then the rest); byte by byte when
 * ncut < 0. Returns bytes consumed or -1; *done as the scanner said.
 */
static long
feed(const char *buf, size_t len, const size_t *cuts, int ncut, int *done)
{
	struct http_chunk c;
	size_t at, end;
	long r, total;
	int k;

	http_chunk_init(&c);
	total = 0;
	*done = 0;
	k = 0;
	for (at = 0; at < len; at = end) {
		if (ncut < 0)
			end = at + 1;
		else {
			while (k < ncut && cuts[k] <= at)
				k++;
			end = k < ncut ? cuts[k] : len;
		}
		r = http_chunk_scan(&c, buf + at, end - at, done);
		if (r < 0)
			return -1;
		ASSERT((size_t)r <= end - at);
		total += r;
		if (*done)
			break;
		ASSERT((size_t)r == end - at);
	}
	return total;
}

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *buf = (const char *)data;
	struct http_chunk c;
	size_t cuts[3], t;
	long r, r2;
	int done, d2, i, j;

	http_chunk_init(&c);
	r = http_chunk_scan(&c, buf, size, &done);
	ASSERT(r == -1 || (r >= 0 && (size_t)r <= size));
	if (r >= 0 && !done)
		ASSERT((size_t)r == size);
	if (done) {
		ASSERT(r >= 5 && memcmp(buf + r - 2, "\r\n", 2) == 0);
		/* The body delimits itself: the same without what follows. */
		http_chunk_init(&c);
		ASSERT(http_chunk_scan(&c, buf, (size_t)r, &d2) == r && d2);
		/* And nothing more is taken after the end. */
		ASSERT(http_chunk_scan(&c, buf, size, &d2) == 0 && d2);
	}

	/* Cut points from the input's own bytes, so the fuzzer steers them. */
	for (i = 0; i < 3; i++)
		cuts[i] = size == 0 ? 0 :
		    (size_t)data[i % size] * (size_t)(i + 1) % size;
	for (i = 0; i < 2; i++)		/* sort the three */
		for (j = 0; j < 2 - i; j++)
			if (cuts[j] > cuts[j + 1]) {
				t = cuts[j];
				cuts[j] = cuts[j + 1];
				cuts[j + 1] = t;
			}
	for (i = 1; i <= 3; i++) {
		r2 = feed(buf, size, cuts, i, &d2);
		ASSERT(r2 == r && (r < 0 || d2 == done));
	}
	r2 = feed(buf, size, cuts, -1, &d2);
	ASSERT(r2 == r && (r < 0 || d2 == done));
	r2 = feed(buf, size, NULL, 0, &d2);
	ASSERT(r2 == r && (r < 0 || d2 == done));
	return 0;
}
