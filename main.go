// Command lsmux is a local connection multiplexer for the Adobe Analytics
// Live Stream API: it holds one upstream connection (or one pool of
// maxConnections) and fans every hit out to any number of local
// subscribers. See README.md.
package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/KimMachineGun/automemlimit/memlimit"
	"github.com/sirupsen/logrus"

	"lsmux/internal/cli"
	"lsmux/internal/loadtest"
	"lsmux/upstream/simulator"
)

// version is stamped at build time: -ldflags "-X main.version=v1.2.3".
var version = "dev"

const usage = `lsmux: one Adobe Live Stream connection, any number of local subscribers.

Usage:
  lsmux serve [flags]     run the proxy (what 'lsmux' alone runs too)
  lsmux demo [flags]      run lsmux against its built-in simulator (no credentials needed)
  lsmux simulate [flags]  run only the Live Stream simulator (fake stream + IMS token endpoint)
  lsmux loadtest [flags]  measure deliveries/s, latency, CPU and memory with N subscribers
  lsmux healthcheck       exit 0 if the local instance is ready (container HEALTHCHECK)
  lsmux tail STREAM       print a stream's hits as NDJSON, resuming after a checkpoint
  lsmux version           print the version
  lsmux help [command]    this text, or a command's settings

Every flag has an LSMUX_* environment variable (flags win); 'lsmux <command> -h'
lists them. Exit codes: 0 done, 1 failed while running, 2 bad command line or
settings (lsmux tail also 3: a gap notice with --fail-on-gap). Start with
'lsmux demo'.
`

