package cluster

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"
	"go.uber.org/goleak"

	"lsmux/cluster/natstest"
	"lsmux/fanout"
	"lsmux/internal/testutil"
	"lsmux/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

var waitFor = testutil.WaitFor

// upstreamLog stands in for Live Stream's view: which replica's upstream
// was open when. It is the witness that no two overlap.
type upstreamLog struct {
	mu    sync.Mutex
	open  int
	peak  int
	spans []span
}

type span struct {
	replica    string
	start, end time.Time
}

func (l *upstreamLog) spansNow() []span {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]span(nil), l.spans...)
}

func (l *upstreamLog) openNow() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.open
}

// fakePool is an upstream pool that "connects" for as long as Run runs.
type fakePool struct {
	name      string
	log       *upstreamLog
	streaming atomic.Bool
	hold      atomic.Pointer[string]
}

func (f *fakePool) Run(ctx context.Context, _ upstream.Sink) {
	f.log.mu.Lock()
	f.log.open++
	f.log.peak = max(f.log.peak, f.log.open)
	i := len(f.log.spans)
	f.log.spans = append(f.log.spans, span{replica: f.name, start: time.Now()})
	f.log.mu.Unlock()
	f.streaming.Store(true)
	<-ctx.Done()
	f.streaming.Store(false)
	f.log.mu.Lock()
	f.log.open--
	f.log.spans[i].end = time.Now()
	f.log.mu.Unlock()
}

func (f *fakePool) Hold(_ time.Time, reason string) { f.hold.Store(&reason) }
func (f *fakePool) Streaming() bool                 { return f.streaming.Load() }
func (f *fakePool) Conns() []upstream.ConnStatus    { return nil }

type replica struct {
	node   *Node
	stream *Stream
	hub    *fanout.Hub
	pool   *fakePool
	proxy  *natstest.Proxy
	cancel context.CancelFunc
	done   chan struct{}
}

const (
	testTTL   = time.Second
	testDelay = 300 * time.Millisecond
)

func startReplica(t *testing.T, ns *natstest.Server, name string, log *upstreamLog, logs *logrus.Logger, configure ...func(*Options)) *replica {
	t.Helper()
	p := natstest.NewProxy(t, strings.TrimPrefix(ns.URL(), "nats://"))
	o := Options{URL: p.URL(), Replica: name, LeaseTTL: testTTL, ReconnectDelay: testDelay, RetryWait: 50 * time.Millisecond, Logger: logs}
	for _, c := range configure {
		c(&o)
	}
	node, err := Connect(o)
	if err != nil {
		t.Fatal(err)
	}
	r := &replica{node: node, pool: &fakePool{name: name, log: log}, proxy: p, done: make(chan struct{})}
	r.stream = node.NewStream("demo", fanout.Options{}, r.pool)
	r.hub = r.stream.Hub()
	ctx, cancel := context.WithCancel(context.Background())
	r.cancel = cancel
	go func() { r.stream.Run(ctx); node.Close(); close(r.done) }()
	t.Cleanup(func() { r.stop() })
	return r
}

func (r *replica) stop() {
	r.cancel()
	<-r.done
}

// jetStreamOf is a JetStream client of the test's own on ns, closed when
// the test ends: the operator's view, to change what the replicas see.
func jetStreamOf(t *testing.T, ns *natstest.Server) jetstream.JetStream {
	t.Helper()
	nc, err := nats.Connect(ns.URL())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(nc.Close)
	js, err := jetstream.New(nc)
	if err != nil {
		t.Fatal(err)
	}
	return js
}

// leaseBucket is stream demo's lease bucket on ns.
func leaseBucket(t *testing.T, ns *natstest.Server) jetstream.KeyValue {
	t.Helper()
	kv, err := jetStreamOf(t, ns).KeyValue(t.Context(), NamesFor("demo").Bucket)
	if err != nil {
		t.Fatal(err)
	}
	return kv
}

func quietLogger() *logrus.Logger {
	l := logrus.New()
	l.Out = &bytes.Buffer{}
	return l
}

