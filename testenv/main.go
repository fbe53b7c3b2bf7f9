// Command testenv runs a real Kubernetes control plane for tests in one process:
// an embedded etcd, kube-apiserver (k8s.io/kubernetes) and, optionally,
// kube-controller-manager with the garbage-collector and namespace controllers.
//
// It writes DIR/kubeconfig (admin, group system:masters) and, once the
// apiserver is ready, prints exactly one line to stdout:
//
//	testenv ready kubeconfig=<abs path> server=https://127.0.0.1:<port>
//
// All component logs go to DIR/testenv.log and DIR/etcd.log.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/signal"
	"path/filepath"
	"runtime/debug"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/spf13/pflag"
	"go.etcd.io/etcd/server/v3/embed"
	apiextensionsv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	apiextclient "k8s.io/apiextensions-apiserver/pkg/client/clientset/clientset"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	apiserverapp "k8s.io/kubernetes/cmd/kube-apiserver/app"
	kcmapp "k8s.io/kubernetes/cmd/kube-controller-manager/app"
	kcmoptions "k8s.io/kubernetes/cmd/kube-controller-manager/app/options"
)

const defaultControllers = "garbage-collector-controller,namespace-controller"

var (
	// Our own output: the original stdout/stderr. fds 1 and 2 are redirected
	// to DIR/testenv.log so that component chatter never reaches the terminal.
	outW io.Writer = os.Stdout
	errW io.Writer = os.Stderr
)

// logf writes to the real stderr and, when it is redirected, to DIR/testenv.log too.
func logf(format string, args ...any) {
	msg := fmt.Sprintf("testenv: "+format+"\n", args...)
	fmt.Fprint(errW, msg)
	if errW != io.Writer(os.Stderr) {
		fmt.Fprint(os.Stderr, time.Now().Format("15:04:05.000000 ")+msg)
	}
}

func fatalf(format string, args ...any) {
	logf(format, args...)
	os.Exit(1)
}

