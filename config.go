package main

import (
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"time"

	"lsmux/fanout"
	"lsmux/internal/cli"
	"lsmux/internal/names"
	"lsmux/internal/redact"
	"lsmux/upstream"
)

// config is everything `lsmux serve` and `lsmux demo` read from flags and
// LSMUX_* environment variables. Every flag has an environment variable
// named LSMUX_ + its name in upper case with '-' as '_'; a flag given on
// the command line wins over the environment (env for the sidecar, flags
// for humans).
type config struct {
	Listen string

	StreamURL        string
	Streams          string
	ClientID         string
	ClientSecret     string
	ClientSecretFile string
	Scopes           string
	TokenURL         string
	AccessToken      string
	AccessTokenFile  string

	MaxConnections      int
	Reset               string
	Smoothing           bool
	SmoothingBucketSize int
	ReconnectDelay      time.Duration
	ReconnectMaxDelay   time.Duration
	AuthRetryDelay      time.Duration
	StallTimeout        time.Duration
	MaxRecordSize       int64
	DedupWindow         int

	BufferHits      int
	BufferBytes     int64
	WriteTimeout    time.Duration
	SlowPolicy      string
	PingInterval    time.Duration
	ShutdownTimeout time.Duration
	ShutdownDelay   time.Duration
	AuthToken       string
	AuthTokenFile   string
	TLSCert         string
	TLSKey          string
	TLSRecheck      time.Duration
	WriteDelay      time.Duration
	ProtectHealth   bool
	AllowedOrigins  string
	AllowedHosts    string
	TrustedProxies  string
	MaxSubscribers  int
	MaxPerAddress   int
	MaxMessageSize  int64
	HeaderTimeout   time.Duration

	FilterCostLimit int
	FilterBudget    int
	FilterStrikes   int
	FilterHold      time.Duration
	MaxLag          time.Duration
	CompileRate     float64
	BatchMemory     int64

	LogLevel  string
	LogFormat string

	DataDir             string
	HistoryMaxAge       time.Duration
	HistoryMaxBytes     int64
	MaxReplays          int
	ReplayRate          float64
	HeartbeatInterval   time.Duration
	StoreRetry          time.Duration
	NATSURL             string
	NATSCreds           string
	NATSCA              string
	NATSCert            string
	NATSKey             string
	ReplicaName         string
	LeaseTTL            time.Duration
	NATSRetryWait       time.Duration
	NATSMaxAge          time.Duration
	NATSMaxBytes        int64
	NATSDuplicateWindow time.Duration
	NATSReplicas        int
	NATSBufferBytes     int64

	// warnings are what loading found worth telling the operator without
	// refusing to start; the caller logs them.
	warnings []string
}

const serveSummary = `Run the proxy: hold one Live Stream connection (or one pool of
maxConnections) and serve every hit to any number of subscribers over
WebSocket, Server-Sent Events and a drop-in Live Stream endpoint.`

