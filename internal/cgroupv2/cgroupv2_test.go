package cgroupv2

import (
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/braidmesh/braid/internal/testenv"
)

func TestParseFixtures(t *testing.T) {
	for _, tc := range []struct {
		file string
		want string // first mount's point; "" means ErrNotMounted
	}{
		{"purev2.mountinfo", "/sys/fs/cgroup"},
		{"hybrid.mountinfo", "/sys/fs/cgroup/unified"},
		{"container.mountinfo", "/sys/fs/cgroup"},
		{"escaped.mountinfo", "/mnt/cgroup v2"},
		{"v1only.mountinfo", ""},
	} {
		t.Run(tc.file, func(t *testing.T) {
			f, err := os.Open(filepath.Join("testdata", tc.file))
			if err != nil {
				t.Fatal(err)
			}
			defer f.Close()
			ms, err := Parse(f)
			if tc.want == "" {
				if !errors.Is(err, ErrNotMounted) {
					t.Fatalf("Parse = %v, %v; want ErrNotMounted", ms, err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if ms[0].Point != tc.want || ms[0].Root != "/" {
				t.Fatalf("Parse = %+v, want %s with root /", ms, tc.want)
			}
		})
	}
}

// TestContainerHidesRuntimeMount checks the pod case closely: the
// runtime's own cgroup mount, covered by the host's, is not returned.
func TestContainerHidesRuntimeMount(t *testing.T) {
	f, err := os.Open("testdata/container.mountinfo")
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	ms, err := Parse(f)
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) != 1 {
		t.Fatalf("Parse = %+v, want only the host's mount", ms)
	}
}

// TestFindInFixture points the lookup at a fixture, as on a machine with
// only one layout: the pure v2 fixture gives /sys/fs/cgroup even where
// /sys/fs/cgroup is not cgroup2, since it is the only candidate.
func TestFindInFixture(t *testing.T) {
	m, err := FindIn("testdata/purev2.mountinfo")
	if err != nil || m.Point != "/sys/fs/cgroup" {
		t.Fatalf("FindIn(purev2) = %+v, %v; want /sys/fs/cgroup", m, err)
	}
	m, err = FindIn("testdata/hybrid.mountinfo")
	if err != nil || m.Point != "/sys/fs/cgroup/unified" {
		t.Fatalf("FindIn(hybrid) = %+v, %v; want /sys/fs/cgroup/unified", m, err)
	}
	if _, err := FindIn("testdata/v1only.mountinfo"); !errors.Is(err, ErrNotMounted) {
		t.Fatalf("FindIn(v1only) = %v, want ErrNotMounted", err)
	}
}

func TestParseRejectsMalformed(t *testing.T) {
	for _, in := range []string{
		"24 1 259:2 / / rw,relatime shared:1 ext4 /dev/x rw\n", // no separator
		"24 1 259:2 / /a\\04 rw - cgroup2 none rw\n",           // short escape
		"24 1 259:2 / /a rw -\n",                               // no fstype
	} {
		if _, err := Parse(strings.NewReader(in)); err == nil || errors.Is(err, ErrNotMounted) {
			t.Errorf("Parse(%q) = %v, want a parse error", in, err)
		}
	}
}

func TestDir(t *testing.T) {
	for _, tc := range []struct {
		m      Mount
		cgroup string
		want   string
	}{
		{Mount{"/sys/fs/cgroup", "/"}, "/system.slice/a.service", "/sys/fs/cgroup/system.slice/a.service"},
		{Mount{"/sys/fs/cgroup/unified", "/"}, "/", "/sys/fs/cgroup/unified"},
		{Mount{"/sys/fs/cgroup", "/kubepods"}, "/kubepods/pod1", "/sys/fs/cgroup/pod1"},
		{Mount{"/sys/fs/cgroup", "/kubepods"}, "/kubepodsX", ""},
	} {
		got, err := tc.m.Dir(tc.cgroup)
		if (err != nil) != (tc.want == "") || got != tc.want {
			t.Errorf("%+v.Dir(%q) = %q, %v; want %q", tc.m, tc.cgroup, got, err, tc.want)
		}
	}
}

// TestFindHere checks the live lookup returns a real cgroup2 directory.
func TestFindHere(t *testing.T) {
	m, err := Find()
	if errors.Is(err, ErrNotMounted) {
		testenv.Skipf(t, "no cgroup v2 mounted on this machine")
	}
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(m.Point, &st); err != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Fatalf("Find = %+v, which is not a cgroup2 filesystem (%v)", m, err)
	}
	t.Logf("cgroup v2 at %s", m.Point)
}
