// Package relaytest provides a real SMTP server on loopback that stands in
// for the relay's next hop in tests: it records the exact envelope and bytes
// of every message it accepts and can be told to fail at any phase.
package relaytest

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"regexp"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
)

// Upstream is a real SMTP server on loopback (go-smtp) standing in for
// the next hop. It records the exact envelope and bytes of every message it
// accepted, and can be told to fail at any phase, maddy-style.
type Upstream struct {
	t    testing.TB
	opts Options
	srv  *smtp.Server
	ln   net.Listener
	addr string

	mu sync.Mutex
	// PlainReplies makes the final reply a bare "250 2.0.0 OK: queued",
	// with no queue id, as many servers answer.
	PlainReplies bool
	got          []Message
	faults       []Fault
	conns        int
}

type Message struct {
	TLS      bool   // the message arrived over TLS
	User     string // the AUTH identity it arrived under
	From     string
	Rcpts    []string
	MailOpts smtp.MailOptions
	RcptOpts []smtp.RcptOptions
	Data     []byte
}

// fault makes the upstream misbehave. phase is mail, rcpt or data; when
// rcpt is set, the fault applies only to transactions that include that
// recipient (for rcpt: only to that recipient). times limits how often it
// fires (0: always).
type Fault struct {
	Phase string // mail, rcpt or data
	Rcpt  string // only transactions that include this recipient
	Err   *smtp.SMTPError
	Delay time.Duration
	Drop  bool // close the connection instead of replying
	Times int  // how often it fires; 0: always
}

func NewUpstream(t testing.TB) *Upstream { return NewUpstreamWith(t, Options{}) }

// Options make the upstream speak TLS or require AUTH.
type Options struct {
	// TLS offers STARTTLS, or with Implicit, serves TLS from the first
	// byte (smtps).
	TLS      *tls.Config
	Implicit bool
	// Users, when set, are the accepted AUTH PLAIN credentials, and MAIL
	// requires authentication.
	Users map[string]string
	// NoSMTPUTF8 leaves SMTPUTF8 out of the EHLO reply.
	NoSMTPUTF8 bool
	// IdleTimeout makes the upstream drop a client that says nothing for
	// that long, as Postfix does after smtpd_timeout.
	IdleTimeout time.Duration
}

// NewUpstreamWith starts an upstream with the given options.
func NewUpstreamWith(t testing.TB, opts Options) *Upstream {
	t.Helper()
	u := &Upstream{t: t, opts: opts}
	u.srv = u.newServer()
	u.start()
	t.Cleanup(u.stop)
	return u
}

func (u *Upstream) newServer() *smtp.Server {
	srv := smtp.NewServer(u)
	srv.Domain = "upstream.test"
	srv.EnableSMTPUTF8 = !u.opts.NoSMTPUTF8
	srv.EnableDSN = true
	srv.ErrorLog = discardLogger{}
	srv.ReadTimeout = u.opts.IdleTimeout
	if u.opts.TLS != nil && !u.opts.Implicit {
		srv.TLSConfig = u.opts.TLS
	}
	return srv
}

func (u *Upstream) start() {
	addr := "127.0.0.1:0"
	if u.addr != "" {
		addr = u.addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		u.t.Fatalf("fake upstream: %v", err)
	}
	if u.opts.Implicit {
		ln = tls.NewListener(ln, u.opts.TLS)
	}
	u.ln = ln
	u.addr = ln.Addr().String()
	srv := u.srv
	go srv.Serve(ln)
}

// Addr is the upstream's host:port.
func (u *Upstream) Addr() string { return u.addr }

// Conns is how many SMTP sessions the upstream has seen.
func (u *Upstream) Conns() int {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.conns
}

func (u *Upstream) stop() {
	u.srv.Close()
}

// down makes the upstream refuse connections (its port stays reserved by
// nobody; a connect gets RST).
func (u *Upstream) Down() {
	u.srv.Close()
	u.srv = u.newServer()
}

