package main

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/chromedp/chromedp"

	"lsmux/internal/cli"
	"lsmux/internal/sse"
)

// testCert is a self-signed certificate for 127.0.0.1 and localhost, in
// PEM files.
type testCert struct {
	certFile, keyFile string
	leaf              *x509.Certificate
	pool              *x509.CertPool
	certPEM, keyPEM   []byte
}

func newTestCert(t *testing.T, dir, name string) testCert {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl := &x509.Certificate{
		SerialNumber: serial, Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour),
		DNSNames: []string{"localhost"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := x509.ParseCertificate(der)
	kder, _ := x509.MarshalPKCS8PrivateKey(key)
	c := testCert{certFile: filepath.Join(dir, "tls.crt"), keyFile: filepath.Join(dir, "tls.key"), leaf: leaf, pool: x509.NewCertPool(),
		certPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), keyPEM: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder})}
	c.pool.AddCert(leaf)
	return c
}

// install writes the pair in place, key first, as a naive rotation does.
func (c testCert) install(t *testing.T) {
	t.Helper()
	if err := os.WriteFile(c.keyFile, c.keyPEM, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(c.certFile, c.certPEM, 0o644); err != nil {
		t.Fatal(err)
	}
}

// servedCert is the certificate a new connection gets.
func servedCert(addr string) (*x509.Certificate, error) {
	conn, err := tls.Dial("tcp", addr, &tls.Config{InsecureSkipVerify: true})
	if err != nil {
		return nil, err
	}
	defer conn.Close()
	return conn.ConnectionState().PeerCertificates[0], nil
}

// TestTLSRefusesBadFiles: a missing, unreadable or mismatched certificate
// or key stops the start with an error naming the file.
func TestTLSRefusesBadFiles(t *testing.T) {
	dir := t.TempDir()
	a := newTestCert(t, filepath.Join(dir), "a")
	a.install(t)
	bdir := filepath.Join(dir, "b")
	os.Mkdir(bdir, 0o755)
	b := newTestCert(t, bdir, "b")
	b.install(t)
	sim := newSim(t, 10)
	base := []string{"-listen", "127.0.0.1:0", "-stream-url", sim.StreamURL("demo"), "-token-url", sim.TokenURL(),
		"-client-id", sim.ClientID(), "-client-secret", sim.ClientSecret()}
	for _, tc := range []struct {
		args []string
		says []string
	}{
		{[]string{"-tls-cert", a.certFile}, []string{"LSMUX_TLS_CERT and LSMUX_TLS_KEY go together"}},
		{[]string{"-tls-cert", filepath.Join(dir, "missing.crt"), "-tls-key", a.keyFile}, []string{"LSMUX_TLS_CERT", "missing.crt", "no such file"}},
		{[]string{"-tls-cert", a.certFile, "-tls-key", b.keyFile}, []string{"are not a pair", a.certFile, b.keyFile}},
		{[]string{"-tls-cert", a.keyFile, "-tls-key", a.keyFile}, []string{"holds no PEM certificate", a.keyFile}},
		{[]string{"-tls-cert", a.certFile, "-tls-key", a.certFile}, []string{"LSMUX_TLS_KEY", "holds no PEM private key"}},
	} {
		var stderr bytes.Buffer
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		code := run(ctx, append([]string{"serve"}, append(base, tc.args...)...), cli.Env{}, io.Discard, &stderr)
		cancel()
		if code == 0 {
			t.Errorf("%q: lsmux started", tc.args)
		}
		for _, s := range tc.says {
			if !strings.Contains(stderr.String(), s) {
				t.Errorf("%q: stderr %q lacks %q", tc.args, stderr.String(), s)
			}
		}
	}
}

// TestTLSServesFiftySSEOverOneHTTP2Connection: a Go HTTP/2 client holds
// 50 SSE subscriptions over one TLS connection, and each receives every
// hit; lsmux healthcheck and lsmux tail reach the TLS listener too.
func TestTLSServesFiftySSEOverOneHTTP2Connection(t *testing.T) {
	dir := t.TempDir()
	c := newTestCert(t, dir, "lsmux")
	c.install(t)
	sim := newSim(t, 100)
	r := startApp(t, sim, "-tls-cert", c.certFile, "-tls-key", c.keyFile)
	if !strings.HasPrefix(r.root, "https://") {
		t.Fatalf("root %s: want https", r.root)
	}
	var dials atomic.Int32
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: c.pool}, ForceAttemptHTTP2: true,
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		}}
	defer tr.CloseIdleConnections()
	client := &http.Client{Transport: tr}
	var status struct {
		Streams []struct {
			Ring struct {
				Hits      int
				NewestSeq uint64
			}
		}
	}
	waitFor(t, 20*time.Second, "hits in the ring", func() bool {
		resp, err := client.Get(r.root + "/v1/status")
		if err != nil {
			return false
		}
		defer resp.Body.Close()
		return resp.ProtoMajor == 2 && jsonDecode(resp.Body, &status) == nil && len(status.Streams) == 1 && status.Streams[0].Ring.Hits > 0
	})
	from := status.Streams[0].Ring.NewestSeq
	const subs, want = 50, 60
	got := make([][]uint64, subs)
	var wg sync.WaitGroup
	errs := make(chan error, subs)
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	for i := range subs {
		wg.Go(func() {
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/sse?from="+strconv.FormatUint(from, 10), nil)
			resp, err := client.Do(req)
			if err != nil {
				errs <- err
				return
			}
			defer resp.Body.Close()
			if resp.ProtoMajor != 2 || resp.StatusCode != http.StatusOK {
				errs <- fmt.Errorf("subscription %d: %s %d", i, resp.Proto, resp.StatusCode)
				return
			}
			rd := sse.NewReader(resp.Body, 0)
			for len(got[i]) < want {
				ev, err := rd.Next()
				if err != nil {
					errs <- fmt.Errorf("subscription %d after %d hits: %w", i, len(got[i]), err)
					return
				}
				if string(ev.Type) == "hit" {
					seq, _ := strconv.ParseUint(string(ev.ID), 10, 64)
					got[i] = append(got[i], seq)
				} else if string(ev.Type) == "gap" {
					errs <- fmt.Errorf("subscription %d: a gap notice %s", i, ev.Data)
					return
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	for i := range subs {
		for j, seq := range got[i] {
			if seq != from+uint64(j) {
				t.Fatalf("subscription %d's hit %d is %d, want %d (every hit, in order)", i, j, seq, from+uint64(j))
			}
		}
	}
	if n := dials.Load(); n != 1 {
		t.Errorf("%d TCP connections for 50 subscriptions and status; want 1 (HTTP/2)", n)
	}

	// The container's healthcheck and lsmux tail, over TLS.
	var out, stderr bytes.Buffer
	if code := run(context.Background(), []string{"healthcheck", "-listen", r.app.addr(), "-tls-cert", c.certFile}, cli.Env{}, &out, &stderr); code != 0 {
		t.Errorf("healthcheck over TLS: exit %d: %s", code, stderr.String())
	}
	tailOut, tailErr, code := tailRun(t, cli.Env{"LSMUX_LISTEN": r.app.addr(), "LSMUX_TLS_CERT": c.certFile}, "--from", "oldest", "--count", "3", "demo")
	if code != 0 || len(lines(tailOut)) != 3 {
		t.Errorf("tail of the local TLS instance: exit %d, %d lines, stderr %q", code, len(lines(tailOut)), tailErr)
	}
	caFile := filepath.Join(dir, "ca.pem")
	os.WriteFile(caFile, c.certPEM, 0o644)
	if _, tailErr, code := tailRun(t, nil, "--server", "https://localhost:"+portOf(r.app.addr()), "--ca-file", caFile, "--count", "1", "demo"); code != 0 {
		t.Errorf("tail --ca-file: exit %d, stderr %q", code, tailErr)
	}
	if _, tailErr, code := tailRun(t, nil, "--server", r.root, "--count", "1", "--retry-min", "10ms", "--duration", "3s", "demo"); code != 0 || !strings.Contains(tailErr, "certificate") {
		t.Errorf("tail of an unknown certificate: exit %d, stderr %q; want it to say why it cannot connect", code, tailErr)
	}
}

func jsonDecode(r io.Reader, v any) error { return json.NewDecoder(r).Decode(v) }

func portOf(addr string) string {
	_, p, _ := net.SplitHostPort(addr)
	return p
}

// TestTLSRotationKeepsSubscribers: the certificate files are replaced
// while 20 subscribers stream, each on its own TLS connection; all 20
// keep streaming, and new connections get the new certificate. A broken
// file at the next rotation keeps the pair in use and is logged.
func TestTLSRotationKeepsSubscribers(t *testing.T) {
	dir := t.TempDir()
	old := newTestCert(t, dir, "old")
	old.install(t)
	sim := newSim(t, 50)
	r := startApp(t, sim, "-tls-cert", old.certFile, "-tls-key", old.keyFile, "-tls-recheck", "100ms", "-log-level", "info")
	addr := r.app.addr()
	roots := x509.NewCertPool()
	roots.AddCert(old.leaf)
	next := newTestCert(t, dir, "new")
	roots.AddCert(next.leaf)
	const subs = 20
	counts := make([]atomic.Int64, subs)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	for i := range subs {
		tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots}, ForceAttemptHTTP2: false, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.base+"/sse", nil)
		resp, err := (&http.Client{Transport: tr}).Do(req)
		if err != nil {
			t.Fatal(err)
		}
		if resp.TLS.PeerCertificates[0].Subject.CommonName != "old" {
			t.Fatalf("subscriber %d got certificate %q", i, resp.TLS.PeerCertificates[0].Subject.CommonName)
		}
		wg.Go(func() {
			defer resp.Body.Close()
			rd := sse.NewReader(resp.Body, 0)
			for {
				ev, err := rd.Next()
				if err != nil {
					return
				}
				if string(ev.Type) == "hit" {
					counts[i].Add(1)
				}
			}
		})
	}
	waitFor(t, 20*time.Second, "all 20 streaming", func() bool {
		for i := range counts {
			if counts[i].Load() < 5 {
				return false
			}
		}
		return true
	})
	next.install(t)
	waitFor(t, 20*time.Second, "new connections to get the new certificate", func() bool {
		c, err := servedCert(addr)
		return err == nil && c.Subject.CommonName == "new"
	})
	var before [subs]int64
	for i := range counts {
		before[i] = counts[i].Load()
	}
	waitFor(t, 20*time.Second, "all 20 to stream on after the rotation", func() bool {
		for i := range counts {
			if counts[i].Load() < before[i]+10 {
				return false
			}
		}
		return true
	})
	if !strings.Contains(r.logs.String(), "serving the new certificate") {
		t.Errorf("the rotation was not logged: %s", r.logs.String())
	}

	// A bad rotation: the key is replaced by garbage.
	os.WriteFile(next.keyFile, []byte("not a key"), 0o600)
	waitFor(t, 20*time.Second, "the broken pair to be logged", func() bool {
		return strings.Contains(r.logs.String(), "cannot be used") && strings.Contains(r.logs.String(), "still serving the previous certificate")
	})
	if c, err := servedCert(addr); err != nil || c.Subject.CommonName != "new" {
		t.Errorf("after a broken rotation new connections get %v (%v); want the certificate in use", c.Subject.CommonName, err)
	}
	if keyBody := strings.Split(string(next.keyPEM), "\n")[1]; strings.Contains(r.logs.String(), keyBody) {
		t.Error("the log shows key material")
	}
}

// TestBrowserStreamsTenEventSourcesOverTLS: over HTTP/1.1 a browser gives
// one host six connections, so ten EventSources on one page would leave
// four waiting; over TLS lsmux speaks HTTP/2 and all ten stream.
func TestBrowserStreamsTenEventSourcesOverTLS(t *testing.T) {
	browser := chromiumOrSkip(t)
	dir := t.TempDir()
	c := newTestCert(t, dir, "lsmux")
	c.install(t)
	sim := newSim(t, 50)
	r := startApp(t, sim, "-tls-cert", c.certFile, "-tls-key", c.keyFile)
	spki := sha256.Sum256(c.leaf.RawSubjectPublicKeyInfo)
	d := openBrowser(t, browser, chromedp.Flag("ignore-certificate-errors-spki-list", base64.StdEncoding.EncodeToString(spki[:])))
	if err := chromedp.Do(d.step, chromedp.Navigate(r.root+"/")); err != nil { // the dashboard: its own status polls and stream too
		t.Fatal(err)
	}
	if proto, err := chromedp.Run(d.step, chromedp.Evaluate[string](`performance.getEntriesByType("navigation")[0].nextHopProtocol`)); err != nil || proto != "h2" {
		t.Errorf("the page came over %q (%v), want h2", proto, err)
	}
	if _, err := chromedp.Run(d.step, chromedp.Evaluate[bool](`window.counts = Array(10).fill(0);
		for (let i = 0; i < 10; i++) new EventSource("/v1/streams/demo/sse").addEventListener("hit", () => window.counts[i]++); true`)); err != nil {
		t.Fatal(err)
	}
	d.poll("all ten EventSources to receive 5 hits", `window.counts.every((n) => n >= 5)`)
	if errs := d.consoleErrors(); len(errs) > 0 {
		t.Fatalf("browser console errors: %q", errs)
	}
}

// TestDropInClientOverTLS: a client written as Adobe's samples are (Node's
// https module, Accept-Encoding: gzip, gunzip, split at CRLF) reads the
// drop-in endpoint over TLS, byte-identical to the simulator's hits; only
// the host changed (and the CA it trusts, through NODE_EXTRA_CA_CERTS).
func TestDropInClientOverTLS(t *testing.T) {
	node := nodeOrSkip(t)
	dir := t.TempDir()
	c := newTestCert(t, dir, "lsmux")
	c.install(t)
	sim := newSim(t, 100)
	r := startApp(t, sim, "-tls-cert", c.certFile, "-tls-key", c.keyFile)
	waitFor(t, 20*time.Second, "20 hits sent", func() bool { return len(sim.SentHits("demo")) >= 20 })
	script := filepath.Join(dir, "client.js")
	os.WriteFile(script, []byte(dropInClientJS), 0o644)
	cmd := exec.Command(node, script, "https://localhost:"+portOf(r.app.addr())+"/api/1/stream/demo?from=oldest", "20")
	cmd.Env = append(os.Environ(), "NODE_EXTRA_CA_CERTS="+c.certFile)
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		t.Fatalf("node client: %v: %s", err, stderr.String())
	}
	got := lines(string(out))
	sent := sim.SentHits("demo")
	if len(got) != 20 {
		t.Fatalf("the node client read %d records, want 20 (stderr %s)", len(got), stderr.String())
	}
	for i := range got {
		if got[i] != string(sent[i]) {
			t.Fatalf("record %d differs from the simulator's hit:\n%.120s\n%.120s", i, got[i], sent[i])
		}
	}
	if !strings.Contains(stderr.String(), "content-encoding gzip") {
		t.Errorf("the response was not gzip: %s", stderr.String())
	}
}

// dropInClientJS reads a Live Stream URL the way Adobe's Node samples do
// and prints the first N records, one per line.
const dropInClientJS = `
const https = require("https");
const zlib = require("zlib");
const [url, n] = process.argv.slice(2);
const req = https.request(url, { headers: { "Accept-Encoding": "gzip" } }, (res) => {
  process.stderr.write("status " + res.statusCode + " content-encoding " + res.headers["content-encoding"] + "\n");
  const body = res.headers["content-encoding"] === "gzip" ? res.pipe(zlib.createGunzip()) : res;
  let buf = "", count = 0;
  body.on("data", (chunk) => {
    buf += chunk.toString("utf8");
    let i;
    while ((i = buf.indexOf("\r\n")) >= 0) {
      const rec = buf.slice(0, i);
      buf = buf.slice(i + 2);
      if (rec === "") continue;
      process.stdout.write(rec + "\n");
      if (++count >= Number(n)) { req.destroy(); process.exit(0); }
    }
  });
  body.on("end", () => process.exit(count >= Number(n) ? 0 : 1));
});
req.on("error", (e) => { process.stderr.write("error " + e.message + "\n"); process.exit(1); });
req.end();
`

func nodeOrSkip(t *testing.T) string {
	t.Helper()
	return testTool(t, "node", "LSMUX_BROWSER_TESTS", "apt-get install nodejs")
}
