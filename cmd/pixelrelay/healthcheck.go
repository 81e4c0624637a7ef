package main

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

const healthcheckUsage = `usage: pixelrelay healthcheck [--url URL] [--timeout DURATION]

Asks a running pixelrelay whether it is up, for container health checks
(distroless images have no curl): GETs URL and exits 0 when it answers 2xx,
1 otherwise, saying why on stderr.

The default URL is /healthz on the admin listener that PIXELRELAY_HTTP
names, as serve reads it; a listener on all interfaces (0.0.0.0, ::) is
reached over loopback. Without PIXELRELAY_HTTP it is
http://127.0.0.1:8025/healthz. Proxy variables are ignored: the check is
always local.

flags:`

const defaultHealthURL = "http://127.0.0.1:8025/healthz"

func runHealthcheck(env *cmdEnv, args []string) int {
	fs := newFlagSet("healthcheck", healthcheckUsage, env.stderr)
	rawURL := fs.String("url", "", "URL to GET (default: /healthz on PIXELRELAY_HTTP, else "+defaultHealthURL+")")
	timeout := fs.Duration("timeout", 5*time.Second, "give up after this long")
	rest, code, stop := parseCommand(fs, args)
	if stop {
		return code
	}
	if len(rest) > 0 {
		fmt.Fprintf(env.stderr, "pixelrelay healthcheck: unexpected argument %q; use --url URL\n", rest[0])
		return 1
	}
	target := *rawURL
	if target == "" {
		var err error
		target, err = healthURLFromListen(env.getenv("PIXELRELAY_HTTP"))
		if err != nil {
			fmt.Fprintf(env.stderr, "pixelrelay healthcheck: %v\n", err)
			return 1
		}
	}
	if u, err := url.Parse(target); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		fmt.Fprintf(env.stderr, "pixelrelay healthcheck: --url %q is not an http(s) URL\n", target)
		return 1
	}

	client := &http.Client{
		Timeout: *timeout,
		// The check is about this host's server: a proxy in the
		// environment must not answer for it.
		Transport: &http.Transport{Proxy: nil, DisableKeepAlives: true},
		// A redirect is not "up": /healthz answers 200 itself.
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
	resp, err := client.Get(target)
	if err != nil {
		fmt.Fprintf(env.stderr, "pixelrelay healthcheck: %s: %v\n", target, unwrapURLError(err))
		return 1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
	if resp.StatusCode < 200 || resp.StatusCode > 299 {
		fmt.Fprintf(env.stderr, "pixelrelay healthcheck: %s answered %s", target, resp.Status)
		if b := strings.TrimSpace(string(body)); b != "" {
			fmt.Fprintf(env.stderr, ": %s", b)
		}
		fmt.Fprintln(env.stderr)
		return 1
	}
	fmt.Fprintf(env.stdout, "%s: %s\n", target, resp.Status)
	return 0
}

// healthURLFromListen turns the admin listen address into the URL a local
// client reaches it at.
func healthURLFromListen(listen string) (string, error) {
	if listen == "" {
		return defaultHealthURL, nil
	}
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return "", fmt.Errorf("PIXELRELAY_HTTP=%q is not HOST:PORT (%v); pass --url", listen, err)
	}
	switch host {
	case "", "0.0.0.0":
		host = "127.0.0.1"
	case "::":
		host = "::1"
	}
	return "http://" + net.JoinHostPort(host, port) + "/healthz", nil
}

// unwrapURLError drops net/http's `Get "URL":` prefix, which the message
// already names.
func unwrapURLError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		return ue.Err
	}
	return err
}
