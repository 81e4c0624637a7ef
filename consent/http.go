package consent

import (
	"crypto/sha256"
	"crypto/subtle"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"

	"go.etcd.io/bbolt"
)

// APIToken is one bearer token the admin API accepts. Name is what events
// record as their actor ("api:<name>"); it is never the secret itself.
type APIToken struct {
	Name  string
	Token string
}

// DefaultTokenName names the token given by a single --api-token.
const DefaultTokenName = "api-token"

// HandlerOptions configures NewHandler.
type HandlerOptions struct {
	// Tokens are the accepted bearer tokens. With none, the API is off:
	// every request gets 404 with ErrAPIDisabled's message. serve takes
	// them from --api-token (or PIXELRELAY_API_TOKEN) and its config.
	Tokens []APIToken
	// MaxImportBytes bounds an import request body; 0 means 1 GiB.
	MaxImportBytes int64
	// Logger receives the causes of 500 answers (which say only "internal
	// error" to the client). nil discards them.
	Logger *slog.Logger
}

// Enabled reports whether the API will serve anything; when it is false,
// serve logs ErrAPIDisabled at startup.
func (o HandlerOptions) Enabled() bool {
	for _, t := range o.Tokens {
		if t.Token != "" {
			return true
		}
	}
	return false
}

// SingleToken is HandlerOptions.Tokens for one --api-token.
func SingleToken(token string) []APIToken {
	if token == "" {
		return nil
	}
	return []APIToken{{Name: DefaultTokenName, Token: token}}
}

// Routes are the patterns NewHandler serves; mount the handler on each:
//
//	for _, p := range consent.Routes() { mux.Handle(p, h) }
func Routes() []string { return []string{"/v1/consent/", "/v1/backup"} }

const defaultMaxImportBytes = 1 << 30

type handler struct {
	s      *Store
	tokens []hashedToken
	opts   HandlerOptions
	log    *slog.Logger
}

type hashedToken struct {
	name string
	sum  [32]byte
}

// NewHandler serves the consent endpoints of the admin API (CONTRACTS.md):
//
//	PUT    /v1/consent/{addr}          record an event; 200 with the record
//	GET    /v1/consent/{addr}          the record (states {} if never seen)
//	DELETE /v1/consent/{addr}          erasure; 200 {"erased": true|false}
//	POST   /v1/consent/import?format=  CSV body; 200 with the import summary
//	GET    /v1/consent/export?format=  csv or jsonl, streamed
//	GET    /v1/backup                  a consistent snapshot of the database
//
// Every request needs "Authorization: Bearer <token>", compared in constant
// time against each configured token. ?tenant=T selects the tenant
// (default "default"). Errors are {"error": "…"} with 400, 401, 404, 409 or
// 500. With no token configured, the API is off (see HandlerOptions).
func NewHandler(s *Store, opts HandlerOptions) http.Handler {
	h := &handler{s: s, opts: opts, log: opts.Logger}
	if h.log == nil {
		h.log = slog.New(slog.DiscardHandler)
	}
	if h.opts.MaxImportBytes <= 0 {
		h.opts.MaxImportBytes = defaultMaxImportBytes
	}
	h.tokens = hashTokens(opts.Tokens)
	return h
}

func hashTokens(tokens []APIToken) []hashedToken {
	var out []hashedToken
	for _, t := range tokens {
		if t.Token == "" {
			continue
		}
		name := t.Name
		if name == "" {
			name = DefaultTokenName
		}
		out = append(out, hashedToken{name: name, sum: sha256.Sum256([]byte(t.Token))})
	}
	return out
}

// RequireToken guards the other admin endpoints (metrics, beacons, pprof)
// with the consent API's bearer check, so that every path answers a wrong
// or missing token the same way.
func RequireToken(tokens []APIToken, next http.Handler) http.Handler {
	hashed := hashTokens(tokens)
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if authorize(hashed, r) == "" {
			unauthorized(w)
			return
		}
		next.ServeHTTP(w, r)
	})
}

func unauthorized(w http.ResponseWriter) {
	w.Header().Set("WWW-Authenticate", `Bearer realm="pixelrelay"`)
	writeJSON(w, http.StatusUnauthorized, apiError{"missing or wrong bearer token (Authorization: Bearer <token>)"})
}

