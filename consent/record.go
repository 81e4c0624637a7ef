package consent

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// Event is one consent action to record: a person granted, denied or
// withdrew consent for one purpose. It is the input of Record and of every
// import row.
type Event struct {
	Tenant  string // "" means DefaultTenant
	Address string
	Purpose string // "" means PurposeOpenTracking
	State   State  // Granted, Denied or Withdrawn
	// OccurredAt is when the person acted; zero means now. It may not be
	// in the future (beyond a few minutes of clock skew).
	OccurredAt time.Time
	// Method is how consent was collected; one of the Method* constants.
	Method string
	// Source is the collection point: a form URL or id, a campaign.
	Source string
	// TextVersion and TextSHA256 identify the consent text the person saw.
	TextVersion string
	TextSHA256  string
	// Evidence references the proof: a form submission id, a DOI
	// message-id, an import batch and row.
	Evidence string
	// Actor is who recorded it: "api:<token name>", "cli:<user>".
	Actor string
	// WeakProof must be set to record a grant that has neither evidence
	// nor a text reference; the event is then marked weak.
	WeakProof bool
}

// Record is a subject's consent as `consent show --json` prints it and the
// HTTP API returns it (CONTRACTS.md). A purpose absent from States is
// unknown.
type Record struct {
	Address string                  `json:"address"`
	Tenant  string                  `json:"tenant"`
	States  map[string]PurposeState `json:"states"`
	History []HistoryEntry          `json:"history"`
	// Pseudonym is the keyed hash the relay's audit log uses for this
	// address, so decisions can be matched to this record.
	Pseudonym string `json:"pseudonym,omitempty"`
	// ErasedAt is set when the subject was erased (GDPR art. 17); whatever
	// History holds was recorded after that.
	ErasedAt *time.Time `json:"erased_at,omitempty"`
}

// PurposeState is the current state for one purpose and the event that set it.
type PurposeState struct {
	State   State     `json:"state"`
	Since   time.Time `json:"since"`
	EventID string    `json:"event_id"`
}

// HistoryEntry is one event of a subject's history, with its place in the
// global hash chain.
type HistoryEntry struct {
	EventID     string    `json:"event_id"`
	Purpose     string    `json:"purpose"`
	State       State     `json:"state"`
	Previous    State     `json:"previous"`
	OccurredAt  time.Time `json:"occurred_at"`
	RecordedAt  time.Time `json:"recorded_at"`
	Method      string    `json:"method"`
	Source      string    `json:"source"`
	TextVersion string    `json:"text_version"`
	TextSHA256  string    `json:"text_sha256"`
	Evidence    string    `json:"evidence"`
	Actor       string    `json:"actor"`
	WeakProof   bool      `json:"weak_proof"`
	Hash        string    `json:"hash"`
	PrevHash    string    `json:"prev_hash"`
}

// Clock skew tolerated for occurred_at, and the oldest plausible date.
const (
	futureSkew = 5 * time.Minute
)

var oldestPlausible = time.Date(1990, 1, 1, 0, 0, 0, 0, time.UTC)

// Field length limits: proof references, not documents.
const (
	maxSourceLen   = 512
	maxTextVerLen  = 128
	maxEvidenceLen = 1024
	maxActorLen    = 256
)

// change is a validated Event, ready to apply in a write transaction.
type change struct {
	line     int // import: the CSV line; 0 otherwise
	tenant   string
	key      []byte // tenant ‖ 0 ‖ mac
	mac      [32]byte
	addrCT   []byte // sealed normalised address
	addr     string // normalised address
	purpose  string
	state    State
	occurred int64
	method   string
	source   string
	textVer  string
	textSHA  string
	evidence string
	actor    string
	weak     bool
	// timeIsNow: the event came without occurred_at and was stamped when
	// it was recorded.
	timeIsNow bool
}

func checkText(field, v string, max int) error {
	if len(v) > max {
		return invalidf("%s is longer than %d characters", field, max)
	}
	for i := 0; i < len(v); i++ {
		if c := v[i]; c < 0x20 || c == 0x7f {
			return invalidf("%s contains a control character (a line break or tab?)", field)
		}
	}
	return nil
}

