package proxy_test

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"runtime"
	"runtime/pprof"
	"strings"
	"testing"
	"time"

	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/proxy/proxytest"
	"lsmux/upstream"
)

// serverGoroutines counts the goroutines running lsmux's proxy code by
// the function that identifies them.
func serverGoroutines() map[string]int {
	var buf bytes.Buffer
	pprof.Lookup("goroutine").WriteTo(&buf, 2)
	counts := map[string]int{}
	for _, g := range strings.Split(buf.String(), "\n\n") {
		for _, fn := range []string{"(*wsPeer).read", "(*ssePeer).watch", "(*session).work", "(*Server).handleWS", "(*Server).handleSSE"} {
			if strings.Contains(g, "lsmux/proxy."+fn) {
				counts[fn]++
			}
		}
	}
	return counts
}

// TestIdleSubscribersKeepOneGoroutineEach: an idle WebSocket or SSE
// subscriber (HTTP/1.1) is its reader goroutine and nothing else: no
// handler waiting, no writer. A hit starts a writer for each, every one
// gets it, and the writers end again. This is what keeps an idle
// subscriber under 10 KB (docs/performance.md).
func TestIdleSubscribersKeepOneGoroutineEach(t *testing.T) {
	const n = 40
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: time.Hour})
	var chans []<-chan msg
	for range n {
		chans = append(chans, mustWS(t, r.base+"/ws").Msgs, mustSSE(t, r.base+"/sse", nil).Msgs)
	}
	waitFor(t, 10*time.Second, "all subscribed", func() bool {
		c := r.hub.SubscriberCounts()
		return c["ws"] == n && c["sse"] == n
	})
	idle := func(when string) {
		t.Helper()
		want := map[string]int{"(*wsPeer).read": n, "(*ssePeer).watch": n}
		var got map[string]int
		deadline := time.Now().Add(10 * time.Second)
		for got = serverGoroutines(); !maps.Equal(got, want); got = serverGoroutines() {
			if time.Now().After(deadline) {
				t.Fatalf("%s: goroutines %v; want %d readers per transport and nothing else", when, got, n)
			}
			time.Sleep(10 * time.Millisecond) // polling a condition, with the deadline above
		}
	}
	idle("before any hit")
	r.appendN(0, 1)
	for i, ch := range chans {
		if m := next(t, ch, 10*time.Second); m.Type != "hit" || !bytes.Equal(m.Hit, hitN(0)) {
			t.Fatalf("subscriber %d got %+v, want hit 0", i, m)
		}
	}
	idle("after a hit")
}

// TestFirstPingsAreSpreadOut: clients that connect together are not
// pinged together; the first ping comes at a random point of the first
// interval (from half of it on), so 19,000 connections do not ping in
// lockstep ever after.
func TestFirstPingsAreSpreadOut(t *testing.T) {
	const n, interval = 30, 400 * time.Millisecond
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: interval, PongWait: 10 * time.Second})
	firsts := make(chan time.Duration, n)
	for range n {
		c := dialRawWS(t, r.base+"/ws")
		start := time.Now()
		go func() {
			c.conn.SetReadDeadline(time.Now().Add(10 * time.Second))
			var hdr [2]byte
			for {
				if _, err := io.ReadFull(c.br, hdr[:]); err != nil || hdr[1] >= 126 {
					firsts <- -1 // no ping: the read failed, or a frame this test does not expect
					return
				}
				if _, err := c.br.Discard(int(hdr[1])); err != nil {
					firsts <- -1
					return
				}
				if hdr[0]&0x0f == 0x9 {
					firsts <- time.Since(start)
					return
				}
			}
		}()
	}
	lo, hi := time.Hour, time.Duration(0)
	for range n {
		d := <-firsts
		if d < 0 {
			t.Fatal("a client got no ping")
		}
		lo, hi = min(lo, d), max(hi, d)
	}
	if lo < interval/2-20*time.Millisecond {
		t.Errorf("a first ping came %v after connecting, before half the interval (%v)", lo, interval/2)
	}
	if hi-lo < interval/5 {
		t.Errorf("first pings of %d clients all within %v (%v..%v): not spread over the interval", n, hi-lo, lo, hi)
	}
}

