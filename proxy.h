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

/*
 * Field names the proxy acts on, recognised once by the parser so that
 * the rules that follow compare a number, not a string, per field.
 */
enum {
	HN_OTHER,
	HN_ACCEPT, HN_AGE, HN_AUTHORIZATION, HN_CACHE_CONTROL, HN_CONNECTION,
	HN_CONTENT_LENGTH, HN_CONTENT_LOCATION, HN_DATE, HN_ETAG, HN_EXPECT,
	HN_EXPIRES, HN_FORWARDED, HN_HOST, HN_IF_MODIFIED_SINCE,
	HN_IF_NONE_MATCH, HN_KEEP_ALIVE, HN_LAST_MODIFIED, HN_LOCATION,
	HN_PRAGMA, HN_PROXY_CONNECTION, HN_REFERER, HN_SET_COOKIE, HN_TE,
	HN_TRAILER,
	HN_TRANSFER_ENCODING, HN_UPGRADE, HN_USER_AGENT, HN_VARY, HN_X_CACHE,
	HN_X_FORWARDED_FOR, HN_X_FORWARDED_HOST, HN_X_FORWARDED_PROTO,
};

struct http_hdr {
	struct slice name, value;
	int id;			/* HN_*: which known name, if any */
};

/* The HN_* of the field name p[0..n), matched without regard to case. */
int http_field_id(const char *p, size_t n);

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
	HF_CONNOPT = 1 << 9,	/* Connection lists an option other than
				   close, keep-alive, upgrade */
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
	uint64_t data;		/* data bytes seen in all (for max_body) */
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
	int drop_auth;		/* leave out Authorization (route auth) */
	const char *extra;	/* header lines to add ("Name: v\r\n"), NULL */
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

/* How to write a response head for the client. */
struct http_rsp {
	int close;		/* add "Connection: close" */
	int client_minor;	/* 0: an HTTP/1.0 client (keep-alive said) */
	const char *hide;	/* space-separated names to drop, or NULL */
	const char *prefix;	/* strip_prefix route path to put back in
				   front of Location/Content-Location paths
				   that point at the backend's root; NULL */
	uint32_t host_hash;	/* http_host_hash of the request's Host:
				   absolute URLs to it (or to server) get
				   the prefix too */
	const char *server;	/* the backend server's "host:port" */
	const char *extra;	/* header lines to add ("Name: v\r\n"), NULL */
};

/*
 * Write the response head for the client: status line, headers minus
 * hop-by-hop ones and those in o->hide, Location/Content-Location moved
 * under o->prefix, plus Via, o->extra and "Connection: close" when
 * o->close (or keep-alive for an HTTP/1.0 client that keeps the
 * connection). Returns the length or -1 when it does not fit.
 */
int http_write_response(char *out, size_t cap, const struct http_msg *m,
    const struct http_rsp *o);

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

/* A hash of a host name, case-insensitive (FNV-1a), never 0. */
uint32_t http_host_hash(const char *p, size_t n);

/* Case-insensitive equality of a slice and a C string. */
int slice_eq(struct slice s, const char *lit);

/* --------------------------------------------------------------- config */

struct cidr {
	uint8_t family;		/* AF_INET or AF_INET6 */
	uint8_t bits;
	uint8_t addr[16];
};

/* Active health check of one server (balance.c), driven by the loop. */
struct check {
	int fd;			/* -1: none in flight */
	int slot;		/* pollfd slot while in flight */
	uint8_t st;		/* HC_* in balance.c */
	uint16_t len;		/* bytes of the answer read into buf */
	int64_t due;		/* next check starts (ms, monotonic) */
	int64_t deadline;	/* the one in flight gives up */
	char buf[32];		/* the status line is all we read */
};

struct server {
	struct sockaddr_storage sa;
	socklen_t salen;
	char *name;		/* "host:port" as configured */
	char *host;		/* host part: SNI and name checked in its cert */
	int tls;		/* "tls" flag: HTTPS to this server */
	struct backend *b;	/* the backend it belongs to */
	int weight;
	int cur;		/* smooth weighted round-robin state */
	int idle;		/* idle upstream connections held */
	int idle_top;		/* 1 + newest idle entry (proxy.c), 0: none */
	int active;		/* sessions using it now */
	int64_t down_until;	/* passive failure: out until then (ms) */
	uint8_t check_down;	/* the last active check failed */
	uint8_t logged_down;	/* last state logged, to log changes once */
	int last_check;		/* status of the last check; 0 timeout,
				   -1 no connection, -2 none yet */
	struct check hc;
	uint64_t requests, failures;
};

struct backend {
	char *name;
	int line;		/* where it was defined, for messages */
	struct server *srv;
	int nsrv;
	char *health_check;	/* path to GET, NULL: no active checks */
	char *ca;		/* PEM trust anchors for its tls servers */
	long health_interval_ms;
	long fail_timeout_ms;
};

