package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/gorilla/websocket"

	"lsmux/fanout"
)

// The WebSocket transport.
//
// gorilla/websocket does the handshake and reads client frames (pongs,
// pings, close, and any message, which is discarded). Writing does not go
// through gorilla: gorilla writes each message with its own syscall, and a
// hit's frame is the same bytes for every subscriber (server frames are not
// masked), so the hub builds each frame once and the session's writer sends
// every ready frame in one writev. For that to be safe exactly one
// goroutine writes frames (this session's writer, control frames
// included), and the only writes gorilla still makes itself (a close frame
// when a client breaks the protocol or sends a message over the limit) go
// through lockedConn, whose Write is atomic with respect to our batches,
// so frames never interleave.

var wsUpgrader = websocket.Upgrader{
	ReadBufferSize:  512, // clients send only control frames
	WriteBufferSize: 256, // used by gorilla only for its own close frames,
	// from a pool: an idle connection holds none.
	WriteBufferPool:  &sync.Pool{},
	HandshakeTimeout: 10 * time.Second,
	// checkOrigin (access.go) has already refused origins that are not
	// allowed, and allows some cross-origin pages gorilla's default would
	// refuse.
	CheckOrigin: func(*http.Request) bool { return true },
	// A request that is not a WebSocket handshake gets the API's JSON
	// error, as every other bad request does.
	Error: func(w http.ResponseWriter, _ *http.Request, status int, reason error) {
		writeError(w, status, "not a WebSocket handshake: "+reason.Error())
	},
}

// lockedConn serialises whole writes to the hijacked connection.
type lockedConn struct {
	net.Conn
	mu sync.Mutex
	// partial is set while a frame is cut on the wire, its rest kept by
	// the connWriter (tryWritev): gorilla's own close frame would land
	// inside it, so its writes fail until writeBuffers has sent the rest.
	partial bool
}

// errFrameCut refuses gorilla's writes while a frame is cut.
var errFrameCut = errors.New("a frame is half sent; its rest goes first")

func (c *lockedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.partial {
		return 0, errFrameCut
	}
	return c.Conn.Write(p)
}

// writeBuffers sends all of bufs: with one writev on a TCP connection,
// copied into one pooled buffer and one Write on others (TLS), which
// would otherwise make a record and a system call of every piece.
func (c *lockedConn) writeBuffers(bufs *net.Buffers) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if _, ok := c.Conn.(*net.TCPConn); ok {
		n, err := bufs.WriteTo(c.Conn)
		if err == nil {
			c.partial = false // the rest of a cut frame went first
		}
		return n, err
	}
	n := 0
	for _, b := range *bufs {
		n += len(b)
	}
	var written int
	err := joined(*bufs, n, func(out []byte) (err error) {
		written, err = c.Conn.Write(out)
		return err
	})
	*bufs = (*bufs)[:0]
	return int64(written), err
}

// connWriter writes batches to a hijacked connection (WebSocket, and SSE
// over HTTP/1.1), each in one write, for the session's writer; and, for
// WebSocket, with a write that does not wait, for the hub's notifier
// (tryWritev).
type connWriter struct {
	lc       *lockedConn
	raw      syscall.RawConn // for tryWritev; nil when the connection is not TCP
	rest     []byte          // what tryWritev could not write; the next writev sends it first
	bufs     net.Buffers
	readDone chan struct{} // closed when the client left
	// broken is set after a write failed: it may have stopped inside a
	// frame or chunk, and any byte after that would be read as part of
	// it, so nothing more is written.
	broken bool
}

// newConnWriter writes to c (the hijacked connection, lc's).
func newConnWriter(lc *lockedConn) connWriter {
	w := connWriter{lc: lc, readDone: make(chan struct{})}
	if tc, ok := lc.Conn.(*net.TCPConn); ok {
		w.raw, _ = tc.SyscallConn()
	}
	return w
}

func (w *connWriter) canTry() bool { return w.raw != nil && maxIovecs > 0 }

func (w *connWriter) pending() bool { return len(w.rest) > 0 }

