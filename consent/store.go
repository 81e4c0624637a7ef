package consent

import (
	"bytes"
	"context"
	"crypto/aes"
	"crypto/cipher"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io/fs"
	"os"
	"runtime"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.etcd.io/bbolt"
	berrors "go.etcd.io/bbolt/errors"
)

// Bucket layout. The consent package only ever touches these buckets; other
// packages keep their own buckets in the same file (see DB).
var (
	bucketMeta     = []byte("consent.meta")     // "schema" → uvarint; "head" → seq(8) ‖ hash(32)
	bucketSecrets  = []byte("consent.secrets")  // name → 32 random bytes (Secret)
	bucketSubjects = []byte("consent.subjects") // tenant ‖ 0x00 ‖ HMAC(address) → subject projection
	bucketEvents   = []byte("consent.events")   // seq (8, big endian) → chained event or tombstone
	bucketErased   = []byte("consent.erased")   // tenant ‖ 0x00 ‖ HMAC(address) → erased_at ns ‖ erasure seq (suppression)
)

var (
	metaSchema = []byte("schema")
	metaHead   = []byte("head")
)

const schemaVersion = 1

// Names of the store's own secrets.
const (
	secretPseudonym = "pseudonym" // HMAC key for subjects and audit pseudonyms
	secretAddress   = "address"   // AES-256-GCM key for the stored addresses
)

// DefaultLockTimeout is how long Open waits for another process's lock
// when Options.LockTimeout is zero. bbolt would otherwise wait forever.
const DefaultLockTimeout = 100 * time.Millisecond

// viewRefresh bounds the life of the shared read snapshot used by Lookup.
// A writer that must grow the memory map waits for open read transactions,
// so this is the longest such a writer (ours or another package's) waits.
const viewRefresh = 20 * time.Millisecond

// Options configures Open.
type Options struct {
	// Purposes declares purposes beyond the built-in open_tracking,
	// click_tracking and marketing_email. Events and lookups naming any
	// other purpose are rejected.
	Purposes []string
	// IgnorePlusTag makes bob+news@example.com the same subject as
	// bob@example.com for every operation. Changing it on an existing
	// store leaves records made under the other setting unreachable by
	// lookups, which then answer unknown: the relay fails closed.
	IgnorePlusTag bool
	// LockTimeout is how long Open waits for bbolt's file lock before
	// returning an *InUseError; zero means DefaultLockTimeout. Keep it
	// small: a CLI call must never hang while serve runs.
	LockTimeout time.Duration
	// ReadOnly opens with a shared lock: several readers may run at once,
	// but not while a writer (serve) holds the file. The file must exist.
	ReadOnly bool
	// Now is the clock; nil means time.Now. Tests pin it.
	Now func() time.Time

	// smallMap skips the 1 GiB map reservation, so that a test can make
	// the file outgrow its map (and bbolt remap it) with little data.
	smallMap bool
}

// Store is the consent database. It is safe for concurrent use.
type Store struct {
	db       *bbolt.DB
	path     string
	opts     Options
	now      func() time.Time
	purposes map[string]bool
	declared []string // sorted, for error messages and `show`

	pseudoKey []byte      // nil on a read-only store that has never been written
	aead      cipher.AEAD // nil likewise
	macs      sync.Pool   // of hash.Hash keyed with pseudoKey
	bufs      sync.Pool   // of *keyBuf, so that Lookup does not allocate

	secretsMu sync.Mutex
	secrets   map[string][]byte

	// The shared snapshot for Lookup: see acquireView.
	view      atomic.Pointer[readView]
	viewMu    sync.Mutex
	viewStart sync.Once
	stop      chan struct{}
	stopped   chan struct{}
	closeOnce sync.Once
	closed    bool // under viewMu
	running   bool // under viewMu: the refresher goroutine was started
	// refreshGap, set only by tests, runs between a refresh's Begin and
	// its publication: the window in which a commit can be missed.
	refreshGap func()
}

