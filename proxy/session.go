package proxy

import (
	"io"
	"net/http"
	"sync"
	"time"

	"github.com/sirupsen/logrus"

	"lsmux/fanout"
)

// A session is one subscriber's connection, whatever the transport: the
// one loop that polls the hub, writes batches, keeps the connection alive
// and ends it with the right goodbye. The transports differ only in their
// encoder (encode.go) and their peer: how bytes reach the client and how
// the client's leaving is noticed (ws.go, sse.go, ndjson.go).

// peer is a session's client connection.
type peer interface {
	// send writes a batch in one write (writev, or Write and Flush),
	// giving up at deadline.
	send(b *batch, deadline time.Time) error
	// gone is closed when the client went away.
	gone() <-chan struct{}
	// left says, once gone is closed, why the client went and what to
	// answer (the echo of a WebSocket close frame; nil: nothing).
	left() (reason string, reply []byte)
	// control yields frames the client asked for (WebSocket pongs); nil
	// for transports without any.
	control() <-chan []byte
	// awaitClose waits, until deadline at most, for the client to
	// acknowledge a goodbye (the WebSocket close handshake).
	awaitClose(deadline time.Time)
}

type session struct {
	srv       *Server
	st        *Stream
	stream    string
	transport string
	hub       *fanout.Hub
	sub       *fanout.Subscriber
	enc       encoder
	peer      peer
	log       logrus.FieldLogger
	// liveFrom is the first number appended after the subscription began:
	// hits before it are a resume's backlog and say nothing about
	// delivery lag.
	liveFrom uint64
	b        batch
}

func (s *Server) newSession(st *Stream, transport string, sub *fanout.Subscriber, enc encoder, p peer) *session {
	return &session{srv: s, st: st, stream: st.Name, transport: transport, hub: st.Hub, sub: sub, enc: enc, peer: p,
		log: s.log.WithField("stream", st.Name).WithField("subscriber", sub.ID).WithField("transport", transport), liveFrom: st.Hub.Start(fanout.Live)}
}

// run serves the subscriber until it leaves, falls behind under the
// disconnect policy, a write fails, or lsmux shuts down. It returns the
// reason (disconnect.go).
func (ss *session) run() (reason string) {
	opts := ss.srv.opts
	ping := time.NewTicker(opts.PingInterval)
	defer ping.Stop()
	defer func() {
		ss.b.reset()
		ss.srv.obs.Disconnected(ss.stream, ss.transport, reason)
		ss.st.disconnects.add(reason)
		ss.log.WithField("reason", reason).Debug("subscriber left")
	}()
	for {
		// The client and shutdown come first, before every batch: a
		// subscriber reading a backlog must still notice both.
		select {
		case <-ss.peer.gone():
			return ss.clientLeft()
		case <-ss.srv.closing:
			return ss.shutdown()
		default:
		}
		// Control frames next, even when hits keep the writer busy:
		// without pings a busy but healthy WebSocket would hit its read
		// deadline.
		select {
		case <-ping.C:
			ss.enc.ping(&ss.b)
		case f := <-ss.peer.control():
			ss.b.addOwn(f)
		default:
		}
		entries, gap, wake := ss.sub.Poll(ss.enc.size, opts.BatchBytes)
		if gap != nil {
			ss.srv.obs.Gap(ss.stream, ss.transport)
			if opts.SlowDisconnect {
				if !ss.enc.gap(&batch{}, gap) {
					ss.log.WithField("reason", reasonSlow).Warn("drop-in subscriber fell behind the ring; disconnected")
				}
				return ss.end(reasonSlow)
			}
			if !ss.enc.gap(&ss.b, gap) {
				ss.log.WithField("from", gap.From).WithField("to", gap.To).Warn("drop-in subscriber missed hits (its format cannot carry a gap notice)")
			}
		}
		for _, e := range entries {
			ss.enc.hit(&ss.b, e)
			if ss.b.lagFrom.IsZero() && e.Seq >= ss.liveFrom {
				ss.b.lagFrom = e.Received
			}
		}
		ss.b.hits = len(entries)
		if err := ss.flush(); err != nil {
			select {
			case <-ss.peer.gone(): // the write ended because the client left
				return ss.clientLeft()
			default:
				return writeFailed(err)
			}
		}
		if len(entries) > 0 || gap != nil {
			continue
		}
		select {
		case <-wake:
		case <-ping.C:
			ss.enc.ping(&ss.b)
		case f := <-ss.peer.control():
			ss.b.addOwn(f)
		case <-ss.peer.gone():
			return ss.clientLeft()
		case <-ss.srv.closing:
			return ss.shutdown()
		}
	}
}

