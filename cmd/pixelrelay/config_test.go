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
func loadServeConfig(t *testing.T, yaml string, env map[string]string, args ...string) (relay.Config, error) {
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
				cfg, err := loadServeConfig(t, s.yaml, s.env, s.args...)
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
	cfg, err := loadServeConfig(t, "", map[string]string{"PIXELRELAY_CONFIG": path})
	if err != nil || cfg.Hostname != "from-env-file.example" {
		t.Errorf("PIXELRELAY_CONFIG: hostname %q, %v", cfg.Hostname, err)
	}
}

// An invalid configuration prints every problem at once, each naming its
// key and where it came from, and exits 1.
func TestServeInvalidConfigReportsEveryProblem(t *testing.T) {
	path := filepath.Join(t.TempDir(), "bad.yaml")
	os.WriteFile(path, []byte("max_recipients: 0\n"), 0o600)
	var out bytes.Buffer
	env := &cmdEnv{stdin: strings.NewReader(""), stdout: &out, stderr: &out, getenv: func(k string) string {
		return map[string]string{"PIXELRELAY_DRY_RUN": "maybe"}[k]
	}}
	code := dispatch(env, []string{"serve", "--config", path, "--drain-timeout", "soon", "--spool-memory", "lots"})
	if code != 1 {
		t.Fatalf("exit %d, want 1:\n%s", code, &out)
	}
	for _, want := range []string{
		"pixelrelay serve: invalid configuration:",
		`  - dry_run (from PIXELRELAY_DRY_RUN): "maybe" is not true or false`,
		`  - drain_timeout (from --drain-timeout): "soon" is not a duration`,
		`  - spool_memory (from --spool-memory): "lots" is not a number`,
		"max_recipients",
	} {
		if !strings.Contains(out.String(), want) {
			t.Errorf("the output lacks %q:\n%s", want, &out)
		}
	}
}
