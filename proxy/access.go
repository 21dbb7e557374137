package proxy

import (
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"time"
)

// RejectReasons lists why a request can be refused before it becomes a
// subscription, for the metric lsmux_subscriptions_rejected_total.
var RejectReasons = []string{"auth", "origin", "host", "limit_total", "limit_per_address", "compile_rate", "replays"}

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
// EventSource which cannot set headers, "?access_token=<token>".
func (s *Server) requireAuth(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if !s.tokens.enabled() || s.tokens.accepts(givenToken(r)) {
			next.ServeHTTP(w, r)
			return
		}
		s.obs.Rejected("auth")
		w.Header().Set("WWW-Authenticate", `Bearer realm="lsmux"`)
		writeError(w, http.StatusUnauthorized, "missing or wrong token: send Authorization: Bearer <token> or ?access_token=<token> (LSMUX_AUTH_TOKEN)")
	})
}

// givenToken is the token a request presents, if any.
func givenToken(r *http.Request) string {
	if h := r.Header.Get("Authorization"); len(h) > 7 && strings.EqualFold(h[:7], "bearer ") {
		return strings.TrimSpace(h[7:])
	}
	return r.URL.Query().Get("access_token")
}

// checkHost stops DNS rebinding while auth is off: a web page on
// evil.example whose name the attacker then points at 127.0.0.1 sends
// requests with "Host: evil.example", which the same-origin checks take
// for the page's own origin. So without a token lsmux answers only
// requests addressed to an IP address, localhost, or a name in
// LSMUX_ALLOWED_HOSTS. With a token the token protects it.
func (s *Server) checkHost(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if s.tokens.enabled() || s.hostAllowed(r.Host) {
			next.ServeHTTP(w, r)
			return
		}
		s.obs.Rejected("host")
		writeError(w, http.StatusForbidden, "host "+quote(r.Host)+" is not allowed: without LSMUX_AUTH_TOKEN, lsmux only answers requests addressed to an IP address or localhost "+
			"(this stops DNS-rebinding attacks from web pages); list the name in LSMUX_ALLOWED_HOSTS, or set LSMUX_AUTH_TOKEN")
	})
}

// hostAllowed reports whether a Host header names an IP address,
// localhost, or an allowed name (an entry starting with '.' allows every
// name under it; "*" allows all).
func (s *Server) hostAllowed(host string) bool {
	if host == "" {
		return true // HTTP/1.0 without Host: no browser sends that
	}
	name := host
	if h, _, err := net.SplitHostPort(host); err == nil {
		name = h
	}
	name = strings.ToLower(strings.TrimSuffix(strings.Trim(name, "[]"), "."))
	if net.ParseIP(name) != nil || name == "localhost" || strings.HasSuffix(name, ".localhost") {
		return true
	}
	for _, a := range s.allowedHosts {
		if a == "*" || a == name || (strings.HasPrefix(a, ".") && strings.HasSuffix(name, a)) {
			return true
		}
	}
	return false
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

// crossOriginAllowed reports whether origin is allowed explicitly
// (LSMUX_ALLOWED_ORIGINS), as a cross-site request needs.
func (s *Server) crossOriginAllowed(origin string) bool {
	return origin != "" && (s.allowAll || s.allowed[strings.ToLower(strings.TrimSuffix(origin, "/"))])
}

// checkOrigin guards the API: a browser page from an origin not allowed
// gets 403 (for WebSocket this stops cross-site WebSocket hijacking);
// allowed cross-origin requests get CORS headers. A request the browser
// marks as cross-site (Sec-Fetch-Site) must come with an allowed Origin:
// an <img src> or a link on another site sends none, and would otherwise
// open a subscription (fetch-metadata isolation).
//
// No Access-Control-Allow-Credentials: lsmux reads no cookies, so a page
// of another origin never needs the browser's credentials.
func (s *Server) checkOrigin(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		origin := r.Header.Get("Origin")
		if !s.originAllowed(r) {
			s.obs.Rejected("origin")
			writeError(w, http.StatusForbidden, "origin "+quote(origin)+" is not allowed (LSMUX_ALLOWED_ORIGINS)")
			return
		}
		if r.Header.Get("Sec-Fetch-Site") == "cross-site" && !s.crossOriginAllowed(origin) {
			s.obs.Rejected("origin")
			writeError(w, http.StatusForbidden, "a cross-site request without an allowed Origin (an image, a link or a form on another site) cannot use the API; list the page's origin in LSMUX_ALLOWED_ORIGINS")
			return
		}
		if origin != "" {
			w.Header().Set("Access-Control-Allow-Origin", origin)
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
	addr := s.clientOf(r).limitKey()
	s.connsMu.Lock()
	switch {
	case s.ShuttingDown():
		s.connsMu.Unlock()
		s.retryAfter(w)
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

// remoteIP is the request's peer address, without port (see clientOf for
// the client behind a trusted proxy).
func remoteIP(r *http.Request) string {
	host, _, err := net.SplitHostPort(r.RemoteAddr)
	if err != nil {
		return r.RemoteAddr
	}
	return host
}
