package upstream

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/klauspost/compress/gzip"
)

// State is a connection slot's state, as shown in status and readiness.
type State string

const (
	StateConnecting State = "connecting" // an attempt is in flight
	StateStreaming  State = "streaming"  // a 200 arrived and hits are read
	StateWaiting    State = "waiting"    // waiting out the reconnect delay
	StateFailing    State = "failing"    // waiting after an error retrying cannot fix (see LastError)
)

// ConnStatus is a snapshot of one connection slot. It holds no secret.
type ConnStatus struct {
	Slot        int       `json:"slot"`
	State       State     `json:"state"`
	Since       time.Time `json:"since"`
	Attempts    int       `json:"attempts"`
	Connects    int       `json:"connects"`
	LastStatus  int       `json:"lastStatus,omitempty"`
	LastError   string    `json:"lastError,omitempty"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	// Hold says why the slot waits when the reason is not its own backoff
	// (cluster mode: "follower: ..." or "new leader: ...").
	Hold       string `json:"hold,omitempty"`
	Host       string `json:"host,omitempty"`
	Hits       uint64 `json:"hits"`
	Bytes      uint64 `json:"bytes"`
	Duplicates uint64 `json:"duplicates"`
	Invalid    uint64 `json:"invalidRecords"`
	Oversized  uint64 `json:"oversizedRecords"`
	// HitsPerSecond is the average over the last complete minute.
	HitsPerSecond float64 `json:"hitsPerSecond"`
	// Results counts attempts by how they were answered: an HTTP status
	// ("200", "409", ...), "network" or "token".
	Results map[string]uint64 `json:"results"`
	// Events are the connects and disconnects of the last hour (at most
	// maxEvents), oldest first, for the dashboard's timeline.
	Events []Event `json:"events"`
}

// Event is one connect or disconnect of a connection slot.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // "connected", "lost", "refused", "closed" (by lsmux)
	Status int       `json:"status,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

const maxEvents = 1000

// addEvent records an event and forgets those over an hour old. Caller
// holds s.mu.
func (st *ConnStatus) addEvent(e Event) {
	cut := 0
	for cut < len(st.Events) && (e.Time.Sub(st.Events[cut].Time) > time.Hour || len(st.Events)-cut >= maxEvents) {
		cut++
	}
	st.Events = append(st.Events[cut:], e)
}

// slot is one of the pool's connections. It makes at most one attempt at a
// time: run is a single loop of attempt, then wait.
type slot struct {
	p   *Pool
	idx int

	mu sync.Mutex
	st ConnStatus

	hits, bytes, dups, invalid, oversized atomic.Uint64
	rate                                  rateWindow
}

func newSlot(p *Pool, idx int) *slot {
	return &slot{p: p, idx: idx, st: ConnStatus{Slot: idx, State: StateConnecting, Since: time.Now(), Results: map[string]uint64{}}}
}

func (s *slot) status() ConnStatus {
	s.mu.Lock()
	st := s.st
	st.Results = maps.Clone(s.st.Results)
	st.Events = slices.Clone(s.st.Events)
	s.mu.Unlock()
	st.Hits, st.Bytes, st.Duplicates = s.hits.Load(), s.bytes.Load(), s.dups.Load()
	st.Invalid, st.Oversized = s.invalid.Load(), s.oversized.Load()
	st.HitsPerSecond = s.rate.perSecond(time.Now().Unix())
	return st
}

func (s *slot) set(f func(*ConnStatus)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

func (s *slot) run(ctx context.Context) {
	b := NewBackoff(s.p.cfg.Policy)
	log := s.p.log.WithField("conn", s.idx)
	for attempt := 1; ; attempt++ {
		s.set(func(st *ConnStatus) {
			st.State, st.Since, st.NextAttempt, st.Hold = StateConnecting, time.Now(), time.Time{}, ""
			st.Attempts++
		})
		res := s.attempt(ctx)
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
		wait := b.Next(res.outcome, res.streamed)
		next := time.Now().Add(wait)
		state := StateWaiting
		if res.outcome == Misconfigured {
			state = StateFailing
		}
		s.set(func(st *ConnStatus) {
			st.State, st.Since, st.NextAttempt = state, time.Now(), next
			st.LastStatus, st.LastError = res.status, errText(res.err)
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
		fields := log.WithField("attempt", attempt).WithField("outcome", res.outcome.String()).WithField("retry_in", wait.Round(time.Millisecond).String())
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
		if !sleepCtx(ctx, wait) {
			return
		}
	}
}

// sleepCtx waits d or until ctx ends; it reports whether d elapsed.
func sleepCtx(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
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
// stream until it ends.
func (s *slot) attempt(ctx context.Context) result {
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
	err = s.read(reqCtx, cancel, resp)
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
			return nil, fmt.Errorf("connect %s: %w", target, err)
		}
		req.Header.Set("Authorization", "Bearer "+tok)
		if s.p.cfg.ClientID != "" {
			req.Header.Set("x-api-key", s.p.cfg.ClientID)
		}
		req.Header.Set("Accept-Encoding", "gzip")
		req.Header.Set("User-Agent", "lsmux")
		resp, err := s.p.client.Do(req)
		if err != nil {
			return nil, fmt.Errorf("connect %s: %w", redact(target), err)
		}
		switch {
		case resp.StatusCode == http.StatusOK:
			return resp, nil
		case resp.StatusCode >= 300 && resp.StatusCode < 400 && resp.Header.Get("Location") != "":
			next, err := redirectTarget(req.URL, resp.Header.Get("Location"))
			drain(resp)
			if err != nil {
				return nil, fmt.Errorf("connect %s: bad redirect: %w", redact(target), err)
			}
			s.p.log.WithField("conn", s.idx).WithField("status", resp.StatusCode).Infof("upstream redirects to %s", next.Host)
			target = next.String()
		default:
			desc := errorDescription(resp)
			return nil, &StatusError{Op: "connect", URL: redact(target), Status: resp.StatusCode, Description: desc}
		}
	}
	return nil, fmt.Errorf("connect %s: %w (10)", redact(target), ErrTooManyRedirects)
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

// redact drops user info from a URL before it is logged.
func redact(raw string) string {
	u, err := url.Parse(raw)
	if err != nil {
		return "(unparseable URL)"
	}
	return u.Redacted()
}

func drain(resp *http.Response) {
	io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	resp.Body.Close()
}

// errorDescription extracts Live Stream's error_description (or a short
// plain body) from an error answer.
func errorDescription(resp *http.Response) string {
	defer resp.Body.Close()
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
func (s *slot) read(ctx context.Context, cancel context.CancelCauseFunc, resp *http.Response) error {
	stallTimeout := s.p.cfg.StallTimeout
	timer := time.AfterFunc(stallTimeout, func() { cancel(ErrStalled) })
	defer timer.Stop()
	body := &stallReader{r: resp.Body, timer: timer, d: stallTimeout}

	host := resp.Request.URL.Host
	// Live Stream only sends gzip; a proxy that decoded it on the way would
	// have to say identity.
	gzipped := !strings.EqualFold(resp.Header.Get("Content-Encoding"), "identity")
	if err := s.ingest(body, gzipped); err != nil {
		return fmt.Errorf("read %s: %w", host, err)
	}
	return fmt.Errorf("read %s: stream ended", host)
}

// ingest is the per-hit hot path: gunzip, split records, check, dedup,
// hand on. It returns nil when the body ended cleanly.
func (s *slot) ingest(body io.Reader, gzipped bool) error {
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
		s.deliver(rec)
	}
}

func (s *slot) deliver(rec []byte) {
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
	s.rate.add(now.Unix())
	s.p.cfg.Sink(Hit{Raw: rec, ID: id, HasID: hasID, Received: now})
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

// rateWindow counts hits per second over the last minute. Only the slot's
// reader writes it; status reads it.
type rateWindow struct {
	secs   [61]atomic.Int64
	counts [61]atomic.Uint64
}

func (w *rateWindow) add(sec int64) {
	i := sec % int64(len(w.secs))
	if w.secs[i].Load() != sec {
		w.counts[i].Store(0)
		w.secs[i].Store(sec)
	}
	w.counts[i].Add(1)
}

// perSecond averages the 60 complete seconds before now.
func (w *rateWindow) perSecond(now int64) float64 {
	var sum uint64
	for i := range w.secs {
		if s := w.secs[i].Load(); s < now && s >= now-60 {
			sum += w.counts[i].Load()
		}
	}
	return float64(sum) / 60
}
