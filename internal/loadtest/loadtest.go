// Package loadtest is `lsmux loadtest`: it measures a deployment the way
// capacity planning needs. A simulator feeds one lsmux (spawned and pinned
// to a core, or already running), N subscribers read everything, and one
// line reports deliveries/s, loss, end-to-end latency and the server's CPU
// per delivery and memory, next to the generator's own CPU.
package loadtest

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"crypto/rand"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"lsmux/internal/cli"
	"lsmux/internal/procstat"
	"lsmux/internal/sse"
	"lsmux/internal/wait"
	"lsmux/upstream/simulator"
)

// Settings are the load test's flags.
type Settings struct {
	Target, Transport, SimListen, ServerCPUs, ServerBinary string
	N, PID, InFlight                                       int
	Rate                                                   float64
	Duration, Warmup, Tick                                 time.Duration
	Idle                                                   bool
	Storm                                                  int
}

// Flags binds the load test's settings (LSMUX_LOADTEST_* variables).
func Flags(s *Settings) *cli.FlagSet {
	f := cli.NewFlagSet("lsmux loadtest", "LSMUX_LOADTEST_", `Measure lsmux with N subscribers fed by a built-in simulator: deliveries/s,
loss, end-to-end latency, the server's CPU per delivery and memory, and the
generator's own CPU. It spawns an lsmux pinned to CPU 0 unless --target
names a running one (fed by this simulator, --sim-listen).`)
	f.String(&s.Target, "target", "", "base URL of a running lsmux fed by this simulator (empty: spawn one)")
	f.String(&s.Transport, "transport", "ws", "ws or sse")
	f.Int(&s.N, "n", 1000, "subscribers")
	f.Float(&s.Rate, "rate", 1000, "hits per second from the simulator")
	f.Duration(&s.Duration, "duration", 20*time.Second, "measured period")
	f.Duration(&s.Warmup, "warmup", 3*time.Second, "period before measuring")
	f.String(&s.SimListen, "sim-listen", "127.0.0.1:9090", "the simulator's address (a running lsmux must use it as its stream URL)")
	f.Int(&s.PID, "pid", 0, "pid of a running lsmux, for its CPU and memory (a spawned one is known)")
	f.String(&s.ServerCPUs, "server-cpus", "0", "CPUs for a spawned lsmux (taskset -c), empty: not pinned")
	f.String(&s.ServerBinary, "server-binary", "", "the lsmux binary to spawn (empty: this one)")
	f.Duration(&s.Tick, "tick", 5*time.Millisecond, "how often the simulator flushes what is due: 1ms at 1000 hits/s sends one hit per upstream flush, the worst arrival pattern")
	f.Bool(&s.Idle, "idle", false, "open n idle subscribers (of -transport) and report memory per connection")
	f.Int(&s.InFlight, "in-flight", 200, "handshakes under way at once while -idle and -storm connect their subscribers")
	f.Int(&s.Storm, "storm", 0, "wake storm: open n idle subscribers (reporting handshakes/s), then send a burst of this many hits and report how long they take to reach all")
	return f
}

