package cluster

import (
	"context"
	"errors"
	"fmt"
	"math"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"lsmux/internal/wait"
	"lsmux/upstream"
)

// A single lsmux with a data dir runs its stream "solo": no lease (it is
// the only one), the upstream pool runs for the whole life of the process
// once the reconnect delay left over from the previous run has passed
// (state.go), and hits reach the hub from the store's acknowledgements:
// a hit is stored (numbered by JetStream) before any subscriber sees it,
// so a restart numbers on from the store, Adobe's backfill after it is
// recognised by the hit ids JetStream keeps, and no number is ever given
// to two hits.
//
// When the store fails (a full disk, an I/O error) the upstream stays up
// and live subscribers are served from memory: hits are numbered on in
// the hub and kept, up to Options.BufferBytes, to be written once the
// store works again (every StoreRetry it is reopened and tried, when the
// disk has room). Numbers whose hits could not be kept are written as
// placeholders ("lost" records), so the store's numbering never drifts
// from what subscribers were given; a replay reports them as a gap.

// lostHeader marks a placeholder: a number whose hit history lacks.
const lostHeader = "Lsmux-Lost"

// soloState is a solo stream's store and state.
//
// Lock order: wmu before mu; mu is a leaf (never held while calling the
// hub, the pool or NATS).
type soloState struct {
	emb   *Embedded
	state *stateFile
	prev  upstreamState // what the previous run left
	// begun is closed when runSolo has settled the numbering the previous
	// run left (a skip, see openSolo): the publisher waits for it.
	begun     chan struct{}
	beginOnce sync.Once

	// wmu serialises state writes, so the file always ends with the
	// newest state (a heartbeat copied before a reservation must not land
	// after it).
	wmu sync.Mutex

	// Owned by the publisher goroutine: how many numbers the last
	// reservation took, and when (reserve).
	chunk      uint64
	reservedAt time.Time

	failing     atomic.Bool
	storeErrors atomic.Uint64
	lastErr     atomic.Pointer[string]

	mu           sync.Mutex
	cur          upstreamState // what the state file holds (saveState)
	backlog      []numbered    // served from memory, not yet stored
	backlogBytes int64
	lost         uint64 // hits served from memory and dropped before they could be stored
	skipTo       uint64 // numbers up to here must be written as placeholders first
}

// numbered is a hit served from memory under its number.
type numbered struct {
	seq uint64
	m   outMsg
}

// openSolo reads the stream's state and checks that the store still holds
// the stream it had: a store that lost it (damaged, restored from an older
// copy) would renumber from scratch and every subscriber's id would mean a
// different hit.
func (s *Stream) openSolo(ctx context.Context) error {
	e := s.node.embedded
	sf, prev, err := openState(e.Dir(), s.name)
	if err != nil && sf == nil {
		return err
	}
	if err != nil {
		s.log.Warnf("history: %v; waiting the whole reconnect delay before connecting", err)
		prev = upstreamState{Stream: s.name, Ended: time.Now()}
	}
	s.solo = &soloState{emb: e, state: sf, prev: prev, cur: prev, begun: make(chan struct{})}
	cctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	st, err := s.node.js.Stream(cctx, s.names.Stream)
	switch {
	case errors.Is(err, jetstream.ErrStreamNotFound) && !prev.Created.IsZero():
		return fmt.Errorf("LSMUX_DATA_DIR=%s: the store has lost the history of stream %s (created %s): it is damaged or was replaced; move the data dir aside (its history is lost) or restore it, then start again",
			e.Dir(), s.name, prev.Created.Format(time.RFC3339))
	case err == nil && !prev.Created.IsZero() && !st.CachedInfo().Created.Equal(prev.Created):
		return fmt.Errorf("LSMUX_DATA_DIR=%s: the store holds another history of stream %s (created %s, not %s): it was replaced; move the data dir aside or restore it, then start again",
			e.Dir(), s.name, st.CachedInfo().Created.Format(time.RFC3339), prev.Created.Format(time.RFC3339))
	case err != nil && !errors.Is(err, jetstream.ErrStreamNotFound):
		return fmt.Errorf("LSMUX_DATA_DIR=%s: cannot read the store: %w", e.Dir(), err)
	}
	cc, err := s.trySetup(ctx)
	if err != nil {
		return fmt.Errorf("LSMUX_DATA_DIR=%s: %w", e.Dir(), err)
	}
	s.cc = cc
	created := s.streamCreated()
	if err := s.solo.saveState(func(c *upstreamState) { c.Created = created }); err != nil {
		return fmt.Errorf("LSMUX_DATA_DIR=%s: cannot write the stream's state: %w", e.Dir(), err)
	}
	if prev.HandedOut > 0 {
		s.solo.skipTo = prev.HandedOut
	}
	return nil
}

