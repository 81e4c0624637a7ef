package consent

import (
	"encoding/binary"
	"errors"
	"time"
)

// On-disk encodings. Values are compact binary rather than JSON: a million
// subjects and their events must import in under a minute, and the event
// bytes are exactly what the chain hashes, so the encoding must be
// deterministic. Every value starts with a version byte.

var errTruncated = errors.New("truncated value")

type encoder struct{ b []byte }

func (e *encoder) byte1(c byte)     { e.b = append(e.b, c) }
func (e *encoder) raw(p []byte)     { e.b = append(e.b, p...) }
func (e *encoder) uvarint(v uint64) { e.b = binary.AppendUvarint(e.b, v) }
func (e *encoder) varint(v int64)   { e.b = binary.AppendVarint(e.b, v) }
func (e *encoder) str(s string) {
	e.b = binary.AppendUvarint(e.b, uint64(len(s)))
	e.b = append(e.b, s...)
}
func (e *encoder) bytesv(p []byte) {
	e.b = binary.AppendUvarint(e.b, uint64(len(p)))
	e.b = append(e.b, p...)
}

// decoder reads what encoder wrote. The first error sticks, so callers check
// once at the end.
type decoder struct {
	b   []byte
	err error
}

func (d *decoder) fail() {
	if d.err == nil {
		d.err = errTruncated
	}
	d.b = nil
}

func (d *decoder) byte1() byte {
	if len(d.b) < 1 {
		d.fail()
		return 0
	}
	c := d.b[0]
	d.b = d.b[1:]
	return c
}

func (d *decoder) raw(n int) []byte {
	if len(d.b) < n {
		d.fail()
		return nil
	}
	p := d.b[:n:n]
	d.b = d.b[n:]
	return p
}

func (d *decoder) uvarint() uint64 {
	v, n := binary.Uvarint(d.b)
	// n > 1 with a zero last byte is a padded, non-canonical encoding: the
	// bytes are hashed, so exactly one encoding may be valid.
	if n <= 0 || n > 1 && d.b[n-1] == 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

func (d *decoder) varint() int64 {
	v, n := binary.Varint(d.b)
	if n <= 0 || n > 1 && d.b[n-1] == 0 {
		d.fail()
		return 0
	}
	d.b = d.b[n:]
	return v
}

// bytesv returns a slice aliasing the input (valid only as long as it is).
func (d *decoder) bytesv() []byte {
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
		return nil
	}
	return d.raw(int(n))
}

func (d *decoder) str() string { return string(d.bytesv()) }

var errBadByte = errors.New("invalid state or flag byte")

// state reads a state byte; anything but 0 to 3 is damage.
func (d *decoder) state() State {
	c := d.byte1()
	if c > 3 && d.err == nil {
		d.err = errBadByte
	}
	return byteState(c)
}

// flag reads a 0/1 byte.
func (d *decoder) flag() bool {
	c := d.byte1()
	if c > 1 && d.err == nil {
		d.err = errBadByte
	}
	return c == 1
}

// subject is the projection for one (tenant, subject): the encrypted
// address, the current state per purpose, and the sequence numbers of its
// events (its history), oldest first.
type subject struct {
	addrCipher []byte
	purposes   []purposeState
	events     []uint64
}

type purposeState struct {
	purpose string
	state   State
	since   int64 // occurred_at of the event that set it, Unix ns
	seq     uint64
}

const subjectVersion = 1

func (s *subject) encode(dst []byte) []byte {
	e := encoder{b: dst}
	e.byte1(subjectVersion)
	e.bytesv(s.addrCipher)
	e.uvarint(uint64(len(s.purposes)))
	for _, p := range s.purposes {
		e.str(p.purpose)
		e.byte1(stateByte(p.state))
		e.varint(p.since)
		e.uvarint(p.seq)
	}
	e.uvarint(uint64(len(s.events)))
	var prev uint64
	for _, seq := range s.events {
		e.uvarint(seq - prev) // ascending, so deltas stay one or two bytes
		prev = seq
	}
	return e.b
}

func decodeSubject(v []byte) (subject, error) {
	var s subject
	d := decoder{b: v}
	if ver := d.byte1(); d.err == nil && ver != subjectVersion {
		return s, errors.New("subject record has an unknown version; was it written by a newer pixelrelay?")
	}
	s.addrCipher = append([]byte(nil), d.bytesv()...)
	n := d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
	}
	for i := uint64(0); i < n && d.err == nil; i++ {
		var p purposeState
		p.purpose = d.str()
		p.state = d.state()
		p.since = d.varint()
		p.seq = d.uvarint()
		s.purposes = append(s.purposes, p)
	}
	n = d.uvarint()
	if n > uint64(len(d.b)) {
		d.fail()
	}
	var seq uint64
	for i := uint64(0); i < n && d.err == nil; i++ {
		seq += d.uvarint()
		s.events = append(s.events, seq)
	}
	return s, d.err
}

// subjectStateOf reads one purpose's state straight from the encoded value,
// without allocating: this is Lookup's inner loop.
func subjectStateOf(v []byte, purpose string) (State, bool) {
	d := decoder{b: v}
	if d.byte1() != subjectVersion {
		return Unknown, false
	}
	d.bytesv()
	n := d.uvarint()
	for i := uint64(0); i < n && d.err == nil; i++ {
		name := d.bytesv()
		st := d.byte1()
		d.varint()
		d.uvarint()
		if string(name) == purpose { // no allocation: the compiler compares in place
			return byteState(st), d.err == nil
		}
	}
	return Unknown, d.err == nil
}

