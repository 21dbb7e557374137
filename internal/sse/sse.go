// Package sse reads a Server-Sent Events stream (the WHATWG event-stream
// format) event by event, without allocating per event: what lsmux tail,
// the load tool and the tests read lsmux's /sse endpoint with.
package sse

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// Event is one dispatched event. Its slices point into the Reader's
// buffers and are valid until the next call to Next.
type Event struct {
	// ID is the last "id:" field seen so far in the stream (an event
	// without one keeps the previous id, as EventSource does).
	ID []byte
	// Type is the "event:" field, "message" when there was none.
	Type []byte
	// Data is the "data:" lines joined with "\n".
	Data []byte
}

// MaxLine is the longest line a Reader accepts by default.
const MaxLine = 8 << 20

// ErrLineTooLong is returned for a line longer than the Reader's limit.
var ErrLineTooLong = errors.New("sse: line too long")

// Reader reads events from an event stream.
type Reader struct {
	br      *bufio.Reader
	maxLine int
	line    []byte // a line longer than br's buffer, assembled
	id      []byte
	typ     []byte
	data    []byte
	hasData bool
	// Comments counts comment lines (": ping"), the server's keepalive.
	Comments int
}

// NewReader reads events from r, with lines, and each event's data, up
// to maxLine bytes (0: MaxLine).
func NewReader(r io.Reader, maxLine int) *Reader {
	if maxLine <= 0 {
		maxLine = MaxLine
	}
	return &Reader{br: bufio.NewReaderSize(r, 64<<10), maxLine: maxLine}
}

// Buffered reports whether more input is already read: a reader that
// writes what it got in batches flushes when it is not. Call it between
// events: complete comment lines (the server's ": ping") and blank lines
// already read are consumed here, so a keepalive that came in the same
// read as a hit does not hide that the hit is the last one for now.
func (r *Reader) Buffered() bool {
	for {
		b, _ := r.br.Peek(r.br.Buffered())
		if len(b) == 0 {
			return false
		}
		i := bytes.IndexByte(b, '\n')
		if i < 0 {
			return true // part of a line: the rest is on its way
		}
		line := trimEnd(b[:i+1])
		if len(line) > 0 && line[0] != ':' {
			return true
		}
		if len(line) > 0 {
			r.Comments++
		}
		r.br.Discard(i + 1)
	}
}

// Next returns the next event. At the end of the stream it returns io.EOF
// (an event not ended by a blank line is dropped, as the format says), or
// io.ErrUnexpectedEOF when the stream ended inside a line.
func (r *Reader) Next() (Event, error) {
	r.typ, r.data, r.hasData = r.typ[:0], r.data[:0], false
	for {
		line, err := r.readLine()
		if err != nil {
			return Event{}, err
		}
		if len(line) == 0 {
			if !r.hasData {
				r.typ = r.typ[:0] // an event without data is not dispatched
				continue
			}
			ev := Event{ID: r.id, Type: r.typ, Data: r.data}
			if len(ev.Type) == 0 {
				ev.Type = message
			}
			return ev, nil
		}
		if line[0] == ':' {
			r.Comments++
			continue
		}
		field, value := line, []byte(nil)
		if i := bytes.IndexByte(line, ':'); i >= 0 {
			field, value = line[:i], line[i+1:]
			if len(value) > 0 && value[0] == ' ' {
				value = value[1:]
			}
		}
		switch string(field) {
		case "data":
			if r.hasData {
				r.data = append(r.data, '\n')
			}
			if len(r.data)+len(value) > r.maxLine {
				// One event's data is bounded as one line is: data lines
				// without the blank line that ends an event must not grow
				// it without end.
				return Event{}, fmt.Errorf("%w (an event's data over %d bytes)", ErrLineTooLong, r.maxLine)
			}
			r.data, r.hasData = append(r.data, value...), true
		case "event":
			r.typ = append(r.typ[:0], value...)
		case "id":
			if bytes.IndexByte(value, 0) < 0 {
				r.id = append(r.id[:0], value...)
			}
		}
		// "retry" and unknown fields are ignored.
	}
}

var message = []byte("message")

// readLine returns the next line without its end (LF, CRLF or CR).
func (r *Reader) readLine() ([]byte, error) {
	r.line = r.line[:0]
	for {
		chunk, err := r.br.ReadSlice('\n')
		if err == nil || (errors.Is(err, io.EOF) && len(chunk) > 0) || errors.Is(err, bufio.ErrBufferFull) {
			if len(r.line)+len(chunk) > r.maxLine+2 {
				return nil, fmt.Errorf("%w (over %d bytes)", ErrLineTooLong, r.maxLine)
			}
		}
		switch {
		case err == nil:
			line := chunk
			if len(r.line) > 0 {
				r.line = append(r.line, chunk...)
				line = r.line
			}
			return trimEnd(line), nil
		case errors.Is(err, bufio.ErrBufferFull):
			r.line = append(r.line, chunk...)
		case errors.Is(err, io.EOF):
			if len(r.line)+len(chunk) > 0 {
				return nil, io.ErrUnexpectedEOF
			}
			return nil, io.EOF
		default:
			return nil, err
		}
	}
}

// trimEnd drops a line's LF or CRLF. The format also allows a lone CR as
// a line end; lsmux never sends one (hits are JSON, whose strings escape
// CR), so it is not looked for.
func trimEnd(line []byte) []byte {
	line = bytes.TrimSuffix(line, []byte("\n"))
	line = bytes.TrimSuffix(line, []byte("\r"))
	return line
}
