package main

// The machine-readable API (docs/openapi.yaml, docs/asyncapi.yaml) checked
// against a running lsmux: every answer and every frame or event the tests
// here see must be one the specs declare, and match its schema. The specs
// are strict where the code's shape is fixed (required members, no others),
// so a field added, renamed or dropped in the code fails here until the spec
// says so too.

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/gorilla/websocket"
	"github.com/santhosh-tekuri/jsonschema/v6"
	"go.yaml.in/yaml/v3"

	"lsmux/cluster/natstest"
	"lsmux/proxy"
	"lsmux/upstream"
)

// knownAPIDrift lists answers that disagree with the specs today, each with
// where and why. A check named here is logged instead of failing; once the
// code is fixed the check fails until its entry is removed, so the list
// only ever shrinks.
var knownAPIDrift = map[string]string{}

// drift reports a check against the specs: a failure unless it is a known
// drift, and a failure too when a known drift is fixed.
func drift(t *testing.T, name string, conforms bool, detail string) {
	t.Helper()
	why, known := knownAPIDrift[name]
	switch {
	case conforms && known:
		t.Errorf("%s now conforms to the specs: remove it from knownAPIDrift", name)
	case !conforms && known:
		t.Logf("known drift %q (%s): %s", name, why, detail)
	case !conforms:
		t.Errorf("%s: %s", name, detail)
	}
}

// apiSpec is one spec file, decoded as JSON, its schemas compiled on demand
// by JSON pointer (resolving $refs within the file).
type apiSpec struct {
	url  string
	doc  any
	comp *jsonschema.Compiler

	mu      sync.Mutex
	schemas map[string]*jsonschema.Schema
}

// loadAPISpec reads docs/<file>. draft is the schema dialect where none is
// named: 2020-12 for OpenAPI 3.1, draft 7 for AsyncAPI 3.0's default schema
// format.
func loadAPISpec(t testing.TB, file string, draft *jsonschema.Draft) *apiSpec {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join("docs", file))
	if err != nil {
		t.Fatal(err)
	}
	var y any
	if err := yaml.Unmarshal(raw, &y); err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	j, err := json.Marshal(jsonCompatible(y))
	if err != nil {
		t.Fatalf("%s: %v", file, err)
	}
	doc, err := jsonschema.UnmarshalJSON(bytes.NewReader(j))
	if err != nil {
		t.Fatal(err)
	}
	s := &apiSpec{url: "https://lsmux.invalid/docs/" + file, doc: doc, comp: jsonschema.NewCompiler(), schemas: map[string]*jsonschema.Schema{}}
	s.comp.DefaultDraft(draft)
	s.comp.AssertFormat()
	if err := s.comp.AddResource(s.url, doc); err != nil {
		t.Fatal(err)
	}
	return s
}

// jsonCompatible turns what YAML decodes into what encoding/json encodes
// (map keys are strings).
func jsonCompatible(v any) any {
	switch v := v.(type) {
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = jsonCompatible(e)
		}
		return out
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[fmt.Sprint(k)] = jsonCompatible(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = jsonCompatible(e)
		}
		return out
	}
	return v
}

// ptrEscape escapes one JSON pointer token.
func ptrEscape(s string) string { return strings.NewReplacer("~", "~0", "/", "~1").Replace(s) }

// node is the value at a JSON pointer ("" is the document).
func (s *apiSpec) node(ptr string) (any, bool) {
	v := s.doc
	if ptr == "" {
		return v, true
	}
	for _, tok := range strings.Split(strings.TrimPrefix(ptr, "/"), "/") {
		tok = strings.NewReplacer("~1", "/", "~0", "~").Replace(tok)
		switch c := v.(type) {
		case map[string]any:
			var ok bool
			if v, ok = c[tok]; !ok {
				return nil, false
			}
		case []any:
			i, err := strconv.Atoi(tok)
			if err != nil || i < 0 || i >= len(c) {
				return nil, false
			}
			v = c[i]
		default:
			return nil, false
		}
	}
	return v, true
}

// deref follows a node's local $ref, if it has one, to the pointer of
// what it refers to.
func (s *apiSpec) deref(ptr string) string {
	for range 10 {
		n, _ := s.node(ptr)
		m, _ := n.(map[string]any)
		ref, ok := m["$ref"].(string)
		if !ok || !strings.HasPrefix(ref, "#") {
			return ptr
		}
		ptr = ref[1:]
	}
	return ptr
}

// schema compiles the schema at ptr.
func (s *apiSpec) schema(t testing.TB, ptr string) *jsonschema.Schema {
	t.Helper()
	s.mu.Lock()
	defer s.mu.Unlock()
	if sch := s.schemas[ptr]; sch != nil {
		return sch
	}
	if _, ok := s.node(ptr); !ok {
		t.Fatalf("%s has nothing at %s", s.url, ptr)
	}
	sch, err := s.comp.Compile(s.url + "#" + ptr)
	if err != nil {
		t.Fatalf("compiling %s#%s: %v", s.url, ptr, err)
	}
	s.schemas[ptr] = sch
	return sch
}

// check validates v (as jsonschema.UnmarshalJSON decodes it) against the
// schema at ptr.
func (s *apiSpec) check(t testing.TB, ptr string, v any, what string) bool {
	t.Helper()
	if err := s.schema(t, ptr).Validate(v); err != nil {
		t.Errorf("%s does not match %s: %v\n%s", what, ptr, err, truncateForLog(v))
		return false
	}
	return true
}

