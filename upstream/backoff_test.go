package upstream

import (
	"context"
	"testing"
	"testing/synctest"
	"time"

	"lsmux/internal/wait"
)

func noJitter(p Policy) *Backoff {
	p.Jitter = -1
	return NewBackoff(p)
}

func TestBackoffLostWaitsTheDelay(t *testing.T) {
	b := noJitter(DefaultPolicy())
	if got := b.Next(Lost, 10*time.Minute); got != 60*time.Second {
		t.Fatalf("after a healthy stream is lost: wait %v, want 60s", got)
	}
}

func TestBackoffRefusalsDoubleToTheCap(t *testing.T) {
	b := noJitter(DefaultPolicy())
	want := []time.Duration{60 * time.Second, 120 * time.Second, 240 * time.Second, 300 * time.Second, 300 * time.Second}
	for i, w := range want {
		if got := b.Next(Refused, 0); got != w {
			t.Fatalf("refusal %d: wait %v, want %v", i+1, got, w)
		}
	}
	// A connection that streams long enough starts the doubling over.
	if got := b.Next(Lost, 5*time.Minute); got != 60*time.Second {
		t.Fatalf("after a healthy stream: wait %v, want 60s", got)
	}
	if got := b.Next(Refused, 0); got != 120*time.Second {
		t.Fatalf("refusal right after the loss: wait %v, want 120s", got)
	}
}

func TestBackoffShortStreamsKeepDoubling(t *testing.T) {
	// A connection that is accepted and dropped at once is no better than
	// a refusal: without this a flapping upstream would be hit every 60 s.
	b := noJitter(DefaultPolicy())
	b.Next(Refused, 0)
	if got := b.Next(Lost, time.Second); got != 120*time.Second {
		t.Fatalf("short stream after a refusal: wait %v, want 120s", got)
	}
}

func TestBackoffUnauthorizedRetriesOnceQuickly(t *testing.T) {
	b := noJitter(DefaultPolicy())
	if got := b.Next(Unauthorized, 0); got != 5*time.Second {
		t.Fatalf("first 401: wait %v, want the 5s auth retry", got)
	}
	if got := b.Next(Unauthorized, 0); got != 60*time.Second {
		t.Fatalf("second 401: wait %v, want the 60s delay", got)
	}
	// A successful stream earns a new quick retry.
	b.Next(Lost, time.Hour)
	if got := b.Next(Unauthorized, 0); got != 5*time.Second {
		t.Fatalf("401 after a stream: wait %v, want 5s", got)
	}
}

func TestBackoffMisconfiguredUsesMaxDelay(t *testing.T) {
	b := noJitter(DefaultPolicy())
	for i := 0; i < 3; i++ {
		if got := b.Next(Misconfigured, 0); got != 5*time.Minute {
			t.Fatalf("attempt %d: wait %v, want 5m", i, got)
		}
	}
}

func TestBackoffJitterNeverShortens(t *testing.T) {
	b := NewBackoff(DefaultPolicy())
	for i := 0; i < 1000; i++ {
		got := b.Next(Lost, time.Hour)
		if got < 60*time.Second || got > 66*time.Second {
			t.Fatalf("jittered wait %v outside [60s, 66s]", got)
		}
	}
}

// TestBackoffSixtySecondRuleInFakeTime runs the real waiting code path
// (wait.Sleep) under synctest, so the 60 s rule is checked in microseconds.
func TestBackoffSixtySecondRuleInFakeTime(t *testing.T) {
	synctest.Test(t, func(t *testing.T) {
		b := NewBackoff(DefaultPolicy())
		start := time.Now()
		if !wait.Sleep(context.Background(), b.Next(Lost, time.Hour)) {
			t.Fatal("sleep ended early")
		}
		if waited := time.Since(start); waited < 60*time.Second || waited > 66*time.Second {
			t.Fatalf("waited %v, want 60s..66s", waited)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go func() { time.Sleep(time.Second); cancel() }()
		start = time.Now()
		if wait.Sleep(ctx, time.Minute) {
			t.Fatal("a cancelled sleep reported completion")
		}
		if waited := time.Since(start); waited != time.Second {
			t.Fatalf("cancelled sleep took %v, want 1s", waited)
		}
	})
}
