// Package fanout is lsmux's hub: it numbers every hit, keeps the recent
// ones in a bounded ring, and lets any number of subscribers read the ring
// through their own cursor. The upstream side never waits for a
// subscriber; a subscriber that falls off the end of the ring is told what
// it missed (a gap) and goes on from the oldest hit still held.
package fanout

import (
	"sync"
	"sync/atomic"
	"time"

	"lsmux/internal/persec"

	"golang.org/x/time/rate"
)

// Options size a Hub.
type Options struct {
	// MaxHits and MaxBytes bound the ring; the oldest hits are dropped
	// when either is exceeded. Bytes count every wire encoding of a hit.
	MaxHits  int
	MaxBytes int64
	// FirstSeq is the first sequence number. Zero means the current time
	// in microseconds, so numbers never repeat across restarts (as long as
	// a run averages under a million hits a second) and stay below
	// JavaScript's 2^53 until the year 2255.
	FirstSeq uint64
	// MaxAhead lets a subscriber start up to this many numbers beyond the
	// next hit, or beyond the horizon (SetHorizon), and wait for it,
	// instead of getting a gap notice. Cluster mode sets it: numbers are
	// shared by all replicas, and a subscriber that moves from a replica
	// ahead to one behind must neither be told of a gap nor sent what it
	// already has.
	MaxAhead uint64
	// WakeDelay (LSMUX_WRITE_DELAY) gathers hits before waking the
	// subscribers waiting at the live edge: the first hit after a quiet
	// moment wakes them WakeDelay later, with everything that arrived
	// meanwhile. A subscriber then writes once per WakeDelay at most,
	// whatever the hit rate and however the upstream flushes, for at most
	// WakeDelay of latency. Zero wakes them at every hit.
	WakeDelay time.Duration
}

// Defaults: a few minutes of a busy stream (1,000 hits/s of ~1.5 KB hits
// is ~4.5 MB/s once encoded three ways).
const (
	DefaultMaxHits  = 200_000
	DefaultMaxBytes = 512 << 20
)

// Gap tells a subscriber that hits From..To (inclusive) are lost to it.
type Gap struct{ From, To uint64 }

// Hub is one stream's ring of recent hits.
//
// Readers never take a lock the writer needs: the ring is a fixed array of
// atomic pointers indexed by sequence number, published by storing next
// after the entry. A subscriber's goroutine that is descheduled in the
// middle of a read (thousands of them on two cores) therefore cannot hold
// up Append, which is what "the upstream reader never waits for a
// subscriber" requires.
//
// Locks, each held only inside one function and never during I/O:
//   - wmu: producers (the pool's connection slots, or cluster mode's
//     consumer) serialise on it in Append, AppendAt and Reset. Callers may
//     hold their own lock around these calls (cluster's consumeMu), never
//     the other way round.
//   - dmu (select.go): the derived window, taken only by subscribers with
//     selectors, never together with wmu.
//   - subs.mu (subscriber.go): the registry, never together with the
//     others.
//   - parking.pmu (park.go): the parked subscribers, never together with
//     the others.
type Hub struct {
	maxHits  int
	maxBytes int64
	maxAhead uint64
	// wakeDelay and wakeTimer gather wake-ups (Options.WakeDelay);
	// wakeArmed is set while wakeTimer will fire.
	wakeDelay time.Duration
	wakeTimer *time.Timer
	wakeArmed atomic.Bool

	wmu   sync.Mutex // producers only
	ring  []atomic.Pointer[Entry]
	bytes int64 // guarded by wmu

	horizon atomic.Uint64 // highest number known to exist elsewhere (cluster mode)
	stale   atomic.Uint64 // numbers up to here may be from before a renumbering (Reset downwards)
	oldest  atomic.Uint64 // seq of the oldest entry held (== next when empty)
	next    atomic.Uint64 // seq the next Append gets; entries below it are published
	held    atomic.Int64  // bytes held, for Stats

	wake    atomic.Pointer[chan struct{}] // closed by Append when someone waits
	waiting atomic.Bool
	parking parking // subscribers waiting without a goroutine (park.go)
	closed  chan struct{}
	close1  sync.Once

	// The derived window (see select.go).
	dmu  sync.Mutex
	dwin []*Entry
	dpos int

	appended  atomic.Uint64
	evicted   atomic.Uint64
	delivered atomic.Uint64 // hits handed to subscribers, all of them
	gaps      atomic.Uint64 // gap notices, to all subscribers ever
	lost      atomic.Uint64 // hits those notices said were lost
	// in and out count appended and delivered hits per second, for the
	// dashboard's chart of the last minutes.
	in, out *persec.Counter
	subs    registry

	// Durable history (history.go): set before the hub has subscribers.
	hist           History
	replays        chan struct{} // one token per subscriber reading history
	replayRate     *rate.Limiter // hits a second all replays may read; nil: unlimited
	replaysRefused atomic.Uint64
}