// runSolo warms the ring, waits out what is left of the reconnect delay
// of the previous run, and holds the upstream until ctx ends.
func (s *Stream) runSolo(ctx context.Context) {
	so := s.solo
	defer so.begin() // also when ctx ends first: the publisher then drains
	o := s.node.opts
	// The ring first: until it is warm from disk, a number means nothing.
	for !s.ready.Load() {
		select {
		case <-ctx.Done():
			return
		case <-time.After(10 * time.Millisecond): // polling a flag set by the consumer
		}
	}
	s.cc.Stop() // from now on hits reach the hub from the store's acknowledgements
	s.consumeMu.Lock()
	s.gen++
	s.consumeMu.Unlock()
	if skip := so.skipTo; skip >= s.hub.Stats().Newest+1 {
		// The previous run died while its store failed, having numbered
		// hits up to about skip in memory: start above, and write
		// placeholders for the numbers between.
		s.log.WithField("from", s.hub.Stats().Newest+1).WithField("to", skip).Warn("history: the previous run numbered hits it could not store (its store was failing when it stopped); those numbers are marked lost")
		s.hub.Reset(skip + 1)
		so.failing.Store(true)
		msg := "numbers " + strconv.FormatUint(s.hub.Stats().Newest, 10) + " and below were handed out by the previous run while its store failed"
		so.lastErr.Store(&msg)
	} else if skip > 0 {
		// The store holds those numbers already: nothing to skip.
		if err := so.allStored(); err != nil {
			s.log.Warnf("history: cannot write the stream's state: %v", err)
		}
	}
	so.begin()
	if last := so.prev.lastConnected(o.StateInterval); !last.IsZero() {
		if at := last.Add(o.ReconnectDelay); time.Now().Before(at) {
			s.pool.Hold(at, "waiting out LSMUX_RECONNECT_DELAY: the previous run's upstream connection was open until about "+last.Format(time.RFC3339)+" (from the data dir)")
			s.log.WithField("upstream_at", at.Format(time.RFC3339)).Infof("history: the previous run's upstream connection was open until about %s; connecting in %v", last.Format(time.RFC3339), time.Until(at).Round(time.Second))
			select {
			case <-ctx.Done():
				return
			case <-time.After(time.Until(at)):
			}
		}
	}
	// The first attempt starts now: a run that dies before its first
	// heartbeat must not leave the previous run's times behind, or the
	// next one would connect at once (a crash loop reconnecting on every
	// start).
	if err := so.saveState(func(c *upstreamState) { c.Heartbeat = time.Now() }); err != nil {
		s.log.Warnf("history: cannot record in the data dir that the upstream is connecting: %v", err)
	}
	s.leaderFlag.Store(true)
	beat := make(chan struct{})
	go func() { defer close(beat); s.heartbeat(ctx) }()
	s.pool.Run(ctx, s)
	s.leaderFlag.Store(false)
	<-beat
	if err := so.saveState(func(c *upstreamState) { c.Ended, c.Heartbeat = time.Now(), time.Time{} }); err != nil {
		s.log.Warnf("history: cannot record in the data dir when the upstream closed (%v); the next start waits from its last heartbeat", err)
	}
}

// allStored records that the store holds every number handed out: no
// skip is due and nothing is reserved, in memory and in the data dir.
func (so *soloState) allStored() error {
	return so.saveState(func(c *upstreamState) { c.HandedOut, so.skipTo = 0, 0 }) // saveState holds mu
}

// begin lets the publisher start (once).
func (so *soloState) begin() { so.beginOnce.Do(func() { close(so.begun) }) }

// saveState applies change (if any) to the state, with mu held (so it may
// set other fields mu guards too), and writes it to the data dir.
func (so *soloState) saveState(change func(*upstreamState)) error {
	so.wmu.Lock()
	defer so.wmu.Unlock()
	so.mu.Lock()
	if change != nil {
		change(&so.cur)
	}
	st := so.cur
	so.mu.Unlock()
	return so.state.write(st)
}

