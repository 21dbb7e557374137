package upstream

import (
	"bufio"
	"bytes"
	"errors"
	"io"
)

// DefaultMaxRecordSize caps one record. Hits well over 64 KiB are
// legitimate (a multi-value variable alone may reach 65,535 bytes), so the
// cap is generous; it exists so one corrupt stream cannot take all memory.
const DefaultMaxRecordSize = 4 << 20

// RecordReader splits a decompressed Live Stream body into records: lines
// separated by LF, a trailing CR removed, blank lines skipped. It is a pure
// function of the bytes it reads, which is what the fuzz test relies on.
type RecordReader struct {
	r   *bufio.Reader
	max int
	acc []byte // a record longer than the bufio buffer is assembled here
}

// NewRecordReader reads records of at most maxSize bytes from r (a
// non-positive maxSize means DefaultMaxRecordSize).
func NewRecordReader(r io.Reader, maxSize int) *RecordReader {
	if maxSize <= 0 {
		maxSize = DefaultMaxRecordSize
	}
	return &RecordReader{r: bufio.NewReaderSize(r, 64<<10), max: maxSize}
}

// Next returns the next non-blank record. The slice is only valid until the
// next call. A record over the cap is consumed and reported as
// ErrRecordTooLarge, after which Next may be called again. At the end of
// input Next returns io.EOF; a final record without a line ending is
// returned only when the input ended cleanly, since a connection cut in
// the middle of a record leaves half a hit.
func (rr *RecordReader) Next() ([]byte, error) {
	for {
		line, err := rr.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			line, err = rr.long(line)
			if errors.Is(err, ErrRecordTooLarge) {
				return nil, err
			}
		}
		if err != nil {
			if err == io.EOF && len(line) > 0 {
				if rec := trimRecord(line); len(rec) > 0 && len(rec) <= rr.max {
					return rec, nil
				}
			}
			return nil, err
		}
		rec := trimRecord(line)
		if len(rec) == 0 {
			continue
		}
		if len(rec) > rr.max {
			return nil, ErrRecordTooLarge
		}
		return rec, nil
	}
}

// long assembles a line longer than the bufio buffer, giving up (and
// discarding the rest of the line) once it passes the cap.
func (rr *RecordReader) long(first []byte) ([]byte, error) {
	rr.acc = append(rr.acc[:0], first...)
	for {
		if len(rr.acc) > rr.max+2 { // +2: the CRLF does not count
			return nil, rr.skipLine()
		}
		line, err := rr.r.ReadSlice('\n')
		rr.acc = append(rr.acc, line...)
		if !errors.Is(err, bufio.ErrBufferFull) {
			if cap(rr.acc) > 1<<20 && len(rr.acc) < 1<<16 {
				rr.acc = nil // do not pin a huge buffer after one large record
			}
			return rr.acc, err
		}
	}
}

// skipLine discards input up to and including the next LF.
func (rr *RecordReader) skipLine() error {
	rr.acc = nil
	for {
		_, err := rr.r.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			continue
		}
		if err != nil && err != io.EOF {
			return err
		}
		return ErrRecordTooLarge
	}
}

func trimRecord(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte{'\n'})
	line = bytes.TrimSuffix(line, []byte{'\r'})
	// Blank records (Live Stream sends some) are whitespace only.
	for _, c := range line {
		if c != ' ' && c != '\t' && c != '\r' {
			return line
		}
	}
	return nil
}
