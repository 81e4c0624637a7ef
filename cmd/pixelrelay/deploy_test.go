package main

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"regexp"
	"strings"
	"testing"

	"go.yaml.in/yaml/v3"

	"github.com/pixelrelay/pixelrelay/relay"
)

const (
	exampleConfigPath = "../../deploy/pixelrelay.example.yaml"
	systemdUnitPath   = "../../deploy/systemd/pixelrelay.service"
)

// yamlKeys lists every yaml key of a struct type, nested ones as
// "parent.child", so that a key added to relay.Config later is found here
// without anyone updating this test.
func yamlKeys(t reflect.Type, prefix string) []string {
	var keys []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name := strings.Split(f.Tag.Get("yaml"), ",")[0]
		if name == "" || name == "-" || !f.IsExported() {
			continue
		}
		keys = append(keys, prefix+name)
		ft := f.Type
		if ft.Kind() == reflect.Slice {
			ft = ft.Elem()
		}
		if ft.Kind() == reflect.Struct && ft != durationType {
			keys = append(keys, yamlKeys(ft, prefix+name+".")...)
		}
	}
	return keys
}

// TestExampleConfig: the example configuration loads through serve's own
// loader, documents every key of relay.Config, and its values are the
// defaults it claims to show.
func TestExampleConfig(t *testing.T) {
	data, err := os.ReadFile(exampleConfigPath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	lines := strings.Split(text, "\n")

	// Every key appears, set or commented out, and each top-level key sits
	// in a block that carries a comment saying what it does.
	for _, key := range yamlKeys(reflect.TypeOf(relay.Config{}), "") {
		parts := strings.Split(key, ".")
		leaf := parts[len(parts)-1]
		if len(parts) > 1 {
			if !regexp.MustCompile(`(?m)^#?\s+-?\s*` + regexp.QuoteMeta(leaf) + `:`).MatchString(text) {
				t.Errorf("%s: the nested key %q is not shown in %s", key, leaf, exampleConfigPath)
			}
			continue
		}
		at := -1
		for i, l := range lines {
			if strings.HasPrefix(l, key+":") || strings.HasPrefix(l, "# "+key+":") {
				at = i
				break
			}
		}
		if at < 0 {
			t.Errorf("%s is a key of relay.Config but %s does not list it; document it with its default", key, exampleConfigPath)
			continue
		}
		documented := false
		for i := at - 1; i >= 0 && strings.TrimSpace(lines[i]) != ""; i-- {
			if strings.HasPrefix(lines[i], "# ") && !strings.HasPrefix(lines[i], "# ---") {
				documented = true
			}
		}
		if !documented {
			t.Errorf("%s: no comment above it in %s says what it does", key, exampleConfigPath)
		}
	}

	// Through the same loader serve uses, with no environment.
	l := &configLoader{getenv: func(string) string { return "" }, configPath: exampleConfigPath}
	cfg, _, err := l.load()
	if err != nil {
		t.Fatalf("%s does not load: %v", exampleConfigPath, err)
	}
	// "Every key is listed with its default value": hold it to that.
	def := relay.DefaultConfig()
	cv, dv := reflect.ValueOf(cfg), reflect.ValueOf(def)
	for i := 0; i < cv.NumField(); i++ {
		name := strings.Split(cv.Type().Field(i).Tag.Get("yaml"), ",")[0]
		a, b := cv.Field(i), dv.Field(i)
		if emptyish(a) && emptyish(b) {
			continue
		}
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			t.Errorf("%s: the example sets %v, but the default is %v", name, a.Interface(), b.Interface())
		}
	}

	// The commented examples ("Example:" followed by an indented block)
	// are valid keys too.
	for _, block := range commentedExamples(lines) {
		var c relay.Config
		dec := yaml.NewDecoder(strings.NewReader(block))
		dec.KnownFields(true)
		if err := dec.Decode(&c); err != nil {
			t.Errorf("the commented example does not parse as configuration: %v\n%s", err, block)
		}
	}
}

// emptyish treats nil and empty slices and maps (and structs of them)
// alike: `purposes: []` in YAML is the nil default.
func emptyish(v reflect.Value) bool {
	switch v.Kind() {
	case reflect.Slice, reflect.Map:
		return v.Len() == 0
	case reflect.Struct:
		for i := 0; i < v.NumField(); i++ {
			if !emptyish(v.Field(i)) {
				return false
			}
		}
		return true
	}
	return v.IsZero()
}

// commentedExamples returns each "#   key: …" block that follows a comment
// line ending in "Example:", uncommented.
func commentedExamples(lines []string) []string {
	var blocks []string
	for i := 0; i < len(lines); i++ {
		if !strings.HasSuffix(strings.TrimSpace(lines[i]), "Example:") {
			continue
		}
		var b strings.Builder
		for i++; i < len(lines) && strings.HasPrefix(lines[i], "#   "); i++ {
			b.WriteString(strings.TrimPrefix(lines[i], "#   ") + "\n")
		}
		if b.Len() > 0 {
			blocks = append(blocks, b.String())
		}
	}
	return blocks
}

