package upstream_test

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"lsmux/internal/testutil"
	"lsmux/upstream"
	"lsmux/upstream/simulator"
)

var waitFor = testutil.WaitFor

// collector is a Sink that keeps every hit.
type collector struct {
	mu   sync.Mutex
	hits [][]byte
}

func (c *collector) Deliver(h upstream.Hit) {
	c.mu.Lock()
	c.hits = append(c.hits, append([]byte(nil), h.Raw...))
	c.mu.Unlock()
}

func (c *collector) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.hits)
}

func (c *collector) snapshot() [][]byte {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([][]byte(nil), c.hits...)
}

type syncBuffer = testutil.SyncBuffer

type rig struct {
	sim  *simulator.Server
	pool *upstream.Pool
	hits *collector
	logs *syncBuffer
	stop func()
}

// fastPolicy keeps the production rules with test-sized delays.
func fastPolicy(delay time.Duration) upstream.Policy {
	return upstream.Policy{Delay: delay, MaxDelay: 4 * delay, AuthRetry: delay / 4, HealthyAfter: 10 * delay, Jitter: 0.1}
}

// start runs a pool against sim with client credentials from the simulator.
func start(t *testing.T, sim *simulator.Server, streamURL string, mod func(*upstream.Config)) *rig {
	t.Helper()
	r := &rig{sim: sim, hits: &collector{}, logs: &syncBuffer{}}
	log := logrus.New()
	log.Out = r.logs
	log.Level = logrus.DebugLevel
	cfg := upstream.Config{
		StreamURL: streamURL,
		ClientID:  sim.ClientID(),
		Tokens:    upstream.NewClientCredentials(sim.TokenURL(), sim.ClientID(), sim.ClientSecret(), "openid,AdobeID", time.Minute, nil),
		Policy:    fastPolicy(200 * time.Millisecond),
		Logger:    log,
	}
	if mod != nil {
		mod(&cfg)
	}
	pool, err := upstream.NewPool(cfg)
	if err != nil {
		t.Fatal(err)
	}
	r.pool = pool
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { pool.Run(ctx, r.hits); close(done) }()
	r.stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("pool.Run did not return within 5s of cancel")
		}
	}
	t.Cleanup(r.stop)
	return r
}

func newSim(t *testing.T, opts simulator.Options) *simulator.Server {
	t.Helper()
	if opts.Rate == 0 {
		opts.Rate = 500
	}
	sim, err := simulator.New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	return sim
}

func (r *rig) streaming() bool { return r.pool.Streaming() }

// sameHits fails unless got holds exactly the hits of want, each once
// (order across partitions is free, bytes are compared exactly).
func sameHits(t *testing.T, got, want [][]byte) {
	t.Helper()
	count := map[string]int{}
	for _, h := range got {
		count[string(h)]++
	}
	missing := 0
	for _, h := range want {
		if count[string(h)] == 0 {
			missing++
			continue
		}
		count[string(h)]--
		if count[string(h)] == 0 {
			delete(count, string(h))
		}
	}
	if missing > 0 || len(count) > 0 {
		t.Fatalf("delivered %d hits, simulator sent %d: %d missing, %d extra or duplicated", len(got), len(want), missing, len(count))
	}
}

// settle pauses the simulator and waits until the client has read every
// hit the simulator flushed, so the two can be compared. Comparing after
// stopping the client would count hits the simulator wrote into a socket
// nobody read any more.
// extra counts hits the client got from elsewhere (injected records).
func (r *rig) settle(t *testing.T, stream string, extra int) {
	t.Helper()
	r.sim.Stall(time.Hour)
	waitFor(t, 5*time.Second, "the client to read what was sent", func() bool {
		return r.hits.count() >= len(r.sim.SentHits(stream))+extra
	})
}
