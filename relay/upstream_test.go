package relay

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"net/smtp"
	"strings"
	"testing"
	"time"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

func upstreamTLS(t *testing.T) (cfg *tls.Config, caFile string) {
	t.Helper()
	cert, key := writeCert(t, t.TempDir(), "upstream.test")
	pair, err := tls.LoadX509KeyPair(cert, key)
	if err != nil {
		t.Fatal(err)
	}
	return &tls.Config{Certificates: []tls.Certificate{pair}}, cert
}

// sendThrough sends the plain fixture through the harness to rcpt and
// returns the error net/smtp saw.
func sendThrough(h *harness, rcpt string) error {
	msg := mustReadFile(h.t, "../testdata/messages/plain.eml")
	return smtp.SendMail(h.addr, nil, "app@app.example", []string{rcpt}, dotless(msg))
}

func TestUpstreamSchemes(t *testing.T) {
	tlsCfg, ca := upstreamTLS(t)
	for _, tc := range []struct {
		name     string
		opts     relaytest.Options
		scheme   string
		userinfo string
		trustCA  bool
		wantTLS  bool
		wantUser string
		wantErr  string // prefix of net/smtp's error, "" for success
	}{
		// smtp:// uses STARTTLS when offered, without verifying (Postfix "may").
		{name: "smtp-opportunistic", opts: relaytest.Options{TLS: tlsCfg}, scheme: "smtp", wantTLS: true},
		// ...and plaintext when not.
		{name: "smtp-plain", scheme: "smtp"},
		// starttls:// requires STARTTLS and a verified certificate.
		{name: "starttls", opts: relaytest.Options{TLS: tlsCfg}, scheme: "starttls", trustCA: true, wantTLS: true},
		{name: "starttls-unverified", opts: relaytest.Options{TLS: tlsCfg}, scheme: "starttls", wantErr: "451 4.4.1"},
		{name: "starttls-not-offered", scheme: "starttls", trustCA: true, wantErr: "451 4.4.1"},
		// smtps:// is TLS from the first byte.
		{name: "smtps", opts: relaytest.Options{TLS: tlsCfg, Implicit: true}, scheme: "smtps", trustCA: true, wantTLS: true},
		// AUTH to the upstream, over TLS.
		{name: "auth", opts: relaytest.Options{TLS: tlsCfg, Users: map[string]string{"relay": "p@ss"}},
			scheme: "starttls", userinfo: "relay:p%40ss@", trustCA: true, wantTLS: true, wantUser: "relay"},
		// A wrong upstream password is our configuration problem: 4xx, never a bounce.
		{name: "auth-wrong", opts: relaytest.Options{TLS: tlsCfg, Users: map[string]string{"relay": "p@ss"}},
			scheme: "starttls", userinfo: "relay:nope@", trustCA: true, wantErr: "451 4.4.1"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := relaytest.NewUpstreamWith(t, tc.opts)
			h := newHarness(t, func(c *Config) {
				c.Upstream = tc.scheme + "://" + tc.userinfo + up.Addr()
				c.UpstreamServerName = "upstream.test"
				if tc.trustCA {
					c.UpstreamCA = ca
				}
			})
			err := sendThrough(h, "bob@example.org")
			if tc.wantErr != "" {
				code, enh, _ := strings.Cut(tc.wantErr, " ")
				if err == nil || !strings.HasPrefix(err.Error(), code) || !strings.Contains(err.Error(), enh) {
					t.Fatalf("got %v, want %s", err, tc.wantErr)
				}
				if n := len(up.Messages()); n != 0 {
					t.Fatalf("upstream accepted %d messages", n)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			m := up.MessageFor("bob@example.org")
			if m.TLS != tc.wantTLS || m.User != tc.wantUser {
				t.Errorf("arrived with TLS=%v user=%q, want TLS=%v user=%q", m.TLS, m.User, tc.wantTLS, tc.wantUser)
			}
		})
	}
}

func TestUpstreamWithoutSMTPUTF8(t *testing.T) {
	up := relaytest.NewUpstreamWith(t, relaytest.Options{NoSMTPUTF8: true})
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.Addr() })
	c := greeted(t, h.addr, "EHLO client.example")
	c.expect("MAIL FROM:<app@app.example> SMTPUTF8", "250")
	// Permanent and explicit: retrying would loop for ever.
	c.expect("RCPT TO:<jörg@example.de>", "553 5.6.7")
}

func TestUpstreamConnectionReuse(t *testing.T) {
	h := newHarness(t, nil)
	for i := 0; i < 5; i++ {
		if err := sendThrough(h, "bob@example.org"); err != nil {
			t.Fatal(err)
		}
	}
	// An aborted transaction (client RSET) keeps the connection too.
	c := openTx(t, h.addr, "app@app.example", "bob@example.org")
	c.expect("RSET", "250")
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	if n := h.up.Conns(); n != 1 {
		t.Errorf("6 messages and an abort used %d upstream connections, want 1 (pooled)", n)
	}
}

func TestDotWriter(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		want   string
	}{
		{[]string{"a\r\n.b\r\n"}, "a\r\n..b\r\n.\r\n"},     // leading dot doubled
		{[]string{".\r\n"}, "..\r\n.\r\n"},                 // a lone dot line cannot end DATA
		{[]string{"a\r\n", ".b\r\n"}, "a\r\n..b\r\n.\r\n"}, // dot at a chunk start
		{[]string{"a\r", "\n.\r\n"}, "a\r\n..\r\n.\r\n"},   // CRLF split across chunks
		{[]string{"a\n.\nb"}, "a\r\n..\r\nb\r\n.\r\n"},     // bare LF becomes CRLF; end adds CRLF
		{[]string{"no newline"}, "no newline\r\n.\r\n"},    // unterminated last line
		{[]string{"x.y\r\n"}, "x.y\r\n.\r\n"},              // a dot inside a line is left alone
		{[]string{"", "a\r\n"}, "a\r\n.\r\n"},              // empty write
	} {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		d := &dotWriter{w: w, bol: true}
		for _, c := range tc.chunks {
			d.Write([]byte(c))
		}
		d.close()
		if out.String() != tc.want {
			t.Errorf("%q: got %q, want %q", tc.chunks, out.String(), tc.want)
		}
	}
}

