// Command istio-injector is a stand-in for Istio's sidecar injector webhook (istiod's
// /inject), written by us for tests/e2e_katib.rs: it decides as Istio does and adds what Istio's
// `sidecar` injection template adds, with no istiod, mesh config or native sidecars.
//
// The decision, as Istio's injectRequired makes it for a namespace with policy `enabled`
// (the webhook registration's namespaceSelector `istio-injection=enabled` and objectSelector
// `sidecar.istio.io/inject NotIn [false]` do the rest, as in Istio's chart):
//   - the label `sidecar.istio.io/inject` wins over the annotation of the same name;
//   - "false" (or any word not y/yes/true/on) in the winner opts out, none at all injects;
//   - a pod on the host network, or one that already carries `sidecar.istio.io/status`
//     (a reinvocation), is left alone.
//
// What it adds (a subset of the template: the fields that other webhooks and the kubelet look
// at): init container `istio-init` (istio-iptables), container `istio-proxy` appended last
// (Istio moves it last unless holdApplicationUntilProxyStarts), its volumes, the labels
// `security.istio.io/tlsMode` and `service.istio.io/canonical-*`, the annotations
// `sidecar.istio.io/status`, `kubectl.kubernetes.io/default-container` and `prometheus.io/*`.
//
//	istio-injector -listen 127.0.0.1:PORT -tls-cert tls.crt -tls-key tls.key
//
// It logs one line per decision to stderr; SIGTERM stops it (the test's holder sends it).
package main

import (
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"strings"
)

const (
	injectKey  = "sidecar.istio.io/inject"
	statusKey  = "sidecar.istio.io/status"
	proxyImage = "docker.io/istio/proxyv2:1.29.0"
)

type review struct {
	APIVersion string          `json:"apiVersion"`
	Kind       string          `json:"kind"`
	Request    *request        `json:"request,omitempty"`
	Response   *reviewResponse `json:"response,omitempty"`
}

type request struct {
	UID       string `json:"uid"`
	Namespace string `json:"namespace"`
	Object    pod    `json:"object"`
}

type reviewResponse struct {
	UID       string `json:"uid"`
	Allowed   bool   `json:"allowed"`
	PatchType string `json:"patchType,omitempty"`
	Patch     []byte `json:"patch,omitempty"`
}

// pod holds only what the decision and the patch need; the patch never rewrites other fields.
type pod struct {
	Metadata struct {
		Name         string            `json:"name"`
		GenerateName string            `json:"generateName"`
		Labels       map[string]string `json:"labels"`
		Annotations  map[string]string `json:"annotations"`
	} `json:"metadata"`
	Spec struct {
		HostNetwork    bool              `json:"hostNetwork"`
		InitContainers []json.RawMessage `json:"initContainers"`
		Containers     []struct {
			Name string `json:"name"`
		} `json:"containers"`
		Volumes []json.RawMessage `json:"volumes"`
	} `json:"spec"`
}

type op struct {
	Op    string `json:"op"`
	Path  string `json:"path"`
	Value any    `json:"value"`
}

func main() {
	listen := flag.String("listen", "127.0.0.1:15017", "address to serve HTTPS on")
	cert := flag.String("tls-cert", "", "serving certificate (PEM)")
	key := flag.String("tls-key", "", "serving key (PEM)")
	flag.Parse()
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		log.Fatalf("listen: %v", err)
	}
	http.HandleFunc("/inject", serve)
	log.Printf("istio-injector listening on https://%s", listener.Addr())
	log.Fatal(http.ServeTLS(listener, nil, *cert, *key))
}

func serve(w http.ResponseWriter, r *http.Request) {
	var in review
	if err := json.NewDecoder(io.LimitReader(r.Body, 8<<20)).Decode(&in); err != nil || in.Request == nil {
		http.Error(w, fmt.Sprintf("bad AdmissionReview: %v", err), http.StatusBadRequest)
		return
	}
	p := in.Request.Object
	resp := &reviewResponse{UID: in.Request.UID, Allowed: true}
	name := p.Metadata.Name + p.Metadata.GenerateName
	if why := skip(&p); why != "" {
		log.Printf("%s/%s: not injected: %s", in.Request.Namespace, name, why)
	} else {
		patch, err := json.Marshal(injection(&p, in.Request.Namespace))
		if err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		resp.PatchType, resp.Patch = "JSONPatch", patch
		log.Printf("%s/%s: injected", in.Request.Namespace, name)
	}
	w.Header().Set("Content-Type", "application/json")
	_ = json.NewEncoder(w).Encode(review{APIVersion: in.APIVersion, Kind: in.Kind, Response: resp})
}

