#!/usr/bin/env python3
"""test/slowloris.py - measure, do not assert: a normal client's request
latency through ./proxy while N slow clients hold connections open.

    python3 test/slowloris.py [--slow 1000] [--requests 200] [--rate 10]
                              [--trickle 3] [--binary ./proxy] [--KEY=V ...]

Starts the plain build (./proxy, no sanitizers) in front of the test
origin (test/origin.py, in-process) on 127.0.0.1 with the proxy's own
defaults (max_connections 1024, buffers 128, buffer_size 16K,
header_timeout 10s), then:

 1. baseline: --requests requests, each on a new connection, issued at
    --rate per second (open loop: a slow answer does not delay the next
    request), no slow clients;
 2. the same while --slow connections each hold half a request head and
    trickle one more header byte every --trickle seconds; any that the
    proxy closes (408, eviction) is reopened, so the flood stays at N.

Prints p50/p99/max latency and the failures (no answer within --timeout)
of both runs, and how often the slow connections were reopened. Extra
[proxy] keys can be given as --key=value (e.g. --buffers=2048).
"""

import argparse
import os
import socket
import sys
import threading
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.dont_write_bytecode = True
sys.path.insert(0, HERE)

import e2e  # noqa: E402
from e2e import Env, Conn, req  # noqa: E402


def percentile(xs, p):
    if not xs:
        return float("nan")
    xs = sorted(xs)
    k = min(len(xs) - 1, max(0, int(round(p / 100.0 * len(xs) + 0.5)) - 1))
    return xs[k]


class Flood:
    """N half-head connections kept open and trickling."""

    def __init__(self, port, n, trickle):
        self.port = port
        self.n = n
        self.trickle = trickle
        self.socks = []
        self.reopened = 0
        self.halt = threading.Event()
        self.t = threading.Thread(target=self.run, daemon=True)
        self.seq = 0

    def open_one(self):
        s = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        self.seq += 1
        s.sendall(b"GET /slow/%d HTTP/1.1\r\nHost: x\r\nX-A: " % self.seq)
        s.setblocking(False)
        return s

    def fill(self):
        while len(self.socks) < self.n and not self.halt.is_set():
            self.socks.append(self.open_one())

    def run(self):
        while not self.halt.is_set():
            start = time.monotonic()
            alive = []
            for s in self.socks:
                ok = True
                try:
                    if s.recv(4096) == b"":
                        ok = False
                except BlockingIOError:
                    pass
                except OSError:
                    ok = False
                if ok:
                    try:
                        s.send(b"a")
                    except OSError:
                        ok = False
                if ok:
                    alive.append(s)
                else:
                    s.close()
                    self.reopened += 1
            self.socks = alive
            try:
                self.fill()
            except OSError:
                pass
            self.halt.wait(max(0.0, self.trickle -
                               (time.monotonic() - start)))

    def start(self):
        self.fill()
        self.t.start()

    def stop(self):
        self.halt.set()
        self.t.join(self.trickle + 10)
        for s in self.socks:
            s.close()


def measure(port, n, rate, timeout):
    lat = [None] * n
    threads = []

    def one(i):
        t0 = time.monotonic()
        try:
            c = Conn(port, timeout)
            try:
                c.send(req("GET", "/fixed?text=m%d" % i))
                r, _ = c.read_final()
            finally:
                c.close()
            if r.status == 200 and r.body == b"m%d" % i:
                lat[i] = time.monotonic() - t0
        except (AssertionError, OSError):
            pass

    t0 = time.monotonic()
    for i in range(n):
        wait = t0 + i / rate - time.monotonic()
        if wait > 0:
            time.sleep(wait)
        th = threading.Thread(target=one, args=(i,), daemon=True)
        th.start()
        threads.append(th)
    for th in threads:
        th.join(timeout + 5)
    ok = [x for x in lat if x is not None]
    return ok, n - len(ok), time.monotonic() - t0


def report(label, ok, failed, wall):
    if ok:
        print("%-24s %d ok, %d failed in %.1fs: p50 %.1f ms, p99 %.1f ms, "
              "max %.1f ms" % (label, len(ok), failed, wall,
                               percentile(ok, 50) * 1000,
                               percentile(ok, 99) * 1000, max(ok) * 1000),
              flush=True)
    else:
        print("%-24s 0 ok, %d failed in %.1fs" % (label, failed, wall),
              flush=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--slow", type=int, default=1000)
    ap.add_argument("--requests", type=int, default=200)
    ap.add_argument("--rate", type=float, default=10.0)
    ap.add_argument("--trickle", type=float, default=3.0)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--binary", default=e2e.PLAIN_BIN)
    args, extra = ap.parse_known_args()
    over = {"max_connections": None, "buffers": None, "buffer_size": None,
            "header_timeout": None, "idle_timeout": None,
            "backend_timeout": None, "max_body": None}
    for x in extra:
        k, _, v = x.lstrip("-").partition("=")
        over[k] = v
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = args.slow * 2 + 2048
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(want, hard), hard))
    with Env(proxy=over, binary=os.path.abspath(args.binary)) as e:
        print("proxy %s, [proxy] %s" % (args.binary, ", ".join(
            "%s=%s" % (k, v if v is not None else "default")
            for k, v in over.items())), flush=True)
        print("%d requests at %.0f/s, each on a new connection; timeout "
              "%.0fs" % (args.requests, args.rate, args.timeout), flush=True)
        report("baseline (no flood):", *measure(e.port, args.requests,
                                                 args.rate, args.timeout))
        fl = Flood(e.port, args.slow, args.trickle)
        t0 = time.monotonic()
        fl.start()
        print("flood: %d half heads open after %.2fs, a byte each every "
              "%.1fs" % (len(fl.socks), time.monotonic() - t0, args.trickle),
              flush=True)
        time.sleep(1)
        try:
            res = measure(e.port, args.requests, args.rate, args.timeout)
        finally:
            fl.stop()
        report("with %d slow:" % args.slow, *res)
        print("slow connections closed by the proxy and reopened: %d" %
              fl.reopened, flush=True)


if __name__ == "__main__":
    main()
