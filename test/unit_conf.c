/*
 * Unit tests for conf.c and balance.c: config files written to a scratch
 * directory and loaded for real, the value parsers as tables, and the
 * balancer's routing and smooth round-robin.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <arpa/inet.h>
#include <sys/un.h>

#include "proxy.h"
#include "unit.h"

static char dir[256];
static char file[300];

static void
put_file(const char *text, size_t n)
{
	FILE *f;

	if ((f = fopen(file, "w")) == NULL) {
		perror(file);
		exit(2);
	}
	fwrite(text, 1, n, f);
	fclose(f);
}

/* Load text as a config; returns conf_load's result, err filled. */
static int
load(const char *text, struct config *c, char *err, size_t errlen)
{
	put_file(text, strlen(text));
	return conf_load(file, c, err, errlen);
}

/*
 * An error case: want is what follows the file name, ":LINE: message".
 * A prefix match when prefix is set (messages that quote a build limit).
 */
static void
err_case(const char *name, const char *text, size_t len, const char *want,
    int prefix)
{
	struct config c;
	char err[512], exp[700];
	int rc, ok;

	put_file(text, len);
	rc = conf_load(file, &c, err, sizeof(err));
	snprintf(exp, sizeof(exp), "%s%s", file, want);
	ok = rc == -1 && (prefix ? strncmp(err, exp, strlen(exp)) == 0 :
	    strcmp(err, exp) == 0);
	CHECK(ok, name);
	if (!ok)
		printf("  got  \"%s\" (rc %d)\n  want \"%s\"\n", err, rc, exp);
	conf_free(&c);
}

