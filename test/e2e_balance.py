#!/usr/bin/env python3
"""test/e2e_balance.py - end-to-end tests of the balancing features:
smooth weighted round-robin, failover and retries, active health checks,
the status page and strip_prefix.

    python3 test/e2e_balance.py [FILTER]

FILTER selects the tests whose name contains it. Prints `ok NAME` or
`FAIL NAME: reason` per test, `# ...` information lines, and last
`e2e_balance: N passed, N failed`; exits non-zero on any failure.

Built on the harness of test/e2e.py (Proxy, Conn, TmpDir, req ...) and the
test origin of test/origin.py; neither is changed here. The few origin
behaviours these tests need beyond origin.py (a health path that can be
switched to 500, a path that closes without answering, fixed redirects,
closing idle keep-alive connections) come from XOrigin below, a subclass.

Environment: PROXY_BIN (default test/proxy-san) is the binary under test.
Every test starts its own proxy with its own config in a temp dir, on free
ports of 127.0.0.1, and stops it with SIGTERM by PID; the proxy must exit
0 and print no sanitizer report. Every test is bounded by SIGALRM.
"""

import json
import os
import re
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

import e2e  # noqa: E402
from e2e import (Conn, Proxy, TmpDir, check, expect_status,  # noqa: E402
                 free_port, info, req, short)
import origin as om  # noqa: E402
from origin import Origin  # noqa: E402

LABEL = "e2e_balance"
TEST_TIMEOUT = 60           # seconds for one test, whatever it does
STATUS = "/.proxy/status"
CHECK_UA = "proxy-check"    # User-Agent of the proxy's health checks



# ------------------------------------------------------------ the origin

class XOrigin(Origin):
    """origin.Origin plus what these tests need:

    /healthz           answers self.health (switchable while running)
    /die               closes the connection after reading the request,
                       without a byte of answer, when self.die; else 200
    self.redirects     {path: [(header, value)]}: 302 with those headers
    idle_close=S       closes a keep-alive connection idle for S seconds
    lazy_close=S       a request arriving on a connection that was idle
                       for more than S seconds is read, then the
                       connection is closed without an answer (the race of
                       a backend's keep-alive timer with a reused
                       connection); such requests get .dropped = True
    """

    def __init__(self, name, port=0, health=200, die=False,
                 idle_close=None, lazy_close=None):
        super().__init__(port=port, name=name)
        self.health = health
        self.die = die
        self.idle_close = idle_close
        self.lazy_close = lazy_close
        self.redirects = {}
        self._last = {}

    def _serve(self, s, cid):
        if self.idle_close:
            s.settimeout(self.idle_close)
        return Origin._serve(self, s, cid)

    def _respond(self, s, rd, req_):
        req_.dropped = False
        if self.lazy_close is not None and req_.seq > 0:
            last = self._last.get(req_.conn_id, req_.time)
            if req_.time - last > self.lazy_close:
                req_.dropped = True
                return False
        keep = self._answer(s, rd, req_)
        self._last[req_.conn_id] = time.monotonic()
        return keep

    def _answer(self, s, rd, r):
        if r.path == "/healthz":
            code = self.health
            return self._send(s, r, "%d Health" % code, b"health %d\n" % code)
        if r.path == "/die":
            if self.die:
                return False
            return self._send(s, r, "200 OK", b"survived\n")
        if r.path in self.redirects:
            return self._send(s, r, "302 Found", b"moved\n",
                              headers=["%s: %s" % hv
                                       for hv in self.redirects[r.path]])
        return Origin._respond(self, s, rd, r)

    # -- the test's view

    def served(self):
        """Requests that were not the proxy's health checks."""
        return [r for r in self.snapshot()
                if r.header("User-Agent") != CHECK_UA]

    def checks(self):
        return [r for r in self.snapshot()
                if r.header("User-Agent") == CHECK_UA]


def addr(o_or_port):
    p = o_or_port if isinstance(o_or_port, int) else o_or_port.port
    return "127.0.0.1:%d" % p


# -------------------------------------------------------------- the world

def bconf(port, proxy=None, backends=(), routes=None):
    """An INI config. proxy: overrides of e2e.DEFAULT_PROXY (None removes
    a key); backends: [(name, [(port, weight or None)], [(key, value)])];
    routes: [(name, [(key, value)])], default one route to the first
    backend."""
    keys = dict(e2e.DEFAULT_PROXY)
    for k, v in (proxy or {}).items():
        if v is None:
            keys.pop(k, None)
        else:
            keys[k] = v
    lines = ["[proxy]", "listen = 127.0.0.1:%d" % port]
    for k, v in keys.items():
        for x in (v if isinstance(v, list) else [v]):
            lines.append("%s = %s" % (k, x))
    for name, servers, extra in backends:
        lines += ["", "[backend %s]" % name]
        for p, w in servers:
            lines.append("server = 127.0.0.1:%d%s" % (
                p, " weight=%d" % w if w else ""))
        for k, v in extra or []:
            lines.append("%s = %s" % (k, v))
    if routes is None:
        routes = [("all", [("backend", backends[0][0])])]
    for name, kv in routes:
        lines += ["", "[route %s]" % name]
        for k, v in kv:
            lines.append("%s = %s" % (k, v))
    return "\n".join(lines) + "\n"


