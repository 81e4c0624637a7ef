package rewrite

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
)

func newEngine(t testing.TB, opts Options) *Engine {
	t.Helper()
	e, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return e
}

func htmlMessage(cte, body string) string {
	return "From: a@example.org\r\nTo: reader@example.fr\r\nSubject: t\r\nMIME-Version: 1.0\r\n" +
		"Content-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: " + cte + "\r\n\r\n" + body
}

// TestQPOnlyTouchedLinesChange checks the promise for quoted-printable
// parts: every encoded line that holds no part of the removed tag is
// copied byte for byte, in order, including ones that use an unusual but
// valid encoding a re-encoder would normalise (=2E, lower-case padding).
func TestQPOnlyTouchedLinesChange(t *testing.T) {
	var b strings.Builder
	for i := 0; i < 30; i++ {
		fmt.Fprintf(&b, "<p style=3D\"color:#333\">Line %d of the letter=2E Caf=C3=A9 and more text to fill</p>  \r\n", i)
		if i == 14 {
			// The tracker spans three soft-broken lines, with text before
			// and after it on the same logical line.
			b.WriteString("<td>before <img src=3D\"https://ea.pstmrk.it/open?m=3Dv3_1.AbCdEf=\r\n" +
				"GhIjKl\" width=3D\"1\" height=3D\"1\" border=3D\"0\" alt=3D\"\"> after text=\r\n" +
				" continues here</td>\r\n")
		}
	}
	in := htmlMessage("quoted-printable", b.String())
	out, rep := rewriteBytes(t, newEngine(t, Options{}), []byte(in), Decision{Action: Strip})
	if len(rep.Trackers) != 1 {
		t.Fatalf("want 1 tracker, got %+v", rep.Trackers)
	}
	inL := strings.SplitAfter(in, "\r\n")
	outL := strings.SplitAfter(string(out), "\r\n")
	pre := 0
	for pre < len(inL) && pre < len(outL) && inL[pre] == outL[pre] {
		pre++
	}
	suf := 0
	for suf < len(inL)-pre && suf < len(outL)-pre && inL[len(inL)-1-suf] == outL[len(outL)-1-suf] {
		suf++
	}
	changedIn := inL[pre : len(inL)-suf]
	changedOut := outL[pre : len(outL)-suf]
	// Only the two lines holding the tag may change; the third line of the
	// logical line (" continues here") holds none of it.
	if len(changedIn) != 2 || !strings.Contains(changedIn[0], "<img") {
		t.Fatalf("changed input lines: %q", changedIn)
	}
	want := []string{"<td>before  after text=\r\n"}
	if strings.Join(changedOut, "") != strings.Join(want, "") {
		t.Fatalf("changed output lines: %q, want %q", changedOut, want)
	}
}

// TestQPTrailingSpaceProtected: removing a tag at the end of a line must
// not leave a bare trailing space, which decoders drop as padding.
func TestQPTrailingSpaceProtected(t *testing.T) {
	in := htmlMessage("quoted-printable", "word <img src=3D\"https://ea.pstmrk.it/open?m=3Dx\" width=3D\"1\" height=3D\"1\">\r\nnext\r\n")
	out, _ := rewriteBytes(t, newEngine(t, Options{}), []byte(in), Decision{Action: Strip})
	if !strings.HasSuffix(string(out), "\r\n\r\nword=20\r\nnext\r\n") {
		t.Fatalf("got %q", out)
	}
}

