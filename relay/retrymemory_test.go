package relay

import (
	"errors"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
	bolt "go.etcd.io/bbolt"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// countingMemory is the real bbolt retry memory, with a count of the
// writes the relay asks of it and, when failRemember is set, a failing
// write (a full disk, say) that the real file cannot be made to produce on
// demand.
type countingMemory struct {
	RetryMemory
	mu           sync.Mutex
	remembers    int
	failRemember bool
}

func (m *countingMemory) Remember(key string, rcpts []string) error {
	m.mu.Lock()
	m.remembers++
	fail := m.failRemember
	m.mu.Unlock()
	if fail {
		return errors.New("write /var/lib/pixelrelay/pixelrelay.db: no space left on device")
	}
	return m.RetryMemory.Remember(key, rcpts)
}

func (m *countingMemory) count() int {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.remembers
}

func withCountingMemory(mem **countingMemory) func(*Deps) {
	return func(d *Deps) {
		*mem = &countingMemory{RetryMemory: d.RetryMemory}
		d.RetryMemory = *mem
	}
}

// sendPartial sends one message to alice (enforce group) and bob (keep
// group) and returns the client's final reply.
func sendPartial(t *testing.T, h *harness) string {
	t.Helper()
	c := openTx(t, h.addr, "news@acme.example", "alice@example.fr", "bob@example.com")
	c.expect("DATA", "354")
	c.conn.Write(dotStuff([]byte("From: news@acme.example\r\nMessage-ID: <m1@acme.example>\r\nSubject: hi\r\n\r\nhello\r\n")))
	final := c.reply()
	c.cmd("QUIT")
	return final
}

// A retry that fails again for some recipient records who has the
// message in one write, not one per reason to record it.
func TestRetriedPartialFailureRemembersOnce(t *testing.T) {
	var mem *countingMemory
	h := newHarnessDeps(t, nil, withCountingMemory(&mem))
	h.setConsent("bob@example.com", "granted")
	h.up.Inject(relaytest.Fault{Phase: "data", Rcpt: "alice@example.fr", Times: 2,
		Err: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "later"}})
	for i := 1; i <= 2; i++ {
		if r := sendPartial(t, h); !strings.HasPrefix(r, "451 4.4.0") {
			t.Fatalf("attempt %d: %q, want the partial-failure 451", i, r)
		}
		if n := mem.count(); n != i {
			t.Fatalf("after attempt %d the retry memory was written %d times, want %d", i, n, i)
		}
	}
	if r := sendPartial(t, h); !strings.HasPrefix(r, "250") {
		t.Fatalf("third attempt: %q, want 250", r)
	}
	if n := len(h.up.Messages()); n != 2 {
		t.Errorf("upstream got %d messages, want 2 (bob once, alice once)", n)
	}
}

// When neither the DSN nor the retry memory can be written, the client
// still keeps the message, and the operator learns that its retry may
// duplicate the delivered copy.
func TestDSNFailureWithRetryMemoryFailureIsLogged(t *testing.T) {
	var mem *countingMemory
	h := newHarnessDeps(t, nil, withCountingMemory(&mem))
	mem.failRemember = true
	h.up.Inject(relaytest.Fault{Phase: "rcpt", Rcpt: "news@acme.example",
		Err: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}})
	final := partialPermanent(t, h, "")
	if !strings.HasPrefix(final, "451 4.4.0") {
		t.Fatalf("client heard %q, want the partial-failure 451 (no DSN could be sent)", final)
	}
	if n := mem.count(); n != 1 {
		t.Errorf("retry memory written %d times, want 1", n)
	}
	if logs := h.logs.String(); !strings.Contains(logs, "cannot record which recipients have the message") {
		t.Errorf("the failed retry-memory write was not logged:\n%s", logs)
	}
}

// Once everything remembered has expired the memory is empty again, so
// messages stop paying for a digest and a lookup, without waiting for the
// next partial failure to sweep the bucket.
func TestRetryMemoryEmptyAgainAfterExpiry(t *testing.T) {
	db, err := bolt.Open(filepath.Join(t.TempDir(), "m.db"), 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	start := time.Now()
	// The clock is read by the sweep Remember starts in the background.
	var clock atomic.Int64
	clock.Store(start.UnixNano())
	advance := func(d time.Duration) { clock.Add(int64(d)) }
	mem, err := NewRetryMemory(db, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	m := mem.(*boltRetryMemory)
	m.now = func() time.Time { return time.Unix(0, clock.Load()) }
	if !m.Empty() {
		t.Fatal("a new memory is not empty")
	}
	if err := m.Remember("k", []string{"hmac-sha256:aa"}); err != nil {
		t.Fatal(err)
	}
	if m.Empty() {
		t.Fatal("empty right after Remember")
	}
	advance(59 * time.Minute)
	if m.Empty() {
		t.Error("empty before the entry expired")
	}
	advance(2 * time.Minute)
	if !m.Empty() {
		t.Error("still not empty after the only entry expired")
	}
	// A restart finds the unexpired entries of the previous process.
	clock.Store(start.UnixNano())
	if err := m.Remember("k2", []string{"hmac-sha256:bb"}); err != nil {
		t.Fatal(err)
	}
	again, err := NewRetryMemory(db, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	if again.Empty() {
		t.Error("a memory reopened over an unexpired entry is empty")
	}
}
