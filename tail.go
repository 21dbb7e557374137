package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"lsmux/internal/checkpoint"
	"lsmux/internal/cli"
	"lsmux/internal/client"
	"lsmux/internal/tlsfiles"
)

// tailSettings are lsmux tail's flags.
type tailSettings struct {
	server, token, tokenFile, caFile string
	from, filter, fields, sample     string
	count                            int
	duration                         time.Duration
	envelope, failOnGap              bool
	checkpoint                       string
	checkpointSync                   time.Duration
	progress                         string
	retryMin, retryMax               time.Duration
	silenceTimeout                   time.Duration
}

const tailSummary = `Print a stream's hits on stdout, one raw hit per line (NDJSON), for pipes
into jq, a Kafka producer or a file. Usage: lsmux tail [flags] STREAM.
It reconnects by itself and resumes after the last hit it printed; gap
notices and progress go to stderr. Without --server it reads the lsmux on
this machine (LSMUX_LISTEN; https when LSMUX_TLS_CERT is set) with the first
of LSMUX_AUTH_TOKEN or LSMUX_AUTH_TOKEN_FILE.

Exit codes: 0 --count or --duration reached, or stopped by SIGINT/SIGTERM
(the checkpoint saved); 1 failed (lsmux refused the subscription: a wrong
token, an unknown stream, a bad filter; or the output or checkpoint cannot
be written); 2 bad command line or settings; 3 a gap notice with
--fail-on-gap.`

func tailFlags(s *tailSettings) *cli.FlagSet {
	f := cli.NewFlagSet("lsmux tail", "LSMUX_", tailSummary)
	f.String(&s.server, "server", "", "lsmux's URL, such as https://lsmux.internal:8443 (default: the local instance)")
	f.Secret(&s.token, "token", "subscriber token (one of the server's LSMUX_AUTH_TOKEN)")
	f.String(&s.tokenFile, "token-file", "", "file holding the subscriber token (as LSMUX_AUTH_TOKEN_FILE: the first one is sent)")
	f.String(&s.caFile, "ca-file", "", "PEM certificates to trust besides the system's, for an https server with its own CA (default for the local instance: LSMUX_TLS_CERT)")
	f.String(&s.from, "from", "live", "where to start without a checkpoint: oldest, live or a sequence number")
	f.String(&s.filter, "filter", "", "CEL filter, as the API's filter=")
	f.String(&s.fields, "fields", "", "projection, as the API's fields= (a,b.c)")
	f.String(&s.sample, "sample", "", "share of visitors to keep, as the API's sample= (0.1)")
	f.Int(&s.count, "count", 0, "stop after this many hits (0: never)")
	f.Duration(&s.duration, "duration", 0, "stop after this long (0: never)")
	f.Bool(&s.envelope, "envelope", false, `print {"seq":N,"hit":...} per line instead of the bare hit`)
	f.String(&s.checkpoint, "checkpoint", "", "file keeping the last sequence number written; a restart resumes after it")
	f.Duration(&s.checkpointSync, "checkpoint-sync", time.Second, "how often the output and the checkpoint are flushed to disk (a process kill loses nothing without it; a power loss repeats at most this long)")
	f.Bool(&s.failOnGap, "fail-on-gap", false, "exit 3 at a gap notice instead of going on")
	f.String(&s.progress, "progress", "auto", "a one-line rate on stderr: auto (when stderr is a terminal), on or off")
	f.Duration(&s.retryMin, "retry-min", time.Second, "first wait before a reconnect (doubled per failed attempt, jittered)")
	f.Duration(&s.silenceTimeout, "silence-timeout", 45*time.Second, "reconnect when lsmux sends nothing this long, not even its keepalive (every 15 s): a proxy that stopped forwarding; 0: never")
	f.Duration(&s.retryMax, "retry-max", 30*time.Second, "longest wait before a reconnect")
	return f
}

// exitCode is an error with its own exit code.
type exitCode struct {
	code int
	error
}

