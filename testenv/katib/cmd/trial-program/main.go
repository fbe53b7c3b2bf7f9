// Command trial-program stands in for a program run in a trial pod (a training script, or a
// collector whose arguments are under test). It accepts any arguments and is configured only
// through its environment (the emulated image's ENV), so a test can hand it hostile words:
//
//	STANDIN_RECORD               append one JSON line: argv (also base64, byte-exact), env,
//	                             pid, parent pid, start time (Unix ns), probe result
//	STANDIN_PROBE_URL            GET it once at start (1 s timeout) and record the status (0: no answer)
//	STANDIN_OUTPUT               printed to stdout (e.g. Katib's `name=value` metrics lines)
//	STANDIN_RUN_FOR              stay alive this long (Go duration) before exiting
//	STANDIN_TERMINATION_MESSAGE  written to the termination log (path STANDIN_TERMINATION_LOG,
//	                             default /dev/termination-log)
//	STANDIN_EXIT_CODE            exit code (default 0)
package main

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"strconv"
	"time"
)

type record struct {
	Argv        []string `json:"argv"`
	ArgvBase64  []string `json:"argv_base64"`
	Env         []string `json:"env"`
	Pid         int      `json:"pid"`
	Ppid        int      `json:"ppid"`
	StartUnixNs int64    `json:"start_unix_ns"`
	ProbeStatus *int     `json:"probe_status,omitempty"`
}

func probe(url string) int {
	client := http.Client{Timeout: time.Second}
	resp, err := client.Get(url)
	if err != nil {
		return 0
	}
	resp.Body.Close()
	return resp.StatusCode
}

func fail(err error) {
	fmt.Fprintln(os.Stderr, "trial-program:", err)
	os.Exit(111)
}

func main() {
	rec := record{
		Argv:        os.Args,
		Env:         os.Environ(),
		Pid:         os.Getpid(),
		Ppid:        os.Getppid(),
		StartUnixNs: time.Now().UnixNano(),
	}
	for _, arg := range os.Args {
		rec.ArgvBase64 = append(rec.ArgvBase64, base64.StdEncoding.EncodeToString([]byte(arg)))
	}
	if url := os.Getenv("STANDIN_PROBE_URL"); url != "" {
		status := probe(url)
		rec.ProbeStatus = &status
	}
	if path := os.Getenv("STANDIN_RECORD"); path != "" {
		line, err := json.Marshal(rec)
		if err != nil {
			fail(err)
		}
		f, err := os.OpenFile(path, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
		if err != nil {
			fail(err)
		}
		if _, err := f.Write(append(line, '\n')); err != nil {
			fail(err)
		}
		f.Close()
	}
	fmt.Print(os.Getenv("STANDIN_OUTPUT"))
	if d, err := time.ParseDuration(os.Getenv("STANDIN_RUN_FOR")); err == nil {
		time.Sleep(d)
	}
	if message, ok := os.LookupEnv("STANDIN_TERMINATION_MESSAGE"); ok {
		path := os.Getenv("STANDIN_TERMINATION_LOG")
		if path == "" {
			path = "/dev/termination-log"
		}
		if err := os.WriteFile(path, []byte(message), 0o644); err != nil {
			fail(err)
		}
	}
	code, _ := strconv.Atoi(os.Getenv("STANDIN_EXIT_CODE"))
	os.Exit(code)
}
