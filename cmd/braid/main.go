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
	"github.com/braidmesh/braid/cmd/braid/meshsim"
	"github.com/braidmesh/braid/cmd/braid/podbench"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	root := cli.NewRoot(os.Stdout, os.Stderr)
	root.AddCommand(tokenCommand())
	benchCmd := bench.Command()
	benchCmd.AddCommand(podbench.Commands()...) // bench pods: the data path between clusters
	root.AddCommand(brokerCommand(), demo.Command(), benchCmd, diagnose.Command(), meshsim.Command())
	code := cli.Run(ctx, root, os.Args[1:])
	stop()
	os.Exit(code)
}
