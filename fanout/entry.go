package fanout

import (
	"bytes"
	"strconv"
	"sync/atomic"
	"time"
)

// Entry is one hit in the ring, with every wire encoding built once at
// append time and shared by all subscribers. Its bytes are never modified
// after Append returns; only ext changes, atomically: what subscribers with
// selectors derived from the hit (select.go), attached and dropped as the
// derived window moves.
type Entry struct {
	Seq      uint64
	Received time.Time // when the upstream reader got it (for lag)
	buf      []byte    // [ws frame | sse event | ndjson line], one allocation
	wsEnd    int
	sseEnd   int
	rawStart int // offset of the raw hit inside the ndjson part

	ext atomic.Pointer[derived] // filter/projection data, only when a subscriber asked
	// replayed marks an entry read from history for one subscriber: its
	// derived data stays out of the hub's derived window (it would push
	// out what live subscribers share).
	replayed bool
}

// Raw is the hit exactly as Live Stream sent it.
func (e *Entry) Raw() []byte { return e.buf[e.rawStart : len(e.buf)-2] }

// WSFrame is the complete WebSocket text frame (header included) carrying
// {"type":"hit","seq":N,"hit":<raw>}. Server frames are not masked, so the
// bytes are the same for every subscriber.
func (e *Entry) WSFrame() []byte { return e.buf[:e.wsEnd] }

// SSEEvent is "id: N\nevent: hit\ndata: <raw>\n\n".
func (e *Entry) SSEEvent() []byte { return e.buf[e.wsEnd:e.sseEnd] }

// NDJSON is the raw hit plus CRLF, the upstream's own record format.
func (e *Entry) NDJSON() []byte { return e.buf[e.sseEnd:] }

// Size is what the entry costs the ring's byte budget.
func (e *Entry) Size() int { return cap(e.buf) + entryOverhead }

const entryOverhead = 96 // the Entry struct and its slot, roughly

func newEntry(seq uint64, raw []byte, received time.Time) *Entry {
	var seqBuf [20]byte
	s := strconv.AppendUint(seqBuf[:0], seq, 10)
	msgLen := len(`{"type":"hit","seq":`) + len(s) + len(`,"hit":`) + len(raw) + 1
	hdr := wsHeaderLen(msgLen)
	sseLen := len("id: ") + len(s) + len("\nevent: hit\ndata: ") + len(raw) + 2
	buf := make([]byte, 0, hdr+msgLen+sseLen+len(raw)+2)

	buf = appendWSHeader(buf, OpText, msgLen)
	buf = append(buf, `{"type":"hit","seq":`...)
	buf = append(buf, s...)
	buf = append(buf, `,"hit":`...)
	buf = append(buf, raw...)
	buf = append(buf, '}')
	wsEnd := len(buf)

	buf = append(buf, "id: "...)
	buf = append(buf, s...)
	buf = append(buf, "\nevent: hit\ndata: "...)
	buf = appendSSEData(buf, raw)
	buf = append(buf, '\n', '\n')
	sseEnd := len(buf)

	rawStart := len(buf)
	buf = append(buf, raw...)
	buf = append(buf, '\r', '\n')
	return &Entry{Seq: seq, Received: received, buf: buf, wsEnd: wsEnd, sseEnd: sseEnd, rawStart: rawStart}
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
