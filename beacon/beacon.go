package beacon

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/url"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
)

// Defaults for Options.
const (
	DefaultMaxAge        = 90 * 24 * time.Hour
	DefaultMinBatch      = 50
	DefaultFlushInterval = time.Second
)

// Options configure Open. The zero value is valid for statistics only;
// handing out beacons needs Base.
type Options struct {
	// Base is the public URL of the beacon listener as recipients' mail
	// clients reach it, e.g. https://beacon.example.com; beacon URLs are
	// Base + "/b/" + token + ".gif". A path prefix is kept, for a reverse
	// proxy that mounts the listener below one.
	Base string
	// MinBatch is the small-batch guard: a campaign gets beacons only once
	// it has this many non-consenting recipients on a UTC day. Default 50.
	MinBatch int
	// MaxAge is how long a token is honoured: through the end of the UTC
	// day MaxAge after its day. Default 90 days.
	MaxAge time.Duration
	// KeepRetiredKeys stops Open from deleting retired keys whose tokens
	// have all expired under MaxAge. A short-lived opener that does not
	// know the server's MaxAge (rewrite --action beacon --db) sets it, so
	// that it cannot delete a key a server with a longer MaxAge still
	// verifies with.
	KeepRetiredKeys bool
	// FlushInterval is how often counts go to the database, in one
	// transaction. A crash loses at most this much counting, never mail.
	// Default one second.
	FlushInterval time.Duration
	// Registerer receives the pixelrelay_beacon_* metrics; nil keeps them
	// private.
	Registerer prometheus.Registerer
	// Logger gets flush failures. Nothing about a request is ever logged.
	Logger *slog.Logger
	// Now is the clock; nil means time.Now.
	Now func() time.Time
}

// validate fills in defaults and reports every problem at once.
func (o *Options) validate() error {
	var errs []error
	if o.MinBatch == 0 {
		o.MinBatch = DefaultMinBatch
	}
	if o.MinBatch < 1 {
		errs = append(errs, fmt.Errorf("beacon: min batch %d must be at least 1", o.MinBatch))
	}
	if o.MaxAge == 0 {
		o.MaxAge = DefaultMaxAge
	}
	if o.MaxAge < 24*time.Hour {
		errs = append(errs, fmt.Errorf("beacon: max age %s is shorter than a day; tokens carry a day, not a time", o.MaxAge))
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = DefaultFlushInterval
	}
	if o.FlushInterval < 0 {
		errs = append(errs, fmt.Errorf("beacon: flush interval %s is negative", o.FlushInterval))
	}
	if o.Base != "" {
		base, err := normaliseBase(o.Base)
		if err != nil {
			errs = append(errs, err)
		}
		o.Base = base
	}
	if o.Logger == nil {
		o.Logger = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	if o.Now == nil {
		o.Now = time.Now
	}
	return errors.Join(errs...)
}

func normaliseBase(s string) (string, error) {
	u, err := url.Parse(s)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return "", fmt.Errorf("beacon: base %q is not an http(s) URL such as https://beacon.example.com", s)
	}
	if u.RawQuery != "" || u.Fragment != "" || u.User != nil {
		return "", fmt.Errorf("beacon: base %q must not carry a query, fragment or user info", s)
	}
	return strings.TrimRight(s, "/"), nil
}

// ErrNoBase is returned by Decide and URL when Options.Base is empty.
var ErrNoBase = errors.New("beacon: no public base URL configured (--beacon-base)")

// ErrClosed is returned after Close.
var ErrClosed = errors.New("beacon: closed")

// Beacons signs beacon URLs, counts campaign recipients and image loads,
// and serves the beacon endpoint and statistics. It is safe for
// concurrent use.
type Beacons struct {
	db         *bbolt.DB
	path       string // db.Path(), which is empty once db is closed
	opts       Options
	maxAgeDays uint32
	keys       atomic.Pointer[keyring]
	metrics    *metrics

	// entries is an immutable map, replaced whole (copy on write, under
	// mu) when an entry is added or evicted. The load path reads it without
	// a lock: a shared lock's counter is one more cache line that every
	// core writes on every load.
	mu         sync.Mutex
	entries    atomic.Pointer[map[string]*entry]
	evictAfter int

	// flushMu serialises flushes, decisions and statistics, so that each
	// sees stored plus pending counts exactly once.
	flushMu sync.Mutex
	closed  bool

	stop chan struct{}
	done chan struct{}
}

