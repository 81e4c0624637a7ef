package relay

import (
	"bufio"
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// tap is a TCP forwarder between the relay and its upstream that keeps
// every byte the relay sent, to see the conversation as the upstream did.
type tap struct {
	addr   string
	mu     sync.Mutex
	sent   bytes.Buffer
	closed int // connections the relay closed
}

func newTap(t *testing.T, upstream string) *tap {
	t.Helper()
	tp := &tap{}
	tp.addr = serveLoopback(t, func(c net.Conn) {
		u, err := net.Dial("tcp", upstream)
		if err != nil {
			c.Close()
			return
		}
		go func() { io.Copy(c, u); c.Close() }()
		io.Copy(io.MultiWriter(u, tp), c)
		u.Close()
		tp.mu.Lock()
		tp.closed++
		tp.mu.Unlock()
	})
	return tp
}

func (tp *tap) Write(p []byte) (int, error) {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.sent.Write(p)
}

// closedWithin waits up to d for the relay to have closed n connections.
func (tp *tap) closedWithin(n int, d time.Duration) bool {
	for end := time.Now().Add(d); ; time.Sleep(10 * time.Millisecond) {
		tp.mu.Lock()
		c := tp.closed
		tp.mu.Unlock()
		if c >= n {
			return true
		}
		if time.Now().After(end) {
			return false
		}
	}
}

func (tp *tap) count(line string) int {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return strings.Count(tp.sent.String(), line+"\r\n")
}

// Messages in quick succession reuse the upstream connection without a
// NOOP round trip before each.
func TestPooledConnectionWithoutNOOP(t *testing.T) {
	up := relaytest.NewUpstream(t)
	tp := newTap(t, up.Addr())
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + tp.addr })
	for i := 0; i < 3; i++ {
		if err := sendThrough(h, "bob@example.org"); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(up.Messages()); n != 3 {
		t.Fatalf("upstream got %d messages, want 3", n)
	}
	if n := up.Conns(); n != 1 {
		t.Errorf("3 messages used %d upstream connections, want 1", n)
	}
	if n := tp.count("NOOP"); n != 0 {
		t.Errorf("the relay sent %d NOOPs for 3 messages on one connection, want none", n)
	}
}

// A pooled connection the upstream has dropped in the meantime fails at
// MAIL; nothing of a transaction has been sent yet, so the relay starts
// it again on a fresh connection and the client never notices.
func TestPooledConnectionDroppedByUpstream(t *testing.T) {
	up := relaytest.NewUpstreamWith(t, relaytest.Options{IdleTimeout: 300 * time.Millisecond})
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.Addr() })
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(700 * time.Millisecond) // the upstream hangs up on the pooled connection
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatalf("second message, after the upstream dropped the pooled connection: %v", err)
	}
	if n := len(up.Messages()); n != 2 {
		t.Fatalf("upstream got %d messages, want 2", n)
	}
	if n := up.Conns(); n != 2 {
		t.Errorf("upstream saw %d connections, want 2 (the dropped one, then a fresh one)", n)
	}
}

// The same without PIPELINING, where MAIL goes out alone at the start of
// the transaction (smtpUpstream.Begin): go-smtp always offers PIPELINING,
// so this upstream is scripted. It hangs up after its first message, as
// an upstream does with a connection left idle too long.
func TestPooledConnectionDroppedByUpstreamWithoutPipelining(t *testing.T) {
	var conns, messages atomic.Int32
	addr := serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		first := conns.Add(1) == 1
		c.SetDeadline(time.Now().Add(10 * time.Second))
		r := bufio.NewReader(c)
		io.WriteString(c, "220 up.test ESMTP\r\n")
		for {
			l, err := r.ReadString('\n')
			if err != nil {
				return
			}
			switch cmd := strings.ToUpper(strings.TrimRight(l, "\r\n")); {
			case strings.HasPrefix(cmd, "EHLO"):
				io.WriteString(c, "250-up.test\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n")
			case cmd == "DATA":
				io.WriteString(c, "354 go on\r\n")
				for {
					if l, err := r.ReadString('\n'); err != nil || l == ".\r\n" {
						break
					}
				}
				messages.Add(1)
				io.WriteString(c, "250 2.0.0 ok\r\n")
				if first {
					return // dropped while it sits in the relay's pool
				}
			case cmd == "QUIT":
				io.WriteString(c, "221 bye\r\n")
				return
			default:
				io.WriteString(c, "250 ok\r\n")
			}
		}
	})
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + addr })
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // the hang-up reaches the relay's side
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatalf("second message, after the upstream dropped the pooled connection: %v", err)
	}
	if n, c := messages.Load(), conns.Load(); n != 2 || c != 2 {
		t.Fatalf("upstream got %d messages over %d connections, want 2 over 2", n, c)
	}
}

// An upstream that offers PIPELINING receives MAIL and the first RCPT
// together: this one reads the RCPT before it answers the MAIL, so a relay
// that waited for the MAIL reply first would time out here.
func TestMailPipelinedWithFirstRcpt(t *testing.T) {
	problems := make(chan string, 4)
	addr := serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		line := func() string {
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			l, err := r.ReadString('\n')
			if err != nil {
				problems <- "reading: " + err.Error()
			}
			return strings.TrimRight(l, "\r\n")
		}
		io.WriteString(c, "220 up.test ESMTP\r\n")
		line() // EHLO
		io.WriteString(c, "250-up.test\r\n250-PIPELINING\r\n250-SMTPUTF8\r\n250 8BITMIME\r\n")
		if l := line(); !strings.HasPrefix(l, "MAIL FROM:") {
			problems <- "first command " + l
		}
		if l := line(); !strings.HasPrefix(l, "RCPT TO:") {
			problems <- "the RCPT did not come with the MAIL: " + l
		}
		io.WriteString(c, "250 2.1.0 ok\r\n250 2.1.5 ok\r\n")
		if l := line(); l != "DATA" {
			problems <- "after RCPT: " + l
		}
		io.WriteString(c, "354 go on\r\n")
		for line() != "." {
		}
		io.WriteString(c, "250 2.0.0 ok: queued as 4XQ\r\n")
		for {
			switch l := line(); {
			case strings.HasPrefix(l, "QUIT"), l == "":
				io.WriteString(c, "221 bye\r\n")
				return
			default:
				io.WriteString(c, "250 ok\r\n")
			}
		}
	})
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + addr })
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatalf("message through an upstream that wants MAIL and RCPT together: %v", err)
	}
	select {
	case p := <-problems:
		t.Fatal(p)
	default:
	}
}

// A MAIL the upstream refuses comes back with the first RCPT it was
// pipelined with; the metrics still count it as the MAIL's failure, which
// is what an operator reading pixelrelay_upstream_errors_total looks for.
func TestPipelinedMailRefusalCountedAsMail(t *testing.T) {
	reg := prometheus.NewRegistry()
	h := newHarnessDeps(t, nil, func(d *Deps) { d.Registry = reg })
	h.up.Inject(relaytest.Fault{Phase: "mail", Err: smtpErr(553, "5.7.1 Sender address rejected")})
	c := openTx(t, h.addr, "news@acme.example")
	c.expect("RCPT TO:<alice@example.fr>", "553 5.7.1")
	families, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	counts := map[string]float64{}
	for _, f := range families {
		if f.GetName() != "pixelrelay_upstream_errors_total" {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "phase" {
					counts[l.GetValue()] += m.GetCounter().GetValue()
				}
			}
		}
	}
	if counts["mail"] != 1 || counts["rcpt"] != 0 {
		t.Fatalf("upstream errors by phase %v, want one mail and no rcpt", counts)
	}
}
