package beacon

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

// discardWriter is the cheapest http.ResponseWriter, so that the
// benchmarks measure the handlers, not a recorder.
type discardWriter struct{ h http.Header }

func (w *discardWriter) Header() http.Header         { return w.h }
func (w *discardWriter) Write(p []byte) (int, error) { return len(p), nil }
func (w *discardWriter) WriteHeader(int)             {}

func benchHandler(b *testing.B, h http.Handler, path string) {
	req := httptest.NewRequest(http.MethodGet, path, nil)
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		w := &discardWriter{h: http.Header{}}
		for pb.Next() {
			clear(w.h)
			h.ServeHTTP(w, req)
		}
	})
}

// BenchmarkBeaconHandler and BenchmarkBaselineHandler compare the beacon
// endpoint (verify, count) with a handler that only writes the GIF. The
// end-to-end comparison over HTTP is bench/beacon/run.sh.
func BenchmarkBeaconHandler(b *testing.B) {
	db, _ := testDB(b)
	// A fixed clock without the test clock's mutex, which would dominate.
	bc := open(b, db, nil, Options{MinBatch: 1, FlushInterval: 100 * time.Millisecond, Now: func() time.Time { return t0 }})
	benchHandler(b, bc.PublicHandler(), pathOf(b, mustURL(b, bc, "default", "autumn-2026", t0)))
}

func BenchmarkBaselineHandler(b *testing.B) {
	benchHandler(b, BaselineHandler(), "/b/x.gif")
}