func (c *config) flags(f *cli.FlagSet) {
	f.String(&c.Listen, "listen", ":8080", "address to serve subscribers on, host:port (:8080 is every interface, 127.0.0.1:8080 this machine only)")
	f.String(&c.StreamURL, "stream-url", "", "Live Stream URL, https://livestream.adobe.net/api/1/stream/<name>; the stream's name is its last path element")
	f.String(&c.Streams, "streams", "", "several streams: comma-separated [name=]URL; maxConnections, reset, smoothing, smoothingBucketSize in a URL's query override the global settings for that stream")
	f.String(&c.ClientID, "client-id", "", "OAuth Server-to-Server client id (also sent as x-api-key)")
	f.Secret(&c.ClientSecret, "client-secret", "OAuth client secret (never logged)")
	f.String(&c.ClientSecretFile, "client-secret-file", "", "file holding the OAuth client secret instead (a Docker or Kubernetes secret), read at every token fetch")
	f.String(&c.Scopes, "scopes", "openid,AdobeID,read_organizations,additional_info.projectedProductContext,additional_info.job_function", "IMS scopes, comma-separated as in the Developer Console")
	f.String(&c.TokenURL, "token-url", upstream.DefaultTokenURL, "IMS token endpoint")
	f.Secret(&c.AccessToken, "access-token", "a ready access token instead of client credentials (never logged)")
	f.String(&c.AccessTokenFile, "access-token-file", "", "file holding an access token, re-read on every connect")
	f.Int(&c.MaxConnections, "max-connections", 1, "upstream connections (Live Stream's maxConnections, 1-8)")
	f.String(&c.Reset, "reset", "", "where a new upstream connection starts: smallest or largest (Live Stream's default when empty)")
	f.Bool(&c.Smoothing, "smoothing", false, "ask Live Stream to smooth the stream (smoothing=1)")
	f.Int(&c.SmoothingBucketSize, "smoothing-bucket-size", 0, "smoothing bucket in seconds, 1-7200 (0: Live Stream's default)")
	f.Duration(&c.ReconnectDelay, "reconnect-delay", 60*time.Second, "wait after a lost upstream connection; first step of the backoff (Adobe asks for about 60s)")
	f.Duration(&c.ReconnectMaxDelay, "reconnect-max-delay", 5*time.Minute, "cap of the backoff; pace of retries after configuration errors")
	f.Duration(&c.AuthRetryDelay, "auth-retry-delay", 5*time.Second, "after a 401, the pause before one retry with a fresh token")
	f.Duration(&c.StallTimeout, "stall-timeout", 5*time.Minute, "end an upstream connection that sends nothing for this long")
	f.Bytes(&c.MaxRecordSize, "max-record-size", upstream.DefaultMaxRecordSize, "largest hit accepted from upstream; larger ones are skipped and counted")
	f.Int(&c.DedupWindow, "dedup-window", upstream.DefaultDedupWindow, "how many recent hit ids are remembered to drop duplicates")
	f.Int(&c.BufferHits, "buffer-hits", 200_000, "hits kept in memory (the ring) for resume and slow subscribers")
	f.Bytes(&c.BufferBytes, "buffer-bytes", 512<<20, "bytes the ring may hold; each hit counts about 1.2 times its size (one copy, inside its WebSocket frame, and the SSE header)")
	f.Duration(&c.WriteDelay, "write-delay", 0, "gather hits this long before waking the subscribers at the live edge: a subscriber writes at most once per delay whatever the hit rate (0: at every hit)")
	f.Duration(&c.WriteTimeout, "write-timeout", 10*time.Second, "drop a subscriber whose socket write blocks this long")
	f.String(&c.SlowPolicy, "slow-policy", "gap", "a subscriber that falls off the ring: gap (notice, continue) or disconnect")
	f.Duration(&c.PingInterval, "ping-interval", 15*time.Second, "WebSocket ping and SSE comment interval (under load balancers' 60s idle timeout)")
	f.Duration(&c.ShutdownTimeout, "shutdown-timeout", 10*time.Second, "how long a shutdown may drain subscribers before closing them hard")
	f.Duration(&c.ShutdownDelay, "shutdown-delay", 0, "after SIGTERM, how long /readyz answers 503 while everything else serves on, before the shutdown starts (about 5s behind a Kubernetes Service or load balancer)")
	f.Secret(&c.AuthToken, "auth-token", "bearer token(s) subscribers must present, comma-separated (empty: no auth; set it whenever other machines can reach the listener)")
	f.String(&c.AuthTokenFile, "auth-token-file", "", "file of subscriber tokens instead, one per line (commas allowed), re-read when it changes")
	f.String(&c.TLSCert, "tls-cert", "", "serve HTTPS (HTTP/2 and HTTP/1.1) with this PEM certificate (chain), re-read when it changes; with LSMUX_TLS_KEY")
	f.String(&c.TLSKey, "tls-key", "", "the PEM private key of LSMUX_TLS_CERT")
	f.Duration(&c.TLSRecheck, "tls-recheck", 5*time.Second, "how often the certificate files are read again for a rotation")
	f.Bool(&c.ProtectHealth, "protect-health", false, "with LSMUX_AUTH_TOKEN, also require the token for /healthz, /readyz and /metrics")
	f.String(&c.AllowedOrigins, "allowed-origins", "", "browser origins allowed besides same-origin, comma-separated (https://dash.example.com), or *")
	f.String(&c.TrustedProxies, "trusted-proxies", "", "addresses of reverse proxies (CIDRs or IPs, comma-separated) whose X-Forwarded-For or Forwarded header names the client: per-address limits, the compile rate and status count that client")
	f.String(&c.AllowedHosts, "allowed-hosts", "", "without auth, host names lsmux answers besides IP addresses and localhost (against DNS rebinding), comma-separated; .example.com allows every name under it, * all")
	f.Int(&c.MaxSubscribers, "max-subscribers", 10_000, "subscribers in total; past it new ones get 503 with Retry-After")
	f.Int(&c.MaxPerAddress, "max-subscribers-per-address", 1_000, "subscribers per remote address (an IPv6 client counts by its /64); past it new ones get 429 with Retry-After")
	f.Bytes(&c.MaxMessageSize, "max-message-size", 4<<10, "largest WebSocket message a client may send; larger closes with 1009")
	f.Duration(&c.HeaderTimeout, "read-header-timeout", 10*time.Second, "how long a client may take to send its request headers")
	f.Int(&c.FilterCostLimit, "filter-cost-limit", fanout.DefaultCostLimit, "CEL cost units after which one filter evaluation stops (the hit is then skipped); real filters need 3 to 200")
	f.Int(&c.FilterBudget, "filter-budget", 200_000, "CEL cost units per second one connection's filters may spend, all its named filters together (results shared with other subscribers are free); over it the subscriber is held back (0: unlimited)")
	f.Duration(&c.FilterHold, "filter-hold", 10*time.Second, "a subscriber held back by its filter budget this long in total is dropped (filter-cost); 0: never")
	f.Int(&c.FilterStrikes, "filter-strikes", 10, "a subscriber whose filters hit the cost limit on this many hits is dropped (filter-cost); 0: never")
	f.Duration(&c.MaxLag, "max-lag", 5*time.Minute, "a subscriber further behind live than this (for hits that arrived while it was connected) is slow: a gap notice, or a disconnect with LSMUX_SLOW_POLICY=disconnect; 0: only the ring's bounds")
	f.Bytes(&c.BatchMemory, "batch-memory", 32<<20, "bytes all subscribers' write batches may hold at once; past it lagging subscribers get small batches (memory stays bounded with many non-reading clients)")
	f.Float(&c.CompileRate, "compile-rate", 5, "new filters per second each remote address (IPv6: each /64) may have compiled (bursts of four times as many); past it 429 with Retry-After")
	f.String(&c.LogLevel, "log-level", "info", "debug, info, warn or error")
	f.String(&c.LogFormat, "log-format", "auto", "text, json, or auto (text on a terminal, json otherwise)")

	f.String(&c.DataDir, "data-dir", "", "durable history: keep every hit on disk here (an embedded JetStream), so a resume older than the ring and a restart lose nothing; empty: memory only (a restart renumbers and forgets)")
	f.Duration(&c.HistoryMaxAge, "history-max-age", 24*time.Hour, "durable history (data dir or cluster): hits older than this are dropped, oldest first")
	f.Bytes(&c.HistoryMaxBytes, "history-max-bytes", 10<<30, "durable history: at most this many bytes of hits per stream, oldest dropped first (an hour of 1,000 hits/s is ~4.5 GB)")
	f.Int(&c.MaxReplays, "max-replays", 8, "durable history: subscribers per stream reading history older than the ring at once; past it 503 with Retry-After")
	f.Float(&c.ReplayRate, "replay-rate", 20000, "durable history: hits per second all replays of a stream may read between them, so catching up never takes the cores live subscribers need (50,000 back takes 2.5 s); 0: unlimited")
	f.Duration(&c.HeartbeatInterval, "heartbeat-interval", 5*time.Second, "data dir: how often lsmux records that its upstream is connected, so a restart after a crash keeps the reconnect delay")
	f.Duration(&c.StoreRetry, "store-retry", 10*time.Second, "data dir: while writing to the store fails (a full disk), how often it is tried again")
	f.Secret(&c.NATSURL, "nats-url", "cluster mode: NATS server(s) with JetStream, comma-separated (nats://nats:4222); replicas then share one upstream. Empty: no cluster")
	f.String(&c.NATSCreds, "nats-creds", "", "cluster mode: NATS credentials file (.creds); user:password may also go in the URL (never logged)")
	f.String(&c.NATSCA, "nats-ca", "", "cluster mode: CA file for the NATS server's TLS certificate")
	f.String(&c.NATSCert, "nats-cert", "", "cluster mode: client certificate for mutual TLS with NATS")
	f.String(&c.NATSKey, "nats-key", "", "cluster mode: key of the client certificate")
	f.String(&c.ReplicaName, "replica-name", "", "cluster mode: this replica's name in status and logs (empty: the host name)")
	f.Duration(&c.LeaseTTL, "lease-ttl", 10*time.Second, "cluster mode: leader lease; a leader that cannot renew closes its upstream after 3/4 of it, others take over after all of it plus LSMUX_RECONNECT_DELAY")
	f.Duration(&c.NATSRetryWait, "nats-retry-wait", time.Second, "cluster mode: pause between NATS reconnect attempts")
	f.Duration(&c.NATSMaxAge, "nats-max-age", 0, "cluster mode: JetStream keeps hits this long; 0: LSMUX_HISTORY_MAX_AGE")
	f.Bytes(&c.NATSMaxBytes, "nats-max-bytes", 0, "cluster mode: JetStream keeps at most this many bytes of hits per stream; 0: LSMUX_HISTORY_MAX_BYTES")
	f.Duration(&c.NATSDuplicateWindow, "nats-duplicate-window", 5*time.Minute, "JetStream drops a hit id stored again within this window: in cluster mode a failover's backfill, with LSMUX_DATA_DIR Adobe's backfill after a restart (there at most LSMUX_HISTORY_MAX_AGE)")
	f.Int(&c.NATSReplicas, "nats-replicas", 1, "cluster mode: JetStream replicas of the hit stream and the lease (3 on a 3-node NATS cluster)")
	f.Bytes(&c.NATSBufferBytes, "nats-buffer-bytes", 256<<20, "cluster mode: hits a leader holds while NATS is away; past it hits are dropped and counted")
}

