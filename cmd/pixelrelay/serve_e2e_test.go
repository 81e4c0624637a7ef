package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/crypto/bcrypt"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

const newsletter = "../../testdata/messages/newsletter.eml"
const trackerURL = "acme.us14.list-manage.com/track/open.php"

// smtplibSend sends a message file with python's smtplib, the client most
// scripts and many apps use. Arguments: host port mode(plain|starttls|ssl)
// user password sender rcpt,rcpt file. It prints refused recipients, or
// the SMTP error code it got.
const smtplibSend = `
import smtplib, ssl, sys
host, port, mode, user, pw, sender, rcpts, path = sys.argv[1:9]
ctx = ssl.create_default_context()
ctx.check_hostname = False
ctx.verify_mode = ssl.CERT_NONE
# SMTP wants CRLF; smtplib sends a bytes message's line endings as they are.
msg = open(path, "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
try:
    if mode == "ssl":
        s = smtplib.SMTP_SSL(host, int(port), timeout=20, context=ctx)
    else:
        s = smtplib.SMTP(host, int(port), timeout=20)
    s.ehlo("app.example")
    if mode == "starttls":
        s.starttls(context=ctx)
        s.ehlo("app.example")
    if user:
        s.login(user, pw)
    refused = s.sendmail(sender, rcpts.split(","), msg)
    s.quit()
    print("ok", sorted(refused.items()))
except smtplib.SMTPRecipientsRefused as e:
    print("refused", sorted((r, c) for r, (c, m) in e.recipients.items()))
except smtplib.SMTPResponseException as e:
    print("code", e.smtp_code, e.smtp_error.decode(errors="replace"))
`

func send(t *testing.T, port int, mode, user, pass string, rcpts []string, file string) string {
	t.Helper()
	return strings.TrimSpace(python(t, smtplibSend, "127.0.0.1", strconv.Itoa(port), mode, user, pass,
		"news@acme.example", strings.Join(rcpts, ","), file))
}

func TestE2ESplitWithdrawAndAudit(t *testing.T) {
	up := relaytest.NewUpstream(t)
	s := startServe(t, "--upstream", "smtp://"+up.Addr())
	s.consent("bob@example.com", "granted")

	if out := send(t, s.smtp, "plain", "", "", []string{"alice@example.fr", "bob@example.com"}, newsletter); out != "ok []" {
		t.Fatalf("smtplib: %s", out)
	}
	orig := mustReadFile(t, newsletter)
	orig = bytes.ReplaceAll(orig, []byte("\n"), []byte("\r\n"))
	bob := up.MessageFor("bob@example.com").Data
	if _, rest, ok := bytes.Cut(bob, []byte("\r\nFrom: ")); !ok || !bytes.Equal(append([]byte("From: "), rest...), orig) {
		t.Error("the consenting recipient's copy is not the client's bytes after the Received line")
	}
	if bytes.Count(bob, []byte("Received:")) != 1 {
		t.Error("want exactly one Received: line added")
	}
	alice := up.MessageFor("alice@example.fr").Data
	if bytes.Contains(qpDecoded(alice), []byte(trackerURL)) {
		t.Error("the non-consenting recipient got the tracking pixel")
	}
	if !bytes.Contains(qpDecoded(alice), []byte("cdn.acme.example/img/logo.png")) {
		t.Error("the logo was removed along with the pixel")
	}

	// Withdrawal takes effect for the next message.
	s.consent("bob@example.com", "withdrawn")
	if out := send(t, s.smtp, "plain", "", "", []string{"bob@example.com"}, newsletter); out != "ok []" {
		t.Fatalf("smtplib: %s", out)
	}
	msgs := up.Messages()
	if last := msgs[len(msgs)-1]; bytes.Contains(qpDecoded(last.Data), []byte(trackerURL)) {
		t.Error("after withdrawal bob still got the pixel")
	}

	// The audit log: one record per message, pseudonymised, chained.
	recs := s.auditRecords()
	if len(recs) != 2 {
		t.Fatalf("audit has %d records, want 2", len(recs))
	}
	audit := mustReadFile(t, s.audit)
	for _, addr := range []string{"alice@example.fr", "bob@example.com"} {
		if bytes.Contains(audit, []byte(addr)) {
			t.Errorf("audit log holds the plaintext address %s", addr)
		}
		if strings.Contains(s.out.String(), addr) {
			t.Errorf("operational log holds the plaintext address %s", addr)
		}
	}
	first := recs[0]["recipients"].([]any)
	for _, r := range first {
		rm := r.(map[string]any)
		if !strings.HasPrefix(rm["pseudonym"].(string), "hmac-sha256:") {
			t.Errorf("recipient pseudonym %v", rm["pseudonym"])
		}
	}
	if code, out := runCLI(t, nil, "audit", "verify", s.audit); code != 0 {
		t.Fatalf("audit verify on an intact log: %d %s", code, out)
	}
	lines := bytes.SplitAfter(audit, []byte("\n"))
	cut := filepath.Join(t.TempDir(), "cut.jsonl")
	os.WriteFile(cut, bytes.Join(lines[1:], nil), 0o600)
	if code, out := runCLI(t, nil, "audit", "verify", cut); code != 1 || !strings.Contains(out, "line 1") {
		t.Fatalf("audit verify after removing a line: exit %d, %s", code, out)
	}
}

