package rewrite

import (
	"bufio"
	"bytes"
	"fmt"
	"mime"
	"strconv"
	"strings"
)

// Limits that keep a hostile message from exhausting memory or stack.
const (
	maxHeaderBytes = 1 << 20 // a header section larger than this is copied, not parsed
	maxDepth       = 40      // multipart and message/rfc822 nesting
)

// lineReader yields the input line by line, terminators included. A line
// longer than the read buffer comes in pieces; only a piece that starts a
// line can be a boundary. Slices are valid until the next call.
//
// A message held in memory (InMemory) is read in place: src is the whole
// input, pos the read offset, and lines are slices of src, cut into the
// same pieces as bufio's 64 KiB buffer cuts them, so that both modes make
// the same decisions on the same bytes.
type lineReader struct {
	br        *bufio.Reader
	held      []byte
	hasHeld   bool
	heldStart bool
	midLine   bool
	eof       bool

	inPlace bool
	src     []byte
	pos     int
}

// readBuffer is the size of the streaming mode's bufio.Reader, and so of
// a piece of a long line in either mode.
const readBuffer = 64 << 10

func (l *lineReader) reset() {
	l.hasHeld, l.heldStart, l.midLine, l.eof = false, false, false, false
	l.held = l.held[:0]
	l.inPlace, l.src, l.pos = false, nil, 0
}

func (l *lineReader) next() (line []byte, start, ok bool) {
	if l.inPlace {
		if l.pos >= len(l.src) {
			return nil, false, false
		}
		start = !l.midLine
		line = l.pieceAt(l.pos)
		l.advance(line)
		return line, start, true
	}
	if l.hasHeld {
		l.hasHeld = false
		return l.held, l.heldStart, true
	}
	if l.eof {
		return nil, false, false
	}
	b, err := l.br.ReadSlice('\n')
	start = !l.midLine
	switch err {
	case nil:
		l.midLine = false
	case bufio.ErrBufferFull:
		l.midLine = true
	default: // io.EOF, or a read error (recorded by errReader)
		l.eof = true
		l.midLine = false
		if len(b) == 0 {
			return nil, false, false
		}
	}
	return b, start, true
}

// pieceAt is the piece of src that bufio.Reader.ReadSlice would return at
// p: up to and including the next LF, at most readBuffer bytes.
func (l *lineReader) pieceAt(p int) []byte {
	rest := l.src[p:]
	if len(rest) > readBuffer {
		rest = rest[:readBuffer]
	}
	if i := bytes.IndexByte(rest, '\n'); i >= 0 {
		return rest[:i+1]
	}
	return rest
}

// advance moves past piece, which starts at pos.
func (l *lineReader) advance(piece []byte) {
	l.pos += len(piece)
	l.midLine = piece[len(piece)-1] != '\n' && l.pos < len(l.src)
}

// unread pushes one line back; the next call to next returns it.
func (l *lineReader) unread(line []byte, start bool) {
	if l.inPlace {
		l.pos -= len(line)
		l.midLine = !start
		return
	}
	l.held = append(l.held[:0], line...)
	l.hasHeld, l.heldStart = true, start
}

// walker copies a message through, part by part, doing its own boundary
// scan so that every byte it does not rewrite is copied as it was: go-
// message's reader drops preambles and epilogues and its writer re-encodes.
type walker struct {
	m      *msgState
	out    *bufio.Writer
	lr     lineReader
	bounds [][]byte // "--" + boundary of each open multipart, outermost first
	term   []byte   // the boundary line that ended the last entity
	werr   error
	depth  int
}

func (w *walker) reset() {
	w.lr.reset()
	w.bounds = w.bounds[:0]
	w.term = w.term[:0]
	w.werr = nil
	w.depth = 0
}

func (w *walker) write(b []byte) {
	if w.werr == nil && len(b) > 0 {
		_, w.werr = w.out.Write(b)
	}
}

// partCtx is what a part knows about where it sits.
type partCtx struct {
	parentAlt bool // a child of multipart/alternative
	index     int  // 1-based position among its siblings
	protected bool // under multipart/signed or multipart/encrypted
	digest    bool // a child of multipart/digest (default type message/rfc822)
}

// match says which open multipart a boundary line belongs to.
type match struct {
	depth int // index into walker.bounds, -1 for none
	close bool
}

var noMatch = match{depth: -1}

func (w *walker) match(line []byte) match {
	if len(line) < 3 || line[0] != '-' || line[1] != '-' {
		return noMatch
	}
	for i := len(w.bounds) - 1; i >= 0; i-- {
		b := w.bounds[i]
		if !bytes.HasPrefix(line, b) {
			continue
		}
		rest := line[len(b):]
		close := len(rest) >= 2 && rest[0] == '-' && rest[1] == '-'
		if close {
			rest = rest[2:]
		}
		if len(trimSpaceBytes(rest)) == 0 {
			return match{depth: i, close: close}
		}
	}
	return noMatch
}

