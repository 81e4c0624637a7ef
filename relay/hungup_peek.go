//go:build unix && !aix

package relay

import (
	"errors"
	"io"
	"syscall"
)

// peekable: hungUp can look at the socket without waiting, so BDAT can
// be used; AIX's syscall package lacks MSG_DONTWAIT.
const peekable = true

// hungUp tells, without waiting, whether the upstream has already closed
// a connection that should be silent, or spoken on it unasked (Postfix's
// "421 4.4.2 timeout exceeded" before it hangs up). A transaction opened
// at RCPT can go stale that way while the client uploads. DATA finds out
// from its own reply; BDAT sends the whole message before any reply, so
// it asks first.
func (c *upClient) hungUp() error {
	if c.text.R.Buffered() > 0 {
		return errors.New("the upstream sent a reply nobody asked for")
	}
	sc, ok := c.raw.(syscall.Conn)
	if !ok {
		return nil
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return nil
	}
	var n int
	var rerr error
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		n, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // one look, never a wait
	})
	switch {
	case err != nil:
		return err
	case rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK:
		return nil
	case rerr != nil:
		return rerr
	case n == 0:
		return io.EOF
	}
	return errors.New("the upstream sent a reply nobody asked for")
}
