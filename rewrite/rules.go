package rewrite

import (
	"bufio"
	"bytes"
	"crypto/sha256"
	_ "embed"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"
)

//go:embed default.rules
var defaultRulesText []byte

// Rules is a compiled, immutable set of tracker rules: the embedded default
// set (DefaultRules) or a user file (ParseRules). It is safe for concurrent
// use. docs/rewrite.md describes the file format.
type Rules struct {
	name    string
	version string // from the "version" line; may be empty in user files
	digest  string // first 12 hex digits of the file's SHA-256
	builtin bool   // the embedded default set: matches report "vendor"
	// layered user rules are consulted before the defaults; "defaults off"
	// makes a user file the only rule set.
	layered bool
	allow   []rule
	track   []rule
	// By host key (see hostKey), the rules that can match such a host,
	// in file order: every URL of every message is matched, and most
	// rules name one ESP's domain.
	allowIdx, trackIdx ruleIndex
}

// ruleIndex narrows a rule list to the rules that can match a URL. Each
// rule is in one list: by the host key its host pattern fixes, else by the
// first host label it fixes ("t" for "t.sidekickopen*.com"), else by the
// first path segment it fixes ("/wf" for "/wf/open?upn=*"), else always.
// The rules that name no ESP domain are mostly of the last two kinds, and
// every image URL of every message would otherwise try each of them.
type ruleIndex struct {
	byKey   map[string][]int32
	byLabel map[string][]int32
	bySeg   map[string][]int32
	always  []int32
}

func buildRuleIndex(rules []rule) ruleIndex {
	ix := ruleIndex{byKey: map[string][]int32{}, byLabel: map[string][]int32{}, bySeg: map[string][]int32{}}
	for i := range rules {
		ru := &rules[i]
		if k, ok := ru.host.hostKey(); ok {
			ix.byKey[k] = append(ix.byKey[k], int32(i))
		} else if l, ok := ru.host.firstLabel(); ok {
			ix.byLabel[l] = append(ix.byLabel[l], int32(i))
		} else if sg, ok := ru.path.firstSegment(); ok {
			ix.bySeg[sg] = append(ix.bySeg[sg], int32(i))
		} else {
			ix.always = append(ix.always, int32(i))
		}
	}
	return ix
}

// first returns the lowest index among the rules that can match host and
// target whose rule matches, or -1. Each list is in file order, so a list
// is read up to its first match or to the best one found so far.
func (ix *ruleIndex) first(rules []rule, host, target string) int32 {
	best := int32(-1)
	try := func(list []int32) {
		for _, i := range list {
			if best >= 0 && i > best {
				return
			}
			if rules[i].matches(host, target) {
				best = i
				return
			}
		}
	}
	try(ix.byKey[hostKey(host)])
	if len(ix.byLabel) > 0 {
		try(ix.byLabel[firstLabel(host)])
	}
	if len(ix.bySeg) > 0 {
		try(ix.bySeg[firstSegment(target)])
	}
	try(ix.always)
	return best
}

// firstLabel is a host's text before its first dot; a host without one
// has no label to key on.
func firstLabel(host string) string {
	if i := strings.IndexByte(host, '.'); i >= 0 {
		return host[:i]
	}
	return "\x00" // no pattern's label
}

// firstSegment is a target's first path segment with its leading "/",
// up to the next "/" or "?" ("/" for "/?u=1").
func firstSegment(target string) string {
	if len(target) == 0 {
		return ""
	}
	if i := strings.IndexAny(target[1:], "/?"); i >= 0 {
		return target[:1+i]
	}
	return target
}

// hostKey is a host's last two labels ("sendgrid.net" for
// "u1.ct.sendgrid.net"), or the whole host when it has fewer.
func hostKey(host string) string {
	i := strings.LastIndexByte(host, '.')
	if i <= 0 {
		return host
	}
	if j := strings.LastIndexByte(host[:i], '.'); j >= 0 {
		return host[j+1:]
	}
	return host
}

// hostKey returns the key of every host the pattern matches, when they
// all share one: a literal pattern's own, or that of a literal suffix
// holding at least two dots (every host ending in ".ct.sendgrid.net" has
// the key "sendgrid.net"; one ending in "sendgrid.net" need not).
func (p *pattern) hostKey() (string, bool) {
	if len(p.atoms) == 1 && p.atoms[0].kind == atomLit {
		return hostKey(p.atoms[0].lit), true
	}
	if strings.Count(p.suffix, ".") >= 2 {
		return hostKey(p.suffix), true
	}
	return "", false
}

// firstLabel returns the first label of every host the pattern matches,
// when its literal prefix fixes one ("t" for "t.sidekickopen*.com").
func (p *pattern) firstLabel() (string, bool) {
	if i := strings.IndexByte(p.prefix, '.'); i > 0 {
		return p.prefix[:i], true
	}
	return "", false
}

