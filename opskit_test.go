package main

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	monitoringv1 "github.com/prometheus-operator/prometheus-operator/pkg/apis/monitoring/v1"
	"go.yaml.in/yaml/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	networkingv1 "k8s.io/api/networking/v1"
	policyv1 "k8s.io/api/policy/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8syaml "sigs.k8s.io/yaml"

	"lsmux/fanout"
	"lsmux/internal/cli"
	"lsmux/metrics"
	"lsmux/proxy"
	"lsmux/upstream"
)

// The operations kit: the Helm chart (deploy/helm/lsmux), the Prometheus
// rules (deploy/prometheus), the Grafana dashboard (deploy/grafana) and
// the runbook (docs/operations.md). The tests drive helm and promtool;
// without them they skip, unless LSMUX_OPS_TESTS=1 (as in .ci/run), where
// a missing tool is a failure.

const (
	chartDir    = "deploy/helm/lsmux"
	rulesFile   = "deploy/prometheus/lsmux-rules.yaml"
	rulesTest   = "deploy/prometheus/lsmux-rules.test.yaml"
	dashboard   = "deploy/grafana/lsmux.json"
	runbookBase = "https://github.com/lsmux/lsmux/blob/main/docs/operations.md#"
	// kubeVersion is given to helm template: a helm built with go install
	// assumes Kubernetes 1.20, below the chart's kubeVersion.
	kubeVersion = "1.31.0"
)

