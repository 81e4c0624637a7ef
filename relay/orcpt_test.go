package relay

import (
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// fixORCPTLine looked for " ORCPT=RFC822;" in bytes.ToUpper(line), whose
// length differs from line's when line holds invalid UTF-8 (each such byte
// becomes a 3-byte U+FFFD) or letters whose upper case is shorter or longer
// (ı, ſ, ȿ). With the RCPT line at the end of the wrapper's read buffer the
// index fell past it and the relay process panicked: any client, before
// any authentication, could take every session down.
func TestORCPTLineWithInvalidUTF8DoesNotCrash(t *testing.T) {
	h := newHarness(t, nil)
	c := greeted(t, h.addr, "EHLO client.example")
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

// A bug in the connection wrapper runs in go-smtp's read loop, where
// nothing recovers a panic: it must cost the one connection, not the
// process and every other session.
func TestWrapperPanicClosesOnlyThatConnection(t *testing.T) {
	h := newHarness(t, nil)
	var armed atomic.Bool
	hook := func() {
		if armed.CompareAndSwap(true, false) {
			var s []byte
			_ = s[:len(s)+1] // the kind of fault the ORCPT bug was
		}
	}
	h.relay.handOverHook.Store(&hook)

	bad := dialFrom(t, h.addr, "")
	bad.reply()
	armed.Store(true)
	bad.conn.Write([]byte("EHLO client.example\r\n"))
	bad.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := bad.conn.Read(make([]byte, 512)); err == nil {
		t.Fatalf("the connection whose read failed got a reply (%d bytes), want it closed", n)
	}
	if !strings.Contains(h.logs.String(), "internal error reading a client's commands") {
		t.Errorf("no log line for the recovered fault:\n%s", h.logs.String())
	}

	good := dialFrom(t, h.addr, "")
	good.reply()
	good.expect("EHLO client.example", "250")
	good.expect("NOOP", "250")
}
