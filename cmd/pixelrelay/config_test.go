package main

import (
	"bytes"
	"flag"
	"io"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"

	"github.com/pixelrelay/pixelrelay/relay"
)

// loadServeConfig runs serve's loader in-process: yaml (if not empty) as
// the --config file, env as the environment, args as the command line.
func loadServeConfig(t *testing.T, yaml string, env map[string]string, args ...string) (relay.Config, []override, error) {
	t.Helper()
	l := &configLoader{getenv: func(k string) string { return env[k] }}
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	l.registerServeFlags(fs)
	if yaml != "" {
		path := filepath.Join(t.TempDir(), "pixelrelay.yaml")
		if err := os.WriteFile(path, []byte(yaml), 0o600); err != nil {
			t.Fatal(err)
		}
		args = append([]string{"--config", path}, args...)
	}
	if _, err := parseInterspersed(fs, args); err != nil {
		t.Fatalf("serve %v: %v", args, err)
	}
	return l.load()
}

// configValue renders a key of cfg as the startup log does.
func configValue(t *testing.T, cfg relay.Config, key string) string {
	t.Helper()
	for _, k := range configKeys() {
		if k.name == key {
			return formatValue(reflect.ValueOf(cfg).FieldByIndex(k.index))
		}
	}
	t.Fatalf("no config key %q", key)
	return ""
}

// CONTRACTS.md: flag, then PIXELRELAY_<KEY>, then the YAML file, then the
// default; checked key by key, for each kind of value.
func TestConfigPrecedence(t *testing.T) {
	cases := []struct {
		key                 string
		file                string // YAML value
		env                 string
		flags               []string // each given as --key VALUE
		fromFile, fromEnv   string   // as configValue renders them
		fromFlag, byDefault string
	}{
		{"hostname", "file.example", "env.example", []string{"flag.example"}, "file.example", "env.example", "flag.example", relay.DefaultConfig().Hostname},
		{"listen", "[127.0.0.1:2601, 127.0.0.1:2602]", "127.0.0.1:2603,127.0.0.1:2604", []string{"127.0.0.1:2605", "127.0.0.1:2606"},
			"127.0.0.1:2601,127.0.0.1:2602", "127.0.0.1:2603,127.0.0.1:2604", "127.0.0.1:2605,127.0.0.1:2606", "127.0.0.1:2525"},
		{"allow_net", "[10.1.0.0/16]", "10.2.0.0/16", []string{"10.3.0.0/16"}, "10.1.0.0/16", "10.2.0.0/16", "10.3.0.0/16", "127.0.0.0/8,::1/128"},
		{"dry_run", "true", "false", []string{"true"}, "true", "false", "true", "false"},
		{"max_message_bytes", "1048576", "2M", []string{"3M"}, "1048576", "2097152", "3145728", configValue(t, relay.DefaultConfig(), "max_message_bytes")},
		{"drain_timeout", "10s", "20s", []string{"30s"}, "10s", "20s", "30s", configValue(t, relay.DefaultConfig(), "drain_timeout")},
		{"log_level", "debug", "warn", []string{"error"}, "debug", "warn", "error", configValue(t, relay.DefaultConfig(), "log_level")},
	}
	for _, c := range cases {
		t.Run(c.key, func(t *testing.T) {
			yaml := c.key + ": " + c.file + "\n"
			env := map[string]string{envName(c.key): c.env}
			var args []string
			for _, v := range c.flags {
				args = append(args, "--"+flagName(c.key), v)
			}
			steps := []struct {
				what string
				yaml string
				env  map[string]string
				args []string
				want string
			}{
				{"default", "", nil, nil, c.byDefault},
				{"file", yaml, nil, nil, c.fromFile},
				{"environment over file", yaml, env, nil, c.fromEnv},
				{"flag over environment and file", yaml, env, args, c.fromFlag},
				{"flag over file", yaml, nil, args, c.fromFlag},
			}
			for _, s := range steps {
				cfg, _, err := loadServeConfig(t, s.yaml, s.env, s.args...)
				if err != nil {
					t.Fatalf("%s: %v", s.what, err)
				}
				if got := configValue(t, cfg, c.key); got != s.want {
					t.Errorf("%s: %s = %q, want %q", s.what, c.key, got, s.want)
				}
			}
		})
	}
	// PIXELRELAY_CONFIG names the file when --config does not.
	path := filepath.Join(t.TempDir(), "env.yaml")
	os.WriteFile(path, []byte("hostname: from-env-file.example\n"), 0o600)
	cfg, _, err := loadServeConfig(t, "", map[string]string{"PIXELRELAY_CONFIG": path})
	if err != nil || cfg.Hostname != "from-env-file.example" {
		t.Errorf("PIXELRELAY_CONFIG: hostname %q, %v", cfg.Hostname, err)
	}
}

