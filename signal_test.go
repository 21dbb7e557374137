package main

import (
	"errors"
	"net"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/gorilla/websocket"

	"lsmux/proxy/proxytest"
)

// TestSIGTERMExitsCleanlyUnderLoad builds the real binary, runs the demo,
// loads it with subscribers and half-open connections, and sends SIGTERM:
// it must close subscribers properly and exit 0 within its deadline.
func TestSIGTERMExitsCleanlyUnderLoad(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := lsmuxBinary(t)
	cmd := exec.Command(bin, "demo", "-listen", "127.0.0.1:0", "-shutdown-timeout", "2s", "-log-level", "warn")
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	addr := childAddr(t, out)
	base := "http://" + addr + "/v1/streams/demo"
	waitFor(t, 10*time.Second, "the demo to serve", func() bool {
		c, err := net.Dial("tcp", addr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})
	var clients []*proxytest.WSClient
	for range 50 {
		c, _, err := proxytest.DialWS(base+"/ws", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		clients = append(clients, c)
	}
	for range 20 {
		s, err := proxytest.DialSSE(base+"/sse", nil)
		if err != nil {
			t.Fatal(err)
		}
		defer s.Close()
	}
	for range 200 { // half-open: never finish their headers
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("GET /v1/streams/demo/sse HTTP/1.1\r\n"))
	}
	if _, err := proxytest.Next(clients[0].Msgs, 5*time.Second); err != nil {
		t.Fatalf("no hit before SIGTERM: %v", err)
	}
	start := time.Now()
	cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("exit: %v\n%s", err, out.String())
		}
	case <-time.After(5 * time.Second):
		t.Fatalf("still running 5s after SIGTERM (deadline 2s)\n%s", out.String())
	}
	took := time.Since(start)
	closed1001 := 0
	for _, c := range clients {
		for range c.Msgs {
		}
		var ce *websocket.CloseError
		if err := <-c.Done; errors.As(err, &ce) && ce.Code == websocket.CloseGoingAway {
			closed1001++
		}
	}
	if closed1001 != len(clients) {
		t.Fatalf("%d of %d WebSocket clients got close 1001", closed1001, len(clients))
	}
	if strings.Contains(out.String(), "panic") {
		t.Fatalf("output:\n%s", out.String())
	}
	t.Logf("exited 0 %v after SIGTERM; %d WebSocket clients closed with 1001", took.Round(time.Millisecond), closed1001)
}
