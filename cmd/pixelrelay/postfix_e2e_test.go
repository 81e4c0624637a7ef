package main

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/relay/relaytest"
)

// pixelrelay as the after-queue content filter of a real Postfix (Debian's
// package), in a private instance the test builds, starts and stops: its own
// config_directory, queue and data directories, loopback ports only, no
// local delivery. The operator's commands are not restated here: each phase
// runs a command block of docs/postfix.md (or README.md) word for word, so
// the page and the test cannot drift apart. What reaches the relaytest sink
// behind Postfix is what a recipient's provider would receive.

const (
	postfixDocPath = "../../docs/postfix.md"
	postfixREADME  = "../../README.md"
	deployPostfix  = "../../deploy/postfix"
	// The ports the documented steps use. They are fixed in the page, so the
	// test needs them free.
	filterPort   = 10025
	reinjectPort = 10026
	// --hostname in the documented serve line: pixelrelay greets Postfix
	// and names itself in its Received: line with its own name.
	sidecarHostname = "pixelrelay.localhost"
	// heldRcpt has consent, so it is alone in its copy's upstream
	// transaction; the lab's Postfix defers exactly that transaction at the
	// end of DATA (see labMainCF), which is how a failure of one copy among
	// two is produced for real.
	heldRcpt  = "held@example.com"
	holdReply = "451 4.3.0 held by the test"
)

// extractSteps returns the one ```sh block between <!-- NAME:begin --> and
// <!-- NAME:end --> in doc; ok is false when the markers are absent.
func extractSteps(doc, name string) (block string, ok bool, err error) {
	begin, end := "<!-- "+name+":begin -->", "<!-- "+name+":end -->"
	i := strings.Index(doc, begin)
	if i < 0 {
		if strings.Contains(doc, end) {
			return "", false, fmt.Errorf("%s without %s", end, begin)
		}
		return "", false, nil
	}
	if strings.Count(doc, begin) > 1 {
		return "", false, fmt.Errorf("%s appears more than once", begin)
	}
	rest := doc[i+len(begin):]
	j := strings.Index(rest, end)
	if j < 0 {
		return "", false, fmt.Errorf("%s without %s", begin, end)
	}
	lines := strings.Split(strings.TrimSpace(strings.ReplaceAll(rest[:j], "\r\n", "\n")), "\n")
	if len(lines) < 2 || strings.TrimSpace(lines[0]) != "```sh" || strings.TrimSpace(lines[len(lines)-1]) != "```" {
		return "", false, fmt.Errorf("between %s and %s there must be exactly one ```sh fenced block and nothing else", begin, end)
	}
	body := lines[1 : len(lines)-1]
	for _, l := range body {
		if strings.HasPrefix(strings.TrimSpace(l), "```") {
			return "", false, fmt.Errorf("between %s and %s there must be exactly one fenced block", begin, end)
		}
	}
	return strings.Join(body, "\n") + "\n", true, nil
}

func TestExtractSteps(t *testing.T) {
	for _, tc := range []struct {
		name, doc, want string
		ok, err         bool
	}{
		// The normal case: prose around, one block between the markers.
		{"block", "intro\n<!-- s:begin -->\n```sh\npostconf -e 'a = b'\n```\n<!-- s:end -->\nmore", "postconf -e 'a = b'\n", true, false},
		// CRLF files (edited on Windows) give the same commands.
		{"crlf", "<!-- s:begin -->\r\n```sh\r\necho hi\r\n```\r\n<!-- s:end -->\r\n", "echo hi\n", true, false},
		// No markers: this file does not carry the block.
		{"absent", "# README\nnothing here\n", "", false, false},
		// A begin marker the integrator forgot to close is an error, not "absent".
		{"unclosed", "<!-- s:begin -->\n```sh\necho\n```\n", "", false, true},
		{"end only", "```sh\necho\n```\n<!-- s:end -->\n", "", false, true},
		// Two blocks: the test would run only one of them; refuse.
		{"two blocks", "<!-- s:begin -->\n```sh\na\n```\n```sh\nb\n```\n<!-- s:end -->\n", "", false, true},
		// Prose between the markers would be silently skipped; refuse.
		{"prose inside", "<!-- s:begin -->\nRun:\n```sh\na\n```\n<!-- s:end -->\n", "", false, true},
		// Another language tag is not a shell block.
		{"not sh", "<!-- s:begin -->\n```\na\n```\n<!-- s:end -->\n", "", false, true},
		// The block for another name is not this one.
		{"other name", "<!-- s-smtp:begin -->\n```sh\na\n```\n<!-- s-smtp:end -->\n", "", false, false},
		{"twice", "<!-- s:begin -->\n```sh\na\n```\n<!-- s:end -->\n<!-- s:begin -->\n```sh\na\n```\n<!-- s:end -->\n", "", false, true},
	} {
		got, ok, err := extractSteps(tc.doc, "s")
		if got != tc.want || ok != tc.ok || (err != nil) != tc.err {
			t.Errorf("%s: got %q ok=%v err=%v; want %q ok=%v err=%v", tc.name, got, ok, err, tc.want, tc.ok, tc.err)
		}
	}
}

// docSteps returns the block NAME from docs/postfix.md or README.md (the
// integrator copies the section into the README, markers included). When
// both carry it they must agree.
func docSteps(t *testing.T, name string) string {
	t.Helper()
	var blocks, from []string
	for _, path := range []string{postfixDocPath, postfixREADME} {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		block, ok, err := extractSteps(string(data), name)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if ok {
			blocks, from = append(blocks, block), append(from, path)
		}
	}
	switch {
	case len(blocks) == 0:
		t.Fatalf("no <!-- %s:begin --> ```sh … ``` <!-- %s:end --> block in docs/postfix.md or README.md", name, name)
	case len(blocks) == 2 && blocks[0] != blocks[1]:
		t.Fatalf("%s and %s carry different %s blocks; they must be identical", from[0], from[1], name)
	}
	return blocks[0]
}

