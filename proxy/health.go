package proxy

import (
	"net/http"

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
	ready := !s.leaving()
	body := struct {
		Ready        bool          `json:"ready"`
		ShuttingDown bool          `json:"shuttingDown"`
		Streams      []readyStream `json:"streams"`
	}{ShuttingDown: s.leaving(), Streams: []readyStream{}}
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
