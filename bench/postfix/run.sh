#!/bin/sh
# pixelrelay as Postfix's content filter (issue #7), against a baseline in
# the same run. Postfix's smtp-source sends the ~100 KB newsletter of
# testdata/bench (one open-tracking pixel, recipient without consent) into
# four private Postfix instances in turn, each relaying to the same
# smtp-sink, and times each run until the sink has every message:
#
#   alone      smtpd -> queue -> smtp -> sink
#   null       smtpd -> queue -> scan (smtp) -> smtpd -> queue -> smtp -> sink
#              a second Postfix smtpd as the "filter": the cost of queueing twice
#   smtp       smtpd -> queue -> scan (smtp) -> pixelrelay -> smtpd -> queue -> smtp -> sink
#   lmtp       smtpd -> queue -> scanlmtp (lmtp) -> pixelrelay -> smtpd -> queue -> smtp -> sink
#
# The instances are configured as docs/postfix.md and deploy/postfix/
# describe (filter transport maxproc 10, the FILTER_README reinjection
# smtpd), on free loopback ports. The order of the four changes every
# round, through a Williams square: over four rounds each setup runs once
# in each position, and follows each other setup once, so that neither
# the machine's drift within a round nor what the run before leaves behind
# can favour one setup. (Merely rotated, the orders had the null filter
# follow Postfix alone, the lightest setup, in three rounds of four, and
# each pixelrelay setup follow a filtered one.) Use a multiple of 4
# rounds. Reported: medians, and pixelrelay/null-filter for SMTP and LMTP
# (target >= 0.85).
#
#   sudo bench/postfix/run.sh
#   KEEP=1 sudo bench/postfix/run.sh     # keep the instances' logs and audit logs
#   PPROF_DIR=/tmp/prof sudo bench/postfix/run.sh   # and CPU profiles of pixelrelay (go tool pprof)
#   PERF_DIR=/tmp/perf sudo bench/postfix/run.sh     # and system-wide perf recordings of one run per setup
#   ROUNDS=12 MESSAGES=2000 SESSIONS=20 sudo bench/postfix/run.sh
#   GODEBUG= sudo bench/postfix/run.sh    # pixelrelay without the systemd unit's GODEBUG
#   MAX_PROCS=0 sudo bench/postfix/run.sh  # Go's default GOMAXPROCS instead of docs/postfix.md's --max-procs
#
# Needs root (Postfix instances) and the Debian postfix package. Exit
# status: 0 when both ratios meet the target, 1 when one does not, 2 when
# the benchmark could not run. Every process it starts is stopped by PID
# (pixelrelay, smtp-sink) or by postfix -c DIR stop.
set -eu

ROUNDS=${ROUNDS:-8}
MESSAGES=${MESSAGES:-2000}
SESSIONS=${SESSIONS:-20}
TARGET=${TARGET:-0.85}
MESSAGE=${MESSAGE:-testdata/bench/newsletter.eml}
SENDER=news@example-news.com
RECIPIENT=reader@example.fr
SETUPS="alone null smtp lmtp"

root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"
PATH=$PATH:/usr/sbin:/sbin
die() { echo "bench/postfix/run.sh: $*" >&2; exit 2; }
[ "$(id -u)" = 0 ] || die "run as root: it starts private Postfix instances"
for tool in postfix postconf smtp-source smtp-sink go python3; do
	command -v "$tool" >/dev/null 2>&1 || die "$tool is missing (Debian: apt-get install postfix python3)"
done

