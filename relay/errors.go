package relay

import (
	"errors"
	"fmt"

	"github.com/emersion/go-smtp"
)

// Every reply the relay itself composes is built here. go-smtp turns a plain
// error returned from Data into a permanent 554, which would bounce mail
// because of our own trouble; so the session only ever returns values made
// by the functions below, all *smtp.SMTPError, and never shows an internal
// cause to the client (that goes to the operational log).

func reply(code int, enh smtp.EnhancedCode, msg string) *smtp.SMTPError {
	return &smtp.SMTPError{Code: code, EnhancedCode: enh, Message: msg}
}

var (
	// Our own temporary trouble: the client keeps the message and retries.
	errLocal = reply(451, smtp.EnhancedCode{4, 3, 0}, "Local error, message not accepted; try again later")
	// The upstream could not be reached or broke off: temporary by nature.
	errUpstreamDown = reply(451, smtp.EnhancedCode{4, 4, 1}, "Next hop unavailable, message not accepted; try again later")
	// Some recipients got the message and others failed temporarily. The
	// retry will go only to the others (see deliveryLog).
	errPartial = reply(451, smtp.EnhancedCode{4, 4, 0}, "Delivered to some recipients only; retry and the rest will be delivered without duplicates")

	errDataTimeout   = reply(421, smtp.EnhancedCode{4, 4, 2}, "Timeout reading message data; closing connection")
	errBadLineEnding = reply(550, smtp.EnhancedCode{5, 5, 2}, "Message refused: bare CR or LF in DATA; lines must end with CRLF")
	errTooBig        = reply(552, smtp.EnhancedCode{5, 3, 4}, "Message exceeds the maximum size")
	errHeaderTooBig  = reply(552, smtp.EnhancedCode{5, 3, 4}, "Message header exceeds the maximum size")
	errLineTooLong   = reply(552, smtp.EnhancedCode{5, 5, 6}, "Message has a line longer than the maximum")

	errAuthRequired = reply(530, smtp.EnhancedCode{5, 7, 0}, "Authentication required")
	errBadAddress   = reply(501, smtp.EnhancedCode{5, 1, 3}, "Address contains control characters or is malformed")
	errBadHelo      = reply(501, smtp.EnhancedCode{5, 5, 2}, "HELO name contains control characters")

	errUpstreamNoSMTPUTF8   = reply(553, smtp.EnhancedCode{5, 6, 7}, "Next hop does not support SMTPUTF8; this message cannot be relayed with internationalised addresses")
	errUpstreamNoRequireTLS = reply(550, smtp.EnhancedCode{5, 7, 30}, "Next hop does not support REQUIRETLS")
	errTooManyRecipients    = reply(452, smtp.EnhancedCode{4, 5, 3}, "Too many recipients")
)

func errSenderNotAllowed(user string) *smtp.SMTPError {
	return reply(553, smtp.EnhancedCode{5, 7, 1}, fmt.Sprintf("User %s may not send as this address", user))
}

// upstreamReply turns the failure of a delivery step into what the client
// sees. The upstream's own replies pass through with their code and text,
// so an app sees why its recipient or message was refused; transport
// failures are always temporary, never a bounce; anything else is our own
// fault (rewrite, DKIM, spool), for which the next hop is not to blame.
func upstreamReply(err error) *smtp.SMTPError {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		// Failing to establish the connection (refused, TLS, a refused
		// AUTH, a banner that turns us away) is about our link to the
		// upstream, never about this message: temporary.
		return errUpstreamDown
	}
	var se *smtp.SMTPError
	if errors.As(err, &se) {
		if se.Code >= 400 && se.Code < 600 {
			msg := se.Message
			if msg == "" {
				msg = "Refused by the next hop"
			}
			return reply(se.Code, se.EnhancedCode, "Next hop: "+msg)
		}
		return errUpstreamDown
	}
	return errLocal
}

// isOwnFault tells a failure of ours (building a copy: rewrite, DKIM,
// spool) from an upstream's reply or a transport failure.
func isOwnFault(err error) bool {
	var ue *UpstreamError
	return !errors.As(err, &ue) && !isSMTPReply(err)
}

// dataError maps a failure while receiving DATA to the client's reply.
func dataError(err error) *smtp.SMTPError {
	var se *smtp.SMTPError
	switch {
	case errors.As(err, &se):
		return se // go-smtp's ErrDataTooLarge
	case errors.Is(err, errBareLineEnding):
		return errBadLineEnding
	case errors.Is(err, errHeaderSize):
		return errHeaderTooBig
	case errors.Is(err, errLineLength), errors.Is(err, smtp.ErrTooLongLine):
		return errLineTooLong
	case isTimeout(err):
		return errDataTimeout
	}
	return errLocal
}

// isPermanent tells whether an upstream error is a 5xx verdict, as opposed
// to a 4xx or a transport failure.
func isPermanent(err error) bool {
	var ue *UpstreamError
	if errors.As(err, &ue) {
		return false
	}
	var se *smtp.SMTPError
	return errors.As(err, &se) && se.Code >= 500 && se.Code < 600
}