// opsTool finds a tool the ops tests drive.
func opsTool(t *testing.T, name, install string) string {
	t.Helper()
	return testTool(t, name, "LSMUX_OPS_TESTS", install)
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

func helmTool(t *testing.T) string {
	return opsTool(t, "helm", "go install helm.sh/helm/v3/cmd/helm@v3.22.0")
}

func promtoolTool(t *testing.T) string {
	return opsTool(t, "promtool", "apt-get install prometheus")
}

// runTool runs a tool and returns its combined output.
func runTool(name string, args ...string) (string, error) {
	cmd := exec.Command(name, args...)
	cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+os.TempDir()+"/lsmux-helm-cache", "HELM_CONFIG_HOME="+os.TempDir()+"/lsmux-helm-config")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// rendered is what helm template made of one values file.
type rendered struct {
	deployment      *appsv1.Deployment
	services        []*corev1.Service
	claims          []*corev1.PersistentVolumeClaim
	budgets         []*policyv1.PodDisruptionBudget
	policies        []*networkingv1.NetworkPolicy
	serviceMonitors []*monitoringv1.ServiceMonitor
}

// decodeManifests decodes every document strictly into its Kubernetes
// type: an unknown or misspelt field, or a value of the wrong type, fails
// (the API server would drop or refuse it).
func decodeManifests(t *testing.T, text string) rendered {
	t.Helper()
	var r rendered
	for _, doc := range strings.Split(text, "\n---") {
		if strings.TrimSpace(regexp.MustCompile(`(?m)^#.*$`).ReplaceAllString(doc, "")) == "" {
			continue
		}
		var tm metav1.TypeMeta
		if err := k8syaml.Unmarshal([]byte(doc), &tm); err != nil {
			t.Fatalf("not YAML: %v\n%s", err, doc)
		}
		var obj any
		switch tm.APIVersion + " " + tm.Kind {
		case "apps/v1 Deployment":
			if r.deployment != nil {
				t.Fatal("two Deployments")
			}
			r.deployment = &appsv1.Deployment{}
			obj = r.deployment
		case "v1 Service":
			o := &corev1.Service{}
			r.services, obj = append(r.services, o), o
		case "v1 PersistentVolumeClaim":
			o := &corev1.PersistentVolumeClaim{}
			r.claims, obj = append(r.claims, o), o
		case "policy/v1 PodDisruptionBudget":
			o := &policyv1.PodDisruptionBudget{}
			r.budgets, obj = append(r.budgets, o), o
		case "networking.k8s.io/v1 NetworkPolicy":
			o := &networkingv1.NetworkPolicy{}
			r.policies, obj = append(r.policies, o), o
		case "monitoring.coreos.com/v1 ServiceMonitor":
			o := &monitoringv1.ServiceMonitor{}
			r.serviceMonitors, obj = append(r.serviceMonitors, o), o
		default:
			t.Fatalf("the chart renders %s %s, which this test does not know", tm.APIVersion, tm.Kind)
		}
		if err := k8syaml.UnmarshalStrict([]byte(doc), obj); err != nil {
			t.Errorf("%s: not a valid %s: %v\n%s", tm.Kind, tm.Kind, err, doc)
		}
	}
	if r.deployment == nil {
		t.Fatal("no Deployment rendered")
	}
	return r
}

// imageEnv is the Dockerfile's ENV: what a container starts with before
// the pod's env.
func imageEnv(t *testing.T) cli.Env {
	t.Helper()
	df, err := os.ReadFile("Dockerfile")
	if err != nil {
		t.Fatal(err)
	}
	env := cli.Env{}
	for _, line := range strings.Split(string(df), "\n") {
		if rest, ok := strings.CutPrefix(line, "ENV "); ok {
			for _, kv := range strings.Fields(rest) {
				k, v, _ := strings.Cut(kv, "=")
				env[k] = v
			}
		}
	}
	if env["LSMUX_DATA_DIR"] == "" {
		t.Fatal("the Dockerfile sets no LSMUX_DATA_DIR (this test expects the image's /data)")
	}
	return env
}

func knownSettings() map[string]bool {
	known := map[string]bool{}
	for _, line := range strings.Split(configTable(), "\n") {
		if name, _, ok := strings.Cut(strings.TrimPrefix(line, "| `"), "`"); ok && strings.HasPrefix(name, "LSMUX_") {
			known[name] = true
		}
	}
	return known
}

// chartValues reads the chart's own values.yaml.
func chartValues(t *testing.T) map[string]any {
	t.Helper()
	raw, err := os.ReadFile(filepath.Join(chartDir, "values.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var v map[string]any
	if err := yaml.Unmarshal(raw, &v); err != nil {
		t.Fatal(err)
	}
	return v
}

func valueAt(v map[string]any, path ...string) string {
	var cur any = v
	for _, p := range path {
		m, _ := cur.(map[string]any)
		cur = m[p]
	}
	return fmt.Sprint(cur)
}

// TestHelmChartRendersValidObjects lints the chart and renders it with
// its defaults and each example: every object decodes strictly into its
// Kubernetes type, lsmux accepts the configuration the pod would start
// with (the image's ENV under the pod's env), and the properties the
// operations guide promises hold: one pod with Recreate and the data dir
// on a claim in single mode, N replicas on NATS without a data dir in
// cluster mode, probes on /healthz and /readyz (never ?upstream=1), a
// locked-down security context, secrets as files, GOMEMLIMIT at lsmux's
// own ratio of the memory limit, and a ring that fits under it.
func TestHelmChartRendersValidObjects(t *testing.T) {
	helm := helmTool(t)
	examples, _ := filepath.Glob(filepath.Join(chartDir, "examples", "*.yaml"))
	if len(examples) < 3 {
		t.Fatalf("examples: %v", examples)
	}
	for _, values := range append([]string{""}, examples...) {
		name := strings.TrimSuffix(filepath.Base(values), ".yaml")
		if values == "" {
			name = "defaults"
		}
		t.Run(name, func(t *testing.T) {
			args := []string{"lint", "--strict", chartDir}
			if values != "" {
				args = append(args, "-f", values)
			}
			if out, err := runTool(helm, args...); err != nil {
				t.Fatalf("helm lint: %v\n%s", err, out)
			}
			args = []string{"template", "lsmux", chartDir, "--namespace", "apps", "--kube-version", kubeVersion}
			if values != "" {
				args = append(args, "-f", values)
			}
			out, err := runTool(helm, args...)
			if err != nil {
				t.Fatalf("helm template: %v\n%s", err, out)
			}
			checkRendered(t, decodeManifests(t, out))
		})
	}
}

func checkRendered(t *testing.T, r rendered) {
	d := r.deployment
	pod := d.Spec.Template.Spec
	podLabels := d.Spec.Template.Labels
	var c *corev1.Container
	for i := range pod.Containers {
		if pod.Containers[i].Name == "lsmux" {
			c = &pod.Containers[i]
		}
	}
	if c == nil {
		t.Fatal("no lsmux container")
	}
	env := map[string]corev1.EnvVar{}
	for _, e := range c.Env {
		if _, dup := env[e.Name]; dup {
			t.Errorf("%s is set twice", e.Name)
		}
		env[e.Name] = e
	}
	known := knownSettings()
	for name := range env {
		if strings.HasPrefix(name, "LSMUX_") && !known[name] {
			t.Errorf("the chart sets %s, which lsmux does not read", name)
		}
	}
	for _, secret := range []string{"LSMUX_CLIENT_SECRET", "LSMUX_AUTH_TOKEN", "LSMUX_ACCESS_TOKEN"} {
		if _, ok := env[secret]; ok {
			t.Errorf("%s is an environment variable; use its _FILE form", secret)
		}
	}
	if env["LSMUX_CLIENT_ID"].ValueFrom == nil || env["LSMUX_CLIENT_ID"].ValueFrom.SecretKeyRef == nil {
		t.Error("LSMUX_CLIENT_ID does not come from the credentials Secret")
	}

	// The configuration lsmux would start with: the image's ENV, then the
	// pod's env (an empty value overrides the image's, as Kubernetes does).
	cfgEnv := imageEnv(t)
	for name, e := range env {
		switch {
		case e.ValueFrom == nil:
			cfgEnv[name] = e.Value
		case e.ValueFrom.SecretKeyRef != nil && name == "LSMUX_NATS_URL":
			cfgEnv[name] = "nats://lsmux:pw@nats:4222"
		default:
			cfgEnv[name] = "from-" + name
		}
	}
	cfg, err := loadConfig("lsmux serve", serveSummary, nil, cfgEnv, io.Discard)
	if err != nil {
		t.Fatalf("lsmux refuses the pod's configuration: %v", err)
	}
	// Subscribers in the cluster address lsmux by its Service's names;
	// without auth, lsmux must answer those (it answers only IPs,
	// localhost and LSMUX_ALLOWED_HOSTS then).
	if cfg.AuthTokenFile == "" {
		srv := proxy.New(nil, proxy.Options{AllowedHosts: list(cfg.AllowedHosts)})
		for _, svc := range r.services {
			for _, host := range []string{svc.Name, svc.Name + ".apps.svc", svc.Name + ".apps.svc.cluster.local"} { // helm template --namespace apps
				req := httptest.NewRequest(http.MethodGet, "http://"+host+":8080/v1/streams", nil)
				rec := httptest.NewRecorder()
				srv.Handler().ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					t.Errorf("without auth, a request to the Service as %s gets %d; want 200 (LSMUX_ALLOWED_HOSTS=%q)", host, rec.Code, cfg.AllowedHosts)
				}
			}
		}
	}

	// Secrets as files on mounted Secret volumes (not subPath: a subPath
	// mount never sees a rotated Secret).
	for _, name := range []string{"LSMUX_CLIENT_SECRET_FILE", "LSMUX_AUTH_TOKEN_FILE"} {
		e, ok := env[name]
		if !ok {
			if name == "LSMUX_CLIENT_SECRET_FILE" {
				t.Errorf("no %s", name)
			}
			continue
		}
		if !mountedFromSecret(pod, c, e.Value) {
			t.Errorf("%s=%s is not a file of a mounted Secret", name, e.Value)
		}
	}
	for _, m := range c.VolumeMounts {
		if m.SubPath != "" {
			t.Errorf("mount %s uses subPath", m.MountPath)
		}
	}

	// Single mode or cluster mode.
	dataMount := ""
	for _, m := range c.VolumeMounts {
		if m.MountPath == "/data" {
			dataMount = m.Name
		}
	}
	if cfg.NATSURL != "" {
		if d.Spec.Replicas == nil || *d.Spec.Replicas < 2 {
			t.Error("cluster mode with fewer than 2 replicas")
		}
		if e, ok := env["LSMUX_DATA_DIR"]; !ok || e.Value != "" {
			t.Error("cluster mode does not clear the image's LSMUX_DATA_DIR")
		}
		if dataMount != "" || len(r.claims) > 0 {
			t.Error("cluster mode mounts a data volume")
		}
		if env["LSMUX_NATS_URL"].ValueFrom == nil || env["LSMUX_NATS_URL"].ValueFrom.SecretKeyRef == nil {
			t.Error("LSMUX_NATS_URL does not come from a Secret")
		}
	} else {
		if d.Spec.Replicas == nil || *d.Spec.Replicas != 1 || d.Spec.Strategy.Type != appsv1.RecreateDeploymentStrategyType {
			t.Errorf("single mode: replicas %v, strategy %q; want 1 and Recreate", d.Spec.Replicas, d.Spec.Strategy.Type)
		}
		if cfg.DataDir != "/data" || dataMount == "" {
			t.Errorf("single mode: data dir %q, mounted from %q", cfg.DataDir, dataMount)
		}
		for _, v := range pod.Volumes {
			if v.Name == dataMount && v.PersistentVolumeClaim != nil {
				if len(r.claims) != 1 || r.claims[0].Name != v.PersistentVolumeClaim.ClaimName {
					t.Errorf("the data volume's claim %s is not the chart's", v.PersistentVolumeClaim.ClaimName)
				} else if size := r.claims[0].Spec.Resources.Requests.Storage().Value(); size < cfg.HistoryMaxBytes+1<<30 {
					t.Errorf("the claim (%d bytes) leaves under 1 GiB above LSMUX_HISTORY_MAX_BYTES (%d)", size, cfg.HistoryMaxBytes)
				}
			}
		}
	}

	// Probes: liveness on /healthz, readiness on /readyz, neither waiting
	// for the upstream; exec probes run lsmux healthcheck with flags it takes.
	for _, p := range []struct {
		what  string
		probe *corev1.Probe
		path  string
	}{{"startup", c.StartupProbe, "/healthz"}, {"liveness", c.LivenessProbe, "/healthz"}, {"readiness", c.ReadinessProbe, "/readyz"}} {
		switch {
		case p.probe == nil:
			t.Errorf("no %s probe", p.what)
		case p.probe.HTTPGet != nil:
			if p.probe.HTTPGet.Path != p.path || p.probe.HTTPGet.Port.String() != "http" {
				t.Errorf("%s probe: %s on %s; want %s on http", p.what, p.probe.HTTPGet.Path, p.probe.HTTPGet.Port.String(), p.path)
			}
		case p.probe.Exec != nil:
			cmd := p.probe.Exec.Command
			if len(cmd) < 2 || cmd[0] != "/usr/local/bin/lsmux" || cmd[1] != "healthcheck" || slices.Contains(cmd, "--upstream") {
				t.Errorf("%s probe runs %v", p.what, cmd)
			} else if err := healthcheckFlags(&healthcheckSettings{}).Parse(cmd[2:], cli.Env{}, io.Discard); err != nil {
				t.Errorf("%s probe: lsmux healthcheck %v: %v", p.what, cmd[2:], err)
			}
			if !strings.HasPrefix(cfg.Listen, "127.") && !cfg.ProtectHealth {
				t.Errorf("%s probe runs a command although the kubelet can reach %s", p.what, cfg.Listen)
			}
		default:
			t.Errorf("%s probe: neither httpGet nor exec", p.what)
		}
	}
	if len(c.Ports) != 1 || c.Ports[0].Name != "http" {
		t.Errorf("the lsmux container's ports: %v", c.Ports)
	}

	// Security: the distroless nonroot user, nothing writable but /data.
	psc := pod.SecurityContext
	if psc == nil || psc.RunAsNonRoot == nil || !*psc.RunAsNonRoot || psc.RunAsUser == nil || *psc.RunAsUser != 65532 ||
		psc.FSGroup == nil || *psc.FSGroup != 65532 || psc.SeccompProfile == nil || psc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("the pod's securityContext: %+v", psc)
	}
	sc := c.SecurityContext
	if sc == nil || sc.ReadOnlyRootFilesystem == nil || !*sc.ReadOnlyRootFilesystem || sc.AllowPrivilegeEscalation == nil || *sc.AllowPrivilegeEscalation ||
		sc.RunAsNonRoot == nil || !*sc.RunAsNonRoot || sc.Capabilities == nil || !slices.Equal(sc.Capabilities.Drop, []corev1.Capability{"ALL"}) ||
		sc.SeccompProfile == nil || sc.SeccompProfile.Type != corev1.SeccompProfileTypeRuntimeDefault {
		t.Errorf("the lsmux container's securityContext: %+v", sc)
	}
	if pod.AutomountServiceAccountToken == nil || *pod.AutomountServiceAccountToken {
		t.Error("the pod mounts a service account token lsmux never uses")
	}
	if g := pod.TerminationGracePeriodSeconds; g == nil || time.Duration(*g)*time.Second <= cfg.ShutdownTimeout {
		t.Errorf("terminationGracePeriodSeconds %v is not above LSMUX_SHUTDOWN_TIMEOUT %v", g, cfg.ShutdownTimeout)
	}

	// Memory: GOMEMLIMIT is memoryRatio of the limit (what lsmux computes
	// from the cgroup itself), and the ring fits under it
	// (docs/operations.md#memory-sizing).
	limit := c.Resources.Limits.Memory().Value()
	if limit == 0 || c.Resources.Requests.Memory().Value() == 0 || c.Resources.Requests.Cpu().IsZero() {
		t.Fatalf("resources: %+v", c.Resources)
	}
	gml, err := strconv.ParseInt(env["GOMEMLIMIT"].Value, 10, 64)
	if want := int64(float64(limit) * memoryRatio); err != nil || gml < want-1 || gml > want+1 {
		t.Errorf("GOMEMLIMIT=%q; want %d (%.0f%% of %d)", env["GOMEMLIMIT"].Value, want, memoryRatio*100, limit)
	}
	need := float64(cfg.BufferBytes+cfg.BatchMemory+1000*40_000)*1.25 + 30<<20
	if cfg.DataDir != "" {
		need += 64 << 20 // the embedded JetStream's memory cache
	}
	if need > float64(gml) {
		t.Errorf("the ring (%d) and batches (%d) need ~%.0f MiB, over GOMEMLIMIT %d MiB", cfg.BufferBytes, cfg.BatchMemory, need/(1<<20), gml>>20)
	}

	// Selectors of the optional objects find the pods and the Service.
	selects := func(sel map[string]string) bool {
		for k, v := range sel {
			if podLabels[k] != v {
				return false
			}
		}
		return len(sel) > 0
	}
	for _, s := range r.services {
		if !selects(s.Spec.Selector) || len(s.Spec.Ports) != 1 || s.Spec.Ports[0].TargetPort.String() != "http" {
			t.Errorf("Service %s: selector %v, ports %v", s.Name, s.Spec.Selector, s.Spec.Ports)
		}
	}
	if strings.HasPrefix(cfg.Listen, "127.") && len(r.services) > 0 {
		t.Error("a Service in front of an lsmux that listens on loopback")
	}
	for _, b := range r.budgets {
		if !selects(b.Spec.Selector.MatchLabels) {
			t.Errorf("PodDisruptionBudget selects %v", b.Spec.Selector.MatchLabels)
		}
	}
	for _, p := range r.policies {
		if !selects(p.Spec.PodSelector.MatchLabels) {
			t.Errorf("NetworkPolicy selects %v", p.Spec.PodSelector.MatchLabels)
		}
	}
	for _, sm := range r.serviceMonitors {
		if len(r.services) != 1 || !maps(sm.Spec.Selector.MatchLabels, r.services[0].Labels) || len(sm.Spec.Endpoints) != 1 ||
			sm.Spec.Endpoints[0].Port != "http" || sm.Spec.Endpoints[0].Path != "/metrics" {
			t.Errorf("ServiceMonitor %s does not scrape the Service's /metrics", sm.Name)
		}
	}
}

// maps reports whether every label of sel is in labels.
func maps(sel, labels map[string]string) bool {
	for k, v := range sel {
		if labels[k] != v {
			return false
		}
	}
	return len(sel) > 0
}

// mountedFromSecret reports whether path is a file a Secret volume
// mounted in c provides.
func mountedFromSecret(pod corev1.PodSpec, c *corev1.Container, path string) bool {
	for _, m := range c.VolumeMounts {
		rel, ok := strings.CutPrefix(path, strings.TrimSuffix(m.MountPath, "/")+"/")
		if !ok {
			continue
		}
		for _, v := range pod.Volumes {
			if v.Name != m.Name || v.Secret == nil {
				continue
			}
			if len(v.Secret.Items) == 0 {
				return true
			}
			for _, it := range v.Secret.Items {
				if it.Path == rel {
					return true
				}
			}
		}
	}
	return false
}

// TestHelmChartRefusesBrokenSettings: values that would start an lsmux
// that refuses to run (or splits the stream, or leaks a secret into the
// release history) fail at helm template with a message naming the key.
func TestHelmChartRefusesBrokenSettings(t *testing.T) {
	helm := helmTool(t)
	for _, tc := range []struct {
		set, want string
	}{
		{"mode=cluster,env.LSMUX_DATA_DIR=/data", "LSMUX_DATA_DIR"},
		{"mode=cluster,listen=127.0.0.1:8080", "loopback"},
		{"mode=cluster,nats.existingSecret=", "nats.existingSecret"},
		{"mode=both", "want single or cluster"},
		{"env.LSMUX_CLIENT_SECRET=x", "existingSecret"},
		{"env.LSMUX_BUFFER_BYTES=1GiB", "the chart sets it"},
		{"buffer.bytes=1GiB", "memory-sizing"},
		{"resources.limits.memory=1.5Gi", "1536Mi"},
	} {
		out, err := runTool(helm, "template", "lsmux", chartDir, "--kube-version", kubeVersion, "--set", tc.set)
		if err == nil || !strings.Contains(out, tc.want) {
			t.Errorf("--set %s: %v\n%s", tc.set, err, out)
		}
	}
	// A larger ring with a larger limit is fine.
	if out, err := runTool(helm, "template", "lsmux", chartDir, "--kube-version", kubeVersion, "--set", "buffer.bytes=1GiB,resources.limits.memory=2Gi"); err != nil {
		t.Errorf("a 1 GiB ring in 2 GiB: %v\n%s", err, out)
	}
}

// TestComposeExampleMatchesTheChart: deploy/docker-compose.yml runs the
// same lsmux as the chart's single mode: the ring, history and memory
// limit of values.yaml, the data dir on a volume at the image's /data,
// the image's healthcheck (/readyz, not ?upstream=1), and lsmux accepts
// its environment.
func TestComposeExampleMatchesTheChart(t *testing.T) {
	raw, err := os.ReadFile("deploy/docker-compose.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Environment map[string]string `yaml:"environment"`
			Volumes     []string          `yaml:"volumes"`
			MemLimit    string            `yaml:"mem_limit"`
			Healthcheck any               `yaml:"healthcheck"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	svc, ok := compose.Services["lsmux"]
	if !ok {
		t.Fatal("no lsmux service")
	}
	values := chartValues(t)
	for name, key := range map[string][]string{
		"LSMUX_BUFFER_BYTES":      {"buffer", "bytes"},
		"LSMUX_HISTORY_MAX_BYTES": {"history", "maxBytes"},
	} {
		if got, want := svc.Environment[name], valueAt(values, key...); got != want {
			t.Errorf("compose sets %s=%q, the chart %q (%s)", name, got, want, strings.Join(key, "."))
		}
	}
	// Docker's m is MiB, as Kubernetes' Mi.
	if got, want := strings.TrimSuffix(svc.MemLimit, "m")+"Mi", valueAt(values, "resources", "limits", "memory"); got != want {
		t.Errorf("compose mem_limit %q, the chart's memory limit %q", svc.MemLimit, want)
	}
	if !slices.Contains(svc.Volumes, "lsmux-data:/data") || imageEnv(t)["LSMUX_DATA_DIR"] != "/data" {
		t.Errorf("compose volumes %v: the data dir is not on a volume at /data", svc.Volumes)
	}
	if svc.Healthcheck != nil {
		t.Errorf("compose overrides the image's healthcheck: %v", svc.Healthcheck)
	}
	env := imageEnv(t)
	subst := regexp.MustCompile(`\$\{([A-Z_]+)(:[-?][^}]*)?\}`)
	for k, v := range svc.Environment {
		env[k] = subst.ReplaceAllString(v, "x")
	}
	if _, err := loadConfig("lsmux serve", serveSummary, nil, env, io.Discard); err != nil {
		t.Errorf("lsmux refuses the compose example's environment: %v", err)
	}
}

// TestClusterComposeRunsOnTheImage: every lsmux replica of the cluster
// compose example starts with its environment over the image's (which
// sets LSMUX_DATA_DIR=/data, refused next to LSMUX_NATS_URL).
func TestClusterComposeRunsOnTheImage(t *testing.T) {
	raw, err := os.ReadFile("deploy/docker-compose.cluster.yml")
	if err != nil {
		t.Fatal(err)
	}
	var compose struct {
		Services map[string]struct {
			Image       string            `yaml:"image"`
			Build       any               `yaml:"build"`
			Environment map[string]string `yaml:"environment"`
		} `yaml:"services"`
	}
	if err := yaml.Unmarshal(raw, &compose); err != nil {
		t.Fatal(err)
	}
	subst := regexp.MustCompile(`\$\{([A-Z_]+)(:[-?][^}]*)?\}`)
	replicas := 0
	for name, svc := range compose.Services {
		if svc.Environment["LSMUX_NATS_URL"] == "" {
			continue
		}
		replicas++
		env := imageEnv(t)
		for k, v := range svc.Environment {
			env[k] = subst.ReplaceAllString(v, "x")
		}
		if _, err := loadConfig("lsmux serve", serveSummary, nil, env, io.Discard); err != nil {
			t.Errorf("replica %s: lsmux refuses its environment over the image's: %v", name, err)
		}
	}
	if replicas < 2 {
		t.Errorf("%d lsmux replicas in the cluster compose example, want at least 2", replicas)
	}
}

// ruleFile is a Prometheus rule file.
type ruleFile struct {
	Groups []struct {
		Name  string `yaml:"name"`
		Rules []struct {
			Record      string            `yaml:"record"`
			Alert       string            `yaml:"alert"`
			Expr        string            `yaml:"expr"`
			For         string            `yaml:"for"`
			Labels      map[string]string `yaml:"labels"`
			Annotations map[string]string `yaml:"annotations"`
		} `yaml:"rules"`
	} `yaml:"groups"`
}

func readRules(t *testing.T) ruleFile {
	t.Helper()
	raw, err := os.ReadFile(rulesFile)
	if err != nil {
		t.Fatal(err)
	}
	var rf ruleFile
	if err := yaml.Unmarshal(raw, &rf); err != nil {
		t.Fatal(err)
	}
	return rf
}

// TestPrometheusRulesPassPromtool: promtool checks the rules and runs
// their unit tests; every alert has a severity, a summary, a description
// and a runbook_url, and the unit tests hold for every alert at least one
// case where it fires and one where it does not.
func TestPrometheusRulesPassPromtool(t *testing.T) {
	promtool := promtoolTool(t)
	if out, err := runTool(promtool, "check", "rules", rulesFile); err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	// The second file evaluates rules between scrapes, at a 60 s scrape.
	if out, err := runTool(promtool, "test", "rules", rulesTest, "deploy/prometheus/lsmux-rules.scrape60s.test.yaml"); err != nil {
		t.Fatalf("promtool test rules: %v\n%s", err, out)
	}
	rf := readRules(t)
	raw, err := os.ReadFile(rulesTest)
	if err != nil {
		t.Fatal(err)
	}
	var tests struct {
		Tests []struct {
			AlertRuleTest []struct {
				Alertname string `yaml:"alertname"`
				ExpAlerts []any  `yaml:"exp_alerts"`
			} `yaml:"alert_rule_test"`
		} `yaml:"tests"`
	}
	if err := yaml.Unmarshal(raw, &tests); err != nil {
		t.Fatal(err)
	}
	fires, quiet := map[string]bool{}, map[string]bool{}
	for _, tg := range tests.Tests {
		for _, c := range tg.AlertRuleTest {
			if len(c.ExpAlerts) > 0 {
				fires[c.Alertname] = true
			} else {
				quiet[c.Alertname] = true
			}
		}
	}
	alerts := 0
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			alerts++
			if !fires[r.Alert] || !quiet[r.Alert] {
				t.Errorf("%s: the unit tests have a firing case %v and a quiet case %v; want both", r.Alert, fires[r.Alert], quiet[r.Alert])
			}
			if r.Labels["severity"] == "" || r.Annotations["summary"] == "" || r.Annotations["description"] == "" || r.Annotations["runbook_url"] == "" {
				t.Errorf("%s: severity %q, annotations %v", r.Alert, r.Labels["severity"], r.Annotations)
			}
			delete(fires, r.Alert)
			delete(quiet, r.Alert)
		}
	}
	if alerts < 10 {
		t.Errorf("only %d alerts", alerts)
	}
	for name := range fires {
		t.Errorf("the unit tests test %s, which is no alert", name)
	}
	for name := range quiet {
		t.Errorf("the unit tests test %s, which is no alert", name)
	}
}

// TestEveryAlertHasARunbookSection: each alert's runbook_url is
// docs/operations.md's anchor for a heading named after the alert, and
// the section says what the operator sees, why, and what to do.
func TestEveryAlertHasARunbookSection(t *testing.T) {
	doc, err := os.ReadFile("docs/operations.md")
	if err != nil {
		t.Fatal(err)
	}
	page := string(doc)
	for _, g := range readRules(t).Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			anchor, ok := strings.CutPrefix(r.Annotations["runbook_url"], runbookBase)
			if !ok || anchor != strings.ToLower(r.Alert) {
				t.Errorf("%s: runbook_url %q; want %s%s", r.Alert, r.Annotations["runbook_url"], runbookBase, strings.ToLower(r.Alert))
				continue
			}
			if !hasAnchor(page, anchor) {
				t.Errorf("%s: docs/operations.md has no heading for #%s", r.Alert, anchor)
				continue
			}
			section := runbookSection(page, r.Alert)
			for _, part := range []string{"Symptom", "Likely causes", "What to do"} {
				if !strings.Contains(section, part) {
					t.Errorf("%s: its runbook section lacks %q", r.Alert, part)
				}
			}
		}
	}
	// The anchors the rules and the dashboard link to besides.
	for _, anchor := range []string{"memory-sizing"} {
		if !hasAnchor(page, anchor) {
			t.Errorf("docs/operations.md has no #%s", anchor)
		}
	}
}

// runbookSection is the text under the heading "### name" up to the next
// heading of that level or above.
func runbookSection(page, name string) string {
	_, rest, ok := strings.Cut(page, "\n### "+name+"\n")
	if !ok {
		return ""
	}
	if i := regexp.MustCompile(`(?m)^#{1,3} `).FindStringIndex(rest); i != nil {
		rest = rest[:i[0]]
	}
	return rest
}