// up restarts a downed upstream on the same address.
func (u *Upstream) Up() { u.start() }

func (u *Upstream) Inject(f Fault) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.faults = append(u.faults, f)
}

func (u *Upstream) Messages() []Message {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := append([]Message(nil), u.got...)
	return out
}

// messageFor returns the only message delivered to rcpt.
func (u *Upstream) MessageFor(rcpt string) Message {
	u.t.Helper()
	var found []Message
	for _, m := range u.Messages() {
		for _, r := range m.Rcpts {
			if strings.EqualFold(r, rcpt) {
				found = append(found, m)
			}
		}
	}
	if len(found) != 1 {
		u.t.Fatalf("upstream got %d messages for %s, want 1", len(found), rcpt)
	}
	return found[0]
}

// take returns the fault for this phase and transaction, consuming one use.
func (u *Upstream) take(phase string, rcpts []string) *Fault {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range u.faults {
		f := &u.faults[i]
		if f.Phase != phase || f.Times < 0 {
			continue
		}
		if f.Rcpt != "" && !containsFold(rcpts, f.Rcpt) {
			continue
		}
		if f.Times > 0 {
			f.Times--
			if f.Times == 0 {
				f.Times = -1
			}
		}
		return f
	}
	return nil
}

func containsFold(list []string, s string) bool {
	for _, x := range list {
		if strings.EqualFold(x, s) {
			return true
		}
	}
	return false
}

func (u *Upstream) NewSession(c *smtp.Conn) (smtp.Session, error) {
	u.mu.Lock()
	u.conns++
	u.mu.Unlock()
	return &session{u: u, conn: c}, nil
}

type session struct {
	u    *Upstream
	conn *smtp.Conn
	msg  Message
	user string
}

// AuthMechanisms and Auth make the upstream accept AUTH PLAIN when Users
// is set.
func (s *session) AuthMechanisms() []string {
	if s.u.opts.Users == nil {
		return nil
	}
	return []string{sasl.Plain}
}

func (s *session) Auth(mech string) (sasl.Server, error) {
	return sasl.NewPlainServer(func(identity, user, pass string) error {
		if want, ok := s.u.opts.Users[user]; !ok || want != pass {
			return smtp.ErrAuthFailed
		}
		s.user = user
		return nil
	}), nil
}

func (s *session) apply(f *Fault) error {
	if f == nil {
		return nil
	}
	if f.Delay > 0 {
		time.Sleep(f.Delay)
	}
	if f.Drop {
		s.conn.Conn().Close()
		return &smtp.SMTPError{Code: 421, Message: "dropped"}
	}
	if f.Err != nil {
		return f.Err
	}
	return nil
}

func (s *session) Reset()        { s.msg = Message{} }
func (s *session) Logout() error { return nil }

func (s *session) Mail(from string, opts *smtp.MailOptions) error {
	if s.u.opts.Users != nil && s.user == "" {
		return &smtp.SMTPError{Code: 530, EnhancedCode: smtp.EnhancedCode{5, 7, 0}, Message: "Authentication required"}
	}
	if err := s.apply(s.u.take("mail", nil)); err != nil {
		return err
	}
	s.msg = Message{From: from, TLS: s.isTLS(), User: s.user}
	if opts != nil {
		s.msg.MailOpts = *opts
	}
	return nil
}

func (s *session) Rcpt(to string, opts *smtp.RcptOptions) error {
	if err := s.apply(s.u.take("rcpt", []string{to})); err != nil {
		return err
	}
	s.msg.Rcpts = append(s.msg.Rcpts, to)
	if opts != nil {
		s.msg.RcptOpts = append(s.msg.RcptOpts, *opts)
	} else {
		s.msg.RcptOpts = append(s.msg.RcptOpts, smtp.RcptOptions{})
	}
	return nil
}

