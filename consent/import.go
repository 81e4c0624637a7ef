package consent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"io"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// Import formats.
const (
	FormatNative    = "native"    // email,purpose,state,occurred_at,method,source,text_version,text_sha256,evidence[,tenant][,weak_proof]
	FormatMailchimp = "mailchimp" // one CSV of a Mailchimp audience export: subscribed, unsubscribed or cleaned
	FormatHubSpot   = "hubspot"   // a HubSpot contacts export
)

// NativeColumns are the columns of the native CSV, in the order Export
// writes them. Import accepts them in any order; email, purpose, state and
// occurred_at are required.
var NativeColumns = []string{"email", "purpose", "state", "occurred_at", "method", "source", "text_version", "text_sha256", "evidence", "tenant", "weak_proof"}

// Defaults of ImportOptions.
const (
	// DefaultBatchSize: a million-row import takes ~23 s with a peak Go heap
	// of ~130 MB at 5,000 rows per transaction, ~19 s and ~240 MB at
	// 10,000 (bbolt keeps every page a transaction touched in memory until
	// it commits); see docs/consent.md.
	DefaultBatchSize     = 5000
	DefaultMaxRejections = 1000
	// maxRecordBytes bounds one CSV record. A longer one is almost always an
	// unclosed quote swallowing the rest of the file; without a bound it
	// would be read into memory whole.
	maxRecordBytes = 1 << 20
)

// ImportOptions configures Import.
type ImportOptions struct {
	Format string // FormatNative (default), FormatMailchimp or FormatHubSpot
	Tenant string // for rows without a tenant column; "" means DefaultTenant
	Actor  string // who runs the import; recorded in every event (required)
	// WeakProof accepts grants that carry neither evidence nor a consent
	// text reference, and marks them weak. HubSpot's "Freely given consent
	// from contact" is always weak and needs it.
	WeakProof bool
	// Source is the collection point for rows that do not name one;
	// Mailchimp and HubSpot rows default to "mailchimp" and "hubspot".
	Source string
	// TextVersion and TextSHA256 identify the consent text for rows that
	// carry none (typically a column mapped with Map).
	TextVersion string
	TextSHA256  string
	// At dates rows whose export records no time (HubSpot has none for its
	// legal basis). Without it such rows are rejected.
	At time.Time
	// Map maps a column of a Mailchimp or HubSpot export to a purpose, for
	// an export that really records that consent (a GDPR marketing
	// permission such as "Email open tracking"). Values yes/true/1/granted
	// grant, no/false/0/denied deny, withdrawn withdraws, empty records
	// nothing. Newsletter consent never maps to open_tracking by itself.
	Map map[string]string
	// BatchSize is the number of rows per transaction (DefaultBatchSize).
	BatchSize int
	// OnReject, if set, is called for each rejected row in line order as
	// the import runs (the CLI prints them as `line N: reason`).
	OnReject func(Rejection)
	// MaxRejections bounds ImportResult.Rejected (DefaultMaxRejections);
	// RejectedCount counts them all.
	MaxRejections int
}

// Rejection is a row that was not imported, and why. Line 1 is the header.
type Rejection struct {
	Line   int    `json:"line"`
	Reason string `json:"reason"`
}

// ImportResult summarises an import. Every row is counted once: imported
// (it recorded at least one event), unchanged (the store already had it or
// something later), skipped (the row holds no consent: a cleaned address, a
// legal basis other than consent, a subject erased after the row's date),
// or rejected.
type ImportResult struct {
	Rows          int            `json:"rows"`
	Imported      int            `json:"imported"`
	Unchanged     int            `json:"unchanged"`
	Skipped       int            `json:"skipped"`
	SkipReasons   map[string]int `json:"skip_reasons,omitempty"`
	Rejected      []Rejection    `json:"rejected"`
	RejectedCount int            `json:"rejected_count"`
}

