package main

import (
	"fmt"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"lsmux/cluster/natstest"
	"lsmux/metrics"
	"lsmux/upstream/simulator"

	"github.com/gorilla/websocket"
)

// Cluster settings for tests: short, through the ordinary flags. A leader
// that cannot renew closes its upstream after 1.5 s; a follower takes over
// 2 s after it last saw a renewal, and connects 1 s later.
const (
	testLeaseTTL       = 2 * time.Second
	testReconnectDelay = time.Second
	// simulatorLag: the simulator notes a connection's end when its
	// handler returns, a moment after the client closed it, so the gap it
	// shows between two connections is a little shorter than the real one.
	simulatorLag = 100 * time.Millisecond
)

func startReplica(t *testing.T, sim *simulator.Server, natsURL, name string, extra ...string) *running {
	t.Helper()
	return startApp(t, sim, append([]string{"-nats-url", natsURL, "-replica-name", name, "-lease-ttl", testLeaseTTL.String(),
		"-reconnect-delay", testReconnectDelay.String(), "-reconnect-max-delay", "2s", "-nats-retry-wait", "100ms", "-log-level", "info"}, extra...)...)
}

// upstreamOpens returns the simulator's accepted stream connections.
func upstreamOpens(sim *simulator.Server) []simulator.Attempt {
	var out []simulator.Attempt
	for _, a := range sim.Attempts() {
		if a.Status == http.StatusOK {
			out = append(out, a)
		}
	}
	return out
}

// checkNoOverlap is the simulator's witness that two upstream connections
// were never open at once, and that none was refused as one too many.
func checkNoOverlap(t *testing.T, sim *simulator.Server) {
	t.Helper()
	checkNoOverlapSeenByReplicas(t, sim, nil)
}

// checkSameStream verifies what subscribers on different replicas got: no
// gap notices, contiguous sequence numbers, no hit twice, and the same
// hits under the same numbers on every replica.
func checkSameStream(t *testing.T, subs map[string][]got) {
	t.Helper()
	bySeq := map[uint64]uint64{}
	for name, msgs := range subs {
		seen := map[uint64]bool{}
		for i, m := range msgs {
			if m.Type != "hit" {
				t.Errorf("%s: message %d is a %s notice (%d..%d)", name, i, m.Type, m.From, m.To)
				continue
			}
			if i > 0 && m.Seq != msgs[i-1].Seq+1 {
				t.Errorf("%s: seq %d follows %d", name, m.Seq, msgs[i-1].Seq)
			}
			if seen[m.Sum] {
				t.Errorf("%s: hit at seq %d delivered twice", name, m.Seq)
			}
			seen[m.Sum] = true
			if sum, ok := bySeq[m.Seq]; ok && sum != m.Sum {
				t.Errorf("%s: seq %d is a different hit than on another replica", name, m.Seq)
			}
			bySeq[m.Seq] = m.Sum
		}
	}
}

// hasAll reports whether msgs hold every hit in want.
func hasAll(msgs []got, want [][]byte) bool { return countMissing(msgs, want) == 0 }

// countMissing counts the hits of want that msgs lack.
func countMissing(msgs []got, want [][]byte) int {
	have := make(map[uint64]bool, len(msgs))
	for _, m := range msgs {
		have[m.Sum] = true
	}
	n := 0
	for _, h := range want {
		if !have[hashHit(h)] {
			n++
		}
	}
	return n
}

