package proxy_test

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"lsmux/fanout"
	"lsmux/proxy"
)

// overLimit hits the cost limit on every hit.
func overLimit(n int) string {
	l := "[" + strings.Repeat("1,", 99) + "1]"
	return fmt.Sprintf(`%s.all(x, %s.all(y, x != y || hit.n != %d))`, l, l, n)
}

// TestFilterCostEndsTheSubscriptionWithAReason: a subscriber whose filter
// hits the cost limit again and again is closed with 1008 saying
// filter-cost (WebSocket) or a final close event with that reason (SSE).
func TestFilterCostEndsTheSubscriptionWithAReason(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{Limits: fanout.Limits{FilterStrikes: 3}})
	r.appendN(0, 20)
	ws := mustWS(t, r.base+"/ws?from=oldest&filter="+url.QueryEscape(overLimit(1)))
	err := <-ws.Done
	var ce *websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != websocket.ClosePolicyViolation || !strings.HasPrefix(ce.Text, "filter-cost") {
		t.Fatalf("websocket ended with %v, want 1008 filter-cost", err)
	}
	sse := mustSSE(t, r.base+"/sse?from=oldest&filter="+url.QueryEscape(overLimit(2)), nil)
	select {
	case reason := <-sse.Closed:
		if !strings.Contains(reason, `"filter-cost"`) {
			t.Fatalf("final event %q", reason)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("no final close event")
	}
}

// TestCompileRateIsPerAddress: new filters cost CPU to compile, so each
// address gets a few per second (429 with Retry-After past its burst);
// filters already cached cost nothing, /v1/validate counts too, and other
// addresses are not affected.
func TestCompileRateIsPerAddress(t *testing.T) {
	srv := newServer(t, proxy.Options{CompileRate: 1, CompileBurst: 3})
	validate := func(remote, filter string) *httptest.ResponseRecorder {
		return do(t, srv, "GET", "http://127.0.0.1/v1/validate?filter="+url.QueryEscape(filter), remote, nil)
	}
	for i := range 3 {
		if rec := validate("10.0.0.1:1", fmt.Sprintf("hit.n == %d", i)); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"valid":true`) {
			t.Fatalf("compile %d within the burst: %d %s", i, rec.Code, rec.Body)
		}
	}
	rec := validate("10.0.0.1:1", "hit.n == 99")
	if rec.Code != http.StatusTooManyRequests || rec.Header().Get("Retry-After") == "" || !strings.Contains(rec.Body.String(), "LSMUX_COMPILE_RATE") {
		t.Fatalf("past the burst: %d %q %s", rec.Code, rec.Header().Get("Retry-After"), rec.Body)
	}
	if wait := "retry in " + rec.Header().Get("Retry-After") + "s"; !strings.Contains(rec.Body.String(), wait) {
		t.Errorf("Retry-After %s, but the message says: %s", rec.Header().Get("Retry-After"), rec.Body)
	}
	if rec := validate("10.0.0.2:1", "hit.n == 99"); rec.Code != 200 {
		t.Fatalf("another address: %d", rec.Code)
	}
	// A subscription with a filter someone already uses costs no compile.
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	sub := func(remote, filter string) int {
		req := httptest.NewRequest("GET", "http://127.0.0.1/v1/streams/s/sse?filter="+url.QueryEscape(filter), nil).WithContext(ctx)
		req.RemoteAddr = remote
		rec := httptest.NewRecorder()
		srv.Handler().ServeHTTP(rec, req)
		return rec.Code
	}
	if code := sub("10.0.0.3:1", "hit.n == 7"); code != 200 {
		t.Fatalf("first subscription: %d", code)
	}
	for range 5 {
		if code := sub("10.0.0.1:1", "hit.n == 7"); code != 200 {
			t.Fatalf("a cached filter from a rate-limited address: %d", code)
		}
	}
}

// TestValidateFloodsEvictNothingInUse: 2,000 short subscriptions with
// distinct filters and 3,000 validations later, a filter a subscriber
// keeps using is still compiled and cached.
func TestValidateFloodsEvictNothingInUse(t *testing.T) {
	c, _ := fanout.NewCompiler(0)
	r := serve(t, fanout.Options{}, proxy.Options{Compiler: c, CompileRate: -1})
	steady := mustSSE(t, r.base+"/sse?filter="+url.QueryEscape(`hit.n == 1`), nil)
	defer steady.Close()
	ctx, cancel := context.WithCancel(context.Background())
	cancel() // each subscription ends at once: its filter goes idle
	for i := range 2000 {
		req := httptest.NewRequest("GET", "http://127.0.0.1/v1/streams/s/sse?filter="+url.QueryEscape(fmt.Sprintf("hit.n == %d", 1000+i)), nil).WithContext(ctx)
		rec := httptest.NewRecorder()
		r.srv.Handler().ServeHTTP(rec, req)
		if rec.Code != 200 {
			t.Fatalf("subscription %d: %d", i, rec.Code)
		}
	}
	for i := range 3000 {
		req := httptest.NewRequest("GET", "http://127.0.0.1/v1/validate?filter="+url.QueryEscape(fmt.Sprintf("hit.n == %d", 5000+i)), nil)
		rec := httptest.NewRecorder()
		r.srv.Handler().ServeHTTP(rec, req)
	}
	if !c.Cached(`hit.n == 1`) || c.Cached(`hit.n == 5000`) {
		t.Fatalf("the filter in use cached: %v; a validated one cached: %v", c.Cached(`hit.n == 1`), c.Cached(`hit.n == 5000`))
	}
	r.appendN(1, 1) // hitN(1) has "n":1
	expectHits(t, steady.Msgs, 1, 1, 1)
}