// rowMapper turns the rows of one CSV flavour into events.
type rowMapper interface {
	// header validates the header; cols are trimmed, BOM removed.
	header(cols []string) error
	// row maps one record. It returns the events (possibly none), a skip
	// reason when the row deliberately records nothing, or an error.
	row(rec []string) (evs []Event, skip string, err error)
}

type importRow struct {
	line    int
	changes []*change
	skip    string
	reject  string
}

type importBatch struct {
	rows []importRow
	err  error // fatal: stop after the rows before it
}

// Import reads a CSV export and records its consent events. Rows are
// applied in file order, in transactions of BatchSize rows; a bad row is
// rejected with its line number and the others still import. The import
// is idempotent: running it twice changes nothing the second time. The
// input is streamed, so its size is bounded only by the disk.
//
// A fatal error (an unreadable header, a record over 1 MiB, a write that
// fails) stops the import; everything committed before it stays, and the
// returned result counts it.
func (s *Store) Import(ctx context.Context, r io.Reader, opts ImportOptions) (ImportResult, error) {
	res := ImportResult{Rejected: []Rejection{}}
	if s.opts.ReadOnly || s.aead == nil {
		return res, ErrReadOnly
	}
	m, err := s.importMapper(&opts)
	if err != nil {
		return res, err
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = DefaultBatchSize
	}
	if opts.MaxRejections <= 0 {
		opts.MaxRejections = DefaultMaxRejections
	}

	br := bufio.NewReaderSize(r, 64<<10)
	if err := skipBOM(br); err != nil {
		return res, err
	}
	guard := &recordGuard{r: br, limit: maxRecordBytes + 64<<10}
	cr := csv.NewReader(guard)
	cr.FieldsPerRecord = -1
	cr.ReuseRecord = true
	header, err := cr.Read()
	if err == io.EOF {
		return res, invalidf("the file is empty: expected a header line")
	}
	if err != nil {
		return res, invalidf("line 1 (header): %v", csvErr(err))
	}
	cols := make([]string, len(header))
	for i, h := range header {
		cols[i] = strings.TrimSpace(h)
	}
	if err := m.header(cols); err != nil {
		return res, invalidf("line 1 (header): %v", err)
	}
	guard.advance(cr.InputOffset())

	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	batches := make(chan importBatch, 2)
	go s.parseRows(ctx, cr, guard, m, len(cols), &opts, batches)
	defer func() {
		cancel()
		for range batches { // let the parser exit
		}
	}()

	wrote := false
	for b := range batches {
		if ctx.Err() != nil {
			break // interrupted: what is committed stays, nothing more is written
		}
		if len(b.rows) > 0 {
			if err := s.applyBatch(b.rows, &res, &opts); err != nil {
				if wrote {
					s.afterWrite()
				}
				return res, fmt.Errorf("import stopped at line %d: %w (rows before it were imported)", b.rows[0].line, err)
			}
			wrote = true
		}
		if b.err != nil {
			if wrote {
				s.afterWrite()
			}
			return res, b.err
		}
	}
	if wrote {
		s.afterWrite()
	}
	return res, ctx.Err()
}

