#!/bin/sh
# test/keys.sh - every section and key the config loader accepts is
# documented, in its section, in both proxy.ini and proxy.ini.5.
#
# The accepted keys are read from conf.c itself: each string table
# `static const char *const NAME_keys[] = { "a", "b", ..., NULL };` is
# the key list of section [NAME], and `enum sect { S_NONE, S_PROXY, ... }`
# names the sections. In proxy.ini a key counts when it is set or shown
# commented out (`#key = value`, no space after the `#`) below its
# section line (which may be commented out too: `#[cert example]`); in
# proxy.ini.5 when it starts a .TP item under the section's .SH/.SS
# heading (`.SH "[tls] SECTION"`).
#
# Also renders proxy.8 and proxy.ini.5 with `man --warnings`.
#
# Prints `ok ...` or `FAIL ...` per check, `# ...` notes, and last
# `keys: N passed, N failed`; exits 1 on any failure.
# CONF_C, INI and MAN override the three files (for testing the test).

cd "$(dirname "$0")/.." || exit 1
CONF_C=${CONF_C:-conf.c}
INI=${INI:-proxy.ini}
MAN=${MAN:-proxy.ini.5}
pass=0
fail=0

ok() {
	echo "ok $*"
	pass=$((pass + 1))
}

bad() {
	echo "FAIL $*"
	fail=$((fail + 1))
}

# "SECTION KEY" per accepted key, then "SECTION" lines prefixed by "=".
accepted() {
	awk '
	{ src = src $0 "\n" }
	END {
		# Drop comments, so neither a commented-out table nor a
		# quoted word in prose counts.
		s = ""
		while ((i = index(src, "/*")) > 0) {
			s = s substr(src, 1, i - 1)
			src = substr(src, i + 2)
			j = index(src, "*/")
			src = j > 0 ? substr(src, j + 2) : ""
		}
		s = s src
		gsub(/\/\/[^\n]*/, "", s)
		t = s
		while (match(t, /[A-Za-z0-9_]+_keys[ \t\n]*\[[ \t\n]*\][ \t\n]*=[ \t\n]*\{[^}]*\}/)) {
			tab = substr(t, RSTART, RLENGTH)
			t = substr(t, RSTART + RLENGTH)
			name = tab
			sub(/_keys.*/, "", name)
			sect[name] = 1
			body = tab
			sub(/^[^{]*\{/, "", body)
			while (match(body, /"[^"]*"/)) {
				print name, substr(body, RSTART + 1, RLENGTH - 2)
				body = substr(body, RSTART + RLENGTH)
			}
		}
		if (match(s, /enum[ \t\n]+sect[ \t\n]*\{[^}]*\}/)) {
			e = substr(s, RSTART, RLENGTH)
			sub(/^[^{]*\{/, "", e)
			while (match(e, /S_[A-Z0-9_]+/)) {
				n = tolower(substr(e, RSTART + 2, RLENGTH - 2))
				e = substr(e, RSTART + RLENGTH)
				if (n != "none")
					sect[n] = 1
			}
		}
		for (n in sect)
			print "=" n
	}' "$CONF_C"
}

# The same two kinds of lines for what proxy.ini shows.
in_ini() {
	awk '
	{
		line = $0
		sub(/\r$/, "", line)
		# A commented-out example has no space after its "#": prose
		# ("# cache = yes makes ...") is not an example.
		commented = sub(/^[#;]/, "", line)
		# "[type]" or "[type NAME]", alone on its line.
		e = index(line, "]")
		if (line ~ /^\[[A-Za-z]/ && e > 0 &&
		    substr(line, e + 1) ~ /^[ \t]*(;.*)?$/) {
			match(line, /^\[[A-Za-z]+/)
			sect = tolower(substr(line, 2, RLENGTH - 1))
			print "=" sect
			next
		}
		if (sect == "")
			next
		# Set lines may use ":"; commented examples must use "=".
		if (line ~ /^[A-Za-z_][A-Za-z0-9_]*[ \t]*=/ ||
		    (!commented && line ~ /^[A-Za-z_][A-Za-z0-9_]*[ \t]*:/)) {
			key = line
			sub(/[ \t]*[=:].*/, "", key)
			print sect, tolower(key)
		}
	}' "$INI"
}

# ... and what proxy.ini.5 documents.
in_man() {
	awk '
	/^\.S[HS]([ \t]|$)/ {
		sect = ""
		if (match($0, /\[[A-Za-z]+/)) {
			sect = tolower(substr($0, RSTART + 1, RLENGTH - 1))
			print "=" sect
		}
		item = 0
		next
	}
	/^\.TP/ { item = 1; next }
	item {
		item = 0
		if (sect == "" || $0 !~ /^\.B[IR]?[ \t]/)
			next
		key = $2
		gsub(/"/, "", key)
		sub(/[^A-Za-z0-9_].*/, "", key)
		if (key != "")
			print sect, tolower(key)
	}' "$MAN"
}

for f in "$CONF_C" "$INI" "$MAN"; do
	[ -r "$f" ] || bad "cannot read $f"
done
if [ "$fail" -gt 0 ]; then
	echo "keys: $pass passed, $fail failed"
	exit 1
fi

tmp=${TMPDIR:-/tmp}/proxy-keys.$$
trap 'rm -f "$tmp".*' EXIT
trap 'exit 130' INT
trap 'exit 143' TERM
accepted | sort -u >"$tmp.code"
in_ini | sort -u >"$tmp.ini"
in_man | sort -u >"$tmp.man"

nkeys=$(grep -cv '^=' "$tmp.code")
nsect=$(grep -c '^=' "$tmp.code")
# A refactor that hides the tables from this parser must not pass quietly.
if [ "$nkeys" -lt 10 ] || [ "$nsect" -lt 3 ]; then
	bad "parsing $CONF_C found only $nkeys keys in $nsect sections"
else
	echo "# $CONF_C accepts $nkeys keys in $nsect sections:" \
	    "$(grep '^=' "$tmp.code" | tr -d = | tr '\n' ' ')"
fi

while read -r a b; do
	case $a in
	=*)
		what="section [${a#=}]"
		;;
	*)
		what="[$a] $b"
		;;
	esac
	for doc in ini man; do
		[ "$doc" = ini ] && file=$INI || file=$MAN
		if grep -qxF "$a${b:+ $b}" "$tmp.$doc"; then
			ok "$what in $file"
		else
			bad "$what: not documented in $file"
		fi
	done
done <"$tmp.code"

# The pages themselves: man(7) macros that groff renders without a
# warning.
for page in proxy.8 "$MAN"; do
	if ! command -v man >/dev/null; then
		echo "# man is not installed: $page not rendered"
		continue
	fi
	if MANWIDTH=80 man --warnings -l "$page" 2>"$tmp.warn" >/dev/null &&
	    [ ! -s "$tmp.warn" ]; then
		ok "$page renders without warnings"
	else
		bad "$page renders" "$(head -n 3 "$tmp.warn" | tr '\n' ' ')"
	fi
done

# The other way round is only a note: documenting a key the loader
# refuses is a bug too, but a harmless one for this test to find.
for doc in ini man; do
	[ "$doc" = ini ] && file=$INI || file=$MAN
	grep -vxFf "$tmp.code" "$tmp.$doc" | while read -r a b; do
		case $a in
		=*) echo "# $file shows section [${a#=}], which $CONF_C does not accept" ;;
		*) echo "# $file shows [$a] $b, which $CONF_C does not accept" ;;
		esac
	done
done

echo "keys: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
