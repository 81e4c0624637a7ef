package relay

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net"
	"strings"
	"testing"

	"github.com/emersion/go-smtp"
)

// strictCRLF is the naive model of strict line endings: every LF follows a
// CR and every CR precedes an LF.
func strictCRLF(b []byte) bool {
	for i, c := range b {
		if c == '\n' && (i == 0 || b[i-1] != '\r') {
			return false
		}
		if c == '\r' && (i+1 >= len(b) || b[i+1] != '\n') {
			return false
		}
	}
	return true
}

// longLine is the naive model of the line-length limit: some line,
// without its CRLF, is longer than max.
func longLine(b []byte, max int) bool {
	for _, line := range bytes.Split(b, []byte("\n")) {
		if len(bytes.TrimSuffix(line, []byte("\r"))) > max {
			return true
		}
	}
	return false
}

// FuzzSpoolLineEndings holds the fast, chunked checks to the naive models,
// whatever the chunking: strict CRLF is the SMTP-smuggling guard, and the
// line limit guards BDAT, which go-smtp does not check. What is accepted
// is exactly what was sent, in memory or spilled to a file.
func FuzzSpoolLineEndings(f *testing.F) {
	for _, s := range []string{"a\r\n", "a\n.\r\n", "a\r.\r\n", "\r\r\n", "x\r", "\r\n\r\n", ".\r\n", "abcdefgh\r\nabc\r\n"} {
		f.Add([]byte(s), uint8(1), uint8(0), false)
		f.Add([]byte(s), uint8(3), uint8(5), true)
	}
	f.Fuzz(func(t *testing.T, data []byte, step, maxLine uint8, spill bool) {
		n := int(step%16) + 1
		var chunks []string
		for i := 0; i < len(data); i += n {
			chunks = append(chunks, string(data[i:min(i+n, len(data))]))
		}
		sp := &spooler{memLimit: 1 << 20, maxLine: int(maxLine % 32)}
		if spill {
			sp.memLimit, sp.dir = 16, t.TempDir()
		}
		m, err := sp.receive(&chunkReader{chunks: chunks})
		if m != nil {
			defer m.Close()
		}
		crlf := strictCRLF(data)
		long := sp.maxLine > 0 && longLine(data, sp.maxLine)
		switch {
		case !strictCRLF(bytes.TrimSuffix(data, []byte("\r"))) && n >= len(data):
			// In one chunk, a bare line ending wins over a long line. (A
			// CR that ends the chunk may still get its LF from the next
			// one; at the end of the message it is bare, but then nothing
			// follows it to smuggle.)
			if !errors.Is(err, errBareLineEnding) {
				t.Fatalf("%q in one chunk, max line %d: err %v, want a bare line ending", data, sp.maxLine, err)
			}
		case !crlf || long:
			// Across chunks, the chunk that holds the first fault decides.
			if !(!crlf && errors.Is(err, errBareLineEnding) || long && errors.Is(err, errLineLength)) {
				t.Fatalf("%q in chunks of %d, max line %d: err %v; bare line ending %v, long line %v",
					data, n, sp.maxLine, err, !crlf, long)
			}
		case err != nil:
			t.Fatalf("%q in chunks of %d, max line %d: refused: %v", data, n, sp.maxLine, err)
		default:
			got, _ := io.ReadAll(m.Reader())
			if !bytes.Equal(got, data) {
				t.Fatalf("%q in chunks of %d: received %q", data, n, got)
			}
		}
	})
}

// undot reverses SMTP dot-stuffing of DATA up to the end-of-data line and
// reports whether that line was found exactly at the end.
func undot(b []byte) ([]byte, bool) {
	var out bytes.Buffer
	for len(b) > 0 {
		i := bytes.Index(b, []byte("\r\n"))
		if i < 0 {
			return nil, false
		}
		line := b[:i]
		b = b[i+2:]
		if string(line) == "." {
			return out.Bytes(), len(b) == 0
		}
		line = bytes.TrimPrefix(line, []byte("."))
		out.Write(line)
		out.WriteString("\r\n")
	}
	return nil, false
}

