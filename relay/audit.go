package relay

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"sync"
	"time"
)

// AuditRecord is one line of the audit log: what the relay decided and did
// for one message. CONTRACTS.md pins the field names; compliance officers'
// scripts read them.
type AuditRecord struct {
	Time         time.Time        `json:"time"`
	MessageID    string           `json:"message_id"`
	Campaign     string           `json:"campaign"`
	Tenant       string           `json:"tenant"`
	RelayVersion string           `json:"relay_version"`
	RulesVersion string           `json:"rules_version"`
	SenderDomain string           `json:"sender_domain"`
	Recipients   []AuditRecipient `json:"recipients"`
	Trackers     []AuditTracker   `json:"trackers"`
	DryRun       bool             `json:"dry_run"`
	DKIM         string           `json:"dkim"`
	Upstream     Reply            `json:"upstream"`
	DurationMS   int64            `json:"duration_ms"`
	// Outcome is delivered, partial (some recipients deferred), deferred,
	// refused or rejected (the relay refused the message itself).
	Outcome string `json:"outcome"`
	// RelayID is the id in the Received: header this relay added.
	RelayID string `json:"relay_id"`
	// Problems are non-fatal notes, e.g. MIME the rewriter could not read.
	Problems []string `json:"problems,omitempty"`
	PrevHash string   `json:"prev_hash"`
	Hash     string   `json:"hash"`
}

// AuditRecipient is one recipient as decided. Address is set only with
// --audit-plaintext; otherwise the pseudonym is the only handle.
type AuditRecipient struct {
	Pseudonym string `json:"pseudonym"`
	Address   string `json:"address,omitempty"`
	Consent   string `json:"consent"`
	Action    string `json:"action"`
	// Status is the upstream's reply code for this recipient, when known.
	Status int `json:"status,omitempty"`
}

// AuditTracker is one tracker found in the message.
type AuditTracker struct {
	Vendor  string   `json:"vendor"`
	Host    string   `json:"host"`
	Reasons []string `json:"reasons"`
	Vector  string   `json:"vector"`
	Action  string   `json:"action,omitempty"`
}

// AuditLog appends hash-chained JSON lines. Each line's hash covers its own
// bytes up to the hash field, and each line carries the previous line's
// hash, so a removed, reordered or edited line breaks the chain at exactly
// that point. Like chasquid's maillog it has one method per event, so every
// caller writes the same shape for the same thing.
type AuditLog struct {
	mu   sync.Mutex
	w    io.Writer
	f    *os.File // nil when writing to stdout
	path string
	prev string
	// dirty is set when lines were written since the last fsync.
	dirty     bool
	stop      chan struct{}
	closeOnce sync.Once
}

// OpenAuditLog opens (or creates) path for appending, or stdout for "-".
// It continues the chain from the file's last line.
func OpenAuditLog(path string) (*AuditLog, error) {
	if path == "-" {
		return &AuditLog{w: os.Stdout}, nil
	}
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o640)
	if err != nil {
		return nil, fmt.Errorf("audit log: %w", err)
	}
	prev, err := lastHash(f)
	if err != nil {
		f.Close()
		return nil, fmt.Errorf("audit log %s: %w; move the file aside to start a new chain", path, err)
	}
	a := &AuditLog{w: f, f: f, path: path, prev: prev, stop: make(chan struct{})}
	go a.syncLoop()
	return a, nil
}

// syncLoop fsyncs at most once a second. An fsync per message would cap
// the relay at the disk's sync rate; a second of records is what a crash
// can cost, and the chain shows where it broke.
func (a *AuditLog) syncLoop() {
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-a.stop:
			return
		case <-t.C:
			a.mu.Lock()
			if a.dirty {
				a.f.Sync()
				a.dirty = false
			}
			a.mu.Unlock()
		}
	}
}

// lastHash reads the hash of the last complete line of f.
func lastHash(f *os.File) (string, error) {
	st, err := f.Stat()
	if err != nil || st.Size() == 0 {
		return "", err
	}
	const tail = 64 << 10
	off := st.Size() - tail
	if off < 0 {
		off = 0
	}
	buf := make([]byte, st.Size()-off)
	if _, err := f.ReadAt(buf, off); err != nil && err != io.EOF {
		return "", err
	}
	buf = bytes.TrimRight(buf, "\n")
	if i := bytes.LastIndexByte(buf, '\n'); i >= 0 {
		buf = buf[i+1:]
	}
	h, err := lineHash(buf)
	if err != nil {
		return "", fmt.Errorf("last line is not an audit record (%v)", err)
	}
	return h, nil
}

