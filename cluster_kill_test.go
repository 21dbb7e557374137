package main

import (
	"fmt"
	"net/http"
	"os/exec"
	"strconv"
	"syscall"
	"testing"
	"time"

	"lsmux/cluster/natstest"
	"lsmux/proxy/proxytest"
)

// replicaProc is an lsmux replica running as its own process, so a test
// can kill it the way a node failure does (SIGKILL: no release, sockets
// closed by the kernel).
type replicaProc struct {
	cmd  *exec.Cmd
	root string
	base string
	out  *syncBuf
	done chan struct{}
}

func startReplicaProc(t *testing.T, bin, streamURL, tokenURL, clientID, secret, natsURL, name string) *replicaProc {
	t.Helper()
	cmd := exec.Command(bin, "serve", "-listen", "127.0.0.1:0", "-stream-url", streamURL, "-token-url", tokenURL,
		"-client-id", clientID, "-client-secret", secret, "-nats-url", natsURL, "-replica-name", name,
		"-lease-ttl", testLeaseTTL.String(), "-reconnect-delay", testReconnectDelay.String(), "-reconnect-max-delay", "2s",
		"-nats-retry-wait", "100ms", "-shutdown-timeout", "2s", "-log-format", "json", "-log-level", "info")
	p := &replicaProc{cmd: cmd, out: &syncBuf{}, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = p.out, p.out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-p.done
			t.Errorf("replica %s did not stop on SIGTERM", name)
		}
		if t.Failed() {
			t.Logf("replica %s output:\n%s", name, p.out.String())
		}
	})
	addr := childAddr(t, p.out)
	p.root, p.base = "http://"+addr, "http://"+addr+"/v1/streams/demo"
	return p
}

// TestClusterLeaderKilled is issue 9's failover, with real processes:
// three replicas share one upstream connection and number every hit the
// same; the leader is killed (SIGKILL); after the lease expires and the
// reconnect delay passes, exactly one new upstream connection opens; the
// Live Stream backfill it gets is dropped by JetStream's duplicate window;
// and a browser that was reading one replica resumes on another with
// Last-Event-ID without missing or repeating a hit.
func TestClusterLeaderKilled(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and runs three replicas")
	}
	bin := lsmuxBinary(t)
	sim := newSim(t, 200)
	ns := natstest.Start(t)
	var reps []*replicaProc
	var roots []string
	for i := range 3 {
		r := startReplicaProc(t, bin, sim.StreamURL("demo"), sim.TokenURL(), sim.ClientID(), sim.ClientSecret(), ns.URL(), fmt.Sprintf("r%d", i))
		reps, roots = append(reps, r), append(roots, r.root)
	}
	waitFor(t, 30*time.Second, "three ready replicas, one leader, one upstream connection", func() bool {
		for _, r := range roots {
			if readyStatus(r) != http.StatusOK {
				return false
			}
		}
		return len(leaders(roots)) == 1 && sim.Active("demo") == 1
	})
	leader := oneLeader(t, roots)
	var followers []int
	for i := range reps {
		if i != leader {
			followers = append(followers, i)
		}
	}
	var bases []string
	for _, r := range reps {
		bases = append(bases, r.base)
	}
	subs := subscribeFromOldest(t, bases)
	// A browser reads the first follower over SSE.
	browser, err := proxytest.DialSSE(reps[followers[0]].base+"/sse?from=oldest", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(browser.Close)
	read := collect(browser.Msgs)
	waitFor(t, 20*time.Second, "100 hits on every replica", func() bool {
		return len(subs[0].hits()) >= 100 && len(subs[1].hits()) >= 100 && len(subs[2].hits()) >= 100 && len(read.hits()) >= 100
	})

	// Live Stream's backfill after the failover will repeat the last 100
	// hits; only JetStream's duplicate window can catch them, since the new
	// leader's own dedup has never seen them.
	sim.BackfillDuplicates(100)
	sentBefore := len(sim.SentHits("demo"))
	killedAt := time.Now()
	reps[leader].cmd.Process.Kill()
	<-reps[leader].done
	followerRoots := []string{roots[followers[0]], roots[followers[1]]}
	waitFor(t, 30*time.Second, "a new leader with a new upstream connection", func() bool {
		return len(leaders(followerRoots)) == 1 && len(upstreamOpens(sim)) == 2 && sim.Active("demo") == 1
	})
	opens := upstreamOpens(sim)
	failover := opens[1].Start.Sub(killedAt)
	// The last renewal was at most a quarter TTL before the kill; the new
	// leader counts TTL + delay from when it saw that renewal.
	if earliest := testLeaseTTL + testReconnectDelay - testLeaseTTL/4; failover < earliest {
		t.Errorf("the new upstream connection opened %v after the kill; want at least %v (lease expiry + reconnect delay)", failover, earliest)
	}
	if failover > 2*(testLeaseTTL+testReconnectDelay) {
		t.Errorf("failover took %v; want about the lease TTL + reconnect delay (%v)", failover, testLeaseTTL+testReconnectDelay)
	}
	checkNoOverlap(t, sim)

	// The browser reconnects to the other follower with Last-Event-ID.
	browser.Close()
	waitFor(t, 5*time.Second, "the browser's stream to end", read.ended)
	last := read.hits()[len(read.hits())-1].Seq
	h := http.Header{}
	h.Set("Last-Event-ID", strconv.FormatUint(last, 10))
	resumed, err := proxytest.DialSSE(reps[followers[1]].base+"/sse", h)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(resumed.Close)
	again := collect(resumed.Msgs)

	waitFor(t, 20*time.Second, "the new leader to read 200 more hits", func() bool { return len(sim.SentHits("demo")) >= sentBefore+200 })
	sent := sim.SentHits("demo")
	waitFor(t, 20*time.Second, "every hit the simulator sent on both surviving replicas", func() bool {
		return hasAll(subs[followers[0]].hits(), sent) && hasAll(subs[followers[1]].hits(), sent)
	})
	waitFor(t, 10*time.Second, "the resumed browser to catch up", func() bool {
		h := again.hits()
		return len(h) > 0 && h[len(h)-1].Seq >= subs[followers[1]].hits()[len(subs[followers[1]].hits())-1].Seq
	})
	all := map[string][]got{"killed leader": subs[leader].hits(), "follower A": subs[followers[0]].hits(),
		"follower B": subs[followers[1]].hits(), "browser then resumed": append(read.hits(), again.hits()...)}
	checkSameStream(t, all)
	if first := again.hits()[0]; first.Type != "hit" || first.Seq != last+1 {
		t.Errorf("resumed on another replica after seq %d, first message %+v; want the hit at %d", last, first, last+1)
	}
	v, err := clusterStatus(followerRoots[oneLeader(t, followerRoots)])
	if err != nil {
		t.Fatal(err)
	}
	if v.Publish.Duplicates == 0 {
		t.Errorf("the new leader published no duplicates; the simulator's backfill should have repeated 100 hits: %+v", v.Publish)
	}
	t.Logf("leader killed: new upstream connection %v later; %d hits, %d backfilled duplicates dropped by JetStream; browser resumed at seq %d on another replica",
		failover.Round(time.Millisecond), len(sent), v.Publish.Duplicates, last+1)
}