// normalizeSHA256 accepts 64 hex digits, optionally prefixed "sha256:".
func normalizeSHA256(v string) (string, error) {
	v = strings.TrimSpace(v)
	if v == "" {
		return "", nil
	}
	v = strings.TrimPrefix(strings.ToLower(v), "sha256:")
	if len(v) != 64 {
		return "", invalidf("text_sha256 %q is not a SHA-256 digest (64 hex digits)", v)
	}
	if _, err := hex.DecodeString(v); err != nil {
		return "", invalidf("text_sha256 %q is not a SHA-256 digest (64 hex digits)", v)
	}
	return v, nil
}

// prepare validates ev and derives its key. It does not touch the database.
func (s *Store) prepare(ev Event, now time.Time) (*change, error) {
	if s.opts.ReadOnly || s.aead == nil {
		return nil, ErrReadOnly
	}
	c := &change{tenant: ev.Tenant, purpose: ev.Purpose, state: ev.State}
	if c.tenant == "" {
		c.tenant = DefaultTenant
	}
	if c.purpose == "" {
		c.purpose = PurposeOpenTracking
	}
	// The address first: when it is wrong, nothing else about the row matters.
	var nb [maxAddressLen * 2]byte
	key, mac, norm, err := s.subjectKey(nil, nb[:], c.tenant, ev.Address, true)
	if err != nil {
		return nil, err
	}
	c.key, c.mac, c.addr = key, mac, string(norm)
	if err := s.checkPurpose(c.purpose); err != nil {
		return nil, err
	}
	switch ev.State {
	case Granted, Denied, Withdrawn:
	case Unknown:
		return nil, invalidf("state unknown cannot be recorded: it means nobody asked; record granted, denied or withdrawn")
	default:
		return nil, invalidf("unknown state %q: use granted, denied or withdrawn", ev.State)
	}
	occurred := ev.OccurredAt
	if occurred.IsZero() {
		occurred, c.timeIsNow = now, true
	}
	if occurred.After(now.Add(futureSkew)) {
		return nil, invalidf("occurred_at %s is in the future (now is %s); give the time the person acted", occurred.UTC().Format(time.RFC3339), now.UTC().Format(time.RFC3339))
	}
	if occurred.Before(oldestPlausible) {
		return nil, invalidf("occurred_at %s is before 1990; is the date right?", occurred.UTC().Format(time.RFC3339))
	}
	c.occurred = occurred.UnixNano()
	if ev.Method == "" {
		return nil, invalidf("method is required: one of %s", strings.Join(methods, ", "))
	}
	if err := validMethod(ev.Method); err != nil {
		return nil, err
	}
	c.method = ev.Method
	c.source, c.textVer, c.evidence, c.actor = strings.TrimSpace(ev.Source), strings.TrimSpace(ev.TextVersion), strings.TrimSpace(ev.Evidence), ev.Actor
	for _, f := range []struct {
		name, v string
		max     int
	}{{"source", c.source, maxSourceLen}, {"text_version", c.textVer, maxTextVerLen}, {"evidence", c.evidence, maxEvidenceLen}, {"actor", c.actor, maxActorLen}} {
		if err := checkText(f.name, f.v, f.max); err != nil {
			return nil, err
		}
	}
	if c.actor == "" {
		return nil, invalidf("actor is required: who records this event (an API token name, cli:USER)")
	}
	if c.textSHA, err = normalizeSHA256(ev.TextSHA256); err != nil {
		return nil, err
	}
	c.weak = ev.WeakProof
	if c.state == Granted && c.evidence == "" && c.textVer == "" && c.textSHA == "" && !c.weak {
		return nil, invalidf("a grant needs proof: give evidence, text_version or text_sha256, or mark it weak_proof to record it as weak proof (CLI flags --evidence, --text-version, --text-sha256, --weak-proof)")
	}
	c.addrCT = s.sealAddress(mac, norm)
	return c, nil
}

// outcome of applying one change.
type outcome int

const (
	applied    outcome = iota
	unchanged          // same state at the same time: a duplicate or a retry
	stale              // older than the event that set the current state
	suppressed         // older than the subject's erasure
)

// chainHash is the link of the global chain: SHA-256 over a domain
// separator, the previous hash and the event's canonical bytes.
func chainHash(prev [32]byte, body []byte) [32]byte {
	h := sha256.New()
	h.Write([]byte("pixelrelay consent chain v1\n"))
	h.Write(prev[:])
	h.Write(body)
	var out [32]byte
	h.Sum(out[:0])
	return out
}

