# proxy - a small reverse proxy for routers and gateways.
# Targets: all run test fuzz install install-strip clean; cross builds:
# test-cross cross-deps clean-cross (see "Cross and static builds");
# benchmarks (not tests): bench bench-callgrind.

CROSS_COMPILE ?=
ifeq ($(origin CC),default)
ifeq ($(CROSS_COMPILE),)
CC = cc
else
# Debian's cross toolchains have <triplet>-gcc, and no <triplet>-cc.
CC = $(CROSS_COMPILE)gcc
endif
endif
CLANG ?= clang
PREFIX ?= /usr/local
DESTDIR ?=
CFLAGS ?= -Os -g
WARN = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wstrict-prototypes \
	-Wmissing-prototypes -Wno-unused-parameter -Werror
# BearSSL and inih come from Debian's -dev packages and are linked
# statically so a device needs neither library. Basic auth hashes
# (bcrypt, SHA-512 crypt) are acl.c's own: no libcrypt.
LIBS = -Wl,-Bstatic -lbearssl -linih -Wl,-Bdynamic

SRC = proxy.c http.c conf.c balance.c tls.c acl.c cache.c
OBJ = $(SRC:.c=.o)
HDR = proxy.h bfpi.h
SAN = -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined
SANLIBS = -Wl,-Bstatic -lbearssl -linih -Wl,-Bdynamic

# STATIC=1: a fully static ./proxy. With glibc (plain cc) the link warns
# that getpwnam and getaddrinfo still want glibc's NSS modules at run
# time; CC=musl-gcc (Debian's musl-tools) has no such catch. Debian
# builds libbearssl.a and libinih.a with _FORTIFY_SOURCE, so under musl
# they need glibc's __memcpy_chk and friends: compat.c. Unused sections
# are dropped, and so is .eh_frame (C without exceptions unwinds
# nothing; 34 KB).
ifeq ($(STATIC),1)
SRC += compat.c
LIBS = -static -Wl,--gc-sections -lbearssl -linih
CFLAGS += -ffunction-sections -fdata-sections -fno-asynchronous-unwind-tables
STRIP_EH = $(CROSS_COMPILE)objcopy -R .eh_frame -R .comment proxy
ifneq ($(findstring musl,$(CC)),)
# musl-gcc sees only musl's headers and libraries: let it find Debian's
# -dev headers after its own, and name the archives by path, since a -L
# to the glibc library directory could bring glibc's libc.a in.
MUSL_LIBDIR ?= /usr/lib/$(shell cc -print-multiarch)
override CC := $(CC) -idirafter /usr/include
LIBS = -static -Wl,--gc-sections $(MUSL_LIBDIR)/libbearssl.a \
	$(MUSL_LIBDIR)/libinih.a
endif
endif
# Where a cross toolchain that does not search Debian's multiarch
# directories finds the target's libbearssl.a and libinih.a.
ifneq ($(CROSS_LIBDIR),)
LIBS := -L$(CROSS_LIBDIR) $(LIBS)
endif

all: deps proxy

proxy: $(OBJ)
	$(CC) $(LDFLAGS) -o $@ $(OBJ) $(LIBS)
	$(STRIP_EH)

.c.o:
	$(CC) $(WARN) $(CFLAGS) -c $<

$(OBJ): $(HDR) .build-flavour

# What ./proxy and the objects were built as: switching between native,
# cross and static builds rebuilds them rather than mixing objects.
FLAVOUR = $(CC) $(CFLAGS) $(LIBS)
.build-flavour: FORCE
	@echo '$(FLAVOUR)' | cmp -s - $@ || echo '$(FLAVOUR)' >$@
FORCE:

# Say which Debian packages are missing; install them when root on Debian.
deps:
	@if ! printf '#include <bearssl.h>\n#include <ini.h>\n' | \
	    $(CC) -E -x c - >/dev/null 2>&1; then \
	  echo "missing headers: install the Debian packages libbearssl-dev libinih-dev"; \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y libbearssl-dev libinih-dev || \
	    { apt-get update && apt-get install -y libbearssl-dev libinih-dev; }; \
	  else exit 1; fi; \
	fi

# The test build: sanitizers on, separate objects so ./proxy stays lean.
test/proxy-san: $(SRC) $(HDR) Makefile
	$(CC) $(WARN) -O1 -g $(SAN) -o $@ $(SRC) $(SANLIBS)

UNIT = test/unit.c test/unit_http.c test/unit_conf.c test/unit_acl.c \
	test/unit_cache.c test/bfpi.c http.c conf.c balance.c tls.c acl.c cache.c
# The unit tests check acl.c's password hashes against the system's
# crypt() (libxcrypt, from libc6-dev's dependencies): -lcrypt is theirs.
test/unit-san: $(UNIT) $(HDR) test/unit.h
	$(CC) $(WARN) -O1 -g $(SAN) -I. -o $@ $(UNIT) $(SANLIBS) -lcrypt

