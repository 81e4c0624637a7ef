package relay

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func writeAudit(t *testing.T, path string, n int) {
	t.Helper()
	a, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i < n; i++ {
		rec := &AuditRecord{MessageID: "<m" + string(rune('a'+i)) + "@x>", Tenant: "default",
			Recipients: []AuditRecipient{{Pseudonym: "hmac-sha256:00", Consent: "unknown", Action: "strip"}}}
		if err := a.Delivered(rec); err != nil {
			t.Fatal(err)
		}
	}
	a.Close()
}

func TestAuditChain(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	writeAudit(t, path, 3)
	writeAudit(t, path, 2) // a restart continues the chain

	data := mustReadFile(t, path)
	lines := bytes.SplitAfter(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
	if len(lines) != 5 {
		t.Fatalf("got %d lines, want 5", len(lines))
	}
	if n, err := VerifyAuditLog(bytes.NewReader(data)); err != nil || n != 5 {
		t.Fatalf("intact log: n=%d err=%v", n, err)
	}

	for _, tc := range []struct {
		name     string
		mangle   func([][]byte) [][]byte
		wantLine int
	}{
		// Removing a line breaks the link of the line after it.
		{"removed", func(l [][]byte) [][]byte { return append(l[:2:2], l[3:]...) }, 3},
		// Editing a line breaks its own hash.
		{"edited", func(l [][]byte) [][]byte {
			l[1] = bytes.Replace(l[1], []byte(`"strip"`), []byte(`"keep"`), 1)
			return l
		}, 2},
		// Swapping two lines breaks the first one moved.
		{"reordered", func(l [][]byte) [][]byte { l[1], l[2] = l[2], l[1]; return l }, 2},
		// Dropping the head shows as a first line linking to nothing here.
		{"truncated-head", func(l [][]byte) [][]byte { return l[1:] }, 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			cp := make([][]byte, len(lines))
			for i := range lines {
				cp[i] = append([]byte(nil), lines[i]...)
			}
			_, err := VerifyAuditLog(bytes.NewReader(bytes.Join(tc.mangle(cp), nil)))
			var ve *AuditVerifyError
			if !errors.As(err, &ve) || ve.Line != tc.wantLine {
				t.Fatalf("got %v, want a break at line %d", err, tc.wantLine)
			}
		})
	}
}

func TestAuditRefusesForeignTail(t *testing.T) {
	path := filepath.Join(t.TempDir(), "audit.jsonl")
	os.WriteFile(path, []byte("not an audit record\n"), 0o600)
	_, err := OpenAuditLog(path)
	if err == nil || !strings.Contains(err.Error(), "move the file aside") {
		t.Fatalf("opening a log whose last line is foreign: %v", err)
	}
}

func TestAuditRotation(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "audit.jsonl")
	a, err := OpenAuditLog(path)
	if err != nil {
		t.Fatal(err)
	}
	a.Delivered(&AuditRecord{MessageID: "<1@x>"})
	a.Delivered(&AuditRecord{MessageID: "<2@x>"})
	// logrotate moves the file away and creates a new one; SIGHUP reopens.
	os.Rename(path, path+".1")
	if err := a.Reopen(); err != nil {
		t.Fatal(err)
	}
	a.Delivered(&AuditRecord{MessageID: "<3@x>"})
	a.Close()

	if n, bad, err := VerifyAuditFiles([]string{path + ".1", path}); err != nil || n != 3 {
		t.Fatalf("rotated segments in order: n=%d %s %v", n, bad, err)
	}
	// Alone, the new segment cannot show where it starts.
	if _, _, err := VerifyAuditFiles([]string{path}); err == nil || !strings.Contains(err.Error(), "rotated segment") {
		t.Fatalf("new segment alone: %v", err)
	}
	// Out of order, the link breaks.
	if _, bad, err := VerifyAuditFiles([]string{path, path + ".1"}); err == nil || bad != path {
		t.Fatalf("segments out of order: %s %v", bad, err)
	}
}