// TestClusterFleetRestart: the whole fleet restarts at once, after a clean
// stop and after SIGKILL, and the replicas that come up keep the 60-second
// rule through the lease: the first upstream attempt of the new fleet
// comes no sooner than the reconnect delay after the old fleet's
// connection ended (after a kill, the lease it left must also expire).
func TestClusterFleetRestart(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and restarts two replicas twice")
	}
	bin := lsmuxBinary(t)
	for _, stop := range []struct {
		name   string
		signal syscall.Signal
		// earliest is the least time from the old fleet's end to the new
		// fleet's first attempt.
		earliest time.Duration
	}{
		{"SIGTERM", syscall.SIGTERM, testReconnectDelay - simulatorLag},
		{"SIGKILL", syscall.SIGKILL, testLeaseTTL + testReconnectDelay - testLeaseTTL/4},
	} {
		t.Run(stop.name, func(t *testing.T) {
			sim := newSim(t, 200)
			ns := natstest.Start(t)
			var old []*replicaProc
			for i := range 2 {
				old = append(old, startReplicaProc(t, bin, sim.StreamURL("demo"), sim.TokenURL(), sim.ClientID(), sim.ClientSecret(), ns.URL(), fmt.Sprintf("old%d", i)))
			}
			waitFor(t, 30*time.Second, "one leader streaming", func() bool {
				return len(leaders([]string{old[0].root, old[1].root})) == 1 && sim.Active("demo") == 1
			})
			for _, r := range old {
				r.cmd.Process.Signal(stop.signal)
			}
			for _, r := range old {
				select {
				case <-r.done:
				case <-time.After(15 * time.Second):
					t.Fatalf("replica did not stop on %s", stop.name)
				}
			}
			stoppedAt := time.Now()
			waitFor(t, 10*time.Second, "the old connection to end", func() bool { return sim.Active("demo") == 0 })
			var roots []string
			for i := range 2 {
				roots = append(roots, startReplicaProc(t, bin, sim.StreamURL("demo"), sim.TokenURL(), sim.ClientID(), sim.ClientSecret(), ns.URL(), fmt.Sprintf("new%d", i)).root)
			}
			waitFor(t, 30*time.Second, "the new fleet's leader streaming", func() bool {
				return len(leaders(roots)) == 1 && len(upstreamOpens(sim)) == 2 && sim.Active("demo") == 1
			})
			opens := upstreamOpens(sim)
			gap := opens[1].Start.Sub(opens[0].End)
			t.Logf("%s of the whole fleet: the new leader connected %v after the old connection ended (reconnect delay %v, lease TTL %v)",
				stop.name, gap.Round(time.Millisecond), testReconnectDelay, testLeaseTTL)
			if gap < stop.earliest {
				t.Errorf("after %s of the whole fleet the new leader connected %v after the old connection ended; want at least %v",
					stop.name, gap, stop.earliest)
			}
			if took := opens[1].Start.Sub(stoppedAt); took > 3*(testLeaseTTL+testReconnectDelay) {
				t.Errorf("the new fleet took %v to connect; want about %v", took, stop.earliest)
			}
			checkNoOverlap(t, sim)
		})
	}
}
