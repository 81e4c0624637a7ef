package relay

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"
	"github.com/prometheus/client_golang/prometheus"

	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// ConsentSource is what the relay needs from the consent store.
type ConsentSource interface {
	// Subject turns an address into the keyed hash that both stands for
	// it in the audit log and the retry memory (its Pseudonym) and keys
	// its consent record: one HMAC per recipient serves both.
	Subject(addr string) (consent.Subject, error)
	LookupSubject(ctx context.Context, tenant string, sub consent.Subject, purpose string) (consent.State, error)
}

// Rewriter is what the relay needs from the rewrite engine.
type Rewriter interface {
	Rewrite(dst io.Writer, src io.Reader, d rewrite.Decision) (rewrite.Report, error)
	RulesVersion() string
}

// Deps are the relay's collaborators. cmd/pixelrelay builds them; tests
// build them from real parts (a bbolt store in a temp dir, the real rewrite
// engine, an in-process SMTP upstream).
type Deps struct {
	Consent  ConsentSource
	Rewriter Rewriter
	Upstream Upstream
	Audit    *AuditLog
	// RetryMemory may be nil: partial failures are then still answered
	// with 4xx, but the retry may duplicate the delivered copies.
	RetryMemory RetryMemory
	Logger      *slog.Logger
	Version     string
	// Registry receives the relay's metrics; nil keeps them private.
	Registry prometheus.Registerer
	// Beacons decides, per campaign, whether non-consenting copies get a
	// delivery-only beacon (action: beacon). nil: they are stripped.
	Beacons Beacons
}

// Beacons is what the relay needs from the beacon package.
type Beacons interface {
	// Decide adds recipients to the campaign's count for the day and
	// returns the beacon URL once the count has reached the minimum batch.
	Decide(tenant, campaign string, recipients int, now time.Time) (url string, ok bool, err error)
	// Check is Decide without counting, for dry-run.
	Check(tenant, campaign string, recipients int, now time.Time) (bool, error)
}

// Relay is the SMTP front end: a go-smtp Backend plus its listeners.
type Relay struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	spool spooler

	metrics  *metrics
	conns    *conns
	live     atomic.Pointer[live]
	certs    *certStore     // nil without tls_cert
	auth     *authenticator // nil without users
	draining atomic.Bool

	mu        sync.Mutex
	servers   []*smtp.Server
	listeners []listenerInfo
	wg        sync.WaitGroup

	// handOverHook, set only by tests, runs each time the connection
	// wrapper hands client bytes to go-smtp.
	handOverHook atomic.Pointer[func()]
}

type listenerInfo struct {
	name string
	ln   net.Listener
}

// New checks the configuration and returns a Relay ready to Start.
func New(cfg Config, deps Deps) (*Relay, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if deps.Consent == nil || deps.Rewriter == nil || deps.Upstream == nil || deps.Audit == nil {
		return nil, errors.New("relay: Consent, Rewriter, Upstream and Audit are required")
	}
	if deps.Logger == nil {
		deps.Logger = slog.New(slog.DiscardHandler)
	}
	r := &Relay{
		cfg:  cfg,
		deps: deps,
		log:  deps.Logger,
		spool: spooler{
			memLimit:  cfg.SpoolMemory,
			dir:       cfg.SpoolDir,
			maxHeader: cfg.MaxHeaderBytes,
			maxLine:   cfg.MaxLineLength,
		},
		metrics: newMetrics(deps.Registry),
		conns:   newConns(cfg.MaxConnections, cfg.MaxConnectionsPerIP),
	}
	l, err := newLive(cfg)
	if err != nil {
		return nil, err
	}
	r.live.Store(l)
	if cfg.TLSCert != "" {
		certs, err := loadCertStore(cfg.TLSCert, cfg.TLSKey)
		if err != nil {
			return nil, err
		}
		r.certs = certs
	}
	if cfg.Users != "" {
		users, err := LoadUsers(cfg.Users)
		if err != nil {
			return nil, fmt.Errorf("users: %w", err)
		}
		r.auth = newAuthenticator(users, cfg.AuthMaxFailures)
	}
	return r, nil
}

