package relay

import (
	"crypto/tls"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// certStore serves the listener certificate and picks up a renewed one
// (certbot, cert-manager) without a restart: handshakes read the current
// certificate, and the files are re-read on SIGHUP or when their
// modification time changes. Sessions already open keep their TLS state.
type certStore struct {
	certFile, keyFile string
	cur               atomic.Pointer[tls.Certificate]

	mu        sync.Mutex
	lastCheck time.Time
	modTime   time.Time
}

func loadCertStore(certFile, keyFile string) (*certStore, error) {
	c := &certStore{certFile: certFile, keyFile: keyFile}
	if err := c.Reload(); err != nil {
		return nil, err
	}
	return c, nil
}

// Reload reads the key pair; on failure the previous one stays in use.
func (c *certStore) Reload() error {
	cert, err := tls.LoadX509KeyPair(c.certFile, c.keyFile)
	if err != nil {
		return fmt.Errorf("tls_cert %s / tls_key %s: %w", c.certFile, c.keyFile, err)
	}
	c.cur.Store(&cert)
	c.mu.Lock()
	c.modTime = c.newestModTime()
	c.mu.Unlock()
	return nil
}

func (c *certStore) newestModTime() time.Time {
	var t time.Time
	for _, f := range []string{c.certFile, c.keyFile} {
		if st, err := os.Stat(f); err == nil && st.ModTime().After(t) {
			t = st.ModTime()
		}
	}
	return t
}

func (c *certStore) getCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	c.mu.Lock()
	check := time.Since(c.lastCheck) > 10*time.Second
	if check {
		c.lastCheck = time.Now()
	}
	changed := check && c.newestModTime().After(c.modTime)
	c.mu.Unlock()
	if changed {
		c.Reload() // a half-written renewal fails here and the old cert stays
	}
	return c.cur.Load(), nil
}

// serverTLSConfig is TLS 1.2 or later with Go's default cipher suites.
func (c *certStore) serverTLSConfig() *tls.Config {
	return &tls.Config{MinVersion: tls.VersionTLS12, GetCertificate: c.getCertificate}
}
