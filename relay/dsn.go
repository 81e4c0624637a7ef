package relay

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/emersion/go-smtp"
)

// sendDSN tells the envelope sender, with an RFC 3464 delivery status
// notification, that some recipients were refused permanently while the
// others got the message. The client saw 250 for the whole message (the
// delivered recipients must not be retried), so this is its only news of
// the failures, exactly as from a queueing MTA.
func (r *Relay) sendDSN(tx *transaction, msg *message, failed []*recipient) error {
	if len(failed) == 0 {
		r.log.Info("recipients refused permanently; their NOTIFY asks for no failure DSN")
		return nil
	}
	if tx.from == "" {
		// RFC 3461: never send a DSN about a DSN (null sender).
		r.log.Warn("recipients refused permanently; null sender, so no DSN", "refused", len(failed))
		return nil
	}
	body := buildDSN(r.cfg.Hostname, tx, msg, failed, time.Now())
	ctx, cancel := context.WithTimeout(context.Background(), r.cfg.UpstreamConnectTimeout+r.cfg.UpstreamDataTimeout)
	defer cancel()
	fail := func(phase string, err error) error {
		r.log.Error("cannot send the DSN for recipients refused permanently; answering 4xx so the client keeps the message",
			"phase", phase, upstreamCause(err), "refused", len(failed))
		return err
	}
	var opts *smtp.MailOptions
	if dsnNeedsUTF8(tx, failed) {
		// Without SMTPUTF8 the next hop refuses the DSN to an
		// internationalised sender, and the client, never hearing 250,
		// would retry the message for ever.
		opts = &smtp.MailOptions{UTF8: true}
	}
	t, err := r.deps.Upstream.Begin(ctx, "", opts)
	if err != nil {
		return fail("mail", err)
	}
	if err := t.Rcpt(ctx, tx.wireFrom, nil); err != nil {
		t.Abort()
		return fail("rcpt", err)
	}
	if _, err := t.Data(ctx, func(w io.Writer) error { _, err := w.Write(body); return err }); err != nil {
		return fail("data", err)
	}
	r.log.Info("sent DSN to the sender for recipients refused permanently", "refused", len(failed))
	return nil
}

// buildDSN composes a multipart/report (RFC 3462) with a human part, the
// machine-readable delivery-status part (RFC 3464) and the original
// message's header.
func buildDSN(host string, tx *transaction, msg *message, failed []*recipient, now time.Time) []byte {
	// RFC 6533: a report naming an internationalised address is a
	// message/global-delivery-status, with utf-8 address types.
	utf8 := dsnNeedsUTF8(tx, failed)
	statusType, headersType := "message/delivery-status", "text/rfc822-headers"
	if utf8 {
		statusType, headersType = "message/global-delivery-status", "message/global-headers"
	}
	boundary := "pixelrelay-dsn-" + newID()
	var b bytes.Buffer
	crlf := func(format string, args ...any) {
		fmt.Fprintf(&b, format, args...)
		b.WriteString("\r\n")
	}
	crlf("From: Mail Delivery System <MAILER-DAEMON@%s>", host)
	crlf("To: <%s>", tx.wireFrom)
	crlf("Subject: Undelivered Mail Returned to Sender")
	crlf("Date: %s", now.Format(time.RFC1123Z))
	crlf("Message-ID: <%s.dsn@%s>", newID(), host)
	crlf("Auto-Submitted: auto-replied")
	crlf("MIME-Version: 1.0")
	crlf("Content-Type: multipart/report; report-type=delivery-status; boundary=\"%s\"", boundary)
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: text/plain; charset=utf-8")
	crlf("")
	crlf("This is the mail system at %s.", host)
	crlf("")
	crlf("Your message was delivered to some recipients, but the next hop refused")
	crlf("the recipients below permanently. It will not be retried for them.")
	crlf("")
	for _, rc := range failed {
		se := dsnReply(rc.status)
		crlf("<%s>: %d %s", rc.wire, se.Code, oneLine(se.Message))
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: %s", statusType)
	crlf("")
	crlf("Reporting-MTA: dns; %s", host)
	if tx.opts != nil && tx.opts.EnvelopeID != "" {
		crlf("Original-Envelope-Id: %s", oneLine(tx.opts.EnvelopeID))
	}
	crlf("Arrival-Date: %s", tx.start.Format(time.RFC1123Z))
	for _, rc := range failed {
		se := dsnReply(rc.status)
		crlf("")
		if rc.opts != nil && rc.opts.OriginalRecipient != "" {
			kind, orcpt := "rfc822", oneLine(rc.opts.OriginalRecipient)
			if rc.opts.OriginalRecipientType == smtp.DSNAddressTypeUTF8 {
				kind = "utf-8"
				if !utf8 {
					// A 7-bit report carries it as utf-8-addr-xtext
					// (RFC 6533 §3); the client may send a UTF-8 ORCPT in
					// that form without SMTPUTF8.
					orcpt = utf8AddrXtext(orcpt)
				}
			}
			crlf("Original-Recipient: %s;%s", kind, orcpt)
		}
		if isASCII(rc.addr) {
			crlf("Final-Recipient: rfc822; %s", rc.wire)
		} else {
			crlf("Final-Recipient: utf-8; %s", rc.wire)
		}
		crlf("Action: failed")
		crlf("Status: %d.%d.%d", max(se.EnhancedCode[0], 5), max(se.EnhancedCode[1], 0), max(se.EnhancedCode[2], 0))
		crlf("Diagnostic-Code: smtp; %d %s", se.Code, oneLine(se.Message))
	}
	crlf("")
	crlf("--%s", boundary)
	crlf("Content-Type: %s", headersType)
	crlf("")
	end := headerLength(msg)
	if end < 0 {
		end = len(msg.mem)
	}
	b.Write(msg.mem[:end])
	crlf("")
	crlf("--%s--", boundary)
	return b.Bytes()
}

// dsnNeedsUTF8 tells whether a DSN names an internationalised address, and
// so must travel with SMTPUTF8.
func dsnNeedsUTF8(tx *transaction, failed []*recipient) bool {
	if (tx.opts != nil && tx.opts.UTF8) || !isASCII(tx.from) {
		return true
	}
	for _, rc := range failed {
		if !isASCII(rc.addr) {
			return true
		}
	}
	return false
}

func oneLine(s string) string {
	return string(bytes.Map(func(r rune) rune {
		if r == '\r' || r == '\n' {
			return ' '
		}
		return r
	}, []byte(s)))
}

// dsnReply is the next hop's own reply, unprefixed, as RFC 3464's
// Diagnostic-Code wants it.
func dsnReply(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		return se
	}
	return upstreamReply(err)
}
