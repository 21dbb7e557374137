package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strings"
	"testing"
	"time"

	"lsmux/metrics"
	"lsmux/proxy/proxytest"
	"lsmux/upstream/simulator"
)

func get(t *testing.T, url string, header http.Header) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// metricValue finds one sample's value in the text format.
func metricValue(t *testing.T, text, series string) float64 {
	t.Helper()
	for _, line := range strings.Split(text, "\n") {
		if strings.HasPrefix(line, series+" ") {
			var v float64
			if _, err := fmtSscan(strings.TrimPrefix(line, series+" "), &v); err == nil {
				return v
			}
		}
	}
	return -1
}

func TestStatusMetricsAndLogsNeverShowSecrets(t *testing.T) {
	const secret, local = "s3cret-client-value-123", "local-subscriber-token-456"
	sim, err := simulator.New(simulator.Options{Rate: 300, ClientSecret: secret})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	r := startApp(t, sim, "-auth-token", local, "-log-level", "debug")
	auth := http.Header{"Authorization": {"Bearer " + local}}
	ws, _, err := proxytest.DialWS(r.base+"/ws?filter=has(hit.pageName)", auth)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	for range 20 {
		if _, err := proxytest.Next(ws.Msgs, 5*time.Second); err != nil {
			t.Fatal(err)
		}
	}
	// A drop, a token expiry and a reconnect: every log line about it.
	sim.ExpireTokens()
	sim.DropConnections()
	waitFor(t, 5*time.Second, "a 401, a new token and the reconnect", func() bool {
		a := sim.Attempts()
		return len(a) >= 3 && a[1].Status == 401 && a[len(a)-1].Status == 200 && a[len(a)-1].Hits > 0
	})

	code, status := get(t, r.root+"/v1/status?subscribers=1", auth)
	if code != 200 {
		t.Fatalf("status %d", code)
	}
	var st struct {
		Streams []struct {
			Name             string
			Upstream         []map[string]any
			Ring             map[string]any
			SubscriberCounts map[string]int
			Subscribers      []map[string]any
		}
	}
	if err := json.Unmarshal([]byte(status), &st); err != nil {
		t.Fatal(err)
	}
	s := st.Streams[0]
	for _, key := range []string{"state", "since", "attempts", "lastStatus", "hits", "bytes", "duplicates", "hitsPerSecond", "results"} {
		if _, ok := s.Upstream[0][key]; !ok {
			t.Errorf("upstream status lacks %q: %v", key, s.Upstream[0])
		}
	}
	for _, key := range []string{"hits", "bytes", "oldestSeq", "newestSeq"} {
		if _, ok := s.Ring[key]; !ok {
			t.Errorf("ring status lacks %q", key)
		}
	}
	if s.SubscriberCounts["ws"] != 1 || len(s.Subscribers) != 1 {
		t.Fatalf("subscribers %v %v", s.SubscriberCounts, s.Subscribers)
	}
	for _, key := range []string{"id", "transport", "remote", "filter", "lag", "gaps", "connectedSince"} {
		if _, ok := s.Subscribers[0][key]; !ok {
			t.Errorf("subscriber status lacks %q: %v", key, s.Subscribers[0])
		}
	}
	_, metricsText := get(t, r.root+"/metrics", nil)
	tokenPattern := regexp.MustCompile(`sim-[0-9a-f]{32}`)
	for what, text := range map[string]string{"status": status, "metrics": metricsText, "logs": r.logs.String()} {
		for _, s := range []string{secret, local, secret[:10], local[:12]} {
			if strings.Contains(text, s) {
				t.Errorf("%s shows a secret (%q)", what, s)
			}
		}
		if tok := tokenPattern.FindString(text); tok != "" {
			t.Errorf("%s shows an access token", what)
		}
	}
	if !strings.Contains(r.logs.String(), "upstream connection lost") || !strings.Contains(r.logs.String(), "upstream connected") {
		t.Fatalf("logs lack the state changes:\n%s", r.logs.String())
	}
}

