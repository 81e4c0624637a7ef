package beacon

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log"
	"net/http"
	"strings"
	"time"
)

// gifImage is a 1×1 transparent GIF89a, 43 bytes: the smallest image every mail
// client renders.
var gifImage = []byte{
	'G', 'I', 'F', '8', '9', 'a', // header
	0x01, 0x00, 0x01, 0x00, 0x80, 0x00, 0x00, // 1×1, global colour table of 2
	0x00, 0x00, 0x00, 0xff, 0xff, 0xff, // black, white
	0x21, 0xf9, 0x04, 0x01, 0x00, 0x00, 0x00, 0x00, // graphic control: colour 0 transparent
	0x2c, 0x00, 0x00, 0x00, 0x00, 0x01, 0x00, 0x01, 0x00, 0x00, // image descriptor
	0x02, 0x02, 0x44, 0x01, 0x00, // LZW data
	0x3b, // trailer
}

// Response headers, shared read-only by every response so that the load
// path builds nothing. Each slice has capacity 1, so a later Header().Add
// copies instead of writing into them.
var (
	hdrGIF     = []string{"image/gif"}
	hdrGIFLen  = []string{fmt.Sprint(len(gifImage))}
	hdrNoStore = []string{"no-store"}
	hdrNoSniff = []string{"nosniff"}
)

// writeGIF answers the image. no-store makes every view a request, so the
// figures are loads, not first loads; see docs/beacon.md for why.
func writeGIF(w http.ResponseWriter, head bool) {
	h := w.Header()
	h["Content-Type"] = hdrGIF
	h["Content-Length"] = hdrGIFLen
	h["Cache-Control"] = hdrNoStore
	h["X-Content-Type-Options"] = hdrNoSniff
	w.WriteHeader(http.StatusOK)
	if !head {
		w.Write(gifImage)
	}
}

// PublicHandler serves GET /b/{token}.gif for the public listener and
// answers 404 to every other path, a bad, unknown-key or expired token
// included (405 to other methods on a beacon path). HEAD answers the
// headers and counts nothing. It reads the path and nothing else of the
// request: no address, user agent, referrer or cookie is looked at, logged
// or stored.
func (b *Beacons) PublicHandler() http.Handler { return http.HandlerFunc(b.servePublic) }

func (b *Beacons) servePublic(w http.ResponseWriter, r *http.Request) {
	p := r.URL.Path
	if !strings.HasPrefix(p, "/b/") || !strings.HasSuffix(p, ".gif") || len(p) <= len("/b/.gif") {
		b.metrics.rejected[rejectBadPath].Inc()
		http.NotFound(w, r)
		return
	}
	if r.Method != http.MethodGet && r.Method != http.MethodHead {
		b.metrics.rejected[rejectWrongMethod].Inc()
		w.Header().Set("Allow", "GET, HEAD")
		http.Error(w, "method not allowed", http.StatusMethodNotAllowed)
		return
	}
	s := scratchPool.Get().(*scratch)
	subject, reason := b.keys.Load().verify(p[len("/b/"):len(p)-len(".gif")], s, epochDay(b.opts.Now()), b.maxAgeDays)
	if reason == "" && r.Method == http.MethodGet {
		b.countLoad(subject)
		b.metrics.loads.Inc()
	}
	scratchPool.Put(s)
	if reason != "" {
		b.metrics.rejected[reason].Inc()
		http.NotFound(w, r)
		return
	}
	writeGIF(w, r.Method == http.MethodHead)
}

// BaselineHandler answers every request with the same GIF and headers as a
// valid beacon, doing nothing else. It exists to measure the endpoint's
// overhead against (bench/beacon).
func BaselineHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		writeGIF(w, r.Method == http.MethodHead)
	})
}

// PublicServer returns an http.Server for the public beacon listener on
// addr. Its error log is discarded: net/http writes the client's address
// into messages such as "TLS handshake error from 192.0.2.1:5678", and
// this listener must not record addresses. The timeouts bound what an
// Internet client can hold.
func (b *Beacons) PublicServer(addr string) *http.Server {
	return &http.Server{
		Addr:              addr,
		Handler:           b.PublicHandler(),
		ErrorLog:          log.New(io.Discard, "", 0),
		ReadHeaderTimeout: 5 * time.Second,
		ReadTimeout:       10 * time.Second,
		WriteTimeout:      10 * time.Second,
		IdleTimeout:       60 * time.Second,
		MaxHeaderBytes:    16 << 10,
	}
}

// Admin API. Authentication (the bearer token) is the caller's middleware;
// these handlers only serve.

// StatsHandler serves GET /v1/beacons?tenant=&campaign=&from=&to= with a
// JSON array of Stat. tenant defaults to "default", as everywhere in the
// admin API; tenant=* selects every tenant. from and to are inclusive
// YYYY-MM-DD days.
func (b *Beacons) StatsHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			apiError(w, http.StatusMethodNotAllowed, "use GET")
			return
		}
		f, err := FilterFromQuery(r.URL.Query().Get)
		if err != nil {
			apiError(w, http.StatusBadRequest, err.Error())
			return
		}
		stats, err := b.Stats(r.Context(), f)
		if err != nil {
			apiError(w, http.StatusInternalServerError, err.Error())
			return
		}
		writeJSON(w, http.StatusOK, stats)
	})
}

