#!/usr/bin/env python3
"""test/e2e_tls.py - end-to-end tests of TLS termination in the proxy: the
real binary with a [tls] listener between curl / openssl s_client / Python
ssl clients and the test origin (test/origin.py), and in front of a TLS
backend (openssl s_server).

    python3 test/e2e_tls.py [FILTER]

FILTER selects the tests whose name contains it. Prints `ok NAME` or
`FAIL NAME: reason` per test, `# ...` information lines, and last
`e2e_tls: N passed, N failed`; exits non-zero on any failure.

tls.c on its own (suites, versions, PEM parsing, engine pump) is tested by
test/tls_test.sh through test/tlsecho; this file tests the proxy: SNI
certificate choice, resumption, ALPN, X-Forwarded-Proto, redirect_http and
hsts, hostile handshakes, the engine pool, TLS backends, certificate
reload on SIGHUP and config checks (-t).

The certificates (a test CA, a second CA, EC P-256 and RSA-2048 leaves, an
expired leaf) are made once per run with openssl in a temp dir. Everything
listens on 127.0.0.1; every process started here is stopped by its PID.

Environment: PROXY_BIN (default test/proxy-san) is the binary under test;
each proxy must exit 0 on SIGTERM and print no sanitizer report.
"""

import hashlib
import json
import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

import e2e as E  # noqa: E402
from e2e import (Conn, Env, Proxy, TmpDir, check, conf_text,  # noqa: E402
                 curl, expect_status, free_port, info, req, short)
import origin as om  # noqa: E402

PROXY_BIN = E.PROXY_BIN
TEST_TIMEOUT = 45           # seconds for one test, whatever it does
MB = 1024 * 1024
HEADER_TIMEOUT = 2.0        # E.DEFAULT_PROXY's header_timeout
CLOSE_SLACK = 1.0           # timer granularity on top of a timeout



# ------------------------------------------------------------ certificates

class Certs:
    """The test PKI, made once (lazily: a filtered run may not need it)."""

    def __init__(self):
        self.tmp = TmpDir()
        self.d = self.tmp.path

    def p(self, name):
        return os.path.join(self.d, name)

    def sh(self, *args):
        r = subprocess.run(list(args), cwd=self.d, capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=60)
        if r.returncode != 0:
            raise AssertionError("setup failed: %s: %s" % (
                " ".join(args), short(r.stderr, 400)))

    def ec_key(self, name):
        self.sh("openssl", "genpkey", "-algorithm", "EC", "-pkeyopt",
                "ec_paramgen_curve:P-256", "-out", name + ".key")

    def ca(self, name, cn):
        self.ec_key(name)
        self.sh("openssl", "req", "-x509", "-new", "-key", name + ".key",
                "-out", name + ".pem", "-subj", "/CN=" + cn, "-days", "30")

    def leaf(self, name, cn, sans, rsa=False, ca="ca", serial=None):
        if rsa:
            self.sh("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt",
                    "rsa_keygen_bits:2048", "-out", name + ".key")
        else:
            self.ec_key(name)
        self.sh("openssl", "req", "-new", "-key", name + ".key", "-out",
                name + ".csr", "-subj", "/CN=" + cn)
        with open(self.p(name + ".ext"), "w") as f:
            f.write("subjectAltName=%s\n" % ",".join(
                "DNS:" + s for s in sans))
        args = ["openssl", "x509", "-req", "-in", name + ".csr", "-CA",
                ca + ".pem", "-CAkey", ca + ".key", "-out", name + ".pem",
                "-days", "10", "-extfile", name + ".ext"]
        args += ["-set_serial", str(serial)] if serial else [
            "-CAcreateserial"]
        self.sh(*args)

    def make(self):
        t0 = time.monotonic()
        self.ca("ca", "E2E Test CA")
        self.ca("ca2", "E2E Other CA")
        # the default certificate: EC P-256, a.test and *.wild.test
        self.leaf("a", "a.test", ["a.test", "*.wild.test"], serial=1001)
        # [cert b]: RSA-2048
        self.leaf("b", "b.test", ["b.test"], rsa=True, serial=1002)
        # the replacement for a on reload: same names, another CN and serial
        self.leaf("a2", "a2.test", ["a.test", "*.wild.test"], serial=1003)
        # a TLS backend reached as localhost
        self.leaf("lh", "localhost", ["localhost"], serial=1004)
        # a key that matches nothing
        self.ec_key("other")
        # a's key, encrypted
        self.sh("openssl", "pkey", "-in", "a.key", "-aes256", "-passout",
                "pass:secret", "-out", "enc.key")
        # an expired leaf (openssl ca can set dates in the past)
        self.ec_key("exp")
        self.sh("openssl", "req", "-new", "-key", "exp.key", "-out",
                "exp.csr", "-subj", "/CN=exp.test")
        os.mkdir(self.p("cadb"))
        open(self.p("cadb/index.txt"), "w").close()
        with open(self.p("cadb/serial"), "w") as f:
            f.write("1005\n")
        with open(self.p("ca.cnf"), "w") as f:
            f.write("[ca]\ndefault_ca = d\n[d]\ndatabase = %s\n"
                    "serial = %s\nnew_certs_dir = %s\ndefault_md = sha256\n"
                    "policy = p\n[p]\ncommonName = supplied\n" % (
                        self.p("cadb/index.txt"), self.p("cadb/serial"),
                        self.p("cadb")))
        self.sh("openssl", "ca", "-batch", "-config", "ca.cnf", "-cert",
                "ca.pem", "-keyfile", "ca.key", "-in", "exp.csr", "-out",
                "expired.pem", "-startdate", "20200101000000Z", "-enddate",
                "20200102030405Z", "-notext")
        info("certificates made in %.1fs" % (time.monotonic() - t0))
        return self

    def der(self, name):
        """The DER bytes of the first certificate in NAME.pem."""
        with open(self.p(name + ".pem")) as f:
            text = f.read()
        m = re.search(r"-----BEGIN CERTIFICATE-----.*?"
                      r"-----END CERTIFICATE-----", text, re.S)
        return ssl.PEM_cert_to_DER_cert(m.group(0))

    def fp(self, name):
        return hashlib.sha256(self.der(name)).hexdigest()


