package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.yaml.in/yaml/v3"

	"lsmux/cluster/natstest"
	"lsmux/fanout"
	"lsmux/proxy"
	"lsmux/proxy/proxytest"
)

// TestNginxExampleProxiesStreams runs real nginx with deploy/nginx's
// configuration in front of lsmux: SSE, WebSocket and the drop-in
// endpoint come through, and each hit arrives promptly (not held in a
// buffer).
func TestNginxExampleProxiesStreams(t *testing.T) {
	nginx, err := exec.LookPath("nginx")
	if err != nil {
		if os.Getenv("CI") != "" {
			t.Fatal("nginx is missing; .ci/run installs it")
		}
		t.Skip("nginx not installed (CI installs it)")
	}
	hub := fanout.NewHub(fanout.Options{FirstSeq: 1})
	srv := proxy.New([]*proxy.Stream{{Name: "s", Hub: hub}}, proxy.Options{})
	ln, _ := net.Listen("tcp", "127.0.0.1:0")
	go srv.Serve(ln)
	defer func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	}()

	// nginx inherits the listening socket (as in its binary upgrade: the
	// NGINX variable names inherited descriptors), so no port is picked
	// here and bound later by someone else.
	front, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer front.Close()
	frontAddr := front.Addr().String()
	frontFile, err := front.(*net.TCPListener).File()
	if err != nil {
		t.Fatal(err)
	}
	defer frontFile.Close()
	dir := t.TempDir()
	abs := func(p string) string { a, _ := filepath.Abs(p); return a }
	httpPart, err := os.ReadFile("deploy/nginx/lsmux-http.conf")
	if err != nil {
		t.Fatal(err)
	}
	conf := fmt.Sprintf(`daemon off;
worker_processes 1;
pid %[1]s/nginx.pid;
error_log %[1]s/error.log warn;
events { worker_connections 256; }
http {
  access_log off;
  client_body_temp_path %[1]s; proxy_temp_path %[1]s; fastcgi_temp_path %[1]s; uwsgi_temp_path %[1]s; scgi_temp_path %[1]s;
  %[2]s
  server {
    listen %[3]s;
    include %[4]s;
  }
}
`, dir, strings.Replace(string(httpPart), "127.0.0.1:8080", ln.Addr().String(), 1), frontAddr, abs("deploy/nginx/lsmux-location.conf"))
	os.WriteFile(filepath.Join(dir, "nginx.conf"), []byte(conf), 0o644)
	cmd := exec.Command(nginx, "-c", filepath.Join(dir, "nginx.conf"), "-p", dir, "-e", filepath.Join(dir, "error.log"))
	cmd.ExtraFiles = []*os.File{frontFile} // descriptor 3 in nginx
	cmd.Env = append(os.Environ(), "NGINX=3;")
	out, _ := os.Create(filepath.Join(dir, "stdout.log")) // a file, not a pipe the workers would keep open
	defer out.Close()
	cmd.Stdout, cmd.Stderr = out, out
	cmd.WaitDelay = 5 * time.Second
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		cmd.Process.Signal(syscall.SIGTERM) // the master stops its workers
		cmd.Wait()
	}()
	base := "http://" + frontAddr + "/v1/streams/s"
	waitFor(t, 5*time.Second, "nginx to listen", func() bool {
		c, err := net.Dial("tcp", frontAddr)
		if err == nil {
			c.Close()
		}
		return err == nil
	})

	sse, err := proxytest.DialSSE(base+"/sse", nil)
	if err != nil {
		log, _ := os.ReadFile(filepath.Join(dir, "error.log"))
		t.Fatalf("SSE through nginx: %v\n%s", err, log)
	}
	defer sse.Close()
	ws, _, err := proxytest.DialWS(base+"/ws", nil)
	if err != nil {
		t.Fatalf("WebSocket through nginx: %v", err)
	}
	defer ws.Close()
	waitFor(t, 5*time.Second, "both subscribers", func() bool { return len(hub.Subscribers()) == 2 })
	var worst time.Duration
	for i := range 10 {
		sent := time.Now()
		hub.Append([]byte(fmt.Sprintf(`{"hitIdHigh":1,"hitIdLow":%d}`, i)), sent)
		for _, ch := range []<-chan proxytest.Msg{sse.Msgs, ws.Msgs} {
			m, err := proxytest.Next(ch, 5*time.Second)
			if err != nil || m.Seq != uint64(i+1) {
				t.Fatalf("hit %d through nginx: %+v %v", i, m, err)
			}
			worst = max(worst, m.At.Sub(sent))
		}
	}
	if worst > 500*time.Millisecond {
		t.Fatalf("a hit took %v through nginx: something buffers", worst)
	}
	t.Logf("worst latency through nginx: %v", worst)
}

