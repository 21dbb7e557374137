package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"testing"

	"lsmux/proxy"
)

// TestEveryAnswerForbidsSniffing: hits carry text that visitors of the
// tracked site wrote, so no answer may be sniffed by a browser as HTML:
// the streams (the hijacked SSE response included), JSON, errors.
func TestEveryAnswerForbidsSniffing(t *testing.T) {
	srv := newServer(t, proxy.Options{})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	for _, path := range []string{"/healthz", "/v1/status", "/v1/streams/s/sse", "/api/1/stream/s", "/v1/streams/nope/sse", "/v1/streams/s/ws"} {
		resp, err := http.Get(ts.URL + path)
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("X-Content-Type-Options"); got != "nosniff" {
			t.Errorf("%s (%d, %s): X-Content-Type-Options %q; want nosniff", path, resp.StatusCode, resp.Header.Get("Content-Type"), got)
		}
	}
}
