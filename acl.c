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
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <arpa/inet.h>
#include <sys/random.h>

#include <bearssl.h>

#include "proxy.h"
#include "bfpi.h"

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
		return 2;
	if ((p = lookup(sa, 1, now)) == NULL)
		return 2;
	p->seen = now;
	if (p->conns >= max)
		return 0;
	p->conns++;
	return 1;
}

/* Whatever max is now (a reload may have changed it): a counted
 * connection is uncounted. */
void
acl_conn_close(const struct sockaddr *sa)
{
	struct peer *p;

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

/* ------------------------------------------------------- Basic auth */

struct user {
	char *name;
	char *hash;
};

struct authdb {
	struct user *users;
	int n;
	const char *dummy;	/* hashed when the user is unknown */
};

void
acl_auth_free(struct authdb *db)
{
	int i;

	if (db == NULL)
		return;
	for (i = 0; i < db->n; i++) {
		free(db->users[i].name);
		free(db->users[i].hash);
	}
	free(db->users);
	free(db);
}

/* ---------------------------------------------------- password hashes */

/*
 * The two crypt(3) schemes Basic auth accepts, written here on BearSSL's
 * SHA-512 so that no libcrypt is needed (on a static build it cost 190
 * KB, most of it for DES, MD5 and schemes we refuse). Each writes the
 * full "$id$...$hash" string for a password and a setting (a stored
 * hash or its prefix); -1 for a setting it cannot read.
 */

static const char crypt64[] =
    "./0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";

/* n characters of crypt's base-64 for w, least significant first. */
static char *
put64(char *o, uint32_t w, int n)
{
	while (n-- > 0) {
		*o++ = crypt64[w & 63];
		w >>= 6;
	}
	return o;
}

/* sha512(seq repeated to n bytes) into ctx: the P and S sequences. */
static void
sha512_rep(br_sha512_context *ctx, const void *seq, size_t seqlen, size_t n)
{
	for (; n >= seqlen; n -= seqlen)
		br_sha512_update(ctx, seq, seqlen);
	br_sha512_update(ctx, seq, n);
}

/*
 * SHA-512 crypt ($6$), as specified by Ulrich Drepper ("Unix crypt using
 * SHA-256 and SHA-512", 2007): "$6$[rounds=N$]salt$" + 86 characters.
 */
static int
sha512_crypt(const char *pw, const char *set, char *out)
{
	unsigned char a[64], b[64], dp[64], ds[64];
	br_sha512_context ctx;
	const char *salt, *e;
	unsigned long rounds = 5000, r;
	size_t plen = strlen(pw), slen, i;
	int custom = 0;
	char *o;

	salt = set + 3;
	if (strncmp(salt, "rounds=", 7) == 0) {
		char *end;

		if (salt[7] < '0' || salt[7] > '9')
			return -1;
		errno = 0;
		r = strtoul(salt + 7, &end, 10);
		/* libxcrypt refuses counts out of range; so do we. */
		if (*end != '$' || errno != 0 || r < 1000 || r > 999999999)
			return -1;
		rounds = r;
		custom = 1;
		salt = end + 1;
	}
	for (e = salt; *e != '\0' && *e != '$' && e - salt < 16; e++)
		;
	slen = (size_t)(e - salt);

	br_sha512_init(&ctx);		/* B = H(pw salt pw) */
	br_sha512_update(&ctx, pw, plen);
	br_sha512_update(&ctx, salt, slen);
	br_sha512_update(&ctx, pw, plen);
	br_sha512_out(&ctx, b);

	br_sha512_init(&ctx);		/* A */
	br_sha512_update(&ctx, pw, plen);
	br_sha512_update(&ctx, salt, slen);
	sha512_rep(&ctx, b, 64, plen);
	for (i = plen; i > 0; i >>= 1)
		if (i & 1)
			br_sha512_update(&ctx, b, 64);
		else
			br_sha512_update(&ctx, pw, plen);
	br_sha512_out(&ctx, a);

	br_sha512_init(&ctx);		/* DP: the P sequence's block */
	for (i = 0; i < plen; i++)
		br_sha512_update(&ctx, pw, plen);
	br_sha512_out(&ctx, dp);

	br_sha512_init(&ctx);		/* DS: the S sequence's block */
	for (i = 0; i < 16 + (size_t)a[0]; i++)
		br_sha512_update(&ctx, salt, slen);
	br_sha512_out(&ctx, ds);

	for (r = 0; r < rounds; r++) {
		br_sha512_init(&ctx);
		if (r & 1)
			sha512_rep(&ctx, dp, 64, plen);
		else
			br_sha512_update(&ctx, a, 64);
		if (r % 3 != 0)
			br_sha512_update(&ctx, ds, slen);
		if (r % 7 != 0)
			sha512_rep(&ctx, dp, 64, plen);
		if (r & 1)
			br_sha512_update(&ctx, a, 64);
		else
			sha512_rep(&ctx, dp, 64, plen);
		br_sha512_out(&ctx, a);
	}

	o = out + sprintf(out, custom ? "$6$rounds=%lu$" : "$6$", rounds);
	memcpy(o, salt, slen);
	o += slen;
	*o++ = '$';
	/* Bytes i, i+21, i+42, rotated left by one place at each step. */
	for (i = 0; i < 21; i++) {
		size_t x = i, y = i + 21, z = i + 42, t;

		for (t = 0; t < i % 3; t++) {
			size_t k = x;

			x = y;
			y = z;
			z = k;
		}
		o = put64(o, (uint32_t)a[x] << 16 | (uint32_t)a[y] << 8 | a[z],
		    4);
	}
	o = put64(o, a[63], 2);
	*o = '\0';
	memset(a, 0, sizeof(a));
	memset(dp, 0, sizeof(dp));
	return 0;
}

/*
 * bcrypt ($2a$ $2b$ $2y$; Provos and Mazieres, 1999): Blowfish keyed
 * 2^cost times over from the password and a 128-bit salt, then
 * "OrpheanBeholderScryDoubt" encrypted 64 times with it.
 */
struct bf {
	uint32_t w[18 + 1024];	/* the P array, then the four S-boxes */
};

static const char bf64[] =
    "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";

/* Blowfish's F, over the four S-boxes s. */
#define BF_F(s, x)	((((s)[(x) >> 24] + (s)[256 + ((x) >> 16 & 255)]) ^ \
	(s)[512 + ((x) >> 8 & 255)]) + (s)[768 + ((x) & 255)])

