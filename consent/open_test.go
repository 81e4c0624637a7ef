package consent

import (
	"bufio"
	"context"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// TestHelperHoldLock is not a test: TestOpenInUse runs it in a second
// process to hold the database lock the way a running serve does.
func TestHelperHoldLock(t *testing.T) {
	path := os.Getenv("PIXELRELAY_TEST_HOLD_LOCK")
	if path == "" {
		t.Skip("helper process only")
	}
	s, err := Open(path, Options{})
	if err != nil {
		os.Stdout.WriteString("error: " + err.Error() + "\n")
		os.Exit(1)
	}
	defer s.Close()
	os.Stdout.WriteString("ready\n")
	io.Copy(io.Discard, os.Stdin) // hold until the parent closes stdin
}

// holdLock starts a second process that opens path and keeps it open until
// the test ends.
func holdLock(t *testing.T, path string) {
	t.Helper()
	cmd := exec.Command(os.Args[0], "-test.run=^TestHelperHoldLock$")
	cmd.Env = append(os.Environ(), "PIXELRELAY_TEST_HOLD_LOCK="+path)
	stdin, _ := cmd.StdinPipe()
	stdout, _ := cmd.StdoutPipe()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		stdin.Close()
		cmd.Wait()
	})
	line, _ := bufio.NewReader(stdout).ReadString('\n')
	if line != "ready\n" {
		t.Fatalf("lock holder: %q", line)
	}
}

func TestOpenInUse(t *testing.T) {
	path := filepath.Join(t.TempDir(), "busy.db")
	holdLock(t, path)
	for _, ro := range []bool{false, true} {
		start := time.Now()
		s, err := Open(path, Options{ReadOnly: ro, LockTimeout: 50 * time.Millisecond})
		if err == nil {
			s.Close()
			t.Fatalf("ReadOnly=%v: opened a database another process holds", ro)
		}
		want := "database " + path + " is in use by a running pixelrelay; use --server URL"
		if err.Error() != want || !errors.Is(err, ErrInUse) {
			t.Errorf("ReadOnly=%v: err = %q, want %q", ro, err, want)
		}
		// Not a timing assertion: a guard against "waits forever".
		if d := time.Since(start); d > 10*time.Second {
			t.Errorf("Open waited %s", d)
		}
	}
}

func TestOpenBadFiles(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.db")
	s, err := Open(good, Options{})
	if err != nil {
		t.Fatal(err)
	}
	mustRecord(t, s, grant("bob@example.com"))
	var used int64
	s.DB().View(func(tx *bbolt.Tx) error { used = tx.Size(); return nil })
	s.Close()
	goodBytes := mustReadFile(t, good)

	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, data, 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	tests := []struct {
		name string
		path string
		opts Options
		want string
	}{
		// Each row: a file Open must refuse, and the advice it must give.
		{"text file", write("notes.db", []byte(strings.Repeat("this is not a database\n", 500))), Options{}, "Restore your latest backup"},
		{"short garbage", write("short.db", []byte("garbage")), Options{}, "damaged or is not a pixelrelay database"},
		{"truncated", write("trunc.db", goodBytes[:used-4096]), Options{}, "truncated"},
		{"missing, read-only", filepath.Join(dir, "absent.db"), Options{ReadOnly: true}, "does not exist"},
		{"missing directory", filepath.Join(dir, "nodir", "x.db"), Options{}, "directory does not exist"},
		{"a directory", dir, Options{}, "is a directory"},
		{"bad purpose", filepath.Join(dir, "p.db"), Options{Purposes: []string{"Open Tracking"}}, "may only use"},
	}
	for _, tc := range tests {
		// Some rows name no readable file (absent, a directory): then
		// both reads fail alike, and the check is that nothing appeared.
		before, _ := os.ReadFile(tc.path)
		s, err := Open(tc.path, tc.opts)
		if err == nil {
			s.Close()
			t.Errorf("%s: Open succeeded", tc.name)
			continue
		}
		if !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%s: err = %v, want it to mention %q", tc.name, err, tc.want)
		}
		after, _ := os.ReadFile(tc.path)
		if string(before) != string(after) {
			t.Errorf("%s: the refused file was modified", tc.name)
		}
	}
}

func TestOpenReadOnly(t *testing.T) {
	s, path := openTest(t, Options{})
	mustRecord(t, s, grant("bob@example.com"))
	s.Close()
	// Two read-only opens share the lock.
	r1, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatal(err)
	}
	defer r1.Close()
	r2, err := Open(path, Options{ReadOnly: true})
	if err != nil {
		t.Fatalf("second read-only open: %v", err)
	}
	defer r2.Close()
	if st := mustLookup(t, r2, DefaultTenant, "bob@example.com", PurposeOpenTracking); st != Granted {
		t.Errorf("read-only lookup = %s", st)
	}
	if _, err := r1.Record(context.Background(), grant("x@example.com")); !errors.Is(err, ErrReadOnly) {
		t.Errorf("write on a read-only store: %v", err)
	}
}

func TestNewerSchemaRefused(t *testing.T) {
	s, path := openTest(t, Options{})
	s.DB().Update(func(tx *bbolt.Tx) error { return tx.Bucket(bucketMeta).Put(metaSchema, []byte{99}) })
	s.Close()
	if _, err := Open(path, Options{}); err == nil || !strings.Contains(err.Error(), "newer pixelrelay") {
		t.Errorf("err = %v", err)
	}
}

func TestOtherPackagesBucketsUntouched(t *testing.T) {
	s, _ := openTest(t, Options{})
	err := s.DB().Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucket([]byte("beacon.counters"))
		if err != nil {
			return err
		}
		return b.Put([]byte("k"), []byte("v"))
	})
	if err != nil {
		t.Fatal(err)
	}
	mustRecord(t, s, grant("bob@example.com"))
	s.Erase(context.Background(), "", "bob@example.com", "t")
	s.DB().View(func(tx *bbolt.Tx) error {
		if v := tx.Bucket([]byte("beacon.counters")).Get([]byte("k")); string(v) != "v" {
			t.Errorf("another package's bucket changed: %q", v)
		}
		return nil
	})
}
