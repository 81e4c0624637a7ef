package relay

import (
	"bytes"
	"crypto"
	"crypto/ed25519"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"net/smtp"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/emersion/go-msgauth/dkim"
)

// dnsStub answers DKIM key queries from memory, as the public DNS would.
type dnsStub map[string]string

func (d dnsStub) lookup(name string) ([]string, error) {
	if v, ok := d[name]; ok {
		return []string{v}, nil
	}
	return nil, fmt.Errorf("no TXT record for %s", name)
}

func (d dnsStub) publish(selector, domain string, pub crypto.PublicKey) {
	var der []byte
	kind := "rsa"
	switch k := pub.(type) {
	case *rsa.PublicKey:
		der, _ = x509.MarshalPKIXPublicKey(k)
	case ed25519.PublicKey:
		der, kind = []byte(k), "ed25519"
	}
	d[selector+"._domainkey."+domain] = "v=DKIM1; k=" + kind + "; p=" + base64.StdEncoding.EncodeToString(der)
}

// verifyAll returns one line per signature: domain and verdict.
func verifyAll(t *testing.T, dns dnsStub, msg []byte) []string {
	t.Helper()
	vs, err := dkim.VerifyWithOptions(bytes.NewReader(msg), &dkim.VerifyOptions{LookupTXT: dns.lookup})
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, v := range vs {
		verdict := "pass"
		if v.Err != nil {
			verdict = "fail"
		}
		out = append(out, v.Domain+":"+verdict)
	}
	return out
}

// appSigned is the newsletter as an app signs it before it reaches us.
func appSigned(t *testing.T, dns dnsStub) []byte {
	t.Helper()
	raw := mustReadFile(t, "../testdata/messages/newsletter.eml")
	raw = bytes.ReplaceAll(raw, []byte("\n"), []byte("\r\n"))
	key, _ := rsa.GenerateKey(rand.Reader, 2048)
	dns.publish("app", "acme.example", &key.PublicKey)
	var signed bytes.Buffer
	err := dkim.Sign(&signed, bytes.NewReader(raw), &dkim.SignOptions{Domain: "acme.example", Selector: "app", Signer: key,
		HeaderCanonicalization: dkim.CanonicalizationRelaxed, BodyCanonicalization: dkim.CanonicalizationRelaxed})
	if err != nil {
		t.Fatal(err)
	}
	return signed.Bytes()
}

func sendRaw(t *testing.T, addr string, rcpts []string, msg []byte) {
	t.Helper()
	if err := smtp.SendMail(addr, nil, "news@acme.example", rcpts, msg); err != nil {
		t.Fatal(err)
	}
}

func lastAudit(t *testing.T, path string) AuditRecord {
	t.Helper()
	data := mustReadFile(t, path)
	lines := bytes.Split(bytes.TrimSpace(data), []byte("\n"))
	var rec AuditRecord
	if err := json.Unmarshal(lines[len(lines)-1], &rec); err != nil {
		t.Fatal(err)
	}
	return rec
}

func writeKey(t *testing.T, dir string, key crypto.Signer) string {
	t.Helper()
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(dir, "dkim.pem")
	os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), 0o600)
	return path
}

func TestDKIMRemovedWhenBodyChanged(t *testing.T) {
	dns := dnsStub{}
	h := newHarness(t, nil)
	h.setConsent("bob@example.com", "granted")
	msg := appSigned(t, dns)
	sendRaw(t, h.addr, []string{"alice@example.fr", "bob@example.com"}, msg)

	// bob consented: his copy is the app's bytes, and its signature holds.
	bob := h.up.MessageFor("bob@example.com").Data
	if got := verifyAll(t, dns, bob); strings.Join(got, ",") != "acme.example:pass" {
		t.Errorf("consenting copy: signatures %v, want the app's to pass", got)
	}
	if _, rest, _ := bytes.Cut(bob, []byte("\r\nDKIM-Signature:")); !bytes.Equal(append([]byte("DKIM-Signature:"), rest...), msg) {
		t.Error("consenting copy is not the app's bytes after the Received line")
	}
	// alice's copy was rewritten: the broken signature is gone.
	alice := h.up.MessageFor("alice@example.fr").Data
	if bytes.Contains(alice, []byte("DKIM-Signature")) {
		t.Error("the app's signature, broken by the rewrite, is still on the rewritten copy")
	}
	if got := lastAudit(t, h.auditPath).DKIM; got != "removed" {
		t.Errorf("audit dkim = %q, want removed", got)
	}
}

