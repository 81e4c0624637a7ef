package rewrite

import (
	"bytes"
	"html"
)

// cssRef is one url() or @import target found in CSS, with the range of the
// declaration (or @import rule) that removing it takes away.
type cssRef struct {
	url        []byte
	start, end int // absolute offsets in the part's HTML
}

// scanCSS finds the remote references in view[s:e]. In a style attribute
// (attr true) HTML entities are decoded first (Outlook writes
// font-family:&quot;Arial&quot;), and offsets are mapped back to the raw
// bytes. The scanner knows comments, strings and parentheses, which is all
// that is needed to find declaration boundaries without a full CSS parser.
func scanCSS(view []byte, s, e int, attr bool, out []cssRef) []cssRef {
	css := view[s:e]
	var offs []int
	if attr && indexByteOr(css, '&') < len(css) {
		css, offs = unescapeWithOffsets(css, s)
	}
	abs := func(i int) int {
		if offs != nil {
			return offs[i]
		}
		return s + i
	}
	n := len(css)
	stmt := 0
	for i := 0; i < n; {
		c := css[i]
		switch {
		case c == '/' && i+1 < n && css[i+1] == '*':
			i = skipCSSComment(css, i)
		case c == '"' || c == '\'':
			i = skipCSSString(css, i)
		case c == '{' || c == '}' || c == ';':
			i++
			stmt = i
		case c == '@' && hasPrefixFoldBytes(css[i:], "@import"):
			j := i + len("@import")
			j = skipCSSSpace(css, j)
			var u []byte
			if hasPrefixFoldBytes(css[j:], "url(") {
				u, j = readCSSURL(css, j+4)
			} else if j < n && (css[j] == '"' || css[j] == '\'') {
				k := skipCSSString(css, j)
				u = trimQuotes(css[j:k])
				j = k
			}
			end, _ := declEnd(css, j)
			if u != nil {
				out = append(out, cssRef{url: u, start: abs(stmt), end: abs(end)})
			}
			i = end
			if i <= j {
				i = j + 1
			}
			stmt = i
		case (c == 'u' || c == 'U') && hasPrefixFoldBytes(css[i:], "url(") && (i == 0 || !isIdentChar(css[i-1])):
			u, j := readCSSURL(css, i+4)
			end, ok := declEnd(css, j)
			if ok && u != nil {
				out = append(out, cssRef{url: u, start: abs(stmt), end: abs(end)})
			}
			i = j
		case c == '(' && isImageSet(css[identStart(css, stmt, i):i]):
			out = imageSetStrings(css, i+1, stmt, abs, out)
			i++
		case c == '\\':
			// A name with escapes: CSS undoes them before it knows the
			// name, so `\75 rl(` is url( and `image-s\65t(` image-set(.
			k := identStart(css, stmt, i)
			j := identEnd(css, k)
			if j < n && css[j] == '(' {
				name := unescapeCSS(css[k:j])
				if string(bytes.ToLower(name)) == "url" {
					u, m := readCSSURL(css, j+1)
					if end, ok := declEnd(css, m); ok && u != nil {
						out = append(out, cssRef{url: u, start: abs(stmt), end: abs(end)})
					}
					i = m
					continue
				}
				if isImageSet(name) {
					out = imageSetStrings(css, j+1, stmt, abs, out)
				}
			}
			i = max(j, i+1)
		default:
			i++
		}
	}
	return out
}

// readCSSURL reads the argument of url( starting at i (just after the
// parenthesis) and returns it and the offset after the closing ')'.
func readCSSURL(css []byte, i int) ([]byte, int) {
	n := len(css)
	i = skipCSSSpace(css, i)
	var u []byte
	if i < n && (css[i] == '"' || css[i] == '\'') {
		k := skipCSSString(css, i)
		u = trimQuotes(css[i:k])
		i = k
	} else {
		start := i
		for i < n && css[i] != ')' && !isSpace(css[i]) {
			if css[i] == '\\' && i+1 < n {
				i++
			}
			i++
		}
		u = css[start:i]
	}
	for i < n && css[i] != ')' {
		i++
	}
	if i < n {
		i++
	}
	return u, i
}

// declEnd finds where the declaration containing offset i ends: just after
// its ';', at its block's '}', or at the end. ok is false when a '{' comes
// first (the url was in a selector or prelude, which is not a declaration).
func declEnd(css []byte, i int) (int, bool) {
	start := i
	depth := 0
	for i < len(css) {
		switch c := css[i]; {
		case c == '/' && i+1 < len(css) && css[i+1] == '*':
			i = skipCSSComment(css, i)
			continue
		case c == '"' || c == '\'':
			i = skipCSSString(css, i)
			continue
		case c == '(':
			depth++
		case c == ')':
			if depth > 0 {
				depth--
			}
		case c == ';' && depth == 0:
			return i + 1, true
		case c == '}' && depth == 0:
			return i, true
		case c == '{' && depth == 0:
			return i, false
		}
		i++
	}
	// A declaration cut off by the end of the text ends before trailing
	// whitespace: in a <style> at the end of a part that is the line
	// break the MIME delimiter owns.
	end := len(css)
	for end > start && isSpace(css[end-1]) {
		end--
	}
	return end, true
}

