// Command braid is Braid's command-line tool: run the broker, add clusters
// to it, show the mesh's status and run the demo.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/braidmesh/braid/cmd/braid/bench"
	"github.com/braidmesh/braid/cmd/braid/cli"
	"github.com/braidmesh/braid/cmd/braid/demo"
	"github.com/braidmesh/braid/cmd/braid/diagnose"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := cli.NewRoot(os.Stdout, os.Stderr)
	root.AddCommand(brokerCommand(), demo.Command(), bench.Command())
	root.AddCommand(diagnose.Command())
	code := cli.Run(ctx, root, os.Args[1:])
	stop()
	os.Exit(code)
}