// parseRows reads, maps and validates rows (the CPU-heavy half: address
// normalisation, HMAC, encryption) while the caller writes the previous
// batch.
func (s *Store) parseRows(ctx context.Context, cr *csv.Reader, guard *recordGuard, m rowMapper, ncols int, opts *ImportOptions, out chan<- importBatch) {
	defer close(out)
	send := func(b importBatch) bool {
		select {
		case out <- b:
			return true
		case <-ctx.Done():
			return false
		}
	}
	b := importBatch{}
	lastLine := 1 // where the last good record ended: FieldPos is unusable after an error
	for {
		rec, err := cr.Read()
		if err == io.EOF {
			break
		}
		if err != nil {
			var pe *csv.ParseError
			if errors.As(err, &pe) && !guard.tripped {
				// A malformed record (a stray quote): reject it, go on.
				b.rows = append(b.rows, importRow{line: pe.StartLine, reject: "malformed CSV: " + pe.Err.Error()})
				guard.advance(cr.InputOffset())
				lastLine = pe.Line
				continue
			}
			if guard.tripped {
				err = fmt.Errorf("line %d: a record is longer than %d KiB (an unclosed quote?); the import stopped there", lastLine+1, maxRecordBytes>>10)
			} else {
				err = fmt.Errorf("after line %d: cannot read the input: %w", lastLine, err)
			}
			b.err = err
			send(b)
			return
		}
		guard.advance(cr.InputOffset())
		line, _ := cr.FieldPos(0)
		lastLine, _ = cr.FieldPos(len(rec) - 1)
		row := importRow{line: line}
		if len(rec) != ncols {
			row.reject = fmt.Sprintf("has %d fields but the header has %d", len(rec), ncols)
		} else if evs, skip, err := m.row(rec); err != nil {
			row.reject = err.Error()
		} else {
			row.skip = skip
			now := s.now()
			for _, ev := range evs {
				// --weak-proof lets proof-less grants in; it does not
				// downgrade a row that carries its proof.
				if opts.WeakProof && ev.State == Granted && ev.Evidence == "" && ev.TextVersion == "" && ev.TextSHA256 == "" {
					ev.WeakProof = true
				}
				c, err := s.prepare(ev, now)
				if err != nil {
					row.reject, row.changes = err.Error(), nil
					break
				}
				c.line = line
				row.changes = append(row.changes, c)
			}
		}
		b.rows = append(b.rows, row)
		if len(b.rows) >= opts.BatchSize {
			if !send(b) {
				return
			}
			b = importBatch{rows: make([]importRow, 0, opts.BatchSize)}
		}
	}
	if len(b.rows) > 0 {
		send(b)
	}
}

// rowConflict returns why the changes of one row cannot all be applied, or
// "". Only a row of several changes needs the check: one change is
// judged as it is applied.
func (w *writer) rowConflict(changes []*change) (string, error) {
	if len(changes) < 2 {
		return "", nil
	}
	for i, c := range changes {
		for _, d := range changes[:i] {
			if bytes.Equal(c.key, d.key) && c.purpose == d.purpose && c.occurred == d.occurred && c.state != d.state {
				return fmt.Sprintf("the row says both %s and %s for %s at %s", d.state, c.state, c.purpose, fromNano(c.occurred).Format(time.RFC3339Nano)), nil
			}
		}
		if _, _, _, err := w.judge(c); errors.Is(err, ErrConflict) {
			return err.Error(), nil
		} else if err != nil {
			return "", err
		}
	}
	return "", nil
}

func (s *Store) applyBatch(rows []importRow, res *ImportResult, opts *ImportOptions) error {
	type result struct {
		kind   byte // 'i' imported, 'u' unchanged, 's' skipped, 'r' rejected
		reason string
	}
	results := make([]result, len(rows))
	err := s.db.Update(func(tx *bbolt.Tx) error {
		w, err := s.newWriter(tx)
		if err != nil {
			return err
		}
		for i := range rows {
			row := &rows[i]
			if row.reject != "" {
				results[i] = result{'r', row.reject}
				continue
			}
			// A row is one decision: it goes in whole or not at all.
			if reason, err := w.rowConflict(row.changes); err != nil {
				return err
			} else if reason != "" {
				results[i] = result{'r', reason}
				continue
			}
			r := result{kind: 'u'}
			if row.skip != "" && len(row.changes) == 0 {
				r = result{'s', row.skip}
			}
			for _, c := range row.changes {
				out, _, err := w.apply(c)
				if errors.Is(err, ErrConflict) {
					r = result{'r', err.Error()}
					break
				}
				if err != nil {
					return err
				}
				switch {
				case out == applied:
					r.kind = 'i'
				case out == suppressed && r.kind == 'u':
					r = result{'s', "erased after this row's date (GDPR art. 17); not re-imported"}
				}
			}
			results[i] = r
		}
		return w.flush()
	})
	if err != nil {
		return err
	}
	for i, r := range results {
		res.Rows++
		switch r.kind {
		case 'i':
			res.Imported++
		case 'u':
			res.Unchanged++
		case 's':
			res.Skipped++
			if res.SkipReasons == nil {
				res.SkipReasons = map[string]int{}
			}
			res.SkipReasons[r.reason]++
		case 'r':
			rj := Rejection{Line: rows[i].line, Reason: r.reason}
			res.RejectedCount++
			if len(res.Rejected) < opts.MaxRejections {
				res.Rejected = append(res.Rejected, rj)
			}
			if opts.OnReject != nil {
				opts.OnReject(rj)
			}
		}
	}
	return nil
}

