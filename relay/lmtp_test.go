package relay

import (
	"os"
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

	c := dialFrom(t, h.relay.Addr("lmtp").String(), "")
	c.reply()
	c.expect("LHLO postfix.example", "250")
	c.expect("MAIL FROM:<news@acme.example>", "250")
	c.expect("RCPT TO:<alice@example.fr>", "250")
	c.expect("RCPT TO:<bob@example.com>", "250")
	c.expect("DATA", "354")
	msg, _ := os.ReadFile("../testdata/messages/newsletter.eml")
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
