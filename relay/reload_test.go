package relay

import (
	"bytes"
	"net/smtp"
	"testing"
)

func TestApplyReload(t *testing.T) {
	h := newHarness(t, nil)
	msg := mustReadFile(t, "../testdata/messages/newsletter.eml")
	msg = dotless(msg)

	// A reloadable key takes effect for the next message: dry-run
	// forwards the original.
	cfg := h.cfg
	cfg.DryRun = true
	cfg.Listen = Addrs{"127.0.0.1:1"} // needs a restart
	restart, err := h.relay.Apply(cfg)
	if err != nil {
		t.Fatal(err)
	}
	if len(restart) != 1 || restart[0] != "listen" {
		t.Errorf("keys needing a restart: %v, want [listen]", restart)
	}
	if err := smtp.SendMail(h.addr, nil, "news@acme.example", []string{"alice@example.fr"}, msg); err != nil {
		t.Fatalf("the running listener stopped answering: %v", err)
	}
	if got := h.up.MessageFor("alice@example.fr").Data; !bytes.HasSuffix(got, msg) {
		t.Error("after reloading with dry_run the copy was still rewritten")
	}

	// An invalid configuration changes nothing.
	bad := h.cfg
	bad.Action = "delete"
	bad.DryRun = false
	if _, err := h.relay.Apply(bad); err == nil {
		t.Fatal("an invalid configuration was applied")
	}
	if !h.relay.conf().cfg.DryRun {
		t.Fatal("a rejected reload changed the running configuration")
	}
}
