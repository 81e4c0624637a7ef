package relay

import "regexp"

// addressLike matches what could be an email address in free text: a
// quoted or unquoted local part, an @, and a domain or address literal.
var addressLike = regexp.MustCompile(`(?:"(?:[^"\\]|\\.)*"|[^\s<>"'(),;:\[\]@]+)@(?:\[[^\]\s]*\]|[^\s<>"'(),;:\[\]@]+)`)

// redactAddresses removes anything address-like from text that came from
// outside (an upstream's reply, a store's error) before it reaches the
// operational log, which must hold no recipient address at any level.
// Postfix-style replies name the recipient ("<bob@example.com>: Recipient
// address rejected"), and an error about an address usually quotes it.
func redactAddresses(s string) string {
	return addressLike.ReplaceAllString(s, "[address]")
}
