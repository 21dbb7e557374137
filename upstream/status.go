package upstream

import (
	"maps"
	"slices"
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
	st.HitsPerSecond = s.rate.Rate(time.Now(), 60)
	return st
}

// set changes the slot's status under its lock.
func (s *slot) set(f func(*ConnStatus)) {
	s.mu.Lock()
	f(&s.st)
	s.mu.Unlock()
}