// serveFlags is serve's (and demo's) flag set bound to c.
func (c *config) serveFlags(cmd, summary string) *cli.FlagSet {
	f := cli.NewFlagSet(cmd, "LSMUX_", summary)
	c.flags(f)
	return f
}

// loadConfig parses the flags and environment of serve (or demo: cmd and
// summary say which) and checks them. A help request prints the help to
// out and returns cli.ErrHelp.
func loadConfig(cmd, summary string, args []string, env cli.Env, out io.Writer) (*config, error) {
	c := &config{}
	f := c.serveFlags(cmd, summary)
	if err := f.Parse(args, env, out); err != nil {
		return nil, err
	}
	c.warnings = append(c.warnings, f.Warnings()...)
	if err := c.check(); err != nil {
		return nil, err
	}
	return c, nil
}

// durationSetting is one positive duration, named for its error.
type durationSetting struct {
	name string
	d    time.Duration
}

// maxBufferHits bounds LSMUX_BUFFER_HITS: the ring allocates a slot per
// hit at start (8 bytes each, per stream), so a typo of a few zeros would
// otherwise take gigabytes before the first hit. Ten million is more than
// LSMUX_BUFFER_BYTES can hold at any sane setting.
const maxBufferHits = 10_000_000

func (c *config) check() error {
	var errs []error
	if (c.TLSCert == "") != (c.TLSKey == "") {
		errs = append(errs, errors.New("LSMUX_TLS_CERT and LSMUX_TLS_KEY go together: give both PEM files for HTTPS, or neither for plain HTTP"))
	}
	if c.WriteDelay < 0 || c.WriteDelay > time.Second {
		errs = append(errs, fmt.Errorf("LSMUX_WRITE_DELAY=%v: want 0 to 1s, such as 10ms", c.WriteDelay))
	}
	if c.TLSRecheck <= 0 {
		errs = append(errs, fmt.Errorf("LSMUX_TLS_RECHECK=%v: want a duration above 0, such as 5s", c.TLSRecheck))
	}
	if err := checkListen("LSMUX_LISTEN", c.Listen); err != nil {
		errs = append(errs, err)
	}
	// Live Stream's parameters: its own rules, named by our variables.
	paramVars := map[string]string{"maxConnections": "LSMUX_MAX_CONNECTIONS", "reset": "LSMUX_RESET", "smoothingBucketSize": "LSMUX_SMOOTHING_BUCKET_SIZE"}
	for _, pe := range (upstream.Params{MaxConnections: c.MaxConnections, Reset: c.Reset, SmoothingBucketSize: c.SmoothingBucketSize}).Problems() {
		errs = append(errs, fmt.Errorf("%s=%s: %s", paramVars[pe.Param], pe.Value, pe.Want))
	}
	if c.MaxConnections == 0 {
		errs = append(errs, errors.New("LSMUX_MAX_CONNECTIONS=0: Live Stream allows 1 to 8"))
	}
	if c.MaxSubscribers < 1 || c.MaxPerAddress < 1 || c.MaxMessageSize < 125 {
		errs = append(errs, fmt.Errorf("LSMUX_MAX_SUBSCRIBERS=%d, LSMUX_MAX_SUBSCRIBERS_PER_ADDRESS=%d, LSMUX_MAX_MESSAGE_SIZE=%d: want at least 1, 1 and 125", c.MaxSubscribers, c.MaxPerAddress, c.MaxMessageSize))
	}
	errs = append(errs, positive(
		durationSetting{"LSMUX_READ_HEADER_TIMEOUT", c.HeaderTimeout}, durationSetting{"LSMUX_RECONNECT_DELAY", c.ReconnectDelay},
		durationSetting{"LSMUX_RECONNECT_MAX_DELAY", c.ReconnectMaxDelay}, durationSetting{"LSMUX_AUTH_RETRY_DELAY", c.AuthRetryDelay},
		durationSetting{"LSMUX_STALL_TIMEOUT", c.StallTimeout}, durationSetting{"LSMUX_WRITE_TIMEOUT", c.WriteTimeout},
		durationSetting{"LSMUX_PING_INTERVAL", c.PingInterval}, durationSetting{"LSMUX_SHUTDOWN_TIMEOUT", c.ShutdownTimeout})...)
	if c.ReconnectMaxDelay < c.ReconnectDelay {
		errs = append(errs, fmt.Errorf("LSMUX_RECONNECT_MAX_DELAY=%v is below LSMUX_RECONNECT_DELAY=%v", c.ReconnectMaxDelay, c.ReconnectDelay))
	}
	if c.BufferHits < 1 || c.BufferHits > maxBufferHits || c.BufferBytes < 1<<20 {
		errs = append(errs, fmt.Errorf("LSMUX_BUFFER_HITS=%d, LSMUX_BUFFER_BYTES=%d: want 1 to %d hits (each slot is allocated at start) and at least 1MiB", c.BufferHits, c.BufferBytes, maxBufferHits))
	}
	if c.NATSURL != "" {
		errs = append(errs, positive(durationSetting{"LSMUX_LEASE_TTL", c.LeaseTTL}, durationSetting{"LSMUX_NATS_RETRY_WAIT", c.NATSRetryWait},
			durationSetting{"LSMUX_NATS_DUPLICATE_WINDOW", c.NATSDuplicateWindow})...)
		if c.DataDir != "" {
			errs = append(errs, errors.New("LSMUX_DATA_DIR and LSMUX_NATS_URL are both set: in cluster mode the cluster's JetStream keeps the history; unset LSMUX_DATA_DIR"))
		}
		if failover := c.LeaseTTL + c.LeaseTTL/4 + c.ReconnectDelay; c.NATSDuplicateWindow < failover {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_DUPLICATE_WINDOW=%v is shorter than a failover (1.25 × LSMUX_LEASE_TTL + LSMUX_RECONNECT_DELAY = %v): the new leader's backfill would be stored twice; raise it", c.NATSDuplicateWindow, failover))
		}
		if c.NATSDuplicateWindow > c.historyMaxAge() {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_DUPLICATE_WINDOW=%v is longer than the history's age (LSMUX_NATS_MAX_AGE or LSMUX_HISTORY_MAX_AGE: %v; JetStream refuses that)", c.NATSDuplicateWindow, c.historyMaxAge()))
		}
		if c.NATSReplicas < 1 || c.NATSReplicas > 5 {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_REPLICAS=%d: JetStream allows 1 to 5", c.NATSReplicas))
		}
		if (c.NATSCert == "") != (c.NATSKey == "") {
			errs = append(errs, errors.New("LSMUX_NATS_CERT and LSMUX_NATS_KEY go together (mutual TLS)"))
		}
	}
	if c.AuthToken != "" && len(list(c.AuthToken)) == 0 {
		errs = append(errs, errors.New("LSMUX_AUTH_TOKEN holds no token (only commas and spaces): set the token(s) subscribers must present, or unset it to turn auth off"))
	}
	if c.AuthToken != "" && c.AuthTokenFile != "" {
		errs = append(errs, errors.New("LSMUX_AUTH_TOKEN and LSMUX_AUTH_TOKEN_FILE are both set: set one"))
	}
	if c.ClientSecret != "" && c.ClientSecretFile != "" {
		errs = append(errs, errors.New("LSMUX_CLIENT_SECRET and LSMUX_CLIENT_SECRET_FILE are both set: set one"))
	}
	if c.FilterCostLimit < 10 || c.FilterBudget < 0 || c.FilterStrikes < 0 || c.CompileRate <= 0 {
		errs = append(errs, fmt.Errorf("LSMUX_FILTER_COST_LIMIT=%d, LSMUX_FILTER_BUDGET=%d, LSMUX_FILTER_STRIKES=%d, LSMUX_COMPILE_RATE=%g: want at least 10, 0, 0 and more than 0",
			c.FilterCostLimit, c.FilterBudget, c.FilterStrikes, c.CompileRate))
	}
	if c.DataDir != "" || c.NATSURL != "" {
		errs = append(errs, positive(durationSetting{"LSMUX_HISTORY_MAX_AGE", c.historyMaxAge()}, durationSetting{"LSMUX_HEARTBEAT_INTERVAL", c.HeartbeatInterval},
			durationSetting{"LSMUX_STORE_RETRY", c.StoreRetry})...)
		if c.historyMaxBytes() < 1<<20 || c.NATSMaxBytes < 0 {
			errs = append(errs, fmt.Errorf("LSMUX_HISTORY_MAX_BYTES=%d (or LSMUX_NATS_MAX_BYTES): want at least 1MiB, such as 10GiB", c.historyMaxBytes()))
		}
		if c.MaxReplays < 1 {
			errs = append(errs, fmt.Errorf("LSMUX_MAX_REPLAYS=%d: want at least 1", c.MaxReplays))
		}
		if c.NATSMaxAge < 0 {
			errs = append(errs, fmt.Errorf("LSMUX_NATS_MAX_AGE=%v: want a duration such as 1h, or 0 (LSMUX_HISTORY_MAX_AGE's)", c.NATSMaxAge))
		}
		if c.ReplayRate < 0 {
			errs = append(errs, fmt.Errorf("LSMUX_REPLAY_RATE=%g: want hits per second such as 20000, or 0 (unlimited)", c.ReplayRate))
		}
	}
	if c.ShutdownDelay < 0 {
		errs = append(errs, fmt.Errorf("LSMUX_SHUTDOWN_DELAY=%v: want a duration such as 5s, or 0 (none)", c.ShutdownDelay))
	}
	if c.FilterHold < 0 || c.MaxLag < 0 {
		errs = append(errs, fmt.Errorf("LSMUX_FILTER_HOLD=%v, LSMUX_MAX_LAG=%v: want a duration such as 10s, or 0 (never)", c.FilterHold, c.MaxLag))
	}
	if c.BatchMemory < 1<<20 {
		errs = append(errs, fmt.Errorf("LSMUX_BATCH_MEMORY=%d: want at least 1MiB, such as 32MiB", c.BatchMemory))
	}
	if _, err := parseCIDRs(c.TrustedProxies); err != nil {
		errs = append(errs, fmt.Errorf("LSMUX_TRUSTED_PROXIES=%s: %w", c.TrustedProxies, err))
	}
	if c.SlowPolicy != "gap" && c.SlowPolicy != "disconnect" {
		errs = append(errs, fmt.Errorf("LSMUX_SLOW_POLICY=%q: want gap or disconnect", c.SlowPolicy))
	}
	switch c.LogLevel {
	case "debug", "info", "warn", "warning", "error":
	default:
		errs = append(errs, fmt.Errorf("LSMUX_LOG_LEVEL=%q: want debug, info, warn or error", c.LogLevel))
	}
	switch c.LogFormat {
	case "auto", "text", "json":
	default:
		errs = append(errs, fmt.Errorf("LSMUX_LOG_FORMAT=%q: want text, json or auto", c.LogFormat))
	}
	if c.AuthToken == "" && c.AuthTokenFile == "" && !listensOnLoopback(c.Listen) {
		c.warnings = append(c.warnings, fmt.Sprintf("LSMUX_LISTEN=%s is reachable from other machines and LSMUX_AUTH_TOKEN is not set: anyone who reaches it can read the stream and "+
			"subscribe with expensive filters; set LSMUX_AUTH_TOKEN (or LSMUX_AUTH_TOKEN_FILE), or listen on 127.0.0.1", c.Listen))
	}
	if specs, err := c.streamSpecs(); err == nil {
		c.warnings = append(c.warnings, reconnectWarnings(c.ReconnectDelay, specs)...)
	} else if c.StreamURL != "" || c.Streams != "" {
		errs = append(errs, err) // "no stream at all" is for serve to say: demo brings its own
	}
	return errors.Join(errs...)
}

