package proxy_test

import (
	"bufio"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/proxy/proxytest"
)

// rawWS is a WebSocket client on a bare TCP connection, so a test sees
// every byte lsmux sends, close frames included.
type rawWS struct {
	conn net.Conn
	br   *bufio.Reader
}

func dialRawWS(t *testing.T, u string) *rawWS {
	t.Helper()
	pu, _ := url.Parse(u)
	conn, err := net.Dial("tcp", pu.Host)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	var key [16]byte
	rand.Read(key[:])
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		pu.RequestURI(), pu.Host, base64.StdEncoding.EncodeToString(key[:]))
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, nil)
	if err != nil || resp.StatusCode != http.StatusSwitchingProtocols {
		t.Fatalf("handshake: %v %v", resp, err)
	}
	return &rawWS{conn: conn, br: br}
}

// frame reads one frame: opcode and payload.
func (c *rawWS) frame(t *testing.T) (byte, []byte) {
	t.Helper()
	c.conn.SetReadDeadline(time.Now().Add(5 * time.Second))
	var hdr [2]byte
	if _, err := io.ReadFull(c.br, hdr[:]); err != nil {
		t.Fatalf("read frame: %v", err)
	}
	n := uint64(hdr[1] & 0x7f)
	switch n {
	case 126:
		var b [2]byte
		io.ReadFull(c.br, b[:])
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		io.ReadFull(c.br, b[:])
		n = binary.BigEndian.Uint64(b[:])
	}
	payload := make([]byte, n)
	if _, err := io.ReadFull(c.br, payload); err != nil {
		t.Fatalf("read payload: %v", err)
	}
	return hdr[0] & 0x0f, payload
}

// closeReply reads frames up to lsmux's close frame and returns its
// payload.
func (c *rawWS) closeReply(t *testing.T) []byte {
	t.Helper()
	for {
		op, payload := c.frame(t)
		if op == fanout.OpClose {
			return payload
		}
	}
}

// maskedClose is a client close frame (clients must mask; a zero mask
// leaves the payload as it is).
func maskedClose(payload []byte) []byte {
	return append([]byte{0x88, 0x80 | byte(len(payload)), 0, 0, 0, 0}, payload...)
}

// TestCloseFramesNeverCarryReservedCodes: a client that closes without a
// status code, or only half-closes its TCP connection, gets a close frame
// with no payload: 1005 and 1006 may never be sent (RFC 6455 §7.4.1), and
// clients that receive them report a broken frame. Codes that may be sent
// are echoed.
func TestCloseFramesNeverCarryReservedCodes(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	ws := strings.Replace(r.base, "http", "ws", 1) + "/ws"

	noStatus := dialRawWS(t, ws)
	noStatus.conn.Write(maskedClose(nil))
	if got := noStatus.closeReply(t); len(got) != 0 {
		t.Errorf("reply to a close without status: payload %x, want none", got)
	}

	halfClosed := dialRawWS(t, ws)
	halfClosed.conn.(*net.TCPConn).CloseWrite()
	if got := halfClosed.closeReply(t); len(got) != 0 {
		t.Errorf("reply to a half-closed connection: payload %x, want none (not 1006)", got)
	}

	normal := dialRawWS(t, ws)
	normal.conn.Write(maskedClose([]byte{0x03, 0xe8})) // 1000
	if got := normal.closeReply(t); len(got) < 2 || binary.BigEndian.Uint16(got) != 1000 {
		t.Errorf("reply to close 1000: %x, want 1000 echoed", got)
	}
	waitFor(t, 2*time.Second, "the subscribers to leave", func() bool { return len(r.hub.Subscribers()) == 0 })
}

