package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

func TestScanHTMLReport(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "report.html")
	code, stdout, errs := runIn(t, nil, "scan", "--json", "--html", out, "../../testdata/messages")
	if code != 0 {
		t.Fatalf("scan --html: exit %d: %s", code, errs)
	}
	if !strings.Contains(string(stdout), `"trackers"`) {
		t.Error("--json output missing alongside --html")
	}
	page, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	for _, want := range []string{"<svg", "Mailchimp", "messages scanned"} {
		if !strings.Contains(string(page), want) {
			t.Errorf("report lacks %q", want)
		}
	}
	if regexp.MustCompile(`(?i)(src|href)\s*=\s*["']?(https?:)?//`).Match(page) {
		t.Error("the report loads an external resource")
	}
	if strings.Contains(string(page), "list-manage.com/track") {
		t.Error("the report shows a tracker URL")
	}
	// The report may not overwrite one of the scanned files.
	in := filepath.Join(dir, "in.eml")
	os.WriteFile(in, []byte("Subject: x\r\n\r\nhi\r\n"), 0o600)
	if code, _, _ := runIn(t, nil, "scan", "--html", in, in); code != 1 {
		t.Errorf("--html naming an input: exit %d, want 1", code)
	}
}
