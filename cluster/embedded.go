package cluster

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/sirupsen/logrus"
)

// A single lsmux with LSMUX_DATA_DIR keeps durable history in its own
// JetStream (DESIGN.md §7): a nats-server inside the process, with no
// network listener and its file store in the data dir, driven by the same
// code as cluster mode, without a lease. The data dir holds:
//
//	lsmux-data       marker: this directory is lsmux's (format, creation)
//	lsmux.lock       held (flock) while an lsmux uses the directory
//	jetstream/       the JetStream file store
//	upstream-*.state one per stream: when its upstream was last connected
//	                 (state.go)

// dataFormat is the data dir's layout version (the marker's "format").
const dataFormat = 1

const (
	markerFile = "lsmux-data"
	lockFile   = "lsmux.lock"
	storeDir   = "jetstream"
)

// marker is the content of the marker file.
type marker struct {
	Format  int       `json:"format"`
	Created time.Time `json:"created"`
	Note    string    `json:"note"`
}

// EmbeddedOptions configure a single lsmux's store.
type EmbeddedOptions struct {
	// Dir is LSMUX_DATA_DIR.
	Dir string
	// MaxStore bounds what the store may hold on disk in all; the
	// streams' own bounds (Options.MaxBytes) are what applies day to day.
	MaxStore int64
	// SyncInterval is how often the store is flushed to disk (fsync;
	// default 10 s): what a power loss, not a process crash, can take.
	SyncInterval time.Duration
	Logger       logrus.FieldLogger
}

// Embedded is the in-process JetStream of a single lsmux.
type Embedded struct {
	dir  string
	srv  *server.Server
	cfg  server.JetStreamConfig
	lock *os.File
	mu   sync.Mutex // serialises Recover
}

// OpenEmbedded checks the data dir, takes it for this process, and starts
// the in-process JetStream on it. Every failure names the path and what to
// do: the process cannot run without the history it was told to keep.
func OpenEmbedded(o EmbeddedOptions) (*Embedded, error) {
	if o.SyncInterval <= 0 {
		o.SyncInterval = 10 * time.Second
	}
	if o.MaxStore <= 0 {
		o.MaxStore = 1 << 40
	}
	dir, err := filepath.Abs(o.Dir)
	if err != nil {
		return nil, fmt.Errorf("LSMUX_DATA_DIR=%s: %w", o.Dir, err)
	}
	if err := prepareDir(dir); err != nil {
		return nil, err
	}
	lock, err := lockDir(dir)
	if err != nil {
		return nil, err
	}
	if err := checkMarker(dir); err != nil {
		lock.Close()
		return nil, err
	}
	e := &Embedded{dir: dir, lock: lock}
	e.cfg = server.JetStreamConfig{StoreDir: filepath.Join(dir, storeDir), MaxStore: o.MaxStore, MaxMemory: 64 << 20, SyncInterval: o.SyncInterval}
	opts := &server.Options{
		ServerName: "lsmux", DontListen: true, NoSigs: true,
		JetStream: true, StoreDir: e.cfg.StoreDir, JetStreamMaxStore: e.cfg.MaxStore, JetStreamMaxMemory: e.cfg.MaxMemory,
		SyncInterval: o.SyncInterval,
	}
	srv, err := server.NewServer(opts)
	if err != nil {
		lock.Close()
		return nil, fmt.Errorf("LSMUX_DATA_DIR=%s: cannot set up the embedded JetStream: %w", dir, err)
	}
	log := o.Logger
	if log == nil {
		log = logrus.New()
	}
	srv.SetLoggerV2(&natsLogger{log: log.WithField("component", "jetstream"), logs: logLimiter{every: 10 * time.Second}}, false, false, false)
	srv.Start()
	if !srv.ReadyForConnections(time.Minute) || !srv.JetStreamEnabled() {
		srv.Shutdown()
		lock.Close()
		return nil, fmt.Errorf("LSMUX_DATA_DIR=%s: the embedded JetStream did not start within a minute (see the log above; a damaged store can be moved aside, losing its history)", dir)
	}
	e.srv = srv
	return e, nil
}

// prepareDir creates the data dir if needed and proves it writable.
func prepareDir(dir string) error {
	if st, err := os.Stat(dir); err == nil && !st.IsDir() {
		return fmt.Errorf("LSMUX_DATA_DIR=%s is a file, not a directory: point it at a directory", dir)
	}
	if err := os.MkdirAll(dir, 0o750); err != nil {
		return fmt.Errorf("LSMUX_DATA_DIR=%s: cannot create it: %w (create it, writable by uid %d, or point LSMUX_DATA_DIR elsewhere)", dir, err, os.Getuid())
	}
	probe, err := os.CreateTemp(dir, ".write-test-*")
	if err == nil {
		_, err = probe.Write([]byte("lsmux"))
		if err == nil {
			err = probe.Sync()
		}
		probe.Close()
		os.Remove(probe.Name())
	}
	if err != nil {
		return fmt.Errorf("LSMUX_DATA_DIR=%s is not writable: %w (make it writable by uid %d: chown or an fsGroup in Kubernetes; or free space)", dir, err, os.Getuid())
	}
	return nil
}

// lockDir takes the data dir for this process: two lsmux on one store
// would corrupt it.
func lockDir(dir string) (*os.File, error) {
	path := filepath.Join(dir, lockFile)
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o640)
	if err != nil {
		return nil, fmt.Errorf("LSMUX_DATA_DIR=%s: cannot open %s: %w", dir, lockFile, err)
	}
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		holder, _ := os.ReadFile(path)
		f.Close()
		who := strings.TrimSpace(string(holder))
		if who == "" {
			who = "another process"
		}
		return nil, fmt.Errorf("LSMUX_DATA_DIR=%s is in use by %s: give each lsmux its own data dir (two on one store would damage it)", dir, who)
	}
	f.Truncate(0)
	f.WriteAt([]byte("lsmux pid "+strconv.Itoa(os.Getpid())+"\n"), 0)
	return f, nil
}

