// Command coredns is CoreDNS, built from the Go module proxy at the version
// pinned in this directory's go.mod (see build.sh), with the plugins a
// cluster's DNS needs: kubernetes (cluster.local, and clusterset.local
// through its multicluster option), bind, forward, cache,
// loadbalance, errors, log, health, ready, and what deploy/coredns/Corefile
// adds (prometheus, loop, reload). Plugins outside this set are left out to
// keep the build short.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
)

func main() { coremain.Run() }