// Reopen switches to a fresh file at the same path, for log rotation
// (logrotate's create mode, then SIGHUP). When the new file is empty the
// chain continues across the rotation: its first line links to the last
// line of the rotated file, so `audit verify OLD NEW` checks both as one.
func (a *AuditLog) Reopen() error {
	if a.f == nil {
		return nil
	}
	f, err := os.OpenFile(a.path, os.O_CREATE|os.O_RDWR|os.O_APPEND, 0o640)
	if err != nil {
		return fmt.Errorf("audit log: %w", err)
	}
	prev, err := lastHash(f)
	if err != nil {
		f.Close()
		return fmt.Errorf("audit log %s: %w", a.path, err)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	same := false
	if st1, err1 := f.Stat(); err1 == nil {
		if st0, err0 := a.f.Stat(); err0 == nil {
			same = os.SameFile(st0, st1)
		}
	}
	if same {
		f.Close()
		return nil
	}
	a.f.Sync()
	a.f.Close()
	a.f, a.w = f, f
	if prev != "" {
		a.prev = prev
	}
	return nil
}

// Close flushes and closes the log.
func (a *AuditLog) Close() error {
	if a.f == nil {
		return nil
	}
	var err error
	a.closeOnce.Do(func() {
		close(a.stop)
		a.mu.Lock()
		defer a.mu.Unlock()
		a.f.Sync()
		err = a.f.Close()
	})
	return err
}

// Delivered records a message every recipient of which the upstream
// accepted (or that went to the outbox).
func (a *AuditLog) Delivered(r *AuditRecord) error { return a.append(r, "delivered") }

// Partial records a message some recipients of which were accepted while
// the others were deferred or refused.
func (a *AuditLog) Partial(r *AuditRecord) error { return a.append(r, "partial") }

// Deferred records a message the client must retry: no recipient got it.
func (a *AuditLog) Deferred(r *AuditRecord) error { return a.append(r, "deferred") }

// Refused records a message the upstream refused permanently.
func (a *AuditLog) Refused(r *AuditRecord) error { return a.append(r, "refused") }

// Rejected records a message the relay itself refused (bare line endings,
// size), before anything went upstream.
func (a *AuditLog) Rejected(r *AuditRecord) error { return a.append(r, "rejected") }

func (a *AuditLog) append(r *AuditRecord, outcome string) error {
	r.Outcome = outcome
	if r.Recipients == nil {
		r.Recipients = []AuditRecipient{}
	}
	if r.Trackers == nil {
		r.Trackers = []AuditTracker{}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	r.PrevHash = a.prev
	r.Hash = ""
	line, err := json.Marshal(r)
	if err != nil {
		return err
	}
	// Cut the empty hash field and seal the line with the hash of
	// everything before it.
	cut := bytes.LastIndex(line, []byte(`,"hash":""}`))
	if cut < 0 {
		return errors.New("audit: hash field not last")
	}
	sum := sha256.Sum256(line[:cut])
	h := hex.EncodeToString(sum[:])
	out := append(line[:cut:cut], `,"hash":"`+h+`"}`+"\n"...)
	if _, err := a.w.Write(out); err != nil {
		return err
	}
	a.prev = h
	a.dirty = true
	r.Hash = h
	return nil
}

// lineHash checks that a line is sealed with the hash of its own prefix and
// returns that hash.
func lineHash(line []byte) (string, error) {
	const marker = `,"hash":"`
	cut := bytes.LastIndex(line, []byte(marker))
	if cut < 0 {
		return "", errors.New("no hash field")
	}
	got := line[cut+len(marker):]
	if len(got) != 64+2 || !bytes.HasSuffix(got, []byte(`"}`)) {
		return "", errors.New("hash field is not the last field")
	}
	sum := sha256.Sum256(line[:cut])
	want := hex.EncodeToString(sum[:])
	if string(got[:64]) != want {
		return "", errors.New("the line's content does not match its hash (edited?)")
	}
	return want, nil
}

// AuditVerifyError names the first line where the chain breaks.
type AuditVerifyError struct {
	Line   int
	Reason string
	Text   string
}

func (e *AuditVerifyError) Error() string {
	return fmt.Sprintf("line %d: %s", e.Line, e.Reason)
}

// VerifyAuditLog checks every line's own hash and its link to the line
// before. It returns the number of records checked and, on failure, an
// *AuditVerifyError for the first bad line.
func VerifyAuditLog(r io.Reader) (int, error) {
	return VerifyAuditChain(r, "")
}

// VerifyAuditChain is VerifyAuditLog for a segment whose first line must
// link to prev: the last hash of the segment before it, "" for the first.
func VerifyAuditChain(r io.Reader, prev string) (int, error) {
	n, _, err := verifyChain(r, prev)
	return n, err
}

// verifyChain verifies a segment and returns its last hash.
func verifyChain(r io.Reader, prev string) (int, string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), 16<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Bytes()
		h, err := lineHash(line)
		if err != nil {
			return n - 1, prev, &AuditVerifyError{Line: n, Reason: err.Error(), Text: string(line)}
		}
		var rec struct {
			PrevHash *string `json:"prev_hash"`
		}
		if err := json.Unmarshal(line, &rec); err != nil || rec.PrevHash == nil {
			return n - 1, prev, &AuditVerifyError{Line: n, Reason: "not a JSON audit record", Text: string(line)}
		}
		if *rec.PrevHash != prev {
			reason := "prev_hash does not match the line before (a line was removed, reordered or inserted)"
			if n == 1 && prev == "" {
				reason = "the first line links to a line that is not in this file (the log was truncated at the start, or it is a rotated segment: give the earlier files first)"
			} else if n == 1 {
				reason = "the first line does not continue the previous file (a file is missing between them, or the order is wrong)"
			}
			return n - 1, prev, &AuditVerifyError{Line: n, Reason: reason, Text: string(line)}
		}
		prev = h
	}
	if err := sc.Err(); err != nil {
		return n, prev, fmt.Errorf("reading line %d: %w", n+1, err)
	}
	return n, prev, nil
}

// VerifyAuditFiles verifies rotated segments given oldest first, as one
// chain. It returns the records checked, and on failure the file and an
// *AuditVerifyError for its first bad line.
func VerifyAuditFiles(paths []string) (n int, badFile string, err error) {
	prev := ""
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			return n, p, err
		}
		m, last, err := verifyChain(f, prev)
		f.Close()
		n += m
		if err != nil {
			return n, p, err
		}
		prev = last
	}
	return n, "", nil
}
