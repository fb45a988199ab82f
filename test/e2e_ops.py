#!/usr/bin/env python3
"""test/e2e_ops.py - end-to-end tests of the operations features and of
authentication: reload on SIGHUP (routes move, broken files, keys that need
a restart, open connections kept), the access log format and log
injection, log reopening on SIGUSR1, the error-log rate limit, daemon mode
(pidfile, -t, -v, syslog), Basic auth per route and the PROXY protocol.

    python3 test/e2e_ops.py [FILTER]

FILTER selects the tests whose name contains it. Prints `ok NAME` or
`FAIL NAME: reason` per test, `# ...` information lines, and last
`e2e_ops: N passed, N failed`; exits non-zero on any failure.

Every test checks what the client got and what the origin received. It
uses the harness of test/e2e.py (Env, Proxy, Conn, ...) and the in-process
test origin (test/origin.py). Only 127.x addresses are used (127.0.0.2 for
the trusted balancer of the PROXY protocol tests).

Environment: PROXY_BIN (default test/proxy-san). Foreground proxies are
stopped with SIGTERM by PID and must exit 0 with no sanitizer report.
Daemons (started without -f) are made children of this process with
PR_SET_CHILD_SUBREAPER, so their exit status is checked too; their
sanitizer reports go to files (ASAN_OPTIONS=log_path) in the test's temp
dir, which must stay empty. proxy_protocol_no_address runs the plain
./proxy under valgrind (when both are there) so that a read of
uninitialised memory is seen every time; proxy_protocol_tls makes a
self-signed certificate with the openssl command. Every process a test
starts is stopped by its PID, never by name.
"""

import base64
import calendar
import ctypes
import ctypes.util
import hashlib
import os
import random
import re
import select
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import warnings

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

import e2e  # noqa: E402
from e2e import (Env, Proxy, Conn, TmpDir, conf_text, curl, check,  # noqa
                 expect_status, info, free_port, req, short, port_open,
                 proc_state, san_lines, proxy_env, status_json)
import origin as om  # noqa: E402
from origin import Origin  # noqa: E402

LABEL = "e2e_ops"
PROXY_BIN = e2e.PROXY_BIN
TEST_TIMEOUT = 45           # seconds for one test, whatever it does

RELOADED = r"notice: reloaded "
RELOAD_FAILED = r"error: reload (?:failed|refused)"



TESTS = []


def test(fn):
    TESTS.append((fn.__name__, fn))
    return fn


# ------------------------------------------------------------------ helpers

def wait_for(pred, timeout=5.0, step=0.02):
    """pred() until it is true or timeout passes; its last value."""
    end = time.monotonic() + timeout
    while True:
        v = pred()
        if v or time.monotonic() >= end:
            return v
        time.sleep(step)


def read_text(path):
    try:
        with open(path, "rb") as f:
            return f.read().decode("latin-1")
    except OSError:
        return ""


def read_bytes(path):
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return b""


def nmatch(regex, text):
    return len(re.findall(regex, text, re.M))


def wrap_socket(s, timeout=5.0):
    """A harness Conn around an already connected socket."""
    c = Conn.__new__(Conn)
    c.s = s
    c.s.settimeout(timeout)
    c.timeout = timeout
    c.buf = bytearray()
    c.eof = False
    c.reset = False
    c.send_error = None
    return c


def conn_from(src, port, timeout=5.0):
    """A harness Conn to 127.0.0.1:port from the local address src."""
    return wrap_socket(socket.create_connection(
        ("127.0.0.1", port), timeout=timeout, source_address=(src, 0)),
        timeout)


def exchange_at(port, data, head_req=False, src=None):
    c = conn_from(src, port) if src else wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=5))
    try:
        c.send(data)
        r, _ = c.read_final(head_req)
        return r
    finally:
        c.close()


def new_requests(o, n0, settle=0.1):
    """The origin's requests after the first n0, once nothing new came
    for `settle` seconds."""
    last = o.count()
    end = time.monotonic() + 3
    while time.monotonic() < end:
        time.sleep(settle)
        n = o.count()
        if n == last:
            break
        last = n
    return o.snapshot()[n0:]


def nothing_at(o, n0, b0, what=""):
    time.sleep(0.05)
    got = o.snapshot()[n0:]
    check(not got and o.received_bytes == b0,
          "%sorigin received %d bytes: %r" % (
              what and what + ": ", o.received_bytes - b0, got))


def mkconf(port, proxy=None, backends=(), routes=()):
    """conf_text with backends [(name, [ports], [(key, value)])]."""
    text = conf_text(port, proxy, [(b[0], b[1]) for b in backends],
                     routes)
    for b in backends:
        if len(b) > 2 and b[2]:
            hdr = "[backend %s]\n" % b[0]
            srv = "".join("server = 127.0.0.1:%d\n" % p for p in b[1])
            extra = "".join("%s = %s\n" % kv for kv in b[2])
            check(hdr + srv in text, "test bug: backend %s not found" % b[0])
            text = text.replace(hdr + srv, hdr + srv + extra)
    return text


def one_route(port, oport, proxy=None):
    return conf_text(port, proxy, [("web", [oport])],
                     [("all", [("backend", "web")])])


def start_with(e, text):
    """Start e's proxy (Env(start=False)) with the config text."""
    e.conf = text
    e.proxy = Proxy(e.tmp, text, e.port)
    e.proxy.start()
    return e.proxy


