package proxy

import (
	"net"
	"net/http"
	"net/netip"
	"strings"
)

// A client's address decides its per-address subscriber limit, its
// compile rate, what status pages show of it, and whether it counts as
// this machine. Behind a reverse proxy every request comes from the
// proxy; only a proxy listed in LSMUX_TRUSTED_PROXIES is believed about
// the client it forwards for. The client is the last address in
// X-Forwarded-For (or the Forwarded header's for=) that is not itself a
// trusted proxy: each proxy appends the address it saw, and only the
// ones appended by trusted proxies can be believed.

// client is who a request comes from.
type client struct {
	ip   string // the client's address, without port
	addr string // what status shows: the peer's host:port, or the forwarded client's address
	// forwarded says the request carried a forwarding header that was
	// not believed (its peer is not a trusted proxy): it may come through
	// a proxy on this machine for a client elsewhere.
	forwarded bool
}

// clientOf works out the request's client.
func (s *Server) clientOf(r *http.Request) client {
	peer := remoteIP(r)
	fwd := forwardedFor(r)
	if len(fwd) == 0 {
		return client{ip: peer, addr: r.RemoteAddr}
	}
	if !s.trusted(peer) {
		return client{ip: peer, addr: r.RemoteAddr, forwarded: true}
	}
	for i := len(fwd) - 1; i >= 0; i-- {
		if !s.trusted(fwd[i]) || i == 0 {
			return client{ip: fwd[i], addr: fwd[i]}
		}
	}
	return client{ip: peer, addr: r.RemoteAddr} // unreachable: fwd is not empty
}

// local reports whether the client is this machine.
func (c client) local() bool { return !c.forwarded && isLoopback(c.ip) }

func (s *Server) trusted(ip string) bool {
	if len(s.opts.TrustedProxies) == 0 {
		return false
	}
	a, err := netip.ParseAddr(ip)
	if err != nil {
		return false
	}
	a = a.Unmap()
	for _, p := range s.opts.TrustedProxies {
		if p.Contains(a) {
			return true
		}
	}
	return false
}

// forwardedFor lists the addresses a request's X-Forwarded-For headers
// name, first hop first; without any, the for= values of Forwarded
// (RFC 7239). Entries that are not addresses (obfuscated identifiers,
// "unknown") are kept as they are: never trusted, they end the walk.
func forwardedFor(r *http.Request) []string {
	var out []string
	for _, h := range r.Header.Values("X-Forwarded-For") {
		for _, part := range strings.Split(h, ",") {
			if p := strings.TrimSpace(part); p != "" {
				out = append(out, hostOnly(p))
			}
		}
	}
	if len(out) > 0 {
		return out
	}
	for _, h := range r.Header.Values("Forwarded") {
		for _, elem := range strings.Split(h, ",") {
			for _, pair := range strings.Split(elem, ";") {
				k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") && strings.Trim(v, `"`) != "" {
					out = append(out, hostOnly(strings.Trim(v, `"`)))
				}
			}
		}
	}
	return out
}

// hostOnly strips a port and IPv6 brackets: "[2001:db8::1]:443" and
// "192.0.2.1:80" become addresses.
func hostOnly(s string) string {
	if h, _, err := net.SplitHostPort(s); err == nil && h != "" {
		return h
	}
	if a, err := netip.ParseAddr(strings.TrimSuffix(strings.TrimPrefix(s, "["), "]")); err == nil {
		return a.String()
	}
	return s // not an address: kept whole, never trusted
}
