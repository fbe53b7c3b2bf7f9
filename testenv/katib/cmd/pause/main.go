// Command pause is the pod's first process, as the kubelet's pause container: PID 1 of the
// pod's PID namespace, it reaps every orphan reparented to it (Katib's collector treats a
// process as running while /proc/<pid> exists, so a zombie would keep it waiting) and exits
// on SIGTERM, SIGINT or end of stdin (the test harness holds stdin: nothing outlives it).
package main

import (
	"io"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	signals := make(chan os.Signal, 8)
	signal.Notify(signals, syscall.SIGCHLD, syscall.SIGTERM, syscall.SIGINT)
	go func() {
		_, _ = io.Copy(io.Discard, os.Stdin)
		os.Exit(0)
	}()
	for sig := range signals {
		if sig != syscall.SIGCHLD {
			os.Exit(0)
		}
		for {
			var status syscall.WaitStatus
			pid, err := syscall.Wait4(-1, &status, syscall.WNOHANG, nil)
			if pid <= 0 || err != nil {
				break
			}
		}
	}
}
