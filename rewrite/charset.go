package rewrite

import (
	"bytes"
	"strings"
	"sync"
	"unicode/utf16"
	"unicode/utf8"

	"golang.org/x/text/encoding"
	"golang.org/x/text/encoding/htmlindex"
	"golang.org/x/text/encoding/ianaindex"
)

// viewKind says how a part's decoded bytes are turned into the ASCII-
// compatible text the tokenizer reads, and how edits on that text go back.
type viewKind uint8

const (
	// viewASCII: the bytes are read as they are. Safe for every charset in
	// which the bytes < 0x80 that HTML syntax uses ('<', '>', '"', '=',
	// '\'', '/', whitespace) always mean themselves: UTF-8, ISO-8859-x,
	// windows-125x, KOI8, Shift_JIS, Big5, GBK/GB18030, EUC-x.
	viewASCII viewKind = iota
	// viewMasked: a stateful 7-bit charset (ISO-2022-JP/KR/CN, HZ-GB-2312,
	// UTF-7). Bytes inside multibyte runs are masked with 'x' in a copy of
	// the same length, so offsets are unchanged and tag syntax is only
	// found in single-byte (ASCII) mode. Every edit starts and ends at an
	// ASCII-mode position, so the shift state around it is intact and no
	// character is damaged.
	viewMasked
	// viewUTF16LE/BE: transcoded to UTF-8 with a table mapping each view
	// byte back to its code unit. UTF-16 is stateless, so an edit is a
	// splice of whole code units.
	viewUTF16LE
	viewUTF16BE
)

// csView is the tokenizer's view of one part.
type csView struct {
	kind viewKind
	text []byte
	offs []int // viewUTF16*: dec offset of each text byte, plus the end
}

// toDec maps a view offset to an offset in the decoded part.
func (v *csView) toDec(i int) int {
	if v.kind == viewUTF16LE || v.kind == viewUTF16BE {
		return v.offs[i]
	}
	return i
}

// encode converts inserted text (ASCII HTML) into the part's charset.
func (v *csView) encode(s []byte) []byte {
	switch v.kind {
	case viewUTF16LE, viewUTF16BE:
		u := utf16.Encode([]rune(string(s)))
		out := make([]byte, 0, 2*len(u))
		for _, c := range u {
			if v.kind == viewUTF16LE {
				out = append(out, byte(c), byte(c>>8))
			} else {
				out = append(out, byte(c>>8), byte(c))
			}
		}
		return out
	}
	return s
}

// charsetClass sorts a charset label into a view kind. problem is set when
// the label is unknown (the part is still read as ASCII-compatible, since
// a tracker left in place is the worse failure) or unusable (ok false).
func charsetClass(label string, dec []byte) (kind viewKind, ok bool, problem string) {
	name := strings.Trim(strings.TrimSpace(lowerASCII(label)), "\"'")
	// A byte-order mark decides, as it does in browsers.
	switch {
	case bytes.HasPrefix(dec, []byte{0xFF, 0xFE}) && !strings.HasPrefix(name, "utf-32"):
		return viewUTF16LE, true, ""
	case bytes.HasPrefix(dec, []byte{0xFE, 0xFF}):
		return viewUTF16BE, true, ""
	}
	switch name {
	case "utf-16", "utf16", "utf-16le", "utf-16be", "ucs-2", "ucs2", "unicode", "unicodefffe", "csunicode", "iso-10646-ucs-2", "unicode-1-1":
		sample := dec
		if len(sample) > 4096 {
			sample = sample[:4096]
		}
		if bytes.IndexByte(sample, 0) < 0 {
			return viewASCII, true, "charset " + label + " declared but the text has no UTF-16 code units; read as ASCII-compatible"
		}
		switch {
		case strings.HasSuffix(name, "le"):
			return viewUTF16LE, true, ""
		case strings.HasSuffix(name, "be"), name == "unicodefffe":
			return viewUTF16BE, true, ""
		}
		// No BOM and no byte order in the label: ASCII characters have
		// their zero byte first in big endian.
		if len(dec) >= 2 && dec[0] == 0 && dec[1] != 0 {
			return viewUTF16BE, true, ""
		}
		return viewUTF16LE, true, ""
	}
	if strings.HasPrefix(name, "iso-2022") || strings.HasPrefix(name, "csiso2022") || name == "hz-gb-2312" ||
		name == "utf-7" || name == "unicode-1-1-utf-7" || name == "csunicode11utf7" {
		return viewMasked, true, ""
	}
	if asciiCompatibleName(name) {
		return viewASCII, true, ""
	}
	if strings.HasPrefix(name, "utf-32") || strings.HasPrefix(name, "ucs-4") {
		return viewASCII, false, "charset " + label + " is not supported for rewriting"
	}
	switch asciiCompatibleEncoding(name) {
	case 1:
		return viewASCII, true, ""
	case 0:
		return viewASCII, false, "charset " + label + " is not ASCII-compatible and cannot be rewritten safely"
	}
	if bytes.IndexByte(dec, 0) >= 0 {
		return viewASCII, false, "unknown charset " + label + " with NUL bytes"
	}
	return viewASCII, true, "unknown charset " + label + "; read as ASCII-compatible"
}

