package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net/url"
	"strconv"
	"strings"
	"time"

	"lsmux/upstream"
)

// config is everything `lsmux serve` and `lsmux demo` read from flags and
// LSMUX_* environment variables. Every flag has an environment variable
// named LSMUX_ + its name in upper case with '-' as '_'; a flag given on
// the command line wins over the environment (env for the sidecar, flags
// for humans).
type config struct {
	Listen string

	StreamURL       string
	Streams         string
	ClientID        string
	ClientSecret    string
	Scopes          string
	TokenURL        string
	AccessToken     string
	AccessTokenFile string

	MaxConnections      int
	Reset               string
	Smoothing           bool
	SmoothingBucketSize int
	ReconnectDelay      time.Duration
	ReconnectMaxDelay   time.Duration
	AuthRetryDelay      time.Duration
	StallTimeout        time.Duration
	MaxRecordSize       byteSize
	DedupWindow         int

	BufferHits      int
	BufferBytes     byteSize
	WriteTimeout    time.Duration
	SlowPolicy      string
	PingInterval    time.Duration
	ShutdownTimeout time.Duration
	AuthToken       string
	ProtectHealth   bool
	AllowedOrigins  string
	MaxSubscribers  int
	MaxPerAddress   int
	MaxMessageSize  byteSize
	HeaderTimeout   time.Duration

	LogLevel  string
	LogFormat string

	NATSURL             string
	NATSCreds           string
	NATSCA              string
	NATSCert            string
	NATSKey             string
	ReplicaName         string
	LeaseTTL            time.Duration
	NATSRetryWait       time.Duration
	NATSMaxAge          time.Duration
	NATSMaxBytes        byteSize
	NATSDuplicateWindow time.Duration
	NATSReplicas        int
	NATSBufferBytes     byteSize
}

// secretFlags are never printed, logged or shown in status.
var secretFlags = map[string]bool{"client-secret": true, "access-token": true, "auth-token": true, "nats-url": true}

