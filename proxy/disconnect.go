package proxy

import (
	"errors"
	"os"
)

// Why a subscriber's connection ends, and what each transport sends for it.
// Every reason is listed here once; logs and metrics use these names.
//
//	reason          WebSocket close                 SSE final event
//	shutdown        1001 going away                 event: close  data: {"reason":"shutdown"}
//	slow            1008 policy violation           event: close  data: {"reason":"slow"}
//	                (fell off the ring with the disconnect policy)
//	write-timeout   none: the socket is stuck, it is closed
//	ping-timeout    none: no pong within the deadline, closed
//	client          echo of the client's close      none (the client went away)
//	too-big         1009 message too big (sent by gorilla's reader)
const (
	reasonShutdown     = "shutdown"
	reasonSlow         = "slow"
	reasonWriteTimeout = "write-timeout"
	reasonPingTimeout  = "ping-timeout"
	reasonClient       = "client"
)

// DisconnectReasons lists every reason, for metrics.
var DisconnectReasons = []string{reasonShutdown, reasonSlow, reasonWriteTimeout, reasonPingTimeout, reasonClient}

// WebSocket close codes (RFC 6455 §7.4.1).
const (
	closeGoingAway       = 1001
	closePolicyViolation = 1008
)

// writeFailed names why a write failed: the deadline (a stuck socket) or
// the client going away.
func writeFailed(err error) string {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return reasonWriteTimeout
	}
	return reasonClient
}
