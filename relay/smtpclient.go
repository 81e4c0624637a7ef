package relay

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"encoding/base64"
	"errors"
	"fmt"
	"io"
	"net"
	"net/textproto"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// upClient is the relay's SMTP client for the upstream. go-smtp's client
// served at first, but it cost a quarter of the relay's CPU (textproto's
// dot-stuffing writes one byte at a time), re-sent EHLO after every RSET
// (strict servers answer 503), forced BODY=8BITMIME, and could not try
// STARTTLS without a second connection. This one does only what a relay
// needs: EHLO, STARTTLS, AUTH, MAIL, RCPT, DATA, RSET, NOOP, QUIT, with a
// deadline on every exchange.
type upClient struct {
	raw  net.Conn // the TCP connection, for deadlines
	conn net.Conn // raw, or TLS over it
	text *textproto.Conn
	ext  map[string]string
	tls  bool
	// bdat: send messages with BDAT when the upstream offers CHUNKING.
	bdat bool
	// closed: this client closed the connection itself, so the pool must
	// not take it back even when the upstream's last word was a reply.
	closed bool

	cmdTimeout  time.Duration
	dataTimeout time.Duration
}

func newUpClient(raw net.Conn, cmdTimeout, dataTimeout time.Duration) *upClient {
	c := &upClient{raw: raw, cmdTimeout: cmdTimeout, dataTimeout: dataTimeout}
	c.setConn(raw)
	return c
}

func (c *upClient) setConn(conn net.Conn) {
	c.conn = conn
	c.text = textproto.NewConn(conn)
	// A message is ~100 KB; 4 KB buffers would mean a write system call
	// every 4 KB.
	c.text.W = bufio.NewWriterSize(conn, 64<<10)
}

func (c *upClient) Close() error {
	c.closed = true
	return c.conn.Close()
}

// reply reads one (possibly multi-line) reply and turns anything but an
// expected code into an *smtp.SMTPError, so callers pass the upstream's
// verdict through with its own code. A 421 is the exception: whatever the
// command, it means the upstream is closing the channel, which is a
// transport failure like any other; passed through, it would tell our
// client that we are closing ours.
func (c *upClient) reply(expect int) (int, string, error) {
	code, msg, err := c.text.ReadResponse(expect)
	var pe *textproto.Error
	if errors.As(err, &pe) {
		se := toSMTPError(pe.Code, pe.Msg)
		if se.Code == 421 {
			c.conn.Close()
			return code, msg, &closingError{code: se.Code, enh: se.EnhancedCode}
		}
		return code, msg, se
	}
	return code, msg, err
}

// closingError is an upstream's 421. It keeps the codes for the log, not
// the text, and is deliberately not an *smtp.SMTPError.
type closingError struct {
	code int
	enh  smtp.EnhancedCode
}

func (e *closingError) Error() string {
	return fmt.Sprintf("the upstream closed the connection (%d %d.%d.%d)", e.code, e.enh[0], e.enh[1], e.enh[2])
}

// cmd sends one command and reads its reply within the command timeout.
func (c *upClient) cmd(expect int, format string, args ...any) (int, string, error) {
	c.raw.SetDeadline(time.Now().Add(c.cmdTimeout))
	defer c.raw.SetDeadline(time.Time{})
	if err := c.text.PrintfLine(format, args...); err != nil {
		return 0, "", err
	}
	return c.reply(expect)
}

// toSMTPError splits "X.Y.Z text" into an enhanced code and the text.
func toSMTPError(code int, msg string) *smtp.SMTPError {
	se := &smtp.SMTPError{Code: code, Message: msg}
	first, rest, _ := strings.Cut(msg, " ")
	parts := strings.Split(first, ".")
	if len(parts) == 3 {
		var enh smtp.EnhancedCode
		ok := true
		for i, p := range parts {
			n, err := strconv.Atoi(p)
			if err != nil {
				ok = false
				break
			}
			enh[i] = n
		}
		if ok {
			se.EnhancedCode, se.Message = enh, rest
		}
	}
	return se
}

// greet reads the banner.
func (c *upClient) greet() error {
	c.raw.SetDeadline(time.Now().Add(c.cmdTimeout))
	defer c.raw.SetDeadline(time.Time{})
	_, _, err := c.reply(220)
	return err
}

// hello sends EHLO (HELO if refused) and records the extensions.
func (c *upClient) hello(name string) error {
	_, msg, err := c.cmd(250, "EHLO %s", name)
	var se *smtp.SMTPError
	if errors.As(err, &se) && (se.Code == 500 || se.Code == 502) {
		c.ext = map[string]string{}
		_, _, err = c.cmd(250, "HELO %s", name)
		return err
	}
	if err != nil {
		return err
	}
	c.ext = map[string]string{}
	lines := strings.Split(msg, "\n")
	for _, l := range lines[1:] {
		k, v, _ := strings.Cut(l, " ")
		c.ext[strings.ToUpper(k)] = v
	}
	return nil
}

