package main

import (
	"bytes"
	"context"
	"io"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"lsmux/internal/cli"
)

// runBinary runs the built lsmux with args and exactly the environment
// env (plus PATH and HOME), and returns its exit code, stdout and stderr.
func runBinary(t *testing.T, env []string, args ...string) (int, string, string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, lsmuxBinary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + os.Getenv("HOME")}, env...)
	var out, errOut bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errOut
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("lsmux %v: %v", args, err)
	}
	return code, out.String(), errOut.String()
}

// TestHelpListsCommandsAndSettings: --help, -h and help show the commands;
// a command's -h shows what it does and each setting with its variable.
func TestHelpListsCommandsAndSettings(t *testing.T) {
	for _, args := range [][]string{{"--help"}, {"-h"}, {"help"}} {
		code, out, _ := runBinary(t, nil, args...)
		for _, want := range []string{"lsmux demo", "lsmux serve", "lsmux simulate", "lsmux healthcheck", "lsmux version"} {
			if code != 0 || !strings.Contains(out, want) {
				t.Fatalf("lsmux %v: exit %d, output lacks %q:\n%s", args, code, want, out)
			}
		}
	}
	for cmd, want := range map[string]string{"serve": "hold one Live Stream connection", "demo": "built-in Live Stream simulator", "simulate": "LSMUX_SIMULATE_LISTEN", "healthcheck": "LSMUX_AUTH_TOKEN"} {
		code, out, _ := runBinary(t, nil, cmd, "--help")
		if code != 0 || !strings.Contains(out, "Usage: lsmux "+cmd) || !strings.Contains(out, want) || !strings.Contains(out, "'lsmux help'") {
			t.Errorf("lsmux %s --help: exit %d:\n%s", cmd, code, out)
		}
	}
	if code, out, _ := runBinary(t, nil, "serve", "-h"); code != 0 || !strings.Contains(out, "--reconnect-delay  (LSMUX_RECONNECT_DELAY, default 1m0s)") {
		t.Errorf("serve -h: %d\n%s", code, out)
	}
	for _, args := range [][]string{{"--version"}, {"version"}, {"-version"}} {
		if code, out, _ := runBinary(t, nil, args...); code != 0 || !strings.HasPrefix(out, "lsmux ") {
			t.Errorf("lsmux %v: %d %q", args, code, out)
		}
	}
}

// TestSettingErrorsSayTheFormAndNothingElse: a bad setting is one short
// error naming the variable and the expected form (no page of usage), with
// exit code 2.
func TestSettingErrorsSayTheFormAndNothingElse(t *testing.T) {
	for env, want := range map[string]string{
		"LSMUX_RECONNECT_DELAY=60": "LSMUX_RECONNECT_DELAY=60: want a duration such as 60s",
		"LSMUX_LISTEN=8080":        "LSMUX_LISTEN=8080: want host:port, such as :8080",
		"LSMUX_BUFFER_BYTES=512X":  "KiB, MiB, GiB",
	} {
		code, _, errOut := runBinary(t, []string{env, "LSMUX_STREAM_URL=https://livestream.adobe.net/api/1/stream/x"}, "serve")
		lines := strings.Count(strings.TrimSpace(errOut), "\n") + 1
		if code != 2 || !strings.Contains(errOut, want) || lines > 3 {
			t.Errorf("%s: exit %d, %d lines:\n%s", env, code, lines, errOut)
		}
	}
	code, _, errOut := runBinary(t, nil, "serve", "--reconnect-delay", "60")
	if code != 2 || !strings.Contains(errOut, "want a duration such as 60s") || strings.Count(errOut, "\n") > 2 {
		t.Errorf("--reconnect-delay 60: %d\n%s", code, errOut)
	}
	code, _, errOut = runBinary(t, []string{"LSMUX_STREAM_URL=https://livestream.adobe.net/api/1/stream/x", "LSMUX_CLIENT_ID=abc"}, "serve")
	if code != 2 || !strings.Contains(errOut, "LSMUX_CLIENT_SECRET is not") {
		t.Errorf("only a client id: %d\n%s", code, errOut)
	}
	// 512M is a size like 512MB and 512Mi; only the missing stream stops it.
	code, _, errOut = runBinary(t, []string{"LSMUX_BUFFER_BYTES=512M"}, "serve")
	if code != 2 || !strings.Contains(errOut, "no stream") || strings.Contains(errOut, "BUFFER_BYTES") {
		t.Errorf("LSMUX_BUFFER_BYTES=512M: %d\n%s", code, errOut)
	}
	// A variable lsmux does not know is named, with the closest known one.
	_, _, errOut = runBinary(t, []string{"LSMUX_STREAMURL=https://livestream.adobe.net/api/1/stream/x"}, "serve")
	if !strings.Contains(errOut, "LSMUX_STREAMURL is not a setting lsmux knows") || !strings.Contains(errOut, "did you mean LSMUX_STREAM_URL?") {
		t.Errorf("a typo in a variable's name:\n%s", errOut)
	}
}