/* 16 rounds, two at a time so that the halves never swap; bcrypt spends
 * all its time here. */
static void
bf_encrypt(const struct bf *k, uint32_t *l, uint32_t *r)
{
	const uint32_t *p = k->w, *s = k->w + 18;
	uint32_t a = *l, b = *r;
	int i;

	for (i = 0; i < 16; i += 2) {
		a ^= p[i];
		b ^= BF_F(s, a);
		b ^= p[i + 1];
		a ^= BF_F(s, b);
	}
	*l = b ^ p[17];
	*r = a ^ p[16];
}

/* The next 32 bits of data (cycled), big-endian. */
static uint32_t
bf_word(const uint8_t *data, size_t len, size_t *at)
{
	uint32_t w = 0;
	int i;

	for (i = 0; i < 4; i++) {
		w = w << 8 | data[*at];
		if (++*at == len)
			*at = 0;
	}
	return w;
}

/* Blowfish's key schedule, the salt (if any) mixed into each block. */
static void
bf_expand(struct bf *k, const uint8_t *key, size_t klen, const uint8_t *salt)
{
	uint32_t l = 0, r = 0;
	size_t at = 0, sat = 0, i;

	for (i = 0; i < 18; i++)
		k->w[i] ^= bf_word(key, klen, &at);
	/* Then every word, P and S alike, in pairs of cipher output. */
	for (i = 0; i < 18 + 1024; i += 2) {
		if (salt != NULL) {
			l ^= bf_word(salt, 16, &sat);
			r ^= bf_word(salt, 16, &sat);
		}
		bf_encrypt(k, &l, &r);
		k->w[i] = l;
		k->w[i + 1] = r;
	}
}

/* bcrypt's base-64 (its own alphabet, big-endian bit order). */
static int
bf_decode(const char *in, uint8_t *out, size_t n)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t o = 0;
	const char *q;

	while (o < n) {
		if (*in == '\0' || (q = strchr(bf64, *in)) == NULL)
			return -1;
		in++;
		acc = acc << 6 | (uint32_t)(q - bf64);
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			out[o++] = (uint8_t)(acc >> bits);
		}
	}
	return 0;
}

static char *
bf_encode(char *o, const uint8_t *in, size_t n)
{
	uint32_t acc = 0;
	int bits = 0;
	size_t i;

	for (i = 0; i < n; i++) {
		acc = acc << 8 | in[i];
		bits += 8;
		while (bits >= 6) {
			bits -= 6;
			*o++ = bf64[acc >> bits & 63];
		}
	}
	if (bits > 0)
		*o++ = bf64[acc << (6 - bits) & 63];
	*o = '\0';
	return o;
}