func TestE2EUpstreamDownIs4xx(t *testing.T) {
	up := relaytest.NewUpstream(t)
	s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--upstream-connect-timeout", "2s")
	up.Down()
	out := send(t, s.smtp, "plain", "", "", []string{"alice@example.fr"}, newsletter)
	if !strings.HasPrefix(out, "refused [('alice@example.fr', 451)]") {
		t.Fatalf("upstream down: %s, want 451 for the recipient", out)
	}
}

func TestE2ESTARTTLSAuthClients(t *testing.T) {
	dir := t.TempDir()
	cert, key := selfSigned(t, dir)
	users := filepath.Join(dir, "users")
	hash, _ := bcrypt.GenerateFromPassword([]byte("s3cret"), bcrypt.MinCost)
	os.WriteFile(users, []byte("app "+string(hash)+" @acme.example\n"), 0o600)
	up := relaytest.NewUpstream(t)
	tlsPort := loopbackPort(t)
	s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--tls-cert", cert, "--tls-key", key,
		"--users", users, "--allow-net", "192.0.2.0/24", "--listen-tls", fmt.Sprintf("127.0.0.1:%d", tlsPort))

	// Without AUTH, loopback is not trusted here: 530.
	if out := send(t, s.smtp, "starttls", "", "", []string{"alice@example.fr"}, newsletter); !strings.HasPrefix(out, "code 530") {
		t.Errorf("unauthenticated: %s, want 530", out)
	}
	if out := send(t, s.smtp, "starttls", "app", "wrong", []string{"alice@example.fr"}, newsletter); !strings.HasPrefix(out, "code 535") {
		t.Errorf("wrong password: %s, want 535", out)
	}
	if out := send(t, s.smtp, "starttls", "app", "s3cret", []string{"alice@example.fr"}, newsletter); out != "ok []" {
		t.Errorf("STARTTLS + AUTH: %s", out)
	}
	if out := send(t, tlsPort, "ssl", "app", "s3cret", []string{"carol@example.org"}, newsletter); out != "ok []" {
		t.Errorf("implicit TLS + AUTH: %s", out)
	}

	swaks := needTool(t, "swaks", "apt-get install -y swaks")
	for _, tc := range []struct {
		name string
		args []string
	}{
		{"starttls-login", []string{"--port", strconv.Itoa(s.smtp), "--tls", "--auth", "LOGIN"}},
		{"implicit-plain", []string{"--port", strconv.Itoa(tlsPort), "--tls-on-connect", "--auth", "PLAIN"}},
	} {
		out, err := exec.Command(swaks, append([]string{"--server", "127.0.0.1", "--auth-user", "app", "--auth-password", "s3cret",
			"--from", "news@acme.example", "--to", "dave-" + tc.name + "@example.org", "--data", newsletter,
			"--timeout", "20"}, tc.args...)...).CombinedOutput()
		if err != nil {
			t.Errorf("swaks %s: %v\n%s", tc.name, err, out)
		}
	}
	delivered := map[string]bool{}
	for _, m := range up.Messages() {
		for _, r := range m.Rcpts {
			delivered[r] = true
		}
	}
	for _, r := range []string{"alice@example.fr", "carol@example.org", "dave-starttls-login@example.org", "dave-implicit-plain@example.org"} {
		if !delivered[r] {
			t.Errorf("%s not delivered upstream", r)
		}
	}
}

