package proxy

import (
	"encoding/json"
	"net"
	"net/http"
	"strconv"
	"sync/atomic"
	"time"

	"lsmux/cluster"
	"lsmux/fanout"
	"lsmux/upstream"
)

// streamSummary is one stream in GET /v1/streams.
type streamSummary struct {
	Name        string            `json:"name"`
	Endpoints   map[string]string `json:"endpoints"`
	Upstream    []upstream.State  `json:"upstream"`
	Subscribers map[string]int    `json:"subscribers"`
	Ring        fanout.Stats      `json:"ring"`
}

func (s *Server) handleStreams(w http.ResponseWriter, r *http.Request) {
	out := []streamSummary{}
	for _, name := range s.order {
		st := s.streams[name]
		sum := streamSummary{Name: name, Subscribers: st.Hub.SubscriberCounts(), Ring: st.Hub.Stats(), Upstream: []upstream.State{},
			Endpoints: map[string]string{"ws": "/v1/streams/" + name + "/ws", "sse": "/v1/streams/" + name + "/sse", "ndjson": "/api/1/stream/" + name}}
		for _, c := range st.conns() {
			sum.Upstream = append(sum.Upstream, c.State)
		}
		out = append(out, sum)
	}
	s.writeStatusJSON(w, r, out)
}

// throughput is a stream's hits in and deliveries out per second over the
// last minutes, for the dashboard's chart (which would otherwise know only
// what the page itself has seen).
type throughput struct {
	Start     time.Time `json:"start"` // the first second's start
	HitsIn    []uint64  `json:"hitsIn"`
	Delivered []uint64  `json:"delivered"`
}

// streamStatus is one stream in GET /v1/status.
type streamStatus struct {
	Name              string                   `json:"name"`
	Upstream          []upstream.ConnStatus    `json:"upstream"`
	Ring              fanout.Stats             `json:"ring"`
	SubscriberCounts  map[string]int           `json:"subscriberCounts"`
	SubscriberSummary fanout.SubscriberSummary `json:"subscriberSummary"`
	// Disconnects counts subscriber connections ended, by reason
	// (disconnect.go), since the start.
	Disconnects map[string]uint64 `json:"disconnects"`
	Throughput  throughput        `json:"throughput"`
	Cluster     *cluster.Status   `json:"cluster,omitempty"` // cluster mode: role, leader, JetStream figures
	// History is the stream's durable history (a data dir, or cluster
	// mode's JetStream): what it holds, replays, store trouble.
	History *cluster.HistoryStatus `json:"history,omitempty"`
	// Subscribers lists subscribers, only when asked (?subscribers=1):
	// at 10,000 subscribers a status page that lists them all is real
	// load. NextAfter pages on (&after=NextAfter) when the list was cut.
	Subscribers []fanout.SubscriberStatus `json:"subscribers,omitempty"`
	NextAfter   uint64                    `json:"nextAfter,omitempty"`
}

// maxSubscriberPage bounds one page of the subscriber list.
const maxSubscriberPage = 1000