// flush sends the batch, if there is anything in it, within the write
// timeout.
func (ss *session) flush() error {
	return ss.flushBy(time.Now().Add(ss.srv.opts.WriteTimeout))
}

func (ss *session) flushBy(deadline time.Time) error {
	if ss.b.empty() {
		return nil
	}
	err := ss.peer.send(&ss.b, deadline)
	if err == nil && ss.b.hits > 0 {
		ss.srv.obs.Delivered(ss.stream, ss.transport, ss.b.hits, ss.b.lagFrom)
	}
	ss.b.reset()
	return err
}

// goodbyeWait bounds the last write to a client that left, and the wait
// for a client's close reply: a goodbye is a courtesy, not worth holding a
// connection for.
const goodbyeWait = time.Second

// clientLeft answers a client that went away (a WebSocket close frame is
// echoed). It is no longer a subscriber from this moment.
func (ss *session) clientLeft() string {
	ss.sub.Close()
	reason, reply := ss.peer.left()
	if reply != nil {
		ss.b.reset()
		ss.b.addOwn(reply)
		ss.flushBy(time.Now().Add(goodbyeWait))
	}
	return reason
}

// shutdown waits this subscriber's turn in the drain spread, so thousands
// of clients do not all reconnect elsewhere in the same instant, then says
// goodbye.
func (ss *session) shutdown() string {
	t := time.NewTimer(ss.srv.closeDelay())
	defer t.Stop()
	select {
	case <-t.C:
	case <-ss.peer.gone():
		return ss.clientLeft()
	}
	return ss.end(reasonShutdown)
}

// end closes the subscription for reason with the transport's goodbye,
// within the write timeout and, at shutdown, before the hard deadline.
func (ss *session) end(reason string) string {
	ss.sub.Close()
	ss.b.reset()
	ss.enc.goodbye(&ss.b, reason)
	if ss.b.empty() {
		return reason
	}
	deadline := time.Now().Add(ss.srv.opts.WriteTimeout)
	if hard := ss.srv.hardDeadline.Load(); hard != 0 && hard < deadline.UnixNano() {
		deadline = time.Unix(0, hard)
	}
	if ss.flushBy(deadline) == nil {
		if wait := time.Now().Add(goodbyeWait); wait.Before(deadline) {
			deadline = wait
		}
		ss.peer.awaitClose(deadline)
	}
	return reason
}

// httpPeer is an SSE or drop-in client on an HTTP response: each batch is
// copied into one pooled buffer and written with one Write and one Flush
// (the response writer would otherwise cut a large batch into many small
// writes, and a buffer kept per subscriber would cost idle subscribers
// memory).
type httpPeer struct {
	w       io.Writer // the response, or a gzip layer over it
	rc      *http.ResponseController
	flusher func() error    // flushes a layer between w and the response (gzip); nil: none
	done    <-chan struct{} // the request's context
}

// batchPool holds the buffers httpPeer fills for one write. A subscriber
// holds one only during its write.
var batchPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

func (p *httpPeer) send(b *batch, deadline time.Time) error {
	buf := batchPool.Get().(*[]byte)
	out := (*buf)[:0]
	for _, piece := range b.bufs {
		out = append(out, piece...)
	}
	err := p.write(out, deadline)
	if cap(out) <= 4<<20 { // do not keep a freak batch's memory
		*buf = out[:0]
		batchPool.Put(buf)
	}
	return err
}

// write sends bytes under a write deadline set just before (see
// TestBurstAfterQuietSpellIsNotAWriteTimeout).
func (p *httpPeer) write(out []byte, deadline time.Time) error {
	p.rc.SetWriteDeadline(deadline)
	_, err := p.w.Write(out)
	if err == nil && p.flusher != nil {
		err = p.flusher()
	}
	if err == nil {
		err = p.rc.Flush()
	}
	return err
}

func (p *httpPeer) gone() <-chan struct{}  { return p.done }
func (p *httpPeer) left() (string, []byte) { return reasonClient, nil }
func (p *httpPeer) control() <-chan []byte { return nil }
func (p *httpPeer) awaitClose(time.Time)   {}
