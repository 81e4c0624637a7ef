package relay

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"
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

// FuzzSpoolLineEndings holds the fast, chunked check to the naive model,
// whatever the chunking: this is the SMTP-smuggling guard.
func FuzzSpoolLineEndings(f *testing.F) {
	for _, s := range []string{"a\r\n", "a\n.\r\n", "a\r.\r\n", "\r\r\n", "x\r", "\r\n\r\n", ".\r\n"} {
		f.Add([]byte(s), uint8(1))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		n := int(step%16) + 1
		var chunks []string
		for i := 0; i < len(data); i += n {
			chunks = append(chunks, string(data[i:min(i+n, len(data))]))
		}
		m, err := (&spooler{memLimit: 1 << 20}).receive(&chunkReader{chunks: chunks})
		if m != nil {
			defer m.Close()
		}
		got := !errors.Is(err, errBareLineEnding)
		if got != strictCRLF(data) {
			t.Fatalf("%q in chunks of %d: accepted=%v, model says %v", data, n, got, strictCRLF(data))
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
	for _, s := range []string{"a\r\n.b\r\n", ".\r\n", "a\n.\nb", "no newline", "\r\n.\r\n.\r\n"} {
		f.Add([]byte(s), uint8(3))
	}
	f.Fuzz(func(t *testing.T, data []byte, step uint8) {
		var out bytes.Buffer
		w := bufio.NewWriter(&out)
		d := &dotWriter{w: w, bol: true}
		n := int(step%16) + 1
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
