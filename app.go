package main

import (
	"context"
	"errors"
	"fmt"
	"net"
	"time"

	"github.com/sirupsen/logrus"
	"golang.org/x/sync/errgroup"

	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/upstream"
	"lsmux/web"
)

// app is one running lsmux: upstream pool → hub → proxy for a stream.
type app struct {
	cfg    *config
	log    *logrus.Logger
	hub    *fanout.Hub
	pool   *upstream.Pool
	server *proxy.Server
	ln     net.Listener
}

// newApp wires the pieces and binds the listener (so the address is known
// before run, and a busy port fails at once).
func newApp(cfg *config, tokens upstream.TokenSource, log *logrus.Logger) (*app, error) {
	hub := fanout.NewHub(fanout.Options{MaxHits: cfg.BufferHits, MaxBytes: int64(cfg.BufferBytes)})
	pool, err := upstream.NewPool(cfg.upstreamConfig(tokens, func(raw []byte, t time.Time) { hub.Append(raw, t) }, log))
	if err != nil {
		return nil, err
	}
	server := proxy.New([]*proxy.Stream{{Name: pool.Name(), Hub: hub, Upstream: pool.Status}}, proxy.Options{
		PingInterval:   cfg.PingInterval,
		WriteTimeout:   cfg.WriteTimeout,
		SlowDisconnect: cfg.SlowPolicy == "disconnect",
		Web:            web.Handler(),
		Logger:         log,
	})
	ln, err := net.Listen("tcp", cfg.Listen)
	if err != nil {
		return nil, fmt.Errorf("listen %s: %w (is another lsmux running? set LSMUX_LISTEN)", cfg.Listen, err)
	}
	return &app{cfg: cfg, log: log, hub: hub, pool: pool, server: server, ln: ln}, nil
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
	g.Go(func() error { a.pool.Run(upCtx); return nil })
	g.Go(func() error { return a.server.Serve(a.ln) })
	g.Go(func() error {
		<-ctx.Done()
		a.log.WithField("timeout", a.cfg.ShutdownTimeout.String()).Info("shutting down: closing the upstream connection, then draining subscribers")
		stopUpstream()
		sctx, cancel := context.WithTimeout(context.Background(), a.cfg.ShutdownTimeout)
		defer cancel()
		err := a.server.Shutdown(sctx)
		a.hub.Close()
		if errors.Is(err, context.DeadlineExceeded) {
			a.log.Warn("shutdown timeout reached; remaining subscribers were closed hard")
			return nil
		}
		return err
	})
	a.log.WithField("stream", a.pool.Name()).WithField("listen", a.addr()).Info("lsmux serving")
	return g.Wait()
}