// postfixLab is the private Postfix instance with a relaytest sink as its
// relayhost, and the environment the documented steps run in.
type postfixLab struct {
	t   *testing.T // the running phase's, for failures
	top *testing.T // the whole test's, for cleanups
	// root is 0755 all the way down: Postfix's daemons (user postfix) and
	// the pipe filter (user nobody) must reach their files in it.
	root   string
	dir    string // config_directory: the steps' $DIR
	smtpd  int    // the instance's own smtpd, where mail is submitted
	sink   *relaytest.Upstream
	bin    string // the steps' $PIXELRELAY
	http   int
	token  string
	listen int // serve's plain SMTP listener, unused here but never 2525
	db     string
	audit  string
	serve  *stepsRun
	// sysetc, when set, is bind-mounted over /etc/postfix in a private
	// mount namespace for the steps and the Postfix they start. The reason
	// is postdrop: set-gid, it honours a non-default config directory
	// (MAIL_CONFIG) only when /etc/postfix/main.cf lists it in
	// alternate_config_directories, as postmulti does for real secondary
	// instances. The test must not edit the host's /etc/postfix, and pipe
	// mode's sendmail -G needs postdrop.
	sysetc string
}

// labMainCF is the "existing Postfix" the steps are applied to: a relay
// for 127.0.0.0/8 that sends everything to the sink and delivers nothing
// locally.
const labMainCF = `compatibility_level = 3.6
queue_directory = {{root}}/spool
data_directory = {{root}}/data
mail_owner = postfix
setgid_group = postdrop
myhostname = mta.test
mydomain = mta.test
myorigin = mta.test
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
local_transport = error:5.1.1 local delivery is disabled in this test instance
relay_domains =
relayhost = [127.0.0.1]:{{sink}}
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
alias_maps =
alias_database =
maillog_file = {{root}}/postfix.log
maillog_file_prefixes = {{root}}
`

// labHold defers heldRcpt's transaction at the end of DATA when it is the
// only recipient (Postfix hides the recipient from end-of-data checks of
// multi-recipient transactions): only the copy pixelrelay reinjects for
// heldRcpt alone, never a message with several recipients.
const labHold = "smtpd_end_of_data_restrictions = check_recipient_access inline:{ {" + heldRcpt + " = " + holdReply + "} }"

func newPostfixLab(t *testing.T) *postfixLab {
	t.Helper()
	// Postfix's commands live in /usr/sbin, which a CI runner's PATH may lack.
	t.Setenv("PATH", os.Getenv("PATH")+":/usr/sbin:/sbin")
	for _, tool := range []string{"postfix", "postconf", "postqueue", "postsuper"} {
		needTool(t, tool, "DEBIAN_FRONTEND=noninteractive apt-get install -y postfix (preseed postfix/main_mailer_type 'No configuration')")
	}
	needTool(t, "bash", "apt-get install -y bash")
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("the Postfix integration test must run as root (CI runs .ci/run as root)")
		}
		t.Skip("the Postfix integration test needs root to run a private Postfix instance")
	}
	for _, p := range []int{filterPort, reinjectPort} {
		if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", p), 200*time.Millisecond); err == nil {
			c.Close()
			msg := fmt.Sprintf("127.0.0.1:%d is in use; the documented Postfix steps need it (stop what listens there)", p)
			if os.Getenv("CI") == "true" {
				t.Fatal(msg)
			}
			t.Skip(msg)
		}
	}

	root, err := os.MkdirTemp("", "pixelrelay-postfix-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if t.Failed() {
			if log, err := os.ReadFile(filepath.Join(root, "postfix.log")); err == nil {
				t.Logf("postfix log (last 4 KB):\n%s", pfTail(string(log), 4096))
			}
		}
		os.RemoveAll(root)
	})
	l := &postfixLab{t: t, top: t, root: root, dir: filepath.Join(root, "etc"), token: "postfix-e2e-token",
		http: loopbackPort(t), listen: loopbackPort(t)}
	l.db = filepath.Join(root, "state", "pixelrelay.db")
	l.audit = filepath.Join(root, "state", "audit.jsonl")
	for _, d := range []string{"etc", "spool", "data", "state", "bin"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	os.Chmod(root, 0o755)
	// A copy in a directory the pipe filter's user can reach.
	l.bin = filepath.Join(root, "bin", "pixelrelay")
	data, err := os.ReadFile(pixelrelayBinary(t))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(l.bin, data, 0o755); err != nil {
		t.Fatal(err)
	}

	l.sink = relaytest.NewUpstream(t)
	_, sinkPort, _ := net.SplitHostPort(l.sink.Addr())
	l.smtpd = loopbackPort(t)
	maincf := strings.NewReplacer("{{root}}", root, "{{sink}}", sinkPort).Replace(labMainCF) + labHold + "\n"
	if err := os.WriteFile(filepath.Join(l.dir, "main.cf"), []byte(maincf), 0o644); err != nil {
		t.Fatal(err)
	}
	master, err := os.ReadFile("/etc/postfix/master.cf")
	if err != nil {
		t.Fatalf("Debian's /etc/postfix/master.cf, the base of the lab's: %v", err)
	}
	var mc []string
	replaced := false
	for _, line := range strings.Split(string(master), "\n") {
		if f := strings.Fields(line); len(f) > 1 && f[0] == "smtp" && f[1] == "inet" {
			line = fmt.Sprintf("127.0.0.1:%d inet n - n - - smtpd", l.smtpd)
			replaced = true
		}
		mc = append(mc, line)
	}
	if !replaced {
		t.Fatal("/etc/postfix/master.cf has no smtp inet service to move to a loopback port")
	}
	if err := os.WriteFile(filepath.Join(l.dir, "master.cf"), []byte(strings.Join(mc, "\n")), 0o644); err != nil {
		t.Fatal(err)
	}
	if dm, err := os.ReadFile("/etc/postfix/dynamicmaps.cf"); err == nil {
		os.WriteFile(filepath.Join(l.dir, "dynamicmaps.cf"), dm, 0o644)
	}
	l.sysetc = filepath.Join(root, "sysetc")
	l.run("cp", "-a", "/etc/postfix/.", l.sysetc)
	if err := os.WriteFile(filepath.Join(l.sysetc, "main.cf"), []byte("alternate_config_directories = "+l.dir+"\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("unshare", "-m", "--propagation", "private", "true").CombinedOutput(); err != nil {
		t.Logf("no private mount namespace (unshare -m: %v %s); pipe mode cannot be tested", err, out)
		l.sysetc = ""
	}
	l.run("postconf", "-c", l.dir, "-F", "*/*/chroot = n")
	l.run("postfix", "-c", l.dir, "set-permissions")
	l.run("chown", "-R", "postfix", filepath.Join(root, "data"))
	t.Cleanup(l.stopPostfix)
	return l
}

func pfTail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

// run runs a command and fails the test with its output if it fails.
func (l *postfixLab) run(name string, args ...string) string {
	l.t.Helper()
	out, err := exec.Command(name, args...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("%s %s: %v\n%s", name, strings.Join(args, " "), err, out)
	}
	return string(out)
}

func (l *postfixLab) stopPostfix() {
	exec.Command("postfix", "-c", l.dir, "stop").Run()
	pidFile := filepath.Join(l.root, "spool", "pid", "master.pid")
	data, err := os.ReadFile(pidFile)
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(data)))
	if err != nil {
		return
	}
	for deadline := time.Now().Add(15 * time.Second); time.Now().Before(deadline); time.Sleep(50 * time.Millisecond) {
		if syscall.Kill(pid, 0) != nil {
			return
		}
	}
	exec.Command("postfix", "-c", l.dir, "abort").Run()
}

