#!/usr/bin/env python3
"""test/origin.py - the test origin behind the proxy.

A small HTTP/1.1 server on raw sockets and threads (not http.server: the
tests need control over framing, and hostile answers on purpose). It
records every request it receives so a test can check what the proxy
forwarded, and whether it forwarded anything at all.

As a module:

    o = Origin(name="a").start()
    ... o.port, o.requests, o.connections, o.count() ...
    o.stop()

Runnable for the demo (`make run`):

    python3 test/origin.py --port 9001

Endpoints, chosen by path (query parameters in brackets):

    /                 200 "hello from the demo origin\\n"
    /fixed            Content-Length body [text=, size=]
    /chunked          chunked body in several chunks [n=, size=, trailers=1]
    /close            HTTP/1.1 body delimited by closing the connection
    /slow             sleeps before answering [delay=seconds]
    /slowbody         Content-Length body sent in slow pieces
                      [size=, parts=, delay=]
    /large            deterministic pseudo-random body, streamed [size=]
                      (large_chunks()/large_sha256() reproduce it);
                      [cut=N] sends N bytes of it and closes, [eof=1]
                      sends no length and closes after the body
    /echo             the request body back; X-Seen-* response headers
    /status           [code=N]: 204 and 304 without a body
    /early-hints      103 Early Hints, then 200
    /upload           reads the body streaming; "LENGTH SHA256\\n"
    /ws               Upgrade: websocket -> 101, then echoes raw bytes
    /headers          the received head verbatim as the body
    /hop              hop-by-hop and hidden headers in the response
    /bad              hostile responses [kind=, see BAD_KINDS]
"""

import argparse
import functools
import hashlib
import random
import socket
import threading
import time
import urllib.parse

# Bodies kept in the request record up to this size (always for /echo).
KEEP_BODY = 1 << 20
# A head larger than this is refused with 431 by the origin itself.
MAX_HEAD = 1 << 20

# /large: a pseudo-random pattern with an odd period, cycled, so buffer-
# sized pieces that a proxy dropped, repeated or reordered change the hash.
LARGE_PERIOD = (1 << 20) + 7
_large_lock = threading.Lock()
_large_buf = None


def _large_pattern():
    global _large_buf
    with _large_lock:
        if _large_buf is None:
            pat = random.Random(0x5EED).randbytes(LARGE_PERIOD)
            _large_buf = memoryview(pat + pat)
        return _large_buf


def large_chunks(size, piece=1 << 16):
    """Yield the /large body of `size` bytes in pieces (memoryviews)."""
    buf = _large_pattern()
    off = 0
    left = size
    while left > 0:
        n = min(piece, left)
        yield buf[off:off + n]
        off = (off + n) % LARGE_PERIOD
        left -= n


@functools.lru_cache(maxsize=8)
def large_sha256(size):
    """The sha256 hex digest of the /large body of `size` bytes."""
    h = hashlib.sha256()
    for c in large_chunks(size, 1 << 20):
        h.update(c)
    return h.hexdigest()


def chunked_parts(n=5, size=100):
    """The pieces /chunked sends (its decoded body is their join)."""
    return [bytes([0x61 + i % 26]) * size for i in range(n)]


HELLO = b"hello from the demo origin\n"
FIXED = b"fixed body from the origin\n"
CLOSE_BODY = b"close-delimited body line\n" * 40

# /bad?kind=K: raw bytes sent as the whole response, then the connection
# closes. Each is something a strict proxy must not pass on as valid.
BAD_KINDS = {
    # Content-Length together with Transfer-Encoding (smuggling).
    "cl-te": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
             b"Transfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
    # Two differing Content-Length values.
    "two-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n"
              b"Content-Length: 6\r\n\r\nhello!",
    # A chunk size that is not hex.
    "bad-chunk": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
                 b"zz\r\nhello\r\n0\r\n\r\n",
    # A head of 70 KB (70 header lines of 1000 bytes, under 100 headers).
    "big-head": b"HTTP/1.1 200 OK\r\n" + b"".join(
        b"X-Big-%02d: %s\r\n" % (i, b"a" * 986) for i in range(70)) +
        b"Content-Length: 2\r\n\r\nok",
    # Not a status line at all.
    "garbage-status": b"this is not http at all\r\nContent-Length: 2\r\n"
                      b"\r\nok",
    # A status line with a non-numeric code.
    "bad-status-code": b"HTTP/1.1 2x0 OK\r\nContent-Length: 2\r\n\r\nok",
    # A header line ended by a bare LF.
    "bare-lf": b"HTTP/1.1 200 OK\r\nX-A: b\nContent-Length: 2\r\n\r\nok",
    # A malformed Content-Length.
    "bad-cl": b"HTTP/1.1 200 OK\r\nContent-Length: 2x\r\n\r\nok",
    # Transfer-Encoding that does not end in chunked.
    "te-gzip": b"HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\nok",
    # A Content-Length response cut short: 100 of 1000 bytes, then close.
    "close-mid-body": b"HTTP/1.1 200 OK\r\nContent-Length: 1000\r\n\r\n" +
                      b"m" * 100,
}


