package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"go.uber.org/goleak"

	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/proxy/proxytest"
	"lsmux/upstream"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

type rig struct {
	hub  *fanout.Hub
	srv  *proxy.Server
	base string // http://127.0.0.1:port/v1/streams/s
	root string
}

// serve runs a proxy on a real listener, through the real router.
func serve(t *testing.T, hubOpts fanout.Options, opts proxy.Options) *rig {
	t.Helper()
	if hubOpts.FirstSeq == 0 {
		hubOpts.FirstSeq = 1
	}
	hub := fanout.NewHub(hubOpts)
	srv := proxy.New([]*proxy.Stream{{Name: "s", Hub: hub, Feed: fakeFeed{upstream.StateStreaming}}}, opts)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ln) }()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	})
	root := "http://" + ln.Addr().String()
	return &rig{hub: hub, srv: srv, base: root + "/v1/streams/s", root: root}
}

// fakeFeed is an upstream with one connection in a fixed state.
type fakeFeed struct{ state upstream.State }

func (f fakeFeed) Conns() []upstream.ConnStatus { return []upstream.ConnStatus{{State: f.state}} }
func (f fakeFeed) Streaming() bool              { return f.state == upstream.StateStreaming }
func (f fakeFeed) ServeErr() error              { return nil }
func (f fakeFeed) ReadyErr() error              { return nil }

func hitN(i int) []byte {
	return []byte(fmt.Sprintf(`{"hitIdHigh":18446744073709551615,"hitIdLow":%d,"pageName":"page \"%d\"","n":%d}`, i, i, i))
}

func (r *rig) appendN(from, n int) {
	for i := from; i < from+n; i++ {
		r.hub.Append(hitN(i), time.Now())
	}
}

// expectHits reads n hit messages and checks they are hits first..first+n-1
// with sequence numbers seq0.., bytes unchanged.
func expectHits(t *testing.T, ch <-chan msg, first, n int, seq0 uint64) {
	t.Helper()
	for i := range n {
		m := next(t, ch, 5*time.Second)
		if m.Type != "hit" {
			t.Fatalf("message %d: %+v, want a hit", i, m)
		}
		if m.Seq != seq0+uint64(i) || !bytes.Equal(m.Hit, hitN(first+i)) {
			t.Fatalf("message %d: seq %d hit %s; want seq %d hit %s", i, m.Seq, m.Hit, seq0+uint64(i), hitN(first+i))
		}
	}
}

func TestWSAndSSEDeliverEveryHitInOrderUnchanged(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	r.appendN(0, 50)
	ws := mustWS(t, r.base+"/ws?from=oldest")
	sse := mustSSE(t, r.base+"/sse?from=oldest", nil)
	live := mustWS(t, r.base+"/ws")
	waitFor(t, 2*time.Second, "three subscribers", func() bool { return r.hub.SubscriberCounts()["ws"] == 2 && r.hub.SubscriberCounts()["sse"] == 1 })
	r.appendN(50, 50)
	expectHits(t, ws.Msgs, 0, 100, 1)
	expectHits(t, sse.Msgs, 0, 100, 1)
	expectHits(t, live.Msgs, 50, 50, 51)
}

func TestResumeGetsExactlyTheMissedHits(t *testing.T) {
	r := serve(t, fanout.Options{MaxHits: 100}, proxy.Options{})
	r.appendN(0, 10)

	// SSE: the browser reconnects with the last id it saw.
	sse := mustSSE(t, r.base+"/sse?from=oldest", nil)
	expectHits(t, sse.Msgs, 0, 10, 1)
	sse.Close()
	r.appendN(10, 5)
	again := mustSSE(t, r.base+"/sse?from=oldest", http.Header{"Last-Event-ID": {sse.LastID()}})
	expectHits(t, again.Msgs, 10, 5, 11)

	// WebSocket: from=N is the first number wanted.
	ws := mustWS(t, r.base+"/ws?from=13")
	expectHits(t, ws.Msgs, 12, 3, 13)

	// Older than the ring: a gap notice first, then the oldest held.
	r.appendN(15, 100) // ring holds 16..115
	old := mustWS(t, r.base+"/ws?from=3")
	if m := next(t, old.Msgs, 5*time.Second); m.Type != "gap" || m.From != 3 || m.To != 15 {
		t.Fatalf("first message %+v, want gap 3..15", m)
	}
	expectHits(t, old.Msgs, 15, 100, 16)
	oldSSE := mustSSE(t, r.base+"/sse", http.Header{"Last-Event-ID": {"2"}})
	if m := next(t, oldSSE.Msgs, 5*time.Second); m.Type != "gap" || m.From != 3 || m.To != 15 {
		t.Fatalf("sse first message %+v, want gap 3..15", m)
	}
}

