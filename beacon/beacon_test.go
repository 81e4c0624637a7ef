package beacon

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"go.etcd.io/bbolt"
)

func TestTokenRoundTrip(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 1})

	u, ok := mustDecide(t, b, "acme", "autumn-2026", 1, t0)
	if !ok {
		t.Fatal("MinBatch 1: the first recipient should get the beacon")
	}
	if !strings.HasPrefix(u, testBase+"/b/") || !strings.HasSuffix(u, ".gif") {
		t.Fatalf("URL %q is not {base}/b/{token}.gif", u)
	}
	tok := strings.TrimSuffix(strings.TrimPrefix(u, testBase+"/b/"), ".gif")
	for _, c := range tok {
		if !strings.ContainsRune("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", c) {
			t.Fatalf("token %q holds %q, which is not URL-safe base64", tok, c)
		}
	}

	// The token carries exactly version, key id, day, tenant, campaign and
	// the MAC: nothing else fits in its length.
	raw, err := tokenEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	subject := appendSubject(nil, "acme", "autumn-2026", epochDay(t0))
	if want := headerLen + len(subject) + macLen; len(raw) != want {
		t.Fatalf("token is %d bytes, want %d (version, key id, subject, MAC)", len(raw), want)
	}
	if !bytes.Equal(raw[headerLen:len(raw)-macLen], subject) {
		t.Fatalf("token subject %x, want %x", raw[headerLen:len(raw)-macLen], subject)
	}
	day, tenant, campaign, ok := parseSubject(raw[headerLen : len(raw)-macLen])
	if !ok || string(tenant) != "acme" || string(campaign) != "autumn-2026" || DayString(dayTime(day)) != "2026-11-28" {
		t.Fatalf("subject decodes to %v %q %q %s", ok, tenant, campaign, DayString(dayTime(day)))
	}

	h := b.PublicHandler()
	if rec := get(h, http.MethodGet, pathOf(t, u)); rec.Code != http.StatusOK {
		t.Fatalf("valid beacon answered %d", rec.Code)
	}
	got := statsFor(t, b, "autumn-2026")
	want := []Stat{{Tenant: "acme", Campaign: "autumn-2026", Day: "2026-11-28", Recipients: 1, BeaconRecipients: 1, Loads: 1}}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("stats = %+v, want %+v", got, want)
	}
	// The load counts toward the send day, even when it happens days later.
	clk.Set(t0.Add(5 * 24 * time.Hour))
	get(h, http.MethodGet, pathOf(t, u))
	if got := statsFor(t, b, "autumn-2026"); len(got) != 1 || got[0].Day != "2026-11-28" || got[0].Loads != 2 {
		t.Fatalf("a late load should count toward the send day: %+v", got)
	}
}

// signWith signs an arbitrary message with a key id and secret, for
// forging tokens the way an attacker holding (or guessing) a key would.
func signWith(id uint32, secret []byte, subject []byte, version byte) string {
	k := newSigningKey(id, secret, time.Time{})
	raw := []byte{version}
	raw = binary.BigEndian.AppendUint32(raw, id)
	raw = append(raw, subject...)
	return tokenEncoding.EncodeToString(k.mac(raw, raw))
}

