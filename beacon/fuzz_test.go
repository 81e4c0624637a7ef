package beacon

import (
	"testing"
)

// FuzzVerify feeds arbitrary tokens to the public endpoint's parser. It
// must never panic, and the only tokens it accepts are the ones the ring
// signs, spelled exactly as it spells them.
func FuzzVerify(f *testing.F) {
	secret := []byte("0123456789abcdef0123456789abcdef")
	kr, err := newKeyring([]Key{{ID: 7, Secret: secret, Created: t0}, {ID: 3, Secret: []byte("fedcba9876543210fedcba9876543210"), Created: t0, Retired: t0}})
	if err != nil {
		f.Fatal(err)
	}
	today := epochDay(t0)
	f.Add(kr.sign(appendSubject(nil, "default", "autumn-2026", today)))
	f.Add(kr.sign(appendSubject(nil, "t", "c", today-90)))
	f.Add("")
	f.Add("AAAA")
	f.Add("AQAAAAcAAE-gB2RlZmF1bHQLYXV0dW1uLTIwMjY")
	f.Fuzz(func(t *testing.T, tok string) {
		s := new(scratch)
		subject, reason := kr.verify(tok, s, today, 90)
		if reason != "" {
			if subject != nil {
				t.Fatalf("refused (%s) but returned a subject", reason)
			}
			return
		}
		day, tenant, campaign, ok := parseSubject(subject)
		if !ok {
			t.Fatalf("accepted a token whose subject does not parse: %q", tok)
		}
		if day > today+1 || today-day > 90 && today > day {
			t.Fatalf("accepted a token outside its validity: day %d", day)
		}
		raw, _ := tokenEncoding.DecodeString(tok)
		k := kr.byID[uint32(raw[1])<<24|uint32(raw[2])<<16|uint32(raw[3])<<8|uint32(raw[4])]
		again := &keyring{signer: k, byID: kr.byID}
		if re := again.sign(appendSubject(nil, string(tenant), string(campaign), day)); re != tok {
			t.Fatalf("accepted %q, but the ring signs that subject as %q", tok, re)
		}
	})
}
