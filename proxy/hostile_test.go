package proxy_test

import (
	"bytes"
	"net"
	"net/http"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"lsmux/fanout"
	"lsmux/proxy"
)

// TestHalfOpenConnectionsAreReclaimed: a thousand clients that connect
// and never finish their request headers are cut off by the header
// timeout, and the server's goroutines come back down.
func TestHalfOpenConnectionsAreReclaimed(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{ReadHeaderTimeout: 300 * time.Millisecond})
	runtime.GC()
	base := runtime.NumGoroutine()
	addr := strings.TrimPrefix(r.root, "http://")
	var conns []net.Conn
	for i := range 1000 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatalf("conn %d: %v", i, err)
		}
		if i%2 == 0 {
			c.Write([]byte("GET /v1/streams/s/ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n")) // never finished
		}
		conns = append(conns, c)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	// Every one of them is closed by the server.
	for i, c := range conns {
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		buf := make([]byte, 512)
		for {
			if _, err := c.Read(buf); err != nil {
				if ne, ok := err.(net.Error); ok && ne.Timeout() {
					t.Fatalf("conn %d still open after 5s", i)
				}
				break
			}
		}
	}
	waitFor(t, 5*time.Second, "server goroutines back to the baseline", func() bool { return runtime.NumGoroutine() <= base+5 })
	// And the server still serves.
	r.appendN(0, 1)
	expectHits(t, mustSSE(t, r.base+"/sse?from=oldest", nil).Msgs, 0, 1, 1)
}

func TestHugeHeadersAndQueryStringsAreRefused(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for name, req := range map[string]func() *http.Request{
		"headers": func() *http.Request {
			q, _ := http.NewRequest("GET", r.base+"/sse", nil)
			q.Header.Set("X-Junk", strings.Repeat("a", 200<<10))
			return q
		},
		"query": func() *http.Request {
			q, _ := http.NewRequest("GET", r.base+"/sse?filter="+strings.Repeat("a", 200<<10), nil)
			return q
		},
	} {
		resp, err := http.DefaultClient.Do(req())
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusRequestHeaderFieldsTooLarge {
			t.Errorf("enormous %s: %d, want 431", name, resp.StatusCode)
		}
	}
	// A long but acceptable filter is refused by the filter's own limit.
	resp, _ := http.Get(r.base + "/sse?filter=" + strings.Repeat("a", 5000))
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("5000-byte filter: %d, want 400", resp.StatusCode)
	}
}

// TestClientFramesCannotHurtTheStream: binary frames and a flood of small
// messages are read and dropped; the client keeps getting its hits.
func TestClientFramesCannotHurtTheStream(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	c := mustWS(t, r.base+"/ws")
	other := mustWS(t, r.base+"/ws")
	waitFor(t, 2*time.Second, "subscribers", func() bool { return r.hub.SubscriberCounts()["ws"] == 2 })
	c.Conn.WriteMessage(websocket.BinaryMessage, bytes.Repeat([]byte{0xff}, 1000))
	for range 10_000 {
		if err := c.Conn.WriteMessage(websocket.TextMessage, []byte(`{"hello":1}`)); err != nil {
			t.Fatal(err)
		}
	}
	r.appendN(0, 3)
	expectHits(t, c.Msgs, 0, 3, 1)
	expectHits(t, other.Msgs, 0, 3, 1)
}

// TestOriginSpoofsAreRefused: lookalike origins are not the same origin.
func TestOriginSpoofsAreRefused(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	host := strings.TrimPrefix(r.root, "http://")
	for _, origin := range []string{"http://" + host + ".evil.net", "http://evil.net/" + host, "http://user@evil.net", "null"} {
		h := http.Header{"Origin": {origin}}
		_, resp, err := websocket.DefaultDialer.Dial(strings.Replace(r.base, "http", "ws", 1)+"/ws", h)
		if err == nil || resp == nil || resp.StatusCode != 403 {
			t.Errorf("origin %q: %v, want 403", origin, err)
		}
	}
}
