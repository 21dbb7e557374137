package main

import (
	"encoding/json"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"lsmux/proxy/proxytest"
	"lsmux/upstream/simulator"
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
// checkNoOverlapSeenByReplicas is checkNoOverlap with the replicas' own
// close times (nil: none). The simulator notes a connection's end when its
// handler gets to run, which on a busy machine can be after the next
// attempt arrived, and refuses that attempt as one too many. Such a
// refusal is the simulator's, not lsmux's, when a replica's own log
// closed the previous connection before the attempt started.
func checkNoOverlapSeenByReplicas(t *testing.T, sim *simulator.Server, closes []time.Time) {
	t.Helper()
	if peak := sim.PeakActive("demo"); peak != 1 {
		t.Errorf("the simulator saw %d upstream connections open at once, want 1", peak)
	}
	opens := upstreamOpens(sim)
	for i := 1; i < len(opens); i++ {
		if opens[i].Start.Before(opens[i-1].End) {
			t.Errorf("upstream connection %d opened at %s, before connection %d closed at %s", opens[i].ID,
				opens[i].Start.Format("15:04:05.000"), opens[i-1].ID, opens[i-1].End.Format("15:04:05.000"))
		}
	}
	for _, a := range sim.Attempts() {
		if a.Status == http.StatusOK {
			continue
		}
		var prev *simulator.Attempt
		for j := range opens {
			if opens[j].Start.Before(a.Start) {
				prev = &opens[j]
			}
		}
		closedFirst := false
		for _, c := range closes {
			if prev != nil && c.After(prev.Start) && !c.After(a.Start) {
				closedFirst = true
			}
		}
		if a.Status == http.StatusConflict && strings.Contains(a.Reason, "too many connections") && closedFirst {
			t.Logf("upstream attempt %d was refused by the simulator's late bookkeeping: a replica had closed connection %d before it", a.ID, prev.ID)
			continue
		}
		t.Errorf("upstream attempt %d was answered %d (%s)", a.ID, a.Status, a.Reason)
	}
}

// oneLeader waits until exactly one replica says it leads and returns
// it, from that same look (asking again could meet a replica too busy to
// answer in time).
func oneLeader(t *testing.T, roots []string) int {
	t.Helper()
	leader := -1
	waitFor(t, 30*time.Second, "one leader", func() bool {
		if l := leaders(roots); len(l) == 1 {
			leader = l[0]
			return true
		}
		return false
	})
	return leader
}

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

// listenLine finds where a child lsmux listens in its output: the
// "lsmux serving" log line (JSON or text) or the demo's banner.
var listenLine = regexp.MustCompile(`"listen":"([^"]+)"|listen="?([0-9.:\[\]]+)"?|Open the dashboard:\s+http://([^/\s]+)/`)

// childAddr waits for a child lsmux started with -listen 127.0.0.1:0 to
// say where it listens. (Picking a free port here and handing it over
// would race with every other test on the machine.)
func childAddr(t *testing.T, out *syncBuf) string {
	t.Helper()
	var addr string
	waitFor(t, 20*time.Second, "the child to say where it listens", func() bool {
		for _, m := range listenLine.FindAllStringSubmatch(out.String(), -1) {
			for _, g := range m[1:] {
				if g != "" && !strings.HasSuffix(g, ":0") {
					addr = g
					return true
				}
			}
		}
		return false
	})
	return addr
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