// An invalid configuration prints every problem at once, each naming its
// key and where it came from, and exits 1.
func TestServeInvalidConfigReportsEveryProblem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("max_recipients: 0\nmax_procs: -1\n"), 0o600)
	var out bytes.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(k string) string {
		return map[string]string{"PIXELRELAY_DRY_RUN": "maybe"}[k]
	}}
	code := dispatch(env, []string{"serve", "--config", path, "--drain-timeout", "soon", "--spool-memory", "lots", "--max-message-bytes", "17179869184G"})
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, &out)
	}
	for _, want := range []string{
		"pixelrelay serve: invalid configuration:",
		`  - dry_run (from PIXELRELAY_DRY_RUN): "maybe" is not true or false`,
		`  - drain_timeout (from --drain-timeout): "soon" is not a duration`,
		`  - spool_memory (from --spool-memory): "lots" is not a number`,
		// 2^64 bytes: once wrapped around to 0 and accepted.
		`  - max_message_bytes (from --max-message-bytes): "17179869184G" is too large`,
		"max_recipients",
		"max_procs: must be 0 (every CPU) or more, not -1",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q:\n%s", want, &out)
		}
	}
}

// The environment beating the config file is the documented order, but in a
// container the image sets six variables, so a mounted file's value for one
// of them would do nothing without a word. The loader names every such key.
func TestConfigEnvironmentOverridesAreNamed(t *testing.T) {
	dir := t.TempDir()
	yaml := "allow_net: [10.9.0.0/16]\nhostname: file.example\ndb: " + dir + "/p.db\naudit_log: " + dir + "/audit.jsonl\n"
	env := map[string]string{
		"PIXELRELAY_ALLOW_NET": "127.0.0.0/8,10.0.0.0/8", // differs from the file: named
		"PIXELRELAY_DB":        dir + "/p.db",            // the same value: nothing to say
		"PIXELRELAY_LISTEN":    "0.0.0.0:2525",           // not in the file
		"PIXELRELAY_HOSTNAME":  "env.example",            // a flag decides in the end
		"PIXELRELAY_AUDIT_LOG": dir + "/other.jsonl",     // differs: named
	}
	cfg, overrides, err := loadServeConfig(t, yaml, env, "--hostname", "flag.example")
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, o := range overrides {
		got = append(got, o.key+" "+o.variable)
		if !strings.HasSuffix(o.file, "pixelrelay.yaml") {
			t.Errorf("override %s names the file %q", o.key, o.file)
		}
	}
	if want := "audit_log PIXELRELAY_AUDIT_LOG, allow_net PIXELRELAY_ALLOW_NET"; strings.Join(got, ", ") != want {
		t.Errorf("overrides %q, want %q", strings.Join(got, ", "), want)
	}
	if strings.Join(cfg.AllowNet, ",") != env["PIXELRELAY_ALLOW_NET"] {
		t.Errorf("allow_net = %v: the environment still wins", cfg.AllowNet)
	}
}

// What the operator sees: serve's log names the key, the variable and the
// file, and no value (api_token and upstream can be secrets).
func TestServeWarnsWhenEnvironmentOverridesFile(t *testing.T) {
	conf := filepath.Join(t.TempDir(), "pixelrelay.yaml")
	os.WriteFile(conf, []byte("allow_net: [172.30.0.0/24]\napi_token: file-secret\n"), 0o600)
	s := startServeEnv(t, "", []string{"PIXELRELAY_ALLOW_NET=127.0.0.0/8"}, "--config", conf)
	s.stop()
	log := s.out.String()
	want := `level=WARN msg="the environment overrides the config file for this key; unset the variable to use the file's value" key=allow_net variable=PIXELRELAY_ALLOW_NET config=` + conf
	if !strings.Contains(log, want) {
		t.Errorf("the log lacks %q:\n%s", want, log)
	}
	// api_token is set by the file and by PIXELRELAY_API_TOKEN (the test
	// harness's): named, but neither value is logged.
	if !strings.Contains(log, "key=api_token variable=PIXELRELAY_API_TOKEN") {
		t.Errorf("the api_token override is not named:\n%s", log)
	}
	if strings.Contains(log, "file-secret") || strings.Contains(log, s.token) {
		t.Errorf("the log holds a token:\n%s", log)
	}
}
