package rewrite

import (
	"bytes"
	"html"
	"strconv"
	"strings"
)

// attrSpan locates one attribute inside the raw bytes of a start tag, in
// absolute offsets of the part's HTML. The tokenizer's TagAttr gives
// unescaped values but no positions; splicing needs positions, so tags of
// interest are parsed a second time here, following the same WHATWG rules
// the tokenizer follows.
type attrSpan struct {
	ok         bool
	name       removable
	start, end int // removal range: leading whitespace through the value's closing quote
	vs, ve     int // the raw value
}

// removable names the attributes whose removal takes the attribute itself
// away (rather than a candidate, a declaration or the whole element).
type removable uint8

const (
	notRemovable removable = iota
	remSrc
	remSrcset
	remBackground
	remPoster
	remData
)

// attrDup is a later attribute with the same name as a removable one.
type attrDup struct {
	name       removable
	start, end int
}

// tagAttrs holds the attributes pixelrelay looks at. The first occurrence
// of a name wins, as in the tokenizer and in browsers. Later duplicates of
// removable attributes are kept in dups: browsers ignore them only as long
// as the first one is there, so removing it must remove them too.
type tagAttrs struct {
	src, srcset, background, style, poster, data, href, rel, typ, width, height, hidden, xlinkHref attrSpan
	dups                                                                                           []attrDup
}

func (a *tagAttrs) reset() { *a = tagAttrs{dups: a.dups[:0]} }

// parseAttrs parses the start tag view[ts:te].
func parseAttrs(view []byte, ts, te int, out *tagAttrs) {
	out.reset()
	i := ts + 1
	for i < te && attrByte[view[i]]&endsTagName == 0 {
		i++
	}
	var nameBuf [16]byte
	for i < te {
		wsStart := i
		for i < te && attrByte[view[i]]&space != 0 {
			i++
		}
		if i >= te || view[i] == '>' {
			return
		}
		if view[i] == '/' {
			i++
			continue
		}
		nameStart := i
		i++ // the first character is part of the name even if it is '='
		for i < te && attrByte[view[i]]&endsAttrName == 0 {
			i++
		}
		nameEnd := i
		end := i
		for i < te && attrByte[view[i]]&space != 0 {
			i++
		}
		vs, ve := nameEnd, nameEnd
		if i < te && view[i] == '=' {
			i++
			for i < te && attrByte[view[i]]&space != 0 {
				i++
			}
			if i < te {
				switch q := view[i]; q {
				case '"', '\'':
					i++
					vs = i
					if k := bytes.IndexByte(view[i:te], q); k >= 0 {
						i += k
					} else {
						i = te
					}
					ve = i
					if i < te {
						i++
					}
				case '>':
				default:
					vs = i
					for i < te && attrByte[view[i]]&endsUnquoted == 0 {
						i++
					}
					ve = i
				}
			}
			end = i
		} else {
			i = nameEnd
		}
		n := nameEnd - nameStart
		if n > len(nameBuf) {
			continue
		}
		for k := 0; k < n; k++ {
			c := view[nameStart+k]
			if c >= 'A' && c <= 'Z' {
				c += 'a' - 'A'
			}
			nameBuf[k] = c
		}
		var dst *attrSpan
		rem := notRemovable
		switch string(nameBuf[:n]) {
		case "src":
			dst, rem = &out.src, remSrc
		case "srcset":
			dst, rem = &out.srcset, remSrcset
		case "background":
			dst, rem = &out.background, remBackground
		case "style":
			dst = &out.style
		case "poster":
			dst, rem = &out.poster, remPoster
		case "data":
			dst, rem = &out.data, remData
		case "href":
			dst = &out.href
		case "rel":
			dst = &out.rel
		case "type":
			dst = &out.typ
		case "width":
			dst = &out.width
		case "height":
			dst = &out.height
		case "hidden":
			dst = &out.hidden
		case "xlink:href":
			dst = &out.xlinkHref
		}
		// A removal takes the whitespace before the attribute, but when
		// the next attribute follows right after it (`"…"class=x`) one
		// space must stay, or that name is glued to what came before:
		// `<td background="…"class=x>` would become `<tdclass=x>`.
		cut := wsStart
		if nameStart > wsStart && end < te && !isSpace(view[end]) && view[end] != '>' && view[end] != '/' {
			cut = wsStart + 1
		}
		switch {
		case dst == nil:
		case !dst.ok:
			*dst = attrSpan{ok: true, name: rem, start: cut, end: end, vs: vs, ve: ve}
		case rem != notRemovable:
			out.dups = append(out.dups, attrDup{name: rem, start: cut, end: end})
		}
	}
}

// attrByte classifies bytes for parseAttrs, which runs on every image and
// its ancestors: one table load per byte instead of up to eight compares.
var attrByte = func() (t [256]uint8) {
	for _, c := range []byte(" \t\n\r\f") {
		t[c] |= space | endsTagName | endsAttrName | endsUnquoted
	}
	t['/'] |= endsTagName | endsAttrName
	t['>'] |= endsTagName | endsAttrName | endsUnquoted
	t['='] |= endsAttrName
	return t
}()

const (
	space        = 1 << iota // isSpace
	endsTagName              // space, '/' or '>'
	endsAttrName             // space, '/', '>' or '='
	endsUnquoted             // space or '>'
)

