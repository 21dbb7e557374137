package fanout

import (
	"context"
	"slices"
	"sort"
	"sync"
	"sync/atomic"
	"time"
)

// Info describes a subscriber for status pages.
type Info struct {
	Transport string // "ws", "sse", "ndjson"
	Remote    string
	Filter    string
}

// Subscriber is a cursor into a hub's ring. It holds no copies of hits:
// memory does not grow with the number of subscribers or their slowness.
// A Subscriber is used by one goroutine (its writer); the counters are
// atomic so status can read them.
type Subscriber struct {
	ID    uint64
	Info  Info
	Since time.Time

	hub        *Hub
	cursor     atomic.Uint64
	gaps       atomic.Uint64
	lost       atomic.Uint64
	delivered  atomic.Uint64
	buf        []*Entry
	sel        *Selector // nil: every hit unchanged (the zero-decode path)
	out        []*Entry
	lim        Limits
	meter      *costMeter // nil without filters
	evaluating bool       // holds an evalSlots slot
	// liveFrom is the first number appended after the subscription began;
	// only hits from it on can make the subscriber late (MaxLag).
	liveFrom uint64
	closed   bool
	// While the cursor is older than the ring: the read of history, the
	// records it handed over not yet taken, those the last read of history
	// turned into entries (Poll may stop part-way through them: a filter
	// over its budget, a subscriber found late; the rest is read again),
	// and whether the subscriber holds one of the hub's replay slots
	// (history.go).
	replay     Replay
	recs       []Record
	served     []Record
	replaySlot bool
	// While parked (park.go): what to call at the next wake-up, and
	// 1 + the subscriber's index in the hub's parked list (0: not parked).
	notify  func()
	parkIdx int
}

// MaxBatch caps the entries one Poll hands out, so one writer's batch
// stays a bounded buffer even when it is far behind.
const MaxBatch = 512

// perPollScan bounds the entries one Poll looks at while none is selected
// (a rare sample, a filter whose results are shared and cost nothing), as
// perPollCost bounds the units it spends.
const perPollScan = 4 * MaxBatch

// Subscribe starts a subscriber at from (a sequence number, Live or Oldest)
// with an optional selector and no limits. Call Close when the subscriber
// leaves.
func (h *Hub) Subscribe(from uint64, info Info, sel *Selector) *Subscriber {
	return h.SubscribeWith(from, info, sel, Limits{})
}

// SubscribeWith is Subscribe with limits on what the subscriber may cost.
// The selector's filters and projection are the subscriber's from now on:
// Close releases them.
func (h *Hub) SubscribeWith(from uint64, info Info, sel *Selector, lim Limits) *Subscriber {
	if sel != nil && sel.empty() {
		sel = nil
	}
	if sel != nil && info.Filter == "" {
		info.Filter = sel.Describe()
	}
	s := &Subscriber{Info: info, Since: time.Now(), hub: h, sel: sel, lim: lim, liveFrom: h.next.Load()}
	if sel != nil {
		if sel.Filter != nil || len(sel.Named) > 0 {
			s.meter = newCostMeter(lim)
		}
		if c := sel.compiler(); c != nil {
			c.track(h)
		}
	}
	s.cursor.Store(h.Start(from))
	h.subs.add(s)
	return s
}

// Close removes the subscriber from the hub's registry and releases its
// filters and projection. It may be called more than once.
func (s *Subscriber) Close() {
	if s.closed {
		return
	}
	s.closed = true
	s.hub.subs.remove(s)
	s.hub.parking.unpark(s)
	s.endEvaluation()
	s.endReplay()
	if s.sel != nil {
		s.sel.Release()
	}
}

