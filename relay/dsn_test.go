package relay

import (
	"strings"
	"testing"
	"time"

	"github.com/emersion/go-smtp"
)

// A client may give a UTF-8 original recipient (ORCPT=utf-8;…, in xtext)
// without SMTPUTF8. The DSN for an ASCII sender and recipient then travels
// without SMTPUTF8, so it must stay 7-bit: RFC 6533 allows a raw UTF-8
// address only in message/global-delivery-status, and a strict next hop
// refuses 8-bit data it was not told about.
func TestDSNWithUTF8ORCPTStaysSevenBit(t *testing.T) {
	tx := &transaction{from: "news@acme.example", wireFrom: "news@acme.example", start: time.Now()}
	rc := &recipient{
		addr: "bob@example.org", wire: "bob@example.org",
		opts:   &smtp.RcptOptions{OriginalRecipientType: smtp.DSNAddressTypeUTF8, OriginalRecipient: "用户@例子.广告"},
		status: &smtp.SMTPError{Code: 550, EnhancedCode: smtp.EnhancedCode{5, 1, 1}, Message: "no such user"},
	}
	msg := &message{mem: []byte("From: news@acme.example\r\nSubject: hi\r\n\r\nhello\r\n")}
	if dsnNeedsUTF8(tx, []*recipient{rc}) {
		t.Fatal("an ASCII sender and recipient should not need SMTPUTF8 for their DSN")
	}
	body := buildDSN("relay.test", tx, msg, []*recipient{rc}, time.Now())
	for i, b := range body {
		if b >= 0x80 {
			t.Fatalf("DSN sent without SMTPUTF8 contains 8-bit data at byte %d:\n%s", i, body)
		}
	}
	if want := `Original-Recipient: utf-8;\x{7528}\x{6237}@\x{4F8B}\x{5B50}.\x{5E7F}\x{544A}`; !strings.Contains(string(body), want) {
		t.Errorf("DSN lacks %q:\n%s", want, body)
	}
}
