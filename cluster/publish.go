package cluster

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
	"github.com/sirupsen/logrus"

	"lsmux/upstream"
)

// publishBatch is how many hits are in flight to JetStream at once.
const publishBatch = 256

// publisher carries the leader's hits to JetStream. The upstream reader
// only appends to its queue (it never waits for NATS); one goroutine
// publishes in order, retrying what JetStream did not acknowledge. Every
// message carries the hit id as its message id, so a retry (or another
// leader's backfill) that JetStream already stored is answered as a
// duplicate instead of stored twice. While NATS is unreachable it holds
// the hits rather than piling copies into the client's reconnect buffer.
type publisher struct {
	js        jetstream.JetStream
	connected func() bool
	subject   string
	maxBytes  int64
	retry     time.Duration
	log       logrus.FieldLogger
	logs      logLimiter

	// onStored, when set (a solo stream), gets every hit the store took
	// under its number, in order, from the acknowledgements.
	onStored func(seq uint64, m outMsg)

	mu     sync.Mutex
	q      []outMsg
	head   int
	qBytes int64
	wake   chan struct{}

	published, duplicates, dropped atomic.Uint64
	lastErr                        atomic.Pointer[string]
}

type outMsg struct {
	id       string
	data     []byte
	received time.Time // when the upstream reader got it
	lost     bool      // a placeholder (solo.go)
}

func newPublisher(js jetstream.JetStream, connected func() bool, subject string, maxBytes int64, retry time.Duration, log logrus.FieldLogger) *publisher {
	return &publisher{js: js, connected: connected, subject: subject, maxBytes: maxBytes, retry: retry, log: log,
		wake: make(chan struct{}, 1), logs: logLimiter{every: 10 * time.Second}}
}

// MsgID is the JetStream message id of a hit: its hitIdHigh-hitIdLow, or
// for a hit without ids a hash of its bytes (identical bytes are the same
// hit republished).
func MsgID(h upstream.Hit) string {
	if h.HasID {
		return strconv.FormatUint(h.ID.High, 10) + "-" + strconv.FormatUint(h.ID.Low, 10)
	}
	sum := sha256.Sum256(h.Raw)
	return "sha256-" + hex.EncodeToString(sum[:16])
}

// add queues a hit (copying it: h.Raw is only valid during the call). It
// never blocks; past the bound the hit is dropped and counted, loudly.
func (p *publisher) add(h upstream.Hit) {
	m := outMsg{id: MsgID(h), data: append([]byte(nil), h.Raw...), received: h.Received}
	p.mu.Lock()
	if p.qBytes+int64(len(m.data)) > p.maxBytes {
		p.mu.Unlock()
		p.dropped.Add(1)
		if p.logs.allow("full") {
			p.log.WithField("buffered_bytes", p.maxBytes).Error("cluster: cannot publish to NATS and the buffer is full: hits are being dropped (raise LSMUX_NATS_BUFFER_BYTES or restore NATS)")
		}
		return
	}
	p.q = append(p.q, m)
	p.qBytes += int64(len(m.data))
	p.mu.Unlock()
	p.poke()
}

// poke wakes run (a hit was queued, or draining began).
func (p *publisher) poke() {
	select {
	case p.wake <- struct{}{}:
	default:
	}
}

// pending is the number and size of hits not yet acknowledged.
func (p *publisher) pending() (int, int64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.q) - p.head, p.qBytes
}

// peek returns up to n queued hits, oldest first, without removing them.
func (p *publisher) peek(n int) []outMsg {
	p.mu.Lock()
	defer p.mu.Unlock()
	end := min(p.head+n, len(p.q))
	return append([]outMsg(nil), p.q[p.head:end]...)
}

// take removes the queued hit with message id id from the first
// publishBatch (a batch that failed midway: the store kept some of it).
func (p *publisher) take(id string) (outMsg, bool) {
	p.mu.Lock()
	defer p.mu.Unlock()
	end := min(p.head+publishBatch, len(p.q))
	for i := p.head; i < end; i++ {
		if m := p.q[i]; m.id == id {
			p.qBytes -= int64(len(m.data))
			copy(p.q[p.head+1:i+1], p.q[p.head:i])
			p.q[p.head] = outMsg{}
			p.head++
			if p.head == len(p.q) {
				p.q, p.head = p.q[:0], 0
			}
			return m, true
		}
	}
	return outMsg{}, false
}

