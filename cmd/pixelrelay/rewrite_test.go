package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pxInvoke runs a pixelrelay command in-process with the given stdin.
func pxInvoke(t *testing.T, stdin io.Reader, args ...string) (code int, stdout, stderr string) {
	t.Helper()
	var out, errb bytes.Buffer
	if stdin == nil {
		stdin = strings.NewReader("")
	}
	env := &cmdEnv{stdin: stdin, stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code = dispatch(env, args)
	return code, out.String(), errb.String()
}

func fixture(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("..", "..", "testdata", "rewrite", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestRewriteCommand checks the filter's output bytes against the golden
// files the rewrite package pins, and the report it writes.
func TestRewriteCommand(t *testing.T) {
	in := fixture(t, "esp-mailchimp.eml")
	code, out, stderr := pxInvoke(t, bytes.NewReader(in), "rewrite", "--recipient", "reader@example.fr", "--report", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if want := fixture(t, "esp-mailchimp.golden"); out != string(want) {
		t.Fatalf("output differs from the golden file")
	}
	var rec struct {
		Source    string `json:"source"`
		MessageID string `json:"message_id"`
		Trackers  []struct {
			URL, Vendor, Vector, Part, Action string
			Reasons                           []string
		} `json:"trackers"`
		Changed      bool   `json:"changed"`
		RulesVersion string `json:"rules_version"`
	}
	if err := json.Unmarshal([]byte(stderr), &rec); err != nil {
		t.Fatalf("report is not JSON: %v\n%s", err, stderr)
	}
	if rec.Source != "-" || rec.MessageID != "<fixture@example.org>" || len(rec.Trackers) != 1 || !rec.Changed || rec.RulesVersion == "" {
		t.Fatalf("report: %+v", rec)
	}
	if f := rec.Trackers[0]; f.Vendor != "Mailchimp" || f.Vector != "img" || f.Part != "1" || f.Action != "strip" || f.Reasons[0] != "vendor" {
		t.Fatalf("finding: %+v", f)
	}

	// --action keep is a dry run: byte-identical output, report to a file.
	rep := filepath.Join(t.TempDir(), "report.json")
	code, out, stderr = pxInvoke(t, bytes.NewReader(in), "rewrite", "--action=keep", "--report", rep)
	if code != 0 || out != string(in) {
		t.Fatalf("keep: exit %d, identical %v: %s", code, out == string(in), stderr)
	}
	if b, err := os.ReadFile(rep); err != nil || !bytes.Contains(b, []byte(`"action":"keep"`)) {
		t.Fatalf("report file: %s %v", b, err)
	}

	// LF in, LF out.
	lf := fixture(t, "enc-lf-only.eml")
	code, out, _ = pxInvoke(t, bytes.NewReader(lf), "rewrite")
	if code != 0 || strings.Contains(out, "\r") || out != string(fixture(t, "enc-lf-only.golden")) {
		t.Fatalf("LF input: exit %d, output %q", code, out)
	}
}

type brokenReader struct{}

func (brokenReader) Read([]byte) (int, error) { return 0, errors.New("input/output error") }

func TestRewriteCommandExitCodes(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "bad.rules")
	os.WriteFile(bad, []byte("version 1\ntrack onlyhost\n"), 0o644)
	good := filepath.Join(dir, "good.rules")
	os.WriteFile(good, []byte("track img.shop.example * Shop\n"), 0o644)
	msg := string(fixture(t, "pit-spacers.eml"))
	tests := []struct {
		name   string
		stdin  io.Reader
		args   []string
		code   int
		stderr string // substring
	}{
		// A message without trackers is done, and identical (checked below).
		{"clean", strings.NewReader(msg), []string{"rewrite"}, 0, ""},
		// Malformed MIME is passed through: still exit 0.
		{"malformed", strings.NewReader("Content-Type: multipart/mixed\r\n\r\nno boundary"), []string{"rewrite"}, 0, ""},
		{"unknown flag", nil, []string{"rewrite", "--no-such-flag"}, 1, "no-such-flag"},
		{"positional", nil, []string{"rewrite", "file.eml"}, 1, "read from stdin"},
		{"beacon needs its public base", nil, []string{"rewrite", "--action", "beacon"}, 1, "--beacon-base"},
		// Pipe mode must never fail a delivery: no store means strip.
		{"auto without a store strips", strings.NewReader(msg), []string{"rewrite", "--action", "auto", "--recipient", "a@b.c", "--db", filepath.Join(dir, "none.db")}, 0, "fail closed"},
		{"auto needs one recipient", nil, []string{"rewrite", "--action", "auto"}, 1, "exactly one --recipient"},
		{"bad action", nil, []string{"rewrite", "--action", "zap"}, 1, "unknown --action"},
		{"missing rules", nil, []string{"rewrite", "--rules", filepath.Join(dir, "nope.rules")}, 1, "nope.rules"},
		{"bad rules", nil, []string{"rewrite", "--rules", bad}, 1, "bad.rules:2:"},
		{"good rules", strings.NewReader(msg), []string{"rewrite", "--rules", good}, 0, ""},
		{"unreadable input", brokenReader{}, []string{"rewrite"}, 2, "input/output error"},
		{"unreadable input for a beacon", brokenReader{}, []string{"rewrite", "--action", "beacon", "--beacon-base", "https://b.example", "--db", filepath.Join(dir, "b.db"), "--report", filepath.Join(dir, "r.json")}, 2, "input/output error"},
		{"help", nil, []string{"rewrite", "--help"}, 0, "usage: pixelrelay rewrite"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, out, stderr := pxInvoke(t, tt.stdin, tt.args...)
			if code != tt.code || !strings.Contains(stderr, tt.stderr) {
				t.Fatalf("exit %d, stderr %q; want %d and %q", code, stderr, tt.code, tt.stderr)
			}
			if tt.name == "clean" && out != msg {
				t.Fatal("a message without trackers changed")
			}
		})
	}
}