_certs = None


def certs():
    global _certs
    if _certs is None:
        c = Certs()
        try:
            _certs = c.make()
        except BaseException:
            c.tmp.remove()
            raise
    return _certs


# ----------------------------------------------------------------- helpers

def tls_section(c, port, tls=None, extra=""):
    """[tls] with the a.test certificate as default and [cert b]."""
    keys = {"listen": "127.0.0.1:%d" % port, "cert": c.p("a.pem"),
            "key": c.p("a.key")}
    keys.update(tls or {})
    lines = ["", "[tls]"]
    for k, v in keys.items():
        if v is not None:
            lines.append("%s = %s" % (k, v))
    lines += ["", "[cert b]", "hosts = b.test", "cert = " + c.p("b.pem"),
              "key = " + c.p("b.key")]
    return "\n".join(lines) + "\n" + extra


class TEnv(Env):
    """An Env whose proxy also listens for TLS on self.tls_port.

    tls: overrides of the [tls] keys (None removes one); extra: more
    config text appended; conf_edit: a function applied to the text."""

    def __init__(self, tls=None, extra="", conf_edit=None, **kw):
        kw["start"] = False
        super().__init__(**kw)
        self.tls_over = tls
        self.extra = extra
        self.conf_edit = conf_edit

    def __enter__(self):
        self.c = certs()
        super().__enter__()
        try:
            self.tls_port = free_port()
            self.conf = self.conf + tls_section(self.c, self.tls_port,
                                                self.tls_over, self.extra)
            if self.conf_edit:
                self.conf = self.conf_edit(self.conf)
            self.proxy = Proxy(self.tmp, self.conf, self.port, None,
                               self.envx)
            self.proxy.start()
            wait_port(self.tls_port)
        except BaseException:
            self._cleanup()
            raise
        return self

    def turl(self, name, path):
        return "https://%s:%d%s" % (name, self.tls_port, path)

    def tcurl(self, name, path, args=(), timeout=20):
        """curl over TLS to NAME (resolved to 127.0.0.1), verified."""
        return curl(["--resolve", "%s:%d:127.0.0.1" % (name, self.tls_port),
                     "--cacert", self.c.p("ca.pem")] + list(args) +
                    [self.turl(name, path)], timeout, self.tmp)

    def status(self):
        """The status page as JSON, over the plain listener."""
        code, h, body, err = curl([self.url("/.proxy/status?json")], 10)
        check(code == 200, "status page: %d %s" % (code, err))
        return json.loads(body)

    def tls_sock(self, name="a.test", timeout=5.0):
        """A verified Python ssl connection, handshake done."""
        ctx = ssl.create_default_context(cafile=self.c.p("ca.pem"))
        s = socket.create_connection(("127.0.0.1", self.tls_port),
                                     timeout=timeout)
        try:
            t = ctx.wrap_socket(s, server_hostname=name)
        except BaseException:
            s.close()
            raise
        self.conns.append(SslConn(t))
        return self.conns[-1]


class SslConn(Conn):
    """e2e.Conn's response reader over an ssl socket."""

    def __init__(self, sock, timeout=5.0):
        self.s = sock
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.send_error = None

    def _fill(self, timeout=None):
        if self.eof:
            return False
        self.s.settimeout(self.timeout if timeout is None else timeout)
        try:
            d = self.s.recv(1 << 16)
        except (ConnectionResetError, ssl.SSLEOFError,
                ssl.SSLZeroReturnError):
            self.eof = True
            return False
        except ssl.SSLError as ex:
            if "timed out" in str(ex):
                raise TimeoutError(str(ex))
            self.eof = self.reset = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def get(self, path, host="a.test"):
        check(self.send(req("GET", path, host=host)),
              "send on a TLS connection failed: %s" % self.send_error)
        r, _ = self.read_final()
        return r


