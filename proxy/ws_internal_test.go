package proxy

import (
	"lsmux/fanout"
	"net"
	"os"
	"testing"
	"time"

	"github.com/gorilla/websocket"
)

// cutConn accepts the first n bytes of a write and then fails, as a
// socket whose write deadline fell in the middle of a frame.
type cutConn struct {
	net.Conn
	n       int
	written []byte
}

func (c *cutConn) Write(p []byte) (int, error) {
	k := min(len(p), c.n-len(c.written))
	c.written = append(c.written, p[:k]...)
	if k < len(p) {
		return k, os.ErrDeadlineExceeded
	}
	return k, nil
}

func (c *cutConn) SetWriteDeadline(time.Time) error { return nil }

// TestWebSocketWritesNothingAfterACutFrame: once a write stopped part way
// through a frame, the peer writes nothing more, not even the echo of the
// client's close frame: those bytes would be read as the cut frame's
// payload.
func TestWebSocketWritesNothingAfterACutFrame(t *testing.T) {
	conn := &cutConn{n: 5}
	p := &wsPeer{connWriter: connWriter{lc: &lockedConn{Conn: conn}, readDone: make(chan struct{})}}
	var b batch
	b.addOwn(fanout.WSFrame(fanout.OpText, []byte(`{"type":"hit","seq":1,"hit":{}}`)))
	if err := p.send(&b, time.Now().Add(time.Second)); err == nil {
		t.Fatal("a cut write reported no error")
	}
	p.readErr = &websocket.CloseError{Code: websocket.CloseNormalClosure}
	if reason, reply := p.left(); reason != reasonClient || reply != nil {
		t.Fatalf("after a cut frame, left() = %q with a %d-byte reply; want client and no reply", reason, len(reply))
	}
	conn.n = 1 << 20
	if err := p.send(&b, time.Now().Add(time.Second)); err == nil || len(conn.written) != 5 {
		t.Fatalf("a write after a cut frame: err %v, %d bytes on the wire; want an error and the 5 bytes of before", err, len(conn.written))
	}
}
