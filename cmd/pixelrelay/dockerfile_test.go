package main

import (
	"bufio"
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/pixelrelay/pixelrelay/relay"
)

// There is no Docker engine here or in CI, so the image itself is never
// built by the tests. These tests take the Dockerfile at its word instead:
// they parse it, build the binary with exactly its go build line, and run
// that binary as the image would (its USER, its ENV, its ENTRYPOINT and
// CMD, its HEALTHCHECK), with /data pointed at a temporary directory and
// the exposed ports at free loopback ports.

const dockerfilePath = "../../Dockerfile"

func TestDockerfileShape(t *testing.T) {
	df := parseDockerfile(t, dockerfilePath)
	final := df.stages[len(df.stages)-1]
	env := final.env()
	user, hasUser := final.last("USER")
	build := df.goBuild(t)

	checks := []struct {
		what string
		ok   bool
	}{
		{"multi-stage: a build stage and a runtime stage", len(df.stages) >= 2},
		{"the runtime image is distroless/static or scratch", strings.HasPrefix(final.from, "gcr.io/distroless/static") || final.from == "scratch"},
		{"the build is static: CGO_ENABLED=0", build.env["CGO_ENABLED"] == "0"},
		{"the build uses -trimpath", build.has("-trimpath")},
		{"the build strips symbols and sets the version: -ldflags \"-s -w -X main.version=…\"", regexp.MustCompile(`^-s -w -X main\.version=\S+$`).MatchString(build.flag("-ldflags"))},
		{"the runtime stage ends as a non-root USER", hasUser && dockerUID(user.args) > 0},
		{"a /data VOLUME", strings.Contains(final.joined("VOLUME"), `"/data"`) || strings.HasPrefix(final.joined("VOLUME")+" ", "/data ")},
		{"the database is on /data", strings.HasPrefix(env["PIXELRELAY_DB"], "/data/")},
		{"the audit log is on /data", strings.HasPrefix(env["PIXELRELAY_AUDIT_LOG"], "/data/")},
		{"SMTP listens on all interfaces", strings.HasPrefix(env["PIXELRELAY_LISTEN"], "0.0.0.0:")},
		{"HTTP listens on all interfaces", strings.HasPrefix(env["PIXELRELAY_HTTP"], "0.0.0.0:")},
		{"EXPOSE names the SMTP and HTTP ports", sameSet(strings.Fields(final.joined("EXPOSE")), []string{portOf(env["PIXELRELAY_LISTEN"]), portOf(env["PIXELRELAY_HTTP"])})},
		{"the HEALTHCHECK runs the binary's healthcheck command", strings.Join(df.healthcheck(t), " ") == strings.Join(append(df.entrypoint(t)[:1], "healthcheck"), " ")},
		{"the entry point runs serve", strings.Join(append(df.entrypoint(t), df.cmd(t)...), " ") == "/usr/local/bin/pixelrelay serve"},
	}
	for _, c := range checks {
		if !c.ok {
			t.Errorf("Dockerfile: want %s", c.what)
		}
	}

	// --allow-net comes from the environment, parses as the server parses
	// it, and does not open the relay to the whole Internet.
	nets, err := relay.ParseNets(splitList(env["PIXELRELAY_ALLOW_NET"]))
	if err != nil || len(nets) == 0 {
		t.Fatalf("PIXELRELAY_ALLOW_NET=%q: %v", env["PIXELRELAY_ALLOW_NET"], err)
	}
	for _, public := range []string{"8.8.8.8", "1.1.1.1", "203.0.113.9", "2001:4860:4860::8888", "2606:4700:4700::1111"} {
		for _, n := range nets {
			if n.Contains(netip.MustParseAddr(public)) {
				t.Errorf("PIXELRELAY_ALLOW_NET's %s lets the public address %s relay without AUTH: an open relay", n, public)
			}
		}
	}
	// Every PIXELRELAY_ variable is a real configuration key, so a typo
	// cannot silently leave a default in force.
	known := map[string]bool{}
	for _, k := range configKeys() {
		known[envName(k.name)] = true
	}
	for k := range env {
		if strings.HasPrefix(k, "PIXELRELAY_") && !known[k] {
			t.Errorf("ENV %s is not a configuration key", k)
		}
	}
}

