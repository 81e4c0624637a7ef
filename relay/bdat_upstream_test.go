package relay

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// An upstream that offers CHUNKING gets the message as "BDAT n LAST" and
// the exact bytes: no DATA, no 354 round trip, no dot-stuffing.
func TestUpstreamGetsBDATWhenOffered(t *testing.T) {
	up := relaytest.NewUpstream(t) // go-smtp offers CHUNKING and PIPELINING
	tp := newTap(t, up.Addr())
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + tp.addr })
	// A line that starts with a dot: DATA would have to stuff it.
	msg := []byte("From: app@app.example\r\nTo: bob@example.org\r\nSubject: dots\r\n\r\n.leading dot\r\n..two\r\nend\r\n")
	if r := dataToBob(t, h, msg); !strings.HasPrefix(r, "250") {
		t.Fatalf("client heard %q, want 250", r)
	}
	got := up.MessageFor("bob@example.org").Data
	if !bytes.HasSuffix(got, msg) || !bytes.HasPrefix(got, []byte("Received: ")) {
		t.Fatalf("upstream got\n%q\nwant our Received: line and then\n%q", got, msg)
	}
	if n := tp.count("DATA"); n != 0 {
		t.Errorf("the relay sent DATA %d times to an upstream that offers CHUNKING", n)
	}
	want := fmt.Sprintf("BDAT %d LAST\r\n%s", len(got), got)
	if !strings.Contains(tp.String(), want) {
		t.Errorf("the upstream's side of the conversation lacks one BDAT LAST chunk with the message; it was:\n%q", tp.String())
	}
}

// A message larger than a chunk goes as several; with PIPELINING the
// relay does not wait for each reply, and the upstream still gets every
// byte in order.
func TestUpstreamBDATChunksALargeMessage(t *testing.T) {
	up := relaytest.NewUpstream(t)
	tp := newTap(t, up.Addr())
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + tp.addr })
	msg := bigMessage(2*chunkSize + 12345)
	if r := dataToBob(t, h, msg); !strings.HasPrefix(r, "250") {
		t.Fatalf("client heard %q, want 250", r)
	}
	got := up.MessageFor("bob@example.org").Data
	if !bytes.HasSuffix(got, msg) {
		t.Fatalf("upstream got %d bytes that do not end with the %d sent", len(got), len(msg))
	}
	full := tp.count("BDAT " + strconv.Itoa(chunkSize))
	last := tp.count(fmt.Sprintf("BDAT %d LAST", len(got)-2*chunkSize))
	if full != 2 || last != 1 {
		t.Errorf("chunks: %d full and %d LAST, want 2 of %d bytes and 1 LAST of %d", full, last, chunkSize, len(got)-2*chunkSize)
	}
}

// dataToBob sends msg from app@app.example to bob@example.org with DATA
// and returns the client's final reply.
func dataToBob(t *testing.T, h *harness, msg []byte) string {
	t.Helper()
	c := openTx(t, h.addr, "app@app.example", "bob@example.org")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(msg))
	return c.reply()
}

func bigMessage(size int) []byte {
	var b bytes.Buffer
	b.WriteString("From: app@app.example\r\nTo: bob@example.org\r\nSubject: big\r\n\r\n")
	for i := 0; b.Len() < size; i++ {
		fmt.Fprintf(&b, "line %07d of a message larger than one BDAT chunk, to see every byte arrive in order\r\n", i)
	}
	return b.Bytes()
}

// chunkUpstream is a scripted upstream that offers CHUNKING, and
// PIPELINING when asked. refuse, when set, is its reply to the first
// chunk of the first message. It reports a client that sent more before
// a reply than the protocol allows.
type chunkUpstream struct {
	addr       string
	pipelining bool
	refuse     string
	conns      atomic.Int32
	closed     atomic.Int32 // connections the relay closed
	late       atomic.Int32 // chunks that came after the refused one
	mu         sync.Mutex
	messages   [][]byte
	problems   []string
}

func newChunkUpstream(t *testing.T, pipelining bool, refuse string) *chunkUpstream {
	u := &chunkUpstream{pipelining: pipelining, refuse: refuse}
	u.addr = serveLoopback(t, u.serve)
	return u
}

func (u *chunkUpstream) problem(format string, args ...any) {
	u.mu.Lock()
	u.problems = append(u.problems, fmt.Sprintf(format, args...))
	u.mu.Unlock()
}

