package cli

import (
	"errors"
	"strings"
	"testing"
	"time"
)

func TestParseBytes(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "4MiB": 4 << 20, "1 GiB": 1 << 30, "2KB": 2000, "10B": 10,
		"512M": 512e6, "512MB": 512e6, "512Mi": 512 << 20, "512mib": 512 << 20, "1g": 1e9, "3Ki": 3 << 10, "2T": 2e12} {
		got, err := ParseBytes(in)
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "MiB", "9999999999GiB", "12 parsecs"} {
		_, err := ParseBytes(in)
		if err == nil {
			t.Errorf("%q accepted", in)
		} else if !strings.Contains(err.Error(), "KiB, MiB, GiB") || !strings.Contains(err.Error(), "K, M, G") {
			t.Errorf("%q: the error does not list the units it accepts: %v", in, err)
		}
	}
	for _, n := range []int64{0, 1, 1000, 4 << 10, 512 << 20, 3 << 30} {
		if back, err := ParseBytes(FormatBytes(n)); err != nil || back != n {
			t.Errorf("FormatBytes(%d) = %q reads back as %d, %v", n, FormatBytes(n), back, err)
		}
	}
}

func TestParseFillsFromTheEnvironmentAndHidesSecrets(t *testing.T) {
	var (
		d      time.Duration
		size   int64
		secret string
		n      int
	)
	newSet := func() *FlagSet {
		f := NewFlagSet("lsmux test", "LSMUX_", "A test.")
		f.Duration(&d, "delay", time.Second, "a delay")
		f.Bytes(&size, "size", 1<<20, "a size")
		f.Secret(&secret, "token", "a secret")
		f.Int(&n, "n", 1, "a count")
		return f
	}
	if err := newSet().Parse([]string{"-n", "3"}, Env{"LSMUX_DELAY": "2m", "LSMUX_SIZE": "2MiB", "LSMUX_N": "9", "LSMUX_TOKEN": "t0ken"}, nil); err != nil {
		t.Fatal(err)
	}
	if d != 2*time.Minute || size != 2<<20 || secret != "t0ken" || n != 3 {
		t.Fatalf("delay %v size %d token %q n %d", d, size, secret, n)
	}
	err := newSet().Parse(nil, Env{"LSMUX_DELAY": "90", "LSMUX_N": "x"}, nil)
	if err == nil || !strings.Contains(err.Error(), "LSMUX_DELAY=90: want a duration such as 60s") || !strings.Contains(err.Error(), "LSMUX_N=x: want a whole number") {
		t.Fatalf("errors %v", err)
	}
	f := newSet()
	if err := f.Parse([]string{"-token", "visible-in-ps"}, Env{}, nil); err != nil {
		t.Fatal(err)
	}
	if w := f.Warnings(); len(w) != 1 || !strings.Contains(w[0], "LSMUX_TOKEN") || strings.Contains(w[0], "visible-in-ps") {
		t.Fatalf("warnings %q", w)
	}
	var help strings.Builder
	if err := newSet().Parse([]string{"--help"}, Env{}, &help); !errors.Is(err, ErrHelp) || !strings.Contains(help.String(), "--delay  (LSMUX_DELAY, default 1s)") {
		t.Fatalf("help: %v %q", err, help.String())
	}
	if err := newSet().Parse([]string{"--bogus"}, Env{}, nil); err == nil || !strings.Contains(err.Error(), "run 'lsmux test -h'") {
		t.Fatalf("unknown flag: %v", err)
	}
}

func TestUnknownVarsSuggestTheClosestName(t *testing.T) {
	known := []string{"LSMUX_STREAM_URL", "LSMUX_STREAMS", "LSMUX_LISTEN", "LSMUX_RECONNECT_DELAY"}
	got := UnknownVars(Env{"LSMUX_STREAMURL": "x", "LSMUX_RECONECT_DELAY": "1s", "LSMUX_LISTEN": ":1", "LSMUX_WHATEVER_ELSE_ENTIRELY": "1", "HOME": "/"}, "LSMUX_", known)
	want := []string{
		"LSMUX_RECONECT_DELAY is not a setting lsmux knows; it is ignored (did you mean LSMUX_RECONNECT_DELAY?)",
		"LSMUX_STREAMURL is not a setting lsmux knows; it is ignored (did you mean LSMUX_STREAM_URL?)",
		"LSMUX_WHATEVER_ELSE_ENTIRELY is not a setting lsmux knows; it is ignored",
	}
	if strings.Join(got, "\n") != strings.Join(want, "\n") {
		t.Fatalf("got\n%s\nwant\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}

// TestSecretFlagMessagesNameTheRightFlag: a parse error about a flag whose
// name starts with a secret's is about that flag, not the secret; the
// warning for a secret on the command line suggests a _FILE variable only
// where one exists.
func TestSecretFlagMessagesNameTheRightFlag(t *testing.T) {
	var token, tokenFile, url string
	var n int
	f := NewFlagSet("lsmux serve", "LSMUX_", "test")
	f.Secret(&token, "auth-token", "a token")
	f.String(&tokenFile, "auth-token-file", "", "a file of tokens")
	f.Secret(&url, "nats-url", "NATS")
	f.Int(&n, "auth-tokens-max", 1, "a number")
	err := f.Parse([]string{"--auth-tokens-max", "many"}, Env{}, &strings.Builder{})
	if err == nil || !strings.Contains(err.Error(), "auth-tokens-max") || strings.Contains(err.Error(), "for --auth-token\n") {
		t.Fatalf("error about --auth-tokens-max: %v", err)
	}
	g := NewFlagSet("lsmux serve", "LSMUX_", "test")
	g.Secret(&token, "auth-token", "a token")
	g.String(&tokenFile, "auth-token-file", "", "a file of tokens")
	g.Secret(&url, "nats-url", "NATS")
	if err := g.Parse([]string{"--auth-token", "s3cret", "--nats-url", "nats://u:p@h"}, Env{}, &strings.Builder{}); err != nil {
		t.Fatal(err)
	}
	w := strings.Join(g.Warnings(), "\n")
	if !strings.Contains(w, "set LSMUX_AUTH_TOKEN or LSMUX_AUTH_TOKEN_FILE instead") || strings.Contains(w, "LSMUX_NATS_URL_FILE") || !strings.Contains(w, "set LSMUX_NATS_URL instead") {
		t.Fatalf("warnings: %s", w)
	}
}
