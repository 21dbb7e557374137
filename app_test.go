package main

import (
	"bytes"
	"context"
	"errors"
	"hash/fnv"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"lsmux/internal/cli"
	"lsmux/internal/testutil"
	"lsmux/proxy/proxytest"
	"lsmux/upstream/simulator"
)

func TestMain(m *testing.M) {
	goleak.VerifyTestMain(m, goleak.Cleanup(func(code int) {
		if binDir != "" {
			os.RemoveAll(binDir) // the binary lsmuxBinary built
		}
		os.Exit(code)
	}))
}

type running struct {
	app  *app
	sim  *simulator.Server
	base string // http://addr/v1/streams/demo
	root string
	stop context.CancelFunc
	done chan struct{} // closed when run returned
	err  error         // what run returned, after done
	logs *syncBuf
}

// startApp runs the real wiring (config → upstream → hub → proxy) against
// a simulator, with test-sized delays set through the ordinary flags.
func startApp(t *testing.T, sim *simulator.Server, extra ...string) *running {
	t.Helper()
	args := append([]string{"-listen", "127.0.0.1:0", "-stream-url", sim.StreamURL("demo"), "-token-url", sim.TokenURL(),
		"-client-id", sim.ClientID(), "-client-secret", sim.ClientSecret(), "-reconnect-delay", "200ms",
		"-reconnect-max-delay", "1s", "-auth-retry-delay", "100ms", "-shutdown-timeout", "2s", "-log-level", "warn"}, extra...)
	cfg, err := loadConfig("lsmux serve", serveSummary, args, cli.Env{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	logs := &syncBuf{}
	log, _ := newLogger(cfg.LogLevel, "json", logs)
	tokens, err := cfg.tokenSource()
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(cfg, tokens, log, nil)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	r := &running{app: a, sim: sim, root: a.scheme() + "://" + a.addr(), base: a.scheme() + "://" + a.addr() + "/v1/streams/demo", stop: cancel, done: make(chan struct{}), logs: logs}
	go func() { r.err = a.run(ctx); close(r.done) }()
	t.Cleanup(func() {
		cancel()
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Error("lsmux did not stop")
		}
	})
	return r
}

// runApp starts lsmux's real wiring from flags (no environment), with an
// optional demo handler, and stops it when the test ends.
func runApp(t *testing.T, args []string, demo http.Handler) *app {
	t.Helper()
	cfg, err := loadConfig("lsmux serve", serveSummary, args, cli.Env{}, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	log, _ := newLogger("error", "text", io.Discard)
	tokens, err := cfg.tokenSource()
	if err != nil {
		t.Fatal(err)
	}
	a, err := newApp(cfg, tokens, log, demo)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- a.run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return a
}

func newSim(t *testing.T, rate float64) *simulator.Server {
	t.Helper()
	sim, err := simulator.New(simulator.Options{Rate: rate})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(sim.Close)
	return sim
}

var waitFor = testutil.WaitFor

// steadySubscribers connects one WebSocket and one SSE subscriber from the
// oldest hit and collects everything they receive.
func steadySubscribers(t *testing.T, base string) (ws, sse *collected) {
	t.Helper()
	w, _, err := proxytest.DialWS(base+"/ws?from=oldest", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(w.Close)
	s, err := proxytest.DialSSE(base+"/sse?from=oldest", nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	ws, sse = collect(w.Msgs), collect(s.Msgs)
	ws.why = func() string {
		select {
		case err := <-w.Done:
			return err.Error()
		default:
			return "still connected"
		}
	}
	return ws, sse
}

// collect drains a subscription into a slice until the channel closes.
// The collector keeps a 64-bit hash of each hit instead of its bytes, so a
// ten-minute soak does not hold a gigabyte of hits in the test's heap (and
// the heap check measures lsmux, not the test).
type collected struct {
	mu   sync.Mutex
	msgs []got
	done atomic.Bool // the subscription ended
	// why says how the subscription ended, when the client knows.
	why func() string
}

// got is one received message, with the hit's bytes as a hash.
type got struct {
	Type          string
	Seq, From, To uint64
	Sum           uint64
}

func hashHit(b []byte) uint64 {
	h := fnv.New64a()
	h.Write(b)
	return h.Sum64()
}

func collect(ch <-chan proxytest.Msg) *collected {
	c := &collected{}
	go func() {
		for m := range ch {
			g := got{Type: m.Type, Seq: m.Seq, From: m.From, To: m.To}
			if m.Type == "hit" {
				g.Sum = hashHit(m.Hit)
			}
			c.mu.Lock()
			c.msgs = append(c.msgs, g)
			c.mu.Unlock()
		}
		c.done.Store(true)
	}()
	return c
}

func (c *collected) ended() bool { return c.done.Load() }

func (c *collected) hits() []got {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]got(nil), c.msgs...)
}

// TestChurningSubscribersNeverTouchTheUpstream is the fan-out promise end
// to end: 200 subscribers (half WebSocket, half SSE) connect, read a
// little and vanish in a loop for 10 s, while two steady subscribers stay.
// The simulator sees one connection; the steady subscribers get every hit
// it sent, once, in order, byte for byte.
func TestChurningSubscribersNeverTouchTheUpstream(t *testing.T) {
	sim := newSim(t, 300)
	r := startApp(t, sim)
	ws, sse := steadySubscribers(t, r.base)

	var sessions, failures atomic.Int64
	var lastSeq atomic.Uint64
	end := time.Now().Add(10 * time.Second)
	var wg sync.WaitGroup
	for i := range 200 {
		wg.Go(func() {
			for time.Now().Before(end) {
				from := "live"
				if s := lastSeq.Load(); s > 0 && rand.IntN(2) == 0 {
					from = strconv.FormatUint(s-uint64(rand.IntN(50)), 10) // resume a little back
				}
				if err := churnOnce(r.base, i%2 == 0, from, 1+rand.IntN(5), &lastSeq); err != nil {
					failures.Add(1)
				}
				sessions.Add(1)
			}
		})
	}
	wg.Wait()
	t.Logf("%d churn sessions, %d failed to read", sessions.Load(), failures.Load())
	if failures.Load() > sessions.Load()/100 {
		t.Fatalf("%d of %d churn sessions failed", failures.Load(), sessions.Load())
	}

	// Pause the simulator so what it sent and what arrived can be compared.
	sim.Stall(time.Hour)
	sent := sim.SentHits("demo")
	waitFor(t, 10*time.Second, "steady subscribers to catch up", func() bool {
		return len(ws.hits()) >= len(sent) && len(sse.hits()) >= len(sent)
	})
	for name, msgs := range map[string][]got{"ws": ws.hits(), "sse": sse.hits()} {
		if len(msgs) != len(sent) {
			t.Fatalf("%s steady subscriber got %d messages, simulator sent %d hits", name, len(msgs), len(sent))
		}
		for i, m := range msgs {
			if m.Type != "hit" || m.Sum != hashHit(sent[i]) {
				t.Fatalf("%s message %d differs from hit %d sent (type %s)", name, i, i, m.Type)
			}
			if i > 0 && m.Seq != msgs[i-1].Seq+1 {
				t.Fatalf("%s: seq %d after %d", name, m.Seq, msgs[i-1].Seq)
			}
		}
	}
	if a := sim.Attempts(); len(a) != 1 || sim.PeakActive("demo") != 1 {
		t.Fatalf("simulator saw %d attempts, peak %d connections; want exactly one", len(a), sim.PeakActive("demo"))
	}
	waitFor(t, 5*time.Second, "churned subscribers to be gone", func() bool {
		c := r.app.streams[0].hub.SubscriberCounts()
		return c["ws"] == 1 && c["sse"] == 1
	})
	t.Logf("steady subscribers got %d hits each", len(sent))
}

// churnOnce is one flapping subscriber: connect, read n messages, vanish
// without closing (half the time) or close properly.
func churnOnce(base string, useWS bool, from string, n int, lastSeq *atomic.Uint64) error {
	if useWS {
		c, _, err := proxytest.DialWS(base+"/ws?from="+from, nil)
		if err != nil {
			return err
		}
		defer c.Close()
		for range n {
			m, err := proxytest.Next(c.Msgs, 5*time.Second)
			if err != nil {
				return err
			}
			lastSeq.Store(max(lastSeq.Load(), m.Seq))
		}
		if rand.IntN(2) == 0 {
			c.Conn.WriteControl(websocket.CloseMessage, websocket.FormatCloseMessage(websocket.CloseNormalClosure, ""), time.Now().Add(time.Second))
		}
		return nil
	}
	c, err := proxytest.DialSSE(base+"/sse?from="+from, nil)
	if err != nil {
		return err
	}
	defer c.Close()
	for range n {
		if _, err := proxytest.Next(c.Msgs, 5*time.Second); err != nil {
			return err
		}
	}
	return nil
}

func TestGracefulShutdownClosesSubscribersAndTheUpstream(t *testing.T) {
	sim := newSim(t, 200)
	r := startApp(t, sim)
	ws, _, err := proxytest.DialWS(r.base+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	sse, err := proxytest.DialSSE(r.base+"/sse", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	if _, err := proxytest.Next(ws.Msgs, 5*time.Second); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	r.stop()
	select {
	case <-r.done:
		if r.err != nil {
			t.Fatalf("run returned %v, want a clean exit", r.err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("lsmux did not exit within its 2s shutdown deadline (+3s)")
	}
	t.Logf("shutdown took %v", time.Since(start))
	for m := range ws.Msgs {
		_ = m // drain hits still in flight
	}
	var ce *websocket.CloseError
	if err := <-ws.Done; !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
		t.Fatalf("websocket ended with %v, want close 1001", err)
	}
	select {
	case reason := <-sse.Closed:
		if !strings.Contains(reason, "shutdown") {
			t.Fatalf("sse final event %q", reason)
		}
	case <-time.After(time.Second):
		t.Fatal("sse subscriber got no final event")
	}
	waitFor(t, 2*time.Second, "the simulator to see the upstream closed", func() bool {
		a := sim.Attempts()
		return sim.Active("demo") == 0 && len(a) == 1 && !a[0].End.IsZero()
	})
}

func TestUpstreamStaysOpenWithNoSubscribers(t *testing.T) {
	sim := newSim(t, 200)
	r := startApp(t, sim)
	for range 3 {
		c, err := proxytest.DialSSE(r.base+"/sse", nil)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := proxytest.Next(c.Msgs, 5*time.Second); err != nil {
			t.Fatal(err)
		}
		c.Close()
		waitFor(t, 2*time.Second, "zero subscribers", func() bool { return len(r.app.streams[0].hub.Subscribers()) == 0 })
		before := r.app.streams[0].hub.Stats().Appended
		waitFor(t, 2*time.Second, "hits still arriving with nobody listening", func() bool { return r.app.streams[0].hub.Stats().Appended > before+10 })
	}
	if n := len(sim.Attempts()); n != 1 {
		t.Fatalf("%d upstream attempts while subscribers came and went, want 1", n)
	}
	resp, err := http.Get(r.root + "/readyz?upstream=1")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Fatalf("strict readiness %d with a streaming upstream", resp.StatusCode)
	}
}

func TestRunCommands(t *testing.T) {
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"version"}, cli.Env{}, &out, &errOut); code != 0 || !strings.HasPrefix(out.String(), "lsmux ") {
		t.Fatalf("version: %d %q", code, out.String())
	}
	out.Reset()
	if code := run(context.Background(), []string{"bogus"}, cli.Env{}, &out, &errOut); code != 2 {
		t.Fatalf("unknown command exit %d, want 2", code)
	}
	errOut.Reset()
	code := run(context.Background(), []string{"serve"}, cli.Env{}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "LSMUX_STREAM_URL") || !strings.Contains(errOut.String(), "lsmux demo") {
		t.Fatalf("serve without a stream: %d %q", code, errOut.String())
	}
	errOut.Reset()
	env := map[string]string{"LSMUX_STREAM_URL": "https://x/api/1/stream/s"}
	code = run(context.Background(), []string{"serve"}, cli.Env(env), &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "LSMUX_CLIENT_ID") {
		t.Fatalf("serve without credentials: %d %q", code, errOut.String())
	}
}

// TestDemoServesHitsWithoutCredentials, also from a shell set up for a
// real Live Stream: the demo neither sends that token to its simulator nor
// connects to that stream.
func TestDemoServesHitsWithoutCredentials(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	var out, logs syncBuf
	done := make(chan int, 1)
	prod := cli.Env{"LSMUX_ACCESS_TOKEN": "prod-token-1234", "LSMUX_STREAMS": "prod=https://livestream.invalid/api/1/stream/prod", "LSMUX_NATS_URL": "nats://nats.invalid:4222"}
	go func() {
		done <- run(ctx, []string{"demo", "-listen", "127.0.0.1:0", "-log-level", "warn"}, prod, &out, &logs)
	}()
	var url string
	waitFor(t, 5*time.Second, "the demo to print its URL", func() bool {
		for _, line := range strings.Split(out.String(), "\n") {
			if i := strings.Index(line, "curl -N "); i >= 0 {
				url = strings.TrimSpace(line[i+len("curl -N "):])
				return true
			}
		}
		return false
	})
	c, err := proxytest.DialSSE(url, nil)
	if err != nil {
		t.Fatal(err)
	}
	if m, err := proxytest.Next(c.Msgs, 5*time.Second); err != nil || m.Type != "hit" {
		t.Fatalf("demo: %+v %v (log: %s)", m, err, logs.String())
	}
	c.Close()
	resp, err := http.Get(strings.TrimSuffix(url, "/demo/sse"))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if strings.Contains(string(body), "prod") {
		t.Errorf("the demo serves the shell's LSMUX_STREAMS too: %s", body)
	}
	for _, name := range []string{"LSMUX_STREAMS", "LSMUX_ACCESS_TOKEN", "LSMUX_NATS_URL"} {
		if !strings.Contains(logs.String(), "lsmux demo ignores "+name) {
			t.Errorf("the log does not say the demo ignores %s:\n%s", name, logs.String())
		}
	}
	if strings.Contains(logs.String()+out.String(), "prod-token-1234") {
		t.Error("the token appears in the demo's output")
	}
	cancel()
	if code := <-done; code != 0 {
		t.Fatalf("demo exited %d", code)
	}
	if !strings.Contains(out.String(), "Open the dashboard:") {
		t.Fatalf("demo output:\n%s", out.String())
	}
}

type syncBuf = testutil.SyncBuffer

func TestHealthcheckCommand(t *testing.T) {
	sim := newSim(t, 100)
	r := startApp(t, sim)
	env := cli.Env{"LSMUX_LISTEN": r.app.addr()}
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"healthcheck"}, env, &out, &errOut); code != 0 {
		t.Fatalf("healthcheck of a ready instance: exit %d: %s", code, errOut.String())
	}
	waitFor(t, 5*time.Second, "the upstream to stream", func() bool { return r.app.streams[0].feed.Streaming() })
	if code := run(context.Background(), []string{"healthcheck", "-upstream"}, env, &out, &errOut); code != 0 {
		t.Fatalf("strict healthcheck with a streaming upstream: exit %d: %s", code, errOut.String())
	}
	// Not ready: the upstream is down (strict), or the instance is gone.
	sim.FailNext(100, http.StatusServiceUnavailable)
	sim.DropConnections()
	waitFor(t, 5*time.Second, "the upstream to wait", func() bool { return !r.app.streams[0].feed.Streaming() })
	errOut.Reset()
	if code := run(context.Background(), []string{"healthcheck", "-upstream"}, env, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "503") {
		t.Fatalf("strict healthcheck with the upstream down: exit %d: %s", code, errOut.String())
	}
	if code := run(context.Background(), []string{"healthcheck"}, env, &out, &errOut); code != 0 {
		t.Fatalf("default healthcheck must not hinge on the upstream: exit %d", code)
	}
	r.stop()
	<-r.done
	errOut.Reset()
	if code := run(context.Background(), []string{"healthcheck"}, env, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "not ready") {
		t.Fatalf("healthcheck of a stopped instance: exit %d: %s", code, errOut.String())
	}
}

