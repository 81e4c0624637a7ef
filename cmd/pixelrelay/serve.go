package main

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/pprof"
	"os"
	"os/signal"
	"runtime"
	"strings"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"go.etcd.io/bbolt"

	"github.com/pixelrelay/pixelrelay/beacon"
	"github.com/pixelrelay/pixelrelay/consent"
	"github.com/pixelrelay/pixelrelay/relay"
	"github.com/pixelrelay/pixelrelay/rewrite"
)

const serveUsage = `usage: pixelrelay serve [FLAGS]

Runs the SMTP relay. Every key below can be given as a flag, as an
environment variable PIXELRELAY_<KEY> (upper case, _ for -), or in the YAML
file named by --config (keys with _). A flag beats the environment, which
beats the file, which beats the default. With no --upstream, mail is
written to ./outbox/ as .eml files instead of being delivered.

Signals: SIGTERM or SIGINT drain and stop; SIGHUP reloads the config file,
the tracker rules, the users file and the TLS certificate.

flags:`

func runServe(env *cmdEnv, args []string) int {
	loader := &configLoader{getenv: env.getenv}
	fs := newFlagSet("serve", serveUsage, env.stderr)
	loader.registerServeFlags(fs)
	rest, code, stop := parseCommand(fs, args)
	if stop {
		return code
	}
	if len(rest) > 0 {
		fmt.Fprintf(env.stderr, "pixelrelay serve: unexpected argument %q; see pixelrelay help serve\n", rest[0])
		return 1
	}
	cfg, overrides, err := loader.load()
	if err != nil {
		printConfigErrors(env.stderr, err)
		return 1
	}
	logger, level := newLogger(env.stderr, cfg.LogFormat, cfg.LogLevel)
	warnOverrides(logger, overrides)
	if err := serve(loader, cfg, logger, level); err != nil {
		logger.Error("pixelrelay stopped", "err", err)
		return 1
	}
	return 0
}

func printConfigErrors(w io.Writer, err error) {
	fmt.Fprintln(w, "pixelrelay serve: invalid configuration:")
	for _, line := range strings.Split(err.Error(), "\n") {
		fmt.Fprintf(w, "  - %s\n", line)
	}
}

func parseLevel(level string) slog.Level {
	switch strings.ToLower(level) {
	case "debug":
		return slog.LevelDebug
	case "warn", "warning":
		return slog.LevelWarn
	case "error":
		return slog.LevelError
	}
	return slog.LevelInfo
}

// newLogger returns the operational logger and the level SIGHUP adjusts.
func newLogger(w io.Writer, format, level string) (*slog.Logger, *slog.LevelVar) {
	lv := new(slog.LevelVar)
	lv.Set(parseLevel(level))
	opts := &slog.HandlerOptions{Level: lv}
	if format == "json" {
		return slog.New(slog.NewJSONHandler(w, opts)), lv
	}
	return slog.New(slog.NewTextHandler(w, opts)), lv
}

// swappableRewriter lets SIGHUP replace the rules under running sessions:
// each message uses whichever engine was current when it started.
type swappableRewriter struct {
	cur atomic.Pointer[rewrite.Engine]
}

func (s *swappableRewriter) Rewrite(dst io.Writer, src io.Reader, d rewrite.Decision) (rewrite.Report, error) {
	return s.cur.Load().Rewrite(dst, src, d)
}
func (s *swappableRewriter) RulesVersion() string { return s.cur.Load().RulesVersion() }

// newEngine builds the rewrite engine from the config's rules file.
func newEngine(cfg relay.Config) (*rewrite.Engine, error) {
	e, err := newRewriteEngine(cfg.Rules, cfg.BeaconBase)
	if err != nil {
		return nil, fmt.Errorf("rules: %w", err)
	}
	return e, nil
}

