package upstream

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/oauth2"
	"golang.org/x/oauth2/clientcredentials"
	"golang.org/x/sync/singleflight"

	"lsmux/internal/redact"
)

// DefaultTokenURL is Adobe IMS's OAuth Server-to-Server token endpoint.
const DefaultTokenURL = "https://ims-na1.adobelogin.com/ims/token/v3"

// TokenSource supplies the bearer token for a connect. A token is needed
// only to open a connection; an open stream keeps flowing after it expires.
type TokenSource interface {
	// Token returns a token to send now.
	Token(ctx context.Context) (string, error)
	// Invalidate tells the source that Live Stream rejected tok with a
	// 401, so the next Token call must not return it again.
	Invalidate(tok string)
}

// StaticToken is a token the operator minted elsewhere (LSMUX_ACCESS_TOKEN).
// It cannot be renewed: a 401 is logged and retried with the same token,
// in case the operator rotates it by restarting.
type StaticToken string

func (s StaticToken) Token(context.Context) (string, error) {
	if s == "" {
		return "", fmt.Errorf("static token: %w: LSMUX_ACCESS_TOKEN is empty", ErrNoToken)
	}
	return string(s), nil
}

func (StaticToken) Invalidate(string) {}

// FileToken re-reads a token file on every connect, for operators whose
// tokens are minted and rotated by another process (a Kubernetes secret
// mount, a vault agent). Surrounding whitespace is ignored.
type FileToken string

func (f FileToken) Token(context.Context) (string, error) {
	b, err := os.ReadFile(string(f))
	if err != nil {
		return "", fmt.Errorf("read token file %s: %w", string(f), err)
	}
	tok := strings.TrimSpace(string(b))
	if tok == "" {
		return "", fmt.Errorf("token file %s: %w: the file is empty", string(f), ErrNoToken)
	}
	return tok, nil
}

func (FileToken) Invalidate(string) {}

// ClientCredentials fetches tokens from Adobe IMS with the OAuth
// Server-to-Server flow and caches them until shortly before they expire.
// Concurrent callers share one fetch (singleflight), so a pool of eight
// connections opening together asks IMS once.
type ClientCredentials struct {
	cfg        clientcredentials.Config
	secretFile string // read at every fetch when set
	client     *http.Client
	margin     time.Duration
	now        func() time.Time

	group singleflight.Group
	mu    sync.Mutex
	tok   string
	exp   time.Time
}

// NewClientCredentials returns a token source for IMS. scopes is IMS's
// comma-separated scope list and is sent as given (the oauth2 package would
// join a list with spaces). margin is how long before expiry a token is
// renewed (default 10 min). client may be nil.
func NewClientCredentials(tokenURL, clientID, clientSecret, scopes string, margin time.Duration, client *http.Client) *ClientCredentials {
	if tokenURL == "" {
		tokenURL = DefaultTokenURL
	}
	if margin <= 0 {
		margin = 10 * time.Minute
	}
	if client == nil {
		client = &http.Client{Timeout: 30 * time.Second}
	}
	params := url.Values{}
	if scopes != "" {
		params.Set("scope", scopes)
	}
	return &ClientCredentials{
		cfg: clientcredentials.Config{
			ClientID:       clientID,
			ClientSecret:   clientSecret,
			TokenURL:       tokenURL,
			EndpointParams: params,
			AuthStyle:      oauth2.AuthStyleInParams, // IMS reads them from the form
		},
		client: client,
		margin: margin,
		now:    time.Now,
	}
}

// Token returns the cached token, or fetches a new one when it is missing
// or within the renewal margin of expiry.
func (c *ClientCredentials) Token(ctx context.Context) (string, error) {
	c.mu.Lock()
	tok, exp := c.tok, c.exp
	c.mu.Unlock()
	if tok != "" && c.now().Before(exp.Add(-c.margin)) {
		return tok, nil
	}
	// The fetch is shared by every caller waiting for a token (streams
	// and slots), so it runs on none of their contexts: one that ends
	// (a stream stepping down) must not fail the others. The HTTP
	// client's timeout bounds it; each caller still returns when its own
	// context ends.
	ch := c.group.DoChan("token", func() (any, error) { return c.fetch(context.WithoutCancel(ctx)) })
	select {
	case r := <-ch:
		if r.Err != nil {
			return "", r.Err
		}
		return r.Val.(string), nil
	case <-ctx.Done():
		return "", fmt.Errorf("get access token: %w", context.Cause(ctx))
	}
}

func (c *ClientCredentials) fetch(ctx context.Context) (string, error) {
	cfg := c.cfg
	secret, err := c.secret()
	if err != nil {
		return "", err
	}
	cfg.ClientSecret = secret
	ctx = context.WithValue(ctx, oauth2.HTTPClient, c.client)
	t, err := cfg.Token(ctx)
	if err != nil {
		var re *oauth2.RetrieveError
		if errors.As(err, &re) && re.Response != nil {
			// RetrieveError's text includes the response body; IMS never
			// echoes the secret, but keep only the parts we need anyway.
			return "", &StatusError{Op: "token", URL: redact.URL(c.cfg.TokenURL), Status: re.Response.StatusCode,
				Description: strings.TrimSpace(re.ErrorCode + " " + re.ErrorDescription)}
		}
		// The error may quote the token URL, credentials in it included.
		return "", fmt.Errorf("token %s: %s", redact.URL(c.cfg.TokenURL), redact.In(scrub(err, secret).Error(), c.cfg.TokenURL))
	}
	exp := t.Expiry
	if exp.IsZero() {
		exp = c.now().Add(time.Hour)
	}
	c.mu.Lock()
	c.tok, c.exp = t.AccessToken, exp
	c.mu.Unlock()
	return t.AccessToken, nil
}

// secret is the client secret: the one given, or the secret file's
// content, read at every fetch so a rotated secret (a Kubernetes Secret
// mount) is used without a restart.
func (c *ClientCredentials) secret() (string, error) {
	if c.secretFile == "" {
		return c.cfg.ClientSecret, nil
	}
	b, err := os.ReadFile(c.secretFile)
	if err != nil {
		return "", fmt.Errorf("read the client secret file (LSMUX_CLIENT_SECRET_FILE): %w", err)
	}
	s := strings.TrimSpace(string(b))
	if s == "" {
		return "", fmt.Errorf("the client secret file %s (LSMUX_CLIENT_SECRET_FILE) is empty", c.secretFile)
	}
	return s, nil
}

// WithSecretFile makes the source read its client secret from path at
// every token fetch, instead of the secret it was created with.
func (c *ClientCredentials) WithSecretFile(path string) *ClientCredentials {
	c.secretFile = path
	return c
}

// Invalidate drops tok from the cache if it is still the cached one.
func (c *ClientCredentials) Invalidate(tok string) {
	c.mu.Lock()
	if c.tok == tok {
		c.tok, c.exp = "", time.Time{}
	}
	c.mu.Unlock()
}

// scrub replaces any occurrence of secret in err's text. Defence in depth:
// no error in this path is known to carry it.
func scrub(err error, secret string) error {
	if secret == "" || !strings.Contains(err.Error(), secret) {
		return err
	}
	return errors.New(strings.ReplaceAll(err.Error(), secret, "[redacted]"))
}
