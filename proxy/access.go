package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// Observer hears what the proxy does, for metrics. Calls happen once per
// write batch, never per hit.
type Observer interface {
	Delivered(stream, transport string, n int, oldest time.Time)
	Gap(stream, transport string)
	Disconnected(stream, transport, reason string)
	Rejected(reason string)
}

type nopObserver struct{}

func (nopObserver) Delivered(string, string, int, time.Time) {}
func (nopObserver) Gap(string, string)                       {}
func (nopObserver) Disconnected(string, string, string)      {}
func (nopObserver) Rejected(string)                          {}

// requireAuth lets a request through when auth is off or it carries one of
// the configured tokens, as "Authorization: Bearer <token>" or, for
// EventSource which cannot set headers, "?access_token=<token>". The
// comparison takes the same time whichever token, if any, matches.
func (s *Server) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(s.tokenHashes) == 0 || s.authorized(r) {
			next.ServeHTTP(w, r)
			return
		}
		s.obs.Rejected("auth")
		w.Header().Set("WWW-Authenticate", `Bearer realm="lsmux"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <token> or ?access_token=<token> (LSMUX_AUTH_TOKEN)")
	})
}

func (s *Server) authorized(r *http.Request) bool {
	given := r.URL.Query().Get("access_token")
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		given = strings.TrimSpace(h[7:])
	}
	if given == "" {
		return false
	}
	sum := sha256.Sum256([]byte(given))
	ok := 0
	for _, want := range s.tokenHashes {
		ok |= subtle.ConstantTimeCompare(sum[:], want[:])
	}
	return ok == 1
}

// originAllowed: requests without Origin (non-browser clients) and
// same-origin requests pass; other origins must be listed in
// LSMUX_ALLOWED_ORIGINS (or it is "*").
func (s *Server) originAllowed(r *http.Request) bool {
	origin := r.Header.Get("Origin")
	if origin == "" || s.allowAll {
		return true
	}
	if u, err := url.Parse(origin); err == nil && strings.EqualFold(u.Host, r.Host) {
		return true
	}
	return s.allowed[strings.ToLower(strings.TrimSuffix(origin, "/"))]
}

// checkOrigin guards the subscription endpoints: a browser page from an
// origin not allowed gets 403 (for WebSocket this stops cross-site
// WebSocket hijacking); allowed cross-origin requests get CORS headers.
func (s *Server) checkOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.originAllowed(r) {
			s.obs.Rejected("origin")
			writeError(w, http.StatusForbidden, "origin "+quote(r.Header.Get("Origin"))+" is not allowed (LSMUX_ALLOWED_ORIGINS)")
			return
		}
		if origin := r.Header.Get("Origin"); origin != "" {
			w.Header().Set("Access-Control-Allow-Origin", origin)
			w.Header().Set("Access-Control-Allow-Credentials", "true")
			w.Header().Add("Vary", "Origin")
			if r.Method == http.MethodOptions {
				w.Header().Set("Access-Control-Allow-Methods", "GET, OPTIONS")
				w.Header().Set("Access-Control-Allow-Headers", "Authorization, Last-Event-ID")
				w.Header().Set("Access-Control-Max-Age", "600")
				w.WriteHeader(http.StatusNoContent)
				return
			}
		}
		next.ServeHTTP(w, r)
	})
}

// admit counts a subscriber against the limits; the returned release
// undoes it. None of this touches the upstream.
func (s *Server) admit(w http.ResponseWriter, r *http.Request) (release func(), ok bool) {
	addr := remoteIP(r)
	s.connsMu.Lock()
	switch {
	case s.ShuttingDown():
		s.connsMu.Unlock()
		writeError(w, http.StatusServiceUnavailable, "lsmux is shutting down; reconnect to another instance")
		return nil, false
	case s.opts.MaxSubscribers > 0 && s.total >= s.opts.MaxSubscribers:
		s.connsMu.Unlock()
		s.obs.Rejected("limit_total")
		s.retryAfter(w)
		writeError(w, http.StatusServiceUnavailable, "subscriber limit reached ("+strconv.Itoa(s.opts.MaxSubscribers)+", LSMUX_MAX_SUBSCRIBERS); retry later")
		return nil, false
	case s.opts.MaxPerAddress > 0 && s.perAddr[addr] >= s.opts.MaxPerAddress:
		s.connsMu.Unlock()
		s.obs.Rejected("limit_per_address")
		s.retryAfter(w)
		writeError(w, http.StatusTooManyRequests, "too many subscriptions from "+addr+" ("+strconv.Itoa(s.opts.MaxPerAddress)+", LSMUX_MAX_SUBSCRIBERS_PER_ADDRESS)")
		return nil, false
	}
	s.total++
	s.perAddr[addr]++
	s.handlers.Add(1)
	s.connsMu.Unlock()
	return func() {
		s.connsMu.Lock()
		s.total--
		if s.perAddr[addr]--; s.perAddr[addr] == 0 {
			delete(s.perAddr, addr)
		}
		s.connsMu.Unlock()
		s.handlers.Done()
	}, true
}

// retryAfter spreads the retries of refused clients over a few seconds.
func (s *Server) retryAfter(w http.ResponseWriter) {
	w.Header().Set("Retry-After", strconv.Itoa(2+rand.IntN(9)))
}

func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}

func hashTokens(tokens []string) [][32]byte {
	var out [][32]byte
	for _, t := range tokens {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, sha256.Sum256([]byte(t)))
		}
	}
	return out
}
