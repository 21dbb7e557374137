// Package metrics exposes lsmux in the Prometheus text format. Counters on
// the delivery path are updated once per write batch; everything the
// upstream and the hubs already count is read at scrape time, so the hot
// paths carry no extra instrumentation.
package metrics

import (
	"net/http"
	"strconv"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"lsmux/cluster"
	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/upstream"
)

var transports = []string{"ws", "sse", "ndjson"}

// Stream is what the scrape reads of one stream: its hub and the feed
// that fills it.
type Stream struct {
	Name string
	Hub  *fanout.Hub
	Feed Feed // nil: no upstream (tests)
}

// Feed is what the scrape reads of whatever fills a hub: the upstream
// pool, or cluster mode's JetStream stream.
type Feed interface {
	Conns() []upstream.ConnStatus
}

// clusterFeed is a Feed in cluster mode: its lease and JetStream figures
// are exported too.
type clusterFeed interface {
	ClusterStatus() cluster.Status
	Clustered() bool
}

// historyFeed is a Feed with durable history (LSMUX_DATA_DIR, or cluster
// mode's JetStream).
type historyFeed interface {
	HistoryStatus() cluster.HistoryStatus
}

var (
	_ Feed        = (*upstream.Pool)(nil)
	_ clusterFeed = (*cluster.Stream)(nil)
)

// Metrics is lsmux's registry.
type Metrics struct {
	reg         *prometheus.Registry
	delivered   *prometheus.CounterVec
	lag         *prometheus.HistogramVec
	gaps        *prometheus.CounterVec
	disconnects *prometheus.CounterVec
	rejected    *prometheus.CounterVec
}

// Names of every metric, for the README check.
var Names = []string{
	"lsmux_build_info", "lsmux_upstream_state", "lsmux_upstream_attempts_total", "lsmux_upstream_hits_total",
	"lsmux_upstream_bytes_total", "lsmux_upstream_duplicates_total", "lsmux_upstream_skipped_records_total",
	"lsmux_ring_hits", "lsmux_ring_bytes", "lsmux_ring_evicted_total", "lsmux_subscribers",
	"lsmux_delivered_hits_total", "lsmux_delivery_lag_seconds", "lsmux_subscriber_gaps_total",
	"lsmux_subscriber_disconnects_total", "lsmux_subscriptions_rejected_total", "lsmux_cluster_leader",
	"lsmux_cluster_leader_changes_total", "lsmux_cluster_nats_connected", "lsmux_cluster_published_total",
	"lsmux_cluster_publish_duplicates_total", "lsmux_cluster_publish_dropped_total", "lsmux_cluster_publish_buffered_bytes",
	"lsmux_cluster_consumed_seq", "lsmux_history_hits", "lsmux_history_bytes", "lsmux_history_oldest_timestamp_seconds",
	"lsmux_history_store_errors_total", "lsmux_history_store_failing", "lsmux_replays_running", "lsmux_replays_refused_total",
}

// New registers everything; each scrape reads the streams' current
// figures.
func New(version string, streams []Stream) *Metrics {
	reg := prometheus.NewRegistry()
	m := &Metrics{
		reg: reg,
		delivered: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lsmux_delivered_hits_total",
			Help: "Hits written to subscribers, by stream and transport."}, []string{"stream", "transport"}),
		lag: prometheus.NewHistogramVec(prometheus.HistogramOpts{Name: "lsmux_delivery_lag_seconds",
			Help:    "Time from reading a hit from Live Stream to writing it to a subscriber's socket (the oldest hit of each write).",
			Buckets: []float64{.0005, .001, .0025, .005, .01, .025, .05, .1, .25, .5, 1, 2.5, 5, 10, 30, 60}}, []string{"transport"}),
		gaps: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lsmux_subscriber_gaps_total",
			Help: "Gap notices: a subscriber fell behind the ring (or resumed from too far back)."}, []string{"stream", "transport"}),
		disconnects: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lsmux_subscriber_disconnects_total",
			Help: "Subscriber connections ended, by reason (see proxy/disconnect.go)."}, []string{"stream", "transport", "reason"}),
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lsmux_subscriptions_rejected_total",
			Help: "Requests refused before they became subscriptions, by reason: auth, origin, host, limit_total, limit_per_address, compile_rate, replays (LSMUX_MAX_REPLAYS)."}, []string{"reason"}),
	}
	// Zero series for every stream and transport, so dashboards and alerts
	// see the metrics before the first event.
	for _, st := range streams {
		for _, t := range transports {
			m.delivered.WithLabelValues(st.Name, t)
			m.gaps.WithLabelValues(st.Name, t)
			for _, reason := range proxy.DisconnectReasons {
				m.disconnects.WithLabelValues(st.Name, t, reason)
			}
		}
	}
	for _, reason := range proxy.RejectReasons {
		m.rejected.WithLabelValues(reason)
	}
	build := prometheus.NewGauge(prometheus.GaugeOpts{Name: "lsmux_build_info", Help: "Always 1; the version is a label.",
		ConstLabels: prometheus.Labels{"version": version}})
	build.Set(1)
	reg.MustRegister(m.delivered, m.lag, m.gaps, m.disconnects, m.rejected, build,
		&snapshot{streams: streams},
		collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	return m
}