// tryWritev writes head, pieces and tail with one writev that does not
// wait. What the socket does not take now is copied into rest, which the
// next writev sends first: false then, and a writer must go on.
func (w *connWriter) tryWritev(head []byte, pieces [][]byte, tail []byte) bool {
	w.gather(head, pieces, tail)
	defer w.release()
	if w.broken || !w.canTry() || len(w.rest) > 0 {
		w.keep(0)
		return false
	}
	// Never wait here, on the hub's notifier: gorilla may be writing a
	// close frame into a full socket (for up to a second).
	if !w.lc.mu.TryLock() {
		w.keep(0)
		return false
	}
	defer w.lc.mu.Unlock()
	written := 0 // bytes of bufs
	for off := 0; off < len(w.bufs); {
		chunk := w.bufs[off:min(off+maxIovecs, len(w.bufs))]
		var n int
		var werr error
		err := w.raw.Write(func(fd uintptr) bool {
			n, werr = writevNow(fd, chunk)
			return true // do not wait for the socket: a writer does
		})
		if err != nil || werr != nil {
			w.keep(written) // the writer's writev reports the error
			return false
		}
		written += n
		for _, b := range chunk {
			n -= len(b)
		}
		if n < 0 { // the socket is full
			w.keep(written)
			w.lc.partial = written > 0
			return false
		}
		off += len(chunk)
	}
	return true
}

// gather puts rest, head, pieces and tail in bufs, in that order.
func (w *connWriter) gather(head []byte, pieces [][]byte, tail []byte) {
	w.bufs = w.bufs[:0]
	for _, b := range [][]byte{w.rest, head} {
		if len(b) > 0 {
			w.bufs = append(w.bufs, b)
		}
	}
	w.bufs = append(w.bufs, pieces...)
	if len(tail) > 0 {
		w.bufs = append(w.bufs, tail)
	}
}

// release drops bufs' references to entries the ring may evict.
func (w *connWriter) release() {
	clear(w.bufs[:cap(w.bufs)])
	w.bufs = w.bufs[:0]
}

// keep copies what bufs holds after its first skip bytes into rest: the
// batch it came from is reused at once.
func (w *connWriter) keep(skip int) {
	var rest []byte
	for _, b := range w.bufs {
		if skip >= len(b) {
			skip -= len(b)
			continue
		}
		rest = append(rest, b[skip:]...)
		skip = 0
	}
	w.rest = rest
}

// errBroken answers writes after a failed one.
var errBroken = errors.New("an earlier write failed part way; nothing more can be framed")

// writev sends head, pieces and tail in one write, giving up at
// deadline, or within goodbyeWait when the client has left.
func (w *connWriter) writev(head []byte, pieces [][]byte, tail []byte, deadline time.Time) error {
	if w.broken {
		return errBroken
	}
	w.lc.SetWriteDeadline(deadline)
	select {
	case <-w.readDone: // the client left: do not wait long for it to read
		if short := time.Now().Add(goodbyeWait); short.Before(deadline) {
			w.lc.SetWriteDeadline(short)
		}
	default: // if it leaves during the write, the reader ends the write
	}
	w.gather(head, pieces, tail) // WriteTo consumes the slice header, not the backing array
	_, err := w.lc.writeBuffers(&w.bufs)
	w.release()
	w.rest = nil
	if err != nil {
		w.broken = true
		return err
	}
	// No deadline between writes: tryWritev's writes do not wait, and
	// one left behind would refuse them once past.
	w.lc.SetWriteDeadline(time.Time{})
	return nil
}

// hijackWriter hands gorilla a lockedConn instead of the raw connection.
type hijackWriter struct {
	http.ResponseWriter
	conn *lockedConn
}

func (h *hijackWriter) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c, brw, err := http.NewResponseController(h.ResponseWriter).Hijack()
	if err != nil {
		return nil, nil, err
	}
	h.conn = &lockedConn{Conn: c}
	return h.conn, brw, nil
}

func (h *hijackWriter) Unwrap() http.ResponseWriter { return h.ResponseWriter }

// handleWS returns as soon as the connection is upgraded: net/http's
// buffers, the request and this goroutine's stack are freed, and the
// session (a reader goroutine, and a writer while there is something to
// write) serves the connection from here on. The subscription's admission
// is released when the session ends, so Shutdown still waits for it.
func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	st, sub, release, ok := s.openSubscription(w, r, "ws", false)
	if !ok {
		return
	}
	hw := &hijackWriter{ResponseWriter: w}
	conn, err := wsUpgrader.Upgrade(hw, r, nil)
	if err != nil {
		sub.Close()
		release()
		return // gorilla has answered the client
	}
	raw := hw.conn.Conn
	s.track(raw, true)
	p := &wsPeer{conn: conn, connWriter: newConnWriter(hw.conn)}
	p.configure(s.opts.PingInterval+s.opts.PongWait, s.opts.MaxMessageSize)
	// Not the request's context: net/http ends that when this handler
	// returns. The reader ends the session's when the client goes.
	s.startSession(context.Background(), st, "ws", sub, wsEncoder{}, p, func() {
		p.stop()
		s.track(raw, false)
		release()
	})
}