func (c *config) flags(fs *flag.FlagSet) {
	fs.StringVar(&c.Listen, "listen", ":8080", "address to serve subscribers on")
	fs.StringVar(&c.StreamURL, "stream-url", "", "Live Stream URL, https://livestream.adobe.net/api/1/stream/<name>; the stream's name is its last path element")
	fs.StringVar(&c.Streams, "streams", "", "several streams: comma-separated [name=]URL; maxConnections, reset, smoothing, smoothingBucketSize in a URL's query override the global settings for that stream")
	fs.StringVar(&c.ClientID, "client-id", "", "OAuth Server-to-Server client id (also sent as x-api-key)")
	fs.StringVar(&c.ClientSecret, "client-secret", "", "OAuth client secret (never logged)")
	fs.StringVar(&c.Scopes, "scopes", "openid,AdobeID,read_organizations,additional_info.projectedProductContext,additional_info.job_function", "IMS scopes, comma-separated as in the Developer Console")
	fs.StringVar(&c.TokenURL, "token-url", upstream.DefaultTokenURL, "IMS token endpoint")
	fs.StringVar(&c.AccessToken, "access-token", "", "a ready access token instead of client credentials (never logged)")
	fs.StringVar(&c.AccessTokenFile, "access-token-file", "", "file holding an access token, re-read on every connect")
	fs.IntVar(&c.MaxConnections, "max-connections", 1, "upstream connections (Live Stream's maxConnections, 1-8)")
	fs.StringVar(&c.Reset, "reset", "", "where a new upstream connection starts: smallest or largest (Live Stream's default when empty)")
	fs.BoolVar(&c.Smoothing, "smoothing", false, "ask Live Stream to smooth the stream (smoothing=1)")
	fs.IntVar(&c.SmoothingBucketSize, "smoothing-bucket-size", 0, "smoothing bucket in seconds, 1-7200 (0: Live Stream's default)")
	fs.DurationVar(&c.ReconnectDelay, "reconnect-delay", 60*time.Second, "wait after a lost upstream connection; first step of the backoff")
	fs.DurationVar(&c.ReconnectMaxDelay, "reconnect-max-delay", 5*time.Minute, "cap of the backoff; pace of retries after configuration errors")
	fs.DurationVar(&c.AuthRetryDelay, "auth-retry-delay", 5*time.Second, "after a 401, the pause before one retry with a fresh token")
	fs.DurationVar(&c.StallTimeout, "stall-timeout", 5*time.Minute, "end an upstream connection that sends nothing for this long")
	c.MaxRecordSize = upstream.DefaultMaxRecordSize
	fs.Var(&c.MaxRecordSize, "max-record-size", "largest hit accepted from upstream; larger ones are skipped and counted (e.g. 4MiB)")
	fs.IntVar(&c.DedupWindow, "dedup-window", upstream.DefaultDedupWindow, "how many recent hit ids are remembered to drop duplicates")
	fs.IntVar(&c.BufferHits, "buffer-hits", 200_000, "hits kept for resume and slow subscribers")
	c.BufferBytes = 512 << 20
	fs.Var(&c.BufferBytes, "buffer-bytes", "bytes kept for resume and slow subscribers (e.g. 512MiB)")
	fs.DurationVar(&c.WriteTimeout, "write-timeout", 10*time.Second, "drop a subscriber whose socket write blocks this long")
	fs.StringVar(&c.SlowPolicy, "slow-policy", "gap", "a subscriber that falls off the buffer: gap (notice, continue) or disconnect")
	fs.DurationVar(&c.PingInterval, "ping-interval", 15*time.Second, "WebSocket ping and SSE comment interval (under load balancers' 60s idle timeout)")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a shutdown may drain subscribers before closing them hard")
	fs.StringVar(&c.AuthToken, "auth-token", "", "bearer token(s) subscribers must present, comma-separated (empty: no auth)")
	fs.BoolVar(&c.ProtectHealth, "protect-health", false, "with LSMUX_AUTH_TOKEN, also require the token for /healthz, /readyz and /metrics")
	fs.StringVar(&c.AllowedOrigins, "allowed-origins", "", "browser origins allowed besides same-origin, comma-separated (https://dash.example.com), or *")
	fs.IntVar(&c.MaxSubscribers, "max-subscribers", 10_000, "subscribers in total; past it new ones get 503 with Retry-After")
	fs.IntVar(&c.MaxPerAddress, "max-subscribers-per-address", 1_000, "subscribers per remote address; past it new ones get 429 with Retry-After")
	c.MaxMessageSize = 4 << 10
	fs.Var(&c.MaxMessageSize, "max-message-size", "largest WebSocket message a client may send (e.g. 4KiB); larger closes with 1009")
	fs.DurationVar(&c.HeaderTimeout, "read-header-timeout", 10*time.Second, "how long a client may take to send its request headers")
	fs.StringVar(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	fs.StringVar(&c.LogFormat, "log-format", "auto", "text, json, or auto (text on a terminal, json otherwise)")

	fs.StringVar(&c.NATSURL, "nats-url", "", "cluster mode: NATS server(s) with JetStream, comma-separated (nats://nats:4222); replicas then share one upstream. Empty: no cluster")
	fs.StringVar(&c.NATSCreds, "nats-creds", "", "cluster mode: NATS credentials file (.creds); user:password may also go in the URL (never logged)")
	fs.StringVar(&c.NATSCA, "nats-ca", "", "cluster mode: CA file for the NATS server's TLS certificate")
	fs.StringVar(&c.NATSCert, "nats-cert", "", "cluster mode: client certificate for mutual TLS with NATS")
	fs.StringVar(&c.NATSKey, "nats-key", "", "cluster mode: key of the client certificate")
	fs.StringVar(&c.ReplicaName, "replica-name", "", "cluster mode: this replica's name in status and logs (empty: the host name)")
	fs.DurationVar(&c.LeaseTTL, "lease-ttl", 10*time.Second, "cluster mode: leader lease; a leader that cannot renew closes its upstream after 3/4 of it, others take over after all of it plus LSMUX_RECONNECT_DELAY")
	fs.DurationVar(&c.NATSRetryWait, "nats-retry-wait", time.Second, "cluster mode: pause between NATS reconnect attempts")
	fs.DurationVar(&c.NATSMaxAge, "nats-max-age", time.Hour, "cluster mode: JetStream keeps hits this long")
	c.NATSMaxBytes = 1 << 30
	fs.Var(&c.NATSMaxBytes, "nats-max-bytes", "cluster mode: JetStream keeps at most this many bytes of hits per stream (e.g. 1GiB)")
	fs.DurationVar(&c.NATSDuplicateWindow, "nats-duplicate-window", 5*time.Minute, "cluster mode: JetStream drops a hit id published again within this window (covers a failover's backfill)")
	fs.IntVar(&c.NATSReplicas, "nats-replicas", 1, "cluster mode: JetStream replicas of the hit stream and the lease (3 on a 3-node NATS cluster)")
	c.NATSBufferBytes = 256 << 20
	fs.Var(&c.NATSBufferBytes, "nats-buffer-bytes", "cluster mode: hits a leader holds while NATS is away; past it hits are dropped and counted (e.g. 256MiB)")
}

// envName is the environment variable of a flag.
func envName(prefix, flagName string) string {
	return prefix + strings.ToUpper(strings.ReplaceAll(flagName, "-", "_"))
}

// parseFlags parses args, then fills every flag not given on the command
// line from its environment variable.
func parseFlags(fs *flag.FlagSet, args []string, envPrefix string, getenv func(string) string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	given := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { given[f.Name] = true })
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if given[f.Name] {
			return
		}
		env := envName(envPrefix, f.Name)
		if v := getenv(env); v != "" {
			if err := fs.Set(f.Name, v); err != nil {
				shown := v
				if secretFlags[f.Name] {
					shown = "(hidden)"
				}
				errs = append(errs, fmt.Errorf("%s=%s: %w", env, shown, err))
			}
		}
	})
	return errors.Join(errs...)
}