// Run is `lsmux loadtest`. The subscribers are deliberately cheap: a
// hand-rolled WebSocket/SSE reader that only looks at the sequence number
// and the simulator's send stamp, so the load generator is not the
// bottleneck.
func Run(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	st := &Settings{}
	if err := Flags(st).Parse(args, env, stdout); err != nil {
		return err
	}
	target, transport, n, rate, duration, warmup := &st.Target, &st.Transport, &st.N, &st.Rate, &st.Duration, &st.Warmup
	simListen, pid, cpus, idle := &st.SimListen, &st.PID, &st.ServerCPUs, &st.Idle
	if *transport != "ws" && *transport != "sse" {
		return fmt.Errorf("transport %q: want ws or sse", *transport)
	}
	simRate := *rate
	if *idle || st.Storm > 0 {
		simRate = 0.01 // a stream that exists but is quiet
	}
	sim, err := simulator.New(simulator.Options{Addr: *simListen, Rate: simRate, StampSent: true, Tick: st.Tick, EmptyEvery: -1})
	if err != nil {
		return err
	}
	defer sim.Close()

	base := strings.TrimSuffix(*target, "/")
	if base == "" {
		child, addr, err := spawnLsmux(ctx, st.ServerBinary, sim, *cpus, *n, stderr)
		if err != nil {
			return err
		}
		defer func() { child.Process.Signal(os.Interrupt); child.Wait() }()
		base, *pid = "http://"+addr, child.Process.Pid
	}
	if err := waitReady(ctx, base+"/readyz?upstream=1", 30*time.Second); err != nil {
		return fmt.Errorf("lsmux at %s is not streaming (is it fed by %s?): %w", base, sim.StreamURL("demo"), err)
	}
	subURL := base + "/v1/streams/demo/" + *transport

	if *idle {
		return idleTest(ctx, subURL, *transport, *n, st.InFlight, *pid, stdout)
	}
	if st.Storm > 0 {
		return stormTest(ctx, sim, subURL, *transport, *n, st.InFlight, st.Storm, *pid, stdout)
	}
	recs := make([]*recorder, *n)
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var wg sync.WaitGroup
	var failed atomic.Int64
	for i := range recs {
		recs[i] = &recorder{}
		wg.Go(func() {
			var err error
			if *transport == "ws" {
				err = readWS(ctx, subURL, recs[i])
			} else {
				err = readSSE(ctx, subURL, recs[i])
			}
			if err != nil && ctx.Err() == nil {
				failed.Add(1)
			}
		})
	}
	defer wg.Wait()
	defer cancel()
	if !wait.Sleep(ctx, *warmup) {
		return ctx.Err()
	}
	sent0 := simSent(sim)
	cpu0, self0 := procstat.CPU(*pid), procstat.CPU(os.Getpid())
	for _, r := range recs {
		r.reset()
	}
	start := time.Now()
	if !wait.Sleep(ctx, *duration) {
		return ctx.Err()
	}
	elapsed := time.Since(start).Seconds()
	sent, cpu, self := simSent(sim)-sent0, procstat.CPU(*pid)-cpu0, procstat.CPU(os.Getpid())-self0
	var total, gaps, missing, span uint64
	var hist latencyHist
	for _, r := range recs {
		r.mu.Lock()
		total += r.frames
		gaps += r.gaps
		missing += r.missing
		if r.frames > 0 {
			span += r.lastSeq - r.firstSeq + 1
		}
		hist.merge(&r.hist)
		r.mu.Unlock()
	}
	expected := float64(sent) * float64(*n)
	// Loss is what each subscriber's sequence numbers say it did not get
	// between its first and last hit of the window: hits still in flight
	// when the window closes are late, not lost (deliveries/s against
	// expected/s shows a subscriber falling behind).
	loss := 0.0
	if span > 0 {
		loss = max(0, 1-float64(total)/float64(span)) * 100
	}
	perDelivery := "n/a (give -pid)"
	rss := "n/a"
	if *pid > 0 && total > 0 {
		perDelivery = fmt.Sprintf("%.2fµs (%.2f cores)", cpu.Seconds()*1e6/float64(total), cpu.Seconds()/elapsed)
		rss = fmt.Sprintf("%d MiB", procstat.RSS(*pid)>>20)
	}
	fmt.Fprintf(stdout, "loadtest %s n=%d upstream=%.0f hits/s deliveries=%.0f/s expected=%.0f/s loss=%.3f%% gaps=%d seq-missing=%d "+
		"latency p50=%v p99=%v max=%v server-cpu/delivery=%s server-rss=%s loadgen-cpu=%.2f cores failed-subscribers=%d\n",
		*transport, *n, float64(sent)/elapsed, float64(total)/elapsed, expected/elapsed, loss, gaps, missing,
		hist.quantile(0.5), hist.quantile(0.99), hist.max(), perDelivery, rss, self.Seconds()/elapsed, failed.Load())
	return nil
}

