package beacon

import (
	"crypto/rand"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/bbolt"
)

// Bucket layout. Every bucket this package touches starts with "beacon_";
// the rest of the database belongs to other packages.
var (
	// bucketKeys maps a key id (uint32 big endian) to a keyRecord in JSON.
	bucketKeys = []byte("beacon_keys")
	// bucketCounters maps tenant 0x00 YYYY-MM-DD 0x00 campaign to three
	// uint64 big endian: recipients, beaconed recipients, loads.
	bucketCounters = []byte("beacon_counters")
)

// Key is one beacon signing key. The newest key that is not retired signs;
// every key verifies the tokens it signed until they expire.
type Key struct {
	ID      uint32
	Secret  []byte
	Created time.Time
	// Retired is when a newer key replaced this one; zero while it signs.
	Retired time.Time
}

// KeyInfo describes a key without its secret, for listings and the API.
type KeyInfo struct {
	ID      uint32    `json:"id"`
	Created time.Time `json:"created"`
	// Retired is omitted while the key signs.
	Retired *time.Time `json:"retired,omitempty"`
	Signing bool       `json:"signing"`
}

type keyRecord struct {
	Secret  []byte    `json:"secret"`
	Created time.Time `json:"created"`
	Retired time.Time `json:"retired,omitzero"`
}

func keyID(id uint32) []byte { return binary.BigEndian.AppendUint32(nil, id) }

func newSecret() ([]byte, error) {
	s := make([]byte, 32)
	if _, err := rand.Read(s); err != nil {
		return nil, fmt.Errorf("beacon: generating a signing key: %w", err)
	}
	return s, nil
}

// readKeys returns the stored keys, newest first.
func readKeys(tx *bbolt.Tx) ([]Key, error) {
	b := tx.Bucket(bucketKeys)
	if b == nil {
		return nil, nil
	}
	var keys []Key
	err := b.ForEach(func(k, v []byte) error {
		if len(k) != 4 {
			return fmt.Errorf("beacon: bucket %s holds a key id of %d bytes; the database is damaged", bucketKeys, len(k))
		}
		var r keyRecord
		if err := json.Unmarshal(v, &r); err != nil {
			return fmt.Errorf("beacon: signing key %d is unreadable (%v); the database is damaged", binary.BigEndian.Uint32(k), err)
		}
		keys = append(keys, Key{ID: binary.BigEndian.Uint32(k), Secret: r.Secret, Created: r.Created, Retired: r.Retired})
		return nil
	})
	sort.Slice(keys, func(i, j int) bool { return keys[i].ID > keys[j].ID })
	return keys, err
}

func putKey(b *bbolt.Bucket, k Key) error {
	v, err := json.Marshal(keyRecord{Secret: k.Secret, Created: k.Created.UTC(), Retired: k.Retired.UTC()})
	if err != nil {
		return err
	}
	return b.Put(keyID(k.ID), v)
}

// LoadKeys returns the signing keys stored in db, newest first. On first
// use it creates and stores a random 32-byte key, so db must be writable
// then; later calls only read.
func LoadKeys(db *bbolt.DB, now time.Time) ([]Key, error) {
	var keys []Key
	err := db.View(func(tx *bbolt.Tx) (err error) {
		keys, err = readKeys(tx)
		return err
	})
	if err != nil || len(keys) > 0 {
		return keys, err
	}
	err = db.Update(func(tx *bbolt.Tx) error {
		// Another process may have won the race between the two
		// transactions; bbolt's file lock makes that unlikely, not impossible.
		if keys, err = readKeys(tx); err != nil || len(keys) > 0 {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(bucketKeys)
		if err != nil {
			return err
		}
		secret, err := newSecret()
		if err != nil {
			return err
		}
		k := Key{ID: 1, Secret: secret, Created: now.UTC()}
		keys = []Key{k}
		return putKey(b, k)
	})
	if err != nil {
		return nil, fmt.Errorf("beacon: storing the first signing key in %s: %w", db.Path(), err)
	}
	return keys, nil
}

// RotateOptions tune RotateKey.
type RotateOptions struct {
	// Now is the rotation time; zero means time.Now().
	Now time.Time
	// RevokeOld deletes every other key at once, for a leaked key: every
	// beacon already sent stops counting (404) from then on.
	RevokeOld bool
}

// RotateKey adds a new signing key to db and retires the one that signed
// until now. Retired keys keep verifying the tokens they signed until those
// expire (MaxAge after their day), unless opts.RevokeOld. A running server
// must rotate through [Beacons.RotateKey] (the API) so that it starts
// signing with the new key at once.
func RotateKey(db *bbolt.DB, opts RotateOptions) (KeyInfo, error) {
	now := opts.Now
	if now.IsZero() {
		now = time.Now()
	}
	now = now.UTC()
	secret, err := newSecret()
	if err != nil {
		return KeyInfo{}, err
	}
	var nk Key
	err = db.Update(func(tx *bbolt.Tx) error {
		keys, err := readKeys(tx)
		if err != nil {
			return err
		}
		b, err := tx.CreateBucketIfNotExists(bucketKeys)
		if err != nil {
			return err
		}
		nk = Key{ID: 1, Secret: secret, Created: now}
		if len(keys) > 0 {
			if keys[0].ID == ^uint32(0) {
				return errors.New("key ids are exhausted")
			}
			nk.ID = keys[0].ID + 1
		}
		for _, k := range keys {
			switch {
			case opts.RevokeOld:
				if err := b.Delete(keyID(k.ID)); err != nil {
					return err
				}
			case k.Retired.IsZero():
				k.Retired = now
				if err := putKey(b, k); err != nil {
					return err
				}
			}
		}
		return putKey(b, nk)
	})
	if err != nil {
		return KeyInfo{}, fmt.Errorf("beacon: rotating the signing key in %s: %w", db.Path(), err)
	}
	return KeyInfo{ID: nk.ID, Created: nk.Created, Signing: true}, nil
}

// ListKeys describes the keys stored in db, newest first, without secrets.
// It only reads, so it works on a database opened read-only.
func ListKeys(db *bbolt.DB) ([]KeyInfo, error) {
	var keys []Key
	err := db.View(func(tx *bbolt.Tx) (err error) {
		keys, err = readKeys(tx)
		return err
	})
	return keyInfos(keys), err
}

func keyInfos(keys []Key) []KeyInfo {
	out := make([]KeyInfo, 0, len(keys))
	for _, k := range keys {
		ki := KeyInfo{ID: k.ID, Created: k.Created}
		if !k.Retired.IsZero() {
			r := k.Retired
			ki.Retired = &r
		} else {
			ki.Signing = true
		}
		out = append(out, ki)
	}
	return out
}

// pruneKeys deletes keys retired so long ago that no token they signed can
// still be valid: the token's day is at most a day after retirement, and it
// expires maxAge after its day. It writes only when there is something to
// delete, so opening a database does not cost an fsync.
func pruneKeys(db *bbolt.DB, keys []Key, maxAge time.Duration, now time.Time) error {
	cutoff := now.Add(-maxAge - 3*24*time.Hour)
	var stale [][]byte
	for _, k := range keys {
		if !k.Retired.IsZero() && k.Retired.Before(cutoff) {
			stale = append(stale, keyID(k.ID))
		}
	}
	if len(stale) == 0 {
		return nil
	}
	return db.Update(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketKeys)
		for _, id := range stale {
			if err := b.Delete(id); err != nil {
				return err
			}
		}
		return nil
	})
}