// loadConfig parses serve's flags and environment and checks them.
func loadConfig(args []string, getenv func(string) string, stderr io.Writer) (*config, error) {
	c := &config{}
	fs := flag.NewFlagSet("lsmux serve", flag.ContinueOnError)
	fs.SetOutput(stderr)
	c.flags(fs)
	if err := parseFlags(fs, args, "LSMUX_", getenv); err != nil {
		return nil, err
	}
	return c, c.check()
}

func (c *config) check() error {
	var errs []error
	if c.MaxConnections < 1 || c.MaxConnections > 8 {
		errs = append(errs, fmt.Errorf("LSMUX_MAX_CONNECTIONS=%d: Live Stream allows 1 to 8", c.MaxConnections))
	}
	if c.Reset != "" && c.Reset != "smallest" && c.Reset != "largest" {
		errs = append(errs, fmt.Errorf("LSMUX_RESET=%q: want smallest or largest", c.Reset))
	}
	if c.SmoothingBucketSize < 0 || c.SmoothingBucketSize > 7200 {
		errs = append(errs, fmt.Errorf("LSMUX_SMOOTHING_BUCKET_SIZE=%d: want 1 to 7200 seconds", c.SmoothingBucketSize))
	}
	if c.MaxSubscribers < 1 || c.MaxPerAddress < 1 || c.MaxMessageSize < 125 {
		errs = append(errs, fmt.Errorf("LSMUX_MAX_SUBSCRIBERS=%d, LSMUX_MAX_SUBSCRIBERS_PER_ADDRESS=%d, LSMUX_MAX_MESSAGE_SIZE=%d: want at least 1, 1 and 125", c.MaxSubscribers, c.MaxPerAddress, c.MaxMessageSize))
	}
	for name, d := range map[string]time.Duration{"LSMUX_READ_HEADER_TIMEOUT": c.HeaderTimeout, "LSMUX_RECONNECT_DELAY": c.ReconnectDelay, "LSMUX_RECONNECT_MAX_DELAY": c.ReconnectMaxDelay, "LSMUX_AUTH_RETRY_DELAY": c.AuthRetryDelay,
		"LSMUX_STALL_TIMEOUT": c.StallTimeout, "LSMUX_WRITE_TIMEOUT": c.WriteTimeout, "LSMUX_PING_INTERVAL": c.PingInterval, "LSMUX_SHUTDOWN_TIMEOUT": c.ShutdownTimeout} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s=%v: must be positive", name, d))
		}
	}
	if c.ReconnectMaxDelay < c.ReconnectDelay {
		errs = append(errs, fmt.Errorf("LSMUX_RECONNECT_MAX_DELAY=%v is below LSMUX_RECONNECT_DELAY=%v", c.ReconnectMaxDelay, c.ReconnectDelay))
	}
	if c.BufferHits < 1 || c.BufferBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("LSMUX_BUFFER_HITS=%d, LSMUX_BUFFER_BYTES=%d: want at least 1 hit and 1MiB", c.BufferHits, c.BufferBytes))
	}
	if c.NATSURL != "" {
		for name, d := range map[string]time.Duration{"LSMUX_LEASE_TTL": c.LeaseTTL, "LSMUX_NATS_RETRY_WAIT": c.NATSRetryWait, "LSMUX_NATS_MAX_AGE": c.NATSMaxAge, "LSMUX_NATS_DUPLICATE_WINDOW": c.NATSDuplicateWindow} {
			if d <= 0 {
				errs = append(errs, fmt.Errorf("%s=%v: must be positive", name, d))
			}
		}
		if failover := c.LeaseTTL + c.LeaseTTL/4 + c.ReconnectDelay; c.NATSDuplicateWindow < failover {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_DUPLICATE_WINDOW=%v is shorter than a failover (1.25 × LSMUX_LEASE_TTL + LSMUX_RECONNECT_DELAY = %v): the new leader's backfill would be stored twice; raise it", c.NATSDuplicateWindow, failover))
		}
		if c.NATSDuplicateWindow > c.NATSMaxAge {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_DUPLICATE_WINDOW=%v is longer than LSMUX_NATS_MAX_AGE=%v (JetStream refuses that)", c.NATSDuplicateWindow, c.NATSMaxAge))
		}
		if c.NATSReplicas < 1 || c.NATSReplicas > 5 {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_REPLICAS=%d: JetStream allows 1 to 5", c.NATSReplicas))
		}
		if (c.NATSCert == "") != (c.NATSKey == "") {
			errs = append(errs, errors.New("LSMUX_NATS_CERT and LSMUX_NATS_KEY go together (mutual TLS)"))
		}
	}
	if c.SlowPolicy != "gap" && c.SlowPolicy != "disconnect" {
		errs = append(errs, fmt.Errorf("LSMUX_SLOW_POLICY=%q: want gap or disconnect", c.SlowPolicy))
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("LSMUX_LOG_FORMAT=%q: want text, json or auto", c.LogFormat))
	}
	return errors.Join(errs...)
}

