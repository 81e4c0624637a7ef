package rewrite

import (
	"bytes"
	"encoding/base64"
	"sort"
	"strings"
)

// cte is a normalised Content-Transfer-Encoding.
type cte uint8

const (
	cteIdentity cte = iota // 7bit, 8bit, binary or absent
	cteQP
	cteBase64
	cteUnknown
)

// parseCTE is lenient the way mail clients are: "quoted-printable;" and
// "8bits" occur in real mail and are read as what they obviously mean.
func parseCTE(v string) cte {
	v = strings.Trim(strings.TrimSpace(lowerASCII(v)), "\"';")
	switch {
	case v == "" || v == "7bit" || v == "8bit" || v == "8bits" || v == "binary" || v == "7-bit" || v == "8-bit":
		return cteIdentity
	case strings.HasPrefix(v, "quoted-printable"):
		return cteQP
	case strings.HasPrefix(v, "base64"):
		return cteBase64
	}
	return cteUnknown
}

// edit replaces dec[start:end] with repl (nil repl: a deletion).
type edit struct {
	start, end int
	repl       []byte
}

// applyEdits splices sorted, non-overlapping edits into src.
func applyEdits(dst, src []byte, edits []edit) []byte {
	pos := 0
	for _, e := range edits {
		dst = append(dst, src[pos:e.start]...)
		dst = append(dst, e.repl...)
		pos = e.end
	}
	return append(dst, src[pos:]...)
}

// qpLine indexes one encoded line of a quoted-printable body.
type qpLine struct {
	encStart, encEnd int // the encoded line including its terminator
	decStart, decEnd int // what it decodes to, including a hard line break
	soft             bool
}

// qpDecode decodes a quoted-printable body leniently: "=" not followed by
// two hex digits is kept literally, and trailing whitespace (transport
// padding) is dropped. Hard line breaks keep their original bytes, so LF
// input decodes to LF text.
func qpDecode(enc, dec []byte, lines []qpLine) ([]byte, []qpLine) {
	// Decoding never lengthens: room for len(enc) more bytes is enough,
	// and writing by index spares an append's checks per "=3D".
	if cap(dec)-len(dec) < len(enc) {
		dec = append(make([]byte, 0, len(dec)+len(enc)), dec...)
	}
	w := len(dec)
	d := dec[:cap(dec)]
	for i := 0; i < len(enc); {
		ls := i
		nl := bytes.IndexByte(enc[i:], '\n')
		lineEnd := len(enc)
		eol := len(enc)
		if nl >= 0 {
			lineEnd = i + nl + 1
			eol = i + nl
			if eol > ls && enc[eol-1] == '\r' {
				eol--
			}
		}
		ce := eol
		for ce > ls && (enc[ce-1] == ' ' || enc[ce-1] == '\t') {
			ce--
		}
		soft := ce > ls && enc[ce-1] == '='
		if soft {
			ce--
		}
		l := qpLine{encStart: ls, encEnd: lineEnd, decStart: w, soft: soft}
		for j := ls; j < ce; {
			eq := bytes.IndexByte(enc[j:ce], '=')
			if eq < 0 {
				w += copy(d[w:], enc[j:ce])
				break
			}
			w += copy(d[w:], enc[j:j+eq])
			j += eq
			if j+2 < ce && isHex(enc[j+1]) && isHex(enc[j+2]) {
				d[w] = unhex(enc[j+1])<<4 | unhex(enc[j+2])
				w++
				j += 3
				continue
			}
			d[w] = '='
			w++
			j++
		}
		if !soft && eol < lineEnd {
			w += copy(d[w:], enc[eol:lineEnd])
		}
		l.decEnd = w
		lines = append(lines, l)
		i = lineEnd
	}
	return d[:w], lines
}

func unhex(c byte) byte {
	switch {
	case c >= '0' && c <= '9':
		return c - '0'
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10
	default:
		return c - 'A' + 10
	}
}

// qpLineOf returns the index of the encoded line that holds decoded offset
// x (the last line starting at or before x).
func qpLineOf(lines []qpLine, x int) int {
	i := sort.Search(len(lines), func(i int) bool { return lines[i].decStart > x })
	if i == 0 {
		return 0
	}
	return i - 1
}

