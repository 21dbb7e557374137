package upstream_test

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"
	"time"

	"lsmux/upstream"
)

// TestErrorAnswerWhoseBodyNeverEndsIsRetried: a 503 or a redirect whose
// body never ends (a balancer that sends the headers and then hangs) does
// not hold the slot: the error is recorded and the slot tries again
// after the reconnect delay.
func TestErrorAnswerWhoseBodyNeverEndsIsRetried(t *testing.T) {
	for _, code := range []int{http.StatusServiceUnavailable, http.StatusFound} {
		t.Run(fmt.Sprint(code), func(t *testing.T) {
			var reqs atomic.Int32
			release := make(chan struct{})
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				reqs.Add(1)
				if code == http.StatusFound {
					w.Header().Set("Location", "/api/1/stream/s")
				}
				w.WriteHeader(code)
				w.Write([]byte(`{"error":"`))
				w.(http.Flusher).Flush()
				select {
				case <-release:
				case <-r.Context().Done():
				}
			}))
			defer srv.Close()
			defer close(release) // before Close, which waits for the handlers
			pool, err := upstream.NewPool(upstream.Config{
				StreamURL: srv.URL + "/api/1/stream/s", Tokens: upstream.StaticToken("t"),
				Policy:                upstream.Policy{Delay: 50 * time.Millisecond, MaxDelay: 100 * time.Millisecond, Jitter: -1},
				ResponseHeaderTimeout: 200 * time.Millisecond,
			})
			if err != nil {
				t.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { pool.Run(ctx, &collector{}); close(done) }()
			defer func() { cancel(); <-done }()
			waitFor(t, 20*time.Second, "the slot to record the error and try again", func() bool {
				c := pool.Conns()[0]
				return reqs.Load() >= 12 && c.LastError != "" // a 302 loop is 10 requests an attempt
			})
		})
	}
}

// TestSharedTokenFetchOutlivesTheFirstCaller: one token fetch serves
// every caller waiting for it; the first caller's context ending (its
// stream stepping down) fails neither the fetch nor the others.
func TestSharedTokenFetchOutlivesTheFirstCaller(t *testing.T) {
	var reqs atomic.Int32
	arrived, release := make(chan struct{}, 4), make(chan struct{})
	ims := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		reqs.Add(1)
		arrived <- struct{}{}
		select {
		case <-release:
		case <-r.Context().Done():
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Write([]byte(`{"access_token":"tok","token_type":"bearer","expires_in":86399}`))
	}))
	defer ims.Close()
	cc := upstream.NewClientCredentials(ims.URL, "id", "secret", "", 0, nil)
	ctxA, cancelA := context.WithCancel(context.Background())
	aDone := make(chan error, 1)
	go func() { _, err := cc.Token(ctxA); aDone <- err }()
	<-arrived
	type result struct {
		tok string
		err error
	}
	bDone := make(chan result, 1)
	go func() { tok, err := cc.Token(context.Background()); bDone <- result{tok, err} }()
	cancelA()
	if err := <-aDone; err == nil {
		t.Error("the first caller, whose context ended, got a token")
	}
	close(release)
	b := <-bDone
	if b.err != nil || b.tok != "tok" {
		t.Fatalf("the second caller: %q, %v; want the token", b.tok, b.err)
	}
	if n := reqs.Load(); n != 1 {
		t.Errorf("%d token requests; want the one both callers shared", n)
	}
}
