package relay

import (
	"context"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/textproto"
	"regexp"
	"strings"
	"sync"

	"github.com/emersion/go-smtp"

	"github.com/pixelrelay/pixelrelay/consent"
)

// addressLike matches what could be an email address in free text: a
// whole <…> or "…" containing an @ (an address with a blank in its local
// part would otherwise leave the words before the blank behind), or a
// quoted or unquoted local part, an @, and a domain or address literal.
var addressLike = regexp.MustCompile(`<[^<>\r\n]*@[^<>\r\n]*>|"[^"\r\n]*@[^"\r\n]*"|(?:"(?:[^"\\]|\\.)*"|[^\s<>"'(),;:\[\]@]+)@(?:\[[^\]\s]*\]|[^\s<>"'(),;:\[\]@]+)`)

// redactAddresses removes anything address-like from text that came from
// outside before it reaches the operational log, which must hold no
// recipient address at any level. It is the last resort, for text that
// cannot be left out (go-smtp's own error log); everywhere else the log
// gets a code or a class, never outside text.
func redactAddresses(s string) string {
	return addressLike.ReplaceAllStringFunc(s, func(m string) string {
		switch {
		case m[0] == '<':
			return "<[address]>"
		case m[0] == '"' && !strings.Contains(m[1:], `"@`):
			return `"[address]"`
		}
		return "[address]"
	})
}

// ephemeralKey keys the pseudonyms of addresses the consent store cannot
// pseudonymise. It lives and dies with the process, so such a pseudonym is
// never confused with a stable one, nor matched in a later process.
var ephemeralKey = sync.OnceValue(func() []byte {
	k := make([]byte, 32)
	rand.Read(k)
	return k
})

// ephemeralPrefix marks a pseudonym that stands for its address only
// within this process: the audit log shows it is not the consent store's
// (it matches no consent record), and recipients stay told apart.
const ephemeralPrefix = "hmac-sha256-ephemeral:"

func ephemeralPseudonym(addr string) string {
	m := hmac.New(sha256.New, ephemeralKey())
	m.Write([]byte(strings.ToLower(addr)))
	return ephemeralPrefix + hex.EncodeToString(m.Sum(nil))
}

// consentErrorCause names a consent store failure for the operational
// log: the store's messages quote the address, so only the class is
// logged, with what the operator can do about it.
func consentErrorCause(err error) []any {
	var ne net.Error
	cause, hint := "other", ""
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.As(err, &ne) && ne.Timeout():
		cause, hint = "timeout", "the consent store did not answer in time; check its load and disk"
	case errors.Is(err, context.Canceled):
		cause = "canceled"
	case errors.Is(err, consent.ErrInvalidInput):
		cause, hint = "invalid_address", "the store cannot normalise this address (valid SMTP, but not a plain user@domain)"
	case errors.Is(err, consent.ErrNotFound):
		cause, hint = "no_key", "the database has no pseudonym key yet; run serve once with a writable database"
	case errors.Is(err, consent.ErrCorrupt), errors.Is(err, consent.ErrChainBroken):
		cause, hint = "damaged", "run pixelrelay consent verify and restore from backup if it fails"
	}
	attrs := []any{"cause", cause}
	if hint != "" {
		attrs = append(attrs, "hint", hint)
	} else {
		attrs = append(attrs, "err_type", fmt.Sprintf("%T", err))
	}
	return attrs
}

// upstreamCause describes an upstream failure for the operational log.
// The upstream's reply text often names the recipient ("<bob@…>: Recipient
// address rejected"), so a reply is logged by its codes only; a transport
// error's text is Go's and names only the upstream host.
func upstreamCause(err error) slog.Attr {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		e := se.EnhancedCode
		if e == (smtp.EnhancedCode{}) || e == smtp.NoEnhancedCode {
			return slog.String("reply", fmt.Sprint(se.Code))
		}
		return slog.String("reply", fmt.Sprintf("%d %d.%d.%d", se.Code, e[0], e[1], e[2]))
	}
	var pe textproto.ProtocolError
	if errors.As(err, &pe) {
		return slog.String("err", "the upstream sent a malformed reply")
	}
	return slog.String("err", err.Error())
}