// heartbeat records every StateInterval that the upstream may be open
// (runSolo records the start).
func (s *Stream) heartbeat(ctx context.Context) {
	so := s.solo
	beat := func() {
		active := s.upstreamActive()
		err := so.saveState(func(c *upstreamState) {
			if active {
				c.Heartbeat = time.Now()
			} else if !c.Heartbeat.IsZero() {
				c.Ended, c.Heartbeat = time.Now(), time.Time{}
			}
		})
		if err != nil && s.logs.allow("state") {
			s.log.Warnf("history: cannot record the upstream's state in the data dir: %v", err)
		}
	}
	wait.Every(ctx, s.node.opts.StateInterval, beat)
}

// upstreamActive reports whether any upstream slot is connecting or
// streaming (an attempt counts: it is what the 60-second rule is about).
func (s *Stream) upstreamActive() bool {
	for _, c := range s.pool.Conns() {
		if c.State == upstream.StateStreaming || c.State == upstream.StateConnecting {
			return true
		}
	}
	return false
}

// stored puts a hit the store acknowledged into the hub under its number.
func (s *Stream) stored(seq uint64, m outMsg) {
	s.consumeMu.Lock()
	if s.hub.AppendAt(seq, m.data, m.received) {
		s.consumed.Store(seq)
	}
	s.consumeMu.Unlock()
	s.noteStored(seq)
}

// soloPublish is a solo stream's publisher loop: to the store while it
// works, to the hub from memory while it fails.
func (s *Stream) soloPublish(ctx context.Context, drain *atomic.Bool) {
	p, so := s.pub, s.solo
	select {
	case <-so.begun: // failing is settled: a skip left by the previous run sets it
	case <-ctx.Done():
		return
	}
	retry := time.NewTimer(0) // a skip left by the previous run is written at once
	defer retry.Stop()
	if !so.failing.Load() {
		retry.Stop()
	}
	for ctx.Err() == nil {
		if so.failing.Load() {
			s.serveFromMemory(math.MaxInt)
			if drain.Load() {
				s.reportUnstored()
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-p.wake:
			case <-retry.C:
				if s.recoverStore(ctx) {
					continue
				}
				retry.Reset(s.node.opts.StoreRetry)
			}
			continue
		}
		batch, stop := p.next(ctx, drain)
		if stop {
			return
		}
		done, err := p.publish(ctx, batch)
		p.remove(done)
		if err != nil && ctx.Err() == nil {
			s.storeFailed(ctx, err)
			retry.Reset(s.node.opts.StoreRetry)
		}
	}
}

// storeFailed switches to serving from memory. The hits the store took
// before it failed (their acknowledgements may be what was lost) go to
// the hub first, under the numbers the store gave them: read back from
// the store, so a queued hit the store had already (a duplicate, which
// takes no number) cannot shift the numbers of those after it.
func (s *Stream) storeFailed(ctx context.Context, err error) {
	so := s.solo
	so.storeErrors.Add(1)
	msg := storeTrouble(so.emb, err)
	so.lastErr.Store(&msg)
	so.failing.Store(true)
	free := ""
	if b, ferr := so.emb.FreeBytes(); ferr == nil {
		free = fmt.Sprintf("; %s free", formatBytes(b))
	}
	s.log.WithField("data_dir", so.emb.Dir()).Errorf("history: writing to the store failed (%v%s): subscribers keep receiving hits from memory, kept for the store up to LSMUX_NATS_BUFFER_BYTES; free space in the data dir and lsmux writes them and carries on (it tries every %v)",
		err, free, s.node.opts.StoreRetry)
	ictx, cancel := context.WithTimeout(ctx, time.Second)
	defer cancel()
	st, ierr := s.node.js.Stream(ictx, s.names.Stream)
	if ierr != nil {
		return
	}
	last := st.CachedInfo().State.LastSeq
	for next := s.hub.Stats().Newest + 1; next <= last; next++ {
		raw, err := st.GetMsg(ictx, next)
		if err != nil {
			// The store does not answer reads either: take the queue's
			// order for the store's.
			batch := s.pub.peek(1)
			if len(batch) == 0 {
				break
			}
			s.stored(next, batch[0])
			s.pub.remove(1)
			continue
		}
		if raw.Header.Get(lostHeader) != "" {
			s.consumeMu.Lock()
			s.placeholderLocked(next)
			s.consumeMu.Unlock()
			s.noteStored(next)
			continue
		}
		m := outMsg{id: raw.Header.Get(jetstream.MsgIDHeader), data: raw.Data, received: time.Now()}
		if q, ok := s.pub.take(m.id); ok {
			m.received = q.received
		}
		s.stored(next, m)
	}
}

