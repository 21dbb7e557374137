package upstream

// HitID identifies a Live Stream hit: hitIdHigh and hitIdLow, both unsigned
// 64-bit. They exceed JavaScript's 2^53 and float64's precision, so they are
// read as integers straight from the raw bytes (scanHit, jsonscan.go),
// never through a float.
type HitID struct{ High, Low uint64 }

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
