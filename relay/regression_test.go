package relay

import (
	"fmt"
	"github.com/emersion/go-smtp"
	"github.com/pixelrelay/pixelrelay/relay/relaytest"
	"strings"
	"testing"
	"time"
)

// The content of a BDAT chunk is message, never command: a chunk whose
// text looks like an RCPT with Postfix's ORCPT spelling must reach the
// upstream untouched. Rewriting it would change the message and, since the
// rewrite changes its length, shift the chunk boundary so that the tail
// runs as SMTP commands: a smuggled second message.
func TestBDATContentIsNeverACommand(t *testing.T) {
	h := newHarness(t, nil)
	inner := "Subject: smuggled\r\n\r\nevil\r\n"
	payload := "MAIL FROM:<evil@ok.example>\r\nRCPT TO:<victim@ok.example>\r\n" +
		fmt.Sprintf("BDAT %d LAST\r\n%s", len(inner), inner)
	// Each U+0100 grows from "+C4+80" (6) to `\x{100}` (7); "rfc822;"
	// shrinks to "utf-8;" by one.
	orcptLine := "RCPT TO:<x@ok.example> ORCPT=rfc822;" + strings.Repeat("+C4+80", len(payload)+1) + "@ok.example\r\n"
	content := "Subject: carrier\r\n\r\nQuoted from a bug report:\r\n" + orcptLine + payload

	c := openTx(t, h.addr, "a@ok.example", "b@ok.example")
	fmt.Fprintf(c.conn, "BDAT %d LAST\r\n%s", len(content), content)
	first := c.reply()
	c.cmd("QUIT")
	c.drain()

	msgs := h.up.Messages()
	for _, m := range msgs {
		for _, r := range m.Rcpts {
			if r == "victim@ok.example" {
				t.Errorf("a second message was smuggled to %s from <%s>", r, m.From)
			}
		}
	}
	if !strings.HasPrefix(first, "250") {
		t.Fatalf("BDAT LAST: %q", first)
	}
	got := h.up.MessageFor("b@ok.example")
	if !strings.HasSuffix(string(got.Data), content) {
		t.Errorf("the carrier message was not relayed byte for byte; upstream got:\n%q", got.Data)
	}
}

// An upstream that refuses a recipient names it in its reply, as Postfix
// does ("550 5.1.1 <bob@example.com>: Recipient address rejected"); the
// operational log must not carry that address.
func TestUpstreamReplyAddressNotLogged(t *testing.T) {
	h := newHarness(t, nil)
	h.up.Inject(relaytest.Fault{Phase: "rcpt", Rcpt: "bob@ok.example",
		Err: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
			Message: "<bob@ok.example>: Recipient address rejected: User unknown in virtual mailbox table"}})
	c := openTx(t, h.addr, "a@ok.example")
	c.expect("RCPT TO:<bob@ok.example>", "550")
	c.cmd("QUIT")
	if logs := h.logs.String(); strings.Contains(logs, "bob@ok.example") {
		t.Errorf("plaintext recipient address in the operational log:\n%s", logs)
	}
}

// The upstream's reply may name a recipient in a form no pattern can be
// trusted to find (a quoted local part with a blank, unbracketed); the log
// keeps the reply's codes and leaves its text out.
func TestUpstreamReplyTextNotLogged(t *testing.T) {
	h := newHarness(t, nil)
	h.up.Inject(relaytest.Fault{Phase: "rcpt", Rcpt: "john doe@ok.example",
		Err: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1},
			Message: "john doe@ok.example: Recipient address rejected"}})
	c := openTx(t, h.addr, "a@ok.example")
	c.expect(`RCPT TO:<"john doe"@ok.example>`, "550 5.1.1")
	c.cmd("QUIT")
	logs := h.logs.String()
	if strings.Contains(logs, "john") {
		t.Errorf("part of a recipient address in the operational log:\n%s", logs)
	}
	if !strings.Contains(logs, `reply="550 5.1.1"`) {
		t.Errorf("the upstream's refusal is not in the log with its codes:\n%s", logs)
	}
}