// TestServeWarnsAboutAShortReconnectDelayAndASecretFlag: warnings that do
// not stop the start are logged at start.
func TestServeWarnsAboutAShortReconnectDelayAndASecretFlag(t *testing.T) {
	text := startAndStop(t, []string{"LSMUX_LISTEN=127.0.0.1:0", "LSMUX_LOG_FORMAT=text", "LSMUX_STREAM_URL=https://livestream.invalid/api/1/stream/x",
		"LSMUX_RECONNECT_DELAY=5s", "LSMUX_SHUTDOWN_TIMEOUT=1s"}, "lsmux serving", "serve", "--access-token", "tok-in-ps-123")
	if !strings.Contains(text, "LSMUX_RECONNECT_DELAY=5s is short for livestream.invalid") || !strings.Contains(text, "about 60s") {
		t.Errorf("no warning about the reconnect delay:\n%s", text)
	}
	if !strings.Contains(text, "--access-token was given on the command line") || strings.Contains(text, "tok-in-ps-123") {
		t.Errorf("the secret flag warning:\n%s", text)
	}
}

// TestDemoListensOnLoopbackAndNeverPrintsTheToken: the demo binds
// 127.0.0.1 unless told otherwise, and with auth on its banner says how to
// pass the token without printing it.
func TestDemoListensOnLoopbackAndNeverPrintsTheToken(t *testing.T) {
	args := demoArgs(nil, cli.Env{})
	c, err := loadConfig("lsmux demo", demoSummary, args, cli.Env{}, io.Discard)
	if err != nil || c.Listen != "127.0.0.1:8080" || c.ReconnectDelay != 15*time.Second {
		t.Fatalf("demo defaults: %+v %v", c, err)
	}
	if c, _ := loadConfig("lsmux demo", demoSummary, demoArgs(nil, cli.Env{"LSMUX_LISTEN": ":9999"}), cli.Env{"LSMUX_LISTEN": ":9999"}, io.Discard); c.Listen != ":9999" {
		t.Fatalf("LSMUX_LISTEN does not win over the demo's default: %s", c.Listen)
	}
	var out strings.Builder
	printDemoBanner(&out, "http://127.0.0.1:9", "http://127.0.0.1:8080", true, "/tmp/lsmux-demo-1")
	banner := out.String()
	if !strings.Contains(banner, "/?access_token=<your LSMUX_AUTH_TOKEN>") || !strings.Contains(banner, `-H "Authorization: Bearer $LSMUX_AUTH_TOKEN"`) {
		t.Fatalf("banner with auth:\n%s", banner)
	}
	// The real demo, with a token: it never prints it.
	got := startAndStop(t, []string{"LSMUX_LISTEN=127.0.0.1:0", "LSMUX_AUTH_TOKEN=demo-secret-42", "LSMUX_LOG_LEVEL=error", "LSMUX_SHUTDOWN_TIMEOUT=1s"}, "Ctrl-C", "demo")
	if !strings.Contains(got, "http://127.0.0.1:") || strings.Contains(got, "demo-secret-42") || !strings.Contains(got, "access_token=<") {
		t.Fatalf("demo banner:\n%s", got)
	}
}

// startAndStop runs the binary until its output (stdout and stderr)
// shows marker, then stops it with SIGTERM and returns all it printed.
func startAndStop(t *testing.T, env []string, marker string, args ...string) string {
	t.Helper()
	cmd := exec.Command(lsmuxBinary(t), args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH")}, env...)
	out := &syncBuf{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	waitFor(t, 20*time.Second, "lsmux to print "+marker, func() bool { return strings.Contains(out.String(), marker) })
	cmd.Process.Signal(syscall.SIGTERM)
	cmd.Wait()
	return out.String()
}
