package consent

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func fixture(t testing.TB, name string) []byte {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("..", "testdata", "consent", name))
	if err != nil {
		t.Fatal(err)
	}
	return data
}

func runImport(t testing.TB, s *Store, data []byte, opts ImportOptions) ImportResult {
	t.Helper()
	if opts.Actor == "" {
		opts.Actor = "test"
	}
	res, err := s.Import(context.Background(), bytes.NewReader(data), opts)
	if err != nil {
		t.Fatalf("Import: %v", err)
	}
	if res.Rows != res.Imported+res.Unchanged+res.Skipped+res.RejectedCount {
		t.Errorf("rows %d != imported %d + unchanged %d + skipped %d + rejected %d", res.Rows, res.Imported, res.Unchanged, res.Skipped, res.RejectedCount)
	}
	return res
}

func rejectedLines(res ImportResult) map[int]string {
	m := map[int]string{}
	for _, r := range res.Rejected {
		m[r.Line] = r.Reason
	}
	return m
}

func TestImportNative(t *testing.T) {
	s, _ := openTest(t, Options{})
	var streamed []int
	res := runImport(t, s, fixture(t, "native.csv"), ImportOptions{OnReject: func(r Rejection) { streamed = append(streamed, r.Line) }})
	if res.Rows != 13 || res.Imported != 5 || res.Unchanged != 1 || res.RejectedCount != 7 {
		t.Errorf("result = %+v", res)
	}
	want := map[int]string{
		6:  "no @",                  // not an address
		7:  "not declared",          // undeclared purpose
		8:  "unknown state",         // "maybe"
		9:  "in the future",         // 2099
		10: "a grant needs proof",   // no evidence, no text
		12: "not an RFC 3339 time",  // "yesterday"
		14: "has 10 fields but the", // one field too many
	}
	got := rejectedLines(res)
	for line, frag := range want {
		if !strings.Contains(got[line], frag) {
			t.Errorf("line %d: reason %q, want it to mention %q", line, got[line], frag)
		}
	}
	if len(got) != len(want) {
		t.Errorf("rejected lines = %v", got)
	}
	if fmt.Sprint(streamed) != "[6 7 8 9 10 12 14]" {
		t.Errorf("OnReject saw lines %v, want them in order", streamed)
	}
	for addr, st := range map[string]State{"alice@example.com": Granted, "bob@example.com": Withdrawn, "ivan@xn--bcher-kva.example": Granted, "grace@example.com": Unknown} {
		if got := mustLookup(t, s, DefaultTenant, addr, PurposeOpenTracking); got != st {
			t.Errorf("%s: %s, want %s", addr, got, st)
		}
	}
	if got := mustLookup(t, s, DefaultTenant, "carol@example.com", PurposeClickTracking); got != Denied {
		t.Errorf("carol click_tracking = %s", got)
	}
	rec, _ := s.Show(context.Background(), DefaultTenant, "alice@example.com")
	h := rec.History[0]
	if h.Method != MethodWebForm || h.Source != "https://shop.example/signup" || h.TextSHA256 != "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08" || h.Actor != "test" {
		t.Errorf("alice's proof fields = %+v", h)
	}
	if !h.OccurredAt.Equal(time.Date(2026, 3, 1, 9, 0, 0, 0, time.UTC)) {
		t.Errorf("occurred_at = %s", h.OccurredAt)
	}

	// Importing the same file again changes nothing.
	again := runImport(t, s, fixture(t, "native.csv"), ImportOptions{})
	if again.Imported != 0 || again.Unchanged != 6 || again.RejectedCount != 7 {
		t.Errorf("re-import = %+v", again)
	}
	if err := s.VerifyChain(context.Background()); err != nil {
		t.Error(err)
	}
}