static void
err_table(void)
{
	static const struct {
		const char *name, *text, *want;
	} t[] = {
	{ "unknown key", "[proxy]\nfoo = 1\n",
	    ":2: unknown key 'foo' in [proxy]" },
	{ "bad number after comments",
	    "# comment\n\n; other\n[proxy]\nmax_connections = x\n",
	    ":5: max_connections: bad number 'x'" },
	{ "number out of range", "[proxy]\nmax_connections = 0\n",
	    ":2: max_connections: 0 is out of range 1..100000" },
	{ "number too big", "[proxy]\nmax_connections = 100001\n",
	    ":2: max_connections: 100001 is out of range 1..100000" },
	{ "buffers >= 2", "[proxy]\nbuffers = 1\n",
	    ":2: buffers: 1 is out of range 2..1000000" },
	{ "negative number", "[proxy]\nbuffers = -5\n",
	    ":2: buffers: bad number '-5'" },
	{ "duplicate key", "[proxy]\nuser = a\n\nuser = b\n",
	    ":4: duplicate key 'user' in [proxy]" },
	{ "duplicate key other case", "[proxy]\nlog = stderr\nLOG = syslog\n",
	    ":3: duplicate key 'LOG' in [proxy]" },
	{ "unknown section", "[proxy]\n[foo]\n",
	    ":2: unknown section [foo]" },
	{ "unknown section first line", "[foo]\n",
	    ":1: unknown section [foo]" },
	{ "unknown section with name", "[foo bar]\n",
	    ":1: unknown section [foo bar]" },
	{ "cache with a name", "\n[cache x]\n", ":2: [cache] takes no name" },
	{ "duplicate cache", "[cache]\nsize = 1M\n[cache]\n",
	    ":3: duplicate section [cache]" },
	{ "unknown cache key", "[cache]\nfoo = 1\n",
	    ":2: unknown key 'foo' in [cache]" },
	{ "duplicate cache key", "[cache]\nsize = 1M\nSIZE = 2M\n",
	    ":3: duplicate key 'SIZE' in [cache]" },
	{ "cache size bad", "[cache]\nsize = lots\n",
	    ":2: size: bad size 'lots'" },
	{ "cache size too small", "[cache]\nsize = 16K\n",
	    ":2: size: '16K' is out of range 64K..1G (0: off)" },
	{ "cache size too big", "[cache]\nsize = 2G\n",
	    ":2: size: '2G' is out of range 64K..1G (0: off)" },
	{ "max_object bad", "[cache]\nmax_object = 1X\n",
	    ":2: max_object: bad size '1X'" },
	{ "max_object too small", "[cache]\nmax_object = 100\n",
	    ":2: max_object: '100' is out of range 1K..1G" },
	{ "max_object over size", "[cache]\nmax_object = 2M\nsize = 1M\n",
	    ":2: max_object: 2M is larger than size (1M)" },
	{ "max_object over default size", "[cache]\nmax_object = 1536K\n",
	    ":2: max_object: 1536K is larger than size (1M)" },
	{ "cache continued", "[cache]\nsize = 1M\n  2M\n",
	    ":3: size: takes one value (indented line continues it)" },
	{ "route cache bad", "[route r]\ncache = maybe\n",
	    ":2: cache: want yes or no, not 'maybe'" },
	{ "route cache without [cache]",
	    "[backend b]\nserver = 127.0.0.1:1\n[route r]\nbackend = b\n"
	    "cache = yes\n",
	    ":5: cache: yes needs a [cache] section" },
	{ "earliest: route error before cache",
	    "[route r]\nbackend = zz\ncache = yes\n",
	    ":2: route 'r': backend 'zz' is not defined" },
	{ "proxy_protocol bad", "[proxy]\nproxy_protocol = sometimes\n",
	    ":2: proxy_protocol: want yes or no, not 'sometimes'" },
	{ "rate bad", "[proxy]\nrate = ten\n",
	    ":2: rate: bad number 'ten'" },
	{ "max_conns_per_ip twice", "[proxy]\nmax_conns_per_ip = 1\n"
	    "max_conns_per_ip = 2\n",
	    ":3: duplicate key 'max_conns_per_ip' in [proxy]" },
	{ "proxy deny bad", "[proxy]\ndeny = 10.0.0.0/8 nope\n",
	    ":2: deny: bad CIDR 'nope'" },
	{ "access_log empty", "[proxy]\naccess_log =\n",
	    ":2: access_log: empty value" },
	{ "status not a path", "[proxy]\nstatus = status\n",
	    ":2: status: 'status' must start with '/'" },
	{ "status_allow bad", "[proxy]\nstatus_allow = 10.0.0.0/33\n",
	    ":2: status_allow: bad CIDR '10.0.0.0/33'" },
	{ "health_check not a path", "[backend b]\nhealth_check = x\n",
	    ":2: health_check: 'x' must start with '/'" },
	{ "health_interval bad", "[backend b]\nhealth_interval = 5x\n",
	    ":2: health_interval: bad duration '5x'" },
	{ "fail_timeout twice", "[backend b]\nfail_timeout = 5\n"
	    "fail_timeout = 6\n",
	    ":3: duplicate key 'fail_timeout' in [backend b]" },
	{ "strip_prefix bad", "[route r]\nstrip_prefix = maybe\n",
	    ":2: strip_prefix: want yes or no, not 'maybe'" },
	{ "route allow bad", "[route r]\nallow = 10.0.0.0/40\n",
	    ":2: allow: bad CIDR '10.0.0.0/40'" },
	{ "route auth missing file", "[route r]\nauth = /nonexistent/htpw\n",
	    ":2: auth: /nonexistent/htpw: cannot open: No such file or "
	    "directory" },
	{ "unknown backend key", "[backend web]\nfoo = 1\n",
	    ":2: unknown key 'foo' in [backend web]" },
	{ "unknown route key", "[route r1]\nfoo = 1\n",
	    ":2: unknown key 'foo' in [route r1]" },
	{ "backend without name", "[backend]\nserver = 127.0.0.1:1\n",
	    ":1: [backend] needs a name: [backend NAME]" },
	{ "route without name", "[route  ]\n",
	    ":1: [route] needs a name: [route NAME]" },
	{ "bad backend name", "[backend a b]\n",
	    ":1: bad backend name 'a b' (letters, digits, '_', '-', '.')" },
	{ "proxy with name", "[proxy x]\n", ":1: [proxy] takes no name" },
	{ "duplicate proxy", "[proxy]\nuser = a\n[proxy]\n",
	    ":3: duplicate section [proxy]" },
	{ "duplicate backend",
	    "[backend web]\nserver = 127.0.0.1:1\n\n[backend web]\n",
	    ":4: duplicate backend 'web'" },
	{ "duplicate route",
	    "[backend b]\nserver = 127.0.0.1:1\n[route r]\nbackend = b\n"
	    "[route r]\nbackend = b\n",
	    ":5: duplicate route 'r'" },
	{ "route backend undefined",
	    "[route api]\npath = /\nbackend = nope\n"
	    "[backend x]\nserver = 127.0.0.1:1\n",
	    ":3: route 'api': backend 'nope' is not defined" },
	{ "route without backend",
	    "[backend x]\nserver = 127.0.0.1:1\n[route api]\npath = /\n",
	    ":3: route 'api': no backend" },
	{ "backend without server",
	    "[route a]\nbackend = web\n[backend web]\n",
	    ":3: backend 'web': no server" },
	{ "empty backend section at end", "[backend web]\n",
	    ":1: backend 'web': no server" },
	{ "earliest end error: backend",
	    "[backend b1]\n[backend b2]\nserver = 127.0.0.1:1\n"
	    "[route r]\nbackend = zz\n",
	    ":1: backend 'b1': no server" },
	{ "earliest end error: route",
	    "[route r]\nbackend = zz\n[backend b1]\n",
	    ":2: route 'r': backend 'zz' is not defined" },
	{ "duplicate route key",
	    "[route r]\nbackend = a\nbackend = b\n",
	    ":3: duplicate key 'backend' in [route r]" },
	{ "weight 0", "[backend b]\nserver = 127.0.0.1:1 weight=0\n",
	    ":2: server: bad weight 'weight=0' (1..100)" },
	{ "weight 101", "[backend b]\nserver = 127.0.0.1:1 weight=101\n",
	    ":2: server: bad weight 'weight=101' (1..100)" },
	{ "weight junk", "[backend b]\nserver = 127.0.0.1:1 weight=2x\n",
	    ":2: server: bad weight 'weight=2x' (1..100)" },
	{ "weight twice",
	    "[backend b]\nserver = 127.0.0.1:1 weight=2 weight=3\n",
	    ":2: server: weight given twice" },
	{ "junk after server", "[backend b]\nserver = 127.0.0.1:1 foo\n",
	    ":2: server: unexpected 'foo' after the address" },
	{ "server bare port", "[backend b]\nserver = 9001\n",
	    ":2: server: bad address '9001' (want HOST:PORT)" },
	{ "server star", "[backend b]\nserver = *:9001\n",
	    ":2: server: bad address '*:9001' (want HOST:PORT)" },
	{ "server bad port", "[backend b]\nserver = 127.0.0.1:0\n",
	    ":2: server: bad address '127.0.0.1:0' (want HOST:PORT)" },
	{ "server empty", "[backend b]\nserver =\n",
	    ":2: server: empty value" },
	{ "listen bad port", "[proxy]\nlisten = 1.2.3.4:99999\n",
	    ":2: listen: bad address '1.2.3.4:99999'" },
	{ "listen empty", "[proxy]\nlisten =\n",
	    ":2: listen: bad address ''" },
	{ "trusted bad prefix",
	    "[proxy]\ntrusted = 10.0.0.0/8 10.0.0.0/33\n",
	    ":2: trusted: bad CIDR '10.0.0.0/33'" },
	{ "hide bad name", "[proxy]\nhide_headers = Server X:Y\n",
	    ":2: hide_headers: bad header name 'X:Y'" },
	{ "bad duration", "[proxy]\nidle_timeout = 5m\n",
	    ":2: idle_timeout: bad duration '5m'" },
	{ "zero duration", "[proxy]\nheader_timeout = 0ms\n",
	    ":2: header_timeout: '0ms' is out of range 1ms..2147483s" },
	{ "huge duration", "[proxy]\nbackend_timeout = 3000000s\n",
	    ":2: backend_timeout: '3000000s' is out of range "
	    "1ms..2147483s" },
	{ "bad size", "[proxy]\nmax_body = 1X\n",
	    ":2: max_body: bad size '1X'" },
	{ "size too small", "[proxy]\nbuffer_size = 1K\n",
	    ":2: buffer_size: '1K' is out of range 4K..1M" },
	{ "size too big", "[proxy]\nbuffer_size = 2M\n",
	    ":2: buffer_size: '2M' is out of range 4K..1M" },
	{ "empty user", "[proxy]\nuser =\n", ":2: user: empty value" },
	{ "key outside section", "listen = 8080\n",
	    ":1: key 'listen' outside any section" },
	{ "no equals", "[proxy]\njunk\n",
	    ":2: expected 'key = value' or '[section]'" },
	{ "no bracket", "[proxy\n", ":1: bad section line: no ']'" },
	{ "text after section", "[proxy] x\n",
	    ":1: text after the section name" },
	{ "path without slash",
	    "[backend b]\nserver = 127.0.0.1:1\n[route r]\npath = api\n",
	    ":4: path: 'api' must start with '/'" },
	{ "path with dots", "[route r]\npath = /a/../b/\n",
	    ":2: path: '/a/../b/' has a dot segment" },
	{ "host bad wildcard", "[route r]\nhost = *example.org\n",
	    ":2: host: bad wildcard '*example.org' (want *.suffix)" },
	{ "host inner star", "[route r]\nhost = a.*.org\n",
	    ":2: host: bad host name 'a.*.org'" },
	{ "host with port", "[route r]\nhost = a.org:80\n",
	    ":2: host: bad host name 'a.org:80'" },
	{ "continued scalar", "[proxy]\nuser = a\n   b\n",
	    ":3: user: takes one value (indented line continues it)" },
	{ "first error kept", "[proxy]\nfoo = 1\nbar = 2\n[zzz]\n",
	    ":2: unknown key 'foo' in [proxy]" },
	{ "line count over continuations",
	    "[proxy]\ntrusted = 10.0.0.0/8\n  10.1.0.0/16\n\n  ; note\n"
	    "# note\nfoo = 1\n",
	    ":7: unknown key 'foo' in [proxy]" },
	{ "bad continued CIDR",
	    "[proxy]\ntrusted = 10.0.0.0/8\n  10.1.0.0/99\n",
	    ":3: trusted: bad CIDR '10.1.0.0/99'" },
	{ "CRLF lines", "[proxy]\r\nuser = a\r\nfoo = 1\r\n",
	    ":3: unknown key 'foo' in [proxy]" },
	{ "inline comment stripped", "[proxy]\nbuffers = 1 ; one\n",
	    ":2: buffers: 1 is out of range 2..1000000" },
	{ "control chars sanitized", "[proxy]\nuser = a\nfo\033o = 1\n",
	    ":3: unknown key 'fo?o' in [proxy]" },
	};
	char buf[1024];
	struct config c;
	char err[512], exp[700];
	size_t i;
	int rc;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		err_case(t[i].name, t[i].text, strlen(t[i].text), t[i].want,
		    0);

	/* Longer than inih's line buffer: it would read the rest as a line */
	snprintf(buf, sizeof(buf), "[proxy]\n# c\nuser = %0300d\n", 7);
	err_case("line too long", buf, strlen(buf), ":3: line too long", 1);
	snprintf(buf, sizeof(buf), "[proxy]\nuser = %0190d\nfoo = 1\n", 7);
	err_case("long line fits", buf, strlen(buf),
	    ":3: unknown key 'foo' in [proxy]", 0);
	err_case("NUL byte", "[proxy]\nuser = a\0b\n",
	    sizeof("[proxy]\nuser = a\0b\n") - 1,
	    ":2: NUL byte in line", 0);

	snprintf(file, sizeof(file), "%s/missing.ini", dir);
	rc = conf_load(file, &c, err, sizeof(err));
	snprintf(exp, sizeof(exp), "%s: cannot open: No such file or "
	    "directory", file);
	CHECK(rc == -1 && strcmp(err, exp) == 0, "cannot open");
	conf_free(&c);
	snprintf(file, sizeof(file), "%s/t.ini", dir);

	/* A tiny error buffer is truncated, never overrun. */
	put_file("[foo]\n", 6);
	rc = conf_load(file, &c, err, 8);
	CHECK(rc == -1 && strlen(err) == 7, "short error buffer");
	conf_free(&c);
}