func TestRejectedTokensCountNothing(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 1})
	good := pathOf(t, mustURL(t, b, "default", "spring", t0))
	tok := strings.TrimSuffix(strings.TrimPrefix(good, "/b/"), ".gif")
	raw, _ := tokenEncoding.DecodeString(tok)

	keys, err := LoadKeys(db, t0)
	if err != nil {
		t.Fatal(err)
	}
	secret := keys[0].Secret

	// Another installation's key: a valid token, but not ours.
	otherDB, _ := testDB(t)
	other := open(t, otherDB, clk, Options{})
	otherTok := pathOf(t, mustURL(t, other, "default", "spring", t0))

	flip := func(s string, i int) string {
		c := byte('A')
		if s[i] == 'A' {
			c = 'B'
		}
		return s[:i] + string(c) + s[i+1:]
	}
	altered := append([]byte(nil), raw...)
	copy(altered[headerLen+5+len("default")+1:], "sprinG") // same MAC, other campaign
	wrongKid := append([]byte(nil), raw...)
	binary.BigEndian.PutUint32(wrongKid[1:5], 99)

	cases := []struct {
		name, path string
	}{
		// One character of the MAC changed, as the acceptance check does.
		{"forged MAC", "/b/" + flip(tok, len(tok)-4) + ".gif"},
		// The subject changed under the original MAC.
		{"altered campaign", "/b/" + tokenEncoding.EncodeToString(altered) + ".gif"},
		// Cut at several places, including inside the MAC.
		{"truncated by one", "/b/" + tok[:len(tok)-1] + ".gif"},
		{"truncated to half", "/b/" + tok[:len(tok)/2] + ".gif"},
		{"truncated to the header", "/b/" + tok[:8] + ".gif"},
		// A different installation's key; its key id 1 exists here too.
		{"other installation's key", otherTok},
		// A key id this database never had.
		{"unknown key id", "/b/" + tokenEncoding.EncodeToString(wrongKid) + ".gif"},
		// Signed with our key but with a version we do not speak.
		{"unknown version", "/b/" + signWith(keys[0].ID, secret, appendSubject(nil, "default", "spring", epochDay(t0)), 2) + ".gif"},
		// Signed with our key but with lengths that do not add up.
		{"signed garbage subject", "/b/" + signWith(keys[0].ID, secret, []byte("\x00\x00\x50\x00\x09default\x03ab"), 1) + ".gif"},
		// Dated 91 days ago: past the 90-day default.
		{"expired", pathOf(t, mustURL(t, b, "default", "spring", t0.Add(-91*24*time.Hour)))},
		// Dated next week: nothing we sign is in the future.
		{"future day", pathOf(t, mustURL(t, b, "default", "spring", t0.Add(7*24*time.Hour)))},
		// Base64 with padding, a character outside the URL alphabet, and a
		// non-canonical last character (different spelling, same bytes).
		{"padded", "/b/" + tok + "=.gif"},
		{"standard alphabet", "/b/" + strings.Replace(tok, tok[:1], "+", 1) + ".gif"},
		{"empty token", "/b/.gif"},
		// encoding/base64 skips line breaks; a token has one spelling.
		{"line break inside", "/b/" + tok[:10] + "%0A" + tok[10:] + ".gif"},
		{"far too long", "/b/" + strings.Repeat("A", maxTokenLen+4) + ".gif"},
		{"percent garbage", "/b/%00%ff.gif"},
	}
	h := b.PublicHandler()
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if rec := get(h, http.MethodGet, c.path); rec.Code != http.StatusNotFound {
				t.Fatalf("GET %s answered %d, want 404", c.path, rec.Code)
			}
		})
	}
	// Non-canonical encoding: the token's last character carries unused
	// bits; setting them must not give a second accepted spelling.
	last := tok[len(tok)-1]
	idx := strings.IndexByte("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_", last)
	if len(raw)%3 != 0 {
		alt := tok[:len(tok)-1] + string("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[idx^1])
		if alt != tok {
			if rec := get(h, http.MethodGet, "/b/"+alt+".gif"); rec.Code != http.StatusNotFound {
				t.Errorf("non-canonical spelling of a valid token answered %d", rec.Code)
			}
		}
	}
	if n := loadsOf(t, b); n != 0 {
		t.Fatalf("rejected tokens counted %d loads", n)
	}
	if s, _ := b.Stats(context.Background(), Filter{}); len(s) != 0 {
		t.Fatalf("rejected tokens created counters: %+v", s)
	}
	// And the good one still works, so the 404s were not a broken handler.
	if rec := get(h, http.MethodGet, good); rec.Code != http.StatusOK {
		t.Fatalf("valid token answered %d", rec.Code)
	}
}