// entry is the in-memory side of one (tenant, campaign, day) counter.
type entry struct {
	key string // counter key in the database
	// loads is pending; evict sets deadLoads (only while it is 0), and a
	// load that finds the bit set goes to the entry that replaced this one.
	loads atomic.Uint64
	// The rest is guarded by flushMu.
	recipients, beaconRecipients uint64 // pending
	total                        uint64 // the day's recipients, stored and pending
	totalKnown                   bool
	idle                         int // flushes in a row with nothing pending
}

// evictAfter is how many idle flushes an entry survives. Evicting costs
// only a database read when the campaign comes back.
const evictAfter = 120

// deadLoads marks an evicted entry's load counter.
const deadLoads = 1 << 63

// Open returns a Beacons that keeps its counters and keys in db, which
// must be writable. On first use it creates the signing key. Call Close
// to flush the counters; it does not close db.
func Open(db *bbolt.DB, opts Options) (*Beacons, error) {
	if err := opts.validate(); err != nil {
		return nil, err
	}
	if db.IsReadOnly() {
		return nil, fmt.Errorf("beacon: database %s is open read-only; beacons need to write counters", db.Path())
	}
	now := opts.Now()
	keys, err := LoadKeys(db, now)
	if err != nil {
		return nil, err
	}
	if !opts.KeepRetiredKeys {
		if err := pruneKeys(db, keys, opts.MaxAge, now); err != nil {
			return nil, fmt.Errorf("beacon: deleting expired signing keys from %s: %w", db.Path(), err)
		}
	}
	kr, err := newKeyring(keys)
	if err != nil {
		return nil, err
	}
	m, err := newMetrics(opts.Registerer)
	if err != nil {
		return nil, err
	}
	b := &Beacons{
		db:         db,
		path:       db.Path(),
		opts:       opts,
		maxAgeDays: uint32((opts.MaxAge + 24*time.Hour - 1) / (24 * time.Hour)),
		metrics:    m,
		evictAfter: evictAfter,
		stop:       make(chan struct{}),
		done:       make(chan struct{}),
	}
	b.keys.Store(kr)
	b.entries.Store(&map[string]*entry{})
	go b.flusher()
	return b, nil
}

func (b *Beacons) flusher() {
	defer close(b.done)
	t := time.NewTicker(b.opts.FlushInterval)
	defer t.Stop()
	for {
		select {
		case <-b.stop:
			return
		case <-t.C:
			// Failures are logged and the counts kept for the next tick.
			_ = b.Flush()
		}
	}
}

// Close stops the periodic flush and writes the pending counts. Shut the
// HTTP servers down first: loads counted after Close are not stored.
func (b *Beacons) Close() error {
	b.flushMu.Lock()
	if b.closed {
		b.flushMu.Unlock()
		return nil
	}
	b.closed = true
	b.flushMu.Unlock()
	close(b.stop)
	<-b.done
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	return b.flushLocked()
}

// Flush writes the pending counts to the database now, in one transaction.
func (b *Beacons) Flush() error {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	return b.flushLocked()
}

func (b *Beacons) flushLocked() error {
	type pending struct {
		e *entry
		c counts
	}
	var batch []pending
	deltas := map[string]counts{}
	// No eviction runs concurrently (it is part of this function), so no
	// entry in the map is dead and Swap cannot clear a dead mark.
	for _, e := range *b.entries.Load() {
		c := counts{recipients: e.recipients, beaconRecipients: e.beaconRecipients, loads: e.loads.Swap(0)}
		if c.zero() {
			e.idle++
			continue
		}
		e.recipients, e.beaconRecipients, e.idle = 0, 0, 0
		batch = append(batch, pending{e, c})
		d := deltas[e.key]
		d.add(c)
		deltas[e.key] = d
	}
	if len(batch) > 0 {
		if err := b.db.Update(func(tx *bbolt.Tx) error { return addCounts(tx, deltas) }); err != nil {
			// Put the counts back: they go out with the next flush.
			for _, p := range batch {
				p.e.loads.Add(p.c.loads)
				p.e.recipients += p.c.recipients
				p.e.beaconRecipients += p.c.beaconRecipients
			}
			b.metrics.flushErrors.Inc()
			b.opts.Logger.Error("beacon counters not written; they stay in memory and are retried",
				"db", b.path, "counters", len(batch), "error", err.Error())
			return fmt.Errorf("beacon: writing counters to %s: %w", b.path, err)
		}
	}
	b.evict()
	return nil
}