func (e exitCode) Unwrap() error { return e.error }

// errGap ends a tail run at a gap notice with --fail-on-gap.
var errGap = errors.New("gap")

// errCountReached ends a tail run at --count.
var errCountReached = errors.New("count reached")

// runTail is lsmux tail.
func runTail(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	s := &tailSettings{}
	f := tailFlags(s)
	rest, err := f.ParseArgs(args, env, stdout)
	if err != nil {
		return usageErr(err)
	}
	for _, w := range f.Warnings() {
		fmt.Fprintln(stderr, "lsmux tail: warning: "+w)
	}
	if len(rest) != 1 {
		return usageError{fmt.Errorf("want one stream name, got %d arguments: lsmux tail [flags] STREAM (GET /v1/streams lists them)", len(rest))}
	}
	stream := rest[0]
	o, err := s.options(env, stream)
	if err != nil {
		return usageError{err}
	}
	t := &tailer{s: s, stream: stream, stderr: stderr, out: stdout}
	if file, ok := stdout.(*os.File); ok {
		if fi, err := file.Stat(); err == nil && fi.Mode().IsRegular() {
			t.file = file
		}
	}
	if s.checkpoint != "" {
		if err := t.openCheckpoint(&o); err != nil {
			return err
		}
	}
	if t.file != nil {
		// Hits go after what the file holds, however it was opened: one
		// opened without O_APPEND and not emptied (systemd's
		// StandardOutput=file:) would be written from its start, over an
		// earlier run's hits, and the checkpoint would name the wrong bytes.
		end, err := t.file.Seek(0, io.SeekEnd)
		if err != nil {
			return fmt.Errorf("output: find its end: %w", err)
		}
		t.offset = end
	}
	sub, err := client.New(o)
	if err != nil {
		return usageError{err}
	}
	t.sub = sub
	if s.duration > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.duration)
		defer cancel()
	}
	if s.progressOn(stderr) {
		stop := t.showProgress()
		defer stop()
	}
	err = sub.Run(ctx, t.handle)
	if ferr := t.flush(true); ferr != nil && err == nil {
		err = ferr
	}
	switch {
	case err == nil, errors.Is(err, errCountReached):
		return nil
	case errors.Is(err, errGap):
		return exitCode{3, fmt.Errorf("stopped at a gap notice (--fail-on-gap); the checkpoint, if any, is at the last hit before it")}
	}
	return err
}

// options turns the settings into the client's.
func (s *tailSettings) options(env cli.Env, stream string) (client.Options, error) {
	o := client.Options{Stream: stream, Server: s.server, From: s.from, Filter: s.filter, Fields: s.fields, Sample: s.sample,
		RetryMin: s.retryMin, RetryMax: s.retryMax, StallTimeout: s.silenceTimeout}
	if s.count < 0 || s.duration < 0 || s.checkpointSync < 0 || s.silenceTimeout < 0 || s.retryMin <= 0 || s.retryMax < s.retryMin {
		return o, errors.New("--count, --duration, --checkpoint-sync and --silence-timeout want 0 or more; --retry-min more than 0 and --retry-max at least --retry-min")
	}
	switch s.progress {
	case "auto", "on", "off":
	default:
		return o, fmt.Errorf("--progress=%s: want auto, on or off", s.progress)
	}
	if o.Server == "" {
		listen := env.Get("LSMUX_LISTEN")
		if listen == "" {
			listen = ":8080"
		}
		o.Server = "http://" + reachable(listen)
		// The local instance over TLS: its certificate names the
		// service, not 127.0.0.1, so accept exactly that certificate.
		if cert := env.Get("LSMUX_TLS_CERT"); cert != "" && s.caFile == "" {
			client, err := tlsfiles.PinnedHTTP(cert)
			if err != nil {
				return o, err
			}
			o.Server, o.HTTP = "https://"+reachable(listen), client
		}
	}
	tok := s.token
	if tok == "" && s.tokenFile != "" {
		t, err := firstToken("", s.tokenFile) // the server's format: the first token of several
		if err != nil {
			return o, fmt.Errorf("--token-file: %w", err)
		}
		tok = t
	}
	if tok == "" && s.server == "" {
		t, err := firstToken(env.Get("LSMUX_AUTH_TOKEN"), env.Get("LSMUX_AUTH_TOKEN_FILE"))
		if err != nil {
			return o, err
		}
		tok = t
	}
	o.Token = tok
	if caFile := s.caFile; caFile != "" {
		pem, err := os.ReadFile(caFile)
		if err != nil {
			return o, fmt.Errorf("--ca-file: %w", err)
		}
		pool, err := x509.SystemCertPool()
		if err != nil {
			pool = x509.NewCertPool()
		}
		if !pool.AppendCertsFromPEM(pem) {
			return o, fmt.Errorf("--ca-file %s: no PEM certificate in it", caFile)
		}
		tr := http.DefaultTransport.(*http.Transport).Clone() // HTTP/2 over TLS, as the default
		tr.TLSClientConfig = &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS12}
		o.HTTP = &http.Client{Transport: tr}
	}
	return o, nil
}

