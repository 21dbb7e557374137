package fanout

import (
	"bytes"
	"slices"
	"strconv"
	"sync/atomic"
	"time"
)

// Entry is one hit in the ring. It holds the hit's bytes once, inside its
// WebSocket frame, and the small headers of the other encodings: each
// wire format is a few pieces of the same allocation (and constant
// suffixes), shared by all subscribers and written with one writev. Its
// bytes are never modified after Append returns; only ext changes,
// atomically: what subscribers with selectors derived from the hit
// (select.go), attached and dropped as the derived window moves.
type Entry struct {
	Seq      uint64
	Received time.Time // when the upstream reader got it (for lag)
	// buf is [sse header | ws frame header, {"type":"hit","seq":N,"hit": | raw | }]
	buf      []byte
	wsStart  int    // where the WebSocket frame starts (the SSE header ends)
	rawStart int    // where the raw hit starts
	sseData  []byte // the raw hit with CR replaced, only when it has one (appendSSEData)

	ext atomic.Pointer[derived] // filter/projection data, only when a subscriber asked
	// replayed marks an entry read from history for one subscriber: its
	// derived data stays out of the hub's derived window (it would push
	// out what live subscribers share).
	replayed bool
}

// Constant ends of the encodings, shared by every entry.
var (
	sseEnd = []byte("\n\n")
	crlf   = []byte("\r\n")
)

// Raw is the hit exactly as Live Stream sent it.
func (e *Entry) Raw() []byte {
	end := len(e.buf) - 1
	return e.buf[e.rawStart:end:end]
}

// WSFrame is the complete WebSocket text frame (header included) carrying
// {"type":"hit","seq":N,"hit":<raw>}. Server frames are not masked, so the
// bytes are the same for every subscriber.
func (e *Entry) WSFrame() []byte { return e.buf[e.wsStart:] }

// SSEEvent is "id: N\nevent: hit\ndata: <raw>\n\n", in three pieces.
func (e *Entry) SSEEvent() (header, data, end []byte) {
	data = e.sseData
	if data == nil {
		data = e.Raw()
	}
	return e.buf[:e.wsStart:e.wsStart], data, sseEnd
}

// SSELen is the length of the SSE event.
func (e *Entry) SSELen() int { return e.wsStart + len(e.Raw()) + len(sseEnd) }

// NDJSON is the raw hit and CRLF, the upstream's own record format, in two
// pieces.
func (e *Entry) NDJSON() (raw, end []byte) { return e.Raw(), crlf }

// NDJSONLen is the length of the NDJSON record.
func (e *Entry) NDJSONLen() int { return len(e.Raw()) + len(crlf) }

// Size is what the entry costs the ring's byte budget.
func (e *Entry) Size() int { return cap(e.buf) + cap(e.sseData) + entryOverhead }

const entryOverhead = 112 // the Entry struct and its slot, roughly

func newEntry(seq uint64, raw []byte, received time.Time) *Entry {
	var seqBuf [20]byte
	s := strconv.AppendUint(seqBuf[:0], seq, 10)
	msgLen := len(`{"type":"hit","seq":`) + len(s) + len(`,"hit":`) + len(raw) + 1
	sseLen := len("id: ") + len(s) + len("\nevent: hit\ndata: ")
	// Grown by append, so the capacity is the allocator's size class and
	// Size counts what the hit really holds.
	buf := slices.Grow([]byte(nil), sseLen+wsHeaderLen(msgLen)+msgLen)

	buf = append(buf, "id: "...)
	buf = append(buf, s...)
	buf = append(buf, "\nevent: hit\ndata: "...)
	wsStart := len(buf)

	buf = appendWSHeader(buf, OpText, msgLen)
	buf = append(buf, `{"type":"hit","seq":`...)
	buf = append(buf, s...)
	buf = append(buf, `,"hit":`...)
	rawStart := len(buf)
	buf = append(buf, raw...)
	buf = append(buf, '}')
	e := &Entry{Seq: seq, Received: received, buf: buf, wsStart: wsStart, rawStart: rawStart}
	if bytes.IndexByte(raw, '\r') >= 0 {
		e.sseData = appendSSEData(nil, raw)
	}
	return e
}

// appendSSEData appends raw as one SSE data line. A hit is one JSON object
// without LF (records are split on LF), but JSON allows a bare CR as
// whitespace between tokens and SSE would read it as a line end; it is
// replaced by a space, which JSON treats the same.
func appendSSEData(buf, raw []byte) []byte {
	if bytes.IndexByte(raw, '\r') < 0 {
		return append(buf, raw...)
	}
	start := len(buf)
	buf = append(buf, raw...)
	for i := start; i < len(buf); i++ {
		if buf[i] == '\r' {
			buf[i] = ' '
		}
	}
	return buf
}

// WebSocket frame opcodes used by lsmux's writers (RFC 6455 §5.2).
const (
	OpText  = 0x1
	OpClose = 0x8
	OpPing  = 0x9
	OpPong  = 0xA
)

func wsHeaderLen(n int) int {
	switch {
	case n < 126:
		return 2
	case n < 1<<16:
		return 4
	}
	return 10
}

// appendWSHeader appends an unmasked, final frame header.
func appendWSHeader(buf []byte, opcode byte, n int) []byte {
	buf = append(buf, 0x80|opcode)
	switch {
	case n < 126:
		return append(buf, byte(n))
	case n < 1<<16:
		return append(buf, 126, byte(n>>8), byte(n))
	}
	return append(buf, 127, byte(n>>56), byte(n>>48), byte(n>>40), byte(n>>32), byte(n>>24), byte(n>>16), byte(n>>8), byte(n))
}

// WSFrame builds one unmasked final frame: text messages other than hits
// (gap notices) and control frames (ping, pong, close).
func WSFrame(opcode byte, payload []byte) []byte {
	buf := make([]byte, 0, wsHeaderLen(len(payload))+len(payload))
	buf = appendWSHeader(buf, opcode, len(payload))
	return append(buf, payload...)
}
