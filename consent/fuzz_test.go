package consent

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"unicode/utf8"
)

// FuzzNormalizeAddress: never panics; what the strict path accepts, the
// lookup path normalises to the same bytes (otherwise a stored grant could
// be missed by the relay); normalising twice changes nothing.
func FuzzNormalizeAddress(f *testing.F) {
	for _, s := range []string{
		"bob@example.com", "Bob@Example.COM", "bob+news@example.com", "José@Bücher.example", `"john doe"@example.com`,
		"a@xn--bcher-kva.example", "a@XN--BCHER-KVA.example", "@example.com", "a@", "a@b", "a@1.2.3.4", "a@[1.2.3.4]",
		"a..b@example.com", ".a@example.com", "a@-x.com", "a@x-.com", "Bob <bob@example.com>", "ｂｏｂ@ｅｘａｍｐｌｅ.com",
		"\xff@example.com", "a@b\xffc.com", strings.Repeat("a", 65) + "@example.com", "+tag@example.com",
	} {
		f.Add(s, false)
		f.Add(s, true)
	}
	f.Fuzz(func(t *testing.T, addr string, ignorePlus bool) {
		strict, err := appendNormalized(nil, addr, ignorePlus, true)
		lenient, lerr := appendNormalized(nil, addr, ignorePlus, false)
		if err != nil {
			return
		}
		if lerr != nil || !bytes.Equal(strict, lenient) {
			t.Fatalf("%q: strict %q, lookup %q (%v)", addr, strict, lenient, lerr)
		}
		if len(strict) > maxAddressLen || !utf8.Valid(strict) {
			t.Fatalf("%q normalised to %q", addr, strict)
		}
		again, err := appendNormalized(nil, string(strict), ignorePlus, true)
		if err != nil || !bytes.Equal(again, strict) {
			t.Fatalf("%q → %q → %q (%v): not idempotent", addr, strict, again, err)
		}
	})
}

// FuzzDecode: values read from a damaged file are errors, never panics.
func FuzzDecode(f *testing.F) {
	sub := subject{addrCipher: []byte("0123456789abcdef0123"), purposes: []purposeState{{purpose: "open_tracking", state: Granted, since: 1, seq: 2}}, events: []uint64{1, 2, 300}}
	f.Add(sub.encode(nil))
	ev := storedEvent{kind: kindEvent, tenant: "default", purpose: "open_tracking", state: Granted, method: "web_form", actor: "t"}
	f.Add(ev.encode(nil))
	x := storedEvent{kind: kindErasure, tenant: "default", actor: "t", erased: []uint64{1, 5}}
	f.Add(x.encode(nil))
	f.Add([]byte{})
	f.Fuzz(func(t *testing.T, v []byte) {
		decodeSubject(v)
		subjectStateOf(v, "open_tracking")
		if e, err := decodeEvent(1, v); err == nil {
			// What decodes re-encodes to the same bytes: the chain hashes them.
			if got := e.encode(nil); !bytes.Equal(got, v) {
				t.Fatalf("re-encoding differs:\n%x\n%x", v, got)
			}
		}
	})
}

// FuzzImportNative: any input is imported, rejected row by row, or refused
// with an error; never a panic, never a broken chain, and the counts add up.
func FuzzImportNative(f *testing.F) {
	f.Add([]byte("email,purpose,state,occurred_at,evidence\na@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e\n"))
	f.Add([]byte("\xef\xbb\xbfemail,purpose,state,occurred_at,tenant,weak_proof\r\nb@example.com,click_tracking,denied,2026-01-01T00:00:00+02:00,t1,true\r\n"))
	f.Add([]byte("email,purpose,state,occurred_at\n\"a@example.com,open_tracking,granted,2026-01-01T00:00:00Z\n"))
	f.Add([]byte("email,purpose,state,occurred_at,text_sha256\na@example.com,open_tracking,withdrawn,2026-01-01T00:00:00Z,SHA256:9F86D081884C7D659A2FEAA0C55AD015A3BF4F1B2B0B822CD15D6C15B0F00A08\n"))
	s, _ := openTest(f, Options{})
	f.Fuzz(func(t *testing.T, data []byte) {
		res, err := s.Import(context.Background(), bytes.NewReader(data), ImportOptions{Actor: "fuzz", BatchSize: 3})
		if res.Rows != res.Imported+res.Unchanged+res.Skipped+res.RejectedCount {
			t.Fatalf("counts do not add up: %+v (%v)", res, err)
		}
		if err := s.VerifyChain(context.Background()); err != nil {
			t.Fatal(err)
		}
	})
}