// TestBeaconDeterministicAndIdempotent: the same decision gives the same
// bytes, and a second pass with the beacon prefix declared as our own
// keeps the beacon.
func TestBeaconDeterministicAndIdempotent(t *testing.T) {
	e := newEngine(t, Options{OwnURLPrefixes: []string{"https://b.example.com/b/"}})
	in := []byte(htmlMessage("7bit", `<html><body><div style="display:none"><img src="https://ea.pstmrk.it/open?m=1" width="1" height="1"></div>`+
		`<p>hi</p><img src="https://x.list-manage.com/track/open.php?u=1&amp;id=2" width="1" height="1"></body></html>`))
	d := Decision{Action: Beacon, BeaconURL: "https://b.example.com/b/t0k\"en.gif"}
	out1, rep := rewriteBytes(t, e, in, d)
	out2, _ := rewriteBytes(t, e, in, d)
	if !bytes.Equal(out1, out2) {
		t.Fatal("same decision, different bytes")
	}
	if got := bytes.Count(out1, []byte("<img")); got != 1 {
		t.Fatalf("want exactly one img (the beacon), got %d in %q", got, out1)
	}
	if !bytes.Contains(out1, []byte(`<div style="display:none"><img src="https://b.example.com/b/t0k&#34;en.gif" width="1" height="1" alt=""></div>`)) {
		t.Fatalf("beacon not in place of the first pixel: %q", out1)
	}
	if rep.Trackers[0].Action != Beacon || rep.Trackers[1].Action != Strip {
		t.Fatalf("actions: %+v", rep.Trackers)
	}
	again, rep2 := rewriteBytes(t, e, out1, d)
	if !bytes.Equal(again, out1) || len(rep2.Trackers) != 0 {
		t.Fatalf("second pass changed the beacon: %q %+v", again, rep2.Trackers)
	}
}

// TestConcurrentUse runs one Engine from many goroutines; every result
// must equal the sequential one (run with -race to check for data races).
func TestConcurrentUse(t *testing.T) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.eml"))
	e := newEngine(t, Options{OwnURLPrefixes: []string{goldenOwn}})
	type job struct {
		in, want []byte
		d        Decision
	}
	var jobs []job
	for _, f := range files {
		in, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		d := goldenDecision(strings.TrimSuffix(filepath.Base(f), ".eml"))
		want, _ := rewriteBytes(t, e, in, d)
		jobs = append(jobs, job{in, want, d})
	}
	var wg sync.WaitGroup
	errs := make(chan string, 8*len(jobs))
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func(g int) {
			defer wg.Done()
			for i := range jobs {
				j := jobs[(i+g)%len(jobs)]
				var out bytes.Buffer
				if _, err := e.Rewrite(&out, bytes.NewReader(j.in), j.d); err != nil {
					errs <- err.Error()
					continue
				}
				if !bytes.Equal(out.Bytes(), j.want) {
					errs <- fmt.Sprintf("goroutine %d: job %d differs", g, (i+g)%len(jobs))
				}
			}
		}(g)
	}
	wg.Wait()
	close(errs)
	for e := range errs {
		t.Error(e)
	}
}

func TestParseRules(t *testing.T) {
	tests := []struct {
		name, text string
		wantErr    []string // substrings of the error
	}{
		// A valid file with every directive.
		{"ok", "version 7\n# comment\ndefaults on\ntrack *.t.example /o/{tok}* Acme Mail  # trailing comment\nallow cdn.example *\n", nil},
		// Every bad line is reported with the file name and line number.
		{"bad", "track onlyhost\nfrobnicate x y\ntrack a/b /x V\ntrack h nopath V\ntrack h /{bogus} V\ndefaults maybe\n",
			[]string{"rules.txt:1:", "rules.txt:2: unknown directive", "rules.txt:3: host", "rules.txt:4: path", "rules.txt:5: path", "rules.txt:6:"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := ParseRules(strings.NewReader(tt.text), "rules.txt")
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				if r.Len() != 2 || r.Version() != "7" {
					t.Fatalf("got %d rules, version %q", r.Len(), r.Version())
				}
				return
			}
			if err == nil {
				t.Fatal("want an error")
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
		})
	}
}

