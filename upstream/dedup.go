package upstream

import "sync"

// DefaultDedupWindow is how many recent hit ids are remembered. Duplicates
// come from backfill around a reconnect, i.e. within minutes; 100,000 ids
// cover well over a minute of a busy stream at 32 bytes each.
const DefaultDedupWindow = 100_000

// Dedup remembers the last N hit ids and reports repeats. Memory is bounded
// by N whatever the stream does. Safe for concurrent use: every connection
// of a pool shares one, since backfill may repeat a hit on another slot.
type Dedup struct {
	mu   sync.Mutex
	seen map[HitID]struct{}
	ring []HitID
	next int
	full bool
}

// NewDedup returns a Dedup remembering n ids (n <= 0: the default).
func NewDedup(n int) *Dedup {
	if n <= 0 {
		n = DefaultDedupWindow
	}
	return &Dedup{seen: make(map[HitID]struct{}, n), ring: make([]HitID, n)}
}

// Seen records id and reports whether it was already in the window.
func (d *Dedup) Seen(id HitID) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, ok := d.seen[id]; ok {
		return true
	}
	if d.full {
		delete(d.seen, d.ring[d.next])
	}
	d.ring[d.next] = id
	d.seen[id] = struct{}{}
	d.next++
	if d.next == len(d.ring) {
		d.next, d.full = 0, true
	}
	return false
}
