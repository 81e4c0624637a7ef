package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
)

// conns tracks every accepted connection. go-smtp has no connection cap,
// no per-IP limit and no graceful drain that says 421 to idle clients, so
// the relay wraps the listener and each connection to provide them.
type conns struct {
	mu    sync.Mutex
	all   map[*trackedConn]struct{}
	perIP map[netip.Addr]int
	max   int
	maxIP int
	empty chan struct{} // closed when all is empty during a drain
}

func newConns(max, maxIP int) *conns {
	return &conns{all: map[*trackedConn]struct{}{}, perIP: map[netip.Addr]int{}, max: max, maxIP: maxIP}
}

// admit registers c, or refuses when a limit is reached.
// The returned code is a metric label, the text goes to the client.
func (cs *conns) admit(c *trackedConn) (code, text string) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if cs.max > 0 && len(cs.all) >= cs.max {
		return "limit", "Too many connections"
	}
	if cs.maxIP > 0 && cs.perIP[c.ip] >= cs.maxIP {
		return "limit_per_ip", "Too many connections from your address"
	}
	cs.all[c] = struct{}{}
	cs.perIP[c.ip]++
	return "", ""
}

func (cs *conns) remove(c *trackedConn) {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	if _, ok := cs.all[c]; !ok {
		return
	}
	delete(cs.all, c)
	if cs.perIP[c.ip]--; cs.perIP[c.ip] <= 0 {
		delete(cs.perIP, c.ip)
	}
}

func (cs *conns) snapshot() []*trackedConn {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	out := make([]*trackedConn, 0, len(cs.all))
	for c := range cs.all {
		out = append(out, c)
	}
	return out
}

func (cs *conns) count() int {
	cs.mu.Lock()
	defer cs.mu.Unlock()
	return len(cs.all)
}

// trackedListener admits connections within the limits and answers the
// rest with 421 at once: an SMTP client understands a 421 greeting and
// retries later, while a connection left in the backlog just hangs.
type trackedListener struct {
	net.Listener
	r        *Relay
	implicit bool // behind an implicit-TLS listener: nothing may be written in clear
	// limitLines: this listener never speaks TLS, so the wrapper sees the
	// plaintext and enforces the command line limit itself (see inData).
	limitLines bool
}

func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, r: l.r, implicit: l.implicit, limitLines: l.limitLines}
		if ap, err := netip.ParseAddrPort(c.RemoteAddr().String()); err == nil {
			tc.ip = ap.Addr().Unmap()
		}
		if l.r.draining.Load() {
			l.r.metrics.connectionRefused("draining")
			tc.refuse("4.3.2", "Service shutting down")
			continue
		}
		if code, text := l.r.conns.admit(tc); code != "" {
			l.r.log.Warn("connection refused", "remote", tc.ip.String(), "why", text)
			l.r.metrics.connectionRefused(code)
			tc.refuse("4.7.0", text)
			continue
		}
		l.r.metrics.connectionOpened()
		return tc, nil
	}
}

// trackedConn is the raw TCP connection under go-smtp (and under TLS).
type trackedConn struct {
	net.Conn
	r          *Relay
	ip         netip.Addr
	implicit   bool
	limitLines bool

	reading    atomic.Bool // blocked waiting for client bytes
	closeAfter atomic.Bool // close after the next write (a 421 reply)
	sess       atomic.Pointer[session]
	closed     sync.Once

	// On listeners without TLS, command lines are limited here rather
	// than by go-smtp, whose limit walks every byte, message data
	// included, one at a time. Message lines are limited by the spooler;
	// inData is set when a 354 goes out and cleared at the end-of-data
	// line, found with go-smtp's own rule (scanDataEnd). Under TLS the
	// wrapper sees only ciphertext, so go-smtp keeps that job there.
	inData  atomic.Bool
	lineLen int

	// ahead holds bytes read from the socket but not yet handed to
	// go-smtp, whose 4 KB buffer would otherwise cost a system call per
	// 4 KB of message. Only on listeners without TLS: with STARTTLS,
	// bytes read ahead in clear could otherwise be replayed after the
	// handshake.
	ahead    []byte
	aheadBuf []byte

	// dataAtEnd: the bytes last handed to go-smtp ended with a complete
	// "DATA" line, so after it answers 354 its buffer is empty and the
	// message may be read directly (directdata.go). curLine holds the
	// start of a line split across reads; chunkLeft the BDAT chunk bytes
	// still to pass through.
	dataAtEnd bool
	curLine   []byte
	chunkLeft int64
	ddState   int // go-smtp's end-of-data state while inData
	// dataUntil is the message's deadline (unix nanoseconds) while Data
	// runs; go-smtp's per-command deadlines between BDAT chunks must not
	// extend it.
	dataUntil atomic.Int64
}

