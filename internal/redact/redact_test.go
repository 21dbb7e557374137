package redact

import (
	"fmt"
	"net/url"
	"strings"
	"testing"
)

func TestURL(t *testing.T) {
	for in, want := range map[string]string{
		"https://livestream.adobe.net/api/1/stream/x":          "https://livestream.adobe.net/api/1/stream/x",
		"https://user:p%zz@ims.example/ims/token/v3":           "https://REDACTED@ims.example/ims/token/v3",
		"nats://a:b@n1:4222":                                   "nats://REDACTED@n1:4222",
		"a:b@n1:4222":                                          "REDACTED@n1:4222",
		"https://h/p?access_token=abc&maxConnections=2":        "https://h/p?access_token=REDACTED&maxConnections=2",
		"https://h/p?X-Amz-Signature=abc&client_secret=s#frag": "https://h/p?X-Amz-Signature=REDACTED&client_secret=REDACTED#frag",
		"https://h/p?reset=smallest":                           "https://h/p?reset=smallest",
		"http://u:pw@127.0.0.1:9/a/b?api-key=k&smoothing=1":    "http://REDACTED@127.0.0.1:9/a/b?api-key=REDACTED&smoothing=1",
		"https://h/with@in/path":                               "https://h/with@in/path",
		"":                                                     "",
	} {
		if got := URL(in); got != want {
			t.Errorf("URL(%q) = %q, want %q", in, got, want)
		}
	}
	if got := URLs("nats://a:b@n1:4222, nats://n2:4222"); got != "nats://REDACTED@n1:4222,nats://n2:4222" {
		t.Errorf("URLs: %q", got)
	}
	// NATS server lists: schemes or none, a token as user, a stray '%'.
	got := URLs("nats://user:pw1@h1:4222, nats://tok2@h2:4222,tls://h3,lsmux:pw3@h4:4222,nats://u:p%ss4@h5")
	if got != "nats://REDACTED@h1:4222,nats://REDACTED@h2:4222,tls://h3,REDACTED@h4:4222,nats://REDACTED@h5" {
		t.Errorf("URLs of a NATS server list: %q", got)
	}
}

func TestInRemovesQuotedAndEscapedSecrets(t *testing.T) {
	u := "https://svc:pa%25ss\"word@ims.example/t?token=tok123"
	for _, msg := range []string{
		fmt.Sprintf("Post %q: dial tcp: lookup failed", u),
		"parse " + u + ": invalid",
		"user svc:pa%ss\"word rejected",
		"the token tok123 expired",
	} {
		got := In(msg, u)
		for _, secret := range []string{"pa%25ss", "pa%ss", "tok123"} {
			if strings.Contains(got, secret) {
				t.Errorf("In(%q) = %q still holds %q", msg, got, secret)
			}
		}
	}
	if got := In("status code=409 from https://h/p?reset=smallest"); got != "status code=409 from https://h/p?reset=smallest" {
		t.Errorf("In changed a message without secrets: %q", got)
	}
}

// FuzzURL checks what every caller relies on: the password and the secret
// parameter values of a URL that url.Parse understands never survive
// URL, and In removes them from any message quoting the URL.
func FuzzURL(f *testing.F) {
	for _, s := range []string{"https://u:p@h/x?access_token=t", "nats://a:b@n:4222", "h/p?sig=1&a=2", "x://@/?=&", "%zz://u:%@h"} {
		f.Add(s, "user", "secret-pass", "tok-value")
	}
	f.Fuzz(func(t *testing.T, base, user, pass, tok string) {
		if len(pass) < 3 || len(tok) < 3 || strings.ContainsAny(pass+tok+user, "@/?#&=:, \t\r\n\"'%\\") {
			return
		}
		u := "https://" + user + ":" + pass + "@example.net/api/1/stream/x?maxConnections=2&access_token=" + tok
		if _, err := url.Parse(u); err != nil {
			return
		}
		const fixed = "https://REDACTED@example.net/api/1/stream/x?maxConnections=2&access_token=REDACTED GET failed; also connect refused"
		if strings.Contains(fixed, pass) || strings.Contains(fixed, tok) || strings.Contains(base, pass) || strings.Contains(base, tok) {
			return // the secret is also ordinary text here
		}
		for _, text := range []string{URL(u), In("GET "+u+" failed; also "+base, u), In(fmt.Sprintf("connect %q: refused", u), u)} {
			if strings.Contains(text, pass) || strings.Contains(text, tok) {
				t.Fatalf("secret survives in %q (url %q)", text, u)
			}
		}
		// Redaction is stable: redacting twice changes nothing more.
		if once := URL(base); URL(once) != once {
			t.Fatalf("URL(URL(%q)) = %q, not %q", base, URL(once), once)
		}
	})
}
