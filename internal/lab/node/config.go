package node

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
)

// KubeletPort is the port of the kubelet API on Config.NodeIP.
const KubeletPort = 10250

// DefaultMaxPods is the pod capacity a node reports when Config.Capacity has
// no "pods" entry.
const DefaultMaxPods = 110

// Config configures a lab node.
type Config struct {
	Kubeconfig string // this node's kubeconfig (talks to its cluster's apiserver)

	NodeName, Cluster, Zone, Region string // Zone and Region may be empty: no label

	NodeIP net.IP // underlay address, in the netns this process runs in

	CgroupParent string // absolute cgroup v2 dir; pod cgroups are created under it

	StateDir string // logs, per-pod dirs, leftovers record

	// ServingCert and ServingKey are the kubelet API's TLS certificate and
	// key files (port KubeletPort on NodeIP). ClientCA, if not empty, is the
	// CA file that client certificates must chain to; empty means the API
	// accepts any client (use only on a private underlay).
	ServingCert, ServingKey, ClientCA string

	// DNS, if valid, is the cluster's DNS server: pods that are not on the
	// host network (and whose dnsPolicy is not Default) see a resolv.conf
	// naming it, with the cluster.local search path, at /etc/resolv.conf,
	// through a mount namespace of their own (see `node mountns`).
	DNS netip.Addr

	// Capacity is what the node reports as capacity and allocatable. Missing
	// entries default to the machine's CPUs and memory, DefaultMaxPods pods
	// and the free space of StateDir's filesystem as ephemeral-storage.
	Capacity corev1.ResourceList
}

func (c *Config) validate() error {
	var errs []error
	if c.Kubeconfig == "" {
		errs = append(errs, errors.New("kubeconfig is required"))
	}
	if c.NodeName == "" {
		errs = append(errs, errors.New("node name is required"))
	}
	if c.NodeIP.To4() == nil {
		errs = append(errs, fmt.Errorf("node IP %q is not an IPv4 address (the lab is IPv4 only)", c.NodeIP))
	}
	if !filepath.IsAbs(c.CgroupParent) {
		errs = append(errs, fmt.Errorf("cgroup parent %q must be an absolute cgroup v2 directory", c.CgroupParent))
	} else if _, err := os.Stat(filepath.Join(c.CgroupParent, "cgroup.procs")); err != nil {
		errs = append(errs, fmt.Errorf("cgroup parent %s is not a cgroup v2 directory: %w", c.CgroupParent, err))
	}
	if !filepath.IsAbs(c.StateDir) {
		errs = append(errs, fmt.Errorf("state dir %q must be an absolute path", c.StateDir))
	}
	if c.ServingCert == "" || c.ServingKey == "" {
		errs = append(errs, errors.New("serving certificate and key are required for the kubelet API"))
	}
	return errors.Join(errs...)
}

// capacity returns cfg.Capacity completed with the machine's resources.
func (c *Config) capacity() corev1.ResourceList {
	out := corev1.ResourceList{}
	for k, v := range c.Capacity {
		out[k] = v.DeepCopy()
	}
	if _, ok := out[corev1.ResourceCPU]; !ok {
		out[corev1.ResourceCPU] = *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI)
	}
	if _, ok := out[corev1.ResourceMemory]; !ok {
		if mem, err := memTotal(); err == nil {
			out[corev1.ResourceMemory] = *resource.NewQuantity(mem, resource.BinarySI)
		}
	}
	if _, ok := out[corev1.ResourcePods]; !ok {
		out[corev1.ResourcePods] = *resource.NewQuantity(DefaultMaxPods, resource.DecimalSI)
	}
	if _, ok := out[corev1.ResourceEphemeralStorage]; !ok {
		if free, err := freeBytes(c.StateDir); err == nil {
			out[corev1.ResourceEphemeralStorage] = *resource.NewQuantity(free, resource.BinarySI)
		}
	}
	return out
}

// memTotal reads MemTotal from /proc/meminfo, in bytes.
func memTotal() (int64, error) {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 0, err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(sc.Text(), "MemTotal:"); ok {
			kb, err := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(rest), " kB"), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse MemTotal %q: %w", rest, err)
			}
			return kb * 1024, nil
		}
	}
	return 0, errors.New("no MemTotal in /proc/meminfo")
}

// ParseCapacity parses "cpu=2,memory=4Gi,pods=50" into a ResourceList.
func ParseCapacity(s string) (corev1.ResourceList, error) {
	out := corev1.ResourceList{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || k == "" {
			return nil, fmt.Errorf("capacity entry %q: want name=quantity", kv)
		}
		q, err := resource.ParseQuantity(v)
		if err != nil {
			return nil, fmt.Errorf("capacity entry %q: %w", kv, err)
		}
		out[corev1.ResourceName(k)] = q
	}
	return out, nil
}