// apiError is the JSON error body.
type apiError struct {
	Error string `json:"error"`
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func (h *handler) fail(w http.ResponseWriter, r *http.Request, err error) {
	status := http.StatusInternalServerError
	msg := "internal error; the server log has the cause"
	switch {
	case errors.Is(err, ErrInvalidInput):
		status, msg = http.StatusBadRequest, err.Error()
	case errors.Is(err, ErrConflict):
		status, msg = http.StatusConflict, err.Error()
	case errors.Is(err, ErrNotFound):
		status, msg = http.StatusNotFound, err.Error()
	default:
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			status, msg = http.StatusBadRequest, fmt.Sprintf("request body is larger than %d bytes; split the file", mbe.Limit)
			break
		}
		h.log.Error("consent API", "method", r.Method, "path", r.URL.Path, "err", err)
	}
	writeJSON(w, status, apiError{msg})
}

// authorize returns the name of the token presented, or "".
func authorize(tokens []hashedToken, r *http.Request) string {
	auth := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(auth) < len(prefix) || !strings.EqualFold(auth[:len(prefix)], prefix) {
		return ""
	}
	// Hash first so the comparison takes the same time whatever the
	// length, and compare against every token without stopping early.
	sum := sha256.Sum256([]byte(strings.TrimSpace(auth[len(prefix):])))
	name := ""
	for _, t := range tokens {
		if subtle.ConstantTimeCompare(sum[:], t.sum[:]) == 1 {
			name = t.name
		}
	}
	return name
}

func (h *handler) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if len(h.tokens) == 0 {
		writeJSON(w, http.StatusNotFound, apiError{ErrAPIDisabled.Error()})
		return
	}
	name := authorize(h.tokens, r)
	if name == "" {
		unauthorized(w)
		return
	}
	actor := "api:" + name
	q := r.URL.Query()
	tenant := q.Get("tenant")
	if tenant == "" {
		tenant = DefaultTenant
	}
	if err := validTenant(tenant); err != nil {
		h.fail(w, r, err)
		return
	}

	path := r.URL.EscapedPath()
	switch {
	case path == "/v1/backup":
		if !h.method(w, r, http.MethodGet) {
			return
		}
		h.backup(w, r)
	case path == "/v1/consent/import":
		if !h.method(w, r, http.MethodPost) {
			return
		}
		h.importCSV(w, r, tenant, actor)
	case path == "/v1/consent/export":
		if !h.method(w, r, http.MethodGet) {
			return
		}
		h.export(w, r, tenant)
	case strings.HasPrefix(path, "/v1/consent/") && len(path) > len("/v1/consent/"):
		addr, err := url.PathUnescape(path[len("/v1/consent/"):])
		if err != nil {
			h.fail(w, r, invalidf("the address in the path is not URL-escaped correctly: %v", err))
			return
		}
		switch r.Method {
		case http.MethodGet:
			rec, err := h.s.Show(r.Context(), tenant, addr)
			if err != nil {
				h.fail(w, r, err)
				return
			}
			writeJSON(w, http.StatusOK, rec)
		case http.MethodPut:
			h.put(w, r, tenant, addr, actor)
		case http.MethodDelete:
			err := h.s.Erase(r.Context(), tenant, addr, actor)
			switch {
			case errors.Is(err, ErrNotFound):
				writeJSON(w, http.StatusOK, map[string]bool{"erased": false})
			case err != nil:
				h.fail(w, r, err)
			default:
				writeJSON(w, http.StatusOK, map[string]bool{"erased": true})
			}
		default:
			h.method(w, r, "GET, PUT, DELETE")
		}
	default:
		writeJSON(w, http.StatusNotFound, apiError{"no such endpoint: " + r.URL.Path})
	}
}

// method answers a wrong method with 400 (CONTRACTS.md pins the status
// codes; 405 is not among them) and an Allow header.
func (h *handler) method(w http.ResponseWriter, r *http.Request, allowed string) bool {
	if r.Method == allowed {
		return true
	}
	w.Header().Set("Allow", allowed)
	writeJSON(w, http.StatusBadRequest, apiError{fmt.Sprintf("%s is not allowed on %s; use %s", r.Method, r.URL.Path, allowed)})
	return false
}

// putBody is the PUT /v1/consent/{addr} body (CONTRACTS.md).
type putBody struct {
	Purpose     string `json:"purpose"`
	State       string `json:"state"`
	OccurredAt  string `json:"occurred_at"`
	Method      string `json:"method"`
	Source      string `json:"source"`
	TextVersion string `json:"text_version"`
	TextSHA256  string `json:"text_sha256"`
	Evidence    string `json:"evidence"`
	WeakProof   bool   `json:"weak_proof"`
}