func serve(loader *configLoader, cfg relay.Config, log *slog.Logger, level *slog.LevelVar) error {
	if cfg.MaxProcs > 0 {
		// Before any goroutine of ours starts. 0 leaves Go's default (or
		// the GOMAXPROCS environment variable) alone.
		runtime.GOMAXPROCS(cfg.MaxProcs)
	}
	log.Info("pixelrelay starting", append([]any{"version", version}, describeConfig(cfg)...)...)

	store, err := consent.Open(cfg.DB, consent.Options{Purposes: cfg.Purposes, IgnorePlusTag: cfg.IgnorePlusTag, LockTimeout: 200 * time.Millisecond})
	if err != nil {
		return err
	}
	defer store.Close()

	engine, err := newEngine(cfg)
	if err != nil {
		return err
	}
	rewriter := &swappableRewriter{}
	rewriter.cur.Store(engine)

	upstream, err := relay.NewUpstream(cfg)
	if err != nil {
		return err
	}
	defer upstream.Close()
	if cfg.Upstream == "" {
		log.Warn("NO UPSTREAM CONFIGURED: mail is written to the outbox directory and NOT delivered; set --upstream smtp://host:port to relay for real",
			"outbox", cfg.Outbox)
	}

	audit, err := relay.OpenAuditLog(cfg.AuditLog)
	if err != nil {
		return err
	}
	defer audit.Close()
	retry, err := relay.NewRetryMemory(store.DB(), cfg.RetryMemory)
	if err != nil {
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{
		Name: "pixelrelay_db_size_bytes", Help: "Size of the bbolt database file.",
	}, func() float64 {
		if st, err := os.Stat(cfg.DB); err == nil {
			return float64(st.Size())
		}
		return 0
	}))

	beacons, err := beacon.Open(store.DB(), beacon.Options{
		Base: cfg.BeaconBase, MinBatch: cfg.BeaconMinBatch, MaxAge: cfg.BeaconMaxAge,
		Registerer: reg, Logger: log,
	})
	if err != nil {
		return err
	}
	// Closed after the relay and the public listener stop, so the last
	// counts are written; the store closes after it (deferred earlier).
	defer beacons.Close()

	rl, err := relay.New(cfg, relay.Deps{
		Consent: store, Rewriter: rewriter, Upstream: upstream, Audit: audit,
		RetryMemory: retry, Logger: log, Version: version, Registry: reg, Beacons: beacons,
	})
	if err != nil {
		return err
	}
	if err := rl.Start(); err != nil {
		return err
	}

	var admin, public *http.Server
	if cfg.HTTP != "" {
		admin = &http.Server{Handler: adminMux(cfg, store, beacons, rl, reg, log), ReadHeaderTimeout: 10 * time.Second}
		if err := startHTTP(admin, "http", cfg.HTTP, log, "admin API listening"); err != nil {
			rl.Close()
			return err
		}
	}
	if cfg.BeaconListen != "" {
		// Serves /b/{token}.gif only, with no access log: a load is
		// counted, never its address, user agent or referrer.
		public = beacons.PublicServer(cfg.BeaconListen)
		if err := startHTTP(public, "beacon_listen", cfg.BeaconListen, log, "beacon listener", "public_base", cfg.BeaconBase); err != nil {
			rl.Close()
			return err
		}
	}

	sigs := make(chan os.Signal, 1)
	signal.Notify(sigs, syscall.SIGTERM, syscall.SIGINT, syscall.SIGHUP)
	defer signal.Stop(sigs)
	for sig := range sigs {
		if sig == syscall.SIGHUP {
			reload(loader, rl, rewriter, audit, level, log)
			continue
		}
		drain := rl.Config().DrainTimeout // as reloaded, if it was
		log.Info("draining", "signal", sig.String(), "deadline", drain)
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		err := rl.Shutdown(ctx)
		cancel()
		for _, srv := range []*http.Server{public, admin} {
			if srv != nil {
				hctx, hcancel := context.WithTimeout(context.Background(), 5*time.Second)
				srv.Shutdown(hctx)
				hcancel()
			}
		}
		if err != nil {
			log.Warn("drain deadline passed; sessions still in a transaction were closed", "err", err)
		}
		log.Info("pixelrelay stopped")
		return nil
	}
	return nil
}

