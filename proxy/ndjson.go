package proxy

import (
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/klauspost/compress/gzip"

	"lsmux/fanout"
)

func ndjsonSize(e *fanout.Entry) int { return len(e.NDJSON()) }

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
	st, from, sel, release, ok := s.openSubscription(w, r, false)
	if !ok {
		return
	}
	defer release()
	rc := http.NewResponseController(w)
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-cache")
	w.Header().Set("X-Accel-Buffering", "no")
	out := &batchWriter{w: w, rc: rc, timeout: s.opts.WriteTimeout}
	if acceptsGzip(r.Header.Get("Accept-Encoding")) {
		w.Header().Set("Content-Encoding", "gzip")
		w.Header().Add("Vary", "Accept-Encoding")
		zw, _ := gzip.NewWriterLevel(w, gzip.BestSpeed)
		out.w, out.flusher = zw, zw.Flush
		defer zw.Close()
	}
	w.WriteHeader(http.StatusOK)
	if out.flush() != nil {
		return
	}
	sub := st.Hub.Subscribe(from, fanout.Info{Transport: "ndjson", Remote: r.RemoteAddr}, sel)
	defer sub.Close()
	log := s.log.WithField("stream", st.Name).WithField("subscriber", sub.ID)
	reason := reasonClient
	defer func() { s.obs.Disconnected(st.Name, "ndjson", reason) }()

	ping := time.NewTicker(s.opts.PingInterval)
	defer ping.Stop()
	for {
		entries, gap, wake := sub.Poll(ndjsonSize, s.opts.BatchBytes)
		if gap != nil {
			s.obs.Gap(st.Name, "ndjson")
			if s.opts.SlowDisconnect {
				log.WithField("reason", reasonSlow).Warn("ndjson subscriber fell behind the buffer; disconnected")
				reason = reasonSlow
				return
			}
			log.WithField("from", gap.From).WithField("to", gap.To).Warn("ndjson subscriber missed hits (the format cannot carry a gap notice)")
		}
		for _, e := range entries {
			out.bytes(e.NDJSON())
		}
		if len(entries) > 0 {
			if err := out.flush(); err != nil {
				reason = writeFailed(err)
				return
			}
			s.obs.Delivered(st.Name, "ndjson", len(entries), entries[0].Received)
			continue
		}
		select {
		case <-wake:
		case <-ping.C:
			// An empty record: Live Stream sends them too, clients skip
			// them, and it keeps idle-timeout proxies from cutting in.
			out.str("\r\n")
			if err := out.flush(); err != nil {
				reason = writeFailed(err)
				return
			}
		case <-r.Context().Done():
			return
		case <-s.closing:
			reason = reasonShutdown
			t := time.NewTimer(s.closeDelay())
			select {
			case <-t.C:
			case <-r.Context().Done():
			}
			t.Stop()
			return
		case <-st.Hub.Closed():
			reason = reasonShutdown
			return
		}
	}
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