func (s *subject) find(purpose string) (purposeState, bool) {
	for _, p := range s.purposes {
		if p.purpose == purpose {
			return p, true
		}
	}
	return purposeState{purpose: purpose, state: Unknown}, false
}

func (s *subject) set(p purposeState) {
	for i := range s.purposes {
		if s.purposes[i].purpose == p.purpose {
			s.purposes[i] = p
			return
		}
	}
	s.purposes = append(s.purposes, p)
}

// Event kinds in the events bucket.
const (
	kindEvent     = 'E' // a consent change, hashed in full
	kindTombstone = 'T' // an erased event: only its digests and subject hash remain
	kindErasure   = 'X' // the erasure itself, hashed in full, without the address
)

const eventVersion = 1

// storedEvent is one entry of the global chain. For a tombstone only seq,
// kind, id, tenant, subject, hash and prevHash are meaningful.
type storedEvent struct {
	seq      uint64
	kind     byte
	prevHash [32]byte
	hash     [32]byte

	id       [16]byte
	tenant   string
	subject  [32]byte
	purpose  string
	state    State
	previous State
	occurred int64 // Unix ns
	recorded int64 // Unix ns
	method   string
	source   string
	textVer  string
	textSHA  string // lower-case hex or ""
	evidence string
	actor    string
	weak     bool
	erased   []uint64 // kindErasure: the sequence numbers it tombstoned
}

// body is the canonical byte form that the chain hashes. It is also what is
// stored after the two digests.
func (ev *storedEvent) body(dst []byte) []byte {
	e := encoder{b: dst}
	e.byte1(ev.kind)
	switch ev.kind {
	case kindEvent:
		e.byte1(eventVersion)
		e.raw(ev.id[:])
		e.str(ev.tenant)
		e.raw(ev.subject[:])
		e.str(ev.purpose)
		e.byte1(stateByte(ev.state))
		e.byte1(stateByte(ev.previous))
		e.varint(ev.occurred)
		e.varint(ev.recorded)
		e.str(ev.method)
		e.str(ev.source)
		e.str(ev.textVer)
		e.str(ev.textSHA)
		e.str(ev.evidence)
		e.str(ev.actor)
		if ev.weak {
			e.byte1(1)
		} else {
			e.byte1(0)
		}
	case kindErasure:
		e.byte1(eventVersion)
		e.raw(ev.id[:])
		e.str(ev.tenant)
		e.raw(ev.subject[:])
		e.varint(ev.recorded)
		e.str(ev.actor)
		e.uvarint(uint64(len(ev.erased)))
		for _, s := range ev.erased {
			e.uvarint(s)
		}
	case kindTombstone:
		e.raw(ev.id[:])
		e.str(ev.tenant)
		e.raw(ev.subject[:])
	}
	return e.b
}

// encode is the stored value: prev hash, hash, then body (whose first byte
// is the kind).
func (ev *storedEvent) encode(dst []byte) []byte {
	dst = append(dst, ev.prevHash[:]...)
	dst = append(dst, ev.hash[:]...)
	return ev.body(dst)
}

func decodeEvent(seq uint64, v []byte) (storedEvent, error) {
	ev := storedEvent{seq: seq}
	d := decoder{b: v}
	copy(ev.prevHash[:], d.raw(32))
	copy(ev.hash[:], d.raw(32))
	ev.kind = d.byte1()
	switch ev.kind {
	case kindEvent:
		if d.byte1() != eventVersion && d.err == nil {
			return ev, errors.New("event has an unknown version")
		}
		copy(ev.id[:], d.raw(16))
		ev.tenant = d.str()
		copy(ev.subject[:], d.raw(32))
		ev.purpose = d.str()
		ev.state = d.state()
		ev.previous = d.state()
		ev.occurred = d.varint()
		ev.recorded = d.varint()
		ev.method = d.str()
		ev.source = d.str()
		ev.textVer = d.str()
		ev.textSHA = d.str()
		ev.evidence = d.str()
		ev.actor = d.str()
		ev.weak = d.flag()
	case kindErasure:
		if d.byte1() != eventVersion && d.err == nil {
			return ev, errors.New("erasure event has an unknown version")
		}
		copy(ev.id[:], d.raw(16))
		ev.tenant = d.str()
		copy(ev.subject[:], d.raw(32))
		ev.recorded = d.varint()
		ev.actor = d.str()
		n := d.uvarint()
		if n > uint64(len(d.b)) {
			d.fail()
		}
		for i := uint64(0); i < n && d.err == nil; i++ {
			ev.erased = append(ev.erased, d.uvarint())
		}
	case kindTombstone:
		copy(ev.id[:], d.raw(16))
		ev.tenant = d.str()
		copy(ev.subject[:], d.raw(32))
	default:
		if d.err == nil {
			return ev, errors.New("event has an unknown kind")
		}
	}
	if d.err == nil && len(d.b) != 0 {
		return ev, errors.New("event has trailing bytes")
	}
	return ev, d.err
}

func fromNano(ns int64) time.Time {
	if ns == 0 {
		return time.Time{}
	}
	return time.Unix(0, ns).UTC()
}

func seqKey(seq uint64) []byte {
	var k [8]byte
	binary.BigEndian.PutUint64(k[:], seq)
	return k[:]
}
