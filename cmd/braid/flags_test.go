package main

import (
	"bytes"
	"strings"
	"testing"

	"github.com/braidmesh/braid/cmd/braid/bench"
	"github.com/braidmesh/braid/cmd/braid/cli"
	"github.com/braidmesh/braid/cmd/braid/demo"
	"github.com/braidmesh/braid/cmd/braid/meshsim"
)

// TestEveryCommandRefusesInvalidFlags runs each braid command with an
// invalid value for each of its flags that takes a duration, count, CIDR,
// URL or level: it must fail with a one-line error naming the problem,
// before any I/O, and never panic.
func TestEveryCommandRefusesInvalidFlags(t *testing.T) {
	dir := t.TempDir()
	cases := []struct {
		args []string
		want string
	}{
		{[]string{"status", "--timeout", "-1s"}, "--timeout"},
		{[]string{"status", "--timeout", "0"}, "--timeout"},
		{[]string{"status", "--timeout", "soon"}, "invalid argument"},
		{[]string{"status", "--url", "127.0.0.1:9876"}, "--url"},
		{[]string{"broker", "--log-level", "loud", "--data-dir", dir}, "--log-level"},
		{[]string{"broker", "--listen", "http://127.0.0.1:2379", "--data-dir", dir}, "want https://host:port"},
		{[]string{"broker", "--listen-peer", "https://127.0.0.1", "--data-dir", dir}, "want https://host:port"},
		{[]string{"broker", "add-cluster", "east", "--data-dir", dir}, "cluster ID 0"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "512", "--data-dir", dir}, "cluster ID 512"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "70000", "--data-dir", dir}, "invalid argument"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "-1", "--data-dir", dir}, "invalid argument"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--pod-cidr", "10.0.0.0", "--data-dir", dir}, "--pod-cidr"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--pod-cidr", "10.0.0.1/16", "--data-dir", dir}, "host bits"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--pod-cidr", "0.0.0.0/0", "--data-dir", dir}, "covers every address"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--pod-cidr", "10.1.0.0/16", "--service-cidr", "10.1.2.0/24", "--data-dir", dir}, "overlaps service CIDR"},
		{[]string{"broker", "add-cluster", "east", "--cluster-id", "1", "--service-cidr", "fd00::/300", "--data-dir", dir}, "--service-cidr"},
		{[]string{"broker", "remove-cluster", "East_1", "--data-dir", dir}, "must be a DNS label"},
		{[]string{"demo", "--lease-ttl", "-5s"}, "lease TTL"},
		{[]string{"demo", "--lease-ttl", "2ns"}, "lease TTL"},
		{[]string{"demo", "--lease-ttl", "87600h"}, "lease TTL"},
		{[]string{"demo", "--hold", "-1s"}, "--hold"},
		{[]string{"bench", "propagation", "--changes", "0"}, "--changes"},
		{[]string{"bench", "propagation", "--changes", "many"}, "invalid argument"},
		{[]string{"bench", "cold-sync", "--clusters", "0"}, "--clusters"},
		{[]string{"bench", "cold-sync", "--clusters", "100000"}, "--clusters"},
		{[]string{"bench", "cold-sync", "--nodes", "-3"}, "--nodes"},
		{[]string{"bench", "cold-sync", "--pods-per-node", "0"}, "--pods-per-node"},
		{[]string{"bench", "cold-sync", "--services", "0"}, "--services"},
		{[]string{"bench", "consume", "--mode", "fast", "--join", "/nonexistent"}, ""},
		{[]string{"broker", "--metrics-listen", "127.0.0.1:2381", "--data-dir", dir}, "--metrics-listen"},
		{[]string{"sim", "--clusters", "1"}, "--clusters"},
		{[]string{"sim", "--clusters", "512"}, "--clusters"},
		{[]string{"sim", "--clusters", "many"}, "invalid argument"},
		{[]string{"sim", "--nodes", "0"}, "--nodes"},
		{[]string{"sim", "--nodes", "251"}, "--nodes"},
		{[]string{"sim", "--nodes", "20", "--endpoints", "30"}, "--endpoints"},
		{[]string{"sim", "--nodes", "20", "--endpoints", "0"}, "--endpoints"},
		{[]string{"sim", "--clusters", "511", "--nodes", "250", "--endpoints", "250"}, "do not fit"},
		{[]string{"sim", "--rate", "-1"}, "--rate"},
		{[]string{"sim", "--rate", "1e9"}, "--rate"},
		{[]string{"sim", "--duration", "0"}, "--duration"},
		{[]string{"sim", "--duration", "-5s"}, "--duration"},
		{[]string{"sim", "--mix", "flap"}, "--mix"},
		{[]string{"sim", "--mix", "flap=0,join=0"}, "every weight is zero"},
		{[]string{"sim", "--mix", "flap=1,explode=2"}, "unknown kind"},
		{[]string{"sim", "--mix", "flap=-1"}, "--mix"},
		{[]string{"sim", "--consumer-clusters", "0"}, "--consumer-clusters"},
		{[]string{"sim", "--clusters", "5", "--consumer-clusters", "6"}, "--consumer-clusters"},
		{[]string{"sim", "--consumers-per-cluster", "0"}, "--consumers-per-cluster"},
		{[]string{"sim", "--consumers-via", "carrier-pigeon"}, "--consumers-via"},
		{[]string{"sim", "--service-layout", "sideways"}, "--service-layout"},
		{[]string{"sim", "--lease-ttl", "1ms"}, "--lease-ttl"},
		{[]string{"sim", "--raw-rate", "-2"}, "--raw-rate"},
		{[]string{"sim", "--timeout", "0"}, "--timeout"},
		{[]string{"sim", "--broker", "http://127.0.0.1:2379"}, "--broker"},
		{[]string{"sim", "--broker", "https://127.0.0.1:2379"}, "--broker-ca"},
		{[]string{"sim", "consume", "--consumers", "0"}, "--consumers"},
	}
	for _, tc := range cases {
		t.Run(strings.Join(tc.args, " "), func(t *testing.T) {
			var out, errOut bytes.Buffer
			root := cli.NewRoot(&out, &errOut)
			root.AddCommand(brokerCommand(), demo.Command(), bench.Command(), meshsim.Command())
			if code := cli.Run(t.Context(), root, tc.args); code != 1 {
				t.Fatalf("exit %d, want 1; stderr %q", code, errOut.String())
			}
			msg := strings.TrimSuffix(errOut.String(), "\n")
			if strings.Contains(msg, "\n") || msg == "" {
				t.Errorf("error is not one line: %q", msg)
			}
			if !strings.Contains(msg, tc.want) {
				t.Errorf("error %q does not contain %q", msg, tc.want)
			}
		})
	}
}