def wait_port(port, timeout=5.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if E.port_open(port):
            return
        time.sleep(0.02)
    raise AssertionError("nothing listens on %d after %.0fs" % (port,
                                                                timeout))


def s_client(port, args, timeout=15, stdin=b""):
    """openssl s_client to 127.0.0.1:port; (rc, stdout+stderr)."""
    p = subprocess.run(["openssl", "s_client", "-connect",
                        "127.0.0.1:%d" % port] + list(args),
                       input=stdin, capture_output=True, timeout=timeout,
                       env=E.proxy_env())
    return p.returncode, (p.stdout + p.stderr).decode("latin-1")


def served_cert(text):
    """The DER of the server certificate s_client printed, or None."""
    m = re.search(r"-----BEGIN CERTIFICATE-----.*?-----END CERTIFICATE-----",
                  text, re.S)
    return ssl.PEM_cert_to_DER_cert(m.group(0)) if m else None


def cert_summary(der):
    """Subject, issuer and key type of a DER certificate, for messages."""
    if der is None:
        return "no certificate"
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout",
                        "-subject", "-issuer", "-text"], input=der,
                       capture_output=True, timeout=10)
    t = p.stdout.decode("latin-1")
    sub = re.search(r"^subject=(.*)$", t, re.M)
    iss = re.search(r"^issuer=(.*)$", t, re.M)
    alg = re.search(r"Public Key Algorithm: (\S+)", t)
    return "subject=%s issuer=%s key=%s" % (
        sub and sub.group(1).strip(), iss and iss.group(1).strip(),
        alg and alg.group(1))


def key_type(der):
    p = subprocess.run(["openssl", "x509", "-inform", "DER", "-noout",
                        "-text"], input=der, capture_output=True, timeout=10)
    m = re.search(r"Public Key Algorithm: (\S+)", p.stdout.decode())
    return m.group(1) if m else None


def proc_wait(p, timeout):
    try:
        p.wait(timeout)
        return True
    except subprocess.TimeoutExpired:
        return False


def client_hello(name="a.test"):
    """The bytes of a real TLS 1.2 ClientHello (Python ssl, memory BIO)."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    inc, out = ssl.MemoryBIO(), ssl.MemoryBIO()
    t = ctx.wrap_bio(inc, out, server_hostname=name)
    try:
        t.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return out.read()


def wait_log(proxy, pattern, timeout=5.0, start=0):
    """Wait for a regex in the proxy's stderr after offset start."""
    end = time.monotonic() + timeout
    while True:
        m = re.search(pattern, proxy.stderr()[start:])
        if m or time.monotonic() > end:
            return m
        time.sleep(0.05)


# ---------------------------------------------------------------- registry

TESTS = []


def test(fn):
    TESTS.append((fn.__name__, fn))
    return fn


# ------------------------------------------------------------------- tests

