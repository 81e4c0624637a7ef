package main

import (
	"archive/zip"
	"bufio"
	"bytes"
	"encoding/json"
	"flag"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/pixelrelay/pixelrelay/consent"
)

var updateGolden = flag.Bool("update", false, "rewrite the golden files of the consent command tests")

// consentRun runs `pixelrelay consent ARGS...` in-process.
func consentRun(t *testing.T, env map[string]string, stdin string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &cmdEnv{stdin: strings.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(k string) string { return env[k] }}
	code = dispatch(e, append([]string{"consent"}, args...))
	return code, out.String(), errb.String()
}

func consentFixture(name string) string {
	return filepath.Join("..", "..", "testdata", "consent", name)
}

func TestConsentLifecycle(t *testing.T) {
	db := filepath.Join(t.TempDir(), "c.db")
	code, out, errs := consentRun(t, nil, "", "grant", "Bob@Example.COM", "--db", db, "--method", "web_form",
		"--source", "signup", "--text-version", "v1", "--evidence", "form-1", "--at", "2026-05-01T10:00:00Z")
	if code != 0 || !strings.Contains(out, "bob@example.com: open_tracking granted since 2026-05-01T10:00:00Z") {
		t.Fatalf("grant: exit %d\n%s%s", code, out, errs)
	}
	if !strings.Contains(errs, "created a new database") {
		t.Errorf("creating the file was not announced: %q", errs)
	}
	// Flags may follow the address (GNU style).
	code, out, _ = consentRun(t, nil, "", "withdraw", "bob@example.com", "--method", "preference_center", "--db", db, "--at", "2026-05-02T10:00:00Z")
	if code != 0 {
		t.Fatalf("withdraw: exit %d %s", code, out)
	}
	code, out, _ = consentRun(t, nil, "", "show", "bob@example.com", "--json", "--db", db)
	if code != 0 {
		t.Fatalf("show: exit %d", code)
	}
	var rec map[string]any
	if err := json.Unmarshal([]byte(out), &rec); err != nil {
		t.Fatalf("show --json is not JSON: %v\n%s", err, out)
	}
	states := rec["states"].(map[string]any)
	ot := states["open_tracking"].(map[string]any)
	if rec["address"] != "bob@example.com" || rec["tenant"] != "default" || ot["state"] != "withdrawn" || ot["since"] != "2026-05-02T10:00:00Z" {
		t.Errorf("show --json: %s", out)
	}
	hist := rec["history"].([]any)
	if len(hist) != 2 {
		t.Fatalf("history: %d entries", len(hist))
	}
	first := hist[0].(map[string]any)
	var keys []string
	for k := range first {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	if got := strings.Join(keys, ","); got != "actor,event_id,evidence,hash,method,occurred_at,prev_hash,previous,purpose,recorded_at,source,state,text_sha256,text_version,weak_proof" {
		t.Errorf("history entry keys = %s", got)
	}
	if !strings.HasPrefix(first["actor"].(string), "cli:") || first["evidence"] != "form-1" || hist[1].(map[string]any)["prev_hash"] != first["hash"] {
		t.Errorf("history: %s", out)
	}
	// Human output.
	code, out, _ = consentRun(t, nil, "", "show", "--db", db, "BOB@example.com")
	if code != 0 || !strings.Contains(out, "open_tracking    withdrawn  since 2026-05-02T10:00:00Z") || !strings.Contains(out, "click_tracking   unknown") ||
		!strings.Contains(out, "granted -> withdrawn  preference_center") {
		t.Errorf("show:\n%s", out)
	}
	// Never seen: empty states, exit 0.
	code, out, _ = consentRun(t, nil, "", "show", "new@example.com", "--json", "--db", db)
	if code != 0 || !strings.Contains(out, `"states": {}`) {
		t.Errorf("never-seen: exit %d %s", code, out)
	}
	code, out, _ = consentRun(t, nil, "", "erase", "bob@example.com", "--db", db)
	if code != 0 || !strings.Contains(out, "erased") {
		t.Errorf("erase: exit %d %s", code, out)
	}
	code, out, _ = consentRun(t, nil, "", "show", "bob@example.com", "--json", "--db", db)
	if code != 0 || strings.Contains(out, "withdrawn") || !strings.Contains(out, `"erased_at"`) {
		t.Errorf("show after erase: %s", out)
	}
	code, out, _ = consentRun(t, nil, "", "erase", "bob@example.com", "--db", db)
	if code != 0 || !strings.Contains(out, "nothing to erase") {
		t.Errorf("second erase: exit %d %s", code, out)
	}
	code, out, _ = consentRun(t, nil, "", "verify", "--db", db)
	if code != 0 || !strings.Contains(out, "consent chain intact: 3 events (2 erased, 1 erasures)") {
		t.Errorf("verify: exit %d %s", code, out)
	}
}

func TestConsentUsageErrors(t *testing.T) {
	db := filepath.Join(t.TempDir(), "c.db")
	if code, _, _ := consentRun(t, nil, "", "grant", "a@example.com", "--evidence", "e", "--db", db); code != 0 {
		t.Fatal("setup grant failed")
	}
	tok := map[string]string{"PIXELRELAY_API_TOKEN": "t"}
	tests := []struct {
		name string
		env  map[string]string
		args []string
		want string
	}{
		// Each row: a mistake, and what the operator must read. Every one exits 1.
		{"no subcommand", nil, nil, "usage: pixelrelay consent"},
		{"unknown subcommand", nil, []string{"revoke", "a@example.com"}, `unknown command "revoke"`},
		{"invalid address", nil, []string{"grant", "not-an-address", "--db", db}, "no @"},
		{"missing address", nil, []string{"show", "--db", db}, "expected one address"},
		{"two addresses", nil, []string{"grant", "a@example.com", "b@example.com", "--db", db}, "expected one address"},
		{"grant without proof", nil, []string{"grant", "b@example.com", "--db", db}, "--weak-proof"},
		{"undeclared purpose", nil, []string{"deny", "a@example.com", "--purpose", "profiling", "--db", db}, "not declared"},
		{"unknown method", nil, []string{"deny", "a@example.com", "--method", "phone", "--db", db}, "unknown method"},
		{"bad --at", nil, []string{"deny", "a@example.com", "--at", "yesterday", "--db", db}, "RFC 3339"},
		{"future --at", nil, []string{"deny", "a@example.com", "--at", "2999-01-01T00:00:00Z", "--db", db}, "in the future"},
		{"older than current", nil, []string{"withdraw", "a@example.com", "--at", "2000-01-01T00:00:00Z", "--db", db}, "cannot change it"},
		{"both --db and --server", tok, []string{"show", "a@example.com", "--db", db, "--server", "http://127.0.0.1:1"}, "not both"},
		{"--server without token", nil, []string{"show", "a@example.com", "--server", "http://127.0.0.1:1"}, "PIXELRELAY_API_TOKEN"},
		{"server down", tok, []string{"show", "a@example.com", "--server", "http://127.0.0.1:1"}, "cannot reach pixelrelay"},
		{"read of a missing file", nil, []string{"show", "a@example.com", "--db", db + ".typo"}, "does not exist"},
		// Erasing from a file a typo just created would say "nothing to erase"
		// while the real database still holds the person.
		{"erase in a missing file", nil, []string{"erase", "a@example.com", "--db", db + ".typo"}, "does not exist"},
		// --purpose where it would be ignored: erase would remove every purpose.
		{"erase of one purpose", nil, []string{"erase", "a@example.com", "--purpose", "click_tracking", "--db", db}, "use withdraw --purpose P"},
		{"erase naming the default purpose", nil, []string{"erase", "a@example.com", "--purpose", "open_tracking", "--db", db}, "every purpose"},
		{"export of one purpose", nil, []string{"export", "--purpose", "click_tracking", "--db", db}, "--purpose does not apply to consent export"},
		{"import with --purpose", nil, []string{"import", "--purpose", "open_tracking", "--format", "native", consentFixture("native.csv"), "--purpose", "click_tracking", "--db", db}, "names the purpose per row"},
		{"--map without =", nil, []string{"import", "--format", "mailchimp", "--map", "x", consentFixture("native.csv"), "--db", db}, "COLUMN=PURPOSE"},
		{"import of a missing file", nil, []string{"import", "/nonexistent.csv", "--db", db}, "cannot read /nonexistent.csv"},
		{"unknown format", nil, []string{"import", "--format", "xls", consentFixture("native.csv"), "--db", db}, "unknown import format"},
		{"backup onto the database", nil, []string{"backup", db, "--db", db}, "is the database itself"},
		{"verify through a server", tok, []string{"verify", "--server", "http://127.0.0.1:1"}, "verify a snapshot"},
		{"unknown flag", nil, []string{"show", "a@example.com", "--colour"}, "flag provided but not defined"},
	}
	for _, tc := range tests {
		code, out, errs := consentRun(t, tc.env, "", tc.args...)
		if code != 1 || !strings.Contains(out+errs, tc.want) {
			t.Errorf("%s: exit %d, output %q; want 1 and %q", tc.name, code, out+errs, tc.want)
		}
	}
	if _, err := os.Stat(db + ".typo"); err == nil {
		t.Error("a read of a mistyped --db created the file")
	}
}

// TestHelperConsentHoldsLock is not a test: TestConsentDatabaseInUse runs
// it as a second process that holds the database like a running serve.
func TestHelperConsentHoldsLock(t *testing.T) {
	path := os.Getenv("PIXELRELAY_TEST_HOLD_DB")
	if path == "" {
		t.Skip("helper process only")
	}
	s, err := consent.Open(path, consent.Options{})
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	defer s.Close()
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin)
}