func TestMetricsCountConnectsDropsAndDeliveries(t *testing.T) {
	sim := newSim(t, 300)
	r := startApp(t, sim)
	sse, err := proxytest.DialSSE(r.base+"/sse", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	for range 10 {
		proxytest.Next(sse.Msgs, 5*time.Second)
	}
	sim.DropConnections()
	waitFor(t, 5*time.Second, "the reconnect", func() bool { return len(sim.Attempts()) == 2 && r.app.streams[0].feed.Streaming() })
	for range 10 {
		proxytest.Next(sse.Msgs, 5*time.Second)
	}
	_, text := get(t, r.root+"/metrics", nil)
	checks := map[string]func(float64) bool{
		`lsmux_upstream_attempts_total{conn="0",result="200",stream="demo"}`:            func(v float64) bool { return v == 2 },
		`lsmux_upstream_state{conn="0",state="streaming",stream="demo"}`:                func(v float64) bool { return v == 1 },
		`lsmux_upstream_state{conn="0",state="waiting",stream="demo"}`:                  func(v float64) bool { return v == 0 },
		`lsmux_upstream_hits_total{conn="0",stream="demo"}`:                             func(v float64) bool { return v >= 20 },
		`lsmux_delivered_hits_total{stream="demo",transport="sse"}`:                     func(v float64) bool { return v >= 20 },
		`lsmux_delivery_lag_seconds_count{transport="sse"}`:                             func(v float64) bool { return v > 0 },
		`lsmux_subscribers{stream="demo",transport="sse"}`:                              func(v float64) bool { return v == 1 },
		`lsmux_upstream_skipped_records_total{conn="0",reason="invalid",stream="demo"}`: func(v float64) bool { return v == 0 },
	}
	for series, ok := range checks {
		if v := metricValue(t, text, series); !ok(v) {
			t.Errorf("%s = %v", series, v)
		}
	}
	// Every metric is documented in docs/operations.md.
	doc, _ := readFile("docs/operations.md")
	for _, name := range metrics.Names {
		if !strings.Contains(doc, "`"+name+"`") {
			t.Errorf("metric %s is not documented in docs/operations.md", name)
		}
		// Cluster and history metrics exist only in those modes: their own
		// tests check them.
		if !strings.HasPrefix(name, "lsmux_cluster_") && !strings.HasPrefix(name, "lsmux_history_") && !strings.HasPrefix(name, "lsmux_replays_") && !strings.Contains(text, name) {
			t.Errorf("metric %s is not exposed", name)
		}
	}
}

func TestLimitsNeverTouchTheUpstream(t *testing.T) {
	sim := newSim(t, 200)
	r := startApp(t, sim, "-max-subscribers-per-address", "2")
	var ok, refused int
	for range 6 {
		c, err := proxytest.DialSSE(r.base+"/sse", nil)
		if err != nil {
			var se *proxytest.StatusError
			if !asStatusError(err, &se) || se.Status != 429 {
				t.Fatalf("refusal: %v", err)
			}
			refused++
			continue
		}
		defer c.Close()
		ok++
	}
	if ok != 2 || refused != 4 {
		t.Fatalf("%d accepted, %d refused; want 2 and 4", ok, refused)
	}
	_, text := get(t, r.root+"/metrics", nil)
	if v := metricValue(t, text, `lsmux_subscriptions_rejected_total{reason="limit_per_address"}`); v != 4 {
		t.Fatalf("rejections counted %v", v)
	}
	if n := len(sim.Attempts()); n != 1 || sim.PeakActive("demo") != 1 {
		t.Fatalf("upstream saw %d attempts", n)
	}
}

func fmtSscan(s string, v *float64) (int, error) { return fmt.Sscan(s, v) }

func readFile(name string) (string, error) {
	b, err := os.ReadFile(name)
	return string(b), err
}

func asStatusError(err error, target **proxytest.StatusError) bool { return errors.As(err, target) }
