package main

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"lsmux/cluster"
	"lsmux/fanout"
	"lsmux/internal/tlsfiles"
	"lsmux/metrics"
	"lsmux/proxy"
	"lsmux/upstream"
	"lsmux/web"
)

// app is one running lsmux: for each stream a feed (the upstream pool, or
// in cluster mode the JetStream stream that runs the pool while this
// replica leads) filling a hub, and one proxy serving them all. Streams
// share nothing but the process: one stream's upstream trouble never
// touches another's.
type app struct {
	cfg     *config
	log     *logrus.Logger
	streams []*appStream
	server  *proxy.Server
	metrics *metrics.Metrics
	ln      net.Listener
	node    *cluster.Node     // cluster mode, or a data dir
	store   *cluster.Embedded // a data dir only
	tls     *tlsfiles.Pair    // LSMUX_TLS_CERT and LSMUX_TLS_KEY
}

// appStream is one stream's pieces.
type appStream struct {
	name string
	hub  *fanout.Hub
	feed feed
}

// feed is what the app needs of a stream's feed beyond what proxy and
// metrics read: running it.
type feed interface {
	proxy.Feed
	metrics.Feed
	Run(ctx context.Context)
}

// poolFeed is a plain lsmux's feed: the upstream pool appending to the
// hub.
type poolFeed struct {
	*upstream.Pool
	hub *fanout.Hub
}

// Run holds the upstream connections, every hit going to the hub.
func (f poolFeed) Run(ctx context.Context) { f.Pool.Run(ctx, hubSink{f.hub}) }

// hubSink appends the pool's hits to a hub (it copies what it keeps).
type hubSink struct{ hub *fanout.Hub }

func (s hubSink) Deliver(h upstream.Hit) { s.hub.Append(h.Raw, h.Received) }

var (
	_ feed = poolFeed{}
	_ feed = (*cluster.Stream)(nil)
)

// newApp wires the pieces and binds the listener (so the address is known
// before run, and a busy port fails at once).
func newApp(cfg *config, tokens upstream.TokenSource, log *logrus.Logger, demo http.Handler) (*app, error) {
	specs, err := cfg.streamSpecs()
	if err != nil {
		return nil, err
	}
	a := &app{cfg: cfg, log: log}
	switch {
	case cfg.NATSURL != "":
		a.node, err = cluster.Connect(cfg.clusterOptions(log))
		if err != nil {
			return nil, err
		}
	case cfg.DataDir != "":
		a.store, err = cluster.OpenEmbedded(cluster.EmbeddedOptions{Dir: cfg.DataDir, MaxStore: int64(len(specs))*cfg.historyMaxBytes() + 1<<30, Logger: log})
		if err != nil {
			return nil, err
		}
		o := cfg.clusterOptions(log)
		o.AckTimeout = 2 * time.Second // the store is in this process: it answers at once, or it has failed (or the machine is starved)
		a.node, err = a.store.Connect(o)
		if err != nil {
			a.store.Close()
			return nil, err
		}
	}
	var served []*proxy.Stream
	var scraped []metrics.Stream
	for _, sp := range specs {
		pool, err := upstream.NewPool(cfg.upstreamConfig(sp, tokens, log))
		if err != nil {
			a.closeNode()
			return nil, fmt.Errorf("stream %s: %w", sp.Name, err)
		}
		hubOpts := fanout.Options{MaxHits: cfg.BufferHits, MaxBytes: cfg.BufferBytes, WakeDelay: cfg.WriteDelay}
		st := &appStream{name: pool.Name()}
		if a.node != nil {
			cs := a.node.NewStream(st.name, hubOpts, pool)
			if err := cs.Open(context.Background()); err != nil {
				a.closeNode()
				return nil, err
			}
			st.hub, st.feed = cs.Hub(), cs
		} else {
			st.hub = fanout.NewHub(hubOpts)
			st.feed = poolFeed{Pool: pool, hub: st.hub}
		}
		a.streams = append(a.streams, st)
		served = append(served, &proxy.Stream{Name: st.name, Hub: st.hub, Feed: st.feed})
		scraped = append(scraped, metrics.Stream{Name: st.name, Hub: st.hub, Feed: st.feed})
	}
	a.metrics = metrics.New(version, scraped)
	proxies, _ := parseCIDRs(cfg.TrustedProxies) // checked with the config
	a.server = proxy.New(served, proxy.Options{
		PingInterval:    cfg.PingInterval,
		WriteTimeout:    cfg.WriteTimeout,
		SlowDisconnect:  cfg.SlowPolicy == "disconnect",
		MaxMessageSize:  cfg.MaxMessageSize,
		FilterCostLimit: uint64(cfg.FilterCostLimit),
		Limits: fanout.Limits{FilterBudget: float64(cfg.FilterBudget), FilterBurst: 2 * cfg.FilterBudget, FilterHold: cfg.FilterHold,
			FilterStrikes: cfg.FilterStrikes, MaxLag: cfg.MaxLag},
		BatchMemory:       cfg.BatchMemory,
		CompileRate:       cfg.CompileRate,
		CompileBurst:      max(1, int(4*cfg.CompileRate)),
		TrustedProxies:    proxies,
		Web:               web.Handler(),
		Metrics:           a.metrics.Handler(),
		Demo:              demo,
		Observer:          a.metrics,
		Logger:            log,
		AuthTokens:        list(cfg.AuthToken),
		AuthTokenFile:     cfg.AuthTokenFile,
		AllowedHosts:      list(cfg.AllowedHosts),
		ProtectHealth:     cfg.ProtectHealth,
		AllowedOrigins:    list(cfg.AllowedOrigins),
		MaxSubscribers:    cfg.MaxSubscribers,
		MaxPerAddress:     cfg.MaxPerAddress,
		ReadHeaderTimeout: cfg.HeaderTimeout,
	})
	if cfg.TLSCert != "" {
		if a.tls, err = tlsfiles.Load(cfg.TLSCert, cfg.TLSKey, log); err != nil {
			a.closeNode()
			return nil, err
		}
	}
	a.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		a.closeNode()
		return nil, listenError(cfg.Listen, err)
	}
	if a.tls != nil {
		a.ln = tls.NewListener(a.ln, a.tls.Config())
	}
	return a, nil
}

