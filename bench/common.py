"""bench/common.py - what bench.py and callgrind.py share: the Debian
packages they need, a scratch directory with the origin's files and the
certificates, the configurations of the four servers, and starting,
watching and stopping them by PID.

Everything listens on 127.0.0.1 only. Ports:

    origin   nginx serving static files            19001
    proxy    ./proxy                               18080, TLS 18443 (ECDSA)
    proxyrsa ./proxy with the RSA certificate      18081, TLS 18444 (RSA)
    nginx    nginx as a reverse proxy              28080, TLS 28443 / 28444
    haproxy  HAProxy                               29080, TLS 29443 / 29444
"""

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time

BENCH = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(BENCH)
PROXY = os.path.join(ROOT, "proxy")
HOST = "127.0.0.1"

PORTS = {
    "origin": {"http": 19001},
    "proxy": {"http": 18080, "ecdsa": 18443},
    "proxyrsa": {"http": 18081, "rsa": 18444},
    "nginx": {"http": 28080, "ecdsa": 28443, "rsa": 28444},
    "haproxy": {"http": 29080, "ecdsa": 29443, "rsa": 29444},
}

SMALL = 100                     # bytes of the small body
BIG = 1 << 20                   # bytes of the big body
CLK_TCK = os.sysconf("SC_CLK_TCK")
# TLS 1.2 with ECDHE and AES-128-GCM, which is what ./proxy (BearSSL,
# TLS 1.2 only) negotiates on a CPU with AES instructions: nginx and
# HAProxy are held to the same protocol and suites, so a handshake costs
# the same kind of work everywhere.
TLS12_CIPHERS = "ECDHE-ECDSA-AES128-GCM-SHA256:ECDHE-RSA-AES128-GCM-SHA256"


def log(*a):
    print(*a, flush=True)


# ------------------------------------------------------------ packages

def ensure_tools(tools):
    """tools: {command: debian package}. Installs the missing ones with
    apt-get when root, else says what is missing and exits."""
    missing = sorted({pkg for cmd, pkg in tools.items()
                      if shutil.which(cmd) is None})
    if not missing:
        return
    log("bench: missing Debian packages: " + " ".join(missing))
    if os.geteuid() != 0 or shutil.which("apt-get") is None:
        sys.exit("bench: install them (as root: apt-get install -y %s)"
                 % " ".join(missing))
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    cmd = ["apt-get", "install", "-y", "--no-install-recommends"] + missing
    if subprocess.call(cmd, env=env, timeout=900) != 0:
        subprocess.call(["apt-get", "update"], env=env, timeout=900)
        if subprocess.call(cmd, env=env, timeout=900) != 0:
            sys.exit("bench: apt-get install %s failed" % " ".join(missing))
    still = [c for c in tools if shutil.which(c) is None]
    if still:
        sys.exit("bench: still missing after install: " + " ".join(still))


def raise_nofile(n=65536):
    import resource
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = n if hard == resource.RLIM_INFINITY else min(n, hard)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))


# ------------------------------------------------------------ scratch

