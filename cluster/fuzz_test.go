package cluster

import (
	"lsmux/internal/redact"
	"strings"
	"testing"
)

// FuzzRedactAndNames feeds NATS URLs and stream names from configuration:
// credentials never survive redact.URLs, and JetStream names only ever hold
// the characters JetStream accepts (one subject token).
func FuzzRedactAndNames(f *testing.F) {
	f.Add("nats://user:pass@host:4222,tls://h2", "my-endpoint")
	f.Add("lsmux:p%ss@nats:4222", "a.b c*d>e")
	f.Add(`nats://u:q"u\ote@h`, "")
	f.Fuzz(func(t *testing.T, urls, stream string) {
		got := redact.URLs(urls)
		for _, part := range strings.Split(urls, ",") {
			rest := strings.TrimSpace(part)
			if i := strings.Index(rest, "://"); i >= 0 {
				rest = rest[i+3:]
			}
			if at := strings.LastIndex(rest, "@"); at > 0 && !strings.Contains("REDACTED", rest[:at]) {
				if strings.Contains(got, rest[:at]+"@") {
					t.Fatalf("redact.URLs(%q) = %q keeps %q", urls, got, rest[:at])
				}
			}
		}
		n := NamesFor(stream)
		for _, name := range []string{n.Stream, n.Bucket, strings.TrimSuffix(strings.TrimPrefix(n.Subject, "lsmux."), ".hits")} {
			if name == "" || strings.ContainsFunc(name, func(r rune) bool {
				return !(r == '-' || r == '_' || r >= '0' && r <= '9' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z')
			}) {
				t.Fatalf("NamesFor(%q) = %+v: %q has characters JetStream refuses", stream, n, name)
			}
		}
		if other := NamesFor(stream + "x"); other.Stream == n.Stream {
			t.Fatalf("NamesFor(%q) and NamesFor(%q) collide: %q", stream, stream+"x", n.Stream)
		}
	})
}