// spawnLsmux starts `lsmux serve` on a port of its own choosing, fed by
// sim, pinned with taskset when it is available, and returns the address
// it reports in its "lsmux serving" log line (choosing a free port here
// and handing it over would race with anything else on the machine). The
// child's warnings and errors go on to stderr.
func spawnLsmux(ctx context.Context, binary string, sim *simulator.Server, cpus string, n int, stderr io.Writer) (*exec.Cmd, string, error) {
	if binary == "" {
		self, err := os.Executable()
		if err != nil {
			return nil, "", err
		}
		binary = self
	}
	argv := []string{binary, "serve"}
	if ts, err := exec.LookPath("taskset"); err == nil && cpus != "" {
		argv = append([]string{ts, "-c", cpus}, argv...)
	}
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Env = append(os.Environ(), "LSMUX_LISTEN=127.0.0.1:0", "LSMUX_STREAM_URL="+sim.StreamURL("demo"), "LSMUX_TOKEN_URL="+sim.TokenURL(),
		"LSMUX_CLIENT_ID="+sim.ClientID(), "LSMUX_CLIENT_SECRET="+sim.ClientSecret(), "LSMUX_LOG_LEVEL=info", "LSMUX_LOG_FORMAT=json",
		"LSMUX_MAX_SUBSCRIBERS="+strconv.Itoa(n+100), "LSMUX_MAX_SUBSCRIBERS_PER_ADDRESS="+strconv.Itoa(n+100))
	cmd.Stdout = stderr
	logs, err := cmd.StderrPipe()
	if err != nil {
		return nil, "", err
	}
	if err := cmd.Start(); err != nil {
		return nil, "", err
	}
	addrCh := make(chan string, 1)
	go func() {
		sc := bufio.NewScanner(logs)
		for sc.Scan() {
			var line struct{ Level, Msg, Listen string }
			if json.Unmarshal(sc.Bytes(), &line) != nil {
				fmt.Fprintln(stderr, sc.Text())
				continue
			}
			if line.Msg == "lsmux serving" {
				addrCh <- line.Listen
			}
			if line.Level == "warning" || line.Level == "error" || line.Level == "fatal" {
				fmt.Fprintln(stderr, sc.Text())
			}
		}
		close(addrCh)
	}()
	select {
	case addr, ok := <-addrCh:
		if ok {
			return cmd, addr, nil
		}
	case <-time.After(30 * time.Second):
	case <-ctx.Done():
	}
	cmd.Process.Kill()
	cmd.Wait()
	return nil, "", fmt.Errorf("the spawned lsmux (%s) did not say where it listens", binary)
}

