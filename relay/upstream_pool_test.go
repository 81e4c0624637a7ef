package relay

import (
	"bytes"
	"io"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// tap is a TCP forwarder between the relay and its upstream that keeps
// every byte the relay sent, to see the conversation as the upstream did.
type tap struct {
	ln     net.Listener
	mu     sync.Mutex
	sent   bytes.Buffer
	closed int // connections the relay closed
}

func newTap(t *testing.T, upstream string) *tap {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	tp := &tap{ln: ln}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			u, err := net.Dial("tcp", upstream)
			if err != nil {
				c.Close()
				continue
			}
			go func() { io.Copy(c, u); c.Close() }()
			go func() {
				io.Copy(io.MultiWriter(u, tp), c)
				u.Close()
				tp.mu.Lock()
				tp.closed++
				tp.mu.Unlock()
			}()
		}
	}()
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
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + tp.ln.Addr().String() })
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
