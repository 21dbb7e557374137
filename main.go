// Command lsmux is a local connection multiplexer for the Adobe Analytics
// Live Stream API: it holds one upstream connection (or one pool of
// maxConnections) and fans every hit out to any number of local
// subscribers. See README.md.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"strings"
	"syscall"
	"time"

	"github.com/sirupsen/logrus"

	"lsmux/cluster"
	"lsmux/upstream"
	"lsmux/upstream/simulator"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `lsmux: one Adobe Live Stream connection, any number of local subscribers.

Usage:
  lsmux [serve] [flags]   run the proxy (flags or LSMUX_* environment)
  lsmux demo [flags]      run lsmux against its built-in simulator (no credentials needed)
  lsmux simulate [flags]  run only the Live Stream simulator (fake stream + IMS token endpoint)
  lsmux loadtest [flags]  measure deliveries/s, latency, CPU and memory with N subscribers
  lsmux healthcheck       exit 0 if the local instance is ready (container HEALTHCHECK)
  lsmux version           print the version

Run 'lsmux serve -h' or 'lsmux simulate -h' for the flags.
`

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	code := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: tests call it with their own context,
// environment and outputs.
func run(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) int {
	cmd := "serve"
	if len(args) > 0 && !strings.HasPrefix(args[0], "-") {
		cmd, args = args[0], args[1:]
	}
	var err error
	switch cmd {
	case "serve":
		err = runServe(ctx, args, getenv, stdout, stderr)
	case "demo":
		err = runDemo(ctx, args, getenv, stdout, stderr)
	case "simulate":
		err = runSimulate(ctx, args, getenv, stdout, stderr)
	case "loadtest":
		err = runLoadtest(ctx, args, getenv, stdout, stderr)
	case "healthcheck":
		err = runHealthcheck(ctx, args, getenv, stdout, stderr)
	case "version":
		fmt.Fprintln(stdout, versionString())
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
	default:
		fmt.Fprintf(stderr, "lsmux: unknown command %q\n\n%s", cmd, usage)
		return 2
	}
	if errors.Is(err, flag.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "lsmux %s: %v\n", cmd, err)
		return 1
	}
	return 0
}

func versionString() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
	}
	return "lsmux " + v
}

// newLogger builds the process logger: text on a terminal, JSON in a
// container (LSMUX_LOG_FORMAT=auto), or as configured.
func newLogger(level, format string, out io.Writer) (*logrus.Logger, error) {
	log := logrus.New()
	log.Out = out
	lvl, err := logrus.ParseLevel(level)
	if err != nil {
		return nil, fmt.Errorf("LSMUX_LOG_LEVEL=%q: want debug, info, warn or error", level)
	}
	log.Level = lvl
	if format == "auto" {
		format = "json"
		if f, ok := out.(*os.File); ok {
			if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
				format = "text"
			}
		}
	}
	if format == "json" {
		log.Formatter = &logrus.JSONFormatter{TimestampFormat: time.RFC3339Nano}
	} else {
		log.Formatter = &logrus.TextFormatter{FullTimestamp: true}
	}
	return log, nil
}

func runSimulate(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	fs := flag.NewFlagSet("lsmux simulate", flag.ContinueOnError)
	fs.SetOutput(stderr)
	listen := fs.String("listen", "127.0.0.1:9090", "address of the simulated Live Stream and IMS endpoints")
	rate := fs.Float64("rate", 100, "hits per second per stream")
	streams := fs.String("stream", "demo", "stream name(s), comma-separated")
	clientID := fs.String("client-id", "sim-client", "client id the token endpoint accepts")
	clientSecret := fs.String("client-secret", "sim-secret", "client secret the token endpoint accepts")
	if err := parseFlags(fs, args, "LSMUX_SIMULATE_", getenv); err != nil {
		return err
	}
	sim, err := simulator.New(simulator.Options{Addr: *listen, Rate: *rate, Streams: strings.Split(*streams, ","), ClientID: *clientID, ClientSecret: *clientSecret})
	if err != nil {
		return err
	}
	defer sim.Close()
	fmt.Fprintf(stdout, "Live Stream simulator on %s\n", sim.URL())
	for _, name := range strings.Split(*streams, ",") {
		fmt.Fprintf(stdout, "  stream:  %s\n", sim.StreamURL(name))
	}
	fmt.Fprintf(stdout, "  tokens:  %s (client id %s)\n", sim.TokenURL(), *clientID)
	fmt.Fprintf(stdout, "Point lsmux at it:\n  LSMUX_STREAM_URL=%s LSMUX_TOKEN_URL=%s LSMUX_CLIENT_ID=%s LSMUX_CLIENT_SECRET=... lsmux serve\n",
		sim.StreamURL(strings.Split(*streams, ",")[0]), sim.TokenURL(), *clientID)
	<-ctx.Done()
	return nil
}

// loadServeConfig reads serve's (and demo's) configuration and builds the
// logger it asks for.
func loadServeConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, *logrus.Logger, error) {
	cfg, err := loadConfig(args, getenv, stderr)
	if err != nil {
		return nil, nil, err
	}
	log, err := newLogger(cfg.LogLevel, cfg.LogFormat, stderr)
	if err != nil {
		return nil, nil, err
	}
	return cfg, log, nil
}

