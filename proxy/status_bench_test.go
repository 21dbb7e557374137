package proxy_test

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"lsmux/fanout"
	"lsmux/proxy"
)

// BenchmarkStatus10k is /v1/status with 10,000 subscribers registered:
// the default summary, one page of the subscriber list, and every
// subscriber pretty-printed (what status answered before it was a
// summary: ten pages here).
func BenchmarkStatus10k(b *testing.B) {
	hub := fanout.NewHub(fanout.Options{FirstSeq: 1})
	for i := range 200 {
		hub.Append(fmt.Appendf(nil, `{"hitIdHigh":1,"hitIdLow":%d,"pageName":"home"}`, i+1), time.Now())
	}
	for i := range 10_000 {
		sub := hub.Subscribe(fanout.Oldest, fanout.Info{Transport: "ws", Remote: fmt.Sprintf("10.0.%d.%d:5000", i/250, i%250)}, nil)
		defer sub.Close()
	}
	srv := proxy.New([]*proxy.Stream{{Name: "s", Hub: hub}}, proxy.Options{})
	h := srv.Handler()
	get := func(target string) int {
		req := httptest.NewRequest(http.MethodGet, target, nil)
		req.RemoteAddr = "127.0.0.1:4000"
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Fatalf("%s: %d %s", target, rec.Code, rec.Body)
		}
		return rec.Body.Len()
	}
	b.Run("summary", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n = get("http://127.0.0.1/v1/status")
		}
		b.ReportMetric(float64(n), "bytes/answer")
	})
	b.Run("one-page", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n = get("http://127.0.0.1/v1/status?subscribers=1&limit=1000")
		}
		b.ReportMetric(float64(n), "bytes/answer")
	})
	b.Run("all-pretty", func(b *testing.B) {
		n := 0
		for b.Loop() {
			n = 0
			for p := range 10 {
				_ = p
				n += get("http://127.0.0.1/v1/status?subscribers=1&limit=1000&pretty=1&after=" + fmt.Sprint(p*1000))
			}
		}
		b.ReportMetric(float64(n), "bytes/answer")
	})
}
