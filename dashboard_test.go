package main

import (
	"context"
	"fmt"
	"go/build"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/chromedp/cdproto/runtime"
	"github.com/chromedp/chromedp"

	cdplog "github.com/chromedp/cdproto/log"

	"lsmux/cluster/natstest"
	"lsmux/upstream/simulator"
)

// TestDashboardInChromium drives the real dashboard in headless Chromium
// against the demo wiring (simulator, lsmux, fault controls): the upstream
// row says streaming, the hit counter rises, the top pages fill, a filter
// narrows the tail, an invalid filter shows the server's error, and the
// console stays clean.
func TestDashboardInChromium(t *testing.T) {
	browser := chromiumOrSkip(t)
	sim, err := simulator.New(simulator.Options{Rate: 80})
	if err != nil {
		t.Fatal(err)
	}
	defer sim.Close()
	a := runApp(t, []string{"-listen", "127.0.0.1:0", "-stream-url", sim.StreamURL("demo"), "-token-url", sim.TokenURL(),
		"-client-id", sim.ClientID(), "-client-secret", sim.ClientSecret(), "-reconnect-delay", "2s", "-shutdown-timeout", "2s"},
		sim.FaultHandler(2*time.Second))

	page := "http://" + a.addr() + "/"
	d := openBrowser(t, browser)
	step, poll, consoleErrors := d.step, d.poll, d.consoleErrors
	if err := chromedp.Do(step, chromedp.Navigate(page)); err != nil {
		t.Fatal(err)
	}
	poll("the upstream row to say streaming", `document.querySelector("#upstream td.state-streaming") !== null`)
	count := func() int {
		txt, err := chromedp.Run(step, chromedp.Text(chromedp.CSS("#hits-total")))
		if err != nil {
			t.Fatal(err)
		}
		n, _ := strconv.Atoi(strings.NewReplacer(",", "", ".", "", " ", "", "\u00a0", "").Replace(txt))
		return n
	}
	first := count()
	poll("the hits counter to rise", `parseInt(document.querySelector("#hits-total").textContent.replace(/\D/g, "")) > `+strconv.Itoa(first+20))
	poll("the top pages to fill", `document.querySelectorAll("#top-pages li").length >= 3`)
	poll("the tail to show hits", `document.querySelectorAll("#tail div[data-country]").length >= 5`)

	if err := chromedp.Do(step, chromedp.SendKeys(chromedp.CSS("#filter"), `hit.geoCountry == "fra"`),
		chromedp.Click(chromedp.CSS(`#filter-form button[type="submit"]`))); err != nil {
		t.Fatal(err)
	}
	poll("the filter to narrow the tail to France", `(() => { const rows = [...document.querySelectorAll("#tail div[data-country]")];
		return rows.length >= 3 && rows.every((r) => r.dataset.country === "fra"); })()`)

	if _, err := chromedp.Run(step, chromedp.Evaluate[bool](`document.querySelector("#filter").value = ""; true`)); err != nil {
		t.Fatal(err)
	}
	if err := chromedp.Do(step, chromedp.SendKeys(chromedp.CSS("#filter"), `hit.geoCountry == `),
		chromedp.Click(chromedp.CSS(`#filter-form button[type="submit"]`))); err != nil {
		t.Fatal(err)
	}
	poll("the compiler's error to show inline", `document.querySelector("#filter-error").textContent.includes("does not compile")`)
	poll("the demo fault buttons", `document.querySelectorAll("#demo-buttons button").length >= 3`)

	update := os.Getenv("LSMUX_UPDATE_SCREENSHOT") == "1"
	if update {
		// Cosmetic, for the README's picture: let the chart fill a little.
		time.Sleep(20 * time.Second)
	}
	png, err := chromedp.Run(step, chromedp.FullScreenshot(100))
	if err != nil {
		t.Fatal(err)
	}
	shot := filepath.Join(os.TempDir(), "lsmux-dashboard-"+strconv.FormatInt(time.Now().UnixNano(), 36)+".png")
	if err := os.WriteFile(shot, png, 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("screenshot: %s", shot)
	if update {
		os.WriteFile("docs/dashboard.png", png, 0o644)
	}
	if errs := consoleErrors(); len(errs) > 0 {
		t.Fatalf("browser console errors: %q", errs)
	}
}

func chromiumOrSkip(t *testing.T) string {
	t.Helper()
	return testTool(t, "chromium", "LSMUX_BROWSER_TESTS", "apt-get install chromium")
}

// testTool finds a program a test drives, on PATH or where go install
// puts it. Without it the test skips, unless required (the variable .ci/run
// sets to 1) says it must run: then the test fails.
func testTool(t *testing.T, name, required, install string) string {
	t.Helper()
	if p, err := exec.LookPath(name); err == nil {
		return p
	}
	if p := filepath.Join(build.Default.GOPATH, "bin", name); fileExists(p) {
		return p
	}
	if os.Getenv(required) == "1" {
		t.Fatalf("%s is not installed but %s=1 (.ci/run installs it: %s)", name, required, install)
	}
	t.Skipf("%s not installed (%s), or set %s=1 to make this a failure", name, install, required)
	return ""
}

// browserPage is a headless Chromium tab with its console watched.
type browserPage struct {
	step          context.Context
	poll          func(what, expr string)
	consoleErrors func() []string
}

func openBrowser(t *testing.T, browser string, extra ...chromedp.ExecAllocatorOption) *browserPage {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:],
		chromedp.ExecPath(browser),
		chromedp.Flag("headless", true), chromedp.Flag("no-sandbox", true), chromedp.Flag("disable-gpu", true),
		chromedp.Flag("no-first-run", true), chromedp.Flag("disable-background-networking", true),
		chromedp.Flag("disable-component-update", true), chromedp.Flag("disable-sync", true), chromedp.Flag("disable-quic", true),
		chromedp.UserDataDir(t.TempDir()), chromedp.WindowSize(1280, 1000))
	opts = append(opts, extra...)
	allocCtx, allocCancel := chromedp.NewExecAllocator(context.Background(), opts...)
	t.Cleanup(allocCancel)
	ctx, cancel := chromedp.NewContext(allocCtx)
	t.Cleanup(cancel)
	if err := chromedp.Do(ctx); err != nil {
		t.Fatalf("start chromium: %v", err)
	}
	var mu sync.Mutex
	var consoleErrors []string
	chromedp.Listen(ctx, func(ev any) {
		mu.Lock()
		defer mu.Unlock()
		switch e := ev.(type) {
		case *runtime.EventConsoleAPICalled:
			if e.Type == runtime.ConsoleAPICalledTypeError {
				msg := "console.error:"
				for _, a := range e.Args {
					msg += " " + string(a.Value) + a.Description
				}
				consoleErrors = append(consoleErrors, msg)
			}
		case *runtime.EventExceptionThrown:
			desc := ""
			if e.ExceptionDetails.Exception != nil {
				desc = e.ExceptionDetails.Exception.Description
			}
			consoleErrors = append(consoleErrors, "exception: "+e.ExceptionDetails.Text+" "+desc)
		case *cdplog.EventEntryAdded:
			if e.Entry.Level == cdplog.EntryLevelError {
				consoleErrors = append(consoleErrors, "log: "+e.Entry.Text+" "+e.Entry.URL)
			}
		}
	})
	step, stepCancel := context.WithTimeout(ctx, 60*time.Second)
	t.Cleanup(stepCancel)
	poll := func(what, expr string) {
		t.Helper()
		if _, err := chromedp.Run(step, chromedp.Poll[bool](expr, chromedp.WithPollingTimeout(30*time.Second))); err != nil {
			mu.Lock()
			defer mu.Unlock()
			t.Fatalf("%s: %v (console: %q)", what, err, consoleErrors)
		}
	}
	return &browserPage{step: step, poll: poll, consoleErrors: func() []string {
		mu.Lock()
		defer mu.Unlock()
		return append([]string(nil), consoleErrors...)
	}}
}

