// Package cluster lets several lsmux replicas share one Live Stream
// upstream through NATS JetStream (DESIGN.md §6). Per Live Stream stream,
// the replicas elect one leader through a lease in a JetStream key-value
// bucket; only the leader runs the upstream pool, and it publishes every
// hit to a JetStream stream with the hit id as the message id. Every
// replica, the leader included, reads that JetStream stream into its local
// hub, numbering hits by their JetStream sequence, so a subscriber can
// resume on any replica.
//
// The lease is kept by time as the followers observe it, not by a TTL on
// the server (the way Kubernetes' leader election does it): a follower
// takes the lease only after it has watched the same revision, while
// connected, for a whole TTL; the leader closes its upstream connection
// when it has not renewed for the TTL less a margin. So the old leader's
// upstream is closed before anyone can take over, whatever the clocks say
// and however long NATS is away; and a NATS restart, which stops every
// follower's clock too, hands nothing over.
package cluster

import (
	"crypto/rand"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"lsmux/internal/names"
	"lsmux/internal/redact"
)

// Options configure cluster mode. Zero values take the defaults noted.
type Options struct {
	URL       string // NATS server(s), comma-separated; may carry user:password
	Replica   string // this replica's name in status and logs; default the host name
	CredsFile string // NATS .creds file (JWT + nkey)
	CAFile    string // CA for the NATS server's TLS certificate
	CertFile  string // client certificate for mutual TLS
	KeyFile   string // its key

	// LeaseTTL is how long a leader may go without renewing its lease
	// before another replica may take it (default 10 s). The leader
	// renews four times per TTL and closes its upstream connection after
	// three quarters of it without a renewal.
	LeaseTTL time.Duration
	// ReconnectDelay is the upstream reconnect delay: a new leader waits it
	// out, counted from the latest moment the old leader's connection can
	// have been open, before it connects (default 60 s).
	ReconnectDelay time.Duration
	// RetryWait paces NATS reconnects and setup retries (default 1 s).
	RetryWait time.Duration

	// The JetStream stream of hits: retention by age and bytes, the
	// duplicate window (how long a republished hit id is recognised;
	// it must cover a failover: lease TTL + reconnect delay + backfill),
	// and the number of JetStream replicas.
	MaxAge          time.Duration // default 1 h
	MaxBytes        int64         // default 1 GiB
	DuplicateWindow time.Duration // default 5 min
	Replicas        int           // default 1

	// BufferBytes bounds the hits a leader holds while it cannot publish
	// (default 256 MiB). Past it, new hits are dropped and counted.
	BufferBytes int64
	// FlushTimeout bounds how long a leader that is shutting down keeps
	// publishing what it still holds (default 5 s).
	FlushTimeout time.Duration
	// AckTimeout is how long a publish may wait for JetStream's answer
	// (default 5 s; a single lsmux's own store answers at once or has
	// failed, and uses 1 s).
	AckTimeout time.Duration

	// MaxReplays caps the subscribers reading history older than their
	// ring at once, per stream (LSMUX_MAX_REPLAYS, default 8), and
	// ReplayRate the hits a second they may read between them
	// (LSMUX_REPLAY_RATE; 0: unlimited).
	MaxReplays int
	ReplayRate float64
	// StateInterval is how often a single lsmux records in its data dir
	// that its upstream is still connected (default 5 s): after a crash,
	// the reconnect delay is counted from the last record plus this.
	StateInterval time.Duration
	// StoreRetry is how often a single lsmux whose store failed tries it
	// again (default 10 s).
	StoreRetry time.Duration
	// IdleConsumer is how long NATS keeps a consumer of this lsmux that
	// nobody reads from (default 30 s). Stopping an ordered consumer only
	// unsubscribes, and NATS's own default is 5 minutes: a flapping
	// subscriber's replays would pile up against the account's consumer
	// limit. A consumer dropped while its reader still wanted it (a
	// subscriber that stopped reading) is made again where it stopped.
	IdleConsumer time.Duration

	Logger logrus.FieldLogger
}

