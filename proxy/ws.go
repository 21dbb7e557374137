package proxy

import (
	"bufio"
	"context"
	"errors"
	"net"
	"net/http"
	"sync"
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
	ReadBufferSize:   512, // clients send only control frames
	WriteBufferSize:  256, // used by gorilla only for its own close frames
	HandshakeTimeout: 10 * time.Second,
	// checkOrigin (access.go) has already refused origins that are not
	// allowed, and allows some cross-origin pages gorilla's default would
	// refuse.
	CheckOrigin: func(*http.Request) bool { return true },
}

// lockedConn serialises whole writes to the hijacked connection.
type lockedConn struct {
	net.Conn
	mu sync.Mutex
}

func (c *lockedConn) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.Conn.Write(p)
}

// writeBuffers sends all of bufs with one writev on a TCP connection.
func (c *lockedConn) writeBuffers(bufs *net.Buffers) (int64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return bufs.WriteTo(c.Conn)
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

func (s *Server) handleWS(w http.ResponseWriter, r *http.Request) {
	st, sub, release, ok := s.openSubscription(w, r, "ws", false)
	if !ok {
		return
	}
	defer release()
	defer sub.Close()
	hw := &hijackWriter{ResponseWriter: w}
	conn, err := wsUpgrader.Upgrade(hw, r, nil)
	if err != nil {
		return // gorilla has answered the client
	}
	s.track(hw.conn.Conn, true)
	defer s.track(hw.conn.Conn, false)
	defer conn.Close()

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	p := &wsPeer{conn: conn, lc: hw.conn, pongs: make(chan []byte, 1), readDone: make(chan struct{}), cancel: cancel}
	p.start(s.opts.PingInterval+s.opts.PongWait, s.opts.MaxMessageSize)
	defer p.stop()
	s.newSession(ctx, st, "ws", sub, wsEncoder{}, p).run()
}

// wsPeer is a WebSocket client: a reader goroutine that handles what the
// client sends (pongs, pings, close, and any message, which is discarded)
// and a connection the session writes whole batches to with one writev.
type wsPeer struct {
	conn     *websocket.Conn
	lc       *lockedConn
	bufs     net.Buffers
	pongs    chan []byte        // pong frames answering the client's pings
	readDone chan struct{}      // closed when the reader stops
	readErr  error              // why it stopped; read after readDone
	cancel   context.CancelFunc // ends the session's context when the reader stops
	// broken is set (by the session) after a write failed: it may have
	// stopped inside a frame, and any byte after that would be read as
	// that frame's payload, so nothing more is written.
	broken bool
}

// errBroken answers writes after a failed one.
var errBroken = errors.New("websocket: an earlier write failed part way; nothing more can be framed")

// start begins reading. Every frame from the client, a pong above all,
// moves the read deadline: a client silent past a ping interval plus the
// pong wait is gone.
func (p *wsPeer) start(deadline time.Duration, maxMessage int64) {
	extend := func() { p.conn.SetReadDeadline(time.Now().Add(deadline)) }
	extend()
	p.conn.SetReadLimit(maxMessage)
	p.conn.SetPongHandler(func(string) error { extend(); return nil })
	p.conn.SetPingHandler(func(data string) error {
		extend()
		select {
		case p.pongs <- fanout.WSFrame(fanout.OpPong, []byte(data)):
		default: // a pong is already due; one answers both
		}
		return nil
	})
	p.conn.SetCloseHandler(func(int, string) error { return nil }) // answered by the session
	go func() {
		for {
			if _, _, err := p.conn.NextReader(); err != nil {
				p.readErr = err
				close(p.readDone)
				p.cancel()
				// The client is gone or said goodbye: a batch write
				// blocked on its full socket ends now, not at the write
				// timeout (the session answers within goodbyeWait). After
				// readDone, so a write that sets its deadline later sees
				// readDone closed (send).
				p.lc.SetWriteDeadline(time.Now())
				return
			}
		}
	}()
}

// stop closes the connection and waits for the reader.
func (p *wsPeer) stop() {
	p.conn.Close()
	<-p.readDone
}

func (p *wsPeer) send(b *batch, deadline time.Time) error {
	if p.broken {
		return errBroken
	}
	p.lc.SetWriteDeadline(deadline)
	select {
	case <-p.readDone: // the client left: do not wait long for it to read
		if short := time.Now().Add(goodbyeWait); short.Before(deadline) {
			p.lc.SetWriteDeadline(short)
		}
	default: // if it leaves during the write, the reader ends the write
	}
	p.bufs = append(p.bufs[:0], b.bufs...) // WriteTo consumes the slice header, not the backing array
	_, err := p.lc.writeBuffers(&p.bufs)
	clear(p.bufs[:cap(p.bufs)]) // drop references to entries the ring may evict
	p.bufs = p.bufs[:0]
	if err != nil {
		p.broken = true
	}
	return err
}

func (p *wsPeer) gone() <-chan struct{} { return p.readDone }

func (p *wsPeer) control() <-chan []byte { return p.pongs }

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
