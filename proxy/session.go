package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"os"
	"runtime/debug"
	"sync"
	"sync/atomic"
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
//
// A session keeps no goroutine while it has nothing to write. Everything
// that can give it work kicks it: the hub's next hit (the subscriber is
// parked, fanout.Subscriber.Park), its ping timer, the client (a ping to
// answer, or leaving) and shutdown. A kick starts a writer goroutine if
// none runs; the writer works until there is nothing left, then parks the
// session and ends. A WebSocket session's hits are written by the hub's
// notifier itself while that needs no waiting (hubKick). An idle WebSocket subscriber is therefore one reader
// goroutine and a few small structs (docs/performance.md).

// peer is a session's client connection.
type peer interface {
	// send writes a batch in one write (writev, or Write and Flush),
	// giving up at deadline.
	send(b *batch, deadline time.Time) error
	// gone is closed when the client went away.
	gone() <-chan struct{}
	// watch calls kick when the client asks for an answer (a ping) and
	// left when it leaves; stop ends the watch.
	watch(kick, left func()) (stop func())
	// left says, once gone is closed, why the client went and what to
	// answer (the echo of a WebSocket close frame; nil: nothing).
	left() (reason string, reply []byte)
	// control returns a frame the client asked for (a WebSocket pong),
	// nil when none is due.
	control() []byte
	// awaitClose waits, until deadline at most, for the client to
	// acknowledge a goodbye (the WebSocket close handshake).
	awaitClose(deadline time.Time)
	// close closes the connection at once, without a goodbye (after a
	// panic: what was being written may be cut).
	close()
}

type session struct {
	srv *Server
	// ctx ends when the client leaves or Shutdown starts: what the
	// subscriber waits for inside Poll (its filter budget, an evaluation
	// slot) stops waiting.
	ctx       context.Context
	cancel    context.CancelFunc
	st        *Stream
	stream    string
	transport string
	hub       *fanout.Hub
	sub       *fanout.Subscriber
	enc       encoder
	peer      peer
	// liveFrom is the first number appended after the subscription began:
	// hits before it are a resume's backlog and say nothing about
	// delivery lag.
	liveFrom uint64
	b        batch

	// mu guards pending and writer: whether a kick came since the writer
	// last looked, and whether a writer goroutine runs, lingers (waits
	// WriterLinger for more work) or there is none. There is at most one
	// writer. mu is a leaf: kick runs under the hub's parking locks and
	// takes nothing else.
	mu      sync.Mutex
	pending bool
	writer  writerState
	resume  chan struct{} // hands a kick to the lingering writer (capacity 1; made by the first to linger)
	// tw, when set, is how the hub's notifier may serve this session
	// itself (hubKick); its writers then end without lingering.
	tw        tryWriter
	ping      *time.Timer // sets pingDue every PingInterval
	pingDue   atomic.Bool
	bye       *time.Timer // the shutdown spread: sets byeDue
	byeDue    atomic.Bool
	stopBase  func() bool
	stopWatch func()
	// after is the transport's cleanup, run when the session has ended;
	// done is closed after it.
	after    func()
	done     chan struct{}
	finished atomic.Bool
}

// startSession starts serving sub on p and returns at once; done is
// closed when the session has ended and after has run.
func (s *Server) startSession(ctx context.Context, st *Stream, transport string, sub *fanout.Subscriber, enc encoder, p peer, after func()) *session {
	ss := &session{srv: s, st: st, stream: st.Name, transport: transport, hub: st.Hub, sub: sub, enc: enc, peer: p,
		liveFrom: st.Hub.Start(fanout.Live), after: after, done: make(chan struct{})}
	// The first writer starts at the end: a kick meanwhile (the client
	// left already) waits for it.
	ss.writer = writerRunning
	ss.ctx, ss.cancel = context.WithCancel(ctx)
	if tw, ok := p.(tryWriter); ok && tw.canTry() && !s.opts.SlowDisconnect {
		ss.tw = tw
	}
	ss.stopBase = context.AfterFunc(s.base, func() { ss.cancel(); ss.kick() })
	ss.stopWatch = p.watch(ss.kick, func() { ss.cancel(); ss.kick() })
	// The first ping comes at a random point of the first interval, so
	// thousands of clients that connected together are not pinged in
	// lockstep ever after.
	ss.ping = time.AfterFunc(s.opts.PingInterval/2+rand.N(s.opts.PingInterval/2+1), func() { ss.pingDue.Store(true); ss.kick() })
	go ss.work()
	return ss
}