class BEnv:
    """A test's world: temp dir, XOrigins, one proxy. Origins made with
    origin() (or handed to track()) are stopped at the end; the proxy is
    stopped with SIGTERM and must exit 0 without a sanitizer report."""

    def __init__(self):
        self.tmp = None
        self.proxy = None
        self.all_origins = []
        self.conns = []
        self.threads_stop = threading.Event()

    def __enter__(self):
        self.tmp = TmpDir()
        self.port = free_port()
        return self

    def origin(self, name, **kw):
        o = XOrigin(name, **kw).start()
        self.all_origins.append(o)
        return o

    def track(self, o):
        self.all_origins.append(o)
        return o

    def start(self, **kw):
        self.conf = bconf(self.port, **kw)
        self.proxy = Proxy(self.tmp, self.conf, self.port).start()
        return self

    def __exit__(self, et, ev, tb):
        self.threads_stop.set()
        for c in self.conns:
            c.close()
        problems = self.proxy.stop() if self.proxy else []
        for o in self.all_origins:
            o.stop()
        self.tmp.remove()
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

    def exchange(self, data, head_req=False, timeout=5.0):
        c = Conn(self.port, timeout)
        try:
            c.send(data)
            r, _ = c.read_final(head_req)
        finally:
            c.close()
        return r

    def stderr(self):
        return self.proxy.stderr()

    # -- the status page

    def status_json(self, path=STATUS + "?json"):
        r = self.exchange(req("GET", path))
        expect_status(r, 200, "status page")
        try:
            return json.loads(r.body)
        except ValueError as ex:
            raise AssertionError("status page is not JSON (%s): %s" % (
                ex, short(r.body, 400)))

    def servers(self, backend="web"):
        """{address: server dict} of a backend, from the JSON page."""
        d = self.status_json()
        for b in d.get("backends", []):
            if b.get("name") == backend:
                return {s["address"]: s for s in b["servers"]}
        raise AssertionError("backend %s not on the status page: %s" % (
            backend, short(json.dumps(d), 400)))

    def wait_state(self, address, pred, timeout, step=0.02):
        """Poll the JSON page until pred(server dict) holds; returns
        (seconds waited or None, last server dict)."""
        t0 = time.monotonic()
        s = None
        while True:
            s = self.servers().get(address)
            check(s is not None, "server %s not on the status page" %
                  address)
            if pred(s):
                return time.monotonic() - t0, s
            if time.monotonic() - t0 > timeout:
                return None, s
            time.sleep(step)


def parse_text_status(text):
    """The plain-text page as the same structure as the JSON one."""
    pats = {
        "uptime": r"uptime (\d+)s",
        "connections": r"connections current (\d+) max (\d+) total (\d+) "
                       r"parked (\d+)",
        "buffers": r"buffers free (\d+) of (\d+) \((\d+) bytes each\)",
        "pipes": r"pipes free (\d+) of (\d+) spliced (\d+)",
        "requests": r"requests total (\d+) 1xx (\d+) 2xx (\d+) 3xx (\d+) "
                    r"4xx (\d+) 5xx (\d+)",
        "reserved": r"reserved bytes connections (\d+) buffers (\d+) "
                    r"tls (\d+) cache (\d+) addresses (\d+) other (\d+)",
    }
    lines = text.rstrip("\n").split("\n")
    d = {}
    i = 0
    for key, pat in pats.items():
        check(i < len(lines), "text status page ends before %r: %r" % (
            key, text))
        m = re.fullmatch(pat, lines[i])
        check(m, "text status line %d %r does not match %r" % (
            i + 1, lines[i], pat))
        v = [int(x) for x in m.groups()]
        if key == "uptime":
            d[key] = v[0]
        elif key == "connections":
            d[key] = dict(zip(("current", "max", "total", "parked"), v))
        elif key == "buffers":
            d[key] = dict(zip(("free", "total", "size"), v))
        elif key == "pipes":
            d[key] = dict(zip(("free", "total", "spliced"), v))
        elif key == "requests":
            d[key] = dict(zip(("total", "1xx", "2xx", "3xx", "4xx", "5xx"),
                              v))
        else:
            d[key] = dict(zip(("connections", "buffers", "tls", "cache",
                               "addresses", "other"), v))
        i += 1
    d["backends"] = []
    srv_pat = (r" server (\S+) state (\S+) weight (\d+) active (\d+) "
               r"idle (\d+) requests (\d+) failures (\d+) last_check (-?\d+)")
    for ln in lines[i:]:
        m = re.fullmatch(r"backend (\S+)", ln)
        if m:
            d["backends"].append({"name": m.group(1), "servers": []})
            continue
        m = re.fullmatch(srv_pat, ln)
        check(m and d["backends"], "unexpected text status line %r" % ln)
        g = m.groups()
        d["backends"][-1]["servers"].append({
            "address": g[0], "state": g[1], "weight": int(g[2]),
            "active": int(g[3]), "idle": int(g[4]), "requests": int(g[5]),
            "failures": int(g[6]), "last_check": int(g[7])})
    return d


def longest_run(seq):
    best = cur = 0
    prev = object()
    for x in seq:
        cur = cur + 1 if x == prev else 1
        prev = x
        best = max(best, cur)
    return best


def qid(r):
    """The i= query parameter of an origin request record."""
    return r.query.get("i")


def down_lines(text, address):
    return [ln for ln in text.splitlines()
            if ("server %s is down" % address) in ln]


def up_lines(text, address):
    return [ln for ln in text.splitlines()
            if ("server %s is up" % address) in ln]


# ---------------------------------------------------------------- registry

TESTS = []


def test(fn):
    TESTS.append((fn.__name__, fn))
    return fn


# -------------------------------------------------------------- the tests

