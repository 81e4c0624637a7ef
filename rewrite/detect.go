package rewrite

import (
	"bytes"
	"compress/zlib"
	"crypto/md5"
	"crypto/sha1"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"html"
	"io"
	"net/url"
	"strings"
	"unicode"
)

// Reason codes, as pinned in CONTRACTS.md (scan --json "reasons").
const (
	ReasonVendor      = "vendor"
	ReasonRecipientID = "recipient-id"
	ReasonTiny        = "tiny"
	ReasonHidden      = "hidden"
	ReasonOpenPath    = "open-path"
	ReasonOpaqueToken = "opaque-token"
	ReasonUserRule    = "user-rule"
)

// Vectors, as pinned in CONTRACTS.md (scan --json "vector"). Audio and
// <source src> count as "video", <embed> as "object", SVG <image> as "img".
const (
	VectorImg        = "img"
	VectorSrcset     = "srcset"
	VectorBackground = "background"
	VectorCSS        = "css"
	VectorVML        = "vml"
	VectorAmpImg     = "amp-img"
	VectorInput      = "input"
	VectorVideo      = "video"
	VectorLink       = "link"
	VectorObject     = "object"
	VectorIframe     = "iframe"
)

// repeatLimit is how often one URL may appear in a part before it counts as
// layout (a spacer) rather than a per-message beacon; Trocker uses the same
// threshold.
const repeatLimit = 5

// cleanURL turns a raw attribute value into the URL a client would fetch:
// character references undone, then parsed as absURL does. It returns ""
// for anything that is not a remote http(s) URL after resolving against
// base.
func cleanURL(raw []byte, base string) string {
	raw = trimSpaceBytes(raw)
	if len(raw) == 0 {
		return ""
	}
	if bytes.IndexByte(raw, '&') >= 0 {
		return absURL(html.UnescapeString(string(raw)), base)
	}
	return absURL(string(raw), base)
}

// absURL parses s the way the WHATWG URL parser does for a document whose
// base URL is base (an http(s) page when base is ""), and returns the
// absolute http(s) URL it fetches, or "" when it fetches nothing remote.
// Browsers repair malformed http(s) URLs and fetch them, so the repairs
// are made here too: C0 controls and spaces around the URL are dropped,
// tabs and newlines inside it removed, "\" read as "/" before the query,
// and any run of slashes after "http(s):" skipped ("https:t.example/o.gif"
// and "https:\\t.example\o.gif" both fetch https://t.example/o.gif).
// A URL already in canonical form is returned as it is.
func absURL(s, base string) string {
	s = cleanURLString(s)
	if s == "" {
		return ""
	}
	scheme := schemeOf(s)
	rest := s[len(scheme):]
	switch {
	case scheme == "":
		if len(rest) < 2 || !isURLSlash(rest[0]) || !isURLSlash(rest[1]) {
			return resolveRef(base, s)
		}
		// Scheme-relative: the document's scheme.
		scheme = "https"
		if bs := schemeOf(base); strings.EqualFold(bs, "http") {
			scheme = "http"
		}
	case strings.EqualFold(scheme, "http"), strings.EqualFold(scheme, "https"):
		rest = rest[1:] // the ':'
		if (len(rest) < 2 || !isURLSlash(rest[0]) || !isURLSlash(rest[1])) && base != "" && strings.EqualFold(schemeOf(base), scheme) {
			// "https:o.gif" on an https page is relative to the page.
			return resolveRef(base, rest)
		}
	default:
		return "" // cid:, data:, mailto: and the like fetch nothing remote
	}
	n := 0
	for n < len(rest) && isURLSlash(rest[n]) {
		n++
	}
	rest = rest[n:]
	if rest == "" || rest[0] == '?' || rest[0] == '#' {
		return "" // no host: the parser fails
	}
	fixed := slashesBeforeQuery(rest)
	if n == 2 && len(s) > len(scheme)+3 && s[len(scheme):len(scheme)+3] == "://" && len(fixed) == len(rest) && fixed == rest {
		return s
	}
	return lowerASCII(scheme) + "://" + fixed
}

