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
		"https://h:8443/with@in/path":                          "https://h:8443/with@in/path",
		"nats://lsmux:ab/cd+ef@nats:4222":                      "nats://REDACTED@nats:4222",
		"nats://lsmux:a?b#c@nats:4222":                         "nats://REDACTED@nats:4222",
		"lsmux:ab/cd@nats:4222":                                "REDACTED@nats:4222",
		"https://svc:pa/ss@ims.example/ims/token/v3":           "https://REDACTED@ims.example/ims/token/v3",
		"": "",
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
	for _, msg := range []string{
		"dial nats://lsmux:ab/cd+ef@nats:4222: refused",
		`parse "https://svc:pa/ss?x@ims.example/t": invalid userinfo`,
	} {
		if got := In(msg); strings.Contains(got, "ab/cd") || strings.Contains(got, "pa/ss") {
			t.Errorf("In(%q) = %q keeps a password with a '/'", msg, got)
		}
	}
	if got := In("GET https://h:8443/with@in/path failed"); got != "GET https://h:8443/with@in/path failed" {
		t.Errorf("In changed a path with an '@': %q", got)
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

// FuzzNATSPassword: a NATS password may hold '/', '?', '#' or '%' (people
// paste generated ones unescaped, and nats.go takes them); it never
// survives URL, URLs or In, given the URL or not.
func FuzzNATSPassword(f *testing.F) {
	for _, s := range []string{"ab/cd+ef", "a?b#c", "p%zz/x", "x/y/z=="} {
		f.Add("lsmux", s)
	}
	f.Fuzz(func(t *testing.T, user, pass string) {
		if len(pass) < 3 || strings.ContainsAny(user+pass, "@:, \"'\\") || strings.ContainsFunc(user+pass, func(r rune) bool { return r < 0x20 || r == 0x7f }) {
			return // separators and control characters are not part of a password anyone pastes
		}
		u := "nats://" + user + ":" + pass + "@nats.example:4222"
		if strings.Contains("nats://REDACTED@nats.example:4222 connect refused", pass) {
			return // the password is also ordinary text here
		}
		for _, text := range []string{URL(u), URLs("nats://a:b@h1, " + u), In("connect " + u + ": refused"), In("connect "+u+": refused", u)} {
			if strings.Contains(text, pass) {
				t.Fatalf("password %q survives in %q", pass, text)
			}
		}
	})
}
