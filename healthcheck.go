package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"strings"
	"time"

	"lsmux/internal/cli"
	"lsmux/internal/tlsfiles"
)

type healthcheckSettings struct {
	listen    string
	authToken string
	tokenFile string
	tlsCert   string
	strict    bool
	timeout   time.Duration
}

func healthcheckFlags(s *healthcheckSettings) *cli.FlagSet {
	f := cli.NewFlagSet("lsmux healthcheck", "LSMUX_", `Exit 0 if the lsmux on this machine is ready (its /readyz answers 200),
1 otherwise: the container HEALTHCHECK, which has no shell or curl. It reads
the same LSMUX_LISTEN and LSMUX_AUTH_TOKEN as the server it checks.`)
	f.String(&s.listen, "listen", ":8080", "the instance's listen address (LSMUX_LISTEN), dialled on loopback")
	f.Secret(&s.authToken, "auth-token", "the instance's token(s); the first is sent, for LSMUX_PROTECT_HEALTH=true")
	f.String(&s.tokenFile, "auth-token-file", "", "the instance's token file; its first token is sent")
	f.String(&s.tlsCert, "tls-cert", "", "the instance's certificate (LSMUX_TLS_CERT): ask over https and accept only this certificate")
	f.Bool(&s.strict, "upstream", false, "also require every upstream connection to be streaming (/readyz?upstream=1)")
	f.Duration(&s.timeout, "timeout", 3*time.Second, "how long to wait for the answer")
	return f
}

// firstToken is the first of an instance's tokens (LSMUX_AUTH_TOKEN, a
// comma-separated list) or of its token file (LSMUX_AUTH_TOKEN_FILE, which
// wins): what a client on this machine sends to it.
func firstToken(tokens, tokenFile string) (string, error) {
	if tokenFile != "" {
		b, err := os.ReadFile(tokenFile)
		if err != nil {
			return "", fmt.Errorf("read the token file: %w", err)
		}
		for _, line := range strings.Split(string(b), "\n") {
			if tokens := list(line); len(tokens) > 0 { // commas allowed, as the server reads it
				return tokens[0], nil
			}
		}
		return "", nil
	}
	if tokens := list(tokens); len(tokens) > 0 {
		return tokens[0], nil
	}
	return "", nil
}

// runHealthcheck asks the local instance's /readyz and fails unless it
// answers 200.
func runHealthcheck(ctx context.Context, args []string, env cli.Env, stdout, stderr io.Writer) error {
	s := &healthcheckSettings{}
	if err := healthcheckFlags(s).Parse(args, env, stdout); err != nil {
		return usageErr(err)
	}
	if err := checkListen("LSMUX_LISTEN", s.listen); err != nil {
		return usageError{err}
	}
	client, scheme := http.DefaultClient, "http://"
	if s.tlsCert != "" {
		var err error
		if client, err = tlsfiles.PinnedHTTP(s.tlsCert); err != nil {
			return err
		}
		scheme = "https://"
	}
	url := scheme + reachable(s.listen) + "/readyz"
	if s.strict {
		url += "?upstream=1"
	}
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
	if err != nil {
		return err
	}
	if tok, err := firstToken(s.authToken, s.tokenFile); err != nil {
		return err
	} else if tok != "" {
		req.Header.Set("Authorization", "Bearer "+tok)
	}
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("not ready: %w", err)
	}
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 4<<10))
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("not ready: %s answered %d: %s", url, resp.StatusCode, body)
	}
	fmt.Fprintln(stdout, "ready")
	return nil
}