def _sequential(e, n, conn=None, path="/"):
    """n GETs on one keep-alive connection, path?i=K; returns the list of
    (i, X-Origin). Every response must be a complete 200."""
    c = conn or e.conn()
    out = []
    for i in range(n):
        k = "%d" % i
        c.send(req("GET", "%s?i=%s" % (path, k)))
        r, _ = c.read_final()
        check(r.status == 200 and r.complete,
              "request %d of %d got %r" % (i + 1, n, r))
        if "close" in r.tokens("Connection"):
            c.close()
            c = e.conn()
        out.append((k, r.h("X-Origin")))
    return out


def _check_seen(origins, got, what):
    """Each answered request id reached exactly the origin named in its
    X-Origin, once, and no origin saw a request nobody answered."""
    by = {o.name: {} for o in origins}
    for o in origins:
        for r in o.served():
            by[o.name][qid(r)] = by[o.name].get(qid(r), 0) + 1
    for k, name in got:
        check(name in by, "%s: request i=%s answered by unknown origin %r" %
              (what, k, name))
        check(by[name].get(k) == 1, "%s: request i=%s answered by %s, which "
              "saw it %d times" % (what, k, name, by[name].get(k, 0)))
        for o in origins:
            if o.name != name:
                check(k not in by[o.name], "%s: request i=%s answered by %s "
                      "also reached %s" % (what, k, name, o.name))
    answered = {k for k, _ in got}
    for o in origins:
        extra = set(by[o.name]) - answered
        check(not extra, "%s: origin %s saw requests nobody answered: %s" %
              (what, o.name, sorted(extra)[:10]))


@test
def wrr_split_123():
    with BEnv() as e:
        a, b, c = e.origin("a"), e.origin("b"), e.origin("c")
        e.start(backends=[("web", [(a.port, 1), (b.port, 2), (c.port, 3)],
                           [])])
        got = _sequential(e, 600)
        names = [n for _, n in got]
        split = {n: names.count(n) for n in ("a", "b", "c")}
        seen = {o.name: len(o.served()) for o in (a, b, c)}
        info("wrr_split_123: by X-Origin %s, origins saw %s, longest run %d" %
             (split, seen, longest_run(names)))
        check(split == {"a": 100, "b": 200, "c": 300},
              "split by X-Origin %s, want a 100 b 200 c 300" % split)
        check(seen == {"a": 100, "b": 200, "c": 300},
              "origins saw %s, want a 100 b 200 c 300" % seen)
        _check_seen((a, b, c), got, "wrr")
        check(longest_run(names) <= 3, "longest run of one origin %d > 3: "
              "%s" % (longest_run(names), "".join(names[:60])))
        srv = e.servers()
        reqs = {k: v["requests"] for k, v in srv.items()}
        want = {addr(a): 100, addr(b): 200, addr(c): 300}
        check(reqs == want, "status page requests %s, want %s" % (reqs,
                                                                  want))
        weights = {k: v["weight"] for k, v in srv.items()}
        check(weights == {addr(a): 1, addr(b): 2, addr(c): 3},
              "status page weights %s" % weights)


class Load:
    """nthreads clients doing GET /?i=T-N back to back on keep-alive
    connections until stopped; every response must be a complete 200.
    The first `slow` threads ask for /slow?delay=SLOW_DELAY instead, so
    that some requests are in flight at an origin when it is killed."""

    SLOW_DELAY = 0.5

    def __init__(self, port, nthreads, stop_ev, slow=0):
        self.port = port
        self.slow = slow
        self.stop_ev = stop_ev
        self.lock = threading.Lock()
        self.got = []           # (time, id, X-Origin)
        self.failures = []      # (time, id, what)
        self.threads = [threading.Thread(target=self._run, args=(i,),
                                         daemon=True)
                        for i in range(nthreads)]

    def start(self):
        for t in self.threads:
            t.start()
        return self

    def stop(self):
        self.stop_ev.set()
        for t in self.threads:
            t.join(10)

    def count(self):
        with self.lock:
            return len(self.got)

    def _run(self, ti):
        c = None
        n = 0
        while not self.stop_ev.is_set():
            k = "%d-%d" % (ti, n)
            n += 1
            try:
                if c is None:
                    c = Conn(self.port, 5)
                if ti < self.slow:
                    path, want = "/slow?delay=%s&i=%s" % (
                        self.SLOW_DELAY, k), b"slow\n"
                else:
                    path, want = "/?i=" + k, om.HELLO
                if not c.send(req("GET", path)):
                    raise AssertionError("send failed: %r" % c.send_error)
                r, _ = c.read_final()
                if r.status != 200 or not r.complete or r.body != want:
                    raise AssertionError("got %r" % r)
                with self.lock:
                    self.got.append((time.monotonic(), k, r.h("X-Origin")))
                if "close" in r.tokens("Connection"):
                    c.close()
                    c = None
            except (AssertionError, OSError) as ex:
                with self.lock:
                    self.failures.append((time.monotonic(), k, str(ex)))
                if c is not None:
                    c.close()
                c = None
        if c is not None:
            c.close()


