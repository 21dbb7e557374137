package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"sync"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"lsmux/cluster"
	"lsmux/fanout"
	"lsmux/metrics"
	"lsmux/proxy"
	"lsmux/upstream"
	"lsmux/web"
)

// app is one running lsmux: for each stream an upstream pool feeding a
// hub, and one proxy serving them all. Streams share nothing but the
// process: one stream's upstream trouble never touches another's.
type app struct {
	cfg     *config
	log     *logrus.Logger
	streams []*appStream
	server  *proxy.Server
	metrics *metrics.Metrics
	ln      net.Listener
	node    *cluster.Node // cluster mode only
}

type appStream struct {
	hub     *fanout.Hub
	pool    *upstream.Pool
	cluster *cluster.Stream // cluster mode only: runs the pool while this replica leads
}

// newApp wires the pieces and binds the listener (so the address is known
// before run, and a busy port fails at once).
func newApp(cfg *config, tokens upstream.TokenSource, log *logrus.Logger, demo http.Handler) (*app, error) {
	specs, err := cfg.streamSpecs()
	if err != nil {
		return nil, err
	}
	a := &app{cfg: cfg, log: log}
	if cfg.NATSURL != "" {
		a.node, err = cluster.Connect(cfg.clusterOptions(log))
		if err != nil {
			return nil, err
		}
	}
	var served []*proxy.Stream
	var scraped []metrics.Stream
	for _, sp := range specs {
		st := &appStream{}
		hubOpts := fanout.Options{MaxHits: cfg.BufferHits, MaxBytes: int64(cfg.BufferBytes)}
		sink := func(h upstream.Hit) { st.hub.Append(h.Raw, h.Received) }
		if a.node != nil {
			// Sequence numbers come from JetStream (the hub is renumbered
			// when the stream is reached), hits reach the hub through it.
			hubOpts.FirstSeq = 1
			// A client from a replica ahead of this one waits for its
			// number (up to what JetStream holds, plus some slack for
			// what this replica has not heard of yet).
			hubOpts.MaxAhead = 10_000
			sink = func(h upstream.Hit) { st.cluster.Sink(h) }
		}
		st.hub = fanout.NewHub(hubOpts)
		st.pool, err = upstream.NewPool(cfg.upstreamConfig(sp, tokens, sink, log))
		if err != nil {
			a.closeNode()
			return nil, fmt.Errorf("stream %s: %w", sp.Name, err)
		}
		ps := &proxy.Stream{Name: st.pool.Name(), Hub: st.hub, Upstream: st.pool.Status}
		ms := metrics.Stream{Name: st.pool.Name(), Hub: st.hub, Upstream: st.pool.Status}
		if a.node != nil {
			st.cluster = a.node.NewStream(st.pool.Name(), st.hub, st.pool)
			ps.Ready, ps.Unready, ps.UpstreamStreaming = st.cluster.Ready, st.cluster.Unready, st.cluster.UpstreamStreaming
			ps.Cluster = func() any { return st.cluster.Status() }
			ms.Cluster = st.cluster.Status
		}
		a.streams = append(a.streams, st)
		served = append(served, ps)
		scraped = append(scraped, ms)
	}
	a.metrics = metrics.New(version, func() []metrics.Stream { return scraped })
	a.server = proxy.New(served, proxy.Options{
		PingInterval:      cfg.PingInterval,
		WriteTimeout:      cfg.WriteTimeout,
		SlowDisconnect:    cfg.SlowPolicy == "disconnect",
		MaxMessageSize:    int64(cfg.MaxMessageSize),
		Web:               web.Handler(),
		Metrics:           a.metrics.Handler(),
		Demo:              demo,
		Observer:          a.metrics,
		Logger:            log,
		AuthTokens:        list(cfg.AuthToken),
		ProtectHealth:     cfg.ProtectHealth,
		AllowedOrigins:    list(cfg.AllowedOrigins),
		MaxSubscribers:    cfg.MaxSubscribers,
		MaxPerAddress:     cfg.MaxPerAddress,
		ReadHeaderTimeout: cfg.HeaderTimeout,
	})
	a.ln, err = net.Listen("tcp", cfg.Listen)
	if err != nil {
		a.closeNode()
		return nil, fmt.Errorf("listen %s: %w (is another lsmux running? set LSMUX_LISTEN)", cfg.Listen, err)
	}
	return a, nil
}

func (a *app) closeNode() {
	if a.node != nil {
		a.node.Close()
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
	g, failed := errgroup.WithContext(context.Background())
	var upstreams sync.WaitGroup
	for _, st := range a.streams {
		if st.cluster != nil {
			upstreams.Go(func() { st.cluster.Run(upCtx) })
		} else {
			upstreams.Go(func() { st.pool.Run(upCtx) })
		}
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
		names[i] = st.pool.Name()
	}
	a.log.WithField("streams", strings.Join(names, ",")).WithField("listen", a.addr()).Info("lsmux serving")
	return g.Wait()
}