// backlog fills a hub with n hits of about 1 KB, far more than socket
// buffers hold, so a reading subscriber is catching up for a while.
func backlog(r *rig, n int) {
	pad := strings.Repeat("b", 1000)
	for i := range n {
		r.hub.Append([]byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"pad":"%s"}`, i, pad)), time.Now())
	}
}

// TestShutdownWhileCatchingUpSaysGoodbye: subscribers reading a backlog
// when lsmux shuts down still get WebSocket 1001 and SSE's final close
// event, within the shutdown timeout (they used to be cut at the deadline:
// the loop only looked at shutdown when it had nothing to send).
func TestShutdownWhileCatchingUpSaysGoodbye(t *testing.T) {
	r := serve(t, fanout.Options{MaxHits: 200_000, MaxBytes: 1 << 30}, proxy.Options{})
	const n = 80_000 // 80 MB: more than the clients read during the shutdown
	backlog(r, n)
	// Both clients read about 10 MB/s through small receive buffers: far
	// behind when the shutdown starts, and still behind when it ends, but
	// the goodbye waits behind little in the sockets.
	pace := func(i int) {
		if i%10 == 0 {
			time.Sleep(time.Millisecond)
		}
	}
	dial := func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
		if err == nil {
			c.(*net.TCPConn).SetReadBuffer(128 << 10)
		}
		return c, err
	}
	wsDialer := *websocket.DefaultDialer
	wsDialer.NetDialContext = dial
	ws, _, err := wsDialer.Dial(strings.Replace(r.base, "http", "ws", 1)+"/ws?from=oldest", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer ws.Close()
	wsEnd := make(chan error, 1)
	go func() {
		for i := 0; ; i++ {
			if _, _, err := ws.ReadMessage(); err != nil {
				wsEnd <- err
				return
			}
			pace(i)
		}
	}()
	sse, err := proxytest.DialSSEClient(&http.Client{Transport: &http.Transport{DialContext: dial}}, r.base+"/sse?from=oldest", nil)
	if err != nil {
		t.Fatal(err)
	}
	defer sse.Close()
	go func() {
		i := 0
		for range sse.Msgs {
			pace(i)
			i++
		}
	}()
	waitFor(t, 5*time.Second, "both subscribers reading", func() bool { return r.hub.Stats().Delivered > 2000 })
	for _, sub := range r.hub.Subscribers() {
		if sub.Lag < n/2 {
			t.Fatalf("subscriber %d is only %d behind: not catching up", sub.ID, sub.Lag)
		}
	}
	const timeout = 5 * time.Second // the goodbyes spread over the first half
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	start := time.Now()
	r.srv.Shutdown(ctx)
	select {
	case err := <-wsEnd:
		var ce *websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != websocket.CloseGoingAway {
			t.Fatalf("websocket ended with %v, want close 1001", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the websocket never ended")
	}
	select {
	case reason := <-sse.Closed:
		if !strings.Contains(reason, "shutdown") {
			t.Fatalf("sse final event %q", reason)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no final close event for an SSE subscriber catching up")
	}
	if took := time.Since(start); took > timeout+500*time.Millisecond {
		t.Fatalf("shutdown took %v, over its timeout", took)
	}
}

// TestClientThatLeavesMidBacklogIsNoticed: a client that closes while
// lsmux still has much to send it is gone from the hub at once, not after
// the backlog or the write timeout.
func TestClientThatLeavesMidBacklogIsNoticed(t *testing.T) {
	r := serve(t, fanout.Options{MaxHits: 200_000, MaxBytes: 1 << 30}, proxy.Options{WriteTimeout: time.Minute})
	backlog(r, 60_000)
	raw := dialRawWS(t, strings.Replace(r.base, "http", "ws", 1)+"/ws?from=oldest")
	raw.frame(t) // it started
	waitFor(t, 2*time.Second, "the subscriber", func() bool { return len(r.hub.Subscribers()) == 1 })
	raw.conn.Write(maskedClose([]byte{0x03, 0xe8}))
	left := time.Now()
	waitFor(t, 5*time.Second, "the subscriber to be gone", func() bool { return len(r.hub.Subscribers()) == 0 })
	if took := time.Since(left); took > time.Second {
		t.Fatalf("noticed the close after %v", took)
	}

	sse, err := http.Get(r.base + "/sse?from=oldest")
	if err != nil {
		t.Fatal(err)
	}
	io.ReadFull(sse.Body, make([]byte, 4096)) // it started
	waitFor(t, 2*time.Second, "the SSE subscriber", func() bool { return len(r.hub.Subscribers()) == 1 })
	sse.Body.Close()
	left = time.Now()
	waitFor(t, 5*time.Second, "the SSE subscriber to be gone", func() bool { return len(r.hub.Subscribers()) == 0 })
	if took := time.Since(left); took > time.Second {
		t.Fatalf("noticed the SSE client leaving after %v", took)
	}
}