func (o Options) withDefaults() Options {
	if o.Replica == "" {
		o.Replica, _ = os.Hostname()
		if o.Replica == "" {
			o.Replica = "lsmux"
		}
	}
	if o.LeaseTTL <= 0 {
		o.LeaseTTL = 10 * time.Second
	}
	if o.ReconnectDelay < 0 {
		o.ReconnectDelay = 0
	}
	if o.IdleConsumer <= 0 {
		o.IdleConsumer = 30 * time.Second
	}
	if o.RetryWait <= 0 {
		o.RetryWait = time.Second
	}
	if o.MaxAge <= 0 {
		o.MaxAge = time.Hour
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = 1 << 30
	}
	if o.DuplicateWindow <= 0 {
		o.DuplicateWindow = 5 * time.Minute
	}
	if o.DuplicateWindow > o.MaxAge {
		o.DuplicateWindow = o.MaxAge
	}
	if o.Replicas <= 0 {
		o.Replicas = 1
	}
	if o.BufferBytes <= 0 {
		o.BufferBytes = 256 << 20
	}
	if o.FlushTimeout <= 0 {
		o.FlushTimeout = 5 * time.Second
	}
	if o.AckTimeout <= 0 {
		o.AckTimeout = 5 * time.Second
	}
	if o.MaxReplays <= 0 {
		o.MaxReplays = 8
	}
	if o.StateInterval <= 0 {
		o.StateInterval = 5 * time.Second
	}
	if o.StoreRetry <= 0 {
		o.StoreRetry = 10 * time.Second
	}
	if o.Logger == nil {
		l := logrus.New()
		l.Out = io.Discard
		o.Logger = l
	}
	return o
}

// Node is this replica's connection to NATS, shared by its streams.
type Node struct {
	opts Options
	id   string // lease holder id: the replica name plus a per-process nonce
	nc   *nats.Conn
	js   jetstream.JetStream
	// replayNC and replayJS carry replays of history (see attach).
	replayNC *nats.Conn
	replayJS jetstream.JetStream
	log      logrus.FieldLogger

	connectErr atomic.Pointer[string] // why the last connection attempt failed
	// embedded is set for a single lsmux's own store (LSMUX_DATA_DIR):
	// its streams run without a lease (solo.go).
	embedded *Embedded
}

// Connect starts connecting to NATS and returns at once: a replica that
// cannot reach NATS yet stays up, reports not-ready and keeps trying,
// because a process that exits would only be restarted into the same
// wait.
func Connect(o Options) (*Node, error) {
	o = o.withDefaults()
	if o.URL == "" {
		return nil, errors.New("cluster: no NATS URL")
	}
	n := &Node{opts: o, id: o.Replica + "/" + nonce(), log: o.Logger.WithField("replica", o.Replica)}
	where := redact.URLs(o.URL)
	common := []nats.Option{
		nats.MaxReconnects(-1),
		nats.ReconnectWait(o.RetryWait),
		nats.ReconnectJitter(o.RetryWait/10, o.RetryWait/10),
		nats.RetryOnFailedConnect(true),
		nats.Timeout(5 * time.Second),
	}
	if o.CredsFile != "" {
		common = append(common, nats.UserCredentials(o.CredsFile))
	}
	if o.CAFile != "" {
		common = append(common, nats.RootCAs(o.CAFile))
	}
	if o.CertFile != "" || o.KeyFile != "" {
		if o.CertFile == "" || o.KeyFile == "" {
			return nil, errors.New("cluster: set both LSMUX_NATS_CERT and LSMUX_NATS_KEY for mutual TLS")
		}
		common = append(common, nats.ClientCert(o.CertFile, o.KeyFile))
	}
	opts := append([]nats.Option{
		nats.Name("lsmux " + o.Replica),
		nats.ConnectHandler(func(*nats.Conn) { n.log.WithField("nats", where).Info("cluster: connected to NATS") }),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			n.log.WithField("nats", where).Warnf("cluster: lost NATS (%s); reconnecting every %v. Replicas keep serving what they hold; a leader keeps its upstream for up to 3/4 of LSMUX_LEASE_TTL", errText(err, o.URL), o.RetryWait)
		}),
		nats.ReconnectHandler(func(*nats.Conn) { n.log.WithField("nats", where).Info("cluster: reconnected to NATS") }),
		nats.ReconnectErrHandler(func(_ *nats.Conn, err error) {
			msg := errText(err, o.URL)
			n.connectErr.Store(&msg)
		}),
	}, common...)
	nc, err := nats.Connect(o.URL, opts...)
	if err != nil {
		return nil, fmt.Errorf("cluster: connect to NATS at %s: %s", where, redact.In(err.Error(), o.URL))
	}
	rc, err := nats.Connect(o.URL, append([]nats.Option{nats.Name("lsmux " + o.Replica + " replays")}, common...)...)
	if err != nil {
		nc.Close()
		return nil, fmt.Errorf("cluster: connect to NATS at %s: %s", where, redact.In(err.Error(), o.URL))
	}
	if err := n.attach(nc, rc); err != nil {
		return nil, err
	}
	return n, nil
}

