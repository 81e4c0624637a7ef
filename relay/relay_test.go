package relay

import (
	"net/smtp"

	gosmtp "github.com/emersion/go-smtp"
	"os"
	"testing"
)

// An upstream whose 250 names no queue id must still give the client a
// plain 250 (this once panicked inside go-smtp on a typed nil error).
func TestUpstreamWithoutQueueID(t *testing.T) {
	h := newHarness(t, nil)
	h.up.PlainReplies = true
	msg, _ := os.ReadFile("../testdata/messages/plain.eml")
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
