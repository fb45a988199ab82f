/*
 * test/bfpi.c - the first 1042 32-bit words of pi's fractional part,
 * which Blowfish (bcrypt, acl.c) starts from, worked out with Machin's
 * formula pi = 16 atan(1/5) - 4 atan(1/239) in fixed point: word 0 the
 * integer part, then 32 bits a word, with guard words for the rounding
 * of the divisions.
 *
 * It made ../bfpi.h:
 *	cc -DBFPI_MAIN -o /tmp/bfpi test/bfpi.c && /tmp/bfpi >bfpi.h
 * and test/unit_acl.c runs bfpi_compute() to check every word of it.
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "bfpi_test.h"

#define PI_WORDS (1 + BFPI_WORDS + 3)

static void
fx_div(uint32_t *x, uint32_t d)
{
	uint64_t r = 0;
	int i;

	for (i = 0; i < PI_WORDS; i++) {
		r = r << 32 | x[i];
		x[i] = (uint32_t)(r / d);
		r %= d;
	}
}

/* acc += k * x, or acc -= k * x; k small. */
static void
fx_addmul(uint32_t *acc, const uint32_t *x, uint32_t k, int sub)
{
	uint64_t carry = 0, v;
	int i;

	for (i = PI_WORDS - 1; i >= 0; i--) {
		v = (uint64_t)x[i] * k + carry;
		carry = v >> 32;
		v &= 0xffffffff;
		if (sub) {
			carry += acc[i] < v;
			acc[i] -= (uint32_t)v;
		} else {
			acc[i] += (uint32_t)v;
			carry += acc[i] < (uint32_t)v;
		}
	}
}

static int
fx_zero(const uint32_t *x)
{
	int i;

	for (i = 0; i < PI_WORDS; i++)
		if (x[i] != 0)
			return 0;
	return 1;
}

/* acc += k * atan(1/m) = k * sum (-1)^n / ((2n+1) m^(2n+1)); neg: -= */
static void
fx_atan(uint32_t *acc, uint32_t m, uint32_t k, int neg)
{
	uint32_t pw[PI_WORDS], t[PI_WORDS];
	uint32_t n;

	memset(pw, 0, sizeof(pw));
	pw[0] = 1;
	fx_div(pw, m);
	for (n = 0; !fx_zero(pw); n++) {
		memcpy(t, pw, sizeof(t));
		fx_div(t, 2 * n + 1);
		fx_addmul(acc, t, k, (int)(n & 1) ^ neg);
		fx_div(pw, m);
		fx_div(pw, m);
	}
}

void
bfpi_compute(uint32_t out[BFPI_WORDS])
{
	uint32_t pi[PI_WORDS];

	memset(pi, 0, sizeof(pi));
	fx_atan(pi, 5, 16, 0);
	fx_atan(pi, 239, 4, 1);
	memcpy(out, pi + 1, BFPI_WORDS * sizeof(*out));
}

#ifdef BFPI_MAIN
int
main(void)
{
	uint32_t w[BFPI_WORDS];
	int i;

	bfpi_compute(w);
	printf("/*\n * bfpi.h - Blowfish's initial P array (18 words) and "
	    "S-boxes (4 x 256):\n * the fractional part of pi, 32 bits a "
	    "word. Made by test/bfpi.c, which\n * computes it (Machin's "
	    "formula); test/unit_acl.c checks every word.\n */\n"
	    "static const uint32_t bf_pi[18 + 1024] = {");
	for (i = 0; i < BFPI_WORDS; i++)
		printf("%s0x%08x,", i % 6 == 0 ? "\n\t" : " ", (unsigned)w[i]);
	printf("\n};\n");
	return 0;
}
#endif
