package proxy_test

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"lsmux/fanout"
	"lsmux/proxy"

	"github.com/sirupsen/logrus"
)

// do sends one request through the server's real router and middleware,
// from remote (host:port).
func do(t *testing.T, srv *proxy.Server, method, target, remote string, header http.Header) *httptest.ResponseRecorder {
	t.Helper()
	req := httptest.NewRequest(method, target, nil)
	req.RemoteAddr = remote
	for k, v := range header {
		req.Header[k] = v
	}
	rec := httptest.NewRecorder()
	srv.Handler().ServeHTTP(rec, req)
	return rec
}

func newServer(t *testing.T, opts proxy.Options) *proxy.Server {
	t.Helper()
	hub := fanout.NewHub(fanout.Options{FirstSeq: 1})
	return proxy.New([]*proxy.Stream{{Name: "s", Hub: hub}}, opts)
}

// TestDNSRebindingIsRefusedWithoutAuth: with auth off, a request whose Host
// is a name (an attacker's page that rebound its name to 127.0.0.1 sends
// its own name, with a matching Origin) is refused; IP addresses,
// localhost and names in LSMUX_ALLOWED_HOSTS are answered; with auth on the
// token decides.
func TestDNSRebindingIsRefusedWithoutAuth(t *testing.T) {
	open := newServer(t, proxy.Options{AllowedHosts: []string{"lsmux.internal", ".svc.cluster.local"}})
	for host, want := range map[string]int{
		"rebind.evil:8080":               403,
		"rebind.evil":                    403,
		"127.0.0.1:8080":                 200,
		"[::1]:8080":                     200,
		"10.0.0.7:8080":                  200,
		"localhost:8080":                 200,
		"dash.localhost":                 200,
		"lsmux.internal:8080":            200,
		"lsmux.ns.svc.cluster.local:80":  200,
		"lsmux.internal.evil.example:80": 403,
	} {
		rec := do(t, open, "GET", "http://"+host+"/v1/streams", "127.0.0.1:5000", http.Header{"Host": {host}, "Origin": {"http://" + host}})
		if rec.Code != want {
			t.Errorf("Host %s: %d %s, want %d", host, rec.Code, rec.Body, want)
		}
		if want == 403 && !strings.Contains(rec.Body.String(), "LSMUX_ALLOWED_HOSTS") {
			t.Errorf("Host %s refused without saying what to do: %s", host, rec.Body)
		}
	}
	withAuth := newServer(t, proxy.Options{AuthTokens: []string{"t0k"}})
	if rec := do(t, withAuth, "GET", "http://rebind.evil/v1/streams", "127.0.0.1:5000", http.Header{"Authorization": {"Bearer t0k"}}); rec.Code != 200 {
		t.Errorf("with a token, any Host: %d", rec.Code)
	}
}

// TestCrossSiteRequestsNeedAnAllowedOrigin: an <img src> or link on
// another site (Sec-Fetch-Site: cross-site, no Origin) cannot open a
// subscription or read status; an allowed origin can; same-site pages and
// clients that send no fetch metadata are unaffected. No response allows
// credentials.
func TestCrossSiteRequestsNeedAnAllowedOrigin(t *testing.T) {
	srv := newServer(t, proxy.Options{AllowedOrigins: []string{"https://dash.example.com"}})
	for _, c := range []struct {
		name   string
		header http.Header
		want   int
	}{
		{"an image on another site", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Sec-Fetch-Dest": {"image"}}, 403},
		{"a page of another site", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://evil.example"}}, 403},
		{"the allowed dashboard", http.Header{"Sec-Fetch-Site": {"cross-site"}, "Origin": {"https://dash.example.com"}}, 200},
		{"the page itself", http.Header{"Sec-Fetch-Site": {"same-origin"}}, 200},
		{"curl", nil, 200},
	} {
		rec := do(t, srv, "GET", "http://127.0.0.1:8080/v1/status", "127.0.0.1:5000", c.header)
		if rec.Code != c.want {
			t.Errorf("%s: %d %s, want %d", c.name, rec.Code, rec.Body, c.want)
		}
		if v := rec.Header().Get("Access-Control-Allow-Credentials"); v != "" {
			t.Errorf("%s: Access-Control-Allow-Credentials: %s", c.name, v)
		}
	}
	star := newServer(t, proxy.Options{AllowedOrigins: []string{"*"}})
	rec := do(t, star, "GET", "http://127.0.0.1:8080/v1/status", "127.0.0.1:5000", http.Header{"Origin": {"https://any.example"}})
	if rec.Code != 200 || rec.Header().Get("Access-Control-Allow-Credentials") != "" {
		t.Errorf("with *: %d, credentials %q", rec.Code, rec.Header().Get("Access-Control-Allow-Credentials"))
	}
}

// TestDemoFaultsNeedTheTokenAndAnAllowedOrigin: the demo's fault
// switchboard changes what the upstream does; it sits behind the same
// checks as the API.
func TestDemoFaultsNeedTheTokenAndAnAllowedOrigin(t *testing.T) {
	injected := 0
	demo := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/faults/drop" {
			injected++
		}
		w.WriteHeader(200)
	})
	srv := newServer(t, proxy.Options{AuthTokens: []string{"t0k"}, Demo: demo})
	for _, c := range []struct {
		name   string
		header http.Header
		want   int
	}{
		{"no token", nil, 401},
		{"another site's page, with the token", http.Header{"Authorization": {"Bearer t0k"}, "Origin": {"https://evil.example"}}, 403},
		{"the token", http.Header{"Authorization": {"Bearer t0k"}}, 200},
	} {
		if rec := do(t, srv, "POST", "http://127.0.0.1:8080/demo/faults/drop", "127.0.0.1:5000", c.header); rec.Code != c.want {
			t.Errorf("%s: %d, want %d", c.name, rec.Code, c.want)
		}
	}
	if injected != 1 {
		t.Fatalf("%d faults injected, want only the one with the token", injected)
	}
}

