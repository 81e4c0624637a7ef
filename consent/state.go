// Package consent is pixelrelay's record of who agreed to what: an embedded
// bbolt store of per-tenant, per-recipient, per-purpose consent with an
// append-only, hash-chained proof history, plus its HTTP API.
package consent

// State is a recipient's consent for one purpose.
type State string

const (
	// Unknown: never asked. The default, and it means no tracking.
	Unknown State = "unknown"
	// Granted is the only state that allows tracking.
	Granted   State = "granted"
	Denied    State = "denied"
	Withdrawn State = "withdrawn"
)

// Built-in purposes; more can be declared in configuration.
const (
	PurposeOpenTracking  = "open_tracking"
	PurposeClickTracking = "click_tracking"
)

// DefaultTenant is the controller used when no tenant mapping applies.
const DefaultTenant = "default"