func TestImportBOMCRLFAndTenantColumn(t *testing.T) {
	s, _ := openTest(t, Options{})
	data := fixture(t, "native_bom_crlf.csv")
	for _, variant := range []struct {
		name string
		data []byte
	}{
		{"BOM+CRLF", data},
		{"LF", bytes.ReplaceAll(bytes.TrimPrefix(data, []byte("\xef\xbb\xbf")), []byte("\r\n"), []byte("\n"))},
		{"no trailing newline", bytes.TrimRight(data, "\r\n")},
	} {
		s2, _ := openTest(t, Options{})
		res := runImport(t, s2, variant.data, ImportOptions{Tenant: "brand-a"})
		if res.Imported != 2 || res.RejectedCount != 0 {
			t.Errorf("%s: %+v", variant.name, res)
		}
		if st := mustLookup(t, s2, "brand-b", "mallory@example.com", PurposeOpenTracking); st != Granted {
			t.Errorf("%s: the row's tenant column was not used: %s", variant.name, st)
		}
		if st := mustLookup(t, s2, "brand-a", "niaj@example.com", PurposeOpenTracking); st != Denied {
			t.Errorf("%s: an empty tenant cell did not fall back to --tenant: %s", variant.name, st)
		}
	}
	_ = s
}

func TestImportFatalInput(t *testing.T) {
	s, _ := openTest(t, Options{})
	mustRecord(t, s, grant("keep@example.com"))
	long := "email,purpose,state,occurred_at,evidence\n" + "a@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e1\n" +
		`"` + strings.Repeat("x", 2<<20) + "\n"
	tests := []struct {
		name, data, want string
	}{
		// Each row: input that cannot be imported at all, and the hint.
		{"empty file", "", "empty"},
		{"UTF-16", "\xff\xfee\x00m\x00", "UTF-16"},
		{"wrong format", "Email Address,OPTIN_TIME,LEID\nx@example.com,,1\n", "--format mailchimp"},
		{"missing column", "email,purpose,state\n", `"occurred_at" is missing`},
		{"unknown column", "email,purpose,state,occurred_at,locale\n", `unknown column "locale"`},
		{"unclosed quote", long, "longer than 1024 KiB"},
	}
	for _, tc := range tests {
		_, err := s.Import(context.Background(), strings.NewReader(tc.data), ImportOptions{Actor: "t"})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
	}
	// The row before the runaway record was committed; nothing older was lost.
	if st := mustLookup(t, s, DefaultTenant, "a@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("row before the fatal error: %s", st)
	}
	if st := mustLookup(t, s, DefaultTenant, "keep@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("existing record lost: %s", st)
	}
}

func TestImportMalformedRowContinues(t *testing.T) {
	s, _ := openTest(t, Options{})
	data := "email,purpose,state,occurred_at,evidence\n" +
		"a@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e1\n" +
		"b@exa\"mple.com,open_tracking,granted,2026-01-01T00:00:00Z,e2\n" +
		"c@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e3\n"
	res := runImport(t, s, []byte(data), ImportOptions{})
	if res.Imported != 2 || res.RejectedCount != 1 || res.Rejected[0].Line != 3 || !strings.Contains(res.Rejected[0].Reason, "malformed CSV") {
		t.Errorf("result = %+v", res)
	}
}

func TestImportDuplicatesAndOrder(t *testing.T) {
	s, _ := openTest(t, Options{})
	data := "email,purpose,state,occurred_at,evidence\n" +
		"a@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e1\n" + // imported
		"A@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e1\n" + // exact duplicate: unchanged
		"a@example.com,open_tracking,denied,2026-01-01T00:00:00Z,e1\n" + // same time, other state: which is true?
		"a@example.com,open_tracking,withdrawn,2026-02-01T00:00:00Z,e2\n" + // later: imported
		"a@example.com,open_tracking,granted,2026-01-15T00:00:00Z,e3\n" // older than the withdrawal: unchanged
	res := runImport(t, s, []byte(data), ImportOptions{})
	if res.Imported != 2 || res.Unchanged != 2 || res.RejectedCount != 1 || res.Rejected[0].Line != 4 || !strings.Contains(res.Rejected[0].Reason, "same time") {
		t.Errorf("result = %+v", res)
	}
	if st := mustLookup(t, s, DefaultTenant, "a@example.com", PurposeOpenTracking); st != Withdrawn {
		t.Errorf("final state %s, want withdrawn", st)
	}
}

