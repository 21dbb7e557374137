package simulator

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// maxBatch bounds the hits sent in one tick, so a long backfill is sent in
// slices rather than one huge write.
const maxBatch = 2000

func (s *Server) handleStream(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	a := &Attempt{Stream: name, Host: r.Host, Query: r.URL.RawQuery, Slot: -1, Start: time.Now()}

	s.mu.Lock()
	a.ID = len(s.attempts) + 1
	s.attempts = append(s.attempts, a)
	status, code, desc := s.admit(r, a)
	if status != http.StatusOK {
		a.Status, a.End, a.Reason = status, a.Start, desc
		s.mu.Unlock()
		if status == http.StatusFound {
			http.Redirect(w, r, desc, http.StatusFound)
			return
		}
		jsonError(w, status, code, desc)
		return
	}
	a.Status = http.StatusOK
	st := s.streams[name]
	ss := st.slots[[2]int{a.MaxConnections, a.Slot}]
	drop := s.dropGen
	g := s.gens[name]
	s.mu.Unlock()

	reason := "client closed the connection"
	defer func() { s.ended(st, ss, a, reason) }()

	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Encoding", "gzip")
	w.WriteHeader(http.StatusOK)
	gz, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
	rc := http.NewResponseController(w)
	if gz.Flush() != nil || rc.Flush() != nil {
		reason = "write failed"
		return
	}

	tick := time.NewTicker(s.opts.Tick)
	defer tick.Stop()
	var buf []byte
	for {
		select {
		case <-r.Context().Done():
			return
		case <-drop:
			reason = "dropped by the simulator"
			panic(http.ErrAbortHandler) // cut the TCP connection mid-stream
		case <-s.done:
			reason = "simulator closed"
			panic(http.ErrAbortHandler)
		case <-tick.C:
		}

		if stop, why := s.sendDue(w, gz, rc, st, ss, a, g, &buf); stop {
			reason = why
			if why != "write failed" {
				panic(http.ErrAbortHandler) // cut the connection mid-stream
			}
			return
		}
	}
}

// sendDue writes and flushes every hit due on this connection; stop is set
// when the client is gone.
func (s *Server) sendDue(w http.ResponseWriter, gz *gzip.Writer, rc *http.ResponseController, st *streamState, ss *slotState, a *Attempt, g *generator, bufp *[]byte) (stop bool, reason string) {
	s.writing.RLock()
	defer s.writing.RUnlock()
	now := time.Now()
	s.mu.Lock()
	if now.Before(s.faults.stallUntil) {
		s.mu.Unlock()
		return false, ""
	}
	if s.faults.corrupt > 0 {
		s.faults.corrupt--
		s.mu.Unlock()
		gz.Flush()
		rc.Flush()
		// Raw bytes in the middle of a deflate stream: the reader's gzip
		// layer fails on them.
		junk := []byte{0xde, 0xad, 0xbe, 0xef, 0xff, 0xff, 0xff, 0x00, 0x13, 0x37}
		for range 100 {
			w.Write(junk)
		}
		rc.Flush()
		return true, "corrupted by the simulator"
	}
	if s.faults.cut > 0 {
		s.faults.cut--
		k := ss.cursor
		s.mu.Unlock()
		// Half of the next hit of this partition, then the connection
		// dies; the cursor stays, so the hit is sent whole after the
		// reconnect.
		for ; int(g.visitor(k)%uint64(a.MaxConnections)) != a.Slot; k++ {
		}
		h := g.hit(nil, k)
		gz.Write(h[:len(h)/2])
		gz.Flush()
		rc.Flush()
		return true, "cut mid-record by the simulator"
	}
	buf := (*bufp)[:0]
	for _, rec := range s.injected {
		buf = append(append(buf, rec...), '\r', '\n')
	}
	s.injected = nil
	avail := g.available(now)
	k, n := ss.cursor, 0
	s.mu.Unlock()

	for ; k < avail && n < maxBatch; k++ {
		if int(g.visitor(k)%uint64(a.MaxConnections)) != a.Slot {
			continue
		}
		if s.opts.StampSent {
			buf = append(buf, `{"lsmuxSentNs":`...)
			buf = strconv.AppendInt(buf, time.Now().UnixNano(), 10)
			buf = append(buf, ',')
			start := len(buf)
			buf = g.hit(buf, k)
			buf = append(buf[:start], buf[start+1:]...) // drop the hit's own '{'
		} else {
			buf = g.hit(buf, k)
		}
		buf = append(buf, '\r', '\n')
		n++
		if s.opts.EmptyEvery > 0 && k%uint64(s.opts.EmptyEvery) == 0 {
			buf = append(buf, '\r', '\n') // Live Stream sends empty records now and then
		}
	}
	*bufp = buf
	if len(buf) > 0 {
		if _, err := gz.Write(buf); err != nil {
			return true, "write failed"
		}
	}
	if gz.Flush() != nil || rc.Flush() != nil {
		return true, "write failed"
	}
	// Only what was flushed counts as sent: the cursor is where a
	// reconnect resumes (Live Stream's backfill).
	s.mu.Lock()
	ss.cursor = k
	ss.ranges[len(ss.ranges)-1][1] = k
	a.Hits += n
	s.mu.Unlock()
	return false, ""
}

