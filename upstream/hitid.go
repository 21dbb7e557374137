package upstream

import "bytes"

// HitID identifies a Live Stream hit: hitIdHigh and hitIdLow, both unsigned
// 64-bit. They exceed JavaScript's 2^53 and float64's precision, so they are
// read as integers straight from the raw bytes, never through a float.
type HitID struct{ High, Low uint64 }

// inspect checks that raw is one JSON object (anything else could not be
// embedded in a WebSocket message or an SSE event) and extracts the hit id
// from its top-level members, without decoding the rest.
func inspect(raw []byte) (id HitID, hasID, valid bool) {
	return scanHit(raw)
}

// ParseHitID extracts the hit id from a raw hit (valid JSON assumed).
func ParseHitID(raw []byte) (HitID, bool) {
	i := skipSpace(raw, 0)
	if i >= len(raw) || raw[i] != '{' {
		return HitID{}, false
	}
	hi, lo, h, l := scanTopLevelIDs(raw, i)
	return HitID{hi, lo}, h && l
}

var (
	keyHigh = []byte("hitIdHigh")
	keyLow  = []byte("hitIdLow")
)

// scanTopLevelIDs walks the members of the object that starts at raw[i]
// (which must be valid JSON) and returns the values of hitIdHigh and
// hitIdLow when they are unsigned integers, or strings of digits. Nested
// objects are skipped, so a nested "hitIdHigh" cannot be mistaken for the
// hit's own.
func scanTopLevelIDs(raw []byte, i int) (hi, lo uint64, gotHi, gotLo bool) {
	depth := 0
	expectKey := false
	for i < len(raw) {
		switch c := raw[i]; c {
		case '{':
			depth++
			expectKey = depth == 1
			i++
		case '[':
			depth++
			i++
		case '}', ']':
			depth--
			i++
		case ',':
			expectKey = depth == 1
			i++
		case '"':
			end := stringEnd(raw, i)
			if expectKey && depth == 1 {
				key := raw[i+1 : end-1]
				j := skipSpace(raw, end)
				if j < len(raw) && raw[j] == ':' {
					j = skipSpace(raw, j+1)
				}
				if bytes.Equal(key, keyHigh) {
					hi, gotHi = parseUint(raw, j)
				} else if bytes.Equal(key, keyLow) {
					lo, gotLo = parseUint(raw, j)
				}
				if gotHi && gotLo {
					return
				}
				expectKey = false
				i = j
				continue
			}
			i = end
		default:
			i++
		}
	}
	return
}

// stringEnd returns the index just past the string that starts at raw[i].
func stringEnd(raw []byte, i int) int {
	i++
	for i < len(raw) {
		k := bytes.IndexAny(raw[i:], `"\`)
		if k < 0 {
			return len(raw)
		}
		i += k
		if raw[i] == '\\' {
			i += 2
			continue
		}
		return i + 1
	}
	return len(raw)
}

// parseUint reads an unsigned integer (optionally quoted) at raw[i]; it
// fails on overflow, signs, fractions and exponents.
func parseUint(raw []byte, i int) (uint64, bool) {
	quoted := i < len(raw) && raw[i] == '"'
	if quoted {
		i++
	}
	var v uint64
	n := 0
	for ; i < len(raw) && raw[i] >= '0' && raw[i] <= '9'; i++ {
		d := uint64(raw[i] - '0')
		if v > (1<<64-1-d)/10 {
			return 0, false
		}
		v = v*10 + d
		n++
	}
	if n == 0 {
		return 0, false
	}
	if i < len(raw) {
		switch raw[i] {
		case '.', 'e', 'E':
			return 0, false
		case '"':
			if !quoted {
				return 0, false
			}
		default:
			if quoted {
				return 0, false
			}
		}
	}
	return v, true
}

func skipSpace(raw []byte, i int) int {
	for i < len(raw) {
		switch raw[i] {
		case ' ', '\t', '\r', '\n':
			i++
		default:
			return i
		}
	}
	return i
}
