package relay

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/netip"
	"runtime"
	"runtime/debug"
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
}

func (l *trackedListener) Accept() (net.Conn, error) {
	for {
		c, err := l.Listener.Accept()
		if err != nil {
			return nil, err
		}
		tc := &trackedConn{Conn: c, r: l.r, implicit: l.implicit}
		tc.plain.Store(!l.implicit)
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
//
// While the session is in clear (plain), it also stands between the
// client and go-smtp's reader, for three jobs go-smtp does badly or not at
// all: it limits command lines (go-smtp's own limit walks every byte,
// message data included, one at a time), it translates Postfix's ORCPT
// spelling of a UTF-8 address (orcpt.go), and it lets the session read a
// DATA message straight from the socket (directdata.go).
//
// To do that safely it must read the stream exactly as go-smtp will, so
// it hands go-smtp only complete command lines, BDAT chunks of the
// declared size, and message data up to go-smtp's end-of-data line. After
// a line whose meaning for the following bytes depends on go-smtp's answer
// (DATA: a message follows only after 354; STARTTLS: a handshake only
// after 220), it hands over nothing more until go-smtp has answered, so
// that go-smtp's buffer is empty at that point and the wrapper knows what
// the next bytes are before passing them on.
type trackedConn struct {
	net.Conn
	r        *Relay
	ip       netip.Addr
	implicit bool

	reading    atomic.Bool // blocked waiting for client bytes
	closeAfter atomic.Bool // close after the next write (a 421 reply)
	sess       atomic.Pointer[session]
	closed     sync.Once

	// held is go-smtp's replies, kept back while the wrapper sees the
	// plaintext and sent in one write just before the wrapper next waits
	// for the client (or closes), as Postfix's smtpd flushes only when its
	// input runs dry. A client that pipelines MAIL, RCPT and DATA then
	// gets three replies in one segment, not three, and each small write
	// on loopback costs about as much as copying 100 KB. A client that
	// waits for each reply makes go-smtp read again, which sends it.
	wmu  sync.Mutex
	held []byte

	// plain: the wrapper sees the client's plaintext: from the start on
	// listeners without implicit TLS, until go-smtp accepts a STARTTLS.
	// From then on it passes bytes through, and go-smtp's own line limit
	// (kept on every listener that offers TLS) takes over.
	plain atomic.Bool
	// tlsAsked: the last line handed over was a STARTTLS, unanswered yet.
	tlsAsked atomic.Bool
	// authAsked: the last line handed over was an AUTH command or a SASL
	// response, unanswered yet; sasl: go-smtp answered it with 334, so
	// the next line is a SASL response, which go-smtp's handleAuth reads
	// as such. Given a command's meaning ("BDAT 4294967295"), it would
	// set the wrapper and go-smtp reading the stream differently.
	authAsked atomic.Bool
	sasl      atomic.Bool
	// inData is set when a 354 goes out and cleared at the end of the
	// message.
	inData atomic.Bool

	// The read side below is used by one goroutine at a time: go-smtp's
	// command loop, or the Data goroutine it starts and waits for.
	//
	// buf[head:tail] holds client bytes read but not yet handed to
	// go-smtp: the unfinished end of a command line, or whatever the
	// client sent after a line the wrapper holds at. Reading ahead also
	// saves go-smtp's 4 KB buffer a system call per 4 KB of BDAT chunk.
	buf        []byte
	head, tail int
	// out is what go-smtp is owed and has not taken: the end of a line
	// that did not fit its buffer, or the end-of-data line after a direct
	// read. It has been looked at already and is handed over as it is.
	out    []byte
	outBuf []byte
	// chunkLeft counts the BDAT chunk bytes still to pass untouched.
	chunkLeft int64
	ddState   int   // go-smtp's end-of-data state while go-smtp reads a message itself
	rerr      error // a command line too long: every later read fails too

	// dataUntil is the message's deadline (unix nanoseconds) while Data
	// runs; go-smtp's per-command deadlines between BDAT chunks must not
	// extend it.
	dataUntil atomic.Int64
}

const (
	cmdBuffer = 4 << 10  // read buffer between messages
	readAhead = 64 << 10 // read buffer once a message or chunk starts
)

var endOfData = []byte(".\r\n")

func (c *trackedConn) refuse(enh, text string) {
	if !c.implicit {
		c.Conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprintf(c.Conn, "421 %s %s %s, try again later\r\n", enh, c.r.cfg.Hostname, text)
	}
	c.Conn.Close()
}

func (c *trackedConn) sockRead(p []byte) (int, error) {
	if err := c.flushHeld(); err != nil {
		return 0, err
	}
	c.reading.Store(true)
	n, err := c.Conn.Read(p)
	c.reading.Store(false)
	return n, err
}

func (c *trackedConn) Read(p []byte) (n int, err error) {
	// go-smtp recovers panics in its command handlers but not in its read
	// loop, which calls this: a bug here, on bytes from any client, would
	// end the process and every session in it. Close this one instead.
	defer func() {
		if v := recover(); v != nil {
			c.r.log.Error("internal error reading a client's commands; closing that connection (please report this with the stack)",
				"panic", panicText(v), "stack", string(debug.Stack()))
			c.Conn.Close()
			n, err = 0, net.ErrClosed
		}
	}()
	if !c.plain.Load() {
		// Bytes the client sent after STARTTLS and before the handshake
		// are dropped with buf, as go-smtp drops its own buffer: replayed
		// after the handshake they would run as commands the client never
		// sent under TLS (CVE-2011-0411).
		c.buf, c.head, c.tail = nil, 0, 0
		return c.sockRead(p)
	}
	if len(c.out) > 0 {
		n := copy(p, c.out)
		c.out = c.out[n:]
		return n, nil
	}
	// go-smtp reads again, so it has answered the line held at.
	c.tlsAsked.Store(false)
	c.authAsked.Store(false)
	if c.tail == c.head && c.chunkLeft > 0 && !c.inData.Load() {
		// A large chunk goes from the socket straight into go-smtp's
		// buffer, without a copy through ours.
		n, err := c.sockRead(p[:min(int64(len(p)), c.chunkLeft)])
		c.chunkLeft -= int64(n)
		return n, err
	}
	for {
		n := c.handOver(p)
		if n > 0 {
			return n, nil
		}
		if c.rerr != nil {
			return 0, c.rerr
		}
		if err := c.fill(); err != nil {
			// go-smtp's handleAuth gives up on any read error without a
			// reply, and its command loop reads on (after a timeout, with
			// a fresh deadline): the next line is a command again.
			c.sasl.Store(false)
			return 0, err
		}
	}
}

// fill reads more client bytes into buf.
func (c *trackedConn) fill() error {
	if c.buf == nil {
		c.buf = make([]byte, cmdBuffer)
	}
	if c.head == c.tail {
		c.head, c.tail = 0, 0
	} else if c.tail == len(c.buf) {
		if c.head == 0 {
			// A command line longer than the buffer, yet within
			// max_line_length.
			c.grow(2 * len(c.buf))
		} else {
			c.tail = copy(c.buf, c.buf[c.head:c.tail])
			c.head = 0
		}
	}
	n, err := c.sockRead(c.buf[c.tail:])
	c.tail += n
	if n > 0 {
		return nil
	}
	if err == nil {
		err = io.ErrNoProgress
	}
	return err
}

// grow makes buf at least size bytes, keeping the unread bytes.
func (c *trackedConn) grow(size int) {
	if len(c.buf) >= size {
		return
	}
	b := make([]byte, size)
	c.tail = copy(b, c.buf[c.head:c.tail])
	c.head = 0
	c.buf = b
}

// handOver moves what go-smtp may read now from buf into p (the end of a
// line that does not fit goes to out) and returns how much went into p:
// 0 means more client bytes are needed, or rerr is set.
func (c *trackedConn) handOver(p []byte) int {
	if hook := c.r.handOverHook.Load(); hook != nil {
		(*hook)()
	}
	n := 0
	for n < len(p) && c.tail > c.head && len(c.out) == 0 {
		in := c.buf[c.head:c.tail]
		switch {
		case c.inData.Load():
			// go-smtp reads the message itself (the session did not read
			// it directly): hand it over up to the end-of-data line, found
			// with go-smtp's own rule.
			k, ended := scanDataEnd(&c.ddState, in[:min(len(in), len(p)-n)])
			n += copy(p[n:], in[:k])
			c.head += k
			if ended {
				c.inData.Store(false)
				return n
			}
		case c.chunkLeft > 0:
			// Message bytes of a BDAT chunk: never looked at, or a chunk's
			// text could rewrite itself or move the chunk's end.
			k := int(min(int64(min(len(in), len(p)-n)), c.chunkLeft))
			n += copy(p[n:], in[:k])
			c.head += k
			c.chunkLeft -= int64(k)
		default:
			i := bytes.IndexByte(in, '\n')
			if i < 0 {
				if len(in) > c.r.cfg.MaxLineLength+1 { // +1: a CR whose LF is still to come
					c.rerr = smtp.ErrTooLongLine
				}
				return n
			}
			if i-1 > c.r.cfg.MaxLineLength { // i-1: the CR before the LF is not content
				// go-smtp answers this error with "500 5.4.0 Too long line"
				// and closes the connection.
				c.rerr = smtp.ErrTooLongLine
				return n
			}
			line := in[:i+1]
			c.head += i + 1
			if c.sasl.Swap(false) {
				// A SASL response: passed as it is, held like a command
				// until go-smtp answers (334 again, or the end of AUTH).
				k := copy(p[n:], line)
				n += k
				if k < len(line) {
					c.outBuf = append(c.outBuf[:0], line[k:]...)
					c.out = c.outBuf
				}
				c.authAsked.Store(true)
				return n
			}
			fixed, _ := fixORCPTLine(line)
			k := copy(p[n:], fixed)
			n += k
			if k < len(fixed) {
				c.outBuf = append(c.outBuf[:0], fixed[k:]...)
				c.out = c.outBuf
			}
			c.chunkLeft = bdatSize(line)
			if c.chunkLeft > 0 {
				c.grow(readAhead)
			}
			switch turnsOnReply(line) {
			case "DATA":
				// Data follows only if go-smtp answers 354.
				return n
			case "STARTTLS":
				c.tlsAsked.Store(true)
				return n
			case "AUTH":
				c.authAsked.Store(true)
				return n
			}
		}
	}
	return n
}

// turnsOnReply tells whether the bytes after this command line mean
// something that depends on go-smtp's answer to it, as go-smtp parses the
// line (parseCmd): "DATA" (a message after 354), "STARTTLS" (a handshake
// after 220), "AUTH" (a SASL response after 334), or "". It errs on the
// side of naming a command: holding after a line go-smtp refuses costs
// nothing.
func turnsOnReply(line []byte) string {
	if len(line) < 4 {
		return ""
	}
	if bytes.EqualFold(line[:4], []byte("DATA")) {
		return "DATA"
	}
	if bytes.EqualFold(line[:4], []byte("AUTH")) {
		return "AUTH"
	}
	// go-smtp upper-cases the whole line first, so "ſTARTTLS" (long s)
	// is a STARTTLS to it too.
	if len(line) >= 8 && (line[0]|0x20 == 's' || line[0] >= 0x80) &&
		strings.HasPrefix(strings.ToUpper(string(line)), "STARTTLS") {
		return "STARTTLS"
	}
	return ""
}

// bdatSize is the size of the chunk that follows a BDAT command line, as
// go-smtp parses it (conn.go handleBdat): go-smtp reads exactly that many
// bytes after the line whenever the size parses, even when it refuses the
// command, and none when it does not.
func bdatSize(line []byte) int64 {
	if len(line) < 5 || !bytes.EqualFold(line[:5], []byte("BDAT ")) {
		return 0
	}
	args := strings.Fields(strings.TrimRight(string(line[5:]), "\r\n"))
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
	if len(p) >= 4 && c.plain.Load() {
		switch string(p[:4]) {
		case "354 ":
			// The message starts. The session reads it directly, or
			// go-smtp does and handOver finds its end with go-smtp's rule.
			c.ddState = ddBeginLine
			c.inData.Store(true)
		case "334 ":
			if c.authAsked.Load() {
				c.sasl.Store(true)
			}
		case "220 ":
			if c.tlsAsked.Load() {
				// go-smtp starts the handshake on this connection: from
				// here the wrapper sees only ciphertext.
				c.plain.Store(false)
			}
		}
	}
	// Not held: after STARTTLS's 220 (go-smtp's TLS layer writes records
	// that must go now), a reply the connection closes after, and a write
	// from another goroutine while the session waits for the client (the
	// shutdown's 421).
	if c.plain.Load() && !c.closeAfter.Load() && !c.reading.Load() {
		c.wmu.Lock()
		if len(c.held)+len(p) <= maxHeld {
			c.held = append(c.held, p...)
			c.wmu.Unlock()
			return len(p), nil
		}
		c.wmu.Unlock()
	}
	if err := c.flushHeld(); err != nil {
		return 0, err
	}
	n, err := c.Conn.Write(p)
	if c.closeAfter.Load() {
		c.Close()
	}
	return n, err
}

// maxHeld bounds the replies held back: a client that pipelines commands
// without reading the replies gets them written (and go-smtp's write
// timeout) once this much is owed.
const maxHeld = 4 << 10

// flushHeld writes the held replies.
func (c *trackedConn) flushHeld() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if len(c.held) == 0 {
		return nil
	}
	_, err := c.Conn.Write(c.held)
	c.held = c.held[:0]
	return err
}

func (c *trackedConn) Close() error {
	c.flushHeld() // QUIT's 221, go-smtp's last words
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

// panicText describes a recovered value without quoting client data: a
// runtime error says only what failed; anything else, only its type.
func panicText(v any) string {
	if re, ok := v.(runtime.Error); ok {
		return re.Error()
	}
	return fmt.Sprintf("%T", v)
}
