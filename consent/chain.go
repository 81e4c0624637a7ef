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
// that names it, and that the head matches. The error wraps ErrChainBroken
// and names the first bad entry.
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
		return nil
	})
	return st, err
}