# An HTTPS echo server and client on tls.c alone, for test/tls_test.sh
# (conf.c reads its config; conf.c needs acl.c).
test/tlsecho: test/tlsecho.c tls.c conf.c acl.c $(HDR)
	$(CC) $(WARN) -O1 -g $(SAN) -I. -o $@ test/tlsecho.c tls.c conf.c acl.c \
	    $(SANLIBS)

test/alloccount.so: test/alloccount.c
	$(CC) -O2 -g -shared -fPIC -o $@ test/alloccount.c -ldl

# Defined before its use: make expands prerequisites as it reads them.
FUZZ = test/fuzz-request test/fuzz-response test/fuzz-chunk test/fuzz-path \
	test/fuzz-conf
test: deps proxy test/proxy-san test/unit-san test/alloccount.so test/tlsecho $(FUZZ)
	sh test/run

FUZZSAN = -fsanitize=fuzzer,address,undefined -g -O1 -I.
FUZZTIME ?= 30

test/fuzz-request: test/fuzz_request.c http.c $(HDR)
	$(CLANG) $(WARN) $(FUZZSAN) -o $@ test/fuzz_request.c http.c
test/fuzz-response: test/fuzz_response.c http.c $(HDR)
	$(CLANG) $(WARN) $(FUZZSAN) -o $@ test/fuzz_response.c http.c
test/fuzz-chunk: test/fuzz_chunk.c http.c $(HDR)
	$(CLANG) $(WARN) $(FUZZSAN) -o $@ test/fuzz_chunk.c http.c
test/fuzz-path: test/fuzz_path.c http.c $(HDR)
	$(CLANG) $(WARN) $(FUZZSAN) -o $@ test/fuzz_path.c http.c
test/fuzz-conf: test/fuzz_conf.c conf.c acl.c $(HDR)
	$(CLANG) $(WARN) $(FUZZSAN) -o $@ test/fuzz_conf.c conf.c acl.c \
	    -Wl,-Bstatic -linih -lbearssl -Wl,-Bdynamic

# Each target runs FUZZTIME seconds over its seed corpus.
fuzz: $(FUZZ)
	for f in $(FUZZ); do \
	  n=$${f#test/fuzz-}; mkdir -p test/fuzz/$$n.work; \
	  $$f -max_total_time=$(FUZZTIME) -max_len=4096 \
	      test/fuzz/$$n.work test/fuzz/$$n || exit 1; \
	done

# The demo: a small origin on 127.0.0.1:9001 and the proxy on :8080.
run: all
	sh test/demo

# INIT=sysv (default): the BusyBox/SysV init script and the systemd
# unit; INIT=procd: OpenWrt's procd script and no unit. An existing
# /etc/proxy.ini is kept.
INIT ?= sysv
MAN8 = $(DESTDIR)$(PREFIX)/share/man/man8
MAN5 = $(DESTDIR)$(PREFIX)/share/man/man5
UNITDIR = $(DESTDIR)$(PREFIX)/lib/systemd/system
STRIP ?= $(CROSS_COMPILE)strip
INSTALL_STRIP =

install: all
	@case "$(INIT)" in sysv|procd) ;; \
	  *) echo "INIT=$(INIT): use sysv or procd"; exit 1 ;; esac
	install -d $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc/init.d $(MAN8) $(MAN5)
	install -m 755 $(INSTALL_STRIP) proxy $(DESTDIR)$(PREFIX)/sbin/proxy
	# The example config as a system one: a pidfile for the init
	# scripts, and TLS left off until a certificate is configured.
	[ -f $(DESTDIR)/etc/proxy.ini ] || \
	    sed -e 's|^#pidfile = .*|pidfile = /var/run/proxy.pid|' \
	    -e '/^\[tls\]/,/^\[/s|^listen = |#listen = |' \
	    -e 's|^cert = test/demo-tls/cert.pem|cert = /etc/proxy/site.pem|' \
	    -e 's|^key = test/demo-tls/key.pem|key = /etc/proxy/site.key|' \
	    proxy.ini > $(DESTDIR)/etc/proxy.ini && \
	    chmod 644 $(DESTDIR)/etc/proxy.ini
	install -m 644 proxy.8 $(MAN8)/proxy.8
	install -m 644 proxy.ini.5 $(MAN5)/proxy.ini.5
	if [ "$(INIT)" = procd ]; then \
	  install -m 755 contrib/proxy.procd $(DESTDIR)/etc/init.d/proxy; \
	else \
	  install -m 755 contrib/proxy.init $(DESTDIR)/etc/init.d/proxy && \
	  install -d $(UNITDIR) && \
	  install -m 644 contrib/proxy.service $(UNITDIR)/proxy.service; \
	fi

