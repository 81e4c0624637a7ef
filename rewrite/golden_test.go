package rewrite

import (
	"bytes"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/rewrite")

const (
	goldenDir       = "../testdata/rewrite"
	goldenRecipient = "reader@example.fr"
	// The '&' checks that the beacon URL is HTML-escaped.
	goldenBeacon = "https://beacon.pixelrelay.test/b/AbCd&Ef.gif"
	goldenOwn    = "https://beacon.pixelrelay.test/b/"
)

// goldenDecision picks the decision for a fixture from its name.
func goldenDecision(name string) Decision {
	d := Decision{Action: Strip, Recipients: []string{goldenRecipient}}
	if strings.HasPrefix(name, "beacon-") {
		d.Action, d.BeaconURL = Beacon, goldenBeacon
	}
	return d
}

// formatReport renders a Report as the text kept in NAME.findings.
func formatReport(r Report) string {
	var b strings.Builder
	fmt.Fprintf(&b, "message-id: %s\nchanged: %v\n", r.MessageID, r.Changed)
	for _, f := range r.Trackers {
		v := f.Vendor
		if v == "" {
			v = "-"
		}
		fmt.Fprintf(&b, "tracker: part=%s vector=%s action=%s vendor=%q reasons=%s host=%s url=%s\n",
			f.Part, f.Vector, f.Action, v, strings.Join(f.Reasons, ","), f.Host, f.URL)
	}
	for _, p := range r.Problems {
		fmt.Fprintf(&b, "problem: %s\n", p)
	}
	for _, p := range r.DroppedParts {
		fmt.Fprintf(&b, "dropped: %s\n", p)
	}
	return b.String()
}

// rewriteBytes rewrites in twice, streamed and in place (InMemory), and
// fails unless both give the same bytes and the same report.
func rewriteBytes(t testing.TB, e *Engine, in []byte, d Decision) ([]byte, Report) {
	t.Helper()
	var out, out2 bytes.Buffer
	rep, err := e.Rewrite(&out, bytes.NewReader(in), d)
	if err != nil {
		t.Fatalf("Rewrite: %v", err)
	}
	src := NewInMemory(in)
	rep2, err := e.Rewrite(&out2, src, d)
	if err != nil {
		t.Fatalf("Rewrite in place: %v", err)
	}
	if !bytes.Equal(out.Bytes(), out2.Bytes()) {
		t.Fatalf("in place, the output differs from the streamed one:\n%s", firstDiff(out.Bytes(), out2.Bytes()))
	}
	if !reflect.DeepEqual(rep, rep2) {
		t.Fatalf("in place, the report differs from the streamed one:\n%s\nwant\n%s", formatReport(rep2), formatReport(rep))
	}
	if n, _ := src.Read(make([]byte, 1)); n != 0 {
		t.Fatal("Rewrite left part of an InMemory source unread")
	}
	return out.Bytes(), rep
}

// TestGolden rewrites every fixture in testdata/rewrite and compares the
// output bytes with NAME.golden and the report with NAME.findings. Run
// with -update to regenerate them after a deliberate change, then review
// the diff. Each fixture also checks the invariants that hold for every
// message: Keep is byte-identical and finds the same trackers, a second
// pass changes nothing, LF input gives LF output, and Changed is true
// exactly when the bytes differ.
func TestGolden(t *testing.T) {
	files, err := filepath.Glob(filepath.Join(goldenDir, "*.eml"))
	if err != nil || len(files) == 0 {
		t.Fatalf("no fixtures in %s: %v", goldenDir, err)
	}
	e, err := New(Options{OwnURLPrefixes: []string{goldenOwn}})
	if err != nil {
		t.Fatal(err)
	}
	for _, path := range files {
		name := strings.TrimSuffix(filepath.Base(path), ".eml")
		t.Run(name, func(t *testing.T) {
			in, err := os.ReadFile(path)
			if err != nil {
				t.Fatal(err)
			}
			d := goldenDecision(name)
			out, rep := rewriteBytes(t, e, in, d)
			findings := formatReport(rep)
			gOut := strings.TrimSuffix(path, ".eml") + ".golden"
			gFind := strings.TrimSuffix(path, ".eml") + ".findings"
			if *update {
				if err := os.WriteFile(gOut, out, 0o644); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(gFind, []byte(findings), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			wantOut, err := os.ReadFile(gOut)
			if err != nil {
				t.Fatalf("%v (run go test ./rewrite -run TestGolden -update)", err)
			}
			wantFind, err := os.ReadFile(gFind)
			if err != nil {
				t.Fatal(err)
			}
			if !bytes.Equal(out, wantOut) {
				t.Errorf("output differs from %s:\n%s", gOut, firstDiff(wantOut, out))
			}
			if findings != string(wantFind) {
				t.Errorf("report differs from %s:\ngot:\n%s\nwant:\n%s", gFind, findings, wantFind)
			}
			if rep.Changed != !bytes.Equal(in, out) {
				t.Errorf("Changed = %v, but output equal to input is %v", rep.Changed, bytes.Equal(in, out))
			}
			again, rep2 := rewriteBytes(t, e, out, d)
			if !bytes.Equal(again, out) {
				t.Errorf("not idempotent:\n%s", firstDiff(out, again))
			}
			if rep2.Changed {
				t.Errorf("second pass reports Changed")
			}
			kept, krep := rewriteBytes(t, e, in, Decision{Action: Keep, Recipients: d.Recipients})
			if !bytes.Equal(kept, in) {
				t.Errorf("Keep changed the message:\n%s", firstDiff(in, kept))
			}
			if len(krep.Trackers) != len(rep.Trackers) {
				t.Errorf("Keep found %d trackers, Strip %d", len(krep.Trackers), len(rep.Trackers))
			}
			for i := range krep.Trackers {
				if i < len(rep.Trackers) && krep.Trackers[i].URL != rep.Trackers[i].URL {
					t.Errorf("tracker %d: Keep found %s, Strip %s", i, krep.Trackers[i].URL, rep.Trackers[i].URL)
				}
				if krep.Trackers[i].Action != Keep {
					t.Errorf("Keep reports action %s", krep.Trackers[i].Action)
				}
			}
			if !bytes.Contains(in, []byte("\r")) && bytes.Contains(out, []byte("\r")) {
				t.Errorf("LF-only input gave CR in the output")
			}
		})
	}
}

// firstDiff shows where two byte strings first differ, with context.
func firstDiff(want, got []byte) string {
	i := 0
	for i < len(want) && i < len(got) && want[i] == got[i] {
		i++
	}
	lo := max(i-120, 0)
	return fmt.Sprintf("at byte %d (len want %d, got %d)\nwant: %q\ngot:  %q", i, len(want), len(got),
		want[lo:min(i+120, len(want))], got[lo:min(i+120, len(got))])
}