// TestDashboardShowsClusterRole opens a follower's dashboard in cluster
// mode: it names the replica that holds the upstream, shows why its own
// connection row waits, and counts hits arriving through JetStream.
func TestDashboardShowsClusterRole(t *testing.T) {
	browser := chromiumOrSkip(t)
	sim := newSim(t, 80)
	ns := natstest.Start(t)
	leader := startReplica(t, sim, ns.URL(), "r0")
	waitFor(t, 15*time.Second, "r0 to lead", func() bool { return len(leaders([]string{leader.root})) == 1 })
	follower := startReplica(t, sim, ns.URL(), "r1")
	d := openBrowser(t, browser)
	if err := chromedp.Do(d.step, chromedp.Navigate(follower.root+"/")); err != nil {
		t.Fatal(err)
	}
	d.poll("the cluster line to name the leader", `document.querySelector("#cluster").textContent.includes("replica r0 holds the upstream; this is r1")`)
	d.poll("the connection row to say why it waits", `document.querySelector("#upstream").textContent.includes("follower: replica r0 holds the upstream")`)
	d.poll("hits through JetStream to be counted", `parseInt(document.querySelector("#hits-total").textContent.replace(/\D/g, "")) > 20`)
	if errs := d.consoleErrors(); len(errs) > 0 {
		t.Fatalf("browser console errors: %q", errs)
	}
}

// TestDashboardShowsHistory opens the dashboard of an lsmux with a data
// dir: it names the dir and shows how many hits history holds, since when,
// the bytes on disk and the replays running.
func TestDashboardShowsHistory(t *testing.T) {
	browser := chromiumOrSkip(t)
	sim := newSim(t, 80)
	dir := t.TempDir()
	r := startApp(t, sim, "-data-dir", dir, "-heartbeat-interval", "200ms")
	d := openBrowser(t, browser)
	if err := chromedp.Do(d.step, chromedp.Navigate(r.root+"/")); err != nil {
		t.Fatal(err)
	}
	d.poll("the history line to name the data dir", fmt.Sprintf(`document.querySelector("#history").textContent.includes(%q)`, "data dir "+dir))
	d.poll("history to count stored hits, its oldest and its bytes",
		`(() => { const t = document.querySelector("#history").textContent;
		  const m = t.match(/: ([\d,.]+) hits/); return m && parseInt(m[1].replace(/\D/g, "")) > 20 &&
		  t.includes("oldest hit held ") && /\d(\.\d)? (KiB|MiB) on disk of 10\.0 GiB/.test(t) && t.includes("replays running 0 of 8"); })()`)
	if errs := d.consoleErrors(); len(errs) > 0 {
		t.Fatalf("browser console errors: %q", errs)
	}
}

