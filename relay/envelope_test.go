package relay

import (
	"net/netip"
	"strings"
	"testing"
	"time"
)

func TestQuoteAddress(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"alice@example.org", "alice@example.org"},                           // dot-atom stays
		{"first.last+tag@example.org", "first.last+tag@example.org"},         // dots and plus
		{"john doe@example.org", `"john doe"@example.org`},                   // space needs quotes
		{`x> NOTIFY=SUCCESS@example.org`, `"x> NOTIFY=SUCCESS"@example.org`}, // parameter injection stays inside quotes
		{`a"b@example.org`, `"a\"b"@example.org`},                            // quote escaped
		{`a\b@example.org`, `"a\\b"@example.org`},                            // backslash escaped
		{".lead@example.org", `".lead"@example.org`},                         // leading dot is not a dot-atom
		{"jörg@example.de", "jörg@example.de"},                               // UTF-8 local part (SMTPUTF8)
		{"postmaster", "postmaster"},                                         // no domain
		{"a@b@example.org", `"a@b"@example.org`},                             // the last @ separates
	} {
		if got := quoteAddress(tc.in); got != tc.want {
			t.Errorf("quoteAddress(%q) = %q, want %q", tc.in, got, tc.want)
		}
	}
}

func TestReceivedHeader(t *testing.T) {
	now := time.Date(2026, 11, 28, 12, 0, 0, 0, time.UTC)
	h := string(receivedHeader("client.example\r\nX-Injected: 1", netip.MustParseAddr("127.0.0.1"), "relay.test", "ESMTPSA", "abc", now))
	want := "Received: from client.example??X-Injected:?1 ([127.0.0.1])\r\n\tby relay.test (pixelrelay) with ESMTPSA id abc;\r\n\tSat, 28 Nov 2026 12:00:00 +0000\r\n"
	if h != want {
		t.Errorf("got  %q\nwant %q", h, want)
	}
	if strings.Count(h, "\r\n") != 3 || strings.Contains(h, "\nX-") {
		t.Error("a HELO name with CRLF injected a header line")
	}
	v6 := string(receivedHeader("h", netip.MustParseAddr("::1"), "r", "ESMTP", "i", now))
	if !strings.Contains(v6, "[IPv6:::1]") {
		t.Errorf("IPv6 literal not marked: %q", v6)
	}
}

func TestQueueID(t *testing.T) {
	for _, tc := range []struct{ text, want string }{
		{"2.0.0 Ok: queued as 4XyzAbC", "4XyzAbC"},                                        // Postfix
		{"OK id=1rXyz-000Abc-00", "1rXyz-000Abc-00"},                                      // Exim
		{"Ok 0100018c2b3a4d5e-1f2e3d4c-5b6a-7988", "0100018c2b3a4d5e-1f2e3d4c-5b6a-7988"}, // SES
		{"OK: queued", ""}, // go-smtp default
		{"", ""},
	} {
		if got := queueID(tc.text); got != tc.want {
			t.Errorf("queueID(%q) = %q, want %q", tc.text, got, tc.want)
		}
	}
}

func TestParseUpstreamURL(t *testing.T) {
	for _, tc := range []struct {
		in      string
		addr    string
		scheme  string
		user    string
		wantErr string
	}{
		{"smtp://mx.example.org", "mx.example.org:25", "smtp", "", ""},
		{"starttls://u:p%40ss@smtp.example.org", "smtp.example.org:587", "starttls", "u", ""},
		{"smtps://smtp.example.org:2465", "smtp.example.org:2465", "smtps", "", ""},
		{"smtp://[::1]:10026", "[::1]:10026", "smtp", "", ""},
		{"http://example.org", "", "", "", "scheme"},
		{"smtp://", "", "", "", "no host"},
		{"smtp://u:secret@h/path", "", "", "", "no path"},
	} {
		u, err := ParseUpstreamURL(tc.in)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("%q: err %v, want one mentioning %q", tc.in, err, tc.wantErr)
			}
			if err != nil && strings.Contains(err.Error(), "secret") {
				t.Errorf("%q: the error shows the password: %v", tc.in, err)
			}
			continue
		}
		if err != nil || u.Addr != tc.addr || u.Scheme != tc.scheme || u.User != tc.user {
			t.Errorf("%q: got %+v, %v", tc.in, u, err)
		}
	}
	if u, _ := ParseUpstreamURL("starttls://u:p%40ss@h"); u.Password != "p@ss" {
		t.Errorf("password not URL-decoded: %q", u.Password)
	}
}

func TestConfigValidateReportsEverything(t *testing.T) {
	c := DefaultConfig()
	c.Listen = Addrs{"no-port"}
	c.Action = "delete"
	c.Upstream = "ftp://x"
	c.MaxRecipients = 0
	c.AllowNet = []string{"10.0.0.0/8", "not-a-net"}
	c.LogFormat = "xml"
	err := c.Validate()
	if err == nil {
		t.Fatal("an invalid config validated")
	}
	for _, key := range []string{"listen:", "action:", "upstream:", "max_recipients:", "allow_net:", "log_format:"} {
		if !strings.Contains(err.Error(), key) {
			t.Errorf("the error does not name %s:\n%v", key, err)
		}
	}
	d := DefaultConfig()
	if err := d.Validate(); err != nil {
		t.Errorf("the default config is invalid: %v", err)
	}
}

func TestRedactAddresses(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"5.1.1 <bob@example.com>: Recipient address rejected", "5.1.1 <[address]>: Recipient address rejected"},
		{`invalid address "john doe"@example.org here`, "invalid address [address] here"},
		{"user jörg@exämple.de unknown", "user [address] unknown"},
		{"a@[192.0.2.1]", "[address]"},
		{`invalid address "john.doe smith@x.example"`, `invalid address "[address]"`},
		{"5.1.1 <john doe@x.example>: unknown", "5.1.1 <[address]>: unknown"},
		{"no address here, just 4.2.2 mailbox full", "no address here, just 4.2.2 mailbox full"},
	} {
		if got := redactAddresses(tc.in); got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}