// stepsEnv is the environment an operator's shell would have: $DIR and
// $PIXELRELAY for the page, and serve's settings that the page leaves to
// the configuration file (database, audit log, admin API).
func (l *postfixLab) stepsEnv(extra ...string) []string {
	env := append(os.Environ(),
		"DIR="+l.dir,
		"PIXELRELAY="+l.bin,
		"PIXELRELAY_DB="+l.db,
		"PIXELRELAY_AUDIT_LOG="+l.audit,
		fmt.Sprintf("PIXELRELAY_HTTP=127.0.0.1:%d", l.http),
		fmt.Sprintf("PIXELRELAY_LISTEN=127.0.0.1:%d", l.listen),
		"PIXELRELAY_API_TOKEN="+l.token,
	)
	return append(env, extra...)
}

// stepsCommand is bash running a documented block with errexit, from the
// repository root (the page's paths, like deploy/postfix/pixelrelay-pipe,
// are relative to it).
func (l *postfixLab) stepsCommand(name string, extraEnv ...string) *exec.Cmd {
	script := "set -euo pipefail\n" + docSteps(l.t, name)
	cmd := exec.Command("bash", "-c", script)
	if l.sysetc != "" {
		cmd = exec.Command("unshare", "-m", "--propagation", "private", "sh", "-c",
			`mount --bind "$0" /etc/postfix && exec bash -c "$1"`, l.sysetc, script)
	}
	cmd.Dir = "../.."
	cmd.Env = l.stepsEnv(extraEnv...)
	return cmd
}

// runSteps runs a block that finishes (configuration only).
func (l *postfixLab) runSteps(name string, extraEnv ...string) {
	l.t.Helper()
	out, err := l.stepsCommand(name, extraEnv...).CombinedOutput()
	if err != nil {
		l.t.Fatalf("the %s steps failed: %v\n%s", name, err, out)
	}
}

