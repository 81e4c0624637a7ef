//go:build linux

package relay

import (
	"bytes"
	"errors"
	"strings"
	"syscall"
	"testing"
	"unsafe"
)

// spoolWatch counts the files created in a spool directory, by name
// prefix, with inotify: the relay unlinks them at once, so listing the
// directory would show nothing.
type spoolWatch struct{ fd int }

func watchSpool(t *testing.T, dir string) *spoolWatch {
	t.Helper()
	fd, err := syscall.InotifyInit1(syscall.IN_NONBLOCK | syscall.IN_CLOEXEC)
	if err != nil {
		t.Skipf("inotify unavailable: %v", err)
	}
	t.Cleanup(func() { syscall.Close(fd) })
	if _, err := syscall.InotifyAddWatch(fd, dir, syscall.IN_CREATE); err != nil {
		t.Fatal(err)
	}
	return &spoolWatch{fd: fd}
}

// copies drains the events so far and counts the copy buffers among them.
func (w *spoolWatch) copies() int {
	n := 0
	buf := make([]byte, 64<<10)
	for {
		read, err := syscall.Read(w.fd, buf)
		if errors.Is(err, syscall.EAGAIN) || read <= 0 {
			return n
		}
		for off := 0; off+syscall.SizeofInotifyEvent <= read; {
			ev := (*syscall.InotifyEvent)(unsafe.Pointer(&buf[off]))
			name := buf[off+syscall.SizeofInotifyEvent : off+syscall.SizeofInotifyEvent+int(ev.Len)]
			if bytes.HasPrefix(name, []byte("pixelrelay-copy-")) {
				n++
			}
			off += syscall.SizeofInotifyEvent + int(ev.Len)
		}
	}
}

// A message that carries the app's DKIM signature, relayed without a key
// of ours, is streamed to the upstream as it goes, never first built as a
// whole copy (which past spool_memory meant a second file on disk): for
// the consenting recipients' original, and for the stripped copy when
// dkim_existing is keep (nothing about the signature changes).
func TestSignedMessageStreamedWithoutOurKey(t *testing.T) {
	dir := t.TempDir()
	h := newHarness(t, func(c *Config) {
		c.SpoolDir = dir
		c.SpoolMemory = 16 << 10
		c.DKIMExisting = "keep"
	})
	h.setConsent("bob@example.com", "granted")
	w := watchSpool(t, dir)
	body := strings.Repeat("All the autumn offers, line after line of them.\r\n", 2000)
	msg := []byte("DKIM-Signature: v=1; a=rsa-sha256; d=acme.example; s=s1; h=from; bh=x; b=y\r\n" +
		"From: news@acme.example\r\nSubject: offers\r\n\r\n" + body +
		"<img src=\"https://acme.us14.list-manage.com/track/open.php?u=1&id=2\" width=\"1\" height=\"1\">\r\n")
	sendRaw(t, h.addr, []string{"bob@example.com", "alice@example.fr"}, msg)
	bob := h.up.MessageFor("bob@example.com").Data
	if !bytes.HasSuffix(bob, msg) {
		t.Errorf("bob's copy is not the original byte for byte")
	}
	if got := lastAudit(t, h.auditPath).DKIM; got != "kept" {
		t.Errorf("audit dkim = %q, want kept", got)
	}
	if n := w.copies(); n != 0 {
		t.Errorf("%d copies of the message were written to the spool directory, want none", n)
	}
}