// scheme is how subscribers reach the listener: https with TLS.
func (a *app) scheme() string {
	if a.tls != nil {
		return "https"
	}
	return "http"
}

// listenError says what to do about a listener that cannot be opened.
func listenError(addr string, err error) error {
	if errors.Is(err, syscall.EADDRINUSE) {
		return fmt.Errorf("listen %s: %w (another process, perhaps another lsmux, holds the port: stop it or set LSMUX_LISTEN to another host:port)", addr, err)
	}
	if errors.Is(err, syscall.EACCES) {
		return fmt.Errorf("listen %s: %w (ports below 1024 need privileges: use a port such as :8080)", addr, err)
	}
	return fmt.Errorf("listen %s: %w (LSMUX_LISTEN wants host:port, such as :8080 or 127.0.0.1:8080)", addr, err)
}

func (a *app) closeNode() {
	if a.node != nil {
		a.node.Close()
	}
	if a.store != nil {
		a.store.Close()
	}
}

// addr is the address the proxy listens on.
func (a *app) addr() string { return a.ln.Addr().String() }

// run serves until ctx ends, then shuts down in order: the upstream
// connection first (in a rolling update the next pod is waiting for it),
// then subscribers are closed properly within the shutdown timeout.
func (a *app) run(ctx context.Context) error {
	upCtx, stopUpstream := context.WithCancel(context.Background())
	defer stopUpstream()
	if a.tls != nil {
		var watcher sync.WaitGroup
		defer watcher.Wait()
		watchCtx, stopWatch := context.WithCancel(context.Background())
		defer stopWatch()
		watcher.Go(func() { a.tls.Watch(watchCtx, a.cfg.TLSRecheck) })
	}
	g, failed := errgroup.WithContext(context.Background())
	var upstreams sync.WaitGroup
	for _, st := range a.streams {
		upstreams.Go(func() { st.feed.Run(upCtx) })
	}
	g.Go(func() error {
		upstreams.Wait()
		a.closeNode() // after the leases are released through it
		return nil
	})
	g.Go(func() error {
		if err := a.server.Serve(a.ln); err != nil {
			return fmt.Errorf("serve %s: %w", a.addr(), err)
		}
		return nil
	})
	g.Go(func() error {
		select {
		case <-ctx.Done():
		case <-failed.Done(): // the listener failed: shut down rather than sit there deaf
		}
		if d := a.cfg.ShutdownDelay; d > 0 && failed.Err() == nil {
			a.log.WithField("delay", d.String()).Info("stopping: /readyz answers 503 so load balancers send no new subscribers; serving on until the shutdown starts")
			a.server.Drain()
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-failed.Done():
				t.Stop()
			}
		}
		a.log.WithField("timeout", a.cfg.ShutdownTimeout.String()).Info("shutting down: closing the upstream connection, then draining subscribers")
		stopUpstream()
		sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		err := a.server.Shutdown(sctx)
		for _, st := range a.streams {
			st.hub.Close()
		}
		if errors.Is(err, context.DeadlineExceeded) {
			a.log.Warn("shutdown timeout reached; remaining subscribers were closed hard")
			return nil
		}
		return err
	})
	names := make([]string, len(a.streams))
	for i, st := range a.streams {
		names[i] = st.name
	}
	a.log.WithField("streams", strings.Join(names, ",")).WithField("listen", a.addr()).WithField("scheme", a.scheme()).Info("lsmux serving")
	return g.Wait()
}

// clusterOptions are the cluster settings (LSMUX_NATS_* and friends).
func (c *config) clusterOptions(log logrus.FieldLogger) cluster.Options {
	return cluster.Options{
		URL: c.NATSURL, Replica: c.ReplicaName, CredsFile: c.NATSCreds, CAFile: c.NATSCA, CertFile: c.NATSCert, KeyFile: c.NATSKey,
		LeaseTTL: c.LeaseTTL, ReconnectDelay: c.ReconnectDelay, RetryWait: c.NATSRetryWait,
		MaxAge: c.historyMaxAge(), MaxBytes: c.historyMaxBytes(), DuplicateWindow: c.duplicateWindow(), Replicas: c.NATSReplicas,
		BufferBytes: c.NATSBufferBytes, FlushTimeout: c.ShutdownTimeout / 2,
		MaxReplays: c.MaxReplays, ReplayRate: c.ReplayRate, StateInterval: c.HeartbeatInterval, StoreRetry: c.StoreRetry,
		Logger: log,
	}
}

// upstreamConfig is one stream's upstream settings.
func (c *config) upstreamConfig(sp streamSpec, tokens upstream.TokenSource, log logrus.FieldLogger) upstream.Config {
	return upstream.Config{
		StreamURL:     sp.URL,
		Name:          sp.Name,
		ClientID:      c.ClientID,
		Tokens:        tokens,
		Params:        sp.Params,
		Policy:        upstream.Policy{Delay: c.ReconnectDelay, MaxDelay: c.ReconnectMaxDelay, AuthRetry: c.AuthRetryDelay},
		StallTimeout:  c.StallTimeout,
		MaxRecordSize: int(c.MaxRecordSize),
		DedupWindow:   c.DedupWindow,
		Logger:        log,
	}
}