struct route {
	char *name;
	char *host;		/* NULL: any; "*.x" suffix; else exact */
	char *path;		/* NULL: any; else prefix */
	size_t pathlen;
	char *backend_name;
	int line;
	int backend;		/* index into config.backends */
	int strip_prefix;	/* forward /app/x as /x; rewrite Location */
	struct cidr *allow, *deny;	/* route ACL (deny wins) */
	int nallow, ndeny;
	int cache;		/* cache = yes: use the [cache] */
	struct authdb *auth;	/* Basic auth users (acl.c), NULL: none */
	int auth_forward;	/* pass Authorization on to the backend */
};

/* A certificate with its key, chosen by SNI ([cert NAME]) or the default. */
struct tls_cert {
	char *name;		/* section name; "tls" for the default */
	char *cert, *key;	/* PEM file paths */
	char **hosts;		/* exact names or "*.suffix"; none: default */
	int nhosts;
	int line;
};

struct tls_conf {
	char **listen;		/* [tls] listen (+); none: no TLS */
	int nlisten;
	struct tls_cert *certs;	/* certs[0] is [tls]'s own cert/key */
	int ncerts;
	long sessions;		/* resumption cache entries (128) */
	long connections;	/* TLS engines reserved (64) */
	int redirect_http;	/* 301 plain requests to https */
	long hsts;		/* Strict-Transport-Security max-age, 0: off */
	int compat;		/* ciphers = compat: add CBC suites */
};

