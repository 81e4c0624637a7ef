package relay

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"testing"
	"time"

	"github.com/pixelrelay/pixelrelay/beacon"
	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/relay/relaytest"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

// harness is a relay assembled from real parts: a bbolt consent store in a
// temp dir, the real rewrite engine, the real audit log, and a go-smtp
// upstream on loopback.
type harness struct {
	t         testing.TB
	cfg       Config
	relay     *Relay
	store     *consent.Store
	up        *relaytest.Upstream
	audit     *AuditLog
	auditPath string
	beacons   *beacon.Beacons
	addr      string
	logs      *syncBuffer
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

func newHarness(t testing.TB, mutate func(*Config)) *harness {
	t.Helper()
	return newHarnessDeps(t, mutate, nil)
}

// newHarnessDeps is newHarness with a last say over the relay's
// dependencies, for a test that wraps one of the real parts.
func newHarnessDeps(t testing.TB, mutate func(*Config), wrap func(*Deps)) *harness {
	t.Helper()
	dir := t.TempDir()
	h := &harness{t: t, up: relaytest.NewUpstream(t), logs: &syncBuffer{}}
	cfg := DefaultConfig()
	cfg.Listen = Addrs{"127.0.0.1:0"}
	cfg.HTTP = ""
	cfg.Hostname = "relay.test"
	cfg.Upstream = "smtp://" + h.up.Addr()
	cfg.DB = filepath.Join(dir, "pixelrelay.db")
	cfg.AuditLog = filepath.Join(dir, "audit.jsonl")
	cfg.UpstreamConnectTimeout = 2 * time.Second
	cfg.UpstreamCommandTimeout = 2 * time.Second
	cfg.UpstreamDataTimeout = 3 * time.Second
	if mutate != nil {
		mutate(&cfg)
	}
	h.cfg = cfg
	h.auditPath = cfg.AuditLog

	store, err := consent.Open(cfg.DB, consent.Options{LockTimeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	h.store = store
	engine, err := rewrite.New(rewrite.Options{})
	if err != nil {
		t.Fatal(err)
	}
	up, err := NewUpstream(cfg)
	if err != nil {
		t.Fatal(err)
	}
	audit, err := OpenAuditLog(cfg.AuditLog)
	if err != nil {
		t.Fatal(err)
	}
	h.audit = audit
	retry, err := NewRetryMemory(store.DB(), cfg.RetryMemory)
	if err != nil {
		t.Fatal(err)
	}
	logger := slog.New(slog.NewTextHandler(h.logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	// The real beacon store, as serve opens it.
	h.beacons, err = beacon.Open(store.DB(), beacon.Options{Base: cfg.BeaconBase, MinBatch: cfg.BeaconMinBatch})
	if err != nil {
		t.Fatal(err)
	}
	deps := Deps{
		Consent: store, Rewriter: engine, Upstream: up, Audit: audit,
		RetryMemory: retry, Logger: logger, Version: "test", Beacons: h.beacons,
	}
	if wrap != nil {
		wrap(&deps)
	}
	r, err := New(cfg, deps)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Start(); err != nil {
		t.Fatal(err)
	}
	h.relay = r
	h.addr = r.Addr("smtp").String()
	t.Cleanup(func() {
		r.Close()
		up.Close()
		audit.Close()
		h.beacons.Close()
		store.Close()
	})
	return h
}

// setConsent records a consent event the way an operator would, with
// proof fields, through the store's public API.
func (h *harness) setConsent(addr, state string) {
	h.t.Helper()
	_, err := h.store.Record(context.Background(), consent.Event{
		Tenant:      consent.DefaultTenant,
		Address:     addr,
		Purpose:     consent.PurposeOpenTracking,
		State:       consent.State(state),
		Method:      "web_form",
		Source:      "relay-test",
		TextVersion: "v1",
		Evidence:    "test-evidence",
		Actor:       "test",
	})
	if err != nil {
		h.t.Fatalf("consent %s %s: %v", addr, state, err)
	}
}

var _ = rewrite.Keep

// auditRecords parses the audit log written so far.
func (h *harness) auditRecords() []AuditRecord {
	h.t.Helper()
	data, err := os.ReadFile(h.auditPath)
	if err != nil {
		h.t.Fatal(err)
	}
	var out []AuditRecord
	for _, line := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
		var r AuditRecord
		if err := json.Unmarshal(line, &r); err != nil {
			h.t.Fatalf("audit line %q: %v", line, err)
		}
		out = append(out, r)
	}
	return out
}

func beaconFilterAll() beacon.Filter { return beacon.Filter{Tenant: "*"} }

// serveLoopback listens on a free loopback port while the test runs and
// hands every connection it accepts to handle, in its own goroutine: the
// scripted upstreams and taps of the tests that need one go-smtp cannot be
// made into. It returns the address.
func serveLoopback(t testing.TB, handle func(net.Conn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go handle(c)
		}
	}()
	return ln.Addr().String()
}

// mustReadFile is os.ReadFile for a test: a file that cannot be read is
// the test's failure, never an empty input that passes vacuously.
func mustReadFile(t testing.TB, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	return b
}