func (ss *session) log() logrus.FieldLogger {
	return ss.srv.log.WithFields(logrus.Fields{"stream": ss.stream, "subscriber": ss.sub.ID, "transport": ss.transport})
}

// writerState is whether a session has a writer goroutine.
type writerState uint8

const (
	writerNone      writerState = iota
	writerRunning               // also after the session ended: no writer starts again
	writerLingering             // waiting on resume
)

// kick gives the session work: it wakes the lingering writer, or starts
// one, unless one runs (which then looks again before it stops).
func (ss *session) kick() {
	ss.mu.Lock()
	ss.pending = true
	was := ss.writer
	ss.writer = writerRunning
	ss.mu.Unlock()
	switch was {
	case writerNone:
		go ss.work()
	case writerLingering:
		ss.resume <- struct{}{} // never blocks: one send per lingering
	}
}

// work is the writer: it steps until the session is idle (and no kick
// came meanwhile) or over, then lingers for more work before it ends.
func (ss *session) work() {
	defer ss.contain(nil)
	for {
		ss.mu.Lock()
		ss.pending = false
		ss.mu.Unlock()
		reason, over, idle := ss.step()
		if over {
			ss.finish(reason)
			return
		}
		if !idle {
			continue
		}
		ss.mu.Lock()
		if ss.pending {
			ss.mu.Unlock()
			continue
		}
		if ss.tw != nil && ss.sub.PollNeverWaits() { // the hub's notifier serves the next wake-up
			ss.writer = writerNone
			ss.mu.Unlock()
			return
		}
		// Otherwise (no fast path, or a subscriber the notifier leaves to
		// a writer: a filter's budget, a replay) the writer lingers, so a
		// filtered subscriber at a steady rate keeps one goroutine rather
		// than start one per hit.
		if ss.resume == nil {
			ss.resume = make(chan struct{}, 1)
		}
		ss.writer = writerLingering
		ss.mu.Unlock()
		if !ss.lingered() {
			return
		}
	}
}

// lingered waits up to WriterLinger for a kick: true when one came,
// false when the writer ends.
func (ss *session) lingered() bool {
	clock := &ss.srv.lingers
	clock.enter()
	defer clock.leave()
	for range 2 { // the current tick and the next: WriterLinger/2 to WriterLinger
		select {
		case <-ss.resume:
			return true
		case <-clock.tick():
		}
	}
	ss.mu.Lock()
	if ss.writer == writerRunning { // a kick came as the timer fired: its hand-off is on the way
		ss.mu.Unlock()
		<-ss.resume
		return true
	}
	ss.writer = writerNone
	ss.mu.Unlock()
	return false
}

// step is one round: the client and shutdown first, then keepalives, then
// one batch of hits. over is set, with the reason, when the session
// ended: the subscriber left, fell behind under the disconnect policy, a
// write failed, or lsmux shut down (disconnect.go). idle is set when
// nothing is left to do until the next kick.
func (ss *session) step() (reason string, over, idle bool) {
	opts := ss.srv.opts
	// The client and shutdown come first, before every batch: a
	// subscriber reading a backlog must still notice both.
	select {
	case <-ss.peer.gone():
		return ss.clientLeft(), true, false
	default:
	}
	if ss.srv.ShuttingDown() {
		return ss.shuttingDown()
	}
	// Keepalives next, even when hits keep the writer busy: without pings
	// a busy but healthy WebSocket would hit its read deadline.
	ss.keepalive()
	entries, gap, wake, err := ss.sub.Poll(ss.ctx, ss.enc.size, opts.BatchBytes)
	if errors.Is(err, fanout.ErrFilterCost) {
		ss.log().WithField("reason", reasonFilterCost).Warnf("subscriber dropped: %v", err)
		return ss.end(reasonFilterCost), true, false
	}
	if err != nil {
		return "", false, false // the client left or shutdown began: the checks above say which
	}
	if gap != nil && opts.SlowDisconnect {
		ss.srv.obs.Gap(ss.stream, ss.transport)
		if !ss.enc.gap(&batch{}, gap) {
			ss.log().WithField("reason", reasonSlow).Warn("drop-in subscriber fell behind the ring; disconnected")
		}
		return ss.end(reasonSlow), true, false
	}
	ss.add(entries, gap)
	if err := ss.flush(); err != nil {
		select {
		case <-ss.peer.gone(): // the write ended because the client left
			return ss.clientLeft(), true, false
		default:
			return writeFailed(err), true, false
		}
	}
	if len(entries) > 0 || gap != nil || wake == nil {
		return "", false, false // more to read (Poll bounds its work per call)
	}
	if ss.sub.Park(wake, ss.hubKick) {
		return "", false, true
	}
	// Not the hub's wake-up: one that came already, or a replay waiting
	// for its share of the replay rate (a few milliseconds).
	select {
	case <-wake:
	case <-ss.peer.gone():
	case <-ss.srv.closing:
	}
	return "", false, false
}