// stepsRun is a block whose last command is pixelrelay serve in the
// foreground, as an operator would run it in a terminal.
type stepsRun struct {
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

// startSteps runs a block that ends with serve, and returns once serve
// listens on the filter port.
func (l *postfixLab) startSteps(name string) *stepsRun {
	l.t.Helper()
	s := &stepsRun{cmd: l.stepsCommand(name), out: &lockedBuffer{}, done: make(chan struct{})}
	s.cmd.Stdout, s.cmd.Stderr = s.out, s.out
	// Its own process group: stopping it reaches bash and serve, and
	// nothing else (postfix start detaches its master into its own session).
	s.cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := s.cmd.Start(); err != nil {
		l.t.Fatal(err)
	}
	go func() { s.cmd.Wait(); close(s.done) }()
	l.top.Cleanup(s.stop)
	for _, port := range []int{filterPort, l.http} {
		deadline := time.Now().Add(30 * time.Second)
		for {
			c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", port), 200*time.Millisecond)
			if err == nil {
				c.Close()
				break
			}
			select {
			case <-s.done:
				l.t.Fatalf("the %s steps ended before pixelrelay listened on %d:\n%s", name, port, s.out.String())
			default:
			}
			if time.Now().After(deadline) {
				l.t.Fatalf("pixelrelay did not listen on %d within 30 s after the %s steps:\n%s", port, name, s.out.String())
			}
			time.Sleep(50 * time.Millisecond)
		}
	}
	l.serve = s
	return s
}

// stop sends SIGTERM to the steps' process group (serve drains) and waits.
func (s *stepsRun) stop() {
	select {
	case <-s.done:
		return
	default:
	}
	pgid := s.cmd.Process.Pid
	syscall.Kill(-pgid, syscall.SIGTERM)
	select {
	case <-s.done:
	case <-time.After(40 * time.Second):
		syscall.Kill(-pgid, syscall.SIGKILL)
		<-s.done
	}
}

// stopServe takes pixelrelay down and waits until the filter port is
// closed, as during an outage or a restart.
func (l *postfixLab) stopServe() {
	l.t.Helper()
	if l.serve == nil {
		return
	}
	l.serve.stop()
	l.serve = nil
	if c, err := net.DialTimeout("tcp", fmt.Sprintf("127.0.0.1:%d", filterPort), 200*time.Millisecond); err == nil {
		c.Close()
		l.t.Fatalf("something still listens on %d after pixelrelay stopped", filterPort)
	}
}

func (l *postfixLab) consent(addr, state string) {
	l.t.Helper()
	(&served{t: l.t, http: l.http, token: l.token}).consent(addr, state)
}

// pfSubmit is python's smtplib submitting a file to Postfix with optional
// ESMTP parameters; it prints "ok" and the refused recipients, or the
// error reply.
const pfSubmit = `
import json, smtplib, sys
spec = json.loads(sys.argv[1])
msg = open(spec["file"], "rb").read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")
try:
    with smtplib.SMTP("127.0.0.1", spec["port"], timeout=30) as s:
        s.ehlo("app.example")
        refused = s.sendmail(spec["from"], spec["rcpts"], msg, spec.get("mail_options", []), spec.get("rcpt_options", []))
    print("ok", json.dumps(sorted(refused)))
except smtplib.SMTPRecipientsRefused as e:
    print("refused", sorted(e.recipients))
except smtplib.SMTPResponseException as e:
    print("code", e.smtp_code, e.smtp_error.decode(errors="replace"))
`

type pfMail struct {
	From        string   `json:"from"`
	Rcpts       []string `json:"rcpts"`
	File        string   `json:"file"`
	MailOptions []string `json:"mail_options,omitempty"`
	RcptOptions []string `json:"rcpt_options,omitempty"`
	Port        int      `json:"port"`
}

// submit hands a message to the lab's Postfix and insists it was queued.
func (l *postfixLab) submit(m pfMail) {
	l.t.Helper()
	m.Port = l.smtpd
	spec, _ := json.Marshal(m)
	if out := strings.TrimSpace(python(l.t, pfSubmit, string(spec))); out != "ok []" {
		l.t.Fatalf("Postfix did not queue the message for %v: %s", m.Rcpts, out)
	}
}

// queueEntry is one line of postqueue -j.
type queueEntry struct {
	QueueName  string `json:"queue_name"`
	QueueID    string `json:"queue_id"`
	Sender     string `json:"sender"`
	Recipients []struct {
		Address     string `json:"address"`
		DelayReason string `json:"delay_reason"`
	} `json:"recipients"`
}

func (l *postfixLab) queue() []queueEntry {
	l.t.Helper()
	out := l.run("postqueue", "-c", l.dir, "-j")
	var q []queueEntry
	sc := bufio.NewScanner(strings.NewReader(out))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		var e queueEntry
		if err := json.Unmarshal(sc.Bytes(), &e); err != nil {
			l.t.Fatalf("postqueue -j: %v: %s", err, sc.Text())
		}
		q = append(q, e)
	}
	return q
}

// deferred maps each recipient waiting in the deferred queue to Postfix's
// reason.
func (l *postfixLab) deferred() map[string]string {
	got := map[string]string{}
	for _, e := range l.queue() {
		for _, r := range e.Recipients {
			if e.QueueName == "deferred" || r.DelayReason != "" {
				got[r.Address] = r.DelayReason
			}
		}
	}
	return got
}

func (l *postfixLab) waitFor(what string, cond func() bool) {
	l.t.Helper()
	for deadline := time.Now().Add(15 * time.Second); !cond(); time.Sleep(100 * time.Millisecond) {
		if time.Now().After(deadline) {
			l.t.Fatalf("after 15 s, still waiting for %s; queue: %+v", what, l.queue())
		}
	}
}

// settle waits until Postfix's queue is empty: every message submitted
// before was delivered to the sink (or the test fails).
func (l *postfixLab) settle() {
	l.t.Helper()
	l.waitFor("Postfix's queue to empty", func() bool { return len(l.queue()) == 0 })
}

// flush makes Postfix retry its deferred mail now, as an operator would
// after fixing the cause.
func (l *postfixLab) flush() { l.run("postqueue", "-c", l.dir, "-f") }

// since returns the sink's deliveries after mark.
func (l *postfixLab) since(mark int) []relaytest.Message {
	return l.sink.Messages()[mark:]
}

// copiesFor returns the deliveries that include rcpt.
func copiesFor(msgs []relaytest.Message, rcpt string) []relaytest.Message {
	var out []relaytest.Message
	for _, m := range msgs {
		for _, r := range m.Rcpts {
			if strings.EqualFold(r, rcpt) {
				out = append(out, m)
			}
		}
	}
	return out
}

// oneCopy insists that rcpt got exactly one copy in msgs, and returns it.
func oneCopy(t *testing.T, msgs []relaytest.Message, rcpt string) relaytest.Message {
	t.Helper()
	c := copiesFor(msgs, rcpt)
	if len(c) != 1 {
		var all [][]string
		for _, m := range msgs {
			all = append(all, m.Rcpts)
		}
		t.Fatalf("%s got %d copies, want exactly 1 (deliveries to %q)", rcpt, len(c), all)
	}
	return c[0]
}

// receivedPrefix splits off the Received: fields the hops prepended and
// returns their texts (unfolded) and the rest of the message.
func receivedPrefix(data []byte) ([]string, []byte) {
	var fields []string
	for bytes.HasPrefix(data, []byte("Received:")) {
		end := 0
		for {
			i := bytes.Index(data[end:], []byte("\r\n"))
			if i < 0 {
				return fields, data
			}
			end += i + 2
			if end >= len(data) || (data[end] != ' ' && data[end] != '\t') {
				break
			}
		}
		fields = append(fields, strings.Join(strings.Fields(string(data[:end])), " "))
		data = data[end:]
	}
	return fields, data
}

// firstDifference names the first line where got and want differ.
func firstDifference(got, want []byte) string {
	g, w := bytes.Split(got, []byte("\r\n")), bytes.Split(want, []byte("\r\n"))
	for i := 0; i < len(g) && i < len(w); i++ {
		if !bytes.Equal(g[i], w[i]) {
			return fmt.Sprintf("line %d is %q, the sender wrote %q", i+1, g[i], w[i])
		}
	}
	return fmt.Sprintf("%d lines, the sender wrote %d", len(g), len(w))
}

