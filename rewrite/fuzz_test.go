package rewrite

import (
	"bufio"
	"bytes"
	"io"
	"mime"
	"mime/quotedprintable"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-message"
	"github.com/emersion/go-message/textproto"
)

// leafPart is a non-HTML leaf as go-message decodes it.
type leafPart struct {
	ctype string
	body  []byte
}

// nonHTMLLeaves walks a message with go-message (an independent parser)
// and returns its leaves other than HTML, or ok false if it cannot parse
// the message completely.
func nonHTMLLeaves(msg []byte) (leaves []leafPart, ok bool) {
	ent, err := message.Read(bytes.NewReader(msg))
	if err != nil {
		return nil, false
	}
	err = ent.Walk(func(path []int, e *message.Entity, err error) error {
		if err != nil {
			return err
		}
		// Classify as the walker does (it reads broken Content-Type
		// fields more leniently than go-message), so that "HTML" means a
		// part the walker may change.
		mt, _ := parseContentType(firstNonEmpty(e.Header.Values("Content-Type")))
		if mt == "" {
			mt = "text/plain"
		}
		html := mt == "text/html" || mt == "text/x-amp-html" || mt == "application/xhtml+xml" || mt == "text/watch-html"
		if strings.HasPrefix(mt, "multipart/") || html && !isAttachment(firstNonEmpty(e.Header.Values("Content-Disposition"))) ||
			mt == "message/rfc822" || mt == "message/global" {
			return nil
		}
		b, err := io.ReadAll(e.Body)
		if err != nil {
			return err
		}
		leaves = append(leaves, leafPart{mt, b})
		return nil
	})
	return leaves, err == nil
}

func mixedEOL(b []byte) bool {
	crlf := bytes.Contains(b, []byte("\r\n"))
	bare := bytes.Contains(b, []byte("\n")) && bytes.Count(b, []byte("\n")) != bytes.Count(b, []byte("\r\n"))
	return crlf && bare
}

// firstNonEmpty picks a field value as parseHeader does when a field is
// repeated: the first one that is not empty.
func firstNonEmpty(vs []string) string {
	for _, v := range vs {
		if strings.TrimSpace(v) != "" {
			return v
		}
	}
	return ""
}

// checkInvariants asserts what must hold for any input message.
func checkInvariants(t *testing.T, e *Engine, in []byte, d Decision) {
	out, rep := rewriteBytes(t, e, in, d)
	// Keep is byte-identical and finds the same trackers.
	kept, krep := rewriteBytes(t, e, in, Decision{Action: Keep, Recipients: d.Recipients})
	if !bytes.Equal(kept, in) {
		t.Fatalf("Keep changed the message:\n%s", firstDiff(in, kept))
	}
	if len(krep.Trackers) != len(rep.Trackers) {
		t.Fatalf("Keep found %d trackers, %s %d", len(krep.Trackers), d.Action, len(rep.Trackers))
	}
	// LF in, LF out (CONTRACTS.md): nothing inserted or re-encoded may
	// bring a CR into a message that had none.
	if bytes.IndexByte(in, '\r') < 0 && bytes.IndexByte(out, '\r') >= 0 {
		t.Fatalf("LF-only input gave CR in the output:\n%q", out)
	}
	// Every quoted-printable line the rewrite wrote is at most 76
	// characters (RFC 2045); longer ones can only be copies of input lines.
	if long := newLongQPLines(in, out); len(long) > 0 {
		t.Fatalf("quoted-printable lines over 76 characters: %q", long)
	}
	// Idempotent.
	again, _ := rewriteBytes(t, e, out, d)
	if !bytes.Equal(again, out) {
		t.Fatalf("not idempotent:\n%s", firstDiff(out, again))
	}
	// Every tracker that was stripped is gone.
	_, after := rewriteBytes(t, e, out, Decision{Action: Keep, Recipients: d.Recipients})
	stripped := map[string]bool{}
	for _, f := range rep.Trackers {
		if f.Action != Keep {
			stripped[f.URL] = true
		}
	}
	for _, f := range after.Trackers {
		if stripped[f.URL] {
			t.Fatalf("stripped tracker %s still found in the output", f.URL)
		}
	}
	// The output parses wherever the input did, and its non-HTML leaves
	// are unchanged. go-message locks into CRLF or LF mode at the first
	// boundary while the walker, like lenient clients, accepts both on
	// every line, so the two parsers are only compared on messages with
	// consistent line endings.
	if inLeaves, ok := nonHTMLLeaves(in); ok && !mixedEOL(in) {
		outLeaves, ok := nonHTMLLeaves(out)
		if !ok {
			t.Fatalf("the input parses but the output does not:\n%q", out)
		}
		if len(inLeaves) != len(outLeaves) {
			t.Fatalf("%d non-HTML parts became %d:\n%q\n%q", len(inLeaves), len(outLeaves), in, out)
		}
		for i := range inLeaves {
			if inLeaves[i].ctype != outLeaves[i].ctype || !bytes.Equal(inLeaves[i].body, outLeaves[i].body) {
				t.Fatalf("non-HTML part %d (%s) changed", i, inLeaves[i].ctype)
			}
		}
	}
}

