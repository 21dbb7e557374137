package proxy_test

import (
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"

	"lsmux/proxy"
	"lsmux/proxy/proxytest"
)

// TestTrustedProxiesNameTheClient: behind a reverse proxy listed in
// LSMUX_TRUSTED_PROXIES, the per-address limit counts the client its
// X-Forwarded-For names (the last address a trusted proxy appended), and
// status shows that client; a forwarding header from anyone else is
// ignored, and a request carrying one is not "this machine" even from
// loopback (a proxy on this host serving clients elsewhere).
func TestTrustedProxiesNameTheClient(t *testing.T) {
	srv := newServer(t, proxy.Options{MaxPerAddress: 1, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	sse := ts.URL + "/v1/streams/s/sse"
	a, err := proxytest.DialSSE(sse, http.Header{"X-Forwarded-For": {"198.51.100.7"}})
	if err != nil {
		t.Fatal(err)
	}
	defer a.Close()
	// A second client behind the same proxy is another address.
	b, err := proxytest.DialSSE(sse, http.Header{"X-Forwarded-For": {"203.0.113.5, 198.51.100.8"}})
	if err != nil {
		t.Fatalf("a second client behind the proxy was refused: %v", err)
	}
	defer b.Close()
	// The same client again is over its limit of 1, whatever it claims
	// further left in the header.
	var se *proxytest.StatusError
	if c, err := proxytest.DialSSE(sse, http.Header{"X-Forwarded-For": {"10.9.9.9, 198.51.100.7"}}); !errors.As(err, &se) || se.Status != http.StatusTooManyRequests {
		if c != nil {
			c.Close()
		}
		t.Fatalf("the same client a second time: %v, want 429", err)
	}
	rec := do(t, srv, "GET", "http://127.0.0.1/v1/status?subscribers=1", "127.0.0.1:4000", nil)
	if rec.Code != 200 || !strings.Contains(rec.Body.String(), `"remote":"198.51.100.7"`) || !strings.Contains(rec.Body.String(), `"remote":"198.51.100.8"`) {
		t.Fatalf("status does not show the forwarded clients: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, srv, "GET", "http://127.0.0.1/v1/status?subscribers=1", "127.0.0.1:4000", http.Header{"Forwarded": {`for="[2001:db8::1]:4711"`}}); rec.Code != http.StatusForbidden {
		t.Fatalf("a client elsewhere, through a trusted proxy on this machine, got the subscriber list: %d", rec.Code)
	}

	untrusting := newServer(t, proxy.Options{MaxPerAddress: 1})
	if rec := do(t, untrusting, "GET", "http://127.0.0.1/v1/status?subscribers=1", "127.0.0.1:4000", http.Header{"X-Forwarded-For": {"127.0.0.1"}}); rec.Code != http.StatusForbidden {
		t.Fatalf("a forwarded request from loopback, no proxy trusted, got the subscriber list: %d", rec.Code)
	}
	if rec := do(t, untrusting, "GET", "http://127.0.0.1/v1/status?subscribers=1", "127.0.0.1:4000", nil); rec.Code != 200 {
		t.Fatalf("this machine, asking directly: %d", rec.Code)
	}
}

// TestMadeUpForwardingHeaderDoesNotDodgeTheLimit: a trusted proxy that
// writes Forwarded passes the client's own X-Forwarded-For through; a
// client that makes one up for every connection is not another address
// each time.
func TestMadeUpForwardingHeaderDoesNotDodgeTheLimit(t *testing.T) {
	srv := newServer(t, proxy.Options{MaxPerAddress: 1, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	sse := ts.URL + "/v1/streams/s/sse"
	var open []*proxytest.SSEClient
	defer func() {
		for _, c := range open {
			c.Close()
		}
	}()
	refused := 0
	for i := range 5 {
		c, err := proxytest.DialSSE(sse, http.Header{"Forwarded": {"for=198.51.100.7"}, "X-Forwarded-For": {fmt.Sprintf("203.0.113.%d", i)}})
		if err != nil {
			refused++
			continue
		}
		open = append(open, c)
	}
	if len(open) != 1 || refused != 4 {
		t.Errorf("%d of 5 subscriptions accepted with a made-up X-Forwarded-For each; want 1 (the limit per address)", len(open))
	}
	// The headers agreeing is one client, as either alone is.
	if c, err := proxytest.DialSSE(sse, http.Header{"Forwarded": {"for=192.0.2.9"}, "X-Forwarded-For": {"192.0.2.9"}}); err != nil {
		t.Errorf("a client both headers name: %v", err)
	} else {
		c.Close()
	}
}

// TestIPv6ClientIsCountedByItsSlash64: an IPv6 host picks a new address
// in its /64 per connection at will, so the per-address limit counts the
// /64; a client in another /64 is someone else.
func TestIPv6ClientIsCountedByItsSlash64(t *testing.T) {
	srv := newServer(t, proxy.Options{MaxPerAddress: 2, TrustedProxies: []netip.Prefix{netip.MustParsePrefix("127.0.0.0/8")}})
	ts := httptest.NewServer(srv.Handler())
	defer ts.Close()
	sse := ts.URL + "/v1/streams/s/sse"
	dial := func(addr string) (*proxytest.SSEClient, error) {
		return proxytest.DialSSE(sse, http.Header{"X-Forwarded-For": {addr}})
	}
	for i := range 2 {
		c, err := dial(fmt.Sprintf("2001:db8:1:2::%x", i+1))
		if err != nil {
			t.Fatalf("subscription %d of the limit of 2: %v", i+1, err)
		}
		defer c.Close()
	}
	if c, err := dial("2001:db8:1:2:ffff:ffff:ffff:7"); err == nil {
		c.Close()
		t.Error("a third address in the same /64 was accepted past the limit of 2")
	} else if !strings.Contains(err.Error(), "429") {
		t.Errorf("a third address in the same /64: %v; want 429", err)
	}
	// Not /64s of one host: link-local addresses, and IPv4 clients behind
	// NAT64, each count alone.
	for _, other := range []string{"2001:db8:1:3::1", "fe80::1", "fe80::2", "fe80::3", "64:ff9b::c000:201", "64:ff9b::c000:202", "64:ff9b::c000:203"} {
		c, err := dial(other)
		if err != nil {
			t.Fatalf("%s was refused as if it were another client: %v", other, err)
		}
		defer c.Close()
	}
}
