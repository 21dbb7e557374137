package upstream

import (
	"bytes"
	"testing"

	"github.com/klauspost/compress/gzip"

	"lsmux/upstream/simulator"
)

// BenchmarkIngest measures the upstream hot path on realistic hits:
// gunzip + record split + JSON object check + hit id scan + dedup + copy.
// It reports decompressed MB/s (SetBytes) and hits/s.
func BenchmarkIngest(b *testing.B) {
	sim, err := simulator.New(simulator.Options{Rate: 1})
	if err != nil {
		b.Fatal(err)
	}
	const n = 20000
	var plain bytes.Buffer
	for k := range uint64(n) {
		plain.Write(sim.Hit("demo", k))
		plain.WriteString("\r\n")
	}
	sim.Close()
	var gz bytes.Buffer
	zw, _ := gzip.NewWriterLevel(&gz, gzip.DefaultCompression)
	zw.Write(plain.Bytes())
	zw.Close()

	delivered := 0
	p := &Pool{}
	sink := countSink{&delivered}
	b.SetBytes(int64(plain.Len()))
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		b.StopTimer()
		p.dedup = NewDedup(0) // every pass is new hits, as on the wire
		b.StartTimer()
		s := newSlot(p, 0)
		if err := s.ingest(bytes.NewReader(gz.Bytes()), true, sink); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	if delivered != n*b.N {
		b.Fatalf("delivered %d, want %d", delivered, n*b.N)
	}
	b.ReportMetric(float64(n*b.N)/b.Elapsed().Seconds(), "hits/s")
	b.ReportMetric(float64(plain.Len())/n, "bytes/hit")
}

// countSink counts what the benchmark's ingest hands on.
type countSink struct{ n *int }

func (c countSink) Deliver(Hit) { *c.n++ }