func TestExpiryBoundary(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MaxAge: 90 * 24 * time.Hour})
	p := pathOf(t, mustURL(t, b, "default", "c", t0))
	h := b.PublicHandler()
	cases := []struct {
		at   time.Time
		want int
	}{
		{t0.Add(90 * 24 * time.Hour), 200},                                            // day 90: still honoured
		{time.Date(2027, 2, 26, 23, 59, 59, 0, time.UTC), 200},                        // last second of day 90
		{time.Date(2027, 2, 27, 0, 0, 0, 0, time.UTC), 404},                           // day 91
		{t0.Add(-12 * time.Hour), 200},                                                // the day before (clock skew)
		{t0.Add(-48 * time.Hour), 404},                                                // two days before: from the future
		{time.Date(2026, 11, 28, 23, 0, 0, 0, time.FixedZone("UTC-5", -5*3600)), 200}, // 04:00 UTC the next day; only UTC days count
	}
	for _, c := range cases {
		clk.Set(c.at)
		if rec := get(h, http.MethodGet, p); rec.Code != c.want {
			t.Errorf("at %s: %d, want %d", c.at.UTC().Format(time.RFC3339), rec.Code, c.want)
		}
	}
}

func TestSameURLForEveryRecipientOfACampaignDay(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 3})

	// One recipient per message, through the day.
	var urls []string
	for i := 0; i < 40; i++ {
		u, ok := mustDecide(t, b, "default", "autumn-2026", 1, t0.Add(time.Duration(i)*17*time.Minute))
		if ok {
			urls = append(urls, u)
		}
	}
	if len(urls) != 38 {
		t.Fatalf("%d recipients got beacons, want 38 (40 minus the first 2)", len(urls))
	}
	for _, u := range urls {
		if u != urls[0] {
			t.Fatalf("recipients of one campaign on one day got different URLs:\n%s\n%s", urls[0], u)
		}
	}
	if u := mustURL(t, b, "default", "autumn-2026", t0); u != urls[0] {
		t.Fatalf("URL() = %s, Decide gave %s", u, urls[0])
	}
	// Each of tenant, campaign and day changes the URL.
	for _, o := range []struct{ tenant, campaign string }{{"other", "autumn-2026"}, {"default", "autumn-2027"}} {
		if u := mustURL(t, b, o.tenant, o.campaign, t0); u == urls[0] {
			t.Errorf("%s/%s got the same URL as default/autumn-2026", o.tenant, o.campaign)
		}
	}
	if u := mustURL(t, b, "default", "autumn-2026", t0.Add(24*time.Hour)); u == urls[0] {
		t.Error("the next day got the same URL")
	}
}

func TestMinBatchGuard(t *testing.T) {
	db, path := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{})

	for i := 1; i <= 49; i++ {
		if u, ok := mustDecide(t, b, "default", "news", 1, t0); ok || u != "" {
			t.Fatalf("recipient %d of 49 got a beacon (%q); a batch this small must be stripped", i, u)
		}
	}
	u, ok := mustDecide(t, b, "default", "news", 1, t0)
	if !ok || u == "" {
		t.Fatal("the 50th recipient should get the beacon")
	}
	// The guard counts per campaign and per day.
	if _, ok := mustDecide(t, b, "default", "other-news", 1, t0); ok {
		t.Error("another campaign inherited the count")
	}
	if _, ok := mustDecide(t, b, "default", "news", 1, t0.Add(24*time.Hour)); ok {
		t.Error("the next day inherited the count")
	}
	// A single message with the whole batch gets it at once.
	if _, ok := mustDecide(t, b, "default", "big", 50, t0); !ok {
		t.Error("one message to 50 recipients should get the beacon")
	}
	// Check looks without counting.
	if ok, err := b.Check("default", "quiet", 49, t0); err != nil || ok {
		t.Errorf("Check(49) = %v, %v", ok, err)
	}
	if ok, err := b.Check("default", "quiet", 50, t0); err != nil || !ok {
		t.Errorf("Check(50) = %v, %v", ok, err)
	}
	if s := statsFor(t, b, "quiet"); len(s) != 0 {
		t.Errorf("Check recorded recipients: %+v", s)
	}

	// The counter survives a restart: close (flush), reopen, go on.
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	db = reopenDB(t, path)
	stored, err := ReadStats(db, Filter{Campaign: "news"})
	if err != nil {
		t.Fatal(err)
	}
	if len(stored) != 2 || stored[0].Recipients != 50 || stored[0].BeaconRecipients != 1 || stored[1].Recipients != 1 {
		t.Fatalf("stored counters after Close: %+v", stored)
	}
	b2 := open(t, db, clk, Options{})
	if u2, ok := mustDecide(t, b2, "default", "news", 1, t0); !ok || u2 != u {
		t.Fatalf("after reopening, recipient 51 got ok=%v url=%q, want the same beacon", ok, u2)
	}
	// A fresh campaign after the restart still starts from zero.
	if _, ok := mustDecide(t, b2, "default", "after-restart", 49, t0); ok {
		t.Error("49 recipients got a beacon after a restart")
	}
}

