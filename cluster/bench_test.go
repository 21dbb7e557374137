package cluster

import (
	"context"
	"testing"
	"time"

	"lsmux/cluster/natstest"
	"lsmux/fanout"
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
	offerHits(b, s, time.Minute)
}
