package relay

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/url"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Upstream is the next hop. The relay opens one transaction per recipient
// group, at that group's first RCPT, so that the upstream's verdict on each
// recipient reaches the client live.
type Upstream interface {
	// Begin sends MAIL FROM on a ready connection.
	Begin(ctx context.Context, from string, opts *smtp.MailOptions) (Tx, error)
	// Check tells whether the upstream answers, for readiness probes.
	Check(ctx context.Context) error
	Close() error
}

// Tx is one upstream mail transaction. Errors that are *smtp.SMTPError are
// the upstream's own replies; any other error is a transport failure, which
// the relay always treats as temporary.
type Tx interface {
	Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error
	// Data streams the message through write and returns the final reply.
	// If write fails, the message is abandoned without the final dot so the
	// upstream never accepts a truncated copy.
	Data(ctx context.Context, write func(io.Writer) error) (Reply, error)
	// Abort ends the transaction without sending a message (RSET).
	Abort()
}

// Reply is an upstream's answer to the end of DATA.
type Reply struct {
	Code    int    `json:"code"`
	Text    string `json:"text"`
	QueueID string `json:"queue_id"`
}

// UpstreamURL is a parsed --upstream value.
type UpstreamURL struct {
	// Scheme is smtp (opportunistic STARTTLS), starttls (STARTTLS
	// required and verified) or smtps (implicit TLS).
	Scheme   string
	Addr     string // host:port
	Host     string
	User     string
	Password string
}

// ParseUpstreamURL parses smtp://, starttls:// and smtps:// URLs with
// optional user:pass@ and a default port per scheme.
func ParseUpstreamURL(s string) (UpstreamURL, error) {
	u, err := url.Parse(s)
	if err != nil {
		return UpstreamURL{}, fmt.Errorf("%q is not a URL: %v", redactURL(s), err)
	}
	var port string
	switch u.Scheme {
	case "smtp":
		port = "25"
	case "starttls":
		port = "587"
	case "smtps":
		port = "465"
	default:
		return UpstreamURL{}, fmt.Errorf("%q: scheme must be smtp://, starttls:// or smtps://", redactURL(s))
	}
	if u.Hostname() == "" {
		return UpstreamURL{}, fmt.Errorf("%q has no host", redactURL(s))
	}
	if u.Path != "" && u.Path != "/" {
		return UpstreamURL{}, fmt.Errorf("%q: an upstream URL takes no path", redactURL(s))
	}
	if p := u.Port(); p != "" {
		port = p
	}
	out := UpstreamURL{Scheme: u.Scheme, Host: u.Hostname(), Addr: net.JoinHostPort(u.Hostname(), port)}
	if u.User != nil {
		out.User = u.User.Username()
		out.Password, _ = u.User.Password()
	}
	return out, nil
}

// redactURL hides a password in a URL so it can appear in errors and logs.
func redactURL(s string) string {
	u, err := url.Parse(s)
	if err != nil || u.User == nil {
		return s
	}
	if _, ok := u.User.Password(); ok {
		u.User = url.UserPassword(u.User.Username(), "xxxxx")
	}
	return u.String()
}

// SMTPUpstreamOptions configures NewSMTPUpstream.
type SMTPUpstreamOptions struct {
	URL            UpstreamURL
	RootCAs        *x509.CertPool // nil: system roots
	ServerName     string         // TLS name to verify; default URL host
	Hostname       string         // our EHLO name
	PoolSize       int
	ConnectTimeout time.Duration
	CommandTimeout time.Duration
	DataTimeout    time.Duration
	NoChunking     bool // DATA even when the upstream offers CHUNKING
}

// LoadCAFile reads a PEM bundle for --upstream-ca.
func LoadCAFile(path string) (*x509.CertPool, error) {
	pem, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s holds no PEM certificate", path)
	}
	return pool, nil
}