// TestUserRules: a user file is layered over the defaults; its track
// rules report "user-rule" with its vendor, and its allow rules beat both
// the defaults and the heuristics, but not the recipient's own address.
func TestUserRules(t *testing.T) {
	user, err := ParseRules(strings.NewReader("version 3\ntrack img.shop.example /p/* Shop\nallow *.sendibt3.com /tr/op/*\nallow cdn.example *\n"), "site.rules")
	if err != nil {
		t.Fatal(err)
	}
	e := newEngine(t, Options{Rules: user})
	if got, want := e.RulesVersion(), DefaultRules().Version()+"+site.rules@3"; got != want {
		t.Errorf("RulesVersion = %q, want %q", got, want)
	}
	body := `<img src="https://img.shop.example/p/123" width="600" height="200">` +
		`<img src="https://a.r.bh.d.sendibt3.com/tr/op/x" width="1" height="1">` +
		`<img src="https://cdn.example/dot.gif" width="1" height="1">` +
		`<img src="https://cdn.example/u?e=reader@example.fr" width="600" height="200">` +
		`<img src="https://x.list-manage.com/track/open.php?u=1" width="1" height="1">`
	_, rep := rewriteBytes(t, e, []byte(htmlMessage("7bit", body)), Decision{Action: Keep, Recipients: []string{"Reader@Example.FR"}})
	var got []string
	for _, f := range rep.Trackers {
		got = append(got, f.URL+" "+f.Vendor+" "+strings.Join(f.Reasons, ","))
	}
	want := []string{
		"https://img.shop.example/p/123 Shop user-rule",
		"https://cdn.example/u?e=reader@example.fr  recipient-id",
		"https://x.list-manage.com/track/open.php?u=1 Mailchimp vendor,tiny,open-path",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
	only, _ := ParseRules(strings.NewReader("defaults off\ntrack img.shop.example * Shop\n"), "only.rules")
	e2 := newEngine(t, Options{Rules: only})
	_, rep = rewriteBytes(t, e2, []byte(htmlMessage("7bit", `<img src="https://x.list-manage.com/track/open.php?u=1" width="600" height="200">`)), Decision{Action: Keep})
	if len(rep.Trackers) != 0 {
		t.Fatalf("defaults off still applied the defaults: %+v", rep.Trackers)
	}
}

func TestDefaultRulesCoverCatalogue(t *testing.T) {
	r := DefaultRules()
	if r.Version() == "" {
		t.Fatal("default rules have no version")
	}
	vendors := map[string]bool{}
	for _, ru := range r.track {
		vendors[ru.vendor] = true
	}
	// trackers.md section 2, one name per ESP.
	for _, v := range []string{"Mailchimp", "Mandrill", "SendGrid", "HubSpot", "Salesforce Marketing Cloud", "Marketo", "Klaviyo",
		"Iterable", "Customer.io", "Mailgun", "Postmark", "Amazon SES", "Brevo", "ConvertKit", "Substack", "Campaign Monitor",
		"Constant Contact", "ActiveCampaign", "Mailjet", "Pardot", "Eloqua", "Intercom", "Mailtrack", "Yesware", "Mixmax",
		"Superhuman", "Streak", "listmonk", "Mautic", "Postal", "Litmus", "Email on Acid", "Acoustic"} {
		if !vendors[v] {
			t.Errorf("no default rule names %s", v)
		}
	}
}

func TestNewValidates(t *testing.T) {
	_, err := New(Options{MaxHTMLBytes: -1, OwnURLPrefixes: []string{"ftp://x/", "beacon.example"}})
	if err == nil {
		t.Fatal("want errors")
	}
	for _, w := range []string{"MaxHTMLBytes", `"ftp://x/"`, `"beacon.example"`} {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("error %q lacks %s", err, w)
		}
	}
}

// TestHTMLSizeLimit: a part over MaxHTMLBytes passes through unchanged,
// and the report says why.
func TestHTMLSizeLimit(t *testing.T) {
	e := newEngine(t, Options{MaxHTMLBytes: 64})
	in := []byte(htmlMessage("7bit", strings.Repeat("<p>text</p>\r\n", 20)+`<img src="https://ea.pstmrk.it/open?m=1" width="1" height="1">`+"\r\n"))
	out, rep := rewriteBytes(t, e, in, Decision{Action: Strip})
	if !bytes.Equal(out, in) {
		t.Fatal("oversized part was changed")
	}
	if len(rep.Problems) != 1 || !strings.Contains(rep.Problems[0], "larger than 64 bytes") {
		t.Fatalf("problems: %q", rep.Problems)
	}
}