func pfCRLF(b []byte) []byte {
	return bytes.ReplaceAll(bytes.ReplaceAll(b, []byte("\r\n"), []byte("\n")), []byte("\n"), []byte("\r\n"))
}

// checkSplit is the heart of the sidecar: the recipient who consented gets
// the sender's bytes (only Received: lines added by the hops, one of them
// pixelrelay's under its own name), the one who did not gets the copy
// without the pixel and with everything else.
func checkSplit(t *testing.T, msgs []relaytest.Message, orig []byte, kept, stripped string, viaPixelrelay bool) {
	t.Helper()
	keep := oneCopy(t, msgs, kept)
	hops, rest := receivedPrefix(keep.Data)
	if !bytes.Equal(rest, pfCRLF(orig)) {
		t.Errorf("%s (consented) did not get the sender's bytes after the hops' Received: lines; %s", kept, firstDifference(rest, pfCRLF(orig)))
	}
	if viaPixelrelay {
		ours := 0
		for _, h := range hops {
			if strings.Contains(h, "by "+sidecarHostname+" (pixelrelay)") {
				ours++
			}
		}
		if ours != 1 {
			t.Errorf("want exactly one Received: line by %s (pixelrelay), got hops %q", sidecarHostname, hops)
		}
	}
	strip := oneCopy(t, msgs, stripped)
	if bytes.Contains(qpDecoded(strip.Data), []byte(trackerURL)) {
		t.Errorf("%s (no consent) got the tracking pixel", stripped)
	}
	if !bytes.Contains(qpDecoded(strip.Data), []byte("cdn.acme.example/img/logo.png")) {
		t.Errorf("%s's copy lost the logo along with the pixel", stripped)
	}
	for _, m := range msgs {
		if m.From == "" {
			t.Errorf("a bounce or DSN reached the sink (to %v): nothing may bounce", m.Rcpts)
		}
	}
}

const (
	pfAlice = "alice@example.fr" // never consented: stripped
	pfBob   = "bob@example.com"  // granted through the admin API
	pfCarol = "carol@example.org"
	// An internationalised address, sent with SMTPUTF8.
	pfJose = "josé@exemple.fr"
)

// checkParams: SMTPUTF8 and the DSN parameters went through Postfix,
// pixelrelay and Postfix again (which works only because pixelrelay
// advertises both), and Postfix generated no success notice of its own.
func checkParams(t *testing.T, msgs []relaytest.Message, mode string) {
	t.Helper()
	for _, rcpt := range []string{pfJose, pfBob} {
		m := oneCopy(t, msgs, rcpt)
		if !m.MailOpts.UTF8 {
			t.Errorf("%s: the copy for %s lost SMTPUTF8", mode, rcpt)
		}
		if string(m.MailOpts.Return) != "HDRS" || m.MailOpts.EnvelopeID != "pf-e2e-"+mode {
			t.Errorf("%s: the copy for %s has RET=%q ENVID=%q, want HDRS and pf-e2e-%s", mode, rcpt, m.MailOpts.Return, m.MailOpts.EnvelopeID, mode)
		}
		for i, r := range m.Rcpts {
			if strings.EqualFold(r, rcpt) {
				var n []string
				for _, v := range m.RcptOpts[i].Notify {
					n = append(n, string(v))
				}
				if strings.Join(n, ",") != "SUCCESS,FAILURE" {
					t.Errorf("%s: %s arrived with NOTIFY=%s, want SUCCESS,FAILURE", mode, rcpt, strings.Join(n, ","))
				}
			}
		}
	}
	if bytes.Contains(qpDecoded(oneCopy(t, msgs, pfJose).Data), []byte(trackerURL)) {
		t.Errorf("%s: %s (no consent) got the pixel", mode, pfJose)
	}
	for _, m := range msgs {
		if m.From == "" {
			t.Errorf("%s: a delivery or failure notice (null sender) to %v reached the sink; with DSN passed through, reporting is the final hop's job", mode, m.Rcpts)
		}
	}
}

// TestLMTPStatusPerRecipient is what Postfix's lmtp(8) client relies on,
// without Postfix: after the data, one reply per recipient, each the next
// hop's verdict on that recipient's copy. A copy refused for one consent
// group must not turn into a failure for the other group's recipients,
// whose copy was delivered: Postfix would send it again.
func TestLMTPStatusPerRecipient(t *testing.T) {
	for _, tc := range []struct {
		name   string
		fault  *relaytest.Fault
		want   map[string]int // reply code per recipient
		copies int            // copies the upstream accepted
	}{
		// Both copies accepted: 250 for each recipient.
		{"both copies delivered", nil, map[string]int{pfAlice: 250, pfBob: 250}, 2},
		// The consenting copy (bob's) deferred at the end of DATA: only bob
		// gets 451; alice's stripped copy went out and she gets 250.
		{"one copy deferred", &relaytest.Fault{Phase: "data", Rcpt: pfBob,
			Err: &smtp.SMTPError{Code: 451, EnhancedCode: smtp.EnhancedCode{4, 3, 0}, Message: "try later"}},
			map[string]int{pfAlice: 250, pfBob: 451}, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			up := relaytest.NewUpstream(t)
			if tc.fault != nil {
				up.Inject(*tc.fault)
			}
			lmtpPort := loopbackPort(t)
			s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--listen-lmtp", fmt.Sprintf("127.0.0.1:%d", lmtpPort))
			s.consent(pfBob, "granted")
			conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", lmtpPort))
			if err != nil {
				t.Fatal(err)
			}
			c := smtp.NewClientLMTP(conn)
			defer c.Close()
			if err := c.Hello("mta.test"); err != nil {
				t.Fatal(err)
			}
			if err := c.Mail("news@acme.example", nil); err != nil {
				t.Fatal(err)
			}
			for _, r := range []string{pfAlice, pfBob} {
				if err := c.Rcpt(r, nil); err != nil {
					t.Fatalf("RCPT %s: %v", r, err)
				}
			}
			w, err := c.Data()
			if err != nil {
				t.Fatal(err)
			}
			orig := mustReadFile(t, newsletter)
			w.Write(orig)
			_, err = w.CloseWithLMTPResponse()
			got := map[string]int{pfAlice: 250, pfBob: 250}
			var perRcpt smtp.LMTPDataError
			if errors.As(err, &perRcpt) {
				for r, e := range perRcpt {
					got[r] = e.Code
				}
			} else if err != nil {
				t.Fatalf("LMTP DATA: %v (not a per-recipient reply)\nserve said:\n%s", err, s.out.String())
			}
			for r, code := range tc.want {
				if got[r] != code {
					t.Errorf("%s: reply %d, want %d (all replies %v)\nserve said:\n%s", r, got[r], code, got, pfTail(s.out.String(), 3000))
				}
			}
			if n := len(up.Messages()); n != tc.copies {
				t.Errorf("the upstream accepted %d copies, want %d", n, tc.copies)
			}
		})
	}
}

