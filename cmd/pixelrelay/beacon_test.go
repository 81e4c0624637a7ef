package main

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"go.etcd.io/bbolt"

	"github.com/pixelrelay/pixelrelay/beacon"
)

// beaconRun runs `pixelrelay beacon ...` in-process with the given
// environment.
func beaconRun(t *testing.T, env map[string]string, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	e := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(k string) string { return env[k] }}
	code = dispatch(e, append([]string{"beacon"}, args...))
	return code, out.String(), errb.String()
}

// seedBeaconDB writes a database with two campaigns' counts, as a server
// that then stopped would leave it, and returns its path.
func seedBeaconDB(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), "pixelrelay.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	day := time.Date(2026, 11, 28, 9, 0, 0, 0, time.UTC)
	b, err := beacon.Open(db, beacon.Options{Base: "https://beacon.example.com", MinBatch: 2, Now: func() time.Time { return day }})
	if err != nil {
		t.Fatal(err)
	}
	h := b.PublicHandler()
	for i, c := range []struct {
		campaign string
		loads    int
	}{{"autumn-2026", 3}, {"winter-2026", 1}} {
		b.Decide("default", c.campaign, 1, day)
		u, ok, err := b.Decide("default", c.campaign, 2+i, day)
		if err != nil || !ok {
			t.Fatal(ok, err)
		}
		for j := 0; j < c.loads; j++ {
			rec := httptest.NewRecorder()
			h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, strings.TrimPrefix(u, "https://beacon.example.com"), nil))
		}
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	db.Close()
	return path
}

func TestBeaconStatsFromDB(t *testing.T) {
	path := seedBeaconDB(t)
	code, out, errs := beaconRun(t, nil, "stats", "--db", path)
	if code != 0 {
		t.Fatalf("exit %d: %s", code, errs)
	}
	want := []string{
		"TENANT   DAY         CAMPAIGN     RECIPIENTS  WITH BEACON  IMAGE LOADS",
		"default  2026-11-28  autumn-2026           3            2            3",
		"default  2026-11-28  winter-2026           4            3            1",
		"total                                      7            5            4",
	}
	for _, w := range want {
		if !strings.Contains(out, w+"\n") {
			t.Errorf("table lacks the line %q:\n%s", w, out)
		}
	}
	if !strings.Contains(out, "including privacy proxies such as Apple Mail Privacy Protection") {
		t.Errorf("the table does not label loads honestly:\n%s", out)
	}
	if strings.Contains(strings.ToLower(out), "unique open") || strings.Contains(out, "OPENS") {
		t.Errorf("the table calls loads opens:\n%s", out)
	}

	code, out, errs = beaconRun(t, nil, "stats", "--json", "--campaign", "winter-2026", "--db", path)
	if code != 0 {
		t.Fatalf("--json exit %d: %s", code, errs)
	}
	var rows []map[string]any
	if err := json.Unmarshal([]byte(out), &rows); err != nil {
		t.Fatalf("--json output %q: %v", out, err)
	}
	if len(rows) != 1 || rows[0]["campaign"] != "winter-2026" || rows[0]["day"] != "2026-11-28" || rows[0]["recipients"] != 4.0 || rows[0]["loads"] != 1.0 {
		t.Fatalf("--json rows = %v", rows)
	}
	// Nothing matches: an empty array for scripts, a sentence for people.
	if _, out, _ = beaconRun(t, nil, "stats", "--json", "--tenant", "acme", "--db", path); strings.TrimSpace(out) != "[]" {
		t.Errorf("empty --json = %q", out)
	}
	if _, out, _ = beaconRun(t, nil, "stats", "--from", "2026-11-29", "--db", path); !strings.Contains(out, "no beacon statistics match") {
		t.Errorf("empty table = %q", out)
	}
}

