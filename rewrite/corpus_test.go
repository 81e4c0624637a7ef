package rewrite

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// corpusDir finds ../shared/corpus beside the repository root. When CI=true
// a missing corpus fails the test: CI must exercise real mail.
func corpusDir(t *testing.T) string {
	t.Helper()
	dir, err := filepath.Abs(filepath.Join("..", "..", "shared", "corpus"))
	if err == nil {
		if st, err := os.Stat(dir); err == nil && st.IsDir() {
			return dir
		}
	}
	if os.Getenv("CI") == "true" {
		t.Fatalf("the shared corpus is missing at %s; CI needs it", dir)
	}
	t.Skipf("shared corpus not found at %s", dir)
	return ""
}

// corpusMessage loads a corpus file as rewrite sees it: bare HTML gets a
// text/html header, and an mbox postmark line is kept (the walker skips it).
func corpusMessage(t *testing.T, path string) []byte {
	t.Helper()
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if strings.HasSuffix(path, ".html") {
		return append([]byte("Content-Type: text/html; charset=utf-8\r\n\r\n"), data...)
	}
	return data
}

// TestCorpus rewrites every real message in the shared corpus: nothing
// fails, a message without trackers comes out byte-identical, rewriting is
// idempotent, and the known pixels are found and gone.
func TestCorpus(t *testing.T) {
	dir := corpusDir(t)
	e := newEngine(t, Options{})
	known := map[string][]string{ // the pixels listed in the acceptance check rewrite_contract
		"spamscope-mail-parser/tests/mails/mail_test_5": {"https://t2d857ce9.emailsys2a.net/o/136/1071579/1264/0/4531494/9012/b16ba30df6.gif"},
		"postal/sparkpost-marketing-email2.eml": {"https://td.perfect-quotes.com/q/1maAQDPyD3rwe0C16cifFA~~/AAAq-QA~/RgRi42u7PVcFc3BjZXVCCmEAu-YAYS4SbuBSD3RlYW1Ab3JpZW50by51a1gEAAAAAA~~",
			"https://td.perfect-quotes.com/q/dUoNiFL_C9xh7FaMg4YN0w~~/AAAq-QA~/RgRi42u7PlcFc3BjZXVCCmEAu-YAYS4SbuBSD3RlYW1Ab3JpZW50by51a1gEAAAAAA~~"},
		"apache-spamassassin/t/data/spam/badmime.txt": {"http://sexmailnetwork.com/count.cgi?queue_id=1024516018.4603"},
	}
	keep := map[string][]string{ // legitimate resources that must stay
		"postal/sparkpost-marketing-email2.eml":         {"https://cdn.perfect-quotes.com/cdn/17806/percentlogo.png"},
		"apache-spamassassin/t/data/spam/badmime.txt":   {"http://www.harder-please.com/lsu/1/spacer.gif"},
		"spamscope-mail-parser/tests/mails/mail_test_5": {"cid:FWMAIL0d11ff4c87dfeab6cd1051bab808f635"},
	}
	n := 0
	visited := map[string]bool{}
	err := filepath.WalkDir(dir, func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		rel, _ := filepath.Rel(dir, path)
		base := filepath.Base(path)
		if strings.HasPrefix(base, "LICENSE") || strings.HasPrefix(base, "NOTICE") || base == "README.md" || base == "SOURCES.md" || strings.HasSuffix(base, ".mjml") {
			return nil
		}
		n++
		visited[filepath.ToSlash(rel)] = true
		in := corpusMessage(t, path)
		out, rep := rewriteBytes(t, e, in, Decision{Action: Strip, Recipients: []string{"reader@example.fr"}})
		if len(rep.Trackers) == 0 && !bytes.Equal(in, out) {
			t.Errorf("%s: no trackers, but the output differs:\n%s", rel, firstDiff(in, out))
		}
		again, _ := rewriteBytes(t, e, out, Decision{Action: Strip, Recipients: []string{"reader@example.fr"}})
		if !bytes.Equal(again, out) {
			t.Errorf("%s: not idempotent:\n%s", rel, firstDiff(out, again))
		}
		_, after := rewriteBytes(t, e, out, Decision{Action: Keep})
		for _, u := range known[filepath.ToSlash(rel)] {
			found := false
			for _, f := range rep.Trackers {
				found = found || f.URL == u
			}
			if !found {
				t.Errorf("%s: known pixel %s not found; found %+v", rel, u, rep.Trackers)
			}
			for _, f := range after.Trackers {
				if f.URL == u {
					t.Errorf("%s: pixel %s still there after strip", rel, u)
				}
			}
		}
		for _, k := range keep[filepath.ToSlash(rel)] {
			for _, f := range rep.Trackers {
				if f.URL == k {
					t.Errorf("%s: legitimate resource %s judged a tracker (%v)", rel, k, f.Reasons)
				}
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if n < 50 {
		t.Fatalf("only %d corpus files found", n)
	}
	// A check whose file was renamed or removed would otherwise vanish.
	for _, m := range []map[string][]string{known, keep} {
		for rel := range m {
			if !visited[rel] {
				t.Errorf("%s is not in the corpus at %s any more; its pixel checks did not run (update the name)", rel, dir)
			}
		}
	}
}
