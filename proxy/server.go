// Package proxy serves a stream's hub to local subscribers over WebSocket,
// Server-Sent Events and a drop-in NDJSON endpoint, plus health
// and status. No request here ever touches the upstream connection.
package proxy

import (
	"context"
	"encoding/json"
	"errors"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/go-chi/chi/v5"
	"github.com/go-chi/chi/v5/middleware"
	"github.com/sirupsen/logrus"
	"golang.org/x/sync/semaphore"

	"lsmux/fanout"
)

// Options configure a Server. Zero values take the defaults noted.
type Options struct {
	PingInterval time.Duration // WebSocket ping and SSE comment, default 15s
	PongWait     time.Duration // how long past a ping a pong may take, default 10s
	WriteTimeout time.Duration // a stuck socket write drops the subscriber, default 10s
	// WriterLinger is how long a session's writer goroutine waits for
	// more work before it ends, default 1s: on a stream with hits the
	// writer stays (a wake-up is a hand-off, not a new goroutine whose
	// stack must grow again), an idle subscriber keeps only its reader.
	WriterLinger   time.Duration
	SlowDisconnect bool  // a subscriber that falls off the ring is disconnected instead of told of the gap
	MaxMessageSize int64 // largest WebSocket message a client may send, default 4 KiB
	BatchBytes     int   // bytes one write may carry, default 256 KiB
	// BatchMemory bounds the bytes all subscribers' write batches hold at
	// once (SSE and the drop-in copy each batch into a buffer; WebSocket
	// writes the ring's frames as they are). A subscriber
	// whose socket is full keeps its batch until the write ends: with many
	// such, the others get smaller batches, and memory stays bounded.
	// Default 32 MiB.
	BatchMemory int64
	Compiler    *fanout.Compiler // filters and projections; nil: a default one with FilterCostLimit
	// FilterCostLimit stops one filter evaluation after this many CEL
	// cost units (0: fanout.DefaultCostLimit).
	FilterCostLimit uint64
	// Limits bound what each subscriber may cost (its filters' CPU, how
	// far behind it may fall); the zero Limits bound nothing.
	Limits fanout.Limits
	// CompileRate is how many filters (and projections) per second each
	// remote address may have compiled, with bursts of CompileBurst
	// (defaults 5 and 20; negative: unlimited).
	CompileRate  float64
	CompileBurst int
	Web          WebPage      // serves GET / (the dashboard); nil: none
	Metrics      http.Handler // serves GET /metrics; nil: none
	Demo         http.Handler // serves /demo/* (fault injection, lsmux demo only); nil: none
	Observer     Observer     // nil: none
	Logger       logrus.FieldLogger

	AuthTokens    []string // subscribers must present one; empty (and no AuthTokenFile): no auth
	AuthTokenFile string   // a file of tokens, one per line, re-read when it changes
	// AuthTokenRecheck is how often the token file is read again, at most
	// (default 1 s).
	AuthTokenRecheck time.Duration
	AllowedHosts     []string // without auth: Host names answered besides IP addresses and localhost
	// TrustedProxies are the reverse proxies whose X-Forwarded-For (or
	// Forwarded) header names the client (see clientaddr.go).
	TrustedProxies    []netip.Prefix
	ProtectHealth     bool          // also require a token for /healthz, /readyz, /metrics
	AllowedOrigins    []string      // browser origins allowed besides same-origin; "*" allows all
	MaxSubscribers    int           // in total, default 10,000 (503 past it)
	MaxPerAddress     int           // per remote address, default 1,000 (429 past it)
	ReadHeaderTimeout time.Duration // default 10s
}

// Server is the HTTP side of lsmux.
type Server struct {
	opts         Options
	compiler     *fanout.Compiler
	compiles     *compileRate
	batchMem     *semaphore.Weighted
	limits       fanout.Limits
	base         context.Context // ended when Shutdown starts: sessions stop waiting for filter work
	endBase      context.CancelFunc
	obs          Observer
	tokens       *tokenSet
	allowedHosts []string
	allowAll     bool
	allowed      map[string]bool
	streams      map[string]*Stream
	order        []string
	log          logrus.FieldLogger
	srv          *http.Server
	router       chi.Router

	started   time.Time
	closing   chan struct{} // closed when shutdown starts
	closeOnce sync.Once
	draining  atomic.Bool   // Drain was called: /readyz answers 503, all else serves on
	spread    time.Duration // subscribers close at random times within this
	// hardDeadline is when Shutdown closes what is left (unix
	// nanoseconds; 0: none): goodbyes are not written past it. A session
	// ending for its own reason may read it while Shutdown sets it.
	hardDeadline atomic.Int64
	handlers     sync.WaitGroup
	lingers      lingerClock // ends lingering writers (linger.go)
	connsMu      sync.Mutex
	conns        map[net.Conn]struct{} // hijacked WebSocket connections
	total        int                   // subscribers, guarded by connsMu
	perAddr      map[string]int        // subscribers by remote address, guarded by connsMu
}

