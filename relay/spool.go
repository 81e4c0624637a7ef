package relay

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	"errors"
	"io"
	"net"
	"net/textproto"
	"os"
	"slices"
	"sync"

	"github.com/pixelrelay/pixelrelay/rewrite"
)

// message is one received message body, held in memory up to a threshold
// and spilled to an unlinked temporary file beyond it, so that a burst of
// large messages cannot exhaust memory. It is read once per recipient group.
type message struct {
	mem    []byte
	file   *os.File
	size   int64
	header textproto.MIMEHeader
	buf    *[]byte // pooled backing array of mem
	sum    []byte  // digest, once computed
}

// digest is the SHA-256 of the message as the client sent it, the message
// half of the retry-memory key. It is computed only when needed: a pass
// over every message for a memory that is almost always empty would cost
// more than the lookup. It is kept: a message that is looked up in the
// memory and then remembered must not be read twice.
func (m *message) digest() []byte {
	if m.sum == nil {
		h := sha256.New()
		io.Copy(h, m.Reader())
		m.sum = h.Sum(nil)
	}
	return m.sum
}

// Reader returns a fresh reader over the whole body.
func (m *message) Reader() io.Reader {
	if m.file != nil {
		return io.NewSectionReader(m.file, 0, m.size)
	}
	// The rewriter reads an InMemory message in place, without copying
	// it through a read buffer.
	return rewrite.NewInMemory(m.mem)
}

// Close releases the memory buffer or the temporary file.
func (m *message) Close() {
	if m.file != nil {
		m.file.Close()
		m.file = nil
	}
	if m.buf != nil {
		*m.buf = m.mem[:0]
		spoolBuffers.Put(m.buf)
		m.buf, m.mem = nil, nil
	}
}

// spoolBuffers recycles message buffers between transactions; at a few
// hundred messages a second, allocating 100 KB each is most of the garbage.
var spoolBuffers = sync.Pool{New: func() any { b := make([]byte, 0, 128<<10); return &b }}

type spooler struct {
	memLimit  int64
	dir       string
	maxHeader int // bytes before the blank line that ends the header
	maxLine   int // longest line, CRLF excluded; 0 means no limit
}

var (
	errBareLineEnding = errors.New("bare CR or LF")
	errHeaderSize     = errors.New("header too large")
	errLineLength     = errors.New("line too long")
)

// receive reads the DATA or BDAT stream to its end while enforcing strict
// CRLF: a bare CR or LF is how SMTP smuggling (CVE-2023-51764 and kin)
// hides a second message inside the first, so any such byte rejects the
// whole message before a single byte goes upstream.
func (sp *spooler) receive(r io.Reader) (*message, error) {
	m := &message{buf: spoolBuffers.Get().(*[]byte)}
	m.mem = (*m.buf)[:0]
	var (
		scratch    []byte // the read buffer once the message is in a file
		lastCR     bool
		lineLen    int
		headerDone bool
		headerEnd  = -1
	)
	for {
		// In memory, the client's bytes are read straight into the spare
		// capacity of the message buffer, and checked there: no copy,
		// and no read buffer to allocate for each message.
		var b []byte
		if m.file == nil {
			if cap(m.mem)-len(m.mem) < minRead {
				m.mem = slices.Grow(m.mem, readChunk)
			}
			b = m.mem[len(m.mem):cap(m.mem)]
		} else {
			if scratch == nil {
				scratch = make([]byte, readChunk)
			}
			b = scratch
		}
		n, err := r.Read(b)
		if n > 0 {
			b = b[:n]
			var ok bool
			if lineLen, ok = checkLines(b, lastCR, lineLen, sp.maxLine); !ok {
				m.Close()
				if lineLen < 0 {
					return nil, errLineLength
				}
				return nil, errBareLineEnding
			}
			lastCR = b[n-1] == '\r'
			if err := m.add(sp, b); err != nil {
				m.Close()
				return nil, err
			}
			if !headerDone {
				if headerEnd = headerLength(m); headerEnd >= 0 {
					headerDone = true
				} else if sp.maxHeader > 0 && m.size > int64(sp.maxHeader) {
					m.Close()
					return nil, errHeaderSize
				}
			}
		}
		if err == io.EOF {
			break
		}
		if err != nil {
			m.Close()
			return nil, err
		}
	}
	if lastCR {
		m.Close()
		return nil, errBareLineEnding
	}
	if sp.maxLine > 0 && lineLen > sp.maxLine {
		// The last line, without a CRLF (BDAT allows that): the room left
		// for a CR whose LF would come next is not needed.
		m.Close()
		return nil, errLineLength
	}
	if sp.maxHeader > 0 && headerEnd > sp.maxHeader {
		m.Close()
		return nil, errHeaderSize
	}
	m.header = parseHeader(m, headerEnd)
	return m, nil
}

const (
	readChunk = 32 << 10 // what the buffer grows by when it runs short
	minRead   = 4 << 10  // the least spare capacity a read is given
)