// qpApply splices enc with edits (in decoded offsets) applied into sp.
// Only the encoded lines that contain an edit are re-encoded; every other
// line stays a run of enc. It returns scratch, for reuse.
func qpApply(sp *splice, enc, dec []byte, lines []qpLine, edits []edit, eol string, scratch []byte) []byte {
	if len(lines) == 0 {
		sp.keep(0, len(enc))
		return scratch
	}
	pos := 0 // next encoded byte to copy
	for k := 0; k < len(edits); {
		first := qpLineOf(lines, edits[k].start)
		lastOff := edits[k].end - 1
		if edits[k].end == edits[k].start {
			lastOff = edits[k].start
		}
		last := qpLineOf(lines, lastOff)
		if last < first {
			last = first
		}
		// Pull in every later edit that touches the same lines.
		j := k + 1
		for j < len(edits) && qpLineOf(lines, edits[j].start) <= last {
			lo := edits[j].end - 1
			if edits[j].end == edits[j].start {
				lo = edits[j].start
			}
			if l := qpLineOf(lines, lo); l > last {
				last = l
			}
			j++
		}
		// Apply edits k..j-1 to the decoded text of lines first..last.
		ds, de := lines[first].decStart, lines[last].decEnd
		scratch = scratch[:0]
		p := ds
		for _, e := range edits[k:j] {
			scratch = append(scratch, dec[p:e.start]...)
			scratch = append(scratch, e.repl...)
			p = e.end
		}
		scratch = append(scratch, dec[p:de]...)
		sp.keep(pos, lines[first].encStart)
		s := len(sp.side)
		sp.side = qpEncode(sp.side, scratch, eol, lines[last].soft)
		sp.add(s)
		pos = lines[last].encEnd
		k = j
	}
	sp.keep(pos, len(enc))
	return scratch
}

// splice is a rewritten part: runs of the original bytes and of new ones,
// in order. The untouched lines of a part, nearly all of it, are written
// from the input as they are instead of being copied into a second buffer
// first and compared with the input after.
type splice struct {
	runs []spliceRun
	side []byte // the new bytes; side runs refer to them by offset
}

type spliceRun struct {
	side       bool
	start, end int // in the input, or in side
}

func (sp *splice) reset() {
	sp.runs = sp.runs[:0]
	sp.side = sp.side[:0]
}

// keep adds the input's bytes [start, end).
func (sp *splice) keep(start, end int) {
	if end > start {
		sp.runs = append(sp.runs, spliceRun{start: start, end: end})
	}
}

// add adds side[from:], the new bytes appended since from.
func (sp *splice) add(from int) {
	sp.runs = append(sp.runs, spliceRun{side: true, start: from, end: len(sp.side)})
}

// same reports whether the splice spells in itself, byte for byte (edits
// that cancel out across runs included). A run of in at its own offset
// needs no comparison.
func (sp *splice) same(in []byte) bool {
	pos := 0
	for _, r := range sp.runs {
		b := sp.bytes(in, r)
		if r.side || r.start != pos {
			if len(b) > len(in)-pos || !bytes.Equal(b, in[pos:pos+len(b)]) {
				return false
			}
		}
		pos += len(b)
	}
	return pos == len(in)
}

// bytes returns run r's bytes.
func (sp *splice) bytes(in []byte, r spliceRun) []byte {
	if r.side {
		return sp.side[r.start:r.end]
	}
	return in[r.start:r.end]
}

// firstLine returns the spliced content's first line, terminator
// included, in a new slice.
func (sp *splice) firstLine(in []byte) []byte {
	var line []byte
	for _, r := range sp.runs {
		b := sp.bytes(in, r)
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			return append(line, b[:i+1]...)
		}
		line = append(line, b...)
	}
	return line
}

// spliceEdits splices src with edits applied into sp.
func spliceEdits(sp *splice, src []byte, edits []edit) {
	pos := 0
	for _, e := range edits {
		sp.keep(pos, e.start)
		s := len(sp.side)
		sp.side = append(sp.side, e.repl...)
		sp.add(s)
		pos = e.end
	}
	sp.keep(pos, len(src))
}

const hexUpper = "0123456789ABCDEF"

