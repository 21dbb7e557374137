package cluster

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"lsmux/fanout"
	"lsmux/internal/redact"
	"lsmux/upstream"
)

// renumberGap is how far above the numbers a replica has seen it starts a
// JetStream stream it has to create again: other replicas may be ahead of
// it, by far less than this.
const renumberGap = 1 << 20

// Upstream is what a Stream needs of the upstream pool (upstream.Pool):
// run it into a sink while this replica leads, show why it waits
// otherwise, and report its connections.
type Upstream interface {
	Run(ctx context.Context, sink upstream.Sink)
	Hold(until time.Time, reason string)
	Streaming() bool
	Conns() []upstream.ConnStatus
}

var _ Upstream = (*upstream.Pool)(nil)

// maxAhead is how far beyond what this replica holds (or what JetStream
// says exists) a subscriber's number may be and still be waited for, not
// answered with a gap: a client that moves from a replica ahead to one
// behind must neither be told of a gap nor sent what it already has.
const maxAhead = 10_000

// Stream is one Live Stream stream in cluster mode on this replica: the
// lease, the publisher (while leading) and the consumer that fills the
// local hub.
//
// Lock order: consumeMu before the hub's own locks (consume appends to the
// hub while holding it); mu is never held while calling into the hub, the
// pool or NATS.
type Stream struct {
	node  *Node
	name  string
	names Names
	hub   *fanout.Hub
	pool  Upstream
	pub   *publisher
	log   logrus.FieldLogger
	logs  logLimiter

	kv        atomic.Pointer[jetstream.KeyValue]
	ready     atomic.Bool // the hub is numbered from JetStream and caught up
	setupErr  atomic.Pointer[string]
	consumed  atomic.Uint64 // last JetStream sequence appended to the hub
	catchUpTo atomic.Uint64 // JetStream's last sequence when the consumer started
	// consumeMu and gen keep a stopped consumer's late deliveries out of
	// the hub: nats.go may still call the old handler after Stop, and one
	// old number appended after a renumbering would hide the new ones.
	consumeMu  sync.Mutex
	gen        uint64 // guarded by consumeMu
	leaderFlag atomic.Bool
	draining   atomic.Bool
	cc         jetstream.ConsumeContext  // owned by Run's goroutine
	createdAt  atomic.Pointer[time.Time] // when the JetStream stream read from was created
	// streamMisses and bucketMisses count storageLost's "not found"
	// answers in a row (owned by Run's goroutine).
	streamMisses, bucketMisses int

	mu              sync.Mutex
	rev             uint64     // lease revision last seen
	seenAt          time.Time  // when rev was first seen while connected; zero: not watching
	missingSince    time.Time  // when the lease key was first seen missing while connected
	cur             leaseValue // the lease's value at rev
	otherUntil      time.Time  // latest moment another replica's upstream may have been open
	lastClose       time.Time  // when this replica's upstream last closed
	term            *term      // non-nil while this replica holds the lease
	leaderChanges   uint64
	upstreamAllowed time.Time

	// Durable history (replay.go): the numbers the JetStream stream
	// holds, as last seen, for fanout.History.Range; its size, cached for
	// status.
	histFirst, histLast atomic.Uint64
	histInfo            atomic.Pointer[histInfo]
	// solo is set for a single lsmux's own store (solo.go).
	solo *soloState
}

// NewStream prepares a stream's cluster side and the hub it fills; Run
// starts it. hubOpts size the ring; the numbering is cluster mode's own
// (JetStream's sequence, the same on every replica).
func (n *Node) NewStream(name string, hubOpts fanout.Options, pool Upstream) *Stream {
	hubOpts.FirstSeq = 1 // renumbered from JetStream at setup (Hub.Reset)
	hubOpts.MaxAhead = maxAhead
	hub := fanout.NewHub(hubOpts)
	names := NamesFor(name)
	log := n.log.WithField("stream", name)
	s := &Stream{node: n, name: name, names: names, hub: hub, pool: pool, log: log, logs: logLimiter{every: 10 * time.Second},
		pub: newPublisher(n.js, n.Connected, names.Subject, n.opts.BufferBytes, n.opts.RetryWait, log)}
	hub.SetHistory(streamHistory{s}, n.opts.MaxReplays, n.opts.ReplayRate)
	if n.Solo() {
		s.pub.onStored = s.stored
		msg := "history: reading the ring back from the data dir"
		s.setupErr.Store(&msg)
		pool.Hold(time.Time{}, "history: opening the data dir")
		return s
	}
	msg := "cluster: waiting for NATS at " + redact.URLs(n.opts.URL)
	s.setupErr.Store(&msg)
	pool.Hold(time.Time{}, "cluster: waiting for NATS before electing a leader")
	return s
}