// TestLeaseNeverLetsTwoUpstreamsOverlap runs two replicas on one NATS
// server: one leads; cut off from NATS, it closes its upstream within 3/4
// TTL; the other connects only after TTL + delay; when the cut heals, the
// first stays a follower; on shutdown the leader releases the lease and
// the other connects one delay later, without waiting for the TTL.
func TestLeaseNeverLetsTwoUpstreamsOverlap(t *testing.T) {
	ns := natstest.Start(t)
	ulog := &upstreamLog{}
	a := startReplica(t, ns, "a", ulog, quietLogger())
	waitFor(t, 30*time.Second, "a to lead", func() bool { return a.stream.Leader() && ulog.openNow() == 1 })
	b := startReplica(t, ns, "b", ulog, quietLogger())
	waitFor(t, 30*time.Second, "b to see a as leader", func() bool {
		st := b.stream.ClusterStatus()
		return st.Ready && st.Leader == "a" && st.LeaderStreaming
	})
	if h := b.pool.hold.Load(); h == nil || !strings.Contains(*h, "replica a holds the upstream") {
		t.Errorf("b's upstream hold reason: %v", h)
	}

	// Hits published by the leader reach both hubs under the same numbers.
	for i := range 5 {
		a.stream.Deliver(upstream.Hit{Raw: fmt.Appendf(nil, `{"hitIdHigh":1,"hitIdLow":%d}`, i), ID: upstream.HitID{High: 1, Low: uint64(i)}, HasID: true})
	}
	a.stream.Deliver(upstream.Hit{Raw: []byte(`{"hitIdHigh":1,"hitIdLow":4}`), ID: upstream.HitID{High: 1, Low: 4}, HasID: true}) // republished
	waitFor(t, 10*time.Second, "5 hits in both hubs, all acknowledged", func() bool {
		st := a.stream.ClusterStatus().Publish
		return a.hub.Stats().Appended == 5 && b.hub.Stats().Appended == 5 && st.Buffered == 0
	})
	if sa, sb := a.hub.Stats(), b.hub.Stats(); sa.Oldest != sb.Oldest || sa.Newest != sb.Newest {
		t.Fatalf("hubs differ: %+v vs %+v", sa, sb)
	}
	if st := a.stream.ClusterStatus().Publish; st.Published != 5 || st.Duplicates != 1 {
		t.Fatalf("publish status %+v, want 5 published and 1 duplicate", st)
	}

	// Partition the leader.
	cut := time.Now()
	a.proxy.Cut()
	waitFor(t, 30*time.Second, "b to lead and connect", func() bool { return b.stream.Leader() && ulog.openNow() == 1 && len(ulog.spansNow()) == 2 })
	spans := ulog.spansNow()
	// The fence falls 3/4 TTL after the last renewal, so before the cut
	// plus 3/4 TTL; what must hold even when the timer runs late on a busy
	// machine is that it closes before anyone else may take over (a TTL).
	if closed := spans[0].end.Sub(cut); closed > testTTL {
		t.Errorf("the cut-off leader closed its upstream %v after the cut; want within 3/4 TTL (%v), and at worst before the TTL", closed, testTTL*3/4)
	}
	if gap := spans[1].start.Sub(spans[0].end); gap < testDelay {
		t.Errorf("b connected %v after a closed; want at least the delay %v", gap, testDelay)
	}
	if a.stream.Leader() {
		t.Error("a still says it leads")
	}
	a.proxy.Heal()
	waitFor(t, 30*time.Second, "a back on NATS, following b", func() bool {
		st := a.stream.ClusterStatus()
		return st.NATS == "connected" && st.Leader == "b"
	})
	rev := a.stream.ClusterStatus().LeaseRevision
	waitFor(t, 30*time.Second, "a to see b renew four times", func() bool { return a.stream.ClusterStatus().LeaseRevision >= rev+4 })
	if n := len(ulog.spansNow()); n != 2 || ulog.peak != 1 {
		t.Fatalf("after healing: %d upstream spans, peak %d; want 2 and 1", n, ulog.peak)
	}

	// The leader shuts down and releases.
	b.stop()
	waitFor(t, 30*time.Second, "a to lead again", func() bool { return a.stream.Leader() && ulog.openNow() == 1 })
	spans = ulog.spansNow()
	gap := spans[2].start.Sub(spans[1].end)
	if gap < testDelay || gap >= testTTL+testDelay {
		t.Errorf("after b released, a connected %v after b closed; want between the delay %v and TTL + delay", gap, testDelay)
	}
	ulog.mu.Lock()
	peak := ulog.peak
	ulog.mu.Unlock()
	if peak != 1 {
		t.Errorf("%d upstreams open at once", peak)
	}
	t.Logf("partition: closed %v after the cut, next opened %v later; release: next opened %v later",
		spans[0].end.Sub(cut).Round(time.Millisecond), spans[1].start.Sub(spans[0].end).Round(time.Millisecond), gap.Round(time.Millisecond))
}