class Request:
    """What the origin saw of one request."""

    def __init__(self, conn_id, seq, raw_head):
        self.conn_id = conn_id      # which origin connection carried it
        self.seq = seq              # its index on that connection
        self.raw_head = raw_head    # the head bytes as received
        self.method = ""
        self.target = ""
        self.version = ""
        self.headers = []           # [(name, value)] as received
        self.path = ""
        self.query = {}
        self.body_len = 0
        self.body_sha256 = hashlib.sha256(b"").hexdigest()
        self.body = b""             # kept when small, else None
        self.chunked = False
        self.trailers = []
        self.complete = False       # head and whole body received
        self.error = None           # why it was not
        self.time = time.monotonic()

    def header(self, name):
        """The first value of header `name` (case-insensitive) or None."""
        v = self.all(name)
        return v[0] if v else None

    def all(self, name):
        n = name.lower()
        return [v for k, v in self.headers if k.lower() == n]

    def __repr__(self):
        return "<Request conn=%d %s %s complete=%s len=%d>" % (
            self.conn_id, self.method, self.target, self.complete,
            self.body_len)


class _Closed(Exception):
    pass


class _Reader:
    """Buffered reads from a socket."""

    def __init__(self, sock, origin):
        self.sock = sock
        self.origin = origin
        self.buf = bytearray()

    def _fill(self, n=1 << 16):
        data = self.sock.recv(n)
        if not data:
            raise _Closed()
        self.origin._add_bytes(len(data))
        self.buf += data

    def read_head(self):
        """The next head up to its blank line, None on a clean EOF."""
        start = 0
        while True:
            i = self.buf.find(b"\r\n\r\n", start)
            if i >= 0:
                head = bytes(self.buf[:i + 4])
                del self.buf[:i + 4]
                return head
            if len(self.buf) > MAX_HEAD:
                raise ValueError("head too large")
            start = max(0, len(self.buf) - 3)
            try:
                self._fill()
            except _Closed:
                if self.buf:
                    raise
                return None

    def read_line(self, limit=8192):
        while True:
            i = self.buf.find(b"\n")
            if i >= 0:
                line = bytes(self.buf[:i + 1])
                del self.buf[:i + 1]
                return line
            if len(self.buf) > limit:
                raise ValueError("line too long")
            self._fill()

    def read_exact(self, n, sink):
        """Pass exactly n bytes to sink(bytes-like), streaming."""
        if self.buf:
            k = min(n, len(self.buf))
            sink(bytes(self.buf[:k]))
            del self.buf[:k]
            n -= k
        while n > 0:
            data = self.sock.recv(min(n, 1 << 18))
            if not data:
                raise _Closed()
            self.origin._add_bytes(len(data))
            sink(data)
            n -= len(data)


def _parse_head(req):
    lines = req.raw_head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ")
    if len(parts) != 3:
        raise ValueError("bad request line %r" % lines[0][:100])
    req.method = parts[0].decode("latin-1")
    req.target = parts[1].decode("latin-1")
    req.version = parts[2].decode("latin-1")
    for ln in lines[1:]:
        k, sep, v = ln.partition(b":")
        if not sep:
            raise ValueError("bad header line %r" % ln[:100])
        req.headers.append((k.decode("latin-1"),
                            v.strip(b" \t").decode("latin-1")))
    u = urllib.parse.urlsplit(req.target)
    req.path = u.path
    req.query = dict(urllib.parse.parse_qsl(u.query))


