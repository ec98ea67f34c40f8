package main

import (
	"bytes"
	"strings"
	"testing"
)

// TestInvalidFlagsFailWithOneLine runs braid-operator with an invalid value
// for each flag that takes a duration, ID, CIDR or level: a one-line error
// naming the flag, before any I/O, and no panic.
func TestInvalidFlagsFailWithOneLine(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"--lease-ttl", "-5s"}, "--lease-ttl"},
		{[]string{"--lease-ttl", "2ns"}, "--lease-ttl"},
		{[]string{"--lease-ttl", "0s"}, "--lease-ttl"},
		{[]string{"--lease-ttl", "87600h"}, "--lease-ttl"},
		{[]string{"--lease-ttl", "forever"}, "invalid argument"},
		{[]string{"--cluster-id", "0"}, "--cluster-id"},
		{[]string{"--cluster-id", "512"}, "--cluster-id"},
		{[]string{"--cluster-id", "65536"}, "invalid argument"},
		{[]string{"--pod-cidr", "10.1.0.0/33"}, "--pod-cidr"},
		{[]string{"--pod-cidr", "10.1.0.1/16"}, "host bits"},
		{[]string{"--pod-cidr", "0.0.0.0/0"}, "covers every address"},
		{[]string{"--pod-cidr", "::/0"}, "covers every address"},
		{[]string{"--pod-cidr", "10.1.0.0/16", "--service-cidr", "10.1.128.0/20"}, "overlaps service CIDR"},
		{[]string{"--service-cidr", "banana"}, "--service-cidr"},
		{[]string{"--log-level", "loud"}, "--log-level"},
		{[]string{"--default-deny=maybe"}, "invalid argument"},
		{[]string{}, "--join is required"},
		{[]string{"--join", "/nonexistent/join.json"}, "/nonexistent/join.json"},
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
