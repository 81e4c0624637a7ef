package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// The end-to-end tests run the real binary, as users do, against real
// clients (python3's smtplib, swaks) and a real SMTP upstream on loopback.

var (
	binOnce sync.Once
	binPath string
	binErr  error
)

// TestMain removes the binary pixelrelayBinary built: it outlives every
// test, so no t.Cleanup can, and each run would leave 20 MB in $TMPDIR.
func TestMain(m *testing.M) {
	code := m.Run()
	if binPath != "" {
		os.RemoveAll(filepath.Dir(binPath))
	}
	os.Exit(code)
}

// pixelrelayBinary builds ./cmd/pixelrelay once per test run.
func pixelrelayBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		dir, err := os.MkdirTemp("", "pixelrelay-e2e-bin-")
		if err != nil {
			binErr = err
			return
		}
		binPath = filepath.Join(dir, "pixelrelay")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = fmt.Errorf("go build: %v\n%s", err, out)
		}
	})
	if binErr != nil {
		t.Fatal(binErr)
	}
	return binPath
}

// needTool fails in CI and skips elsewhere when a real client is missing.
func needTool(t *testing.T, name, install string) string {
	t.Helper()
	p, err := exec.LookPath(name)
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s is required in CI (%s)", name, install)
		}
		t.Skipf("%s not installed (%s)", name, install)
	}
	return p
}

func loopbackPort(t *testing.T) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}

func waitPort(t *testing.T, port int, logs func() string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
		if err == nil {
			c.Close()
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("port %d never opened; serve said:\n%s", port, logs())
}

// served is a running `pixelrelay serve`.
type served struct {
	t        *testing.T
	cmd      *exec.Cmd
	dir      string
	smtp     int
	http     int
	token    string
	db       string
	audit    string
	out      *lockedBuffer
	exited   chan struct{}
	exitCode int
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// startServe runs serve with loopback listeners, a temp database and audit
// log, and the given extra arguments.
func startServe(t *testing.T, extra ...string) *served {
	t.Helper()
	return startServeOn(t, "", extra...)
}

// startServeOn is startServe on an existing database file ("" for a new
// one in the temp dir).
func startServeOn(t *testing.T, db string, extra ...string) *served {
	t.Helper()
	return startServeEnv(t, db, nil, extra...)
}

// startServeEnv is startServeOn with env (KEY=VALUE) added to the
// environment.
func startServeEnv(t *testing.T, db string, env []string, extra ...string) *served {
	t.Helper()
	bin := pixelrelayBinary(t)
	s := &served{t: t, dir: t.TempDir(), smtp: loopbackPort(t), http: loopbackPort(t), token: "e2e-token", out: &lockedBuffer{}, exited: make(chan struct{})}
	s.db = db
	if s.db == "" {
		s.db = filepath.Join(s.dir, "pixelrelay.db")
	}
	s.audit = filepath.Join(s.dir, "audit.jsonl")
	args := append([]string{"serve",
		"--listen", fmt.Sprintf("127.0.0.1:%d", s.smtp),
		"--http", fmt.Sprintf("127.0.0.1:%d", s.http),
		"--db", s.db, "--audit-log", s.audit, "--hostname", "relay.test"}, extra...)
	s.cmd = exec.Command(bin, args...)
	s.cmd.Dir = s.dir
	s.cmd.Env = append(append(os.Environ(), "PIXELRELAY_API_TOKEN="+s.token), env...)
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	if err := s.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() {
		s.cmd.Wait()
		s.exitCode = s.cmd.ProcessState.ExitCode()
		close(s.exited)
	}()
	t.Cleanup(s.stop)
	waitPort(t, s.smtp, s.out.String)
	waitPort(t, s.http, s.out.String)
	return s
}

func (s *served) stop() {
	select {
	case <-s.exited:
		return
	default:
	}
	s.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-s.exited:
	case <-time.After(15 * time.Second):
		s.cmd.Process.Kill()
		<-s.exited
	}
}

func (s *served) api(method, path string, body any) (int, []byte) {
	s.t.Helper()
	var r io.Reader
	if body != nil {
		b, _ := json.Marshal(body)
		r = bytes.NewReader(b)
	}
	req, _ := http.NewRequest(method, fmt.Sprintf("http://127.0.0.1:%d%s", s.http, path), r)
	req.Header.Set("Authorization", "Bearer "+s.token)
	if body != nil {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		s.t.Fatal(err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, data
}

func (s *served) consent(addr, state string) {
	s.t.Helper()
	st, body := s.api("PUT", "/v1/consent/"+addr, map[string]any{
		"purpose": "open_tracking", "state": state, "method": "web_form", "source": "e2e",
		"text_version": "v1", "text_sha256": strings.Repeat("0", 64), "evidence": "e2e-evidence"})
	if st != 200 {
		s.t.Fatalf("PUT consent %s %s: %d %s", addr, state, st, body)
	}
}

func (s *served) auditRecords() []map[string]any {
	s.t.Helper()
	data, err := os.ReadFile(s.audit)
	if err != nil {
		s.t.Fatal(err)
	}
	var recs []map[string]any
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var m map[string]any
		if err := json.Unmarshal(sc.Bytes(), &m); err != nil {
			s.t.Fatalf("audit line is not JSON: %v", err)
		}
		recs = append(recs, m)
	}
	return recs
}

// python runs a python3 script with arguments and returns its output.
func python(t *testing.T, script string, args ...string) string {
	t.Helper()
	py := needTool(t, "python3", "apt-get install -y python3")
	cmd := exec.Command(py, append([]string{"-c", script}, args...)...)
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("python3: %v\n%s", err, out)
	}
	return string(out)
}

// runCLI runs the binary with args and returns its exit code and output.
func runCLI(t *testing.T, env []string, args ...string) (int, string) {
	t.Helper()
	cmd := exec.Command(pixelrelayBinary(t), args...)
	cmd.Env = append(os.Environ(), env...)
	out, _ := cmd.CombinedOutput()
	return cmd.ProcessState.ExitCode(), string(out)
}

// mustReadFile is os.ReadFile for a test: a file that cannot be read is
// the test's failure, never an empty input that passes vacuously.
func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
