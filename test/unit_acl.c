/* Unit tests of acl.c: token buckets, per-address caps, allow/deny. */
#include <crypt.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>

#include "proxy.h"
#include "unit.h"
#include "bfpi.h"
#include "bfpi_test.h"

static struct sockaddr_in
v4(const char *s)
{
	struct sockaddr_in a;

	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	inet_pton(AF_INET, s, &a.sin_addr);
	return a;
}

static struct sockaddr_in6
v6(const char *s)
{
	struct sockaddr_in6 a;

	memset(&a, 0, sizeof(a));
	a.sin6_family = AF_INET6;
	inet_pton(AF_INET6, s, &a.sin6_addr);
	return a;
}

static void
rate_tests(void)
{
	struct sockaddr_in a = v4("192.0.2.1"), b = v4("192.0.2.2");
	struct sockaddr_in6 m = v6("::ffff:192.0.2.1");
	int i, ok, retry;

	/* rate 2/s, burst 3: three at once, then one per 500 ms. */
	for (ok = 1, i = 0; i < 3; i++)
		ok &= acl_rate((struct sockaddr *)&a, 2, 3, 1000, &retry);
	CHECK(ok, "burst of 3 passes");
	CHECK(!acl_rate((struct sockaddr *)&a, 2, 3, 1000, &retry) &&
	    retry == 1, "4th refused, Retry-After 1");
	CHECK(!acl_rate((struct sockaddr *)&m, 2, 3, 1000, &retry),
	    "v4-mapped v6 is the same client");
	CHECK(acl_rate((struct sockaddr *)&b, 2, 3, 1000, &retry),
	    "another address has its own bucket");
	CHECK(!acl_rate((struct sockaddr *)&a, 2, 3, 1400, &retry),
	    "400 ms: not yet a token");
	CHECK(acl_rate((struct sockaddr *)&a, 2, 3, 1500, &retry),
	    "500 ms: one token back");
	CHECK(!acl_rate((struct sockaddr *)&a, 2, 3, 1500, &retry),
	    "and only one");
	CHECK(acl_rate((struct sockaddr *)&a, 0, 0, 1500, &retry),
	    "rate 0: no limit");
	/* burst unset: a second's worth. */
	for (ok = 1, i = 0; i < 5; i++)
		ok &= acl_rate((struct sockaddr *)&b, 5, 0, 9000, &retry);
	CHECK(ok && !acl_rate((struct sockaddr *)&b, 5, 0, 9000, &retry),
	    "burst defaults to rate");
}

static void
conn_tests(void)
{
	struct sockaddr_in a = v4("198.51.100.7");
	char ip[32];
	int i, ok;

	CHECK(acl_conn_open((struct sockaddr *)&a, 2, 0) == 1 &&
	    acl_conn_open((struct sockaddr *)&a, 2, 0), "two open");
	CHECK(!acl_conn_open((struct sockaddr *)&a, 2, 0), "third refused");
	acl_conn_close((struct sockaddr *)&a);
	CHECK(acl_conn_open((struct sockaddr *)&a, 2, 0), "after a close");
	CHECK(acl_conn_open((struct sockaddr *)&a, 0, 0) == 2, "0: no cap, not counted");

	/* Rotating addresses cannot grow the table; the busy address
	 * keeps its count while idle ones are forgotten. */
	for (i = 0; i < 20000; i++) {
		struct sockaddr_in r;

		snprintf(ip, sizeof(ip), "10.%d.%d.%d", i >> 16 & 255,
		    i >> 8 & 255, i & 255);
		r = v4(ip);
		acl_conn_open((struct sockaddr *)&r, 5, 10 + i);
		acl_conn_close((struct sockaddr *)&r);
	}
	CHECK(!acl_conn_open((struct sockaddr *)&a, 2, 30000),
	    "busy address survives a flood of others");
	CHECK(acl_table_size() < 1024 * 1024, "table stays its size");
	ok = 1;
	(void)ok;
}

static void
allow_tests(void)
{
	struct cidr allow[2], deny[1];
	struct sockaddr_in in = v4("192.168.1.9"), out = v4("8.8.8.8"),
	    bad = v4("192.168.1.66");
	struct sockaddr_in6 six = v6("2001:db8::5");

	conf_cidr("192.168.0.0/16", &allow[0]);
	conf_cidr("2001:db8::/32", &allow[1]);
	conf_cidr("192.168.1.64/26", &deny[0]);
	CHECK(acl_allowed(allow, 2, deny, 1, (struct sockaddr *)&in),
	    "in allow, not denied");
	CHECK(!acl_allowed(allow, 2, deny, 1, (struct sockaddr *)&out),
	    "outside allow");
	CHECK(!acl_allowed(allow, 2, deny, 1, (struct sockaddr *)&bad),
	    "deny wins over allow");
	CHECK(acl_allowed(allow, 2, deny, 1, (struct sockaddr *)&six),
	    "v6 allow");
	CHECK(acl_allowed(NULL, 0, deny, 1, (struct sockaddr *)&out),
	    "no allow list: all but denied");
	CHECK(acl_allowed(NULL, 0, NULL, 0, (struct sockaddr *)&bad),
	    "no lists: all");
}