func (c *upClient) has(ext string) bool {
	_, ok := c.ext[ext]
	return ok
}

// startTLS upgrades the connection; the caller must say EHLO again.
func (c *upClient) startTLS(cfg *tls.Config) error {
	if _, _, err := c.cmd(220, "STARTTLS"); err != nil {
		return err
	}
	tc := tls.Client(c.raw, cfg)
	c.raw.SetDeadline(time.Now().Add(c.cmdTimeout))
	err := tc.Handshake()
	c.raw.SetDeadline(time.Time{})
	if err != nil {
		return err
	}
	c.setConn(tc)
	c.tls = true
	return nil
}

// auth runs a SASL exchange (RFC 4954).
func (c *upClient) auth(a sasl.Client) error {
	mech, resp, err := a.Start()
	if err != nil {
		return err
	}
	line := "AUTH " + mech
	if resp != nil {
		enc := base64.StdEncoding.EncodeToString(resp)
		if enc == "" {
			enc = "="
		}
		line += " " + enc
	}
	code, msg, err := c.cmd(0, "%s", line)
	for err == nil && code == 334 {
		challenge, derr := base64.StdEncoding.DecodeString(msg)
		if derr != nil {
			c.cmd(0, "*")
			return fmt.Errorf("bad AUTH challenge from the upstream: %v", derr)
		}
		if resp, err = a.Next(challenge); err != nil {
			c.cmd(0, "*")
			return err
		}
		code, msg, err = c.cmd(0, "%s", base64.StdEncoding.EncodeToString(resp))
	}
	if err != nil {
		return err
	}
	if code != 235 {
		return toSMTPError(code, msg)
	}
	return nil
}

// mail sends MAIL FROM with the parameters that must travel end to end.
// SIZE is left out (a rewrite changes it) and AUTH= described the client's
// session with us, not ours with the upstream.
func (c *upClient) mail(from string, opts *smtp.MailOptions) error {
	_, _, err := c.cmd(250, "%s", c.mailCmd(from, opts))
	return err
}

func (c *upClient) mailCmd(from string, opts *smtp.MailOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "MAIL FROM:<%s>", from)
	if opts != nil {
		if opts.Body != "" && c.has("8BITMIME") {
			b.WriteString(" BODY=" + string(opts.Body))
		}
		if opts.UTF8 {
			b.WriteString(" SMTPUTF8")
		}
		if opts.RequireTLS {
			b.WriteString(" REQUIRETLS")
		}
		if c.has("DSN") {
			if opts.Return != "" {
				b.WriteString(" RET=" + string(opts.Return))
			}
			if opts.EnvelopeID != "" {
				b.WriteString(" ENVID=" + xtext(opts.EnvelopeID))
			}
		}
	}
	return b.String()
}

// rcpt sends RCPT TO with the DSN parameters.
func (c *upClient) rcpt(to string, opts *smtp.RcptOptions) error {
	_, _, err := c.cmd(25, "%s", c.rcptCmd(to, opts))
	return err
}

// mailRcpt sends MAIL and the first RCPT in one write when the upstream
// offers PIPELINING (RFC 2920), one after the other otherwise, and reads
// both replies: one round trip per message instead of two. mailErr is
// MAIL's failure; then RCPT's reply (503, most likely) has been read too,
// if the connection still works, so the two stay in step.
func (c *upClient) mailRcpt(from string, mopts *smtp.MailOptions, to string, ropts *smtp.RcptOptions) (mailErr, rcptErr error) {
	if !c.has("PIPELINING") {
		if err := c.mail(from, mopts); err != nil {
			return err, nil
		}
		return nil, c.rcpt(to, ropts)
	}
	c.raw.SetDeadline(time.Now().Add(c.cmdTimeout))
	defer c.raw.SetDeadline(time.Time{})
	if _, err := c.text.W.WriteString(c.mailCmd(from, mopts) + "\r\n"); err != nil {
		return err, nil
	}
	if err := c.text.PrintfLine("%s", c.rcptCmd(to, ropts)); err != nil {
		return err, nil
	}
	if _, _, mailErr = c.reply(250); mailErr != nil {
		if isSMTPReply(mailErr) {
			if _, _, err := c.reply(25); err != nil && !isSMTPReply(err) {
				return err, nil // the connection failed after all
			}
		}
		return mailErr, nil
	}
	_, _, rcptErr = c.reply(25)
	return nil, rcptErr
}

