package proxy

import (
	"net/http/httptest"
	"net/url"
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