// Open prepares a single lsmux's stream (Node.Solo) before it serves:
// the state the previous run left, and the store's stream, which must be
// the one it had. Its error names the data dir and what to do. Cluster
// mode needs no Open (it waits for NATS in Run).
func (s *Stream) Open(ctx context.Context) error {
	if !s.node.Solo() {
		return nil
	}
	return s.openSolo(ctx)
}

// Hub is the ring this stream fills from JetStream.
func (s *Stream) Hub() *fanout.Hub { return s.hub }

// Deliver is the pool's sink in cluster mode: hits go to JetStream, and
// come back to every replica's hub through the consumer.
func (s *Stream) Deliver(h upstream.Hit) { s.pub.add(h) }

// Run runs the stream's cluster side until ctx ends, then releases the
// lease (after closing the upstream) so another replica can take over
// without waiting for the TTL.
func (s *Stream) Run(ctx context.Context) {
	if s.solo != nil {
		// Closed last, after the publisher: while it drains it may still
		// reserve numbers in the state file (solo.go).
		defer s.solo.state.close()
	}
	pubCtx, stopPub := context.WithCancel(context.Background())
	pubDone := make(chan struct{})
	go func() {
		defer close(pubDone)
		if s.solo != nil {
			s.soloPublish(pubCtx, &s.draining)
		} else {
			s.pub.run(pubCtx, &s.draining)
		}
	}()
	defer func() {
		// Publish what the upstream already handed over, within bounds.
		s.draining.Store(true)
		s.pub.poke()
		select {
		case <-pubDone:
		case <-time.After(s.node.opts.FlushTimeout):
			if n, _ := s.pub.pending(); n > 0 {
				s.log.WithField("hits", n).Error("cluster: shutting down with hits not yet published to JetStream; they are lost unless Live Stream backfills them to the next leader")
			}
		}
		stopPub()
		<-pubDone
	}()

	go s.watchHistory(ctx)
	if s.solo != nil {
		s.runSolo(ctx)
		return
	}
	if !s.setup(ctx) {
		return
	}
	defer func() { s.cc.Stop() }()
	s.elect(ctx)
}

// setup creates (or updates) the JetStream stream and the lease bucket,
// and starts the consumer (s.cc); it retries until NATS answers or ctx
// ends.
func (s *Stream) setup(ctx context.Context) bool {
	o := s.node.opts
	for attempt := 1; ; attempt++ {
		cc, err := s.trySetup(ctx)
		if err == nil {
			s.cc = cc
			s.setupErr.Store(nil)
			return true
		}
		msg := s.logPrefix() + err.Error()
		s.setupErr.Store(&msg)
		if s.logs.allow("setup") {
			s.log.WithField("attempt", attempt).Warnf("%scannot set up the JetStream stream yet (not serving until it is): %v", s.logPrefix(), err)
		}
		select {
		case <-ctx.Done():
			return false
		case <-time.After(o.RetryWait):
		}
	}
}

// storageLost reports whether the JetStream stream or the lease bucket is
// gone (deleted by someone, or lost with NATS's storage), or the stream's
// numbering started over. Without this check the replicas would wait for
// hits that never come and elect no leader, while reporting ready.
func (s *Stream) storageLost(ctx context.Context) error {
	if !s.node.Connected() {
		return nil // nothing to learn now
	}
	ctx, cancel := context.WithTimeout(ctx, s.node.opts.LeaseTTL/4)
	defer cancel()
	// JetStream may answer "not found" for a moment while it recovers
	// after a restart: only a second answer in a row, a TTL later, counts.
	missing := func(count *int, what string) error {
		*count++
		if *count < 2 {
			return nil
		}
		return errors.New(what + " is gone")
	}
	st, err := s.node.js.Stream(ctx, s.names.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound):
		return missing(&s.streamMisses, "the JetStream stream "+s.names.Stream)
	case err != nil:
		return nil
	case !st.CachedInfo().Created.Equal(s.streamCreated()):
		return fmt.Errorf("the JetStream stream %s was created again at %s (deleted meanwhile?)", s.names.Stream, st.CachedInfo().Created.Format(time.RFC3339))
	}
	if _, err := s.node.js.KeyValue(ctx, s.names.Bucket); errors.Is(err, jetstream.ErrBucketNotFound) {
		return missing(&s.bucketMisses, "the lease bucket "+s.names.Bucket)
	}
	s.streamMisses, s.bucketMisses = 0, 0
	return nil
}

