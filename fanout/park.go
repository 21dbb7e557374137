package fanout

import (
	"math/bits"
	"slices"
	"sync"
)

// Parking: a writer with nothing to write need not keep a goroutine
// waiting on Poll's wake channel. It parks its subscriber with a notify
// function instead, and the hub calls that function once at the next
// wake-up (a hit, or the end of a WakeDelay window). An idle subscriber
// then costs no goroutine and no batch array, only its registration.
//
// The notify functions run on notifier goroutines, not the producer's:
// waking 19,000 parked writers takes tens of milliseconds, and the
// upstream reader never waits for subscribers. The lists of parked
// subscribers are notified in the order they were drained, in chunks, by
// a bounded number of notifiers (notifyChunk, maxNotifiers): a goroutine
// started per hit would be scheduled before older ones (Go runs the
// newest first), and a subscriber in an old list would wait for seconds
// behind newer ones. Notify functions must not wait.
//
// Locks: pmu guards the lists and each subscriber's parkIdx, never
// together with wmu, dmu or subs.mu.

// parking is the hub's list of parked subscribers.
type parking struct {
	pmu       sync.Mutex
	parked    []*Subscriber
	queue     [][]*Subscriber // drained lists waiting for a notifier, oldest first
	notifiers int             // notifier goroutines running
}

// parkedLists recycles the lists notifyAll hands to its goroutine.
var parkedLists sync.Pool

// Park registers notify to be called once at the hub's next wake-up, wake
// being the channel Poll just returned. It returns false, and registers
// nothing, when wake is not the hub's current wake-up channel: it was
// closed already (Poll again), or it is a replay waiting for its share of
// the replay rate (wait on wake itself). A subscriber parks with the same
// notify function every time. The entries of the last Poll must
// no longer be in use: Park gives the subscriber's batch array back.
func (s *Subscriber) Park(wake <-chan struct{}, notify func()) bool {
	h := s.hub
	p := &h.parking
	p.pmu.Lock()
	current := wake == (<-chan struct{})(*h.wake.Load())
	if current && s.parkIdx == 0 && !s.closed {
		if s.notify == nil { // fixed at the first Park: notifyAll reads it outside pmu
			s.notify = notify
		}
		p.parked = append(p.parked, s)
		s.parkIdx = len(p.parked)
	}
	p.pmu.Unlock()
	if current {
		s.releaseBatch()
	}
	return current
}

// PollNeverWaits reports whether Poll can only return at once: the
// subscriber has no filter budget or evaluation slot to wait for and
// reads the ring, not history. A parked subscriber's hub may then serve
// it on its own goroutine.
func (s *Subscriber) PollNeverWaits() bool {
	return s.meter == nil && s.replay == nil && (s.hub.hist == nil || s.cursor.Load() >= s.hub.oldest.Load())
}

// unpark takes s off the parked list (it left).
func (p *parking) unpark(s *Subscriber) {
	p.pmu.Lock()
	if i := s.parkIdx - 1; i >= 0 {
		last := len(p.parked) - 1
		p.parked[i] = p.parked[last]
		p.parked[i].parkIdx = i + 1
		p.parked[last] = nil
		p.parked = p.parked[:last]
		s.parkIdx = 0
	}
	p.pmu.Unlock()
}

// notifyAll has the notify function of every parked subscriber called,
// once, by a notifier. Called after the wake channel was replaced, so a
// subscriber that parks from now on parks on the new one.
func (p *parking) notifyAll() {
	p.pmu.Lock()
	list := p.parked
	if len(list) == 0 { // at high rates most wake-ups find nobody parked
		p.pmu.Unlock()
		return
	}
	p.parked = nil
	if l, ok := parkedLists.Get().(*[]*Subscriber); ok {
		p.parked = *l
	}
	for _, s := range list {
		s.parkIdx = 0
	}
	for len(list) > notifyChunk { // the queue takes chunks; the last one owns the array
		p.queue = append(p.queue, list[:notifyChunk:notifyChunk])
		list = list[notifyChunk:]
	}
	p.queue = append(p.queue, list)
	start := min(len(p.queue), maxNotifiers) - p.notifiers
	p.notifiers += max(start, 0)
	p.pmu.Unlock()
	for range start {
		go p.notify()
	}
}

// The parked lists are notified in chunks of notifyChunk subscribers, by
// up to maxNotifiers goroutines. One or two notifiers serving everyone
// would get one or two goroutines' share of the CPU when the process is
// busy with other work (a test's own clients, in the same process, left
// subscribers waiting 5 s); a few dozen keep fan-out's share, and each
// still serves many subscribers per stack it grew.
const (
	notifyChunk  = 32
	maxNotifiers = 64
)

// notify is a notifier: it works through the queue, oldest list first,
// and ends when the queue is empty.
func (p *parking) notify() {
	for {
		p.pmu.Lock()
		if len(p.queue) == 0 {
			p.notifiers--
			p.pmu.Unlock()
			return
		}
		list := p.queue[0]
		p.queue = slices.Delete(p.queue, 0, 1)
		p.pmu.Unlock()
		for _, s := range list {
			s.notify()
		}
		if cap(list) > notifyChunk { // the chunk that owns the array
			clear(list[:cap(list)])
			list = list[:0]
			parkedLists.Put(&list)
		}
	}
}

// smallBatch is the entry array a parked subscriber may keep (128 bytes).
const smallBatch = 16

// takeBatch gives the subscriber an entry array for Poll, about as large
// as what is ready (a subscriber woken for a few hits allocates a few
// pointers, not MaxBatch), the whole MaxBatch while it reads history.
func (s *Subscriber) takeBatch(from uint64) {
	next := s.hub.next.Load()
	want := MaxBatch
	if ready := next - min(from, next); ready < MaxBatch && (s.hub.hist == nil || from >= s.hub.oldest.Load()) {
		want = max(smallBatch, 1<<bits.Len64(ready)) // at most MaxBatch, a power of two
	}
	if cap(s.buf) < want {
		s.buf = make([]*Entry, 0, want)
	}
}

// releaseBatch drops a large entry array and selection array, so a parked
// subscriber holds at most small ones.
func (s *Subscriber) releaseBatch() {
	if cap(s.buf) > smallBatch {
		s.buf = nil
	} else {
		clear(s.buf[:cap(s.buf)])
	}
	if cap(s.out) > smallBatch {
		s.out = nil
	}
}
