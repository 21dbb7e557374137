package fanout

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"testing"
	"time"
)

// memHistory is History over a slice, for tests: it holds numbers
// first.., some of them Lost, and hands them out a few at a time.
type memHistory struct {
	mu   sync.Mutex
	recs []Record
	open int // replays not closed
}

func (m *memHistory) add(seq uint64, raw string, lost bool) {
	m.mu.Lock()
	m.recs = append(m.recs, Record{Seq: seq, Raw: []byte(raw), At: time.Now(), Lost: lost})
	m.mu.Unlock()
}

func (m *memHistory) Range() (uint64, uint64) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(m.recs) == 0 {
		return 1, 0
	}
	return m.recs[0].Seq, m.recs[len(m.recs)-1].Seq
}

func (m *memHistory) Replay(from uint64) Replay {
	m.mu.Lock()
	m.open++
	m.mu.Unlock()
	return &memReplay{h: m, from: from}
}

type memReplay struct {
	h    *memHistory
	from uint64
}

func (r *memReplay) Next() ([]Record, <-chan struct{}, error) {
	r.h.mu.Lock()
	defer r.h.mu.Unlock()
	var out []Record
	for _, rec := range r.h.recs {
		if rec.Seq >= r.from && len(out) < 37 {
			out = append(out, rec)
		}
	}
	if len(out) == 0 {
		return nil, make(chan struct{}), nil
	}
	r.from = out[len(out)-1].Seq + 1
	return out, nil, nil
}

func (r *memReplay) Close() {
	r.h.mu.Lock()
	r.h.open--
	r.h.mu.Unlock()
}

// filled is a hub with a ring of 100 and a history of n hits numbered
// 1..n (the ring holds the last 100), a few of them lost.
func filled(n int, lost map[uint64]bool, maxReplays int) (*Hub, *memHistory) {
	h := NewHub(Options{FirstSeq: 1, MaxHits: 100})
	hist := &memHistory{}
	h.SetHistory(hist, maxReplays, 0)
	for i := 1; i <= n; i++ {
		raw := fmt.Sprintf(`{"n":%d}`, i)
		hist.add(uint64(i), raw, lost[uint64(i)])
		h.AppendAt(uint64(i), []byte(raw), time.Now())
	}
	return h, hist
}

// drain polls s until it is at live, returning the numbers it got and
// the gaps it was told of.
func drain(t *testing.T, s *Subscriber) (seqs []uint64, gaps []Gap) {
	t.Helper()
	for polls := 0; ; polls++ {
		if polls > 10_000 {
			t.Fatal("never reached live")
		}
		es, gap, wake, err := s.Poll(context.Background(), anySize, 1<<20)
		if err != nil {
			t.Fatal(err)
		}
		if gap != nil {
			gaps = append(gaps, *gap)
		}
		for _, e := range es {
			seqs = append(seqs, e.Seq)
		}
		if wake != nil && len(es) == 0 && gap == nil {
			return seqs, gaps
		}
	}
}

