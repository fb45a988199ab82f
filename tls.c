/*
 * tls.c - BearSSL termination and upstream TLS behind a socket-like API.
 *
 * BearSSL does no I/O and owns no memory: an engine is a context plus
 * record buffers that the caller lends it, and the caller moves bytes
 * between the engine and the socket. Here that caller is pump(), which
 * moves records with non-blocking send/recv until the plaintext side can
 * make progress, and tells the poll loop (tls_events) what it waits for.
 *
 * Everything is reserved by tls_init from the config: the certificate
 * chains and keys, the trust anchors of the backends, the session cache
 * and two pools of engines (server side for accepted clients, client
 * side for upstream connections). Serving allocates nothing.
 *
 * Memory per engine, on amd64 with BearSSL 0.6:
 *   server (tls_engine_size): br_ssl_server_context 4,128 + input
 *           buffer 16,709 + output buffer 4,181 + 32 = 25,056 bytes
 *   client: br_ssl_client_context 3,720 + br_x509_minimal_context
 *           3,168 + the same buffers + 32 = 27,816 bytes
 * plus 100 bytes per cached session, shared by the server engines.
 * The input buffer must hold a full 16 KB record: clients such as curl
 * do not negotiate max_fragment_length. The output buffer only bounds
 * the records we send, so 4 KB of plaintext per record saves 12 KB per
 * engine for a few more record headers.
 *
 * How the loop drives an engine (all calls return at once):
 *   - poll for tls_events(t) | what the connection itself wants; on any
 *     event retry the call it waits on (tls_recv to read, tls_send to
 *     write): during the handshake both read and write the socket;
 *   - on POLLOUT with nothing of its own to send, call tls_flush: a
 *     tls_send can leave records queued when the socket is full;
 *   - tls_pending(t) means plaintext is already decrypted: read it
 *     with tls_recv when there is room, poll() will not report it.
 */
#include <errno.h>
#include <limits.h>
#include <poll.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <syslog.h>
#include <time.h>
#include <sys/socket.h>
#include <sys/stat.h>

#include <bearssl.h>

#include "proxy.h"

/* Plaintext per outgoing record; the overhead covers CBC IV, MAC and
 * padding (BR_SSL_BUFSIZE_OUTPUT is 16 KB plus the same overhead). */
#define OUT_PLAIN	4096
#define OBUF_LEN	(OUT_PLAIN + BR_SSL_BUFSIZE_OUTPUT - 16384)
#define IBUF_LEN	BR_SSL_BUFSIZE_INPUT

/* PEM files larger than this are not certificates or keys. */
#define MAX_PEM_FILE	(4 * 1024 * 1024)

enum { K_SERVER, K_CLIENT };

struct tls {
	br_ssl_engine_context *eng;
	struct tls *next;	/* free list */
	/* server: our policy; BearSSL hands its address back to us */
	const br_ssl_server_policy_class *policy;
	struct certset *set;	/* certificates and anchors it was lent with */
	int cert;		/* server: set->certs[] chosen for this client */
	uint8_t kind;		/* K_SERVER or K_CLIENT */
	uint8_t used;		/* lent out (tls_release twice is a no-op) */
	uint8_t ready;		/* the handshake finished */
	uint8_t eof;		/* the peer closed its side of the socket */
};

struct tls_srv {
	struct tls t;
	br_ssl_server_context sc;
	unsigned char ibuf[IBUF_LEN];
	unsigned char obuf[OBUF_LEN];
};

struct tls_cli {
	struct tls t;
	br_ssl_client_context cc;
	br_x509_minimal_context xc;
	unsigned char ibuf[IBUF_LEN];
	unsigned char obuf[OBUF_LEN];
};

/* A certificate chain with its private key, chosen by SNI. */
struct certkey {
	char *name;		/* "tls" or the [cert NAME] */
	char **hosts;		/* lower case; "*.suffix" for wildcards */
	int nhosts;
	br_x509_certificate *chain;
	size_t chain_len;
	int type;		/* BR_KEYTYPE_RSA or BR_KEYTYPE_EC */
	br_rsa_private_key rsa;
	br_ec_private_key ec;
	unsigned char *keydata;	/* the key's numbers, both types */
	size_t keylen;
};

/* The trust anchors of one ca file. */
struct anchors {
	char *file;
	br_x509_trust_anchor *ta;
	size_t n;
};

/*
 * What the config gives TLS: certificates, trust anchors and suites.
 * tls_reload replaces the set as a whole; an engine keeps the set it was
 * lent with (its handshake may still be sending that chain), and a
 * replaced set is freed when its last engine comes back.
 */
struct certset {
	struct certkey *certs;
	int ncerts;
	struct anchors *cas;
	int ncas;
	uint16_t suites[16];	/* server side, preference order */
	size_t nsuites;
	uint16_t cli_suites[16];
	size_t ncli_suites;
	int refs;		/* engines lent out with this set */
	struct certset *next;	/* replaced sets still in use */
};

/* The fastest implementations this CPU has, found once. */
struct impls {
	const br_block_ctr_class *aes_ctr;
	const br_block_cbcenc_class *aes_cbcenc;
	const br_block_cbcdec_class *aes_cbcdec;
	br_ghash ghash;
	br_chacha20_run chacha;
	br_poly1305_run poly;
	int aes_hw;		/* AES in hardware: prefer AES-GCM */
};

static struct {
	struct certset *set;	/* the current one */
	struct certset *retired;	/* replaced, still lent out */
	struct tls_srv *srv;
	int nsrv, nfree_srv;
	struct tls_cli *cli;
	int ncli;
	struct tls *free_srv, *free_cli;
	br_ssl_session_cache_lru lru;
	unsigned char *lru_store;
	size_t lru_len;
	struct impls im;
	br_rsa_pkcs1_sign rsa_sign;
	br_ecdsa_sign ecdsa_sign;
	const br_ec_impl *ec;
} g;

/* BearSSL keeps the pointer (its parameter is not const-qualified). */
static const char *alpn[] = { "http/1.1" };

/* ------------------------------------------------------------ helpers */

