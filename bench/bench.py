#!/usr/bin/env python3
"""bench/bench.py - what `make bench` runs: ./proxy against nginx and
HAProxy (and the origin alone, as the ceiling) on this machine, in one
run, interleaved (proxy nginx haproxy origin, proxy nginx haproxy
origin, ...), and bench/RESULTS.md written from it.

The servers under test and the origin (nginx serving static files) are
pinned to CPU 0 with taskset, the load generators (wrk, openssl s_time,
this script) to CPU 1. Each figure is the median of BENCH_RUNS runs of
BENCH_TIME seconds (3 x 5 s; BENCH_QUICK=1: 1 x 2 s). Nothing is
asserted: this measures, it does not test.

Environment: BENCH_QUICK=1, BENCH_RUNS=N, BENCH_TIME=SECONDS,
BENCH_ONLY=ka,close,... (a subset of the scenarios, for development;
tls_close, HTTPS with a new connection per request, runs only when
named there),
BENCH_KEEP=1 (keep the scratch directory with configs and logs),
BENCH_OUT=FILE (instead of bench/RESULTS.md).
"""

import json
import os
import platform
import re
import resource
import select
import signal
import socket
import statistics
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

QUICK = os.environ.get("BENCH_QUICK") == "1"
RUNS = int(os.environ.get("BENCH_RUNS", "1" if QUICK else "3"))
SECS = int(os.environ.get("BENCH_TIME", "2" if QUICK else "5"))
ONLY = [s for s in os.environ.get("BENCH_ONLY", "").split(",") if s]
OUT = os.environ.get("BENCH_OUT", os.path.join(C.BENCH, "RESULTS.md"))
LUA = os.path.join(C.BENCH, "report.lua")
IDLE = 1000                     # idle keep-alive clients held open
CONNS = 50                      # active connections
BIG_CONNS = 10                  # connections for the 1 MiB body
STIME_PROCS = 8                 # openssl s_time clients at once

NCPU = os.cpu_count() or 1
# Servers on CPU 0, clients on CPU 1 (on a single CPU: no pinning).
SRV_CPU, CLI_CPU = ("0", "1") if NCPU >= 2 else (None, None)
CLIENT = ["taskset", "-c", CLI_CPU] if CLI_CPU else []

COLS = ["proxy", "nginx", "haproxy", "origin"]
TITLE = {"proxy": "proxy", "nginx": "nginx", "haproxy": "HAProxy",
         "origin": "origin"}

# Scenarios: key, what, kind, path, connections, port key, extra wrk args,
# columns. Port key "ecdsa"/"rsa" means HTTPS on that certificate's port.
SCENARIOS = [
    # First, while the servers are fresh: RSS with the idle clients is
    # then their cost, not a high-water mark left by the runs before.
    ("idle", "%d idle keep-alive clients held open + %d active "
     "connections, 100 B body" % (IDLE, CONNS),
     "idle", "/small", CONNS, "http", [], COLS),
    ("ka", "keep-alive, 100 B body, %d connections" % CONNS,
     "wrk", "/small", CONNS, "http", [], COLS),
    ("close", "new connection per request (Connection: close), 100 B, "
     "%d connections" % CONNS,
     "wrk", "/small", CONNS, "http", ["-H", "Connection: close"], COLS),
    ("big", "1 MiB body, keep-alive, %d connections" % BIG_CONNS,
     "wrk", "/big", BIG_CONNS, "http", [], COLS),
    ("cache", "cache hit, 100 B body (Cache-Control: max-age=3600), "
     "%d connections" % CONNS,
     "wrk", "/c/small", CONNS, "http", [], COLS),
    ("tls_ecdsa", "TLS full handshakes, ECDSA P-256 (%d x openssl s_time "
     "-new, handshake only)" % STIME_PROCS,
     "stime-new", None, STIME_PROCS, "ecdsa", [], COLS[:3]),
    ("tls_rsa", "TLS full handshakes, RSA-2048 (%d x openssl s_time -new, "
     "handshake only)" % STIME_PROCS,
     "stime-new", None, STIME_PROCS, "rsa", [], COLS[:3]),
    ("tls_resume", "TLS resumed handshakes, ECDSA (%d x openssl s_time "
     "-reuse, handshake only)" % STIME_PROCS,
     "stime-reuse", None, STIME_PROCS, "ecdsa", [], COLS[:3]),
    ("tls_close", "HTTPS, new connection per request (wrk, Connection: "
     "close, %d connections; wrk's OpenSSL resumes its session)" % CONNS,
     "wrk", "/small", CONNS, "ecdsa", ["-H", "Connection: close"], COLS[:3]),
    ("https_ka", "HTTPS keep-alive, 100 B body, %d connections" % CONNS,
     "wrk", "/small", CONNS, "ecdsa", [], COLS[:3]),
]


