package relay

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// session is one SMTP connection. Mail and Rcpt decide, per recipient, as
// data (the transaction); Data acts on that plan. go-smtp serialises
// commands, but with BDAT it runs Data in a goroutine that a RSET may
// race, hence the mutex.
type session struct {
	r      *Relay
	conn   *smtp.Conn
	remote netip.Addr
	helo   string
	lmtp   bool
	tls    bool
	raw    *trackedConn // nil only in tests that bypass the listener

	mu      sync.Mutex
	user    string // authenticated identity, "" when none
	account *User
	tx      *transaction
	// inTx mirrors tx != nil without the mutex: the connection wrapper
	// asks for it while Data (under BDAT) may hold the lock.
	inTx atomic.Bool

	work worker // runs the work of LMTP and BDAT messages (see worker)
}

func (s *session) inTransaction() bool { return s.inTx.Load() }

// closeAfterReply makes the connection close once the next reply is out,
// for 421 answers.
func (s *session) closeAfterReply() {
	if s.raw != nil {
		s.raw.closeAfter.Store(true)
	}
}

var errShuttingDown = reply(421, smtp.EnhancedCode{4, 3, 2}, "Service shutting down, try again later")

// transaction is the plan for one message: who gets which copy.
type transaction struct {
	// conf is the configuration the whole transaction runs under, even
	// if SIGHUP installs another one meanwhile.
	conf     *live
	start    time.Time
	from     string // as the client gave it (go-smtp unquotes local parts)
	wireFrom string // re-quoted for the upstream
	opts     *smtp.MailOptions
	tenant   string
	user     string // the AUTH identity the transaction was started under
	rcpts    []*recipient
	// Two groups: recipients who consented get the original (keep); the
	// others get the enforced copy (strip, or beacon once the campaign is
	// known at DATA). Each group has its own upstream transaction, opened
	// at its first RCPT.
	keep, enforce *group
}

type recipient struct {
	addr      string // as received
	wire      string // re-quoted for the upstream
	opts      *smtp.RcptOptions
	pseudonym string
	consent   string // granted, denied, withdrawn, unknown or error
	group     *group
	// status is the upstream's verdict after DATA: nil for accepted.
	status error
	// before is set when the retry memory says a previous attempt
	// already delivered to this recipient.
	before bool
}

type group struct {
	enforce bool
	tx      Tx
	// broken is the transport failure that ended tx, if any; later
	// recipients of the group get the same temporary answer without a new
	// connection attempt for each.
	broken error
	rcpts  []*recipient
}

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.abortLocked()
	if s.r.draining.Load() {
		s.closeAfterReply()
		return errShuttingDown
	}
	if !s.r.mayRelay(s) {
		s.r.log.Warn("refused unauthenticated MAIL from a source outside allow_net", "remote", s.remote.String())
		return errAuthRequired
	}
	if hasControl(from) {
		return errBadAddress
	}
	if s.account != nil && !s.account.MaySend(from) {
		s.r.log.Warn("authenticated user tried a sender address not allowed for them", "user", s.user, "sender_domain", domainOf(from))
		return errSenderNotAllowed(s.user)
	}
	wire := ""
	if from != "" {
		wire = quoteAddress(from)
	}
	s.tx = &transaction{
		conf:     s.r.conf(),
		start:    time.Now(),
		from:     from,
		wireFrom: wire,
		opts:     opts,
		tenant:   s.r.tenantFor(s.user, from),
		user:     s.user,
		keep:     &group{},
		enforce:  &group{enforce: true},
	}
	s.inTx.Store(true)
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx := s.tx
	if tx == nil {
		return errLocal
	}
	if to == "" || hasControl(to) {
		return errBadAddress
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.r.cfg.UpstreamConnectTimeout+s.r.cfg.UpstreamCommandTimeout)
	defer cancel()

	rc := &recipient{addr: to, wire: quoteAddress(to), opts: opts}
	rc.pseudonym, rc.consent = s.r.lookupConsent(ctx, tx.tenant, to)
	// Fail closed: only an explicit grant keeps the trackers. Dry-run
	// forwards the original to everyone and only records the decision.
	g := tx.enforce
	if rc.consent == string(consent.Granted) || tx.conf.cfg.DryRun {
		g = tx.keep
	}
	if err := s.proxyRcpt(ctx, tx, g, rc); err != nil {
		return err
	}
	rc.group = g
	g.rcpts = append(g.rcpts, rc)
	tx.rcpts = append(tx.rcpts, rc)
	return nil
}

