package report

import (
	"sort"
	"time"

	"github.com/pixelrelay/pixelrelay/relay"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// MaxItems is how many distinct values (vendors, hosts, sender domains,
// campaigns, …) one tally itemises. Beyond it, new values are counted
// together as "others", so a log with millions of one-off campaign names
// cannot exhaust memory.
const MaxItems = 10000

// ScanResult is what `pixelrelay scan` found in one message: the fields of
// one `scan --json` line.
type ScanResult struct {
	// Source is the file, "file#N" for the Nth message of an mbox, or "-".
	Source    string
	MessageID string
	Trackers  []rewrite.Finding
	// Problems are non-fatal notes (malformed MIME passed through).
	Problems []string
	// Err is set when the message could not be read; it is then counted
	// as unreadable and its Trackers are ignored.
	Err error
}

// Summary accumulates everything the report shows. Create it with
// NewSummary; it is not safe for concurrent use.
type Summary struct {
	audit   auditStats
	scan    scanStats
	sources []*source
	skipped int
	// skips keeps the first few skipped lines so the report can show what
	// they were; the rest are only counted.
	skips []skippedLine
}

// maxSkipSamples is how many skipped lines the report lists by name.
const maxSkipSamples = 20

type skippedLine struct {
	source string
	line   int
	reason string
}

// source is one input: a file given to Read, or a named group of values
// added with AddSource.
type source struct {
	name         string
	lines        int
	auditRecords int
	scanResults  int
	skipped      int
	chain        chain
}

// trackerStats is what the trackers of a set of messages add up to, the
// same for relayed (audit) and scanned mail.
type trackerStats struct {
	messages     int
	withTrackers int
	trackers     int
	withProblems int
	vendors      *tally
	unattributed *tally // hosts of trackers with no known vendor
	vectors      *tally
	reasons      *tally
}

func newTrackerStats() trackerStats {
	return trackerStats{vendors: newTally(), unattributed: newTally(), vectors: newTally(), reasons: newTally()}
}

// addMessage counts one message carrying n trackers and returns the
// function that counts each of them. A vendor, vector or reason counts once
// per message however many of its findings the message carries ("how many
// messages did Mailchimp track" is the question); the finding count is
// kept beside it.
func (c *trackerStats) addMessage(n int, problems bool) func(vendor, host, vector string, reasons []string) {
	c.messages++
	if n > 0 {
		c.withTrackers++
	}
	c.trackers += n
	if problems {
		c.withProblems++
	}
	seen := map[string]bool{}
	once := func(t *tally, ns, key string) {
		first := !seen[ns+key]
		seen[ns+key] = true
		m := 0
		if first {
			m = 1
		}
		t.add(key, m, first, 1, 0)
	}
	return func(vendor, host, vector string, reasons []string) {
		once(c.vendors, "v:", vendor)
		if vendor == "" {
			once(c.unattributed, "h:", orDash(host))
		}
		once(c.vectors, "x:", orDash(vector))
		for _, reason := range reasons {
			once(c.reasons, "r:", reason)
		}
	}
}

// tallies names the tallies that may overflow, as the report lists them.
func (c *trackerStats) tallies() map[string]*tally {
	return map[string]*tally{"vendors": c.vendors, "hosts": c.unattributed}
}

// auditStats is what the audit records add up to.
type auditStats struct {
	trackerStats
	dryRun int
	// copies counts recipient copies the upstream accepted, by what was
	// done to them; notDelivered counts the ones it did not.
	copies       map[string]int
	notDelivered int
	consent      *tally
	outcomes     *tally
	senders      *tally
	campaigns    *tally
	tenants      *tally
	first, last  time.Time
}

// scanStats is what the scan results add up to.
type scanStats struct {
	trackerStats
	unreadable int
}

// What happened to one delivered recipient copy. The keys are also the
// CSS classes of the chart segments.
const (
	copyStripped    = "stripped"
	copyBeaconed    = "beaconed"
	copyKept        = "kept"         // trackers kept: the recipient granted consent
	copyKeptNoGrant = "kept-nogrant" // trackers kept without a recorded grant
	copyDryRun      = "dryrun"
	copyClean       = "clean" // the message had no tracker to act on
)

// NewSummary returns an empty Summary.
func NewSummary() *Summary {
	return &Summary{
		audit: auditStats{
			trackerStats: newTrackerStats(),
			copies:       map[string]int{},
			consent:      newTally(),
			outcomes:     newTally(),
			senders:      newTally(),
			campaigns:    newTally(),
			tenants:      newTally(),
		},
		scan: scanStats{trackerStats: newTrackerStats()},
	}
}

// AddSource starts a new named input; the values added after it are
// listed under that name in the report's "Sources" table. Read calls it
// itself; call it before AddAudit or AddScan only to name values fed
// directly.
func (s *Summary) AddSource(name string) {
	s.sources = append(s.sources, &source{name: name})
}

func (s *Summary) current() *source {
	if len(s.sources) == 0 {
		s.AddSource("(direct input)")
	}
	return s.sources[len(s.sources)-1]
}

// AddAudit counts one audit record.
func (s *Summary) AddAudit(r *relay.AuditRecord) {
	s.current().auditRecords++
	a := &s.audit
	count := a.addMessage(len(r.Trackers), len(r.Problems) > 0)
	for _, t := range r.Trackers {
		count(t.Vendor, t.Host, t.Vector, t.Reasons)
	}
	hasTrackers := len(r.Trackers) > 0
	if r.DryRun {
		a.dryRun++
	}
	if !r.Time.IsZero() {
		if a.first.IsZero() || r.Time.Before(a.first) {
			a.first = r.Time
		}
		if r.Time.After(a.last) {
			a.last = r.Time
		}
	}
	a.outcomes.add(orDash(r.Outcome), 1, hasTrackers, 0, 0)
	a.senders.add(orDash(r.SenderDomain), 1, hasTrackers, len(r.Trackers), len(r.Recipients))
	if r.Campaign != "" {
		a.campaigns.add(r.Campaign, 1, hasTrackers, len(r.Trackers), len(r.Recipients))
	}
	a.tenants.add(orValue(r.Tenant, "default"), 1, hasTrackers, len(r.Trackers), len(r.Recipients))

	// A message deferred, refused or rejected as a whole reached no one,
	// whatever its recipients' status fields say.
	none := r.Outcome == "deferred" || r.Outcome == "refused" || r.Outcome == "rejected"
	for _, rc := range r.Recipients {
		// A copy the upstream did not take was not delivered: it is
		// retried (and logged again) or bounced, so counting it here would
		// count the same copy twice or a copy nobody received.
		if none || rc.Status >= 400 {
			a.notDelivered++
			continue
		}
		a.consent.add(orValue(rc.Consent, "unknown"), 0, false, 0, 1)
		a.copies[copyKind(r, rc, hasTrackers)]++
	}
}

// copyKind classifies what was done to one delivered recipient copy.
func copyKind(r *relay.AuditRecord, rc relay.AuditRecipient, hasTrackers bool) string {
	switch {
	case !hasTrackers:
		return copyClean
	case r.DryRun:
		return copyDryRun
	case rc.Action == string(rewrite.Strip):
		return copyStripped
	case rc.Action == string(rewrite.Beacon):
		return copyBeaconed
	case rc.Action == string(rewrite.Keep) && rc.Consent == "granted":
		return copyKept
	default:
		// Trackers kept without a grant (or an action this report does not
		// know): exactly what a compliance officer must see.
		return copyKeptNoGrant
	}
}

// AddScan counts one scanned message.
func (s *Summary) AddScan(r ScanResult) {
	s.current().scanResults++
	c := &s.scan
	if r.Err != nil {
		c.unreadable++
		return
	}
	count := c.addMessage(len(r.Trackers), len(r.Problems) > 0)
	for _, f := range r.Trackers {
		count(f.Vendor, f.Host, f.Vector, f.Reasons)
	}
}

// skip counts a line that is not a record.
func (s *Summary) skip(src *source, line int, reason string) {
	s.skipped++
	src.skipped++
	if len(s.skips) < maxSkipSamples {
		s.skips = append(s.skips, skippedLine{source: src.name, line: line, reason: reason})
	}
}

// Counts is a few totals, for a command's closing line.
type Counts struct {
	// AuditMessages is the number of audit records read.
	AuditMessages int
	// ScanMessages is the number of scan results, unreadable ones included.
	ScanMessages int
	// Skipped is the number of lines that were not records.
	Skipped int
	// ChainBroken names the sources whose hash chain does not verify.
	ChainBroken []string
}

// Counts returns the totals so far.
func (s *Summary) Counts() Counts {
	c := Counts{
		AuditMessages: s.audit.messages,
		ScanMessages:  s.scan.messages + s.scan.unreadable,
		Skipped:       s.skipped,
	}
	for _, src := range s.sources {
		if src.chain.records > 0 && src.chain.brokenLine > 0 {
			c.ChainBroken = append(c.ChainBroken, src.name)
		}
	}
	return c
}

func orDash(s string) string { return orValue(s, "") }

func orValue(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// row is one itemised value of a tally.
type row struct {
	key          string
	messages     int
	withTrackers int
	trackers     int
	recipients   int
}

// tally counts by key, itemising at most MaxItems keys.
type tally struct {
	rows map[string]*row
	// others adds up the values that arrived after the limit. How many
	// distinct values it holds is not known: that would take the memory
	// the limit saves.
	others    row
	overflown bool
}

func newTally() *tally { return &tally{rows: map[string]*row{}} }

func (t *tally) add(key string, messages int, withTrackers bool, trackers, recipients int) {
	r, ok := t.rows[key]
	if !ok {
		if len(t.rows) >= MaxItems {
			t.overflown = true
			r = &t.others
		} else {
			r = &row{key: key}
			t.rows[key] = r
		}
	}
	r.messages += messages
	if withTrackers {
		r.withTrackers++
	}
	r.trackers += trackers
	r.recipients += recipients
}

func (t *tally) get(key string) row {
	if r, ok := t.rows[key]; ok {
		return *r
	}
	return row{key: key}
}

func (t *tally) len() int { return len(t.rows) }

// sorted returns the rows ordered by less, then by key so that equal
// counts always list in the same order.
func (t *tally) sorted(less func(a, b row) bool) []row {
	out := make([]row, 0, len(t.rows))
	for _, r := range t.rows {
		out = append(out, *r)
	}
	sort.Slice(out, func(i, j int) bool {
		if less(out[i], out[j]) {
			return true
		}
		if less(out[j], out[i]) {
			return false
		}
		return out[i].key < out[j].key
	})
	return out
}

func byMessages(a, b row) bool { return a.messages > b.messages }
func byRecipients(a, b row) bool {
	return a.recipients > b.recipients
}
