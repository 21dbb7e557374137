// Package checkpoint keeps a consumer's place in an lsmux stream in a
// file: the last sequence number written to its output, so a pipeline that
// restarts resumes after it, losing and repeating nothing lsmux still
// holds.
//
// The file is replaced whole (written beside it, then renamed over it), so
// it is always one complete state, whatever moment the process dies at. A
// rename survives a killed process without fsync (the page cache is the
// kernel's); fsync, which only a power loss needs, runs at an interval,
// and the caller flushes its output first: a checkpoint on disk never
// names output that is not.
//
// When the output is a regular file, a batch is announced before it is
// written (its offset, length and checksum), and a restart looks at the
// output to learn whether the batch got there: exactly once even when the
// process dies between writing a batch and recording it. Into a pipe,
// that moment repeats the batch (at least once).
package checkpoint

import (
	"encoding/json"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// State is what the checkpoint file holds.
type State struct {
	// Stream is the stream the numbers belong to: a checkpoint is not
	// used for another.
	Stream string `json:"stream"`
	// Seq is the last hit written to the output.
	Seq uint64 `json:"seq"`
	// Offset is the output file's size after it (0 when the output is
	// not a file).
	Offset int64 `json:"offset,omitempty"`
	// Pending is a batch that was being written.
	Pending *Batch    `json:"pending,omitempty"`
	Saved   time.Time `json:"saved"`
}

// Batch is a batch of output announced before it is written.
type Batch struct {
	// Seq is the last hit in the batch.
	Seq    uint64 `json:"seq"`
	Offset int64  `json:"offset"`
	Length int64  `json:"length"`
	CRC    uint32 `json:"crc32"`
}

// NewBatch describes data about to be written at offset, ending with hit
// seq.
func NewBatch(seq uint64, offset int64, data []byte) *Batch {
	return &Batch{Seq: seq, Offset: offset, Length: int64(len(data)), CRC: crc32.ChecksumIEEE(data)}
}

// File is a checkpoint file.
type File struct {
	path      string
	syncEvery time.Duration
	lastSync  time.Time
	unsynced  bool // a Save since the last durable one
}

// Open reads the checkpoint at path; found is false when there is none
// yet. syncEvery is how often a Save is also flushed to disk.
func Open(path string, syncEvery time.Duration) (f *File, st State, found bool, err error) {
	f = &File{path: path, syncEvery: syncEvery, lastSync: time.Now()}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		dir := filepath.Dir(path)
		if _, err := os.Stat(dir); err != nil {
			return nil, st, false, fmt.Errorf("checkpoint %s: its directory: %w", path, err)
		}
		return f, st, false, nil
	}
	if err != nil {
		return nil, st, false, fmt.Errorf("checkpoint %s: %w", path, err)
	}
	if err := json.Unmarshal(b, &st); err != nil || st.Stream == "" {
		return nil, st, false, fmt.Errorf("checkpoint %s is not an lsmux tail checkpoint (or is damaged): %v; move it away to start from --from", path, errOr(err, "no stream"))
	}
	return f, st, true, nil
}

func errOr(err error, s string) string {
	if err != nil {
		return err.Error()
	}
	return s
}

// Save replaces the checkpoint with st; durable also flushes it to disk
// (the file before the rename, then its directory). Flush the output to
// disk before a durable Save.
func (f *File) Save(st State, durable bool) error {
	st.Saved = time.Now().UTC()
	b, err := json.Marshal(st)
	if err != nil {
		return err
	}
	tmp := f.path + ".tmp"
	w, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return fmt.Errorf("checkpoint: %w", err)
	}
	_, err = w.Write(append(b, '\n'))
	if err == nil && durable {
		err = w.Sync()
	}
	if cerr := w.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, f.path)
	}
	if err == nil && durable {
		err = syncDir(filepath.Dir(f.path))
	}
	if err != nil {
		return fmt.Errorf("checkpoint %s: %w", f.path, err)
	}
	f.unsynced = !durable
	if durable {
		f.lastSync = time.Now()
	}
	return nil
}

// SyncDue reports whether syncEvery has passed since the last durable
// Save: time to flush the output, then Save durably.
func (f *File) SyncDue() bool { return time.Since(f.lastSync) >= f.syncEvery }

// Unsynced reports whether a Save since the last durable one is not yet
// on disk.
func (f *File) Unsynced() bool { return f.unsynced }

func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return err
	}
	defer d.Close()
	if err := d.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
		return fmt.Errorf("sync %s: %w", dir, err)
	}
	return nil
}

// Resume is where a consumer with checkpoint st goes on, given its output
// (nil: not a regular file). When a pending batch was cut short in a file
// output, the cut part is removed (truncate) so the file holds whole
// hits. note says what was found, for the operator ("" when nothing
// unusual).
func Resume(st State, out *os.File) (after uint64, note string, err error) {
	p := st.Pending
	if p == nil {
		return st.Seq, "", nil
	}
	if out == nil {
		return st.Seq, fmt.Sprintf("the last batch before the stop (hits up to %d) may be written again: the output is not a file, so it cannot be checked", p.Seq), nil
	}
	fi, err := out.Stat()
	if err != nil {
		return 0, "", fmt.Errorf("output: %w", err)
	}
	size := fi.Size()
	switch {
	case size >= p.Offset+p.Length:
		buf := make([]byte, p.Length)
		if err := readAt(out, buf, p.Offset); err != nil && !errors.Is(err, io.EOF) {
			return st.Seq, fmt.Sprintf("the output cannot be read back (%v): the last batch (hits up to %d) may be written again", err, p.Seq), nil
		}
		if crc32.ChecksumIEEE(buf) == p.CRC {
			return p.Seq, "", nil
		}
		return st.Seq, fmt.Sprintf("the output changed since the stop (other data at offset %d): the last batch (hits up to %d) may be written again", p.Offset, p.Seq), nil
	case size > p.Offset:
		if err := out.Truncate(p.Offset); err != nil {
			return 0, "", fmt.Errorf("output: remove the half-written last batch: %w", err)
		}
		return st.Seq, fmt.Sprintf("removed the half-written last batch (%d bytes at offset %d); it is written again", size-p.Offset, p.Offset), nil
	default:
		return st.Seq, "", nil
	}
}

// readAt reads out at off through a second, read-only handle when it can
// (an output redirected with >> is open for writing only), else through
// out.
func readAt(out *os.File, buf []byte, off int64) error {
	r, err := os.Open("/proc/self/fd/" + strconv.Itoa(int(out.Fd())))
	if err != nil {
		_, err = out.ReadAt(buf, off)
		return err
	}
	defer r.Close()
	_, err = r.ReadAt(buf, off)
	return err
}
