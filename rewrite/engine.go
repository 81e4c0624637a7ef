package rewrite

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"sync"
)

// DefaultMaxHTMLBytes is the largest HTML part (encoded size) that is
// rewritten when Options.MaxHTMLBytes is 0. Real newsletters are far below
// 1 MiB (Gmail clips at 102 KB); parts holding inline data: images can
// reach a few MiB. A rewrite holds about three copies of the part at once.
const DefaultMaxHTMLBytes = 16 << 20

// Options configures an Engine.
type Options struct {
	// Rules are the tracker rules; nil means DefaultRules. Rules from
	// ParseRules are layered over the defaults unless the file says
	// "defaults off".
	Rules *Rules
	// OwnURLPrefixes are pixelrelay's own beacon base URLs: resources
	// under them are never trackers, so a second pass keeps a beacon.
	OwnURLPrefixes []string
	// MaxHTMLBytes bounds the encoded size of an HTML part that is
	// buffered and rewritten; larger parts pass through unchanged, with a
	// Problem. 0 means DefaultMaxHTMLBytes.
	MaxHTMLBytes int64
}

// Engine rewrites messages. It is immutable after New and safe for
// concurrent use by any number of goroutines; per-call buffers come from a
// pool.
type Engine struct {
	user    *Rules // consulted first; nil when there is no user file
	base    *Rules // the defaults; nil when the user file says "defaults off"
	own     []string
	maxHTML int64
	version string
	pool    sync.Pool
}

