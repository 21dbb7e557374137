package cluster

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// upstreamState is what a single lsmux records about one stream in its
// data dir, so the 60-second rule and the numbering hold across restarts,
// kill -9 included: a process that dies says no goodbye, so while its
// upstream is connected it writes a heartbeat every StateInterval, and the
// next run counts the reconnect delay from the later of the goodbye and
// the last heartbeat (plus two intervals: the connection may have lived
// on that long after it).
type upstreamState struct {
	Stream string `json:"stream"`
	// Created is when the stream's JetStream stream was created: a store
	// that lost it (damaged, or replaced) is noticed at start.
	Created time.Time `json:"created,omitzero"`
	// Ended is when the last upstream connection ended, written when it
	// did; Heartbeat when one was last known to be open.
	Ended     time.Time `json:"ended,omitzero"`
	Heartbeat time.Time `json:"heartbeat,omitzero"`
	// While the store fails, hits are numbered in memory beyond what it
	// holds: HandedOut is reserved before any of them is handed out (the
	// highest number that may be in subscribers' hands; solo.go's
	// reserve). A run after a crash starts above it, so no number means
	// two hits. Margin is what older versions wrote beside it (they
	// recorded the numbers at each heartbeat, plus a margin): openState
	// folds it into HandedOut, and it is never written again.
	HandedOut uint64 `json:"handedOut,omitempty"`
	Margin    uint64 `json:"margin,omitempty"`
}

// lastConnected is the latest moment the previous run's upstream can
// have been open (zero: never connected).
func (st upstreamState) lastConnected(interval time.Duration) time.Time {
	t := st.Ended
	if !st.Heartbeat.IsZero() {
		if hb := st.Heartbeat.Add(2 * interval); hb.After(t) {
			t = hb
		}
	}
	return t
}

// stateSize is the state file's fixed size: it is rewritten in place, so
// a full disk cannot stop the heartbeat and a torn write leaves padding,
// not a shorter file.
const stateSize = 512

// stateFile is one stream's state in the data dir.
type stateFile struct {
	path string
	f    *os.File
}

// openState opens (creating) the stream's state file and reads what the
// previous run left. A file that cannot be understood is reported: the
// caller then waits the whole reconnect delay, the safe reading.
func openState(dir, stream string) (*stateFile, upstreamState, error) {
	path := filepath.Join(dir, "upstream-"+NamesFor(stream).Stream+".state")
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, upstreamState{}, fmt.Errorf("LSMUX_DATA_DIR=%s: cannot open %s: %w", dir, filepath.Base(path), err)
	}
	sf := &stateFile{path: path, f: f}
	b := make([]byte, stateSize)
	n, err := f.ReadAt(b, 0)
	if err != nil && !errors.Is(err, io.EOF) {
		f.Close()
		return nil, upstreamState{}, fmt.Errorf("LSMUX_DATA_DIR=%s: cannot read %s: %w (check the disk; lsmux needs it to keep the reconnect delay and the numbering across restarts)", dir, filepath.Base(path), err)
	}
	var st upstreamState
	text := bytes.TrimSpace(b[:n])
	if len(text) > 0 {
		if err := json.Unmarshal(text, &st); err != nil {
			return sf, upstreamState{Stream: stream}, fmt.Errorf("%s is unreadable (%v)", filepath.Base(path), err)
		}
	}
	st.Stream = stream
	st.HandedOut, st.Margin = st.HandedOut+st.Margin, 0
	if n < stateSize {
		// Reserve the file's size while there is room, so later writes
		// overwrite and never need new blocks.
		if err := sf.write(st); err != nil {
			return nil, st, fmt.Errorf("LSMUX_DATA_DIR=%s: cannot write %s: %w", dir, filepath.Base(path), err)
		}
	}
	return sf, st, nil
}

// write records st in place and flushes it to disk.
func (sf *stateFile) write(st upstreamState) error {
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	if len(b) >= stateSize {
		return fmt.Errorf("state too large (%d bytes)", len(b))
	}
	buf := bytes.Repeat([]byte{' '}, stateSize)
	copy(buf, b)
	buf[stateSize-1] = '\n'
	if _, err := sf.f.WriteAt(buf, 0); err != nil {
		return err
	}
	return sf.f.Sync()
}

func (sf *stateFile) close() { sf.f.Close() }
