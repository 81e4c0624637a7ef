package beacon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"image/gif"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"
)

// noRedirects makes a redirect an error instead of following it.
var noRedirects = &http.Client{
	CheckRedirect: func(*http.Request, []*http.Request) error { return errors.New("redirected") },
	Timeout:       10 * time.Second,
}

func fetch(t *testing.T, c *http.Client, method, u string, hdr map[string]string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, u, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, body
}

func TestBeaconResponse(t *testing.T) {
	db, _ := testDB(t)
	b := open(t, db, newClock(t0), Options{MinBatch: 1})
	srv := httptest.NewServer(b.PublicHandler())
	defer srv.Close()
	p := pathOf(t, mustURL(t, b, "default", "c", t0))

	resp, body := fetch(t, noRedirects, http.MethodGet, srv.URL+p, map[string]string{"Cookie": "session=abc"})
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("status %d", resp.StatusCode)
	}
	checks := []struct {
		header, want string
	}{
		{"Content-Type", "image/gif"},
		{"Content-Length", "43"},
		{"Cache-Control", "no-store"},
		{"Set-Cookie", ""}, // never, even when the request had one
		{"Location", ""},   // never a redirect
	}
	for _, c := range checks {
		if got := strings.Join(resp.Header.Values(c.header), ", "); got != c.want {
			t.Errorf("%s: %q, want %q", c.header, got, c.want)
		}
	}
	if len(body) != 43 || !bytes.Equal(body, gifImage) {
		t.Fatalf("body is %d bytes: %x", len(body), body)
	}
	img, err := gif.Decode(bytes.NewReader(body))
	if err != nil {
		t.Fatalf("the body is not a GIF: %v", err)
	}
	if sz := img.Bounds().Size(); sz.X != 1 || sz.Y != 1 {
		t.Fatalf("image is %v, want 1×1", sz)
	}
	if _, _, _, a := img.At(0, 0).RGBA(); a != 0 {
		t.Fatalf("the pixel is not transparent (alpha %d)", a)
	}

	// HEAD answers the same headers, no body, and counts nothing.
	resp, body = fetch(t, noRedirects, http.MethodHead, srv.URL+p, nil)
	if resp.StatusCode != 200 || len(body) != 0 || resp.Header.Get("Content-Type") != "image/gif" {
		t.Fatalf("HEAD: %d, %d bytes, %q", resp.StatusCode, len(body), resp.Header.Get("Content-Type"))
	}
	// Other methods on a beacon path: 405, nothing counted.
	for _, m := range []string{http.MethodPost, http.MethodPut, http.MethodDelete} {
		if resp, _ := fetch(t, noRedirects, m, srv.URL+p, nil); resp.StatusCode != http.StatusMethodNotAllowed {
			t.Errorf("%s answered %d", m, resp.StatusCode)
		}
	}
	// A query string (some proxies add one) does not change the answer.
	if resp, _ := fetch(t, noRedirects, http.MethodGet, srv.URL+p+"?utm_source=x", nil); resp.StatusCode != 200 {
		t.Errorf("with a query string: %d", resp.StatusCode)
	}
	if n := loadsOf(t, b); n != 2 {
		t.Fatalf("loads = %d, want 2 (two GETs; HEAD and POST do not count)", n)
	}
}

