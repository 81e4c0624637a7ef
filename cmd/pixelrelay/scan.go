package main

import (
	"bufio"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"golang.org/x/term"

	"github.com/pixelrelay/pixelrelay/report"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

const scanUsage = `usage: pixelrelay scan [--json] [--recipient ADDR]... [--rules FILE] [--beacon-base URL] PATH...

Audits stored mail for open-tracking pixels without changing anything. A PATH
is a message file (.eml), an mbox (first line "From "), a Maildir, a
directory (walked recursively), a bare HTML file (first non-blank byte "<"),
or - for stdin.

Without --json, prints a table of trackers and a summary; with --json, one
JSON object per message per line (source, message_id, trackers, error).

pixelrelay's own delivery beacons are not reported when the beacon base is
known: --beacon-base, else PIXELRELAY_BEACON_BASE, else beacon_base in
serve's configuration (--config FILE or PIXELRELAY_CONFIG).

exit codes: 0 everything was read (trackers or not), 1 usage error,
2 some input could not be read (the rest is still reported).

flags:`

// scanSink receives results in input order.
type scanSink interface {
	add(r report.ScanResult) error
	finish(s *scanSummary) error
}

// scanSummary counts what a scan saw.
type scanSummary struct {
	Messages     int
	WithTrackers int
	Trackers     int
	Unreadable   int
	WithProblems int
	ByVendor     map[string]int
}

func (s *scanSummary) add(r report.ScanResult) {
	if r.Err != nil {
		s.Unreadable++
		return
	}
	s.Messages++
	if len(r.Trackers) > 0 {
		s.WithTrackers++
	}
	if len(r.Problems) > 0 {
		s.WithProblems++
	}
	for _, f := range r.Trackers {
		s.Trackers++
		v := f.Vendor
		if v == "" {
			v = "no known vendor"
		}
		s.ByVendor[v]++
	}
}

func runScan(env *cmdEnv, args []string) int {
	fs := newFlagSet("scan", scanUsage, env.stderr)
	asJSON := fs.Bool("json", false, "print one JSON object per message per line")
	var rcpts stringList
	fs.Var(&rcpts, "recipient", "the recipient's address, which enables the recipient-identifier signal (repeatable)")
	rulesPath := fs.String("rules", "", "extra tracker rules file, layered over the built-in rules")
	htmlOut := fs.String("html", "", "also write a self-contained HTML audit report to FILE (- for stdout)")
	beaconBase := fs.String("beacon-base", "", "public base URL of pixelrelay's delivery beacons, which are then not reported (or PIXELRELAY_BEACON_BASE, or beacon_base in --config)")
	configPath := fs.String("config", "", "serve's YAML configuration, for beacon_base (or PIXELRELAY_CONFIG)")
	paths, code, stop := parseCommand(fs, args)
	if stop {
		return code
	}
	if len(paths) == 0 {
		fmt.Fprintln(env.stderr, "pixelrelay scan: no PATH given; name files, mboxes, Maildirs or directories to scan, or - for stdin")
		fmt.Fprintln(env.stderr, scanUsage)
		return 1
	}
	baseSet := false
	fs.Visit(func(f *flag.Flag) { baseSet = baseSet || f.Name == "beacon-base" })
	if !baseSet {
		fc, err := loadFilterConfig(env, *configPath)
		if err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay scan: %v\n", err)
			return 1
		}
		*beaconBase = fc.BeaconBase
	}
	eng, err := newRewriteEngine(*rulesPath, *beaconBase)
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay scan: %v\n", err)
		return 1
	}
	var htmlSum *report.Summary
	if *htmlOut != "" {
		if *htmlOut == "-" && !*asJSON {
			// The table and the page would be interleaved on stdout.
			fmt.Fprintln(env.stderr, "pixelrelay scan: --html - writes the report to stdout; add --json to send the findings elsewhere, or name a file")
			return 1
		}
		if err := checkNotInput(*htmlOut, paths); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay scan: %v\n", err)
			return 1
		}
		htmlSum = report.NewSummary()
		htmlSum.AddSource("scan of " + strings.Join(paths, ", "))
	}
	stdout := env.stdout
	if *htmlOut == "-" {
		stdout = io.Discard
	}
	out := bufio.NewWriterSize(stdout, 64<<10)
	var sink scanSink
	if *asJSON {
		sink = &jsonSink{w: out}
	} else {
		sink = newTableSink(out)
	}
	sc := &scanner{eng: eng, rcpts: rcpts, stdin: env.stdin, stderr: env.stderr}
	inputs := collectInputs(paths)
	sc.progress = newProgress(env.stderr, inputs)
	sum := &scanSummary{ByVendor: map[string]int{}}
	failed := false
	emit := func(r report.ScanResult) {
		sum.add(r)
		if htmlSum != nil {
			htmlSum.AddScan(r)
		}
		if r.Err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay scan: %s: %v\n", r.Source, r.Err)
		}
		if err := sink.add(r); err != nil && !failed {
			failed = true
			fmt.Fprintf(env.stderr, "pixelrelay scan: writing output: %v\n", err)
		}
	}
	for _, in := range inputs {
		sc.scanInput(in, emit)
	}
	sc.progress.done()
	if err := sink.finish(sum); err != nil && !failed {
		failed = true
		fmt.Fprintf(env.stderr, "pixelrelay scan: writing output: %v\n", err)
	}
	if err := out.Flush(); err != nil && !failed {
		failed = true
		fmt.Fprintf(env.stderr, "pixelrelay scan: writing output: %v\n", err)
	}
	if htmlSum != nil {
		if err := writeReport(*htmlOut, env.stdout, htmlSum, report.Options{Generated: time.Now(), Version: version}); err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay scan: writing the HTML report: %v\n", err)
			return 2
		}
	}
	if sum.Unreadable > 0 || failed {
		return 2
	}
	return 0
}