func (h *handler) put(w http.ResponseWriter, r *http.Request, tenant, addr, actor string) {
	dec := json.NewDecoder(http.MaxBytesReader(w, r.Body, 64<<10))
	dec.DisallowUnknownFields() // a misspelt "evidense" must not silently drop the proof
	var b putBody
	if err := dec.Decode(&b); err != nil {
		h.fail(w, r, invalidf("request body is not the expected JSON object: %v", err))
		return
	}
	st, err := ParseState(b.State)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	ev := Event{
		Tenant: tenant, Address: addr, Purpose: b.Purpose, State: st, Method: b.Method, Source: b.Source,
		TextVersion: b.TextVersion, TextSHA256: b.TextSHA256, Evidence: b.Evidence, Actor: actor, WeakProof: b.WeakProof,
	}
	if ev.Method == "" {
		ev.Method = MethodAPI
	}
	if b.OccurredAt != "" {
		if ev.OccurredAt, err = time.Parse(time.RFC3339Nano, b.OccurredAt); err != nil {
			h.fail(w, r, invalidf("occurred_at %q is not an RFC 3339 time (e.g. 2026-05-01T10:00:00Z)", b.OccurredAt))
			return
		}
	}
	rec, err := h.s.Record(r.Context(), ev)
	if err != nil {
		h.fail(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, rec)
}

func (h *handler) importCSV(w http.ResponseWriter, r *http.Request, tenant, actor string) {
	q := r.URL.Query()
	opts := ImportOptions{
		Format: q.Get("format"), Tenant: tenant, Actor: actor, Source: q.Get("source"),
		TextVersion: q.Get("text_version"), TextSHA256: q.Get("text_sha256"),
	}
	if v := q.Get("weak_proof"); v != "" {
		b, ok := parseBool(v)
		if !ok {
			h.fail(w, r, invalidf("weak_proof=%q is not true or false", v))
			return
		}
		opts.WeakProof = b
	}
	if v := q.Get("at"); v != "" {
		t, err := time.Parse(time.RFC3339Nano, v)
		if err != nil {
			h.fail(w, r, invalidf("at=%q is not an RFC 3339 time", v))
			return
		}
		opts.At = t
	}
	for _, m := range q["map"] {
		col, purpose, ok := strings.Cut(m, "=")
		if !ok {
			h.fail(w, r, invalidf("map=%q must be COLUMN=PURPOSE", m))
			return
		}
		if opts.Map == nil {
			opts.Map = map[string]string{}
		}
		opts.Map[col] = purpose
	}
	body := http.MaxBytesReader(w, r.Body, h.opts.MaxImportBytes)
	res, err := h.s.Import(r.Context(), body, opts)
	if err != nil {
		// Rows committed before the error stay; say how many.
		if errors.Is(err, ErrInvalidInput) {
			h.fail(w, r, err)
			return
		}
		var mbe *http.MaxBytesError
		status, msg := http.StatusInternalServerError, err.Error()
		if errors.As(err, &mbe) {
			status = http.StatusBadRequest
			msg = fmt.Sprintf("import stopped after %d rows: the request body is larger than %d bytes; split the file and send the rest (the rows before were imported)", res.Rows, mbe.Limit)
		} else {
			h.log.Error("consent import", "err", err)
		}
		writeJSON(w, status, struct {
			Error string `json:"error"`
			ImportResult
		}{msg, res})
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (h *handler) export(w http.ResponseWriter, r *http.Request, tenant string) {
	q := r.URL.Query()
	opts := ExportOptions{Format: q.Get("format"), Tenant: tenant, Address: q.Get("address")}
	if v := q.Get("all_tenants"); v != "" {
		opts.AllTenants, _ = parseBool(v)
	}
	switch opts.Format {
	case "", ExportCSV:
		w.Header().Set("Content-Type", "text/csv; charset=utf-8")
	case ExportJSONL:
		w.Header().Set("Content-Type", "application/x-ndjson")
	default:
		h.fail(w, r, invalidf("unknown export format %q: use csv or jsonl", opts.Format))
		return
	}
	cw := &countingWriter{w: w}
	if err := h.s.Export(r.Context(), cw, opts); err != nil {
		if cw.n == 0 {
			w.Header().Del("Content-Type")
			h.fail(w, r, err)
			return
		}
		// The status is gone; abort so the client sees a broken transfer
		// rather than a short file that looks complete.
		h.log.Error("consent export aborted", "err", err)
		panic(http.ErrAbortHandler)
	}
}

func (h *handler) backup(w http.ResponseWriter, r *http.Request) {
	err := h.s.db.View(func(tx *bbolt.Tx) error {
		w.Header().Set("Content-Type", "application/octet-stream")
		w.Header().Set("Content-Disposition", `attachment; filename="pixelrelay-backup.db"`)
		w.Header().Set("Content-Length", strconv.FormatInt(tx.Size(), 10))
		_, err := tx.WriteTo(w)
		return err
	})
	if err != nil {
		h.log.Error("backup aborted", "err", err)
		panic(http.ErrAbortHandler)
	}
}

type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}