func TestPublicListenerServesOnlyBeacons(t *testing.T) {
	db, _ := testDB(t)
	b := open(t, db, newClock(t0), Options{MinBatch: 1})
	srv := httptest.NewServer(b.PublicHandler())
	defer srv.Close()
	p := pathOf(t, mustURL(t, b, "default", "c", t0))
	tok := strings.TrimSuffix(strings.TrimPrefix(p, "/b/"), ".gif")
	paths := []string{
		"/",
		"/b/",
		"/b",
		"/v1/beacons",               // the admin API lives elsewhere
		"/v1/beacons/decide",        // so does the decide endpoint
		"/metrics",                  // and the metrics
		"/healthz",                  // and health
		"/v1/consent/a@example.com", // and consent
		"/b/" + tok + ".png",        // wrong extension
		"/b/" + tok,                 // no extension
		"/B/" + tok + ".gif",        // paths are case-sensitive
		"/x/b/" + tok + ".gif",      // prefix before /b/
		"/b/" + tok + ".gif/x",      // suffix after .gif
		"/b/x/" + tok + ".gif",      // extra segment
		"/b/../b/" + tok + ".gif",   // the client cleans this; the server must not serve it uncleaned either
	}
	for _, path := range paths {
		if resp, _ := fetch(t, noRedirects, http.MethodGet, srv.URL+path, nil); resp.StatusCode != http.StatusNotFound {
			t.Errorf("GET %s answered %d, want 404", path, resp.StatusCode)
		}
	}
	if n := loadsOf(t, b); n != 0 {
		t.Fatalf("other paths counted %d loads", n)
	}
}

