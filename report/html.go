package report

import (
	_ "embed"
	"fmt"
	"html/template"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

//go:embed report.html.tmpl
var pageTemplate string

// tmpl is parsed once; html/template escapes every value by its context
// (text, attribute, SVG), which is what keeps a hostile log value inert.
var tmpl = template.Must(template.New("report").Funcs(template.FuncMap{
	// dict3 hands a caption, a column head and rows to a table template.
	"dict3": func(caption, head string, rows any) any {
		return struct {
			Caption, Head string
			Rows          any
		}{caption, head, rows}
	},
	"maxItems": func() string { return num(MaxItems) },
}).Parse(pageTemplate))

// Options control what WriteHTML puts around the numbers.
type Options struct {
	// Title heads the page; the default names what the report covers.
	Title string
	// Generated is shown in the header; the zero time leaves it out (for
	// reproducible output).
	Generated time.Time
	// Version is the pixelrelay version, shown in the footer.
	Version string
	// Top is how many rows the top-senders and top-campaigns tables show
	// (default 10).
	Top int
	// Bars is how many vendors the chart shows before grouping the rest
	// (default 12).
	Bars int
}

// WriteHTML writes the report page for s to w.
func WriteHTML(w io.Writer, s *Summary, opts Options) error {
	if opts.Top <= 0 {
		opts.Top = 10
	}
	if opts.Bars <= 0 {
		opts.Bars = 12
	}
	return tmpl.Execute(w, buildPage(s, opts))
}

// page is everything the template shows, already counted, sorted,
// formatted and laid out: the template only places it.
type page struct {
	Title     string
	Period    string
	Generated string
	Version   string
	Empty     bool
	Audit     *auditView
	Scan      *scanView
	Sources   []sourceView
	Skipped   string
	Skips     []skipView
	SkipsMore string
	Broken    []string
}

type kpi struct{ Value, Label, Note string }

// trackerView is the part the audit and the scan sections share.
type trackerView struct {
	KPIs         []kpi
	Problems     string
	Vendors      chart
	Unattributed []tableRow
	Vectors      []tableRow
	Reasons      []tableRow
	Overflow     []string
}

type auditView struct {
	trackerView
	DryRun       string
	NoGrant      string
	Actions      shares
	NotDelivered string
	Consent      shares
	Senders      []topRow
	Campaigns    []topRow
	Tenants      []topRow
	Outcomes     []tableRow
	Top          int
}

type scanView struct{ trackerView }

type sourceView struct {
	Name, Lines, Records, Skipped, Chain string
	Bad                                  bool
}

type skipView struct{ Where, Reason string }

type tableRow struct {
	Name, Count, Share string
	Muted              bool
}

type topRow struct {
	Name, Messages, WithTrackers, Share, Recipients string
}

// chart is a horizontal bar chart, laid out twice: wide (labels beside
// the bars) for screens and paper, narrow (labels above) for phones, where
// the wide one would shrink its text below reading size. CSS shows one.
type chart struct {
	Wide, Narrow layout
	Desc         string
}

// layout is one arrangement of a chart, in SVG user units; the SVG scales
// to the width it is given.
type layout struct {
	Class         string
	Width, Height int
	BarHeight     int
	Bars          []bar
}

type bar struct {
	Label, Tip, Value string
	LabelX, LabelY    int
	BarX, BarY, W     int
	ValueX, ValueY    int
	Unknown           bool
}

// shares is one whole split into parts: a stacked bar and its legend.
type shares struct {
	Total    string
	Desc     string
	Segments []segment
	Rows     []shareRow
}

type segment struct {
	Class, Tip string
	X, W       string
}

type shareRow struct {
	Class, Label, Help, Count, Share string
	Warn                             bool
}

// Chart geometry, in SVG user units.
const (
	wideWidth      = 760
	wideLabelEnd   = 196 // labels end here, right-aligned
	wideBarX       = 206
	wideBarMax     = 430
	wideRow        = 30
	wideBar        = 18
	narrowWidth    = 360
	narrowBarMax   = 262
	narrowRow      = 44
	narrowBar      = 14
	chartPad       = 6
	wideLabelLen   = 28
	narrowLabelLen = 44
)

func buildPage(s *Summary, opts Options) *page {
	p := &page{Version: opts.Version}
	a, c := &s.audit, &s.scan
	switch {
	case opts.Title != "":
		p.Title = opts.Title
	case a.messages == 0 && c.messages+c.unreadable > 0:
		p.Title = "Open-tracking scan report"
	default:
		p.Title = "Open-tracking audit report"
	}
	if !opts.Generated.IsZero() {
		p.Generated = opts.Generated.UTC().Format("2 January 2006, 15:04 MST")
	}
	if !a.first.IsZero() {
		p.Period = period(a.first, a.last)
	}
	if a.messages > 0 {
		p.Audit = buildAudit(a, opts)
	}
	if c.messages+c.unreadable > 0 {
		p.Scan = buildScan(c, opts)
	}
	p.Empty = p.Audit == nil && p.Scan == nil
	for _, src := range s.sources {
		text, bad := src.chain.state()
		if src.scanResults > 0 && src.auditRecords == 0 {
			text = "not applicable (scan results)"
		}
		p.Sources = append(p.Sources, sourceView{
			Name:    src.name,
			Lines:   num(src.lines),
			Records: num(src.auditRecords + src.scanResults),
			Skipped: num(src.skipped),
			Chain:   text,
			Bad:     bad,
		})
		if bad {
			p.Broken = append(p.Broken, src.name)
		}
	}
	if s.skipped > 0 {
		p.Skipped = num(s.skipped)
		for _, sk := range s.skips {
			p.Skips = append(p.Skips, skipView{Where: fmt.Sprintf("%s:%d", sk.source, sk.line), Reason: sk.reason})
		}
		if more := s.skipped - len(s.skips); more > 0 {
			p.SkipsMore = num(more)
		}
	}
	return p
}

// view lays out the tracker figures of messages, which is "messages
// relayed" or "messages scanned": the first three KPIs, the vendor chart,
// the tables and the tallies that overflowed.
func (c *trackerStats) view(opts Options, messages string) trackerView {
	v := trackerView{
		KPIs: []kpi{
			{Value: num(c.messages), Label: messages},
			{Value: pct(c.withTrackers, c.messages), Label: "carried trackers", Note: num(c.withTrackers) + " messages"},
			{Value: num(c.trackers), Label: "trackers found", Note: sourcesNote(c.vendors, c.unattributed)},
		},
		Vendors:      vendorChart(c.vendors, c.messages, opts.Bars, messages),
		Unattributed: countRows(c.unattributed, opts.Top, c.messages),
		Vectors:      countRows(c.vectors, opts.Top, c.messages),
		Reasons:      countRows(c.reasons, opts.Top, c.messages),
		Overflow:     overflown(c.tallies()),
	}
	if c.withProblems > 0 {
		v.Problems = num(c.withProblems)
	}
	return v
}

// overflown names, sorted, the tallies that reached MaxItems.
func overflown(tallies map[string]*tally) []string {
	var names []string
	for name, t := range tallies {
		if t.overflown {
			names = append(names, name)
		}
	}
	sort.Strings(names)
	return names
}

func buildAudit(a *auditStats, opts Options) *auditView {
	v := &auditView{trackerView: a.view(opts, "messages relayed"), Top: opts.Top}
	copies := 0
	for _, n := range a.copies {
		copies += n
	}
	v.KPIs = append(v.KPIs, kpi{Value: num(copies), Label: "recipient copies delivered"})
	if a.dryRun > 0 {
		v.DryRun = num(a.dryRun)
	}
	if n := a.copies[copyKeptNoGrant]; n > 0 {
		v.NoGrant = num(n)
	}

	v.Actions = buildShares(copies, []shareRow{
		{Class: copyStripped, Label: "Stripped", Help: "trackers removed: the recipient had not granted consent"},
		{Class: copyBeaconed, Label: "Beaconed", Help: "trackers replaced by a delivery-only campaign beacon"},
		{Class: copyKept, Label: "Kept with consent", Help: "the recipient granted open-tracking consent"},
		{Class: copyDryRun, Label: "Dry run", Help: "forwarded unchanged; the action was only recorded"},
		{Class: copyKeptNoGrant, Label: "Kept without a recorded grant", Help: "trackers reached a recipient with no grant on record", Warn: true},
		{Class: copyClean, Label: "Nothing to act on", Help: "the message carried no tracker"},
	}, func(class string) int { return a.copies[class] })
	if a.notDelivered > 0 {
		v.NotDelivered = num(a.notDelivered)
	}

	consentRows := []shareRow{
		{Class: "granted", Label: "Granted", Help: "opted in to open tracking"},
		{Class: "denied", Label: "Denied", Help: "declined open tracking"},
		{Class: "withdrawn", Label: "Withdrawn", Help: "granted, then withdrew"},
		{Class: "unknown", Label: "Unknown", Help: "no decision on record: treated as no consent"},
		{Class: "error", Label: "Lookup failed", Help: "the consent store did not answer: treated as no consent"},
	}
	known := map[string]bool{}
	for _, r := range consentRows {
		known[r.Class] = true
	}
	otherStates := 0
	var otherNames []string
	for _, r := range a.consent.sorted(byRecipients) {
		if !known[r.key] {
			otherStates += r.recipients
			otherNames = append(otherNames, r.key)
		}
	}
	if otherStates > 0 {
		consentRows = append(consentRows, shareRow{Class: "other", Label: "Other", Help: "states this report does not know: " + clip(strings.Join(otherNames, ", "), 120), Warn: true})
	}
	v.Consent = buildShares(copies, consentRows, func(class string) int {
		if class == "other" {
			return otherStates + a.consent.others.recipients
		}
		return a.consent.get(class).recipients
	})

	v.Senders = topRows(a.senders, opts.Top, "(no sender domain)")
	v.Campaigns = topRows(a.campaigns, opts.Top, "")
	if a.tenants.len() > 1 {
		v.Tenants = topRows(a.tenants, opts.Top, "")
	}
	// Outcomes list in the order a message can end, then any others.
	order := map[string]int{"delivered": 1, "partial": 2, "deferred": 3, "refused": 4, "rejected": 5}
	outcomes := a.outcomes.sorted(func(x, y row) bool {
		ox, oy := order[x.key], order[y.key]
		if ox == 0 {
			ox = len(order) + 1
		}
		if oy == 0 {
			oy = len(order) + 1
		}
		return ox < oy
	})
	for _, r := range outcomes {
		v.Outcomes = append(v.Outcomes, tableRow{Name: orValue(r.key, "(none)"), Count: num(r.messages), Share: pct(r.messages, a.messages)})
	}
	tallies := a.tallies()
	for name, t := range map[string]*tally{"sender domains": a.senders, "campaigns": a.campaigns, "tenants": a.tenants, "consent states": a.consent} {
		tallies[name] = t
	}
	v.Overflow = overflown(tallies)
	return v
}

func buildScan(c *scanStats, opts Options) *scanView {
	v := &scanView{c.view(opts, "messages scanned")}
	v.KPIs = append(v.KPIs, kpi{Value: num(c.unreadable), Label: "unreadable", Note: "not counted above"})
	return v
}

// sourcesNote says whom the trackers belong to: "4 vendors, 2 unknown hosts".
func sourcesNote(vendors, unattributed *tally) string {
	known := vendors.len()
	if vendors.get("").messages > 0 {
		known--
	}
	var parts []string
	if known > 0 {
		parts = append(parts, num(known)+" "+plural(known, "vendor", "vendors"))
	}
	if n := unattributed.len(); n > 0 {
		parts = append(parts, num(n)+" unknown "+plural(n, "host", "hosts"))
	}
	return strings.Join(parts, ", ")
}

// vendorChart lays out one bar per vendor, by messages, the longest first;
// vendors past max are grouped into one last bar.
func vendorChart(t *tally, total, max int, of string) chart {
	rows := t.sorted(byMessages)
	var others row
	nOthers := 0
	if len(rows) > max {
		for _, r := range rows[max-1:] {
			others.messages += r.messages
			others.trackers += r.trackers
			nOthers++
		}
		rows = rows[:max-1]
	}
	if t.overflown {
		others.messages += t.others.messages
		others.trackers += t.others.trackers
		nOthers++
	}
	peak := 1
	for _, r := range rows {
		if r.messages > peak {
			peak = r.messages
		}
	}
	if others.messages > peak {
		peak = others.messages
	}
	ch := chart{
		Wide:   layout{Class: "wide", Width: wideWidth, BarHeight: wideBar},
		Narrow: layout{Class: "narrow", Width: narrowWidth, BarHeight: narrowBar},
	}
	var desc []string
	place := func(label string, r row, unknown bool) {
		i := len(ch.Wide.Bars)
		value := num(r.messages) + " · " + pct(r.messages, total)
		tip := fmt.Sprintf("%s: %s of %s %s (%s), %s %s", label, num(r.messages), num(total), of, pct(r.messages, total), num(r.trackers), plural(r.trackers, "tracker", "trackers"))
		width := func(max int) int {
			w := r.messages * max / peak
			if w < 2 && r.messages > 0 {
				w = 2 // a vendor seen once still shows
			}
			return w
		}
		y := chartPad + i*wideRow
		w := width(wideBarMax)
		ch.Wide.Bars = append(ch.Wide.Bars, bar{
			Label: clip(label, wideLabelLen), Tip: tip, Value: value, Unknown: unknown,
			LabelX: wideLabelEnd, LabelY: y + wideRow/2 + 4,
			BarX: wideBarX, BarY: y + (wideRow-wideBar)/2, W: w,
			ValueX: wideBarX + w + 8, ValueY: y + wideRow/2 + 4,
		})
		y = chartPad + i*narrowRow
		w = width(narrowBarMax)
		ch.Narrow.Bars = append(ch.Narrow.Bars, bar{
			Label: clip(label, narrowLabelLen), Tip: tip, Value: value, Unknown: unknown,
			LabelX: 0, LabelY: y + 14,
			BarX: 0, BarY: y + 21, W: w,
			ValueX: w + 6, ValueY: y + 21 + narrowBar/2 + 4,
		})
		desc = append(desc, fmt.Sprintf("%s %s", label, num(r.messages)))
	}
	for _, r := range rows {
		if r.key == "" {
			place("No known vendor", r, true)
		} else {
			place(r.key, r, false)
		}
	}
	if nOthers > 0 {
		label := fmt.Sprintf("%d other vendors", nOthers)
		if t.overflown {
			label = "Other vendors"
		}
		place(label, others, true)
	}
	ch.Wide.Height = chartPad*2 + len(ch.Wide.Bars)*wideRow
	ch.Narrow.Height = chartPad*2 + len(ch.Narrow.Bars)*narrowRow
	ch.Desc = "Messages with trackers, by vendor: " + strings.Join(desc, "; ")
	return ch
}

// countRows lists a tally's values by messages, with their share of total.
func countRows(t *tally, max, total int) []tableRow {
	var out []tableRow
	rows := t.sorted(byMessages)
	for i, r := range rows {
		if i == max {
			rest := 0
			for _, r := range rows[i:] {
				rest += r.messages
			}
			out = append(out, tableRow{Name: fmt.Sprintf("%d more", len(rows)-i), Count: num(rest), Muted: true})
			break
		}
		out = append(out, tableRow{Name: r.key, Count: num(r.messages), Share: pct(r.messages, total)})
	}
	return out
}

// topRows lists the busiest senders or campaigns.
func topRows(t *tally, max int, empty string) []topRow {
	var out []topRow
	for i, r := range t.sorted(byMessages) {
		if i == max {
			break
		}
		out = append(out, topRow{
			Name:         orValue(r.key, empty),
			Messages:     num(r.messages),
			WithTrackers: num(r.withTrackers),
			Share:        pct(r.withTrackers, r.messages),
			Recipients:   num(r.recipients),
		})
	}
	return out
}

// buildShares fills a stacked bar and its legend; rows with no count are
// left out, except the first three, which a reader expects to see even at
// zero.
func buildShares(total int, rows []shareRow, count func(class string) int) shares {
	sh := shares{Total: num(total)}
	x := 0.0
	for i, r := range rows {
		n := count(r.Class)
		if n == 0 && (i >= 3 || r.Warn) {
			continue
		}
		r.Count, r.Share = num(n), pct(n, total)
		sh.Rows = append(sh.Rows, r)
		if n == 0 || total == 0 {
			continue
		}
		w := float64(n) * 1000 / float64(total)
		sh.Segments = append(sh.Segments, segment{
			Class: r.Class,
			Tip:   fmt.Sprintf("%s: %s (%s)", r.Label, r.Count, r.Share),
			X:     strconv.FormatFloat(x, 'f', 2, 64),
			W:     strconv.FormatFloat(w, 'f', 2, 64),
		})
		x += w
	}
	var desc []string
	for _, seg := range sh.Segments {
		desc = append(desc, seg.Tip)
	}
	sh.Desc = strings.Join(desc, "; ")
	return sh
}

func period(first, last time.Time) string {
	first, last = first.UTC(), last.UTC()
	const day = "2 January 2006"
	if first.Format(day) == last.Format(day) {
		return first.Format(day+", 15:04") + " – " + last.Format("15:04 MST")
	}
	return first.Format(day+", 15:04") + " – " + last.Format(day+", 15:04 MST")
}

// num formats a count with thousands separators.
func num(n int) string {
	s := strconv.Itoa(n)
	if n < 0 {
		return "-" + num(-n)
	}
	for i := len(s) - 3; i > 0; i -= 3 {
		s = s[:i] + "," + s[i:]
	}
	return s
}

// pct formats part/whole to one decimal, never rounding a non-zero share
// to 0 or a partial one to 100.
func pct(part, whole int) string {
	if whole == 0 {
		return "–"
	}
	v := float64(part) * 100 / float64(whole)
	switch {
	case part > 0 && v < 0.1:
		return "<0.1%"
	case part < whole && v > 99.9:
		return ">99.9%"
	}
	return strconv.FormatFloat(v, 'f', 1, 64) + "%"
}

func plural(n int, one, many string) string {
	if n == 1 {
		return one
	}
	return many
}

// clip shortens s to max runes, marking the cut.
func clip(s string, max int) string {
	if utf8.RuneCountInString(s) <= max {
		return s
	}
	r := []rune(s)
	return string(r[:max-1]) + "…"
}
