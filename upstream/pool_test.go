package upstream_test

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"

	"lsmux/upstream"
	"lsmux/upstream/simulator"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// checkSpacing asserts that no attempt started sooner than min after the
// previous connection on the stream ended (the simulator's log is the
// witness) and that attempts never overlapped.
func checkSpacing(t *testing.T, attempts []simulator.Attempt, min time.Duration) {
	t.Helper()
	for i := 1; i < len(attempts); i++ {
		prev, cur := attempts[i-1], attempts[i]
		if prev.End.IsZero() {
			t.Fatalf("attempt %d started while attempt %d was still open", cur.ID, prev.ID)
		}
		if gap := cur.Start.Sub(prev.End); gap < min {
			t.Fatalf("attempt %d came %v after attempt %d ended (status %d), want ≥ %v", cur.ID, gap, prev.ID, prev.Status, min)
		}
	}
}

func TestDropsReconnectOncePerDropAfterTheDelay(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	delay := 200 * time.Millisecond
	r := start(t, sim, sim.StreamURL("demo"), nil)
	for drop := 1; drop <= 3; drop++ {
		waitFor(t, 5*time.Second, "streaming with hits", func() bool { return sim.Active("demo") == 1 && r.hits.count() > drop*10 })
		sim.DropConnections()
		waitFor(t, 5*time.Second, "reconnect", func() bool { return len(sim.Attempts()) == drop+1 && sim.Active("demo") == 1 })
	}
	waitFor(t, 5*time.Second, "hits after the last reconnect", func() bool { return len(sim.Attempts()[3:]) == 1 && sim.Attempts()[3].Hits > 0 })
	r.settle(t, "demo", 0)
	r.stop()
	attempts := sim.Attempts()
	if len(attempts) != 4 {
		t.Fatalf("simulator saw %d attempts for 3 drops, want 4", len(attempts))
	}
	for _, a := range attempts {
		if a.Status != http.StatusOK {
			t.Fatalf("attempt %d answered %d (%s)", a.ID, a.Status, a.Reason)
		}
	}
	checkSpacing(t, attempts, delay)
	if sim.PeakActive("demo") != 1 {
		t.Fatalf("peak concurrent connections %d, want 1", sim.PeakActive("demo"))
	}
	// The simulator resumes each reconnect where the last connection left
	// off (Live Stream's backfill), so nothing may be missing.
	sameHits(t, r.hits.snapshot(), sim.SentHits("demo"))
	st := r.pool.Conns()[0]
	if st.Connects != 4 || st.Attempts != 4 {
		t.Fatalf("status says %d connects in %d attempts, want 4/4", st.Connects, st.Attempts)
	}
}

func TestFlapPenaltyAtMostOneAttemptPerDelayAndRecovers(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	delay := 150 * time.Millisecond
	// A reconnect within 400 ms of a disconnect is refused: longer than
	// the delay, so the first retry is refused and the doubling must
	// carry the client past the window.
	sim.SetFlapPenalty(400*time.Millisecond, http.StatusConflict)
	r := start(t, sim, sim.StreamURL("demo"), func(c *upstream.Config) { c.Policy = fastPolicy(delay) })
	waitFor(t, 5*time.Second, "first connection", func() bool { return sim.Active("demo") == 1 })
	sim.DropConnections()
	waitFor(t, 10*time.Second, "recovery after the flap penalty", func() bool {
		a := sim.Attempts()
		return len(a) >= 3 && a[len(a)-1].Status == http.StatusOK && a[len(a)-1].Hits > 0
	})
	attempts := sim.Attempts()
	refused := 0
	for _, a := range attempts {
		if a.Status == http.StatusConflict {
			refused++
		}
	}
	if refused == 0 {
		t.Fatal("the flap penalty never triggered; the test proves nothing")
	}
	checkSpacing(t, attempts, delay)
	// After a refusal the wait doubles: the gap after the first 409 is at
	// least twice the delay.
	for i := 1; i < len(attempts); i++ {
		if attempts[i-1].Status == http.StatusConflict {
			if gap := attempts[i].Start.Sub(attempts[i-1].End); gap < 2*delay {
				t.Fatalf("after a 409 the client came back in %v, want ≥ %v", gap, 2*delay)
			}
		}
	}
	if got := r.pool.Conns()[0].State; got != upstream.StateStreaming {
		t.Fatalf("state %s after recovery, want streaming", got)
	}
}

