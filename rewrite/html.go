package rewrite

import (
	"bytes"
	"strings"
	"unicode"
	"unicode/utf8"

	"golang.org/x/net/html"
	"golang.org/x/net/html/atom"
)

// refKind says what removing one reference takes away.
type refKind uint8

const (
	refElem   refKind = iota // the element's own resource: the whole element goes
	refAttr                  // the attribute goes (background, poster, VML src, ...)
	refSrcset                // one srcset candidate goes (see srcsetGroup)
	refCSS                   // the CSS declaration or @import rule goes
	// refDup is a later duplicate of a removed attribute: it goes with
	// the attribute (refAttr: when url is a tracker; refSrcset group:
	// when the whole srcset goes). It is not an occurrence of a URL.
	refDup
)

// ref is one remote URL occurrence in a part's HTML.
type ref struct {
	url        string
	vector     string
	kind       refKind
	elem       int32 // index into htmlScan.elems, or -1
	group      int32 // index into htmlScan.groups, or -1
	start, end int   // view range removed for refAttr, refSrcset and refCSS
	img        bool  // an image whose size and visibility were judged
	tiny       bool
	hidden     bool // hidden itself or by an ancestor (display:none, ...)
	msoHidden  bool // hidden only in Outlook (mso-hide:all)
	noSize     bool
}

// elem is an element that may be removed whole.
type elem struct {
	start, end       int // the start tag
	endStart, endEnd int // its end tag when one must go too (amp-img), else -1
	img              bool
	inComment        bool
	inHead           bool
}

// srcsetGroup ties the candidates of one srcset attribute together: when
// all of them are trackers the attribute goes (or, with no src, the
// element).
type srcsetGroup struct {
	attrStart, attrEnd int
	refStart, refEnd   int // the group's entries in htmlScan.refs
	elem               int32
	n                  int
	removeElem         bool
}

// stackEnt is an open element, kept to judge visibility inherited from
// ancestors. Visibility is computed only when an image needs it.
type stackEnt struct {
	key        uint32
	start, end int
	inh        int8 // visibility of this element and its ancestors: 0 not computed, 1 visible, 2 hidden, 3 hidden in Outlook only
	elem       int32
}

// htmlScan collects the remote references of one HTML part in a single
// tokenizer pass. It never modifies the text; edits are computed later from
// the offsets it records.
type htmlScan struct {
	view    []byte
	refs    []ref
	elems   []elem
	groups  []srcsetGroup
	stack   []stackEnt
	floor   int // stack entries below this belong to an enclosing context
	css     []cssRef
	attrs   tagAttrs
	anc     tagAttrs
	inHead  bool
	bodyEnd int // offset of the first top-level </body>, or -1
	// tokEnd is the last top-level offset where the tokenizer is in its
	// data state: after a tag that opens no raw-text element, after data
	// text, after a terminated comment. Text inserted there is markup,
	// not part of an unterminated tag, comment or <style>.
	tokEnd  int
	base    string
	dynamic bool // AMP amp-list/amp-state fetching remote data
	cond    int  // depth inside Outlook conditional comments
	depth   int  // depth of re-tokenised regions
}

func (s *htmlScan) reset(view []byte) {
	s.view = view
	s.refs = s.refs[:0]
	s.elems = s.elems[:0]
	s.groups = s.groups[:0]
	s.stack = s.stack[:0]
	s.floor = 0
	s.css = s.css[:0]
	s.inHead = false
	s.bodyEnd = -1
	s.tokEnd = 0
	s.base = ""
	s.dynamic = false
	s.cond = 0
	s.depth = 0
}

