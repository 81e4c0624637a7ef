package rewrite

import (
	"bytes"
	"io"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"golang.org/x/net/html"
)

const benchMessage = "../testdata/bench/newsletter.eml"

// benchInput returns the benchmark newsletter and its decoded HTML part.
func benchInput(b *testing.B) (msg, htmlPart []byte) {
	b.Helper()
	msg, err := os.ReadFile(benchMessage)
	if err != nil {
		b.Fatal(err)
	}
	i := bytes.Index(msg, []byte("Content-Type: text/html"))
	j := bytes.Index(msg[i:], []byte("\r\n\r\n"))
	k := bytes.Index(msg[i:], []byte("\r\n--=_weekly_2026_48--"))
	dec, _ := qpDecode(msg[i+j+4:i+k+2], nil, nil)
	return msg, dec
}

// BenchmarkRewrite is the relay's hot path: one full Strip rewrite of a
// ~115 KB quoted-printable multipart/alternative newsletter with one
// tracker, bytes counted over the whole message.
func BenchmarkRewrite(b *testing.B) {
	msg, _ := benchInput(b)
	e := newEngine(b, Options{})
	d := Decision{Action: Strip, Recipients: []string{"reader@example.fr"}}
	rep, err := e.Rewrite(io.Discard, bytes.NewReader(msg), d)
	if err != nil || len(rep.Trackers) != 1 || !rep.Changed {
		b.Fatalf("the benchmark message must have exactly one tracker, removed: %+v %v", rep, err)
	}
	r := bytes.NewReader(msg)
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		r.Reset(msg)
		if _, err := e.Rewrite(io.Discard, r, d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkRewriteInMemory is BenchmarkRewrite as the relay runs it: the
// message is held in memory and read in place (InMemory).
func BenchmarkRewriteInMemory(b *testing.B) {
	msg, _ := benchInput(b)
	e := newEngine(b, Options{})
	d := Decision{Action: Strip, Recipients: []string{"reader@example.fr"}}
	b.SetBytes(int64(len(msg)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := e.Rewrite(io.Discard, NewInMemory(msg), d); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkTokenize is the baseline: x/net/html's tokenizer alone over the
// same message's decoded HTML, touching Raw() as an identity pass would.
func BenchmarkTokenize(b *testing.B) {
	_, h := benchInput(b)
	b.SetBytes(int64(len(h)))
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		tokenizeOnly(h)
	}
}

func tokenizeOnly(h []byte) int {
	z := html.NewTokenizer(bytes.NewReader(h))
	n := 0
	for z.Next() != html.ErrorToken {
		n += len(z.Raw())
	}
	return n
}

// BenchmarkRewriteVsTokenize runs a full rewrite and a tokenize-only pass
// alternately in the same loop, so both see the same machine load, and
// reports each one's MB/s and their ratio (the target is at least 0.5).
// Absolute MB/s drift between machines and runs; compare the ratio.
//
//	go test ./rewrite -run '^$' -bench RewriteVsTokenize -benchtime 2000x
func BenchmarkRewriteVsTokenize(b *testing.B) {
	msg, h := benchInput(b)
	e := newEngine(b, Options{})
	d := Decision{Action: Strip, Recipients: []string{"reader@example.fr"}}
	r := bytes.NewReader(msg)
	var rw, tk time.Duration
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		t0 := time.Now()
		r.Reset(msg)
		if _, err := e.Rewrite(io.Discard, r, d); err != nil {
			b.Fatal(err)
		}
		t1 := time.Now()
		tokenizeOnly(h)
		rw += t1.Sub(t0)
		tk += time.Since(t1)
	}
	rwMBs := float64(len(msg)) * float64(b.N) / rw.Seconds() / 1e6
	tkMBs := float64(len(h)) * float64(b.N) / tk.Seconds() / 1e6
	b.ReportMetric(rwMBs, "rewrite-MB/s")
	b.ReportMetric(tkMBs, "tokenize-MB/s")
	b.ReportMetric(rwMBs/tkMBs, "ratio")
}

// BenchmarkSrcsetPartialHits rewrites HTML made of n images whose srcset
// has one tracker candidate and one content candidate. The cost per image
// (ns/img) must stay flat as n grows: each partly tracked srcset is
// handled in time proportional to its own candidates, not to the part.
func BenchmarkSrcsetPartialHits(b *testing.B) {
	const img = `<img srcset="https://x.list-manage.com/track/open.php?u=1 1x, https://cdn.example/a.png 2x">` + "\r\n"
	e := newEngine(b, Options{})
	for _, n := range []int{1000, 4000, 16000} {
		b.Run(strconv.Itoa(n), func(b *testing.B) {
			msg := []byte(htmlMessage("7bit", strings.Repeat(img, n)))
			rep, err := e.Rewrite(io.Discard, bytes.NewReader(msg), Decision{Action: Strip})
			if err != nil || len(rep.Trackers) != 1 || !rep.Changed {
				b.Fatalf("want the one tracker URL removed: %+v %v", rep, err)
			}
			r := bytes.NewReader(msg)
			b.SetBytes(int64(len(msg)))
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				r.Reset(msg)
				if _, err := e.Rewrite(io.Discard, r, Decision{Action: Strip}); err != nil {
					b.Fatal(err)
				}
			}
			b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*n), "ns/img")
		})
	}
}

// BenchmarkQPDecode decodes the benchmark newsletter's quoted-printable
// HTML part, dense with "=3D" and soft breaks, as every rewrite does.
func BenchmarkQPDecode(b *testing.B) {
	msg, _ := benchInput(b)
	i := bytes.Index(msg, []byte("Content-Type: text/html"))
	j := bytes.Index(msg[i:], []byte("\r\n\r\n"))
	k := bytes.Index(msg[i:], []byte("\r\n--=_weekly_2026_48--"))
	enc := msg[i+j+4 : i+k+2]
	var dec []byte
	var lines []qpLine
	b.SetBytes(int64(len(enc)))
	b.ReportAllocs()
	for b.Loop() {
		dec, lines = qpDecode(enc, dec[:0], lines[:0])
	}
}

// BenchmarkClassify judges every image URL of the benchmark newsletter
// (48 CDN images, none a tracker) for one recipient, as each rewrite does.
func BenchmarkClassify(b *testing.B) {
	_, dec := benchInput(b)
	e := newEngine(b, Options{})
	var s htmlScan
	s.reset(dec)
	s.run(0, len(dec))
	m := &msgState{e: e, aggIdx: map[string]int{}}
	m.aggregate(&s)
	rn := newRecipientNeedles([]string{"reader@example.fr"})
	b.ReportAllocs()
	for b.Loop() {
		for i := range m.aggs {
			e.classify(&m.aggs[i], rn)
		}
	}
	b.ReportMetric(float64(b.Elapsed().Nanoseconds())/float64(b.N*len(m.aggs)), "ns/url")
}