/* [tls], [cert NAME], and tls servers in backends. */
static void
tls_err_table(void)
{
	static const struct {
		const char *name, *text, *want;
	} t[] = {
	{ "tls listen needs cert", "[proxy]\n[tls]\nlisten = 0.0.0.0:8443\n",
	    ":2: [tls]: cert is required" },
	{ "tls listen needs key",
	    "[tls]\nlisten = 127.0.0.1:8443\ncert = /x.pem\n",
	    ":1: [tls]: key is required" },
	{ "tls with a name", "[tls x]\n", ":1: [tls] takes no name" },
	{ "duplicate tls", "[tls]\nsessions = 1\n[tls]\n",
	    ":3: duplicate section [tls]" },
	{ "unknown tls key", "[tls]\nfoo = 1\n",
	    ":2: unknown key 'foo' in [tls]" },
	{ "duplicate tls key", "[tls]\ncert = a\ncert = b\n",
	    ":3: duplicate key 'cert' in [tls]" },
	{ "tls continued scalar", "[tls]\nkey = a\n  b\n",
	    ":3: key: takes one value (indented line continues it)" },
	{ "tls cert empty", "[tls]\ncert =\n", ":2: cert: empty value" },
	{ "sessions too many", "[tls]\nsessions = 100001\n",
	    ":2: sessions: 100001 is out of range 0..100000" },
	{ "sessions negative", "[tls]\nsessions = -1\n",
	    ":2: sessions: bad number '-1'" },
	{ "connections zero", "[tls]\nconnections = 0\n",
	    ":2: connections: 0 is out of range 1..100000" },
	{ "ciphers unknown", "[tls]\nciphers = fast\n",
	    ":2: ciphers: want modern or compat, not 'fast'" },
	{ "redirect_http bad", "[tls]\nredirect_http = maybe\n",
	    ":2: redirect_http: want yes or no, not 'maybe'" },
	{ "hsts with a unit", "[tls]\nhsts = 1y\n",
	    ":2: hsts: bad number '1y'" },
	{ "tls listen second word bad",
	    "[tls]\nlisten = 127.0.0.1:8443 1.2.3.4:99999\n",
	    ":2: listen: bad address '1.2.3.4:99999'" },
	{ "tls listen continued bad",
	    "[tls]\nlisten = 127.0.0.1:8443\n  :1\n",
	    ":3: listen: bad address ':1'" },
	{ "tls listen empty", "[tls]\nlisten =\n",
	    ":2: listen: bad address ''" },
	{ "cert without name", "[tls]\n[cert]\n",
	    ":2: [cert] needs a name: [cert NAME]" },
	{ "bad cert name", "[cert a/b]\n",
	    ":1: bad cert name 'a/b' (letters, digits, '_', '-', '.')" },
	{ "cert named tls", "[cert tls]\n",
	    ":1: cert name 'tls' is taken by [tls]" },
	{ "duplicate cert", "[tls]\n[cert a]\nhosts = a.org\n[cert a]\n",
	    ":4: duplicate cert 'a'" },
	{ "cert needs hosts", "[tls]\n[cert a]\ncert = x\nkey = y\n",
	    ":2: [cert a]: hosts is required" },
	{ "cert needs cert", "[tls]\n[cert a]\nhosts = a.org\nkey = y\n",
	    ":2: [cert a]: cert is required" },
	{ "cert needs key", "[tls]\n[cert a]\nhosts = a.org\ncert = x\n",
	    ":2: [cert a]: key is required" },
	{ "cert needs tls", "[cert a]\nhosts = a.org\ncert = x\nkey = y\n",
	    ":1: [cert a]: needs a [tls] section" },
	{ "cert hosts empty", "[tls]\n[cert a]\nhosts =\ncert = x\nkey = y\n",
	    ":2: [cert a]: hosts is required" },
	{ "cert host with a slash", "[tls]\n[cert a]\nhosts = a.org b/c\n",
	    ":3: hosts: bad host name 'b/c'" },
	{ "cert host bad wildcard", "[tls]\n[cert a]\nhosts = *a.org\n",
	    ":3: hosts: bad wildcard '*a.org' (want *.suffix)" },
	{ "cert host bare wildcard", "[tls]\n[cert a]\nhosts = *\n",
	    ":3: hosts: bad wildcard '*' (want *.suffix)" },
	{ "cert host inner star", "[tls]\n[cert a]\nhosts = a.*.org\n",
	    ":3: hosts: bad host name 'a.*.org'" },
	{ "cert host with port", "[tls]\n[cert a]\nhosts = a.org:443\n",
	    ":3: hosts: bad host name 'a.org:443'" },
	{ "cert host continued bad",
	    "[tls]\n[cert a]\nhosts = a.org\n  [::1]\n",
	    ":4: hosts: bad host name '[::1]'" },
	{ "unknown cert key", "[tls]\n[cert a]\nfoo = 1\n",
	    ":3: unknown key 'foo' in [cert a]" },
	{ "duplicate cert key", "[cert a]\ncert = x\ncert = y\n",
	    ":3: duplicate key 'cert' in [cert a]" },
	{ "server tls needs ca",
	    "[backend b]\nserver = 127.0.0.1:443 tls\n",
	    ":1: backend 'b': server 127.0.0.1:443 tls needs ca" },
	{ "server tls needs ca, second server",
	    "[backend b]\nserver = 127.0.0.1:80\nserver = localhost:443 tls\n",
	    ":1: backend 'b': server localhost:443 tls needs ca" },
	{ "server tls twice",
	    "[backend b]\nserver = 127.0.0.1:443 tls TLS\n",
	    ":2: server: tls given twice" },
	{ "ca empty", "[backend b]\nca =\n", ":2: ca: empty value" },
	{ "ca twice", "[backend b]\nca = /a\nca = /b\n",
	    ":3: duplicate key 'ca' in [backend b]" },
	{ "earliest end error: backend before tls",
	    "[backend x]\n[tls]\nlisten = 127.0.0.1:1\n",
	    ":1: backend 'x': no server" },
	{ "earliest end error: tls before backend",
	    "[tls]\nlisten = 127.0.0.1:1\n[backend x]\n",
	    ":1: [tls]: cert is required" },
	{ "earliest end error: cert before route",
	    "[tls]\n[cert c]\n[route r]\nbackend = zz\n",
	    ":2: [cert c]: hosts is required" },
	};
	size_t i;

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++)
		err_case(t[i].name, t[i].text, strlen(t[i].text), t[i].want,
		    0);
}

