package cluster

import (
	"context"
	"encoding/json"
	"errors"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"lsmux/upstream"
)

// leaseKey is the lease's key in the stream's bucket.
const leaseKey = "leader"

// leaseValue is what the lease holds. Times are wall-clock times of the
// replica that wrote them; only NotBefore is compared across replicas, and
// it only delays a connection further.
type leaseValue struct {
	Holder   string `json:"holder"` // holder id (replica/nonce); "" once released
	Replica  string `json:"replica,omitempty"`
	Upstream string `json:"upstream,omitempty"` // "streaming" while the holder streams
	// NotBefore is when the holder's upstream was allowed to connect: it
	// inherited a wait from its predecessor, and hands it on.
	NotBefore time.Time `json:"notBefore,omitzero"`
	// Released is set when the holder let go, after its upstream closed
	// (for people reading the bucket; a successor counts the reconnect
	// delay from when it saw the release, on its own clock).
	Released time.Time `json:"released,omitzero"`
}

func (v leaseValue) encode() []byte {
	b, _ := json.Marshal(v)
	return b
}

// term is one spell of leadership. Its context runs the upstream pool and
// is cancelled when the lease is lost, given up, or not renewed in time
// (the fence: the upstream closes before any other replica can take the
// lease).
type term struct {
	ctx       context.Context
	cancel    context.CancelFunc
	fence     *time.Timer
	allowedAt time.Time
	done      chan struct{} // closed once the pool has stopped
	// validUntil is when the fence falls, on the boot clock (sinceBoot):
	// the timer runs on Go's monotonic clock, which stands still while the
	// machine is suspended, so step also compares this.
	validUntil time.Duration
}

// extend moves the fence to a quarter TTL before the lease, renewed at
// sent, can expire.
func (tm *term) extend(sent time.Time, ttl time.Duration) {
	valid := ttl - ttl/4
	tm.validUntil = sinceBoot() - time.Since(sent) + valid
	tm.fence.Reset(valid - time.Since(sent))
}

// elect runs the lease until ctx ends. It owns s.term.
func (s *Stream) elect(ctx context.Context) {
	t := time.NewTicker(s.node.opts.LeaseTTL / 4)
	defer t.Stop()
	for tick := 1; ; tick++ {
		if tick%4 == 0 {
			if lost := s.storageLost(ctx); lost != nil && !s.rebuild(ctx, lost) {
				s.resign()
				return
			}
		}
		s.step(ctx)
		var fenced <-chan struct{}
		if s.term != nil {
			fenced = s.term.ctx.Done()
		}
		select {
		case <-ctx.Done():
			s.resign()
			return
		case <-t.C:
		case <-fenced:
		}
	}
}

func (s *Stream) step(ctx context.Context) {
	kv := *s.kv.Load()
	opCtx, cancel := context.WithTimeout(ctx, s.node.opts.LeaseTTL/4)
	defer cancel()
	if s.term == nil {
		s.observe(opCtx, kv)
		return
	}
	if s.term.ctx.Err() != nil || sinceBoot() > s.term.validUntil {
		s.stepDown("cluster: could not renew the lease for 3/4 of LSMUX_LEASE_TTL (is NATS reachable?); closed the upstream connection so that no other replica's can overlap it")
		return
	}
	s.renew(opCtx, kv)
}

func (s *Stream) renew(ctx context.Context, kv jetstream.KeyValue) {
	tm := s.term
	state := "connecting"
	if time.Now().Before(tm.allowedAt) {
		state = "waiting"
	} else if s.pool.Streaming() {
		state = string(upstream.StateStreaming)
	}
	v := leaseValue{Holder: s.node.id, Replica: s.node.opts.Replica, Upstream: state, NotBefore: tm.allowedAt}
	sent := time.Now()
	rev, err := kv.Update(ctx, leaseKey, v.encode(), s.leaseRev())
	if err == nil {
		tm.extend(sent, s.node.opts.LeaseTTL)
		s.mu.Lock()
		s.rev, s.seenAt, s.cur = rev, sent, v
		s.mu.Unlock()
		return
	}
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || errors.Is(err, jetstream.ErrKeyNotFound) {
		// Either our last renewal was stored but its answer lost, or
		// another replica holds the lease now.
		if e, gerr := kv.Get(ctx, leaseKey); gerr == nil {
			var cur leaseValue
			if json.Unmarshal(e.Value(), &cur) == nil && cur.Holder == s.node.id {
				s.mu.Lock()
				s.rev = e.Revision()
				s.mu.Unlock()
				return
			}
		}
		s.stepDown("cluster: another replica took the lease; closed this replica's upstream connection")
		return
	}
	if s.logs.allow("renew") {
		s.log.Warnf("cluster: cannot renew the lease (%v); the upstream connection closes in %v unless NATS answers", err, max(0, tm.validUntil-sinceBoot()).Round(time.Millisecond))
	}
}