// writer applies changes inside one write transaction, keeping the chain
// head in memory until flush.
type writer struct {
	s        *Store
	tx       *bbolt.Tx
	subjects *bbolt.Bucket
	events   *bbolt.Bucket
	erased   *bbolt.Bucket
	meta     *bbolt.Bucket
	headSeq  uint64
	headHash [32]byte
	now      func() time.Time
}

func (s *Store) newWriter(tx *bbolt.Tx) (*writer, error) {
	w := &writer{s: s, tx: tx, now: s.now}
	w.subjects, w.events, w.erased, w.meta = tx.Bucket(bucketSubjects), tx.Bucket(bucketEvents), tx.Bucket(bucketErased), tx.Bucket(bucketMeta)
	if w.subjects == nil || w.events == nil || w.erased == nil || w.meta == nil {
		return nil, fmt.Errorf("database %s lacks the consent buckets: %w", s.path, ErrCorrupt)
	}
	// Events only ever append: pack their pages full.
	w.events.FillPercent = 1.0
	if v := w.meta.Get(metaHead); v != nil {
		if len(v) != 40 {
			return nil, fmt.Errorf("chain head has %d bytes: %w", len(v), ErrCorrupt)
		}
		w.headSeq = binary.BigEndian.Uint64(v)
		copy(w.headHash[:], v[8:])
	}
	return w, nil
}

func (w *writer) appendEvent(ev *storedEvent) error {
	ev.seq = w.headSeq + 1
	ev.prevHash = w.headHash
	val := make([]byte, 64, 64+256)
	val = ev.body(val)
	ev.hash = chainHash(ev.prevHash, val[64:])
	copy(val, ev.prevHash[:])
	copy(val[32:], ev.hash[:])
	if err := w.events.Put(seqKey(ev.seq), val); err != nil {
		return err
	}
	w.headSeq, w.headHash = ev.seq, ev.hash
	return nil
}

func (w *writer) flush() error {
	if w.headSeq == 0 {
		return nil
	}
	v := make([]byte, 40)
	binary.BigEndian.PutUint64(v, w.headSeq)
	copy(v[8:], w.headHash[:])
	return w.meta.Put(metaHead, v)
}

// erasedAt returns the time of the subject's last erasure, or 0.
func (w *writer) erasedAt(key []byte) int64 {
	v := w.erased.Get(key)
	if v == nil {
		return 0
	}
	t, _ := binary.Varint(v)
	return t
}

// judge says what applying c would do, without writing: the subject as
// stored (or new), the state c would replace, and the outcome. An event
// given no time of its own happened "now", after whatever is recorded: a
// grant stamped slightly ahead by a skewed clock must not make a
// withdrawal that follows it look older, so its time moves just past the
// current state's.
func (w *writer) judge(c *change) (subject, purposeState, outcome, error) {
	var sub subject
	if v := w.subjects.Get(c.key); v != nil {
		var err error
		if sub, err = decodeSubject(v); err != nil {
			return sub, purposeState{}, 0, fmt.Errorf("subject record: %v: %w", err, ErrCorrupt)
		}
	} else {
		sub.addrCipher = c.addrCT
	}
	if at := w.erasedAt(c.key); at != 0 && c.occurred <= at {
		return sub, purposeState{since: at}, suppressed, nil
	}
	cur, has := sub.find(c.purpose)
	if !has {
		return sub, cur, applied, nil
	}
	if c.timeIsNow && c.occurred <= cur.since && c.state != cur.state {
		c.occurred = cur.since + 1
	}
	switch {
	case c.occurred < cur.since:
		return sub, cur, stale, nil
	case c.occurred == cur.since && c.state == cur.state:
		return sub, cur, unchanged, nil
	case c.occurred == cur.since:
		return sub, cur, 0, conflictf("%s at %s conflicts with the %s already recorded for the same time; which came last?",
			c.state, fromNano(c.occurred).Format(time.RFC3339Nano), cur.state)
	}
	return sub, cur, applied, nil
}

