package relay

import (
	"crypto/rand"
	"encoding/base32"
	"fmt"
	"net/netip"
	"strings"
	"time"
)

// hasControl reports bytes that must never reach the upstream or a header:
// CR and LF would let a client inject commands or header lines.
func hasControl(s string) bool {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c < 0x20 || c == 0x7f {
			return true
		}
	}
	return false
}

// quoteAddress re-quotes the local part that go-smtp's parser unquoted.
// Forwarding `john doe@x` verbatim would be refused, and
// `x> NOTIFY=SUCCESS@x` would inject a parameter into the upstream's RCPT.
func quoteAddress(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		if isDotAtom(addr) {
			return addr
		}
		return quoteLocal(addr)
	}
	local, domain := addr[:at], addr[at+1:]
	if isDotAtom(local) {
		return addr
	}
	return quoteLocal(local) + "@" + domain
}

func quoteLocal(local string) string {
	var b strings.Builder
	b.WriteByte('"')
	for i := 0; i < len(local); i++ {
		if c := local[i]; c == '"' || c == '\\' {
			b.WriteByte('\\')
		}
		b.WriteByte(local[i])
	}
	b.WriteByte('"')
	return b.String()
}

// isDotAtom implements RFC 5321's Dot-string, with UTF-8 allowed for
// SMTPUTF8 (RFC 6531).
func isDotAtom(s string) bool {
	if s == "" || s[0] == '.' || s[len(s)-1] == '.' || strings.Contains(s, "..") {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 0x80, c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		case strings.IndexByte("!#$%&'*+-/=?^_`{|}~.", c) >= 0:
		default:
			return false
		}
	}
	return true
}

// domainOf returns the lower-cased domain of an address, or "".
func domainOf(addr string) string {
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return ""
	}
	return strings.ToLower(addr[at+1:])
}

var idEncoding = base32.NewEncoding("0123456789abcdefghjkmnpqrstvwxyz").WithPadding(base32.NoPadding)

// newID returns a short random id for the Received: header and the audit
// record, so an operator can follow one message through both.
func newID() string {
	var b [10]byte
	rand.Read(b[:])
	return idEncoding.EncodeToString(b[:])
}

// receivedHeader is the one line the relay adds to every message (RFC 5321
// §4.4). It names no recipient: a "for" clause would make the copies of one
// group differ, and would put an address in every copy.
func receivedHeader(helo string, remote netip.Addr, host, proto, id string, now time.Time) []byte {
	from := printable(helo)
	if from == "" {
		from = "unknown"
	}
	ip := "unknown"
	if remote.IsValid() {
		ip = remote.Unmap().String()
		if remote.Is6() && !remote.Is4In6() {
			ip = "IPv6:" + ip
		}
	}
	return fmt.Appendf(nil, "Received: from %s ([%s])\r\n\tby %s (pixelrelay) with %s id %s;\r\n\t%s\r\n",
		from, ip, printable(host), proto, id, now.Format(time.RFC1123Z))
}

// printable keeps a header value to visible ASCII; a HELO name is chosen by
// the client and must not smuggle anything into the header.
func printable(s string) string {
	var b strings.Builder
	for i := 0; i < len(s) && b.Len() < 255; i++ {
		c := s[i]
		if c > 0x20 && c < 0x7f && c != '(' && c != ')' {
			b.WriteByte(c)
		} else {
			b.WriteByte('?')
		}
	}
	return b.String()
}

// protocolName follows RFC 3848: ESMTP plus S for TLS and A for AUTH.
func protocolName(lmtp, tls, auth bool) string {
	p := "ESMTP"
	if lmtp {
		p = "LMTP"
	}
	if tls {
		p += "S"
	}
	if auth {
		p += "A"
	}
	return p
}
