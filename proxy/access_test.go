package proxy_test

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/proxy/proxytest"
)

func status(t *testing.T, method, url string, header http.Header) (*http.Response, string) {
	t.Helper()
	req, _ := http.NewRequest(method, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error string }
	if strings.HasPrefix(resp.Header.Get("Content-Type"), "application/json") && resp.StatusCode >= 400 {
		json.NewDecoder(resp.Body).Decode(&body)
	}
	resp.Body.Close()
	return resp, body.Error
}

func TestAuthTokens(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{AuthTokens: []string{"tok-one", "tok-two"}})
	for _, c := range []struct {
		name   string
		url    string
		header http.Header
		want   int
	}{
		{"no token", r.base + "/sse", nil, 401},
		{"wrong token", r.base + "/sse", http.Header{"Authorization": {"Bearer nope"}}, 401},
		{"a prefix of a token", r.base + "/sse", http.Header{"Authorization": {"Bearer tok-on"}}, 401},
		{"wrong query token", r.base + "/sse?access_token=nope", nil, 401},
		{"status without token", r.root + "/v1/status", nil, 401},
		{"drop-in without token", r.root + "/api/1/stream/s", nil, 401},
		{"health stays open", r.root + "/healthz", nil, 200},
		{"readiness stays open", r.root + "/readyz", nil, 200},
		{"status with the second token", r.root + "/v1/status", http.Header{"Authorization": {"Bearer tok-two"}}, 200},
	} {
		resp, msg := status(t, "GET", c.url, c.header)
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d (%s), want %d", c.name, resp.StatusCode, msg, c.want)
		}
		if c.want == 401 && (resp.Header.Get("WWW-Authenticate") == "" || !strings.Contains(msg, "LSMUX_AUTH_TOKEN")) {
			t.Errorf("%s: 401 without WWW-Authenticate or an explanation: %q", c.name, msg)
		}
	}
	// Subscriptions with a good token, by header and by query parameter.
	sse := mustSSE(t, r.base+"/sse?from=oldest", http.Header{"Authorization": {"Bearer tok-one"}})
	byQuery := mustSSE(t, r.base+"/sse?from=oldest&access_token=tok-two", nil)
	ws, _, err := proxytest.DialWS(r.base+"/ws?from=oldest", http.Header{"Authorization": {"Bearer tok-one"}})
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	if _, resp, err := proxytest.DialWS(r.base+"/ws", nil); err == nil || resp == nil || resp.StatusCode != 401 {
		t.Fatalf("websocket without token: %v", err)
	}
	r.appendN(0, 1)
	for _, ch := range []<-chan msg{sse.Msgs, byQuery.Msgs, ws.Msgs} {
		expectHits(t, ch, 0, 1, 1)
	}
}

func TestProtectHealth(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{AuthTokens: []string{"t"}, ProtectHealth: true, Metrics: http.NotFoundHandler()})
	for _, path := range []string{"/healthz", "/readyz", "/metrics"} {
		if resp, _ := status(t, "GET", r.root+path, nil); resp.StatusCode != 401 {
			t.Errorf("%s without token: %d, want 401", path, resp.StatusCode)
		}
	}
}

