/*
 * proxy.h - shared types and the few functions each file exports.
 *
 * Memory model (DESIGN.md): every table and buffer is reserved once at
 * startup from the config's sizes; nothing is allocated while serving.
 */
#ifndef PROXY_H
#define PROXY_H

#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>
#include <netinet/in.h>

#define PROXY_VERSION "0.1.0"
#define PROXY_NAME "proxy"

/* ---------------------------------------------------------------- http.c */

/* A slice into a connection's buffer: parsed strings are never copied. */
struct slice {
	const char *p;
	uint32_t n;
};

/* Most headers a message may carry; more is 431 (requests) or 502. */
#define HTTP_MAX_HEADERS 100

struct http_hdr {
	struct slice name, value;
};

/* http_msg.flags: what the parser learnt about framing and connection. */
enum {
	HF_CL = 1 << 0,		/* a valid Content-Length (in clen) */
	HF_CHUNKED = 1 << 1,	/* Transfer-Encoding ends in chunked */
	HF_CLOSE = 1 << 2,	/* Connection: close */
	HF_KEEPALIVE = 1 << 3,	/* Connection: keep-alive */
	HF_UPGRADE = 1 << 4,	/* Connection: upgrade and an Upgrade header */
	HF_EXPECT100 = 1 << 5,	/* Expect: 100-continue */
	HF_TE_OTHER = 1 << 6,	/* response: TE present but not chunked-final */
	HF_ABSOLUTE = 1 << 7,	/* request target was absolute-form */
	HF_NOBODY = 1 << 8,	/* response: no body (HEAD, 1xx, 204, 304) */
};

/*
 * One parsed head. Filled by http_parse_request/response; every slice
 * points into the caller's buffer. Large (the header array), so the loop
 * keeps one for the whole process rather than one per connection.
 */
struct http_msg {
	struct slice method;	/* request */
	struct slice target;	/* request target as sent */
	struct slice path;	/* origin-form path+query (from absolute-form
				   too); what routing and the upstream see */
	struct slice host;	/* Host value, or absolute-form authority */
	int status;		/* response status code */
	struct slice reason;	/* response reason phrase */
	int minor;		/* HTTP/1.<minor>: 0 or 1 */
	unsigned flags;		/* HF_* */
	uint64_t clen;		/* with HF_CL */
	uint32_t head_len;	/* bytes of the head including the blank line */
	int nh;
	struct http_hdr h[HTTP_MAX_HEADERS];
};

/*
 * Parse a request head at buf[0..len). Returns the head length (> 0) when
 * complete, 0 when more bytes are needed, or -code (-400, -431, -501) when
 * the head is malformed or unsupported. Pure: no I/O, no globals.
 */
int http_parse_request(const char *buf, size_t len, struct http_msg *m);

/*
 * Parse a response head; head_req says the request was HEAD (no body).
 * Returns as http_parse_request; every malformed response is -502.
 */
int http_parse_response(const char *buf, size_t len, int head_req,
    struct http_msg *m);

/* Incremental validator of a chunked body passed through verbatim. */
struct http_chunk {
	uint8_t st;		/* scanner state */
	uint8_t ndig;		/* hex digits seen in this size line */
	uint16_t linelen;	/* bytes in the current extension/trailer line */
	uint64_t left;		/* data bytes left in this chunk */
};

void http_chunk_init(struct http_chunk *c);

/*
 * Scan buf[0..len) as the continuation of a chunked body. Returns how many
 * bytes belong to the body (<= len); sets *done when they end with the
 * body's final CRLF. Returns -1 on bad framing (bad size, missing CRLF,
 * size overflow, over-long extension or trailer line).
 */
long http_chunk_scan(struct http_chunk *c, const char *buf, size_t len,
    int *done);

/* What the request rewriter needs to know beyond the parsed head. */
struct http_fwd {
	const char *client_ip;	/* textual address of the client */
	const char *proto;	/* "http" or "https" */
	int trusted;		/* client may set X-Forwarded-* itself */
	int minor;		/* HTTP version to speak upstream */
};