// partialPermanent runs one transaction in which bob (consenting, keep
// group) is accepted and alice (enforce group) is refused at DATA with a
// 5xx, and returns the client's final reply.
func partialPermanent(t *testing.T, h *harness, aliceParams string) string {
	t.Helper()
	h.setConsent("bob@example.com", "granted")
	h.up.Inject(relaytest.Fault{Phase: "data", Rcpt: "alice@example.fr", Times: 1,
		Err: &smtp.SMTPError{Code: 554, EnhancedCode: smtp.EnhancedCode{5, 7, 1}, Message: "Policy rejection"}})
	c := openTx(t, h.addr, "news@acme.example")
	c.expect("RCPT TO:<alice@example.fr>"+aliceParams, "250")
	c.expect("RCPT TO:<bob@example.com>", "250")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff([]byte("From: news@acme.example\r\nSubject: hi\r\n\r\nhello\r\n")))
	final := c.reply()
	c.cmd("QUIT")
	return final
}

func dsnsTo(h *harness, addr string) int {
	n := 0
	for _, m := range h.up.Messages() {
		if m.From == "" && len(m.Rcpts) == 1 && m.Rcpts[0] == addr {
			n++
		}
	}
	return n
}

// When the DSN for a permanently refused recipient cannot be handed to the
// upstream, the sender must still learn of the failure: the client gets
// 4xx and keeps the message instead of a 250 that hides it.
func TestDSNFailureKeepsTheMessage(t *testing.T) {
	h := newHarness(t, nil)
	// The upstream will not take the DSN (its RCPT to the sender is refused).
	h.up.Inject(relaytest.Fault{Phase: "rcpt", Rcpt: "news@acme.example",
		Err: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}})
	final := partialPermanent(t, h, "")
	if strings.HasPrefix(final, "250") && dsnsTo(h, "news@acme.example") == 0 {
		t.Errorf("client heard %q, alice was refused permanently, and no DSN reached the upstream: the failure is lost", final)
	}
}

// RFC 3461 §4.1: NOTIFY=NEVER means no DSN at all for that recipient.
func TestDSNHonoursNotifyNever(t *testing.T) {
	h := newHarness(t, nil)
	final := partialPermanent(t, h, " NOTIFY=NEVER")
	if !strings.HasPrefix(final, "250") {
		t.Fatalf("final reply %q", final)
	}
	if n := dsnsTo(h, "news@acme.example"); n != 0 {
		t.Errorf("NOTIFY=NEVER recipient refused, yet %d DSN(s) were sent to the sender", n)
	}
}

// A quoted local part is valid SMTP, but the consent store cannot
// normalise it, and its error quotes the address: the log must not, not
// even the words before a blank. Each such recipient still gets a
// pseudonym of its own in the audit log, visibly not the store's.
func TestPseudonymErrorAddressNotLogged(t *testing.T) {
	h := newHarness(t, nil)
	c := openTx(t, h.addr, "a@ok.example")
	c.expect(`RCPT TO:<"john.doe smith"@ok.example>`, "250")
	c.expect(`RCPT TO:<"jane roe"@ok.example>`, "250")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff([]byte("From: a@ok.example\r\nSubject: hi\r\n\r\nhello\r\n")))
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("final reply %q", r)
	}
	c.cmd("QUIT")
	logs := h.logs.String()
	for _, part := range []string{"john", "smith", "jane", "roe"} {
		if strings.Contains(logs, part) {
			t.Errorf("%q of a recipient address in the operational log:\n%s", part, logs)
		}
	}
	recs := h.auditRecords()
	if len(recs) != 1 || len(recs[0].Recipients) != 2 {
		t.Fatalf("audit records: %+v", recs)
	}
	a, b := recs[0].Recipients[0].Pseudonym, recs[0].Recipients[1].Pseudonym
	if a == b {
		t.Errorf("two recipients share the pseudonym %q in the audit log", a)
	}
	for _, p := range []string{a, b} {
		if !strings.HasPrefix(p, "hmac-sha256-ephemeral:") {
			t.Errorf("pseudonym %q of an address the store cannot pseudonymise is not marked as per-process", p)
		}
	}
}