class Work:
    """A scratch directory in /tmp: the origin's files, certificates,
    configs and logs. Removed by cleanup() unless BENCH_KEEP=1."""

    def __init__(self):
        self.dir = tempfile.mkdtemp(prefix="proxy-bench.")
        os.chmod(self.dir, 0o755)
        www = self.path("www")
        os.makedirs(os.path.join(www, "c"))
        small = (b"x" * (SMALL - 1)) + b"\n"
        for name in ("small", "c/small"):
            with open(os.path.join(www, name), "wb") as f:
                f.write(small)
        with open(os.path.join(www, "big"), "wb") as f:
            f.write(os.urandom(BIG))
        for d in ("tmp", "ngxcache"):
            os.makedirs(self.path(d))

    def path(self, *p):
        return os.path.join(self.dir, *p)

    def certs(self):
        """ECDSA P-256 and RSA-2048 self-signed certificates for
        localhost; also cert+key in one file, for HAProxy."""
        for kind, alg in (("ec", ["-newkey", "ec", "-pkeyopt",
                                  "ec_paramgen_curve:P-256"]),
                          ("rsa", ["-newkey", "rsa:2048"])):
            subprocess.run(["openssl", "req", "-x509"] + alg +
                           ["-nodes", "-days", "30", "-subj", "/CN=localhost",
                            "-addext",
                            "subjectAltName=DNS:localhost,IP:127.0.0.1",
                            "-keyout", self.path(kind + ".key"),
                            "-out", self.path(kind + ".pem")],
                           check=True, timeout=60, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
            with open(self.path(kind + "-both.pem"), "w") as out:
                for part in (".pem", ".key"):
                    with open(self.path(kind + part)) as f:
                        out.write(f.read())

    def write(self, name, text):
        with open(self.path(name), "w") as f:
            f.write(text)
        return self.path(name)

    def cleanup(self):
        if os.environ.get("BENCH_KEEP") == "1":
            log("bench: kept " + self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)


# ------------------------------------------------------------ configs

def _ngx_common(w, name):
    t = w.path("tmp", name)
    return f"""worker_processes 1;
daemon off;
master_process on;
user root;
pid {w.path(name + ".pid")};
error_log {w.path(name + "-error.log")} warn;
worker_rlimit_nofile 20000;
events {{ worker_connections 8192; }}
http {{
    access_log off;
    default_type application/octet-stream;
    sendfile on;
    tcp_nopush on;
    tcp_nodelay on;
    keepalive_timeout 65;
    keepalive_requests 1000000;
    client_body_temp_path {t}-body;
    proxy_temp_path {t}-proxy;
    fastcgi_temp_path {t}-fastcgi;
    uwsgi_temp_path {t}-uwsgi;
    scgi_temp_path {t}-scgi;
"""


def origin_conf(w):
    """The origin: nginx, one worker, static files, access_log off;
    /c/ carries Cache-Control: max-age=3600; /nginx_status counts the
    requests it served (to check that cache hits never reach it)."""
    return w.write("origin.conf", _ngx_common(w, "origin") + f"""
    server {{
        listen {HOST}:{PORTS["origin"]["http"]} backlog=4096;
        root {w.path("www")};
        location /c/ {{ add_header Cache-Control "max-age=3600"; }}
        location = /nginx_status {{ stub_status; }}
    }}
}}
""")


def nginx_conf(w, master=True):
    """nginx as a reverse proxy: one worker, keep-alive to the origin,
    proxy_cache on /c/, TLS 1.2 on two ports (ECDSA, RSA). master=False:
    one process (for valgrind)."""
    p = PORTS["nginx"]
    o = PORTS["origin"]["http"]
    locs = f"""
        location / {{
            proxy_pass http://origin;
        }}
        location /c/ {{
            proxy_pass http://origin;
            proxy_cache c;
            add_header X-Cache $upstream_cache_status;
        }}
"""
    tls = ""
    for kind, port, cert in (("ecdsa", p["ecdsa"], "ec"),
                             ("rsa", p["rsa"], "rsa")):
        tls += f"""
    server {{
        listen {HOST}:{port} ssl backlog=4096;
        ssl_certificate {w.path(cert + ".pem")};
        ssl_certificate_key {w.path(cert + ".key")};
{locs}    }}
"""
    common = _ngx_common(w, "nginx")
    if not master:
        common = common.replace("master_process on;", "master_process off;")
    return w.write("nginx.conf", common + f"""
    ssl_protocols TLSv1.2;
    ssl_ciphers {TLS12_CIPHERS};
    ssl_prefer_server_ciphers on;
    ssl_session_cache shared:SSL:1m;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    proxy_set_header Host $host;
    proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
    proxy_set_header X-Forwarded-Proto $scheme;
    proxy_set_header X-Forwarded-Host $host;
    proxy_buffer_size 16k;
    proxy_buffers 8 16k;
    proxy_cache_path {w.path("ngxcache")} levels=1:2 keys_zone=c:1m
        max_size=4m inactive=1h use_temp_path=off;
    upstream origin {{
        server {HOST}:{o};
        keepalive 128;
        keepalive_requests 1000000;
    }}
    server {{
        listen {HOST}:{p["http"]} backlog=4096;
{locs}    }}
{tls}}}
""")


def haproxy_conf(w):
    """HAProxy: one thread, http mode, keep-alive to the server with
    http-reuse always, a cache section for /c/, TLS 1.2 on two ports."""
    p = PORTS["haproxy"]
    o = PORTS["origin"]["http"]
    return w.write("haproxy.cfg", f"""global
    nbthread 1
    maxconn 8000
    ssl-default-bind-options ssl-min-ver TLSv1.2 ssl-max-ver TLSv1.2
    ssl-default-bind-ciphers {TLS12_CIPHERS}
    tune.ssl.cachesize 20000

defaults
    mode http
    maxconn 8000
    option http-keep-alive
    http-reuse always
    option forwardfor
    timeout connect 5s
    timeout client 60s
    timeout server 60s
    timeout http-request 10s
    timeout http-keep-alive 60s

cache c
    total-max-size 4
    max-object-size 65536
    max-age 3600

frontend fe
    bind {HOST}:{p["http"]}
    bind {HOST}:{p["ecdsa"]} ssl crt {w.path("ec-both.pem")}
    bind {HOST}:{p["rsa"]} ssl crt {w.path("rsa-both.pem")}
    http-request set-header X-Forwarded-Proto https if {{ ssl_fc }}
    http-request set-header X-Forwarded-Proto http if !{{ ssl_fc }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)]
    use_backend cached if {{ path_beg /c/ }}
    default_backend origin

backend origin
    server o {HOST}:{o}

backend cached
    http-request cache-use c
    http-response cache-store c
    server o {HOST}:{o}
""")


def proxy_conf(w, name="proxy", cert="ec", tls=True, cache=True):
    """./proxy: the config keys of README / proxy.ini."""
    p = PORTS[name]
    o = PORTS["origin"]["http"]
    t = ""
    if tls:
        port = p.get("ecdsa") or p.get("rsa")
        t = f"""
[tls]
listen = {HOST}:{port}
cert = {w.path(cert + ".pem")}
key = {w.path(cert + ".key")}
"""
    c = "\n[cache]\nsize = 4M\nmax_object = 64K\n" if cache else ""
    return w.write(name + ".ini", f"""[proxy]
listen = {HOST}:{p["http"]}
log = stderr
max_connections = 4096
buffers = 256
buffer_size = 16K
{t}{c}
[backend origin]
server = {HOST}:{o}

[route cached]
path = /c/
backend = origin
cache = {"yes" if cache else "no"}

[route default]
backend = origin
""")


# ------------------------------------------------------------ processes

def children(pid):
    """Every descendant of pid, from /proc/PID/task/TID/children."""
    out = []
    try:
        tids = os.listdir("/proc/%d/task" % pid)
    except OSError:
        return out
    for tid in tids:
        try:
            with open("/proc/%d/task/%s/children" % (pid, tid)) as f:
                kids = [int(x) for x in f.read().split()]
        except OSError:
            continue
        for k in kids:
            out.append(k)
            out.extend(children(k))
    return out


def cpu_ticks(pid):
    """(utime, stime) of pid, in clock ticks ((0, 0) when it is gone)."""
    try:
        with open("/proc/%d/stat" % pid) as f:
            s = f.read()
    except OSError:
        return 0, 0
    fields = s[s.rindex(")") + 2:].split()
    return int(fields[11]), int(fields[12])


def pss_kb(pid):
    try:
        with open("/proc/%d/smaps_rollup" % pid) as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def vmrss_kb(pid):
    try:
        with open("/proc/%d/status" % pid) as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def wait_port(port, proc, timeout=15.0):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            return False
        try:
            socket.create_connection((HOST, port), timeout=0.5).close()
            return True
        except OSError:
            time.sleep(0.05)
    return False


class Server:
    """One server process (and, for nginx, its workers), started pinned
    to CPU `cpu` with taskset, stopped by PID."""

    def __init__(self, name, cmd, port, w, cpu="0"):
        self.name, self.cmd, self.port, self.w = name, cmd, port, w
        self.cpuset = cpu
        self.proc = None
        self.logpath = w.path(name + ".log")
        self.seen = set()

    def start(self, timeout=15.0):
        cmd = (["taskset", "-c", self.cpuset] if self.cpuset else []) + self.cmd
        self.logf = open(self.logpath, "ab")
        self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                     stdout=self.logf, stderr=self.logf,
                                     cwd=self.w.dir)
        if not wait_port(self.port, self.proc, timeout):
            self.stop()
            sys.exit("bench: %s did not start; its log:\n%s"
                     % (self.name, self.log_text()[-2000:]))
        time.sleep(0.2)         # nginx: let the worker come up
        self.pids()

    def pids(self):
        if self.proc is None or self.proc.poll() is not None:
            return []
        p = [self.proc.pid] + children(self.proc.pid)
        self.seen.update(p)
        return p

    def cpu(self):
        """(user, sys) CPU ticks of the whole process tree (master and
        workers)."""
        t = [cpu_ticks(p) for p in self.pids()]
        return sum(u for u, _ in t), sum(s for _, s in t)

    def rss_kb(self):
        return sum(vmrss_kb(p) for p in self.pids())

    def pss_kb(self):
        return sum(pss_kb(p) for p in self.pids())

    def rss_detail(self):
        return [(p, vmrss_kb(p)) for p in self.pids()]

    def log_text(self):
        try:
            with open(self.logpath, errors="replace") as f:
                return f.read()
        except OSError:
            return ""

    def stop(self, timeout=10.0):
        if self.proc is None:
            return
        self.pids()
        # SIGTERM once a second until it exits: nginx under valgrind
        # (master_process off) sometimes misses the first one.
        end = time.monotonic() + timeout
        while self.proc.poll() is None and time.monotonic() < end:
            try:
                self.proc.send_signal(signal.SIGTERM)
                self.proc.wait(1.0)
            except subprocess.TimeoutExpired:
                pass
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        # Workers the master left behind (it should not): by PID, and
        # only a process that still is one of ours (orphaned, same
        # program), never a PID the kernel has since reused.
        prog = os.path.basename(self.cmd[0])
        for p in self.seen - {self.proc.pid}:
            try:
                with open("/proc/%d/stat" % p) as f:
                    st = f.read()
                with open("/proc/%d/cmdline" % p, "rb") as f:
                    argv0 = f.read().split(b"\0")[0].decode(errors="replace")
            except OSError:
                continue
            ppid = st[st.rindex(")") + 2:].split()[1]
            if ppid in ("1", str(self.proc.pid)) and prog in argv0:
                try:
                    os.kill(p, signal.SIGKILL)
                except OSError:
                    pass
        self.proc = None
        self.logf.close()


