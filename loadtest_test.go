package main

import (
	"context"
	"io"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"lsmux/internal/cli"
	"lsmux/internal/loadtest"
)

// TestLoadtestSmoke runs the load tool briefly, the way users run it: it
// spawns the lsmux binary fed by its own simulator, for both transports,
// and must report every delivery.
func TestLoadtestSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := lsmuxBinary(t)
	for _, transport := range []string{"ws", "sse"} {
		// -tick 5ms at 200 hits/s: one hit per upstream flush.
		line := runLoadtest(t, bin, transport, "-n", "20", "-rate", "200", "-tick", "5ms", "-duration", "1s", "-warmup", "500ms")
		// Loss counts hits still in flight when the window closes, so a
		// little is expected; a hole in a subscriber's sequence is not.
		m := regexp.MustCompile(`loss=([0-9.]+)%`).FindStringSubmatch(line)
		if m == nil || !strings.Contains(line, "seq-missing=0") || !strings.Contains(line, "failed-subscribers=0") || !strings.Contains(line, "p99=") ||
			!strings.Contains(line, "server-cpu/delivery=") || strings.Contains(line, "n/a") {
			t.Fatalf("%s: %s", transport, line)
		}
		if loss, _ := strconv.ParseFloat(m[1], 64); loss > 1 {
			t.Fatalf("%s: loss %v%% over 1%%: %s", transport, loss, line)
		}
	}
}

// TestLoadtestStormSmoke runs the wake-storm mode briefly: idle
// subscribers are let in (handshakes/s reported), then a burst reaches
// every one of them. The idle mode reports memory per connection.
func TestLoadtestStormSmoke(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary")
	}
	bin := lsmuxBinary(t)
	for _, transport := range []string{"ws", "sse"} {
		line := runLoadtest(t, bin, transport, "-n", "200", "-storm", "10")
		if !strings.Contains(line, "opened=200 failed=0") || !strings.Contains(line, "delivered=2000/2000") || !regexp.MustCompile(`handshakes=[1-9][0-9]*/s`).MatchString(line) {
			t.Fatalf("%s: %s", transport, line)
		}
		line = runLoadtest(t, bin, transport, "-n", "200", "-idle")
		if !strings.Contains(line, "opened=200 failed=0") || !regexp.MustCompile(`: [0-9.]+ KB per connection`).MatchString(line) {
			t.Fatalf("%s idle: %s", transport, line)
		}
	}
}

// runLoadtest runs the load tool as a user would, spawning bin on a port of
// its own, and returns (and logs) its report.
func runLoadtest(t *testing.T, bin, transport string, args ...string) string {
	t.Helper()
	var out strings.Builder
	err := loadtest.Run(context.Background(), append([]string{"-server-binary", bin, "-server-cpus", "", "-sim-listen", "127.0.0.1:0",
		"-transport", transport}, args...), cli.Env{}, &out, io.Discard)
	if err != nil {
		t.Fatalf("%s: %v", transport, err)
	}
	line := out.String()
	t.Log(strings.TrimSpace(line))
	return line
}
