package rewrite

import (
	"bytes"
	"reflect"
	"testing"
)

// qpDecodeModel is the plain, byte-at-a-time statement of qpDecode's rules:
// per line, trailing white space is transport padding, a final "=" is a
// soft break, "=" and two hex digits is a byte and any other "=" stays,
// and a hard line break keeps its own bytes.
func qpDecodeModel(enc []byte) ([]byte, []qpLine) {
	var dec []byte
	var lines []qpLine
	for i := 0; i < len(enc); {
		lineEnd, eol := len(enc), len(enc)
		if nl := bytes.IndexByte(enc[i:], '\n'); nl >= 0 {
			lineEnd, eol = i+nl+1, i+nl
			if eol > i && enc[eol-1] == '\r' {
				eol--
			}
		}
		ce := eol
		for ce > i && (enc[ce-1] == ' ' || enc[ce-1] == '\t') {
			ce--
		}
		soft := ce > i && enc[ce-1] == '='
		if soft {
			ce--
		}
		l := qpLine{encStart: i, encEnd: lineEnd, decStart: len(dec), soft: soft}
		for j := i; j < ce; j++ {
			if enc[j] == '=' && j+2 < ce && isHex(enc[j+1]) && isHex(enc[j+2]) {
				dec = append(dec, unhex(enc[j+1])<<4|unhex(enc[j+2]))
				j += 2
				continue
			}
			dec = append(dec, enc[j])
		}
		if !soft {
			dec = append(dec, enc[eol:lineEnd]...)
		}
		l.decEnd = len(dec)
		lines = append(lines, l)
		i = lineEnd
	}
	return dec, lines
}

// FuzzQPDecode holds qpDecode, which goes a word at a time, to the model,
// decoding after whatever an earlier part left in the buffer.
func FuzzQPDecode(f *testing.F) {
	for _, s := range []string{
		"", "=", "==", "=3D", "=3d", "=3", "=G1", "a=\r\n", "a=  \r\nb", "abc   \r\n", "=\n=\n",
		"<td style=3D\"color:#fff\">plain text that runs longer than eight=20bytes</td>=\r\n",
		"12345678=3D12345678=\r\n12345678", "1234567=3D", "12345678", "123456789abcdef0=", "=0A=0D=FF\n\n\r\n",
	} {
		f.Add([]byte(s), []byte("prior"))
	}
	f.Fuzz(func(t *testing.T, enc, prior []byte) {
		want, wantLines := qpDecodeModel(enc)
		got, gotLines := qpDecode(enc, append([]byte(nil), prior...), nil)
		if !bytes.Equal(got[:min(len(prior), len(got))], prior) || !bytes.Equal(got[len(prior):], want) {
			t.Fatalf("qpDecode(%q) after %q = %q, want %q", enc, prior, got, append(append([]byte(nil), prior...), want...))
		}
		for i := range wantLines {
			wantLines[i].decStart += len(prior)
			wantLines[i].decEnd += len(prior)
		}
		if len(wantLines) == 0 {
			wantLines = nil
		}
		if !reflect.DeepEqual(gotLines, wantLines) {
			t.Fatalf("qpDecode(%q) lines %+v, want %+v", enc, gotLines, wantLines)
		}
	})
}

// A splice is the same as its input exactly when its bytes are, also when
// edits cancel out across runs (a span removed here, the same bytes
// inserted there): then nothing changed and the part is copied as it was.
func TestSpliceSame(t *testing.T) {
	in := []byte("abcabc")
	for _, tc := range []struct {
		edits []edit
		same  bool
	}{
		{nil, true},
		{[]edit{{start: 0, end: 3}, {start: 6, end: 6, repl: []byte("abc")}}, true},
		{[]edit{{start: 1, end: 2, repl: []byte("b")}}, true},
		{[]edit{{start: 0, end: 3}}, false},
		{[]edit{{start: 6, end: 6, repl: []byte("x")}}, false},
		{[]edit{{start: 0, end: 3, repl: []byte("abd")}}, false},
	} {
		var sp splice
		spliceEdits(&sp, in, tc.edits)
		var out []byte
		for _, r := range sp.runs {
			out = append(out, sp.bytes(in, r)...)
		}
		if got := sp.same(in); got != tc.same || got != bytes.Equal(out, in) {
			t.Errorf("edits %+v: same %v, output %q", tc.edits, got, out)
		}
	}
}