// TestPostfixORCPTForUTF8Recipient: for an internationalised recipient,
// Postfix (3.7, and to this day) sends the original recipient as an
// "rfc822" ORCPT whose xtext carries the address's UTF-8 octets
// ("RCPT TO:<josé@exemple.fr> ORCPT=rfc822;jos+C3+A9@exemple.fr", captured
// from Postfix's smtp and lmtp clients), whether or not the sender asked
// for a DSN. Refusing that with a 5xx makes Postfix bounce the mail; the
// relay must accept the recipient.
func TestPostfixORCPTForUTF8Recipient(t *testing.T) {
	up := relaytest.NewUpstream(t)
	lmtpPort := loopbackPort(t)
	s := startServe(t, "--upstream", "smtp://"+up.Addr(), "--listen-lmtp", fmt.Sprintf("127.0.0.1:%d", lmtpPort))
	for _, tc := range []struct {
		name, hello string
		port        int
	}{
		{"smtp", "EHLO", s.smtp},   // the scan transport (smtp client)
		{"lmtp", "LHLO", lmtpPort}, // the scanlmtp transport (lmtp client)
	} {
		conn, err := net.Dial("tcp", fmt.Sprintf("127.0.0.1:%d", tc.port))
		if err != nil {
			t.Fatal(err)
		}
		r := bufio.NewReader(conn)
		reply := func(cmd string) string {
			if cmd != "" {
				fmt.Fprintf(conn, "%s\r\n", cmd)
			}
			var last string
			for {
				conn.SetReadDeadline(time.Now().Add(10 * time.Second))
				line, err := r.ReadString('\n')
				if err != nil {
					t.Fatalf("%s: after %q: %v", tc.name, cmd, err)
				}
				last = strings.TrimRight(line, "\r\n")
				if len(last) < 4 || last[3] != '-' {
					return last
				}
			}
		}
		reply("")
		reply(tc.hello + " mta.test")
		if got := reply("MAIL FROM:<rédaction@acme.example> SMTPUTF8"); !strings.HasPrefix(got, "250") {
			t.Fatalf("%s: MAIL: %s", tc.name, got)
		}
		if got := reply("RCPT TO:<" + pfJose + "> ORCPT=rfc822;jos+C3+A9@exemple.fr"); !strings.HasPrefix(got, "250") {
			t.Errorf("%s: RCPT with Postfix's ORCPT for %s answered %q; Postfix bounces the recipient on that", tc.name, pfJose, got)
		}
		reply("QUIT")
		conn.Close()
	}
}

// phase runs one step of the scenario as a subtest; the lab's helpers fail
// that subtest while it runs. A failed phase leaves mail in the queue that
// would fail every later phase too, so its queue is emptied afterwards.
func (l *postfixLab) phase(t *testing.T, name string, f func(t *testing.T)) {
	t.Run(name, func(st *testing.T) {
		parent := l.t
		l.t = st
		defer func() {
			l.t = parent
			if st.Failed() {
				exec.Command("postsuper", "-c", l.dir, "-d", "ALL").Run()
			}
		}()
		f(st)
	})
}