// TestDockerfileBinary builds the binary with the Dockerfile's own go
// build line and runs it as the image would.
func TestDockerfileBinary(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the whole binary; skipped with -short")
	}
	df := parseDockerfile(t, dockerfilePath)
	final := df.stages[len(df.stages)-1]
	uid := dockerUID(final.mustLast(t, "USER").args)

	// A directory every user can enter: the binary runs as uid 65532.
	root, err := os.MkdirTemp("", "pixelrelay-docker-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(root) })
	if err := os.Chmod(root, 0o755); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(root, "pixelrelay")
	const testVersion = "docker-test-1.2.3"
	build := df.goBuild(t)
	buildArgs := map[string]string{"VERSION": testVersion, "TARGETOS": runtime.GOOS, "TARGETARCH": runtime.GOARCH}
	args := build.argsWithOutput(bin, func(s string) string { return df.expand(s, buildArgs) })
	cmd := exec.Command("go", args...)
	cmd.Dir = "../.."
	cmd.Env = os.Environ()
	for k, v := range build.env {
		cmd.Env = append(cmd.Env, k+"="+df.expand(v, buildArgs))
	}
	t.Logf("go %s", strings.Join(args, " "))
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("the Dockerfile's go build failed: %v\n%s", err, out)
	}

	t.Run("static, stripped, trimmed, versioned", func(t *testing.T) {
		f, err := elf.Open(bin)
		if err != nil {
			t.Fatal(err)
		}
		defer f.Close()
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Error("the binary has an ELF interpreter: it is dynamically linked (CGO_ENABLED=0 missing?)")
			}
		}
		if libs, _ := f.ImportedLibraries(); len(libs) > 0 {
			t.Errorf("the binary needs shared libraries %v; distroless/static has none", libs)
		}
		if f.Section(".symtab") != nil {
			t.Error("the binary has a symbol table (-ldflags -s missing?)")
		}
		data, err := os.ReadFile(bin)
		if err != nil {
			t.Fatal(err)
		}
		if repo, err := filepath.Abs("../.."); err == nil && strings.Contains(string(data), repo+"/") {
			t.Errorf("the binary contains the build path %s (-trimpath missing?)", repo)
		}
		out, err := exec.Command(bin, "version").Output()
		if err != nil || strings.TrimSpace(string(out)) != "pixelrelay "+testVersion {
			t.Errorf("pixelrelay version printed %q (%v), want the VERSION build argument %q", out, err, testVersion)
		}
	})

	t.Run("serve as the image runs it", func(t *testing.T) {
		runAsImage(t, df, bin, root, uid)
	})
}