// scanner runs the rewrite engine in Keep mode over every message.
type scanner struct {
	eng      *rewrite.Engine
	rcpts    []string
	stdin    io.Reader
	stderr   io.Writer
	progress *progress
}

func (sc *scanner) scanInput(in scanInput, emit func(report.ScanResult)) {
	if in.err != nil {
		emit(report.ScanResult{Source: in.path, Err: in.err})
		return
	}
	var r io.Reader
	if in.stdin {
		r = sc.stdin
	} else {
		f, err := os.Open(in.path)
		if err != nil {
			emit(report.ScanResult{Source: in.path, Err: err})
			return
		}
		defer f.Close()
		r = f
	}
	counted := sc.progress.reader(r)
	br := bufio.NewReaderSize(counted, 64<<10)
	switch sniff(br) {
	case kindMbox:
		mb := newMboxReader(br)
		for i := 1; ; i++ {
			msg := mb.next()
			if msg == nil {
				break
			}
			emit(sc.scanOne(in.path+"#"+strconv.Itoa(i), msg))
		}
		if mb.err != nil {
			emit(report.ScanResult{Source: in.path, Err: mb.err})
		}
	case kindHTML:
		emit(sc.scanOne(in.path, htmlAsMessage(br)))
	default:
		emit(sc.scanOne(in.path, br))
	}
	sc.progress.fileDone()
}

func (sc *scanner) scanOne(source string, r io.Reader) report.ScanResult {
	rep, err := sc.eng.Rewrite(io.Discard, r, rewrite.Decision{Action: rewrite.Keep, Recipients: sc.rcpts})
	res := report.ScanResult{Source: source, MessageID: rep.MessageID, Trackers: rep.Trackers, Problems: rep.Problems}
	if err != nil {
		var ioe *rewrite.IOError
		if errors.As(err, &ioe) {
			err = ioe.Err
		}
		res.Err = err
	}
	if res.Trackers == nil {
		res.Trackers = []rewrite.Finding{}
	}
	return res
}

// jsonSink prints the CONTRACTS.md scan --json lines.
type jsonSink struct{ w io.Writer }

func (s *jsonSink) add(r report.ScanResult) error {
	rec := messageRecord{Source: r.Source, MessageID: r.MessageID, Trackers: r.Trackers, Problems: r.Problems}
	if rec.Trackers == nil {
		rec.Trackers = []rewrite.Finding{}
	}
	if r.Err != nil {
		rec.Error = r.Err.Error()
	}
	return json.NewEncoder(s.w).Encode(rec)
}

func (s *jsonSink) finish(*scanSummary) error { return nil }

// tableSink prints one row per tracker, then a summary.
type tableSink struct {
	w    io.Writer
	tw   *tabwriter.Writer
	rows int
}

func newTableSink(w io.Writer) *tableSink {
	return &tableSink{w: w, tw: tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)}
}