func TestBeaconCommandErrors(t *testing.T) {
	path := seedBeaconDB(t)
	cases := []struct {
		args []string
		want string // in stderr
	}{
		{[]string{"stats", "--from", "28/11/2026", "--db", path}, "YYYY-MM-DD"},                   // bad day
		{[]string{"stats", "--db", path, "--server", "http://127.0.0.1:8025"}, "not both"},        // two targets
		{[]string{"stats", "--db", filepath.Join(t.TempDir(), "typo.db")}, "does not exist"},      // never creates a file
		{[]string{"stats", "--server", "http://127.0.0.1:8025"}, "PIXELRELAY_API_TOKEN"},          // no token
		{[]string{"stats", "extra", "--db", path}, "unexpected argument"},                         // stray argument
		{[]string{"frobnicate"}, "unknown subcommand"},                                            // unknown subcommand
		{[]string{}, "usage: pixelrelay beacon stats"},                                            // no subcommand
		{[]string{"rotate-key", "--db", filepath.Join(t.TempDir(), "none.db")}, "does not exist"}, // rotation needs the database
	}
	for _, c := range cases {
		code, _, errs := beaconRun(t, nil, c.args...)
		if code != 1 || !strings.Contains(errs, c.want) {
			t.Errorf("beacon %v: exit %d, stderr %q; want 1 and %q", c.args, code, errs, c.want)
		}
	}
}

func TestBeaconDBInUse(t *testing.T) {
	path := seedBeaconDB(t)
	held, err := bbolt.Open(path, 0o600, nil) // a running serve holds the lock
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	for _, args := range [][]string{{"stats", "--db", path}, {"keys", "--db", path}, {"rotate-key", "--db", path}} {
		done := make(chan struct{})
		var code int
		var errs string
		go func() {
			defer close(done)
			code, _, errs = beaconRun(t, nil, args...)
		}()
		select {
		case <-done:
		case <-time.After(20 * time.Second): // a hang guard, not a timing assertion
			t.Fatalf("beacon %v hangs on a held database", args)
		}
		if want := "database " + path + " is in use by a running pixelrelay; use --server URL\n"; code != 1 || errs != want {
			t.Errorf("beacon %v: exit %d, stderr %q; want 1 and %q", args, code, errs, want)
		}
	}
}

func TestBeaconThroughServer(t *testing.T) {
	dbPath := filepath.Join(t.TempDir(), "pixelrelay.db")
	db, err := bbolt.Open(dbPath, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	b, err := beacon.Open(db, beacon.Options{Base: "https://beacon.example.com", MinBatch: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	mux := http.NewServeMux()
	mux.Handle("/v1/beacons", b.AdminHandler())
	mux.Handle("/v1/beacons/", b.AdminHandler())
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer tok" {
			w.WriteHeader(http.StatusUnauthorized)
			w.Write([]byte(`{"error":"bad token"}`))
			return
		}
		mux.ServeHTTP(w, r)
	}))
	defer srv.Close()
	env := map[string]string{"PIXELRELAY_API_TOKEN": "tok"}

	// The guard `rewrite --server` will use, then the stats it produced.
	d, done, err := newBeaconDecider(&cmdEnv{getenv: func(k string) string { return env[k] }}, nil, srv.URL, "https://px.example.org", 0)
	if err != nil {
		t.Fatal(err)
	}
	u, ok, err := d.Decide("default", "spring", 50, time.Now())
	if err != nil || !ok || !strings.HasPrefix(u, "https://px.example.org/b/") {
		t.Fatalf("Decide through the server = %q %v %v", u, ok, err)
	}
	done()
	code, out, errs := beaconRun(t, env, "stats", "--json", "--server", srv.URL)
	if code != 0 || !strings.Contains(out, `"campaign":"spring"`) || !strings.Contains(out, `"recipients":50`) {
		t.Fatalf("stats --server: exit %d, %s %s", code, out, errs)
	}
	code, out, errs = beaconRun(t, env, "rotate-key", "--server", srv.URL)
	if code != 0 || !strings.Contains(out, "key 2 signs from now on") {
		t.Fatalf("rotate-key --server: exit %d, %s %s", code, out, errs)
	}
	code, out, _ = beaconRun(t, env, "keys", "--server", srv.URL)
	if code != 0 || !strings.Contains(out, "signs and verifies") || !strings.Contains(out, "until they expire") {
		t.Fatalf("keys --server: %s", out)
	}
	code, _, errs = beaconRun(t, map[string]string{"PIXELRELAY_API_TOKEN": "wrong"}, "stats", "--server", srv.URL)
	if code != 1 || !strings.Contains(errs, "PIXELRELAY_API_TOKEN") {
		t.Fatalf("wrong token: exit %d, %s", code, errs)
	}
}

