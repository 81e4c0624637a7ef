package consent

import (
	"bytes"
	"context"
	"errors"
	"os"
	"strings"
	"testing"
	"time"
)

func TestRecordShowLookup(t *testing.T) {
	s, _ := openTest(t, Options{})
	ctx := context.Background()
	if st := mustLookup(t, s, DefaultTenant, "bob@example.com", PurposeOpenTracking); st != Unknown {
		t.Fatalf("never-seen subject is %s, want unknown", st)
	}
	rec := mustRecord(t, s, grant("Bob@Example.COM"))
	if rec.Address != "bob@example.com" || rec.Tenant != DefaultTenant {
		t.Errorf("record address/tenant = %q/%q", rec.Address, rec.Tenant)
	}
	ps, ok := rec.States[PurposeOpenTracking]
	if !ok || ps.State != Granted || ps.EventID == "" || !ps.Since.Equal(testNow.Add(-time.Hour)) {
		t.Errorf("states = %+v", rec.States)
	}
	if len(rec.History) != 1 {
		t.Fatalf("history has %d entries", len(rec.History))
	}
	h := rec.History[0]
	if h.EventID != ps.EventID || h.Previous != Unknown || h.State != Granted || h.Method != MethodWebForm ||
		h.Evidence != "form-1" || h.TextVersion != "v1" || h.Actor != "test" || h.WeakProof || len(h.Hash) != 64 ||
		h.PrevHash != strings.Repeat("0", 64) || !h.RecordedAt.Equal(testNow) {
		t.Errorf("history entry = %+v", h)
	}
	for _, a := range []string{"bob@example.com", "BOB@EXAMPLE.COM", " bob@Example.com "} {
		if st := mustLookup(t, s, DefaultTenant, a, PurposeOpenTracking); st != Granted {
			t.Errorf("Lookup(%q) = %s, want granted", a, st)
		}
	}
	if st := mustLookup(t, s, DefaultTenant, "bob@example.com", PurposeClickTracking); st != Unknown {
		t.Errorf("another purpose is %s, want unknown", st)
	}
	// A grant to one controller does not leak to another.
	if st := mustLookup(t, s, "brand-b", "bob@example.com", PurposeOpenTracking); st != Unknown {
		t.Errorf("tenant brand-b sees %s, want unknown", st)
	}

	w := Event{Address: "bob@example.com", State: Withdrawn, Method: MethodPreferenceCenter, Actor: "test", OccurredAt: testNow.Add(-time.Minute)}
	rec = mustRecord(t, s, w)
	if rec.States[PurposeOpenTracking].State != Withdrawn || len(rec.History) != 2 {
		t.Fatalf("after withdraw: %+v", rec)
	}
	if rec.History[1].Previous != Granted || rec.History[1].PrevHash != rec.History[0].Hash {
		t.Errorf("second event does not chain to the first: %+v", rec.History[1])
	}
	if st := mustLookup(t, s, DefaultTenant, "bob@example.com", PurposeOpenTracking); st != Withdrawn {
		t.Errorf("after withdraw Lookup = %s", st)
	}
	hist, err := s.History(ctx, "", "bob@example.com")
	if err != nil || len(hist) != 2 {
		t.Errorf("History = %d entries, %v", len(hist), err)
	}
	if err := s.VerifyChain(ctx); err != nil {
		t.Errorf("VerifyChain: %v", err)
	}
}