@test
def failover_under_load():
    with BEnv() as e:
        a, b, c = e.origin("a"), e.origin("b"), e.origin("c")
        bport = b.port
        e.start(backends=[("web", [(a.port, None), (b.port, None),
                                   (c.port, None)],
                           [("health_check", "/"),
                            ("health_interval", "1s"),
                            ("fail_timeout", "10s")])])
        t_up, s = e.wait_state(addr(b), lambda s: s["state"] == "up" and
                               s["last_check"] == 200, 3)
        check(t_up is not None, "b not up before the test: %s" % s)
        # Two threads of slow GETs (0.5s at the origin), two of fast ones.
        load = Load(e.port, 4, e.threads_stop, slow=2)
        t0 = time.monotonic()
        load.start()
        time.sleep(1.0)
        n_before = load.count()
        check(n_before > 0, "no request completed in the first second; "
              "failures %s" % load.failures[:3])
        # Kill b while a slow request it just received is in flight (its
        # connection is shut down before any response byte), if one comes
        # within 3s; round-robin sends a third of them to b.
        cut = []
        end = time.monotonic() + 3
        while time.monotonic() < end and not cut:
            with load.lock:
                done = {g[1] for g in load.got}
            now = time.monotonic()
            cut = [qid(r) for r in b.served() if r.path == "/slow" and
                   qid(r) not in done and now - r.time < 0.1]
            if not cut:
                time.sleep(0.005)
        t_kill = time.monotonic()
        b.stop()
        t_closed = time.monotonic()
        # Time from the port closing to the status page saying so.
        t_det = None
        saw_down = False
        last = None
        while time.monotonic() - t_closed < 5:
            last = e.servers()[addr(b)]
            if last["state"] != "up" and t_det is None:
                t_det = time.monotonic() - t_closed
            if last["state"] == "down":
                saw_down = True
                break
            time.sleep(0.02)
        check(t_det is not None and saw_down,
              "b not shown down within 5s of its port closing: %s; proxy "
              "log %s" % (last, short(e.stderr()[-600:], 600)))
        down_state = last
        time.sleep(0.5)         # load runs on with b down
        with load.lock:
            after_kill = [g for g in load.got if g[0] > t_closed + 0.2]
        on_b = [g for g in after_kill if g[2] == "b"]
        b2 = e.track(XOrigin("b", port=bport).start())
        t_restart = time.monotonic()
        t_rec, s = e.wait_state(addr(b), lambda s: s["state"] == "up", 3)
        t_back = None
        if t_rec is not None:
            end = time.monotonic() + 3
            while time.monotonic() < end and not b2.served():
                time.sleep(0.01)
            if b2.served():
                t_back = b2.served()[0].time - t_restart
        while time.monotonic() - t0 < 4.0:
            time.sleep(0.05)
        load.stop()
        alive = [t for t in load.threads if t.is_alive()]
        check(not alive, "%d load threads still running" % len(alive))
        total = len(load.got)
        info("failover_under_load: %d requests in %.1fs, %d failed (%d in "
             "flight at b when killed); b shown not-up %.3fs and down %s "
             "after its port closed (stop() took %.3fs); up again %s after "
             "restart, first request %s after restart" % (
                 total, time.monotonic() - t0, len(load.failures), len(cut),
                 t_det, "yes" if saw_down else "no", t_closed - t_kill,
                 "%.3fs" % t_rec if t_rec is not None else "never",
                 "%.3fs" % t_back if t_back is not None else "never"))
        check(not load.failures, "%d client-visible failures, first: %s" % (
            len(load.failures), load.failures[:3]))
        answered_by = {k: name for _, k, name in load.got}
        if cut:
            check(all(answered_by.get(k) in ("a", "c") for k in cut),
                  "slow requests cut at b by the kill %s were answered by "
                  "%s (want a retry on a or c)" % (
                      cut, [answered_by.get(k) for k in cut]))
        else:
            info("failover_under_load: no slow request was in flight at b "
                 "within 3s; the kill cut none")
        check(down_state["failures"] >= 1,
              "b down but failures %d" % down_state["failures"])
        check(not on_b, "%d responses from b after its port closed" %
              len(on_b))
        check(t_rec is not None and t_rec <= 1.5,
              "b not shown up within 1.5s of its restart (health_interval "
              "1s): %s after %.2fs: %s" % (
                  "up" if t_rec else "not up", time.monotonic() - t_restart,
                  s))
        check(t_back is not None, "restarted b got no request in 3s after "
              "it was shown up")
        origins = [a, b2, c]
        # What the origins saw: every answered id reached the origin that
        # answered it, once; requests the killed b saw without answering
        # were retried elsewhere (GET is idempotent).
        by = {}
        for o in (a, b, b2, c):
            for r in o.served():
                by.setdefault(qid(r), []).append(o)
        for _, k, name in load.got:
            holders = [o.name for o in by.get(k, [])]
            check(name in holders, "request %s answered by %s, which did "
                  "not see it (seen by %s)" % (k, name, holders))
            check(holders.count(name) == 1, "request %s reached %s %d "
                  "times" % (k, name, holders.count(name)))
            others = [o for o in by.get(k, []) if o.name != name]
            check(all(o is b for o in others), "request %s answered by %s "
                  "also reached %s" % (k, name, [o.name for o in others]))
        answered = {k for _, k, _ in load.got}
        for o in origins:
            extra = {qid(r) for r in o.served()} - answered
            check(not extra, "origin %s saw unanswered requests %s" % (
                o.name, sorted(extra)[:5]))
        retried = sorted(k for k, os_ in by.items()
                         if b in os_ and len(os_) > 1)
        info("failover_under_load: requests cut by the kill and retried on "
             "another server: %d; split a %d, b (before kill) %d, b "
             "(restarted) %d, c %d" % (
                 len(retried), len(a.served()), len(b.served()),
                 len(b2.served()), len(c.served())))