func TestToSMTPError(t *testing.T) {
	se := toSMTPError(550, "5.1.1 No such user")
	if se.Code != 550 || se.EnhancedCode != [3]int{5, 1, 1} || se.Message != "No such user" {
		t.Errorf("got %+v", se)
	}
	se = toSMTPError(554, "Transaction failed")
	if se.EnhancedCode != [3]int{} || se.Message != "Transaction failed" {
		t.Errorf("without an enhanced code: %+v", se)
	}
	if got := xtext("a+b=c d"); got != "a+2Bb+3Dc+20d" {
		t.Errorf("xtext: %q", got)
	}
}

// fixORCPT applies fixORCPTLine to every complete line of b, as the
// connection wrapper does to command lines.
func fixORCPT(b []byte) []byte {
	var out []byte
	for len(b) > 0 {
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return append(out, b...)
		}
		fixed, _ := fixORCPTLine(b[:i+1])
		out = append(out, fixed...)
		b = b[i+1:]
	}
	return out
}

func TestFixORCPT(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		// Postfix's spelling of a UTF-8 original recipient becomes RFC 6533's.
		{"RCPT TO:<josé@exemple.fr> ORCPT=rfc822;jos+C3+A9@exemple.fr\r\n", "RCPT TO:<josé@exemple.fr> ORCPT=utf-8;jos\\x{E9}@exemple.fr\r\n"},
		// With NOTIFY after it, and lower case.
		{"rcpt to:<a@b> orcpt=RFC822;+C3+A9@b NOTIFY=NEVER\r\n", "rcpt to:<a@b> ORCPT=utf-8;\\x{E9}@b NOTIFY=NEVER\r\n"},
		// ASCII original recipients are left alone.
		{"RCPT TO:<a@b> ORCPT=rfc822;a+2Bb@b\r\n", "RCPT TO:<a@b> ORCPT=rfc822;a+2Bb@b\r\n"},
		// Only RCPT lines, only complete ones.
		{"NOOP ORCPT=rfc822;+C3+A9\r\nRCPT TO:<a@b> ORCPT=rfc822;+C3+A9@b", "NOOP ORCPT=rfc822;+C3+A9\r\nRCPT TO:<a@b> ORCPT=rfc822;+C3+A9@b"},
		// Invalid UTF-8 stays as it was (go-smtp refuses it).
		{"RCPT TO:<a@b> ORCPT=rfc822;+FF@b\r\n", "RCPT TO:<a@b> ORCPT=rfc822;+FF@b\r\n"},
	} {
		if got := string(fixORCPT([]byte(tc.in))); got != tc.want {
			t.Errorf("%q:\n got %q\nwant %q", tc.in, got, tc.want)
		}
	}
}

// Through the relay: Postfix's ORCPT for a UTF-8 recipient is accepted and
// reaches the upstream as a UTF-8 original recipient.
func TestPostfixStyleUTF8ORCPT(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ListenLMTP = Addrs{"127.0.0.1:0"} })
	for _, addr := range []string{h.addr, h.relay.Addr("lmtp").String()} {
		c := dialFrom(t, addr, "")
		c.reply()
		hello := "EHLO"
		if addr != h.addr {
			hello = "LHLO"
		}
		c.expect(hello+" mta.test", "250")
		c.expect("MAIL FROM:<rédaction@acme.example> SMTPUTF8", "250")
		c.expect("RCPT TO:<josé@exemple.fr> ORCPT=rfc822;jos+C3+A9@exemple.fr NOTIFY=FAILURE", "250")
		c.expect("DATA", "354")
		msg := mustReadFile(t, "../testdata/messages/plain.eml")
		c.conn.Write(dotStuff(msg))
		if r := c.reply(); !strings.HasPrefix(r, "250") {
			t.Fatalf("%s: DATA: %q", hello, r)
		}
		c.cmd("QUIT")
	}
	for _, m := range h.up.Messages() {
		o := m.RcptOpts[0]
		if o.OriginalRecipientType != "UTF-8" || o.OriginalRecipient != "josé@exemple.fr" {
			t.Errorf("upstream got ORCPT %s;%s, want UTF-8;josé@exemple.fr", o.OriginalRecipientType, o.OriginalRecipient)
		}
	}
	if len(h.up.Messages()) != 2 {
		t.Fatalf("upstream got %d messages, want 2", len(h.up.Messages()))
	}
}

// The upstream transaction opened at RCPT goes stale while the client
// takes its time before DATA (upstreams drop idle clients): the relay
// retries on a fresh connection, and the message is delivered once.
func TestUpstreamIdleDuringUpload(t *testing.T) {
	up := relaytest.NewUpstreamWith(t, relaytest.Options{IdleTimeout: 300 * time.Millisecond})
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.Addr() })
	c := openTx(t, h.addr, "app@app.example", "bob@example.org")
	time.Sleep(700 * time.Millisecond) // the upstream hangs up meanwhile
	c.expect("DATA", "354")
	msg := mustReadFile(t, "../testdata/messages/plain.eml")
	c.conn.Write(dotStuff(msg))
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("after the upstream dropped the idle transaction: %q, want 250", r)
	}
	if n := len(up.Messages()); n != 1 {
		t.Fatalf("upstream got %d messages, want 1", n)
	}
}
