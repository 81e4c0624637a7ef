package relay

import (
	"bytes"
	"io"

	"github.com/emersion/go-smtp"
)

// go-smtp undoes DATA's dot-stuffing one byte at a time through
// bufio.Reader.ReadByte, which cost a third of the relay's CPU. While the
// connection wrapper sees the plaintext, once the 354 is out (and so,
// since the wrapper holds everything after a DATA line until go-smtp has
// answered it, with go-smtp's buffer empty) the session reads the message
// itself with directData: first what the client sent early, then from the
// socket. It then hands go-smtp a bare "." line, so that go-smtp's own
// reader ends at once, and gives the wrapper back whatever the client
// pipelined after the message.
//
// directData runs go-smtp's dataReader state machine (ddNext, a port of
// data.go), so that the message ends exactly where go-smtp would end it.
// That matters for SMTP smuggling: go-smtp does not end DATA at
// "\r\r\n.\r\n" (a CR after a CR leaves the line open), and neither may
// this, or a message refused for its bare CR would let what follows run as
// a second transaction. Only the common state is faster: runs of bytes
// without a CR are copied with one IndexByte.
type directData struct {
	c     *trackedConn
	in    []byte // unprocessed input within c.buf
	state int
	// written counts output bytes against the size limit; over it,
	// output is discarded and Read ends with ErrDataTooLarge.
	written, max int64
	tooBig       bool
	done         bool
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

// ddNext is one step of go-smtp's dataReader (data.go): the state after
// byte b, whether b belongs to the message (a stuffed dot and the end
// marker do not; nor, in go-smtp, a CR after a line-leading dot), and
// whether b completes the end-of-data line. directData and scanDataEnd
// both run on it, so they cannot disagree on where a message ends.
func ddNext(state int, b byte) (next int, keep, end bool) {
	switch state {
	case ddBeginLine:
		switch b {
		case '.':
			return ddDot, false, false
		case '\r':
			return ddCR, true, false
		}
	case ddDot:
		if b == '\r' {
			return ddDotCR, false, false
		}
	case ddDotCR:
		if b == '\n' {
			return ddBeginLine, false, true
		}
	case ddCR:
		if b == '\n' {
			return ddBeginLine, true, false
		}
	case ddData:
		if b == '\r' {
			return ddCR, true, false
		}
	}
	return ddData, true, false
}

// takeDirect tells whether the message may be read directly: the wrapper
// sees the plaintext, the 354 is out, and go-smtp's buffer is empty. The
// last holds whenever the first two do, because the wrapper hands go-smtp
// nothing past a DATA line before go-smtp has answered it.
func (c *trackedConn) takeDirect() bool {
	return c != nil && c.plain.Load() && c.inData.Load() && len(c.out) == 0
}

// newDirectData starts reading the message with whatever the client sent
// after the DATA line, held by the wrapper, then from the socket.
func newDirectData(c *trackedConn, max int64) *directData {
	c.grow(cmdBuffer)
	d := &directData{c: c, in: c.buf[c.head:c.tail], max: max}
	c.head, c.tail = 0, 0
	return d
}

// minDirectRead is the least room in the caller's buffer that Read reads
// the socket into; with less, it reads into the wrapper's buffer.
const minDirectRead = 2 << 10

func (d *directData) Read(p []byte) (int, error) {
	n := 0
	for n < len(p) && !d.done {
		if len(d.in) == 0 {
			if d.err != nil {
				break
			}
			// The socket is read straight into p when it has room: the
			// message then reaches the spool with no copy but the
			// kernel's, and step undoes the dot-stuffing in place (it
			// never writes ahead of what it has read). The 354, and
			// whatever replies are held with it, goes out first.
			buf := d.c.buf
			if len(p)-n >= minDirectRead {
				buf = p[n:]
			}
			m, err := d.c.sockRead(buf)
			d.in = buf[:m]
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
		if d.done {
			// What the client sent after the message goes back to the
			// wrapper, to be read as commands; go-smtp's own reader gets
			// just an end-of-data line and ends at once.
			c := d.c
			if len(d.in) > len(c.buf) { // it was read into p
				c.buf = make([]byte, len(d.in))
			}
			c.head, c.tail = 0, copy(c.buf, d.in)
			d.in = nil
			c.out = endOfData
			c.inData.Store(false)
		}
	}
	if d.done {
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
	for len(d.in) > 0 && (n < len(out) || d.tooBig) {
		k := 1
		if d.state == ddData {
			// The fast path: everything up to the next CR is data.
			k = bytes.IndexByte(d.in, '\r')
			if k < 0 {
				k = len(d.in)
			} else if k+2 < len(d.in) && d.in[k+1] == '\n' && d.in[k+2] != '.' && d.in[k+2] != '\r' {
				// And so is the line's CRLF when the next line starts
				// with neither a dot nor a CR: the machine goes CR, LF,
				// then back to ddData at that byte, keeping each. One
				// copy per line instead of three one-byte steps.
				k += 2
			}
		}
		if k == 0 || d.state != ddData {
			var keep, end bool
			d.state, keep, end = ddNext(d.state, d.in[0])
			if end {
				d.in = d.in[1:]
				d.done = true
				return n
			}
			if !keep {
				d.in = d.in[1:]
				continue
			}
			k = 1
		}
		if !d.tooBig {
			k = min(k, len(out)-n)
			if d.max > 0 && d.written+int64(k) > d.max {
				d.tooBig = true
			}
		}
		if !d.tooBig {
			d.written += int64(k)
			if &out[n] != &d.in[0] { // read in place, nothing unstuffed yet
				copy(out[n:], d.in[:k])
			}
			n += k
		}
		d.in = d.in[k:]
	}
	return n
}

// scanDataEnd runs go-smtp's end-of-data state machine over b from *state
// and returns how many bytes belong to the message, end marker included,
// and whether the marker was found. The wrapper uses it when go-smtp reads
// a message itself, to know where the client's commands resume.
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
		var end bool
		*state, _, end = ddNext(*state, b[i])
		i++
		if end {
			return i, true
		}
	}
	return i, false
}