// runAsImage starts ENTRYPOINT+CMD with the image's ENV, user and working
// directory, and checks it the way Docker's HEALTHCHECK would.
func runAsImage(t *testing.T, df *dockerfile, bin, root string, uid int) {
	final := df.stages[len(df.stages)-1]
	data := filepath.Join(root, "data")
	if err := os.Mkdir(data, 0o755); err != nil {
		t.Fatal(err)
	}
	var cred *syscall.Credential
	switch {
	case os.Geteuid() == 0:
		// As in the image: /data belongs to the runtime user (COPY --chown).
		if err := os.Chown(data, uid, uid); err != nil {
			t.Fatal(err)
		}
		cred = &syscall.Credential{Uid: uint32(uid), Gid: uint32(uid)}
	default:
		t.Logf("not root: running as uid %d instead of the image's %d", os.Geteuid(), uid)
		uid = os.Geteuid()
	}

	// The image's environment, with /data and the ports moved.
	ports := map[string]string{}
	for _, p := range strings.Fields(final.joined("EXPOSE")) {
		ports[strings.TrimSuffix(p, "/tcp")] = freePort(t)
	}
	env := []string{"PATH=/usr/local/bin:/usr/bin:/bin"}
	imageEnv := final.env()
	for k, v := range imageEnv {
		env = append(env, k+"="+moveForTest(v, data, ports))
	}
	httpAddr := moveForTest(imageEnv["PIXELRELAY_HTTP"], data, ports)
	smtpAddr := moveForTest(imageEnv["PIXELRELAY_LISTEN"], data, ports)
	entry := append(df.entrypoint(t), df.cmd(t)...)
	if entry[0] != "/usr/local/bin/pixelrelay" {
		t.Fatalf("ENTRYPOINT %q is not the binary the image copies", entry[0])
	}
	workdir, _ := final.last("WORKDIR")

	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	srv := exec.CommandContext(ctx, bin, entry[1:]...)
	srv.Env = env
	srv.Dir = moveForTest(workdir.args, data, ports)
	srv.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
	// Read while serve still writes (a health check that times out).
	stderr := &lockedBuffer{}
	srv.Stderr = stderr
	srv.Stdout = stderr
	if err := srv.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- srv.Wait() }()
	defer func() {
		srv.Process.Signal(syscall.SIGTERM)
		select {
		case <-exited:
		case <-time.After(10 * time.Second):
			srv.Process.Kill()
			t.Error("serve did not stop within 10s of SIGTERM")
		}
	}()

	healthz := "http://" + httpAddr + "/healthz"
	deadline := time.Now().Add(20 * time.Second)
	for {
		select {
		case err := <-exited:
			exited <- err // for the deferred stop
			t.Fatalf("serve exited with the image's defaults (%v):\n%s", err, stderr.String())
		default:
		}
		resp, err := http.Get(healthz)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s did not answer 200 within 20s:\n%s", healthz, stderr.String())
		}
		time.Sleep(100 * time.Millisecond)
	}

	// Not root, as USER says.
	if got := processUID(t, srv.Process.Pid); got != uid {
		t.Errorf("serve runs as uid %d, want %d", got, uid)
	}
	// The database is where PIXELRELAY_DB put it, owned by that user.
	dbPath := moveForTest(imageEnv["PIXELRELAY_DB"], data, ports)
	if st, err := os.Stat(dbPath); err != nil {
		t.Errorf("no database at PIXELRELAY_DB (%s): %v", dbPath, err)
	} else if owner := int(st.Sys().(*syscall.Stat_t).Uid); owner != uid {
		t.Errorf("%s belongs to uid %d, want %d", dbPath, owner, uid)
	}
	// SMTP answers on the listener PIXELRELAY_LISTEN names.
	if c, err := net.DialTimeout("tcp", smtpAddr, 5*time.Second); err != nil {
		t.Errorf("SMTP listener %s: %v", smtpAddr, err)
	} else {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		banner, _ := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if !strings.HasPrefix(banner, "220 ") {
			t.Errorf("SMTP listener %s greeted %q, want 220", smtpAddr, banner)
		}
	}

	// The HEALTHCHECK command, as Docker runs it: same user, same env.
	hc := df.healthcheck(t)
	check := func() (int, string) {
		c := exec.Command(bin, hc[1:]...)
		c.Env = env
		c.SysProcAttr = &syscall.SysProcAttr{Credential: cred}
		out, err := c.CombinedOutput()
		if ee, ok := err.(*exec.ExitError); ok {
			return ee.ExitCode(), string(out)
		} else if err != nil {
			t.Fatal(err)
		}
		return 0, string(out)
	}
	if code, out := check(); code != 0 {
		t.Errorf("HEALTHCHECK %v: exit %d: %s", hc, code, out)
	}

	// And it reports the server gone once it is.
	srv.Process.Signal(syscall.SIGTERM)
	select {
	case <-exited:
		exited <- nil
	case <-time.After(10 * time.Second):
		t.Fatal("serve did not stop within 10s of SIGTERM")
	}
	if code, out := check(); code != 1 {
		t.Errorf("HEALTHCHECK after stop: exit %d (%s), want 1", code, out)
	}
}

// moveForTest rewrites an image path or address for the test host: /data
// becomes the temporary data directory, 0.0.0.0:PORT a free loopback port.
func moveForTest(v, data string, ports map[string]string) string {
	switch {
	case v == "/data":
		return data
	case strings.HasPrefix(v, "/data/"):
		return data + v[len("/data"):]
	}
	if host, port, err := net.SplitHostPort(v); err == nil && (host == "0.0.0.0" || host == "::" || host == "") {
		if p, ok := ports[port]; ok {
			return net.JoinHostPort("127.0.0.1", p)
		}
	}
	return v
}

func freePort(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return portOf(l.Addr().String())
}

func portOf(addr string) string {
	_, port, _ := net.SplitHostPort(addr)
	return port
}

func processUID(t *testing.T, pid int) int {
	status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(status), "\n") {
		if f := strings.Fields(line); len(f) >= 3 && f[0] == "Uid:" {
			uid, _ := strconv.Atoi(f[2]) // effective uid
			return uid
		}
	}
	t.Fatal("no Uid line in /proc/PID/status")
	return -1
}

// dockerUID reads a USER value. Names resolve as distroless defines them.
func dockerUID(user string) int {
	name := strings.SplitN(strings.TrimSpace(user), ":", 2)[0]
	switch name {
	case "root":
		return 0
	case "nonroot":
		return 65532
	case "nobody":
		return 65534
	}
	n, err := strconv.Atoi(name)
	if err != nil {
		return -1
	}
	return n
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	seen := map[string]int{}
	for _, s := range a {
		seen[strings.TrimSuffix(s, "/tcp")]++
	}
	for _, s := range b {
		seen[s]--
	}
	for _, n := range seen {
		if n != 0 {
			return false
		}
	}
	return true
}

