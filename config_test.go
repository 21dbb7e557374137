package main

import (
	"flag"
	"io"
	"os"
	"strings"
	"testing"
	"time"
)

var updateReadme = flag.Bool("update-readme", false, "rewrite README.md's configuration table from the flags")

// TestReadmeConfigTableMatchesTheFlags fails when a flag is undocumented or
// documented wrongly. Fix with: go test -run ReadmeConfig -update-readme .
func TestReadmeConfigTableMatchesTheFlags(t *testing.T) {
	readme, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	const begin, end = "<!-- config table -->\n", "<!-- end config table -->"
	text := string(readme)
	i, j := strings.Index(text, begin), strings.Index(text, end)
	if i < 0 || j < i {
		t.Fatalf("README.md lacks the %q ... %q markers", begin, end)
	}
	want := configTable()
	if text[i+len(begin):j] == want {
		return
	}
	if *updateReadme {
		os.WriteFile("README.md", []byte(text[:i+len(begin)]+want+text[j:]), 0o644)
		return
	}
	t.Fatalf("README.md's configuration table is out of date; run: go test -run ReadmeConfig -update-readme .")
}

func TestEnvironmentFillsFlagsAndFlagsWin(t *testing.T) {
	env := map[string]string{
		"LSMUX_LISTEN":          ":9999",
		"LSMUX_MAX_CONNECTIONS": "3",
		"LSMUX_RECONNECT_DELAY": "90s",
		"LSMUX_BUFFER_BYTES":    "64MiB",
		"LSMUX_SMOOTHING":       "true",
	}
	c, err := loadConfig([]string{"-max-connections", "2"}, func(k string) string { return env[k] }, io.Discard)
	if err != nil {
		t.Fatal(err)
	}
	if c.Listen != ":9999" || c.MaxConnections != 2 || c.ReconnectDelay != 90*time.Second || c.BufferBytes != 64<<20 || !c.Smoothing {
		t.Fatalf("config %+v", c)
	}
}

func TestBadConfigSaysWhichVariable(t *testing.T) {
	for env, want := range map[string]string{
		"LSMUX_MAX_CONNECTIONS=9":          "LSMUX_MAX_CONNECTIONS=9",
		"LSMUX_RECONNECT_DELAY=soon":       "LSMUX_RECONNECT_DELAY=soon",
		"LSMUX_RESET=middle":               "LSMUX_RESET",
		"LSMUX_BUFFER_BYTES=lots":          "LSMUX_BUFFER_BYTES",
		"LSMUX_SLOW_POLICY=drop":           "LSMUX_SLOW_POLICY",
		"LSMUX_RECONNECT_MAX_DELAY=1s":     "LSMUX_RECONNECT_MAX_DELAY",
		"LSMUX_SMOOTHING_BUCKET_SIZE=9000": "LSMUX_SMOOTHING_BUCKET_SIZE",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := loadConfig(nil, func(name string) string {
			if name == k {
				return v
			}
			return ""
		}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to name %s", env, err, want)
		}
	}
}

func TestParseByteSize(t *testing.T) {
	for in, want := range map[string]int64{"1024": 1024, "4MiB": 4 << 20, "1 GiB": 1 << 30, "2KB": 2000, "10B": 10} {
		got, err := parseByteSize(in)
		if err != nil || got != want {
			t.Errorf("%q: %d %v, want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "-1", "1.5MiB", "MiB", "9999999999GiB"} {
		if _, err := parseByteSize(in); err == nil {
			t.Errorf("%q accepted", in)
		}
	}
}

// FuzzConfigEnv: whatever the environment holds, loading the config
// returns a config or an error, and never echoes a secret's value.
func FuzzConfigEnv(f *testing.F) {
	f.Add("LSMUX_BUFFER_BYTES", "12MiB")
	f.Add("LSMUX_RECONNECT_DELAY", "-5s")
	f.Add("LSMUX_MAX_CONNECTIONS", "0x10")
	f.Add("LSMUX_SMOOTHING", "maybe")
	f.Fuzz(func(t *testing.T, key, value string) {
		c, err := loadConfig(nil, func(k string) string {
			if k == key {
				return value
			}
			return ""
		}, io.Discard)
		if err == nil && c == nil {
			t.Fatal("no config and no error")
		}
		if err != nil && len(value) > 8 && (key == "LSMUX_CLIENT_SECRET" || key == "LSMUX_ACCESS_TOKEN" || key == "LSMUX_AUTH_TOKEN") && strings.Contains(err.Error(), value) {
			t.Fatalf("error echoes the secret: %v", err)
		}
	})
}

// TestClusterConfigChecks: cluster settings that cannot work are refused
// at start, naming the variable, and the NATS URL's password is never
// echoed.
func TestClusterConfigChecks(t *testing.T) {
	base := map[string]string{"LSMUX_NATS_URL": "nats://lsmux:hush-77@nats:4222"}
	for env, want := range map[string]string{
		"LSMUX_NATS_DUPLICATE_WINDOW=30s": "LSMUX_NATS_DUPLICATE_WINDOW",
		"LSMUX_NATS_REPLICAS=7":           "LSMUX_NATS_REPLICAS",
		"LSMUX_NATS_CERT=/c.pem":          "LSMUX_NATS_KEY",
		"LSMUX_LEASE_TTL=0s":              "LSMUX_LEASE_TTL",
		"LSMUX_NATS_MAX_AGE=1m":           "LSMUX_NATS_MAX_AGE",
	} {
		k, v, _ := strings.Cut(env, "=")
		_, err := loadConfig(nil, func(name string) string {
			if name == k {
				return v
			}
			return base[name]
		}, io.Discard)
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: error %v, want it to name %s", env, err, want)
		}
		if err != nil && strings.Contains(err.Error(), "hush-77") {
			t.Errorf("%s: the error shows the NATS password: %v", env, err)
		}
	}
	if _, err := loadConfig(nil, func(name string) string { return base[name] }, io.Discard); err != nil {
		t.Errorf("the defaults with a NATS URL: %v", err)
	}
}