static struct slice
sl(const char *s)
{
	struct slice x;

	x.p = s;
	x.n = (uint32_t)strlen(s);
	return x;
}

/* bfpi.h, the constants bcrypt starts from, is pi: computed afresh. */
static void
bfpi_tests(void)
{
	static uint32_t w[BFPI_WORDS];
	char msg[96];
	int i, bad = 0;

	bfpi_compute(w);
	for (i = 0; i < BFPI_WORDS; i++)
		if (w[i] != bf_pi[i] && bad++ == 0) {
			snprintf(msg, sizeof(msg), "bfpi.h word %d: %08x, pi "
			    "says %08x", i, (unsigned)bf_pi[i], (unsigned)w[i]);
			CHECK(0, msg);
		}
	CHECK(bad == 0, "bfpi.h holds the 1042 words of pi");
	CHECK(bf_pi[0] == 0x243f6a88 && bf_pi[1041] == 0x3ac372e6,
	    "bfpi.h: first and last words as published for Blowfish");
}

/*
 * acl.c hashes passwords itself (no libcrypt in ./proxy): every scheme it
 * accepts must agree with the system's crypt() (libxcrypt) byte for byte,
 * over passwords of every length class, random salts, custom rounds and
 * both bcrypt prefixes; and refuse what crypt() refuses.
 */
static void
pw_hash_tests(void)
{
	static const char *const pws[] = { "", "a", "probe", "s3cret",
	    "correct horse battery staple", "p\xc3\xa4ss w\xc3\xb6rd",
	    "0123456789012345678901234567890123456789012345678901234567890123"
	    "456789", /* 70 */
	    "0123456789012345678901234567890123456789012345678901234567890123"
	    "456789012345678901234567890" /* 91: bcrypt uses 72 */ };
	static const char b64[] =
	    "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
	static const char *const fixed[] = { "$6$$", "$6$x$",
	    "$6$0123456789abcdefXYZ$", "$6$rounds=1000$abc$",
	    "$6$rounds=5001$saltsalt$", "$2b$04$......................",
	    "$2a$04$9999999999999999999999", "$2y$05$CCCCCCCCCCCCCCCCCCCCC." };
	static const char *const bad[] = { "$6$rounds=999$x$",
	    "$6$rounds=x$y$", "$2b$03$......................",
	    "$2b$04$short", "$2b$4$......................", "$1$md5$",
	    "abJnggxhB/yWI", "$5$sha256$", "" };
	char set[64], out[PW_MAX], msg[160];
	const char *ours, *theirs;
	size_t i, j, k, agree = 0, n = 0;
	unsigned seed = 7;

	for (i = 0; i < sizeof(pws) / sizeof(pws[0]); i++)
		for (j = 0; j < sizeof(fixed) / sizeof(fixed[0]) + 6; j++) {
			if (j < sizeof(fixed) / sizeof(fixed[0])) {
				snprintf(set, sizeof(set), "%s", fixed[j]);
			} else {
				/* Random salts: 3 of each scheme. */
				int bc = j % 2;

				strcpy(set, bc ? "$2b$04$" : "$6$");
				for (k = 0; k < (bc ? 22u : 1 + j % 16); k++) {
					seed = seed * 1103515245 + 12345;
					set[strlen(set) + 1] = '\0';
					set[strlen(set)] = b64[seed >> 16 & 63];
				}
				if (!bc)
					strcat(set, "$");
			}
			ours = acl_pw_hash(pws[i], set, out);
			theirs = crypt(pws[i], set);
			n++;
			if (ours != NULL && theirs != NULL &&
			    strcmp(ours, theirs) == 0) {
				agree++;
				continue;
			}
			snprintf(msg, sizeof(msg), "pw %zu setting %s: ours %s "
			    "crypt() %s", i, set, ours ? ours : "NULL",
			    theirs ? theirs : "NULL");
			CHECK(0, msg);
		}
	snprintf(msg, sizeof(msg), "acl_pw_hash agrees with crypt() in "
	    "%zu of %zu cases", agree, n);
	CHECK(agree == n, msg);
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(msg, sizeof(msg), "setting '%s' refused", bad[i]);
		CHECK(acl_pw_hash("probe", bad[i], out) == NULL, msg);
	}
}