// A parsed Dockerfile: stages of instructions, line continuations joined
// and comments dropped. Only what these tests need is understood.
type dockerfile struct {
	stages []*dockerStage
	args   map[string]string // ARG defaults, from every stage
}

type dockerStage struct {
	from, name string
	instrs     []dockerInstr
}

type dockerInstr struct {
	cmd, args string
	line      int
}

func parseDockerfile(t *testing.T, path string) *dockerfile {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (the Dockerfile is at the top of the repository)", err)
	}
	df := &dockerfile{args: map[string]string{}}
	var cur strings.Builder
	start := 0
	lines := strings.Split(string(data), "\n")
	for i, raw := range lines {
		line := strings.TrimSpace(raw)
		if strings.HasPrefix(line, "#") || (line == "" && cur.Len() == 0) {
			continue
		}
		if cur.Len() == 0 {
			start = i + 1
		}
		if strings.HasSuffix(line, "\\") {
			cur.WriteString(strings.TrimSuffix(line, "\\") + " ")
			continue
		}
		cur.WriteString(line)
		text := strings.TrimSpace(cur.String())
		cur.Reset()
		cmd, args, _ := strings.Cut(text, " ")
		in := dockerInstr{cmd: strings.ToUpper(cmd), args: strings.TrimSpace(args), line: start}
		switch in.cmd {
		case "FROM":
			f := strings.Fields(in.args)
			st := &dockerStage{}
			for j := 0; j < len(f); j++ {
				switch {
				case strings.HasPrefix(f[j], "--"):
				case strings.EqualFold(f[j], "AS") && j+1 < len(f):
					st.name = f[j+1]
					j++
				case st.from == "":
					st.from = f[j]
				}
			}
			df.stages = append(df.stages, st)
			continue
		case "ARG":
			name, def, _ := strings.Cut(in.args, "=")
			for _, n := range strings.Fields(name) {
				if _, ok := df.args[n]; !ok || def != "" {
					df.args[n] = def
				}
			}
		}
		if len(df.stages) > 0 {
			st := df.stages[len(df.stages)-1]
			st.instrs = append(st.instrs, in)
		}
	}
	if len(df.stages) == 0 {
		t.Fatal("Dockerfile: no FROM")
	}
	return df
}

func (s *dockerStage) last(cmd string) (dockerInstr, bool) {
	for i := len(s.instrs) - 1; i >= 0; i-- {
		if s.instrs[i].cmd == cmd {
			return s.instrs[i], true
		}
	}
	return dockerInstr{}, false
}

func (s *dockerStage) mustLast(t *testing.T, cmd string) dockerInstr {
	in, ok := s.last(cmd)
	if !ok {
		t.Fatalf("Dockerfile: the runtime stage has no %s", cmd)
	}
	return in
}

// joined is the arguments of every instruction cmd, space-separated.
func (s *dockerStage) joined(cmd string) string {
	var parts []string
	for _, in := range s.instrs {
		if in.cmd == cmd {
			parts = append(parts, in.args)
		}
	}
	return strings.Join(parts, " ")
}

// env is the stage's ENV, in both the KEY=VALUE and the old KEY VALUE form.
func (s *dockerStage) env() map[string]string {
	env := map[string]string{}
	for _, in := range s.instrs {
		if in.cmd != "ENV" {
			continue
		}
		words, err := shellWords(in.args)
		if err != nil {
			continue
		}
		if len(words) > 0 && !strings.Contains(words[0], "=") {
			env[words[0]] = strings.Join(words[1:], " ")
			continue
		}
		for _, w := range words {
			if k, v, ok := strings.Cut(w, "="); ok {
				env[k] = v
			}
		}
	}
	return env
}

// execForm reads an instruction's JSON (exec) form, or splits its shell form.
func execForm(t *testing.T, in dockerInstr) []string {
	var list []string
	if strings.HasPrefix(in.args, "[") {
		if err := json.Unmarshal([]byte(in.args), &list); err != nil {
			t.Fatalf("Dockerfile line %d: %s is not a JSON array: %v", in.line, in.cmd, err)
		}
		return list
	}
	words, err := shellWords(in.args)
	if err != nil {
		t.Fatalf("Dockerfile line %d: %v", in.line, err)
	}
	return words
}

func (df *dockerfile) entrypoint(t *testing.T) []string {
	return execForm(t, df.stages[len(df.stages)-1].mustLast(t, "ENTRYPOINT"))
}

