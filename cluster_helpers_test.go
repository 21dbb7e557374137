package main

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sync"
	"testing"

	"lsmux/proxy/proxytest"
)

// clusterView is what the tests read of /v1/status and /readyz.
type clusterView struct {
	Role          string `json:"role"`
	Leader        string `json:"leader"`
	NATS          string `json:"nats"`
	ConsumedSeq   uint64 `json:"consumedSeq"`
	LeaseRevision uint64 `json:"leaseRevision"`
	Ready         bool   `json:"ready"`
	Publish       struct {
		Published, Duplicates, Dropped uint64
	} `json:"publish"`
}

func clusterStatus(root string) (clusterView, error) {
	var body struct {
		Streams []struct {
			Cluster clusterView `json:"cluster"`
		} `json:"streams"`
	}
	resp, err := http.Get(root + "/v1/status")
	if err != nil {
		return clusterView{}, err
	}
	defer resp.Body.Close()
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		return clusterView{}, err
	}
	if len(body.Streams) == 0 {
		return clusterView{}, io.ErrUnexpectedEOF
	}
	return body.Streams[0].Cluster, nil
}

func readyStatus(root string) int {
	resp, err := http.Get(root + "/readyz")
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

// leaders returns the indexes of the replicas that say they lead.
func leaders(roots []string) []int {
	var out []int
	for i, r := range roots {
		if v, err := clusterStatus(r); err == nil && v.Role == "leader" {
			out = append(out, i)
		}
	}
	return out
}

var (
	binOnce sync.Once
	binPath string
	binErr  error
	binDir  string
)

// lsmuxBinary builds the lsmux binary once per test run.
func lsmuxBinary(t *testing.T) string {
	t.Helper()
	binOnce.Do(func() {
		binDir, binErr = os.MkdirTemp("", "lsmux-bin-")
		if binErr != nil {
			return
		}
		binPath = filepath.Join(binDir, "lsmux")
		out, err := exec.Command("go", "build", "-o", binPath, ".").CombinedOutput()
		if err != nil {
			binErr = &buildError{err: err, out: string(out)}
		}
	})
	if binErr != nil {
		t.Fatalf("build lsmux: %v", binErr)
	}
	return binPath
}

type buildError struct {
	err error
	out string
}

func (e *buildError) Error() string { return e.err.Error() + "\n" + e.out }

// freeAddr returns a loopback address nothing listens on (for a child
// process, which must be told its address up front).
func freeAddr(t *testing.T) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	return ln.Addr().String()
}

// subscribeFromOldest opens a WebSocket subscriber from the oldest hit on
// each stream base URL and collects what each gets.
func subscribeFromOldest(t *testing.T, bases []string) []*collected {
	t.Helper()
	var subs []*collected
	for _, base := range bases {
		ws, _, err := proxytest.DialWS(base+"/ws?from=oldest", nil)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(ws.Close)
		subs = append(subs, collect(ws.Msgs))
	}
	return subs
}