func skipCSSComment(css []byte, i int) int {
	for j := i + 2; j+1 < len(css); j++ {
		if css[j] == '*' && css[j+1] == '/' {
			return j + 2
		}
	}
	return len(css)
}

func skipCSSString(css []byte, i int) int {
	q := css[i]
	for j := i + 1; j < len(css); j++ {
		switch css[j] {
		case '\\':
			j++
		case q:
			return j + 1
		case '\n':
			return j // an unterminated string ends at the line (CSS "bad string")
		}
	}
	return len(css)
}

func skipCSSSpace(css []byte, i int) int {
	for i < len(css) && isSpace(css[i]) {
		i++
	}
	return i
}

func trimQuotes(b []byte) []byte {
	if len(b) > 0 && (b[0] == '"' || b[0] == '\'') {
		q := b[0]
		b = b[1:]
		if len(b) > 0 && b[len(b)-1] == q {
			b = b[:len(b)-1]
		}
	}
	return b
}

func isIdentChar(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c >= 0x80
}

func hasPrefixFoldBytes(b []byte, prefix string) bool {
	if len(b) < len(prefix) {
		return false
	}
	for i := 0; i < len(prefix); i++ {
		c := b[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != prefix[i] {
			return false
		}
	}
	return true
}

// unescapeWithOffsets decodes HTML character references in raw and returns
// the decoded bytes with, for each decoded byte, the absolute offset of the
// raw byte it came from (plus one final entry for the end).
func unescapeWithOffsets(raw []byte, base int) ([]byte, []int) {
	out := make([]byte, 0, len(raw))
	offs := make([]int, 0, len(raw)+1)
	for i := 0; i < len(raw); {
		if raw[i] == '&' {
			j := i + 1
			for j < len(raw) && j-i < 40 && raw[j] != ';' && raw[j] != '&' && !isSpace(raw[j]) {
				j++
			}
			if j < len(raw) && raw[j] == ';' {
				dec := html.UnescapeString(string(raw[i : j+1]))
				for k := 0; k < len(dec); k++ {
					out = append(out, dec[k])
					offs = append(offs, base+i)
				}
				i = j + 1
				continue
			}
		}
		out = append(out, raw[i])
		offs = append(offs, base+i)
		i++
	}
	offs = append(offs, base+len(raw))
	return out, offs
}

// identStart is where the name that ends at i begins (not before stmt).
func identStart(css []byte, stmt, i int) int {
	for i > stmt && isIdentChar(css[i-1]) {
		i--
	}
	return i
}

// identEnd is where the name starting at i ends, escapes included.
func identEnd(css []byte, i int) int {
	for i < len(css) {
		switch c := css[i]; {
		case isIdentChar(c):
			i++
		case c == '\\' && i+1 < len(css) && css[i+1] != '\n' && css[i+1] != '\r' && css[i+1] != '\f':
			i++
			if !isHex(css[i]) {
				i++
				continue
			}
			k := i
			for i < len(css) && i-k < 6 && isHex(css[i]) {
				i++
			}
			if i < len(css) && isSpace(css[i]) {
				if css[i] == '\r' && i+1 < len(css) && css[i+1] == '\n' {
					i++
				}
				i++
			}
		default:
			return i
		}
	}
	return i
}

// isImageSet tells image-set and its prefixed form, whose arguments may
// be plain strings that the browser fetches like url()s.
func isImageSet(name []byte) bool {
	return len(name) >= len("image-set") && (hasPrefixFoldBytes(name, "image-set") && len(name) == len("image-set") ||
		hasPrefixFoldBytes(name, "-webkit-image-set") && len(name) == len("-webkit-image-set"))
}

// imageSetStrings records the string arguments of the image-set( whose
// arguments start at i; its url() arguments are found by the caller's
// scan, which goes on inside.
func imageSetStrings(css []byte, i, stmt int, abs func(int) int, out []cssRef) []cssRef {
	depth := 0
	for i < len(css) {
		switch c := css[i]; {
		case c == '"' || c == '\'':
			k := skipCSSString(css, i)
			if end, ok := declEnd(css, k); ok {
				out = append(out, cssRef{url: trimQuotes(css[i:k]), start: abs(stmt), end: abs(end)})
			}
			i = k
			continue
		case c == '/' && i+1 < len(css) && css[i+1] == '*':
			i = skipCSSComment(css, i)
			continue
		case c == '(':
			depth++
		case c == ')':
			if depth == 0 {
				return out
			}
			depth--
		case c == ';' || c == '{' || c == '}':
			return out
		}
		i++
	}
	return out
}
