// Package cgroupv2 finds where the cgroup v2 hierarchy is mounted.
//
// Current distributions and Kubernetes nodes mount it at /sys/fs/cgroup
// (pure v2); hybrid systems mount cgroup v1 controllers there and v2 at
// /sys/fs/cgroup/unified. Neither is assumed: the mount is read from
// /proc/self/mountinfo (proc(5)), so the agent's default, its DaemonSet and
// the tests find the same directory on either layout. Functions are safe
// for concurrent use.
package cgroupv2

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// ErrNotMounted is returned when no cgroup v2 hierarchy is visible.
var ErrNotMounted = errors.New("no cgroup v2 (cgroup2) mount in mountinfo")

// Mount is a visible cgroup v2 mount.
type Mount struct {
	// Point is the directory the hierarchy is mounted on.
	Point string
	// Root is the cgroup the mount shows at Point ("/" unless a cgroup
	// namespace or a bind mount shows a subtree).
	Root string
}

// Dir returns the directory of cgroup (a path as /proc/PID/cgroup shows
// it, e.g. "/system.slice/x.service") under m.
func (m Mount) Dir(cgroup string) (string, error) {
	c := path.Clean("/" + cgroup)
	switch {
	case m.Root == "/":
		return path.Join(m.Point, c), nil
	case c == m.Root || strings.HasPrefix(c, m.Root+"/"):
		return path.Join(m.Point, strings.TrimPrefix(c, m.Root)), nil
	}
	return "", fmt.Errorf("cgroup %s is outside the cgroup v2 mount at %s (which shows %s)", cgroup, m.Point, m.Root)
}

// Find returns this process's cgroup v2 mount, read from
// /proc/self/mountinfo and confirmed with statfs.
func Find() (Mount, error) {
	return FindIn("/proc/self/mountinfo")
}

// FindIn is Find reading the mountinfo table at file (a fixture in tests).
// A candidate whose directory is not a cgroup2 filesystem on this machine
// (as a fixture's may not be) is still returned when it is the only one.
func FindIn(file string) (Mount, error) {
	f, err := os.Open(file)
	if err != nil {
		return Mount{}, fmt.Errorf("find cgroup v2 mount: %w", err)
	}
	defer f.Close()
	mounts, err := Parse(f)
	if err != nil {
		return Mount{}, fmt.Errorf("find cgroup v2 mount in %s: %w", file, err)
	}
	for _, m := range mounts {
		var st unix.Statfs_t
		if unix.Statfs(m.Point, &st) == nil && st.Type == unix.CGROUP2_SUPER_MAGIC {
			return m, nil
		}
	}
	if len(mounts) > 0 {
		return mounts[0], nil
	}
	return Mount{}, ErrNotMounted
}

// Parse reads a mountinfo table and returns its visible cgroup2 mounts,
// best first: /sys/fs/cgroup, then /sys/fs/cgroup/unified, then the others
// in table order. A mount is hidden when a later one is mounted on its
// directory or on a parent of it (a container runtime's own cgroup mount
// under the host's bind-mounted /sys/fs/cgroup). It returns ErrNotMounted
// when none is visible.
func Parse(r io.Reader) ([]Mount, error) {
	var all []entry
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if strings.TrimSpace(line) == "" {
			continue
		}
		// ID PARENT MAJ:MIN ROOT POINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
		fields := strings.Fields(line)
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) {
			return nil, fmt.Errorf("mountinfo line %d: malformed: %q", n, line)
		}
		root, err := unescape(fields[3])
		if err == nil {
			var point string
			point, err = unescape(fields[4])
			all = append(all, entry{point: point, root: root, fstype: fields[sep+1]})
		}
		if err != nil {
			return nil, fmt.Errorf("mountinfo line %d: %w", n, err)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	var visible []Mount
	for i, e := range all {
		if e.fstype != "cgroup2" || hidden(e.point, all[i+1:]) {
			continue
		}
		visible = append(visible, Mount{Point: e.point, Root: e.root})
	}
	if len(visible) == 0 {
		return nil, ErrNotMounted
	}
	rank := func(m Mount) int {
		switch m.Point {
		case "/sys/fs/cgroup":
			return 0
		case "/sys/fs/cgroup/unified":
			return 1
		}
		return 2
	}
	best := make([]Mount, 0, len(visible))
	for r := 0; r <= 2; r++ {
		for _, m := range visible {
			if rank(m) == r {
				best = append(best, m)
			}
		}
	}
	return best, nil
}

// entry is one line of mountinfo.
type entry struct {
	point, root, fstype string
}

// hidden reports whether a mount on point is covered by one of the later
// mounts.
func hidden(point string, later []entry) bool {
	for _, l := range later {
		p := l.point
		if p == point || p == "/" || strings.HasPrefix(point, p+"/") {
			return true
		}
	}
	return false
}

// unescape undoes mountinfo's octal escapes (\040 for a space, \011, \012,
// \134).
func unescape(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		v, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q", s)
		}
		b.WriteByte(byte(v))
		i += 3
	}
	return b.String(), nil
}