// remove drops the first n queued hits (acknowledged, or impossible).
func (p *publisher) remove(n int) {
	p.mu.Lock()
	defer p.mu.Unlock()
	for i := p.head; i < p.head+n; i++ {
		p.qBytes -= int64(len(p.q[i].data))
		p.q[i] = outMsg{}
	}
	p.head += n
	if p.head == len(p.q) {
		p.q, p.head = p.q[:0], 0
	} else if p.head > 1024 && p.head > len(p.q)/2 {
		p.q = append(p.q[:0], p.q[p.head:]...)
		p.head = 0
	}
}

// run publishes until ctx ends. With drain set it also returns once the
// queue is empty (shutdown: the upstream has stopped adding).
func (p *publisher) run(ctx context.Context, drain *atomic.Bool) {
	wait := p.retry / 4
	for ctx.Err() == nil {
		batch, stop := p.next(ctx, drain)
		if stop {
			return
		}
		var err error
		if p.connected() {
			var done int
			done, err = p.publish(ctx, batch)
			p.remove(done)
			if err == nil {
				wait = p.retry / 4
				continue
			}
		} else {
			err = errors.New("not connected to NATS")
		}
		if ctx.Err() != nil {
			return
		}
		msg := err.Error()
		p.lastErr.Store(&msg)
		if p.logs.allow("publish") {
			n, size := p.pending()
			p.log.WithField("buffered", n).WithField("buffered_bytes", size).Warnf("cluster: publishing hits to JetStream failed, retrying (they are held, up to LSMUX_NATS_BUFFER_BYTES): %v", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, 4*p.retry)
	}
}

// next waits for hits to publish and returns the next batch, or stop when
// ctx ended or, with drain set, the queue is empty.
func (p *publisher) next(ctx context.Context, drain *atomic.Bool) (batch []outMsg, stop bool) {
	for {
		if batch = p.peek(publishBatch); len(batch) > 0 {
			return batch, false
		}
		if drain.Load() {
			return nil, true
		}
		select {
		case <-ctx.Done():
			return nil, true
		case <-p.wake:
		}
	}
}

// publish sends a batch and waits for its acknowledgements. It returns how
// many hits from the front are settled (stored, duplicates, or dropped as
// impossible) and the error that stopped the rest. Hits after a failed one
// are sent again even if they were stored: the message id makes those
// duplicates. Order is kept, except that a hit JetStream refused while it
// stored later ones is stored after them when it is retried.
func (p *publisher) publish(ctx context.Context, batch []outMsg) (int, error) {
	futures := make([]jetstream.PubAckFuture, 0, len(batch))
	var sendErr error
	for _, m := range batch {
		f, err := p.js.PublishAsync(p.subject, m.data, jetstream.WithMsgID(m.id))
		if err != nil {
			if errors.Is(err, nats.ErrMaxPayload) {
				futures = append(futures, nil) // cannot ever be published
				continue
			}
			sendErr = err
			break
		}
		futures = append(futures, f)
	}
	for i, f := range futures {
		if f == nil {
			p.dropped.Add(1)
			p.log.WithField("msg_id", batch[i].id).WithField("bytes", len(batch[i].data)).Error("cluster: a hit is larger than the NATS server's max_payload and was dropped; raise max_payload on the NATS server")
			continue
		}
		select {
		case <-ctx.Done():
			return i, ctx.Err()
		case ack := <-f.Ok():
			if ack.Duplicate {
				p.duplicates.Add(1)
			} else {
				p.published.Add(1)
				if p.onStored != nil {
					p.onStored(ack.Sequence, batch[i])
				}
			}
		case err := <-f.Err():
			p.settle(ctx, futures[i+1:])
			return i, err
		}
	}
	return len(futures), sendErr
}

// settle waits for the answers to a failed batch's remaining publishes, so
// they no longer count against the client's limit of pending ones when the
// batch is retried.
func (p *publisher) settle(ctx context.Context, futures []jetstream.PubAckFuture) {
	for _, f := range futures {
		if f == nil {
			continue
		}
		select {
		case <-ctx.Done():
			return
		case <-f.Ok():
		case <-f.Err():
		}
	}
}

// PublishStatus is the leader's side of the JetStream stream.
type PublishStatus struct {
	Published  uint64 `json:"published"`
	Duplicates uint64 `json:"duplicates"` // republished hits JetStream already had
	Dropped    uint64 `json:"dropped"`    // hits lost: buffer full or too large for NATS
	Buffered   int    `json:"buffered"`
	BufferedB  int64  `json:"bufferedBytes"`
	LastError  string `json:"lastError,omitempty"`
}

func (p *publisher) status() PublishStatus {
	n, size := p.pending()
	st := PublishStatus{Published: p.published.Load(), Duplicates: p.duplicates.Load(), Dropped: p.dropped.Load(), Buffered: n, BufferedB: size}
	if e := p.lastErr.Load(); e != nil && n > 0 {
		st.LastError = *e
	}
	return st
}
