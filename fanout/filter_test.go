package fanout

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"
)

// matchOne evaluates f on e as a subscriber without limits would.
func matchOne(h *Hub, f *Filter, e *Entry) bool {
	s := &Subscriber{hub: h}
	defer s.endEvaluation()
	m, _, _ := s.matches(context.Background(), f, e)
	return m
}

func mustCompiler(t testing.TB) *Compiler {
	c, err := NewCompiler(0)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

const sampleHit = `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"mcVisIdHigh":11,"mcVisIdLow":12,"pageName":"checkout: payment","geoCountry":"fra","geoDMA":807,` +
	`"events":{"purchase":{"value":1},"event12":{"value":1}},"evars":{"evars":{"eVar1":"em:sale","eVar5":"x"}},` +
	`"products":[{"category":"shoes","name":"SKU-1","price":19.99},{"category":"bags","name":"SKU-2","price":5}],"userAgent":"UA \"quoted\""}`

func TestFilterSemantics(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	h.Append([]byte(sampleHit), time.Now())
	e := h.slot(1).Load()
	for expr, want := range map[string]bool{
		`hit.geoCountry == "fra" && has(hit.events.purchase)`: true,
		`hit.pageName.startsWith("checkout")`:                 true,
		`hit.geoCountry == "usa"`:                             false, // no match
		`hit.referrer == "x"`:                                 false, // missing field: an error, so skipped
		`hit.pageName > 5`:                                    false, // type error at run time: skipped
		`hit.geoDMA == 807 && hit.geoDMA > 800.5`:             true,  // integers compare with ints and floats
		`hit.hitIdHigh == 18446744073709551615u`:              true,  // ids above 2^63 stay exact
		`hit.products.exists(p, p.category == "bags")`:        true,
		`has(hit.events.event1)`:                              false,
	} {
		f, err := c.Filter(expr)
		if err != nil {
			t.Fatalf("%s: %v", expr, err)
		}
		if got := matchOne(h, f, e); got != want {
			t.Errorf("%s = %v, want %v", expr, got, want)
		}
		if got := matchOne(h, f, e); got != want { // from the shared result now
			t.Errorf("%s (cached) = %v, want %v", expr, got, want)
		}
	}
}

func TestFilterCostLimitStopsRunawayExpressions(t *testing.T) {
	c, _ := NewCompiler(50)
	h := NewHub(Options{FirstSeq: 1})
	h.Append([]byte(sampleHit), time.Now())
	// Cheap enough for the compiler, far too expensive to evaluate.
	f, err := c.Filter(`[1,2,3,4,5,6,7,8,9,10].all(a, [1,2,3,4,5,6,7,8,9,10].all(b, [1,2,3,4,5,6,7,8,9,10].all(x, x > 0)))`)
	if err != nil {
		t.Fatal(err)
	}
	if matchOne(h, f, h.slot(1).Load()) {
		t.Fatal("an expression over the cost limit matched; it must be cut off (no match)")
	}
	ok, _ := c.Filter(`hit.geoCountry == "fra"`)
	if !matchOne(h, ok, h.slot(1).Load()) {
		t.Fatal("a cheap filter no longer matches")
	}
}

func TestInvalidFiltersSayWhere(t *testing.T) {
	c := mustCompiler(t)
	for expr, want := range map[string]string{
		`hit.geoCountry == `:       "1:",
		`hit.pageName.startsWith(`: "1:",
		`hit.a = 1`:                "1:",
		`"just a string"`:          "bool",
		strings.Repeat("x", 5000):  "limit",
	} {
		_, err := c.Filter(expr)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%.30q: error %v, want one mentioning %q", expr, err, want)
		}
	}
}

func TestCompiledFiltersAreShared(t *testing.T) {
	c := mustCompiler(t)
	a, _ := c.Filter(`hit.x == 1`)
	b, _ := c.Filter(`hit.x == 1`)
	if a != b {
		t.Fatal("the same text compiled twice")
	}
}

func TestProjection(t *testing.T) {
	c := mustCompiler(t)
	for fields, want := range map[string]string{
		"pageName,geoCountry":     `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"pageName":"checkout: payment","geoCountry":"fra"}`,
		"events.purchase":         `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"events":{"purchase":{"value":1}}}`,
		"evars.evars.eVar1":       `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"evars":{"evars":{"eVar1":"em:sale"}}}`,
		"products.category":       `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"products":[{"category":"shoes"},{"category":"bags"}]}`,
		"events,events.purchase":  `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"events":{"purchase":{"value":1},"event12":{"value":1}}}`,
		"userAgent, missing.path": `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"userAgent":"UA \"quoted\""}`,
		"pageName.deeper":         `{"hitIdHigh":18446744073709551615,"hitIdLow":7,"pageName":"checkout: payment"}`,
	} {
		p, err := c.Fields(fields)
		if err != nil {
			t.Fatal(err)
		}
		got := string(p.Apply([]byte(sampleHit)))
		if got != want {
			t.Errorf("fields=%s:\n got %s\nwant %s", fields, got, want)
		}
		if !json.Valid([]byte(got)) {
			t.Errorf("fields=%s: not valid JSON", fields)
		}
	}
	for _, bad := range []string{"", "a,,b", "a..b", strings.Repeat("a,", 70), `a"b`} {
		if _, err := c.Fields(bad); err == nil {
			t.Errorf("fields=%q accepted", bad)
		}
	}
}

