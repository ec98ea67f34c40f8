package node

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"syscall"

	"github.com/spf13/cobra"
	"golang.org/x/sys/unix"
)

// resolvConf is a pod's resolv.conf, as a kubelet writes it for
// dnsPolicy ClusterFirst: the cluster DNS and the cluster.local search
// path of the pod's namespace.
func resolvConf(dns netip.Addr, namespace string) string {
	return fmt.Sprintf("nameserver %s\nsearch %s.svc.cluster.local svc.cluster.local cluster.local\noptions ndots:5\n", dns, namespace)
}

// newMountnsCommand is `node mountns --resolv-conf FILE -- PROGRAM ARGS...`:
// started in a new, private mount namespace (spawner.start asks the kernel
// for it), it bind-mounts FILE on /etc/resolv.conf and execs PROGRAM. The
// rest of the machine's filesystem is shared, as for every lab container.
func newMountnsCommand() *cobra.Command {
	var conf string
	cmd := &cobra.Command{
		Use:           "mountns --resolv-conf FILE -- PROGRAM [ARGS...]",
		Short:         "Run a pod's process with the pod's resolv.conf",
		Hidden:        true,
		Args:          cobra.MinimumNArgs(1),
		SilenceUsage:  true,
		SilenceErrors: true,
		RunE: func(_ *cobra.Command, args []string) error {
			if conf == "" {
				return errors.New("mountns: --resolv-conf is required")
			}
			if err := unix.Mount(conf, "/etc/resolv.conf", "", unix.MS_BIND, ""); err != nil {
				return fmt.Errorf("mountns: bind %s on /etc/resolv.conf: %w", conf, err)
			}
			path, err := exec.LookPath(args[0])
			if err != nil {
				return fmt.Errorf("mountns: %w", err)
			}
			return syscall.Exec(path, args, os.Environ())
		},
	}
	cmd.Flags().StringVar(&conf, "resolv-conf", "", "file to mount on /etc/resolv.conf")
	return cmd
}