def rewrite(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def hup(e, text=None, ok=True, timeout=5.0):
    """Rewrite the config (when text is given), SIGHUP by PID and wait for
    the log to say "reloaded" (ok) or "reload failed" (not ok). Returns the
    log lines the reload wrote."""
    if text is not None:
        rewrite(e.proxy.conf, text)
    before = e.proxy.stderr()
    n_ok, n_bad = nmatch(RELOADED, before), nmatch(RELOAD_FAILED, before)
    os.kill(e.proxy.pid, signal.SIGHUP)

    def done():
        t = e.proxy.stderr()
        return nmatch(RELOADED, t) > n_ok or nmatch(RELOAD_FAILED, t) > n_bad
    wait_for(done, timeout)
    after = e.proxy.stderr()
    new = after[len(before):]
    if nmatch(RELOADED, after) > n_ok:
        check(ok, "the reload succeeded, expected it to fail: %s" %
              short(new, 600))
    elif nmatch(RELOAD_FAILED, after) > n_bad:
        check(not ok, "the reload failed: %s" % short(new, 600))
    else:
        check(False, "no 'reloaded' or 'reload failed' in the log %gs "
              "after SIGHUP; log ends %s" % (timeout,
                                             short(after[-500:], 500)))
    return new


def get(e, path, headers=(), host="test.local", head=False):
    return e.exchange(req("HEAD" if head else "GET", path, host=host,
                          headers=headers), head_req=head)


def from_origin(r, name, what=""):
    check(r.status == 200 and r.h("X-Origin") == name,
          "%sexpected 200 from origin %s, got %r" % (
              what and what + ": ", name, r))


# ---------------------------------------------------------- daemon helpers

PR_SET_CHILD_SUBREAPER = 36
_reaper = None


def subreaper():
    """Become the parent of the daemons our children leave behind, so
    their exit status can be read. True when that worked."""
    global _reaper
    if _reaper is None:
        try:
            libc = ctypes.CDLL(None, use_errno=True)
            _reaper = libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
        except (OSError, AttributeError):
            _reaper = False
    return _reaper


def daemon_env(tmp):
    prev = os.environ.get("ASAN_OPTIONS", "")
    return proxy_env({"ASAN_OPTIONS": (prev + ":" if prev else "") +
                      "log_path=" + os.path.join(tmp.path, "asan")})


def run_parent(tmp, conf, name="parent.out"):
    """Run `proxy -c conf` (daemon mode); its output goes to a file (the
    daemon may keep what it inherited). (exit code, output, seconds)."""
    out = tmp.file(name)
    t0 = time.monotonic()
    with open(out, "wb") as f:
        p = subprocess.run([PROXY_BIN, "-c", conf], stdin=subprocess.DEVNULL,
                           stdout=f, stderr=f, timeout=15,
                           env=daemon_env(tmp))
    return p.returncode, read_text(out), time.monotonic() - t0


def pid_in(pidfile):
    m = re.fullmatch(r"(\d+)\n?", read_text(pidfile))
    return int(m.group(1)) if m else None


def is_our_proxy(pid):
    try:
        return os.readlink("/proc/%d/exe" % pid) == os.path.realpath(
            PROXY_BIN)
    except OSError:
        return False


def reap(pid, timeout):
    """Wait for pid to end: its exit code, None when it is not our child
    (then only its disappearance is seen), "running" on timeout."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            r, st = os.waitpid(pid, os.WNOHANG)
        except ChildProcessError:
            if proc_state(pid) in (None, "Z"):
                return None
            time.sleep(0.02)
            continue
        if r == pid:
            return os.waitstatus_to_exitcode(st)
        time.sleep(0.02)
    return "running"


def stop_daemon(pid, timeout=8):
    """SIGTERM by PID; problems (empty when it exited 0 in time)."""
    os.kill(pid, signal.SIGTERM)
    rc = reap(pid, timeout)
    if rc == "running":
        os.kill(pid, signal.SIGKILL)
        reap(pid, 3)
        return ["daemon %d still running %ds after SIGTERM" % (pid, timeout)]
    if rc not in (0, None):
        return ["daemon exit code %d" % rc]
    return []


def kill_leftover(pid):
    if pid is not None and is_our_proxy(pid) and proc_state(pid) not in (
            None, "Z"):
        os.kill(pid, signal.SIGKILL)
        reap(pid, 3)


def asan_reports(tmp):
    bad = []
    for f in sorted(os.listdir(tmp.path)):
        if f.startswith("asan"):
            text = read_text(os.path.join(tmp.path, f))
            bad.extend(san_lines(text) or [short(text, 200)])
    return bad


# ------------------------------------------------------------- reload

class SlowReader(threading.Thread):
    """GET path and read the response slowly (piece bytes every pause
    seconds), hashing the body."""

    def __init__(self, port, path, piece=1 << 16, pause=0.002):
        super().__init__(daemon=True)
        self.s = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.s.sendall(req("GET", path))
        self.piece = piece
        self.pause = pause
        self.head = b""
        self.clen = None
        self.got = 0
        self.h = hashlib.sha256()
        self.error = None

    def run(self):
        try:
            buf = b""
            while b"\r\n\r\n" not in buf:
                d = self.s.recv(1 << 16)
                if not d:
                    raise EOFError("closed before the head: %s" % short(buf))
                buf += d
            i = buf.index(b"\r\n\r\n") + 4
            self.head = buf[:i]
            m = re.search(rb"\r\ncontent-length:[ \t]*(\d+)", self.head,
                          re.I)
            if not m:
                raise ValueError("no Content-Length in %s" %
                                 short(self.head))
            self.clen = int(m.group(1))
            body = buf[i:]
            self.h.update(body)
            self.got += len(body)
            while self.got < self.clen:
                time.sleep(self.pause)
                d = self.s.recv(min(self.piece, self.clen - self.got))
                if not d:
                    raise EOFError("closed after %d of %d body bytes" % (
                        self.got, self.clen))
                self.h.update(d)
                self.got += len(d)
        except Exception as ex:  # reported by the test
            self.error = ex


@test
def reload_moves_route():
    size = 100 * 1000 * 1000
    with Env(origins=("a", "b")) as e:
        a, b = e.origins["a"], e.origins["b"]
        target = "/large?size=%d" % size
        rd = SlowReader(e.port, target)
        t0 = time.monotonic()
        rd.start()
        check(wait_for(lambda: rd.got >= 1 << 20 or not rd.is_alive(), 10),
              "the download did not start (%d bytes, %r)" % (
                  rd.got, rd.error))
        check(rd.error is None, "download: %r" % rd.error)
        new = hup(e, one_route(e.port, b.port))
        at_reload = rd.got
        check(rd.is_alive() and at_reload < size,
              "the download was no longer in flight at the reload (%d of "
              "%d bytes)" % (at_reload, size))
        for i in range(5):
            r = get(e, "/fixed?text=new%d" % i)
            from_origin(r, "b", "request %d after the reload" % i)
            check(r.body == b"new%d" % i, "body %s" % short(r.body))
        got_b = [r.target for r in b.wait_requests(5, 3)]
        check(got_b == ["/fixed?text=new%d" % i for i in range(5)],
              "origin b saw %r" % got_b)
        rd.join(35)
        check(not rd.is_alive(), "download not done 35 s after the reload "
              "(%d of %d bytes)" % (rd.got, size))
        dt = time.monotonic() - t0
        check(rd.error is None, "download: %s" % rd.error)
        check(re.match(rb"HTTP/1\.1 200 ", rd.head) and
              b"\r\nX-Origin: a\r\n" in rd.head,
              "download head %s" % short(rd.head, 300))
        check(rd.got == size and rd.h.hexdigest() == om.large_sha256(size),
              "download got %d bytes, sha256 %s, want %d bytes %s" % (
                  rd.got, rd.h.hexdigest(), size, om.large_sha256(size)))
        seen_a = [r.target for r in a.snapshot()]
        check(seen_a == [target], "origin a saw %r" % seen_a)
        # Its next request on the same client connection is a new request:
        # the new configuration serves it.
        c = wrap_socket(rd.s)
        e.conns.append(c)
        c.send(req("GET", "/fixed?text=same-conn"))
        r, _ = c.read_final()
        from_origin(r, "b", "next request on the download's connection")
        check(r.body == b"same-conn", "body %s" % short(r.body))
        check(len(a.snapshot()) == 1, "origin a saw %r" % a.snapshot())
        info("reload_moves_route: reloaded at %.1f MB of 100 MB, download "
             "done in %.1fs; log: %s" % (at_reload / 1e6, dt,
                                         " | ".join(new.split("\n")[:3])))


@test
def reload_broken_config():
    with Env(origins=("a", "b")) as e:
        a, b = e.origins["a"], e.origins["b"]
        keep = e.conn()
        keep.send(req("GET", "/fixed?text=k0"))
        r, _ = keep.read_final()
        from_origin(r, "a", "before the reloads")
        good_b = one_route(e.port, b.port)
        lines = good_b.split("\n")

        def lineno(mark):
            return [i + 1 for i, ln in enumerate(text.split("\n"))
                    if ln == mark][-1]

        # 1: a syntax error (a line that is not a section, key or comment)
        i = lines.index("[route all]")
        text = "\n".join(lines[:i + 1] + ["this line has no equals sign"] +
                         lines[i + 1:])
        # 2: an unknown key; 3: a route naming no backend
        broken = [(text, [lineno("this line has no equals sign")])]
        text = good_b.replace("buffers = 32\n", "buffers = 32\nbogus = 1\n")
        broken.append((text, [lineno("bogus = 1")]))
        text = good_b.replace("backend = web", "backend = nosuch")
        broken.append((text, [lineno("backend = nosuch"),
                              lineno("[route all]")]))
        for k, (text, want) in enumerate(broken):
            new = hup(e, text, ok=False)
            err = [ln for ln in new.splitlines()
                   if re.search(RELOAD_FAILED, ln)]
            found = [int(n) for n in re.findall(
                re.escape(e.proxy.conf) + r":(\d+):", err[0])]
            check(found and found[0] in want, "broken config %d: the error "
                  "should name %s:%s, got %s" % (
                      k + 1, e.proxy.conf, " or ".join(map(str, want)),
                      short(err[0], 400)))
            # The old configuration serves: a new connection, and the
            # next request of a connection opened before.
            r = get(e, "/fixed?text=n%d" % k)
            from_origin(r, "a", "new connection after broken config %d" %
                        (k + 1))
            keep.send(req("GET", "/fixed?text=k%d" % (k + 1)))
            r, _ = keep.read_final()
            from_origin(r, "a", "kept connection after broken config %d" %
                        (k + 1))
            check(r.body == b"k%d" % (k + 1), "body %s" % short(r.body))
            if k == 0:
                info("reload_broken_config: %s" % err[0].strip())
        check(b.count() == 0, "origin b saw %r" % b.snapshot())
        check(e.proxy.proc.poll() is None, "the proxy exited")
        # A good file afterwards reloads.
        hup(e, good_b)
        r = get(e, "/fixed?text=good")
        from_origin(r, "b", "after the good reload")
        keep.send(req("GET", "/fixed?text=kgood"))
        r, _ = keep.read_final()
        from_origin(r, "b", "kept connection after the good reload")
        check([r.target for r in b.wait_requests(2, 3)] ==
              ["/fixed?text=good", "/fixed?text=kgood"],
              "origin b saw %r" % b.snapshot())
        check(a.count() == 7, "origin a saw %r" % a.snapshot())


@test
def reload_restart_keys():
    with Env(origins=("a", "b")) as e:
        b = e.origins["b"]
        before = status_json(e.port)
        new_port = free_port()
        text = conf_text(new_port, {"max_connections": "32",
                                    "buffers": "16", "buffer_size": "8K"},
                         [("web", [b.port])], [("all", [("backend", "web")])])
        new = hup(e, text)
        for key in ("max_connections", "buffers", "buffer_size", "listen"):
            check(re.search(r"(?m)^\S+ warn\w*: .*\b%s\b.*restart" % key,
                            new),
                  "the log does not say that %s needs a restart: %s" % (
                      key, short(new, 600)))
        check(port_open(e.port), "no longer listening on %d" % e.port)
        check(not port_open(new_port), "listening on the new port %d "
              "without a restart" % new_port)
        # The rest of the file did take effect.
        r = get(e, "/fixed?text=moved")
        from_origin(r, "b", "after the reload")
        after = status_json(e.port)
        for k, x in (("connections", "max"), ("buffers", "total"),
                     ("buffers", "size")):
            check(after[k][x] == before[k][x], "status %s %s changed "
                  "without a restart: %r -> %r" % (k, x, before[k][x],
                                                   after[k][x]))
        check((before["connections"]["max"], before["buffers"]["total"],
               before["buffers"]["size"]) == (64, 32, 16384),
              "status %r" % before)
        # And again: the running values still stand.
        hup(e)
        check(port_open(e.port) and not port_open(new_port),
              "listeners changed after a second reload")
        r = get(e, "/")
        from_origin(r, "b", "after the second reload")
        info("reload_restart_keys: %s" % " | ".join(
            ln.split(" ", 1)[-1] for ln in new.splitlines() if ln))


def _ws_open(e):
    c = e.conn()
    c.send(req("GET", "/ws", headers=[
        "Upgrade: websocket", "Connection: Upgrade",
        "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==",
        "Sec-WebSocket-Version: 13"]))
    r = c.read_response()
    expect_status(r, 101, "websocket")
    return c


def _ws_echo(c, msg, what):
    c.send(msg)
    while len(c.buf) < len(msg):
        check(c._fill(), "%s: tunnel closed after %d of %d bytes" % (
            what, len(c.buf), len(msg)))
    check(bytes(c.buf) == msg, "%s: echo differs (%d bytes)" % (
        what, len(msg)))
    c.buf.clear()


@test
def reload_keeps_connections():
    with Env(origins=("a", "b")) as e:
        a, b = e.origins["a"], e.origins["b"]
        conns = []
        for i in range(20):
            c = e.conn()
            c.send(req("GET", "/fixed?text=k%d" % i))
            r, _ = c.read_final()
            from_origin(r, "a", "keep-alive connection %d" % i)
            conns.append(c)
        ws = _ws_open(e)
        _ws_echo(ws, b"before the reload", "tunnel")
        na = a.count()
        hup(e, one_route(e.port, b.port))
        _ws_echo(ws, b"after the reload", "tunnel after HUP")
        _ws_echo(ws, os.urandom(100000), "tunnel after HUP")
        for i, c in enumerate(conns):
            check(not c.pending(0), "connection %d got %s" % (
                i, short(c.buf)))
            c.send(req("GET", "/fixed?text=after%d" % i))
            r, _ = c.read_final()
            # A new request on an old connection: the new routes.
            from_origin(r, "b", "keep-alive connection %d after HUP" % i)
            check(r.body == b"after%d" % i, "body %s" % short(r.body))
        got = [r.target for r in b.wait_requests(20, 3)]
        check(got == ["/fixed?text=after%d" % i for i in range(20)],
              "origin b saw %r" % got)
        check(a.count() == na, "origin a saw %r" % a.snapshot()[na:])
        _ws_echo(ws, b"end", "tunnel")
        ws.close()
        # The tunnel held the old configuration; once it is gone another
        # reload must work as well.
        time.sleep(0.1)
        hup(e)
        r = get(e, "/")
        from_origin(r, "b", "after the second reload")


# --------------------------------------------------------------- logging

QV = r'"((?:[\x20\x21\x23-\x5b\x5d-\x7e]|\\x[0-9a-f]{2})*)"'
ALOG_RE = re.compile(
    r"^(\S+) - - \[(\d\d/[A-Z][a-z][a-z]/\d{4}:\d\d:\d\d:\d\d) \+0000\] " +
    QV + r" (\d{3}|-) (\d+) " + QV + " " + QV +
    r" (\d+\.\d{3}) (\S+:\d+|-)$")


def alog_parse(line):
    m = ALOG_RE.match(line)
    if not m:
        return None
    return {"ip": m.group(1), "time": m.group(2), "req": m.group(3),
            "status": m.group(4), "bytes": int(m.group(5)),
            "ref": m.group(6), "ua": m.group(7),
            "secs": float(m.group(8)), "up": m.group(9)}


def alog_lines(path, n, timeout=3.0):
    wait_for(lambda: read_bytes(path).count(b"\n") >= n, timeout)
    time.sleep(0.1)     # and nothing more comes
    return read_bytes(path).split(b"\n")[:-1]


@test
def access_log_format():
    with Env(start=False) as e:
        alog = e.tmp.file("access.log")
        oport = e.origin.port
        start_with(e, one_route(e.port, oport, {"access_log": alog}))
        up = "127.0.0.1:%d" % oport
        t0 = time.time()
        want = []       # (what, client response, expected fields)

        def one(what, data, fields, head=False):
            n0, b0 = e.origin.count(), e.origin.received_bytes
            r = e.exchange(data, head_req=head)
            if r.status == 400:
                nothing_at(e.origin, n0, b0, what)
            want.append((what, r, fields))
            return r

        r = one("200 with Referer and User-Agent", req(
            "GET", "/fixed", headers=["User-Agent: ops-test/1.0 (x; y)",
                                      "Referer: http://ref.example/p?q=1"]),
            {"req": "GET /fixed HTTP/1.1", "status": "200",
             "ref": "http://ref.example/p?q=1", "ua": "ops-test/1.0 (x; y)",
             "up": up})
        check(r.body == om.FIXED, "body %s" % short(r.body))
        one("404 from the origin", req("GET", "/nope?x=1"),
            {"req": "GET /nope?x=1 HTTP/1.1", "status": "404", "ref": "-",
             "ua": "-", "up": up})
        one("400 for a malformed head", b"GET / HTTP/1.1\r\nHost: x\r\n"
            b"Bad Header : y\r\n\r\n",
            {"req": "-", "status": "400", "ref": "-", "ua": "-", "up": "-"})
        one("status page", req("GET", "/.proxy/status", headers=[
            "User-Agent: monitor"]),
            {"req": "GET /.proxy/status HTTP/1.1", "status": "200",
             "ref": "-", "ua": "monitor", "up": "-"})
        one("HEAD", req("HEAD", "/fixed"),
            {"req": "HEAD /fixed HTTP/1.1", "status": "200", "ref": "-",
             "ua": "-", "up": up}, head=True)
        one("HTTP/1.0", req("GET", "/", version="HTTP/1.0", host=None),
            {"req": "GET / HTTP/1.0", "status": "200", "ref": "-",
             "ua": "-", "up": up})
        one("quote, tab, backslash and obs-text in User-Agent",
            b"GET /fixed HTTP/1.1\r\nHost: x\r\nUser-Agent: a\"b\tc\\d\xe9e"
            b"\r\nReferer: \"q\"\r\n\r\n",
            {"req": "GET /fixed HTTP/1.1", "status": "200",
             "ref": "\\x22q\\x22", "ua": "a\\x22b\\x09c\\x5cd\\xe9e",
             "up": up})
        fake = ('evil" 200 0 "-" "-" 0.000 -%0d%0a6.6.6.6 - - '
                '[01/Jan/2026:00:00:00 +0000] \\n"GET /owned HTTP/1.1"')
        one("encoded newline and quotes in User-Agent", req(
            "GET", "/", headers=["User-Agent: " + fake]),
            {"req": "GET / HTTP/1.1", "status": "200", "ref": "-",
             "ua": "<cut?>" + fake.replace("\\", "\\x5c").replace(
                 '"', "\\x22"), "up": up})
        # A raw CR LF in the value ends the header line; the rest is not a
        # header: one 400 line, never a second, forged line.
        one("raw CRLF in User-Agent", b"GET / HTTP/1.1\r\nHost: x\r\n"
            b"User-Agent: evil\r\n6.6.6.6 - - [01/Jan/2026:00:00:00 +0000] "
            b"\"GET /owned HTTP/1.1\" 200 0 \"-\" \"-\" 0.000 -\r\n\r\n",
            {"req": "-", "status": "400", "ref": "-", "ua": "-", "up": "-"})
        r = one("control byte in User-Agent",
                b"GET / HTTP/1.1\r\nHost: x\r\nUser-Agent: a\x01b\r\n\r\n",
                {"status": "?", "ref": "-", "up": "?"})
        if r.status == 200:
            want[-1][2].update({"req": "GET / HTTP/1.1", "status": "200",
                                "ua": "a\\x01b", "up": up})
        else:
            want[-1][2].update({"req": "-", "status": "400", "ua": "-",
                                "up": "-"})
        long_ua = "L" * 1000
        one("long User-Agent", req("GET", "/", headers=[
            "User-Agent: " + long_ua]),
            {"req": "GET / HTTP/1.1", "status": "200", "ref": "-",
             "ua": "<cut>", "up": up})
        # A proxied request then the status page on one connection: the
        # second line has no upstream.
        c = e.conn()
        c.send(req("GET", "/"))
        r1, _ = c.read_final()
        c.send(req("GET", "/.proxy/status"))
        r2, _ = c.read_final()
        want.append(("keep-alive: proxied", r1, {
            "req": "GET / HTTP/1.1", "status": "200", "ref": "-", "ua": "-",
            "up": up}))
        want.append(("keep-alive: then the status page", r2, {
            "req": "GET /.proxy/status HTTP/1.1", "status": "200",
            "ref": "-", "ua": "-", "up": "-"}))
        t1 = time.time()
        lines = alog_lines(alog, len(want))
        check(len(lines) == len(want), "%d access log lines for %d "
              "requests: %s" % (len(lines), len(want),
                                short(b"\n".join(lines), 1500)))
        problems = []
        for (what, r, f), raw in zip(want, lines):
            check(all(0x20 <= ch < 0x7f for ch in raw),
                  "%s: raw non-printable byte in %s" % (what, short(raw)))
            line = raw.decode("ascii")
            got = alog_parse(line)
            check(got, "%s: line does not match the format: %s" % (
                what, line))
            body = 0 if f["req"].startswith("HEAD ") else len(r.body)
            check(r.complete, "%s: response incomplete %r" % (what, r))
            exp = dict(f, ip="127.0.0.1", bytes=body)
            exp["status"] = str(r.status)
            if exp["ua"].startswith("<cut?>"):
                # Escaped in full, or cut with "..." (long values are).
                full = exp["ua"][6:]
                ok = got["ua"] == full or (
                    got["ua"].endswith("...") and len(got["ua"]) > 20 and
                    full.startswith(got["ua"][:-3]))
                check(ok, "%s: User-Agent %s, want (a cut of) %s" % (
                    what, got["ua"], full))
                exp["ua"] = got["ua"]
            if exp["ua"] == "<cut>":
                check(got["ua"].endswith("...") and
                      set(got["ua"][:-3]) == {"L"} and
                      16 <= len(got["ua"]) < 1000,
                      "%s: not cut with '...': %s" % (what, line[:300]))
                exp["ua"] = got["ua"]
                info("access_log_format: a 1000-byte User-Agent is logged "
                     "as %d bytes" % len(got["ua"]))
            diff = {k: (got[k], v) for k, v in exp.items() if got[k] != v}
            if diff:
                problems.append("%s: (got, want) %r in line %s" % (
                    what, diff, line))
            ts = calendar.timegm(time.strptime(got["time"],
                                               "%d/%b/%Y:%H:%M:%S"))
            check(t0 - 2 <= ts <= t1 + 2, "%s: time %s is not now" % (
                what, got["time"]))
            check(got["secs"] < 5, "%s: request time %s" % (what,
                                                           got["secs"]))
        info("access_log_format: e.g. %s" % lines[0].decode())
        info("access_log_format: 400: %s" % lines[2].decode())
        check(not problems, " ;; ".join(problems))


@test
def log_reopen():
    tmp = TmpDir()
    o = Origin().start()
    pid = None
    subreaper()
    try:
        port = free_port()
        errlog, alog = tmp.file("error.log"), tmp.file("access.log")
        pidfile = tmp.file("proxy.pid")
        conf = tmp.file("proxy.ini", one_route(port, o.port, {
            "log": errlog, "access_log": alog, "pidfile": pidfile}))
        rc, out, _ = run_parent(tmp, conf)
        check(rc == 0, "daemon start: exit %d: %s" % (rc, short(out)))
        pid = pid_in(pidfile)
        check(pid and is_our_proxy(pid), "pidfile %r" % read_text(pidfile))

        def fetch(tag):
            r = exchange_at(port, req("GET", "/fixed?text=" + tag))
            from_origin(r, "origin", tag)
            check(r.body == tag.encode(), "body %s" % short(r.body))

        fetch("one")
        check(wait_for(lambda: "text=one" in read_text(alog), 3),
              "access log: %s" % short(read_text(alog)))
        check("listening on" in read_text(errlog),
              "error log: %s" % short(read_text(errlog)))
        os.rename(alog, alog + ".1")
        os.rename(errlog, errlog + ".1")
        fetch("two")    # still into the moved file: it is open
        check(wait_for(lambda: "text=two" in read_text(alog + ".1"), 3),
              "the moved access log did not get the next line: %s" %
              short(read_text(alog + ".1")))
        os.kill(pid, signal.SIGUSR1)
        check(wait_for(lambda: "logs reopened" in read_text(errlog), 3),
              "no fresh error log with 'logs reopened' at %s (old one: %s)" %
              (errlog, short(read_text(errlog + ".1")[-300:])))
        check(os.path.exists(alog), "no fresh access log at %s" % alog)
        fetch("three")
        check(wait_for(lambda: "text=three" in read_text(alog), 3),
              "fresh access log: %s" % short(read_text(alog)))
        old_a, new_a = read_text(alog + ".1"), read_text(alog)
        check("text=one" in old_a and "text=two" in old_a and
              "text=three" not in old_a, "old access log %s" % short(old_a))
        check(new_a.count("\n") == 1 and "text=three" in new_a,
              "new access log %s" % short(new_a))
        check(alog_parse(new_a.rstrip("\n")), "line format: %s" % new_a)
        check("logs reopened" not in read_text(errlog + ".1"),
              "old error log got the reopen line")
        problems = stop_daemon(pid)
        pid = None
        check(not problems, "; ".join(problems))
        check("stopped" in read_text(errlog), "fresh error log does not "
              "say 'stopped': %s" % short(read_text(errlog)))
        check(not os.path.exists(pidfile), "pidfile left behind")
        bad = asan_reports(tmp)
        check(not bad, "sanitizer: %s" % bad[:3])
    finally:
        kill_leftover(pid)
        o.stop()
        tmp.remove()


LOG_LINE = re.compile(r"^(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ) (\w+): (.*)$")


def _dead_env_conf(e, fail_timeout=None):
    return mkconf(e.port, None, [
        ("web", [e.origin.port]),
        ("dead", [e.down_port], [("fail_timeout", fail_timeout)]
         if fail_timeout else [])],
        [("dead", [("path", "/dead/"), ("backend", "dead")]),
         ("all", [("backend", "web")])])


def _messages(text):
    """[(second, message)] of the log lines, in order."""
    out = []
    for ln in text.splitlines():
        m = LOG_LINE.match(ln)
        if m:
            out.append((m.group(1), m.group(3)))
    return out


# "(N similar messages dropped: "FORMAT")": the count names the message's
# printf format, so each count is attributed to its own kind.
DROPPED = re.compile(r'\((\d+) similar messages dropped: "(.*)"\)')


def _dropped(text):
    return [int(m.group(1)) for m in DROPPED.finditer(text)]


def _next_second(frac=0.02):
    time.sleep(1 + frac - time.time() % 1)


@test
def log_rate_limit():
    """A dead backend (fail_timeout 1ms, so every request tries it): 200
    failures over about 2.5 s. Each failure logs "connect ...: Connection
    refused", "server ... is down", "502 for ..." (or "503 for client"
    while it is marked down) and "server ... is up" on the next try."""
    with Env(start=False) as e:
        start_with(e, _dead_env_conf(e, "1ms"))
        down = "127.0.0.1:%d" % e.down_port
        n = 200
        _next_second()
        t0 = time.monotonic()
        codes = {}
        for i in range(n):     # ~80 a second
            r = get(e, "/dead/%d" % i)
            codes[r.status] = codes.get(r.status, 0) + 1
            left = t0 + (i + 1) * 0.0125 - time.monotonic()
            if left > 0:
                time.sleep(left)
        check(set(codes) <= {502, 503} and codes.get(502),
              "statuses %r, want 502 (503 while marked down)" % codes)
        # One more failure in a later second brings out the counts of the
        # last busy one (every kind occurs again: the server is tried).
        _next_second(0.1)
        r = get(e, "/dead/last")
        expect_status(r, 502, "the last failure, a second later")
        codes[502] += 1
        time.sleep(0.2)
        r = get(e, "/")
        from_origin(r, "a", "a good route meanwhile")
        log = e.proxy.stderr()
        msgs = _messages(log)
        per = {}
        for sec, m in msgs:
            per[(sec, m)] = per.get((sec, m), 0) + 1
        worst = max(per.items(), key=lambda kv: kv[1])
        dropped = _dropped(log)
        kinds = {
            "connect": r"^connect %s: Connection refused$" % re.escape(down),
            "down": r"^backend dead: server %s is down$" % re.escape(down),
            "up": r"^backend dead: server %s is up$" % re.escape(down),
            "status": r"^(?:502 for %s|503 for client)$" % re.escape(down)}
        written = {k: sum(1 for _, m in msgs if re.search(rx, m))
                   for k, rx in kinds.items()}
        # Each 502 is one refused connect and one "is down"; each connect
        # but the first follows one "is up"; each failure one "50x for".
        events = {"connect": codes[502], "down": codes[502],
                  "up": codes[502] - 1,
                  "status": codes[502] + codes.get(503, 0)}
        conn_sec = sorted(per[k] for k in per
                          if re.search(kinds["connect"], k[1]))
        info("log_rate_limit: %d failures (%r) in %.1fs; 'connect' lines "
             "per second %r; written %r of events %r; dropped counts %r" % (
                 sum(codes.values()), codes, time.monotonic() - t0,
                 conn_sec, written, events, dropped))
        check(written["connect"] > 0, "no 'connect ...: Connection refused'"
              " line: %s" % short(log[-600:], 600))
        check(worst[1] <= 10, "%d lines '%s' in second %s" % (
            worst[1], worst[0][1], worst[0][0]))
        check(len(conn_sec) >= 2, "the failures spread over %d second(s)" %
              len(conn_sec))
        check(dropped and min(dropped) > 0, "no '(N similar messages "
              "dropped)' line: %s" % short(log[-600:], 600))
        # Nothing dropped without a trace: every message not written is
        # in a count (the last failure, in a later second, brought out
        # the counts of every kind); each count names its format.
        formats = {"connect": r"^connect %s: %s$",
                   "down": r"^backend %s: server %s is down$",
                   "up": r"^backend %s: server %s is up$",
                   "status": r"^%d for %s$"}
        counted = dict((k, 0) for k in kinds)
        for _, m in msgs:
            d = DROPPED.match(m)
            for k, rx in formats.items():
                if d and re.search(rx, d.group(2)):
                    counted[k] += int(d.group(1))
        bad = ["%s: %d messages, %d written, %d counted" % (
            k, events[k], written[k], counted[k]) for k in kinds
            if written[k] + counted[k] != events[k]]
        check(not bad, "dropped messages not accounted for: %s (all "
              "counts %r)" % ("; ".join(bad), dropped))


@test
def log_rate_limit_count_written():
    """The count of a burst that has ended is written when the next
    second begins (proxy.c, log_allowed), not only when the same message
    comes again, which may be days later. The backend is marked down by
    the first failure (fail_timeout 10s): each later request logs exactly
    one "503 for client"."""
    with Env(start=False) as e:
        start_with(e, _dead_env_conf(e))
        r = get(e, "/dead/first")
        expect_status(r, 502, "first failure")
        _next_second()
        t0 = time.time()
        n = 0
        while n < 60 and time.time() - t0 < 0.8:
            r = get(e, "/dead/%d" % n)
            expect_status(r, 503, "failure %d" % n)
            n += 1
        # Then only good requests, for over two seconds.
        for i in range(10):
            r = get(e, "/")
            from_origin(r, "a", "good request %d" % i)
            time.sleep(0.25)
        log = e.proxy.stderr()
        written = sum(1 for _, m in _messages(log)
                      if m == "503 for client")
        dropped = _dropped(log)
        info("log_rate_limit_count_written: %d x 503 in %.2fs: %d lines, "
             "dropped counts %r" % (n, time.time() - t0, written, dropped))
        check(written <= 10, "the burst was not limited (%d lines for %d "
              "failures)" % (written, n))
        check(written + sum(dropped) >= n,
              "2 s after a burst of %d identical warnings the log has %d of "
              "them and no count of the other %d (dropped counts %r)" % (
                  n, written, n - written, dropped))
        # Once the next one comes, the count must be exact.
        r = get(e, "/dead/again")
        expect_status(r, 503, "a later failure")
        time.sleep(0.2)
        log = e.proxy.stderr()
        written = sum(1 for _, m in _messages(log)
                      if m == "503 for client")
        dropped = _dropped(log)
        check(written + sum(dropped) == n + 1,
              "%d x '503 for client': %d written, dropped counts %r" % (
                  n + 1, written, dropped))


@test
def reuseport():
    """reuseport = yes: two instances, each with its own config (one sends
    to origin A, the other to B), listen on one port and the kernel
    spreads connections over both; without it a second cannot bind."""
    tmp1, tmp2, tmp3 = TmpDir(), TmpDir(), TmpDir()
    oa, ob = Origin(name="a").start(), Origin(name="b").start()
    p1 = p2 = None
    try:
        port = free_port()
        p1 = Proxy(tmp1, one_route(port, oa.port, {"reuseport": "yes"}),
                   port)
        p1.start()
        p2 = Proxy(tmp2, one_route(port, ob.port, {"reuseport": "yes"}),
                   port)
        p2.start()
        for i in range(60):
            c = Conn(port)
            c.send(req("GET", "/fixed?text=r%d" % i,
                       headers=["Connection: close"]))
            r, _ = c.read_final()
            expect_status(r, 200, "request %d" % i)
            c.close()
        na, nb = oa.count(), ob.count()
        info("reuseport: 60 connections: %d via instance A, %d via B" % (
            na, nb))
        check(na + nb == 60 and na > 0 and nb > 0,
              "connections not spread: A %d, B %d" % (na, nb))
        conf3 = tmp3.file("proxy.ini", one_route(port, oa.port))
        r = subprocess.run([PROXY_BIN, "-f", "-c", conf3],
                           capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=10, env=proxy_env())
        out = (r.stdout + r.stderr).decode("latin-1")
        check(r.returncode == 1 and "Address already in use" in out,
              "a third instance without reuseport: exit %d %s" % (
                  r.returncode, short(out)))
    finally:
        for p in (p1, p2):
            if p is not None:
                p.stop()
        oa.stop()
        ob.stop()
        for t in (tmp1, tmp2, tmp3):
            t.remove()


# ---------------------------------------------------------------- daemon

@test
def daemon_mode():
    tmp = TmpDir()
    o = Origin().start()
    pids = []
    subreaper()
    try:
        port = free_port()
        pidfile, errlog = tmp.file("proxy.pid"), tmp.file("error.log")
        conf = tmp.file("proxy.ini", one_route(port, o.port, {
            "log": errlog, "pidfile": pidfile}))
        # -t, -v
        p = subprocess.run([PROXY_BIN, "-t", "-c", conf], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=10,
                           env=proxy_env())
        out = (p.stdout + p.stderr).decode("latin-1")
        check(p.returncode == 0, "-t on a good file: exit %d %s" % (
            p.returncode, short(out)))
        check(not os.path.exists(pidfile) and not port_open(port),
              "-t started something")
        bad = tmp.file("bad.ini", read_text(conf).replace(
            "max_connections = 64", "max_connections = 64x"))
        p = subprocess.run([PROXY_BIN, "-t", "-c", bad], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=10,
                           env=proxy_env())
        out = (p.stdout + p.stderr).decode("latin-1")
        badline = read_text(bad).split("\n").index(
            "max_connections = 64x") + 1
        check(p.returncode == 1, "-t on a bad file: exit %d %s" % (
            p.returncode, short(out)))
        check(re.search(re.escape(bad) + ":%d:" % badline, out),
              "-t does not name %s:%d: %s" % (bad, badline, short(out)))
        p = subprocess.run([PROXY_BIN, "-v"], capture_output=True,
                           stdin=subprocess.DEVNULL, timeout=10,
                           env=proxy_env())
        out = p.stdout.decode("latin-1")
        check(p.returncode == 0 and re.match(r"^\S+ v?\d+\.\d+\S* .*\n$", out),
              "-v: exit %d, %s" % (p.returncode, short(out)))
        info("daemon_mode: -v: %s" % out.strip())

        # Daemon: the command returns once the pidfile names the daemon.
        rc, out, dt = run_parent(tmp, conf)
        pid = pid_in(pidfile)       # read at once, no waiting
        if pid:
            pids.append(pid)
        check(rc == 0, "parent exit %d: %s" % (rc, short(out)))
        check(pid is not None, "the command returned with pidfile %r" %
              read_text(pidfile))
        check(is_our_proxy(pid) and proc_state(pid) not in (None, "Z"),
              "pid %d is not a running proxy" % pid)
        check(pid != os.getpid(), "pid")
        check(port_open(port), "daemon not listening when the command "
              "returned")
        code, h, body, err = curl(["http://127.0.0.1:%d/" % port], 10)
        check(code == 200 and body == om.HELLO, "daemon answered %d %s %s"
              % (code, short(body), err))
        check([r.target for r in o.snapshot()] == ["/"], "origin saw %r" %
              o.snapshot())
        check(wait_for(lambda: "listening on" in read_text(errlog), 2),
              "log file: %s" % short(read_text(errlog)))
        problems = stop_daemon(pid)
        pids.remove(pid)
        check(not problems, "; ".join(problems))
        check(not os.path.exists(pidfile), "pidfile left behind")
        check(not port_open(port), "still listening after TERM")
        check("stopped" in read_text(errlog), "log: %s" %
              short(read_text(errlog)[-300:]))
        info("daemon_mode: parent returned in %.2fs" % dt)

        # log = syslog: starts and serves (syslog itself is not read); the
        # command's output must not stay open (a caller reading it, as in
        # $(proxy ...) or over ssh, would never see its end).
        conf2 = tmp.file("syslog.ini", one_route(port, o.port, {
            "log": "syslog", "pidfile": pidfile}))
        p = subprocess.Popen([PROXY_BIN, "-c", conf2],
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, env=daemon_env(tmp))
        try:
            rc = p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
            rc = "timeout"
        pid = pid_in(pidfile)
        if pid:
            pids.append(pid)
        check(rc == 0, "syslog daemon: parent exit %s" % rc)
        check(pid and is_our_proxy(pid), "syslog daemon: pidfile %r" %
              read_text(pidfile))
        r = exchange_at(port, req("GET", "/fixed?text=syslog"))
        from_origin(r, "origin", "syslog daemon")
        open_fds = []
        for name, f in (("stdout", p.stdout), ("stderr", p.stderr)):
            rd, _, _ = select.select([f], [], [], 1.0)
            if not rd or os.read(f.fileno(), 4096) != b"":
                open_fds.append(name)
        p.stdout.close()
        p.stderr.close()
        problems = stop_daemon(pid)
        pids.remove(pid)
        check(not problems, "syslog daemon: " + "; ".join(problems))
        check(not os.path.exists(pidfile), "syslog daemon: pidfile left")
        check(not open_fds, "with log = syslog the daemon keeps the "
              "command's %s open after the command returned" %
              " and ".join(open_fds))
        bad = asan_reports(tmp)
        check(not bad, "sanitizer: %s" % bad[:3])
    finally:
        for pid in pids:
            kill_leftover(pid)
        o.stop()
        tmp.remove()


# ------------------------------------------------------------ basic auth

def _crypt_hash(pw, method):
    """A crypt(3) hash: SHA-512 ("sha512") or bcrypt ("bcrypt")."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            import crypt as cm
        if method == "sha512":
            salt = cm.mksalt(cm.METHOD_SHA512)
        else:
            salt = cm.mksalt(cm.METHOD_BLOWFISH, rounds=1 << 5)
        h = cm.crypt(pw, salt)
        if h and h.startswith("$"):
            return h
    except (ImportError, ValueError, AttributeError):
        pass
    lib = ctypes.CDLL(ctypes.util.find_library("crypt") or "libcrypt.so.1")
    lib.crypt.restype = ctypes.c_char_p
    lib.crypt.argtypes = (ctypes.c_char_p, ctypes.c_char_p)
    alpha = "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"
    rnd = random.SystemRandom()
    if method == "sha512":
        salt = "$6$" + "".join(rnd.choice(alpha) for _ in range(16))
    else:
        salt = "$2b$05$" + "".join(rnd.choice(alpha) for _ in range(21)) + \
            rnd.choice(".Oeu")
    h = lib.crypt(pw.encode(), salt.encode())
    check(h and h.startswith(b"$"), "cannot make a %s hash" % method)
    return h.decode()