// checkJSON validates JSON bytes against the schema at ptr.
func (s *apiSpec) checkJSON(t testing.TB, ptr string, data []byte, what string) (any, bool) {
	t.Helper()
	v, err := jsonschema.UnmarshalJSON(bytes.NewReader(data))
	if err != nil {
		t.Errorf("%s is not JSON: %v: %q", what, err, truncateBytes(data))
		return nil, false
	}
	return v, s.check(t, ptr, v, what)
}

func truncateForLog(v any) string {
	b, _ := json.Marshal(v)
	return truncateBytes(b)
}

func truncateBytes(b []byte) string {
	if len(b) > 600 {
		return string(b[:600]) + "…"
	}
	return string(b)
}

// checkResponse validates an HTTP answer against what the OpenAPI operation
// declares for its status: the status itself must be declared, the media
// type too, a JSON body must match the media type's schema, and the
// response's required headers must be there (and match their schemas).
func (s *apiSpec) checkResponse(t testing.TB, method, path string, resp *http.Response, body []byte) {
	t.Helper()
	what := fmt.Sprintf("%s %s → %d", method, path, resp.StatusCode)
	op := "/paths/" + ptrEscape(path) + "/" + strings.ToLower(method)
	if _, ok := s.node(op); !ok {
		t.Errorf("%s: openapi.yaml has no operation %s", what, op)
		return
	}
	rp := op + "/responses/" + strconv.Itoa(resp.StatusCode)
	if _, ok := s.node(rp); !ok {
		t.Errorf("%s: the status is not declared (body %q)", what, truncateBytes(body))
		return
	}
	rp = s.deref(rp)
	mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
	mt = strings.TrimSpace(mt)
	cp := rp + "/content/" + ptrEscape(mt)
	if _, ok := s.node(cp); !ok {
		t.Errorf("%s: Content-Type %q is not declared for it (body %q)", what, mt, truncateBytes(body))
	} else if mt == "application/json" && body != nil { // nil: a stream, whose records asyncapi.yaml describes
		s.checkJSON(t, cp+"/schema", body, what)
	}
	headers, _ := s.node(rp + "/headers")
	headerMap, _ := headers.(map[string]any)
	for name := range headerMap {
		hp := s.deref(rp + "/headers/" + ptrEscape(name))
		h, _ := s.node(hp)
		hm, ok := h.(map[string]any)
		if !ok {
			t.Errorf("%s: header %s refers to nothing (%s)", what, name, hp)
			continue
		}
		required, _ := hm["required"].(bool)
		got := resp.Header.Get(name)
		if got == "" {
			if required {
				t.Errorf("%s: no %s header, which the spec requires", what, name)
			}
			continue
		}
		var v any = got
		if typ, _ := s.node(hp + "/schema/type"); typ == "integer" {
			if n, err := strconv.ParseInt(got, 10, 64); err == nil {
				v = json.Number(strconv.FormatInt(n, 10))
			}
		}
		s.check(t, hp+"/schema", v, what+" header "+name)
	}
}

// apiClient sends requests to a running lsmux, with its token.
type apiClient struct {
	c     *http.Client
	root  string
	token string
}

func newAPIClient(t *testing.T, root, token string) *apiClient {
	tr := &http.Transport{DisableCompression: true}
	t.Cleanup(tr.CloseIdleConnections)
	return &apiClient{c: &http.Client{Transport: tr, Timeout: 10 * time.Second}, root: root, token: token}
}

// get fetches a path (with the token unless noAuth) and reads the answer.
// Header pairs may follow: "Origin", "http://evil.example"; "Host" sets
// the request's Host.
func (a *apiClient) get(t testing.TB, path string, noAuth bool, header ...string) (*http.Response, []byte) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, a.root+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.token != "" && !noAuth {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		if header[i] == "Host" {
			req.Host = header[i+1]
		} else {
			req.Header.Set(header[i], header[i+1])
		}
	}
	resp, err := a.c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	return resp, body
}

// expect fetches a path, wants status, and checks the answer against the
// OpenAPI operation op (a path template).
func (a *apiClient) expect(t testing.TB, spec *apiSpec, op, path string, status int, noAuth bool, header ...string) []byte {
	t.Helper()
	resp, body := a.get(t, path, noAuth, header...)
	if resp.StatusCode != status {
		t.Errorf("GET %s: %d, want %d: %s", path, resp.StatusCode, status, truncateBytes(body))
	}
	spec.checkResponse(t, http.MethodGet, op, resp, body)
	return body
}

// wsFrames reads a WebSocket subscription's text messages as they are.
type wsFrames struct {
	conn   *websocket.Conn
	frames chan []byte
	end    chan error // what ended the reading, once
	stop   chan struct{}
	done   chan struct{}
}

func dialWSFrames(t *testing.T, url, token string) *wsFrames {
	t.Helper()
	h := http.Header{}
	if token != "" {
		h.Set("Authorization", "Bearer "+token)
	}
	conn, _, err := websocket.DefaultDialer.Dial(strings.Replace(url, "http", "ws", 1), h)
	if err != nil {
		t.Fatalf("WebSocket %s: %v", url, err)
	}
	w := &wsFrames{conn: conn, frames: make(chan []byte, 1<<14), end: make(chan error, 1), stop: make(chan struct{}), done: make(chan struct{})}
	go func() {
		defer close(w.done)
		for {
			_, data, err := conn.ReadMessage()
			if err != nil {
				w.end <- err
				return
			}
			select {
			case w.frames <- data:
			case <-w.stop:
				return
			}
		}
	}()
	t.Cleanup(func() {
		close(w.stop)
		conn.Close()
		<-w.done
	})
	return w
}

