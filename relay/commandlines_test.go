package relay

import (
	"fmt"
	"strings"
	"testing"
	"time"
)

// Postfix writes its RCPT line in one go, but TCP may still deliver it in
// two segments. The UTF-8 ORCPT translation must not depend on that: a
// recipient refused with 501 here is bounced by Postfix. Checked on every
// kind of listener that sees the plaintext, including an SMTP listener that
// offers STARTTLS to a client that does not take it.
func TestORCPTSplitAcrossPackets(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "relay.test")
	h := newHarness(t, func(c *Config) { c.ListenLMTP = Addrs{"127.0.0.1:0"} })
	withTLS := newHarness(t, func(c *Config) { c.TLSCert, c.TLSKey = cert, key })
	line := "RCPT TO:<josé@exemple.fr> ORCPT=rfc822;jos+C3+A9@exemple.fr NOTIFY=FAILURE\r\n"
	for _, tc := range []struct {
		name, addr, hello string
		h                 *harness
	}{
		{"smtp", h.addr, "EHLO", h},
		{"lmtp", h.relay.Addr("lmtp").String(), "LHLO", h},
		{"smtp with a certificate", withTLS.addr, "EHLO", withTLS},
	} {
		for _, cut := range []int{1, 30, strings.Index(line, "+C3") + 1, len(line) - 1} {
			c := dialFrom(t, tc.addr, "")
			c.reply()
			c.expect(tc.hello+" mta.test", "250")
			c.expect("MAIL FROM:<rédaction@acme.example> SMTPUTF8", "250")
			c.conn.Write([]byte(line[:cut]))
			// Long enough for the relay to read the first part alone.
			time.Sleep(50 * time.Millisecond)
			c.conn.Write([]byte(line[cut:]))
			if r := c.reply(); !strings.HasPrefix(r, "250") {
				t.Fatalf("%s, RCPT cut after %d bytes: %q, want 250", tc.name, cut, r)
			}
			c.expect("DATA", "354")
			msg := mustReadFile(t, "../testdata/messages/plain.eml")
			c.conn.Write(dotStuff(msg))
			if r := c.reply(); !strings.HasPrefix(r, "250") {
				t.Fatalf("%s: DATA: %q", tc.name, r)
			}
			c.cmd("QUIT")
		}
	}
	for _, h := range []*harness{h, withTLS} {
		for _, m := range h.up.Messages() {
			if o := m.RcptOpts[0]; o.OriginalRecipientType != "UTF-8" || o.OriginalRecipient != "josé@exemple.fr" {
				t.Errorf("upstream got ORCPT %s;%s, want UTF-8;josé@exemple.fr", o.OriginalRecipientType, o.OriginalRecipient)
			}
		}
	}
	if n, m := len(h.up.Messages()), len(withTLS.up.Messages()); n != 8 || m != 4 {
		t.Fatalf("upstreams got %d and %d messages, want 8 and 4", n, m)
	}
}

// A translated ORCPT grows the RCPT line. When the client pipelines a BDAT
// chunk behind it, the chunk must still end where the client's BDAT says:
// its text, even when it looks like an RCPT line with a Postfix ORCPT,
// reaches the upstream untouched, and nothing of it runs as a command.
func TestGrownRCPTLineThenBDATChunk(t *testing.T) {
	h := newHarness(t, nil)
	// 100 U+0410 in Postfix's spelling: the line grows by 99 bytes.
	rcpt := "RCPT TO:<b@ok.example> ORCPT=rfc822;" + strings.Repeat("+D0+90", 100) + "@ok.example\r\n"
	// The chunk's last 99 bytes (as much as the RCPT line grew) would grow
	// too if taken for a command, and what grew would be read as the next
	// command.
	tail := "RCPT TO:<v@x> ORCPT=rfc822;" + strings.Repeat("+D0+90", 11) + "@x\r\n"
	tail = strings.Replace(tail, "<v", "<"+strings.Repeat("v", 99-len(tail)), 1)
	chunk := "Subject: pipelined\r\n\r\n" + strings.Repeat("0123456789\r\n", 400) + tail
	c := openTx(t, h.addr, "a@ok.example")
	fmt.Fprintf(c.conn, "%sBDAT %d LAST\r\n%sQUIT\r\n", rcpt, len(chunk), chunk)
	var replies []string
	for r := c.reply(); r != "EOF"; r = c.reply() {
		replies = append(replies, r[:3])
	}
	if got := strings.Join(replies, " "); got != "250 250 221" {
		t.Errorf("replies %s, want 250 250 221 (RCPT, BDAT, QUIT)", got)
	}
	msgs := h.up.Messages()
	if len(msgs) != 1 || len(msgs[0].Rcpts) != 1 {
		t.Fatalf("upstream got %d messages, want one for b@ok.example", len(msgs))
	}
	if !strings.HasSuffix(string(msgs[0].Data), chunk) {
		t.Errorf("the chunk was not relayed byte for byte; it ends upstream as:\n%q", lastN(msgs[0].Data, 200))
	}
}

func lastN(b []byte, n int) []byte { return b[max(0, len(b)-n):] }