@test
def tls_basic():
    big_down, big_up = 50 * MB, 20 * MB
    with TEnv(proxy={"max_body": "64M"}) as e:
        # a verified GET, and what the origin saw
        code, h, body, err = e.tcurl("a.test", "/")
        check(code == 200 and body == om.HELLO,
              "GET over TLS: %d %s %s" % (code, short(body), err))
        code, h, body, err = curl([e.url("/")], 10)
        check(code == 200 and body == om.HELLO,
              "plain GET: %d %s %s" % (code, short(body), err))
        seen = e.origin.snapshot()
        check(len(seen) == 2, "origin saw %r" % seen)
        protos = [r.all("X-Forwarded-Proto") for r in seen]
        check(protos == [["https"], ["http"]],
              "X-Forwarded-Proto over TLS then plain: %r" % protos)

        # 50 MB down, byte-exact
        t0 = time.monotonic()
        p = subprocess.Popen(
            ["curl", "-sS", "--noproxy", "*", "--max-time", "40",
             "--resolve", "a.test:%d:127.0.0.1" % e.tls_port, "--cacert",
             e.c.p("ca.pem"), e.turl("a.test", "/large?size=%d" % big_down)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=E.proxy_env())
        hs = hashlib.sha256()
        n = 0
        while True:
            d = p.stdout.read(1 << 20)
            if not d:
                break
            hs.update(d)
            n += len(d)
        proc_wait(p, 10)
        err = p.stderr.read().decode("latin-1")
        check(p.returncode == 0 and n == big_down,
              "50 MB download: curl exit %s, %d bytes: %s" % (
                  p.returncode, n, err))
        check(hs.hexdigest() == om.large_sha256(big_down),
              "50 MB download: sha256 differs")
        info("tls_basic: 50 MB download over TLS in %.1fs" % (
            time.monotonic() - t0))

        # 20 MB up, byte-exact as the origin hashed it
        path = e.tmp.file("up.bin")
        hs = hashlib.sha256()
        with open(path, "wb") as f:
            for ch in om.large_chunks(big_up, MB):
                f.write(ch)
                hs.update(ch)
        t0 = time.monotonic()
        code, h, body, err = e.tcurl(
            "a.test", "/upload", ["--data-binary", "@" + path, "-H",
                                  "Content-Type: application/octet-stream"],
            40)
        want = b"%d %s\n" % (big_up, hs.hexdigest().encode())
        check(code == 200 and body == want, "20 MB upload: %d %s (want %s) "
              "%s" % (code, short(body), short(want), err))
        info("tls_basic: 20 MB upload over TLS in %.1fs" % (
            time.monotonic() - t0))

        # keep-alive: 20 requests over one TLS connection
        before = e.status()["connections"]["total"]
        p = subprocess.run(
            ["curl", "-sS", "-v", "--noproxy", "*", "--max-time", "20",
             "--resolve", "a.test:%d:127.0.0.1" % e.tls_port, "--cacert",
             e.c.p("ca.pem")] + [e.turl("a.test", "/?n=%d" % i)
                                 for i in range(20)],
            capture_output=True, timeout=30, env=E.proxy_env())
        err = p.stderr.decode("latin-1")
        check(p.returncode == 0 and p.stdout == om.HELLO * 20,
              "20 keep-alive requests: exit %d, %d bytes: %s" % (
                  p.returncode, len(p.stdout), short(err[-400:], 400)))
        reused = err.count("Re-using existing connection")
        after = e.status()["connections"]["total"]
        # the difference: curl's one connection and the second status fetch
        check(reused == 19 and after - before == 2,
              "20 requests: curl re-used its connection %d times (want 19),"
              " the proxy accepted %d connections (want 1 + the status "
              "request)" % (reused, after - before - 1))


@test
def tls_sni():
    with TEnv() as e:
        c = e.c
        cases = [("a.test", "a"), ("x.wild.test", "a"), ("b.test", "b"),
                 ("unknown.test", "a"), (None, "a")]
        for name, want in cases:
            args = ["-servername", name] if name else ["-noservername"]
            rc, out = s_client(e.tls_port, args + ["-CAfile",
                                                   c.p("ca.pem")])
            der = served_cert(out)
            check(der == c.der(want),
                  "SNI %s: want the %s certificate (%s), got %s" % (
                      name or "(none)", want, cert_summary(c.der(want)),
                      cert_summary(der)))
            check("Verify return code: 0 (ok)" in out,
                  "SNI %s: s_client did not verify it against the CA: %s" % (
                      name, short(out[-300:], 300)))
        kt = (key_type(c.der("a")), key_type(c.der("b")))
        check(kt == ("id-ecPublicKey", "rsaEncryption"),
              "key types of a and b: %r" % (kt,))
        # curl, verifying host name and chain, gets through for each name
        for name in ("a.test", "x.wild.test", "b.test"):
            code, h, body, err = e.tcurl(name, "/")
            check(code == 200 and body == om.HELLO,
                  "curl to %s: %d %s %s" % (name, code, short(body), err))


@test
def tls_resumption():
    with TEnv() as e:
        rc, out = s_client(e.tls_port, ["-servername", "a.test", "-reconnect",
                                        "-CAfile", e.c.p("ca.pem")], 20)
        new = len(re.findall(r"^New, TLSv1\.2", out, re.M))
        reused = len(re.findall(r"^Reused, TLSv1\.2", out, re.M))
        info("tls_resumption: s_client -reconnect: %d new, %d reused" % (
            new, reused))
        check(new >= 1, "no handshake at all: %s" % short(out[-400:], 400))
        check(reused >= 1, "no session reused (%d new handshakes)" % new)


@test
def tls_alpn():
    with TEnv() as e:
        rc, out = s_client(e.tls_port, ["-servername", "a.test", "-alpn",
                                        "http/1.1"])
        check("ALPN protocol: http/1.1" in out,
              "ALPN http/1.1 not negotiated: %s" % short(
                  "\n".join(ln for ln in out.splitlines()
                            if "ALPN" in ln or "Cipher" in ln), 300))
        # the request works on that connection too
        rc, out = s_client(e.tls_port, [
            "-servername", "a.test", "-alpn", "http/1.1", "-quiet",
            "-ign_eof"], stdin=req("GET", "/", host="a.test", headers=[
                "Connection: close"]))
        check(om.HELLO.decode() in out,
              "GET over s_client -alpn: %s" % short(out[-300:], 300))
        # TLS 1.1: OpenSSL 3 only sends it at security level 0
        rc, out = s_client(e.tls_port, ["-servername", "a.test", "-tls1_1",
                                        "-cipher", "DEFAULT:@SECLEVEL=0"])
        check(rc != 0 and re.search(r"Cipher is \(NONE\)|"
                                    r"no peer certificate available", out),
              "TLS 1.1 was not refused (exit %d): %s" % (rc, short(
                  out[-400:], 400)))
        # ... and it was the server that said no to a ClientHello sent
        check(re.search(r"written [1-9]\d* bytes", out) and
              re.search(r"wrong version number|alert protocol version|"
                        r"unsupported protocol|alert handshake failure", out),
              "TLS 1.1: no ClientHello sent or no refusal seen: %s" % short(
                  out[-400:], 400))
        # the proxy survives it
        code, h, body, err = e.tcurl("a.test", "/")
        check(code == 200, "GET after the TLS 1.1 attempt: %d %s" % (
            code, err))


@test
def tls_redirect_hsts():
    with TEnv(tls={"redirect_http": "yes", "hsts": "300"}) as e:
        c = e.conn()
        c.send(req("GET", "/p?q=1", host="a.test:%d" % e.port))
        r, _ = c.read_final()
        expect_status(r, 301, "plain request with redirect_http")
        want = "https://a.test:%d/p?q=1" % e.tls_port
        check(r.h("Location") == want, "Location %r, want %r" % (
            r.h("Location"), want))
        check(r.h("Strict-Transport-Security") is None,
              "HSTS on a plain 301: %r" % r)
        # keep-alive survives the redirect; HTTP/1.0 and a bare host too
        c.send(req("GET", "/x", host="a.test"))
        r, _ = c.read_final()
        expect_status(r, 301, "second request on the connection")
        check(r.h("Location") == "https://a.test:%d/x" % e.tls_port,
              "Location for Host a.test: %r" % r.h("Location"))
        time.sleep(0.1)
        check(e.origin.count() == 0,
              "origin saw the redirected requests: %r" % e.origin.snapshot())
        # TLS requests are served, with HSTS
        code, h, body, err = e.tcurl("a.test", "/?q=1")
        check(code == 200 and body == om.HELLO, "TLS GET: %d %s %s" % (
            code, short(body), err))
        sts = re.findall(r"(?im)^Strict-Transport-Security:\s*(.*?)\s*$", h)
        check(sts == ["max-age=300"], "TLS response HSTS %r: %s" % (
            sts, short(h, 400)))
        seen = e.origin.snapshot()
        check(len(seen) == 1 and seen[0].target == "/?q=1",
              "origin saw %r" % seen)
    with TEnv(tls={"hsts": "300"}) as e:
        code, h, body, err = curl([e.url("/")], 10)
        check(code == 200 and body == om.HELLO, "plain GET: %d %s" % (
            code, err))
        check("strict-transport-security" not in h.lower(),
              "HSTS on a plain response: %s" % short(h, 400))
        code, h, body, err = e.tcurl("a.test", "/")
        check(code == 200 and re.search(
            r"(?im)^Strict-Transport-Security: max-age=300\r?$", h),
            "TLS response without HSTS max-age=300: %s" % short(h, 400))


@test
def tls_hsts_own_answers():
    # README: hsts is the max-age "on TLS responses"; the answers the
    # proxy makes itself over TLS (status page, errors) are TLS responses.
    with TEnv(tls={"hsts": "300"},
              routes=[("a", [("host", "a.test"), ("backend", "web")])]) as e:
        sc = e.tls_sock()
        r = sc.get("/")
        expect_status(r, 200, "forwarded over TLS")
        check(r.h("Strict-Transport-Security") == "max-age=300",
              "forwarded response over TLS without HSTS: %r" % r)
        missing = []
        r = sc.get("/.proxy/status")
        expect_status(r, 200, "status page over TLS")
        if r.h("Strict-Transport-Security") != "max-age=300":
            missing.append("status page 200")
        r = sc.get("/", host="other.test")
        expect_status(r, 404, "no route over TLS")
        if r.h("Strict-Transport-Security") != "max-age=300":
            missing.append("404 (no route)")
        check(not missing, "no Strict-Transport-Security: max-age=300 on "
              "the proxy's own answers over TLS: %s" % ", ".join(missing))


@test
def tls_parked_clients():
    """Idle TLS keep-alive clients are parked (out of the poll table)
    like plain ones once their engine holds nothing; the next request
    on each brings it back, answered in full."""
    with TEnv() as e:
        conns = [e.tls_sock() for _ in range(5)]
        for i, c in enumerate(conns):
            r = c.get("/fixed?text=one%d" % i)
            check(r.status == 200 and r.body == b"one%d" % i,
                  "first request on TLS connection %d: %r" % (i, r))
        end = time.monotonic() + 4
        while e.status()["connections"]["parked"] < 5 and \
                time.monotonic() < end:
            time.sleep(0.1)
        full = e.status()
        st = full["connections"]
        check(st["parked"] >= 5, "parked %s after 4s idle" % st)
        check(full["reserved"]["tls"] > 0, "no TLS engines among the "
              "reserved memory: %s" % full["reserved"])
        for i, c in enumerate(conns):
            r = c.get("/fixed?text=two%d" % i)
            check(r.status == 200 and r.body == b"two%d" % i,
                  "parked TLS connection %d, second request: %r" % (i, r))
        info("tls_parked_clients: %d parked, all answered after" %
             st["parked"])


def tconn(e, timeout=10.0):
    """A raw TCP connection to the TLS listener."""
    c = Conn(e.tls_port, timeout)
    e.conns.append(c)
    return c


def wait_all_closed(conns, deadline):
    """Read from every connection until it closes or the deadline;
    {name: seconds from start to its close, or None}, and bytes got."""
    start = time.monotonic()
    left = dict(conns)
    closed = {k: None for k in conns}
    got = {k: b"" for k in conns}
    while left and time.monotonic() < deadline:
        for k, c in list(left.items()):
            c.s.settimeout(0.02)
            try:
                d = c.s.recv(65536)
            except (socket.timeout, TimeoutError):
                continue
            except OSError:
                d = b""
            if d:
                got[k] += d
                continue
            closed[k] = time.monotonic() - start
            del left[k]
    return closed, got


@test
def tls_garbage():
    limit = HEADER_TIMEOUT + CLOSE_SLACK
    with TEnv(proxy={"idle_timeout": "10s"}) as e:
        code, h, body, err = e.tcurl("a.test", "/")
        check(code == 200, "warm-up: %d %s" % (code, err))
        before = e.tls_sock()
        r = before.get("/fixed?text=before")
        expect_status(r, 200, "keep-alive TLS request before")
        base = e.status()["connections"]["current"]
        hello = client_hello()
        check(len(hello) > 100 and hello[0] == 0x16,
              "ClientHello %s" % short(hello))
        t0 = time.monotonic()
        bad = {}
        # a TLS handshake record header with random bytes behind it, and
        # random bytes alone
        bad["garbage"] = tconn(e)
        bad["garbage"].send(b"\x16\x03\x03\x00\x10" + os.urandom(16) +
                            os.urandom(700))
        bad["random"] = tconn(e)
        bad["random"].send(os.urandom(700))
        # a ClientHello cut in the middle, the connection left open
        bad["cut ClientHello"] = tconn(e)
        bad["cut ClientHello"].send(hello[:len(hello) // 2])
        # plain HTTP to the TLS port
        bad["plain HTTP"] = tconn(e)
        bad["plain HTTP"].send(req("GET", "/", host="a.test"))
        # a whole ClientHello, the server's flight read, then silence
        half = tconn(e)
        half.send(hello)
        check(half._fill(3) and half.buf[:1] == b"\x16",
              "no ServerHello for a whole ClientHello: %s" % short(half.buf))
        bad["half handshake"] = half
        # meanwhile: a new TLS client and the keep-alive one are served
        code, h, body, err = e.tcurl("a.test", "/?t=meanwhile")
        check(code == 200 and body == om.HELLO,
              "TLS request while the bad connections are open: %d %s" % (
                  code, err))
        r = before.get("/fixed?text=meanwhile2")
        expect_status(r, 200, "keep-alive TLS request meanwhile")
        check(time.monotonic() - t0 < HEADER_TIMEOUT,
              "the good requests took %.1fs" % (time.monotonic() - t0))
        closed, got = wait_all_closed(
            {k: c for k, c in bad.items()}, t0 + limit + 2)
        info("tls_garbage: closed after %s" % ", ".join(
            "%s %s" % (k, "%.2fs" % v if v is not None else "never")
                for k, v in closed.items()))
        late = {k: v for k, v in closed.items() if v is None or v > limit}
        check(not late, "not closed within header_timeout %.0fs + %.0fs: %s"
              % (HEADER_TIMEOUT, CLOSE_SLACK, late))
        check(not any(b"HTTP/1." in v and b"200" in v for v in got.values()),
              "a bad connection got an answer: %r" % got)
        targets = [r.target for r in e.origin.snapshot()]
        check(targets == ["/", "/fixed?text=before", "/?t=meanwhile",
                          "/fixed?text=meanwhile2"],
              "the origin saw %r (a bad connection got through?)" % targets)
        # after: new and old clients still served, the counts back
        code, h, body, err = e.tcurl("a.test", "/?t=after")
        check(code == 200 and body == om.HELLO,
              "TLS request after: %d %s" % (code, err))
        r = before.get("/fixed?text=after2")
        expect_status(r, 200, "keep-alive TLS request after")
        st = e.status()
        check(st["connections"]["current"] == base,
              "connections current %d after the bad ones closed, %d before"
              % (st["connections"]["current"], base))


@test
def tls_pool_full():
    with TEnv(tls={"connections": "2"},
              proxy={"idle_timeout": "30s", "header_timeout": "10s"}) as e:
        time.sleep(0.2)   # TEnv's port probe held an engine for a moment
        held = [e.tls_sock(), e.tls_sock()]
        for i, h in enumerate(held):
            r = h.get("/fixed?text=held%d" % i)
            expect_status(r, 200, "held connection %d" % i)
        p = subprocess.Popen(
            ["curl", "-sS", "--noproxy", "*", "--max-time", "20",
             "--resolve", "a.test:%d:127.0.0.1" % e.tls_port, "--cacert",
             e.c.p("ca.pem"), e.turl("a.test", "/fixed?text=third")],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            env=E.proxy_env())
        try:
            time.sleep(1.5)
            if p.poll() is not None:
                check(False, "the third client did not wait: curl exit %s, "
                      "%s %s" % (p.returncode, short(p.stdout.read()),
                                 p.stderr.read().decode("latin-1")))
            targets = [r.target for r in e.origin.snapshot()]
            check("/fixed?text=third" not in targets,
                  "the third request was served with both engines held")
            # the plain listener is not affected
            st = e.status()
            info("tls_pool_full: while full: connections current %d" %
                 st["connections"]["current"])
            t0 = time.monotonic()
            held[0].close()
            done = proc_wait(p, 10)
            dt = time.monotonic() - t0
            out = p.stdout.read() if done else b""
            err = p.stderr.read().decode("latin-1") if done else ""
            check(done and p.returncode == 0 and out == b"third",
                  "the third client after an engine came back: exit %s, "
                  "%s %s" % (p.returncode, short(out), err))
            info("tls_pool_full: third client served %.2fs after a held "
                 "connection closed" % dt)
            check(dt < 3, "the third client waited %.1fs after an engine "
                  "came back" % dt)
        finally:
            if p.poll() is None:
                p.kill()
                p.wait(5)
            p.stdout.close()
            p.stderr.close()
        r = held[1].get("/fixed?text=held1-again")
        expect_status(r, 200, "the other held connection afterwards")


def s_server(tmp, c, name):
    """openssl s_server -www on 127.0.0.1 with NAME.pem/NAME.key; (proc,
    port). The caller stops it."""
    port = free_port()
    log = open(tmp.file("s_server-%d.log" % port), "wb")
    p = subprocess.Popen(
        ["openssl", "s_server", "-www", "-accept", "127.0.0.1:%d" % port,
         "-cert", c.p(name + ".pem"), "-key", c.p(name + ".key")],
        stdin=subprocess.DEVNULL, stdout=log, stderr=log)
    log.close()
    try:
        wait_port(port)
    except BaseException:
        p.kill()
        p.wait(5)
        raise
    return p, port


def stop_proc(p):
    if p.poll() is None:
        p.terminate()
        if not proc_wait(p, 5):
            p.kill()
            p.wait(5)


def backend_tls(ca):
    """conf_edit: the backend is localhost:PORT tls, with ca."""
    def edit(port):
        def f(text):
            new, n = re.subn(r"(?m)^server = 127\.0\.0\.1:\d+$",
                             "server = localhost:%d tls\nca = %s" % (
                                 port, ca), text, count=1)
            check(n == 1, "no server line in %s" % text)
            return new
        return f
    return edit


@test
def tls_backend():
    c = certs()
    gai = socket.getaddrinfo("localhost", 1, type=socket.SOCK_STREAM)
    check(gai and gai[0][4][0] == "127.0.0.1",
          "localhost does not resolve to 127.0.0.1 first: %r" % gai)
    tmp = TmpDir()
    procs = []
    try:
        good, gport = s_server(tmp, c, "lh")
        procs.append(good)
        wrong, wport = s_server(tmp, c, "a")   # names a.test, not localhost
        procs.append(wrong)
        # the backend's certificate verified against the CA
        with TEnv(conf_edit=backend_tls(c.p("ca.pem"))(gport)) as e:
            for i in range(3):
                code, h, body, err = curl([e.url("/")], 10)
                check(code == 200 and b"s_server" in body,
                      "plain client, TLS backend, request %d: %d %s %s" % (
                          i, code, short(body), err))
            code, h, body, err = e.tcurl("a.test", "/")
            check(code == 200 and b"s_server" in body,
                  "TLS client, TLS backend: %d %s %s" % (
                      code, short(body), err))
            check(e.origin.count() == 0, "the plain origin was used")
        # the same backend, trust anchors of another CA: 502, logged;
        # a certificate that does not name localhost: 502, logged
        unlogged = []
        for what, ca, port, pattern in (
                ("untrusted", "ca2.pem", gport, "not trusted"),
                ("wrong name", "ca.pem", wport, "does not name")):
            with TEnv(conf_edit=backend_tls(c.p(ca))(port)) as e:
                code, h, body, err = curl([e.url("/")], 10)
                check(code == 502, "backend %s: %d %s" % (
                    what, code, short(body)))
                m = wait_log(e.proxy, r"(?i)[^\n]*%s[^\n]*" % pattern, 2)
                log = e.proxy.stderr()
                if not m:
                    unlogged.append("%s: %s" % (what, " | ".join(
                        ln for ln in log.splitlines()
                        if "localhost:%d" % port in ln)))
                else:
                    info("tls_backend: %s: %s" % (what, m.group(0).strip()))
        check(not unlogged, "the log does not name the verification "
              "failure: %s" % "; ".join(unlogged))
    finally:
        for p in procs:
            stop_proc(p)
        tmp.remove()


@test
def tls_reload_cert():
    c = certs()
    pem, key = c.p("reload.pem"), c.p("reload.key")
    for src, dst in (("a.pem", pem), ("a.key", key)):
        with open(c.p(src), "rb") as f, open(dst, "wb") as g:
            g.write(f.read())
    with TEnv(tls={"cert": pem, "key": key},
              proxy={"idle_timeout": "20s"}) as e:
        k = e.tls_sock()
        check(k.s.getpeercert(True) == c.der("a"),
              "before the reload: %s" % cert_summary(k.s.getpeercert(True)))
        expect_status(k.get("/fixed?text=k1"), 200,
                      "keep-alive connection, before")

        def hup(pattern):
            off = len(e.proxy.stderr())
            os.kill(e.proxy.pid, signal.SIGHUP)
            m = wait_log(e.proxy, pattern, 5, off)
            check(m, "after SIGHUP no %r in the log: %s" % (
                pattern, short(e.proxy.stderr()[off:], 600)))
            return e.proxy.stderr()[off:]

        for src, dst in (("a2.pem", pem), ("a2.key", key)):
            with open(c.p(src), "rb") as f, open(dst, "wb") as g:
                g.write(f.read())
        hup(r"reloaded|reload failed")
        n = e.tls_sock()
        check(n.s.getpeercert(True) == c.der("a2"),
              "new connection after the reload: %s (want %s)" % (
                  cert_summary(n.s.getpeercert(True)),
                  cert_summary(c.der("a2"))))
        expect_status(n.get("/fixed?text=n1"), 200,
                      "new connection after the reload")
        expect_status(k.get("/fixed?text=k2"), 200,
                      "keep-alive connection opened before the reload")
        bconn = e.tls_sock("b.test")
        check(bconn.s.getpeercert(True) == c.der("b"),
              "[cert b] after the reload: %s" % cert_summary(
                  bconn.s.getpeercert(True)))

        # a key that does not match: refused, the old set kept
        with open(c.p("other.key"), "rb") as f, open(key, "wb") as g:
            g.write(f.read())
        log = hup(r"reloaded|reload failed[^\n]*")
        m = re.search(r"[^\n]*reload failed[^\n]*", log)
        check(m and key in m.group(0),
              "a mismatched key was not refused naming %s: %s" % (
                  key, short(log, 600)))
        check("reloaded" not in log, "reloaded with a mismatched key: %s" %
              short(log, 600))
        info("tls_reload_cert: %s" % m.group(0).strip())
        m2 = e.tls_sock()
        check(m2.s.getpeercert(True) == c.der("a2"),
              "after the refused reload: %s (want %s)" % (
                  cert_summary(m2.s.getpeercert(True)),
                  cert_summary(c.der("a2"))))
        expect_status(m2.get("/fixed?text=m1"), 200,
                      "after the refused reload")
        expect_status(k.get("/fixed?text=k3"), 200,
                      "the first connection, at the end")
        code, h, body, err = e.tcurl("x.wild.test", "/")
        check(code == 200, "curl after the refused reload: %d %s" % (
            code, err))


@test
def tls_config_errors():
    c = certs()
    tmp = TmpDir()
    try:
        def conf(tls=None, extra=""):
            return conf_text(free_port(), None, [("web", [free_port()])],
                             [("all", [("backend", "web")])]) + \
                tls_section(c, free_port(), tls, extra)

        def run(name, text):
            path = tmp.file(name + ".ini", text)
            p = subprocess.run([PROXY_BIN, "-t", "-c", path],
                               capture_output=True, timeout=20,
                               stdin=subprocess.DEVNULL, env=E.proxy_env())
            out = (p.stdout + p.stderr).decode("latin-1")
            bad = E.san_lines(out)
            check(not bad, "%s: sanitizer: %s" % (name, bad[:3]))
            return p.returncode, out

        rc, out = run("good", conf())
        check(rc == 0, "a good config: -t exit %d: %s" % (rc, short(out,
                                                                     400)))
        missing = os.path.join(tmp.path, "missing.pem")
        cases = [
            ("encrypted key", {"key": c.p("enc.key")}, "", c.p("enc.key"),
             r"(?i)encrypt"),
            ("mismatched key", {"key": c.p("other.key")}, "",
             c.p("other.key"), r"(?i)match"),
            ("RSA key for the EC cert", {"key": c.p("b.key")}, "",
             c.p("b.key"), r"(?i)match"),
            ("expired cert", {"cert": c.p("expired.pem"),
                              "key": c.p("exp.key")}, "",
             c.p("expired.pem"), r"(?i)expired"),
            ("missing cert", {"cert": missing}, "", missing,
             r"(?i)no such file|cannot open"),
            ("missing key", {"key": missing}, "", missing,
             r"(?i)no such file|cannot open"),
            ("[cert] with a mismatched key", None,
             "\n[cert w]\nhosts = w.test\ncert = %s\nkey = %s\n" % (
                 c.p("b.pem"), c.p("a.key")), c.p("a.key"), r"(?i)match"),
        ]
        for name, tls, extra, file, word in cases:
            rc, out = run(re.sub(r"\W+", "-", name), conf(tls, extra))
            check(rc == 1 and file in out and re.search(word, out),
                  "%s: -t exit %d, want 1 naming %s (%s): %s" % (
                      name, rc, file, word, short(out, 400)))
        # a backend's ca that does not exist
        text = conf()
        text = re.sub(r"(?m)^server = 127\.0\.0\.1:(\d+)$",
                      r"server = localhost:\1 tls\nca = " + missing, text,
                      count=1)
        rc, out = run("missing-ca", text)
        check(rc == 1 and missing in out,
              "missing ca: -t exit %d, want 1 naming %s: %s" % (
                  rc, missing, short(out, 400)))
    finally:
        tmp.remove()


# ------------------------------------------------------------------ main

def main():
    try:
        return E.run_tests(TESTS, "e2e_tls", TEST_TIMEOUT)
    finally:
        if _certs is not None:
            _certs.tmp.remove()

if __name__ == "__main__":
    sys.exit(main())