static int
errf(char *err, size_t len, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static int
errf(char *err, size_t len, const char *fmt, ...)
{
	va_list ap;

	if (len > 0) {
		va_start(ap, fmt);
		vsnprintf(err, len, fmt, ap);
		va_end(ap);
	}
	return -1;
}

/* Key material must not outlive its use in freed memory. */
static void
wipe(void *p, size_t n)
{
	volatile unsigned char *v = p;

	while (n-- > 0)
		*v++ = 0;
}

/* A growable buffer for parsing at startup (malloc is fine there). */
struct bytes {
	unsigned char *p;
	size_t len, cap;
	int oom;
};

static void
bytes_add(void *ctx, const void *src, size_t n)
{
	struct bytes *b = ctx;
	unsigned char *p;
	size_t cap;

	if (b->oom)
		return;
	if (b->len + n > b->cap) {
		cap = b->cap != 0 ? b->cap : 1024;
		while (cap < b->len + n)
			cap *= 2;
		if ((p = realloc(b->p, cap)) == NULL) {
			b->oom = 1;
			return;
		}
		b->p = p;
		b->cap = cap;
	}
	memcpy(b->p + b->len, src, n);
	b->len += n;
}

static void *
memdup(const void *p, size_t n)
{
	void *q;

	if ((q = malloc(n != 0 ? n : 1)) != NULL && n != 0)
		memcpy(q, p, n);
	return q;
}

/* ------------------------------------------------------------- PEM */

/*
 * Read a whole PEM file with '\r' dropped and a final '\n' added: CRLF
 * files break BearSSL's object names, and without a newline after the
 * END line the last object never closes.
 */
static char *
read_pem(const char *file, size_t *lenp, char *err, size_t errlen)
{
	struct stat st;
	FILE *f;
	char *buf;
	size_t n = 0, i, j, sz;

	if ((f = fopen(file, "rb")) == NULL) {
		errf(err, errlen, "%s: cannot open: %s", file,
		    strerror(errno));
		return NULL;
	}
	if (fstat(fileno(f), &st) < 0) {
		errf(err, errlen, "%s: cannot read: %s", file,
		    strerror(errno));
		fclose(f);
		return NULL;
	}
	if (!S_ISREG(st.st_mode)) {
		errf(err, errlen, "%s: not a regular file", file);
		fclose(f);
		return NULL;
	}
	if (st.st_size > MAX_PEM_FILE) {
		errf(err, errlen, "%s: too large for a PEM file (%lld bytes)",
		    file, (long long)st.st_size);
		fclose(f);
		return NULL;
	}
	sz = (size_t)st.st_size;
	if ((buf = malloc(sz + 2)) == NULL) {
		errf(err, errlen, "%s: out of memory", file);
		fclose(f);
		return NULL;
	}
	n = fread(buf, 1, sz, f);
	if (ferror(f)) {
		errf(err, errlen, "%s: cannot read: %s", file,
		    strerror(errno));
		fclose(f);
		free(buf);
		return NULL;
	}
	fclose(f);
	for (i = j = 0; i < n; i++)
		if (buf[i] != '\r')
			buf[j++] = buf[i];
	buf[j++] = '\n';
	buf[j] = '\0';
	*lenp = j;
	return buf;
}

typedef int (*pem_fn)(void *arg, const char *name, const unsigned char *der,
    size_t len);

/* Call fn for each PEM object of text; -1 with err set on bad PEM. */
static int
pem_each(const char *file, const char *text, size_t len, pem_fn fn,
    void *arg, char *err, size_t errlen)
{
	br_pem_decoder_context pc;
	struct bytes obj;
	char name[128];
	size_t n;
	int ev, inobj = 0, rc = -1;

	memset(&obj, 0, sizeof(obj));
	br_pem_decoder_init(&pc);
	while (len > 0) {
		n = br_pem_decoder_push(&pc, text, len);
		text += n;
		len -= n;
		ev = br_pem_decoder_event(&pc);
		if (ev == BR_PEM_BEGIN_OBJ) {
			snprintf(name, sizeof(name), "%s",
			    br_pem_decoder_name(&pc));
			obj.len = 0;
			br_pem_decoder_setdest(&pc, bytes_add, &obj);
			inobj = 1;
		} else if (ev == BR_PEM_END_OBJ) {
			inobj = 0;
			if (obj.oom) {
				errf(err, errlen, "%s: out of memory", file);
				goto out;
			}
			if (fn(arg, name, obj.p, obj.len) < 0)
				goto out;
		} else if (ev == BR_PEM_ERROR) {
			errf(err, errlen, "%s: bad PEM data%s%s", file,
			    inobj ? " in " : "", inobj ? name : "");
			goto out;
		} else if (n == 0)
			break;
	}
	if (inobj) {
		errf(err, errlen, "%s: PEM object %s has no END line", file,
		    name);
		goto out;
	}
	rc = 0;
out:
	if (obj.p != NULL)
		wipe(obj.p, obj.cap);
	free(obj.p);
	wipe(&pc, sizeof(pc));
	return rc;
}

static int
is_cert_name(const char *name)
{
	return strcmp(name, "CERTIFICATE") == 0 ||
	    strcmp(name, "X509 CERTIFICATE") == 0;
}

/* ------------------------------------------------------------- dates */

/* One DER element at *p: its tag and value; -1 if it does not fit. */
static int
der_next(const unsigned char **p, const unsigned char *end, int *tag,
    const unsigned char **val, size_t *vlen)
{
	const unsigned char *q = *p;
	size_t n;
	int k;

	if (end - q < 2)
		return -1;
	*tag = *q++;
	n = *q++;
	if (n & 0x80) {
		k = (int)(n & 0x7f);
		if (k == 0 || k > 3 || end - q < k)
			return -1;
		for (n = 0; k > 0; k--)
			n = (n << 8) | *q++;
	}
	if ((size_t)(end - q) < n)
		return -1;
	*val = q;
	*vlen = n;
	*p = q + n;
	return 0;
}

/* UTCTime or GeneralizedTime in UTC ("Z") as "YYYYMMDDHHMMSS". */
static int
der_time(int tag, const unsigned char *v, size_t n, char out[15])
{
	size_t i;

	if (tag == 0x17 && n == 13 && v[12] == 'Z') {
		/* RFC 5280 4.1.2.5.1: YY >= 50 is 19YY */
		memcpy(out, v[0] >= '5' ? "19" : "20", 2);
		memcpy(out + 2, v, 12);
	} else if (tag == 0x18 && n == 15 && v[14] == 'Z')
		memcpy(out, v, 14);
	else
		return -1;
	out[14] = '\0';
	for (i = 0; i < 14; i++)
		if (out[i] < '0' || out[i] > '9')
			return -1;
	return 0;
}

/*
 * The validity of a certificate: BearSSL's decoder keeps the dates to
 * itself, so walk the DER to tbsCertificate.validity (RFC 5280 4.1).
 */
static int
cert_validity(const unsigned char *der, size_t len, char nb[15],
    char na[15])
{
	const unsigned char *p = der, *end = der + len, *v;
	size_t n;
	int tag, i;

	if (der_next(&p, end, &tag, &v, &n) < 0 || tag != 0x30)
		return -1;
	p = v;
	end = v + n;
	if (der_next(&p, end, &tag, &v, &n) < 0 || tag != 0x30)
		return -1;
	p = v;
	end = v + n;
	/* [0] version (optional), serial, signature, issuer */
	if (der_next(&p, end, &tag, &v, &n) < 0)
		return -1;
	if (tag == 0xa0 && der_next(&p, end, &tag, &v, &n) < 0)
		return -1;
	for (i = 0; i < 2; i++)
		if (der_next(&p, end, &tag, &v, &n) < 0 || tag != 0x30)
			return -1;
	if (der_next(&p, end, &tag, &v, &n) < 0 || tag != 0x30)
		return -1;
	p = v;
	end = v + n;
	if (der_next(&p, end, &tag, &v, &n) < 0 || der_time(tag, v, n, nb) < 0)
		return -1;
	if (der_next(&p, end, &tag, &v, &n) < 0 || der_time(tag, v, n, na) < 0)
		return -1;
	return 0;
}

static void
pretty_time(const char t[15], char out[24])
{
	snprintf(out, 24, "%.4s-%.2s-%.2s %.2s:%.2s:%.2s", t, t + 4, t + 6,
	    t + 8, t + 10, t + 12);
}

/*
 * An expired certificate is refused at load: every client would refuse
 * it anyway. One not yet valid only warns, since routers often boot
 * with the clock far behind until NTP has run.
 */
static int
check_dates(const char *file, const br_x509_certificate *c, char *err,
    size_t errlen)
{
	char nb[15], na[15], now[15], pretty[24];
	struct tm tm;
	time_t t = time(NULL);

	if (cert_validity(c->data, c->data_len, nb, na) < 0)
		return errf(err, errlen, "%s: cannot read the certificate's "
		    "validity dates", file);
	gmtime_r(&t, &tm);
	strftime(now, sizeof(now), "%Y%m%d%H%M%S", &tm);
	if (strcmp(na, now) < 0) {
		pretty_time(na, pretty);
		return errf(err, errlen, "%s: certificate expired on %s UTC",
		    file, pretty);
	}
	if (strcmp(nb, now) > 0) {
		pretty_time(nb, pretty);
		logmsg(LOG_WARNING, "%s: certificate not valid before %s UTC "
		    "(is the clock right?)", file, pretty);
	}
	return 0;
}

/* --------------------------------------------------- certs and keys */

struct chainload {
	const char *file;
	char *err;
	size_t errlen;
	struct bytes certs;	/* br_x509_certificate[] */
};

static int
chain_obj(void *arg, const char *name, const unsigned char *der,
    size_t len)
{
	struct chainload *cl = arg;
	br_x509_certificate c;

	if (strcmp(name, "TRUSTED CERTIFICATE") == 0)
		return errf(cl->err, cl->errlen, "%s: OpenSSL 'TRUSTED "
		    "CERTIFICATE' objects are not supported; use plain "
		    "CERTIFICATE", cl->file);
	if (!is_cert_name(name))
		return 0;
	if ((c.data = memdup(der, len)) == NULL)
		return errf(cl->err, cl->errlen, "%s: out of memory",
		    cl->file);
	c.data_len = len;
	bytes_add(&cl->certs, &c, sizeof(c));
	if (cl->certs.oom) {
		free(c.data);
		return errf(cl->err, cl->errlen, "%s: out of memory",
		    cl->file);
	}
	return 0;
}

static void
free_chain(br_x509_certificate *chain, size_t n)
{
	size_t i;

	for (i = 0; i < n; i++)
		free(chain[i].data);
	free(chain);
}

static int
load_chain(const char *file, struct certkey *ck, char *err, size_t errlen)
{
	struct chainload cl;
	char *text;
	size_t len;
	int rc;

	if ((text = read_pem(file, &len, err, errlen)) == NULL)
		return -1;
	memset(&cl, 0, sizeof(cl));
	cl.file = file;
	cl.err = err;
	cl.errlen = errlen;
	rc = pem_each(file, text, len, chain_obj, &cl, err, errlen);
	wipe(text, len);	/* the key may share the file */
	free(text);
	ck->chain = (br_x509_certificate *)(void *)cl.certs.p;
	ck->chain_len = cl.certs.len / sizeof(br_x509_certificate);
	if (rc < 0)
		return -1;
	if (ck->chain_len == 0)
		return errf(err, errlen, "%s: no certificate found (want PEM "
		    "'BEGIN CERTIFICATE' blocks)", file);
	return 0;
}

/* Copy the key out of the decoder: its fields point into it. */
static int
copy_key(struct certkey *ck, const br_skey_decoder_context *dc)
{
	const br_rsa_private_key *r;
	const br_ec_private_key *e;
	unsigned char *p;

	ck->type = br_skey_decoder_key_type(dc);
	if ((r = br_skey_decoder_get_rsa(dc)) != NULL) {
		ck->keylen = r->plen + r->qlen + r->dplen + r->dqlen +
		    r->iqlen;
		if ((p = ck->keydata = malloc(ck->keylen)) == NULL)
			return -1;
		ck->rsa = *r;
		memcpy(p, r->p, r->plen);
		ck->rsa.p = p;
		p += r->plen;
		memcpy(p, r->q, r->qlen);
		ck->rsa.q = p;
		p += r->qlen;
		memcpy(p, r->dp, r->dplen);
		ck->rsa.dp = p;
		p += r->dplen;
		memcpy(p, r->dq, r->dqlen);
		ck->rsa.dq = p;
		p += r->dqlen;
		memcpy(p, r->iq, r->iqlen);
		ck->rsa.iq = p;
	} else if ((e = br_skey_decoder_get_ec(dc)) != NULL) {
		ck->keylen = e->xlen;
		if ((ck->keydata = memdup(e->x, e->xlen)) == NULL)
			return -1;
		ck->ec = *e;
		ck->ec.x = ck->keydata;
	}
	return 0;
}

struct keyload {
	const char *file;
	char *err;
	size_t errlen;
	struct certkey *ck;
	int found;
};

static int
key_obj(void *arg, const char *name, const unsigned char *der, size_t len)
{
	struct keyload *kl = arg;
	br_skey_decoder_context dc;
	int e, rc = 0;

	if (strcmp(name, "ENCRYPTED PRIVATE KEY") == 0)
		return errf(kl->err, kl->errlen, "%s: the private key is "
		    "encrypted; store it decrypted (openssl pkey -in KEY "
		    "-out PLAIN)", kl->file);
	if (kl->found || (strcmp(name, "RSA PRIVATE KEY") != 0 &&
	    strcmp(name, "EC PRIVATE KEY") != 0 &&
	    strcmp(name, "PRIVATE KEY") != 0))
		return 0;	/* certificates, EC PARAMETERS, ... */
	br_skey_decoder_init(&dc);
	br_skey_decoder_push(&dc, der, len);
	if ((e = br_skey_decoder_last_error(&dc)) != 0)
		rc = errf(kl->err, kl->errlen, "%s: cannot decode the %s "
		    "(BearSSL error %d; RSA and EC P-256/P-384/P-521 keys "
		    "are supported)", kl->file, name, e);
	else if (copy_key(kl->ck, &dc) < 0)
		rc = errf(kl->err, kl->errlen, "%s: out of memory", kl->file);
	else
		kl->found = 1;
	wipe(&dc, sizeof(dc));
	return rc;
}

static int
load_key(const char *file, struct certkey *ck, char *err, size_t errlen)
{
	struct keyload kl;
	char *text;
	size_t len;
	int rc;

	if ((text = read_pem(file, &len, err, errlen)) == NULL)
		return -1;
	/* Old-style encryption is a header inside the PEM block, which
	 * BearSSL would only call bad data. */
	if (strstr(text, "Proc-Type: 4,ENCRYPTED") != NULL) {
		wipe(text, len);
		free(text);
		return errf(err, errlen, "%s: the private key is encrypted; "
		    "store it decrypted (openssl pkey -in KEY -out PLAIN)",
		    file);
	}
	memset(&kl, 0, sizeof(kl));
	kl.file = file;
	kl.err = err;
	kl.errlen = errlen;
	kl.ck = ck;
	rc = pem_each(file, text, len, key_obj, &kl, err, errlen);
	wipe(text, len);
	free(text);
	if (rc < 0)
		return -1;
	if (!kl.found)
		return errf(err, errlen, "%s: no private key found", file);
	if (ck->type == BR_KEYTYPE_RSA && (ck->rsa.n_bitlen < 2048 ||
	    ck->rsa.n_bitlen > 4096))
		return errf(err, errlen, "%s: RSA key of %u bits (2048 to "
		    "4096 are supported)", file, (unsigned)ck->rsa.n_bitlen);
	if (ck->type == BR_KEYTYPE_EC && ck->ec.curve != BR_EC_secp256r1 &&
	    ck->ec.curve != BR_EC_secp384r1 &&
	    ck->ec.curve != BR_EC_secp521r1)
		return errf(err, errlen, "%s: EC key on an unsupported curve "
		    "(P-256, P-384 and P-521 are supported)", file);
	return 0;
}

/* Big-endian numbers compare without their leading zeros. */
static int
num_eq(const unsigned char *a, size_t an, const unsigned char *b,
    size_t bn)
{
	while (an > 0 && *a == 0) {
		a++;
		an--;
	}
	while (bn > 0 && *b == 0) {
		b++;
		bn--;
	}
	return an == bn && memcmp(a, b, an) == 0;
}

/*
 * An RSA key fits a public key when the moduli are equal and a signature
 * made with it verifies. The signature checks the exponent:
 * br_rsa_compute_pubexp only works when p and q are 3 mod 4, which
 * OpenSSL's keys need not be.
 */
static int
rsa_fits(const br_rsa_private_key *sk, const br_rsa_public_key *pk)
{
	static const unsigned char msg[] = "proxy: does this key fit?";
	br_rsa_compute_modulus modulus = br_rsa_compute_modulus_get_default();
	br_rsa_pkcs1_vrfy vrfy = br_rsa_pkcs1_vrfy_get_default();
	br_sha256_context h;
	unsigned char n[512], sig[512], hv[32], out[32];
	size_t len;

	if ((len = modulus(NULL, sk)) == 0 || len > sizeof(n) ||
	    modulus(n, sk) != len || !num_eq(n, len, pk->n, pk->nlen))
		return 0;
	br_sha256_init(&h);
	br_sha256_update(&h, msg, sizeof(msg));
	br_sha256_out(&h, hv);
	if (!g.rsa_sign(BR_HASH_OID_SHA256, hv, sizeof(hv), sk, sig))
		return 0;
	return vrfy(sig, (sk->n_bitlen + 7) >> 3, BR_HASH_OID_SHA256,
	    sizeof(out), pk, out) && memcmp(out, hv, sizeof(hv)) == 0;
}

/* Does the key belong to this certificate? 1 yes, 0 no, -1 undecodable. */
static int
key_matches(const struct certkey *ck, const br_x509_certificate *c)
{
	br_x509_decoder_context dc;
	const br_x509_pkey *pk;
	unsigned char kbuf[BR_EC_KBUF_PUB_MAX_SIZE];
	br_ec_public_key pub;

	br_x509_decoder_init(&dc, NULL, NULL);
	br_x509_decoder_push(&dc, c->data, c->data_len);
	if ((pk = br_x509_decoder_get_pkey(&dc)) == NULL)
		return -1;
	if (pk->key_type != ck->type)
		return 0;
	if (ck->type == BR_KEYTYPE_RSA)
		return rsa_fits(&ck->rsa, &pk->key.rsa);
	if (br_ec_compute_pub(g.ec, &pub, kbuf, &ck->ec) == 0)
		return 0;
	return pk->key.ec.curve == ck->ec.curve &&
	    pk->key.ec.qlen == pub.qlen &&
	    memcmp(pk->key.ec.q, pub.q, pub.qlen) == 0;
}

/*
 * BearSSL checks neither that the key fits the certificate nor that the
 * server's own certificate comes first; a mistake in either would only
 * show as failed handshakes, so say which at startup.
 */
static int
check_pair(const struct tls_cert *tc, const struct certkey *ck, char *err,
    size_t errlen)
{
	size_t i;
	int m;

	if ((m = key_matches(ck, &ck->chain[0])) < 0)
		return errf(err, errlen, "%s: cannot decode the first "
		    "certificate", tc->cert);
	if (m == 1)
		return check_dates(tc->cert, &ck->chain[0], err, errlen);
	for (i = 1; i < ck->chain_len; i++)
		if (key_matches(ck, &ck->chain[i]) == 1)
			return errf(err, errlen, "%s: the certificate of key "
			    "%s is number %zu in the chain; the server's own "
			    "certificate must come first", tc->cert, tc->key,
			    i + 1);
	return errf(err, errlen, "%s: private key does not match the "
	    "certificate in %s", tc->key, tc->cert);
}

static void
free_certkey(struct certkey *ck)
{
	int i;

	free(ck->name);
	for (i = 0; i < ck->nhosts; i++)
		free(ck->hosts[i]);
	free(ck->hosts);
	free_chain(ck->chain, ck->chain_len);
	if (ck->keydata != NULL)
		wipe(ck->keydata, ck->keylen);
	free(ck->keydata);
	memset(ck, 0, sizeof(*ck));
}

/* Copy what SNI matching needs: the config may go before the engines. */
static int
copy_names(struct certkey *ck, const struct tls_cert *tc)
{
	int i;

	if ((ck->name = strdup(tc->name)) == NULL)
		return -1;
	if (tc->nhosts == 0)
		return 0;
	if ((ck->hosts = calloc((size_t)tc->nhosts, sizeof(char *))) == NULL)
		return -1;
	for (i = 0; i < tc->nhosts; i++) {
		if ((ck->hosts[i] = strdup(tc->hosts[i])) == NULL)
			return -1;
		ck->nhosts++;
	}
	return 0;
}

static int
load_certs(struct certset *cs, const struct tls_conf *tc, char *err,
    size_t errlen)
{
	struct certkey *ck;
	int i;

	if ((cs->certs = calloc((size_t)tc->ncerts, sizeof(*cs->certs))) ==
	    NULL)
		return errf(err, errlen, "out of memory");
	for (i = 0; i < tc->ncerts; i++) {
		ck = &cs->certs[i];
		cs->ncerts++;
		if (copy_names(ck, &tc->certs[i]) < 0)
			return errf(err, errlen, "out of memory");
		if (load_chain(tc->certs[i].cert, ck, err, errlen) < 0 ||
		    load_key(tc->certs[i].key, ck, err, errlen) < 0 ||
		    check_pair(&tc->certs[i], ck, err, errlen) < 0)
			return -1;
	}
	return 0;
}

/* ---------------------------------------------------- trust anchors */

struct caload {
	const char *file;
	char *err;
	size_t errlen;
	struct bytes tas;	/* br_x509_trust_anchor[] */
	int skipped;
};

static void
free_anchor(br_x509_trust_anchor *ta)
{
	free(ta->dn.data);
	if (ta->pkey.key_type == BR_KEYTYPE_RSA) {
		free(ta->pkey.key.rsa.n);
		free(ta->pkey.key.rsa.e);
	} else
		free(ta->pkey.key.ec.q);
}

static int
ca_obj(void *arg, const char *name, const unsigned char *der, size_t len)
{
	struct caload *cl = arg;
	br_x509_decoder_context dc;
	br_x509_trust_anchor ta;
	const br_x509_pkey *pk;
	struct bytes dn;

	if (!is_cert_name(name))
		return 0;
	memset(&dn, 0, sizeof(dn));
	memset(&ta, 0, sizeof(ta));
	br_x509_decoder_init(&dc, bytes_add, &dn);
	br_x509_decoder_push(&dc, der, len);
	if ((pk = br_x509_decoder_get_pkey(&dc)) == NULL) {
		/* A bundle may hold keys BearSSL lacks (DSA, Ed25519). */
		free(dn.p);
		cl->skipped++;
		return 0;
	}
	ta.dn.data = dn.p;
	ta.dn.len = dn.len;
	ta.flags = br_x509_decoder_isCA(&dc) ? BR_X509_TA_CA : 0;
	ta.pkey = *pk;
	if (pk->key_type == BR_KEYTYPE_RSA) {
		ta.pkey.key.rsa.n = memdup(pk->key.rsa.n, pk->key.rsa.nlen);
		ta.pkey.key.rsa.e = memdup(pk->key.rsa.e, pk->key.rsa.elen);
		if (ta.pkey.key.rsa.n == NULL || ta.pkey.key.rsa.e == NULL)
			dn.oom = 1;
	} else {
		ta.pkey.key.ec.q = memdup(pk->key.ec.q, pk->key.ec.qlen);
		if (ta.pkey.key.ec.q == NULL)
			dn.oom = 1;
	}
	if (!dn.oom)
		bytes_add(&cl->tas, &ta, sizeof(ta));
	if (dn.oom || cl->tas.oom) {
		free_anchor(&ta);
		return errf(cl->err, cl->errlen, "%s: out of memory",
		    cl->file);
	}
	return 0;
}

static const struct anchors *
find_anchors(const struct certset *cs, const char *file)
{
	int i;

	for (i = 0; file != NULL && i < cs->ncas; i++)
		if (strcmp(cs->cas[i].file, file) == 0)
			return &cs->cas[i];
	return NULL;
}

static int
load_anchors(struct certset *cs, const char *file, char *err,
    size_t errlen)
{
	struct caload cl;
	struct anchors *a;
	char *text;
	size_t len;
	int rc;

	if (find_anchors(cs, file) != NULL)
		return 0;
	if ((a = realloc(cs->cas, (size_t)(cs->ncas + 1) * sizeof(*a))) ==
	    NULL)
		return errf(err, errlen, "%s: out of memory", file);
	cs->cas = a;
	a = &cs->cas[cs->ncas];
	memset(a, 0, sizeof(*a));
	if ((a->file = strdup(file)) == NULL)
		return errf(err, errlen, "%s: out of memory", file);
	cs->ncas++;
	if ((text = read_pem(file, &len, err, errlen)) == NULL)
		return -1;
	memset(&cl, 0, sizeof(cl));
	cl.file = file;
	cl.err = err;
	cl.errlen = errlen;
	rc = pem_each(file, text, len, ca_obj, &cl, err, errlen);
	free(text);
	a->ta = (br_x509_trust_anchor *)(void *)cl.tas.p;
	a->n = cl.tas.len / sizeof(br_x509_trust_anchor);
	if (rc < 0)
		return -1;
	if (a->n == 0)
		return errf(err, errlen, "%s: no usable CA certificate "
		    "found%s", file, cl.skipped ? " (unsupported keys)" : "");
	return 0;
}

/* ------------------------------------------------ algorithm choices */

/*
 * Pick implementations at run time: the AES-NI, POWER8, PCLMUL, SSE2 and
 * 64-bit multiply versions exist in the library whatever the CPU, and
 * their getters return NULL (0) when this CPU lacks the instructions.
 */
static void
choose_impls(struct impls *im)
{
	int wide = sizeof(void *) >= 8;

	memset(im, 0, sizeof(*im));
	if ((im->aes_ctr = br_aes_x86ni_ctr_get_vtable()) != NULL) {
		im->aes_cbcenc = br_aes_x86ni_cbcenc_get_vtable();
		im->aes_cbcdec = br_aes_x86ni_cbcdec_get_vtable();
		im->aes_hw = 1;
	} else if ((im->aes_ctr = br_aes_pwr8_ctr_get_vtable()) != NULL) {
		im->aes_cbcenc = br_aes_pwr8_cbcenc_get_vtable();
		im->aes_cbcdec = br_aes_pwr8_cbcdec_get_vtable();
		im->aes_hw = 1;
	} else if (wide) {
		/* constant-time bitsliced AES: no table lookups to time */
		im->aes_ctr = &br_aes_ct64_ctr_vtable;
		im->aes_cbcenc = &br_aes_ct64_cbcenc_vtable;
		im->aes_cbcdec = &br_aes_ct64_cbcdec_vtable;
	} else {
		im->aes_ctr = &br_aes_ct_ctr_vtable;
		im->aes_cbcenc = &br_aes_ct_cbcenc_vtable;
		im->aes_cbcdec = &br_aes_ct_cbcdec_vtable;
	}
	if ((im->ghash = br_ghash_pclmul_get()) == 0 &&
	    (im->ghash = br_ghash_pwr8_get()) == 0)
		im->ghash = wide ? &br_ghash_ctmul64 : &br_ghash_ctmul;
	if ((im->chacha = br_chacha20_sse2_get()) == 0)
		im->chacha = &br_chacha20_ct_run;
	if ((im->poly = br_poly1305_ctmulq_get()) == 0)
		im->poly = &br_poly1305_ctmul_run;
}

/*
 * TLS 1.2 with ECDHE only: forward secrecy, and no RSA key exchange with
 * its padding oracles. AEAD first: AES-GCM where the CPU has AES
 * instructions, ChaCha20-Poly1305 where AES would run bitsliced and
 * slow. ciphers = compat adds the CBC suites older clients need. Within
 * a cipher, ECDSA before RSA: cheaper for us when a name has both.
 */
enum { SU_GCM, SU_CHAPOL, SU_CBC };

static const struct suite {
	uint16_t id;
	uint8_t ec;		/* ECDHE_ECDSA: wants an EC certificate */
	uint8_t kind;		/* SU_* */
} suite_table[] = {
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256, 1, SU_GCM },
	{ BR_TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, 0, SU_GCM },
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384, 1, SU_GCM },
	{ BR_TLS_ECDHE_RSA_WITH_AES_256_GCM_SHA384, 0, SU_GCM },
	{ BR_TLS_ECDHE_ECDSA_WITH_CHACHA20_POLY1305_SHA256, 1, SU_CHAPOL },
	{ BR_TLS_ECDHE_RSA_WITH_CHACHA20_POLY1305_SHA256, 0, SU_CHAPOL },
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA256, 1, SU_CBC },
	{ BR_TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA256, 0, SU_CBC },
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA384, 1, SU_CBC },
	{ BR_TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA384, 0, SU_CBC },
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_128_CBC_SHA, 1, SU_CBC },
	{ BR_TLS_ECDHE_RSA_WITH_AES_128_CBC_SHA, 0, SU_CBC },
	{ BR_TLS_ECDHE_ECDSA_WITH_AES_256_CBC_SHA, 1, SU_CBC },
	{ BR_TLS_ECDHE_RSA_WITH_AES_256_CBC_SHA, 0, SU_CBC },
};

