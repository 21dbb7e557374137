package fanout

import (
	"context"
	"hash/fnv"
	"maps"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"

	"github.com/google/cel-go/interpreter"
)

// Selector is what one subscriber asked for beyond "every hit": a filter,
// named filters (one SSE connection serving several views), a projection
// and a sample rate. The zero Selector selects everything unchanged.
type Selector struct {
	Filter *Filter
	Named  []NamedFilter
	Fields *Projection
	Sample float64 // in (0,1]; 0 means no sampling
}

// NamedFilter is one of several filters on a connection; a hit is sent
// once, tagged with the names it matched.
type NamedFilter struct {
	Name   string
	Filter *Filter
}

// empty reports whether the selector selects everything unchanged.
func (s *Selector) empty() bool {
	return s.Filter == nil && len(s.Named) == 0 && s.Fields == nil && s.Sample == 0
}

// compiler is the Compiler the selector's parts come from (nil: none).
func (s *Selector) compiler() *Compiler {
	if s.Filter != nil && s.Filter.c != nil {
		return s.Filter.c
	}
	for _, n := range s.Named {
		if n.Filter.c != nil {
			return n.Filter.c
		}
	}
	if s.Fields != nil {
		return s.Fields.c
	}
	return nil
}

// Release gives the selector's filters and projection back to their
// compiler's cache (see Compiler.Filter).
func (s *Selector) Release() {
	if s == nil {
		return
	}
	if s.Filter != nil {
		s.Filter.Release()
	}
	for _, n := range s.Named {
		n.Filter.Release()
	}
	if s.Fields != nil {
		s.Fields.Release()
	}
}

// Describe renders the selector for status pages.
func (s *Selector) Describe() string {
	if s == nil {
		return ""
	}
	var parts []string
	if s.Filter != nil {
		parts = append(parts, "filter="+s.Filter.Text)
	}
	for _, n := range s.Named {
		parts = append(parts, "filter."+n.Name+"="+n.Filter.Text)
	}
	if s.Fields != nil {
		parts = append(parts, "fields="+s.Fields.Text)
	}
	if s.Sample > 0 {
		parts = append(parts, "sample="+strconv.FormatFloat(s.Sample, 'g', -1, 64))
	}
	out := ""
	for i, p := range parts {
		if i > 0 {
			out += "&"
		}
		out += p
	}
	return out
}

// derived holds what subscribers with selectors computed about one entry,
// shared by all of them: the decoded hit (decoded at most once while the
// entry is in the hub's derived window), filter results, the visitor's
// sample point and projected encodings.
type derived struct {
	mu      sync.Mutex // serialises decoding; readers use dec without it
	dec     atomic.Pointer[decoded]
	done    atomic.Uint64 // filter result slots computed
	match   atomic.Uint64 // ... and their results
	visitor atomic.Uint64 // sample point in [0,2^63) | 1<<63 once computed
	proj    [projectionSlots]atomic.Pointer[Entry]
}

// derivedWindow is how many entries keep derived data. A decoded hit is
// several times the size of its bytes, so only the most recently used
// entries keep it; a subscriber far behind the others decodes again.
const derivedWindow = 4096

func (h *Hub) derived(e *Entry) *derived {
	if d := e.ext.Load(); d != nil {
		return d
	}
	d := &derived{}
	if !e.ext.CompareAndSwap(nil, d) {
		if cur := e.ext.Load(); cur != nil {
			return cur
		}
		return d
	}
	if e.replayed {
		return d // one subscriber's: it goes with the entry
	}
	h.dmu.Lock()
	if h.dwin == nil {
		h.dwin = make([]*Entry, derivedWindow)
	}
	if old := h.dwin[h.dpos]; old != nil {
		old.ext.Store(nil)
	}
	h.dwin[h.dpos] = e
	h.dpos = (h.dpos + 1) % len(h.dwin)
	h.dmu.Unlock()
	return d
}

