package consent

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestExportCSVRoundTrip(t *testing.T) {
	src, _ := openTest(t, Options{})
	runImport(t, src, fixture(t, "native.csv"), ImportOptions{})
	weak := grant("weak@example.com")
	weak.Evidence, weak.TextVersion, weak.WeakProof = "", "", true
	mustRecord(t, src, weak)
	mustRecord(t, src, Event{Tenant: "brand-b", Address: "zed@example.com", State: Denied, Method: MethodAdmin, Actor: "t"})

	var out bytes.Buffer
	if err := src.Export(context.Background(), &out, ExportOptions{Format: ExportCSV, AllTenants: true}); err != nil {
		t.Fatal(err)
	}
	rows, err := csv.NewReader(bytes.NewReader(out.Bytes())).ReadAll()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(rows[0], ",") != strings.Join(NativeColumns, ",") {
		t.Errorf("header = %v", rows[0])
	}
	if len(rows) != 1+7 { // alice, Bob ×2, carol, ivan, weak, zed
		t.Errorf("%d event rows:\n%s", len(rows)-1, out.String())
	}

	// Importing the export into an empty store reproduces every state, the
	// weak grant included.
	dst, _ := openTest(t, Options{})
	res := runImport(t, dst, out.Bytes(), ImportOptions{})
	if res.RejectedCount != 0 || res.Imported != 7 {
		t.Errorf("re-import: %+v", res)
	}
	for _, tc := range []struct{ tenant, addr, purpose string }{
		{DefaultTenant, "alice@example.com", PurposeOpenTracking}, {DefaultTenant, "bob@example.com", PurposeOpenTracking},
		{DefaultTenant, "carol@example.com", PurposeClickTracking}, {DefaultTenant, "ivan@xn--bcher-kva.example", PurposeOpenTracking},
		{DefaultTenant, "weak@example.com", PurposeOpenTracking}, {"brand-b", "zed@example.com", PurposeOpenTracking},
	} {
		a, b := mustLookup(t, src, tc.tenant, tc.addr, tc.purpose), mustLookup(t, dst, tc.tenant, tc.addr, tc.purpose)
		if a != b || a == Unknown {
			t.Errorf("%s/%s: source %s, copy %s", tc.tenant, tc.addr, a, b)
		}
	}

	// One tenant only, by default.
	out.Reset()
	src.Export(context.Background(), &out, ExportOptions{})
	if strings.Contains(out.String(), "zed@example.com") || !strings.Contains(out.String(), "alice@example.com") {
		t.Errorf("default export is not limited to the default tenant:\n%s", out.String())
	}
}

func TestExportJSONL(t *testing.T) {
	s, _ := openTest(t, Options{})
	runImport(t, s, fixture(t, "native.csv"), ImportOptions{})
	var out bytes.Buffer
	if err := s.Export(context.Background(), &out, ExportOptions{Format: ExportJSONL}); err != nil {
		t.Fatal(err)
	}
	sc := bufio.NewScanner(&out)
	n := 0
	for sc.Scan() {
		var rec Record
		if err := json.Unmarshal(sc.Bytes(), &rec); err != nil {
			t.Fatalf("line %d: %v", n+1, err)
		}
		if rec.Address == "" || len(rec.History) == 0 || rec.History[0].Hash == "" || rec.History[0].Actor != "test" {
			t.Errorf("record %+v", rec)
		}
		n++
	}
	if n != 4 { // alice, bob, carol, ivan
		t.Errorf("%d subjects, want 4", n)
	}
	// One subject only (an access request).
	out.Reset()
	s.Export(context.Background(), &out, ExportOptions{Format: ExportJSONL, Address: "BOB@example.com"})
	if c := strings.Count(out.String(), "\n"); c != 1 || !strings.Contains(out.String(), `"withdrawn"`) {
		t.Errorf("single-subject export:\n%s", out.String())
	}
}

func TestBackupIsAUsableDatabase(t *testing.T) {
	s, _ := openTest(t, Options{})
	mustRecord(t, s, grant("bob@example.com"))
	path := filepath.Join(t.TempDir(), "backup.db")
	f, _ := os.Create(path)
	n, err := s.Backup(f)
	f.Close()
	if err != nil || n == 0 {
		t.Fatalf("Backup = %d, %v", n, err)
	}
	b, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := mustLookup(t, b, DefaultTenant, "bob@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("backup lookup = %s", st)
	}
	if err := b.VerifyChain(context.Background()); err != nil {
		t.Error(err)
	}
	// The live store's pseudonym key travelled with the backup.
	p1, _ := s.Pseudonym("bob@example.com")
	p2, _ := b.Pseudonym("bob@example.com")
	if p1 != p2 {
		t.Errorf("pseudonyms differ: %s vs %s", p1, p2)
	}
}
