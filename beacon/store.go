package beacon

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"sort"
	"time"

	"go.etcd.io/bbolt"
)

// Stat is one (tenant, campaign, day) row of the beacon statistics. The
// contract (GET /v1/beacons) pins campaign, day, recipients and loads.
type Stat struct {
	Tenant   string `json:"tenant"`
	Campaign string `json:"campaign"`
	// Day is the UTC day the campaign's mail was sent, YYYY-MM-DD: loads
	// count toward the day in the token, not the day of the load.
	Day string `json:"day"`
	// Recipients counts the campaign's non-consenting recipients that day,
	// including those whose pixels were stripped before the campaign
	// reached the minimum batch.
	Recipients uint64 `json:"recipients"`
	// BeaconRecipients counts those among Recipients whose copies went out
	// after the minimum batch was reached, so with the beacon in place of
	// their first tracker (when the message had one).
	BeaconRecipients uint64 `json:"beacon_recipients"`
	// Loads counts image loads, including privacy proxies such as Apple
	// Mail Privacy Protection that fetch every image on arrival. It is not
	// a count of opens, and never of unique opens.
	Loads uint64 `json:"loads"`
}

// Filter selects statistics. Zero fields match everything.
type Filter struct {
	Tenant   string
	Campaign string
	// From and To are inclusive UTC days; the time of day is ignored.
	From, To time.Time
}

type counts struct {
	recipients, beaconRecipients, loads uint64
}

func (c counts) zero() bool { return c == counts{} }

func (c *counts) add(o counts) {
	c.recipients += o.recipients
	c.beaconRecipients += o.beaconRecipients
	c.loads += o.loads
}

const countsLen = 24

func decodeCounts(v []byte) (counts, error) {
	if len(v) != countsLen {
		return counts{}, fmt.Errorf("beacon: a counter in bucket %s is %d bytes, want %d; the database is damaged", bucketCounters, len(v), countsLen)
	}
	return counts{
		recipients:       binary.BigEndian.Uint64(v[0:]),
		beaconRecipients: binary.BigEndian.Uint64(v[8:]),
		loads:            binary.BigEndian.Uint64(v[16:]),
	}, nil
}

func (c counts) encode() []byte {
	v := make([]byte, 0, countsLen)
	v = binary.BigEndian.AppendUint64(v, c.recipients)
	v = binary.BigEndian.AppendUint64(v, c.beaconRecipients)
	return binary.BigEndian.AppendUint64(v, c.loads)
}

// counterKey is tenant 0x00 YYYY-MM-DD 0x00 campaign. Tenants hold no
// control characters, so the tenant and day prefixes make range scans for
// one tenant over a span of days.
func counterKey(tenant, day, campaign string) []byte {
	k := make([]byte, 0, len(tenant)+len(day)+len(campaign)+2)
	k = append(k, tenant...)
	k = append(k, 0)
	k = append(k, day...)
	k = append(k, 0)
	return append(k, campaign...)
}

func splitCounterKey(k []byte) (tenant, day, campaign string, ok bool) {
	t, rest, ok1 := bytes.Cut(k, []byte{0})
	d, c, ok2 := bytes.Cut(rest, []byte{0})
	if !ok1 || !ok2 || len(d) != len(time.DateOnly) {
		return "", "", "", false
	}
	return string(t), string(d), string(c), true
}

// addCounts adds deltas to the stored counters in one transaction.
func addCounts(tx *bbolt.Tx, deltas map[string]counts) error {
	b, err := tx.CreateBucketIfNotExists(bucketCounters)
	if err != nil {
		return err
	}
	for k, d := range deltas {
		var cur counts
		if v := b.Get([]byte(k)); v != nil {
			if cur, err = decodeCounts(v); err != nil {
				return err
			}
		}
		cur.add(d)
		if err := b.Put([]byte(k), cur.encode()); err != nil {
			return err
		}
	}
	return nil
}

func storedCounts(tx *bbolt.Tx, key []byte) (counts, error) {
	b := tx.Bucket(bucketCounters)
	if b == nil {
		return counts{}, nil
	}
	v := b.Get(key)
	if v == nil {
		return counts{}, nil
	}
	return decodeCounts(v)
}

func (f Filter) matches(tenant, day, campaign string) bool {
	if f.Tenant != "" && tenant != f.Tenant {
		return false
	}
	if f.Campaign != "" && campaign != f.Campaign {
		return false
	}
	if !f.From.IsZero() && day < DayString(f.From) {
		return false
	}
	return f.To.IsZero() || day <= DayString(f.To)
}

// scanStats collects the stored rows matching f into acc, keyed by counter
// key.
func scanStats(tx *bbolt.Tx, f Filter, acc map[string]counts) error {
	b := tx.Bucket(bucketCounters)
	if b == nil {
		return nil
	}
	c := b.Cursor()
	var k, v []byte
	var prefix []byte
	if f.Tenant != "" {
		prefix = append([]byte(f.Tenant), 0)
		seek := prefix
		if !f.From.IsZero() {
			seek = append(append([]byte{}, prefix...), DayString(f.From)...)
		}
		k, v = c.Seek(seek)
	} else {
		k, v = c.First()
	}
	for ; k != nil && bytes.HasPrefix(k, prefix); k, v = c.Next() {
		tenant, day, campaign, ok := splitCounterKey(k)
		if !ok {
			return fmt.Errorf("beacon: bucket %s holds a malformed key %q; the database is damaged", bucketCounters, k)
		}
		if f.Tenant != "" && !f.To.IsZero() && day > DayString(f.To) {
			break
		}
		if !f.matches(tenant, day, campaign) {
			continue
		}
		cur, err := decodeCounts(v)
		if err != nil {
			return err
		}
		acc[string(k)] = cur
	}
	return nil
}

func sortedStats(acc map[string]counts) []Stat {
	keys := make([]string, 0, len(acc))
	for k := range acc {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	out := make([]Stat, 0, len(keys))
	for _, k := range keys {
		tenant, day, campaign, _ := splitCounterKey([]byte(k))
		c := acc[k]
		out = append(out, Stat{Tenant: tenant, Campaign: campaign, Day: day,
			Recipients: c.recipients, BeaconRecipients: c.beaconRecipients, Loads: c.loads})
	}
	return out
}

// ReadStats returns the statistics stored in db, sorted by tenant, day and
// campaign. It only reads, so it works on a database opened read-only by a
// command while no server runs; a running server's figures, including its
// unflushed counts, come from [Beacons.Stats].
func ReadStats(db *bbolt.DB, f Filter) ([]Stat, error) {
	acc := map[string]counts{}
	if err := db.View(func(tx *bbolt.Tx) error { return scanStats(tx, f, acc) }); err != nil {
		return nil, err
	}
	return sortedStats(acc), nil
}