// streamSpec is one stream lsmux serves.
type streamSpec struct {
	Name                string
	URL                 string // without the parameters lsmux sets itself
	MaxConnections      int
	Reset               string
	Smoothing           bool
	SmoothingBucketSize int
}

// streamSpecs combines LSMUX_STREAM_URL and LSMUX_STREAMS into the list
// of streams, each with its own connection settings.
func (c *config) streamSpecs() ([]streamSpec, error) {
	var entries []string
	if c.StreamURL != "" {
		entries = append(entries, c.StreamURL)
	}
	for _, e := range strings.Split(c.Streams, ",") {
		if e = strings.TrimSpace(e); e != "" {
			entries = append(entries, e)
		}
	}
	if len(entries) == 0 {
		return nil, errors.New("no stream: set LSMUX_STREAM_URL (or --stream-url) to https://livestream.adobe.net/api/1/stream/<name>, or LSMUX_STREAMS for several; try 'lsmux demo' for a first run without credentials")
	}
	var specs []streamSpec
	seen := map[string]bool{}
	for _, e := range entries {
		name, raw, named := strings.Cut(e, "=")
		if !named || strings.Contains(name, "/") {
			name, raw = "", e
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return nil, fmt.Errorf("stream %q: want [name=]https://livestream.adobe.net/api/1/stream/<name>", e)
		}
		sp := streamSpec{Name: name, MaxConnections: c.MaxConnections, Reset: c.Reset, Smoothing: c.Smoothing, SmoothingBucketSize: c.SmoothingBucketSize}
		q := u.Query()
		if v := q.Get("maxConnections"); v != "" {
			if sp.MaxConnections, err = strconv.Atoi(v); err != nil || sp.MaxConnections < 1 || sp.MaxConnections > 8 {
				return nil, fmt.Errorf("stream %q: maxConnections=%s: want 1 to 8", e, v)
			}
		}
		if v := q.Get("reset"); v != "" {
			sp.Reset = v
		}
		if v := q.Get("smoothing"); v != "" {
			sp.Smoothing = v == "1" || v == "true"
		}
		if v := q.Get("smoothingBucketSize"); v != "" {
			if sp.SmoothingBucketSize, err = strconv.Atoi(v); err != nil {
				return nil, fmt.Errorf("stream %q: smoothingBucketSize=%s: want 1 to 7200", e, v)
			}
		}
		for _, k := range []string{"maxConnections", "reset", "smoothing", "smoothingBucketSize"} {
			q.Del(k)
		}
		u.RawQuery = q.Encode()
		sp.URL = u.String()
		if sp.Name == "" {
			if sp.Name, err = upstream.StreamName(sp.URL); err != nil {
				return nil, err
			}
		}
		if !validStreamName(sp.Name) {
			return nil, fmt.Errorf("stream name %q: use letters, digits, '-', '_' and '.'", sp.Name)
		}
		if seen[sp.Name] {
			return nil, fmt.Errorf("stream %q is configured twice", sp.Name)
		}
		seen[sp.Name] = true
		specs = append(specs, sp)
	}
	return specs, nil
}