def _basic(user, pw):
    return "Authorization: Basic " + base64.b64encode(
        ("%s:%s" % (user, pw)).encode()).decode()


@test
def basic_auth():
    with Env(start=False) as e:
        o = e.origin
        users = {"sha": ("s3cret-sha", _crypt_hash("s3cret-sha", "sha512")),
                 "bc": ("s3cret-bc", _crypt_hash("s3cret-bc", "bcrypt"))}
        check(users["sha"][1].startswith("$6$") and
              users["bc"][1].startswith("$2"), "hashes %r" % users)
        htpasswd = e.tmp.file("htpasswd", "# users\n" + "".join(
            "%s:%s\n" % (u, h) for u, (_, h) in users.items()))
        routes = [
            ("open", [("path", "/open/"), ("strip_prefix", "yes"),
                      ("backend", "web")]),
            ("fwd", [("path", "/fwd/"), ("strip_prefix", "yes"),
                     ("auth", htpasswd), ("auth_forward", "yes"),
                     ("backend", "web")]),
            ("priv", [("auth", htpasswd), ("backend", "web")])]
        text = mkconf(e.port, None, [("web", [o.port])], routes)
        start_with(e, text)

        def denied(headers, what, path="/headers"):
            n0, b0 = o.count(), o.received_bytes
            r = get(e, path, headers)
            expect_status(r, 401, what)
            nothing_at(o, n0, b0, what)
            return r

        def allowed(headers, what, path="/headers", fwd=None):
            n0 = o.count()
            r = get(e, path, headers)
            expect_status(r, 200, what)
            got = new_requests(o, n0)
            check(len(got) == 1, "%s: origin saw %r" % (what, got))
            auth = got[0].all("Authorization")
            check(auth == ([] if fwd is None else [fwd]),
                  "%s: origin saw Authorization %r, want %r" % (
                      what, auth, fwd))
            return r

        r = denied([], "no credentials")
        wa = r.h("WWW-Authenticate") or ""
        check(re.match(r'(?i)^Basic realm="[^"]+"', wa),
              "401 with WWW-Authenticate %r" % wa)
        info("basic_auth: 401 says WWW-Authenticate: %s" % wa)
        denied([_basic("sha", "wrong")], "sha user, wrong password")
        denied([_basic("bc", "wrong")], "bcrypt user, wrong password")
        denied([_basic("nobody", "s3cret-sha")], "unknown user")
        denied([_basic("sha", "")], "empty password")
        denied([_basic("sha", "s3cret-bc")], "the other user's password")
        denied(["Authorization: Basic !!!not-base64!!!"], "bad base64")
        denied(["Authorization: Bearer " + base64.b64encode(
            b"sha:s3cret-sha").decode()], "not Basic")
        denied([_basic("sha", "s3cret-sha") + "x"], "trailing garbage")
        for u, (pw, _) in users.items():
            allowed([_basic(u, pw)], "user %s" % u)
            allowed([_basic(u, pw)], "user %s again" % u)
        allowed([_basic("sha", "s3cret-sha").replace("Basic", "basic")],
                "lower-case scheme")
        # auth_forward = yes: the origin gets the header as sent.
        h = _basic("bc", "s3cret-bc")
        allowed([h], "auth_forward route", "/fwd/headers",
                fwd=h.split(": ", 1)[1])
        denied([], "auth_forward route without credentials", "/fwd/")
        # A route without auth is not affected, credentials or not.
        allowed([], "route without auth", "/open/")
        allowed([_basic("sha", "wrong")], "route without auth, bad "
                "credentials", "/open/", fwd=_basic("sha", "wrong").split(
                    ": ", 1)[1])

        # Removing a user and reloading revokes it at once, also for
        # credentials verified a moment ago; and a second reload does
        # not bring it back.
        rewrite(htpasswd, "sha:%s\n" % users["sha"][1])
        hup(e)
        denied([_basic("bc", "s3cret-bc")], "bc user after its removal")
        allowed([_basic("sha", "s3cret-sha")], "sha user after the reload")
        hup(e)
        hup(e)
        denied([_basic("bc", "s3cret-bc")], "bc user after more reloads")

        # A bad htpasswd: -t fails naming it, a reload keeps the old one.
        des = "abJnggxhB/yWI"           # crypt("password", "ab")
        md5 = "$1$saltsalt$qjXMvbEw8oaL.CzflDugX/"
        for kind, hsh in (("DES", des), ("MD5", md5)):
            bad = e.tmp.file("htpasswd.bad", "sha:%s\nold:%s\n" % (
                users["sha"][1], hsh))
            ini = e.tmp.file("bad.ini", text.replace(htpasswd, bad))
            p = subprocess.run([PROXY_BIN, "-t", "-c", ini],
                               capture_output=True, stdin=subprocess.DEVNULL,
                               timeout=10, env=proxy_env())
            out = (p.stdout + p.stderr).decode("latin-1")
            check(p.returncode == 1, "-t with a %s hash: exit %d %s" % (
                kind, p.returncode, short(out)))
            check(re.search(re.escape(bad) + ":2:", out),
                  "-t with a %s hash does not name %s:2: %s" % (
                      kind, bad, short(out, 400)))
            check(not san_lines(out), "sanitizer: %s" % short(out, 400))
            if kind == "DES":
                info("basic_auth: -t: %s" % out.strip())
        new = hup(e, text.replace(htpasswd, bad), ok=False)
        check(bad in new, "the reload error does not name %s: %s" % (
            bad, short(new)))
        allowed([_basic("sha", "s3cret-sha")], "sha user after a failed "
                "reload")
        denied([], "no credentials after a failed reload")


