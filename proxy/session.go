package proxy

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/semaphore"

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
	srv *Server
	// ctx ends when the client leaves or Shutdown starts: what the
	// subscriber waits for inside Poll (its filter budget, an evaluation
	// slot) stops waiting.
	ctx       context.Context
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

func (s *Server) newSession(ctx context.Context, st *Stream, transport string, sub *fanout.Subscriber, enc encoder, p peer) *session {
	return &session{srv: s, ctx: ctx, st: st, stream: st.Name, transport: transport, hub: st.Hub, sub: sub, enc: enc, peer: p,
		log: s.log.WithField("stream", st.Name).WithField("subscriber", sub.ID).WithField("transport", transport), liveFrom: st.Hub.Start(fanout.Live)}
}

// run serves the subscriber until it leaves, falls behind under the
// disconnect policy, a write fails, or lsmux shuts down. It returns the
// reason (disconnect.go).
func (ss *session) run() (reason string) {
	opts := ss.srv.opts
	ctx, cancel := context.WithCancel(ss.ctx)
	defer cancel()
	defer context.AfterFunc(ss.srv.base, cancel)()
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
			return ss.shutdown(ping.C)
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
		entries, gap, wake, err := ss.sub.Poll(ctx, ss.enc.size, opts.BatchBytes)
		if errors.Is(err, fanout.ErrFilterCost) {
			ss.log.WithField("reason", reasonFilterCost).Warnf("subscriber dropped: %v", err)
			return ss.end(reasonFilterCost)
		}
		if err != nil {
			continue // the client left or shutdown began: the checks above say which
		}
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
		if len(entries) > 0 || gap != nil || wake == nil {
			continue // more to read (Poll bounds its work per call)
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
			return ss.shutdown(ping.C)
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
// goodbye. Meanwhile the connection is kept alive (pings, and pongs to the
// client's pings): a spread longer than the read deadline must not turn
// into ping timeouts.
func (ss *session) shutdown(ping <-chan time.Time) string {
	t := time.NewTimer(ss.srv.closeDelay())
	defer t.Stop()
	for {
		select {
		case <-t.C:
			return ss.end(reasonShutdown)
		case <-ss.peer.gone():
			return ss.clientLeft()
		case <-ping:
			ss.enc.ping(&ss.b)
		case f := <-ss.peer.control():
			ss.b.addOwn(f)
		}
		if err := ss.flush(); err != nil {
			return writeFailed(err)
		}
	}
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
	mem     *semaphore.Weighted // the server's budget for write batches
	w       io.Writer           // the response, or a gzip layer over it
	rc      *http.ResponseController
	flusher func() error    // flushes a layer between w and the response (gzip); nil: none
	done    <-chan struct{} // the request's context
}

// batchPools hold the buffers httpPeer fills for one write, by size
// class (16 KiB to 4 MiB), so a buffer is about the size of the batch its
// subscriber reserved. A subscriber holds one only during its write.
var batchPools [5]sync.Pool

func batchPool(n int) (*sync.Pool, int) {
	size := minBatch
	for i := range batchPools {
		if n <= size || i == len(batchPools)-1 {
			return &batchPools[i], size
		}
		size *= 4
	}
	panic("unreachable")
}

// minBatch is the smallest write a peer makes when the budget is short: a
// subscriber that lags writes small pieces instead of holding much memory.
const minBatch = 16 << 10

// send copies the batch into one buffer and writes it with one write. The
// copy counts against the server's budget for write batches (a subscriber
// whose socket is full holds its copy until the write ends): when the
// budget cannot take the whole batch, it goes out in pieces of minBatch,
// each waiting for room.
func (p *httpPeer) send(b *batch, deadline time.Time) error {
	n := b.size()
	if p.mem.TryAcquire(int64(n)) {
		defer p.mem.Release(int64(n))
		return p.copyAndWrite(b.bufs, n, deadline)
	}
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	for pieces := b.bufs; len(pieces) > 0; {
		k, size := 1, len(pieces[0])
		for k < len(pieces) && size+len(pieces[k]) <= minBatch {
			size += len(pieces[k])
			k++
		}
		if err := p.mem.Acquire(ctx, int64(minBatch)); err != nil {
			return os.ErrDeadlineExceeded // waited for memory past the write deadline: a stuck subscriber
		}
		err := p.copyAndWrite(pieces[:k], size, deadline)
		p.mem.Release(int64(minBatch))
		if err != nil {
			return err
		}
		pieces = pieces[k:]
	}
	return nil
}

// copyAndWrite writes pieces (n bytes) from a pooled buffer.
func (p *httpPeer) copyAndWrite(pieces [][]byte, n int, deadline time.Time) error {
	pool, size := batchPool(n)
	buf, _ := pool.Get().(*[]byte)
	if buf == nil {
		s := make([]byte, 0, size)
		buf = &s
	}
	out := (*buf)[:0]
	for _, piece := range pieces {
		out = append(out, piece...)
	}
	err := p.write(out, deadline)
	if cap(out) <= size { // a piece beyond its class (one huge hit) is not kept
		*buf = out[:0]
		pool.Put(buf)
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