// Handler serves /metrics.
func (m *Metrics) Handler() http.Handler {
	return promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{})
}

// Delivered counts n hits written in one batch whose oldest hit was read
// from upstream at oldest.
func (m *Metrics) Delivered(stream, transport string, n int, oldest time.Time) {
	m.delivered.WithLabelValues(stream, transport).Add(float64(n))
	if !oldest.IsZero() {
		m.lag.WithLabelValues(transport).Observe(time.Since(oldest).Seconds())
	}
}

// Gap counts a gap notice.
func (m *Metrics) Gap(stream, transport string) { m.gaps.WithLabelValues(stream, transport).Inc() }

// Disconnected counts a subscriber leaving.
func (m *Metrics) Disconnected(stream, transport, reason string) {
	m.disconnects.WithLabelValues(stream, transport, reason).Inc()
}

// Rejected counts a refused subscription.
func (m *Metrics) Rejected(reason string) { m.rejected.WithLabelValues(reason).Inc() }

var (
	descState = prometheus.NewDesc("lsmux_upstream_state", "1 for the state each upstream connection is in (connecting, streaming, waiting, failing), 0 for the others.",
		[]string{"stream", "conn", "state"}, nil)
	descAttempts = prometheus.NewDesc("lsmux_upstream_attempts_total", "Upstream connection attempts by result: the HTTP status, network or token.",
		[]string{"stream", "conn", "result"}, nil)
	descHits       = prometheus.NewDesc("lsmux_upstream_hits_total", "Hits read from Live Stream (after dedup).", []string{"stream", "conn"}, nil)
	descBytes      = prometheus.NewDesc("lsmux_upstream_bytes_total", "Bytes of hits read from Live Stream (decompressed).", []string{"stream", "conn"}, nil)
	descDuplicates = prometheus.NewDesc("lsmux_upstream_duplicates_total", "Duplicate hits dropped.", []string{"stream", "conn"}, nil)
	descSkipped    = prometheus.NewDesc("lsmux_upstream_skipped_records_total", "Records skipped: invalid (not a JSON object) or oversized.",
		[]string{"stream", "conn", "reason"}, nil)
	descRingHits    = prometheus.NewDesc("lsmux_ring_hits", "Hits held for resume and slow subscribers.", []string{"stream"}, nil)
	descRingBytes   = prometheus.NewDesc("lsmux_ring_bytes", "Bytes held in the ring.", []string{"stream"}, nil)
	descRingEvicted = prometheus.NewDesc("lsmux_ring_evicted_total", "Hits dropped from the ring to stay within its bounds.", []string{"stream"}, nil)
	descSubscribers = prometheus.NewDesc("lsmux_subscribers", "Connected subscribers by transport.", []string{"stream", "transport"}, nil)
	descLeader      = prometheus.NewDesc("lsmux_cluster_leader", "1 while this replica leads the stream (cluster mode).", []string{"stream"}, nil)
	descLeaderChg   = prometheus.NewDesc("lsmux_cluster_leader_changes_total", "Times this replica took or lost the stream's lease.", []string{"stream"}, nil)
	descNATS        = prometheus.NewDesc("lsmux_cluster_nats_connected", "1 while this replica is connected to NATS.", []string{"stream"}, nil)
	descPublished   = prometheus.NewDesc("lsmux_cluster_published_total", "Hits this replica published to JetStream as leader.", []string{"stream"}, nil)
	descPubDup      = prometheus.NewDesc("lsmux_cluster_publish_duplicates_total", "Hits published again that JetStream already held (its duplicate window dropped them).", []string{"stream"}, nil)
	descPubDropped  = prometheus.NewDesc("lsmux_cluster_publish_dropped_total", "Hits lost before JetStream: the leader's buffer was full or a hit exceeded NATS max_payload.", []string{"stream"}, nil)
	descPubBuffered = prometheus.NewDesc("lsmux_cluster_publish_buffered_bytes", "Bytes of hits the leader holds that JetStream has not acknowledged.", []string{"stream"}, nil)
	descConsumed    = prometheus.NewDesc("lsmux_cluster_consumed_seq", "Last JetStream sequence this replica read into its hub.", []string{"stream"}, nil)
	descHistHits    = prometheus.NewDesc("lsmux_history_hits", "Hits held in durable history (JetStream).", []string{"stream"}, nil)
	descHistBytes   = prometheus.NewDesc("lsmux_history_bytes", "Bytes of durable history on disk.", []string{"stream"}, nil)
	descHistOldest  = prometheus.NewDesc("lsmux_history_oldest_timestamp_seconds", "When the oldest hit in durable history was stored (Unix seconds).", []string{"stream"}, nil)
	descHistErrors  = prometheus.NewDesc("lsmux_history_store_errors_total", "Writes to durable history that failed (a full disk, an I/O error).", []string{"stream"}, nil)
	descHistFailing = prometheus.NewDesc("lsmux_history_store_failing", "1 while writes to durable history fail (live subscribers are served from memory).", []string{"stream"}, nil)
	descReplays     = prometheus.NewDesc("lsmux_replays_running", "Subscribers reading history older than the ring.", []string{"stream"}, nil)
	descReplaysRef  = prometheus.NewDesc("lsmux_replays_refused_total", "Resumes refused with 503 because LSMUX_MAX_REPLAYS replays were running.", []string{"stream"}, nil)
)