// cleanURLString drops what the URL parser drops before it starts: C0
// controls and spaces at either end (other Unicode spaces too, which only
// errs towards judging a URL), and every tab and newline. A NUL became
// U+FFFD in the HTML or CSS tokenizer, so it is no control any more.
func cleanURLString(s string) string {
	if strings.IndexByte(s, 0) >= 0 {
		s = strings.ReplaceAll(s, "\x00", "\uFFFD")
	}
	s = strings.TrimFunc(s, func(r rune) bool { return r <= ' ' || unicode.IsSpace(r) })
	if strings.ContainsAny(s, "\t\n\r") {
		s = strings.Map(func(r rune) rune {
			if r == '\t' || r == '\n' || r == '\r' {
				return -1
			}
			return r
		}, s)
	}
	return s
}

func isURLSlash(c byte) bool { return c == '/' || c == '\\' }

// slashesBeforeQuery turns every "\" before the query or fragment into "/",
// as the parser does for http(s) URLs.
func slashesBeforeQuery(s string) string {
	end := strings.IndexAny(s, "?#")
	if end < 0 {
		end = len(s)
	}
	if strings.IndexByte(s[:end], '\\') < 0 {
		return s
	}
	return strings.ReplaceAll(s[:end], "\\", "/") + s[end:]
}

// resolveRef resolves a relative reference against base; "" when there is
// no base or the result is not http(s).
func resolveRef(base, ref string) string {
	if base == "" || schemeOf(ref) != "" {
		// cid:, data:, mailto: and relative URLs without a <base> fetch
		// nothing remote.
		return ""
	}
	b, err := url.Parse(base)
	if err != nil {
		return ""
	}
	r, err := url.Parse(slashesBeforeQuery(ref))
	if err != nil {
		return ""
	}
	abs := b.ResolveReference(r).String()
	if hasPrefixFold(abs, "https://") || hasPrefixFold(abs, "http://") {
		return abs
	}
	return ""
}

func schemeOf(s string) string {
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
		case (c >= '0' && c <= '9' || c == '+' || c == '-' || c == '.') && i > 0:
		case c == ':' && i > 0:
			return s[:i]
		default:
			return ""
		}
	}
	return ""
}

// splitURL returns the lower-case host name (no user info, no port) and the
// path and query of an absolute http(s) URL, without the fragment.
func splitURL(u string) (host, target string) {
	i := strings.Index(u, "//")
	if i < 0 {
		return "", ""
	}
	rest := u[i+2:]
	end := strings.IndexAny(rest, "/?#")
	auth := rest
	if end >= 0 {
		auth, target = rest[:end], rest[end:]
	}
	if at := strings.LastIndexByte(auth, '@'); at >= 0 {
		auth = auth[at+1:]
	}
	if strings.HasPrefix(auth, "[") {
		if j := strings.IndexByte(auth, ']'); j >= 0 {
			auth = auth[:j+1]
		}
	} else if c := strings.IndexByte(auth, ':'); c >= 0 {
		auth = auth[:c]
	}
	host = lowerASCII(strings.TrimSuffix(auth, "."))
	if h := strings.IndexByte(target, '#'); h >= 0 {
		target = target[:h]
	}
	if target == "" || target[0] == '?' {
		target = "/" + target
	}
	return host, target
}

// openPath reports a path or query shaped like an open endpoint. Alone it
// is weak: it needs an opaque token or hidden placement as well.
func openPath(host, target string) bool {
	path, query := target, ""
	if q := strings.IndexByte(target, '?'); q >= 0 {
		path, query = target[:q], target[q+1:]
	}
	lq := lowerASCII(query)
	if strings.Contains(lq, "=open") || strings.Contains(lq, "type=open") || strings.Contains(lq, "event=open") {
		return true
	}
	first := ""
	rest := strings.Trim(path, "/")
	for i := 0; rest != "" || i == 0; i++ {
		seg := rest
		if j := strings.IndexByte(rest, '/'); j >= 0 {
			seg, rest = rest[:j], rest[j+1:]
		} else {
			rest = ""
		}
		if i == 0 {
			first = seg
		}
		s := seg
		if dot := strings.LastIndexByte(s, '.'); dot > 0 {
			s = s[:dot]
		}
		if len(s) > 8 {
			continue
		}
		s = lowerASCII(s)
		switch s {
		case "open", "opened", "openrate", "trk", "track", "tracking", "trace", "pixel", "beacon", "px", "imp", "op", "eo", "oo":
			return true
		case "o", "mo":
			// The generic shape: first segment /o or /mo, or /e/o.
			if i == 0 || (i == 1 && first == "e") {
				return true
			}
		}
	}
	return false
}