// serveFromMemory numbers up to limit hits the upstream handed over in
// the hub and keeps them for the store, dropping the oldest kept beyond
// the bound. It returns how many it served.
func (s *Stream) serveFromMemory(limit int) int {
	p, so := s.pub, s.solo
	served := 0
	for served < limit {
		batch := p.peek(min(publishBatch, limit-served))
		if len(batch) == 0 {
			return served
		}
		served += len(batch)
		so.mu.Lock()
		reserved := so.cur.HandedOut // changed only by this goroutine from here on
		so.mu.Unlock()
		for _, m := range batch {
			seq := s.hub.Stats().Newest + 1 // only this goroutine appends while the store fails
			if seq > reserved {
				reserved = s.reserve(seq)
			}
			s.consumeMu.Lock()
			s.hub.AppendAt(seq, m.data, m.received)
			s.consumeMu.Unlock()
			so.mu.Lock()
			so.backlog = append(so.backlog, numbered{seq: seq, m: m})
			so.backlogBytes += int64(len(m.data))
			for so.backlogBytes > s.node.opts.BufferBytes && len(so.backlog) > 1 {
				so.backlogBytes -= int64(len(so.backlog[0].m.data))
				so.backlog[0] = numbered{}
				so.backlog = so.backlog[1:]
				so.lost++
			}
			so.mu.Unlock()
		}
		p.remove(len(batch))
	}
	return served
}

// Reservations: how many numbers one takes at least and at most.
const (
	reserveMin = 1000
	reserveMax = 100_000
)

// reserve records in the data dir, before number seq is handed out from
// memory, that numbers up to some way beyond it may be in subscribers'
// hands: a run after a crash starts above them (openSolo), so no number
// ever means two hits. A reservation is a small write and a sync; one
// that follows the last within a second takes twice as many numbers, so
// a fast stream makes few of them. It returns the last number reserved.
func (s *Stream) reserve(seq uint64) uint64 {
	so := s.solo
	switch {
	case so.chunk == 0 || time.Since(so.reservedAt) > time.Second:
		so.chunk = reserveMin
	default:
		so.chunk = min(2*so.chunk, reserveMax)
	}
	so.reservedAt = time.Now()
	to := seq + so.chunk - 1
	if err := so.saveState(func(c *upstreamState) { c.HandedOut = to }); err != nil && s.logs.allow("reserve") {
		s.log.WithField("data_dir", so.emb.Dir()).Errorf("history: cannot record in the data dir how far numbers served from memory go (%v): if lsmux dies before the store works again, the next run may give some of them to other hits", err)
	}
	return to
}

