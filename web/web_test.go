package web

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestPageCannotBeFramedElsewhere: another site cannot put the page in a
// frame and trick a user into pressing its buttons (the demo's fault
// switchboard), and the page loads nothing from elsewhere.
func TestPageCannotBeFramedElsewhere(t *testing.T) {
	for _, path := range []string{"/", "/app.js"} {
		rec := httptest.NewRecorder()
		Handler().ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		csp := rec.Header().Get("Content-Security-Policy")
		if rec.Code != http.StatusOK || !strings.Contains(csp, "frame-ancestors 'self'") || !strings.Contains(csp, "default-src 'self'") {
			t.Errorf("%s: %d, Content-Security-Policy %q", path, rec.Code, csp)
		}
	}
}