// firstSegment returns the first path segment (firstSegment) of every
// target the pattern matches, when its literal prefix fixes one: it must
// run past that segment's "/" or "?".
func (p *pattern) firstSegment() (string, bool) {
	if len(p.prefix) < 2 || p.prefix[0] != '/' {
		return "", false
	}
	if i := strings.IndexAny(p.prefix[1:], "/?"); i >= 0 {
		return p.prefix[:1+i], true
	}
	return "", false
}

// rule is one "track" or "allow" line.
type rule struct {
	host   pattern
	path   pattern
	vendor string
	line   int
}

// Name returns the name the rules were parsed under ("default" for the
// embedded set).
func (r *Rules) Name() string { return r.name }

// Version returns the rules' version line, or "" when the file has none.
func (r *Rules) Version() string { return r.version }

// Len returns the number of track and allow rules.
func (r *Rules) Len() int { return len(r.allow) + len(r.track) }

var (
	defaultOnce  sync.Once
	defaultRules *Rules
)

// DefaultRules returns the embedded, versioned vendor rules. The result is
// shared and immutable.
func DefaultRules() *Rules {
	defaultOnce.Do(func() {
		r, err := ParseRules(bytes.NewReader(defaultRulesText), "default")
		if err != nil {
			// The embedded file is covered by tests; a broken build must not
			// silently run without vendor rules.
			panic("rewrite: embedded default.rules is invalid: " + err.Error())
		}
		r.builtin = true
		r.layered = false
		defaultRules = r
	})
	return defaultRules
}

// ParseRules reads a rules file (the same format as the embedded defaults).
// Unless the file says "defaults off", its rules are layered over the
// defaults: they are consulted first, and the defaults still apply. name is
// used in error messages and in RulesVersion; every bad line is reported,
// as "name:line: problem".
func ParseRules(r io.Reader, name string) (*Rules, error) {
	h := sha256.New()
	sc := bufio.NewScanner(io.TeeReader(r, h))
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	rs := &Rules{name: name, layered: true}
	var errs []error
	bad := func(line int, format string, args ...any) {
		if len(errs) < 50 {
			errs = append(errs, fmt.Errorf("%s:%d: %s", name, line, fmt.Sprintf(format, args...)))
		}
	}
	n := 0
	for sc.Scan() {
		n++
		text := sc.Text()
		if i := strings.Index(text, "#"); i >= 0 && (i == 0 || text[i-1] == ' ' || text[i-1] == '\t') {
			text = text[:i]
		}
		f := strings.Fields(text)
		if len(f) == 0 {
			continue
		}
		switch strings.ToLower(f[0]) {
		case "version":
			if len(f) != 2 {
				bad(n, "want \"version VERSION\"")
				continue
			}
			rs.version = f[1]
		case "defaults":
			if len(f) != 2 || (f[1] != "on" && f[1] != "off") {
				bad(n, "want \"defaults on\" or \"defaults off\"")
				continue
			}
			rs.layered = f[1] == "on"
		case "track", "allow":
			if len(f) < 3 {
				bad(n, "want \"%s HOST PATH VENDOR...\", got %d fields", f[0], len(f))
				continue
			}
			hp, err := compilePattern(strings.ToLower(f[1]), false)
			if err == nil && strings.ContainsAny(f[1], "/?#") {
				err = errors.New("a host pattern cannot contain '/', '?' or '#'")
			}
			if err != nil {
				bad(n, "host %q: %v", f[1], err)
				continue
			}
			if !strings.HasPrefix(f[2], "/") && !strings.HasPrefix(f[2], "*") {
				bad(n, "path %q must start with '/' or '*'", f[2])
				continue
			}
			pp, err := compilePattern(f[2], true)
			if err != nil {
				bad(n, "path %q: %v", f[2], err)
				continue
			}
			ru := rule{host: hp, path: pp, vendor: strings.Join(f[3:], " "), line: n}
			if strings.ToLower(f[0]) == "track" {
				rs.track = append(rs.track, ru)
			} else {
				rs.allow = append(rs.allow, ru)
			}
		default:
			bad(n, "unknown directive %q (want track, allow, version or defaults)", f[0])
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: reading rules: %w", name, err)
	}
	if len(errs) > 0 {
		return nil, errors.Join(errs...)
	}
	rs.digest = hex.EncodeToString(h.Sum(nil))[:12]
	rs.allowIdx, rs.trackIdx = buildRuleIndex(rs.allow), buildRuleIndex(rs.track)
	return rs, nil
}

// match reports the first allow rule, else the first track rule, matching
// host (lower case) and target (path and query).
func (r *Rules) match(host, target string) (hit, allow bool, vendor string) {
	if i := r.allowIdx.first(r.allow, host, target); i >= 0 {
		return true, true, r.allow[i].vendor
	}
	if i := r.trackIdx.first(r.track, host, target); i >= 0 {
		return true, false, r.track[i].vendor
	}
	return false, false, ""
}

func (ru *rule) matches(host, target string) bool {
	return ru.path.quick(target) && ru.host.quick(host) && ru.host.match(host) && ru.path.match(target)
}

// pattern is a compiled glob: literals, "*" and (in paths) the classes
// {num}, {hex} and {tok}.
type pattern struct {
	atoms  []patAtom
	prefix string // literal prefix, for a cheap reject
	suffix string // literal suffix (only when the pattern ends in a literal)
	any    bool   // the pattern is exactly "*"
}

type atomKind uint8

const (
	atomLit atomKind = iota
	atomStar
	atomNum // one or more digits
	atomHex // eight or more hex digits
	atomTok // eight or more of [A-Za-z0-9_-]
)

type patAtom struct {
	kind atomKind
	lit  string
}

func compilePattern(s string, classes bool) (pattern, error) {
	var p pattern
	if s == "" {
		return p, errors.New("empty pattern")
	}
	var lit strings.Builder
	flush := func() {
		if lit.Len() > 0 {
			p.atoms = append(p.atoms, patAtom{kind: atomLit, lit: lit.String()})
			lit.Reset()
		}
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c == '*':
			flush()
			if len(p.atoms) == 0 || p.atoms[len(p.atoms)-1].kind != atomStar {
				p.atoms = append(p.atoms, patAtom{kind: atomStar})
			}
		case c == '{' && classes:
			j := strings.IndexByte(s[i:], '}')
			if j < 0 {
				return p, fmt.Errorf("unclosed '{' at column %d", i+1)
			}
			var k atomKind
			switch s[i : i+j+1] {
			case "{num}":
				k = atomNum
			case "{hex}":
				k = atomHex
			case "{tok}":
				k = atomTok
			default:
				return p, fmt.Errorf("unknown class %s (want {num}, {hex} or {tok})", s[i:i+j+1])
			}
			flush()
			p.atoms = append(p.atoms, patAtom{kind: k})
			i += j
		default:
			lit.WriteByte(c)
		}
	}
	flush()
	if len(p.atoms) == 1 && p.atoms[0].kind == atomStar {
		p.any = true
	}
	if p.atoms[0].kind == atomLit {
		p.prefix = p.atoms[0].lit
	}
	if last := p.atoms[len(p.atoms)-1]; last.kind == atomLit && len(p.atoms) > 1 {
		p.suffix = last.lit
	}
	return p, nil
}

