// Package redact removes credentials from URLs and messages before lsmux
// logs them or shows them in status: the user name and password of a URL,
// and the values of query parameters that carry secrets (access_token,
// client_secret, sig, ...). It works on the text, not on a parsed URL: a
// URL that url.Parse rejects (a stray '%' in a password) or one without a
// scheme ("user:pass@host:4222", as nats.go accepts) must be redacted too,
// and an error message may quote a URL in pieces.
package redact

import (
	"net/url"
	"regexp"
	"strconv"
	"strings"
)

// Mask replaces every secret.
const Mask = "REDACTED"

// secretParams are query parameter names (lower case, without '-' and '_')
// whose values are credentials. A name containing one of them counts too
// (x-amz-signature, client_secret, api-key).
var secretParams = []string{"token", "secret", "password", "passwd", "pwd", "sig", "signature", "key", "auth", "credential", "code", "session"}

func secretParam(name string) bool {
	if n, err := url.QueryUnescape(name); err == nil {
		name = n
	}
	name = strings.ToLower(strings.NewReplacer("-", "", "_", "", ".", "").Replace(name))
	for _, p := range secretParams {
		if strings.Contains(name, p) {
			return true
		}
	}
	return false
}

// URL returns raw with its user information and secret query values
// replaced by Mask. Anything that is not a URL comes back unchanged but for
// those two parts.
func URL(raw string) string {
	scheme, rest := splitScheme(raw)
	if info, after, ok := userInfo(scheme, rest); ok && info != "" {
		rest = Mask + after
	}
	authEnd := strings.IndexAny(rest, "/?#")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	return scheme + rest[:authEnd] + query(rest[authEnd:])
}

// splitScheme splits "scheme://" off raw ("" when there is none).
func splitScheme(raw string) (scheme, rest string) {
	if i := strings.Index(raw, "://"); i >= 0 {
		return raw[:i+3], raw[i+3:]
	}
	return "", raw
}

// userInfo finds the user information of a URL (after its scheme):
// everything before the '@' that ends it, and the rest from that '@' on.
// People paste passwords with '/', '?' or '#' unescaped, so the '@' may
// come after them: in a NATS URL (nats://, tls://, ws://, or no scheme),
// which has no path, the last '@' ends it; in an HTTP URL, an '@' after a
// '/' ends it only when what comes before that '/' is user:password, not
// host:port (an '@' in a path stays).
func userInfo(scheme, full string) (info, after string, ok bool) {
	rest := full
	if sp := strings.IndexAny(rest, " \t\r\n"); sp >= 0 {
		rest = rest[:sp]
	}
	authEnd := strings.IndexAny(rest, "/?#")
	if authEnd < 0 {
		authEnd = len(rest)
	}
	if at := strings.LastIndex(rest[:authEnd], "@"); at >= 0 {
		return rest[:at], full[at:], true
	}
	at := strings.LastIndex(rest, "@")
	if at < 0 {
		return "", "", false
	}
	switch strings.ToLower(scheme) {
	case "http://", "https://":
		colon := strings.IndexByte(rest[:authEnd], ':')
		if colon < 0 || allDigits(rest[colon+1:authEnd]) {
			return "", "", false // host or host:port, then a path with an '@'
		}
		if next := strings.IndexAny(rest[:at], "?#"); next >= 0 && next < authEnd {
			return "", "", false
		}
	}
	return rest[:at], full[at:], true
}

func allDigits(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return false
		}
	}
	return true
}

// URLs redacts a comma-separated list of URLs (NATS server lists).
func URLs(list string) string {
	parts := strings.Split(list, ",")
	for i, p := range parts {
		parts[i] = URL(strings.TrimSpace(p))
	}
	return strings.Join(parts, ",")
}

// query redacts the secret parameters of path?query#fragment.
func query(tail string) string {
	q := strings.IndexByte(tail, '?')
	if q < 0 {
		return tail
	}
	path, rest := tail[:q+1], tail[q+1:]
	frag := ""
	if h := strings.IndexByte(rest, '#'); h >= 0 {
		rest, frag = rest[:h], rest[h:]
	}
	pairs := strings.Split(rest, "&")
	for i, kv := range pairs {
		if k, _, ok := strings.Cut(kv, "="); ok && secretParam(k) {
			pairs[i] = k + "=" + Mask
		}
	}
	return path + strings.Join(pairs, "&") + frag
}