// ThroughputWindow is how far back Throughput reaches.
const ThroughputWindow = 5 * time.Minute

// NewHub returns an empty hub.
func NewHub(o Options) *Hub {
	if o.MaxHits <= 0 {
		o.MaxHits = DefaultMaxHits
	}
	if o.MaxBytes <= 0 {
		o.MaxBytes = DefaultMaxBytes
	}
	first := o.FirstSeq
	if first == 0 {
		first = uint64(time.Now().UnixMicro())
	}
	h := &Hub{
		maxHits:   o.MaxHits,
		maxBytes:  o.MaxBytes,
		maxAhead:  o.MaxAhead,
		wakeDelay: o.WakeDelay,
		ring:      make([]atomic.Pointer[Entry], o.MaxHits),
		closed:    make(chan struct{}),
		subs:      registry{subs: map[uint64]*Subscriber{}},
		in:        persec.New(int(ThroughputWindow/time.Second), time.Now()),
		out:       persec.New(int(ThroughputWindow/time.Second), time.Now()),
	}
	h.oldest.Store(first)
	h.next.Store(first)
	w := make(chan struct{})
	h.wake.Store(&w)
	if h.wakeDelay > 0 {
		h.wakeTimer = time.AfterFunc(time.Hour, h.wakeNow)
		h.wakeTimer.Stop()
	}
	return h
}

func (h *Hub) slot(seq uint64) *atomic.Pointer[Entry] { return &h.ring[seq%uint64(len(h.ring))] }

// Append numbers a hit and adds it to the ring, evicting the oldest hits
// beyond the bounds. It never waits for a subscriber. raw is copied (into
// the entry's encodings), so the caller may reuse it. Safe for concurrent
// use.
func (h *Hub) Append(raw []byte, received time.Time) uint64 {
	h.wmu.Lock()
	seq := h.next.Load()
	h.storeLocked(newEntry(seq, raw, received))
	h.wmu.Unlock()
	h.published()
	return seq
}

// AppendAt adds a hit whose sequence number was given elsewhere: in
// cluster mode it is the JetStream stream sequence, the same on every
// replica, so a subscriber can resume on another replica. A number at or
// below one already held is ignored (false). A number beyond the next one
// means hits were lost to this replica (JetStream discarded them before
// it read them): everything held is dropped and subscribers get a gap
// notice, because the ring holds only a contiguous range.
func (h *Hub) AppendAt(seq uint64, raw []byte, received time.Time) bool {
	h.wmu.Lock()
	next := h.next.Load()
	if seq < next {
		h.wmu.Unlock()
		return false
	}
	if seq > next {
		h.resetLocked(seq)
	}
	h.storeLocked(newEntry(seq, raw, received))
	h.wmu.Unlock()
	h.published()
	return true
}

// Reset drops every hit held and numbers the next hit next. Cluster mode
// calls it at start, to continue from the JetStream stream's sequence, and
// when that stream's numbering started over (it was deleted or lost): then
// every subscriber ahead of the new numbers gets a gap notice.
func (h *Hub) Reset(next uint64) {
	h.wmu.Lock()
	if cur := h.next.Load(); next != cur {
		if next < cur {
			// Any cursor a subscriber may hold now is from the old
			// numbering, also one allowed to wait beyond it.
			h.stale.Store(max(h.stale.Load(), max(cur, h.horizon.Load())+h.maxAhead))
			h.horizon.Store(0)
		}
		h.resetLocked(next)
	}
	h.wmu.Unlock()
}

// SetHorizon records that numbers up to seq exist (JetStream told this
// replica so), so a subscriber may wait for them.
func (h *Hub) SetHorizon(seq uint64) {
	for {
		cur := h.horizon.Load()
		if seq <= cur || h.horizon.CompareAndSwap(cur, seq) {
			return
		}
	}
}

