package relay

import (
	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the relay's Prometheus series. Labels are bounded: outcome,
// consent state, phase, vendor names from the rules file; never an
// address or a message id.
type metrics struct {
	connections      *prometheus.CounterVec
	connectionsOpen  prometheus.Gauge
	sessions         *prometheus.CounterVec
	messages         *prometheus.CounterVec
	recipients       *prometheus.CounterVec
	trackers         *prometheus.CounterVec
	rewriteSeconds   prometheus.Histogram
	upstreamSeconds  prometheus.Histogram
	upstreamErrors   *prometheus.CounterVec
	partialFailures  *prometheus.CounterVec
	consentLookups   *prometheus.CounterVec
	authFailures     prometheus.Counter
	rejectedMessages *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		connections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_connections_total", Help: "SMTP connections, by result (accepted, or the limit that refused them).",
		}, []string{"result"}),
		connectionsOpen: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "pixelrelay_connections_open", Help: "SMTP connections open now.",
		}),
		sessions: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_sessions_total", Help: "SMTP/LMTP sessions (a greeting accepted), by listener kind and whether TLS was on.",
		}, []string{"listener", "tls"}),
		messages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_messages_total", Help: "Messages by outcome: delivered, partial, deferred, refused, rejected.",
		}, []string{"outcome"}),
		recipients: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_recipients_total", Help: "Recipients by open_tracking consent state and the action their copy got.",
		}, []string{"consent", "action"}),
		trackers: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_trackers_total", Help: "Trackers found, by vendor (\"unknown\" for heuristic finds) and action.",
		}, []string{"vendor", "action"}),
		rewriteSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pixelrelay_rewrite_duration_seconds", Help: "Time to produce one enforced copy (rewrite while streaming upstream).",
			Buckets: prometheus.ExponentialBuckets(0.0001, 2.5, 12),
		}),
		upstreamSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name: "pixelrelay_upstream_duration_seconds", Help: "Time from DATA to the upstream's final reply, per copy.",
			Buckets: prometheus.ExponentialBuckets(0.0005, 2.5, 14),
		}),
		upstreamErrors: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_upstream_errors_total", Help: "Upstream failures by phase (connect, tls, auth, mail, rcpt, data) and kind (temporary, permanent).",
		}, []string{"phase", "kind"}),
		partialFailures: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_partial_failures_total", Help: "Messages delivered to some recipients while others failed, by kind of failure.",
		}, []string{"kind"}),
		consentLookups: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_consent_lookups_total", Help: "Consent lookups by result (ok, error). Errors strip (fail closed).",
		}, []string{"result"}),
		authFailures: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pixelrelay_auth_failures_total", Help: "Failed SMTP AUTH attempts.",
		}),
		rejectedMessages: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "pixelrelay_rejected_data_total", Help: "Messages refused while receiving DATA, by reason (bare_line_ending, size, header, line).",
		}, []string{"reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.connections, m.connectionsOpen, m.sessions, m.messages, m.recipients, m.trackers,
			m.rewriteSeconds, m.upstreamSeconds, m.upstreamErrors, m.partialFailures, m.consentLookups,
			m.authFailures, m.rejectedMessages)
	}
	// Pre-create the common series so dashboards show zeros, not gaps.
	for _, o := range []string{"delivered", "partial", "deferred", "refused", "rejected"} {
		m.messages.WithLabelValues(o)
	}
	for _, r := range []string{"ok", "error"} {
		m.consentLookups.WithLabelValues(r)
	}
	m.connections.WithLabelValues("accepted")
	return m
}

func (m *metrics) connectionOpened() {
	m.connections.WithLabelValues("accepted").Inc()
	m.connectionsOpen.Inc()
}

func (m *metrics) connectionClosed() { m.connectionsOpen.Dec() }

func (m *metrics) connectionRefused(why string) {
	m.connections.WithLabelValues(why).Inc()
}