static int
bcrypt(const char *pw, const char *set, char *out)
{
	static const char magic[] = "OrpheanBeholderScryDoubt";
	uint8_t salt[16], key[72], ct[24];
	uint32_t c[6];
	struct bf k;
	size_t klen;
	unsigned long i, n;
	int cost, j;

	if (set[4] < '0' || set[4] > '3' || set[5] < '0' || set[5] > '9' ||
	    set[6] != '$' || (cost = (set[4] - '0') * 10 + set[5] - '0') < 4 ||
	    cost > 31 || bf_decode(set + 7, salt, 16) != 0)
		return -1;
	/* The key is the password with its NUL, at most 72 bytes. */
	klen = strlen(pw) + 1;
	if (klen > sizeof(key))
		klen = sizeof(key);
	memcpy(key, pw, klen);
	memcpy(&k, bf_pi, sizeof(k));
	bf_expand(&k, key, klen, salt);
	for (i = 0, n = 1UL << cost; i < n; i++) {
		bf_expand(&k, key, klen, NULL);
		bf_expand(&k, salt, 16, NULL);
	}
	for (j = 0; j < 6; j++)
		c[j] = (uint32_t)(uint8_t)magic[4 * j] << 24 |
		    (uint32_t)(uint8_t)magic[4 * j + 1] << 16 |
		    (uint32_t)(uint8_t)magic[4 * j + 2] << 8 |
		    (uint8_t)magic[4 * j + 3];
	for (i = 0; i < 64; i++)
		for (j = 0; j < 6; j += 2)
			bf_encrypt(&k, &c[j], &c[j + 1]);
	for (j = 0; j < 6; j++) {
		ct[4 * j] = (uint8_t)(c[j] >> 24);
		ct[4 * j + 1] = (uint8_t)(c[j] >> 16);
		ct[4 * j + 2] = (uint8_t)(c[j] >> 8);
		ct[4 * j + 3] = (uint8_t)c[j];
	}
	memcpy(out, set, 7);
	/* The salt as given is re-encoded: its last character carries 4
	 * spare bits, which must not make two spellings of one salt. */
	bf_encode(bf_encode(out + 7, salt, 16), ct, 23);
	memset(key, 0, sizeof(key));
	memset(&k, 0, sizeof(k));
	return 0;
}

/* crypt(3) for the schemes we accept; NULL for any other setting. */
const char *
acl_pw_hash(const char *pw, const char *set, char out[PW_MAX])
{
	int r = -1;

	if (strncmp(set, "$6$", 3) == 0)
		r = sha512_crypt(pw, set, out);
	else if (strncmp(set, "$2a$", 4) == 0 || strncmp(set, "$2b$", 4) == 0 ||
	    strncmp(set, "$2y$", 4) == 0)
		r = bcrypt(pw, set, out);
	return r == 0 ? out : NULL;
}

/* bcrypt ($2a$ $2b$ $2y$) or SHA-512 crypt ($6$): hashes meant for
 * passwords. DES, MD5 and apr1 are refused: they fall to a GPU in hours. */
static int
good_hash(const char *h)
{
	char out[PW_MAX];

	return acl_pw_hash("probe", h, out) != NULL;
}

struct authdb *
acl_auth_load(const char *file, char *err, size_t errlen)
{
	struct authdb *db;
	struct user *u;
	char line[1024], *p, *colon;
	FILE *f;
	int lineno = 0;

	if ((f = fopen(file, "r")) == NULL) {
		snprintf(err, errlen, "%s: cannot open: %s", file,
		    strerror(errno));
		return NULL;
	}
	if ((db = calloc(1, sizeof(*db))) == NULL)
		goto oom;
	while (fgets(line, sizeof(line), f) != NULL) {
		lineno++;
		if ((p = strpbrk(line, "\r\n")) != NULL)
			*p = '\0';
		if (line[0] == '\0' || line[0] == '#')
			continue;
		colon = strchr(line, ':');
		if (colon == NULL || colon == line) {
			snprintf(err, errlen, "%s:%d: want user:hash", file,
			    lineno);
			goto fail;
		}
		*colon = '\0';
		if (!good_hash(colon + 1)) {
			snprintf(err, errlen, "%s:%d: user %s: not a bcrypt "
			    "or SHA-512 crypt hash", file, lineno, line);
			goto fail;
		}
		u = realloc(db->users, (size_t)(db->n + 1) * sizeof(*u));
		if (u == NULL)
			goto oom;
		db->users = u;
		u = &u[db->n];
		u->name = strdup(line);
		u->hash = strdup(colon + 1);
		db->n++;
		if (u->name == NULL || u->hash == NULL)
			goto oom;
	}
	fclose(f);
	if (db->n == 0) {
		snprintf(err, errlen, "%s: no users", file);
		acl_auth_free(db);
		return NULL;
	}
	db->dummy = db->users[0].hash;
	return db;
oom:
	snprintf(err, errlen, "%s: out of memory", file);
fail:
	fclose(f);
	acl_auth_free(db);
	return NULL;
}