func waitReady(ctx context.Context, url string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz answered %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return err
		}
		if !wait.Sleep(ctx, 100*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func simSent(sim *simulator.Server) uint64 {
	var n uint64
	for _, a := range sim.Attempts() {
		n += uint64(a.Hits)
	}
	return n
}

// idleTest opens n subscribers that receive nothing and reports the
// server's resident memory per connection.
func idleTest(ctx context.Context, url, transport string, n, inFlight, pid int, stdout io.Writer) error {
	if pid == 0 {
		return errors.New("idle mode needs the server's pid (spawned, or -pid)")
	}
	before := procstat.RSS(pid)
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel() // runs first: the readers stop, then Wait returns
	_, c := connectAll(ctx, &wg, url, transport, n, 2<<10, inFlight, pid)
	wait.Sleep(ctx, 3*time.Second) // let the server settle (GC, buffers)
	after := procstat.RSS(pid)
	fmt.Fprintf(stdout, "loadtest idle %s n=%d %v server-rss %d MiB -> %d MiB: %.1f KB per connection\n",
		transport, n, c, before>>20, after>>20, float64(after-before)/1024/float64(max(1, c.opened)))
	return nil
}

// stormTest opens n subscribers that wait at the live edge, reporting
// how fast they were let in, then has the simulator send a burst of hits
// and reports how long the burst took to reach every one of them.
func stormTest(ctx context.Context, sim *simulator.Server, url, transport string, n, inFlight, burst, pid int, stdout io.Writer) error {
	ctx, cancel := context.WithCancel(ctx)
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	recs, c := connectAll(ctx, &wg, url, transport, n, 4<<10, inFlight, pid)
	wait.Sleep(ctx, 2*time.Second) // every subscriber is waiting at the live edge
	rss := procstat.RSS(pid)
	cpu0, self0 := procstat.CPU(pid), procstat.CPU(os.Getpid())
	for _, r := range recs {
		r.reset()
	}
	sent := time.Now()
	for i := range burst {
		sim.InjectRecord(fmt.Appendf(nil, `{"lsmuxSentNs":%d,"hitIdHigh":%d,"hitIdLow":%d,"pageName":"storm"}`, time.Now().UnixNano(), sent.UnixNano(), i+1))
	}
	want := uint64(burst) * uint64(c.opened)
	total := func() (t uint64) {
		for _, r := range recs {
			r.mu.Lock()
			t += r.frames
			r.mu.Unlock()
		}
		return t
	}
	deadline := time.Now().Add(60 * time.Second)
	for total() < want && time.Now().Before(deadline) {
		wait.Sleep(ctx, 5*time.Millisecond)
	}
	took := time.Since(sent)
	var hist latencyHist
	for _, r := range recs {
		r.mu.Lock()
		hist.merge(&r.hist)
		r.mu.Unlock()
	}
	fmt.Fprintf(stdout, "loadtest storm %s n=%d %v server-rss=%d MiB burst=%d delivered=%d/%d in %v "+
		"latency p50=%v p99=%v max=%v server-cpu=%v loadgen-cpu=%v\n",
		transport, n, c, rss>>20, burst, total(), want,
		took.Round(time.Millisecond), hist.quantile(0.5), hist.quantile(0.99), hist.max(), (procstat.CPU(pid) - cpu0).Round(time.Millisecond),
		(procstat.CPU(os.Getpid()) - self0).Round(time.Millisecond))
	return nil
}

// connectAll opens n subscribers (readers with bufSize-byte buffers),
// with at most inFlight handshakes under way at a time, and returns when
// all are open or have failed (or after two minutes): their recorders,
// how many, and how long until the last one was open. A real fleet reconnects spread out; all at once would
// measure the kernel's accept queue (4,096 here) and the clients' SYN
// retries, not lsmux.
func connectAll(ctx context.Context, wg *sync.WaitGroup, url, transport string, n, bufSize, inFlight, pid int) ([]*recorder, connected) {
	read := readWS
	if transport == "sse" {
		read = readSSE
	}
	var nOpen, nFailed, lastOpen atomic.Int64
	slots := make(chan struct{}, max(inFlight, 1))
	start := time.Now()
	cpu0, self0 := procstat.CPU(pid), procstat.CPU(os.Getpid())
	recs := make([]*recorder, n)
	for i := range recs {
		recs[i] = &recorder{bufSize: bufSize} // all of them, even if ctx ends while dialling
	}
	for _, r := range recs {
		var once sync.Once
		release := func() { once.Do(func() { <-slots }) }
		r.onOpen = func() { nOpen.Add(1); lastOpen.Store(time.Now().UnixNano()); release() }
		select {
		case slots <- struct{}{}:
		case <-ctx.Done():
			return recs, connected{opened: nOpen.Load(), failed: nFailed.Load()}
		}
		wg.Go(func() {
			if err := read(ctx, url, r); err != nil && ctx.Err() == nil {
				nFailed.Add(1)
			}
			release()
		})
	}
	deadline := time.Now().Add(120 * time.Second)
	for nOpen.Load()+nFailed.Load() < int64(len(recs)) && time.Now().Before(deadline) {
		wait.Sleep(ctx, 20*time.Millisecond)
	}
	took := time.Since(start)
	return recs, connected{opened: nOpen.Load(), failed: nFailed.Load(), took: time.Duration(lastOpen.Load() - start.UnixNano()),
		serverCPU: float64(procstat.CPU(pid)-cpu0) / float64(took), selfCPU: float64(procstat.CPU(os.Getpid())-self0) / float64(took)}
}

// connected is how connecting went: subscribers open and failed, how
// long until the last was open, and the cores the server and the
// generator used meanwhile.
type connected struct {
	opened, failed     int64
	took               time.Duration
	serverCPU, selfCPU float64
}

func (c connected) String() string {
	return fmt.Sprintf("opened=%d failed=%d handshakes=%.0f/s (server %.2f cores, loadgen %.2f cores)",
		c.opened, c.failed, float64(c.opened)/max(c.took.Seconds(), 1e-9), c.serverCPU, c.selfCPU)
}

// recorder is one subscriber's counts; only its reader writes them,
// except reset and the final read.
type recorder struct {
	mu      sync.Mutex
	frames  uint64
	gaps    uint64
	missing uint64
	lastSeq uint64
	// firstSeq is the first hit's number since reset.
	firstSeq uint64
	hist     latencyHist
	onOpen   func()
	// bufSize is the WebSocket reader's buffer (0: 32 KiB, for
	// throughput; idle and storm subscribers use a small one, so that
	// 19,000 of them do not make the generator the bottleneck).
	bufSize int
}

func (r *recorder) reset() {
	r.mu.Lock()
	r.frames, r.gaps, r.missing, r.firstSeq = 0, 0, 0, 0
	r.hist = latencyHist{}
	r.mu.Unlock()
}

func (r *recorder) hit(seq uint64, sentNs int64) {
	now := time.Now().UnixNano()
	r.mu.Lock()
	r.frames++
	if r.firstSeq == 0 {
		r.firstSeq = seq
	}
	if r.lastSeq != 0 && seq > r.lastSeq+1 {
		r.missing += seq - r.lastSeq - 1
	}
	r.lastSeq = seq
	if sentNs > 0 {
		r.hist.add(time.Duration(now - sentNs))
	}
	r.mu.Unlock()
}

// latencyHist has 250 µs buckets up to 2 s, plus the maximum.
type latencyHist struct {
	b   [8000]uint32
	n   uint64
	top time.Duration
}

func (h *latencyHist) add(d time.Duration) {
	i := int(d / (250 * time.Microsecond))
	h.b[min(max(i, 0), len(h.b)-1)]++
	h.n++
	h.top = max(h.top, d)
}

func (h *latencyHist) merge(o *latencyHist) {
	for i := range h.b {
		h.b[i] += o.b[i]
	}
	h.n += o.n
	h.top = max(h.top, o.top)
}

func (h *latencyHist) quantile(q float64) time.Duration {
	want := uint64(q * float64(h.n))
	var seen uint64
	for i, c := range h.b {
		seen += uint64(c)
		if seen > want {
			return time.Duration(i+1) * 250 * time.Microsecond
		}
	}
	return h.top
}

func (h *latencyHist) max() time.Duration { return h.top.Round(time.Microsecond) }

var (
	wsHitPrefix = []byte(`{"type":"hit","seq":`)
	stampKey    = []byte(`"lsmuxSentNs":`)
)

// readWS does the WebSocket handshake itself and reads frames with one
// buffered reader, looking only at each frame's first bytes.
func readWS(ctx context.Context, raw string, r *recorder) error {
	u, err := url.Parse(raw)
	if err != nil {
		return err
	}
	conn, err := loopbackDialer(u.Hostname()).DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return err
	}
	defer conn.Close()
	stop := context.AfterFunc(ctx, func() { conn.Close() })
	defer stop()
	var key [16]byte
	rand.Read(key[:])
	fmt.Fprintf(conn, "GET %s HTTP/1.1\r\nHost: %s\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
		u.RequestURI(), u.Host, base64.StdEncoding.EncodeToString(key[:]))
	br := bufio.NewReaderSize(conn, cmp.Or(r.bufSize, 32<<10))
	status, err := br.ReadString('\n')
	if err != nil {
		return err
	}
	if !strings.Contains(status, " 101 ") {
		return fmt.Errorf("handshake: %s", strings.TrimSpace(status))
	}
	for {
		line, err := br.ReadString('\n')
		if err != nil {
			return err
		}
		if line == "\r\n" {
			break
		}
	}
	if r.onOpen != nil {
		r.onOpen()
	}
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(br, hdr[:]); err != nil {
			return err
		}
		op, n := hdr[0]&0x0f, uint64(hdr[1]&0x7f)
		switch n {
		case 126:
			var b [2]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return err
			}
			n = uint64(binary.BigEndian.Uint16(b[:]))
		case 127:
			var b [8]byte
			if _, err := io.ReadFull(br, b[:]); err != nil {
				return err
			}
			n = binary.BigEndian.Uint64(b[:])
		}
		switch op {
		case 0x1: // text: a hit or a gap
			head, _ := br.Peek(int(min(n, 128)))
			if seq, ok := parseUintAfter(head, wsHitPrefix); ok {
				stamp, _ := parseUintAfter(head, stampKey)
				r.hit(seq, int64(stamp))
			} else if bytes.Contains(head, []byte(`"gap"`)) {
				r.mu.Lock()
				r.gaps++
				r.mu.Unlock()
			}
			if _, err := br.Discard(int(n)); err != nil {
				return err
			}
		case 0x9: // ping: answer with a masked pong
			payload := make([]byte, n)
			if _, err := io.ReadFull(br, payload); err != nil {
				return err
			}
			frame := []byte{0x8A, 0x80 | byte(n), 0, 0, 0, 0}
			frame = append(frame, payload...) // mask key 0: the payload is unchanged
			conn.Write(frame)
		case 0x8:
			return nil
		default:
			if _, err := br.Discard(int(n)); err != nil {
				return err
			}
		}
	}
}

