package cluster

import (
	"context"
	"errors"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"lsmux/fanout"
	"lsmux/internal/wait"
)

// A stream's JetStream stream is its durable history (DESIGN.md §7): a
// subscriber whose resume point is older than the local ring reads it
// from JetStream, the embedded store of a single lsmux or the cluster's,
// on any replica.

// streamHistory is a Stream's JetStream stream as fanout.History.
type streamHistory struct{ s *Stream }

var _ fanout.History = streamHistory{}

// Range is what JetStream held when last seen (the first number as of the
// last look at the stream, refreshed every few seconds; the last one as
// of the last hit stored or read). A first number that moved on since is
// found out by the replay, which then reports the gap.
func (h streamHistory) Range() (first, last uint64) {
	first, last = h.s.histFirst.Load(), h.s.histLast.Load()
	if first == 0 {
		return 1, 0
	}
	return first, last
}

// replayBuffer is how many records a replay reads ahead; replayPull how
// many it asks JetStream for at once. Together they bound a replaying
// subscriber's memory to under a thousand hits (about 1 MiB of typical
// ones), however far back it is; 512 at once replays ~120,000 hits/s on
// one core where 128 did ~80,000 (BenchmarkReplayFromHistory).
const (
	replayBuffer = 256
	replayPull   = 512
)

// Replay reads the JetStream stream from number from on, through an
// ordered consumer (JetStream's own: in order, each number once,
// recreated by the client after trouble) in a goroutine of its own.
func (h streamHistory) Replay(from uint64) fanout.Replay {
	ctx, cancel := context.WithCancel(context.Background())
	r := &jsReplay{cancel: cancel, recs: make(chan fanout.Record, replayBuffer), wake: make(chan struct{}, 1), done: make(chan struct{})}
	go r.run(ctx, h.s, from)
	return r
}

// failed logs why a replay could not go on (the subscriber then gets a
// gap notice for what the ring lacks).
func (s *Stream) replayFailed(from uint64, err error) {
	if s.logs.allow("replay") {
		s.log.WithField("from", from).Warnf("history: reading history for a subscriber failed: %v (it gets a gap notice for what the ring lacks)", err)
	}
}

// jsReplay is one subscriber's read of the JetStream stream.
type jsReplay struct {
	cancel context.CancelFunc
	recs   chan fanout.Record
	wake   chan struct{}
	done   chan struct{}
	buf    []fanout.Record // owned by the subscriber's goroutine

	mu  sync.Mutex
	it  jetstream.MessagesContext
	err error
}

func (r *jsReplay) run(ctx context.Context, s *Stream, from uint64) {
	// done is closed before the last poke: a subscriber woken by it must
	// find the replay over, not wait for a wake-up that never comes.
	defer r.poke()
	defer close(r.done)
	cons, err := s.node.replayJS.OrderedConsumer(ctx, s.names.Stream, jetstream.OrderedConsumerConfig{
		DeliverPolicy: jetstream.DeliverByStartSequencePolicy, OptStartSeq: from,
		InactiveThreshold: s.node.opts.IdleConsumer,
	})
	if err != nil {
		s.replayFailed(from, err)
		r.fail(err)
		return
	}
	it, err := cons.Messages(jetstream.PullMaxMessages(replayPull))
	if err != nil {
		s.replayFailed(from, err)
		r.fail(err)
		return
	}
	r.mu.Lock()
	r.it = it
	stopped := ctx.Err() != nil
	r.mu.Unlock()
	if stopped {
		it.Stop()
		return
	}
	for {
		m, err := it.Next()
		if err != nil {
			if !errors.Is(err, jetstream.ErrMsgIteratorClosed) {
				s.replayFailed(from, err)
				r.fail(err)
			}
			return
		}
		md, err := m.Metadata()
		if err != nil {
			continue
		}
		rec := fanout.Record{Seq: md.Sequence.Stream, Raw: m.Data(), At: md.Timestamp, Lost: m.Headers().Get(lostHeader) != ""}
		select {
		case r.recs <- rec:
			r.poke()
		case <-ctx.Done():
			return
		}
	}
}

func (r *jsReplay) poke() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