// snapshot reads what upstream and hubs count, at scrape time.
type snapshot struct{ streams []Stream }

func (s *snapshot) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descState, descAttempts, descHits, descBytes, descDuplicates, descSkipped,
		descRingHits, descRingBytes, descRingEvicted, descSubscribers, descLeader, descLeaderChg, descNATS, descPublished,
		descPubDup, descPubDropped, descPubBuffered, descConsumed, descHistHits, descHistBytes, descHistOldest, descHistErrors,
		descHistFailing, descReplays, descReplaysRef} {
		ch <- d
	}
}

func (s *snapshot) Collect(ch chan<- prometheus.Metric) {
	for _, st := range s.streams {
		if st.Feed != nil {
			for _, c := range st.Feed.Conns() {
				conn := itoa(c.Slot)
				for _, state := range upstream.States {
					v := 0.0
					if c.State == state {
						v = 1
					}
					ch <- prometheus.MustNewConstMetric(descState, prometheus.GaugeValue, v, st.Name, conn, string(state))
				}
				for result, n := range c.Results {
					ch <- prometheus.MustNewConstMetric(descAttempts, prometheus.CounterValue, float64(n), st.Name, conn, result)
				}
				ch <- prometheus.MustNewConstMetric(descHits, prometheus.CounterValue, float64(c.Hits), st.Name, conn)
				ch <- prometheus.MustNewConstMetric(descBytes, prometheus.CounterValue, float64(c.Bytes), st.Name, conn)
				ch <- prometheus.MustNewConstMetric(descDuplicates, prometheus.CounterValue, float64(c.Duplicates), st.Name, conn)
				ch <- prometheus.MustNewConstMetric(descSkipped, prometheus.CounterValue, float64(c.Invalid), st.Name, conn, "invalid")
				ch <- prometheus.MustNewConstMetric(descSkipped, prometheus.CounterValue, float64(c.Oversized), st.Name, conn, "oversized")
			}
		}
		hs := st.Hub.Stats()
		ch <- prometheus.MustNewConstMetric(descRingHits, prometheus.GaugeValue, float64(hs.Hits), st.Name)
		ch <- prometheus.MustNewConstMetric(descRingBytes, prometheus.GaugeValue, float64(hs.Bytes), st.Name)
		ch <- prometheus.MustNewConstMetric(descRingEvicted, prometheus.CounterValue, float64(hs.Evicted), st.Name)
		counts := st.Hub.SubscriberCounts()
		for _, t := range transports {
			ch <- prometheus.MustNewConstMetric(descSubscribers, prometheus.GaugeValue, float64(counts[t]), st.Name, t)
		}
		if cf, ok := st.Feed.(clusterFeed); ok && cf.Clustered() {
			cs := cf.ClusterStatus()
			gauge := func(d *prometheus.Desc, v float64) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, st.Name)
			}
			counter := func(d *prometheus.Desc, v uint64) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), st.Name)
			}
			gauge(descLeader, boolValue(cs.Role == "leader"))
			gauge(descNATS, boolValue(cs.NATS == "connected"))
			gauge(descPubBuffered, float64(cs.Publish.BufferedB))
			gauge(descConsumed, float64(cs.ConsumedSeq))
			counter(descLeaderChg, cs.LeaderChanges)
			counter(descPublished, cs.Publish.Published)
			counter(descPubDup, cs.Publish.Duplicates)
			counter(descPubDropped, cs.Publish.Dropped)
		}
		if hf, ok := st.Feed.(historyFeed); ok {
			hs := hf.HistoryStatus()
			gauge := func(d *prometheus.Desc, v float64) {
				ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, st.Name)
			}
			gauge(descHistHits, float64(hs.Hits))
			gauge(descHistBytes, float64(hs.Bytes))
			if !hs.Oldest.IsZero() {
				gauge(descHistOldest, float64(hs.Oldest.UnixNano())/1e9)
			}
			gauge(descHistFailing, boolValue(hs.Failing))
			gauge(descReplays, float64(hs.ReplaysRunning))
			ch <- prometheus.MustNewConstMetric(descHistErrors, prometheus.CounterValue, float64(hs.StoreErrors), st.Name)
			ch <- prometheus.MustNewConstMetric(descReplaysRef, prometheus.CounterValue, float64(hs.ReplaysRefused), st.Name)
		}
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func boolValue(b bool) float64 {
	if b {
		return 1
	}
	return 0
}
