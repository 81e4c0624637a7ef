package rewrite

import (
	"bytes"

	"golang.org/x/net/html"
)

// tokenizer splits HTML into the same tokens, with the same raw bytes, as
// golang.org/x/net/html's Tokenizer, which stays the reference: the
// differential fuzz test FuzzTokenizer holds the two to the same token
// stream. It exists for speed. x/net/html reads every byte through an
// io.Reader with a buffer check, and clones and lower-cases every
// attribute name to drop duplicates; on mail HTML that was half the
// rewrite's time. The scan needs only token boundaries and types (it reads
// attributes from the raw bytes itself), so this one walks the slice and
// jumps with IndexByte through text, quoted attribute values and raw text.
//
// The common constructs are handled here. The rare ones are handed to
// x/net/html itself, on the bytes from the start of the token: a <script>
// (its escaping rules), a start tag ending in "/>" whose last attribute
// value is unquoted (whether it is self-closing then depends on duplicate
// attribute names), and "</" or "<!DOCTYPE" cut short by the end of the
// input. Between tokens
// x/net/html keeps no state but the raw-text element it is in, so a fresh
// tokenizer started at a token boundary in the data state reads the same
// tokens as one that had read everything before.
type tokenizer struct {
	b   []byte
	pos int
	// rawTag is the raw-text element whose text comes next ("style",
	// "title", ...), as x/net/html's rawTag.
	rawTag string
	// scriptText is the length of the text token after a <script> start
	// tag, measured by x/net/html.
	scriptText int
	// tail, once set, reads everything from tailAt on.
	tail *html.Tokenizer
}

func newTokenizer(b []byte) *tokenizer { return &tokenizer{b: b} }

// next returns the next token's type and the length of its raw bytes.
// After an ErrorToken it keeps returning ErrorToken.
func (t *tokenizer) next() (html.TokenType, int) {
	if t.tail != nil {
		tt := t.tail.Next()
		return tt, len(t.tail.Raw())
	}
	b, p := t.b, t.pos
	if t.scriptText > 0 {
		n := t.scriptText
		t.scriptText = 0
		t.pos += n
		return html.TextToken, n
	}
	if t.rawTag != "" {
		tag := t.rawTag
		t.rawTag = ""
		end := len(b)
		if tag != "plaintext" {
			end = rawTextEnd(b, p, tag)
		}
		if end > p {
			t.pos = end
			return html.TextToken, end - p
		}
		// Empty raw text: no token; the data state goes on here.
	}
	for i := p; ; {
		j := bytes.IndexByte(b[i:], '<')
		if j < 0 || i+j+1 >= len(b) {
			// No markup before the end ("<" as the last byte is text).
			t.pos = len(b)
			if len(b) > p {
				return html.TextToken, len(b) - p
			}
			return html.ErrorToken, 0
		}
		lt := i + j
		c := b[lt+1]
		if isASCIILetter(c) || c == '/' || c == '!' || c == '?' {
			if lt > p {
				t.pos = lt
				return html.TextToken, lt - p
			}
			return t.markup(lt)
		}
		i = lt + 1
	}
}