// qpEncode encodes src as quoted-printable lines of at most 76 characters.
// src's hard line breaks (eol) stay line breaks; softEnd adds a final soft
// break because the next, untouched encoded line continues this one.
func qpEncode(dst, src []byte, eol string, softEnd bool) []byte {
	lineLen := 0
	var tok [3]byte
	for i := 0; i < len(src); i++ {
		c := src[i]
		if eol == "\r\n" && c == '\r' && i+1 < len(src) && src[i+1] == '\n' {
			dst = append(dst, '\r', '\n')
			i++
			lineLen = 0
			continue
		}
		if eol == "\n" && c == '\n' {
			dst = append(dst, '\n')
			lineLen = 0
			continue
		}
		atHardEnd := i+1 == len(src) && !softEnd || i+1 < len(src) && isHardEOL(src[i+1:], eol)
		n := 1
		switch {
		case c >= 33 && c <= 126 && c != '=':
			tok[0] = c
		case (c == ' ' || c == '\t') && !atHardEnd:
			tok[0] = c
		default:
			tok[0], tok[1], tok[2] = '=', hexUpper[c>>4], hexUpper[c&15]
			n = 3
		}
		limit := 75
		if atHardEnd {
			limit = 76
		}
		if lineLen+n > limit {
			dst = append(dst, '=')
			dst = append(dst, eol...)
			lineLen = 0
		}
		dst = append(dst, tok[:n]...)
		lineLen += n
	}
	if softEnd {
		dst = append(dst, '=')
		dst = append(dst, eol...)
	}
	return dst
}

func isHardEOL(b []byte, eol string) bool {
	if eol == "\r\n" {
		return len(b) >= 2 && b[0] == '\r' && b[1] == '\n'
	}
	return len(b) >= 1 && b[0] == '\n'
}

// b64Layout remembers how a base64 body was laid out, to re-encode it the
// same way: line length, line ending, and the bytes before the first and
// after the last base64 character.
type b64Layout struct {
	lineLen    int // 0: one unbroken line
	eol        string
	lead, tail []byte
}

// b64Decode decodes a base64 body; ok is false for broken base64, which
// is then passed through untouched.
func b64Decode(enc, dec, scratch []byte) (out []byte, lay b64Layout, ok bool) {
	first, last := -1, -1
	for i, c := range enc {
		if !isSpace(c) {
			if first < 0 {
				first = i
			}
			last = i
		}
	}
	if first < 0 {
		return dec, lay, false
	}
	lay.lead, lay.tail = enc[:first], enc[last+1:]
	lay.eol = "\r\n"
	body := enc[first : last+1]
	if nl := bytes.IndexByte(body, '\n'); nl >= 0 {
		l := body[:nl]
		if len(l) > 0 && l[len(l)-1] == '\r' {
			l = l[:len(l)-1]
		} else {
			lay.eol = "\n"
		}
		lay.lineLen = len(bytes.TrimRight(l, " \t"))
	} else if nl := bytes.IndexByte(lay.tail, '\n'); nl >= 0 && (nl == 0 || lay.tail[nl-1] != '\r') {
		lay.eol = "\n"
	}
	scratch = scratch[:0]
	for _, c := range body {
		if !isSpace(c) {
			scratch = append(scratch, c)
		}
	}
	enc64 := base64.StdEncoding
	s := scratch
	if len(s)%4 != 0 {
		s = bytes.TrimRight(s, "=")
		enc64 = base64.RawStdEncoding
	}
	n := enc64.DecodedLen(len(s))
	if cap(dec) < n {
		dec = make([]byte, n)
	}
	dec = dec[:n]
	m, err := enc64.Decode(dec, s)
	if err != nil {
		return dec[:0], lay, false
	}
	return dec[:m], lay, true
}

// b64Encode re-encodes a whole part with the original layout.
func b64Encode(dst, data []byte, lay b64Layout) []byte {
	dst = append(dst, lay.lead...)
	tmp := make([]byte, base64.StdEncoding.EncodedLen(len(data)))
	base64.StdEncoding.Encode(tmp, data)
	if lay.lineLen > 0 {
		for len(tmp) > lay.lineLen {
			dst = append(dst, tmp[:lay.lineLen]...)
			dst = append(dst, lay.eol...)
			tmp = tmp[lay.lineLen:]
		}
	}
	dst = append(dst, tmp...)
	return append(dst, lay.tail...)
}
