package fanout

import "sync"

// Parking: a writer with nothing to write need not keep a goroutine
// waiting on Poll's wake channel. It parks its subscriber with a notify
// function instead, and the hub calls that function once at the next
// wake-up (a hit, or the end of a WakeDelay window). An idle subscriber
// then costs no goroutine and no batch array, only its registration.
//
// Locks: wakeMu serialises the drains of the parked list (wakeNow), pmu
// guards the list and each subscriber's parkIdx. wakeMu is taken before
// pmu, neither with wmu, dmu or subs.mu. notify functions run under
// wakeMu and must not park or wait.

// parking is the hub's list of parked subscribers.
type parking struct {
	wakeMu sync.Mutex
	pmu    sync.Mutex
	parked []*Subscriber
	spare  []*Subscriber // the previous list, reused by the next drain
}

// batchArrays hold Poll's entry arrays between uses: a subscriber takes
// one when it polls and gives it back when it parks.
var batchArrays = sync.Pool{New: func() any { return new([MaxBatch]*Entry) }}

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

// notifyAll calls the notify function of every parked subscriber, once.
// Called after the wake channel was replaced, so a subscriber that parks
// from now on parks on the new one.
func (p *parking) notifyAll() {
	p.wakeMu.Lock()
	defer p.wakeMu.Unlock()
	p.pmu.Lock()
	list := p.parked
	p.parked = p.spare
	for _, s := range list {
		s.parkIdx = 0
	}
	p.pmu.Unlock()
	for _, s := range list {
		s.notify()
	}
	clear(list)
	p.spare = list[:0]
}

// takeBatch gives the subscriber an entry array for Poll.
func (s *Subscriber) takeBatch() {
	if s.buf == nil {
		s.buf = batchArrays.Get().(*[MaxBatch]*Entry)[:0]
	}
}

// releaseBatch gives the entry array back, and drops a large selection
// array, so a parked subscriber holds neither.
func (s *Subscriber) releaseBatch() {
	if s.buf != nil {
		a := (*[MaxBatch]*Entry)(s.buf[:MaxBatch])
		clear(a[:])
		batchArrays.Put(a)
		s.buf = nil
	}
	if cap(s.out) > 16 {
		s.out = nil
	}
}
