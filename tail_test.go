package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"lsmux/internal/cli"
	"lsmux/internal/client"
)

// tailRun runs lsmux tail in this process, the way main does.
func tailRun(t *testing.T, env cli.Env, args ...string) (stdout, stderr string, code int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var out, errb bytes.Buffer
	code = run(ctx, append([]string{"tail"}, args...), env, &out, &errb)
	return out.String(), errb.String(), code
}

func lines(s string) []string {
	s = strings.TrimSuffix(s, "\n")
	if s == "" {
		return nil
	}
	return strings.Split(s, "\n")
}

type envelope struct {
	Seq uint64          `json:"seq"`
	Hit json.RawMessage `json:"hit"`
}

func envelopes(t *testing.T, out string) []envelope {
	t.Helper()
	var es []envelope
	for _, l := range lines(out) {
		var e envelope
		if err := json.Unmarshal([]byte(l), &e); err != nil {
			t.Fatalf("not an envelope: %.200s: %v", l, err)
		}
		es = append(es, e)
	}
	return es
}

// TestTailFlags covers each of lsmux tail's flags and exit codes against a
// running lsmux: what a pipeline author sees on stdout, stderr and in $?.
func TestTailFlags(t *testing.T) {
	sim := newSim(t, 100)
	r := startApp(t, sim)
	server := strings.TrimSuffix(r.base, "/v1/streams/demo")
	waitFor(t, 20*time.Second, "30 hits sent", func() bool { return len(sim.SentHits("demo")) >= 30 })
	sent := sim.SentHits("demo")

	t.Run("from oldest, count, envelope: the first hits, bytes as sent", func(t *testing.T) {
		out, errs, code := tailRun(t, nil, "--server", server, "--from", "oldest", "--count", "5", "--envelope", "demo")
		es := envelopes(t, out)
		if code != 0 || len(es) != 5 {
			t.Fatalf("exit %d, %d lines (stderr %q); want 0 and 5", code, len(es), errs)
		}
		for i, e := range es {
			if !bytes.Equal(e.Hit, sent[i]) {
				t.Errorf("hit %d: %.80s, want %.80s", i, e.Hit, sent[i])
			}
			if i > 0 && e.Seq != es[i-1].Seq+1 {
				t.Errorf("hit %d numbered %d after %d", i, e.Seq, es[i-1].Seq)
			}
		}
		// --from N starts at hit N; bare lines are the hits themselves.
		out, _, code = tailRun(t, nil, "--server", server, "--from", strconv.FormatUint(es[2].Seq, 10), "--count", "2", "demo")
		if ls := lines(out); code != 0 || len(ls) != 2 || ls[0] != string(sent[2]) || ls[1] != string(sent[3]) {
			t.Errorf("--from %d: exit %d, %q; want hits 3 and 4 of the stream", es[2].Seq, code, ls)
		}
		// --from live: only hits numbered after the newest at the start.
		newest := es[4].Seq
		out, _, code = tailRun(t, nil, "--server", server, "--count", "1", "--envelope", "demo")
		if es := envelopes(t, out); code != 0 || len(es) != 1 || es[0].Seq <= newest+20 {
			t.Errorf("--from live: exit %d, %v; want one hit well after %d", code, es, newest)
		}
	})

	t.Run("filter, fields, sample", func(t *testing.T) {
		out, _, code := tailRun(t, nil, "--server", server, "--from", "oldest", "--count", "3", "--filter", "hit.isFirstHit == true", "demo")
		var want []string
		for _, h := range sim.SentHits("demo") {
			if bytes.Contains(h, []byte(`"isFirstHit":true`)) && len(want) < 3 {
				want = append(want, string(h))
			}
		}
		if got := lines(out); code != 0 || strings.Join(got, "\n") != strings.Join(want, "\n") {
			t.Errorf("--filter: exit %d, %d lines; want the first 3 first hits, byte for byte", code, len(got))
		}
		out, _, code = tailRun(t, nil, "--server", server, "--from", "oldest", "--count", "3", "--fields", "pageName,geoCountry", "demo")
		for _, l := range lines(out) {
			var m map[string]any
			// A projection keeps the hit's id too (docs/api.md).
			if json.Unmarshal([]byte(l), &m) != nil || len(m) != 4 || m["pageName"] == nil || m["geoCountry"] == nil || m["hitIdLow"] == nil {
				t.Errorf("--fields pageName,geoCountry: %s", l)
			}
		}
		if code != 0 || len(lines(out)) != 3 {
			t.Errorf("--fields: exit %d, %d lines", code, len(lines(out)))
		}
		out, _, code = tailRun(t, nil, "--server", server, "--from", "oldest", "--count", "10", "--sample", "0.3", "--envelope", "demo")
		es := envelopes(t, out)
		if code != 0 || len(es) != 10 || es[9].Seq-es[0].Seq < 12 {
			t.Errorf("--sample 0.3: exit %d, %d hits spanning %v; want 10 hits over clearly more than 10 numbers", code, len(es), es)
		}
	})

	t.Run("duration and progress", func(t *testing.T) {
		start := time.Now()
		out, errs, code := tailRun(t, nil, "--server", server, "--duration", "2500ms", "--progress", "on", "demo")
		took := time.Since(start)
		if code != 0 || len(lines(out)) < 20 || took < 2500*time.Millisecond || took > 20*time.Second {
			t.Errorf("--duration 2.5s: exit %d, %d lines after %v", code, len(lines(out)), took)
		}
		if !strings.Contains(errs, " hits, ") || !strings.Contains(errs, "/s") {
			t.Errorf("--progress on: stderr %q, want a rate line", errs)
		}
		_, errs, _ = tailRun(t, nil, "--server", server, "--count", "1", "demo")
		if errs != "" {
			t.Errorf("progress off when stderr is not a terminal, but stderr has %q", errs)
		}
	})

	t.Run("gaps", func(t *testing.T) {
		out, errs, code := tailRun(t, nil, "--server", server, "--from", "1", "--count", "1", "demo")
		if code != 0 || len(lines(out)) != 1 || !strings.Contains(errs, "gap: hits 1..") {
			t.Errorf("a gap without --fail-on-gap: exit %d, %d lines, stderr %q; want 0, 1 line and the gap on stderr", code, len(lines(out)), errs)
		}
		out, errs, code = tailRun(t, nil, "--server", server, "--from", "1", "--fail-on-gap", "demo")
		if code != 3 || out != "" || !strings.Contains(errs, "--fail-on-gap") {
			t.Errorf("--fail-on-gap: exit %d, stdout %q, stderr %q; want 3 and nothing written", code, out, errs)
		}
	})

	t.Run("exit codes", func(t *testing.T) {
		for _, tc := range []struct {
			args []string
			code int
			says string
		}{
			{[]string{"--server", server, "nosuch"}, 1, `no stream named "nosuch"`},
			{[]string{"--server", server, "--filter", "hit.x ==", "demo"}, 1, "filter does not compile"},
			{[]string{"--server", server}, 2, "want one stream name"},
			{[]string{"--server", server, "demo", "other"}, 2, "want one stream name"},
			{[]string{"--server", server, "--from", "yesterday", "demo"}, 2, "want oldest, live or a sequence number"},
			{[]string{"--server", server, "--count", "-1", "demo"}, 2, "want 0 or more"},
			{[]string{"--server", server, "--checkpoint-sync", "-1s", "demo"}, 2, "want 0 or more"},
			{[]string{"--server", server, "--retry-min", "0s", "demo"}, 2, "--retry-min more than 0"},
			{[]string{"--server", server, "--retry-min", "2s", "--retry-max", "1s", "demo"}, 2, "--retry-max at least --retry-min"},
			{[]string{"--server", server, "--duration", "yesterday", "demo"}, 2, "want a duration such as 60s"},
			{[]string{"--server", "127.0.0.1:1", "demo"}, 2, "want an http:// or https:// URL"},
			{[]string{"--server", server, "--progress", "sometimes", "demo"}, 2, "want auto, on or off"},
		} {
			_, errs, code := tailRun(t, nil, tc.args...)
			if code != tc.code || !strings.Contains(errs, tc.says) {
				t.Errorf("tail %q: exit %d, stderr %q; want %d and %q", tc.args, code, errs, tc.code, tc.says)
			}
		}
	})

	t.Run("checkpoint for another stream", func(t *testing.T) {
		cp := filepath.Join(t.TempDir(), "cp")
		os.WriteFile(cp, []byte(`{"stream":"other","seq":5}`), 0o644)
		_, errs, code := tailRun(t, nil, "--server", server, "--checkpoint", cp, "demo")
		if code != 2 || !strings.Contains(errs, `is for stream "other"`) {
			t.Errorf("exit %d, stderr %q", code, errs)
		}
		os.WriteFile(cp, []byte(`not json`), 0o644)
		_, errs, code = tailRun(t, nil, "--server", server, "--checkpoint", cp, "demo")
		if code != 1 || !strings.Contains(errs, "is not an lsmux tail checkpoint") {
			t.Errorf("a damaged checkpoint: exit %d, stderr %q", code, errs)
		}
	})
}