// run tokenizes view[start:end]. Offsets stay absolute because the raw
// bytes of consecutive tokens partition the input.
func (s *htmlScan) run(start, end int) {
	z := newTokenizer(s.view[start:end])
	pos := start
	var rawCtx atom.Atom
	var nameBuf [32]byte
	for {
		tt, n := z.next()
		if tt == html.ErrorToken {
			return
		}
		ts := pos
		pos += n
		te := pos
		var name []byte
		var a atom.Atom
		switch tt {
		case html.StartTagToken, html.SelfClosingTagToken:
			name = tagName(s.view[ts+1:te], &nameBuf)
			a = atom.Lookup(name)
		case html.EndTagToken:
			name = tagName(s.view[ts+2:te], &nameBuf)
			a = atom.Lookup(name)
		}
		if s.depth == 0 && dataStateAfter(tt, rawCtx, a, s.view[ts:te]) {
			s.tokEnd = te
		}
		switch tt {
		case html.TextToken:
			switch rawCtx {
			case atom.Style:
				s.styleBlock(ts, te)
			case atom.Noscript, atom.Noembed, atom.Noframes:
				// Mail clients do not run scripts, so they render what
				// the tokenizer reads as raw text here.
				s.sub(ts, te, false)
			}
			rawCtx = 0
		case html.StartTagToken, html.SelfClosingTagToken:
			s.startTag(a, name, ts, te, tt == html.StartTagToken)
			rawCtx = a
		case html.EndTagToken:
			s.endTag(a, name, ts, te)
			rawCtx = 0
		case html.CommentToken:
			s.comment(ts, te)
			rawCtx = 0
		default:
			rawCtx = 0
		}
	}
}

// dataStateAfter reports whether the tokenizer is back in its data state
// after a token. rawCtx is the element whose raw text a text token is; tag
// is a start tag's element.
func dataStateAfter(tt html.TokenType, rawCtx, tag atom.Atom, raw []byte) bool {
	switch tt {
	case html.TextToken:
		return !opensRawText(rawCtx)
	case html.StartTagToken, html.SelfClosingTagToken:
		// A raw-text element's start tag is followed by its raw text, so
		// it is not a safe point.
		return !opensRawText(tag)
	case html.EndTagToken, html.DoctypeToken:
		return true
	case html.CommentToken:
		if bytes.HasPrefix(raw, []byte("<!--")) {
			return bytes.HasSuffix(raw, []byte("-->")) && len(raw) >= 5 || bytes.HasSuffix(raw, []byte("--!>"))
		}
		return bytes.HasSuffix(raw, []byte(">"))
	}
	return false
}

func opensRawText(a atom.Atom) bool {
	switch a {
	case atom.Style, atom.Script, atom.Textarea, atom.Title, atom.Xmp, atom.Iframe, atom.Noembed, atom.Noframes, atom.Noscript, atom.Plaintext:
		return true
	}
	return false
}

// tagName lower-cases the tag name at the start of b (just after "<" or
// "</") into buf, as the tokenizer reads it. The tokenizer's TagName would
// allocate a copy per tag. Names longer than buf are cut, which only
// matters for names no rule knows.
func tagName(b []byte, buf *[32]byte) []byte {
	n := 0
	for n < len(b) && n < len(buf) {
		c := b[n]
		if c == ' ' || c == '\n' || c == '\r' || c == '\t' || c == '\f' || c == '/' || c == '>' {
			break
		}
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		buf[n] = c
		n++
	}
	return buf[:n]
}

// sub re-tokenizes a region the outer tokenizer saw as one token: an Outlook
// conditional comment or a <noscript>. Its elements see the enclosing
// elements as ancestors but cannot close them.
func (s *htmlScan) sub(start, end int, cond bool) {
	if s.depth >= 4 || end <= start {
		return
	}
	saved := s.floor
	s.floor = len(s.stack)
	s.depth++
	if cond {
		s.cond++
	}
	s.run(start, end)
	if cond {
		s.cond--
	}
	s.depth--
	s.stack = s.stack[:s.floor]
	s.floor = saved
}

func (s *htmlScan) comment(ts, te int) {
	raw := s.view[ts:te]
	if len(raw) < 8 || !bytes.HasPrefix(raw, []byte("<!--")) {
		return
	}
	cs, ce := ts+4, te
	switch {
	case bytes.HasSuffix(raw, []byte("-->")):
		ce = te - 3
	case bytes.HasSuffix(raw, []byte("--!>")):
		ce = te - 4
	}
	if ce <= cs {
		return
	}
	c := trimSpaceBytes(s.view[cs:ce])
	if !hasPrefixFoldBytes(c, "[if") {
		return // an ordinary comment: no client renders it
	}
	// Re-tokenizing costs a tokenizer; most conditional comments only open
	// or close Outlook layout tables. The region's elements cannot affect
	// anything outside it (see sub), so one that names no resource can be
	// skipped.
	if !mayFetch(c) {
		return
	}
	s.sub(cs, ce, true)
}