func TestE2EOutboxWhenNoUpstream(t *testing.T) {
	s := startServe(t)
	if !strings.Contains(s.out.String(), "outbox") {
		t.Errorf("no loud warning about the outbox at startup:\n%s", s.out.String())
	}
	if out := send(t, s.smtp, "plain", "", "", []string{"alice@example.fr"}, newsletter); out != "ok []" {
		t.Fatalf("smtplib: %s", out)
	}
	files, _ := filepath.Glob(filepath.Join(s.dir, "outbox", "*.eml"))
	if len(files) != 1 {
		t.Fatalf("outbox has %d .eml files, want 1", len(files))
	}
	data := mustReadFile(t, files[0])
	if !bytes.HasPrefix(data, []byte("Received: ")) || bytes.Contains(qpDecoded(data), []byte(trackerURL)) {
		t.Error("the outbox copy is not the stripped message with its Received line")
	}
}

func TestE2EInvalidConfigReportsEverything(t *testing.T) {
	code, out := runCLI(t, nil, "serve", "--listen", "nope", "--action", "delete", "--max-recipients", "0", "--db", filepath.Join(t.TempDir(), "x.db"))
	if code != 1 {
		t.Fatalf("exit %d, want 1", code)
	}
	for _, key := range []string{"listen:", "action:", "max_recipients:"} {
		if !strings.Contains(out, key) {
			t.Errorf("the error output does not name %s:\n%s", key, out)
		}
	}
}

func TestE2EDatabaseHeldByServe(t *testing.T) {
	s := startServe(t)
	start := time.Now()
	code, out := runCLI(t, nil, "consent", "show", "bob@example.com", "--db", s.db)
	if code != 1 {
		t.Fatalf("consent show on a held database: exit %d, %s", code, out)
	}
	want := fmt.Sprintf("database %s is in use by a running pixelrelay; use --server URL", s.db)
	if !strings.Contains(out, want) {
		t.Errorf("message %q, want %q", out, want)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("took %v: it must fail at once, not wait for the lock", d)
	}
	// Through the server it works.
	code, out = runCLI(t, []string{"PIXELRELAY_API_TOKEN=" + s.token}, "consent", "show", "bob@example.com", "--json",
		"--server", fmt.Sprintf("http://127.0.0.1:%d", s.http))
	if code != 0 || !strings.Contains(out, `"states"`) {
		t.Errorf("consent show --server: exit %d, %s", code, out)
	}
}

// qpDecoded undoes quoted-printable soft breaks and =3D so that a URL can
// be searched for in a QP-encoded copy.
func qpDecoded(b []byte) []byte {
	b = bytes.ReplaceAll(b, []byte("=\r\n"), nil)
	b = bytes.ReplaceAll(b, []byte("=\n"), nil)
	return bytes.ReplaceAll(b, []byte("=3D"), []byte("="))
}

func selfSigned(t *testing.T, dir string) (string, string) {
	t.Helper()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "relay.test"},
		DNSNames: []string{"relay.test"}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	cert, keyFile := filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(cert, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	return cert, keyFile
}