func TestSamplingIsDeterministicByVisitor(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	in, total := map[int]bool{}, 0
	for v := range 2000 {
		for k := range 3 { // three hits per visitor: all in or all out
			raw := fmt.Sprintf(`{"hitIdHigh":%d,"hitIdLow":%d,"mcVisIdHigh":%d,"mcVisIdLow":%d}`, v, k, v*7, v*13)
			h.Append([]byte(raw), time.Now())
			e := h.slot(h.next.Load() - 1).Load()
			got := h.sampled(0.1, e)
			if k > 0 && got != in[v] {
				t.Fatalf("visitor %d: hit %d sampled %v, earlier hits %v", v, k, got, in[v])
			}
			in[v] = got
		}
		if in[v] {
			total++
		}
	}
	if total < 140 || total > 260 {
		t.Fatalf("sample=0.1 kept %d of 2000 visitors", total)
	}
}

func TestSelectorThroughPoll(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	f, _ := c.Filter(`hit.n % 3 == 0`)
	p, _ := c.Fields("n")
	sub := h.Subscribe(Oldest, Info{}, &Selector{Filter: f, Fields: p})
	defer sub.Close()
	plain := h.Subscribe(Oldest, Info{}, nil)
	defer plain.Close()
	for i := range 1000 {
		h.Append([]byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"n":%d,"pad":"xxxx"}`, i, i)), time.Now())
	}
	var got []string
	for {
		es, gap, _, _ := sub.Poll(context.Background(), anySize, 1<<20)
		if gap != nil {
			t.Fatalf("gap %+v", gap)
		}
		if len(es) == 0 {
			break
		}
		for _, e := range es {
			got = append(got, string(e.Raw()))
		}
	}
	if len(got) != 334 || got[1] != `{"hitIdHigh":1,"hitIdLow":3,"n":3}` {
		t.Fatalf("%d hits, second %s", len(got), got[1])
	}
	if es, _, _, _ := plain.Poll(context.Background(), anySize, 1<<30); len(es) != MaxBatch || string(es[0].Raw()) != `{"hitIdHigh":1,"hitIdLow":0,"n":0,"pad":"xxxx"}` {
		t.Fatal("the plain subscriber did not get the hits unchanged")
	}
	named := h.Subscribe(Oldest, Info{}, &Selector{Named: []NamedFilter{{"three", f}, {"all", mustFilter(t, c, "true")}}})
	defer named.Close()
	es, _, _, _ := named.Poll(context.Background(), anySize, 1<<30)
	if string(es[0].Raw()) != `{"filters":["three","all"],"hit":{"hitIdHigh":1,"hitIdLow":0,"n":0,"pad":"xxxx"}}` ||
		string(es[1].Raw()) != `{"filters":["all"],"hit":{"hitIdHigh":1,"hitIdLow":1,"n":1,"pad":"xxxx"}}` {
		t.Fatalf("named: %s / %s", es[0].Raw(), es[1].Raw())
	}
}

func mustFilter(t *testing.T, c *Compiler, text string) *Filter {
	f, err := c.Filter(text)
	if err != nil {
		t.Fatal(err)
	}
	return f
}

func TestPlainSubscribersNeverDecode(t *testing.T) {
	h := NewHub(Options{FirstSeq: 1})
	sub := h.Subscribe(Oldest, Info{}, nil)
	defer sub.Close()
	for i := range 100 {
		h.Append(hit(i), time.Now())
	}
	sub.Poll(context.Background(), anySize, 1<<30)
	for i := range h.ring {
		if e := h.ring[i].Load(); e != nil && e.ext.Load() != nil {
			t.Fatal("a subscriber without selector caused derived data")
		}
	}
}

// FuzzProjection: any valid JSON object and any accepted fields list give
// valid JSON that keeps the hit ids.
func FuzzProjection(f *testing.F) {
	f.Add(sampleHit, "pageName,products.category")
	f.Add(`{"a":[1,{"b":2}],"c":{"d":[]}}`, "a.b,c.d")
	f.Fuzz(func(t *testing.T, doc, fields string) {
		var v map[string]any
		if json.Unmarshal([]byte(doc), &v) != nil {
			return
		}
		p, err := parseFields(fields)
		if err != nil {
			return
		}
		out := p.Apply([]byte(doc))
		if !json.Valid(out) {
			t.Fatalf("projection of %s by %q is not JSON: %s", doc, fields, out)
		}
	})
}

// TestFiltersDecodeOnlyTheFieldsTheyRead: a filter on two fields decodes
// those two; a filter using the hit as a whole decodes everything; several
// filters on one hit share what was decoded.
func TestFiltersDecodeOnlyTheFieldsTheyRead(t *testing.T) {
	c := mustCompiler(t)
	h := NewHub(Options{FirstSeq: 1})
	h.Append([]byte(sampleHit), time.Now())
	e := h.slot(1).Load()
	two := mustFilter(t, c, `hit.geoCountry == "fra" && has(hit.events.purchase)`)
	if got := two.keys; len(got) != 2 {
		t.Fatalf("keys %v", got)
	}
	if !matchOne(h, two, e) {
		t.Fatal("no match")
	}
	d := h.derived(e).dec.Load()
	if len(d.m) != 2 || d.all {
		t.Fatalf("decoded %d fields for a filter reading 2", len(d.m))
	}
	missing := mustFilter(t, c, `has(hit.referrer)`)
	if matchOne(h, missing, e) || !h.derived(e).dec.Load().tried["referrer"] {
		t.Fatal("an absent field must be looked for once and not match")
	}
	whole := mustFilter(t, c, `size(hit) > 3`)
	if whole.keys != nil || !matchOne(h, whole, e) || !h.derived(e).dec.Load().all {
		t.Fatal("a filter on the whole hit must decode it all")
	}
}