// TestEmptyActionStrips: an unset action fails closed.
func TestEmptyActionStrips(t *testing.T) {
	in := []byte(htmlMessage("7bit", `<p>x</p><img src="https://ea.pstmrk.it/open?m=1" width="1" height="1">`))
	out, _ := rewriteBytes(t, newEngine(t, Options{}), in, Decision{})
	if bytes.Contains(out, []byte("pstmrk")) {
		t.Fatal("an empty Decision kept the tracker")
	}
}

type failReader struct{ data []byte }

func (f *failReader) Read(p []byte) (int, error) {
	if len(f.data) == 0 {
		return 0, errors.New("disk on fire")
	}
	n := copy(p, f.data)
	f.data = f.data[n:]
	return n, nil
}

type failWriter struct{}

func (failWriter) Write(p []byte) (int, error) { return 0, errors.New("pipe closed") }

func TestIOErrors(t *testing.T) {
	e := newEngine(t, Options{})
	_, err := e.Rewrite(io.Discard, &failReader{data: []byte(htmlMessage("7bit", "<p>x"))}, Decision{Action: Strip})
	var ioe *IOError
	if !errors.As(err, &ioe) || ioe.Op != "read" || !strings.Contains(err.Error(), "disk on fire") {
		t.Fatalf("read failure: %v", err)
	}
	_, err = e.Rewrite(failWriter{}, strings.NewReader(htmlMessage("7bit", "<p>x")), Decision{Action: Strip})
	if !errors.As(err, &ioe) || ioe.Op != "write" {
		t.Fatalf("write failure: %v", err)
	}
}

// TestLinksUntouched: click tracking is not our business; an <a href> on
// a tracker host stays even when the pixel on that host goes.
func TestLinksUntouched(t *testing.T) {
	body := `<a href="https://x.list-manage.com/track/open.php?u=1">link</a><img src="https://x.list-manage.com/track/open.php?u=1" width="1" height="1">`
	out, _ := rewriteBytes(t, newEngine(t, Options{}), []byte(htmlMessage("7bit", body)), Decision{Action: Strip})
	if !bytes.HasSuffix(out, []byte(`<a href="https://x.list-manage.com/track/open.php?u=1">link</a>`)) {
		t.Fatalf("got %q", out)
	}
}

// TestDetectionTable pins individual detection rules; each row is one
// <img> in an otherwise empty message.
func TestDetectionTable(t *testing.T) {
	tests := []struct {
		img     string
		tracker bool
		reasons string
	}{
		// 1×1 by attributes, no vendor: tiny alone is enough.
		{`<img src="https://a.example/x.gif" width="1" height="1">`, true, "tiny"},
		// Size only in CSS, with max-width/max-height, as SES and Customer.io do.
		{`<img src="https://a.example/x.gif" style="max-width:1px;max-height:1px">`, true, "tiny"},
		// Area 3 px² (3×1) is still tiny.
		{`<img src="https://a.example/x.gif" width="3" height="1">`, true, "tiny"},
		// A 1×24 spacer and a 600×1 rule are layout.
		{`<img src="https://a.example/s.gif" width="1" height="24">`, false, ""},
		{`<img src="https://a.example/s.gif" width="600" height="1">`, false, ""},
		// One zero side hides the image whatever the other is.
		{`<img src="https://a.example/x.gif" width="0" height="50">`, true, "tiny"},
		// No size, hidden by an ancestor: strong.
		{`<div style="display:none"><img src="https://a.example/x.gif"></div>`, true, "hidden"},
		// No size, ancestor with the hidden attribute.
		{`<div hidden><img src="https://a.example/x.gif"></div>`, true, "hidden"},
		// Normal size and hidden: weak alone (mobile-only images).
		{`<div style="display:none"><img src="https://a.example/m/hero.jpg" width="600" height="300"></div>`, false, ""},
		// Outlook-only hiding is weak too.
		{`<div style="mso-hide:all"><img src="https://a.example/x.gif"></div>`, false, ""},
		// Open path plus opaque token: two weak signals.
		{`<img src="https://a.example/open/AbCdEf0123456789XyZ" width="600" height="300">`, true, "open-path,opaque-token"},
		// Opaque token alone: a hashed CDN name.
		{`<img src="https://a.example/img/AbCdEf0123456789XyZ.jpg" width="600" height="300">`, false, ""},
		// cid: and data: URLs load nothing remote.
		{`<img src="cid:logo@x" width="1" height="1">`, false, ""},
		{`<img src="data:image/gif;base64,R0lGODlhAQABAAAAACw=" width="1" height="1">`, false, ""},
		// Protocol-relative URLs are remote.
		{`<img src="//a.example/x.gif" width="1" height="1">`, true, "tiny"},
		// Entities are undone before matching.
		{`<img src="https://x.list-manage.com/track/open.php?u=1&amp;id=2" width="60" height="60">`, true, "vendor,open-path"},
		// Brevo logo on the pixel host.
		{`<img src="https://a.r.bh.d.sendibt3.com/im/123/logo.png" width="1" height="1">`, false, ""},
	}
	e := newEngine(t, Options{})
	for _, tt := range tests {
		_, rep := rewriteBytes(t, e, []byte(htmlMessage("7bit", tt.img)), Decision{Action: Keep})
		got := len(rep.Trackers) == 1
		reasons := ""
		if got {
			reasons = strings.Join(rep.Trackers[0].Reasons, ",")
		}
		if got != tt.tracker || reasons != tt.reasons {
			t.Errorf("%s: tracker=%v reasons=%q, want %v %q", tt.img, got, reasons, tt.tracker, tt.reasons)
		}
	}
}

