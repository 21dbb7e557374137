package main

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// TestDocsLinksResolve: every relative link in the README and docs/ names
// a file that exists, and every #anchor a heading of the page it points to.
func TestDocsLinksResolve(t *testing.T) {
	pages, _ := filepath.Glob("docs/*.md")
	pages = append(pages, "README.md")
	link := regexp.MustCompile(`\]\(([^)\s]+)\)`)
	for _, page := range pages {
		text, err := os.ReadFile(page)
		if err != nil {
			t.Fatal(err)
		}
		for _, m := range link.FindAllStringSubmatch(string(text), -1) {
			target := m[1]
			if strings.Contains(target, "://") {
				continue
			}
			file, anchor, _ := strings.Cut(target, "#")
			path := page
			if file != "" {
				path = filepath.Join(filepath.Dir(page), file)
			}
			body, err := os.ReadFile(path)
			if err != nil {
				t.Errorf("%s links to %s, which does not exist", page, target)
				continue
			}
			if anchor != "" && strings.HasSuffix(path, ".md") && !hasAnchor(string(body), anchor) {
				t.Errorf("%s links to %s: no heading makes that anchor", page, target)
			}
		}
	}
}

// hasAnchor reports whether a heading of the page renders as #anchor.
func hasAnchor(page, anchor string) bool {
	for _, line := range strings.Split(page, "\n") {
		if !strings.HasPrefix(line, "#") {
			continue
		}
		h := strings.ToLower(strings.TrimSpace(strings.TrimLeft(line, "#")))
		var b strings.Builder
		for _, r := range h {
			switch {
			case r >= 'a' && r <= 'z', r >= '0' && r <= '9', r == '-', r == '_':
				b.WriteRune(r)
			case r == ' ':
				b.WriteByte('-')
			}
		}
		if b.String() == anchor {
			return true
		}
	}
	return false
}

// TestReadmeStaysAGuide: the README starts with the two set-up commands and
// stays short enough to read; reference material lives in docs/.
func TestReadmeStaysAGuide(t *testing.T) {
	text, err := os.ReadFile("README.md")
	if err != nil {
		t.Fatal(err)
	}
	s := string(text)
	demo, test := strings.Index(s, "go run . demo"), strings.Index(s, "go test -race ./...")
	if demo < 0 || test < demo || strings.Index(s, "```") > demo {
		t.Fatal("the README's first commands must be `go run . demo` and then the test command")
	}
	if n := strings.Count(s, "\n"); n > 320 {
		t.Fatalf("README.md has %d lines; move reference material into docs/", n)
	}
}
