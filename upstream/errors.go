package upstream

import (
	"errors"
	"fmt"
	"net/http"
)

// Sentinel errors. Callers branch on them with errors.Is; the texts are
// written for the operator who reads them in a log line or in /v1/status.
var (
	// ErrStalled ends a connection that sent nothing for the stall timeout.
	// Live Stream may be silent for minutes on a quiet report suite, so the
	// timeout is long; when it fires the socket is most likely dead.
	ErrStalled = errors.New("no data for the stall timeout; the connection is presumed dead")
	// ErrRecordTooLarge reports a record over the configured size cap. It is
	// not fatal: the record is skipped and counted, the stream goes on.
	ErrRecordTooLarge = errors.New("record exceeds the maximum record size")
	// ErrTooManyRedirects stops a redirect loop between Live Stream hosts.
	ErrTooManyRedirects = errors.New("too many redirects")
	// ErrNoToken means no access token could be obtained for a connect.
	ErrNoToken = errors.New("no access token")
	// ErrInsecureRedirect refuses a redirect from https to plain http: it
	// would send the access token in the clear. Live Stream never does
	// this; something between lsmux and Live Stream does.
	ErrInsecureRedirect = errors.New("refused a redirect from https to http, which would send the access token in the clear (is a proxy in between rewriting Live Stream's answers?)")
)

// StatusError is a non-200 answer from Live Stream (or from the IMS token
// endpoint). It carries what the operator needs to act: the status, the
// server's own error_description when it sent one, and the likely cause.
type StatusError struct {
	Op          string // "connect" or "token"
	URL         string // the URL that answered, without credentials
	Status      int
	Description string // error_description from the body, if any
}

func (e *StatusError) Error() string {
	msg := fmt.Sprintf("%s %s: %d %s", e.Op, e.URL, e.Status, http.StatusText(e.Status))
	if e.Description != "" {
		msg += ": " + e.Description
	}
	if hint := Explain(e.Status); hint != "" && e.Op == "connect" {
		msg += " (" + hint + ")"
	}
	return msg
}

// Explain returns the Live Stream documentation's reading of a status code,
// phrased as what the operator should check. It is empty for codes the
// documentation does not list.
func Explain(status int) string {
	switch status {
	case http.StatusBadRequest:
		return "a query parameter is invalid, e.g. maxConnections outside 1..8 or a bad smoothingBucketSize: fix LSMUX_MAX_CONNECTIONS / LSMUX_SMOOTHING_BUCKET_SIZE / LSMUX_RESET"
	case http.StatusUnauthorized:
		return "the access token is missing, expired, or not for the Live Stream service: check the credentials and that the API project includes Live Stream"
	case http.StatusNotFound:
		return "the stream endpoint does not exist, or was disabled after 90 days without clients: check LSMUX_STREAM_URL and ask Adobe support to re-enable it"
	case http.StatusMethodNotAllowed:
		return "Live Stream accepts only GET"
	case http.StatusNotAcceptable:
		return "the request lacked Accept-Encoding: gzip (a proxy in between may strip it)"
	case http.StatusConflict:
		return "more connections than maxConnections, or connections with different maxConnections values, are open on this stream: another client uses the same stream, or a previous connection is not yet noticed as closed"
	case 424:
		return "the stream is not enabled for the newer API: call GET /api/2/enable/<stream> or use /api/1/"
	case http.StatusInternalServerError:
		return "Live Stream failed internally; retrying later"
	case http.StatusServiceUnavailable:
		return "no hits available yet or the stream is migrating; retrying later"
	case http.StatusHTTPVersionNotSupported:
		return "Live Stream only speaks HTTP/1.1 (a proxy in between may use HTTP/2)"
	}
	return ""
}

// outcomeOf classifies an HTTP status into the reconnect policy's terms.
// 5xx and 409/429 are the server's temporary trouble; 401 is a token
// problem; the remaining 4xx (and 505) are configuration errors that a
// retry cannot fix, so they are retried only at the slowest pace.
func outcomeOf(status int) Outcome {
	switch {
	case status == http.StatusUnauthorized:
		return Unauthorized
	case status == http.StatusConflict, status == http.StatusTooManyRequests, status == http.StatusRequestTimeout:
		return Refused
	case status == http.StatusHTTPVersionNotSupported:
		return Misconfigured
	case status >= 500:
		return Refused
	case status >= 400:
		return Misconfigured
	}
	return Refused
}
