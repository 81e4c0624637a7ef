package rewrite

import (
	"strings"
	"testing"
)

// ruleIndexProbes derives hosts and targets from every rule of the default
// set: each pattern with its stars filled in several ways, so that every
// rule is hit, along with look-alike hosts that must miss.
func ruleIndexProbes(r *Rules) (hosts, targets []string) {
	fills := []string{"", "x", "a.b", "evil", "x.y.z"}
	hosts = []string{"", ".", "com", "example.com", "a.example.com", "localhost", "127.0.0.1", "[::1]", "a..b", "x.com.", "sendgrid.net:443"}
	targets = []string{"/", "/open", "/track/open.php?u=1&id=2", "/o/AbC123dEf456gHi789", "/wf/open?upn=1"}
	for _, list := range [][]rule{r.allow, r.track} {
		for _, ru := range list {
			for _, f := range fills {
				hosts = append(hosts, fillPattern(ru.host, f), f+fillPattern(ru.host, f), "evil"+fillPattern(ru.host, f))
				targets = append(targets, fillPattern(ru.path, f))
			}
		}
	}
	return hosts, targets
}

func fillPattern(p pattern, fill string) string {
	var b strings.Builder
	for _, a := range p.atoms {
		switch a.kind {
		case atomLit:
			b.WriteString(a.lit)
		case atomStar:
			b.WriteString(fill)
		case atomNum:
			b.WriteString("12345")
		case atomHex:
			b.WriteString("deadbeef01")
		case atomTok:
			b.WriteString("AbCdEf12_-")
		}
	}
	return b.String()
}

// TestRuleIndexMatchesLinear holds the index to the plain scan of every
// rule, on the default rules and on a user file with patterns of each
// kind: keyed by host, by first label, by first path segment, and not at
// all.
func TestRuleIndexMatchesLinear(t *testing.T) {
	user, err := ParseRules(strings.NewReader("track * /px/{hex}.gif Any host\n"+
		"track *sendgrid.net /o/* Not keyed: evilsendgrid.net matches too\n"+
		"allow *.cdn.example.com /* Keyed by its suffix\n"+
		"track t.example.com /* A literal host\n"+
		"track *.com /open* One dot: not keyed\n"+
		"track px.*.example * Keyed by its first label\n"+
		"track * /e/o?id={num} Keyed by its first path segment\n"+
		"track * /?u=* Keyed by the segment \"/\"\n"), "user")
	if err != nil {
		t.Fatal(err)
	}
	for _, r := range []*Rules{DefaultRules(), user} {
		hosts, targets := ruleIndexProbes(r)
		hits := 0
		for _, h := range hosts {
			for _, tg := range targets {
				h1, a1, v1 := r.match(h, tg)
				h2, a2, v2 := r.matchLinear(h, tg)
				if h1 != h2 || a1 != a2 || v1 != v2 {
					t.Fatalf("%s: match(%q, %q) = %v %v %q, the scan of every rule says %v %v %q", r.Name(), h, tg, h1, a1, v1, h2, a2, v2)
				}
				if h1 {
					hits++
				}
			}
		}
		if hits < r.Len() {
			t.Fatalf("%s: only %d hits over %d rules: the probes do not exercise the rules", r.Name(), hits, r.Len())
		}
	}
}

// FuzzRuleIndex compares the index and the scan on arbitrary hosts.
func FuzzRuleIndex(f *testing.F) {
	f.Add("u1.ct.sendgrid.net", "/wf/open?upn=1")
	f.Add("x.list-manage.com", "/track/open.php?u=1&id=2")
	f.Add("evilsendgrid.net", "/o/1")
	r := DefaultRules()
	f.Fuzz(func(t *testing.T, host, target string) {
		h1, a1, v1 := r.match(host, target)
		h2, a2, v2 := r.matchLinear(host, target)
		if h1 != h2 || a1 != a2 || v1 != v2 {
			t.Fatalf("match(%q, %q) = %v %v %q, the scan says %v %v %q", host, target, h1, a1, v1, h2, a2, v2)
		}
	})
}

// matchLinear is match without the index: the reference it is tested
// against.
func (r *Rules) matchLinear(host, target string) (hit, allow bool, vendor string) {
	for i := range r.allow {
		if r.allow[i].matches(host, target) {
			return true, true, r.allow[i].vendor
		}
	}
	for i := range r.track {
		if r.track[i].matches(host, target) {
			return true, false, r.track[i].vendor
		}
	}
	return false, false, ""
}