// scrapedMetricNames is every series name a real /metrics scrape shows
// (with a hit delivered, so the histogram is there), plus metrics.Names
// (cluster and history metrics appear only with those feeds).
func scrapedMetricNames(t *testing.T) map[string]bool {
	t.Helper()
	hub := fanout.NewHub(fanout.Options{FirstSeq: 1})
	m := metrics.New("test", []metrics.Stream{{Name: "s", Hub: hub}})
	m.Delivered("s", "ws", 1, time.Now())
	srv := httptest.NewServer(m.Handler())
	defer srv.Close()
	resp, err := srv.Client().Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	names := map[string]bool{}
	for _, line := range strings.Split(string(body), "\n") {
		f := strings.Fields(line)
		if len(f) == 4 && f[0] == "#" && f[1] == "TYPE" {
			names[f[2]] = true
			switch f[3] {
			case "histogram":
				names[f[2]+"_bucket"], names[f[2]+"_sum"], names[f[2]+"_count"] = true, true, true
			case "summary":
				names[f[2]+"_sum"], names[f[2]+"_count"] = true, true
			}
		}
	}
	for _, n := range metrics.Names {
		names[n] = true
	}
	for _, must := range []string{"lsmux_delivery_lag_seconds_bucket", "process_resident_memory_bytes", "go_gc_gomemlimit_bytes"} {
		if !names[must] {
			t.Fatalf("the scrape lacks %s", must)
		}
	}
	return names
}