func TestExactCountsUnderConcurrentLoads(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	// Flush every millisecond so that flushes run between and during the
	// loads: counts must neither be lost nor doubled across them.
	b := open(t, db, clk, Options{MinBatch: 1, FlushInterval: time.Millisecond})
	srv := httptest.NewServer(b.PublicHandler())
	defer srv.Close()

	campaigns := []struct {
		campaign string
		day      time.Time
		loads    int
	}{
		{"autumn", t0, 500},
		{"autumn", t0.Add(-24 * time.Hour), 300},
		{"winter", t0, 200},
	}
	var urls []string
	for _, c := range campaigns {
		u := srv.URL + pathOf(t, mustURL(t, b, "default", c.campaign, c.day))
		for i := 0; i < c.loads; i++ {
			urls = append(urls, u)
		}
	}
	if len(urls) != 1000 {
		t.Fatalf("%d loads planned", len(urls))
	}

	client := &http.Client{Transport: &http.Transport{MaxConnsPerHost: 400, MaxIdleConnsPerHost: 400}, Timeout: 30 * time.Second}
	defer client.CloseIdleConnections()
	start := make(chan struct{})
	errs := make(chan error, len(urls))
	var wg sync.WaitGroup
	for _, u := range urls {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			resp, err := client.Get(u)
			if err != nil {
				errs <- err
				return
			}
			io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 {
				errs <- fmt.Errorf("status %d", resp.StatusCode)
			}
		}()
	}
	// Decisions and statistics run concurrently with the loads, as they do
	// in a server.
	wg.Add(2)
	go func() {
		defer wg.Done()
		<-start
		for i := 0; i < 100; i++ {
			if _, _, err := b.Decide("default", "autumn", 1, t0); err != nil {
				errs <- err
			}
		}
	}()
	go func() {
		defer wg.Done()
		<-start
		for i := 0; i < 50; i++ {
			if _, err := b.Stats(context.Background(), Filter{}); err != nil {
				errs <- err
			}
		}
	}()
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}

	want := "default/2026-11-27/autumn r=0 l=300; default/2026-11-28/autumn r=100 l=500; default/2026-11-28/winter r=0 l=200; "
	render := func(s []Stat) string {
		var sb strings.Builder
		for _, r := range s {
			fmt.Fprintf(&sb, "%s/%s/%s r=%d l=%d; ", r.Tenant, r.Day, r.Campaign, r.Recipients, r.Loads)
		}
		return sb.String()
	}
	live, err := b.Stats(context.Background(), Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := render(live); got != want {
		t.Fatalf("live stats (stored plus pending):\n got %s\nwant %s", got, want)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	stored, err := ReadStats(db, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if got := render(stored); got != want {
		t.Fatalf("stored after Close:\n got %s\nwant %s", got, want)
	}
}

func TestNoClientDataStoredOrLogged(t *testing.T) {
	db, path := testDB(t)
	clk := newClock(t0)
	var logs logBuffer
	srv := httptest.NewUnstartedServer(nil)
	// The beacon base is the loopback listener itself, as in the
	// acceptance check: the base must not end up in the database either.
	base := "http://" + srv.Listener.Addr().String()
	b := open(t, db, clk, Options{Base: base, MinBatch: 1, FlushInterval: time.Millisecond, Logger: debugLogger(&logs)})
	srv.Config = b.PublicServer("")
	srv.Start()
	defer srv.Close()

	const (
		ua       = "PrivacyProbeAgent/9.9 (secret-device)"
		referrer = "https://referrer.example/secret-page"
		xff      = "198.51.100.77"
		cookie   = "tracking-cookie-value"
	)
	hdr := map[string]string{"User-Agent": ua, "Referer": referrer, "X-Forwarded-For": xff,
		"X-Real-IP": xff, "Forwarded": "for=" + xff, "Cookie": "id=" + cookie}
	u, ok, err := b.Decide("default", "c", 1, t0)
	if err != nil || !ok {
		t.Fatal(ok, err)
	}
	for i := 0; i < 20; i++ {
		for _, p := range []string{u, u + "?x=1", base + "/b/AAAAAAAA.gif", base + "/other"} {
			fetch(t, noRedirects, http.MethodGet, p, hdr)
		}
		fetch(t, noRedirects, http.MethodPost, u, hdr)
		fetch(t, noRedirects, http.MethodHead, u, hdr)
	}
	if _, err := b.RotateKey(false); err != nil { // logs a line, so the logger is known to work
		t.Fatal(err)
	}
	if err := b.Close(); err != nil {
		t.Fatal(err)
	}
	srv.Close()
	db.Close()
	raw, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	logged := logs.String()
	if !strings.Contains(logged, "rotated") {
		t.Fatalf("the test logger saw nothing: %q", logged)
	}
	for _, secret := range []string{"127.0.0.1", srv.Listener.Addr().String(), ua, "PrivacyProbeAgent", referrer, "referrer.example", xff, cookie} {
		if bytes.Contains(raw, []byte(secret)) {
			t.Errorf("the database file holds %q", secret)
		}
		if strings.Contains(logged, secret) {
			t.Errorf("the log holds %q", secret)
		}
	}
	s, err := ReadStats(reopenDB(t, path), Filter{})
	if err != nil || len(s) != 1 || s[0].Loads != 40 {
		t.Fatalf("stats after the probe = %+v, %v; want 40 loads", s, err)
	}
	if srv.Config.ErrorLog == nil {
		t.Fatal("PublicServer leaves net/http's error log (which prints client addresses) on")
	}
}

func TestStatsHandler(t *testing.T) {
	db, _ := testDB(t)
	b := open(t, db, newClock(t0), Options{MinBatch: 1})
	h := b.PublicHandler()
	d1 := t0.Add(24 * time.Hour)
	seed := []struct {
		tenant, campaign string
		day              time.Time
		recipients       int
		loads            int
	}{
		{"default", "autumn", t0, 3, 5},
		{"default", "autumn", d1, 2, 1},
		{"default", "winter", t0, 1, 0},
		{"acme", "autumn", t0, 7, 2},
	}
	for _, s := range seed {
		u, _ := mustDecide(t, b, s.tenant, s.campaign, s.recipients, s.day)
		for i := 0; i < s.loads; i++ {
			get(h, http.MethodGet, pathOf(t, u))
		}
	}
	// Half flushed, half pending: the answer must not depend on it.
	b.Flush()
	get(h, http.MethodGet, pathOf(t, mustURL(t, b, "default", "autumn", t0)))

	stats := b.StatsHandler()
	cases := []struct {
		query string
		code  int
		want  string // tenant/campaign/day:recipients/loads, in order
	}{
		{"", 200, "default/autumn/2026-11-28:3/6 default/winter/2026-11-28:1/0 default/autumn/2026-11-29:2/1"},       // tenant defaults to default
		{"?campaign=autumn", 200, "default/autumn/2026-11-28:3/6 default/autumn/2026-11-29:2/1"},                     // one campaign, every day
		{"?campaign=autumn&from=2026-11-29", 200, "default/autumn/2026-11-29:2/1"},                                   // from is inclusive
		{"?campaign=autumn&to=2026-11-28", 200, "default/autumn/2026-11-28:3/6"},                                     // to is inclusive
		{"?from=2026-11-28&to=2026-11-28", 200, "default/autumn/2026-11-28:3/6 default/winter/2026-11-28:1/0"},       // one day
		{"?tenant=acme", 200, "acme/autumn/2026-11-28:7/2"},                                                          // another tenant
		{"?tenant=*&campaign=autumn&to=2026-11-28", 200, "acme/autumn/2026-11-28:7/2 default/autumn/2026-11-28:3/6"}, // every tenant
		{"?campaign=nope", 200, ""},                 // nothing matches: [] not null
		{"?from=28/11/2026", 400, ""},               // not YYYY-MM-DD
		{"?from=2026-11-29&to=2026-11-28", 400, ""}, // inverted span
		{"?from=2026-02-30", 400, ""},               // no such day
	}
	for _, c := range cases {
		rec := get(stats, http.MethodGet, "/v1/beacons"+c.query)
		if rec.Code != c.code {
			t.Errorf("%s: status %d, want %d (%s)", c.query, rec.Code, c.code, rec.Body)
			continue
		}
		if rec.Header().Get("Content-Type") != "application/json" {
			t.Errorf("%s: Content-Type %q", c.query, rec.Header().Get("Content-Type"))
		}
		if c.code != 200 {
			var e map[string]string
			if json.Unmarshal(rec.Body.Bytes(), &e) != nil || e["error"] == "" {
				t.Errorf("%s: error body %s is not {\"error\": …}", c.query, rec.Body)
			}
			continue
		}
		// The contract's field names, checked on the raw JSON.
		var rows []map[string]any
		if err := json.Unmarshal(rec.Body.Bytes(), &rows); err != nil || rows == nil {
			t.Errorf("%s: body %s is not a JSON array", c.query, rec.Body)
			continue
		}
		var got []string
		for _, r := range rows {
			for _, k := range []string{"campaign", "day", "recipients", "loads"} {
				if _, ok := r[k]; !ok {
					t.Errorf("%s: row %v lacks %q", c.query, r, k)
				}
			}
			got = append(got, fmt.Sprintf("%s/%s/%s:%v/%v", r["tenant"], r["campaign"], r["day"], r["recipients"], r["loads"]))
		}
		if strings.Join(got, " ") != c.want {
			t.Errorf("%s:\n got %s\nwant %s", c.query, strings.Join(got, " "), c.want)
		}
	}
	if rec := get(stats, http.MethodPost, "/v1/beacons"); rec.Code != http.StatusMethodNotAllowed {
		t.Errorf("POST /v1/beacons answered %d", rec.Code)
	}
}

// withToken is the integrator's bearer check, reduced to what the tests
// need.
func withToken(token string, h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("Authorization") != "Bearer "+token {
			apiError(w, http.StatusUnauthorized, "missing or wrong bearer token")
			return
		}
		h.ServeHTTP(w, r)
	})
}