// TestResumeOlderThanTheRingReadsHistory: a subscriber 5,000 hits back
// with a ring of 100 gets every hit from history, in order, once, then
// the ring and what comes live, without a gap notice; numbers history
// lost are named exactly; its replay slot is given back when it reaches
// the ring.
func TestResumeOlderThanTheRingReadsHistory(t *testing.T) {
	h, hist := filled(6000, map[uint64]bool{3000: true, 3001: true}, 1)
	s, err := h.Open(1000, Info{}, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if st := h.ReplayStats(); st.Running != 1 {
		t.Fatalf("replays running: %+v", st)
	}
	seqs, gaps := drain(t, s)
	if len(gaps) != 1 || gaps[0] != (Gap{From: 3000, To: 3001}) {
		t.Fatalf("gaps %v; want exactly the two lost numbers", gaps)
	}
	want := uint64(1000)
	for _, q := range seqs {
		if want == 3000 {
			want = 3002
		}
		if q != want {
			t.Fatalf("got %d where %d was due", q, want)
		}
		want++
	}
	if want != 6001 {
		t.Fatalf("stopped at %d", want)
	}
	if st := h.ReplayStats(); st.Running != 0 || hist.open != 0 {
		t.Fatalf("at the ring, the replay is still held: %+v, %d open", st, hist.open)
	}
	h.AppendAt(6001, []byte(`{"n":6001}`), time.Now())
	if seqs, gaps := drain(t, s); len(seqs) != 1 || seqs[0] != 6001 || gaps != nil {
		t.Fatalf("live after the replay: %v %v", seqs, gaps)
	}
}

// TestReplaysAreCapped: with one replay slot, a second subscriber older
// than the ring is refused (ErrReplaysBusy, counted) while the first
// replays; a subscriber within the ring is not affected; Oldest means
// the oldest hit in history; a resume older than history gets a gap to
// its first number.
func TestReplaysAreCapped(t *testing.T) {
	h, _ := filled(1000, nil, 1)
	first, err := h.Open(Oldest, Info{}, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	if first.Cursor() != 1 {
		t.Fatalf("Oldest starts at %d; want history's first, 1", first.Cursor())
	}
	if _, err := h.Open(500, Info{}, nil, Limits{}); !errors.Is(err, ErrReplaysBusy) {
		t.Fatalf("a second replay: %v, want ErrReplaysBusy", err)
	}
	if st := h.ReplayStats(); st.Refused != 1 {
		t.Fatalf("refused: %+v", st)
	}
	inRing, err := h.Open(950, Info{}, nil, Limits{})
	if err != nil {
		t.Fatalf("a resume within the ring was refused: %v", err)
	}
	inRing.Close()
	first.Close() // leaving gives the slot back
	late, err := h.Open(500, Info{}, &Selector{Sample: 0}, Limits{})
	if err != nil {
		t.Fatalf("after the first left: %v", err)
	}
	defer late.Close()
	seqs, gaps := drain(t, late)
	if len(seqs) != 501 || seqs[0] != 500 || len(gaps) != 0 {
		t.Fatalf("got %d hits from %v, gaps %v", len(seqs), seqs[:1], gaps)
	}
}

// TestFiltersApplyToHistory: a filtered subscriber replaying history gets
// only the matching hits, and replayed hits stay out of the hub's derived
// window (live subscribers' shared results are not pushed out).
func TestFiltersApplyToHistory(t *testing.T) {
	h, _ := filled(3000, nil, 4)
	c := mustCompiler(t)
	f, err := c.Filter(`hit.n % 100 == 0`)
	if err != nil {
		t.Fatal(err)
	}
	s, err := h.Open(1, Info{}, &Selector{Filter: f}, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	seqs, gaps := drain(t, s)
	if len(seqs) != 30 || seqs[0] != 100 || seqs[29] != 3000 || gaps != nil {
		t.Fatalf("filtered replay: %v, gaps %v", seqs, gaps)
	}
	h.dmu.Lock()
	windowed := 0
	for _, e := range h.dwin {
		if e != nil && e.replayed {
			windowed++
		}
	}
	h.dmu.Unlock()
	if windowed > 0 {
		t.Fatalf("%d replayed entries in the derived window", windowed)
	}
}

// TestReplaySlotGoesBackWhenHistoryCannotServe: a subscriber that took a
// replay slot at Open, and whose history was emptied (MaxAge) before its
// first read, reads the ring with a gap notice and gives the slot back at
// once, not when it leaves: the next resume is not refused.
func TestReplaySlotGoesBackWhenHistoryCannotServe(t *testing.T) {
	h, hist := filled(1000, nil, 1)
	s, err := h.Open(500, Info{}, nil, Limits{})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	hist.mu.Lock()
	hist.recs = nil
	hist.mu.Unlock()
	seqs, gaps := drain(t, s)
	if len(gaps) != 1 || gaps[0].From != 500 || len(seqs) != 100 || seqs[0] != 901 {
		t.Fatalf("got %d hits from %v, gaps %v; want a gap 500..900, then the ring's 901..1000", len(seqs), seqs[:min(1, len(seqs))], gaps)
	}
	if st := h.ReplayStats(); st.Running != 0 {
		t.Fatalf("%d replay slots held by a subscriber reading the ring", st.Running)
	}
	for i := 850; i <= 1000; i++ { // history again, older than the ring
		hist.add(uint64(i), fmt.Sprintf(`{"n":%d}`, i), false)
	}
	next, err := h.Open(860, Info{}, nil, Limits{})
	if err != nil {
		t.Fatalf("the next resume from history: %v", err)
	}
	next.Close()
}

// TestFilteredReplayStoppedByItsBudgetLosesNothing: a filtered
// subscriber's Poll stops part-way through what history handed over when
// its filters run over their budget (per second, or per Poll); the rest
// is served by the next Poll, not skipped with a gap notice for hits
// history holds.
func TestFilteredReplayStoppedByItsBudgetLosesNothing(t *testing.T) {
	for _, tc := range []struct {
		name, filter string
		budget       float64
		burst        int
	}{
		{"per second", `hit.n % 1 == 0`, 50_000, 50},
		{"per Poll", `[1,2,3,4,5,6,7,8,9,10,11,12,13,14,15,16,17,18,19,20].exists(x, x == hit.n % 10 + 1)`, 200_000, 400_000},
	} {
		t.Run(tc.name, func(t *testing.T) {
			h, _ := filled(3000, nil, 4)
			f, err := mustCompiler(t).Filter(tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			s, err := h.Open(1, Info{}, &Selector{Filter: f}, Limits{FilterBudget: tc.budget, FilterBurst: tc.burst})
			if err != nil {
				t.Fatal(err)
			}
			defer s.Close()
			seqs, gaps := drain(t, s)
			if len(gaps) != 0 {
				t.Errorf("gap notices %v for hits history holds", gaps[:min(3, len(gaps))])
			}
			for i, q := range seqs {
				if q != uint64(i+1) {
					t.Fatalf("hit %d has number %d (%d hits in all); want 1..3000 in order", i, q, len(seqs))
				}
			}
			if len(seqs) != 3000 {
				t.Fatalf("got %d hits; want 3000", len(seqs))
			}
		})
	}
}