# -------------------------------------------------------- PROXY protocol

V2SIG = b"\r\n\r\n\x00\r\nQUIT\n"


def proxy_v1(src, dst, sport, dport):
    fam = "TCP6" if ":" in src else "TCP4"
    return ("PROXY %s %s %s %d %d\r\n" % (fam, src, dst, sport,
                                          dport)).encode()


def proxy_v2(src, dst, sport, dport):
    if ":" in src:
        fam, af = 0x21, socket.AF_INET6
    else:
        fam, af = 0x11, socket.AF_INET
    addr = (socket.inet_pton(af, src) + socket.inet_pton(af, dst) +
            struct.pack("!HH", sport, dport))
    return V2SIG + bytes([0x21, fam]) + struct.pack("!H", len(addr)) + addr


def proxy_v2_local():
    return V2SIG + bytes([0x20, 0x00]) + struct.pack("!H", 0)


@test
def proxy_protocol():
    with Env(start=False) as e:
        o = e.origin
        alog = e.tmp.file("access.log")
        start_with(e, mkconf(e.port, {
            "proxy_protocol": "yes", "trusted": "127.0.0.2/32",
            "deny": "198.51.100.0/24", "access_log": alog},
            [("web", [o.port])],
            [("denied", [("path", "/denied/"), ("deny", "203.0.113.0/24"),
                         ("backend", "web")]),
             ("all", [("backend", "web")])]))
        port = e.port
        nlog = [0]

        def through(data, xff, what, path="/headers", src="127.0.0.2",
                    code=200):
            n0 = o.count()
            r = exchange_at(port, data, src=src)
            expect_status(r, code, what)
            got = new_requests(o, n0)
            check(len(got) == 1 and got[0].path == path,
                  "%s: origin saw %r" % (what, got))
            check(got[0].all("X-Forwarded-For") == [xff],
                  "%s: origin saw X-Forwarded-For %r, want %r" % (
                      what, got[0].all("X-Forwarded-For"), xff))
            nlog[0] += 1
            return r

        def refused(data, code, what, src="127.0.0.2"):
            n0, b0 = o.count(), o.received_bytes
            r = exchange_at(port, data, src=src)
            expect_status(r, code, what)
            nothing_at(o, n0, b0, what)
            nlog[0] += 1
            return r

        get_h = req("GET", "/headers", headers=["X-Forwarded-For: 6.6.6.6"])
        through(proxy_v1("203.0.113.9", "127.0.0.1", 5555, port) + get_h,
                "203.0.113.9", "PROXY v1 TCP4")
        through(proxy_v2("203.0.113.10", "127.0.0.1", 5556, port) + get_h,
                "203.0.113.10", "PROXY v2 TCP4")
        through(proxy_v2("2001:db8::10", "2001:db8::1", 5557, port) + get_h,
                "2001:db8::10", "PROXY v2 TCP6")
        through(proxy_v1("2001:db8::11", "2001:db8::1", 5558, port) + get_h,
                "2001:db8::11", "PROXY v1 TCP6")
        # LOCAL (the balancer's own health check): the balancer's address,
        # still trusted, so a client X-Forwarded-For is extended.
        through(proxy_v2_local() + get_h, "6.6.6.6, 127.0.0.2",
                "PROXY v2 LOCAL")
        through(proxy_v1("2001:db8::12", "2001:db8::1", 5559, port) + get_h,
                "2001:db8::12", "PROXY v1 TCP6 (again)")
        through(b"PROXY UNKNOWN\r\n" + get_h, "6.6.6.6, 127.0.0.2",
                "PROXY v1 UNKNOWN")

        # Keep-alive after the header, and the header in pieces.
        c = conn_from("127.0.0.2", port)
        e.conns.append(c)
        hdr = proxy_v1("203.0.113.20", "127.0.0.1", 6000, port)
        n0 = o.count()
        c.send(hdr[:9])
        time.sleep(0.05)
        c.send(hdr[9:] + req("GET", "/fixed?text=p1")[:10])
        time.sleep(0.05)
        c.send(req("GET", "/fixed?text=p1")[10:])
        r, _ = c.read_final()
        from_origin(r, "a", "header and request in pieces")
        c.send(req("GET", "/fixed?text=p2"))
        r, _ = c.read_final()
        from_origin(r, "a", "second request on the connection")
        got = new_requests(o, n0)
        check([(x.target, x.all("X-Forwarded-For")) for x in got] ==
              [("/fixed?text=p1", ["203.0.113.20"]),
               ("/fixed?text=p2", ["203.0.113.20"])],
              "origin saw %r" % [(x.target, x.all("X-Forwarded-For"))
                                 for x in got])
        # A second header on the same connection is not a header any more.
        b0 = o.received_bytes
        n0 = o.count()
        c.send(hdr + req("GET", "/fixed?text=p3"))
        r, _ = c.read_final()
        expect_status(r, 400, "a second PROXY header on a connection")
        nothing_at(o, n0, b0, "a second PROXY header")
        c.close()
        nlog[0] += 3

        # Not from a trusted peer: a PROXY line is a bad request.
        refused(proxy_v1("203.0.113.9", "127.0.0.1", 5555, port) + get_h,
                400, "PROXY v1 from an untrusted peer", src="127.0.0.1")
        refused(proxy_v2("203.0.113.9", "127.0.0.1", 5555, port) + get_h,
                400, "PROXY v2 from an untrusted peer", src="127.0.0.1")
        # From the trusted peer, the header is required.
        refused(get_h, 400, "no PROXY header from the trusted peer")
        refused(b"PROXY TCP4 203.0.113.9 nonsense\r\n" + get_h, 400,
                "a malformed PROXY v1 line")
        refused(b"PROXY UDP4 203.0.113.9 127.0.0.1 1 2\r\n" + get_h, 400,
                "PROXY v1 with a protocol other than TCP")
        # ACLs see the address from the header.
        refused(proxy_v1("203.0.113.9", "127.0.0.1", 5555, port) +
                req("GET", "/denied/x"), 403, "route deny by header address")
        refused(proxy_v2("203.0.113.9", "127.0.0.1", 5555, port) +
                req("GET", "/denied/x"), 403, "route deny (v2)")
        refused(proxy_v1("198.51.100.7", "127.0.0.1", 5555, port) + get_h,
                403, "[proxy] deny by header address")
        through(proxy_v1("192.0.2.7", "127.0.0.1", 5555, port) +
                req("GET", "/denied/x"), "192.0.2.7",
                "route deny, another address", path="/denied/x", code=404)
        refused(proxy_v1("203.0.113.9", "127.0.0.1", 5555, port) +
                req("GET", "/.proxy/status"), 403,
                "status page from the header's address")
        # A plain client that is not the balancer is served as itself.
        through(get_h, "127.0.0.1", "untrusted plain client",
                src="127.0.0.1")

        lines = alog_lines(alog, nlog[0])
        check(len(lines) == nlog[0], "%d access log lines, want %d: %s" % (
            len(lines), nlog[0], short(b"\n".join(lines), 1500)))
        parsed = [alog_parse(ln.decode("latin-1")) for ln in lines]
        check(all(parsed), "bad access log line in %s" % short(
            b"\n".join(lines), 1500))
        ips = [(p["ip"], p["status"]) for p in parsed]
        want = [("203.0.113.9", "200"), ("203.0.113.10", "200"),
                ("2001:db8::10", "200"), ("2001:db8::11", "200"),
                ("127.0.0.2", "200"), ("2001:db8::12", "200"),
                ("127.0.0.2", "200"), ("203.0.113.20", "200"),
                ("203.0.113.20", "200"), ("203.0.113.20", "400"),
                ("127.0.0.1", "400"), ("127.0.0.1", "400"),
                ("127.0.0.2", "400"), ("127.0.0.2", "400"),
                ("127.0.0.2", "400"), ("203.0.113.9", "403"),
                ("203.0.113.9", "403"), ("198.51.100.7", "403"),
                ("192.0.2.7", "404"), ("203.0.113.9", "403"),
                ("127.0.0.1", "200")]
        check(ips == want, "access log (client, status) %r, want %r" % (
            ips, want))


