package relay

import (
	"net/smtp"

	gosmtp "github.com/emersion/go-smtp"
	"testing"
	"time"
)

// An upstream whose 250 names no queue id must still give the client a
// plain 250 (this once panicked inside go-smtp on a typed nil error).
func TestUpstreamWithoutQueueID(t *testing.T) {
	h := newHarness(t, nil)
	h.up.PlainReplies = true
	msg := mustReadFile(t, "../testdata/messages/plain.eml")
	if err := smtp.SendMail(h.addr, nil, "a@app.example", []string{"b@example.org"}, dotless(msg)); err != nil {
		t.Fatalf("send: %v", err)
	}
	if n := len(h.up.Messages()); n != 1 {
		t.Fatalf("upstream got %d messages", n)
	}
}

// dotless converts a fixture to CRLF; net/smtp does the dot-stuffing.
func dotless(b []byte) []byte {
	out := make([]byte, 0, len(b)+len(b)/20)
	for i := 0; i < len(b); i++ {
		if b[i] == '\n' && (i == 0 || b[i-1] != '\r') {
			out = append(out, '\r')
		}
		out = append(out, b[i])
	}
	return out
}

func smtpErr(code int, text string) *gosmtp.SMTPError { return toSMTPError(code, text) }

// serve stops the relay it just started when a later step of its start-up
// fails (an HTTP port in use); that Close must return even when it comes
// before the listener goroutines have begun to accept.
func TestCloseRightAfterStartReturns(t *testing.T) {
	for i := 0; i < 30; i++ {
		h := newHarness(t, nil)
		done := make(chan struct{})
		go func() {
			h.relay.Close()
			close(done)
		}()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("round %d: Close right after Start still waiting after 10 s: a listener goroutine never stopped", i)
		}
	}
}