// TestTailToken: the token comes from --token (with a warning: ps shows
// it), --token-file or LSMUX_TOKEN; without one lsmux's 401 ends the run
// with exit 1 and lsmux's explanation.
func TestTailToken(t *testing.T) {
	sim := newSim(t, 100)
	r := startApp(t, sim, "-auth-token", "s3cret-token")
	server := strings.TrimSuffix(r.base, "/v1/streams/demo")
	_, errs, code := tailRun(t, nil, "--server", server, "--count", "1", "demo")
	if code != 1 || !strings.Contains(errs, "401") || !strings.Contains(errs, "token") {
		t.Errorf("without a token: exit %d, stderr %q", code, errs)
	}
	file := filepath.Join(t.TempDir(), "token")
	os.WriteFile(file, []byte("s3cret-token\n"), 0o600)
	// The server's own token file, one token per line: the first is sent.
	serverFile := filepath.Join(t.TempDir(), "tokens")
	os.WriteFile(serverFile, []byte("s3cret-token\nother-token\n"), 0o600)
	for _, tc := range []struct {
		env  cli.Env
		args []string
		warn bool
	}{
		{nil, []string{"--token", "s3cret-token"}, true},
		{nil, []string{"--token-file", file}, false},
		{nil, []string{"--token-file", serverFile}, false},
		{cli.Env{"LSMUX_TOKEN": "s3cret-token"}, nil, false},
	} {
		out, errs, code := tailRun(t, tc.env, append(tc.args, "--server", server, "--count", "1", "demo")...)
		if code != 0 || len(lines(out)) != 1 {
			t.Errorf("%v %q: exit %d, stderr %q", tc.env, tc.args, code, errs)
		}
		if strings.Contains(errs, "s3cret-token") {
			t.Errorf("the token appears on stderr: %q", errs)
		}
		if tc.warn != strings.Contains(errs, "where every user of this machine can read it") {
			t.Errorf("%q: stderr %q; want a warning: %v", tc.args, errs, tc.warn)
		}
	}
}