// TestDeployExamplesUseRealSettings parses the compose and Kubernetes
// examples and checks that every LSMUX_* variable they set is one lsmux
// reads: a misspelt variable in an example is silently ignored by the
// container, and the operator who copied it would never know.
func TestDeployExamplesUseRealSettings(t *testing.T) {
	known := map[string]bool{}
	for _, line := range strings.Split(configTable(), "\n") {
		if name, _, ok := strings.Cut(strings.TrimPrefix(line, "| `"), "`"); ok && strings.HasPrefix(name, "LSMUX_") {
			known[name] = true
		}
	}
	files, _ := filepath.Glob("deploy/*/*.yaml")
	more, _ := filepath.Glob("deploy/*.yml")
	files = append(files, more...)
	if len(files) < 3 {
		t.Fatalf("found only %v", files)
	}
	setting := regexp.MustCompile(`\b(LSMUX_[A-Z0-9_]+)\s*:|name:\s*(LSMUX_[A-Z0-9_]+)`)
	for _, f := range files {
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		dec := yaml.NewDecoder(strings.NewReader(string(raw)))
		for {
			var doc any
			if err := dec.Decode(&doc); err != nil {
				if err.Error() != "EOF" {
					t.Errorf("%s: not valid YAML: %v", f, err)
				}
				break
			}
		}
		found := 0
		for _, m := range setting.FindAllStringSubmatch(string(raw), -1) {
			name := m[1] + m[2]
			found++
			if !known[name] {
				t.Errorf("%s sets %s, which lsmux does not read", f, name)
			}
		}
		if found == 0 {
			t.Errorf("%s sets no LSMUX_ variable", f)
		}
	}
}

// TestClusterDocShowsTheClusterComposeFile keeps docs/cluster.md's
// example the same as the file in deploy/ (which the test above checks).
func TestClusterDocShowsTheClusterComposeFile(t *testing.T) {
	compose, err := os.ReadFile("deploy/docker-compose.cluster.yml")
	if err != nil {
		t.Fatal(err)
	}
	doc, err := os.ReadFile("docs/cluster.md")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(doc), "<!-- cluster compose -->\n```yaml\n"+string(compose)+"```\n<!-- end cluster compose -->") {
		t.Fatal("docs/cluster.md's compose example differs from deploy/docker-compose.cluster.yml; copy the file between the <!-- cluster compose --> markers")
	}
}

// TestClusterExampleNATSPermissions runs the cluster example's NATS
// configuration (users and permissions) in an embedded server: an lsmux
// replica with the lsmux user leads and serves hits, and the read-only
// user can neither publish hits nor take the lease.
func TestClusterExampleNATSPermissions(t *testing.T) {
	t.Setenv("NATS_LSMUX_PASSWORD", "lsmux-pw-test")
	t.Setenv("NATS_MONITOR_PASSWORD", "monitor-pw-test")
	conf, err := server.ProcessConfigFile("deploy/nats/nats-server.conf")
	if err != nil {
		t.Fatal(err)
	}
	ns := natstest.Start(t, func(o *server.Options) {
		o.Users, o.Authorization, o.Accounts = conf.Users, conf.Authorization, conf.Accounts
		o.HTTPPort = 0
	})
	if len(conf.Users) != 2 || !conf.JetStream {
		t.Fatalf("the example config: %d users, JetStream %v", len(conf.Users), conf.JetStream)
	}
	addr := strings.TrimPrefix(ns.URL(), "nats://")
	sim := newSim(t, 50)
	r := startReplica(t, sim, "nats://lsmux:lsmux-pw-test@"+addr, "r0")
	deadline := time.Now().Add(30 * time.Second)
	for !(len(leaders([]string{r.root})) == 1 && r.app.streams[0].hub.Stats().Appended > 10) {
		if time.Now().After(deadline) {
			t.Fatalf("the replica did not lead and serve:\n%s", r.logs.String())
		}
		time.Sleep(50 * time.Millisecond)
	}

	nc, err := nats.Connect("nats://monitor:monitor-pw-test@"+addr, nats.Timeout(5*time.Second))
	if err != nil {
		t.Fatal(err)
	}
	defer nc.Close()
	denied := make(chan error, 4)
	nc.SetErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) { denied <- err })
	nc.Publish("lsmux.demo.hits", []byte(`{"hitIdHigh":1,"hitIdLow":1,"injected":true}`))
	nc.Publish("$KV.LSMUX_LEASE_demo.leader", []byte(`{"holder":"intruder"}`))
	nc.Flush()
	for range 2 {
		select {
		case err := <-denied:
			if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
				t.Fatalf("the monitor user's publish: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("the monitor user could publish a hit or the lease")
		}
	}
	if _, err := nats.Connect("nats://"+addr, nats.Timeout(2*time.Second)); err == nil {
		t.Fatal("an anonymous client could connect")
	}
}

