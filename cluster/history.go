package cluster

import "time"

// HistoryStatus is a stream's durable history (JetStream: embedded with
// LSMUX_DATA_DIR, or the cluster's) as status and metrics show it.
type HistoryStatus struct {
	// Store is "embedded" (LSMUX_DATA_DIR) or "cluster" (NATS).
	Store string `json:"store"`
	Dir   string `json:"dir,omitempty"`
	// Hits and Bytes are what history holds, FirstSeq its first number
	// and Oldest when that hit was stored, as the store said at its last
	// look (historyRefresh); LastSeq is its newest number now.
	Hits     uint64    `json:"hits"`
	Bytes    uint64    `json:"bytes"`
	FirstSeq uint64    `json:"firstSeq"`
	LastSeq  uint64    `json:"lastSeq"`
	Oldest   time.Time `json:"oldest,omitzero"`
	MaxAge   string    `json:"maxAge"`
	MaxBytes int64     `json:"maxBytes"`
	// Replays are subscribers reading history older than the ring.
	ReplaysRunning int    `json:"replaysRunning"`
	MaxReplays     int    `json:"maxReplays"`
	ReplaysRefused uint64 `json:"replaysRefused"`
	// StoreErrors counts writes the store refused; Failing is set while
	// they fail (live subscribers are then served from memory), with the
	// last error.
	StoreErrors uint64 `json:"storeErrors"`
	Failing     bool   `json:"failing"`
	LastError   string `json:"lastError,omitempty"`
	// HeldInMemory is the hits served from memory while the store fails,
	// waiting to be written; LostFromHistory those dropped before they
	// could be (live subscribers got them; a resume across them gets a
	// gap notice).
	HeldInMemory    int    `json:"heldInMemory"`
	LostFromHistory uint64 `json:"lostFromHistory"`
	// DuplicatesDropped counts hits the store already held when they came
	// again (Adobe's backfill after a reconnect or a restart; in cluster
	// mode this replica's publishes as leader).
	DuplicatesDropped uint64 `json:"duplicatesDropped"`
}
