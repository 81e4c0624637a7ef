package main

import (
	"bytes"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// healthcheckRun runs the command with the given PIXELRELAY_HTTP.
func healthcheckRun(t *testing.T, httpEnv string, args ...string) (int, string, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &errb, getenv: func(k string) string {
		if k == "PIXELRELAY_HTTP" {
			return httpEnv
		}
		return ""
	}}
	code := dispatch(env, append([]string{"healthcheck"}, args...))
	return code, out.String(), errb.String()
}

func TestHealthcheck(t *testing.T) {
	var seen []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen = append(seen, r.URL.Path)
		switch r.URL.Path {
		case "/healthz":
			w.Write([]byte("ok\n"))
		case "/moved":
			http.Redirect(w, r, "/healthz", http.StatusFound)
		default:
			http.Error(w, "database closed", http.StatusServiceUnavailable)
		}
	}))
	defer srv.Close()
	_, port, _ := net.SplitHostPort(srv.Listener.Addr().String())
	closed := func() string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		defer l.Close()
		return l.Addr().String()
	}()

	cases := []struct {
		httpEnv string
		args    []string
		code    int
		says    string
	}{
		// The container's setting: listening on all interfaces, checked
		// over loopback, with no flag at all.
		{"0.0.0.0:" + port, nil, 0, "200 OK"},
		{":" + port, nil, 0, "200 OK"},
		{"127.0.0.1:" + port, nil, 0, "200 OK"},
		// --url wins over the environment.
		{"0.0.0.0:1", []string{"--url", srv.URL + "/healthz"}, 0, "200 OK"},
		// A server that answers, but not 2xx.
		{"", []string{"--url", srv.URL + "/readyz"}, 1, "503 Service Unavailable: database closed"},
		// A redirect is not healthy.
		{"", []string{"--url", srv.URL + "/moved"}, 1, "302 Found"},
		// Nothing listening.
		{"", []string{"--url", "http://" + closed + "/healthz"}, 1, "connection refused"},
		// Bad input.
		{"", []string{"--url", "localhost:8025"}, 1, "not an http(s) URL"},
		{"nonsense", nil, 1, "PIXELRELAY_HTTP=\"nonsense\" is not HOST:PORT"},
		{"", []string{"extra"}, 1, "unexpected argument"},
	}
	for _, tc := range cases {
		code, stdout, stderr := healthcheckRun(t, tc.httpEnv, tc.args...)
		if code != tc.code || !strings.Contains(stdout+stderr, tc.says) {
			t.Errorf("PIXELRELAY_HTTP=%q %v: exit %d, %q %q; want exit %d saying %q", tc.httpEnv, tc.args, code, stdout, stderr, tc.code, tc.says)
		}
	}
}

func TestHealthURLFromListen(t *testing.T) {
	cases := []struct{ listen, want string }{
		{"", defaultHealthURL},
		{"0.0.0.0:8025", "http://127.0.0.1:8025/healthz"},
		{"[::]:9000", "http://[::1]:9000/healthz"},
		{"10.1.2.3:8025", "http://10.1.2.3:8025/healthz"},
		{"localhost:8025", "http://localhost:8025/healthz"},
	}
	for _, c := range cases {
		if got, err := healthURLFromListen(c.listen); err != nil || got != c.want {
			t.Errorf("%q: %q, %v; want %q", c.listen, got, err, c.want)
		}
	}
}
