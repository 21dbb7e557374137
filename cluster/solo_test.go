package cluster

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"lsmux/fanout"
)

// TestDataDirProblemsAreNamed: a data dir that cannot be created, holds
// someone else's files, has a damaged marker, or is in use by another
// lsmux is refused at start with the path and what to do.
func TestDataDirProblemsAreNamed(t *testing.T) {
	base := t.TempDir()
	file := filepath.Join(base, "a-file")
	os.WriteFile(file, []byte("x"), 0o600)
	foreign := filepath.Join(base, "foreign")
	os.MkdirAll(foreign, 0o750)
	os.WriteFile(filepath.Join(foreign, "postgres.conf"), []byte("x"), 0o600)
	damaged := filepath.Join(base, "damaged")
	os.MkdirAll(damaged, 0o750)
	os.WriteFile(filepath.Join(damaged, markerFile), []byte("\x00\x00garbage"), 0o600)
	newer := filepath.Join(base, "newer")
	os.MkdirAll(newer, 0o750)
	os.WriteFile(filepath.Join(newer, markerFile), []byte(`{"format":99}`), 0o600)
	for dir, want := range map[string]string{
		filepath.Join(file, "sub"): "cannot create it",
		file:                       "is a file, not a directory",
		foreign:                    "holds files lsmux did not make (postgres.conf)",
		damaged:                    "lsmux-data is damaged",
		newer:                      "written by a newer lsmux (format 99",
	} {
		e, err := OpenEmbedded(EmbeddedOptions{Dir: dir, Logger: quietLogger()})
		if err == nil {
			e.Close()
			t.Errorf("%s: accepted", dir)
			continue
		}
		if !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %v; want the path and %q", dir, err, want)
		}
	}
	ok := filepath.Join(base, "ok")
	e, err := OpenEmbedded(EmbeddedOptions{Dir: ok, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	if _, err := OpenEmbedded(EmbeddedOptions{Dir: ok, Logger: quietLogger()}); err == nil || !strings.Contains(err.Error(), "is in use by lsmux pid") {
		t.Fatalf("a second lsmux on the same data dir: %v", err)
	}
}

// TestReadOnlyDataDirIsNamed mounts a read-only file system (root only).
func TestReadOnlyDataDirIsNamed(t *testing.T) {
	if os.Getuid() != 0 {
		t.Skip("mounts a read-only tmpfs: needs root (CI runs as root)")
	}
	dir := t.TempDir()
	if out, err := exec.Command("mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", dir).CombinedOutput(); err != nil {
		t.Skipf("cannot mount a tmpfs here: %v %s", err, out)
	}
	t.Cleanup(func() { exec.Command("umount", dir).Run() })
	_, err := OpenEmbedded(EmbeddedOptions{Dir: dir, Logger: quietLogger()})
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "is not writable") {
		t.Fatalf("a read-only data dir: %v", err)
	}
}

// TestRestartNumbersOnAndRemembersHitIDs: a single lsmux stores 300 hits,
// stops, and starts again on the same data dir: its ring is warm from disk
// (the same numbers, before it serves), new hits number on, and hits it
// stored before (Adobe's backfill) are dropped as duplicates.
func TestRestartNumbersOnAndRemembersHitIDs(t *testing.T) {
	dir := t.TempDir()
	pad := benchPad()
	s, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{})
	for i := uint64(1); i <= 300; i++ {
		s.Deliver(benchHit(i, pad))
	}
	waitFor(t, 30*time.Second, "300 hits in the hub", func() bool { return s.Hub().Stats().Appended == 300 })
	before := s.Hub().Stats()
	stop()

	s, stop = soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{})
	defer stop()
	warm := s.Hub().Stats()
	if warm.Oldest != before.Oldest || warm.Newest != before.Newest {
		t.Fatalf("after the restart the ring holds %d..%d; before it held %d..%d", warm.Oldest, warm.Newest, before.Oldest, before.Newest)
	}
	for i := uint64(291); i <= 310; i++ { // 10 known, 10 new
		s.Deliver(benchHit(i, pad))
	}
	waitFor(t, 30*time.Second, "the new hits", func() bool { return s.Hub().Stats().Newest == before.Newest+10 })
	if d := s.HistoryStatus().DuplicatesDropped; d != 10 {
		t.Fatalf("%d duplicates dropped; want the 10 hits stored before the restart", d)
	}
	sub := s.Hub().Subscribe(before.Newest-1, fanout.Info{}, nil)
	defer sub.Close()
	es, _, _, _ := sub.Poll(context.Background(), func(e *fanout.Entry) int { return 1 }, 100)
	if len(es) != 12 || !strings.Contains(string(es[0].Raw()), `"hitIdLow":299,`) || !strings.Contains(string(es[2].Raw()), `"hitIdLow":301,`) {
		t.Fatalf("around the restart: %d entries", len(es))
	}
}

// TestReplacedStoreIsRefused: a data dir whose store lost the stream it
// held (deleted, or restored from an older copy) is refused at start
// instead of numbering from scratch.
// TestFirstAttemptIsRecordedBeforeAnyHeartbeat: the data dir says the
// upstream may be open from the moment the first attempt starts, so a
// run killed before its first heartbeat still makes the next one wait
// the reconnect delay.
func TestFirstAttemptIsRecordedBeforeAnyHeartbeat(t *testing.T) {
	dir := t.TempDir()
	start := time.Now()
	_, stop := soloStream(t, dir, fanout.Options{MaxHits: 1000}, Options{StateInterval: time.Hour})
	defer stop()
	st := readState(t, filepath.Join(dir, "upstream-"+NamesFor("bench").Stream+".state"))
	if last := st.lastConnected(time.Hour); last.Before(start) {
		t.Fatalf("the state file says the upstream was last open at %v (heartbeat %v, ended %v); the first attempt started after %v", last, st.Heartbeat, st.Ended, start)
	}
}

func TestReplacedStoreIsRefused(t *testing.T) {
	dir := t.TempDir()
	s, stop := soloStream(t, dir, fanout.Options{}, Options{})
	s.Deliver(benchHit(1, benchPad()))
	waitFor(t, 30*time.Second, "a hit in the hub", func() bool { return s.Hub().Stats().Appended == 1 })
	stop()
	if err := os.RemoveAll(filepath.Join(dir, storeDir)); err != nil {
		t.Fatal(err)
	}
	e, err := OpenEmbedded(EmbeddedOptions{Dir: dir, Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer e.Close()
	node, err := e.Connect(Options{Logger: quietLogger()})
	if err != nil {
		t.Fatal(err)
	}
	defer node.Close()
	err = node.NewStream("bench", fanout.Options{}, &fakePool{name: "solo", log: &upstreamLog{}}).Open(context.Background())
	if err == nil || !strings.Contains(err.Error(), dir) || !strings.Contains(err.Error(), "has lost the history of stream bench") {
		t.Fatalf("a store that lost its stream: %v", err)
	}
}
