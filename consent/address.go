package consent

import (
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
	"golang.org/x/text/unicode/norm"
)

// Limits from RFC 5321 §4.5.3.1.
const (
	maxLocalLen   = 64
	maxDomainLen  = 253
	maxAddressLen = 254
)

// NormalizeAddress returns the subject form of addr, the one every key and
// pseudonym is derived from: the domain lower-cased and converted from IDNA
// to ASCII, the local part lower-cased (and NFC-normalised when it is not
// ASCII). With ignorePlusTag a "+tag" suffix of the local part is dropped,
// so bob+news@example.com and bob@example.com are one subject.
//
// Local parts are case-sensitive in theory (RFC 5321 §2.4) but nobody
// deploys that, and two consent records for Bob and bob would be a worse
// failure than the one it avoids.
func NormalizeAddress(addr string, ignorePlusTag bool) (string, error) {
	b, err := appendNormalized(nil, addr, ignorePlusTag, true)
	if err != nil {
		return "", err
	}
	return string(b), nil
}

// appendNormalized appends the normalised address to dst. strict validates
// everything (used before anything is stored); the lookup path passes
// strict=false and skips the punycode validation of "xn--" labels, which is
// safe because an invalid address can never have been stored, and for every
// valid address both modes produce the same bytes.
//
// The ASCII path allocates nothing beyond dst; the relay calls it per RCPT.
func appendNormalized(dst []byte, addr string, ignorePlusTag, strict bool) ([]byte, error) {
	addr = strings.TrimSpace(addr)
	if addr == "" {
		return dst, invalidf("empty address")
	}
	if len(addr) > 4*maxAddressLen {
		return dst, invalidf("address %.40q… is too long", addr)
	}
	at := strings.LastIndexByte(addr, '@')
	if at < 0 {
		return dst, invalidf("%q is not an email address: no @", addr)
	}
	local, domain := addr[:at], addr[at+1:]
	if strings.ContainsAny(addr, "<>") {
		return dst, invalidf("%q is not a bare email address: give only user@domain, without a display name or <>", addr)
	}
	if local == "" {
		return dst, invalidf("%q is not an email address: nothing before the @", addr)
	}
	if domain == "" {
		return dst, invalidf("%q is not an email address: nothing after the @", addr)
	}
	start := len(dst)
	var err error
	if dst, err = appendLocal(dst, addr, local, ignorePlusTag); err != nil {
		return dst[:start], err
	}
	dst = append(dst, '@')
	if dst, err = appendDomain(dst, addr, domain, strict); err != nil {
		return dst[:start], err
	}
	if len(dst)-start > maxAddressLen {
		return dst[:start], invalidf("%q is longer than %d characters", addr, maxAddressLen)
	}
	return dst, nil
}

func isAtext(c byte) bool {
	switch {
	case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z', c >= '0' && c <= '9':
		return true
	}
	return strings.IndexByte("!#$%&'*+-/=?^_`{|}~", c) >= 0
}

func appendLocal(dst []byte, addr, local string, ignorePlusTag bool) ([]byte, error) {
	if local[0] == '"' {
		return appendQuotedLocal(dst, addr, local)
	}
	if ignorePlusTag {
		if i := strings.IndexByte(local, '+'); i > 0 {
			local = local[:i]
		}
	}
	ascii := true
	for i := 0; i < len(local); i++ {
		c := local[i]
		switch {
		case c >= 0x80:
			ascii = false
		case c == '.':
			if i == 0 || i == len(local)-1 || local[i-1] == '.' {
				return dst, invalidf("%q is not a valid address: misplaced dot in the local part", addr)
			}
		case !isAtext(c):
			return dst, invalidf("%q is not a valid address: character %q is not allowed before the @ (quote the local part if it is really meant)", addr, c)
		}
	}
	if ascii {
		if len(local) > maxLocalLen {
			return dst, invalidf("%q: the part before the @ is longer than %d characters", addr, maxLocalLen)
		}
		return appendLowerASCII(dst, local), nil
	}
	// SMTPUTF8 local part (RFC 6531): any valid UTF-8 except controls.
	if !utf8.ValidString(local) {
		return dst, invalidf("%q is not valid UTF-8", addr)
	}
	for _, r := range local {
		if r < 0x20 || r == 0x7f || (r >= 0x80 && r < 0xa0) || r == ' ' {
			return dst, invalidf("%q is not a valid address: control or blank character before the @", addr)
		}
	}
	l := norm.NFC.String(strings.ToLower(local))
	if len(l) > maxLocalLen {
		return dst, invalidf("%q: the part before the @ is longer than %d bytes", addr, maxLocalLen)
	}
	return append(dst, l...), nil
}