// TestDashboardDetails covers what a first reading of the dashboard got
// wrong: the throughput chart is full from the first poll (the server
// keeps the last minutes) and has a time axis; a connection that streams
// again shows its earlier error as history, not as the current state;
// the newest timeline mark stays inside the timeline; and at 390 px wide
// nothing overflows the page.
func TestDashboardDetails(t *testing.T) {
	browser := chromiumOrSkip(t)
	sim := newSim(t, 80)
	a := runApp(t, []string{"-listen", "127.0.0.1:0", "-stream-url", sim.StreamURL("demo"), "-token-url", sim.TokenURL(),
		"-client-id", sim.ClientID(), "-client-secret", sim.ClientSecret(), "-reconnect-delay", "1s", "-shutdown-timeout", "2s"},
		sim.FaultHandler(time.Second))
	hub := a.streams[0].hub
	waitFor(t, 15*time.Second, "a few seconds of throughput history", func() bool {
		_, in, _ := hub.Throughput(time.Now(), 300)
		return len(in) >= 6
	})
	// A lost connection, then streaming again: its error is history now.
	sim.DropConnections()
	waitFor(t, 10*time.Second, "the reconnect", func() bool {
		c := a.streams[0].feed.Conns()[0]
		return c.State == "streaming" && c.LastError != "" && c.Connects >= 2
	})

	d := openBrowser(t, browser)
	if err := chromedp.Do(d.step, chromedp.Navigate("http://"+a.addr()+"/")); err != nil {
		t.Fatal(err)
	}
	d.poll("the chart to draw history on its first poll", `parseInt(document.querySelector("#chart").dataset.points || "0") >= 6`)
	d.poll("the chart's time axis", `/\d\d:\d\d/.test(document.querySelector("#chart").dataset.ticks || "")`)
	d.poll("the old error shown as history", `(() => { const td = document.querySelector("#upstream td.past-error");
		return td !== null && td.textContent.startsWith("before it connected") && document.querySelector("#upstream td.current-error") === null; })()`)
	d.poll("timeline marks inside the timeline", `(() => { const r = [...document.querySelectorAll("#timeline rect")];
		return r.length >= 2 && r.every((m) => parseFloat(m.getAttribute("x")) + parseFloat(m.getAttribute("width")) <= 1000); })()`)

	if err := chromedp.Do(d.step, chromedp.EmulateViewport(390, 844)); err != nil {
		t.Fatal(err)
	}
	d.poll("no horizontal overflow at 390 px", `document.documentElement.scrollWidth <= 390`)
	if errs := d.consoleErrors(); len(errs) > 0 {
		t.Fatalf("browser console errors: %q", errs)
	}
}

// TestDashboardAsksForAToken: with auth on, a page opened without the
// token says a token is needed and how to pass it (not "unreachable"),
// and its form opens the dashboard.
func TestDashboardAsksForAToken(t *testing.T) {
	browser := chromiumOrSkip(t)
	sim := newSim(t, 50)
	a := runApp(t, []string{"-listen", "127.0.0.1:0", "-stream-url", sim.StreamURL("demo"), "-token-url", sim.TokenURL(),
		"-client-id", sim.ClientID(), "-client-secret", sim.ClientSecret(), "-auth-token", "dash-token-1", "-shutdown-timeout", "2s"}, nil)
	d := openBrowser(t, browser)
	if err := chromedp.Do(d.step, chromedp.Navigate("http://"+a.addr()+"/")); err != nil {
		t.Fatal(err)
	}
	d.poll("the page to ask for a token", `document.querySelector("#lsmux-state").textContent.includes("?access_token=") && !document.querySelector("#auth").hidden`)
	if err := chromedp.Do(d.step, chromedp.SendKeys(chromedp.CSS("#auth-token"), "dash-token-1"), chromedp.Click(chromedp.CSS(`#auth button[type="submit"]`))); err != nil {
		t.Fatal(err)
	}
	// The form reloads the page with the token in its address.
	waitFor(t, 10*time.Second, "the page to reload with ?access_token=", func() bool {
		loc, err := chromedp.Run(d.step, chromedp.Location())
		return err == nil && strings.Contains(loc, "access_token=dash-token-1")
	})
	if err := chromedp.Do(d.step, chromedp.WaitReady("#tail")); err != nil {
		t.Fatal(err)
	}
	d.poll("the dashboard to open with the token", `document.querySelector("#lsmux-state").textContent === "live" && document.querySelector("#auth").hidden`)
	d.poll("the tail to stream with the token", `document.querySelectorAll("#tail div[data-country]").length >= 2`)
}
