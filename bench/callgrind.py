#!/usr/bin/env python3
"""bench/callgrind.py - what `make bench-callgrind` runs: userspace
instructions per operation under valgrind --tool=callgrind, for ./proxy
and, for comparison, nginx and HAProxy configured as in bench.py.

Each server is started under callgrind twice per operation, driven by a
simple sequential client through N_SMALL and N_LARGE operations; the
difference of the two totals divided by N_LARGE - N_SMALL is the cost of
one operation, with start-up, config loading and shutdown cancelled out.
For ./proxy the same difference is taken per function (callgrind_annotate),
which lists where a proxied request and a cache hit spend their
instructions. Then, without valgrind, `strace -c` attached to each running
server counts the system calls per operation.

Operations: a proxied request (keep-alive, 100 B body), a cache hit, a
proxied 1 MiB response, an HTTPS keep-alive request, a full TLS handshake (ECDSA P-256) and a resumed
one, each on one connection at a time. The result goes into
bench/RESULTS.md, after the `make bench` table (replacing an earlier
callgrind section).

Environment: CALLGRIND_ONLY=proxy (or nginx,haproxy) limits the servers,
CALLGRIND_OPS=proxied,cache,... the operations; BENCH_KEEP=1 keeps the
scratch directory (callgrind.out files, logs); BENCH_OUT=FILE.
"""

import os
import re
import signal
import socket
import ssl
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

OUT = os.environ.get("BENCH_OUT", os.path.join(C.BENCH, "RESULTS.md"))
MARK = "<!-- bench-callgrind -->"
SERVERS = [s for s in os.environ.get("CALLGRIND_ONLY",
                                     "proxy,nginx,haproxy").split(",") if s]
# op: (what, N small, N large)
OPS = {
    "proxied": ("proxied request, keep-alive, 100 B body", 200, 2200),
    "cache": ("cache hit, keep-alive, 100 B body", 200, 2200),
    "big": ("proxied 1 MiB response, keep-alive", 10, 60),
    "https": ("HTTPS request on a kept-alive TLS connection, 100 B body",
              200, 2200),
    "tls_full": ("full TLS 1.2 handshake, ECDSA P-256, X25519 (no request)",
                 10, 60),
    "tls_resume": ("resumed TLS 1.2 handshake (session ID or ticket, "
                   "no request)", 20, 220),
}
ONLY_OPS = [s for s in os.environ.get("CALLGRIND_OPS", "").split(",") if s]
TOP = 15
STRACE_N = 2000


class Stop(Exception):
    pass


def on_signal(sig, frame):
    raise Stop("signal %d" % sig)


# ------------------------------------------------------------ clients

def tls_ctx():
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    ctx.minimum_version = ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def get_loop(sock, path, n):
    req = ("GET %s HTTP/1.1\r\nHost: %s\r\n\r\n" % (path, C.HOST)).encode()
    buf = b""
    for _ in range(n):
        sock.sendall(req)
        status, buf = C.read_response(sock, buf)
        if status != 200:
            raise RuntimeError("status %d for %s" % (status, path))


def drive(op, port, tport, n, warm):
    """Run n operations (plus the warm-up, which both runs share)."""
    if op in ("proxied", "cache", "big"):
        path = {"cache": "/c/small", "big": "/big"}.get(op, "/small")
        s = socket.create_connection((C.HOST, port), timeout=60)
        try:
            get_loop(s, path, warm)
            get_loop(s, path, n)
        finally:
            s.close()
    elif op == "https":
        ctx = tls_ctx()
        s = ctx.wrap_socket(socket.create_connection((C.HOST, tport),
                                                     timeout=60))
        try:
            get_loop(s, "/small", warm)
            get_loop(s, "/small", n)
        finally:
            s.close()
    else:
        ctx = tls_ctx()
        sess = None
        for i in range(warm + n):
            raw = socket.create_connection((C.HOST, tport), timeout=60)
            s = ctx.wrap_socket(raw, session=sess if op == "tls_resume"
                                else None)
            if op == "tls_resume":
                if sess is not None and i >= warm and not s.session_reused:
                    raise RuntimeError("session not resumed")
                sess = s.session
            s.close()