// appendQuotedLocal accepts an RFC 5321 quoted-string local part. Rare, but
// valid, and refusing it would make a real recipient unrepresentable.
func appendQuotedLocal(dst []byte, addr, local string) ([]byte, error) {
	if len(local) < 2 || local[len(local)-1] != '"' {
		return dst, invalidf("%q is not a valid address: unbalanced quote", addr)
	}
	if len(local) > maxLocalLen {
		return dst, invalidf("%q: the part before the @ is longer than %d characters", addr, maxLocalLen)
	}
	inner := local[1 : len(local)-1]
	for i := 0; i < len(inner); i++ {
		c := inner[i]
		switch {
		case c == '\\':
			i++
			if i == len(inner) {
				return dst, invalidf("%q is not a valid address: dangling backslash", addr)
			}
		case c == '"':
			return dst, invalidf("%q is not a valid address: unescaped quote", addr)
		case c < 0x20 || c > 0x7e:
			return dst, invalidf("%q is not a valid address: control character in the quoted local part", addr)
		}
	}
	return appendLowerASCII(dst, local), nil
}

// appendLowerASCII appends s with A-Z lowered. The hot path normalises
// every recipient; strings.ToLower would allocate.
func appendLowerASCII(dst []byte, s string) []byte {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c >= 'A' && c <= 'Z' {
			c += 'a' - 'A'
		}
		dst = append(dst, c)
	}
	return dst
}

func appendDomain(dst []byte, addr, domain string, strict bool) ([]byte, error) {
	if domain[0] == '[' {
		return dst, invalidf("%q: address literals ([…]) are not supported; use a domain name", addr)
	}
	ascii, punycode := true, false
	for i := 0; i < len(domain); i++ {
		if domain[i] >= 0x80 {
			ascii = false
			break
		}
	}
	if ascii {
		for label := range strings.SplitSeq(domain, ".") {
			if len(label) >= 4 && strings.EqualFold(label[:4], "xn--") {
				punycode = true
			}
		}
	}
	if ascii && !(punycode && strict) {
		start := len(dst)
		dst = appendLowerASCII(dst, domain)
		if err := checkLDH(dst[start:], addr); err != nil {
			return dst[:start], err
		}
		return dst, nil
	}
	if !utf8.ValidString(domain) {
		return dst, invalidf("%q: the domain is not valid UTF-8", addr)
	}
	a, err := idna.Lookup.ToASCII(domain)
	if err != nil {
		return dst, invalidf("%q: the domain is not a valid internationalised domain name (%v)", addr, err)
	}
	start := len(dst)
	dst = append(dst, a...)
	if err := checkLDH(dst[start:], addr); err != nil {
		return dst[:start], err
	}
	return dst, nil
}

// checkLDH validates an ASCII, lower-cased domain: letters, digits and
// hyphens in labels of 1 to 63 characters, at least two labels, and a
// top-level label that is not all digits (so an IP address is refused).
func checkLDH(d []byte, addr string) error {
	if len(d) > maxDomainLen {
		return invalidf("%q: the domain is longer than %d characters", addr, maxDomainLen)
	}
	// digitsOnly tracks the current label; after the loop, the last one.
	labels, labelStart, digitsOnly := 0, 0, true
	for i := 0; i <= len(d); i++ {
		if i == len(d) || d[i] == '.' {
			n := i - labelStart
			if n == 0 {
				return invalidf("%q: the domain has an empty label", addr)
			}
			if n > 63 {
				return invalidf("%q: a domain label is longer than 63 characters", addr)
			}
			if d[labelStart] == '-' || d[i-1] == '-' {
				return invalidf("%q: a domain label starts or ends with a hyphen", addr)
			}
			labels++
			if i < len(d) {
				digitsOnly = true
			}
			labelStart = i + 1
			continue
		}
		c := d[i]
		switch {
		case c >= 'a' && c <= 'z':
			digitsOnly = false
		case c >= '0' && c <= '9':
		case c == '-':
			digitsOnly = false
		default:
			return invalidf("%q: character %q is not allowed in a domain", addr, c)
		}
	}
	if labels < 2 {
		return invalidf("%q: the domain %q has no dot; a public address needs one", addr, d)
	}
	if digitsOnly {
		return invalidf("%q: the domain looks like an IP address; use a domain name", addr)
	}
	return nil
}