/* Fill s (16 entries) in preference order; returns the count. */
static size_t
build_suites(uint16_t *s, int rsa, int ec, int compat, int aes_hw)
{
	int order[3], k;
	size_t i, n = 0;

	order[0] = aes_hw ? SU_GCM : SU_CHAPOL;
	order[1] = aes_hw ? SU_CHAPOL : SU_GCM;
	order[2] = compat ? SU_CBC : -1;
	for (k = 0; k < 3; k++)
		for (i = 0; i < sizeof(suite_table) / sizeof(suite_table[0]);
		    i++)
			if (suite_table[i].kind == order[k] &&
			    (suite_table[i].ec ? ec : rsa))
				s[n++] = suite_table[i].id;
	return n;
}

static const struct hash {
	unsigned id;
	const br_hash_class *vt;
	const unsigned char *oid;	/* in RSA PKCS#1 signatures */
} hashes[] = {
	{ br_sha1_ID, &br_sha1_vtable, BR_HASH_OID_SHA1 },
	{ br_sha224_ID, &br_sha224_vtable, BR_HASH_OID_SHA224 },
	{ br_sha256_ID, &br_sha256_vtable, BR_HASH_OID_SHA256 },
	{ br_sha384_ID, &br_sha384_vtable, BR_HASH_OID_SHA384 },
	{ br_sha512_ID, &br_sha512_vtable, BR_HASH_OID_SHA512 },
};

