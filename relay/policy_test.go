package relay

import (
	"bytes"
	"context"
	"net/smtp"
	"strings"
	"testing"

	"github.com/pixelrelay/pixelrelay/consent"
)

// Consent given to one controller must not enable tracking in another's
// mail through the shared relay: the tenant comes from the AUTH user or the
// sender domain.
func TestTenantMapping(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Tenants = TenantMap{SenderDomains: map[string]string{"brand-a.example": "brand-a"}}
	})
	_, err := h.store.Record(context.Background(), consent.Event{Tenant: "brand-a", Address: "bob@example.com",
		State: consent.Granted, Method: "web_form", Evidence: "form-1", TextVersion: "v1", Actor: "test"})
	if err != nil {
		t.Fatal(err)
	}
	msg := mustReadFile(t, "../testdata/messages/newsletter.eml")
	for _, from := range []string{"news@brand-a.example", "news@brand-b.example"} {
		if err := smtp.SendMail(h.addr, nil, from, []string{"bob@example.com"}, dotless(msg)); err != nil {
			t.Fatal(err)
		}
	}
	msgs := h.up.Messages()
	if len(msgs) != 2 {
		t.Fatalf("%d messages upstream", len(msgs))
	}
	tracker := []byte("list-manage.com/track/open.php")
	for _, m := range msgs {
		kept := bytes.Contains(bytes.ReplaceAll(m.Data, []byte("=\r\n"), nil), tracker)
		if want := m.From == "news@brand-a.example"; kept != want {
			t.Errorf("mail from %s: tracker kept=%v, want %v (bob consented to brand-a only)", m.From, kept, want)
		}
	}
	recs := h.auditRecords()
	if recs[0].Tenant != "brand-a" || recs[1].Tenant != "default" {
		t.Errorf("audit tenants %q, %q", recs[0].Tenant, recs[1].Tenant)
	}
}

func TestAuditPlaintextOnlyWhenAsked(t *testing.T) {
	for _, plain := range []bool{false, true} {
		h := newHarness(t, func(c *Config) { c.AuditPlaintext = plain })
		msg := mustReadFile(t, "../testdata/messages/plain.eml")
		if err := smtp.SendMail(h.addr, nil, "app@app.example", []string{"carol@example.org"}, dotless(msg)); err != nil {
			t.Fatal(err)
		}
		h.audit.Close()
		audit := mustReadFile(t, h.auditPath)
		if got := bytes.Contains(audit, []byte("carol@example.org")); got != plain {
			t.Errorf("audit_plaintext=%v: address in the audit log=%v", plain, got)
		}
		if strings.Contains(h.logs.String(), "carol@example.org") {
			t.Errorf("audit_plaintext=%v: the operational log holds the address", plain)
		}
		if !bytes.Contains(audit, []byte(`"pseudonym":"hmac-sha256:`)) {
			t.Error("no pseudonym in the audit record")
		}
	}
}

// AUTH without TLS only where the operator allowed it, on loopback.
func TestInsecureAuthOnLoopbackOnly(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, func(c *Config) {
		c.Users = writeUsers(t, dir, "app s3cret")
		c.AllowInsecureAuth = true
		c.AllowNet = []string{"192.0.2.0/24"}
	})
	c := dialFrom(t, h.addr, "")
	c.reply()
	if ehlo := c.expect("EHLO app.example", "250"); !strings.Contains(ehlo, "AUTH PLAIN LOGIN") {
		t.Fatalf("AUTH not offered on the allowed loopback listener:\n%s", ehlo)
	}
	c.expect("AUTH PLAIN "+plainAuth("app", "s3cret"), "235")
	c.expect("MAIL FROM:<app@app.example>", "250")

	bad := DefaultConfig()
	bad.Listen = Addrs{"0.0.0.0:2525"}
	bad.AllowInsecureAuth = true
	if err := bad.Validate(); err == nil || !strings.Contains(err.Error(), "allow_insecure_auth") {
		t.Fatalf("insecure AUTH on a public listener validated: %v", err)
	}
}

// Dry-run with beacons records what would have been beaconed, for whom,
// and counts nothing: the batch counter and the URL are left alone.
func TestDryRunBeacon(t *testing.T) {
	h := newHarness(t, func(c *Config) {
		c.Action, c.BeaconBase, c.BeaconMinBatch, c.DryRun = "beacon", "https://beacon.example.com", 1, true
	})
	msg := mustReadFile(t, "../testdata/messages/newsletter.eml")
	msg = dotless(append([]byte("X-Campaign-Id: spring\n"), msg...))
	if err := smtp.SendMail(h.addr, nil, "news@acme.example", []string{"alice@example.fr"}, msg); err != nil {
		t.Fatal(err)
	}
	if got := h.up.MessageFor("alice@example.fr").Data; !bytes.HasSuffix(got, msg) {
		t.Error("dry-run did not forward the original")
	}
	rec := h.auditRecords()[0]
	if !rec.DryRun || rec.Campaign != "spring" || rec.Recipients[0].Action != "beacon" {
		t.Errorf("audit: dry_run=%v campaign=%q action=%q, want true, spring, beacon", rec.DryRun, rec.Campaign, rec.Recipients[0].Action)
	}
	stats, err := h.beacons.Stats(context.Background(), beaconFilterAll())
	if err != nil {
		t.Fatal(err)
	}
	if len(stats) != 0 {
		t.Errorf("dry-run moved the beacon counters: %+v", stats)
	}
}