// positive reports every duration that is zero or negative, in order.
func positive(settings ...durationSetting) []error {
	var errs []error
	for _, s := range settings {
		if s.d <= 0 {
			errs = append(errs, fmt.Errorf("%s=%v: must be positive, a duration such as 60s", s.name, s.d))
		}
	}
	return errs
}

// checkListen explains a listen address that is not host:port.
func checkListen(name, addr string) error {
	if _, port, err := net.SplitHostPort(addr); err != nil || port == "" {
		return fmt.Errorf("%s=%s: want host:port, such as :8080 (every interface) or 127.0.0.1:8080 (this machine only)", name, addr)
	}
	return nil
}

// reconnectWarnings names Adobe's ~60 s rule when the reconnect delay is
// much shorter against the real Live Stream (a simulator on this machine
// may be hurried).
func reconnectWarnings(delay time.Duration, specs []streamSpec) []string {
	if delay >= 30*time.Second {
		return nil
	}
	var out []string
	for _, sp := range specs {
		u, err := url.Parse(sp.URL)
		if err != nil || isLocalHost(u.Hostname()) {
			continue
		}
		out = append(out, fmt.Sprintf("LSMUX_RECONNECT_DELAY=%v is short for %s: Live Stream asks clients to wait about 60s after a lost connection, and answers quick reconnects with 409 and 503", delay, u.Host))
	}
	return out
}

