package proxy_test

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/klauspost/compress/gzip"

	"lsmux/fanout"
	"lsmux/proxy"
)

func country(i int) string { return []string{"fra", "usa", "deu"}[i%3] }

func hitC(i int) []byte {
	return []byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"geoCountry":"%s","pageName":"p%d","events":{"purchase":{"value":%d}}}`, i, country(i), i, i))
}

func TestFiltersAndFieldsOnEveryTransport(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for i := range 30 {
		r.hub.Append(hitC(i), time.Now())
	}
	q := "?from=oldest&filter=" + url.QueryEscape(`hit.geoCountry == "fra"`) + "&fields=pageName"
	ws := mustWS(t, r.base+"/ws"+q)
	sse := mustSSE(t, r.base+"/sse"+q, nil)
	for _, ch := range []<-chan msg{ws.Msgs, sse.Msgs} {
		for i := 0; i < 30; i += 3 {
			m := next(t, ch, 5*time.Second)
			want := fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"pageName":"p%d"}`, i, i)
			if m.Seq != uint64(1+i) || string(m.Hit) != want {
				t.Fatalf("got seq %d %s, want seq %d %s", m.Seq, m.Hit, 1+i, want)
			}
		}
	}
	// The drop-in endpoint, gzip and plain.
	for _, gz := range []bool{true, false} {
		lines := readNDJSON(t, r.root+"/api/1/stream/s"+q+"&maxConnections=3", gz, 10)
		for k, line := range lines {
			i := 3 * k
			if want := fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"pageName":"p%d"}`, i, i); line != want {
				t.Fatalf("gzip=%v line %d: %s, want %s", gz, k, line, want)
			}
		}
	}
}

// readNDJSON reads n non-empty CRLF records from the drop-in endpoint.
func readNDJSON(t *testing.T, u string, gz bool, n int) []string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, u, nil)
	tr := &http.Transport{DisableCompression: true}
	defer tr.CloseIdleConnections()
	if gz {
		req.Header.Set("Accept-Encoding", "gzip")
	}
	resp, err := (&http.Client{Transport: tr}).Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != 200 {
		b, _ := io.ReadAll(resp.Body)
		t.Fatalf("status %d: %s", resp.StatusCode, b)
	}
	var body io.Reader = resp.Body
	if gz {
		if resp.Header.Get("Content-Encoding") != "gzip" {
			t.Fatal("asked for gzip, got none")
		}
		zr, err := gzip.NewReader(resp.Body)
		if err != nil {
			t.Fatal(err)
		}
		body = zr
	} else if resp.Header.Get("Content-Encoding") != "" {
		t.Fatal("gzip without asking")
	}
	br := bufio.NewReader(body)
	var out []string
	for len(out) < n {
		line, err := br.ReadString('\n')
		if err != nil {
			t.Fatalf("after %d records: %v", len(out), err)
		}
		if !strings.HasSuffix(line, "\r\n") {
			t.Fatalf("record %q does not end in CRLF", line)
		}
		if line = strings.TrimSuffix(line, "\r\n"); line != "" {
			out = append(out, line)
		}
	}
	return out
}

func TestInvalidFilterIs400WithThePositionBeforeAnyStream(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for _, path := range []string{"/v1/streams/s/ws", "/v1/streams/s/sse", "/api/1/stream/s"} {
		resp, err := http.Get(r.root + path + "?filter=" + url.QueryEscape(`hit.geoCountry == `))
		if err != nil {
			t.Fatal(err)
		}
		var body struct{ Error string }
		json.NewDecoder(resp.Body).Decode(&body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !strings.Contains(body.Error, "1:") || !strings.Contains(body.Error, "compile") {
			t.Errorf("%s: %d %q, want 400 with the compiler's position", path, resp.StatusCode, body.Error)
		}
	}
	for q, want := range map[string]string{
		"fields=a,,b":            "fields",
		"sample=2":               "sample",
		"sample=x":               "sample",
		"filter.a%20b=true":      "filter.a b",
		"filter.ok=hit.x+%3D%3D": "filter.ok",
	} {
		resp, _ := http.Get(r.base + "/sse?" + q)
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 400 || !bytes.Contains(b, []byte(want)) {
			t.Errorf("%s: %d %s", q, resp.StatusCode, b)
		}
	}
	resp, _ := http.Get(r.base + "/ws?filter.x=true")
	resp.Body.Close()
	if resp.StatusCode != 400 {
		t.Errorf("named filters on WebSocket: %d, want 400", resp.StatusCode)
	}
}

func TestNamedFiltersShareOneSSEConnection(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for i := range 6 {
		r.hub.Append(hitC(i), time.Now())
	}
	q := "?from=oldest&filter.fr=" + url.QueryEscape(`hit.geoCountry == "fra"`) + "&filter.big=" + url.QueryEscape(`hit.events.purchase.value >= 3`)
	sse := mustSSE(t, r.base+"/sse"+q, nil)
	want := []string{`["fr"]`, `["big","fr"]`, `["big"]`, `["big"]`}
	seqs := []uint64{1, 4, 5, 6}
	for k, w := range want {
		m := next(t, sse.Msgs, 5*time.Second)
		var got struct {
			Filters json.RawMessage
			Hit     json.RawMessage
		}
		if err := json.Unmarshal(m.Hit, &got); err != nil {
			t.Fatal(err)
		}
		if m.Seq != seqs[k] || string(got.Filters) != w || !bytes.Equal(got.Hit, hitC(int(seqs[k]-1))) {
			t.Fatalf("event %d: seq %d filters %s hit %s", k, m.Seq, got.Filters, got.Hit)
		}
	}
}

func TestSampleKeepsWholeVisitors(t *testing.T) {
	r := serve(t, fanout.Options{}, proxy.Options{})
	for i := range 3000 {
		r.hub.Append([]byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d,"mcVisIdHigh":1,"mcVisIdLow":%d}`, i, i%300)), time.Now())
	}
	got := map[int]int{}
	sse := mustSSE(t, r.base+"/sse?from=oldest&sample=0.2", nil)
	for {
		m, err := proxyNext(sse.Msgs, 300*time.Millisecond)
		if err != nil {
			break
		}
		var h struct{ McVisIdLow int }
		json.Unmarshal(m.Hit, &h)
		got[h.McVisIdLow]++
	}
	if len(got) < 30 || len(got) > 90 {
		t.Fatalf("sample=0.2 of 300 visitors kept %d", len(got))
	}
	for v, n := range got {
		if n != 10 {
			t.Fatalf("visitor %d: %d of its 10 hits", v, n)
		}
	}
}