// smtpUpstream is an SMTP client with a bounded pool of idle connections.
// Apps usually send many small messages; a new TCP+TLS+AUTH handshake for
// each would cost more than the rewrite.
type smtpUpstream struct {
	opt SMTPUpstreamOptions

	mu     sync.Mutex
	idle   []*upConn
	closed bool

	// noStartTLS remembers, until the deadline, that an smtp:// upstream
	// offers no STARTTLS, so that we do not dial twice for every connection.
	noStartTLSUntil atomic.Int64
}

type upConn struct {
	c        *upClient
	lastUsed time.Time
}

// idleLimit bounds how long a pooled connection may sit unused. Servers drop
// idle clients (Postfix after 300 s); a shorter limit avoids paying a
// timeout on a connection the peer already forgot.
const idleLimit = 60 * time.Second

// NewSMTPUpstream returns an Upstream that speaks SMTP to opt.URL.
func NewSMTPUpstream(opt SMTPUpstreamOptions) Upstream {
	if opt.ServerName == "" {
		opt.ServerName = opt.URL.Host
	}
	return &smtpUpstream{opt: opt}
}

// UpstreamError is a transport-level upstream failure (connect, TLS, AUTH,
// timeout, dropped connection). The client always sees it as temporary.
type UpstreamError struct {
	Phase string // connect, tls, auth, mail, rcpt, data
	Err   error
}

func (e *UpstreamError) Error() string { return "upstream " + e.Phase + ": " + e.Err.Error() }
func (e *UpstreamError) Unwrap() error { return e.Err }

func (u *smtpUpstream) Begin(ctx context.Context, from string, opts *smtp.MailOptions) (Tx, error) {
	conn, reused, err := u.get(ctx)
	if err != nil {
		return nil, err
	}
	if refusal := unsupported(conn.c, opts); refusal != nil {
		u.put(conn)
		return nil, refusal
	}
	if conn.c.has("PIPELINING") {
		// MAIL goes out with the first RCPT (smtpTx.Rcpt).
		return &smtpTx{up: u, conn: conn, mail: &pendingMail{from: from, opts: opts, reused: reused}}, nil
	}
	err = conn.c.mail(from, opts)
	if err != nil && reused && !isSMTPReply(err) {
		if conn, err = u.redial(ctx, conn, opts); err != nil {
			return nil, err
		}
		err = conn.c.mail(from, opts)
	}
	if err != nil {
		return nil, u.mailFailed(conn, err)
	}
	return &smtpTx{up: u, conn: conn}, nil
}

// redial replaces a pooled connection that failed at the first command of
// a transaction: the upstream dropped it while it sat idle. No transaction
// exists yet, so none can be duplicated by starting afresh; this replaces
// a NOOP round trip before every reuse. The new connection may refuse
// what opts need (a different upstream behind the name); it is then
// pooled and the refusal returned.
func (u *smtpUpstream) redial(ctx context.Context, dead *upConn, opts *smtp.MailOptions) (*upConn, error) {
	dead.c.Close()
	conn, err := u.dial(ctx)
	if err != nil {
		return nil, err
	}
	if refusal := unsupported(conn.c, opts); refusal != nil {
		u.put(conn)
		return nil, refusal
	}
	return conn, nil
}

// mailFailed turns a failed MAIL into the transaction's error, and pools or
// closes the connection.
func (u *smtpUpstream) mailFailed(conn *upConn, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) && se.Code == 530 {
		// "Authentication required": the upstream wants credentials
		// this relay was not given. That is our configuration, not
		// the message: temporary, so mail waits for the fix.
		conn.c.Close()
		// The reply's text is left out: this error is logged, and an
		// upstream's text may name addresses.
		return &UpstreamError{Phase: "auth", Err: fmt.Errorf(
			"%s requires AUTH (%d %d.%d.%d); give the upstream URL user:password@ (and use starttls:// or smtps://)",
			u.opt.URL.Addr, se.Code, se.EnhancedCode[0], se.EnhancedCode[1], se.EnhancedCode[2])}
	}
	return u.fail(conn, "mail", err)
}

// unsupported refuses a transaction the upstream cannot carry as the
// client asked for it.
func unsupported(c *upClient, opts *smtp.MailOptions) error {
	switch {
	case opts != nil && opts.UTF8 && !c.has("SMTPUTF8"):
		return errUpstreamNoSMTPUTF8
	case opts != nil && opts.RequireTLS && !c.has("REQUIRETLS"):
		return errUpstreamNoRequireTLS
	}
	return nil
}