func (df *dockerfile) cmd(t *testing.T) []string {
	return execForm(t, df.stages[len(df.stages)-1].mustLast(t, "CMD"))
}

// healthcheck is the HEALTHCHECK's command, options dropped.
func (df *dockerfile) healthcheck(t *testing.T) []string {
	in := df.stages[len(df.stages)-1].mustLast(t, "HEALTHCHECK")
	i := strings.Index(in.args, "CMD ")
	if i < 0 {
		t.Fatalf("Dockerfile line %d: HEALTHCHECK without CMD", in.line)
	}
	in.args = strings.TrimSpace(in.args[i+len("CMD "):])
	return execForm(t, in)
}

// goBuildLine is the Dockerfile's go build command.
type goBuildLine struct {
	env  map[string]string // VAR=value words before go
	args []string          // after "go"
}

func (df *dockerfile) goBuild(t *testing.T) goBuildLine {
	for _, st := range df.stages {
		for _, in := range st.instrs {
			if in.cmd != "RUN" || !strings.Contains(in.args, "go build") {
				continue
			}
			for _, part := range strings.Split(in.args, "&&") {
				if !strings.Contains(part, "go build") {
					continue
				}
				words, err := shellWords(part)
				if err != nil {
					t.Fatalf("Dockerfile line %d: %v", in.line, err)
				}
				gb := goBuildLine{env: map[string]string{}}
				for i, w := range words {
					if w == "go" {
						gb.args = words[i+1:]
						break
					}
					if k, v, ok := strings.Cut(w, "="); ok {
						gb.env[k] = v
					}
				}
				return gb
			}
		}
	}
	t.Fatal("Dockerfile: no RUN with go build")
	return goBuildLine{}
}

func (g goBuildLine) has(flag string) bool {
	for _, a := range g.args {
		if a == flag {
			return true
		}
	}
	return false
}

// flag returns the value of a flag given as "-flag value" or "-flag=value".
func (g goBuildLine) flag(name string) string {
	for i, a := range g.args {
		if a == name && i+1 < len(g.args) {
			return g.args[i+1]
		}
		if v, ok := strings.CutPrefix(a, name+"="); ok {
			return v
		}
	}
	return ""
}

// argsWithOutput is the go command line with ARGs expanded and -o moved.
func (g goBuildLine) argsWithOutput(out string, expand func(string) string) []string {
	args := make([]string, len(g.args))
	for i, a := range g.args {
		args[i] = expand(a)
		if i > 0 && g.args[i-1] == "-o" {
			args[i] = out
		}
	}
	return args
}

func (df *dockerfile) expand(s string, vars map[string]string) string {
	all := map[string]string{}
	for k, v := range df.args {
		all[k] = v
	}
	for k, v := range vars {
		all[k] = v
	}
	return expandVars(s, all)
}

var varRef = regexp.MustCompile(`\$\{(\w+)(:-[^}]*)?\}|\$(\w+)`)

func expandVars(s string, vars map[string]string) string {
	return varRef.ReplaceAllStringFunc(s, func(m string) string {
		sub := varRef.FindStringSubmatch(m)
		name := sub[1] + sub[3]
		if v, ok := vars[name]; ok && v != "" {
			return v
		}
		return strings.TrimPrefix(sub[2], ":-")
	})
}

// shellWords splits a line as sh would: quotes group, a backslash escapes.
func shellWords(s string) ([]string, error) {
	var words []string
	var cur strings.Builder
	inWord := false
	var quote rune
	for i := 0; i < len(s); i++ {
		c := rune(s[i])
		switch {
		case quote == '\'':
			if c == '\'' {
				quote = 0
			} else {
				cur.WriteRune(c)
			}
		case quote == '"':
			switch {
			case c == '"':
				quote = 0
			case c == '\\' && i+1 < len(s) && strings.ContainsRune(`"\$`, rune(s[i+1])):
				i++
				cur.WriteByte(s[i])
			default:
				cur.WriteRune(c)
			}
		case c == '\'' || c == '"':
			quote, inWord = c, true
		case c == '\\' && i+1 < len(s):
			i++
			cur.WriteByte(s[i])
			inWord = true
		case c == ' ' || c == '\t':
			if inWord {
				words = append(words, cur.String())
				cur.Reset()
				inWord = false
			}
		default:
			cur.WriteRune(c)
			inWord = true
		}
	}
	if quote != 0 {
		return nil, fmt.Errorf("unterminated %c quote in %q", quote, s)
	}
	if inWord {
		words = append(words, cur.String())
	}
	return words, nil
}