func (c *upClient) rcptCmd(to string, opts *smtp.RcptOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "RCPT TO:<%s>", to)
	if opts != nil && c.has("DSN") {
		if len(opts.Notify) > 0 {
			n := make([]string, len(opts.Notify))
			for i, v := range opts.Notify {
				n[i] = string(v)
			}
			b.WriteString(" NOTIFY=" + strings.Join(n, ","))
		}
		if addr := opts.OriginalRecipient; addr != "" {
			// RFC 3461 rfc822 addresses are ASCII; a UTF-8 one travels as
			// RFC 6533 utf-8, raw to an SMTPUTF8 server, escaped otherwise.
			switch {
			case isASCII(addr) && opts.OriginalRecipientType != smtp.DSNAddressTypeUTF8:
				b.WriteString(" ORCPT=rfc822;" + xtext(addr))
			case c.has("SMTPUTF8"):
				b.WriteString(" ORCPT=utf-8;" + utf8AddrUnitext(addr))
			default:
				b.WriteString(" ORCPT=utf-8;" + utf8AddrXtext(addr))
			}
		}
	}
	return b.String()
}

// xtext encodes a DSN parameter value (RFC 3461 §4).
func xtext(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		ch := s[i]
		if ch < '!' || ch > '~' || ch == '+' || ch == '=' {
			fmt.Fprintf(&b, "+%02X", ch)
		} else {
			b.WriteByte(ch)
		}
	}
	return b.String()
}

// errNothingSent marks a failure of the DATA command itself, before the
// upstream has seen a byte of the message: the one failure after RCPT that
// is safe to try again on another connection.
var errNothingSent = errors.New("the upstream connection failed before any of the message was sent")

// upstreamWriteError is the upstream's failure while a copy streamed: a
// write to the connection failed or, under BDAT, the upstream refused a
// chunk. A refusal inside stays an *smtp.SMTPError to errors.As, so it
// reaches the client as the upstream's reply.
type upstreamWriteError struct{ err error }

func (e *upstreamWriteError) Error() string { return "sending the message: " + e.err.Error() }
func (e *upstreamWriteError) Unwrap() error { return e.err }

// data sends the message written by write and returns the final reply's
// text. If write fails the connection is closed before the message is
// complete (no final dot, no LAST chunk), so the upstream never accepts a
// truncated copy.
func (c *upClient) data(write func(io.Writer) error) (string, error) {
	// BDAT sends the whole message before the upstream says a word, so
	// it needs a connection known to be quiet: a transaction opened at
	// RCPT can go stale while the client uploads. Anything else (a hang-up,
	// an unasked 421, a TLS record) goes the DATA way, whose reply to
	// DATA tells, and nothing of the message has been sent when it fails.
	if c.bdat && c.has("CHUNKING") && c.quiet() {
		return c.chunked(write)
	}
	if _, _, err := c.cmd(354, "DATA"); err != nil {
		if !isSMTPReply(err) {
			// The connection is gone (an idle upstream hung up while the
			// client was still uploading).
			return "", fmt.Errorf("%w: %w", errNothingSent, err)
		}
		return "", err
	}
	c.raw.SetDeadline(time.Now().Add(c.dataTimeout))
	defer c.raw.SetDeadline(time.Time{})
	dw := &dotWriter{w: c.text.W, bol: true}
	if err := write(dw); err != nil {
		c.Close()
		if dw.failed {
			// The upstream went away mid-transfer: its failure, not the
			// writer's.
			return "", &upstreamWriteError{err}
		}
		return "", err
	}
	if err := dw.close(); err != nil {
		return "", err
	}
	_, msg, err := c.reply(250)
	return msg, err
}

// chunked sends the message as BDAT chunks (RFC 3030). Against DATA it
// saves the round trip for the 354 and the dot-stuffing pass over every
// line, and the bytes go out exactly as written, a last line without CRLF
// included. The message is copied into a pooled chunk buffer; most fit in
// one chunk, sent as one "BDAT n LAST" in the same write as its command.
func (c *upClient) chunked(write func(io.Writer) error) (string, error) {
	c.raw.SetDeadline(time.Now().Add(c.dataTimeout))
	defer c.raw.SetDeadline(time.Time{})
	buf := chunkBufs.Get().(*[]byte)
	defer chunkBufs.Put(buf)
	cw := &chunkWriter{c: c, buf: *buf, n: chunkRoom}
	err := write(cw)
	if err == nil && cw.err == nil {
		if err = cw.send(true); err == nil {
			_, msg, err := c.reply(250)
			return msg, err
		}
	}
	// Nothing is accepted without the LAST chunk's 250: closing here
	// leaves the upstream with no message. A writer that went on after a
	// failed Write does not get to finish the transaction either.
	c.Close()
	if cw.err != nil {
		return "", &upstreamWriteError{cw.err}
	}
	return "", err
}

// chunkRoom is kept free before each chunk for its BDAT command, so that
// command and chunk leave in one write without a copy.
const chunkRoom = len("BDAT 18446744073709551615 LAST\r\n")

