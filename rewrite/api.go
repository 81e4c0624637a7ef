// Package rewrite finds open-tracking pixels in an RFC 5322 message and
// removes them, or replaces them with a delivery-only beacon, while copying
// every byte it does not need to change verbatim.
//
// It is a pure streaming function: a message and a Decision go in, the
// rewritten message and a Report come out. It does no logging, no storage
// and no network I/O, so the relay, the rewrite filter and the offline scan
// all share exactly one implementation.
package rewrite

// Action is what happens to the trackers in one copy of a message.
type Action string

const (
	// Keep leaves the message byte-identical; trackers are still reported.
	Keep Action = "keep"
	// Strip removes every tracker.
	Strip Action = "strip"
	// Beacon replaces the first <img> tracker with Decision.BeaconURL and
	// strips the others.
	Beacon Action = "beacon"
)

// Decision says what to do with one copy of a message. The relay builds one
// Decision per recipient group; the same Decision always yields the same
// bytes, so every recipient in a group receives an identical copy.
type Decision struct {
	Action Action
	// Recipients are the envelope recipients this copy goes to. Their
	// addresses appearing in a URL (plain, encoded or hashed) is a strong
	// tracker signal that only a sender-side relay can see.
	Recipients []string
	// BeaconURL is the absolute URL of the beacon image; required when
	// Action is Beacon.
	BeaconURL string
}

// Finding is one tracker URL found in a message.
type Finding struct {
	URL     string   `json:"url"`
	Vendor  string   `json:"vendor"`
	Host    string   `json:"host"`
	Reasons []string `json:"reasons"`
	Vector  string   `json:"vector"`
	Part    string   `json:"part"`
	Action  Action   `json:"action"`
}

// Report describes what Rewrite found and did.
type Report struct {
	MessageID string
	Trackers  []Finding
	// Changed is true when the output differs from the input.
	Changed bool
	// Problems lists non-fatal trouble (malformed MIME, an unknown charset)
	// under which the affected bytes were passed through unchanged.
	Problems []string
	// DroppedParts are the MIME part paths removed from this copy: a
	// text/x-amp-html alternative with trackers or remote data fetches,
	// for a recipient who did not consent. The HTML alternative remains.
	DroppedParts []string
}