def _tokens(v):
    return [t.strip().lower() for t in (v or "").split(",") if t.strip()]


class Origin:
    """A threaded test origin on 127.0.0.1; see the module docstring."""

    def __init__(self, host="127.0.0.1", port=0, name="origin", mss=None):
        self.host = host
        self.name = name
        self.lock = threading.Lock()
        self.requests = []          # Request records, in arrival order
        self.connections = 0        # connections accepted so far
        self.received_bytes = 0     # bytes read from all connections
        self._socks = set()
        self._stop = False
        self._ls = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if mss is not None:
            # Small segments: what a backend behind a real network sends.
            self._ls.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, mss)
        self._ls.bind((host, port))
        self._ls.listen(256)
        self._ls.settimeout(0.2)
        self.port = self._ls.getsockname()[1]
        self._thread = None

    # -- the test's view

    def count(self):
        with self.lock:
            return len(self.requests)

    def snapshot(self):
        with self.lock:
            return list(self.requests)

    def wait_requests(self, n, timeout=5.0, complete=False):
        """Wait until at least n requests (complete ones) arrived."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            with self.lock:
                got = [r for r in self.requests if r.complete or not complete]
                if len(got) >= n:
                    return got
            time.sleep(0.01)
        return self.snapshot()

    # -- lifecycle

    def start(self):
        self._thread = threading.Thread(target=self._accept_loop,
                                        daemon=True, name="origin-accept")
        self._thread.start()
        return self

    def stop(self):
        self._stop = True
        if self._thread:
            self._thread.join(2)
        try:
            self._ls.close()
        except OSError:
            pass
        with self.lock:
            socks = list(self._socks)
        for s in socks:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def serve_forever(self):
        self.start()
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass
        self.stop()

    def _add_bytes(self, n):
        with self.lock:
            self.received_bytes += n

    def _accept_loop(self):
        while not self._stop:
            try:
                s, _ = self._ls.accept()
            except socket.timeout:
                continue
            except OSError:
                break
            with self.lock:
                self.connections += 1
                cid = self.connections
                self._socks.add(s)
            threading.Thread(target=self._conn, args=(s, cid), daemon=True,
                             name="origin-conn-%d" % cid).start()

    def _conn(self, s, cid):
        s.settimeout(60)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            self._serve(s, cid)
        except (OSError, _Closed, ValueError):
            pass
        finally:
            with self.lock:
                self._socks.discard(s)
            try:
                s.close()
            except OSError:
                pass

    # -- one connection

    def _serve(self, s, cid):
        rd = _Reader(s, self)
        seq = 0
        while True:
            try:
                head = rd.read_head()
            except ValueError:
                s.sendall(b"HTTP/1.1 431 Too Large\r\nContent-Length: 0\r\n"
                          b"Connection: close\r\n\r\n")
                return
            if head is None:
                return
            req = Request(cid, seq, head)
            seq += 1
            with self.lock:
                self.requests.append(req)
            try:
                _parse_head(req)
            except ValueError as e:
                req.error = str(e)
                s.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n"
                          b"Connection: close\r\n\r\n")
                return
            if not self._read_body(s, rd, req):
                return
            req.complete = True
            if not self._respond(s, rd, req):
                return

    def _read_body(self, s, rd, req):
        te = req.all("Transfer-Encoding")
        cl = req.all("Content-Length")
        keep = req.path == "/echo"
        h = hashlib.sha256()
        kept = bytearray()
        state = {"n": 0}

        def sink(data):
            h.update(data)
            state["n"] += len(data)
            if keep or state["n"] <= KEEP_BODY:
                kept.extend(data)

        chunked = bool(te) and _tokens(",".join(te))[-1:] == ["chunked"]
        if te and not chunked:
            req.error = "unsupported transfer-encoding"
            return False
        if cl and not chunked:
            try:
                n = int(cl[0])
            except ValueError:
                req.error = "bad content-length"
                return False
        else:
            n = 0
        if (chunked or n > 0) and "100-continue" in _tokens(
                req.header("Expect")):
            s.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
        try:
            if chunked:
                req.chunked = True
                while True:
                    line = rd.read_line()
                    if not line.endswith(b"\r\n"):
                        raise ValueError("chunk line without CRLF")
                    size = line[:-2].split(b";")[0].strip()
                    if not size or any(c not in b"0123456789abcdefABCDEF"
                                       for c in size):
                        raise ValueError("bad chunk size %r" % size[:20])
                    k = int(size, 16)
                    if k == 0:
                        break
                    rd.read_exact(k, sink)
                    if rd.read_line() != b"\r\n":
                        raise ValueError("chunk data not followed by CRLF")
                while True:
                    line = rd.read_line()
                    if line == b"\r\n":
                        break
                    req.trailers.append(line.decode("latin-1").strip())
            else:
                rd.read_exact(n, sink)
        except (ValueError, _Closed) as e:
            req.error = "body: %s" % (e or "closed early")
            req.body_len = state["n"]
            return False
        req.body_len = state["n"]
        req.body_sha256 = h.hexdigest()
        req.body = bytes(kept) if len(kept) == state["n"] else None
        return True

    # -- answers

    def _keep(self, req):
        conn = _tokens(",".join(req.all("Connection")))
        if req.version == "HTTP/1.1":
            return "close" not in conn
        return "keep-alive" in conn

    def _send(self, s, req, status, body=b"", headers=(), ctype="text/plain",
              length=True):
        keep = self._keep(req)
        hs = ["HTTP/1.1 %s" % status,
              "X-Origin: %s" % self.name,
              "X-Conn-Id: %d" % req.conn_id]
        if ctype:
            hs.append("Content-Type: %s" % ctype)
        if length:
            hs.append("Content-Length: %d" % len(body))
        hs.extend(headers)
        if not keep:
            hs.append("Connection: close")
        elif req.version != "HTTP/1.1":
            hs.append("Connection: keep-alive")
        out = ("\r\n".join(hs) + "\r\n\r\n").encode("latin-1")
        if req.method != "HEAD":
            out += body
        s.sendall(out)
        return keep

    def _respond(self, s, rd, req):
        p = req.path
        q = req.query
        if p == "/":
            return self._send(s, req, "200 OK", HELLO)
        if p == "/fixed":
            if "size" in q:
                body = b"f" * int(q["size"])
            else:
                body = q.get("text", "").encode() or FIXED
            return self._send(s, req, "200 OK", body)
        if p == "/chunked":
            return self._chunked(s, req)
        if p == "/close":
            s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                      b"X-Origin: " + self.name.encode() + b"\r\n\r\n")
            if req.method != "HEAD":
                for i in range(0, len(CLOSE_BODY), 260):
                    s.sendall(CLOSE_BODY[i:i + 260])
                    time.sleep(0.005)
            return False
        if p == "/slow":
            time.sleep(float(q.get("delay", "1")))
            return self._send(s, req, "200 OK", b"slow\n")
        if p == "/slowbody":
            return self._slowbody(s, req)
        if p == "/large":
            return self._large(s, req)
        if p == "/echo":
            return self._send(s, req, "200 OK", req.body or b"", headers=[
                "X-Seen-Host: %s" % (req.header("Host") or ""),
                "X-Seen-Method: %s" % req.method,
                "X-Seen-Target: %s" % req.target,
                "X-Body-Length: %d" % req.body_len,
                "X-Body-Sha256: %s" % req.body_sha256],
                ctype="application/octet-stream")
        if p == "/status":
            code = int(q.get("code", "200"))
            if code in (204, 304):
                hs = ["HTTP/1.1 %d Status" % code,
                      "X-Origin: %s" % self.name]
                if code == 304:
                    hs.append('ETag: "v1"')
                s.sendall(("\r\n".join(hs) + "\r\n\r\n").encode())
                return self._keep(req)
            return self._send(s, req, "%d Status" % code,
                              b"status %d\n" % code)
        if p == "/early-hints":
            s.sendall(b"HTTP/1.1 103 Early Hints\r\n"
                      b"Link: </style.css>; rel=preload; as=style\r\n\r\n")
            time.sleep(0.05)
            return self._send(s, req, "200 OK", b"after early hints\n")
        if p == "/upload":
            return self._send(s, req, "200 OK", b"%d %s\n" % (
                req.body_len, req.body_sha256.encode()))
        if p == "/ws":
            return self._ws(s, rd, req)
        if p == "/headers":
            return self._send(s, req, "200 OK", req.raw_head)
        if p == "/hop":
            return self._send(s, req, "200 OK", b"hop\n", headers=[
                "Connection: foo",
                "Foo: bar",
                "Keep-Alive: timeout=5, max=100",
                "Server: origin-server/1.0",
                "X-Powered-By: origin-php/7",
                "X-Kept: yes"])
        if p == "/bad":
            kind = q.get("kind", "")
            if kind in BAD_KINDS:
                s.sendall(BAD_KINDS[kind])
                time.sleep(0.05)
                return False
            return self._send(s, req, "400 Bad Kind", b"unknown kind\n")
        return self._send(s, req, "404 Not Found", b"no such path\n")

    def _chunked(self, s, req):
        q = req.query
        parts = chunked_parts(int(q.get("n", "5")), int(q.get("size", "100")))
        hs = ["HTTP/1.1 200 OK", "X-Origin: %s" % self.name,
              "Content-Type: text/plain", "Transfer-Encoding: chunked"]
        if q.get("trailers"):
            hs.append("Trailer: X-Trailer")
        if not self._keep(req):
            hs.append("Connection: close")
        s.sendall(("\r\n".join(hs) + "\r\n\r\n").encode())
        if req.method == "HEAD":
            return self._keep(req)
        for i, c in enumerate(parts):
            ext = b";ext=1" if i == 1 else b""
            s.sendall(b"%x%s\r\n%s\r\n" % (len(c), ext, c))
            time.sleep(0.01)
        if q.get("trailers"):
            s.sendall(b"0\r\nX-Trailer: done\r\n\r\n")
        else:
            s.sendall(b"0\r\n\r\n")
        return self._keep(req)

    def _slowbody(self, s, req):
        q = req.query
        size = int(q.get("size", "1000"))
        parts = max(1, int(q.get("parts", "5")))
        delay = float(q.get("delay", "0.2"))
        s.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\n"
                  b"Content-Length: %d\r\n\r\n" % size)
        step = -(-size // parts)
        for i in range(0, size, step):
            time.sleep(delay)
            s.sendall(b"s" * min(step, size - i))
        return self._keep(req)

    def _large(self, s, req):
        size = int(req.query.get("size", str(1 << 20)))
        # cut=N: promise size bytes, send N, close. eof=1: no length,
        # the body ends when the connection closes.
        cut = int(req.query.get("cut", str(size)))
        eof = req.query.get("eof") == "1"
        hdr = ("HTTP/1.1 200 OK\r\nX-Origin: %s\r\n"
               "Content-Type: application/octet-stream\r\n" % self.name)
        if not eof:
            hdr += "Content-Length: %d\r\n" % size
        keep = self._keep(req) and not eof and cut >= size
        if not keep:
            hdr += "Connection: close\r\n"
        s.sendall((hdr + "\r\n").encode())
        if req.method != "HEAD":
            sent = 0
            for c in large_chunks(size, 1 << 18):
                c = c[:max(0, cut - sent)]
                if not c:
                    break
                s.sendall(c)
                sent += len(c)
        return keep

    def _ws(self, s, rd, req):
        up = (req.header("Upgrade") or "").lower()
        if up != "websocket" or "upgrade" not in _tokens(
                ",".join(req.all("Connection"))):
            return self._send(s, req, "426 Upgrade Required",
                              b"upgrade to websocket\n")
        s.sendall(b"HTTP/1.1 101 Switching Protocols\r\n"
                  b"Upgrade: websocket\r\nConnection: Upgrade\r\n"
                  b"Sec-WebSocket-Accept: dGVzdA==\r\n\r\n")
        if rd.buf:
            s.sendall(bytes(rd.buf))
            rd.buf.clear()
        while True:
            data = s.recv(1 << 16)
            if not data:
                break
            self._add_bytes(len(data))
            s.sendall(data)
        return False


def main():
    ap = argparse.ArgumentParser(description="test origin for proxy")
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, default=9001)
    ap.add_argument("--name", default="origin")
    a = ap.parse_args()
    o = Origin(a.host, a.port, a.name)
    print("origin listening on %s:%d" % (a.host, o.port), flush=True)
    o.serve_forever()


if __name__ == "__main__":
    main()
