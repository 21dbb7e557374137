package main

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"

	"lsmux/internal/cli"
)

var updateDocs = flag.Bool("update-docs", false, "rewrite docs/configuration.md's table from the flags")

// testConfig loads serve's configuration from args and env alone.
func testConfig(args []string, env cli.Env) (*config, error) {
	return loadConfig("lsmux serve", serveSummary, args, env, io.Discard)
}

// TestConfigTableMatchesTheFlags fails when a flag is undocumented or
// documented wrongly. Fix with: go test -run ConfigTable -update-docs .
func TestConfigTableMatchesTheFlags(t *testing.T) {
	const path = "docs/configuration.md"
	doc, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- config table -->\n", "<!-- end config table -->"
	text := string(doc)
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("%s lacks the %q ... %q markers", path, begin, end)
	}
	want := configTable()
	if text[i+len(begin):j] == want {
		return
	}
	if *updateDocs {
		os.WriteFile(path, []byte(text[:i+len(begin)]+want+text[j:]), 0o644)
		return
	}
	t.Fatalf("%s's configuration table is out of date; run: go test -run ConfigTable -update-docs .", path)
}

func TestEnvironmentFillsFlagsAndFlagsWin(t *testing.T) {
	env := cli.Env{
		"LSMUX_LISTEN":          ":9999",
		"LSMUX_MAX_CONNECTIONS": "3",
		"LSMUX_RECONNECT_DELAY": "90s",
		"LSMUX_BUFFER_BYTES":    "64MiB",
		"LSMUX_SMOOTHING":       "true",
	}
	c, err := testConfig([]string{"-max-connections", "2"}, env)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":9999" || c.MaxConnections != 2 || c.ReconnectDelay != 90*time.Second || c.BufferBytes != 64<<20 || !c.Smoothing {
		t.Fatalf("config %+v", c)
	}
}

// TestBadConfigSaysWhichVariableAndTheForm: every refused setting names
// its variable and what it wants instead.
func TestBadConfigSaysWhichVariableAndTheForm(t *testing.T) {
	for env, want := range map[string]string{
		"LSMUX_MAX_CONNECTIONS=9":                                  "LSMUX_MAX_CONNECTIONS=9: Live Stream allows 1 to 8",
		"LSMUX_RECONNECT_DELAY=soon":                               "LSMUX_RECONNECT_DELAY=soon: want a duration such as 60s",
		"LSMUX_RECONNECT_DELAY=60":                                 "a unit is needed: 60s?",
		"LSMUX_RESET=middle":                                       `LSMUX_RESET="middle": want smallest or largest`,
		"LSMUX_BUFFER_BYTES=lots":                                  "LSMUX_BUFFER_BYTES=lots: size \"lots\": want a whole number of bytes",
		"LSMUX_SLOW_POLICY=drop":                                   "LSMUX_SLOW_POLICY",
		"LSMUX_RECONNECT_MAX_DELAY=1s":                             "LSMUX_RECONNECT_MAX_DELAY",
		"LSMUX_SMOOTHING_BUCKET_SIZE=9000":                         "LSMUX_SMOOTHING_BUCKET_SIZE=9000",
		"LSMUX_LISTEN=8080":                                        "LSMUX_LISTEN=8080: want host:port, such as :8080",
		"LSMUX_MAX_SUBSCRIBERS=many":                               "LSMUX_MAX_SUBSCRIBERS=many: want a whole number",
		"LSMUX_SMOOTHING=maybe":                                    "LSMUX_SMOOTHING=maybe: want true or false",
		"LSMUX_LOG_LEVEL=loud":                                     "LSMUX_LOG_LEVEL",
		"LSMUX_STREAMS=x=ftp://h/a":                                "want [name=]https://livestream.adobe.net/api/1/stream/<name>",
		"LSMUX_STREAMS=https://h/api/1/stream/a?maxConnections=12": "maxConnections=12: Live Stream allows 1 to 8",
		"LSMUX_STREAMS=https://h/api/1/stream/a?reset=middle":      `reset="middle": want smallest or largest`,
		"LSMUX_STREAMS=https://h/api/1/stream/a b":                 "stream name \"a b\"",
		"LSMUX_TRUSTED_PROXIES=10.0.0.0/8,proxy.internal":          `"proxy.internal" is not an address or CIDR: want a list such as 10.0.0.0/8,127.0.0.1`,
		"LSMUX_FILTER_HOLD=-1s":                                    "LSMUX_FILTER_HOLD=-1s, LSMUX_MAX_LAG=5m0s: want a duration such as 10s, or 0 (never)",
		"LSMUX_BATCH_MEMORY=0":                                     "LSMUX_BATCH_MEMORY=0: want at least 1MiB",
		"LSMUX_COMPILE_RATE=NaN":                                   "LSMUX_COMPILE_RATE=NaN: want a number",
		"LSMUX_BUFFER_HITS=2000000000":                             "want 1 to 10000000 hits",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := testConfig(nil, cli.Env{k: v})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to say %q", env, err, want)
		}
	}
}

