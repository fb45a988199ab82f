#!/usr/bin/env python3
"""bench/footprint.py - the size and memory half of `make bench`: the
stripped binary of each build a device would get, and the RSS of a fresh
./proxy with the default configuration, for the dynamic (glibc) build
and the fully static musl one.

Builds happen in a scratch copy of the tracked sources, so the tree's
./proxy is left alone:

    native       make                            (glibc, libc shared)
    static musl  make STATIC=1 CC=musl-gcc       (what goes on a device)
    armhf        make CROSS_COMPILE=arm-linux-gnueabihf-
    mipsel       make CROSS_COMPILE=mipsel-linux-gnu-

musl-tools is installed when missing (as root); the cross builds run when
their toolchains are there (`make cross-deps ARCH=armhf` installs one)
and are reported as skipped otherwise.

"Default configuration" is one listener, one backend with one server and
one route: every size (max_connections 1024, buffers 128 x 16K, no
cache, no TLS) at its default. The proxy runs in the foreground, takes
three requests, then VmRSS, RssAnon, RssFile and Pss are read from
/proc (Pss shares out the pages of libc.so among the processes mapping
it; VmRSS counts them all).

The section goes into bench/RESULTS.md after the `make bench` table,
replacing an earlier one. BENCH_OUT=FILE writes elsewhere.
"""

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import common as C  # noqa: E402

OUT = os.environ.get("BENCH_OUT", os.path.join(C.BENCH, "RESULTS.md"))
MARK = "<!-- bench-footprint -->"
CALLGRIND_MARK = "<!-- bench-callgrind -->"
PORT, ORIGIN_PORT = 18180, 18181

BUILDS = [
    # name, make arguments, strip, runs here
    ("native (glibc, dynamic libc)", [], "strip", True),
    ("static musl", ["STATIC=1", "CC=musl-gcc"], "strip", True),
    ("armhf (glibc, dynamic libc)",
     ["CROSS_COMPILE=arm-linux-gnueabihf-"], "arm-linux-gnueabihf-strip",
     False),
    ("mipsel (glibc, dynamic libc)",
     ["CROSS_COMPILE=mipsel-linux-gnu-"], "mipsel-linux-gnu-strip", False),
]


def tracked_copy(dst):
    out = subprocess.run(["git", "ls-files", "-z"], cwd=C.ROOT, check=True,
                         capture_output=True).stdout.decode()
    for rel in filter(None, out.split("\0")):
        src = os.path.join(C.ROOT, rel)
        if not os.path.isfile(src):
            continue
        os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
        shutil.copy2(src, os.path.join(dst, rel))


def build(src, args, strip):
    """(stripped size, path of the unstripped binary) or (None, why)."""
    subprocess.run(["make", "-s", "clean"], cwd=src, capture_output=True)
    r = subprocess.run(["make", "-s", "proxy"] + args, cwd=src,
                       capture_output=True, timeout=600)
    if r.returncode != 0:
        return None, (r.stderr or r.stdout).decode(errors="replace")[-300:]
    path = os.path.join(src, "proxy")
    keep = path + "." + str(abs(hash(tuple(args))))
    shutil.copy2(path, keep)
    stripped = keep + ".stripped"
    if subprocess.run([strip, "-o", stripped, keep],
                      capture_output=True).returncode != 0:
        return None, "%s failed" % strip
    return os.path.getsize(stripped), keep


def status_kb(pid):
    """VmRSS and its anonymous and file-backed parts, and Pss."""
    d = {"Pss": C.pss_kb(pid)}
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            k, _, v = line.partition(":")
            if k in ("VmRSS", "RssAnon", "RssFile"):
                d[k] = int(v.split()[0])
    return d


def origin():
    """A tiny origin: one connection per request (it says close), 200
    with a 2-byte body."""
    ls = socket.socket()
    ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    ls.bind((C.HOST, ORIGIN_PORT))
    ls.listen(16)
    ls.settimeout(5)
    return ls


def serve_one(ls):
    c, _ = ls.accept()
    c.settimeout(5)
    buf = b""
    while b"\r\n\r\n" not in buf:
        d = c.recv(4096)
        if not d:
            break
        buf += d
    c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n"
              b"Connection: close\r\n\r\nok")
    return c


