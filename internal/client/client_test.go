package client

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// fakeLsmux answers each connection with the next scripted reply and
// records the requests.
type fakeLsmux struct {
	mu      sync.Mutex
	replies []func(w http.ResponseWriter)
	reqs    []*http.Request
	streams string // GET /v1/streams's answer ("": 404)
}

func (f *fakeLsmux) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path == "/v1/streams" {
		if f.streams == "" {
			http.NotFound(w, r)
			return
		}
		fmt.Fprint(w, f.streams)
		return
	}
	f.mu.Lock()
	f.reqs = append(f.reqs, r.Clone(context.Background()))
	var reply func(http.ResponseWriter)
	if len(f.replies) > 0 {
		reply, f.replies = f.replies[0], f.replies[1:]
	}
	f.mu.Unlock()
	if reply == nil {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	reply(w)
}

func events(body string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "text/event-stream")
		fmt.Fprint(w, body)
	}
}

func refuse(status int, msg string) func(http.ResponseWriter) {
	return func(w http.ResponseWriter) {
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Retry-After", "1")
		w.WriteHeader(status)
		fmt.Fprintf(w, `{"error":%q}`, msg)
	}
}

// TestReconnectResumesAfterTheLastHit: a stream that ends is reopened
// after a jittered wait with Last-Event-ID set to the last hit handed
// over, a 503 is retried no sooner than its Retry-After, and the handler
// sees every hit once, in order, with the gap notice in its place.
func TestReconnectResumesAfterTheLastHit(t *testing.T) {
	f := &fakeLsmux{replies: []func(http.ResponseWriter){
		events("id: 10\nevent: hit\ndata: {\"a\":10}\n\nid: 11\nevent: hit\ndata: {\"a\":11}\n\n"),
		refuse(http.StatusServiceUnavailable, "replays busy"),
		events("event: gap\ndata: {\"from\":12,\"to\":13}\n\nid: 11\nevent: hit\ndata: {\"a\":11}\n\nid: 14\nevent: hit\ndata: {\"a\":14}\n\n"),
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	s, err := New(Options{Server: srv.URL, Stream: "demo", From: "oldest", Filter: `hit.x == "y"`, Token: "tok", RetryMin: 20 * time.Millisecond, RetryMax: 40 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var got []string
	var waits []time.Duration
	err = s.Run(ctx, func(ev Event) error {
		switch ev.Kind {
		case Hit:
			got = append(got, fmt.Sprintf("%d %s", ev.Seq, ev.Data))
			if ev.Seq == 14 {
				return errors.New("enough")
			}
		case Gap:
			got = append(got, fmt.Sprintf("gap %d..%d", ev.From, ev.To))
		case Disconnected:
			waits = append(waits, ev.Wait)
		}
		return nil
	})
	if err == nil || err.Error() != "enough" {
		t.Fatalf("Run: %v, want the handler's error", err)
	}
	want := []string{`10 {"a":10}`, `11 {"a":11}`, "gap 12..13", `14 {"a":14}`}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Errorf("handed over %q, want %q", got, want)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) != 3 {
		t.Fatalf("%d connections, want 3", len(f.reqs))
	}
	first := f.reqs[0]
	if q := first.URL.Query(); q.Get("from") != "oldest" || q.Get("filter") != `hit.x == "y"` || first.Header.Get("Last-Event-ID") != "" {
		t.Errorf("first request %s (Last-Event-ID %q): want from=oldest and the filter", first.URL, first.Header.Get("Last-Event-ID"))
	}
	if first.Header.Get("Authorization") != "Bearer tok" || first.URL.Path != "/v1/streams/demo/sse" {
		t.Errorf("first request %s with Authorization %q", first.URL.Path, first.Header.Get("Authorization"))
	}
	for _, r := range f.reqs[1:] {
		if r.Header.Get("Last-Event-ID") != "11" || r.URL.Query().Get("from") != "" {
			t.Errorf("reconnect %s with Last-Event-ID %q: want 11 and no from=", r.URL, r.Header.Get("Last-Event-ID"))
		}
	}
	// After a connection that delivered, the wait starts again at
	// RetryMin (jittered to half..all of it); after the 503 it is its
	// Retry-After (1 s), longer than the doubled backoff.
	if len(waits) != 2 || waits[0] < 10*time.Millisecond || waits[0] > 20*time.Millisecond || waits[1] != time.Second {
		t.Errorf("waits %v: want 10-20ms, then the 503's Retry-After, 1s", waits)
	}
}

// TestRefusalsEndTheRun: answers retrying cannot change end Run with
// lsmux's own explanation; a filter-cost close too.
func TestRefusalsEndTheRun(t *testing.T) {
	for _, tc := range []struct {
		reply  func(http.ResponseWriter)
		status int
		msg    string
	}{
		{refuse(http.StatusUnauthorized, "missing or wrong token"), 401, "missing or wrong token"},
		{refuse(http.StatusNotFound, `no stream named "x"`), 404, `no stream named "x"`},
		{refuse(http.StatusBadRequest, "filter does not compile"), 400, "filter does not compile"},
		{events("event: close\ndata: {\"reason\":\"filter-cost\"}\n\n"), 0, "filter costs more"},
	} {
		f := &fakeLsmux{replies: []func(http.ResponseWriter){tc.reply}}
		srv := httptest.NewServer(f)
		s, err := New(Options{Server: srv.URL, Stream: "x", RetryMin: time.Millisecond})
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		err = s.Run(ctx, func(Event) error { return nil })
		cancel()
		srv.Close()
		var se *StatusError
		if !errors.As(err, &se) || se.Status != tc.status || !strings.Contains(se.Message, tc.msg) {
			t.Errorf("Run: %v, want status %d with %q", err, tc.status, tc.msg)
		}
	}
}

// TestRetriesUntilCancelled: a server that keeps refusing with 503 and
// 429 is retried with waits that grow to RetryMax, until the context
// ends; Run then returns nil.
func TestRetriesUntilCancelled(t *testing.T) {
	f := &fakeLsmux{replies: []func(http.ResponseWriter){refuse(http.StatusTooManyRequests, "too many"), refuse(http.StatusServiceUnavailable, "busy")}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	s, err := New(Options{Server: srv.URL, Stream: "x", RetryMin: time.Millisecond, RetryMax: 8 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	var waits []time.Duration
	err = s.Run(ctx, func(ev Event) error {
		if ev.Kind == Disconnected {
			if waits = append(waits, ev.Wait); len(waits) == 8 {
				cancel()
			}
		}
		return nil
	})
	if err != nil {
		t.Fatalf("Run after cancel: %v, want nil", err)
	}
	if last := waits[len(waits)-1]; last < 4*time.Millisecond || last > 8*time.Millisecond {
		t.Errorf("waits %v: want them to reach RetryMax (8ms, jittered to 4-8ms)", waits)
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, o := range []Options{
		{Server: "127.0.0.1:8080", Stream: "x"},
		{Server: "http://h", Stream: ""},
		{Server: "http://h", Stream: "x", From: "yesterday"},
	} {
		if _, err := New(o); err == nil {
			t.Errorf("New(%+v) accepted", o)
		}
	}
}

// TestSilentConnectionIsReplaced: a connection that goes quiet, without
// even lsmux's keepalive (a proxy that stopped forwarding), is taken for
// dead after StallTimeout and replaced, resuming after the last hit.
func TestSilentConnectionIsReplaced(t *testing.T) {
	quiet := make(chan struct{})
	f := &fakeLsmux{replies: []func(http.ResponseWriter){
		func(w http.ResponseWriter) {
			events("id: 10\nevent: hit\ndata: {\"a\":10}\n\n")(w)
			w.(http.Flusher).Flush()
			<-quiet // open, and silent
		},
		events("id: 11\nevent: hit\ndata: {\"a\":11}\n\n"),
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	defer close(quiet) // before Close, which waits for the handler
	s, err := New(Options{Server: srv.URL, Stream: "demo", RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond, StallTimeout: 300 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var hits []uint64
	var why error
	err = s.Run(ctx, func(ev Event) error {
		switch ev.Kind {
		case Hit:
			hits = append(hits, ev.Seq)
			if ev.Seq == 11 {
				return errDone
			}
		case Disconnected:
			if why == nil {
				why = ev.Err
			}
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("Run: %v; hits %v", err, hits)
	}
	if why == nil || !strings.Contains(why.Error(), "sent nothing for 300ms") {
		t.Errorf("the first disconnect: %v; want the stall named", why)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.reqs) != 2 || f.reqs[1].Header.Get("Last-Event-ID") != "10" {
		t.Errorf("%d requests; want a second one resuming after 10", len(f.reqs))
	}
}

// TestIdleAfterAHitAndAPingReadTogether: a keepalive that arrives in the
// same read as a hit does not hide that the hit is the last for now.
func TestIdleAfterAHitAndAPingReadTogether(t *testing.T) {
	quiet := make(chan struct{})
	f := &fakeLsmux{replies: []func(http.ResponseWriter){
		func(w http.ResponseWriter) {
			events("id: 10\nevent: hit\ndata: {\"a\":10}\n\n: ping\n\n")(w)
			w.(http.Flusher).Flush()
			<-quiet
		},
	}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	defer close(quiet) // before Close, which waits for the handler
	s, err := New(Options{Server: srv.URL, Stream: "demo", RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	var kinds []Kind
	err = s.Run(ctx, func(ev Event) error {
		kinds = append(kinds, ev.Kind)
		if ev.Kind == Idle {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("Run: %v; events %v: no Idle after the hit", err, kinds)
	}
}

var errDone = errors.New("done")

// TestLiveResumesAcrossAReconnectBeforeTheFirstHit: a live subscription
// starts after the stream's newest number, and a connection that ends
// before any hit resumes from there, so the hits of the outage are
// delivered instead of skipped without a gap notice.
func TestLiveResumesAcrossAReconnectBeforeTheFirstHit(t *testing.T) {
	f := &fakeLsmux{streams: `[{"name":"other","ring":{"newestSeq":7}},{"name":"demo","ring":{"newestSeq":500}}]`,
		replies: []func(http.ResponseWriter){
			events(": nothing yet\n\n"),
			events("id: 501\nevent: hit\ndata: {\"a\":501}\n\n"),
		}}
	srv := httptest.NewServer(f)
	defer srv.Close()
	s, err := New(Options{Server: srv.URL, Stream: "demo", RetryMin: 10 * time.Millisecond, RetryMax: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	err = s.Run(ctx, func(ev Event) error {
		if ev.Kind == Hit {
			return errDone
		}
		return nil
	})
	if !errors.Is(err, errDone) {
		t.Fatalf("Run: %v", err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	for i, r := range f.reqs {
		if r.Header.Get("Last-Event-ID") != "500" || r.URL.Query().Get("from") != "" {
			t.Errorf("connection %d: %s with Last-Event-ID %q; want 500, the newest when it started", i+1, r.URL, r.Header.Get("Last-Event-ID"))
		}
	}
}