func TestConsentDatabaseInUse(t *testing.T) {
	dir := t.TempDir()
	db := filepath.Join(dir, "held.db")
	if code, _, errs := consentRun(t, nil, "", "grant", "a@example.com", "--evidence", "e", "--db", db); code != 0 {
		t.Fatal(errs)
	}
	holder := exec.Command(os.Args[0], "-test.run=^TestHelperConsentHoldsLock$")
	holder.Env = append(os.Environ(), "PIXELRELAY_TEST_HOLD_DB="+db)
	stdin, _ := holder.StdinPipe()
	stdout, _ := holder.StdoutPipe()
	if err := holder.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { stdin.Close(); holder.Wait() }()
	if line, _ := bufio.NewReader(stdout).ReadString('\n'); line != "ready\n" {
		t.Fatalf("lock holder: %q", line)
	}
	want := "database " + db + " is in use by a running pixelrelay; use --server URL\n"
	for _, args := range [][]string{
		{"grant", "b@example.com", "--evidence", "e"}, {"deny", "b@example.com"}, {"withdraw", "a@example.com"},
		{"show", "a@example.com"}, {"show", "a@example.com", "--json"}, {"erase", "a@example.com"},
		{"import", consentFixture("native.csv")}, {"export"}, {"backup", filepath.Join(dir, "b.db")}, {"verify"},
	} {
		done := make(chan struct{})
		var code int
		var out, errs string
		go func() {
			defer close(done)
			code, out, errs = consentRun(t, nil, "", append(args, "--db", db)...)
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second): // a hang guard, not a timing assertion
			t.Fatalf("consent %v hangs while another process holds the database", args)
		}
		if code != 1 || errs != want || out != "" {
			t.Errorf("consent %v: exit %d, stdout %q, stderr %q; want 1 and exactly %q", args, code, out, errs, want)
		}
	}
}