func TestTwoStreamsOneFailingTheOtherFlows(t *testing.T) {
	sim, err := simulator.New(simulator.Options{Rate: 200, Streams: []string{"sales", "web"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	streams := "sales=" + sim.StreamURL("sales") + "?maxConnections=2," + sim.URL() + "/api/1/stream/retired"
	a := runApp(t, []string{"-listen", "127.0.0.1:0", "-streams", streams, "-token-url", sim.TokenURL(),
		"-client-id", sim.ClientID(), "-client-secret", sim.ClientSecret(), "-reconnect-delay", "50ms", "-reconnect-max-delay", "100ms"}, nil)

	root := "http://" + a.addr()
	sales, _, err := proxytest.DialWS(root+"/v1/streams/sales/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sales.Close()
	retired, err := proxytest.DialSSE(root+"/v1/streams/retired/sse", nil)
	if err != nil {
		t.Fatalf("subscribing to the failing stream: %v", err)
	}
	defer retired.Close()
	waitFor(t, 5*time.Second, "the retired stream to be reported failing", func() bool {
		return a.streams[1].feed.Conns()[0].State == "failing"
	})
	for range 50 {
		if _, err := proxytest.Next(sales.Msgs, 5*time.Second); err != nil {
			t.Fatalf("the healthy stream stopped while the other failed: %v", err)
		}
	}
	if st := a.streams[0].feed.Conns(); len(st) != 2 || st[0].State != "streaming" || st[1].State != "streaming" {
		t.Fatalf("sales upstream %+v, want two streaming connections (maxConnections=2 from its URL)", st)
	}
	if n := sim.PeakActive("sales"); n != 2 {
		t.Fatalf("sales had %d connections, want 2", n)
	}
	if a.streams[1].feed.Conns()[0].LastStatus != 404 {
		t.Fatalf("retired: %+v", a.streams[1].feed.Conns()[0])
	}
}

// TestCurlReadsTheDropInEndpoint: an existing Live Stream consumer (here the
// real curl --compressed -N) pointed at lsmux gets the simulator's hits.
func TestCurlReadsTheDropInEndpoint(t *testing.T) {
	curl, err := exec.LookPath("curl")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("curl is missing; .ci/run installs it")
		}
		t.Skip("curl not installed")
	}
	sim := newSim(t, 300)
	r := startApp(t, sim)
	waitFor(t, 5*time.Second, "hits in the hub", func() bool { return r.app.streams[0].hub.Stats().Hits > 20 })
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	cmd := exec.CommandContext(ctx, curl, "--compressed", "-N", "-s", "-H", "Authorization: Bearer whatever",
		r.root+"/api/1/stream/demo?from=oldest&maxConnections=4")
	var out syncBuf
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Wait()
	waitFor(t, 5*time.Second, "curl to read", func() bool { return strings.Count(out.String(), "\n") > 100 })
	sim.Stall(time.Hour)
	sent := sim.SentHits("demo")
	records := func() []string {
		var recs []string
		for _, line := range strings.Split(out.String(), "\r\n") {
			if line != "" {
				recs = append(recs, line)
			}
		}
		return recs
	}
	waitFor(t, 5*time.Second, "curl to catch up", func() bool { return len(records()) >= len(sent) })
	cancel()
	got := records()
	if len(got) != len(sent) {
		t.Fatalf("curl read %d hits, the simulator sent %d", len(got), len(sent))
	}
	for i := range got {
		if got[i] != string(sent[i]) {
			t.Fatalf("hit %d differs:\n curl %.100s\n sim  %.100s", i, got[i], sent[i])
		}
	}
	t.Logf("curl --compressed -N read %d hits identical to the simulator's", len(got))
}

// TestHealthcheckSendsTheConfiguredToken: with LSMUX_PROTECT_HEALTH=true
// the container HEALTHCHECK passes, because it reads the same
// LSMUX_AUTH_TOKEN (or its file) as the server.
func TestHealthcheckSendsTheConfiguredToken(t *testing.T) {
	sim := newSim(t, 20)
	r := startApp(t, sim, "-auth-token", "hc-tok-1,hc-tok-2", "-protect-health")
	var out, errOut bytes.Buffer
	if code := run(context.Background(), []string{"healthcheck"}, cli.Env{"LSMUX_LISTEN": r.app.addr()}, &out, &errOut); code != 1 || !strings.Contains(errOut.String(), "401") {
		t.Fatalf("without the token: exit %d %s", code, errOut.String())
	}
	if code := run(context.Background(), []string{"healthcheck"}, cli.Env{"LSMUX_LISTEN": r.app.addr(), "LSMUX_AUTH_TOKEN": "hc-tok-1,hc-tok-2"}, &out, &errOut); code != 0 {
		t.Fatalf("with LSMUX_AUTH_TOKEN: exit %d %s", code, errOut.String())
	}
	file := t.TempDir() + "/tokens"
	os.WriteFile(file, []byte("\nhc-tok-2\n"), 0o600)
	if code := run(context.Background(), []string{"healthcheck"}, cli.Env{"LSMUX_LISTEN": r.app.addr(), "LSMUX_AUTH_TOKEN_FILE": file}, &out, &errOut); code != 0 {
		t.Fatalf("with LSMUX_AUTH_TOKEN_FILE: exit %d %s", code, errOut.String())
	}
}

// TestMemoryLimitComesFromTheContainer: with a memory limit (here given
// by a provider in place of the cgroup), Go's soft limit is set to 90 % of
// it; GOMEMLIMIT, when set, wins.
func TestMemoryLimitComesFromTheContainer(t *testing.T) {
	before := debug.SetMemoryLimit(-1)
	defer debug.SetMemoryLimit(before)
	log, _ := newLogger("error", "text", io.Discard)
	if got := applyMemoryLimit(log, memlimit.Limit(1<<30)); got != 966367641 || debug.SetMemoryLimit(-1) != got {
		t.Fatalf("limit %d, Go's %d; want 90%% of 1 GiB", got, debug.SetMemoryLimit(-1))
	}
	t.Setenv("GOMEMLIMIT", "300MiB")
	debug.SetMemoryLimit(300 << 20)
	if got := applyMemoryLimit(log, memlimit.Limit(1<<30)); got != 300<<20 {
		t.Fatalf("with GOMEMLIMIT set: %d", got)
	}
}

// metricLines is the /metrics lines whose name starts with prefix, for
// failure messages.
func metricLines(t *testing.T, root, prefix string) string {
	t.Helper()
	_, text := get(t, root+"/metrics", nil)
	var out []string
	for _, l := range strings.Split(text, "\n") {
		if strings.HasPrefix(l, prefix) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}

// TestDemoChecksItsHistorySettings: the demo keeps history in a directory
// of its own, and the history settings are checked as serve checks them.
func TestDemoChecksItsHistorySettings(t *testing.T) {
	var out, errOut syncBuf
	code := run(t.Context(), []string{"demo", "-listen", "127.0.0.1:0"}, cli.Env{"LSMUX_HISTORY_MAX_BYTES": "1KiB"}, &out, &errOut)
	if code != 2 || !strings.Contains(errOut.String(), "LSMUX_HISTORY_MAX_BYTES=1024") {
		t.Fatalf("demo with a 1 KiB history: exit %d, %q; want 2 and the setting named", code, errOut.String())
	}
}

// TestShutdownDelayTurnsReadinessOffFirst: with LSMUX_SHUTDOWN_DELAY, a
// stopping lsmux answers /readyz with 503 while it still accepts and
// serves subscribers (a load balancer is still sending them), and only
// then closes its port.
func TestShutdownDelayTurnsReadinessOffFirst(t *testing.T) {
	sim := newSim(t, 100)
	r := startApp(t, sim, "-shutdown-delay", "6s") // longer than the checks below can take
	if code := readyStatus(r.root); code != http.StatusOK {
		t.Fatalf("/readyz before the stop: %d", code)
	}
	stopped := time.Now()
	r.stop()
	waitFor(t, 2*time.Second, "/readyz to answer 503", func() bool { return readyStatus(r.root) == http.StatusServiceUnavailable })
	c, err := proxytest.DialSSE(r.base+"/sse", nil)
	if err != nil {
		t.Fatalf("a new subscriber during the delay: %v", err)
	}
	defer c.Close()
	if m, err := proxytest.Next(c.Msgs, 2*time.Second); err != nil || m.Type != "hit" {
		t.Fatalf("a new subscriber during the delay got %+v, %v; want hits", m, err)
	}
	<-r.done
	if took := time.Since(stopped); took < 6*time.Second {
		t.Errorf("lsmux stopped %v after the signal; want no sooner than the 6 s delay", took)
	}
	if r.err != nil {
		t.Errorf("run: %v", r.err)
	}
}