func TestBadRequestsAreJSONErrors(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for _, c := range []struct {
		url    string
		header http.Header
		status int
		text   string
	}{
		{r.root + "/v1/streams/nope/sse", nil, 404, "no stream named"},
		{r.root + "/v1/streams/nope/ws", nil, 404, "no stream named"},
		{r.base + "/sse?from=abc", nil, 400, "from="},
		{r.base + "/ws?from=-1", nil, 400, "from="},
		{r.base + "/sse", http.Header{"Last-Event-ID": {"x1"}}, 400, "Last-Event-ID"},
		{r.base + "/sse", http.Header{"Last-Event-ID": {"18446744073709551613"}}, 400, "Last-Event-ID"}, // +1 would read as oldest
		{r.base + "/ws", nil, 400, "not a WebSocket handshake"},
		{r.root + "/nothing/here", nil, 404, "no such endpoint"},
	} {
		req, _ := http.NewRequest(http.MethodGet, c.url, nil)
		for k, v := range c.header {
			req.Header[k] = v
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != c.status || !strings.Contains(body.Error, c.text) || resp.Header.Get("Content-Type") != "application/json" {
			t.Errorf("%s: %d %q, want %d with %q", c.url, resp.StatusCode, body.Error, c.status, c.text)
		}
	}
}

func TestSSEHeadersAndPreamble(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: 50 * time.Millisecond})
	resp, err := http.Get(r.base + "/sse")
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	for k, want := range map[string]string{"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"} {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("%s: %q, want %q", k, got, want)
		}
	}
	buf := make([]byte, 0, 256)
	tmp := make([]byte, 256)
	for !bytes.Contains(buf, []byte(": ping")) {
		n, err := resp.Body.Read(tmp)
		if err != nil {
			t.Fatalf("read: %v after %q", err, buf)
		}
		buf = append(buf, tmp[:n]...)
	}
	if !bytes.HasPrefix(buf, []byte(": lsmux s\nretry: ")) {
		t.Fatalf("stream starts %q, want a comment then a retry hint", buf)
	}
	ms, _ := strconv.Atoi(string(bytes.SplitN(buf[len(": lsmux s\nretry: "):], []byte("\n"), 2)[0]))
	if ms < 1000 || ms >= 5000 {
		t.Fatalf("retry hint %d ms, want a jittered 1000..4999", ms)
	}
}

