//go:build unix && !aix

package relay

import "syscall"

// quiet tells, without waiting, that the upstream has neither closed the
// connection nor sent anything on it since its last reply: no hang-up,
// no "421 4.4.2 timeout exceeded", no TLS record. An error from the look
// itself counts as not quiet. (AIX's syscall package lacks MSG_DONTWAIT;
// there quiet_other.go's answer is always no.)
func (c *upClient) quiet() bool {
	if c.text.R.Buffered() > 0 {
		return false
	}
	sc, ok := c.raw.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	var rerr error
	var b [1]byte
	err = rc.Read(func(fd uintptr) bool {
		_, _, rerr = syscall.Recvfrom(int(fd), b[:], syscall.MSG_PEEK|syscall.MSG_DONTWAIT)
		return true // one look, never a wait
	})
	return err == nil && (rerr == syscall.EAGAIN || rerr == syscall.EWOULDBLOCK)
}