tmp=$(mktemp -d /tmp/pixelrelay-pfbench.XXXXXX)
chmod 0755 "$tmp" # Postfix's daemons run as user postfix
pids=""
instances=""
cleanup() {
	for d in $instances; do postfix -c "$d/etc" stop >/dev/null 2>&1 || true; done
	for p in $pids; do kill "$p" 2>/dev/null || true; done
	for p in $pids; do wait "$p" 2>/dev/null || true; done
	# postfix stop returns before the master has gone.
	for d in $instances; do
		i=0
		while [ -f "$d/spool/pid/master.pid" ] && kill -0 "$(cat "$d/spool/pid/master.pid")" 2>/dev/null && [ $i -lt 100 ]; do
			sleep 0.1
			i=$((i + 1))
		done
	done
	if [ "${KEEP:-}" = 1 ]; then echo "logs kept in $tmp" >&2; else rm -rf "$tmp"; fi
}
trap cleanup EXIT
trap 'exit 2' INT TERM

. bench/lib.sh # free_port, wait_port, now, median

go build -o "$tmp/pixelrelay" ./cmd/pixelrelay || die "go build failed"
# smtp-source -F appends CRLF to each line: give it LF lines.
tr -d '\r' <"$MESSAGE" >"$tmp/message.eml"
size=$(wc -c <"$tmp/message.eml")

sink_port=$(free_port)
smtp-sink -c -u nobody "127.0.0.1:$sink_port" 1024 >"$tmp/sink.count" 2>"$tmp/sink.log" &
pids="$pids $!"
wait_port "$sink_port" || die "smtp-sink did not start: $(cat "$tmp/sink.log")"
# smtp-sink -c rewrites "sess=N quit=N mesg=N" after every event.
delivered() { tail -c 100 "$tmp/sink.count" | tr '\r' '\n' | awk -F'mesg=' 'NF > 1 {v = $2} END {print v + 0}'; }
# wait_delivered WANT SECONDS: waits until the sink has WANT messages and
# prints the time it saw the last one; fails after SECONDS. One process
# polls every 5 ms: a shell loop forking tail, tr and awk every 20 ms took
# 4 % of the CPUs while a setup drained, and timed the end to 20 ms only.
wait_delivered() {
	python3 - "$tmp/sink.count" "$1" "$2" <<-'PY'
		import os, re, sys, time
		path, want, limit = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
		fd = os.open(path, os.O_RDONLY)
		deadline = time.monotonic() + limit
		while True:
		    size = os.fstat(fd).st_size
		    m = re.findall(rb"mesg=(\d+)", os.pread(fd, 100, max(0, size - 100)))
		    if m and int(m[-1]) >= want:
		        print("%.6f" % time.time())
		        sys.exit(0)
		    if time.monotonic() > deadline:
		        sys.exit(1)
		    time.sleep(0.005)
	PY
}

# instance NAME: a private Postfix relaying everything to the sink, with
# its own config_directory, queue and data directories; sets in_port.
instance() {
	d=$tmp/$1
	mkdir -p "$d/etc" "$d/spool" "$d/data"
	cp /etc/postfix/master.cf "$d/etc/master.cf"
	[ -f /etc/postfix/dynamicmaps.cf ] && cp /etc/postfix/dynamicmaps.cf "$d/etc/"
	in_port=$(free_port)
	cat >"$d/etc/main.cf" <<-EOF
		compatibility_level = 3.6
		queue_directory = $d/spool
		data_directory = $d/data
		mail_owner = postfix
		setgid_group = postdrop
		myhostname = mta-$1.bench
		mydomain = bench
		myorigin = bench
		inet_interfaces = 127.0.0.1
		inet_protocols = ipv4
		mydestination =
		local_recipient_maps =
		local_transport = error:local delivery is disabled
		relay_domains =
		relayhost = [127.0.0.1]:$sink_port
		mynetworks = 127.0.0.0/8
		smtpd_relay_restrictions = permit_mynetworks, reject
		alias_maps =
		alias_database =
		maillog_file = $d/postfix.log
		maillog_file_prefixes = $d
	EOF
	sed -i "s/^smtp \{1,\}inet .*/127.0.0.1:$in_port inet n - n - - smtpd/" "$d/etc/master.cf"
	postconf -c "$d/etc" -F '*/*/chroot = n'
	instances="$instances $d"
}

