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
	c        *smtp.Client
	raw      net.Conn
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
	conn, err := u.get(ctx)
	if err != nil {
		return nil, err
	}
	if opts != nil && opts.UTF8 {
		if ok, _ := conn.c.Extension("SMTPUTF8"); !ok {
			u.put(conn)
			return nil, errUpstreamNoSMTPUTF8
		}
	}
	if opts != nil && opts.RequireTLS {
		if ok, _ := conn.c.Extension("REQUIRETLS"); !ok {
			u.put(conn)
			return nil, errUpstreamNoRequireTLS
		}
	}
	if err := conn.c.Mail(from, upstreamMailOptions(opts)); err != nil {
		return nil, u.fail(conn, "mail", err)
	}
	return &smtpTx{up: u, conn: conn}, nil
}

// upstreamMailOptions keeps what must travel end to end (SMTPUTF8, DSN's
// RET and ENVID, REQUIRETLS) and drops what no longer holds after a rewrite:
// SIZE changes, and AUTH= describes the client's session with us.
func upstreamMailOptions(in *smtp.MailOptions) *smtp.MailOptions {
	if in == nil {
		return nil
	}
	return &smtp.MailOptions{
		UTF8:       in.UTF8,
		RequireTLS: in.RequireTLS,
		Return:     in.Return,
		EnvelopeID: in.EnvelopeID,
	}
}

// fail classifies an error from a connection in use. An SMTP reply leaves
// the connection usable, so it goes back to the pool; anything else means
// the connection is broken.
func (u *smtpUpstream) fail(conn *upConn, phase string, err error) error {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code == 421 {
			// 421: the server is closing the channel.
			conn.c.Close()
		} else {
			u.put(conn)
		}
		return se
	}
	conn.c.Close()
	return &UpstreamError{Phase: phase, Err: err}
}

func (u *smtpUpstream) get(ctx context.Context) (*upConn, error) {
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
		// NOOP is the health check: a connection the server closed fails
		// here instead of in the middle of a transaction. (Not RSET:
		// go-smtp's client re-sends EHLO after RSET, which strict servers
		// refuse as a duplicate greeting.)
		if err := conn.c.Noop(); err != nil {
			conn.c.Close()
			continue
		}
		return conn, nil
	}
	return u.dial(ctx)
}

func (u *smtpUpstream) put(conn *upConn) {
	conn.lastUsed = time.Now()
	u.mu.Lock()
	if u.closed || len(u.idle) >= u.opt.PoolSize {
		u.mu.Unlock()
		conn.c.Quit()
		conn.c.Close()
		return
	}
	u.idle = append(u.idle, conn)
	u.mu.Unlock()
}

func (u *smtpUpstream) dial(ctx context.Context) (*upConn, error) {
	opt := u.opt
	ctx, cancel := context.WithTimeout(ctx, opt.ConnectTimeout)
	defer cancel()
	tlsConfig := &tls.Config{ServerName: opt.ServerName, RootCAs: opt.RootCAs, MinVersion: tls.VersionTLS12}

	switch opt.URL.Scheme {
	case "smtps":
		return u.open(ctx, "tls", func(raw net.Conn) (*smtp.Client, error) {
			tc := tls.Client(raw, tlsConfig)
			if err := tc.HandshakeContext(ctx); err != nil {
				return nil, err
			}
			return smtp.NewClient(tc), nil
		})
	case "starttls":
		return u.open(ctx, "tls", func(raw net.Conn) (*smtp.Client, error) {
			return smtp.NewClientStartTLS(raw, tlsConfig)
		})
	}
	// smtp://: opportunistic STARTTLS, like Postfix's "may" level. It
	// protects against passive eavesdropping only; verifying would turn a
	// self-signed internal relay into an outage. starttls:// verifies.
	plain := func(raw net.Conn) (*smtp.Client, error) { return smtp.NewClient(raw), nil }
	if time.Now().UnixNano() < u.noStartTLSUntil.Load() {
		return u.open(ctx, "connect", plain)
	}
	opportunistic := tlsConfig.Clone()
	opportunistic.InsecureSkipVerify = true
	conn, err := u.open(ctx, "tls", func(raw net.Conn) (*smtp.Client, error) {
		return smtp.NewClientStartTLS(raw, opportunistic)
	})
	var ue *UpstreamError
	if err == nil || !errors.As(err, &ue) || ue.Phase != "tls" || ctx.Err() != nil {
		return conn, err
	}
	// No STARTTLS offered, or the handshake failed: fall back to
	// plaintext as a "may" policy does, and remember that for a while.
	u.noStartTLSUntil.Store(time.Now().Add(10 * time.Minute).UnixNano())
	return u.open(ctx, "connect", plain)
}