// A client may send the message in the same packet as its DATA line,
// before the 354 (pipelining without waiting, as some bulk senders do).
// The message is message: a line in it that looks like an RCPT with a
// Postfix ORCPT reaches the upstream as written. And once it has ended,
// the command line limit holds again: a command over max_line_length is
// refused with 500 and the connection closed.
func TestMessageSentBefore354(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxLineLength = 1000 })
	body := "Subject: early\r\n\r\nRCPT TO:<a@b> ORCPT=rfc822;jos+C3+A9@exemple.fr\r\n"
	c := openTx(t, h.addr, "a@ok.example", "b@ok.example")
	c.conn.Write([]byte("DATA\r\n" + body + ".\r\n"))
	if r := c.reply(); !strings.HasPrefix(r, "354") {
		t.Fatalf("DATA: %q", r)
	}
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("end of data: %q", r)
	}
	if r := c.cmd("NOOP " + strings.Repeat("a", 200000)); !strings.HasPrefix(r, "500") {
		t.Errorf("a 200 KB command after the message: %q, want 500 (max_line_length 1000)", r)
	}
	if !c.closed() {
		t.Errorf("connection still open after a command over max_line_length")
	}
	msgs := h.up.Messages()
	if len(msgs) != 1 {
		t.Fatalf("upstream got %d messages, want 1", len(msgs))
	}
	if !strings.HasSuffix(string(msgs[0].Data), body) {
		t.Errorf("the message was not relayed as sent; it ends upstream as:\n%q", lastN(msgs[0].Data, 100))
	}
}

// data_timeout bounds a whole message, BDAT chunks included: go-smtp
// restarts the command deadline at every BDAT line, so a client sending
// small chunks, each well within command_timeout, would otherwise hold the
// session (and the upstream transactions it opened) for ever.
func TestDataTimeoutAcrossBDATChunks(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.CommandTimeout = 400 * time.Millisecond
		c.DataTimeout = 700 * time.Millisecond
	})
	c := openTx(t, h.addr, "a@ok.example", "b@ok.example")
	start := time.Now()
	var last string
	// 10 chunks 200 ms apart: 2 s in all, each chunk within the command
	// timeout.
	for i := 0; i < 10; i++ {
		chunk := fmt.Sprintf("Line %d\r\n", i)
		if last = c.cmd(fmt.Sprintf("BDAT %d\r\n%s", len(chunk), chunk[:len(chunk)-2])); !strings.HasPrefix(last, "250") {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.HasPrefix(last, "421") {
		t.Fatalf("BDAT chunks over %v outlived data_timeout 700ms; last reply %q, want 421", time.Since(start).Round(time.Millisecond), last)
	}
	if n := len(h.up.Messages()); n != 0 {
		t.Errorf("upstream got %d messages", n)
	}
}

// On an SMTP listener with a certificate, a client that stays in clear gets
// what README promises for max_line_length, as on a listener without one:
// a message line over the limit refuses the message with 552 5.5.6 and the
// session goes on. go-smtp's own limit, which stays on for TLS sessions,
// used to count message lines too and answer the next command with 500 and
// a closed connection.
func TestLongMessageLineOnListenerWithCertificate(t *testing.T) {
	cert, key := writeCert(t, t.TempDir(), "relay.test")
	h := newHarness(t, func(c *Config) { c.TLSCert, c.TLSKey = cert, key; c.MaxLineLength = 1000 })
	c := openTx(t, h.addr, "a@ok.example", "b@ok.example")
	c.expect("DATA", "354")
	c.conn.Write([]byte("Subject: long\r\n\r\n" + strings.Repeat("a", 2000) + "\r\n.\r\n"))
	if r := c.reply(); !strings.HasPrefix(r, "552 5.5.6") {
		t.Fatalf("a 2000-byte message line: %q, want 552 5.5.6", r)
	}
	c.expect("NOOP", "250")
	if n := len(h.up.Messages()); n != 0 {
		t.Errorf("upstream got %d messages", n)
	}
}

// A command line is held until its end arrives, but not for ever: past
// max_line_length without a line end the client gets 500 and is
// disconnected, rather than the relay buffering whatever it sends.
func TestUnfinishedCommandLineOverLimit(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.MaxLineLength = 1000 })
	c := greeted(t, h.addr, "EHLO client.example")
	c.conn.Write([]byte("NOOP " + strings.Repeat("a", 994)))
	time.Sleep(50 * time.Millisecond)
	c.conn.Write([]byte("a\r\n")) // 1000 bytes before the line end: within
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("a 1000-byte NOOP in two packets: %q, want 250", r)
	}
	for i := 0; i < 200; i++ { // 200 KB, no line end
		if _, err := c.conn.Write([]byte(strings.Repeat("b", 1000))); err != nil {
			break
		}
	}
	if r := c.reply(); !strings.HasPrefix(r, "500") {
		t.Errorf("200 KB without a line end: %q, want 500", r)
	}
	if !c.closed() {
		t.Errorf("connection still open after a command over max_line_length")
	}
}
