package cluster

import (
	"testing"
	"time"
)

// TestStartSeq pins where a replica starts reading the JetStream stream.
func TestStartSeq(t *testing.T) {
	t0 := time.Date(2026, 12, 1, 9, 0, 0, 0, time.UTC)
	t1 := t0.Add(time.Hour) // the stream was created again
	for _, tc := range []struct {
		name       string
		p          startPoint
		start      uint64
		newNumbers bool
	}{
		{"first setup, empty stream", startPoint{ringHits: 100, first: 0, last: 0, created: t0, next: 1}, 1, false},
		{"first setup: the newest ring's worth", startPoint{ringHits: 100, first: 1, last: 1000, created: t0, next: 1}, 901, false},
		{"first setup: less than a ring held", startPoint{ringHits: 100, first: 950, last: 1000, created: t0, next: 1}, 950, false},
		{"first setup: a stream numbered from the clock", startPoint{ringHits: 100, first: 1_700_000_000_000_000, last: 1_700_000_000_000_050, created: t0, next: 1}, 1_700_000_000_000_000, false},
		{"again after a failure: go on where the hub is", startPoint{ringHits: 100, first: 1, last: 1000, created: t0, known: t0, next: 990, consumed: 989}, 990, false},
		{"again after a failure, the hub behind the ring: the newest ring's worth", startPoint{ringHits: 100, first: 1, last: 1000, created: t0, known: t0, next: 800, consumed: 799}, 901, false},
		{"a new stream the consumer already followed", startPoint{ringHits: 100, first: 5000, last: 5010, created: t1, known: t0, next: 5005, consumed: 5004}, 5005, false},
		{"a new stream: numbers start over", startPoint{ringHits: 100, first: 1, last: 10, created: t1, known: t0, next: 5005, consumed: 5004}, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			start, renumber := startSeq(tc.p)
			if start != tc.start || renumber != tc.newNumbers {
				t.Fatalf("startSeq(%+v) = %d, %v; want %d, %v", tc.p, start, renumber, tc.start, tc.newNumbers)
			}
		})
	}
}