// reloadFiles re-reads the TLS certificate, the users file and the
// authenticator's limits. On error the previous ones stay in force.
func (r *Relay) reloadFiles(cfg Config) error {
	var errs []error
	if r.certs != nil {
		if cfg.TLSCert != r.certs.certFile || cfg.TLSKey != r.certs.keyFile {
			c, err := loadCertStore(cfg.TLSCert, cfg.TLSKey)
			if err != nil {
				errs = append(errs, err)
			} else {
				r.certs.certFile, r.certs.keyFile = c.certFile, c.keyFile
			}
		}
		if err := r.certs.Reload(); err != nil {
			errs = append(errs, err)
		}
	}
	if r.auth != nil {
		users, err := LoadUsers(cfg.Users)
		if err != nil {
			errs = append(errs, fmt.Errorf("users: %w", err))
		} else {
			r.auth.setUsers(users)
			r.auth.setMaxFails(cfg.AuthMaxFailures)
		}
	}
	return errors.Join(errs...)
}

// Reload re-reads the TLS certificate and the users file of the running
// configuration.
func (r *Relay) Reload() error { return r.reloadFiles(r.conf().cfg) }

// Start binds every configured listener and serves them in the
// background. It returns once all are bound, so the caller can report
// readiness; a listener that cannot bind fails the whole start.
func (r *Relay) Start() error {
	type spec struct {
		name, addr string
		lmtp, tls  bool
	}
	var specs []spec
	for _, a := range r.cfg.Listen {
		specs = append(specs, spec{"smtp", a, false, false})
	}
	for _, a := range r.cfg.ListenTLS {
		specs = append(specs, spec{"smtps", a, false, true})
	}
	for _, a := range r.cfg.ListenLMTP {
		specs = append(specs, spec{"lmtp", a, true, false})
	}
	for _, sp := range specs {
		tcp, err := net.Listen("tcp", sp.addr)
		if err != nil {
			r.Close()
			return fmt.Errorf("listen %s on %s: %w", sp.name, sp.addr, err)
		}
		srv := r.newServer(sp.lmtp)
		if srv.TLSConfig == nil && !sp.tls {
			// The session stays in clear, so the connection wrapper sees
			// every command line and limits them (see trackedConn).
			// Where TLS can start, go-smtp keeps its own limit for what
			// the wrapper no longer sees.
			srv.MaxLineLength = 0
		}
		var ln net.Listener = &trackedListener{Listener: tcp, r: r, implicit: sp.tls}
		if sp.tls {
			ln = tls.NewListener(ln, r.certs.serverTLSConfig())
		}
		r.mu.Lock()
		r.servers = append(r.servers, srv)
		r.listeners = append(r.listeners, listenerInfo{sp.name, ln})
		r.mu.Unlock()
		r.wg.Add(1)
		go func() {
			defer r.wg.Done()
			if err := srv.Serve(ln); err != nil && !errors.Is(err, net.ErrClosed) {
				r.log.Error("listener stopped", "listener", sp.name, "addr", sp.addr, "err", err)
			}
		}()
		r.log.Info("listening", "listener", sp.name, "addr", ln.Addr().String())
	}
	return nil
}

// Addr returns the bound address of the first listener of the named kind
// (smtp, smtps, lmtp), which tests and logs need when the port was 0.
func (r *Relay) Addr(name string) net.Addr {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, l := range r.listeners {
		if l.name == name {
			return l.ln.Addr()
		}
	}
	return nil
}

func (r *Relay) newServer(lmtp bool) *smtp.Server {
	s := smtp.NewServer(r)
	s.Domain = r.cfg.Hostname
	s.LMTP = lmtp
	s.MaxMessageBytes = r.cfg.MaxMessageBytes
	s.MaxRecipients = r.cfg.MaxRecipients
	s.MaxLineLength = r.cfg.MaxLineLength
	// The connection wrapper picks the real timeout per session state
	// (idle, in a transaction); go-smtp only needs to ask for one.
	s.ReadTimeout = r.cfg.IdleTimeout
	s.WriteTimeout = time.Minute
	if r.certs != nil && !lmtp {
		// Offers STARTTLS on the plain listener.
		s.TLSConfig = r.certs.serverTLSConfig()
	}
	s.AllowInsecureAuth = r.cfg.AllowInsecureAuth
	// Postfix passes SMTPUTF8 and DSN parameters through a content filter
	// only when the filter advertises them.
	s.EnableSMTPUTF8 = true
	s.EnableDSN = true
	s.ErrorLog = slogPrinter{r.log}
	return s
}