/*
 * Write the head to send upstream into out[0..cap): request line with the
 * origin-form target, headers minus hop-by-hop ones (Connection and what it
 * lists, Keep-Alive, TE, Trailer, Upgrade unless upgrading, Proxy-*,
 * Expect), X-Forwarded-For/Proto/Host and Via added. Returns the length,
 * or -1 when it does not fit.
 */
int http_write_request(char *out, size_t cap, const struct http_msg *m,
    const struct http_fwd *f);

/*
 * Write the response head for the client: status line, headers minus
 * hop-by-hop ones and those named in hide (space-separated, may be NULL),
 * plus Via and "Connection: close" when close is set (or keep-alive for
 * an HTTP/1.0 client that keeps the connection). Returns length or -1.
 */
int http_write_response(char *out, size_t cap, const struct http_msg *m,
    int close, int client_minor, const char *hide);

/*
 * Normalise a request path for routing and access control: percent-
 * decoded unreserved characters, dot segments removed, query dropped.
 * Returns the length written to out, or -400 for a path that cannot be
 * normalised safely (encoded '/', '\\' or NUL, '..' above the root, bad
 * escapes), or -414 when it does not fit.
 */
int http_normalize_path(const char *p, size_t n, char *out, size_t cap);

/* A complete error response for a proxy-produced status; never NULL. */
const char *http_error_page(int code, size_t *len);

/* Case-insensitive equality of a slice and a C string. */
int slice_eq(struct slice s, const char *lit);

/* --------------------------------------------------------------- config */

struct cidr {
	uint8_t family;		/* AF_INET or AF_INET6 */
	uint8_t bits;
	uint8_t addr[16];
};

struct server {
	struct sockaddr_storage sa;
	socklen_t salen;
	char *name;		/* "host:port" as configured */
	int weight;
	int cur;		/* smooth weighted round-robin state */
	int idle;		/* idle upstream connections held */
	uint64_t requests, failures;
};

struct backend {
	char *name;
	int line;		/* where it was defined, for messages */
	struct server *srv;
	int nsrv;
};

struct route {
	char *name;
	char *host;		/* NULL: any; "*.x" suffix; else exact */
	char *path;		/* NULL: any; else prefix */
	size_t pathlen;
	char *backend_name;
	int line;
	int backend;		/* index into config.backends */
};

struct config {
	char *file;
	char **listen;		/* "host:port" strings */
	int nlisten;
	char *user, *chroot_dir, *pidfile, *log;
	long max_connections, buffers, buffer_size;
	uint64_t max_body;
	long header_timeout_ms, idle_timeout_ms, backend_timeout_ms;
	struct cidr *trusted;
	int ntrusted;
	char *hide_headers;	/* space-separated header names */
	struct backend *backends;
	int nbackends;
	struct route *routes;
	int nroutes;
};

/*
 * Load and check a config file. On error writes "FILE:LINE: message" (or
 * "FILE: message") to err and returns -1; the partly filled config must
 * still be released with conf_free. Resolves backend hostnames (startup
 * only: it blocks).
 */
int conf_load(const char *path, struct config *c, char *err, size_t errlen);
void conf_free(struct config *c);

/* Parse "10s", "250ms", "3" (seconds) into ms; -1 on error. */
long conf_duration_ms(const char *s);
/* Parse "16K", "1M", "512" into bytes; -1 on error. */
int64_t conf_size(const char *s);
/* Parse "HOST:PORT", "[v6]:PORT" or "PORT" into sa (resolving names). */
int conf_addr(const char *s, struct sockaddr_storage *sa, socklen_t *len,
    int passive);
/* Parse "a.b.c.d/n" or "v6/n" (bare address = host route). */
int conf_cidr(const char *s, struct cidr *out);
int cidr_match(const struct cidr *list, int n, const struct sockaddr *sa);

/* ------------------------------------------------------------ balance.c */

/* Route a request by host (without port) and normalised path; -1: none. */
int bal_route(const struct config *c, struct slice host, const char *path,
    size_t pathlen);
/* Pick the next server of a backend (smooth weighted round-robin). */
struct server *bal_pick(struct backend *b);

#endif