// TestTailCheckpointSurvivesSIGKILL is the pipeline restart: lsmux tail
// --checkpoint appending to one file is killed with SIGKILL mid-stream
// three times and started again each time; the file then holds every hit
// the simulator sent, from the first, each exactly once, in order, byte
// for byte.
func TestTailCheckpointSurvivesSIGKILL(t *testing.T) {
	if testing.Short() {
		t.Skip("builds the binary and kills it three times")
	}
	bin := lsmuxBinary(t)
	sim := newSim(t, 300)
	r := startApp(t, sim)
	server := strings.TrimSuffix(r.base, "/v1/streams/demo")
	dir := t.TempDir()
	outPath, cp := filepath.Join(dir, "hits.ndjson"), filepath.Join(dir, "checkpoint")
	countLines := func() int {
		b, _ := os.ReadFile(outPath)
		return bytes.Count(b, []byte("\n"))
	}
	for round := range 4 {
		// Rounds 1 and 3 open the output as systemd's StandardOutput=file:
		// does, without O_APPEND: it must still be continued, not
		// written over from its start.
		flags := os.O_WRONLY | os.O_CREATE | os.O_APPEND
		if round%2 == 1 {
			flags = os.O_WRONLY | os.O_CREATE
		}
		out, err := os.OpenFile(outPath, flags, 0o644)
		if err != nil {
			t.Fatal(err)
		}
		var stderr syncBuf
		cmd := exec.Command(bin, "tail", "--server", server, "--from", "oldest", "--checkpoint", cp, "--retry-min", "100ms", "demo")
		cmd.Stdout, cmd.Stderr = out, &stderr
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		before := countLines()
		waitFor(t, 30*time.Second, "the output to grow by 150 hits", func() bool { return countLines() >= before+150 })
		if round < 3 {
			cmd.Process.Signal(syscall.SIGKILL)
			cmd.Wait()
		} else {
			cmd.Process.Signal(syscall.SIGTERM)
			if err := cmd.Wait(); err != nil {
				t.Errorf("tail after SIGTERM: %v (stderr %q); want exit 0", err, stderr.String())
			}
		}
		out.Close()
		if s := stderr.String(); strings.Contains(s, "panic") {
			t.Fatalf("round %d: %s", round, s)
		}
		t.Logf("round %d: %d lines; stderr %q", round, countLines(), stderr.String())
	}
	f, err := os.Open(outPath)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	sent := sim.SentHits("demo")
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		if n >= len(sent) {
			t.Fatalf("line %d: more lines than the simulator sent (%d)", n+1, len(sent))
		}
		if !bytes.Equal(sc.Bytes(), sent[n]) {
			t.Fatalf("line %d is not the simulator's hit %d (a hit lost or repeated across a kill):\n%.120s\nwant\n%.120s", n+1, n+1, sc.Bytes(), sent[n])
		}
		n++
	}
	if n < 600 {
		t.Errorf("%d lines; want at least 600", n)
	}
	t.Logf("%d hits across three SIGKILLs and a SIGTERM, each once, in order", n)
}

