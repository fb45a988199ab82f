#!/bin/sh
# test/init.sh - the operations files: contrib/proxy.init driving the
# real ./proxy, lint of the shell scripts and the systemd unit, and the
# layout `make install` produces.
#
# Everything runs unprivileged in a temp dir: the init script gets PROXY,
# CONF and PIDFILE (relative ones, from inside the temp dir, as a user
# would type them), the proxy listens on a free 127.0.0.1 port, and its
# only backend is a closed port (the status page needs none).
#
# Prints `ok NAME` or `FAIL NAME: why` per check, `# ...` notes, and last
# `init: N passed, N failed`; exits 1 on any failure.

cd "$(dirname "$0")/.." || exit 1
root=$(pwd)
MAKE=${MAKE:-make}
PYTHON=${PYTHON:-python3}
pass=0
fail=0

ok() {
	echo "ok $1"
	pass=$((pass + 1))
}

bad() {
	echo "FAIL $1: $2"
	fail=$((fail + 1))
}

# check NAME WHY CMD...: ok when CMD succeeds, else FAIL with WHY.
check() {
	name=$1
	why=$2
	shift 2
	if "$@"; then
		ok "$name"
	else
		bad "$name" "$why"
	fi
}

tmp=$(mktemp -d "${TMPDIR:-/tmp}/proxy-init.XXXXXX") || exit 1