func (w *walker) saveTerm(line []byte) { w.term = append(w.term[:0], line...) }

func joinPath(path string, i int) string {
	if path == "" {
		return strconv.Itoa(i)
	}
	return path + "." + strconv.Itoa(i)
}

// entity handles one entity (header and body) starting at the current
// input position. pending is the delimiter line that introduced it; it is
// written with the header unless the part is dropped. root marks the top of
// a message (the whole input, or an encapsulated message/rfc822), whose
// single-part body is numbered path.1 as in IMAP. entity returns the
// boundary match that ended it (the line is in w.term), or noMatch at EOF.
func (w *walker) entity(path string, root bool, pending []byte, ctx partCtx) match {
	m := w.m
	m.pend = append(m.pend[:0], pending...)
	hdr := m.hdr[:0]
	first := true
	for {
		line, start, ok := w.lr.next()
		if !ok {
			break
		}
		if start && w.match(line).depth >= 0 {
			w.lr.unread(line, start)
			break
		}
		if first && root && path == "" && bytes.HasPrefix(line, []byte("From ")) {
			hdr = append(hdr, line...) // an mbox postmark line
			first = false
			continue
		}
		first = false
		if start && (bytes.Equal(line, []byte("\r\n")) || bytes.Equal(line, []byte("\n"))) {
			hdr = append(hdr, line...)
			break
		}
		if start && line[0] != ' ' && line[0] != '\t' && !looksLikeField(line) {
			w.lr.unread(line, start) // the body starts without a blank line
			break
		}
		hdr = append(hdr, line...)
		if len(hdr) > maxHeaderBytes {
			m.hdr = hdr
			m.problem(path, "header section larger than 1 MiB; part copied without inspection")
			w.write(m.pend)
			w.write(hdr)
			return w.copyBody()
		}
	}
	m.hdr = hdr
	h := parseHeader(hdr)
	if root && path == "" {
		m.report.MessageID = strings.TrimSpace(h.msgid)
	}
	mt, params := parseContentType(h.ctype)
	if mt == "" {
		mt = "text/plain"
		if ctx.digest {
			mt = "message/rfc822"
		}
	}
	attach := isAttachment(h.disp)
	enc := parseCTE(h.cte)
	leaf := path
	if root {
		leaf = joinPath(path, 1)
	}
	switch {
	case strings.HasPrefix(mt, "multipart/"):
		b := params["boundary"]
		if b == "" || w.depth >= maxDepth {
			if b == "" {
				m.problem(leaf, mt+" without a boundary; copied as it is")
			} else {
				m.problem(leaf, "nested too deeply; copied without inspection")
			}
			w.write(m.pend)
			w.write(hdr)
			return w.copyBody()
		}
		w.write(m.pend)
		w.write(hdr)
		child := partCtx{
			parentAlt: mt == "multipart/alternative",
			protected: ctx.protected || mt == "multipart/signed" || mt == "multipart/encrypted",
			digest:    mt == "multipart/digest",
		}
		w.depth++
		r := w.multipart(b, path, child)
		w.depth--
		return r
	case (mt == "message/rfc822" || mt == "message/global") && !attach && enc == cteIdentity && w.depth < maxDepth:
		w.write(m.pend)
		w.write(hdr)
		w.depth++
		r := w.entity(leaf, true, nil, partCtx{protected: ctx.protected})
		w.depth--
		return r
	case (mt == "text/html" || mt == "application/xhtml+xml" || mt == "text/watch-html") && !attach:
		return w.htmlLeaf(leaf, enc, params["charset"], false, ctx)
	case mt == "text/x-amp-html" && !attach:
		return w.htmlLeaf(leaf, enc, params["charset"], true, ctx)
	}
	w.write(m.pend)
	w.write(hdr)
	return w.copyBody()
}

// bodyLine reads the next line of a body, and says which open multipart
// it is a boundary line of (noMatch for content). ok is false at EOF.
func (w *walker) bodyLine() (line []byte, mm match, ok bool) {
	line, start, ok := w.lr.next()
	if !ok || !start {
		return line, noMatch, ok
	}
	return line, w.match(line), true
}