// observe is a follower's look at the lease. The TTL is counted from the
// first time this replica saw the current revision while connected, so a
// replica that cannot see NATS never decides the leader is gone.
func (s *Stream) observe(ctx context.Context, kv jetstream.KeyValue) {
	o := s.node.opts
	e, err := kv.Get(ctx, leaseKey)
	now := time.Now()
	if errors.Is(err, jetstream.ErrKeyNotFound) {
		s.observeMissing(ctx, kv, now)
		return
	}
	if err != nil {
		s.mu.Lock()
		s.seenAt, s.missingSince = time.Time{}, time.Time{} // not watching: the TTL clock starts over
		s.mu.Unlock()
		if s.logs.allow("observe") {
			s.log.Warnf("cluster: cannot read the leader lease (%v); this replica will not take over while it cannot see NATS", err)
		}
		return
	}
	var v leaseValue
	if json.Unmarshal(e.Value(), &v) != nil {
		v = leaseValue{Holder: "unreadable lease value", Replica: "?"}
	}
	// NotBefore is the other replica's clock. An honest one is never
	// further ahead than a TTL and a reconnect delay; one from a clock
	// that runs ahead would otherwise keep every successor waiting, with
	// no upstream, for as long as that clock is off.
	if limit := now.Add(o.LeaseTTL + o.ReconnectDelay); v.NotBefore.After(limit) {
		if s.logs.allow("notbefore") {
			s.log.Warnf("cluster: the lease says replica %s's upstream may not connect before %s, %v from now, more than LSMUX_LEASE_TTL plus LSMUX_RECONNECT_DELAY: its clock is probably ahead of this one's (check NTP on both); waiting %v at most",
				v.Replica, v.NotBefore.Format(time.RFC3339), v.NotBefore.Sub(now).Round(time.Second), limit.Sub(now))
		}
		v.NotBefore = limit
	}
	s.mu.Lock()
	s.missingSince = time.Time{}
	newHolder := false
	if e.Revision() != s.rev || s.seenAt.IsZero() {
		newHolder = v.Holder != s.cur.Holder
		s.rev, s.seenAt, s.cur = e.Revision(), now, v
		if v.Holder != "" && v.Holder != s.node.id {
			s.otherUntil = now.Add(o.LeaseTTL) // its upstream may stay open that long
		}
	}
	seenAt := s.seenAt
	s.mu.Unlock()
	if newHolder && v.Holder != "" && v.Holder != s.node.id {
		s.pool.Hold(time.Time{}, "follower: replica "+v.Replica+" holds the upstream")
	}
	switch {
	case v.Holder == s.node.id:
		// Ours, from before a fence: nobody took it meanwhile.
		s.take(ctx, kv, e.Revision(), s.allowedAfter(v.NotBefore), "this replica's own lease, after a lapse")
	case v.Holder == "":
		// The holder closed its upstream before it wrote the release, so
		// before this replica first saw it.
		s.mu.Lock()
		s.otherUntil = time.Time{}
		s.mu.Unlock()
		s.take(ctx, kv, e.Revision(), s.allowedAfter(seenAt.Add(o.ReconnectDelay), v.NotBefore), "released by replica "+v.Replica)
	case now.Sub(seenAt) >= o.LeaseTTL:
		s.take(ctx, kv, e.Revision(), s.allowedAfter(seenAt.Add(o.LeaseTTL+o.ReconnectDelay), v.NotBefore),
			"replica "+v.Replica+" did not renew the lease for LSMUX_LEASE_TTL")
	}
}

// observeMissing handles a lease key that does not exist: never created,
// or deleted, purged or lost with NATS's storage while a leader may still
// hold the upstream (it finds out at its next renewal). So the key must
// stay missing for a whole TTL while this replica watches before it takes
// the lease, and the reconnect delay follows. That holds for a bucket that
// never held anything too: it is also what a fleet restarted on a NATS
// that lost its storage finds, seconds after the old upstream closed. A
// brand-new cluster pays one reconnect delay for it.
func (s *Stream) observeMissing(ctx context.Context, kv jetstream.KeyValue, now time.Time) {
	o := s.node.opts
	s.mu.Lock()
	if s.missingSince.IsZero() {
		s.missingSince = now
	}
	since, other := s.missingSince, s.otherUntil
	s.mu.Unlock()
	if now.Sub(since) < o.LeaseTTL {
		return
	}
	after := since.Add(o.ReconnectDelay)
	if !other.IsZero() {
		after = maxTime(after, other.Add(o.ReconnectDelay))
	}
	s.take(ctx, kv, 0, s.allowedAfter(after), "no replica held the lease")
}

func maxTime(a, b time.Time) time.Time {
	if a.After(b) {
		return a
	}
	return b
}