// attrValue returns the attribute's value with entities unescaped.
func attrValue(view []byte, a attrSpan) string {
	if !a.ok {
		return ""
	}
	v := view[a.vs:a.ve]
	for _, c := range v {
		if c == '&' {
			return html.UnescapeString(string(v))
		}
	}
	return string(v)
}

// attrLength parses a width or height attribute without allocating.
func attrLength(view []byte, a attrSpan) (float64, bool) {
	if !a.ok {
		return 0, false
	}
	v := view[a.vs:a.ve]
	var buf [16]byte
	if len(v) > len(buf) || indexByteOr(v, '&') < len(v) {
		return cssLength(attrValue(view, a))
	}
	n := copy(buf[:], v)
	return cssLength(string(buf[:n]))
}

// cssLength parses an HTML width/height attribute or a CSS length into
// whole pixels; ok is false for percentages, auto and units other than px
// (a zero in any unit is still zero).
func cssLength(s string) (px float64, ok bool) {
	s = strings.TrimSpace(s)
	if i := strings.IndexByte(s, '!'); i >= 0 {
		s = strings.TrimSpace(s[:i])
	}
	n := 0
	for n < len(s) && (s[n] >= '0' && s[n] <= '9' || s[n] == '.') {
		n++
	}
	if n == 0 {
		return 0, false
	}
	var v float64
	if n <= 9 && strings.IndexByte(s[:n], '.') < 0 {
		for _, c := range []byte(s[:n]) { // whole pixels, by far the most common
			v = v*10 + float64(c-'0')
		}
	} else {
		f, err := strconv.ParseFloat(s[:n], 64)
		if err != nil {
			return 0, false
		}
		v = f
	}
	unit := strings.TrimSpace(s[n:])
	switch {
	case v == 0:
		return 0, true
	case unit == "" || strings.EqualFold(unit, "px"):
		return v, true
	}
	return 0, false
}

// boxStyle is what an element's inline style says about its size and
// visibility.
type boxStyle struct {
	w, h, maxW, maxH       float64
	hasW, hasH             bool
	hasMaxW, hasMaxH       bool
	hidden                 bool // display:none, visibility:hidden, opacity:0, max-height:0, height:0 with overflow:hidden
	msoHide                bool // mso-hide:all: hidden in Outlook only, so weak
	zeroHeight, overflowHd bool
}

// parseBoxStyle reads the declarations of an inline style value. It runs
// for every image and each of its ancestors, so it works on the bytes in
// place: names and values are lowered into stack buffers, and a length
// reaches cssLength as a string that does not escape, which Go converts
// into a buffer on the stack.
func parseBoxStyle(v []byte, b *boxStyle) {
	var nameBuf, valBuf [16]byte
	for len(v) > 0 {
		semi := indexByteOr(v, ';')
		decl := v[:semi]
		if semi < len(v) {
			v = v[semi+1:]
		} else {
			v = nil
		}
		colon := indexByteOr(decl, ':')
		if colon >= len(decl) {
			continue
		}
		name, ok := lowerInto(nameBuf[:], trimSpaceBytes(decl[:colon]))
		if !ok {
			continue // longer than any property read here
		}
		val := decl[colon+1:]
		if i := bytes.IndexByte(val, '!'); i >= 0 {
			val = val[:i]
		}
		val = trimSpaceBytes(val)
		switch string(name) {
		case "width":
			b.w, b.hasW = cssLength(string(val))
		case "height":
			b.h, b.hasH = cssLength(string(val))
			if b.hasH && b.h == 0 {
				b.zeroHeight = true
			}
		case "max-width":
			b.maxW, b.hasMaxW = cssLength(string(val))
		case "max-height":
			b.maxH, b.hasMaxH = cssLength(string(val))
			if b.hasMaxH && b.maxH == 0 {
				b.hidden = true
			}
		case "display":
			if lv, ok := lowerInto(valBuf[:], val); ok && string(lv) == "none" {
				b.hidden = true
			}
		case "visibility":
			if lv, ok := lowerInto(valBuf[:], val); ok && (string(lv) == "hidden" || string(lv) == "collapse") {
				b.hidden = true
			}
		case "opacity":
			if f, err := strconv.ParseFloat(string(bytes.TrimSuffix(val, []byte("%"))), 64); err == nil && f == 0 {
				b.hidden = true
			}
		case "overflow", "overflow-y":
			if lv, ok := lowerInto(valBuf[:], val); ok && (string(lv) == "hidden" || string(lv) == "clip") {
				b.overflowHd = true
			}
		case "mso-hide":
			if lv, ok := lowerInto(valBuf[:], val); ok && string(lv) == "all" {
				b.msoHide = true
			}
		}
	}
	if b.zeroHeight && b.overflowHd {
		b.hidden = true
	}
}

// lowerInto lowers ASCII letters of s into buf; ok is false when s does
// not fit.
func lowerInto(buf, s []byte) (_ []byte, ok bool) {
	if len(s) > len(buf) {
		return nil, false
	}
	for i, c := range s {
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[i] = c
	}
	return buf[:len(s)], true
}

func indexByteOr(b []byte, c byte) int {
	for i, x := range b {
		if x == c {
			return i
		}
	}
	return len(b)
}