// handleStatus is the operator's view: every upstream connection, the
// ring, a summary of the subscribers (the list and its pages on request)
// and the recent throughput. It holds no secret: ConnStatus carries none.
//
//	?subscribers=1       list subscribers too (?limit=N, default and at most 1000; ?after=ID pages)
//	?stream=NAME         only that stream
//	?pretty=1            indented JSON
func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	list := truthy(q.Get("subscribers"))
	limit, after := maxSubscriberPage, uint64(0)
	if v := q.Get("limit"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 1 {
			writeError(w, http.StatusBadRequest, "limit="+quote(v)+": want a number of subscribers from 1 to "+strconv.Itoa(maxSubscriberPage))
			return
		}
		limit = min(n, maxSubscriberPage)
	}
	if v := q.Get("after"); v != "" {
		n, err := strconv.ParseUint(v, 10, 64)
		if err != nil {
			writeError(w, http.StatusBadRequest, "after="+quote(v)+": want a subscriber id (nextAfter of the previous page)")
			return
		}
		after = n
	}
	only := q.Get("stream")
	if only != "" && s.streams[only] == nil {
		writeError(w, http.StatusNotFound, "no stream named "+quote(only)+"; GET /v1/streams lists them")
		return
	}
	auth := "anonymous"
	if s.tokens.enabled() {
		auth = "token"
	} else if list && !s.clientOf(r).local() {
		writeError(w, http.StatusForbidden, "the subscriber list shows subscribers' addresses and filters: without LSMUX_AUTH_TOKEN only this machine may ask for it (or ask for the summary, without ?subscribers=1)")
		return
	}
	body := struct {
		StartedAt    time.Time      `json:"startedAt"`
		ShuttingDown bool           `json:"shuttingDown"`
		Demo         bool           `json:"demo"` // fault controls at /demo/ (lsmux demo only)
		Auth         string         `json:"auth"` // "token": subscribers must present one; "anonymous": anyone who reaches lsmux may subscribe
		Streams      []streamStatus `json:"streams"`
	}{StartedAt: s.started, ShuttingDown: s.leaving(), Demo: s.opts.Demo != nil, Auth: auth, Streams: []streamStatus{}}
	now := time.Now()
	for _, name := range s.order {
		if only != "" && name != only {
			continue
		}
		st := s.streams[name]
		ss := streamStatus{Name: name, Upstream: st.conns(), Ring: st.Hub.Stats(), SubscriberCounts: st.Hub.SubscriberCounts(),
			SubscriberSummary: st.Hub.SubscriberSummary(), Disconnects: st.disconnects.snapshot()}
		ss.Throughput.Start, ss.Throughput.HitsIn, ss.Throughput.Delivered = st.Hub.Throughput(now, int(fanout.ThroughputWindow/time.Second))
		if cf, ok := st.Feed.(clusterFeed); ok && cf.Clustered() {
			cs := cf.ClusterStatus()
			ss.Cluster = &cs
		}
		if hf, ok := st.Feed.(historyFeed); ok {
			hs := hf.HistoryStatus()
			ss.History = &hs
		}
		if list {
			var more bool
			ss.Subscribers, more = st.Hub.SubscriberPage(after, limit)
			if ss.Subscribers == nil {
				ss.Subscribers = []fanout.SubscriberStatus{}
			}
			if more {
				ss.NextAfter = ss.Subscribers[len(ss.Subscribers)-1].ID
			}
		}
		body.Streams = append(body.Streams, ss)
	}
	s.writeStatusJSON(w, r, body)
}

// writeStatusJSON writes compact JSON, indented with ?pretty=1.
func (s *Server) writeStatusJSON(w http.ResponseWriter, r *http.Request, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Cache-Control", "no-store")
	enc := json.NewEncoder(w)
	if truthy(r.URL.Query().Get("pretty")) {
		enc.SetIndent("", "  ")
	}
	enc.SetEscapeHTML(false)
	enc.Encode(v)
}

func truthy(v string) bool { return v == "1" || v == "true" }

// isLoopback reports whether an address is this machine's.
func isLoopback(ip string) bool {
	a := net.ParseIP(ip)
	return a != nil && a.IsLoopback()
}

// disconnectCounts counts a stream's subscriber disconnects by reason.
type disconnectCounts map[string]*atomic.Uint64

func newDisconnectCounts() disconnectCounts {
	c := disconnectCounts{}
	for _, r := range DisconnectReasons {
		c[r] = &atomic.Uint64{}
	}
	return c
}

func (c disconnectCounts) add(reason string) {
	if n := c[reason]; n != nil {
		n.Add(1)
	}
}

func (c disconnectCounts) snapshot() map[string]uint64 {
	out := make(map[string]uint64, len(c))
	for r, n := range c {
		out[r] = n.Load()
	}
	return out
}
