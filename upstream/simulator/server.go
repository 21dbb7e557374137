// Package simulator is a fake Adobe Analytics Live Stream: an IMS token
// endpoint and the stream endpoint, with realistic hits, the documented
// error answers and switchable faults. It is started like httptest.Server
// (New → URL → Close) and keeps a log of every connection attempt so tests
// can assert what the upstream saw. `lsmux simulate` and `lsmux demo` run
// the same code.
package simulator

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"sync"
	"time"
)

// Options configure a Server. Zero values take the defaults noted.
type Options struct {
	Addr          string        // listen address, default "127.0.0.1:0"
	Streams       []string      // stream names served, default {"demo"}
	Rate          float64       // hits per second per stream, default 100
	ClientID      string        // accepted client id (also x-api-key), default "sim-client"
	ClientSecret  string        // accepted client secret, default "sim-secret"
	TokenTTL      time.Duration // access token lifetime, default 24h
	Tick          time.Duration // how often a connection sends what is due, default 20ms
	Backfill      time.Duration // a reconnect within this resumes where the last left off, default 5m
	EmptyEvery    int           // an empty record after every Nth hit, default 50 (negative: never)
	Seed          uint64        // hit generator seed, default 1
	StartAtOldest bool          // a new connection starts at hit 0 instead of now (reset=smallest does too)
	// StampSent puts "lsmuxSentNs":<unix nanoseconds> first in every hit
	// as it is written, so a load test can measure end-to-end latency.
	// Hits are then no longer the same bytes as Hit(k).
	StampSent bool
}

// Attempt is one request to the stream endpoint, as the upstream saw it.
type Attempt struct {
	ID             int
	Stream         string
	Host           string // the Host the request was sent to
	Query          string
	MaxConnections int
	Slot           int // partition served, -1 when refused
	Start          time.Time
	End            time.Time // zero while the connection is open
	Status         int
	Reason         string // why it was refused or how it ended
	Hits           int    // hits flushed on this connection
	HadToken       bool   // a valid bearer token was presented
}

// Server is a running simulator.
type Server struct {
	opts     Options
	ln       net.Listener
	srv      *http.Server
	baseURL  string
	altURL   string
	done     chan struct{}
	serveErr chan error

	// writing is held for reading by every connection while it writes one
	// batch, so Stall can wait until no batch is half-recorded. Lock
	// order: writing before mu (sendDue takes mu inside it).
	writing sync.RWMutex

	mu       sync.Mutex
	gens     map[string]*generator
	streams  map[string]*streamState
	tokens   map[string]time.Time
	attempts []*Attempt
	faults   faults
	dropGen  chan struct{} // closed by DropConnections, then replaced
	injected [][]byte
}

type faults struct {
	failNext    []int // statuses for the next connects
	flapWindow  time.Duration
	flapStatus  int
	redirects   int // next N connects answered with a 302 to the other host
	backfillDup int // the next reconnect of a slot re-sends this many hits
	stallUntil  time.Time
	corrupt     int // connections that will write bytes that are not gzip, then drop
	cut         int // connections that will write half a hit, then drop
}

type streamState struct {
	active         map[int]*Attempt // slot → open attempt
	maxConns       int
	peak           int
	slots          map[[2]int]*slotState // (maxConnections, slot) → cursor
	lastDisconnect time.Time
}

type slotState struct {
	cursor  uint64      // next hit index to consider
	lastEnd time.Time   // when the last connection of this slot ended
	ranges  [][2]uint64 // hit index ranges scanned, for ExpectedHits
}

