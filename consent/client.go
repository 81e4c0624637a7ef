package consent

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client performs the store's operations through a running server's admin
// API (the CLI's --server URL). Errors the server answers keep their kind:
// errors.Is(err, ErrInvalidInput), ErrConflict and ErrNotFound work as with
// a local Store.
type Client struct {
	base  *url.URL
	err   error // a bad base URL, reported by every call
	token string
	http  *http.Client
}

// NewClient returns a client for the admin API at baseURL (for example
// http://127.0.0.1:8025) with the bearer token (from PIXELRELAY_API_TOKEN).
func NewClient(baseURL, token string) *Client {
	// No overall timeout: an import or a backup may rightly take minutes,
	// and the caller's context bounds them. Connecting is bounded here.
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.DialContext = (&net.Dialer{Timeout: 10 * time.Second}).DialContext
	c := &Client{token: token, http: &http.Client{Transport: tr}}
	u, err := url.Parse(strings.TrimRight(baseURL, "/"))
	switch {
	case err != nil:
		c.err = fmt.Errorf("--server %q is not a URL (%v); give one such as http://127.0.0.1:8025", baseURL, err)
	case u.Scheme != "http" && u.Scheme != "https" || u.Host == "":
		c.err = fmt.Errorf("--server %q must be an http:// or https:// URL with a host, such as http://127.0.0.1:8025", baseURL)
	}
	c.base = u
	return c
}

// serverError is an error the server answered, mapped back to our kinds.
type serverError struct {
	status int
	msg    string
	body   []byte // the answer as sent: an import's error still counts rows
}

func (e *serverError) Error() string { return e.msg }
func (e *serverError) Is(target error) bool {
	switch e.status {
	case http.StatusBadRequest:
		return target == ErrInvalidInput
	case http.StatusConflict:
		return target == ErrConflict
	case http.StatusNotFound:
		return target == ErrNotFound
	}
	return false
}

func (c *Client) url(path string, q url.Values) string {
	u := *c.base
	u.Path = c.base.Path + path
	u.RawPath = ""
	if strings.Contains(path, "%") {
		u.RawPath = c.base.EscapedPath() + path
		u.Path, _ = url.PathUnescape(u.RawPath)
	}
	u.RawQuery = q.Encode()
	return u.String()
}

func (c *Client) do(ctx context.Context, method, path string, q url.Values, body io.Reader, contentType string) (*http.Response, error) {
	if c.err != nil {
		return nil, c.err
	}
	if c.token == "" {
		return nil, errors.New("no API token: set PIXELRELAY_API_TOKEN to the token serve was started with (--api-token)")
	}
	req, err := http.NewRequestWithContext(ctx, method, c.url(path, q), body)
	if err != nil {
		return nil, err
	}
	req.Header.Set("Authorization", "Bearer "+c.token)
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.http.Do(req)
	if err != nil {
		return nil, fmt.Errorf("cannot reach pixelrelay at %s: %v (is serve running, and is this its --http address?)", c.base, err)
	}
	if resp.StatusCode/100 != 2 {
		defer resp.Body.Close()
		var e apiError
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
		if json.Unmarshal(data, &e) != nil || e.Error == "" {
			e.Error = strings.TrimSpace(string(data))
			if e.Error == "" {
				e.Error = resp.Status
			}
		}
		msg := e.Error
		if resp.StatusCode == http.StatusUnauthorized {
			msg = "the server refused the API token (" + msg + "); check PIXELRELAY_API_TOKEN"
		}
		return nil, &serverError{status: resp.StatusCode, msg: msg, body: data}
	}
	return resp, nil
}

func tenantQuery(tenant string) url.Values {
	q := url.Values{}
	if tenant != "" {
		q.Set("tenant", tenant)
	}
	return q
}

func addrPath(addr string) string { return "/v1/consent/" + url.PathEscape(strings.TrimSpace(addr)) }

func decodeBody(resp *http.Response, v any) error {
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(v); err != nil {
		return fmt.Errorf("the server's answer is not the expected JSON: %v", err)
	}
	return nil
}

// Record records ev through the API. The server stamps the actor with the
// token's name; ev.Actor is ignored.
func (c *Client) Record(ctx context.Context, ev Event) (Record, error) {
	body := putBody{
		Purpose: ev.Purpose, State: string(ev.State), Method: ev.Method, Source: ev.Source,
		TextVersion: ev.TextVersion, TextSHA256: ev.TextSHA256, Evidence: ev.Evidence, WeakProof: ev.WeakProof,
	}
	if !ev.OccurredAt.IsZero() {
		body.OccurredAt = ev.OccurredAt.Format(time.RFC3339Nano)
	}
	data, _ := json.Marshal(body)
	resp, err := c.do(ctx, http.MethodPut, addrPath(ev.Address), tenantQuery(ev.Tenant), strings.NewReader(string(data)), "application/json")
	if err != nil {
		return Record{}, err
	}
	var rec Record
	return rec, decodeBody(resp, &rec)
}

