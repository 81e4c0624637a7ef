package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// runIn runs the command in-process with stdin and returns code, stdout
// and stderr.
func runIn(t *testing.T, stdin []byte, args ...string) (int, []byte, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: bytes.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(string) string { return "" }}
	code := dispatch(env, args)
	return code, out.Bytes(), errb.String()
}

// newsletterWithPixel reads the test newsletter and makes sure it has the
// tracking pixel the filter tests look for: without it, "the pixel is
// gone" would hold for any output, an empty one included.
func newsletterWithPixel(t *testing.T) []byte {
	t.Helper()
	msg, err := os.ReadFile("../../testdata/messages/newsletter.eml")
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(qpDecoded(msg), []byte(trackerURL)) {
		t.Fatalf("testdata/messages/newsletter.eml no longer holds the pixel %s", trackerURL)
	}
	return msg
}

// Pipe mode: one run per recipient, the action follows that recipient's
// consent, and any lookup failure strips without failing the delivery.
func TestRewriteActionAuto(t *testing.T) {
	db := filepath.Join(t.TempDir(), "pixelrelay.db")
	if code, _, errs := runIn(t, nil, "consent", "grant", "bob@example.com", "--db", db, "--evidence", "form-1", "--text-version", "v1"); code != 0 {
		t.Fatalf("grant: %s", errs)
	}
	msg := newsletterWithPixel(t)

	code, out, errs := runIn(t, msg, "rewrite", "--action", "auto", "--db", db, "--recipient", "bob@example.com")
	if code != 0 || !bytes.Equal(out, msg) {
		t.Errorf("consenting recipient: exit %d, identical=%v, %s", code, bytes.Equal(out, msg), errs)
	}
	code, out, errs = runIn(t, msg, "rewrite", "--action", "auto", "--db", db, "--recipient", "alice@example.fr")
	if code != 0 || bytes.Contains(qpDecoded(out), []byte(trackerURL)) {
		t.Errorf("non-consenting recipient: exit %d, tracker kept=%v, %s", code, bytes.Contains(qpDecoded(out), []byte(trackerURL)), errs)
	}
	code, out, errs = runIn(t, msg, "rewrite", "--action", "auto", "--db", filepath.Join(t.TempDir(), "missing.db"), "--recipient", "bob@example.com")
	if code != 0 || bytes.Contains(qpDecoded(out), []byte(trackerURL)) || !strings.Contains(errs, "fail closed") {
		t.Errorf("unreadable store: exit %d, tracker kept=%v, stderr %q; want a strip and a warning", code, bytes.Contains(qpDecoded(out), []byte(trackerURL)), errs)
	}
	if code, _, _ = runIn(t, msg, "rewrite", "--action", "auto", "--db", db); code != 1 {
		t.Errorf("--action auto without --recipient: exit %d, want 1", code)
	}
}
