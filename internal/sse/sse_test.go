package sse

import (
	"bytes"
	"errors"
	"io"
	"strings"
	"testing"
)

type got struct{ id, typ, data string }

func readAll(t *testing.T, in string, maxLine int) ([]got, int, error) {
	t.Helper()
	r := NewReader(strings.NewReader(in), maxLine)
	var out []got
	for {
		ev, err := r.Next()
		if err != nil {
			return out, r.Comments, err
		}
		out = append(out, got{string(ev.ID), string(ev.Type), string(ev.Data)})
	}
}

func TestReaderEvents(t *testing.T) {
	for _, tc := range []struct {
		name, in string
		want     []got
		comments int
		err      error
	}{
		{"lsmux hit and gap", "id: 7\nevent: hit\ndata: {\"a\":1}\n\nevent: gap\ndata: {\"from\":8,\"to\":9}\n\n",
			[]got{{"7", "hit", `{"a":1}`}, {"7", "gap", `{"from":8,"to":9}`}}, 0, io.EOF},
		{"pings are comments", ": ping\n\n: ping\nid: 1\nevent: hit\ndata: x\n\n", []got{{"1", "hit", "x"}}, 2, io.EOF},
		{"CRLF and no space after the colon", "id:3\r\nevent:hit\r\ndata:y\r\n\r\n", []got{{"3", "hit", "y"}}, 0, io.EOF},
		{"multi-line data, default type", "data: a\ndata: b\n\n", []got{{"", "message", "a\nb"}}, 0, io.EOF},
		{"an event without data is dropped", "event: hit\n\ndata: z\n\n", []got{{"", "message", "z"}}, 0, io.EOF},
		{"unterminated last event", "data: a\n\ndata: b\n", []got{{"", "message", "a"}}, 0, io.EOF},
		{"cut inside a line", "data: a\n\ndata: b", []got{{"", "message", "a"}}, 0, io.ErrUnexpectedEOF},
		{"an id with NUL is ignored", "id: 1\ndata: a\n\nid: 2\x003\ndata: b\n\n", []got{{"1", "message", "a"}, {"1", "message", "b"}}, 0, io.EOF},
		{"unknown fields and retry", "retry: 10\nfoo: bar\nfield\ndata: a\n\n", []got{{"", "message", "a"}}, 0, io.EOF},
	} {
		t.Run(tc.name, func(t *testing.T) {
			out, comments, err := readAll(t, tc.in, 0)
			if !errors.Is(err, tc.err) {
				t.Errorf("error %v, want %v", err, tc.err)
			}
			if len(out) != len(tc.want) {
				t.Fatalf("events %q, want %q", out, tc.want)
			}
			for i := range out {
				if out[i] != tc.want[i] {
					t.Errorf("event %d: %q, want %q", i, out[i], tc.want[i])
				}
			}
			if comments != tc.comments {
				t.Errorf("%d comments, want %d", comments, tc.comments)
			}
		})
	}
}

func TestReaderLongLines(t *testing.T) {
	long := strings.Repeat("x", 200<<10) // longer than the 64 KiB buffer
	out, _, err := readAll(t, "data: "+long+"\n\n", 0)
	if !errors.Is(err, io.EOF) || len(out) != 1 || out[0].data != long {
		t.Fatalf("a 200 KiB line: %d events, err %v", len(out), err)
	}
	if _, _, err := readAll(t, "data: "+long+"\n\n", 100<<10); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("a 200 KiB line over a 100 KiB limit: %v, want ErrLineTooLong", err)
	}
	// Many short data lines and no blank line: the event is bounded too.
	if _, _, err := readAll(t, strings.Repeat("data: xxxxxxxxxx\n", 20_000), 100<<10); !errors.Is(err, ErrLineTooLong) {
		t.Fatalf("an event of 20,000 data lines (220 KB) over a 100 KiB limit: %v, want ErrLineTooLong", err)
	}
}

// FuzzReader: any input ends in an error, never a panic, and whatever is
// dispatched has data that came from the input.
func FuzzReader(f *testing.F) {
	f.Add([]byte("id: 7\nevent: hit\ndata: {\"a\":1}\n\n: ping\n\n"))
	f.Add([]byte("data:a\r\ndata:b\r\n\r\nid:\x00\n"))
	f.Add([]byte(":\n\n\n\ndata"))
	f.Fuzz(func(t *testing.T, in []byte) {
		r := NewReader(bytes.NewReader(in), 1024)
		for range len(in) + 1 {
			ev, err := r.Next()
			if err != nil {
				return
			}
			for _, part := range bytes.Split(ev.Data, []byte("\n")) {
				if !bytes.Contains(in, part) {
					t.Fatalf("data %q is not in the input", part)
				}
			}
		}
		t.Fatalf("more events than input bytes")
	})
}