// New returns a Server for streams.
func New(streams []*Stream, opts Options) *Server {
	if opts.PingInterval <= 0 {
		opts.PingInterval = 15 * time.Second
	}
	if opts.WriterLinger <= 0 {
		opts.WriterLinger = time.Second
	}
	if opts.PongWait <= 0 {
		opts.PongWait = 10 * time.Second
	}
	if opts.WriteTimeout <= 0 {
		opts.WriteTimeout = 10 * time.Second
	}
	if opts.MaxMessageSize <= 0 {
		opts.MaxMessageSize = 4 << 10
	}
	if opts.BatchBytes <= 0 {
		opts.BatchBytes = 256 << 10
	}
	if opts.BatchMemory <= 0 {
		opts.BatchMemory = 32 << 20
	}
	if opts.MaxSubscribers == 0 {
		opts.MaxSubscribers = 10_000
	}
	if opts.MaxPerAddress == 0 {
		opts.MaxPerAddress = 1_000
	}
	if opts.ReadHeaderTimeout <= 0 {
		opts.ReadHeaderTimeout = 10 * time.Second
	}
	if opts.Observer == nil {
		opts.Observer = nopObserver{}
	}
	if opts.Logger == nil {
		l := logrus.New()
		l.Level = logrus.PanicLevel
		opts.Logger = l
	}
	if opts.Compiler == nil {
		c, err := fanout.NewCompiler(opts.FilterCostLimit)
		if err != nil {
			panic(err) // the CEL environment is fixed; this cannot fail at run time
		}
		opts.Compiler = c
	}
	if opts.CompileRate == 0 {
		opts.CompileRate = 5
	}
	if opts.AuthTokenRecheck <= 0 {
		opts.AuthTokenRecheck = time.Second
	}
	if opts.CompileBurst <= 0 {
		opts.CompileBurst = 20
	}
	s := &Server{
		opts:     opts,
		lingers:  lingerClock{period: opts.WriterLinger / 2},
		compiler: opts.Compiler,
		compiles: newCompileRate(opts.CompileRate, opts.CompileBurst),
		batchMem: semaphore.NewWeighted(max(opts.BatchMemory, int64(opts.BatchBytes))),
		limits:   opts.Limits,
		streams:  map[string]*Stream{},
		log:      opts.Logger,
		started:  time.Now(),
		closing:  make(chan struct{}),
		conns:    map[net.Conn]struct{}{},
		perAddr:  map[string]int{},
		obs:      opts.Observer,
		tokens:   newTokenSet(opts.AuthTokens, opts.AuthTokenFile, opts.AuthTokenRecheck, opts.Logger),
		allowed:  map[string]bool{},
	}
	s.base, s.endBase = context.WithCancel(context.Background())
	for _, h := range opts.AllowedHosts {
		s.allowedHosts = append(s.allowedHosts, strings.ToLower(strings.TrimSpace(h)))
	}
	for _, o := range opts.AllowedOrigins {
		o = strings.ToLower(strings.TrimSuffix(strings.TrimSpace(o), "/"))
		if o == "*" {
			s.allowAll = true
		} else if o != "" {
			s.allowed[o] = true
		}
	}
	for _, st := range streams {
		st.disconnects = newDisconnectCounts()
		s.streams[st.Name] = st
		s.order = append(s.order, st.Name)
	}
	s.router = s.routes()
	s.srv = &http.Server{
		Handler:           s.router,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		IdleTimeout:       2 * time.Minute,
		MaxHeaderBytes:    64 << 10,
		ErrorLog:          log.New(debugWriter{opts.Logger}, "", 0),
	}
	return s
}

// noSniff tells browsers to take every response as the type it names.
// Hits carry text that visitors of the tracked site wrote (page names,
// URLs, search terms); a browser that sniffed an NDJSON or JSON answer as
// HTML would run a script a visitor put there, in lsmux's origin, next to
// the dashboard's token.
func noSniff(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Content-Type-Options", "nosniff")
		next.ServeHTTP(w, r)
	})
}

