package upstream

import "encoding/binary"

// A validating JSON scanner for the ingest hot path. encoding/json.Valid
// took about half of the ingest time; this one checks the same grammar
// (RFC 8259, nesting up to 10,000 like encoding/json, no UTF-8 check, as
// encoding/json.Valid has none) and, in the same pass, picks up the
// top-level hitIdHigh and hitIdLow. FuzzScanAgreesWithEncodingJSON keeps
// it honest against the standard library.

const maxDepth = 10000

type jsonScanner struct {
	b     []byte
	i     int
	depth int
	// results of the top level
	hi, lo       uint64
	gotHi, gotLo bool
}

// scanHit reports whether raw is exactly one JSON object (surrounding
// whitespace allowed) and returns its top-level hit id.
func scanHit(raw []byte) (id HitID, hasID, valid bool) {
	s := jsonScanner{b: raw}
	s.ws()
	if s.i >= len(s.b) || s.b[s.i] != '{' {
		return HitID{}, false, false
	}
	if !s.object(true) {
		return HitID{}, false, false
	}
	s.ws()
	if s.i != len(s.b) {
		return HitID{}, false, false
	}
	return HitID{s.hi, s.lo}, s.gotHi && s.gotLo, true
}

func (s *jsonScanner) ws() {
	for s.i < len(s.b) {
		switch s.b[s.i] {
		case ' ', '\t', '\n', '\r':
			s.i++
		default:
			return
		}
	}
}

func (s *jsonScanner) value() bool {
	if s.i >= len(s.b) {
		return false
	}
	switch c := s.b[s.i]; {
	case c == '{':
		return s.object(false)
	case c == '[':
		return s.array()
	case c == '"':
		return s.str()
	case c == 't':
		return s.lit("true")
	case c == 'f':
		return s.lit("false")
	case c == 'n':
		return s.lit("null")
	case c == '-' || (c >= '0' && c <= '9'):
		return s.number()
	}
	return false
}

func (s *jsonScanner) lit(w string) bool {
	if len(s.b)-s.i < len(w) || string(s.b[s.i:s.i+len(w)]) != w {
		return false
	}
	s.i += len(w)
	return true
}

func (s *jsonScanner) object(top bool) bool {
	if s.depth++; s.depth > maxDepth {
		return false
	}
	s.i++ // '{'
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == '}' {
		s.i++
		s.depth--
		return true
	}
	for {
		if s.i >= len(s.b) || s.b[s.i] != '"' {
			return false
		}
		ks := s.i + 1
		if !s.str() {
			return false
		}
		key := s.b[ks : s.i-1]
		s.ws()
		if s.i >= len(s.b) || s.b[s.i] != ':' {
			return false
		}
		s.i++
		s.ws()
		vs := s.i
		if !s.value() {
			return false
		}
		if top && len(key) >= 8 && key[0] == 'h' {
			switch string(key) {
			case "hitIdHigh":
				s.hi, s.gotHi = parseUint(s.b[:s.i], vs)
			case "hitIdLow":
				s.lo, s.gotLo = parseUint(s.b[:s.i], vs)
			}
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.ws()
		case '}':
			s.i++
			s.depth--
			return true
		default:
			return false
		}
	}
}

func (s *jsonScanner) array() bool {
	if s.depth++; s.depth > maxDepth {
		return false
	}
	s.i++ // '['
	s.ws()
	if s.i < len(s.b) && s.b[s.i] == ']' {
		s.i++
		s.depth--
		return true
	}
	for {
		if !s.value() {
			return false
		}
		s.ws()
		if s.i >= len(s.b) {
			return false
		}
		switch s.b[s.i] {
		case ',':
			s.i++
			s.ws()
		case ']':
			s.i++
			s.depth--
			return true
		default:
			return false
		}
	}
}

// str scans a string starting at its opening quote.
func (s *jsonScanner) str() bool {
	b := s.b
	i := s.i + 1
	for i < len(b) {
		// Eight plain bytes at a time (no quote, backslash or control
		// character): most of a hit is long string values.
		for i+8 <= len(b) && plain8(binary.LittleEndian.Uint64(b[i:])) {
			i += 8
		}
		if i >= len(b) {
			break
		}
		c := b[i]
		switch {
		case c == '"':
			s.i = i + 1
			return true
		case c == '\\':
			if i+1 >= len(b) {
				return false
			}
			switch b[i+1] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
				i += 2
			case 'u':
				if i+6 > len(b) {
					return false
				}
				for _, h := range b[i+2 : i+6] {
					if !(h >= '0' && h <= '9' || h >= 'a' && h <= 'f' || h >= 'A' && h <= 'F') {
						return false
					}
				}
				i += 6
			default:
				return false
			}
		case c < 0x20:
			return false
		default:
			i++
		}
	}
	return false
}

// plain8 reports whether none of the 8 bytes in x is '"', '\\' or below
// 0x20 (the classic SWAR tests for a zero byte, a given byte, and a byte
// less than n).
func plain8(x uint64) bool {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	q := x ^ (ones * '"')
	b := x ^ (ones * '\\')
	return ((q-ones)&^q|(b-ones)&^b|(x-ones*0x20)&^x)&highs == 0
}

func (s *jsonScanner) number() bool {
	b, i := s.b, s.i
	if b[i] == '-' {
		i++
	}
	switch {
	case i < len(b) && b[i] == '0':
		i++
	case i < len(b) && b[i] >= '1' && b[i] <= '9':
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	default:
		return false
	}
	if i < len(b) && b[i] == '.' {
		i++
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	if i < len(b) && (b[i] == 'e' || b[i] == 'E') {
		i++
		if i < len(b) && (b[i] == '+' || b[i] == '-') {
			i++
		}
		if i >= len(b) || b[i] < '0' || b[i] > '9' {
			return false
		}
		for i < len(b) && b[i] >= '0' && b[i] <= '9' {
			i++
		}
	}
	s.i = i
	return true
}