func (r *jsReplay) fail(err error) {
	r.mu.Lock()
	r.err = err
	r.mu.Unlock()
}

// Next hands over the records read ahead, without waiting.
func (r *jsReplay) Next() ([]fanout.Record, <-chan struct{}, error) {
	r.buf = r.buf[:0]
	for len(r.buf) < replayBuffer {
		select {
		case rec := <-r.recs:
			r.buf = append(r.buf, rec)
			continue
		default:
		}
		break
	}
	if len(r.buf) > 0 {
		return r.buf, nil, nil
	}
	select {
	case <-r.done:
		r.mu.Lock()
		err := r.err
		r.mu.Unlock()
		if err == nil {
			err = errors.New("history: the replay ended")
		}
		return nil, nil, err
	default:
	}
	return nil, r.wake, nil
}

// Close stops the read and waits for its goroutine.
func (r *jsReplay) Close() {
	r.cancel()
	r.mu.Lock()
	if r.it != nil {
		r.it.Stop()
	}
	r.mu.Unlock()
	<-r.done
}

// histInfo is the JetStream stream's size, for status and metrics.
type histInfo struct {
	msgs, bytes uint64
	first, last uint64
	oldest      time.Time
	at          time.Time
}

// noteInfo records what a look at the JetStream stream found; setup
// passes exact (the stream may be a new one, numbered lower), the periodic
// look does not (a hit stored since is newer than what it saw).
func (s *Stream) noteInfo(info *jetstream.StreamInfo, exact bool) {
	st := info.State
	s.histInfo.Store(&histInfo{msgs: st.Msgs, bytes: st.Bytes, first: st.FirstSeq, last: st.LastSeq, oldest: st.FirstTime, at: time.Now()})
	if st.Msgs == 0 {
		s.histFirst.Store(st.LastSeq + 1)
	} else {
		s.histFirst.Store(st.FirstSeq)
	}
	if exact {
		s.histLast.Store(st.LastSeq)
		return
	}
	s.noteStored(st.LastSeq)
}

// noteStored records that the JetStream stream holds seq.
func (s *Stream) noteStored(seq uint64) {
	for {
		cur := s.histLast.Load()
		if seq <= cur || s.histLast.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// historyRefresh is how often the JetStream stream's size is read again.
const historyRefresh = 5 * time.Second

// watchHistory keeps the JetStream stream's size and first number fresh
// until ctx ends.
func (s *Stream) watchHistory(ctx context.Context) {
	wait.Every(ctx, historyRefresh, func() {
		if !s.node.Connected() {
			return
		}
		ictx, cancel := context.WithTimeout(ctx, historyRefresh)
		st, err := s.node.js.Stream(ictx, s.names.Stream)
		cancel()
		if err == nil {
			s.noteInfo(st.CachedInfo(), false)
		}
	})
}

// HistoryStatus is the stream's durable history for status and metrics.
func (s *Stream) HistoryStatus() HistoryStatus {
	o := s.node.opts
	st := HistoryStatus{Store: "cluster", MaxAge: o.MaxAge.String(), MaxBytes: o.MaxBytes}
	if s.solo != nil {
		st.Store, st.Dir = "embedded", s.solo.emb.Dir()
		st.StoreErrors = s.solo.storeErrors.Load()
		st.Failing = s.solo.failing.Load()
		if e := s.solo.lastErr.Load(); e != nil && (st.Failing || st.StoreErrors > 0) {
			st.LastError = *e
		}
		s.solo.mu.Lock()
		st.HeldInMemory, st.LostFromHistory = len(s.solo.backlog), s.solo.lost
		s.solo.mu.Unlock()
	}
	if hi := s.histInfo.Load(); hi != nil {
		st.Hits, st.Bytes, st.Oldest = hi.msgs, hi.bytes, hi.oldest
	}
	st.FirstSeq, st.LastSeq = streamHistory{s}.Range()
	st.DuplicatesDropped = s.pub.duplicates.Load()
	rs := s.hub.ReplayStats()
	st.ReplaysRunning, st.MaxReplays, st.ReplaysRefused = rs.Running, rs.Max, rs.Refused
	return st
}
