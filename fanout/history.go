package fanout

import (
	"errors"
	"slices"
	"time"

	"golang.org/x/time/rate"
)

// History is where a hub's hits older than its ring are kept: durable
// history (JetStream, embedded with LSMUX_DATA_DIR or the cluster's). A
// subscriber whose cursor is older than the ring, but still in history,
// reads on from there instead of getting a gap notice, then moves on to
// the ring without a seam: numbers are the same in both.
type History interface {
	// Range is the numbers history holds, first to last (first > last:
	// none). Called often: it must not wait for I/O.
	Range() (first, last uint64)
	// Replay starts reading history from number from on. The caller
	// closes what it returns.
	Replay(from uint64) Replay
}

// Replay is one subscriber's read of history. Its reading ahead is
// bounded (it holds a few hundred records at most), so memory per
// replaying subscriber is bounded however far back it started.
type Replay interface {
	// Next returns the records read so far, in order, without waiting
	// (the slice is the caller's until the next call). When none is
	// ready, wake is closed (or sent on) when some are. err ends the
	// replay: history cannot be read from here.
	Next() (recs []Record, wake <-chan struct{}, err error)
	Close()
}

// Record is one number from history. Lost marks a number history holds
// no hit for (a hit served from memory while the store was failing, then
// dropped before it could be written).
type Record struct {
	Seq  uint64
	Raw  []byte
	At   time.Time // when it was stored
	Lost bool
}

// ErrReplaysBusy refuses a subscription that would read history while
// MaxReplays subscribers already do (503 with Retry-After).
var ErrReplaysBusy = errors.New("too many subscribers are reading history older than the ring")

// SetHistory gives the hub its durable history, read by at most
// maxReplays subscribers at once (at least 1), at most rate hits a second
// between them (0: unlimited). Call it before the hub has subscribers.
//
// The rate is what keeps a replay on its own budget: reading, encoding
// and writing a hit from history costs about as much as a live delivery,
// and a replay runs as fast as its client reads, so without a bound a
// pipeline catching up would take the cores live subscribers and the
// upstream reader need.
func (h *Hub) SetHistory(hist History, maxReplays int, rate float64) {
	h.hist = hist
	h.replays = make(chan struct{}, max(maxReplays, 1))
	if rate > 0 {
		h.replayRate = newReplayRate(rate)
	}
}

func newReplayRate(r float64) *rate.Limiter {
	return rate.NewLimiter(rate.Limit(r), max(MaxBatch, int(r/10)))
}

// replayBudget is how many hits the replays may take now (up to want),
// or, when none, a channel closed when to ask again. What is taken is
// charged with replayTaken.
func (h *Hub) replayBudget(want int) (int, <-chan struct{}) {
	if h.replayRate == nil {
		return want, nil
	}
	now := time.Now()
	if avail := int(h.replayRate.TokensAt(now)); avail > 0 {
		return min(want, avail), nil
	}
	r := h.replayRate.ReserveN(now, 1)
	d := r.DelayFrom(now)
	r.CancelAt(now)
	later := make(chan struct{})
	time.AfterFunc(max(d, time.Millisecond), func() { close(later) })
	return 0, later
}

func (h *Hub) replayTaken(n int) {
	if h.replayRate != nil && n > 0 {
		h.replayRate.AllowN(time.Now(), n)
	}
}

// NeedsHistory reports whether a subscriber starting at from (a number
// from Start) would read history older than the ring.
func (h *Hub) NeedsHistory(from uint64) bool {
	if h.hist == nil || from >= h.oldest.Load() {
		return false
	}
	first, last := h.hist.Range()
	return first <= last && from <= last
}

// Open subscribes like SubscribeWith, holding a replay slot from the
// start when from is older than the ring: ErrReplaysBusy when none is
// free (nothing is subscribed then).
func (h *Hub) Open(from uint64, info Info, sel *Selector, lim Limits) (*Subscriber, error) {
	start := h.Start(from)
	slot := false
	if h.NeedsHistory(start) {
		if !h.takeReplay() {
			h.replaysRefused.Add(1)
			return nil, ErrReplaysBusy
		}
		slot = true
	}
	s := h.SubscribeWith(start, info, sel, lim)
	s.replaySlot = slot
	return s, nil
}

// ReplayStats is what status and metrics show of replays.
type ReplayStats struct {
	Running, Max int
	Refused      uint64
}

// ReplayStats counts replays running and refused.
func (h *Hub) ReplayStats() ReplayStats {
	if h.replays == nil {
		return ReplayStats{}
	}
	return ReplayStats{Running: len(h.replays), Max: cap(h.replays), Refused: h.replaysRefused.Load()}
}

