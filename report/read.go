package report

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
	"unicode/utf8"

	"github.com/pixelrelay/pixelrelay/relay"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// MaxLineBytes is the longest line Read decodes. An audit line with a
// thousand recipients is about 150 KB; a longer line is skipped (and
// counted) without being held in memory.
const MaxLineBytes = 16 << 20

// Read adds every audit record and `scan --json` line of r to the summary,
// under the source name name. r is JSON lines, optionally gzip-compressed
// (a rotated log). A line that is neither kind of record, such as a
// truncated last line or a stray log message, is skipped, counted and
// listed in the report. Read returns an error only when reading r fails.
func (s *Summary) Read(r io.Reader, name string) error {
	s.AddSource(name)
	src := s.current()
	br := bufio.NewReaderSize(r, 64<<10)
	if magic, _ := br.Peek(2); len(magic) == 2 && magic[0] == 0x1f && magic[1] == 0x8b {
		zr, err := gzip.NewReader(br)
		if err != nil {
			return fmt.Errorf("%s: looks gzip-compressed but is not: %w", name, err)
		}
		defer zr.Close()
		br = bufio.NewReaderSize(zr, 64<<10)
	}
	s.chainLink(src)
	var buf []byte
	for {
		line, tooLong, err := readLine(br, buf[:0], MaxLineBytes)
		buf = line
		if len(line) > 0 || tooLong {
			src.lines++
			s.takeLine(src, src.lines, bytes.TrimRight(line, "\r\n"), tooLong)
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return fmt.Errorf("%s: reading line %d: %w", name, src.lines+1, err)
		}
	}
}

// readLine appends the next line of br, newline included, to buf. A line
// longer than max is consumed but not kept, and tooLong is set.
func readLine(br *bufio.Reader, buf []byte, max int) (line []byte, tooLong bool, err error) {
	for {
		frag, err := br.ReadSlice('\n')
		if !tooLong && len(buf)+len(frag) <= max {
			buf = append(buf, frag...)
		} else if !tooLong {
			tooLong, buf = true, buf[:0]
		}
		if err == bufio.ErrBufferFull {
			continue
		}
		return buf, tooLong, err
	}
}

// lineProbe tells the two kinds of line apart before decoding either.
type lineProbe struct {
	Recipients json.RawMessage `json:"recipients"`
	Source     json.RawMessage `json:"source"`
}

// scanLine is one `scan --json` line (CONTRACTS.md).
type scanLine struct {
	Source    string            `json:"source"`
	MessageID string            `json:"message_id"`
	Trackers  []rewrite.Finding `json:"trackers"`
	Problems  []string          `json:"problems"`
	Error     string            `json:"error"`
}

func (s *Summary) takeLine(src *source, n int, line []byte, tooLong bool) {
	if tooLong {
		s.skip(src, n, fmt.Sprintf("line longer than %d MiB", MaxLineBytes>>20))
		src.chain.breakAt(n, "line too long to check")
		return
	}
	if len(bytes.TrimSpace(line)) == 0 {
		// Blank lines carry nothing and change no record's hash.
		return
	}
	var p lineProbe
	if err := json.Unmarshal(line, &p); err != nil {
		s.skip(src, n, "not JSON ("+jsonProblem(err, line)+")")
		src.chain.breakAt(n, "not an audit record")
		return
	}
	switch {
	case p.Recipients != nil:
		var rec relay.AuditRecord
		if err := json.Unmarshal(line, &rec); err != nil {
			s.skip(src, n, "not an audit record ("+jsonProblem(err, line)+")")
			src.chain.breakAt(n, "not an audit record")
			return
		}
		if rec.Time.IsZero() {
			s.skip(src, n, `not an audit record (no "time")`)
			src.chain.breakAt(n, "not an audit record")
			return
		}
		src.chain.check(n, line, rec.PrevHash)
		s.AddAudit(&rec)
	case p.Source != nil:
		var sl scanLine
		if err := json.Unmarshal(line, &sl); err != nil {
			s.skip(src, n, "not a scan result ("+jsonProblem(err, line)+")")
			return
		}
		res := ScanResult{Source: sl.Source, MessageID: sl.MessageID, Trackers: sl.Trackers, Problems: sl.Problems}
		if sl.Error != "" {
			res.Err = errors.New(sl.Error)
		}
		s.AddScan(res)
	default:
		s.skip(src, n, `JSON, but neither an audit record (no "recipients") nor a scan result (no "source")`)
		src.chain.breakAt(n, "not an audit record")
	}
}