func (s *tableSink) add(r report.ScanResult) error {
	if s.rows == 0 && (r.Err != nil || len(r.Trackers) > 0) {
		fmt.Fprintln(s.tw, "SOURCE\tPART\tVECTOR\tVENDOR\tREASONS\tURL")
	}
	if r.Err != nil {
		s.rows++
		_, err := fmt.Fprintf(s.tw, "%s\t-\t-\t-\tunreadable\t%v\n", r.Source, r.Err)
		return err
	}
	for _, f := range r.Trackers {
		s.rows++
		vendor := f.Vendor
		if vendor == "" {
			vendor = "-"
		}
		if _, err := fmt.Fprintf(s.tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Source, f.Part, f.Vector, vendor, strings.Join(f.Reasons, ","), f.URL); err != nil {
			return err
		}
	}
	return nil
}

func (s *tableSink) finish(sum *scanSummary) error {
	if err := s.tw.Flush(); err != nil {
		return err
	}
	if s.rows > 0 {
		fmt.Fprintln(s.w)
	}
	fmt.Fprintf(s.w, "%d %s scanned, %d with trackers, %d %s", sum.Messages, plural(sum.Messages, "message", "messages"),
		sum.WithTrackers, sum.Trackers, plural(sum.Trackers, "tracker", "trackers"))
	if len(sum.ByVendor) > 0 {
		vendors := make([]string, 0, len(sum.ByVendor))
		for v := range sum.ByVendor {
			vendors = append(vendors, v)
		}
		sort.Slice(vendors, func(i, j int) bool {
			if sum.ByVendor[vendors[i]] != sum.ByVendor[vendors[j]] {
				return sum.ByVendor[vendors[i]] > sum.ByVendor[vendors[j]]
			}
			return vendors[i] < vendors[j]
		})
		parts := make([]string, len(vendors))
		for i, v := range vendors {
			parts[i] = fmt.Sprintf("%s %d", v, sum.ByVendor[v])
		}
		fmt.Fprintf(s.w, " (%s)", strings.Join(parts, ", "))
	}
	if sum.WithProblems > 0 {
		fmt.Fprintf(s.w, "; %d with malformed parts passed through (see --json \"problems\")", sum.WithProblems)
	}
	if sum.Unreadable > 0 {
		fmt.Fprintf(s.w, "; %d unreadable", sum.Unreadable)
	}
	_, err := fmt.Fprintln(s.w)
	return err
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// progress draws a one-line indicator on stderr, only when stderr is a
// terminal and the input is large enough for a wait to be noticeable.
type progress struct {
	w                io.Writer
	on               bool
	files, filesDone int
	total, bytesDone int64
	last             time.Time
	start            time.Time
}

const (
	progressMinBytes = 32 << 20
	progressMinFiles = 500
)

func newProgress(stderr io.Writer, inputs []scanInput) *progress {
	p := &progress{w: stderr, files: len(inputs), start: time.Now()}
	for _, in := range inputs {
		if in.size > 0 {
			p.total += in.size
		}
	}
	f, ok := stderr.(*os.File)
	p.on = ok && term.IsTerminal(int(f.Fd())) && (p.total >= progressMinBytes || p.files >= progressMinFiles)
	return p
}

func (p *progress) reader(r io.Reader) io.Reader {
	if !p.on {
		return r
	}
	return &countingReader{r: r, p: p}
}

type countingReader struct {
	r io.Reader
	p *progress
}

func (c *countingReader) Read(b []byte) (int, error) {
	n, err := c.r.Read(b)
	c.p.bytesDone += int64(n)
	c.p.draw(false)
	return n, err
}

func (p *progress) fileDone() {
	p.filesDone++
	p.draw(false)
}

func (p *progress) draw(force bool) {
	if !p.on {
		return
	}
	now := time.Now()
	if !force && now.Sub(p.last) < 150*time.Millisecond {
		return
	}
	p.last = now
	pct := 0
	if p.total > 0 {
		pct = int(p.bytesDone * 100 / p.total)
	}
	fmt.Fprintf(p.w, "\rscanning: %d/%d files, %d/%d MB (%d%%)\x1b[K", p.filesDone, p.files, p.bytesDone>>20, p.total>>20, pct)
}

func (p *progress) done() {
	if p.on {
		fmt.Fprint(p.w, "\r\x1b[K")
	}
}