// sseItem is one thing read from an event stream: a comment, or an event
// with its fields.
type sseItem struct {
	comment *string
	fields  map[string]string // id, event, data, retry: as sent
	order   []string
}

// sseItems reads an event stream as it is.
type sseItems struct {
	resp  *http.Response
	items chan sseItem
	done  chan struct{}
}

func openSSEItems(t *testing.T, a *apiClient, path string, header ...string) *sseItems {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, a.root+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	for i := 0; i+1 < len(header); i += 2 {
		req.Header.Set(header[i], header[i+1])
	}
	client := &http.Client{Transport: a.c.Transport} // no timeout: the stream runs
	resp, err := client.Do(req)
	if err != nil {
		cancel()
		t.Fatalf("SSE %s: %v", path, err)
	}
	if resp.StatusCode != http.StatusOK {
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		cancel()
		t.Fatalf("SSE %s: %d %s", path, resp.StatusCode, body)
	}
	s := &sseItems{resp: resp, items: make(chan sseItem, 1<<14), done: make(chan struct{})}
	go func() {
		defer close(s.done)
		defer close(s.items)
		send := func(it sseItem) bool {
			select {
			case s.items <- it:
				return true
			case <-ctx.Done():
				return false
			}
		}
		sc := bufio.NewScanner(resp.Body)
		sc.Buffer(make([]byte, 64<<10), 8<<20)
		cur := sseItem{fields: map[string]string{}}
		for sc.Scan() {
			line := sc.Text()
			switch {
			case line == "":
				if len(cur.fields) > 0 && !send(cur) {
					return
				}
				cur = sseItem{fields: map[string]string{}}
			case strings.HasPrefix(line, ":"):
				c := strings.TrimPrefix(line[1:], " ")
				if !send(sseItem{comment: &c}) {
					return
				}
			default:
				name, value, _ := strings.Cut(line, ":")
				if _, dup := cur.fields[name]; dup {
					value = cur.fields[name] + "\n" + strings.TrimPrefix(value, " ")
				} else {
					value = strings.TrimPrefix(value, " ")
					cur.order = append(cur.order, name)
				}
				cur.fields[name] = value
			}
		}
	}()
	t.Cleanup(func() {
		cancel()
		resp.Body.Close()
		<-s.done
	})
	return s
}

// next returns the next item, failing the test after timeout.
func (s *sseItems) next(t *testing.T, timeout time.Duration) (sseItem, bool) {
	t.Helper()
	select {
	case it, ok := <-s.items:
		return it, ok
	case <-time.After(timeout):
		t.Fatalf("no SSE item within %v", timeout)
		return sseItem{}, false
	}
}

// checkSSEEvent validates an event against an AsyncAPI SSE message: its
// id/event fields as the message's headers, its data as the payload.
func checkSSEEvent(t *testing.T, as *apiSpec, msg string, it sseItem) any {
	t.Helper()
	headers := map[string]any{}
	for k, v := range it.fields {
		if k != "data" {
			headers[k] = v
		}
	}
	mp := "/components/messages/" + msg
	as.check(t, mp+"/headers", headers, "SSE event fields "+fmt.Sprint(it.fields["event"]))
	v, _ := as.checkJSON(t, mp+"/payload", []byte(it.fields["data"]), "SSE "+it.fields["event"]+" data")
	return v
}

