package relay

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// ConsentSource is what the relay needs from the consent store.
type ConsentSource interface {
	Lookup(ctx context.Context, tenant, addr, purpose string) (consent.State, error)
	// Pseudonym is the keyed hash that stands for an address in the audit
	// log and the retry memory.
	Pseudonym(addr string) (string, error)
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
}

// Relay is the SMTP front end: a go-smtp Backend plus its listeners.
type Relay struct {
	cfg   Config
	deps  Deps
	log   *slog.Logger
	allow []netip.Prefix
	spool spooler

	mu        sync.Mutex
	servers   []*smtp.Server
	listeners []listenerInfo
	wg        sync.WaitGroup
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
	allow, _ := ParseNets(cfg.AllowNet)
	return &Relay{
		cfg:   cfg,
		deps:  deps,
		log:   deps.Logger,
		allow: allow,
		spool: spooler{
			memLimit:  cfg.SpoolMemory,
			dir:       cfg.SpoolDir,
			maxHeader: 1 << 20,
		},
	}, nil
}

// Start binds every configured listener and serves them in the
// background. It returns once all are bound, so the caller can report
// readiness; a listener that cannot bind fails the whole start.
func (r *Relay) Start() error {
	type spec struct {
		name, addr string
		lmtp, tls  bool
	}
	specs := []spec{
		{"smtp", r.cfg.Listen, false, false},
		{"smtps", r.cfg.ListenTLS, false, true},
		{"lmtp", r.cfg.ListenLMTP, true, false},
	}
	for _, sp := range specs {
		if sp.addr == "" {
			continue
		}
		ln, err := net.Listen("tcp", sp.addr)
		if err != nil {
			r.Close()
			return fmt.Errorf("listen %s on %s: %w", sp.name, sp.addr, err)
		}
		srv := r.newServer(sp.lmtp)
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

// Addr returns the bound address of the named listener (smtp, smtps,
// lmtp), which tests and logs need when the port was 0.
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
	s.ReadTimeout = 5 * time.Minute
	s.WriteTimeout = time.Minute
	// Postfix passes SMTPUTF8 and DSN parameters through a content filter
	// only when the filter advertises them.
	s.EnableSMTPUTF8 = true
	s.EnableDSN = true
	s.ErrorLog = slogPrinter{r.log}
	return s
}

// Close stops listening and closes every session at once.
func (r *Relay) Close() error {
	r.mu.Lock()
	servers := r.servers
	r.servers = nil
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
	p.l.Warn("smtp server", "msg", strings.TrimSpace(fmt.Sprintf(format, v...)))
}
func (p slogPrinter) Println(v ...any) {
	p.l.Warn("smtp server", "msg", strings.TrimSpace(fmt.Sprintln(v...)))
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
	return s, nil
}

// mayRelay is the open-relay guard: an authenticated client, or a source
// inside --allow-net. Everything else gets 530 at MAIL.
func (r *Relay) mayRelay(s *session) bool {
	if s.user != "" {
		return true
	}
	for _, p := range r.allow {
		if p.Contains(s.remote) {
			return true
		}
	}
	return false
}

// tenantFor maps a message to the controller whose consent applies.
func (r *Relay) tenantFor(user, from string) string {
	if t, ok := r.cfg.Tenants.Users[user]; ok && user != "" {
		return t
	}
	if t, ok := r.cfg.Tenants.SenderDomains[domainOf(from)]; ok {
		return t
	}
	return consent.DefaultTenant
}
