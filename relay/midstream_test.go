package relay

import (
	"bufio"
	"bytes"
	"net"
	"strings"
	"testing"
)

// resettingUpstream accepts MAIL and RCPT, answers DATA with 354 (or,
// with chunking, offers CHUNKING and takes BDAT), then drops the
// connection (RST) while the relay streams the message: the next hop
// failing in mid-transfer.
func resettingUpstream(t *testing.T, chunking bool) string {
	return serveLoopback(t, func(c net.Conn) {
		defer c.Close()
		r := bufio.NewReader(c)
		c.Write([]byte("220 up.test ESMTP\r\n"))
		for {
			line, err := r.ReadString('\n')
			if err != nil {
				return
			}
			cmd := strings.ToUpper(strings.TrimSpace(line))
			switch {
			case strings.HasPrefix(cmd, "EHLO") && chunking:
				c.Write([]byte("250-up.test\r\n250-8BITMIME\r\n250-PIPELINING\r\n250-CHUNKING\r\n250 SMTPUTF8\r\n"))
			case strings.HasPrefix(cmd, "EHLO"):
				c.Write([]byte("250-up.test\r\n250-8BITMIME\r\n250 SMTPUTF8\r\n"))
			case cmd == "DATA" && chunking:
				c.Write([]byte("502 5.5.1 BDAT only here\r\n")) // so that the test sees which path ran
			case strings.HasPrefix(cmd, "BDAT"):
				r.Peek(1)
				c.(*net.TCPConn).SetLinger(0)
				return // reset while the chunk arrives
			case cmd == "DATA":
				c.Write([]byte("354 go ahead\r\n"))
				r.Peek(1)
				c.(*net.TCPConn).SetLinger(0)
				return // reset while the body arrives
			case strings.HasPrefix(cmd, "QUIT"):
				c.Write([]byte("221 bye\r\n"))
				return
			default:
				c.Write([]byte("250 ok\r\n"))
			}
		}
	})
}

// The next hop dropping the connection while the copy streams is a
// transport failure (451 4.4.1, counted as an upstream error), not "our
// own failure while building a copy" (451 4.3.0).
func TestUpstreamDropMidStreamIsTransportFailure(t *testing.T) {
	for _, chunking := range []bool{false, true} {
		t.Run(map[bool]string{false: "data", true: "bdat"}[chunking], func(t *testing.T) {
			upstreamDropMidStream(t, chunking)
		})
	}
}

func upstreamDropMidStream(t *testing.T, chunking bool) {
	addr := resettingUpstream(t, chunking)
	h := newHarness(t, func(c *Config) { c.Upstream = "smtp://" + addr })
	var body bytes.Buffer
	body.WriteString("From: news@acme.example\r\nSubject: hi\r\n\r\n")
	for body.Len() < 4<<20 {
		body.WriteString("hello hello hello hello hello hello hello hello hello hello hello\r\n")
	}
	c := openTx(t, h.addr, "news@acme.example", "alice@example.fr")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff(body.Bytes()))
	r := c.reply()
	t.Logf("client heard %q", r)
	if strings.Contains(h.logs.String(), "could not build a copy") {
		t.Errorf("an upstream reset in mid-transfer was logged as our own fault:\n%s", grepLines(h.logs.String(), "could not build"))
	}
	if !strings.HasPrefix(r, "451 4.4.1") {
		t.Errorf("client heard %q, want 451 4.4.1 (next hop unavailable)", r)
	}
}

func grepLines(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