func skipBOM(br *bufio.Reader) error {
	p, _ := br.Peek(3)
	switch {
	case len(p) >= 3 && p[0] == 0xEF && p[1] == 0xBB && p[2] == 0xBF:
		br.Discard(3)
	case len(p) >= 2 && (p[0] == 0xFF && p[1] == 0xFE || p[0] == 0xFE && p[1] == 0xFF):
		return invalidf("the file is UTF-16 (Excel's \"Unicode text\"); save it as \"CSV UTF-8\" and import that")
	}
	return nil
}

func csvErr(err error) error {
	var pe *csv.ParseError
	if errors.As(err, &pe) {
		return pe.Err
	}
	return err
}

// recordGuard fails the read when one CSV record grows past limit bytes
// beyond the end of the previous one (encoding/csv would buffer it whole).
type recordGuard struct {
	r       io.Reader
	read    int64
	mark    int64
	limit   int64
	tripped bool
}

var errRecordTooLong = errors.New("record too long")

func (g *recordGuard) Read(p []byte) (int, error) {
	if g.read-g.mark > g.limit {
		g.tripped = true
		return 0, errRecordTooLong
	}
	n, err := g.r.Read(p)
	g.read += int64(n)
	return n, err
}

// advance records where the last complete record ended.
func (g *recordGuard) advance(offset int64) { g.mark = offset }

// importMapper validates opts and returns the mapper for its format.
func (s *Store) importMapper(opts *ImportOptions) (rowMapper, error) {
	if opts.Actor == "" {
		return nil, invalidf("import: actor is required")
	}
	if opts.Tenant == "" {
		opts.Tenant = DefaultTenant
	}
	if err := validTenant(opts.Tenant); err != nil {
		return nil, err
	}
	sha, err := normalizeSHA256(opts.TextSHA256)
	if err != nil {
		return nil, err
	}
	opts.TextSHA256 = sha
	for col, p := range opts.Map {
		if err := s.checkPurpose(p); err != nil {
			return nil, invalidf("--map %s=%s: %v", col, p, err)
		}
	}
	switch opts.Format {
	case "", FormatNative:
		if len(opts.Map) > 0 {
			return nil, invalidf("--map applies to mailchimp and hubspot exports; a native CSV names its purpose per row")
		}
		return &nativeMapper{opts: opts}, nil
	case FormatMailchimp:
		return &mailchimpMapper{opts: opts}, nil
	case FormatHubSpot:
		return &hubspotMapper{opts: opts}, nil
	}
	return nil, invalidf("unknown import format %q: use native, mailchimp or hubspot", opts.Format)
}

// columnIndex finds the first of names among cols, case-insensitively.
func columnIndex(cols []string, names ...string) int {
	for _, n := range names {
		for i, c := range cols {
			if strings.EqualFold(c, n) {
				return i
			}
		}
	}
	return -1
}