// skip says why the pod is not injected, or "" when it is.
func skip(p *pod) string {
	if p.Spec.HostNetwork {
		return "host network"
	}
	if _, done := p.Metadata.Annotations[statusKey]; done {
		return "already injected"
	}
	value, from := p.Metadata.Annotations[injectKey], "annotation"
	if label, ok := p.Metadata.Labels[injectKey]; ok {
		value, from = label, "label"
	}
	switch strings.ToLower(value) {
	case "", "y", "yes", "true", "on":
		return ""
	}
	return fmt.Sprintf("%s %s=%q", from, injectKey, value)
}

// injection is the JSON patch adding what Istio's sidecar template adds.
func injection(p *pod, namespace string) []op {
	var apps []string
	for _, c := range p.Spec.Containers {
		apps = append(apps, c.Name)
	}
	workload := p.Metadata.Labels["job-name"]
	if workload == "" {
		workload = strings.TrimSuffix(p.Metadata.GenerateName, "-")
	}
	canonical := p.Metadata.Labels["app"]
	if canonical == "" {
		canonical = workload
	}
	status, _ := json.Marshal(map[string]any{
		"initContainers":   []string{"istio-init"},
		"containers":       []string{"istio-proxy"},
		"volumes":          []string{"workload-socket", "credential-socket", "workload-certs", "istio-envoy", "istio-data", "istio-podinfo", "istio-token", "istiod-ca-cert"},
		"imagePullSecrets": nil,
		"revision":         "default",
	})
	var ops []op
	ops = append(ops, mapOps("/metadata/labels", p.Metadata.Labels, map[string]string{
		"security.istio.io/tlsMode":           "istio",
		"service.istio.io/canonical-name":     canonical,
		"service.istio.io/canonical-revision": "latest",
	})...)
	ops = append(ops, mapOps("/metadata/annotations", p.Metadata.Annotations, map[string]string{
		statusKey:      string(status),
		"istio.io/rev": "default",
		"kubectl.kubernetes.io/default-container":      apps[0],
		"kubectl.kubernetes.io/default-logs-container": apps[0],
		"prometheus.io/path":                           "/stats/prometheus",
		"prometheus.io/port":                           "15020",
		"prometheus.io/scrape":                         "true",
	})...)
	ops = append(ops, listOp("/spec/initContainers", len(p.Spec.InitContainers) > 0, initContainer()))
	ops = append(ops, listOp("/spec/containers", true, proxyContainer(namespace, workload, apps)))
	hasVolumes := len(p.Spec.Volumes) > 0
	for _, v := range volumes() {
		ops = append(ops, listOp("/spec/volumes", hasVolumes, v))
		hasVolumes = true
	}
	return ops
}

// mapOps adds keys to the map at path, creating it when absent.
func mapOps(path string, existing, add map[string]string) []op {
	if existing == nil {
		return []op{{Op: "add", Path: path, Value: add}}
	}
	var ops []op
	for k, v := range add {
		key := strings.ReplaceAll(strings.ReplaceAll(k, "~", "~0"), "/", "~1")
		ops = append(ops, op{Op: "add", Path: path + "/" + key, Value: v})
	}
	return ops
}

// listOp appends value to the list at path, creating it when absent.
func listOp(path string, exists bool, value any) op {
	if exists {
		return op{Op: "add", Path: path + "/-", Value: value}
	}
	return op{Op: "add", Path: path, Value: []any{value}}
}

func initContainer() map[string]any {
	return map[string]any{
		"name":  "istio-init",
		"image": proxyImage,
		"args": []string{"istio-iptables", "-p", "15001", "-z", "15006", "-u", "1337", "-m", "REDIRECT",
			"-i", "*", "-x", "", "-b", "*", "-d", "15090,15021,15020", "--log_output_level=default:info"},
		"resources": map[string]any{
			"limits":   map[string]string{"cpu": "2", "memory": "1Gi"},
			"requests": map[string]string{"cpu": "10m", "memory": "40Mi"},
		},
		"securityContext": map[string]any{
			"allowPrivilegeEscalation": false,
			"capabilities":             map[string]any{"add": []string{"NET_ADMIN", "NET_RAW"}, "drop": []string{"ALL"}},
			"privileged":               false,
			"readOnlyRootFilesystem":   false,
			"runAsGroup":               0,
			"runAsNonRoot":             false,
			"runAsUser":                0,
		},
	}
}