// Open opens the consent store in the bbolt file at path, creating the file
// if it is absent (unless opts.ReadOnly). A file another process holds gives
// an *InUseError at once (after opts.LockTimeout); a file that is not a
// readable pixelrelay database gives an error wrapping ErrCorrupt and is
// left untouched: it is never recreated.
func Open(path string, opts Options) (*Store, error) {
	if path == "" {
		return nil, errors.New("no database path given (--db FILE)")
	}
	s := &Store{path: path, opts: opts, now: opts.Now, purposes: map[string]bool{}, secrets: map[string][]byte{}}
	if s.now == nil {
		s.now = time.Now
	}
	for _, p := range append([]string{PurposeOpenTracking, PurposeClickTracking, PurposeMarketingEmail}, opts.Purposes...) {
		if err := validPurposeName(p); err != nil {
			return nil, fmt.Errorf("declared purposes: %w", err)
		}
		if !s.purposes[p] {
			s.purposes[p] = true
			s.declared = append(s.declared, p)
		}
	}
	slices.Sort(s.declared)

	fi, statErr := os.Stat(path)
	switch {
	case statErr == nil && fi.IsDir():
		return nil, fmt.Errorf("database %s is a directory; give the path of a file (--db FILE)", path)
	case errors.Is(statErr, fs.ErrNotExist) && opts.ReadOnly:
		return nil, fmt.Errorf("database %s does not exist; check --db, or use --server URL to reach a running pixelrelay: %w", path, fs.ErrNotExist)
	case statErr != nil && !errors.Is(statErr, fs.ErrNotExist):
		return nil, fmt.Errorf("cannot read database %s: %w", path, statErr)
	}

	timeout := opts.LockTimeout
	if timeout <= 0 {
		timeout = DefaultLockTimeout
	}
	bopts := &bbolt.Options{
		Timeout:      timeout,
		ReadOnly:     opts.ReadOnly,
		FreelistType: bbolt.FreelistMapType, // the array freelist degrades badly on large files
	}
	if runtime.GOOS != "windows" && !opts.ReadOnly && !opts.smallMap {
		// Address space only (the file does not grow); it makes the remaps
		// that stall readers rare. On Windows it would resize the file.
		bopts.InitialMmapSize = 1 << 30
	}
	db, err := openBolt(path, bopts)
	if err != nil {
		return nil, err
	}
	s.db = db
	if err := s.init(); err != nil {
		db.Close()
		return nil, err
	}
	s.stop = make(chan struct{})
	s.stopped = make(chan struct{})
	return s, nil
}

func openBolt(path string, bopts *bbolt.Options) (db *bbolt.DB, err error) {
	defer func() {
		// bbolt trusts the meta page of the file; make sure garbage that
		// gets past its checksum is reported rather than crashing.
		if r := recover(); r != nil {
			db, err = nil, corruptErr(path, fmt.Errorf("%v", r))
		}
	}()
	db, err = bbolt.Open(path, 0o600, bopts)
	switch {
	case err == nil:
		return db, nil
	case errors.Is(err, berrors.ErrTimeout):
		return nil, &InUseError{Path: path}
	case errors.Is(err, fs.ErrPermission):
		return nil, fmt.Errorf("cannot open database %s: permission denied; run as the user that owns it or fix its permissions", path)
	case errors.Is(err, fs.ErrNotExist):
		return nil, fmt.Errorf("cannot create database %s: its directory does not exist", path)
	case errors.Is(err, berrors.ErrInvalid), errors.Is(err, berrors.ErrVersionMismatch),
		errors.Is(err, berrors.ErrChecksum), errors.Is(err, berrors.ErrInvalidMapping):
		return nil, corruptErr(path, err)
	}
	var pe *fs.PathError
	if errors.As(err, &pe) {
		return nil, fmt.Errorf("cannot open database %s: %w", path, err)
	}
	// bbolt reports short or garbled files with plain errors ("file size
	// too small"); anything else from Open is about the content.
	return nil, corruptErr(path, err)
}

func corruptErr(path string, cause error) error {
	return &corruptError{path: path, cause: cause}
}

// corruptError is an ErrCorrupt that says what to do about it.
type corruptError struct {
	path  string
	cause error
}

func (e *corruptError) Error() string {
	return fmt.Sprintf("database %s is damaged or is not a pixelrelay database (%v); it was left untouched. "+
		"Restore your latest backup (made with `pixelrelay consent backup`), or move the file aside to start an empty one",
		e.path, e.cause)
}

