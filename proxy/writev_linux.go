package proxy

import (
	"errors"

	"golang.org/x/sys/unix"
)

// maxIovecs is the most pieces one writev takes (IOV_MAX).
const maxIovecs = 1024

// writevNow is one writev on a non-blocking socket: the bytes written, 0
// when the socket is full.
func writevNow(fd uintptr, pieces [][]byte) (int, error) {
	n, err := unix.Writev(int(fd), pieces)
	if errors.Is(err, unix.EAGAIN) {
		return 0, nil
	}
	return max(n, 0), err
}