// New validates opts and returns an Engine. Every problem is reported at
// once.
func New(opts Options) (*Engine, error) {
	var errs []error
	e := &Engine{maxHTML: opts.MaxHTMLBytes}
	if e.maxHTML < 0 {
		errs = append(errs, fmt.Errorf("MaxHTMLBytes %d is negative; use 0 for the default (%d)", opts.MaxHTMLBytes, DefaultMaxHTMLBytes))
	}
	if e.maxHTML == 0 {
		e.maxHTML = DefaultMaxHTMLBytes
	}
	for _, p := range opts.OwnURLPrefixes {
		if !hasPrefixFold(p, "https://") && !hasPrefixFold(p, "http://") {
			errs = append(errs, fmt.Errorf("own URL prefix %q is not an absolute http(s) URL", p))
			continue
		}
		e.own = append(e.own, lowerASCII(p))
	}
	def := DefaultRules()
	switch r := opts.Rules; {
	case r == nil || r == def:
		e.base = def
		e.version = def.version
	case r.builtin:
		e.base = r
		e.version = r.version
	default:
		e.user = r
		id := r.version
		if id == "" {
			id = "sha256:" + r.digest
		}
		if r.layered {
			e.base = def
			e.version = def.version + "+" + r.name + "@" + id
		} else {
			e.version = r.name + "@" + id
		}
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	e.pool.New = func() any { return newMsgState(e) }
	return e, nil
}

// RulesVersion identifies the rules in force, for the audit log: the
// default set's version, plus "+NAME@VERSION" (or "@sha256:…") for a user
// file layered over it.
func (e *Engine) RulesVersion() string { return e.version }

// Rewrite copies the message in src to dst, applying d to every tracker it
// finds, and reports them. With d.Action Keep the output is byte-identical
// to the input. Malformed content never fails: whatever cannot be read
// passes through unchanged and is listed in Report.Problems. The error is
// only for failures reading src or writing dst.
func (e *Engine) Rewrite(dst io.Writer, src io.Reader, d Decision) (Report, error) {
	m := e.pool.Get().(*msgState)
	defer e.pool.Put(m)
	m.begin(dst, src, d)
	m.w.entity("", true, nil, partCtx{})
	if err := m.out.Flush(); err != nil && m.w.werr == nil {
		m.w.werr = err
	}
	rep := m.report
	rep.Changed = m.changed
	err := m.err()
	m.end()
	return rep, err
}

// own reports a URL under one of pixelrelay's own prefixes.
func (e *Engine) isOwn(u string) bool {
	for _, p := range e.own {
		if hasPrefixFold(u, p) {
			return true
		}
	}
	return false
}

const maxMatchLen = 4096

// urlAgg gathers what one part says about one URL across its occurrences.
type urlAgg struct {
	url          string
	vector       string
	count        int
	tiny         bool
	hiddenStrong bool
	hiddenWeak   bool
}

// verdict is the message-wide decision about one URL.
type verdict struct {
	tracker bool
	finding int // index into Report.Trackers when tracker
}

// classify decides whether a URL is a tracker. The decision is made once
// per URL per message (see msgState.decided), so that removing one
// occurrence can never change the verdict on another.
func (e *Engine) classify(a *urlAgg, rn *recipientNeedles) (bool, Finding) {
	host, target := splitURL(a.url)
	if len(target) > maxMatchLen {
		// Real tracker URLs are far shorter; a bound keeps glob matching
		// with several '*' cheap on hostile input.
		target = target[:maxMatchLen]
	}
	var userHit, userAllow, defHit, defAllow bool
	var userVendor, defVendor string
	if e.user != nil {
		userHit, userAllow, userVendor = e.user.match(host, target)
	}
	if !userHit && e.base != nil {
		defHit, defAllow, defVendor = e.base.match(host, target)
	}
	recip := rn.find(a.url)
	allow := userHit && userAllow || defHit && defAllow
	vendorHit := defHit && !defAllow
	userRule := userHit && !userAllow

	layout := a.count >= repeatLimit
	tiny := a.tiny && !layout
	hiddenStrong := a.hiddenStrong && !layout
	hiddenWeak := (a.hiddenWeak || a.hiddenStrong) && !layout
	op := !layout && openPath(host, target)
	opq := !layout && opaqueToken(target)

	tracker := vendorHit || recip || userRule || tiny || hiddenStrong || op && (opq || hiddenWeak)
	if allow && !recip {
		tracker = false
	}
	if !tracker {
		return false, Finding{}
	}
	f := Finding{URL: a.url, Host: host, Vector: a.vector, Reasons: make([]string, 0, 4)}
	if vendorHit {
		f.Reasons = append(f.Reasons, ReasonVendor)
		f.Vendor = defVendor
	}
	if recip {
		f.Reasons = append(f.Reasons, ReasonRecipientID)
	}
	if tiny {
		f.Reasons = append(f.Reasons, ReasonTiny)
	}
	if hiddenWeak {
		f.Reasons = append(f.Reasons, ReasonHidden)
	}
	if op {
		f.Reasons = append(f.Reasons, ReasonOpenPath)
	}
	if opq {
		f.Reasons = append(f.Reasons, ReasonOpaqueToken)
	}
	if userRule {
		f.Reasons = append(f.Reasons, ReasonUserRule)
		if userVendor != "" {
			f.Vendor = userVendor
		}
	}
	return true, f
}

// msgState is the per-call state of one Rewrite, pooled with its buffers.
type msgState struct {
	e       *Engine
	d       Decision
	rn      *recipientNeedles
	rnDone  bool
	decided map[string]verdict
	report  Report
	changed bool
	beacon  bool // the beacon has been placed
	probs   map[string]bool

	br  *bufio.Reader
	out *bufio.Writer
	src errReader
	w   walker

	hdr, pend, body, dec, view, scratch []byte
	edited                              splice
	qpLines                             []qpLine
	scan                                htmlScan
	aggIdx                              map[string]int
	aggs                                []urlAgg
	edits                               []edit
	removed                             []bool
	groupHits                           []int
}

// InMemory is an io.Reader over a message held in memory. Given to
// Engine.Rewrite as its source, the message is read in place: its lines
// and HTML parts are slices of it rather than copies through a read
// buffer, and a part's content is scanned for the next boundary in one
// search. The output is the same as from any other reader of the same
// bytes. Rewrite reads it to the end; it must not change while Rewrite
// runs.
type InMemory struct {
	b   []byte
	off int
}

// NewInMemory returns an InMemory reading b.
func NewInMemory(b []byte) *InMemory { return &InMemory{b: b} }

func (r *InMemory) Read(p []byte) (int, error) {
	if r.off >= len(r.b) {
		return 0, io.EOF
	}
	n := copy(p, r.b[r.off:])
	r.off += n
	return n, nil
}

// WriteTo lets io.Copy write the rest in one call.
func (r *InMemory) WriteTo(w io.Writer) (int64, error) {
	if r.off >= len(r.b) {
		return 0, nil
	}
	n, err := w.Write(r.b[r.off:])
	r.off += n
	return int64(n), err
}

// errReader remembers the first read error that is not EOF, so that a
// truncated input is reported although the walker treats it as the end.
type errReader struct {
	r   io.Reader
	err error
}

func (r *errReader) Read(p []byte) (int, error) {
	n, err := r.r.Read(p)
	if err != nil && err != io.EOF && r.err == nil {
		r.err = err
	}
	return n, err
}

func newMsgState(e *Engine) *msgState {
	m := &msgState{e: e, decided: map[string]verdict{}, probs: map[string]bool{}, aggIdx: map[string]int{}}
	m.br = bufio.NewReaderSize(nil, 64<<10)
	m.out = bufio.NewWriterSize(nil, 32<<10)
	m.w.m = m
	m.w.out = m.out
	m.w.lr.br = m.br
	return m
}

func (m *msgState) begin(dst io.Writer, src io.Reader, d Decision) {
	m.d = d
	m.out.Reset(dst)
	m.w.reset()
	if im, ok := src.(*InMemory); ok {
		m.w.lr.inPlace, m.w.lr.src = true, im.b[im.off:]
		im.off = len(im.b)
	} else {
		m.src = errReader{r: src}
		m.br.Reset(&m.src)
	}
	m.report = Report{Trackers: []Finding{}}
	m.changed = false
	m.beacon = false
	m.rn = nil
	m.rnDone = false
}

// end drops references the pool must not keep and caps retained buffers.
func (m *msgState) end() {
	m.d = Decision{}
	m.src = errReader{}
	m.br.Reset(nil)
	m.out.Reset(nil)
	clear(m.decided)
	clear(m.probs)
	m.report = Report{}
	const keep = 1 << 20
	for _, b := range []*[]byte{&m.hdr, &m.pend, &m.body, &m.dec, &m.view, &m.edited.side, &m.scratch} {
		if cap(*b) > keep {
			*b = nil
		}
	}
	if cap(m.qpLines) > keep/32 {
		m.qpLines = nil
	}
	m.scan.view = nil
	m.w.lr.src = nil // the caller's message, not to be kept alive by the pool
	if cap(m.scan.refs) > 4096 {
		m.scan.refs = nil
	}
}

func (m *msgState) err() error {
	if m.src.err != nil {
		return &IOError{Op: "read", Err: m.src.err}
	}
	if m.w.werr != nil {
		return &IOError{Op: "write", Err: m.w.werr}
	}
	return nil
}

// IOError is the only error Rewrite returns: reading the message (Op
// "read") or writing the result (Op "write") failed. The output is then
// incomplete and must not be delivered.
type IOError struct {
	Op  string
	Err error
}

func (e *IOError) Error() string {
	if e.Op == "read" {
		return "reading message: " + e.Err.Error()
	}
	return "writing message: " + e.Err.Error()
}

func (e *IOError) Unwrap() error { return e.Err }

func (m *msgState) needles() *recipientNeedles {
	if !m.rnDone {
		m.rnDone = true
		if len(m.d.Recipients) > 0 {
			m.rn = newRecipientNeedles(m.d.Recipients)
		}
	}
	return m.rn
}

func (m *msgState) problem(part, msg string) {
	p := msg
	if part != "" {
		p = "part " + part + ": " + msg
	}
	if !m.probs[p] {
		m.probs[p] = true
		m.report.Problems = append(m.report.Problems, p)
	}
}

// findingAction is what happens to trackers in a part under d.
func findingAction(d Action, protected bool) Action {
	if d == Keep || protected {
		return Keep
	}
	return Strip
}

func validAction(a Action) bool {
	switch a {
	case Keep, Strip, Beacon:
		return true
	}
	return false
}

// normalizeAction maps an empty or unknown action to Strip: failing closed
// on privacy means an unset decision strips.
func normalizeAction(a Action) Action {
	if validAction(a) {
		return a
	}
	return Strip
}
