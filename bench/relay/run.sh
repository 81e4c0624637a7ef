#!/bin/sh
# Relay throughput and latency (issue #5), measured against a baseline in
# the same run. Postfix's smtp-source sends the ~100 KB newsletter of
# testdata/bench (quoted-printable multipart/alternative, one open-tracking
# pixel) to a recipient without consent, M messages, S sessions at a time,
# into smtp-sink three ways, alternating the order every round:
#
#   direct    smtp-source -> smtp-sink                       (the wire)
#   strip     smtp-source -> pixelrelay serve -> smtp-sink   (the pixel removed)
#   dry-run   smtp-source -> pixelrelay serve --dry-run -> smtp-sink
#
# It reports the medians, strip/direct (target >= 0.25), what the rewrite
# costs over dry-run (time per message, target <= 30 %), the latency the
# relay adds at low load (one session; target <= 5 ms per message) and the
# relay's peak RSS (VmHWM).
#
#   bench/relay/run.sh
#   KEEP=1 bench/relay/run.sh             # keep the logs and audit logs
#   ROUNDS=5 MESSAGES=2000 SESSIONS=20 LATENCY_MESSAGES=200 bench/relay/run.sh
#
# Exit status: 0 when every target is met, 1 when one is missed, 2 when the
# benchmark could not run. Loopback only; every process it starts is
# stopped by its PID.
set -eu

ROUNDS=${ROUNDS:-5}
MESSAGES=${MESSAGES:-2000}
SESSIONS=${SESSIONS:-20}
LATENCY_MESSAGES=${LATENCY_MESSAGES:-200}
RATIO_TARGET=${RATIO_TARGET:-0.25}
COST_TARGET=${COST_TARGET:-0.30}
LATENCY_TARGET_MS=${LATENCY_TARGET_MS:-5}
MESSAGE=${MESSAGE:-testdata/bench/newsletter.eml}
SENDER=news@example-news.com
RECIPIENT=reader@example.fr # never consented: the pixel is stripped

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
die() { echo "bench/relay/run.sh: $*" >&2; exit 2; }
for tool in smtp-source smtp-sink go; do
	command -v "$tool" >/dev/null 2>&1 || [ -x "/usr/sbin/$tool" ] ||
		die "$tool is missing (smtp-source and smtp-sink: Debian package postfix)"
done
PATH=$PATH:/usr/sbin

tmp=$(mktemp -d)
pids=""
cleanup() {
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	if [ "${KEEP:-}" = 1 ]; then echo "logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

. bench/lib.sh # free_port, wait_port, now, median

go build -o "$tmp/pixelrelay" ./cmd/pixelrelay || die "go build failed"
# smtp-source -F appends CRLF to each line it reads: give it LF lines, or
# every line would end in a bare CR, which the relay rightly refuses.
tr -d '\r' <"$MESSAGE" >"$tmp/message.eml"
size=$(wc -c <"$tmp/message.eml")

sink_port=$(free_port)
smtp-sink -u nobody "127.0.0.1:$sink_port" 1024 >/dev/null 2>"$tmp/sink.log" &
sink=$!
pids="$pids $sink"
wait_port "$sink_port" "$sink" || die "smtp-sink did not start: $(cat "$tmp/sink.log")"

start_relay() { # NAME [FLAGS...] -> sets relay_port relay_pid
	name=$1
	shift
	relay_port=$(free_port)
	"$tmp/pixelrelay" serve --listen "127.0.0.1:$relay_port" --http "127.0.0.1:$(free_port)" \
		--upstream "smtp://127.0.0.1:$sink_port" --db "$tmp/$name.db" --audit-log "$tmp/$name.audit" \
		--hostname "$name.bench" --log-level warn "$@" >"$tmp/$name.log" 2>&1 &
	relay_pid=$!
	pids="$pids $relay_pid"
	wait_port "$relay_port" "$relay_pid" || die "pixelrelay serve $* did not start: $(cat "$tmp/$name.log")"
}
start_relay strip
strip_port=$relay_port strip_pid=$relay_pid
start_relay dry --dry-run
dry_port=$relay_port dry_pid=$relay_pid

blast() { # PORT SESSIONS MESSAGES -> seconds
	t0=$(now)
	smtp-source -s "$2" -m "$3" -f "$SENDER" -t "$RECIPIENT" -F "$tmp/message.eml" "127.0.0.1:$1" \
		>"$tmp/source.out" 2>&1 || die "smtp-source to port $1 failed: $(tail -3 "$tmp/source.out")"
	t1=$(now)
	echo "$t0 $t1" | awk '{printf "%.6f", $2 - $1}'
}
rate() { echo "$1 $2" | awk '{printf "%.1f", $1 / $2}'; } # MESSAGES SECONDS

echo "pixelrelay relay benchmark: $(basename "$MESSAGE") as $size bytes, $MESSAGES messages x $SESSIONS sessions, $ROUNDS rounds; $(nproc) CPUs shared by smtp-source, pixelrelay and smtp-sink; load average $(cut -d' ' -f1-3 /proc/loadavg)"

# Warm-up, and a check that the relays do what is being measured: every
# message is audited, the strip relay removed the pixel, dry-run did not.
blast "$strip_port" 4 20 >/dev/null
blast "$dry_port" 4 20 >/dev/null
blast "$sink_port" 4 20 >/dev/null
grep -q '"action":"strip"' "$tmp/strip.audit" || die "the strip relay's audit log shows no strip: $(head -c 600 "$tmp/strip.audit")"
grep -q '"dry_run":true' "$tmp/dry.audit" || die "the dry-run relay's audit log shows no dry run"
grep -q '"trackers":\[{' "$tmp/strip.audit" || die "no tracker found in the benchmark message: the benchmark would not measure a rewrite"

: >"$tmp/direct" ; : >"$tmp/strip" ; : >"$tmp/dry" ; : >"$tmp/ratios"
r=1
while [ $r -le "$ROUNDS" ]; do
	# Rotate the order so that none always runs on the warmest machine.
	case $((r % 3)) in
	1) order="direct strip dry" ;;
	2) order="strip dry direct" ;;
	0) order="dry direct strip" ;;
	esac
	line="round $r:"
	for setup in $order; do
		case $setup in
		direct) port=$sink_port ;;
		strip) port=$strip_port ;;
		dry) port=$dry_port ;;
		esac
		secs=$(blast "$port" "$SESSIONS" "$MESSAGES")
		v=$(rate "$MESSAGES" "$secs")
		echo "$v" >>"$tmp/$setup"
		line="$line $setup $v msg/s"
	done
	echo "$line"
	# Each round's three runs are back to back, so a machine that gets
	# busier or quieter during the benchmark shifts a round's figures
	# alike: the verdicts use the median of the per-round ratios.
	paste -d' ' "$tmp/direct" "$tmp/strip" "$tmp/dry" | tail -n 1 |
		awk '{printf "%.4f %.4f\n", $2 / $1, $3 / $2 - 1}' >>"$tmp/ratios"
	r=$((r + 1))