func TestSlowWebSocketClientGetsAGapAndDoesNotDelayOthers(t *testing.T) {
	r := serve(t, fanout.Options{MaxHits: 300, MaxBytes: 8 << 20}, proxy.Options{WriteTimeout: 60 * time.Second}) // the stuck client must outlive a slow run
	big := bytes.Repeat([]byte("x"), 8000)
	raw := func(i int) []byte { return []byte(fmt.Sprintf(`{"i":%d,"pad":"%s"}`, i, big)) }

	// The slow client stops reading: it is a raw gorilla connection whose
	// messages we do not read until later.
	slow, _, err := websocket.DefaultDialer.Dial(strings.Replace(r.base, "http", "ws", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer slow.Close()
	fast := mustWS(t, r.base+"/ws")
	waitFor(t, 2*time.Second, "two subscribers", func() bool { return r.hub.SubscriberCounts()["ws"] == 2 })

	var worst time.Duration
	const n = 3000 // 24 MB: far more than the ring and the socket buffers hold
	for i := range n {
		sent := time.Now()
		r.hub.Append(raw(i), sent)
		if i%100 == 99 {
			// The fast client keeps up while the slow one is stuck.
			for {
				m := next(t, fast.Msgs, 5*time.Second)
				if m.Type != "hit" {
					t.Fatalf("fast client got %+v", m)
				}
				var h struct{ I int }
				json.Unmarshal(m.Hit, &h)
				if h.I == i {
					worst = max(worst, m.At.Sub(sent))
					break
				}
			}
		}
		if b := r.hub.Stats().Bytes; b > 8<<20 {
			t.Fatalf("ring at %d bytes, over its bound", b)
		}
	}
	// The stuck client holds its socket for up to the write timeout;
	// the fast one must never wait anywhere near that. 3 s leaves room for
	// a busy machine under -race.
	if worst > 3*time.Second {
		t.Fatalf("the fast client waited %v for a hit while another client was stuck", worst)
	}
	t.Logf("fast client's worst latency with a stuck neighbour: %v", worst)

	// Now the slow client reads: somewhere it must be told of a gap.
	sawGap := false
	slow.SetReadDeadline(time.Now().Add(10 * time.Second))
	for !sawGap {
		_, data, err := slow.ReadMessage()
		if err != nil {
			t.Fatalf("slow client: %v before any gap notice", err)
		}
		sawGap = bytes.HasPrefix(data, []byte(`{"type":"gap"`))
	}
}

func TestSlowPolicyDisconnectClosesWith1008(t *testing.T) {
	r := serve(t, fanout.Options{MaxHits: 10}, proxy.Options{SlowDisconnect: true})
	r.appendN(0, 30)
	c := mustWS(t, r.base+"/ws?from=1") // 1..20 already gone
	err := <-c.Done
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation {
		t.Fatalf("ended with %v, want close 1008", err)
	}
	sse := mustSSE(t, r.base+"/sse?from=1", nil)
	select {
	case reason := <-sse.Closed:
		if !strings.Contains(reason, "slow") {
			t.Fatalf("final event %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no final close event for a slow SSE subscriber")
	}
}

func TestStuckSocketIsDroppedAfterTheWriteTimeout(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{WriteTimeout: 200 * time.Millisecond})
	stuck, _, err := websocket.DefaultDialer.Dial(strings.Replace(r.base, "http", "ws", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer stuck.Close()
	waitFor(t, 2*time.Second, "subscriber", func() bool { return r.hub.SubscriberCounts()["ws"] == 1 })
	big := bytes.Repeat([]byte("y"), 60_000)
	for i := 0; r.hub.SubscriberCounts()["ws"] == 1; i++ {
		if i > 5000 {
			t.Fatal("a client that never reads was never dropped")
		}
		r.hub.Append([]byte(`{"pad":"`+string(big)+`"}`), time.Now())
		if i%50 == 0 {
			time.Sleep(10 * time.Millisecond) // pace the producer so the write deadline can pass
		}
	}
}

func TestPingKeepsClientsAndDropsTheSilent(t *testing.T) {
	// A pong may take a while on a busy machine under -race: the wait is
	// generous, and the silent client is still dropped within seconds.
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: 100 * time.Millisecond, PongWait: time.Second})
	good := mustWS(t, r.base+"/ws")
	silent, _, err := websocket.DefaultDialer.Dial(strings.Replace(r.base, "http", "ws", 1)+"/ws", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer silent.Close()
	silent.SetPingHandler(func(string) error { return nil }) // never answers
	waitFor(t, 5*time.Second, "both subscribers", func() bool { return r.hub.SubscriberCounts()["ws"] == 2 })
	go func() {
		for {
			if _, _, err := silent.ReadMessage(); err != nil {
				return
			}
		}
	}()
	waitFor(t, 10*time.Second, "the silent client to be dropped", func() bool { return r.hub.SubscriberCounts()["ws"] == 1 })
	base := good.Pings()
	waitFor(t, 10*time.Second, "six more pings", func() bool { return good.Pings() >= base+6 })
	if r.hub.SubscriberCounts()["ws"] != 1 {
		t.Fatal("the client answering pings was dropped")
	}
	r.appendN(0, 1)
	expectHits(t, good.Msgs, 0, 1, 1)
}

func TestOversizedClientMessageClosesWith1009(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{MaxMessageSize: 1024})
	c := mustWS(t, r.base+"/ws")
	c.Conn.WriteMessage(websocket.TextMessage, bytes.Repeat([]byte("a"), 10_000))
	err := <-c.Done
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.CloseMessageTooBig {
		t.Fatalf("ended with %v, want close 1009", err)
	}
}

// TestShutdownSpreadKeepsConnectionsAlive: while subscribers wait their
// turn in the shutdown spread (here up to 2 s, ten read deadlines), pings
// go on, so every WebSocket client still gets its 1001 goodbye rather than
// a ping timeout.
func TestShutdownSpreadKeepsConnectionsAlive(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: 100 * time.Millisecond, PongWait: 100 * time.Millisecond})
	var ws []*proxytest.WSClient
	for range 10 {
		ws = append(ws, mustWS(t, r.base+"/ws"))
	}
	waitFor(t, 5*time.Second, "subscribers", func() bool { return r.hub.SubscriberCounts()["ws"] == 10 })
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
	defer cancel()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	for i, c := range ws {
		err := <-c.Done
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Errorf("ws %d ended with %v, want close 1001", i, err)
		}
	}
}