func guessFormat(cols []string) string {
	switch {
	case columnIndex(cols, "Email Address") >= 0 && columnIndex(cols, "LEID", "EUID", "OPTIN_TIME", "MEMBER_RATING") >= 0:
		return " (this looks like a Mailchimp export: use --format mailchimp)"
	case columnIndex(cols, "hs_legal_basis", "Legal basis for processing contact's data", "Record ID", "hs_object_id") >= 0:
		return " (this looks like a HubSpot export: use --format hubspot)"
	}
	return ""
}

// --- native ---

type nativeMapper struct {
	opts *ImportOptions
	idx  map[string]int
}

func (m *nativeMapper) header(cols []string) error {
	m.idx = map[string]int{}
	for i, c := range cols {
		name := strings.ToLower(c)
		if !slices.Contains(NativeColumns, name) {
			return fmt.Errorf("unknown column %q; native columns are %s%s", c, strings.Join(NativeColumns, ","), guessFormat(cols))
		}
		if _, dup := m.idx[name]; dup {
			return fmt.Errorf("column %q appears twice", c)
		}
		m.idx[name] = i
	}
	for _, req := range []string{"email", "purpose", "state", "occurred_at"} {
		if _, ok := m.idx[req]; !ok {
			return fmt.Errorf("column %q is missing; native columns are %s%s", req, strings.Join(NativeColumns, ","), guessFormat(cols))
		}
	}
	return nil
}

func (m *nativeMapper) get(rec []string, col string) string {
	if i, ok := m.idx[col]; ok {
		return strings.TrimSpace(rec[i])
	}
	return ""
}

func (m *nativeMapper) row(rec []string) ([]Event, string, error) {
	ev := Event{
		Tenant: m.get(rec, "tenant"), Address: m.get(rec, "email"), Purpose: m.get(rec, "purpose"),
		Method: m.get(rec, "method"), Source: m.get(rec, "source"), TextVersion: m.get(rec, "text_version"),
		TextSHA256: m.get(rec, "text_sha256"), Evidence: m.get(rec, "evidence"), Actor: m.opts.Actor,
	}
	if ev.Address == "" {
		return nil, "", errors.New("email is empty")
	}
	if ev.Purpose == "" {
		return nil, "", errors.New("purpose is empty")
	}
	if ev.Tenant == "" {
		ev.Tenant = m.opts.Tenant
	}
	if ev.Method == "" {
		ev.Method = MethodImport
	}
	if ev.Source == "" {
		ev.Source = m.opts.Source
	}
	st, err := ParseState(m.get(rec, "state"))
	if err != nil {
		return nil, "", err
	}
	ev.State = st
	at := m.get(rec, "occurred_at")
	if at == "" {
		return nil, "", errors.New("occurred_at is empty: when did the person act? (RFC 3339, e.g. 2026-05-01T10:00:00Z)")
	}
	if ev.OccurredAt, err = time.Parse(time.RFC3339Nano, at); err != nil {
		return nil, "", fmt.Errorf("occurred_at %q is not an RFC 3339 time with a zone (e.g. 2026-05-01T10:00:00Z)", at)
	}
	if w := m.get(rec, "weak_proof"); w != "" {
		b, ok := parseBool(w)
		if !ok {
			return nil, "", fmt.Errorf("weak_proof %q is not true or false", w)
		}
		ev.WeakProof = b
	}
	return []Event{ev}, "", nil
}

func parseBool(v string) (bool, bool) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "true", "yes", "y", "1":
		return true, true
	case "false", "no", "n", "0", "":
		return false, true
	}
	return false, false
}

// mappedState reads an explicitly mapped consent column.
func mappedState(v string) (State, bool, error) {
	switch strings.ToLower(strings.TrimSpace(v)) {
	case "":
		return "", false, nil
	case "true", "yes", "y", "1", "granted", "opted_in", "subscribed":
		return Granted, true, nil
	case "false", "no", "n", "0", "denied", "opted_out":
		return Denied, true, nil
	case "withdrawn", "unsubscribed":
		return Withdrawn, true, nil
	}
	return "", false, fmt.Errorf("value %q is not yes/no, true/false, granted/denied or withdrawn", v)
}