// checkMarker accepts a data dir lsmux made (or an empty one, which it
// marks) and refuses anything else: pointing lsmux at the wrong
// directory must not mix its store into someone's files.
func checkMarker(dir string) error {
	path := filepath.Join(dir, markerFile)
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		entries, err := os.ReadDir(dir)
		if err != nil {
			return fmt.Errorf("LSMUX_DATA_DIR=%s: %w", dir, err)
		}
		var foreign []string
		for _, e := range entries {
			if n := e.Name(); n != lockFile && n != "lost+found" && !strings.HasPrefix(n, ".write-test-") {
				foreign = append(foreign, n)
			}
		}
		if len(foreign) > 0 {
			slices.Sort(foreign)
			if len(foreign) > 5 {
				foreign = append(foreign[:5], "...")
			}
			return fmt.Errorf("LSMUX_DATA_DIR=%s holds files lsmux did not make (%s) and no %s marker: point LSMUX_DATA_DIR at an empty directory, or one an lsmux made", dir, strings.Join(foreign, ", "), markerFile)
		}
		m, _ := json.Marshal(marker{Format: dataFormat, Created: time.Now().UTC(), Note: "lsmux durable history; see docs/operations.md"})
		if err := writeFileSync(path, append(m, '\n')); err != nil {
			return fmt.Errorf("LSMUX_DATA_DIR=%s: cannot write %s: %w", dir, markerFile, err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("LSMUX_DATA_DIR=%s: cannot read %s: %w", dir, markerFile, err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil || m.Format < 1 {
		return fmt.Errorf("LSMUX_DATA_DIR=%s: %s is damaged (%q): the data dir cannot be trusted; move it aside (its history is lost) or restore it from a backup", dir, markerFile, truncateText(string(b), 60))
	}
	if m.Format > dataFormat {
		return fmt.Errorf("LSMUX_DATA_DIR=%s was written by a newer lsmux (format %d; this one reads %d): run that version, or give this one another data dir", dir, m.Format, dataFormat)
	}
	return nil
}

func truncateText(s string, n int) string {
	if len(s) > n {
		return s[:n] + "…"
	}
	return s
}

// writeFileSync writes a whole file and flushes it to disk.
func writeFileSync(path string, b []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o640)
	if err != nil {
		return err
	}
	if _, err := f.Write(b); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// Dir is the data dir.
func (e *Embedded) Dir() string { return e.dir }

// Connect returns a Node on the in-process server: the same JetStream
// code as cluster mode, on a connection that never leaves the process.
func (e *Embedded) Connect(o Options) (*Node, error) {
	o = o.withDefaults()
	n := &Node{opts: o, id: o.Replica + "/" + nonce(), log: o.Logger.WithField("replica", o.Replica), embedded: e}
	connect := func(name string) (*nats.Conn, error) {
		nc, err := nats.Connect("", nats.InProcessServer(e.srv), nats.Name(name), nats.MaxReconnects(-1),
			nats.ReconnectWait(o.RetryWait), nats.RetryOnFailedConnect(true))
		if err != nil {
			return nil, fmt.Errorf("LSMUX_DATA_DIR=%s: connect to the embedded JetStream: %w", e.dir, err)
		}
		return nc, nil
	}
	nc, err := connect("lsmux")
	if err != nil {
		return nil, err
	}
	rc, err := connect("lsmux replays")
	if err != nil {
		nc.Close()
		return nil, err
	}
	if err := n.attach(nc, rc); err != nil {
		return nil, err
	}
	return n, nil
}

// Recover restarts the store after it failed (a full disk leaves the
// file store refusing writes until it is opened again). Streams and
// their hits come back from disk.
func (e *Embedded) Recover() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if err := e.srv.ShutdownJetStream(); err != nil {
		return fmt.Errorf("stop the store: %w", err)
	}
	cfg := e.cfg
	if err := e.srv.EnableJetStream(&cfg); err != nil {
		return fmt.Errorf("reopen the store: %w", err)
	}
	return nil
}

// FreeBytes is the free space of the data dir's file system.
func (e *Embedded) FreeBytes() (uint64, error) {
	var st syscall.Statfs_t
	if err := syscall.Statfs(e.dir, &st); err != nil {
		return 0, err
	}
	return st.Bavail * uint64(st.Bsize), nil
}

// Close stops the store and lets the data dir go. Call it after the
// streams' Run and the Node's Close.
func (e *Embedded) Close() {
	e.srv.Shutdown()
	e.srv.WaitForShutdown()
	e.lock.Close()
}

// natsLogger passes the embedded server's log to lsmux's, one line per
// kind every few seconds (a full disk makes it complain per message).
type natsLogger struct {
	log  logrus.FieldLogger
	logs logLimiter
}

func (l *natsLogger) Noticef(format string, v ...any) { l.log.Debugf(format, v...) }
func (l *natsLogger) Debugf(format string, v ...any)  {}
func (l *natsLogger) Tracef(format string, v ...any)  {}
func (l *natsLogger) Warnf(format string, v ...any) {
	if l.logs.allow(format) {
		l.log.Warnf(format, v...)
	}
}
func (l *natsLogger) Errorf(format string, v ...any) {
	if l.logs.allow(format) {
		l.log.Errorf(format, v...)
	}
}
func (l *natsLogger) Fatalf(format string, v ...any) { l.log.Errorf(format, v...) }