// checkLines checks the next chunk of a message in one pass over its
// LFs: every LF is preceded by CR and every CR followed by LF (prevCR: the
// previous chunk ended in CR), and, when max > 0, no line is longer than
// max bytes without its CRLF. cur is the length so far of the line the
// previous chunk ended in; checkLines returns the new one. On a failure
// ok is false, and the length is -1 when the failure is a long line. A
// bare line ending in the chunk wins over a long line in it: it is how
// SMTP smuggling hides a second message, and is logged as such, so one
// over-long line must not disguise it.
func checkLines(b []byte, prevCR bool, cur, max int) (int, bool) {
	if prevCR && (len(b) == 0 || b[0] != '\n') {
		return 0, false // the previous chunk's trailing CR was bare
	}
	lf := 0
	long := false
	for i := 0; ; {
		j := bytes.IndexByte(b[i:], '\n')
		if j < 0 {
			cur += len(b) - i
			if max > 0 && cur > max+1 { // +1 leaves room for a CR whose LF is next
				long = true
			}
			break
		}
		p := i + j
		if p == 0 {
			if !prevCR {
				return 0, false
			}
		} else if b[p-1] != '\r' {
			return 0, false
		}
		if max > 0 && cur+j-1 > max { // j-1: the CR before the LF is not content
			long = true
		}
		cur = 0
		lf++
		i = p + 1
	}
	cr := bytes.Count(b, []byte{'\r'})
	// Every LF has its CR right before it. A CR left unmatched means a bare
	// CR, except a trailing CR whose LF starts the next chunk (checked there).
	if prevCR {
		cr++ // the LF at 0 is matched by the previous chunk's CR
	}
	unmatched := cr - lf
	if len(b) > 0 && b[len(b)-1] == '\r' {
		unmatched--
	}
	if unmatched != 0 {
		return 0, false
	}
	if long {
		return -1, false
	}
	return cur, true
}

// headKeep is how much of a spilled message stays in memory: enough for
// the header, which the relay parses, and which a DSN quotes.
const headKeep = 64 << 10

// add appends b, just read, to the message. While the message is in
// memory, b is the spare capacity of mem that receive read into, so adding
// it moves nothing; past the memory limit, everything goes to a file.
func (m *message) add(sp *spooler, b []byte) error {
	m.size += int64(len(b))
	if m.file != nil {
		if n := headKeep - len(m.mem); n > 0 {
			m.mem = append(m.mem, b[:min(n, len(b))]...)
		}
		_, err := m.file.Write(b)
		return err
	}
	if int64(len(m.mem)+len(b)) <= sp.memLimit {
		m.mem = m.mem[:len(m.mem)+len(b)]
		return nil
	}
	f, err := os.CreateTemp(sp.dir, "pixelrelay-spool-*")
	if err != nil {
		return err
	}
	// Unlinked at once: the data disappears with the process, even on a
	// crash, and never lingers as a plaintext copy of someone's mail.
	os.Remove(f.Name())
	if _, err := f.Write(m.mem); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	m.file = f
	// Keep the head in memory: b already follows mem in its buffer.
	m.mem = m.mem[:min(len(m.mem)+len(b), headKeep)]
	return nil
}

// headerLength returns the offset of the blank line that ends the header
// within the in-memory prefix, or -1 if it has not been seen yet.
func headerLength(m *message) int {
	if bytes.HasPrefix(m.mem, []byte("\r\n")) {
		return 0
	}
	i := bytes.Index(m.mem, []byte("\r\n\r\n"))
	if i < 0 {
		return -1
	}
	return i + 2
}

// headerReaders spare parseHeader a 4 KB buffer per message.
var headerReaders = sync.Pool{New: func() any { return bufio.NewReader(nil) }}

// parseHeader reads the fields the relay needs (Message-ID, campaign
// headers, From). A damaged header is not an error: what parses is used
// and the message itself is forwarded untouched.
func parseHeader(m *message, end int) textproto.MIMEHeader {
	if end < 0 {
		end = len(m.mem)
	}
	br := headerReaders.Get().(*bufio.Reader)
	br.Reset(bytes.NewReader(m.mem[:end]))
	h, _ := textproto.NewReader(br).ReadMIMEHeader()
	br.Reset(nil)
	headerReaders.Put(br)
	if h == nil {
		h = textproto.MIMEHeader{}
	}
	return h
}

// copyBuffer holds one finished copy when it must be complete before it is
// sent (a DKIM signature covers the whole body); like message, it spills to
// an unlinked file past the memory limit.
type copyBuffer struct {
	mem   bytes.Buffer
	file  *os.File
	limit int64
	dir   string
	size  int64
}

func (b *copyBuffer) Write(p []byte) (int, error) {
	b.size += int64(len(p))
	if b.file != nil {
		return b.file.Write(p)
	}
	if int64(b.mem.Len()+len(p)) <= b.limit {
		return b.mem.Write(p)
	}
	f, err := os.CreateTemp(b.dir, "pixelrelay-copy-*")
	if err != nil {
		return 0, err
	}
	os.Remove(f.Name())
	if _, err := f.Write(b.mem.Bytes()); err != nil {
		f.Close()
		return 0, err
	}
	b.mem = bytes.Buffer{}
	b.file = f
	return f.Write(p)
}

func (b *copyBuffer) Reader() io.Reader {
	if b.file != nil {
		return io.NewSectionReader(b.file, 0, b.size)
	}
	return bytes.NewReader(b.mem.Bytes())
}

func (b *copyBuffer) Close() {
	if b.file != nil {
		b.file.Close()
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
