package consent

import (
	"context"
	"errors"
	"strings"
	"testing"

	"go.etcd.io/bbolt"
)

// chainStore records a small history: three subjects, one erased.
func chainStore(t *testing.T) *Store {
	t.Helper()
	s, _ := openTest(t, Options{})
	for _, a := range []string{"a@example.com", "b@example.com", "c@example.com"} {
		mustRecord(t, s, grant(a))
	}
	if err := s.Erase(context.Background(), "", "b@example.com", "t"); err != nil {
		t.Fatal(err)
	}
	mustRecord(t, s, Event{Address: "c@example.com", State: Withdrawn, Method: MethodEmailLink, Actor: "t"})
	if err := s.VerifyChain(context.Background()); err != nil {
		t.Fatalf("untouched chain: %v", err)
	}
	return s
}

func TestVerifyChainDetectsTampering(t *testing.T) {
	tests := []struct {
		name   string
		tamper func(ev *bbolt.Bucket) error
		want   string
	}{
		// Each row: one way to rewrite history behind the store's back.
		{"edit an event", func(ev *bbolt.Bucket) error {
			v := append([]byte(nil), ev.Get(seqKey(1))...)
			v[len(v)-1] ^= 1 // flip the weak-proof flag
			return ev.Put(seqKey(1), v)
		}, "#1: its content does not match its hash"},
		{"delete an event", func(ev *bbolt.Bucket) error { return ev.Delete(seqKey(3)) }, "#3: event #3 is missing"},
		{"drop the last event", func(ev *bbolt.Bucket) error { return ev.Delete(seqKey(5)) }, "head says 5"},
		{"forge a tombstone", func(ev *bbolt.Bucket) error {
			e, _ := decodeEvent(1, ev.Get(seqKey(1)))
			tomb := storedEvent{kind: kindTombstone, prevHash: e.prevHash, hash: e.hash, id: e.id, tenant: e.tenant, subject: e.subject}
			return ev.Put(seqKey(1), tomb.encode(nil))
		}, "#1: it is a tombstone that no erasure event accounts for"},
		{"swap two events", func(ev *bbolt.Bucket) error {
			a, b := append([]byte(nil), ev.Get(seqKey(1))...), append([]byte(nil), ev.Get(seqKey(3))...)
			ev.Put(seqKey(1), b)
			return ev.Put(seqKey(3), a)
		}, "#1: its prev_hash does not match"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := chainStore(t)
			if err := s.DB().Update(func(tx *bbolt.Tx) error { return tc.tamper(tx.Bucket(bucketEvents)) }); err != nil {
				t.Fatal(err)
			}
			err := s.VerifyChain(context.Background())
			if !errors.Is(err, ErrChainBroken) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrChainBroken mentioning %q", err, tc.want)
			}
		})
	}
}

func TestChainStatus(t *testing.T) {
	s := chainStore(t)
	st, err := s.Chain(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if st.Events != 5 || st.Tombstones != 1 || st.Erasures != 1 || len(st.Head) != 64 {
		t.Errorf("status = %+v", st)
	}
	rec, _ := s.Show(context.Background(), "", "c@example.com")
	if last := rec.History[len(rec.History)-1]; last.Hash != st.Head {
		t.Errorf("head %s is not the last event's hash %s", st.Head, last.Hash)
	}
}

// The current states are what the relay's lookups read. Editing them
// behind the store's back, without touching the chain, must not pass
// verification either.
func TestVerifyDetectsTamperedStates(t *testing.T) {
	key := func(t *testing.T, s *Store, addr string) []byte {
		var scratch [maxAddressLen * 2]byte
		k, _, _, err := s.subjectKey(nil, scratch[:], DefaultTenant, addr, false)
		if err != nil {
			t.Fatal(err)
		}
		return k
	}
	edit := func(t *testing.T, b *bbolt.Bucket, k []byte, f func(*subject)) error {
		sub, err := decodeSubject(b.Get(k))
		if err != nil {
			t.Fatal(err)
		}
		f(&sub)
		return b.Put(k, sub.encode(nil))
	}
	tests := []struct {
		name   string
		tamper func(t *testing.T, s *Store, subjects, events *bbolt.Bucket) error
		want   string
	}{
		{"turn a withdrawal into a grant", func(t *testing.T, s *Store, b, _ *bbolt.Bucket) error {
			return edit(t, b, key(t, s, "c@example.com"), func(sub *subject) { sub.purposes[0].state = Granted })
		}, "its latest event #5 says withdrawn"},
		{"fall back to the older grant, hiding the withdrawal", func(t *testing.T, s *Store, b, ev *bbolt.Bucket) error {
			e3, _ := decodeEvent(3, ev.Get(seqKey(3)))
			return edit(t, b, key(t, s, "c@example.com"), func(sub *subject) {
				sub.events = sub.events[:1]
				sub.purposes[0] = purposeState{purpose: PurposeOpenTracking, state: Granted, since: e3.occurred, seq: 3}
			})
		}, "lists 1 events but the chain holds 2"},
		{"remove a subject's record", func(t *testing.T, s *Store, b, _ *bbolt.Bucket) error {
			return b.Delete(key(t, s, "a@example.com"))
		}, "event #1 set a state that no current-state record holds"},
		{"forge a record for another address", func(t *testing.T, s *Store, b, _ *bbolt.Bucket) error {
			return b.Put(key(t, s, "z@example.com"), b.Get(key(t, s, "a@example.com")))
		}, "lists 1 events but the chain holds 0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := chainStore(t)
			if err := s.DB().Update(func(tx *bbolt.Tx) error {
				return tc.tamper(t, s, tx.Bucket(bucketSubjects), tx.Bucket(bucketEvents))
			}); err != nil {
				t.Fatal(err)
			}
			err := s.VerifyChain(context.Background())
			if !errors.Is(err, ErrChainBroken) || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want ErrChainBroken mentioning %q", err, tc.want)
			}
		})
	}
}
