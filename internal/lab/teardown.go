package lab

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// teardown removes everything p names, whatever state it is in: it is what
// Close does after stopping the processes, and what Cleanup does after a
// killed run. Absent things are skipped.
func teardown(p *Plan) error {
	var errs []error
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			if exists("/run/netns/" + n.Netns) {
				killNetnsPids(n.Netns)
			}
		}
	}
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			if exists(nodeStateDir(&n)) {
				if err := cleanupNode(nodeStateDir(&n)); err != nil {
					errs = append(errs, fmt.Errorf("clean up node %s: %w", n.Name, err))
				}
			}
		}
	}
	if err := removeCgroup(p.CgroupRoot); err != nil {
		errs = append(errs, err)
	}
	for _, c := range p.Clusters {
		for _, n := range c.Nodes {
			if exists("/run/netns/" + n.Netns) {
				if err := ip("netns", "del", n.Netns); err != nil {
					errs = append(errs, err)
				}
			}
			if err := delLink(n.HostVeth); err != nil {
				errs = append(errs, err)
			}
			sock := filepath.Join("/var/run/wireguard", n.WireGuard+".sock")
			if err := os.Remove(sock); err != nil && !errors.Is(err, os.ErrNotExist) {
				errs = append(errs, fmt.Errorf("remove %s: %w", sock, err))
			}
		}
	}
	if err := removeOutside(p); err != nil {
		errs = append(errs, err)
	}
	if err := delLink(p.Bridge); err != nil {
		errs = append(errs, err)
	}
	if p.PinRoot != "" && strings.HasPrefix(p.PinRoot, "/sys/fs/bpf/braid-lab-") {
		if err := os.RemoveAll(p.PinRoot); err != nil {
			errs = append(errs, fmt.Errorf("remove pinned objects %s: %w", p.PinRoot, err))
		}
	}
	if err := os.RemoveAll(p.Dir); err != nil {
		errs = append(errs, fmt.Errorf("remove %s: %w", p.Dir, err))
	}
	return errors.Join(errs...)
}

// killNetnsPids kills every process in the named network namespace.
func killNetnsPids(ns string) {
	out, err := exec.Command("ip", "netns", "pids", ns).Output()
	if err != nil {
		return
	}
	for _, f := range strings.Fields(string(out)) {
		if pid, err := strconv.Atoi(f); err == nil && pid > 0 && pid != os.Getpid() {
			_ = syscall.Kill(pid, syscall.SIGKILL)
		}
	}
}

// delLink deletes a host interface; one that is gone (deleting a namespace
// reaps the veths in it, asynchronously) is not an error.
func delLink(name string) error {
	if !linkExists(name) {
		return nil
	}
	if err := ip("link", "del", name); err != nil && linkExists(name) {
		return err
	}
	return nil
}