// rebuild sets the stream up again after storageLost. The hub is
// renumbered when the stream is a new one: subscribers get a gap notice
// and carry on with its numbers.
func (s *Stream) rebuild(ctx context.Context, why error) bool {
	s.log.Errorf("cluster: %v; creating it again (hits not yet read from it are lost)", why)
	s.cc.Stop()
	s.consumeMu.Lock()
	s.gen++ // whatever the old consumer still delivers is dropped
	s.consumeMu.Unlock()
	select {
	case <-s.cc.Closed():
	case <-time.After(s.node.opts.LeaseTTL / 4):
	}
	s.ready.Store(false)
	s.streamMisses, s.bucketMisses = 0, 0
	return s.setup(ctx)
}

func (s *Stream) trySetup(ctx context.Context) (jetstream.ConsumeContext, error) {
	o := s.node.opts
	if !s.node.Connected() {
		// Fail fast with NATS's own reason: a request would only wait in
		// the reconnect buffer until its timeout.
		return nil, s.node.notConnected()
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	js := s.node.js
	cfg := jetstream.StreamConfig{
		Name:        s.names.Stream,
		Description: "lsmux: hits of Live Stream stream " + s.name,
		Subjects:    []string{s.names.Subject},
		Storage:     jetstream.FileStorage,
		Retention:   jetstream.LimitsPolicy,
		Discard:     jetstream.DiscardOld,
		MaxAge:      o.MaxAge,
		MaxBytes:    o.MaxBytes,
		Duplicates:  o.DuplicateWindow,
		Replicas:    o.Replicas,
	}
	jstream, err := js.Stream(cctx, s.names.Stream)
	switch {
	case err == nil:
		cfg.FirstSeq = jstream.CachedInfo().Config.FirstSeq // fixed at creation
		jstream, err = js.CreateOrUpdateStream(cctx, cfg)
	case errors.Is(err, jetstream.ErrStreamNotFound):
		// Number from the clock in microseconds (as a single lsmux
		// does), and above anything this replica has seen: when the
		// stream is created again after it was deleted or lost, even by
		// a replica that just started, numbers go on upwards, and no
		// subscriber's number ever means a different hit.
		cfg.FirstSeq = max(uint64(time.Now().UnixMicro()), s.hub.Stats().Newest+renumberGap)
		jstream, err = js.CreateStream(cctx, cfg)
		if errors.Is(err, jetstream.ErrStreamNameAlreadyInUse) {
			jstream, err = js.Stream(cctx, s.names.Stream) // another replica was quicker
		}
	}
	if err != nil {
		return nil, fmt.Errorf("create JetStream stream %s (is JetStream enabled on the NATS server? do all replicas use the same LSMUX_NATS_* settings?): %w", s.names.Stream, err)
	}
	info := jstream.CachedInfo()
	s.noteInfo(info, true)
	var kv jetstream.KeyValue
	if !s.node.Solo() { // one lsmux needs no lease
		kv, err = js.CreateOrUpdateKeyValue(cctx, jetstream.KeyValueConfig{
			Bucket:      s.names.Bucket,
			Description: "lsmux: leader lease of Live Stream stream " + s.name,
			History:     1,
			Storage:     jetstream.FileStorage,
			Replicas:    o.Replicas,
		})
		if err != nil {
			return nil, fmt.Errorf("create key-value bucket %s: %w", s.names.Bucket, err)
		}
	}
	last := info.State.LastSeq
	start, newNumbers := startSeq(startPoint{
		ringHits: uint64(s.hub.Stats().MaxHits), first: info.State.FirstSeq, last: last,
		created: info.Created, known: s.streamCreated(), next: s.hub.Stats().Newest + 1, consumed: s.consumed.Load(),
	})
	if newNumbers {
		s.consumed.Store(0)
	}
	s.createdAt.Store(&info.Created)
	s.hub.Reset(start)
	s.catchUpTo.Store(last)
	cons, err := js.OrderedConsumer(cctx, s.names.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy:     jetstream.DeliverByStartSequencePolicy,
		OptStartSeq:       start,
		InactiveThreshold: s.node.opts.IdleConsumer,
	})
	if err != nil {
		return nil, fmt.Errorf("create consumer on %s: %w", s.names.Stream, err)
	}
	s.consumeMu.Lock()
	s.gen++
	gen := s.gen
	s.consumeMu.Unlock()
	cc, err := cons.Consume(func(m jetstream.Msg) { s.consume(gen, m) }, jetstream.ConsumeErrHandler(func(_ jetstream.ConsumeContext, err error) {
		if s.logs.allow("consume") {
			s.log.Warnf("cluster: reading the JetStream stream: %v (it resumes by itself)", err)
		}
	}))
	if err != nil {
		return nil, fmt.Errorf("consume %s: %w", s.names.Stream, err)
	}
	if start > last {
		s.ready.Store(true) // nothing to catch up with
	}
	if kv != nil {
		s.kv.Store(&kv)
	}
	s.log.WithField("jetstream_stream", s.names.Stream).WithField("from_seq", start).WithField("last_seq", last).Info(s.logPrefix() + "reading hits from JetStream")
	return cc, nil
}