func TestImportMailchimp(t *testing.T) {
	s, _ := openTest(t, Options{})
	sub := runImport(t, s, fixture(t, "mailchimp/subscribed_members_export_3f2a.csv"), ImportOptions{Format: FormatMailchimp})
	if sub.Imported != 2 || sub.RejectedCount != 2 {
		t.Errorf("subscribed: %+v", sub)
	}
	if r := rejectedLines(sub); !strings.Contains(r[4], "CONFIRM_TIME") || !strings.Contains(r[5], "no @") {
		t.Errorf("subscribed rejections: %v", r)
	}
	// Newsletter consent is recorded, pixel consent is not invented.
	for _, a := range []string{"ann@example.org", "ben@example.org"} {
		if st := mustLookup(t, s, DefaultTenant, a, PurposeMarketingEmail); st != Granted {
			t.Errorf("%s marketing_email = %s", a, st)
		}
		if st := mustLookup(t, s, DefaultTenant, a, PurposeOpenTracking); st != Unknown {
			t.Errorf("%s open_tracking = %s, want unknown: a subscription is not pixel consent", a, st)
		}
	}
	rec, _ := s.Show(context.Background(), DefaultTenant, "ann@example.org")
	if h := rec.History[0]; h.Method != MethodDoubleOptIn || h.Evidence != "mailchimp:euid=a1b2c3d4e5" || h.Source != "mailchimp" ||
		!h.OccurredAt.Equal(time.Date(2025, 11, 2, 9, 16, 41, 0, time.UTC)) {
		t.Errorf("ann's event = %+v", h)
	}
	rec, _ = s.Show(context.Background(), DefaultTenant, "ben@example.org")
	if h := rec.History[0]; h.Method != MethodImport || !h.OccurredAt.Equal(time.Date(2025, 12, 1, 17, 0, 0, 0, time.UTC)) {
		t.Errorf("ben's event (no CONFIRM_TIME) = %+v", h)
	}

	unsub := runImport(t, s, fixture(t, "mailchimp/unsubscribed_members_export_3f2a.csv"), ImportOptions{Format: FormatMailchimp})
	if unsub.Imported != 2 || unsub.RejectedCount != 0 {
		t.Errorf("unsubscribed: %+v", unsub)
	}
	rec, _ = s.Show(context.Background(), DefaultTenant, "eve@example.org")
	if len(rec.History) != 2 || rec.History[0].State != Granted || rec.History[1].State != Withdrawn || rec.History[1].Method != MethodEmailLink {
		t.Errorf("eve's history = %+v", rec.History)
	}
	if st := mustLookup(t, s, DefaultTenant, "fay@example.org", PurposeMarketingEmail); st != Withdrawn {
		t.Errorf("fay (dated by LAST_CHANGED) = %s", st)
	}

	cleaned := runImport(t, s, fixture(t, "mailchimp/cleaned_members_export_3f2a.csv"), ImportOptions{Format: FormatMailchimp})
	if cleaned.Skipped != 1 || cleaned.Imported != 0 {
		t.Errorf("cleaned: %+v", cleaned)
	}
	if st := mustLookup(t, s, DefaultTenant, "gus@example.org", PurposeMarketingEmail); st != Unknown {
		t.Errorf("a bounce became consent: %s", st)
	}
}

func TestImportMailchimpMappedColumn(t *testing.T) {
	s, _ := openTest(t, Options{})
	res := runImport(t, s, fixture(t, "mailchimp/subscribed_members_export_3f2a.csv"), ImportOptions{
		Format: FormatMailchimp, Map: map[string]string{"Email open tracking": PurposeOpenTracking}, TextVersion: "pixel-v1",
		At: time.Date(2024, 1, 10, 10, 0, 0, 0, time.UTC),
	})
	if res.Imported != 3 || res.RejectedCount != 1 {
		t.Errorf("result = %+v", res)
	}
	for addr, want := range map[string]State{"ann@example.org": Granted, "ben@example.org": Unknown, "cy@example.org": Denied} {
		if st := mustLookup(t, s, DefaultTenant, addr, PurposeOpenTracking); st != want {
			t.Errorf("%s open_tracking = %s, want %s", addr, st, want)
		}
	}
	if _, err := s.Import(context.Background(), bytes.NewReader(fixture(t, "mailchimp/subscribed_members_export_3f2a.csv")),
		ImportOptions{Actor: "t", Format: FormatMailchimp, Map: map[string]string{"Pixel": PurposeOpenTracking}}); err == nil || !strings.Contains(err.Error(), `"Pixel" is not in the file`) {
		t.Errorf("mapping a missing column: %v", err)
	}
}