// progressOn reports whether the progress line is shown.
func (s *tailSettings) progressOn(stderr io.Writer) bool {
	switch s.progress {
	case "on":
		return true
	case "off":
		return false
	}
	f, ok := stderr.(*os.File)
	if !ok {
		return false
	}
	_, err := unix.IoctlGetTermios(int(f.Fd()), unix.TCGETS)
	return err == nil
}

// tailer writes what a subscription hands over, in batches, and keeps the
// checkpoint in step with the output. It runs on the subscription's
// goroutine; the progress line reads only its atomics.
type tailer struct {
	s      *tailSettings
	stream string
	sub    *client.Subscription
	out    io.Writer
	file   *os.File // the output when it is a regular file
	offset int64    // the output file's size as written
	stderr io.Writer

	cp      *checkpoint.File
	batch   []byte
	lastSeq uint64 // the last hit in batch
	written uint64 // the last hit written to the output
	failed  bool   // a write to the output failed: nothing more is written

	hits      atomic.Int64
	gaps      atomic.Int64
	connected bool

	errMu    sync.Mutex // stderr's writers: the subscription and the progress line
	progress bool       // a progress line is on screen
}

// maxBatch is the most output a tailer holds before it writes.
const maxBatch = 256 << 10

func (t *tailer) openCheckpoint(o *client.Options) error {
	cp, st, found, err := checkpoint.Open(t.s.checkpoint, t.s.checkpointSync)
	if err != nil {
		return err
	}
	t.cp = cp
	if !found {
		return nil
	}
	if st.Stream != t.stream {
		return usageError{fmt.Errorf("checkpoint %s is for stream %q, not %q: give another --checkpoint", t.s.checkpoint, st.Stream, t.stream)}
	}
	after, note, err := checkpoint.Resume(st, t.file)
	if err != nil {
		return err
	}
	if note != "" {
		t.say("checkpoint: " + note)
	}
	o.After, t.written = after, after
	return nil
}

