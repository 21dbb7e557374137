package proxy

import (
	"bufio"
	"encoding/binary"
	"errors"
	"net"
	"net/http"
	"strconv"
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
	st, from, sel, release, ok := s.openSubscription(w, r, false)
	if !ok {
		return
	}
	defer release()
	hw := &hijackWriter{ResponseWriter: w}
	conn, err := wsUpgrader.Upgrade(hw, r, nil)
	if err != nil {
		return // gorilla has answered the client
	}
	s.track(hw.conn.Conn, true)
	defer s.track(hw.conn.Conn, false)
	defer conn.Close()

	sub := st.Hub.Subscribe(from, fanout.Info{Transport: "ws", Remote: r.RemoteAddr}, sel)
	defer sub.Close()
	ws := &wsSession{s: s, name: st.Name, conn: conn, lc: hw.conn, sub: sub, hub: st.Hub,
		pings: make(chan []byte, 1), readDone: make(chan struct{})}
	reason := ws.run()
	s.obs.Disconnected(st.Name, "ws", reason)
	s.log.WithField("stream", st.Name).WithField("subscriber", sub.ID).WithField("reason", reason).Debug("websocket subscriber left")
}

type wsSession struct {
	s        *Server
	name     string
	conn     *websocket.Conn
	lc       *lockedConn
	sub      *fanout.Subscriber
	hub      *fanout.Hub
	bufs     net.Buffers
	pings    chan []byte   // payloads of client pings to answer
	readDone chan struct{} // closed when the reader stops
	readErr  error         // why it stopped; read after readDone
}

func wsSize(e *fanout.Entry) int { return len(e.WSFrame()) }

func (ws *wsSession) run() string {
	opts := ws.s.opts
	deadline := func() { ws.conn.SetReadDeadline(time.Now().Add(opts.PingInterval + opts.PongWait)) }
	deadline()
	ws.conn.SetReadLimit(opts.MaxMessageSize)
	ws.conn.SetPongHandler(func(string) error { deadline(); return nil })
	ws.conn.SetPingHandler(func(data string) error {
		deadline()
		select {
		case ws.pings <- []byte(data):
		default: // a pong is already due; one answers both
		}
		return nil
	})
	ws.conn.SetCloseHandler(func(int, string) error { return nil }) // answered by the writer
	go ws.read()
	defer func() { ws.conn.Close(); <-ws.readDone }()

	ping := time.NewTicker(opts.PingInterval)
	defer ping.Stop()
	pingFrame := fanout.WSFrame(fanout.OpPing, nil)
	for {
		// Control frames first, even when hits keep the writer busy:
		// without pings the client's pongs stop and the read deadline
		// would end a healthy but busy connection.
		select {
		case <-ping.C:
			ws.bufs = append(ws.bufs, pingFrame)
		case p := <-ws.pings:
			ws.bufs = append(ws.bufs, fanout.WSFrame(fanout.OpPong, p))
		default:
		}
		entries, gap, wake := ws.sub.Poll(wsSize, opts.BatchBytes)
		if gap != nil {
			if opts.SlowDisconnect {
				ws.close(closePolicyViolation, "slow consumer: fell behind lsmux's buffer; reconnect with from=oldest")
				return reasonSlow
			}
			ws.bufs = append(ws.bufs, fanout.WSFrame(fanout.OpText, gapMessage(gap)))
			ws.s.obs.Gap(ws.name, "ws")
		}
		for _, e := range entries {
			ws.bufs = append(ws.bufs, e.WSFrame())
		}
		if len(ws.bufs) > 0 {
			if err := ws.flush(); err != nil {
				return writeFailed(err)
			}
			if len(entries) > 0 {
				ws.s.obs.Delivered(ws.name, "ws", len(entries), entries[0].Received)
			}
			if len(entries) > 0 || gap != nil {
				continue
			}
		}
		select {
		case <-wake:
		case <-ping.C:
			ws.bufs = append(ws.bufs, pingFrame)
		case p := <-ws.pings:
			ws.bufs = append(ws.bufs, fanout.WSFrame(fanout.OpPong, p))
		case <-ws.readDone:
			var ce *websocket.CloseError
			if errors.As(ws.readErr, &ce) {
				ws.close(ce.Code, "")
				return reasonClient
			}
			var ne net.Error
			if errors.As(ws.readErr, &ne) && ne.Timeout() {
				return reasonPingTimeout
			}
			return reasonClient
		case <-ws.s.closing:
			return ws.shutdown()
		case <-ws.hub.Closed():
			return ws.shutdown()
		}
	}
}

// shutdown waits this subscriber's turn in the drain spread, then says
// goodbye with 1001 and waits briefly for the client's close reply.
func (ws *wsSession) shutdown() string {
	t := time.NewTimer(ws.s.closeDelay())
	defer t.Stop()
	select {
	case <-t.C:
	case <-ws.readDone:
		return reasonClient
	}
	ws.close(closeGoingAway, "lsmux is shutting down; reconnect with from=<last seq + 1>")
	return reasonShutdown
}

func (ws *wsSession) read() {
	defer close(ws.readDone)
	for {
		if _, _, err := ws.conn.NextReader(); err != nil {
			ws.readErr = err
			return
		}
	}
}

func (ws *wsSession) flush() error {
	ws.lc.SetWriteDeadline(time.Now().Add(ws.s.opts.WriteTimeout))
	bufs := ws.bufs // WriteTo consumes the slice header, not the backing array
	_, err := ws.lc.writeBuffers(&bufs)
	clear(ws.bufs) // drop references to entries the ring may evict
	ws.bufs = ws.bufs[:0]
	return err
}

// close sends a close frame and waits up to a second for the reply.
func (ws *wsSession) close(code int, text string) {
	payload := make([]byte, 2, 2+len(text))
	binary.BigEndian.PutUint16(payload, uint16(code))
	if len(text) > 120 {
		text = text[:120]
	}
	payload = append(payload, text...)
	ws.bufs = append(ws.bufs, fanout.WSFrame(fanout.OpClose, payload))
	if ws.flush() != nil {
		return
	}
	t := time.NewTimer(time.Second)
	defer t.Stop()
	select {
	case <-ws.readDone:
	case <-t.C:
	}
}

func gapMessage(g *fanout.Gap) []byte {
	b := make([]byte, 0, 64)
	b = append(b, `{"type":"gap","from":`...)
	b = strconv.AppendUint(b, g.From, 10)
	b = append(b, `,"to":`...)
	b = strconv.AppendUint(b, g.To, 10)
	return append(b, '}')
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