func TestE2ESIGHUPReload(t *testing.T) {
	up := relaytest.NewUpstream(t)
	cfgPath := filepath.Join(t.TempDir(), "pixelrelay.yaml")
	os.WriteFile(cfgPath, []byte("dry_run: false\n"), 0o600)
	s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--config", cfgPath)

	// A broken file is rejected as a whole; the relay keeps serving.
	os.WriteFile(cfgPath, []byte("listen: [this is not\n"), 0o600)
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, s, "new configuration rejected")
	if st, _ := s.api("GET", "/healthz", nil); st != 200 {
		t.Fatalf("/healthz after a broken reload: %d", st)
	}
	if out := send(t, s.smtp, "plain", "", "", []string{"alice@example.fr"}, newsletter); out != "ok []" {
		t.Fatalf("after a broken reload: %s", out)
	}
	if bytes.Contains(qpDecoded(up.MessageFor("alice@example.fr").Data), []byte(trackerURL)) {
		t.Error("the broken reload changed the policy")
	}

	// A valid one takes effect for the next message.
	os.WriteFile(cfgPath, []byte("dry_run: true\n"), 0o600)
	s.cmd.Process.Signal(syscall.SIGHUP)
	waitLog(t, s, "configuration reloaded")
	if out := send(t, s.smtp, "plain", "", "", []string{"carol@example.org"}, newsletter); out != "ok []" {
		t.Fatalf("after reload: %s", out)
	}
	if !bytes.Contains(qpDecoded(up.MessageFor("carol@example.org").Data), []byte(trackerURL)) {
		t.Error("after reloading dry_run: true, the message was still rewritten")
	}
}

func waitLog(t *testing.T, s *served, text string) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for time.Now().Before(deadline) {
		if strings.Contains(s.out.String(), text) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Fatalf("serve never logged %q:\n%s", text, s.out.String())
}

func TestE2EHealthReadinessMetrics(t *testing.T) {
	up := relaytest.NewUpstream(t)
	s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--upstream-connect-timeout", "1s")
	for _, p := range []string{"/healthz", "/readyz"} {
		req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d%s", s.http, p), nil)
		resp, err := http.DefaultClient.Do(req) // no token: health is public
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("%s: %v %v", p, err, resp)
		}
		resp.Body.Close()
	}
	if st, _ := s.api("GET", "/metrics", nil); st != 200 {
		t.Fatalf("/metrics with the token: %d", st)
	}
	req, _ := http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/metrics", s.http), nil)
	if resp, err := http.DefaultClient.Do(req); err != nil || resp.StatusCode != 401 {
		t.Fatalf("/metrics without a token: %v %v", err, resp)
	}

	s.consent("bob@example.com", "granted")
	if out := send(t, s.smtp, "plain", "", "", []string{"alice@example.fr", "bob@example.com"}, newsletter); out != "ok []" {
		t.Fatal(out)
	}
	_, body := s.api("GET", "/metrics", nil)
	for _, want := range []string{
		`pixelrelay_messages_total{outcome="delivered"} 1`,
		`pixelrelay_recipients_total{action="strip",consent="unknown"} 1`,
		`pixelrelay_recipients_total{action="keep",consent="granted"} 1`,
		`pixelrelay_trackers_total{action="strip",vendor="Mailchimp"} 1`,
		`pixelrelay_consent_lookups_total{result="ok"} 2`,
		`pixelrelay_db_size_bytes`,
		`pixelrelay_sessions_total{listener="smtp",tls="false"} 1`,
	} {
		if !bytes.Contains(body, []byte(want)) {
			t.Errorf("/metrics lacks %s", want)
		}
	}
	if bytes.Contains(body, []byte("@")) {
		t.Error("a metric carries an address")
	}

	// Readiness follows the upstream.
	up.Down()
	req, _ = http.NewRequest("GET", fmt.Sprintf("http://127.0.0.1:%d/readyz", s.http), nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil || resp.StatusCode != 503 {
		t.Fatalf("/readyz with the upstream down: %v %v", err, resp)
	}
}

