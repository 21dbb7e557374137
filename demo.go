package main

import (
	"encoding/json"
	"net/http"
	"time"

	"github.com/go-chi/chi/v5"

	"lsmux/upstream/simulator"
)

// demoFaults lets the dashboard inject upstream faults into the demo's
// simulator, so a newcomer can watch lsmux keep its subscribers while it
// waits out the reconnect delay. It exists only in `lsmux demo`.
func demoFaults(sim *simulator.Server, delay time.Duration) http.Handler {
	faults := map[string]struct {
		what string
		do   func()
	}{
		"drop":      {"drop the upstream connection", sim.DropConnections},
		"conflicts": {"drop it, then answer the next 3 connects with 409", func() { sim.FailNext(3, http.StatusConflict); sim.DropConnections() }},
		"flap":      {"drop it with a flap penalty: connects within twice the reconnect delay get 503", func() { sim.SetFlapPenalty(2*delay, http.StatusServiceUnavailable); sim.DropConnections() }},
		"stall":     {"send nothing for 10 s (under the stall timeout: lsmux keeps the connection)", func() { sim.Stall(10 * time.Second) }},
	}
	r := chi.NewRouter()
	r.Get("/", func(w http.ResponseWriter, r *http.Request) {
		list := map[string]string{}
		for k, f := range faults {
			list[k] = f.what
		}
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{"faults": list})
	})
	r.Post("/faults/{kind}", func(w http.ResponseWriter, r *http.Request) {
		f, ok := faults[chi.URLParam(r, "kind")]
		w.Header().Set("Content-Type", "application/json")
		if !ok {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(map[string]string{"error": "no such fault"})
			return
		}
		f.do()
		json.NewEncoder(w).Encode(map[string]string{"injected": f.what})
	})
	return r
}
