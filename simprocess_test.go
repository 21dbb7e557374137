package main

import (
	"os/exec"
	"regexp"
	"strconv"
	"syscall"
	"testing"
	"time"
)

// simProcess is `lsmux simulate` in a process of its own: a test that
// measures latency keeps the simulator's work (generating and
// compressing thousands of hits a second, under -race when the tests
// are) off its own process, which then only reads.
type simProcess struct {
	stream, token string
}

func (p *simProcess) StreamURL(string) string { return p.stream }
func (p *simProcess) TokenURL() string        { return p.token }
func (p *simProcess) ClientID() string        { return "sim-client" }
func (p *simProcess) ClientSecret() string    { return "sim-secret" }

var (
	simStreamLine = regexp.MustCompile(`stream:\s+(\S+)`)
	simTokenLine  = regexp.MustCompile(`tokens:\s+(\S+)`)
)

// startSimProcess runs `lsmux simulate` for stream demo at rate hits/s,
// flushing every tick, each hit stamped with its send time; it is
// stopped when the test ends.
func startSimProcess(t *testing.T, rate int, tick time.Duration) *simProcess {
	t.Helper()
	cmd := exec.Command(lsmuxBinary(t), "simulate", "--listen", "127.0.0.1:0", "--rate", strconv.Itoa(rate), "--tick", tick.String(), "--stamp-sent")
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { cmd.Wait(); close(done) }()
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	})
	p := &simProcess{}
	waitFor(t, 20*time.Second, "the simulator to say where it listens", func() bool {
		s, k := simStreamLine.FindStringSubmatch(out.String()), simTokenLine.FindStringSubmatch(out.String())
		if s == nil || k == nil {
			return false
		}
		p.stream, p.token = s[1], k[1]
		return true
	})
	return p
}