// TestBadHistorySettingIsTheOneNamed: each history setting out of range
// is named with its own form (a negative replay rate was reported as the
// byte limit and the replay cap).
func TestBadHistorySettingIsTheOneNamed(t *testing.T) {
	for env, want := range map[string]string{
		"LSMUX_REPLAY_RATE=-1":         "LSMUX_REPLAY_RATE=-1: want hits per second",
		"LSMUX_MAX_REPLAYS=0":          "LSMUX_MAX_REPLAYS=0: want at least 1",
		"LSMUX_HISTORY_MAX_BYTES=1KiB": "LSMUX_HISTORY_MAX_BYTES=1024 (or LSMUX_NATS_MAX_BYTES): want at least 1MiB",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := testConfig(nil, cli.Env{k: v, "LSMUX_DATA_DIR": t.TempDir()})
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to say %q", env, err, want)
		} else if strings.Count(err.Error(), "LSMUX_") > 2 {
			t.Errorf("%s: error names other settings too: %v", env, err)
		}
	}
}

// TestShortHistoryWithADataDirStarts: with only a data dir, a history
// shorter than the duplicate window's default (5 minutes) is accepted and
// the window cut to it (JetStream refuses a window longer than the
// history; lsmux used to refuse to start), and 1 MiB of history is
// enough.
func TestShortHistoryWithADataDirStarts(t *testing.T) {
	c, err := testConfig(nil, cli.Env{"LSMUX_DATA_DIR": t.TempDir(), "LSMUX_HISTORY_MAX_AGE": "5s", "LSMUX_HISTORY_MAX_BYTES": "1MiB"})
	if err != nil {
		t.Fatal(err)
	}
	if got := c.clusterOptions(nil).DuplicateWindow; got != 5*time.Second {
		t.Errorf("duplicate window %v; want the history's 5s", got)
	}
}

// TestConfigErrorsKeepTheirOrder: several errors come in the same order
// every run (they used to follow a map's random order).
func TestConfigErrorsKeepTheirOrder(t *testing.T) {
	env := cli.Env{"LSMUX_WRITE_TIMEOUT": "0s", "LSMUX_PING_INTERVAL": "-1s", "LSMUX_STALL_TIMEOUT": "0s", "LSMUX_SHUTDOWN_TIMEOUT": "0s"}
	_, first := testConfig(nil, env)
	if first == nil {
		t.Fatal("zero durations accepted")
	}
	for range 20 {
		if _, err := testConfig(nil, env); err == nil || err.Error() != first.Error() {
			t.Fatalf("errors in another order:\n%v\nthen\n%v", first, err)
		}
	}
}

