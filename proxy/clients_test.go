package proxy_test

import (
	"net/http"
	"testing"
	"time"

	"lsmux/internal/testutil"
	"lsmux/proxy/proxytest"
)

type msg = proxytest.Msg

func mustWS(t *testing.T, url string) *proxytest.WSClient {
	t.Helper()
	c, _, err := proxytest.DialWS(url, nil)
	if err != nil {
		t.Fatalf("dial %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

func mustSSE(t *testing.T, url string, header http.Header) *proxytest.SSEClient {
	t.Helper()
	c, err := proxytest.DialSSE(url, header)
	if err != nil {
		t.Fatalf("sse %s: %v", url, err)
	}
	t.Cleanup(c.Close)
	return c
}

func next(t *testing.T, ch <-chan msg, timeout time.Duration) msg {
	t.Helper()
	m, err := proxytest.Next(ch, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

var waitFor = testutil.WaitFor

// proxyNext is Next without failing: for reading until the stream is quiet.
func proxyNext(ch <-chan msg, timeout time.Duration) (msg, error) { return proxytest.Next(ch, timeout) }
