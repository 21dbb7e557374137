// Package client subscribes to an lsmux stream over Server-Sent Events and
// keeps the subscription going: it reconnects by itself with jittered
// backoff and resumes after the last hit it handed over (Last-Event-ID),
// so what a consumer sees is every hit once, in order, with a gap notice
// where lsmux could not deliver. lsmux tail is built on it.
package client

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"lsmux/internal/sse"
)

// Options say what to subscribe to and how to keep at it.
type Options struct {
	// Server is lsmux's base URL (http://127.0.0.1:8080).
	Server string
	Stream string
	// Token is a subscriber token (LSMUX_AUTH_TOKEN), sent as a Bearer
	// token.
	Token string
	// From is where the first connection starts: "live" (or ""),
	// "oldest", or a sequence number (the first hit wanted). After picks
	// up after a number instead (a checkpoint) and wins over From.
	From  string
	After uint64
	// Filter, Fields and Sample are the subscription's parameters, as in
	// the API (filter=, fields=, sample=).
	Filter, Fields, Sample string
	// HTTP is the client to use (its transport decides TLS); nil:
	// http.DefaultClient.
	HTTP *http.Client
	// RetryMin and RetryMax bound the wait before a reconnect: it starts
	// at RetryMin, doubles per failed attempt up to RetryMax, and is
	// jittered (a random share of it, from half to all), so a fleet of
	// consumers does not reconnect in step. A connection that delivered
	// a hit resets it.
	RetryMin, RetryMax time.Duration
	// StallTimeout is how long a connection may send nothing, not even
	// lsmux's keepalive (every 15 s), before it is taken for dead and
	// replaced: a proxy that keeps the TCP connection open but stopped
	// forwarding would otherwise hold the subscription for good. 0: no
	// limit.
	StallTimeout time.Duration
}

// Kind is what an Event is.
type Kind int

const (
	// Hit is a hit: Seq and Data (its bytes as lsmux sent them).
	Hit Kind = iota
	// Gap says hits From..To cannot be delivered.
	Gap
	// Idle says the connection has nothing more buffered: a good moment
	// to flush what was written.
	Idle
	// Connected is a subscription that lsmux accepted.
	Connected
	// Disconnected is a connection that ended; Err says why, Wait how
	// long until the next attempt.
	Disconnected
)

// Event is one thing the subscription reports. Data is valid only until
// the handler returns.
type Event struct {
	Kind     Kind
	Seq      uint64
	Data     []byte
	From, To uint64
	Err      error
	Wait     time.Duration
}

// StatusError is a subscription lsmux refused with an answer retrying
// cannot change (a bad parameter, a wrong token, an unknown stream), or an
// end it asked for (its filter was too expensive). Message is lsmux's own
// explanation.
type StatusError struct {
	Status  int
	Message string
	// RetryAfter is the answer's Retry-After (0: none): a reconnect
	// waits at least that long.
	RetryAfter time.Duration
}

func (e *StatusError) Error() string {
	if e.Status == 0 {
		return e.Message
	}
	return fmt.Sprintf("%d %s: %s", e.Status, http.StatusText(e.Status), e.Message)
}

// permanent reports whether an answer is one retrying cannot change: 4xx
// except 408 (timeout) and 429 (a limit that passes).
func permanent(status int) bool {
	return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
}

// Subscription is one consumer's subscription.
type Subscription struct {
	opts Options
	// last is the resume point: the last hit handed over, or for a live
	// subscription that has had none yet, the stream's newest number
	// when it started (0: neither).
	last uint64
	rnd  *rand.Rand
}

// New checks the options and returns a subscription; Run starts it.
func New(o Options) (*Subscription, error) {
	if _, err := url.Parse(o.Server); err != nil || !strings.HasPrefix(o.Server, "http://") && !strings.HasPrefix(o.Server, "https://") {
		return nil, fmt.Errorf("server %q: want an http:// or https:// URL, such as http://127.0.0.1:8080", o.Server)
	}
	if o.Stream == "" {
		return nil, errors.New("no stream: name the stream to read (GET /v1/streams lists them)")
	}
	switch o.From {
	case "", "live", "oldest":
	default:
		if _, err := strconv.ParseUint(o.From, 10, 64); err != nil {
			return nil, fmt.Errorf("from %q: want oldest, live or a sequence number", o.From)
		}
	}
	if o.HTTP == nil {
		o.HTTP = http.DefaultClient
	}
	if o.RetryMin <= 0 {
		o.RetryMin = time.Second
	}
	if o.RetryMax < o.RetryMin {
		o.RetryMax = o.RetryMin
	}
	return &Subscription{opts: o, last: o.After, rnd: rand.New(rand.NewPCG(rand.Uint64(), rand.Uint64()))}, nil
}