// TestReplicaWithoutNATSServesNothingAndSaysWhy: before a replica has
// reached JetStream it has no sequence numbers to give, so it is not
// ready, and it says which NATS it waits for, without the password.
func TestReplicaWithoutNATSServesNothingAndSaysWhy(t *testing.T) {
	out := &syncBuffer{}
	logs := logrus.New()
	logs.Out = out
	node, err := Connect(Options{URL: "nats://lsmux:s3cret-pass@127.0.0.1:1", Replica: "r", RetryWait: 20 * time.Millisecond, Logger: logs})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	pool := &fakePool{name: "r", log: &upstreamLog{}}
	s := node.NewStream("demo", fanout.Options{}, pool)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	waitFor(t, 5*time.Second, "a setup failure to be logged", func() bool { return strings.Contains(out.String(), "cannot set up") })
	err = s.ServeErr()
	if err == nil || !strings.Contains(err.Error(), "nats://") {
		t.Fatalf("Ready() = %v; want an error naming the NATS URL", err)
	}
	status, _ := json.Marshal(s.ClusterStatus())
	cancel()
	<-done
	for what, text := range map[string]string{"readiness": err.Error(), "status": string(status), "logs": out.String()} {
		if strings.Contains(text, "s3cret-pass") {
			t.Errorf("the NATS password appears in %s: %s", what, text)
		}
	}
	if pool.streaming.Load() || s.Leader() {
		t.Error("a replica without NATS ran the upstream")
	}
}

// TestWrongNATSPasswordIsNeverLogged: an authentication failure is
// reported, the password is not.
func TestWrongNATSPasswordIsNeverLogged(t *testing.T) {
	ns := natstest.Start(t, func(o *server.Options) { o.Username, o.Password = "lsmux", "right-pass" })
	out := &syncBuffer{}
	logs := logrus.New()
	logs.Out = out
	url := strings.Replace(ns.URL(), "nats://", "nats://lsmux:wrong-pass-42@", 1)
	node, err := Connect(Options{URL: url, Replica: "r", RetryWait: 20 * time.Millisecond, Logger: logs})
	if err != nil {
		t.Fatal(err)
	}
	s := node.NewStream("demo", fanout.Options{}, &fakePool{name: "r", log: &upstreamLog{}})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { s.Run(ctx); close(done) }()
	waitFor(t, 5*time.Second, "the failure to be logged", func() bool { return strings.Contains(out.String(), "cannot set up") })
	status, _ := json.Marshal(s.ClusterStatus())
	cancel()
	<-done
	node.Close()
	if text := out.String() + string(status); strings.Contains(text, "wrong-pass-42") {
		t.Fatalf("the NATS password appears:\n%s", text)
	}
}

func TestPublishBufferIsBoundedAndCountsWhatItDrops(t *testing.T) {
	p := newPublisher(nil, func() bool { return false }, "lsmux.demo.hits", 1000, time.Second, quietLogger())
	raw := bytes.Repeat([]byte("x"), 300)
	for range 5 {
		p.add(upstream.Hit{Raw: raw})
	}
	n, size := p.pending()
	if n != 3 || size != 900 {
		t.Fatalf("buffered %d hits, %d bytes; want 3 and 900 (the bound is 1000)", n, size)
	}
	if st := p.status(); st.Dropped != 2 {
		t.Fatalf("dropped %d, want 2 counted", st.Dropped)
	}
	p.remove(2)
	if n, size := p.pending(); n != 1 || size != 300 {
		t.Fatalf("after removing 2: %d hits, %d bytes", n, size)
	}
}

