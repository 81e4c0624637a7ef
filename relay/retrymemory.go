package relay

import (
	"encoding/json"
	"sync/atomic"
	"time"

	bolt "go.etcd.io/bbolt"
)

// RetryMemory remembers, for a while, which recipients of a message already
// got it. When one recipient group was accepted upstream and another failed
// temporarily, the relay must answer 4xx so the client retries; without this
// memory the retry would deliver a second copy to the recipients that
// already have one.
type RetryMemory interface {
	// Delivered returns the recipient keys already delivered for key.
	Delivered(key string) (map[string]bool, error)
	// Remember adds recipient keys delivered for key.
	Remember(key string, rcpts []string) error
	// Empty tells whether nothing is remembered, so the common case skips
	// hashing the message and the lookup.
	Empty() bool
}

var retryBucket = []byte("relay_retry_memory")

// boltRetryMemory keeps the memory in the relay's bbolt file. Recipients are
// stored as pseudonyms, never addresses.
type boltRetryMemory struct {
	db  *bolt.DB
	ttl time.Duration
	now func() time.Time
	// latest is the expiry (Unix seconds) of the entry that lives longest:
	// past it, nothing remembered is valid any more, whether or not a
	// sweep has removed it yet.
	latest atomic.Int64
}

func (m *boltRetryMemory) Empty() bool { return m.now().Unix() > m.latest.Load() }

// extend raises latest to exp.
func (m *boltRetryMemory) extend(exp int64) {
	for {
		cur := m.latest.Load()
		if exp <= cur || m.latest.CompareAndSwap(cur, exp) {
			return
		}
	}
}

type retryEntry struct {
	Expires int64    `json:"expires"`
	Rcpts   []string `json:"rcpts"`
}

// NewRetryMemory returns a RetryMemory in db's relay_retry_memory bucket.
func NewRetryMemory(db *bolt.DB, ttl time.Duration) (RetryMemory, error) {
	m := &boltRetryMemory{db: db, ttl: ttl, now: time.Now}
	err := db.Update(func(tx *bolt.Tx) error {
		_, err := tx.CreateBucketIfNotExists(retryBucket)
		return err
	})
	if err != nil {
		return nil, err
	}
	m.sweep()
	return m, nil
}

func (m *boltRetryMemory) Delivered(key string) (map[string]bool, error) {
	var out map[string]bool
	err := m.db.View(func(tx *bolt.Tx) error {
		v := tx.Bucket(retryBucket).Get([]byte(key))
		if v == nil {
			return nil
		}
		var e retryEntry
		if err := json.Unmarshal(v, &e); err != nil {
			return err
		}
		if e.Expires < m.now().Unix() {
			return nil
		}
		out = make(map[string]bool, len(e.Rcpts))
		for _, r := range e.Rcpts {
			out[r] = true
		}
		return nil
	})
	return out, err
}

func (m *boltRetryMemory) Remember(key string, rcpts []string) error {
	var exp int64
	err := m.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(retryBucket)
		var e retryEntry
		if v := b.Get([]byte(key)); v != nil {
			json.Unmarshal(v, &e)
		}
		seen := map[string]bool{}
		for _, r := range e.Rcpts {
			seen[r] = true
		}
		for _, r := range rcpts {
			if !seen[r] {
				e.Rcpts = append(e.Rcpts, r)
				seen[r] = true
			}
		}
		e.Expires = m.now().Add(m.ttl).Unix()
		v, err := json.Marshal(e)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(key), v); err != nil {
			return err
		}
		exp = e.Expires
		return nil
	})
	if err == nil {
		m.extend(exp)
		go m.sweep()
	}
	return err
}

// sweep drops expired entries. Partial failures are rare, so sweeping on
// each new entry keeps the bucket small without a timer.
func (m *boltRetryMemory) sweep() {
	now := m.now().Unix()
	m.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(retryBucket)
		c := b.Cursor()
		for k, v := c.First(); k != nil; k, v = c.Next() {
			var e retryEntry
			if json.Unmarshal(v, &e) != nil || e.Expires < now {
				c.Delete()
				continue
			}
			m.extend(e.Expires)
		}
		return nil
	})
}
