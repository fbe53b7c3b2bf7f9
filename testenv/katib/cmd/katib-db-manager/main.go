// Command katib-db-manager stands in for Katib's DB manager in trial-pod tests: it serves
// Katib's own generated gRPC API (github.com/kubeflow/katib/pkg/apis/manager/v1beta1) and
// appends every ReportObservationLog request it receives, as one protojson line, to -record.
// It prints "listening <addr>" once it accepts connections and, with -exit-on-stdin-eof,
// exits when its stdin closes (the test harness holds it).
package main

import (
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"

	api "github.com/kubeflow/katib/pkg/apis/manager/v1beta1"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
)

type dbManager struct {
	api.UnimplementedDBManagerServer
	mu     sync.Mutex
	record *os.File
}

func (d *dbManager) ReportObservationLog(_ context.Context, req *api.ReportObservationLogRequest) (*api.ReportObservationLogReply, error) {
	line, err := protojson.Marshal(req)
	if err != nil {
		return nil, err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if _, err := d.record.Write(append(line, '\n')); err != nil {
		return nil, err
	}
	return &api.ReportObservationLogReply{}, d.record.Sync()
}

func main() {
	listen := flag.String("listen", "127.0.0.1:6789", "address to serve Katib's DBManager gRPC API on")
	recordPath := flag.String("record", "", "file receiving one JSON line per ReportObservationLog request")
	exitOnEOF := flag.Bool("exit-on-stdin-eof", false, "exit when stdin closes")
	flag.Parse()
	if *recordPath == "" {
		fmt.Fprintln(os.Stderr, "katib-db-manager: -record is required")
		os.Exit(2)
	}
	record, err := os.OpenFile(*recordPath, os.O_CREATE|os.O_APPEND|os.O_WRONLY, 0o644)
	if err != nil {
		fmt.Fprintln(os.Stderr, "katib-db-manager:", err)
		os.Exit(1)
	}
	listener, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, "katib-db-manager:", err)
		os.Exit(1)
	}
	if *exitOnEOF {
		go func() {
			_, _ = io.Copy(io.Discard, os.Stdin)
			os.Exit(0)
		}()
	}
	server := grpc.NewServer()
	api.RegisterDBManagerServer(server, &dbManager{record: record})
	fmt.Printf("listening %s\n", listener.Addr())
	if err := server.Serve(listener); err != nil {
		fmt.Fprintln(os.Stderr, "katib-db-manager:", err)
		os.Exit(1)
	}
}