done

# Latency at low load: one session, one message at a time (smtp-source
# opens a new connection per message, as most apps do). The relay's share
# is the difference in time per message against the direct path.
: >"$tmp/lat.direct" ; : >"$tmp/lat.strip" ; : >"$tmp/lat.added"
r=1
while [ $r -le "$ROUNDS" ]; do
	d=$(blast "$sink_port" 1 "$LATENCY_MESSAGES")
	s=$(blast "$strip_port" 1 "$LATENCY_MESSAGES")
	echo "$d $LATENCY_MESSAGES" | awk '{printf "%.4f\n", 1000 * $1 / $2}' >>"$tmp/lat.direct"
	echo "$s $LATENCY_MESSAGES" | awk '{printf "%.4f\n", 1000 * $1 / $2}' >>"$tmp/lat.strip"
	echo "$s $d $LATENCY_MESSAGES" | awk '{printf "%.4f\n", 1000 * ($1 - $2) / $3}' >>"$tmp/lat.added"
	r=$((r + 1))
done

rss() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# cpu_ms PID MESSAGES: the process's user+system CPU time per message.
cpu_ms() { awk -v n="$2" -v hz="$(getconf CLK_TCK)" '{printf "%.2f", 1000 * ($14 + $15) / hz / n}' "/proc/$1/stat"; }
strip_rss=$(rss "$strip_pid")
dry_rss=$(rss "$dry_pid")
audited=$(wc -l <"$tmp/strip.audit")
strip_cpu=$(cpu_ms "$strip_pid" "$audited")
dry_cpu=$(cpu_ms "$dry_pid" "$(wc -l <"$tmp/dry.audit")")

direct=$(median <"$tmp/direct")
strip=$(median <"$tmp/strip")
dry=$(median <"$tmp/dry")
ratio=$(awk '{print $1}' "$tmp/ratios" | median | awk '{printf "%.3f", $1}')
# The rewrite's cost: how much longer a message takes through the strip
# relay than through the same binary in dry-run (which parses, looks up
# consent and detects, but forwards the original bytes).
cost=$(awk '{print $2}' "$tmp/ratios" | median | awk '{printf "%.3f", $1}')
lat_direct=$(median <"$tmp/lat.direct")
lat_strip=$(median <"$tmp/lat.strip")
added=$(median <"$tmp/lat.added" | awk '{printf "%.2f", $1}')

echo
printf 'median throughput: direct %.0f msg/s, through pixelrelay (strip) %.0f msg/s, dry-run %.0f msg/s\n' "$direct" "$strip" "$dry"
printf 'relay/direct: %s (median of per-round ratios; target >= %s)\n' "$ratio" "$RATIO_TARGET"
printf 'strip vs dry-run: %+.1f %% time per message (median of rounds; target <= %.0f %%)\n' "$(echo "$cost" | awk '{print 100 * $1}')" "$(echo "$COST_TARGET" | awk '{print 100 * $1}')"
printf 'one session: direct %.2f ms/message, through pixelrelay %.2f ms/message: %s ms added (median of rounds; target <= %s ms)\n' "$lat_direct" "$lat_strip" "$added" "$LATENCY_TARGET_MS"
printf 'pixelrelay peak RSS (VmHWM): strip %s MB, dry-run %s MB; CPU per message: strip %s ms, dry-run %s ms (the strip relay audited %s messages)\n' "$strip_rss" "$dry_rss" "$strip_cpu" "$dry_cpu" "$audited"

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
echo "$ratio $RATIO_TARGET" | awk '{exit !($1 >= $2)}' || { echo "MISSED: relay/direct below $RATIO_TARGET"; status=1; }
echo "$cost $COST_TARGET" | awk '{exit !($1 <= $2)}' || { echo "MISSED: the rewrite costs more than $COST_TARGET over dry-run"; status=1; }
echo "$added $LATENCY_TARGET_MS" | awk '{exit !($1 <= $2)}' || { echo "MISSED: more than $LATENCY_TARGET_MS ms added per message at low load"; status=1; }
[ $status -eq 0 ] && echo "PASS"
exit $status