# reinjection DIR PORT: the FILTER_README after-filter smtpd, as in
# docs/postfix.md. In the null setup it is the filter itself.
reinjection() {
	postconf -c "$1" -M "127.0.0.1:$2/inet = 127.0.0.1:$2 inet n - n - - smtpd"
	postconf -c "$1" -P "127.0.0.1:$2/inet/content_filter =" \
		"127.0.0.1:$2/inet/receive_override_options = no_unknown_recipient_checks,no_header_body_checks,no_milters" \
		"127.0.0.1:$2/inet/smtpd_helo_restrictions =" \
		"127.0.0.1:$2/inet/smtpd_client_restrictions =" \
		"127.0.0.1:$2/inet/smtpd_sender_restrictions =" \
		"127.0.0.1:$2/inet/smtpd_relay_restrictions =" \
		"127.0.0.1:$2/inet/smtpd_recipient_restrictions = permit_mynetworks,reject" \
		"127.0.0.1:$2/inet/smtpd_data_restrictions =" \
		"127.0.0.1:$2/inet/mynetworks = 127.0.0.0/8" \
		"127.0.0.1:$2/inet/smtpd_authorized_xforward_hosts = 127.0.0.0/8"
}
scan_smtp() { # DIR FILTER_PORT
	postconf -c "$1" -e "content_filter = scan:[127.0.0.1]:$2" 'receive_override_options = no_address_mappings'
	postconf -c "$1" -M 'scan/unix = scan unix - - n - 10 smtp'
	postconf -c "$1" -P 'scan/unix/disable_mime_output_conversion = yes' 'scan/unix/smtp_send_xforward_command = yes' \
		'scan/unix/smtp_generic_maps =' 'scan/unix/smtp_tls_security_level = none'
}
scan_lmtp() { # DIR FILTER_PORT
	postconf -c "$1" -e "content_filter = scanlmtp:inet:[127.0.0.1]:$2" 'receive_override_options = no_address_mappings'
	postconf -c "$1" -M 'scanlmtp/unix = scanlmtp unix - - n - 10 lmtp'
	postconf -c "$1" -P 'scanlmtp/unix/disable_mime_output_conversion = yes' 'scanlmtp/unix/lmtp_generic_maps ='
}
# pixelrelay runs with the GODEBUG that deploy/systemd/pixelrelay.service
# (and the Dockerfile) set, as a sidecar install would; GODEBUG= in the
# environment measures the plain binary instead.
if [ -z "${GODEBUG+set}" ]; then
	GODEBUG=$(sed -n 's/^Environment=GODEBUG=//p' deploy/systemd/pixelrelay.service)
	[ -n "$GODEBUG" ] || die "deploy/systemd/pixelrelay.service sets no GODEBUG"
fi
export GODEBUG
# And with the --max-procs of docs/postfix.md's step 5; MAX_PROCS=0 in the
# environment measures Go's default (every CPU).
if [ -z "${MAX_PROCS+set}" ]; then
	MAX_PROCS=$(sed -n 's/^"\$PIXELRELAY" serve .*--max-procs \([0-9][0-9]*\).*/\1/p' docs/postfix.md | head -1)
	[ -n "$MAX_PROCS" ] || die "docs/postfix.md's step 5 sets no --max-procs"
fi
relay() { # NAME FLAGS... : pixelrelay serve for a setup
	name=$1
	shift
	http=$(free_port)
	if [ -n "${PPROF_DIR:-}" ]; then set -- "$@" --pprof --api-token bench; fi
	"$tmp/pixelrelay" serve --http "127.0.0.1:$http" --db "$tmp/$name.db" --audit-log "$tmp/$name.audit" \
		--hostname pixelrelay.localhost --log-level warn --max-procs "$MAX_PROCS" "$@" >"$tmp/$name.relay.log" 2>&1 &
	pids="$pids $!"
	eval "${name}_relay=$! ${name}_http=$http"
}
# profile SETUP: with PPROF_DIR set, the first timed run of each pixelrelay
# setup also records a 5 s CPU profile of pixelrelay into PPROF_DIR.
profile() {
	[ -n "${PPROF_DIR:-}" ] || return 0
	case $1 in smtp | lmtp) ;; *) return 0 ;; esac
	mkdir -p "$PPROF_DIR"
	[ ! -e "$PPROF_DIR/$1.pprof" ] || return 0
	eval "http=\$${1}_http"
	python3 -c 'import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"Authorization": "Bearer bench"})