static int
b64val(int ch)
{
	if (ch >= 'A' && ch <= 'Z')
		return ch - 'A';
	if (ch >= 'a' && ch <= 'z')
		return ch - 'a' + 26;
	if (ch >= '0' && ch <= '9')
		return ch - '0' + 52;
	if (ch == '+')
		return 62;
	if (ch == '/')
		return 63;
	return -1;
}

/* Standard base64 with padding into out (NUL-terminated); -1 if bad. */
static int
b64decode(const char *p, size_t n, char *out, size_t cap)
{
	uint32_t acc = 0;
	size_t i, o = 0;
	int bits = 0, v, pad = 0;

	for (i = 0; i < n; i++) {
		if (p[i] == '=') {
			pad++;
			continue;
		}
		if (pad || (v = b64val((unsigned char)p[i])) < 0)
			return -1;
		acc = acc << 6 | (uint32_t)v;
		bits += 6;
		if (bits >= 8) {
			bits -= 8;
			if (o + 1 >= cap)
				return -1;
			out[o++] = (char)(acc >> bits & 0xff);
		}
	}
	if (pad > 2 || (n % 4) != 0)
		return -1;
	out[o] = '\0';
	return (int)o;
}

/* Equal strings, in time that depends only on a's length. */
static int
ct_equal(const char *a, const char *b)
{
	size_t na = strlen(a), nb = strlen(b), i;
	unsigned d = (unsigned)(na ^ nb);

	if (nb == 0)
		return 0;
	for (i = 0; i < na; i++)
		d |= (unsigned char)a[i] ^ (unsigned char)b[i % nb];
	return d == 0;
}

#define AUTH_BUDGET_MS	200
static int64_t auth_window, auth_spent;	/* ms; µs spent hashing */

/* Credentials verified lately, by SHA-256 of (db, header value). */
#define AUTH_CACHE	64
#define AUTH_TTL_MS	60000
static struct {
	uint8_t id[32];
	int64_t until;
} seen[AUTH_CACHE];

static void
auth_id(const struct authdb *db, struct slice v, uint8_t id[32])
{
	br_sha256_context h;

	br_sha256_init(&h);
	br_sha256_update(&h, &db, sizeof(db));
	br_sha256_update(&h, v.p, v.n);
	br_sha256_out(&h, id);
}

void
acl_auth_forget(void)
{
	memset(seen, 0, sizeof(seen));
}

int
acl_auth_check(struct authdb *db, struct slice v, int64_t now)
{
	char cred[384], *colon, out[PW_MAX];
	const char *hash, *r;
	struct timespec t0, t1;
	uint8_t id[32];
	int i, ok, known, slot = 0;

	/* "Basic" (any case) and the token (RFC 7617). */
	if (db == NULL || v.n < 7 || strncasecmp(v.p, "basic ", 6) != 0)
		return 0;
	auth_id(db, v, id);
	for (i = 0; i < AUTH_CACHE; i++) {
		if (seen[i].until > now && memcmp(seen[i].id, id, 32) == 0)
			return 1;
		if (seen[i].until < seen[slot].until)
			slot = i;
	}
	v.p += 6;
	v.n -= 6;
	while (v.n > 0 && *v.p == ' ') {
		v.p++;
		v.n--;
	}
	if (b64decode(v.p, v.n, cred, sizeof(cred)) < 0 ||
	    (colon = strchr(cred, ':')) == NULL)
		return 0;
	*colon = '\0';
	/*
	 * crypt() blocks the loop, and bcrypt is slow on purpose: wrong
	 * passwords (never remembered) could stall every client. At most
	 * AUTH_BUDGET_MS of hashing per second; past it the caller answers
	 * 503 until the next second.
	 */
	if (now - auth_window >= 1000) {
		auth_window = now;
		auth_spent = 0;
	}
	if (auth_spent >= AUTH_BUDGET_MS * 1000)
		return -1;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	hash = db->dummy;	/* unknown users cost the same time */
	known = 0;
	for (i = 0; i < db->n; i++)
		if (strcmp(db->users[i].name, cred) == 0) {
			hash = db->users[i].hash;
			known = 1;
		}
	r = acl_pw_hash(colon + 1, hash, out);
	ok = r != NULL && ct_equal(r, hash) && known;
	clock_gettime(CLOCK_MONOTONIC, &t1);
	auth_spent += (t1.tv_sec - t0.tv_sec) * 1000000 +
	    (t1.tv_nsec - t0.tv_nsec) / 1000;
	if (ok) {
		memcpy(seen[slot].id, id, 32);
		seen[slot].until = now + AUTH_TTL_MS;
	}
	memset(cred, 0, sizeof(cred));
	memset(out, 0, sizeof(out));
	return ok;
}

