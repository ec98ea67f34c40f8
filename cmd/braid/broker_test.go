package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/braidmesh/braid/cmd/braid/cli"
)

// TestBrokerCommandsNameTheFix: bad input to the broker commands fails with
// an error that says what is wrong and what to do, before touching etcd.
func TestBrokerCommandsNameTheFix(t *testing.T) {
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"broker", "add-cluster", "East_1", "--data-dir", t.TempDir()}, "must be a DNS label"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--data-dir", t.TempDir()}, "is --data-dir the broker's?"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--etcd-ca", "/nonexistent/ca.crt"}, "--etcd-ca"},
		{[]string{"broker", "enable-auth"}, "enable-auth is for an external etcd"},
	}
	for _, tc := range cases {
		var out, errOut bytes.Buffer
		root := cli.NewRoot(&out, &errOut)
		root.AddCommand(brokerCommand())
		if code := cli.Run(t.Context(), root, tc.args); code != 1 {
			t.Errorf("%v: exit %d, want 1", tc.args, code)
		}
		if !strings.Contains(errOut.String(), tc.want) {
			t.Errorf("%v: stderr %q does not contain %q", tc.args, errOut.String(), tc.want)
		}
	}
}
