package cluster

import (
	"context"
	"encoding/json"
	"os"
	"path/filepath"
	"runtime"
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
		// Recovery restarts the store every StoreRetry while it fails
		// (Embedded.Recover, under emb.mu): update it between restarts.
		s.solo.emb.mu.Lock()
		defer s.solo.emb.mu.Unlock()
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
	dir, before, path := afterAFailingRun(t)
	s, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StoreRetry: 100 * time.Millisecond})
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

// recoveringWith is a solo stream whose store failed after 10 hits and
// works again, with hits 11..held served from memory meanwhile (kept up
// to bufferBytes): its recovery starts within a StoreRetry (50 ms).
func recoveringWith(t *testing.T, held uint64, bufferBytes int64) *Stream {
	t.Helper()
	s, stop := soloStream(t, t.TempDir(), fanout.Options{MaxHits: 100_000}, Options{StoreRetry: 50 * time.Millisecond, BufferBytes: bufferBytes})
	t.Cleanup(stop)
	deliverAll(t, s, 1, 10)
	restore := refuseWrites(t, s, 10)
	deliverAll(t, s, 11, 11)
	waitFor(t, 10*time.Second, "the store to fail", func() bool { return s.solo.failing.Load() })
	deliverAll(t, s, 12, held)
	restore()
	return s
}

// TestLiveHitsFlowWhileTheStoreRecovers: when the store works again,
// writing what was served from memory meanwhile (here 30,000 hits) does
// not hold up live hits: one delivered during the recovery reaches the
// hub before the recovery ends, and every number reaches the store.
func TestLiveHitsFlowWhileTheStoreRecovers(t *testing.T) {
	s := recoveringWith(t, 30_000, 1<<30)
	waitFor(t, 30*time.Second, "the recovery to begin", func() bool { return s.HistoryStatus().LastSeq > s.Hub().Stats().Oldest+10 })
	n := s.Hub().Stats().Newest
	s.Deliver(benchHit(50_000, benchPad()))
	waitFor(t, 30*time.Second, "the live hit to reach the hub", func() bool { return s.Hub().Stats().Newest > n })
	if hs := s.HistoryStatus(); !hs.Failing {
		t.Error("the live hit reached the hub only after the recovery had written every held hit")
	}
	waitFor(t, 120*time.Second, "the store to hold every number", func() bool {
		hs := s.HistoryStatus()
		return !hs.Failing && hs.LastSeq == n+1
	})
}

// TestRecoveryEndsWhileHitsArriveFasterThanItWrites: hits keep coming
// faster than recovery writes the held ones one by one; recovery still
// ends (it used to serve every new hit into the backlog and never
// emptied it), and then the store holds every number the hub gave.
func TestRecoveryEndsWhileHitsArriveFasterThanItWrites(t *testing.T) {
	s := recoveringWith(t, 3_000, 64<<20)
	pad := benchPad()
	id := uint64(100_000)
	for s.solo.failing.Load() { // as fast as this goroutine can: bounded by the deadline below
		if id > 100_000+2_000_000 {
			t.Fatalf("still recovering after %d more hits: held %d, lost %d", id-100_000, s.HistoryStatus().HeldInMemory, s.HistoryStatus().LostFromHistory)
		}
		for range 100 {
			s.Deliver(benchHit(id, pad))
			id++
		}
		runtime.Gosched()
	}
	waitFor(t, 60*time.Second, "the store to hold every number the hub gave", func() bool {
		return s.HistoryStatus().LastSeq == s.Hub().Stats().Newest && s.pub.status().Buffered == 0
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

// TestPlaceholdersAtTheStoresEndKeepTheirNumbers: the store ends in
// placeholders (a run wrote them for numbers a failing run had handed
// out). After a restart the next hit is numbered after them, also when
// the store fails and it is served from memory, and a subscriber resuming
// before them is told they are gone, never handed one as an empty hit.
func TestPlaceholdersAtTheStoresEndKeepTheirNumbers(t *testing.T) {
	dir, before, _ := afterAFailingRun(t)
	s, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StoreRetry: 100 * time.Millisecond})
	waitFor(t, 30*time.Second, "the placeholders to be written", func() bool {
		hs := s.HistoryStatus()
		return !hs.Failing && hs.LastSeq == before+50
	})
	stop()

	s, stop = soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StoreRetry: time.Hour})
	defer stop()
	sub := s.Hub().Subscribe(before+1, fanout.Info{}, nil)
	defer sub.Close()
	refuseWrites(t, s, 10)
	deliverAll(t, s, 100, 100)
	waitFor(t, 10*time.Second, "the store to fail", func() bool { return s.solo.failing.Load() })
	var gaps []fanout.Gap
	deadline := time.Now().Add(10 * time.Second)
	for {
		if time.Now().After(deadline) {
			t.Fatalf("no hit after gap notices %v", gaps)
		}
		es, gap, wake, err := sub.Poll(context.Background(), func(*fanout.Entry) int { return 1 }, 1000)
		if err != nil {
			t.Fatal(err)
		}
		if n := len(gaps); gap != nil && n > 0 && gaps[n-1].To+1 == gap.From {
			gaps[n-1].To = gap.To // history names lost numbers as it reads them
		} else if gap != nil {
			gaps = append(gaps, *gap)
		}
		if len(es) == 0 {
			if wake != nil && gap == nil {
				select {
				case <-wake:
				case <-time.After(100 * time.Millisecond):
				}
			}
			continue
		}
		if len(es[0].Raw()) == 0 {
			t.Fatalf("number %d reached the subscriber as an empty hit", es[0].Seq)
		}
		if es[0].Seq != before+51 || len(gaps) != 1 || gaps[0] != (fanout.Gap{From: before + 1, To: before + 50}) {
			t.Fatalf("got hit %d after gap notices %v; want hit %d after notices for %d..%d", es[0].Seq, gaps, before+51, before+1, before+50)
		}
		return
	}
}

// afterAFailingRun is a data dir whose store holds 10 hits, up to number
// before, and whose state file says the last run handed out 50 more from
// memory (as a run whose store failed leaves it), and that file's path.
func afterAFailingRun(t *testing.T) (dir string, before uint64, path string) {
	t.Helper()
	dir = t.TempDir()
	s, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{})
	deliverAll(t, s, 1, 10)
	before = s.Hub().Stats().Newest
	stop()
	path = filepath.Join(dir, "upstream-"+NamesFor("bench").Stream+".state")
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
	return dir, before, path
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
