package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"
)

// handleNDJSON is the drop-in for existing Live Stream clients: the same
// path shape and the upstream's own format (hits separated by CRLF,
// chunked, gzip when asked), so a client works by changing only its host.
// Live Stream's own parameters (maxConnections, reset, smoothing) are
// ignored: every local client gets the whole stream. from, filter and
// fields work as on the other transports.
//
// The format has no way to say "you missed hits", so a gap is logged and
// counted in the subscriber's status; with the disconnect policy the
// response ends instead, as a Live Stream disconnect would.
func (s *Server) handleNDJSON(w http.ResponseWriter, r *http.Request) {
	st, sub, release, ok := s.openSubscription(w, r, "ndjson", false)
	if !ok {
		return
	}
	defer release()
	defer sub.Close()
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	p := &httpPeer{mem: s.batchMem, w: w, rc: http.NewResponseController(w), ctx: r.Context()}
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		p.w, p.flusher = zw, zw.Flush
		defer zw.Close()
	}
	w.WriteHeader(http.StatusOK)
	if p.write(nil, time.Now().Add(s.opts.WriteTimeout)) != nil {
		return
	}
	<-s.startSession(r.Context(), st, "ndjson", sub, ndjsonEncoder{}, p, nil).done
}

// acceptsGzip reads Accept-Encoding: gzip is wanted unless its q is 0.
func acceptsGzip(header string) bool {
	for _, part := range strings.Split(header, ",") {
		name, params, _ := strings.Cut(strings.TrimSpace(part), ";")
		if !strings.EqualFold(strings.TrimSpace(name), "gzip") {
			continue
		}
		for _, p := range strings.Split(params, ";") {
			if v, ok := strings.CutPrefix(strings.TrimSpace(p), "q="); ok {
				if q, err := strconv.ParseFloat(v, 64); err == nil && q == 0 {
					return false
				}
			}
		}
		return true
	}
	return false
}
