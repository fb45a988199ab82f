#!/usr/bin/env python3
"""test/e2e_security.py - end-to-end security tests: access control,
per-address limits, the full connection table, slow clients, privilege
dropping and a request-smuggling corpus, against the real binary.

    python3 test/e2e_security.py [FILTER]

FILTER selects the tests (and smuggling corpus cases, named
smuggle/NAME and split/NAME) whose name contains it. Prints `ok NAME` or
`FAIL NAME: reason` per test, `# ...` information lines, and last
`e2e_security: N passed, N failed`; exits non-zero on any failure.

Every test asserts both what the client got and exactly what the origin
received (nothing, or the one expected request). It uses the harness of
test/e2e.py (Env, Proxy, Conn, ...) and the in-process test origin;
the response-splitting cases use a small raw origin defined here that
answers with hostile bytes on a connection it keeps open, so a proxy
that reused such a connection would hand the leftovers to the next
client.

Environment: PROXY_BIN (default test/proxy-san). Only 127.0.0.1 and ::1
are used; every proxy is stopped with SIGTERM by PID and must exit 0
with no sanitizer report. The chroot test turns LeakSanitizer off for
its proxy (ASAN_OPTIONS=detect_leaks=0): LSan needs /proc, which an
empty chroot does not have, and would fail the exit for that reason
alone; AddressSanitizer and UBSan stay on.
"""

import os
import pwd
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

import e2e  # noqa: E402
from e2e import (Env, Proxy, Conn, TmpDir, conf_text, curl, check,  # noqa
                 expect_status, info, free_port, req, short, status_of)
import origin as om  # noqa: E402

LABEL = "e2e_security"
TEST_TIMEOUT = 60           # seconds for one test (or one corpus group)



# ------------------------------------------------------------------ helpers

def conn_at(host, port, timeout=5.0):
    """A harness Conn to host (e.g. "::1") instead of 127.0.0.1."""
    real = socket.create_connection

    def cc(addr, *a, **k):
        return real((host, addr[1]), *a, **k)
    socket.create_connection = cc
    try:
        return Conn(port, timeout)
    finally:
        socket.create_connection = real


def fd_count(pid):
    try:
        return len(os.listdir("/proc/%d/fd" % pid))
    except OSError:
        return -1


def proc_ids(pid):
    """{'Uid': [...], 'Gid': [...], 'Groups': [...]} from /proc/PID/status."""
    out = {}
    with open("/proc/%d/status" % pid) as f:
        for ln in f:
            k, _, v = ln.partition(":")
            if k in ("Uid", "Gid", "Groups"):
                out[k] = [int(x) for x in v.split()]
    return out


def raise_nofile(n):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < n:
        want = n if hard == resource.RLIM_INFINITY else min(n, hard)
        if hard != resource.RLIM_INFINITY and hard < n:
            try:
                resource.setrlimit(resource.RLIMIT_NOFILE, (n, n))
                return n
            except (ValueError, OSError):
                pass
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


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


def view(reqs):
    return [(r.method, r.target, r.body if r.body is not None else
             "<%d bytes>" % r.body_len, "complete" if r.complete else
             "INCOMPLETE") for r in reqs]


def nothing_at(o, n0, b0, what=""):
    time.sleep(0.05)
    got = o.snapshot()[n0:]
    check(not got and o.received_bytes == b0,
          "%sorigin received %d bytes: %r" % (
              what and what + ": ", o.received_bytes - b0, view(got)))


def expect_one(o, n0, method, target, body=b"", what=""):
    got = new_requests(o, n0)
    check(len(got) == 1, "%sorigin saw %d requests, want exactly one %s %s: "
          "%r" % (what and what + ": ", len(got), method, target, view(got)))
    r = got[0]
    check(r.complete and r.method == method and r.target == target and
          r.body == body, "%sorigin saw %r, want %r" % (
              what and what + ": ", view(got)[0],
              (method, target, body, "complete")))
    return r


def refused(c, code, what=""):
    """The response on c is the proxy's own `code` page and c closes."""
    closed = c.wait_closed(3)
    out = bytes(c.buf)
    check(status_of(out) == code, "%sgot %s, want %d%s" % (
        what and what + ": ", short(out, 150), code,
        "" if closed else " (connection left open)"))
    check(b"X-Origin:" not in out, "%sthe %d came from the origin: %s" % (
        what and what + ": ", code, short(out, 300)))
    check(closed, "%sconnection left open after %d" % (
        what and what + ": ", code))
    return out


# ---------------------------------------------------------------- registry

TESTS = []


def test(fn):
    TESTS.append((fn.__name__, fn, False))
    return fn


def group(fn):
    """A test that runs named cases itself: fn(filt, report)."""
    TESTS.append((fn.__name__, fn, True))
    return fn


# ------------------------------------------------------------- 1. ACLs

@test
def acl_proxy_deny():
    with Env(proxy={"deny": "127.0.0.0/8"}) as e:
        c = e.conn(3)
        c.send(req("GET", "/"))
        refused(c, 403)
        nothing_at(e.origin, 0, 0)


@test
def acl_proxy_allow_other_net():
    with Env(proxy={"allow": "10.0.0.0/8"}) as e:
        c = e.conn(3)
        c.send(req("GET", "/"))
        refused(c, 403)
        nothing_at(e.origin, 0, 0)


@test
def acl_proxy_allow_own_net():
    with Env(proxy={"allow": "127.0.0.0/8"}) as e:
        r = e.exchange(req("GET", "/"))
        expect_status(r, 200)
        check(r.body == om.HELLO, "body %s" % short(r.body))
        expect_one(e.origin, 0, "GET", "/")


@test
def acl_proxy_deny_wins():
    with Env(proxy={"allow": "127.0.0.0/8", "deny": "127.0.0.1/32"}) as e:
        c = e.conn(3)
        c.send(req("GET", "/"))
        refused(c, 403, "[proxy] allow 127/8 + deny 127.0.0.1")
        nothing_at(e.origin, 0, 0)
    with Env(routes=[("all", [("backend", "web"), ("allow", "127.0.0.0/8"),
                              ("deny", "127.0.0.1/32")])]) as e:
        c = e.conn(3)
        c.send(req("GET", "/"))
        refused(c, 403, "route allow 127/8 + deny 127.0.0.1")
        nothing_at(e.origin, 0, 0)


def _v6_env(rule):
    p6 = free_port()
    return Env(proxy={"listen": "[::1]:%d" % p6},
               routes=[("all", [("backend", "web"), rule])]), p6


@test
def acl_ipv6_route_deny():
    env, p6 = _v6_env(("deny", "::1/128"))
    with env as e:
        c = conn_at("::1", p6, 3)
        e.conns.append(c)
        c.send(req("GET", "/"))
        refused(c, 403, "client ::1")
        nothing_at(e.origin, 0, 0, "client ::1")
        # The same route from 127.0.0.1 is not ::1: it passes.
        r = e.exchange(req("GET", "/"))
        expect_status(r, 200, "client 127.0.0.1")
        expect_one(e.origin, 0, "GET", "/", what="client 127.0.0.1")


@test
def acl_ipv6_route_allow():
    env, p6 = _v6_env(("allow", "::1/128"))
    with env as e:
        c = conn_at("::1", p6, 3)
        e.conns.append(c)
        c.send(req("GET", "/"))
        r, _ = c.read_final()
        expect_status(r, 200, "client ::1")
        check(r.body == om.HELLO, "body %s" % short(r.body))
        o = expect_one(e.origin, 0, "GET", "/", what="client ::1")
        check(o.header("X-Forwarded-For") == "::1",
              "X-Forwarded-For %r" % o.all("X-Forwarded-For"))
        c2 = e.conn(3)
        c2.send(req("GET", "/"))
        refused(c2, 403, "client 127.0.0.1 (not in allow ::1/128)")
        nothing_at(e.origin, 1, e.origin.received_bytes, "client 127.0.0.1")


ADMIN_ROUTES = [("admin", [("path", "/admin/"), ("backend", "web"),
                           ("deny", "127.0.0.0/8")]),
                ("all", [("backend", "web")])]


