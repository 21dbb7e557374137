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

// clientOf works out the request's client. A trusted proxy writes one of
// the two headers and passes the other through as the client sent it;
// which one is not known here, so when a request carries both and they
// name different clients, neither is believed and the proxy counts as
// the client (a client cannot dodge its per-address limit by making up
// the header its proxy does not write).
func (s *Server) clientOf(r *http.Request) client {
	peer := remoteIP(r)
	xff, fwd := forwardedFor(r)
	if len(xff) == 0 && len(fwd) == 0 {
		return client{ip: peer, addr: r.RemoteAddr}
	}
	if !s.trusted(peer) {
		return client{ip: peer, addr: r.RemoteAddr, forwarded: true}
	}
	a, b := s.forwardedClient(xff), s.forwardedClient(fwd)
	switch {
	case a == "":
		return client{ip: b, addr: b}
	case b == "" || a == b:
		return client{ip: a, addr: a}
	}
	return client{ip: peer, addr: r.RemoteAddr}
}

// forwardedClient is the last address in hops that is not a trusted
// proxy ("" when hops is empty).
func (s *Server) forwardedClient(hops []string) string {
	for i := len(hops) - 1; i >= 0; i-- {
		if !s.trusted(hops[i]) || i == 0 {
			return hops[i]
		}
	}
	return ""
}

// limitKey is what the per-address limits (subscribers, compile rate)
// count a client by: its IPv4 address, or its IPv6 /64. One IPv6 host
// is normally given a whole /64 and can pick a new address in it per
// connection, so counting single IPv6 addresses would let it dodge both.
// Link-local addresses (every link shares fe80::/64) count one by one,
// and an IPv4 client seen through NAT64 (64:ff9b::/96) by its IPv4 address.
func (c client) limitKey() string {
	a, err := netip.ParseAddr(c.ip)
	if err != nil {
		return c.ip // not an address (an obfuscated for=): counted as given
	}
	a = a.Unmap()
	switch {
	case a.Is4() || a.IsLoopback() || a.IsLinkLocalUnicast():
		return a.String()
	case nat64.Contains(a):
		b := a.As16()
		return netip.AddrFrom4([4]byte(b[12:])).String()
	}
	p, _ := a.WithZone("").Prefix(64)
	return p.String()
}

// nat64 is the well-known NAT64 prefix (RFC 6052).
var nat64 = netip.MustParsePrefix("64:ff9b::/96")

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
// name, and the for= values of its Forwarded headers (RFC 7239), first
// hop first. Entries that are not addresses (obfuscated identifiers,
// "unknown") are kept as they are: never trusted, they end the walk.
func forwardedFor(r *http.Request) (xff, fwd []string) {
	for _, h := range r.Header.Values("X-Forwarded-For") {
		for _, part := range strings.Split(h, ",") {
			if p := strings.TrimSpace(part); p != "" {
				xff = append(xff, hostOnly(p))
			}
		}
	}
	for _, h := range r.Header.Values("Forwarded") {
		for _, elem := range strings.Split(h, ",") {
			for _, pair := range strings.Split(elem, ";") {
				k, v, ok := strings.Cut(strings.TrimSpace(pair), "=")
				if ok && strings.EqualFold(k, "for") && strings.Trim(v, `"`) != "" {
					fwd = append(fwd, hostOnly(strings.Trim(v, `"`)))
				}
			}
		}
	}
	return xff, fwd
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
