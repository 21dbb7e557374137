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
// (LSMUX_AUTH_TOKEN_FILE) that is read again at most every recheck and
// used anew when its contents changed, so a rotated Kubernetes Secret
// takes effect within a second without a restart, whatever the file's
// times say (cp -p and rsync -t keep them). Only hashes are kept, and
// compared in constant time.
//
// A file that cannot be read, or holds no token, lets nobody in: auth that
// was asked for never silently turns off. Each such trouble is logged
// once, when it starts or changes, not once per request.
type tokenSet struct {
	file    string // "" for a fixed list
	recheck time.Duration
	log     logrus.FieldLogger

	mu          sync.Mutex
	hashes      [][32]byte
	checked     time.Time // when the file was last read
	contents    [32]byte  // hash of what it held
	loaded      bool
	lastTrouble string
}

// newTokenSet returns the fixed tokens, or the file's.
func newTokenSet(tokens []string, file string, recheck time.Duration, log logrus.FieldLogger) *tokenSet {
	ts := &tokenSet{file: file, recheck: recheck, log: log}
	if file == "" {
		ts.hashes = hashTokens(tokens)
	}
	return ts
}

// enabled reports whether subscribers must present a token.
func (ts *tokenSet) enabled() bool { return ts.file != "" || len(ts.hashes) > 0 }

// current returns the accepted hashes, reading the file again when recheck
// has passed since it was last read.
func (ts *tokenSet) current() [][32]byte {
	ts.mu.Lock()
	defer ts.mu.Unlock()
	if ts.file == "" {
		return ts.hashes
	}
	now := time.Now()
	if !ts.checked.IsZero() && now.Sub(ts.checked) < ts.recheck {
		return ts.hashes
	}
	ts.checked = now
	b, err := os.ReadFile(ts.file)
	if err != nil {
		ts.trouble("cannot read the subscriber token file (LSMUX_AUTH_TOKEN_FILE); refusing every subscriber until it can be read: " + err.Error())
		ts.hashes, ts.loaded = nil, false
		return nil
	}
	sum := sha256.Sum256(b)
	if ts.loaded && sum == ts.contents {
		return ts.hashes
	}
	ts.hashes = hashTokens(strings.Split(string(b), "\n"))
	ts.contents, ts.loaded = sum, true
	if len(ts.hashes) == 0 {
		ts.trouble("the subscriber token file (LSMUX_AUTH_TOKEN_FILE) holds no token; refusing every subscriber")
		return nil
	}
	ts.lastTrouble = ""
	ts.log.WithField("file", ts.file).WithField("tokens", len(ts.hashes)).Info("subscriber tokens (re)loaded")
	return ts.hashes
}

// trouble logs what is wrong with the token file, once per kind.
func (ts *tokenSet) trouble(msg string) {
	if msg != ts.lastTrouble {
		ts.log.WithField("file", ts.file).Error(msg)
		ts.lastTrouble = msg
	}
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
