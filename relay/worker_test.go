package relay

import (
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"
)

// workerGoroutines counts the sessions' worker goroutines now running.
func workerGoroutines() int {
	buf := make([]byte, 1<<20)
	return strings.Count(string(buf[:runtime.Stack(buf, true)]), "relay.(*worker).loop")
}

// waitWorkers waits up to two seconds for the count of worker goroutines
// to reach want, and returns the last count seen.
func waitWorkers(want int) int {
	n := workerGoroutines()
	for end := time.Now().Add(2 * time.Second); n != want && time.Now().Before(end); {
		time.Sleep(10 * time.Millisecond)
		n = workerGoroutines()
	}
	return n
}

// Over LMTP, and over SMTP with BDAT, each message's work runs on its
// session's worker: one per session that carries messages, gone when the
// session ends, so that a relay beside Postfix holds no goroutine per
// connection it ever served. Each copy still reaches the upstream.
func TestSessionWorkersEndWithTheirSessions(t *testing.T) {
	h := newHarness(t, func(c *Config) { c.ListenLMTP = Addrs{"127.0.0.1:0"} })
	base := waitWorkers(0)
	msg := []byte("From: news@acme.example\r\nSubject: hi\r\nMIME-Version: 1.0\r\nContent-Type: text/html; charset=utf-8\r\n\r\nhello <img src=\"https://t.example/open.gif\" width=1 height=1>\r\n")
	var open []*client
	for i := range 3 {
		c := openLMTPTx(t, h.relay.Addr("lmtp").String(), "news@acme.example", fmt.Sprintf("lmtp%d@example.fr", i))
		c.expect("DATA", "354")
		c.conn.Write(dotStuff(msg))
		if r := c.reply(); !strings.HasPrefix(r, "250") {
			t.Fatalf("LMTP message %d: %q", i, r)
		}
		open = append(open, c)
	}
	for i := range 2 {
		c := openTx(t, h.addr, "news@acme.example", fmt.Sprintf("bdat%d@example.fr", i))
		fmt.Fprintf(c.conn, "BDAT %d LAST\r\n%s", len(msg), msg)
		if r := c.reply(); !strings.HasPrefix(r, "250") {
			t.Fatalf("BDAT message %d: %q", i, r)
		}
		open = append(open, c)
	}
	// A DATA message runs on its connection's goroutine: no worker.
	c := openTx(t, h.addr, "news@acme.example", "data@example.fr")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(msg))
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("DATA message: %q", r)
	}
	open = append(open, c)
	if n := waitWorkers(base + 5); n != base+5 {
		t.Fatalf("%d worker goroutines with 3 LMTP, 2 BDAT and 1 DATA sessions open, want %d", n, base+5)
	}
	for _, c := range open {
		c.expect("QUIT", "221")
	}
	if n := waitWorkers(base); n != base {
		t.Errorf("%d worker goroutines left after every session ended, want %d", n, base)
	}
	for _, rcpt := range []string{"lmtp0@example.fr", "lmtp2@example.fr", "bdat1@example.fr", "data@example.fr"} {
		if m := h.up.MessageFor(rcpt); strings.Contains(string(m.Data), "open.gif") || !strings.Contains(string(m.Data), "hello") {
			t.Errorf("%s: upstream copy %q, want the message with the pixel stripped", rcpt, m.Data)
		}
	}
}

// A panic in the message work (a bug) still reaches go-smtp, which
// answers 421 for the recipient and closes that connection; the process
// and the next session carry on.
func TestPanicOnTheWorkerIsInternalErrorOverLMTP(t *testing.T) {
	var fr *faultyRewriter
	h := newHarnessDeps(t, func(c *Config) { c.ListenLMTP = Addrs{"127.0.0.1:0"} }, withFaultyRewriter(&fr))
	fr.panics.Store(true)
	c := openLMTPTx(t, h.relay.Addr("lmtp").String(), "news@acme.example", "alice@example.fr")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(signedMessage))
	if r := c.reply(); !strings.HasPrefix(r, "421") || !strings.Contains(r, "alice@example.fr") {
		t.Fatalf("after a panic alice's status is %q, want 421", r)
	}
	if !c.closed() {
		t.Error("the connection whose message panicked is still open")
	}
	if !strings.Contains(h.logs.String(), "rewrite bug") {
		t.Errorf("the panic is not in the log:\n%s", h.logs.String())
	}
	fr.panics.Store(false)
	c = openLMTPTx(t, h.relay.Addr("lmtp").String(), "news@acme.example", "bob@example.org")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(signedMessage))
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("the next session's message: %q", r)
	}
}

// Once its session is over the worker runs nothing; work handed to it
// then runs on the caller, never waits for a goroutine that has gone.
func TestWorkerRunsInlineOnceClosed(t *testing.T) {
	for _, started := range []bool{false, true} {
		var w worker
		if started {
			w.run(func() {})
		}
		w.close()
		w.close() // Logout may come twice
		done := make(chan bool)
		go func() {
			ran := false
			w.run(func() { ran = true })
			done <- ran
		}()
		select {
		case ran := <-done:
			if !ran {
				t.Errorf("started=%v: the work did not run", started)
			}
		case <-time.After(2 * time.Second):
			t.Fatalf("started=%v: run after close is still waiting", started)
		}
	}
}
