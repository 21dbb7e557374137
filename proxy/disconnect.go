package proxy

import (
	"errors"
	"os"
)

// Why a subscriber's connection ends, and what each transport sends for it.
// Every reason is listed here once; logs and the metric
// lsmux_subscriber_disconnects_total{reason} use these names.
//
//	reason          WebSocket close                 SSE final event                          drop-in
//	shutdown        1001 going away                 event: close  data: {"reason":"shutdown"}  the response ends
//	slow            1008 policy violation           event: close  data: {"reason":"slow"}      the response ends
//	                (fell off the ring with LSMUX_SLOW_POLICY=disconnect)
//	write-timeout   none: the socket is stuck, it is closed
//	ping-timeout    none: no pong within the deadline, closed (WebSocket only)
//	too-big         1009 message too big            (clients send SSE nothing)
//	filter-cost     1008 policy violation           event: close  data: {"reason":"filter-cost"}  the response ends
//	                (its filters cost more than LSMUX_FILTER_BUDGET allows, or hit the cost limit again and again)
//	client          the client's close code echoed   none: the client went away
//	                (an empty close frame when it sent none, or a code that may
//	                not be sent: 1005, 1006, 1015)
//	internal-error  none: serving the subscriber panicked (a bug), the connection is closed
//	                (one subscriber is lost, not the process; the log has the stack)
const (
	reasonShutdown     = "shutdown"
	reasonSlow         = "slow"
	reasonWriteTimeout = "write-timeout"
	reasonPingTimeout  = "ping-timeout"
	reasonTooBig       = "too-big"
	reasonFilterCost   = "filter-cost"
	reasonClient       = "client"
	reasonInternal     = "internal-error"
)

// DisconnectReasons lists every reason, for metrics.
var DisconnectReasons = []string{reasonShutdown, reasonSlow, reasonWriteTimeout, reasonPingTimeout, reasonTooBig, reasonFilterCost, reasonClient, reasonInternal}

// WebSocket close codes (RFC 6455 §7.4.1).
const (
	closeNormal          = 1000
	closeGoingAway       = 1001
	closeNoStatus        = 1005 // reserved: never sent on the wire
	closeAbnormal        = 1006 // reserved: never sent on the wire
	closePolicyViolation = 1008
	closeTooBig          = 1009
	closeTLSHandshake    = 1015 // reserved: never sent on the wire
)

// goodbyes are the WebSocket codes and texts lsmux closes with, by reason.
// Reasons missing here close without a frame (the socket is stuck or gone).
var goodbyes = map[string]struct {
	code int
	text string
}{
	reasonShutdown:   {closeGoingAway, "lsmux is shutting down; reconnect with from=<last seq + 1>"},
	reasonSlow:       {closePolicyViolation, "slow consumer: fell behind lsmux's buffer; reconnect with from=oldest"},
	reasonFilterCost: {closePolicyViolation, "filter-cost: the filters cost more than this connection's budget; simplify them"},
}

// sendableCode reports whether a close code may appear in a close frame
// (RFC 6455 §7.4): 1005, 1006 and 1015 are only ever reported locally,
// 1004 and 1016-2999 are unassigned.
func sendableCode(code int) bool {
	switch {
	case code >= 1000 && code <= 1003, code >= 1007 && code <= 1014:
		return true
	case code >= 3000 && code <= 4999:
		return true
	}
	return false
}

// writeFailed names why a write failed: the deadline (a stuck socket) or
// the client going away.
func writeFailed(err error) string {
	if errors.Is(err, os.ErrDeadlineExceeded) {
		return reasonWriteTimeout
	}
	return reasonClient
}