static void
tls_config(void)
{
	static const char text[] =
	    "[cert b]\n"
	    "hosts = B.Example.org. *.example.net\n"
	    "  c.example.com\n"
	    "cert = /etc/proxy/b.pem\n"
	    "key = /etc/proxy/b.key\n"
	    "\n"
	    "[tls]\n"
	    "listen = 127.0.0.1:8443 [::1]:8443\n"
	    "listen = 8444\n"
	    "cert = /etc/proxy/site.pem\n"
	    "key = /etc/proxy/site.key\n"
	    "sessions = 0\n"
	    "connections = 16\n"
	    "redirect_http = yes\n"
	    "hsts = 31536000\n"
	    "ciphers = compat\n"
	    "\n"
	    "[cert c]\n"
	    "hosts = x.org\n"
	    "cert = /c.pem\n"
	    "key = /c.key\n"
	    "\n"
	    "[backend app]\n"
	    "server = localhost:9443 tls weight=2\n"
	    "server = [::1]:9444 TLS\n"
	    "server = 127.0.0.1:9001\n"
	    "ca = /etc/ssl/ca.pem\n";
	struct config c;
	struct tls_conf *t = &c.tls;
	struct server *s;
	char err[512];
	int rc;

	rc = load(text, &c, err, sizeof(err));
	CHECK(rc == 0, "tls config loads");
	if (rc != 0) {
		printf("  error: %s\n", err);
		conf_free(&c);
		return;
	}
	CHECK(t->nlisten == 3 && strcmp(t->listen[0], "127.0.0.1:8443") == 0 &&
	    strcmp(t->listen[1], "[::1]:8443") == 0 &&
	    strcmp(t->listen[2], "8444") == 0, "tls listen words and lines");
	CHECK(c.nlisten == 1 && strcmp(c.listen[0], "0.0.0.0:8080") == 0,
	    "tls listen leaves [proxy] listen alone");
	CHECK(t->sessions == 0 && t->connections == 16 &&
	    t->redirect_http == 1 && t->hsts == 31536000 && t->compat == 1,
	    "tls values");
	CHECK(t->ncerts == 3, "certs: [tls] and two [cert]");
	if (t->ncerts == 3) {
		CHECK(strcmp(t->certs[0].name, "tls") == 0 &&
		    strcmp(t->certs[0].cert, "/etc/proxy/site.pem") == 0 &&
		    strcmp(t->certs[0].key, "/etc/proxy/site.key") == 0 &&
		    t->certs[0].nhosts == 0 && t->certs[0].line == 7,
		    "certs[0] is [tls] even when [cert] comes first");
		CHECK(strcmp(t->certs[1].name, "b") == 0 &&
		    t->certs[1].line == 1 &&
		    strcmp(t->certs[1].cert, "/etc/proxy/b.pem") == 0 &&
		    strcmp(t->certs[1].key, "/etc/proxy/b.key") == 0,
		    "[cert b]");
		CHECK(t->certs[1].nhosts == 3 &&
		    strcmp(t->certs[1].hosts[0], "b.example.org") == 0 &&
		    strcmp(t->certs[1].hosts[1], "*.example.net") == 0 &&
		    strcmp(t->certs[1].hosts[2], "c.example.com") == 0,
		    "cert hosts: lower case, no trailing dot, continued");
		CHECK(strcmp(t->certs[2].name, "c") == 0 &&
		    t->certs[2].nhosts == 1, "[cert c]");
	}
	CHECK(c.nbackends == 1 && c.backends[0].nsrv == 3, "tls backend");
	if (c.nbackends == 1 && c.backends[0].nsrv == 3) {
		s = c.backends[0].srv;
		CHECK(strcmp(c.backends[0].ca, "/etc/ssl/ca.pem") == 0, "ca");
		CHECK(s[0].tls == 1 && s[0].weight == 2 &&
		    strcmp(s[0].host, "localhost") == 0 &&
		    strcmp(s[0].name, "localhost:9443") == 0,
		    "server tls weight=2");
		CHECK(s[1].tls == 1 && strcmp(s[1].host, "::1") == 0,
		    "server TLS, v6 host");
		CHECK(s[2].tls == 0 && strcmp(s[2].host, "127.0.0.1") == 0,
		    "plain server has a host too");
	}
	conf_free(&c);
	CHECK(c.tls.ncerts == 0 && c.tls.certs == NULL, "conf_free tls");

	/* [tls] without listen needs no certificate: nothing is served. */
	rc = load("[tls]\nsessions = 5\n", &c, err, sizeof(err));
	CHECK(rc == 0 && c.tls.nlisten == 0 && c.tls.ncerts == 1 &&
	    c.tls.certs[0].cert == NULL && c.tls.sessions == 5,
	    "tls without listen");
	conf_free(&c);
	rc = load("[tls]\nciphers = MODERN\nredirect_http = off\n", &c, err,
	    sizeof(err));
	CHECK(rc == 0 && c.tls.compat == 0 && c.tls.redirect_http == 0,
	    "ciphers modern, case-insensitive");
	conf_free(&c);
}