func TestConsentThroughServer(t *testing.T) {
	dir := t.TempDir()
	s, err := consent.Open(filepath.Join(dir, "server.db"), consent.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	mux := http.NewServeMux()
	h := consent.NewHandler(s, consent.HandlerOptions{Tokens: consent.SingleToken("tok")})
	for _, p := range consent.Routes() {
		mux.Handle(p, h)
	}
	srv := httptest.NewServer(mux)
	defer srv.Close()
	env := map[string]string{"PIXELRELAY_API_TOKEN": "tok"}

	code, out, errs := consentRun(t, env, "", "grant", "carol@example.com", "--server", srv.URL, "--tenant", "shop", "--evidence", "form-3", "--method", "web_form")
	if code != 0 || !strings.Contains(out, "carol@example.com: open_tracking granted") {
		t.Fatalf("grant --server: exit %d %s %s", code, out, errs)
	}
	rec, _ := s.Show(t.Context(), "shop", "carol@example.com")
	if len(rec.History) != 1 || rec.History[0].Actor != "api:api-token" {
		t.Errorf("server store: %+v", rec.History)
	}
	code, out, _ = consentRun(t, env, "", "import", consentFixture("native.csv"), "--server", srv.URL)
	if code != 1 || !strings.Contains(out, "line 6: ") || !strings.Contains(out, "13 rows: 5 imported, 1 unchanged, 0 skipped, 7 rejected") {
		t.Errorf("import --server: exit %d\n%s", code, out)
	}
	code, out, _ = consentRun(t, env, "", "export", "--server", srv.URL, "--format", "jsonl")
	if code != 0 || strings.Count(out, "\n") != 4 {
		t.Errorf("export --server: exit %d\n%s", code, out)
	}
	backup := filepath.Join(dir, "snap.db")
	code, out, errs = consentRun(t, env, "", "backup", backup, "--server", srv.URL)
	if code != 0 {
		t.Fatalf("backup --server: exit %d %s %s", code, out, errs)
	}
	code, out, _ = consentRun(t, nil, "", "verify", "--db", backup)
	if code != 0 || !strings.Contains(out, "intact") {
		t.Errorf("verify of the snapshot: exit %d %s", code, out)
	}
	code, out, _ = consentRun(t, env, "", "erase", "carol@example.com", "--tenant", "shop", "--server", srv.URL)
	if code != 0 || !strings.Contains(out, "erased") {
		t.Errorf("erase --server: exit %d %s", code, out)
	}
	code, _, errs = consentRun(t, map[string]string{"PIXELRELAY_API_TOKEN": "wrong"}, "", "show", "x@example.com", "--server", srv.URL)
	if code != 1 || !strings.Contains(errs, "refused the API token") {
		t.Errorf("wrong token: exit %d %s", code, errs)
	}
}

// goldenCheck compares got with testdata/consent/golden/NAME, or rewrites it
// with -update. Wall-clock words are masked first.
func goldenCheck(t *testing.T, name, got string) {
	t.Helper()
	got = regexp.MustCompile(`now is [0-9T:Z-]+`).ReplaceAllString(got, "now is NOW")
	path := consentFixture(filepath.Join("golden", name))
	if *updateGolden {
		os.MkdirAll(filepath.Dir(path), 0o755)
		if err := os.WriteFile(path, []byte(got), 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to create it)", err)
	}
	if string(want) != got {
		t.Errorf("%s differs from the golden file (run go test -update to accept):\n--- got\n%s--- want\n%s", name, got, want)
	}
}

func TestConsentImportReports(t *testing.T) {
	dir := t.TempDir()
	// A Mailchimp audience export is a ZIP of three CSVs.
	zipPath := filepath.Join(dir, "audience.zip")
	zf, _ := os.Create(zipPath)
	zw := zip.NewWriter(zf)
	for _, n := range []string{"subscribed_members_export_3f2a.csv", "unsubscribed_members_export_3f2a.csv", "cleaned_members_export_3f2a.csv"} {
		data, err := os.ReadFile(consentFixture("mailchimp/" + n))
		if err != nil {
			t.Fatal(err)
		}
		w, _ := zw.Create(n)
		w.Write(data)
	}
	zw.Close()
	zf.Close()

	tests := []struct {
		golden string
		args   []string
		code   int
	}{
		// Each row: one import as an operator runs it; the report is golden.
		{"native.txt", []string{"import", consentFixture("native.csv")}, 1},
		{"native_again.txt", []string{"import", "--format=native", consentFixture("native.csv")}, 1},
		{"bom_crlf.txt", []string{"import", consentFixture("native_bom_crlf.csv"), "--tenant", "brand-a"}, 0},
		{"mailchimp_zip.txt", []string{"import", "--format", "mailchimp", zipPath, "--map", "Email open tracking=open_tracking", "--text-version", "pixel-v1"}, 1},
		{"hubspot.txt", []string{"import", "--format", "hubspot", consentFixture("hubspot/contacts.csv")}, 1},
		{"hubspot_weak.txt", []string{"import", "--format", "hubspot", "--weak-proof", consentFixture("hubspot/contacts.csv")}, 1},
	}
	db := filepath.Join(dir, "c.db")
	for _, tc := range tests {
		code, out, errs := consentRun(t, nil, "", append(tc.args, "--db", db)...)
		if code != tc.code {
			t.Errorf("%s: exit %d, want %d; stderr %s", tc.golden, code, tc.code, errs)
		}
		goldenCheck(t, tc.golden, out)
	}
	// The states the reports describe are in the store.
	for _, c := range []struct{ addr, purpose, want string }{
		{"ann@example.org", "open_tracking", "granted"},   // mapped permission column
		{"ann@example.org", "marketing_email", "granted"}, // the subscription itself
		{"ben@example.org", "open_tracking", ""},          // subscribed, no pixel consent
		{"eve@example.org", "marketing_email", "withdrawn"},
		{"hal@example.net", "marketing_email", "granted"},
	} {
		_, out, _ := consentRun(t, nil, "", "show", c.addr, "--json", "--db", db)
		var rec consent.Record
		json.Unmarshal([]byte(out), &rec)
		if got := string(rec.States[c.purpose].State); got != c.want {
			t.Errorf("%s %s = %q, want %q", c.addr, c.purpose, got, c.want)
		}
	}
	// --json gives the API's shape.
	code, out, _ := consentRun(t, nil, "", "import", "--json", consentFixture("native.csv"), "--db", filepath.Join(dir, "j.db"))
	var res consent.ImportResult
	if err := json.Unmarshal([]byte(out), &res); err != nil || code != 1 || res.Imported != 5 || len(res.Rejected) != 7 {
		t.Errorf("import --json: exit %d %+v %v\n%s", code, res, err, out)
	}
	// stdin.
	data := mustReadFile(t, consentFixture("native_bom_crlf.csv"))
	code, out, _ = consentRun(t, nil, string(data), "import", "-", "--db", filepath.Join(dir, "s.db"))
	if code != 0 || !strings.Contains(out, "2 rows: 2 imported") {
		t.Errorf("import from stdin: exit %d %s", code, out)
	}
}

func TestConsentExportImportAndBackup(t *testing.T) {
	dir := t.TempDir()
	src, dst := filepath.Join(dir, "src.db"), filepath.Join(dir, "dst.db")
	consentRun(t, nil, "", "import", consentFixture("native.csv"), "--db", src)
	consentRun(t, nil, "", "deny", "zed@example.com", "--tenant", "brand-b", "--db", src)
	out := filepath.Join(dir, "all.csv")
	if code, _, errs := consentRun(t, nil, "", "export", "--all-tenants", "--output", out, "--db", src); code != 0 {
		t.Fatalf("export: %s", errs)
	}
	code, rep, _ := consentRun(t, nil, "", "import", out, "--db", dst)
	if code != 0 || !strings.Contains(rep, "6 rows: 6 imported") { // alice, Bob ×2, carol, ivan, zed
		t.Errorf("re-import of the export: exit %d %s", code, rep)
	}
	for _, tc := range []struct{ tenant, addr string }{{"default", "bob@example.com"}, {"brand-b", "zed@example.com"}} {
		_, a, _ := consentRun(t, nil, "", "show", tc.addr, "--tenant", tc.tenant, "--json", "--db", src)
		_, b, _ := consentRun(t, nil, "", "show", tc.addr, "--tenant", tc.tenant, "--json", "--db", dst)
		var ra, rb consent.Record
		json.Unmarshal([]byte(a), &ra)
		json.Unmarshal([]byte(b), &rb)
		if ra.States["open_tracking"].State != rb.States["open_tracking"].State || ra.States["open_tracking"].State == "" {
			t.Errorf("%s: %v vs %v", tc.addr, ra.States, rb.States)
		}
	}
	// One subject, to stdout (an access request).
	code, one, _ := consentRun(t, nil, "", "export", "bob@example.com", "--format", "jsonl", "--db", src)
	if code != 0 || strings.Count(one, "\n") != 1 || !strings.Contains(one, `"withdrawn"`) {
		t.Errorf("export ADDR: %s", one)
	}
	backup := filepath.Join(dir, "backup.db")
	code, msg, _ := consentRun(t, nil, "", "backup", backup, "--db", src)
	if code != 0 || !strings.Contains(msg, "snapshot") {
		t.Fatalf("backup: exit %d %s", code, msg)
	}
	_, b, _ := consentRun(t, nil, "", "show", "alice@example.com", "--json", "--db", backup)
	if !strings.Contains(b, `"granted"`) {
		t.Errorf("backup lacks alice: %s", b)
	}
}

func TestConsentSettingsFromConfigAndEnv(t *testing.T) {
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pixelrelay.yaml")
	db := filepath.Join(dir, "from-config.db")
	os.WriteFile(cfg, []byte("db: "+db+"\npurposes: [newsletter_ab]\nignore_plus_tag: true\nlisten: 127.0.0.1:2525\n"), 0o644)
	code, _, errs := consentRun(t, nil, "", "grant", "bob+news@example.com", "--purpose", "newsletter_ab", "--evidence", "e", "--config", cfg)
	if code != 0 {
		t.Fatalf("grant with a declared purpose from the config: %s", errs)
	}
	code, out, _ := consentRun(t, map[string]string{"PIXELRELAY_CONFIG": cfg}, "", "show", "bob@example.com", "--json")
	if code != 0 || !strings.Contains(out, `"newsletter_ab"`) {
		t.Errorf("ignore_plus_tag and db from PIXELRELAY_CONFIG: exit %d %s", code, out)
	}
	// PIXELRELAY_DB is what the container sets.
	code, out, _ = consentRun(t, map[string]string{"PIXELRELAY_DB": db, "PIXELRELAY_IGNORE_PLUS_TAG": "true", "PIXELRELAY_PURPOSES": "newsletter_ab"}, "", "show", "bob+x@example.com", "--json")
	if code != 0 || !strings.Contains(out, `"newsletter_ab"`) {
		t.Errorf("settings from the environment: exit %d %s", code, out)
	}
	// The flag wins over the environment.
	code, _, errs = consentRun(t, map[string]string{"PIXELRELAY_DB": db}, "", "show", "bob@example.com", "--db", filepath.Join(dir, "absent.db"))
	if code != 1 || !strings.Contains(errs, "absent.db does not exist") {
		t.Errorf("--db over PIXELRELAY_DB: exit %d %s", code, errs)
	}
}