// recoverStore reopens the store when the disk has room and writes what
// was served from memory (placeholders for what could not be kept), in
// number order. Hits arriving meanwhile are served from memory between
// writes and join the backlog, so live subscribers do not wait for it,
// but at most one for every two hits written: the backlog shrinks even
// when hits arrive faster than it is written one by one (the rest wait
// in the queue for the store's batched writes once it is done). It
// reports whether the store works again.
func (s *Stream) recoverStore(ctx context.Context) bool {
	so := s.solo
	if free, err := so.emb.FreeBytes(); err == nil && free < minFreeBytes {
		if s.logs.allow("nospace") {
			s.log.WithField("data_dir", so.emb.Dir()).Warnf("history: the data dir has %s free; waiting for %s before writing to the store again", formatBytes(free), formatBytes(minFreeBytes))
		}
		return false
	}
	if so.storeErrors.Load() > 0 {
		if err := so.emb.Recover(); err != nil {
			s.log.Warnf("history: %v", err)
			return false
		}
	}
	answer := s.node.opts.AckTimeout // bounds each request to the store
	ictx, cancel := context.WithTimeout(ctx, answer)
	st, err := s.node.js.Stream(ictx, s.names.Stream)
	cancel()
	if err != nil {
		s.log.Warnf("history: the store does not answer yet: %v", err)
		return false
	}
	// Each write has its own deadline: a backlog of 200,000 hits takes
	// longer than one.
	put := func(m outMsg, last uint64) error {
		pctx, cancel := context.WithTimeout(ctx, answer)
		defer cancel()
		return s.publishSync(pctx, m, last)
	}
	last := st.CachedInfo().State.LastSeq
	written, served := 0, 0
	for {
		if allow := written/2 - served; allow > 0 {
			served += s.serveFromMemory(allow)
		}
		so.mu.Lock()
		var next numbered
		have := len(so.backlog) > 0
		if have {
			next = so.backlog[0]
		}
		skip := so.skipTo
		so.mu.Unlock()
		target := skip
		if have {
			target = next.seq - 1
		}
		for last < target { // placeholders up to the next kept hit
			if err := put(outMsg{id: "lost-" + strconv.FormatUint(last+1, 10), lost: true}, last); err != nil {
				return s.stillFailing(err)
			}
			last++
		}
		if !have {
			break
		}
		if next.seq <= last {
			// Stored before the failure was noticed.
		} else if err := put(next.m, last); errors.Is(err, errHeld) {
			// The store holds this hit under an earlier number (Adobe's
			// backfill while the store failed): its number here gets a
			// placeholder, and recovery goes on.
			if err := put(outMsg{id: "lost-" + strconv.FormatUint(last+1, 10), lost: true}, last); err != nil {
				return s.stillFailing(err)
			}
			last = next.seq
		} else if err != nil {
			return s.stillFailing(err)
		} else {
			last = next.seq
		}
		s.noteStored(last)
		so.mu.Lock()
		so.backlogBytes -= int64(len(next.m.data))
		so.backlog[0] = numbered{}
		so.backlog = so.backlog[1:]
		so.mu.Unlock()
		written++
	}
	if err := so.allStored(); err != nil {
		return s.stillFailing(fmt.Errorf("write the stream's state: %w", err))
	}
	so.mu.Lock()
	lost := so.lost
	so.mu.Unlock()
	so.failing.Store(false)
	s.noteStored(last)
	s.log.WithField("lost_from_history", lost).Info("history: the store works again; what was served from memory is written to it")
	return true
}

// storeTrouble says what is wrong with the store, for status: a full
// disk by name (the store itself only stops answering).
func storeTrouble(e *Embedded, err error) string {
	if free, ferr := e.FreeBytes(); ferr == nil && free < minFreeBytes {
		return fmt.Sprintf("the data dir's disk is full (%s free in %s): %v", formatBytes(free), e.Dir(), err)
	}
	return err.Error()
}

// minFreeBytes is the free space a full data dir needs before lsmux tries
// its store again.
const minFreeBytes = 16 << 20

// errHeld is publishSync's answer for a hit the store already holds.
var errHeld = errors.New("the store holds this hit already")

// publishSync writes one message that must get number last+1.
func (s *Stream) publishSync(ctx context.Context, m outMsg, last uint64) error {
	msg := &nats.Msg{Subject: s.names.Subject, Data: m.data, Header: nats.Header{}}
	if m.lost {
		msg.Header.Set(lostHeader, "1")
	}
	ack, err := s.node.js.PublishMsg(ctx, msg, jetstream.WithMsgID(m.id), jetstream.WithExpectLastSequence(last))
	if err != nil {
		return err
	}
	if ack.Duplicate {
		return fmt.Errorf("%w (number %d)", errHeld, ack.Sequence)
	}
	if ack.Sequence != last+1 {
		return fmt.Errorf("the store numbered a hit %d, not %d", ack.Sequence, last+1)
	}
	return nil
}

func (s *Stream) stillFailing(err error) bool {
	so := s.solo
	so.storeErrors.Add(1)
	msg := storeTrouble(so.emb, err)
	so.lastErr.Store(&msg)
	if s.logs.allow("recover") {
		s.log.Warnf("history: the store still fails (%v); trying again in %v", err, s.node.opts.StoreRetry)
	}
	return false
}

// reportUnstored says, at shutdown, what served from memory never reached
// the store.
func (s *Stream) reportUnstored() {
	so := s.solo
	so.mu.Lock()
	n := len(so.backlog)
	so.mu.Unlock()
	if n > 0 {
		s.log.WithField("hits", n).Error("history: shutting down while the store fails: hits served from memory were never stored; a resume across them gets a gap notice")
	}
}

func formatBytes(b uint64) string {
	switch {
	case b >= 1<<30:
		return fmt.Sprintf("%.1f GiB", float64(b)/(1<<30))
	case b >= 1<<20:
		return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20))
	}
	return fmt.Sprintf("%d KiB", b>>10)
}