// opaqueToken reports a path segment or query value that looks like a
// per-message identifier: long, and mixing letters with digits, or hex, or a
// UUID. Content images often have hashed names too, so this is weak.
func opaqueToken(target string) bool {
	n := 0
	start := 0
	for i := 0; i <= len(target); i++ {
		if i < len(target) {
			c := target[i]
			if c != '/' && c != '?' && c != '&' && c != '=' && c != ';' {
				continue
			}
		}
		tok := target[start:i]
		start = i + 1
		if dot := strings.LastIndexByte(tok, '.'); dot > 0 && len(tok)-dot <= 5 {
			tok = tok[:dot]
		}
		if len(tok) < 16 {
			continue
		}
		var letters, digits, other int
		for j := 0; j < len(tok); j++ {
			c := tok[j]
			switch {
			case c >= '0' && c <= '9':
				digits++
			case c >= 'a' && c <= 'z', c >= 'A' && c <= 'Z':
				letters++
			case c == '-' || c == '_' || c == '~' || c == '%' || c == '+' || c == '.':
				other++
			default:
				other += 100
			}
		}
		if other > len(tok)/3 {
			continue
		}
		if digits >= 3 && letters >= 3 {
			n++
		}
	}
	return n > 0
}

// recipientNeedles are the forms of the recipients' addresses searched for
// in URLs: plain, and the MD5, SHA-1 and SHA-256 hex digests of the
// normalised (trimmed, lower-case) address.
type recipientNeedles struct {
	addrs     []string
	addrBytes [][]byte // addrs again, for searches in decoded bytes
	hashes    []string
	minLen    int // length of the shortest address
}

func newRecipientNeedles(rcpts []string) *recipientNeedles {
	rn := &recipientNeedles{}
	for _, r := range rcpts {
		a := normalizeAddr(r)
		if a == "" || !strings.Contains(a, "@") {
			continue
		}
		rn.addrs = append(rn.addrs, a)
		rn.addrBytes = append(rn.addrBytes, []byte(a))
		if rn.minLen == 0 || len(a) < rn.minLen {
			rn.minLen = len(a)
		}
		m := md5.Sum([]byte(a))
		s1 := sha1.Sum([]byte(a))
		s2 := sha256.Sum256([]byte(a))
		rn.hashes = append(rn.hashes, hex.EncodeToString(m[:]), hex.EncodeToString(s1[:]), hex.EncodeToString(s2[:]))
	}
	return rn
}

func normalizeAddr(s string) string {
	s = strings.TrimSpace(s)
	s = strings.TrimPrefix(s, "<")
	s = strings.TrimSuffix(s, ">")
	return lowerASCII(strings.TrimSpace(s))
}

// find reports whether u carries a recipient's address: plain or
// percent-encoded, base64 or base64url (also as a JWT payload or zlib
// compressed), or as a hex digest.
func (rn *recipientNeedles) find(u string) bool {
	if rn == nil || len(rn.addrs) == 0 {
		return false
	}
	l := lowerASCII(u)
	for _, h := range rn.hashes {
		if strings.Contains(l, h) {
			return true
		}
	}
	dec := l
	for i := 0; i < 2 && strings.IndexByte(dec, '%') >= 0; i++ {
		if d, err := url.QueryUnescape(dec); err == nil {
			dec = d
		} else if d, err := url.PathUnescape(dec); err == nil {
			dec = d
		} else {
			break
		}
	}
	if rn.containsAddr(l) || rn.containsAddr(dec) {
		return true
	}
	// Base64 runs, in the case-preserved, percent-decoded URL.
	raw := u
	if strings.IndexByte(raw, '%') >= 0 {
		if d, err := url.PathUnescape(raw); err == nil {
			raw = d
		}
	}
	return rn.scanBase64(raw)
}

