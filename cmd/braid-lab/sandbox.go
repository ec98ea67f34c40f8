package main

import (
	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/internal/lab"
)

// sandboxCommand is the hidden command the lab starts each node's agent
// through: it enters the node's sandbox (lab.ExecSandboxed) and execs the
// agent.
func sandboxCommand() *cobra.Command {
	var netnsPath string
	cmd := &cobra.Command{
		Use:    lab.SandboxCommand + " --netns PATH -- PROGRAM [ARGS...]",
		Short:  "Run PROGRAM as a lab node's agent: in the node's network namespace, at the root of its own cgroup namespace, with cgroup2 mounted fresh",
		Hidden: true,
		Args:   cobra.MinimumNArgs(1),
		RunE: func(_ *cobra.Command, args []string) error {
			return lab.ExecSandboxed(netnsPath, args)
		},
	}
	cmd.Flags().SetInterspersed(false)
	cmd.Flags().StringVar(&netnsPath, "netns", "", "the node's network namespace (a path)")
	_ = cmd.MarkFlagRequired("netns")
	return cmd
}