// TestSubscriberListIsForThisMachineWithoutAuth: the list shows addresses
// and filters, so without a token only loopback may have it; the summary
// stays open.
func TestSubscriberListIsForThisMachineWithoutAuth(t *testing.T) {
	srv := newServer(t, proxy.Options{})
	if rec := do(t, srv, "GET", "http://10.0.0.7/v1/status?subscribers=1", "10.0.0.9:5000", nil); rec.Code != 403 || !strings.Contains(rec.Body.String(), "LSMUX_AUTH_TOKEN") {
		t.Errorf("list from another machine: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, srv, "GET", "http://10.0.0.7/v1/status", "10.0.0.9:5000", nil); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"auth":"anonymous"`) {
		t.Errorf("summary from another machine: %d %s", rec.Code, rec.Body)
	}
	if rec := do(t, srv, "GET", "http://127.0.0.1/v1/status?subscribers=1", "127.0.0.1:5000", nil); rec.Code != 200 {
		t.Errorf("list from this machine: %d", rec.Code)
	}
	auth := newServer(t, proxy.Options{AuthTokens: []string{"t0k"}})
	if rec := do(t, auth, "GET", "http://10.0.0.7/v1/status?subscribers=1", "10.0.0.9:5000", http.Header{"Authorization": {"Bearer t0k"}}); rec.Code != 200 || !strings.Contains(rec.Body.String(), `"auth":"token"`) {
		t.Errorf("list with a token: %d %s", rec.Code, rec.Body)
	}
}

// TestTokenFileIsReadAgainWhenItChanges: LSMUX_AUTH_TOKEN_FILE holds one
// token per line (commas allowed); a rotated file takes effect without a
// restart, even one of the same length whose modification time was kept
// (cp -p); an empty or missing file lets nobody in (auth never silently
// turns off), and says so in the log once, not per request.
func TestTokenFileIsReadAgainWhenItChanges(t *testing.T) {
	path := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(path, []byte("first,with,commas\n\n  second  \n"), 0o600)
	logs := &strings.Builder{}
	log := logrus.New()
	log.Out = logs
	var mu sync.Mutex
	srv := newServer(t, proxy.Options{AuthTokenFile: path, AuthTokenRecheck: time.Millisecond, Logger: log})
	code := func(tok string) int {
		mu.Lock()
		defer mu.Unlock()
		return do(t, srv, "GET", "http://127.0.0.1/v1/streams", "127.0.0.1:5000", http.Header{"Authorization": {"Bearer " + tok}}).Code
	}
	if code("first,with,commas") != 200 || code("second") != 200 || code("first") != 401 {
		t.Fatalf("tokens from the file: %d %d %d", code("first,with,commas"), code("second"), code("first"))
	}
	st, _ := os.Stat(path)
	os.WriteFile(path, []byte("first,with,commaz\n\n  secant  \n"), 0o600) // same size
	os.Chtimes(path, st.ModTime(), st.ModTime())                           // same time, as cp -p leaves it
	waitFor(t, 5*time.Second, "the rotated token", func() bool { return code("secant") == 200 })
	if code("second") != 401 || code("first,with,commas") != 401 {
		t.Fatal("a rotated-out token still works")
	}
	os.WriteFile(path, nil, 0o600)
	waitFor(t, 5*time.Second, "the empty file to be read", func() bool { return code("secant") == 401 })
	if c := code(""); c != 401 {
		t.Fatalf("an empty token file let a request without token in: %d", c)
	}
	os.Remove(path)
	for range 20 {
		if c := code("secant"); c != 401 {
			t.Fatalf("a missing token file let a request in: %d", c)
		}
		time.Sleep(2 * time.Millisecond) // pace: more than one recheck
	}
	mu.Lock()
	text := logs.String()
	mu.Unlock()
	if n := strings.Count(text, "cannot read the subscriber token file"); n != 1 {
		t.Fatalf("a missing token file was logged %d times over 20 requests; want once:\n%s", n, text)
	}
}
