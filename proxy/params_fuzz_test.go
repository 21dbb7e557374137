package proxy

import (
	"net/http/httptest"
	"net/netip"
	"net/url"
	"strings"
	"testing"
)

// FuzzSubscriptionParams: whatever a client puts in from, filter, fields,
// sample, filter.<name> and Last-Event-ID, parsing answers a value or an
// error, never a panic, and an accepted from is never the Live/Oldest
// sentinels by accident.
func FuzzSubscriptionParams(f *testing.F) {
	f.Add("oldest", `hit.geoCountry == "fra"`, "pageName,events.purchase", "0.1", "x", "", "123")
	f.Add("18446744073709551615", "has(", ",,", "1e-400", "a b", "[]", "-1")
	f.Add("", "", "", "", "", "", "")
	s := New(nil, Options{})
	f.Fuzz(func(t *testing.T, from, filter, fields, sample, name, named, lastID string) {
		q := url.Values{}
		for k, v := range map[string]string{"from": from, "filter": filter, "fields": fields, "sample": sample} {
			if v != "" {
				q.Set(k, v)
			}
		}
		if name != "" {
			q.Set("filter."+name, named)
		}
		r := httptest.NewRequest("GET", "/v1/streams/s/sse?"+q.Encode(), nil)
		if lastID != "" {
			r.Header.Set("Last-Event-ID", lastID)
		}
		s.parseSelector(r, true)
		if n, err := parseFrom(r); err == nil && lastID == "" && from != "" && from != "live" && from != "oldest" && n >= ^uint64(0)-1 {
			t.Fatalf("from=%q parsed to a sentinel %d", from, n)
		}
	})
}

// FuzzForwardedFor: forwarding headers come from anyone; parsing them
// never panics, and names only whole entries (no separators, no brackets
// left around an address).
func FuzzForwardedFor(f *testing.F) {
	for _, s := range []string{"198.51.100.7", "203.0.113.5, 198.51.100.8", "[2001:db8::1]:4711", "unknown", ",,", " "} {
		f.Add(s, `for="[2001:db8::1]:4711";proto=https, for=192.0.2.60`)
	}
	f.Fuzz(func(t *testing.T, xff, fwd string) {
		r := httptest.NewRequest("GET", "/", nil)
		if xff != "" {
			r.Header.Set("X-Forwarded-For", xff)
		}
		r.Header.Set("Forwarded", fwd)
		xffHops, fwdHops := forwardedFor(r)
		for _, a := range append(xffHops, fwdHops...) {
			if a == "" || strings.Contains(a, ",") {
				t.Fatalf("entry %q is empty or holds a separator (X-Forwarded-For %q, Forwarded %q)", a, xff, fwd)
			}
		}
		srv := &Server{opts: Options{TrustedProxies: []netip.Prefix{netip.MustParsePrefix("192.0.2.0/24")}}}
		r.RemoteAddr = "192.0.2.1:5000"
		if c := srv.clientOf(r); c.ip == "" || c.addr == "" {
			t.Fatalf("no client address from X-Forwarded-For %q, Forwarded %q: %+v", xff, fwd, c)
		}
	})
}