// chunkSize is the most one BDAT chunk carries. It is above the size of
// nearly all mail, and bounds what an upstream that refuses the first
// chunk still has to read and discard.
const chunkSize = 256 << 10

var chunkBufs = sync.Pool{New: func() any {
	b := make([]byte, chunkRoom+chunkSize)
	return &b
}}

// chunkWriter collects the message into BDAT chunks. With PIPELINING a
// chunk goes out before the previous one's reply is read, so the upstream
// is never idle waiting for us; without it, each reply is read first, as
// RFC 3030 requires.
type chunkWriter struct {
	c      *upClient
	buf    []byte // chunkRoom bytes of room, then the chunk
	n      int    // end of the chunk in buf
	unread bool   // a chunk was sent whose reply is not read yet
	err    error  // the first failure, or refusal; every later Write returns it
}

func (w *chunkWriter) Write(p []byte) (int, error) {
	if w.err != nil {
		return 0, w.err // RFC 3030: no chunk after a refusal
	}
	total := len(p)
	for len(p) > 0 {
		k := copy(w.buf[w.n:], p)
		w.n += k
		p = p[k:]
		if w.n == len(w.buf) {
			if err := w.send(false); err != nil {
				return 0, err
			}
		}
	}
	return total, nil
}

// send writes the chunk with its BDAT command in front and reads the
// replies the protocol allows to be outstanding no longer: all but the
// newest one with PIPELINING, all of them without. The LAST chunk's reply
// is left to the caller.
func (w *chunkWriter) send(last bool) error {
	size := w.n - chunkRoom
	cmd := "BDAT " + strconv.Itoa(size)
	if last {
		cmd += " LAST"
	}
	cmd += "\r\n"
	start := chunkRoom - len(cmd)
	copy(w.buf[start:], cmd)
	if _, err := w.c.conn.Write(w.buf[start:w.n]); err != nil {
		w.err = err
		return err
	}
	w.n = chunkRoom
	if w.unread {
		w.unread = false
		if err := w.chunkReply(); err != nil {
			return err
		}
	}
	if last {
		return nil
	}
	if !w.c.has("PIPELINING") {
		return w.chunkReply()
	}
	w.unread = true
	return nil
}

func (w *chunkWriter) chunkReply() error {
	_, _, err := w.c.reply(250)
	if err != nil {
		// No more chunks after a refusal (RFC 3030). The connection is
		// closed rather than brought back in step: refusals are rare.
		w.err = err
	}
	return err
}

func (c *upClient) noop() error { _, _, err := c.cmd(250, "NOOP"); return err }

func (c *upClient) quit() {
	c.cmd(221, "QUIT")
	c.conn.Close()
}

// dotWriter does SMTP's dot-stuffing (RFC 5321 §4.5.2) a line at a time
// rather than a byte at a time, and turns any bare LF into CRLF so that
// nothing we send can end the DATA early or be read as a second message.
type dotWriter struct {
	w      *bufio.Writer
	bol    bool // at the beginning of a line
	lastCR bool
	// failed: a write to the connection failed. The writer's caller may
	// wrap or replace the error; this says whose failure it was.
	failed bool
}

func (d *dotWriter) Write(p []byte) (int, error) {
	n, err := d.write(p)
	if err != nil {
		d.failed = true
	}
	return n, err
}

func (d *dotWriter) write(p []byte) (int, error) {
	n := len(p)
	for len(p) > 0 {
		if d.bol && p[0] == '.' {
			if err := d.w.WriteByte('.'); err != nil {
				return 0, err
			}
		}
		// run is how much of p goes out as it is: whole CRLF lines up to
		// a line that starts with a dot or ends in a bare LF. Writing it
		// at once, rather than a line at a time, halves this writer's cost.
		run, lastCR := 0, d.lastCR
		for {
			i := bytes.IndexByte(p[run:], '\n')
			if i < 0 {
				if _, err := d.w.Write(p); err != nil {
					return 0, err
				}
				d.bol, d.lastCR = false, p[len(p)-1] == '\r'
				return n, nil
			}
			at := run + i
			if at > 0 && p[at-1] != '\r' || at == 0 && !lastCR {
				// A bare LF: what comes before it, then CRLF.
				d.w.Write(p[:at])
				if _, err := d.w.WriteString("\r\n"); err != nil {
					return 0, err
				}
				p = p[at+1:]
				break
			}
			run, lastCR = at+1, false
			if run == len(p) || p[run] == '.' {
				if _, err := d.w.Write(p[:run]); err != nil {
					return 0, err
				}
				p = p[run:]
				break
			}
		}
		d.bol, d.lastCR = true, false
	}
	return n, nil
}

func (d *dotWriter) close() error {
	if !d.bol {
		d.w.WriteString("\r\n")
	}
	d.w.WriteString(".\r\n")
	return d.w.Flush()
}
