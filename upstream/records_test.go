package upstream

import (
	"bytes"
	"encoding/json"
	"errors"
	"io"
	"strings"
	"testing"
)

func readAll(t testing.TB, in []byte, max int) (recs []string, tooLarge int, err error) {
	rr := NewRecordReader(bytes.NewReader(in), max)
	for {
		rec, err := rr.Next()
		if errors.Is(err, ErrRecordTooLarge) {
			tooLarge++
			continue
		}
		if err == io.EOF {
			return recs, tooLarge, nil
		}
		if err != nil {
			return recs, tooLarge, err
		}
		recs = append(recs, string(rec))
	}
}

func TestRecordReaderSplitsCRLFAndSkipsBlanks(t *testing.T) {
	in := "{\"a\":1}\r\n\r\n{\"b\":2}\n  \r\n{\"c\":3}\r\n"
	recs, _, err := readAll(t, []byte(in), 0)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{`{"a":1}`, `{"b":2}`, `{"c":3}`}
	if strings.Join(recs, "|") != strings.Join(want, "|") {
		t.Fatalf("records %q, want %q", recs, want)
	}
}

func TestRecordReaderLongRecordsBeyondBufferAndScannerLimit(t *testing.T) {
	big := `{"v":"` + strings.Repeat("x", 300<<10) + `"}`
	in := "{\"a\":1}\r\n" + big + "\r\n{\"b\":2}\r\n"
	recs, tooLarge, err := readAll(t, []byte(in), 0)
	if err != nil || tooLarge != 0 {
		t.Fatalf("err %v, tooLarge %d", err, tooLarge)
	}
	if len(recs) != 3 || recs[1] != big {
		t.Fatalf("got %d records; the 300 KiB record intact: %v", len(recs), len(recs) > 1 && recs[1] == big)
	}
}

func TestRecordReaderSkipsOversizedAndGoesOn(t *testing.T) {
	big := `{"v":"` + strings.Repeat("x", 200<<10) + `"}`
	in := "{\"a\":1}\r\n" + big + "\r\n{\"b\":2}\r\n" + strings.Repeat("y", 1000) + "\r\n{\"c\":3}"
	recs, tooLarge, err := readAll(t, []byte(in), 500)
	if err != nil {
		t.Fatal(err)
	}
	if tooLarge != 2 {
		t.Fatalf("tooLarge = %d, want 2", tooLarge)
	}
	if strings.Join(recs, "|") != `{"a":1}|{"b":2}|{"c":3}` {
		t.Fatalf("records %q", recs)
	}
}

func TestRecordReaderDropsHalfRecordOnUnexpectedEOF(t *testing.T) {
	r := io.MultiReader(strings.NewReader("{\"a\":1}\r\n{\"b\":"), errReader{io.ErrUnexpectedEOF})
	rr := NewRecordReader(r, 0)
	rec, err := rr.Next()
	if err != nil || string(rec) != `{"a":1}` {
		t.Fatalf("first record %q, %v", rec, err)
	}
	if rec, err := rr.Next(); !errors.Is(err, io.ErrUnexpectedEOF) || rec != nil {
		t.Fatalf("cut record: got %q, %v; want nil, unexpected EOF", rec, err)
	}
}

type errReader struct{ err error }

func (e errReader) Read([]byte) (int, error) { return 0, e.err }

// FuzzRecordReader: whatever the input, the reader terminates, never
// returns a record with a line ending or over the cap, and never loses a
// byte of a record it returns (records joined equal the non-blank lines).
func FuzzRecordReader(f *testing.F) {
	f.Add([]byte("{\"a\":1}\r\n\r\n{\"b\":2}\n"), 16)
	f.Add([]byte("\r\r\n\n\r"), 1)
	f.Add([]byte(strings.Repeat("z", 70000)+"\n{}"), 100)
	f.Add([]byte("no newline at all"), 0)
	f.Fuzz(func(t *testing.T, in []byte, max int) {
		if max < 0 || max > 1<<20 {
			max = 0
		}
		limit := max
		if limit == 0 {
			limit = DefaultMaxRecordSize
		}
		recs, _, err := readAll(t, in, max)
		if err != nil {
			t.Fatalf("bytes.Reader input gave %v", err)
		}
		var want []string
		for _, line := range strings.Split(string(in), "\n") {
			line = strings.TrimSuffix(line, "\r")
			if strings.Trim(line, " \t\r") == "" || len(line) > limit {
				continue
			}
			want = append(want, line)
		}
		if len(recs) != len(want) {
			t.Fatalf("got %d records, want %d", len(recs), len(want))
		}
		for i := range recs {
			if recs[i] != want[i] {
				t.Fatalf("record %d = %q, want %q", i, recs[i], want[i])
			}
		}
	})
}