# Run only when named in BENCH_ONLY (keeps the default run short).
EXTRA = {"tls_close"}


class Stop(Exception):
    pass


def on_signal(sig, frame):
    raise Stop("signal %d" % sig)


# ------------------------------------------------------------ measuring

def cpu_stat():
    """Per-CPU (busy, total) jiffies from /proc/stat."""
    out = {}
    with open("/proc/stat") as f:
        for line in f:
            m = re.match(r"cpu(\d+)\s+(.*)", line)
            if m:
                v = [int(x) for x in m.group(2).split()]
                idle = v[3] + (v[4] if len(v) > 4 else 0)
                out[m.group(1)] = (sum(v[:8]) - idle, sum(v[:8]))
    return out


def busy_pct(a, b, cpu):
    if cpu not in a or cpu not in b:
        return None
    db = b[cpu][0] - a[cpu][0]
    dt = b[cpu][1] - a[cpu][1]
    return 100.0 * db / dt if dt > 0 else None


def server_for(col, port_key, servers):
    if col == "proxy" and port_key == "rsa":
        return servers["proxyrsa"]
    return servers[col]


def port_of(srv, port_key):
    return C.PORTS[srv.name][port_key]


def url_of(srv, port_key, path):
    scheme = "http" if port_key == "http" else "https"
    return "%s://%s:%d%s" % (scheme, C.HOST, port_of(srv, port_key), path)


def client_run(cmd, timeout):
    """C.run, plus the CPU the client used as % of the wall time."""
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t = time.monotonic()
    rc, out = C.run(cmd, timeout)
    wall = time.monotonic() - t
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    return rc, out, wall, 100.0 * used / wall if wall > 0 else None


def wrk(url, conns, secs, extra):
    cmd = CLIENT + ["wrk", "-t1", "-c%d" % conns, "-d%ds" % secs,
                    "--timeout", "5s", "--latency", "-s", LUA] + extra + [url]
    rc, out, wall, cpct = client_run(cmd, secs + 30)
    m = re.search(r"^BENCH (.*)$", out, re.M)
    if not m:
        return None, out
    r = {k: int(v) for k, v in (kv.split("=") for kv in m.group(1).split())}
    r["client_pct"] = cpct
    return r, out


def measure(srv, fn):
    """Run fn() while watching srv's CPU, CPU 0/1 load and the origin's
    request count. Returns fn's dict with cpu_ticks, cpu0, cpu1 and
    origin_reqs added."""
    o0 = C.origin_counts()
    s0 = cpu_stat()
    u0, k0 = srv.cpu()
    r = fn()
    u1, k1 = srv.cpu()
    s1 = cpu_stat()
    o1 = C.origin_counts()
    if r is None:
        return None
    r["user_ticks"], r["sys_ticks"] = u1 - u0, k1 - k0
    r["cpu_ticks"] = r["user_ticks"] + r["sys_ticks"]
    r["cpu0"] = busy_pct(s0, s1, "0")
    r["cpu1"] = busy_pct(s0, s1, "1")
    # Minus the stub_status request (and connection) that read o0.
    r["origin_conns"] = o1[0] - o0[0] - 1
    r["origin_reqs"] = o1[1] - o0[1] - 1
    return r


def run_wrk(srv, port_key, path, conns, extra, secs):
    raw = []

    def go():
        res, out = wrk(url_of(srv, port_key, path), conns, secs, extra)
        raw.append(out)
        return res
    r = measure(srv, go)
    if r is None:
        C.log("  wrk failed against %s:\n%s" % (srv.name, raw[-1][-1500:]))
        return None
    return derive(r)


def derive(r):
    n = max(r["requests"], 1)
    dur = r["duration_us"] / 1e6
    r["rps"] = r["requests"] / dur
    r["mbps"] = r["bytes"] / dur / 1e6
    r["p99_ms"] = r["p99_us"] / 1000.0
    r["cpu_us"] = r["cpu_ticks"] * 1e6 / C.CLK_TCK / n
    r["user_us"] = r["user_ticks"] * 1e6 / C.CLK_TCK / n
    r["sys_us"] = r["sys_ticks"] * 1e6 / C.CLK_TCK / n
    r["up_conns"] = r["origin_conns"] / n
    r["up_reqs"] = r["origin_reqs"] / n
    r["errors"] = sum(r.get(k, 0) for k in
                      ("connect", "read", "write", "status", "timeout"))
    return r