// exportTime parses the time formats found in ESP exports. Times without a
// zone are UTC (Mailchimp writes UTC; HubSpot writes the portal's zone,
// which the export does not say: one more reason its proof is weak).
func exportTime(v string) (time.Time, bool) {
	v = strings.TrimSpace(v)
	if v == "" {
		return time.Time{}, false
	}
	for _, layout := range []string{time.RFC3339Nano, "2006-01-02 15:04:05", "2006-01-02 15:04", "2006-01-02T15:04:05", "2006-01-02"} {
		if t, err := time.Parse(layout, v); err == nil {
			return t, true
		}
	}
	if len(v) >= 12 && len(v) <= 14 && strings.Trim(v, "0123456789") == "" { // epoch milliseconds
		var ms int64
		fmt.Sscan(v, &ms)
		return time.UnixMilli(ms).UTC(), true
	}
	return time.Time{}, false
}

// mappedColumns resolves Map against the header.
func mappedColumns(cols []string, mp map[string]string) (map[int]string, error) {
	out := map[int]string{}
	for col, purpose := range mp {
		i := columnIndex(cols, col)
		if i < 0 {
			return nil, fmt.Errorf("--map column %q is not in the file; its columns are: %s", col, strings.Join(cols, ", "))
		}
		out[i] = purpose
	}
	return out, nil
}

func mappedEvents(rec []string, mapped map[int]string, base Event) ([]Event, error) {
	var evs []Event
	idx := make([]int, 0, len(mapped))
	for i := range mapped {
		idx = append(idx, i)
	}
	slices.Sort(idx) // deterministic event order
	for _, i := range idx {
		st, ok, err := mappedState(rec[i])
		if err != nil {
			return nil, fmt.Errorf("mapped column for %s: %v", mapped[i], err)
		}
		if !ok {
			continue
		}
		ev := base
		ev.Purpose, ev.State = mapped[i], st
		evs = append(evs, ev)
	}
	return evs, nil
}

// --- Mailchimp ---

// mailchimpMapper maps one CSV of a Mailchimp audience export
// (compliance.md §5). Subscribed members granted marketing_email at
// CONFIRM_TIME (double opt-in) or OPTIN_TIME; unsubscribed members withdrew
// it at UNSUB_TIME; cleaned members bounced, which is not consent. Nothing
// in the export records pixel consent, so open_tracking stays unknown
// unless a column is mapped explicitly.
type mailchimpMapper struct {
	opts   *ImportOptions
	kind   string // subscribed, unsubscribed, cleaned
	email  int
	optin  int
	conf   int
	unsub  int
	unsubC int
	last   int
	leid   int
	euid   int
	mapped map[int]string
}

func (m *mailchimpMapper) header(cols []string) error {
	m.email = columnIndex(cols, "Email Address")
	if m.email < 0 {
		return fmt.Errorf("no \"Email Address\" column: is this a Mailchimp audience export?%s", guessFormat(cols))
	}
	m.optin, m.conf = columnIndex(cols, "OPTIN_TIME"), columnIndex(cols, "CONFIRM_TIME")
	m.unsub, m.unsubC = columnIndex(cols, "UNSUB_TIME"), columnIndex(cols, "UNSUB_CAMPAIGN_ID")
	m.last = columnIndex(cols, "LAST_CHANGED")
	m.leid, m.euid = columnIndex(cols, "LEID"), columnIndex(cols, "EUID")
	switch {
	case m.unsub >= 0:
		m.kind = "unsubscribed"
	case columnIndex(cols, "CLEAN_TIME") >= 0:
		m.kind = "cleaned"
	default:
		m.kind = "subscribed"
	}
	var err error
	m.mapped, err = mappedColumns(cols, m.opts.Map)
	return err
}

