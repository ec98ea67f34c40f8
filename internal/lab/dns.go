package lab

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// CoreDNSReadyPort is where each cluster's CoreDNS serves /ready, on its
// DNS address.
const CoreDNSReadyPort = 8181

// halves splits a service CIDR in two: the Kubernetes service range and
// the clusterset range.
func halves(p netip.Prefix) (netip.Prefix, netip.Prefix) {
	lo := netip.PrefixFrom(p.Addr(), p.Bits()+1)
	b := p.Addr().AsSlice()
	bit := p.Bits() // the first host bit, set in the upper half
	b[bit/8] |= 0x80 >> (bit % 8)
	hi, _ := netip.AddrFromSlice(b)
	return lo, netip.PrefixFrom(hi, p.Bits()+1)
}

// corefile is the cluster's CoreDNS configuration: the kubernetes plugin
// answers cluster.local from Services and EndpointSlices and, with its
// multicluster option, clusterset.local from ServiceImports and the
// EndpointSlices labelled multicluster.kubernetes.io/service-name. TTLs are
// one second, so names follow exports closely; nothing is forwarded (the
// lab reaches no other network).
func corefile(addr netip.Addr, kubeconfig string) string {
	return fmt.Sprintf(`.:53 {
    bind %[1]s
    errors
    ready %[1]s:%[3]d
    kubernetes cluster.local clusterset.local in-addr.arpa {
        kubeconfig %[2]s
        multicluster clusterset.local
        pods insecure
        ttl 1
    }
}
`, addr, kubeconfig, CoreDNSReadyPort)
}

// startCoreDNS runs the cluster's CoreDNS in its first node's network
// namespace and waits until it is ready.
func (c *Cluster) startCoreDNS(ctx context.Context) error {
	conf := filepath.Join(c.plan.Dir, "Corefile")
	if err := os.WriteFile(conf, []byte(corefile(c.DNS, c.Kubeconfig)), 0o644); err != nil {
		return fmt.Errorf("cluster %s: write Corefile: %w", c.Name, err)
	}
	n := c.Nodes[0]
	c.coredns = c.lab.newManaged(string(c.Name)+"/coredns", filepath.Join(c.plan.Dir, "coredns.log"), n.inNetns(func() (string, []string) {
		return c.lab.cfg.CoreDNS, []string{"-conf", conf}
	}))
	if err := c.coredns.start(); err != nil {
		return err
	}
	url := "http://" + net.JoinHostPort(c.DNS.String(), strconv.Itoa(CoreDNSReadyPort)) + "/ready"
	ctx, cancel := context.WithTimeout(ctx, ReadyTimeout)
	defer cancel()
	err := c.lab.poll(ctx, func() error {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
		if err != nil {
			return err
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
		defer cancel()
		resp, err := http.DefaultClient.Do(req.WithContext(ctx))
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("%s: %s", url, resp.Status)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("cluster %s: CoreDNS not ready: %w", c.Name, err)
	}
	return nil
}