func asciiCompatibleName(n string) bool {
	switch n {
	case "", "us-ascii", "ascii", "utf-8", "utf8", "latin1", "latin-1", "l1", "gb2312", "gbk", "gb18030", "big5", "big5-hkscs",
		"shift_jis", "shift-jis", "sjis", "x-sjis", "ms_kanji", "ks_c_5601-1987", "tis-620", "ansi_x3.4-1968", "macintosh",
		"cp437", "cp850", "cp852", "cp866", "cp874", "cp932", "cp936", "cp949", "cp950", "x-gbk", "koi8-r", "koi8-u":
		return true
	}
	for _, p := range []string{"iso-8859-", "iso8859-", "iso_8859-", "windows-", "euc-", "x-euc", "x-mac-", "koi8", "cp125"} {
		if strings.HasPrefix(n, p) {
			return true
		}
	}
	return false
}

var asciiCache sync.Map // charset name -> int8 (1 yes, 0 no, -1 unknown)

// asciiCompatibleEncoding looks a label up in the WHATWG and IANA indexes
// and checks that printable ASCII decodes to itself (EBCDIC does not).
func asciiCompatibleEncoding(name string) int8 {
	if v, ok := asciiCache.Load(name); ok {
		return v.(int8)
	}
	var enc encoding.Encoding
	if e, err := htmlindex.Get(name); err == nil {
		enc = e
	} else if e, err := ianaindex.IANA.Encoding(name); err == nil && e != nil {
		enc = e
	}
	res := int8(-1)
	if enc != nil {
		probe := []byte("\t\r\n !\"#$%&'()*+,-./0123456789:;<=>?@ABCDEFGHIJKLMNOPQRSTUVWXYZ[]^_`abcdefghijklmnopqrstuvwxyz{|}~")
		out, err := enc.NewDecoder().Bytes(probe)
		res = 0
		if err == nil && bytes.Equal(out, probe) {
			res = 1
		}
	}
	asciiCache.Store(name, res)
	return res
}

// buildView prepares the tokenizer's view of dec. buf is reusable scratch.
func buildView(kind viewKind, dec []byte, buf []byte, label string) csView {
	switch kind {
	case viewMasked:
		return csView{kind: kind, text: maskStateful(dec, buf[:0], lowerASCII(label))}
	case viewUTF16LE, viewUTF16BE:
		return utf16View(kind, dec, buf[:0])
	}
	return csView{kind: viewASCII, text: dec}
}