// FuzzDotWriter checks that whatever the relay sends upstream ends exactly
// at its own end-of-data line, and decodes back to the copy.
func FuzzDotWriter(f *testing.F) {
	for _, s := range []string{"a\r\n.b\r\n", ".\r\n", "a\n.\nb", "no newline", "\r\n.\r\n.\r\n", "x\r\ny\r\n\n.z\r\nw\r"} {
		f.Add([]byte(s), uint8(3))
		f.Add([]byte(s), uint8(0x80))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		d := &dotWriter{w: w, bol: true}
		n := int(step%16) + 1
		if step&0x80 != 0 {
			n = len(data) + 1 // one write: long runs of lines
		}
		for i := 0; i < len(data); i += n {
			d.Write(data[i:min(i+n, len(data))])
		}
		d.close()
		got, ok := undot(out.Bytes())
		if !ok {
			t.Fatalf("%q: the end-of-data line is not at the end of %q", data, out.Bytes())
		}
		want := bytes.ReplaceAll(bytes.ReplaceAll(data, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
		if len(want) > 0 && !bytes.HasSuffix(want, []byte("\r\n")) {
			want = append(want, "\r\n"...)
		}
		// A bare CR stays a CR; compare after the same normalisation.
		if !bytes.Equal(got, want) {
			t.Fatalf("%q: decodes to %q, want %q", data, got, want)
		}
	})
}

// FuzzQuoteAddress: a re-quoted path never lets anything escape <…>.
func FuzzQuoteAddress(f *testing.F) {
	for _, s := range []string{"a@b", "john doe@x", `x> NOTIFY=SUCCESS@x`, `"@x`, `\@x`, "@", ""} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, addr string) {
		if hasControl(addr) {
			return // refused before quoting
		}
		q := quoteAddress(addr)
		at := strings.LastIndexByte(q, '@')
		local := q
		if at >= 0 {
			local = q[:at]
		}
		if strings.ContainsAny(local, "<> ") && !(strings.HasPrefix(local, `"`) && strings.HasSuffix(local, `"`) && len(local) >= 2) {
			t.Fatalf("%q quoted as %q: a special character outside quotes", addr, q)
		}
		if strings.HasPrefix(local, `"`) {
			inner := local[1 : len(local)-1]
			for i := 0; i < len(inner); i++ {
				if inner[i] == '\\' {
					i++
					continue
				}
				if inner[i] == '"' {
					t.Fatalf("%q quoted as %q: an unescaped quote ends the quoted string early", addr, q)
				}
			}
		}
	})
}

// FuzzVerifyAuditLog: the verifier never panics and never accepts a line
// that is not sealed with its own hash.
func FuzzVerifyAuditLog(f *testing.F) {
	f.Add([]byte(`{"prev_hash":"","hash":"0000000000000000000000000000000000000000000000000000000000000000"}` + "\n"))
	f.Add([]byte("not json\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		n, err := VerifyAuditLog(bytes.NewReader(data))
		if err == nil && n > 0 {
			for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
				if _, herr := lineHash(line); herr != nil {
					t.Fatalf("accepted a line with a bad seal: %q", line)
				}
			}
		}
	})
}

// refDataReader is go-smtp v0.25.1's dataReader loop (data.go), byte by
// byte, without the size limit: the model directData must match. It is
// kept apart from ddNext on purpose, as an independent oracle.
func refDataReader(in []byte) (out []byte, consumed int, done bool) {
	br := bytes.NewReader(in)
	out, done = refDataStream(br)
	return out, len(in) - br.Len(), done
}

func refDataStream(r io.ByteReader) (out []byte, done bool) {
	const (
		stateBeginLine = iota
		stateDot
		stateDotCR
		stateCR
		stateData
	)
	state := stateBeginLine
	for {
		c, err := r.ReadByte()
		if err != nil {
			return out, false
		}
		switch state {
		case stateBeginLine:
			if c == '.' {
				state = stateDot
				continue
			}
			if c == '\r' {
				state = stateCR
				break
			}
			state = stateData
		case stateDot:
			if c == '\r' {
				state = stateDotCR
				continue
			}
			state = stateData
		case stateDotCR:
			if c == '\n' {
				return out, true
			}
			state = stateData
		case stateCR:
			if c == '\n' {
				state = stateBeginLine
				break
			}
			state = stateData
		case stateData:
			if c == '\r' {
				state = stateCR
			}
		}
		out = append(out, c)
	}
}

// chunkConn is a net.Conn whose reads return fixed-size chunks.
type chunkConn struct {
	net.Conn
	data []byte
	step int
}

func (c *chunkConn) Write(p []byte) (int, error) { return len(p), nil }

func (c *chunkConn) Read(p []byte) (int, error) {
	if len(c.data) == 0 {
		return 0, io.EOF
	}
	n := copy(p[:min(len(p), c.step)], c.data)
	c.data = c.data[n:]
	return n, nil
}