// add encodes a gap notice (unless the disconnect policy applies) and
// entries into the batch.
func (ss *session) add(entries []*fanout.Entry, gap *fanout.Gap) {
	if gap != nil {
		ss.srv.obs.Gap(ss.stream, ss.transport)
		if !ss.enc.gap(&ss.b, gap) {
			ss.log().WithField("from", gap.From).WithField("to", gap.To).Warn("drop-in subscriber missed hits (its format cannot carry a gap notice)")
		}
	}
	for _, e := range entries {
		ss.enc.hit(&ss.b, e)
		if ss.b.lagFrom.IsZero() && e.Seq >= ss.liveFrom {
			ss.b.lagFrom = e.Received
		}
	}
	ss.b.hits += len(entries)
}

// hubKick is what a parked subscriber's hub calls at the next hit. When
// no writer runs and nothing can make the session wait, it serves the
// hits right here, on the hub's notifier goroutine, with writes that do
// not wait (fastStep): a wake-up then costs a Poll and a writev, not a
// goroutine whose stack must be allocated and grown. Otherwise, or when
// the socket is full, a writer goroutine takes over.
func (ss *session) hubKick() {
	ss.mu.Lock()
	if ss.writer != writerNone || ss.tw == nil {
		ss.mu.Unlock()
		ss.kick()
		return
	}
	ss.writer = writerRunning
	ss.pending = false
	ss.mu.Unlock()
	if ss.containedFastStep() {
		ss.mu.Lock()
		if !ss.pending {
			ss.writer = writerNone
			ss.mu.Unlock()
			return
		}
		ss.mu.Unlock()
	}
	go ss.work()
}

// containedFastStep is fastStep on the notifier: a panic ends this
// session only (contain), and the notifier goes on with the others.
func (ss *session) containedFastStep() (done bool) {
	defer ss.contain(&done) // over: no writer is to take over
	return ss.fastStep()
}

// contain, deferred (itself: recover works only there), ends the session
// when serving it panicked (a bug): one subscriber is lost, with the stack
// in the log, not the process, as when net/http recovered a handler's
// panic. It sets *ended when it did (ended may be nil). The writer state
// stays running, so no writer starts again.
func (ss *session) contain(ended *bool) {
	v := recover()
	if v == nil {
		return
	}
	if ended != nil {
		*ended = true
	}
	ss.log().WithField("panic", fmt.Sprint(v)).WithField("stack", string(debug.Stack())).
		Error("serving a subscriber panicked; it is disconnected. This is a bug in lsmux: please report it with this log line")
	ss.peer.close()
	ss.finish(reasonInternal)
}

// fastStep serves the session once without waiting for anything: true
// when it wrote everything and the subscriber is parked again; false when
// a writer must go on (the peer keeps what the socket did not take, the
// batch what is still to write). One write only: a subscriber with more
// to read than one batch gets a writer of its own rather than hold up the
// notifier and everyone after it (four rounds here put SSE's p99 at 1.4 s
// at 1,000 hits/s).
func (ss *session) fastStep() bool {
	if !ss.b.empty() || ss.pingDue.Load() || ss.srv.ShuttingDown() || !ss.sub.PollNeverWaits() {
		return false
	}
	select {
	case <-ss.peer.gone():
		return false
	default:
	}
	entries, gap, wake, err := ss.sub.Poll(ss.ctx, ss.enc.size, ss.srv.opts.BatchBytes)
	if err != nil {
		return false
	}
	ss.add(entries, gap)
	if !ss.b.empty() {
		done := ss.tw.tryWrite(&ss.b) // takes the batch: what it did not write, it keeps
		ss.sent()
		if !done {
			return false
		}
	}
	if len(entries) > 0 || gap != nil { // look once more: usually nothing, and the subscriber parks
		if entries, gap, wake, err = ss.sub.Poll(ss.ctx, ss.enc.size, ss.srv.opts.BatchBytes); err != nil {
			return false
		}
		ss.add(entries, gap) // more: the writer sends it
	}
	return ss.b.empty() && wake != nil && ss.sub.Park(wake, ss.hubKick)
}