@test
def acl_route_normalised_path():
    forbidden = ["/admin/x", "/%61dmin/x", "/x/../admin/x", "//admin/x",
                 "/./admin/x", "/admin/./x", "/%2e/admin/x",
                 "/x/%2E%2E/admin/x", "/admin//x", "/%61%64%6d%69%6e/",
                 "/admin/x?y=/../z"]
    unsafe = ["/%2e%2e/admin", "/a%2fb", "/a%00b", "/..", "/admin%2fx",
              "/%2fadmin/x", "/a%5cb", "/x\\..\\admin/", "/x/../../admin/",
              "/admin/%zz"]
    with Env(routes=ADMIN_ROUTES) as e:
        o = e.origin
        bad = []
        for path, code in [(p, 403) for p in forbidden] + \
                [(p, 400) for p in unsafe]:
            n0, b0 = o.count(), o.received_bytes
            c = e.conn(3)
            c.send(req("GET", path))
            try:
                refused(c, code)
                nothing_at(o, n0, b0)
            except AssertionError as ex:
                bad.append("%s: %s" % (path, ex))
            c.close()
        # Case differs: not the same path. It goes to the catch-all, and
        # the origin answers it (its own 404 for a path it does not know).
        for path in ("/ADMIN/", "/Admin/x", "/%41DMIN/", "/admin"):
            n0 = o.count()
            r = e.exchange(req("GET", path))
            try:
                check(r.h("X-Origin") == "a" and r.status == 404 and
                      r.body == b"no such path\n",
                      "want the origin's answer, got %r" % r)
                expect_one(o, n0, "GET", path)
            except AssertionError as ex:
                bad.append("%s: %s" % (path, ex))
        check(not bad, "; ".join(bad))


# ---------------------------------------------------- 2. max_conns_per_ip

@test
def max_conns_per_ip():
    with Env(proxy={"max_conns_per_ip": "3"}) as e:
        o = e.origin
        cs = []
        for i in range(3):
            c = e.conn(3)
            c.send(req("GET", "/fixed?text=c%d" % i))
            r, _ = c.read_final()
            expect_status(r, 200, "connection %d" % (i + 1))
            cs.append(c)
        # The 4th, while the three are open: a 429 page, then closed.
        c4 = e.conn(3)
        refused(c4, 429, "4th connection")
        # A 4th that sends its request at once gets the same answer.
        c4b = e.conn(3)
        c4b.send(req("GET", "/fixed?text=c4b"))
        closed = c4b.wait_closed(3)
        out = bytes(c4b.buf)
        check(status_of(out) == 429 and closed,
              "4th connection sending at once got %s%s%s" % (
                  short(out, 120), " (reset)" if c4b.reset else "",
                  "" if closed else " (left open)"))
        check(len(o.snapshot()) == 3, "origin saw %r" % view(o.snapshot()))
        # One closes: a new connection works again.
        cs[0].close()
        ok = False
        end = time.monotonic() + 2
        while time.monotonic() < end and not ok:
            time.sleep(0.05)
            c5 = e.conn(3)
            c5.send(req("GET", "/fixed?text=c5"))
            try:
                r, _ = c5.read_final()
                ok = r.status == 200
            except AssertionError:
                ok = False
            c5.close()
        check(ok, "no new connection accepted within 2s after one closed")
        for c in cs[1:]:
            c.send(req("GET", "/fixed?text=again"))
            r, _ = c.read_final()
            expect_status(r, 200, "an open connection's next request")
        got = [r.target for r in new_requests(o, 0)]
        check(got == ["/fixed?text=c0", "/fixed?text=c1", "/fixed?text=c2",
                      "/fixed?text=c5", "/fixed?text=again",
                      "/fixed?text=again"], "origin saw %r" % got)


# ---------------------------------------------------------------- 3. rate

@test
def rate_limit():
    with Env(proxy={"rate": "5", "rate_burst": "5"}) as e:
        o = e.origin
        c = e.conn(3)
        t0 = time.monotonic()
        for i in range(5):
            c.send(req("GET", "/fixed?text=r%d" % i))
            r, _ = c.read_final()
            expect_status(r, 200, "request %d" % (i + 1))
        c.send(req("GET", "/fixed?text=r5"))
        r, _ = c.read_final()
        dt = time.monotonic() - t0
        check(r.status == 429, "6th request (after %.2fs) got %r" % (dt, r))
        check(r.h("X-Origin") is None, "the 429 came from the origin")
        ra = r.h("Retry-After")
        check(ra is not None and ra.isdigit() and int(ra) >= 1,
              "429 without a valid Retry-After: %r" % r)
        check(c.wait_closed(2), "connection left open after the 429")
        got = [x.target for x in new_requests(o, 0)]
        check(got == ["/fixed?text=r%d" % i for i in range(5)],
              "origin saw %r" % got)
        time.sleep(1.05)
        r = e.exchange(req("GET", "/fixed?text=later"))
        expect_status(r, 200, "after 1s")
        got = [x.target for x in new_requests(o, 0)]
        check(got == ["/fixed?text=r%d" % i for i in range(5)] +
              ["/fixed?text=later"], "origin saw %r" % got)


@test
def rate_limit_pipelined():
    with Env(proxy={"rate": "5", "rate_burst": "5"}) as e:
        c = e.conn(3)
        c.send(b"".join(req("GET", "/fixed?text=p%d" % i) for i in range(8)))
        for i in range(5):
            r, _ = c.read_final()
            check(r.status == 200 and r.body == b"p%d" % i,
                  "pipelined request %d got %r" % (i + 1, r))
        r, _ = c.read_final()
        check(r.status == 429 and r.h("X-Origin") is None,
              "pipelined request 6 got %r" % r)
        check(c.wait_closed(2), "connection left open after the 429")
        check(not c.buf, "bytes after the 429: %s" % short(c.buf))
        got = [x.target for x in new_requests(e.origin, 0)]
        check(got == ["/fixed?text=p%d" % i for i in range(5)],
              "origin saw %r" % got)


# ------------------------------------------------------- 4. full table

@test
def full_table_evicts_idle():
    with Env(proxy={"max_connections": "8"}) as e:
        o = e.origin
        idle = []
        for i in range(8):
            idle.append(e.conn(3))
            time.sleep(0.03)        # distinct accept times: [0] is oldest
        time.sleep(0.1)
        c = e.conn(3)
        c.send(req("GET", "/fixed?text=ninth"))
        r, _ = c.read_final()
        expect_status(r, 200, "9th client")
        check(r.body == b"ninth", "body %s" % short(r.body))
        check(idle[0].wait_closed(2), "the oldest idle connection is open")
        check(not idle[0].buf, "the evicted connection got %s" %
              short(idle[0].buf))
        still = [i for i in range(1, 8) if not idle[i].wait_closed(0.05)]
        check(len(still) == 7, "connections %s of 2..8 closed too" %
              [i + 1 for i in range(1, 8) if i not in still])
        expect_one(o, 0, "GET", "/fixed?text=ninth")


@test
def full_table_busy_503():
    with Env(proxy={"max_connections": "8", "backend_timeout": "5s"}) as e:
        o = e.origin
        busy = []
        for i in range(8):
            c = e.conn(8)
            c.send(req("GET", "/slow?delay=2&n=%d" % i))
            busy.append(c)
        got = o.wait_requests(8, 3)
        check(len(got) == 8, "origin got %d of the 8 slow requests" %
              len(got))
        c9 = e.conn(3)
        c9.send(req("GET", "/fixed?text=ninth"))
        refused(c9, 503, "9th client")
        for i, c in enumerate(busy):
            r, _ = c.read_final()
            check(r.status == 200 and r.body == b"slow\n",
                  "slow request %d got %r" % (i + 1, r))
        got = sorted(r.target for r in new_requests(o, 0))
        check(got == sorted("/slow?delay=2&n=%d" % i for i in range(8)),
              "origin saw %r" % got)
        # With the slots free again, a new client is served.
        r = e.exchange(req("GET", "/fixed?text=after"))
        expect_status(r, 200, "after the slow requests")


# ------------------------------------------------------- 5. slow clients

SLOW = {"header_timeout": "1s", "idle_timeout": "2s"}