// mayFetch reports whether markup could hold a resource reference: an
// attribute or property that loads something, or a style element. HTML
// names and CSS functions are case-insensitive, and a style attribute may
// spell its parenthesis as a character reference (url&#40;), so the words
// are matched in any case and without what may follow them.
func mayFetch(b []byte) bool {
	// Every reference is an attribute value, so it needs an "=", or sits in
	// a style element. Most conditional comments only close table cells.
	if bytes.IndexByte(b, '=') < 0 && !containsFold(b, "<style") {
		return false
	}
	// One pass for all the words: Outlook's button comments are long and
	// full of "s", and a search per word went over each several times. A
	// table lookup passes over the bytes no word starts with.
	for i, c := range b {
		if !fetchWordStart[c] {
			continue
		}
		for _, w := range fetchWordsFrom[c] {
			if hasPrefixFoldBytes(b[i+1:], w[1:]) {
				return true
			}
		}
	}
	return false
}

// fetchWordStart is true for the bytes fetchWordsFrom lists words for:
// one byte to load per byte of the comment, not a slice header.
var fetchWordStart = func() (t [256]bool) {
	for c, ws := range fetchWordsFrom {
		t[c] = len(ws) > 0
	}
	return t
}()

// fetchWordsFrom lists mayFetch's words (lower case) by their first byte,
// in either case.
var fetchWordsFrom = func() (t [256][]string) {
	for _, w := range [...]string{"src", "url", "background", "<style", "<link", "data", "poster"} {
		c := w[0]
		t[c] = append(t[c], w)
		if c >= 'a' && c <= 'z' {
			t[c-'a'+'A'] = append(t[c-'a'+'A'], w)
		}
	}
	return t
}()

// containsFold reports whether b contains needle, ignoring ASCII case;
// needle must be lower case. The pre-filters on the hot path use it, so it
// finds candidates for the first byte with IndexByte, in both cases, and
// never searches the same stretch twice.
func containsFold(b []byte, needle string) bool {
	n := len(needle)
	if n == 0 {
		return true
	}
	lo, up := needle[0], needle[0]
	if lo >= 'a' && lo <= 'z' {
		up = lo - ('a' - 'A')
	}
	rest := needle[1:]
	last := len(b) - n // the last offset where needle can start
	nextLo, nextUp := -1, -1
	if lo == up {
		nextUp = len(b) // one search serves both
	}
	for i := 0; i <= last; {
		if nextLo < i {
			nextLo = indexByteFrom(b, lo, i)
		}
		if nextUp < i {
			nextUp = indexByteFrom(b, up, i)
		}
		j := min(nextLo, nextUp)
		if j > last {
			return false
		}
		if hasPrefixFoldBytes(b[j+1:], rest) {
			return true
		}
		i = j + 1
	}
	return false
}

// indexByteFrom is the offset of the first c in b at or after i, or len(b).
func indexByteFrom(b []byte, c byte, i int) int {
	if k := bytes.IndexByte(b[i:], c); k >= 0 {
		return i + k
	}
	return len(b)
}

const maxEndTagSearch = 256

func isVoid(a atom.Atom) bool {
	switch a {
	case atom.Area, atom.Base, atom.Br, atom.Col, atom.Embed, atom.Hr, atom.Img, atom.Input, atom.Link,
		atom.Meta, atom.Param, atom.Source, atom.Track, atom.Wbr, atom.Keygen, atom.Image:
		return true
	}
	return false
}

func keyOf(a atom.Atom, name []byte) uint32 {
	if a != 0 {
		return uint32(a)
	}
	h := uint32(2166136261) // FNV-1a, inline to avoid allocating a hash.Hash
	for _, c := range name {
		h = (h ^ uint32(c)) * 16777619
	}
	return h | 1<<31
}

