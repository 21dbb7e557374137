package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"strings"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

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
}

type appStream struct {
	hub  *fanout.Hub
	pool *upstream.Pool
}

// newApp wires the pieces and binds the listener (so the address is known
// before run, and a busy port fails at once).
func newApp(cfg *config, tokens upstream.TokenSource, log *logrus.Logger, demo http.Handler) (*app, error) {
	specs, err := cfg.streamSpecs()
	if err != nil {
		return nil, err
	}
	a := &app{cfg: cfg, log: log}
	var served []*proxy.Stream
	var scraped []metrics.Stream
	for _, sp := range specs {
		hub := fanout.NewHub(fanout.Options{MaxHits: cfg.BufferHits, MaxBytes: int64(cfg.BufferBytes)})
		pool, err := upstream.NewPool(cfg.upstreamConfig(sp, tokens, func(raw []byte, t time.Time) { hub.Append(raw, t) }, log))
		if err != nil {
			return nil, fmt.Errorf("stream %s: %w", sp.Name, err)
		}
		a.streams = append(a.streams, &appStream{hub: hub, pool: pool})
		served = append(served, &proxy.Stream{Name: pool.Name(), Hub: hub, Upstream: pool.Status})
		scraped = append(scraped, metrics.Stream{Name: pool.Name(), Hub: hub, Upstream: pool.Status})
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
		return nil, fmt.Errorf("listen %s: %w (is another lsmux running? set LSMUX_LISTEN)", cfg.Listen, err)
	}
	return a, nil
}

// addr is the address the proxy listens on.
func (a *app) addr() string { return a.ln.Addr().String() }

// run serves until ctx ends, then shuts down in order: the upstream
// connection first (in a rolling update the next pod is waiting for it),
// then subscribers are closed properly within the shutdown timeout.
func (a *app) run(ctx context.Context) error {
	upCtx, stopUpstream := context.WithCancel(context.Background())
	defer stopUpstream()
	g := new(errgroup.Group)
	for _, st := range a.streams {
		g.Go(func() error { st.pool.Run(upCtx); return nil })
	}
	g.Go(func() error { return a.server.Serve(a.ln) })
	g.Go(func() error {
		<-ctx.Done()
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
