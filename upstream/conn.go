package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"

	"lsmux/internal/persec"
	"lsmux/internal/redact"
	"lsmux/internal/wait"
)

// A connection slot's life: attempt, open (with redirects by hand), read,
// ingest, then wait as the backoff says. Its status bookkeeping is in
// status.go.

// slot is one of the pool's connections. It makes at most one attempt at a
// time: run is a single loop of attempt, then wait.
type slot struct {
	p   *Pool
	idx int

	mu sync.Mutex
	st ConnStatus

	hits, bytes, dups, invalid, oversized atomic.Uint64
	rate                                  *persec.Counter // hits per second, for status
}

func newSlot(p *Pool, idx int) *slot {
	now := time.Now()
	return &slot{p: p, idx: idx, st: ConnStatus{Slot: idx, State: StateConnecting, Since: now, Results: map[string]uint64{}, Events: []Event{}},
		rate: persec.New(60, now)}
}

// run attempts, reads and waits until ctx ends, handing every hit to sink.
func (s *slot) run(ctx context.Context, sink Sink) {
	b := NewBackoff(s.p.cfg.Policy)
	log := s.p.log.WithField("conn", s.idx)
	for attempt := 1; ; attempt++ {
		s.set(func(st *ConnStatus) {
			st.State, st.Since, st.NextAttempt, st.Hold = StateConnecting, time.Now(), time.Time{}, ""
			st.Attempts++
		})
		res := s.attempt(ctx, sink)
		if ctx.Err() != nil {
			// Stopped by lsmux (shutdown, or cluster mode handing the
			// upstream to another replica): not a loss, but the timeline
			// should show the connection ended.
			s.set(func(st *ConnStatus) {
				st.State, st.Since, st.Host = StateWaiting, time.Now(), ""
				if res.outcome == Lost {
					st.addEvent(Event{Time: time.Now(), Kind: "closed", Reason: "stopped by lsmux"})
				}
			})
			return
		}
		delay := b.Next(res.outcome, res.streamed)
		next := time.Now().Add(delay)
		state := StateWaiting
		if res.outcome == Misconfigured {
			state = StateFailing
		}
		s.set(func(st *ConnStatus) {
			st.State, st.Since, st.NextAttempt = state, time.Now(), next
			st.LastStatus, st.LastError, st.LastErrorAt = res.status, errText(res.err), time.Now()
			st.Host = ""
			if res.outcome != Lost { // a 200 was counted when it arrived
				st.Results[res.result()]++
			}
			kind := "refused"
			if res.outcome == Lost {
				kind = "lost"
			}
			st.addEvent(Event{Time: time.Now(), Kind: kind, Status: res.status, Reason: errText(res.err)})
		})
		fields := log.WithField("attempt", attempt).WithField("outcome", res.outcome.String()).WithField("retry_in", delay.Round(time.Millisecond).String())
		if res.status != 0 {
			fields = fields.WithField("status", res.status)
		}
		switch res.outcome {
		case Misconfigured:
			fields.Errorf("upstream refused the connection; this needs a configuration change, retrying slowly: %v", res.err)
		case Lost:
			fields.WithField("streamed", res.streamed.Round(time.Millisecond).String()).Warnf("upstream connection lost: %v", res.err)
		default:
			fields.Warnf("upstream connect failed: %v", res.err)
		}
		if !wait.Sleep(ctx, delay) {
			return
		}
	}
}

func errText(err error) string {
	if err == nil {
		return ""
	}
	return err.Error()
}

type result struct {
	outcome  Outcome
	status   int
	streamed time.Duration
	err      error
	token    bool // the token could not be had; no request was sent
}

// result names the attempt's answer for the Results counters.
func (r result) result() string {
	switch {
	case r.token:
		return "token"
	case r.status != 0:
		return strconv.Itoa(r.status)
	}
	return "network"
}

