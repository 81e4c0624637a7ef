package relay

import (
	"strings"
	"testing"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// Over LMTP each recipient gets its own status after DATA, so Postfix
// defers only the recipient whose copy failed and never sends the other
// one a duplicate.
func TestLMTPPerRecipientStatus(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ListenLMTP = Addrs{"127.0.0.1:0"} })
	h.setConsent("bob@example.com", "granted")
	// alice's copy (stripped) is deferred once; bob's (original) goes through.
	h.up.Inject(relaytest.Fault{Phase: "data", Rcpt: "alice@example.fr", Times: 1, Err: smtpErr(451, "4.3.0 try later")})

	c := openLMTPTx(t, h.relay.Addr("lmtp").String(), "news@acme.example", "alice@example.fr", "bob@example.com")
	c.expect("DATA", "354")
	msg := mustReadFile(t, "../testdata/messages/newsletter.eml")
	c.conn.Write(dotStuff(msg))
	alice, bob := c.reply(), c.reply()
	if !strings.HasPrefix(alice, "451 4.3.0") || !strings.Contains(alice, "alice@example.fr") {
		t.Errorf("alice's status: %q, want 451", alice)
	}
	if !strings.HasPrefix(bob, "250") || !strings.Contains(bob, "bob@example.com") {
		t.Errorf("bob's status: %q, want 250", bob)
	}
	if n := len(h.up.Messages()); n != 1 {
		t.Fatalf("upstream has %d messages, want bob's only", n)
	}
	// Postfix retries alice alone: delivered, and bob gets nothing twice.
	c.expect("MAIL FROM:<news@acme.example>", "250")
	c.expect("RCPT TO:<alice@example.fr>", "250")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(msg))
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("alice's retry: %q", r)
	}
	if len(h.up.Messages()) != 2 || len(h.up.MessageFor("bob@example.com").Rcpts) != 1 {
		t.Fatal("want exactly one copy each")
	}
}

// Over LMTP there is no single reply to classify the message by: when the
// upstream refuses every recipient permanently, the audit record says
// refused (not deferred, which would tell the operator Postfix retries it).
func TestLMTPAllRefusedIsAuditedRefused(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ListenLMTP = Addrs{"127.0.0.1:0"} })
	h.setConsent("bob@example.com", "granted")
	h.up.Inject(relaytest.Fault{Phase: "data", Err: smtpErr(554, "5.7.1 Policy rejection")})

	c := openLMTPTx(t, h.relay.Addr("lmtp").String(), "news@acme.example", "alice@example.fr", "bob@example.com")
	c.expect("DATA", "354")
	msg := mustReadFile(t, "../testdata/messages/newsletter.eml")
	c.conn.Write(dotStuff(msg))
	for _, who := range []string{"alice", "bob"} {
		if r := c.reply(); !strings.HasPrefix(r, "554 5.7.1") {
			t.Fatalf("%s's status: %q, want 554", who, r)
		}
	}
	c.cmd("QUIT")
	recs := h.auditRecords()
	if len(recs) != 1 {
		t.Fatalf("%d audit records, want 1", len(recs))
	}
	if got := recs[0].Outcome; got != "refused" {
		t.Errorf("audit outcome %q for a message every recipient refused permanently, want refused", got)
	}
}