func (e *corruptError) Is(target error) bool { return target == ErrCorrupt }

// init checks the file's size and schema, creates the buckets and the
// store's own secrets, and loads the keys.
func (s *Store) init() error {
	err := s.db.View(func(tx *bbolt.Tx) error {
		// A file truncated after its meta page was written would fault
		// (SIGBUS) on the first read past its end; refuse it now.
		if st, err := os.Stat(s.path); err == nil && st.Size() < tx.Size() {
			return corruptErr(s.path, fmt.Errorf("file is %d bytes but its pages need %d: truncated", st.Size(), tx.Size()))
		}
		if m := tx.Bucket(bucketMeta); m != nil {
			if v := m.Get(metaSchema); v != nil {
				ver, n := binary.Uvarint(v)
				if n <= 0 {
					return corruptErr(s.path, errors.New("bad schema marker"))
				}
				if ver > schemaVersion {
					return fmt.Errorf("database %s was written by a newer pixelrelay (consent schema %d, this build knows %d); upgrade pixelrelay", s.path, ver, schemaVersion)
				}
			}
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !s.opts.ReadOnly {
		err = s.db.Update(func(tx *bbolt.Tx) error {
			for _, b := range [][]byte{bucketMeta, bucketSecrets, bucketSubjects, bucketEvents, bucketErased} {
				if _, err := tx.CreateBucketIfNotExists(b); err != nil {
					return err
				}
			}
			m := tx.Bucket(bucketMeta)
			if m.Get(metaSchema) == nil {
				if err := m.Put(metaSchema, binary.AppendUvarint(nil, schemaVersion)); err != nil {
					return err
				}
			}
			for _, name := range []string{secretPseudonym, secretAddress} {
				if _, err := secretIn(tx, name, true); err != nil {
					return err
				}
			}
			return nil
		})
		if err != nil {
			return fmt.Errorf("database %s: cannot initialise: %w", s.path, err)
		}
	}
	pk, err := s.Secret(secretPseudonym)
	if errors.Is(err, ErrNotFound) {
		return nil // read-only and never written: nothing to look up
	}
	if err != nil {
		return err
	}
	ak, err := s.Secret(secretAddress)
	if err != nil {
		return err
	}
	s.pseudoKey = pk
	s.macs.New = func() any { return hmac.New(sha256.New, pk) }
	block, err := aes.NewCipher(ak)
	if err != nil {
		return err
	}
	s.aead, err = cipher.NewGCM(block)
	return err
}

// Close stops the Lookup snapshot and closes the file.
func (s *Store) Close() error {
	var err error
	s.closeOnce.Do(func() {
		s.viewMu.Lock()
		s.closed = true
		running := s.running
		s.viewMu.Unlock()
		close(s.stop)
		if running {
			<-s.stopped
		}
		s.refreshView() // closed: only drops the snapshot
		err = s.db.Close()
	})
	return err
}

// Path is the file the store was opened from.
func (s *Store) Path() string { return s.path }

// DB is the underlying bbolt database. Other packages (the relay's delivery
// dedup, the beacon counters) keep their own buckets in the same file; they
// must not touch buckets named "consent.*".
func (s *Store) DB() *bbolt.DB { return s.db }

// Purposes lists the declared purposes, sorted.
func (s *Store) Purposes() []string { return slices.Clone(s.declared) }

// Secret returns the 32-byte secret called name, generating and durably
// storing it on first use; it is stable afterwards. Used for the pseudonym
// key, the beacon signing key and the like. On a read-only store a secret
// that does not exist yet is ErrNotFound.
func (s *Store) Secret(name string) ([]byte, error) {
	if name == "" {
		return nil, errors.New("secret name is empty")
	}
	s.secretsMu.Lock()
	defer s.secretsMu.Unlock()
	if v, ok := s.secrets[name]; ok {
		return slices.Clone(v), nil
	}
	var v []byte
	err := s.db.View(func(tx *bbolt.Tx) error {
		var err error
		v, err = secretIn(tx, name, false)
		return err
	})
	if errors.Is(err, ErrNotFound) && !s.opts.ReadOnly {
		err = s.db.Update(func(tx *bbolt.Tx) error {
			var err error
			v, err = secretIn(tx, name, true)
			return err
		})
	}
	if err != nil {
		return nil, err
	}
	s.secrets[name] = v
	return slices.Clone(v), nil
}

func secretIn(tx *bbolt.Tx, name string, create bool) ([]byte, error) {
	b := tx.Bucket(bucketSecrets)
	if b != nil {
		if v := b.Get([]byte(name)); v != nil {
			if len(v) != 32 {
				return nil, fmt.Errorf("secret %q has %d bytes instead of 32: %w", name, len(v), ErrCorrupt)
			}
			return slices.Clone(v), nil
		}
	}
	if !create {
		return nil, fmt.Errorf("secret %q: %w", name, ErrNotFound)
	}
	if b == nil {
		var err error
		if b, err = tx.CreateBucketIfNotExists(bucketSecrets); err != nil {
			return nil, err
		}
	}
	v := make([]byte, 32)
	rand.Read(v)
	return v, b.Put([]byte(name), v)
}

// Subject is an address as the store knows it: the keyed HMAC of its
// normalised form. That digest is both the address's pseudonym and, with
// the tenant, the key of its consent record, so the relay computes it once
// per recipient and uses it for both. The zero Subject stands for no
// address.
type Subject struct {
	mac [32]byte
	set bool
}

// Pseudonym returns "hmac-sha256:<hex>". The relay writes it to audit logs
// instead of the address; an audit entry can be matched to its consent
// record, and only with this store's key.
func (sub Subject) Pseudonym() string {
	return "hmac-sha256:" + hex.EncodeToString(sub.mac[:])
}

// Subject normalises addr and returns its keyed digest.
func (s *Store) Subject(addr string) (Subject, error) {
	var buf [maxAddressLen * 2]byte
	norm, err := appendNormalized(buf[:0], addr, s.opts.IgnorePlusTag, false)
	if err != nil {
		return Subject{}, err
	}
	if s.pseudoKey == nil {
		return Subject{}, fmt.Errorf("database %s has no pseudonym key yet (opened read-only before first use): %w", s.path, ErrNotFound)
	}
	sub := Subject{set: true}
	s.hmacInto(&sub.mac, norm)
	return sub, nil
}

// Pseudonym is Subject(addr).Pseudonym().
func (s *Store) Pseudonym(addr string) (string, error) {
	sub, err := s.Subject(addr)
	if err != nil {
		return "", err
	}
	return sub.Pseudonym(), nil
}

// keyBuf is Lookup's scratch space. It comes from a pool because the key
// escapes into bbolt and the digest into hash.Hash: on the stack they
// would be heap allocations on every call.
type keyBuf struct {
	key  [maxTenantLen + 1 + 32]byte
	norm [maxAddressLen * 2]byte
	mac  [32]byte
}

func (s *Store) hmacInto(out *[32]byte, norm []byte) {
	h := s.macs.Get().(hash.Hash)
	h.Reset()
	h.Write(norm)
	h.Sum(out[:0])
	s.macs.Put(h)
}

// maxTenantLen bounds tenant names, which are part of every key.
const maxTenantLen = 128

func validTenant(t string) error {
	if t == "" || len(t) > maxTenantLen {
		return invalidf("tenant %q must be 1 to %d characters", t, maxTenantLen)
	}
	for i := 0; i < len(t); i++ {
		c := t[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '.' || c == '_' || c == '-' || c == '@' || c == '+') {
			return invalidf("tenant %q may only use letters, digits and . _ - @ +", t)
		}
	}
	return nil
}

func (s *Store) checkPurpose(p string) error {
	if s.purposes[p] {
		return nil
	}
	return invalidf("purpose %q is not declared; declared purposes: %s (declare more with serve's purposes setting)", p, strings.Join(s.declared, ", "))
}

// subjectKey appends tenant ‖ 0x00 ‖ HMAC(normalised address) to dst and
// returns it with the digest and the normalised address (which aliases
// scratch).
func (s *Store) subjectKey(dst, scratch []byte, tenant, addr string, strict bool) (key []byte, mac [32]byte, norm []byte, err error) {
	if err = validTenant(tenant); err != nil {
		return nil, mac, nil, err
	}
	norm, err = appendNormalized(scratch[:0], addr, s.opts.IgnorePlusTag, strict)
	if err != nil {
		return nil, mac, nil, err
	}
	if s.pseudoKey == nil {
		return nil, mac, norm, nil // read-only, never written: no subject exists
	}
	s.hmacInto(&mac, norm)
	dst = append(dst, tenant...)
	dst = append(dst, 0)
	dst = append(dst, mac[:]...)
	return dst, mac, norm, nil
}

// lookupKey is subjectKey for the hot path, inside buf.
func (s *Store) lookupKey(buf *keyBuf, tenant, addr string) ([]byte, error) {
	if err := validTenant(tenant); err != nil {
		return nil, err
	}
	norm, err := appendNormalized(buf.norm[:0], addr, s.opts.IgnorePlusTag, false)
	if err != nil || s.pseudoKey == nil {
		return nil, err
	}
	s.hmacInto(&buf.mac, norm)
	return buf.subjectKey(tenant), nil
}

// subjectKey is the subjects bucket's key for buf.mac in tenant.
func (buf *keyBuf) subjectKey(tenant string) []byte {
	key := append(buf.key[:0], tenant...)
	key = append(key, 0)
	return append(key, buf.mac[:]...)
}

func (s *Store) sealAddress(mac [32]byte, norm []byte) []byte {
	// The nonce derives from the HMAC of the plaintext, so it repeats only
	// for the same plaintext (deterministic, SIV-like): no nonce reuse.
	return s.aead.Seal(nil, mac[:12], norm, nil)
}

func (s *Store) openAddress(mac []byte, ct []byte) (string, error) {
	if s.aead == nil {
		return "", errors.New("no address key")
	}
	p, err := s.aead.Open(nil, mac[:12], ct, nil)
	if err != nil {
		return "", fmt.Errorf("stored address does not decrypt: %w", ErrCorrupt)
	}
	return string(p), nil
}

// readView is a read transaction shared by every concurrent Lookup. A
// bbolt read transaction per lookup costs two mutex round trips in bbolt,
// and with 64 SMTP sessions on two cores the losers of that mutex park and
// wait for a whole scheduling round: that is where the latency tail came
// from. A shared snapshot costs one atomic add. Bucket.Get on a read-only
// transaction only reads the memory map (and bumps an atomic counter), so
// concurrent use is safe.
type readView struct {
	tx       *bbolt.Tx
	subjects *bbolt.Bucket
	refs     atomic.Int64 // 1 for the store's own reference, plus one per lookup
}

func (v *readView) release() {
	if v.refs.Add(-1) == 0 {
		v.tx.Rollback()
	}
}

// acquireView returns the current snapshot with a reference held, or nil
// when there is none (then Lookup opens its own transaction).
func (s *Store) acquireView() *readView {
	s.viewStart.Do(s.startRefresher)
	v := s.view.Load()
	if v == nil {
		return nil
	}
	for {
		n := v.refs.Load()
		if n <= 0 {
			return nil // retired under us
		}
		if v.refs.CompareAndSwap(n, n+1) {
			return v
		}
	}
}

func (s *Store) startRefresher() {
	s.viewMu.Lock()
	if s.closed {
		s.viewMu.Unlock()
		return
	}
	s.running = true
	s.viewMu.Unlock()
	s.refreshView()
	go func() {
		defer close(s.stopped)
		t := time.NewTicker(viewRefresh)
		defer t.Stop()
		for {
			select {
			case <-s.stop:
				return
			case <-t.C:
				s.refreshView()
			}
		}
	}()
}

// refreshView replaces the snapshot. It drops the old one before opening
// the new one: a writer waiting to grow the map blocks new read
// transactions, and must first see the old one closed.
func (s *Store) refreshView() {
	s.viewMu.Lock()
	defer s.viewMu.Unlock()
	if old := s.view.Swap(nil); old != nil {
		old.release()
	}
	if s.closed {
		return
	}
	tx, err := s.db.Begin(false)
	if err != nil {
		return // lookups fall back to their own transactions
	}
	if s.refreshGap != nil {
		s.refreshGap()
	}
	v := &readView{tx: tx, subjects: tx.Bucket(bucketSubjects)}
	v.refs.Store(1)
	s.view.Store(v)
}

// afterWrite publishes a fresh snapshot after one of our commits, so that a
// Lookup that starts after Record returns sees the new state. It must not
// skip when the view is momentarily nil: the refresher may be between
// dropping the old snapshot and publishing one it began before our commit.
// refreshView holds viewMu, so ours begins after that one is published.
func (s *Store) afterWrite() {
	s.viewMu.Lock()
	running := s.running
	s.viewMu.Unlock()
	if running {
		s.refreshView()
	}
}

// Lookup returns the consent state of addr for purpose in tenant. It is the
// relay's hot path, called per RCPT by many concurrent sessions: for an
// ASCII address it allocates nothing. Anything but Granted means no
// tracking; on error the state is Unknown and the caller must fail closed.
//
// Unlike the other methods, Lookup does not read an empty tenant as
// DefaultTenant: a tenant mapping that produced nothing must not fall back
// to another controller's consents.
func (s *Store) Lookup(ctx context.Context, tenant, addr, purpose string) (State, error) {
	if !s.purposes[purpose] {
		return Unknown, s.checkPurpose(purpose)
	}
	buf, _ := s.bufs.Get().(*keyBuf)
	if buf == nil {
		buf = new(keyBuf)
	}
	defer s.bufs.Put(buf)
	key, err := s.lookupKey(buf, tenant, addr)
	if err != nil || key == nil {
		return Unknown, err
	}
	return s.lookupAt(ctx, tenant, key, purpose)
}

// LookupSubject is Lookup for an address already turned into a Subject.
func (s *Store) LookupSubject(ctx context.Context, tenant string, sub Subject, purpose string) (State, error) {
	if !s.purposes[purpose] {
		return Unknown, s.checkPurpose(purpose)
	}
	if !sub.set {
		return Unknown, fmt.Errorf("consent lookup without an address (a zero Subject): %w", ErrInvalidInput)
	}
	if err := validTenant(tenant); err != nil {
		return Unknown, err
	}
	buf, _ := s.bufs.Get().(*keyBuf)
	if buf == nil {
		buf = new(keyBuf)
	}
	defer s.bufs.Put(buf)
	buf.mac = sub.mac
	return s.lookupAt(ctx, tenant, buf.subjectKey(tenant), purpose)
}

// lookupAt reads purpose's state from the record at key. key may live in
// a pooled buffer: it is not kept past the return.
func (s *Store) lookupAt(ctx context.Context, tenant string, key []byte, purpose string) (State, error) {
	if v := s.acquireView(); v != nil {
		st, err := stateIn(v.subjects, tenant, key, purpose)
		v.release()
		return st, err
	}
	// No snapshot: a transaction of our own. Beginning one can wait (a
	// writer that must remap the file waits for every reader, and new
	// readers queue behind it), and the relay's deadline must still hold.
	if ctx.Done() == nil {
		return s.lookupTx(tenant, key, purpose)
	}
	type answer struct {
		st  State
		err error
	}
	ch := make(chan answer, 1)
	key = bytes.Clone(key) // the caller's buffer goes back to its pool when we return
	go func() {
		st, err := s.lookupTx(tenant, key, purpose)
		ch <- answer{st, err}
	}()
	select {
	case a := <-ch:
		return a.st, a.err
	case <-ctx.Done():
		return Unknown, fmt.Errorf("consent lookup gave up waiting for the database: %w", ctx.Err())
	}
}

func (s *Store) lookupTx(tenant string, key []byte, purpose string) (State, error) {
	var st State
	err := s.db.View(func(tx *bbolt.Tx) (err error) {
		st, err = stateIn(tx.Bucket(bucketSubjects), tenant, key, purpose)
		return err
	})
	if err != nil {
		return Unknown, err
	}
	return st, nil
}

// stateIn reads purpose's state from the subject record at key in b (the
// subjects bucket, nil before the first write).
func stateIn(b *bbolt.Bucket, tenant string, key []byte, purpose string) (State, error) {
	if b == nil {
		return Unknown, nil
	}
	val := b.Get(key)
	if val == nil {
		return Unknown, nil
	}
	st, ok := subjectStateOf(val, purpose)
	if !ok {
		return Unknown, fmt.Errorf("consent record for %s is unreadable: %w", tenant, ErrCorrupt)
	}
	return st, nil
}
