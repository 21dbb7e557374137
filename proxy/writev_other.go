//go:build !linux

package proxy

import "errors"

// maxIovecs is 0 off Linux: lsmux writes there only with writer
// goroutines (connWriter.canTry is false), so writevNow is never called.
const maxIovecs = 0

func writevNow(uintptr, [][]byte) (int, error) {
	return 0, errors.New("writes that do not wait are used on Linux only")
}