func (s *htmlScan) startTag(a atom.Atom, name []byte, ts, te int, open bool) {
	tag := s.view[ts:te]
	var ext string // an unknown element pixelrelay knows: VML and AMP
	need := false
	switch a {
	case atom.Img, atom.Input, atom.Image, atom.Video, atom.Audio, atom.Source, atom.Object, atom.Embed, atom.Iframe, atom.Link, atom.Base:
		need = true
	case atom.Head:
		s.inHead = true
	case atom.Body:
		s.inHead = false
	case 0:
		switch string(name) {
		case "v:fill", "v:image", "v:imagedata", "v:background", "amp-img", "amp-anim", "amp-list", "amp-state", "amp-video":
			ext = string(name)
			need = true
		}
	}
	// A style attribute can load something only through a parenthesis,
	// which it may also write as a character reference (url&#40;).
	hasParen := bytes.IndexByte(tag, '(') >= 0 || bytes.IndexByte(tag, '&') >= 0 && containsFold(tag, "style")
	hasBg := false
	switch a {
	case atom.Body, atom.Table, atom.Td, atom.Th, atom.Tr, atom.Div:
		hasBg = containsFold(tag, "background")
	}
	elemIdx := int32(-1)
	if need || hasParen || hasBg {
		parseAttrs(s.view, ts, te, &s.attrs)
		at := &s.attrs
		switch a {
		case atom.Img:
			elemIdx = s.imgLike(ts, te, VectorImg, at.src, true)
		case atom.Input:
			if strings.EqualFold(strings.TrimSpace(attrValue(s.view, at.typ)), "image") {
				elemIdx = s.imgLike(ts, te, VectorInput, at.src, true)
			}
		case atom.Image: // SVG <image>, which the HTML parser also turns into <img>
			src := at.href
			if !src.ok {
				src = at.xlinkHref
			}
			elemIdx = s.imgLike(ts, te, VectorImg, src, true)
		case atom.Video:
			s.attrRef(at.poster, VectorVideo)
			s.attrRef(at.src, VectorVideo)
		case atom.Audio:
			s.attrRef(at.src, VectorVideo)
		case atom.Source:
			if at.srcset.ok {
				idx := s.newElem(ts, te, false)
				s.srcset(at.srcset, idx, !at.src.ok, s.imageSignals())
			}
			s.attrRef(at.src, VectorVideo)
		case atom.Object:
			s.attrRef(at.data, VectorObject)
		case atom.Embed:
			s.attrRef(at.src, VectorObject)
		case atom.Iframe:
			s.attrRef(at.src, VectorIframe)
		case atom.Link:
			if fetchingRel(attrValue(s.view, at.rel)) {
				if u := cleanURL(s.view[at.href.vs:at.href.ve], s.base); at.href.ok && u != "" {
					idx := s.newElem(ts, te, false)
					s.refs = append(s.refs, ref{url: u, vector: VectorLink, kind: refElem, elem: idx, group: -1})
				}
			}
		case atom.Base:
			if s.base == "" && at.href.ok {
				if u := absURL(attrValue(s.view, at.href), ""); u != "" {
					s.base = u
				}
			}
		case 0:
			switch ext {
			case "v:fill", "v:image", "v:imagedata", "v:background":
				s.attrRef(at.src, VectorVML)
			case "amp-img", "amp-anim":
				elemIdx = s.imgLike(ts, te, VectorAmpImg, at.src, false)
			case "amp-video":
				s.attrRef(at.poster, VectorVideo)
				s.attrRef(at.src, VectorVideo)
			case "amp-list", "amp-state":
				if at.src.ok && cleanURL(s.view[at.src.vs:at.src.ve], s.base) != "" {
					s.dynamic = true
				}
			}
		}
		if hasBg {
			s.attrRef(at.background, VectorBackground)
		}
		if hasParen && at.style.ok {
			s.cssRefs(at.style.vs, at.style.ve, true)
		}
	}
	if open && !isVoid(a) {
		s.stack = append(s.stack, stackEnt{key: keyOf(a, name), start: ts, end: te, elem: elemIdx})
	}
}

func fetchingRel(rel string) bool {
	for _, r := range strings.Fields(lowerASCII(rel)) {
		switch r {
		case "stylesheet", "prefetch", "preload", "prerender", "icon", "apple-touch-icon", "modulepreload":
			return true
		}
	}
	return false
}

func (s *htmlScan) endTag(a atom.Atom, name []byte, ts, te int) {
	key := keyOf(a, name)
	// A stray end tag is ignored; looking only so far down keeps a flood of
	// them on a deep stack linear.
	for i := len(s.stack) - 1; i >= s.floor && i >= len(s.stack)-maxEndTagSearch; i-- {
		if s.stack[i].key == key {
			if e := s.stack[i].elem; e >= 0 && s.elems[e].endStart < 0 && !s.elems[e].img {
				s.elems[e].endStart, s.elems[e].endEnd = ts, te
			}
			s.stack = s.stack[:i]
			break
		}
	}
	switch a {
	case atom.Head:
		s.inHead = false
	case atom.Body:
		if s.bodyEnd < 0 && s.depth == 0 {
			s.bodyEnd = ts
		}
	}
}

