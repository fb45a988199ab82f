#!/usr/bin/env python3
"""test/e2e.py - end-to-end tests: the real binary between real clients
(curl, raw sockets) and the test origin (test/origin.py, run in-process so
each test can check what the origin saw).

    python3 test/e2e.py [FILTER]

FILTER selects the tests whose name contains it. Prints `ok NAME` or
`FAIL NAME: reason` per test, `# ...` information lines, and last
`e2e: N passed, N failed`; exits non-zero on any failure.

Environment: PROXY_BIN (default test/proxy-san) is the binary under test;
./proxy (the plain build) is used where the sanitizers would distort a
measurement: the RSS bound during the 100 MB transfers (*_rss_plain) and
the allocation counter (LD_PRELOAD test/alloccount.so). The sanitized
transfers still assert a flat RSS, with a wider bound (RSS_SLACK_SAN).

Every test starts its own proxy with its own config in a temp dir, on free
ports of 127.0.0.1, and stops it with SIGTERM by PID; the proxy must exit
0 and print no sanitizer report.
"""

import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

import origin as om  # noqa: E402
from origin import Origin  # noqa: E402

PROXY_BIN = os.path.abspath(os.environ.get("PROXY_BIN",
                                           os.path.join(ROOT, "test",
                                                        "proxy-san")))
PLAIN_BIN = os.path.join(ROOT, "proxy")
ALLOCCOUNT = os.path.join(ROOT, "test", "alloccount.so")

TEST_TIMEOUT = 90           # seconds for one test, whatever it does
BIG = 100 * 1024 * 1024     # the large transfers
MB = 1024 * 1024
RSS_SLACK_PLAIN = 8 * MB    # max - min VmRSS during a transfer, ./proxy
RSS_SLACK_SAN = 16 * MB     # the same for the sanitized build (documented
                            # wider: ASan's shadow and quarantine pages)

SAN_PATTERNS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer",
                "runtime error", "AddressSanitizer:DEADLYSIGNAL")

DEFAULT_PROXY = [
    ("log", "stderr"),
    ("max_connections", "64"),
    ("buffers", "32"),
    ("buffer_size", "16K"),
    ("max_body", "1M"),
    ("header_timeout", "2s"),
    ("idle_timeout", "5s"),
    ("backend_timeout", "3s"),
]


class TestTimeout(Exception):
    pass


# ------------------------------------------------------------------ helpers

def free_port():
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def port_open(port):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=0.5)
    except OSError:
        return False
    s.close()
    return True


def short(b, n=160):
    """A bytes value shortened for a one-line failure message."""
    if isinstance(b, str):
        b = b.encode("latin-1", "replace")
    r = repr(bytes(b[:n]))
    if len(b) > n:
        r += "...(%d bytes)" % len(b)
    return r


def req(method="GET", path="/", host="test.local", headers=(), body=None,
        version="HTTP/1.1"):
    """A well-formed request as bytes."""
    lines = ["%s %s %s" % (method, path, version)]
    if host is not None:
        lines.append("Host: %s" % host)
    lines.extend(headers)
    if body is not None and not any(
            h.lower().startswith(("content-length", "transfer-encoding"))
            for h in headers):
        lines.append("Content-Length: %d" % len(body))
    out = ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")
    return out + (body or b"")


def rss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("VmRSS:"):
                    return int(ln.split()[1])
    except OSError:
        pass
    return None


def proc_state(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for ln in f:
                if ln.startswith("State:"):
                    return ln.split()[1]
    except OSError:
        return None
    return "?"


class RssSampler(threading.Thread):
    """Samples a process's VmRSS (kB) every 20 ms until stopped."""

    def __init__(self, pid):
        super().__init__(daemon=True)
        self.pid = pid
        self.samples = []
        self._halt = threading.Event()

    def run(self):
        while not self._halt.is_set():
            v = rss_kb(self.pid)
            if v is not None:
                self.samples.append(v)
            self._halt.wait(0.02)

    def stop(self):
        self._halt.set()
        self.join(2)
        return self.samples


class Resp:
    def __init__(self):
        self.version = ""
        self.status = 0
        self.reason = ""
        self.headers = []
        self.raw_head = b""
        self.body = b""
        self.complete = True
        self.chunked = False
        self.trailers = []

    def all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def h(self, name):
        v = self.all(name)
        return v[0] if v else None

    def tokens(self, name):
        return [t.strip().lower() for v in self.all(name)
                for t in v.split(",") if t.strip()]

    def __repr__(self):
        return "<%d %s body=%s>" % (self.status, short(self.raw_head, 300),
                                    short(self.body, 80))


class Incomplete(Exception):
    pass


class Conn:
    """A raw client connection with a small HTTP/1.1 response reader."""

    def __init__(self, port, timeout=5.0):
        self.s = socket.create_connection(("127.0.0.1", port),
                                          timeout=timeout)
        self.timeout = timeout
        self.buf = bytearray()
        self.eof = False
        self.reset = False
        self.send_error = None

    def send(self, data):
        try:
            self.s.sendall(data)
            return True
        except (BrokenPipeError, ConnectionResetError, TimeoutError) as e:
            self.send_error = e
            return False

    def close(self):
        try:
            self.s.close()
        except OSError:
            pass

    def _fill(self, timeout=None):
        if self.eof:
            return False
        self.s.settimeout(self.timeout if timeout is None else timeout)
        try:
            d = self.s.recv(1 << 16)
        except ConnectionResetError:
            self.eof = self.reset = True
            return False
        if not d:
            self.eof = True
            return False
        self.buf += d
        return True

    def _need(self, n):
        while len(self.buf) < n:
            if not self._fill():
                raise Incomplete()

    def _line(self):
        while True:
            i = self.buf.find(b"\r\n")
            if i >= 0:
                ln = bytes(self.buf[:i])
                del self.buf[:i + 2]
                return ln
            if not self._fill():
                raise Incomplete()

    def read_response(self, head_req=False):
        """The next response (1xx ones too). Raises AssertionError when no
        complete head arrives; a body cut short gives complete=False."""
        try:
            while True:
                i = self.buf.find(b"\r\n\r\n")
                if i >= 0:
                    break
                if not self._fill():
                    raise AssertionError(
                        "connection %s before a response head; got %s" % (
                            "reset" if self.reset else "closed",
                            short(self.buf)))
        except TimeoutError:
            raise AssertionError("timed out waiting for a response head; "
                                 "got %s" % short(self.buf))
        r = Resp()
        r.raw_head = bytes(self.buf[:i + 4])
        del self.buf[:i + 4]
        lines = r.raw_head[:-4].split(b"\r\n")
        m = re.match(rb"(HTTP/\d\.\d) (\d\d\d)(?: (.*))?$", lines[0])
        if not m:
            raise AssertionError("bad status line %s" % short(lines[0]))
        r.version = m.group(1).decode()
        r.status = int(m.group(2))
        r.reason = (m.group(3) or b"").decode("latin-1")
        for ln in lines[1:]:
            k, sep, v = ln.partition(b":")
            if not sep:
                raise AssertionError("bad response header %s" % short(ln))
            r.headers.append((k.decode("latin-1"),
                              v.strip().decode("latin-1")))
        if head_req or r.status in (204, 304) or r.status < 200:
            return r
        try:
            if "chunked" in r.tokens("Transfer-Encoding"):
                r.chunked = True
                body = bytearray()
                while True:
                    ln = self._line()
                    size = int(ln.split(b";")[0].strip(), 16)
                    if size == 0:
                        break
                    self._need(size + 2)
                    body += self.buf[:size]
                    if self.buf[size:size + 2] != b"\r\n":
                        raise AssertionError("chunk not followed by CRLF")
                    del self.buf[:size + 2]
                while True:
                    ln = self._line()
                    if not ln:
                        break
                    r.trailers.append(ln)
                r.body = bytes(body)
            elif r.h("Content-Length") is not None:
                n = int(r.h("Content-Length"))
                try:
                    self._need(n)
                except Incomplete:
                    r.body = bytes(self.buf)
                    self.buf.clear()
                    r.complete = False
                    return r
                r.body = bytes(self.buf[:n])
                del self.buf[:n]
            else:
                while self._fill():
                    pass
                r.body = bytes(self.buf)
                self.buf.clear()
        except (Incomplete, TimeoutError, ValueError):
            r.body = bytes(self.buf)
            self.buf.clear()
            r.complete = False
        return r

    def read_final(self, head_req=False):
        """Skip interim (1xx but 101) responses; (final, [interim])."""
        interim = []
        while True:
            r = self.read_response(head_req)
            if r.status >= 200 or r.status == 101:
                return r, interim
            interim.append(r)

    def wait_closed(self, timeout=3.0):
        """True when the peer closes (or resets) within timeout; bytes that
        arrive meanwhile are kept in buf."""
        end = time.monotonic() + timeout
        while not self.eof:
            left = end - time.monotonic()
            if left <= 0:
                return False
            try:
                self._fill(left)
            except TimeoutError:
                return False
        return True

    def pending(self, wait=0.2):
        """Bytes that arrive within `wait` seconds beyond what was read."""
        end = time.monotonic() + wait
        while not self.eof:
            left = end - time.monotonic()
            if left <= 0:
                break
            try:
                if not self._fill(left):
                    break
            except TimeoutError:
                break
        return bytes(self.buf)


def status_json(port, timeout=5.0):
    """The proxy's status page as JSON, on a connection of its own."""
    c = Conn(port, timeout)
    try:
        c.send(req("GET", "/.proxy/status?json"))
        r, _ = c.read_final()
    finally:
        c.close()
    expect_status(r, 200, "status page")
    try:
        return json.loads(r.body.decode())
    except ValueError:
        raise AssertionError("status page is not JSON: %s" % short(r.body))


def status_of(data):
    m = re.match(rb"HTTP/1\.\d (\d\d\d)", data)
    return int(m.group(1)) if m else None


class TmpDir:
    def __init__(self):
        self.path = tempfile.mkdtemp(prefix="proxy-e2e-")

    def file(self, name, text=None):
        p = os.path.join(self.path, name)
        if text is not None:
            with open(p, "w" if isinstance(text, str) else "wb") as f:
                f.write(text)
        return p

    def remove(self):
        for root, dirs, files in os.walk(self.path, topdown=False):
            for n in files:
                os.unlink(os.path.join(root, n))
            for n in dirs:
                os.rmdir(os.path.join(root, n))
        os.rmdir(self.path)


def conf_text(port, proxy=None, backends=None, routes=None):
    """An INI config. proxy: overrides of DEFAULT_PROXY (None removes a
    key, a list repeats it); backends: [(name, [port])]; routes:
    [(name, [(key, value)])]."""
    keys = dict(DEFAULT_PROXY)
    for k, v in (proxy or {}).items():
        if v is None:
            keys.pop(k, None)
        else:
            keys[k] = v
    lines = ["[proxy]", "listen = 127.0.0.1:%d" % port]
    for k, v in keys.items():
        for x in (v if isinstance(v, list) else [v]):
            lines.append("%s = %s" % (k, x))
    for name, ports in backends or []:
        lines.append("")
        lines.append("[backend %s]" % name)
        for p in ports:
            lines.append("server = 127.0.0.1:%d" % p)
    for name, kv in routes or []:
        lines.append("")
        lines.append("[route %s]" % name)
        for k, v in kv:
            lines.append("%s = %s" % (k, v))
    return "\n".join(lines) + "\n"


def san_lines(text):
    return [ln for ln in text.splitlines()
            if any(p in ln for p in SAN_PATTERNS)]


def proxy_env(extra=None):
    env = dict(os.environ)
    for k in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY",
              "all_proxy", "ALL_PROXY"):
        env.pop(k, None)
    env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
    env.update(extra or {})
    return env


