package fanout

import (
	"sync"

	"github.com/hashicorp/golang-lru/v2/simplelru"
)

// textCache holds compiled filters (or projections) by their text, so
// subscribers using the same text share one program and its per-hit
// results. What subscribers use is never evicted (its count of users is
// above zero); what nobody uses any more waits in an LRU of bounded size,
// so endless distinct texts cannot grow memory and a text in steady use is
// never pushed out by them.
//
// Each cached item may own a result slot in every entry's derived data (a
// bit for filters, a pointer for projections). A slot is freed when its
// item is evicted, or taken from the least recently used idle item when
// none is free, and cleared in every hub that used it before it is given
// to another item: a result cached for one text is never read for
// another.
type textCache[V any] struct {
	size  int
	mu    sync.Mutex
	inUse map[string]*cacheItem[V]
	idle  *simplelru.LRU[string, *cacheItem[V]]
	free  []int // slots nobody owns
	freed func(slot int)
}

type cacheItem[V any] struct {
	v    V
	refs int
	slot int // -1: none
}

// newTextCache returns a cache that keeps up to size idle items and hands
// out slots 0..slots-1; freed is called (without the cache's lock) for a
// slot whose owner was evicted, before the slot is reused.
func newTextCache[V any](size, slots int, freed func(slot int)) *textCache[V] {
	c := &textCache[V]{size: size, inUse: map[string]*cacheItem[V]{}, freed: freed}
	for i := slots - 1; i >= 0; i-- {
		c.free = append(c.free, i)
	}
	c.idle, _ = simplelru.NewLRU[string, *cacheItem[V]](size, nil)
	return c
}

// acquire returns the cached value for text, counting one more user.
func (c *textCache[V]) acquire(text string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reuseLocked(text)
}

// peek returns the cached value for text without counting a user (for
// validation: a text only checked must not keep anything cached).
func (c *textCache[V]) peek(text string) (V, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if it := c.inUse[text]; it != nil {
		return it.v, true
	}
	if it, ok := c.idle.Peek(text); ok {
		return it.v, true
	}
	var zero V
	return zero, false
}

// insert caches v for text with one user, giving it a slot (setSlot
// tells v): a free one, or else the slot of the least recently used idle
// item that has one, cleared before it is handed on; so texts that come
// and go cannot leave a popular new filter without shared results. If
// another caller cached text meanwhile, that one's value is used instead.
func (c *textCache[V]) insert(text string, v V, setSlot func(V, int)) V {
	c.mu.Lock()
	if got, ok := c.reuseLocked(text); ok {
		c.mu.Unlock()
		return got
	}
	slot := -1
	if n := len(c.free); n > 0 {
		slot = c.free[n-1]
		c.free = c.free[:n-1]
	} else if slot = c.stealLocked(setSlot); slot >= 0 {
		c.mu.Unlock()
		if c.freed != nil {
			c.freed(slot) // its old owner's results go before anyone reads them as v's
		}
		c.mu.Lock()
		if got, ok := c.reuseLocked(text); ok {
			c.free = append(c.free, slot)
			c.mu.Unlock()
			return got
		}
	}
	it := &cacheItem[V]{v: v, refs: 1, slot: slot}
	if slot >= 0 {
		setSlot(v, slot)
	}
	c.inUse[text] = it
	c.mu.Unlock()
	return v
}

// reuseLocked counts one more user of text's cached item, if there is
// one.
func (c *textCache[V]) reuseLocked(text string) (V, bool) {
	if it := c.inUse[text]; it != nil {
		it.refs++
		return it.v, true
	}
	if it, ok := c.idle.Peek(text); ok {
		c.idle.Remove(text)
		it.refs = 1
		c.inUse[text] = it
		return it.v, true
	}
	var zero V
	return zero, false
}

// stealLocked takes the slot of the least recently used idle item that
// has one (-1: none has). Idle items have no users, so nothing reads
// their slot while it changes hands.
func (c *textCache[V]) stealLocked(setSlot func(V, int)) int {
	for _, key := range c.idle.Keys() { // oldest first
		it, _ := c.idle.Peek(key)
		if it.slot >= 0 {
			slot := it.slot
			it.slot = -1
			setSlot(it.v, -1)
			return slot
		}
	}
	return -1
}

// release counts one user fewer; at zero the item becomes idle, and the
// least recently used idle item beyond the cache's size is evicted,
// freeing its slot.
func (c *textCache[V]) release(text string) {
	c.mu.Lock()
	it := c.inUse[text]
	if it == nil {
		c.mu.Unlock()
		return
	}
	if it.refs--; it.refs > 0 {
		c.mu.Unlock()
		return
	}
	delete(c.inUse, text)
	freed := -1
	if c.idle.Len() >= c.size {
		if _, old, ok := c.idle.RemoveOldest(); ok {
			freed = old.slot
		}
	}
	c.idle.Add(text, it)
	c.mu.Unlock()
	if freed >= 0 {
		if c.freed != nil {
			c.freed(freed)
		}
		c.mu.Lock()
		c.free = append(c.free, freed)
		c.mu.Unlock()
	}
}

// counts is how many texts are in use and idle.
func (c *textCache[V]) counts() (inUse, idle int) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.inUse), c.idle.Len()
}