func proxyContainer(namespace, workload string, apps []string) map[string]any {
	field := func(name, path string) map[string]any {
		return map[string]any{"name": name, "valueFrom": map[string]any{"fieldRef": map[string]string{"fieldPath": path}}}
	}
	value := func(name, v string) map[string]any { return map[string]any{"name": name, "value": v} }
	probe := func(failures, period int) map[string]any {
		return map[string]any{
			"httpGet":          map[string]any{"path": "/healthz/ready", "port": 15021},
			"failureThreshold": failures, "periodSeconds": period, "timeoutSeconds": 3,
		}
	}
	mount := func(name, path string) map[string]any { return map[string]any{"name": name, "mountPath": path} }
	return map[string]any{
		"name":  "istio-proxy",
		"image": proxyImage,
		"args": []string{"proxy", "sidecar", "--domain", "$(POD_NAMESPACE).svc.cluster.local",
			"--proxyLogLevel=warning", "--proxyComponentLogLevel=misc:error", "--log_output_level=default:info"},
		"env": []any{
			value("PILOT_CERT_PROVIDER", "istiod"),
			value("CA_ADDR", "istiod.istio-system.svc:15012"),
			field("POD_NAME", "metadata.name"),
			field("POD_NAMESPACE", "metadata.namespace"),
			field("INSTANCE_IP", "status.podIP"),
			field("SERVICE_ACCOUNT", "spec.serviceAccountName"),
			field("HOST_IP", "status.hostIP"),
			value("PROXY_CONFIG", "{}\n"),
			value("ISTIO_META_POD_PORTS", "[\n]"),
			value("ISTIO_META_APP_CONTAINERS", strings.Join(apps, ",")),
			value("ISTIO_META_CLUSTER_ID", "Kubernetes"),
			field("ISTIO_META_NODE_NAME", "spec.nodeName"),
			value("ISTIO_META_INTERCEPTION_MODE", "REDIRECT"),
			value("ISTIO_META_WORKLOAD_NAME", workload),
			value("ISTIO_META_OWNER", fmt.Sprintf("kubernetes://apis/batch/v1/namespaces/%s/jobs/%s", namespace, workload)),
			value("ISTIO_META_MESH_ID", "cluster.local"),
			value("TRUST_DOMAIN", "cluster.local"),
		},
		"ports":          []any{map[string]any{"containerPort": 15090, "name": "http-envoy-prom", "protocol": "TCP"}},
		"readinessProbe": probe(4, 15),
		"startupProbe":   probe(600, 1),
		"resources": map[string]any{
			"limits":   map[string]string{"cpu": "2", "memory": "1Gi"},
			"requests": map[string]string{"cpu": "100m", "memory": "128Mi"},
		},
		"securityContext": map[string]any{
			"allowPrivilegeEscalation": false,
			"capabilities":             map[string]any{"drop": []string{"ALL"}},
			"privileged":               false,
			"readOnlyRootFilesystem":   true,
			"runAsGroup":               1337,
			"runAsNonRoot":             true,
			"runAsUser":                1337,
		},
		"volumeMounts": []any{
			mount("workload-socket", "/var/run/secrets/workload-spiffe-uds"),
			mount("credential-socket", "/var/run/secrets/credential-uds"),
			mount("workload-certs", "/var/run/secrets/workload-spiffe-credentials"),
			mount("istiod-ca-cert", "/var/run/secrets/istio"),
			mount("istio-data", "/var/lib/istio/data"),
			mount("istio-envoy", "/etc/istio/proxy"),
			mount("istio-token", "/var/run/secrets/tokens"),
			mount("istio-podinfo", "/etc/istio/pod"),
		},
	}
}

func volumes() []any {
	empty := func(name string) map[string]any { return map[string]any{"name": name, "emptyDir": map[string]any{}} }
	downward := func(name, path string) map[string]any {
		return map[string]any{"path": name, "fieldRef": map[string]string{"fieldPath": path}}
	}
	return []any{
		empty("workload-socket"),
		empty("credential-socket"),
		empty("workload-certs"),
		map[string]any{"name": "istio-envoy", "emptyDir": map[string]any{"medium": "Memory"}},
		empty("istio-data"),
		map[string]any{"name": "istio-podinfo", "downwardAPI": map[string]any{"items": []any{
			downward("labels", "metadata.labels"), downward("annotations", "metadata.annotations"),
		}}},
		map[string]any{"name": "istio-token", "projected": map[string]any{"sources": []any{
			map[string]any{"serviceAccountToken": map[string]any{"audience": "istio-ca", "expirationSeconds": 43200, "path": "istio-token"}},
		}}},
		map[string]any{"name": "istiod-ca-cert", "configMap": map[string]any{"name": "istio-ca-root-cert"}},
	}
}
