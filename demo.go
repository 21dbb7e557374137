package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"lsmux/internal/cli"
	"lsmux/upstream/simulator"
)

const demoSummary = `Run lsmux against its built-in Live Stream simulator: no credentials and
no internet needed. It listens on 127.0.0.1:8080 unless LSMUX_LISTEN says
otherwise, prints the URLs to open, and its dashboard can inject upstream
faults. After a lost connection it waits 15s instead of Adobe's 60s unless
LSMUX_RECONNECT_DELAY is set.`

// runDemo runs the simulator and lsmux in one process, with no
// credentials: the first thing a newcomer runs.
func runDemo(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	cfg, log, err := startServe("lsmux demo", demoSummary, demoArgs(args, env), env, stdout, stderr)
	if err != nil {
		return err
	}
	sim, err := simulator.New(simulator.Options{Rate: 50})
	if err != nil {
		return err
	}
	defer sim.Close()
	// The demo reads its simulator only. Settings for a real Live Stream
	// left in the shell would otherwise send a real token to the
	// simulator, have the demo connect to a real stream as well, or fill
	// a production NATS with simulated hits.
	for _, s := range []struct {
		name string
		v    *string
	}{{"LSMUX_STREAMS", &cfg.Streams}, {"LSMUX_ACCESS_TOKEN", &cfg.AccessToken}, {"LSMUX_ACCESS_TOKEN_FILE", &cfg.AccessTokenFile},
		{"LSMUX_CLIENT_SECRET_FILE", &cfg.ClientSecretFile}, {"LSMUX_NATS_URL", &cfg.NATSURL}} {
		if *s.v != "" {
			log.Warnf("lsmux demo ignores %s: it reads its own simulator only (use lsmux serve for a real stream)", s.name)
			*s.v = ""
		}
	}
	if cfg.DataDir == "" {
		// History on disk, as in production, in a directory of this run's
		// own (the simulator starts over each run, and so does its store).
		dir, err := os.MkdirTemp("", "lsmux-demo-")
		if err != nil {
			return fmt.Errorf("demo: a temporary data dir: %w (set LSMUX_DATA_DIR to a directory of your choice)", err)
		}
		defer os.RemoveAll(dir)
		cfg.DataDir = dir
	}
	if err := cfg.check(); err != nil { // the history settings apply now
		return usageError{err}
	}
	cfg.StreamURL, cfg.TokenURL = sim.StreamURL("demo"), sim.TokenURL()
	cfg.ClientID, cfg.ClientSecret = sim.ClientID(), sim.ClientSecret()
	tokens, err := cfg.tokenSource()
	if err != nil {
		return err
	}
	a, err := newApp(cfg, tokens, log, sim.FaultHandler(cfg.ReconnectDelay))
	if err != nil {
		return err
	}
	printDemoBanner(stdout, sim.URL(), a.scheme()+"://"+reachable(a.addr()), cfg.AuthToken != "", cfg.DataDir)
	return a.run(ctx)
}

// demoArgs puts the demo's own defaults before the user's flags, where
// neither a flag nor the environment sets them: a demo listens on
// loopback (a newcomer's laptop should not serve the network by surprise),
// and waits 15 s after a loss instead of Adobe's 60 s, so a newcomer who
// drops the connection sees the recovery soon.
func demoArgs(args []string, env cli.Env) []string {
	if !flagOrEnvSet(args, env, "listen") {
		args = append([]string{"-listen", demoListen}, args...)
	}
	if !flagOrEnvSet(args, env, "reconnect-delay") {
		args = append([]string{"-reconnect-delay", demoReconnectDelay.String()}, args...)
	}
	return args
}

// printDemoBanner tells a newcomer what to open. With auth on, the token
// itself is never printed: the commands name the variable that holds it.
func printDemoBanner(out io.Writer, simURL, base string, auth bool, dataDir string) {
	page, curlAuth := base+"/", ""
	if auth {
		page = base + "/?access_token=<your LSMUX_AUTH_TOKEN>"
		curlAuth = ` -H "Authorization: Bearer $LSMUX_AUTH_TOKEN"`
	}
	ws := strings.Replace(base, "http", "ws", 1) + "/v1/streams/demo/ws"
	if auth {
		ws += "?access_token=<token>"
	}
	fmt.Fprintf(out, "lsmux demo: a simulated Live Stream (%s) feeding lsmux; history on disk in %s.\n\n", simURL, dataDir)
	fmt.Fprintf(out, "  Open the dashboard:  %s\n", page)
	fmt.Fprintf(out, "  Server-Sent Events:  curl -N%s %s/v1/streams/demo/sse\n", curlAuth, base)
	fmt.Fprintf(out, "  WebSocket:           %s\n", ws)
	tailAuth := ""
	if auth {
		tailAuth = "LSMUX_TOKEN=$LSMUX_AUTH_TOKEN "
	}
	fmt.Fprintf(out, "  NDJSON for a pipe:   %sgo run . tail --server %s --from oldest demo | jq .pageName\n", tailAuth, base)
	fmt.Fprintf(out, "  Status:              curl%s %s/v1/status\n\nCtrl-C stops it.\n", curlAuth, base)
}

// flagOrEnvSet reports whether a flag was given on the command line or in
// its environment variable.
func flagOrEnvSet(args []string, env cli.Env, name string) bool {
	for _, a := range args {
		if a == "-"+name || a == "--"+name || strings.HasPrefix(a, "-"+name+"=") || strings.HasPrefix(a, "--"+name+"=") {
			return true
		}
	}
	return env.Get(cli.EnvName("LSMUX_", name)) != ""
}

// reachable turns a listen address into one this machine can dial and a
// person can open: a wildcard host becomes 127.0.0.1.
func reachable(listen string) string {
	host, port, err := net.SplitHostPort(listen)
	if err != nil {
		return listen
	}
	if ip := net.ParseIP(host); host == "" || (ip != nil && ip.IsUnspecified()) {
		host = "127.0.0.1"
	}
	return net.JoinHostPort(host, port)
}

// The demo's defaults (see demoArgs).
const (
	demoListen         = "127.0.0.1:8080"
	demoReconnectDelay = 15 * time.Second
)
