package fanout

import (
	"fmt"
	"strings"
)

// Projection keeps only some paths of a hit (fields=pageName,events.purchase),
// for subscribers that want a slice of each hit. It works on the raw bytes:
// the kept values are copied byte for byte, members keep their original
// order, and hitIdHigh/hitIdLow are always kept so consumers can dedup.
type Projection struct {
	Text string
	root *fieldNode
	slot int // cache slot in an entry, or -1
	c    *Compiler
}

type fieldNode struct {
	children map[string]*fieldNode // nil: keep the whole value
}

// projectionSlots is how many distinct projections have their output cached
// per entry.
const projectionSlots = 16

// Limits on a fields list.
const (
	maxFieldPaths = 64
	maxFieldDepth = 8
)

// Fields parses a comma-separated list of dotted paths (or returns the
// cached projection), counting the caller as a user until it calls
// Release.
func (c *Compiler) Fields(text string) (*Projection, error) {
	if p, ok := c.fields.acquire(text); ok {
		return p, nil
	}
	p, err := parseFields(text)
	if err != nil {
		return nil, err
	}
	p.c = c
	return c.fields.insert(text, p, func(p *Projection, slot int) { p.slot = slot }), nil
}

// Release says the caller no longer uses p (a subscriber left).
func (p *Projection) Release() {
	if p.c != nil {
		p.c.fields.release(p.Text)
	}
}

func parseFields(text string) (*Projection, error) {
	root := &fieldNode{children: map[string]*fieldNode{}}
	paths := strings.Split(text, ",")
	if len(paths) > maxFieldPaths {
		return nil, fmt.Errorf("fields: %d paths, the limit is %d", len(paths), maxFieldPaths)
	}
	for _, path := range append(paths, "hitIdHigh", "hitIdLow") {
		path = strings.TrimSpace(path)
		parts := strings.Split(path, ".")
		if len(parts) > maxFieldDepth {
			return nil, fmt.Errorf("fields: %q is nested deeper than %d", path, maxFieldDepth)
		}
		n := root
		for i, part := range parts {
			if part == "" {
				return nil, fmt.Errorf("fields: empty name in %q (want names like pageName or events.purchase, comma-separated)", path)
			}
			if strings.ContainsAny(part, "\"\\") {
				return nil, fmt.Errorf("fields: %q has a quote or backslash", part)
			}
			if n.children == nil { // an ancestor is already kept whole
				break
			}
			child := n.children[part]
			if child == nil {
				child = &fieldNode{}
				if i < len(parts)-1 {
					child.children = map[string]*fieldNode{}
				}
				n.children[part] = child
			} else if i == len(parts)-1 {
				child.children = nil // the whole value wins over some of it
			}
			n = child
		}
	}
	return &Projection{Text: text, root: root, slot: -1}, nil
}

// Apply returns the projected hit. raw must be a valid JSON object.
func (p *Projection) Apply(raw []byte) []byte {
	out := make([]byte, 0, 256)
	i := skipWS(raw, 0)
	out, _ = projectValue(out, raw, i, p.root)
	return out
}

// projectValue appends the projection of the value at raw[i] and returns
// the index after that value.
func projectValue(out, raw []byte, i int, n *fieldNode) ([]byte, int) {
	end := valueEnd(raw, i)
	switch {
	case n.children == nil:
		return append(out, raw[i:end]...), end
	case raw[i] == '{':
		out = append(out, '{')
		first := true
		eachMember(raw[i:end], func(key, keyRaw []byte, vstart int) {
			child := n.children[string(key)]
			if child == nil {
				return
			}
			if !first {
				out = append(out, ',')
			}
			first = false
			out = append(out, keyRaw...)
			out = append(out, ':')
			out, _ = projectValue(out, raw[i:end], vstart, child)
		})
		return append(out, '}'), end
	case raw[i] == '[':
		out = append(out, '[')
		j := skipWS(raw, i+1)
		first := true
		for j < end && raw[j] != ']' {
			if !first {
				out = append(out, ',')
			}
			first = false
			out, j = projectValue(out, raw, j, n)
			j = skipWS(raw, j)
			if j < end && raw[j] == ',' {
				j = skipWS(raw, j+1)
			}
		}
		return append(out, ']'), end
	}
	// A path into a scalar: keep the scalar (it is what is there).
	return append(out, raw[i:end]...), end
}

// eachMember calls f for every member of the object at obj[0] with the
// unquoted key (escapes left as sent), the quoted key bytes and the index of
// the value.
func eachMember(obj []byte, f func(key, keyRaw []byte, vstart int)) {
	i := skipWS(obj, 1)
	for i < len(obj) && obj[i] == '"' {
		kend := stringEnd(obj, i)
		key := obj[i+1 : kend-1]
		j := skipWS(obj, kend)
		j = skipWS(obj, j+1) // the ':'
		f(key, obj[i:kend], j)
		j = skipWS(obj, valueEnd(obj, j))
		if j < len(obj) && obj[j] == ',' {
			j = skipWS(obj, j+1)
		}
		i = j
	}
}

// valueEnd returns the index just after the JSON value at raw[i] (valid
// JSON assumed).
func valueEnd(raw []byte, i int) int {
	switch raw[i] {
	case '"':
		return stringEnd(raw, i)
	case '{', '[':
		depth := 0
		for j := i; j < len(raw); j++ {
			switch raw[j] {
			case '"':
				j = stringEnd(raw, j) - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1
				}
			}
		}
		return len(raw)
	}
	j := i
	for j < len(raw) {
		switch raw[j] {
		case ',', '}', ']', ' ', '\t', '\r', '\n':
			return j
		}
		j++
	}
	return j
}

func stringEnd(raw []byte, i int) int {
	for j := i + 1; j < len(raw); j++ {
		switch raw[j] {
		case '\\':
			j++
		case '"':
			return j + 1
		}
	}
	return len(raw)
}

func skipWS(raw []byte, i int) int {
	for i < len(raw) && (raw[i] == ' ' || raw[i] == '\t' || raw[i] == '\r' || raw[i] == '\n') {
		i++
	}
	return i
}