func validStreamName(s string) bool {
	if s == "" || len(s) > 128 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_' || c == '.') {
			return false
		}
	}
	return true
}

// tokenSource picks the token source the operator configured, in order:
// a token file, a static token, client credentials.
func (c *config) tokenSource() (upstream.TokenSource, error) {
	switch {
	case c.AccessTokenFile != "":
		return upstream.FileToken(c.AccessTokenFile), nil
	case c.AccessToken != "":
		return upstream.StaticToken(c.AccessToken), nil
	case c.ClientID != "" && c.ClientSecret != "":
		return upstream.NewClientCredentials(c.TokenURL, c.ClientID, c.ClientSecret, c.Scopes, 0, nil), nil
	}
	return nil, errors.New("no upstream credentials: set LSMUX_CLIENT_ID and LSMUX_CLIENT_SECRET (OAuth Server-to-Server), or LSMUX_ACCESS_TOKEN, or LSMUX_ACCESS_TOKEN_FILE")
}

// byteSize is a flag value that takes plain bytes or KiB/MiB/GiB (also KB,
// MB, GB as powers of ten).
type byteSize int64

func (b *byteSize) String() string { return strconv.FormatInt(int64(*b), 10) }

func (b *byteSize) Set(s string) error {
	v, err := parseByteSize(s)
	if err != nil {
		return err
	}
	*b = byteSize(v)
	return nil
}

func parseByteSize(s string) (int64, error) {
	s = strings.TrimSpace(s)
	units := []struct {
		suffix string
		mult   int64
	}{{"KiB", 1 << 10}, {"MiB", 1 << 20}, {"GiB", 1 << 30}, {"KB", 1e3}, {"MB", 1e6}, {"GB", 1e9}, {"B", 1}}
	mult := int64(1)
	for _, u := range units {
		if strings.HasSuffix(s, u.suffix) {
			s, mult = strings.TrimSpace(strings.TrimSuffix(s, u.suffix)), u.mult
			break
		}
	}
	n, err := strconv.ParseInt(s, 10, 64)
	if err != nil || n < 0 || n > (1<<62)/mult {
		return 0, fmt.Errorf("size %q: want a whole number of bytes, optionally with KiB, MiB or GiB", s)
	}
	return n * mult, nil
}

// configTable renders the README's configuration table from the flags
// themselves, so the documentation cannot drift from the code (a test
// compares the two).
func configTable() string {
	fs := flag.NewFlagSet("lsmux serve", flag.ContinueOnError)
	(&config{}).flags(fs)
	var b strings.Builder
	b.WriteString("| Environment variable | Flag | Default | Meaning |\n|---|---|---|---|\n")
	fs.VisitAll(func(f *flag.Flag) {
		def := f.DefValue
		if def == "" {
			def = "(none)"
		}
		usage := strings.ReplaceAll(f.Usage, "|", "\\|")
		fmt.Fprintf(&b, "| `%s` | `--%s` | `%s` | %s |\n", envName("LSMUX_", f.Name), f.Name, def, usage)
	})
	return b.String()
}

// list splits a comma-separated setting.
func list(s string) []string {
	var out []string
	for _, v := range strings.Split(s, ",") {
		if v = strings.TrimSpace(v); v != "" {
			out = append(out, v)
		}
	}
	return out
}