@test
def all_down_fast():
    with BEnv() as e:
        ports = [free_port() for _ in range(3)]
        e.start(backends=[("web", [(p, w) for p, w in zip(ports, (1, 2, 3))],
                           [("fail_timeout", "30s")])])
        codes, times = [], []
        for i in range(5):
            t0 = time.monotonic()
            s = socket.create_connection(("127.0.0.1", e.port), timeout=2)
            try:
                s.sendall(req("GET", "/?i=%d" % i))
                data = b""
                while b"\r\n\r\n" not in data:
                    d = s.recv(65536)
                    if not d:
                        break
                    data += d
                dt = time.monotonic() - t0
            finally:
                s.close()
            code = e2e.status_of(data)
            codes.append(code)
            times.append(dt)
        info("all_down_fast: statuses %s in %s ms" % (
            codes, ", ".join("%.1f" % (t * 1000) for t in times)))
        check(codes[0] in (502, 503), "first request got %s" % codes[0])
        check(all(x == 503 for x in codes[1:]),
              "with every server marked down want 503, got %s" % codes)
        check(max(times) < 0.1, "slowest answer took %.1f ms (want < 100)" %
              (max(times) * 1000))
        srv = e.servers()
        states = {k: (v["state"], v["failures"]) for k, v in srv.items()}
        check(all(v["state"] == "down" and v["failures"] >= 1
                  for v in srv.values()),
              "status page states (state, failures): %s" % states)
        check(set(srv) == {addr(p) for p in ports}, "servers %s" % list(srv))


@test
def health_check_marks_down():
    interval = 1.0
    with BEnv() as e:
        a, b, c = e.origin("a"), e.origin("b"), e.origin("c")
        e.start(backends=[("web", [(a.port, None), (b.port, None),
                                   (c.port, None)],
                           [("health_check", "/healthz"),
                            ("health_interval", "1s"),
                            ("fail_timeout", "10s")])])
        for o in (a, b, c):
            t, s = e.wait_state(addr(o), lambda s: s["state"] == "up" and
                                s["last_check"] == 200, 3)
            check(t is not None, "%s not up with last_check 200 at start: "
                  "%s" % (o.name, s))
        a.health = 500
        t_switch = time.monotonic()
        t_down, s = e.wait_state(addr(a), lambda s: s["state"] != "up",
                                 interval + 1.5)
        check(t_down is not None, "a (health 500) still up %.1fs after the "
              "switch: %s" % (interval + 1.5, s))
        t2, s = e.wait_state(addr(a), lambda s: s["state"] == "down" and
                             s["last_check"] == 500, 1)
        check(t2 is not None, "a not shown down with last_check 500: %s" %
              s)
        info("health_check_marks_down: a out of rotation %.3fs after its "
             "health path turned 500 (interval %.1fs)" % (t_down, interval))
        check(t_down <= interval + 0.3, "a taken out after %.2fs, more than "
              "one interval (%.1fs)" % (t_down, interval))
        n_a = len(a.served())
        n_b, n_c = len(b.served()), len(c.served())
        got = _sequential(e, 30)
        names = [n for _, n in got]
        check(len(a.served()) == n_a, "a (health 500) got %d requests" % (
            len(a.served()) - n_a))
        check(names.count("a") == 0, "responses from a: %d" %
              names.count("a"))
        check(names.count("b") == 15 and names.count("c") == 15,
              "b and c split %d:%d, want 15:15" % (names.count("b"),
                                                    names.count("c")))
        check(len(b.served()) - n_b == 15 and len(c.served()) - n_c == 15,
              "origins b and c saw %d and %d of the 30" % (
                  len(b.served()) - n_b, len(c.served()) - n_c))
        # Stay down over several intervals: checks go on, one log line.
        checks_before = len(a.checks())
        while time.monotonic() - t_switch < 3.6 * interval:
            time.sleep(0.05)
        s = e.servers()[addr(a)]
        check(s["state"] == "down" and s["last_check"] == 500,
              "a after 3.6 intervals: %s" % s)
        n_checks = len(a.checks()) - checks_before
        check(n_checks >= 2, "a got %d health checks in %.1fs" % (
            n_checks, 3.6 * interval - t_down))
        downs = down_lines(e.stderr(), addr(a))
        check(len(downs) == 1, "%d \"is down\" lines for a across %d checks "
              "(want 1): %s" % (len(downs), n_checks + 1, downs))
        for o in (b, c):
            check(not down_lines(e.stderr(), addr(o)),
                  "%s logged down: %s" % (o.name,
                                          down_lines(e.stderr(), addr(o))))
        a.health = 200
        t_up, s = e.wait_state(addr(a), lambda s: s["state"] == "up" and
                               s["last_check"] == 200, interval + 1.5)
        check(t_up is not None, "a (health 200 again) not up in %.1fs: %s" %
              (interval + 1.5, s))
        info("health_check_marks_down: a back in rotation %.3fs after its "
             "health path turned 200" % t_up)
        check(t_up <= interval + 0.3, "a back after %.2fs, more than one "
              "interval" % t_up)
        n_a = len(a.served())
        got = _sequential(e, 30)
        names = [n for _, n in got]
        info("health_check_marks_down: after recovery a:b:c = %d:%d:%d" % (
            names.count("a"), names.count("b"), names.count("c")))
        check(names.count("a") >= 5 and len(a.served()) - n_a ==
              names.count("a"), "after recovery a answered %d of 30, saw "
              "%d" % (names.count("a"), len(a.served()) - n_a))
        ups = up_lines(e.stderr(), addr(a))
        check(len(ups) == 1, "%d \"is up\" lines for a: %s" % (len(ups),
                                                               ups))
        check(len(down_lines(e.stderr(), addr(a))) == 1,
              "\"is down\" lines for a at the end: %s" %
              down_lines(e.stderr(), addr(a)))