// A retry in which one group was wholly delivered before, while the other
// group's upstream connection breaks at a later RCPT, must not fail (it
// once dereferenced the broken group's nil transaction), and each
// recipient gets exactly one copy however often the client sends again.
func TestRetryWithBrokenGroup(t *testing.T) {
	h := newHarness(t, nil)
	h.setConsent("alice@example.com", "granted") // keep group
	// carol's RCPT always kills the enforce group's upstream connection.
	h.up.Inject(relaytest.Fault{Phase: "rcpt", Rcpt: "carol@example.org", Drop: true})
	// The first attempt's keep copy is deferred: a partial failure.
	h.up.Inject(relaytest.Fault{Phase: "data", Rcpt: "alice@example.com", Times: 1,
		Err: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}})
	msg := dotStuff([]byte("From: news@acme.example\r\nMessage-ID: <r1@acme.example>\r\nSubject: hi\r\n\r\nhello\r\n"))
	attempt := func() string {
		c := openTx(t, h.addr, "news@acme.example", "alice@example.com", "bob@example.org")
		c.expect("RCPT TO:<carol@example.org>", "4")
		c.expect("DATA", "354")
		c.conn.Write(msg)
		r := c.reply()
		c.cmd("QUIT")
		return r
	}
	if r := attempt(); !strings.HasPrefix(r, "451 4.4.0") {
		t.Fatalf("first attempt: %q, want the partial-failure 451", r)
	}
	second := attempt()
	if !strings.HasPrefix(second, "250") {
		t.Errorf("retry: %q, want 250 (alice delivered now, bob already had it)", second)
	}
	third := attempt()
	n := 0
	for _, m := range h.up.Messages() {
		for _, r := range m.Rcpts {
			if r == "alice@example.com" {
				n++
			}
		}
	}
	if n != 1 {
		t.Errorf("alice received %d copies (replies: %q, %q)", n, second, third)
	}
}

// An upstream that wants AUTH the relay was not configured for answers
// MAIL with 530 5.7.0. That is the relay's own misconfiguration: the
// client must hear 4xx and keep the mail until the operator fixes it.
func TestUpstreamAuthRequiredIsTemporary(t *testing.T) {
	up := relaytest.NewUpstreamWith(t, relaytest.Options{Users: map[string]string{"relay": "pw"}})
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.Addr() })
	c := openTx(t, h.addr, "a@ok.example")
	if r := c.cmd("RCPT TO:<b@ok.example>"); strings.HasPrefix(r, "5") {
		t.Errorf("upstream auth missing on our side, client told %q (a permanent bounce)", r)
	}
}

// STARTTLS between BDAT chunks makes go-smtp log the session out while
// the Data goroutine waits for the next chunk; that must not deadlock the
// session (it once held the session lock for the whole message).
func TestStartTLSBetweenBDATChunks(t *testing.T) {
	dir := t.TempDir()
	cert, key := writeCert(t, dir, "relay.test")
	h := newHarness(t, func(c *Config) { c.TLSCert, c.TLSKey = cert, key })
	c := openTx(t, h.addr, "a@ok.example", "b@ok.example")
	fmt.Fprintf(c.conn, "BDAT 5\r\nhello")
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("BDAT chunk: %q", r)
	}
	c.startTLS()
	fmt.Fprintf(c.conn, "EHLO client.example\r\n")
	c.conn.SetReadDeadline(time.Now().Add(3 * time.Second))
	lines, err := readReply(c.r)
	if err != nil {
		t.Fatalf("no answer to EHLO after STARTTLS between BDAT chunks (%v): the session is deadlocked; open connections: %d",
			err, h.relay.conns.count())
	}
	if !strings.HasPrefix(lines[len(lines)-1], "250") {
		t.Fatalf("EHLO after STARTTLS: %q", lines)
	}
}