def _local_and_unknown(e, port, what):
    """v2 LOCAL and v1 UNKNOWN name no client: the connection stays the
    balancer's own (127.0.0.2, trusted). Each follows a connection whose
    header named another address, which must not carry over."""
    o = e.origin
    get_h = req("GET", "/headers", headers=["X-Forwarded-For: 6.6.6.6"])
    for i in range(3):
        for hdr in (proxy_v2_local(), b"PROXY UNKNOWN\r\n"):
            prev = "2001:db8::%x" % (0x100 + i)
            r = exchange_at(port, proxy_v1(prev, "2001:db8::1", 7000 + i,
                                           port) + get_h, src="127.0.0.2")
            expect_status(r, 200, "%s: v1 TCP6" % what)
            n0 = o.count()
            r = exchange_at(port, hdr + get_h, src="127.0.0.2")
            expect_status(r, 200, "%s: %r" % (what, hdr[:13]))
            got = new_requests(o, n0)
            check(len(got) == 1 and got[0].all("X-Forwarded-For") ==
                  ["6.6.6.6, 127.0.0.2"], "%s: after %r the origin saw "
                  "X-Forwarded-For %r, want the balancer's '6.6.6.6, "
                  "127.0.0.2' (the previous client was %s)" % (
                      what, hdr[:13], [x.all("X-Forwarded-For")
                                       for x in got], prev))