// bodyInPlace, for input read in place, moves past the content up to the
// next boundary line of an open multipart and returns it as one slice of
// the input, with the match that ended it (the line is in w.term), or
// noMatch at EOF. Only a line that starts with "--" can be a boundary, so
// it jumps from one such line to the next instead of going line by line.
func (w *walker) bodyInPlace() ([]byte, match) {
	l := &w.lr
	from, p := l.pos, l.pos
	if l.midLine { // inside a long line: its next piece is no boundary
		if i := bytes.IndexByte(l.src[p:], '\n'); i >= 0 {
			p += i + 1
		} else {
			p = len(l.src)
		}
	}
	for len(w.bounds) > 0 && p < len(l.src) {
		if l.src[p] == '-' && p+1 < len(l.src) && l.src[p+1] == '-' {
			line := l.pieceAt(p)
			if mm := w.match(line); mm.depth >= 0 {
				l.pos = p
				l.advance(line)
				w.saveTerm(line)
				return l.src[from:p], mm
			}
		}
		i := bytes.Index(l.src[p:], []byte("\n--"))
		if i < 0 {
			break
		}
		p += i + 1
	}
	l.pos, l.midLine = len(l.src), false
	return l.src[from:], noMatch
}

// copyBody copies lines up to the next boundary of an open multipart.
func (w *walker) copyBody() match {
	if w.lr.inPlace {
		body, mm := w.bodyInPlace()
		w.write(body)
		return mm
	}
	for {
		line, mm, ok := w.bodyLine()
		if !ok {
			return noMatch
		}
		if mm.depth >= 0 {
			w.saveTerm(line)
			return mm
		}
		w.write(line)
	}
}

// multipart copies the preamble, each part, the closing delimiter and the
// epilogue. A missing final boundary ends the multipart at an enclosing
// boundary or at EOF, as mail clients do.
func (w *walker) multipart(boundary, path string, ctx partCtx) match {
	w.bounds = append(w.bounds, append([]byte("--"), boundary...))
	my := len(w.bounds) - 1
	defer func() { w.bounds = w.bounds[:my] }()
	where := path
	for {
		line, mm, ok := w.bodyLine()
		if !ok {
			w.m.problem(where, "multipart has no boundary line; copied as it is")
			return noMatch
		}
		if mm.depth < 0 {
			w.write(line) // the preamble
			continue
		}
		if mm.depth != my {
			w.saveTerm(line)
			return mm
		}
		if mm.close {
			w.write(line)
			return w.epilogue(my)
		}
		w.saveTerm(line)
		break
	}
	for i := 1; ; i++ {
		c := ctx
		c.index = i
		mm := w.entity(joinPath(path, i), false, w.term, c)
		if mm.depth != my {
			w.m.problem(where, "multipart has no final boundary")
			return mm
		}
		if mm.close {
			w.write(w.term)
			return w.epilogue(my)
		}
	}
}

func (w *walker) epilogue(my int) match {
	for {
		line, mm, ok := w.bodyLine()
		if !ok {
			return noMatch
		}
		if mm.depth >= 0 && mm.depth < my { // an enclosing multipart's boundary
			w.saveTerm(line)
			return mm
		}
		w.write(line)
	}
}

// htmlLeaf buffers an HTML part (up to the size limit), rewrites it and
// writes it out, or drops it (an AMP alternative for a non-consenting
// recipient).
func (w *walker) htmlLeaf(path string, enc cte, charset string, amp bool, ctx partCtx) match {
	m := w.m
	if w.lr.inPlace {
		// The part is a slice of the input: no copy to scan it.
		body, end := w.bodyInPlace()
		if int64(len(body)) > m.e.maxHTML {
			m.problem(path, fmt.Sprintf("HTML part larger than %d bytes copied without inspection; trackers in it were not removed", m.e.maxHTML))
			w.write(m.pend)
			w.write(m.hdr)
			w.write(body)
			return end
		}
		return w.emitHTML(path, enc, charset, amp, ctx, body, end)
	}
	body := m.body[:0]
	end := noMatch
	for {
		line, mm, ok := w.bodyLine()
		if !ok {
			break
		}
		if mm.depth >= 0 {
			w.saveTerm(line)
			end = mm
			break
		}
		body = append(body, line...)
		if int64(len(body)) > m.e.maxHTML {
			m.body = body
			m.problem(path, fmt.Sprintf("HTML part larger than %d bytes copied without inspection; trackers in it were not removed", m.e.maxHTML))
			w.write(m.pend)
			w.write(m.hdr)
			w.write(body)
			return w.copyBody()
		}
	}
	m.body = body
	return w.emitHTML(path, enc, charset, amp, ctx, body, end)
}

// emitHTML rewrites a buffered HTML part and writes it, with the part's
// delimiter line and header, or drops it.
func (w *walker) emitHTML(path string, enc cte, charset string, amp bool, ctx partCtx, body []byte, end match) match {
	m := w.m
	out, drop := m.processHTML(path, enc, charset, amp, ctx, body)
	if drop {
		m.changed = true
		m.report.DroppedParts = append(m.report.DroppedParts, path)
		return end
	}
	w.write(m.pend)
	w.write(m.hdr)
	if out == nil {
		w.write(body)
		return end
	}
	if sep := headerGap(m.hdr, out.firstLine(body)); sep != nil {
		w.write(sep)
	}
	for _, r := range out.runs {
		w.write(out.bytes(body, r))
	}
	return end
}

