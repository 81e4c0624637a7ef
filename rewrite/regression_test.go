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
