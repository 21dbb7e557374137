package proxy

import (
	"net/http"

	"lsmux/cluster"
	"lsmux/fanout"
	"lsmux/upstream"
)

func (s *Server) handleHealthz(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, map[string]string{"status": "alive"})
}

type readyStream struct {
	Name     string           `json:"name"`
	Upstream []upstream.State `json:"upstream"`
	// NotReady says why, when this stream holds readiness back.
	NotReady string `json:"notReady,omitempty"`
}

// handleReadyz answers 200 while lsmux can serve subscribers. It does not
// depend on the upstream unless ?upstream=1 asks for it: during a rolling
// update the new pod cannot get the stream until the old pod lets go, so
// readiness that waited for the upstream would deadlock the rollout.
func (s *Server) handleReadyz(w http.ResponseWriter, r *http.Request) {
	strict := r.URL.Query().Get("upstream") == "1" || r.URL.Query().Get("upstream") == "true"
	ready := !s.ShuttingDown()
	body := struct {
		Ready        bool          `json:"ready"`
		ShuttingDown bool          `json:"shuttingDown"`
		Streams      []readyStream `json:"streams"`
	}{ShuttingDown: s.ShuttingDown(), Streams: []readyStream{}}
	for _, name := range s.order {
		st := s.streams[name]
		rs := readyStream{Name: name, Upstream: []upstream.State{}}
		for _, c := range st.conns() {
			rs.Upstream = append(rs.Upstream, c.State)
		}
		if strict && !st.streaming() {
			ready = false
			rs.NotReady = "the upstream is not streaming (in cluster mode: the leading replica's)"
		}
		if err := st.readyErr(); err != nil {
			ready = false
			rs.NotReady = err.Error()
		}
		body.Streams = append(body.Streams, rs)
	}
	body.Ready = ready
	status := http.StatusOK
	if !ready {
		status = http.StatusServiceUnavailable
	}
	writeJSON(w, status, body)
}

type streamSummary struct {
	Name        string            `json:"name"`
	Endpoints   map[string]string `json:"endpoints"`
	Upstream    []upstream.State  `json:"upstream"`
	Subscribers map[string]int    `json:"subscribers"`
	Hub         fanout.Stats      `json:"hub"`
}

func (s *Server) handleStreams(w http.ResponseWriter, r *http.Request) {
	out := []streamSummary{}
	for _, name := range s.order {
		st := s.streams[name]
		sum := streamSummary{Name: name, Subscribers: st.Hub.SubscriberCounts(), Hub: st.Hub.Stats(), Upstream: []upstream.State{},
			Endpoints: map[string]string{"ws": "/v1/streams/" + name + "/ws", "sse": "/v1/streams/" + name + "/sse"}}
		for _, c := range st.conns() {
			sum.Upstream = append(sum.Upstream, c.State)
		}
		out = append(out, sum)
	}
	writeJSON(w, http.StatusOK, out)
}

type streamStatus struct {
	Name             string                    `json:"name"`
	Upstream         []upstream.ConnStatus     `json:"upstream"`
	Hub              fanout.Stats              `json:"hub"`
	SubscriberCounts map[string]int            `json:"subscriberCounts"`
	Subscribers      []fanout.SubscriberStatus `json:"subscribers"`
	Cluster          *cluster.Status           `json:"cluster,omitempty"` // cluster mode: role, leader, JetStream figures
}

// handleStatus is the operator's view: every upstream connection and every
// subscriber. It holds no secret: ConnStatus carries none.
func (s *Server) handleStatus(w http.ResponseWriter, r *http.Request) {
	body := struct {
		ShuttingDown bool           `json:"shuttingDown"`
		Demo         bool           `json:"demo"` // fault controls at /demo/ (lsmux demo only)
		Streams      []streamStatus `json:"streams"`
	}{ShuttingDown: s.ShuttingDown(), Demo: s.opts.Demo != nil, Streams: []streamStatus{}}
	for _, name := range s.order {
		st := s.streams[name]
		ss := streamStatus{Name: name, Upstream: st.conns(), Hub: st.Hub.Stats(),
			SubscriberCounts: st.Hub.SubscriberCounts(), Subscribers: st.Hub.Subscribers()}
		if cf, ok := st.Feed.(clusterFeed); ok {
			cs := cf.ClusterStatus()
			ss.Cluster = &cs
		}
		body.Streams = append(body.Streams, ss)
	}
	writeJSON(w, http.StatusOK, body)
}
