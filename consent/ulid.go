package consent

import (
	"crypto/rand"
	"encoding/binary"
	"time"
)

// Event IDs are ULIDs (compliance.md §5): 48 bits of milliseconds then 80
// random bits, written in Crockford base32. They sort by time and stay
// unique when exports from several stores are merged.

const crockford = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"

func newULID(t time.Time) [16]byte {
	var id [16]byte
	ms := uint64(t.UnixMilli())
	id[0] = byte(ms >> 40)
	id[1] = byte(ms >> 32)
	binary.BigEndian.PutUint32(id[2:], uint32(ms))
	rand.Read(id[6:]) // never fails (crypto/rand since Go 1.24)
	return id
}

func ulidString(id [16]byte) string {
	var out [26]byte
	// 128 bits as 26 base32 digits, the first carrying only 3 bits.
	hi := binary.BigEndian.Uint64(id[:8])
	lo := binary.BigEndian.Uint64(id[8:])
	for i := 25; i >= 0; i-- {
		out[i] = crockford[lo&31]
		lo = lo>>5 | hi<<59
		hi >>= 5
	}
	return string(out[:])
}