// decider is what `rewrite --action beacon` needs; both the local store and
// the API client provide it.
type decider interface {
	Decide(tenant, campaign string, recipients int, now time.Time) (string, bool, error)
}

var _ = []decider{(*Beacons)(nil), (*Client)(nil)}

func TestAdminAPIThroughClient(t *testing.T) {
	db, _ := testDB(t)
	clk := newClock(t0)
	b := open(t, db, clk, Options{MinBatch: 50})
	mux := http.NewServeMux()
	mux.Handle("/v1/beacons", b.AdminHandler())
	mux.Handle("/v1/beacons/", b.AdminHandler())
	admin := httptest.NewServer(withToken("s3cret", mux))
	defer admin.Close()
	public := b.PublicHandler()
	c := &Client{Server: admin.URL, Token: "s3cret"}

	// The batch guard over the API, as `rewrite --server` uses it.
	var d decider = c
	if _, ok, err := d.Decide("default", "news", 49, t0); err != nil || ok {
		t.Fatalf("49 recipients over the API: ok=%v err=%v", ok, err)
	}
	u, ok, err := d.Decide("default", "news", 1, t0)
	if err != nil || !ok || u != mustURL(t, b, "default", "news", t0) {
		t.Fatalf("the 50th over the API: %q %v %v", u, ok, err)
	}
	// The command's --beacon-base replaces the server's; the token is the same.
	c2 := &Client{Server: admin.URL, Token: "s3cret", Base: "https://px.example.org/"}
	u2, _, _ := c2.Decide("default", "news", 1, t0)
	if want := "https://px.example.org" + pathOf(t, u); u2 != want {
		t.Fatalf("URL with the client's base = %s, want %s", u2, want)
	}
	// A dry run looks without counting.
	code, body := doJSON(t, admin.URL+"/v1/beacons/decide", "s3cret", `{"campaign":"quiet","recipients":60,"dry_run":true}`)
	var resp DecideResponse
	if err := json.Unmarshal([]byte(body), &resp); err != nil || code != 200 || !resp.Beacon || resp.Total != 60 || resp.MinBatch != 50 || resp.Day != "2026-11-28" {
		t.Fatalf("dry run answer %d %s", code, body)
	}
	if s := statsFor(t, b, "quiet"); len(s) != 0 {
		t.Fatalf("the dry run recorded: %+v", s)
	}
	// Bad requests get 400 with a reason.
	for _, body := range []string{
		`{"campaign":"news","recipients":1,"at":"2026-01-01T00:00:00Z"}`, // months away from the server's clock
		`{"campaign":"","recipients":1}`,                                 // no campaign
		`{"campaign":"news","recipients":-3}`,                            // negative
		`{"campaign":"news","recipients":1,"extra":true}`,                // unknown field
		`not json`,
	} {
		if code, got := doJSON(t, admin.URL+"/v1/beacons/decide", "s3cret", body); code != 400 || !strings.Contains(got, `"error"`) {
			t.Errorf("decide %s answered %d %s", body, code, got)
		}
	}

	// Statistics over the API, every tenant when none is given.
	get(public, http.MethodGet, pathOf(t, u))
	stats, err := c.Stats(context.Background(), Filter{Campaign: "news"})
	if err != nil || len(stats) != 1 || stats[0].Recipients != 51 || stats[0].Loads != 1 {
		t.Fatalf("Client.Stats = %+v, %v", stats, err)
	}

	// Key rotation over the API; the old beacon keeps counting.
	ki, err := c.RotateKey(context.Background(), false)
	if err != nil || ki.ID != 2 {
		t.Fatalf("Client.RotateKey = %+v, %v", ki, err)
	}
	keys, err := c.Keys(context.Background())
	if err != nil || len(keys) != 2 || keys[0].ID != 2 || !keys[0].Signing {
		t.Fatalf("Client.Keys = %+v, %v", keys, err)
	}
	if rec := get(public, http.MethodGet, pathOf(t, u)); rec.Code != 200 {
		t.Fatalf("old beacon after rotation over the API: %d", rec.Code)
	}
	if code, raw := doJSON(t, admin.URL+"/v1/beacons/keys", "s3cret", ""); code != 200 || strings.Contains(raw, "secret") {
		t.Fatalf("the key listing: %d %s", code, raw)
	}

	// Errors an operator can act on.
	bad := &Client{Server: admin.URL, Token: "wrong"}
	if _, err := bad.Stats(context.Background(), Filter{}); err == nil || !strings.Contains(err.Error(), "PIXELRELAY_API_TOKEN") {
		t.Errorf("wrong token: %v", err)
	}
	gone := &Client{Server: "http://127.0.0.1:1", Token: "x"}
	if _, err := gone.Stats(context.Background(), Filter{}); err == nil || !strings.Contains(err.Error(), "cannot reach") {
		t.Errorf("no server: %v", err)
	}
	for path, want := range map[string]int{"/v1/beacons/nope": 404, "/v1/beacons/decide": 405, "/v1/beacons/keys/rotate": 405} {
		req, _ := http.NewRequest(http.MethodGet, admin.URL+path, nil)
		req.Header.Set("Authorization", "Bearer s3cret")
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != want {
			t.Errorf("GET %s answered %d, want %d", path, resp.StatusCode, want)
		}
	}
}