// listensOnLoopback reports whether a listen address is this machine's
// only (127.0.0.1:8080, localhost:8080), not every interface (:8080).
func listensOnLoopback(addr string) bool {
	host, _, err := net.SplitHostPort(addr)
	return err == nil && host != "" && isLocalHost(host)
}

// isLocalHost reports whether host names this machine.
func isLocalHost(host string) bool {
	if host == "localhost" || strings.HasSuffix(host, ".localhost") {
		return true
	}
	ip := net.ParseIP(host)
	return ip != nil && ip.IsLoopback()
}

// streamSpec is one stream lsmux serves.
type streamSpec struct {
	Name string
	URL  string // without the parameters lsmux sets itself
	upstream.Params
}

// streamSpecs combines LSMUX_STREAM_URL and LSMUX_STREAMS into the list
// of streams, each with its own connection settings: Live Stream's
// parameters in a URL's query override the global ones, and are checked
// by the same rules (upstream.Params.Check).
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
		sp, err := c.parseStream(e)
		if err != nil {
			return nil, err
		}
		if seen[sp.Name] {
			return nil, fmt.Errorf("stream %q is configured twice", sp.Name)
		}
		seen[sp.Name] = true
		specs = append(specs, sp)
	}
	return specs, nil
}

// parseStream reads one [name=]URL entry.
func (c *config) parseStream(e string) (streamSpec, error) {
	shown := redact.URL(e)
	name, raw, named := strings.Cut(e, "=")
	if !named || strings.Contains(name, "/") {
		name, raw = "", e
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
		return streamSpec{}, fmt.Errorf("stream %q: want [name=]https://livestream.adobe.net/api/1/stream/<name>", shown)
	}
	sp := streamSpec{Name: name, Params: upstream.Params{MaxConnections: c.MaxConnections, Reset: c.Reset, Smoothing: c.Smoothing, SmoothingBucketSize: c.SmoothingBucketSize}}
	q := u.Query()
	var bad []string
	if v := q.Get("maxConnections"); v != "" {
		if sp.MaxConnections, err = strconv.Atoi(v); err != nil {
			bad = append(bad, "maxConnections="+v+": want 1 to 8")
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
			bad = append(bad, "smoothingBucketSize="+v+": want 1 to 7200")
		}
	}
	if len(bad) > 0 {
		return streamSpec{}, fmt.Errorf("stream %q: %s", shown, strings.Join(bad, "; "))
	}
	if err := sp.Params.Check(); err != nil {
		return streamSpec{}, fmt.Errorf("stream %q: %w", shown, err)
	}
	for _, k := range []string{"maxConnections", "reset", "smoothing", "smoothingBucketSize"} {
		q.Del(k)
	}
	u.RawQuery = q.Encode()
	sp.URL = u.String()
	if sp.Name == "" {
		if sp.Name, err = upstream.StreamName(sp.URL); err != nil {
			return streamSpec{}, err
		}
	}
	if err := names.Check("stream name", sp.Name); err != nil {
		return streamSpec{}, err
	}
	return sp, nil
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
	case c.ClientID != "" && c.ClientSecretFile != "":
		return upstream.NewClientCredentials(c.TokenURL, c.ClientID, "", c.Scopes, 0, nil).WithSecretFile(c.ClientSecretFile), nil
	case c.ClientID != "":
		return nil, errors.New("LSMUX_CLIENT_ID is set but LSMUX_CLIENT_SECRET is not: set the client secret of the same OAuth Server-to-Server credential (or LSMUX_CLIENT_SECRET_FILE)")
	case c.ClientSecret != "" || c.ClientSecretFile != "":
		return nil, errors.New("LSMUX_CLIENT_SECRET is set but LSMUX_CLIENT_ID is not: set the client id of the same OAuth Server-to-Server credential")
	}
	return nil, errors.New("no upstream credentials: set LSMUX_CLIENT_ID and LSMUX_CLIENT_SECRET (OAuth Server-to-Server), or LSMUX_ACCESS_TOKEN, or LSMUX_ACCESS_TOKEN_FILE")
}