static const struct hash *
find_hash(unsigned id)
{
	size_t i;

	for (i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++)
		if (hashes[i].id == id)
			return &hashes[i];
	return NULL;
}

/*
 * The hash to sign ServerKeyExchange with, from the bits of the
 * client's signature_algorithms (bit id set: hash id is acceptable).
 * SHA-256 first: every TLS 1.2 client has it and it is the cheapest
 * strong one.
 */
static unsigned
pick_hash(uint32_t mask)
{
	static const unsigned pref[] = { br_sha256_ID, br_sha384_ID,
	    br_sha512_ID, br_sha224_ID, br_sha1_ID };
	size_t i;

	for (i = 0; i < sizeof(pref) / sizeof(pref[0]); i++)
		if (mask >> pref[i] & 1)
			return pref[i];
	return 0;
}

/* Settings shared by server and client engines. */
static void
engine_setup(br_ssl_engine_context *eng, const uint16_t *suites, size_t n,
    unsigned char *ibuf, unsigned char *obuf)
{
	const struct impls *im = &g.im;
	size_t i;

	br_ssl_engine_set_versions(eng, BR_TLS12, BR_TLS12);
	br_ssl_engine_set_suites(eng, suites, n);
	for (i = 0; i < sizeof(hashes) / sizeof(hashes[0]); i++)
		br_ssl_engine_set_hash(eng, (int)hashes[i].id, hashes[i].vt);
	br_ssl_engine_set_prf_sha256(eng, &br_tls12_sha256_prf);
	br_ssl_engine_set_prf_sha384(eng, &br_tls12_sha384_prf);
	br_ssl_engine_set_ec(eng, g.ec);
	br_ssl_engine_set_gcm(eng, &br_sslrec_in_gcm_vtable,
	    &br_sslrec_out_gcm_vtable);
	br_ssl_engine_set_aes_ctr(eng, im->aes_ctr);
	br_ssl_engine_set_ghash(eng, im->ghash);
	br_ssl_engine_set_chapol(eng, &br_sslrec_in_chapol_vtable,
	    &br_sslrec_out_chapol_vtable);
	br_ssl_engine_set_chacha20(eng, im->chacha);
	br_ssl_engine_set_poly1305(eng, im->poly);
	br_ssl_engine_set_cbc(eng, &br_sslrec_in_cbc_vtable,
	    &br_sslrec_out_cbc_vtable);
	br_ssl_engine_set_aes_cbc(eng, im->aes_cbcenc, im->aes_cbcdec);
	/* Renegotiation only adds attack surface to HTTP/1.1. */
	br_ssl_engine_set_all_flags(eng, BR_OPT_ENFORCE_SERVER_PREFERENCES |
	    BR_OPT_NO_RENEGOTIATION);
	br_ssl_engine_set_protocol_names(eng, alpn, 1);
	/* Separate buffers: a response can go out while an upload still
	 * comes in, and pipelined requests wait in the input. */
	br_ssl_engine_set_buffers_bidi(eng, ibuf, IBUF_LEN, obuf, OBUF_LEN);
}