// TestAPISpecDocuments checks the specs themselves: every schema compiles
// (so every $ref resolves and every pattern is a valid regexp), the enums
// that name the code's own lists say the same as the code, and api.md
// links both files.
func TestAPISpecDocuments(t *testing.T) {
	oa := loadAPISpec(t, "openapi.yaml", jsonschema.Draft2020)
	as := loadAPISpec(t, "asyncapi.yaml", jsonschema.Draft7)
	for _, s := range []struct {
		spec *apiSpec
		ptrs []string
	}{{oa, []string{"/components/schemas"}}, {as, []string{"/components/schemas", "/components/messages"}}} {
		for _, base := range s.ptrs {
			n, _ := s.spec.node(base)
			for name := range n.(map[string]any) {
				if base == "/components/messages" {
					for _, part := range []string{"payload", "headers"} {
						if _, ok := s.spec.node(base + "/" + name + "/" + part); ok {
							s.spec.schema(t, base+"/"+name+"/"+part)
						}
					}
					continue
				}
				s.spec.schema(t, base+"/"+name)
			}
		}
	}
	// Every local $ref resolves, wherever it is (responses, headers,
	// parameters, messages, channels).
	for _, s := range []*apiSpec{oa, as} {
		var walk func(v any, at string)
		walk = func(v any, at string) {
			switch v := v.(type) {
			case map[string]any:
				if ref, ok := v["$ref"].(string); ok {
					if _, found := s.node(strings.TrimPrefix(ref, "#")); !strings.HasPrefix(ref, "#") || !found {
						t.Errorf("%s: $ref %q at %s resolves to nothing", s.url, ref, at)
					}
				}
				for k, e := range v {
					walk(e, at+"/"+ptrEscape(k))
				}
			case []any:
				for i, e := range v {
					walk(e, at+"/"+strconv.Itoa(i))
				}
			}
		}
		walk(s.doc, "")
	}
	// Every OpenAPI response schema compiles too.
	paths, _ := oa.node("/paths")
	for p := range paths.(map[string]any) {
		ops, _ := oa.node("/paths/" + ptrEscape(p))
		for m := range ops.(map[string]any) {
			responses, _ := oa.node("/paths/" + ptrEscape(p) + "/" + m + "/responses")
			for code := range responses.(map[string]any) {
				rp := oa.deref("/paths/" + ptrEscape(p) + "/" + m + "/responses/" + code)
				content, _ := oa.node(rp + "/content")
				declared, _ := content.(map[string]any)
				for mt := range declared {
					oa.schema(t, rp+"/content/"+ptrEscape(mt)+"/schema")
				}
			}
		}
	}

	// The subscription parameters' schemas take what lsmux takes.
	for _, c := range []struct {
		schema string
		query  map[string]any
		valid  bool
	}{
		{"SubscriptionQuery", map[string]any{"from": "1796119645072616", "filter": "true", "fields": "a,b.c", "sample": "0.1"}, true},
		{"SubscriptionQuery", map[string]any{"from": "oldest"}, true},
		{"SubscriptionQuery", map[string]any{"from": "live", "maxConnections": "4"}, true},
		{"SubscriptionQuery", map[string]any{"from": "x"}, false},
		{"SubscriptionQuery", map[string]any{"from": "-1"}, false},
		{"SSEQuery", map[string]any{"filter.checkout": "true", "from": "oldest"}, true},
		{"SSEQuery", map[string]any{"filter.checkout": ""}, false},
		{"SSEQuery", map[string]any{"from": "soon"}, false},
	} {
		err := as.schema(t, "/components/schemas/"+c.schema).Validate(c.query)
		if (err == nil) != c.valid {
			t.Errorf("%s %v: valid %v, want %v (%v)", c.schema, c.query, err == nil, c.valid, err)
		}
	}

	enum := func(s *apiSpec, ptr string) []string {
		n, ok := s.node(ptr)
		if !ok {
			t.Fatalf("nothing at %s", ptr)
		}
		var out []string
		for _, e := range n.([]any) {
			out = append(out, e.(string))
		}
		slices.Sort(out)
		return out
	}
	var states []string
	for _, st := range upstream.States {
		states = append(states, string(st))
	}
	slices.Sort(states)
	if got := enum(oa, "/components/schemas/UpstreamState/enum"); !slices.Equal(got, states) {
		t.Errorf("openapi UpstreamState %v, the code's upstream.States %v", got, states)
	}
	reasons := slices.Sorted(slices.Values(proxy.DisconnectReasons))
	if got := enum(oa, "/components/schemas/Disconnects/required"); !slices.Equal(got, reasons) {
		t.Errorf("openapi Disconnects %v, the code's proxy.DisconnectReasons %v", got, reasons)
	}

	api, err := os.ReadFile("docs/api.md")
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range []string{"(openapi.yaml)", "(asyncapi.yaml)"} {
		if !bytes.Contains(api, []byte(f)) {
			t.Errorf("docs/api.md does not link %s", f)
		}
	}
}

