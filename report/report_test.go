package report

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"

	"github.com/pixelrelay/pixelrelay/relay"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

var update = flag.Bool("update", false, "re-seal testdata/report/audit.jsonl through relay.AuditLog and rewrite the golden HTML files")

// fixtures is the project's shared testdata folder for this package.
const fixtures = "../testdata/report"

// goldenOpts pins everything that would otherwise vary between runs.
var goldenOpts = Options{Version: "0.9.0-test", Generated: time.Date(2026, 4, 21, 9, 0, 0, 0, time.UTC)}

// readFiles builds a summary from fixture files, in order.
func readFiles(t testing.TB, names ...string) *Summary {
	t.Helper()
	s := NewSummary()
	for _, name := range names {
		f, err := os.Open(filepath.Join(fixtures, name))
		if err != nil {
			t.Fatal(err)
		}
		err = s.Read(f, name)
		f.Close()
		if err != nil {
			t.Fatalf("Read(%s): %v", name, err)
		}
	}
	return s
}

func render(t testing.TB, s *Summary, opts Options) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := WriteHTML(&buf, s, opts); err != nil {
		t.Fatalf("WriteHTML: %v", err)
	}
	return buf.Bytes()
}

// sealFixture rewrites a hand-written audit log through the relay's own
// writer, so the fixture carries a real hash chain.
func sealFixture(t *testing.T, path string) {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".sealing"
	os.Remove(tmp)
	log, err := relay.OpenAuditLog(tmp)
	if err != nil {
		t.Fatal(err)
	}
	for i, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var rec relay.AuditRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			t.Fatalf("%s:%d: %v", path, i+1, err)
		}
		write := map[string]func(*relay.AuditRecord) error{
			"delivered": log.Delivered, "partial": log.Partial, "deferred": log.Deferred,
			"refused": log.Refused, "rejected": log.Rejected,
		}[rec.Outcome]
		if write == nil {
			t.Fatalf("%s:%d: outcome %q", path, i+1, rec.Outcome)
		}
		if err := write(&rec); err != nil {
			t.Fatal(err)
		}
	}
	if err := log.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func TestGolden(t *testing.T) {
	if *update {
		sealFixture(t, filepath.Join(fixtures, "audit.jsonl"))
	}
	cases := []struct {
		name   string
		inputs []string
	}{
		// A week of relaying, plus a file of what else lands in a log folder.
		{"audit", []string{"audit.jsonl", "junk.jsonl"}},
		// `scan --json` output of an exported mailbox.
		{"scan", []string{"scan.jsonl"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			got := render(t, readFiles(t, tc.inputs...), goldenOpts)
			golden := filepath.Join(fixtures, tc.name+".golden.html")
			if *update {
				if err := os.WriteFile(golden, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(golden)
			if err != nil {
				t.Fatalf("%v (run go test ./report -update to create it)", err)
			}
			if !bytes.Equal(got, want) {
				t.Errorf("%s differs from the output; inspect the diff and run go test ./report -update if the change is intended\n%s", golden, firstDiff(got, want))
			}
			assertSelfContained(t, got)
		})
	}
}

func firstDiff(got, want []byte) string {
	gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
	for i := 0; i < len(gl) || i < len(wl); i++ {
		var g, w string
		if i < len(gl) {
			g = gl[i]
		}
		if i < len(wl) {
			w = wl[i]
		}
		if g != w {
			return fmt.Sprintf("line %d:\n got: %s\nwant: %s", i+1, g, w)
		}
	}
	return ""
}

// The same patterns as the outside-in acceptance check (ops.py).
var externalRef = []*regexp.Regexp{
	regexp.MustCompile(`(?i)(?:src|href)\s*=\s*["']?(https?:)?//`),
	regexp.MustCompile(`(?i)@import|url\(\s*['"]?https?:`),
}

func assertSelfContained(t *testing.T, page []byte) {
	t.Helper()
	for _, re := range externalRef {
		if m := re.Find(page); m != nil {
			t.Errorf("the page references something external: %q", m)
		}
	}
	if !bytes.Contains(page, []byte("<svg")) {
		t.Error("the page has no inline SVG")
	}
	if !bytes.Contains(page, []byte(`Content-Security-Policy" content="default-src 'none'`)) {
		t.Error("the page does not forbid fetches with a Content-Security-Policy")
	}
}

// TestCounts checks the numbers a compliance officer would quote, worked
// out by hand from testdata/report/audit.jsonl.
func TestCounts(t *testing.T) {
	s := readFiles(t, "audit.jsonl")
	a := &s.audit
	checkCounts(t, "audit", []count{
		{"messages", a.messages, 14},
		{"messages with trackers (all but the password reset and the rejected one)", a.withTrackers, 12},
		{"trackers", a.trackers, 14},
		{"dry-run messages", a.dryRun, 1},
		{"messages with problems", a.withProblems, 2},
		{"copies not delivered (two 451s, one 550)", a.notDelivered, 3},
		{"stripped copies", a.copies[copyStripped], 11},
		{"beaconed copies", a.copies[copyBeaconed], 2},
		{"copies kept with consent", a.copies[copyKept], 5},
		{"dry-run copies", a.copies[copyDryRun], 2},
		{"copies of clean messages", a.copies[copyClean], 1},
		{"copies kept without a grant (the last record's third recipient)", a.copies[copyKeptNoGrant], 1},
		{"granted", a.consent.get("granted").recipients, 6},
		{"denied", a.consent.get("denied").recipients, 4},
		{"withdrawn", a.consent.get("withdrawn").recipients, 2},
		{"unknown", a.consent.get("unknown").recipients, 9},
		{"lookup errors", a.consent.get("error").recipients, 1},
		{"Mailchimp messages", a.vendors.get("Mailchimp").messages, 7},
		{"SendGrid messages", a.vendors.get("SendGrid").messages, 2},
		{"HubSpot messages", a.vendors.get("HubSpot").messages, 2},
		{"messages with an unattributed tracker", a.vendors.get("").messages, 2},
		{"Google Analytics messages", a.vendors.get("Google Analytics").messages, 1},
		{"news.acme.example messages", a.senders.get("news.acme.example").messages, 7},
		{"shop.example.fr messages with trackers", a.senders.get("shop.example.fr").withTrackers, 3},
		{"app.example.com messages with trackers", a.senders.get("app.example.com").withTrackers, 0},
		{"spring-sale-2026 messages", a.campaigns.get("spring-sale-2026").messages, 6},
		{"spring-sale-2026 recipients (every recipient entry)", a.campaigns.get("spring-sale-2026").recipients, 12},
		{"delivered", a.outcomes.get("delivered").messages, 11},
		{"partial", a.outcomes.get("partial").messages, 1},
		{"deferred", a.outcomes.get("deferred").messages, 1},
		{"rejected", a.outcomes.get("rejected").messages, 1},
		{"tenants", a.tenants.len(), 2},
		{"skipped lines", s.skipped, 0},
	})
	// Every delivered copy is accounted for exactly once, in both splits.
	copies, consent := 0, 0
	for _, n := range a.copies {
		copies += n
	}
	for _, r := range a.consent.rows {
		consent += r.recipients
	}
	if copies != 22 || consent != 22 {
		t.Errorf("delivered copies: actions add up to %d, consent states to %d; want 22 each", copies, consent)
	}
	if want := time.Date(2026, 4, 14, 8, 2, 11, 0, time.UTC); !a.first.Equal(want) {
		t.Errorf("first record at %v, want %v", a.first, want)
	}
	if want := time.Date(2026, 4, 20, 17, 32, 0, 0, time.UTC); !a.last.Equal(want) {
		t.Errorf("last record at %v, want %v", a.last, want)
	}

	sc := readFiles(t, "scan.jsonl").scan
	checkCounts(t, "scan", []count{
		{"scanned messages", sc.messages, 5},
		{"unreadable", sc.unreadable, 1},
		{"with trackers", sc.withTrackers, 4},
		{"trackers (the VML copy of a Mailchimp pixel counts)", sc.trackers, 6},
		{"Mailchimp messages (two pixels in one message count once)", sc.vendors.get("Mailchimp").messages, 2},
		{"Mailchimp findings", sc.vendors.get("Mailchimp").trackers, 3},
		{"with problems", sc.withProblems, 1},
		{"background vector", sc.vectors.get("background").messages, 1},
	})
}

// count is one figure a test expects.
type count struct {
	what      string
	got, want int
}

func checkCounts(t *testing.T, kind string, counts []count) {
	t.Helper()
	for _, c := range counts {
		if c.got != c.want {
			t.Errorf("%s: %s: got %d, want %d", kind, c.what, c.got, c.want)
		}
	}
}

// A recipient copy that kept its trackers without a grant is the one thing
// a compliance officer must not miss: the report says so at the top and
// marks the row.
func TestKeptWithoutGrantIsFlagged(t *testing.T) {
	page := string(render(t, readFiles(t, "audit.jsonl"), goldenOpts))
	for _, want := range []string{
		`<p class="callout bad"><strong>1 recipient copy kept trackers without a recorded grant.</strong>`,
		`<tr class="warn"><td><span class="swatch kept-nogrant"></span>Kept without a recorded grant`,
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the report lacks %q", want)
		}
	}
}

// TestTolerance feeds one line at a time and checks what became of it.
func TestTolerance(t *testing.T) {
	rec := `{"time":"2026-04-21T08:01:00Z","recipients":[{"consent":"unknown","action":"strip"}],"trackers":[]}`
	cases := []struct {
		line       string
		records    int
		scans      int
		skipReason string // empty: not skipped
	}{
		// A plain audit record, without a hash: counted (the chain is a
		// separate verdict).
		{rec, 1, 0, ""},
		// Windows line ending.
		{rec + "\r", 1, 0, ""},
		// A blank line is nothing, not a skipped record.
		{"   ", 0, 0, ""},
		// slog text output that landed in the same file.
		{`time=2026-04-21T08:00:01Z level=INFO msg="relay started"`, 0, 0, "not JSON (syntax error at byte 2)"},
		// The last line of a log cut by a crash.
		{`{"time":"2026-04-21T08:01:00Z","recipients":[{"pseud`, 0, 0, "cut off"},
		// A slog JSON line: JSON, but neither kind of record.
		{`{"level":"info","msg":"message"}`, 0, 0, "neither an audit record"},
		// A JSON array.
		{`[1,2,3]`, 0, 0, "is a JSON array"},
		// recipients of the wrong type.
		{`{"time":"2026-04-21T08:01:00Z","recipients":"alice@example.org"}`, 0, 0, "recipients is a JSON string"},
		// A rejected message: counted, but none of its copies as delivered
		// (checked below).
		{`{"time":"2026-04-21T08:01:00Z","outcome":"rejected","recipients":[{"consent":"unknown","action":"strip"}],"trackers":[]}`, 1, 0, ""},
		// An audit record without a time.
		{`{"recipients":[]}`, 0, 0, `no "time"`},
		// A scan result, and an unreadable one.
		{`{"source":"a.eml","message_id":"","trackers":[]}`, 0, 1, ""},
		{`{"source":"b.eml","message_id":"","trackers":[],"error":"unexpected EOF"}`, 0, 1, ""},
		// A scan line with a source of the wrong type.
		{`{"source":5,"trackers":[]}`, 0, 0, "not a scan result"},
		// Invalid UTF-8 is still just a skipped line.
		{"\xff\xfe{\"time\":1}", 0, 0, "not JSON"},
	}
	for _, tc := range cases {
		s := NewSummary()
		if err := s.Read(strings.NewReader(tc.line+"\n"), "x.jsonl"); err != nil {
			t.Fatalf("%q: %v", tc.line, err)
		}
		c := s.Counts()
		if c.AuditMessages != tc.records || c.ScanMessages != tc.scans {
			t.Errorf("%q: %d audit records and %d scan results, want %d and %d", tc.line, c.AuditMessages, c.ScanMessages, tc.records, tc.scans)
		}
		if strings.Contains(tc.line, `"rejected"`) && (s.audit.notDelivered != 1 || len(s.audit.copies) != 0) {
			t.Errorf("%q: a rejected message's copy counted as delivered", tc.line)
		}
		switch {
		case tc.skipReason == "" && c.Skipped != 0:
			t.Errorf("%q: skipped (%s), want it read", tc.line, s.skips[0].reason)
		case tc.skipReason != "" && c.Skipped != 1:
			t.Errorf("%q: not skipped, want it skipped for %q", tc.line, tc.skipReason)
		case tc.skipReason != "" && !strings.Contains(s.skips[0].reason, tc.skipReason):
			t.Errorf("%q: skipped for %q, want %q", tc.line, s.skips[0].reason, tc.skipReason)
		}
	}
}

func TestJunkFileIsListed(t *testing.T) {
	s := readFiles(t, "audit.jsonl", "junk.jsonl")
	if c := s.Counts(); c.AuditMessages != 16 || c.Skipped != 4 {
		t.Errorf("got %d records and %d skipped lines, want 16 and 4", c.AuditMessages, c.Skipped)
	}
	page := string(render(t, s, goldenOpts))
	for _, want := range []string{
		"4 lines were skipped",
		"junk.jsonl:1</td><td>not JSON",
		"junk.jsonl:7</td><td>not JSON (cut off",
		"junk.jsonl:5</td><td>not an audit record (recipients is a JSON string)",
		// The junk file's chain is broken at its first line; the sealed
		// log's is intact.
		"broken at line 1",
		"<td>intact</td>",
	} {
		if !strings.Contains(page, want) {
			t.Errorf("the page does not say %q", want)
		}
	}
}

func TestReadLineCap(t *testing.T) {
	in := "short\n" + strings.Repeat("x", 100) + "\nafter\n"
	br := bufio.NewReaderSize(strings.NewReader(in), 16)
	var lines []string
	var long []bool
	for {
		line, tooLong, err := readLine(br, nil, 40)
		if len(line) > 0 || tooLong {
			lines = append(lines, string(line))
			long = append(long, tooLong)
		}
		if err != nil {
			break
		}
	}
	if len(lines) != 3 || lines[0] != "short\n" || !long[1] || lines[1] != "" || lines[2] != "after\n" || long[2] {
		t.Errorf("got lines %q (too long: %v); want the long one dropped and flagged, the others intact", lines, long)
	}
}

func TestGzipLog(t *testing.T) {
	plain, err := os.ReadFile(filepath.Join(fixtures, "audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	var gz bytes.Buffer
	zw := gzip.NewWriter(&gz)
	zw.Write(plain)
	zw.Close()
	s := NewSummary()
	if err := s.Read(&gz, "audit.jsonl.1.gz"); err != nil {
		t.Fatal(err)
	}
	if c := s.Counts(); c.AuditMessages != 14 || c.Skipped != 0 || len(c.ChainBroken) != 0 {
		t.Errorf("gzip log: %+v, want 14 records, none skipped, chain intact", c)
	}
}

// writeLog writes n records through the relay's audit log and returns the
// file's lines.
func writeLog(t *testing.T, n int) [][]byte {
	t.Helper()
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	log, err := relay.OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		rec := &relay.AuditRecord{
			Time:         time.Date(2026, 4, 14, 8, i, 0, 0, time.UTC),
			MessageID:    fmt.Sprintf("<%d@example.com>", i),
			SenderDomain: "example.com",
			Recipients:   []relay.AuditRecipient{{Pseudonym: "hmac-sha256:00", Consent: "unknown", Action: "strip", Status: 250}},
		}
		if err := log.Delivered(rec); err != nil {
			t.Fatal(err)
		}
	}
	log.Close()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return bytes.SplitAfter(data, []byte("\n"))[:n]
}

// TestChainAgreesWithVerify holds the report's integrity verdict to
// relay.VerifyAuditLog's, on the same tampered logs.
func TestChainAgreesWithVerify(t *testing.T) {
	lines := writeLog(t, 5)
	join := func(ls ...[]byte) []byte { return bytes.Join(ls, nil) }
	edited := bytes.Replace(lines[2], []byte("example.com"), []byte("example.net"), 1)
	cases := []struct {
		name string
		log  []byte
		bad  int // first bad line; 0 when intact
	}{
		{"intact", join(lines...), 0},
		// A value changed in place.
		{"edited", join(lines[0], lines[1], edited, lines[3], lines[4]), 3},
		// A record removed from the middle.
		{"removed", join(lines[0], lines[1], lines[3], lines[4]), 3},
		// Two records swapped.
		{"reordered", join(lines[0], lines[2], lines[1], lines[3], lines[4]), 2},
		// A stray line inserted.
		{"inserted", join(lines[0], []byte("hello\n"), lines[1], lines[2]), 2},
	}
	for _, tc := range cases {
		_, verr := relay.VerifyAuditLog(bytes.NewReader(tc.log))
		var ve *relay.AuditVerifyError
		verifyBad := 0
		if errors.As(verr, &ve) {
			verifyBad = ve.Line
		}
		s := NewSummary()
		if err := s.Read(bytes.NewReader(tc.log), tc.name); err != nil {
			t.Fatal(err)
		}
		got := s.sources[0].chain.brokenLine
		if got != tc.bad || verifyBad != tc.bad {
			t.Errorf("%s: report says line %d, audit verify says line %d; want %d", tc.name, got, verifyBad, tc.bad)
		}
	}
}

// TestRotatedLog: a log split by rotation is one chain when its parts are
// given oldest first.
func TestRotatedLog(t *testing.T) {
	lines := writeLog(t, 4)
	older, newer := bytes.Join(lines[:2], nil), bytes.Join(lines[2:], nil)
	s := NewSummary()
	s.Read(bytes.NewReader(older), "audit.jsonl.1")
	s.Read(bytes.NewReader(newer), "audit.jsonl")
	if text, bad := s.sources[1].chain.state(); bad || text != "intact; continues audit.jsonl.1" {
		t.Errorf("newer segment: %q (bad %v), want it to continue the older one", text, bad)
	}
	alone := NewSummary()
	alone.Read(bytes.NewReader(newer), "audit.jsonl")
	if text, bad := alone.sources[0].chain.state(); bad || !strings.Contains(text, "begins mid-chain") {
		t.Errorf("segment alone: %q (bad %v), want it intact but starting mid-chain", text, bad)
	}
}

// Hostile values from every field a log can carry.
func TestEscaping(t *testing.T) {
	s := readFiles(t, "hostile.jsonl")
	s.AddSource(`<b onclick="x()">direct</b>`)
	page := render(t, s, Options{Title: `</title><script>alert("title")</script>`, Version: `"><script>v</script>`})
	assertInert(t, page)
	text := string(page)
	for _, shown := range []string{
		"&lt;script&gt;alert(1)&lt;/script&gt;",       // vendor, in the chart
		"&#34;&gt;&lt;img src=x onerror=alert(2)&gt;", // sender domain
		"&lt;/title&gt;&lt;svg onload=alert(3)&gt;",   // campaign
		"&lt;marquee&gt;v&lt;/marquee&gt;",            // scan vendor
	} {
		if !strings.Contains(text, shown) {
			t.Errorf("the hostile value %q is not shown escaped", shown)
		}
	}
	for _, private := range []string{"victim@example.org", "hmac-sha256"} {
		if strings.Contains(text, private) {
			t.Errorf("the page shows %q; it must hold counts only", private)
		}
	}
}

// allowedTags are every element the template writes.
var allowedTags = map[string]bool{
	"html": true, "head": true, "meta": true, "link": true, "title": true, "style": true, "body": true,
	"header": true, "main": true, "footer": true, "section": true, "div": true, "p": true, "span": true,
	"h1": true, "h2": true, "h3": true, "a": true, "b": true, "strong": true,
	"table": true, "caption": true, "thead": true, "tbody": true, "tr": true, "th": true, "td": true,
	"svg": true, "g": true, "line": true, "rect": true, "text": true,
}

// assertInert checks that the page holds only the template's own elements,
// no event handler, and no link but in-page anchors.
func assertInert(t testing.TB, page []byte) {
	t.Helper()
	z := html.NewTokenizer(bytes.NewReader(page))
	for {
		tt := z.Next()
		if tt == html.ErrorToken {
			return
		}
		if tt != html.StartTagToken && tt != html.SelfClosingTagToken {
			continue
		}
		name, hasAttr := z.TagName()
		if !allowedTags[string(name)] {
			t.Fatalf("the page holds a <%s> element the template never writes", name)
		}
		for hasAttr {
			var k, v []byte
			k, v, hasAttr = z.TagAttr()
			key := string(k)
			switch {
			case strings.HasPrefix(key, "on"):
				t.Fatalf("<%s> carries an event handler %s=%q", name, key, v)
			case key == "src" || key == "style" || key == "srcset" || key == "data":
				t.Fatalf("<%s> carries %s=%q; the template writes none", name, key, v)
			case key == "href" && !bytes.HasPrefix(v, []byte("#")) && string(v) != "data:,":
				t.Fatalf("<%s> links to %q", name, v)
			}
		}
	}
}

func TestEmpty(t *testing.T) {
	page := render(t, NewSummary(), Options{})
	if !bytes.Contains(page, []byte("No records.")) {
		t.Error("an empty report does not say it is empty")
	}
	assertInert(t, page)
}

// TestBoundedTallies: a log with more distinct campaigns than MaxItems
// keeps MaxItems rows and still counts every message.
func TestBoundedTallies(t *testing.T) {
	s := NewSummary()
	for i := 0; i < MaxItems+25; i++ {
		s.AddAudit(&relay.AuditRecord{
			Time:       time.Date(2026, 4, 14, 0, 0, i, 0, time.UTC),
			Campaign:   fmt.Sprintf("c-%d", i),
			Recipients: []relay.AuditRecipient{{Consent: "unknown", Action: "strip"}},
			Trackers:   []relay.AuditTracker{{Vendor: fmt.Sprintf("v-%d", i)}},
		})
	}
	a := &s.audit
	if a.campaigns.len() != MaxItems || a.campaigns.others.messages != 25 {
		t.Errorf("campaigns: %d itemised and %d counted together, want %d and 25", a.campaigns.len(), a.campaigns.others.messages, MaxItems)
	}
	page := string(render(t, s, Options{}))
	if !strings.Contains(page, "More than 10,000 distinct campaigns, vendors appeared") {
		t.Error("the page does not say that campaigns and vendors were not all itemised")
	}
	if !strings.Contains(page, "Other vendors") {
		t.Error("the chart does not group the vendors past the limit")
	}
}

func TestAddScanDirect(t *testing.T) {
	s := NewSummary()
	s.AddSource("scan of inbox/")
	s.AddScan(ScanResult{Source: "inbox/1", Trackers: []rewrite.Finding{{Vendor: "Mailchimp", Host: "list-manage.com", Vector: "img", Reasons: []string{"vendor"}}}})
	s.AddScan(ScanResult{Source: "inbox/2", Trackers: []rewrite.Finding{}})
	s.AddScan(ScanResult{Source: "inbox/3", Err: errors.New("unexpected EOF")})
	if c := s.Counts(); c.ScanMessages != 3 || c.AuditMessages != 0 {
		t.Errorf("counts %+v, want 3 scan results", c)
	}
	page := string(render(t, s, Options{}))
	for _, want := range []string{"Open-tracking scan report", "scan of inbox/", "50.0%", "Mailchimp"} {
		if !strings.Contains(page, want) {
			t.Errorf("the scan report does not show %q", want)
		}
	}
}

func TestFormatting(t *testing.T) {
	cases := []struct{ got, want string }{
		{num(0), "0"},
		{num(999), "999"},
		{num(1000), "1,000"},
		{num(1234567), "1,234,567"},
		{pct(1, 3), "33.3%"},
		{pct(0, 0), "–"},
		// A share that is not zero never shows as 0.0%, nor a partial one as 100%.
		{pct(1, 5000), "<0.1%"},
		{pct(4999, 5000), ">99.9%"},
		{pct(5, 5), "100.0%"},
		{clip("abcdef", 4), "abc…"},
		{clip("éèêë", 4), "éèêë"},
	}
	for _, c := range cases {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

// FuzzRead: no input makes Read or WriteHTML fail or panic, and no input
// gets an element or attribute of its own into the page.
func FuzzRead(f *testing.F) {
	for _, name := range []string{"audit.jsonl", "junk.jsonl", "hostile.jsonl", "scan.jsonl"} {
		data, err := os.ReadFile(filepath.Join(fixtures, name))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		s := NewSummary()
		if err := s.Read(bytes.NewReader(data), "fuzz"); err != nil {
			// Only a gzip header with a broken stream may fail.
			if !bytes.HasPrefix(data, []byte{0x1f, 0x8b}) {
				t.Fatalf("Read failed on in-memory input: %v", err)
			}
		}
		var buf bytes.Buffer
		if err := WriteHTML(&buf, s, Options{}); err != nil {
			t.Fatal(err)
		}
		assertInert(t, buf.Bytes())
	})
}