// newLongQPLines returns the lines of out's quoted-printable parts that are
// longer than 76 characters and are not lines of in. It reads the MIME
// structure with go-message's textproto, which keeps bodies encoded; what
// it cannot parse it does not check.
func newLongQPLines(in, out []byte) []string {
	old := map[string]bool{}
	for _, l := range bytes.Split(in, []byte("\n")) {
		old[string(bytes.TrimSuffix(l, []byte("\r")))] = true
	}
	var long []string
	var walk func(h textproto.Header, body io.Reader, depth int)
	walk = func(h textproto.Header, body io.Reader, depth int) {
		mt, params, _ := mime.ParseMediaType(h.Get("Content-Type"))
		if strings.HasPrefix(mt, "multipart/") && params["boundary"] != "" && depth < 10 {
			mr := textproto.NewMultipartReader(body, params["boundary"])
			for {
				p, err := mr.NextPart()
				if err != nil {
					return
				}
				walk(p.Header, p, depth+1)
			}
		}
		if parseCTE(h.Get("Content-Transfer-Encoding")) != cteQP {
			return
		}
		b, _ := io.ReadAll(body)
		for _, l := range bytes.Split(b, []byte("\n")) {
			l = bytes.TrimSuffix(l, []byte("\r"))
			if len(l) > 76 && !old[string(l)] {
				long = append(long, string(l))
			}
		}
	}
	br := bufio.NewReader(bytes.NewReader(out))
	if h, err := textproto.ReadHeader(br); err == nil {
		walk(h, br, 0)
	}
	return long
}

var fuzzEngine = func() *Engine {
	e, err := New(Options{OwnURLPrefixes: []string{goldenOwn}})
	if err != nil {
		panic(err)
	}
	return e
}()

// FuzzRewriteMessage drives the MIME walker with arbitrary messages.
func FuzzRewriteMessage(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(goldenDir, "*.eml"))
	for _, p := range files {
		if b, err := os.ReadFile(p); err == nil && len(b) < 16<<10 {
			f.Add(b, false)
		}
	}
	f.Fuzz(func(t *testing.T, msg []byte, beacon bool) {
		d := Decision{Action: Strip, Recipients: []string{goldenRecipient}}
		if beacon {
			d = Decision{Action: Beacon, BeaconURL: goldenBeacon, Recipients: d.Recipients}
		}
		checkInvariants(t, fuzzEngine, msg, d)
	})
}

// FuzzRewriteHTML drives the HTML and CSS rewriter: the fuzzed HTML goes
// into a fixed multipart message, quoted-printable or 8bit, next to a
// plain-text part and an attachment that must come out unchanged.
func FuzzRewriteHTML(f *testing.F) {
	seeds := []string{
		`<img src="https://x.list-manage.com/track/open.php?u=1&amp;id=2" width="1" height="1">`,
		`<div style="display:none"><img src="https://a.example/p.gif"></div><p>text</p>`,
		`<!--[if mso]><v:fill src="https://ea.pstmrk.it/open?m=1"/><img src=https://t.example/o/AbC123dEf456gHi789 width=1 height=1><![endif]-->`,
		`<style>@import url(https://ea.pstmrk.it/open?m=i);#_t::before{content:url('https://a.emltrk.com/v2/x?d=reader@example.fr')}</style>`,
		`<td style="background:url(&quot;https://ea.pstmrk.it/open?m=c&quot;) no-repeat;color:red" background="https://ea.pstmrk.it/open?m=b">`,
		`<img srcset="https://ea.pstmrk.it/open?m=1 1x, https://cdn.example/a.png 2x, https://ea.pstmrk.it/open?m=2 3x" src="cid:x">`,
		`<amp-img src="https://ea.pstmrk.it/open?m=a" width=1 height=1><noscript><img src="https://ea.pstmrk.it/open?m=n"></noscript></amp-img>`,
		`<picture><source srcset="https://x.example/wf/open?upn=1"><img src=a.png></picture></body>after`,
		"<IMG SRC=\"https://t.example/px.gif\" WIDTH=1 HEIGHT=1 ALT=\" \">\r\n<p>=3D soft=\r\nbreak</p>",
	}
	for _, s := range seeds {
		f.Add([]byte(s), true)
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, html []byte, qp bool) {
		var body bytes.Buffer
		cte := "8bit"
		if qp {
			cte = "quoted-printable"
			w := quotedprintable.NewWriter(&body)
			w.Write(html)
			w.Close()
		} else {
			body.Write(html)
		}
		msg := "From: a@example.org\r\nTo: reader@example.fr\r\nMIME-Version: 1.0\r\n" +
			"Content-Type: multipart/mixed; boundary=\"=_fz\"\r\n\r\npreamble\r\n--=_fz\r\n" +
			"Content-Type: text/plain; charset=utf-8\r\n\r\nplain <img src=\"https://ea.pstmrk.it/open?m=p\" width=1 height=1>\r\n" +
			"--=_fz\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: " + cte + "\r\n\r\n" +
			body.String() + "\r\n--=_fz\r\nContent-Type: application/octet-stream\r\nContent-Disposition: attachment; filename=a.bin\r\n" +
			"Content-Transfer-Encoding: base64\r\n\r\nPGltZyBzcmM9Imh0dHBzOi8vZWEucHN0bXJrLml0L29wZW4/bT0xIj4=\r\n--=_fz--\r\nepilogue\r\n"
		if strings.Contains(body.String(), "--=_fz") {
			return // the fuzzer forged our boundary: a different message
		}
		checkInvariants(t, fuzzEngine, []byte(msg), Decision{Action: Strip, Recipients: []string{goldenRecipient}})
		checkInvariants(t, fuzzEngine, []byte(msg), Decision{Action: Beacon, BeaconURL: goldenBeacon, Recipients: []string{goldenRecipient}})
		out, _ := rewriteBytes(t, fuzzEngine, []byte(msg), Decision{Action: Strip})
		if !bytes.HasPrefix(out, []byte(msg[:strings.Index(msg, "--=_fz\r\nContent-Type: text/html")])) {
			t.Fatal("the header, preamble or plain-text part changed")
		}
		if !bytes.HasSuffix(out, []byte(msg[strings.LastIndex(msg, "\r\n--=_fz\r\nContent-Type: application"):])) {
			t.Fatal("the attachment or epilogue changed")
		}
	})
}