// fail classifies an error from a connection in use. An SMTP reply leaves
// the connection usable, so it goes back to the pool; anything else means
// the connection is broken.
func (u *smtpUpstream) fail(conn *upConn, phase string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		u.put(conn)
		return se
	}
	conn.c.Close()
	return &UpstreamError{Phase: phase, Err: err}
}

// get returns a pooled connection, unchecked (see Begin), or a new one;
// reused tells which.
func (u *smtpUpstream) get(ctx context.Context) (conn *upConn, reused bool, err error) {
	for {
		u.mu.Lock()
		n := len(u.idle)
		if n == 0 {
			u.mu.Unlock()
			break
		}
		conn := u.idle[n-1]
		u.idle = u.idle[:n-1]
		u.mu.Unlock()
		if time.Since(conn.lastUsed) > idleLimit {
			conn.c.Close()
			continue
		}
		return conn, true, nil
	}
	conn, err = u.dial(ctx)
	return conn, false, err
}

func (u *smtpUpstream) put(conn *upConn) {
	if conn.c.closed {
		return
	}
	conn.lastUsed = time.Now()
	u.mu.Lock()
	if u.closed || len(u.idle) >= u.opt.PoolSize {
		u.mu.Unlock()
		conn.c.quit()
		return
	}
	u.idle = append(u.idle, conn)
	u.mu.Unlock()
}

func (u *smtpUpstream) dial(ctx context.Context) (*upConn, error) {
	ctx, cancel := context.WithTimeout(ctx, u.opt.ConnectTimeout)
	defer cancel()
	c, err := u.open(ctx, time.Now().UnixNano() >= u.noStartTLSUntil.Load())
	var ue *UpstreamError
	if err != nil && errors.As(err, &ue) && ue.Phase == "tls" && u.opt.URL.Scheme == "smtp" && ctx.Err() == nil {
		// Opportunistic TLS failed in the handshake: fall back to
		// plaintext, as Postfix's "may" level does, and remember that
		// for a while instead of failing every connection the same way.
		u.noStartTLSUntil.Store(time.Now().Add(10 * time.Minute).UnixNano())
		c, err = u.open(ctx, false)
	}
	if err != nil {
		return nil, err
	}
	return &upConn{c: c, lastUsed: time.Now()}, nil
}

// open dials and brings the connection to "ready for MAIL": banner, EHLO,
// TLS as the scheme demands, AUTH. Everything must fit in ctx: a server
// that accepts but never speaks is cut off by closing the socket.
func (u *smtpUpstream) open(ctx context.Context, tryTLS bool) (*upClient, error) {
	opt := u.opt
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", opt.URL.Addr)
	if err != nil {
		return nil, &UpstreamError{Phase: "connect", Err: err}
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	fail := func(phase string, err error) (*upClient, error) {
		raw.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("no ready connection within %v: %w", opt.ConnectTimeout, err)
		}
		if isSMTPReply(err) && phase == "tls" {
			phase = "connect" // the server answered: not a handshake problem
		}
		return nil, &UpstreamError{Phase: phase, Err: err}
	}
	tlsConfig := &tls.Config{ServerName: opt.ServerName, RootCAs: opt.RootCAs, MinVersion: tls.VersionTLS12}
	c := newUpClient(raw, opt.CommandTimeout, opt.DataTimeout)
	c.bdat = !opt.NoChunking
	if opt.URL.Scheme == "smtps" {
		tc := tls.Client(raw, tlsConfig)
		if err := tc.HandshakeContext(ctx); err != nil {
			return fail("tls", err)
		}
		c.setConn(tc)
		c.tls = true
	}
	if err := c.greet(); err != nil {
		return fail("connect", err)
	}
	if err := c.hello(opt.Hostname); err != nil {
		return fail("connect", err)
	}
	switch {
	case opt.URL.Scheme == "starttls":
		if !c.has("STARTTLS") {
			return fail("tls", fmt.Errorf("%s does not offer STARTTLS, which starttls:// requires", opt.URL.Addr))
		}
		if err := c.startTLS(tlsConfig); err != nil {
			return fail("tls", err)
		}
		if err := c.hello(opt.Hostname); err != nil {
			return fail("connect", err)
		}
	case opt.URL.Scheme == "smtp" && tryTLS && c.has("STARTTLS"):
		// Opportunistic: encryption against passive eavesdropping only;
		// verifying would turn a self-signed internal relay into an
		// outage. starttls:// verifies.
		opportunistic := tlsConfig.Clone()
		opportunistic.InsecureSkipVerify = true
		if err := c.startTLS(opportunistic); err != nil {
			return fail("tls", err)
		}
		if err := c.hello(opt.Hostname); err != nil {
			return fail("connect", err)
		}
	}
	if opt.URL.User != "" {
		if err := u.auth(c); err != nil {
			return fail("auth", err)
		}
	}
	if !stop() {
		return fail("connect", ctx.Err())
	}
	return c, nil
}