// failingWriter takes the first n bytes of what it is given, then fails,
// as a disk that fills up does.
type failingWriter struct {
	bytes.Buffer
	n int
}

func (w *failingWriter) Write(p []byte) (int, error) {
	k := min(len(p), w.n-w.Len())
	w.Buffer.Write(p[:k])
	if k < len(p) {
		return k, errors.New("no space left on device")
	}
	return k, nil
}

// TestTailWritesNothingAfterAFailedWrite: a write that fails part-way
// ends tail with the error, and the final flush does not write the batch
// again behind the part that got there.
func TestTailWritesNothingAfterAFailedWrite(t *testing.T) {
	out := &failingWriter{n: 5}
	tl := &tailer{s: &tailSettings{}, stream: "demo", out: out, stderr: &bytes.Buffer{}}
	tl.handle(client.Event{Kind: client.Hit, Seq: 1, Data: []byte(`{"a":1}`)})
	tl.handle(client.Event{Kind: client.Hit, Seq: 2, Data: []byte(`{"a":2}`)})
	if err := tl.handle(client.Event{Kind: client.Idle}); err == nil {
		t.Fatal("the failed write was not reported")
	}
	out.n = 1 << 20 // the disk has room again
	if err := tl.flush(true); err != nil {
		t.Fatalf("the final flush: %v", err)
	}
	if got := out.String(); got != `{"a":` {
		t.Errorf("output %q; want only the 5 bytes the failed write took", got)
	}
}