def stime_procs(port, mode, secs, procs):
    """procs `openssl s_time -new|-reuse` clients at once on the client
    CPU. Returns (handshakes, handshakes/s, reused, client %, outputs)."""
    cmd = CLIENT + ["openssl", "s_time", "-connect",
                    "%s:%d" % (C.HOST, port), "-" + mode, "-tls1_2",
                    "-time", str(secs)]
    ru0 = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.monotonic()
    ps = [subprocess.Popen(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT) for _ in range(procs)]
    outs, rate, n, reused = [], 0.0, 0, 0
    try:
        for p in ps:
            o, _ = p.communicate(timeout=secs + 30)
            outs.append(o.decode(errors="replace"))
    except subprocess.TimeoutExpired:
        pass
    finally:
        for p in ps:
            if p.poll() is None:
                p.kill()
                p.wait(5)
    wall = time.monotonic() - t0
    ru1 = resource.getrusage(resource.RUSAGE_CHILDREN)
    used = (ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)
    for o in outs:
        m = re.search(r"(\d+) connections in \d+ real seconds", o)
        if m:
            n += int(m.group(1))
        # One character per connection: 'r' when the session was reused.
        reused += sum(l.count("r") for l in o.splitlines()
                      if re.fullmatch(r"[r*0-9]+", l.strip()))
    return n, wall, reused, 100.0 * used / wall, outs


def run_stime(srv, port_key, mode, secs):
    port = port_of(srv, port_key)
    out = []

    def go():
        n, wall, reused, cpct, outs = stime_procs(port, mode, secs,
                                                  STIME_PROCS)
        out.extend(outs)
        if n == 0:
            return None
        return {"requests": n, "duration_us": int(wall * 1e6),
                "reused": reused, "p99_us": 0, "bytes": 0,
                "client_pct": cpct}
    r = measure(srv, go)
    if r is None:
        C.log("  s_time failed against %s:\n%s" % (
            srv.name, (out or [""])[-1][-800:]))
        return None
    r = derive(r)
    r["p99_ms"] = None
    return r


def hold_idle(port, n, path):
    """n connections that each made one request and now sit idle."""
    socks = []
    req = ("GET %s HTTP/1.1\r\nHost: %s:%d\r\n\r\n"
           % (path, C.HOST, port)).encode()
    ok = 0
    for _ in range(n):
        try:
            s = socket.create_connection((C.HOST, port), timeout=5)
            socks.append(s)
            s.sendall(req)
            status, _ = C.read_response(s)
            ok += status == 200
        except OSError:
            pass
    return socks, ok


def still_open(socks):
    alive = 0
    for s in socks:
        try:
            r, _, _ = select.select([s], [], [], 0)
            if not r:
                alive += 1
            elif s.recv(1, socket.MSG_PEEK):
                alive += 1
        except (OSError, ValueError):
            pass
    return alive


def run_idle(srv, path, conns, secs):
    port = port_of(srv, "http")
    rss0 = srv.rss_kb()
    socks, ok = hold_idle(port, IDLE, path)
    try:
        time.sleep(0.3)
        rss1 = srv.rss_kb()
        pss1 = srv.pss_kb()
        status = None
        if srv.name == "proxy":
            status = proxy_status()
        r = run_wrk(srv, "http", path, conns, [], secs)
        alive = still_open(socks)
    finally:
        for s in socks:
            s.close()
    if r is None:
        return None
    r.update(rss_before_kb=rss0, rss_idle_kb=rss1, pss_idle_kb=pss1,
             idle_ok=ok,
             idle_alive=alive, status=status)
    return r


def proxy_status():
    try:
        _, _, body = C.http_get(C.PORTS["proxy"]["http"],
                                "/.proxy/status?json")
        return json.loads(body)
    except (OSError, ValueError) as e:
        return {"error": str(e)}


# ------------------------------------------------------------ facts

def cmd_out(cmd):
    rc, out = C.run(cmd, 20)
    return out.strip()


def versions():
    v = {}
    v["proxy"] = cmd_out([C.PROXY, "-v"]).splitlines()[0]
    v["proxy_git"] = C.git_rev()
    v["nginx"] = cmd_out(["nginx", "-v"]).splitlines()[0]
    v["haproxy"] = cmd_out(["haproxy", "-v"]).splitlines()[0]
    v["wrk"] = cmd_out(["wrk", "-v"]).splitlines()[0]
    v["openssl"] = cmd_out(["openssl", "version"]).splitlines()[0]
    v["kernel"] = " ".join(platform.uname()[0:3:2]) + " " + \
        platform.uname().machine
    return v