static int
sa_port(const struct sockaddr_storage *ss)
{
	if (ss->ss_family == AF_INET)
		return ntohs(((const struct sockaddr_in *)(const void *)ss)
		    ->sin_port);
	if (ss->ss_family == AF_INET6)
		return ntohs(((const struct sockaddr_in6 *)(const void *)ss)
		    ->sin6_port);
	return -1;
}

static int
cidr_is(const struct cidr *c, int family, const char *addr, int bits)
{
	uint8_t a[16] = { 0 };

	if (inet_pton(family, addr, a) != 1)
		return 0;
	return c->family == family && c->bits == bits &&
	    memcmp(c->addr, a, 16) == 0;
}

static void
good_config(void)
{
	static const char text[] =
	    "\xef\xbb\xbf# a full config\n"
	    "[proxy]\n"
	    "listen = 127.0.0.1:18080\n"
	    "listen = [::1]:18081      ; inline comment\n"
	    "user = nobody\n"
	    "chroot = off\n"
	    "pidfile = /tmp/proxy-test.pid\n"
	    "log = syslog\n"
	    "max_connections = 500\n"
	    "buffers = 64\n"
	    "buffer_size = 32k\n"
	    "max_body = 0\n"
	    "header_timeout = 1500ms\n"
	    "idle_timeout = 2\n"
	    "backend_timeout = 45s\n"
	    "trusted = 10.1.2.3/8 192.168.1.7\n"
	    "trusted = ::1\n"
	    "    fd00::/8\n"
	    "hide_headers = Server  X-Powered-By\n"
	    "\tX-Debug\n"
	    "\n"
	    "[route api]\n"
	    "host = API.Example.org\n"
	    "path = /api/\n"
	    "backend = app          ; defined below\n"
	    "\n"
	    "[route wild]\n"
	    "host = *.example.org\n"
	    "backend = static\n"
	    "\n"
	    "[ route  default ]\n"
	    "backend = static\n"
	    "\n"
	    "[backend static]\n"
	    "server = 127.0.0.1:9001\n"
	    "\n"
	    "[backend app]\n"
	    "server = 127.0.0.1:9002 weight=3\n"
	    "server = localhost:9003\n"
	    "server = [::1]:9004   weight=100\n";
	struct config c;
	char err[512];
	int rc;

	rc = load(text, &c, err, sizeof(err));
	CHECK(rc == 0, "good config loads");
	if (rc != 0) {
		printf("  error: %s\n", err);
		conf_free(&c);
		return;
	}
	CHECK(strcmp(c.file, file) == 0, "file");
	CHECK(c.nlisten == 2 && strcmp(c.listen[0], "127.0.0.1:18080") == 0 &&
	    strcmp(c.listen[1], "[::1]:18081") == 0, "listen");
	CHECK(c.user != NULL && strcmp(c.user, "nobody") == 0, "user");
	CHECK(c.chroot_dir == NULL, "chroot off");
	CHECK(c.pidfile != NULL &&
	    strcmp(c.pidfile, "/tmp/proxy-test.pid") == 0, "pidfile");
	CHECK(c.log != NULL && strcmp(c.log, "syslog") == 0, "log");
	CHECK(c.max_connections == 500, "max_connections");
	CHECK(c.buffers == 64, "buffers");
	CHECK(c.buffer_size == 32768, "buffer_size");
	CHECK(c.max_body == 0, "max_body 0");
	CHECK(c.header_timeout_ms == 1500, "header_timeout ms");
	CHECK(c.idle_timeout_ms == 2000, "idle_timeout bare");
	CHECK(c.backend_timeout_ms == 45000, "backend_timeout s");
	CHECK(c.ntrusted == 4, "trusted count");
	if (c.ntrusted == 4) {
		CHECK(cidr_is(&c.trusted[0], AF_INET, "10.0.0.0", 8),
		    "trusted masked");
		CHECK(cidr_is(&c.trusted[1], AF_INET, "192.168.1.7", 32),
		    "trusted host");
		CHECK(cidr_is(&c.trusted[2], AF_INET6, "::1", 128),
		    "trusted v6 host");
		CHECK(cidr_is(&c.trusted[3], AF_INET6, "fd00::", 8),
		    "trusted continued");
	}
	CHECK(c.hide_headers != NULL &&
	    strcmp(c.hide_headers, "Server X-Powered-By X-Debug") == 0,
	    "hide_headers joined");

	CHECK(c.nroutes == 3, "routes");
	CHECK(c.nbackends == 2, "backends");
	if (c.nroutes != 3 || c.nbackends != 2) {
		conf_free(&c);
		return;
	}
	CHECK(strcmp(c.routes[0].name, "api") == 0 &&
	    strcmp(c.routes[1].name, "wild") == 0 &&
	    strcmp(c.routes[2].name, "default") == 0, "route order");
	CHECK(strcmp(c.routes[0].host, "api.example.org") == 0,
	    "host lower-cased");
	CHECK(strcmp(c.routes[0].path, "/api/") == 0 &&
	    c.routes[0].pathlen == 5, "path");
	CHECK(c.routes[0].backend == 1, "backend defined later");
	CHECK(strcmp(c.routes[0].backend_name, "app") == 0, "backend_name");
	CHECK(c.routes[0].line == 22, "route line");
	CHECK(strcmp(c.routes[1].host, "*.example.org") == 0 &&
	    c.routes[1].path == NULL && c.routes[1].backend == 0,
	    "wildcard route");
	CHECK(c.routes[2].host == NULL && c.routes[2].path == NULL &&
	    c.routes[2].backend == 0, "catch-all route");
	CHECK(strcmp(c.backends[0].name, "static") == 0 &&
	    c.backends[0].line == 34 && c.backends[0].nsrv == 1,
	    "backend static");
	CHECK(c.backends[0].srv[0].weight == 1 &&
	    strcmp(c.backends[0].srv[0].name, "127.0.0.1:9001") == 0,
	    "default weight");
	CHECK(c.backends[1].nsrv == 3, "servers");
	if (c.backends[1].nsrv == 3) {
		struct server *s = c.backends[1].srv;

		CHECK(s[0].weight == 3 && s[1].weight == 1 &&
		    s[2].weight == 100, "weights");
		CHECK(strcmp(s[0].name, "127.0.0.1:9002") == 0 &&
		    strcmp(s[1].name, "localhost:9003") == 0 &&
		    strcmp(s[2].name, "[::1]:9004") == 0, "server names");
		CHECK(s[0].sa.ss_family == AF_INET && sa_port(&s[0].sa) ==
		    9002 && s[0].salen == sizeof(struct sockaddr_in),
		    "server v4 address");
		CHECK(sa_port(&s[1].sa) == 9003, "server name resolved");
		CHECK(s[2].sa.ss_family == AF_INET6 &&
		    sa_port(&s[2].sa) == 9004, "server v6 address");
		CHECK(s[0].cur == 0 && s[0].idle == 0 &&
		    s[0].requests == 0, "server state zero");
	}
	conf_free(&c);
	CHECK(c.nroutes == 0 && c.routes == NULL && c.file == NULL,
	    "conf_free zeroes");
	conf_free(&c);
}

