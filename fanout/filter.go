package fanout

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/google/cel-go/cel"
	celast "github.com/google/cel-go/common/ast"
	"github.com/google/cel-go/interpreter"
)

// Filters are CEL expressions with the hit bound as `hit`, for example
//
//	hit.geoCountry == "fra" && has(hit.events.purchase)
//	hit.pageName.startsWith("checkout")
//
// CEL is a standard, side-effect free expression language whose cost can be
// bounded, which is what a server evaluating strangers' expressions needs.

// MaxFilterLength bounds an expression's text.
const MaxFilterLength = 4096

// DefaultCostLimit bounds one evaluation (CEL's cost units: roughly one per
// operation and per element visited). Measured on this project's machine
// (a 2-core cloud VM), a unit costs 0.3 to 0.9 µs, so an evaluation stops
// within about a millisecond. Real filters cost far less: the README's
// examples 3 to 13 units (`hit.products.exists(p, p.category == "shoes")`
// over three products: 13), an `exists` over 50 products about 200. A
// limit of 10,000 let one nested `all` over 100-element lists take 2 to 5
// ms on every hit.
const DefaultCostLimit = 1_000

// resultSlots is how many distinct filters get their per-hit results cached
// in each entry (one bit each in two words); later filters are evaluated
// per subscriber, still on the shared decoded hit.
const resultSlots = 64

// Filter is a compiled expression, shared by every subscriber using the same
// text. Compiler.Filter counts the caller as a user; Release ends that.
type Filter struct {
	Text string
	prg  cel.Program
	slot int // result bit, or -1
	// keys are the top-level fields of the hit the expression reads, so
	// only those are decoded; nil when it uses the hit otherwise (as a
	// whole, with a computed key), and the whole hit must be decoded.
	keys []string
	c    *Compiler
}

// Compiler compiles and caches filters and projections (see textCache:
// what subscribers use stays, idle texts are evicted least recently used
// first).
//
// Lock order: the caches' locks, then hubsMu, then a hub's dmu (a freed
// slot is cleared in every hub that used it).
type Compiler struct {
	env       *cel.Env
	costLimit uint64

	filters *textCache[*Filter]
	fields  *textCache[*Projection]

	hubsMu sync.Mutex
	hubs   map[*Hub]struct{} // hubs whose entries may hold this compiler's results

	// unionMu serialises writers of union, every field the cached filters
	// read, so the first filter to look at a hit decodes what the others
	// will need in the same pass.
	unionMu sync.Mutex
	union   atomic.Pointer[[]string]
}

// idleCached bounds the texts kept cached while no subscriber uses them.
const idleCached = 1024

// NewCompiler returns a Compiler whose programs stop after costLimit units
// (0: DefaultCostLimit).
func NewCompiler(costLimit uint64) (*Compiler, error) {
	if costLimit == 0 {
		costLimit = DefaultCostLimit
	}
	env, err := cel.NewEnv(cel.Variable("hit", cel.DynType), cel.CrossTypeNumericComparisons(true))
	if err != nil {
		return nil, fmt.Errorf("cel environment: %w", err)
	}
	c := &Compiler{env: env, costLimit: costLimit, hubs: map[*Hub]struct{}{}}
	c.filters = newTextCache[*Filter](idleCached, resultSlots, c.clearFilterSlot)
	c.fields = newTextCache[*Projection](idleCached, projectionSlots, c.clearProjectionSlot)
	return c, nil
}

// CostLimit is the cost at which one evaluation stops.
func (c *Compiler) CostLimit() uint64 { return c.costLimit }

// track notes a hub whose entries may hold this compiler's cached results.
func (c *Compiler) track(h *Hub) {
	c.hubsMu.Lock()
	c.hubs[h] = struct{}{}
	c.hubsMu.Unlock()
}

func (c *Compiler) eachHub(f func(*Hub)) {
	c.hubsMu.Lock()
	defer c.hubsMu.Unlock()
	for h := range c.hubs {
		f(h)
	}
}

func (c *Compiler) clearFilterSlot(slot int) {
	c.eachHub(func(h *Hub) {
		h.clearDerived(func(d *derived) { d.done.And(^(uint64(1) << slot)); d.match.And(^(uint64(1) << slot)) })
	})
}

func (c *Compiler) clearProjectionSlot(slot int) {
	c.eachHub(func(h *Hub) { h.clearDerived(func(d *derived) { d.proj[slot].Store(nil) }) })
}

// Cached reports whether text is compiled and cached already (asking for
// it then costs no compilation).
func (c *Compiler) Cached(text string) bool {
	_, ok := c.filters.peek(text)
	return ok
}

// CachedFields is Cached for a fields list.
func (c *Compiler) CachedFields(text string) bool {
	_, ok := c.fields.peek(text)
	return ok
}

// Check reports whether text compiles, without caching it: validating a
// flood of texts evicts nothing that subscriptions use.
func (c *Compiler) Check(text string) error {
	if _, ok := c.filters.peek(text); ok {
		return nil
	}
	_, err := c.compile(text)
	return err
}

// CheckFields is Check for a fields list.
func (c *Compiler) CheckFields(text string) error {
	if _, ok := c.fields.peek(text); ok {
		return nil
	}
	_, err := parseFields(text)
	return err
}

