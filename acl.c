/*
 * acl.c - access control and per-address limits.
 *
 * One fixed table of client addresses, reserved at startup, holds each
 * address's open connections (max_conns_per_ip) and its token bucket
 * (rate, rate_burst). It never grows: an attacker rotating addresses
 * only makes it forget the least recently seen ones. Slots are found by
 * a hash keyed with random bytes drawn at startup, so nobody can choose
 * addresses that all land in one place.
 */
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>

#include "proxy.h"

#define PROBES	8		/* slots looked at per address */

struct peer {
	uint8_t addr[16];	/* IPv4 as v4-mapped IPv6 */
	uint8_t used;
	uint16_t conns;		/* connections open now */
	int32_t tokens;		/* milli-requests in the bucket */
	int64_t refill;		/* when tokens were last topped up (ms) */
	int64_t seen;		/* last connection or request (ms) */
};

static struct peer *tab;
static uint32_t ntab;		/* a power of two */
static uint64_t hkey[2];

int
acl_init(long entries)
{
	uint32_t n = 64;

	while (n < (uint32_t)entries && n < (1u << 24))
		n <<= 1;
	if (getrandom(hkey, sizeof(hkey), 0) != (ssize_t)sizeof(hkey))
		return -1;
	tab = calloc(n, sizeof(*tab));
	if (tab == NULL)
		return -1;
	ntab = n;
	return 0;
}

size_t
acl_table_size(void)
{
	return (size_t)ntab * sizeof(*tab);
}

/* The address as 16 bytes: IPv4 (and v4-mapped IPv6) as ::ffff:a.b.c.d,
 * so one client is one key whichever way it arrived. */
static int
addr_key(const struct sockaddr *sa, uint8_t out[16])
{
	static const uint8_t mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	    0xff, 0xff };

	if (sa->sa_family == AF_INET) {
		memcpy(out, mapped, 12);
		memcpy(out + 12, &((const struct sockaddr_in *)sa)->sin_addr,
		    4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		memcpy(out, &((const struct sockaddr_in6 *)sa)->sin6_addr, 16);
		return 0;
	}
	return -1;
}

/* A keyed mix of the address (splitmix64 finaliser over key ^ words). */
static uint32_t
addr_hash(const uint8_t a[16])
{
	uint64_t w[2], h;
	int i;

	memcpy(w, a, 16);
	h = hkey[0];
	for (i = 0; i < 2; i++) {
		h ^= w[i] ^ hkey[1];
		h += 0x9e3779b97f4a7c15ULL;
		h = (h ^ (h >> 30)) * 0xbf58476d1ce4e5b9ULL;
		h = (h ^ (h >> 27)) * 0x94d049bb133111ebULL;
		h ^= h >> 31;
	}
	return (uint32_t)h;
}

/*
 * The address's slot, made when create is set. A new address takes a
 * free slot among its PROBES, else the least recently seen one (an
 * address with connections open only when all have some).
 */
static struct peer *
lookup(const struct sockaddr *sa, int create, int64_t now)
{
	struct peer *p, *victim = NULL;
	uint8_t a[16];
	uint32_t h, i;

	if (tab == NULL || addr_key(sa, a) == -1)
		return NULL;
	h = addr_hash(a);
	for (i = 0; i < PROBES; i++) {
		p = &tab[(h + i) & (ntab - 1)];
		if (p->used && memcmp(p->addr, a, 16) == 0)
			return p;
		if (!create)
			continue;
		if (!p->used) {
			if (victim == NULL || victim->used)
				victim = p;
		} else if (victim == NULL || (victim->used &&
		    ((p->conns == 0) > (victim->conns == 0) ||
		    ((p->conns == 0) == (victim->conns == 0) &&
		    p->seen < victim->seen))))
			victim = p;
	}
	if (victim == NULL)
		return NULL;
	memset(victim, 0, sizeof(*victim));
	memcpy(victim->addr, a, 16);
	victim->used = 1;
	victim->refill = now;
	victim->tokens = -1;	/* filled on first use */
	return victim;
}

int
acl_conn_open(const struct sockaddr *sa, long max, int64_t now)
{
	struct peer *p;

	if (max <= 0)
		return 1;
	if ((p = lookup(sa, 1, now)) == NULL)
		return 1;
	p->seen = now;
	if (p->conns >= max)
		return 0;
	p->conns++;
	return 1;
}

void
acl_conn_close(const struct sockaddr *sa, long max)
{
	struct peer *p;

	if (max <= 0)
		return;
	/* Its slot may have been given away meanwhile: then nothing to do. */
	if ((p = lookup(sa, 0, 0)) != NULL && p->conns > 0)
		p->conns--;
}

int
acl_rate(const struct sockaddr *sa, long rate, long burst, int64_t now,
    int *retry_after)
{
	struct peer *p;
	int64_t cap, add;

	*retry_after = 0;
	if (rate <= 0)
		return 1;
	if (burst < 1)
		burst = rate;	/* unset: a second's worth at once */
	if ((p = lookup(sa, 1, now)) == NULL)
		return 1;
	p->seen = now;
	/* Tokens in thousandths: rate per second is rate per 1000 ms. */
	cap = (int64_t)burst * 1000;
	if (p->tokens < 0) {
		p->tokens = (int32_t)cap;
	} else {
		add = (now - p->refill) * rate;
		if (add > 0)
			p->tokens = (int32_t)(p->tokens + add > cap ? cap :
			    p->tokens + add);
	}
	p->refill = now;
	if (p->tokens >= 1000) {
		p->tokens -= 1000;
		return 1;
	}
	/* Whole seconds until one token is back (RFC 9110 10.2.3): each
	 * millisecond adds rate thousandths. */
	add = (1000 - p->tokens + rate - 1) / rate;
	*retry_after = (int)((add + 999) / 1000);
	if (*retry_after < 1)
		*retry_after = 1;
	return 0;
}

int
acl_allowed(const struct cidr *allow, int nallow, const struct cidr *deny,
    int ndeny, const struct sockaddr *sa)
{
	/* Deny wins; an allow list, when present, admits only itself. */
	if (ndeny > 0 && cidr_match(deny, ndeny, sa))
		return 0;
	if (nallow > 0 && !cidr_match(allow, nallow, sa))
		return 0;
	return 1;
}
