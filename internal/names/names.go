// Package names holds the one rule for the names lsmux puts in URL paths,
// JSON and JetStream: stream names (from LSMUX_STREAM_URL or
// LSMUX_STREAMS) and the names of an SSE connection's named filters.
package names

import "fmt"

// MaxLen bounds a name.
const MaxLen = 128

// WordByte reports whether c is a letter, digit, '-' or '_': the alphabet
// JetStream allows in stream and bucket names. A name may also hold '.',
// which cluster mode maps to '_' (and a hash) for JetStream.
func WordByte(c byte) bool {
	return c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_'
}

// Valid reports whether s is 1 to MaxLen letters, digits, '-', '_' or '.'.
func Valid(s string) bool {
	if s == "" || len(s) > MaxLen {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !WordByte(s[i]) && s[i] != '.' {
			return false
		}
	}
	return true
}

// Check explains why s is not a valid name of the given kind ("stream
// name", "filter name"), nil when it is.
func Check(kind, s string) error {
	if Valid(s) {
		return nil
	}
	shown := s
	if len(shown) > 64 {
		shown = shown[:64] + "…"
	}
	return fmt.Errorf("%s %q: use 1 to %d letters, digits, '-', '_' and '.'", kind, shown, MaxLen)
}