// TestRepeatedURLIsLayout: the same URL five or more times is a spacer;
// four times still counts as a pixel.
func TestRepeatedURLIsLayout(t *testing.T) {
	e := newEngine(t, Options{})
	img := `<img src="https://a.example/dot.gif" width="1" height="1">`
	for n, want := range map[int]int{4: 1, 5: 0} {
		_, rep := rewriteBytes(t, e, []byte(htmlMessage("7bit", strings.Repeat(img, n))), Decision{Action: Keep})
		if len(rep.Trackers) != want {
			t.Errorf("%d repeats: %d trackers, want %d", n, len(rep.Trackers), want)
		}
	}
}

// TestDuplicateAttributeStaysDead: a browser uses the first of two
// attributes with the same name and ignores the rest. Removing a tracker
// attribute must not bring a later duplicate to life, tracker or not: the
// element must end up as if it had no such attribute at all.
func TestDuplicateAttributeStaysDead(t *testing.T) {
	const px1, px2 = "https://ea.pstmrk.it/open?m=1", "https://ea.pstmrk.it/open?m=2"
	tests := []struct{ in, want string }{
		{`<td background="` + px1 + `" background="` + px2 + `">x</td>`, `<td>x</td>`},
		{`<td background="` + px1 + `" BACKGROUND='https://cdn.example/bg.png' class=c>x</td>`, `<td class=c>x</td>`},
		{`<video poster="` + px1 + `" width="320" poster="https://cdn.example/p.png"></video>`, `<video width="320"></video>`},
		{`<v:fill type="frame" src="` + px1 + `" SRC="` + px2 + `" srC=` + px2 + ` />`, `<v:fill type="frame" />`},
		{`<iframe src="` + px1 + `" src="https://cdn.example/frame.html"></iframe>`, `<iframe></iframe>`},
		{`<embed src="` + px1 + `" src="` + px2 + `">`, `<embed>`},
		{`<object data="` + px1 + `" data="` + px2 + `"></object>`, `<object></object>`},
		{`<audio src="` + px1 + `" src="` + px2 + `"></audio>`, `<audio></audio>`},
		// A srcset whose candidates are all trackers goes, and its
		// duplicates with it.
		{`<img src="cid:logo" srcset="` + px1 + ` 1x" alt="a" srcset="` + px2 + ` 1x, https://cdn.example/a.png 2x">`, `<img src="cid:logo" alt="a">`},
		// A later duplicate of an attribute that stays is dead and stays.
		{`<td background="https://cdn.example/bg.png" background="` + px1 + `">x</td>`, `<td background="https://cdn.example/bg.png" background="` + px1 + `">x</td>`},
	}
	e := newEngine(t, Options{})
	for i, tt := range tests {
		t.Run(strconv.Itoa(i), func(t *testing.T) {
			in := htmlMessage("7bit", "<p>hi</p>"+tt.in)
			out, rep := rewriteBytes(t, e, []byte(in), Decision{Action: Strip})
			if want := htmlMessage("7bit", "<p>hi</p>"+tt.want); string(out) != want {
				t.Fatalf("%s\n%s\n(trackers %+v)", tt.in, firstDiff([]byte(want), out), rep.Trackers)
			}
			checkInvariants(t, e, []byte(in), Decision{Action: Strip})
		})
	}
}

