package simulator

import (
	"encoding/json"
	"net/http"
	"sort"
	"time"
)

// Fault is one upstream fault a person can inject from the demo's
// dashboard, to watch lsmux keep its subscribers while it waits out the
// reconnect delay.
type Fault struct {
	Name string `json:"name"`
	What string `json:"what"`
	do   func()
}

// Faults lists the faults FaultHandler offers. delay is lsmux's reconnect
// delay: the flap penalty lasts twice as long, so the demo shows a 503
// answered with a longer wait.
func (s *Server) Faults(delay time.Duration) []Fault {
	return []Fault{
		{"drop", "drop the upstream connection", s.DropConnections},
		{"conflicts", "drop it, then answer the next 3 connects with 409", func() { s.FailNext(3, http.StatusConflict); s.DropConnections() }},
		{"flap", "drop it with a flap penalty: connects within twice the reconnect delay get 503", func() {
			s.SetFlapPenalty(2*delay, http.StatusServiceUnavailable)
			s.DropConnections()
		}},
		{"stall", "send nothing for 10 s (under the stall timeout: lsmux keeps the connection)", func() { s.Stall(10 * time.Second) }},
	}
}

// FaultHandler serves the fault switchboard: GET / lists the faults
// ({"faults": {name: what}}), POST /faults/{name} injects one. lsmux demo
// mounts it at /demo/, behind lsmux's own auth and Origin checks.
func (s *Server) FaultHandler(delay time.Duration) http.Handler {
	faults := map[string]Fault{}
	for _, f := range s.Faults(delay) {
		faults[f.Name] = f
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /{$}", func(w http.ResponseWriter, r *http.Request) {
		list := map[string]string{}
		names := make([]string, 0, len(faults))
		for name, f := range faults {
			list[name] = f.What
			names = append(names, name)
		}
		sort.Strings(names)
		writeJSON(w, http.StatusOK, map[string]any{"faults": list, "order": names})
	})
	mux.HandleFunc("POST /faults/{name}", func(w http.ResponseWriter, r *http.Request) {
		f, ok := faults[r.PathValue("name")]
		if !ok {
			writeJSON(w, http.StatusNotFound, map[string]string{"error": "no fault named " + r.PathValue("name") + "; GET /demo/ lists them"})
			return
		}
		f.do()
		writeJSON(w, http.StatusOK, map[string]string{"injected": f.What})
	})
	return mux
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	json.NewEncoder(w).Encode(v)
}