// TestClusterSurvivesNATSRestartAndPartition runs three replicas in this
// process (so the race detector watches the cluster code) against one
// simulator and one embedded NATS server, each replica reaching NATS
// through its own proxy:
//   - one upstream connection; every replica numbers every hit the same;
//   - NATS restarts: hits keep flowing, the upstream is never reconnected;
//   - the leader is cut off from NATS: it closes its upstream before the
//     lease can expire, another replica connects, and the simulator never
//     sees two connections at once; after the cut heals, the hits the cut
//     leader read meanwhile reach every replica;
//   - the leader shuts down: it releases the lease, and the next leader
//     connects after the reconnect delay without waiting for the TTL.
func TestClusterSurvivesNATSRestartAndPartition(t *testing.T) {
	sim := newSim(t, 200)
	ns := natstest.Start(t)
	var reps []*running
	var proxies []*natstest.Proxy
	var roots []string
	for i := range 3 {
		p := natstest.NewProxy(t, strings.TrimPrefix(ns.URL(), "nats://"))
		r := startReplica(t, sim, p.URL(), fmt.Sprintf("r%d", i))
		proxies, reps, roots = append(proxies, p), append(reps, r), append(roots, r.root)
	}
	waitFor(t, 15*time.Second, "three ready replicas, one leader, one upstream connection", func() bool {
		for _, r := range roots {
			if readyStatus(r) != http.StatusOK {
				return false
			}
		}
		return len(leaders(roots)) == 1 && sim.Active("demo") == 1
	})
	var bases []string
	for _, r := range reps {
		bases = append(bases, r.base)
	}
	subs := subscribeFromOldest(t, bases)
	snapshot := func() map[string][]got {
		out := map[string][]got{}
		for i, c := range subs {
			out[fmt.Sprintf("r%d", i)] = c.hits()
		}
		return out
	}
	waitAll := func(what string, want [][]byte, which ...int) {
		t.Helper()
		deadline := time.Now().Add(20 * time.Second)
		for {
			missing := map[int]int{}
			for _, i := range which {
				if n := countMissing(subs[i].hits(), want); n > 0 {
					missing[i] = n
				}
			}
			if len(missing) == 0 {
				return
			}
			if time.Now().After(deadline) {
				for i, n := range missing {
					v, err := clusterStatus(roots[i])
					t.Logf("replica %d misses %d of %d hits; it has %d messages; cluster status %+v %v", i, n, len(want), len(subs[i].hits()), v, err)
				}
				t.Fatalf("timed out waiting for %s", what)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor(t, 20*time.Second, "50 hits on every replica", func() bool {
		return len(subs[0].hits()) >= 50 && len(subs[1].hits()) >= 50 && len(subs[2].hits()) >= 50
	})

	// NATS restarts.
	leader := oneLeader(t, roots)
	opensBefore := len(upstreamOpens(sim))
	away := ns.Restart()
	before := sim.SentHits("demo")
	waitFor(t, 20*time.Second, "every replica back on NATS", func() bool {
		for _, r := range roots {
			if v, err := clusterStatus(r); err != nil || v.NATS != "connected" {
				return false
			}
		}
		return true
	})
	waitAll("hits from before and after the NATS restart on every replica", before, 0, 1, 2)
	after := sim.SentHits("demo")
	waitAll("hits sent after the restart", after, 0, 1, 2)
	if n := len(upstreamOpens(sim)); n != opensBefore {
		t.Fatalf("NATS restart (away %v): %d upstream connections, was %d: the upstream was reconnected because of NATS", away, n, opensBefore)
	}
	if now := leaders(roots); len(now) != 1 || now[0] != leader {
		t.Fatalf("after the NATS restart the leaders are %v, was [%d]", now, leader)
	}
	// Cluster metrics: the leader says so, every replica counts what it read.
	for i, r := range roots {
		_, text := get(t, r+"/metrics", nil)
		for _, name := range metrics.Names {
			if strings.HasPrefix(name, "lsmux_cluster_") && !strings.Contains(text, name+"{") {
				t.Errorf("replica %d does not expose %s", i, name)
			}
		}
		want := 0.0
		if i == leader {
			want = 1
		}
		if v := metricValue(t, text, `lsmux_cluster_leader{stream="demo"}`); v != want {
			t.Errorf("replica %d: lsmux_cluster_leader = %v, want %v", i, v, want)
		}
		if v := metricValue(t, text, `lsmux_cluster_consumed_seq{stream="demo"}`); v < float64(len(after)) {
			t.Errorf("replica %d: lsmux_cluster_consumed_seq = %v, want at least %d", i, v, len(after))
		}
	}
	t.Logf("NATS away %v: upstream kept, %d hits on every replica", away.Round(time.Millisecond), len(after))

	// The leader is cut off from NATS. When it closes its upstream, hits the
	// simulator already wrote into that connection can die in the socket
	// buffers; Live Stream's backfill repeats the last ones on the next
	// connection (as the simulator does here), and JetStream drops those
	// the old leader did publish. The hits the old leader read before it
	// closed (about 300) are far more than the backfill: they reach the
	// others only if it publishes them when the cut heals.
	sim.BackfillDuplicates(50)
	cutAt := time.Now()
	proxies[leader].Cut()
	// Until it closes its upstream (3/4 TTL), it reads hits nobody else
	// gets: it asks not to get new subscribers.
	waitFor(t, testLeaseTTL*3/4, "the cut-off leader to report not ready", func() bool { return readyStatus(roots[leader]) == http.StatusServiceUnavailable })
	waitFor(t, 20*time.Second, "another replica to lead and connect upstream", func() bool {
		now := leaders(roots)
		return len(now) == 1 && now[0] != leader && len(upstreamOpens(sim)) >= opensBefore+1 && sim.Active("demo") == 1
	})
	opens := upstreamOpens(sim)
	old, cur := opens[len(opens)-2], opens[len(opens)-1]
	closedAfter := old.End.Sub(cutAt)
	handover := cur.Start.Sub(old.End)
	// The leader closes 1.5 s after its last renewal, at most 2 s after the
	// cut (the simulator may notice up to ~0.5 s late).
	if closedAfter > testLeaseTTL+time.Second {
		t.Errorf("the cut-off leader's upstream closed %v after the cut; want under 3/4 of the lease TTL (%v) plus slack", closedAfter, testLeaseTTL)
	}
	if handover < testReconnectDelay-simulatorLag {
		t.Errorf("the new leader connected %v after the old connection closed; want at least the reconnect delay %v", handover, testReconnectDelay)
	}
	checkNoOverlap(t, sim)
	if code := readyStatus(roots[leader]); code != http.StatusOK {
		t.Errorf("the cut-off replica (now a follower) answers /readyz %d; it should keep serving what it has", code)
	}
	t.Logf("partition: old upstream closed %v after the cut, new one opened %v later", closedAfter.Round(time.Millisecond), handover.Round(time.Millisecond))

	proxies[leader].Heal()
	healed := sim.SentHits("demo")
	waitAll("every hit, including those the cut-off leader read before it closed, on every replica", healed, 0, 1, 2)
	if v, err := clusterStatus(roots[leader]); err != nil || v.Role != "follower" {
		t.Fatalf("the healed replica: %+v, %v; want a follower", v, err)
	}
	checkSameStream(t, snapshot())
	checkNoOverlap(t, sim)

	// The leader shuts down and releases the lease. (Status is asked of
	// every replica; on a busy machine one may be slow to answer.)
	second := oneLeader(t, roots)
	// Hits in flight when it closes, as above; lsmux's reader can be
	// seconds behind on a busy machine under -race, so 500 (2.5 s).
	sim.BackfillDuplicates(500)
	reps[second].stop()
	<-reps[second].done
	waitFor(t, 20*time.Second, "a third leader to connect upstream", func() bool {
		return len(upstreamOpens(sim)) >= opensBefore+2 && sim.Active("demo") == 1
	})
	opens = upstreamOpens(sim)
	released, third := opens[len(opens)-2], opens[len(opens)-1]
	gap := third.Start.Sub(released.End)
	if gap < testReconnectDelay-simulatorLag || gap >= 2*(testLeaseTTL+testReconnectDelay) {
		t.Errorf("after a release the next leader connected %v after the old connection closed; want at least the reconnect delay (%v), and well under a lease expiry", gap, testReconnectDelay)
	}
	// It took the lease because it was released, not because it expired
	// (on a busy machine the two can be close in time; the log says which).
	took := false
	for _, i := range []int{0, 1, 2} {
		if i != second && strings.Contains(reps[i].logs.String(), "released by replica") {
			took = true
		}
	}
	oldLog := reps[second].logs.String()
	switch {
	case took:
	case strings.Contains(oldLog, "another replica took the lease"):
		// On a busy machine the leader's last renewals can be late enough
		// that a follower saw the lease expire before the release was
		// written: the takeover by expiry is then the right one.
		t.Logf("the lease expired before the leader could release it (a busy machine); its log:\n%s", tail(oldLog, 5))
	default:
		t.Errorf("no replica took the lease as released; it waited for the lease to expire. The old leader's log:\n%s", tail(oldLog, 10))
	}
	final := sim.SentHits("demo")
	var alive []int
	for i := range reps {
		if i != second {
			alive = append(alive, i)
		}
	}
	waitAll("every hit on the remaining replicas", final, alive...)
	checkSameStream(t, snapshot())
	checkNoOverlap(t, sim)
	if slices.ContainsFunc(alive, func(i int) bool { v, _ := clusterStatus(roots[i]); return v.Publish.Dropped > 0 }) {
		t.Error("a replica dropped hits it could not publish")
	}
	t.Logf("release: next upstream opened %v after the old one closed; %d hits, %d upstream connections, never two at once", gap.Round(time.Millisecond), len(final), len(opens))
}

// TestDeepResumeOnAFollowerReadsJetStream: in cluster mode with rings of
// 2,000 hits, a subscriber on a replica that does not lead resumes 50,000
// hits back and gets all of them, in order, without a gap notice, read
// from the cluster's JetStream.
func TestDeepResumeOnAFollowerReadsJetStream(t *testing.T) {
	if testing.Short() {
		t.Skip("stores 55,000 hits in JetStream")
	}
	sim := newSim(t, 10000)
	ns := natstest.Start(t)
	var roots []string
	var reps []*running
	for i := range 2 {
		r := startReplica(t, sim, ns.URL(), fmt.Sprintf("r%d", i), "-buffer-hits", "2000", "-replay-rate", "0")
		reps, roots = append(reps, r), append(roots, r.root)
	}
	waitFor(t, 30*time.Second, "one leader streaming", func() bool { return len(leaders(roots)) == 1 && sim.Active("demo") == 1 })
	follower := 1 - oneLeader(t, roots)
	const back = 50_000
	var ring struct{ OldestSeq, NewestSeq uint64 }
	waitFor(t, 120*time.Second, "55,000 hits on the follower", func() bool {
		var st struct {
			Streams []struct {
				Ring    struct{ OldestSeq, NewestSeq uint64 }
				History struct{ FirstSeq, LastSeq uint64 }
			}
		}
		if getJSON(roots[follower]+"/v1/status", &st) != nil || len(st.Streams) == 0 {
			return false
		}
		h := st.Streams[0].History
		ring = st.Streams[0].Ring
		return h.LastSeq > h.FirstSeq && h.LastSeq-h.FirstSeq >= back+5000 && ring.NewestSeq >= h.FirstSeq+back+5000
	})
	if ring.NewestSeq-ring.OldestSeq >= 2000 {
		t.Fatalf("the follower's ring holds %d..%d: more than 2,000", ring.OldestSeq, ring.NewestSeq)
	}
	from := ring.NewestSeq - back + 1
	deep, _, err := websocket.DefaultDialer.Dial(strings.Replace(reps[follower].base, "http", "ws", 1)+"/ws?from="+strconv.FormatUint(from, 10), nil)
	if err != nil {
		t.Fatal(err)
	}
	defer deep.Close()
	start := time.Now()
	for want := from; want < from+back; want++ {
		deep.SetReadDeadline(time.Now().Add(20 * time.Second))
		_, b, err := deep.ReadMessage()
		if err != nil {
			t.Fatalf("the deep resume after %d of %d hits: %v", want-from, back, err)
		}
		if seq, ok := frameSeq(b); !ok || seq != want {
			t.Fatalf("after %d hits: %.200s; want hit %d", want-from, b, want)
		}
	}
	t.Logf("cluster deep resume on a follower: %d hits from JetStream in %v, ring 2,000", back, time.Since(start).Round(time.Millisecond))
}
