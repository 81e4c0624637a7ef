package relay

import (
	"net"
	"strings"
	"testing"
	"time"
)

// TestPipelinedRepliesShareAWrite: a client that pipelines MAIL, RCPT and
// DATA, as Postfix's smtp client does, gets the three replies in one
// write, so its first read returns all of them. Before, each went out on
// its own (the RCPT's only after the upstream round trip), and the first
// read returned the MAIL reply alone. A client that waits for each reply
// still gets it (every other dialogue), and QUIT's 221 still arrives
// before the close.
func TestPipelinedRepliesShareAWrite(t *testing.T) {
	h := newHarness(t, nil)
	c := greeted(t, h.addr, "EHLO client.example")
	if _, err := c.conn.Write([]byte("MAIL FROM:<news@example-news.com>\r\nRCPT TO:<reader@example.fr>\r\nDATA\r\n")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4096)
	c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	n, err := c.conn.Read(buf)
	if err != nil {
		t.Fatal(err)
	}
	got := string(buf[:n])
	lines := strings.Split(strings.TrimSuffix(got, "\r\n"), "\r\n")
	if len(lines) != 3 || !strings.HasPrefix(lines[0], "250 ") || !strings.HasPrefix(lines[1], "250 ") || !strings.HasPrefix(lines[2], "354 ") {
		t.Fatalf("first read after the pipelined MAIL, RCPT, DATA: %q, want the 250, 250 and 354 together", got)
	}
	if _, err := c.conn.Write([]byte("Subject: held\r\n\r\nbody\r\n.\r\n")); err != nil {
		t.Fatal(err)
	}
	if r := c.reply(); !strings.HasPrefix(r, "250") {
		t.Fatalf("end of data: %q", r)
	}
	if n := len(h.up.Messages()); n != 1 {
		t.Fatalf("the upstream has %d messages, want 1", n)
	}
	if r := c.cmd("QUIT"); !strings.HasPrefix(r, "221") {
		t.Fatalf("QUIT: %q, want 221 before the close", r)
	}
}

// recordingConn counts what reaches the socket.
type recordingConn struct {
	net.Conn
	writes int
	bytes  int
}

func (c *recordingConn) Write(p []byte) (int, error) {
	c.writes++
	c.bytes += len(p)
	return len(p), nil
}

// A client that pipelines commands without ever stopping to read does not
// make the wrapper hold its replies without bound: past maxHeld they are
// written.
func TestHeldRepliesAreBounded(t *testing.T) {
	rc := &recordingConn{}
	c := &trackedConn{Conn: rc}
	c.plain.Store(true)
	reply := []byte("250 2.0.0 I have successfully done nothing\r\n")
	for written := 0; written < 2*maxHeld; written += len(reply) {
		c.Write(reply)
	}
	if rc.writes == 0 || len(c.held) > maxHeld {
		t.Fatalf("%d bytes of replies: %d writes to the socket, %d bytes still held (max %d)", 2*maxHeld, rc.writes, len(c.held), maxHeld)
	}
	if err := c.flushHeld(); err != nil || rc.bytes < 2*maxHeld {
		t.Fatalf("after the flush the socket got %d bytes, want all %d (%v)", rc.bytes, 2*maxHeld, err)
	}
}