@test
def post_not_retried_after_send():
    with BEnv() as e:
        a = e.origin("a", die=True)
        b = e.origin("b")
        e.start(backends=[("web", [(a.port, None), (b.port, None)], [])])
        body = b"precious payload"

        def posts(o):
            return [r for r in o.served() if r.method == "POST"]

        def gets(o):
            return [r for r in o.served() if r.method == "GET"]

        # POSTs until one lands on a (round-robin: at most two).
        results = []
        for i in range(3):
            r = e.exchange(req("POST", "/die?i=p%d" % i, body=body))
            results.append((i, r))
            if posts(a):
                break
        info("post_not_retried_after_send: POST answers %s" % (
            [(r.status, r.h("X-Origin")) for _, r in results]))
        check(len(posts(a)) == 1, "origin a (closes) saw %d POSTs" %
              len(posts(a)))
        pa = posts(a)[0]
        check(pa.complete and pa.body == body,
              "a got the POST incomplete: %r" % pa)
        k = qid(pa)
        r = [r for i, r in results if "p%d" % i == k][0]
        expect_status(r, 502, "POST closed by the backend after sending")
        check([x for x in posts(b) if qid(x) == k] == [],
              "the POST a dropped was replayed to b")
        others = [(i, r) for i, r in results if "p%d" % i != k]
        for i, r2 in others:
            check(r2.status == 200 and r2.h("X-Origin") == "b",
                  "POST p%d got %r" % (i, r2))
        check(len(posts(b)) == len(others), "b saw %d POSTs, %d answered" %
              (len(posts(b)), len(others)))
        srv = e.servers()
        check(srv[addr(a)]["state"] == "up", "a marked %s after a close "
              "after sending (must stay up): %s" % (
                  srv[addr(a)]["state"], srv[addr(a)]))
        # The same with GET: retried on b, succeeds.
        results = []
        for i in range(3):
            r = e.exchange(req("GET", "/die?i=g%d" % i))
            results.append((i, r))
            if gets(a):
                break
        info("post_not_retried_after_send: GET answers %s" % (
            [(r.status, r.h("X-Origin")) for _, r in results]))
        check(len(gets(a)) == 1, "origin a saw %d GETs" % len(gets(a)))
        for i, r in results:
            check(r.status == 200 and r.h("X-Origin") == "b" and
                  r.body == b"survived\n", "GET g%d got %r" % (i, r))
        k = qid(gets(a)[0])
        check(len([x for x in gets(b) if qid(x) == k]) == 1,
              "the GET a dropped (%s) reached b %d times" % (
                  k, len([x for x in gets(b) if qid(x) == k])))
        check(len(gets(b)) == len(results), "b saw %d GETs for %d sent" % (
            len(gets(b)), len(results)))
        srv = e.servers()
        check(srv[addr(a)]["state"] == "up" and srv[addr(a)]["failures"] >= 1,
              "a after the dropped GET: %s" % srv[addr(a)])


@test
def stale_keepalive_retry():
    # (1) the origin closes idle keep-alive connections after 0.3s.
    with BEnv() as e:
        a = e.origin("a", idle_close=0.3)
        e.start(backends=[("web", [(a.port, None)], [])])
        c = e.conn()
        codes = []
        for i in range(6):
            if i:
                time.sleep(0.5)
            c.send(req("GET", "/?i=%d" % i))
            r, _ = c.read_final()
            codes.append(r.status)
            check(r.status == 200 and r.body == om.HELLO,
                  "request %d (0.5s after the last) got %r; proxy log %s" % (
                      i, r, short(e.stderr()[-400:], 400)))
        seen = [qid(r) for r in a.served()]
        info("stale_keepalive_retry: idle-close origin: statuses %s, origin "
             "connections %d" % (codes, a.connections))
        check(seen == [str(i) for i in range(6)], "origin saw %s" % seen)
    # (2) the origin's close races the reuse: it reads the request on the
    # stale connection and closes it without answering.
    with BEnv() as e:
        a = e.origin("a", lazy_close=0.3)
        e.start(backends=[("web", [(a.port, None)], [])])
        c = e.conn()
        for i in range(6):
            if i:
                time.sleep(0.5)
            c.send(req("GET", "/?i=%d" % i))
            r, _ = c.read_final()
            check(r.status == 200 and r.body == om.HELLO,
                  "request %d on a stale pooled connection got %r; proxy log "
                  "%s" % (i, r, short(e.stderr()[-400:], 400)))
        recs = a.served()
        dropped = [qid(r) for r in recs if getattr(r, "dropped", False)]
        answered = [qid(r) for r in recs if not getattr(r, "dropped", False)]
        info("stale_keepalive_retry: racing origin: %d requests dropped on "
             "stale connections and resent, origin connections %d" % (
                 len(dropped), a.connections))
        check(answered == [str(i) for i in range(6)],
              "origin answered %s" % answered)
        check(dropped, "the proxy never reused a pooled connection after "
              "0.5s (test did not exercise the stale path)")


