package relay

import (
	"bufio"
	"crypto/sha256"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/emersion/go-sasl"
	"github.com/emersion/go-smtp"
	"golang.org/x/crypto/bcrypt"
)

// User is one AUTH account from the --users file.
type User struct {
	Name string
	hash []byte
	// Senders limits the envelope senders this user may use: full
	// addresses, or "@domain" for a whole domain. Empty: any sender.
	Senders []string
}

// MaySend tells whether the user may use from as envelope sender.
func (u *User) MaySend(from string) bool {
	if len(u.Senders) == 0 {
		return true
	}
	from = strings.ToLower(from)
	for _, s := range u.Senders {
		s = strings.ToLower(s)
		if strings.HasPrefix(s, "@") {
			if strings.HasSuffix(from, s) {
				return true
			}
		} else if from == s {
			return true
		}
	}
	return false
}

// LoadUsers reads the users file. One user per line:
//
//	NAME BCRYPT-HASH [SENDER[,SENDER…]]
//
// where a SENDER is an address or @domain; # starts a comment. Hashes are
// made with `htpasswd -nbBC 10 NAME PASSWORD` or any bcrypt tool.
func LoadUsers(path string) (map[string]*User, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return parseUsers(f, path)
}

func parseUsers(r io.Reader, name string) (map[string]*User, error) {
	users := map[string]*User{}
	var errs []error
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Fields(line)
		if len(f) < 2 || len(f) > 3 {
			errs = append(errs, fmt.Errorf("%s:%d: want NAME BCRYPT-HASH [SENDERS], got %d fields", name, n, len(f)))
			continue
		}
		if _, err := bcrypt.Cost([]byte(f[1])); err != nil {
			errs = append(errs, fmt.Errorf("%s:%d: user %s: the password is not a bcrypt hash ($2a$/$2b$/$2y$); make one with: htpasswd -nbBC 10 %s PASSWORD", name, n, f[0], f[0]))
			continue
		}
		if _, dup := users[f[0]]; dup {
			errs = append(errs, fmt.Errorf("%s:%d: user %s is listed twice", name, n, f[0]))
			continue
		}
		u := &User{Name: f[0], hash: []byte(f[1])}
		if len(f) == 3 {
			for _, s := range strings.Split(f[2], ",") {
				if s = strings.TrimSpace(s); s != "" {
					u.Senders = append(u.Senders, s)
				}
			}
		}
		users[u.Name] = u
	}
	if err := sc.Err(); err != nil {
		errs = append(errs, err)
	}
	return users, errors.Join(errs...)
}

// authenticator checks passwords. bcrypt costs 50–100 ms by design, which
// would cap an app that opens a connection per message at ten or twenty
// messages a second; so a successful check is remembered briefly, keyed by
// a hash of the user and password, never the password itself.
type authenticator struct {
	mu    sync.Mutex
	users map[string]*User
	ok    map[[32]byte]time.Time
	okTTL time.Duration
	// failures per source address, for throttling password guessing.
	fails     map[netip.Addr]*failCount
	maxFails  int
	failReset time.Duration
	now       func() time.Time
}

type failCount struct {
	n     int
	first time.Time
}

func newAuthenticator(users map[string]*User, maxFails int) *authenticator {
	return &authenticator{
		users:     users,
		ok:        map[[32]byte]time.Time{},
		okTTL:     5 * time.Minute,
		fails:     map[netip.Addr]*failCount{},
		maxFails:  maxFails,
		failReset: 15 * time.Minute,
		now:       time.Now,
	}
}

// setUsers replaces the user table (SIGHUP) and forgets cached successes,
// so a removed user or a changed password takes effect at once.
func (a *authenticator) setUsers(users map[string]*User) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.users = users
	a.ok = map[[32]byte]time.Time{}
}

func (a *authenticator) setMaxFails(n int) {
	a.mu.Lock()
	a.maxFails = n
	a.mu.Unlock()
}