/* ------------------------------------------------------ SNI policy */

/* The engine that owns a policy pointer BearSSL hands back. */
static struct tls *
policy_owner(const br_ssl_server_policy_class **pctx)
{
	return (struct tls *)(void *)((char *)pctx -
	    offsetof(struct tls, policy));
}

/*
 * How well a server name fits a certificate's hosts: 0 not at all, an
 * exact name beats any wildcard, a longer wildcard suffix beats a
 * shorter one. "*.example.org" covers any name ending in ".example.org".
 */
static int
host_score(const struct certkey *ck, const char *name, size_t n)
{
	const char *h;
	size_t sl;
	int i, best = 0;

	for (i = 0; i < ck->nhosts; i++) {
		h = ck->hosts[i];
		if (h[0] == '*') {
			sl = strlen(h + 1);
			if (n > sl && strncasecmp(name + n - sl, h + 1, sl) ==
			    0 && (int)sl > best)
				best = (int)sl;
		} else if (strlen(h) == n && strncasecmp(h, name, n) == 0)
			return INT_MAX;
	}
	return best;
}

/*
 * Choose the certificate by SNI, then the first suite (in our order, as
 * BR_OPT_ENFORCE_SERVER_PREFERENCES sorts them) that a candidate's key
 * can sign for. Candidates are the certificates that fit the name best,
 * so one name may have an EC and an RSA certificate; no fit, or no SNI,
 * means the [tls] default.
 */