func (t *tailer) handle(ev client.Event) error {
	switch ev.Kind {
	case client.Hit:
		if t.s.envelope {
			t.batch = append(t.batch, `{"seq":`...)
			t.batch = strconv.AppendUint(t.batch, ev.Seq, 10)
			t.batch = append(t.batch, `,"hit":`...)
			t.batch = append(t.batch, ev.Data...)
			t.batch = append(t.batch, "}\n"...)
		} else {
			t.batch = append(append(t.batch, ev.Data...), '\n')
		}
		t.lastSeq = ev.Seq
		n := t.hits.Add(1)
		if t.s.count > 0 && n >= int64(t.s.count) {
			if err := t.flush(false); err != nil {
				return err
			}
			return errCountReached
		}
		if len(t.batch) >= maxBatch {
			return t.flush(false)
		}
	case client.Idle:
		return t.flush(false)
	case client.Gap:
		t.gaps.Add(1)
		if err := t.flush(false); err != nil {
			return err
		}
		t.say(fmt.Sprintf("gap: hits %d..%d are lost to this consumer (lsmux no longer holds them)", ev.From, ev.To))
		if t.s.failOnGap {
			return errGap
		}
	case client.Connected:
		if t.connected {
			t.say("reconnected")
		}
		t.connected = true
	case client.Disconnected:
		if err := t.flush(false); err != nil {
			return err
		}
		t.say(fmt.Sprintf("disconnected: %v; reconnecting in %v", ev.Err, ev.Wait.Round(10*time.Millisecond)))
	}
	return nil
}

// flush writes the batch and records it in the checkpoint; at the
// checkpoint's sync interval, and when final, the output goes to disk
// first, then the checkpoint. After a failed write nothing more is
// written: the checkpoint's pending batch tells the next start what to
// look at, and the batch is not written a second time behind a part of
// it.
func (t *tailer) flush(final bool) error {
	if t.failed {
		return nil
	}
	wrote := false
	if len(t.batch) > 0 {
		st := checkpoint.State{Stream: t.stream, Seq: t.written, Offset: t.offset}
		if t.cp != nil && t.file != nil {
			st.Pending = checkpoint.NewBatch(t.lastSeq, t.offset, t.batch)
			if err := t.cp.Save(st, false); err != nil {
				return exitCode{1, err}
			}
		}
		if _, err := t.out.Write(t.batch); err != nil {
			t.failed = true
			return exitCode{1, fmt.Errorf("write the output: %w", err)}
		}
		t.offset += int64(len(t.batch))
		t.written, t.batch = t.lastSeq, t.batch[:0]
		wrote = true
	}
	if t.cp == nil {
		return nil
	}
	durable := final || t.cp.SyncDue()
	if !wrote && !(durable && t.cp.Unsynced()) {
		return nil
	}
	if durable && t.file != nil {
		if err := t.file.Sync(); err != nil && !errors.Is(err, os.ErrInvalid) {
			return exitCode{1, fmt.Errorf("sync the output: %w", err)}
		}
	}
	if err := t.cp.Save(checkpoint.State{Stream: t.stream, Seq: t.written, Offset: t.offset}, durable); err != nil {
		return exitCode{1, err}
	}
	return nil
}

// say writes a line to stderr, after the progress line if one is shown.
func (t *tailer) say(msg string) {
	t.errMu.Lock()
	defer t.errMu.Unlock()
	prefix := ""
	if t.progress {
		prefix, t.progress = "\n", false
	}
	fmt.Fprintf(t.stderr, "%slsmux tail: %s\n", prefix, msg)
}

// showProgress rewrites one line on stderr every second: hits, the rate
// over the last second, gaps.
func (t *tailer) showProgress() (stop func()) {
	done := make(chan struct{})
	finished := make(chan struct{})
	go func() {
		defer close(finished)
		tick := time.NewTicker(time.Second)
		defer tick.Stop()
		var prev int64
		for {
			select {
			case <-done:
				t.errMu.Lock()
				if t.progress {
					fmt.Fprintln(t.stderr)
				}
				t.errMu.Unlock()
				return
			case <-tick.C:
				n := t.hits.Load()
				var line bytes.Buffer
				fmt.Fprintf(&line, "\r%d hits, %d/s", n, n-prev)
				if g := t.gaps.Load(); g > 0 {
					fmt.Fprintf(&line, ", %d gaps", g)
				}
				line.WriteString("\x1b[K")
				t.errMu.Lock()
				t.stderr.Write(line.Bytes())
				t.progress = true
				t.errMu.Unlock()
				prev = n
			}
		}
	}()
	return func() { close(done); <-finished }
}
