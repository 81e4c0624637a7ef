package relay

import (
	"bytes"
	"fmt"
	"strings"
	"unicode/utf8"
)

// fixORCPTLine rewrites an ORCPT of type rfc822 whose xtext decodes to
// non-ASCII into the utf-8 type of RFC 6533, in one complete RCPT line.
//
// Postfix's smtp and lmtp clients send a UTF-8 original recipient as
// ORCPT=rfc822;jos+C3+A9@example.fr. RFC 3461 wants rfc822 addresses in
// ASCII, so go-smtp answers 501 before the session sees the RCPT, and
// Postfix bounces that recipient: as a content filter, pixelrelay would
// lose its mail. The meaning is unambiguous, so the connection wrapper
// (trackedConn) passes it on in the form go-smtp accepts.
func fixORCPTLine(line []byte) ([]byte, bool) {
	if len(line) < 5 || !bytes.EqualFold(line[:5], []byte("RCPT ")) {
		return line, false
	}
	// Upper-case ASCII only: bytes.ToUpper changes the length of invalid
	// UTF-8 and of letters such as ı or ſ, and i must index line.
	up := asciiUpper(line)
	i := bytes.Index(up, []byte(" ORCPT=RFC822;"))
	if i < 0 {
		return line, false
	}
	start := i + len(" ORCPT=RFC822;")
	end := start
	for end < len(line) && line[end] != ' ' && line[end] != '\r' && line[end] != '\n' {
		end++
	}
	addr, ok := decodeXtext(string(line[start:end]))
	if !ok || isASCII(addr) || !utf8.ValidString(addr) {
		return line, false
	}
	var b bytes.Buffer
	b.Write(line[:i])
	b.WriteString(" ORCPT=utf-8;")
	b.WriteString(utf8AddrXtext(addr))
	b.Write(line[end:])
	return b.Bytes(), true
}

// decodeXtext undoes RFC 3461 xtext (+HH escapes).
func decodeXtext(s string) (string, bool) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '+' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", false
		}
		var v byte
		if _, err := fmt.Sscanf(s[i+1:i+3], "%02X", &v); err != nil {
			return "", false
		}
		b.WriteByte(v)
		i += 2
	}
	return b.String(), true
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= 0x80 {
			return false
		}
	}
	return true
}

// utf8AddrXtext encodes RFC 6533's utf-8-addr-xtext: everything but
// printable ASCII other than + and = becomes \x{HEX}.
func utf8AddrXtext(s string) string {
	var b strings.Builder
	for _, r := range s {
		if r >= '!' && r <= '~' && r != '+' && r != '=' {
			b.WriteRune(r)
		} else {
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
	}
	return b.String()
}

// utf8AddrUnitext encodes RFC 6533's utf-8-addr-unitext, for upstreams
// that speak SMTPUTF8: non-ASCII stays as UTF-8.
func utf8AddrUnitext(s string) string {
	var b strings.Builder
	for _, r := range s {
		switch {
		case r >= '!' && r <= '~' && r != '+' && r != '=', r >= 0x80:
			b.WriteRune(r)
		default:
			fmt.Fprintf(&b, `\x{%X}`, r)
		}
	}
	return b.String()
}

func asciiUpper(b []byte) []byte {
	up := make([]byte, len(b))
	for i, c := range b {
		if 'a' <= c && c <= 'z' {
			c -= 'a' - 'A'
		}
		up[i] = c
	}
	return up
}