func TestCredentialsErrorNamesWhatIsMissing(t *testing.T) {
	for env, want := range map[string]string{
		"LSMUX_CLIENT_ID=abc":     "LSMUX_CLIENT_SECRET is not",
		"LSMUX_CLIENT_SECRET=abc": "LSMUX_CLIENT_ID is not",
		"LSMUX_SCOPES=x":          "set LSMUX_CLIENT_ID and LSMUX_CLIENT_SECRET",
	} {
		k, v, _ := strings.Cut(env, "=")
		c, err := testConfig(nil, cli.Env{k: v, "LSMUX_STREAM_URL": "https://h/api/1/stream/s"})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.tokenSource(); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v, want %q", env, err, want)
		}
	}
}

// TestShortReconnectDelayIsWarnedAboutForTheRealLiveStream: Adobe's ~60 s
// rule is named when the delay is short against a non-local host; a
// simulator on this machine may be hurried.
func TestShortReconnectDelayIsWarnedAboutForTheRealLiveStream(t *testing.T) {
	c, err := testConfig([]string{"-reconnect-delay", "5s", "-listen", "127.0.0.1:8080"}, cli.Env{"LSMUX_STREAM_URL": "https://livestream.adobe.net/api/1/stream/x"})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.warnings) != 1 || !strings.Contains(c.warnings[0], "about 60s") || !strings.Contains(c.warnings[0], "livestream.adobe.net") {
		t.Fatalf("warnings %q", c.warnings)
	}
	c, err = testConfig([]string{"-reconnect-delay", "5s", "-listen", "127.0.0.1:8080"}, cli.Env{"LSMUX_STREAM_URL": "http://127.0.0.1:9090/api/1/stream/x"})
	if err != nil || len(c.warnings) != 0 {
		t.Fatalf("a local simulator: %v %q", err, c.warnings)
	}
}

// FuzzConfigEnv: whatever the environment holds, loading the config
// returns a config or an error, and never echoes a secret's value.
func FuzzConfigEnv(f *testing.F) {
	f.Add("LSMUX_BUFFER_BYTES", "12MiB")
	f.Add("LSMUX_RECONNECT_DELAY", "-5s")
	f.Add("LSMUX_MAX_CONNECTIONS", "0x10")
	f.Add("LSMUX_SMOOTHING", "maybe")
	f.Add("LSMUX_STREAMS", "a=https://u:p@h/api/1/stream/a?maxConnections=x")
	f.Fuzz(func(t *testing.T, key, value string) {
		c, err := testConfig(nil, cli.Env{key: value})
		if err == nil && c == nil {
			t.Fatal("no config and no error")
		}
		if err != nil && len(value) > 8 && (key == "LSMUX_CLIENT_SECRET" || key == "LSMUX_ACCESS_TOKEN" || key == "LSMUX_AUTH_TOKEN" || key == "LSMUX_NATS_URL") && strings.Contains(err.Error(), value) {
			t.Fatalf("error echoes the secret: %v", err)
		}
	})
}

// TestClusterConfigChecks: cluster settings that cannot work are refused
// at start, naming the variable, and the NATS URL's password is never
// echoed.
func TestClusterConfigChecks(t *testing.T) {
	base := cli.Env{"LSMUX_NATS_URL": "nats://lsmux:hush-77@nats:4222"}
	for env, want := range map[string]string{
		"LSMUX_NATS_DUPLICATE_WINDOW=30s": "LSMUX_NATS_DUPLICATE_WINDOW",
		"LSMUX_NATS_REPLICAS=7":           "LSMUX_NATS_REPLICAS",
		"LSMUX_NATS_CERT=/c.pem":          "LSMUX_NATS_KEY",
		"LSMUX_LEASE_TTL=0s":              "LSMUX_LEASE_TTL",
		"LSMUX_NATS_MAX_AGE=1m":           "LSMUX_NATS_MAX_AGE",
	} {
		k, v, _ := strings.Cut(env, "=")
		e := cli.Env{k: v}
		for bk, bv := range base {
			e[bk] = bv
		}
		_, err := testConfig(nil, e)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to name %s", env, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "hush-77") {
			t.Errorf("%s: the error shows the NATS password: %v", env, err)
		}
	}
	if _, err := testConfig(nil, base); err != nil {
		t.Errorf("the defaults with a NATS URL: %v", err)
	}
}

