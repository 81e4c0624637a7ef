package beacon

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"hash"
	"strings"
	"sync"
	"time"
	"unicode/utf8"
)

// Token layout, before base64url (RFC 4648 §5, no padding):
//
//	[0]      version, 1
//	[1:5]    key id, uint32 big endian
//	[5:9]    UTC day as days since 1970-01-01, uint32 big endian
//	[9]      tenant length T (1..255), then T bytes of tenant
//	[..]     campaign length C (1..255), then C bytes of campaign key
//	[..+32]  HMAC-SHA-256(key, all the bytes above)
//
// The fields from the day to the end of the campaign key are the counter's
// identity ("subject"): the same for every key, so rotating the key does not
// split a campaign's counts.
const (
	tokenVersion = 1
	macLen       = sha256.Size
	headerLen    = 1 + 4 // version + key id
	// MaxKeyLen bounds tenant names and campaign keys: they travel in every
	// beacon URL. RFC 2919 caps a List-Id at 255 characters, too.
	MaxKeyLen     = 255
	maxSubjectLen = 4 + 1 + MaxKeyLen + 1 + MaxKeyLen
	maxRawLen     = headerLen + maxSubjectLen + macLen
)

// tokenEncoding is strict so that every token has exactly one spelling: a
// changed last character cannot decode to the same bytes and be accepted.
var tokenEncoding = base64.RawURLEncoding.Strict()

var maxTokenLen = tokenEncoding.EncodedLen(maxRawLen)

// Reasons a token is refused; they label pixelrelay_beacon_rejected_total.
// All of them get the same 404, so a prober learns nothing from the answer.
const (
	rejectMalformed   = "malformed"
	rejectUnknownKey  = "unknown_key"
	rejectBadMAC      = "bad_signature"
	rejectExpired     = "expired"
	rejectFutureDay   = "future"
	rejectRetiredDay  = "after_retirement"
	rejectBadPath     = "not_found"
	rejectWrongMethod = "method"
)

// epochDay is the UTC day of t, counted from 1970-01-01.
func epochDay(t time.Time) uint32 {
	return uint32(t.UTC().Unix() / 86400)
}

func dayTime(d uint32) time.Time {
	return time.Unix(int64(d)*86400, 0).UTC()
}

// DayString formats t's UTC day as YYYY-MM-DD, the form stats use.
func DayString(t time.Time) string { return t.UTC().Format(time.DateOnly) }

// ParseDay parses a YYYY-MM-DD day as midnight UTC.
func ParseDay(s string) (time.Time, error) {
	t, err := time.Parse(time.DateOnly, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not a day in YYYY-MM-DD form", s)
	}
	return t, nil
}

// ErrInvalidKey reports a tenant or campaign key that cannot be put in a
// beacon: empty, longer than MaxKeyLen bytes, not UTF-8, or holding control
// characters (they would corrupt tables and the counter key).
var ErrInvalidKey = errors.New("beacon: invalid tenant or campaign key")

func checkKey(what, s string) error {
	switch {
	case s == "":
		return fmt.Errorf("%w: %s is empty", ErrInvalidKey, what)
	case len(s) > MaxKeyLen:
		return fmt.Errorf("%w: %s is %d bytes long, the limit is %d", ErrInvalidKey, what, len(s), MaxKeyLen)
	case !utf8.ValidString(s):
		return fmt.Errorf("%w: %s %q is not valid UTF-8", ErrInvalidKey, what, s)
	}
	for _, r := range s {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) {
			return fmt.Errorf("%w: %s %q holds a control character", ErrInvalidKey, what, s)
		}
	}
	return nil
}

// subject is the canonical encoding of (day, tenant, campaign); callers
// have checked both keys.
func appendSubject(dst []byte, tenant, campaign string, day uint32) []byte {
	dst = binary.BigEndian.AppendUint32(dst, day)
	dst = append(dst, byte(len(tenant)))
	dst = append(dst, tenant...)
	dst = append(dst, byte(len(campaign)))
	return append(dst, campaign...)
}

// parseSubject splits a subject; ok is false unless the lengths add up
// exactly.
func parseSubject(s []byte) (day uint32, tenant, campaign []byte, ok bool) {
	if len(s) < 4+1+1+1+1 {
		return 0, nil, nil, false
	}
	day = binary.BigEndian.Uint32(s)
	rest := s[4:]
	t := int(rest[0])
	if t == 0 || len(rest) < 1+t+1 {
		return 0, nil, nil, false
	}
	tenant, rest = rest[1:1+t], rest[1+t:]
	c := int(rest[0])
	if c == 0 || len(rest) != 1+c {
		return 0, nil, nil, false
	}
	return day, tenant, rest[1:], true
}