// max_procs sets how many CPUs the running relay's Go code uses. One more
// than this machine has can only come from the flag: Go's default is the
// number of CPUs.
func TestE2EMaxProcs(t *testing.T) {
	n := runtime.NumCPU() + 1
	s := startServeEnv(t, filepath.Join(t.TempDir(), "db"), []string{"GOMAXPROCS="}, "--max-procs", strconv.Itoa(n))
	_, body := s.api("GET", "/metrics", nil)
	if want := fmt.Sprintf("go_sched_gomaxprocs_threads %d\n", n); !bytes.Contains(body, []byte(want)) {
		i := bytes.Index(body, []byte("go_sched_gomaxprocs_threads "))
		t.Fatalf("/metrics lacks %q; has %q", want, body[max(i, 0):min(max(i, 0)+40, len(body))])
	}
}

// The documented backup and restore: an online snapshot through the
// running server, then the snapshot in place of the database file.
func TestE2EBackupRestore(t *testing.T) {
	s := startServe(t)
	s.consent("bob@example.com", "granted")
	s.consent("carol@example.org", "denied")
	_, before := s.api("GET", "/v1/consent/bob@example.com", nil)
	snapshot := filepath.Join(t.TempDir(), "snapshot.db")
	env := []string{"PIXELRELAY_API_TOKEN=" + s.token}
	if code, out := runCLI(t, env, "consent", "backup", snapshot, "--server", fmt.Sprintf("http://127.0.0.1:%d", s.http)); code != 0 {
		t.Fatalf("backup through the server: %s", out)
	}
	if st, body := s.api("GET", "/v1/backup", nil); st != 200 || len(body) < 4096 {
		t.Fatalf("GET /v1/backup: %d, %d bytes", st, len(body))
	}
	s.stop()

	// Restore: the snapshot replaces the database file, then serve starts.
	data := mustReadFile(t, snapshot)
	if err := os.WriteFile(s.db, data, 0o600); err != nil {
		t.Fatal(err)
	}
	if code, out := runCLI(t, nil, "consent", "verify", "--db", s.db); code != 0 {
		t.Fatalf("consent verify on the restored file: %s", out)
	}
	s2 := startServeOn(t, s.db)
	_, after := s2.api("GET", "/v1/consent/bob@example.com", nil)
	if !bytes.Equal(before, after) {
		t.Errorf("restored record differs:\nbefore %s\nafter  %s", before, after)
	}
	if _, c := s2.api("GET", "/v1/consent/carol@example.org", nil); !bytes.Contains(c, []byte(`"denied"`)) {
		t.Errorf("carol after restore: %s", c)
	}
}

// A second serve on the same database fails at once, saying why.
func TestE2ESecondServeOnSameDatabase(t *testing.T) {
	s := startServe(t)
	start := time.Now()
	code, out := runCLI(t, nil, "serve", "--db", s.db, "--listen", fmt.Sprintf("127.0.0.1:%d", loopbackPort(t)),
		"--http", fmt.Sprintf("127.0.0.1:%d", loopbackPort(t)), "--audit-log", filepath.Join(t.TempDir(), "a.jsonl"))
	if code != 1 || !strings.Contains(out, "is in use by a running pixelrelay") {
		t.Fatalf("second serve: exit %d, %s", code, out)
	}
	if d := time.Since(start); d > 5*time.Second {
		t.Errorf("the second serve took %v to give up", d)
	}
}

// An HTTP address already taken stops serve at start, naming the key and
// the address, rather than leaving it up without its admin API or beacons.
func TestE2EHTTPPortInUse(t *testing.T) {
	held, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	addr := held.Addr().String()
	for _, c := range []struct{ flag, key string }{{"--http", "http"}, {"--beacon-listen", "beacon_listen"}} {
		args := []string{"serve", "--db", filepath.Join(t.TempDir(), "p.db"), "--audit-log", filepath.Join(t.TempDir(), "a.jsonl"),
			"--listen", fmt.Sprintf("127.0.0.1:%d", loopbackPort(t)), "--http", fmt.Sprintf("127.0.0.1:%d", loopbackPort(t)),
			"--beacon-base", "https://beacon.example.com", c.flag, addr}
		code, out := runCLI(t, nil, args...)
		if want := c.key + ": listen on " + addr; code != 1 || !strings.Contains(out, want) {
			t.Errorf("%s %s already in use: exit %d, want 1 and %q:\n%s", c.flag, addr, code, want, out)
		}
	}
}