// evict drops entries idle for evictAfter flushes. An entry is dead once
// its load counter moves from 0 to deadLoads, so a load racing with the
// eviction either lands first (and the entry stays) or sees the mark and
// moves on to a fresh entry: none is lost. Callers hold flushMu.
func (b *Beacons) evict() {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := *b.entries.Load()
	dead := 0
	for _, e := range m {
		if e.idle >= b.evictAfter && e.recipients == 0 && e.beaconRecipients == 0 && e.loads.CompareAndSwap(0, deadLoads) {
			dead++
		}
	}
	if dead == 0 {
		return
	}
	live := make(map[string]*entry, len(m)-dead)
	for k, e := range m {
		if e.loads.Load()&deadLoads == 0 {
			live[k] = e
		}
	}
	b.entries.Store(&live)
}

// entryFor returns the live entry for subject, creating it. Callers hold
// flushMu, so no eviction runs and the entry stays live while they use it.
func (b *Beacons) entryFor(subject []byte) *entry {
	if e := (*b.entries.Load())[string(subject)]; e != nil {
		return e
	}
	return b.entryLocked(subject)
}

// entryLocked finds or adds the entry under mu. There the map is current:
// an eviction marks entries dead and publishes the map without them in one
// hold of mu, so no dead entry is found here.
func (b *Beacons) entryLocked(subject []byte) *entry {
	b.mu.Lock()
	defer b.mu.Unlock()
	m := *b.entries.Load()
	if e := m[string(subject)]; e != nil {
		return e
	}
	e := newEntry(subject)
	n := make(map[string]*entry, len(m)+1)
	for k, v := range m {
		n[k] = v
	}
	n[string(subject)] = e
	b.entries.Store(&n)
	return e
}

func newEntry(subject []byte) *entry {
	day, tenant, campaign, _ := parseSubject(subject)
	return &entry{key: string(counterKey(string(tenant), DayString(dayTime(day)), string(campaign)))}
}

// countLoad adds one load without taking a lock, unless the campaign-day
// is new to memory or its entry is being evicted.
func (b *Beacons) countLoad(subject []byte) {
	b.countLoadFrom((*b.entries.Load())[string(subject)], subject)
}

// countLoadFrom counts a load on e, the entry a lookup found for subject
// (nil if none), which may have been evicted since.
func (b *Beacons) countLoadFrom(e *entry, subject []byte) {
	for {
		if e == nil {
			e = b.entryLocked(subject)
		}
		if e.loads.Add(1)&deadLoads == 0 {
			return
		}
		// Evicted between the lookup and the add: that add went to a
		// counter nobody reads; wait on mu for the new map and count again.
		e = nil
	}
}

func checkPair(tenant, campaign string) error {
	if err := checkKey("tenant", tenant); err != nil {
		return err
	}
	return checkKey("campaign key", campaign)
}

// decision is what decide found, for Decide and the API.
type decision struct {
	subject []byte
	day     time.Time
	total   uint64
	beacon  bool
}

func (b *Beacons) decide(tenant, campaign string, recipients int, now time.Time, record bool) (decision, error) {
	if err := checkPair(tenant, campaign); err != nil {
		return decision{}, err
	}
	if recipients < 0 {
		return decision{}, fmt.Errorf("beacon: negative recipient count %d", recipients)
	}
	day := epochDay(now)
	d := decision{subject: appendSubject(nil, tenant, campaign, day), day: dayTime(day)}
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	if b.closed {
		return decision{}, ErrClosed
	}
	e := b.entryFor(d.subject)
	if !e.totalKnown {
		// Nothing is pending for an entry whose total is unknown: only this
		// function adds recipients, and it sets totalKnown first. With
		// flushMu held, the stored value is everything flushed.
		var stored counts
		err := b.db.View(func(tx *bbolt.Tx) (err error) {
			stored, err = storedCounts(tx, []byte(e.key))
			return err
		})
		if err != nil {
			return decision{}, fmt.Errorf("beacon: reading the batch counter from %s: %w", b.path, err)
		}
		e.total, e.totalKnown = stored.recipients, true
	}
	d.total = e.total + uint64(recipients)
	d.beacon = d.total >= uint64(b.opts.MinBatch)
	if record {
		e.total = d.total
		e.recipients += uint64(recipients)
		if d.beacon {
			e.beaconRecipients += uint64(recipients)
			b.metrics.decisions[true].Add(float64(recipients))
		} else {
			b.metrics.decisions[false].Add(float64(recipients))
		}
	}
	return d, nil
}