func runServe(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, log, err := loadServeConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	if _, err := cfg.streamSpecs(); err != nil {
		return err
	}
	tokens, err := cfg.tokenSource()
	if err != nil {
		return err
	}
	a, err := newApp(cfg, tokens, log, nil)
	if err != nil {
		return err
	}
	// LSMUX_CPUPROFILE=file profiles a whole run (docs/performance.md).
	if path := getenv("LSMUX_CPUPROFILE"); path != "" {
		if f, err := os.Create(path); err == nil {
			pprof.StartCPUProfile(f)
			defer func() { pprof.StopCPUProfile(); f.Close() }()
		}
	}
	return a.run(ctx)
}

// runDemo runs the simulator and lsmux in one process, with no
// credentials: the first thing a newcomer runs.
func runDemo(ctx context.Context, args []string, getenv func(string) string, stdout, stderr io.Writer) error {
	cfg, log, err := loadServeConfig(args, getenv, stderr)
	if err != nil {
		return err
	}
	// The demo waits 15 s after a loss instead of Adobe's 60 s, so a
	// newcomer who drops the connection sees the recovery soon; flags and
	// LSMUX_RECONNECT_DELAY still win.
	if !flagOrEnvSet(args, getenv, "reconnect-delay") {
		cfg.ReconnectDelay = 15 * time.Second
	}
	sim, err := simulator.New(simulator.Options{Rate: 50})
	if err != nil {
		return err
	}
	defer sim.Close()
	cfg.StreamURL, cfg.TokenURL = sim.StreamURL("demo"), sim.TokenURL()
	cfg.ClientID, cfg.ClientSecret = sim.ClientID(), sim.ClientSecret()
	tokens, err := cfg.tokenSource()
	if err != nil {
		return err
	}
	a, err := newApp(cfg, tokens, log, demoFaults(sim, cfg.ReconnectDelay))
	if err != nil {
		return err
	}
	base := "http://" + displayAddr(a.addr())
	fmt.Fprintf(stdout, "lsmux demo: a simulated Live Stream (%s) feeding lsmux.\n\n", sim.URL())
	fmt.Fprintf(stdout, "  Open the dashboard:  %s/\n", base)
	fmt.Fprintf(stdout, "  Server-Sent Events:  curl -N %s/v1/streams/demo/sse\n", base)
	fmt.Fprintf(stdout, "  WebSocket:           %s/v1/streams/demo/ws\n", strings.Replace(base, "http", "ws", 1))
	fmt.Fprintf(stdout, "  Status:              curl %s/v1/status\n\nCtrl-C stops it.\n", base)
	return a.run(ctx)
}

// flagOrEnvSet reports whether a flag was given on the command line or in
// its environment variable.
func flagOrEnvSet(args []string, getenv func(string) string, name string) bool {
	for _, a := range args {
		if a == "-"+name || a == "--"+name || strings.HasPrefix(a, "-"+name+"=") || strings.HasPrefix(a, "--"+name+"=") {
			return true
		}
	}
	return getenv(envName("LSMUX_", name)) != ""
}

// displayAddr turns a wildcard listen address into one a browser can open.
func displayAddr(addr string) string {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return addr
	}
	if host == "" || host == "::" || host == "0.0.0.0" {
		host = "localhost"
	}
	return net.JoinHostPort(host, port)
}

// clusterOptions are the cluster settings (LSMUX_NATS_* and friends).
func (c *config) clusterOptions(log logrus.FieldLogger) cluster.Options {
	return cluster.Options{
		URL: c.NATSURL, Replica: c.ReplicaName, CredsFile: c.NATSCreds, CAFile: c.NATSCA, CertFile: c.NATSCert, KeyFile: c.NATSKey,
		LeaseTTL: c.LeaseTTL, ReconnectDelay: c.ReconnectDelay, RetryWait: c.NATSRetryWait,
		MaxAge: c.NATSMaxAge, MaxBytes: int64(c.NATSMaxBytes), DuplicateWindow: c.NATSDuplicateWindow, Replicas: c.NATSReplicas,
		BufferBytes: int64(c.NATSBufferBytes), FlushTimeout: c.ShutdownTimeout / 2,
		Logger: log,
	}
}

func (c *config) upstreamConfig(sp streamSpec, tokens upstream.TokenSource, sink upstream.Sink, log logrus.FieldLogger) upstream.Config {
	return upstream.Config{
		StreamURL:           sp.URL,
		Name:                sp.Name,
		ClientID:            c.ClientID,
		Tokens:              tokens,
		MaxConnections:      sp.MaxConnections,
		Reset:               sp.Reset,
		Smoothing:           sp.Smoothing,
		SmoothingBucketSize: sp.SmoothingBucketSize,
		// A connection that streamed as long as the longest wait counts as
		// healthy: the doubling starts over.
		Policy: upstream.Policy{Delay: c.ReconnectDelay, MaxDelay: c.ReconnectMaxDelay, AuthRetry: c.AuthRetryDelay,
			HealthyAfter: c.ReconnectMaxDelay, Jitter: 0.1},
		StallTimeout:  c.StallTimeout,
		MaxRecordSize: int(c.MaxRecordSize),
		DedupWindow:   c.DedupWindow,
		Sink:          sink,
		Logger:        log,
	}
}