// TestUnsafeDefaultsAreRefusedOrWarned: a token list with no token is an
// error (it used to turn auth off), a listener other machines can reach
// without a token is warned about, and secret and its _FILE form cannot
// both be set.
func TestUnsafeDefaultsAreRefusedOrWarned(t *testing.T) {
	stream := "https://livestream.adobe.net/api/1/stream/x"
	if _, err := testConfig(nil, cli.Env{"LSMUX_AUTH_TOKEN": " , ", "LSMUX_STREAM_URL": stream}); err == nil || !strings.Contains(err.Error(), "LSMUX_AUTH_TOKEN holds no token") {
		t.Errorf("a token list of commas: %v", err)
	}
	for _, env := range []cli.Env{
		{"LSMUX_AUTH_TOKEN": "a", "LSMUX_AUTH_TOKEN_FILE": "/f"},
		{"LSMUX_CLIENT_SECRET": "a", "LSMUX_CLIENT_SECRET_FILE": "/f"},
	} {
		if _, err := testConfig(nil, env); err == nil || !strings.Contains(err.Error(), "set one") {
			t.Errorf("%v: %v", env, err)
		}
	}
	c, err := testConfig(nil, cli.Env{"LSMUX_STREAM_URL": stream})
	if err != nil {
		t.Fatal(err)
	}
	if len(c.warnings) != 1 || !strings.Contains(c.warnings[0], "LSMUX_LISTEN=:8080 is reachable from other machines and LSMUX_AUTH_TOKEN is not set") {
		t.Errorf("warnings on :8080 without a token: %q", c.warnings)
	}
	for _, env := range []cli.Env{
		{"LSMUX_STREAM_URL": stream, "LSMUX_LISTEN": "127.0.0.1:8080"},
		{"LSMUX_STREAM_URL": stream, "LSMUX_AUTH_TOKEN": "t"},
		{"LSMUX_STREAM_URL": stream, "LSMUX_AUTH_TOKEN_FILE": "/run/secrets/tokens"},
	} {
		if c, err := testConfig(nil, env); err != nil || len(c.warnings) != 0 {
			t.Errorf("%v: %v %q", env, err, c.warnings)
		}
	}
}

// TestClientSecretFileIsReadAtEveryFetch: LSMUX_CLIENT_SECRET_FILE gives
// the secret without an environment variable or flag, and a rotated file
// is used for the next token.
func TestClientSecretFileIsReadAtEveryFetch(t *testing.T) {
	sim := newSim(t, 10)
	path := t.TempDir() + "/secret"
	os.WriteFile(path, []byte("wrong\n"), 0o600)
	c, err := testConfig(nil, cli.Env{"LSMUX_STREAM_URL": sim.StreamURL("demo"), "LSMUX_TOKEN_URL": sim.TokenURL(),
		"LSMUX_CLIENT_ID": sim.ClientID(), "LSMUX_CLIENT_SECRET_FILE": path, "LSMUX_LISTEN": "127.0.0.1:0"})
	if err != nil {
		t.Fatal(err)
	}
	tokens, err := c.tokenSource()
	if err != nil {
		t.Fatal(err)
	}
	if _, err := tokens.Token(t.Context()); err == nil {
		t.Fatal("the wrong secret from the file was accepted")
	}
	os.WriteFile(path, []byte(sim.ClientSecret()+"\n"), 0o600)
	if tok, err := tokens.Token(t.Context()); err != nil || tok == "" {
		t.Fatalf("after fixing the file: %q %v", tok, err)
	}
}
