package proxy

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/sirupsen/logrus"
	"github.com/sirupsen/logrus/hooks/test"

	"lsmux/fanout"
)

// panickyEncoder is the WebSocket format with a bug: it panics on hit 2.
type panickyEncoder struct{ wsEncoder }

func (panickyEncoder) hit(b *batch, e *fanout.Entry) {
	if e.Seq == 2 {
		panic("encoder bug")
	}
	b.add(e.WSFrame())
}

// fakePeer is a client that takes every write until it leaves.
type fakePeer struct {
	leaving chan struct{}
	closed  chan struct{}
}

func (p *fakePeer) send(*batch, time.Time) error { return nil }
func (p *fakePeer) gone() <-chan struct{}        { return p.leaving }
func (p *fakePeer) watch(_, left func()) func() {
	stop := make(chan struct{})
	go func() {
		select {
		case <-p.leaving:
			left()
		case <-stop:
		}
	}()
	return func() { close(stop) }
}
func (p *fakePeer) left() (string, []byte) { return reasonClient, nil }
func (p *fakePeer) control() []byte        { return nil }
func (p *fakePeer) awaitClose(time.Time)   {}
func (p *fakePeer) close()                 { close(p.closed) }

// fastPeer is a fakePeer the hub's notifier may write to itself
// (tryWriter), as a TCP connection.
type fastPeer struct{ *fakePeer }

func (fastPeer) tryWrite(*batch) bool { return true }
func (fastPeer) canTry() bool         { return true }
func (fastPeer) pending() bool        { return false }

// TestPanicServingASubscriberEndsOnlyThatSubscriber: a bug that panics
// while a subscriber is served (here its encoder), by a writer goroutine
// or by the hub's notifier, closes that connection, counts it as
// internal-error and logs the stack; the process and the other
// subscribers go on.
func TestPanicServingASubscriberEndsOnlyThatSubscriber(t *testing.T) {
	for _, fast := range []bool{false, true} {
		t.Run(map[bool]string{false: "writer", true: "notifier"}[fast], func(t *testing.T) { testPanicIsContained(t, fast) })
	}
}

func testPanicIsContained(t *testing.T, fast bool) {
	log, hook := test.NewNullLogger()
	hub := fanout.NewHub(fanout.Options{FirstSeq: 1})
	srv := New([]*Stream{{Name: "s", Hub: hub}}, Options{Logger: log})
	st := srv.streams["s"]
	open := func(enc encoder) (*session, *fakePeer) {
		p := &fakePeer{leaving: make(chan struct{}), closed: make(chan struct{})}
		var as peer = p
		if fast {
			as = fastPeer{p}
		}
		ss := srv.startSession(context.Background(), st, "ws", hub.Subscribe(fanout.Live, fanout.Info{}, nil), enc, as, nil)
		if (ss.tw != nil) != fast {
			t.Fatalf("session served by the notifier %v, want %v", ss.tw != nil, fast)
		}
		return ss, p
	}
	buggy, buggyPeer := open(panickyEncoder{})
	healthy, healthyPeer := open(wsEncoder{})
	hub.Append([]byte(`{"a":1}`), time.Now())
	hub.Append([]byte(`{"a":2}`), time.Now())
	select {
	case <-buggy.done:
	case <-time.After(10 * time.Second):
		t.Fatal("the session whose encoder panicked did not end")
	}
	select {
	case <-buggyPeer.closed:
	default:
		t.Error("its connection was not closed")
	}
	if got := st.disconnects.snapshot()[reasonInternal]; got != 1 {
		t.Errorf("internal-error disconnects %d, want 1", got)
	}
	var logged bool
	for _, e := range hook.AllEntries() {
		logged = logged || (e.Level == logrus.ErrorLevel && strings.Contains(e.Data["stack"].(string), "panickyEncoder"))
	}
	if !logged {
		t.Error("no error logged with the panic's stack")
	}
	hub.Append([]byte(`{"a":3}`), time.Now())
	waitForCursor := time.Now().Add(10 * time.Second)
	for healthy.sub.Cursor() < 4 {
		if time.Now().After(waitForCursor) {
			t.Fatalf("the healthy subscriber stopped at %d after the other one's panic", healthy.sub.Cursor())
		}
		time.Sleep(5 * time.Millisecond) // polling a condition, with the deadline above
	}
	close(healthyPeer.leaving) // the client leaves: the session ends and nothing is left running
	<-healthy.done
}
