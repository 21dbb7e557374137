package proxy

import (
	"fmt"
	"net/http"
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
		if err != nil || n == ^uint64(0) {
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
// selector (nil when none is given). Errors are the 400's message; a
// filter's carries the compiler's position.
func (s *Server) parseSelector(r *http.Request, allowNamed bool) (*fanout.Selector, error) {
	q := r.URL.Query()
	sel := &fanout.Selector{}
	if text := q.Get("filter"); text != "" {
		f, err := s.compiler.Filter(text)
		if err != nil {
			return nil, err
		}
		sel.Filter = f
	}
	var named []string
	for key := range q {
		if name, ok := strings.CutPrefix(key, "filter."); ok {
			named = append(named, name)
		}
	}
	if len(named) > 0 && !allowNamed {
		return nil, fmt.Errorf("named filters (filter.<name>=) are for SSE; use one filter= here")
	}
	if len(named) > 16 {
		return nil, fmt.Errorf("%d named filters, the limit is 16", len(named))
	}
	sort.Strings(named)
	for _, name := range named {
		if err := names.Check("filter name", name); err != nil {
			return nil, fmt.Errorf("filter.%s: %w", truncate(name), err)
		}
		f, err := s.compiler.Filter(q.Get("filter." + name))
		if err != nil {
			return nil, fmt.Errorf("filter.%s: %w", name, err)
		}
		sel.Named = append(sel.Named, fanout.NamedFilter{Name: name, Filter: f})
	}
	if text := q.Get("fields"); text != "" {
		p, err := s.compiler.Fields(text)
		if err != nil {
			return nil, err
		}
		sel.Fields = p
	}
	if text := q.Get("sample"); text != "" {
		v, err := strconv.ParseFloat(text, 64)
		if err != nil || !(v > 0 && v <= 1) {
			return nil, fmt.Errorf("sample=%q: want a fraction in (0, 1], e.g. 0.1", truncate(text))
		}
		if v < 1 {
			sel.Sample = v
		}
	}
	if sel.Filter == nil && sel.Named == nil && sel.Fields == nil && sel.Sample == 0 {
		return nil, nil
	}
	return sel, nil
}

// parseSubscription reads where and what a subscriber wants, answering 400
// itself (before any stream starts) when a parameter is wrong.
func (s *Server) parseSubscription(w http.ResponseWriter, r *http.Request, allowNamed bool) (uint64, *fanout.Selector, bool) {
	from, err := parseFrom(r)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return 0, nil, false
	}
	sel, err := s.parseSelector(r, allowNamed)
	if err != nil {
		writeError(w, http.StatusBadRequest, err.Error())
		return 0, nil, false
	}
	return from, sel, true
}

// handleValidate checks subscription parameters without subscribing: 200
// with {"valid": true} or {"valid": false, "error": "..."}. The dashboard
// uses it so that a typo in a filter is an answer, not a failed request.
func (s *Server) handleValidate(w http.ResponseWriter, r *http.Request) {
	_, err := parseFrom(r)
	if err == nil {
		_, err = s.parseSelector(r, true)
	}
	if err != nil {
		writeJSON(w, http.StatusOK, map[string]any{"valid": false, "error": err.Error()})
		return
	}
	writeJSON(w, http.StatusOK, map[string]any{"valid": true})
}

// openSubscription does what every transport does first: find the stream,
// read the parameters and count the subscriber against the limits,
// answering the client itself (404, 400, 429, 503) when it cannot go on.
func (s *Server) openSubscription(w http.ResponseWriter, r *http.Request, allowNamed bool) (st *Stream, from uint64, sel *fanout.Selector, release func(), ok bool) {
	if st = s.stream(w, r); st == nil {
		return nil, 0, nil, nil, false
	}
	if err := st.serveErr(); err != nil {
		w.Header().Set("Retry-After", "2")
		writeError(w, http.StatusServiceUnavailable, err.Error())
		return nil, 0, nil, nil, false
	}
	if from, sel, ok = s.parseSubscription(w, r, allowNamed); !ok {
		return nil, 0, nil, nil, false
	}
	if release, ok = s.admit(w, r); !ok {
		return nil, 0, nil, nil, false
	}
	return st, from, sel, release, true
}
