package fanout

import (
	"bytes"
	"encoding/json"
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
// operation and per element visited).
const DefaultCostLimit = 10_000

// resultSlots is how many distinct filters get their per-hit results cached
// in each entry (one bit each in two words); later filters are evaluated
// per subscriber, still on the shared decoded hit.
const resultSlots = 64

// Filter is a compiled expression, shared by every subscriber using the same
// text.
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

// Compiler compiles and caches filters and projections.
type Compiler struct {
	env       *cel.Env
	costLimit uint64

	mu        sync.Mutex
	filters   map[string]*Filter
	fields    map[string]*Projection
	nextSlot  int
	nextPSlot int
	// union is every field the cached filters read, so the first filter to
	// look at a hit decodes what the others will need in the same pass.
	union atomic.Pointer[[]string]
}

// maxCached bounds the caches, so clients sending endless distinct
// expressions cannot grow memory; past it expressions are compiled per
// subscriber.
const maxCached = 1024

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
	return &Compiler{env: env, costLimit: costLimit, filters: map[string]*Filter{}, fields: map[string]*Projection{}}, nil
}

// Filter compiles text (or returns the cached program). The error carries
// the compiler's message with the position of the problem.
func (c *Compiler) Filter(text string) (*Filter, error) {
	if len(text) > MaxFilterLength {
		return nil, fmt.Errorf("filter is %d bytes, the limit is %d", len(text), MaxFilterLength)
	}
	c.mu.Lock()
	f := c.filters[text]
	c.mu.Unlock()
	if f != nil {
		return f, nil
	}
	ast, iss := c.env.Compile(text)
	if iss != nil && iss.Err() != nil {
		return nil, fmt.Errorf("filter does not compile: %s", strings.TrimSpace(iss.Err().Error()))
	}
	if t := ast.OutputType(); t != cel.BoolType && t != cel.DynType {
		return nil, fmt.Errorf("filter must be a condition (bool), this one gives %s", t)
	}
	prg, err := c.env.Program(ast, cel.CostLimit(c.costLimit), cel.EvalOptions(cel.OptOptimize))
	if err != nil {
		return nil, fmt.Errorf("filter: %w", err)
	}
	f = &Filter{Text: text, prg: prg, slot: -1, keys: topLevelKeys(ast), c: c}
	c.mu.Lock()
	defer c.mu.Unlock()
	if cached := c.filters[text]; cached != nil {
		return cached, nil
	}
	if len(c.filters) < maxCached {
		if c.nextSlot < resultSlots {
			f.slot = c.nextSlot
			c.nextSlot++
		}
		c.filters[text] = f
		if f.keys != nil {
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
		}
	}
	return f, nil
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

// eval runs the filter on a decoded hit. An error (a missing field, a type
// mismatch, the cost limit) means "no match": the hit is skipped, the
// subscriber goes on.
func (f *Filter) eval(act interpreter.Activation) bool {
	if act == nil {
		return false
	}
	out, _, err := f.prg.Eval(act)
	if err != nil {
		return false
	}
	b, ok := out.Value().(bool)
	return ok && b
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
