// Package upstream is lsmux's Live Stream client: it holds one connection
// (or one pool of maxConnections connections) to a Live Stream endpoint,
// reads it continuously, drops duplicate hits and hands every hit's raw
// bytes to a sink. Reconnects follow one policy (see Backoff) that never
// comes back sooner than the configured delay, because Live Stream answers
// quick reconnects with 409 and 503.
package upstream

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"path"
	"strconv"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"lsmux/internal/redact"
)

// Hit is one hit as the pool hands it on.
type Hit struct {
	// Raw is the record's bytes, untouched. It is only valid during the
	// Sink call (it points into the reader's buffer: the hub copies what it
	// keeps, so the hot path copies each hit once).
	Raw []byte
	// ID is hitIdHigh/hitIdLow when HasID. Cluster mode uses it as the
	// JetStream message id, so a hit republished after a failover is
	// dropped by JetStream's duplicate window.
	ID    HitID
	HasID bool
	// Received is when the record was read.
	Received time.Time
}

// Sink receives every hit once, in the order the pool read it: the hub in
// a plain lsmux, the JetStream publisher in cluster mode. Deliver must not
// block (the reader never waits for subscribers) and must be safe for
// concurrent use: each connection slot calls it from its own goroutine.
type Sink interface {
	Deliver(Hit)
}

// Config configures a Pool. Zero durations take the documented defaults.
type Config struct {
	StreamURL string      // https://livestream.adobe.net/api/1/stream/<name>
	Name      string      // the stream's name in lsmux; default the URL's last path element
	ClientID  string      // sent as x-api-key
	Tokens    TokenSource // where bearer tokens come from

	Params // Live Stream's own query parameters

	Policy       Policy
	StallTimeout time.Duration // default 5 min; silence shorter than this is normal

	DialTimeout           time.Duration // default 10 s
	TLSHandshakeTimeout   time.Duration // default 10 s
	ResponseHeaderTimeout time.Duration // default 30 s
	TLSConfig             *tls.Config   // nil: system roots

	MaxRecordSize int // default DefaultMaxRecordSize
	DedupWindow   int // default DefaultDedupWindow

	Logger logrus.FieldLogger
}

// Params are Live Stream's own query parameters for a stream. Check is the
// one place their rules live: configuration checks the operator's values
// with it (naming the setting), NewPool checks again what it is given.
type Params struct {
	MaxConnections      int    // 1..8; 0 means 1
	Reset               string // "", "smallest" or "largest"
	Smoothing           bool
	SmoothingBucketSize int // 1..7200 seconds; 0 = not sent (Live Stream's default)
}

// ParamError is one Live Stream parameter outside what Live Stream accepts.
type ParamError struct {
	Param string // its name in Live Stream's query: maxConnections, reset, smoothingBucketSize
	Value string
	Want  string // what is allowed, in words
}

func (e *ParamError) Error() string { return e.Param + "=" + e.Value + ": " + e.Want }

// Problems lists every parameter outside what Live Stream accepts.
func (p Params) Problems() []*ParamError {
	var out []*ParamError
	if p.MaxConnections < 0 || p.MaxConnections > 8 {
		out = append(out, &ParamError{"maxConnections", strconv.Itoa(p.MaxConnections), "Live Stream allows 1 to 8"})
	}
	switch p.Reset {
	case "", "smallest", "largest":
	default:
		out = append(out, &ParamError{"reset", strconv.Quote(p.Reset), "want smallest or largest"})
	}
	if p.SmoothingBucketSize < 0 || p.SmoothingBucketSize > 7200 {
		out = append(out, &ParamError{"smoothingBucketSize", strconv.Itoa(p.SmoothingBucketSize), "Live Stream allows 1 to 7200 seconds"})
	}
	return out
}

// Check reports every parameter outside what Live Stream accepts, each
// error saying which values are allowed.
func (p Params) Check() error {
	var errs []error
	for _, e := range p.Problems() {
		errs = append(errs, e)
	}
	return errors.Join(errs...)
}

// Pool runs MaxConnections connection slots to one stream and merges their
// hits into one deduplicated stream.
type Pool struct {
	cfg    Config
	name   string
	client *http.Client
	dedup  *Dedup
	slots  []*slot
	log    logrus.FieldLogger
}

// StreamName returns the last path element of a Live Stream URL, which
// names the stream in lsmux's endpoints.
func StreamName(streamURL string) (string, error) {
	shown := redact.URL(streamURL)
	u, err := url.Parse(streamURL)
	if err != nil {
		return "", fmt.Errorf("stream URL %q: %s", shown, redact.In(err.Error(), streamURL))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return "", fmt.Errorf("stream URL %q: scheme must be https (or http for the simulator)", shown)
	}
	name := path.Base(u.Path)
	if name == "" || name == "/" || name == "." {
		return "", fmt.Errorf("stream URL %q: no stream name in the path (want .../api/1/stream/<name>)", shown)
	}
	return name, nil
}