// open dials, lets start build the client (plain, implicit TLS or
// STARTTLS), then greets and authenticates. Everything up to a ready
// connection must fit in ctx: go-smtp's own timeouts only start after it
// has been built, so a server that accepts but never speaks is cut off by
// closing the socket.
func (u *smtpUpstream) open(ctx context.Context, phase string, start func(net.Conn) (*smtp.Client, error)) (*upConn, error) {
	d := net.Dialer{}
	raw, err := d.DialContext(ctx, "tcp", u.opt.URL.Addr)
	if err != nil {
		return nil, &UpstreamError{Phase: "connect", Err: err}
	}
	stop := context.AfterFunc(ctx, func() { raw.Close() })
	defer stop()
	fail := func(phase string, err error) (*upConn, error) {
		raw.Close()
		if ctx.Err() != nil {
			err = fmt.Errorf("no ready connection within %v: %w", u.opt.ConnectTimeout, err)
		}
		return nil, &UpstreamError{Phase: phase, Err: err}
	}
	c, err := start(raw)
	if err != nil {
		var se *smtp.SMTPError
		if errors.As(err, &se) {
			// The server answered (e.g. 421 at greeting): not a TLS problem.
			return fail("connect", err)
		}
		return fail(phase, err)
	}
	c.CommandTimeout = u.opt.CommandTimeout
	c.SubmissionTimeout = u.opt.DataTimeout
	if err := c.Hello(u.opt.Hostname); err != nil {
		// After STARTTLS the handshake runs lazily, inside this EHLO.
		var se *smtp.SMTPError
		if !errors.As(err, &se) {
			return fail(phase, err)
		}
		return fail("connect", err)
	}
	if u.opt.URL.User != "" {
		if err := u.auth(c); err != nil {
			return fail("auth", err)
		}
	}
	if !stop() {
		// The deadline fired while we finished: the socket is closed.
		return fail("connect", ctx.Err())
	}
	return &upConn{c: c, raw: raw, lastUsed: time.Now()}, nil
}

func (u *smtpUpstream) auth(c *smtp.Client) error {
	_, isTLS := c.TLSConnectionState()
	if !isTLS && !isLoopbackHost(u.opt.URL.Host) {
		return fmt.Errorf("refusing to send the upstream password over an unencrypted connection to %s; use starttls:// or smtps://", u.opt.URL.Addr)
	}
	var client sasl.Client
	switch {
	case c.SupportsAuth("PLAIN"):
		client = sasl.NewPlainClient("", u.opt.URL.User, u.opt.URL.Password)
	case c.SupportsAuth("LOGIN"):
		client = sasl.NewLoginClient(u.opt.URL.User, u.opt.URL.Password)
	default:
		return fmt.Errorf("%s offers neither AUTH PLAIN nor LOGIN", u.opt.URL.Addr)
	}
	return c.Auth(client)
}

func isLoopbackHost(h string) bool {
	if h == "localhost" {
		return true
	}
	ip := net.ParseIP(h)
	return ip != nil && ip.IsLoopback()
}

func (u *smtpUpstream) Check(ctx context.Context) error {
	conn, err := u.get(ctx)
	if err != nil {
		return err
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
		conn.c.Quit()
		conn.c.Close()
	}
	return nil
}

type smtpTx struct {
	up   *smtpUpstream
	conn *upConn
}

func (t *smtpTx) Rcpt(ctx context.Context, to string, opts *smtp.RcptOptions) error {
	if t.conn == nil {
		return &UpstreamError{Phase: "rcpt", Err: errors.New("transaction already ended")}
	}
	err := t.conn.c.Rcpt(to, opts)
	if err == nil {
		return nil
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		// A refused recipient leaves the transaction open for the others.
		if se.Code == 421 {
			t.conn.c.Close()
			t.conn = nil
		}
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
	w, err := conn.c.Data()
	if err != nil {
		return Reply{}, t.up.fail(conn, "data", err)
	}
	// go-smtp sets no deadline while the body streams; without one a
	// stalled upstream would hold the client's session forever.
	conn.raw.SetDeadline(time.Now().Add(t.up.opt.DataTimeout))
	if err := write(w); err != nil {
		// Closing without the final dot makes the upstream discard the
		// partial message.
		conn.c.Close()
		return Reply{}, err
	}
	resp, err := w.CloseWithResponse()
	conn.raw.SetDeadline(time.Time{})
	if err != nil {
		return Reply{}, t.up.fail(conn, "data", err)
	}
	t.up.put(conn)
	return Reply{Code: 250, Text: resp.StatusText, QueueID: queueID(resp.StatusText)}, nil
}

// Abort ends the transaction by retiring its connection. RSET would keep
// it, but go-smtp's client then re-greets with EHLO, which strict servers
// answer with 503; aborts are rare (client RSET, partial retries, refused
// DATA), so a fresh connection next time costs little.
func (t *smtpTx) Abort() {
	if t.conn == nil {
		return
	}
	conn := t.conn
	t.conn = nil
	conn.c.Quit()
	conn.c.Close()
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
	}
	if cfg.UpstreamCA != "" {
		if opt.RootCAs, err = LoadCAFile(cfg.UpstreamCA); err != nil {
			return nil, fmt.Errorf("upstream_ca: %w", err)
		}
	}
	return NewSMTPUpstream(opt), nil
}