def measure(binary, work):
    conf = work.write("footprint.ini", (
        "[proxy]\nlisten = %s:%d\nlog = stderr\n"
        "[backend web]\nserver = %s:%d\n[route all]\nbackend = web\n") % (
            C.HOST, PORT, C.HOST, ORIGIN_PORT))
    ls = origin()
    err = open(work.path("footprint.log"), "w+")
    p = subprocess.Popen([binary, "-f", "-c", conf], stderr=err)
    held = []
    try:
        if not C.wait_port(PORT, p, 5):
            raise RuntimeError("%s did not start" % binary)
        for _ in range(3):
            s = socket.create_connection((C.HOST, PORT), timeout=5)
            s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            held.append(serve_one(ls))
            got = b""
            while not got.endswith(b"ok"):
                d = s.recv(4096)
                if not d:
                    break
                got += d
            s.close()
        time.sleep(0.3)
        kb = status_kb(p.pid)
    finally:
        p.send_signal(15)
        try:
            p.wait(10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
        for c in held:
            c.close()
        ls.close()
    err.seek(0)
    reserved = [l.split("info: ", 1)[1].strip() for l in err.read().splitlines()
                if "reserved" in l and "info: " in l]
    err.close()
    return kb, reserved[0] if reserved else "?"


def main():
    C.ensure_tools({"musl-gcc": "musl-tools", "strip": "binutils",
                    "git": "git"})
    start = time.time()
    work = C.Work()
    src = tempfile.mkdtemp(prefix="proxy-footprint.")
    rows, mem = [], []
    try:
        tracked_copy(src)
        for name, args, strip, runs in BUILDS:
            if shutil.which(strip) is None:
                rows.append((name, None, "skipped: no %s (make cross-deps)"
                             % strip))
                continue
            size, path = build(src, args, strip)
            if size is None:
                rows.append((name, None, "build failed: " + path))
                continue
            rows.append((name, size, "make " + " ".join(args)
                         if args else "make"))
            C.log("footprint: %s %d bytes" % (name, size))
            if runs:
                kb, reserved = measure(path, work)
                mem.append((name, kb, reserved))
                C.log("footprint: %s %r" % (name, kb))
    finally:
        shutil.rmtree(src, ignore_errors=True)
        work.cleanup()
    md = render(rows, mem, time.time() - start)
    C.log(md)
    write(md)


def render(rows, mem, elapsed):
    o = [MARK, "## Footprint (bench/footprint.py)\n",
         "Written by `make bench` on %s, %.0f s. Stripped sizes of each "
         "build of the same sources (BearSSL and inih always linked "
         "statically):\n" % (time.strftime("%Y-%m-%d %H:%M UTC",
                                           time.gmtime()), elapsed),
         "| build | stripped bytes | how |", "|---|--:|---|"]
    for name, size, how in rows:
        o.append("| %s | %s | %s |" % (
            name, "{:,}".format(size) if size else "—", how))
    o += ["", "Memory of a fresh ./proxy with the default configuration "
          "(sizes at their defaults: 1,024 connections, 128 buffers of "
          "16 KB, no cache, no TLS), idle after three requests. VmRSS "
          "counts every page of the shared libc mapped; Pss shares them "
          "out:\n",
          "| build | VmRSS kB | RssAnon kB | RssFile kB | Pss kB | what it "
          "reserved (its log) |", "|---|--:|--:|--:|--:|---|"]
    for name, kb, reserved in mem:
        o.append("| %s | %s | %s | %s | %s | %s |" % (
            name, kb.get("VmRSS", "?"), kb.get("RssAnon", "?"),
            kb.get("RssFile", "?"), kb.get("Pss", "?"), reserved))
    return "\n".join(o) + "\n"


def write(md):
    old = ""
    if os.path.exists(OUT):
        with open(OUT) as f:
            old = f.read()
    tail = ""
    i = old.find(CALLGRIND_MARK)
    if i >= 0:
        tail = old[i:]
        old = old[:i]
    i = old.find(MARK)
    if i >= 0:
        old = old[:i]
    with open(OUT, "w") as f:
        f.write(old.rstrip("\n") + "\n\n" + md + ("\n" + tail if tail else ""))
    C.log("footprint: wrote %s" % os.path.relpath(OUT))


if __name__ == "__main__":
    main()
