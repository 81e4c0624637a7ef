package relay

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
	"testing/iotest"
)

func TestCheckLineEndings(t *testing.T) {
	for _, tc := range []struct {
		chunks []string
		ok     bool
	}{
		{[]string{"a\r\nb\r\n"}, true},                   // plain CRLF
		{[]string{"a\nb\r\n"}, false},                    // bare LF
		{[]string{"a\rb\r\n"}, false},                    // bare CR
		{[]string{"hello\n.\r\n"}, false},                // smuggling: LF . CRLF
		{[]string{"hello\r.\r\n"}, false},                // smuggling: CR . CRLF
		{[]string{"hello\r\r\n.\r\n"}, false},            // smuggling: CR CR LF
		{[]string{"a\r", "\nb\r\n"}, true},               // CRLF split across chunks
		{[]string{"a\r", "b\r\n"}, false},                // CR at chunk end not followed by LF
		{[]string{"a\r\n", "\nb"}, false},                // LF at chunk start without CR
		{[]string{"\r\n\r\n", "\r\n"}, true},             // empty lines
		{[]string{"x", "\r", "\n"}, true},                // one byte at a time
		{[]string{"x\r"}, false},                         // message ends with a bare CR
		{[]string{strings.Repeat("ab\r\n", 1000)}, true}, // long
	} {
		_, err := (&spooler{memLimit: 1 << 20}).receive(&chunkReader{chunks: tc.chunks})
		if got := !errors.Is(err, errBareLineEnding); got != tc.ok || (tc.ok && err != nil) {
			t.Errorf("%q: err %v, want ok=%v", tc.chunks, err, tc.ok)
		}
	}
}

// chunkReader returns its chunks one Read at a time, to exercise state
// carried across reads.
type chunkReader struct{ chunks []string }

func (c *chunkReader) Read(p []byte) (int, error) {
	if len(c.chunks) == 0 {
		return 0, io.EOF
	}
	n := copy(p, c.chunks[0])
	c.chunks = c.chunks[1:]
	return n, nil
}

func TestSpoolSpillsToDisk(t *testing.T) {
	body := "Subject: big\r\n\r\n" + strings.Repeat("0123456789abcdef\r\n", 10000)
	sp := &spooler{memLimit: 4096, dir: t.TempDir()}
	m, err := sp.receive(iotest.HalfReader(strings.NewReader(body)))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if m.file == nil {
		t.Fatal("a message above the memory limit was not spilled to a file")
	}
	for i := 0; i < 2; i++ { // each group re-reads the message
		got, _ := io.ReadAll(m.Reader())
		if !bytes.Equal(got, []byte(body)) {
			t.Fatalf("read %d: spilled message differs from what was received", i)
		}
	}
	if m.header.Get("Subject") != "big" {
		t.Errorf("header not parsed from a spilled message: %v", m.header)
	}
}

func TestSpoolLimits(t *testing.T) {
	for _, tc := range []struct {
		name string
		sp   spooler
		body string
		want error
	}{
		// A header without end beyond the limit is refused early.
		{"header", spooler{memLimit: 1 << 20, maxHeader: 100}, "X-A: " + strings.Repeat("a", 200) + "\r\n\r\nbody\r\n", errHeaderSize},
		// A body line over the limit (BDAT bypasses go-smtp's own check).
		{"line", spooler{memLimit: 1 << 20, maxLine: 50}, "S: x\r\n\r\n" + strings.Repeat("b", 51) + "\r\n", errLineLength},
		// Exactly at the limit is fine.
		{"line-ok", spooler{memLimit: 1 << 20, maxLine: 50}, "S: x\r\n\r\n" + strings.Repeat("b", 50) + "\r\n", nil},
		// A bare line ending next to a long line is refused as what it
		// is, possible smuggling, before or after the long line.
		{"bare-after-long", spooler{memLimit: 1 << 20, maxLine: 10}, strings.Repeat("A", 20) + "\r\nx\ny\r\n", errBareLineEnding},
		{"bare-cr-before-long", spooler{memLimit: 1 << 20, maxLine: 10}, "x\ry" + strings.Repeat("A", 20) + "\r\n", errBareLineEnding},
	} {
		m, err := tc.sp.receive(strings.NewReader(tc.body))
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: err %v, want %v", tc.name, err, tc.want)
		}
		if m != nil {
			m.Close()
		}
	}
}