func TestMsgIDIsTheHitIDOrAHashOfTheBytes(t *testing.T) {
	id := MsgID(upstream.Hit{Raw: []byte(`{}`), ID: upstream.HitID{High: 18446744073709551615, Low: 7}, HasID: true})
	if id != "18446744073709551615-7" {
		t.Fatalf("MsgID with ids = %q", id)
	}
	a, b := MsgID(upstream.Hit{Raw: []byte(`{"x":1}`)}), MsgID(upstream.Hit{Raw: []byte(`{"x":2}`)})
	if a == b || a != MsgID(upstream.Hit{Raw: []byte(`{"x":1}`)}) || !strings.HasPrefix(a, "sha256-") {
		t.Fatalf("MsgID without ids: %q, %q", a, b)
	}
}

func TestNamesForJetStream(t *testing.T) {
	n := NamesFor("my-endpoint_2")
	if n.Stream != "LSMUX_my-endpoint_2" || n.Subject != "lsmux.my-endpoint_2.hits" || n.Bucket != "LSMUX_LEASE_my-endpoint_2" {
		t.Fatalf("%+v", n)
	}
	dotted, underscored := NamesFor("a.b"), NamesFor("a_b")
	if dotted.Stream == underscored.Stream || strings.ContainsAny(dotted.Stream+dotted.Bucket, ". *>") || strings.Count(dotted.Subject, ".") != 2 {
		t.Fatalf("a.b → %+v, a_b → %+v", dotted, underscored)
	}
}

// TestConnectErrorsHideThePassword: nats.go quotes a URL it cannot parse
// in its error; that message must not carry the password on to the logs.
func TestConnectErrorsHideThePassword(t *testing.T) {
	for _, url := range []string{"nats://lsmux:p%ss-99@127.0.0.1:1", "lsmux:plain-pass-99@127.0.0.1:1", `nats://lsmux:qu"ote\pass-99@127.0.0.1:1`} {
		node, err := Connect(Options{URL: url, Replica: "r", RetryWait: 20 * time.Millisecond, Logger: quietLogger()})
		var text string
		if err != nil {
			text = err.Error()
		} else {
			text = node.notConnected().Error()
			node.Close()
		}
		if strings.Contains(text, "p%ss-99") || strings.Contains(text, "plain-pass-99") || strings.Contains(text, "pass-99") {
			t.Errorf("%s: the password appears in %q", url, text)
		}
	}
}

type syncBuffer = testutil.SyncBuffer

// TestDeletedLeaseIsNotAFreeLease: an operator purges the lease key while a
// leader holds the upstream, and a new replica starts. The newcomer must
// not take the missing key at once (the leader only finds out at its next
// renewal); it waits a whole TTL, and the reconnect delay, so the two
// upstreams never overlap.
func TestDeletedLeaseIsNotAFreeLease(t *testing.T) {
	ns := natstest.Start(t)
	ulog := &upstreamLog{}
	a := startReplica(t, ns, "a", ulog, quietLogger())
	waitFor(t, 30*time.Second, "a to lead", func() bool { return a.stream.Leader() && ulog.openNow() == 1 })
	kv := leaseBucket(t, ns)
	if err := kv.Purge(t.Context(), leaseKey); err != nil {
		t.Fatal(err)
	}
	b := startReplica(t, ns, "b", ulog, quietLogger())
	waitFor(t, 30*time.Second, "one of them to lead again with its upstream open", func() bool {
		return len(ulog.spansNow()) >= 2 && ulog.openNow() == 1
	})
	ulog.mu.Lock()
	peak := ulog.peak
	ulog.mu.Unlock()
	if peak != 1 {
		t.Fatalf("%d upstreams were open at once after the lease key was purged", peak)
	}
	spans := ulog.spansNow()
	if gap := spans[1].start.Sub(spans[0].end); gap < testDelay {
		t.Errorf("the next upstream opened %v after the last closed; want at least the reconnect delay %v", gap, testDelay)
	}
	t.Logf("purged lease: a closed, %s opened %v later (b leads: %v)", spans[1].replica, spans[1].start.Sub(spans[0].end).Round(time.Millisecond), b.stream.Leader())
}