// FilterFromQuery reads a Filter from the query parameters of
// GET /v1/beacons (tenant, campaign, from, to).
func FilterFromQuery(get func(string) string) (Filter, error) {
	f := Filter{Tenant: get("tenant"), Campaign: get("campaign")}
	switch f.Tenant {
	case "":
		f.Tenant = "default"
	case "*":
		f.Tenant = ""
	}
	var errs []error
	for _, p := range []struct {
		name string
		dst  *time.Time
	}{{"from", &f.From}, {"to", &f.To}} {
		if v := get(p.name); v != "" {
			d, err := ParseDay(v)
			if err != nil {
				errs = append(errs, fmt.Errorf("%s: %w", p.name, err))
			}
			*p.dst = d
		}
	}
	if len(errs) == 0 && !f.From.IsZero() && !f.To.IsZero() && f.To.Before(f.From) {
		errs = append(errs, fmt.Errorf("from %s is after to %s", DayString(f.From), DayString(f.To)))
	}
	return f, errors.Join(errs...)
}

// DecideRequest is the body of POST /v1/beacons/decide.
type DecideRequest struct {
	Tenant     string `json:"tenant"`
	Campaign   string `json:"campaign"`
	Recipients int    `json:"recipients"`
	// At is the message's time; zero means now. It must be within two days
	// of the server's clock, so the API cannot mint tokens for other days.
	At time.Time `json:"at,omitzero"`
	// DryRun checks without recording.
	DryRun bool `json:"dry_run,omitempty"`
}

// DecideResponse is the answer of POST /v1/beacons/decide. Token and URL
// are set only when Beacon is true; URL only when the server has a base.
type DecideResponse struct {
	Beacon   bool   `json:"beacon"`
	Token    string `json:"token,omitempty"`
	URL      string `json:"url,omitempty"`
	Day      string `json:"day"`
	Total    uint64 `json:"recipients"`
	MinBatch int    `json:"min_batch"`
}

// maxSkew bounds DecideRequest.At.
const maxSkew = 48 * time.Hour

func (b *Beacons) serveDecide(w http.ResponseWriter, r *http.Request) {
	var req DecideRequest
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 16<<10))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&req); err != nil {
		apiError(w, http.StatusBadRequest, "body is not a decide request: "+err.Error())
		return
	}
	if req.Tenant == "" {
		req.Tenant = "default"
	}
	if req.Recipients < 0 {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("recipients %d is negative", req.Recipients))
		return
	}
	now := b.opts.Now()
	if req.At.IsZero() {
		req.At = now
	} else if d := req.At.Sub(now); d > maxSkew || d < -maxSkew {
		apiError(w, http.StatusBadRequest, fmt.Sprintf("at %s is more than two days from the server's clock (%s)", req.At.Format(time.RFC3339), now.UTC().Format(time.RFC3339)))
		return
	}
	d, err := b.decide(req.Tenant, req.Campaign, req.Recipients, req.At, !req.DryRun)
	switch {
	case errors.Is(err, ErrInvalidKey):
		apiError(w, http.StatusBadRequest, err.Error())
		return
	case err != nil:
		apiError(w, http.StatusInternalServerError, err.Error())
		return
	}
	resp := DecideResponse{Beacon: d.beacon, Day: DayString(d.day), Total: d.total, MinBatch: b.opts.MinBatch}
	if d.beacon {
		resp.Token = b.keys.Load().sign(d.subject)
		if b.opts.Base != "" {
			resp.URL = JoinURL(b.opts.Base, resp.Token)
		}
	}
	writeJSON(w, http.StatusOK, resp)
}

// RotateRequest is the body of POST /v1/beacons/keys/rotate; it may be
// empty.
type RotateRequest struct {
	RevokeOld bool `json:"revoke_old"`
}

func (b *Beacons) serveRotate(w http.ResponseWriter, r *http.Request) {
	var req RotateRequest
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 4<<10))
	if err == nil && len(strings.TrimSpace(string(body))) > 0 {
		err = json.Unmarshal(body, &req)
	}
	if err != nil {
		apiError(w, http.StatusBadRequest, "body is not a rotate request: "+err.Error())
		return
	}
	ki, err := b.RotateKey(req.RevokeOld)
	if err != nil {
		apiError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, ki)
}

func (b *Beacons) serveKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := b.Keys()
	if err != nil {
		apiError(w, http.StatusInternalServerError, err.Error())
		return
	}
	writeJSON(w, http.StatusOK, keys)
}

// AdminHandler serves the beacon part of the admin API:
//
//	GET  /v1/beacons                  statistics (StatsHandler)
//	POST /v1/beacons/decide           the batch guard for `rewrite --server`
//	GET  /v1/beacons/keys             signing keys, without secrets
//	POST /v1/beacons/keys/rotate      add a signing key ({"revoke_old": true} drops the others)
//
// Mount it at both "/v1/beacons" and "/v1/beacons/" behind the bearer
// token check.
func (b *Beacons) AdminHandler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("/v1/beacons", b.StatsHandler())
	mux.HandleFunc("/v1/beacons/decide", onlyMethod(http.MethodPost, b.serveDecide))
	mux.HandleFunc("/v1/beacons/keys", onlyMethod(http.MethodGet, b.serveKeys))
	mux.HandleFunc("/v1/beacons/keys/rotate", onlyMethod(http.MethodPost, b.serveRotate))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		apiError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	})
	return mux
}

func onlyMethod(method string, h http.HandlerFunc) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		if r.Method != method {
			w.Header().Set("Allow", method)
			apiError(w, http.StatusMethodNotAllowed, "use "+method)
			return
		}
		h(w, r)
	}
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func apiError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}