func (s *htmlScan) newElem(ts, te int, img bool) int32 {
	s.elems = append(s.elems, elem{start: ts, end: te, endStart: -1, endEnd: -1, img: img, inComment: s.cond > 0, inHead: s.inHead})
	return int32(len(s.elems) - 1)
}

// imgLike records an image element: its src removes the element, its
// srcset candidates are judged one by one. beaconable marks elements that
// may be turned into the delivery beacon (not amp-img, which needs AMP
// attributes the beacon tag lacks).
func (s *htmlScan) imgLike(ts, te int, vector string, src attrSpan, beaconable bool) int32 {
	at := &s.attrs
	srcURL := ""
	if src.ok {
		srcURL = cleanURL(s.view[src.vs:src.ve], s.base)
	}
	if srcURL == "" && !at.srcset.ok {
		return -1
	}
	idx := s.newElem(ts, te, beaconable)
	sig := s.imageSignals()
	if srcURL != "" {
		r := sig
		r.url, r.vector, r.kind, r.elem, r.group = srcURL, vector, refElem, idx, -1
		s.refs = append(s.refs, r)
	}
	if at.srcset.ok {
		empty := !src.ok || len(trimSpaceBytes(s.view[src.vs:src.ve])) == 0
		s.srcset(at.srcset, idx, empty, sig)
	}
	return idx
}

// imageSignals judges the size and visibility of the image whose attributes
// are in s.attrs.
func (s *htmlScan) imageSignals() ref {
	at := &s.attrs
	var b boxStyle
	if at.style.ok {
		parseBoxStyle(s.view[at.style.vs:at.style.ve], &b)
	}
	w, hasW := attrLength(s.view, at.width)
	h, hasH := attrLength(s.view, at.height)
	if b.hasW { // CSS beats presentational attributes
		w, hasW = b.w, true
	}
	if b.hasH {
		h, hasH = b.h, true
	}
	if b.hasMaxW && (!hasW || b.maxW < w) {
		w, hasW = b.maxW, true
	}
	if b.hasMaxH && (!hasH || b.maxH < h) {
		h, hasH = b.maxH, true
	}
	var r ref
	r.img = true
	r.tiny = hasW && w == 0 || hasH && h == 0 || hasW && hasH && (w <= 1 && h <= 1 || w*h <= 3)
	r.noSize = !hasW && !hasH
	r.hidden = b.hidden || at.hidden.ok
	r.msoHidden = b.msoHide
	switch s.ancestorVisibility() {
	case 2:
		r.hidden = true
	case 3:
		r.msoHidden = true
	}
	return r
}

// ancestorVisibility returns 2 if an open ancestor is hidden, 3 if one is
// hidden in Outlook only, else 1. Each entry caches the answer for itself
// and its ancestors, so deep nesting costs each element one evaluation.
func (s *htmlScan) ancestorVisibility() int8 {
	i := len(s.stack) - 1
	for i >= 0 && s.stack[i].inh == 0 {
		i--
	}
	vis := int8(1)
	if i >= 0 {
		vis = s.stack[i].inh
	}
	for i++; i < len(s.stack); i++ {
		e := &s.stack[i]
		if vis != 2 {
			parseAttrs(s.view, e.start, e.end, &s.anc)
			var b boxStyle
			if s.anc.style.ok {
				parseBoxStyle(s.view[s.anc.style.vs:s.anc.style.ve], &b)
			}
			switch {
			case b.hidden || s.anc.hidden.ok:
				vis = 2
			case b.msoHide:
				vis = 3
			}
		}
		e.inh = vis
	}
	return vis
}

