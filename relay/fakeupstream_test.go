package relay

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// fakeUpstream is a real SMTP server on loopback (go-smtp) standing in for
// the next hop. It records the exact envelope and bytes of every message it
// accepted, and can be told to fail at any phase, maddy-style.
type fakeUpstream struct {
	t    *testing.T
	srv  *smtp.Server
	ln   net.Listener
	addr string

	mu     sync.Mutex
	got    []upstreamMsg
	faults []fault
	conns  int
}

type upstreamMsg struct {
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
type fault struct {
	phase string
	rcpt  string
	err   *smtp.SMTPError
	delay time.Duration
	drop  bool // close the connection instead of replying
	times int
}

func newFakeUpstream(t *testing.T) *fakeUpstream {
	t.Helper()
	u := &fakeUpstream{t: t}
	u.srv = smtp.NewServer(u)
	u.srv.Domain = "upstream.test"
	u.srv.EnableSMTPUTF8 = true
	u.srv.EnableDSN = true
	u.srv.ErrorLog = discardLogger{}
	u.start()
	t.Cleanup(u.stop)
	return u
}

func (u *fakeUpstream) start() {
	addr := "127.0.0.1:0"
	if u.addr != "" {
		addr = u.addr
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		u.t.Fatalf("fake upstream: %v", err)
	}
	u.ln = ln
	u.addr = ln.Addr().String()
	srv := u.srv
	go srv.Serve(ln)
}

func (u *fakeUpstream) stop() {
	u.srv.Close()
}

// down makes the upstream refuse connections (its port stays reserved by
// nobody; a connect gets RST).
func (u *fakeUpstream) down() {
	u.srv.Close()
	u.srv = smtp.NewServer(u)
	u.srv.Domain = "upstream.test"
	u.srv.EnableSMTPUTF8 = true
	u.srv.EnableDSN = true
	u.srv.ErrorLog = discardLogger{}
}

// up restarts a downed upstream on the same address.
func (u *fakeUpstream) up() { u.start() }

func (u *fakeUpstream) inject(f fault) {
	u.mu.Lock()
	defer u.mu.Unlock()
	u.faults = append(u.faults, f)
}

func (u *fakeUpstream) messages() []upstreamMsg {
	u.mu.Lock()
	defer u.mu.Unlock()
	out := append([]upstreamMsg(nil), u.got...)
	return out
}

// messageFor returns the only message delivered to rcpt.
func (u *fakeUpstream) messageFor(rcpt string) upstreamMsg {
	u.t.Helper()
	var found []upstreamMsg
	for _, m := range u.messages() {
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
func (u *fakeUpstream) take(phase string, rcpts []string) *fault {
	u.mu.Lock()
	defer u.mu.Unlock()
	for i := range u.faults {
		f := &u.faults[i]
		if f.phase != phase || f.times < 0 {
			continue
		}
		if f.rcpt != "" && !containsFold(rcpts, f.rcpt) {
			continue
		}
		if f.times > 0 {
			f.times--
			if f.times == 0 {
				f.times = -1
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

func (u *fakeUpstream) NewSession(c *smtp.Conn) (smtp.Session, error) {
	u.mu.Lock()
	u.conns++
	u.mu.Unlock()
	return &fakeSession{u: u, conn: c}, nil
}

type fakeSession struct {
	u    *fakeUpstream
	conn *smtp.Conn
	msg  upstreamMsg
}

func (s *fakeSession) apply(f *fault) error {
	if f == nil {
		return nil
	}
	if f.delay > 0 {
		time.Sleep(f.delay)
	}
	if f.drop {
		s.conn.Conn().Close()
		return &smtp.SMTPError{Code: 421, Message: "dropped"}
	}
	if f.err != nil {
		return f.err
	}
	return nil
}

func (s *fakeSession) Reset()        { s.msg = upstreamMsg{} }
func (s *fakeSession) Logout() error { return nil }

func (s *fakeSession) Mail(from string, opts *smtp.MailOptions) error {
	if err := s.apply(s.u.take("mail", nil)); err != nil {
		return err
	}
	s.msg = upstreamMsg{From: from}
	if opts != nil {
		s.msg.MailOpts = *opts
	}
	return nil
}

func (s *fakeSession) Rcpt(to string, opts *smtp.RcptOptions) error {
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

func (s *fakeSession) Data(r io.Reader) error {
	f := s.u.take("data", s.msg.Rcpts)
	if f != nil && f.drop {
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
	s.u.mu.Unlock()
	return &smtp.SMTPError{Code: 250, EnhancedCode: smtp.EnhancedCode{2, 0, 0}, Message: fmt.Sprintf("Ok: queued as UP%04d", n)}
}

type discardLogger struct{}

func (discardLogger) Printf(string, ...any) {}
func (discardLogger) Println(...any)        {}

// render prints deliveries in a stable order for golden comparison.
func renderDeliveries(msgs []upstreamMsg) []byte {
	sorted := append([]upstreamMsg(nil), msgs...)
	sort.SliceStable(sorted, func(i, j int) bool {
		return strings.Join(sorted[i].Rcpts, ",") < strings.Join(sorted[j].Rcpts, ",")
	})
	var b bytes.Buffer
	for _, m := range sorted {
		fmt.Fprintf(&b, "=== MAIL FROM:<%s>%s\n", m.From, mailParams(m.MailOpts))
		for i, r := range m.Rcpts {
			fmt.Fprintf(&b, "=== RCPT TO:<%s>%s\n", r, rcptParams(m.RcptOpts[i]))
		}
		b.Write(normaliseVariable(m.Data))
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
