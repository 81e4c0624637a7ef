package main

import (
	"fmt"
	"strings"
	"testing"

	"github.com/pixelrelay/pixelrelay/relay"
)

// help runs a command in-process and returns its exit code and output.
func help(t *testing.T, args ...string) (int, string, string) {
	t.Helper()
	code, out, errs := runIn(t, nil, args...)
	return code, string(out), errs
}

// Asking for help is not an error, for any command, in either form.
func TestEveryCommandHelpExitsZero(t *testing.T) {
	for name := range commands() {
		code, out, errs := help(t, name, "--help")
		if code != 0 || out+errs == "" {
			t.Errorf("pixelrelay %s --help: exit %d, %d bytes of help; want 0 and the usage", name, code, len(out+errs))
		}
		if code, out, _ := help(t, "help", name); code != 0 || !strings.Contains(out, "usage: pixelrelay") {
			t.Errorf("pixelrelay help %s: exit %d, stdout %q", name, code, out)
		}
	}
}

// Each flag's default is shown once, even when its description already
// says what the default is.
func TestHelpShowsEachDefaultOnce(t *testing.T) {
	for name := range commands() {
		_, out, _ := help(t, "help", name)
		for _, line := range strings.Split(out, "\n") {
			if strings.Count(line, "(default") > 1 {
				t.Errorf("help %s: %q", name, strings.TrimSpace(line))
			}
		}
	}
}

// The overview's summaries start in one column, whatever the longest name.
func TestOverviewAligned(t *testing.T) {
	_, out, _ := help(t, "help")
	col := -1
	for name, c := range commands() {
		i := strings.Index(out, "\n  "+name+" ")
		if i < 0 {
			t.Fatalf("the overview does not list %s:\n%s", name, out)
		}
		line := out[i+1:]
		line = line[:strings.IndexByte(line, '\n')]
		at := strings.Index(line, c.summary)
		if col == -1 {
			col = at
		} else if at != col {
			t.Errorf("the summary of %s starts at column %d, the others at %d:\n%s", name, at, col, out)
		}
	}
}

func TestParseSize(t *testing.T) {
	cases := []struct {
		in      string
		want    int64
		wantErr string
	}{
		{"1024", 1024, ""},
		{"25M", 25 << 20, ""},
		{"2k", 2048, ""},
		{"8589934591G", 8589934591 << 30, ""},
		{"8589934592G", 0, "too large"},
		{"17179869184G", 0, "too large"},
		{"99999999999999999999", 0, "too large"},
		{"-9000000000G", 0, "too large"},
		{"lots", 0, "not a number"},
		{"", 0, "not a number"},
	}
	for _, c := range cases {
		got, err := parseSize(c.in)
		switch {
		case c.wantErr == "" && (err != nil || got != c.want):
			t.Errorf("parseSize(%q) = %d, %v; want %d", c.in, got, err, c.want)
		case c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)):
			t.Errorf("parseSize(%q) = %d, %v; want an error saying %q", c.in, got, err, c.wantErr)
		}
	}
}

// The startup log shows every key readably: a count for the tenant map,
// the DNS names of the DKIM keys, no Go syntax, no secret.
func TestDescribeConfigReadable(t *testing.T) {
	cfg := relay.DefaultConfig()
	cfg.Tenants = relay.TenantMap{
		Users:         map[string]string{"alice": "acme", "bob": "globex"},
		SenderDomains: map[string]string{"news.acme.example": "acme"},
	}
	cfg.DKIM = []relay.DKIMKey{{Domain: "acme.example", Selector: "s1", KeyFile: "/etc/dkim/acme.pem"}}
	cfg.APIToken = "sekrit-token"
	cfg.Upstream = "starttls://user:sekrit-pass@smtp.example.com:587"
	attrs := describeConfig(cfg)
	shown := map[string]string{}
	for i := 0; i+1 < len(attrs); i += 2 {
		shown[attrs[i].(string)] = fmt.Sprint(attrs[i+1])
	}
	want := map[string]string{
		"tenants":   "2 users, 1 sender domain",
		"dkim":      "s1._domainkey.acme.example",
		"api_token": "*****",
		"upstream":  "starttls://user:%2A%2A%2A%2A%2A@smtp.example.com:587",
	}
	for k, w := range want {
		if shown[k] != w {
			t.Errorf("%s shown as %q, want %q", k, shown[k], w)
		}
	}
	for k, v := range shown {
		if strings.Contains(v, "map[") || strings.Contains(v, "{") || strings.Contains(v, "sekrit") {
			t.Errorf("%s shown as %q", k, v)
		}
	}
	cfg.Tenants = relay.TenantMap{}
	if got := fmt.Sprint(describeConfig(cfg)); !strings.Contains(got, "tenants none") {
		t.Errorf("no tenant mapping shown as: %s", got)
	}
}