// startPoint is what decides where a replica starts reading the JetStream
// stream: the stream's state and what this replica already holds.
type startPoint struct {
	ringHits    uint64    // the ring's size in hits
	first, last uint64    // the JetStream stream's first and last sequence
	created     time.Time // when the JetStream stream was created
	known       time.Time // when the stream this replica read before was created; zero at the first setup
	next        uint64    // the hub's next number
	consumed    uint64    // the last sequence this replica appended
}

// startSeq decides where to start reading, and whether the stream is a new
// one whose numbers start over. Three cases:
//   - first setup, or a new stream: the newest ring's worth of hits
//     JetStream holds, so a subscriber that moves here from another replica
//     can resume;
//   - set up again after a failure, same stream: go on where the hub is;
//   - a new stream that the old consumer already followed to its numbers
//     (nats.go's ordered consumer recreates itself): the hub holds the new
//     stream's hits, go on from there.
func startSeq(p startPoint) (start uint64, newNumbers bool) {
	start = p.last + 1
	if start > p.ringHits {
		start -= p.ringHits
	} else {
		start = 1
	}
	start = max(start, p.first, 1)
	sameStream := p.created.Equal(p.known)
	switch {
	case sameStream && start < p.next:
		return p.next, false
	case !p.known.IsZero() && !sameStream && p.consumed >= p.first && p.next <= p.last+1:
		return p.next, false
	case !p.known.IsZero() && !sameStream:
		return start, true
	}
	return start, false
}

// consume appends a hit from JetStream to the hub under its JetStream
// sequence number. Ordered consumers deliver each sequence once, in order,
// and resume after the last one after any NATS trouble.
func (s *Stream) consume(gen uint64, m jetstream.Msg) {
	md, err := m.Metadata()
	if err != nil {
		return
	}
	s.consumeMu.Lock()
	defer s.consumeMu.Unlock()
	if gen != s.gen {
		return // from a consumer already stopped
	}
	seq := md.Sequence.Stream
	s.noteStored(seq)
	s.hub.SetHorizon(seq + md.NumPending)
	if m.Headers().Get(lostHeader) != "" {
		s.placeholderLocked(seq)
	} else if s.hub.AppendAt(seq, m.Data(), md.Timestamp) {
		s.consumed.Store(seq)
	}
	if !s.ready.Load() && (md.NumPending == 0 || seq >= s.catchUpTo.Load()) {
		s.ready.Store(true)
	}
}

// placeholderLocked takes number seq for a placeholder (solo.go): no hit,
// but the next hit is numbered after it, never given its number. The
// ring holds only contiguous numbers, so the hits before it leave the
// ring (history still has them). Caller holds consumeMu.
func (s *Stream) placeholderLocked(seq uint64) {
	if seq > s.hub.Stats().Newest {
		s.hub.Reset(seq + 1)
	}
}

// streamCreated is when the JetStream stream this replica reads was
// created (zero before setup); a change means it was created again.
func (s *Stream) streamCreated() time.Time {
	if c := s.createdAt.Load(); c != nil {
		return *c
	}
	return time.Time{}
}