// startHTTP listens on addr, the value of config key, before returning, so
// that a port in use stops serve at start instead of failing in the
// background; then it serves srv and logs msg with the bound address.
func startHTTP(srv *http.Server, key, addr string, log *slog.Logger, msg string, attrs ...any) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("%s: listen on %s: %w", key, addr, err)
	}
	go srv.Serve(ln)
	log.Info(msg, append([]any{"addr", ln.Addr().String()}, attrs...)...)
	return nil
}

// reload applies SIGHUP: a configuration with any problem is rejected as a
// whole (every problem logged) and the running one stays in force. Keys
// that need a restart keep their running values, and the log says which.
func reload(loader *configLoader, rl *relay.Relay, rw *swappableRewriter, audit *relay.AuditLog, level *slog.LevelVar, log *slog.Logger) {
	cfg, overrides, err := loader.load()
	if err != nil {
		log.Error("SIGHUP: new configuration rejected; the running one stays in force", "problems", strings.Split(err.Error(), "\n"))
		return
	}
	// An edit of the file that the environment overrides changes nothing:
	// say so again, since that edit is what SIGHUP is for.
	warnOverrides(log, overrides)
	// beacon_base needs a restart (the beacon store keeps its own); the
	// engine must keep treating the running one as ours.
	engCfg := cfg
	engCfg.BeaconBase = rl.Config().BeaconBase
	engine, err := newEngine(engCfg)
	if err != nil {
		log.Error("SIGHUP: tracker rules rejected; the running configuration stays in force", "err", err)
		return
	}
	restart, err := rl.Apply(cfg)
	if err != nil {
		log.Error("SIGHUP: new configuration rejected; the running one stays in force", "err", err)
		return
	}
	rw.cur.Store(engine)
	level.Set(parseLevel(cfg.LogLevel))
	if err := audit.Reopen(); err != nil {
		log.Error("SIGHUP: could not reopen the audit log; still writing the old file", "err", err)
	}
	if len(restart) > 0 {
		log.Warn("SIGHUP: these keys changed but need a restart; their running values stay", "keys", restart)
	}
	log.Info("SIGHUP: configuration reloaded", "rules_version", engine.RulesVersion(), "dry_run", cfg.DryRun, "action", cfg.Action)
}

// adminMux is the loopback admin API: health without a token, everything
// else behind the bearer token.
func adminMux(cfg relay.Config, store *consent.Store, beacons *beacon.Beacons, rl *relay.Relay, reg *prometheus.Registry, log *slog.Logger) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("GET /readyz", func(w http.ResponseWriter, r *http.Request) {
		ctx, cancel := context.WithTimeout(r.Context(), cfg.UpstreamConnectTimeout)
		defer cancel()
		var problems []string
		if err := store.DB().View(func(*bbolt.Tx) error { return nil }); err != nil {
			problems = append(problems, "database: "+err.Error())
		}
		if err := rl.Ready(ctx); err != nil {
			problems = append(problems, err.Error())
		}
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		if len(problems) > 0 {
			w.WriteHeader(http.StatusServiceUnavailable)
			io.WriteString(w, strings.Join(problems, "\n")+"\n")
			return
		}
		io.WriteString(w, "ready\n")
	})
	if cfg.APIToken == "" {
		log.Warn("admin API disabled: no --api-token (or PIXELRELAY_API_TOKEN); consent, metrics and backup endpoints answer 404")
		return mux
	}
	tokens := consent.SingleToken(cfg.APIToken)
	auth := func(h http.Handler) http.Handler { return consent.RequireToken(tokens, h) }
	mux.Handle("GET /metrics", auth(promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	mux.Handle("/v1/beacons", auth(beacons.AdminHandler()))
	mux.Handle("/v1/beacons/", auth(beacons.AdminHandler()))
	if cfg.Pprof {
		mux.Handle("/debug/pprof/", auth(http.HandlerFunc(pprof.Index)))
		mux.Handle("/debug/pprof/profile", auth(http.HandlerFunc(pprof.Profile)))
		mux.Handle("/debug/pprof/trace", auth(http.HandlerFunc(pprof.Trace)))
	}
	api := consent.NewHandler(store, consent.HandlerOptions{Tokens: tokens, Logger: log})
	for _, p := range consent.Routes() {
		mux.Handle(p, api)
	}
	return mux
}
