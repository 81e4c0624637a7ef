package relay

import (
	"strings"
	"testing"
)

// fixORCPTLine looked for " ORCPT=RFC822;" in bytes.ToUpper(line), whose
// length differs from line's when line holds invalid UTF-8 (each such byte
// becomes a 3-byte U+FFFD) or letters whose upper case is shorter or longer
// (ı, ſ, ȿ). With the RCPT line at the end of the wrapper's read buffer the
// index fell past it and the relay process panicked: any client, before
// any authentication, could take every session down.
func TestORCPTLineWithInvalidUTF8DoesNotCrash(t *testing.T) {
	h := newHarness(t, nil)
	c := dialFrom(t, h.addr, "")
	c.reply()
	c.expect("EHLO client.example", "250")
	bad := "RCPT " + strings.Repeat("\x8f", 5) + " ORCPT=RFC822;\r\n"
	pad := "NOOP " + strings.Repeat("a", 4096-len(bad)-7) + "\r\n"
	c.conn.Write([]byte(pad + bad))
	c.reply() // NOOP
	if r := c.reply(); !strings.HasPrefix(r, "5") {
		t.Fatalf("RCPT with invalid UTF-8: %q, want a 5xx reply", r)
	}
	c.expect("NOOP", "250")
	for _, line := range []string{
		"RCPT T\x8f\x8f\x8f\x8f\x8fO:<a@b> ORCPT=rfc822;+C3+A9@b",
		"RCPT TO:<ſ@x> ORCPT=rfc822;+C3+A9@x\r\n",
		"RCPT TO:<ȿȿȿ@x> ORCPT=rfc822;+C3+A9@x\r\n",
	} {
		fixed, _ := fixORCPTLine([]byte(line)) // must not panic
		if i := strings.Index(line, "ORCPT="); i > 0 && string(fixed[:i]) != line[:i] {
			t.Errorf("%q: the part before ORCPT changed: %q", line, fixed)
		}
	}
}
