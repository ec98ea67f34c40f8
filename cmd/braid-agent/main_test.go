package main

import (
	"bytes"
	"errors"
	"strings"
	"testing"

	"github.com/braidmesh/braid/internal/cgroupv2"
)

// TestInvalidFlagsFailWithOneLine runs braid-agent with an invalid value
// for each flag that takes a duration, port, address, CIDR or level: a
// one-line error naming the flag, before any I/O, and no panic.
func TestInvalidFlagsFailWithOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--wireguard-port", "0"}, "--wireguard-port"},
		{[]string{"--wireguard-port", "70000"}, "--wireguard-port"},
		{[]string{"--wireguard-port", "-1"}, "--wireguard-port"},
		{[]string{"--key-rotation", "-1h"}, "--key-rotation"},
		{[]string{"--key-rotation", "1ns"}, "--key-rotation"},
		{[]string{"--key-rotation", "weekly"}, "invalid argument"},
		{[]string{"--strict-cidr", "10.0.0.0"}, "--strict-cidr"},
		{[]string{"--strict-cidr", "10.0.0.1/8"}, "host bits"},
		{[]string{"--node-ip", "10.0.0.300"}, "--node-ip"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--wireguard=sometimes"}, "invalid argument"},
		{[]string{"--node", "n1"}, "--join is required"},
		{[]string{"--join", "/nonexistent/join.json"}, "--node is required"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			cmd := command()
			var out bytes.Buffer
			cmd.SetOut(&out)
			cmd.SetErr(&out)
			cmd.SetArgs(tc.args)
			err := cmd.ExecuteContext(t.Context())
			if err == nil {
				t.Fatal("no error")
			}
			if msg := err.Error(); strings.Contains(msg, "\n") || !strings.Contains(msg, tc.want) {
				t.Fatalf("error %q: want one line containing %q", msg, tc.want)
			}
		})
	}
}

// TestCgroupDefault resolves the default --cgroup against mountinfo
// fixtures of a pure cgroup v2 node, a hybrid one and one without v2.
func TestCgroupDefault(t *testing.T) {
	const fixtures = "../../internal/cgroupv2/testdata/"
	for _, tc := range []struct {
		flag, mountinfo, want string
	}{
		{autoCgroup, fixtures + "purev2.mountinfo", "/sys/fs/cgroup"},
		{autoCgroup, fixtures + "hybrid.mountinfo", "/sys/fs/cgroup/unified"},
		{autoCgroup, fixtures + "container.mountinfo", "/sys/fs/cgroup"},
		{"/custom", fixtures + "v1only.mountinfo", "/custom"},
		{"", fixtures + "v1only.mountinfo", ""},
	} {
		got, err := cgroupDir(tc.flag, tc.mountinfo)
		if err != nil || got != tc.want {
			t.Errorf("cgroupDir(%q, %s) = %q, %v; want %q", tc.flag, tc.mountinfo, got, err, tc.want)
		}
	}
	if _, err := cgroupDir(autoCgroup, fixtures+"v1only.mountinfo"); !errors.Is(err, cgroupv2.ErrNotMounted) {
		t.Errorf("cgroupDir(auto) without cgroup v2 = %v, want ErrNotMounted", err)
	}
}