// TestClientThatStopsReadingGetsEverythingIntact: a burst far beyond the
// socket buffers, sent while the clients read nothing, fills their
// sockets part way through a frame or chunk; the rest is kept and
// written first when they read again, so WebSocket frames and SSE's
// chunked response arrive whole and in order.
func TestClientThatStopsReadingGetsEverythingIntact(t *testing.T) {
	r := serve(t, fanout.Options{MaxHits: 10000, MaxBytes: 64 << 20}, proxy.Options{PingInterval: time.Hour})
	ws := dialRawWS(t, r.base+"/ws")
	sseConn, err := net.Dial("tcp", strings.TrimPrefix(r.root, "http://"))
	if err != nil {
		t.Fatal(err)
	}
	defer sseConn.Close()
	fmt.Fprintf(sseConn, "GET /v1/streams/s/sse HTTP/1.1\r\nHost: %s\r\n\r\n", strings.TrimPrefix(r.root, "http://"))
	waitFor(t, 5*time.Second, "both subscribed", func() bool { return len(r.hub.Subscribers()) == 2 })
	const n = 4000
	pad := strings.Repeat("x", 2000)
	for i := range n { // 8 MB while nobody reads: more than loopback's socket buffers
		r.hub.Append(fmt.Appendf(nil, `{"hitIdHigh":1,"hitIdLow":%d,"pad":"%s"}`, i, pad), time.Now())
	}
	for i := range n {
		op, payload := ws.frame(t)
		if want := fmt.Sprintf(`"hitIdLow":%d,`, i); op != 0x1 || !strings.Contains(string(payload), want) {
			t.Fatalf("websocket message %d: opcode %d %.60q, want hit %d", i, op, payload, i)
		}
	}
	sseConn.SetReadDeadline(time.Now().Add(20 * time.Second))
	resp, err := http.ReadResponse(bufio.NewReader(sseConn), nil)
	if err != nil {
		t.Fatal(err)
	}
	events := bufio.NewScanner(resp.Body) // net/http undoes the chunking: a broken chunk is an error
	events.Buffer(nil, 1<<20)
	got := 0
	for got < n && events.Scan() {
		if line := events.Text(); strings.HasPrefix(line, "data: ") {
			if want := fmt.Sprintf(`"hitIdLow":%d,`, got); !strings.Contains(line, want) {
				t.Fatalf("sse event %d: %.60q", got, line)
			}
			got++
		}
	}
	if got != n {
		t.Fatalf("sse: %d of %d events, then %v", got, n, events.Err())
	}
}

// TestSSEOverHTTP10IsNotChunked: an HTTP/1.0 client cannot read a chunked
// response; it gets the event stream plain, ended by the connection's
// close, as net/http serves it.
func TestSSEOverHTTP10IsNotChunked(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: time.Hour})
	host := strings.TrimPrefix(r.root, "http://")
	conn, err := net.Dial("tcp", host)
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	fmt.Fprintf(conn, "GET /v1/streams/s/sse HTTP/1.0\r\nHost: %s\r\n\r\n", host)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || len(resp.TransferEncoding) > 0 {
		t.Fatalf("status %d, transfer encoding %v: want 200, not chunked", resp.StatusCode, resp.TransferEncoding)
	}
	line, err := br.ReadString('\n')
	if err != nil || line != ": lsmux s\n" {
		t.Fatalf("first line %q (%v), want the stream's comment, unframed", line, err)
	}
}

// TestSSEOverTLSWithHTTP11: SSE on a hijacked TLS connection (HTTP/1.1,
// no HTTP/2) is written through the TLS layer, a batch at a time, and
// reads as any other event stream.
func TestSSEOverTLSWithHTTP11(t *testing.T) {
	certs := httptest.NewTLSServer(http.NotFoundHandler()) // for its certificate and a client that trusts it
	defer certs.Close()
	hub := fanout.NewHub(fanout.Options{FirstSeq: 1})
	srv := proxy.New([]*proxy.Stream{{Name: "s", Hub: hub, Feed: fakeFeed{upstream.StateStreaming}}}, proxy.Options{PingInterval: time.Hour})
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() {
		done <- srv.Serve(tls.NewListener(ln, &tls.Config{Certificates: certs.TLS.Certificates, NextProtos: []string{"http/1.1"}}))
	}()
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		<-done
	}()
	client := certs.Client()
	sse, err := proxytest.DialSSEClient(client, "https://"+ln.Addr().String()+"/v1/streams/s/sse", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	if sse.Resp.ProtoMajor != 1 {
		t.Fatalf("served over %s, want HTTP/1.1", sse.Resp.Proto)
	}
	waitFor(t, 5*time.Second, "subscribed", func() bool { return hub.SubscriberCounts()["sse"] == 1 })
	for i := range 300 {
		hub.Append(hitN(i), time.Now())
	}
	expectHits(t, sse.Msgs, 0, 300, 1)
}

// TestFilteredSubscriberKeepsItsWriter: the hub's notifier leaves a
// filtered subscriber to a writer goroutine (a filter can wait for its
// budget); that writer lingers between hits, so a filtered subscriber at a
// steady rate is served by one goroutine, not one started per hit.
func TestFilteredSubscriberKeepsItsWriter(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{PingInterval: time.Hour, WriterLinger: time.Minute})
	ws := mustWS(t, r.base+"/ws?filter="+url.QueryEscape(`hit.n >= 0`))
	waitFor(t, 10*time.Second, "subscribed", func() bool { return r.hub.SubscriberCounts()["ws"] == 1 })
	writers := map[string]bool{}
	for i := range 20 {
		r.appendN(i, 1)
		if m := next(t, ws.Msgs, 10*time.Second); m.Type != "hit" || !bytes.Equal(m.Hit, hitN(i)) {
			t.Fatalf("got %+v, want hit %d", m, i)
		}
		ids := sessionWriters()
		if len(ids) != 1 {
			t.Fatalf("after hit %d: %d writer goroutines, want the one lingering writer", i, len(ids))
		}
		writers[ids[0]] = true
	}
	if len(writers) != 1 {
		t.Errorf("20 hits were written by %d writer goroutines, want 1", len(writers))
	}
}

// sessionWriters lists the ids of the goroutines running a session's
// writer.
func sessionWriters() []string {
	buf := make([]byte, 1<<20)
	buf = buf[:runtime.Stack(buf, true)]
	var ids []string
	for _, g := range strings.Split(string(buf), "\n\n") {
		if strings.Contains(g, "lsmux/proxy.(*session).work") {
			id, _, _ := strings.Cut(strings.TrimPrefix(g, "goroutine "), " ")
			ids = append(ids, id)
		}
	}
	return ids
}
