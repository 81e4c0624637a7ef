package rewrite

import (
	"bytes"
	"html"
	"slices"
)

// processHTML rewrites one buffered HTML part: transfer-decode, build the
// tokenizer's view of the charset, scan, decide per URL, compute edits,
// and splice them back through the charset and transfer encoding. It
// returns the new content as a splice of body's untouched runs and new
// bytes (nil when nothing changes), or drop for an AMP alternative that
// goes away.
func (m *msgState) processHTML(path string, enc cte, charset string, amp bool, ctx partCtx, body []byte) (out *splice, drop bool) {
	act := normalizeAction(m.d.Action)
	var dec []byte
	var lay b64Layout
	switch enc {
	case cteIdentity:
		dec = body
	case cteQP:
		m.dec, m.qpLines = qpDecode(body, m.dec[:0], m.qpLines[:0])
		dec = m.dec
	case cteBase64:
		d, l, ok := b64Decode(body, m.dec[:0], m.scratch[:0])
		m.dec = d
		if !ok {
			m.problem(path, "broken base64; HTML part copied without inspection")
			return nil, false
		}
		dec, lay = d, l
	default:
		m.problem(path, "unknown Content-Transfer-Encoding; HTML part copied without inspection")
		return nil, false
	}
	kind, ok, prob := charsetClass(charset, dec)
	if prob != "" {
		m.problem(path, prob)
	}
	if !ok {
		return nil, false
	}
	v := buildView(kind, dec, m.view, charset)
	if kind != viewASCII {
		m.view = v.text
	}
	s := &m.scan
	s.reset(v.text)
	s.run(0, len(v.text))

	m.aggregate(s)
	partAct := findingAction(act, ctx.protected)
	trackers := 0
	for i := range m.aggs {
		a := &m.aggs[i]
		vd, seen := m.decided[a.url]
		if !seen {
			tr, f := m.e.classify(a, m.needles())
			vd = verdict{tracker: tr, finding: -1}
			if tr {
				f.Part, f.Action = path, partAct
				m.report.Trackers = append(m.report.Trackers, f)
				vd.finding = len(m.report.Trackers) - 1
			}
			m.decided[a.url] = vd
		}
		if vd.tracker {
			trackers++
		}
	}
	if act == Keep || trackers == 0 && !(amp && s.dynamic) {
		return nil, false
	}
	if ctx.protected {
		m.problem(path, "inside a signed or encrypted part, left unchanged so the signature stays valid; its trackers were not removed")
		return nil, false
	}
	if amp && ctx.parentAlt && ctx.index > 1 {
		// AMP can fetch per-recipient data at open time (amp-list,
		// amp-state), which no tag-level clean-up can make safe. The HTML
		// alternative remains, so the AMP one goes.
		return nil, true
	}
	var beacon []byte
	if act == Beacon && !amp && !m.beacon {
		if m.d.BeaconURL == "" {
			m.problem("", "beacon action without a beacon URL; trackers stripped instead")
		} else {
			beacon = []byte(`<img src="` + html.EscapeString(m.d.BeaconURL) + `" width="1" height="1" alt="">`)
		}
	}
	edits, beaconRef := m.buildEdits(s, beacon)
	if len(edits) == 0 {
		return nil, false
	}
	if beacon != nil {
		m.beacon = true
		if beaconRef != "" {
			if vd := m.decided[beaconRef]; vd.finding >= 0 {
				m.report.Trackers[vd.finding].Action = Beacon
			}
		}
	}
	if kind == viewUTF16LE || kind == viewUTF16BE {
		for i := range edits {
			edits[i].start, edits[i].end = v.toDec(edits[i].start), v.toDec(edits[i].end)
			if edits[i].repl != nil {
				edits[i].repl = v.encode(edits[i].repl)
			}
		}
	}
	out = &m.edited
	out.reset()
	switch enc {
	case cteIdentity:
		spliceEdits(out, body, edits)
	case cteQP:
		m.scratch = qpApply(out, body, dec, m.qpLines, edits, eolOf(body, m.hdr), m.scratch[:0])
	case cteBase64:
		m.scratch = applyEdits(m.scratch[:0], dec, edits)
		out.side = b64Encode(out.side, m.scratch, lay)
		out.add(0)
	}
	if out.same(body) {
		return nil, false
	}
	m.changed = true
	return out, false
}

// aggregate groups a part's references by URL.
func (m *msgState) aggregate(s *htmlScan) {
	clear(m.aggIdx)
	m.aggs = m.aggs[:0]
	for i := range s.refs {
		r := &s.refs[i]
		if r.kind == refDup || m.e.isOwn(r.url) {
			continue
		}
		j, ok := m.aggIdx[r.url]
		if !ok {
			j = len(m.aggs)
			m.aggIdx[r.url] = j
			m.aggs = append(m.aggs, urlAgg{url: r.url, vector: r.vector})
		}
		a := &m.aggs[j]
		a.count++
		if r.img {
			a.tiny = a.tiny || r.tiny
			switch {
			case r.hidden && (r.noSize || r.tiny):
				a.hiddenStrong = true
			case r.hidden || r.msoHidden:
				a.hiddenWeak = true
			}
		}
	}
}