# Stop what this test started, by the PIDs it recorded, never by name.
cleanup() {
	for f in "$tmp"/*.pid; do
		[ -r "$f" ] || continue
		read -r p <"$f" 2>/dev/null || continue
		case $p in
		'' | *[!0-9]*) continue ;;
		esac
		[ "$(readlink "/proc/$p/exe" 2>/dev/null)" = "$root/proxy" ] &&
		    kill "$p" 2>/dev/null
	done
	[ -n "$sleeper" ] && kill "$sleeper" 2>/dev/null
	rm -rf "$tmp"
}
sleeper=
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

free_port() {
	"$PYTHON" -c 'import socket
s = socket.socket()
s.bind(("127.0.0.1", 0))
print(s.getsockname()[1])'
}

# gone PID: no such process, or only its zombie is left.
gone() {
	kill -0 "$1" 2>/dev/null || return 0
	[ "$(awk '/^State:/ { print $2 }' "/proc/$1/status" 2>/dev/null)" = Z ]
}

# http PATH: the status code of GET http://127.0.0.1:$port PATH; the
# body goes to $tmp/body.
http() {
	curl -s -o "$tmp/body" -w '%{http_code}' --max-time 5 \
	    "http://127.0.0.1:$port$1" 2>/dev/null
}

# initd CONF PIDFILE ACTION: run the init script from inside the temp dir
# with relative names; its output goes to $tmp/out, its status to $rc.
# $initsh is the shell that runs it.
initsh='sh'
initd() {
	(cd "$tmp" && PROXY="$root/proxy" CONF=$1 PIDFILE=$2 \
	    $initsh "$root/contrib/proxy.init" "$3") >"$tmp/out" 2>&1
	rc=$?
	sed 's/^/#   /' "$tmp/out"
}

pid_of() {
	p=
	[ -r "$tmp/$1" ] && read -r p <"$tmp/$1"
	echo "$p"
}

# ------------------------------------------------------------------ lint

scripts="contrib/proxy.init contrib/proxy.procd test/qemu-wrap test/keys.sh
test/init.sh"
for f in $scripts; do
	check "sh -n $f" "syntax error" sh -n "$f"
	if command -v busybox >/dev/null; then
		check "busybox sh -n $f" "syntax error" busybox sh -n "$f"
	fi
done
if command -v shellcheck >/dev/null; then
	for f in $scripts; do
		if shellcheck -s sh "$f" >"$tmp/sc" 2>&1; then
			ok "shellcheck $f"
		else
			bad "shellcheck $f" "$(head -n 5 "$tmp/sc" | tr '\n' ' ')"
		fi
	done
else
	echo "# shellcheck is not installed: scripts checked with sh -n only"
fi

# The unit's syntax and the settings the proxy's daemon mode relies on.
unit=contrib/proxy.service
if awk '
	/^[ \t]*([#;].*)?$/ { next }
	/^\[(Unit|Service|Install)\]$/ { sect = $0; seen[$0] = 1; next }
	/^[A-Z][A-Za-z]*=/ && sect != "" { next }
	{ print FILENAME ":" NR ": not a setting: " $0; bad = 1 }
	END { exit bad || !seen["[Unit]"] || !seen["[Service]"] ||
	    !seen["[Install]"] }' "$unit" >"$tmp/unit"; then
	ok "unit syntax"
else
	bad "unit syntax" "$(head -n 3 "$tmp/unit" | tr '\n' ' ')"
fi
# shellcheck disable=SC2016  # $MAINPID is for systemd, not for sh
for want in 'Type=forking' 'PIDFile=/run/proxy.pid' \
    'ExecStartPre=/usr/sbin/proxy -t -c /etc/proxy.ini' \
    'ExecStart=/usr/sbin/proxy -c /etc/proxy.ini' \
    'ExecReload=/bin/kill -HUP $MAINPID' 'Restart=on-failure' \
    'NoNewPrivileges=yes' 'WantedBy=multi-user.target'; do
	check "unit has $want" "missing" grep -qxF "$want" "$unit"
done

# ------------------------------------------------- the init script live

if [ ! -x ./proxy ]; then
	bad "init script" "./proxy is not built (make)"
	echo "init: $pass passed, $fail failed"
	exit 1
fi
port=$(free_port)
closed=$(free_port)
cat >"$tmp/tmp.ini" <<EOF
[proxy]
listen = 127.0.0.1:$port
pidfile = $tmp/tmp.pid
log = $tmp/proxy.log
max_connections = 16
buffers = 8

[backend none]
server = 127.0.0.1:$closed

[route all]
backend = none
EOF

initd tmp.ini tmp.pid configtest
check "configtest" "exit $rc" [ "$rc" -eq 0 ]

initd tmp.ini tmp.pid start
check "start" "exit $rc" [ "$rc" -eq 0 ]
pid=$(pid_of tmp.pid)
check "start: pidfile written" "no pid in $tmp/tmp.pid" [ -n "$pid" ]
pid=${pid:-0}
initd tmp.ini tmp.pid status
check "status: running" "exit $rc" [ "$rc" -eq 0 ]
check "status: says running" "$(cat "$tmp/out")" \
    grep -q "running (pid $pid)" "$tmp/out"
code=$(http /.proxy/status)
check "status page answers" "HTTP $code" [ "$code" = 200 ]
check "status page body" "no uptime line" grep -q uptime "$tmp/body"
code=$(http /)
check "closed backend: 502" "HTTP $code" [ "$code" = 502 ]

initd tmp.ini tmp.pid start
check "start again: no-op" "exit $rc" [ "$rc" -eq 0 ]
check "start again: same pid" "now $(pid_of tmp.pid)" \
    [ "$(pid_of tmp.pid)" = "$pid" ]

initd tmp.ini tmp.pid reload
check "reload" "exit $rc" [ "$rc" -eq 0 ]
sleep 1
check "reload: still running" "pid $pid gone" kill -0 "$pid"
check "reload: same pid" "now $(pid_of tmp.pid)" \
    [ "$(pid_of tmp.pid)" = "$pid" ]
code=$(http /.proxy/status)
check "reload: still answers" "HTTP $code" [ "$code" = 200 ]
check "reload: logged" "no 'reloaded' in the log" \
    grep -q reloaded "$tmp/proxy.log"

# wait_status PATH CODE: up to 3 s for GET PATH to answer CODE.
wait_status() {
	n=0
	while [ "$(http "$1")" != "$2" ] && [ "$n" -lt 30 ]; do
		sleep 0.1 2>/dev/null || sleep 1
		n=$((n + 1))
	done
	[ "$(http "$1")" = "$2" ]
}

# A change takes effect: the daemon re-reads the file by the absolute
# path the script gave it, though it was named relative to the temp dir.
cp "$tmp/tmp.ini" "$tmp/orig.ini"
sed 's#^buffers = 8$#buffers = 8\nstatus = /.proxy/new#' "$tmp/orig.ini" \
    >"$tmp/tmp.ini"
initd tmp.ini tmp.pid reload
check "reload: new status path" "/.proxy/new never answered 200" \
    wait_status /.proxy/new 200
cp "$tmp/orig.ini" "$tmp/tmp.ini"
initd tmp.ini tmp.pid reload
check "reload: old status path back" "/.proxy/status never answered 200" \
    wait_status /.proxy/status 200
check "reload: same pid after two more" "now $(pid_of tmp.pid)" \
    [ "$(pid_of tmp.pid)" = "$pid" ]

initd tmp.ini tmp.pid restart
check "restart" "exit $rc" [ "$rc" -eq 0 ]
new=$(pid_of tmp.pid)
check "restart: new pid" "pid '$new' after $pid" \
    [ -n "$new" ] && [ "$new" != "$pid" ]
check "restart: old one gone" "pid $pid still there" gone "$pid"
code=$(http /.proxy/status)
check "restart: answers" "HTTP $code" [ "$code" = 200 ]
pid=${new:-0}

initd tmp.ini tmp.pid stop
check "stop" "exit $rc" [ "$rc" -eq 0 ]
check "stop: pidfile gone" "$tmp/tmp.pid left" [ ! -e "$tmp/tmp.pid" ]
check "stop: process gone" "pid $pid still running" gone "$pid"
initd tmp.ini tmp.pid status
check "status: not running is 3" "exit $rc" [ "$rc" -eq 3 ]
check "status: says not running" "$(cat "$tmp/out")" \
    grep -q "not running" "$tmp/out"
initd tmp.ini tmp.pid stop
check "stop when stopped" "exit $rc" [ "$rc" -eq 0 ]
initd tmp.ini tmp.pid reload
check "reload when stopped is 7" "exit $rc" [ "$rc" -eq 7 ]

# A pidfile left by a crash, naming a PID now used by another program:
# not the proxy, so not running, and stop must not signal it.
sleep 30 &
sleeper=$!
echo "$sleeper" >"$tmp/tmp.pid"
initd tmp.ini tmp.pid status
check "stale pidfile: status 1" "exit $rc" [ "$rc" -eq 1 ]
initd tmp.ini tmp.pid stop
check "stale pidfile: stop spares the PID" "pid $sleeper was signalled" \
    kill -0 "$sleeper"
kill "$sleeper" 2>/dev/null
wait "$sleeper" 2>/dev/null
sleeper=

# A config that does not load: refused, nothing left running.
sed 's/^max_connections = 16$/max_connections = lots/' "$tmp/tmp.ini" \
    >"$tmp/bad.ini"
initd bad.ini tmp.pid configtest
check "bad config: configtest fails" "exit $rc" [ "$rc" -ne 0 ]
initd bad.ini tmp.pid start
check "bad config: start fails" "exit $rc" [ "$rc" -ne 0 ]
check "bad config: no pidfile" "$tmp/tmp.pid exists" [ ! -e "$tmp/tmp.pid" ]

# Without a pidfile in the config the script could not find the daemon.
grep -v '^pidfile' "$tmp/tmp.ini" >"$tmp/nopid.ini"
initd nopid.ini tmp.pid start
check "no pidfile in config: start refused" "exit $rc" [ "$rc" -eq 1 ]
check "no pidfile in config: says so" "$(cat "$tmp/out")" \
    grep -q "pidfile" "$tmp/out"
code=$(http /.proxy/status)
check "no pidfile in config: nothing started" "HTTP $code" [ "$code" = 000 ]

# Routers run it with BusyBox ash: the same cycle there.
if command -v busybox >/dev/null; then
	initsh="busybox sh"
	initd tmp.ini tmp.pid start
	pid=$(pid_of tmp.pid)
	check "busybox: start" "exit $rc" [ "$rc" -eq 0 ] && [ -n "$pid" ]
	initd tmp.ini tmp.pid status
	check "busybox: status running" "exit $rc" [ "$rc" -eq 0 ]
	code=$(http /.proxy/status)
	check "busybox: answers" "HTTP $code" [ "$code" = 200 ]
	initd tmp.ini tmp.pid reload
	check "busybox: reload" "exit $rc" [ "$rc" -eq 0 ]
	initd tmp.ini tmp.pid stop
	check "busybox: stop" "exit $rc" [ "$rc" -eq 0 ]
	check "busybox: process gone" "pid $pid still running" gone "${pid:-0}"
	initd tmp.ini tmp.pid status
	check "busybox: status not running" "exit $rc" [ "$rc" -eq 3 ]
	initsh='sh'
else
	echo "# busybox is not installed: init script run by sh only"
fi

# The procd script, with procd's shell API replaced by stubs that print
# each call: what it asks procd for, not procd itself.
procd_calls() {
	# shellcheck disable=SC2016  # expanded by the inner shell
	$initsh -c '
	procd_open_instance() { echo open_instance "$@"; }
	procd_set_param() { echo set_param "$@"; }
	procd_close_instance() { echo close_instance "$@"; }
	procd_send_signal() { echo send_signal "$@"; }
	procd_add_reload_trigger() { echo reload_trigger "$@"; }
	procd_add_reload_interface_trigger() { echo interface_trigger "$@"; }
	. ./contrib/proxy.procd
	start_service
	service_triggers
	PROG=$1 CONF=$2
	reload_service || echo "reload_service failed"
	' procd "$root/proxy" "$1" 2>&1
}
procd_calls "$tmp/tmp.ini" >"$tmp/procd.calls"
sed 's/^/#   /' "$tmp/procd.calls"
for want in "open_instance" \
    "set_param command /usr/sbin/proxy -f -c /etc/proxy.ini" \
    "set_param respawn" "set_param file /etc/proxy.ini" \
    "set_param stdout 1" "set_param stderr 1" "close_instance" \
    "reload_trigger proxy" "send_signal proxy * HUP"; do
	check "procd: $want" "not called" grep -qxF "$want" "$tmp/procd.calls"
done
procd_calls "$tmp/bad.ini" >"$tmp/procd.calls"
check "procd: bad config not signalled" "$(grep send_signal "$tmp/procd.calls")" \
    grep -qx "reload_service failed" "$tmp/procd.calls"

# ------------------------------------------------------------ make install

# installed DIR: the files under DIR, with their modes, one a line.
installed() {
	(cd "$1" && find . ! -type d | sort | while read -r f; do
		echo "$(stat -c %a "$f") $f"
	done)
}

inst=$tmp/inst
if "$MAKE" -s install DESTDIR="$inst" PREFIX=/usr >"$tmp/make" 2>&1; then
	ok "make install"
else
	bad "make install" "$(tail -n 3 "$tmp/make" | tr '\n' ' ')"
fi
cat >"$tmp/want" <<EOF
644 ./etc/proxy.ini
644 ./usr/lib/systemd/system/proxy.service
644 ./usr/share/man/man5/proxy.ini.5
644 ./usr/share/man/man8/proxy.8
755 ./etc/init.d/proxy
755 ./usr/sbin/proxy
EOF
sort "$tmp/want" -o "$tmp/want"
installed "$inst" | sort >"$tmp/got"
check "install: files and modes" \
    "$(diff "$tmp/want" "$tmp/got" | grep '^[<>]' | tr '\n' ' ')" \
    cmp -s "$tmp/want" "$tmp/got"
check "install: SysV init script" "differs" \
    cmp -s contrib/proxy.init "$inst/etc/init.d/proxy"
# Only a note: the example is also the demo's config, and names the
# demo's certificate by a path relative to the source tree.
if (cd "$tmp" && "$inst/usr/sbin/proxy" -t -c "$inst/etc/proxy.ini") \
    >"$tmp/t" 2>&1; then
	echo "# the installed proxy.ini loads"
else
	echo "# NOTE: the installed proxy.ini does not load outside the" \
	    "source tree: $(head -n 1 "$tmp/t")"
fi
echo "# edited by the admin" >>"$inst/etc/proxy.ini"
"$MAKE" -s install DESTDIR="$inst" PREFIX=/usr >"$tmp/make" 2>&1
check "install: keeps an existing proxy.ini" "overwritten" \
    grep -q "edited by the admin" "$inst/etc/proxy.ini"

if "$MAKE" -s install DESTDIR="$tmp/procd" PREFIX=/usr INIT=procd \
    >"$tmp/make" 2>&1; then
	ok "make install INIT=procd"
else
	bad "make install INIT=procd" "$(tail -n 3 "$tmp/make" | tr '\n' ' ')"
fi
grep -v systemd "$tmp/want" >"$tmp/want.procd"
installed "$tmp/procd" | sort >"$tmp/got"
check "install INIT=procd: files" \
    "$(diff "$tmp/want.procd" "$tmp/got" | grep '^[<>]' | tr '\n' ' ')" \
    cmp -s "$tmp/want.procd" "$tmp/got"
check "install INIT=procd: procd script" "differs" \
    cmp -s contrib/proxy.procd "$tmp/procd/etc/init.d/proxy"

if "$MAKE" -s install-strip DESTDIR="$tmp/strip" PREFIX=/usr \
    >"$tmp/make" 2>&1; then
	s=$(wc -c <"$tmp/strip/usr/sbin/proxy")
	b=$(wc -c <proxy)
	check "install-strip: smaller binary" "$s bytes, ./proxy $b" \
	    [ "$s" -lt "$b" ]
	echo "# installed binary: $s bytes stripped, ./proxy $b"
else
	bad "make install-strip" "$(tail -n 3 "$tmp/make" | tr '\n' ' ')"
fi

# systemd's own check, on a copy pointing at the installed files (it
# wants the binary to exist and the man pages of Documentation=).
if command -v systemd-analyze >/dev/null; then
	mkdir -p "$tmp/sd"
	sed "s#/usr/sbin/proxy#$inst/usr/sbin/proxy#g
	    s#/etc/proxy.ini#$inst/etc/proxy.ini#g" "$unit" \
	    >"$tmp/sd/proxy.service"
	MANPATH=$inst/usr/share/man SYSTEMD_LOG_LEVEL=warning \
	    systemd-analyze verify "$tmp/sd/proxy.service" >"$tmp/sdout" 2>&1
	rc=$?
	if [ "$rc" -eq 0 ] && [ ! -s "$tmp/sdout" ]; then
		ok "systemd-analyze verify"
	else
		bad "systemd-analyze verify" \
		    "exit $rc: $(head -n 3 "$tmp/sdout" | tr '\n' ' ')"
	fi
else
	echo "# systemd-analyze is not installed: unit checked by syntax only"
fi

echo "init: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