// available is the number of hits due by now.
func (g *generator) available(now time.Time) uint64 {
	d := now.Sub(g.start)
	if d <= 0 {
		return 0
	}
	return uint64(d.Seconds() * g.rate)
}

// admit applies Live Stream's documented checks and the scripted faults.
// On success it registers the connection in a slot and returns 200; on a
// 302 desc is the Location. Caller holds s.mu.
func (s *Server) admit(r *http.Request, a *Attempt) (status int, code, desc string) {
	select {
	case <-s.done:
		return http.StatusServiceUnavailable, "unavailable", "simulator closing"
	default:
	}
	st := s.streams[a.Stream]
	switch {
	case r.Method != http.MethodGet:
		return http.StatusMethodNotAllowed, "method_not_allowed", "only GET is supported"
	case st == nil || (r.PathValue("version") != "1" && r.PathValue("version") != "2"):
		return http.StatusNotFound, "not_found", "stream " + a.Stream + " does not exist"
	case r.ProtoMajor != 1:
		return http.StatusHTTPVersionNotSupported, "http_version", "only HTTP/1.1 is supported"
	}
	a.HadToken = s.validToken(r)
	if !a.HadToken {
		return http.StatusUnauthorized, "unauthorized", "missing or expired access token"
	}
	if r.Header.Get("x-api-key") != s.opts.ClientID {
		return http.StatusUnauthorized, "unauthorized", "missing or wrong x-api-key"
	}
	if !strings.Contains(strings.ToLower(r.Header.Get("Accept-Encoding")), "gzip") {
		return http.StatusNotAcceptable, "not_acceptable", "Accept-Encoding: gzip is required"
	}
	q := r.URL.Query()
	n := 1
	if v := q.Get("maxConnections"); v != "" {
		var err error
		if n, err = strconv.Atoi(v); err != nil || n < 1 || n > 8 {
			return http.StatusBadRequest, "bad_request", "maxConnections must be 1..8"
		}
	}
	if v := q.Get("smoothingBucketSize"); v != "" {
		if b, err := strconv.Atoi(v); err != nil || b < 1 || b > 7200 {
			return http.StatusBadRequest, "bad_request", "smoothingBucketSize must be 1..7200"
		}
	}
	reset := q.Get("reset")
	if reset != "" && reset != "smallest" && reset != "largest" {
		return http.StatusBadRequest, "bad_request", "reset must be smallest or largest"
	}
	a.MaxConnections = n
	now := time.Now()
	if len(s.faults.failNext) > 0 {
		status := s.faults.failNext[0]
		s.faults.failNext = s.faults.failNext[1:]
		return status, "injected", "injected failure"
	}
	if s.faults.flapWindow > 0 && !st.lastDisconnect.IsZero() && now.Sub(st.lastDisconnect) < s.faults.flapWindow {
		return s.faults.flapStatus, "conflict", "reconnected too soon after a disconnect; the previous connection is still counted"
	}
	if s.faults.redirects > 0 && r.Host != hostOf(s.altURL) {
		s.faults.redirects--
		return http.StatusFound, "", s.altURL + r.URL.RequestURI()
	}
	if len(st.active) > 0 && st.maxConns != n {
		return http.StatusConflict, "conflict", "maxConnections=" + strconv.Itoa(n) + " does not match the open connections' " + strconv.Itoa(st.maxConns)
	}
	if len(st.active) >= n {
		return http.StatusConflict, "conflict", "too many connections: maxConnections=" + strconv.Itoa(n) + " and " + strconv.Itoa(len(st.active)) + " already open"
	}
	slot := 0
	for st.active[slot] != nil {
		slot++
	}
	a.Slot = slot
	st.active[slot] = a
	st.maxConns = n
	st.peak = max(st.peak, len(st.active))

	key := [2]int{n, slot}
	ss := st.slots[key]
	g := s.gens[a.Stream]
	switch {
	case ss == nil || now.Sub(ss.lastEnd) > s.opts.Backfill:
		// No backfill: start where reset says (Live Stream's default is
		// the newest hits).
		if ss == nil {
			ss = &slotState{}
			st.slots[key] = ss
		}
		ss.cursor = g.available(now)
		if reset == "smallest" || (s.opts.StartAtOldest && len(ss.ranges) == 0) {
			ss.cursor = 0
		}
	case s.faults.backfillDup > 0:
		ss.cursor = rewind(g, ss, n, slot, s.faults.backfillDup)
		s.faults.backfillDup = 0
	}
	ss.ranges = append(ss.ranges, [2]uint64{ss.cursor, ss.cursor})
	return http.StatusOK, "", ""
}

// rewind moves a slot's cursor back over its last d hits, not before the
// first hit it ever sent.
func rewind(g *generator, ss *slotState, n, slot, d int) uint64 {
	floor := ss.ranges[0][0]
	k := ss.cursor
	for d > 0 && k > floor {
		k--
		if int(g.visitor(k)%uint64(n)) == slot {
			d--
		}
	}
	return k
}

func (s *Server) ended(st *streamState, ss *slotState, a *Attempt, reason string) {
	now := time.Now()
	s.mu.Lock()
	a.End, a.Reason = now, reason
	delete(st.active, a.Slot)
	ss.lastEnd = now
	st.lastDisconnect = now
	s.mu.Unlock()
}

func hostOf(u string) string {
	return strings.TrimPrefix(strings.TrimPrefix(u, "http://"), "https://")
}
