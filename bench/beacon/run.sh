#!/bin/sh
# Load the public beacon endpoint and a GIF-only baseline with wrk, in the
# same run, alternating, and report both requests/second and their ratio.
# Target: the beacon keeps at least 80 % of the baseline's rate.
#
#   bench/beacon/run.sh                  # 5 rounds of 5 s each, 64 connections
#   ROUNDS=5 DURATION=10s bench/beacon/run.sh
#
# Exit status: 0 when the median ratio meets TARGET (default 0.80), 1 when
# it does not, 2 when the benchmark could not run.
set -eu

DURATION=${DURATION:-5s}
ROUNDS=${ROUNDS:-5}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
TARGET=${TARGET:-0.80}

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

if ! command -v wrk >/dev/null 2>&1; then
	if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
		echo "wrk is missing; installing the Debian package" >&2
		apt-get install -y -qq wrk >/dev/null || { apt-get update -qq && apt-get install -y -qq wrk >/dev/null; }
	else
		echo "bench/beacon/run.sh: wrk is not installed (Debian: apt-get install wrk)" >&2
		exit 2
	fi
fi

tmp=$(mktemp -d)
server=""
cleanup() {
	if [ -n "$server" ]; then
		kill "$server" 2>/dev/null || true
		wait "$server" 2>/dev/null || true
	fi
	rm -rf "$tmp"
}
trap cleanup EXIT INT TERM

go build -o "$tmp/beaconbench" ./bench/beacon
"$tmp/beaconbench" -urls "$tmp/urls" 2>"$tmp/server.log" &
server=$!
i=0
while [ ! -s "$tmp/urls" ]; do
	i=$((i + 1))
	if [ $i -gt 100 ] || ! kill -0 "$server" 2>/dev/null; then
		echo "bench/beacon/run.sh: the bench server did not start" >&2
		cat "$tmp/server.log" >&2
		exit 2
	fi
	sleep 0.1
done
read -r beacon baseline <"$tmp/urls"

rps() { # URL DURATION -> requests/second
	wrk -t"$THREADS" -c"$CONNS" -d"$2" "$1" >"$tmp/wrk.out" 2>&1 || { cat "$tmp/wrk.out" >&2; exit 2; }
	if grep -q "Non-2xx" "$tmp/wrk.out"; then
		echo "bench/beacon/run.sh: $1 answered errors:" >&2
		cat "$tmp/wrk.out" >&2
		exit 2
	fi
	if [ "$1" = "$beacon" ]; then
		awk '/requests in/ {print $1}' "$tmp/wrk.out" >>"$tmp/beacon.completed"
	fi
	awk '/^Requests\/sec:/ {print $2}' "$tmp/wrk.out"
}
. bench/lib.sh # median

echo "wrk -t$THREADS -c$CONNS -d$DURATION, $ROUNDS rounds, alternating; $(nproc) CPUs shared by wrk and the server"
rps "$baseline" 1s >/dev/null # warm-up
rps "$beacon" 1s >/dev/null
: >"$tmp/base.rps"
: >"$tmp/beacon.rps"
: >"$tmp/ratio"
r=1
while [ $r -le "$ROUNDS" ]; do
	# Alternate which goes first so neither always gets the warmer machine.
	if [ $((r % 2)) -eq 1 ]; then
		a=$(rps "$baseline" "$DURATION"); b=$(rps "$beacon" "$DURATION")
	else
		b=$(rps "$beacon" "$DURATION"); a=$(rps "$baseline" "$DURATION")
	fi
	echo "$a" >>"$tmp/base.rps"
	echo "$b" >>"$tmp/beacon.rps"
	echo "$b $a" | awk '{print $1/$2}' >>"$tmp/ratio"
	printf 'round %d: baseline %10.0f req/s   beacon %10.0f req/s   ratio %.3f\n' "$r" "$a" "$b" "$(tail -n 1 "$tmp/ratio")"
	r=$((r + 1))
done
base=$(median <"$tmp/base.rps")
bcn=$(median <"$tmp/beacon.rps")
# The verdict uses the median of the per-round ratios: each pair ran back
# to back, so a machine that gets busier or quieter during the run shifts
# both figures of a round alike.
ratio=$(median <"$tmp/ratio" | awk '{printf "%.3f", $1}')
printf 'median:  baseline %10.0f req/s   beacon %10.0f req/s   ratio %s (median of rounds; target >= %s)\n' "$base" "$bcn" "$ratio" "$TARGET"

kill "$server"
wait "$server" 2>/dev/null || true
server=""
# The server stores what it counted; wrk's total misses the requests it cut
# off when each run ended, so the store may hold a few more, never fewer.
completed=$(awk '{n += $1} END {print n}' "$tmp/beacon.completed")
stored=$(awk '/image loads counted and stored/ {print $2}' "$tmp/server.log")
echo "wrk completed $completed beacon requests; the server stored $stored loads"
if [ -z "$stored" ] || [ "$stored" -lt "$completed" ]; then
	echo "FAIL: loads were lost"
	cat "$tmp/server.log"
	exit 1
fi
if echo "$ratio $TARGET" | awk '{exit !($1 >= $2)}'; then
	echo "PASS"
else
	echo "FAIL: the beacon endpoint is below ${TARGET} of the baseline"
	exit 1
fi