// signingKey is one key of the ring with a pool of HMAC states, because
// hmac.New costs two SHA-256 blocks and allocations on every load.
type signingKey struct {
	id      uint32
	retired uint32 // UTC epoch day it stopped signing; 0 while it signs
	pool    sync.Pool
}

func newSigningKey(id uint32, secret []byte, retired time.Time) *signingKey {
	k := &signingKey{id: id}
	if !retired.IsZero() {
		k.retired = epochDay(retired)
	}
	secret = append([]byte(nil), secret...)
	k.pool.New = func() any { return hmac.New(sha256.New, secret) }
	return k
}

func (k *signingKey) mac(dst, msg []byte) []byte {
	h := k.pool.Get().(hash.Hash)
	h.Reset()
	h.Write(msg)
	dst = h.Sum(dst)
	k.pool.Put(h)
	return dst
}

// keyring is an immutable set of keys; rotation swaps in a new ring.
type keyring struct {
	signer *signingKey
	byID   map[uint32]*signingKey
}

func newKeyring(keys []Key) (*keyring, error) {
	if len(keys) == 0 {
		return nil, errors.New("beacon: no signing key")
	}
	kr := &keyring{byID: make(map[uint32]*signingKey, len(keys))}
	for _, k := range keys {
		if len(k.Secret) < 32 {
			return nil, fmt.Errorf("beacon: signing key %d is %d bytes; want at least 32", k.ID, len(k.Secret))
		}
		sk := newSigningKey(k.ID, k.Secret, k.Retired)
		kr.byID[k.ID] = sk
		if k.Retired.IsZero() && (kr.signer == nil || k.ID > kr.signer.id) {
			kr.signer = sk
		}
	}
	if kr.signer == nil {
		return nil, errors.New("beacon: every signing key is retired; run 'pixelrelay beacon rotate-key'")
	}
	return kr, nil
}

// sign returns the token for a subject, base64url-encoded.
func (kr *keyring) sign(subject []byte) string {
	var buf [maxRawLen]byte
	raw := append(buf[:0], tokenVersion)
	raw = binary.BigEndian.AppendUint32(raw, kr.signer.id)
	raw = append(raw, subject...)
	raw = kr.signer.mac(raw, raw)
	return tokenEncoding.EncodeToString(raw)
}

// scratch is the per-request memory of verify, pooled: the hash interface
// makes anything it reads or writes escape, and the load path should not
// allocate.
type scratch struct {
	raw [maxRawLen]byte
	sum [macLen]byte
}

var scratchPool = sync.Pool{New: func() any { return new(scratch) }}

// verify checks an encoded token against the ring and the clock. It returns
// the subject (pointing into s) or the reason for refusing it. No error
// value is built on this path: it runs once per image load.
func (kr *keyring) verify(tok string, s *scratch, today uint32, maxAgeDays uint32) (subject []byte, reason string) {
	// encoding/base64 skips CR and LF even in strict mode; a token has one
	// spelling, so refuse them.
	if len(tok) == 0 || len(tok) > maxTokenLen || strings.IndexByte(tok, '\n') >= 0 || strings.IndexByte(tok, '\r') >= 0 {
		return nil, rejectMalformed
	}
	n, err := tokenEncoding.Decode(s.raw[:], []byte(tok))
	if err != nil || n < headerLen+8+macLen || s.raw[0] != tokenVersion {
		return nil, rejectMalformed
	}
	raw := s.raw[:n]
	k := kr.byID[binary.BigEndian.Uint32(raw[1:5])]
	if k == nil {
		return nil, rejectUnknownKey
	}
	msg, got := raw[:n-macLen], raw[n-macLen:]
	if !hmac.Equal(k.mac(s.sum[:0], msg), got) {
		return nil, rejectBadMAC
	}
	subject = msg[headerLen:]
	day, _, _, ok := parseSubject(subject)
	if !ok {
		// Signed by us but malformed: only a bug or a stolen key does that.
		return nil, rejectMalformed
	}
	switch {
	case day > today+1:
		return nil, rejectFutureDay
	case today > day && today-day > maxAgeDays:
		return nil, rejectExpired
	case k.retired != 0 && day > k.retired+1:
		// A retired key signed nothing after its retirement (a day of slack
		// for clocks), so such a token means the old key leaked.
		return nil, rejectRetiredDay
	}
	return subject, ""
}