// TestSystemdUnit checks the unit's hardening and its fit with the
// configuration, then has systemd-analyze verify it. verify needs no
// running systemd, so CI (.ci/run installs systemd) requires it.
func TestSystemdUnit(t *testing.T) {
	data, err := os.ReadFile(systemdUnitPath)
	if err != nil {
		t.Fatal(err)
	}
	unit := map[string][]string{} // key -> values, in order
	for _, line := range strings.Split(string(data), "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") || strings.HasPrefix(line, "[") {
			continue
		}
		k, v, _ := strings.Cut(line, "=")
		unit[k] = append(unit[k], v)
	}
	has := func(k, v string) bool {
		for _, got := range unit[k] {
			if got == v {
				return true
			}
		}
		return false
	}
	want := []struct{ key, value string }{
		{"Type", "simple"},
		{"DynamicUser", "yes"},
		{"StateDirectory", "pixelrelay"},
		{"NoNewPrivileges", "yes"},
		{"ProtectSystem", "strict"},
		{"ProtectHome", "yes"},
		{"PrivateTmp", "yes"},
		{"AmbientCapabilities", "CAP_NET_BIND_SERVICE"},
		{"RestrictAddressFamilies", "AF_INET AF_INET6 AF_UNIX"},
		{"SystemCallFilter", "@system-service"},
		{"ExecReload", "/bin/kill -HUP $MAINPID"},
	}
	for _, w := range want {
		if !has(w.key, w.value) {
			t.Errorf("the unit lacks %s=%s (has %q)", w.key, w.value, unit[w.key])
		}
	}
	// The state the service writes lives in its StateDirectory, the only
	// place ProtectSystem=strict leaves writable.
	known := map[string]bool{}
	for _, k := range configKeys() {
		known[envName(k.name)] = true
	}
	for _, e := range unit["Environment"] {
		k, v, _ := strings.Cut(e, "=")
		if !known[k] && k != "GODEBUG" { // GODEBUG: TestGODEBUGAgrees
			t.Errorf("Environment=%s: not a configuration variable", e)
		}
		if (k == "PIXELRELAY_DB" || k == "PIXELRELAY_AUDIT_LOG" || k == "PIXELRELAY_OUTBOX") && !strings.HasPrefix(v, "/var/lib/pixelrelay/") {
			t.Errorf("Environment=%s: outside the state directory, where the service cannot write", e)
		}
	}
	// TimeoutStopSec leaves room for the drain.
	if def := relay.DefaultConfig().DrainTimeout.Seconds(); !has("TimeoutStopSec", "45s") || def >= 45 {
		t.Errorf("TimeoutStopSec %q must exceed drain_timeout (%gs)", unit["TimeoutStopSec"], def)
	}

	analyze := needTool(t, "systemd-analyze", "apt-get install -y systemd")
	// verify checks that ExecStart's binary exists: point it at one that
	// does, in a copy named like the real unit.
	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	copyPath := filepath.Join(dir, "pixelrelay.service")
	if err := os.WriteFile(copyPath, bytes.ReplaceAll(data, []byte("/usr/local/bin/pixelrelay"), []byte(self)), 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(analyze, "verify", copyPath).CombinedOutput()
	// verify exits 0 on an unknown key and only says so: any word about
	// the unit is a finding.
	if err != nil || strings.Contains(string(out), "pixelrelay.service") {
		t.Errorf("systemd-analyze verify: %v\n%s", err, out)
	}
}

// TestGODEBUGAgrees: the systemd unit and the Dockerfile tune Go's
// scheduler monitor the same way (see the unit's comment), and
// bench/postfix/run.sh measures with what the unit sets.
func TestGODEBUGAgrees(t *testing.T) {
	unit, err := os.ReadFile(systemdUnitPath)
	if err != nil {
		t.Fatal(err)
	}
	m := regexp.MustCompile(`(?m)^Environment=GODEBUG=(\S+)$`).FindSubmatch(unit)
	if m == nil {
		t.Fatalf("%s sets no GODEBUG", systemdUnitPath)
	}
	want := string(m[1])
	if !strings.Contains(want, "schedtrace=2147483647") {
		t.Errorf("%s: GODEBUG=%s, want schedtrace=2147483647 (the largest interval Go accepts)", systemdUnitPath, want)
	}
	if got := parseDockerfile(t, dockerfilePath).stages[1].env()["GODEBUG"]; got != want {
		t.Errorf("Dockerfile: GODEBUG=%q, the systemd unit has %q", got, want)
	}
	script, err := os.ReadFile("../../bench/postfix/run.sh")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(script, []byte("Environment=GODEBUG=")) {
		t.Error("bench/postfix/run.sh no longer takes GODEBUG from the systemd unit")
	}
}
