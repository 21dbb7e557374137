package proxy

import (
	"bufio"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"lsmux/fanout"
)

func sseSize(e *fanout.Entry) int { return len(e.SSEEvent()) }

// handleSSE streams hits as Server-Sent Events: id: seq, event: hit,
// data: the hit's bytes. It honours Last-Event-ID, so a browser's
// EventSource resumes by itself after a reconnect.
func (s *Server) handleSSE(w http.ResponseWriter, r *http.Request) {
	st := s.stream(w, r)
	if st == nil {
		return
	}
	from, sel, ok := s.parseSubscription(w, r, true)
	if !ok {
		return
	}
	release, ok := s.admit(w, r)
	if !ok {
		return
	}
	defer release()
	rc := http.NewResponseController(w)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer this response
	w.WriteHeader(http.StatusOK)

	// One buffered write per batch: the response writer underneath would
	// otherwise cut a large batch into many small writes.
	bw := bufio.NewWriterSize(w, 32<<10)
	// A comment at once makes proxies start the response; the retry hint
	// is jittered so thousands of browsers do not reconnect in lockstep.
	bw.WriteString(": lsmux " + st.Name + "\nretry: ")
	bw.WriteString(strconv.Itoa(1000 + rand.IntN(4000)))
	bw.WriteString("\n\n")
	flush := func() error {
		rc.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		if err := bw.Flush(); err != nil {
			return err
		}
		return rc.Flush()
	}
	if flush() != nil {
		return
	}
	sub := st.Hub.Subscribe(from, fanout.Info{Transport: "sse", Remote: r.RemoteAddr}, sel)
	defer sub.Close()

	ping := time.NewTicker(s.opts.PingInterval)
	defer ping.Stop()
	reason := reasonClient
	defer func() {
		s.obs.Disconnected(st.Name, "sse", reason)
		s.log.WithField("stream", st.Name).WithField("subscriber", sub.ID).WithField("reason", reason).Debug("sse subscriber left")
	}()
	for {
		entries, gap, wake := sub.Poll(sseSize, s.opts.BatchBytes)
		if gap != nil || len(entries) > 0 {
			// The buffered writer may pass bytes on before flush(): the
			// deadline must cover them too, or a burst after a quiet spell
			// would hit the deadline left from the last write.
			rc.SetWriteDeadline(time.Now().Add(s.opts.WriteTimeout))
		}
		if gap != nil {
			if s.opts.SlowDisconnect {
				bw.WriteString("event: close\ndata: {\"reason\":\"slow\"}\n\n")
				flush()
				reason = reasonSlow
				return
			}
			s.obs.Gap(st.Name, "sse")
			bw.WriteString("event: gap\ndata: ")
			bw.Write(gapPayload(gap))
			bw.WriteString("\n\n")
		}
		for _, e := range entries {
			bw.Write(e.SSEEvent())
		}
		if gap != nil || len(entries) > 0 {
			if err := flush(); err != nil {
				reason = writeFailed(err)
				return
			}
			if len(entries) > 0 {
				s.obs.Delivered(st.Name, "sse", len(entries), entries[0].Received)
			}
			continue
		}
		select {
		case <-wake:
		case <-ping.C:
			bw.WriteString(": ping\n\n")
			if err := flush(); err != nil {
				reason = writeFailed(err)
				return
			}
		case <-r.Context().Done():
			return
		case <-s.closing:
			reason = s.sseShutdown(r, bw, flush)
			return
		case <-st.Hub.Closed():
			reason = s.sseShutdown(r, bw, flush)
			return
		}
	}
}

func (s *Server) sseShutdown(r *http.Request, bw *bufio.Writer, flush func() error) string {
	t := time.NewTimer(s.closeDelay())
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return reasonClient
	}
	bw.WriteString("event: close\ndata: {\"reason\":\"shutdown\"}\n\n")
	flush()
	return reasonShutdown
}

func gapPayload(g *fanout.Gap) []byte {
	b := make([]byte, 0, 48)
	b = append(b, `{"from":`...)
	b = strconv.AppendUint(b, g.From, 10)
	b = append(b, `,"to":`...)
	b = strconv.AppendUint(b, g.To, 10)
	return append(b, '}')
}