// TestDeletedStreamIsCreatedAgain: someone deletes the JetStream stream of
// hits (or NATS loses it). The replicas notice, create it again numbering
// on far above the old numbers (so no number ever means two hits), and a
// subscriber waiting at the old next number is told of the gap. If an
// operator creates it again at 1 instead, the replicas renumber down, and
// a subscriber waiting at a number from before is told too.
func TestDeletedStreamIsCreatedAgain(t *testing.T) {
	ns := natstest.Start(t)
	ulog := &upstreamLog{}
	a := startReplica(t, ns, "a", ulog, quietLogger())
	b := startReplica(t, ns, "b", ulog, quietLogger())
	waitFor(t, 30*time.Second, "a leader", func() bool {
		return (a.stream.Leader() || b.stream.Leader()) && b.stream.ServeErr() == nil && a.stream.ServeErr() == nil
	})
	leader := a
	if b.stream.Leader() {
		leader = b
	}
	sent := 0
	send := func(n int) {
		for range n {
			leader.stream.Deliver(upstream.Hit{Raw: fmt.Appendf(nil, `{"hitIdHigh":2,"hitIdLow":%d}`, sent), ID: upstream.HitID{High: 2, Low: uint64(sent)}, HasID: true})
			sent++
		}
	}
	send(50)
	waitFor(t, 5*time.Second, "50 hits in both hubs", func() bool { return a.hub.Stats().Appended == 50 && b.hub.Stats().Appended == 50 })
	waiting := b.hub.Subscribe(fanout.Live, fanout.Info{}, nil)
	defer waiting.Close()
	size := func(e *fanout.Entry) int { return len(e.Raw()) }

	js := jetStreamOf(t, ns)
	name := NamesFor("demo").Stream
	if err := js.DeleteStream(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	var first uint64
	var created time.Time
	waitFor(t, 30*time.Second, "the stream to exist again", func() bool {
		st, err := js.Stream(t.Context(), name)
		if err == nil {
			first, created = st.CachedInfo().Config.FirstSeq, st.CachedInfo().Created
		}
		return err == nil
	})
	if first < 50+renumberGap {
		t.Fatalf("the stream was created again from %d; want far above the old numbers", first)
	}
	send(10)
	waitFor(t, 30*time.Second, "the 10 new hits in both hubs", func() bool { return a.hub.Stats().Appended >= 60 && b.hub.Stats().Appended >= 60 })
	got, gap, _, _ := waiting.Poll(context.Background(), size, 1<<30)
	if gap == nil || len(got) != 10 || got[0].Seq < first {
		t.Fatalf("a subscriber waiting at the old next number: gap %v then %d hits; want a gap notice, then the 10 new hits from %d", gap, len(got), first)
	}
	// Both replicas set up again on the new stream (one may have followed
	// it with its old consumer first): still no hit twice, no false gap.
	waitFor(t, 30*time.Second, "both replicas to read the new stream", func() bool {
		return a.stream.ClusterStatus().JetStreamCreated.Equal(created) && b.stream.ClusterStatus().JetStreamCreated.Equal(created)
	})
	if got, gap, _, _ := waiting.Poll(context.Background(), size, 1<<30); gap != nil || len(got) != 0 {
		t.Fatalf("then %d more hits and gap %v; want nothing (no hit twice)", len(got), gap)
	}

	// An operator deletes it and creates it again at 1.
	if err := js.DeleteStream(t.Context(), name); err != nil {
		t.Fatal(err)
	}
	if _, err := js.CreateStream(t.Context(), jetstream.StreamConfig{Name: name, Subjects: []string{NamesFor("demo").Subject}, Duplicates: time.Minute}); err != nil {
		t.Fatal(err)
	}
	waitFor(t, 30*time.Second, "both replicas on the new numbering", func() bool {
		return a.hub.Stats().Newest < 1000 && b.hub.Stats().Newest < 1000 && a.stream.ServeErr() == nil && b.stream.ServeErr() == nil
	})
	send(10)
	waitFor(t, 30*time.Second, "the hits in both hubs", func() bool { return a.hub.Stats().Newest >= 10 && b.hub.Stats().Newest >= 10 })
	if _, gap, _, _ := waiting.Poll(context.Background(), size, 1<<30); gap == nil {
		t.Fatal("a subscriber from the second numbering was not told the numbers started over")
	}
}
