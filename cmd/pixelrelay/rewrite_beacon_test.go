package main

import (
	"bytes"
	"encoding/json"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// The filter mints the campaign's beacon once the batch is reached, the
// same URL for every run of the campaign that day, and a second pass keeps
// it (pixelrelay's own beacon is never a tracker).
func TestRewriteActionBeacon(t *testing.T) {
	db := filepath.Join(t.TempDir(), "pixelrelay.db")
	msg := newsletterWithPixel(t)
	args := []string{"rewrite", "--action", "beacon", "--beacon-base", "https://beacon.example.com", "--beacon-min-batch", "2", "--db", db}
	beaconRE := regexp.MustCompile(`https://beacon\.example\.com/b/[A-Za-z0-9_-]+\.gif`)

	// First recipient: below the batch, stripped.
	code, out, errs := runIn(t, msg, append(args, "--recipient", "a@example.org")...)
	if code != 0 || bytes.Contains(qpDecoded(out), []byte(trackerURL)) || beaconRE.Match(qpDecoded(out)) {
		t.Fatalf("below the batch: exit %d, %s", code, errs)
	}
	if !strings.Contains(errs, "minimum batch") {
		t.Errorf("no note that the batch was not reached: %q", errs)
	}
	// Second: the batch is reached; the pixel becomes the campaign beacon.
	code, out, errs = runIn(t, msg, append(args, "--recipient", "b@example.org")...)
	first := beaconRE.Find(qpDecoded(out))
	if code != 0 || first == nil || bytes.Contains(qpDecoded(out), []byte(trackerURL)) {
		t.Fatalf("at the batch: exit %d, beacon %q, %s", code, first, errs)
	}
	code, out, _ = runIn(t, msg, append(args, "--recipient", "c@example.org")...)
	if second := beaconRE.Find(qpDecoded(out)); !bytes.Equal(first, second) {
		t.Errorf("two recipients of one campaign got different beacons: %s, %s", first, second)
	}
	// A second pass keeps pixelrelay's own beacon.
	code, again, _ := runIn(t, out, append(args, "--recipient", "d@example.org")...)
	if code != 0 || !bytes.Equal(again, out) {
		t.Error("a second pass changed a beaconed message")
	}
	if code, _, _ := runIn(t, msg, "rewrite", "--action", "beacon", "--db", db); code != 1 {
		t.Errorf("--action beacon without --beacon-base: exit %d, want 1", code)
	}
}

// A run that fails on its own configuration sends nothing, so it must not
// count its recipient toward the campaign's batch either.
func TestRewriteBeaconCountsOnlyRunsThatRewrite(t *testing.T) {
	db := filepath.Join(t.TempDir(), "pixelrelay.db")
	msg := newsletterWithPixel(t)
	args := []string{"rewrite", "--action", "beacon", "--beacon-base", "https://beacon.example.com", "--campaign", "autumn", "--db", db, "--recipient", "a@example.org"}
	if code, _, errs := runIn(t, msg, args...); code != 0 {
		t.Fatalf("a good run: exit %d: %s", code, errs)
	}
	bad := [][]string{
		{"--rules", filepath.Join(t.TempDir(), "nonexistent.rules")},
		{"--report", filepath.Join(t.TempDir(), "no", "such", "dir", "report.json")},
		{"--rules", filepath.Join(t.TempDir(), "nonexistent.rules")},
	}
	for _, extra := range bad {
		if code, out, _ := runIn(t, msg, append(append([]string{}, args...), extra...)...); code != 1 || len(out) != 0 {
			t.Fatalf("%v: exit %d with %d bytes of output, want 1 and nothing", extra, code, len(out))
		}
	}
	code, out, errs := runIn(t, nil, "beacon", "stats", "--json", "--campaign", "autumn", "--db", db)
	if code != 0 {
		t.Fatalf("beacon stats: exit %d: %s", code, errs)
	}
	var rows []struct{ Recipients int }
	if err := json.Unmarshal(out, &rows); err != nil || len(rows) != 1 || rows[0].Recipients != 1 {
		t.Fatalf("beacon stats: %s (%v); want 1 recipient, from the one good run", out, err)
	}
}