@test
def slow_header_trickle():
    with Env(proxy=SLOW) as e:
        c = e.conn(5)
        t0 = time.monotonic()
        c.send(b"GET / HTTP/1.1\r\nHost: x\r\n")
        closed = False
        i = 0
        while time.monotonic() - t0 < 4:
            if c.wait_closed(0.4):
                closed = True
                break
            c.send(b"X-Drip-%d: v\r\n" % i)
            i += 1
        dt = time.monotonic() - t0
        out = bytes(c.buf)
        check(closed, "still open after %.1fs of a line per 0.4s" % dt)
        check(status_of(out) == 408, "after %.2fs got %s" % (dt, short(out)))
        check(0.8 <= dt <= 1.8, "cut after %.2fs, header_timeout 1s" % dt)
        nothing_at(e.origin, 0, 0)
        info("slow_header_trickle: 408 after %.2fs and %d lines" % (dt, i))


@test
def slow_reader_large():
    with Env(proxy=SLOW) as e:
        pid = e.proxy.pid
        base = fd_count(pid)
        c = e.conn(5)
        c.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
        samples = []                # (seconds since the request, fds)
        t0 = time.monotonic()
        c.send(req("GET", "/large?size=50000000"))
        gone = None
        while time.monotonic() - t0 < 8:
            n = fd_count(pid)
            samples.append((time.monotonic() - t0, n))
            if max(x for _, x in samples) >= base + 2 and n <= base:
                gone = samples[-1][0]
                break
            time.sleep(0.02)
        peak = max(x for _, x in samples)
        trace = " ".join("%.2f:%d" % x for x in samples[::10])
        check(e.origin.snapshot(), "origin never got the request")
        check(peak >= base + 2, "never saw the client and upstream fds "
              "(base %d, samples %s)" % (base, trace))
        check(gone is not None, "proxy still holds the connection 8s "
              "after a client that reads nothing (idle_timeout 2s)")
        check(1.8 <= gone <= 5, "dropped after %.2fs (idle_timeout 2s, "
              "stall within the first second): %s" % (gone, trace))
        # What the client can still read is what was buffered: far less
        # than the 50 MB, then the end.
        n = 0
        c.s.settimeout(3)
        eof = False
        try:
            while True:
                d = c.s.recv(1 << 20)
                if not d:
                    eof = True
                    break
                n += len(d)
        except (ConnectionResetError, socket.timeout, TimeoutError) as ex:
            eof = not isinstance(ex, (socket.timeout, TimeoutError))
        check(eof, "no end of stream after reading %d bytes" % n)
        check(n < 50000000, "client got all %d bytes" % n)
        info("slow_reader_large: connection dropped %.2fs after the "
             "request; the client had %d bytes buffered" % (gone, n))


@test
def slow_body_trickle():
    with Env(proxy=SLOW) as e:
        c = e.conn(5)
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\n"
               b"Content-Length: 10000\r\n\r\n")
        t0 = time.monotonic()
        sent = 0
        closed = False
        while time.monotonic() - t0 < 5:
            if not c.send(b"b"):
                break
            sent += 1
            if c.wait_closed(0.1):      # 10 bytes/s
                closed = True
                break
        closed = closed or c.wait_closed(1)
        dt = time.monotonic() - t0
        out = bytes(c.buf)
        check(status_of(out) == 408, "after %.2fs and %d body bytes got %s"
              % (dt, sent, short(out)))
        check(closed, "connection left open after the 408")
        check(dt <= 2.5, "cut after %.2fs (header_timeout 1s: grace 1s, "
              "then >= 256 bytes/s)" % dt)
        time.sleep(0.2)
        done = [r for r in e.origin.snapshot() if r.complete]
        check(not done, "origin got a complete request %r" % view(done))
        info("slow_body_trickle: 408 after %.2fs, %d body bytes sent; "
             "origin saw %r" % (dt, sent, view(e.origin.snapshot())))


@test
def slow_body_stall():
    with Env(proxy=SLOW) as e:
        c = e.conn(5)
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\n"
               b"Content-Length: 10000\r\n\r\n" + b"s" * 5000)
        t0 = time.monotonic()
        closed = c.wait_closed(4)
        dt = time.monotonic() - t0
        out = bytes(c.buf)
        check(status_of(out) == 408, "after %.2fs got %s" % (dt,
                                                            short(out)))
        check(closed, "connection left open after the 408")
        check(0.8 <= dt <= 2.0, "cut after %.2fs of silence "
              "(header_timeout 1s)" % dt)
        time.sleep(0.2)
        done = [r for r in e.origin.snapshot() if r.complete]
        check(not done, "origin got a complete request %r" % view(done))


@test
def slow_body_trickle_chunked():
    with Env(proxy=SLOW) as e:
        c = e.conn(5)
        c.send(b"POST /upload HTTP/1.1\r\nHost: x\r\n"
               b"Transfer-Encoding: chunked\r\n\r\n2710\r\n")
        t0 = time.monotonic()
        sent = 0
        closed = False
        while time.monotonic() - t0 < 5:
            if not c.send(b"c"):
                break
            sent += 1
            if c.wait_closed(0.1):
                closed = True
                break
        closed = closed or c.wait_closed(1)
        dt = time.monotonic() - t0
        out = bytes(c.buf)
        check(status_of(out) == 408, "after %.2fs and %d body bytes got %s"
              % (dt, sent, short(out)))
        check(closed, "connection left open after the 408")
        check(dt <= 2.5, "cut after %.2fs (header_timeout 1s)" % dt)
        time.sleep(0.2)
        done = [r for r in e.origin.snapshot() if r.complete]
        check(not done, "origin got a complete request %r" % view(done))


# ------------------------------------------------ 6. many slow connections

def _half_heads(port, n, conns, deadline):
    for i in range(n):
        if time.monotonic() > deadline:
            raise AssertionError("opened only %d of %d slow connections "
                                 "in time" % (i, n))
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        conns.append(s)
        s.sendall(b"GET /slowloris/%d HTTP/1.1\r\nHost: x\r\nX-A: " % i)


def _fast(e, n, label, limit=3.0):
    lat = []
    for i in range(n):
        t = time.monotonic()
        c = Conn(e.port, limit)
        try:
            c.send(req("GET", "/fixed?text=%s%d" % (label, i)))
            r, _ = c.read_final()
        except AssertionError as ex:
            raise AssertionError("%s request %d (after %d ok): %s" % (
                label, i + 1, i, ex))
        finally:
            c.close()
        check(r.status == 200 and r.body == b"%s%d" % (label.encode(), i),
              "%s request %d got %r" % (label, i + 1, r))
        lat.append(time.monotonic() - t)
    return lat