// attempt makes one connection attempt and, if it succeeds, reads the
// stream into sink until it ends.
func (s *slot) attempt(ctx context.Context, sink Sink) result {
	tok, err := s.p.cfg.Tokens.Token(ctx)
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) && (se.Status == http.StatusBadRequest || se.Status == http.StatusUnauthorized || se.Status == http.StatusForbidden) {
			return result{outcome: Misconfigured, status: se.Status, token: true, err: fmt.Errorf("IMS rejected the client credentials (check LSMUX_CLIENT_ID, LSMUX_CLIENT_SECRET, LSMUX_SCOPES): %w", err)}
		}
		return result{outcome: Refused, token: true, err: fmt.Errorf("get access token: %w", err)}
	}
	reqCtx, cancel := context.WithCancelCause(ctx)
	defer cancel(nil)
	resp, err := s.open(reqCtx, tok)
	if err != nil {
		var se *StatusError
		if errors.As(err, &se) {
			if se.Status == http.StatusUnauthorized {
				s.p.cfg.Tokens.Invalidate(tok)
			}
			return result{outcome: outcomeOf(se.Status), status: se.Status, err: err}
		}
		return result{outcome: Refused, err: err}
	}
	defer resp.Body.Close()
	start := time.Now()
	host := resp.Request.URL.Host
	s.set(func(st *ConnStatus) {
		st.State, st.Since, st.Host, st.LastStatus = StateStreaming, start, host, http.StatusOK
		st.Connects++
		st.Results["200"]++
		st.addEvent(Event{Time: start, Kind: "connected", Status: http.StatusOK})
	})
	s.p.log.WithField("conn", s.idx).WithField("host", host).Info("upstream connected, streaming")
	err = s.read(reqCtx, cancel, resp, sink)
	if cause := context.Cause(reqCtx); cause != nil && ctx.Err() == nil && errors.Is(cause, ErrStalled) {
		err = fmt.Errorf("read %s: %w", host, ErrStalled)
	}
	return result{outcome: Lost, status: http.StatusOK, streamed: time.Since(start), err: err}
}

// open sends the GET and follows redirects by hand, sending Authorization,
// x-api-key and Accept-Encoding again to every host and keeping the query.
func (s *slot) open(ctx context.Context, tok string) (*http.Response, error) {
	target := s.p.requestURL()
	for range 10 {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, target, nil)
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", redact.URL(target), redact.Err(err, target))
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if s.p.cfg.ClientID != "" {
			req.Header.Set("x-api-key", s.p.cfg.ClientID)
		}
		req.Header.Set("Accept-Encoding", "gzip")
		req.Header.Set("User-Agent", "lsmux")
		resp, err := s.p.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", redact.URL(target), redact.Err(err, target))
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return resp, nil
		case resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "":
			next, err := redirectTarget(req.URL, resp.Header.Get("Location"))
			resp.Body.Close() // its body is not needed (keep-alives are off)
			if err != nil {
				return nil, fmt.Errorf("connect %s: bad redirect: %w", redact.URL(target), redact.Err(err, resp.Header.Get("Location")))
			}
			if req.URL.Scheme == "https" && next.Scheme != "https" {
				// The token would travel in the clear to whoever sent the
				// redirect (a proxy in between, or an attacker on the path).
				return nil, fmt.Errorf("connect %s: %w to %s", redact.URL(target), ErrInsecureRedirect, redact.URL(next.String()))
			}
			s.p.log.WithField("conn", s.idx).WithField("status", resp.StatusCode).Infof("upstream redirects to %s", next.Host)
			target = next.String()
		default:
			desc := errorDescription(resp, s.p.cfg.ResponseHeaderTimeout)
			return nil, &StatusError{Op: "connect", URL: redact.URL(target), Status: resp.StatusCode, Description: desc}
		}
	}
	return nil, fmt.Errorf("connect %s: %w (10)", redact.URL(target), ErrTooManyRedirects)
}

// redirectTarget resolves a Location against the current URL. Query
// parameters of the original request that the Location does not set are
// kept, so maxConnections and friends survive the hop.
func redirectTarget(cur *url.URL, location string) (*url.URL, error) {
	loc, err := url.Parse(location)
	if err != nil {
		return nil, err
	}
	next := cur.ResolveReference(loc)
	q := next.Query()
	for k, vs := range cur.Query() {
		if _, ok := q[k]; !ok {
			q[k] = vs
		}
	}
	next.RawQuery = q.Encode()
	return next, nil
}