// isTracker is the verdict on a URL. Own URLs never get one (aggregate
// skips them), so they are never trackers.
func (m *msgState) isTracker(u string) bool { return m.decided[u].tracker }

// buildEdits turns the verdicts into edits on the view, sorted and merged.
// With a beacon, the first removed <img> in the body (outside <head> and
// Outlook-only comments, so that every client loads it) becomes the beacon;
// failing that it goes just before </body>, or at the end.
func (m *msgState) buildEdits(s *htmlScan, beacon []byte) ([]edit, string) {
	removed := slices.Grow(m.removed[:0], len(s.elems))[:len(s.elems)]
	clear(removed)
	hits := slices.Grow(m.groupHits[:0], len(s.groups))[:len(s.groups)]
	clear(hits)
	m.removed, m.groupHits = removed, hits
	edits := m.edits[:0]
	for i := range s.refs {
		r := &s.refs[i]
		if !m.isTracker(r.url) {
			continue
		}
		switch r.kind {
		case refElem:
			removed[r.elem] = true
		case refSrcset:
			hits[r.group]++
		default:
			edits = append(edits, edit{start: r.start, end: r.end})
		}
	}
	for g := range s.groups {
		grp := &s.groups[g]
		switch {
		case hits[g] == 0:
		case hits[g] == grp.n && grp.removeElem:
			removed[grp.elem] = true
		case hits[g] == grp.n:
			edits = append(edits, edit{start: grp.attrStart, end: grp.attrEnd})
			for i := grp.refStart; i < grp.refEnd; i++ {
				if r := &s.refs[i]; r.kind == refDup {
					edits = append(edits, edit{start: r.start, end: r.end})
				}
			}
		default:
			for i := grp.refStart; i < grp.refEnd; i++ {
				if r := &s.refs[i]; r.kind == refSrcset && m.isTracker(r.url) {
					edits = append(edits, edit{start: r.start, end: r.end})
				}
			}
		}
	}
	placed, beaconElem := false, -1
	for i := range s.elems {
		if !removed[i] {
			continue
		}
		e := &s.elems[i]
		ed := edit{start: e.start, end: e.end}
		if beacon != nil && !placed && e.img && !e.inComment && !e.inHead {
			ed.repl, placed, beaconElem = beacon, true, i
		}
		edits = append(edits, ed)
		if e.endStart >= 0 {
			edits = append(edits, edit{start: e.endStart, end: e.endEnd})
		}
	}
	if beacon != nil && !placed && len(edits) > 0 {
		pos := s.bodyEnd
		if pos < 0 {
			// At the end of the HTML, but before its final line break:
			// in MIME that break belongs to the next boundary delimiter.
			pos = s.tokEnd
			if pos > 0 && s.view[pos-1] == '\n' {
				pos--
				if pos > 0 && s.view[pos-1] == '\r' {
					pos--
				}
			}
		}
		edits = append(edits, edit{start: pos, end: pos, repl: beacon})
	}
	// No edit may touch the part's final line break: in MIME it belongs to
	// the next boundary delimiter.
	limit := len(s.view)
	if limit > 0 && s.view[limit-1] == '\n' {
		limit--
		if limit > 0 && s.view[limit-1] == '\r' {
			limit--
		}
	}
	for i := range edits {
		if edits[i].end > limit {
			edits[i].end = max(limit, edits[i].start)
		}
	}
	slices.SortFunc(edits, func(a, b edit) int {
		if a.start != b.start {
			return a.start - b.start
		}
		return a.end - b.end
	})
	merged := edits[:0]
	for _, e := range edits {
		if e.start == e.end && e.repl == nil {
			continue
		}
		if n := len(merged); n > 0 {
			last := &merged[n-1]
			if e.start < last.end || e.start == last.start && e.end == last.end {
				if e.end > last.end {
					last.end = e.end
				}
				if last.repl == nil {
					last.repl = e.repl
				}
				continue
			}
		}
		merged = append(merged, e)
	}
	m.edits = merged
	beaconRef := ""
	if beaconElem >= 0 {
		for i := range s.refs {
			if r := &s.refs[i]; r.kind == refElem && int(r.elem) == beaconElem {
				beaconRef = r.url
				break
			}
		}
	}
	return merged, beaconRef
}

// eolOf returns the line ending a body uses. A body without a line break
// takes its header's (a one-line part of an LF message is still LF), and
// only a part with neither gets CRLF, the MIME default.
func eolOf(body, hdr []byte) string {
	for _, b := range [2][]byte{body, hdr} {
		if i := bytes.IndexByte(b, '\n'); i >= 0 {
			if i > 0 && b[i-1] == '\r' {
				return "\r\n"
			}
			return "\n"
		}
	}
	return "\r\n"
}
