package consent

import (
	"bufio"
	"context"
	"encoding/csv"
	"fmt"
	"io"
	"math/rand/v2"
	"os"
	"path/filepath"
	"runtime"
	"runtime/metrics"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
)

// The performance targets of issue #3, as benchmarks (never as timed
// tests). They build a million subjects, so they run only with -bench:
//
//	go test ./consent -run '^$' -bench 'Lookup1M|Import1M' -benchtime 1x -timeout 30m
//
// PIXELRELAY_BENCH_SUBJECTS lowers the size for a quick look.

func benchSubjects() int {
	if v := os.Getenv("PIXELRELAY_BENCH_SUBJECTS"); v != "" {
		if n, err := strconv.Atoi(v); err == nil && n > 0 {
			return n
		}
	}
	return 1_000_000
}

// benchTmp holds the benchmarks' large files; TestMain removes it.
var benchTmp struct {
	once sync.Once
	dir  string
}

func benchDir() string {
	benchTmp.once.Do(func() {
		d, err := os.MkdirTemp("", "pixelrelay-consent-bench-")
		if err != nil {
			panic(err)
		}
		benchTmp.dir = d
	})
	return benchTmp.dir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if benchTmp.dir != "" {
		if s := lookupOpened.Load(); s != nil {
			s.Close()
		}
		os.RemoveAll(benchTmp.dir)
	}
	os.Exit(code)
}

// benchCSV writes (once per process) a native CSV of n rows shaped like the
// acceptance check's: one subject per row, two grants for each denial.
var benchCSVOnce sync.Map

func benchCSV(b *testing.B, n int) string {
	path := filepath.Join(benchDir(), fmt.Sprintf("import-%d.csv", n))
	once, _ := benchCSVOnce.LoadOrStore(n, &sync.Once{})
	once.(*sync.Once).Do(func() {
		f, err := os.Create(path)
		if err != nil {
			b.Fatal(err)
		}
		w := bufio.NewWriterSize(f, 1<<20)
		w.WriteString("email,purpose,state,occurred_at,method,source,text_version,text_sha256,evidence\n")
		sha := "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08"
		for i := range n {
			st := "granted"
			if i%3 == 0 {
				st = "denied"
			}
			fmt.Fprintf(w, "user%d@example.org,open_tracking,%s,2026-05-01T10:00:00Z,web_form,signup,v2,%s,ev%d\n", i, st, sha, i)
		}
		if err := w.Flush(); err != nil {
			b.Fatal(err)
		}
		f.Close()
	})
	return path
}

// heapSampler records the peak Go heap in use (live and not yet swept
// objects plus unused heap spans) while an operation runs. bbolt's
// memory-mapped pages are not heap and are not counted.
type heapSampler struct {
	stop chan struct{}
	done chan struct{}
	peak atomic.Uint64
}

func startHeapSampler() *heapSampler {
	h := &heapSampler{stop: make(chan struct{}), done: make(chan struct{})}
	samples := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}, {Name: "/memory/classes/heap/unused:bytes"}}
	read := func() {
		metrics.Read(samples)
		if v := samples[0].Value.Uint64() + samples[1].Value.Uint64(); v > h.peak.Load() {
			h.peak.Store(v)
		}
	}
	go func() {
		defer close(h.done)
		t := time.NewTicker(5 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-h.stop:
				read()
				return
			case <-t.C:
				read()
			}
		}
	}()
	return h
}

func (h *heapSampler) Stop() uint64 {
	close(h.stop)
	<-h.done
	return h.peak.Load()
}

// BenchmarkImport1M imports the million-row native CSV into an empty store
// through Import (CSV parsing, validation, HMAC, encryption, hash chain,
// batched transactions with fsync), and compares with merely reading the
// same file with encoding/csv, measured in the same run.
// Targets: ≤ 60 s, peak Go heap ≤ 256 MB.
func BenchmarkImport1M(b *testing.B) {
	n := benchSubjects()
	path := benchCSV(b, n)

	// Baseline: reading and splitting the rows, nothing else.
	t0 := time.Now()
	f, _ := os.Open(path)
	cr := csv.NewReader(bufio.NewReaderSize(f, 64<<10))
	cr.ReuseRecord = true
	rows := 0
	for {
		if _, err := cr.Read(); err == io.EOF {
			break
		} else if err != nil {
			b.Fatal(err)
		}
		rows++
	}
	f.Close()
	base := time.Since(t0)

	for i := 0; b.Loop(); i++ {
		s, err := Open(filepath.Join(benchDir(), fmt.Sprintf("import-%d.db", i)), Options{})
		if err != nil {
			b.Fatal(err)
		}
		in, _ := os.Open(path)
		runtime.GC()
		heap := startHeapSampler()
		start := time.Now()
		batch, _ := strconv.Atoi(os.Getenv("PIXELRELAY_BENCH_BATCH")) // 0: DefaultBatchSize
		res, err := s.Import(context.Background(), bufio.NewReaderSize(in, 1<<20), ImportOptions{Actor: "bench", BatchSize: batch})
		took := time.Since(start)
		peak := heap.Stop()
		in.Close()
		if err != nil || res.Imported != n {
			b.Fatalf("import: %+v %v", res, err)
		}
		s.Close()
		os.Remove(filepath.Join(benchDir(), fmt.Sprintf("import-%d.db", i)))
		b.ReportMetric(took.Seconds(), "s/import")
		b.ReportMetric(float64(n)/took.Seconds(), "rows/s")
		b.ReportMetric(float64(peak)/(1<<20), "peak-heap-MB")
		b.ReportMetric(took.Seconds()/base.Seconds(), "x-csv-read")
		b.Logf("%d rows in %.1f s (%.0f rows/s), peak Go heap %.0f MB; reading the CSV alone: %.2f s (%.1fx)",
			n, took.Seconds(), float64(n)/took.Seconds(), float64(peak)/(1<<20), base.Seconds(), took.Seconds()/base.Seconds())
	}
}