// NewPool validates cfg and returns a Pool ready to Run.
func NewPool(cfg Config) (*Pool, error) {
	name, err := StreamName(cfg.StreamURL)
	if err != nil {
		return nil, err
	}
	if cfg.Name != "" {
		name = cfg.Name
	}
	if err := cfg.Params.Check(); err != nil {
		return nil, fmt.Errorf("stream %s: %w", name, err)
	}
	if cfg.MaxConnections == 0 {
		cfg.MaxConnections = 1
	}
	if cfg.Tokens == nil {
		return nil, fmt.Errorf("stream %s: %w: configure client credentials, an access token or a token file", name, ErrNoToken)
	}
	if cfg.StallTimeout <= 0 {
		cfg.StallTimeout = 5 * time.Minute
	}
	if cfg.ResponseHeaderTimeout <= 0 {
		cfg.ResponseHeaderTimeout = 30 * time.Second // also bounds reading an error answer's body
	}
	cfg.Policy = cfg.Policy.withDefaults()
	if cfg.Logger == nil {
		l := logrus.New()
		l.Out = io.Discard
		cfg.Logger = l
	}
	p := &Pool{
		cfg:    cfg,
		name:   name,
		client: &http.Client{Transport: newTransport(cfg), CheckRedirect: noRedirects},
		dedup:  NewDedup(cfg.DedupWindow),
		log:    cfg.Logger.WithField("stream", name),
	}
	for i := range cfg.MaxConnections {
		p.slots = append(p.slots, newSlot(p, i))
	}
	return p, nil
}

// Name is the stream's name.
func (p *Pool) Name() string { return p.name }

// Run holds the connections until ctx ends, handing every new hit to sink.
// It returns only then: upstream trouble is retried, never returned,
// because a process that exits and is restarted would itself become a
// reconnect storm. Cluster mode runs the pool once per leadership term.
func (p *Pool) Run(ctx context.Context, sink Sink) {
	var wg sync.WaitGroup
	for _, s := range p.slots {
		wg.Go(func() { s.run(ctx, sink) })
	}
	wg.Wait()
}

// Hold shows every slot as waiting, for a reason that is not the pool's
// own (in cluster mode: another replica holds the upstream, or a new
// leader waits out the reconnect delay). until is the earliest next
// attempt, zero when unknown. Call it only while Run is not running.
func (p *Pool) Hold(until time.Time, reason string) {
	for _, s := range p.slots {
		s.set(func(st *ConnStatus) {
			if st.State != StateWaiting || st.Hold != reason {
				st.Since = time.Now()
			}
			st.State, st.NextAttempt, st.Hold = StateWaiting, until, reason
		})
	}
}

// Conns returns a snapshot of every connection slot.
func (p *Pool) Conns() []ConnStatus {
	out := make([]ConnStatus, len(p.slots))
	for i, s := range p.slots {
		out[i] = s.status()
	}
	return out
}

// Streaming reports whether every slot is streaming.
func (p *Pool) Streaming() bool {
	for _, s := range p.slots {
		if s.status().State != StateStreaming {
			return false
		}
	}
	return true
}

// ServeErr is always nil: a plain pool's hub can serve what it holds at
// any time, whatever the upstream does. (In cluster mode a replica cannot
// serve before it has reached JetStream; see cluster.Stream.)
func (p *Pool) ServeErr() error { return nil }

// ReadyErr is always nil: readiness does not hinge on the upstream (see
// DESIGN.md §4: a strict readiness would deadlock a rolling update).
func (p *Pool) ReadyErr() error { return nil }

// newTransport builds an HTTP/1.1-only transport. Live Stream answers 505
// to HTTP/2, and Go's default transport would negotiate HTTP/2 over TLS.
// Keep-alives are off: every attempt is a fresh connection, so no idle
// socket lingers that Live Stream's balancer might count.
func newTransport(cfg Config) *http.Transport {
	dial := cfg.DialTimeout
	if dial <= 0 {
		dial = 10 * time.Second
	}
	tlsTimeout := cfg.TLSHandshakeTimeout
	if tlsTimeout <= 0 {
		tlsTimeout = 10 * time.Second
	}
	header := cfg.ResponseHeaderTimeout
	if header <= 0 {
		header = 30 * time.Second
	}
	var protos http.Protocols
	protos.SetHTTP1(true)
	return &http.Transport{
		Proxy:                 http.ProxyFromEnvironment,
		DialContext:           (&net.Dialer{Timeout: dial, KeepAlive: 30 * time.Second}).DialContext,
		TLSHandshakeTimeout:   tlsTimeout,
		TLSClientConfig:       cfg.TLSConfig,
		ResponseHeaderTimeout: header,
		DisableCompression:    true, // we ask for gzip ourselves and decode it ourselves
		DisableKeepAlives:     true,
		Protocols:             &protos,
	}
}

// noRedirects makes http.Client hand 3xx answers back to us. Go's client
// drops Authorization when a redirect changes host, and Live Stream's 302s
// do change host, so redirects are followed by hand (see slot.open).
func noRedirects(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }

func (p *Pool) requestURL() string {
	u, _ := url.Parse(p.cfg.StreamURL) // validated in NewPool
	q := u.Query()
	q.Set("maxConnections", strconv.Itoa(p.cfg.MaxConnections))
	if p.cfg.Reset != "" {
		q.Set("reset", p.cfg.Reset)
	}
	if p.cfg.Smoothing {
		q.Set("smoothing", "1")
	}
	if p.cfg.SmoothingBucketSize > 0 {
		q.Set("smoothingBucketSize", strconv.Itoa(p.cfg.SmoothingBucketSize))
	}
	u.RawQuery = q.Encode()
	return u.String()
}