// configTable renders the configuration table in docs/configuration.md
// from the flags themselves, so the documentation cannot drift from the
// code (a test compares the two).
func configTable() string {
	f := (&config{}).serveFlags("lsmux serve", serveSummary)
	var b strings.Builder
	b.WriteString("| Environment variable | Flag | Default | Meaning |\n|---|---|---|---|\n")
	f.VisitAll(func(fl *flag.Flag) {
		def := fl.DefValue
		if def == "" {
			def = "(none)"
		}
		usage := strings.ReplaceAll(fl.Usage, "|", "\\|")
		fmt.Fprintf(&b, "| `%s` | `--%s` | `%s` | %s |\n", cli.EnvName("LSMUX_", fl.Name), fl.Name, def, usage)
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

// parseCIDRs reads a comma-separated list of CIDRs or single addresses.
func parseCIDRs(text string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, item := range list(text) {
		if p, err := netip.ParsePrefix(item); err == nil {
			out = append(out, p.Masked())
			continue
		}
		a, err := netip.ParseAddr(item)
		if err != nil {
			return nil, fmt.Errorf("%q is not an address or CIDR: want a list such as 10.0.0.0/8,127.0.0.1", item)
		}
		out = append(out, netip.PrefixFrom(a.Unmap(), a.Unmap().BitLen()))
	}
	return out, nil
}

// historyMaxAge and historyMaxBytes size durable history: cluster mode's
// older LSMUX_NATS_MAX_AGE and LSMUX_NATS_MAX_BYTES win where set.
func (c *config) historyMaxAge() time.Duration {
	if c.NATSMaxAge > 0 {
		return c.NATSMaxAge
	}
	return c.HistoryMaxAge
}

// duplicateWindow is how long JetStream remembers a hit id. With only a
// data dir it is cut to the history's age (JetStream refuses a longer
// one, and a hit older than history is gone from it anyway); cluster mode
// checks it against a failover instead (check).
func (c *config) duplicateWindow() time.Duration {
	if c.NATSURL == "" {
		return min(c.NATSDuplicateWindow, c.historyMaxAge())
	}
	return c.NATSDuplicateWindow
}

func (c *config) historyMaxBytes() int64 {
	if c.NATSMaxBytes > 0 {
		return c.NATSMaxBytes
	}
	return c.HistoryMaxBytes
}