func TestContainsFold(t *testing.T) {
	tests := []struct {
		b, needle string
		want      bool
	}{
		{"<td BACKGROUND=x>", "background", true},
		{"<td bAckGround=x>", "background", true},
		{"<td backgroun", "background", false},
		{"xxxxxxxxxxbackground", "background", true}, // at the very end
		{"sRsRsRc", "src", true},                     // earlier candidates of both cases fail
		{"SsSsSsS", "src", false},
		{"<LINK rel=x>", "<link", true},
		{"a<b<c<STYLE>", "<style", true},
		{"", "src", false},
		{"url", "url", true},
	}
	for _, tt := range tests {
		if got := containsFold([]byte(tt.b), tt.needle); got != tt.want {
			t.Errorf("containsFold(%q, %q) = %v, want %v", tt.b, tt.needle, got, tt.want)
		}
	}
}

// TestMayFetch: the one-pass pre-filter for conditional comments finds
// exactly the words the word-by-word search found; a miss would leave a
// tracker inside an Outlook-only block.
func TestMayFetch(t *testing.T) {
	words := []string{"src", "url", "background", "<style", "<link", "data", "poster"}
	slow := func(b []byte) bool {
		if !bytes.Contains(b, []byte("=")) && !containsFold(b, "<style") {
			return false
		}
		for _, w := range words {
			if bytes.Contains(bytes.ToLower(b), []byte(w)) {
				return true
			}
		}
		return false
	}
	cases := []string{
		"", "=", "<td>", "</td></tr></table>", `<v:rect fillcolor="#fff">`, `<v:fill src=x>`, `<v:fill SRC=x>`,
		`<v:fill type="tile" Src="x">`, `<td style="x:URL(y)">`, `<td BACKGROUND=x>`, `<td backgroun=x>`,
		"<STYLE>a{}</style>", "<style", "<styl", "<Link rel=x>", "<object DATA=x>", "<video Poster=x>", "<video poste=x>",
		"a=sr", "a=sR", "a=srC", "a=ur", "a=uRl", "a=dat", "a=dAtA", "a=<lin", "a=<liNk", "<x =s", "<x =s\x00rc",
		`<v:roundrect xmlns:v="urn:schemas-microsoft-com:vml" href="https://e.example/a" style="height:40px" arcsize="10%" stroke="f">`,
	}
	for _, c := range cases {
		if got, want := mayFetch([]byte(c)), slow([]byte(c)); got != want {
			t.Errorf("mayFetch(%q) = %v, want %v", c, got, want)
		}
	}
}