// headerGap returns the blank line to write between hdr and a changed
// body, whose first line is first, when the body began without one
// (malformed, but real mail does it) and the edits made its first line
// readable as a header field or a continuation line: a mail client would
// then take it for the header, and the body it shows would start later
// than the one that was scanned. Otherwise nil, and the bytes stay as
// they were.
func headerGap(hdr, first []byte) []byte {
	if bytes.HasSuffix(hdr, []byte("\n\n")) || bytes.HasSuffix(hdr, []byte("\n\r\n")) {
		return nil
	}
	// Lenient parsers (go-message among them) take any line with a colon
	// for a field, so any colon counts, not only a well-formed name.
	if len(first) == 0 || (first[0] != ' ' && first[0] != '\t' && bytes.IndexByte(first, ':') < 0) {
		return nil
	}
	if bytes.HasSuffix(first, []byte("\r\n")) || len(hdr) > 1 && bytes.HasSuffix(hdr, []byte("\r\n")) {
		return []byte("\r\n")
	}
	return []byte("\n")
}

// partHeader holds the fields the walker needs from a header section.
type partHeader struct {
	ctype, cte, disp, msgid string
}

func parseHeader(hdr []byte) partHeader {
	var h partHeader
	var name string
	var val []byte
	flush := func() {
		if name == "" {
			return
		}
		v := strings.TrimSpace(string(val))
		switch {
		case strings.EqualFold(name, "content-type") && h.ctype == "":
			h.ctype = v
		case strings.EqualFold(name, "content-transfer-encoding") && h.cte == "":
			h.cte = v
		case strings.EqualFold(name, "content-disposition") && h.disp == "":
			h.disp = v
		case strings.EqualFold(name, "message-id") && h.msgid == "":
			h.msgid = v
		}
		name = ""
	}
	for len(hdr) > 0 {
		nl := bytes.IndexByte(hdr, '\n')
		line := hdr
		if nl >= 0 {
			line, hdr = hdr[:nl+1], hdr[nl+1:]
		} else {
			hdr = nil
		}
		body := bytes.TrimRight(line, "\r\n")
		if len(body) == 0 {
			continue
		}
		if body[0] == ' ' || body[0] == '\t' {
			if name != "" {
				val = append(val, body...)
			}
			continue
		}
		flush()
		c := bytes.IndexByte(body, ':')
		if c <= 0 {
			continue
		}
		n := strings.TrimSpace(string(body[:c]))
		switch {
		case strings.EqualFold(n, "content-type"), strings.EqualFold(n, "content-transfer-encoding"),
			strings.EqualFold(n, "content-disposition"), strings.EqualFold(n, "message-id"):
			name = n
			val = append(val[:0], body[c+1:]...)
		}
	}
	flush()
	return h
}

func looksLikeField(line []byte) bool {
	i := 0
	for i < len(line) && line[i] > ' ' && line[i] < 127 && line[i] != ':' {
		i++
	}
	if i == 0 {
		return false
	}
	for i < len(line) && (line[i] == ' ' || line[i] == '\t') {
		i++
	}
	return i < len(line) && line[i] == ':'
}

// parseContentType is mime.ParseMediaType with a lenient fallback for the
// broken parameters found in real mail.
func parseContentType(v string) (string, map[string]string) {
	if v == "" {
		return "", nil
	}
	mt, params, err := mime.ParseMediaType(v)
	if err == nil {
		return lowerASCII(mt), params
	}
	parts := strings.Split(v, ";")
	mt = lowerASCII(strings.TrimSpace(parts[0]))
	if i := strings.IndexAny(mt, " \t"); i >= 0 {
		mt = mt[:i]
	}
	params = map[string]string{}
	for _, p := range parts[1:] {
		k, val, ok := strings.Cut(p, "=")
		if !ok {
			continue
		}
		k = lowerASCII(strings.TrimSpace(k))
		val = strings.TrimSpace(val)
		if len(val) >= 2 && (val[0] == '"' && val[len(val)-1] == '"' || val[0] == '\'' && val[len(val)-1] == '\'') {
			val = val[1 : len(val)-1]
		} else {
			val = strings.Trim(val, "\"")
		}
		if _, dup := params[k]; !dup {
			params[k] = val
		}
	}
	return mt, params
}

func isAttachment(disp string) bool {
	d, _, _ := strings.Cut(disp, ";")
	return strings.EqualFold(strings.TrimSpace(d), "attachment")
}