// proxyRcpt forwards the RCPT to the group's upstream transaction, opening
// it first if this is the group's first recipient, so that the upstream's
// verdict on this recipient is the client's answer.
func (s *session) proxyRcpt(ctx context.Context, tx *transaction, g *group, rc *recipient) error {
	if g.broken != nil {
		return upstreamReply(g.broken)
	}
	if g.tx == nil {
		t, err := s.r.deps.Upstream.Begin(ctx, tx.wireFrom, tx.opts)
		if err != nil {
			s.r.upstreamFailed("mail", err)
			if !isSMTPReply(err) {
				g.broken = err
			}
			return upstreamReply(err)
		}
		g.tx = t
	}
	if err := g.tx.Rcpt(ctx, rc.wire, rc.opts); err != nil {
		s.r.upstreamFailed("rcpt", err)
		if !isSMTPReply(err) {
			g.broken = err
			g.tx = nil
		}
		return upstreamReply(err)
	}
	return nil
}

func isSMTPReply(err error) bool {
	var se *smtp.SMTPError
	return errors.As(err, &se)
}

func (s *session) Data(r io.Reader) error {
	tx := s.takeTx()
	s.setDataDeadline()
	defer s.endData()
	var out *outcome
	if _, chunked := r.(*io.PipeReader); chunked {
		// BDAT: go-smtp feeds the chunks into a pipe and runs Data on a
		// new goroutine (see worker); the pipe is how Data can tell. A
		// DATA message is read on the connection's own goroutine, whose
		// stack has grown already; a worker would only add two switches.
		// TestSessionWorkersEndWithTheirSessions fails should a go-smtp
		// upgrade hand BDAT messages over differently.
		s.work.run(func() { out = s.data(tx, r) })
	} else {
		out = s.data(tx, r)
	}
	if out == nil || out.reply == nil {
		// A nil *SMTPError in an error interface is not nil, and go-smtp
		// would dereference it: return a true nil for "250 OK".
		return nil
	}
	return out.reply
}

// LMTPData gives Postfix one status per recipient, so it defers only the
// recipients that failed and never sends the others a duplicate.
func (s *session) LMTPData(r io.Reader, status smtp.StatusCollector) error {
	tx := s.takeTx()
	s.setDataDeadline()
	defer s.endData()
	var out *outcome
	s.work.run(func() { out = s.data(tx, r) })
	if out == nil || out.perRecipient == nil {
		if out == nil || out.reply == nil {
			return nil
		}
		return out.reply
	}
	for _, rc := range tx.rcpts {
		if err := out.perRecipient[rc]; err != nil {
			status.SetStatus(rc.addr, err)
		} else {
			// A true nil: a nil *SMTPError in an error is not nil.
			status.SetStatus(rc.addr, nil)
		}
	}
	return nil
}

// takeTx hands the transaction to Data, which owns it from then on. Data
// holds no lock while the message streams: under BDAT, go-smtp runs it in
// a goroutine and may meanwhile call Reset or Logout (STARTTLS or AUTH
// between chunks), which must not wait for a message that only the
// command loop can deliver.
func (s *session) takeTx() *transaction {
	s.mu.Lock()
	defer s.mu.Unlock()
	tx := s.tx
	s.tx = nil
	return tx
}

func (s *session) endData() {
	// Under BDAT, a RSET and a new MAIL may have come while this message
	// streamed: that transaction is the session's now.
	s.mu.Lock()
	s.inTx.Store(s.tx != nil)
	s.mu.Unlock()
	if s.raw != nil {
		s.raw.dataUntil.Store(0)
	}
}

// setDataDeadline bounds the whole message transfer: go-smtp sets no
// deadline while DATA streams, so a client trickling bytes would hold the
// session (and its upstream transactions) forever.
func (s *session) setDataDeadline() {
	if s.raw != nil {
		until := time.Now().Add(s.r.conf().cfg.DataTimeout)
		// Kept across BDAT chunks too: go-smtp would reset the deadline
		// at each BDAT command line (see trackedConn.SetReadDeadline).
		s.raw.dataUntil.Store(until.UnixNano())
		s.raw.Conn.SetReadDeadline(until)
	}
}