// Run reads the stream until ctx ends (it then returns nil), the handler
// returns an error (returned as it is), or lsmux refuses the subscription
// for good (a *StatusError). Every other trouble is reported as a
// Disconnected event and retried.
func (s *Subscription) Run(ctx context.Context, handle func(Event) error) error {
	var base time.Duration // the wait before jitter; 0: start at RetryMin
	for attempt := 0; ; attempt++ {
		delivered, err := s.connect(ctx, handle)
		if ctx.Err() != nil {
			return nil
		}
		var se *StatusError
		if errors.As(err, &se) && (se.Status == 0 || permanent(se.Status)) {
			return err
		}
		var he handlerError
		if errors.As(err, &he) {
			return he.error
		}
		if delivered {
			base = 0
		}
		base = s.nextBase(base)
		wait := base/2 + time.Duration(s.rnd.Int64N(int64(base/2)+1))
		if se != nil && se.RetryAfter > wait {
			wait = se.RetryAfter // lsmux said when (a replay slot, a limit)
		}
		if herr := handle(Event{Kind: Disconnected, Err: err, Wait: wait}); herr != nil {
			return herr
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return nil
		case <-t.C:
		}
	}
}

// nextBase is the wait after one more failed attempt, before jitter:
// RetryMin the first time, then double the previous, at most RetryMax.
// The wait itself is a random half to all of it.
func (s *Subscription) nextBase(prev time.Duration) time.Duration {
	if prev <= 0 {
		return s.opts.RetryMin
	}
	return min(2*prev, s.opts.RetryMax)
}

// handlerError carries the handler's own error out of connect.
type handlerError struct{ error }

// URL is the subscription's address for its next connection.
func (s *Subscription) URL() string {
	q := url.Values{}
	if s.last == 0 {
		switch s.opts.From {
		case "", "live":
		default:
			q.Set("from", s.opts.From)
		}
	}
	for k, v := range map[string]string{"filter": s.opts.Filter, "fields": s.opts.Fields, "sample": s.opts.Sample} {
		if v != "" {
			q.Set(k, v)
		}
	}
	u := strings.TrimSuffix(s.opts.Server, "/") + "/v1/streams/" + url.PathEscape(s.opts.Stream) + "/sse"
	if len(q) > 0 {
		u += "?" + q.Encode()
	}
	return u
}

