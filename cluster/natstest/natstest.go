// Package natstest runs a NATS server with JetStream inside a test, and
// stands a cuttable proxy between it and a client, for cluster mode's
// failure tests (NATS restarts, partitions).
package natstest

import (
	"io"
	"net"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
)

// Server is an embedded NATS server with JetStream in a temp dir. It
// can be restarted on the same port and store, as a NATS upgrade would.
type Server struct {
	t         testing.TB
	dir       string
	port      int
	configure []func(*server.Options)
	mu        sync.Mutex
	s         *server.Server
}

// Start runs a server on a free loopback port with JetStream in a temp
// dir; configure can change its options (authentication, say). The
// server stops when the test ends.
func Start(t testing.TB, configure ...func(*server.Options)) *Server {
	t.Helper()
	n := &Server{t: t, dir: t.TempDir(), port: -1, configure: configure}
	n.start()
	n.port = n.s.Addr().(*net.TCPAddr).Port
	t.Cleanup(n.Stop)
	return n
}

func (n *Server) start() {
	n.t.Helper()
	o := &server.Options{Host: "127.0.0.1", Port: n.port, JetStream: true, StoreDir: n.dir, NoLog: true, NoSigs: true}
	for _, c := range n.configure {
		c(o)
	}
	s, err := server.NewServer(o)
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

// Stop shuts the server down (a NATS outage).
func (n *Server) Stop() {
	n.mu.Lock()
	s := n.s
	n.mu.Unlock()
	s.Shutdown()
	s.WaitForShutdown()
}

// Restart stops the server and starts it again on the same port and
// store directory; it returns how long NATS was away.
func (n *Server) Restart() time.Duration {
	start := time.Now()
	n.Stop()
	n.start()
	return time.Since(start)
}

// URL is the server's client URL, the same across restarts.
func (n *Server) URL() string { return "nats://127.0.0.1:" + strconv.Itoa(n.port) }

// Proxy stands between one replica and NATS, so a test can cut that
// replica off (a network partition) while the others carry on.
type Proxy struct {
	ln     net.Listener
	target string
	mu     sync.Mutex
	cut    bool
	conns  []net.Conn
	wg     sync.WaitGroup
}

// NewProxy forwards a new loopback port to target (host:port) until the
// test ends.
func NewProxy(t testing.TB, target string) *Proxy {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &Proxy{ln: ln, target: target}
	p.wg.Go(p.accept)
	t.Cleanup(func() {
		ln.Close()
		p.Cut()
		p.wg.Wait()
	})
	return p
}

// URL is the NATS URL that goes through the proxy.
func (p *Proxy) URL() string { return "nats://" + p.ln.Addr().String() }

func (p *Proxy) accept() {
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
func (p *Proxy) Cut() {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cut = true
	for _, c := range p.conns {
		c.Close()
	}
	p.conns = nil
}

// Heal lets connections through again.
func (p *Proxy) Heal() {
	p.mu.Lock()
	p.cut = false
	p.mu.Unlock()
}