var (
	promqlStrings  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"|'(?:[^'\\]|\\.)*'`)
	promqlMatchers = regexp.MustCompile(`\{[^{}]*\}`)
	promqlRanges   = regexp.MustCompile(`\[[^\]]*\]`)
	promqlGrouping = regexp.MustCompile(`\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promqlIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promqlLabelUse = regexp.MustCompile(`\b(state|reason|transport)\s*(?:=|!=|=~|!~)\s*"([^"]*)"`)
	promqlKeywords = map[string]bool{"and": true, "or": true, "unless": true, "bool": true, "offset": true, "inf": true, "nan": true,
		"by": true, "without": true, "on": true, "ignoring": true, "group_left": true, "group_right": true}
)

// metricNamesIn lists the series names an expression reads: what is left
// of it without strings, label matchers, ranges, grouping clauses,
// functions, aggregations, keywords and numbers.
func metricNamesIn(expr string) []string {
	e := promqlStrings.ReplaceAllString(expr, `""`)
	e = promqlMatchers.ReplaceAllString(e, " ")
	e = promqlRanges.ReplaceAllString(e, " ")
	e = promqlGrouping.ReplaceAllString(e, " ")
	var names []string
	for _, at := range promqlIdent.FindAllStringIndex(e, -1) {
		name := e[at[0]:at[1]]
		if at[0] > 0 && strings.ContainsAny(e[at[0]-1:at[0]], "0123456789.") {
			continue // the exponent of a number (1e15)
		}
		if strings.HasPrefix(strings.TrimLeft(e[at[1]:], " \t\n"), "(") || promqlKeywords[strings.ToLower(name)] {
			continue // a function or aggregation, or a keyword
		}
		names = append(names, name)
	}
	return names
}