const readAhead = 64 << 10

func (c *trackedConn) refuse(enh, text string) {
	if !c.implicit {
		c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c.Conn, "421 %s %s %s, try again later\r\n", enh, c.r.cfg.Hostname, text)
	}
	c.Conn.Close()
}

func (c *trackedConn) Read(p []byte) (int, error) {
	var n int
	var err error
	switch {
	case len(c.ahead) > 0:
		n = copy(p, c.ahead)
		c.ahead = c.ahead[n:]
	case c.limitLines && c.inData.Load() && len(p) < readAhead:
		if c.aheadBuf == nil {
			c.aheadBuf = make([]byte, readAhead)
		}
		c.reading.Store(true)
		var m int
		m, err = c.Conn.Read(c.aheadBuf)
		c.reading.Store(false)
		n = copy(p, c.aheadBuf[:m])
		c.ahead = c.aheadBuf[n:m]
	default:
		c.reading.Store(true)
		n, err = c.Conn.Read(p)
		c.reading.Store(false)
	}
	if n > 0 && c.limitLines {
		var ferr error
		if n, ferr = c.filterCommands(p, n); ferr != nil {
			return 0, ferr
		}
	}
	return n, err
}

// filterCommands walks the plaintext bytes about to be handed to go-smtp
// the way go-smtp will read them: command lines, message data after a 354,
// and BDAT chunks of the declared size. Only command lines are looked at:
// their length is limited, Postfix's ORCPT spelling of a UTF-8 address is
// translated (orcpt.go), and a final DATA line is noted for the fast DATA
// path. Message bytes, in DATA or in a BDAT chunk, pass untouched: treating
// them as commands would let a message's text rewrite itself, or shift the
// chunk boundary and smuggle commands.
func (c *trackedConn) filterCommands(p []byte, n int) (int, error) {
	b := p[:n]
	var out []byte // set only once a line changes
	done := 0      // bytes of p[:n] already accounted for
	emit := func(seg []byte, changed bool) {
		if out == nil && changed {
			out = append(make([]byte, 0, n+64), p[:done]...)
		}
		if out != nil {
			out = append(out, seg...)
		}
	}
	c.dataAtEnd = false
	for len(b) > 0 {
		if c.inData.Load() {
			k, ended := scanDataEnd(&c.ddState, b)
			emit(b[:k], false)
			b, done = b[k:], done+k
			if ended {
				c.inData.Store(false)
			}
			continue
		}
		if c.chunkLeft > 0 {
			k := int(min(int64(len(b)), c.chunkLeft))
			c.chunkLeft -= int64(k)
			emit(b[:k], false)
			b, done = b[k:], done+k
			continue
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			if c.lineLen += len(b); c.lineLen > c.r.cfg.MaxLineLength+1 {
				return 0, smtp.ErrTooLongLine
			}
			c.curLine = append(c.curLine, b[:min(len(b), max(0, 64-len(c.curLine)))]...)
			emit(b, false)
			break
		}
		seg := b[:i+1]
		b = b[i+1:]
		if c.lineLen+i-1 > c.r.cfg.MaxLineLength {
			// go-smtp answers this error with "500 5.4.0 Too long line"
			// and closes the connection.
			return 0, smtp.ErrTooLongLine
		}
		line := seg
		if len(c.curLine) > 0 {
			line = append(c.curLine, seg[:min(len(seg), 64)]...)
		}
		whole := c.lineLen == 0
		c.lineLen = 0
		c.curLine = c.curLine[:0]
		fixed, changed := seg, false
		if whole { // the whole line is in this read
			fixed, changed = fixORCPTLine(seg)
		}
		emit(fixed, changed)
		done += len(seg)
		c.chunkLeft = bdatSize(line)
		c.dataAtEnd = len(b) == 0 && len(c.ahead) == 0 && isDataLine(line)
	}
	if out == nil {
		return n, nil
	}
	k := copy(p, out)
	if k < len(out) {
		c.ahead = append(append([]byte(nil), out[k:]...), c.ahead...)
	}
	return k, nil
}