func (m *mailchimpMapper) field(rec []string, i int) string {
	if i < 0 {
		return ""
	}
	return strings.TrimSpace(rec[i])
}

func (m *mailchimpMapper) row(rec []string) ([]Event, string, error) {
	addr := m.field(rec, m.email)
	if addr == "" {
		return nil, "", errors.New("Email Address is empty")
	}
	if m.kind == "cleaned" {
		return nil, "cleaned by Mailchimp (bounced): a bounce is not consent", nil
	}
	evidence := ""
	if v := m.field(rec, m.euid); v != "" {
		evidence = "mailchimp:euid=" + v
	} else if v := m.field(rec, m.leid); v != "" {
		evidence = "mailchimp:leid=" + v
	}
	source := m.opts.Source
	if source == "" {
		source = "mailchimp"
	}
	base := Event{
		Tenant: m.opts.Tenant, Address: addr, Purpose: PurposeMarketingEmail, Source: source,
		TextVersion: m.opts.TextVersion, TextSHA256: m.opts.TextSHA256, Evidence: evidence,
		Actor: m.opts.Actor, Method: MethodImport,
	}
	var evs []Event
	optedIn, hasOptIn := exportTime(m.field(rec, m.conf))
	if hasOptIn {
		base.Method = MethodDoubleOptIn
	} else {
		optedIn, hasOptIn = exportTime(m.field(rec, m.optin))
	}
	switch m.kind {
	case "subscribed":
		if !hasOptIn {
			if m.opts.At.IsZero() {
				return nil, "", errors.New("no CONFIRM_TIME or OPTIN_TIME to date the subscription; pass --at to date the rows that lack one")
			}
			optedIn = m.opts.At
		}
		ev := base
		ev.State, ev.OccurredAt = Granted, optedIn
		evs = append(evs, ev)
		more, err := mappedEvents(rec, m.mapped, ev)
		if err != nil {
			return nil, "", err
		}
		evs = append(evs, more...)
	case "unsubscribed":
		unsub, ok := exportTime(m.field(rec, m.unsub))
		if !ok {
			if unsub, ok = exportTime(m.field(rec, m.last)); !ok {
				if m.opts.At.IsZero() {
					return nil, "", errors.New("no UNSUB_TIME or LAST_CHANGED to date the unsubscription; pass --at to date the rows that lack one")
				}
				unsub = m.opts.At
			}
		}
		if hasOptIn && optedIn.Before(unsub) {
			ev := base
			ev.State, ev.OccurredAt = Granted, optedIn
			evs = append(evs, ev)
		}
		ev := base
		ev.State, ev.OccurredAt, ev.Method = Withdrawn, unsub, MethodImport
		if m.field(rec, m.unsubC) != "" {
			ev.Method = MethodEmailLink // unsubscribed through a campaign's link
		}
		evs = append(evs, ev)
		more, err := mappedEvents(rec, m.mapped, ev)
		if err != nil {
			return nil, "", err
		}
		evs = append(evs, more...)
	}
	return evs, "", nil
}

// --- HubSpot ---

// hubspotMapper maps a HubSpot contacts export (compliance.md §5). Only the
// legal basis "Freely given consent from contact" is consent: it becomes a
// marketing_email grant, always weak proof (HubSpot keeps no time or text
// for it), so it needs WeakProof. "Unsubscribed from all email" becomes a
// withdrawal. Tracking stays unknown unless a column is mapped explicitly.
type hubspotMapper struct {
	opts     *ImportOptions
	email    int
	basis    int
	optout   int
	id       int
	created  int
	modified int
	mapped   map[int]string
}