static void
default_config(void)
{
	struct config c;
	char err[512];
	int rc;

	rc = load("", &c, err, sizeof(err));
	CHECK(rc == 0, "empty file loads");
	CHECK(c.nlisten == 1 && strcmp(c.listen[0], "0.0.0.0:8080") == 0,
	    "default listen");
	CHECK(c.user == NULL && c.chroot_dir == NULL && c.pidfile == NULL,
	    "default user/chroot/pidfile");
	CHECK(c.log != NULL && strcmp(c.log, "stderr") == 0, "default log");
	CHECK(c.max_connections == 1024 && c.buffers == 128 &&
	    c.buffer_size == 16384 && c.max_body == 1048576,
	    "default sizes");
	CHECK(c.header_timeout_ms == 10000 && c.idle_timeout_ms == 60000 &&
	    c.backend_timeout_ms == 30000, "default timeouts");
	CHECK(c.ntrusted == 1 &&
	    cidr_is(&c.trusted[0], AF_INET, "127.0.0.1", 32),
	    "default trusted");
	CHECK(c.hide_headers != NULL &&
	    strcmp(c.hide_headers, "Server X-Powered-By") == 0,
	    "default hide_headers");
	CHECK(c.nroutes == 0 && c.nbackends == 0, "no routes");
	CHECK(c.tls.nlisten == 0 && c.tls.ncerts == 0 &&
	    c.tls.sessions == 128 && c.tls.connections == 64 &&
	    c.tls.redirect_http == 0 && c.tls.hsts == 0 &&
	    c.tls.compat == 0, "default tls");
	conf_free(&c);

	rc = load("[proxy]\ntrusted = off\nhide_headers = off\n"
	    "pidfile = off\nlisten = 8081\nlisten = *:8082\n",
	    &c, err, sizeof(err));
	CHECK(rc == 0, "off values load");
	CHECK(c.ntrusted == 0, "trusted off replaces default");
	CHECK(c.hide_headers == NULL, "hide_headers off");
	CHECK(c.pidfile == NULL, "pidfile off");
	CHECK(c.nlisten == 2 && strcmp(c.listen[0], "8081") == 0 &&
	    strcmp(c.listen[1], "*:8082") == 0, "listen replaces default");
	conf_free(&c);

	rc = load("[proxy]\ntrusted =\nhide_headers =\n", &c, err,
	    sizeof(err));
	CHECK(rc == 0 && c.ntrusted == 0 && c.hide_headers == NULL,
	    "empty lists");
	conf_free(&c);

	rc = load("[proxy]\ntrusted = 10.0.0.0/8\n", &c, err, sizeof(err));
	CHECK(rc == 0 && c.ntrusted == 1 &&
	    cidr_is(&c.trusted[0], AF_INET, "10.0.0.0", 8),
	    "trusted replaces default");
	conf_free(&c);
}

/* [cache] and the routes' cache key. */
static void
cache_config(void)
{
	struct config c;
	char err[512];
	int rc;

	rc = load("[backend b]\nserver = 127.0.0.1:1\n"
	    "[route r1]\nbackend = b\ncache = yes\n"
	    "[route r2]\nbackend = b\ncache = no\n"
	    "[route r3]\nbackend = b\n"
	    "[cache]\nsize = 4M\nmax_object = 256K\n", &c, err, sizeof(err));
	CHECK(rc == 0, "cache config loads");
	if (rc != 0)
		printf("  error: %s\n", err);
	CHECK(rc == 0 && c.cache_size == 4u << 20 &&
	    c.cache_max_object == 256u << 10, "cache size, max_object");
	CHECK(rc == 0 && c.nroutes == 3 && c.routes[0].cache == 1 &&
	    c.routes[1].cache == 0 && c.routes[2].cache == 0,
	    "route cache yes/no/default");
	conf_free(&c);

	rc = load("[cache]\n", &c, err, sizeof(err));
	CHECK(rc == 0 && c.cache_size == 1u << 20 &&
	    c.cache_max_object == 64u << 10, "empty [cache]: 1M, 64K");
	conf_free(&c);

	rc = load("[cache]\nmax_object = 1M\n", &c, err, sizeof(err));
	CHECK(rc == 0 && c.cache_size == 1u << 20 &&
	    c.cache_max_object == 1u << 20, "max_object = default size");
	conf_free(&c);

	rc = load("[cache]\nsize = 0\nmax_object = 8M\n", &c, err,
	    sizeof(err));
	CHECK(rc == 0 && c.cache_size == 0, "size 0: off, any max_object");
	conf_free(&c);

	rc = load("[cache]\nsize = 0\n[backend b]\nserver = 127.0.0.1:1\n"
	    "[route r]\nbackend = b\ncache = on\n", &c, err, sizeof(err));
	CHECK(rc == 0 && c.routes[0].cache == 1,
	    "route cache with [cache] size 0");
	conf_free(&c);

	rc = load("", &c, err, sizeof(err));
	CHECK(rc == 0 && c.cache_size == 0 && c.cache_max_object == 0,
	    "no [cache]: off");
	conf_free(&c);
}

static void
duration_table(void)
{
	static const struct {
		const char *s;
		long ms;
	} t[] = {
		{ "10s", 10000 }, { "250ms", 250 }, { "3", 3000 },
		{ "0", 0 }, { "0ms", 0 }, { "10S", 10000 }, { "7MS", 7 },
		{ "9223372036854775807ms", 9223372036854775807L },
		{ "9223372036854775s", 9223372036854775000L },
		{ "", -1 }, { "s", -1 }, { "ms", -1 }, { "-1", -1 },
		{ "+5", -1 }, { "1.5s", -1 }, { "10 s", -1 }, { " 10", -1 },
		{ "10sx", -1 }, { "10m", -1 }, { "10h", -1 }, { "0x10", -1 },
		{ "9223372036854775807", -1 },
		{ "9223372036854775808ms", -1 },
		{ "99999999999999999999999", -1 },
	};
	size_t i;
	char name[80];

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		snprintf(name, sizeof(name), "duration '%s'", t[i].s);
		CHECK(conf_duration_ms(t[i].s) == t[i].ms, name);
	}
}

static void
size_table(void)
{
	static const struct {
		const char *s;
		int64_t n;
	} t[] = {
		{ "512", 512 }, { "0", 0 }, { "16K", 16384 },
		{ "16k", 16384 }, { "1M", 1048576 }, { "1m", 1048576 },
		{ "2G", 2147483648LL }, { "4g", 4294967296LL },
		{ "9223372036854775807", INT64_MAX },
		{ "8589934591G", 9223372035781033984LL },
		{ "", -1 }, { "K", -1 }, { "1KB", -1 }, { "1KiB", -1 },
		{ "-1", -1 }, { "1.5M", -1 }, { "1 K", -1 }, { " 1", -1 },
		{ "1T", -1 }, { "9223372036854775808", -1 },
		{ "8589934592G", -1 }, { "9007199254740992K", -1 },
	};
	size_t i;
	char name[80];

	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		snprintf(name, sizeof(name), "size '%s'", t[i].s);
		CHECK(conf_size(t[i].s) == t[i].n, name);
	}
}