func TestOrigins(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{AllowedOrigins: []string{"https://dash.example.com"}})
	host := strings.TrimPrefix(r.root, "http://")
	for _, c := range []struct {
		origin string
		want   int
	}{
		{"", 101},
		{"http://" + host, 101}, // same origin
		{"https://dash.example.com", 101},
		{"https://evil.example.net", 403},
		{"https://dash.example.com.evil.net", 403},
	} {
		h := http.Header{}
		if c.origin != "" {
			h.Set("Origin", c.origin)
		}
		conn, resp, err := websocket.DefaultDialer.Dial(strings.Replace(r.base, "http", "ws", 1)+"/ws", h)
		got := 0
		if resp != nil {
			got = resp.StatusCode
		}
		if conn != nil {
			conn.Close()
		}
		if got != c.want {
			t.Errorf("websocket from origin %q: %d (%v), want %d", c.origin, got, err, c.want)
		}
	}
	resp, msg := status(t, "GET", r.base+"/sse", http.Header{"Origin": {"https://evil.example.net"}})
	if resp.StatusCode != 403 || !strings.Contains(msg, "LSMUX_ALLOWED_ORIGINS") {
		t.Fatalf("SSE from a foreign origin: %d %q", resp.StatusCode, msg)
	}
	sse, err := proxytest.DialSSE(r.base+"/sse", http.Header{"Origin": {"https://dash.example.com"}})
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	if got := sse.Resp.Header.Get("Access-Control-Allow-Origin"); got != "https://dash.example.com" {
		t.Fatalf("CORS header %q", got)
	}
	pre, _ := status(t, "OPTIONS", r.base+"/sse", http.Header{"Origin": {"https://dash.example.com"}, "Access-Control-Request-Headers": {"authorization"}})
	if pre.StatusCode != 204 || !strings.Contains(pre.Header.Get("Access-Control-Allow-Headers"), "Authorization") {
		t.Fatalf("preflight: %d %v", pre.StatusCode, pre.Header)
	}
}

func TestSubscriberLimits(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{MaxSubscribers: 3, MaxPerAddress: 2})
	a := mustSSE(t, r.base+"/sse", nil)
	mustWS(t, r.base+"/ws")
	resp, msg := status(t, "GET", r.base+"/sse", nil)
	if resp.StatusCode != http.StatusTooManyRequests || !strings.Contains(msg, "LSMUX_MAX_SUBSCRIBERS_PER_ADDRESS") {
		t.Fatalf("third from one address: %d %q, want 429", resp.StatusCode, msg)
	}
	if s, err := strconv.Atoi(resp.Header.Get("Retry-After")); err != nil || s < 1 {
		t.Fatalf("Retry-After %q", resp.Header.Get("Retry-After"))
	}
	if _, resp, err := proxytest.DialWS(r.base+"/ws", nil); err == nil || resp.StatusCode != 429 {
		t.Fatalf("websocket past the per-address limit: %v", err)
	}
	// A client from another loopback address (127.0.0.2) reaches the
	// total limit.
	tr := &http.Transport{DialContext: (&net.Dialer{LocalAddr: &net.TCPAddr{IP: net.ParseIP("127.0.0.2")}}).DialContext}
	defer tr.CloseIdleConnections()
	from2 := &http.Client{Transport: tr}
	c3, err := proxytest.DialSSEClient(from2, r.base+"/sse", nil)
	if err != nil {
		t.Fatalf("the third subscriber, from 127.0.0.2: %v", err)
	}
	defer c3.Close()
	req, _ := http.NewRequest("GET", r.base+"/sse", nil)
	resp, err = from2.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var body struct{ Error string }
	json.NewDecoder(resp.Body).Decode(&body)
	resp.Body.Close()
	msg = body.Error
	if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" || !strings.Contains(msg, "LSMUX_MAX_SUBSCRIBERS") {
		t.Fatalf("past the total: %d %q, want 503 with Retry-After", resp.StatusCode, msg)
	}
	// Leaving frees the place.
	a.Close()
	waitFor(t, 2*time.Second, "the place to free", func() bool {
		resp, _ := status(t, "GET", r.root+"/v1/status", nil)
		return resp.StatusCode == 200 && r.hub.SubscriberCounts()["sse"] == 1
	})
	// The hub forgets the subscriber a moment before its admission is
	// released, so a client retries as Retry-After says.
	var b *proxytest.SSEClient
	waitFor(t, 5*time.Second, "a new subscription to be admitted after one left", func() bool {
		b, err = proxytest.DialSSEClient(from2, r.base+"/sse", nil)
		return err == nil
	})
	b.Close()
}