func TestMinBatchSurvivesEviction(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 10})
	mustDecide(t, b, "default", "c", 9, t0)
	for i := 0; i <= evictAfter+1; i++ {
		if err := b.Flush(); err != nil {
			t.Fatal(err)
		}
	}
	if n := len(*b.entries.Load()); n != 0 {
		t.Fatalf("%d idle entries still in memory after %d flushes", n, evictAfter+2)
	}
	if _, ok := mustDecide(t, b, "default", "c", 1, t0); !ok {
		t.Fatal("the 10th recipient, after the counter left memory, should get the beacon")
	}
}

func TestWritesAreBatched(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 1})
	u := mustURL(t, b, "default", "burst", t0)
	h := b.PublicHandler()

	before := txid(t, db)
	for i := 0; i < 300; i++ {
		mustDecide(t, b, "default", fmt.Sprintf("campaign-%d", i%7), 1, t0)
		get(h, http.MethodGet, pathOf(t, u))
	}
	if got := txid(t, db) - before; got != 0 {
		t.Fatalf("300 messages and 300 loads wrote %d transactions before the flush; want 0", got)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := txid(t, db) - before; got != 1 {
		t.Fatalf("one flush wrote %d transactions, want 1", got)
	}
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if got := txid(t, db) - before; got != 1 {
		t.Fatalf("a flush with nothing pending wrote a transaction")
	}
	s, _ := ReadStats(db, Filter{Campaign: "burst"})
	if len(s) != 1 || s[0].Loads != 300 {
		t.Fatalf("stored after flush: %+v", s)
	}
}

func TestKeyRotation(t *testing.T) {
	db, path := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 1})
	h := b.PublicHandler()
	old := pathOf(t, mustURL(t, b, "default", "c", t0))

	ki, err := b.RotateKey(false)
	if err != nil {
		t.Fatal(err)
	}
	if ki.ID != 2 || !ki.Signing {
		t.Fatalf("rotated key = %+v, want id 2 signing", ki)
	}
	fresh := pathOf(t, mustURL(t, b, "default", "c", t0))
	if fresh == old {
		t.Fatal("the new key signs the same token as the old one")
	}
	// Both verify and count into the same campaign counter.
	for _, p := range []string{old, fresh} {
		if rec := get(h, http.MethodGet, p); rec.Code != 200 {
			t.Fatalf("after rotation %s answered %d", p, rec.Code)
		}
	}
	if s := statsFor(t, b, "c"); len(s) != 1 || s[0].Loads != 2 {
		t.Fatalf("loads through the old and the new key should add up in one row: %+v", s)
	}
	keys, err := b.Keys()
	if err != nil || len(keys) != 2 || !keys[0].Signing || keys[1].Signing || keys[1].Retired == nil {
		t.Fatalf("keys after rotation = %+v, %v", keys, err)
	}

	// A token dated after the old key retired, signed with the old key,
	// means that key leaked: refuse it.
	stored, _ := LoadKeys(db, t0)
	leaked := "/b/" + signWith(1, stored[1].Secret, appendSubject(nil, "default", "c", epochDay(t0)+3), 1) + ".gif"
	clk.Set(t0.Add(3 * 24 * time.Hour))
	if rec := get(h, http.MethodGet, leaked); rec.Code != 404 {
		t.Fatalf("old key signing after its retirement answered %d", rec.Code)
	}
	// The old token keeps working until it expires...
	clk.Set(t0.Add(90 * 24 * time.Hour))
	if rec := get(h, http.MethodGet, old); rec.Code != 200 {
		t.Fatalf("old-key token at day 90 answered %d", rec.Code)
	}
	clk.Set(t0.Add(91 * 24 * time.Hour))
	if rec := get(h, http.MethodGet, old); rec.Code != 404 {
		t.Fatalf("old-key token at day 91 answered %d", rec.Code)
	}
	// ...and a restart well after that deletes the old key.
	clk.Set(t0.Add(100 * 24 * time.Hour))
	b.Close()
	db.Close()
	db = reopenDB(t, path)
	b = open(t, db, clk, Options{})
	if keys, _ := b.Keys(); len(keys) != 1 || keys[0].ID != 2 {
		t.Fatalf("keys after the old one's tokens expired = %+v", keys)
	}
}

