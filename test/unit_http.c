/*
 * Unit tests for http.c: tables of named cases for the parsers, the chunk
 * scanner, the writers and the path normaliser.
 *
 * Every parser input is copied so that it ends exactly at a PROT_NONE
 * page: a read of even one byte past len crashes the test instead of
 * passing by luck.
 */
#include <sys/mman.h>

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "proxy.h"
#include "unit.h"

#define NPAGES 8

static char *region;
static size_t region_len;

/* Copy s[0..n) so that its last byte is the last readable one. */
static const char *
at_end(const char *s, size_t n)
{
	long pg;
	char *p;

	if (region == NULL) {
		pg = sysconf(_SC_PAGESIZE);
		region_len = (size_t)pg * NPAGES;
		region = mmap(NULL, region_len + (size_t)pg,
		    PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (region == MAP_FAILED ||
		    mprotect(region + region_len, (size_t)pg, PROT_NONE) != 0) {
			perror("mmap");
			exit(2);
		}
	}
	if (n > region_len) {
		fprintf(stderr, "at_end: input too large\n");
		exit(2);
	}
	p = region + region_len - n;
	memcpy(p, s, n);
	return p;
}

static int
sl_is(struct slice s, const char *want)
{
	return s.n == strlen(want) && memcmp(s.p, want, s.n) == 0;
}

/* Length of the head in s: through the first CRLF CRLF. */
static int
head_len_of(const char *s)
{
	const char *e;

	e = strstr(s, "\r\n\r\n");
	return e == NULL ? -1 : (int)(e - s) + 4;
}

static struct http_msg msg;	/* large: keep it off the stack */
static char out[8192];		/* writers' output, with guard bytes */

/* ------------------------------------------------------------- requests */

struct req_ok {
	const char *name;
	const char *in;
	unsigned flags;
	uint64_t clen;
	const char *host;
	const char *path;
	int minor;
	int nh;
};

static const struct req_ok req_ok[] = {
	{ "simple GET", "GET / HTTP/1.1\r\nHost: example.org\r\n\r\n",
	    0, 0, "example.org", "/", 1, 1 },
	{ "HTTP/1.0 without Host", "GET /x HTTP/1.0\r\n\r\n",
	    0, 0, "", "/x", 0, 0 },
	{ "HTTP/1.0 with empty Host", "GET /x HTTP/1.0\r\nHost:\r\n\r\n",
	    0, 0, "", "/x", 0, 1 },
	{ "Content-Length", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 42\r\n\r\n", HF_CL, 42, "h", "/p", 1, 2 },
	{ "Content-Length zero", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 0\r\n\r\n", HF_CL, 0, "h", "/p", 1, 2 },
	{ "Content-Length leading zeros", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "content-length: 007\r\n\r\n", HF_CL, 7, "h", "/p", 1, 2 },
	{ "Content-Length 18 digits", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 999999999999999999\r\n\r\n", HF_CL,
	    999999999999999999ULL, "h", "/p", 1, 2 },
	{ "Content-Length OWS trimmed", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: \t 5 \t\r\n\r\n", HF_CL, 5, "h", "/p", 1, 2 },
	{ "chunked", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", HF_CHUNKED, 0, "h", "/p",
	    1, 2 },
	{ "chunked case and OWS", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "transfer-encoding: gzip ,  ChUnKeD \r\n\r\n", HF_CHUNKED, 0,
	    "h", "/p", 1, 2 },
	{ "TE over two lines", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n",
	    HF_CHUNKED, 0, "h", "/p", 1, 3 },
	{ "Connection close", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Connection: close\r\n\r\n", HF_CLOSE, 0, "h", "/", 1, 2 },
	{ "Connection keep-alive list", "GET / HTTP/1.0\r\n"
	    "Connection: Keep-Alive, foo\r\n\r\n", HF_KEEPALIVE | HF_CONNOPT, 0, "", "/",
	    0, 1 },
	{ "Connection empty elements", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Connection: , CLOSE ,,\r\n\r\n", HF_CLOSE, 0, "h", "/", 1, 2 },
	{ "Connection on two lines", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Connection: keep-alive\r\nConnection: close\r\n\r\n",
	    HF_CLOSE | HF_KEEPALIVE, 0, "h", "/", 1, 3 },
	{ "upgrade", "GET /ws HTTP/1.1\r\nHost: h\r\n"
	    "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", HF_UPGRADE,
	    0, "h", "/ws", 1, 3 },
	{ "upgrade token without Upgrade field", "GET /ws HTTP/1.1\r\n"
	    "Host: h\r\nConnection: upgrade\r\n\r\n", 0, 0, "h", "/ws", 1, 2 },
	{ "Upgrade field without token", "GET /ws HTTP/1.1\r\nHost: h\r\n"
	    "Upgrade: websocket\r\n\r\n", 0, 0, "h", "/ws", 1, 2 },
	{ "upgrade ignored in HTTP/1.0", "GET /ws HTTP/1.0\r\n"
	    "Connection: upgrade\r\nUpgrade: websocket\r\n\r\n", 0, 0, "",
	    "/ws", 0, 2 },
	{ "Expect 100-continue", "PUT /u HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 3\r\nExpect: 100-Continue\r\n\r\n",
	    HF_CL | HF_EXPECT100, 3, "h", "/u", 1, 3 },
	{ "Expect ignored in HTTP/1.0", "PUT /u HTTP/1.0\r\n"
	    "Content-Length: 3\r\nExpect: 100-continue\r\n\r\n", HF_CL, 3, "",
	    "/u", 0, 2 },
	{ "absolute-form", "GET http://example.org/a?b HTTP/1.1\r\n"
	    "Host: other\r\n\r\n", HF_ABSOLUTE, 0, "example.org", "/a?b", 1,
	    1 },
	{ "absolute-form no path, scheme case", "GET HTTP://Example.org:8080 "
	    "HTTP/1.1\r\nHost: x\r\n\r\n", HF_ABSOLUTE, 0, "Example.org:8080",
	    "/", 1, 1 },
	{ "absolute-form https", "GET https://[::1]:8443/s HTTP/1.1\r\n"
	    "Host: x\r\n\r\n", HF_ABSOLUTE, 0, "[::1]:8443", "/s", 1, 1 },
	{ "absolute-form HTTP/1.0 without Host", "GET http://a.b/ HTTP/1.0"
	    "\r\n\r\n", HF_ABSOLUTE, 0, "a.b", "/", 0, 0 },
	{ "OPTIONS *", "OPTIONS * HTTP/1.1\r\nHost: h\r\n\r\n", 0, 0, "h",
	    "*", 1, 1 },
	{ "extension method", "PROPFIND /d HTTP/1.1\r\nHost: h\r\n\r\n", 0, 0,
	    "h", "/d", 1, 1 },
	{ "lower-case connect is just a method", "connect /d HTTP/1.1\r\n"
	    "Host: h\r\n\r\n", 0, 0, "h", "/d", 1, 1 },
	{ "target with odd visible chars", "GET /a?b=c&d=%20|{}\"<> HTTP/1.1"
	    "\r\nHost: h\r\n\r\n", 0, 0, "h", "/a?b=c&d=%20|{}\"<>", 1, 1 },
	{ "Host with port", "GET / HTTP/1.1\r\nHost: a-b.c_d:8080\r\n\r\n", 0,
	    0, "a-b.c_d:8080", "/", 1, 1 },
	{ "Host IPv6", "GET / HTTP/1.1\r\nHost: [2001:db8::1]:80\r\n\r\n", 0,
	    0, "[2001:db8::1]:80", "/", 1, 1 },
	{ "Host OWS trimmed", "GET / HTTP/1.1\r\nHOST:\th \r\n\r\n", 0, 0, "h",
	    "/", 1, 1 },
	{ "obs-text and HTAB in value", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "X-A: caf\xc3\xa9\tau\xff lait\r\n\r\n", 0, 0, "h", "/", 1, 2 },
	{ "empty value", "GET / HTTP/1.1\r\nHost: h\r\nX-Empty:\r\n"
	    "X-Blank: \t \r\n\r\n", 0, 0, "h", "/", 1, 3 },
	{ "tchar name", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "!#$%&'*+-.^_`|~09azAZ: v\r\n\r\n", 0, 0, "h", "/", 1, 2 },
	{ "value with colons", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "X-T: a: b:c\r\n\r\n", 0, 0, "h", "/", 1, 2 },
};

struct req_bad {
	const char *name;
	const char *in;
	size_t len;		/* 0: strlen(in) */
	int ret;
};

#define BAD(n, s, r)	{ n, s, 0, r }
#define BADN(n, s, r)	{ n, s, sizeof(s) - 1, r }

static const struct req_bad req_bad[] = {
	/* line ends and control characters */
	BAD("bare LF line ends", "GET / HTTP/1.1\nHost: h\n\n", -400),
	BAD("bare LF after request line", "GET / HTTP/1.1\nHost: h\r\n\r\n",
	    -400),
	BAD("bare LF in field", "GET / HTTP/1.1\r\nHost: h\nX: y\r\n\r\n",
	    -400),
	BAD("bare LF as final line", "GET / HTTP/1.1\r\nHost: h\r\n\n", -400),
	BAD("bare CR in field", "GET / HTTP/1.1\r\nHost: h\rX: y\r\n\r\n",
	    -400),
	BAD("bare CR in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\rb\r\n\r\n",
	    -400),
	BAD("CR CR LF", "GET / HTTP/1.1\r\r\nHost: h\r\n\r\n", -400),
	BADN("NUL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\0b\r\n\r\n",
	    -400),
	BADN("NUL in target", "GET /a\0b HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BADN("NUL in name", "GET / HTTP/1.1\r\nHost: h\r\nX\0: a\r\n\r\n",
	    -400),
	BAD("SOH in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x01\r\n\r\n",
	    -400),
	BAD("DEL in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\x7f\r\n\r\n",
	    -400),
	BAD("ESC in name", "GET / HTTP/1.1\r\nHost: h\r\nX\x1b: a\r\n\r\n",
	    -400),
	BAD("VT in value", "GET / HTTP/1.1\r\nHost: h\r\nX: a\vb\r\n\r\n",
	    -400),
	BAD("leading CRLF", "\r\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("leading LF", "\nGET / HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("only CRLF CRLF", "\r\n\r\n", -400),
	/* request line */
	BAD("two SP after method", "GET  / HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("two SP before version", "GET /  HTTP/1.1\r\nHost: h\r\n\r\n",
	    -400),
	BAD("SP after version", "GET / HTTP/1.1 \r\nHost: h\r\n\r\n", -400),
	BAD("HTAB separator", "GET\t/ HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("HTAB in target", "GET /a\tb HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("leading SP", " GET / HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("no version", "GET /\r\nHost: h\r\n\r\n", -400),
	BAD("no target", "GET HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("HTTP/2.0", "GET / HTTP/2.0\r\nHost: h\r\n\r\n", -400),
	BAD("HTTP/1.2", "GET / HTTP/1.2\r\nHost: h\r\n\r\n", -400),
	BAD("HTTP/1.10", "GET / HTTP/1.10\r\nHost: h\r\n\r\n", -400),
	BAD("HTTP/0.9", "GET / HTTP/0.9\r\nHost: h\r\n\r\n", -400),
	BAD("lower-case version", "GET / http/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("method with '('", "GE(T / HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("method with '/'", "G/T / HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("status line as request", "HTTP/1.1 200 OK\r\n\r\n", -400),
	BAD("CONNECT", "CONNECT example.org:443 HTTP/1.1\r\n"
	    "Host: example.org:443\r\n\r\n", -501),
	BAD("fragment in target", "GET /a#b HTTP/1.1\r\nHost: h\r\n\r\n",
	    -400),
	BAD("obs-text in target", "GET /caf\xc3\xa9 HTTP/1.1\r\n"
	    "Host: h\r\n\r\n", -400),
	BAD("DEL in target", "GET /a\x7f HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("asterisk with GET", "GET * HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("authority-form with GET", "GET example.org:443 HTTP/1.1\r\n"
	    "Host: h\r\n\r\n", -400),
	BAD("relative target", "GET index.html HTTP/1.1\r\nHost: h\r\n\r\n",
	    -400),
	BAD("ftp scheme", "GET ftp://h/x HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("empty authority", "GET http:///x HTTP/1.1\r\nHost: h\r\n\r\n",
	    -400),
	BAD("only scheme", "GET http:// HTTP/1.1\r\nHost: h\r\n\r\n", -400),
	BAD("userinfo", "GET http://u:p@h/x HTTP/1.1\r\nHost: h\r\n\r\n",
	    -400),
	BAD("authority then query", "GET http://h?q HTTP/1.1\r\nHost: h\r\n"
	    "\r\n", -400),
	BAD("absolute-form, Host missing", "GET http://h/ HTTP/1.1\r\n\r\n",
	    -400),
	/* field lines */
	BAD("SP before colon", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding : chunked\r\n\r\n", -400),
	BAD("HTAB before colon", "GET / HTTP/1.1\r\nHost\t: h\r\n\r\n", -400),
	BAD("obs-fold SP", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n b\r\n\r\n",
	    -400),
	BAD("obs-fold HTAB", "GET / HTTP/1.1\r\nHost: h\r\nX: a\r\n\tb\r\n\r\n",
	    -400),
	BAD("obs-fold first line", "GET / HTTP/1.1\r\n Host: h\r\n\r\n", -400),
	BAD("empty name", "GET / HTTP/1.1\r\nHost: h\r\n: v\r\n\r\n", -400),
	BAD("no colon", "GET / HTTP/1.1\r\nHost: h\r\nFoo\r\n\r\n", -400),
	BAD("quote in name", "GET / HTTP/1.1\r\nHost: h\r\nF\"o: v\r\n\r\n",
	    -400),
	BAD("space in name", "GET / HTTP/1.1\r\nHost: h\r\nFoo Bar: v\r\n\r\n",
	    -400),
	BAD("obs-text in name", "GET / HTTP/1.1\r\nHost: h\r\nF\xe9: v\r\n\r\n",
	    -400),
	/* Host */
	BAD("Host missing", "GET / HTTP/1.1\r\n\r\n", -400),
	BAD("Host twice", "GET / HTTP/1.1\r\nHost: a\r\nHost: a\r\n\r\n", -400),
	BAD("Host twice HTTP/1.0", "GET / HTTP/1.0\r\nHost: a\r\nhost: b\r\n"
	    "\r\n", -400),
	BAD("Host empty", "GET / HTTP/1.1\r\nHost:  \r\n\r\n", -400),
	BAD("Host with slash", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", -400),
	BAD("Host with at", "GET / HTTP/1.1\r\nHost: u@a\r\n\r\n", -400),
	BAD("Host with SP", "GET / HTTP/1.1\r\nHost: a b\r\n\r\n", -400),
	BAD("Host with percent", "GET / HTTP/1.1\r\nHost: a%2fb\r\n\r\n",
	    -400),
	BAD("Host with comma", "GET / HTTP/1.1\r\nHost: a,b\r\n\r\n", -400),
	/* Content-Length */
	BAD("CL not a number", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 12a\r\n\r\n", -400),
	BAD("CL with plus", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: +12\r\n\r\n", -400),
	BAD("CL negative", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: -1\r\n\r\n", -400),
	BAD("CL inner SP", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 1 2\r\n\r\n", -400),
	BAD("CL empty", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length:\r\n\r\n", -400),
	BAD("CL list", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 5, 5\r\n\r\n", -400),
	BAD("CL twice identical", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 5\r\nContent-Length: 5\r\n\r\n", -400),
	BAD("CL twice different", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 5\r\ncontent-length: 6\r\n\r\n", -400),
	BAD("CL 19 digits", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 1000000000000000000\r\n\r\n", -400),
	BAD("CL overflow", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 18446744073709551617\r\n\r\n", -400),
	BAD("CL hex", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 0x10\r\n\r\n", -400),
	/* Transfer-Encoding */
	BAD("TE and CL", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Content-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", -400),
	BAD("TE in HTTP/1.0", "POST / HTTP/1.0\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", -400),
	BAD("TE chunked twice", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked, chunked\r\n\r\n", -400),
	BAD("TE chunked twice on two lines", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
	    -400),
	BAD("TE not chunked", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: gzip\r\n\r\n", -400),
	BAD("TE chunked not last", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked, gzip\r\n\r\n", -400),
	BAD("TE chunked not last over lines", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
	    -400),
	BAD("TE with parameter", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked;q=1\r\n\r\n", -400),
	BAD("TE quoted", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: \"chunked\"\r\n\r\n", -400),
	BAD("TE xchunked", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: xchunked\r\n\r\n", -400),
	BAD("TE leading empty element", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: , chunked\r\n\r\n", -400),
	BAD("TE trailing empty element", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chunked,\r\n\r\n", -400),
	BAD("TE empty", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding:\r\n\r\n", -400),
	BAD("TE inner SP", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: chun ked\r\n\r\n", -400),
	BAD("TE vertical tab", "POST / HTTP/1.1\r\nHost: h\r\n"
	    "Transfer-Encoding: \vchunked\r\n\r\n", -400),
	/* Connection, Expect */
	BAD("Connection bad token", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Connection: close;x\r\n\r\n", -400),
	BAD("Expect other", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Expect: foo\r\n\r\n", -400),
	BAD("Expect list", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "Expect: 100-continue, foo\r\n\r\n", -400),
	BAD("Expect empty", "GET / HTTP/1.1\r\nHost: h\r\nExpect:\r\n\r\n",
	    -400),
};

/* Inputs that must be refused before the head is even complete. */
static const struct req_bad req_early[] = {
	BAD("early bare LF", "GET / HTTP/1.1\nHost: exa", -400),
	BAD("early bare CR", "GET / HTTP/1.1\rHost: exa", -400),
	BADN("early NUL", "GET /\0", -400),
	BAD("early leading CR", "\r", -400),
	BAD("early leading LF", "\n", -400),
};

/* Build a request with n extra fields after Host. */
static size_t
many_fields(char *buf, size_t cap, int n, int response)
{
	size_t len;
	int i;

	len = (size_t)snprintf(buf, cap, "%s", response ?
	    "HTTP/1.1 200 OK\r\n" : "GET / HTTP/1.1\r\nHost: h\r\n");
	for (i = 0; i < n; i++)
		len += (size_t)snprintf(buf + len, cap - len, "X-%d: %d\r\n",
		    i, i);
	len += (size_t)snprintf(buf + len, cap - len, "\r\n");
	return len;
}

static void
test_requests(void)
{
	static char big[8192];
	const struct req_ok *c;
	const struct req_bad *b;
	const char *p;
	size_t i, k, len;
	int r, hl, ok;

	for (i = 0; i < sizeof(req_ok) / sizeof(req_ok[0]); i++) {
		c = &req_ok[i];
		len = strlen(c->in);
		hl = head_len_of(c->in);
		p = at_end(c->in, len);
		r = http_parse_request(p, len, &msg);
		CHECK(r == hl, c->name);
		if (r != hl) {
			printf("  got %d want %d\n", r, hl);
			continue;
		}
		CHECK(msg.head_len == (uint32_t)hl, c->name);
		CHECK(msg.flags == c->flags, c->name);
		if (msg.flags != c->flags)
			printf("  flags %#x want %#x\n", msg.flags, c->flags);
		CHECK(!(c->flags & HF_CL) || msg.clen == c->clen, c->name);
		CHECK(sl_is(msg.host, c->host), c->name);
		CHECK(sl_is(msg.path, c->path), c->name);
		CHECK(msg.minor == c->minor, c->name);
		CHECK(msg.nh == c->nh, c->name);
		CHECK(msg.method.p == p, c->name);

		/* Every strict prefix is "need more", never an error. */
		ok = 1;
		for (k = 0; k < len; k++) {
			p = at_end(c->in, k);
			if (http_parse_request(p, k, &msg) != 0) {
				printf("  prefix %zu\n", k);
				ok = 0;
				break;
			}
		}
		CHECK(ok, c->name);
	}

	for (i = 0; i < sizeof(req_bad) / sizeof(req_bad[0]); i++) {
		b = &req_bad[i];
		len = b->len ? b->len : strlen(b->in);
		p = at_end(b->in, len);
		r = http_parse_request(p, len, &msg);
		CHECK(r == b->ret, b->name);
		if (r != b->ret)
			printf("  got %d want %d\n", r, b->ret);
	}
	for (i = 0; i < sizeof(req_early) / sizeof(req_early[0]); i++) {
		b = &req_early[i];
		len = b->len ? b->len : strlen(b->in);
		p = at_end(b->in, len);
		CHECK(http_parse_request(p, len, &msg) == b->ret, b->name);
	}

	/* Pipelining: the head ends where the blank line ends. */
	{
		static const char two[] = "GET /1 HTTP/1.1\r\nHost: h\r\n\r\n"
		    "GET /2 HTTP/1.1\r\nHost: h\r\n\r\n";

		p = at_end(two, sizeof(two) - 1);
		CHECK(http_parse_request(p, sizeof(two) - 1, &msg) ==
		    (int)(sizeof(two) - 1) / 2, "pipelined: first head only");
		CHECK(sl_is(msg.path, "/1"), "pipelined: first path");
	}

	/* A body after the head (even garbage) is not the parser's. */
	{
		static const char body[] = "POST / HTTP/1.1\r\nHost: h\r\n"
		    "Content-Length: 4\r\n\r\n\0\n\r\x01";

		p = at_end(body, sizeof(body) - 1);
		CHECK(http_parse_request(p, sizeof(body) - 1, &msg) ==
		    (int)sizeof(body) - 1 - 4, "body bytes not scanned");
	}

	/* Value trimming and slices into the buffer. */
	{
		static const char v[] = "GET / HTTP/1.1\r\nHost: h\r\n"
		    "X-A: \t v a l \t\r\n\r\n";

		p = at_end(v, sizeof(v) - 1);
		r = http_parse_request(p, sizeof(v) - 1, &msg);
		CHECK(r > 0 && sl_is(msg.h[1].value, "v a l"),
		    "value OWS trimmed, inner kept");
		CHECK(r > 0 && sl_is(msg.h[1].name, "X-A"), "name slice");
		CHECK(r > 0 && msg.h[1].value.p > p &&
		    msg.h[1].value.p < p + r, "value slice inside buffer");
	}

	/* HTTP_MAX_HEADERS fields fit; one more is 431. */
	len = many_fields(big, sizeof(big), HTTP_MAX_HEADERS - 1, 0);
	p = at_end(big, len);
	CHECK(http_parse_request(p, len, &msg) == (int)len,
	    "100 fields accepted");
	CHECK(msg.nh == HTTP_MAX_HEADERS, "100 fields counted");
	len = many_fields(big, sizeof(big), HTTP_MAX_HEADERS, 0);
	p = at_end(big, len);
	CHECK(http_parse_request(p, len, &msg) == -431, "101 fields: 431");
}

/* ------------------------------------------------------------ responses */

struct resp_ok {
	const char *name;
	const char *in;
	int head_req;
	int status;
	const char *reason;
	unsigned flags;
	uint64_t clen;
	int minor;
};

static const struct resp_ok resp_ok[] = {
	{ "200 with CL", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", 0,
	    200, "OK", HF_CL, 5, 1 },
	{ "no reason, no SP", "HTTP/1.1 200\r\n\r\n", 0, 200, "", 0, 0, 1 },
	{ "empty reason", "HTTP/1.1 200 \r\n\r\n", 0, 200, "", 0, 0, 1 },
	{ "reason with SP HTAB obs-text", "HTTP/1.1 404 Not\tF\xf6und here\r\n"
	    "\r\n", 0, 404, "Not\tF\xf6und here", 0, 0, 1 },
	{ "HTTP/1.0", "HTTP/1.0 200 OK\r\n\r\n", 0, 200, "OK", 0, 0, 0 },
	{ "chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: Chunked\r\n\r\n",
	    0, 200, "OK", HF_CHUNKED, 0, 1 },
	{ "gzip, chunked", "HTTP/1.1 200 OK\r\n"
	    "Transfer-Encoding: gzip, chunked\r\n\r\n", 0, 200, "OK",
	    HF_CHUNKED, 0, 1 },
	{ "TE gzip: close-delimited", "HTTP/1.1 200 OK\r\n"
	    "Transfer-Encoding: gzip\r\n\r\n", 0, 200, "OK", HF_TE_OTHER, 0,
	    1 },
	{ "TE chunked, gzip: close-delimited", "HTTP/1.1 200 OK\r\n"
	    "Transfer-Encoding: chunked, gzip\r\n\r\n", 0, 200, "OK",
	    HF_TE_OTHER, 0, 1 },
	{ "HEAD response with CL", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n"
	    "\r\n", 1, 200, "OK", HF_NOBODY, 0, 1 },
	{ "HEAD response with TE", "HTTP/1.1 200 OK\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", 1, 200, "OK", HF_NOBODY, 0,
	    1 },
	{ "204 with CL", "HTTP/1.1 204 No Content\r\nContent-Length: 3\r\n"
	    "\r\n", 0, 204, "No Content", HF_NOBODY, 0, 1 },
	{ "304 with TE", "HTTP/1.1 304 Not Modified\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", 0, 304, "Not Modified",
	    HF_NOBODY, 0, 1 },
	{ "100 Continue", "HTTP/1.1 100 Continue\r\n\r\n", 0, 100, "Continue",
	    HF_NOBODY, 0, 1 },
	{ "101 upgrade", "HTTP/1.1 101 Switching Protocols\r\n"
	    "Connection: Upgrade\r\nUpgrade: websocket\r\n\r\n", 0, 101,
	    "Switching Protocols", HF_NOBODY | HF_UPGRADE, 0, 1 },
	{ "101 without Upgrade field", "HTTP/1.1 101 X\r\n"
	    "Connection: upgrade\r\n\r\n", 0, 101, "X", HF_NOBODY, 0, 1 },
	{ "200 with Upgrade is no upgrade", "HTTP/1.1 200 OK\r\n"
	    "Connection: upgrade\r\nUpgrade: h2c\r\nContent-Length: 0\r\n\r\n",
	    0, 200, "OK", HF_CL, 0, 1 },
	{ "Connection close", "HTTP/1.1 200 OK\r\nConnection: close\r\n"
	    "Content-Length: 1\r\n\r\n", 0, 200, "OK", HF_CL | HF_CLOSE, 1,
	    1 },
	{ "Connection keep-alive", "HTTP/1.0 200 OK\r\n"
	    "Connection: keep-alive\r\nContent-Length: 1\r\n\r\n", 0, 200, "OK",
	    HF_CL | HF_KEEPALIVE, 1, 0 },
	{ "status 599", "HTTP/1.1 599 X\r\n\r\n", 0, 599, "X", 0, 0, 1 },
	{ "Host fields are not checked", "HTTP/1.1 200 OK\r\nHost: a\r\n"
	    "Host: b/c\r\n\r\n", 0, 200, "OK", 0, 0, 1 },
	{ "Expect is not checked", "HTTP/1.1 200 OK\r\nExpect: x\r\n\r\n", 0,
	    200, "OK", 0, 0, 1 },
};

static const struct req_bad resp_bad[] = {
	BAD("status 099", "HTTP/1.1 099 X\r\n\r\n", -502),
	BAD("status 600", "HTTP/1.1 600 X\r\n\r\n", -502),
	BAD("status two digits", "HTTP/1.1 20 X\r\n\r\n", -502),
	BAD("status four digits", "HTTP/1.1 2000 X\r\n\r\n", -502),
	BAD("status not digits", "HTTP/1.1 2x0 X\r\n\r\n", -502),
	BAD("status no SP before reason", "HTTP/1.1 200OK\r\n\r\n", -502),
	BAD("two SP before status", "HTTP/1.1  200 OK\r\n\r\n", -502),
	BAD("HTTP/2", "HTTP/2 200 OK\r\n\r\n", -502),
	BAD("HTTP/1.2", "HTTP/1.2 200 OK\r\n\r\n", -502),
	BAD("lower-case version", "http/1.1 200 OK\r\n\r\n", -502),
	BAD("ICY", "ICY 200 OK\r\n\r\n", -502),
	BAD("empty status line", "\r\n\r\n", -502),
	BAD("bare LF", "HTTP/1.1 200 OK\nContent-Length: 1\n\n", -502),
	BADN("NUL in reason", "HTTP/1.1 200 O\0K\r\n\r\n", -502),
	BAD("bare CR in value", "HTTP/1.1 200 OK\r\nX: a\rb\r\n\r\n", -502),
	BAD("SP before colon", "HTTP/1.1 200 OK\r\nContent-Length : 1\r\n\r\n",
	    -502),
	BAD("obs-fold", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", -502),
	BAD("TE and CL", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n"
	    "Content-Length: 5\r\n\r\n", -502),
	BAD("CL twice", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
	    "Content-Length: 5\r\n\r\n", -502),
	BAD("CL list", "HTTP/1.1 200 OK\r\nContent-Length: 5,5\r\n\r\n", -502),
	BAD("CL bad", "HTTP/1.1 200 OK\r\nContent-Length: five\r\n\r\n", -502),
	BAD("TE chunked twice", "HTTP/1.1 200 OK\r\n"
	    "Transfer-Encoding: chunked, chunked\r\n\r\n", -502),
	BAD("TE empty element", "HTTP/1.1 200 OK\r\n"
	    "Transfer-Encoding: gzip,,chunked\r\n\r\n", -502),
	BAD("TE in HTTP/1.0", "HTTP/1.0 200 OK\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", -502),
	BAD("HEAD response with bad CL", "HTTP/1.1 200 OK\r\n"
	    "Content-Length: 1x\r\n\r\n", -502),
	BAD("204 with CL twice", "HTTP/1.1 204 X\r\nContent-Length: 0\r\n"
	    "Content-Length: 0\r\n\r\n", -502),
	BAD("304 with TE and CL", "HTTP/1.1 304 X\r\nContent-Length: 0\r\n"
	    "Transfer-Encoding: chunked\r\n\r\n", -502),
	BAD("Connection bad token", "HTTP/1.1 200 OK\r\nConnection: a b\r\n"
	    "\r\n", -502),
};

static void
test_responses(void)
{
	static char big[8192];
	const struct resp_ok *c;
	const struct req_bad *b;
	const char *p;
	size_t i, k, len;
	int r, hl, ok;

	for (i = 0; i < sizeof(resp_ok) / sizeof(resp_ok[0]); i++) {
		c = &resp_ok[i];
		len = strlen(c->in);
		hl = head_len_of(c->in);
		p = at_end(c->in, len);
		r = http_parse_response(p, len, c->head_req, &msg);
		CHECK(r == hl, c->name);
		if (r != hl) {
			printf("  got %d want %d\n", r, hl);
			continue;
		}
		CHECK(msg.status == c->status, c->name);
		CHECK(sl_is(msg.reason, c->reason), c->name);
		CHECK(msg.flags == c->flags, c->name);
		if (msg.flags != c->flags)
			printf("  flags %#x want %#x\n", msg.flags, c->flags);
		CHECK(!(c->flags & HF_CL) || msg.clen == c->clen, c->name);
		CHECK(msg.minor == c->minor, c->name);
		ok = 1;
		for (k = 0; k < len && ok; k++) {
			p = at_end(c->in, k);
			ok = http_parse_response(p, k, c->head_req, &msg) == 0;
		}
		CHECK(ok, c->name);
	}
	for (i = 0; i < sizeof(resp_bad) / sizeof(resp_bad[0]); i++) {
		b = &resp_bad[i];
		len = b->len ? b->len : strlen(b->in);
		p = at_end(b->in, len);
		/* "HEAD response with bad CL" must fail with head_req too. */
		r = http_parse_response(p, len, strstr(b->name, "HEAD") != NULL,
		    &msg);
		CHECK(r == b->ret, b->name);
		if (r != b->ret)
			printf("  got %d want %d\n", r, b->ret);
	}

	len = many_fields(big, sizeof(big), HTTP_MAX_HEADERS, 1);
	p = at_end(big, len);
	CHECK(http_parse_response(p, len, 0, &msg) == (int)len,
	    "response: 100 fields accepted");
	len = many_fields(big, sizeof(big), HTTP_MAX_HEADERS + 1, 1);
	p = at_end(big, len);
	CHECK(http_parse_response(p, len, 0, &msg) == -502,
	    "response: 101 fields: 502");
}

/* -------------------------------------------------------------- chunked */

struct chunk_case {
	const char *name;
	const char *in;
	size_t len;		/* 0: strlen(in) */
	long ret;		/* one call over all of in */
	int done;
};

static char long_ext[1100], long_trl[1100], many_trl[1024];

static const struct chunk_case chunk_cases[] = {
	{ "last chunk only", "0\r\n\r\n", 0, 5, 1 },
	{ "one chunk", "5\r\nhello\r\n0\r\n\r\n", 0, 15, 1 },
	{ "hex sizes", "a\r\n0123456789\r\nA\r\n0123456789\r\n"
	    "1f\r\n0123456789012345678901234567890\r\n0\r\n\r\n", 0, 72, 1 },
	{ "leading zeros", "0005\r\nhello\r\n000\r\n\r\n", 0, 20, 1 },
	{ "extensions and trailers", "5;ext=1\r\nhello\r\n"
	    "A; a=\"b c\" ;d\r\n0123456789\r\n0;last\r\nX-Trailer: v\r\n"
	    "Y:\r\n\r\n", 0, 71, 1 },
	{ "BWS before ';'", "5 \t;x\r\nhello\r\n0\r\n\r\n", 0, 19, 1 },
	{ "binary data", "4\r\n\r\n\0\n\r\n0\r\n\r\n", 14, 14, 1 },
	{ "pipelined bytes after the body", "0\r\n\r\nGET / HTTP/1.1\r\n", 0,
	    5, 1 },
	{ "incomplete data", "10\r\nhello", 0, 9, 0 },
	{ "15 hex digits", "fffffffffffffff\r\nabc", 0, 20, 0 },
	{ "incomplete trailers", "0\r\nX: y\r\n", 0, 9, 0 },
	{ "empty input", "", 0, 0, 0 },
	{ "no digits", "\r\n", 0, -1, 0 },
	{ "bad hex", "g\r\n", 0, -1, 0 },
	{ "negative", "-1\r\n", 0, -1, 0 },
	{ "leading SP", " 5\r\nhello\r\n0\r\n\r\n", 0, -1, 0 },
	{ "0x prefix", "0x5\r\nhello\r\n0\r\n\r\n", 0, -1, 0 },
	{ "16 hex digits", "0000000000000005\r\nhello\r\n0\r\n\r\n", 0, -1,
	    0 },
	{ "size overflow", "10000000000000000\r\n", 0, -1, 0 },
	{ "bare LF after size", "5\nhello\r\n0\r\n\r\n", 0, -1, 0 },
	{ "bare CR after size", "5\rhello\r\n0\r\n\r\n", 0, -1, 0 },
	{ "data too long", "5\r\nhelloX\r\n0\r\n\r\n", 0, -1, 0 },
	{ "data too short", "5\r\nhell\r\n0\r\n\r\n", 0, -1, 0 },
	{ "bare LF after data", "5\r\nhello\n0\r\n\r\n", 0, -1, 0 },
	{ "SP then CRLF", "5 \r\nhello\r\n0\r\n\r\n", 0, -1, 0 },
	{ "bare LF in extension", "5;a\nb\r\nhello\r\n0\r\n\r\n", 0, -1, 0 },
	{ "NUL in extension", "5;\0\r\nhello\r\n0\r\n\r\n", 17, -1, 0 },
	{ "trailer obs-fold", "0\r\nX: a\r\n b\r\n\r\n", 0, -1, 0 },
	{ "trailer without colon", "0\r\nXa\r\n\r\n", 0, -1, 0 },
	{ "trailer SP before colon", "0\r\nX : a\r\n\r\n", 0, -1, 0 },
	{ "trailer bare LF", "0\r\nX: a\n\r\n", 0, -1, 0 },
	{ "trailer control char", "0\r\nX: a\x01\r\n\r\n", 0, -1, 0 },
	{ "final CR not LF", "0\r\n\r\r", 0, -1, 0 },
	{ "final bare LF", "0\r\n\n", 0, -1, 0 },
};

struct chunk_gen {
	const char *name;
	const char *in;		/* built at run time */
	long ret;
	int done;
};

/* Build the long-line and many-trailer inputs. */
static void
chunk_build(void)
{
	size_t n;
	int i;

	/* A size line of exactly 1024 bytes is fine; 1025 is not. */
	memset(long_ext, 'e', sizeof(long_ext));
	memcpy(long_ext, "1;", 2);
	memcpy(long_ext + 1024, "\r\nx\r\n0\r\n\r\n", 11);
	memset(long_trl, 't', sizeof(long_trl));
	memcpy(long_trl, "0\r\nX:", 5);
	memcpy(long_trl + 3 + 1024, "\r\n\r\n", 5);
	n = 0;
	n += (size_t)snprintf(many_trl, sizeof(many_trl), "0\r\n");
	for (i = 0; i < 32; i++)
		n += (size_t)snprintf(many_trl + n, sizeof(many_trl) - n,
		    "T%d: v\r\n", i);
	snprintf(many_trl + n, sizeof(many_trl) - n, "\r\n");
}

/*
 * Feed in[0..len) in two calls split at k (or byte by byte when k is
 * (size_t)-1) and report what the sequence amounts to: the total consumed
 * or -1, and done.
 */
static long
chunk_feed(const char *in, size_t len, size_t k, int *done)
{
	struct http_chunk c;
	size_t at, step;
	long r, total;

	http_chunk_init(&c);
	total = 0;
	*done = 0;
	for (at = 0; at < len && !*done; at += step) {
		if (k == (size_t)-1)
			step = 1;
		else
			step = at < k ? k - at : len - at;
		r = http_chunk_scan(&c, at_end(in + at, step), step, done);
		if (r < 0)
			return -1;
		if ((size_t)r > step)
			return -2;	/* never more than given */
		total += r;
		if (!*done && (size_t)r != step)
			return -3;	/* short count without done */
	}
	return total;
}

static void
chunk_one(const char *name, const char *in, size_t len, long ret, int done)
{
	struct http_chunk c;
	size_t k;
	long r;
	int d, ok;

	http_chunk_init(&c);
	r = http_chunk_scan(&c, at_end(in, len), len, &d);
	CHECK(r == ret, name);
	if (r != ret)
		printf("  got %ld want %ld\n", r, ret);
	CHECK(r < 0 || d == done, name);

	/* Any split, and byte by byte, must agree with one call. */
	ok = 1;
	for (k = 0; k <= len && ok; k++) {
		r = chunk_feed(in, len, k, &d);
		ok = r == ret && (ret < 0 || d == done);
		if (!ok)
			printf("  split at %zu: %ld\n", k, r);
	}
	CHECK(ok, name);
	r = chunk_feed(in, len, (size_t)-1, &d);
	CHECK(r == ret && (ret < 0 || d == done), name);
}

static void
test_chunks(void)
{
	const struct chunk_case *c;
	struct http_chunk ck;
	size_t i;
	long r;
	int d;

	for (i = 0; i < sizeof(chunk_cases) / sizeof(chunk_cases[0]); i++) {
		c = &chunk_cases[i];
		chunk_one(c->name, c->in, c->len ? c->len : strlen(c->in),
		    c->ret, c->done);
	}

	chunk_build();
	chunk_one("size line of 1024 bytes", long_ext, 1034, 1034, 1);
	long_ext[1024] = 'e';
	chunk_one("size line of 1025 bytes", long_ext, 1034, -1, 0);
	chunk_one("trailer line of 1024 bytes", long_trl, 1031, 1031, 1);
	long_trl[1027] = 't';
	long_trl[1028] = '\r';
	long_trl[1029] = '\n';
	chunk_one("trailer line of 1025 bytes", long_trl, 1031, -1, 0);
	chunk_one("32 trailers", many_trl, strlen(many_trl),
	    (long)strlen(many_trl), 1);
	memmove(many_trl + 3 + 6, many_trl + 3, strlen(many_trl + 3) + 1);
	memcpy(many_trl + 3, "Z: v\r\n", 6);
	chunk_one("33 trailers", many_trl, strlen(many_trl), -1, 0);

	/* After an error the scanner stays failed. */
	http_chunk_init(&ck);
	r = http_chunk_scan(&ck, "x", 1, &d);
	CHECK(r == -1, "error");
	r = http_chunk_scan(&ck, "0\r\n\r\n", 5, &d);
	CHECK(r == -1, "error is sticky");

	/* After the end it consumes nothing more and says done. */
	http_chunk_init(&ck);
	r = http_chunk_scan(&ck, "0\r\n\r\n", 5, &d);
	CHECK(r == 5 && d == 1, "done");
	d = 0;
	r = http_chunk_scan(&ck, "GET", 3, &d);
	CHECK(r == 0 && d == 1, "done is sticky, nothing consumed");

	/* A large chunk across many calls. */
	http_chunk_init(&ck);
	r = http_chunk_scan(&ck, "100000\r\n", 8, &d);
	CHECK(r == 8 && !d && ck.left == 0x100000, "large size");
	for (i = 0; i < 0x100000 / 4096; i++)
		if (http_chunk_scan(&ck, out, 1024, &d) != 1024 ||
		    http_chunk_scan(&ck, out, 3072, &d) != 3072)
			break;
	CHECK(i == 0x100000 / 4096 && ck.left == 0, "large chunk data");
	r = http_chunk_scan(&ck, "\r\n0\r\n\r\nX", 8, &d);
	CHECK(r == 7 && d == 1, "large chunk end");
}

/* -------------------------------------------------------------- writers */

struct wreq_case {
	const char *name;
	const char *in;
	int trusted;
	int minor;
	const char *want;
};

static const struct wreq_case wreq[] = {
	{ "basic", "GET /a?q HTTP/1.1\r\nHost: example.org\r\nUser-Agent: t\r\n"
	    "Accept: */*\r\n\r\n", 0, 1,
	    "GET /a?q HTTP/1.1\r\nHost: example.org\r\nUser-Agent: t\r\n"
	    "Accept: */*\r\nX-Forwarded-For: 192.0.2.1\r\n"
	    "X-Forwarded-Proto: http\r\nX-Forwarded-Host: example.org\r\n"
	    "Via: 1.1 proxy\r\n\r\n" },
	{ "hop-by-hop stripped", "POST /p HTTP/1.1\r\nHost: h\r\n"
	    "Connection: close, Foo\r\nKeep-Alive: timeout=5\r\n"
	    "TE: trailers\r\nTrailer: X-T\r\nUpgrade: websocket\r\n"
	    "Proxy-Connection: close\r\n"
	    "Proxy-Authorization: Basic eA==\r\nExpect: 100-continue\r\n"
	    "foo: bar\r\nBar: keep\r\nContent-Length: 3\r\n\r\n", 0, 1,
	    "POST /p HTTP/1.1\r\nHost: h\r\nBar: keep\r\nContent-Length: 3\r\n"
	    "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\n"
	    "X-Forwarded-Host: h\r\nVia: 1.1 proxy\r\n\r\n" },
	{ "Connection cannot strip framing or Host", "POST /p HTTP/1.1\r\n"
	    "Host: h\r\nConnection: Content-Length, host, transfer-encoding\r\n"
	    "Content-Length: 3\r\n\r\n", 0, 1,
	    "POST /p HTTP/1.1\r\nHost: h\r\nContent-Length: 3\r\n"
	    "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\n"
	    "X-Forwarded-Host: h\r\nVia: 1.1 proxy\r\n\r\n" },
	{ "untrusted X-Forwarded-* replaced", "GET / HTTP/1.1\r\nHost: h\r\n"
	    "X-Forwarded-For: 10.0.0.1\r\nX-Forwarded-Proto: https\r\n"
	    "x-forwarded-host: evil\r\nForwarded: for=10.0.0.1\r\n"
	    "Via: 1.1 other\r\n\r\n", 0, 1,
	    "GET / HTTP/1.1\r\nHost: h\r\nVia: 1.1 other\r\n"
	    "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\n"
	    "X-Forwarded-Host: h\r\nVia: 1.1 proxy\r\n\r\n" },
	{ "trusted X-Forwarded-* kept and appended", "GET / HTTP/1.1\r\n"
	    "Host: h\r\nX-Forwarded-For: 10.0.0.1\r\n"
	    "X-Forwarded-Proto: https\r\n"
	    "X-Forwarded-For: 10.0.0.2, 10.0.0.3\r\nX-Forwarded-For:\r\n"
	    "X-Forwarded-Host: front\r\nForwarded: for=10.0.0.1\r\n\r\n", 1, 1,
	    "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-Proto: https\r\n"
	    "X-Forwarded-Host: front\r\nForwarded: for=10.0.0.1\r\n"
	    "X-Forwarded-For: 10.0.0.1, 10.0.0.2, 10.0.0.3, 192.0.2.1\r\n"
	    "Via: 1.1 proxy\r\n\r\n" },
	{ "trusted without X-Forwarded-*", "GET / HTTP/1.1\r\nHost: h\r\n\r\n",
	    1, 1,
	    "GET / HTTP/1.1\r\nHost: h\r\nX-Forwarded-For: 192.0.2.1\r\n"
	    "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
	    "Via: 1.1 proxy\r\n\r\n" },
	{ "absolute-form", "GET http://example.org:81/x?y HTTP/1.1\r\n"
	    "Host: other\r\nA: b\r\n\r\n", 0, 1,
	    "GET /x?y HTTP/1.1\r\nHost: example.org:81\r\nA: b\r\n"
	    "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\n"
	    "X-Forwarded-Host: example.org:81\r\nVia: 1.1 proxy\r\n\r\n" },
	{ "upgrade", "GET /ws HTTP/1.1\r\nHost: h\r\nConnection: Upgrade\r\n"
	    "Upgrade: websocket\r\nSec-WebSocket-Key: k\r\n\r\n", 0, 1,
	    "GET /ws HTTP/1.1\r\nHost: h\r\nUpgrade: websocket\r\n"
	    "Sec-WebSocket-Key: k\r\nX-Forwarded-For: 192.0.2.1\r\n"
	    "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
	    "Via: 1.1 proxy\r\nConnection: upgrade\r\n\r\n" },
	{ "HTTP/1.0 upstream", "GET / HTTP/1.1\r\nHost: h\r\n\r\n", 0, 0,
	    "GET / HTTP/1.0\r\nHost: h\r\nX-Forwarded-For: 192.0.2.1\r\n"
	    "X-Forwarded-Proto: http\r\nX-Forwarded-Host: h\r\n"
	    "Via: 1.1 proxy\r\nConnection: keep-alive\r\n\r\n" },
	{ "HTTP/1.0 client without Host", "GET / HTTP/1.0\r\n"
	    "Connection: keep-alive\r\n\r\n", 0, 1,
	    "GET / HTTP/1.0\r\nX-Forwarded-For: 192.0.2.1\r\n"
	    "X-Forwarded-Proto: http\r\nVia: 1.0 proxy\r\n"
	    "Connection: keep-alive\r\n\r\n" },
	{ "OWS normalised", "GET / HTTP/1.1\r\nHost:h\r\nA:\t b \t\r\n\r\n", 0,
	    1,
	    "GET / HTTP/1.1\r\nHost: h\r\nA: b\r\n"
	    "X-Forwarded-For: 192.0.2.1\r\nX-Forwarded-Proto: http\r\n"
	    "X-Forwarded-Host: h\r\nVia: 1.1 proxy\r\n\r\n" },
};

struct wresp_case {
	const char *name;
	const char *in;
	int head_req;
	int close;
	int client_minor;
	const char *hide;
	const char *want;
};

static const struct wresp_case wresp[] = {
	{ "hop-by-hop and hidden stripped", "HTTP/1.1 200 OK\r\nServer: x\r\n"
	    "X-Powered-By: php\r\nContent-Length: 5\r\n"
	    "Connection: keep-alive, X-Foo\r\nKeep-Alive: timeout=5\r\n"
	    "X-Foo: y\r\nTE: x\r\nTrailer: z\r\nProxy-Connection: x\r\n"
	    "Upgrade: h2c\r\nSet-Cookie: a=b\r\n\r\n", 0, 0, 1,
	    "Server x-powered-by",
	    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nSet-Cookie: a=b\r\n"
	    "Via: 1.1 proxy\r\n\r\n" },
	{ "close", "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n", 0, 1, 1,
	    NULL,
	    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 proxy\r\n"
	    "Connection: close\r\n\r\n" },
	{ "HTTP/1.0 client kept alive", "HTTP/1.1 200 OK\r\n"
	    "Content-Length: 0\r\n\r\n", 0, 0, 0, "",
	    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 proxy\r\n"
	    "Connection: keep-alive\r\n\r\n" },
	{ "HTTP/1.0 client closed", "HTTP/1.1 200 OK\r\n"
	    "Content-Length: 0\r\n\r\n", 0, 1, 0, NULL,
	    "HTTP/1.1 200 OK\r\nContent-Length: 0\r\nVia: 1.1 proxy\r\n"
	    "Connection: close\r\n\r\n" },
	{ "101 keeps Upgrade", "HTTP/1.1 101 Switching Protocols\r\n"
	    "Connection: Upgrade\r\nUpgrade: websocket\r\n"
	    "Sec-WebSocket-Accept: a\r\n\r\n", 0, 1, 1, NULL,
	    "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
	    "Sec-WebSocket-Accept: a\r\nVia: 1.1 proxy\r\n"
	    "Connection: upgrade\r\n\r\n" },
	{ "HTTP/1.0 upstream", "HTTP/1.0 404 Not Found\r\nA: b\r\n\r\n", 0, 1,
	    1, NULL,
	    "HTTP/1.1 404 Not Found\r\nA: b\r\nVia: 1.0 proxy\r\n"
	    "Connection: close\r\n\r\n" },
	{ "empty reason", "HTTP/1.1 204\r\n\r\n", 0, 0, 1, NULL,
	    "HTTP/1.1 204 \r\nVia: 1.1 proxy\r\n\r\n" },
	{ "framing cannot be hidden or listed", "HTTP/1.1 200 OK\r\n"
	    "Connection: content-length, Transfer-Encoding\r\n"
	    "Content-Length: 5\r\n\r\n", 0, 0, 1,
	    "content-length transfer-encoding",
	    "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nVia: 1.1 proxy\r\n\r\n" },
	{ "hide list separators", "HTTP/1.1 200 OK\r\nA: 1\r\nB: 2\r\nC: 3\r\n"
	    "AB: 4\r\n\r\n", 0, 0, 1, "  a,\tc  ",
	    "HTTP/1.1 200 OK\r\nB: 2\r\nAB: 4\r\nVia: 1.1 proxy\r\n\r\n" },
};

/*
 * Check a writer's output against want, then every smaller cap: -1 and
 * not one byte written past the cap.
 */
static void
check_written(const char *name, int r, const char *want, int (*again)(
    size_t cap))
{
	size_t cap, j;
	int ok;

	CHECK(r == (int)strlen(want) && memcmp(out, want, strlen(want)) == 0,
	    name);
	if (r != (int)strlen(want) || memcmp(out, want, strlen(want)) != 0)
		printf("  got %d: %.*s\n", r, r > 0 ? r : 0, out);
	if (r < 0)
		return;
	ok = 1;
	for (cap = 0; cap <= (size_t)r && ok; cap++) {
		memset(out, 0x5a, sizeof(out));
		if (again(cap) != (cap == (size_t)r ? r : -1))
			ok = 0;
		for (j = cap; j < sizeof(out) && ok; j++)
			if (out[j] != 0x5a)
				ok = 0;
	}
	CHECK(ok, name);
}

static const struct wreq_case *cur_req;
static const struct wresp_case *cur_resp;

static int
again_req(size_t cap)
{
	struct http_fwd f = { "192.0.2.1", "http", cur_req->trusted,
	    cur_req->minor, 0, NULL };

	return http_write_request(out, cap, &msg, &f);
}

static int
again_resp(size_t cap)
{
	struct http_rsp o;

	memset(&o, 0, sizeof(o));
	o.close = cur_resp->close;
	o.client_minor = cur_resp->client_minor;
	o.hide = cur_resp->hide;
	return http_write_response(out, cap, &msg, &o);
}

static void
test_writers(void)
{
	const char *p;
	size_t i, len;
	int r;

	for (i = 0; i < sizeof(wreq) / sizeof(wreq[0]); i++) {
		cur_req = &wreq[i];
		len = strlen(cur_req->in);
		p = at_end(cur_req->in, len);
		r = http_parse_request(p, len, &msg);
		CHECK(r == (int)len, cur_req->name);
		if (r != (int)len)
			continue;
		r = again_req(sizeof(out));
		check_written(cur_req->name, r, cur_req->want, again_req);
	}

	/* What we send upstream must itself be a valid request. */
	for (i = 0; i < sizeof(wreq) / sizeof(wreq[0]); i++) {
		cur_req = &wreq[i];
		len = strlen(cur_req->want);
		p = at_end(cur_req->want, len);
		CHECK(http_parse_request(p, len, &msg) == (int)len,
		    cur_req->name);
	}

	for (i = 0; i < sizeof(wresp) / sizeof(wresp[0]); i++) {
		cur_resp = &wresp[i];
		len = strlen(cur_resp->in);
		p = at_end(cur_resp->in, len);
		r = http_parse_response(p, len, cur_resp->head_req, &msg);
		CHECK(r == (int)len, cur_resp->name);
		if (r != (int)len)
			continue;
		r = again_resp(sizeof(out));
		check_written(cur_resp->name, r, cur_resp->want, again_resp);
	}

	/* Writer refuses a status it cannot print in three digits. */
	msg.status = 1000;
	{
		struct http_rsp o;

		memset(&o, 0, sizeof(o));
		o.client_minor = 1;
		CHECK(http_write_response(out, sizeof(out), &msg, &o) == -1,
		    "status 1000 refused");
	}
}

/* -------------------------------------------------------------- paths */

struct path_case {
	const char *in;
	int ret;		/* > 0: strlen(want) */
	const char *want;
};

static const struct path_case paths[] = {
	{ "/", 0, "/" },
	{ "/%61dmin/", 0, "/admin/" },
	{ "/x/../admin/", 0, "/admin/" },
	{ "/a/./b", 0, "/a/b" },
	{ "/a/b/..", 0, "/a/" },
	{ "/a/b/.", 0, "/a/b/" },
	{ "/a/..", 0, "/" },
	{ "/.", 0, "/" },
	{ "/./", 0, "/" },
	{ "/..", -400, NULL },
	{ "/../", -400, NULL },
	{ "/a/../..", -400, NULL },
	{ "/a/../../b", -400, NULL },
	{ "/a/b/../../c", 0, "/c" },
	{ "/a%2fb", -400, NULL },
	{ "/a%2Fb", -400, NULL },
	{ "/a%2E%2E%2F", -400, NULL },
	{ "/p?x=/../", 0, "/p" },
	{ "/a/..?x", 0, "/" },
	{ "/a?", 0, "/a" },
	{ "//admin", 0, "/admin" },
	{ "/a//b///c", 0, "/a/b/c" },
	{ "/a//", 0, "/a/" },
	{ "///", 0, "/" },
	{ "/%2e%2e/", -400, NULL },
	{ "/a/%2e%2e/b", 0, "/b" },
	{ "/a/.%2E", 0, "/" },
	{ "/a/%2e/", 0, "/a/" },
	{ "/a/%2e%2e", 0, "/" },
	{ "/..a/", 0, "/..a/" },
	{ "/.a", 0, "/.a" },
	{ "/a..", 0, "/a.." },
	{ "/...", 0, "/..." },
	{ "/%7euser", 0, "/~user" },
	{ "/%41%42%2d%5F", 0, "/AB-_" },
	{ "/a%20b", 0, "/a%20b" },
	{ "/a%3fb", 0, "/a%3Fb" },
	{ "/%c3%a9", 0, "/%C3%A9" },
	{ "/%25", 0, "/%25" },
	{ "/a%5cb", -400, NULL },
	{ "/a%5Cb", -400, NULL },
	{ "/a\\b", -400, NULL },
	{ "/a%00", -400, NULL },
	{ "/a%", -400, NULL },
	{ "/a%2", -400, NULL },
	{ "/a%zz", -400, NULL },
	{ "/a%g1", -400, NULL },
	{ "/a%%41", -400, NULL },
	{ "/a b", -400, NULL },
	{ "/a\x7f", -400, NULL },
	{ "/\xc3\xa9", -400, NULL },
	{ "", -400, NULL },
	{ "a/b", -400, NULL },
	{ "*", -400, NULL },
	{ "?x", -400, NULL },
	{ "%2fa", -400, NULL },
};

static void
test_paths(void)
{
	const struct path_case *c;
	const char *p;
	char name[128];
	size_t i, len;
	int r, want;

	for (i = 0; i < sizeof(paths) / sizeof(paths[0]); i++) {
		c = &paths[i];
		len = strlen(c->in);
		want = c->want ? (int)strlen(c->want) : c->ret;
		snprintf(name, sizeof(name), "normalize \"%s\"", c->in);
		p = at_end(c->in, len);
		memset(out, 0x5a, sizeof(out));
		r = http_normalize_path(p, len, out, 256);
		CHECK(r == want && (r < 0 ||
		    memcmp(out, c->want, (size_t)r) == 0), name);
		if (r != want)
			printf("  got %d (%.*s) want %d\n", r, r > 0 ? r : 0,
			    out, want);
		CHECK(out[256] == 0x5a, name);
		/* Decoding never lengthens: cap == len always suffices. */
		if (c->want != NULL) {
			r = http_normalize_path(p, len, out, len);
			CHECK(r == want, name);
		}
	}

	/* Bounded output: too small is -414, and nothing past cap. */
	memset(out, 0x5a, sizeof(out));
	CHECK(http_normalize_path("/abc", 4, out, 3) == -414, "cap 3: 414");
	CHECK(out[3] == 0x5a, "cap 3: guard");
	memset(out, 0x5a, sizeof(out));
	CHECK(http_normalize_path("/abc", 4, out, 0) == -414, "cap 0: 414");
	CHECK(out[0] == 0x5a, "cap 0: guard");
	memset(out, 0x5a, sizeof(out));
	CHECK(http_normalize_path("/a%20", 5, out, 3) == -414,
	    "cap: kept escape does not fit");
	CHECK(out[3] == 0x5a, "cap: escape guard");
	memset(out, 0x5a, sizeof(out));
	CHECK(http_normalize_path("/abc/", 5, out, 4) == -414,
	    "cap: trailing slash does not fit");
	CHECK(out[4] == 0x5a, "cap: slash guard");
	CHECK(http_normalize_path("/abc", 4, out, 4) == 4, "cap exact");
}

/* ---------------------------------------------------------- error pages */

static void
test_pages(void)
{
	static const int codes[] = { 400, 403, 404, 408, 413, 414, 417, 429,
	    431, 500, 501, 502, 503, 504 };
	const char *page, *p;
	char name[64], body[8];
	size_t i, len, plen;
	int r;

	for (i = 0; i < sizeof(codes) / sizeof(codes[0]); i++) {
		snprintf(name, sizeof(name), "error page %d", codes[i]);
		page = http_error_page(codes[i], &len);
		CHECK(page != NULL && strlen(page) == len, name);
		p = at_end(page, len);
		r = http_parse_response(p, len, 0, &msg);
		CHECK(r > 0 && msg.status == codes[i], name);
		CHECK(r > 0 && (msg.flags & HF_CL) && (msg.flags & HF_CLOSE) &&
		    msg.clen == len - (size_t)r, name);
		snprintf(body, sizeof(body), "%d ", codes[i]);
		CHECK(r > 0 && memcmp(page + r, body, 4) == 0 &&
		    page[len - 1] == '\n', name);
		/* The body repeats the status line's reason. */
		CHECK(r > 0 && msg.reason.n == len - (size_t)r - 5 &&
		    memcmp(msg.reason.p, page + r + 4, msg.reason.n) == 0,
		    name);
		CHECK(strstr(page, PROXY_NAME) == NULL &&
		    strstr(page, PROXY_VERSION) == NULL, name);
		CHECK((strstr(page, "Retry-After: 1\r\n") != NULL) ==
		    (codes[i] == 429), name);
	}
	page = http_error_page(418, &len);
	p = http_error_page(500, &plen);
	CHECK(page == p && len == plen, "unknown code: 500 page");
	page = http_error_page(0, &len);
	CHECK(page == p, "code 0: 500 page");
}

static void
test_slice_eq(void)
{
	struct slice s;

	s.p = "Host";
	s.n = 4;
	CHECK(slice_eq(s, "host"), "slice_eq case");
	CHECK(slice_eq(s, "HOST"), "slice_eq upper");
	CHECK(!slice_eq(s, "hos"), "slice_eq shorter");
	CHECK(!slice_eq(s, "hostx"), "slice_eq longer");
	s.n = 0;
	CHECK(slice_eq(s, ""), "slice_eq empty");
	CHECK(!slice_eq(s, "h"), "slice_eq empty vs one");
	s.p = "[";
	s.n = 1;
	CHECK(!slice_eq(s, "{"), "slice_eq not folding non-letters");
}

/* strip_prefix: Location and Content-Location move under the prefix. */
static void
test_location(void)
{
	static const struct {
		const char *name, *loc, *want;
	} t[] = {
		{ "root path", "/login", "Location: /app/login\r\n" },
		{ "root itself", "/", "Location: /app/\r\n" },
		{ "with query", "/a?b=/c", "Location: /app/a?b=/c\r\n" },
		{ "relative kept", "login", "Location: login\r\n" },
		{ "network-path kept", "//evil.example/x",
		    "Location: //evil.example/x\r\n" },
		{ "absolute to Host", "http://Example.org/x",
		    "Location: http://Example.org/app/x\r\n" },
		{ "absolute to server", "https://127.0.0.1:9001/y",
		    "Location: https://127.0.0.1:9001/app/y\r\n" },
		{ "absolute elsewhere kept", "http://other.example/x",
		    "Location: http://other.example/x\r\n" },
		{ "absolute no path kept", "http://example.org",
		    "Location: http://example.org\r\n" },
	};
	char head[256];
	struct http_rsp o;
	size_t i;
	int n, r;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		n = snprintf(head, sizeof(head), "HTTP/1.1 302 Found\r\n"
		    "Location: %s\r\nContent-Length: 0\r\n\r\n", t[i].loc);
		r = http_parse_response(head, (size_t)n, 0, &msg);
		CHECK(r == n, t[i].name);
		memset(&o, 0, sizeof(o));
		o.client_minor = 1;
		o.prefix = "/app/";
		o.server = "127.0.0.1:9001";
		o.host_hash = http_host_hash("example.org", 11);
		r = http_write_response(out, sizeof(out) - 1, &msg, &o);
		CHECK(r > 0, t[i].name);
		if (r > 0) {
			out[r] = '\0';
			CHECK(strstr(out, t[i].want) != NULL, t[i].name);
		}
	}
	/* Content-Location too; without a prefix nothing moves. */
	n = snprintf(head, sizeof(head), "HTTP/1.1 200 OK\r\n"
	    "Content-Location: /c\r\nLocation: /l\r\nContent-Length: 0"
	    "\r\n\r\n");
	CHECK(http_parse_response(head, (size_t)n, 0, &msg) == n, "cl parse");
	memset(&o, 0, sizeof(o));
	o.client_minor = 1;
	o.prefix = "/app";
	r = http_write_response(out, sizeof(out) - 1, &msg, &o);
	out[r > 0 ? r : 0] = '\0';
	CHECK(strstr(out, "Content-Location: /app/c\r\n") != NULL,
	    "Content-Location moved");
	o.prefix = NULL;
	o.extra = "Strict-Transport-Security: max-age=60\r\n";
	r = http_write_response(out, sizeof(out) - 1, &msg, &o);
	out[r > 0 ? r : 0] = '\0';
	CHECK(strstr(out, "Location: /l\r\n") != NULL, "no prefix: kept");
	CHECK(strstr(out, "Strict-Transport-Security: max-age=60\r\n") !=
	    NULL, "extra header added");
}

/* Host values (RFC 9110 7.2): name or IP literal, then digits. */
static void
test_hosts(void)
{
	static const struct {
		const char *host;
		int ok;
	} t[] = {
		{ "example.org", 1 }, { "example.org:8080", 1 },
		{ "example.org:", 1 }, { "10.0.0.1:80", 1 }, { "[::1]", 1 },
		{ "[2001:db8::1]:443", 1 }, { "under_score.local", 1 },
		{ "x:abc", 0 }, { "[admin.example]", 0 }, { ":80", 0 },
		{ "a:1:2", 0 }, { "[::1", 0 }, { "[::1]x", 0 }, { "a]b", 0 },
		{ "x:123456", 0 }, { "a b", 0 }, { "a@b", 0 },
	};
	char head[256];
	size_t i;
	int n, r;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		n = snprintf(head, sizeof(head), "GET / HTTP/1.1\r\nHost: %s"
		    "\r\n\r\n", t[i].host);
		r = http_parse_request(head, (size_t)n, &msg);
		CHECK(t[i].ok ? r == n : r == -400, t[i].host);
	}
}

void
unit_http(void)
{
	test_hosts();
	test_location();
	test_requests();
	test_responses();
	test_chunks();
	test_writers();
	test_paths();
	test_pages();
	test_slice_eq();
}
