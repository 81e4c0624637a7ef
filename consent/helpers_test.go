package consent

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

// testNow is the pinned clock of most tests.
var testNow = time.Date(2026, 5, 2, 12, 0, 0, 0, time.UTC)

func openTest(t testing.TB, opts Options) (*Store, string) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "consent.db")
	if opts.Now == nil {
		opts.Now = func() time.Time { return testNow }
	}
	s, err := Open(path, opts)
	if err != nil {
		t.Fatalf("Open: %v", err)
	}
	t.Cleanup(func() { s.Close() })
	return s, path
}

func grant(addr string) Event {
	return Event{Address: addr, State: Granted, Method: MethodWebForm, Source: "test", TextVersion: "v1", Evidence: "form-1", Actor: "test",
		OccurredAt: testNow.Add(-time.Hour)}
}

func mustRecord(t testing.TB, s *Store, ev Event) Record {
	t.Helper()
	rec, err := s.Record(context.Background(), ev)
	if err != nil {
		t.Fatalf("Record(%+v): %v", ev, err)
	}
	return rec
}

func mustLookup(t testing.TB, s *Store, tenant, addr, purpose string) State {
	t.Helper()
	st, err := s.Lookup(context.Background(), tenant, addr, purpose)
	if err != nil {
		t.Fatalf("Lookup(%s, %s, %s): %v", tenant, addr, purpose, err)
	}
	return st
}

// mustReadFile is os.ReadFile for a test: a file that cannot be read is
// the test's failure, never an empty input that passes vacuously.
func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
