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
type Hub struct {
	maxHits  int
	maxBytes int64

	mu      sync.RWMutex
	ring    []*Entry // circular, len == maxHits once grown
	head    int      // index of the oldest entry
	n       int      // entries held
	oldest  uint64   // seq of the oldest entry (== next when empty)
	next    uint64   // seq the next Append gets
	bytes   int64
	wake    chan struct{} // closed by Append when someone waits on it
	waiting atomic.Bool   // someone took wake since it was last replaced
	closed  chan struct{}

	// The derived window (see select.go); dmu is never held with mu.
	dmu  sync.Mutex
	dwin []*Entry
	dpos int

	appended atomic.Uint64
	evicted  atomic.Uint64
	subs     registry
}

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
	return &Hub{
		maxHits:  o.MaxHits,
		maxBytes: o.MaxBytes,
		ring:     make([]*Entry, 0, min(o.MaxHits, 4096)),
		oldest:   first,
		next:     first,
		wake:     make(chan struct{}),
		closed:   make(chan struct{}),
		subs:     registry{subs: map[uint64]*Subscriber{}},
	}
}

// Append numbers a hit and adds it to the ring, evicting the oldest hits
// beyond the bounds. It never blocks on subscribers: it takes the lock for
// the few pointer moves and wakes waiting readers by closing a channel.
// raw must not be modified afterwards. Safe for concurrent use.
func (h *Hub) Append(raw []byte, received time.Time) uint64 {
	h.mu.Lock()
	seq := h.next
	e := newEntry(seq, raw, received)
	h.next++
	h.push(e)
	var wake chan struct{}
	if h.waiting.Load() {
		// Only replace the channel when a reader took it: at high rates
		// most appends find nobody waiting and allocate nothing.
		wake, h.wake = h.wake, make(chan struct{})
		h.waiting.Store(false)
	}
	h.mu.Unlock()
	if wake != nil {
		close(wake)
	}
	h.appended.Add(1)
	return seq
}

// push adds e and evicts from the front. Caller holds h.mu.
func (h *Hub) push(e *Entry) {
	if h.n == len(h.ring) && len(h.ring) < h.maxHits {
		h.grow()
	}
	if h.n == h.maxHits {
		h.evictOldest()
	}
	h.ring[(h.head+h.n)%len(h.ring)] = e
	h.n++
	h.bytes += int64(e.Size())
	for h.bytes > h.maxBytes && h.n > 1 {
		h.evictOldest()
	}
}

// grow doubles the ring up to maxHits, so an idle hub stays small.
func (h *Hub) grow() {
	size := min(max(2*len(h.ring), 64), h.maxHits)
	ring := make([]*Entry, size)
	for i := 0; i < h.n; i++ {
		ring[i] = h.ring[(h.head+i)%len(h.ring)]
	}
	h.ring, h.head = ring, 0
}

func (h *Hub) evictOldest() {
	e := h.ring[h.head]
	h.ring[h.head] = nil
	h.head = (h.head + 1) % len(h.ring)
	h.n--
	h.bytes -= int64(e.Size())
	h.oldest = e.Seq + 1
	h.evicted.Add(1)
}

// Read copies into dst (up to its capacity) the entries from sequence
// number from on, stopping after maxBytes of the chosen encoding have been
// taken (at least one entry is always taken). It returns the next cursor,
// a gap if from was no longer (or never) in the ring, and a channel that is
// closed when something new arrives, so a reader that got nothing waits on
// it without missing an Append in between.
func (h *Hub) Read(from uint64, dst []*Entry, maxBytes int, size func(*Entry) int) (entries []*Entry, next uint64, gap *Gap, wake <-chan struct{}) {
	h.mu.RLock()
	gap, from = h.clamp(from)
	entries = dst[:0]
	taken := 0
	for s := from; s < h.next && len(entries) < cap(dst); s++ {
		e := h.ring[(h.head+int(s-h.oldest))%len(h.ring)]
		if len(entries) > 0 && taken+size(e) > maxBytes {
			break
		}
		taken += size(e)
		entries = append(entries, e)
	}
	next = from + uint64(len(entries))
	if next == h.next {
		wake = h.waitChan()
	}
	h.mu.RUnlock()
	return entries, next, gap, wake
}

// waitChan hands out the wake channel. Caller holds h.mu for reading, so
// Append (which holds it for writing) cannot swap the channel in between.
func (h *Hub) waitChan() <-chan struct{} {
	h.waiting.Store(true)
	return h.wake
}

// clamp moves a cursor that is outside the ring into it, and says what was
// lost. Caller holds h.mu.
func (h *Hub) clamp(from uint64) (*Gap, uint64) {
	switch {
	case from < h.oldest:
		// Fell off the ring, or an id from an earlier run of lsmux.
		return &Gap{From: from, To: h.oldest - 1}, h.oldest
	case from > h.next:
		// Beyond anything numbered in this run: an id from an earlier run
		// whose clock was ahead. Its position means nothing here; the
		// notice names it, and reading starts at the oldest hit held.
		return &Gap{From: from, To: from}, h.oldest
	}
	return nil, from
}

// Cursor positions for Subscribe.
const (
	Live   = ^uint64(0)     // only hits appended from now on
	Oldest = ^uint64(0) - 1 // the oldest hit still held
)

// Start resolves Live and Oldest into a sequence number.
func (h *Hub) Start(from uint64) uint64 {
	h.mu.RLock()
	defer h.mu.RUnlock()
	switch from {
	case Live:
		return h.next
	case Oldest:
		return h.oldest
	}
	return from
}

// Stats is a snapshot of the ring.
type Stats struct {
	Hits     int    `json:"hits"`
	Bytes    int64  `json:"bytes"`
	MaxHits  int    `json:"maxHits"`
	MaxBytes int64  `json:"maxBytes"`
	Oldest   uint64 `json:"oldestSeq"`
	Newest   uint64 `json:"newestSeq"` // oldest-1 when empty
	Appended uint64 `json:"appended"`
	Evicted  uint64 `json:"evicted"`
}

// Stats returns the ring's size and sequence range.
func (h *Hub) Stats() Stats {
	h.mu.RLock()
	defer h.mu.RUnlock()
	return Stats{Hits: h.n, Bytes: h.bytes, MaxHits: h.maxHits, MaxBytes: h.maxBytes, Oldest: h.oldest, Newest: h.next - 1,
		Appended: h.appended.Load(), Evicted: h.evicted.Load()}
}

// Close tells every subscriber the hub is going away (shutdown).
func (h *Hub) Close() {
	h.mu.Lock()
	defer h.mu.Unlock()
	select {
	case <-h.closed:
	default:
		close(h.closed)
	}
}

// Closed is closed by Close.
func (h *Hub) Closed() <-chan struct{} { return h.closed }
