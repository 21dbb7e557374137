package proxy_test

import (
	"encoding/json"
	"io"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"lsmux/fanout"
	"lsmux/proxy"
)

// lagObserver records the lag each delivered batch reported.
type lagObserver struct {
	mu   sync.Mutex
	lags []time.Duration // -1: no live hit in the batch
}

func (o *lagObserver) Delivered(_, _ string, _ int, oldest time.Time) {
	o.mu.Lock()
	defer o.mu.Unlock()
	if oldest.IsZero() {
		o.lags = append(o.lags, -1)
		return
	}
	o.lags = append(o.lags, time.Since(oldest))
}
func (o *lagObserver) Gap(string, string)                  {}
func (o *lagObserver) Disconnected(string, string, string) {}
func (o *lagObserver) Rejected(string)                     {}

func (o *lagObserver) snapshot() []time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]time.Duration(nil), o.lags...)
}

// TestLagCountsLiveHitsOnly: a resume's backlog (hits read an hour ago) is
// not delivery lag; hits that arrive while subscribed are.
func TestLagCountsLiveHitsOnly(t *testing.T) {
	obs := &lagObserver{}
	r := serve(t, fanout.Options{}, proxy.Options{Observer: obs})
	hourAgo := time.Now().Add(-time.Hour)
	for i := range 100 {
		r.hub.Append(hitN(i), hourAgo)
	}
	ws := mustWS(t, r.base+"/ws?from=oldest")
	expectHits(t, ws.Msgs, 0, 100, 1)
	r.hub.Append(hitN(100), time.Now())
	expectHits(t, ws.Msgs, 100, 1, 101)
	waitFor(t, 2*time.Second, "the live batch to be observed", func() bool {
		l := obs.snapshot()
		return len(l) > 0 && l[len(l)-1] >= 0
	})
	for _, l := range obs.snapshot() {
		if l > time.Minute {
			t.Fatalf("a backlog batch was counted as %v of delivery lag", l)
		}
	}
}

// TestStatusIsASummaryWithSubscribersOnRequest: /v1/status lists no
// subscriber unless asked, then pages through them; /v1/streams names
// all three endpoints.
func TestStatusIsASummaryWithSubscribersOnRequest(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for range 5 {
		mustWS(t, r.base+"/ws")
	}
	waitFor(t, 2*time.Second, "five subscribers", func() bool { return len(r.hub.Subscribers()) == 5 })
	type status struct {
		Auth    string
		Streams []struct {
			SubscriberSummary struct{ Count int }
			Subscribers       []struct{ ID uint64 }
			NextAfter         uint64
			Throughput        struct{ HitsIn []uint64 }
			Disconnects       map[string]uint64
		}
	}
	get := func(q string) (status, string) {
		resp, err := http.Get(r.root + "/v1/status" + q)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		var b strings.Builder
		var st status
		json.NewDecoder(io.TeeReader(resp.Body, &b)).Decode(&st)
		return st, b.String()
	}
	st, raw := get("")
	if len(st.Streams) != 1 || st.Streams[0].SubscriberSummary.Count != 5 || st.Streams[0].Subscribers != nil || strings.Contains(raw, "\n  ") {
		t.Fatalf("default status: %s", raw)
	}
	if st.Auth != "anonymous" || st.Streams[0].Disconnects == nil {
		t.Fatalf("default status: %s", raw)
	}
	var ids []uint64
	after := ""
	for range 5 {
		st, raw = get("?subscribers=1&limit=2" + after)
		for _, s := range st.Streams[0].Subscribers {
			ids = append(ids, s.ID)
		}
		if st.Streams[0].NextAfter == 0 {
			break
		}
		after = "&after=" + strconv.FormatUint(st.Streams[0].NextAfter, 10)
	}
	if len(ids) != 5 || ids[0] >= ids[4] {
		t.Fatalf("paged through %v", ids)
	}
	if _, raw = get("?pretty=1"); !strings.Contains(raw, "\n  ") {
		t.Fatalf("pretty status is not indented: %.200s", raw)
	}
	resp, _ := http.Get(r.root + "/v1/status?limit=0")
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Fatalf("limit=0: %d", resp.StatusCode)
	}

	resp, _ = http.Get(r.root + "/v1/streams")
	var streams []struct{ Endpoints map[string]string }
	json.NewDecoder(resp.Body).Decode(&streams)
	resp.Body.Close()
	if e := streams[0].Endpoints; e["ws"] != "/v1/streams/s/ws" || e["sse"] != "/v1/streams/s/sse" || e["ndjson"] != "/api/1/stream/s" {
		t.Fatalf("endpoints %v", e)
	}
}
