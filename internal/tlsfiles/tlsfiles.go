// Package tlsfiles serves TLS from a certificate and key in PEM files that
// are replaced while the server runs (cert-manager, a Kubernetes secret, a
// renewal cron): the pair is read at start, where a bad one stops the
// start, and read again when the files change, where a bad one keeps the
// pair in use and is reported. Connections already open keep theirs.
package tlsfiles

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"fmt"
	"lsmux/internal/wait"
	"net/http"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/sirupsen/logrus"
)

// Pair is a certificate and key served from files.
type Pair struct {
	certFile, keyFile string
	log               logrus.FieldLogger
	cur               atomic.Pointer[tls.Certificate]

	mu       sync.Mutex // guards sum, trouble and logged (the watcher's state)
	sum      [32]byte   // of both files' contents, as in use
	trouble  string     // the last look's error ("" when it was good)
	logged   bool       // trouble was logged
	reloaded atomic.Int64
}

// Load reads the pair; its error names the file at fault and the fix.
func Load(certFile, keyFile string, log logrus.FieldLogger) (*Pair, error) {
	p := &Pair{certFile: certFile, keyFile: keyFile, log: log}
	cert, sum, err := p.read()
	if err != nil {
		return nil, err
	}
	p.cur.Store(cert)
	p.sum = sum
	p.warnExpiry(cert)
	return p, nil
}

// read loads both files as a pair.
func (p *Pair) read() (*tls.Certificate, [32]byte, error) {
	var sum [32]byte
	certPEM, err := os.ReadFile(p.certFile)
	if err != nil {
		return nil, sum, fmt.Errorf("LSMUX_TLS_CERT %s: %w (want a PEM certificate file readable by lsmux)", p.certFile, err)
	}
	keyPEM, err := os.ReadFile(p.keyFile)
	if err != nil {
		return nil, sum, fmt.Errorf("LSMUX_TLS_KEY %s: %w (want a PEM private key file readable by lsmux)", p.keyFile, err)
	}
	if !bytes.Contains(certPEM, []byte("-----BEGIN CERTIFICATE-----")) {
		return nil, sum, fmt.Errorf("LSMUX_TLS_CERT %s holds no PEM certificate (want -----BEGIN CERTIFICATE-----; is it the key?)", p.certFile)
	}
	if b, _ := pem.Decode(keyPEM); b == nil || !bytes.Contains([]byte(b.Type), []byte("PRIVATE KEY")) {
		return nil, sum, fmt.Errorf("LSMUX_TLS_KEY %s holds no PEM private key (want -----BEGIN PRIVATE KEY-----, or an RSA or EC one)", p.keyFile)
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, sum, fmt.Errorf("LSMUX_TLS_CERT %s and LSMUX_TLS_KEY %s are not a pair: %w (give the key the certificate was issued for)", p.certFile, p.keyFile, err)
	}
	h := sha256.New()
	h.Write(certPEM)
	h.Write([]byte{0})
	h.Write(keyPEM)
	copy(sum[:], h.Sum(nil))
	return &cert, sum, nil
}

func (p *Pair) warnExpiry(cert *tls.Certificate) {
	if cert.Leaf != nil && time.Now().After(cert.Leaf.NotAfter) {
		p.log.WithField("file", p.certFile).Warnf("tls: the certificate expired at %s; clients will refuse it: renew LSMUX_TLS_CERT", cert.Leaf.NotAfter.Format(time.RFC3339))
	}
}

// Config is the server's TLS configuration: HTTP/2 and HTTP/1.1, TLS 1.2
// or later, the current pair for every new connection.
func (p *Pair) Config() *tls.Config {
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		NextProtos: []string{"h2", "http/1.1"},
		GetCertificate: func(*tls.ClientHelloInfo) (*tls.Certificate, error) {
			return p.cur.Load(), nil
		},
	}
}

// Current is the pair new connections get.
func (p *Pair) Current() *tls.Certificate { return p.cur.Load() }

// Reloads counts the times a changed pair was taken into use.
func (p *Pair) Reloads() int64 { return p.reloaded.Load() }

// Watch reads the files every interval until ctx ends, and takes a
// changed pair into use when it is a good one.
func (p *Pair) Watch(ctx context.Context, interval time.Duration) {
	wait.Every(ctx, interval, p.check)
}

// check reads the files once and acts on a change.
func (p *Pair) check() {
	cert, sum, err := p.read()
	p.mu.Lock()
	defer p.mu.Unlock()
	if err != nil {
		// A rotation writes the two files one after the other: what is
		// seen between them is a mismatch that the next look no longer
		// finds. So trouble is logged when two looks in a row find it,
		// once.
		if msg := err.Error(); msg != p.trouble {
			p.trouble, p.logged = msg, false
		} else if !p.logged {
			p.logged = true
			p.log.Errorf("tls: the certificate files changed but cannot be used: %v; still serving the previous certificate (expires %s) until they are fixed", err, expiry(p.cur.Load()))
		}
		return
	}
	if p.logged && sum == p.sum {
		p.log.Info("tls: the certificate files are the pair in use again")
	}
	p.trouble, p.logged = "", false
	if sum == p.sum {
		return
	}
	p.sum = sum
	p.cur.Store(cert)
	p.reloaded.Add(1)
	p.warnExpiry(cert)
	p.log.WithField("file", p.certFile).Infof("tls: serving the new certificate for %s (expires %s) to new connections", names(cert), expiry(cert))
}

func expiry(c *tls.Certificate) string {
	if c == nil || c.Leaf == nil {
		return "unknown"
	}
	return c.Leaf.NotAfter.Format(time.RFC3339)
}

func names(c *tls.Certificate) string {
	if c.Leaf == nil {
		return "?"
	}
	if len(c.Leaf.DNSNames) > 0 {
		return fmt.Sprint(c.Leaf.DNSNames)
	}
	return c.Leaf.Subject.CommonName
}

// PinnedHTTP is an HTTP client (HTTP/2 where offered) whose TLS is
// PinnedClient's.
func PinnedHTTP(certFile string) (*http.Client, error) {
	cfg, err := PinnedClient(certFile)
	if err != nil {
		return nil, err
	}
	return &http.Client{Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true}}, nil
}

// PinnedClient is a client TLS configuration that accepts exactly the
// certificates in certFile, whatever name they were issued for: what
// lsmux healthcheck and lsmux tail use to reach the lsmux on this machine
// over 127.0.0.1, whose certificate names the service, not loopback.
func PinnedClient(certFile string) (*tls.Config, error) {
	b, err := os.ReadFile(certFile)
	if err != nil {
		return nil, fmt.Errorf("LSMUX_TLS_CERT %s: %w", certFile, err)
	}
	var pinned [][]byte
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			pinned = append(pinned, blk.Bytes)
		}
	}
	if len(pinned) == 0 {
		return nil, fmt.Errorf("LSMUX_TLS_CERT %s holds no PEM certificate", certFile)
	}
	return &tls.Config{
		MinVersion: tls.VersionTLS12,
		// The chain is not verified against roots: the peer must present
		// one of the pinned certificates, checked below.
		InsecureSkipVerify: true,
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("tls: the server sent no certificate")
			}
			leaf := cs.PeerCertificates[0].Raw
			for _, p := range pinned {
				if bytes.Equal(p, leaf) {
					return nil
				}
			}
			return errors.New("tls: the server's certificate is not the one in LSMUX_TLS_CERT (rotated a moment ago? try again)")
		},
	}, nil
}