struct config {
	char *file;
	char **listen;		/* "host:port" strings */
	int nlisten;
	char *user, *chroot_dir, *pidfile, *log;
	char *access_log;	/* NULL: off */
	long max_connections, buffers, buffer_size;
	uint64_t max_body;
	long header_timeout_ms, idle_timeout_ms, backend_timeout_ms;
	struct cidr *trusted;
	int ntrusted;
	char *hide_headers;	/* space-separated header names */
	struct cidr *allow, *deny;	/* [proxy] ACL for every request */
	int nallow, ndeny;
	long max_conns_per_ip;	/* 0: no cap */
	long rate, rate_burst;	/* requests/s per address, 0: off */
	int proxy_protocol;	/* PROXY v1/v2 header from trusted peers */
	int reuseport;		/* SO_REUSEPORT: instances share listeners */
	char *status;		/* status page path, NULL: off */
	struct cidr *status_allow;
	int nstatus_allow;
	struct backend *backends;
	int nbackends;
	struct route *routes;
	int nroutes;
	struct tls_conf tls;	/* [tls] and [cert NAME] sections */
	uint64_t cache_size;	/* [cache] size, 0: off */
	uint64_t cache_max_object;	/* [cache] max_object */
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
/* Pick the next available server of a backend (smooth weighted
 * round-robin over those not marked down); NULL when all are down. */
struct server *bal_pick(struct backend *b, int64_t now);
/* Is the server in rotation at time now? */
int bal_available(struct server *s, int64_t now);
/* A connect failed or the server reset before answering: out of rotation
 * for fail_timeout. */
void bal_fail(struct server *s, int64_t now);
/* Start due health checks and time out late ones; returns the time of the
 * next due event. Sockets are registered with loop_watch. */
int64_t bal_checks_run(struct config *c, int64_t now);
/* A poll event on a health-check socket. */
void bal_check_event(struct server *s, short revents, int64_t now);
/* Close health checks in flight (stop, reload). */
void bal_checks_stop(struct config *c);

/* -------------------------------------------------------------- cache.c */

/*
 * The shared response cache (RFC 9111): one arena of [cache] size bytes
 * reserved by cache_init, holding fixed-size blocks chained per object, a
 * hash index and an LRU list; no allocation afterwards. Pure: no I/O.
 * Times are wall-clock seconds (Date, Expires, Age are wall-clock).
 */
struct cache_ref {		/* a reader's position in a stored response */
	uint32_t obj;		/* object index */
	uint32_t gen;		/* the object's generation when looked up */
	uint32_t off;		/* bytes of the stored response already read */
	uint32_t age;		/* Age to send, seconds */
	uint8_t what;		/* CACHE_* of the lookup */
};

enum {
	CACHE_MISS,		/* nothing usable: go to the backend */
	CACHE_HIT,		/* fresh: serve it */
	CACHE_STALE,		/* stored but must be revalidated first */
	CACHE_NOTMOD,		/* fresh, and the client's own If-None-Match /
				   If-Modified-Since match: answer 304 */
	CACHE_GATEWAY_TIMEOUT,	/* only-if-cached and nothing fresh: 504 */
};

struct cache_stats {
	uint64_t hits, misses, revalidated, evictions, stores;
	uint64_t bytes_used;	/* in blocks holding object bytes */
	uint64_t bytes_total;	/* the arena */
	uint32_t objects;
};

/* Reserve the arena: size bytes in all, objects up to max_object bytes
 * (head and body). 0 when size is 0 (cache off); -1 on failure. */
int cache_init(size_t size, size_t max_object);
void cache_free(void);

/*
 * Look up a client's GET or HEAD request (m: its parsed head; scheme
 * "http" or "https"). The key is scheme, host and target. Honours the
 * request's Cache-Control (no-cache, no-store, max-age, max-stale,
 * min-fresh, only-if-cached) and Pragma: no-cache, and Vary against the
 * stored request header values. For CACHE_STALE, cond receives the
 * conditional header lines to add to the request sent upstream
 * ("If-None-Match: ...
" and/or "If-Modified-Since: ...
"),
 * NUL-terminated, at most condcap bytes.
 */
int cache_lookup(const struct http_msg *m, const char *scheme, int64_t now,
    struct cache_ref *ref, char *cond, size_t condcap);

/*
 * Copy the next bytes of a stored response into dst: first its head,
 * written as http_write_response would with o (hop-by-hop headers out,
 * Connection as o says) plus "Age: N" and "X-Cache: HIT" (or REVALIDATED
 * when ref->what says CACHE_STALE was refreshed), then the body unless
 * head_only (HEAD requests). Returns bytes copied, 0 at the end, -1 when
 * the object was evicted meanwhile (the caller closes the connection).
 */
long cache_read(struct cache_ref *ref, char *dst, size_t cap,
    const struct http_rsp *o, int head_only, int64_t now);

/* The stored response's framing: 1 when its body is chunked (it is then
 * not served to HTTP/1.0 clients), 0 when not, -1 when it is gone. */
int cache_chunked(const struct cache_ref *ref);
/* The status code cache_read will send (304 for CACHE_NOTMOD), -1 when
 * the object is gone. */
int cache_status(const struct cache_ref *ref);

/*
 * Begin storing a response. req/reqlen: the request head as forwarded
 * upstream (for the key and the Vary values); resp: the backend's parsed
 * response head, whose bytes are resp_raw[0..resp->head_len). Decides
 * whether it may be stored (method, status, Cache-Control no-store /
 * private / public / max-age / s-maxage / must-revalidate /
 * proxy-revalidate / no-cache, Expires, Authorization and Set-Cookie
 * rules, Vary: * never) and returns a writer id >= 0, or -1 (not stored;
 * also when the same key is being written already). req_time/resp_time
 * are when the request was sent and the response head arrived (Age).
 */
int cache_store_begin(const char *req, size_t reqlen, const char *scheme,
    const struct http_msg *resp, const char *resp_raw, int64_t req_time,
    int64_t resp_time);
/* Append body bytes as they go to the client (on the wire: chunked as
 * chunked). -1 when the object outgrew max_object or the arena: it is
 * dropped and the writer ended. */
int cache_store_append(int w, const char *p, size_t n);
/* The body ended complete (kept and indexed) or not (dropped). */
void cache_store_end(int w, int complete);

/* A 304 answered our revalidation of ref: refresh the stored entry's
 * freshness and validators from resp (RFC 9111 4.3.4); ref then serves
 * it with X-Cache: REVALIDATED. -1 when the entry is gone. */
int cache_refresh(struct cache_ref *ref, const struct http_msg *resp,
    int64_t req_time, int64_t resp_time);

/* An unsafe method succeeded: drop the entries for the target and for
 * the Location / Content-Location of the response on the same host. */
void cache_invalidate(const char *scheme, struct slice host,
    struct slice target);

void cache_get_stats(struct cache_stats *s);

/* ---------------------------------------------------------------- acl.c */

/* Reserve the per-address table (entries rounded up to a power of two). */
int acl_init(long entries);
size_t acl_table_size(void);
/* A client connects: 0 when it already has max connections open, 1
 * when counted (pair it with acl_conn_close), 2 when let in uncounted
 * (max <= 0, or no slot for the address). */
int acl_conn_open(const struct sockaddr *sa, long max, int64_t now);
void acl_conn_close(const struct sockaddr *sa);
/* A request: 0 when the address's token bucket (rate per second, burst)
 * is empty, with the seconds until one token is back in retry_after. */
int acl_rate(const struct sockaddr *sa, long rate, long burst, int64_t now,
    int *retry_after);
/* Deny wins; a non-empty allow list admits only its own. */
int acl_allowed(const struct cidr *allow, int nallow,
    const struct cidr *deny, int ndeny, const struct sockaddr *sa);

/*
 * crypt(3) of pw for the schemes Basic auth accepts: bcrypt ($2a$ $2b$
 * $2y$) and SHA-512 crypt ($6$); set is a stored hash or its prefix. The
 * result (in out) or NULL for any other or malformed setting.
 */
#define PW_MAX	128
const char *acl_pw_hash(const char *pw, const char *set, char out[PW_MAX]);

/* HTTP Basic users from an htpasswd-style file ("user:crypt-hash" lines,
 * bcrypt or SHA-512 crypt); NULL with err "FILE:LINE: message". */
struct authdb *acl_auth_load(const char *file, char *err, size_t errlen);
void acl_auth_free(struct authdb *db);
/* Forget remembered credentials (reload: the files may have changed). */
void acl_auth_forget(void);
/* Does an Authorization value ("Basic base64(user:pass)") name a user of
 * db with that password? 1 yes, 0 no, -1 busy: the hashing budget of
 * this second is spent (wrong passwords could otherwise stall the loop).
 * Hashes compared in constant time; verified credentials are remembered
 * for a minute, so a slow hash (bcrypt) is not paid on every request. */
int acl_auth_check(struct authdb *db, struct slice value, int64_t now);

/*
 * PROXY protocol v1 or v2 header at buf[0..len): the client address it
 * carries goes to *sa (unchanged for LOCAL/UNKNOWN). Returns the header
 * length, 0 when more bytes are needed, -1 when malformed or absent.
 */
int acl_proxy_header(const char *buf, size_t len, struct sockaddr_storage *sa);

/* ---------------------------------------------------------------- tls.c */

/*
 * BearSSL behind an interface the loop uses as it uses a socket. An
 * engine (context + record buffers) comes from a pool reserved by
 * tls_init; nothing is allocated after it. All I/O is non-blocking.
 */
struct tls;

/* Load certificates and keys (checking that each key matches its
 * certificate), the SNI table, the session cache, the trust anchors of
 * backends with tls servers, and reserve nserver + nclient engines.
 * -1 with err set to "FILE: message" naming the offending file. */
int tls_init(const struct config *c, int nserver, int nclient, char *err,
    size_t errlen);
void tls_free(void);
/*
 * SIGHUP: load c's certificates, keys, SNI table and trust anchors as
 * tls_init does and use them for handshakes from now on; engines in use
 * finish with the set they started with, which is freed after them. The
 * engine pools and the session cache stay. -1 with err (naming the file)
 * leaves everything as it was.
 */
int tls_reload(const struct config *c, char *err, size_t errlen);
/* An engine for an accepted client (server side); NULL: pool empty. */
struct tls *tls_server(void);
/* An engine for an upstream connection to s (verified against its
 * backend's ca, server name s->host); NULL: pool empty. */
struct tls *tls_client(const struct server *s);
/* Return an engine to its pool. */
void tls_release(struct tls *t);
/* Free engines left for tls_server(). */
int tls_server_free(void);
/*
 * Like recv(2)/send(2) on fd, with TLS in between: they move records
 * between the socket and the engine as far as it goes without blocking.
 * tls_recv returns plaintext bytes (> 0), 0 at the peer's close (with or
 * without close_notify), or -1 with errno EAGAIN (nothing yet) or another
 * errno (a TLS failure: EPROTO; the connection is dead). tls_send returns
 * bytes of src taken (> 0), or -1 with errno EAGAIN or an error.
 */
ssize_t tls_recv(struct tls *t, int fd, void *dst, size_t cap);
ssize_t tls_send(struct tls *t, int fd, const void *src, size_t n);
/* Push buffered records out (after tls_send, before close); -1 EAGAIN. */
int tls_flush(struct tls *t, int fd);
/* Send close_notify (best effort, non-blocking). */
void tls_close(struct tls *t, int fd);
/* Poll events the engine itself needs on fd now, whatever the caller
 * wants: POLLOUT while records wait to be sent, POLLIN while a handshake
 * waits for the peer. */
short tls_events(const struct tls *t);
/* The handshake finished. */
int tls_ready(const struct tls *t);
/* Decrypted bytes wait in the engine: poll() will not say so. */
int tls_pending(const struct tls *t);
/* Why the engine failed, for the log ("certificate not trusted by ca"). */
const char *tls_error(const struct tls *t);
/* Server name the client asked for (SNI), "" when none. */
const char *tls_sni(const struct tls *t);
/* Bytes of memory one engine reserves (for logs and the README). */
size_t tls_engine_size(void);

/* -------------------------------------------------------------- proxy.c */

/* Owner kinds of pollfd slots. */
enum { O_LISTEN, O_CLIENT, O_UP, O_IDLE, O_CHECK, O_PARK };
/* Register fd with the loop; returns its slot. idx identifies the owner
 * (for O_CHECK: the server's index in loop_servers). */
int loop_watch(int fd, int kind, int idx);
void loop_unwatch(int slot);
void loop_events(int slot, short events);
/* The server's index for loop_watch(O_CHECK). */
int loop_server_index(const struct server *s);
void logmsg(int prio, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

#endif
