package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"net"
	"net/netip"
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
	// inData is set when a 354 goes out and cleared by the next reply,
	// which go-smtp only writes once the message is read. Under TLS the
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
	// start of a line split across reads.
	dataAtEnd bool
	curLine   []byte
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
	if n > 0 && c.limitLines && !c.inData.Load() && bytes.Contains(bytes.ToUpper(p[:n]), []byte("ORCPT=RFC822;")) {
		if fixed := fixORCPT(p[:n]); len(fixed) != n || !bytes.Equal(fixed, p[:n]) {
			k := copy(p, fixed)
			c.ahead = append(append([]byte(nil), fixed[k:]...), c.ahead...)
			n = k
		}
	}
	if n > 0 && c.limitLines && !c.inData.Load() {
		if c.lineLen = longestLine(p[:n], c.lineLen, c.r.cfg.MaxLineLength); c.lineLen < 0 {
			// go-smtp answers this error with "500 5.4.0 Too long line"
			// and closes the connection.
			return 0, smtp.ErrTooLongLine
		}
		c.noteLines(p[:n])
	}
	return n, err
}

// noteLines records whether b, the bytes just handed to go-smtp, ended
// with a complete DATA command line and nothing after it.
func (c *trackedConn) noteLines(b []byte) {
	last := bytes.LastIndexByte(b, '\n')
	if last < 0 {
		if len(c.curLine) < 16 {
			c.curLine = append(c.curLine, b[:min(len(b), 16)]...)
		}
		c.dataAtEnd = false
		return
	}
	var line []byte
	if last == len(b)-1 {
		start := bytes.LastIndexByte(b[:last], '\n') + 1
		if start == 0 {
			line = append(c.curLine, b[:last+1]...)
		} else {
			line = b[start : last+1]
		}
		c.dataAtEnd = len(c.ahead) == 0 && (bytes.EqualFold(line, []byte("DATA\r\n")) || bytes.EqualFold(line, []byte("DATA\n")))
		c.curLine = c.curLine[:0]
		return
	}
	c.dataAtEnd = false
	c.curLine = append(c.curLine[:0], b[last+1:min(len(b), last+17)]...)
}

func (c *trackedConn) Write(p []byte) (int, error) {
	if c.limitLines {
		if bytes.HasPrefix(p, []byte("354 ")) {
			c.inData.Store(true)
		} else if c.inData.Load() {
			c.inData.Store(false)
			c.lineLen = 0
		}
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
	return c.Conn.SetReadDeadline(time.Now().Add(d))
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
