// Command pilot-agent stands in for Istio's pilot-agent in trial-pod tests: a process of that
// name (so `pkill -INT pilot-agent` finds it) serving the two endpoints tenancy-fixer's
// wrapper uses:
//   - GET  http://127.0.0.1:15021/healthz/ready: 503 until PILOT_STANDIN_READY_AFTER has
//     passed since start, then 200;
//   - POST http://127.0.0.1:15020/quitquitquit: 200, then exit 0 (other methods: 405, as Istio).
//
// SIGINT and SIGTERM also exit 0 (Istio drains, then exits). Every event is appended as one
// JSON line to the file named by PILOT_STANDIN_EVENTS, with a wall-clock time in Unix
// nanoseconds, so a test can order it against the training program's start.
// Arguments (Istio's `proxy sidecar ...`) are recorded and otherwise ignored, except that
// `pilot-agent istio-iptables ...` (the istio-init container's command) records and exits 0.
package main

import (
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/signal"
	"strconv"
	"sync"
	"syscall"
	"time"
)

type event struct {
	Event  string   `json:"event"`
	UnixNs int64    `json:"unix_ns"`
	Argv   []string `json:"argv,omitempty"`
	Method string   `json:"method,omitempty"`
	Status int      `json:"status,omitempty"`
	Signal string   `json:"signal,omitempty"`
}

type recorder struct {
	mu   sync.Mutex
	file *os.File
}

func (r *recorder) record(e event) {
	e.UnixNs = time.Now().UnixNano()
	line, _ := json.Marshal(e)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.file != nil {
		_, _ = r.file.Write(append(line, '\n'))
		_ = r.file.Sync()
	}
}

func port(env string, fallback int) int {
	if v, err := strconv.Atoi(os.Getenv(env)); err == nil {
		return v
	}
	return fallback
}

func main() {
	rec := &recorder{}
	if path := os.Getenv("PILOT_STANDIN_EVENTS"); path != "" {
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fmt.Fprintln(os.Stderr, "pilot-agent:", err)
			os.Exit(1)
		}
		rec.file = f
	}
	readyAfter, _ := time.ParseDuration(os.Getenv("PILOT_STANDIN_READY_AFTER"))
	start := time.Now()
	rec.record(event{Event: "start", Argv: os.Args})
	if len(os.Args) > 1 && os.Args[1] == "istio-iptables" {
		rec.record(event{Event: "exit"})
		return
	}

	exit := func(code int) {
		rec.record(event{Event: "exit", Status: code})
		os.Exit(code)
	}
	signals := make(chan os.Signal, 2)
	signal.Notify(signals, syscall.SIGINT, syscall.SIGTERM)
	go func() {
		sig := <-signals
		rec.record(event{Event: "signal", Signal: sig.String()})
		exit(0)
	}()

	var readyOnce sync.Once
	status := http.NewServeMux()
	status.HandleFunc("/healthz/ready", func(w http.ResponseWriter, r *http.Request) {
		if time.Since(start) < readyAfter {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		readyOnce.Do(func() { rec.record(event{Event: "ready", Status: http.StatusOK}) })
		w.WriteHeader(http.StatusOK)
	})
	admin := http.NewServeMux()
	admin.HandleFunc("/quitquitquit", func(w http.ResponseWriter, r *http.Request) {
		rec.record(event{Event: "quitquitquit", Method: r.Method})
		if r.Method != http.MethodPost {
			w.WriteHeader(http.StatusMethodNotAllowed)
			return
		}
		w.WriteHeader(http.StatusOK)
		if f, ok := w.(http.Flusher); ok {
			f.Flush()
		}
		go func() {
			time.Sleep(50 * time.Millisecond)
			exit(0)
		}()
	})
	serve := func(p int, mux *http.ServeMux) {
		err := http.ListenAndServe(fmt.Sprintf("127.0.0.1:%d", p), mux)
		fmt.Fprintln(os.Stderr, "pilot-agent:", err)
		exit(1)
	}
	go serve(port("PILOT_STANDIN_STATUS_PORT", 15021), status)
	serve(port("PILOT_STANDIN_ADMIN_PORT", 15020), admin)
}