// New starts a simulator.
func New(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = "127.0.0.1:0"
	}
	if len(opts.Streams) == 0 {
		opts.Streams = []string{"demo"}
	}
	if opts.Rate == 0 {
		opts.Rate = 100
	}
	if opts.Rate < 0 {
		return nil, fmt.Errorf("simulator: rate %v must be positive", opts.Rate)
	}
	if opts.ClientID == "" {
		opts.ClientID = "sim-client"
	}
	if opts.ClientSecret == "" {
		opts.ClientSecret = "sim-secret"
	}
	if opts.TokenTTL <= 0 {
		opts.TokenTTL = 24 * time.Hour
	}
	if opts.Tick <= 0 {
		opts.Tick = 20 * time.Millisecond
	}
	if opts.Backfill <= 0 {
		opts.Backfill = 5 * time.Minute
	}
	if opts.EmptyEvery == 0 {
		opts.EmptyEvery = 50
	}
	if opts.Seed == 0 {
		opts.Seed = 1
	}
	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("simulator: listen %s: %w", opts.Addr, err)
	}
	s := &Server{
		opts:     opts,
		ln:       ln,
		done:     make(chan struct{}),
		serveErr: make(chan error, 1),
		gens:     map[string]*generator{},
		streams:  map[string]*streamState{},
		tokens:   map[string]time.Time{},
		dropGen:  make(chan struct{}),
	}
	start := time.Now()
	for _, name := range opts.Streams {
		s.gens[name] = &generator{seed: opts.Seed ^ splitmix64(uint64(len(name))+hashString(name)), suite: "sim." + name, start: start, rate: opts.Rate, visitors: 5000}
		s.streams[name] = &streamState{active: map[int]*Attempt{}, slots: map[[2]int]*slotState{}}
	}
	port := ln.Addr().(*net.TCPAddr).Port
	host := ln.Addr().(*net.TCPAddr).IP.String()
	s.baseURL = "http://" + net.JoinHostPort(host, strconv.Itoa(port))
	// The other host of a cross-host redirect: the same listener under
	// another name, so Go's default client would drop Authorization.
	alt := "localhost"
	if host != "127.0.0.1" {
		alt = "127.0.0.1"
	}
	s.altURL = "http://" + net.JoinHostPort(alt, strconv.Itoa(port))

	mux := http.NewServeMux()
	mux.HandleFunc("POST /ims/token/v3", s.handleToken)
	mux.HandleFunc("/api/{version}/stream/{name}", s.handleStream)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() { s.serveErr <- s.srv.Serve(ln) }()
	return s, nil
}

func hashString(s string) uint64 {
	var h uint64 = 1469598103934665603
	for i := 0; i < len(s); i++ {
		h = (h ^ uint64(s[i])) * 1099511628211
	}
	return h
}

// URL is the simulator's base URL, e.g. http://127.0.0.1:41234.
func (s *Server) URL() string { return s.baseURL }

// AltURL is the same server under another host name, the target of
// cross-host redirects.
func (s *Server) AltURL() string { return s.altURL }

// StreamURL is the Live Stream URL of a stream.
func (s *Server) StreamURL(name string) string { return s.baseURL + "/api/1/stream/" + name }

// TokenURL is the IMS token endpoint.
func (s *Server) TokenURL() string { return s.baseURL + "/ims/token/v3" }

// ClientID and ClientSecret are the credentials the token endpoint accepts.
func (s *Server) ClientID() string     { return s.opts.ClientID }
func (s *Server) ClientSecret() string { return s.opts.ClientSecret }

// Close stops the simulator and ends every connection.
func (s *Server) Close() {
	s.mu.Lock()
	select {
	case <-s.done:
		s.mu.Unlock()
		return
	default:
	}
	close(s.done)
	s.mu.Unlock()
	s.srv.Close()
	<-s.serveErr
}

// DropConnections cuts every open stream connection abruptly, as a network
// failure would: no gzip trailer, no final chunk.
func (s *Server) DropConnections() {
	s.mu.Lock()
	close(s.dropGen)
	s.dropGen = make(chan struct{})
	s.mu.Unlock()
}

// FailNext answers the next n connects with status (409 and 503 carry an
// error_description, like Live Stream's).
func (s *Server) FailNext(n, status int) {
	s.mu.Lock()
	for range n {
		s.faults.failNext = append(s.faults.failNext, status)
	}
	s.mu.Unlock()
}

// SetFlapPenalty makes a connect within window of the stream's last
// disconnect fail with status: the balancer behaviour lsmux exists to
// avoid. A zero window turns it off.
func (s *Server) SetFlapPenalty(window time.Duration, status int) {
	s.mu.Lock()
	s.faults.flapWindow, s.faults.flapStatus = window, status
	s.mu.Unlock()
}

// RedirectNext answers the next n connects with a 302 to the other host
// name (127.0.0.1 ↔ localhost), which again demands the token.
func (s *Server) RedirectNext(n int) {
	s.mu.Lock()
	s.faults.redirects += n
	s.mu.Unlock()
}

// BackfillDuplicates makes the next reconnect of each slot re-send the last
// n hits it already sent, as Live Stream's backfill may around a reconnect.
func (s *Server) BackfillDuplicates(n int) {
	s.mu.Lock()
	s.faults.backfillDup = n
	s.mu.Unlock()
}

// Stall makes every open connection send nothing for d. Hits due meanwhile
// are sent when the stall ends. It returns once no connection is in the
// middle of a batch, so SentHits is final until the stall ends.
func (s *Server) Stall(d time.Duration) {
	s.mu.Lock()
	s.faults.stallUntil = time.Now().Add(d)
	s.mu.Unlock()
	s.writing.Lock()
	s.writing.Unlock()
}