// resetLocked empties the ring. A reader that raced it finds a nil or
// renumbered slot, stops, and its next Read reports the gap.
func (h *Hub) resetLocked(next uint64) {
	oldest, end := h.oldest.Load(), h.next.Load()
	for s := oldest; s < end; s++ {
		h.slot(s).Store(nil)
		h.evicted.Add(1)
	}
	h.bytes = 0
	h.held.Store(0)
	// Readers load oldest, then next: keep oldest <= next at every step.
	if next >= end {
		h.next.Store(next)
		h.oldest.Store(next)
	} else {
		h.oldest.Store(next)
		h.next.Store(next)
	}
}

// storeLocked adds e (numbered next) and evicts what no longer fits.
// Caller holds wmu.
func (h *Hub) storeLocked(e *Entry) {
	seq := e.Seq
	oldest := h.oldest.Load()
	if seq-oldest == uint64(h.maxHits) { // full: the slot we take is the oldest's
		h.bytes -= int64(h.slot(oldest).Load().Size())
		oldest++
		h.evicted.Add(1)
	}
	h.bytes += int64(e.Size())
	for h.bytes > h.maxBytes && oldest < seq {
		h.bytes -= int64(h.slot(oldest).Swap(nil).Size())
		oldest++
		h.evicted.Add(1)
	}
	h.slot(seq).Store(e)
	h.oldest.Store(oldest)
	h.next.Store(seq + 1) // publishes e
	h.held.Store(h.bytes)
	h.appended.Add(1)
	h.in.Add(time.Now(), 1)
}

// published wakes the readers waiting for a new entry. Called after wmu
// is released.
func (h *Hub) published() {
	if h.wakeDelay > 0 {
		// One timer per hub, armed by the first hit after a wake-up: the
		// waiting subscribers wake once for all hits of the window.
		if h.waiting.Load() && !h.wakeArmed.Swap(true) {
			h.wakeTimer.Reset(h.wakeDelay)
		}
		return
	}
	h.wakeNow()
}

// wakeNow wakes the readers waiting for a new entry.
func (h *Hub) wakeNow() {
	h.wakeArmed.Store(false)
	if h.waiting.Swap(false) {
		// Only replace the channel when a reader took it: at high rates
		// most appends find nobody waiting and allocate nothing.
		w := make(chan struct{})
		close(*h.wake.Swap(&w))
		h.parking.notifyAll()
	}
}

// Read copies into dst (up to its capacity) the entries from sequence
// number from on, stopping after maxBytes of the chosen encoding have been
// taken (at least one entry is always taken). It returns the next cursor,
// a gap if from was no longer (or never) in the ring, and, when nothing is
// ready, a channel that is closed when something new arrives.
func (h *Hub) Read(from uint64, dst []*Entry, maxBytes int, size func(*Entry) int) (entries []*Entry, next uint64, gap *Gap, wake <-chan struct{}) {
	for {
		var end uint64
		entries, next, gap, end = h.read(from, dst, maxBytes, size)
		if len(entries) > 0 || gap != nil {
			return entries, next, gap, nil
		}
		if next < end {
			from = next // raced an eviction: the next pass reports the gap
			continue
		}
		// Nothing new (or the cursor waits beyond the next hit, see
		// MaxAhead): hand out the wake channel, then look once more, so
		// an Append between the two cannot be missed. The channel is
		// taken before the flag is set: a wakeNow that clears the flag
		// after that closes this channel or a newer one. (The other
		// order lost a wake-up: a late wakeNow for a hit already read
		// could clear the flag between the two and leave the new
		// channel with nobody to close it.)
		w := h.wake.Load()
		h.waiting.Store(true)
		if h.next.Load() == end {
			return entries, next, nil, *w
		}
	}
}

// read is one pass of Read: the entries ready from from on, and the end
// of the ring it saw.
func (h *Hub) read(from uint64, dst []*Entry, maxBytes int, size func(*Entry) int) (entries []*Entry, next uint64, gap *Gap, end uint64) {
	gap, from = h.clamp(from)
	end = h.next.Load()
	entries = dst[:0]
	taken := 0
	s := from
	for ; s < end && len(entries) < cap(dst); s++ {
		e := h.slot(s).Load()
		if e == nil || e.Seq != s {
			break // evicted while we read: the next pass reports the gap
		}
		if len(entries) > 0 && taken+size(e) > maxBytes {
			break
		}
		taken += size(e)
		entries = append(entries, e)
	}
	return entries, s, gap, end
}