func TestRecordRejectsBadInput(t *testing.T) {
	s, _ := openTest(t, Options{Purposes: []string{"newsletter_ab"}})
	base := grant("bob@example.com")
	tests := []struct {
		name string
		edit func(*Event)
		want string
	}{
		// Each row: one bad field, and words the operator needs to see.
		{"invalid address", func(e *Event) { e.Address = "not-an-address" }, "no @"},
		{"display name form", func(e *Event) { e.Address = "Bob <bob@example.com>" }, "bare email address"},
		{"undeclared purpose", func(e *Event) { e.Purpose = "profiling" }, "not declared"},
		{"unknown state", func(e *Event) { e.State = "maybe" }, "unknown state"},
		{"unknown is not recordable", func(e *Event) { e.State = Unknown }, "cannot be recorded"},
		{"future timestamp", func(e *Event) { e.OccurredAt = testNow.Add(time.Hour) }, "in the future"},
		{"implausible past", func(e *Event) { e.OccurredAt = time.Date(1970, 1, 2, 0, 0, 0, 0, time.UTC) }, "before 1990"},
		{"unknown method", func(e *Event) { e.Method = "telepathy" }, "unknown method"},
		{"missing method", func(e *Event) { e.Method = "" }, "method is required"},
		{"bad sha256", func(e *Event) { e.TextSHA256 = "abc" }, "64 hex digits"},
		{"control character", func(e *Event) { e.Evidence = "a\nb" }, "control character"},
		{"missing actor", func(e *Event) { e.Actor = "" }, "actor is required"},
		{"bad tenant", func(e *Event) { e.Tenant = "a b" }, "tenant"},
		{"grant without proof", func(e *Event) { e.Evidence, e.TextVersion = "", "" }, "--weak-proof"},
	}
	for _, tc := range tests {
		ev := base
		tc.edit(&ev)
		_, err := s.Record(context.Background(), ev)
		if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want ErrInvalidInput mentioning %q", tc.name, err, tc.want)
		}
	}
	// Nothing of the above was stored.
	rec, err := s.Show(context.Background(), "", "bob@example.com")
	if err != nil || len(rec.History) != 0 {
		t.Errorf("rejected events left history %+v (%v)", rec.History, err)
	}
	// A declared extra purpose works.
	ev := base
	ev.Purpose = "newsletter_ab"
	mustRecord(t, s, ev)
}

func TestWeakProof(t *testing.T) {
	s, _ := openTest(t, Options{})
	ev := grant("weak@example.com")
	ev.Evidence, ev.TextVersion, ev.WeakProof = "", "", true
	rec := mustRecord(t, s, ev)
	if !rec.History[0].WeakProof {
		t.Errorf("grant without proof recorded without the weak flag: %+v", rec.History[0])
	}
	// A withdrawal never needs proof: withdrawing must be as easy as granting.
	mustRecord(t, s, Event{Address: "weak@example.com", State: Withdrawn, Method: MethodEmailLink, Actor: "t"})
}

func TestRecordIdempotentAndOrdering(t *testing.T) {
	s, _ := openTest(t, Options{})
	ctx := context.Background()
	ev := grant("carol@example.com")
	mustRecord(t, s, ev)
	// The same event again (an API retry) records nothing.
	rec := mustRecord(t, s, ev)
	if len(rec.History) != 1 {
		t.Errorf("retry added an event: %d entries", len(rec.History))
	}
	// A re-confirmation later is a new event.
	ev2 := ev
	ev2.OccurredAt = ev.OccurredAt.Add(time.Minute)
	ev2.TextVersion = "v2"
	if rec = mustRecord(t, s, ev2); len(rec.History) != 2 {
		t.Errorf("re-confirmation not recorded: %d entries", len(rec.History))
	}
	// Something older than the current state cannot overturn it.
	old := Event{Address: "carol@example.com", State: Withdrawn, Method: MethodAdmin, Actor: "t", OccurredAt: ev.OccurredAt.Add(-time.Hour)}
	if _, err := s.Record(ctx, old); !errors.Is(err, ErrConflict) {
		t.Errorf("older event: err = %v, want ErrConflict", err)
	}
	// Two different states at the very same time: refuse to guess.
	same := Event{Address: "carol@example.com", State: Denied, Method: MethodAdmin, Actor: "t", OccurredAt: ev2.OccurredAt}
	if _, err := s.Record(ctx, same); !errors.Is(err, ErrConflict) {
		t.Errorf("same-time conflict: err = %v, want ErrConflict", err)
	}
	if st := mustLookup(t, s, DefaultTenant, "carol@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("state after refused events = %s", st)
	}
}