// Conns is the local upstream pool's connection slots (all waiting on a
// follower).
func (s *Stream) Conns() []upstream.ConnStatus { return s.pool.Conns() }

// ServeErr says why subscribers cannot be served yet: until the hub is
// numbered from JetStream, a sequence number would mean nothing on the
// other replicas.
func (s *Stream) ServeErr() error {
	if s.ready.Load() {
		return nil
	}
	if s.node.Solo() {
		return errors.New("history: reading the ring back from the data dir")
	}
	if e := s.setupErr.Load(); e != nil { // also while a rebuild fails
		return errors.New(*e)
	}
	return errors.New("cluster: catching up with the JetStream stream")
}

// ReadyErr holds readiness back while subscribers cannot be served, and on
// a leader that cannot reach NATS: it still reads the upstream, but its
// hits reach nobody until NATS is back.
func (s *Stream) ReadyErr() error {
	if err := s.ServeErr(); err != nil {
		return err
	}
	if s.leaderFlag.Load() && !s.node.Connected() {
		n, _ := s.pub.pending()
		return fmt.Errorf("cluster: this replica leads but cannot reach NATS; %d hits buffered", n)
	}
	return nil
}

// Leader reports whether this replica holds the lease.
func (s *Stream) Leader() bool { return s.leaderFlag.Load() }

// Clustered reports whether the stream takes part in cluster mode (false
// for a single lsmux's own store): status shows its cluster view only
// then.
func (s *Stream) Clustered() bool { return !s.node.Solo() }

// Streaming reports whether the leading replica (this one or another, as
// its lease says) is streaming from Live Stream.
func (s *Stream) Streaming() bool {
	if s.leaderFlag.Load() {
		return s.pool.Streaming()
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.cur.Holder != "" && s.cur.Upstream == string(upstream.StateStreaming) &&
		!s.seenAt.IsZero() && time.Since(s.seenAt) < s.node.opts.LeaseTTL
}

// Status is a stream's cluster view, shown in /v1/status.
type Status struct {
	Replica           string        `json:"replica"`
	Role              string        `json:"role"`   // leader or follower
	Leader            string        `json:"leader"` // the replica holding the lease; "" if none
	LeaderStreaming   bool          `json:"leaderStreaming"`
	LeaseRevision     uint64        `json:"leaseRevision"`
	LeaseTTL          string        `json:"leaseTTL"`
	LeaderChanges     uint64        `json:"leaderChanges"` // times this replica took or lost the lease
	UpstreamAllowedAt time.Time     `json:"upstreamAllowedAt,omitzero"`
	NATS              string        `json:"nats"`
	JetStreamStream   string        `json:"jetstreamStream"`
	JetStreamCreated  time.Time     `json:"jetstreamCreated,omitzero"` // changes if the stream was deleted and created again
	Subject           string        `json:"subject"`
	ConsumedSeq       uint64        `json:"consumedSeq"`
	Ready             bool          `json:"ready"`
	NotReady          string        `json:"notReady,omitempty"`
	Publish           PublishStatus `json:"publish"`
}

// ClusterStatus returns the stream's cluster view.
func (s *Stream) ClusterStatus() Status {
	st := Status{Replica: s.node.opts.Replica, Role: "follower", NATS: s.node.natsState(), JetStreamStream: s.names.Stream,
		Subject: s.names.Subject, ConsumedSeq: s.consumed.Load(), LeaseTTL: s.node.opts.LeaseTTL.String(), Publish: s.pub.status()}
	if s.leaderFlag.Load() {
		st.Role = "leader"
	}
	st.JetStreamCreated = s.streamCreated()
	s.mu.Lock()
	if s.cur.Holder != "" {
		st.Leader = s.cur.Replica
	}
	st.LeaseRevision, st.LeaderChanges, st.UpstreamAllowedAt = s.rev, s.leaderChanges, s.upstreamAllowed
	s.mu.Unlock()
	st.LeaderStreaming = s.Streaming()
	if err := s.ReadyErr(); err != nil {
		st.NotReady = err.Error()
	} else {
		st.Ready = true
	}
	return st
}

// logPrefix names what a message is about: a single lsmux's durable
// history (a data dir) or cluster mode.
func (s *Stream) logPrefix() string {
	if s.solo != nil {
		return "history: "
	}
	return "cluster: "
}