@test
def proxy_protocol_no_address():
    """PROXY v2 LOCAL and v1 UNKNOWN (no address), under valgrind with the
    plain ./proxy when both are there: proxy_step must not read an address
    acl_proxy_header did not write."""
    plain = e2e.PLAIN_BIN
    vg = None
    for d in os.environ.get("PATH", "").split(os.pathsep):
        if os.access(os.path.join(d, "valgrind"), os.X_OK):
            vg = os.path.join(d, "valgrind")
            break
    with Env(start=False) as e:
        text = mkconf(e.port, {"proxy_protocol": "yes",
                               "trusted": "127.0.0.2/32"},
                      [("web", [e.origin.port])],
                      [("all", [("backend", "web")])])
        if vg and os.path.exists(plain):
            wrapper = e.tmp.file("valgrind-proxy", "#!/bin/sh\nexec %s -q "
                                 "--error-exitcode=99 %s \"$@\"\n" % (
                                     vg, plain))
            os.chmod(wrapper, 0o755)
            e.conf = text
            e.proxy = Proxy(e.tmp, text, e.port, binary=wrapper)
            e.proxy.start()
            what = "valgrind ./proxy"
        else:
            start_with(e, text)
            what = os.path.basename(PROXY_BIN)
            info("proxy_protocol_no_address: no valgrind or ./proxy, ran "
                 "%s alone (an uninitialised read may go unseen)" % what)
        try:
            _local_and_unknown(e, e.port, what)
        finally:
            vg_errors = [ln for ln in e.proxy.stderr().splitlines()
                         if re.match(r"==\d+== ", ln)]
        check(not vg_errors, "valgrind: %s" % short(
            " | ".join(vg_errors[:6]), 700))