func (h *Hub) takeReplay() bool {
	select {
	case h.replays <- struct{}{}:
		return true
	default:
		return false
	}
}

// historyStart is where Oldest starts with history: its first number,
// when that is older than the ring.
func (h *Hub) historyStart(oldest uint64) uint64 {
	if h.hist == nil {
		return oldest
	}
	if first, last := h.hist.Range(); first <= last && first < oldest {
		return first
	}
	return oldest
}

// read returns what follows from: from history while from is older than
// the ring (and history has it), from the ring otherwise.
func (s *Subscriber) read(from uint64, maxBytes int, size func(*Entry) int) (entries []*Entry, next uint64, gap *Gap, wake <-chan struct{}) {
	h := s.hub
	if h.hist != nil && from < h.oldest.Load() {
		if entries, next, gap, wake, ok := s.readHistory(from, maxBytes, size); ok {
			return entries, next, gap, wake
		}
		s.endReplay() // history cannot serve from: its slot, if taken, goes back
	} else if s.replay != nil || s.replaySlot {
		s.endReplay() // caught up with the ring
	}
	entries, next, gap, wake = h.Read(from, s.buf, maxBytes, size)
	return entries, next, gap, wake
}

// readHistory reads from history. ok is false when history cannot serve
// from (it does not hold it, no replay slot is free, or the replay
// failed): the ring then answers, with a gap notice for what it lacks.
func (s *Subscriber) readHistory(from uint64, maxBytes int, size func(*Entry) int) (entries []*Entry, next uint64, gap *Gap, wake <-chan struct{}, ok bool) {
	h := s.hub
	first, last := h.hist.Range()
	if first > last || from > last {
		return nil, 0, nil, nil, false
	}
	if from < first {
		gap, from = &Gap{From: from, To: first - 1}, first
		if from >= h.oldest.Load() { // history's start is in the ring: read the ring
			s.endReplay()
			entries, next, more, wake := h.Read(from, s.buf, maxBytes, size)
			if more != nil {
				gap.To = more.To
			}
			return entries, next, gap, wake, true
		}
	}
	if s.replay == nil {
		if !s.replaySlot && !h.takeReplay() {
			return nil, 0, nil, nil, false
		}
		s.replaySlot = true
		s.replay, s.recs, s.served = h.hist.Replay(from), nil, s.served[:0]
	}
	if n := len(s.served); n > 0 {
		if s.served[n-1].Seq >= from {
			// Poll did not take all the last read gave: those records
			// are read again (history has already handed them over).
			i := 0
			for s.served[i].Seq < from {
				i++
			}
			s.recs = append(slices.Clone(s.served[i:]), s.recs...)
		}
		s.served = s.served[:0]
	}
	budget, later := h.replayBudget(cap(s.buf))
	if budget == 0 {
		if gap != nil {
			return nil, from, gap, nil, true
		}
		return nil, from, nil, later, true
	}
	entries = s.buf[:0]
	taken := 0
	for len(entries) < budget {
		if len(s.recs) == 0 {
			var err error
			s.recs, wake, err = s.replay.Next()
			if err != nil {
				s.endReplay()
				if len(entries) == 0 && gap == nil {
					return nil, 0, nil, nil, false
				}
				h.replayTaken(len(entries))
				return entries, from, gap, nil, true
			}
			if len(s.recs) == 0 {
				break
			}
			wake = nil
		}
		r := s.recs[0]
		if r.Seq < from {
			s.recs = s.recs[1:]
			continue // read ahead of a gap already told
		}
		if r.Seq > from || r.Lost {
			to := r.Seq - 1
			if r.Lost {
				to = r.Seq
			}
			if len(entries) > 0 {
				break // deliver what precedes the hole first
			}
			if gap == nil {
				gap = &Gap{From: from, To: to}
			} else {
				gap.To = to
			}
			from = to + 1
			if r.Lost {
				s.recs = s.recs[1:]
			}
			continue
		}
		e := newEntry(r.Seq, r.Raw, r.At)
		e.replayed = true
		if len(entries) > 0 && taken+size(e) > maxBytes {
			break
		}
		taken += size(e)
		entries = append(entries, e)
		s.served = append(s.served, r)
		s.recs = s.recs[1:]
		from = r.Seq + 1
	}
	h.replayTaken(len(entries))
	if len(entries) > 0 || gap != nil {
		wake = nil
	}
	return entries, from, gap, wake, true
}

// endReplay closes the subscriber's replay and gives its slot back.
func (s *Subscriber) endReplay() {
	if s.replay != nil {
		s.replay.Close()
		s.replay, s.recs, s.served = nil, nil, nil
	}
	if s.replaySlot {
		<-s.hub.replays
		s.replaySlot = false
	}
}