// allowedAfter is when this replica's upstream may connect: not before the
// given times, nor sooner than the reconnect delay after its own last
// connection closed.
func (s *Stream) allowedAfter(times ...time.Time) time.Time {
	s.mu.Lock()
	at := time.Now()
	if !s.lastClose.IsZero() {
		at = s.lastClose.Add(s.node.opts.ReconnectDelay)
	}
	s.mu.Unlock()
	for _, t := range times {
		if t.After(at) {
			at = t
		}
	}
	return at
}

// take tries to become the leader: create the lease (rev 0) or replace
// revision rev. Only one replica can win a revision.
func (s *Stream) take(ctx context.Context, kv jetstream.KeyValue, rev uint64, allowedAt time.Time, why string) {
	v := leaseValue{Holder: s.node.id, Replica: s.node.opts.Replica, Upstream: "waiting", NotBefore: allowedAt}
	sent := time.Now()
	var err error
	var newRev uint64
	if rev == 0 {
		newRev, err = kv.Create(ctx, leaseKey, v.encode())
	} else {
		newRev, err = kv.Update(ctx, leaseKey, v.encode(), rev)
	}
	if err != nil {
		if !errors.Is(err, jetstream.ErrKeyExists) && !errors.Is(err, jetstream.ErrKeyRevisionMismatch) && s.logs.allow("take") {
			s.log.Warnf("cluster: could not take the lease: %v", err)
		}
		return // another replica was quicker, or NATS did not answer
	}
	s.mu.Lock()
	s.rev, s.seenAt, s.cur = newRev, sent, v
	s.leaderChanges++
	s.upstreamAllowed = allowedAt
	s.mu.Unlock()

	tctx, cancel := context.WithCancel(context.Background())
	tm := &term{ctx: tctx, cancel: cancel, allowedAt: allowedAt, done: make(chan struct{})}
	tm.fence = time.AfterFunc(time.Hour, cancel)
	tm.extend(sent, s.node.opts.LeaseTTL)
	s.term = tm
	s.leaderFlag.Store(true)
	s.log.WithField("why", why).WithField("upstream_at", allowedAt.Format(time.RFC3339)).
		Infof("cluster: this replica now leads; the upstream connects in %v", max(0, time.Until(allowedAt)).Round(time.Millisecond))
	go s.lead(tm)
}

// lead runs the upstream for one term, after waiting until it is allowed.
func (s *Stream) lead(tm *term) {
	defer close(tm.done)
	if wait := time.Until(tm.allowedAt); wait > 0 {
		s.pool.Hold(tm.allowedAt, "new leader: waiting out LSMUX_RECONNECT_DELAY after the previous upstream connection")
		t := time.NewTimer(wait)
		select {
		case <-tm.ctx.Done():
			t.Stop()
			return
		case <-t.C:
		}
	}
	s.pool.Run(tm.ctx, s)
	s.mu.Lock()
	s.lastClose = time.Now()
	s.mu.Unlock()
}

// stopTerm closes the upstream and waits until it is closed.
func (s *Stream) stopTerm() *term {
	tm := s.term
	tm.fence.Stop()
	tm.cancel()
	<-tm.done
	s.term = nil
	s.leaderFlag.Store(false)
	return tm
}

func (s *Stream) stepDown(why string) {
	s.stopTerm()
	s.mu.Lock()
	s.leaderChanges++
	s.seenAt, s.missingSince = time.Time{}, time.Time{}
	s.mu.Unlock()
	s.pool.Hold(time.Time{}, "follower: lost the lease")
	s.log.Warn(why)
}

// resign gives the lease up at shutdown, after the upstream has closed,
// so a follower takes over at once (waiting only the reconnect delay)
// instead of after the TTL.
func (s *Stream) resign() {
	if s.term == nil {
		return
	}
	if s.term.ctx.Err() == nil && sinceBoot() < s.term.validUntil {
		// Renew once more first: closing the upstream can take a while
		// on a busy machine, and a follower must see the release, not a
		// lease that looks expired, to take over after only the
		// reconnect delay.
		ctx, cancel := context.WithTimeout(context.Background(), s.node.opts.LeaseTTL/4)
		s.renew(ctx, *s.kv.Load())
		cancel()
		if s.term == nil {
			return // renew found another replica holding it, and stepped down
		}
	}
	tm := s.stopTerm()
	v := leaseValue{Replica: s.node.opts.Replica, Released: time.Now(), NotBefore: tm.allowedAt}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	if _, err := (*s.kv.Load()).Update(ctx, leaseKey, v.encode(), s.leaseRev()); err != nil {
		s.log.Warnf("cluster: could not release the lease (%v); another replica takes over after LSMUX_LEASE_TTL", err)
		return
	}
	s.log.Info("cluster: upstream closed and lease released")
}

func (s *Stream) leaseRev() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.rev
}
