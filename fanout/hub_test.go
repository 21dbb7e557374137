package fanout

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"runtime"
	"strings"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func hit(i int) []byte {
	return []byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"pageName":"p%d"}`, i, i))
}

func anySize(e *Entry) int { return len(e.Raw()) }

func poll(s *Subscriber) ([]*Entry, *Gap) {
	e, g, _, _ := s.Poll(context.Background(), anySize, 1<<30)
	return append([]*Entry(nil), e...), g
}

func TestSequenceNumbersAndOrder(t *testing.T) {
	h := NewHub(Options{FirstSeq: 100})
	sub := h.Subscribe(Oldest, Info{}, nil)
	defer sub.Close()
	for i := range 5 {
		if seq := h.Append(hit(i), time.Now()); seq != uint64(100+i) {
			t.Fatalf("hit %d got seq %d", i, seq)
		}
	}
	got, gap := poll(sub)
	if gap != nil || len(got) != 5 {
		t.Fatalf("got %d entries, gap %v", len(got), gap)
	}
	for i, e := range got {
		if e.Seq != uint64(100+i) || !bytes.Equal(e.Raw(), hit(i)) {
			t.Fatalf("entry %d: seq %d raw %s", i, e.Seq, e.Raw())
		}
	}
}

func TestDefaultFirstSeqIsStartTimeInMicroseconds(t *testing.T) {
	before := uint64(time.Now().UnixMicro())
	h := NewHub(Options{})
	seq := h.Append(hit(0), time.Now())
	if seq < before || seq > uint64(time.Now().UnixMicro()) {
		t.Fatalf("first seq %d is not the start time in µs (%d)", seq, before)
	}
	if seq >= 1<<53 {
		t.Fatalf("seq %d exceeds JavaScript's safe integers", seq)
	}
}

func TestRingIsBoundedByCountAndBytes(t *testing.T) {
	h := NewHub(Options{MaxHits: 10, FirstSeq: 1})
	for i := range 25 {
		h.Append(hit(i), time.Now())
	}
	st := h.Stats()
	if st.Hits != 10 || st.Oldest != 16 || st.Newest != 25 || st.Evicted != 15 {
		t.Fatalf("stats %+v, want 10 hits 16..25", st)
	}
	big := bytes.Repeat([]byte("x"), 10_000)
	hb := NewHub(Options{MaxHits: 1000, MaxBytes: 100_000, FirstSeq: 1})
	for range 100 {
		hb.Append(big, time.Now())
		if b := hb.Stats().Bytes; b > 100_000 {
			t.Fatalf("ring holds %d bytes over its 100000 bound", b)
		}
	}
	if n := hb.Stats().Hits; n != 9 {
		t.Fatalf("ring of 100 KB holds %d hits of 10 KB, want 9 (a hit is held once)", n)
	}
}

// TestRingHoldsAHitOnce: what a hit costs in memory, measured as the
// bytes allocated for its entry (struct and buffer: every encoding is a
// piece of one copy), is at most 1.3 times the hit's own size for a
// typical 1.25 KB hit, and the ring's byte budget counts at least that.
func TestRingHoldsAHitOnce(t *testing.T) {
	raw := []byte(`{"hitIdHigh":1,"hitIdLow":2,"pageName":"` + strings.Repeat("p", 1180) + `"}`)
	const n = 2000
	entries := make([]*Entry, n)
	var before, after runtime.MemStats
	runtime.GC()
	runtime.ReadMemStats(&before)
	for i := range entries {
		entries[i] = newEntry(uint64(1_000_000_000_000+i), raw, time.Now())
	}
	runtime.GC()
	runtime.ReadMemStats(&after)
	perHit := float64(after.HeapAlloc-before.HeapAlloc) / n
	runtime.KeepAlive(entries)
	if ratio := perHit / float64(len(raw)); ratio > 1.3 {
		t.Errorf("a %d-byte hit allocates %.0f bytes in the ring (%.2f×), want at most 1.3×", len(raw), perHit, ratio)
	}
	if counted := entries[0].Size(); float64(counted) < perHit {
		t.Errorf("the ring's budget counts %d bytes per hit, less than the %.0f it allocates", counted, perHit)
	}
}

func TestSlowSubscriberGetsAGapThenTheOldest(t *testing.T) {
	h := NewHub(Options{MaxHits: 10, FirstSeq: 1})
	slow := h.Subscribe(Oldest, Info{}, nil)
	defer slow.Close()
	for i := range 30 {
		h.Append(hit(i), time.Now()) // the subscriber never reads meanwhile: Append must not care
	}
	got, gap := poll(slow)
	if gap == nil || gap.From != 1 || gap.To != 20 {
		t.Fatalf("gap %+v, want 1..20", gap)
	}
	if len(got) != 10 || got[0].Seq != 21 {
		t.Fatalf("after the gap: %d entries from %d, want 10 from 21", len(got), got[0].Seq)
	}
	if s := h.Subscribers()[0]; s.Gaps != 1 || s.Lost != 20 || s.Lag != 0 {
		t.Fatalf("subscriber status %+v", s)
	}
}

func TestResumeFromAnEarlierRunOrTheFutureIsAGap(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1_000_000})
	for i := range 3 {
		h.Append(hit(i), time.Now())
	}
	old := h.Subscribe(999_990, Info{}, nil) // from a previous run: below this run's first number
	defer old.Close()
	got, gap := poll(old)
	if gap == nil || *gap != (Gap{999_990, 999_999}) || len(got) != 3 {
		t.Fatalf("old id: gap %+v, %d entries", gap, len(got))
	}
	future := h.Subscribe(5_000_000, Info{}, nil) // a previous run whose clock was ahead
	defer future.Close()
	got, gap = poll(future)
	if gap == nil || *gap != (Gap{5_000_000, 5_000_000}) || len(got) != 3 || got[0].Seq != 1_000_000 {
		t.Fatalf("future id: gap %+v, %d entries", gap, len(got))
	}
	exact := h.Subscribe(1_000_001, Info{}, nil)
	defer exact.Close()
	if got, gap = poll(exact); gap != nil || len(got) != 2 || got[0].Seq != 1_000_001 {
		t.Fatalf("resume inside the ring: gap %+v, %d entries", gap, len(got))
	}
	next := h.Subscribe(1_000_003, Info{}, nil) // the next number: nothing missed, nothing yet
	defer next.Close()
	if got, gap = poll(next); gap != nil || len(got) != 0 {
		t.Fatalf("resume at next: gap %+v, %d entries", gap, len(got))
	}
}

func TestLiveStartsAfterWhatIsHeld(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	h.Append(hit(0), time.Now())
	live := h.Subscribe(Live, Info{}, nil)
	defer live.Close()
	_, _, wake, _ := live.Poll(context.Background(), anySize, 1<<20)
	if wake == nil {
		t.Fatal("nothing ready but no wake channel")
	}
	select {
	case <-wake:
		t.Fatal("woken before any append")
	default:
	}
	h.Append(hit(1), time.Now())
	select {
	case <-wake:
	case <-time.After(time.Second):
		t.Fatal("Append did not wake the waiting subscriber")
	}
	got, _ := poll(live)
	if len(got) != 1 || got[0].Seq != 2 {
		t.Fatalf("live subscriber got %d entries", len(got))
	}
}

func TestPollRespectsTheBatchBounds(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	sub := h.Subscribe(Oldest, Info{}, nil)
	defer sub.Close()
	for i := range MaxBatch + 10 {
		h.Append(hit(i), time.Now())
	}
	e, _, _, _ := sub.Poll(context.Background(), anySize, 1<<30)
	if len(e) != MaxBatch {
		t.Fatalf("batch of %d, want the cap %d", len(e), MaxBatch)
	}
	e, _, _, _ = sub.Poll(context.Background(), anySize, 1) // a byte budget below one entry still moves on
	if len(e) != 1 {
		t.Fatalf("batch of %d under a 1-byte budget, want 1", len(e))
	}
}

func TestEncodingsAreTheHitBytesUnchanged(t *testing.T) {
	for _, size := range []int{10, 125 - 40, 200, 70_000} {
		raw := []byte(`{"v":"` + strings.Repeat("é", size/2) + `"}`)
		e := newEntry(42, raw, time.Now())
		payload := wsPayload(t, e.WSFrame())
		var msg struct {
			Type string          `json:"type"`
			Seq  uint64          `json:"seq"`
			Hit  json.RawMessage `json:"hit"`
		}
		if err := json.Unmarshal(payload, &msg); err != nil || msg.Type != "hit" || msg.Seq != 42 || !bytes.Equal(msg.Hit, raw) {
			t.Fatalf("size %d: ws message %q (%v)", size, payload[:min(len(payload), 80)], err)
		}
		if want := "id: 42\nevent: hit\ndata: " + string(raw) + "\n\n"; sseEvent(e) != want || e.SSELen() != len(want) {
			t.Fatalf("sse event %q (length %d)", sseEvent(e)[:60], e.SSELen())
		}
		if ndjson(e) != string(raw)+"\r\n" || e.NDJSONLen() != len(raw)+2 || !bytes.Equal(e.Raw(), raw) {
			t.Fatal("ndjson line or raw differ from the hit")
		}
	}
	// A bare CR is JSON whitespace but an SSE line end.
	e := newEntry(1, []byte("{\"a\":\r1}"), time.Now())
	if strings.Contains(sseEvent(e), "\r") || !bytes.Equal(e.Raw(), []byte("{\"a\":\r1}")) || e.SSELen() != len(sseEvent(e)) {
		t.Fatalf("CR handling: sse %q raw %q", sseEvent(e), e.Raw())
	}
}

// wsPayload decodes one unmasked frame and checks its header.
func wsPayload(t *testing.T, f []byte) []byte {
	t.Helper()
	if f[0] != 0x81 {
		t.Fatalf("first byte %#x, want FIN|text", f[0])
	}
	n, off := int(f[1]), 2
	switch n {
	case 126:
		n, off = int(binary.BigEndian.Uint16(f[2:])), 4
	case 127:
		n, off = int(binary.BigEndian.Uint64(f[2:])), 10
	}
	if len(f)-off != n {
		t.Fatalf("frame says %d bytes, carries %d", n, len(f)-off)
	}
	return f[off:]
}

// TestAppendNeverWaitsForAStalledReader is the regression test for the bug
// the soak found: with a read-write lock, a subscriber goroutine
// descheduled in the middle of Read (here: stuck in its size callback)
// held the read lock and made Append, the upstream reader, wait for it.
func TestAppendNeverWaitsForAStalledReader(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	h.Append(hit(0), time.Now())
	inRead, release := make(chan struct{}), make(chan struct{})
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Read(1, make([]*Entry, 0, 8), 1<<20, func(e *Entry) int {
			close(inRead)
			<-release // a reader that stops mid-read
			return 1
		})
	}()
	<-inRead
	appended := make(chan struct{})
	go func() {
		for i := range 1000 {
			h.Append(hit(i), time.Now())
		}
		close(appended)
	}()
	select {
	case <-appended:
	case <-time.After(5 * time.Second):
		t.Fatal("Append waited for a reader stuck in Read")
	}
	close(release)
	<-done
}

// TestAppendAtKeepsNumbersGivenElsewhere is cluster mode's numbering: the
// JetStream sequence becomes the hit's number on every replica; a number
// already held is ignored, and a jump (hits JetStream discarded before this
// replica read them) reaches a lagging subscriber as a gap notice, then the
// stream goes on.
func TestAppendAtKeepsNumbersGivenElsewhere(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	h.Reset(500) // the replica starts at JetStream's sequence 500
	live := h.Subscribe(Live, Info{}, nil)
	defer live.Close()
	if got := h.Start(Live); got != 500 {
		t.Fatalf("after Reset(500) live starts at %d", got)
	}
	for seq := uint64(500); seq < 503; seq++ {
		if !h.AppendAt(seq, hit(int(seq)), time.Now()) {
			t.Fatalf("AppendAt(%d) refused", seq)
		}
	}
	if h.AppendAt(501, hit(9), time.Now()) {
		t.Fatal("a number already held was appended again")
	}
	got, gap := poll(live)
	if gap != nil || len(got) != 3 || got[0].Seq != 500 || got[2].Seq != 502 || !bytes.Equal(got[1].Raw(), hit(501)) {
		t.Fatalf("got %d entries from %v, gap %v", len(got), got, gap)
	}
	lagging := h.Subscribe(500, Info{}, nil)
	defer lagging.Close()
	h.AppendAt(510, hit(510), time.Now()) // 503..509 never reached this replica
	got, gap = poll(live)
	if gap == nil || gap.From != 503 || gap.To != 509 || len(got) != 1 || got[0].Seq != 510 {
		t.Fatalf("a subscriber at 503: gap %+v with %d entries, want the gap 503..509, then 510", gap, len(got))
	}
	got, gap = poll(lagging)
	if gap == nil || gap.From != 500 || gap.To != 509 {
		t.Fatalf("a subscriber still at 500: gap %+v, want 500..509 (the jump drops what was held)", gap)
	}
	if st := h.Stats(); st.Oldest != 510 || st.Newest != 510 || st.Hits != 1 {
		t.Fatalf("stats after the jump: %+v", st)
	}
}

// TestCursorAheadWaitsWithinMaxAhead: in cluster mode a subscriber may
// arrive from a replica a little ahead of this one; it waits for its
// number instead of getting a gap notice and the whole ring again.
func TestCursorAheadWaitsWithinMaxAhead(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1, MaxAhead: 10})
	for i := range 3 {
		h.AppendAt(uint64(i+1), hit(i+1), time.Now())
	}
	ahead := h.Subscribe(8, Info{}, nil) // this replica has 1..3; the client has seen up to 7
	defer ahead.Close()
	got, gap, wake, _ := ahead.Poll(context.Background(), anySize, 1<<30)
	if gap != nil || len(got) != 0 || wake == nil {
		t.Fatalf("a cursor 5 ahead: %d entries, gap %v, wake %v; want to wait", len(got), gap, wake)
	}
	for seq := uint64(4); seq <= 9; seq++ {
		h.AppendAt(seq, hit(int(seq)), time.Now())
	}
	<-wake
	got, gap = poll(ahead)
	if gap != nil || len(got) != 2 || got[0].Seq != 8 || got[1].Seq != 9 {
		t.Fatalf("after catching up: %d entries from %v, gap %v; want 8 and 9", len(got), got, gap)
	}
	far := h.Subscribe(100, Info{}, nil) // beyond MaxAhead: a number from another numbering
	defer far.Close()
	if _, gap := poll(far); gap == nil || gap.From != 100 || gap.To != 100 {
		t.Fatalf("a cursor far ahead: gap %v, want a notice naming 100", gap)
	}
	h.SetHorizon(195) // JetStream says numbers up to 195 exist: this replica is behind
	behind := h.Subscribe(150, Info{}, nil)
	defer behind.Close()
	if got, gap, wake, _ := behind.Poll(context.Background(), anySize, 1<<30); gap != nil || len(got) != 0 || wake == nil {
		t.Fatalf("a cursor within the horizon: %d entries, gap %v; want to wait", len(got), gap)
	}
	h.Reset(1) // the numbering started over (the JetStream stream was recreated)
	if _, gap := poll(behind); gap == nil || gap.From != 150 {
		t.Fatalf("after the numbering started over, a cursor at 150: gap %v, want a notice", gap)
	}
}

func sseEvent(e *Entry) string {
	h, d, end := e.SSEEvent()
	return string(h) + string(d) + string(end)
}

func ndjson(e *Entry) string {
	raw, end := e.NDJSON()
	return string(raw) + string(end)
}