func (u *smtpUpstream) auth(c *upClient) error {
	if !c.tls && !isLoopbackHost(u.opt.URL.Host) {
		return fmt.Errorf("refusing to send the upstream password over an unencrypted connection to %s; use starttls:// or smtps://", u.opt.URL.Addr)
	}
	mechs := " " + strings.ToUpper(c.ext["AUTH"]) + " "
	var client sasl.Client
	switch {
	case strings.Contains(mechs, " PLAIN "):
		client = sasl.NewPlainClient("", u.opt.URL.User, u.opt.URL.Password)
	case strings.Contains(mechs, " LOGIN "):
		client = sasl.NewLoginClient(u.opt.URL.User, u.opt.URL.Password)
	default:
		return fmt.Errorf("%s offers neither AUTH PLAIN nor LOGIN", u.opt.URL.Addr)
	}
	return c.auth(client)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (u *smtpUpstream) Check(ctx context.Context) error {
	conn, reused, err := u.get(ctx)
	if err != nil {
		return err
	}
	if reused {
		// A pooled connection proves nothing until the upstream answers.
		if err := conn.c.noop(); err != nil {
			conn.c.Close()
			if conn, err = u.dial(ctx); err != nil {
				return err
			}
		}
	}
	u.put(conn)
	return nil
}

func (u *smtpUpstream) Close() error {
	u.mu.Lock()
	idle := u.idle
	u.idle = nil
	u.closed = true
	u.mu.Unlock()
	for _, conn := range idle {
		conn.c.quit()
	}
	return nil
}

type smtpTx struct {
	up   *smtpUpstream
	conn *upConn
	// mail is the MAIL command not sent yet: with PIPELINING it goes out
	// with the first RCPT, which saves a round trip per message.
	mail *pendingMail
}

type pendingMail struct {
	from   string
	opts   *smtp.MailOptions
	reused bool // the connection came from the pool, unchecked
}

// mailRefused is the upstream's refusal of a MAIL that went out with a
// RCPT: the session reports it as the MAIL's, and no transaction exists.
type mailRefused struct{ *smtp.SMTPError }

func (e *mailRefused) Unwrap() error { return e.SMTPError }

func (t *smtpTx) Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error {
	if t.conn == nil {
		return &UpstreamError{Phase: "rcpt", Err: errors.New("transaction already ended")}
	}
	var err error
	if m := t.mail; m != nil {
		var mailErr error
		mailErr, err = t.conn.c.mailRcpt(m.from, m.opts, to, opts)
		if mailErr != nil && m.reused && !isSMTPReply(mailErr) {
			if t.conn, err = t.up.redial(ctx, t.conn, m.opts); err != nil {
				return err
			}
			m.reused = false
			mailErr, err = t.conn.c.mailRcpt(m.from, m.opts, to, opts)
		}
		if mailErr != nil {
			var se *smtp.SMTPError
			if errors.As(mailErr, &se) && se.Code != 530 {
				// The sender refused: no transaction exists. The next
				// RCPT tries MAIL again, as a new Begin would have.
				return &mailRefused{se}
			}
			conn := t.conn
			t.conn = nil
			return t.up.mailFailed(conn, mailErr)
		}
		t.mail = nil
	} else {
		err = t.conn.c.rcpt(to, opts)
	}
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		// A refused recipient leaves the transaction open for the others.
		return se
	}
	t.conn.c.Close()
	t.conn = nil
	return &UpstreamError{Phase: "rcpt", Err: err}
}