// Decide records recipients more non-consenting recipients for the
// campaign on now's UTC day and says whether their copies get the beacon:
// ok is true once the day's total, these included, reaches MinBatch. Then
// url is the campaign's beacon URL, the same for every recipient that day.
// Below the minimum, strip the pixels. The count is written with the next
// flush, not one fsync per message. An error means strip (fail closed).
func (b *Beacons) Decide(tenant, campaign string, recipients int, now time.Time) (url string, ok bool, err error) {
	if b.opts.Base == "" {
		return "", false, ErrNoBase
	}
	d, err := b.decide(tenant, campaign, recipients, now, true)
	if err != nil || !d.beacon {
		return "", false, err
	}
	return JoinURL(b.opts.Base, b.keys.Load().sign(d.subject)), true, nil
}

// Check says whether recipients more would reach the minimum batch, without
// recording them: for dry runs, which must not move the counters.
func (b *Beacons) Check(tenant, campaign string, recipients int, now time.Time) (bool, error) {
	d, err := b.decide(tenant, campaign, recipients, now, false)
	return d.beacon, err
}

// Token returns the signed token for a campaign on day's UTC day. It is
// the same for every recipient; only a key rotation changes it.
func (b *Beacons) Token(tenant, campaign string, day time.Time) (string, error) {
	if err := checkPair(tenant, campaign); err != nil {
		return "", err
	}
	return b.keys.Load().sign(appendSubject(nil, tenant, campaign, epochDay(day))), nil
}

// URL returns the campaign's beacon URL for day's UTC day, without the
// small-batch guard: use Decide to hand beacons out.
func (b *Beacons) URL(tenant, campaign string, day time.Time) (string, error) {
	if b.opts.Base == "" {
		return "", ErrNoBase
	}
	tok, err := b.Token(tenant, campaign, day)
	if err != nil {
		return "", err
	}
	return JoinURL(b.opts.Base, tok), nil
}

// JoinURL builds a beacon URL from a base URL and a token.
func JoinURL(base, token string) string {
	return strings.TrimRight(base, "/") + "/b/" + token + ".gif"
}

// Stats returns the statistics matching f, sorted by tenant, day and
// campaign, including counts not flushed yet.
func (b *Beacons) Stats(ctx context.Context, f Filter) ([]Stat, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	acc := map[string]counts{}
	if err := b.db.View(func(tx *bbolt.Tx) error { return scanStats(tx, f, acc) }); err != nil {
		return nil, fmt.Errorf("beacon: reading statistics from %s: %w", b.path, err)
	}
	for _, e := range *b.entries.Load() {
		p := counts{recipients: e.recipients, beaconRecipients: e.beaconRecipients, loads: e.loads.Load()}
		if p.zero() {
			continue
		}
		tenant, day, campaign, _ := splitCounterKey([]byte(e.key))
		if !f.matches(tenant, day, campaign) {
			continue
		}
		c := acc[e.key]
		c.add(p)
		acc[e.key] = c
	}
	return sortedStats(acc), nil
}

// RotateKey adds a new signing key and signs with it from now on; see the
// package function RotateKey. It is what the admin API calls, since a
// running server holds the database.
func (b *Beacons) RotateKey(revokeOld bool) (KeyInfo, error) {
	b.flushMu.Lock()
	defer b.flushMu.Unlock()
	if b.closed {
		return KeyInfo{}, ErrClosed
	}
	now := b.opts.Now()
	ki, err := RotateKey(b.db, RotateOptions{Now: now, RevokeOld: revokeOld})
	if err != nil {
		return KeyInfo{}, err
	}
	keys, err := LoadKeys(b.db, now)
	if err != nil {
		return KeyInfo{}, err
	}
	kr, err := newKeyring(keys)
	if err != nil {
		return KeyInfo{}, err
	}
	b.keys.Store(kr)
	b.opts.Logger.Info("beacon signing key rotated", "key_id", ki.ID, "old_keys_revoked", revokeOld)
	return ki, nil
}

// Keys lists the signing keys, newest first, without secrets.
func (b *Beacons) Keys() ([]KeyInfo, error) { return ListKeys(b.db) }