// markup reads the token that starts with "<" at lt, followed by a letter,
// "/", "!" or "?".
func (t *tokenizer) markup(lt int) (html.TokenType, int) {
	b := t.b
	switch c := b[lt+1]; {
	case isASCIILetter(c):
		nameEnd, te, lastUnquotedAtGT := scanTag(b, lt+2)
		if te < 0 {
			return t.unterminatedTag(lt)
		}
		tag := rawTextTag(b[lt+1 : nameEnd])
		if tag == "script" {
			return t.script(lt)
		}
		tt := html.StartTagToken
		if b[te-2] == '/' {
			tt = html.SelfClosingTagToken
			if lastUnquotedAtGT {
				// <p a=/> is a start tag whose attribute a is "/", unless
				// a is a duplicate that x/net/html drops: let it decide.
				tt = html.NewTokenizer(bytes.NewReader(b[lt:te])).Next()
			}
		}
		t.pos = te
		t.rawTag = tag
		return tt, te - lt
	case c == '/':
		if lt+2 >= len(b) {
			return t.delegate(lt)
		}
		switch c2 := b[lt+2]; {
		case c2 == '>':
			// "</>" is no token in HTML; x/net/html passes it on as an
			// empty comment.
			t.pos = lt + 3
			return html.CommentToken, 3
		case isASCIILetter(c2):
			_, te, _ := scanTag(b, lt+3)
			if te < 0 {
				return t.unterminatedTag(lt)
			}
			t.pos = te
			return html.EndTagToken, te - lt
		}
		return t.untilCloseAngle(lt, lt+2, html.CommentToken)
	case c == '?':
		return t.untilCloseAngle(lt, lt+2, html.CommentToken)
	}
	// "<!": a comment, a doctype or a bogus comment. One the input ends
	// in runs to the end.
	if lt+3 >= len(b) {
		t.pos = len(b)
		return html.CommentToken, len(b) - lt
	}
	if b[lt+2] == '-' && b[lt+3] == '-' {
		te := commentEnd(b, lt+4)
		if te < 0 {
			te = len(b)
		}
		t.pos = te
		return html.CommentToken, te - lt
	}
	const doctype = "DOCTYPE"
	for i := 0; i < len(doctype); i++ {
		if lt+2+i >= len(b) {
			return t.delegate(lt) // "<!DOC" and the end
		}
		if c := b[lt+2+i]; c != doctype[i] && c != doctype[i]+('a'-'A') {
			return t.untilCloseAngle(lt, lt+2, html.CommentToken)
		}
	}
	return t.untilCloseAngle(lt, lt+2+len(doctype), html.DoctypeToken)
}

// untilCloseAngle ends the token at lt with the first ">" from i on, or
// with the input.
func (t *tokenizer) untilCloseAngle(lt, i int, tt html.TokenType) (html.TokenType, int) {
	t.pos = len(t.b)
	if k := bytes.IndexByte(t.b[i:], '>'); k >= 0 {
		t.pos = i + k + 1
	}
	return tt, t.pos - lt
}

// unterminatedTag ends the input at a tag the input ends in: x/net/html
// reports an error, whose raw bytes are the tag's, and no token after it.
func (t *tokenizer) unterminatedTag(lt int) (html.TokenType, int) {
	t.pos = len(t.b)
	return html.ErrorToken, len(t.b) - lt
}

// delegate hands the rest of the input, from the token boundary lt, to
// x/net/html: a "</" or a "<!DOCTYPE" cut short by the end of the input.
func (t *tokenizer) delegate(lt int) (html.TokenType, int) {
	t.tail = html.NewTokenizer(bytes.NewReader(t.b[lt:]))
	t.pos = len(t.b)
	return t.next()
}

// scanTag reads a tag's name and attributes as x/net/html's readTag does,
// from i, just after the name's first letter. It returns where the name
// ends, the offset just after the closing ">" (or -1 when the input ends
// first), and whether the last attribute had an unquoted value that ran up
// to the ">".
func scanTag(b []byte, i int) (nameEnd, te int, lastUnquotedAtGT bool) {
	n := len(b)
	// The name ends at white space (consumed) or at "/" or ">" (not).
	for ; ; i++ {
		if i >= n {
			return 0, -1, false
		}
		if c := b[i]; attrByte[c]&endsTagName != 0 {
			nameEnd = i
			if attrByte[c]&space != 0 {
				i++
			}
			break
		}
	}
	if i = skipHTMLSpace(b, i); i >= n {
		return 0, -1, false
	}
	for {
		if b[i] == '>' {
			return nameEnd, i + 1, lastUnquotedAtGT
		}
		lastUnquotedAtGT = false
		// The attribute name: "=" is part of it only as its first byte.
		ks := i
		for ; ; i++ {
			if i >= n {
				return 0, -1, false
			}
			if c := b[i]; attrByte[c]&endsAttrName != 0 && (c != '=' || i > ks) {
				break
			}
		}
		keyed := i > ks
		// The value, if "=" follows.
		if i = skipHTMLSpace(b, i); i >= n {
			return 0, -1, false
		}
		switch b[i] {
		case '/':
			i++
		case '=':
			if i = skipHTMLSpace(b, i+1); i >= n {
				return 0, -1, false
			}
			switch q := b[i]; q {
			case '>':
			case '"', '\'':
				k := bytes.IndexByte(b[i+1:], q)
				if k < 0 {
					return 0, -1, false
				}
				i += k + 2
			default:
				for i++; ; i++ {
					if i >= n {
						return 0, -1, false
					}
					if c := b[i]; attrByte[c]&endsUnquoted != 0 {
						if c == '>' {
							lastUnquotedAtGT = keyed
						} else {
							i++
						}
						break
					}
				}
			}
		}
		if i = skipHTMLSpace(b, i); i >= n {
			return 0, -1, false
		}
	}
}