// tryWriter writes without waiting (peers on a TCP connection).
type tryWriter interface {
	// tryWrite writes b with one write that does not wait, done when the
	// socket took all of it. What it did not take the peer keeps and
	// sends first at the next send.
	tryWrite(b *batch) (done bool)
	// canTry says whether tryWrite can write at all; pending whether it
	// left something to send.
	canTry() bool
	pending() bool
}

// keepalive adds a ping when one is due and what the client asked for.
func (ss *session) keepalive() {
	if ss.pingDue.Swap(false) {
		ss.enc.ping(&ss.b)
		ss.ping.Reset(ss.srv.opts.PingInterval)
	}
	if f := ss.peer.control(); f != nil {
		ss.b.addOwn(f)
	}
}

// finish runs once the session is over (a second call, after a panic
// inside the first, does nothing).
func (ss *session) finish(reason string) {
	if !ss.finished.CompareAndSwap(false, true) {
		return
	}
	ss.ping.Stop()
	if ss.bye != nil {
		ss.bye.Stop()
	}
	ss.stopBase()
	ss.stopWatch()
	ss.cancel()
	ss.b.reset()
	ss.sub.Close()
	ss.srv.obs.Disconnected(ss.stream, ss.transport, reason)
	ss.st.disconnects.add(reason)
	ss.log().WithField("reason", reason).Debug("subscriber left")
	if ss.after != nil {
		ss.after()
	}
	close(ss.done)
}

// flush sends the batch, if there is anything in it, within the write
// timeout.
func (ss *session) flush() error {
	return ss.flushBy(time.Now().Add(ss.srv.opts.WriteTimeout))
}

func (ss *session) flushBy(deadline time.Time) error {
	if ss.b.empty() && (ss.tw == nil || !ss.tw.pending()) {
		return nil
	}
	err := ss.peer.send(&ss.b, deadline)
	if err != nil {
		ss.b.reset()
		return err
	}
	ss.sent()
	return nil
}

// sent counts the batch's hits as delivered (handed to the connection)
// and empties the batch.
func (ss *session) sent() {
	if ss.b.hits > 0 {
		ss.srv.obs.Delivered(ss.stream, ss.transport, ss.b.hits, ss.b.lagFrom)
	}
	ss.b.reset()
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

// shuttingDown waits this subscriber's turn in the drain spread, so
// thousands of clients do not all reconnect elsewhere in the same instant,
// then says goodbye. Meanwhile the connection is kept alive (pings, and
// pongs to the client's pings): a spread longer than the read deadline
// must not turn into ping timeouts.
func (ss *session) shuttingDown() (reason string, over, idle bool) {
	if ss.bye == nil {
		ss.bye = time.AfterFunc(ss.srv.closeDelay(), func() { ss.byeDue.Store(true); ss.kick() })
	}
	if ss.byeDue.Load() {
		return ss.end(reasonShutdown), true, false
	}
	ss.keepalive()
	if err := ss.flush(); err != nil {
		return writeFailed(err), true, false
	}
	return "", false, true
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
	ctx     context.Context // the request's
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
	return joined(pieces, n, func(out []byte) error { return p.write(out, deadline) })
}

// joined calls write with pieces (n bytes) copied into one buffer from
// batchPools, which it takes back afterwards.
func joined(pieces [][]byte, n int, write func([]byte) error) error {
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
	err := write(out)
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

func (p *httpPeer) gone() <-chan struct{}  { return p.ctx.Done() }
func (p *httpPeer) left() (string, []byte) { return reasonClient, nil }
func (p *httpPeer) control() []byte        { return nil }
func (p *httpPeer) awaitClose(time.Time)   {}

// close cannot close an HTTP response from here: the handler returns when
// the session is done, and net/http ends the response.
func (p *httpPeer) close() {}

func (p *httpPeer) watch(_, left func()) func() {
	stop := context.AfterFunc(p.ctx, left)
	return func() { stop() }
}