static void
cidr_table(void)
{
	static const struct {
		const char *s;
		int family;
		const char *addr;
		int bits;
	} good[] = {
		{ "10.1.2.3/8", AF_INET, "10.0.0.0", 8 },
		{ "192.168.1.7", AF_INET, "192.168.1.7", 32 },
		{ "192.168.1.255/25", AF_INET, "192.168.1.128", 25 },
		{ "1.2.3.4/0", AF_INET, "0.0.0.0", 0 },
		{ "1.2.3.4/08", AF_INET, "1.0.0.0", 8 },
		{ "::1", AF_INET6, "::1", 128 },
		{ "::/0", AF_INET6, "::", 0 },
		{ "2001:db8::1/32", AF_INET6, "2001:db8::", 32 },
		{ "fe80::1/10", AF_INET6, "fe80::", 10 },
		{ "fe80::1/9", AF_INET6, "fe80::", 9 },
		{ "::ffff:10.1.2.3/104", AF_INET, "10.0.0.0", 8 },
		{ "::ffff:10.1.2.3", AF_INET, "10.1.2.3", 32 },
		{ "::ffff:0:0/80", AF_INET6, "::", 80 },
	};
	static const char *const bad[] = {
		"10.0.0.0/33", "::/129", "10.0.0/8", "10.0.0.0/", "/8",
		"10.0.0.0/-1", "10.0.0.0/8/8", "x", "", "1.2.3.4 /8",
		"1.2.3.4/ 8", "1.2.3.256", "10.0.0.0/0008", "[::1]",
		"::1/1x", "example.org/8",
	};
	struct cidr c;
	size_t i;
	char name[80];

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(name, sizeof(name), "cidr '%s'", good[i].s);
		CHECK(conf_cidr(good[i].s, &c) == 0 &&
		    cidr_is(&c, good[i].family, good[i].addr, good[i].bits),
		    name);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(name, sizeof(name), "bad cidr '%s'", bad[i]);
		CHECK(conf_cidr(bad[i], &c) == -1, name);
	}
}

static void
addr_table(void)
{
	static const struct {
		const char *s;
		int passive, family, port;
	} good[] = {
		{ "127.0.0.1:80", 0, AF_INET, 80 },
		{ "0.0.0.0:8080", 1, AF_INET, 8080 },
		{ "[::1]:443", 0, AF_INET6, 443 },
		{ "[::]:443", 1, AF_INET6, 443 },
		{ "*:8080", 1, 0, 8080 },
		{ "8080", 1, 0, 8080 },
		{ "65535", 1, 0, 65535 },
		{ "localhost:1", 0, 0, 1 },
	};
	static const char *const bad[] = {
		"127.0.0.1:0", "127.0.0.1:65536", "127.0.0.1:", ":80",
		"::1:80", "[::1]80", "[::1]:x", "127.0.0.1:80x", "", "0",
		"[1.2.3.4]:80", "a b:80", "127.0.0.1:-1", "127.0.0.1:+80",
		"[::1:80", "127.0.0.1:123456",
	};
	struct sockaddr_storage ss;
	socklen_t len;
	size_t i;
	char name[80];

	for (i = 0; i < sizeof(good) / sizeof(good[0]); i++) {
		snprintf(name, sizeof(name), "addr '%s'", good[i].s);
		len = 0;
		CHECK(conf_addr(good[i].s, &ss, &len, good[i].passive) == 0 &&
		    (good[i].family == 0 || ss.ss_family == good[i].family) &&
		    sa_port(&ss) == good[i].port && len > 0, name);
	}
	for (i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		snprintf(name, sizeof(name), "bad addr '%s'", bad[i]);
		CHECK(conf_addr(bad[i], &ss, &len, 1) == -1, name);
	}
}

static struct sockaddr_storage
mk_sa(const char *addr)
{
	struct sockaddr_storage ss;
	struct sockaddr_in *s4 = (struct sockaddr_in *)(void *)&ss;
	struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)(void *)&ss;

	memset(&ss, 0, sizeof(ss));
	if (inet_pton(AF_INET, addr, &s4->sin_addr) == 1)
		s4->sin_family = AF_INET;
	else if (inet_pton(AF_INET6, addr, &s6->sin6_addr) == 1)
		s6->sin6_family = AF_INET6;
	return ss;
}

static void
match_table(void)
{
	static const char *const list[] = {
		"10.0.0.0/8", "192.168.1.7", "2001:db8::/32",
		"::ffff:172.16.0.0/108",
	};
	static const struct {
		const char *addr;
		int want;
	} t[] = {
		{ "10.9.8.7", 1 }, { "11.0.0.1", 0 }, { "9.255.255.255", 0 },
		{ "192.168.1.7", 1 }, { "192.168.1.8", 0 },
		{ "172.20.1.1", 1 }, { "172.32.0.1", 0 },
		{ "2001:db8::5", 1 }, { "2001:db8:ffff::1", 1 },
		{ "2001:db9::", 0 }, { "::1", 0 },
		{ "::ffff:10.1.1.1", 1 }, { "::ffff:11.1.1.1", 0 },
		{ "::ffff:192.168.1.7", 1 }, { "::ffff:172.31.0.1", 1 },
		{ "::10.1.1.1", 0 }, { "64:ff9b::10.1.1.1", 0 },
	};
	struct cidr c[4], v6only;
	struct sockaddr_storage ss;
	struct sockaddr_un un;
	size_t i;
	char name[80];

	for (i = 0; i < 4; i++)
		if (conf_cidr(list[i], &c[i]) < 0)
			CHECK(0, "match list parses");
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		snprintf(name, sizeof(name), "cidr_match %s", t[i].addr);
		ss = mk_sa(t[i].addr);
		CHECK(cidr_match(c, 4, (struct sockaddr *)&ss) == t[i].want,
		    name);
	}
	ss = mk_sa("10.1.1.1");
	CHECK(cidr_match(c, 0, (struct sockaddr *)&ss) == 0, "empty list");
	memset(&un, 0, sizeof(un));
	un.sun_family = AF_UNIX;
	CHECK(cidr_match(c, 4, (struct sockaddr *)&un) == 0, "AF_UNIX");
	/* A v6 rule covering the mapped range also matches mapped peers. */
	conf_cidr("::ffff:0:0/80", &v6only);
	ss = mk_sa("::ffff:1.2.3.4");
	CHECK(cidr_match(&v6only, 1, (struct sockaddr *)&ss) == 1,
	    "v6 rule on mapped address");
	ss = mk_sa("1.2.3.4");
	CHECK(cidr_match(&v6only, 1, (struct sockaddr *)&ss) == 0,
	    "v6 rule on v4 address");
}

