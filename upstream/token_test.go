package upstream_test

import (
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"testing/synctest"
	"time"

	"lsmux/upstream"
)

// imsStub counts token requests and hands out tok-1, tok-2, ...
func imsStub(t *testing.T, expiresIn int) (*httptest.Server, *atomic.Int32) {
	var n atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		r.ParseForm()
		w.Header().Set("Content-Type", "application/json")
		if r.PostForm.Get("client_secret") != "right" || r.PostForm.Get("scope") != "openid,AdobeID" {
			w.WriteHeader(http.StatusUnauthorized)
			fmt.Fprint(w, `{"error":"invalid_client","error_description":"invalid client_secret parameter"}`)
			return
		}
		i := n.Add(1)
		fmt.Fprintf(w, `{"access_token":"tok-%d","token_type":"bearer","expires_in":%d}`, i, expiresIn)
	}))
	t.Cleanup(srv.Close)
	return srv, &n
}

// gatedIMS is an in-memory IMS token endpoint: every request waits for the
// gate, then gets tok-1, tok-2, ... It takes no socket, so it runs inside a
// synctest bubble.
type gatedIMS struct {
	gate    chan struct{}
	fetches atomic.Int32
}

func (g *gatedIMS) RoundTrip(r *http.Request) (*http.Response, error) {
	<-g.gate
	i := g.fetches.Add(1)
	body := fmt.Sprintf(`{"access_token":"tok-%d","token_type":"bearer","expires_in":86399}`, i)
	return &http.Response{StatusCode: 200, Header: http.Header{"Content-Type": {"application/json"}},
		Body: io.NopCloser(strings.NewReader(body)), Request: r}, nil
}

// TestClientCredentialsOneFetchForManyConnections: eight connections that
// ask for a token at once share one fetch. Under synctest the eight are
// known to be waiting together before the endpoint answers.
func TestClientCredentialsOneFetchForManyConnections(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		ims := &gatedIMS{gate: make(chan struct{})}
		cc := upstream.NewClientCredentials("https://ims.example/ims/token/v3", "id", "right", "openid,AdobeID", time.Minute, &http.Client{Transport: ims})
		var wg sync.WaitGroup
		toks := make([]string, 8)
		for i := range toks {
			wg.Go(func() {
				tok, err := cc.Token(t.Context())
				if err != nil {
					t.Error(err)
				}
				toks[i] = tok
			})
		}
		synctest.Wait() // all eight blocked: one in the request, seven behind it
		close(ims.gate)
		wg.Wait()
		if ims.fetches.Load() != 1 {
			t.Fatalf("%d token fetches for 8 concurrent connects, want 1", ims.fetches.Load())
		}
		for _, tok := range toks {
			if tok != "tok-1" {
				t.Fatalf("tokens %v", toks)
			}
		}
		// Cached until the margin.
		if tok, _ := cc.Token(t.Context()); tok != "tok-1" || ims.fetches.Load() != 1 {
			t.Fatalf("second call fetched again: %s after %d fetches", tok, ims.fetches.Load())
		}
		// A 401 invalidates it.
		cc.Invalidate("tok-1")
		if tok, _ := cc.Token(t.Context()); tok != "tok-2" {
			t.Fatalf("after Invalidate got %s, want a fresh token", tok)
		}
		// Invalidating a token that is no longer cached changes nothing.
		cc.Invalidate("tok-1")
		if tok, _ := cc.Token(t.Context()); tok != "tok-2" {
			t.Fatalf("stale Invalidate dropped the current token: %s", tok)
		}
	})
}

func TestClientCredentialsRenewsBeforeExpiry(t *testing.T) {
	srv, fetches := imsStub(t, 30) // 30 s tokens, 1 min margin: always due
	cc := upstream.NewClientCredentials(srv.URL, "id", "right", "openid,AdobeID", time.Minute, nil)
	cc.Token(t.Context())
	cc.Token(t.Context())
	if fetches.Load() != 2 {
		t.Fatalf("%d fetches; a token inside the renewal margin must be renewed", fetches.Load())
	}
}

func TestClientCredentialsRejectedSecretIsAStatusErrorWithoutTheSecret(t *testing.T) {
	srv, _ := imsStub(t, 100)
	cc := upstream.NewClientCredentials(srv.URL, "id", "wrong-secret-123", "openid,AdobeID", 0, nil)
	_, err := cc.Token(t.Context())
	var se *upstream.StatusError
	if !errors.As(err, &se) || se.Status != http.StatusUnauthorized {
		t.Fatalf("err = %v, want a 401 StatusError", err)
	}
	if strings.Contains(err.Error(), "wrong-secret-123") {
		t.Fatalf("error text carries the secret: %v", err)
	}
}

func TestFileTokenIsReadOnEveryConnect(t *testing.T) {
	path := filepath.Join(t.TempDir(), "token")
	os.WriteFile(path, []byte("first\n"), 0o600)
	ft := upstream.FileToken(path)
	if tok, err := ft.Token(t.Context()); err != nil || tok != "first" {
		t.Fatalf("got %q, %v", tok, err)
	}
	os.WriteFile(path, []byte("  second  "), 0o600)
	if tok, _ := ft.Token(t.Context()); tok != "second" {
		t.Fatalf("rotated file not re-read: %q", tok)
	}
	os.WriteFile(path, nil, 0o600)
	if _, err := ft.Token(t.Context()); err == nil {
		t.Fatal("an empty token file was accepted")
	}
	if _, err := upstream.FileToken(filepath.Join(t.TempDir(), "missing")).Token(t.Context()); err == nil {
		t.Fatal("a missing token file was accepted")
	}
}