// srcset records each candidate URL of a srcset attribute; sig is the
// element's imageSignals.
func (s *htmlScan) srcset(a attrSpan, elemIdx int32, removeElem bool, sig ref) {
	g := int32(len(s.groups))
	s.groups = append(s.groups, srcsetGroup{attrStart: a.start, attrEnd: a.end, refStart: len(s.refs), elem: elemIdx, removeElem: removeElem})
	v := s.view
	type cand struct{ us, ue, end int }
	var cands [16]cand
	list := cands[:0]
	for i := a.vs; i < a.ve; {
		for i < a.ve && (isSpace(v[i]) || v[i] == ',') {
			i++
		}
		if i >= a.ve {
			break
		}
		us := i
		for i < a.ve && !isSpace(v[i]) {
			i++
		}
		ue := i
		for ue > us && v[ue-1] == ',' {
			ue--
		}
		if ue == i { // descriptors follow, up to the next comma outside parentheses
			depth := 0
			for i < a.ve && (v[i] != ',' || depth > 0) {
				switch v[i] {
				case '(':
					depth++
				case ')':
					if depth > 0 {
						depth--
					}
				}
				i++
			}
		}
		list = append(list, cand{us, ue, i})
	}
	for k, c := range list {
		u := cleanURL(v[c.us:c.ue], s.base)
		if u == "" {
			s.groups[g].n++ // counts as a kept candidate: never all trackers
			continue
		}
		// Removing a candidate takes it and the separator after it; the
		// last one takes the separator before it instead.
		start, end := c.us, a.ve
		if k+1 < len(list) {
			end = list[k+1].us
		} else if k > 0 {
			start = list[k-1].end
			end = c.end
		}
		r := sig
		r.url, r.vector, r.kind, r.elem, r.group, r.start, r.end = u, VectorSrcset, refSrcset, elemIdx, g, start, end
		s.refs = append(s.refs, r)
		s.groups[g].n++
	}
	s.dupRefs(remSrcset, "", g)
	s.groups[g].refEnd = len(s.refs)
}

// attrRef records a URL-valued attribute whose removal takes just the
// attribute.
func (s *htmlScan) attrRef(a attrSpan, vector string) {
	if !a.ok {
		return
	}
	u := cleanURL(s.view[a.vs:a.ve], s.base)
	if u == "" {
		return
	}
	s.refs = append(s.refs, ref{url: u, vector: vector, kind: refAttr, elem: -1, group: -1, start: a.start, end: a.end})
	s.dupRefs(a.name, u, -1)
}

// dupRefs records the later duplicates of a removable attribute of the tag
// in s.attrs, so that they go when it goes.
func (s *htmlScan) dupRefs(name removable, u string, group int32) {
	for _, d := range s.attrs.dups {
		if d.name == name {
			s.refs = append(s.refs, ref{url: u, kind: refDup, elem: -1, group: group, start: d.start, end: d.end})
		}
	}
}

func (s *htmlScan) cssRefs(vs, ve int, attr bool) {
	s.css = scanCSS(s.view, vs, ve, attr, s.css[:0])
	for _, c := range s.css {
		u := cleanCSSURL(c.url, s.base)
		if u == "" {
			continue
		}
		s.refs = append(s.refs, ref{url: u, vector: VectorCSS, kind: refCSS, elem: -1, group: -1, start: c.start, end: c.end})
	}
}

func (s *htmlScan) styleBlock(ts, te int) { s.cssRefs(ts, te, false) }

// cleanCSSURL is cleanURL for CSS, where character references mean nothing
// but backslash escapes do.
func cleanCSSURL(raw []byte, base string) string {
	raw = trimSpaceBytes(raw)
	if bytes.IndexByte(raw, '\\') >= 0 {
		raw = unescapeCSS(raw)
	}
	if len(raw) == 0 {
		return ""
	}
	return absURL(string(raw), base)
}

// unescapeCSS undoes CSS escapes as the CSS tokenizer does: "\\" followed
// by up to six hex digits (and one optional whitespace) is that code point,
// by a newline is nothing, by anything else is that character.
func unescapeCSS(raw []byte) []byte {
	out := make([]byte, 0, len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		if c != '\\' || i+1 == len(raw) {
			out = append(out, c)
			continue
		}
		i++
		switch c = raw[i]; {
		case c == '\n' || c == '\f':
		case c == '\r':
			if i+1 < len(raw) && raw[i+1] == '\n' {
				i++
			}
		case isHex(c):
			var r rune
			k := i
			for ; k < len(raw) && k-i < 6 && isHex(raw[k]); k++ {
				r = r<<4 | rune(unhex(raw[k]))
			}
			if k < len(raw) && isSpace(raw[k]) {
				if raw[k] == '\r' && k+1 < len(raw) && raw[k+1] == '\n' {
					k++
				}
				k++
			}
			if r == 0 || r > unicode.MaxRune || r >= 0xD800 && r <= 0xDFFF {
				r = utf8.RuneError
			}
			out = utf8.AppendRune(out, r)
			i = k - 1
		default:
			out = append(out, c)
		}
	}
	return out
}