static void
route_table(void)
{
	static const char text[] =
	    "[backend b]\nserver = 127.0.0.1:9001\n"
	    "[route api]\nhost = Example.ORG\npath = /api/\nbackend = b\n"
	    "[route wild]\nhost = *.example.org\nbackend = b\n"
	    "[route static]\npath = /static/\nbackend = b\n"
	    "[route exact]\nhost = example.org.\nbackend = b\n"
	    "[route v6]\nhost = [::1]\nbackend = b\n"
	    "[route any]\nbackend = b\n";
	static const struct {
		const char *name, *host, *path;
		int want;
	} t[] = {
		{ "exact host and prefix", "example.org", "/api/x", 0 },
		{ "host case and port", "EXAMPLE.org:8080", "/api/", 0 },
		{ "prefix needs the slash", "example.org", "/api", 3 },
		{ "wildcard one label", "a.example.org", "/api/x", 1 },
		{ "wildcard two labels", "x.y.example.org", "/", 1 },
		{ "wildcard with port", "A.Example.Org:443", "/", 1 },
		{ "wildcard not bare", "example.org", "/", 3 },
		{ "wildcard needs a dot", "badexample.org", "/", 5 },
		{ "trailing dot", "example.org.", "/", 3 },
		{ "trailing dot and port", "example.org.:80", "/", 3 },
		{ "path route any host", "other.org", "/static/a", 2 },
		{ "file order wins", "a.example.org", "/static/a", 1 },
		{ "catch-all", "other.org", "/", 5 },
		{ "no host", "", "/", 5 },
		{ "no host path route", "", "/static/", 2 },
		{ "v6 literal", "[::1]:8080", "/", 4 },
		{ "v6 literal no port", "[::1]", "/", 4 },
		{ "path is case-sensitive", "other.org", "/STATIC/", 5 },
	};
	struct config c;
	struct slice h;
	char err[512];
	size_t i;
	int rc;

	rc = load(text, &c, err, sizeof(err));
	CHECK(rc == 0, "route config loads");
	if (rc != 0) {
		printf("  error: %s\n", err);
		conf_free(&c);
		return;
	}
	for (i = 0; i < sizeof(t) / sizeof(t[0]); i++) {
		h.p = t[i].host;
		h.n = (uint32_t)strlen(t[i].host);
		rc = bal_route(&c, h, t[i].path, strlen(t[i].path));
		CHECK(rc == t[i].want, t[i].name);
		if (rc != t[i].want)
			printf("  got %d want %d\n", rc, t[i].want);
	}
	h.p = NULL;
	h.n = 0;
	CHECK(bal_route(&c, h, "/static/x", 9) == 2, "NULL host");
	conf_free(&c);

	rc = load("[backend b]\nserver = 127.0.0.1:9001\n"
	    "[route api]\npath = /api/\nbackend = b\n", &c, err, sizeof(err));
	h.p = "example.org";
	h.n = 11;
	CHECK(rc == 0 && bal_route(&c, h, "/", 1) == -1, "no route: -1");
	CHECK(bal_route(&c, h, "/api/v1", 7) == 0, "prefix route");
	conf_free(&c);
}

static void
pick_reset(struct backend *b, struct server *s, int n)
{
	int i;

	memset(s, 0, sizeof(*s) * n);
	for (i = 0; i < n; i++)
		s[i].b = b;
	b->srv = s;
	b->nsrv = n;
}

static void
pick_test(void)
{
	struct server s[3];
	struct backend b;
	struct server *p, *last = NULL;
	int count[3] = { 0 }, run = 0, maxrun = 0, i, ok;
	char seq[16];

	memset(&b, 0, sizeof(b));
	b.name = "t";
	b.fail_timeout_ms = 1000;
	pick_reset(&b, s, 0);
	CHECK(bal_pick(&b, 0) == NULL, "pick from no servers");

	pick_reset(&b, s, 3);
	s[0].weight = 1;
	s[1].weight = 2;
	s[2].weight = 3;
	for (i = 0; i < 600; i++) {
		p = bal_pick(&b, 0);
		count[p - s]++;
		run = p == last ? run + 1 : 1;
		if (run > maxrun)
			maxrun = run;
		last = p;
	}
	CHECK(count[0] == 100 && count[1] == 200 && count[2] == 300,
	    "1:2:3 over 600 picks");
	CHECK(maxrun <= 3, "1:2:3 never more than 3 in a row");

	pick_reset(&b, s, 3);
	s[0].weight = 5;
	s[1].weight = 1;
	s[2].weight = 1;
	for (i = 0; i < 14; i++)
		seq[i] = (char)('a' + (bal_pick(&b, 0) - s));
	seq[14] = '\0';
	CHECK(strcmp(seq, "aabacaaaabacaa") == 0, "5:1:1 is smooth");
	if (strcmp(seq, "aabacaaaabacaa") != 0)
		printf("  got %s\n", seq);
	CHECK(strstr(seq, "aaaaa") == NULL, "5:1:1 no run of 5");

	pick_reset(&b, s, 1);
	s[0].weight = 7;
	for (ok = 1, i = 0; i < 10; i++)
		ok &= bal_pick(&b, 0) == &s[0];
	CHECK(ok && s[0].cur == 0, "single server");

	/* A failed server leaves the rotation for fail_timeout. */
	pick_reset(&b, s, 3);
	s[0].weight = s[1].weight = s[2].weight = 1;
	bal_fail(&s[1], 5000);
	CHECK(!bal_available(&s[1], 5000) && bal_available(&s[1], 6000),
	    "down for fail_timeout");
	for (ok = 1, i = 0; i < 30; i++)
		ok &= bal_pick(&b, 5500) != &s[1];
	CHECK(ok, "a down server is never picked");
	for (i = 0; i < 3; i++)
		count[i] = 0;
	for (i = 0; i < 30; i++)
		count[bal_pick(&b, 6000) - s]++;
	CHECK(count[0] == 10 && count[1] == 10 && count[2] == 10,
	    "back in rotation after fail_timeout, evenly");
	CHECK(s[1].failures == 1, "failure counted");
	bal_fail(&s[0], 7000);
	bal_fail(&s[1], 7000);
	bal_fail(&s[2], 7000);
	CHECK(bal_pick(&b, 7500) == NULL, "all down: no server");
	s[2].check_down = 1;
	CHECK(bal_pick(&b, 9000) != &s[2], "failed health check: out");
	s[2].check_down = 0;
	CHECK(bal_available(&s[2], 9000), "health check success: back");
}

void
unit_conf(void)
{
	const char *tmp = getenv("TMPDIR");

	snprintf(dir, sizeof(dir), "%s/unit_conf.XXXXXX",
	    tmp != NULL && *tmp != '\0' ? tmp : "/tmp");
	if (mkdtemp(dir) == NULL) {
		perror("mkdtemp");
		CHECK(0, "mkdtemp");
		return;
	}
	snprintf(file, sizeof(file), "%s/t.ini", dir);

	good_config();
	default_config();
	err_table();
	tls_err_table();
	tls_config();
	duration_table();
	size_table();
	cidr_table();
	addr_table();
	match_table();
	route_table();
	pick_test();
	cache_config();

	unlink(file);
	rmdir(dir);
}
