package proxy

import (
	"lsmux/cluster"
	"lsmux/fanout"
	"lsmux/upstream"
)

// Stream is one Live Stream endpoint as the proxy serves it: the hub that
// subscribers read and the feed that fills it.
type Stream struct {
	Name string
	Hub  *fanout.Hub
	Feed Feed // nil: no upstream at all (tests); always ready

	disconnects disconnectCounts // set by New
}

// Feed is what the proxy needs of whatever fills a stream's hub: the plain
// upstream pool (upstream.Pool), or cluster mode's JetStream stream
// (cluster.Stream). Nothing here lets a subscriber touch the upstream.
type Feed interface {
	// Conns is a snapshot of every upstream connection slot, for status
	// and readiness.
	Conns() []upstream.ConnStatus
	// Streaming reports whether the stream's upstream is streaming; in
	// cluster mode the leading replica's, wherever it runs (the local
	// slots of a follower never stream). /readyz?upstream=1 asks it.
	Streaming() bool
	// ServeErr says why subscribers cannot be served now (a replica that
	// has not reached JetStream has no sequence numbers to give): they
	// get 503 with it. nil: they can.
	ServeErr() error
	// ReadyErr says why this instance should get no new traffic (ServeErr
	// included), for /readyz. nil: ready.
	ReadyErr() error
}

// clusterFeed is a Feed that takes part in cluster mode: /v1/status shows
// its view as the stream's "cluster" object.
type clusterFeed interface {
	ClusterStatus() cluster.Status
	Clustered() bool // false for a single lsmux's own store
}

// historyFeed is a Feed with durable history (LSMUX_DATA_DIR, or cluster
// mode's JetStream): /v1/status shows it as the stream's "history".
type historyFeed interface {
	HistoryStatus() cluster.HistoryStatus
}

var (
	_ Feed        = (*upstream.Pool)(nil)
	_ Feed        = (*cluster.Stream)(nil)
	_ clusterFeed = (*cluster.Stream)(nil)
	_ historyFeed = (*cluster.Stream)(nil)
)

// conns is a stream's connection slots (none without a feed).
func (st *Stream) conns() []upstream.ConnStatus {
	if st.Feed == nil {
		return []upstream.ConnStatus{}
	}
	if c := st.Feed.Conns(); c != nil {
		return c
	}
	return []upstream.ConnStatus{}
}

func (st *Stream) serveErr() error {
	if st.Feed == nil {
		return nil
	}
	return st.Feed.ServeErr()
}

func (st *Stream) readyErr() error {
	if st.Feed == nil {
		return nil
	}
	return st.Feed.ReadyErr()
}

// streaming answers /readyz?upstream=1 for the stream: a stream without a
// feed has no upstream to wait for.
func (st *Stream) streaming() bool { return st.Feed == nil || st.Feed.Streaming() }