// attach sets the node up on its NATS connections: one for the lease,
// publishing and the hub's consumer, one for replays of history, so a
// replay's stream of old hits never queues in front of the acknowledgements
// and the live hits on the first (one connection's messages are read by
// one goroutine, in order).
func (n *Node) attach(nc, replays *nats.Conn) error {
	js, err := jetstream.New(nc, jetstream.WithPublishAsyncMaxPending(publishBatch*2), jetstream.WithPublishAsyncTimeout(n.opts.AckTimeout))
	if err == nil {
		n.replayJS, err = jetstream.New(replays)
	}
	if err != nil {
		nc.Close()
		replays.Close()
		return fmt.Errorf("cluster: JetStream: %w", err)
	}
	n.nc, n.js, n.replayNC = nc, js, replays
	return nil
}

// Solo reports whether this is a single lsmux's own store (no lease).
func (n *Node) Solo() bool { return n.embedded != nil }

// Close drops the NATS connection. Call it after every stream's Run has
// returned (they release their leases through it).
func (n *Node) Close() {
	n.nc.Close()
	n.replayNC.Close()
}

// Replica is this replica's name.
func (n *Node) Replica() string { return n.opts.Replica }

// Connected reports whether NATS is reachable right now.
func (n *Node) Connected() bool { return n.nc.IsConnected() }

// notConnected explains, for readiness and logs, why NATS cannot be used.
func (n *Node) notConnected() error {
	msg := "not connected to NATS at " + redact.URLs(n.opts.URL)
	if last := n.nc.LastError(); last != nil {
		msg += ": " + redact.In(last.Error(), n.opts.URL)
	} else if e := n.connectErr.Load(); e != nil {
		msg += ": " + *e
	}
	return errors.New(msg + " (is it running and reachable, with JetStream on? see LSMUX_NATS_URL)")
}

// natsState names the connection's state for status.
func (n *Node) natsState() string {
	switch n.nc.Status() {
	case nats.CONNECTED:
		return "connected"
	case nats.RECONNECTING:
		return "reconnecting"
	case nats.CONNECTING:
		return "connecting"
	case nats.CLOSED:
		return "closed"
	}
	return strings.ToLower(n.nc.Status().String())
}

// Names of what a Live Stream stream uses in JetStream. JetStream allows
// only letters, digits, '-' and '_' in stream and bucket names (and the
// subject must be one token), so anything else becomes '_' and a short
// hash of the original name keeps two such names apart.
type Names struct {
	Stream  string // JetStream stream of hits, LSMUX_<name>
	Subject string // lsmux.<name>.hits
	Bucket  string // key-value bucket of the lease, LSMUX_LEASE_<name>
}

// NamesFor derives the JetStream names for a Live Stream stream name.
func NamesFor(stream string) Names {
	var b strings.Builder
	for i := 0; i < len(stream); i++ {
		if names.WordByte(stream[i]) {
			b.WriteByte(stream[i])
		} else {
			b.WriteByte('_')
		}
	}
	safe := b.String()
	if safe != stream || safe == "" {
		sum := sha256.Sum256([]byte(stream))
		safe += "_" + hex.EncodeToString(sum[:4])
	}
	return Names{Stream: "LSMUX_" + safe, Subject: "lsmux." + safe + ".hits", Bucket: "LSMUX_LEASE_" + safe}
}

// errText is an error's message without credentials ("closed" for none).
func errText(err error, urls string) string {
	if err == nil {
		return "closed"
	}
	return redact.In(err.Error(), urls)
}

func nonce() string {
	b := make([]byte, 4)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}

// logLimiter lets one line of each kind through per interval, so a NATS
// outage does not fill the log with the same complaint four times a
// lease.
type logLimiter struct {
	mu    sync.Mutex
	last  map[string]time.Time
	every time.Duration
}

func (l *logLimiter) allow(kind string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.last == nil {
		l.last = map[string]time.Time{}
	}
	now := time.Now()
	if t, ok := l.last[kind]; ok && now.Sub(t) < l.every {
		return false
	}
	l.last[kind] = now
	return true
}