static void
auth_tests(void)
{
	char path[] = "/tmp/unit_acl.XXXXXX", err[256], line[256];
	struct authdb *db;
	const char *h;
	int fd, n;

	/* alice: "s3cret" (SHA-512 crypt), bob: "pw2" (bcrypt). */
	fd = mkstemp(path);
	h = crypt("s3cret", "$6$unitsalt$");
	n = snprintf(line, sizeof(line), "# users\nalice:%s\n", h);
	CHECK(write(fd, line, (size_t)n) == n, "write htpasswd");
	h = crypt("pw2", "$2b$05$abcdefghijklmnopqrstuu");
	n = snprintf(line, sizeof(line), "bob:%s\n", h);
	CHECK(write(fd, line, (size_t)n) == n, "write htpasswd");
	close(fd);
	db = acl_auth_load(path, err, sizeof(err));
	CHECK(db != NULL, "htpasswd loads");
	/* base64("alice:s3cret"), ("bob:pw2"), ("alice:nope") */
	CHECK(acl_auth_check(db, sl("Basic YWxpY2U6czNjcmV0"), 0),
	    "alice, right password (first user)");
	CHECK(acl_auth_check(db, sl("basic Ym9iOnB3Mg=="), 0),
	    "bob, bcrypt, scheme in lower case");
	CHECK(!acl_auth_check(db, sl("Basic YWxpY2U6bm9wZQ=="), 0),
	    "wrong password");
	CHECK(!acl_auth_check(db, sl("Basic Y2Fyb2w6czNjcmV0"), 0),
	    "unknown user with alice's password");
	CHECK(!acl_auth_check(db, sl("Basic !!!"), 0), "bad base64");
	CHECK(!acl_auth_check(db, sl("Bearer YWxpY2U6czNjcmV0"), 0),
	    "other scheme");
	CHECK(!acl_auth_check(db, sl("-"), 0), "no header");
	acl_auth_free(db);

	fd = open(path, O_WRONLY | O_TRUNC);
	n = snprintf(line, sizeof(line), "carol:abJnggxhB/yWI\n");
	CHECK(write(fd, line, (size_t)n) == n, "write htpasswd");
	close(fd);
	db = acl_auth_load(path, err, sizeof(err));
	CHECK(db == NULL && strstr(err, ":1: user carol: not a bcrypt") !=
	    NULL, "DES crypt refused");
	unlink(path);
}

static void
proxy_tests(void)
{
	static const char v2[] = "\r\n\r\n\0\r\nQUIT\n\x21\x11\x00\x0c"
	    "\xc6\x33\x64\x04\x7f\x00\x00\x01\x11\x5c\x4a\x38";
	static const char v2local[] = "\r\n\r\n\0\r\nQUIT\n\x20\x00\x00\x00";
	struct sockaddr_storage ss;
	const char *p;
	char ip[64];

	p = "PROXY TCP4 203.0.113.9 127.0.0.1 5555 80\r\nGET /";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == 42, "v1 TCP4 length");
	inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip,
	    sizeof(ip));
	CHECK(strcmp(ip, "203.0.113.9") == 0, "v1 TCP4 address");
	p = "PROXY TCP6 2001:db8::1 ::1 5555 80\r\n";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == (int)strlen(p) &&
	    ss.ss_family == AF_INET6, "v1 TCP6");
	p = "PROXY UNKNOWN\r\n";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == 15, "v1 UNKNOWN");
	p = "PROXY TCP4 203.0.113.9 127.0.0.1 5555";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == 0, "v1 incomplete");
	p = "PROXY TCP4 1.2.3 127.0.0.1 5555 80\r\n";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == -1, "v1 bad address");
	p = "PROXY TCP4 1.2.3.4 127.0.0.1 70000 80\r\n";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == -1, "v1 bad port");
	p = "PROXY TCP4 1.2.3.4 127.0.0.1 1 80\n";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == -1, "v1 bare LF");
	p = "GET / HTTP/1.1\r\n";
	CHECK(acl_proxy_header(p, strlen(p), &ss) == -1, "no header");
	CHECK(acl_proxy_header(v2, sizeof(v2) - 1, &ss) == 28 &&
	    ss.ss_family == AF_INET, "v2 TCP4");
	inet_ntop(AF_INET, &((struct sockaddr_in *)&ss)->sin_addr, ip,
	    sizeof(ip));
	CHECK(strcmp(ip, "198.51.100.4") == 0, "v2 address");
	CHECK(acl_proxy_header(v2, 20, &ss) == 0, "v2 incomplete");
	CHECK(acl_proxy_header(v2local, sizeof(v2local) - 1, &ss) == 16,
	    "v2 LOCAL");
}

void
unit_acl(void)
{
	CHECK(acl_init(64) == 0, "acl_init");
	rate_tests();
	conn_tests();
	allow_tests();
	bfpi_tests();
	pw_hash_tests();
	auth_tests();
	proxy_tests();
}
