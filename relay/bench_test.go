package relay

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// BenchmarkRelay sends the ~100 KB benchmark newsletter through the relay
// over loopback, one session, PIPELINING as Postfix's smtp client does,
// into a sink that costs next to nothing, so that what is measured is the
// relay: the connection wrapper, the DATA reader, the spool, the rewrite
// (strip) and the upstream client. keep is a consenting recipient (the
// message passes unchanged), strip one without consent, bdat the keep case
// sent in BDAT chunks; strip-to-chunking is strip into a sink that offers
// CHUNKING, as Postfix does, so the relay sends BDAT instead of DATA; lmtp
// is strip-to-chunking over LMTP, as Postfix's lmtp transport sends it.
func BenchmarkRelay(b *testing.B) {
	raw, err := os.ReadFile("../testdata/bench/newsletter.eml")
	if err != nil {
		b.Fatal(err)
	}
	data := dotStuff(raw)
	body := bytes.TrimSuffix(data, []byte(".\r\n"))
	for _, tc := range []struct {
		name, consent        string
		bdat, chunking, lmtp bool
	}{
		{"keep", "granted", false, false, false},
		{"strip", "", false, false, false},
		{"bdat", "granted", true, false, false},
		{"strip-to-chunking", "", false, true, false},
		{"lmtp", "", false, true, true},
	} {
		b.Run(tc.name, func(b *testing.B) {
			sink := startSink(b, tc.chunking)
			h := newHarness(b, func(c *Config) {
				c.Upstream = "smtp://" + sink
				if tc.lmtp {
					c.ListenLMTP = Addrs{"127.0.0.1:0"}
				}
			})
			if tc.consent != "" {
				h.setConsent("reader@example.fr", tc.consent)
			}
			addr, hello := h.addr, "EHLO"
			if tc.lmtp {
				addr, hello = h.relay.Addr("lmtp").String(), "LHLO"
			}
			conn, err := net.Dial("tcp", addr)
			if err != nil {
				b.Fatal(err)
			}
			defer conn.Close()
			r := bufio.NewReader(conn)
			expect := func(prefix string) {
				lines, err := readReply(r)
				if err != nil || !strings.HasPrefix(lines[len(lines)-1], prefix) {
					b.Fatalf("reply %q (%v), want %s", lines, err, prefix)
				}
			}
			expect("220")
			fmt.Fprintf(conn, "%s bench.example\r\n", hello)
			expect("250")
			envelope := []byte("MAIL FROM:<news@example-news.com>\r\nRCPT TO:<reader@example.fr>\r\n")
			var chunks []byte
			if tc.bdat {
				half := len(body) / 2
				chunks = fmt.Appendf(nil, "BDAT %d\r\n%sBDAT %d LAST\r\n%s", half, body[:half], len(body)-half, body[half:])
			}
			b.SetBytes(int64(len(raw)))
			b.ResetTimer()
			for range b.N {
				if tc.bdat {
					conn.Write(append(envelope, chunks...))
					expect("250")
					expect("250")
					expect("250")
					expect("250")
					continue
				}
				conn.Write(append(envelope, "DATA\r\n"...))
				expect("250")
				expect("250")
				expect("354")
				conn.Write(data)
				expect("250")
			}
		})
	}
}

// startSink is an SMTP server that accepts everything and keeps nothing,
// reading DATA a line at a time from a 64 KB buffer, as smtp-sink does;
// with chunking it also offers CHUNKING and discards BDAT chunks.
func startSink(b *testing.B, chunking bool) string {
	return serveLoopback(b, func(c net.Conn) { serveSink(c, chunking) })
}

func serveSink(c net.Conn, chunking bool) {
	defer c.Close()
	r := bufio.NewReaderSize(c, 64<<10)
	w := bufio.NewWriter(c)
	reply := func(s string) {
		w.WriteString(s)
		if r.Buffered() == 0 {
			w.Flush()
		}
	}
	reply("220 sink.test ESMTP\r\n")
	for {
		line, err := r.ReadSlice('\n')
		if err != nil {
			return
		}
		verb := strings.ToUpper(string(bytes.TrimSpace(line)))
		verb, _, _ = strings.Cut(verb, " ")
		switch verb {
		case "EHLO":
			ext := "250-sink.test\r\n250-PIPELINING\r\n250-8BITMIME\r\n250-SMTPUTF8\r\n"
			if chunking {
				ext += "250-CHUNKING\r\n"
			}
			reply(ext + "250 DSN\r\n")
		case "BDAT":
			f := strings.Fields(string(line))
			n, err := strconv.Atoi(f[1])
			if err != nil || !chunking {
				reply("501 5.5.4 bad BDAT\r\n")
				return
			}
			if _, err := r.Discard(n); err != nil {
				return
			}
			if len(f) > 2 {
				reply("250 2.0.0 Ok: queued as SINK\r\n")
			} else {
				reply("250 2.0.0 Ok\r\n")
			}
		case "DATA":
			reply("354 go ahead\r\n")
			for {
				l, err := r.ReadSlice('\n')
				if err != nil && err != bufio.ErrBufferFull {
					return
				}
				if string(l) == ".\r\n" {
					break
				}
			}
			reply("250 2.0.0 Ok: queued as SINK\r\n")
		case "QUIT":
			reply("221 bye\r\n")
			w.Flush()
			return
		default:
			reply("250 2.0.0 Ok\r\n")
		}
	}
}
