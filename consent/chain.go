package consent

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"

	"go.etcd.io/bbolt"
)

// ChainStatus summarises a verified chain. Publishing Head somewhere the
// database's owner cannot rewrite (a ticket, a signed mail, a timestamping
// service) is what makes the chain evidence: anyone able to write the file
// could otherwise rebuild every hash.
type ChainStatus struct {
	Events     uint64 `json:"events"`     // chained entries, tombstones and erasures included
	Tombstones uint64 `json:"tombstones"` // erased events
	Erasures   uint64 `json:"erasures"`
	Head       string `json:"head"` // hex hash of the last entry
}

// VerifyChain walks the global event chain and checks that every entry
// links to its predecessor, that every full event and erasure hashes to
// its stored digest, that every tombstone is covered by a later erasure
// that names it, and that the head matches. It then checks the current
// states, which are what lookups read, against the chain: each must be the
// one its latest event set. The error wraps ErrChainBroken and names the
// first bad entry.
func (s *Store) VerifyChain(ctx context.Context) error {
	_, err := s.Chain(ctx)
	return err
}

// Chain verifies the chain like VerifyChain and returns its summary.
func (s *Store) Chain(ctx context.Context) (ChainStatus, error) {
	var st ChainStatus
	err := s.db.View(func(tx *bbolt.Tx) error {
		events := tx.Bucket(bucketEvents)
		var headSeq uint64
		var headHash [32]byte
		if m := tx.Bucket(bucketMeta); m != nil {
			if v := m.Get(metaHead); v != nil {
				if len(v) != 40 {
					return &chainError{0, "the stored head is malformed"}
				}
				headSeq = binary.BigEndian.Uint64(v)
				copy(headHash[:], v[8:])
			}
		}
		if events == nil {
			if headSeq != 0 {
				return &chainError{headSeq, "the events bucket is missing"}
			}
			return nil
		}
		var prev [32]byte
		var want uint64 = 1
		pending := map[uint64]bool{} // tombstones not yet covered by an erasure
		proj := projection{latest: map[string]projected{}, events: map[string]int{}}
		c := events.Cursor()
		n := 0
		for k, v := c.First(); k != nil; k, v = c.Next() {
			if n++; n%4096 == 0 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if len(k) != 8 {
				return &chainError{want, "an event key is malformed"}
			}
			seq := binary.BigEndian.Uint64(k)
			if seq != want {
				return &chainError{want, fmt.Sprintf("event #%d is missing (next present is #%d)", want, seq)}
			}
			ev, err := decodeEvent(seq, v)
			if err != nil {
				return &chainError{seq, "unreadable: " + err.Error()}
			}
			if ev.prevHash != prev {
				return &chainError{seq, "its prev_hash does not match the hash of the event before it (an event was changed, removed or reordered)"}
			}
			switch ev.kind {
			case kindTombstone:
				pending[seq] = true
				st.Tombstones++
			case kindEvent, kindErasure:
				body := v[64:]
				if h := chainHash(ev.prevHash, body); !bytes.Equal(h[:], ev.hash[:]) {
					return &chainError{seq, "its content does not match its hash (the event was modified)"}
				}
				if ev.kind == kindEvent {
					proj.add(&ev)
				}
				if ev.kind == kindErasure {
					st.Erasures++
					for _, e := range ev.erased {
						if !pending[e] {
							return &chainError{seq, fmt.Sprintf("the erasure names event #%d, which is not an unaccounted tombstone", e)}
						}
						delete(pending, e)
					}
				}
			}
			prev = ev.hash
			want++
			st.Events++
		}
		for e := range pending {
			return &chainError{e, "it is a tombstone that no erasure event accounts for (an event was deleted outside an erasure)"}
		}
		if st.Events != headSeq {
			return &chainError{st.Events, fmt.Sprintf("the chain has %d events but its head says %d (events were removed from the end)", st.Events, headSeq)}
		}
		if headSeq > 0 && prev != headHash {
			return &chainError{headSeq, "the last event's hash does not match the stored head"}
		}
		st.Head = hex.EncodeToString(prev[:])
		return proj.check(tx.Bucket(bucketSubjects), events)
	})
	return st, err
}

// projection is what the chain says each subject's current-state record
// must hold. Events are appended only when they change the state (stale
// and duplicate ones are refused), so the last full event of a subject
// and purpose in chain order is the one that set its state; an erasure
// turns the subject's events into tombstones and removes its record.
type projection struct {
	latest map[string]projected // subject key ‖ 0 ‖ purpose
	events map[string]int       // subject key: its full events
}

type projected struct {
	seq      uint64
	state    State
	occurred int64
}

func subjectKeyOf(tenant string, mac [32]byte) string {
	return tenant + "\x00" + string(mac[:])
}

func (p *projection) add(ev *storedEvent) {
	k := subjectKeyOf(ev.tenant, ev.subject)
	p.events[k]++
	p.latest[k+"\x00"+ev.purpose] = projected{ev.seq, ev.state, ev.occurred}
}

// check compares every current-state record with the chain. A changed
// state (denied edited to granted), a record pointing at another
// subject's event, a history list cut short, a record added, or one
// removed outside an erasure all fail.
func (p *projection) check(subjects, events *bbolt.Bucket) error {
	if subjects != nil {
		c := subjects.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			sub, err := decodeSubject(v)
			if err != nil {
				return &stateError{"a current-state record is unreadable: " + err.Error()}
			}
			if len(sub.events) != p.events[string(k)] {
				return &stateError{fmt.Sprintf("a subject's record lists %d events but the chain holds %d for it (its history was edited)", len(sub.events), p.events[string(k)])}
			}
			for _, seq := range sub.events {
				v := events.Get(seqKey(seq))
				if v == nil {
					return &stateError{fmt.Sprintf("a subject's record lists event #%d, which is not in the chain", seq)}
				}
				ev, err := decodeEvent(seq, v)
				if err != nil || ev.kind != kindEvent || subjectKeyOf(ev.tenant, ev.subject) != string(k) {
					return &stateError{fmt.Sprintf("a subject's record lists event #%d, which is not one of its events", seq)}
				}
			}
			for _, ps := range sub.purposes {
				pk := string(k) + "\x00" + ps.purpose
				want, ok := p.latest[pk]
				switch {
				case !ok:
					return &stateError{fmt.Sprintf("a subject's %s state is %s, but no event in the chain set it", ps.purpose, ps.state)}
				case want.seq != ps.seq || want.state != ps.state || want.occurred != ps.since:
					return &stateError{fmt.Sprintf("a subject's %s state is %s (event #%d), but its latest event #%d says %s", ps.purpose, ps.state, ps.seq, want.seq, want.state)}
				}
				delete(p.latest, pk)
			}
		}
	}
	for _, want := range p.latest {
		return &stateError{fmt.Sprintf("event #%d set a state that no current-state record holds (a record was removed outside an erasure)", want.seq)}
	}
	return nil
}
