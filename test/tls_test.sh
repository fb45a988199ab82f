#!/bin/bash
# test/tls_test.sh - the TLS layer (tls.c) on its own, through test/tlsecho,
# against real clients and servers: curl, openssl s_client/s_server and
# Python's ssl module.
#
# Run from anywhere after building the sanitizer harness:
#	make test/tlsecho && bash test/tls_test.sh
# Prints failures as they happen and "tls: N passed, N failed" last; exits
# non-zero on any failure. TLSECHO=path overrides the binary.

set -u
cd "$(dirname "$0")/.." || exit 1
ECHO=${TLSECHO:-$PWD/test/tlsecho}
PYTHON=${PYTHON:-python3}
T=$(mktemp -d "${TMPDIR:-/tmp}/tls_test.XXXXXX") || exit 1
PIDS=()
pass=0
fail=0

cleanup() {
	local p
	for p in "${PIDS[@]}"; do
		kill "$p" 2>/dev/null
	done
	wait 2>/dev/null
	rm -rf "$T"
}
trap cleanup EXIT
trap 'exit 1' INT TERM

ok() { pass=$((pass + 1)); }
bad() {
	fail=$((fail + 1))
	echo "FAIL $1"
	[ $# -gt 1 ] && printf '  %s\n' "${@:2}"
	return 0
}
# expect NAME CMD...: the command must succeed
expect() {
	local name=$1
	shift
	if "$@"; then ok; else bad "$name"; fi
}
# has NAME TEXT PATTERN: TEXT must contain the fixed string PATTERN
has() {
	if [[ $2 == *"$3"* ]]; then ok; else bad "$1" "want: $3" "got: ${2:0:400}"; fi
}
hasnt() {
	if [[ $2 != *"$3"* ]]; then ok; else bad "$1" "unwanted: $3"; fi
}
# A sanitizer report anywhere in a log is a failure of its own.
clean_log() {
	if grep -qE 'AddressSanitizer|LeakSanitizer|runtime error' "$2"; then
		bad "$1: sanitizer report" "$(grep -m3 -E 'Sanitizer|runtime error' "$2")"
	else
		ok
	fi
}

free_port() {
	"$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# wait_port PORT: until something listens there (5 s)
wait_port() {
	local i
	for i in $(seq 50); do
		(exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
		sleep 0.1
	done
	return 1
}

[ -x "$ECHO" ] || { echo "no $ECHO: run make test/tlsecho"; echo "tls: 0 passed, 1 failed"; exit 1; }

# ------------------------------------------------------------ certificates
cd "$T" || exit 1
q() { "$@" >/dev/null 2>&1 || { echo "setup failed: $*"; echo "tls: $pass passed, $((fail + 1)) failed"; exit 1; }; }

q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout ca.key -out ca.pem -subj "/CN=Test CA" -days 30
q openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
	-keyout other-ca.key -out other-ca.pem -subj "/CN=Other CA" -days 30

# leaf NAME KEYSPEC SANS [DAYS]: a certificate signed by the test CA
leaf() {
	q openssl req -newkey "$2" -nodes -keyout "$1.key" -out "$1.csr" -subj "/CN=$1.test"
	printf 'subjectAltName=%s\n' "$3" >"$1.ext"
	q openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial \
		-out "$1.pem" -days "${4:-10}" -extfile "$1.ext"
}
# EC leaves by hand: openssl req -newkey ec needs two more words
q openssl ecparam -name prime256v1 -genkey -out ec.key
q openssl req -new -key ec.key -out ec.csr -subj "/CN=ec.test"
printf 'subjectAltName=DNS:ec.test,DNS:*.wild.test,DNS:localhost,DNS:dual.test\n' >ec.ext
q openssl x509 -req -in ec.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out ec.pem -days 10 -extfile ec.ext
q openssl ecparam -name secp384r1 -genkey -noout -out p384.key
q openssl req -new -key p384.key -out p384.csr -subj "/CN=p384.test"
printf 'subjectAltName=DNS:p384.test\n' >p384.ext
q openssl x509 -req -in p384.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out p384.pem -days 10 -extfile p384.ext
leaf rsa rsa:2048 "DNS:rsa.test,DNS:localhost,DNS:dual.test,DNS:crlf.test"
cat rsa.pem ca.pem >rsa-chain.pem
# CRLF files and a traditional "RSA PRIVATE KEY"
sed 's/$/\r/' rsa-chain.pem >crlf.pem
q openssl rsa -in rsa.key -traditional -out rsa-trad.key
sed 's/$/\r/' rsa-trad.key >crlf.key

# ------------------------------------------------------- tls_init refusals
# init_case NAME CERT KEY WANT: tlsecho -t must fail with WANT in the error
init_case() {
	cat >"init-$1.ini" <<-EOF
	[tls]
	listen = 127.0.0.1:1
	cert = $2
	key = $3
	EOF
	out=$("$ECHO" -c "init-$1.ini" -t 2>&1)
	rc=$?
	if [ $rc -eq 1 ] && [[ $out == *"$4"* ]]; then ok; else bad "tls_init refuses $1" "want: $4" "got (rc $rc): $out"; fi
	[[ $out != *Sanitizer* && $out != *"runtime error"* ]] || bad "tls_init $1: sanitizer report"
}
# init_good NAME CERT KEY: tlsecho -t must accept
init_good() {
	cat >"init-$1.ini" <<-EOF
	[tls]
	listen = 127.0.0.1:1
	cert = $2
	key = $3
	EOF
	out=$("$ECHO" -c "init-$1.ini" -t 2>&1)
	if [ $? -eq 0 ] && [[ $out == *"TLS ok"* ]]; then ok; else bad "tls_init loads $1" "$out"; fi
}

q openssl pkey -in ec.key -aes256 -passout pass:secret -out enc8.key
q openssl rsa -in rsa.key -aes256 -passout pass:secret -traditional -out enctrad.key
q openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -keyout exp.key -out exp.csr -subj "/CN=exp.test"
mkdir -p cadb && : >cadb/index.txt && echo 01 >cadb/serial
cat >ca.cnf <<EOF
[ca]
default_ca = d
[d]
database = $T/cadb/index.txt
serial = $T/cadb/serial
new_certs_dir = $T/cadb
default_md = sha256
policy = p
[p]
commonName = supplied
EOF
q openssl ca -batch -config ca.cnf -cert ca.pem -keyfile ca.key -in exp.csr \
	-out expired.pem -startdate 20200101000000Z -enddate 20200102030405Z -notext
q openssl req -x509 -newkey rsa:1024 -nodes -keyout rsa1024.key -out rsa1024.pem -subj /CN=weak -days 3
cat ca.pem ec.pem >ca-first.pem
printf 'not a pem file\n' >junk.pem
: >empty.pem
# a key file with EC PARAMETERS before the key, and no final newline
q openssl ecparam -name prime256v1 -genkey -out ecparam.key
q openssl req -x509 -new -key ecparam.key -out ecparam.pem -subj /CN=ecparam -days 3
printf '%s' "$(cat ecparam.key)" >ecparam-nonl.key
printf '%s' "$(cat ecparam.pem)" >ecparam-nonl.pem

init_case encrypted-pkcs8 "$T/ec.pem" "$T/enc8.key" "$T/enc8.key: the private key is encrypted"
init_case encrypted-trad "$T/rsa.pem" "$T/enctrad.key" "$T/enctrad.key: the private key is encrypted"
init_case mismatch-type "$T/ec.pem" "$T/rsa.key" "$T/rsa.key: private key does not match the certificate in $T/ec.pem"
init_case mismatch-ec "$T/ec.pem" "$T/p384.key" "$T/p384.key: private key does not match the certificate in $T/ec.pem"
q openssl genpkey -algorithm rsa -pkeyopt rsa_keygen_bits:2048 -out rsa2.key
init_case mismatch-rsa "$T/rsa.pem" "$T/rsa2.key" "$T/rsa2.key: private key does not match the certificate in $T/rsa.pem"
init_case missing-cert "$T/missing.pem" "$T/ec.key" "$T/missing.pem: cannot open: No such file or directory"
init_case missing-key "$T/ec.pem" "$T/missing.key" "$T/missing.key: cannot open: No such file or directory"
init_case expired "$T/expired.pem" "$T/exp.key" "$T/expired.pem: certificate expired on 2020-01-02 03:04:05 UTC"
init_case leaf-not-first "$T/ca-first.pem" "$T/ec.key" "$T/ca-first.pem: the certificate of key $T/ec.key is number 2 in the chain"
init_case no-cert "$T/junk.pem" "$T/ec.key" "$T/junk.pem: no certificate found"
init_case empty-cert "$T/empty.pem" "$T/ec.key" "$T/empty.pem: no certificate found"
init_case no-key "$T/ec.pem" "$T/ec.pem" "$T/ec.pem: no private key found"
init_case rsa-1024 "$T/rsa1024.pem" "$T/rsa1024.key" "$T/rsa1024.key: RSA key of 1024 bits"
printf -- '-----BEGIN CERTIFICATE-----\n-----END CERTIFICATE-----\n' >emptyobj.pem
printf -- '-----BEGIN CERTIFICATE-----\nMIIB\n' >trunc.pem
printf -- '-----BEGIN CERTIFICATE-----\n!!!!\n-----END CERTIFICATE-----\n' >badb64.pem
{ echo '-----BEGIN EC PRIVATE KEY-----'; head -c 120 /dev/urandom | base64; echo '-----END EC PRIVATE KEY-----'; } >junkkey.pem
mkdir -p adir
init_case empty-object "$T/emptyobj.pem" "$T/ec.key" "$T/emptyobj.pem: cannot decode the first certificate"
init_case truncated "$T/trunc.pem" "$T/ec.key" "$T/trunc.pem: PEM object CERTIFICATE has no END line"
init_case bad-base64 "$T/badb64.pem" "$T/ec.key" "$T/badb64.pem: bad PEM data in CERTIFICATE"
init_case junk-key "$T/ec.pem" "$T/junkkey.pem" "$T/junkkey.pem: cannot decode the EC PRIVATE KEY"
init_case directory "$T/adir" "$T/ec.key" "$T/adir: not a regular file"
init_good crlf "$T/crlf.pem" "$T/crlf.key"
init_good ec-parameters "$T/ecparam.pem" "$T/ecparam.key"
init_good no-final-newline "$T/ecparam-nonl.pem" "$T/ecparam-nonl.key"
init_good p384 "$T/p384.pem" "$T/p384.key"
init_good rsa-traditional "$T/rsa-chain.pem" "$T/rsa-trad.key"
cat ec.pem ec.key >combined.pem
init_good cert-and-key-in-one-file "$T/combined.pem" "$T/combined.pem"

# a tls server in a backend without its trust anchors cannot start
cat >init-ca.ini <<EOF
[backend b]
server = localhost:443 tls
ca = $T/missing-ca.pem
EOF
out=$("$ECHO" -c init-ca.ini -t 2>&1)
has "tls_init: missing ca named" "$out" "$T/missing-ca.pem: cannot open"

# ------------------------------------------------------------- the server
P=$(free_port)
cat >srv.ini <<EOF
[tls]
listen = 127.0.0.1:$P
cert = $T/rsa-chain.pem
key = $T/rsa.key
sessions = 64
connections = 64

[cert ec]
hosts = ec.test *.wild.test
cert = $T/ec.pem
key = $T/ec.key

[cert p384]
hosts = p384.test
cert = $T/p384.pem
key = $T/p384.key

[cert dual-rsa]
hosts = dual.test
cert = $T/rsa.pem
key = $T/rsa.key

[cert dual-ec]
hosts = dual.test
cert = $T/ec.pem
key = $T/ec.key
EOF
"$ECHO" -c srv.ini -v >srv.log 2>&1 &
SRV=$!
PIDS+=("$SRV")
wait_port "$P" || { cat srv.log; bad "tlsecho starts"; }

CURL=(curl -sS --max-time 20 --cacert ca.pem)
res() { echo "--resolve $1:$P:127.0.0.1"; }

# certificate verification against the CA, default certificate
out=$("${CURL[@]}" $(res localhost) "https://localhost:$P/hello" -v 2>&1)
has "curl verifies the default certificate" "$out" "SSL certificate verify ok"
has "default certificate without a [cert] match" "$out" "subject: CN=rsa.test"
has "SNI seen by the server" "$out" "sni=localhost"
has "ALPN http/1.1 (curl)" "$out" "ALPN: server accepted http/1.1"
out=$("${CURL[@]}" --cacert other-ca.pem $(res localhost) "https://localhost:$P/" 2>&1)
has "curl refuses a server outside its CA" "$out" "certificate"

# subject NAME: the certificate subject the server shows for SNI NAME
subject() {
	openssl s_client -connect "127.0.0.1:$P" "${@:2}" -servername "$1" </dev/null 2>/dev/null |
		openssl x509 -noout -subject 2>/dev/null
}
has "SNI ec.test picks [cert ec]" "$(subject ec.test)" "CN = ec.test"
has "SNI is case-insensitive" "$(subject EC.Test)" "CN = ec.test"
has "SNI with a trailing dot" "$(subject ec.test.)" "CN = ec.test"
has "SNI wildcard" "$(subject a.wild.test)" "CN = ec.test"
has "SNI wildcard, two labels" "$(subject a.b.wild.test)" "CN = ec.test"
has "SNI wildcard needs a label" "$(subject wild.test)" "CN = rsa.test"
has "SNI P-384 certificate" "$(subject p384.test)" "CN = p384.test"
has "SNI unknown name: default" "$(subject nobody.test)" "CN = rsa.test"
out=$(openssl s_client -connect "127.0.0.1:$P" -noservername </dev/null 2>/dev/null | openssl x509 -noout -subject 2>/dev/null)
has "no SNI: default" "$out" "CN = rsa.test"
has "one name, two keys: ECDSA first" "$(subject dual.test)" "CN = ec.test"
has "one name, two keys: RSA for an RSA-only client" \
	"$(subject dual.test -cipher ECDHE-RSA-AES128-GCM-SHA256)" "CN = rsa.test"
for n in ec.test a.wild.test rsa.test p384.test; do
	out=$("${CURL[@]}" $(res $n) "https://$n:$P/x" 2>&1)
	has "curl verifies $n" "$out" "sni=$n"
done

# resumption from the session cache
out=$(openssl s_client -connect "127.0.0.1:$P" -reconnect -CAfile ca.pem </dev/null 2>/dev/null)
has "session resumed (-reconnect)" "$out" "Reused, TLSv1.2"

# ALPN
out=$(openssl s_client -connect "127.0.0.1:$P" -alpn h2,http/1.1 </dev/null 2>/dev/null)
has "ALPN http/1.1 (s_client)" "$out" "ALPN protocol: http/1.1"

# versions and suites: TLS 1.2, ECDHE and AEAD only
ciph() {
	openssl s_client -connect "127.0.0.1:$P" -servername rsa.test "$@" </dev/null 2>/dev/null |
		sed -n 's/^New, \(.*\)$/\1/p'
}
has "TLS 1.2 works at SECLEVEL=0 too" "$(ciph -tls1_2 -cipher 'DEFAULT:@SECLEVEL=0')" "TLSv1.2, Cipher is ECDHE"
for v in tls1_1 tls1; do
	has "-$v refused" "$(ciph -$v -cipher 'DEFAULT:@SECLEVEL=0')" "(NONE), Cipher is (NONE)"
done
has "RSA key exchange refused" "$(ciph -tls1_2 -cipher AES128-GCM-SHA256)" "(NONE), Cipher is (NONE)"
has "CBC refused without compat" "$(ciph -tls1_2 -cipher ECDHE-RSA-AES128-SHA256)" "(NONE), Cipher is (NONE)"
if grep -qw aes /proc/cpuinfo 2>/dev/null; then want=ECDHE-RSA-AES128-GCM-SHA256; else want=ECDHE-RSA-CHACHA20-POLY1305; fi
has "server preference: $want" \
	"$(ciph -tls1_2 -cipher 'ECDHE-RSA-CHACHA20-POLY1305:ECDHE-RSA-AES256-GCM-SHA384:ECDHE-RSA-AES128-GCM-SHA256')" "$want"
has "ChaCha20-Poly1305 offered" "$(ciph -tls1_2 -cipher ECDHE-RSA-CHACHA20-POLY1305)" "ECDHE-RSA-CHACHA20-POLY1305"
has "AES-256-GCM offered" "$(ciph -tls1_2 -cipher ECDHE-RSA-AES256-GCM-SHA384)" "ECDHE-RSA-AES256-GCM-SHA384"

# 50 MB each way, byte-exact: an upload echoed while it streams (the
# response starts long before the upload ends: tlsecho buffers 64 KB),
# and a generated body
head -c 50000000 /dev/urandom >up.bin
"${CURL[@]}" --max-time 120 $(res localhost) --data-binary @up.bin \
	-H 'Content-Type: application/octet-stream' "https://localhost:$P/echo" -o echoed.bin
expect "50 MB upload echoed byte-exact" cmp -s up.bin echoed.bin
"${CURL[@]}" --max-time 120 $(res localhost) "https://localhost:$P/big/50000000" -o big.bin
out=$("$PYTHON" - <<'EOF'
d = open("big.bin", "rb").read()
print(len(d), d == (bytes(range(251)) * (len(d) // 251 + 1))[:len(d)])
EOF
)
has "50 MB download byte-exact" "$out" "50000000 True"

# several large transfers at once, and slow readers and writers
head -c 5000000 /dev/urandom >up5.bin
for i in 1 2 3 4 5 6; do
	"${CURL[@]}" --max-time 120 $(res localhost) --data-binary @up5.bin \
		"https://localhost:$P/echo" -o "echo5-$i.bin" 2>/dev/null &
done
"${CURL[@]}" --max-time 60 --limit-rate 2M $(res localhost) "https://localhost:$P/big/3000000" -o slow.bin 2>/dev/null &
"${CURL[@]}" --max-time 60 --limit-rate 2M $(res localhost) --data-binary @up5.bin "https://localhost:$P/echo" -o slowup.bin 2>/dev/null &
wait_curls() { local p; for p in $(jobs -p); do [ "$p" = "$SRV" ] || wait "$p"; done; }
wait_curls
n=0
for i in 1 2 3 4 5 6; do cmp -s up5.bin "echo5-$i.bin" && n=$((n + 1)); done
has "6 concurrent 5 MB echoes byte-exact" "$n" "6"
expect "slow reader (2 MB/s) gets the whole body" test "$(wc -c <slow.bin)" -eq 3000000
expect "slow writer (2 MB/s) echoed byte-exact" cmp -s up5.bin slowup.bin

# a client that sends its TLS bytes one at a time: records and the
# handshake arrive in pieces
out=$("$PYTHON" - "$P" <<'EOF'
import socket, ssl, sys, time
ctx = ssl.create_default_context(cafile="ca.pem")
sock = socket.create_connection(("127.0.0.1", int(sys.argv[1])))
sock.settimeout(20)
inc, outg = ssl.MemoryBIO(), ssl.MemoryBIO()
tls = ctx.wrap_bio(inc, outg, server_hostname="ec.test")
def dribble():
    data = outg.read()
    for i in range(len(data)):
        sock.sendall(data[i:i + 1])
        if i % 50 == 0:
            time.sleep(0.001)
def pull():
    b = sock.recv(65536)
    if not b:
        raise EOFError
    inc.write(b)
while True:
    try:
        tls.do_handshake()
        break
    except ssl.SSLWantReadError:
        dribble()
        pull()
dribble()
tls.write(b"GET /dribble HTTP/1.1\r\nHost: ec.test\r\nConnection: close\r\n\r\n")
dribble()
got = b""
deadline = time.time() + 20
while time.time() < deadline:
    try:
        b = tls.read(65536)
        if not b:
            break
        got += b
    except ssl.SSLWantReadError:
        try:
            pull()
        except EOFError:
            break
    except (ssl.SSLZeroReturnError, ssl.SSLEOFError):
        break
print(got.decode(errors="replace"))
EOF
)
has "one byte at a time: handshake and request" "$out" "path=/dribble"
has "one byte at a time: SNI" "$out" "sni=ec.test"

# pipelining: two requests in one write, two answers in order
out=$("$PYTHON" - "$P" <<'EOF'
import socket, ssl, sys
ctx = ssl.create_default_context(cafile="ca.pem")
s = ctx.wrap_socket(socket.create_connection(("127.0.0.1", int(sys.argv[1]))), server_hostname="localhost")
s.sendall(b"GET /one HTTP/1.1\r\nHost: x\r\n\r\nGET /two HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
data = b""
while True:
    b = s.recv(65536)
    if not b:
        break
    data += b
print(data.count(b"HTTP/1.1 200 OK"), data.index(b"path=/one") < data.index(b"path=/two"), s.selected_alpn_protocol())
EOF
)
has "pipelined requests answered in order" "$out" "2 True"

# many clients at once
for i in $(seq 40); do
	"${CURL[@]}" $(res localhost) "https://localhost:$P/c$i" -o "par$i.out" 2>"par$i.err" &
done
wait_curls
n=$(cat par*.out 2>/dev/null | grep -c '^sni=localhost')
has "40 concurrent clients" "$n" "40"

# hostile input: garbage, a half handshake held open, then a good client
for i in $(seq 80); do
	(exec 3<>"/dev/tcp/127.0.0.1/$P" && head -c 700 /dev/urandom >&3 && sleep 0.05) 2>/dev/null
done
exec 5<>"/dev/tcp/127.0.0.1/$P"
printf '\026\003\001\000\310\001\000\000\304\003\003' >&5
exec 6<>"/dev/tcp/127.0.0.1/$P"
printf 'GET / HTTP/1.1\r\n\r\n' >&6 2>/dev/null
out=$("${CURL[@]}" $(res localhost) "https://localhost:$P/after" 2>&1)
has "good request after garbage and a half handshake" "$out" "path=/after"
# 80 bad clients > 64 engines: a leak would stop the listener by now
for i in $(seq 10); do
	"${CURL[@]}" $(res localhost) "https://localhost:$P/again$i" -o "again$i.out" 2>/dev/null &
done
wait_curls
n=$(cat again*.out 2>/dev/null | grep -c '^sni=localhost')
has "engines come back after failed handshakes" "$n" "10"
exec 5>&- 6>&-

kill -TERM "$SRV"
wait "$SRV" 2>/dev/null
clean_log "server" srv.log

# ----------------------------------------------- pool exhaustion, compat
P2=$(free_port)
cat >small.ini <<EOF
[tls]
listen = 127.0.0.1:$P2
cert = $T/rsa-chain.pem
key = $T/rsa.key
connections = 2
sessions = 0
ciphers = compat
EOF
"$ECHO" -c small.ini >small.log 2>&1 &
SMALL=$!
PIDS+=("$SMALL")
wait_port "$P2"
# wait_port used one engine for a moment; hold both now
exec 7<>"/dev/tcp/127.0.0.1/$P2"
exec 8<>"/dev/tcp/127.0.0.1/$P2"
sleep 0.3
out=$(curl -sS --max-time 2 --cacert ca.pem --resolve "localhost:$P2:127.0.0.1" "https://localhost:$P2/wait" 2>&1)
hasnt "no engine free: not served" "$out" "path=/wait"
exec 7>&-
sleep 0.3
out=$(curl -sS --max-time 10 --cacert ca.pem --resolve "localhost:$P2:127.0.0.1" "https://localhost:$P2/now" 2>&1)
has "an engine comes back: served" "$out" "path=/now"
exec 8>&-
P=$P2
has "compat: ECDHE CBC" "$(ciph -tls1_2 -cipher ECDHE-RSA-AES128-SHA256)" "ECDHE-RSA-AES128-SHA256"
has "compat: ECDHE CBC SHA-1" "$(ciph -tls1_2 -cipher ECDHE-RSA-AES256-SHA)" "ECDHE-RSA-AES256-SHA"
has "compat: still no TLS 1.1" "$(ciph -tls1_1 -cipher 'DEFAULT:@SECLEVEL=0')" "(NONE), Cipher is (NONE)"
out=$(openssl s_client -connect "127.0.0.1:$P2" -reconnect </dev/null 2>/dev/null)
hasnt "sessions = 0: no resumption" "$out" "Reused"
kill -TERM "$SMALL"
wait "$SMALL" 2>/dev/null
clean_log "small server" small.log

# --------------------------------------------------- reload (tls_reload)
P4=$(free_port)
cp rsa-chain.pem rl.pem
cp rsa.key rl.key
cat >rl.ini <<EOF
[tls]
listen = 127.0.0.1:$P4
cert = $T/rl.pem
key = $T/rl.key
[backend b]
server = localhost:1 tls
ca = $T/ca.pem
EOF
"$ECHO" -c rl.ini >rl.log 2>&1 &
RL=$!
PIDS+=("$RL")
wait_port "$P4"
out=$("$PYTHON" - "$P4" "$RL" <<'EOF'
import os, shutil, signal, socket, ssl, sys, time
port, pid = int(sys.argv[1]), int(sys.argv[2])
ctx = ssl.create_default_context(cafile="ca.pem")
def conn():
    return ctx.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=10), server_hostname="localhost")
def cn(s):
    return dict(x[0] for x in s.getpeercert()["subject"])["commonName"]
def get(s, path):
    s.sendall(b"GET " + path + b" HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while b"path=" + path not in data:
        b = s.recv(65536)
        if not b:
            break
        data += b
    return b"path=" + path in data
def hup():
    os.kill(pid, signal.SIGHUP)
    time.sleep(0.5)
k = conn()
print("before", cn(k), get(k, b"/k1"))
shutil.copy("ec.pem", "rl.pem")
shutil.copy("ec.key", "rl.key")
hup()
n = conn()
print("after", cn(n), get(n, b"/n1"))
print("kept", get(k, b"/k2"))
open("rl.pem", "w").write("junk\n")
hup()
m = conn()
print("broken", cn(m), get(m, b"/m1"))
for s in (k, n, m):
    s.close()
EOF
)
has "reload: old certificate before" "$out" "before rsa.test True"
has "reload: new connections get the new certificate" "$out" "after ec.test True"
has "reload: a connection across the reload keeps working" "$out" "kept True"
has "reload: a broken file keeps the old set" "$out" "broken ec.test True"
has "reload: the error names the file" "$(cat rl.log)" "reload failed: $T/rl.pem: no certificate found"
kill -TERM "$RL"
wait "$RL" 2>/dev/null
clean_log "reload server" rl.log

# ------------------------------------------------------ tls_client (-u)
# s_server PORT CERT KEY: a background openssl s_server -www
s_server() {
	openssl s_server -www -accept "127.0.0.1:$1" -cert "$2" -key "$3" -quiet >"ss$1.log" 2>&1 &
	PIDS+=("$!")
	wait_port "$1"
}
SP=$(free_port)
s_server "$SP" ec.pem ec.key
out=$("$ECHO" -u "localhost:$SP" -a ca.pem 2>cli.err)
rc=$?
[ $rc -eq 0 ] && [[ $out == *"HTTP/1.0 200 ok"* ]] && ok || bad "tls_client to s_server, right CA" "rc $rc" "$(cat cli.err)"
clean_log "client" cli.err
out=$("$ECHO" -u "localhost:$SP" -a other-ca.pem 2>&1)
rc=$?
[ $rc -eq 1 ] && [[ $out == *"certificate not trusted by ca"* ]] && ok || bad "tls_client refuses a wrong CA" "rc $rc" "$out"
out=$("$ECHO" -u "127.0.0.1:$SP" -a ca.pem -n wrong.test 2>&1)
rc=$?
[ $rc -eq 1 ] && [[ $out == *"does not name the server"* ]] && ok || bad "tls_client refuses a wrong name" "rc $rc" "$out"
out=$("$ECHO" -u "127.0.0.1:$SP" -a ca.pem -n ec.test 2>&1)
has "tls_client checks the name it is given" "$out" "HTTP/1.0 200 ok"

SP2=$(free_port)
s_server "$SP2" rsa-chain.pem rsa.key
out=$("$ECHO" -u "localhost:$SP2" -a ca.pem 2>&1)
has "tls_client to an RSA server" "$out" "HTTP/1.0 200 ok"

SP3=$(free_port)
s_server "$SP3" expired.pem exp.key
out=$("$ECHO" -u "127.0.0.1:$SP3" -a ca.pem -n exp.test 2>&1)
has "tls_client refuses an expired certificate" "$out" "certificate expired"

# tlsecho against itself: the client's SNI reaches the server
P3=$(free_port)
sed "s/^listen = .*/listen = 127.0.0.1:$P3/" srv.ini >self.ini
"$ECHO" -c self.ini >self.log 2>&1 &
SELF=$!
PIDS+=("$SELF")
wait_port "$P3"
out=$("$ECHO" -u "127.0.0.1:$P3" -a ca.pem -n a.wild.test -p /self 2>&1)
has "tls_client sends SNI" "$out" "sni=a.wild.test"
has "tls_client reads the whole answer" "$out" "path=/self"
kill -TERM "$SELF"
wait "$SELF" 2>/dev/null
clean_log "self server" self.log

echo "tls: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