// command is one sub-command.
type command struct {
	run func(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error
	// flags returns the command's settings, for help and for the list of
	// known environment variables.
	flags func() *cli.FlagSet
}

var commands = map[string]command{
	"serve":       {runServe, func() *cli.FlagSet { return (&config{}).serveFlags("lsmux serve", serveSummary) }},
	"demo":        {runDemo, func() *cli.FlagSet { return (&config{}).serveFlags("lsmux demo", demoSummary) }},
	"simulate":    {runSimulate, func() *cli.FlagSet { return simulateFlags(&simulateSettings{}) }},
	"loadtest":    {loadtest.Run, func() *cli.FlagSet { return loadtest.Flags(&loadtest.Settings{}) }},
	"healthcheck": {runHealthcheck, func() *cli.FlagSet { return healthcheckFlags(&healthcheckSettings{}) }},
	"tail":        {runTail, func() *cli.FlagSet { return tailFlags(&tailSettings{}) }},
}

// testSettings are LSMUX_* variables the test suite reads (README,
// Development): known, so they draw no warning.
var testSettings = []string{"LSMUX_BROWSER_TESTS", "LSMUX_OPS_TESTS", "LSMUX_SPEC_TESTS", "LSMUX_SOAK", "LSMUX_SOAK_CHURNERS", "LSMUX_SOAK_SUMMARY", "LSMUX_CLUSTER_CHAOS",
	"LSMUX_UPDATE_SCREENSHOT", "LSMUX_CPUPROFILE"}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	go func() {
		// The first signal starts a clean shutdown; from then on the
		// default action is back, so a second Ctrl-C ends the process at
		// once instead of waiting out LSMUX_SHUTDOWN_TIMEOUT.
		<-ctx.Done()
		stop()
	}()
	code := run(ctx, os.Args[1:], cli.Environ(), os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}

// run is main without the process: tests call it with their own context,
// environment and outputs. Exit codes: 0 done, 1 failed, 2 usage error.
func run(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) int {
	name := "serve"
	if len(args) > 0 {
		switch args[0] {
		case "help", "-h", "-help", "--help":
			if len(args) > 1 {
				if c, ok := commands[args[1]]; ok {
					c.flags().PrintHelp(stdout)
					return 0
				}
			}
			fmt.Fprint(stdout, usage)
			return 0
		case "version", "-version", "--version", "-v":
			fmt.Fprintln(stdout, versionString())
			return 0
		}
		if !strings.HasPrefix(args[0], "-") {
			name, args = args[0], args[1:]
		}
	}
	c, ok := commands[name]
	if !ok {
		fmt.Fprintf(stderr, "lsmux: unknown command %q\n\n%s", name, usage)
		return 2
	}
	for _, w := range cli.UnknownVars(env, "LSMUX_", knownVars()) {
		fmt.Fprintln(stderr, "lsmux: warning: "+w)
	}
	err := c.run(ctx, args, env, stdout, stderr)
	if errors.Is(err, cli.ErrHelp) {
		return 0
	}
	if err != nil {
		fmt.Fprintf(stderr, "lsmux %s: %v\n", name, err)
		var ue usageError
		if errors.As(err, &ue) {
			return 2
		}
		var ec exitCode
		if errors.As(err, &ec) {
			return ec.code
		}
		return 1
	}
	return 0
}

// usageError marks a failure the user can fix on the command line (exit
// code 2).
type usageError struct{ error }

func (e usageError) Unwrap() error { return e.error }

// knownVars is every LSMUX_* variable some command reads.
func knownVars() []string {
	known := slices.Clone(testSettings)
	for _, c := range commands {
		known = append(known, c.flags().Names()...)
	}
	return known
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

type simulateSettings struct {
	listen, streams, clientID, clientSecret string
	rate                                    float64
	tick                                    time.Duration
	stampSent                               bool
}

func simulateFlags(s *simulateSettings) *cli.FlagSet {
	f := cli.NewFlagSet("lsmux simulate", "LSMUX_SIMULATE_", `Run only the Live Stream simulator: a fake stream endpoint and IMS token
endpoint, for other teams' integration tests. Its variables start with
LSMUX_SIMULATE_, so it can run next to an lsmux configured by LSMUX_*.`)
	f.String(&s.listen, "listen", "127.0.0.1:9090", "address of the simulated Live Stream and IMS endpoints")
	f.Float(&s.rate, "rate", 100, "hits per second per stream")
	f.Duration(&s.tick, "tick", 20*time.Millisecond, "how often a connection sends the hits that are due (one gzip flush each)")
	f.Bool(&s.stampSent, "stamp-sent", false, `put "lsmuxSentNs":<send time, Unix ns> first in every hit, to measure end-to-end latency at the subscriber`)
	f.String(&s.streams, "stream", "demo", "stream name(s), comma-separated")
	f.String(&s.clientID, "client-id", "sim-client", "client id the token endpoint accepts")
	f.String(&s.clientSecret, "client-secret", "sim-secret", "client secret the token endpoint accepts")
	return f
}

func runSimulate(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	s := &simulateSettings{}
	if err := simulateFlags(s).Parse(args, env, stdout); err != nil {
		return usageErr(err)
	}
	streams := list(s.streams)
	if len(streams) == 0 {
		return usageError{errors.New("LSMUX_SIMULATE_STREAM is empty: name at least one stream")}
	}
	sim, err := simulator.New(simulator.Options{Addr: s.listen, Rate: s.rate, Tick: s.tick, StampSent: s.stampSent, Streams: streams, ClientID: s.clientID, ClientSecret: s.clientSecret})
	if err != nil {
		return err
	}
	defer sim.Close()
	fmt.Fprintf(stdout, "Live Stream simulator on %s\n", sim.URL())
	for _, name := range streams {
		fmt.Fprintf(stdout, "  stream:  %s\n", sim.StreamURL(name))
	}
	fmt.Fprintf(stdout, "  tokens:  %s (client id %s)\n", sim.TokenURL(), s.clientID)
	fmt.Fprintf(stdout, "Point lsmux at it:\n  LSMUX_STREAM_URL=%s LSMUX_TOKEN_URL=%s LSMUX_CLIENT_ID=%s LSMUX_CLIENT_SECRET=... lsmux serve\n",
		sim.StreamURL(streams[0]), sim.TokenURL(), s.clientID)
	<-ctx.Done()
	return nil
}

// usageErr marks a settings error as a usage error (exit code 2); help
// passes through.
func usageErr(err error) error {
	if err == nil || errors.Is(err, cli.ErrHelp) {
		return err
	}
	return usageError{err}
}

// startServe reads serve's (or demo's) configuration, builds the logger it
// asks for and logs the warnings loading found.
func startServe(cmd, summary string, args []string, env cli.Env, stdout, stderr io.Writer) (*config, *logrus.Logger, error) {
	cfg, err := loadConfig(cmd, summary, args, env, stdout)
	if err != nil {
		return nil, nil, usageErr(err)
	}
	log, err := newLogger(cfg.LogLevel, cfg.LogFormat, stderr)
	if err != nil {
		return nil, nil, usageError{err}
	}
	for _, w := range cfg.warnings {
		log.Warn(w)
	}
	applyGCPercent(log)
	applyMemoryLimit(log, memlimit.FromCgroup)
	return cfg, log, nil
}

func runServe(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	cfg, log, err := startServe("lsmux serve", serveSummary, args, env, stdout, stderr)
	if err != nil {
		return err
	}
	if _, err := cfg.streamSpecs(); err != nil {
		return usageError{err}
	}
	tokens, err := cfg.tokenSource()
	if err != nil {
		return usageError{err}
	}
	a, err := newApp(cfg, tokens, log, nil)
	if err != nil {
		return err
	}
	// LSMUX_CPUPROFILE=file profiles a whole run (docs/performance.md).
	if path := env.Get("LSMUX_CPUPROFILE"); path != "" {
		stopProfile, err := startCPUProfile(path)
		if err != nil {
			return err
		}
		defer stopProfile()
	}
	return a.run(ctx)
}

// startCPUProfile writes a CPU profile of the run to path.
func startCPUProfile(path string) (stop func(), err error) {
	f, err := os.Create(path)
	if err != nil {
		return nil, fmt.Errorf("LSMUX_CPUPROFILE=%s: %w", path, err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("LSMUX_CPUPROFILE=%s: %w", path, err)
	}
	return func() { pprof.StopCPUProfile(); f.Close() }, nil
}