// apply records c unless it is a duplicate, stale or suppressed, and
// returns the outcome with the state it found.
func (w *writer) apply(c *change) (outcome, purposeState, error) {
	sub, cur, out, err := w.judge(c)
	if err != nil || out != applied {
		return out, cur, err
	}
	recorded := w.now()
	ev := storedEvent{
		kind: kindEvent, id: newULID(recorded), tenant: c.tenant, subject: c.mac, purpose: c.purpose,
		state: c.state, previous: cur.state, occurred: c.occurred, recorded: recorded.UnixNano(),
		method: c.method, source: c.source, textVer: c.textVer, textSHA: c.textSHA, evidence: c.evidence,
		actor: c.actor, weak: c.weak,
	}
	if err := w.appendEvent(&ev); err != nil {
		return 0, cur, err
	}
	sub.set(purposeState{purpose: c.purpose, state: c.state, since: c.occurred, seq: ev.seq})
	sub.events = append(sub.events, ev.seq)
	if err := w.subjects.Put(c.key, sub.encode(make([]byte, 0, 64+len(sub.addrCipher)+24*len(sub.purposes)+3*len(sub.events)))); err != nil {
		return 0, cur, err
	}
	return applied, cur, nil
}

// Record appends ev to the subject's history and updates its current state,
// in one durable transaction, and returns the subject's record.
//
// Recording is idempotent: an event with the same state and the same
// occurred_at as the current state records nothing (an API retry is safe).
// An event older than the one that set the current state, or older than
// the subject's erasure, is refused with ErrConflict: the later decision
// stands.
func (s *Store) Record(ctx context.Context, ev Event) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	c, err := s.prepare(ev, s.now())
	if err != nil {
		return Record{}, err
	}
	var rec Record
	err = s.db.Update(func(tx *bbolt.Tx) error {
		w, err := s.newWriter(tx)
		if err != nil {
			return err
		}
		out, cur, err := w.apply(c)
		if err != nil {
			return err
		}
		switch out {
		case stale:
			return conflictf("%s for %s was already set to %s by an event at %s; an event at %s cannot change it (record the change with a later time)",
				c.purpose, c.addr, cur.state, fromNano(cur.since).Format(time.RFC3339Nano), fromNano(c.occurred).Format(time.RFC3339Nano))
		case suppressed:
			return conflictf("%s was erased at %s; an event from before the erasure cannot be recorded",
				c.addr, fromNano(cur.since).Format(time.RFC3339Nano))
		}
		if err := w.flush(); err != nil {
			return err
		}
		rec, err = s.recordIn(tx, c.tenant, c.addr, c.key)
		return err
	})
	if err != nil {
		return Record{}, err
	}
	s.afterWrite()
	return rec, nil
}

// Show returns the subject's current states and full history. An address
// never seen has empty States and History, and no error.
func (s *Store) Show(ctx context.Context, tenant, addr string) (Record, error) {
	if err := ctx.Err(); err != nil {
		return Record{}, err
	}
	if tenant == "" {
		tenant = DefaultTenant
	}
	var nb [maxAddressLen * 2]byte
	key, _, norm, err := s.subjectKey(nil, nb[:], tenant, addr, true)
	if err != nil {
		return Record{}, err
	}
	var rec Record
	err = s.db.View(func(tx *bbolt.Tx) error {
		var err error
		rec, err = s.recordIn(tx, tenant, string(norm), key)
		return err
	})
	return rec, err
}

// History returns the subject's events, oldest first.
func (s *Store) History(ctx context.Context, tenant, addr string) ([]HistoryEntry, error) {
	rec, err := s.Show(ctx, tenant, addr)
	return rec.History, err
}

// recordIn builds the Record of one subject inside tx. key may be nil (a
// read-only store never written).
func (s *Store) recordIn(tx *bbolt.Tx, tenant, addr string, key []byte) (Record, error) {
	rec := Record{Address: addr, Tenant: tenant, States: map[string]PurposeState{}, History: []HistoryEntry{}}
	if key == nil {
		return rec, nil
	}
	rec.Pseudonym = "hmac-sha256:" + hex.EncodeToString(key[len(key)-32:])
	if b := tx.Bucket(bucketErased); b != nil {
		if v := b.Get(key); v != nil {
			if ns, n := binary.Varint(v); n > 0 {
				t := fromNano(ns)
				rec.ErasedAt = &t
			}
		}
	}
	b := tx.Bucket(bucketSubjects)
	if b == nil {
		return rec, nil
	}
	v := b.Get(key)
	if v == nil {
		return rec, nil
	}
	sub, err := decodeSubject(v)
	if err != nil {
		return rec, fmt.Errorf("subject record for %s: %v: %w", addr, err, ErrCorrupt)
	}
	stored, err := s.openAddress(key[len(key)-32:], sub.addrCipher)
	if err != nil {
		return rec, fmt.Errorf("subject %s of tenant %s: %w", rec.Pseudonym, tenant, err)
	}
	rec.Address = stored
	events := tx.Bucket(bucketEvents)
	ids := map[uint64]string{}
	for _, seq := range sub.events {
		ev, err := loadEvent(events, seq)
		if err != nil {
			return rec, err
		}
		h := historyEntry(&ev)
		ids[seq] = h.EventID
		rec.History = append(rec.History, h)
	}
	for _, p := range sub.purposes {
		rec.States[p.purpose] = PurposeState{State: p.state, Since: fromNano(p.since), EventID: ids[p.seq]}
	}
	return rec, nil
}

