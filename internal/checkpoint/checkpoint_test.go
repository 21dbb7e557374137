package checkpoint

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestResumeLooksAtTheOutput: a batch announced before a stop counts as
// written only when the output file holds exactly it; half of it is cut
// off; a replaced output or a pipe resumes before it.
func TestResumeLooksAtTheOutput(t *testing.T) {
	batch := []byte("{\"a\":3}\n{\"a\":4}\n")
	before := []byte("{\"a\":1}\n{\"a\":2}\n")
	st := State{Stream: "demo", Seq: 2, Offset: int64(len(before)), Pending: NewBatch(4, int64(len(before)), batch)}
	for _, tc := range []struct {
		name     string
		file     []byte
		after    uint64
		size     int
		noteHas  string
		notAFile bool
	}{
		{"the batch got there", append(append([]byte{}, before...), batch...), 4, len(before) + len(batch), "", false},
		{"it did not", before, 2, len(before), "", false},
		{"half of it did", append(append([]byte{}, before...), batch[:5]...), 2, len(before), "removed the half-written", false},
		{"other bytes are there", append(append([]byte{}, before...), []byte("{\"b\":9}\n{\"b\":9}\n")...), 2, len(before) + len(batch), "the output changed", false},
		{"the output was replaced", []byte{}, 2, 0, "", false},
		{"a pipe", nil, 2, 0, "may be written again", true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var out *os.File
			if !tc.notAFile {
				path := filepath.Join(t.TempDir(), "out")
				os.WriteFile(path, tc.file, 0o644)
				f, err := os.OpenFile(path, os.O_WRONLY|os.O_APPEND, 0) // as a shell's >> opens it
				if err != nil {
					t.Fatal(err)
				}
				defer f.Close()
				out = f
			}
			after, note, err := Resume(st, out)
			if err != nil || after != tc.after || !strings.Contains(note, tc.noteHas) || (tc.noteHas == "" && note != "") {
				t.Fatalf("Resume: after %d, note %q, err %v; want after %d, a note with %q", after, note, err, tc.after, tc.noteHas)
			}
			if out != nil {
				if fi, _ := out.Stat(); fi.Size() != int64(tc.size) {
					t.Errorf("output is %d bytes, want %d", fi.Size(), tc.size)
				}
			}
		})
	}
	if after, note, err := Resume(State{Stream: "demo", Seq: 7}, nil); after != 7 || note != "" || err != nil {
		t.Errorf("no pending batch: %d %q %v", after, note, err)
	}
}

// TestSaveReplacesWhole: what Open reads is the last Save, and a damaged
// file is refused with its path and the way out.
func TestSaveReplacesWhole(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cp")
	f, _, found, err := Open(path, 0)
	if err != nil || found {
		t.Fatalf("a new checkpoint: found %v, err %v", found, err)
	}
	for seq := uint64(1); seq <= 3; seq++ {
		if err := f.Save(State{Stream: "demo", Seq: seq}, seq == 2); err != nil {
			t.Fatal(err)
		}
	}
	_, st, found, err := Open(path, 0)
	if err != nil || !found || st.Seq != 3 || st.Stream != "demo" {
		t.Fatalf("read back %+v, found %v, err %v", st, found, err)
	}
	if _, err := os.Stat(path + ".tmp"); err == nil {
		t.Error("the temporary file is left behind")
	}
	os.WriteFile(path, []byte(`{"seq":`), 0o644)
	if _, _, _, err := Open(path, 0); err == nil || !strings.Contains(err.Error(), path) || !strings.Contains(err.Error(), "move it away") {
		t.Errorf("a damaged checkpoint: %v", err)
	}
	if _, _, _, err := Open(filepath.Join(t.TempDir(), "no", "such", "cp"), 0); err == nil {
		t.Error("a checkpoint in a missing directory was accepted")
	}
}
