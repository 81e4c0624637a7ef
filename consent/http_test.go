package consent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

const testToken = "s3cret-token"

func apiServer(t *testing.T, opts HandlerOptions) (*Store, *httptest.Server) {
	t.Helper()
	s, _ := openTest(t, Options{})
	if opts.Tokens == nil {
		opts.Tokens = []APIToken{{Name: "crm", Token: testToken}, {Name: "ops", Token: "other-token"}}
	}
	mux := http.NewServeMux()
	h := NewHandler(s, opts)
	for _, p := range Routes() {
		mux.Handle(p, h)
	}
	// The relay mounts its own endpoints next to ours.
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") })
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	return s, srv
}

func call(t *testing.T, srv *httptest.Server, method, path, token, body string) (int, map[string]any, string) {
	t.Helper()
	req, _ := http.NewRequest(method, srv.URL+path, strings.NewReader(body))
	if token != "" {
		req.Header.Set("Authorization", "Bearer "+token)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	raw, _ := io.ReadAll(resp.Body)
	var m map[string]any
	json.Unmarshal(raw, &m)
	return resp.StatusCode, m, string(raw)
}

func TestAPIAuth(t *testing.T) {
	_, srv := apiServer(t, HandlerOptions{})
	for _, tc := range []struct {
		name, token string
		want        int
	}{
		{"no token", "", 401},
		{"wrong token", "nope", 401},
		{"token prefix", testToken[:5], 401},
		{"right token", testToken, 200},
		{"second token", "other-token", 200},
	} {
		code, body, _ := call(t, srv, "GET", "/v1/consent/bob@example.com", tc.token, "")
		if code != tc.want {
			t.Errorf("%s: status %d, want %d", tc.name, code, tc.want)
		}
		if code == 401 && body["error"] == nil {
			t.Errorf("%s: 401 without a JSON error", tc.name)
		}
	}
}

func TestAPIDisabledWithoutToken(t *testing.T) {
	_, srv := apiServer(t, HandlerOptions{Tokens: []APIToken{}})
	code, body, _ := call(t, srv, "GET", "/v1/consent/bob@example.com", "anything", "")
	if code != 404 || !strings.Contains(body["error"].(string), "consent API disabled") {
		t.Errorf("disabled API: %d %v", code, body)
	}
	if (HandlerOptions{}).Enabled() || !(HandlerOptions{Tokens: SingleToken("x")}).Enabled() {
		t.Error("Enabled() is wrong")
	}
}

func TestAPIConsentLifecycle(t *testing.T) {
	s, srv := apiServer(t, HandlerOptions{})
	code, rec, raw := call(t, srv, "GET", "/v1/consent/new@example.com", testToken, "")
	if code != 200 || raw == "" || !strings.Contains(raw, `"states":{}`) {
		t.Errorf("never-seen subject: %d %s", code, raw)
	}
	put := `{"purpose":"open_tracking","state":"granted","occurred_at":"2026-05-01T10:00:00Z","method":"web_form","source":"signup","text_version":"v1","evidence":"form-1"}`
	code, rec, raw = call(t, srv, "PUT", "/v1/consent/Bob@Example.com?tenant=brand-a", testToken, put)
	if code != 200 {
		t.Fatalf("PUT: %d %s", code, raw)
	}
	states := rec["states"].(map[string]any)
	if states["open_tracking"].(map[string]any)["state"] != "granted" || rec["tenant"] != "brand-a" || rec["address"] != "bob@example.com" {
		t.Errorf("PUT answer: %s", raw)
	}
	hist := rec["history"].([]any)[0].(map[string]any)
	if hist["actor"] != "api:crm" || hist["method"] != "web_form" {
		t.Errorf("the actor is not the token's name: %v", hist)
	}
	for _, k := range []string{"event_id", "purpose", "state", "previous", "occurred_at", "recorded_at", "method", "source", "text_version", "text_sha256", "evidence", "actor", "weak_proof", "hash", "prev_hash"} {
		if _, ok := hist[k]; !ok {
			t.Errorf("history entry lacks %q", k)
		}
	}
	if st := mustLookup(t, s, "brand-a", "bob@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("store after PUT: %s", st)
	}
	// The retry of the same PUT is harmless.
	code, rec, _ = call(t, srv, "PUT", "/v1/consent/bob@example.com?tenant=brand-a", testToken, put)
	if code != 200 || len(rec["history"].([]any)) != 1 {
		t.Errorf("retry: %d, %d events", code, len(rec["history"].([]any)))
	}
	code, body, _ := call(t, srv, "DELETE", "/v1/consent/bob@example.com?tenant=brand-a", testToken, "")
	if code != 200 || body["erased"] != true {
		t.Errorf("DELETE: %d %v", code, body)
	}
	code, body, _ = call(t, srv, "DELETE", "/v1/consent/bob@example.com?tenant=brand-a", testToken, "")
	if code != 200 || body["erased"] != false {
		t.Errorf("second DELETE: %d %v", code, body)
	}
}

func TestAPIErrors(t *testing.T) {
	_, srv := apiServer(t, HandlerOptions{})
	good := `{"state":"granted","evidence":"e","occurred_at":"2026-05-01T10:00:00Z"}`
	call(t, srv, "PUT", "/v1/consent/c@example.com", testToken, good)
	tests := []struct {
		name, method, path, body string
		want                     int
		frag                     string
	}{
		// Each row: a bad request and the status and words it gets.
		{"bad address", "PUT", "/v1/consent/not-an-address", good, 400, "no @"},
		{"unknown field", "PUT", "/v1/consent/a@example.com", `{"state":"granted","evidense":"x"}`, 400, "evidense"},
		{"not JSON", "PUT", "/v1/consent/a@example.com", `state=granted`, 400, "JSON"},
		{"unknown state", "PUT", "/v1/consent/a@example.com", `{"state":"maybe"}`, 400, "unknown state"},
		{"undeclared purpose", "PUT", "/v1/consent/a@example.com", `{"purpose":"x","state":"denied"}`, 400, "not declared"},
		{"bad time", "PUT", "/v1/consent/a@example.com", `{"state":"denied","occurred_at":"May 1"}`, 400, "RFC 3339"},
		{"weak grant", "PUT", "/v1/consent/a@example.com", `{"state":"granted"}`, 400, "weak_proof"},
		{"older than current", "PUT", "/v1/consent/c@example.com", `{"state":"withdrawn","occurred_at":"2026-04-01T10:00:00Z"}`, 409, "cannot change it"},
		{"bad tenant", "GET", "/v1/consent/a@example.com?tenant=a%20b", "", 400, "tenant"},
		{"wrong method", "POST", "/v1/consent/a@example.com", "", 400, "not allowed"},
		{"wrong method on import", "GET", "/v1/consent/import", "", 400, "use POST"},
		{"unknown path", "GET", "/v1/consentx", "", 404, ""},
		{"bad export format", "GET", "/v1/consent/export?format=xml", "", 400, "csv or jsonl"},
		{"bad import format", "POST", "/v1/consent/import?format=xls", "a\n", 400, "unknown import format"},
	}
	for _, tc := range tests {
		code, body, raw := call(t, srv, tc.method, tc.path, testToken, tc.body)
		if code != tc.want {
			t.Errorf("%s: status %d, want %d (%s)", tc.name, code, tc.want, raw)
			continue
		}
		if msg, _ := body["error"].(string); tc.frag != "" && !strings.Contains(msg, tc.frag) {
			t.Errorf("%s: error %q, want it to mention %q", tc.name, msg, tc.frag)
		}
	}
}

func TestAPIImportExportBackup(t *testing.T) {
	_, srv := apiServer(t, HandlerOptions{})
	code, body, raw := call(t, srv, "POST", "/v1/consent/import?format=native", testToken, string(fixture(t, "native.csv")))
	if code != 200 || body["imported"] != float64(5) || body["unchanged"] != float64(1) {
		t.Fatalf("import: %d %s", code, raw)
	}
	rj := body["rejected"].([]any)
	if len(rj) != 7 || rj[0].(map[string]any)["line"] != float64(6) {
		t.Errorf("rejected = %v", rj)
	}
	code, body, raw = call(t, srv, "POST", "/v1/consent/import?format=hubspot&weak_proof=true", testToken, string(fixture(t, "hubspot/contacts.csv")))
	if code != 200 || body["imported"] != float64(2) {
		t.Errorf("hubspot import: %d %s", code, raw)
	}

	code, _, raw = call(t, srv, "GET", "/v1/consent/export?format=csv", testToken, "")
	if code != 200 || !strings.HasPrefix(raw, "email,purpose,state,occurred_at,method,source,text_version,text_sha256,evidence,tenant") || !strings.Contains(raw, "alice@example.com") {
		t.Errorf("export csv: %d\n%s", code, raw)
	}
	code, _, raw = call(t, srv, "GET", "/v1/consent/export?format=jsonl&address=bob@example.com", testToken, "")
	if code != 200 || strings.Count(raw, "\n") != 1 {
		t.Errorf("export jsonl for one address: %d\n%s", code, raw)
	}

	req, _ := http.NewRequest("GET", srv.URL+"/v1/backup", nil)
	req.Header.Set("Authorization", "Bearer "+testToken)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	data, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || int64(len(data)) != resp.ContentLength {
		t.Fatalf("backup: %d, %d bytes of %d", resp.StatusCode, len(data), resp.ContentLength)
	}
	path := filepath.Join(t.TempDir(), "b.db")
	os.WriteFile(path, data, 0o600)
	b, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if st := mustLookup(t, b, DefaultTenant, "alice@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("backup holds %s", st)
	}
}

func TestClient(t *testing.T) {
	s, srv := apiServer(t, HandlerOptions{})
	ctx := context.Background()
	c := NewClient(srv.URL+"/", testToken)
	rec, err := c.Record(ctx, Event{Tenant: "t1", Address: "slash/odd+tag@example.com", State: Granted, Method: MethodWebForm, Evidence: "e", OccurredAt: testNow.Add(-3600e9)})
	if err != nil {
		t.Fatal(err)
	}
	if rec.Address != "slash/odd+tag@example.com" || rec.History[0].Actor != "api:crm" {
		t.Errorf("record = %+v", rec)
	}
	if st, err := c.Lookup(ctx, "t1", "slash/odd+tag@example.com", PurposeOpenTracking); st != Granted || err != nil {
		t.Errorf("Lookup = %s, %v", st, err)
	}
	if st := mustLookup(t, s, "t1", "slash/odd+tag@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("server store = %s", st)
	}
	if _, err := c.Record(ctx, Event{Address: "x", State: Granted}); !errors.Is(err, ErrInvalidInput) {
		t.Errorf("bad input through the client: %v", err)
	}
	res, err := c.Import(ctx, bytes.NewReader(fixture(t, "native.csv")), ImportOptions{})
	if err != nil || res.Imported != 5 || res.RejectedCount != 7 {
		t.Errorf("Import = %+v, %v", res, err)
	}
	var buf bytes.Buffer
	if err := c.Export(ctx, &buf, ExportOptions{Format: ExportJSONL, Tenant: "t1"}); err != nil || !strings.Contains(buf.String(), "slash/odd+tag@example.com") {
		t.Errorf("Export: %v\n%s", err, buf.String())
	}
	if err := c.Erase(ctx, "t1", "slash/odd+tag@example.com"); err != nil {
		t.Errorf("Erase: %v", err)
	}
	if err := c.Erase(ctx, "t1", "slash/odd+tag@example.com"); !errors.Is(err, ErrNotFound) {
		t.Errorf("second Erase: %v", err)
	}
	buf.Reset()
	if n, err := c.Backup(ctx, &buf); err != nil || n == 0 {
		t.Errorf("Backup: %d %v", n, err)
	}

	if _, err := NewClient(srv.URL, "wrong").Show(ctx, "", "a@example.com"); err == nil || !strings.Contains(err.Error(), "PIXELRELAY_API_TOKEN") {
		t.Errorf("wrong token: %v", err)
	}
	if _, err := NewClient(srv.URL, "").Show(ctx, "", "a@example.com"); err == nil || !strings.Contains(err.Error(), "PIXELRELAY_API_TOKEN") {
		t.Errorf("no token: %v", err)
	}
	if _, err := NewClient("127.0.0.1:8025", "x").Show(ctx, "", "a@example.com"); err == nil || !strings.Contains(err.Error(), "http://") {
		t.Errorf("bad URL: %v", err)
	}
	dead := httptest.NewServer(http.NotFoundHandler())
	dead.Close()
	if _, err := NewClient(dead.URL, "x").Show(ctx, "", "a@example.com"); err == nil || !strings.Contains(err.Error(), "cannot reach pixelrelay") {
		t.Errorf("server down: %v", err)
	}
}

// An import the server stops part-way (here: the body outgrows the
// server's limit) keeps the rows it committed; the client must report
// them, not "0 imported".
func TestClientImportStoppedKeepsCounts(t *testing.T) {
	s, srv := apiServer(t, HandlerOptions{MaxImportBytes: 1000})
	var b strings.Builder
	b.WriteString("email,purpose,state,occurred_at,evidence\n")
	for i := range 40 {
		fmt.Fprintf(&b, "u%d@example.com,open_tracking,granted,2026-01-01T00:00:00Z,e\n", i)
	}
	var rejected int
	res, err := NewClient(srv.URL, testToken).Import(context.Background(), strings.NewReader(b.String()), ImportOptions{OnReject: func(Rejection) { rejected++ }})
	if !errors.Is(err, ErrInvalidInput) || !strings.Contains(err.Error(), "larger than 1000 bytes") {
		t.Fatalf("err = %v, want the server's size limit", err)
	}
	if res.Imported == 0 || res.Imported >= 40 {
		t.Fatalf("client reports %d imported; the server committed some rows before stopping", res.Imported)
	}
	for i := range res.Imported {
		if st := mustLookup(t, s, DefaultTenant, fmt.Sprintf("u%d@example.com", i), PurposeOpenTracking); st != Granted {
			t.Errorf("u%d, counted as imported, is %s in the store", i, st)
		}
	}
	if st := mustLookup(t, s, DefaultTenant, fmt.Sprintf("u%d@example.com", res.Imported), PurposeOpenTracking); st != Unknown {
		t.Errorf("u%d is %s: more rows were committed than the client reports", res.Imported, st)
	}
}