// A grant stamped a few minutes ahead by a skewed client clock is accepted;
// the withdrawal that follows it "now" must still win, not be refused as
// older than the grant.
func TestWithdrawalAfterFutureStampedGrant(t *testing.T) {
	s, _ := openTest(t, Options{})
	ev := grant("skew@example.com")
	ev.OccurredAt = testNow.Add(3 * time.Minute)
	mustRecord(t, s, ev)
	rec := mustRecord(t, s, Event{Address: "skew@example.com", State: Withdrawn, Method: MethodEmailLink, Actor: "t"})
	if st := mustLookup(t, s, DefaultTenant, "skew@example.com", PurposeOpenTracking); st != Withdrawn {
		t.Fatalf("state after withdrawing = %s, want withdrawn", st)
	}
	last := rec.History[len(rec.History)-1]
	if !last.OccurredAt.After(ev.OccurredAt) {
		t.Errorf("withdrawal occurred_at %s is not after the grant's %s", last.OccurredAt, ev.OccurredAt)
	}
	// An explicit time is the person's own statement and is never moved.
	old := Event{Address: "skew@example.com", State: Granted, Method: MethodAdmin, Evidence: "e", Actor: "t", OccurredAt: testNow.Add(-time.Hour)}
	if _, err := s.Record(context.Background(), old); !errors.Is(err, ErrConflict) {
		t.Errorf("an explicitly older grant: err = %v, want ErrConflict", err)
	}
}

func TestPlusTagOption(t *testing.T) {
	plain, _ := openTest(t, Options{})
	mustRecord(t, plain, grant("bob+news@example.com"))
	if st := mustLookup(t, plain, DefaultTenant, "bob@example.com", PurposeOpenTracking); st != Unknown {
		t.Errorf("without IgnorePlusTag, bob@ = %s, want unknown", st)
	}
	tagless, _ := openTest(t, Options{IgnorePlusTag: true})
	mustRecord(t, tagless, grant("bob+news@example.com"))
	for _, a := range []string{"bob@example.com", "bob+shop@example.com", "BOB+X@example.com"} {
		if st := mustLookup(t, tagless, DefaultTenant, a, PurposeOpenTracking); st != Granted {
			t.Errorf("with IgnorePlusTag, %s = %s, want granted", a, st)
		}
	}
}

func TestIDNASubjects(t *testing.T) {
	s, _ := openTest(t, Options{})
	mustRecord(t, s, grant("José@Bücher.example"))
	for _, a := range []string{"josé@xn--bcher-kva.example", "JOSÉ@BÜCHER.EXAMPLE", "jose\u0301@bücher.example"} {
		if st := mustLookup(t, s, DefaultTenant, a, PurposeOpenTracking); st != Granted {
			t.Errorf("Lookup(%q) = %s, want granted", a, st)
		}
	}
	rec, _ := s.Show(context.Background(), "", "josé@bücher.example")
	if rec.Address != "josé@xn--bcher-kva.example" {
		t.Errorf("stored address = %q", rec.Address)
	}
}