func TestShutdownClosesSubscribersProperly(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	var ws []*proxytest.WSClient
	for range 5 {
		ws = append(ws, mustWS(t, r.base+"/ws"))
	}
	sse := mustSSE(t, r.base+"/sse", nil)
	waitFor(t, 2*time.Second, "subscribers", func() bool { return r.hub.SubscriberCounts()["ws"] == 5 && r.hub.SubscriberCounts()["sse"] == 1 })
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	start := time.Now()
	if err := r.srv.Shutdown(ctx); err != nil {
		t.Fatalf("shutdown: %v", err)
	}
	if took := time.Since(start); took > 2*time.Second {
		t.Fatalf("shutdown took %v", took)
	}
	for i, c := range ws {
		err := <-c.Done
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("ws %d ended with %v, want close 1001", i, err)
		}
	}
	select { // the client parses the event on a goroutine of its own
	case reason := <-sse.Closed:
		if !strings.Contains(reason, "shutdown") {
			t.Fatalf("sse final event %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("sse subscriber got no final event")
	}
	resp, err := http.Get(r.root + "/readyz")
	if err == nil {
		resp.Body.Close()
		t.Fatalf("still answering after shutdown: %d", resp.StatusCode)
	}
}

func TestHealthReadinessAndStreams(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	get := func(path string) (int, map[string]any) {
		resp, err := http.Get(r.root + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var v map[string]any
		b, _ := io.ReadAll(resp.Body)
		json.Unmarshal(b, &v)
		return resp.StatusCode, v
	}
	if code, _ := get("/healthz"); code != 200 {
		t.Fatalf("healthz %d", code)
	}
	if code, body := get("/readyz"); code != 200 || body["ready"] != true {
		t.Fatalf("readyz %d %v", code, body)
	}
	if code, _ := get("/readyz?upstream=1"); code != 200 {
		t.Fatalf("strict readyz with a streaming upstream: %d", code)
	}
	resp, _ := http.Get(r.root + "/v1/streams")
	var streams []struct {
		Name      string
		Endpoints map[string]string
	}
	json.NewDecoder(resp.Body).Decode(&streams)
	resp.Body.Close()
	if len(streams) != 1 || streams[0].Name != "s" || streams[0].Endpoints["sse"] != "/v1/streams/s/sse" {
		t.Fatalf("streams %+v", streams)
	}
}

func TestReadinessDoesNotHingeOnTheUpstreamUnlessAsked(t *testing.T) {
	hub := fanout.NewHub(fanout.Options{})
	srv := proxy.New([]*proxy.Stream{{Name: "s", Hub: hub, Feed: fakeFeed{upstream.StateWaiting}}}, proxy.Options{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer srv.Shutdown(context.Background())
	for path, want := range map[string]int{"/readyz": 200, "/readyz?upstream=1": 503} {
		resp, err := http.Get("http://" + ln.Addr().String() + path)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != want || !strings.Contains(string(body), `"waiting"`) {
			t.Errorf("%s: %d %s, want %d listing the upstream state", path, resp.StatusCode, body, want)
		}
	}
}

// TestBurstAfterQuietSpellIsNotAWriteTimeout is the regression test for a
// bug the soak found: the SSE writer set its write deadline only before
// flushing, but its buffer passes large batches on earlier, under the
// deadline left from the last write. A burst after a quiet spell longer
// than the write timeout then dropped a healthy subscriber.
func TestBurstAfterQuietSpellIsNotAWriteTimeout(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{WriteTimeout: 200 * time.Millisecond, PingInterval: time.Hour})
	sse := mustSSE(t, r.base+"/sse", nil)
	nd := readNDJSONStream(t, r.root+"/api/1/stream/s")
	waitFor(t, 2*time.Second, "subscribers", func() bool { return len(r.hub.Subscribers()) == 2 })
	r.hub.Append(hitN(0), time.Now())
	next(t, sse.Msgs, 5*time.Second)
	quiet := time.Now()
	waitFor(t, 2*time.Second, "a quiet spell past the write timeout", func() bool { return time.Since(quiet) > 400*time.Millisecond })
	big := bytes.Repeat([]byte("z"), 2000)
	for i := 1; i <= 200; i++ { // ~400 KB: far beyond the writer's buffer
		r.hub.Append([]byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"pad":"%s"}`, i, big)), time.Now())
	}
	for range 200 {
		next(t, sse.Msgs, 5*time.Second)
	}
	if got := nd(201); got != 201 {
		t.Fatalf("drop-in subscriber got %d of 201 records", got)
	}
}

// readNDJSONStream subscribes to the drop-in endpoint and returns a
// function that reads until n records arrived (or 5 s passed).
func readNDJSONStream(t *testing.T, u string) func(n int) int {
	t.Helper()
	resp, err := http.Get(u)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { resp.Body.Close() })
	br := bufio.NewReaderSize(resp.Body, 1<<20)
	return func(n int) int {
		got := 0
		done := make(chan struct{})
		go func() {
			defer close(done)
			for got < n {
				line, err := br.ReadSlice('\n')
				if err != nil {
					return
				}
				if len(line) > 2 {
					got++
				}
			}
		}()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			resp.Body.Close()
			<-done
		}
		return got
	}
}
