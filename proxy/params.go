package proxy

import (
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"

	"lsmux/fanout"
	"lsmux/internal/names"
)

// parseFrom reads where a subscriber starts: Last-Event-ID (the last hit an
// EventSource saw, so it resumes after it) wins over from=N|oldest|live,
// because a browser reconnecting on its own keeps the original URL.
func parseFrom(r *http.Request) (uint64, error) {
	if id := strings.TrimSpace(r.Header.Get("Last-Event-ID")); id != "" {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil || n >= fanout.Oldest-1 { // n+1 would read as oldest or live
			return 0, fmt.Errorf("Last-Event-ID %q: want a sequence number lsmux sent as an event id", truncate(id))
		}
		return n + 1, nil
	}
	v := r.URL.Query().Get("from")
	switch v {
	case "", "live":
		return fanout.Live, nil
	case "oldest":
		return fanout.Oldest, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n >= fanout.Oldest {
		return 0, fmt.Errorf("from=%q: want a sequence number, oldest or live", truncate(v))
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}

// parseSelector reads filter=, filter.<name>=, fields= and sample= into a
// selector (nil when none is given) whose filters and projection the
// caller owns (the subscriber releases them). Errors are the 400's
// message (a filter's carries the compiler's position), or a
// *compileRateError for 429. On an error nothing stays acquired.
func (s *Server) parseSelector(r *http.Request, allowNamed bool) (*fanout.Selector, error) {
	if err := s.checkSelector(r, allowNamed, false); err != nil {
		return nil, err
	}
	q := r.URL.Query()
	sample, err := parseSample(q.Get("sample"))
	if err != nil {
		return nil, err
	}
	sel := &fanout.Selector{Sample: sample}
	if err := s.compileSelector(q, sel); err != nil {
		sel.Release()
		return nil, err
	}
	if sel.Filter == nil && sel.Named == nil && sel.Fields == nil && sel.Sample == 0 {
		return nil, nil
	}
	return sel, nil
}

// parseSample reads sample= (0: none, which sample=1 also means).
func parseSample(text string) (float64, error) {
	if text == "" {
		return 0, nil
	}
	v, err := strconv.ParseFloat(text, 64)
	if err != nil || !(v > 0 && v <= 1) {
		return 0, fmt.Errorf("sample=%q: want a fraction in (0, 1], e.g. 0.1", truncate(text))
	}
	if v == 1 {
		return 0, nil
	}
	return v, nil
}

// compileSelector acquires the filters and projection q asks for into sel
// (checkSelector has checked their names and number); the caller releases
// sel when this fails part way.
func (s *Server) compileSelector(q url.Values, sel *fanout.Selector) error {
	if text := q.Get("filter"); text != "" {
		f, err := s.compiler.Filter(text)
		if err != nil {
			return err
		}
		sel.Filter = f
	}
	var named []string
	for key := range q {
		if name, ok := strings.CutPrefix(key, "filter."); ok {
			named = append(named, name)
		}
	}
	sort.Strings(named)
	for _, name := range named {
		f, err := s.compiler.Filter(q.Get("filter." + name))
		if err != nil {
			return fmt.Errorf("filter.%s: %w", name, err)
		}
		sel.Named = append(sel.Named, fanout.NamedFilter{Name: name, Filter: f})
	}
	if text := q.Get("fields"); text != "" {
		p, err := s.compiler.Fields(text)
		if err != nil {
			return err
		}
		sel.Fields = p
	}
	return nil
}

// checkSelector checks the selector's parameters without caching any
// compiled filter (compile=false: only the cheap checks and the compile
// rate; true: every text compiled too, for /v1/validate). Texts not
// cached count against the caller's compile rate.
func (s *Server) checkSelector(r *http.Request, allowNamed, compile bool) error {
	q := r.URL.Query()
	type filterText struct{ label, text string }
	var texts []filterText
	if text := q.Get("filter"); text != "" {
		texts = append(texts, filterText{"", text})
	}
	var named []string
	for key := range q {
		if name, ok := strings.CutPrefix(key, "filter."); ok {
			named = append(named, name)
		}
	}
	if len(named) > 0 && !allowNamed {
		return fmt.Errorf("named filters (filter.<name>=) are for SSE; use one filter= here")
	}
	if _, err := parseSample(q.Get("sample")); err != nil {
		return err
	}
	if len(named) > maxNamedFilters {
		return fmt.Errorf("%d named filters, the limit is %d", len(named), maxNamedFilters)
	}
	sort.Strings(named)
	for _, name := range named {
		if err := names.Check("filter name", name); err != nil {
			return fmt.Errorf("filter.%s: %w", truncate(name), err)
		}
		texts = append(texts, filterText{"filter." + name + ": ", q.Get("filter." + name)})
	}
	fields := q.Get("fields")
	costly := 0
	for _, t := range texts {
		if !s.compiler.Cached(t.text) {
			costly++
		}
	}
	if fields != "" && !s.compiler.CachedFields(fields) {
		costly++
	}
	if err := s.compiles.allow(s.clientOf(r).limitKey(), costly); err != nil {
		return err
	}
	if !compile {
		return nil
	}
	for _, t := range texts {
		if err := s.compiler.Check(t.text); err != nil {
			return fmt.Errorf("%s%w", t.label, err)
		}
	}
	if fields != "" {
		return s.compiler.CheckFields(fields)
	}
	return nil
}

// maxNamedFilters bounds the named filters of one SSE connection.
const maxNamedFilters = 16

// parseSubscription reads where and what a subscriber wants, answering 400
// (or 429 past the compile rate) itself, before any stream starts, when a
// parameter is wrong.
func (s *Server) parseSubscription(w http.ResponseWriter, r *http.Request, allowNamed bool) (uint64, *fanout.Selector, bool) {
	from, err := parseFrom(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return 0, nil, false
	}
	sel, err := s.parseSelector(r, allowNamed)
	if err != nil {
		s.selectorError(w, err)
		return 0, nil, false
	}
	return from, sel, true
}

// selectorError answers a selector that cannot be used.
func (s *Server) selectorError(w http.ResponseWriter, err error) {
	var re *compileRateError
	if errors.As(err, &re) {
		s.obs.Rejected("compile_rate")
		w.Header().Set("Retry-After", strconv.Itoa(re.retrySeconds()))
		writeError(w, http.StatusTooManyRequests, err.Error())
		return
	}
	writeError(w, http.StatusBadRequest, err.Error())
}

// handleValidate checks subscription parameters without subscribing: 200
// with {"valid": true} or {"valid": false, "error": "..."}. The dashboard
// uses it so that a typo in a filter is an answer, not a failed request.
func (s *Server) handleValidate(w http.ResponseWriter, r *http.Request) {
	_, err := parseFrom(r)
	if err == nil {
		err = s.checkSelector(r, true, true)
		var re *compileRateError
		if errors.As(err, &re) {
			s.selectorError(w, err)
			return
		}
	}
	if err != nil {
		writeJSON(w, http.StatusOK, map[string]any{"valid": false, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"valid": true})
}

// openSubscription does what every transport does first: find the stream,
// read the parameters, count the subscriber against the limits and
// subscribe, answering the client itself (404, 400, 429, 503) when it
// cannot go on. The caller closes the subscriber, then calls release.
func (s *Server) openSubscription(w http.ResponseWriter, r *http.Request, transport string, allowNamed bool) (st *Stream, sub *fanout.Subscriber, release func(), ok bool) {
	if st = s.stream(w, r); st == nil {
		return nil, nil, nil, false
	}
	if err := st.serveErr(); err != nil {
		w.Header().Set("Retry-After", "2")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return nil, nil, nil, false
	}
	from, sel, ok := s.parseSubscription(w, r, allowNamed)
	if !ok {
		return nil, nil, nil, false
	}
	if release, ok = s.admit(w, r); !ok {
		sel.Release()
		return nil, nil, nil, false
	}
	sub, err := st.Hub.Open(from, fanout.Info{Transport: transport, Remote: s.clientOf(r).addr}, sel, s.limits)
	if err != nil { // ErrReplaysBusy
		sel.Release()
		release()
		s.obs.Rejected("replays")
		s.retryAfter(w)
		writeError(w, http.StatusServiceUnavailable, fmt.Sprintf("%v (%d, LSMUX_MAX_REPLAYS): retry later, or resume from a number still in the ring (GET /v1/status: ring.oldestSeq)", err, st.Hub.ReplayStats().Max))
		return nil, nil, nil, false
	}
	return st, sub, release, true
}
