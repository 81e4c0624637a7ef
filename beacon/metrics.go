package beacon

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the pixelrelay_beacon_* series. No label carries a tenant or
// campaign: those are unbounded, and per-campaign figures are what
// GET /v1/beacons is for.
type metrics struct {
	loads       prometheus.Counter
	rejected    map[string]prometheus.Counter
	decisions   map[bool]prometheus.Counter
	flushErrors prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	rejected := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pixelrelay_beacon_rejected_total",
		Help: "Requests to the beacon listener answered 404 or 405 without counting, by reason.",
	}, []string{"reason"})
	decisions := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "pixelrelay_beacon_recipients_total",
		Help: "Non-consenting recipients counted toward campaign batches, by whether their copy was eligible for the beacon (beacon) or stripped below the minimum batch (below_min_batch).",
	}, []string{"result"})
	m := &metrics{
		loads: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pixelrelay_beacon_loads_total",
			Help: "Beacon image loads, including privacy proxies such as Apple Mail Privacy Protection; not unique opens.",
		}),
		rejected:  map[string]prometheus.Counter{},
		decisions: map[bool]prometheus.Counter{true: decisions.WithLabelValues("beacon"), false: decisions.WithLabelValues("below_min_batch")},
		flushErrors: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "pixelrelay_beacon_flush_errors_total",
			Help: "Failed writes of beacon counters to the database; the counts stay in memory and are retried.",
		}),
	}
	// Resolve every label once: the load path must not hash label values.
	for _, r := range []string{rejectMalformed, rejectUnknownKey, rejectBadMAC, rejectExpired, rejectFutureDay,
		rejectRetiredDay, rejectBadPath, rejectWrongMethod} {
		m.rejected[r] = rejected.WithLabelValues(r)
	}
	if reg != nil {
		for _, c := range []prometheus.Collector{m.loads, rejected, decisions, m.flushErrors} {
			if err := reg.Register(c); err != nil {
				return nil, fmt.Errorf("beacon: registering metrics: %w (is a second Beacons using the same registry?)", err)
			}
		}
	}
	return m, nil
}