func main() {
	var (
		dir            string
		port           int
		controllers    bool
		controllerList string
		saCredentials  bool
		crdDir         string
		exitOnEOF      bool
		verbosity      int
		keepLogs       bool
		keepState      bool
	)
	fs := flag.NewFlagSet("testenv", flag.ContinueOnError)
	fs.StringVar(&dir, "dir", "", "state directory (created; required). Any previous etcd data in it is wiped.")
	fs.IntVar(&port, "port", 0, "kube-apiserver secure port on 127.0.0.1 (0 = pick a free port)")
	fs.BoolVar(&controllers, "controllers", true, "run kube-controller-manager in-process (garbage collector + namespace controllers)")
	fs.StringVar(&controllerList, "controller-list", defaultControllers, "value of kube-controller-manager --controllers")
	fs.BoolVar(&saCredentials, "use-service-account-credentials", false, "each controller acts as its own kube-system ServiceAccount (as kubeadm runs kube-controller-manager) instead of the admin kubeconfig")
	fs.StringVar(&crdDir, "crds", "", "optional directory of CRD YAML files to apply (and wait for) before the ready line")
	fs.BoolVar(&exitOnEOF, "exit-on-stdin-eof", false, "shut down when stdin is closed (e.g. the parent test process died)")
	fs.IntVar(&verbosity, "v", 0, "klog verbosity of the components (logs go to DIR/testenv.log)")
	fs.BoolVar(&keepLogs, "log-to-stderr", false, "do not redirect component logs to DIR/testenv.log")
	fs.BoolVar(&keepState, "keep-state", false, "restart on DIR's state: keep its etcd data and certificates (pass the same --port)")
	if err := fs.Parse(os.Args[1:]); err != nil {
		os.Exit(2)
	}
	if dir == "" {
		fatalf("--dir is required")
	}
	dir, err := filepath.Abs(dir)
	if err != nil {
		fatalf("%v", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		fatalf("create state dir: %v", err)
	}
	if !keepLogs {
		if err := redirectOutput(filepath.Join(dir, "testenv.log")); err != nil {
			fatalf("redirect logs: %v", err)
		}
	}
	start := time.Now()

	// The apiserver command installs the process' SIGTERM/SIGINT handler
	// (genericapiserver.SetupSignalContext); it must be created exactly once
	// and before anything else that wants signals.
	apiCmd := apiserverapp.NewAPIServerCommand()

	sigCh := make(chan os.Signal, 2)
	signal.Notify(sigCh, syscall.SIGTERM, syscall.SIGINT)
	terminate := func() { _ = syscall.Kill(os.Getpid(), syscall.SIGTERM) }
	if exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			logf("stdin closed, shutting down")
			terminate()
		}()
	}

	// ---- certificates -----------------------------------------------------
	pki, err := generatePKI(dir, keepState)
	if err != nil {
		fatalf("generate certificates: %v", err)
	}

	// ---- ports ------------------------------------------------------------
	if port == 0 {
		if port, err = freePort(); err != nil {
			fatalf("pick port: %v", err)
		}
	}
	etcdClientPort, err := freePort()
	if err != nil {
		fatalf("pick port: %v", err)
	}
	etcdPeerPort, err := freePort()
	if err != nil {
		fatalf("pick port: %v", err)
	}
	server := fmt.Sprintf("https://127.0.0.1:%d", port)
	kubeconfigPath := filepath.Join(dir, "kubeconfig")
	if err := writeKubeconfig(kubeconfigPath, server, pki); err != nil {
		fatalf("write kubeconfig: %v", err)
	}

	// ---- etcd -------------------------------------------------------------
	etcd, err := startEtcd(dir, etcdClientPort, etcdPeerPort, keepState)
	if err != nil {
		fatalf("start etcd: %v", err)
	}
	stopEtcd := sync.OnceFunc(func() {
		done := make(chan struct{})
		go func() { etcd.Close(); close(done) }()
		select {
		case <-done:
		case <-time.After(3 * time.Second):
		}
	})

	// ---- kube-apiserver ---------------------------------------------------
	apiArgs := []string{
		"--etcd-servers=" + fmt.Sprintf("http://127.0.0.1:%d", etcdClientPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + filepath.Join(dir, "apiserver-certs"),
		"--tls-cert-file=" + pki.servingCert,
		"--tls-private-key-file=" + pki.servingKey,
		"--client-ca-file=" + pki.caCert,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-account-key-file=" + pki.saPub,
		"--service-account-signing-key-file=" + pki.saKey,
		"--service-cluster-ip-range=10.0.0.0/24",
		"--authorization-mode=RBAC",
		"--disable-admission-plugins=ServiceAccount",
		"--endpoint-reconciler-type=none",
		"--allow-privileged=true",
		"--profiling=false",
		"--v=" + strconv.Itoa(verbosity),
	}
	apiCmd.SetArgs(apiArgs)
	apiCmd.SetOut(os.Stderr)
	apiCmd.SetErr(os.Stderr)
	apiDone := make(chan error, 1)
	go func() { apiDone <- apiCmd.Execute() }()

	cfg, err := clientcmd.BuildConfigFromFlags("", kubeconfigPath)
	if err != nil {
		fatalf("load kubeconfig: %v", err)
	}

	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	shutdown := func(code int) {
		fmt.Fprintf(os.Stderr, "testenv: shutting down (exit code %d)\n", code)
		cancel()
		select {
		case <-apiDone:
		case <-time.After(8 * time.Second):
			logf("kube-apiserver did not stop in time")
		}
		stopEtcd()
		os.Exit(code)
	}

	// Wait for readiness, or an early failure / signal.
	readyCh := make(chan error, 1)
	go func() { readyCh <- waitReady(ctx, cfg, pki) }()
	select {
	case err := <-readyCh:
		if err != nil {
			logf("apiserver not ready: %v (see %s)", err, filepath.Join(dir, "testenv.log"))
			terminate()
			shutdown(1)
		}
	case err := <-apiDone:
		stopEtcd()
		fatalf("kube-apiserver exited early: %v (see %s)", err, filepath.Join(dir, "testenv.log"))
	case sig := <-sigCh:
		logf("received %v, shutting down", sig)
		shutdown(0)
	}

	if crdDir != "" {
		if err := applyCRDs(ctx, cfg, crdDir); err != nil {
			logf("apply CRDs: %v", err)
			terminate()
			shutdown(1)
		}
	}

	kcmDone := make(chan error, 1)
	if controllers {
		if err := startControllerManager(ctx, kubeconfigPath, controllerList, saCredentials, verbosity, kcmDone); err != nil {
			logf("kube-controller-manager: %v", err)
			terminate()
			shutdown(1)
		}
	}

	logf("ready after %.1fs (logs: %s)", time.Since(start).Seconds(), filepath.Join(dir, "testenv.log"))
	fmt.Fprintf(outW, "testenv ready kubeconfig=%s server=%s\n", kubeconfigPath, server)

	select {
	case sig := <-sigCh:
		logf("received %v, shutting down", sig)
		shutdown(0)
	case err := <-apiDone:
		if err != nil {
			logf("kube-apiserver exited: %v", err)
			stopEtcd()
			os.Exit(1)
		}
		// The apiserver stops by itself only on a signal.
		logf("kube-apiserver stopped")
		stopEtcd()
		os.Exit(0)
	case err := <-kcmDone:
		logf("kube-controller-manager exited: %v", err)
		terminate()
		shutdown(1)
	}
}