// connect runs one connection; delivered says whether it handed over a
// hit.
func (s *Subscription) connect(ctx context.Context, handle func(Event) error) (delivered bool, err error) {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	if s.last == 0 && (s.opts.From == "" || s.opts.From == "live") {
		// Live means from now on, also across a reconnect before the
		// first hit: resume after the newest number when it started, or
		// the hits of an outage before the first one would be skipped
		// without a gap notice.
		s.last = s.newest(ctx)
	}
	req, err := s.request(ctx, s.URL())
	if err != nil {
		return false, &StatusError{Message: err.Error()}
	}
	req.Header.Set("Accept", "text/event-stream")
	if s.last > 0 {
		req.Header.Set("Last-Event-ID", strconv.FormatUint(s.last, 10))
	}
	var stalled atomic.Bool
	var alive func()
	if d := s.opts.StallTimeout; d > 0 {
		timer := time.AfterFunc(d, func() { stalled.Store(true); cancel() })
		defer timer.Stop()
		alive = func() { timer.Reset(d) }
	}
	defer func() {
		if err != nil && stalled.Load() && !errors.As(err, new(handlerError)) {
			err = fmt.Errorf("lsmux sent nothing for %v, not even its keepalive: taking the connection for dead", s.opts.StallTimeout)
		}
	}()
	resp, err := s.opts.HTTP.Do(req)
	if err != nil {
		return false, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return false, refusal(resp)
	}
	if err := handle(Event{Kind: Connected}); err != nil {
		return false, handlerError{err}
	}
	var body io.Reader = resp.Body
	if alive != nil {
		body = aliveReader{r: resp.Body, alive: alive}
	}
	r := sse.NewReader(body, 0)
	for {
		if alive != nil {
			alive() // the time the handler took is not the connection's
		}
		ev, err := r.Next()
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("lsmux ended the stream")
			}
			return delivered, err
		}
		switch string(ev.Type) {
		case "hit":
			seq, perr := strconv.ParseUint(string(ev.ID), 10, 64)
			if perr != nil {
				return delivered, fmt.Errorf("a hit without a sequence number (id %q)", ev.ID)
			}
			if seq <= s.last {
				continue // already handed over (cannot happen with lsmux; cheap to be sure)
			}
			if err := handle(Event{Kind: Hit, Seq: seq, Data: ev.Data}); err != nil {
				return delivered, handlerError{err}
			}
			s.last, delivered = seq, true
		case "gap":
			var g struct{ From, To uint64 }
			if err := json.Unmarshal(ev.Data, &g); err != nil {
				return delivered, fmt.Errorf("a gap notice that is not JSON: %.100q", ev.Data)
			}
			// The resume point stays the last hit: a gap notice may name
			// numbers above the hits that follow it (a resume from a
			// number lsmux never gave).
			if err := handle(Event{Kind: Gap, From: g.From, To: g.To}); err != nil {
				return delivered, handlerError{err}
			}
		case "close":
			var c struct{ Reason string }
			json.Unmarshal(ev.Data, &c)
			if c.Reason == "filter-cost" {
				return delivered, &StatusError{Message: "lsmux ended the subscription: the filter costs more than the server allows (filter-cost); simplify it"}
			}
			return delivered, fmt.Errorf("lsmux closed the stream (%s)", c.Reason)
		}
		if !r.Buffered() {
			if err := handle(Event{Kind: Idle}); err != nil {
				return delivered, handlerError{err}
			}
		}
	}
}

// aliveReader calls alive whenever bytes arrive.
type aliveReader struct {
	r     io.Reader
	alive func()
}

func (a aliveReader) Read(p []byte) (int, error) {
	n, err := a.r.Read(p)
	if n > 0 {
		a.alive()
	}
	return n, err
}

// request is a GET of u carrying the subscriber token.
func (s *Subscription) request(ctx context.Context, u string) (*http.Request, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err == nil && s.opts.Token != "" {
		req.Header.Set("Authorization", "Bearer "+s.opts.Token)
	}
	return req, err
}

// newest is the stream's newest number from GET /v1/streams (0 when it
// cannot be read: the subscription then starts at live).
func (s *Subscription) newest(ctx context.Context) uint64 {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := s.request(ctx, strings.TrimSuffix(s.opts.Server, "/")+"/v1/streams")
	if err != nil {
		return 0
	}
	resp, err := s.opts.HTTP.Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	var streams []struct {
		Name string
		Ring struct{ NewestSeq uint64 }
	}
	if resp.StatusCode != http.StatusOK || json.NewDecoder(io.LimitReader(resp.Body, 1<<20)).Decode(&streams) != nil {
		return 0
	}
	for _, st := range streams {
		if st.Name == s.opts.Stream {
			return st.Ring.NewestSeq
		}
	}
	return 0
}

// refusal turns a non-200 answer into an error with lsmux's explanation
// (its error bodies are {"error": "..."}).
func refusal(resp *http.Response) error {
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	var e struct{ Error string }
	msg := strings.TrimSpace(string(body))
	if json.Unmarshal(body, &e) == nil && e.Error != "" {
		msg = e.Error
	}
	if msg == "" {
		msg = "no explanation given"
	}
	se := &StatusError{Status: resp.StatusCode, Message: msg}
	if ra := resp.Header.Get("Retry-After"); ra != "" {
		se.Message += " (retry after " + ra + " s)"
		if n, err := strconv.Atoi(ra); err == nil && n > 0 {
			se.RetryAfter = min(time.Duration(n)*time.Second, time.Hour)
		}
	}
	return se
}
