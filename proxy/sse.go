package proxy

import (
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"lsmux/fanout"
)

// handleSSE streams hits as Server-Sent Events: id: seq, event: hit,
// data: the hit's bytes. It honours Last-Event-ID, so a browser's
// EventSource resumes by itself after a reconnect.
func (s *Server) handleSSE(w http.ResponseWriter, r *http.Request) {
	st, from, sel, release, ok := s.openSubscription(w, r, true)
	if !ok {
		return
	}
	defer release()
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-cache")
	h.Set("X-Accel-Buffering", "no") // nginx: do not buffer this response
	w.WriteHeader(http.StatusOK)
	p := &httpPeer{w: w, rc: http.NewResponseController(w), done: r.Context().Done()}
	// A comment at once makes proxies start the response; the retry hint
	// is jittered so thousands of browsers do not reconnect in lockstep.
	if p.write([]byte(": lsmux "+st.Name+"\nretry: "+strconv.Itoa(1000+rand.IntN(4000))+"\n\n"), time.Now().Add(s.opts.WriteTimeout)) != nil {
		return
	}
	sub := st.Hub.Subscribe(from, fanout.Info{Transport: "sse", Remote: r.RemoteAddr}, sel)
	defer sub.Close()
	s.newSession(st, "sse", sub, sseEncoder{}, p).run()
}
