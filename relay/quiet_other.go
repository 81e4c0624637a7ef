//go:build !unix || aix

package relay

// peekable is false where quiet cannot look at the socket without
// waiting: there the relay keeps DATA, whose reply to the DATA command
// shows a connection that went stale during the client's upload, and
// which is then retried on a fresh one.
const peekable = false

func (c *upClient) quiet() bool { return false }