// FuzzDirectData holds the fast DATA reader to go-smtp's: the same message
// bytes, the same end of data, the same bytes left for the next command,
// whatever the chunking. A difference here would be an SMTP smuggling bug.
func FuzzDirectData(f *testing.F) {
	for _, s := range []string{
		"a\r\n.\r\nQUIT\r\n", "hello\n.\r\nMAIL FROM:<e@x>\r\n.\r\n", "hello\r\r\n.\r\nRSET\r\n.\r\n",
		"..dot\r\n.\r\n", ".\r\n", "x\r.\r\n\r\n.\r\n", ".\rX\r\n.\r\n", "no end",
	} {
		f.Add([]byte(s), uint8(5))
	}
	f.Fuzz(func(t *testing.T, in []byte, step uint8) {
		wantOut, consumed, wantDone := refDataReader(in)
		// The wrapper's scanner ends where go-smtp does, however the bytes
		// are split.
		st, at, ended := ddBeginLine, 0, false
		for i := 0; i < len(in) && !ended; i += int(step%32) + 1 {
			k, e := scanDataEnd(&st, in[i:min(len(in), i+int(step%32)+1)])
			at, ended = i+k, e
		}
		if ended != wantDone || ended && at != consumed {
			t.Fatalf("%q: scanner ended=%v at %d, go-smtp %v at %d", in, ended, at, wantDone, consumed)
		}
		// Small reads go through the wrapper's buffer; reads with room
		// take the socket's bytes in place, as the spooler's do.
		for _, bufSize := range []int{0, minDirectRead + int(step)} {
			cc := &chunkConn{data: append([]byte(nil), in...), step: int(step%32) + 1}
			if bufSize > 0 {
				cc.step = bufSize // the socket hands over all it has
			}
			tc := &trackedConn{Conn: cc}
			d := newDirectData(tc, 0)
			got, err := readAllSized(d, bufSize)
			if !bytes.Equal(got, wantOut) {
				t.Fatalf("%q, reads of %d: output %q, go-smtp's %q", in, bufSize, got, wantOut)
			}
			if d.done != wantDone {
				t.Fatalf("%q: end of data found=%v, go-smtp's %v", in, d.done, wantDone)
			}
			if wantDone {
				if err != nil {
					t.Fatalf("%q: %v after the end of data", in, err)
				}
				// What go-smtp reads next: the wrapper's bytes, then the socket's.
				next := append(append(append([]byte(nil), tc.out...), tc.buf[tc.head:tc.tail]...), cc.data...)
				if want := append([]byte(".\r\n"), in[consumed:]...); !bytes.Equal(next, want) {
					t.Fatalf("%q, reads of %d: go-smtp reads next %q, want %q", in, bufSize, next, want)
				}
			}
		}
	})
}

// readAllSized is io.ReadAll with reads of size bytes (0: io.ReadAll's own).
func readAllSized(r io.Reader, size int) ([]byte, error) {
	if size == 0 {
		return io.ReadAll(r)
	}
	var out []byte
	buf := make([]byte, size)
	for {
		n, err := r.Read(buf)
		out = append(out, buf[:n]...)
		if err == io.EOF {
			return out, nil
		}
		if err != nil {
			return out, err
		}
	}
}

// The size limit: over it, nothing more is written, the rest of the
// message is still consumed to its end, and the reader says too large.
func TestDirectDataTooLarge(t *testing.T) {
	in := []byte("0123456789\r\n0123456789\r\n.\r\nQUIT\r\n")
	cc := &chunkConn{data: in, step: 7}
	tc := &trackedConn{Conn: cc}
	d := newDirectData(tc, 15)
	got, err := io.ReadAll(d)
	if err != smtp.ErrDataTooLarge || len(got) > 15 {
		t.Fatalf("got %d bytes, %v", len(got), err)
	}
	if next := string(tc.out) + string(tc.buf[tc.head:tc.tail]) + string(cc.data); next != ".\r\nQUIT\r\n" {
		t.Fatalf("go-smtp reads next %q", next)
	}
}

// Read in place, the end of data can arrive with more pipelined bytes
// than the wrapper's command buffer holds; all of them go back to it.
func TestDirectDataInPlaceHandsBackPipelinedBytes(t *testing.T) {
	after := "RSET\r\n" + strings.Repeat("NOOP\r\n", 2000)
	in := []byte("Subject: x\r\n\r\n..dot\r\nbody\r\n.\r\n" + after)
	cc := &chunkConn{data: in, step: len(in)}
	tc := &trackedConn{Conn: cc}
	d := newDirectData(tc, 0)
	got, err := readAllSized(d, 64<<10)
	if err != nil || string(got) != "Subject: x\r\n\r\n.dot\r\nbody\r\n" {
		t.Fatalf("message %q, %v", got, err)
	}
	if next := string(tc.out) + string(tc.buf[tc.head:tc.tail]) + string(cc.data); next != ".\r\n"+after {
		t.Fatalf("go-smtp reads next %d bytes, want %d", len(next), 3+len(after))
	}
}
