package proxy

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"

	"lsmux/fanout"
)

// parseFrom reads where a subscriber starts: Last-Event-ID (the last hit an
// EventSource saw, so it resumes after it) wins over from=N|oldest|live,
// because a browser reconnecting on its own keeps the original URL.
func parseFrom(r *http.Request) (uint64, error) {
	if id := strings.TrimSpace(r.Header.Get("Last-Event-ID")); id != "" {
		n, err := strconv.ParseUint(id, 10, 64)
		if err != nil || n == ^uint64(0) {
			return 0, fmt.Errorf("Last-Event-ID %q: want a sequence number lsmux sent as an event id", truncate(id))
		}
		return n + 1, nil
	}
	v := r.URL.Query().Get("from")
	switch v {
	case "", "live":
		return fanout.Live, nil
	case "oldest":
		return fanout.Oldest, nil
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if err != nil || n >= fanout.Oldest {
		return 0, fmt.Errorf("from=%q: want a sequence number, oldest or live", truncate(v))
	}
	return n, nil
}

func truncate(s string) string {
	if len(s) > 64 {
		return s[:64] + "…"
	}
	return s
}