static int
sni_choose(const br_ssl_server_policy_class **pctx,
    const br_ssl_server_context *cc, br_ssl_server_choices *ch)
{
	struct tls *t = policy_owner(pctx);
	const struct certset *cs = t->set;
	const br_suite_translated *st;
	const char *name = br_ssl_engine_get_server_name(&cc->eng);
	uint32_t hm = br_ssl_server_get_client_hashes(cc);
	size_t nst, u, n = strlen(name);
	unsigned h;
	int best = 0, i, s, type;

	if (n > 0 && name[n - 1] == '.')
		n--;
	for (i = 0; i < cs->ncerts && n > 0; i++)
		if ((s = host_score(&cs->certs[i], name, n)) > best)
			best = s;
	st = br_ssl_server_get_client_suites(cc, &nst);
	for (u = 0; u < nst; u++) {
		switch (st[u][1] >> 12) {
		case BR_SSLKEYX_ECDHE_RSA:
			type = BR_KEYTYPE_RSA;
			h = pick_hash(hm);
			break;
		case BR_SSLKEYX_ECDHE_ECDSA:
			type = BR_KEYTYPE_EC;
			h = pick_hash(hm >> 8);
			break;
		default:
			continue;
		}
		if (h == 0)
			continue;
		for (i = 0; i < cs->ncerts; i++) {
			if (cs->certs[i].type != type || (best > 0 ?
			    host_score(&cs->certs[i], name, n) != best :
			    i != 0))
				continue;
			t->cert = i;
			ch->cipher_suite = st[u][0];
			ch->algo_id = 0xFF00 + h;
			ch->chain = cs->certs[i].chain;
			ch->chain_len = cs->certs[i].chain_len;
			return 1;
		}
	}
	return 0;
}

/* Only ECDHE suites are offered: no key exchange with our key. */
static uint32_t
sni_keyx(const br_ssl_server_policy_class **pctx, unsigned char *data,
    size_t *len)
{
	return 0;
}

/*
 * Sign the ServerKeyExchange hash with the key chosen in sni_choose,
 * as BearSSL's single_rsa/single_ec policies do: algo_id 0xFF00 + id
 * says data holds a hash_id hash of hv_len bytes, to be replaced by the
 * signature (len bytes of room).
 */
static size_t
sni_sign(const br_ssl_server_policy_class **pctx, unsigned algo_id,
    unsigned char *data, size_t hv_len, size_t len)
{
	struct tls *t = policy_owner(pctx);
	const struct certkey *ck = &t->set->certs[t->cert];
	const struct hash *hs;
	unsigned char hv[64];
	size_t siglen;

	if (algo_id < 0xFF00 || hv_len > sizeof(hv) ||
	    (hs = find_hash(algo_id & 0xFF)) == NULL)
		return 0;
	memcpy(hv, data, hv_len);
	if (ck->type == BR_KEYTYPE_RSA) {
		siglen = (ck->rsa.n_bitlen + 7) >> 3;
		if (len < siglen)
			return 0;
		return g.rsa_sign(hs->oid, hv, hv_len, &ck->rsa, data) ?
		    siglen : 0;
	}
	/* 139 bytes: the longest ASN.1 ECDSA signature (P-521) */
	if (len < 139)
		return 0;
	return g.ecdsa_sign(g.ec, hs->vt, hv, &ck->ec, data);
}

static const br_ssl_server_policy_class sni_policy = {
	sizeof(const br_ssl_server_policy_class *),
	sni_choose,
	sni_keyx,
	sni_sign
};

/* ------------------------------------------------------------ pools */

static int
srv_pool(int n, long sessions, char *err, size_t errlen)
{
	struct tls_srv *e;
	int i;

	if (n <= 0)
		return 0;
	if ((g.srv = calloc((size_t)n, sizeof(*g.srv))) == NULL)
		return errf(err, errlen, "out of memory reserving %d TLS "
		    "engines of %zu bytes", n, sizeof(*g.srv));
	g.nsrv = n;
	if (sessions > 0) {
		/* BearSSL's LRU takes exactly 100 bytes per session. */
		g.lru_len = (size_t)sessions * 100;
		if ((g.lru_store = malloc(g.lru_len)) == NULL)
			return errf(err, errlen, "out of memory reserving %ld "
			    "TLS sessions", sessions);
		br_ssl_session_cache_lru_init(&g.lru, g.lru_store, g.lru_len);
	}
	for (i = n - 1; i >= 0; i--) {
		e = &g.srv[i];
		br_ssl_server_zero(&e->sc);
		e->t.eng = &e->sc.eng;
		e->t.kind = K_SERVER;
		e->t.policy = &sni_policy;
		engine_setup(&e->sc.eng, g.set->suites, g.set->nsuites,
		    e->ibuf, e->obuf);
		br_ssl_server_set_policy(&e->sc, &e->t.policy);
		if (sessions > 0)
			br_ssl_server_set_cache(&e->sc, &g.lru.vtable);
		/*
		 * The first reset seeds the engine's generator from the
		 * system (getrandom); later ones reuse it. Doing it here
		 * keeps a wait for boot-time entropy out of the loop.
		 */
		if (!br_ssl_server_reset(&e->sc))
			return errf(err, errlen, "cannot start a TLS engine "
			    "(BearSSL error %d%s)",
			    br_ssl_engine_last_error(&e->sc.eng),
			    br_ssl_engine_last_error(&e->sc.eng) ==
			    BR_ERR_NO_RANDOM ? ": no system random source" :
			    "");
		e->t.next = g.free_srv;
		g.free_srv = &e->t;
		g.nfree_srv++;
	}
	return 0;
}

static int
cli_pool(int n, char *err, size_t errlen)
{
	struct tls_cli *e;
	int i;

	if (n <= 0)
		return 0;
	if ((g.cli = calloc((size_t)n, sizeof(*g.cli))) == NULL)
		return errf(err, errlen, "out of memory reserving %d TLS "
		    "client engines of %zu bytes", n, sizeof(*g.cli));
	g.ncli = n;
	for (i = n - 1; i >= 0; i--) {
		e = &g.cli[i];
		br_ssl_client_zero(&e->cc);
		e->t.eng = &e->cc.eng;
		e->t.kind = K_CLIENT;
		engine_setup(&e->cc.eng, g.set->cli_suites,
		    g.set->ncli_suites, e->ibuf, e->obuf);
		br_ssl_engine_set_rsavrfy(&e->cc.eng,
		    br_rsa_pkcs1_vrfy_get_default());
		br_ssl_engine_set_ecdsa(&e->cc.eng,
		    br_ecdsa_vrfy_asn1_get_default());
		br_x509_minimal_init_full(&e->xc, NULL, 0);
		br_ssl_engine_set_x509(&e->cc.eng, &e->xc.vtable);
		/* seeds the generator, as for the server engines */
		if (!br_ssl_client_reset(&e->cc, NULL, 0))
			return errf(err, errlen, "cannot start a TLS client "
			    "engine (BearSSL error %d)",
			    br_ssl_engine_last_error(&e->cc.eng));
		e->t.next = g.free_cli;
		g.free_cli = &e->t;
	}
	return 0;
}

/* ------------------------------------------------------------ sets */