// errorDescription extracts Live Stream's error_description (or a short
// plain body) from an error answer, reading it for at most within: an
// answer whose body never ends (a proxy that hangs after the headers)
// must not hold the connection slot, which then never retries.
func errorDescription(resp *http.Response, within time.Duration) string {
	defer resp.Body.Close()
	stop := time.AfterFunc(within, func() { resp.Body.Close() })
	defer stop.Stop()
	var body io.Reader = io.LimitReader(resp.Body, 16<<10)
	if strings.EqualFold(resp.Header.Get("Content-Encoding"), "gzip") {
		if zr, err := gzip.NewReader(body); err == nil {
			body = io.LimitReader(zr, 16<<10)
		}
	}
	b, _ := io.ReadAll(body)
	var e struct {
		Error       string `json:"error"`
		Description string `json:"error_description"`
	}
	if json.Unmarshal(b, &e) == nil && (e.Description != "" || e.Error != "") {
		if e.Description != "" {
			return e.Description
		}
		return e.Error
	}
	text := strings.TrimSpace(string(b))
	if len(text) > 200 {
		text = text[:200] + "…"
	}
	return text
}

// read decodes the body and hands every valid, new hit to the sink. A
// timer armed on every read from the socket ends the connection after the
// stall timeout of silence; any shorter silence is normal.
func (s *slot) read(ctx context.Context, cancel context.CancelCauseFunc, resp *http.Response, sink Sink) error {
	stallTimeout := s.p.cfg.StallTimeout
	timer := time.AfterFunc(stallTimeout, func() { cancel(ErrStalled) })
	defer timer.Stop()
	body := &stallReader{r: resp.Body, timer: timer, d: stallTimeout}

	host := resp.Request.URL.Host
	// Live Stream only sends gzip; a proxy that decoded it on the way would
	// have to say identity.
	gzipped := !strings.EqualFold(resp.Header.Get("Content-Encoding"), "identity")
	if err := s.ingest(body, gzipped, sink); err != nil {
		return fmt.Errorf("read %s: %w", host, err)
	}
	return fmt.Errorf("read %s: stream ended", host)
}

// ingest is the per-hit hot path: gunzip, split records, check, dedup,
// hand on. It returns nil when the body ended cleanly.
func (s *slot) ingest(body io.Reader, gzipped bool, sink Sink) error {
	src := body
	if gzipped {
		zr, err := gzip.NewReader(body)
		if err != nil {
			return fmt.Errorf("gzip: %w", err)
		}
		src = zr
	}
	rr := NewRecordReader(src, s.p.cfg.MaxRecordSize)
	for {
		rec, err := rr.Next()
		if errors.Is(err, ErrRecordTooLarge) {
			s.oversized.Add(1)
			continue
		}
		if err == io.EOF {
			return nil
		}
		if err != nil {
			return err
		}
		s.deliver(rec, sink)
	}
}

func (s *slot) deliver(rec []byte, sink Sink) {
	id, hasID, valid := scanHit(rec)
	if !valid {
		s.invalid.Add(1)
		return
	}
	if hasID && s.p.dedup.Seen(id) {
		s.dups.Add(1)
		return
	}
	s.hits.Add(1)
	s.bytes.Add(uint64(len(rec)))
	now := time.Now()
	s.rate.Add(now, 1)
	sink.Deliver(Hit{Raw: rec, ID: id, HasID: hasID, Received: now})
}

// stallReader re-arms the stall timer whenever bytes arrive.
type stallReader struct {
	r     io.Reader
	timer *time.Timer
	d     time.Duration
}

func (sr *stallReader) Read(p []byte) (int, error) {
	n, err := sr.r.Read(p)
	if n > 0 {
		sr.timer.Reset(sr.d)
	}
	return n, err
}