func TestBeaconRotateAndKeysFromDB(t *testing.T) {
	path := seedBeaconDB(t)
	code, out, errs := beaconRun(t, nil, "rotate-key", "--db", path)
	if code != 0 || !strings.Contains(out, "key 2 signs from now on") {
		t.Fatalf("rotate-key: exit %d, %s %s", code, out, errs)
	}
	code, out, errs = beaconRun(t, nil, "keys", "--json", "--db", path)
	var keys []beacon.KeyInfo
	if code != 0 || json.Unmarshal([]byte(out), &keys) != nil || len(keys) != 2 || !keys[0].Signing || keys[1].Retired == nil {
		t.Fatalf("keys --json: exit %d, %s %s", code, out, errs)
	}
	if strings.Contains(out, "secret") {
		t.Fatalf("keys shows secrets: %s", out)
	}
	code, out, _ = beaconRun(t, nil, "rotate-key", "--revoke-old", "--db", path)
	if code != 0 || !strings.Contains(out, "no longer count") {
		t.Fatalf("rotate-key --revoke-old: %s", out)
	}
	if _, out, _ = beaconRun(t, nil, "keys", "--json", "--db", path); !strings.Contains(out, `"id":3`) || strings.Contains(out, `"id":2`) {
		t.Fatalf("after --revoke-old: %s", out)
	}
}

func TestBeaconDeciderFromDB(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pixelrelay.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	// One `rewrite --action beacon --db` run per message, 49 then 1.
	for i, n := range []int{49, 1} {
		d, done, err := newBeaconDecider(&cmdEnv{getenv: func(string) string { return "" }}, db, "", "https://beacon.example.com", 0)
		if err != nil {
			t.Fatal(err)
		}
		_, ok, err := d.Decide("default", "weekly", n, time.Now())
		if err != nil || ok != (i == 1) {
			t.Fatalf("run %d: ok=%v err=%v", i, ok, err)
		}
		if err := done(); err != nil {
			t.Fatal(err)
		}
	}
	if _, _, err := newBeaconDecider(&cmdEnv{getenv: func(string) string { return "" }}, nil, "", "https://b.example", 0); err == nil || !strings.Contains(err.Error(), "--db FILE or --server URL") {
		t.Fatalf("no target: %v", err)
	}
}