func TestRevokeOldKeys(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{})
	h := b.PublicHandler()
	old := pathOf(t, mustURL(t, b, "default", "c", t0))
	if _, err := b.RotateKey(true); err != nil {
		t.Fatal(err)
	}
	if rec := get(h, http.MethodGet, old); rec.Code != 404 {
		t.Fatalf("revoked key's token answered %d", rec.Code)
	}
	if rec := get(h, http.MethodGet, pathOf(t, mustURL(t, b, "default", "c", t0))); rec.Code != 200 {
		t.Fatalf("new key's token answered %d", rec.Code)
	}
	if keys, _ := b.Keys(); len(keys) != 1 {
		t.Fatalf("keys after revoking = %+v", keys)
	}
}

func TestOfflineRotation(t *testing.T) {
	db, path := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{})
	old := pathOf(t, mustURL(t, b, "default", "c", t0))
	b.Close()
	db.Close()

	// `pixelrelay beacon rotate-key --db` while the server is stopped.
	db = reopenDB(t, path)
	ki, err := RotateKey(db, RotateOptions{Now: t0.Add(time.Hour)})
	if err != nil || ki.ID != 2 {
		t.Fatalf("RotateKey = %+v, %v", ki, err)
	}
	b = open(t, db, clk, Options{})
	if rec := get(b.PublicHandler(), http.MethodGet, old); rec.Code != 200 {
		t.Fatalf("old token after an offline rotation answered %d", rec.Code)
	}
	if tok, _ := b.Token("default", "c", t0); binary.BigEndian.Uint32(mustDecode(t, tok)[1:5]) != 2 {
		t.Fatal("after an offline rotation the server does not sign with the new key")
	}
}

func mustDecode(t testing.TB, tok string) []byte {
	t.Helper()
	raw, err := tokenEncoding.DecodeString(tok)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

func TestInvalidKeys(t *testing.T) {
	db, _ := testDB(t)
	b := open(t, db, newClock(t0), Options{})
	cases := []struct {
		name, tenant, campaign string
	}{
		{"empty campaign", "default", ""},                 // the relay falls back to the sender domain first
		{"empty tenant", "", "c"},                         // tenants are never empty
		{"too long", "default", strings.Repeat("x", 256)}, // does not fit the length byte
		{"newline", "default", "a\nb"},                    // would break the stats table
		{"NUL in tenant", "a\x00b", "c"},                  // would break the counter key
		{"invalid UTF-8", "default", "caf\xe9"},           // raw Latin-1 header bytes
		{"C1 control", "default", "a\u0085b"},             // NEL
	}
	for _, c := range cases {
		if _, _, err := b.Decide(c.tenant, c.campaign, 1, t0); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: Decide error = %v, want ErrInvalidKey", c.name, err)
		}
		if _, err := b.URL(c.tenant, c.campaign, t0); !errors.Is(err, ErrInvalidKey) {
			t.Errorf("%s: URL error = %v, want ErrInvalidKey", c.name, err)
		}
	}
	// The longest allowed keys still make a working token.
	long := strings.Repeat("é", MaxKeyLen/2)
	u := mustURL(t, b, strings.Repeat("t", MaxKeyLen), long, t0)
	if rec := get(b.PublicHandler(), http.MethodGet, pathOf(t, u)); rec.Code != 200 {
		t.Fatalf("token with maximal keys answered %d", rec.Code)
	}
}

