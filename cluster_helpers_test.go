package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// natsServer is an embedded NATS server with JetStream in a temp dir. It
// can be restarted on the same port and store, as a NATS upgrade would.
type natsServer struct {
	t    *testing.T
	dir  string
	port int
	mu   sync.Mutex
	s    *server.Server
}

func startNATS(t *testing.T) *natsServer {
	t.Helper()
	n := &natsServer{t: t, dir: t.TempDir(), port: -1}
	n.start()
	n.port = n.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(n.stop)
	return n
}

func (n *natsServer) start() {
	n.t.Helper()
	s, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: n.port, JetStream: true, StoreDir: n.dir, NoLog: true, NoSigs: true})
	if err != nil {
		n.t.Fatal(err)
	}
	s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		n.t.Fatal("NATS did not start")
	}
	n.mu.Lock()
	n.s = s
	n.mu.Unlock()
}

func (n *natsServer) stop() {
	n.mu.Lock()
	s := n.s
	n.mu.Unlock()
	s.Shutdown()
	s.WaitForShutdown()
}

// restart stops the server and starts it again on the same port and
// store directory; it returns how long NATS was away.
func (n *natsServer) restart() time.Duration {
	start := time.Now()
	n.stop()
	n.start()
	return time.Since(start)
}

func (n *natsServer) url() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// tcpProxy stands between one replica and NATS, so a test can cut that
// replica off (a network partition) while the others carry on.
type tcpProxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

func newTCPProxy(t *testing.T, target string) *tcpProxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &tcpProxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

func (p *tcpProxy) url() string { return "nats://" + p.ln.Addr().String() }

func (p *tcpProxy) accept() {
	for {
		c, err := p.ln.Accept()
		if err != nil {
			return // listener closed
		}
		p.mu.Lock()
		if p.cut {
			p.mu.Unlock()
			c.Close()
			continue
		}
		up, err := net.DialTimeout("tcp", p.target, 2*time.Second)
		if err != nil {
			p.mu.Unlock()
			c.Close()
			continue
		}
		p.conns = append(p.conns, c, up)
		p.mu.Unlock()
		p.wg.Go(func() { io.Copy(up, c); up.Close() })
		p.wg.Go(func() { io.Copy(c, up); c.Close() })
	}
}

// Cut closes every connection through the proxy and refuses new ones.
func (p *tcpProxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Heal lets connections through again.
func (p *tcpProxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}

// clusterView is what the tests read of /v1/status and /readyz.
type clusterView struct {
	Role        string `json:"role"`
	Leader      string `json:"leader"`
	NATS        string `json:"nats"`
	ConsumedSeq uint64 `json:"consumedSeq"`
	Ready       bool   `json:"ready"`
	Publish     struct {
		Published, Duplicates, Dropped uint64
	} `json:"publish"`
}

func clusterStatus(root string) (clusterView, error) {
	var body struct {
		Streams []struct {
			Cluster clusterView `json:"cluster"`
		} `json:"streams"`
	}
	resp, err := http.Get(root + "/v1/status")
	if err != nil {
		return clusterView{}, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return clusterView{}, err
	}
	if len(body.Streams) == 0 {
		return clusterView{}, io.ErrUnexpectedEOF
	}
	return body.Streams[0].Cluster, nil
}

func readyStatus(root string) int {
	resp, err := http.Get(root + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// leaders returns the indexes of the replicas that say they lead.
func leaders(roots []string) []int {
	var out []int
	for i, r := range roots {
		if v, err := clusterStatus(r); err == nil && v.Role == "leader" {
			out = append(out, i)
		}
	}
	return out
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// lsmuxBinary builds the lsmux binary once per test run.
func lsmuxBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "lsmux-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "lsmux")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = &buildError{err: err, out: string(out)}
		}
	})
	if binErr != nil {
		t.Fatalf("build lsmux: %v", binErr)
	}
	return binPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// freeAddr returns a loopback address nothing listens on (for a child
// process, which must be told its address up front).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}
