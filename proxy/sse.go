package proxy

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"
)

// handleSSE streams hits as Server-Sent Events: id: seq, event: hit,
// data: the hit's bytes. It honours Last-Event-ID, so a browser's
// EventSource resumes by itself after a reconnect.
func (s *Server) handleSSE(w http.ResponseWriter, r *http.Request) {
	st, sub, release, ok := s.openSubscription(w, r, "sse", true)
	if !ok {
		return
	}
	defer release()
	defer sub.Close()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer this response
	w.WriteHeader(http.StatusOK)
	p := &httpPeer{mem: s.batchMem, w: w, rc: http.NewResponseController(w), done: r.Context().Done()}
	// A comment at once makes proxies start the response; the retry hint
	// is jittered so thousands of browsers do not reconnect in lockstep.
	if p.write([]byte(": lsmux "+st.Name+"\nretry: "+strconv.Itoa(1000+rand.IntN(4000))+"\n\n"), time.Now().Add(s.opts.WriteTimeout)) != nil {
		return
	}
	s.newSession(r.Context(), st, "sse", sub, sseEncoder{}, p).run()
}
