package operator

import (
	"context"
	"net"
	"net/http"
	"sync"

	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/braidmesh/braid/clustermesh/status"
)

// MeshPagePath is where the operator serves the mesh page, as its cluster
// sees the mesh (status.MeshHandler under this prefix).
const MeshPagePath = "/mesh/"

// serveStatus serves the operator's status page, /api/status and
// /metrics, plus the live mesh page under MeshPagePath, on ln until ctx is
// done.
func (o *Operator) serveStatus(ctx context.Context, ln net.Listener) error {
	w := status.NewMeshWatcher(status.MeshConfig{Source: "operator", View: o.cfg.Cluster.Name, Logger: o.log.With("component", "meshpage")}, o.store)
	var wg sync.WaitGroup
	defer wg.Wait()
	wg.Add(1)
	go func() {
		defer wg.Done()
		_ = w.Run(ctx)
	}()
	mux := http.NewServeMux()
	mux.Handle(MeshPagePath, http.StripPrefix(MeshPagePath[:len(MeshPagePath)-1], status.MeshHandler(w, nil)))
	mux.Handle("/metrics", promhttp.HandlerFor(o.reg, promhttp.HandlerOpts{}))
	mux.Handle("/", status.Handler(o))
	return status.PageServer{Addr: ln.Addr().String()}.Serve(ctx, ln, mux)
}
