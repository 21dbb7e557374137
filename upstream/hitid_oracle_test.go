package upstream

import "bytes"

// A deliberately simple, separate walk over the top-level members of a
// valid JSON object, kept as the oracle that FuzzScanAgreesWithEncodingJSON
// checks the hot-path scanner's hit ids against.

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