func (s *session) data(tx *transaction, r io.Reader) *outcome {
	if tx == nil {
		io.Copy(io.Discard, r)
		return &outcome{reply: errLocal}
	}
	var msg *message
	var err error
	if s.raw.takeDirect() {
		d := newDirectData(s.raw, s.r.cfg.MaxMessageBytes)
		msg, err = s.r.spool.receive(d)
		// Whatever stopped the spooler, read on to the end of the message
		// so the conversation stays in step, as go-smtp's reader does.
		io.Copy(io.Discard, d)
	} else {
		msg, err = s.r.spool.receive(r)
	}
	if err != nil {
		tx.abort()
		reply := dataError(err)
		s.r.metrics.rejectedMessages.WithLabelValues(rejectReason(err)).Inc()
		if reply.Code == 421 {
			s.closeAfterReply()
		}
		if errors.Is(err, errBareLineEnding) {
			s.r.log.Warn("refused a message with bare CR or LF (possible SMTP smuggling)", "remote", s.remote.String())
		} else if reply == errLocal {
			s.r.log.Error("could not receive message", "err", redactAddresses(err.Error()))
		}
		if !errors.Is(err, smtp.ErrDataReset) && reply.Code != 421 {
			s.r.auditRejected(tx, reply)
		}
		return &outcome{reply: reply}
	}
	defer msg.Close()
	// Should deliver panic (go-smtp recovers), the upstream transactions
	// opened at RCPT still end; after a normal return this does nothing.
	defer tx.abort()
	return s.r.deliver(s, tx, msg)
}

func (s *session) Reset() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.abortLocked()
}

func (s *session) Logout() error {
	s.work.close()
	s.mu.Lock()
	defer s.mu.Unlock()
	s.abortLocked()
	return nil
}

// abortLocked ends any open upstream transactions without a message.
func (s *session) abortLocked() {
	if s.tx == nil {
		return
	}
	s.tx.abort()
	s.tx = nil
	s.inTx.Store(false)
}

// abort ends the transaction's open upstream transactions.
func (tx *transaction) abort() {
	for _, g := range []*group{tx.keep, tx.enforce} {
		if g.tx != nil {
			g.tx.Abort()
			g.tx = nil
		}
	}
}

// lookupConsent returns the recipient's pseudonym and consent state. It
// fails closed: any error is "error", which strips. An address the store
// cannot pseudonymise gets a per-process pseudonym: one shared placeholder
// would make the audit log unable to tell such recipients apart, and the
// retry memory take one delivered recipient for all of them.
func (r *Relay) lookupConsent(ctx context.Context, tenant, addr string) (pseudonym, state string) {
	sub, err := r.deps.Consent.Subject(addr)
	if err != nil {
		pseudonym = ephemeralPseudonym(addr)
		r.metrics.consentLookups.WithLabelValues("error").Inc()
		r.log.Warn("the consent store cannot pseudonymise a recipient; stripping for it, and the audit log names it by a pseudonym valid in this process only",
			append([]any{"tenant", tenant, "recipient", pseudonym}, consentErrorCause(err)...)...)
		return pseudonym, "error"
	}
	pseudonym = sub.Pseudonym()
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	st, err := r.deps.Consent.LookupSubject(ctx, tenant, sub, consent.PurposeOpenTracking)
	if err != nil {
		r.metrics.consentLookups.WithLabelValues("error").Inc()
		// The store's message quotes the address; the log gets its class.
		r.log.Warn("consent lookup failed; stripping for this recipient",
			append([]any{"tenant", tenant, "recipient", pseudonym}, consentErrorCause(err)...)...)
		return pseudonym, "error"
	}
	r.metrics.consentLookups.WithLabelValues("ok").Inc()
	if st == "" {
		return pseudonym, string(consent.Unknown)
	}
	return pseudonym, string(st)
}

func (r *Relay) upstreamFailed(phase string, err error) {
	kind := "temporary"
	if isPermanent(err) {
		kind = "permanent"
	}
	var ue *UpstreamError
	var mr *mailRefused
	switch {
	case errors.As(err, &ue):
		phase = ue.Phase
	case errors.As(err, &mr):
		phase = "mail" // sent with the first RCPT
	}
	r.metrics.upstreamErrors.WithLabelValues(phase, kind).Inc()
	if isSMTPReply(err) {
		r.log.Info("upstream refused", "phase", phase, upstreamCause(err))
		return
	}
	r.log.Warn("upstream unavailable", "phase", phase, upstreamCause(err))
}

// action is the rewrite action a group's copy gets.
func (g *group) action(enforced rewrite.Action) rewrite.Action {
	if g.enforce {
		return enforced
	}
	return rewrite.Keep
}

func rejectReason(err error) string {
	switch {
	case errors.Is(err, errBareLineEnding):
		return "bare_line_ending"
	case errors.Is(err, errHeaderSize):
		return "header"
	case errors.Is(err, errLineLength), errors.Is(err, smtp.ErrTooLongLine):
		return "line"
	case isSMTPReply(err):
		return "size"
	}
	return "io"
}