// TestAPISpecConformance runs lsmux against the simulator with a data dir
// (so status has its history object) and a subscriber token, and checks
// what it answers against docs/openapi.yaml and what it streams against
// docs/asyncapi.yaml: /v1/streams, /v1/status (plain, with subscribers
// and their pages), /v1/validate, /healthz, /readyz, /metrics, the errors
// (400, 401, 403, 404), WebSocket hit and gap frames and the 1001 close,
// SSE hit, named-filter hit, gap, comment and close events, and drop-in
// records with gzip.
func TestAPISpecConformance(t *testing.T) {
	oa := loadAPISpec(t, "openapi.yaml", jsonschema.Draft2020)
	as := loadAPISpec(t, "asyncapi.yaml", jsonschema.Draft7)
	const token = "spec-token"
	sim := newSim(t, 200)
	r := startApp(t, sim, "-data-dir", t.TempDir(), "-auth-token", token, "-ping-interval", "300ms")
	a := newAPIClient(t, r.root, token)
	waitFor(t, 15*time.Second, "the upstream streaming and hits in the ring", func() bool {
		resp, _ := a.get(t, "/readyz?upstream=1", false)
		return resp.StatusCode == 200 && ringHits(a) > 20
	})

	t.Run("endpoints", func(t *testing.T) {
		a.expect(t, oa, "/v1/streams", "/v1/streams", 200, false)
		a.expect(t, oa, "/v1/streams", "/v1/streams?pretty=1", 200, false)
		body := a.expect(t, oa, "/v1/status", "/v1/status", 200, false)
		var st struct {
			Auth    string
			Streams []map[string]json.RawMessage
		}
		json.Unmarshal(body, &st)
		if st.Auth != "token" || len(st.Streams) != 1 || st.Streams[0]["history"] == nil {
			t.Errorf("status: auth %q, %d streams, want token and one stream with a history object: %s", st.Auth, len(st.Streams), truncateBytes(body))
		}
		a.expect(t, oa, "/v1/status", "/v1/status?stream=demo&pretty=1", 200, false)
		for _, q := range []string{"filter=hit.pageName.startsWith(%22checkout%22)", "fields=pageName,geoCountry", "from=oldest&sample=0.5",
			"filter.a=true&filter.b=has(hit.pageName)"} {
			body := a.expect(t, oa, "/v1/validate", "/v1/validate?"+q, 200, false)
			if !bytes.Contains(body, []byte(`"valid":true`)) {
				t.Errorf("validate %s: %s, want valid", q, body)
			}
		}
		for _, q := range []string{"filter=hit.x%3D%3D", "from=x", "fields=,", "filter.a=hit.x%3D%3D", "sample=2"} {
			body := a.expect(t, oa, "/v1/validate", "/v1/validate?"+q, 200, false)
			invalid := bytes.Contains(body, []byte(`"valid":false`))
			if q == "sample=2" {
				drift(t, "validate sample", invalid, "GET /v1/validate?sample=2: "+strings.TrimSpace(string(body))+" (subscribing with it is answered 400)")
			} else if !invalid {
				t.Errorf("validate %s: %s, want invalid", q, body)
			}
		}
		a.expect(t, oa, "/healthz", "/healthz", 200, true)
		a.expect(t, oa, "/readyz", "/readyz", 200, true)
		a.expect(t, oa, "/readyz", "/readyz?upstream=1", 200, true)
		a.expect(t, oa, "/metrics", "/metrics", 200, true)
	})

	t.Run("errors", func(t *testing.T) {
		for _, c := range []struct {
			op, path string
			status   int
			noAuth   bool
			header   []string
		}{
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse?from=x", 400, false, nil},
			{"/v1/streams/{name}/ws", "/v1/streams/demo/ws?from=-1", 400, false, nil},
			{"/api/{version}/stream/{name}", "/api/1/stream/demo?from=soon", 400, false, nil},
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse?filter=hit.x%3D%3D", 400, false, nil},
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse?sample=2", 400, false, nil},
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse?fields=,", 400, false, nil},
			{"/v1/streams/{name}/ws", "/v1/streams/demo/ws?filter.a=true", 400, false, nil},
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse", 400, false, []string{"Last-Event-ID", "abc"}},
			{"/v1/status", "/v1/status?limit=0", 400, false, nil},
			{"/v1/status", "/v1/status?after=x", 400, false, nil},
			{"/v1/status", "/v1/status", 401, true, nil},
			{"/v1/streams", "/v1/streams?access_token=wrong", 401, true, nil},
			{"/v1/validate", "/v1/validate?filter=true", 401, true, nil},
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse", 401, true, nil},
			{"/v1/streams/{name}/ws", "/v1/streams/demo/ws", 401, true, []string{"Authorization", "Bearer wrong"}},
			{"/v1/status", "/v1/status", 403, false, []string{"Origin", "http://evil.example"}},
			{"/v1/streams/{name}/sse", "/v1/streams/demo/sse", 403, false, []string{"Sec-Fetch-Site", "cross-site"}},
			{"/v1/streams/{name}/sse", "/v1/streams/nope/sse", 404, false, nil},
			{"/v1/streams/{name}/ws", "/v1/streams/nope/ws", 404, false, nil},
			{"/api/{version}/stream/{name}", "/api/2/stream/nope", 404, false, nil},
			{"/v1/status", "/v1/status?stream=nope", 404, false, nil},
		} {
			a.expect(t, oa, c.op, c.path, c.status, c.noAuth, c.header...)
		}
		// The token as a query parameter is accepted like the header.
		a.expect(t, oa, "/v1/streams", "/v1/streams?access_token="+token, 200, true)

		for _, p := range []string{"/v1/nope", "/v1/streams/demo/nope", "/nope"} {
			resp, body := a.get(t, p, false)
			mt, _, _ := strings.Cut(resp.Header.Get("Content-Type"), ";")
			ok := resp.StatusCode == 404 && mt == "application/json"
			if ok {
				_, ok = oa.checkJSON(t, "/components/schemas/Error", body, "GET "+p)
			}
			drift(t, "404 unknown endpoint", ok, fmt.Sprintf("GET %s: %d %s %q", p, resp.StatusCode, mt, truncateBytes(body)))
		}
	})

	// Subscribers on every transport, kept until shutdown.
	ws := dialWSFrames(t, r.base+"/ws?from=1", token)
	sse := openSSEItems(t, a, "/v1/streams/demo/sse?from=1")
	named := openSSEItems(t, a, "/v1/streams/demo/sse?filter.all=true&filter.none=false&fields=pageName&from=oldest")

	t.Run("websocket frames", func(t *testing.T) {
		seen := map[string]int{}
		deadline := time.After(10 * time.Second)
		for seen["hit"] < 50 || seen["gap"] == 0 {
			select {
			case f := <-ws.frames:
				v, err := jsonschema.UnmarshalJSON(bytes.NewReader(f))
				if err != nil {
					t.Fatalf("frame %q: %v", truncateBytes(f), err)
				}
				typ, _ := v.(map[string]any)["type"].(string)
				msg := map[string]string{"hit": "wsHit", "gap": "wsGap"}[typ]
				if msg == "" {
					t.Fatalf("frame of a type asyncapi.yaml does not declare: %q", truncateBytes(f))
				}
				seen[typ]++
				as.check(t, "/components/messages/"+msg+"/payload", v, "WebSocket "+typ+" frame")
			case err := <-ws.end:
				t.Fatalf("WebSocket ended: %v (seen %v)", err, seen)
			case <-deadline:
				t.Fatalf("10 s of frames: %v, want a gap (from=1) and 50 hits", seen)
			}
		}
	})

	t.Run("sse events", func(t *testing.T) {
		seen := map[string]int{}
		for seen["hit"] < 50 || seen["gap"] == 0 || seen["ping"] == 0 || seen["retry"] == 0 {
			it, ok := sse.next(t, 10*time.Second)
			if !ok {
				t.Fatalf("event stream ended (seen %v)", seen)
			}
			if it.comment != nil {
				v := any(*it.comment)
				as.check(t, "/components/messages/sseComment/payload", v, "SSE comment")
				if *it.comment == "ping" {
					seen["ping"]++
				}
				continue
			}
			if retry, ok := it.fields["retry"]; ok {
				// The stream's first block: the reconnect hint, 1 to 5 s.
				n, err := strconv.Atoi(retry)
				if err != nil || n < 1000 || n > 5000 || len(it.fields) != 1 {
					t.Errorf("retry block %v: want only retry: 1000..5000", it.fields)
				}
				seen["retry"]++
				continue
			}
			ev := it.fields["event"]
			seen[ev]++
			switch ev {
			case "hit":
				checkSSEEvent(t, as, "sseHit", it)
				if !slices.Equal(it.order, []string{"id", "event", "data"}) {
					t.Errorf("hit event fields %v, want id, event, data", it.order)
				}
			case "gap":
				checkSSEEvent(t, as, "sseGap", it)
			default:
				t.Fatalf("event asyncapi.yaml does not declare: %v", it.fields)
			}
		}
	})

	t.Run("sse named filters", func(t *testing.T) {
		hits := 0
		for hits < 20 {
			it, ok := named.next(t, 10*time.Second)
			if !ok {
				t.Fatal("event stream ended")
			}
			if it.comment != nil || it.fields["retry"] != "" {
				continue
			}
			if it.fields["event"] != "hit" {
				t.Fatalf("event %v, want hits", it.fields)
			}
			hits++
			v := checkSSEEvent(t, as, "sseNamedHit", it)
			if m, ok := v.(map[string]any); ok {
				if f, _ := json.Marshal(m["filters"]); string(f) != `["all"]` {
					t.Errorf("filters %s, want [\"all\"]", f)
				}
			}
		}
	})

	t.Run("drop-in records", func(t *testing.T) {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, r.root+"/api/1/stream/demo?from=oldest&maxConnections=4", nil)
		req.Header.Set("Authorization", "Bearer "+token)
		req.Header.Set("Accept-Encoding", "gzip")
		resp, err := a.c.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		oa.checkResponse(t, http.MethodGet, "/api/{version}/stream/{name}", resp, nil)
		if resp.StatusCode != 200 || resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatalf("drop-in: %d, Content-Encoding %q, want 200 gzip", resp.StatusCode, resp.Header.Get("Content-Encoding"))
		}
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		br := bufio.NewReader(zr)
		for records := 0; records < 20; {
			line, err := br.ReadBytes('\n')
			if err != nil {
				t.Fatalf("after %d records: %v", records, err)
			}
			rec, crlf := bytes.CutSuffix(line, []byte("\r\n"))
			if !crlf {
				t.Fatalf("record not ended by CRLF: %q", truncateBytes(line))
			}
			if len(rec) == 0 {
				continue // a keepalive
			}
			records++
			as.checkJSON(t, "/components/messages/ndjsonHit/payload", rec, "drop-in record")
		}
	})

	t.Run("status with subscribers", func(t *testing.T) {
		body := a.expect(t, oa, "/v1/status", "/v1/status?subscribers=1", 200, false)
		var st struct {
			Streams []struct {
				Subscribers []struct {
					ID     uint64
					Filter string
				}
				NextAfter uint64
			}
		}
		if err := json.Unmarshal(body, &st); err != nil || len(st.Streams) != 1 {
			t.Fatalf("status: %v %s", err, truncateBytes(body))
		}
		subs := st.Streams[0].Subscribers
		if len(subs) < 3 || !slices.ContainsFunc(subs, func(s struct {
			ID     uint64
			Filter string
		}) bool {
			return s.Filter != ""
		}) {
			t.Errorf("subscribers %+v, want the WebSocket and two SSE subscribers, one with a filter", subs)
		}
		body = a.expect(t, oa, "/v1/status", "/v1/status?subscribers=true&limit=1", 200, false)
		json.Unmarshal(body, &st)
		if len(st.Streams[0].Subscribers) != 1 || st.Streams[0].NextAfter == 0 {
			t.Fatalf("limit=1: %s, want one subscriber and nextAfter", truncateBytes(body))
		}
		a.expect(t, oa, "/v1/status", "/v1/status?subscribers=1&limit=1&after="+strconv.FormatUint(st.Streams[0].NextAfter, 10), 200, false)
	})

	t.Run("goodbyes at shutdown", func(t *testing.T) {
		r.stop()
		// WebSocket: a 1001 close frame with its reason.
		func() {
			deadline := time.After(10 * time.Second)
			for {
				select {
				case <-ws.frames:
				case err := <-ws.end:
					var ce *websocket.CloseError
					if !errors.As(err, &ce) {
						t.Errorf("WebSocket ended with %v, want a close frame", err)
						return
					}
					if ce.Code != websocket.CloseGoingAway {
						t.Errorf("close code %d, want 1001", ce.Code)
					}
					as.check(t, "/components/messages/wsClose/payload", map[string]any{"code": json.Number(strconv.Itoa(ce.Code)), "reason": ce.Text}, "WebSocket close")
					return
				case <-deadline:
					t.Error("no WebSocket close within 10 s of shutdown")
					return
				}
			}
		}()
		// SSE: event: close with {"reason":"shutdown"}, last.
		for _, s := range []*sseItems{sse, named} {
			var closing *sseItem
			for {
				it, ok := s.next(t, 10*time.Second)
				if !ok {
					break
				}
				if closing != nil {
					t.Errorf("%v after the close event", it.fields)
				}
				if it.fields["event"] == "close" {
					c := it
					closing = &c
					v := checkSSEEvent(t, as, "sseClose", it)
					if m, _ := v.(map[string]any); m["reason"] != "shutdown" {
						t.Errorf("close %v, want reason shutdown", it.fields["data"])
					}
				}
			}
			if closing == nil {
				t.Error("the event stream ended without a close event")
			}
		}
		select {
		case <-r.done:
		case <-time.After(10 * time.Second):
			t.Fatal("lsmux did not stop")
		}
	})
}