// wsPeer is a WebSocket client: a reader goroutine that handles what the
// client sends (pongs, pings, close, and any message, which is discarded)
// and a connection the session writes whole batches to with one writev.
type wsPeer struct {
	connWriter
	conn    *websocket.Conn
	pong    atomic.Pointer[[]byte] // a pong frame answering the client's last ping
	kick    func()                 // tells the session the client wants an answer
	leave   func()                 // tells the session the client left
	readErr error                  // why the reader stopped; read after readDone
}

// configure sets up reading. Every frame from the client, a pong above
// all, moves the read deadline: a client silent past a ping interval plus
// the pong wait is gone.
func (p *wsPeer) configure(deadline time.Duration, maxMessage int64) {
	extend := func() { p.conn.SetReadDeadline(time.Now().Add(deadline)) }
	extend()
	p.conn.SetReadLimit(maxMessage)
	p.conn.SetPongHandler(func(string) error { extend(); return nil })
	p.conn.SetPingHandler(func(data string) error {
		extend()
		f := fanout.WSFrame(fanout.OpPong, []byte(data))
		p.pong.Store(&f) // a pong already due is replaced: one answers both
		p.kick()
		return nil
	})
	p.conn.SetCloseHandler(func(int, string) error { return nil }) // answered by the session
}

// watch starts the reader: the connection's one goroutine while idle.
func (p *wsPeer) watch(kick, left func()) func() {
	p.kick, p.leave = kick, left
	go p.read()
	return func() {}
}

func (p *wsPeer) read() {
	for {
		if _, _, err := p.conn.NextReader(); err != nil {
			p.readErr = err
			close(p.readDone)
			// The client is gone or said goodbye: a batch write blocked
			// on its full socket ends now, not at the write timeout (the
			// session answers within goodbyeWait). After readDone, so a
			// write that sets its deadline later sees readDone closed
			// (send).
			p.lc.SetWriteDeadline(time.Now())
			p.leave()
			return
		}
	}
}

// stop closes the connection and waits for the reader.
func (p *wsPeer) stop() {
	p.conn.Close()
	<-p.readDone
}

func (p *wsPeer) send(b *batch, deadline time.Time) error {
	return p.writev(nil, b.bufs, nil, deadline)
}

func (p *wsPeer) tryWrite(b *batch) bool { return p.tryWritev(nil, b.bufs, nil) }

func (p *wsPeer) gone() <-chan struct{} { return p.readDone }

func (p *connWriter) close() { p.broken = true; p.lc.Close() }

func (p *wsPeer) control() []byte {
	if f := p.pong.Swap(nil); f != nil {
		return *f
	}
	return nil
}

// left reads why the reader stopped: a close frame is echoed (without a
// code that may not be sent: RFC 6455 forbids 1005 and 1006 on the wire,
// and clients report a frame carrying them as broken), a read deadline is
// a client that stopped answering pings.
func (p *wsPeer) left() (string, []byte) {
	var ce *websocket.CloseError
	switch {
	case errors.As(p.readErr, &ce) && p.broken:
		return reasonClient, nil // a reply now would land inside a cut frame
	case errors.As(p.readErr, &ce):
		return reasonClient, closeFrame(ce.Code, "")
	case errors.Is(p.readErr, websocket.ErrReadLimit):
		return reasonTooBig, nil // gorilla has sent 1009
	}
	var ne net.Error
	if errors.As(p.readErr, &ne) && ne.Timeout() {
		return reasonPingTimeout, nil
	}
	return reasonClient, nil
}

// awaitClose waits for the client's close reply, until deadline at most.
func (p *wsPeer) awaitClose(deadline time.Time) {
	t := time.NewTimer(time.Until(deadline))
	defer t.Stop()
	select {
	case <-p.readDone:
	case <-t.C:
	}
}

func (s *Server) track(c net.Conn, add bool) {
	s.connsMu.Lock()
	if add {
		s.conns[c] = struct{}{}
	} else {
		delete(s.conns, c)
	}
	s.connsMu.Unlock()
}