# ------------------------------------------------------------ servers

def server_cmd(name, w, confs, tool, binary=None):
    """The command line of server `name` under `tool` (a prefix)."""
    if name == "proxy":
        return tool + [binary or C.PROXY, "-f", "-c", confs["proxy"]]
    if name == "nginx":
        return tool + ["nginx", "-p", w.dir, "-e",
                       w.path("nginx-error.log"), "-c", confs["nginx1"]]
    return tool + ["haproxy", "-db", "-f", confs["haproxy"]]


def totals(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(2))
    raise RuntimeError("no totals in " + path)


def callgrind_run(name, op, n, w, confs, binary=None):
    out = w.path("cg.%s%s.%s.%d" % (name, "-noinline" if binary else "",
                                    op, n))
    tool = ["valgrind", "--tool=callgrind", "--callgrind-out-file=" + out]
    srv = C.Server(name, server_cmd(name, w, confs, tool, binary),
                   C.PORTS[name]["http"], w, cpu=None)
    srv.logpath = out + ".log"
    srv.start(timeout=120)
    try:
        drive(op, C.PORTS[name]["http"], C.PORTS[name]["ecdsa"], n, warm=1)
    finally:
        srv.stop(timeout=60)
    return totals(out), out


def retry(fn, *a):
    """Once more when a run left no profile (a server under valgrind
    that did not stop on SIGTERM in time was killed)."""
    try:
        return fn(*a)
    except RuntimeError as e:
        C.log("  retrying after: %s" % e)
        return fn(*a)


def annotate(path):
    """{function: Ir} (exclusive) from callgrind_annotate."""
    rc, text = C.run(["callgrind_annotate", "--auto=no", "--threshold=100",
                      path], 120)
    fns = {}
    for line in text.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\(\s*[\d.]+%\)\s+(.*?):(\S+)"
                     r"(?:\s+\[(.*)\])?\s*$", line)
        if not m:
            continue
        src, fn, obj = m.group(2), m.group(3), m.group(4) or ""
        obj = os.path.basename(obj)
        if obj and not obj.startswith("proxy"):
            name = fn + " (" + obj.split(".so")[0] + ")"
        elif src == "???":
            name = fn
        else:
            name = os.path.basename(src) + ":" + fn
        fns[name] = fns.get(name, 0) + int(m.group(1).replace(",", ""))
    return fns