// secrets lists the credential strings inside a URL: its user information
// (whole, and user and password apart) and its secret query values.
func secrets(raw string) []string {
	var out []string
	scheme, rest := splitScheme(raw)
	if info, _, ok := userInfo(scheme, rest); ok && info != "" {
		out = append(out, info)
		if user, pass, ok := strings.Cut(info, ":"); ok {
			out = append(out, user, pass)
		}
	}
	if q := strings.IndexByte(rest, '?'); q >= 0 {
		vals := rest[q+1:]
		if h := strings.IndexByte(vals, '#'); h >= 0 {
			vals = vals[:h]
		}
		for _, kv := range strings.Split(vals, "&") {
			if k, v, ok := strings.Cut(kv, "="); ok && secretParam(k) && v != "" {
				out = append(out, v)
			}
		}
	}
	return out
}

// In returns msg with the credentials of the given URLs removed wherever
// they appear (as written, unescaped, or quoted as Go's %q would), and any
// other URL-like user information or secret query value masked too.
func In(msg string, urls ...string) string {
	for _, u := range urls {
		for _, part := range strings.Split(u, ",") {
			for _, sec := range secrets(strings.TrimSpace(part)) {
				if len(sec) < 3 {
					continue // too short to replace safely ("a" would mangle the text); the patterns below still apply
				}
				variants := []string{sec}
				if un, err := url.QueryUnescape(sec); err == nil && un != sec {
					variants = append(variants, un)
				}
				q := strconv.Quote(sec)
				variants = append(variants, q[1:len(q)-1])
				for _, v := range variants {
					msg = strings.ReplaceAll(msg, v, Mask)
				}
			}
		}
	}
	msg = userinfo.ReplaceAllString(msg, "${1}"+Mask+"@")
	msg = natsUserinfo.ReplaceAllString(msg, "${1}"+Mask+"@")
	msg = httpUserinfo.ReplaceAllStringFunc(msg, func(m string) string {
		scheme, rest := splitScheme(m)
		if info, _, ok := userInfo(scheme, rest); ok && info != "" && info != Mask {
			return scheme + Mask + "@"
		}
		return m
	})
	return secretValue.ReplaceAllStringFunc(msg, func(m string) string {
		k, _, _ := strings.Cut(m[1:], "=")
		if !secretParam(k) {
			return m
		}
		return m[:1] + k + "=" + Mask
	})
}

// userinfo matches credentials in any URL-like text, whatever a library
// did to the characters around them.
var userinfo = regexp.MustCompile(`(://)[^\s/@"'?#]*@`)

// natsUserinfo matches credentials in NATS URLs, whose passwords may hold
// '/', '?' or '#' (a NATS URL has no path).
var natsUserinfo = regexp.MustCompile(`((?:nats|tls|ws|wss)://)[^\s@"']*@`)

// httpUserinfo finds candidates for user:password with a '/', '?' or '#'
// in an HTTP URL; userInfo decides.
var httpUserinfo = regexp.MustCompile(`(?i)https?://[^\s@"']*@`)

// secretValue matches a name=value pair of a query string (after '?' or
// '&', so "status code=409" in prose is left alone).
var secretValue = regexp.MustCompile(`[?&][A-Za-z0-9_.\-%]+=[^&\s"'#]+`)

// Err returns err with the credentials of the given URLs (and any other
// URL-like ones) removed from its message; errors.Is and errors.As still
// see the original.
func Err(err error, urls ...string) error {
	if err == nil {
		return nil
	}
	msg := In(err.Error(), urls...)
	if msg == err.Error() {
		return err
	}
	return &redacted{msg: msg, err: err}
}

type redacted struct {
	msg string
	err error
}

func (r *redacted) Error() string { return r.msg }
func (r *redacted) Unwrap() error { return r.err }