func (m *hubspotMapper) header(cols []string) error {
	m.email = columnIndex(cols, "Email", "email", "Email Address")
	if m.email < 0 {
		return fmt.Errorf("no \"Email\" column: is this a HubSpot contacts export?%s", guessFormat(cols))
	}
	m.basis = columnIndex(cols, "Legal basis for processing contact's data", "hs_legal_basis", "Legal basis for processing contact’s data")
	m.optout = columnIndex(cols, "Unsubscribed from all email", "hs_email_optout")
	m.id = columnIndex(cols, "Record ID", "hs_object_id", "Contact ID", "vid")
	m.created = columnIndex(cols, "Create Date", "createdate")
	m.modified = columnIndex(cols, "Last Modified Date", "lastmodifieddate")
	var err error
	if m.mapped, err = mappedColumns(cols, m.opts.Map); err != nil {
		return err
	}
	if m.basis < 0 && m.optout < 0 && len(m.mapped) == 0 {
		return errors.New("the export has neither \"Legal basis for processing contact's data\" nor \"Unsubscribed from all email\": include those properties in the export")
	}
	return nil
}

func (m *hubspotMapper) field(rec []string, i int) string {
	if i < 0 {
		return ""
	}
	return strings.TrimSpace(rec[i])
}

func (m *hubspotMapper) date(rec []string, cols ...int) (time.Time, bool) {
	for _, i := range cols {
		if t, ok := exportTime(m.field(rec, i)); ok {
			return t, true
		}
	}
	if !m.opts.At.IsZero() {
		return m.opts.At, true
	}
	return time.Time{}, false
}

func (m *hubspotMapper) row(rec []string) ([]Event, string, error) {
	addr := m.field(rec, m.email)
	if addr == "" {
		return nil, "", errors.New("Email is empty")
	}
	source := m.opts.Source
	if source == "" {
		source = "hubspot"
	}
	evidence := ""
	if id := m.field(rec, m.id); id != "" {
		evidence = "hubspot:record=" + id
	}
	base := Event{
		Tenant: m.opts.Tenant, Address: addr, Purpose: PurposeMarketingEmail, Source: source, Method: MethodImport,
		TextVersion: m.opts.TextVersion, TextSHA256: m.opts.TextSHA256, Evidence: evidence, Actor: m.opts.Actor,
	}
	var evs []Event
	optout, ok := parseBool(m.field(rec, m.optout))
	if !ok {
		return nil, "", fmt.Errorf("\"Unsubscribed from all email\" value %q is not true or false", m.field(rec, m.optout))
	}
	consent := false
	for _, b := range strings.Split(m.field(rec, m.basis), ";") {
		if strings.EqualFold(strings.TrimSpace(b), "Freely given consent from contact") {
			consent = true
		}
	}
	switch {
	case optout:
		at, ok := m.date(rec, m.modified, m.created)
		if !ok {
			return nil, "", errors.New("no Last Modified Date or Create Date to date the opt-out; pass --at")
		}
		ev := base
		ev.State, ev.OccurredAt = Withdrawn, at
		evs = append(evs, ev)
	case consent:
		if !m.opts.WeakProof {
			return nil, "", errors.New("HubSpot records no time or consent text for \"Freely given consent from contact\": import with --weak-proof to record it as weak proof")
		}
		at, ok := m.date(rec, m.created)
		if !ok {
			return nil, "", errors.New("no Create Date to date the consent; pass --at")
		}
		ev := base
		ev.State, ev.OccurredAt, ev.WeakProof = Granted, at, true
		evs = append(evs, ev)
	}
	if len(m.mapped) > 0 {
		at, ok := m.date(rec, m.created)
		if !ok {
			return nil, "", errors.New("no Create Date to date the mapped columns; pass --at")
		}
		ev := base
		ev.OccurredAt = at
		more, err := mappedEvents(rec, m.mapped, ev)
		if err != nil {
			return nil, "", err
		}
		evs = append(evs, more...)
	}
	if len(evs) == 0 {
		return nil, "HubSpot legal basis is not consent (legitimate interest, contract or none)", nil
	}
	return evs, "", nil
}
