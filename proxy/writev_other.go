//go:build !linux

package proxy

import "errors"

// maxIovecs is 0 where writevNow is not implemented: tryWrite never
// writes, and writers do all the writing.
const maxIovecs = 0

func writevNow(uintptr, [][]byte) (int, error) {
	return 0, errors.New("not implemented")
}