func TestInspect(t *testing.T) {
	cases := []struct {
		in           string
		valid, hasID bool
		high, low    uint64
	}{
		{`{"hitIdHigh":18446744073709551615,"hitIdLow":9223372036854775809}`, true, true, 18446744073709551615, 9223372036854775809},
		{` { "x":{"hitIdHigh":1,"hitIdLow":2}, "hitIdLow" : 7 , "hitIdHigh":"8"}`, true, true, 8, 7},
		{`{"a":"\"hitIdHigh\":5","hitIdHigh":3,"hitIdLow":4}`, true, true, 3, 4},
		{`{"hitIdHigh":18446744073709551616,"hitIdLow":1}`, true, false, 0, 0},
		{`{"hitIdHigh":1.5,"hitIdLow":1}`, true, false, 0, 0},
		{`{"hitIdHigh":-1,"hitIdLow":1}`, true, false, 0, 0},
		{`{"pageName":"home"}`, true, false, 0, 0},
		{`[{"hitIdHigh":1,"hitIdLow":2}]`, false, false, 0, 0},
		{`{"hitIdHigh":1,`, false, false, 0, 0},
		{`not json`, false, false, 0, 0},
		{`"string"`, false, false, 0, 0},
	}
	for _, c := range cases {
		id, hasID, valid := scanHit([]byte(c.in))
		if valid != c.valid || hasID != c.hasID || (hasID && (id.High != c.high || id.Low != c.low)) {
			t.Errorf("scanHit(%s) = %v %v %v, want valid=%v hasID=%v %d/%d", c.in, id, hasID, valid, c.valid, c.hasID, c.high, c.low)
		}
	}
}

func FuzzInspect(f *testing.F) {
	f.Add([]byte(`{"hitIdHigh":1,"hitIdLow":2}`))
	f.Add([]byte(`{"a":[{"hitIdHigh":1}],"hitIdLow":"3","hitIdHigh":4}`))
	f.Fuzz(func(t *testing.T, in []byte) {
		_, _, _ = scanHit(in) // must not panic, whatever the input
	})
}

func TestDedupWindow(t *testing.T) {
	d := NewDedup(3)
	for i := uint64(1); i <= 3; i++ {
		if d.Seen(HitID{0, i}) {
			t.Fatalf("id %d reported as seen on first sight", i)
		}
	}
	if !d.Seen(HitID{0, 2}) {
		t.Fatal("a repeat inside the window was not caught")
	}
	d.Seen(HitID{0, 4}) // evicts 1
	if d.Seen(HitID{0, 1}) {
		t.Fatal("id 1 should have left the 3-id window")
	}
	if len(d.seen) != 3 {
		t.Fatalf("window holds %d ids, want 3", len(d.seen))
	}
}

// FuzzScanAgreesWithEncodingJSON: the hot-path scanner accepts exactly
// what encoding/json.Valid accepts (when it starts with an object), and
// finds the same hit id as the slower top-level walk.
func FuzzScanAgreesWithEncodingJSON(f *testing.F) {
	for _, s := range []string{`{"hitIdHigh":1,"hitIdLow":2}`, ` {"a":[1,2.5e-3,{"b":null}],"c":"\u00e9\n"} `, `{"a":01}`, `{"a":1.}`,
		`{"a":"\x"}`, `{"a":true,}`, `{}`, `{"a":[]}`, `{"hitIdHigh":"18446744073709551615","hitIdLow":-0}`, "{\"a\":\"\x01\"}"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, in []byte) {
		id, hasID, valid := scanHit(in)
		i := skipSpace(in, 0)
		want := json.Valid(in) && i < len(in) && in[i] == '{'
		if valid != want {
			t.Fatalf("scanHit(%q) valid=%v, encoding/json says %v", in, valid, want)
		}
		if valid {
			hi, lo, h, l := scanTopLevelIDs(in, i)
			if hasID != (h && l) || (hasID && (id.High != hi || id.Low != lo)) {
				t.Fatalf("scanHit(%q) id %v %v, walk says %d %d %v", in, id, hasID, hi, lo, h && l)
			}
		}
	})
}
