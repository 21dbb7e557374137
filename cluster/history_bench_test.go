package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"lsmux/fanout"
	"lsmux/upstream"
)

// soloStream opens a single lsmux's store in dir with one running
// stream, ready and upstream allowed at once.
func soloStream(tb testing.TB, dir string, hubOpts fanout.Options, o Options) (*Stream, func()) {
	tb.Helper()
	e, err := OpenEmbedded(EmbeddedOptions{Dir: dir, Logger: quietLogger()})
	if err != nil {
		tb.Fatal(err)
	}
	if o.Logger == nil {
		o.Logger = quietLogger()
	}
	if o.AckTimeout == 0 {
		o.AckTimeout = 2 * time.Second
	}
	node, err := e.Connect(o)
	if err != nil {
		tb.Fatal(err)
	}
	pool := &fakePool{name: "solo", log: &upstreamLog{}}
	s := node.NewStream("bench", hubOpts, pool)
	if err := s.Open(context.Background()); err != nil {
		tb.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	deadline := time.Now().Add(30 * time.Second)
	for s.ServeErr() != nil || !s.Leader() {
		if time.Now().After(deadline) {
			tb.Fatal("not ready and running after 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	return s, func() { cancel(); <-done; node.Close(); e.Close() }
}

// benchHit is a hit of about Live Stream's size (~1.5 KB).
func benchHit(i uint64, pad []byte) upstream.Hit {
	raw := fmt.Appendf(nil, `{"hitIdHigh":7,"hitIdLow":%d,"pad":"%s"}`, i, pad)
	return upstream.Hit{Raw: raw, ID: upstream.HitID{High: 7, Low: i}, HasID: true, Received: time.Now()}
}

func benchPad() []byte {
	pad := make([]byte, 1400)
	for i := range pad {
		pad[i] = 'x'
	}
	return pad
}

// BenchmarkIngestWithHistory measures a single lsmux with a data dir: hits
// handed to the stream's sink, stored in the embedded JetStream (file
// storage, hit ids as message ids) and appended to the hub from the
// store's acknowledgements. One iteration is one ~1.5 KB hit. Run with
// -cpu 1 for the figure on one core.
func BenchmarkIngestWithHistory(b *testing.B) {
	s, stop := soloStream(b, b.TempDir(), fanout.Options{}, Options{BufferBytes: 4 << 30})
	defer stop()
	offerHits(b, s, 5*time.Minute)
	if st := s.HistoryStatus(); st.StoreErrors > 0 || st.Failing {
		b.Fatalf("the store failed during the benchmark: %+v", st)
	}
}

// offerHits hands the stream's sink one ~1.5 KB hit per iteration, as fast
// as the loop goes, waits (up to within) until the hub has them all, and
// reports hits/s.
func offerHits(b *testing.B, s *Stream, within time.Duration) {
	hub := s.Hub()
	pad := benchPad()
	start := hub.Stats().Appended
	b.SetBytes(int64(len(pad) + 60))
	b.ResetTimer()
	i := uint64(0)
	for b.Loop() {
		i++
		s.Deliver(benchHit(i, pad))
	}
	deadline := time.Now().Add(within)
	for hub.Stats().Appended-start < i {
		if time.Now().After(deadline) {
			b.Fatalf("only %d of %d hits reached the hub", hub.Stats().Appended-start, i)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "hits/s")
}

// BenchmarkReplayFromHistory measures one subscriber reading history
// older than its ring (1,000 hits) from the embedded JetStream, through
// Poll as a session does. One iteration is one hit replayed.
func BenchmarkReplayFromHistory(b *testing.B) {
	s, stop := soloStream(b, b.TempDir(), fanout.Options{MaxHits: 1000}, Options{BufferBytes: 4 << 30})
	defer stop()
	hub := s.Hub()
	pad := benchPad()
	const stored = 200_000
	for i := uint64(1); i <= stored; i++ {
		s.Deliver(benchHit(i, pad))
	}
	for hub.Stats().Appended < stored {
		time.Sleep(time.Millisecond)
	}
	first := hub.Stats().Newest - stored + 1
	size := func(e *fanout.Entry) int { return len(e.WSFrame()) }
	b.SetBytes(int64(len(pad) + 60))
	b.ResetTimer()
	var sub *fanout.Subscriber
	left := 0 // hits the current subscriber has still to replay
	for n := 0; n < b.N; {
		if left == 0 {
			if sub != nil {
				sub.Close()
			}
			var err error
			if sub, err = hub.Open(first, fanout.Info{Transport: "ws"}, nil, fanout.Limits{}); err != nil {
				b.Fatal(err)
			}
			left = stored - 1000 // the ring holds the rest
		}
		es, gap, wake, err := sub.Poll(context.Background(), size, 1<<20)
		if err != nil || gap != nil {
			b.Fatalf("poll: %v, gap %v", err, gap)
		}
		n += len(es)
		left = max(0, left-len(es))
		if len(es) == 0 && wake != nil {
			<-wake
		}
	}
	b.StopTimer()
	sub.Close()
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "hits/s")
}
