package cluster

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"lsmux/fanout"
)

// These tests make the store refuse writes the way a full disk does for
// the publisher (a limit with DiscardNew), and check the numbering rule:
// no number ever means two hits, across a failing store and restarts.

// refuseWrites makes s's store refuse new hits until the returned func
// restores it.
func refuseWrites(t *testing.T, s *Stream, keep int64) func() {
	t.Helper()
	ctx := context.Background()
	st, err := s.node.js.Stream(ctx, s.names.Stream)
	if err != nil {
		t.Fatal(err)
	}
	cfg := st.CachedInfo().Config
	full := cfg
	full.Discard, full.MaxMsgs = jetstream.DiscardNew, keep
	if _, err := s.node.js.UpdateStream(ctx, full); err != nil {
		t.Fatal(err)
	}
	return func() {
		if _, err := s.node.js.UpdateStream(ctx, cfg); err != nil {
			t.Fatal(err)
		}
	}
}

// deliverAll hands s hits first..last and waits until the hub has taken
// them all.
func deliverAll(t *testing.T, s *Stream, first, last uint64) {
	t.Helper()
	pad := benchPad()
	start := s.Hub().Stats().Appended
	for i := first; i <= last; i++ {
		s.Deliver(benchHit(i, pad))
	}
	waitFor(t, 30*time.Second, "the hub to take the hits", func() bool { return s.Hub().Stats().Appended-start >= last-first+1 })
}

// TestRestartAfterAFailingRunSkipsItsNumbers: the previous run handed out
// numbers from memory it never stored. The next run starts above them,
// writes placeholders for them, and its store works: new hits are stored
// and reach subscribers under the numbers after the skip.
func TestRestartAfterAFailingRunSkipsItsNumbers(t *testing.T) {
	dir := t.TempDir()
	s, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{})
	deliverAll(t, s, 1, 10)
	before := s.Hub().Stats().Newest
	stop()

	// The previous run, as if it had reserved 50 numbers while failing.
	path := filepath.Join(dir, "upstream-"+NamesFor("bench").Stream+".state")
	st := readState(t, path)
	st.HandedOut = before + 50
	sf := &stateFile{path: path}
	var err error
	if sf.f, err = os.OpenFile(path, os.O_RDWR, 0); err != nil {
		t.Fatal(err)
	}
	if err := sf.write(st); err != nil {
		t.Fatal(err)
	}
	sf.close()

	s, stop = soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StoreRetry: 100 * time.Millisecond})
	defer stop()
	deliverAll(t, s, 100, 104)
	if got := s.Hub().Stats().Newest; got != before+55 {
		t.Fatalf("the hub's newest is %d; want %d: 5 new hits above the 50 skipped numbers", got, before+55)
	}
	waitFor(t, 30*time.Second, "the store to hold the new hits", func() bool {
		hs := s.HistoryStatus()
		return !hs.Failing && hs.LastSeq == before+55
	})
	if got := readState(t, path).HandedOut; got != 0 {
		t.Errorf("the state still reserves numbers up to %d after the store caught up", got)
	}
}

// TestRecoveryGoesPastAHitTheStoreHolds: while the store fails, a hit it
// already holds comes again (Adobe's backfill after a restart) and is
// served from memory under a new number. When the store works again,
// recovery writes a placeholder for that number and goes on: it does not
// stall on JetStream's duplicate answer.
func TestRecoveryGoesPastAHitTheStoreHolds(t *testing.T) {
	s, stop := soloStream(t, t.TempDir(), fanout.Options{MaxHits: 1000}, Options{StoreRetry: 100 * time.Millisecond})
	defer stop()
	deliverAll(t, s, 1, 10)
	restore := refuseWrites(t, s, 10)
	deliverAll(t, s, 11, 11)
	waitFor(t, 10*time.Second, "the store to fail", func() bool { return s.solo.failing.Load() })
	deliverAll(t, s, 5, 5) // stored already
	deliverAll(t, s, 12, 12)
	restore()
	newest := s.Hub().Stats().Newest
	waitFor(t, 30*time.Second, "the store to work again and hold every number", func() bool {
		hs := s.HistoryStatus()
		return !hs.Failing && hs.LastSeq == newest
	})
}

// TestStopWhileFailingKeepsItsNumbers: the store fails, hits are served
// from memory, and lsmux stops before any heartbeat, serving the last of
// them as it drains; the next run gives none of those numbers to other
// hits.
func TestStopWhileFailingKeepsItsNumbers(t *testing.T) {
	dir := t.TempDir()
	s, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StateInterval: time.Hour})
	deliverAll(t, s, 1, 10)
	refuseWrites(t, s, 10)
	deliverAll(t, s, 11, 13)
	pad := benchPad()
	for i := uint64(14); i <= 1500; i++ { // served as the publisher drains, beyond the first reservation
		s.Deliver(benchHit(i, pad))
	}
	stop()
	served := s.Hub().Stats().Newest
	if got := readState(t, filepath.Join(dir, "upstream-"+NamesFor("bench").Stream+".state")).HandedOut; got < served {
		t.Fatalf("the state file reserves numbers up to %d; hits were served up to %d", got, served)
	}

	s, stop = soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StateInterval: time.Hour})
	defer stop()
	deliverAll(t, s, 100, 100)
	if got := s.Hub().Stats().Newest; got <= served {
		t.Errorf("the first hit after the restart got number %d; the previous run had served hits up to %d", got, served)
	}
}

func readState(t *testing.T, path string) upstreamState {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var st upstreamState
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	return st
}