def machine():
    model = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    mem = "?"
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                mem = "%.1f GB" % (int(line.split()[1]) / 1048576)
    try:
        with open("/etc/debian_version") as f:
            deb = "Debian " + f.read().strip()
    except OSError:
        deb = platform.platform()
    return {"nproc": NCPU, "model": model, "mem": mem, "os": deb}


LIBC = ("libc.so", "libm.so", "libpthread.so", "libdl.so", "librt.so",
        "ld-linux", "linux-vdso", "libresolv.so")


def sizes():
    """Stripped binary size of each, and with the shared libraries it
    loads beyond libc (libssl, libcrypto, pcre ...)."""
    out = {}
    import shutil
    for col, path in (("proxy", C.PROXY),
                      ("nginx", shutil.which("nginx")),
                      ("haproxy", shutil.which("haproxy"))):
        tmp = "/tmp/proxy-bench-strip.%d" % os.getpid()
        rc, _ = C.run(["strip", "-o", tmp, path], 30)
        size = os.path.getsize(tmp if rc == 0 else path)
        if rc == 0:
            os.unlink(tmp)
        libs = 0
        names = []
        rc, ldd = C.run(["ldd", path], 20)
        for line in ldd.splitlines():
            m = re.search(r"=>\s*(\S+)", line)
            if not m or any(x in line for x in LIBC):
                continue
            real = os.path.realpath(m.group(1))
            if os.path.exists(real):
                libs += os.path.getsize(real)
                names.append(os.path.basename(m.group(1)))
        out[col] = {"bin": size, "libs": libs, "libnames": names}
    return out


# ------------------------------------------------------------ the run

