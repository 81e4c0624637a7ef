// Package consent is pixelrelay's record of who agreed to what: an embedded
// bbolt store of per-tenant, per-recipient, per-purpose consent with an
// append-only, hash-chained proof history, plus its HTTP API.
//
// The store is keyed by (tenant, subject, purpose). A subject is the keyed
// HMAC of the normalised address (see Pseudonym); the address itself is kept
// only encrypted, so the file never holds a plaintext address. Every change
// is an event appended to one global hash chain, and the current state is a
// projection updated in the same bbolt transaction. Erasure replaces a
// subject's events by tombstones that keep the chain verifiable.
//
// Reads (Lookup) are lock-free on the hot path and safe for any number of
// concurrent SMTP sessions; writes are serialised by bbolt and fsynced on
// commit.
package consent

import (
	"fmt"
	"strings"
)

// State is a recipient's consent for one purpose.
type State string

const (
	// Unknown: never asked. The default, and it means no tracking.
	Unknown State = "unknown"
	// Granted is the only state that allows tracking.
	Granted State = "granted"
	// Denied: the person was asked and refused. Kept apart from Withdrawn
	// for the audit trail and the six-month re-ask rule.
	Denied State = "denied"
	// Withdrawn: the person had granted, then revoked.
	Withdrawn State = "withdrawn"
)

// Built-in purposes; more can be declared in configuration (Options.Purposes).
const (
	// PurposeOpenTracking is the purpose the relay enforces.
	PurposeOpenTracking = "open_tracking"
	// PurposeClickTracking is declared for later use by the relay.
	PurposeClickTracking = "click_tracking"
	// PurposeMarketingEmail is newsletter consent. Imports from Mailchimp and
	// HubSpot record it; it never enables a pixel (compliance.md §5: the two
	// consents must stay separate).
	PurposeMarketingEmail = "marketing_email"
)

// DefaultTenant is the controller used when no tenant mapping applies.
const DefaultTenant = "default"

// Collection methods an event may name. The list is closed so that the
// proof record stays comparable across sources.
const (
	MethodWebForm          = "web_form"
	MethodDoubleOptIn      = "double_opt_in"
	MethodPreferenceCenter = "preference_center"
	MethodEmailLink        = "email_link"
	MethodImport           = "import"
	MethodAdmin            = "admin"
	MethodAPI              = "api"
)

var methods = []string{MethodWebForm, MethodDoubleOptIn, MethodPreferenceCenter, MethodEmailLink, MethodImport, MethodAdmin, MethodAPI}

// Allows reports whether s permits the tracking its purpose names. Only
// Granted does; everything else, including a state this version does not
// know, fails closed.
func (s State) Allows() bool { return s == Granted }

// ParseState parses a state name as written in the CLI, the API and CSV
// files (case-insensitive, surrounding blanks ignored).
func ParseState(s string) (State, error) {
	switch strings.ToLower(strings.TrimSpace(s)) {
	case "granted":
		return Granted, nil
	case "denied":
		return Denied, nil
	case "withdrawn":
		return Withdrawn, nil
	case "unknown":
		return Unknown, nil
	}
	return "", invalidf("unknown state %q: use granted, denied or withdrawn", s)
}

// stateByte and byteState are the on-disk form of a State.
func stateByte(s State) byte {
	switch s {
	case Granted:
		return 1
	case Denied:
		return 2
	case Withdrawn:
		return 3
	}
	return 0
}

func byteState(b byte) State {
	switch b {
	case 1:
		return Granted
	case 2:
		return Denied
	case 3:
		return Withdrawn
	}
	return Unknown
}

func validMethod(m string) error {
	for _, x := range methods {
		if m == x {
			return nil
		}
	}
	return invalidf("unknown method %q: use one of %s", m, strings.Join(methods, ", "))
}

// validPurposeName is the syntax of a declarable purpose.
func validPurposeName(p string) error {
	if p == "" || len(p) > 64 {
		return fmt.Errorf("purpose name %q must be 1 to 64 characters", p)
	}
	for i := 0; i < len(p); i++ {
		c := p[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '_') {
			return fmt.Errorf("purpose name %q may only use a-z, 0-9 and _", p)
		}
	}
	return nil
}
