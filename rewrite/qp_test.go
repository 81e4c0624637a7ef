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