def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    C.ensure_tools({"nginx": "nginx-light", "haproxy": "haproxy",
                    "wrk": "wrk", "openssl": "openssl", "strip": "binutils",
                    "taskset": "util-linux"})
    if not os.access(C.PROXY, os.X_OK):
        sys.exit("bench: no ./proxy (make bench builds it)")
    C.raise_nofile()
    if CLI_CPU:
        os.sched_setaffinity(0, {int(CLI_CPU)})
    scen = [s for s in SCENARIOS
            if (s[0] in ONLY if ONLY else s[0] not in EXTRA)]
    start = time.time()
    C.log("bench: %d run(s) x %d s per figure, %d scenarios, servers on "
          "CPU %s, clients on CPU %s" % (RUNS, SECS, len(scen), SRV_CPU,
                                         CLI_CPU))
    w = C.Work()
    servers = {}
    facts = {"machine": machine(), "versions": versions(),
             "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
             "loadavg_start": open("/proc/loadavg").read().split()[:3]}
    results = {}
    try:
        w.certs()
        confs = {"origin": C.origin_conf(w), "proxy": C.proxy_conf(w),
                 "proxyrsa": C.proxy_conf(w, "proxyrsa", "rsa"),
                 "nginx": C.nginx_conf(w), "haproxy": C.haproxy_conf(w)}
        for name in ("origin", "proxy", "proxyrsa", "nginx", "haproxy"):
            servers[name] = C.make_server(name, w, confs[name], SRV_CPU)
            servers[name].start()
        # One request each (and the cached object stored), then the
        # RSS of a fresh, idle server.
        for name in ("proxy", "nginx", "haproxy", "origin"):
            for path in ("/small", "/c/small", "/c/small"):
                C.http_get(C.PORTS[name]["http"], path)
        time.sleep(0.5)
        facts["rss_fresh"] = {n: servers[n].rss_kb() for n in COLS}
        facts["pss_fresh"] = {n: servers[n].pss_kb() for n in COLS}
        facts["rss_fresh_detail"] = {n: servers[n].rss_detail()
                                     for n in COLS}
        facts["reserved_log"] = [l for l in servers["proxy"].log_text()
                                 .splitlines() if "reserved" in l]
        facts["status_fresh"] = proxy_status()
        facts["sizes"] = sizes()

        for key, what, kind, path, conns, pk, extra, cols in scen:
            C.log("== %s: %s" % (key, what))
            results[key] = {c: [] for c in cols}
            # Warm-up: one second each, not recorded (fills caches,
            # upstream pools, session caches).
            for col in cols:
                srv = server_for(col, pk, servers)
                if kind.startswith("stime"):
                    stime_procs(port_of(srv, pk), kind[6:], 1, STIME_PROCS)
                else:
                    wrk(url_of(srv, pk, path), conns, 1, extra)
            for rep in range(RUNS):
                for col in cols:
                    srv = server_for(col, pk, servers)
                    if kind == "wrk":
                        r = run_wrk(srv, pk, path, conns, extra, SECS)
                    elif kind.startswith("stime"):
                        r = run_stime(srv, pk, kind[6:], SECS)
                    else:
                        r = run_idle(srv, path, conns, SECS)
                    if r is not None:
                        results[key][col].append(r)
                    C.log("  run %d %-8s %s" % (rep + 1, col, brief(key, r)))
        facts["status_end"] = proxy_status()
        facts["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    except Stop as e:
        C.log("bench: stopped (%s)" % e)
        for s in servers.values():
            s.stop()
        w.cleanup()
        sys.exit(1)
    finally:
        for s in servers.values():
            s.stop()
    facts["elapsed"] = time.time() - start
    for s in servers.values():
        errs = [l for l in s.log_text().splitlines()
                if re.search(r"\b(crit|alert|emerg|error)\b", l, re.I)]
        if errs:
            facts.setdefault("server_errors", {})[s.name] = errs[-5:]
    w.cleanup()
    md = render(facts, results, scen)
    keep = ""
    if os.path.exists(OUT):
        with open(OUT) as f:
            old = f.read()
        # The footprint and callgrind sections are written by their own
        # scripts: keep them.
        marks = [j for j in (old.find(FOOTPRINT_MARK),
                             old.find(CALLGRIND_MARK)) if j >= 0]
        if marks:
            keep = "\n" + old[min(marks):]
    with open(OUT, "w") as f:
        f.write(md + keep)
    C.log("")
    C.log(table(results, scen))
    C.log("bench: wrote %s (%.0f s)" % (os.path.relpath(OUT), facts["elapsed"]))


CALLGRIND_MARK = "<!-- bench-callgrind -->"
FOOTPRINT_MARK = "<!-- bench-footprint -->"


def brief(key, r):
    if r is None:
        return "failed"
    s = ("%8.0f/s  p99 %s ms  cpu %.1f us (%.1f+%.1f)  cpu0 %s%% cpu1 %s%% "
         "client %s%%  upconn %.2f" % (
             r["rps"], "-" if r.get("p99_ms") is None else
             "%.2f" % r["p99_ms"], r["cpu_us"], r["user_us"], r["sys_us"],
             pct(r["cpu0"]), pct(r["cpu1"]), pct(r.get("client_pct")),
             r["up_conns"]))
    if key == "big":
        s += "  %.0f MB/s" % r["mbps"]
    if r.get("errors"):
        s += "  errors %d" % r["errors"]
    if key in ("cache",):
        s += "  origin %d" % r["origin_reqs"]
    if key == "tls_resume":
        s += "  reused %d/%d" % (r["reused"], r["requests"])
    if key == "idle":
        s += "  rss %d->%d KB, %d/%d ok, %d alive" % (
            r["rss_before_kb"], r["rss_idle_kb"], r["idle_ok"], IDLE,
            r["idle_alive"])
    return s


def pct(v):
    return "-" if v is None else "%.0f" % v


# ------------------------------------------------------------ report

def med(rs, f):
    vals = [f(r) for r in rs if f(r) is not None]
    return statistics.median(vals) if vals else None


# Rows: scenario, label, getter, format, higher_is_better.
def rows(scen):
    keys = [s[0] for s in scen]
    out = []

    def add(key, label, get, fmt, hib=True):
        if key in keys:
            out.append((key, label, get, fmt, hib))
    g = lambda k: (lambda r: r.get(k))  # noqa: E731
    n = "%d" % CONNS
    add("ka", "Keep-alive req/s, 100 B, %s conns" % n, g("rps"), "int")
    add("ka", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("ka", "  server CPU, us/req", g("cpu_us"), "us", False)
    add("close", "New connection per request, req/s (%s conns)" % n,
        g("rps"), "int")
    add("close", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("close", "  server CPU, us/req", g("cpu_us"), "us", False)
    add("big", "1 MiB body, MB/s (%d conns)" % BIG_CONNS, g("mbps"), "f1")
    add("big", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("big", "  server CPU, us per 1 MiB response", g("cpu_us"), "us",
        False)
    add("cache", "Cache hit req/s, 100 B, %s conns" % n, g("rps"), "int")
    add("cache", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("cache", "  server CPU, us/req", g("cpu_us"), "us", False)
    add("tls_ecdsa", "TLS full handshakes/s, ECDSA P-256", g("rps"), "int")
    add("tls_ecdsa", "  server CPU, us/handshake", g("cpu_us"), "us", False)
    add("tls_rsa", "TLS full handshakes/s, RSA-2048", g("rps"), "int")
    add("tls_rsa", "  server CPU, us/handshake", g("cpu_us"), "us", False)
    add("tls_resume", "TLS resumed handshakes/s", g("rps"), "int")
    add("tls_resume", "  server CPU, us/handshake", g("cpu_us"), "us",
        False)
    add("tls_close", "HTTPS new connection per request (resumed), req/s",
        g("rps"), "int")
    add("tls_close", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("tls_close", "  server CPU, us/req", g("cpu_us"), "us", False)
    add("https_ka", "HTTPS keep-alive req/s, 100 B, %s conns" % n,
        g("rps"), "int")
    add("https_ka", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("https_ka", "  server CPU, us/req", g("cpu_us"), "us", False)
    add("idle", "RSS, KB, with %d idle keep-alive clients" % IDLE,
        g("rss_idle_kb"), "int", False)
    add("idle", "  PSS, KB, the same", g("pss_idle_kb"), "int", False)
    add("idle", "req/s at %s active conns + %d idle" % (n, IDLE), g("rps"),
        "int")
    add("idle", "  p99 latency, ms", g("p99_ms"), "ms", False)
    add("idle", "  server CPU, us/req", g("cpu_us"), "us", False)
    return out


def fmt(v, f):
    if v is None:
        return "—"
    if f == "int":
        return "{:,}".format(int(round(v)))
    if f == "ms":
        return "%.2f" % v
    if f == "us":
        return "%.1f" % v
    if f == "f1":
        return "%.1f" % v
    if f == "kb":
        return "{:,}".format(int(round(v)))
    return str(v)


def ratio(a, b):
    if a is None or b is None or b == 0:
        return "—"
    return "%.2f" % (a / b)


def client_bound(rs):
    """The client (wrk / s_time) used at least 90% of its CPU in the
    median run: it, not the server, set the rate."""
    v = med(rs, lambda r: r.get("client_pct"))
    return v is not None and v >= 90


def table(results, scen, facts=None):
    hdr = ("| figure (median of %d) | proxy | nginx | HAProxy | origin "
           "| proxy/nginx | proxy/HAProxy |\n|---|--:|--:|--:|--:|--:|--:|"
           % RUNS)
    lines = [hdr]
    marks = False

    def line(lbl, vals, f):
        cells = []
        for c in COLS:
            v = vals.get(c)
            cells.append(fmt(v[0] if isinstance(v, tuple) else v, f) +
                         ("†" if isinstance(v, tuple) and v[1] else ""))
        p = lambda c: (vals.get(c)[0] if isinstance(vals.get(c), tuple)  # noqa
                       else vals.get(c))
        lines.append("| %s | %s | %s | %s | %s | %s | %s |" % (
            lbl, *cells, ratio(p("proxy"), p("nginx")),
            ratio(p("proxy"), p("haproxy"))))

    for key, label, get, f, hib in rows(scen):
        res = results.get(key, {})
        sub = label.startswith("  ")
        vals = {}
        for c in COLS:
            if c not in res or (c == "origin" and "SS, KB" in label):
                continue
            v = med(res[c], get)
            if not sub and hib:
                bound = client_bound(res[c])
                marks = marks or bound
                v = (v, bound)
            vals[c] = v
        lbl = ("&nbsp;&nbsp;↳ " + label[2:]) if sub else label
        if not hib and not sub:
            lbl += " (lower is better)"
        if key == "idle" and label.startswith("RSS") and facts:
            line("RSS, KB, idle, fresh (after start and 3 requests) "
                 "(lower is better)",
                 {c: facts["rss_fresh"][c] for c in COLS[:3]}, "int")
            line("&nbsp;&nbsp;↳ PSS, KB, the same (shared pages split "
                 "between processes)",
                 {c: facts["pss_fresh"][c] for c in COLS[:3]}, "int")
        line(lbl, vals, f)
    if facts:
        sz = facts["sizes"]
        for label, get in (("Stripped binary, KB", lambda s: s["bin"]),
                           ("Stripped binary + its non-libc shared libs, KB",
                            lambda s: s["bin"] + s["libs"])):
            line(label + " (lower is better)",
                 {c: get(sz[c]) / 1024 for c in COLS[:3]}, "int")
    if marks:
        lines.append("\n† the load generator (CPU 1) was at least 90% busy "
                     "in the median run: the client, not the server, set "
                     "this rate; compare the server CPU row below it.")
    return "\n".join(lines)


def cpu_table(results, scen):
    """Where the server's CPU went: user and sys µs per request, and
    upstream connections opened per request."""
    o = ["| scenario | " + " | ".join(
        "%s user / sys µs" % TITLE[c] for c in COLS) +
        " | upstream conns per request (proxy / nginx / HAProxy) |",
        "|---|--:|--:|--:|--:|--:|"]
    for key, what, kind, path, conns, pk, extra, cols in scen:
        res = results.get(key, {})
        cells = []
        for c in COLS:
            rs = res.get(c)
            if not rs:
                cells.append("—")
                continue
            cells.append("%.1f / %.1f" % (med(rs, lambda r: r["user_us"]),
                                          med(rs, lambda r: r["sys_us"])))
        up = []
        for c in COLS[:3]:
            rs = res.get(c)
            up.append("%.3f" % med(rs, lambda r: r["up_conns"]) if rs
                      else "—")
        o.append("| %s | %s | %s |" % (key, " | ".join(cells), " / ".join(up)))
    return "\n".join(o)


def render(facts, results, scen):
    m, v = facts["machine"], facts["versions"]
    mode = ("BENCH_QUICK=1 (development mode: not for comparison)"
            if QUICK else "default")
    o = []
    o.append("# proxy: benchmark results\n")
    o.append("Written by `make bench` (bench/bench.py); rerun it rather "
             "than editing. Ratios are proxy's figure divided by the "
             "other's: above 1 means proxy is higher (better for rates, "
             "worse for latency, CPU and memory).\n")
    o.append("## Machine and versions\n")
    o.append("- date: %s, mode: %s, %d run(s) of %d s per figure, "
             "interleaved, %.0f s in all" % (facts["date"], mode, RUNS, SECS,
                                             facts["elapsed"]))
    o.append("- machine: %d CPUs (nproc), %s, %s RAM, %s, kernel %s" % (
        m["nproc"], m["model"], m["mem"], m["os"], v["kernel"]))
    o.append("- load average at start %s, at end %s (the machine is "
             "shared: other jobs run beside the benchmark)" % (
                 " ".join(facts["loadavg_start"]),
                 " ".join(facts.get("loadavg_end", ["?"]))))
    o.append("- proxy: `%s` (git %s), built by `make` (CFLAGS -Os -g)" % (
        v["proxy"], v["proxy_git"]))
    o.append("- nginx: `%s`; HAProxy: `%s`" % (v["nginx"], v["haproxy"]))
    o.append("- load: `%s`, `%s`\n" % (v["wrk"], v["openssl"]))
    o.append("## Results\n")
    o.append(table(results, scen, facts))
    o.append("")
    o.append("Where the server CPU went (medians): user and sys µs per "
             "request (per handshake, per 1 MiB response), and how many "
             "connections the origin accepted per request:\n")
    o.append(cpu_table(results, scen))
    o.append("")
    o.append("## How it was measured\n")
    o.append("""- Servers under test and the origin share CPU 0 (`taskset -c 0`);
  wrk, `openssl s_time` and the harness run on CPU 1 (`taskset -c 1`).
  The origin is nginx (1 worker, `access_log off`, `sendfile on`)
  serving static files: 100 B `/small`, 1 MiB `/big`, and `/c/small`
  with `Cache-Control: max-age=3600`.
- proxy: `./proxy -f -c CONF`, `max_connections = 4096`, `buffers =
  256`, `buffer_size = 16K`, `[cache] size = 4M`, `max_object = 64K`,
  route `/c/` with `cache = yes`, `[tls]` with the ECDSA certificate (a
  second instance serves the RSA one). nginx: 1 worker, `keepalive 128`
  upstream with HTTP/1.1 (more than the 50 client connections, so it
  never closes an upstream connection it could reuse), `proxy_cache` (keys_zone 1m, max_size 4m) on
  `/c/`. HAProxy: `nbthread 1`, http mode, `http-reuse always`, a
  `cache` section (4 MB) on `/c/`. All three add X-Forwarded-For/-Proto/
  -Host and speak TLS 1.2 only with ECDHE and AES-128-GCM (what BearSSL
  offers; nginx and HAProxy are held to it for like-for-like handshakes).
- Each figure: the median of the runs; runs are interleaved (proxy,
  nginx, HAProxy, origin, then again), each after a 1 s unrecorded
  warm-up per server and scenario. wrk: `-t1`, `--latency`, `--timeout
  5s`; requests/s = responses / duration; p99 from wrk's histogram.
- Server CPU per request: user+sys ticks (`/proc/PID/stat`, 1/%d s) of
  the server's whole process tree (nginx: master, worker, cache
  manager/loader) over the run, divided by the responses. The origin's
  CPU is not included, but it shares CPU 0, so a proxy that does less
  work leaves more of CPU 0 to the origin.
- TLS handshakes: %d `openssl s_time -new -tls1_2` (full) or `-reuse`
  (resumed) clients at once, handshake only, no request; handshakes/s
  is their sum. The OpenSSL client costs about as much per full
  handshake as nginx or HAProxy do, so with one client core their rates
  are the client's limit (†): the server CPU per handshake is the figure
  to compare. (wrk over https with `Connection: close` is not a full
  handshake test: wrk's OpenSSL keeps its session across reconnects and
  resumes it; `BENCH_ONLY=tls_close` runs that as a separate figure.)
- RSS: VmRSS from `/proc/PID/status`, summed over the process tree
  (nginx: master + worker + cache processes). The idle clients: %d
  connections opened by the harness that each made one request and then
  wait; the active load runs while they are held.
- Binary sizes: `strip -o` of the installed binaries; the second row
  adds the shared libraries each loads beyond libc (nginx and HAProxy
  use the system's libssl/libcrypto/pcre/zlib; proxy links BearSSL and
  inih statically).
""" % (C.CLK_TCK, STIME_PROCS, IDLE))
    o.append("## Memory proxy reserves\n")
    o.append("Its startup log (stderr):\n")
    for l in facts["reserved_log"]:
        o.append("    " + l)
    o.append("")
    for label, st in (("status page at start", facts.get("status_fresh")),
                      ("status page at the end", facts.get("status_end"))):
        if st and "reserved" in st:
            r = st["reserved"]
            tot = sum(v for v in r.values() if isinstance(v, int))
            o.append("- `/.proxy/status?json` → `reserved` (%s): %s — %s "
                     "KB in all" % (label, json.dumps(r, sort_keys=True),
                                    "{:,}".format(tot // 1024)))
    idle = results.get("idle", {}).get("proxy") or []
    for r in idle[:1]:
        st = r.get("status") or {}
        if "connections" in st:
            o.append("- with %d idle clients held: status page "
                     "`connections` %s, `buffers` %s" % (
                         IDLE, json.dumps(st["connections"]),
                         json.dumps(st.get("buffers"))))
    o.append("")
    o.append("RSS right after start, per process (PID: KB): " + "; ".join(
        "%s %s" % (c, ", ".join("%d: %d" % pk for pk in
                                facts["rss_fresh_detail"][c]))
        for c in ("proxy", "nginx", "haproxy")) + ".\n")
    o.append("## Every run\n")
    o.append("Per scenario and server, run by run: the figure, p99 ms, "
             "server CPU µs per request (user+sys), how busy CPU 0 "
             "(servers + origin) and CPU 1 (client) were and how much of "
             "it the client itself used, in %. Errors are wrk's (connect, "
             "read, write, non-2xx status, timeout).\n")
    for key, what, kind, path, conns, pk, extra, cols in scen:
        res = results.get(key, {})
        o.append("- **%s** — %s" % (key, what))
        for c in cols:
            rs = res.get(c, [])
            if not rs:
                o.append("  - %s: no result" % c)
                continue
            parts = []
            for r in rs:
                s = "%s/s" % fmt(r["rps"], "int")
                if key == "big":
                    s = "%.0f MB/s" % r["mbps"]
                if r.get("p99_ms") is not None:
                    s += " p99 %.2f" % r["p99_ms"]
                s += " cpu %.1f (cpu0 %s, cpu1 %s, client %s)" % (
                    r["cpu_us"], pct(r["cpu0"]), pct(r["cpu1"]),
                    pct(r.get("client_pct")))
                if r.get("errors"):
                    s += " **errors %d**" % r["errors"]
                if key == "cache":
                    s += " origin saw %d" % r["origin_reqs"]
                if key == "tls_resume":
                    s += " reused %d/%d" % (r["reused"], r["requests"])
                if key == "idle":
                    s += (" RSS %d→%d KB (PSS %d), %d/%d idle ok, %d "
                          "still open" % (
                              r["rss_before_kb"], r["rss_idle_kb"],
                              r["pss_idle_kb"], r["idle_ok"], IDLE,
                              r["idle_alive"]))
                parts.append(s)
            o.append("  - %s: %s" % (TITLE[c], "; ".join(parts)))
    o.append("")
    sz = facts["sizes"]
    o.append("Shared libraries counted in the size row: " + "; ".join(
        "%s: %s" % (c, ", ".join(sz[c]["libnames"]) or "none")
        for c in ("proxy", "nginx", "haproxy")) + ".\n")
    if facts.get("server_errors"):
        o.append("Server logs with errors (last lines):\n")
        for n, ls in facts["server_errors"].items():
            for l in ls:
                o.append("    %s: %s" % (n, l))
        o.append("")
    return "\n".join(o)


if __name__ == "__main__":
    main()
