package upstream_test

import (
	"crypto/tls"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"lsmux/upstream"
	"lsmux/upstream/simulator"
)

// TestRedirectToPlainHTTPIsRefused: a redirect from https to http would
// send the access token in the clear; lsmux does not follow it, and status
// and the log say why.
func TestRedirectToPlainHTTPIsRefused(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	tlsFront := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, sim.StreamURL("demo"), http.StatusFound) // to http://
	}))
	defer tlsFront.Close()
	r := start(t, sim, tlsFront.URL+"/api/1/stream/demo", func(c *upstream.Config) {
		c.TLSConfig = &tls.Config{RootCAs: tlsFront.Client().Transport.(*http.Transport).TLSClientConfig.RootCAs}
	})
	waitFor(t, 5*time.Second, "the refusal in status", func() bool {
		return strings.Contains(r.pool.Conns()[0].LastError, "refused a redirect from https to http")
	})
	for _, a := range sim.Attempts() {
		if a.HadToken {
			t.Fatalf("the plain-http target received the token: %+v", a)
		}
	}
	if !strings.Contains(r.logs.String(), "refused a redirect from https to http") {
		t.Fatalf("the log does not say why:\n%s", r.logs.String())
	}
}

// TestCredentialsInTheTokenURLAreNeverShown: a token URL with user
// information (a proxy's credentials, say) does not reach status or the
// log, whatever the error quotes.
func TestCredentialsInTheTokenURLAreNeverShown(t *testing.T) {
	sim := newSim(t, simulator.Options{})
	const secret = "proxy-pass-9876"
	bad := "http://svc:" + secret + "@127.0.0.1:1/ims/token/v3?client_secret=also-" + secret
	r := start(t, sim, sim.StreamURL("demo"), func(c *upstream.Config) {
		c.Tokens = upstream.NewClientCredentials(bad, sim.ClientID(), sim.ClientSecret(), "", 0, nil)
	})
	waitFor(t, 5*time.Second, "the token failure in status", func() bool { return r.pool.Conns()[0].LastError != "" })
	status, _ := json.Marshal(r.pool.Conns())
	for what, text := range map[string]string{"status": string(status), "logs": r.logs.String()} {
		if strings.Contains(text, secret) {
			t.Fatalf("%s shows the token URL's credentials:\n%s", what, text)
		}
		if !strings.Contains(text, "127.0.0.1:1") {
			t.Fatalf("%s does not say which token URL failed:\n%s", what, text)
		}
	}
}