// A row is one decision. cy's row says subscribed (granted) and, through
// the mapped column, "no" (denied) for the same purpose at the same time:
// the row is rejected and nothing of it is written.
func TestImportRowIsAllOrNothing(t *testing.T) {
	s, _ := openTest(t, Options{})
	res := runImport(t, s, fixture(t, "mailchimp/subscribed_members_export_3f2a.csv"), ImportOptions{
		Format: FormatMailchimp, Map: map[string]string{"Email open tracking": PurposeMarketingEmail}, TextVersion: "pixel-v1",
		At: time.Date(2024, 1, 10, 10, 0, 0, 0, time.UTC),
	})
	if r := rejectedLines(res); !strings.Contains(r[4], "both granted and denied") {
		t.Errorf("cy's contradictory row: rejections %v", r)
	}
	if st := mustLookup(t, s, DefaultTenant, "cy@example.org", PurposeMarketingEmail); st != Unknown {
		t.Errorf("a rejected row left cy marketing_email = %s", st)
	}
	if st := mustLookup(t, s, DefaultTenant, "ann@example.org", PurposeMarketingEmail); st != Granted {
		t.Errorf("ann marketing_email = %s: the other rows must still import", st)
	}

	// A row whose second change conflicts with what is stored is rejected
	// before its first change is written.
	s2, _ := openTest(t, Options{})
	at := time.Date(2024, 1, 10, 10, 0, 0, 0, time.UTC)
	mustRecord(t, s2, Event{Address: "cy@example.org", Purpose: PurposeOpenTracking, State: Granted, Method: MethodWebForm, Evidence: "f", Actor: "t", OccurredAt: at})
	res = runImport(t, s2, fixture(t, "mailchimp/subscribed_members_export_3f2a.csv"), ImportOptions{
		Format: FormatMailchimp, Map: map[string]string{"Email open tracking": PurposeOpenTracking}, TextVersion: "pixel-v1", At: at,
	})
	if r := rejectedLines(res); !strings.Contains(r[4], "conflicts") {
		t.Errorf("cy's row against a stored grant: rejections %v", r)
	}
	if st := mustLookup(t, s2, DefaultTenant, "cy@example.org", PurposeMarketingEmail); st != Unknown {
		t.Errorf("the rejected row's first change was written: cy marketing_email = %s", st)
	}
}

// --weak-proof admits proof-less grants and marks only those weak: a row
// that carries evidence or a text reference, and any withdrawal, keeps a
// clean record.
func TestImportWeakProofMarksOnlyProoflessGrants(t *testing.T) {
	s, _ := openTest(t, Options{})
	data := "email,purpose,state,occurred_at,evidence,text_version\n" +
		"bare@example.com,open_tracking,granted,2026-01-01T00:00:00Z,,\n" +
		"proved@example.com,open_tracking,granted,2026-01-01T00:00:00Z,form-9,v3\n" +
		"texted@example.com,open_tracking,granted,2026-01-01T00:00:00Z,,v3\n" +
		"gone@example.com,open_tracking,withdrawn,2026-01-01T00:00:00Z,,\n"
	res := runImport(t, s, []byte(data), ImportOptions{WeakProof: true})
	if res.Imported != 4 {
		t.Fatalf("result = %+v", res)
	}
	for addr, want := range map[string]bool{"bare@example.com": true, "proved@example.com": false, "texted@example.com": false, "gone@example.com": false} {
		rec, err := s.Show(context.Background(), DefaultTenant, addr)
		if err != nil || len(rec.History) != 1 {
			t.Fatalf("%s: %+v %v", addr, rec, err)
		}
		if got := rec.History[0].WeakProof; got != want {
			t.Errorf("%s weak_proof = %v, want %v", addr, got, want)
		}
	}
}

func TestImportHubSpot(t *testing.T) {
	s, _ := openTest(t, Options{})
	res := runImport(t, s, fixture(t, "hubspot/contacts.csv"), ImportOptions{Format: FormatHubSpot})
	if res.Imported != 1 || res.Skipped != 2 || res.RejectedCount != 2 {
		t.Errorf("without --weak-proof: %+v", res)
	}
	if r := rejectedLines(res); !strings.Contains(r[2], "--weak-proof") || !strings.Contains(r[6], "Email is empty") {
		t.Errorf("rejections: %v", r)
	}
	if st := mustLookup(t, s, DefaultTenant, "jon@example.net", PurposeMarketingEmail); st != Withdrawn {
		t.Errorf("opted-out jon = %s", st)
	}
	res = runImport(t, s, fixture(t, "hubspot/contacts.csv"), ImportOptions{Format: FormatHubSpot, WeakProof: true})
	if res.Imported != 1 || res.Unchanged != 1 {
		t.Errorf("with --weak-proof: %+v", res)
	}
	rec, _ := s.Show(context.Background(), DefaultTenant, "hal@example.net")
	if len(rec.History) != 1 || !rec.History[0].WeakProof || rec.History[0].Evidence != "hubspot:record=501" {
		t.Errorf("hal = %+v", rec.History)
	}
	for _, a := range []string{"hal@example.net", "jon@example.net", "ida@example.net"} {
		if st := mustLookup(t, s, DefaultTenant, a, PurposeOpenTracking); st != Unknown {
			t.Errorf("%s open_tracking = %s: HubSpot never records pixel consent", a, st)
		}
	}
}

