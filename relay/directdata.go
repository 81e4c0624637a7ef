package relay

import (
	"bytes"
	"io"

	"github.com/emersion/go-smtp"
)

// go-smtp undoes DATA's dot-stuffing one byte at a time through
// bufio.Reader.ReadByte, which cost a third of the relay's CPU. On
// listeners without TLS the connection wrapper sees the plaintext, so once
// the 354 is out and nothing past the DATA line sits in go-smtp's buffer,
// the session reads the message straight from the socket with directData,
// then hands go-smtp a bare "." line (and whatever the client pipelined
// after the message) so that its own reader ends at once.
//
// directData is a port of go-smtp's dataReader state machine (data.go),
// state for state, so that the message ends exactly where go-smtp would
// end it. That matters for SMTP smuggling: go-smtp does not end DATA at
// "\r\r\n.\r\n" (a CR after a CR leaves the line open), and neither may
// this, or a message refused for its bare CR would let what follows run as
// a second transaction. Only the common state is faster: runs of bytes
// without a CR are copied with one IndexByte.
type directData struct {
	c     *trackedConn
	buf   []byte // read buffer
	in    []byte // unprocessed input within buf
	state int
	// written counts output bytes against the size limit; over it,
	// output is discarded and Read ends with ErrDataTooLarge.
	written, max int64
	tooBig       bool
	done         bool
	handedBack   bool // the rest went to the wrapper for go-smtp
	err          error
}

// The states of go-smtp's dataReader.
const (
	ddBeginLine = iota
	ddDot
	ddDotCR
	ddCR
	ddData
)

// takeDirect tells whether the message may be read directly: a listener
// without TLS, the 354 written, and go-smtp's buffer holding nothing past
// the DATA line (the last bytes it was given ended with that line).
func (c *trackedConn) takeDirect() bool {
	return c != nil && c.limitLines && c.inData.Load() && c.dataAtEnd && len(c.ahead) == 0
}

func newDirectData(c *trackedConn, max int64) *directData {
	if c.aheadBuf == nil {
		c.aheadBuf = make([]byte, readAhead)
	}
	return &directData{c: c, buf: c.aheadBuf, max: max}
}

func (d *directData) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && !d.done {
		if len(d.in) == 0 {
			if d.err != nil {
				break
			}
			m, err := d.c.Conn.Read(d.buf)
			d.in = d.buf[:m]
			if err != nil {
				if err == io.EOF {
					err = io.ErrUnexpectedEOF
				}
				d.err = err
			}
			if m == 0 {
				continue
			}
		}
		n += d.step(p[n:])
	}
	if d.done {
		if !d.handedBack {
			// What the client sent after the message stays for go-smtp,
			// behind the end-of-data line its own reader now finds; the
			// wrapper's scanner finds it too and reads on as commands.
			d.c.ahead = append([]byte(".\r\n"), d.in...)
			d.c.ddState = ddBeginLine
			d.in = nil
			d.handedBack = true
		}
		if n > 0 {
			return n, nil
		}
		if d.tooBig {
			return 0, smtp.ErrDataTooLarge
		}
		return 0, io.EOF
	}
	if n == 0 && d.err != nil {
		return 0, d.err
	}
	return n, nil
}

// step runs the state machine over d.in, writing output into out, and
// returns how much it wrote. It stops when out is full, input runs out, or
// the end of data is found. Past the size limit it writes nothing and only
// consumes, so the SMTP stream stays in step.
func (d *directData) step(out []byte) int {
	n := 0
	emit := func(b []byte) {
		if !d.tooBig && d.max > 0 && d.written+int64(len(b)) > d.max {
			d.tooBig = true
		}
		if d.tooBig {
			return
		}
		d.written += int64(len(b))
		n += copy(out[n:], b)
	}
	for len(d.in) > 0 && (n < len(out) || d.tooBig) {
		if d.state == ddData {
			// The fast path: everything up to the next CR is data.
			i := bytes.IndexByte(d.in, '\r')
			if i < 0 {
				i = len(d.in)
			}
			if !d.tooBig {
				i = min(i, len(out)-n)
			}
			if i > 0 {
				emit(d.in[:i])
				d.in = d.in[i:]
				continue
			}
		}
		c := d.in[0]
		d.in = d.in[1:]
		switch d.state {
		case ddBeginLine:
			if c == '.' {
				d.state = ddDot
				continue
			}
			if c == '\r' {
				d.state = ddCR
			} else {
				d.state = ddData
			}
		case ddDot:
			if c == '\r' {
				d.state = ddDotCR
				continue
			}
			d.state = ddData
		case ddDotCR:
			if c == '\n' {
				d.done = true
				return n
			}
			d.state = ddData
		case ddCR:
			if c == '\n' {
				d.state = ddBeginLine
			} else {
				d.state = ddData
			}
		case ddData:
			if c == '\r' {
				d.state = ddCR
			}
		}
		emit([]byte{c})
	}
	return n
}

// scanDataEnd runs go-smtp's end-of-data state machine over b from *state
// and returns how many bytes belong to the message, end marker included,
// and whether the marker was found. The wrapper uses it to know where the
// client's commands resume after a message it does not read itself.
func scanDataEnd(state *int, b []byte) (int, bool) {
	i := 0
	for i < len(b) {
		if *state == ddData {
			j := bytes.IndexByte(b[i:], '\r')
			if j < 0 {
				return len(b), false
			}
			i += j
		}
		c := b[i]
		i++
		switch *state {
		case ddBeginLine:
			switch c {
			case '.':
				*state = ddDot
			case '\r':
				*state = ddCR
			default:
				*state = ddData
			}
		case ddDot:
			if c == '\r' {
				*state = ddDotCR
			} else {
				*state = ddData
			}
		case ddDotCR:
			if c == '\n' {
				*state = ddBeginLine
				return i, true
			}
			*state = ddData
		case ddCR:
			if c == '\n' {
				*state = ddBeginLine
			} else {
				*state = ddData
			}
		case ddData:
			if c == '\r' {
				*state = ddCR
			}
		}
	}
	return i, false
}
