package simulator

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func newServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(s.Close)
	return s
}

func token(t *testing.T, s *Server, secret string) (string, int) {
	t.Helper()
	resp, err := http.PostForm(s.TokenURL(), url.Values{"grant_type": {"client_credentials"}, "client_id": {s.ClientID()}, "client_secret": {secret}, "scope": {"openid"}})
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var body struct {
		AccessToken string `json:"access_token"`
		TokenType   string `json:"token_type"`
		ExpiresIn   int    `json:"expires_in"`
	}
	json.NewDecoder(resp.Body).Decode(&body)
	if resp.StatusCode == http.StatusOK && (body.TokenType != "bearer" || body.ExpiresIn != 86400) {
		t.Fatalf("token answer %+v", body)
	}
	return body.AccessToken, resp.StatusCode
}

type req struct {
	method, query, tok, enc string
	noKey                   bool
}

func get(t *testing.T, ctx context.Context, s *Server, r req) *http.Response {
	t.Helper()
	hr, _ := http.NewRequestWithContext(ctx, r.method, s.StreamURL("demo")+r.query, nil)
	if r.tok != "" {
		hr.Header.Set("Authorization", "Bearer "+r.tok)
	}
	if !r.noKey {
		hr.Header.Set("x-api-key", s.ClientID())
	}
	hr.Header.Set("Accept-Encoding", r.enc)
	resp, err := (&http.Client{Transport: &http.Transport{DisableCompression: true, DisableKeepAlives: true}}).Do(hr)
	if err != nil {
		t.Fatal(err)
	}
	return resp
}

func TestDocumentedAnswers(t *testing.T) {
	s := newServer(t, Options{})
	if _, code := token(t, s, "wrong"); code != http.StatusUnauthorized {
		t.Fatalf("wrong secret: %d, want 401", code)
	}
	tok, code := token(t, s, s.ClientSecret())
	if code != http.StatusOK || tok == "" {
		t.Fatalf("token: %d %q", code, tok)
	}
	for _, c := range []struct {
		name string
		r    req
		want int
	}{
		{"no token", req{method: "GET", enc: "gzip"}, 401},
		{"bad token", req{method: "GET", tok: "nope", enc: "gzip"}, 401},
		{"no api key", req{method: "GET", tok: tok, enc: "gzip", noKey: true}, 401},
		{"no gzip", req{method: "GET", tok: tok}, 406},
		{"POST", req{method: "POST", tok: tok, enc: "gzip"}, 405},
		{"maxConnections=9", req{method: "GET", tok: tok, enc: "gzip", query: "?maxConnections=9"}, 400},
		{"bad reset", req{method: "GET", tok: tok, enc: "gzip", query: "?reset=middle"}, 400},
	} {
		resp := get(t, t.Context(), s, c.r)
		resp.Body.Close()
		if resp.StatusCode != c.want {
			t.Errorf("%s: %d, want %d", c.name, resp.StatusCode, c.want)
		}
	}
	if n := len(s.Attempts()); n != 7 {
		t.Fatalf("log has %d attempts, want all 7", n)
	}
}

func TestConflictsAndPartitions(t *testing.T) {
	s := newServer(t, Options{Rate: 2000})
	tok, _ := token(t, s, s.ClientSecret())
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	a := get(t, ctx, s, req{method: "GET", tok: tok, enc: "gzip", query: "?maxConnections=2"})
	b := get(t, ctx, s, req{method: "GET", tok: tok, enc: "gzip", query: "?maxConnections=2"})
	defer a.Body.Close()
	defer b.Body.Close()
	if a.StatusCode != 200 || b.StatusCode != 200 {
		t.Fatalf("two connections with maxConnections=2: %d %d", a.StatusCode, b.StatusCode)
	}
	c := get(t, ctx, s, req{method: "GET", tok: tok, enc: "gzip", query: "?maxConnections=2"})
	body, _ := io.ReadAll(c.Body)
	c.Body.Close()
	if c.StatusCode != http.StatusConflict || !strings.Contains(string(body), "error_description") {
		t.Fatalf("third connection: %d %s, want 409 with error_description", c.StatusCode, body)
	}
	d := get(t, ctx, s, req{method: "GET", tok: tok, enc: "gzip", query: "?maxConnections=3"})
	d.Body.Close()
	if d.StatusCode != http.StatusConflict {
		t.Fatalf("mismatched maxConnections: %d, want 409", d.StatusCode)
	}
	// Each connection gets a disjoint set of visitors.
	visitors := [2]map[string]bool{{}, {}}
	for i, resp := range []*http.Response{a, b} {
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		dec := json.NewDecoder(zr)
		for n := 0; n < 200; n++ {
			var h struct {
				V         json.Number `json:"mcVisIdLow"`
				HitIDHigh json.Number `json:"hitIdHigh"`
			}
			if err := dec.Decode(&h); err != nil {
				t.Fatal(err)
			}
			visitors[i][h.V.String()] = true
		}
	}
	for v := range visitors[0] {
		if visitors[1][v] {
			t.Fatalf("visitor %s appears on both connections", v)
		}
	}
}

func TestHitsLookReal(t *testing.T) {
	g := &generator{seed: 7, suite: "sim.demo", start: time.Unix(1_800_000_000, 0), rate: 100, visitors: 5000}
	total, above63 := 0, 0
	countries := map[string]int{}
	for k := uint64(0); k < 2000; k++ {
		raw := g.hit(nil, k)
		if len(raw) < 900 || len(raw) > 2500 {
			t.Fatalf("hit %d is %d bytes, want about 1-2 KB", k, len(raw))
		}
		var h map[string]any
		dec := json.NewDecoder(strings.NewReader(string(raw)))
		dec.UseNumber()
		if err := dec.Decode(&h); err != nil {
			t.Fatalf("hit %d: %v\n%s", k, err, raw)
		}
		id, _ := h["hitIdHigh"].(json.Number)
		v, err := strconv.ParseUint(id.String(), 10, 64)
		if err != nil {
			t.Fatalf("hitIdHigh %q: %v", id, err)
		}
		if v > 1<<63 {
			above63++
		}
		countries[h["geoCountry"].(string)]++
		total += len(raw)
	}
	if above63 == 0 {
		t.Fatal("no hit id above 2^63 in 2000 hits")
	}
	if countries["usa"] < 2*countries["mex"] {
		t.Fatalf("countries not skewed: %v", countries)
	}
	if string(g.hit(nil, 42)) != string(g.hit(nil, 42)) {
		t.Fatal("hits are not deterministic")
	}
	t.Logf("average hit size %d bytes", total/2000)
}

func ExampleNew() {
	sim, err := New(Options{Rate: 10})
	if err != nil {
		panic(err)
	}
	defer sim.Close()
	fmt.Println(strings.HasPrefix(sim.StreamURL("demo"), "http://127.0.0.1:"))
	// Output: true
}
