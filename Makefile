# proxy - a small reverse proxy for routers and gateways.
# Targets: all run test fuzz install clean.

CROSS_COMPILE ?=
ifeq ($(origin CC),default)
CC = $(CROSS_COMPILE)cc
endif
CLANG ?= clang
PREFIX ?= /usr/local
DESTDIR ?=
CFLAGS ?= -Os -g
WARN = -std=c11 -D_GNU_SOURCE -Wall -Wextra -Wshadow -Wstrict-prototypes \
	-Wmissing-prototypes -Wno-unused-parameter -Werror
# BearSSL and inih come from Debian's -dev packages and are linked
# statically so a device needs neither library.
LIBS = -Wl,-Bstatic -lbearssl -linih -Wl,-Bdynamic

SRC = proxy.c http.c conf.c balance.c tls.c acl.c
OBJ = $(SRC:.c=.o)
HDR = proxy.h
SAN = -fsanitize=address,undefined -fno-omit-frame-pointer \
	-fno-sanitize-recover=undefined

all: deps proxy

proxy: $(OBJ)
	$(CC) $(LDFLAGS) -o $@ $(OBJ) $(LIBS)

.c.o:
	$(CC) $(WARN) $(CFLAGS) -c $<

$(OBJ): $(HDR)

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
test/proxy-san: $(SRC) $(HDR)
	$(CC) $(WARN) -O1 -g $(SAN) -o $@ $(SRC) $(LIBS)

UNIT = test/unit.c test/unit_http.c test/unit_conf.c test/unit_acl.c \
	http.c conf.c balance.c tls.c acl.c
test/unit-san: $(UNIT) $(HDR) test/unit.h
	$(CC) $(WARN) -O1 -g $(SAN) -I. -o $@ $(UNIT) $(LIBS)

# A standalone HTTPS echo server and client on tls.c alone (test/tls_test.sh).
test/tlsecho: test/tlsecho.c tls.c conf.c $(HDR)
	$(CC) $(WARN) -O1 -g $(SAN) -I. -o $@ test/tlsecho.c tls.c conf.c $(LIBS)

test/alloccount.so: test/alloccount.c
	$(CC) -O2 -g -shared -fPIC -o $@ test/alloccount.c -ldl

test: deps proxy test/proxy-san test/unit-san test/alloccount.so
	sh test/run

FUZZ = test/fuzz-request test/fuzz-response test/fuzz-chunk test/fuzz-path
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

install: all
	mkdir -p $(DESTDIR)$(PREFIX)/sbin $(DESTDIR)/etc
	cp proxy $(DESTDIR)$(PREFIX)/sbin/proxy
	[ -f $(DESTDIR)/etc/proxy.ini ] || cp proxy.ini $(DESTDIR)/etc/proxy.ini

clean:
	rm -f proxy $(OBJ) test/proxy-san test/unit-san test/alloccount.so \
	    test/tlsecho $(FUZZ)
	rm -rf test/fuzz/*.work

.PHONY: all deps test fuzz run install clean