open(sys.argv[2], "wb").write(urllib.request.urlopen(req, timeout=30).read())' \
		"http://127.0.0.1:$http/debug/pprof/profile?seconds=5" "$PPROF_DIR/$1.pprof" >/dev/null &
}

instance alone
alone_port=$in_port

instance null
null_port=$in_port
p=$(free_port)
scan_smtp "$tmp/null/etc" "$p"
reinjection "$tmp/null/etc" "$p"

instance smtp
smtp_port=$in_port
filter=$(free_port) reinj=$(free_port)
scan_smtp "$tmp/smtp/etc" "$filter"
reinjection "$tmp/smtp/etc" "$reinj"
relay smtp --listen "127.0.0.1:$filter" --upstream "smtp://127.0.0.1:$reinj"
smtp_filter=$filter

instance lmtp
lmtp_port=$in_port
filter=$(free_port) reinj=$(free_port)
scan_lmtp "$tmp/lmtp/etc" "$filter"
reinjection "$tmp/lmtp/etc" "$reinj"
relay lmtp --listen-lmtp "127.0.0.1:$filter" --listen "127.0.0.1:$(free_port)" --upstream "smtp://127.0.0.1:$reinj"
lmtp_filter=$filter

for d in $instances; do
	postfix -c "$d/etc" set-permissions >/dev/null 2>&1 || true
	chown -R postfix "$d/data"
	postfix -c "$d/etc" start >/dev/null 2>&1 || die "Postfix in $d did not start: $(tail -5 "$d/postfix.log" 2>/dev/null)"
done
for p in $alone_port $null_port $smtp_port $lmtp_port $smtp_filter $lmtp_filter; do
	wait_port "$p" || die "nothing listens on 127.0.0.1:$p"
done

# settle: start every run from the same quiet machine. The run before
# leaves Postfix logs and queue-file pages to write back, and daemons
# finishing up; measured in the middle of that, the first setup of a
# round came out up to a fifth slower. Flush, then wait (at most 10 s)
# until the CPUs are 90 % idle over two half-seconds in a row.
settle() {
	sync
	n=0 i=0
	while [ $n -lt 2 ] && [ $i -lt 20 ]; do
		a=$(cpu_busy)
		sleep 0.5
		b=$(cpu_busy)
		if echo "$a $b" | awk '{exit !(100 * ($3 - $1) / ($4 - $2) <= 10)}'; then n=$((n + 1)); else n=0; fi
		i=$((i + 1))
	done
}