func (u *chunkUpstream) serve(c net.Conn) {
	defer c.Close()
	first := u.conns.Add(1) == 1
	c.SetDeadline(time.Now().Add(20 * time.Second))
	r := bufio.NewReader(c)
	io.WriteString(c, "220 up.test ESMTP\r\n")
	var msg []byte
	refused := false
	for {
		l, err := r.ReadString('\n')
		if err != nil {
			u.closed.Add(1)
			return
		}
		cmd := strings.TrimRight(l, "\r\n")
		switch up := strings.ToUpper(cmd); {
		case strings.HasPrefix(up, "EHLO"):
			ext := "250-up.test\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
			if u.pipelining {
				ext += "250-PIPELINING\r\n"
			}
			io.WriteString(c, ext+"250 CHUNKING\r\n")
		case strings.HasPrefix(up, "BDAT "):
			f := strings.Fields(cmd)
			n, _ := strconv.Atoi(f[1])
			chunk := make([]byte, n)
			if _, err := io.ReadFull(r, chunk); err != nil {
				u.problem("chunk cut short: %v", err)
				return
			}
			last := len(f) > 2 && strings.EqualFold(f[2], "LAST")
			if !u.pipelining && !last {
				// Nothing may follow a chunk before its reply.
				c.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
				if _, err := r.Peek(1); err == nil {
					u.problem("the client sent on without PIPELINING before the chunk's reply")
				}
				c.SetDeadline(time.Now().Add(20 * time.Second))
			}
			switch {
			case first && u.refuse != "" && msg == nil && !refused:
				refused = true
				io.WriteString(c, u.refuse+"\r\n")
				continue
			case refused:
				u.late.Add(1)
				io.WriteString(c, "503 5.5.1 transaction failed earlier\r\n")
				continue
			}
			msg = append(msg, chunk...)
			if !last {
				fmt.Fprintf(c, "250 2.0.0 %d octets\r\n", n)
				continue
			}
			u.mu.Lock()
			u.messages = append(u.messages, msg)
			u.mu.Unlock()
			msg = nil
			io.WriteString(c, "250 2.0.0 Ok: queued as 4CHUNK\r\n")
		case up == "DATA":
			u.problem("DATA to an upstream that offers CHUNKING")
			io.WriteString(c, "502 5.5.1 not here\r\n")
		case up == "QUIT":
			io.WriteString(c, "221 bye\r\n")
			return
		default:
			io.WriteString(c, "250 ok\r\n")
		}
	}
}

func (u *chunkUpstream) check(t *testing.T) [][]byte {
	t.Helper()
	u.mu.Lock()
	defer u.mu.Unlock()
	for _, p := range u.problems {
		t.Error(p)
	}
	return u.messages
}

// Without PIPELINING, each chunk's reply comes before the next chunk.
func TestUpstreamBDATWithoutPipeliningWaitsForEachReply(t *testing.T) {
	up := newChunkUpstream(t, false, "")
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.addr })
	msg := bigMessage(chunkSize + 1000)
	if r := dataToBob(t, h, msg); !strings.HasPrefix(r, "250") {
		t.Fatalf("client heard %q, want 250", r)
	}
	got := up.check(t)
	if len(got) != 1 || !bytes.HasSuffix(got[0], msg) {
		t.Fatalf("upstream got %d messages, want 1 ending with the %d bytes sent", len(got), len(msg))
	}
}

// An upstream that refuses a chunk has given its verdict on the message:
// the client hears it, the relay sends no more chunks of it, and the
// connection, out of step, is not reused.
func TestUpstreamBDATRefusedChunk(t *testing.T) {
	up := newChunkUpstream(t, true, "552 5.3.4 Message too big for this upstream")
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.addr })
	msg := bigMessage(2*chunkSize + 1000)
	if r := dataToBob(t, h, msg); !strings.HasPrefix(r, "552 5.3.4") {
		t.Fatalf("client heard %q, want the upstream's 552 5.3.4", r)
	}
	if got := up.check(t); len(got) != 0 {
		t.Fatalf("upstream stored %d messages, want none", len(got))
	}
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatalf("next message: %v", err)
	}
	if got := up.check(t); len(got) != 1 {
		t.Fatalf("upstream stored %d messages, want the next one", len(got))
	}
	if n := up.conns.Load(); n != 2 {
		t.Errorf("the upstream saw %d connections, want 2: the refused one is not reused", n)
	}
}

// upstream_chunking: false keeps DATA for an upstream whose BDAT is
// broken.
func TestUpstreamChunkingOff(t *testing.T) {
	up := relaytest.NewUpstream(t)
	tp := newTap(t, up.Addr())
	h := newHarness(t, func(c *Config) {
		c.Upstream = "smtp://" + tp.addr
		c.UpstreamChunking = false
	})
	if err := sendThrough(h, "bob@example.org"); err != nil {
		t.Fatal(err)
	}
	if d, b := tp.count("DATA"), strings.Count(tp.String(), "BDAT "); d != 1 || b != 0 {
		t.Errorf("with upstream_chunking false the relay sent DATA %d times and BDAT %d times, want 1 and 0", d, b)
	}
}