// redirectOutput points fds 1 and 2 at a log file and keeps the original
// ones for our own messages (the ready line and errors).
func redirectOutput(path string) error {
	f, err := os.OpenFile(path, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	origOut, err := syscall.Dup(1)
	if err != nil {
		return err
	}
	origErr, err := syscall.Dup(2)
	if err != nil {
		return err
	}
	syscall.CloseOnExec(origOut)
	syscall.CloseOnExec(origErr)
	outFile := os.NewFile(uintptr(origOut), "stdout")
	errFile := os.NewFile(uintptr(origErr), "stderr")
	if err := syscall.Dup3(int(f.Fd()), 1, 0); err != nil {
		return err
	}
	if err := syscall.Dup3(int(f.Fd()), 2, 0); err != nil {
		return err
	}
	outW, errW = outFile, errFile
	// Fatal errors (panics) still reach the real stderr.
	_ = debug.SetCrashOutput(errFile, debug.CrashOptions{})
	return nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startEtcd(dir string, clientPort, peerPort int, keepData bool) (*embed.Etcd, error) {
	dataDir := filepath.Join(dir, "etcd")
	if !keepData {
		if err := os.RemoveAll(dataDir); err != nil {
			return nil, err
		}
	}
	cfg := embed.NewConfig()
	cfg.Name = "testenv"
	cfg.Dir = dataDir
	cu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", clientPort))
	pu, _ := url.Parse(fmt.Sprintf("http://127.0.0.1:%d", peerPort))
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	cfg.Logger = "zap"
	cfg.LogLevel = "error"
	cfg.LogOutputs = []string{filepath.Join(dir, "etcd.log")}
	cfg.UnsafeNoFsync = true // test data only
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, err
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case err := <-e.Err():
		e.Close()
		return nil, err
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, errors.New("etcd did not become ready in 60s")
	}
}

// waitReady polls /readyz and then waits for the "default" namespace.
func waitReady(ctx context.Context, cfg *rest.Config, pki *pkiFiles) error {
	caPEM, err := os.ReadFile(pki.caCert)
	if err != nil {
		return err
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(pki.adminCert, pki.adminKey)
	if err != nil {
		return err
	}
	hc := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{TLSClientConfig: &tls.Config{
			RootCAs: pool, Certificates: []tls.Certificate{cert},
		}},
	}
	deadline := time.Now().Add(3 * time.Minute)
	for {
		resp, err := hc.Get(cfg.Host + "/readyz")
		if err == nil {
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				break
			}
		}
		if time.Now().After(deadline) {
			return errors.New("timed out waiting for /readyz")
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return err
	}
	for {
		_, err := cs.CoreV1().Namespaces().Get(ctx, "default", metav1.GetOptions{})
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("timed out waiting for namespace default: %w", err)
		}
		if !sleepCtx(ctx, 200*time.Millisecond) {
			return ctx.Err()
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	select {
	case <-ctx.Done():
		return false
	case <-time.After(d):
		return true
	}
}

// applyCRDs creates every CRD in dir (*.yaml, *.yml, *.json; one document per
// "---"-separated section; apiextensions.k8s.io/v1, or v1beta1 converted by
// decodeCRD) and waits until each is Established and listable.
func applyCRDs(ctx context.Context, cfg *rest.Config, dir string) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return err
	}
	var files []string
	for _, e := range entries {
		n := e.Name()
		if !e.IsDir() && (strings.HasSuffix(n, ".yaml") || strings.HasSuffix(n, ".yml") || strings.HasSuffix(n, ".json")) {
			files = append(files, filepath.Join(dir, n))
		}
	}
	sort.Strings(files)
	ac, err := apiextclient.NewForConfig(cfg)
	if err != nil {
		return err
	}
	dc, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return err
	}
	var crds []*apiextensionsv1.CustomResourceDefinition
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			return err
		}
		for _, doc := range strings.Split(string(data), "\n---") {
			if strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(doc), "---")) == "" {
				continue
			}
			crd, err := decodeCRD([]byte(doc))
			if err != nil {
				return fmt.Errorf("%s: %w", f, err)
			}
			if crd.Kind != "CustomResourceDefinition" {
				return fmt.Errorf("%s: kind %q is not CustomResourceDefinition", f, crd.Kind)
			}
			_, err = ac.ApiextensionsV1().CustomResourceDefinitions().Create(ctx, crd, metav1.CreateOptions{})
			if err != nil && !apierrors.IsAlreadyExists(err) {
				return fmt.Errorf("%s: create %s: %w", f, crd.Name, err)
			}
			crds = append(crds, crd)
		}
	}
	deadline := time.Now().Add(60 * time.Second)
	for _, crd := range crds {
		for {
			ok, err := crdServed(ctx, ac, dc, crd)
			if ok {
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("CRD %s not served after 60s: %v", crd.Name, err)
			}
			if !sleepCtx(ctx, 100*time.Millisecond) {
				return ctx.Err()
			}
		}
	}
	return nil
}