# run SETUP COUNT SESSIONS [LIMIT]: seconds from the first connection
# until the sink has every message; gives up after LIMIT seconds (600).
run() {
	eval "port=\$${1}_port"
	settle
	want=$(($(delivered) + $2))
	cpu_busy >"$tmp/busy.before"
	# With PERF_DIR, the first timed run of each setup is recorded
	# system-wide with perf, from just before the first connection until
	# the last message reaches the sink: "perf report -i DIR/SETUP.data
	# --sort comm -n" then shows which process spent the CPU.
	perfpid=""
	if [ -n "${PERF_DIR:-}" ] && [ ! -e "$PERF_DIR/$1.data" ] && [ "$2" -gt 100 ]; then
		mkdir -p "$PERF_DIR"
		perf record -q -a -F 499 -o "$PERF_DIR/$1.data" >/dev/null 2>&1 &
		perfpid=$!
		sleep 0.3
	fi
	# After settle, which takes up to 10 s: a profile started before it
	# recorded mostly the idle machine.
	[ "$2" -le 100 ] || profile "$1"
	t0=$(now)
	if ! smtp-source -s "$3" -m "$2" -f "$SENDER" -t "$RECIPIENT" -F "$tmp/message.eml" "127.0.0.1:$port" >"$tmp/source.out" 2>&1; then
		stop_perf
		die "smtp-source into the $1 setup failed: $(tail -3 "$tmp/source.out")"
	fi
	if ! t1=$(wait_delivered "$want" "${4:-600}"); then
		stop_perf
		die "the $1 setup did not deliver $2 messages within ${4:-600} s; its queue: $(postqueue -c "$tmp/$1/etc" -p | tail -4)"
	fi
	stop_perf
	cpu_busy >"$tmp/busy.after"
	# How busy the CPUs were during the run: saturated CPUs mean the
	# setup is CPU-bound, idle ones that it waits (disk, concurrency).
	paste -d' ' "$tmp/busy.before" "$tmp/busy.after" | awk '{printf "%.0f\n", 100 * ($3 - $1) / ($4 - $2)}' >>"$tmp/$1.busy"
	echo "$t0 $t1" | awk '{printf "%.6f", $2 - $1}'
}
stop_perf() {
	if [ -n "$perfpid" ]; then
		kill -INT "$perfpid"
		wait "$perfpid" 2>/dev/null || true
		perfpid=""
	fi
}
# cpu_busy: jiffies spent busy and in total, all CPUs (idle and iowait are
# not busy).
cpu_busy() { awk '/^cpu / {t = 0; for (i = 2; i <= NF; i++) t += $i; print t - $5 - $6, t}' /proc/stat; }

echo "Postfix sidecar benchmark: $(basename "$MESSAGE") as $size bytes, $MESSAGES messages x $SESSIONS sessions, $ROUNDS rounds; Postfix $(postconf -d -h mail_version); $(nproc) CPUs shared by everything; pixelrelay with GODEBUG=${GODEBUG:-(unset)} and --max-procs $MAX_PROCS; load average $(cut -d' ' -f1-3 /proc/loadavg)"
for s in $SETUPS; do run "$s" 50 10 60 >/dev/null; done # warm-up, and a check that each setup delivers
grep -q '"action":"strip"' "$tmp/smtp.audit" || die "the SMTP filter did not strip: $(head -c 400 "$tmp/smtp.audit")"
grep -q '"action":"strip"' "$tmp/lmtp.audit" || die "the LMTP filter did not strip: $(head -c 400 "$tmp/lmtp.audit")"

for s in $SETUPS; do : >"$tmp/$s.rate"; : >"$tmp/$s.busy"; done
: >"$tmp/smtp.ratio"
: >"$tmp/lmtp.ratio"
[ $((ROUNDS % 4)) -eq 0 ] || echo "warning: ROUNDS=$ROUNDS is no multiple of 4, so the order of the setups is not balanced" >&2
r=1
while [ $r -le "$ROUNDS" ]; do
	case $((r % 4)) in
	1) order="alone null lmtp smtp" ;;
	2) order="null smtp alone lmtp" ;;
	3) order="smtp lmtp null alone" ;;
	0) order="lmtp alone smtp null" ;;
	esac
	line="round $r:"
	for s in $order; do
		secs=$(run "$s" "$MESSAGES" "$SESSIONS")
		v=$(echo "$MESSAGES $secs" | awk '{printf "%.1f", $1 / $2}')
		echo "$v" >>"$tmp/$s.rate"
		eval "${s}_now=$v"
		line="$line  $s $v"
	done
	echo "$smtp_now $null_now" | awk '{printf "%.4f\n", $1 / $2}' >>"$tmp/smtp.ratio"
	echo "$lmtp_now $null_now" | awk '{printf "%.4f\n", $1 / $2}' >>"$tmp/lmtp.ratio"
	echo "$line msg/s"
	r=$((r + 1))
done

