package relay

import (
	"errors"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// faultyRewriter is the real rewrite engine, made to fail (as a full disk
// under a spilled copy would) or to panic (a bug) on demand: neither can
// be produced on demand from the real engine with valid input.
type faultyRewriter struct {
	Rewriter
	fail, panics atomic.Bool
}

func (f *faultyRewriter) Rewrite(dst io.Writer, src io.Reader, d rewrite.Decision) (rewrite.Report, error) {
	if d.Action != rewrite.Keep {
		if f.panics.Load() {
			panic("rewrite bug")
		}
		if f.fail.Load() {
			io.CopyN(dst, src, 20)
			return rewrite.Report{}, errors.New("write /var/tmp/pixelrelay-copy-1: no space left on device")
		}
	}
	return f.Rewriter.Rewrite(dst, src, d)
}

func withFaultyRewriter(fr **faultyRewriter) func(*Deps) {
	return func(d *Deps) {
		*fr = &faultyRewriter{Rewriter: d.Rewriter}
		d.Rewriter = *fr
	}
}

var signedMessage = []byte("DKIM-Signature: v=1; a=rsa-sha256; d=acme.example; s=s1; h=from; bh=x; b=y\r\n" +
	"From: news@acme.example\r\nSubject: hi\r\n\r\nhello <img src=\"https://t.example/open.gif\" width=1 height=1>\r\n")

// Our own failure while building a copy is our fault, not the next hop's:
// the client hears 451 4.3.0 (local error), and the upstream receives no
// part of the copy.
func TestOwnFaultIsLocalError(t *testing.T) {
	var fr *faultyRewriter
	h := newHarnessDeps(t, nil, withFaultyRewriter(&fr))
	fr.fail.Store(true)
	for _, msg := range [][]byte{[]byte("From: news@acme.example\r\nSubject: hi\r\n\r\nhello\r\n"), signedMessage} {
		c := openTx(t, h.addr, "news@acme.example", "alice@example.fr")
		c.expect("DATA", "354")
		c.conn.Write(dotStuff(msg))
		if r := c.reply(); !strings.HasPrefix(r, "451 4.3.0") {
			t.Errorf("rewrite failed on our side, client heard %q, want 451 4.3.0", r)
		}
		c.cmd("QUIT")
	}
	if n := len(h.up.Messages()); n != 0 {
		t.Errorf("upstream accepted %d messages, want none", n)
	}
}

// A panic while delivering (a bug) must not leave the upstream
// transaction opened at RCPT hanging: it is ended, and its connection
// serves the next message.
func TestPanicInDeliverEndsUpstreamTransactions(t *testing.T) {
	var fr *faultyRewriter
	h := newHarnessDeps(t, nil, withFaultyRewriter(&fr))
	fr.panics.Store(true)
	c := openTx(t, h.addr, "news@acme.example", "alice@example.fr")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(signedMessage))
	if r := c.reply(); !strings.HasPrefix(r, "4") {
		t.Fatalf("after a panic the client heard %q, want 4xx", r)
	}
	fr.panics.Store(false)
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	if n := h.up.Conns(); n != 1 {
		t.Errorf("upstream saw %d connections, want 1: the transaction open at the panic was not ended and its connection leaked", n)
	}
}

// Under BDAT the message streams in a goroutine while go-smtp keeps
// reading commands: a RSET and a new MAIL can come before that goroutine
// ends. Its end must not mark the new transaction as finished (a drain
// would then cut the session off mid-transaction).
func TestEndOfDataKeepsANewerTransaction(t *testing.T) {
	h := newHarness(t, nil)
	// One real session first: Relay.Close does not stop a listener whose
	// Serve has not started yet (relay.go), and this test is over sooner.
	c := dialFrom(t, h.addr, "")
	c.reply()
	c.cmd("QUIT")
	s := &session{r: h.relay, remote: netip.MustParseAddr("127.0.0.1")}
	if err := s.Mail("news@acme.example", nil); err != nil {
		t.Fatal(err)
	}
	s.takeTx() // the BDAT goroutine owns the first transaction now
	s.Reset()
	if err := s.Mail("news@acme.example", nil); err != nil {
		t.Fatal(err)
	}
	s.endData() // the first message's goroutine ends
	if !s.inTransaction() {
		t.Error("the session's open transaction is no longer counted as one after an earlier message ended")
	}
	s.Logout()
}

// A panic while the copy streams (the upstream is inside DATA) must not
// leave that connection open with a half-sent message: it is closed, so
// the upstream drops the transaction at once.
func TestPanicWhileStreamingClosesTheUpstreamConnection(t *testing.T) {
	up := relaytest.NewUpstream(t)
	tp := newTap(t, up.Addr())
	var fr *faultyRewriter
	h := newHarnessDeps(t, func(c *Config) { c.Upstream = "smtp://" + tp.addr }, withFaultyRewriter(&fr))
	fr.panics.Store(true)
	c := openTx(t, h.addr, "news@acme.example", "alice@example.fr")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff([]byte("From: news@acme.example\r\nSubject: hi\r\n\r\nhello\r\n")))
	if r := c.reply(); !strings.HasPrefix(r, "4") {
		t.Fatalf("after a panic the client heard %q, want 4xx", r)
	}
	if !tp.closedWithin(1, 2*time.Second) {
		t.Error("the upstream connection left inside DATA by the panic is still open")
	}
	if n := len(up.Messages()); n != 0 {
		t.Errorf("upstream accepted %d messages, want none", n)
	}
}