// doJSON POSTs body (or GETs when body is empty) with the bearer token.
func doJSON(t *testing.T, u, token, body string) (int, string) {
	t.Helper()
	method := http.MethodPost
	if body == "" {
		method = http.MethodGet
	}
	req, _ := http.NewRequest(method, u, strings.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(data)
}

// TestNoLoadLostToEviction evicts every idle entry at every flush while
// loads keep arriving, so loads race with evictions of their own entry.
func TestNoLoadLostToEviction(t *testing.T) {
	db, _ := testDB(t)
	b := open(t, db, newClock(t0), Options{MinBatch: 1})
	b.evictAfter = 0
	h := b.PublicHandler()
	paths := []string{
		pathOf(t, mustURL(t, b, "default", "a", t0)),
		pathOf(t, mustURL(t, b, "default", "b", t0)),
	}
	stop := make(chan struct{})
	flushed := make(chan int)
	go func() {
		n := 0
		for {
			select {
			case <-stop:
				flushed <- n
				return
			default:
				if err := b.Flush(); err != nil {
					t.Error(err)
				}
				n++
			}
		}
	}()
	var wg sync.WaitGroup
	for g := 0; g < 8; g++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := 0; i < 2000; i++ {
				if rec := get(h, http.MethodGet, paths[i%2]); rec.Code != 200 {
					t.Errorf("load answered %d", rec.Code)
					return
				}
			}
		}()
	}
	wg.Wait()
	close(stop)
	if n := <-flushed; n < 10 {
		t.Logf("only %d flushes ran during the loads", n)
	}
	s, err := b.Stats(context.Background(), Filter{})
	if err != nil || len(s) != 2 || s[0].Loads != 8000 || s[1].Loads != 8000 {
		t.Fatalf("stats = %+v, %v; want 8000 loads for each campaign", s, err)
	}
}

// TestLoadOnEvictedEntry plays the race above step by step: a load looks up
// its entry, the flush evicts that entry, then the load adds.
func TestLoadOnEvictedEntry(t *testing.T) {
	db, _ := testDB(t)
	b := open(t, db, newClock(t0), Options{MinBatch: 1})
	b.evictAfter = 0
	u := mustURL(t, b, "default", "c", t0)
	get(b.PublicHandler(), http.MethodGet, pathOf(t, u)) // creates the entry
	subject := appendSubject(nil, "default", "c", epochDay(t0))
	looked := (*b.entries.Load())[string(subject)]
	if looked == nil {
		t.Fatal("no entry after a load")
	}
	// The flush stores the first load; with evictAfter 0 the entry, now
	// without pending counts, is evicted at once.
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if (*b.entries.Load())[string(subject)] != nil {
		t.Fatal("the idle entry was not evicted")
	}
	b.countLoadFrom(looked, subject)
	if n := loadsOf(t, b); n != 2 {
		t.Fatalf("loads = %d, want 2: the load that raced the eviction was lost", n)
	}
}