// maskStateful copies dec, replacing every byte that is not in single-byte
// ASCII mode with 'x'. Line ends reset to ASCII, which is what RFC 1468
// requires of ISO-2022-JP senders and protects the rest of the part from one
// broken line.
func maskStateful(dec, out []byte, label string) []byte {
	out = append(out, dec...)
	switch {
	case label == "hz-gb-2312":
		gb := false
		for i := 0; i < len(out); i++ {
			c := out[i]
			switch {
			case c == '\n':
				gb = false
			case c == '~' && i+1 < len(out) && out[i+1] == '{':
				out[i], out[i+1] = 'x', 'x'
				i++
				gb = true
			case c == '~' && i+1 < len(out) && out[i+1] == '}':
				out[i], out[i+1] = 'x', 'x'
				i++
				gb = false
			case gb:
				out[i] = 'x'
			}
		}
	case strings.Contains(label, "utf-7") || strings.Contains(label, "utf7"):
		b64 := false
		for i := 0; i < len(out); i++ {
			c := out[i]
			switch {
			case b64 && (c == '-' || !isB64(c) || c == '_'):
				b64 = false
				if c == '-' {
					out[i] = 'x'
				}
			case b64:
				out[i] = 'x'
			case c == '+':
				out[i] = 'x'
				b64 = true
			}
		}
	default: // ISO-2022-*
		multi, shifted := false, false
		for i := 0; i < len(out); i++ {
			c := out[i]
			switch {
			case c == '\n':
				multi, shifted = false, false
			case c == 0x1B: // ESC: designation sequences
				j := i + 1
				for j < len(out) && j-i <= 4 && out[j] >= 0x20 && out[j] <= 0x2F {
					j++
				}
				if j < len(out) {
					seq := out[i+1 : j+1]
					switch {
					case len(seq) >= 2 && seq[0] == '(' && (seq[1] == 'B' || seq[1] == 'J'):
						multi = false
					case len(seq) >= 2 && seq[0] == '(' && seq[1] == 'I':
						multi = true
					case len(seq) >= 2 && seq[0] == '$' && seq[1] != ')' && seq[1] != '*' && seq[1] != '+':
						multi = true
					}
				}
				for k := i; k <= j && k < len(out); k++ {
					out[k] = 'x'
				}
				i = j
			case c == 0x0E: // SO
				shifted = true
				out[i] = 'x'
			case c == 0x0F: // SI
				shifted = false
				out[i] = 'x'
			case multi || shifted:
				out[i] = 'x'
			}
		}
	}
	return out
}

func utf16View(kind viewKind, dec, buf []byte) csView {
	v := csView{kind: kind, text: buf, offs: make([]int, 0, len(dec)/2+1)}
	unit := func(i int) uint16 {
		if kind == viewUTF16LE {
			return uint16(dec[i]) | uint16(dec[i+1])<<8
		}
		return uint16(dec[i])<<8 | uint16(dec[i+1])
	}
	var tmp [4]byte
	i := 0
	for i+1 < len(dec) {
		start := i
		r := rune(unit(i))
		i += 2
		if utf16.IsSurrogate(r) && i+1 < len(dec) {
			if r2 := rune(unit(i)); r < 0xDC00 && r2 >= 0xDC00 && r2 < 0xE000 {
				r = utf16.DecodeRune(r, r2)
				i += 2
			} else {
				r = utf8.RuneError
			}
		} else if utf16.IsSurrogate(r) {
			r = utf8.RuneError
		}
		n := utf8.EncodeRune(tmp[:], r)
		for k := 0; k < n; k++ {
			v.text = append(v.text, tmp[k])
			v.offs = append(v.offs, start)
		}
	}
	if i < len(dec) { // an odd trailing byte
		v.text = append(v.text, "\uFFFD"...)
		for k := 0; k < 3; k++ {
			v.offs = append(v.offs, i)
		}
	}
	v.offs = append(v.offs, len(dec))
	return v
}
