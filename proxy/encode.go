package proxy

import (
	"net"
	"strconv"
	"time"

	"lsmux/fanout"
)

// batch is what one write carries: pieces in order, hits' encodings shared
// with every other subscriber (never copied here), and the few bytes a
// session makes itself (notices, pings) in own.
type batch struct {
	bufs net.Buffers
	own  []byte
	hits int
	// lagFrom is when the oldest live hit in the batch was read from
	// Live Stream (zero: none was live, e.g. a resume's backlog).
	lagFrom time.Time
}

// add appends a shared piece.
func (b *batch) add(p []byte) { b.bufs = append(b.bufs, p) }

// addOwn appends bytes the session made; they stay valid until reset.
func (b *batch) addOwn(p ...[]byte) {
	start := len(b.own)
	for _, q := range p {
		b.own = append(b.own, q...)
	}
	b.bufs = append(b.bufs, b.own[start:len(b.own):len(b.own)])
}

func (b *batch) empty() bool { return len(b.bufs) == 0 }

// reset empties the batch and drops its references to entries, so the
// ring can free what it evicts.
func (b *batch) reset() {
	clear(b.bufs)
	b.bufs = b.bufs[:0]
	b.own = b.own[:0]
	b.hits = 0
	b.lagFrom = time.Time{}
}

// size is the batch's length in bytes.
func (b *batch) size() int {
	n := 0
	for _, p := range b.bufs {
		n += len(p)
	}
	return n
}

// encoder is one transport's wire format. The hub builds each hit's
// encoding once for all subscribers; an encoder only picks it and frames
// what the session adds.
type encoder interface {
	// size is how many bytes e takes in this format (batch bounds).
	size(e *fanout.Entry) int
	// hit adds e.
	hit(b *batch, e *fanout.Entry)
	// gap adds a notice that hits g.From..g.To are lost to the
	// subscriber; false when the format cannot carry one (drop-in).
	gap(b *batch, g *fanout.Gap) bool
	// ping adds a keepalive.
	ping(b *batch)
	// goodbye adds what the transport sends last when lsmux ends the
	// subscription for reason (nothing when it has no way to say it).
	goodbye(b *batch, reason string)
}

// appendGapJSON appends {"from":A,"to":B} (inside WebSocket's
// {"type":"gap",...} or as SSE's event data).
func appendGapFields(b []byte, g *fanout.Gap) []byte {
	b = append(b, `"from":`...)
	b = strconv.AppendUint(b, g.From, 10)
	b = append(b, `,"to":`...)
	return strconv.AppendUint(b, g.To, 10)
}

// wsEncoder: {"type":"hit","seq":N,"hit":...} text frames, gap notices as
// {"type":"gap","from":A,"to":B}, pings and close frames.
type wsEncoder struct{}

func (wsEncoder) size(e *fanout.Entry) int      { return len(e.WSFrame()) }
func (wsEncoder) hit(b *batch, e *fanout.Entry) { b.add(e.WSFrame()) }
func (wsEncoder) gap(b *batch, g *fanout.Gap) bool {
	payload := append([]byte(`{"type":"gap",`), appendGapFields(nil, g)...)
	b.addOwn(fanout.WSFrame(fanout.OpText, append(payload, '}')))
	return true
}
func (wsEncoder) ping(b *batch) { b.addOwn(wsPingFrame) }
func (wsEncoder) goodbye(b *batch, reason string) {
	if g, ok := goodbyes[reason]; ok {
		b.addOwn(closeFrame(g.code, g.text))
	}
}

var wsPingFrame = fanout.WSFrame(fanout.OpPing, nil)

// closeFrame is a close frame with code and text; a code that may not be
// sent (see sendableCode) gives an empty close frame, which RFC 6455
// allows and every client reads as "no status".
func closeFrame(code int, text string) []byte {
	if !sendableCode(code) {
		return fanout.WSFrame(fanout.OpClose, nil)
	}
	if len(text) > 123 { // a control frame carries at most 125 bytes
		text = text[:123]
	}
	payload := append([]byte{byte(code >> 8), byte(code)}, text...)
	return fanout.WSFrame(fanout.OpClose, payload)
}

// sseEncoder: id/event/data events, gap events, comments as pings and a
// final close event.
type sseEncoder struct{}

func (sseEncoder) size(e *fanout.Entry) int { return e.SSELen() }
func (sseEncoder) hit(b *batch, e *fanout.Entry) {
	header, data, end := e.SSEEvent()
	b.add(header)
	b.add(data)
	b.add(end)
}
func (sseEncoder) gap(b *batch, g *fanout.Gap) bool {
	b.addOwn([]byte("event: gap\ndata: {"), appendGapFields(nil, g), []byte("}\n\n"))
	return true
}
func (sseEncoder) ping(b *batch) { b.addOwn([]byte(": ping\n\n")) }
func (sseEncoder) goodbye(b *batch, reason string) {
	if _, ok := goodbyes[reason]; ok {
		b.addOwn([]byte(`event: close` + "\n" + `data: {"reason":"` + reason + `"}` + "\n\n"))
	}
}

// ndjsonEncoder is Live Stream's own format: records separated by CRLF. It
// has no way to say a gap or why it ends.
type ndjsonEncoder struct{}

func (ndjsonEncoder) size(e *fanout.Entry) int { return e.NDJSONLen() }
func (ndjsonEncoder) hit(b *batch, e *fanout.Entry) {
	raw, end := e.NDJSON()
	b.add(raw)
	b.add(end)
}
func (ndjsonEncoder) gap(*batch, *fanout.Gap) bool { return false }

// ping is an empty record: Live Stream sends them too, clients skip them,
// and it keeps idle-timeout proxies from cutting in.
func (ndjsonEncoder) ping(b *batch)          { b.addOwn([]byte("\r\n")) }
func (ndjsonEncoder) goodbye(*batch, string) {}