// containsAddrFold is containsAddr(lowerASCII(string(b))) without the
// copies; it lowers b in place.
func (rn *recipientNeedles) containsAddrFold(b []byte) bool {
	for i, c := range b {
		if c >= 'A' && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
	}
	for _, a := range rn.addrBytes {
		if bytes.Contains(b, a) {
			return true
		}
	}
	return false
}

func (rn *recipientNeedles) containsAddr(s string) bool {
	for _, a := range rn.addrs {
		if strings.Contains(s, a) {
			return true
		}
	}
	return false
}

func isB64(c byte) bool {
	return c >= 'A' && c <= 'Z' || c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '+' || c == '/' || c == '-' || c == '_'
}

func (rn *recipientNeedles) scanBase64(s string) bool {
	// A run shorter than the base64 form of the shortest address cannot
	// hold it, which rules out nearly every path segment at once.
	minRun := rn.minLen * 4 / 3
	if minRun < 8 {
		minRun = 8
	}
	// Split at characters that cannot be base64 ('/' can, but path
	// separators are far more common than base64 '/', so runs holding '/'
	// are tried whole and split).
	start := -1
	slash := false
	for i := 0; i <= len(s); i++ {
		if i < len(s) && isB64(s[i]) {
			if start < 0 {
				start, slash = i, false
			}
			slash = slash || s[i] == '/'
			continue
		}
		if start >= 0 && i-start >= minRun {
			run := s[start:i]
			if rn.checkB64(run) {
				return true
			}
			for rest := run; slash && rest != ""; {
				var part string
				part, rest, _ = strings.Cut(rest, "/")
				if len(part) >= minRun && rn.checkB64(part) {
					return true
				}
			}
		}
		start = -1
	}
	return false
}

func (rn *recipientNeedles) checkB64(tok string) bool {
	// Most tokens are short: stack buffers spare two allocations per
	// token, and there are a few per image URL.
	var encStack, decStack [256]byte
	buf := encStack[:0]
	if len(tok) > len(encStack) {
		buf = make([]byte, 0, len(tok))
	}
	for i := 0; i < len(tok); i++ {
		switch c := tok[i]; c {
		case '+':
			buf = append(buf, '-')
		case '/':
			buf = append(buf, '_')
		case '=':
		default:
			buf = append(buf, c)
		}
	}
	if len(buf)%4 == 1 {
		buf = buf[:len(buf)-1]
	}
	b := decStack[:]
	if n := base64.RawURLEncoding.DecodedLen(len(buf)); n > len(b) {
		b = make([]byte, n)
	}
	n, err := base64.RawURLEncoding.Decode(b, buf)
	if err != nil {
		return false
	}
	b = b[:n]
	if len(b) > 2 && b[0] == 0x78 && (b[1] == 0x01 || b[1] == 0x5e || b[1] == 0x9c || b[1] == 0xda) {
		// zlib, before containsAddrFold lowers b in place. The clone
		// keeps the stack buffer from escaping for the common case.
		if zr, err := zlib.NewReader(bytes.NewReader(bytes.Clone(b))); err == nil {
			out, _ := io.ReadAll(io.LimitReader(zr, 64<<10))
			if rn.containsAddrFold(out) {
				return true
			}
		}
	}
	return rn.containsAddrFold(b)
}

func lowerASCII(s string) string {
	for i := 0; i < len(s); i++ {
		if c := s[i]; c >= 'A' && c <= 'Z' {
			b := []byte(s)
			for j := i; j < len(b); j++ {
				if c := b[j]; c >= 'A' && c <= 'Z' {
					b[j] = c + 'a' - 'A'
				}
			}
			return string(b)
		}
	}
	return s
}

func hasPrefixFold(s, prefix string) bool {
	return len(s) >= len(prefix) && strings.EqualFold(s[:len(prefix)], prefix)
}

func trimSpaceBytes(b []byte) []byte {
	for len(b) > 0 && isSpace(b[0]) {
		b = b[1:]
	}
	for len(b) > 0 && isSpace(b[len(b)-1]) {
		b = b[:len(b)-1]
	}
	return b
}

func isSpace(c byte) bool { return c == ' ' || c == '\t' || c == '\n' || c == '\r' || c == '\f' }
