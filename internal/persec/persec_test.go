package persec

import (
	"testing"
	"time"
)

func TestRateAveragesOverWhatTheCounterLived(t *testing.T) {
	born := time.Unix(1000, 500e6) // half-way through second 1000
	c := New(60, born)
	for s := int64(1000); s < 1033; s++ {
		c.Add(time.Unix(s, 0), 50)
	}
	// 33 s after the start, a steady 50/s must read 50, not 33*50/60.
	if got := c.Rate(time.Unix(1033, 0), 60); got != 50 {
		t.Fatalf("rate %v, want 50", got)
	}
	for s := int64(1033); s < 1200; s++ {
		c.Add(time.Unix(s, 0), 10)
	}
	if got := c.Rate(time.Unix(1200, 0), 60); got != 10 {
		t.Fatalf("rate after a minute of 10/s: %v", got)
	}
	if got := c.Rate(born, 60); got != 0 {
		t.Fatalf("rate at birth %v", got)
	}
}

func TestSeriesIsOldestFirstAndSkipsEmptySeconds(t *testing.T) {
	c := New(300, time.Unix(0, 0))
	c.Add(time.Unix(100, 0), 1)
	c.Add(time.Unix(102, 0), 3)
	c.Add(time.Unix(102, 5), 1)
	start, got := c.Series(time.Unix(103, 2), 5)
	if start.Unix() != 98 || len(got) != 5 || got[2] != 1 || got[3] != 0 || got[4] != 4 {
		t.Fatalf("series from %d: %v", start.Unix(), got)
	}
	// A second reused after the window wrapped does not count twice.
	c.Add(time.Unix(100+301, 0), 7)
	_, got = c.Series(time.Unix(402, 0), 300)
	if got[len(got)-1] != 7 {
		t.Fatalf("wrapped series ends %v", got[len(got)-3:])
	}
}