// CorruptNext makes the next connection to send write bytes that are not
// gzip into its stream, then drop.
func (s *Server) CorruptNext() {
	s.mu.Lock()
	s.faults.corrupt++
	s.mu.Unlock()
}

// CutNext makes the next connection to send write the first half of its
// next hit, then drop: a record cut in half. The hit is sent again, whole,
// after the reconnect (it was never counted as sent).
func (s *Server) CutNext() {
	s.mu.Lock()
	s.faults.cut++
	s.mu.Unlock()
}

// ExpireTokens invalidates every issued token: the next connect gets a 401,
// open streams keep flowing (as Live Stream does).
func (s *Server) ExpireTokens() {
	s.mu.Lock()
	clear(s.tokens)
	s.mu.Unlock()
}

// InjectRecord sends raw (plus CRLF) as the next record on one open
// connection, for tests of records that are not valid hits.
func (s *Server) InjectRecord(raw []byte) {
	s.mu.Lock()
	s.injected = append(s.injected, append([]byte(nil), raw...))
	s.mu.Unlock()
}

// Attempts returns a copy of the connection log.
func (s *Server) Attempts() []Attempt {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]Attempt, len(s.attempts))
	for i, a := range s.attempts {
		out[i] = *a
	}
	return out
}

// Active returns how many stream connections are open on a stream now.
func (s *Server) Active(stream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[stream]; st != nil {
		return len(st.active)
	}
	return 0
}

// PeakActive returns the most stream connections ever open at once.
func (s *Server) PeakActive(stream string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	if st := s.streams[stream]; st != nil {
		return st.peak
	}
	return 0
}

// Hit returns the bytes of hit k of a stream.
func (s *Server) Hit(stream string, k uint64) []byte {
	g := s.gens[stream]
	if g == nil {
		return nil
	}
	return g.hit(nil, k)
}

// SentHits returns every distinct hit flushed to a client so far, ordered by
// hit index (not by arrival across partitions).
func (s *Server) SentHits(stream string) [][]byte {
	s.mu.Lock()
	st, g := s.streams[stream], s.gens[stream]
	type part struct {
		n, slot int
		ranges  [][2]uint64
	}
	var parts []part
	if st != nil {
		for key, ss := range st.slots {
			parts = append(parts, part{key[0], key[1], append([][2]uint64(nil), ss.ranges...)})
		}
	}
	s.mu.Unlock()
	if g == nil {
		return nil
	}
	var hi uint64
	for _, p := range parts {
		for _, r := range p.ranges {
			hi = max(hi, r[1])
		}
	}
	var out [][]byte
	for k := uint64(0); k < hi; k++ {
		v := g.visitor(k)
		for _, p := range parts {
			if int(v%uint64(p.n)) != p.slot {
				continue
			}
			for _, r := range p.ranges {
				if k >= r[0] && k < r[1] {
					out = append(out, g.hit(nil, k))
					break
				}
			}
		}
	}
	return out
}

func (s *Server) handleToken(w http.ResponseWriter, r *http.Request) {
	if err := r.ParseForm(); err != nil {
		jsonError(w, http.StatusBadRequest, "invalid_request", "unreadable form")
		return
	}
	if r.PostForm.Get("grant_type") != "client_credentials" {
		jsonError(w, http.StatusBadRequest, "unsupported_grant_type", "grant_type must be client_credentials")
		return
	}
	if r.PostForm.Get("client_id") != s.opts.ClientID {
		jsonError(w, http.StatusBadRequest, "invalid_client", "invalid client_id parameter")
		return
	}
	if r.PostForm.Get("client_secret") != s.opts.ClientSecret {
		jsonError(w, http.StatusUnauthorized, "invalid_client", "invalid client_secret parameter")
		return
	}
	var b [16]byte
	rand.Read(b[:])
	tok := "sim-" + hex.EncodeToString(b[:])
	s.mu.Lock()
	s.tokens[tok] = time.Now().Add(s.opts.TokenTTL)
	s.mu.Unlock()
	w.Header().Set("Content-Type", "application/json")
	fmt.Fprintf(w, `{"access_token":%q,"token_type":"bearer","expires_in":%d}`, tok, int(s.opts.TokenTTL.Seconds()))
}

func jsonError(w http.ResponseWriter, status int, code, desc string) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"error":%q,"error_description":%q}`+"\n", code, desc)
}

// validToken reports whether the request carries an unexpired token.
// Caller holds s.mu.
func (s *Server) validToken(r *http.Request) bool {
	h := r.Header.Get("Authorization")
	const prefix = "Bearer "
	if len(h) <= len(prefix) || h[:len(prefix)] != prefix {
		return false
	}
	exp, ok := s.tokens[h[len(prefix):]]
	return ok && time.Now().Before(exp)
}
