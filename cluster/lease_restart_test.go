package cluster

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"

	"lsmux/cluster/natstest"
	"lsmux/upstream"
)

// TestFleetRestartOnAnEmptyNATSWaitsTheReconnectDelay: the whole fleet
// restarts, and NATS comes back without its storage (in memory, or no
// persistent volume): the lease bucket is empty, as in a brand-new
// cluster, seconds after the old leader's upstream closed. The first
// leader still waits out the reconnect delay.
func TestFleetRestartOnAnEmptyNATSWaitsTheReconnectDelay(t *testing.T) {
	const delay = 3 * time.Second // longer than the TTL, as in production (60 s, 10 s)
	long := func(o *Options) { o.ReconnectDelay = delay }
	ulog := &upstreamLog{}
	old := natstest.Start(t)
	a := startReplica(t, old, "a", ulog, quietLogger(), long)
	waitFor(t, 30*time.Second, "a to lead with its upstream open", func() bool { return a.stream.Leader() && ulog.openNow() == 1 })
	a.stop()
	old.Stop()

	fresh := natstest.Start(t)
	startReplica(t, fresh, "b", ulog, quietLogger(), long)
	waitFor(t, 30*time.Second, "b to open the upstream", func() bool { return len(ulog.spansNow()) == 2 })
	spans := ulog.spansNow()
	gap := spans[1].start.Sub(spans[0].end)
	if gap < delay {
		t.Errorf("the upstream opened again %v after the last one closed, on an empty NATS; want at least the reconnect delay %v", gap, delay)
	}
	t.Logf("fleet restart on an empty NATS: upstream closed, opened again %v later (delay %v)", gap.Round(time.Millisecond), delay)
}

// TestLeaseFromAClockAheadIsBounded: the lease says its holder's upstream
// may not connect for another hour (that replica's clock runs an hour
// ahead). A successor waits a TTL and a reconnect delay at most, not the
// hour, and the log names the likely cause.
func TestLeaseFromAClockAheadIsBounded(t *testing.T) {
	ns := natstest.Start(t)
	ulog := &upstreamLog{}
	a := startReplica(t, ns, "a", ulog, quietLogger())
	waitFor(t, 30*time.Second, "a to lead", func() bool { return a.stream.Leader() && ulog.openNow() == 1 })
	a.stop()

	kv := leaseBucket(t, ns)
	ahead := leaseValue{Replica: "a", NotBefore: time.Now().Add(time.Hour), Released: time.Now().Add(time.Hour)}
	if _, err := kv.Put(t.Context(), leaseKey, ahead.encode()); err != nil {
		t.Fatal(err)
	}
	out := &syncBuffer{}
	logs := logrus.New()
	logs.Out = out
	b := startReplica(t, ns, "b", ulog, logs)
	waitFor(t, 30*time.Second, "b to lead and open the upstream", func() bool { return b.stream.Leader() && ulog.openNow() == 1 })
	if at := b.stream.ClusterStatus().UpstreamAllowedAt; at.After(time.Now().Add(testTTL + testDelay)) {
		t.Errorf("b may connect at %v, %v from now; want no later than a TTL and a delay", at, time.Until(at))
	}
	if s := out.String(); !strings.Contains(s, "replica a's upstream may not connect before") || !strings.Contains(s, "clock is probably ahead") {
		t.Errorf("the log does not name the clock ahead:\n%s", s)
	}
}

// TestClosedReplaysLeaveNoConsumersBehind: a subscriber that flaps
// between its ring and history opens a replay each time. The consumers
// they leave on NATS go within the idle limit, so they cannot pile up
// against an account's consumer limit.
func TestClosedReplaysLeaveNoConsumersBehind(t *testing.T) {
	ns := natstest.Start(t)
	ulog := &upstreamLog{}
	// Long enough that the last replay's consumer is still there when
	// counted right after it, on a busy machine.
	a := startReplica(t, ns, "a", ulog, quietLogger(), func(o *Options) { o.IdleConsumer = 3 * time.Second })
	waitFor(t, 30*time.Second, "a to lead", func() bool { return a.stream.Leader() && ulog.openNow() == 1 })
	for i := range 20 {
		a.stream.Deliver(upstream.Hit{Raw: fmt.Appendf(nil, `{"hitIdHigh":2,"hitIdLow":%d}`, i), ID: upstream.HitID{High: 2, Low: uint64(i)}, HasID: true})
	}
	waitFor(t, 10*time.Second, "20 hits in the hub", func() bool { return a.hub.Stats().Appended == 20 })
	first := a.hub.Stats().Oldest

	js := jetStreamOf(t, ns)
	consumers := func() int {
		st, err := js.Stream(t.Context(), NamesFor("demo").Stream)
		if err != nil {
			t.Fatal(err)
		}
		info, err := st.Info(t.Context())
		if err != nil {
			t.Fatal(err)
		}
		return info.State.Consumers
	}
	base := consumers() // the hub's own
	h := streamHistory{a.stream}
	for range 10 {
		r := h.Replay(first)
		waitFor(t, 10*time.Second, "a record from the replay", func() bool {
			recs, _, err := r.Next()
			if err != nil {
				t.Fatal(err)
			}
			return len(recs) > 0
		})
		r.Close()
	}
	if n := consumers(); n <= base {
		t.Fatalf("%d consumers right after 10 replays, %d before: the test does not see the replays' consumers", n, base)
	}
	waitFor(t, 30*time.Second, "the replays' consumers to go", func() bool { return consumers() == base })
}