func (s *Server) routes() chi.Router {
	r := chi.NewRouter()
	r.Use(middleware.Recoverer, noSniff, s.checkHost)
	r.Group(func(r chi.Router) {
		if s.opts.ProtectHealth {
			r.Use(s.requireAuth)
		}
		r.Get("/healthz", s.handleHealthz)
		r.Get("/readyz", s.handleReadyz)
		if s.opts.Metrics != nil {
			r.Method(http.MethodGet, "/metrics", s.opts.Metrics)
		}
	})
	r.Group(func(r chi.Router) {
		r.Use(s.checkOrigin, s.requireAuth)
		// OPTIONS is answered by checkOrigin (CORS preflight for pages
		// that send Authorization).
		preflight := func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusNoContent) }
		for path, h := range map[string]http.HandlerFunc{
			"/v1/streams":                       s.handleStreams,
			"/v1/validate":                      s.handleValidate,
			"/v1/status":                        s.handleStatus,
			"/v1/streams/{name}/ws":             s.handleWS,
			"/v1/streams/{name}/sse":            s.handleSSE,
			"/api/{version:[12]}/stream/{name}": s.handleNDJSON,
		} {
			r.Get(path, h)
			r.Options(path, preflight)
		}
	})
	if s.opts.Demo != nil {
		// The demo's fault switchboard changes what the upstream does:
		// the same token and Origin checks as the API.
		r.Group(func(r chi.Router) {
			r.Use(s.checkOrigin, s.requireAuth)
			r.Mount("/demo", http.StripPrefix("/demo", s.opts.Demo))
		})
	}
	notFound := func(w http.ResponseWriter, r *http.Request) {
		writeError(w, http.StatusNotFound, "no such endpoint: "+r.URL.Path)
	}
	if s.opts.Web != nil {
		// The page and its assets: GET of a top-level file. The API's
		// unknown paths and methods get the API's JSON error, not the
		// file server's text.
		web := s.opts.Web
		r.Handle("/*", http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			if (r.Method != http.MethodGet && r.Method != http.MethodHead) || strings.Count(r.URL.Path, "/") > 1 || !web.Has(r.URL.Path) {
				notFound(w, r)
				return
			}
			web.ServeHTTP(w, r)
		}))
	}
	r.NotFound(notFound)
	return r
}

// Handler is the router with every endpoint, for tests and embedding.
func (s *Server) Handler() http.Handler { return s.router }

// Serve serves on ln until Shutdown.
func (s *Server) Serve(ln net.Listener) error {
	err := s.srv.Serve(ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Shutdown stops accepting connections and closes every subscriber
// properly (a WebSocket close frame with 1001, a final SSE event), spread
// over the first half of the time ctx allows so that thousands of clients
// do not all reconnect elsewhere in the same instant. Whatever is still
// open when ctx ends is closed hard. Streaming handlers never keep
// http.Server.Shutdown waiting, because they all return on the closing
// signal.
func (s *Server) Shutdown(ctx context.Context) error {
	s.closeOnce.Do(func() {
		s.connsMu.Lock() // see begin: no handler registers after this
		if dl, ok := ctx.Deadline(); ok {
			s.spread = time.Until(dl) / 2
			s.hardDeadline.Store(dl.UnixNano())
		}
		close(s.closing)
		s.connsMu.Unlock()
		s.endBase()
	})
	shutErr := make(chan error, 1)
	go func() { shutErr <- s.srv.Shutdown(ctx) }() // listeners and SSE handlers
	done := make(chan struct{})
	go func() { s.handlers.Wait(); close(done) }() // WebSocket sessions too
	select {
	case <-done:
		return <-shutErr
	case <-ctx.Done():
		s.srv.Close()
		s.connsMu.Lock()
		for c := range s.conns {
			c.Close()
		}
		s.connsMu.Unlock()
		<-done
		<-shutErr
		return ctx.Err()
	}
}

// Drain makes /readyz answer 503 while everything else serves on: a load
// balancer (a Kubernetes Service) takes a few seconds to stop sending new
// subscribers after a pod is told to stop, and they would otherwise meet
// a closed port. Shutdown follows, after LSMUX_SHUTDOWN_DELAY.
func (s *Server) Drain() { s.draining.Store(true) }

// leaving reports whether lsmux is draining or shutting down.
func (s *Server) leaving() bool { return s.draining.Load() || s.ShuttingDown() }

// ShuttingDown reports whether Shutdown has started.
func (s *Server) ShuttingDown() bool {
	select {
	case <-s.closing:
		return true
	default:
		return false
	}
}

// closeDelay is how long a subscriber waits after the closing signal
// before it closes itself: a random point in the spread.
func (s *Server) closeDelay() time.Duration {
	if s.spread <= 0 {
		return 0
	}
	return rand.N(s.spread)
}

// stream resolves {name}, answering 404 itself when there is none.
func (s *Server) stream(w http.ResponseWriter, r *http.Request) *Stream {
	name := chi.URLParam(r, "name")
	st := s.streams[name]
	if st == nil {
		writeError(w, http.StatusNotFound, "no stream named "+quote(name)+"; GET /v1/streams lists them")
	}
	return st
}

func writeError(w http.ResponseWriter, status int, msg string) {
	writeJSON(w, status, map[string]string{"error": msg})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func quote(s string) string {
	b, _ := json.Marshal(truncate(s))
	return string(b)
}

// WebPage is what the server needs of the dashboard: its files, and
// whether a path is one of them.
type WebPage interface {
	http.Handler
	Has(path string) bool
}

// debugWriter takes net/http's own complaints (TLS handshakes that failed,
// mostly scanners and clients that do not trust the certificate) into the
// log at debug level, instead of unstructured lines on stderr.
type debugWriter struct{ log logrus.FieldLogger }

func (w debugWriter) Write(p []byte) (int, error) {
	w.log.Debug("http: " + strings.TrimSpace(strings.TrimPrefix(string(p), "http: ")))
	return len(p), nil
}