/* --------------------------------------------------- PROXY protocol */

static const char v2sig[12] = "\r\n\r\n\0\r\nQUIT\n";

/* "PROXY TCP4 1.2.3.4 5.6.7.8 111 222\r\n" (at most 107 bytes). */
static int
proxy_v1(const char *buf, size_t len, struct sockaddr_storage *sa)
{
	char line[108], *f[6], *save = NULL, *t;
	const char *end;
	long port;
	int n = 0;

	end = memchr(buf, '\n', len < sizeof(line) ? len : sizeof(line));
	if (end == NULL)
		return len < sizeof(line) ? 0 : -1;
	if (end == buf || end[-1] != '\r')
		return -1;
	memcpy(line, buf, (size_t)(end - 1 - buf));
	line[end - 1 - buf] = '\0';
	for (t = strtok_r(line, " ", &save); t != NULL && n < 6;
	    t = strtok_r(NULL, " ", &save))
		f[n++] = t;
	if (n >= 2 && strcmp(f[1], "UNKNOWN") == 0)
		return (int)(end - buf + 1);
	if (n != 6 || strtok_r(NULL, " ", &save) != NULL)
		return -1;
	port = strtol(f[4], &t, 10);
	if (*t != '\0' || port < 0 || port > 65535)
		return -1;
	memset(sa, 0, sizeof(*sa));
	if (strcmp(f[1], "TCP4") == 0) {
		struct sockaddr_in *in = (struct sockaddr_in *)sa;

		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, f[2], &in->sin_addr) != 1)
			return -1;
	} else if (strcmp(f[1], "TCP6") == 0) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;

		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, f[2], &in6->sin6_addr) != 1)
			return -1;
	} else
		return -1;
	return (int)(end - buf + 1);
}

static int
proxy_v2(const unsigned char *b, size_t len, struct sockaddr_storage *sa)
{
	size_t hlen;

	if (len < 16)
		return 0;
	if ((b[12] >> 4) != 2 || (b[12] & 15) > 1)
		return -1;
	hlen = 16 + ((size_t)b[14] << 8 | b[15]);
	if (hlen > 16 + 512)
		return -1;	/* TLVs we do not want to buffer */
	if (len < hlen)
		return 0;
	if ((b[12] & 15) == 0)
		return (int)hlen;	/* LOCAL: the balancer's own check */
	memset(sa, 0, sizeof(*sa));
	if (b[13] == 0x11 && hlen >= 16 + 12) {
		struct sockaddr_in *in = (struct sockaddr_in *)sa;

		in->sin_family = AF_INET;
		memcpy(&in->sin_addr, b + 16, 4);
		memcpy(&in->sin_port, b + 24, 2);
	} else if (b[13] == 0x21 && hlen >= 16 + 36) {
		struct sockaddr_in6 *in6 = (struct sockaddr_in6 *)sa;

		in6->sin6_family = AF_INET6;
		memcpy(&in6->sin6_addr, b + 16, 16);
		memcpy(&in6->sin6_port, b + 48, 2);
	} else if ((b[13] >> 4) != 0)
		return -1;	/* not TCP over IP: refuse, do not guess */
	return (int)hlen;
}

int
acl_proxy_header(const char *buf, size_t len, struct sockaddr_storage *sa)
{
	size_t n = len < 12 ? len : 12;

	if (memcmp(buf, v2sig, n) == 0)
		return len < 12 ? 0 : proxy_v2((const unsigned char *)buf,
		    len, sa);
	n = len < 6 ? len : 6;
	if (memcmp(buf, "PROXY ", n) == 0)
		return len < 6 ? 0 : proxy_v1(buf, len, sa);
	return -1;
}