// blocked tells whether src has failed too often recently.
func (a *authenticator) blocked(src netip.Addr) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	f := a.fails[src]
	if f == nil {
		return false
	}
	if a.now().Sub(f.first) > a.failReset {
		delete(a.fails, src)
		return false
	}
	return f.n >= a.maxFails
}

// check verifies user and password; it returns the user on success.
func (a *authenticator) check(src netip.Addr, name, password string) (*User, bool) {
	key := sha256.Sum256([]byte(name + "\x00" + password))
	a.mu.Lock()
	u := a.users[name]
	until, cached := a.ok[key]
	a.mu.Unlock()
	if u != nil && cached && a.now().Before(until) {
		return u, true
	}
	var hash []byte
	if u != nil {
		hash = u.hash
	} else {
		// Spend the same time on unknown users as on wrong passwords, so
		// timing does not reveal which user names exist.
		hash = dummyHash
	}
	good := bcrypt.CompareHashAndPassword(hash, []byte(password)) == nil && u != nil
	a.mu.Lock()
	defer a.mu.Unlock()
	if good {
		if len(a.ok) > 10000 {
			a.ok = map[[32]byte]time.Time{}
		}
		a.ok[key] = a.now().Add(a.okTTL)
		delete(a.fails, src)
		return u, true
	}
	f := a.fails[src]
	if f == nil || a.now().Sub(f.first) > a.failReset {
		f = &failCount{first: a.now()}
		a.fails[src] = f
	}
	f.n++
	return nil, false
}

var dummyHash, _ = bcrypt.GenerateFromPassword([]byte("pixelrelay timing equaliser"), bcrypt.DefaultCost)

var errAuthThrottled = reply(421, smtp.EnhancedCode{4, 7, 0}, "Too many failed AUTH attempts from your address; closing")

// AuthMechanisms implements smtp.AuthSession. go-smtp advertises them only
// under TLS (or on an explicitly insecure loopback listener).
func (s *session) AuthMechanisms() []string {
	if s.r.auth == nil {
		return nil
	}
	return []string{sasl.Plain, sasl.Login}
}

// Auth implements smtp.AuthSession.
func (s *session) Auth(mech string) (sasl.Server, error) {
	a := s.r.auth
	if a == nil {
		return nil, smtp.ErrAuthUnsupported
	}
	if a.blocked(s.remote) {
		s.closeAfterReply()
		return nil, errAuthThrottled
	}
	login := func(identity, user, pass string) error {
		if identity != "" && identity != user {
			return smtp.ErrAuthFailed
		}
		u, ok := a.check(s.remote, user, pass)
		if !ok {
			s.r.log.Warn("AUTH failed", "remote", s.remote.String(), "user", printable(user))
			if a.blocked(s.remote) {
				s.closeAfterReply()
				return errAuthThrottled
			}
			return smtp.ErrAuthFailed
		}
		s.mu.Lock()
		s.user = u.Name
		s.account = u
		s.mu.Unlock()
		return nil
	}
	switch mech {
	case sasl.Plain:
		return sasl.NewPlainServer(login), nil
	case sasl.Login:
		return &loginServer{auth: func(user, pass string) error { return login("", user, pass) }}, nil
	}
	return nil, smtp.ErrAuthUnknownMechanism
}

// loginServer is the server side of the obsolete but ubiquitous LOGIN
// mechanism (Outlook, many app frameworks); go-sasl has only its client.
type loginServer struct {
	auth  func(user, pass string) error
	user  string
	state int
}

func (l *loginServer) Next(response []byte) (challenge []byte, done bool, err error) {
	switch l.state {
	case 0:
		l.state = 1
		if response == nil {
			return []byte("Username:"), false, nil
		}
		// An initial response (AUTH LOGIN dXNlcg==) carries the user name.
		fallthrough
	case 1:
		l.user = string(response)
		l.state = 2
		return []byte("Password:"), false, nil
	case 2:
		l.state = 3
		if err := l.auth(l.user, string(response)); err != nil {
			return nil, true, err
		}
		return nil, true, nil
	}
	return nil, true, errors.New("unexpected LOGIN response")
}