rss() { awk '/^VmHWM/ {printf "%.0f", $2 / 1024}' "/proc/$1/status"; }
# cpu_ms PID MESSAGES: the process's user+system CPU time per message.
cpu_ms() { awk -v n="$2" -v hz="$(getconf CLK_TCK)" '{printf "%.2f", 1000 * ($14 + $15) / hz / n}' "/proc/$1/stat"; }
# calls PID MESSAGES: the process's read and write system calls, its
# minor page faults and its context switches, per message.
calls() {
	awk -v n="$2" '/^syscr/ {r = $2} /^syscw/ {w = $2} END {printf "%.1f reads, %.1f writes", r / n, w / n}' "/proc/$1/io"
	awk -v n="$2" '{printf ", %.1f page faults", $10 / n}' "/proc/$1/stat"
	# Summed over every thread of the process: each is a sleep and a wake-up.
	cat /proc/"$1"/task/*/status | awk -v n="$2" '/^voluntary_ctxt_switches/ {v += $2} /^nonvoluntary_ctxt_switches/ {i += $2} END {printf ", %.1f context switches (%.1f involuntary)", (v + i) / n, i / n}'
}
alone=$(median <"$tmp/alone.rate")
null=$(median <"$tmp/null.rate")
smtp=$(median <"$tmp/smtp.rate")
lmtp=$(median <"$tmp/lmtp.rate")
smtp_ratio=$(median <"$tmp/smtp.ratio" | awk '{printf "%.3f", $1}')
lmtp_ratio=$(median <"$tmp/lmtp.ratio" | awk '{printf "%.3f", $1}')
echo
printf 'median msg/s (end to end, into smtp-sink): Postfix alone %.0f, null filter %.0f, pixelrelay SMTP %.0f, pixelrelay LMTP %.0f\n' "$alone" "$null" "$smtp" "$lmtp"
printf 'null filter / Postfix alone: %.3f (the cost of queueing twice)\n' "$(echo "$null $alone" | awk '{print $1 / $2}')"
printf 'CPU busy during the runs (median): alone %s %%, null %s %%, SMTP %s %%, LMTP %s %%\n' \
	"$(median <"$tmp/alone.busy")" "$(median <"$tmp/null.busy")" "$(median <"$tmp/smtp.busy")" "$(median <"$tmp/lmtp.busy")"
printf 'pixelrelay / null filter (median of per-round ratios): SMTP %s, LMTP %s (target >= %s)\n' "$smtp_ratio" "$lmtp_ratio" "$TARGET"
# The spread says how far one run's median can be trusted: this machine's
# speed drifts while a round runs, and each ratio compares runs seconds apart.
spread() { sort -n | awk '{v[NR] = $1} END {printf "%.3f-%.3f", v[1], v[NR]}'; }
printf 'per-round ratios, lowest-highest: SMTP %s, LMTP %s\n' "$(spread <"$tmp/smtp.ratio")" "$(spread <"$tmp/lmtp.ratio")"
printf 'pixelrelay peak RSS (VmHWM): SMTP %s MB, LMTP %s MB; CPU per message: SMTP %s ms, LMTP %s ms\n' \
	"$(rss "$smtp_relay")" "$(rss "$lmtp_relay")" \
	"$(cpu_ms "$smtp_relay" "$(wc -l <"$tmp/smtp.audit")")" "$(cpu_ms "$lmtp_relay" "$(wc -l <"$tmp/lmtp.audit")")"
printf 'pixelrelay system calls, page faults and context switches per message: SMTP %s; LMTP %s\n' \
	"$(calls "$smtp_relay" "$(wc -l <"$tmp/smtp.audit")")" "$(calls "$lmtp_relay" "$(wc -l <"$tmp/lmtp.audit")")"

echo "load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
status=0
for m in smtp lmtp; do
	eval "v=\$${m}_ratio"
	echo "$v $TARGET" | awk '{exit !($1 >= $2)}' || { echo "MISSED: pixelrelay over $m reaches $v of the null filter"; status=1; }
done
[ $status -eq 0 ] && echo "PASS"
exit $status