// Release says the caller no longer uses f (a subscriber left).
func (f *Filter) Release() {
	if f.c != nil {
		f.c.filters.release(f.Text)
	}
}

// Filter compiles text (or returns the cached program), counting the
// caller as a user until it calls Release. The error carries the
// compiler's message with the position of the problem.
func (c *Compiler) Filter(text string) (*Filter, error) {
	if f, ok := c.filters.acquire(text); ok {
		return f, nil
	}
	f, err := c.compile(text)
	if err != nil {
		return nil, err
	}
	f = c.filters.insert(text, f, func(f *Filter, slot int) { f.slot = slot })
	if f.keys != nil {
		c.unionMu.Lock()
		var u []string
		if old := c.union.Load(); old != nil {
			u = append(u, *old...)
		}
		for _, k := range f.keys {
			if !slices.Contains(u, k) && len(u) < 64 {
				u = append(u, k)
			}
		}
		c.union.Store(&u)
		c.unionMu.Unlock()
	}
	return f, nil
}

// compile builds a program for text, uncached. Compiling costs
// milliseconds of CPU, so it takes an evaluation slot like filter work
// does: however many new filters arrive at once, half the cores stay free.
func (c *Compiler) compile(text string) (*Filter, error) {
	if len(text) > MaxFilterLength {
		return nil, fmt.Errorf("filter is %d bytes, the limit is %d", len(text), MaxFilterLength)
	}
	evalSlots <- struct{}{}
	defer func() { <-evalSlots }()
	ast, iss := c.env.Compile(text)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("filter does not compile: %s", strings.TrimSpace(iss.Err().Error()))
	}
	if t := ast.OutputType(); t != cel.BoolType && t != cel.DynType {
		return nil, fmt.Errorf("filter must be a condition (bool), this one gives %s", t)
	}
	prg, err := c.env.Program(ast, cel.CostLimit(c.costLimit), cel.EvalOptions(cel.OptOptimize, cel.OptTrackCost))
	if err != nil {
		return nil, fmt.Errorf("filter: %w", err)
	}
	return &Filter{Text: text, prg: prg, slot: -1, keys: topLevelKeys(ast), c: c}, nil
}

// fieldsToDecode is what to decode when f first looks at a hit: its own
// fields plus those of the other cached filters (nil: everything).
func (f *Filter) fieldsToDecode() []string {
	if f.keys == nil || f.c == nil {
		return nil
	}
	if u := f.c.union.Load(); u != nil {
		return *u
	}
	return f.keys
}

// topLevelKeys lists the fields read as hit.<field>. It returns nil unless
// every use of hit is such a selection.
func topLevelKeys(a *cel.Ast) []string {
	idents, selects := 0, 0
	seen := map[string]bool{}
	var keys []string
	celast.PostOrderVisit(a.NativeRep().Expr(), celast.NewExprVisitor(func(e celast.Expr) {
		switch e.Kind() {
		case celast.IdentKind:
			if e.AsIdent() == "hit" {
				idents++
			}
		case celast.SelectKind:
			sel := e.AsSelect()
			if op := sel.Operand(); op.Kind() == celast.IdentKind && op.AsIdent() == "hit" {
				selects++
				if !seen[sel.FieldName()] {
					seen[sel.FieldName()] = true
					keys = append(keys, sel.FieldName())
				}
			}
		}
	}))
	if idents != selects || len(keys) == 0 {
		return nil
	}
	return keys
}

// eval runs the filter on a decoded hit and says what it cost and whether
// it hit the cost limit. An error (a missing field, a type mismatch, the
// cost limit) means "no match": the hit is skipped, the subscriber goes on
// (and pays for it: see costMeter).
func (f *Filter) eval(act interpreter.Activation) (match bool, cost uint64, overLimit bool) {
	if act == nil {
		return false, 1, false
	}
	out, det, err := f.prg.Eval(act)
	if det != nil {
		if c := det.ActualCost(); c != nil {
			cost = *c
		}
	}
	cost = max(cost, 1)
	var ce interpreter.EvalCancelledError
	if errors.As(err, &ce) && ce.Cause == interpreter.CostLimitExceeded {
		return false, max(cost, f.c.costLimitOr()), true
	}
	if err != nil {
		return false, cost, false
	}
	b, ok := out.Value().(bool)
	return ok && b, cost, false
}

// costLimitOr is the compiler's cost limit (a filter built outside a
// compiler has none known: 0).
func (c *Compiler) costLimitOr() uint64 {
	if c == nil {
		return 0
	}
	return c.costLimit
}

// decodeValue turns one JSON value into CEL values. Integers stay
// integers (int64, or uint64 above it), so hit ids and counters compare
// exactly.
func decodeValue(raw []byte) (any, bool) {
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, false
	}
	return convertNumbers(v), true
}

func convertNumbers(v any) any {
	switch t := v.(type) {
	case map[string]any:
		for k, e := range t {
			t[k] = convertNumbers(e)
		}
	case []any:
		for i, e := range t {
			t[i] = convertNumbers(e)
		}
	case json.Number:
		if i, err := strconv.ParseInt(string(t), 10, 64); err == nil {
			return i
		}
		if u, err := strconv.ParseUint(string(t), 10, 64); err == nil {
			return u
		}
		f, _ := t.Float64()
		return f
	}
	return v
}
