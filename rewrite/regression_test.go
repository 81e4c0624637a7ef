package rewrite

import (
	"bytes"
	"strings"
	"testing"
)

// Found by FuzzRewriteMessage. The body starts without a blank line;
// removing the <link> would leave "<style>:" as its first line, which a
// mail client reads as a header field: the body it shows would begin one
// line later, outside the <style> that was scanned, with a live url(). The
// rewrite puts in the missing blank line, and a second pass changes
// nothing.
func TestEditNeverTurnsTheFirstBodyLineIntoHeader(t *testing.T) {
	in := []byte("Content-Type: text/html\n<link rel=\"stylesheet\"href=http://x.pstmrk.it/open><style>:\n<A style=\"url(http://x.pstmrk.it/open\">0")
	d := Decision{Action: Strip, Recipients: []string{goldenRecipient}}
	out, _ := rewriteBytes(t, fuzzEngine, in, d)
	if want := "Content-Type: text/html\n\n<style>:\n<A style=\"url(http://x.pstmrk.it/open\">0"; string(out) != want {
		t.Errorf("got  %q\nwant %q", out, want)
	}
	again, _ := rewriteBytes(t, fuzzEngine, out, d)
	if !bytes.Equal(out, again) {
		t.Fatalf("not idempotent:\n%s", firstDiff(out, again))
	}
}

// Removing the first attribute after the tag name takes the
// whitespace before it, so an attribute written right after its closing
// quote is glued to the tag name: <td background="..."class=x> becomes
// <tdclass=x>, an unknown element, and the table cell is gone.
func TestRemovalKeepsTheTagNameApart(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{`<table><tr><td background="https://ea.pstmrk.it/open?m=b"class=x>x</td></tr></table>`, `<td class=x>`},
		{`<video poster="https://ea.pstmrk.it/open?m=b"width=1></video>`, `<video width=1>`},
	} {
		out, rep := rewriteBytes(t, fuzzEngine, []byte(htmlMessage("7bit", tc.in)), Decision{Action: Strip})
		if len(rep.Trackers) != 1 {
			t.Fatalf("%s: %d trackers", tc.in, len(rep.Trackers))
		}
		if !strings.Contains(string(out), tc.want) {
			t.Errorf("%s\n  became %q, want it to contain %q", tc.in, out[bytes.LastIndex(out, []byte("\r\n\r\n"))+4:], tc.want)
		}
	}
}

// A url token whose
// name is escaped, and image-set() with string URLs, are fetched by
// browsers but not judged.
func TestCSSEscapedNamesAndImageSetAreJudged(t *testing.T) {
	for _, css := range []string{
		`background:\75 rl(https://ea.pstmrk.it/open?m=1)`,
		`background-image:image-set("https://ea.pstmrk.it/open?m=1" 1x)`,
		`background-image:-webkit-image-set("https://ea.pstmrk.it/open?m=1" 1x)`,
	} {
		_, rep := rewriteBytes(t, fuzzEngine, []byte(htmlMessage("7bit", `<div style='`+css+`'>x</div>`)), Decision{Action: Strip})
		if len(rep.Trackers) != 1 {
			t.Errorf("style %s: %d trackers, want 1", css, len(rep.Trackers))
		}
	}
}

// TestInPlaceCutsLongLinesAsStreaming: an InMemory message is cut into the
// same pieces as bufio's 64 KiB buffer cuts a streamed one, so a line
// longer than that is judged the same way in both modes (rewriteBytes
// compares them): only a piece that starts a line can be a boundary, and
// a delimiter followed by 64 KiB of white space still is one.
func TestInPlaceCutsLongLinesAsStreaming(t *testing.T) {
	const pixel = `<img src="https://ea.pstmrk.it/open?m=1" width="1" height="1">`
	long := strings.Repeat("x", readBuffer)
	html := func(body string) string {
		return "--b\r\nContent-Type: text/html\r\n\r\n" + body + "\r\n"
	}
	head := "From: a@example.org\r\nContent-Type: multipart/mixed; boundary=b\r\n\r\n"
	cases := map[string]string{
		"boundary glued after a long line":     head + html(long+"--b\r\n"+pixel) + "--b--\r\n",
		"line of exactly the buffer":           head + html(long[:readBuffer-1]+"\n"+pixel) + "--b--\r\n",
		"line one byte over the buffer":        head + html(long+"\n"+pixel) + "--b--\r\n",
		"delimiter padded past the buffer":     head + "--b" + strings.Repeat(" ", readBuffer+10) + "\r\nContent-Type: text/html\r\n\r\n" + pixel + "\r\n--b--\r\n",
		"delimiter, then text past the buffer": head + "--b" + strings.Repeat(" ", readBuffer) + "x\r\nContent-Type: text/html\r\n\r\n" + pixel + "\r\n--b--\r\n",
		"long last line without an end":        head + html(pixel) + "--b--\r\n" + long + long,
		"header over 1 MiB":                    "X-Big: " + strings.Repeat(long+"\r\n ", 17) + "\r\nContent-Type: text/html\r\n\r\n" + pixel,
		"part copied past a long header":       head + "--b\r\nX-Big: " + strings.Repeat(long+"\r\n ", 17) + "\r\n\r\n" + html(pixel) + "--b--\r\n",
	}
	d := Decision{Action: Strip, Recipients: []string{goldenRecipient}}
	for name, in := range cases {
		// The pixel is found and removed, except where the header is too
		// large to parse: that message is copied as it is.
		want := 1
		if name == "header over 1 MiB" {
			want = 0
		}
		out, rep := rewriteBytes(t, fuzzEngine, []byte(in), d)
		if len(rep.Trackers) != want || bytes.Contains(out, []byte(pixel)) != (want == 0) {
			t.Errorf("%s: %d trackers (want %d), pixel left %v", name, len(rep.Trackers), want, bytes.Contains(out, []byte(pixel)))
		}
	}
	// A part over the HTML limit is copied whole in both modes.
	small, err := New(Options{MaxHTMLBytes: 100})
	if err != nil {
		t.Fatal(err)
	}
	in := head + html(pixel+strings.Repeat("<p>filler</p>\r\n", 20)) + "--b--\r\n"
	if out, rep := rewriteBytes(t, small, []byte(in), d); string(out) != in || len(rep.Problems) != 1 {
		t.Errorf("over the limit: changed %v, problems %q", string(out) != in, rep.Problems)
	}
}