func TestCrossHostRedirectResendsToken(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	sim.RedirectNext(1)
	r := start(t, sim, sim.StreamURL("demo"), func(c *upstream.Config) { c.Reset = "largest"; c.MaxConnections = 1 })
	waitFor(t, 5*time.Second, "hits through the redirect", func() bool { return r.hits.count() > 0 })
	a := sim.Attempts()
	if len(a) != 2 || a[0].Status != http.StatusFound || a[1].Status != http.StatusOK {
		t.Fatalf("attempts %+v, want a 302 then a 200", a)
	}
	if a[0].Host == a[1].Host {
		t.Fatalf("redirect stayed on host %s", a[0].Host)
	}
	if !a[1].HadToken {
		t.Fatal("the second host did not get the token")
	}
	if !strings.Contains(a[1].Query, "maxConnections=1") || !strings.Contains(a[1].Query, "reset=largest") {
		t.Fatalf("query lost on redirect: %q", a[1].Query)
	}
}

// TestDefaultRedirectHandlingWouldLoseTheToken is how we checked that the
// redirect test above needs manual redirects: Go's own redirect following
// drops Authorization on the cross-host hop and gets a 401.
func TestDefaultRedirectHandlingWouldLoseTheToken(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	tok, err := upstream.NewClientCredentials(sim.TokenURL(), sim.ClientID(), sim.ClientSecret(), "", 0, nil).Token(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	sim.RedirectNext(1)
	req, _ := http.NewRequest(http.MethodGet, sim.StreamURL("demo"), nil)
	req.Header.Set("Authorization", "Bearer "+tok)
	req.Header.Set("x-api-key", sim.ClientID())
	req.Header.Set("Accept-Encoding", "gzip")
	resp, err := (&http.Client{Transport: &http.Transport{DisableKeepAlives: true}}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("Go's default redirect handling got %d, expected it to lose the token (401)", resp.StatusCode)
	}
}

func TestUnauthorizedFetchesANewTokenAndRecovers(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	r := start(t, sim, sim.StreamURL("demo"), nil)
	waitFor(t, 5*time.Second, "first connection", func() bool { return sim.Active("demo") == 1 })
	sim.ExpireTokens()
	sim.DropConnections()
	waitFor(t, 5*time.Second, "a 401 then recovery", func() bool {
		a := sim.Attempts()
		return len(a) == 3 && a[2].Status == http.StatusOK
	})
	a := sim.Attempts()
	if a[1].Status != http.StatusUnauthorized {
		t.Fatalf("attempt 2 got %d, want 401 with the expired token", a[1].Status)
	}
	if !a[2].HadToken {
		t.Fatal("the retry did not carry a fresh token")
	}
	if gap := a[2].Start.Sub(a[1].End); gap < 50*time.Millisecond {
		t.Fatalf("retry after 401 came after %v, want the auth pause (50ms)", gap)
	}
	_ = r
}

func TestNotFoundKeepsRunningReportsFailingAtMaxDelay(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	delay := 50 * time.Millisecond
	r := start(t, sim, sim.StreamURL("no-such-stream"), func(c *upstream.Config) {
		c.Policy = upstream.Policy{Delay: delay, MaxDelay: 250 * time.Millisecond, Jitter: 0.1}
	})
	// Between attempts the slot is failing; during one it is connecting.
	waitFor(t, 5*time.Second, "three attempts, failing between them", func() bool {
		return len(sim.Attempts()) >= 3 && r.pool.Conns()[0].State == upstream.StateFailing
	})
	st := r.pool.Conns()[0]
	if st.LastStatus != http.StatusNotFound || !strings.Contains(st.LastError, "disabled after 90 days") {
		t.Fatalf("status %d, error %q: want 404 with the documentation's explanation", st.LastStatus, st.LastError)
	}
	checkSpacing(t, sim.Attempts(), 250*time.Millisecond)
	if !strings.Contains(r.logs.String(), "does not exist") {
		t.Fatalf("log does not explain the 404:\n%s", r.logs.String())
	}
}

func TestMaxConnectionsFourDeliversEveryPartitionOnce(t *testing.T) {
	sim := newSim(t, simulator.Options{Rate: 1000})
	r := start(t, sim, sim.StreamURL("demo"), func(c *upstream.Config) { c.MaxConnections = 4 })
	waitFor(t, 5*time.Second, "four connections", func() bool { return sim.Active("demo") == 4 })
	waitFor(t, 5*time.Second, "hits on every connection", func() bool {
		for _, a := range sim.Attempts() {
			if a.Hits == 0 {
				return false
			}
		}
		return true
	})
	r.settle(t, "demo", 0)
	r.stop()
	attempts := sim.Attempts()
	if len(attempts) != 4 || sim.PeakActive("demo") != 4 {
		t.Fatalf("%d attempts, peak %d concurrent; want exactly 4", len(attempts), sim.PeakActive("demo"))
	}
	slots := map[int]bool{}
	for _, a := range attempts {
		if a.Status != http.StatusOK || !strings.Contains(a.Query, "maxConnections=4") {
			t.Fatalf("attempt %+v", a)
		}
		slots[a.Slot] = true
	}
	if len(slots) != 4 {
		t.Fatalf("served partitions %v, want 4 distinct", slots)
	}
	sameHits(t, r.hits.snapshot(), sim.SentHits("demo"))
}

func TestBackfillDuplicatesAreDroppedAndNothingIsLost(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	r := start(t, sim, sim.StreamURL("demo"), nil)
	waitFor(t, 5*time.Second, "100 hits", func() bool { return r.hits.count() >= 100 })
	sim.BackfillDuplicates(80)
	sim.DropConnections()
	waitFor(t, 5*time.Second, "reconnect with backfill", func() bool {
		a := sim.Attempts()
		return len(a) == 2 && a[1].Hits > 100
	})
	r.settle(t, "demo", 0)
	r.stop()
	if d := r.pool.Conns()[0].Duplicates; d != 80 {
		t.Fatalf("%d duplicates dropped, want the 80 re-sent", d)
	}
	sameHits(t, r.hits.snapshot(), sim.SentHits("demo"))
}

func TestHitBytesPassThroughAndBadRecordsAreCounted(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	r := start(t, sim, sim.StreamURL("demo"), func(c *upstream.Config) { c.MaxRecordSize = 8 << 10 })
	waitFor(t, 5*time.Second, "streaming", func() bool { return r.hits.count() > 0 })
	sim.InjectRecord([]byte(`this is not json`))
	sim.InjectRecord([]byte(`[1,2,3]`))
	sim.InjectRecord([]byte(`{"hitIdHigh":1,"hitIdLow":2,"pad":"` + strings.Repeat("x", 20<<10) + `"}`))
	huge := `{"hitIdHigh":18446744073709551615,"hitIdLow":9223372036854775809,"pageName":"é \u00e9 \"q\""}`
	sim.InjectRecord([]byte(huge))
	waitFor(t, 5*time.Second, "the injected records", func() bool {
		st := r.pool.Conns()[0]
		return st.Invalid == 2 && st.Oversized == 1
	})
	r.settle(t, "demo", 1)
	r.stop()
	got := r.hits.snapshot()
	found := false
	for _, h := range got {
		if string(h) == huge {
			found = true
		}
		if !json.Valid(h) || h[0] != '{' {
			t.Fatalf("forwarded a record that is not a JSON object: %q", h)
		}
	}
	if !found {
		t.Fatal("the hit with ids above 2^63 did not come through byte for byte")
	}
	var sent [][]byte
	sent = append(sent, sim.SentHits("demo")...)
	sent = append(sent, []byte(huge))
	sameHits(t, got, sent)
}

func TestStallTimeoutEndsASilentConnectionButShortSilenceIsNormal(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	r := start(t, sim, sim.StreamURL("demo"), func(c *upstream.Config) { c.StallTimeout = 400 * time.Millisecond })
	waitFor(t, 5*time.Second, "streaming", func() bool { return sim.Active("demo") == 1 })
	sim.Stall(200 * time.Millisecond)
	before := r.hits.count()
	waitFor(t, 5*time.Second, "hits after a short stall", func() bool { return r.hits.count() > before+50 })
	if n := len(sim.Attempts()); n != 1 {
		t.Fatalf("a 200ms silence caused %d attempts; silence under the stall timeout is normal", n)
	}
	sim.Stall(2 * time.Second)
	waitFor(t, 5*time.Second, "the stall to end the connection", func() bool {
		return strings.Contains(r.pool.Conns()[0].LastError, "stall")
	})
	// The next attempt waits the reconnect delay from when lsmux gave up.
	waitFor(t, 5*time.Second, "the next attempt", func() bool { return len(sim.Attempts()) >= 2 })
	var lost time.Time
	for _, e := range r.pool.Conns()[0].Events {
		if e.Kind == "lost" {
			lost = e.Time
		}
	}
	if gap := sim.Attempts()[1].Start.Sub(lost); lost.IsZero() || gap < 200*time.Millisecond {
		t.Fatalf("after the stall the next attempt came %v after the loss, want ≥ 200ms", gap)
	}
}

func TestTransportNeverNegotiatesHTTP2(t *testing.T) {
	protos := make(chan string, 1)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case protos <- r.Proto:
		default:
		}
		w.WriteHeader(http.StatusNotFound)
	}))
	srv.EnableHTTP2 = true
	srv.StartTLS()
	defer srv.Close()
	pool, err := upstream.NewPool(upstream.Config{
		StreamURL: srv.URL + "/api/1/stream/x",
		Tokens:    upstream.StaticToken("t"),
		TLSConfig: &tls.Config{RootCAs: srv.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(t.Context())
	done := make(chan struct{})
	go func() { pool.Run(ctx, &collector{}); close(done) }()
	defer func() { cancel(); <-done }()
	select {
	case proto := <-protos:
		if proto != "HTTP/1.1" {
			t.Fatalf("request used %s; Live Stream answers 505 to anything but HTTP/1.1", proto)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no request reached the server")
	}
}

func TestSecretsNeverInLogsErrorsOrStatus(t *testing.T) {
	sim := newSim(t, simulator.Options{ClientSecret: "s3cr3t-value-xyz"})
	r := start(t, sim, sim.StreamURL("demo"), nil)
	waitFor(t, 5*time.Second, "streaming", func() bool { return r.hits.count() > 0 })
	sim.ExpireTokens()
	sim.DropConnections()
	waitFor(t, 5*time.Second, "recovery", func() bool { return len(sim.Attempts()) == 3 })

	bad := newSim(t, simulator.Options{ClientSecret: "other"})
	wrong := start(t, bad, bad.StreamURL("demo"), func(c *upstream.Config) {
		c.Tokens = upstream.NewClientCredentials(bad.TokenURL(), bad.ClientID(), "s3cr3t-value-xyz", "", 0, nil)
	})
	waitFor(t, 5*time.Second, "credential failure", func() bool { return wrong.pool.Conns()[0].State == upstream.StateFailing })
	if !strings.Contains(wrong.pool.Conns()[0].LastError, "LSMUX_CLIENT_SECRET") {
		t.Fatalf("rejected credentials not explained: %q", wrong.pool.Conns()[0].LastError)
	}
	for _, rg := range []*rig{r, wrong} {
		status, _ := json.Marshal(rg.pool.Conns())
		for what, text := range map[string]string{"logs": rg.logs.String(), "status": string(status)} {
			if strings.Contains(text, "s3cr3t-value-xyz") {
				t.Fatalf("the client secret appears in %s", what)
			}
			if strings.Contains(text, "sim-") {
				t.Fatalf("an access token appears in %s:\n%s", what, text)
			}
		}
	}
}

func TestInvalidConfigIsRejectedUpFront(t *testing.T) {
	tok := upstream.StaticToken("t")
	for _, c := range []upstream.Config{
		{StreamURL: "ftp://x/api/1/stream/a", Tokens: tok},
		{StreamURL: "https://x/", Tokens: tok},
		{StreamURL: "https://x/api/1/stream/a", Params: upstream.Params{MaxConnections: 9}, Tokens: tok},
		{StreamURL: "https://x/api/1/stream/a", Params: upstream.Params{Reset: "middle"}, Tokens: tok},
		{StreamURL: "https://x/api/1/stream/a", Params: upstream.Params{SmoothingBucketSize: 7201}, Tokens: tok},
		{StreamURL: "https://x/api/1/stream/a"},
	} {
		if _, err := upstream.NewPool(c); err == nil {
			t.Errorf("config %+v accepted", c)
		}
	}
	if _, err := upstream.NewPool(upstream.Config{StreamURL: "https://x/api/1/stream/a", Tokens: tok}); err != nil {
		t.Fatal(err)
	}
}

func ExampleStreamName() {
	name, _ := upstream.StreamName("https://livestream.adobe.net/api/1/stream/my-endpoint")
	fmt.Println(name)
	// Output: my-endpoint
}

func TestCorruptGzipAndCutRecordsReconnectWithoutLoss(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	r := start(t, sim, sim.StreamURL("demo"), nil)
	waitFor(t, 5*time.Second, "hits", func() bool { return r.hits.count() > 20 })
	sim.CorruptNext()
	waitFor(t, 5*time.Second, "reconnect after corruption", func() bool {
		a := sim.Attempts()
		return len(a) == 2 && a[1].Hits > 10
	})
	sim.CutNext()
	waitFor(t, 5*time.Second, "reconnect after the cut record", func() bool {
		a := sim.Attempts()
		return len(a) == 3 && a[2].Hits > 10
	})
	r.settle(t, "demo", 0)
	r.stop()
	a := sim.Attempts()
	if !strings.Contains(a[0].Reason, "corrupt") || !strings.Contains(a[1].Reason, "cut") {
		t.Fatalf("reasons %q, %q", a[0].Reason, a[1].Reason)
	}
	if st := r.pool.Conns()[0]; st.Invalid != 0 {
		t.Fatalf("the cut record was counted as %d invalid records; it ends with the connection", st.Invalid)
	}
	checkSpacing(t, a, 200*time.Millisecond)
	sameHits(t, r.hits.snapshot(), sim.SentHits("demo"))
}