// quick rejects most non-matching strings with two comparisons.
func (p *pattern) quick(s string) bool {
	return strings.HasPrefix(s, p.prefix) && strings.HasSuffix(s, p.suffix)
}

func (p *pattern) match(s string) bool {
	if p.any {
		return true
	}
	return matchAtoms(p.atoms, s)
}

func matchAtoms(atoms []patAtom, s string) bool {
	for len(atoms) > 0 {
		a := atoms[0]
		switch a.kind {
		case atomLit:
			if !strings.HasPrefix(s, a.lit) {
				return false
			}
			s = s[len(a.lit):]
			atoms = atoms[1:]
		case atomStar:
			rest := atoms[1:]
			if len(rest) == 0 {
				return true
			}
			// Skip ahead to occurrences of the next literal, if there is one.
			if rest[0].kind == atomLit {
				for i := 0; i <= len(s); {
					j := strings.Index(s[i:], rest[0].lit)
					if j < 0 {
						return false
					}
					if matchAtoms(rest, s[i+j:]) {
						return true
					}
					i += j + 1
				}
				return false
			}
			for i := 0; i <= len(s); i++ {
				if matchAtoms(rest, s[i:]) {
					return true
				}
			}
			return false
		default:
			min, in := classOf(a.kind)
			n := 0
			for n < len(s) && in(s[n]) {
				n++
			}
			if n < min {
				return false
			}
			// Greedy, then back off so that a following literal can match.
			for k := n; k >= min; k-- {
				if matchAtoms(atoms[1:], s[k:]) {
					return true
				}
			}
			return false
		}
	}
	return s == ""
}

func classOf(k atomKind) (int, func(byte) bool) {
	switch k {
	case atomNum:
		return 1, func(c byte) bool { return c >= '0' && c <= '9' }
	case atomHex:
		return 8, isHex
	default:
		return 8, func(c byte) bool {
			return c >= '0' && c <= '9' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c == '_' || c == '-'
		}
	}
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}
