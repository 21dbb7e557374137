package proxy

import (
	"crypto/sha256"
	"crypto/subtle"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/sirupsen/logrus"
)

// tokenSet is the subscriber tokens lsmux accepts: a fixed list
// (LSMUX_AUTH_TOKEN), or a file with one token per line
// (LSMUX_AUTH_TOKEN_FILE) that is read again whenever it changes, so a
// rotated Kubernetes Secret takes effect without a restart. Only hashes
// are kept, and compared in constant time.
//
// A file that cannot be read, or holds no token, lets nobody in: auth that
// was asked for never silently turns off.
type tokenSet struct {
	file string // "" for a fixed list
	log  logrus.FieldLogger

	mu      sync.Mutex
	hashes  [][32]byte
	modTime time.Time
	size    int64
	loaded  bool
}

// newTokenSet returns the fixed tokens, or the file's.
func newTokenSet(tokens []string, file string, log logrus.FieldLogger) *tokenSet {
	ts := &tokenSet{file: file, log: log}
	if file == "" {
		ts.hashes = hashTokens(tokens)
	}
	return ts
}

// enabled reports whether subscribers must present a token.
func (ts *tokenSet) enabled() bool { return ts.file != "" || len(ts.hashes) > 0 }

// current returns the accepted hashes, reading the file again if it
// changed since it was last read.
func (ts *tokenSet) current() [][32]byte {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.file == "" {
		return ts.hashes
	}
	st, err := os.Stat(ts.file)
	if err != nil {
		if ts.loaded || ts.hashes != nil {
			ts.log.WithField("file", ts.file).Errorf("cannot read the subscriber token file (LSMUX_AUTH_TOKEN_FILE); refusing every subscriber until it can be read: %v", err)
		}
		ts.hashes, ts.loaded = nil, false
		return nil
	}
	if ts.loaded && st.ModTime().Equal(ts.modTime) && st.Size() == ts.size {
		return ts.hashes
	}
	b, err := os.ReadFile(ts.file)
	if err != nil {
		ts.log.WithField("file", ts.file).Errorf("cannot read the subscriber token file (LSMUX_AUTH_TOKEN_FILE); refusing every subscriber until it can be read: %v", err)
		ts.hashes, ts.loaded = nil, false
		return nil
	}
	ts.hashes = hashTokens(strings.Split(string(b), "\n"))
	ts.modTime, ts.size, ts.loaded = st.ModTime(), st.Size(), true
	if len(ts.hashes) == 0 {
		ts.log.WithField("file", ts.file).Error("the subscriber token file (LSMUX_AUTH_TOKEN_FILE) holds no token; refusing every subscriber")
	} else {
		ts.log.WithField("file", ts.file).WithField("tokens", len(ts.hashes)).Info("subscriber tokens (re)loaded")
	}
	return ts.hashes
}

// accepts reports whether given is one of the tokens; the comparison
// takes the same time whichever token, if any, matches.
func (ts *tokenSet) accepts(given string) bool {
	if given == "" {
		return false
	}
	sum := sha256.Sum256([]byte(given))
	ok := 0
	for _, want := range ts.current() {
		ok |= subtle.ConstantTimeCompare(sum[:], want[:])
	}
	return ok == 1
}

// hashTokens hashes each non-blank token (surrounding space trimmed).
func hashTokens(tokens []string) [][32]byte {
	var out [][32]byte
	for _, t := range tokens {
		if t = strings.TrimSpace(t); t != "" {
			out = append(out, sha256.Sum256([]byte(t)))
		}
	}
	return out
}