class Proxy:
    """One proxy process in the foreground (-f)."""

    def __init__(self, tmp, conf, port, binary=None, env=None):
        self.tmp = tmp
        self.port = port
        self.binary = binary or PROXY_BIN
        self.conf = tmp.file("proxy.ini", conf)
        self.errpath = tmp.file("proxy.stderr")
        self.env = proxy_env(env)
        self.proc = None
        self.rc = None
        self.termed = False

    def start(self):
        if not os.path.exists(self.binary):
            raise AssertionError("binary %s not built" % self.binary)
        self.errf = open(self.errpath, "wb")
        self.proc = subprocess.Popen(
            [self.binary, "-f", "-c", self.conf], stdin=subprocess.DEVNULL,
            stdout=self.errf, stderr=self.errf, env=self.env)
        end = time.monotonic() + 8
        while time.monotonic() < end:
            if self.proc.poll() is not None:
                raise AssertionError("proxy exited %d at startup: %s" % (
                    self.proc.returncode, short(self.stderr(), 400)))
            if port_open(self.port):
                return self
            time.sleep(0.02)
        raise AssertionError("proxy did not listen on %d within 8 s" %
                             self.port)

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        try:
            with open(self.errpath, "rb") as f:
                return f.read().decode("latin-1")
        except OSError:
            return ""

    def term(self):
        """Send SIGTERM now (the test then waits for the exit itself)."""
        self.termed = True
        os.kill(self.proc.pid, signal.SIGTERM)

    def stop(self, timeout=10):
        """SIGTERM, wait; returns a list of problems (empty when fine)."""
        if self.proc is None:
            return []
        problems = []
        if self.termed:
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                try:
                    wchan = open("/proc/%d/wchan" % self.proc.pid).read()
                except OSError:
                    wchan = "?"
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(5)
                problems.append("did not exit within %ds of SIGTERM "
                                "(blocked in %s; stderr ends %s)" % (
                                    timeout, wchan,
                                    short(self.stderr()[-300:], 300)))
        elif not self.termed:
            problems.append("had already exited (%d) before SIGTERM" %
                            self.proc.returncode)
        self.rc = self.proc.returncode
        self.errf.close()
        if self.rc != 0 and not problems:
            problems.append("exit code %d" % self.rc)
        bad = san_lines(self.stderr())
        if bad:
            problems.append("sanitizer: " + " | ".join(bad[:3]))
        self.proc = None
        return problems


class Env:
    """A test's world: a temp dir, origins, one proxy in front of them.

    origins: names of the origins to start (X-Origin header and
    env.origins[name]); backends: [(name, [origin name or "down"])], by
    default one backend "web" with the first origin; routes: by default
    one route "all" to "web"; proxy: [proxy] overrides."""

    def __init__(self, proxy=None, origins=("a",), backends=None,
                 routes=None, binary=None, env=None, start=True):
        self.proxy_over = proxy
        self.origin_names = origins
        self.backends = backends
        self.routes = routes
        self.binary = binary
        self.envx = env
        self.start_proxy = start
        self.conns = []
        self.proxy = None
        self.origins = {}

    def __enter__(self):
        self.tmp = TmpDir()
        try:
            for n in self.origin_names:
                self.origins[n] = Origin(name=n).start()
            self.origin = (self.origins[self.origin_names[0]]
                           if self.origin_names else None)
            self.port = free_port()
            self.down_port = free_port()

            def oport(n):
                return self.down_port if n == "down" else self.origins[n].port
            backends = self.backends or [("web", [self.origin_names[0]])]
            routes = self.routes or [("all", [("backend", "web")])]
            self.conf = conf_text(
                self.port, self.proxy_over,
                [(b, [oport(n) for n in ns]) for b, ns in backends], routes)
            self.proxy = Proxy(self.tmp, self.conf, self.port, self.binary,
                               self.envx)
            if self.start_proxy:
                self.proxy.start()
        except BaseException:
            self._cleanup()
            raise
        return self

    def _cleanup(self):
        for c in self.conns:
            c.close()
        problems = self.proxy.stop() if self.proxy else []
        for o in self.origins.values():
            o.stop()
        self.tmp.remove()
        return problems

    def __exit__(self, et, ev, tb):
        problems = self._cleanup()
        if problems:
            msg = "proxy " + "; ".join(problems)
            if ev is not None:
                msg = "%s (and %s)" % (ev, msg)
            raise AssertionError(msg)
        return False

    def conn(self, timeout=5.0):
        c = Conn(self.port, timeout)
        self.conns.append(c)
        return c

    def url(self, path):
        return "http://127.0.0.1:%d%s" % (self.port, path)

    def exchange(self, data, head_req=False):
        """One request on a new connection; the final response."""
        c = self.conn()
        c.send(data)
        r, _ = c.read_final(head_req)
        c.close()
        return r