func (s *session) Data(r io.Reader) error {
	f := s.u.take("data", s.msg.Rcpts)
	if f != nil && f.Drop {
		// Read part of the message, then vanish mid-DATA.
		io.CopyN(io.Discard, r, 100)
		s.conn.Conn().Close()
		return &smtp.SMTPError{Code: 421, Message: "dropped"}
	}
	data, err := io.ReadAll(r)
	if err != nil {
		return err
	}
	if err := s.apply(f); err != nil {
		return err
	}
	s.msg.Data = data
	s.u.mu.Lock()
	s.u.got = append(s.u.got, s.msg)
	n := len(s.u.got)
	plain := s.u.PlainReplies
	s.u.mu.Unlock()
	if plain {
		return nil
	}
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("Ok: queued as UP%04d", n)}
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// render prints deliveries in a stable order for golden comparison.
func Render(msgs []Message) []byte {
	sorted := append([]Message(nil), msgs...)
	sort.SliceStable(sorted, func(i, j int) bool {
		return strings.Join(sorted[i].Rcpts, ",") < strings.Join(sorted[j].Rcpts, ",")
	})
	var b bytes.Buffer
	for _, m := range sorted {
		fmt.Fprintf(&b, "=== MAIL FROM:%s%s\n", path(m.From), mailParams(m.MailOpts))
		for i, r := range m.Rcpts {
			fmt.Fprintf(&b, "=== RCPT TO:%s%s\n", path(r), rcptParams(m.RcptOpts[i]))
		}
		b.Write(Normalise(m.Data))
		if !bytes.HasSuffix(m.Data, []byte("\n")) {
			b.WriteString("\n")
		}
	}
	return b.Bytes()
}

func mailParams(o smtp.MailOptions) string {
	var p []string
	if o.UTF8 {
		p = append(p, "SMTPUTF8")
	}
	if o.Return != "" {
		p = append(p, "RET="+string(o.Return))
	}
	if o.EnvelopeID != "" {
		p = append(p, "ENVID="+o.EnvelopeID)
	}
	if o.Body != "" {
		p = append(p, "BODY="+string(o.Body))
	}
	if len(p) == 0 {
		return ""
	}
	return " " + strings.Join(p, " ")
}

func rcptParams(o smtp.RcptOptions) string {
	var p []string
	if len(o.Notify) > 0 {
		n := make([]string, len(o.Notify))
		for i, v := range o.Notify {
			n[i] = string(v)
		}
		p = append(p, "NOTIFY="+strings.Join(n, ","))
	}
	if o.OriginalRecipient != "" {
		p = append(p, "ORCPT="+string(o.OriginalRecipientType)+";"+o.OriginalRecipient)
	}
	if len(p) == 0 {
		return ""
	}
	return " " + strings.Join(p, " ")
}

var variable = []struct {
	re   *regexp.Regexp
	with string
}{
	{regexp.MustCompile(`id [0-9a-z]{16};`), "id RELAYID;"},
	{regexp.MustCompile(`[A-Z][a-z]{2}, \d{2} [A-Z][a-z]{2} \d{4} \d{2}:\d{2}:\d{2} [+-]\d{4}`), "DATE"},
	{regexp.MustCompile(`pixelrelay-dsn-[0-9a-z]{16}`), "pixelrelay-dsn-BOUNDARY"},
	{regexp.MustCompile(`<[0-9a-z]{16}\.dsn@`), "<DSNID.dsn@"},
}

// Normalise masks what changes from run to run (ids, dates) so the
// rest of the upstream bytes can be compared exactly.
func Normalise(b []byte) []byte {
	for _, v := range variable {
		b = v.re.ReplaceAll(b, []byte(v.with))
	}
	return b
}

// path shows an address as received (go-smtp has unquoted it); one with
// characters that would be ambiguous in <…> is shown Go-quoted, so that a
// golden file tells "one odd address" from "an address and a parameter".
func path(addr string) string {
	if strings.ContainsAny(addr, " <>\"\\") {
		return strconv.Quote(addr)
	}
	return "<" + addr + ">"
}

func (s *session) isTLS() bool {
	_, ok := s.conn.TLSConnectionState()
	return ok
}