// checkLabelValues reports label values an expression matches that lsmux
// never exports (a misspelt state or disconnect reason matches nothing).
func checkLabelValues(t *testing.T, where, expr string) {
	t.Helper()
	valid := map[string][]string{"transport": {"ws", "sse", "ndjson"}}
	for _, s := range upstream.States {
		valid["state"] = append(valid["state"], string(s))
	}
	valid["reason"] = append(append(append([]string{}, proxy.DisconnectReasons...), proxy.RejectReasons...), "invalid", "oversized")
	for _, m := range promqlLabelUse.FindAllStringSubmatch(expr, -1) {
		for _, v := range strings.Split(m[2], "|") {
			if !slices.Contains(valid[m[1]], v) {
				t.Errorf("%s: %s=%q is no value lsmux exports (%v)", where, m[1], v, valid[m[1]])
			}
		}
	}
}

// TestDashboardQueriesParseAndNameRealMetrics: the dashboard has a
// datasource and a stream variable and uses them; every panel's query
// parses (promtool checks a rules file made of them) and names only
// metrics lsmux exposes or the rules file records, with label values
// lsmux exports. The rules' own expressions pass the same name check.
func TestDashboardQueriesParseAndNameRealMetrics(t *testing.T) {
	promtool := promtoolTool(t)
	raw, err := os.ReadFile(dashboard)
	if err != nil {
		t.Fatal(err)
	}
	type target struct {
		RefID      string          `json:"refId"`
		Expr       string          `json:"expr"`
		Datasource json.RawMessage `json:"datasource"`
	}
	var dash struct {
		Templating struct {
			List []struct {
				Name  string `json:"name"`
				Type  string `json:"type"`
				Query any    `json:"query"`
			} `json:"list"`
		} `json:"templating"`
		Panels []struct {
			ID         int             `json:"id"`
			Type       string          `json:"type"`
			Title      string          `json:"title"`
			Datasource json.RawMessage `json:"datasource"`
			Targets    []target        `json:"targets"`
		} `json:"panels"`
	}
	dec := json.NewDecoder(bytes.NewReader(raw))
	if err := dec.Decode(&dash); err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, v := range dash.Templating.List {
		vars[v.Name] = v.Type
	}
	if vars["datasource"] != "datasource" || vars["stream"] != "query" {
		t.Fatalf("variables %v: want datasource (datasource) and stream (query)", vars)
	}
	// The task's panels, by title.
	titles := map[string]bool{}
	for _, p := range dash.Panels {
		titles[p.Title] = true
	}
	for _, want := range []string{"Upstream state", "Hits/s in", "Deliveries/s out", "Subscribers by transport", "Delivery lag",
		"Gaps and drops by reason", "Connect attempts and answers by status", "History size", "Cluster leader"} {
		if !titles[want] {
			t.Errorf("no panel %q", want)
		}
	}

	known := scrapedMetricNames(t)
	rf := readRules(t)
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			if r.Record != "" {
				known[r.Record] = true
			}
		}
	}
	for _, g := range rf.Groups {
		for _, r := range g.Rules {
			for _, n := range metricNamesIn(r.Expr) {
				if !known[n] {
					t.Errorf("rule %s%s reads %s, which lsmux does not expose", r.Record, r.Alert, n)
				}
			}
			checkLabelValues(t, "rule "+r.Record+r.Alert, r.Expr)
		}
	}

	grafanaVars := strings.NewReplacer("$__rate_interval", "5m", "${__rate_interval}", "5m", "$__interval", "1m", "$__range", "1h",
		"${job}", ".+", "$job", ".+", "${stream}", ".+", "$stream", ".+")
	var gen strings.Builder
	gen.WriteString("groups:\n  - name: dashboard\n    rules:\n")
	queries := 0
	for _, p := range dash.Panels {
		if p.Type == "row" {
			continue
		}
		if !strings.Contains(string(p.Datasource), "${datasource}") {
			t.Errorf("panel %q does not use the datasource variable: %s", p.Title, p.Datasource)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, tg := range p.Targets {
			queries++
			where := fmt.Sprintf("panel %q query %s", p.Title, tg.RefID)
			if !strings.Contains(string(tg.Datasource), "${datasource}") {
				t.Errorf("%s does not use the datasource variable", where)
			}
			expr := grafanaVars.Replace(tg.Expr)
			if strings.Contains(expr, "$") {
				t.Errorf("%s uses a variable the dashboard does not define: %s", where, tg.Expr)
			}
			names := metricNamesIn(expr)
			if len(names) == 0 {
				t.Errorf("%s reads no metric: %s", where, tg.Expr)
			}
			for _, n := range names {
				if !known[n] {
					t.Errorf("%s reads %s, which neither lsmux nor the rules file provides", where, n)
				}
			}
			checkLabelValues(t, where, expr)
			quoted, _ := json.Marshal(expr) // a JSON string is a YAML string
			fmt.Fprintf(&gen, "      - record: dashboard:panel_%d_%s\n        expr: %s\n", p.ID, tg.RefID, quoted)
		}
	}
	if queries < 15 {
		t.Errorf("only %d queries", queries)
	}
	file := filepath.Join(t.TempDir(), "dashboard-queries.yaml")
	if err := os.WriteFile(file, []byte(gen.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if out, err := runTool(promtool, "check", "rules", file); err != nil {
		t.Fatalf("the dashboard's queries do not parse: %v\n%s", err, out)
	}
}

// TestMetricNamesInReadsPromQL keeps the name extraction above honest.
func TestMetricNamesInReadsPromQL(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum without (instance, pod) (rate(lsmux_upstream_hits_total{stream=~"a|b"}[5m]))`:                {"lsmux_upstream_hits_total"},
		`histogram_quantile(0.99, sum by (le) (rate(lsmux_delivery_lag_seconds_bucket[5m])))`:             {"lsmux_delivery_lag_seconds_bucket"},
		`(process_resident_memory_bytes / go_gc_gomemlimit_bytes > 0.95) and on (job, instance) lsmux_up`: {"process_resident_memory_bytes", "go_gc_gomemlimit_bytes", "lsmux_up"},
		`go_gc_gomemlimit_bytes < 1e15`:           {"go_gc_gomemlimit_bytes"},
		`time() - min by (stream) (x:y:z{a="b"})`: {"x:y:z"},
	} {
		if got := metricNamesIn(expr); !slices.Equal(got, want) {
			t.Errorf("%s: %v, want %v", expr, got, want)
		}
	}
}