def make_server(name, w, conf, cpu="0"):
    if name == "proxy" or name == "proxyrsa":
        cmd = [PROXY, "-f", "-c", conf]
    elif name in ("origin", "nginx"):
        cmd = ["nginx", "-p", w.dir, "-e", w.path(name + "-error.log"),
               "-c", conf]
    elif name == "haproxy":
        cmd = ["haproxy", "-db", "-f", conf]
    else:
        raise ValueError(name)
    return Server(name, cmd, PORTS[name]["http"], w, cpu)


# ------------------------------------------------------------ HTTP bits

def http_get(port, path, timeout=5.0):
    """One GET on a fresh connection: (status, headers dict, body)."""
    s = socket.create_connection((HOST, port), timeout=timeout)
    try:
        s.sendall(("GET %s HTTP/1.1\r\nHost: %s:%d\r\nConnection: close"
                   "\r\n\r\n" % (path, HOST, port)).encode())
        data = b""
        while True:
            b = s.recv(65536)
            if not b:
                break
            data += b
    finally:
        s.close()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    hdr = {}
    for l in lines[1:]:
        k, _, v = l.partition(":")
        hdr[k.strip().lower()] = v.strip()
    return status, hdr, body


def read_response(s, buf=b""):
    """Read one response with a Content-Length body from socket s.
    Returns (status, leftover bytes)."""
    while b"\r\n\r\n" not in buf:
        b = s.recv(65536)
        if not b:
            raise ConnectionError("closed before the head")
        buf += b
    head, _, rest = buf.partition(b"\r\n\r\n")
    m = re.search(rb"(?im)^content-length:\s*(\d+)", head)
    n = int(m.group(1)) if m else 0
    while len(rest) < n:
        b = s.recv(65536)
        if not b:
            raise ConnectionError("closed in the body")
        rest += b
    return int(head.split(None, 2)[1]), rest[n:]


def origin_counts():
    """(connections accepted, requests served) by the origin so far,
    from its stub_status."""
    _, _, body = http_get(PORTS["origin"]["http"], "/nginx_status")
    m = re.search(rb"\n\s*(\d+)\s+(\d+)\s+(\d+)", body)
    return (int(m.group(1)), int(m.group(3))) if m else (-1, -1)


def run(cmd, timeout, **kw):
    """Run cmd bounded in time; (returncode, stdout+stderr text)."""
    try:
        r = subprocess.run(cmd, stdout=subprocess.PIPE,
                           stderr=subprocess.STDOUT, timeout=timeout, **kw)
        return r.returncode, r.stdout.decode(errors="replace")
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode(errors="replace") if e.stdout else ""
        return -1, out + "\n(timed out after %ss)" % timeout


def git_rev():
    rc, out = run(["git", "--no-optional-locks", "-C", ROOT, "describe", "--always", "--dirty"], 10)
    return out.strip() if rc == 0 else "?"