func TestErase(t *testing.T) {
	now := testNow
	s, path := openTest(t, Options{Now: func() time.Time { return now }})
	ctx := context.Background()
	mustRecord(t, s, grant("erin@example.com"))
	mustRecord(t, s, grant("frank@example.com"))
	mustRecord(t, s, Event{Address: "erin@example.com", Purpose: PurposeClickTracking, State: Denied, Method: MethodWebForm, Actor: "t"})
	if err := s.Erase(ctx, "", "Erin@example.com", "cli:test"); err != nil {
		t.Fatalf("Erase: %v", err)
	}
	if st := mustLookup(t, s, DefaultTenant, "erin@example.com", PurposeOpenTracking); st != Unknown {
		t.Errorf("after erasure Lookup = %s, want unknown", st)
	}
	rec, err := s.Show(ctx, "", "erin@example.com")
	if err != nil || len(rec.States) != 0 || len(rec.History) != 0 || rec.ErasedAt == nil {
		t.Errorf("after erasure Show = %+v, %v", rec, err)
	}
	if st := mustLookup(t, s, DefaultTenant, "frank@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("erasing erin changed frank: %s", st)
	}
	st, err := s.Chain(ctx)
	if err != nil {
		t.Fatalf("chain after erasure: %v", err)
	}
	if st.Events != 4 || st.Tombstones != 2 || st.Erasures != 1 {
		t.Errorf("chain status = %+v", st)
	}
	// Erasing again is not an error worth failing on, but says nothing was there.
	if err := s.Erase(ctx, "", "erin@example.com", "cli:test"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second erase: %v, want ErrNotFound", err)
	}
	// An old event about the erased subject cannot resurrect it...
	old := grant("erin@example.com")
	if _, err := s.Record(ctx, old); !errors.Is(err, ErrConflict) {
		t.Errorf("pre-erasure event: err = %v, want ErrConflict", err)
	}
	// ...but a new consent, given after the erasure, is recorded.
	now = now.Add(time.Hour)
	fresh := grant("erin@example.com")
	fresh.OccurredAt = now
	if rec := mustRecord(t, s, fresh); rec.States[PurposeOpenTracking].State != Granted {
		t.Errorf("fresh grant after erasure: %+v", rec.States)
	}
	s.Close()
	// The address is stored encrypted, so no plaintext copy can linger in
	// free pages after the erasure.
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range []string{"erin@example.com", "frank@example.com"} {
		if bytes.Contains(bytes.ToLower(data), []byte(a)) {
			t.Errorf("the database file contains the plaintext address %s", a)
		}
	}
}

func TestSecretsAndPseudonym(t *testing.T) {
	s, path := openTest(t, Options{})
	a, err := s.Secret("beacon")
	if err != nil || len(a) != 32 {
		t.Fatalf("Secret = %x, %v", a, err)
	}
	p1, err := s.Pseudonym("Bob@Example.com")
	if err != nil || !strings.HasPrefix(p1, "hmac-sha256:") || len(p1) != len("hmac-sha256:")+64 {
		t.Fatalf("Pseudonym = %q, %v", p1, err)
	}
	rec := mustRecord(t, s, grant("bob@example.com"))
	if rec.Pseudonym != p1 {
		t.Errorf("record pseudonym %q differs from Pseudonym() %q", rec.Pseudonym, p1)
	}
	s.Close()
	s2, err := Open(path, Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s2.Close()
	b, _ := s2.Secret("beacon")
	p2, _ := s2.Pseudonym("bob@example.com")
	if !bytes.Equal(a, b) || p1 != p2 {
		t.Errorf("secrets not stable across reopen: %x/%x, %s/%s", a, b, p1, p2)
	}
	other, _ := openTest(t, Options{})
	p3, _ := other.Pseudonym("bob@example.com")
	if p3 == p1 {
		t.Errorf("two stores share a pseudonym key")
	}
}

func TestLookupErrorsFailClosed(t *testing.T) {
	s, _ := openTest(t, Options{})
	for _, tc := range []struct{ tenant, addr, purpose string }{
		{"", "bob@example.com", PurposeOpenTracking}, // empty tenant is not silently default on the hot path
		{DefaultTenant, "garbage", PurposeOpenTracking},
		{DefaultTenant, "bob@example.com", "undeclared"},
	} {
		st, err := s.Lookup(context.Background(), tc.tenant, tc.addr, tc.purpose)
		if err == nil || st != Unknown {
			t.Errorf("Lookup(%q,%q,%q) = %s, %v; want unknown and an error", tc.tenant, tc.addr, tc.purpose, st, err)
		}
	}
}