// ringHits is the demo stream's ring size, or 0.
func ringHits(a *apiClient) int {
	var st []struct{ Ring struct{ Hits int } }
	if getJSONAuth(a, "/v1/streams", &st) != nil || len(st) == 0 {
		return 0
	}
	return st[0].Ring.Hits
}

func getJSONAuth(a *apiClient, path string, v any) error {
	req, err := http.NewRequest(http.MethodGet, a.root+path, nil)
	if err != nil {
		return err
	}
	if a.token != "" {
		req.Header.Set("Authorization", "Bearer "+a.token)
	}
	resp, err := a.c.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	return json.NewDecoder(resp.Body).Decode(v)
}

// TestAPISpecUnreadyAndLimits runs lsmux without a token against an
// upstream that answers 503, with room for one subscriber, and checks the
// answers of an lsmux that is not streaming and refuses: /readyz?upstream=1
// 503 with the readiness object, the status of a slot that fails (last
// error, next attempt, results), 403 for a Host that is not allowed, 503
// with Retry-After past the subscriber limit, and 429 with Retry-After
// past the compile rate.
func TestAPISpecUnreadyAndLimits(t *testing.T) {
	oa := loadAPISpec(t, "openapi.yaml", jsonschema.Draft2020)
	sim := newSim(t, 50)
	sim.FailNext(1_000_000, http.StatusServiceUnavailable)
	r := startApp(t, sim, "-max-subscribers", "1")
	a := newAPIClient(t, r.root, "")

	waitFor(t, 15*time.Second, "a refused attempt in the status", func() bool {
		var st struct {
			Streams []struct {
				Upstream []struct{ Results map[string]int }
			}
		}
		return getJSONAuth(a, "/v1/status", &st) == nil && len(st.Streams) == 1 && len(st.Streams[0].Upstream) > 0 &&
			st.Streams[0].Upstream[0].Results["503"] > 0
	})
	body := a.expect(t, oa, "/v1/status", "/v1/status", 200, false)
	var st struct {
		Auth    string
		Streams []map[string]json.RawMessage
	}
	json.Unmarshal(body, &st)
	if st.Auth != "anonymous" || st.Streams[0]["history"] != nil {
		t.Errorf("status: auth %q, history %s; want anonymous and none", st.Auth, st.Streams[0]["history"])
	}
	if up := string(st.Streams[0]["upstream"]); !strings.Contains(up, `"lastError"`) || !strings.Contains(up, `"lastStatus":503`) {
		t.Errorf("upstream %s: want the refusal's lastError and lastStatus", up)
	}
	a.expect(t, oa, "/v1/streams", "/v1/streams", 200, false)
	a.expect(t, oa, "/readyz", "/readyz", 200, false)
	body = a.expect(t, oa, "/readyz", "/readyz?upstream=1", 503, false)
	if !bytes.Contains(body, []byte(`"notReady"`)) {
		t.Errorf("readyz?upstream=1: %s, want a stream's notReady", body)
	}
	a.expect(t, oa, "/healthz", "/healthz", 200, false)
	a.expect(t, oa, "/v1/status", "/v1/status", 403, false, "Host", "evil.example")
	a.expect(t, oa, "/readyz", "/readyz", 403, false, "Host", "evil.example")

	// One subscriber is the limit: the next gets 503 with Retry-After.
	openSSEItems(t, a, "/v1/streams/demo/sse")
	waitFor(t, 5*time.Second, "the first subscriber counted", func() bool {
		var st []struct{ Subscribers map[string]int }
		return getJSONAuth(a, "/v1/streams", &st) == nil && len(st) == 1 && st[0].Subscribers["sse"] == 1
	})
	a.expect(t, oa, "/v1/status", "/v1/status?subscribers=1", 200, false)
	for _, op := range []string{"/v1/streams/{name}/sse", "/v1/streams/{name}/ws"} {
		path := strings.Replace(op, "{name}", "demo", 1)
		resp, body := a.get(t, path, false)
		if resp.StatusCode != http.StatusServiceUnavailable || resp.Header.Get("Retry-After") == "" {
			t.Errorf("GET %s past the subscriber limit: %d, Retry-After %q; want 503 with Retry-After", path, resp.StatusCode, resp.Header.Get("Retry-After"))
		}
		oa.checkResponse(t, http.MethodGet, op, resp, body)
	}

	// The compile rate: 20 new filters at once, then 429 with Retry-After.
	refused := false
	for i := 0; i < 60 && !refused; i++ {
		resp, body := a.get(t, fmt.Sprintf("/v1/validate?filter=hit.n%%3D%%3D%d", i), false)
		oa.checkResponse(t, http.MethodGet, "/v1/validate", resp, body)
		refused = resp.StatusCode == http.StatusTooManyRequests
	}
	if !refused {
		t.Error("60 new filters at once were never refused with 429")
	}
}