// firstReceivedAfter returns the number of the first hit held from from
// on that was read at or after t (next when none was): a binary search,
// since hits are held in the order they were read.
func (h *Hub) firstReceivedAfter(t time.Time, from uint64) uint64 {
	lo, hi := max(from, h.oldest.Load()), h.next.Load()
	for lo < hi {
		mid := lo + (hi-lo)/2
		e := h.slot(mid).Load()
		if e == nil || e.Seq != mid || e.Received.Before(t) {
			lo = mid + 1 // evicted meanwhile counts as old
		} else {
			hi = mid
		}
	}
	return lo
}

// clamp moves a cursor that is outside the ring into it, and says what was
// lost.
func (h *Hub) clamp(from uint64) (*Gap, uint64) {
	oldest, next := h.oldest.Load(), h.next.Load()
	switch {
	case from < oldest:
		// Fell off the ring, or an id from an earlier run of lsmux.
		return &Gap{From: from, To: oldest - 1}, oldest
	case from > next && h.mayWait(from, next):
		return nil, from // numbered elsewhere, not here yet: wait for it
	case from > next:
		// Beyond anything numbered in this run: an id from an earlier run
		// whose clock was ahead. Its position means nothing here; the
		// notice names it, and reading starts at the oldest hit held.
		return &Gap{From: from, To: from}, oldest
	}
	return nil, from
}

// mayWait says whether a cursor beyond the next hit is worth waiting for
// (see MaxAhead): it is, when JetStream said the number exists, or when it
// is a little beyond that and cannot be a number from before the
// numbering started over.
func (h *Hub) mayWait(from, next uint64) bool {
	if h.maxAhead == 0 {
		return false
	}
	hz := h.horizon.Load()
	if from <= hz {
		return true
	}
	return from > h.stale.Load() && from <= max(next, hz)+h.maxAhead
}

// Cursor positions for Subscribe.
const (
	Live   = ^uint64(0)     // only hits appended from now on
	Oldest = ^uint64(0) - 1 // the oldest hit still held
)

// Start resolves Live and Oldest into a sequence number.
func (h *Hub) Start(from uint64) uint64 {
	switch from {
	case Live:
		return h.next.Load()
	case Oldest:
		return h.historyStart(h.oldest.Load())
	}
	return from
}

// Stats is a snapshot of the ring.
type Stats struct {
	Hits      int    `json:"hits"`
	Bytes     int64  `json:"bytes"`
	MaxHits   int    `json:"maxHits"`
	MaxBytes  int64  `json:"maxBytes"`
	Oldest    uint64 `json:"oldestSeq"`
	Newest    uint64 `json:"newestSeq"` // oldest-1 when empty
	Appended  uint64 `json:"appended"`
	Evicted   uint64 `json:"evicted"`
	Delivered uint64 `json:"delivered"`
}

// Stats returns the ring's size and sequence range.
func (h *Hub) Stats() Stats {
	oldest, next := h.oldest.Load(), h.next.Load()
	return Stats{Hits: int(next - oldest), Bytes: h.held.Load(), MaxHits: h.maxHits, MaxBytes: h.maxBytes, Oldest: oldest, Newest: next - 1,
		Appended: h.appended.Load(), Evicted: h.evicted.Load(), Delivered: h.delivered.Load()}
}

// Throughput is the hits appended (in) and delivered to subscribers (out)
// in each of the last seconds complete seconds (at most ThroughputWindow),
// oldest first, from the second start.
func (h *Hub) Throughput(now time.Time, seconds int) (start time.Time, in, out []uint64) {
	start, in = h.in.Series(now, seconds)
	_, out = h.out.Series(now, seconds)
	return start, in, out
}

// Close tells every subscriber the hub is going away (shutdown).
func (h *Hub) Close() {
	h.close1.Do(func() {
		if h.wakeTimer != nil {
			h.wakeTimer.Stop()
		}
		close(h.closed)
	})
}

// Closed is closed by Close.
func (h *Hub) Closed() <-chan struct{} { return h.closed }