// sourceIPs spreads the generator's connections to a loopback target
// over 16 source addresses of 127.0.0.0/8: with 19,000 connections from
// one address the kernel's search for a free ephemeral port (28,000 of
// them here) made connecting, not lsmux, the bottleneck.
var sourceIP atomic.Uint32

func loopbackDialer(host string) *net.Dialer {
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() || ip.To4() == nil {
		return &net.Dialer{}
	}
	return &net.Dialer{LocalAddr: &net.TCPAddr{IP: net.IPv4(127, 0, 0, byte(2+sourceIP.Add(1)%16))}}
}

var sseClient = &http.Client{Transport: &http.Transport{
	DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
		host, _, _ := net.SplitHostPort(addr)
		return loopbackDialer(host).DialContext(ctx, network, addr)
	},
	MaxIdleConnsPerHost: -1,
}}

// readSSE reads an event stream line by line without allocating.
func readSSE(ctx context.Context, raw string, r *recorder) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, raw, nil)
	if err != nil {
		return err
	}
	resp, err := sseClient.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("status %d", resp.StatusCode)
	}
	if r.onOpen != nil {
		r.onOpen()
	}
	events := sse.NewReader(resp.Body, 0)
	for {
		ev, err := events.Next()
		if err != nil {
			return err
		}
		switch string(ev.Type) {
		case "hit":
			seq, _ := parseUintAfter(ev.ID, nil)
			if stamp, ok := parseUintAfter(ev.Data, stampKey); ok {
				r.hit(seq, int64(stamp))
			}
		case "gap":
			r.mu.Lock()
			r.gaps++
			r.mu.Unlock()
		}
	}
}

func parseUintAfter(b, prefix []byte) (uint64, bool) {
	i := bytes.Index(b, prefix)
	if i < 0 {
		return 0, false
	}
	var v uint64
	j := i + len(prefix)
	for ; j < len(b) && b[j] >= '0' && b[j] <= '9'; j++ {
		v = v*10 + uint64(b[j]-'0')
	}
	return v, j > i+len(prefix)
}