// TestSpecsValidateWithOfficialTools runs the specs' own validators:
// asyncapi validate (AsyncAPI's parser and governance rules) and redocly
// lint (with redocly.yaml), failing on warnings too. Telemetry and update
// checks are off.
func TestSpecsValidateWithOfficialTools(t *testing.T) {
	metrics := filepath.Join(t.TempDir(), "asyncapi-analytics")
	if err := os.WriteFile(metrics, []byte(`{"analyticsEnabled":"false","infoMessageShown":"true","userID":"lsmux-test"}`), 0o600); err != nil {
		t.Fatal(err)
	}
	env := append(os.Environ(), "CI=true", "NO_COLOR=1", "DO_NOT_TRACK=1", "ASYNCAPI_METRICS_CONFIG_PATH="+metrics,
		"REDOCLY_TELEMETRY=off", "REDOCLY_SUPPRESS_UPDATE_NOTICE=true")
	for _, tool := range []struct {
		name string
		args []string
		bad  *regexp.Regexp // output that fails the test even when the tool exits 0
	}{
		{"asyncapi", []string{"validate", "docs/asyncapi.yaml", "--fail-severity", "warn"}, regexp.MustCompile(`\b[1-9]\d* (errors?|warnings?)\b`)},
		{"redocly", []string{"lint", "docs/openapi.yaml"}, regexp.MustCompile(`\b[1-9]\d* (errors?|warnings?)\b`)},
	} {
		t.Run(tool.name, func(t *testing.T) {
			bin := testTool(t, tool.name, "LSMUX_SPEC_TESTS", "npm install -g @asyncapi/cli @redocly/cli")
			ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
			defer cancel()
			cmd := exec.CommandContext(ctx, bin, tool.args...)
			cmd.Env = env
			out, err := cmd.CombinedOutput()
			if err != nil {
				t.Fatalf("%s %s: %v\n%s", tool.name, strings.Join(tool.args, " "), err, out)
			}
			if m := tool.bad.Find(out); m != nil {
				t.Fatalf("%s %s: %q\n%s", tool.name, strings.Join(tool.args, " "), m, out)
			}
		})
	}
}