func (t *smtpTx) Data(ctx context.Context, write func(io.Writer) error) (Reply, error) {
	conn := t.conn
	if conn == nil {
		return Reply{}, &UpstreamError{Phase: "data", Err: errors.New("transaction already ended")}
	}
	t.conn = nil
	defer func() {
		if p := recover(); p != nil {
			// A panic while the copy streams (a bug) must not leave the
			// upstream inside DATA on a connection nobody owns any more.
			conn.c.Close()
			panic(p)
		}
	}()
	var werr error
	text, err := conn.c.data(func(w io.Writer) error {
		werr = write(w)
		return werr
	})
	var uwe *upstreamWriteError
	if werr != nil && !errors.As(err, &uwe) {
		// Our own failure (rewrite, spool): the connection was closed
		// without the final dot.
		return Reply{}, werr
	}
	if err != nil {
		return Reply{}, t.up.fail(conn, "data", err)
	}
	t.up.put(conn)
	return Reply{Code: 250, Text: text, QueueID: queueID(text)}, nil
}

// Abort ends the transaction with RSET and keeps the connection for the
// next one; a connection that fails the RSET is dropped.
func (t *smtpTx) Abort() {
	if t.conn == nil {
		return
	}
	conn := t.conn
	t.conn = nil
	if t.mail != nil {
		// MAIL never went out, or the upstream refused it: nothing to reset.
		t.up.put(conn)
		return
	}
	if _, _, err := conn.c.cmd(250, "RSET"); err != nil {
		conn.c.Close()
		return
	}
	t.up.put(conn)
}

// queueID extracts the upstream's queue id from its final reply, which is
// how an operator finds the message in the next hop's logs. Postfix says
// "Ok: queued as 4Xyz", Exim "OK id=1abc-…", SES "Ok 0100…", go-smtp "OK:
// queued".
func queueID(text string) string {
	fields := strings.Fields(text)
	for i, f := range fields {
		lf := strings.ToLower(f)
		if lf == "as" && i > 0 && strings.EqualFold(fields[i-1], "queued") && i+1 < len(fields) {
			return strings.Trim(fields[i+1], "<>.,;")
		}
		if strings.HasPrefix(lf, "id=") {
			return strings.Trim(f[3:], "<>.,;")
		}
	}
	if len(fields) == 2 && strings.EqualFold(fields[0], "ok") {
		return strings.Trim(fields[1], "<>.,;")
	}
	return ""
}

// NewUpstream builds the configured next hop: the SMTP upstream, or the
// outbox directory when no upstream URL is set.
func NewUpstream(cfg Config) (Upstream, error) {
	if cfg.Upstream == "" {
		return NewOutbox(cfg.Outbox)
	}
	u, err := ParseUpstreamURL(cfg.Upstream)
	if err != nil {
		return nil, err
	}
	opt := SMTPUpstreamOptions{
		URL:            u,
		ServerName:     cfg.UpstreamServerName,
		Hostname:       cfg.Hostname,
		PoolSize:       cfg.UpstreamPoolSize,
		ConnectTimeout: cfg.UpstreamConnectTimeout,
		CommandTimeout: cfg.UpstreamCommandTimeout,
		DataTimeout:    cfg.UpstreamDataTimeout,
		NoChunking:     !cfg.UpstreamChunking,
	}
	if cfg.UpstreamCA != "" {
		if opt.RootCAs, err = LoadCAFile(cfg.UpstreamCA); err != nil {
			return nil, fmt.Errorf("upstream_ca: %w", err)
		}
	}
	return NewSMTPUpstream(opt), nil
}