func loadEvent(events *bbolt.Bucket, seq uint64) (storedEvent, error) {
	if events == nil {
		return storedEvent{}, fmt.Errorf("events bucket missing: %w", ErrCorrupt)
	}
	v := events.Get(seqKey(seq))
	if v == nil {
		return storedEvent{}, fmt.Errorf("event #%d is missing: %w", seq, ErrCorrupt)
	}
	ev, err := decodeEvent(seq, v)
	if err != nil {
		return ev, fmt.Errorf("event #%d: %v: %w", seq, err, ErrCorrupt)
	}
	if ev.kind != kindEvent {
		return ev, fmt.Errorf("event #%d of a live subject is a tombstone: %w", seq, ErrCorrupt)
	}
	return ev, nil
}

func historyEntry(ev *storedEvent) HistoryEntry {
	return HistoryEntry{
		EventID: ulidString(ev.id), Purpose: ev.purpose, State: ev.state, Previous: ev.previous,
		OccurredAt: fromNano(ev.occurred), RecordedAt: fromNano(ev.recorded),
		Method: ev.method, Source: ev.source, TextVersion: ev.textVer, TextSHA256: ev.textSHA,
		Evidence: ev.evidence, Actor: ev.actor, WeakProof: ev.weak,
		Hash: hex.EncodeToString(ev.hash[:]), PrevHash: hex.EncodeToString(ev.prevHash[:]),
	}
}

// Erase removes the subject's address, history and states for tenant (GDPR
// art. 17). Each of its events is replaced by a tombstone holding only the
// event's digests and the subject's keyed hash, so the global chain still
// verifies; the erasure is itself a chained event, recorded without the
// address. Afterwards the subject is unknown (the relay strips), and an
// import of rows dated before the erasure skips it. Erasing a subject with
// nothing stored returns ErrNotFound and writes nothing.
func (s *Store) Erase(ctx context.Context, tenant, addr, actor string) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if s.opts.ReadOnly || s.aead == nil {
		return ErrReadOnly
	}
	if tenant == "" {
		tenant = DefaultTenant
	}
	if err := checkText("actor", actor, maxActorLen); err != nil {
		return err
	}
	if actor == "" {
		return invalidf("actor is required: who records the erasure")
	}
	var nb [maxAddressLen * 2]byte
	key, mac, norm, err := s.subjectKey(nil, nb[:], tenant, addr, true)
	if err != nil {
		return err
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		w, err := s.newWriter(tx)
		if err != nil {
			return err
		}
		v := w.subjects.Get(key)
		if v == nil {
			return fmt.Errorf("nothing is stored for %s in tenant %s: %w", norm, tenant, ErrNotFound)
		}
		sub, err := decodeSubject(v)
		if err != nil {
			return fmt.Errorf("subject record for %s: %v: %w", norm, err, ErrCorrupt)
		}
		for _, seq := range sub.events {
			ev, err := loadEvent(w.events, seq)
			if err != nil {
				return err
			}
			tomb := storedEvent{kind: kindTombstone, prevHash: ev.prevHash, hash: ev.hash, id: ev.id, tenant: ev.tenant, subject: ev.subject}
			if err := w.events.Put(seqKey(seq), tomb.encode(nil)); err != nil {
				return err
			}
		}
		if err := w.subjects.Delete(key); err != nil {
			return err
		}
		recorded := w.now()
		x := storedEvent{kind: kindErasure, id: newULID(recorded), tenant: tenant, subject: mac, recorded: recorded.UnixNano(), actor: actor, erased: sub.events}
		if err := w.appendEvent(&x); err != nil {
			return err
		}
		mark := binary.AppendVarint(nil, recorded.UnixNano())
		mark = binary.AppendUvarint(mark, x.seq)
		if err := w.erased.Put(key, mark); err != nil {
			return err
		}
		return w.flush()
	})
	if err != nil {
		return err
	}
	s.afterWrite()
	return nil
}