// Shutdown drains: it stops accepting, tells sessions idle between
// transactions "421 4.3.2" and closes them, lets transactions in flight
// finish until ctx ends, then closes whatever is left. go-smtp's own
// Shutdown waits for clients to leave on their own, and its Close says
// nothing to them, so the relay does this itself.
func (r *Relay) Shutdown(ctx context.Context) error {
	r.draining.Store(true)
	r.mu.Lock()
	for _, l := range r.listeners {
		l.ln.Close()
	}
	r.mu.Unlock()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	for {
		for _, c := range r.conns.snapshot() {
			if c.idle() {
				c.goodbye()
			}
		}
		if r.conns.count() == 0 {
			break
		}
		select {
		case <-ctx.Done():
			left := r.conns.snapshot()
			r.log.Warn("drain deadline reached; closing sessions still in a transaction", "sessions", len(left))
			for _, c := range left {
				c.Close()
			}
			r.Close()
			return ctx.Err()
		case <-tick.C:
		}
	}
	return r.Close()
}

// Draining tells whether Shutdown has begun, for readiness probes.
func (r *Relay) Draining() bool { return r.draining.Load() }

// Ready reports whether the relay can take mail: listeners bound, not
// draining, and the upstream answering.
func (r *Relay) Ready(ctx context.Context) error {
	if r.draining.Load() {
		return errors.New("draining")
	}
	r.mu.Lock()
	n := len(r.listeners)
	r.mu.Unlock()
	if n == 0 {
		return errors.New("no SMTP listener bound")
	}
	if err := r.deps.Upstream.Check(ctx); err != nil {
		return fmt.Errorf("upstream: %w", err)
	}
	return nil
}

// Close stops listening and closes every session at once.
func (r *Relay) Close() error {
	r.mu.Lock()
	servers := r.servers
	r.servers = nil
	// go-smtp's Server.Close closes only the listeners its Serve has
	// registered; a Close right after Start can come first, and that Serve
	// would then accept forever. Closing our own listeners always ends it.
	for _, l := range r.listeners {
		l.ln.Close()
	}
	r.mu.Unlock()
	for _, s := range servers {
		s.Close()
	}
	r.wg.Wait()
	return nil
}

// slogPrinter adapts go-smtp's Printf logger to slog.
type slogPrinter struct{ l *slog.Logger }

func (p slogPrinter) Printf(format string, v ...any) {
	p.l.Warn("smtp server", "msg", redactAddresses(strings.TrimSpace(fmt.Sprintf(format, v...))))
}
func (p slogPrinter) Println(v ...any) {
	p.l.Warn("smtp server", "msg", redactAddresses(strings.TrimSpace(fmt.Sprintln(v...))))
}

// NewSession implements smtp.Backend. go-smtp calls it at the first
// HELO/EHLO.
func (r *Relay) NewSession(c *smtp.Conn) (smtp.Session, error) {
	if hasControl(c.Hostname()) {
		return nil, errBadHelo
	}
	s := &session{r: r, conn: c, helo: c.Hostname(), lmtp: c.Server().LMTP}
	if ap, err := netip.ParseAddrPort(c.Conn().RemoteAddr().String()); err == nil {
		s.remote = ap.Addr().Unmap()
	}
	_, s.tls = c.TLSConnectionState()
	if s.raw = rawConn(c.Conn()); s.raw != nil {
		s.raw.sess.Store(s)
	}
	kind := "smtp"
	if s.lmtp {
		kind = "lmtp"
	}
	r.metrics.sessions.WithLabelValues(kind, fmt.Sprint(s.tls)).Inc()
	return s, nil
}

// mayRelay is the open-relay guard: an authenticated client, or a source
// inside --allow-net. Everything else gets 530 at MAIL.
func (r *Relay) mayRelay(s *session) bool {
	if s.user != "" {
		return true
	}
	for _, p := range r.conf().allow {
		if p.Contains(s.remote) {
			return true
		}
	}
	return false
}

// tenantFor maps a message to the controller whose consent applies.
func (r *Relay) tenantFor(user, from string) string {
	tm := r.conf().cfg.Tenants
	if t, ok := tm.Users[user]; ok && user != "" {
		return t
	}
	if t, ok := tm.SenderDomains[domainOf(from)]; ok {
		return t
	}
	return consent.DefaultTenant
}