# The same with the binary stripped by the (cross) toolchain's strip.
install-strip:
	$(MAKE) install INSTALL_STRIP="-s --strip-program=$(STRIP)"

# ------------------------------------------------ cross and static builds
#
# make CROSS_COMPILE=arm-linux-gnueabihf-   ./proxy for armhf (the same
#                                           with mipsel-linux-gnu-)
# make STATIC=1 [CC=musl-gcc]               a fully static ./proxy
# make test-cross ARCH=armhf|mipsel         test/proxy-ARCH, beside the
#     native binary, through the end-to-end tests under qemu-user
#     (E2E=FILTER picks tests); cross-deps installs what that needs from
#     Debian when root.
ARCH ?= armhf
TRIPLET_armhf = arm-linux-gnueabihf
TRIPLET_mipsel = mipsel-linux-gnu
TRIPLET = $(TRIPLET_$(ARCH))
QEMU_armhf = qemu-arm
QEMU_mipsel = qemu-mipsel
CROSS_BINS = test/proxy-armhf test/proxy-mipsel
PYTHON ?= python3
E2E ?=

cross-deps:
	@t=$(TRIPLET); \
	[ -n "$$t" ] || { echo "ARCH=$(ARCH): use armhf or mipsel"; exit 1; }; \
	have() { command -v $$t-gcc >/dev/null && \
	    command -v $(QEMU_$(ARCH)) >/dev/null && \
	    printf '#include <bearssl.h>\n#include <ini.h>\n' | \
	    $$t-gcc -E -x c - >/dev/null 2>&1 && \
	    [ "$$($$t-gcc -print-file-name=libbearssl.a)" != libbearssl.a ] && \
	    [ "$$($$t-gcc -print-file-name=libinih.a)" != libinih.a ]; }; \
	have && exit 0; \
	pk="gcc-$$t libc6-dev-$(ARCH)-cross libbearssl-dev:$(ARCH) libinih-dev:$(ARCH) qemu-user"; \
	echo "cross build for $(ARCH) needs the Debian packages $$pk"; \
	[ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null || exit 1; \
	dpkg --add-architecture $(ARCH) && apt-get update && \
	    apt-get install -y --no-install-recommends $$pk && have

$(CROSS_BINS): $(SRC) $(HDR)
	$(TRIPLET_$(@:test/proxy-%=%))-gcc $(WARN) $(CFLAGS) -o $@ $(SRC) $(LIBS)

# e2e runs PROXY_BIN as one command: a two-line script hands it to qemu.
test-cross: cross-deps test/proxy-$(ARCH) proxy test/alloccount.so
	printf '#!/bin/sh\nexec "%s/test/qemu-wrap" %s "%s/test/proxy-%s" "$$@"\n' \
	    "$(CURDIR)" $(ARCH) "$(CURDIR)" $(ARCH) >test/proxy-$(ARCH)-qemu
	chmod 755 test/proxy-$(ARCH)-qemu
	PROXY_BIN=test/proxy-$(ARCH)-qemu $(PYTHON) test/e2e.py $(E2E)

clean-cross:
	rm -f $(CROSS_BINS) test/proxy-armhf-qemu test/proxy-mipsel-qemu \
	    compat.o .build-flavour

clean:
	rm -f proxy $(OBJ) test/proxy-san test/unit-san test/alloccount.so \
	    test/tlsecho $(FUZZ)
	rm -rf test/fuzz/*.work

.PHONY: all deps test fuzz run install install-strip clean cross-deps \
	test-cross clean-cross FORCE

# ------------------------------------------------------------ benchmarks
#
# make bench             ./proxy against nginx and HAProxy (and the
#     origin alone) with wrk, interleaved, servers on CPU 0 and clients
#     on CPU 1; writes bench/RESULTS.md (about 10 minutes; BENCH_QUICK=1:
#     one 2 s run per figure). Installs nginx-light, haproxy and wrk from
#     Debian when root. Then bench/footprint.py: stripped sizes of the
#     native, static musl, armhf and mipsel builds and the RSS of a fresh
#     ./proxy with the default configuration. Measures only: nothing in
#     it can fail on speed.
# make bench-callgrind   instructions per proxied request, cache hit,
#     TLS handshake ... under valgrind --tool=callgrind (proxy, nginx,
#     HAProxy), per function for proxy (a -fno-inline build made in the
#     scratch directory) and system calls per request with strace;
#     appended to bench/RESULTS.md.
bench: all
	$(PYTHON) bench/bench.py
	$(PYTHON) bench/footprint.py

bench-callgrind: all
	BENCH_BUILD='$(CC) $(WARN) $(CFLAGS) -fno-inline $(SRC) $(LIBS)' \
	    $(PYTHON) bench/callgrind.py

.PHONY: bench bench-callgrind
