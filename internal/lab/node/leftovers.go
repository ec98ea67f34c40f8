package node

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// cgroupKillTimeout bounds how long removing a cgroup waits for its killed
// processes to be reaped.
const cgroupKillTimeout = 10 * time.Second

// RouteProtocol marks the host-gw routes a lab node installs, so that it
// (and CleanupLeftovers) can tell them from everyone else's.
const RouteProtocol netlink.RouteProtocol = 0xb1

// CleanupLeftovers removes what a killed run left under stateDir: it kills
// the processes in every recorded pod cgroup and removes the cgroups, deletes
// recorded veths and host-gw routes (protocol RouteProtocol) in the calling
// process's network namespace, and removes the per-pod state. Pod network
// namespaces have no name: the kernel frees them once their processes are
// gone. A missing stateDir is not an error.
func CleanupLeftovers(stateDir string) error {
	podsDir := filepath.Join(stateDir, "pods")
	entries, err := os.ReadDir(podsDir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("cleanup leftovers: %w", err)
	}
	var errs []error
	for _, e := range entries {
		dir := filepath.Join(podsDir, e.Name())
		b, err := os.ReadFile(filepath.Join(dir, recordFile))
		if err == nil {
			var rec sandboxRecord
			if err := json.Unmarshal(b, &rec); err != nil {
				errs = append(errs, fmt.Errorf("cleanup leftovers: pod record %s: %w (remove the file by hand)", dir, err))
				continue
			}
			if err := cleanupRecord(rec); err != nil {
				errs = append(errs, fmt.Errorf("cleanup leftovers of pod %s/%s: %w", rec.Namespace, rec.Name, err))
				continue
			}
		} else if !errors.Is(err, os.ErrNotExist) {
			errs = append(errs, fmt.Errorf("cleanup leftovers: %w", err))
			continue
		}
		if err := os.RemoveAll(dir); err != nil {
			errs = append(errs, fmt.Errorf("cleanup leftovers: %w", err))
		}
	}
	if err := deleteOwnRoutes(); err != nil {
		errs = append(errs, fmt.Errorf("cleanup leftovers: %w", err))
	}
	return errors.Join(errs...)
}

func cleanupRecord(rec sandboxRecord) error {
	var errs []error
	if rec.Cgroup != "" {
		// Records come from our own state dir, but never let one point the
		// kill at something that is not a pod cgroup.
		if filepath.Base(rec.Cgroup) != podCgroupName(rec.UID) || !filepath.IsAbs(rec.Cgroup) {
			return fmt.Errorf("record names cgroup %q, not a pod cgroup", rec.Cgroup)
		}
		errs = append(errs, killCgroup(rec.Cgroup, cgroupKillTimeout))
	}
	if rec.Veth != "" && rec.Veth == vethName(rec.UID) {
		if l, err := netlink.LinkByName(rec.Veth); err == nil {
			if err := netlink.LinkDel(l); err != nil && !errors.Is(err, unix.ENODEV) {
				errs = append(errs, fmt.Errorf("delete veth %s: %w", rec.Veth, err))
			}
		}
	}
	return errors.Join(errs...)
}

// deleteOwnRoutes removes every IPv4 route with protocol RouteProtocol from
// the main table.
func deleteOwnRoutes() error {
	routes, err := netlink.RouteListFiltered(netlink.FAMILY_V4, &netlink.Route{Protocol: RouteProtocol}, netlink.RT_FILTER_PROTOCOL)
	if err != nil {
		return fmt.Errorf("list host-gw routes: %w", err)
	}
	var errs []error
	for _, r := range routes {
		if err := netlink.RouteDel(&r); err != nil && !errors.Is(err, unix.ESRCH) {
			errs = append(errs, fmt.Errorf("delete route %s: %w", r.Dst, err))
		}
	}
	return errors.Join(errs...)
}