static void
free_set(struct certset *cs)
{
	int i;
	size_t k;

	if (cs == NULL)
		return;
	for (i = 0; i < cs->ncerts; i++)
		free_certkey(&cs->certs[i]);
	free(cs->certs);
	for (i = 0; i < cs->ncas; i++) {
		for (k = 0; k < cs->cas[i].n; k++)
			free_anchor(&cs->cas[i].ta[k]);
		free(cs->cas[i].ta);
		free(cs->cas[i].file);
	}
	free(cs->cas);
	free(cs);
}

/*
 * Load what c asks of TLS: the [tls] and [cert] pairs when there is a
 * TLS listener (need_certs: server engines exist), and the anchors of
 * every backend with tls servers. NULL with err set on failure.
 */
static struct certset *
load_set(const struct config *c, int need_certs, char *err, size_t errlen)
{
	const struct backend *b;
	struct certset *cs;
	int i, j, rsa = 0, ec = 0;

	if ((cs = calloc(1, sizeof(*cs))) == NULL) {
		errf(err, errlen, "%s: out of memory", c->file);
		return NULL;
	}
	if (c->tls.nlisten > 0 && load_certs(cs, &c->tls, err, errlen) < 0)
		goto fail;
	if (need_certs && cs->ncerts == 0) {
		errf(err, errlen, "%s: TLS engines wanted without a [tls] "
		    "listen, cert and key", c->file);
		goto fail;
	}
	for (i = 0; i < c->nbackends; i++) {
		b = &c->backends[i];
		for (j = 0; j < b->nsrv && !b->srv[j].tls; j++)
			;
		if (j == b->nsrv)
			continue;
		if (b->ca == NULL) {
			errf(err, errlen, "%s: backend '%s': server %s tls "
			    "needs ca", c->file, b->name, b->srv[j].name);
			goto fail;
		}
		if (load_anchors(cs, b->ca, err, errlen) < 0)
			goto fail;
	}
	for (i = 0; i < cs->ncerts; i++) {
		rsa |= cs->certs[i].type == BR_KEYTYPE_RSA;
		ec |= cs->certs[i].type == BR_KEYTYPE_EC;
	}
	cs->nsuites = build_suites(cs->suites, rsa, ec, c->tls.compat,
	    g.im.aes_hw);
	cs->ncli_suites = build_suites(cs->cli_suites, 1, 1, c->tls.compat,
	    g.im.aes_hw);
	return cs;
fail:
	free_set(cs);
	return NULL;
}

/* An engine comes back: free its set if that was replaced meanwhile. */
static void
put_set(struct certset *cs)
{
	struct certset **pp;

	if (--cs->refs > 0 || cs == g.set)
		return;
	for (pp = &g.retired; *pp != NULL; pp = &(*pp)->next)
		if (*pp == cs) {
			*pp = cs->next;
			break;
		}
	free_set(cs);
}

/* ------------------------------------------------------ public: setup */

int
tls_init(const struct config *c, int nserver, int nclient, char *err,
    size_t errlen)
{
	if (errlen > 0)
		err[0] = '\0';
	tls_free();
	/* BearSSL seeds each engine from the system (RDRAND, getrandom or
	 * /dev/urandom); without one, no handshake could start. */
	if (br_prng_seeder_system(NULL) == 0) {
		errf(err, errlen, "%s: BearSSL has no system random source",
		    c->file);
		return -1;
	}
	choose_impls(&g.im);
	g.ec = br_ec_get_default();
	g.rsa_sign = br_rsa_pkcs1_sign_get_default();
	g.ecdsa_sign = br_ecdsa_sign_asn1_get_default();
	if ((g.set = load_set(c, nserver > 0, err, errlen)) == NULL ||
	    srv_pool(nserver, c->tls.sessions, err, errlen) < 0 ||
	    cli_pool(nclient, err, errlen) < 0) {
		tls_free();
		return -1;
	}
	return 0;
}

int
tls_reload(const struct config *c, char *err, size_t errlen)
{
	struct certset *cs;

	if (errlen > 0)
		err[0] = '\0';
	if ((cs = load_set(c, g.nsrv > 0, err, errlen)) == NULL)
		return -1;
	if (g.set != NULL && g.set->refs > 0) {
		g.set->next = g.retired;
		g.retired = g.set;
	} else
		free_set(g.set);
	g.set = cs;
	return 0;
}

void
tls_free(void)
{
	struct certset *cs;

	free_set(g.set);
	while ((cs = g.retired) != NULL) {
		g.retired = cs->next;
		free_set(cs);
	}
	/* Engines and the cache hold session secrets. */
	if (g.srv != NULL)
		wipe(g.srv, (size_t)g.nsrv * sizeof(*g.srv));
	free(g.srv);
	if (g.cli != NULL)
		wipe(g.cli, (size_t)g.ncli * sizeof(*g.cli));
	free(g.cli);
	if (g.lru_store != NULL)
		wipe(g.lru_store, g.lru_len);
	free(g.lru_store);
	memset(&g, 0, sizeof(g));
}

size_t
tls_engine_size(void)
{
	return sizeof(struct tls_srv);
}

/* ------------------------------------------------------ public: pool */

struct tls *
tls_server(void)
{
	struct tls *t;

	if ((t = g.free_srv) == NULL) {
		errno = ENOBUFS;
		return NULL;
	}
	/* the suites may have changed with a reload */
	br_ssl_engine_set_suites(t->eng, g.set->suites, g.set->nsuites);
	if (!br_ssl_server_reset(&((struct tls_srv *)(void *)t)->sc)) {
		errno = EPROTO;
		return NULL;
	}
	g.free_srv = t->next;
	g.nfree_srv--;
	t->next = NULL;
	t->used = 1;
	t->set = g.set;
	g.set->refs++;
	t->cert = 0;
	t->ready = 0;
	t->eof = 0;
	return t;
}

struct tls *
tls_client(const struct server *s)
{
	const struct anchors *a;
	struct tls_cli *e;
	struct tls *t;

	/* Without a name BearSSL would skip the name check: refuse. */
	if (g.set == NULL || s->host == NULL || s->host[0] == '\0' ||
	    (a = find_anchors(g.set, s->b != NULL ? s->b->ca : NULL)) ==
	    NULL) {
		errno = EINVAL;
		return NULL;
	}
	if ((t = g.free_cli) == NULL) {
		errno = ENOBUFS;
		return NULL;
	}
	e = (struct tls_cli *)(void *)t;
	/* Re-initialised per connection: backends trust different CAs. */
	br_x509_minimal_init_full(&e->xc, a->ta, a->n);
	br_ssl_engine_set_x509(&e->cc.eng, &e->xc.vtable);
	br_ssl_engine_set_suites(t->eng, g.set->cli_suites,
	    g.set->ncli_suites);
	/* s->host is sent as SNI and must be a DNS name in the
	 * certificate's subjectAltName (BearSSL matches names only). */
	if (!br_ssl_client_reset(&e->cc, s->host, 0)) {
		errno = EPROTO;
		return NULL;
	}
	g.free_cli = t->next;
	t->next = NULL;
	t->used = 1;
	t->set = g.set;
	g.set->refs++;
	t->ready = 0;
	t->eof = 0;
	return t;
}

void
tls_release(struct tls *t)
{
	if (t == NULL || !t->used)
		return;
	t->used = 0;
	put_set(t->set);
	t->set = NULL;
	if (t->kind == K_SERVER) {
		t->next = g.free_srv;
		g.free_srv = t;
		g.nfree_srv++;
	} else {
		t->next = g.free_cli;
		g.free_cli = t;
	}
}

int
tls_server_free(void)
{
	return g.nfree_srv;
}

/* -------------------------------------------------------- the pump */

/* Records moved per call at most, so one peer cannot hold the loop. */
#define PUMP_ROUNDS	64

static int
would_block(int e)
{
	return e == EAGAIN || e == EWOULDBLOCK || e == EINTR;
}

/* Send what the engine has for the peer: 1 moved, 0 would block, -1. */
static int
push_out(struct tls *t, int fd)
{
	unsigned char *buf;
	size_t len;
	ssize_t n;

	if ((buf = br_ssl_engine_sendrec_buf(t->eng, &len)) == NULL)
		return 0;
	n = send(fd, buf, len, MSG_NOSIGNAL | MSG_DONTWAIT);
	if (n > 0) {
		br_ssl_engine_sendrec_ack(t->eng, (size_t)n);
		return 1;
	}
	if (n < 0 && would_block(errno))
		return 0;
	if (n == 0)
		errno = EPIPE;
	return -1;
}