// TestKubernetesExampleIsLockedDown: the lsmux container runs with no
// capabilities, the runtime's default seccomp profile, no privilege
// escalation, a read-only root file system, and its secrets as files.
func TestKubernetesExampleIsLockedDown(t *testing.T) {
	raw, err := os.ReadFile("deploy/kubernetes/lsmux-sidecar.yaml")
	if err != nil {
		t.Fatal(err)
	}
	dec := yaml.NewDecoder(strings.NewReader(string(raw)))
	checked := 0
	for {
		var doc struct {
			Kind string `yaml:"kind"`
			Spec struct {
				Template struct {
					Spec struct {
						Containers []struct {
							Name            string `yaml:"name"`
							SecurityContext struct {
								ReadOnlyRootFilesystem   bool `yaml:"readOnlyRootFilesystem"`
								AllowPrivilegeEscalation bool `yaml:"allowPrivilegeEscalation"`
								RunAsNonRoot             bool `yaml:"runAsNonRoot"`
								Capabilities             struct {
									Drop []string `yaml:"drop"`
								} `yaml:"capabilities"`
								SeccompProfile struct {
									Type string `yaml:"type"`
								} `yaml:"seccompProfile"`
							} `yaml:"securityContext"`
							Env []struct {
								Name  string `yaml:"name"`
								Value string `yaml:"value"`
							} `yaml:"env"`
						} `yaml:"containers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); err != nil {
			break
		}
		for _, c := range doc.Spec.Template.Spec.Containers {
			if c.Name != "lsmux" {
				continue
			}
			checked++
			sc := c.SecurityContext
			if !sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation || !sc.RunAsNonRoot || !slices.Equal(sc.Capabilities.Drop, []string{"ALL"}) || sc.SeccompProfile.Type != "RuntimeDefault" {
				t.Errorf("the lsmux container's securityContext: %+v", sc)
			}
			for _, e := range c.Env {
				if e.Name == "LSMUX_CLIENT_SECRET" || e.Name == "LSMUX_AUTH_TOKEN" {
					t.Errorf("%s is set as an environment variable; use its _FILE form", e.Name)
				}
			}
		}
	}
	if checked != 1 {
		t.Fatalf("found %d lsmux containers", checked)
	}
}

// TestImageKeepsHistoryOnAVolume: the image sets LSMUX_DATA_DIR=/data on
// a declared volume owned by its nonroot user, and both examples mount a
// volume there (a read-only root file system has nowhere else to write).
func TestImageKeepsHistoryOnAVolume(t *testing.T) {
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	text := string(df)
	for _, want := range []string{"LSMUX_DATA_DIR=/data", `VOLUME ["/data"]`, "COPY --from=build --chown=65532:65532 /out/data /data", "USER 65532:65532"} {
		if !strings.Contains(text, want) {
			t.Errorf("the Dockerfile lacks %q", want)
		}
	}
	if strings.Index(text, "--chown=65532:65532 /out/data /data") < strings.Index(text, "FROM gcr.io/distroless/static-debian12:nonroot") {
		t.Error("/data is not made in the runtime image")
	}
	k8s, _ := os.ReadFile("deploy/kubernetes/lsmux-sidecar.yaml")
	if !strings.Contains(string(k8s), "{name: lsmux-data, mountPath: /data}") || !strings.Contains(string(k8s), "fsGroup: 65532") {
		t.Error("the Kubernetes example does not mount a writable volume at /data")
	}
	compose, _ := os.ReadFile("deploy/docker-compose.yml")
	if !strings.Contains(string(compose), "- lsmux-data:/data") {
		t.Error("the compose example does not keep /data on a volume")
	}
}
