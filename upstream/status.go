package upstream

import (
	"maps"
	"slices"
	"sync/atomic"
	"time"
)

// A connection slot's bookkeeping for status pages, metrics and readiness:
// its state, counters, recent events and hit rate. The slot's life (attempt,
// open, read, ingest) is in conn.go; only that loop writes here.

// State is a connection slot's state, as shown in status and readiness.
type State string

const (
	StateConnecting State = "connecting" // an attempt is in flight
	StateStreaming  State = "streaming"  // a 200 arrived and hits are read
	StateWaiting    State = "waiting"    // waiting out the reconnect delay
	StateFailing    State = "failing"    // waiting after an error retrying cannot fix (see LastError)
)

// States lists every state, in the order status pages show them.
var States = []State{StateConnecting, StateStreaming, StateWaiting, StateFailing}

// ConnStatus is a snapshot of one connection slot. It holds no secret.
type ConnStatus struct {
	Slot       int       `json:"slot"`
	State      State     `json:"state"`
	Since      time.Time `json:"since"`
	Attempts   int       `json:"attempts"`
	Connects   int       `json:"connects"`
	LastStatus int       `json:"lastStatus,omitempty"`
	// LastError is why the last attempt or connection ended, and
	// LastErrorAt when. While the slot streams again it is history, not
	// the current state: compare LastErrorAt with Since.
	LastError   string    `json:"lastError,omitempty"`
	LastErrorAt time.Time `json:"lastErrorAt,omitzero"`
	NextAttempt time.Time `json:"nextAttempt,omitzero"`
	// Hold says why the slot waits when the reason is not its own backoff
	// (cluster mode: "follower: ..." or "new leader: ...").
	Hold       string `json:"hold,omitempty"`
	Host       string `json:"host,omitempty"`
	Hits       uint64 `json:"hits"`
	Bytes      uint64 `json:"bytes"`
	Duplicates uint64 `json:"duplicates"`
	Invalid    uint64 `json:"invalidRecords"`
	Oversized  uint64 `json:"oversizedRecords"`
	// HitsPerSecond is the average over the last minute, or over the time
	// the slot has existed when that is shorter.
	HitsPerSecond float64 `json:"hitsPerSecond"`
	// Results counts attempts by how they were answered: an HTTP status
	// ("200", "409", ...), "network" or "token".
	Results map[string]uint64 `json:"results"`
	// Events are the connects and disconnects of the last hour (at most
	// maxEvents), oldest first, for the dashboard's timeline.
	Events []Event `json:"events"`
}

// Event is one connect or disconnect of a connection slot.
type Event struct {
	Time   time.Time `json:"time"`
	Kind   string    `json:"kind"` // "connected", "lost", "refused", "closed" (by lsmux)
	Status int       `json:"status,omitempty"`
	Reason string    `json:"reason,omitempty"`
}

const maxEvents = 1000

// addEvent records an event and forgets those over an hour old. Caller
// holds the slot's mu.
func (st *ConnStatus) addEvent(e Event) {
	cut := 0
	for cut < len(st.Events) && (e.Time.Sub(st.Events[cut].Time) > time.Hour || len(st.Events)-cut >= maxEvents) {
		cut++
	}
	st.Events = append(st.Events[cut:], e)
}

// status is the slot's snapshot; the counters are read without the lock.
func (s *slot) status() ConnStatus {
	s.mu.Lock()
	st := s.st
	st.Results = maps.Clone(s.st.Results)
	st.Events = slices.Clone(s.st.Events)
	s.mu.Unlock()
	st.Hits, st.Bytes, st.Duplicates = s.hits.Load(), s.bytes.Load(), s.dups.Load()
	st.Invalid, st.Oversized = s.invalid.Load(), s.oversized.Load()
	st.HitsPerSecond = s.rate.perSecond(time.Now())
	return st
}

// set changes the slot's status under its lock.
func (s *slot) set(f func(*ConnStatus)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}

// rateWindow counts hits per second over the last minute. Only the slot's
// reader writes it; status reads it.
type rateWindow struct {
	born   time.Time // when counting began: a younger window averages over its age
	secs   [61]atomic.Int64
	counts [61]atomic.Uint64
}

func (w *rateWindow) add(sec int64) {
	i := sec % int64(len(w.secs))
	if w.secs[i].Load() != sec {
		w.counts[i].Store(0)
		w.secs[i].Store(sec)
	}
	w.counts[i].Add(1)
}

// perSecond averages the complete seconds of the last minute before now,
// counting only those the window has lived through (a minute's sum
// divided by 60 would read 28 on a steady 50 hits/s stream 33 s after a
// start).
func (w *rateWindow) perSecond(now time.Time) float64 {
	sec := now.Unix()
	from := sec - 60
	if !w.born.IsZero() {
		from = max(from, w.born.Unix()+1) // the second it was born in is partial
	}
	if from >= sec {
		return 0
	}
	var sum uint64
	for i := range w.secs {
		if s := w.secs[i].Load(); s < sec && s >= from {
			sum += w.counts[i].Load()
		}
	}
	return float64(sum) / float64(sec-from)
}
