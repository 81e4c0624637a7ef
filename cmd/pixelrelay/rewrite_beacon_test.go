package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
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
		{"--config", filepath.Join(t.TempDir(), "nonexistent.yaml")},
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

// runEnv is runIn with environment variables.
func runEnv(t *testing.T, vars map[string]string, stdin []byte, args ...string) (int, []byte, string) {
	t.Helper()
	var out, errb bytes.Buffer
	env := &cmdEnv{stdin: bytes.NewReader(stdin), stdout: &out, stderr: &errb, getenv: func(k string) string { return vars[k] }}
	code := dispatch(env, args)
	return code, out.Bytes(), errb.String()
}

// beaconCampaigns returns the campaigns beacon stats lists, with their
// recipient counts.
func beaconCampaigns(t *testing.T, db string) map[string]int {
	t.Helper()
	code, out, errs := runIn(t, nil, "beacon", "stats", "--json", "--db", db)
	if code != 0 {
		t.Fatalf("beacon stats: exit %d: %s", code, errs)
	}
	var rows []struct {
		Campaign   string
		Recipients int
	}
	if err := json.Unmarshal(out, &rows); err != nil {
		t.Fatalf("beacon stats: %v: %s", err, out)
	}
	got := map[string]int{}
	for _, r := range rows {
		got[r.Campaign] += r.Recipients
	}
	return got
}

// Without a campaign header the campaign is the sender's domain, as in
// serve: the envelope sender given with --sender (Postfix's ${sender}),
// else the From address; never one "null-sender" campaign for everyone.
func TestRewriteBeaconCampaignFallsBackToSender(t *testing.T) {
	msg := newsletterWithPixel(t)
	noList := bytes.Replace(msg, []byte("List-Id: Acme News <news.acme.example>\n"), nil, 1)
	if bytes.Equal(noList, msg) || bytes.Contains(noList, []byte("List-Id")) {
		t.Fatal("could not remove the List-Id header from the newsletter")
	}
	db := filepath.Join(t.TempDir(), "pixelrelay.db")
	args := []string{"rewrite", "--action", "beacon", "--beacon-base", "https://beacon.example.com", "--db", db, "--recipient", "a@example.org"}
	for _, extra := range [][]string{
		{"--sender", "bounces+123@mail.Shop.example"},
		{},               // From: Acme News <news@acme.example>
		{"--sender", ""}, // the null sender, as serve names it
	} {
		if code, _, errs := runIn(t, noList, append(append([]string{}, args...), extra...)...); code != 0 {
			t.Fatalf("%v: exit %d: %s", extra, code, errs)
		}
	}
	// A campaign header still wins over the sender.
	if code, _, errs := runIn(t, msg, append(args, "--sender", "x@other.example")...); code != 0 {
		t.Fatalf("with List-Id: exit %d: %s", code, errs)
	}
	want := map[string]int{"mail.shop.example": 1, "acme.example": 1, "null-sender": 1, "Acme News <news.acme.example>": 1}
	if got := beaconCampaigns(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("campaigns %v, want %v", got, want)
	}
}

// The filter reads the campaign headers and the beacon base the way serve
// does: flag, then PIXELRELAY_* variable, then the --config file.
func TestRewriteBeaconSettingsFromConfig(t *testing.T) {
	msg := bytes.Replace(newsletterWithPixel(t), []byte("List-Id:"), []byte("X-Acme-Campaign: autumn-2026\nList-Id:"), 1)
	dir := t.TempDir()
	cfg := filepath.Join(dir, "pixelrelay.yaml")
	if err := os.WriteFile(cfg, []byte("listen: [\"127.0.0.1:2525\"]\nbeacon_base: https://beacon.example.com\ncampaign_headers: [X-Acme-Campaign]\nbeacon_min_batch: 1\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	db := filepath.Join(dir, "pixelrelay.db")
	beaconRE := regexp.MustCompile(`https://beacon\.example\.com/b/[A-Za-z0-9_-]+\.gif`)
	code, out, errs := runIn(t, msg, "rewrite", "--action", "beacon", "--config", cfg, "--db", db, "--recipient", "a@example.org")
	if code != 0 || !beaconRE.Match(qpDecoded(out)) {
		t.Fatalf("settings from --config: exit %d, beacon in output %v: %s", code, beaconRE.Match(qpDecoded(out)), errs)
	}
	vars := map[string]string{"PIXELRELAY_CONFIG": cfg, "PIXELRELAY_CAMPAIGN_HEADERS": "List-Id, X-Acme-Campaign"}
	if code, _, errs := runEnv(t, vars, msg, "rewrite", "--action", "beacon", "--db", db, "--recipient", "b@example.org"); code != 0 {
		t.Fatalf("settings from the environment: exit %d: %s", code, errs)
	}
	want := map[string]int{"autumn-2026": 1, "Acme News <news.acme.example>": 1}
	if got := beaconCampaigns(t, db); fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("campaigns %v, want %v", got, want)
	}
	if code, _, errs := runIn(t, msg, "rewrite", "--config", filepath.Join(dir, "missing.yaml")); code != 1 || !strings.Contains(errs, "missing.yaml") {
		t.Errorf("a missing config file: exit %d, %q; want 1 and its name", code, errs)
	}
}
