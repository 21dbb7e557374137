package main

import (
	"context"
	"io"
	"net"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"lsmux/internal/cli"
	"lsmux/internal/loadtest"
)

// TestLoadtestSmoke runs the load tool briefly against an in-process
// lsmux, for both transports: it must report every delivery.
func TestLoadtestSmoke(t *testing.T) {
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	simAddr := ln.Addr().String()
	ln.Close()
	a := runApp(t, []string{"-listen", "127.0.0.1:0", "-stream-url", "http://" + simAddr + "/api/1/stream/demo",
		"-token-url", "http://" + simAddr + "/ims/token/v3", "-client-id", "sim-client", "-client-secret", "sim-secret",
		"-reconnect-delay", "100ms", "-reconnect-max-delay", "200ms", "-log-level", "error"}, nil)

	for _, transport := range []string{"ws", "sse"} {
		var out strings.Builder
		err := loadtest.Run(context.Background(), []string{"-target", "http://" + a.addr(), "-transport", transport, "-n", "20",
			"-rate", "200", "-duration", "1s", "-warmup", "500ms", "-sim-listen", simAddr}, cli.Env{}, &out, io.Discard)
		if err != nil {
			t.Fatalf("%s: %v", transport, err)
		}
		line := out.String()
		t.Log(strings.TrimSpace(line))
		// Loss counts hits still in flight when the window closes, so a
		// little is expected; a hole in a subscriber's sequence is not.
		m := regexp.MustCompile(`loss=([0-9.]+)%`).FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, "seq-missing=0") || !strings.Contains(line, "failed-subscribers=0") || !strings.Contains(line, "p99=") {
			t.Fatalf("%s: %s", transport, line)
		}
		if loss, _ := strconv.ParseFloat(m[1], 64); loss > 1 {
			t.Fatalf("%s: loss %v%% over 1%%: %s", transport, loss, line)
		}
		waitFor(t, 5*time.Second, "subscribers to leave", func() bool { return len(a.streams[0].hub.Subscribers()) == 0 })
	}
}