def _self_signed(tmp):
    cert, key = tmp.file("cert.pem"), tmp.file("key.pem")
    p = subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
         "ec_paramgen_curve:P-256", "-nodes", "-keyout", key, "-out", cert,
         "-days", "30", "-subj", "/CN=localhost"],
        capture_output=True, stdin=subprocess.DEVNULL, timeout=30)
    check(p.returncode == 0, "openssl: %s" % short(p.stderr, 300))
    return cert, key


@test
def proxy_protocol_tls():
    """A balancer in front of a TLS listener (TCP mode) sends the PROXY
    header first, then the client's TLS bytes: proxy.ini(5) applies
    proxy_protocol to every connection from trusted addresses."""
    import ssl
    with Env(start=False) as e:
        o = e.origin
        cert, key = _self_signed(e.tmp)
        tport = free_port()
        text = mkconf(e.port, {"proxy_protocol": "yes",
                               "trusted": "127.0.0.2/32"},
                      [("web", [o.port])], [("all", [("backend", "web")])])
        text += "\n[tls]\nlisten = 127.0.0.1:%d\ncert = %s\nkey = %s\n" % (
            tport, cert, key)
        start_with(e, text)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE

        def over_tls(prefix, src, what):
            n0 = o.count()
            s = socket.create_connection(("127.0.0.1", tport), timeout=5,
                                         source_address=(src, 0))
            try:
                if prefix:
                    s.sendall(prefix)
                try:
                    ts = ctx.wrap_socket(s, server_hostname="localhost")
                except (OSError, ssl.SSLError) as ex:
                    raise AssertionError("%s: TLS handshake failed: %s" % (
                        what, ex))
                c = wrap_socket(ts)
                c.send(req("GET", "/headers"))
                r, _ = c.read_final()
            finally:
                s.close()
            expect_status(r, 200, what)
            got = new_requests(o, n0)
            check(len(got) == 1, "%s: origin saw %r" % (what, got))
            return got[0]

        # The TLS listener itself works (an untrusted, plain TLS client).
        g = over_tls(b"", "127.0.0.1", "TLS from 127.0.0.1")
        check(g.all("X-Forwarded-For") == ["127.0.0.1"] and
              g.all("X-Forwarded-Proto") == ["https"],
              "TLS from 127.0.0.1: origin saw %s" % short(g.raw_head, 400))
        for name, hdr in (
                ("v1", proxy_v1("203.0.113.9", "127.0.0.1", 5555, tport)),
                ("v2", proxy_v2("203.0.113.10", "127.0.0.1", 5556, tport))):
            ip = "203.0.113.9" if name == "v1" else "203.0.113.10"
            g = over_tls(hdr, "127.0.0.2", "PROXY %s then TLS" % name)
            check(g.all("X-Forwarded-For") == [ip] and
                  g.all("X-Forwarded-Proto") == ["https"],
                  "PROXY %s then TLS: origin saw %s" % (
                      name, short(g.raw_head, 400)))


# ------------------------------------------------------------------ main

def main():
    return e2e.run_tests(TESTS, LABEL, TEST_TIMEOUT)

if __name__ == "__main__":
    sys.exit(main())
