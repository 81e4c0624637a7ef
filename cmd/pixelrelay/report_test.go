package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func reportFixture(name string) string {
	return filepath.Join("..", "..", "testdata", "report", name)
}

func TestReportCommand(t *testing.T) {
	out := filepath.Join(t.TempDir(), "report.html")
	code, _, stderr := pxInvoke(t, nil, "report", "--html", out, reportFixture("audit.jsonl"), reportFixture("junk.jsonl"))
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.Contains(stderr, "wrote "+out+": 16 audit records from 2 files; 4 lines skipped") {
		t.Errorf("closing line: %q", stderr)
	}
	if !strings.Contains(stderr, "hash chain broken in "+reportFixture("junk.jsonl")) {
		t.Errorf("the closing line does not name the file whose chain is broken: %q", stderr)
	}
	page, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "Open-tracking audit report", "81.2%", "Mailchimp", "pixelrelay " + version} {
		if !strings.Contains(string(page), want) {
			t.Errorf("the report does not show %q", want)
		}
	}
	if st, _ := os.Stat(out); st.Mode().Perm() != 0o644 {
		t.Errorf("report mode %v, want 0644", st.Mode().Perm())
	}
	leftovers, _ := filepath.Glob(filepath.Join(filepath.Dir(out), ".report.html.*"))
	if len(leftovers) > 0 {
		t.Errorf("temporary files left behind: %v", leftovers)
	}
}

func TestReportStdinStdout(t *testing.T) {
	in, err := os.Open(reportFixture("scan.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	code, stdout, stderr := pxInvoke(t, in, "report", "--title", "Inbox audit", "-", "--html", "-")
	if code != 0 {
		t.Fatalf("exit %d: %s", code, stderr)
	}
	if !strings.HasPrefix(stdout, "<!DOCTYPE html>") || !strings.Contains(stdout, "<h1>Inbox audit</h1>") {
		t.Errorf("stdout is not the titled report: %.200q", stdout)
	}
	if !strings.Contains(stderr, "6 scanned messages from 1 file") {
		t.Errorf("stderr lacks the summary: %q", stderr)
	}
}

func TestReportErrors(t *testing.T) {
	dir := t.TempDir()
	log := filepath.Join(dir, "audit.jsonl")
	data, err := os.ReadFile(reportFixture("audit.jsonl"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(log, data, 0o640); err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		args []string
		want string
	}{
		// No output named.
		{[]string{"report", log}, "--html OUT is required"},
		// No input named.
		{[]string{"report", "--html", filepath.Join(dir, "r.html")}, "no AUDIT_LOG given"},
		// A log that is not there: nothing is written.
		{[]string{"report", "--html", filepath.Join(dir, "r.html"), filepath.Join(dir, "missing.jsonl")}, "missing.jsonl: no such file"},
		// A directory.
		{[]string{"report", "--html", filepath.Join(dir, "r.html"), dir}, "is a directory"},
		// The report would overwrite the audit log.
		{[]string{"report", "--html", log, log}, "would overwrite the audit log"},
		// An output folder that does not exist.
		{[]string{"report", "--html", filepath.Join(dir, "no", "r.html"), log}, "cannot write the report"},
		{[]string{"report", "--top", "0", "--html", filepath.Join(dir, "r.html"), log}, "--top must be at least 1"},
	}
	for _, tc := range cases {
		code, _, stderr := pxInvoke(t, nil, tc.args...)
		if code != 1 || !strings.Contains(stderr, tc.want) {
			t.Errorf("%v: exit %d, stderr %q; want exit 1 saying %q", tc.args, code, stderr, tc.want)
		}
	}
	if _, err := os.Stat(filepath.Join(dir, "r.html")); err == nil {
		t.Error("a failed run left a report behind")
	}
	if got, _ := os.ReadFile(log); string(got) != string(data) {
		t.Error("the audit log was changed")
	}
}