// activation returns the hit for CEL with at least the given top-level
// fields decoded (all of them when keys is nil). Each field is decoded at
// most once, whoever asks first, and shared. The decoded map is never
// changed once published (evaluations may be reading it): more fields
// make a new map.
func (d *derived) activation(e *Entry, keys, also []string) interpreter.Activation {
	if cur := d.dec.Load(); cur != nil && cur.has(keys) {
		return cur.act
	}
	if keys != nil {
		keys = also // the first scan decodes what the other filters will read too
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	cur := d.dec.Load()
	if cur != nil && cur.has(keys) {
		return cur.act
	}
	m, tried := map[string]any{}, map[string]bool{}
	if cur != nil {
		if cur.act == nil {
			return nil // not a JSON object
		}
		maps.Copy(m, cur.m)
		maps.Copy(tried, cur.tried)
	}
	for _, k := range keys {
		tried[k] = true // absent fields are looked for once, too
	}
	next := &decoded{m: m, tried: tried, all: keys == nil}
	raw := e.Raw()
	obj := raw[skipWS(raw, 0):]
	if len(obj) > 0 && obj[0] == '{' {
		eachMember(obj, func(key, _ []byte, vstart int) {
			k := string(key)
			if _, done := m[k]; done || (keys != nil && !slices.Contains(keys, k)) {
				return
			}
			if v, ok := decodeValue(obj[vstart:valueEnd(obj, vstart)]); ok {
				m[k] = v
			}
		})
		next.act, _ = interpreter.NewActivation(map[string]any{"hit": m})
	}
	d.dec.Store(next)
	return next.act
}

// decoded is an immutable, partly decoded hit.
type decoded struct {
	m     map[string]any
	tried map[string]bool        // fields looked for, found or not
	act   interpreter.Activation // nil: the hit is not a JSON object
	all   bool
}

func (c *decoded) has(keys []string) bool {
	if c.all || c.act == nil {
		return true
	}
	if keys == nil {
		return false
	}
	for _, k := range keys {
		if !c.tried[k] {
			return false
		}
	}
	return true
}

// matches evaluates f on e for s, sharing the result with every
// subscriber that uses the same filter: a result already known costs
// nothing; a new evaluation takes an evaluation slot and is charged to s.
// ok is false when s is over its budget and must stop after e.
func (s *Subscriber) matches(ctx context.Context, f *Filter, e *Entry) (match, ok bool, err error) {
	d := s.hub.derived(e)
	bit := uint64(0)
	if f.slot >= 0 {
		bit = uint64(1) << f.slot
		if d.done.Load()&bit != 0 {
			return d.match.Load()&bit != 0, true, nil
		}
	}
	if err := s.beginEvaluation(ctx); err != nil {
		return false, false, err
	}
	match, cost, overLimit := f.eval(d.activation(e, f.keys, f.fieldsToDecode()))
	if bit != 0 {
		if match {
			d.match.Or(bit)
		}
		d.done.Or(bit)
	}
	ok = true
	if s.meter != nil {
		ok = s.meter.charge(cost, overLimit)
	}
	return match, ok, nil
}

// clearDerived applies f to the derived data of every entry that has
// some (a freed result slot is cleared before it is reused).
func (h *Hub) clearDerived(f func(*derived)) {
	h.dmu.Lock()
	defer h.dmu.Unlock()
	for _, e := range h.dwin {
		if e == nil {
			continue
		}
		if d := e.ext.Load(); d != nil {
			f(d)
		}
	}
}

// sampled reports whether e's visitor falls in the sample: the same
// visitors are always in or out, so their sessions stay whole.
func (h *Hub) sampled(rate float64, e *Entry) bool {
	if rate >= 1 {
		return true
	}
	d := h.derived(e)
	v := d.visitor.Load()
	if v == 0 {
		v = visitorPoint(e.Raw()) | 1<<63
		d.visitor.Store(v)
	}
	return float64(v&^(1<<63))/(1<<63) < rate
}

// visitorPoint hashes the hit's visitor (mcVisIdHigh/Low, else
// visIdHigh/Low, else the hit id) to a point in [0, 2^63).
func visitorPoint(raw []byte) uint64 {
	vals := map[string][]byte{}
	obj := raw[skipWS(raw, 0):]
	eachMember(obj, func(key, _ []byte, vstart int) {
		switch k := string(key); k {
		case "mcVisIdHigh", "mcVisIdLow", "visIdHigh", "visIdLow", "hitIdHigh", "hitIdLow":
			vals[k] = obj[vstart:valueEnd(obj, vstart)]
		}
	})
	h := fnv.New64a()
	for _, pair := range [][2]string{{"mcVisIdHigh", "mcVisIdLow"}, {"visIdHigh", "visIdLow"}, {"hitIdHigh", "hitIdLow"}} {
		if a, b := vals[pair[0]], vals[pair[1]]; a != nil && b != nil {
			h.Write(a)
			h.Write([]byte{0})
			h.Write(b)
			return mix(h.Sum64()) >> 1
		}
	}
	h.Write(raw)
	return mix(h.Sum64()) >> 1
}

func mix(x uint64) uint64 {
	x ^= x >> 33
	x *= 0xff51afd7ed558ccd
	x ^= x >> 33
	return x
}

// projected returns e with the projection applied, encoded once per
// projection and shared by its subscribers.
func (h *Hub) projected(p *Projection, e *Entry) *Entry {
	if p.slot < 0 {
		return newEntry(e.Seq, p.Apply(e.Raw()), e.Received)
	}
	d := h.derived(e)
	if pe := d.proj[p.slot].Load(); pe != nil {
		return pe
	}
	pe := newEntry(e.Seq, p.Apply(e.Raw()), e.Received)
	d.proj[p.slot].Store(pe)
	return pe
}

// tagged wraps a hit for named filters: {"filters":["a","b"],"hit":<hit>}.
func tagged(e *Entry, names []string) *Entry {
	raw := e.Raw()
	b := make([]byte, 0, len(raw)+32+16*len(names))
	b = append(b, `{"filters":[`...)
	for i, n := range names {
		if i > 0 {
			b = append(b, ',')
		}
		b = strconv.AppendQuote(b, n)
	}
	b = append(b, `],"hit":`...)
	b = append(b, raw...)
	b = append(b, '}')
	return newEntry(e.Seq, b, e.Received)
}

// apply returns what the subscriber gets for e, or nil when it gets
// nothing; ok is false when the subscriber is over its filter budget and
// must stop after e.
func (s *Subscriber) apply(ctx context.Context, e *Entry) (out *Entry, ok bool, err error) {
	sel, h := s.sel, s.hub
	if sel.Sample > 0 && !h.sampled(sel.Sample, e) {
		return nil, true, nil
	}
	ok = true
	if sel.Filter != nil {
		match, within, err := s.matches(ctx, sel.Filter, e)
		if err != nil || !match {
			return nil, within, err
		}
		ok = within
	}
	var names []string
	for _, n := range sel.Named {
		match, within, err := s.matches(ctx, n.Filter, e)
		if err != nil {
			return nil, false, err
		}
		ok = ok && within
		if match {
			names = append(names, n.Name)
		}
	}
	if len(sel.Named) > 0 && len(names) == 0 {
		return nil, ok, nil
	}
	if sel.Fields != nil {
		e = h.projected(sel.Fields, e)
	}
	if names != nil {
		e = tagged(e, names)
	}
	return e, ok, nil
}
