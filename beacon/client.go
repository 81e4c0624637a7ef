package beacon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// Client reaches a running server's beacon admin API, for commands run
// with --server while `serve` holds the database.
type Client struct {
	// Server is the admin API's base URL, e.g. http://127.0.0.1:8025.
	Server string
	// Token is the bearer token (PIXELRELAY_API_TOKEN).
	Token string
	// Base, when set, replaces the server's beacon base in URLs from
	// Decide (`rewrite --beacon-base`). The token does not depend on it.
	Base string
	// HTTP is the client to use; nil means one with a 10-second timeout.
	HTTP *http.Client
}

func (c *Client) do(ctx context.Context, method, path string, query url.Values, body, out any) error {
	u := strings.TrimRight(c.Server, "/") + path
	if len(query) > 0 {
		u += "?" + query.Encode()
	}
	var rd io.Reader
	if body != nil {
		b, err := json.Marshal(body)
		if err != nil {
			return err
		}
		rd = bytes.NewReader(b)
	}
	req, err := http.NewRequestWithContext(ctx, method, u, rd)
	if err != nil {
		return fmt.Errorf("--server %q is not a usable URL: %w", c.Server, err)
	}
	if c.Token != "" {
		req.Header.Set("Authorization", "Bearer "+c.Token)
	}
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	hc := c.HTTP
	if hc == nil {
		hc = &http.Client{Timeout: 10 * time.Second}
	}
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach the pixelrelay server at %s (is `pixelrelay serve` running with --http there?): %w", c.Server, err)
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	if err != nil {
		return fmt.Errorf("reading the answer of %s %s: %w", method, u, err)
	}
	if resp.StatusCode != http.StatusOK {
		var e struct {
			Error string `json:"error"`
		}
		msg := strings.TrimSpace(string(data))
		if json.Unmarshal(data, &e) == nil && e.Error != "" {
			msg = e.Error
		}
		if resp.StatusCode == http.StatusUnauthorized {
			return fmt.Errorf("the server at %s refused the API token (401: %s); set PIXELRELAY_API_TOKEN to its --api-token", c.Server, msg)
		}
		return fmt.Errorf("%s %s: %s: %s", method, u, resp.Status, msg)
	}
	if err := json.Unmarshal(data, out); err != nil {
		return fmt.Errorf("%s %s answered something that is not the expected JSON: %w", method, u, err)
	}
	return nil
}

// Stats calls GET /v1/beacons. An empty f.Tenant asks for every tenant.
func (c *Client) Stats(ctx context.Context, f Filter) ([]Stat, error) {
	q := url.Values{}
	q.Set("tenant", f.Tenant)
	if f.Tenant == "" {
		q.Set("tenant", "*")
	}
	if f.Campaign != "" {
		q.Set("campaign", f.Campaign)
	}
	if !f.From.IsZero() {
		q.Set("from", DayString(f.From))
	}
	if !f.To.IsZero() {
		q.Set("to", DayString(f.To))
	}
	var out []Stat
	err := c.do(ctx, http.MethodGet, "/v1/beacons", q, nil, &out)
	return out, err
}

// Decide calls POST /v1/beacons/decide, with the same meaning as
// [Beacons.Decide], so that a command can use either.
func (c *Client) Decide(tenant, campaign string, recipients int, now time.Time) (string, bool, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var resp DecideResponse
	err := c.do(ctx, http.MethodPost, "/v1/beacons/decide", nil,
		DecideRequest{Tenant: tenant, Campaign: campaign, Recipients: recipients, At: now.UTC()}, &resp)
	if err != nil || !resp.Beacon {
		return "", false, err
	}
	switch {
	case c.Base != "":
		return JoinURL(c.Base, resp.Token), true, nil
	case resp.URL != "":
		return resp.URL, true, nil
	}
	return "", false, errors.New("the server has no --beacon-base; pass --beacon-base")
}

// Keys calls GET /v1/beacons/keys.
func (c *Client) Keys(ctx context.Context) ([]KeyInfo, error) {
	var out []KeyInfo
	err := c.do(ctx, http.MethodGet, "/v1/beacons/keys", nil, nil, &out)
	return out, err
}

// RotateKey calls POST /v1/beacons/keys/rotate.
func (c *Client) RotateKey(ctx context.Context, revokeOld bool) (KeyInfo, error) {
	var out KeyInfo
	err := c.do(ctx, http.MethodPost, "/v1/beacons/keys/rotate", nil, RotateRequest{RevokeOld: revokeOld}, &out)
	return out, err
}