// TestURLFormsBrowsersFetch: the WHATWG URL parser repairs many malformed
// http(s) URLs, and so fetches them; each must be judged as the URL that
// is fetched, and non-remote ones not at all.
func TestURLFormsBrowsersFetch(t *testing.T) {
	const want = "https://t.example/o.gif"
	tests := []struct{ src, url string }{
		{`https://t.example/o.gif`, want},
		{`https:\\t.example\o.gif`, want}, // WebKit, Blink and Gecko alike
		{`https:/t.example/o.gif`, want},
		{`https:t.example/o.gif`, want},
		{`https:///t.example/o.gif`, want},
		{`https://t.example\o.gif`, want},
		{"\x01https://t.example/o.gif\x1f", want}, // C0 controls around the URL are dropped
		{`&#1;https://t.example/o.gif`, want},
		{"ht\ttps://t.exa\nmple/o.gif", want},
		{`\\t.example/o.gif`, want}, // scheme-relative, with either slash
		{`/\t.example/o.gif`, want},
		{`HTTP:\\t.example\o.gif?q=a\b`, `http://t.example/o.gif?q=a\b`}, // "\" is a "/" only before the query
		{`https:`, ""},
		{`https:///`, ""},
		{`https://?x`, ""},
		{`cid:o.gif@t.example`, ""},
		{`/o.gif`, ""}, // relative, and there is no <base>
	}
	e := newEngine(t, Options{})
	for _, tt := range tests {
		body := `<p>hi</p><img src="` + tt.src + `" width="1" height="1">`
		_, rep := rewriteBytes(t, e, []byte(htmlMessage("7bit", body)), Decision{Action: Keep})
		got := ""
		if len(rep.Trackers) == 1 {
			got = rep.Trackers[0].URL
		} else if len(rep.Trackers) > 1 {
			got = fmt.Sprint(rep.Trackers)
		}
		if got != tt.url {
			t.Errorf("src=%q: judged as %q, want %q", tt.src, got, tt.url)
		}
	}
	// With a <base>, "https:o.gif" is relative to it, as the parser says
	// for a URL of the same scheme as its base.
	_, rep := rewriteBytes(t, e, []byte(htmlMessage("7bit", `<base href="https://t.example/">`+
		`<img src="https:o.gif" width="1" height="1">`)), Decision{Action: Keep})
	if len(rep.Trackers) != 1 || rep.Trackers[0].URL != want {
		t.Errorf("https:o.gif under <base href=https://t.example/>: %+v", rep.Trackers)
	}
	// CSS undoes its own escapes first: "\\" is a backslash, "\68" an h.
	const px = "https://ea.pstmrk.it/open?m=1"
	for _, css := range []string{`url(https:\\ea.pstmrk.it\\open?m=1)`, `url(\68ttps://ea.pstmrk.it/open?m=1)`, `url('\000068 ttps://ea.pstmrk.it/open?m=1')`} {
		body := `<div style="background:` + css + `">x</div>`
		_, rep := rewriteBytes(t, e, []byte(htmlMessage("7bit", body)), Decision{Action: Keep})
		if len(rep.Trackers) != 1 || rep.Trackers[0].URL != px {
			t.Errorf("style %s: trackers %+v, want %s", css, rep.Trackers, px)
		}
	}
}

// TestQPRewrapKeepsLF: a quoted-printable HTML body without a line break
// of its own takes its line ending from the part header when a re-encoded
// line needs a soft break; an LF message must not get a CR.
func TestQPRewrapKeepsLF(t *testing.T) {
	body := "<p>" + strings.Repeat("a", 70) + "</p><img src=3D\"https://ea.pstmrk.it/open?m=3D1\" width=3D\"1\" height=3D\"1\"><p>" + strings.Repeat("b", 70) + "</p>"
	in := strings.ReplaceAll(htmlMessage("quoted-printable", ""), "\r\n", "\n") + body
	e := newEngine(t, Options{OwnURLPrefixes: []string{goldenOwn}})
	for _, d := range []Decision{{Action: Strip}, {Action: Beacon, BeaconURL: goldenBeacon}} {
		out, rep := rewriteBytes(t, e, []byte(in), d)
		if !rep.Changed || bytes.Contains(out, []byte("pstmrk")) {
			t.Fatalf("%s: tracker not removed: %q", d.Action, out)
		}
		if bytes.Contains(out, []byte("\r")) {
			t.Errorf("%s: LF input gave CR in the output: %q", d.Action, out)
		}
		if !bytes.Contains(out, []byte("=\n")) {
			t.Errorf("%s: the re-encoded line was not wrapped: %q", d.Action, out)
		}
		checkInvariants(t, e, []byte(in), d)
	}
}
