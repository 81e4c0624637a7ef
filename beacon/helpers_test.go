package beacon

import (
	"bytes"
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// t0 is a fixed clock reading: 2026-11-28 10:00 UTC.
var t0 = time.Date(2026, 11, 28, 10, 0, 0, 0, time.UTC)

const testBase = "https://beacon.example.com"

// clock is a settable Options.Now.
type clock struct {
	mu sync.Mutex
	t  time.Time
}

func newClock(t time.Time) *clock { return &clock{t: t} }

func (c *clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.t
}

func (c *clock) Set(t time.Time) {
	c.mu.Lock()
	c.t = t
	c.mu.Unlock()
}

// testDB opens a real bbolt file in a temp dir and returns it with its
// path; it is closed when the test ends unless the test closed it.
func testDB(t testing.TB) (*bbolt.DB, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pixelrelay.db")
	return reopenDB(t, path), path
}

func reopenDB(t testing.TB, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, &bbolt.Options{Timeout: time.Second})
	if err != nil {
		t.Fatalf("opening %s: %v", path, err)
	}
	t.Cleanup(func() { db.Close() })
	return db
}

// logBuffer is a goroutine-safe log sink, so tests can read everything the
// package logged.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

func debugLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// open returns Beacons on db with test defaults: the fixed clock, the
// example base, and a flush interval long enough that only explicit
// flushes and Close write, unless the options say otherwise.
func open(t testing.TB, db *bbolt.DB, clk *clock, o Options) *Beacons {
	t.Helper()
	if o.Base == "" {
		o.Base = testBase
	}
	if o.Now == nil {
		o.Now = clk.Now
	}
	if o.FlushInterval == 0 {
		o.FlushInterval = time.Hour
	}
	b, err := Open(db, o)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { b.Close() })
	return b
}

// mustDecide records n recipients and fails the test on error.
func mustDecide(t testing.TB, b *Beacons, tenant, campaign string, n int, now time.Time) (string, bool) {
	t.Helper()
	u, ok, err := b.Decide(tenant, campaign, n, now)
	if err != nil {
		t.Fatalf("Decide(%q, %q, %d): %v", tenant, campaign, n, err)
	}
	return u, ok
}

func mustURL(t testing.TB, b *Beacons, tenant, campaign string, day time.Time) string {
	t.Helper()
	u, err := b.URL(tenant, campaign, day)
	if err != nil {
		t.Fatalf("URL: %v", err)
	}
	return u
}

// pathOf turns a beacon URL into the request path the listener sees.
func pathOf(t testing.TB, u string) string {
	t.Helper()
	if len(u) < len(testBase) || u[:len(testBase)] != testBase {
		t.Fatalf("beacon URL %q does not start with the base %q", u, testBase)
	}
	return u[len(testBase):]
}

// get sends one request straight to the handler.
func get(h http.Handler, method, path string) *httptest.ResponseRecorder {
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest(method, path, nil))
	return rec
}

// statsFor returns the rows of one campaign, across tenants.
func statsFor(t testing.TB, b *Beacons, campaign string) []Stat {
	t.Helper()
	s, err := b.Stats(context.Background(), Filter{Campaign: campaign})
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	return s
}

func loadsOf(t testing.TB, b *Beacons) uint64 {
	t.Helper()
	s, err := b.Stats(context.Background(), Filter{})
	if err != nil {
		t.Fatalf("Stats: %v", err)
	}
	var n uint64
	for _, r := range s {
		n += r.Loads
	}
	return n
}

// txid is the database's last committed transaction id; each write
// transaction (each fsync) adds one.
func txid(t testing.TB, db *bbolt.DB) int {
	t.Helper()
	var id int
	if err := db.View(func(tx *bbolt.Tx) error { id = tx.ID(); return nil }); err != nil {
		t.Fatal(err)
	}
	return id
}
