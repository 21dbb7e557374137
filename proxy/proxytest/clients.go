// Package proxytest has subscriber clients for tests of lsmux: a WebSocket
// and an SSE client that turn what lsmux sends into messages on a channel,
// with the time each arrived.
package proxytest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"lsmux/internal/sse"
	"net"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Msg is one thing a subscriber received: a hit or a gap notice.
type Msg struct {
	Type     string          `json:"type"` // "hit" or "gap"
	Seq      uint64          `json:"seq"`
	Hit      json.RawMessage `json:"hit"`
	From, To uint64
	At       time.Time `json:"-"`
}

// WSClient reads a WebSocket subscription.
type WSClient struct {
	Conn *websocket.Conn
	Msgs <-chan Msg
	// Done yields the error that ended the subscription (a
	// *websocket.CloseError when lsmux closed it properly).
	Done   <-chan error
	pings  atomic.Int64
	closed chan struct{}
	once   sync.Once
}

// Pings is how many pings lsmux sent (each was answered with a pong).
func (c *WSClient) Pings() int64 { return c.pings.Load() }

// DialWS subscribes over WebSocket; url may start with http or ws.
func DialWS(url string, header http.Header) (*WSClient, *http.Response, error) {
	url = strings.Replace(url, "http", "ws", 1)
	conn, resp, err := websocket.DefaultDialer.Dial(url, header)
	if err != nil {
		return nil, resp, err
	}
	msgs, done := make(chan Msg, 4096), make(chan error, 1)
	c := &WSClient{Conn: conn, Msgs: msgs, Done: done, closed: make(chan struct{})}
	conn.SetPingHandler(func(data string) error {
		c.pings.Add(1)
		// As gorilla's own handler: a pong that cannot be written in time
		// (this process descheduled on a busy machine) is skipped, not
		// the end of the subscription; the next ping gets one.
		err := conn.WriteControl(websocket.PongMessage, []byte(data), time.Now().Add(10*time.Second))
		var ne net.Error
		if errors.Is(err, websocket.ErrCloseSent) || (errors.As(err, &ne) && ne.Timeout()) {
			return nil
		}
		return err
	})
	go func() {
		defer close(msgs)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				done <- err
				return
			}
			var m Msg
			if err := json.Unmarshal(data, &m); err != nil {
				done <- fmt.Errorf("bad message %q: %w", data, err)
				conn.Close()
				return
			}
			m.At = time.Now()
			select {
			case msgs <- m:
			case <-c.closed: // nobody reads any more
				return
			}
		}
	}()
	return c, resp, nil
}

// Close drops the connection without a close frame, as a vanishing client.
func (c *WSClient) Close() {
	c.once.Do(func() { close(c.closed) })
	c.Conn.Close()
}

// SSEClient reads an event stream.
type SSEClient struct {
	Resp   *http.Response
	Msgs   <-chan Msg
	Closed <-chan string // the data of a final "event: close"
	cancel context.CancelFunc
	mu     sync.Mutex
	lastID string
}

// DialSSE subscribes over Server-Sent Events.
func DialSSE(url string, header http.Header) (*SSEClient, error) {
	return DialSSEClient(http.DefaultClient, url, header)
}

// DialSSEClient is DialSSE through a given HTTP client.
func DialSSEClient(client *http.Client, url string, header http.Header) (*SSEClient, error) {
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		cancel()
		return nil, err
	}
	for k, v := range header {
		req.Header[k] = v
	}
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		cancel()
		resp.Body.Close()
		return nil, &StatusError{Status: resp.StatusCode}
	}
	msgs, closed := make(chan Msg, 4096), make(chan string, 1)
	c := &SSEClient{Resp: resp, Msgs: msgs, Closed: closed, cancel: cancel}
	send := func(m Msg) bool {
		select {
		case msgs <- m:
			return true
		case <-ctx.Done(): // closed: nobody reads any more
			return false
		}
	}
	go func() {
		defer close(msgs)
		events := sse.NewReader(resp.Body, 0)
		for {
			ev, err := events.Next()
			if err != nil {
				return
			}
			switch string(ev.Type) {
			case "hit":
				seq, _ := strconv.ParseUint(string(ev.ID), 10, 64)
				c.mu.Lock()
				c.lastID = string(ev.ID)
				c.mu.Unlock()
				if !send(Msg{Type: "hit", Seq: seq, Hit: json.RawMessage(bytes.Clone(ev.Data)), At: time.Now()}) {
					return
				}
			case "gap":
				var g struct{ From, To uint64 }
				json.Unmarshal(ev.Data, &g)
				if !send(Msg{Type: "gap", From: g.From, To: g.To, At: time.Now()}) {
					return
				}
			case "close":
				select {
				case closed <- string(ev.Data):
				default:
				}
			}
		}
	}()
	return c, nil
}

// LastID is the last event id seen, what a browser sends as Last-Event-ID.
func (c *SSEClient) LastID() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lastID
}

// Close ends the subscription.
func (c *SSEClient) Close() { c.cancel(); c.Resp.Body.Close() }

// StatusError is a subscription refused with an HTTP status.
type StatusError struct{ Status int }

func (e *StatusError) Error() string { return "subscription refused: " + strconv.Itoa(e.Status) }

// ErrTimeout is returned by Next when nothing arrived in time.
var ErrTimeout = errors.New("no message in time")

// ErrEnded is returned by Next when the subscription ended.
var ErrEnded = errors.New("subscription ended")

// Next returns the next message, or an error after timeout.
func Next(ch <-chan Msg, timeout time.Duration) (Msg, error) {
	t := time.NewTimer(timeout)
	defer t.Stop()
	select {
	case m, ok := <-ch:
		if !ok {
			return Msg{}, ErrEnded
		}
		return m, nil
	case <-t.C:
		return Msg{}, ErrTimeout
	}
}