// The beacon commands find the database or the server the way consent and
// rewrite do: PIXELRELAY_DB, PIXELRELAY_SERVER and --config's db key.
func TestBeaconTargetFromEnvironmentAndConfig(t *testing.T) {
	path := seedBeaconDB(t)
	wantLine := "default  2026-11-28  autumn-2026           3            2            3"

	code, out, errs := beaconRun(t, map[string]string{"PIXELRELAY_DB": path}, "stats")
	if code != 0 || !strings.Contains(out, wantLine) {
		t.Errorf("PIXELRELAY_DB=%s beacon stats: exit %d\n%s%s", path, code, out, errs)
	}
	cfg := filepath.Join(t.TempDir(), "pixelrelay.yaml")
	if err := os.WriteFile(cfg, []byte("db: "+path+"\nlisten: 127.0.0.1:2525\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	code, out, errs = beaconRun(t, nil, "keys", "--config", cfg)
	if code != 0 || !strings.Contains(out, "signs and verifies") {
		t.Errorf("beacon keys --config %s: exit %d\n%s%s", cfg, code, out, errs)
	}
	code, out, errs = beaconRun(t, map[string]string{"PIXELRELAY_CONFIG": cfg}, "rotate-key")
	if code != 0 || !strings.Contains(out, "key 2 signs from now on") {
		t.Errorf("PIXELRELAY_CONFIG=%s beacon rotate-key: exit %d\n%s%s", cfg, code, out, errs)
	}
	// A flag still beats the environment.
	code, _, errs = beaconRun(t, map[string]string{"PIXELRELAY_DB": path}, "stats", "--db", filepath.Join(t.TempDir(), "other.db"))
	if code != 1 || !strings.Contains(errs, "other.db does not exist") {
		t.Errorf("--db over PIXELRELAY_DB: exit %d, %s", code, errs)
	}

	var mu sync.Mutex
	var asked []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		asked = append(asked, r.Method+" "+r.URL.Path+" "+r.Header.Get("Authorization"))
		mu.Unlock()
		switch r.URL.Path {
		case "/v1/beacons":
			w.Write([]byte(`[{"tenant":"default","campaign":"remote-c","day":"2026-11-29","recipients":60,"beacon_recipients":60,"loads":7}]`))
		case "/v1/beacons/keys":
			w.Write([]byte(`[{"id":4,"created":"2026-11-01T00:00:00Z","signing":true}]`))
		case "/v1/beacons/keys/rotate":
			w.Write([]byte(`{"id":5,"created":"2026-11-29T00:00:00Z","signing":true}`))
		default:
			http.NotFound(w, r)
		}
	}))
	defer srv.Close()
	env := map[string]string{"PIXELRELAY_SERVER": srv.URL, "PIXELRELAY_API_TOKEN": "tok"}
	code, out, errs = beaconRun(t, env, "stats", "--json")
	if code != 0 || !strings.Contains(out, `"campaign":"remote-c"`) {
		t.Errorf("PIXELRELAY_SERVER beacon stats: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs = beaconRun(t, env, "keys"); code != 0 || !strings.Contains(out, "4       ") {
		t.Errorf("PIXELRELAY_SERVER beacon keys: exit %d\n%s%s", code, out, errs)
	}
	if code, out, errs = beaconRun(t, env, "rotate-key"); code != 0 || !strings.Contains(out, "key 5 signs from now on") {
		t.Errorf("PIXELRELAY_SERVER beacon rotate-key: exit %d\n%s%s", code, out, errs)
	}
	mu.Lock()
	defer mu.Unlock()
	want := []string{"GET /v1/beacons Bearer tok", "GET /v1/beacons/keys Bearer tok", "POST /v1/beacons/keys/rotate Bearer tok"}
	if strings.Join(asked, "\n") != strings.Join(want, "\n") {
		t.Errorf("the server was asked:\n%s\nwant:\n%s", strings.Join(asked, "\n"), strings.Join(want, "\n"))
	}
	// --db beats PIXELRELAY_SERVER, as for every other command.
	if code, out, errs = beaconRun(t, map[string]string{"PIXELRELAY_SERVER": srv.URL}, "stats", "--db", path); code != 0 || !strings.Contains(out, wantLine) {
		t.Errorf("--db over PIXELRELAY_SERVER: exit %d\n%s%s", code, out, errs)
	}
}

// `rewrite --action beacon --db` does not know serve's beacon_max_age, so
// it must not delete a retired key that a serve honouring tokens for longer
// than the default 90 days still verifies with.
func TestBeaconDeciderKeepsRetiredKeys(t *testing.T) {
	path := filepath.Join(t.TempDir(), "pixelrelay.db")
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer db.Close()
	if _, err := beacon.LoadKeys(db, time.Now().Add(-300*24*time.Hour)); err != nil {
		t.Fatal(err)
	}
	if _, err := beacon.RotateKey(db, beacon.RotateOptions{Now: time.Now().Add(-200 * 24 * time.Hour)}); err != nil {
		t.Fatal(err)
	}
	d, done, err := newBeaconDecider(&cmdEnv{getenv: func(string) string { return "" }}, db, "", "https://beacon.example.com", 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := d.Decide("default", "weekly", 1, time.Now()); err != nil {
		t.Fatal(err)
	}
	if err := done(); err != nil {
		t.Fatal(err)
	}
	keys, err := beacon.ListKeys(db)
	if err != nil || len(keys) != 2 {
		t.Fatalf("after a rewrite run the database holds keys %+v (%v); want the signing key and the one retired 200 days ago", keys, err)
	}
}
