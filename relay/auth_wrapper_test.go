package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// A SASL response line is read by go-smtp's handleAuth, not as a command,
// but the wrapper models it as a command: "BDAT n" sent as a response makes
// the wrapper pass the next n bytes untouched as a "chunk" while go-smtp
// reads them as command lines. On a plain listener without TLS go-smtp's own
// line limit is off (MaxLineLength = 0), so nothing limits those lines: a
// client sends "BDAT 4294967295" and then one endless line, and go-smtp's
// textproto buffers it all (the process runs out of memory).
func TestSASLResponseIsNotACommandForTheLineLimit(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, func(c *Config) {
		c.Users = writeUsers(t, dir, "app s3cret")
		c.AllowInsecureAuth = true
	})
	c := greeted(t, h.addr, "EHLO app.example")
	c.expect("AUTH LOGIN", "334")
	// go-smtp: invalid base64, 454, back to commands. Wrapper: a chunk.
	c.expect("BDAT 4294967295", "454")
	long := "NOOP " + strings.Repeat("a", 10*h.cfg.MaxLineLength)
	fmt.Fprintf(c.conn, "%s\r\n", long)
	if r := c.reply(); !strings.HasPrefix(r, "500") {
		t.Fatalf("a %d-byte command line (max_line_length %d) got %q, want 500 Too long line",
			len(long), h.cfg.MaxLineLength, r)
	}
}

// The same desync, with a message: the DATA line sits in go-smtp's buffer
// with the start of the message behind it (the wrapper did not hold at it,
// taking it for chunk bytes), yet after the 354 the session reads the
// message directly from the socket. The relay forwards only what came after,
// and go-smtp drops the start it buffered: the message is cut.
func TestSASLResponseIsNotACommandForDirectData(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, func(c *Config) {
		c.Users = writeUsers(t, dir, "app s3cret")
		c.AllowInsecureAuth = true
	})
	c2 := greeted(t, h.addr, "EHLO app.example")
	c2.expect("AUTH LOGIN", "334")
	region := "AUTH PLAIN " + plainAuth("app", "s3cret") + "\r\nMAIL FROM:<app@app.example>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\nSubject: start\r\n\r\nfirst line\r\n"
	c2.expect(fmt.Sprintf("BDAT %d", len(region)), "454")
	fmt.Fprint(c2.conn, region)
	for _, want := range []string{"235", "250", "250", "354"} {
		if r := c2.reply(); !strings.HasPrefix(r, want) {
			t.Fatalf("got %q, want %s", r, want)
		}
	}
	fmt.Fprint(c2.conn, "second line\r\n.\r\n")
	if r := c2.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("end of data: %q", r)
	}
	got := string(h.up.MessageFor("bob@example.org").Data)
	if !strings.Contains(got, "first line") || !strings.Contains(got, "Subject: start") {
		t.Fatalf("forwarded message lost its start:\n%q", got)
	}
}

// A client that lets go-smtp's read of a SASL response time out: go-smtp's
// handleAuth gives up without a reply and its command loop reads on with a
// fresh deadline, so the next line is a command again. The wrapper, still
// waiting for the response after the 334, passed that line as one: a
// command "BDAT 17" went by unseen, the wrapper then read its chunk as
// commands, took "BDAT 4294967295" in it for a chunk and stopped limiting
// the lines go-smtp reads as commands after it.
func TestSASLResponseTimeoutEndsTheExchange(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, func(c *Config) {
		c.Users = writeUsers(t, dir, "app s3cret")
		c.AllowInsecureAuth = true
		c.IdleTimeout = time.Second
	})
	c := greeted(t, h.addr, "EHLO app.example")
	c.expect("AUTH LOGIN", "334")
	// Past go-smtp's deadline for the response, within the next one.
	time.Sleep(h.cfg.IdleTimeout * 3 / 2)
	// go-smtp: a command; its 17-byte chunk is the second line.
	c.expect("BDAT 17\r\nBDAT 4294967295", "502")
	long := "NOOP " + strings.Repeat("a", 10*h.cfg.MaxLineLength)
	fmt.Fprintf(c.conn, "%s\r\n", long)
	if r := c.reply(); !strings.HasPrefix(r, "500") {
		t.Fatalf("a %d-byte command line (max_line_length %d) got %q, want 500 Too long line",
			len(long), h.cfg.MaxLineLength, r)
	}
}
