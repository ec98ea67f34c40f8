package main

import (
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/braidmesh/braid/internal/kubelab"
	"github.com/braidmesh/braid/internal/lab"
)

// conformanceCommand runs the upstream MCS conformance suite (the
// conformance/ module of a kubernetes-sigs/mcs-api checkout) against a lab
// of two clusters with CoreDNS, and keeps its output and report.
func conformanceCommand(dir *string) *cobra.Command {
	var mcsAPI, report string
	cmd := &cobra.Command{
		Use:   "conformance --mcs-api DIR",
		Short: "Run the MCS API conformance suite of a kubernetes-sigs/mcs-api checkout against two lab clusters",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			suite := filepath.Join(mcsAPI, "conformance")
			if _, err := os.Stat(filepath.Join(suite, "go.mod")); err != nil {
				return fmt.Errorf("--mcs-api %s: no conformance/go.mod: pass a kubernetes-sigs/mcs-api checkout: %w", mcsAPI, err)
			}
			coredns, err := kubelab.CoreDNS()
			if err != nil {
				return fmt.Errorf("%w (run `make kube-tools`)", err)
			}
			out := cmd.OutOrStdout()
			l, err := lab.Up(cmd.Context(), lab.Config{Clusters: 2, Nodes: 2, Dir: *dir, CoreDNS: coredns, Progress: progress(out)})
			if err != nil {
				return err
			}
			defer l.Close()
			if err := os.MkdirAll(report, 0o755); err != nil {
				return err
			}
			report, err = filepath.Abs(report)
			if err != nil {
				return err
			}
			kubeconfig := filepath.Join(report, "kubeconfig")
			if err := mergeKubeconfigs(l, kubeconfig); err != nil {
				return err
			}
			var names []string
			for _, c := range l.Clusters {
				names = append(names, string(c.Name))
			}
			log, err := os.Create(filepath.Join(report, "go-test.log"))
			if err != nil {
				return err
			}
			defer log.Close()
			// The suite's module is not on the module proxy: it builds
			// from the checkout (its go.mod replaces sigs.k8s.io/mcs-api
			// with ..), its other dependencies from the proxy. -v, not
			// -args -test.v: go test then streams the output as it comes.
			run := exec.CommandContext(cmd.Context(), "go", "test", "-v", "-count=1", "-timeout", "60m", ".", "-args",
				"-kubeconfig", kubeconfig, "-contexts", strings.Join(names, ","),
				"-ginkgo.v", "-ginkgo.json-report", filepath.Join(report, "report.json"),
				"-organization", "braidmesh", "-project", "braid", "-url", "https://github.com/braidmesh/braid")
			run.Dir = suite
			run.Env = append(os.Environ(), "GOFLAGS=-mod=mod", "GOWORK=off")
			run.Stdout = io.MultiWriter(out, log)
			run.Stderr = io.MultiWriter(out, log)
			err = run.Run()
			fmt.Fprintf(out, "conformance: output in %s, report %s\n", log.Name(), filepath.Join(report, "report.json"))
			var exit *exec.ExitError
			if errors.As(err, &exit) {
				return fmt.Errorf("conformance suite failed (exit %d): see %s", exit.ExitCode(), log.Name())
			}
			return err
		},
	}
	cmd.Flags().StringVar(&mcsAPI, "mcs-api", "", "a kubernetes-sigs/mcs-api checkout (required)")
	cmd.Flags().StringVar(&report, "report", "conformance-report", "where to keep the suite's output, report and kubeconfig")
	_ = cmd.MarkFlagRequired("mcs-api")
	return cmd
}

// mergeKubeconfigs writes one kubeconfig with a context per lab cluster,
// named after the cluster.
func mergeKubeconfigs(l *lab.Lab, path string) error {
	merged := clientcmdapi.NewConfig()
	for _, c := range l.Clusters {
		cfg, err := clientcmd.LoadFromFile(c.Kubeconfig)
		if err != nil {
			return fmt.Errorf("read kubeconfig of %s: %w", c.Name, err)
		}
		ctx := cfg.Contexts[cfg.CurrentContext]
		if ctx == nil {
			return fmt.Errorf("kubeconfig of %s has no current context", c.Name)
		}
		name := string(c.Name)
		merged.Clusters[name] = cfg.Clusters[ctx.Cluster]
		merged.AuthInfos[name] = cfg.AuthInfos[ctx.AuthInfo]
		nc := ctx.DeepCopy()
		nc.Cluster, nc.AuthInfo = name, name
		merged.Contexts[name] = nc
		if merged.CurrentContext == "" {
			merged.CurrentContext = name
		}
	}
	return clientcmd.WriteToFile(*merged, path)
}