// Poll returns the entries ready for this subscriber (at most MaxBatch and
// about maxBytes of the encoding size measures) and advances its cursor.
// If the subscriber fell off the ring (or fell MaxLag behind), gap says
// which hits it lost and the entries continue from the oldest still held.
// When nothing is ready, wake is closed as soon as something is. The
// returned slice is reused by the next Poll.
//
// Work per call is bounded: with a selector, entries that do not match are
// skipped (the cursor moves past them) and projected entries replace the
// originals; Poll reads on while nothing matched, but only until it has
// spent perPollCost units, looked at perPollScan entries, or its budget
// holds it back (or ctx ended). It may then return nothing and no wake
// channel: call it again (after looking at the client). The error is ErrFilterCost when the subscriber's filters cost
// more than its limits allow, or ctx's when ctx ended while Poll waited
// for the budget or for an evaluation slot.
func (s *Subscriber) Poll(ctx context.Context, size func(*Entry) int, maxBytes int) (entries []*Entry, gap *Gap, wake <-chan struct{}, err error) {
	if s.meter != nil {
		if err := s.meter.hold(ctx); err != nil {
			return nil, nil, nil, err
		}
		defer s.endEvaluation()
	}
	s.takeBatch(s.cursor.Load())
	entries, next, gap, wake := s.read(s.cursor.Load(), maxBytes, size)
	if late := s.late(entries); late != nil {
		if gap != nil {
			late.From = gap.From // it fell off the ring first: that is lost too
		}
		var more *Gap
		gap = late
		entries, next, more, wake = s.read(late.To+1, maxBytes, size)
		if more != nil {
			gap.To = more.To // evicted meanwhile: one notice
		}
	}
	s.cursor.Store(next)
	if s.sel != nil {
		s.out = s.out[:0]
		used := len(entries) // of s.buf, to clear when done
		scanned := 0
		for {
			stopped := false
			scanned += len(entries)
			for i, e := range entries {
				sel, ok, err := s.apply(ctx, e)
				if err != nil {
					return nil, nil, nil, err
				}
				if sel != nil {
					s.out = append(s.out, sel)
				}
				if !ok { // over budget: stop after e, the rest waits
					next = e.Seq + 1
					s.cursor.Store(next)
					stopped = i < len(entries)-1 || wake == nil
					break
				}
			}
			// Stop with what matched, at live, or when this call has done
			// its share of work: cost units, or entries looked at (sample
			// alone costs no units), or the client left or shutdown began.
			if stopped || len(s.out) > 0 || wake != nil || (s.meter != nil && s.meter.spent >= perPollCost) ||
				scanned >= perPollScan || ctx.Err() != nil {
				if stopped {
					wake = nil // not waiting for new hits: more of the ring to read
				}
				break
			}
			var more *Gap
			entries, next, more, wake = s.read(next, maxBytes, size)
			used = max(used, len(entries))
			s.cursor.Store(next)
			if gap == nil {
				gap = more
			} else if more != nil {
				gap.To = more.To // fell off again while skipping: one notice
			}
		}
		clear(s.buf[:used]) // drop references to entries the ring may evict
		entries = s.out
		if s.meter != nil {
			s.meter.spent = 0
			if err := s.meter.check(); err != nil {
				return nil, nil, nil, err
			}
		}
	}
	if gap != nil {
		s.gaps.Add(1)
		s.hub.gaps.Add(1)
		if gap.To >= gap.From {
			s.lost.Add(gap.To - gap.From + 1)
			s.hub.lost.Add(gap.To - gap.From + 1)
		}
	}
	if len(entries) > 0 {
		s.delivered.Add(uint64(len(entries)))
		s.hub.delivered.Add(uint64(len(entries)))
		s.hub.out.Add(time.Now(), uint64(len(entries)))
	}
	return entries, gap, wake, nil
}

// late returns the gap a subscriber too far behind live (Limits.MaxLag)
// skips: from its cursor to the first hit read within MaxLag. Only hits
// that arrived while it was subscribed count: a resume is not late.
func (s *Subscriber) late(entries []*Entry) *Gap {
	if s.lim.MaxLag <= 0 || len(entries) == 0 {
		return nil
	}
	e := entries[0]
	if e.Seq < s.liveFrom || time.Since(e.Received) <= s.lim.MaxLag {
		return nil
	}
	to := s.hub.firstReceivedAfter(time.Now().Add(-s.lim.MaxLag), e.Seq)
	if to <= e.Seq {
		return nil
	}
	return &Gap{From: e.Seq, To: to - 1}
}