// commentEnd returns the offset just after the comment whose text starts at
// i (after "<!--"), as x/net/html's readComment ends it, or -1 when the
// input ends first. readComment counts dashes byte by byte; what that
// state machine decides at a ">" depends only on the bytes just before it,
// so this jumps from one ">" to the next: Outlook's conditional comments
// are long, and a byte loop over them was a tenth of a rewrite.
func commentEnd(b []byte, i int) int {
	from := i
	for {
		k := bytes.IndexByte(b[i:], '>')
		if k < 0 {
			return -1
		}
		j := i + k
		if commentEndsAt(b[from:j]) {
			return j + 1
		}
		i = j + 1
	}
}

// commentEndsAt reports whether a ">" after text (the comment so far) ends
// the comment: right after "--" (any longer run of dashes ends in one),
// after "--!", or when the text is nothing but dashes ("<!-->", "<!--->").
// A "!" after "--" swallows the byte after it, but the only bytes that
// could change the verdict there are ">" (the "--!>" case) and "-", which
// readComment counts as a fresh dash, as here.
func commentEndsAt(text []byte) bool {
	n := len(text)
	switch {
	case n >= 2 && text[n-1] == '-' && text[n-2] == '-':
		return true
	case n >= 3 && text[n-1] == '!' && text[n-2] == '-' && text[n-3] == '-':
		return true
	}
	for _, c := range text {
		if c != '-' {
			return false
		}
	}
	return true
}

// rawTextEnd returns where the raw text from p, inside the element tag,
// ends: at "</tag" followed by white space, "/" or ">", matched without
// regard to case, or at the end of the input.
func rawTextEnd(b []byte, p int, tag string) int {
	for i := p; ; {
		k := bytes.IndexByte(b[i:], '<')
		if k < 0 {
			return len(b)
		}
		j := i + k
		if j+1 >= len(b) {
			return len(b)
		}
		if b[j+1] != '/' {
			i = j + 1
			continue
		}
		m := j + 2
		x := 0
		for ; x < len(tag); x++ {
			if m+x >= len(b) {
				return len(b)
			}
			if c := b[m+x]; c != tag[x] && c != tag[x]-('a'-'A') {
				break
			}
		}
		if x < len(tag) {
			i = m + x // the mismatch is read again: it may be a "<"
			continue
		}
		if m+x >= len(b) {
			return len(b)
		}
		if c := b[m+x]; isHTMLSpace(c) || c == '/' || c == '>' {
			return j
		}
		i = m + x
	}
}

// rawTextTag returns the lower-case name of an element whose content
// x/net/html reads as raw text, or "".
func rawTextTag(name []byte) string {
	if len(name) < 3 || len(name) > 9 {
		return ""
	}
	for _, s := range [...]string{"iframe", "noembed", "noframes", "noscript", "plaintext", "script", "style", "textarea", "title", "xmp"} {
		if len(s) == len(name) && equalFoldASCII(name, s) {
			return s
		}
	}
	return ""
}

// script reads a <script> start tag at lt with x/net/html, and the length
// of the script text after it: script data has escaping rules that are not
// worth repeating here, and mail rarely carries scripts.
func (t *tokenizer) script(lt int) (html.TokenType, int) {
	z := html.NewTokenizer(bytes.NewReader(t.b[lt:]))
	tt := z.Next()
	n := len(z.Raw())
	t.pos = lt + n
	if z.Next() == html.TextToken {
		t.scriptText = len(z.Raw())
	}
	return tt, n
}

func equalFoldASCII(b []byte, lower string) bool {
	for i := range b {
		c := b[i]
		if 'A' <= c && c <= 'Z' {
			c += 'a' - 'A'
		}
		if c != lower[i] {
			return false
		}
	}
	return true
}

func isASCIILetter(c byte) bool { return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' }

func isHTMLSpace(c byte) bool {
	return c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f'
}

func skipHTMLSpace(b []byte, i int) int {
	for i < len(b) && attrByte[b[i]]&space != 0 {
		i++
	}
	return i
}