// A message that came in by BDAT with a last line without CRLF leaves by
// BDAT exactly so; DATA would have had to add the CRLF.
func TestBDATLastLineWithoutCRLFLeavesAsIs(t *testing.T) {
	up := relaytest.NewUpstream(t)
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + up.Addr() })
	msg := []byte("From: app@app.example\r\nTo: bob@example.org\r\nSubject: tail\r\n\r\nno line end at the end")
	c := openTx(t, h.addr, "app@app.example", "bob@example.org")
	if r := c.cmd(fmt.Sprintf("BDAT %d LAST\r\n%s", len(msg), msg)); !strings.HasPrefix(r, "250") {
		t.Fatalf("client heard %q, want 250", r)
	}
	if got := up.MessageFor("bob@example.org").Data; !bytes.HasSuffix(got, msg) {
		t.Fatalf("upstream got %q, want it to end with %q", got, msg)
	}
}

func (tp *tap) String() string {
	tp.mu.Lock()
	defer tp.mu.Unlock()
	return tp.sent.String()
}

// The chunk boundaries: a message of exactly one or two chunks ends with
// "BDAT 0 LAST", and sizes around them split where they should. The
// client talks to a real go-smtp server, which checks the framing.
func TestChunkWriterBoundaries(t *testing.T) {
	up := relaytest.NewUpstream(t)
	for _, size := range []int{0, 1, chunkSize - 1, chunkSize, chunkSize + 1, 2 * chunkSize} {
		rcpt := fmt.Sprintf("size%d@example.org", size)
		c := openUpTx(t, up.Addr(), rcpt)
		msg := bytes.Repeat([]byte("0123456789abcd\r\n"), size/16+1)[:size]
		if size > 0 && msg[size-1] == '\r' {
			msg[size-1] = 'x' // no bare CR at the end
		}
		// Odd write sizes, so that chunk ends fall inside writes.
		_, err := c.data(func(w io.Writer) error {
			for p := msg; len(p) > 0; {
				n := min(len(p), 7919)
				if _, err := w.Write(p[:n]); err != nil {
					return err
				}
				p = p[n:]
			}
			return nil
		})
		if err != nil {
			t.Fatalf("%d bytes: %v", size, err)
		}
		if got := up.MessageFor(rcpt).Data; !bytes.Equal(got, msg) {
			t.Errorf("%d bytes sent, upstream got %d (equal prefix: %v)", size, len(got), bytes.HasPrefix(msg, got))
		}
		c.quit()
	}
}

// openUpTx is the relay's upstream client, BDAT on, in a transaction for
// rcpt on a new connection to addr.
func openUpTx(t *testing.T, addr, rcpt string) *upClient {
	t.Helper()
	raw, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	c := newUpClient(raw, 5*time.Second, 5*time.Second)
	c.bdat = true
	for _, step := range []func() error{
		c.greet,
		func() error { return c.hello("client.test") },
		func() error { return c.mail("app@app.example", nil) },
		func() error { return c.rcpt(rcpt, nil) },
	} {
		if err := step(); err != nil {
			raw.Close()
			t.Fatal(err)
		}
	}
	return c
}

// A writer that ignores a failed Write and goes on (or returns nil) still
// sends no chunk after the refusal, and the upstream's verdict is what
// the caller gets, not the 503 for a chunk after it.
func TestChunkWriterStopsAtTheRefusal(t *testing.T) {
	up := newChunkUpstream(t, true, "552 5.3.4 Message too big for this upstream")
	c := openUpTx(t, up.addr, "bob@example.org")
	defer c.Close()
	piece := bytes.Repeat([]byte("0123456789abcd\r\n"), chunkSize/16)
	_, err := c.data(func(w io.Writer) error {
		for range 4 {
			w.Write(piece) // errors ignored on purpose
		}
		return nil
	})
	var se *smtp.SMTPError
	if !errors.As(err, &se) || se.Code != 552 {
		t.Fatalf("data returned %v, want the upstream's 552", err)
	}
	up.check(t)
	// With PIPELINING one chunk is on its way when the refusal is read.
	if n := up.late.Load(); n > 1 {
		t.Errorf("%d chunks reached the upstream after the refused one, want at most the one in flight", n)
	}
}

// A connection the relay closed itself (after a refused chunk) is not
// pooled, even though the upstream's last word was a reply: it would take
// a pool slot from a live connection and cost the next message a redial.
func TestClosedConnectionIsNotPooled(t *testing.T) {
	up := relaytest.NewUpstream(t)
	u := &smtpUpstream{opt: SMTPUpstreamOptions{PoolSize: 4}}
	c := openUpTx(t, up.Addr(), "bob@example.org")
	c.Close()
	u.put(&upConn{c: c})
	if n := len(u.idle); n != 0 {
		t.Errorf("the pool holds %d connections after a closed one was put back, want 0", n)
	}
}