func crdServed(ctx context.Context, ac apiextclient.Interface, dc dynamic.Interface, crd *apiextensionsv1.CustomResourceDefinition) (bool, error) {
	got, err := ac.ApiextensionsV1().CustomResourceDefinitions().Get(ctx, crd.Name, metav1.GetOptions{})
	if err != nil {
		return false, err
	}
	established := false
	for _, c := range got.Status.Conditions {
		if c.Type == apiextensionsv1.Established && c.Status == apiextensionsv1.ConditionTrue {
			established = true
		}
	}
	if !established {
		return false, errors.New("not established")
	}
	for _, v := range got.Spec.Versions {
		if !v.Served {
			continue
		}
		gvr := schema.GroupVersionResource{Group: got.Spec.Group, Version: v.Name, Resource: got.Spec.Names.Plural}
		if _, err := dc.Resource(gvr).List(ctx, metav1.ListOptions{Limit: 1}); err != nil {
			return false, err
		}
	}
	return true, nil
}

// startControllerManager runs kube-controller-manager's Run in a goroutine
// with our own context (the cobra command would install a second signal
// handler, which panics in one process).
func startControllerManager(ctx context.Context, kubeconfig, controllers string, saCredentials bool, verbosity int, done chan<- error) error {
	s, err := kcmoptions.NewKubeControllerManagerOptions()
	if err != nil {
		return err
	}
	all, disabled, aliases := kcmapp.KnownControllers(), kcmapp.ControllersDisabledByDefault(), kcmapp.ControllerAliases()
	named := s.Flags(all, disabled, aliases)
	s.ParsedFlags = &named
	pfs := pflag.NewFlagSet("kube-controller-manager", pflag.ContinueOnError)
	for _, f := range named.FlagSets {
		pfs.AddFlagSet(f)
	}
	args := []string{
		"--kubeconfig=" + kubeconfig,
		"--controllers=" + controllers,
		// true: tokens from the TokenRequest API for system:serviceaccount:kube-system:<controller>,
		// so webhooks see the requester a real cluster shows them.
		fmt.Sprintf("--use-service-account-credentials=%t", saCredentials),
		"--leader-elect=false",
		"--secure-port=0",
		"--profiling=false",
	}
	if err := pfs.Parse(args); err != nil {
		return err
	}
	_ = verbosity // klog verbosity is process-wide and already set by the apiserver's --v
	if err := s.ComponentGlobalsRegistry.Set(); err != nil {
		return err
	}
	c, err := s.Config(ctx, all, disabled, aliases)
	if err != nil {
		return err
	}
	go func() { done <- kcmapp.Run(ctx, c.Complete()) }()
	return nil
}