@test
def many_slow_connections():
    raise_nofile(4096)
    slow = []
    with Env(proxy={"max_connections": "1024", "buffers": None,
                    "header_timeout": "10s", "idle_timeout": "10s"}) as e:
        try:
            t0 = time.monotonic()
            _half_heads(e.port, 1000, slow, t0 + 20)
            time.sleep(0.3)
            info("many_slow_connections: 1000 half heads open after %.2fs; "
                 "proxy holds %d fds" % (time.monotonic() - t0,
                                          fd_count(e.proxy.pid)))
            lat = _fast(e, 50, "f")
            lat.sort()
            info("many_slow_connections: 50 requests beside 1000 slow "
                 "connections: median %.1f ms, max %.1f ms" % (
                     lat[len(lat) // 2] * 1000, lat[-1] * 1000))
            # More slow clients than slots: the table is full, and new
            # fast clients evict the oldest slow ones.
            _half_heads(e.port, 100, slow, time.monotonic() + 10)
            lat = _fast(e, 10, "g")
            info("many_slow_connections: 10 more requests with 1100 slow "
                 "connections (table 1024): max %.1f ms" % (
                     max(lat) * 1000))
            got = [r.target for r in e.origin.snapshot()]
            want = ["/fixed?text=f%d" % i for i in range(50)] + \
                ["/fixed?text=g%d" % i for i in range(10)]
            check(got == want, "origin saw %d requests, want the %d fast "
                  "ones: %s" % (len(got), len(want), short(repr(got), 300)))
        finally:
            for s in slow:
                s.close()


@test
def slow_flood_full_table():
    # The table alone: enough buffers for every slot (2 each), so only
    # eviction is tested. 300 half heads for 256 slots, then new clients.
    raise_nofile(4096)
    slow = []
    with Env(proxy={"max_connections": "256", "buffers": "600",
                    "header_timeout": "10s", "idle_timeout": "10s"}) as e:
        try:
            _half_heads(e.port, 300, slow, time.monotonic() + 15)
            time.sleep(0.3)
            lat = _fast(e, 20, "t", 2.0)
            closed = []
            for i, s in enumerate(slow):
                s.setblocking(False)
                try:
                    if s.recv(1) == b"":
                        closed.append(i)
                except BlockingIOError:
                    pass
                except OSError:
                    closed.append(i)
            info("slow_flood_full_table: 20 requests with 300 half heads "
                 "for 256 slots: max %.1f ms; %d slow ones evicted" % (
                     max(lat) * 1000, len(closed)))
            # 44 evicted by the last slow ones, at least one more by the
            # first fast client (the later ones may find its slot free).
            check(len(closed) >= 45, "only %d half heads were evicted" %
                  len(closed))
            check(closed == list(range(len(closed))),
                  "evicted %s, not the oldest" % short(repr(closed), 200))
            got = [r.target for r in e.origin.snapshot()]
            check(got == ["/fixed?text=t%d" % i for i in range(20)],
                  "origin saw %s" % short(repr(got), 300))
        finally:
            for s in slow:
                s.close()


@test
def slow_heads_hold_buffers():
    # The smallest form of the flood above: as many half heads as half
    # the buffer pool, far below max_connections. A new client must
    # still be answered at once, not after header_timeout.
    slow = []
    with Env(proxy={"buffers": "16", "header_timeout": "10s",
                    "idle_timeout": "10s"}) as e:
        try:
            _half_heads(e.port, 8, slow, time.monotonic() + 5)
            time.sleep(0.2)
            _fast(e, 3, "h", 2.0)
            check(not e.origin.snapshot()[3:], "origin saw %r" %
                  view(e.origin.snapshot()))
        finally:
            for s in slow:
                s.close()


@test
def slow_readers_hold_buffers():
    # Clients that ask for a large response and never read: each keeps a
    # response buffer. More of them than buffers must not lock out a new
    # client until idle_timeout.
    slow = []
    with Env(proxy={"buffers": "32", "idle_timeout": "10s",
                    "max_connections": "128"}) as e:
        try:
            for i in range(40):
                s = socket.create_connection(("127.0.0.1", e.port), 5)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.sendall(req("GET", "/large?size=5000000&n=%d" % i))
                slow.append(s)
            e.origin.wait_requests(40, 5)
            time.sleep(0.5)
            _fast(e, 3, "r", 2.0)
        finally:
            for s in slow:
                s.close()


# ---------------------------------------------------------- 7. privileges

def _nobody():
    pw = pwd.getpwnam("nobody")
    return pw.pw_uid, pw.pw_gid


@test
def user_nobody():
    check(os.geteuid() == 0, "the privilege tests must run as root")
    uid, gid = _nobody()
    with Env(proxy={"user": "nobody"}) as e:
        ids = proc_ids(e.proxy.pid)
        check(ids["Uid"] == [uid] * 4, "Uid %r, want %d x4" % (ids["Uid"],
                                                              uid))
        check(ids["Gid"] == [gid] * 4, "Gid %r, want %d x4" % (ids["Gid"],
                                                              gid))
        check(ids.get("Groups") in ([gid], []), "Groups %r" % ids["Groups"])
        for i in range(3):
            code, h, body, err = curl([e.url("/fixed?text=n%d" % i)], 5)
            check(code == 200 and body == b"n%d" % i,
                  "request %d: %d %s %s" % (i, code, short(body), err))
        got = [r.target for r in new_requests(e.origin, 0)]
        check(got == ["/fixed?text=n%d" % i for i in range(3)],
              "origin saw %r" % got)


@test
def user_missing_refuses_start():
    tmp = TmpDir()
    o = om.Origin().start()
    try:
        port = free_port()
        path = tmp.file("proxy.ini", conf_text(
            port, {"user": "no_such_user_xyz"}, [("web", [o.port])],
            [("all", [("backend", "web")])]))
        t0 = time.monotonic()
        p = subprocess.run([e2e.PROXY_BIN, "-f", "-c", path],
                           capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=10, env=e2e.proxy_env())
        dt = time.monotonic() - t0
        out = (p.stdout + p.stderr).decode("latin-1")
        check(p.returncode != 0, "exit 0 with user = no_such_user_xyz: %s" %
              short(out, 300))
        check(dt < 3, "took %.2fs to refuse" % dt)
        check("no_such_user_xyz" in out, "no log line names the user: %s" %
              short(out, 300))
        check(not e2e.san_lines(out), "sanitizer: %s" % short(out, 300))
        check(not e2e.port_open(port), "port still open after the exit")
        check(o.count() == 0, "origin saw %r" % view(o.snapshot()))
        info("user_missing_refuses_start: exit %d after %.2fs: %s" % (
            p.returncode, dt, out.strip().splitlines()[-1][:120]))
    finally:
        o.stop()
        tmp.remove()


@test
def chroot_nobody():
    uid, gid = _nobody()
    root = tempfile.mkdtemp(prefix="proxy-chroot-")
    asan = os.environ.get("ASAN_OPTIONS", "")
    try:
        with Env(proxy={"user": "nobody", "chroot": root},
                 env={"ASAN_OPTIONS": (asan + ":" if asan else "") +
                      "detect_leaks=0"}) as e:
            pid = e.proxy.pid
            check(os.path.realpath("/proc/%d/root" % pid) ==
                  os.path.realpath(root), "root of the proxy is %s" %
                  os.readlink("/proc/%d/root" % pid))
            ids = proc_ids(pid)
            check(ids["Uid"] == [uid] * 4 and ids["Gid"] == [gid] * 4,
                  "ids %r" % ids)
            for i in range(3):
                c = e.conn(3)
                c.send(req("POST", "/echo", body=b"chroot%d" % i))
                r, _ = c.read_final()
                check(r.status == 200 and r.body == b"chroot%d" % i,
                      "request %d got %r" % (i, r))
            got = [(r.method, r.target, r.body)
                   for r in new_requests(e.origin, 0)]
            check(got == [("POST", "/echo", b"chroot%d" % i)
                          for i in range(3)], "origin saw %r" % got)
            check(os.listdir(root) == [], "the proxy wrote into its "
                  "chroot: %r" % os.listdir(root))
    finally:
        os.rmdir(root)


@test
def chroot_missing_refuses_start():
    tmp = TmpDir()
    try:
        port = free_port()
        path = tmp.file("proxy.ini", conf_text(
            port, {"user": "nobody", "chroot": "/nonexistent/proxy-root"},
            [("web", [free_port()])], [("all", [("backend", "web")])]))
        p = subprocess.run([e2e.PROXY_BIN, "-f", "-c", path],
                           capture_output=True, stdin=subprocess.DEVNULL,
                           timeout=10, env=e2e.proxy_env())
        out = (p.stdout + p.stderr).decode("latin-1")
        check(p.returncode != 0, "exit 0 with a missing chroot: %s" %
              short(out, 300))
        check("/nonexistent/proxy-root" in out, "no log line names the "
              "directory: %s" % short(out, 300))
        check(not e2e.san_lines(out), "sanitizer: %s" % short(out, 300))
    finally:
        tmp.remove()


# ------------------------------------------------- 8. smuggling corpus

H = b"Host: x\r\n"
INNER = b"GET /admin/x HTTP/1.1\r\nHost: x\r\n\r\n"   # denied by ACL
CHUNKED_HELLO = b"5\r\nhello\r\n0\r\n\r\n"


def post(headers, body, target=b"/echo", method=b"POST",
         version=b"HTTP/1.1", host=H):
    return (method + b" " + target + b" " + version + b"\r\n" + host +
            b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body)


def te(value, body=CHUNKED_HELLO, **kw):
    return post([b"Transfer-Encoding: " + value], body, **kw)


def chunked(body):
    return post([b"Transfer-Encoding: chunked"], body)


def cl(value, body):
    return post([b"Content-Length: " + value], body)


def A(method, target, body=b"", host=None):
    return ("a", method, target, body, host)


def B(method, target, body=b"", host=None):
    return ("b", method, target, body, host)


ECHO_HELLO = [A("POST", "/echo", b"hello")]

# (name, raw bytes, expected status(es), origin view)
#   expected: an int (one response, and for a proxy error >= 400 the
#   connection closed), a tuple of ints (any one of them), a list of ints
#   (that many responses in order: pipelining), or "closed" (no response
#   at all, the connection closed).
#   origin view: [] for nothing at all (not a byte), else the complete
#   requests the origins got, in order: (origin, method, target, body,
#   Host or None).
CORPUS = [
    # ---- CL.TE and TE.CL
    ("cl_te", post([b"Content-Length: 6", b"Transfer-Encoding: chunked"],
                   b"0\r\n\r\nG"), 400, []),
    ("te_cl", post([b"Transfer-Encoding: chunked", b"Content-Length: 3"],
                   b"8\r\nSMUGGLED\r\n0\r\n\r\n"), 400, []),
    ("cl_te_smuggled_request", post(
        [b"Content-Length: %d" % (5 + len(INNER)),
         b"Transfer-Encoding: chunked"], b"0\r\n\r\n" + INNER), 400, []),
    ("te_cl_smuggled_request", post(
        [b"Transfer-Encoding: chunked", b"Content-Length: 4"],
        b"%x\r\n%s\r\n0\r\n\r\n" % (len(INNER), INNER)), 400, []),
    ("cl_te_http10", post([b"Content-Length: 5",
                           b"Transfer-Encoding: chunked"], CHUNKED_HELLO,
                          version=b"HTTP/1.0"), 400, []),
    ("cl_te_obfuscated_te", post([b"Content-Length: 5",
                                  b"Transfer-Encoding: xchunked"],
                                 b"hello"), 400, []),
    # ---- TE.TE: spacing, case, duplicates, codings
    ("te_space_before_colon", post([b"Transfer-Encoding : chunked"],
                                   CHUNKED_HELLO), 400, []),
    ("te_space_before_colon_with_cl", post(
        [b"Content-Length: 5", b"Transfer-Encoding : chunked"],
        b"0\r\n\r\n"), 400, []),
    # RFC 9110 5.5/5.6.3: OWS (SP or HTAB) around a value is not part of
    # it, so these are plain "chunked".
    ("te_tab_before_value", post([b"Transfer-Encoding:\tchunked"],
                                 CHUNKED_HELLO), 200, ECHO_HELLO),
    ("te_trailing_space", te(b"chunked "), 200, ECHO_HELLO),
    ("te_trailing_tab", te(b"chunked\t"), 200, ECHO_HELLO),
    # Field names and transfer-coding names are case-insensitive.
    ("te_uppercase", post([b"transfer-encoding: CHUNKED"], CHUNKED_HELLO),
     200, ECHO_HELLO),
    # RFC 9112 6.1: chunked must not be applied more than once.
    ("te_two_lines_chunked", post([b"Transfer-Encoding: chunked",
                                   b"Transfer-Encoding: chunked"],
                                  CHUNKED_HELLO), 400, []),
    ("te_list_chunked_twice", te(b"chunked, chunked"), 400, []),
    # RFC 9112 6.3: a request whose final coding is not chunked: 400.
    ("te_chunked_not_last", te(b"chunked, identity"), 400, []),
    ("te_chunked_then_gzip_line", post([b"Transfer-Encoding: chunked",
                                        b"Transfer-Encoding: gzip"],
                                       CHUNKED_HELLO), 400, []),
    ("te_identity", te(b"identity", b"hello"), 400, []),
    ("te_chunked_parameter", te(b"chunked;x=1"), 400, []),
    ("te_chunk_typo", te(b"chunk"), 400, []),
    ("te_quoted", te(b'"chunked"'), 400, []),
    ("te_vertical_tab", te(b"\x0bchunked"), 400, []),
    ("te_nbsp", te(b"chunked\xa0"), 400, []),
    ("te_obs_fold", te(b"\r\n chunked"), 400, []),
    ("te_http10", te(b"chunked", version=b"HTTP/1.0"), 400, []),
    # A valid coding list that ends in chunked is forwarded as it is.
    ("te_gzip_chunked", te(b"gzip, chunked"), 200, ECHO_HELLO),
    # ---- chunk sizes and extensions
    ("chunk_size_overflow", chunked(b"ffffffffffffffffff\r\nhello\r\n"
                                    b"0\r\n\r\n"), 400, []),
    ("chunk_size_leading_zeros", chunked(b"0005\r\nhello\r\n0\r\n\r\n"),
     200, ECHO_HELLO),
    ("chunk_size_uppercase_hex", chunked(b"A\r\n0123456789\r\n0\r\n\r\n"),
     200, [A("POST", "/echo", b"0123456789")]),
    ("chunk_size_negative", chunked(b"-5\r\nhello\r\n0\r\n\r\n"), 400, []),
    ("chunk_size_0x", chunked(b"0x5\r\nhello\r\n0\r\n\r\n"), 400, []),
    ("chunk_size_plus", chunked(b"+5\r\nhello\r\n0\r\n\r\n"), 400, []),
    # RFC 9112 7.1.1: BWS only before ';' (a chunk-ext).
    ("chunk_size_trailing_space", chunked(b"5 \r\nhello\r\n0\r\n\r\n"),
     400, []),
    ("chunk_size_bws_ext", chunked(b"5 ;a=b\r\nhello\r\n0\r\n\r\n"), 200,
     ECHO_HELLO),
    ("chunk_ext_valid", chunked(b"5;name=value\r\nhello\r\n0;x\r\n\r\n"),
     200, ECHO_HELLO),
    ("chunk_ext_quoted", chunked(b'5;n="v a;l"\r\nhello\r\n0\r\n\r\n'),
     200, ECHO_HELLO),
    ("chunk_ext_2k", chunked(b"5;" + b"e" * 2048 + b"\r\nhello\r\n"
                             b"0\r\n\r\n"), 400, []),
    ("chunk_ext_bare_lf", chunked(b"5;a\nb\r\nhello\r\n0\r\n\r\n"), 400,
     []),
    ("chunk_missing_crlf", chunked(b"5\r\nhelloX\r\n0\r\n\r\n"), 400, []),
    ("chunk_data_longer", chunked(b"3\r\nhello\r\n0\r\n\r\n"), 400, []),
    ("chunk_lf_only", chunked(b"5\nhello\n0\n\n"), 400, []),
    ("chunk_last_lf_only", chunked(b"5\r\nhello\r\n0\n\n"), 400, []),
    ("chunk_bare_cr", chunked(b"5\r\nhello\r0\r\n\r\n"), 400, []),
    ("chunk_trailer", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n\r\n"), 200,
     ECHO_HELLO),
    ("chunk_trailer_obs_fold", chunked(b"5\r\nhello\r\n0\r\nX-T: 1\r\n"
                                       b" folded\r\n\r\n"), 400, []),
    # ---- line ends, folding, header names
    ("head_lf_only", b"GET / HTTP/1.1\nHost: x\n\n", 400, []),
    ("head_mixed_lf", b"GET / HTTP/1.1\r\nHost: x\nX-A: y\r\n\r\n", 400,
     []),
    ("head_bare_cr_value", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n"
     b"\r\n", 400, []),
    ("head_bare_cr_line_end", b"GET / HTTP/1.1\r\nHost: x\rX-A: y\r\n\r\n",
     400, []),
    ("head_obs_fold", b"GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n",
     400, []),
    ("head_obs_fold_first", b"GET / HTTP/1.1\r\n Host: x\r\n\r\n", 400,
     []),
    ("name_space_inside", cl(b"5", b"hello").replace(b"Content-Length",
                                                     b"Content Length"),
     400, []),
    ("name_nul", cl(b"5", b"hello").replace(b"Content-Length",
                                            b"Content-Length\x00"), 400, []),
    ("name_high_byte", cl(b"5", b"hello").replace(b"Content-Length",
                                                  b"Content-Length\xc0"),
     400, []),
    ("name_double_colon", post([b"Content-Length:: 5"], b"hello"), 400,
     []),
    # ---- Content-Length
    ("cl_two_same", post([b"Content-Length: 5", b"Content-Length: 5"],
                         b"hello"), 400, []),
    ("cl_two_differ", post([b"Content-Length: 5", b"Content-Length: 6"],
                           b"hello!"), 400, []),
    ("cl_list_same", cl(b"5, 5", b"hello"), 400, []),
    # RFC 9110 8.6: 1*DIGIT; leading zeros are digits.
    ("cl_leading_zeros", cl(b"005", b"hello"), 200, ECHO_HELLO),
    ("cl_plus", cl(b"+5", b"hello"), 400, []),
    ("cl_space_inside", cl(b"1 0", b"helloworld"), 400, []),
    ("cl_negative", cl(b"-1", b""), 400, []),
    ("cl_hex", cl(b"0x5", b"hello"), 400, []),
    ("cl_empty", cl(b"", b""), 400, []),
    ("cl_19_digits", cl(b"1000000000000000005", b"hello"), 400, []),
    ("cl_18_digits_over_max_body", cl(b"999999999999999999", b"hello"),
     413, []),
    ("cl_tab_ows", post([b"Content-Length:\t5\t"], b"hello"), 200,
     ECHO_HELLO),
    ("cl_uppercase_name", post([b"CONTENT-LENGTH: 5"], b"hello"), 200,
     ECHO_HELLO),
    # ---- absolute-form: routed by the authority, origin-form upstream
    ("absolute_form", b"GET http://other.example/fixed?text=abs HTTP/1.1"
     b"\r\nHost: x\r\n\r\n", 200,
     [B("GET", "/fixed?text=abs", host="other.example")]),
    ("absolute_form_no_path", b"GET http://other.example HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 200, [B("GET", "/", host="other.example")]),
    ("absolute_form_scheme_case", b"GET HTTP://other.example/ HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 200, [B("GET", "/", host="other.example")]),
    ("absolute_form_acl", b"GET http://x/admin/x HTTP/1.1\r\nHost: x\r\n"
     b"\r\n", 403, []),
    ("absolute_form_userinfo", b"GET http://u@other.example/ HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 400, []),
    ("absolute_form_query_no_path", b"GET http://other.example?x=1 "
     b"HTTP/1.1\r\nHost: x\r\n\r\n", 400, []),
    ("absolute_form_other_scheme", b"GET ftp://other.example/ HTTP/1.1\r\n"
     b"Host: x\r\n\r\n", 400, []),
    # ---- bodies that contain a request: never a second request
    ("get_with_body", post([b"Content-Length: 5"], b"hello",
                           method=b"GET"), 200,
     [A("GET", "/echo", b"hello")]),
    ("get_body_is_request", post([b"Content-Length: %d" % len(INNER)],
                                 INNER, method=b"GET"), 200,
     [A("GET", "/echo", INNER)]),
    ("post_body_is_request", cl(b"%d" % len(INNER), INNER), 200,
     [A("POST", "/echo", INNER)]),
    ("chunked_body_is_request", chunked(b"%x\r\n%s\r\n0\r\n\r\n" % (
        len(INNER), INNER)), 200, [A("POST", "/echo", INNER)]),
    # ---- pipelined: what follows a body is the proxy's to parse (the
    # ACL refuses it), never the origin's
    ("cl0_then_request", cl(b"0", b"") + INNER, [200, 403],
     [A("POST", "/echo", b"")]),
    ("chunked_then_request", chunked(CHUNKED_HELLO) + INNER, [200, 403],
     ECHO_HELLO),
    ("cl_short_then_rest", cl(b"3", b"hello" + INNER), [200, 403],
     [A("POST", "/echo", b"hel")]),
    ("get_no_length_then_bytes", b"GET /echo HTTP/1.1\r\nHost: x\r\n\r\n"
     b"hello\r\n\r\n", [200, 400], [A("GET", "/echo", b"")]),
    # ---- Expect: 100-continue with a body that does not wait, or none
    ("expect_body_at_once_then_request", post(
        [b"Expect: 100-continue", b"Content-Length: 5"], b"hello" + INNER),
     [200, 403], ECHO_HELLO),
    ("expect_cl0_then_request", post(
        [b"Expect: 100-continue", b"Content-Length: 0"], INNER),
     [200, 403], [A("POST", "/echo", b"")]),
    ("expect_http10_ignored", post(
        [b"Expect: 100-continue", b"Content-Length: 5"], b"hello",
        version=b"HTTP/1.0"), 200, ECHO_HELLO),
    # RFC 9110 10.1.1: an unknown expectation MAY get 417; 400 is a
    # refusal too. Either way nothing reaches the origin.
    ("expect_unknown", post([b"Expect: 101-nonsense", b"Content-Length: 5"],
                            b"hello"), (400, 417), []),
    # ---- HTTP/1.0, Host
    ("http10_no_host", b"GET / HTTP/1.0\r\n\r\n", 200, [A("GET", "/")]),
    ("host_two_lines", b"GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", 400,
     []),
    ("host_two_lines_case", b"GET / HTTP/1.1\r\nHost: x\r\nhost: x\r\n\r\n",
     400, []),
    ("host_with_space", b"GET / HTTP/1.1\r\nHost: a b\r\n\r\n", 400, []),
    ("host_empty", b"GET / HTTP/1.1\r\nHost: \r\n\r\n", 400, []),
    ("host_userinfo", b"GET / HTTP/1.1\r\nHost: u@x\r\n\r\n", 400, []),
    ("host_with_path", b"GET / HTTP/1.1\r\nHost: x/admin/\r\n\r\n", 400,
     []),
    # RFC 9112 3.2: a Host with an invalid value is a 400. port = *DIGIT;
    # an IP-literal is an IPv6 address or IPvFuture (RFC 3986 3.2.2); an
    # http authority with an empty host is invalid (RFC 9110 4.2.1), as
    # the proxy already holds for "Host: " itself.
    ("host_port_not_digits", b"GET / HTTP/1.1\r\nHost: x:abc\r\n\r\n", 400,
     []),
    ("host_bad_ip_literal", b"GET / HTTP/1.1\r\nHost: [admin.example]\r\n"
     b"\r\n", 400, []),
    ("host_empty_with_port", b"GET / HTTP/1.1\r\nHost: :80\r\n\r\n", 400,
     []),
    # ---- Connection may not strip the framing or the routing fields
    ("connection_lists_content_length", post(
        [b"Connection: Content-Length", b"Content-Length: 5"], b"hello"),
     200, ECHO_HELLO),
    ("connection_lists_transfer_encoding", post(
        [b"Connection: Transfer-Encoding", b"Transfer-Encoding: chunked"],
        CHUNKED_HELLO), 200, ECHO_HELLO),
    ("connection_lists_host", b"GET / HTTP/1.1\r\nHost: x\r\n"
     b"Connection: Host\r\n\r\n", 200, [A("GET", "/", host="x")]),
    # ---- request line
    ("line_two_spaces_after_method", b"GET  / HTTP/1.1\r\nHost: x\r\n\r\n",
     400, []),
    ("line_two_spaces_before_version", b"GET /  HTTP/1.1\r\nHost: x\r\n"
     b"\r\n", 400, []),
    ("line_tab_separator", b"GET\t/ HTTP/1.1\r\nHost: x\r\n\r\n", 400, []),
    ("line_trailing_space", b"GET / HTTP/1.1 \r\nHost: x\r\n\r\n", 400, []),
    # RFC 9110 9.1: methods are case-sensitive tokens; "get" is a valid
    # (unknown) method, forwarded as it is, once.
    ("line_lowercase_method", b"get / HTTP/1.1\r\nHost: x\r\n\r\n", 200,
     [A("get", "/")]),
    # RFC 9112 2.3: HTTP-name is case-sensitive.
    ("line_lowercase_version", b"GET / http/1.1\r\nHost: x\r\n\r\n", 400,
     []),
    ("line_http09", b"GET /\r\n\r\n", 400, []),
    ("line_fragment", b"GET /#frag HTTP/1.1\r\nHost: x\r\n\r\n", 400, []),
    ("line_connect", b"CONNECT other.example:443 HTTP/1.1\r\n"
     b"Host: other.example:443\r\n\r\n", 501, []),
    # ---- an upgrade the backend does not take: no tunnel follows
    ("h2c_upgrade_refused", b"GET / HTTP/1.1\r\nHost: x\r\nUpgrade: h2c\r\n"
     b"Connection: Upgrade, HTTP2-Settings\r\n"
     b"HTTP2-Settings: AAMAAABkAAQAAP__\r\n\r\n" + INNER, [200, 403],
     [A("GET", "/")]),
]


def _run_case(e, name, raw, expect, want):
    n0 = {n: o.count() for n, o in e.origins.items()}
    try:
        _client_side(e, n0, raw, expect, want)
    except AssertionError as ex:
        time.sleep(0.1)
        seen = {n: view(o.snapshot()[n0[n]:]) for n, o in e.origins.items()}
        raise AssertionError("%s; origin saw %s" % (ex, seen))


def _client_side(e, n0, raw, expect, want):
    oa, ob = e.origins["a"], e.origins["b"]
    b0 = sum(o.received_bytes for o in e.origins.values())
    c = Conn(e.port, 3)
    try:
        c.send(raw)
        if expect == "closed":
            closed = c.wait_closed(3)
            check(closed and not c.buf, "want no response and a close, got "
                  "%s%s" % (short(c.buf), "" if closed else " (open)"))
        else:
            seq = expect if isinstance(expect, list) else [expect]
            got = []
            for i, want_st in enumerate(seq):
                try:
                    r, _ = c.read_final()
                except AssertionError as ex:
                    raise AssertionError("response %d: %s (earlier: %r)" % (
                        i + 1, ex, got))
                got.append(r.status)
                ok = (r.status in want_st if isinstance(want_st, tuple)
                      else r.status == want_st)
                check(ok, "response %d is %r, want %s (statuses so far "
                      "%r)" % (i + 1, r, want_st, got))
                if r.status >= 400:
                    check(r.h("X-Origin") is None,
                          "the %d came from an origin" % r.status)
            last = seq[-1]
            if (last[0] if isinstance(last, tuple) else last) >= 400:
                check(c.wait_closed(2), "connection open after %d" % got[-1])
                extra = bytes(c.buf)
            else:
                extra = c.pending(0.1)
            check(not extra, "bytes after the expected response(s): %s" %
                  short(extra, 200))
    finally:
        c.close()
    if not want:
        time.sleep(0.03)
        got = {n: o.snapshot()[n0[n]:] for n, o in e.origins.items()}
        b1 = sum(o.received_bytes for o in e.origins.values())
        check(not got["a"] and not got["b"] and b1 == b0,
              "origin received %d bytes: %r" % (
                  b1 - b0, {n: view(v) for n, v in got.items() if v}))
        return
    seen = []
    for n, o in (("a", oa), ("b", ob)):
        for r in new_requests(o, n0[n], 0.03):
            seen.append((n, r))
    exp = [(w[0], w[1], w[2], w[3]) for w in want]
    have = [(n, r.method, r.target, r.body if r.complete else "INCOMPLETE")
            for n, r in seen]
    check(have == exp, "origin saw %r, want %r" % (have, exp))
    for (n, r), w in zip(seen, want):
        hosts = r.all("Host")
        framing = r.all("Content-Length") + r.all("Transfer-Encoding")
        check(len(framing) <= 1, "forwarded with framing %r" % framing)
        if r.version == "HTTP/1.1":
            check(len(hosts) == 1, "forwarded with Host %r" % hosts)
        if w[4] is not None:
            check(hosts == [w[4]], "forwarded with Host %r, want %r" % (
                hosts, w[4]))


CORPUS_ROUTES = [("admin", [("path", "/admin/"), ("backend", "A"),
                            ("deny", "127.0.0.0/8")]),
                 ("other", [("host", "other.example"), ("backend", "B")]),
                 ("all", [("backend", "A")])]


@group
def smuggling_corpus(filt, report):
    cases = [c for c in CORPUS if filt in "smuggle/" + c[0] or
             filt in "smuggling_corpus"]
    if not cases:
        return
    names = [c[0] for c in CORPUS]
    dup = set(n for n in names if names.count(n) > 1)
    if dup:
        report("smuggle/corpus_names", "duplicate names %s" % sorted(dup))
    passed = 0
    t0 = time.monotonic()
    with Env(origins=("a", "b"), backends=[("A", ["a"]), ("B", ["b"])],
             routes=CORPUS_ROUTES) as e:
        for name, raw, expect, want in cases:
            try:
                _run_case(e, name, raw, expect, want)
                err = None
                passed += 1
            except AssertionError as ex:
                err = "sent %s: %s" % (short(raw, 200), ex)
            report("smuggle/" + name, err)
    info("smuggling corpus: %d request cases, %d passed, %.1fs" % (
        len(cases), passed, time.monotonic() - t0))


# ------------------------------------------- response splitting (origin)

class RawOrigin:
    """An origin that answers each request with canned bytes chosen by
    path (a list of (delay, bytes)), or else "200, body = the target",
    and keeps every connection open afterwards."""

    def __init__(self, canned):
        self.canned = canned
        self.lock = threading.Lock()
        self.requests = []          # (conn id, method, target)
        self.socks = []
        self.ls = socket.socket()
        self.ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.ls.bind(("127.0.0.1", 0))
        self.ls.listen(64)
        self.ls.settimeout(0.2)
        self.port = self.ls.getsockname()[1]
        self.stopped = False
        self.t = threading.Thread(target=self._accept, daemon=True)
        self.t.start()

    def _accept(self):
        n = 0
        while not self.stopped:
            try:
                s, _ = self.ls.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            n += 1
            with self.lock:
                self.socks.append(s)
            threading.Thread(target=self._serve, args=(s, n),
                             daemon=True).start()

    def _serve(self, s, cid):
        s.settimeout(30)
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                head, _, buf = buf.partition(b"\r\n\r\n")
                lines = head.split(b"\r\n")
                parts = lines[0].split(b" ")
                method, target = parts[0].decode(), parts[1].decode()
                n = 0
                for ln in lines[1:]:
                    k, _, v = ln.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                while len(buf) < n:
                    d = s.recv(65536)
                    if not d:
                        return
                    buf += d
                buf = buf[n:]
                with self.lock:
                    self.requests.append((cid, method, target))
                path = target.split("?")[0]
                if path in self.canned:
                    for delay, data in self.canned[path]:
                        if delay:
                            time.sleep(delay)
                        s.sendall(data)
                else:
                    body = target.encode()
                    s.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n"
                              b"\r\n%s" % (len(body), body))
        except OSError:
            return

    def stop(self):
        self.stopped = True
        self.t.join(2)
        self.ls.close()
        with self.lock:
            for s in self.socks:
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass
                s.close()


SMUG = b"HTTP/1.1 200 OK\r\nContent-Length: 8\r\n\r\nsmuggled"

# (name, method, canned response pieces, expectation)
#   "502": the client gets the proxy's 502 (and the connection closes);
#   "502|cut": a 502, or a response cut short and the connection closed
#     (the head was already relayed when the body turned out bad);
#   (status, body): exactly that one response, nothing after it.
# After each, a new request on the same client connection (when still
# open) and one on a new connection must get their own answers: leftover
# bytes of a hostile response never reach a client.
SPLITS = [
    ("cl_and_te", "GET", [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
                          b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n"
                          b"0\r\n\r\n" + SMUG)], "502"),
    ("te_and_cl", "GET", [(0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding: "
                          b"chunked\r\nContent-Length: 30\r\n\r\n2\r\nok\r\n"
                          b"0\r\n\r\n" + SMUG)], "502"),
    ("two_cl_differ", "GET", [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                              b"Content-Length: 41\r\n\r\nok" + SMUG)],
     "502"),
    ("two_cl_same", "GET", [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
                            b"Content-Length: 2\r\n\r\nok")], "502"),
    ("cl_negative", "GET", [(0, b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n"
                            b"\r\n" + SMUG)], "502"),
    ("te_chunked_twice", "GET", [(0, b"HTTP/1.1 200 OK\r\nTransfer-Encoding:"
                                 b" chunked\r\nTransfer-Encoding: chunked\r\n"
                                 b"\r\n2\r\nok\r\n0\r\n\r\n")], "502"),
    ("header_bare_lf", "GET", [(0, b"HTTP/1.1 200 OK\r\nX-A: b\n"
                               b"Content-Length: 2\r\n\r\nok")], "502"),
    ("head_lf_only", "GET", [(0, b"HTTP/1.1 200 OK\nContent-Length: 2\n\n"
                             b"ok")], "502"),
    ("header_bare_cr", "GET", [(0, b"HTTP/1.1 200 OK\r\nX-A: a\rContent-"
                               b"Length: 40\r\nContent-Length: 2\r\n\r\nok")],
     "502"),
    ("header_obs_fold", "GET", [(0, b"HTTP/1.1 200 OK\r\nX-A: a\r\n "
                                b"Content-Length: 9\r\nContent-Length: 2"
                                b"\r\n\r\nok")], "502"),
    ("space_before_colon", "GET", [(0, b"HTTP/1.1 200 OK\r\n"
                                    b"Content-Length : 2\r\n\r\nok")], "502"),
    ("header_nul", "GET", [(0, b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\n"
                           b"Content-Length: 2\r\n\r\nok")], "502"),
    ("status_no_space", "GET", [(0, b"HTTP/1.1 200OK\r\nContent-Length: 2"
                                b"\r\n\r\nok")], "502"),
    ("chunk_size_overflow", "GET", [(0, b"HTTP/1.1 200 OK\r\nTransfer-"
                                     b"Encoding: chunked\r\n\r\n"
                                     b"ffffffffffffffffff\r\nok\r\n"
                                     b"0\r\n\r\n")], "502|cut"),
    ("extra_response_same_write", "GET", [(0, b"HTTP/1.1 200 OK\r\n"
                                           b"Content-Length: 2\r\n\r\nok" +
                                           SMUG)], (200, b"ok")),
    ("extra_response_late", "GET", [(0, b"HTTP/1.1 200 OK\r\nContent-Length:"
                                     b" 2\r\n\r\nok"), (0.3, SMUG)],
     (200, b"ok")),
    ("chunked_then_extra", "GET", [(0, b"HTTP/1.1 200 OK\r\nTransfer-"
                                    b"Encoding: chunked\r\n\r\n2\r\nok\r\n"
                                    b"0\r\n\r\n" + SMUG)], (200, b"ok")),
    ("body_on_204", "GET", [(0, b"HTTP/1.1 204 No Content\r\n"
                             b"Content-Length: 41\r\n\r\n" + SMUG)],
     (204, b"")),
    ("body_on_304", "GET", [(0, b"HTTP/1.1 304 Not Modified\r\n"
                             b"Content-Length: 41\r\n\r\n" + SMUG)],
     (304, b"")),
    ("body_on_head", "HEAD", [(0, b"HTTP/1.1 200 OK\r\nContent-Length: 41"
                               b"\r\n\r\n" + SMUG)], (200, b"")),
    # A 101 the client did not ask for must not open a tunnel; nor one
    # without Upgrade (RFC 9110 15.2.2).
    ("unsolicited_101", "GET", [(0, b"HTTP/1.1 101 Switching Protocols\r\n"
                                 b"Upgrade: websocket\r\nConnection: Upgrade"
                                 b"\r\n\r\n" + SMUG)], "502"),
    ("101_without_upgrade", "GET+upgrade", [(0, b"HTTP/1.1 101 Switching "
                                             b"Protocols\r\n\r\n" + SMUG)],
     "502"),
    ("interim_then_final", "GET", [(0, b"HTTP/1.1 100 Continue\r\n\r\n"
                                    b"HTTP/1.1 200 OK\r\nContent-Length: 2"
                                    b"\r\n\r\nok")], (200, b"ok")),
]


def _split_case(port, name, method, expect):
    path = "/r/" + name
    headers = []
    if method == "GET+upgrade":
        method = "GET"
        headers = ["Upgrade: websocket", "Connection: Upgrade"]
    c = Conn(port, 3)
    try:
        c.send(req(method, path, headers=headers))
        r, _ = c.read_final(head_req=(method == "HEAD"))
        if expect in ("502", "502|cut"):
            if r.status == 502:
                check(r.h("Content-Length") is not None and r.complete,
                      "502 page incomplete: %r" % r)
            else:
                check(expect == "502|cut", "got %r, want 502" % r)
                check(c.wait_closed(3) and not r.complete,
                      "got %r (complete=%s), want 502 or a cut response and "
                      "a close" % (r, r.complete))
            check(c.wait_closed(2), "connection open after %r" % r)
            check(b"smuggled" not in c.buf, "got %s" % short(c.buf))
            check(b"smuggled" not in r.body, "got %r" % r)
        else:
            st, body = expect
            check(r.status == st and r.body == body and r.complete,
                  "got %r, want %d %r" % (r, st, body))
            time.sleep(0.4)             # late leftovers have arrived
            extra = c.pending(0.05)
            check(not extra, "bytes after the response: %s" % short(extra))
            if not c.eof:
                c.send(req("GET", "/next-same/" + name))
                r2, _ = c.read_final()
                check(r2.status == 200 and
                      r2.body == b"/next-same/" + name.encode(),
                      "next request on the same connection got %r" % r2)
    finally:
        c.close()
    c = Conn(port, 3)
    try:
        for i in range(3):
            c.send(req("GET", "/next-new/%s/%d" % (name, i)))
            r, _ = c.read_final()
            want = ("/next-new/%s/%d" % (name, i)).encode()
            check(r.status == 200 and r.body == want,
                  "a later request got %r, want 200 %r" % (r, want))
    finally:
        c.close()


@group
def response_splitting(filt, report):
    cases = [c for c in SPLITS if filt in "split/" + c[0] or
             filt in "response_splitting"]
    if not cases:
        return
    raw = RawOrigin({"/r/" + n: pieces for n, _, pieces, _ in SPLITS})
    tmp = TmpDir()
    passed = 0
    try:
        port = free_port()
        conf = conf_text(port, None, [("raw", [raw.port])],
                         [("all", [("backend", "raw")])])
        p = Proxy(tmp, conf, port).start()
        try:
            for name, method, pieces, expect in cases:
                try:
                    _split_case(port, name, method, expect)
                    err = None
                    passed += 1
                except AssertionError as ex:
                    err = "origin sent %s: %s" % (
                        short(b"".join(x for _, x in pieces), 160), ex)
                report("split/" + name, err)
        finally:
            problems = p.stop()
            if problems:
                report("split/proxy_exit", "proxy " + "; ".join(problems))
    finally:
        raw.stop()
        tmp.remove()
    info("response splitting: %d cases, %d passed" % (len(cases), passed))


# ------------------------------------------------------------------ main

def main():
    filt = sys.argv[1] if len(sys.argv) > 1 else ""
    raise_nofile(4096)
    counts = {"passed": 0, "failed": 0}

    def report(name, err):
        if err is None:
            print("ok %s" % name, flush=True)
            counts["passed"] += 1
        else:
            msg = " ".join(str(err).split())
            print("FAIL %s: %s" % (name, msg[:1500]), flush=True)
            counts["failed"] += 1

    t0 = time.monotonic()
    for name, fn, is_group in TESTS:
        if is_group:
            # A corpus group reports its own cases; only its crash is ours.
            err = e2e.run_one(lambda: fn(filt, report), TEST_TIMEOUT)
            if err is not None:
                report(name, err)
            continue
        if filt not in name:
            continue
        report(name, e2e.run_one(fn, TEST_TIMEOUT))
    info("%s: %.1fs" % (LABEL, time.monotonic() - t0))
    print("%s: %d passed, %d failed" % (LABEL, counts["passed"],
                                        counts["failed"]), flush=True)
    return 1 if counts["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