// TestAPISpecClusterStatus checks /v1/status and /readyz of two replicas in
// cluster mode (a leader and a follower, whose slots hold) against
// openapi.yaml: the cluster object and the cluster's history object.
func TestAPISpecClusterStatus(t *testing.T) {
	oa := loadAPISpec(t, "openapi.yaml", jsonschema.Draft2020)
	ns := natstest.Start(t)
	sim := newSim(t, 100)
	reps := []*running{startReplica(t, sim, ns.URL(), "spec-a"), startReplica(t, sim, ns.URL(), "spec-b")}
	roots := []string{reps[0].root, reps[1].root}
	waitFor(t, 20*time.Second, "one leader, streaming, and a follower that knows it", func() bool {
		l := leaders(roots)
		if len(l) != 1 {
			return false
		}
		for _, r := range roots {
			if v, err := clusterStatus(r); err != nil || v.Leader == "" || v.ConsumedSeq == 0 {
				return false
			}
		}
		return true
	})
	nullEvents := 0
	for _, r := range reps {
		a := newAPIClient(t, r.root, "")
		resp, body := a.get(t, "/v1/status", false)
		if resp.StatusCode != 200 {
			t.Fatalf("%s status: %d %s", r.root, resp.StatusCode, body)
		}
		// A slot that has never connected (a follower's) shows
		// "events": null, not []: a known drift, set aside here so the
		// rest of the object is still checked.
		v, err := jsonschema.UnmarshalJSON(bytes.NewReader(body))
		if err != nil {
			t.Fatal(err)
		}
		for _, stream := range v.(map[string]any)["streams"].([]any) {
			for _, slot := range stream.(map[string]any)["upstream"].([]any) {
				if m := slot.(map[string]any); m["events"] == nil {
					nullEvents++
					m["events"] = []any{}
				}
			}
		}
		oa.check(t, "/components/schemas/Status", v, "GET /v1/status of "+r.root)
		var st struct {
			Streams []map[string]json.RawMessage
		}
		json.Unmarshal(body, &st)
		if len(st.Streams) != 1 || st.Streams[0]["cluster"] == nil || !bytes.Contains(st.Streams[0]["history"], []byte(`"store":"cluster"`)) {
			t.Errorf("%s status: want a cluster object and a cluster history: %s", r.root, truncateBytes(body))
		}
		a.expect(t, oa, "/readyz", "/readyz", 200, false)
		a.expect(t, oa, "/v1/streams", "/v1/streams", 200, false)
	}
	drift(t, "events null", nullEvents == 0, fmt.Sprintf("%d upstream slots with \"events\": null", nullEvents))
}