// Show returns the subject's record.
func (c *Client) Show(ctx context.Context, tenant, addr string) (Record, error) {
	resp, err := c.do(ctx, http.MethodGet, addrPath(addr), tenantQuery(tenant), nil, "")
	if err != nil {
		return Record{}, err
	}
	var rec Record
	return rec, decodeBody(resp, &rec)
}

// Lookup returns the subject's state for purpose, as Store.Lookup does.
func (c *Client) Lookup(ctx context.Context, tenant, addr, purpose string) (State, error) {
	rec, err := c.Show(ctx, tenant, addr)
	if err != nil {
		return Unknown, err
	}
	if p, ok := rec.States[purpose]; ok {
		return p.State, nil
	}
	return Unknown, nil
}

// Erase erases the subject; ErrNotFound when nothing was stored.
func (c *Client) Erase(ctx context.Context, tenant, addr string) error {
	resp, err := c.do(ctx, http.MethodDelete, addrPath(addr), tenantQuery(tenant), nil, "")
	if err != nil {
		return err
	}
	var out struct {
		Erased bool `json:"erased"`
	}
	if err := decodeBody(resp, &out); err != nil {
		return err
	}
	if !out.Erased {
		return fmt.Errorf("nothing is stored for %s: %w", addr, ErrNotFound)
	}
	return nil
}

// Import streams r to the server. OnReject is called for each rejected row
// the server lists (the server lists at most its MaxRejections).
func (c *Client) Import(ctx context.Context, r io.Reader, opts ImportOptions) (ImportResult, error) {
	q := tenantQuery(opts.Tenant)
	if opts.Format != "" {
		q.Set("format", opts.Format)
	}
	if opts.WeakProof {
		q.Set("weak_proof", "true")
	}
	for k, v := range map[string]string{"source": opts.Source, "text_version": opts.TextVersion, "text_sha256": opts.TextSHA256} {
		if v != "" {
			q.Set(k, v)
		}
	}
	if !opts.At.IsZero() {
		q.Set("at", opts.At.Format(time.RFC3339Nano))
	}
	for col, p := range opts.Map {
		q.Add("map", col+"="+p)
	}
	resp, err := c.do(ctx, http.MethodPost, "/v1/consent/import", q, r, "text/csv")
	var res ImportResult
	if err != nil {
		// Rows committed before a fatal error stay committed, and the
		// server's answer counts them: pass the counts on with the error.
		var se *serverError
		if errors.As(err, &se) {
			json.Unmarshal(se.body, &res)
			reportRejected(res, opts)
		}
		return res, err
	}
	if err := decodeBody(resp, &res); err != nil {
		return res, err
	}
	reportRejected(res, opts)
	return res, nil
}

func reportRejected(res ImportResult, opts ImportOptions) {
	if opts.OnReject != nil {
		for _, rj := range res.Rejected {
			opts.OnReject(rj)
		}
	}
}

// Export streams the export into w.
func (c *Client) Export(ctx context.Context, w io.Writer, opts ExportOptions) error {
	q := tenantQuery(opts.Tenant)
	if opts.Format != "" {
		q.Set("format", opts.Format)
	}
	if opts.AllTenants {
		q.Set("all_tenants", "true")
	}
	if opts.Address != "" {
		q.Set("address", opts.Address)
	}
	resp, err := c.do(ctx, http.MethodGet, "/v1/consent/export", q, nil, "")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if _, err := io.Copy(w, resp.Body); err != nil {
		return fmt.Errorf("export transfer broke off: %v (the output is incomplete)", err)
	}
	return nil
}

// Backup downloads a snapshot of the server's database into w.
func (c *Client) Backup(ctx context.Context, w io.Writer) (int64, error) {
	resp, err := c.do(ctx, http.MethodGet, "/v1/backup", nil, nil, "")
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	n, err := io.Copy(w, resp.Body)
	if err == nil && resp.ContentLength >= 0 && n != resp.ContentLength {
		err = io.ErrUnexpectedEOF
	}
	if err != nil {
		return n, fmt.Errorf("backup transfer broke off after %d bytes: %v (the copy is incomplete)", n, err)
	}
	return n, nil
}
