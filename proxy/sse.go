package proxy

import (
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"sync"
	"time"

	"lsmux/fanout"
)

func sseSize(e *fanout.Entry) int { return len(e.SSEEvent()) }

// handleSSE streams hits as Server-Sent Events: id: seq, event: hit,
// data: the hit's bytes. It honours Last-Event-ID, so a browser's
// EventSource resumes by itself after a reconnect.
func (s *Server) handleSSE(w http.ResponseWriter, r *http.Request) {
	st, from, sel, release, ok := s.openSubscription(w, r, true)
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

	// One write per batch, from a pooled buffer: the response writer
	// underneath would otherwise cut a large batch into many small writes,
	// and a buffer kept per subscriber would cost idle subscribers memory.
	out := &batchWriter{w: w, rc: rc, timeout: s.opts.WriteTimeout}
	// A comment at once makes proxies start the response; the retry hint
	// is jittered so thousands of browsers do not reconnect in lockstep.
	out.str(": lsmux " + st.Name + "\nretry: " + strconv.Itoa(1000+rand.IntN(4000)) + "\n\n")
	if out.flush() != nil {
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
		if gap != nil {
			if s.opts.SlowDisconnect {
				out.str("event: close\ndata: {\"reason\":\"slow\"}\n\n")
				out.flush()
				reason = reasonSlow
				return
			}
			s.obs.Gap(st.Name, "sse")
			out.str("event: gap\ndata: ")
			out.bytes(gapPayload(gap))
			out.str("\n\n")
		}
		for _, e := range entries {
			out.bytes(e.SSEEvent())
		}
		if gap != nil || len(entries) > 0 {
			if err := out.flush(); err != nil {
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
			out.str(": ping\n\n")
			if err := out.flush(); err != nil {
				reason = writeFailed(err)
				return
			}
		case <-r.Context().Done():
			return
		case <-s.closing:
			reason = s.sseShutdown(r, out)
			return
		case <-st.Hub.Closed():
			reason = s.sseShutdown(r, out)
			return
		}
	}
}

func (s *Server) sseShutdown(r *http.Request, out *batchWriter) string {
	t := time.NewTimer(s.closeDelay())
	defer t.Stop()
	select {
	case <-t.C:
	case <-r.Context().Done():
		return reasonClient
	}
	out.str("event: close\ndata: {\"reason\":\"shutdown\"}\n\n")
	out.flush()
	return reasonShutdown
}

// batchPool holds the buffers writers fill for one write. A subscriber
// holds one only between the start of a batch and its flush.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// batchWriter gathers one batch and writes it with one Write and one Flush,
// under a write deadline set just before (see
// TestBurstAfterQuietSpellIsNotAWriteTimeout).
type batchWriter struct {
	w       io.Writer
	rc      *http.ResponseController
	timeout time.Duration
	buf     *[]byte
	flusher func() error // flushes a layer between w and the response (gzip); nil: none
}

func (b *batchWriter) get() {
	if b.buf == nil {
		b.buf = batchPool.Get().(*[]byte)
	}
}

func (b *batchWriter) str(s string) { b.get(); *b.buf = append(*b.buf, s...) }

func (b *batchWriter) bytes(p []byte) { b.get(); *b.buf = append(*b.buf, p...) }

func (b *batchWriter) flush() error {
	b.get()
	b.rc.SetWriteDeadline(time.Now().Add(b.timeout))
	_, err := b.w.Write(*b.buf)
	if err == nil && b.flusher != nil {
		err = b.flusher()
	}
	if err == nil {
		err = b.rc.Flush()
	}
	if cap(*b.buf) <= 4<<20 { // do not keep a freak batch's memory
		*b.buf = (*b.buf)[:0]
		batchPool.Put(b.buf)
	}
	b.buf = nil
	return err
}

func gapPayload(g *fanout.Gap) []byte {
	b := make([]byte, 0, 48)
	b = append(b, `{"from":`...)
	b = strconv.AppendUint(b, g.From, 10)
	b = append(b, `,"to":`...)
	b = strconv.AppendUint(b, g.To, 10)
	return append(b, '}')
}
