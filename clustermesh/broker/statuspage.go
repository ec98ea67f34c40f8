package broker

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/braidmesh/braid/clustermesh/status"
	"github.com/braidmesh/braid/kvstore/etcd"
)

// listenStatus binds the status page's address, serving TLS with the
// broker's server certificate when StatusClientCerts asks for client
// certificates.
func (b *Broker) listenStatus(pki *PKI) (net.Listener, status.PageServer, error) {
	ps := status.PageServer{Addr: b.cfg.StatusAddr, BearerToken: b.cfg.StatusToken}
	if b.cfg.StatusClientCerts {
		leaf, err := tls.LoadX509KeyPair(pki.CertFile, pki.KeyFile)
		if err != nil {
			return nil, ps, fmt.Errorf("status page: %w", err)
		}
		pool := x509.NewCertPool()
		pool.AddCert(pki.caCert)
		ps.TLS = &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{leaf},
			ClientAuth: tls.RequireAndVerifyClientCert, ClientCAs: pool}
	}
	ln, err := ps.Listen()
	return ln, ps, err
}

// serveStatus serves the whole mesh's page on ln until ctx is done.
func (b *Broker) serveStatus(ctx context.Context, ln net.Listener, ps status.PageServer, admin *clientv3.Client) error {
	store := etcd.NewFromClient(admin)
	defer store.Close()
	w := status.NewMeshWatcher(status.MeshConfig{Source: "broker", Logger: b.log.With("component", "status")}, store)
	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "braid_mesh_clusters", Help: "Clusters registered in the mesh."},
		func() float64 { return float64(len(w.Mesh().Clusters)) }))
	reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: "braid_mesh_global_services", Help: "Global services in the mesh."},
		func() float64 { return float64(len(w.Mesh().Services)) }))
	errc := make(chan error, 1)
	go func() { errc <- w.Run(ctx) }()
	err := ps.Serve(ctx, ln, status.MeshHandler(w, promhttp.HandlerFor(reg, promhttp.HandlerOpts{})))
	<-errc
	return err
}

// StatusURL is the base URL of the broker's status page once Run bound
// it; empty without one.
func (b *Broker) StatusURL() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.statusAddr == "" {
		return ""
	}
	scheme := "http"
	if b.cfg.StatusClientCerts {
		scheme = "https"
	}
	return scheme + "://" + b.statusAddr
}