def strace_run(name, op, w, confs):
    """System calls per operation: strace -c attached to the running
    server (the worker, for nginx) over STRACE_N operations."""
    n = STRACE_N if op in ("proxied", "cache", "https") else 200
    srv = C.Server(name, server_cmd(name, w, confs, []),
                   C.PORTS[name]["http"], w, cpu=None)
    srv.logpath = w.path("st.%s.%s.log" % (name, op))
    srv.start()
    st = None
    try:
        drive(op, C.PORTS[name]["http"], C.PORTS[name]["ecdsa"], 0, warm=1)
        pids = srv.pids()
        target = pids[-1] if name == "nginx" and len(pids) > 1 else pids[0]
        if name == "nginx":
            # The worker: the child that is not a cache process.
            for p in pids[1:]:
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    if b"worker" in f.read():
                        target = p
        sout = w.path("st.%s.%s.out" % (name, op))
        st = subprocess.Popen(["strace", "-c", "-f", "-o", sout, "-p",
                               str(target)], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
        time.sleep(1.0)
        drive(op, C.PORTS[name]["http"], C.PORTS[name]["ecdsa"], n, warm=1)
        time.sleep(0.3)
        st.send_signal(signal.SIGINT)
        st.wait(30)
        st = None
        calls = {}
        with open(sout) as f:
            for line in f:
                p = line.split()
                if len(p) >= 5 and p[0][0].isdigit() and p[-1] != "total":
                    # % time, seconds, usecs/call, calls, [errors], name
                    calls[p[-1]] = int(p[3])
        return {k: v / (n + 1) for k, v in calls.items()}
    finally:
        if st is not None and st.poll() is None:
            st.kill()
            st.wait(10)
        srv.stop()


def build_noinline(w, notes):
    """./proxy's sources built again with -fno-inline, from the command
    the Makefile passes in BENCH_BUILD (compiler, flags, sources, libs)."""
    cmd = os.environ.get("BENCH_BUILD")
    if not cmd:
        notes.append("per-function figures are from ./proxy itself "
                     "(BENCH_BUILD not set: run it with make "
                     "bench-callgrind for a build without inlining)")
        return None
    out = w.path("proxy-noinline")
    rc, text = C.run(["sh", "-c", cmd + " -o " + out], 300, cwd=C.ROOT)
    if rc != 0:
        notes.append("the -fno-inline build failed: " + text[-300:])
        return None
    return out


# ------------------------------------------------------------ main

def main():
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    C.ensure_tools({"valgrind": "valgrind", "callgrind_annotate": "valgrind",
                    "strace": "strace", "nginx": "nginx-light",
                    "haproxy": "haproxy", "openssl": "openssl"})
    if not os.access(C.PROXY, os.X_OK):
        sys.exit("bench-callgrind: no ./proxy (make bench-callgrind "
                 "builds it)")
    C.raise_nofile()
    ops = [o for o in OPS if not ONLY_OPS or o in ONLY_OPS]
    start = time.time()
    w = C.Work()
    origin = None
    res = {}            # (server, op) -> instructions per op
    fns = {}            # op -> [(fn, Ir per op)] for proxy
    sysc = {}           # (server, op) -> {syscall: per op}
    notes = []
    try:
        w.certs()
        confs = {"origin": C.origin_conf(w),
                 "proxy": C.proxy_conf(w),
                 "nginx1": C.nginx_conf(w, master=False),
                 "haproxy": C.haproxy_conf(w)}
        origin = C.make_server("origin", w, confs["origin"], cpu=None)
        origin.start()
        noinline = build_noinline(w, notes)
        for name in SERVERS:
            for op in ops:
                what, n1, n2 = OPS[op]
                try:
                    ir1, f1 = retry(callgrind_run, name, op, n1, w, confs)
                    ir2, f2 = retry(callgrind_run, name, op, n2, w, confs)
                except (RuntimeError, OSError) as e:
                    notes.append("%s %s: %s" % (name, op, e))
                    C.log("  %-8s %-10s failed: %s" % (name, op, e))
                    continue
                per = (ir2 - ir1) / (n2 - n1)
                res[(name, op)] = per
                C.log("  %-8s %-10s %12s instructions per operation "
                      "(totals %d and %d for N=%d and %d)" % (
                          name, op, "{:,.0f}".format(per), ir1, ir2, n1, n2))
                if name == "proxy":
                    # Per function: the same runs with the build without
                    # inlining (./proxy inlines most of the loop into
                    # main), when the Makefile gave its command.
                    if noinline:
                        try:
                            j1, g1 = retry(callgrind_run, name, op, n1, w,
                                           confs, noinline)
                            j2, g2 = retry(callgrind_run, name, op, n2, w,
                                           confs, noinline)
                            res[("proxy-noinline", op)] = (j2 - j1) / (n2 - n1)
                            f1, f2 = g1, g2
                        except (RuntimeError, OSError) as e:
                            notes.append("proxy-noinline %s: %s" % (op, e))
                    a1, a2 = annotate(f1), annotate(f2)
                    d = [(k, (a2.get(k, 0) - a1.get(k, 0)) / (n2 - n1))
                         for k in set(a1) | set(a2)]
                    d.sort(key=lambda kv: -kv[1])
                    fns[op] = d[:TOP]
            for op in ops:
                try:
                    sysc[(name, op)] = strace_run(name, op, w, confs)
                except (RuntimeError, OSError, subprocess.SubprocessError) \
                        as e:
                    notes.append("%s %s strace: %s" % (name, op, e))
    except Stop as e:
        C.log("bench-callgrind: stopped (%s)" % e)
        if origin:
            origin.stop()
        w.cleanup()
        sys.exit(1)
    finally:
        if origin:
            origin.stop()
    w.cleanup()
    md = render(res, fns, sysc, ops, notes, time.time() - start)
    C.log(md)
    old = ""
    if os.path.exists(OUT):
        with open(OUT) as f:
            old = f.read()
        i = old.find(MARK)
        if i >= 0:
            old = old[:i]
        old = old.rstrip("\n") + "\n\n"
    with open(OUT, "w") as f:
        f.write(old + md)
    C.log("bench-callgrind: wrote %s" % os.path.relpath(OUT))


def render(res, fns, sysc, ops, notes, elapsed):
    rc, ver = C.run([C.PROXY, "-v"], 10)
    o = [MARK, "## Instructions per operation (callgrind)\n"]
    o.append("Written by `make bench-callgrind` (bench/callgrind.py) on "
             "%s, %s (git %s), %.0f s. Userspace instructions (Ir) per "
             "operation: valgrind --tool=callgrind total for N2 operations "
             "minus the total for N1, divided by N2 - N1, so start-up and "
             "shutdown cancel out; one sequential client, one connection "
             "at a time. Deterministic, unlike the timings above; it does "
             "not count the kernel (see the system calls below).\n" % (
                 time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                 ver.strip().splitlines()[0], C.git_rev(), elapsed))
    o.append("| operation (N1 → N2) | proxy | nginx | HAProxy | "
             "proxy/nginx | proxy/HAProxy |\n|---|--:|--:|--:|--:|--:|")
    for op in ops:
        what, n1, n2 = OPS[op]
        v = {s: res.get((s, op)) for s in ("proxy", "nginx", "haproxy")}
        f = lambda x: "—" if x is None else "{:,.0f}".format(x)  # noqa
        r = lambda a, b: ("—" if a is None or not b else  # noqa
                          "%.2f" % (a / b))
        o.append("| %s (%d → %d) | %s | %s | %s | %s | %s |" % (
            what, n1, n2, f(v["proxy"]), f(v["nginx"]), f(v["haproxy"]),
            r(v["proxy"], v["nginx"]), r(v["proxy"], v["haproxy"])))
    o.append("")
    for op in ops:
        if op not in fns:
            continue
        tot = res.get(("proxy-noinline", op))
        if tot:
            o.append("proxy built with `-fno-inline` (%s Ir per operation "
                     "in that build), top functions per %s (exclusive Ir "
                     "per operation, difference of the two runs):\n" % (
                         "{:,.0f}".format(tot), OPS[op][0]))
        else:
            tot = res.get(("proxy", op)) or 1
            o.append("proxy, top functions per %s (exclusive Ir per "
                     "operation, difference of the two runs):\n"
                     % OPS[op][0])
        o.append("| function (object) | Ir per op | share |\n|---|--:|--:|")
        for fn, ir in fns[op]:
            o.append("| `%s` | %s | %.1f%% |" % (fn, "{:,.0f}".format(ir),
                                                100.0 * ir / tot))
        o.append("")
    if sysc:
        o.append("System calls per operation (`strace -c -f` attached to "
                 "the running server, or its nginx worker, over %d "
                 "operations; 200 for handshakes and 1 MiB responses):\n" % STRACE_N)
        o.append("| operation | server | syscalls/op | breakdown |\n"
                 "|---|---|--:|---|")
        for op in ops:
            for s in ("proxy", "nginx", "haproxy"):
                d = sysc.get((s, op))
                if not d:
                    continue
                br = ", ".join("%s %.2f" % (k, v) for k, v in
                               sorted(d.items(), key=lambda kv: -kv[1])
                               if v >= 0.01)
                o.append("| %s | %s | %.2f | %s |" % (
                    op, s, sum(d.values()), br))
        o.append("")
    if notes:
        o.append("Not measured:\n")
        for n in notes:
            o.append("- " + n)
        o.append("")
    return "\n".join(o)


if __name__ == "__main__":
    main()