def curl(args, timeout=60, tmp=None):
    """Run curl; returns (http_code, header text, body bytes, stderr)."""
    d = tempfile.mkdtemp(prefix="proxy-curl-", dir=tmp.path if tmp else None)
    hdr, body = os.path.join(d, "h"), os.path.join(d, "b")
    try:
        p = subprocess.run(
            ["curl", "-sS", "--noproxy", "*", "--max-time", str(timeout),
             "-D", hdr, "-o", body, "-w", "%{http_code}"] + list(args),
            stdin=subprocess.DEVNULL, capture_output=True,
            timeout=timeout + 10, env=proxy_env())
        h = open(hdr, "rb").read().decode("latin-1") if os.path.exists(
            hdr) else ""
        b = open(body, "rb").read() if os.path.exists(body) else b""
        code = int(p.stdout.strip() or b"0")
        return code, h, b, p.stderr.decode("latin-1")
    finally:
        for f in (hdr, body):
            if os.path.exists(f):
                os.unlink(f)
        os.rmdir(d)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def expect_status(r, code, what=""):
    check(r.status == code, "%sexpected %d, got %r" % (
        what and what + ": ", code, r))


def info(msg):
    print("# " + msg, flush=True)


# ---------------------------------------------------------------- registry

TESTS = []


def test(fn):
    TESTS.append((fn.__name__, fn))
    return fn


def add(name, fn):
    TESTS.append((name, fn))


# ------------------------------------------------------- basic responses

@test
def get_basic():
    with Env() as e:
        code, h, body, err = curl([e.url("/")], 10)
        check(code == 200, "curl got %d %s" % (code, err))
        check(body == om.HELLO, "body %s" % short(body))
        reqs = e.origin.snapshot()
        check(len(reqs) == 1 and reqs[0].method == "GET" and
              reqs[0].target == "/", "origin saw %r" % reqs)


@test
def head_no_body():
    with Env() as e:
        c = e.conn()
        c.send(req("HEAD", "/fixed"))
        r, _ = c.read_final(head_req=True)
        expect_status(r, 200)
        cl = r.h("Content-Length")
        check(cl is None or int(cl) == len(om.FIXED),
              "HEAD Content-Length %r, GET body is %d" % (cl, len(om.FIXED)))
        extra = c.pending(0.3)
        check(not extra, "bytes after the HEAD response: %s" % short(extra))
        c.send(req("GET", "/fixed"))
        r, _ = c.read_final()
        expect_status(r, 200, "GET after HEAD")
        check(r.body == om.FIXED, "GET body %s" % short(r.body))


def _no_body_status(code):
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/status?code=%d" % code))
        r, _ = c.read_final()
        expect_status(r, code)
        extra = c.pending(0.3)
        check(not extra, "bytes after the %d: %s" % (code, short(extra)))
        c.send(req("GET", "/"))
        r, _ = c.read_final()
        expect_status(r, 200, "next request on the connection")
        check(r.body == om.HELLO, "body %s" % short(r.body))


add("status_204_no_body", lambda: _no_body_status(204))
add("status_304_no_body", lambda: _no_body_status(304))


@test
def early_hints():
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/early-hints"))
        r1 = c.read_response()
        expect_status(r1, 103, "first response")
        check("preload" in (r1.h("Link") or ""), "103 without Link: %r" % r1)
        r2 = c.read_response()
        expect_status(r2, 200, "second response")
        check(r2.body == b"after early hints\n", "body %s" % short(r2.body))


@test
def early_hints_http10():
    # RFC 9110 15.2: a server must not send a 1xx to an HTTP/1.0 client.
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/early-hints", version="HTTP/1.0"))
        r = c.read_response()
        expect_status(r, 200, "first response to an HTTP/1.0 client")
        check(r.body == b"after early hints\n", "body %s" % short(r.body))


@test
def chunked_response():
    with Env() as e:
        want = b"".join(om.chunked_parts(5, 3000))
        c = e.conn()
        c.send(req("GET", "/chunked?n=5&size=3000&trailers=1"))
        r, _ = c.read_final()
        expect_status(r, 200)
        check(r.chunked, "not chunked: %r" % r)
        check(r.complete and r.body == want, "decoded body %s (want %d)" % (
            short(r.body), len(want)))
        c.send(req("GET", "/"))
        r2, _ = c.read_final()
        check(r2.status == 200 and r2.body == om.HELLO,
              "next request after chunked: %r" % r2)
        code, h, body, err = curl([e.url("/chunked?n=7&size=1000")], 10)
        check(code == 200 and body == b"".join(om.chunked_parts(7, 1000)),
              "curl: %d %s %s" % (code, short(body), err))


@test
def close_delimited_response():
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/close"))
        r, _ = c.read_final()
        expect_status(r, 200)
        check(r.complete and r.body == om.CLOSE_BODY,
              "body %s (want %d bytes)" % (short(r.body),
                                          len(om.CLOSE_BODY)))
        check("close" in r.tokens("Connection"),
              "no Connection: close: %r" % r)
        check(c.wait_closed(3), "client connection not closed")


# ------------------------------------------------------ large transfers