/*
 * Feed the engine what the peer sent: 1 moved, 0 would block, 2 end of
 * stream, -1 error. BearSSL asks for one record at a time, so whatever
 * follows stays in the socket where poll() still sees it.
 */
static int
pull_in(struct tls *t, int fd)
{
	unsigned char *buf;
	size_t len;
	ssize_t n;

	if (t->eof)
		return 2;
	if ((buf = br_ssl_engine_recvrec_buf(t->eng, &len)) == NULL)
		return 0;
	n = recv(fd, buf, len, MSG_DONTWAIT);
	if (n > 0) {
		br_ssl_engine_recvrec_ack(t->eng, (size_t)n);
		return 1;
	}
	if (n == 0) {
		t->eof = 1;
		return 2;
	}
	return would_block(errno) ? 0 : -1;
}

/* A closed engine: 1 after a clean close_notify, else -1 EPROTO. */
static int
engine_closed(const struct tls *t)
{
	if (br_ssl_engine_last_error(t->eng) == BR_ERR_OK)
		return 1;
	errno = EPROTO;
	return -1;
}

/*
 * Move records between fd and the engine until it can do want
 * (BR_SSL_RECVAPP: plaintext to read; BR_SSL_SENDAPP: room for
 * plaintext). Reads only when may_read or while the handshake runs:
 * a sender must not pull in records nobody will read. Returns 0 when
 * want is possible, 1 at the end of the stream, or -1 with errno
 * EAGAIN (wait for tls_events), EPROTO (TLS failed) or the socket's.
 */
static int
pump(struct tls *t, int fd, unsigned want, int may_read)
{
	unsigned st;
	int out, in, round;

	for (round = 0; round < PUMP_ROUNDS; round++) {
		st = br_ssl_engine_current_state(t->eng);
		if (st & BR_SSL_CLOSED)
			return engine_closed(t);
		if (st & (BR_SSL_SENDAPP | BR_SSL_RECVAPP))
			t->ready = 1;
		if (st & want)
			return 0;
		out = in = 0;
		if ((st & BR_SSL_SENDREC) && (out = push_out(t, fd)) < 0)
			return -1;
		if ((st & BR_SSL_RECVREC) && (may_read || !t->ready)) {
			if ((in = pull_in(t, fd)) < 0)
				return -1;
			if (in == 2 && out == 0)
				return 1;
		}
		if (out == 0 && in == 0)
			break;
	}
	errno = EAGAIN;
	return -1;
}

/* Push out every record the engine holds: 0 done, -1 EAGAIN or error. */
static int
drain(struct tls *t, int fd)
{
	unsigned st;
	int r;

	for (;;) {
		st = br_ssl_engine_current_state(t->eng);
		if (st & BR_SSL_CLOSED)
			return engine_closed(t) > 0 ? 0 : -1;
		if (!(st & BR_SSL_SENDREC))
			return 0;
		if ((r = push_out(t, fd)) < 0)
			return -1;
		if (r == 0) {
			errno = EAGAIN;
			return -1;
		}
	}
}

/* ------------------------------------------------------- public: I/O */

ssize_t
tls_recv(struct tls *t, int fd, void *dst, size_t cap)
{
	unsigned char *buf;
	size_t len;
	int r;

	if (cap == 0) {
		errno = EINVAL;
		return -1;
	}
	if ((r = pump(t, fd, BR_SSL_RECVAPP, 1)) != 0) {
		/* The peer went away while we answered its close_notify. */
		if (r < 0 && errno == EPIPE)
			return 0;
		return r > 0 ? 0 : -1;
	}
	buf = br_ssl_engine_recvapp_buf(t->eng, &len);
	if (len > cap)
		len = cap;
	memcpy(dst, buf, len);
	br_ssl_engine_recvapp_ack(t->eng, len);
	return (ssize_t)len;
}

ssize_t
tls_send(struct tls *t, int fd, const void *src, size_t n)
{
	const unsigned char *p = src;
	unsigned char *buf;
	size_t len, taken = 0;
	int r = 0;

	if (n == 0)
		return 0;
	while (taken < n) {
		if ((r = pump(t, fd, BR_SSL_SENDAPP, 0)) != 0)
			break;
		buf = br_ssl_engine_sendapp_buf(t->eng, &len);
		if (len > n - taken)
			len = n - taken;
		memcpy(buf, p + taken, len);
		br_ssl_engine_sendapp_ack(t->eng, len);
		taken += len;
	}
	if (taken == 0) {
		if (r > 0)
			errno = EPIPE;
		return -1;
	}
	/* Seal what is buffered into a record and send it now: the caller
	 * may have nothing more to say for a while. */
	br_ssl_engine_flush(t->eng, 0);
	(void)drain(t, fd);
	return (ssize_t)taken;
}

int
tls_flush(struct tls *t, int fd)
{
	br_ssl_engine_flush(t->eng, 0);
	return drain(t, fd);
}

void
tls_close(struct tls *t, int fd)
{
	int e = errno;

	br_ssl_engine_close(t->eng);
	(void)drain(t, fd);
	errno = e;
}

/* The handshake is over once the engine has handled application data. */
static int
is_ready(const struct tls *t, unsigned st)
{
	return t->ready || (st & (BR_SSL_SENDAPP | BR_SSL_RECVAPP)) != 0;
}

short
tls_events(const struct tls *t)
{
	unsigned st = br_ssl_engine_current_state(t->eng);
	short ev = 0;

	if (st & BR_SSL_CLOSED)
		return 0;
	if (st & BR_SSL_SENDREC)
		ev |= POLLOUT;
	if ((st & BR_SSL_RECVREC) && !is_ready(t, st))
		ev |= POLLIN;
	return ev;
}

int
tls_ready(const struct tls *t)
{
	return is_ready(t, br_ssl_engine_current_state(t->eng));
}

int
tls_pending(const struct tls *t)
{
	size_t len;

	return br_ssl_engine_recvapp_buf(t->eng, &len) != NULL && len > 0;
}

const char *
tls_sni(const struct tls *t)
{
	return br_ssl_engine_get_server_name(t->eng);
}

const char *
tls_error(const struct tls *t)
{
	static char buf[64];
	int e = br_ssl_engine_last_error(t->eng);

	switch (e) {
	case BR_ERR_OK:
		return "no error";
	case BR_ERR_UNSUPPORTED_VERSION:
	case BR_ERR_BAD_VERSION:
		return "unsupported protocol version (TLS 1.2 only)";
	case BR_ERR_BAD_CIPHER_SUITE:
		return "no cipher suite in common";
	case BR_ERR_BAD_MAC:
		return "bad record MAC";
	case BR_ERR_NO_RANDOM:
		return "no random source";
	case BR_ERR_BAD_SIGNATURE:
		return "bad handshake signature";
	case BR_ERR_X509_EXPIRED:
		return "certificate expired or not yet valid";
	case BR_ERR_X509_BAD_SERVER_NAME:
		return "certificate does not name the server";
	case BR_ERR_X509_NOT_TRUSTED:
		return "certificate not trusted by ca";
	case BR_ERR_X509_BAD_SIGNATURE:
		return "certificate signature invalid";
	case BR_ERR_X509_NOT_CA:
		return "issuer is not a CA";
	case BR_ERR_X509_WEAK_PUBLIC_KEY:
		return "certificate key too weak";
	}
	if (e >= BR_ERR_RECV_FATAL_ALERT && e < BR_ERR_SEND_FATAL_ALERT)
		snprintf(buf, sizeof(buf), "peer sent fatal alert %d",
		    e - BR_ERR_RECV_FATAL_ALERT);
	else if (e >= BR_ERR_SEND_FATAL_ALERT)
		snprintf(buf, sizeof(buf), "sent fatal alert %d",
		    e - BR_ERR_SEND_FATAL_ALERT);
	else
		snprintf(buf, sizeof(buf), "TLS error %d", e);
	return buf;
}
