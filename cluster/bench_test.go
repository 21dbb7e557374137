package cluster

import (
	"context"
	"fmt"
	"testing"
	"time"

	"lsmux/cluster/natstest"
	"lsmux/fanout"
	"lsmux/upstream"
)

// BenchmarkLeaderToHub measures cluster mode's extra hop: hits handed to
// the leader's sink, published to JetStream (file storage, message ids),
// read back by the ordered consumer and appended to the hub. One
// iteration is one ~1.5 KB hit; hits/s is the figure to compare with
// Live Stream's thousands per second.
func BenchmarkLeaderToHub(b *testing.B) {
	ns := natstest.Start(b)
	node, err := Connect(Options{URL: ns.URL(), Replica: "bench", LeaseTTL: time.Second, BufferBytes: 4 << 30, Logger: quietLogger()}) // the loop offers hits far faster than Live Stream would
	if err != nil {
		b.Fatal(err)
	}
	defer node.Close()
	pool := &fakePool{name: "bench", log: &upstreamLog{}}
	s := node.NewStream("bench", fanout.Options{}, pool)
	hub := s.Hub()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	defer func() { cancel(); <-done }()
	deadline := time.Now().Add(10 * time.Second)
	for s.ServeErr() != nil || !s.Leader() {
		if time.Now().After(deadline) {
			b.Fatal("not ready and leading after 10s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	pad := make([]byte, 1400)
	for i := range pad {
		pad[i] = 'x'
	}
	start := hub.Stats().Appended
	b.SetBytes(int64(len(pad) + 60))
	b.ResetTimer()
	i := uint64(0)
	for b.Loop() {
		i++
		raw := fmt.Appendf(nil, `{"hitIdHigh":7,"hitIdLow":%d,"pad":"%s"}`, i, pad)
		s.Deliver(upstream.Hit{Raw: raw, ID: upstream.HitID{High: 7, Low: i}, HasID: true})
	}
	for hub.Stats().Appended-start < i {
		if time.Now().After(deadline.Add(time.Minute)) {
			b.Fatalf("only %d of %d hits reached the hub", hub.Stats().Appended-start, i)
		}
		time.Sleep(time.Millisecond)
	}
	b.StopTimer()
	b.ReportMetric(float64(i)/b.Elapsed().Seconds(), "hits/s")
}