func TestDKIMKeepExisting(t *testing.T) {
	dns := dnsStub{}
	h := newHarness(t, func(c *Config) { c.DKIMExisting = "keep" })
	sendRaw(t, h.addr, []string{"alice@example.fr"}, appSigned(t, dns))
	alice := h.up.MessageFor("alice@example.fr").Data
	if got := verifyAll(t, dns, alice); strings.Join(got, ",") != "acme.example:fail" {
		t.Errorf("with dkim_existing: keep the (now broken) signature should stay: %v", got)
	}
	if got := lastAudit(t, h.auditPath).DKIM; got != "kept" {
		t.Errorf("audit dkim = %q, want kept", got)
	}
}

func TestDKIMResign(t *testing.T) {
	for _, kind := range []string{"rsa", "ed25519"} {
		t.Run(kind, func(t *testing.T) {
			dns := dnsStub{}
			var key crypto.Signer
			if kind == "rsa" {
				key, _ = rsa.GenerateKey(rand.Reader, 2048)
			} else {
				_, key, _ = ed25519.GenerateKey(rand.Reader)
			}
			dns.publish("px", "acme.example", key.Public())
			path := writeKey(t, t.TempDir(), key)
			h := newHarness(t, func(c *Config) {
				c.DKIM = []DKIMKey{{Domain: "acme.example", Selector: "px", KeyFile: path}}
			})
			h.setConsent("bob@example.com", "granted")
			msg := appSigned(t, dns)
			sendRaw(t, h.addr, []string{"alice@example.fr", "bob@example.com"}, msg)

			alice := h.up.MessageFor("alice@example.fr").Data
			if got := verifyAll(t, dns, alice); strings.Join(got, ",") != "acme.example:pass" {
				t.Errorf("rewritten copy: %v, want our signature only, passing", got)
			}
			// Unmodified copies are signed too; the app's signature stays.
			bob := h.up.MessageFor("bob@example.com").Data
			if got := verifyAll(t, dns, bob); strings.Join(got, ",") != "acme.example:pass,acme.example:pass" {
				t.Errorf("consenting copy: %v, want ours and the app's, both passing", got)
			}
			sig := string(alice[:bytes.Index(alice, []byte("\r\nReceived:"))])
			for _, want := range []string{"c=relaxed/relaxed", "s=px", "d=acme.example", "h=From:From:To:Subject:Date:Message-ID:MIME-Version:Content-Type"} {
				if !strings.Contains(strings.Join(strings.Fields(sig), ""), strings.ReplaceAll(want, " ", "")) {
					t.Errorf("signature lacks %s:\n%s", want, sig)
				}
			}
			if got := lastAudit(t, h.auditPath).DKIM; got != "signed" {
				t.Errorf("audit dkim = %q, want signed", got)
			}
		})
	}
}

func TestDKIMKeyValidation(t *testing.T) {
	small, _ := rsa.GenerateKey(rand.Reader, 1024)
	dir := t.TempDir()
	path := writeKey(t, dir, small)
	c := DefaultConfig()
	c.DKIM = []DKIMKey{{Domain: "a.example", Selector: "s", KeyFile: path}, {Domain: "b.example"}}
	err := c.Validate()
	if err == nil || !strings.Contains(err.Error(), "2048") || !strings.Contains(err.Error(), "dkim[1]") {
		t.Fatalf("want both key problems reported, got %v", err)
	}
}
