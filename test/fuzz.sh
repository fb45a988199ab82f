#!/bin/sh
# test/fuzz.sh - run every libFuzzer target for FUZZTIME seconds (default
# 30) under ASan/UBSan, two at a time (the machine has two cores), each
# from its seed corpus in test/fuzz/NAME with new inputs kept in a scratch
# directory. A target that finds a crash fails; its reproducer is kept in
# test/fuzz/NAME.work. Last line: "fuzz: N passed, N failed".

cd "$(dirname "$0")/.." || exit 1
t=${FUZZTIME:-30}
pass=0
fail=0

one() {
	n=$1
	rm -rf "test/fuzz/$n.work"
	mkdir -p "test/fuzz/$n.work"
	"test/fuzz-$n" -max_total_time="$t" -max_len=4096 -timeout=10 \
	    -artifact_prefix="test/fuzz/$n.work/" \
	    "test/fuzz/$n.work" "test/fuzz/$n" >"test/fuzz/$n.work/log" 2>&1
}

set -- request response chunk path conf
while [ $# -gt 0 ]; do
	a=$1
	b=${2:-}
	one "$a" & pa=$!
	pb=
	if [ -n "$b" ]; then one "$b" & pb=$!; fi
	for x in "$a:$pa" "$b:$pb"; do
		n=${x%%:*}
		p=${x#*:}
		[ -n "$n" ] || continue
		if wait "$p"; then
			runs=$(grep -o 'Done [0-9]* runs' "test/fuzz/$n.work/log" |
			    tail -1)
			echo "ok fuzz-$n: ${runs:-?} in ${t}s"
			pass=$((pass + 1))
		else
			echo "FAIL fuzz-$n:"
			tail -30 "test/fuzz/$n.work/log"
			fail=$((fail + 1))
		fi
	done
	shift
	[ $# -gt 0 ] && shift
done
echo "fuzz: $pass passed, $fail failed"
[ "$fail" -eq 0 ]