// TestPostfixSidecar applies docs/postfix.md to a real Postfix, each block
// word for word: LMTP mode, then SMTP mode, turning the filter off, and
// pipe mode.
func TestPostfixSidecar(t *testing.T) {
	l := newPostfixLab(t)
	orig, err := os.ReadFile(newsletter)
	if err != nil {
		t.Fatal(err)
	}
	newsletterAbs, _ := filepath.Abs(newsletter)
	mail := func(rcpts ...string) pfMail {
		return pfMail{From: "news@acme.example", Rcpts: rcpts, File: newsletterAbs}
	}
	params := func(mode string) pfMail {
		return pfMail{From: "rédaction@acme.example", Rcpts: []string{pfJose, pfBob}, File: newsletterAbs,
			MailOptions: []string{"SMTPUTF8", "RET=HDRS", "ENVID=pf-e2e-" + mode},
			RcptOptions: []string{"NOTIFY=SUCCESS,FAILURE"}}
	}
	noSubst := strings.NewReplacer()
	// outage: pixelrelay down, Postfix keeps the mail (deferred, never
	// bounced); started again with the same steps, it delivers the mail,
	// rewritten. The hold on heldRcpt is lifted meanwhile, so the same
	// flush retries the per-recipient phase's deferral.
	outage := func(t *testing.T, steps string) int {
		l.stopServe()
		mark := len(l.sink.Messages())
		l.submit(mail(pfAlice))
		l.waitFor("the message to be deferred", func() bool {
			for _, e := range l.queue() {
				if len(e.Recipients) == 1 && e.Recipients[0].Address == pfAlice && e.Recipients[0].DelayReason != "" {
					return true
				}
			}
			return false
		})
		if n := len(l.since(mark)); n != 0 {
			t.Fatalf("with pixelrelay down, %d messages still reached the sink", n)
		}
		l.run("postconf", "-c", l.dir, "-X", "smtpd_end_of_data_restrictions")
		l.startSteps(steps) // the same steps again: they are safe to rerun
		l.flush()
		l.settle()
		a := copiesFor(l.since(mark), pfAlice)
		if len(a) == 0 || bytes.Contains(qpDecoded(a[len(a)-1].Data), []byte(trackerURL)) {
			t.Error("the message held during the outage was not delivered stripped once pixelrelay was back")
		}
		return mark
	}

	// The same checks in both modes, then each mode's failure handling.
	modes := []struct {
		name, section, failuresPhase string
		start                        func() // configures Postfix for the mode and starts pixelrelay
		failures                     func(t *testing.T)
	}{{
		// The LMTP steps configure and start Postfix, then pixelrelay.
		name: "lmtp", section: "LMTP mode (recommended)", failuresPhase: "per-recipient+outage",
		start: func() {
			l.startSteps("postfix-steps")
			l.consent(pfBob, "granted")
			l.consent(heldRcpt, "granted")
		},
		// One message, two copies; the reinjection smtpd defers heldRcpt's
		// copy. Over LMTP Postfix learns it per recipient: the others are
		// delivered once, only heldRcpt waits, and only heldRcpt is retried.
		failures: func(t *testing.T) {
			mark := len(l.sink.Messages())
			l.submit(mail(pfAlice, pfCarol, heldRcpt))
			l.waitFor(heldRcpt+" deferred", func() bool { _, ok := l.deferred()[heldRcpt]; return ok })
			if d := l.deferred(); len(d) != 1 || !strings.Contains(d[heldRcpt], "held by the test") {
				t.Errorf("deferred: %v; want only %s, with the reinjection smtpd's reason", d, heldRcpt)
			}
			oneCopy(t, l.since(mark), pfCarol)
			outage(t, "postfix-steps")
			all := l.since(mark)
			oneCopy(t, all, heldRcpt)
			oneCopy(t, all, pfCarol)
			if n := len(copiesFor(all, pfAlice)); n != 2 {
				t.Errorf("alice got %d copies, want 2: the per-recipient message once, the outage one once", n)
			}
		},
	}, {
		// SMTP mode, applied to the same running Postfix.
		name: "smtp", section: "SMTP mode", failuresPhase: "per-message+outage",
		start: func() {
			l.stopServe()
			l.run("postconf", "-c", l.dir, "-e", labHold)
			l.startSteps("postfix-steps-smtp")
		},
		// Over SMTP one reply covers every recipient: a failed copy makes
		// Postfix defer them all, and pixelrelay's retry memory keeps the
		// retry from duplicating the copies already delivered.
		failures: func(t *testing.T) {
			mark := len(l.sink.Messages())
			l.submit(mail(pfAlice, pfCarol, heldRcpt))
			l.waitFor("all three recipients deferred", func() bool { return len(l.deferred()) == 3 })
			oneCopy(t, l.since(mark), pfCarol)
			outage(t, "postfix-steps-smtp")
			all := l.since(mark)
			oneCopy(t, all, heldRcpt)
			if n := len(copiesFor(all, pfCarol)); n != 1 {
				t.Errorf("carol got %d copies after Postfix retried the whole message, want 1 (retry memory)", n)
			}
			if n := len(copiesFor(all, pfAlice)); n != 2 {
				t.Errorf("alice got %d copies, want 2: the held message once, the outage one once", n)
			}
		},
	}}
	for _, m := range modes {
		m.start()
		l.phase(t, m.name+"/snippets", func(t *testing.T) { l.checkSnippets(t, m.section, noSubst) })
		l.phase(t, m.name+"/split", func(t *testing.T) {
			mark := len(l.sink.Messages())
			l.submit(mail(pfAlice, pfBob))
			l.settle()
			checkSplit(t, l.since(mark), orig, pfBob, pfAlice, true)
		})
		l.phase(t, m.name+"/smtputf8-dsn", func(t *testing.T) {
			mark := len(l.sink.Messages())
			l.submit(params(m.name))
			l.settle()
			checkParams(t, l.since(mark), m.name)
		})
		l.phase(t, m.name+"/"+m.failuresPhase, m.failures)
	}

	// Turning the filter off with mail still queued for it: nothing is
	// lost, the queued mail goes out unfiltered.
	l.phase(t, "off", func(t *testing.T) {
		l.stopServe()
		mark := len(l.sink.Messages())
		l.submit(mail(pfAlice))
		l.waitFor("alice's message deferred", func() bool { _, ok := l.deferred()[pfAlice]; return ok })
		l.runSteps("postfix-steps-off")
		l.settle()
		a := oneCopy(t, l.since(mark), pfAlice)
		if _, rest := receivedPrefix(a.Data); !bytes.Equal(rest, pfCRLF(orig)) {
			t.Errorf("with the filter off, the queued message did not go out as the sender wrote it: %s", firstDifference(rest, pfCRLF(orig)))
		}
	})

	// pixelrelay sent its copies to the reinjection smtpd as BDAT, which
	// Postfix offers: smtpd counts each connection's commands when it
	// ends, and pixelrelay's connections (stopped above) are the only ones
	// that can hold BDAT, since the test submits with smtplib's DATA. The
	// split phases above checked those copies' bytes at the sink.
	l.phase(t, "bdat", func(t *testing.T) {
		used := regexp.MustCompile(`disconnect from \S+ .*\bbdat=[1-9]`)
		l.waitFor("a reinjection connection that used BDAT in Postfix's log", func() bool {
			log, _ := os.ReadFile(filepath.Join(l.root, "postfix.log"))
			return used.Match(log)
		})
	})

	l.phase(t, "pipe", func(t *testing.T) { l.pipeMode(t, orig, newsletterAbs) })
}