def _download(binary, slack, label):
    with Env(binary=binary) as e:
        code, h, body, err = curl([e.url("/large?size=%d" % MB)], 20)
        check(code == 200 and len(body) == MB, "warm-up %d %d" % (
            code, len(body)))
        sampler = RssSampler(e.proxy.pid)
        sampler.start()
        t0 = time.monotonic()
        p = subprocess.Popen(
            ["curl", "-sS", "--noproxy", "*", "--max-time", "60",
             e.url("/large?size=%d" % BIG)], stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, env=proxy_env())
        hs = hashlib.sha256()
        n = 0
        while True:
            d = p.stdout.read(1 << 20)
            if not d:
                break
            hs.update(d)
            n += len(d)
        p.wait(30)
        dt = time.monotonic() - t0
        s = sampler.stop()
        check(p.returncode == 0, "curl exit %d: %s" % (
            p.returncode, p.stderr.read().decode()))
        check(n == BIG, "got %d bytes of %d" % (n, BIG))
        check(hs.hexdigest() == om.large_sha256(BIG), "sha256 differs")
        check(s, "no RSS samples")
        info("%s: 100 MB in %.2fs, VmRSS %d..%d kB (%d samples)" % (
            label, dt, min(s), max(s), len(s)))
        check((max(s) - min(s)) * 1024 < slack,
              "VmRSS grew from %d to %d kB (bound %d kB)" % (
                  min(s), max(s), slack // 1024))


def _upload(binary, slack, label):
    with Env(binary=binary, proxy={"max_body": "200M"}) as e:
        path = e.tmp.file("upload.bin")
        with open(path, "wb") as f:
            for c in om.large_chunks(BIG, 1 << 20):
                f.write(c)
        code, h, body, err = curl(["-T", path, e.url("/upload?warm")], 20)
        check(code == 200, "warm-up upload %d %s" % (code, err))
        sampler = RssSampler(e.proxy.pid)
        sampler.start()
        t0 = time.monotonic()
        code, h, body, err = curl(["-T", path, e.url("/upload")], 60)
        dt = time.monotonic() - t0
        s = sampler.stop()
        os.unlink(path)
        check(code == 200, "curl got %d %s" % (code, err))
        want = b"%d %s\n" % (BIG, om.large_sha256(BIG).encode())
        check(body == want, "origin answered %s, want %s" % (
            short(body), short(want)))
        info("%s: 100 MB in %.2fs, VmRSS %d..%d kB (%d samples)" % (
            label, dt, min(s), max(s), len(s)))
        check((max(s) - min(s)) * 1024 < slack,
              "VmRSS grew from %d to %d kB (bound %d kB)" % (
                  min(s), max(s), slack // 1024))


add("download_100mb", lambda: _download(None, RSS_SLACK_SAN,
                                        "download_100mb (PROXY_BIN)"))
add("upload_100mb", lambda: _upload(None, RSS_SLACK_SAN,
                                    "upload_100mb (PROXY_BIN)"))
add("download_100mb_rss_plain", lambda: _download(
    PLAIN_BIN, RSS_SLACK_PLAIN, "download_100mb (./proxy)"))
add("upload_100mb_rss_plain", lambda: _upload(
    PLAIN_BIN, RSS_SLACK_PLAIN, "upload_100mb (./proxy)"))


# splice(): large plain bodies go socket -> pipe -> socket (proxy.c)

SPLICED = 8 * MB


def _pipes(e):
    return status_json(e.port)["pipes"]


def _large_ok(r, size, what):
    check(r.status == 200 and r.complete and len(r.body) == size and
          hashlib.sha256(r.body).hexdigest() == om.large_sha256(size),
          "%s: status %d, %d of %d bytes%s" % (
              what, r.status, len(r.body), size,
              "" if len(r.body) != size else ", content differs"))


def _pipes_back(e, what):
    end = time.monotonic() + 3
    while True:
        p = _pipes(e)
        if p["free"] == p["total"] or time.monotonic() > end:
            break
        time.sleep(0.05)
    check(p["free"] == p["total"], "%s: pipes not returned: %r" % (what, p))
    return p


@test
def splice_keepalive():
    """A large body is spliced, arrives intact, and the same client
    connection and upstream connection serve the next request."""
    with Env() as e:
        before = _pipes(e)
        check(before["total"] > 0, "no pipes reserved: %r" % before)
        c = e.conn(timeout=30)
        c.send(req("GET", "/large?size=%d" % SPLICED))
        r, _ = c.read_final()
        _large_ok(r, SPLICED, "spliced body")
        c.send(req("GET", "/fixed?text=after"))
        r2, _ = c.read_final()
        check(r2.status == 200 and r2.body == b"after",
              "next request on the connection: %r" % r2)
        after = _pipes_back(e, "after a spliced body")
        moved = after["spliced"] - before["spliced"]
        check(SPLICED - 64 * 1024 <= moved <= SPLICED,
              "%d of %d bytes spliced" % (moved, SPLICED))
        conns = {q.conn_id for q in e.origin.snapshot()}
        check(len(conns) == 1, "upstream connections used: %d" % len(conns))
        info("splice_keepalive: %d of %d body bytes spliced" % (
            moved, SPLICED))


@test
def splice_close_delimited():
    """A large body without a length, ended by the backend's close, is
    spliced to its end; the client then sees the connection close."""
    with Env() as e:
        before = _pipes(e)["spliced"]
        c = e.conn(timeout=30)
        c.send(req("GET", "/large?size=%d&eof=1" % SPLICED))
        r, _ = c.read_final()
        _large_ok(r, SPLICED, "close-delimited body")
        check(c.wait_closed(3), "client connection not closed")
        after = _pipes_back(e, "close-delimited")
        check(after["spliced"] - before >= SPLICED - 64 * 1024,
              "only %d bytes spliced" % (after["spliced"] - before))


@test
def splice_cut_short():
    """The backend closes partway through a spliced body: the client gets
    exactly the bytes sent, then its connection closes - never a body
    padded or completed from elsewhere. The proxy serves on."""
    with Env() as e:
        cut = 3 * MB + 17
        c = e.conn(timeout=30)
        c.send(req("GET", "/large?size=%d&cut=%d" % (SPLICED, cut)))
        r = c.read_response()
        check(not r.complete, "a cut body was reported complete")
        want = b"".join(om.large_chunks(SPLICED))[:cut]
        check(r.body == want, "got %d bytes, want the first %d" % (
            len(r.body), cut))
        check(c.wait_closed(3), "client connection not closed")
        check("response cut short" in e.proxy.stderr(),
              "no log line for the cut response")
        _large_ok(e.exchange(req("GET", "/large?size=%d" % SPLICED)),
                  SPLICED, "the next download")
        _pipes_back(e, "after a cut body")


@test
def splice_client_gone():
    """Clients that leave in the middle of spliced bodies, more of them
    than there are pipes: the bytes left in a pipe go with it (a fresh
    pipe replaces it), so every later client gets exactly its body."""
    with Env() as e:
        total = _pipes(e)["total"]
        for _ in range(total + 2):
            s = socket.create_connection(("127.0.0.1", e.port))
            s.sendall(req("GET", "/large?size=%d" % SPLICED))
            got = 0
            while got < 300000:
                d = s.recv(65536)
                if not d:
                    break
                got += len(d)
            s.close()  # unread bytes: the proxy gets a reset
        for i in range(3):
            _large_ok(e.exchange(req("GET", "/large?size=%d" % SPLICED)),
                      SPLICED, "download %d after the aborts" % (i + 1))
        p = _pipes_back(e, "after aborted clients")
        check(p["total"] == total, "pipes %d, was %d" % (p["total"], total))


@test
def chunked_upload():
    with Env(proxy={"max_body": "10M"}) as e:
        size = 3 * MB + 123
        path = e.tmp.file("upload.bin")
        with open(path, "wb") as f:
            for c in om.large_chunks(size):
                f.write(c)
        h = hashlib.sha256()
        for c in om.large_chunks(size):
            h.update(c)
        code, hd, body, err = curl(["-T", path, "-H",
                                    "Transfer-Encoding: chunked",
                                    e.url("/upload")], 30)
        check(code == 200, "curl got %d %s" % (code, err))
        want = b"%d %s\n" % (size, h.hexdigest().encode())
        check(body == want, "origin answered %s, want %s" % (
            short(body), short(want)))


# ------------------------------------------------------------- Expect

@test
def expect_100_continue():
    with Env() as e:
        body = b"hello world"
        c = e.conn(3)
        c.send(req("POST", "/upload", headers=[
            "Content-Length: %d" % len(body), "Expect: 100-continue"]))
        r = c.read_response()
        expect_status(r, 100, "before the body")
        c.send(body)
        r, _ = c.read_final()
        expect_status(r, 200)
        want = b"%d %s\n" % (len(body),
                             hashlib.sha256(body).hexdigest().encode())
        check(r.body == want, "origin answered %s" % short(r.body))
        reqs = e.origin.snapshot()
        check(len(reqs) == 1, "origin saw %r" % reqs)
        check(reqs[0].header("Expect") is None,
              "origin saw Expect: %s" % reqs[0].header("Expect"))


@test
def expect_413():
    with Env() as e:
        c = e.conn(3)
        c.send(req("POST", "/upload", headers=[
            "Content-Length: 2000000", "Expect: 100-continue"]))
        r = c.read_response()
        expect_status(r, 413, "answer to the head")
        time.sleep(0.1)
        check(e.origin.count() == 0, "origin saw %r" % e.origin.snapshot())


# ---------------------------------------------------------- connections

@test
def pipelining():
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/fixed?text=one") +
               req("POST", "/echo", body=b"two") +
               req("GET", "/fixed?text=three"))
        got = []
        for _ in range(3):
            r, _ = c.read_final()
            got.append((r.status, r.body))
        check(got == [(200, b"one"), (200, b"two"), (200, b"three")],
              "responses %r" % got)


@test
def http10_close():
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/", version="HTTP/1.0"))
        r, _ = c.read_final()
        expect_status(r, 200)
        check(r.body == om.HELLO, "body %s" % short(r.body))
        check(c.wait_closed(3), "connection of an HTTP/1.0 client left open")


@test
def http10_keepalive():
    with Env() as e:
        c = e.conn()
        for i in range(2):
            c.send(req("GET", "/fixed?text=ka%d" % i, version="HTTP/1.0",
                       headers=["Connection: keep-alive"]))
            r, _ = c.read_final()
            expect_status(r, 200, "request %d" % i)
            check(r.body == b"ka%d" % i, "body %s" % short(r.body))
            check("keep-alive" in r.tokens("Connection"),
                  "response %d without Connection: keep-alive: %r" % (i, r))
            check(r.h("Content-Length") is not None,
                  "1.0 keep-alive response without Content-Length: %r" % r)
        check(not c.eof, "connection closed")


@test
def client_keepalive():
    with Env() as e:
        c = e.conn()
        for i in range(2):
            c.send(req("GET", "/fixed?text=r%d" % i))
            r, _ = c.read_final()
            expect_status(r, 200, "request %d" % i)
            check(r.body == b"r%d" % i, "body %s" % short(r.body))
            check("close" not in r.tokens("Connection"),
                  "Connection: close on a keep-alive request: %r" % r)
        check(not c.eof, "connection closed")


@test
def upstream_reuse():
    with Env() as e:
        c = e.conn()
        for i in range(10):
            c.send(req("GET", "/fixed?text=k%d" % i))
            r, _ = c.read_final()
            expect_status(r, 200, "keep-alive request %d" % i)
        c.close()
        for i in range(10):
            r = e.exchange(req("GET", "/fixed?text=n%d" % i))
            expect_status(r, 200, "new-connection request %d" % i)
        reqs = e.origin.snapshot()
        check(len(reqs) == 20, "origin saw %d requests" % len(reqs))
        ids = set(r.conn_id for r in reqs)
        info("upstream_reuse: 20 requests over %d origin connections" %
             len(ids))
        check(len(ids) < 20, "20 requests used %d origin connections" %
              len(ids))


@test
def websocket_tunnel():
    with Env() as e:
        c = e.conn()
        c.send(req("GET", "/ws", headers=[
            "Upgrade: websocket", "Connection: Upgrade",
            "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
            "Sec-WebSocket-Version: 13"]))
        r = c.read_response()
        expect_status(r, 101)
        check((r.h("Upgrade") or "").lower() == "websocket",
              "101 without Upgrade: websocket: %r" % r)
        for msg in (b"ping-1", os.urandom(200000), b"\x00\xff end"):
            c.send(msg)
            while len(c.buf) < len(msg):
                check(c._fill(), "tunnel closed after %d of %d bytes" % (
                    len(c.buf), len(msg)))
            check(bytes(c.buf) == msg, "echo differs (%d bytes)" % len(msg))
            c.buf.clear()
        o = e.origin.snapshot()[0]
        check((o.header("Upgrade") or "").lower() == "websocket",
              "origin saw Upgrade %r" % o.header("Upgrade"))


# -------------------------------------------------------------- headers

@test
def forwarded_headers():
    with Env() as e:
        r = e.exchange(req("GET", "/headers", host="fwd.example"))
        expect_status(r, 200)
        o = e.origin.snapshot()[0]
        got = {k: o.all(k) for k in ("Host", "X-Forwarded-For",
                                     "X-Forwarded-Proto", "X-Forwarded-Host",
                                     "Via")}
        check(got["Host"] == ["fwd.example"], "Host %r" % got["Host"])
        check(got["X-Forwarded-For"] == ["127.0.0.1"], "XFF %r" % got)
        check(got["X-Forwarded-Proto"] == ["http"], "XFP %r" % got)
        check(got["X-Forwarded-Host"] == ["fwd.example"], "XFH %r" % got)
        check(any("proxy" in v for v in got["Via"]), "Via %r" % got["Via"])


@test
def hop_by_hop_request():
    with Env() as e:
        r = e.exchange(req("GET", "/headers", headers=[
            "Connection: foo", "Foo: x", "Keep-Alive: timeout=300",
            "TE: trailers", "Trailer: X-T", "Proxy-Connection: keep-alive",
            "Proxy-Authorization: Basic eDp5", "Upgrade: h2c",
            "X-End2end: kept"]))
        expect_status(r, 200)
        o = e.origin.snapshot()[0]
        seen = [k for k in ("Foo", "Keep-Alive", "TE", "Trailer",
                            "Proxy-Connection", "Proxy-Authorization",
                            "Upgrade") if o.all(k)]
        check(not seen, "origin saw hop-by-hop %s in %s" % (
            seen, short(o.raw_head, 600)))
        conn = ",".join(o.all("Connection")).lower()
        check("foo" not in conn, "origin saw Connection: %s" % conn)
        check(o.header("X-End2end") == "kept",
              "end-to-end header lost: %s" % short(o.raw_head, 600))


@test
def xff_untrusted_replaced():
    with Env(proxy={"trusted": "10.0.0.0/8"}) as e:
        r = e.exchange(req("GET", "/", host="real.example", headers=[
            "X-Forwarded-For: 1.2.3.4", "X-Forwarded-Proto: https",
            "X-Forwarded-Host: evil.example"]))
        expect_status(r, 200)
        o = e.origin.snapshot()[0]
        check(o.all("X-Forwarded-For") == ["127.0.0.1"],
              "XFF %r" % o.all("X-Forwarded-For"))
        check(o.all("X-Forwarded-Proto") == ["http"],
              "XFP %r" % o.all("X-Forwarded-Proto"))
        check(o.all("X-Forwarded-Host") == ["real.example"],
              "XFH %r" % o.all("X-Forwarded-Host"))


@test
def xff_trusted_appended():
    with Env() as e:
        r = e.exchange(req("GET", "/", headers=["X-Forwarded-For: 1.2.3.4"]))
        expect_status(r, 200)
        o = e.origin.snapshot()[0]
        xff = [t.strip() for v in o.all("X-Forwarded-For")
               for t in v.split(",")]
        check(xff == ["1.2.3.4", "127.0.0.1"],
              "XFF %r" % o.all("X-Forwarded-For"))


@test
def hop_by_hop_response():
    with Env() as e:
        r = e.exchange(req("GET", "/hop"))
        expect_status(r, 200)
        check(r.body == b"hop\n", "body %s" % short(r.body))
        bad = [k for k in ("Foo", "Keep-Alive", "X-Powered-By") if r.all(k)]
        check(not bad, "client got %s: %s" % (bad, short(r.raw_head, 600)))
        check(not any("origin-server" in v for v in r.all("Server")),
              "client got the origin's Server: %r" % r.all("Server"))
        check("foo" not in r.tokens("Connection"),
              "client got Connection: %r" % r.all("Connection"))
        check(r.h("X-Kept") == "yes", "end-to-end header lost: %r" % r)


# -------------------------------------------------------------- routing

TWO = dict(origins=("a", "b"), backends=[("A", ["a"]), ("B", ["b"])])


def _which(e, path, host="test.local"):
    """Send one request; the name of the origin that got it (or the
    status when none did)."""
    before = {n: o.count() for n, o in e.origins.items()}
    r = e.exchange(req("GET", path, host=host))
    got = [n for n, o in e.origins.items() if o.count() > before[n]]
    if len(got) == 1:
        return got[0]
    return "%d/%s" % (r.status, ",".join(got))


def _routes(cases, routes):
    with Env(routes=routes, **TWO) as e:
        bad = []
        for host, path, want in cases:
            got = _which(e, path, host)
            if got != want:
                bad.append("%s%s -> %s (want %s)" % (host, path, got, want))
        check(not bad, "; ".join(bad))


add("route_host_exact", lambda: _routes(
    [("example.org", "/", "a"), ("example.org:80", "/", "a"),
     ("other.org", "/", "b"), ("www.example.org", "/", "b")],
    [("r1", [("host", "example.org"), ("backend", "A")]),
     ("r2", [("backend", "B")])]))
add("route_host_wildcard", lambda: _routes(
    [("www.example.org", "/", "a"), ("a.b.example.org", "/", "a"),
     ("badexample.org", "/", "b"), ("other.org", "/", "b")],
    [("r1", [("host", "*.example.org"), ("backend", "A")]),
     ("r2", [("backend", "B")])]))
add("route_path_prefix", lambda: _routes(
    [("h", "/api/", "a"), ("h", "/api/x?y=1", "a"), ("h", "/apix", "b"),
     ("h", "/other", "b"), ("h", "/", "b")],
    [("r1", [("path", "/api/"), ("backend", "A")]),
     ("r2", [("backend", "B")])]))
add("route_first_match", lambda: _routes(
    [("h", "/api/v2/x", "a"), ("h", "/api/x", "a"), ("h", "/v2", "b")],
    [("r1", [("path", "/api/"), ("backend", "A")]),
     ("r2", [("path", "/api/v2/"), ("backend", "B")]),
     ("r3", [("backend", "B")])]))
add("route_first_match_reversed", lambda: _routes(
    [("h", "/api/v2/x", "b"), ("h", "/api/x", "a")],
    [("r1", [("path", "/api/v2/"), ("backend", "B")]),
     ("r2", [("path", "/api/"), ("backend", "A")]),
     ("r3", [("backend", "B")])]))


@test
def route_no_match_404():
    with Env(routes=[("r1", [("host", "example.org"), ("backend", "A")])],
             **TWO) as e:
        r = e.exchange(req("GET", "/", host="other.org"))
        expect_status(r, 404)
        time.sleep(0.1)
        check(all(o.count() == 0 for o in e.origins.values()),
              "an origin saw the request")
        check(_which(e, "/", "example.org") == "a", "example.org not to a")


def _route_target(target):
    with Env(routes=[("r1", [("path", "/api/"), ("backend", "A")]),
                     ("r2", [("backend", "B")])], **TWO) as e:
        got = _which(e, target)
        check(got == "a", "%s went to %s, want a" % (target, got))
        o = e.origins["a"].snapshot()[0]
        check(o.target == target, "origin got target %r, want %r" % (
            o.target, target))


add("route_encoded_path", lambda: _route_target("/%61pi/x"))
add("route_dot_segments", lambda: _route_target("/x/../api/"))


# ---------------------------------------------------- malformed requests

def _reject(data, code=400, env=None):
    """Send data; expect `code`, the connection closed, origin untouched."""
    with Env(**(env or {})) as e:
        c = e.conn(3)
        c.send(data)
        closed = c.wait_closed(3)
        out = bytes(c.buf)
        st = status_of(out)
        check(st == code, "sent %s, got %s%s" % (
            short(data, 120), short(out, 120),
            "" if closed else " (connection left open)"))
        check(closed, "connection not closed after %d" % code)
        time.sleep(0.05)
        check(e.origin.count() == 0 and e.origin.received_bytes == 0,
              "origin received %d bytes: %r" % (e.origin.received_bytes,
                                                e.origin.snapshot()))


H = b"Host: x\r\n"
BAD_REQUESTS = [
    ("bad_cl_te", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 5\r\n"
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad_two_cl", b"POST /echo HTTP/1.1\r\n" + H + b"Content-Length: 3\r\n"
     b"Content-Length: 4\r\n\r\nabcd"),
    ("bad_cl_list", b"POST /echo HTTP/1.1\r\n" + H +
     b"Content-Length: 1,1\r\n\r\na"),
    ("bad_cl_negative", b"POST /echo HTTP/1.1\r\n" + H +
     b"Content-Length: -1\r\n\r\n"),
    ("bad_cl_plus", b"POST /echo HTTP/1.1\r\n" + H +
     b"Content-Length: +5\r\n\r\nabcde"),
    ("bad_cl_hex", b"POST /echo HTTP/1.1\r\n" + H +
     b"Content-Length: 0x5\r\n\r\nabcde"),
    ("bad_te_gzip", b"POST /echo HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: gzip\r\n\r\nabc"),
    ("bad_te_chunked_gzip", b"POST /echo HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: chunked, gzip\r\n\r\n0\r\n\r\n"),
    ("bad_te_xchunked", b"POST /echo HTTP/1.1\r\n" + H +
     b"Transfer-Encoding: xchunked\r\n\r\n0\r\n\r\n"),
    ("bad_te_http10", b"POST /echo HTTP/1.0\r\n" + H +
     b"Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n"),
    ("bad_space_before_colon", b"GET / HTTP/1.1\r\n" + H +
     b"X-Foo : bar\r\n\r\n"),
    ("bad_obs_fold", b"GET / HTTP/1.1\r\n" + H +
     b"X-Foo: a\r\n  folded\r\n\r\n"),
    ("bad_bare_cr", b"GET / HTTP/1.1\r\n" + H + b"X-Foo: a\rb\r\n\r\n"),
    ("bad_bare_lf", b"GET / HTTP/1.1\r\n" + H + b"X-Foo: a\nX-Bar: b\r\n"
     b"\r\n"),
    ("bad_nul_in_header", b"GET / HTTP/1.1\r\n" + H +
     b"X-Foo: a\x00b\r\n\r\n"),
    ("bad_ctl_in_target", b"GET /a\x01b HTTP/1.1\r\n" + H + b"\r\n"),
    ("bad_space_in_target", b"GET /a b HTTP/1.1\r\n" + H + b"\r\n"),
    ("bad_header_name", b"GET / HTTP/1.1\r\n" + H + b"Fo@o: x\r\n\r\n"),
    ("bad_empty_header_name", b"GET / HTTP/1.1\r\n" + H + b": x\r\n\r\n"),
    ("bad_missing_host", b"GET / HTTP/1.1\r\nX-Foo: a\r\n\r\n"),
    ("bad_two_hosts", b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
    ("bad_version_1_2", b"GET / HTTP/1.2\r\n" + H + b"\r\n"),
    ("bad_version_2_0", b"GET / HTTP/2.0\r\n" + H + b"\r\n"),
    ("bad_encoded_slash", b"GET /a%2fb HTTP/1.1\r\n" + H + b"\r\n"),
    ("bad_dotdot_above_root", b"GET /../etc HTTP/1.1\r\n" + H + b"\r\n"),
]
for _name, _data in BAD_REQUESTS:
    add(_name, (lambda d: lambda: _reject(d))(_data))


@test
def bad_chunk_size():
    with Env() as e:
        c = e.conn(3)
        c.send(b"POST /echo HTTP/1.1\r\nHost: x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\nzz\r\nhello\r\n0\r\n\r\n")
        closed = c.wait_closed(3)
        out = bytes(c.buf)
        st = status_of(out)
        check(st == 400 or (closed and (st is None or st >= 400)),
              "got %s%s" % (short(out, 120),
                            "" if closed else " (connection left open)"))
        info("bad_chunk_size: client got %s, connection %s" % (
            st or "no response", "closed" if closed else "open"))
        time.sleep(0.1)
        done = [r for r in e.origin.snapshot() if r.complete]
        check(not done, "origin got a complete request %r" % done)


# ---------------------------------------------------------------- limits

@test
def limit_request_line_414():
    _reject(b"GET /" + b"a" * 20480 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414)


@test
def limit_head_431():
    _reject(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-Long-%02d: %s\r\n" % (i, b"v" * 1000) for i in range(20)) +
        b"\r\n", 431)


@test
def limit_header_count_431():
    # Host plus 100 more: 101 headers, one over HTTP_MAX_HEADERS.
    _reject(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
        b"X-H-%d: v\r\n" % i for i in range(100)) + b"\r\n", 431)


@test
def limit_header_count_100_ok():
    with Env() as e:
        r = e.exchange(b"GET / HTTP/1.1\r\nHost: x\r\n" + b"".join(
            b"X-H-%d: v\r\n" % i for i in range(99)) + b"\r\n")
        expect_status(r, 200, "100 headers")


@test
def limit_body_413():
    with Env() as e:
        c = e.conn(3)
        c.send(req("POST", "/upload", headers=["Content-Length: 2000000"]))
        c.send(b"x" * 1000)
        r = c.read_response()
        expect_status(r, 413)
        time.sleep(0.1)
        check(e.origin.count() == 0, "origin saw %r" % e.origin.snapshot())


@test
def limit_chunked_body_413():
    with Env() as e:
        c = e.conn(5)
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n")
        piece = b"%x\r\n%s\r\n" % (1 << 16, b"c" * (1 << 16))
        sent = 0
        for _ in range(24):                 # 1.5 MB > max_body 1M
            if not c.send(piece):
                break
            sent += 1 << 16
        if c.send_error is None:
            c.send(b"0\r\n\r\n")
        closed = c.wait_closed(5)
        out = bytes(c.buf)
        st = status_of(out)
        check(st == 413 or (closed and (st is None or st >= 400)),
              "sent %d body bytes, got %s%s" % (
                  sent, short(out, 120),
                  "" if closed else " (connection left open)"))
        info("limit_chunked_body_413: client got %s after %d body bytes, "
             "connection %s" % (st or "no response", sent,
                                "closed" if closed else "open"))
        time.sleep(0.1)
        done = [r for r in e.origin.snapshot() if r.complete]
        check(not done, "origin got a complete request %r" % done)


@test
def header_timeout_408():
    with Env() as e:
        c = e.conn(6)
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        closed = c.wait_closed(6)
        dt = time.monotonic() - t0
        out = bytes(c.buf)
        check(status_of(out) == 408, "after %.1fs got %s" % (dt, short(out)))
        check(closed, "connection not closed after 408")
        check(1.5 <= dt <= 4, "closed after %.2fs, header_timeout 2s" % dt)
        check(e.origin.count() == 0, "origin saw %r" % e.origin.snapshot())


@test
def header_timeout_whole_head():
    with Env() as e:
        c = e.conn(6)
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        i = 0
        closed = False
        while time.monotonic() - t0 < 7:
            if c.wait_closed(0.5):
                closed = True
                break
            c.send(b"X-Drip-%d: v\r\n" % i)
            i += 1
        dt = time.monotonic() - t0
        out = bytes(c.buf)
        check(closed, "still open after %.1fs of one line per 0.5s" % dt)
        check(dt <= 3.5, "closed only after %.2fs (timer reset per line?)" %
              dt)
        check(status_of(out) in (408, None),
              "after %.1fs got %s" % (dt, short(out)))
        check(status_of(out) == 408, "closed after %.1fs without a 408" % dt)


@test
def idle_timeout():
    with Env(proxy={"idle_timeout": "1s"}) as e:
        c = e.conn(5)
        c.send(req("GET", "/"))
        r, _ = c.read_final()
        expect_status(r, 200)
        t0 = time.monotonic()
        closed = c.wait_closed(4)
        dt = time.monotonic() - t0
        check(closed, "idle keep-alive connection open after 4s "
              "(idle_timeout 1s)")
        check(dt >= 0.7, "closed after only %.2fs (idle_timeout 1s)" % dt)
        check(not c.buf, "bytes on the idle connection: %s" % short(c.buf))


# ------------------------------------------------------ backend failures

@test
def backend_down_502():
    with Env(backends=[("web", ["down"])]) as e:
        t0 = time.monotonic()
        r = e.exchange(req("GET", "/"))
        dt = time.monotonic() - t0
        expect_status(r, 502)
        check(dt < 2, "502 took %.2fs" % dt)


@test
def backend_timeout_504():
    with Env(proxy={"backend_timeout": "1s"}) as e:
        t0 = time.monotonic()
        c = e.conn(8)
        c.send(req("GET", "/slow?delay=5"))
        r, _ = c.read_final()
        dt = time.monotonic() - t0
        expect_status(r, 504)
        check(0.8 <= dt <= 3, "504 after %.2fs (backend_timeout 1s)" % dt)


def _bad_response(kind):
    truncation_ok = kind in ("close-mid-body", "bad-chunk")
    with Env() as e:
        c = e.conn(5)
        c.send(req("GET", "/bad?kind=" + kind))
        r = c.read_response()
        if r.status != 502:
            check(truncation_ok, "got %r" % r)
            closed = c.wait_closed(3)
            check(not r.complete and closed,
                  "got %r complete=%s closed=%s (want 502 or a truncated "
                  "response and a closed connection)" % (
                      r, r.complete, closed))
            info("bad_response %s: %d head, body cut at %d bytes, "
                 "connection closed" % (kind, r.status, len(r.body)))
        r2 = e.exchange(req("GET", "/"))
        check(r2.status == 200 and r2.body == om.HELLO,
              "next request got %r" % r2)


for _kind in ("cl-te", "two-cl", "bad-chunk", "big-head", "garbage-status",
              "bad-status-code", "bare-lf", "bad-cl", "close-mid-body"):
    add("bad_response_" + _kind.replace("-", "_"),
        (lambda k: lambda: _bad_response(k))(_kind))


# ---------------------------------------------------------------- config

GOOD_CONF = """\
[proxy]
listen = 127.0.0.1:%(port)d
log = stderr
max_connections = 64
buffers = 32
buffer_size = 16K
max_body = 1M
header_timeout = 2s
idle_timeout = 5s
backend_timeout = 3s

[backend web]
server = 127.0.0.1:%(oport)d

[route all]
backend = web
"""


def run_bin(args, timeout=10, binary=None, env=None):
    p = subprocess.run([binary or PROXY_BIN] + args, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=timeout,
                       env=proxy_env(env))
    return p.returncode, (p.stdout + p.stderr).decode("latin-1")


@test
def config_check_good():
    tmp = TmpDir()
    try:
        path = tmp.file("good.ini", GOOD_CONF % {"port": free_port(),
                                                 "oport": free_port()})
        rc, out = run_bin(["-t", "-c", path])
        check(rc == 0, "exit %d: %s" % (rc, short(out, 300)))
        check(not san_lines(out), "sanitizer: %s" % short(out, 300))
    finally:
        tmp.remove()


def _bad_conf(edit, lines):
    """Apply edit (text -> text with a marker line); expect exit 1 and
    FILE:LINE: naming one of `lines` (marker strings, first match)."""
    tmp = TmpDir()
    try:
        text = edit(GOOD_CONF % {"port": free_port(), "oport": free_port()})
        path = tmp.file("bad.ini", text)
        tl = text.split("\n")
        want = []
        for mark in lines:
            idx = [i + 1 for i, ln in enumerate(tl) if ln == mark]
            check(idx, "test bug: no line %r" % mark)
            want.append(idx[-1])
        rc, out = run_bin(["-t", "-c", path])
        check(rc == 1, "exit %d (want 1): %s" % (rc, short(out, 300)))
        found = [int(n) for n in re.findall(re.escape(path) + r":(\d+):",
                                            out)]
        check(found, "no %s:LINE: in %s" % (path, short(out, 300)))
        check(found[0] in want, "named line %d, want %s: %s" % (
            found[0], " or ".join(map(str, want)), short(out, 300)))
        check(not san_lines(out), "sanitizer: %s" % short(out, 300))
    finally:
        tmp.remove()


add("config_unknown_key", lambda: _bad_conf(
    lambda t: t.replace("buffers = 32\n", "buffers = 32\nbogus_key = 1\n"),
    ["bogus_key = 1"]))
add("config_unknown_section", lambda: _bad_conf(
    lambda t: t + "\n[bogus]\nx = 1\n", ["[bogus]", "x = 1"]))
add("config_bad_size", lambda: _bad_conf(
    lambda t: t.replace("buffer_size = 16K", "buffer_size = 16Q"),
    ["buffer_size = 16Q"]))
add("config_bad_duration", lambda: _bad_conf(
    lambda t: t.replace("idle_timeout = 5s", "idle_timeout = soon"),
    ["idle_timeout = soon"]))
add("config_bad_number", lambda: _bad_conf(
    lambda t: t.replace("max_connections = 64", "max_connections = lots"),
    ["max_connections = lots"]))
# The route's `backend =` line; its [route] header line is accepted too.
add("config_missing_backend", lambda: _bad_conf(
    lambda t: t.replace("backend = web", "backend = nosuch"),
    ["backend = nosuch", "[route all]"]))
add("config_duplicate_backend", lambda: _bad_conf(
    lambda t: t.replace("\n[route all]", "\n[backend web]\nserver = "
                        "127.0.0.1:1\n\n[route all]"),
    ["[backend web]"]))


@test
def version():
    rc, out = run_bin(["-v"])
    check(rc == 0, "exit %d: %s" % (rc, short(out)))
    check(not san_lines(out), "sanitizer: %s" % short(out, 300))
    check(re.search(r"\d+\.\d+", out), "no version in %s" % short(out))


@test
def bad_config_does_not_start():
    tmp = TmpDir()
    try:
        port = free_port()
        path = tmp.file("bad.ini", GOOD_CONF % {"port": port,
                                                "oport": free_port()} +
                        "\n[bogus]\n")
        p = subprocess.Popen([PROXY_BIN, "-f", "-c", path],
                             stdin=subprocess.DEVNULL,
                             stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                             env=proxy_env())
        listened = False
        end = time.monotonic() + 5
        while p.poll() is None and time.monotonic() < end:
            listened = listened or port_open(port)
            time.sleep(0.02)
        if p.poll() is None:
            p.kill()
            p.wait()
            check(False, "still running 5s after start with a bad config")
        out = p.stdout.read().decode("latin-1")
        check(p.returncode != 0, "exit 0 with a bad config: %s" % short(out))
        check(not listened and not port_open(port),
              "listened with a bad config")
    finally:
        tmp.remove()


# --------------------------------------------------------------- signals

@test
def sigterm_drain():
    with Env() as e:
        c = e.conn(8)
        c.send(req("GET", "/slow?delay=1"))
        got = e.origin.wait_requests(1, 3)
        check(got, "origin never got the slow request")
        t0 = time.monotonic()
        e.proxy.term()
        refused = False
        while time.monotonic() - t0 < 1.0:
            try:
                s = socket.create_connection(("127.0.0.1", e.port), 0.2)
                s.close()
            except ConnectionRefusedError:
                refused = True
                break
            except OSError:
                pass
            time.sleep(0.05)
        r, _ = c.read_final()
        t_resp = time.monotonic() - t0
        expect_status(r, 200, "in-flight request")
        check(r.body == b"slow\n", "body %s" % short(r.body))
        try:
            e.proxy.proc.wait(8)
        except subprocess.TimeoutExpired:
            pass
        dt = time.monotonic() - t0
        info("sigterm_drain: response %.2fs (Connection: %s), exit %.2fs "
             "after TERM; client connection %s" % (
                 t_resp, ",".join(r.all("Connection")) or "-", dt,
                 "closed" if c.wait_closed(0.1) else "open"))
        check(e.proxy.proc.poll() is not None,
              "proxy still running 8s after SIGTERM")
        check(refused, "new connections still accepted 1s after SIGTERM")
        check(dt <= 3, "exited %.2fs after SIGTERM, the in-flight request "
              "ended after %.2fs" % (dt, t_resp))


@test
def daemon_pidfile():
    tmp = TmpDir()
    pid = None
    o = Origin().start()
    try:
        port = free_port()
        pidfile = tmp.file("proxy.pid")
        conf = conf_text(port, {"log": tmp.file("proxy.log"),
                                "pidfile": pidfile},
                         [("web", [o.port])], [("all", [("backend", "web")])])
        path = tmp.file("proxy.ini", conf)
        asan = tmp.file("asan")
        p = subprocess.run([PROXY_BIN, "-c", path], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=10,
                           env=proxy_env({"ASAN_OPTIONS": "log_path=" +
                                          asan}))
        check(p.returncode == 0, "parent exit %d: %s" % (
            p.returncode, short(p.stdout + p.stderr)))
        end = time.monotonic() + 5
        while time.monotonic() < end and not (
                os.path.exists(pidfile) and open(pidfile).read().strip()):
            time.sleep(0.02)
        check(os.path.exists(pidfile), "no pidfile after 5s")
        pid = int(open(pidfile).read().strip())
        check(proc_state(pid) not in (None, "Z"), "pid %d not running" % pid)
        check(os.readlink("/proc/%d/exe" % pid) == os.path.realpath(
            PROXY_BIN), "pid %d is not the proxy" % pid)
        end = time.monotonic() + 5
        while time.monotonic() < end and not port_open(port):
            time.sleep(0.02)
        code, h, body, err = curl(["http://127.0.0.1:%d/" % port], 10)
        check(code == 200 and body == om.HELLO, "daemon answered %d %s" % (
            code, err))
        os.kill(pid, signal.SIGTERM)
        end = time.monotonic() + 5
        while time.monotonic() < end and proc_state(pid) not in (None, "Z"):
            time.sleep(0.02)
        gone = proc_state(pid) in (None, "Z")
        if not gone:
            os.kill(pid, signal.SIGKILL)
        check(gone, "daemon still running 5s after SIGTERM")
        pid = None
        check(not os.path.exists(pidfile), "pidfile left behind")
        reports = [f for f in os.listdir(tmp.path) if f.startswith("asan")]
        for f in reports:
            bad = san_lines(open(os.path.join(tmp.path, f)).read())
            check(not bad, "sanitizer: %s" % bad[:2])
    finally:
        o.stop()
        if pid is not None and proc_state(pid) not in (None, "Z"):
            os.kill(pid, signal.SIGKILL)
        tmp.remove()


# ---------------------------------------------------------------- memory

def _traffic(e, nconn, per):
    """nconn connections, each `per` keep-alive requests; mixed paths."""
    paths = ["/", "/fixed?text=m", "/chunked?n=3&size=50", "/echo"]
    for i in range(nconn):
        c = e.conn()
        for j in range(per):
            p = paths[(i + j) % len(paths)]
            if p == "/echo":
                c.send(req("POST", p, body=b"e" * (i % 50)))
            else:
                c.send(req("GET", p))
            r, _ = c.read_final()
            if r.status != 200:
                raise AssertionError("request %d/%d %s got %r" % (
                    i, j, p, r))
        c.close()
    e.conns.clear()


def _alloc_run(n):
    """Run the plain proxy under the allocation counter for n requests;
    (count text, proxy log lines without their timestamps)."""
    with Env(binary=PLAIN_BIN, start=False) as e:
        count = e.tmp.file("allocs")
        e.proxy = Proxy(e.tmp, e.conf, e.port, PLAIN_BIN,
                        {"LD_PRELOAD": ALLOCCOUNT,
                         "ALLOC_COUNT_FILE": count})
        e.proxy.start()
        _traffic(e, n // 10, 10)
        problems = e.proxy.stop()
        check(not problems, "proxy " + "; ".join(problems))
        check(os.path.exists(count), "no allocation count written")
        log = [re.sub(r"^\S+Z ", "", ln) for ln in
               e.proxy.stderr().splitlines()]
        return open(count).read().strip(), log


@test
def alloc_count_flat():
    for f in (PLAIN_BIN, ALLOCCOUNT):
        check(os.path.exists(f), "%s not built" % f)
    stamp = os.stat(PLAIN_BIN).st_mtime_ns
    a, loga = _alloc_run(200)
    b, logb = _alloc_run(2000)
    check(os.stat(PLAIN_BIN).st_mtime_ns == stamp,
          "./proxy was rebuilt during the test (counts %s, %s)" % (a, b))
    info("alloc_count_flat: 200 requests: %s; 2000 requests: %s" % (a, b))
    na = re.findall(r"\d+", a)
    nb = re.findall(r"\d+", b)
    if not na or na != nb:
        only = sorted(set(logb) - set(loga)) + sorted(set(loga) - set(logb))
        check(False, "allocations differ: %r after 200 requests, %r after "
              "2000; log lines in one run only: %s" % (
                  a, b, short(" | ".join(only), 600)))


@test
def rss_report():
    binary = PLAIN_BIN if os.path.exists(PLAIN_BIN) else None
    with Env(binary=binary, proxy={"max_connections": "512"}) as e:
        _traffic(e, 2, 5)
        idle = rss_kb(e.proxy.pid)
        conns = []
        for i in range(200):
            c = e.conn()
            c.send(req("GET", "/"))
            r, _ = c.read_final()
            check(r.status == 200, "connection %d got %r" % (i, r))
            conns.append(c)
        time.sleep(0.2)
        busy = rss_kb(e.proxy.pid)
        info("rss_report (%s): VmRSS idle %s kB, with 200 keep-alive "
             "connections %s kB" % (os.path.basename(binary or PROXY_BIN),
                                    idle, busy))
        for c in conns:
            c.close()


# ------------------------------------------------------------------ main

def run_one(fn, timeout=TEST_TIMEOUT):
    """Run one test under an alarm of timeout seconds: None when it
    passed, else why it failed, on one line."""
    def alarm(signum, frame):
        raise TestTimeout("test took longer than %ds" % timeout)

    signal.signal(signal.SIGALRM, alarm)
    signal.alarm(timeout)
    try:
        fn()
        signal.alarm(0)
        return None
    except BaseException as ex:
        signal.alarm(0)
        if isinstance(ex, KeyboardInterrupt):
            raise
        msg = str(ex) or type(ex).__name__
        if not isinstance(ex, (AssertionError, TestTimeout)):
            msg = "%s: %s" % (type(ex).__name__, msg)
        return " ".join(msg.split())


def run_tests(tests, label, timeout=TEST_TIMEOUT, cut=1500):
    """Every suite's main: run the tests whose name holds argv[1] (all
    without it), one "ok NAME" / "FAIL NAME: why" line each, then
    "LABEL: N passed, N failed" last. Returns the exit code."""
    filt = sys.argv[1] if len(sys.argv) > 1 else ""
    passed = failed = 0
    t0 = time.monotonic()
    for name, fn in tests:
        if filt not in name:
            continue
        err = run_one(fn, timeout)
        if err is None:
            print("ok %s" % name, flush=True)
            passed += 1
        else:
            print("FAIL %s: %s" % (name, err[:cut]), flush=True)
            failed += 1
    info("%s: %.1fs" % (label, time.monotonic() - t0))
    print("%s: %d passed, %d failed" % (label, passed, failed), flush=True)
    return 1 if failed else 0


def main():
    return run_tests(TESTS, "e2e")


if __name__ == "__main__":
    sys.exit(main())
