// Package web is lsmux's page at GET /: embedded, no build step, no CDN,
// because sidecars often run without internet.
package web

import (
	"embed"
	"io/fs"
	"net/http"
	"strings"
)

//go:embed static
var static embed.FS

// Page serves the page and its assets.
type Page struct {
	files fs.FS
	serve http.Handler
}

// Handler returns the page.
func Handler() *Page {
	sub, err := fs.Sub(static, "static")
	if err != nil {
		panic(err) // the embed pattern above guarantees the folder
	}
	return &Page{files: sub, serve: http.FileServerFS(sub)}
}

// Has reports whether path is one of the page's files ("/" is the page).
func (p *Page) Has(path string) bool {
	name := strings.TrimPrefix(path, "/")
	if name == "" {
		name = "index.html"
	}
	if !fs.ValidPath(name) {
		return false
	}
	fi, err := fs.Stat(p.files, name)
	return err == nil && !fi.IsDir()
}

func (p *Page) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	w.Header().Set("Cache-Control", "no-cache")
	// frame-ancestors: another site cannot frame the page and trick a
	// user into pressing its buttons (the demo's fault switchboard).
	w.Header().Set("Content-Security-Policy", "default-src 'self'; style-src 'self' 'unsafe-inline'; frame-ancestors 'self'")
	p.serve.ServeHTTP(w, r)
}