// lookupOpened is the store lookupStore built, for TestMain to close.
var lookupOpened atomic.Pointer[Store]

// lookupStore is a store of benchSubjects() subjects, built once per process.
var lookupStore = sync.OnceValues(func() (*Store, error) {
	n := benchSubjects()
	path := filepath.Join(benchDir(), "lookup.db")
	s, err := Open(path, Options{})
	if err != nil {
		return nil, err
	}
	lookupOpened.Store(s)
	csvPath := filepath.Join(benchDir(), fmt.Sprintf("lookup-%d.csv", n))
	f, err := os.Create(csvPath)
	if err != nil {
		return nil, err
	}
	w := bufio.NewWriterSize(f, 1<<20)
	w.WriteString("email,purpose,state,occurred_at,evidence\n")
	for i := range n {
		st := "granted"
		if i%3 == 0 {
			st = "denied"
		}
		fmt.Fprintf(w, "user%d@example.org,open_tracking,%s,2026-05-01T10:00:00Z,ev%d\n", i, st, i)
	}
	w.Flush()
	f.Close()
	in, _ := os.Open(csvPath)
	defer in.Close()
	res, err := s.Import(context.Background(), in, ImportOptions{Actor: "bench", BatchSize: 20000})
	if err != nil || res.Imported != n {
		return nil, fmt.Errorf("building the lookup store: %+v %v", res, err)
	}
	return s, nil
})

// latencies runs op from 64 goroutines (GOMAXPROCS × parallelism) for b.N
// operations in all and returns every operation's latency, sorted.
func latencies(b *testing.B, op func(i int)) []time.Duration {
	par := (64 + runtime.GOMAXPROCS(0) - 1) / runtime.GOMAXPROCS(0)
	b.SetParallelism(par)
	var mu sync.Mutex
	var all []time.Duration
	var seed atomic.Uint64
	b.ResetTimer()
	b.RunParallel(func(pb *testing.PB) {
		r := rand.New(rand.NewPCG(seed.Add(1), 7))
		lat := make([]time.Duration, 0, 1<<16)
		for pb.Next() {
			i := r.IntN(1 << 30)
			t := time.Now()
			op(i)
			lat = append(lat, time.Since(t))
		}
		mu.Lock()
		all = append(all, lat...)
		mu.Unlock()
	})
	b.StopTimer()
	slices.Sort(all)
	return all
}

func pct(sorted []time.Duration, p float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	return sorted[min(len(sorted)-1, int(float64(len(sorted))*p))]
}

// BenchmarkLookup1M: Lookup on a million subjects from 64 concurrent
// readers, with per-call latency percentiles. Target: p99 ≤ 20 µs.
func BenchmarkLookup1M(b *testing.B) {
	s, err := lookupStore()
	if err != nil {
		b.Fatal(err)
	}
	n := benchSubjects()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = "User" + strconv.Itoa(i) + "@Example.org"
	}
	ctx := context.Background()
	var bad atomic.Int64
	lat := latencies(b, func(i int) {
		i %= n
		st, err := s.Lookup(ctx, DefaultTenant, addrs[i], PurposeOpenTracking)
		if err != nil || (st == Granted) != (i%3 != 0) {
			bad.Add(1)
		}
	})
	if bad.Load() > 0 {
		b.Fatalf("%d lookups answered wrongly", bad.Load())
	}
	b.ReportMetric(float64(pct(lat, 0.50).Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(pct(lat, 0.99).Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(pct(lat, 0.999).Nanoseconds())/1e3, "p999-µs")
}

// BenchmarkLookup1MBaseline is what a lookup costs done the obvious way: a
// bbolt read transaction per call (db.View + Get) on the same store, with
// the same key derivation. Run with BenchmarkLookup1M to compare.
func BenchmarkLookup1MBaseline(b *testing.B) {
	s, err := lookupStore()
	if err != nil {
		b.Fatal(err)
	}
	n := benchSubjects()
	addrs := make([]string, n)
	for i := range addrs {
		addrs[i] = "User" + strconv.Itoa(i) + "@Example.org"
	}
	var bad atomic.Int64
	lat := latencies(b, func(i int) {
		i %= n
		buf := new(keyBuf)
		key, err := s.lookupKey(buf, DefaultTenant, addrs[i])
		if err != nil {
			bad.Add(1)
			return
		}
		s.db.View(func(tx *bbolt.Tx) error {
			if v := tx.Bucket(bucketSubjects).Get(key); v == nil {
				bad.Add(1)
			}
			return nil
		})
	})
	if bad.Load() > 0 {
		b.Fatalf("%d lookups failed", bad.Load())
	}
	b.ReportMetric(float64(pct(lat, 0.50).Nanoseconds())/1e3, "p50-µs")
	b.ReportMetric(float64(pct(lat, 0.99).Nanoseconds())/1e3, "p99-µs")
	b.ReportMetric(float64(pct(lat, 0.999).Nanoseconds())/1e3, "p999-µs")
}