func isDataLine(line []byte) bool {
	return bytes.EqualFold(line, []byte("DATA\r\n")) || bytes.EqualFold(line, []byte("DATA\n"))
}

// bdatSize is the size of the chunk that follows a BDAT command line, as
// go-smtp parses it (conn.go handleBdat): go-smtp reads exactly that many
// bytes after the line whenever the size parses, even when it refuses the
// command, and none when it does not.
func bdatSize(line []byte) int64 {
	l := strings.TrimRight(string(line), "\r\n")
	cmd, arg, _ := strings.Cut(l, " ")
	if !strings.EqualFold(cmd, "BDAT") {
		return 0
	}
	args := strings.Fields(arg)
	if len(args) == 0 || len(args) > 2 || len(args) == 2 && !strings.EqualFold(args[1], "LAST") {
		return 0
	}
	size, err := strconv.ParseUint(args[0], 10, 32)
	if err != nil {
		return 0
	}
	return int64(size)
}

func (c *trackedConn) Write(p []byte) (int, error) {
	if c.limitLines && bytes.HasPrefix(p, []byte("354 ")) {
		// The message starts; filterCommands finds its end with go-smtp's
		// own end-of-data rule, and commands resume right after it.
		c.inData.Store(true)
		c.ddState = ddBeginLine
		c.lineLen = 0
	}
	n, err := c.Conn.Write(p)
	if c.closeAfter.Load() {
		c.Close()
	}
	return n, err
}

func (c *trackedConn) Close() error {
	err := c.Conn.Close()
	c.closed.Do(func() {
		c.r.conns.remove(c)
		c.r.metrics.connectionClosed()
	})
	return err
}

// SetReadDeadline replaces go-smtp's single ReadTimeout with the timeout
// for the session's state: a client between transactions may idle longer
// than one in the middle of a transaction.
func (c *trackedConn) SetReadDeadline(t time.Time) error {
	if t.IsZero() {
		return c.Conn.SetReadDeadline(t)
	}
	conf := c.r.conf().cfg
	d := conf.IdleTimeout
	if s := c.sess.Load(); s != nil && s.inTransaction() {
		d = conf.CommandTimeout
	}
	dl := time.Now().Add(d)
	if until := c.dataUntil.Load(); until != 0 && until < dl.UnixNano() {
		dl = time.Unix(0, until)
	}
	return c.Conn.SetReadDeadline(dl)
}

func (c *trackedConn) SetDeadline(t time.Time) error {
	if t.IsZero() {
		return c.Conn.SetDeadline(t)
	}
	if err := c.Conn.SetWriteDeadline(t); err != nil {
		return err
	}
	return c.SetReadDeadline(t)
}

// rawConn finds the trackedConn under a go-smtp connection, through TLS.
func rawConn(c net.Conn) *trackedConn {
	for {
		switch x := c.(type) {
		case *trackedConn:
			return x
		case *tls.Conn:
			c = x.NetConn()
		default:
			return nil
		}
	}
}

// idle tells whether the connection sits between transactions with every
// reply sent: go-smtp only reads the next command after answering the
// last, so "blocked in Read outside a transaction" means nothing is owed.
func (c *trackedConn) idle() bool {
	if !c.reading.Load() {
		return false
	}
	s := c.sess.Load()
	return s == nil || !s.inTransaction()
}

// goodbye tells an idle client the relay is going away, then closes.
func (c *trackedConn) goodbye() {
	msg := fmt.Sprintf("421 4.3.2 %s Service shutting down, try again later\r\n", c.r.cfg.Hostname)
	if s := c.sess.Load(); s != nil {
		// Through TLS when the session has it.
		w := s.conn.Conn()
		w.SetWriteDeadline(time.Now().Add(2 * time.Second))
		w.Write([]byte(msg))
	} else if !c.implicit {
		c.Conn.SetWriteDeadline(time.Now().Add(2 * time.Second))
		c.Conn.Write([]byte(msg))
	}
	c.Close()
}