// pipeMode: no daemon; Postfix's pipe(8) runs the wrapper once per
// recipient, which runs pixelrelay rewrite --action auto and reinjects
// with sendmail.
func (l *postfixLab) pipeMode(t *testing.T, orig []byte, msgFile string) {
	if l.sysetc == "" {
		msg := "pipe mode needs a private mount namespace (unshare -m, CAP_SYS_ADMIN) so that the lab's postdrop trusts its config directory"
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	pipeDir := filepath.Join(l.root, "pipe")
	os.MkdirAll(pipeDir, 0o755)
	db := filepath.Join(pipeDir, "pixelrelay.db")
	filter := filepath.Join(l.root, "libexec", "pixelrelay-pipe")
	// The filter reads the database as its user: the page says to give it
	// the file. Consent is managed with the CLI (no daemon runs).
	if code, out := runCLI(t, nil, "consent", "grant", pfBob, "--db", db, "--method", "web_form", "--evidence", "pf-e2e", "--text-version", "v1"); code != 0 {
		t.Fatalf("consent grant --db: %s", out)
	}
	l.run("chown", "nobody", db)
	l.runSteps("postfix-steps-pipe", "PIPE_USER=nobody", "FILTER="+filter, "DB="+db)
	l.checkSnippets(t, "Pipe mode", strings.NewReplacer("user=pixelrelay", "user=nobody",
		"/usr/local/libexec/pixelrelay-pipe", filter, "/usr/local/bin/pixelrelay", l.bin, "/var/lib/pixelrelay/pixelrelay.db", db))

	mark := len(l.sink.Messages())
	l.submit(pfMail{From: "news@acme.example", Rcpts: []string{pfAlice, pfBob}, File: msgFile})
	l.settle()
	checkSplit(t, l.since(mark), orig, pfBob, pfAlice, false)

	// A bounce (null sender) stays a bounce: null_sender= in the service.
	mark = len(l.sink.Messages())
	l.submit(pfMail{From: "", Rcpts: []string{pfCarol}, File: msgFile})
	l.settle()
	if c := oneCopy(t, l.since(mark), pfCarol); c.From != "" {
		t.Errorf("a null-sender message was reinjected from %q", c.From)
	}

	// A database the filter cannot read: fail closed, strip, still deliver.
	os.Chmod(db, 0)
	defer os.Chmod(db, 0o600)
	mark = len(l.sink.Messages())
	l.submit(pfMail{From: "news@acme.example", Rcpts: []string{pfBob}, File: msgFile})
	l.settle()
	if b := oneCopy(t, l.since(mark), pfBob); bytes.Contains(qpDecoded(b.Data), []byte(trackerURL)) {
		t.Error("with the consent database unreadable, bob still got the pixel (must fail closed)")
	}
}

// checkSnippets compares one section of deploy/postfix/main.cf and
// master.cf with what the documented steps configured, so that the
// commented snippets cannot drift from the page. subst maps the snippets'
// default paths to the lab's.
func (l *postfixLab) checkSnippets(t *testing.T, section string, subst *strings.Replacer) {
	t.Helper()
	read := func(name string) string {
		data, err := os.ReadFile(filepath.Join(deployPostfix, name))
		if err != nil {
			t.Fatal(err)
		}
		return subst.Replace(snippetSection(string(data), section))
	}
	for _, line := range strings.Split(read("main.cf"), "\n") {
		if strings.TrimSpace(line) == "" {
			continue
		}
		name, want, ok := strings.Cut(line, "=")
		if !ok {
			t.Errorf("deploy/postfix/main.cf (%s): %q is not name = value", section, line)
			continue
		}
		name, want = strings.TrimSpace(name), strings.TrimSpace(want)
		if got := strings.TrimSpace(l.run("postconf", "-c", l.dir, "-h", name)); got != want {
			t.Errorf("deploy/postfix/main.cf (%s) sets %s = %s; the steps set %q", section, name, want, got)
		}
	}
	entries := masterEntries(read("master.cf"))
	if len(entries) == 0 {
		t.Errorf("deploy/postfix/master.cf has no entries in its %q section", section)
	}
	for _, want := range entries {
		f := strings.Fields(want)
		got := strings.Join(strings.Fields(l.run("postconf", "-c", l.dir, "-M", f[0]+"/"+f[1])), " ")
		if got != want {
			t.Errorf("deploy/postfix/master.cf (%s) has\n  %s\nthe steps configured\n  %s", section, want, got)
		}
	}
}

// snippetSection returns the lines under "# == TITLE ==" up to the next
// "# ==" heading, with commented-out settings uncommented: a "#" followed
// directly by a setting, or by an indented continuation, is code; "# text"
// is a comment and is dropped.
func snippetSection(text, title string) string {
	var out []string
	in := false
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, "# ==") {
			in = strings.TrimSpace(strings.Trim(line, "#= ")) == title
			continue
		}
		if !in {
			continue
		}
		if code, ok := strings.CutPrefix(line, "#"); ok {
			if code == "" || !(pfIsAlnum(code[0]) || strings.HasPrefix(code, "  ") || code[0] == '\t') {
				continue
			}
			line = code
		}
		if strings.HasPrefix(strings.TrimSpace(line), "#") {
			continue
		}
		out = append(out, line)
	}
	return strings.Join(out, "\n")
}

func pfIsAlnum(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9'
}

// masterEntries returns the services of a master.cf text, each as one line
// with single spaces, continuation lines joined.
func masterEntries(text string) []string {
	var out []string
	for _, line := range strings.Split(text, "\n") {
		switch {
		case strings.TrimSpace(line) == "" || strings.HasPrefix(strings.TrimSpace(line), "#"):
			continue
		case line[0] == ' ' || line[0] == '\t':
			if len(out) > 0 {
				out[len(out)-1] += " " + strings.Join(strings.Fields(line), " ")
			}
		default:
			out = append(out, strings.Join(strings.Fields(line), " "))
		}
	}
	return out
}