@test
def status_page_text_json():
    with BEnv() as e:
        a = e.origin("a")
        e.start(backends=[("web", [(a.port, 2)], [])])
        c = e.conn()
        for path in ("/", "/?i=2", "/status?code=404", "/fixed"):
            c.send(req("GET", path))
            r, _ = c.read_final()
            check(r.status in (200, 404), "%s got %r" % (path, r))
        nconn = 1
        # plain text
        c.send(req("GET", STATUS))
        r, _ = c.read_final()
        expect_status(r, 200, "text status page")
        check((r.h("Content-Type") or "").startswith("text/plain"),
              "text page Content-Type %r" % r.h("Content-Type"))
        text = r.body.decode("latin-1")
        info("status page (text):\n# " + "\n# ".join(
            text.rstrip("\n").split("\n")))
        t = parse_text_status(text)
        # JSON by ?json
        c.send(req("GET", STATUS + "?json"))
        r, _ = c.read_final()
        expect_status(r, 200, "JSON status page")
        check((r.h("Content-Type") or "").startswith("application/json"),
              "?json Content-Type %r" % r.h("Content-Type"))
        try:
            j = json.loads(r.body)
        except ValueError as ex:
            raise AssertionError("?json body not JSON (%s): %s" % (
                ex, short(r.body, 300)))
        for nstat, d, what in ((1, t, "text"), (2, j, "json")):
            rq = d["requests"]
            check(rq["1xx"] == 0 and rq["3xx"] == 0 and rq["4xx"] == 1 and
                  rq["5xx"] == 0, "%s: request classes %s (want 3 2xx, one "
                  "4xx)" % (what, rq))
            # The status pages themselves may or may not be counted.
            check(3 <= rq["2xx"] <= 3 + nstat - 1 + 1,
                  "%s: 2xx %d after 3 200s" % (what, rq["2xx"]))
            check(4 <= rq["total"] <= 4 + nstat and rq["total"] >= sum(
                rq[k] for k in ("1xx", "2xx", "3xx", "4xx", "5xx")),
                "%s: requests %s after 4 requests and %d status pages" % (
                    what, rq, nstat))
            cn = d["connections"]
            check(cn["max"] == 64 and 1 <= cn["current"] <= 64 and
                  cn["total"] >= nconn, "%s: connections %s" % (what, cn))
            bf = d["buffers"]
            check(bf["total"] == 32 and bf["size"] == 16384 and
                  0 <= bf["free"] <= 32, "%s: buffers %s" % (what, bf))
            pp = d["pipes"]
            check(pp["total"] == 32 // 8 and pp["free"] == pp["total"] and
                  pp["spliced"] == 0, "%s: pipes %s (small bodies are "
                  "not spliced)" % (what, pp))
            rs = d["reserved"]
            check(all(isinstance(rs[k], int) and rs[k] > 0
                      for k in ("connections", "buffers", "addresses",
                                "other")) and
                  rs["buffers"] >= 32 * 16384 and rs["tls"] == 0 and
                  rs["cache"] == 0, "%s: reserved %s (no TLS, no cache "
                  "here)" % (what, rs))
            check(isinstance(d["uptime"], int) and 0 <= d["uptime"] < 30,
                  "%s: uptime %r" % (what, d["uptime"]))
            bs = d["backends"]
            check(len(bs) == 1 and bs[0]["name"] == "web" and
                  len(bs[0]["servers"]) == 1, "%s: backends %s" % (what, bs))
            s = bs[0]["servers"][0]
            want = {"address": addr(a), "state": "up", "weight": 2,
                    "requests": 4, "failures": 0, "last_check": -2}
            got = {k: s.get(k) for k in want}
            check(got == want, "%s: server %s, want %s" % (what, s, want))
            check(s["active"] == 0 and s["idle"] in (0, 1),
                  "%s: server active/idle %s" % (what, s))
        check(j["requests"]["total"] > t["requests"]["total"],
              "the text page's request was not counted: %s then %s" % (
                  t["requests"], j["requests"]))
        # Accept: application/json
        r = e.exchange(req("GET", STATUS, headers=[
            "Accept: application/json"]))
        expect_status(r, 200, "Accept: application/json")
        check((r.h("Content-Type") or "").startswith("application/json"),
              "Accept: application/json gave Content-Type %r" %
              r.h("Content-Type"))
        try:
            j2 = json.loads(r.body)
        except ValueError:
            raise AssertionError("Accept: application/json gave %s" %
                                 short(r.body, 200))
        check("backends" in j2 and "requests" in j2, "JSON %s" %
              short(r.body, 200))
        # HEAD: the head only
        c2 = e.conn()
        c2.send(req("HEAD", STATUS))
        r, _ = c2.read_final(head_req=True)
        expect_status(r, 200, "HEAD status page")
        extra = c2.pending(0.3)
        check(not extra, "bytes after the HEAD status response: %s" %
              short(extra))
        c2.send(req("GET", "/?i=after-head"))
        r, _ = c2.read_final()
        check(r.status == 200 and r.body == om.HELLO,
              "request after HEAD status page got %r" % r)
        targets = [x.target for x in a.served()]
        check(targets == ["/", "/?i=2", "/status?code=404", "/fixed",
                          "/?i=after-head"],
              "origin saw %s (status requests must not reach it)" % targets)
        check(not [x for x in a.snapshot() if STATUS in x.target],
              "a status request reached the origin")
    # status = off: the path is an ordinary one.
    with BEnv() as e:
        a = e.origin("a")
        e.start(proxy={"status": "off"},
                backends=[("web", [(a.port, None)], [])])
        r = e.exchange(req("GET", STATUS + "?json"))
        check(r.status == 404 and r.h("X-Origin") == "a" and
              r.body == b"no such path\n",
              "status = off: GET %s?json got %r (want the origin's 404)" % (
                  STATUS, r))
        targets = [x.target for x in a.served()]
        check(targets == [STATUS + "?json"], "origin saw %s" % targets)


@test
def status_page_forbidden():
    with BEnv() as e:
        a = e.origin("a")
        e.start(proxy={"status_allow": "10.0.0.0/8"},
                backends=[("web", [(a.port, None)], [])])
        for path, hs in ((STATUS, []), (STATUS + "?json", []),
                         (STATUS, ["Accept: application/json"])):
            r = e.exchange(req("GET", path, headers=hs))
            expect_status(r, 403, "%s from 127.0.0.1 (status_allow "
                          "10.0.0.0/8)" % path)
            check(b"backend" not in r.body and b"uptime" not in r.body,
                  "403 body carries the page: %s" % short(r.body))
        r = e.exchange(req("GET", "/"))
        check(r.status == 200 and r.h("X-Origin") == "a",
              "ordinary request got %r" % r)
        targets = [x.target for x in a.snapshot()]
        check(targets == ["/"], "origin saw %s" % targets)