func TestOptionsReportEveryProblem(t *testing.T) {
	db, _ := testDB(t)
	_, err := Open(db, Options{MinBatch: -1, MaxAge: time.Hour, Base: "ftp://beacon.example.com", FlushInterval: -time.Second})
	if err == nil {
		t.Fatal("bad options accepted")
	}
	for _, want := range []string{"min batch -1", "max age 1h0m0s", "ftp://beacon.example.com", "flush interval"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not mention %q", err, want)
		}
	}
	// No base: statistics work, handing out beacons says what is missing.
	b, err := Open(db, Options{MinBatch: 1, Now: newClock(t0).Now})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, _, err := b.Decide("default", "c", 1, t0); !errors.Is(err, ErrNoBase) {
		t.Fatalf("Decide without base: %v", err)
	}
	if _, err := b.Stats(context.Background(), Filter{}); err != nil {
		t.Fatalf("Stats without base: %v", err)
	}
	// A base with a path prefix and trailing slash.
	b2, err := Open(db, Options{Base: "https://example.com/px/", Now: newClock(t0).Now})
	if err != nil {
		t.Fatal(err)
	}
	defer b2.Close()
	if u, _ := b2.URL("default", "c", t0); !strings.HasPrefix(u, "https://example.com/px/b/") {
		t.Fatalf("URL with a path base = %s", u)
	}
}

func TestReadOnlyDatabase(t *testing.T) {
	db, path := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 1})
	mustDecide(t, b, "default", "c", 3, t0)
	b.Close()
	db.Close()
	ro, err := bbolt.Open(path, 0o600, &bbolt.Options{ReadOnly: true, Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer ro.Close()
	s, err := ReadStats(ro, Filter{})
	if err != nil || len(s) != 1 || s[0].Recipients != 3 {
		t.Fatalf("ReadStats on a read-only database = %+v, %v", s, err)
	}
	if keys, err := ListKeys(ro); err != nil || len(keys) != 1 {
		t.Fatalf("ListKeys on a read-only database = %+v, %v", keys, err)
	}
	if _, err := Open(ro, Options{}); err == nil || !strings.Contains(err.Error(), "read-only") {
		t.Fatalf("Open on a read-only database: %v", err)
	}
}

func TestOnlyOwnBuckets(t *testing.T) {
	db, _ := testDB(t)
	// Another package's bucket, with data that must stay as it is.
	if err := db.Update(func(tx *bbolt.Tx) error {
		bk, err := tx.CreateBucket([]byte("consent_records"))
		if err != nil {
			return err
		}
		return bk.Put([]byte("k"), []byte("v"))
	}); err != nil {
		t.Fatal(err)
	}
	b := open(t, db, newClock(t0), Options{MinBatch: 1})
	u, _ := mustDecide(t, b, "default", "c", 1, t0)
	get(b.PublicHandler(), http.MethodGet, pathOf(t, u))
	if _, err := b.RotateKey(true); err != nil {
		t.Fatal(err)
	}
	b.Close()
	var names []string
	db.View(func(tx *bbolt.Tx) error {
		return tx.ForEach(func(name []byte, bk *bbolt.Bucket) error {
			names = append(names, string(name))
			if string(name) == "consent_records" {
				if v := bk.Get([]byte("k")); string(v) != "v" || bk.Stats().KeyN != 1 {
					t.Errorf("consent_records was changed")
				}
			}
			return nil
		})
	})
	want := "beacon_counters beacon_keys consent_records"
	if got := strings.Join(names, " "); got != want {
		t.Fatalf("buckets = %s, want %s", got, want)
	}
}

func TestMetrics(t *testing.T) {
	db, _ := testDB(t)
	reg := prometheus.NewRegistry()
	b := open(t, db, newClock(t0), Options{MinBatch: 2, Registerer: reg})
	mustDecide(t, b, "default", "c", 1, t0)
	u, _ := mustDecide(t, b, "default", "c", 3, t0)
	h := b.PublicHandler()
	for i := 0; i < 5; i++ {
		get(h, http.MethodGet, pathOf(t, u))
	}
	get(h, http.MethodGet, "/b/AAAA.gif")
	get(h, http.MethodGet, "/favicon.ico")
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]float64{}
	for _, mf := range mfs {
		for _, m := range mf.GetMetric() {
			name := mf.GetName()
			for _, l := range m.GetLabel() {
				name += "{" + l.GetValue() + "}"
			}
			got[name] = m.GetCounter().GetValue()
		}
	}
	want := map[string]float64{
		"pixelrelay_beacon_loads_total":                       5,
		"pixelrelay_beacon_recipients_total{beacon}":          3,
		"pixelrelay_beacon_recipients_total{below_min_batch}": 1,
		"pixelrelay_beacon_rejected_total{malformed}":         1,
		"pixelrelay_beacon_rejected_total{not_found}":         1,
		"pixelrelay_beacon_flush_errors_total":                0,
		"pixelrelay_beacon_rejected_total{expired}":           0,
		"pixelrelay_beacon_rejected_total{bad_signature}":     0,
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("%s = %v, want %v", k, got[k], v)
		}
	}
	// A second Beacons on the same registry is a configuration error, not
	// a panic.
	if _, err := Open(db, Options{Registerer: reg}); err == nil {
		t.Error("registering the metrics twice was accepted")
	}
}