// beginEvaluation takes an evaluation slot (see evalSlots) for the rest of
// this Poll, waiting for one if all are busy.
func (s *Subscriber) beginEvaluation(ctx context.Context) error {
	if s.evaluating {
		return nil
	}
	select {
	case evalSlots <- struct{}{}:
		s.evaluating = true
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (s *Subscriber) endEvaluation() {
	if s.evaluating {
		<-evalSlots
		s.evaluating = false
	}
}

// Cursor is the next sequence number the subscriber will get.
func (s *Subscriber) Cursor() uint64 { return s.cursor.Load() }

// SubscriberStatus is what status pages show of a subscriber.
type SubscriberStatus struct {
	ID        uint64    `json:"id"`
	Transport string    `json:"transport"`
	Remote    string    `json:"remote"`
	Filter    string    `json:"filter,omitempty"`
	Since     time.Time `json:"connectedSince"`
	Lag       uint64    `json:"lag"`
	Gaps      uint64    `json:"gaps"`
	Lost      uint64    `json:"lostHits"`
	Delivered uint64    `json:"delivered"`
}

// Subscribers lists all the hub's subscribers, oldest first.
func (h *Hub) Subscribers() []SubscriberStatus {
	page, _ := h.SubscriberPage(0, 0)
	return page
}

// SubscriberPage lists up to limit subscribers (0: all) with an id above
// after, oldest first, and whether more follow.
func (h *Hub) SubscriberPage(after uint64, limit int) (page []SubscriberStatus, more bool) {
	next := h.next.Load()
	h.subs.mu.Lock()
	picked := make([]*Subscriber, 0, min(len(h.subs.subs), max(limit, 0)+1))
	for _, s := range h.subs.subs {
		if s.ID > after {
			picked = append(picked, s)
		}
	}
	h.subs.mu.Unlock()
	sort.Slice(picked, func(i, j int) bool { return picked[i].ID < picked[j].ID })
	if limit > 0 && len(picked) > limit {
		picked, more = picked[:limit], true
	}
	page = make([]SubscriberStatus, len(picked))
	for i, s := range picked {
		page[i] = SubscriberStatus{ID: s.ID, Transport: s.Info.Transport, Remote: s.Info.Remote, Filter: s.Info.Filter,
			Since: s.Since, Lag: s.lag(next), Gaps: s.gaps.Load(), Lost: s.lost.Load(), Delivered: s.delivered.Load()}
	}
	return page, more
}

// lag is how many hits the subscriber is behind the next one.
func (s *Subscriber) lag(next uint64) uint64 {
	if cur := s.cursor.Load(); next > cur {
		return next - cur
	}
	return 0
}

// SubscriberSummary is what status shows of a hub's subscribers without
// listing them: counts, how far behind they are (in hits), and the gap
// notices of all subscribers since the start.
type SubscriberSummary struct {
	Count       int            `json:"count"`
	ByTransport map[string]int `json:"byTransport"`
	LagP50      uint64         `json:"lagP50"`
	LagP99      uint64         `json:"lagP99"`
	LagMax      uint64         `json:"lagMax"`
	Gaps        uint64         `json:"gapsTotal"`
	LostHits    uint64         `json:"lostHitsTotal"`
}

// SubscriberSummary summarises the subscribers without listing them.
func (h *Hub) SubscriberSummary() SubscriberSummary {
	next := h.next.Load()
	sum := SubscriberSummary{ByTransport: map[string]int{}, Gaps: h.gaps.Load(), LostHits: h.lost.Load()}
	h.subs.mu.Lock()
	lags := make([]uint64, 0, len(h.subs.subs))
	for _, s := range h.subs.subs {
		sum.ByTransport[s.Info.Transport]++
		lags = append(lags, s.lag(next))
	}
	h.subs.mu.Unlock()
	sum.Count = len(lags)
	if len(lags) > 0 {
		slices.Sort(lags)
		sum.LagP50, sum.LagP99, sum.LagMax = lags[len(lags)/2], lags[(len(lags)*99)/100], lags[len(lags)-1]
	}
	return sum
}

// SubscriberCounts returns the number of subscribers by transport.
func (h *Hub) SubscriberCounts() map[string]int {
	h.subs.mu.Lock()
	defer h.subs.mu.Unlock()
	out := map[string]int{}
	for _, s := range h.subs.subs {
		out[s.Info.Transport]++
	}
	return out
}

type registry struct {
	mu   sync.Mutex
	last uint64
	subs map[uint64]*Subscriber
}

func (r *registry) add(s *Subscriber) {
	r.mu.Lock()
	r.last++
	s.ID = r.last
	r.subs[s.ID] = s
	r.mu.Unlock()
}

func (r *registry) remove(s *Subscriber) {
	r.mu.Lock()
	delete(r.subs, s.ID)
	r.mu.Unlock()
}