@test
def strip_prefix():
    with BEnv() as e:
        a = e.origin("a")
        e.start(backends=[("web", [(a.port, None)], [])],
                routes=[("app", [("path", "/app/"),
                                 ("strip_prefix", "yes"),
                                 ("backend", "web")])])
        hostport = "127.0.0.1:%d" % e.port
        a.redirects.update({
            "/login-redir": [("Location", "/login")],
            "/host-redir": [("Location", "http://test.local/a")],
            "/hostport-redir": [("Location", "http://%s/a?q=1" % hostport)],
            "/server-redir": [("Location", "http://%s/b" % addr(a))],
            "/other-redir": [("Location", "https://other.example/x")],
            "/other-http": [("Location", "http://evil.example/y")],
            "/rel-redir": [("Location", "login")],
            "/cloc": [("Content-Location", "/y")],
        })
        # target sent -> target the origin must see
        cases = [("/app/x?y=1", "/x?y=1"), ("/app/", "/"),
                 ("/%61pp/z", "/z"), ("/app/a/b/c", "/a/b/c")]
        for sent, want in cases:
            n = len(a.snapshot())
            r = e.exchange(req("GET", sent))
            recs = a.snapshot()[n:]
            check(len(recs) == 1 and recs[0].target == want,
                  "%s reached the origin as %s (want %s); client got %r" % (
                      sent, [x.target for x in recs], want, r))
            check(r.h("X-Origin") == "a", "%s: client got %r" % (sent, r))
        r = e.exchange(req("GET", "/app/"))
        check(r.status == 200 and r.body == om.HELLO, "/app/ got %r" % r)
        # Location and Content-Location rewriting
        loc_cases = [
            ("/app/login-redir", "test.local", "Location", "/app/login"),
            ("/app/host-redir", "test.local", "Location",
             "http://test.local/app/a"),
            ("/app/hostport-redir", hostport, "Location",
             "http://%s/app/a?q=1" % hostport),
            ("/app/server-redir", "test.local", "Location",
             "http://%s/app/b" % addr(a)),
            ("/app/other-redir", "test.local", "Location",
             "https://other.example/x"),
            ("/app/other-http", "test.local", "Location",
             "http://evil.example/y"),
            ("/app/rel-redir", "test.local", "Location", "login"),
            ("/app/cloc", "test.local", "Content-Location", "/app/y"),
        ]
        for sent, host, hdr, want in loc_cases:
            n = len(a.snapshot())
            r = e.exchange(req("GET", sent, host=host))
            recs = a.snapshot()[n:]
            check(len(recs) == 1 and recs[0].target == sent[4:],
                  "%s reached the origin as %s" % (
                      sent, [x.target for x in recs]))
            check(r.status == 302 if hdr == "Location" else True,
                  "%s got %r" % (sent, r))
            check(r.all(hdr) == [want], "%s (Host %s): %s %s, want %r" % (
                sent, host, hdr, r.all(hdr), want))
        # Outside the prefix: no route.
        n = len(a.snapshot())
        r = e.exchange(req("GET", "/other"))
        expect_status(r, 404, "/other with only a /app/ route")
        check(len(a.snapshot()) == n, "origin saw /other")
    with BEnv() as e:
        a = e.origin("a")
        e.start(backends=[("web", [(a.port, None)], [])],
                routes=[("app", [("path", "/app/"),
                                 ("strip_prefix", "no"),
                                 ("backend", "web")])])
        a.redirects["/app/login-redir"] = [("Location", "/login")]
        for sent in ("/app/x?y=1", "/app/", "/%61pp/z"):
            n = len(a.snapshot())
            e.exchange(req("GET", sent))
            recs = a.snapshot()[n:]
            check(len(recs) == 1 and recs[0].target == sent,
                  "strip_prefix = no: %s reached the origin as %s" % (
                      sent, [x.target for x in recs]))
        r = e.exchange(req("GET", "/app/login-redir"))
        check(r.status == 302 and r.all("Location") == ["/login"],
              "strip_prefix = no: Location rewritten: %r" % r)


@test
def weights_with_down_server():
    with BEnv() as e:
        a, b = e.origin("a"), e.origin("b")
        cport = free_port()
        e.start(backends=[("web", [(a.port, 1), (b.port, 2), (cport, 3)],
                           [("fail_timeout", "60s")])])
        got = _sequential(e, 300)
        names = [n for _, n in got]
        split = {n: names.count(n) for n in set(names)}
        seen = {o.name: len(o.served()) for o in (a, b)}
        info("weights_with_down_server: by X-Origin %s, origins saw %s" % (
            split, seen))
        check(split == {"a": 100, "b": 200}, "split %s, want a 100 b 200" %
              split)
        check(seen == {"a": 100, "b": 200}, "origins saw %s" % seen)
        _check_seen((a, b), got, "weights_with_down_server")
        check(longest_run(names) <= 2, "longest run %d: %s" % (
            longest_run(names), "".join(names[:60])))
        s = e.servers()[addr(cport)]
        check(s["state"] == "down" and s["failures"] >= 1 and
              s["weight"] == 3, "c on the status page: %s" % s)


# ------------------------------------------------------------------ main

def main():
    return e2e.run_tests(TESTS, LABEL, TEST_TIMEOUT, cut=2000)

if __name__ == "__main__":
    sys.exit(main())