func TestFlushFailureKeepsCounts(t *testing.T) {
	db, _ := testDB(t)
	var logs logBuffer
	b := open(t, db, newClock(t0), Options{MinBatch: 1, Logger: debugLogger(&logs)})
	u, _ := mustDecide(t, b, "default", "c", 4, t0)
	h := b.PublicHandler()
	for i := 0; i < 7; i++ {
		get(h, http.MethodGet, pathOf(t, u))
	}
	// The database goes away under the counters (a closed handle stands in
	// for a full disk): the flush fails, says so, and keeps every count.
	db.Close()
	if err := b.Flush(); err == nil || !strings.Contains(err.Error(), "pixelrelay.db") {
		t.Fatalf("Flush on a closed database: %v", err)
	}
	if err := b.Flush(); err == nil {
		t.Fatal("second Flush on a closed database succeeded")
	}
	var pending counts
	for _, e := range *b.entries.Load() {
		pending.add(counts{e.recipients, e.beaconRecipients, e.loads.Load()})
	}
	if pending != (counts{4, 4, 7}) {
		t.Fatalf("after two failed flushes the pending counts are %+v, want 4 recipients, 4 beaconed, 7 loads", pending)
	}
	if !strings.Contains(logs.String(), "not written") {
		t.Fatalf("the failure was not logged: %q", logs.String())
	}
	if err := b.Close(); err == nil {
		t.Fatal("Close hid the failed final flush")
	}
}

// A key retired longer ago than MaxAge (plus slack) verifies nothing any
// more, and Open deletes it; KeepRetiredKeys, for an opener that does not
// know the server's MaxAge, leaves it.
func TestOpenPrunesExpiredKeys(t *testing.T) {
	for _, keep := range []bool{false, true} {
		db, _ := testDB(t)
		if _, err := LoadKeys(db, t0.Add(-200*24*time.Hour)); err != nil {
			t.Fatal(err)
		}
		if _, err := RotateKey(db, RotateOptions{Now: t0.Add(-100 * 24 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		if _, err := RotateKey(db, RotateOptions{Now: t0.Add(-10 * 24 * time.Hour)}); err != nil {
			t.Fatal(err)
		}
		open(t, db, newClock(t0), Options{MaxAge: 90 * 24 * time.Hour, KeepRetiredKeys: keep})
		keys, err := ListKeys(db)
		if err != nil {
			t.Fatal(err)
		}
		var ids []uint32
		for _, k := range keys {
			ids = append(ids, k.ID)
		}
		// Key 1 was retired 100 days ago: past 90 days and 3 of slack.
		want := []uint32{3, 2}
		if keep {
			want = []uint32{3, 2, 1}
		}
		if fmt.Sprint(ids) != fmt.Sprint(want) {
			t.Errorf("KeepRetiredKeys=%v: keys %v after Open, want %v", keep, ids, want)
		}
	}
}