// jsonProblem words a decoding error for the skipped-lines list.
func jsonProblem(err error, line []byte) string {
	var syn *json.SyntaxError
	var typ *json.UnmarshalTypeError
	switch {
	case errors.As(err, &syn) && syn.Offset >= int64(len(line)):
		return "cut off: the line ends inside the JSON value"
	case errors.As(err, &syn):
		return fmt.Sprintf("syntax error at byte %d", syn.Offset)
	case errors.As(err, &typ):
		field := typ.Field
		if field == "" {
			field = "the line"
		}
		return fmt.Sprintf("%s is a JSON %s", field, typ.Value)
	case errors.Is(err, io.ErrUnexpectedEOF):
		return "cut off: the line ends inside the JSON value"
	}
	msg := strings.TrimPrefix(err.Error(), "json: ")
	if !utf8.ValidString(msg) {
		msg = strings.ToValidUTF8(msg, "?")
	}
	return msg
}

// chain follows one file's audit hash chain. It checks the same seal as
// relay.VerifyAuditLog (each line ends with the SHA-256 of everything before
// its hash field, and carries the previous line's hash), so the report can
// show integrity without a second pass over the file. The tests hold the
// two to the same verdicts.
type chain struct {
	records int
	prev    string
	// firstPrev is the prev_hash of the file's first record; linkedTo names
	// the source whose last hash it matches, if any.
	firstPrev  string
	linkedTo   string
	brokenLine int
	reason     string
	// lastOf is the last hash of the previous source with audit records,
	// for recognising a rotated log continuing it.
	lastOf, lastHash string
}

// chainLink gives a new source the end of the previous audit chain.
func (s *Summary) chainLink(src *source) {
	for i := len(s.sources) - 2; i >= 0; i-- {
		if prev := s.sources[i]; prev.chain.records > 0 {
			src.chain.lastOf, src.chain.lastHash = prev.name, prev.chain.prev
			return
		}
	}
}

func (c *chain) breakAt(line int, reason string) {
	if c.brokenLine == 0 {
		c.brokenLine, c.reason = line, reason
	}
}

const hashMarker = `,"hash":"`

func (c *chain) check(n int, line []byte, prevHash string) {
	c.records++
	cut := bytes.LastIndex(line, []byte(hashMarker))
	got := []byte(nil)
	if cut >= 0 {
		got = line[cut+len(hashMarker):]
	}
	if cut < 0 || len(got) != 64+2 || !bytes.HasSuffix(got, []byte(`"}`)) {
		c.breakAt(n, "the record is not sealed with a hash")
		return
	}
	sum := sha256.Sum256(line[:cut])
	want := hex.EncodeToString(sum[:])
	if string(got[:64]) != want {
		c.breakAt(n, "the record does not match its hash (edited?)")
	}
	if c.records == 1 {
		c.firstPrev = prevHash
		if prevHash != "" && prevHash == c.lastHash {
			c.linkedTo = c.lastOf
		}
	} else if prevHash != c.prev {
		c.breakAt(n, "prev_hash does not match the record before (a record was removed, reordered or inserted)")
	}
	c.prev = want
}

// state words the chain's verdict for the sources table, and tells whether
// it is a problem.
func (c *chain) state() (text string, bad bool) {
	switch {
	case c.records == 0:
		return "no audit records", false
	case c.brokenLine > 0:
		return fmt.Sprintf("broken at line %d: %s", c.brokenLine, c.reason), true
	case c.linkedTo != "":
		return "intact; continues " + c.linkedTo, false
	case c.firstPrev != "":
		return "intact; begins mid-chain (a rotated segment: give its predecessor first to link them)", false
	}
	return "intact", false
}