func TestImportSkipsErasedSubjects(t *testing.T) {
	now := testNow
	s, _ := openTest(t, Options{Now: func() time.Time { return now }})
	data := []byte("email,purpose,state,occurred_at,evidence\nz@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e\n")
	runImport(t, s, data, ImportOptions{})
	if err := s.Erase(context.Background(), "", "z@example.com", "t"); err != nil {
		t.Fatal(err)
	}
	res := runImport(t, s, data, ImportOptions{})
	if res.Skipped != 1 || res.Imported != 0 {
		t.Errorf("re-importing an old list resurrected an erased subject: %+v", res)
	}
	if st := mustLookup(t, s, DefaultTenant, "z@example.com", PurposeOpenTracking); st != Unknown {
		t.Errorf("state = %s", st)
	}
}

func TestImportCancelKeepsCommittedBatches(t *testing.T) {
	s, _ := openTest(t, Options{})
	var b strings.Builder
	b.WriteString("email,purpose,state,occurred_at,evidence\n")
	for i := range 50 {
		fmt.Fprintf(&b, "u%d@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e\n", i)
	}
	// Ctrl-C part-way: once the first batch of 10 is committed and the
	// reader is past row 25, the import is cancelled.
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	r := &cancelAfter{data: []byte(b.String()), at: strings.Index(b.String(), "u25@"), onAt: func() {
		deadline := time.Now().Add(5 * time.Second) // not committed by then: the assertions below say so
		for mustLookup(t, s, DefaultTenant, "u9@example.com", PurposeOpenTracking) != Granted && time.Now().Before(deadline) {
			time.Sleep(time.Millisecond)
		}
		cancel()
	}}
	res, err := s.Import(ctx, r, ImportOptions{Actor: "t", BatchSize: 10})
	if !errors.Is(err, context.Canceled) {
		t.Fatalf("cancelled import: %+v %v", res, err)
	}
	if res.Imported < 10 || res.Imported >= 50 || res.Imported%10 != 0 {
		t.Fatalf("imported %d rows: want whole batches of 10, at least the first, not all", res.Imported)
	}
	for i := range 50 {
		want := Unknown
		if i < res.Imported {
			want = Granted
		}
		if st := mustLookup(t, s, DefaultTenant, fmt.Sprintf("u%d@example.com", i), PurposeOpenTracking); st != want {
			t.Errorf("u%d = %s, want %s: the store must hold exactly the batches the result reports", i, st, want)
		}
	}

	ctx, cancel = context.WithCancel(context.Background())
	cancel()
	res, err = s.Import(ctx, strings.NewReader(strings.ReplaceAll(b.String(), "@example.com", "@other.example")), ImportOptions{Actor: "t", BatchSize: 10})
	if !errors.Is(err, context.Canceled) || res.Rows != 0 {
		t.Errorf("cancelled import: %+v %v", res, err)
	}
	if st := mustLookup(t, s, DefaultTenant, "u0@other.example", PurposeOpenTracking); st != Unknown {
		t.Errorf("an import cancelled before it started wrote %s", st)
	}
}

// cancelAfter reads data and calls onAt once, when the read reaches at.
type cancelAfter struct {
	data []byte
	off  int
	at   int
	onAt func()
}

func (r *cancelAfter) Read(p []byte) (int, error) {
	if r.off >= len(r.data) {
		return 0, io.EOF
	}
	if r.off == r.at && r.onAt != nil {
		r.onAt()
		r.onAt = nil
	}
	end := len(r.data)
	if r.off < r.at {
		end = r.at
	}
	n := copy(p, r.data[r.off:end])
	r.off += n
	return n, nil
}
