package k8s

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"fmt"
	"hash/fnv"
	"math/big"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	networkingv1 "k8s.io/api/networking/v1"
	"k8s.io/apimachinery/pkg/api/equality"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	mcsv1beta1 "sigs.k8s.io/mcs-api/pkg/apis/v1beta1"

	"github.com/braidmesh/braid/clustermesh"
)

// Names the Source gives to what backs a ServiceImport.
const (
	// AnnotationDerivedService, on a ServiceImport, names the derived
	// Service that holds its ClusterSetIPs (the convention of the MCS API's
	// reference implementation).
	AnnotationDerivedService = "multicluster.kubernetes.io/derived-service"
	// ImportManagedBy is the endpointslice.kubernetes.io/managed-by value of
	// the EndpointSlices of ServiceImports: one set per exporting cluster,
	// labelled multicluster.kubernetes.io/service-name and
	// multicluster.kubernetes.io/source-cluster.
	ImportManagedBy = "mcs.braid.dev"
	// ClusterSetServiceCIDR is the name of the networking.k8s.io ServiceCIDR
	// the Source creates for Config.ClusterSetCIDRs, so that derived
	// Services can hold ClusterSetIPs outside the cluster's service range.
	ClusterSetServiceCIDR = "braid-clusterset"
	derivedPrefix         = "derived-"
	// maxAllocAttempts bounds how many taken addresses one pass tries.
	maxAllocAttempts = 16
)

// derivedName is the name of the derived Service of the import name:
// "derived-" and the first 10 characters of the base32 SHA-256 of name,
// as in the MCS API's reference implementation.
func derivedName(name string) string {
	h := sha256.Sum256([]byte(name))
	return derivedPrefix + strings.ToLower(base32.HexEncoding.WithPadding(base32.NoPadding).EncodeToString(h[:]))[:10]
}

// importedKey returns "namespace/import" for a derived Service or an
// import EndpointSlice we own, from its multicluster.kubernetes.io/service-name label.
func importedKey(obj metav1.Object) (string, bool) {
	l := obj.GetLabels()
	name := l[mcsv1beta1.LabelServiceName]
	if name == "" {
		return "", false
	}
	if l[LabelManagedBy] != managedByValue && l[discoveryv1.LabelManagedBy] != ImportManagedBy {
		return "", false
	}
	return obj.GetNamespace() + "/" + name, true
}

// imported is what mesh_to_kube decided about a ClusterSetIP import, for
// kube_to_mesh to publish as the record's Import.
type imported struct {
	derived string
	ports   []clustermesh.ServicePort
	// clusters per port name, as resolution.PortClusters.
	clusters map[string][]clustermesh.ClusterName
}

func (a *imported) equal(b *imported) bool {
	if a == nil || b == nil {
		return a == b
	}
	if a.derived != b.derived || !slices.Equal(a.ports, b.ports) || len(a.clusters) != len(b.clusters) {
		return false
	}
	for k, v := range a.clusters {
		if !slices.Equal(v, b.clusters[k]) {
			return false
		}
	}
	return true
}

// setImported records the import decision for key and, when it changed,
// queues the service for publishing.
func (s *Source) setImported(key string, im *imported) {
	s.localMu.Lock()
	old := s.imported[key]
	if im == nil {
		delete(s.imported, key)
	} else {
		s.imported[key] = im
	}
	s.localMu.Unlock()
	if !old.equal(im) {
		s.markService(key)
	}
}

// keepClusters returns im's clusters per port joined, for the ports im
// has as the previous decision for key had them, with the previous
// clusters: while the remote view is partial, a cluster not yet seen again
// has not stopped exporting. Agents serve a port only from the named
// clusters that do export it, so a cluster kept too long costs nothing.
func (s *Source) keepClusters(key string, im *imported) map[string][]clustermesh.ClusterName {
	s.localMu.Lock()
	old := s.imported[key]
	s.localMu.Unlock()
	if old == nil {
		return im.clusters
	}
	out := make(map[string][]clustermesh.ClusterName, len(im.clusters))
	for _, p := range im.ports {
		cs := slices.Clone(im.clusters[p.Name])
		if slices.Contains(old.ports, p) {
			for _, c := range old.clusters[p.Name] {
				if !slices.Contains(cs, c) {
					cs = append(cs, c)
				}
			}
		}
		if len(cs) > 0 {
			out[p.Name] = cs
		}
	}
	return out
}

// importSpec is the record's Import for key: the derived Service's
// ClusterSetIPs with the import's ports. Called with localMu held.
func (s *Source) importSpec(ns, key string) *clustermesh.ImportSpec {
	im := s.imported[key]
	if im == nil {
		return nil
	}
	d, err := s.services.Services(ns).Get(im.derived)
	if err != nil {
		return nil
	}
	spec := &clustermesh.ImportSpec{Ports: slices.Clone(im.ports), Clusters: map[string][]clustermesh.ClusterName{}}
	for _, ip := range clusterIPs(d) {
		if s.inClusterSet(ip) {
			spec.IPs = append(spec.IPs, ip)
		}
	}
	for k, v := range im.clusters {
		spec.Clusters[k] = slices.Clone(v)
	}
	if len(spec.IPs) == 0 {
		return nil
	}
	return spec
}

func (s *Source) inClusterSet(ip netip.Addr) bool {
	for _, p := range s.cfg.ClusterSetCIDRs {
		if p.Contains(ip) {
			return true
		}
	}
	return false
}

// validateClusterSetCIDRs checks that each clusterset range lies inside the
// cluster's granted service CIDRs (so its agents accept the ClusterSetIPs
// the cluster publishes) and that the ranges do not overlap each other.
func validateClusterSetCIDRs(cc *clustermesh.ClusterConfig, cidrs []netip.Prefix) error {
	for i, p := range cidrs {
		if !p.IsValid() || p.Masked() != p {
			return fmt.Errorf("clusterset CIDR %s: not a masked prefix", p)
		}
		inside := slices.ContainsFunc(cc.ServiceCIDRs, func(s netip.Prefix) bool { return s.Bits() <= p.Bits() && s.Contains(p.Addr()) })
		if !inside {
			return fmt.Errorf("clusterset CIDR %s is not inside cluster %s's service CIDRs %v: carve it from a granted service CIDR, outside the Kubernetes service range", p, cc.Name, cc.ServiceCIDRs)
		}
		for _, q := range cidrs[:i] {
			if p.Overlaps(q) {
				return fmt.Errorf("clusterset CIDRs %s and %s overlap", q, p)
			}
		}
	}
	return nil
}

// ensureClusterSetCIDR creates (or updates) the ServiceCIDR holding the
// clusterset ranges after checking they do not overlap the cluster's own
// service range (the "kubernetes" ServiceCIDR, when readable).
func (s *Source) ensureClusterSetCIDR(ctx context.Context) error {
	if len(s.cfg.ClusterSetCIDRs) == 0 {
		return nil
	}
	client := s.clients.Kube.NetworkingV1().ServiceCIDRs()
	if def, err := client.Get(ctx, "kubernetes", metav1.GetOptions{}); err == nil {
		for _, c := range def.Spec.CIDRs {
			kp, err := netip.ParsePrefix(c)
			if err != nil {
				continue
			}
			for _, p := range s.cfg.ClusterSetCIDRs {
				if p.Overlaps(kp) {
					return fmt.Errorf("clusterset CIDR %s overlaps the cluster's service CIDR %s: choose a range outside --service-cluster-ip-range", p, kp)
				}
			}
		}
	}
	var want []string
	for _, p := range s.cfg.ClusterSetCIDRs {
		want = append(want, p.String())
	}
	have, err := client.Get(ctx, ClusterSetServiceCIDR, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		_, err = client.Create(ctx, &networkingv1.ServiceCIDR{
			ObjectMeta: metav1.ObjectMeta{Name: ClusterSetServiceCIDR, Labels: map[string]string{LabelManagedBy: managedByValue}},
			Spec:       networkingv1.ServiceCIDRSpec{CIDRs: want},
		}, metav1.CreateOptions{})
		if err != nil && !apierrors.IsAlreadyExists(err) {
			return fmt.Errorf("create ServiceCIDR %s: %w", ClusterSetServiceCIDR, err)
		}
		return nil
	case err != nil:
		return fmt.Errorf("get ServiceCIDR %s: %w", ClusterSetServiceCIDR, err)
	case !slices.Equal(have.Spec.CIDRs, want):
		return fmt.Errorf("ServiceCIDR %s holds %v, not the configured clusterset CIDRs %v (its CIDRs are immutable: delete it once no derived Service uses it)",
			ClusterSetServiceCIDR, have.Spec.CIDRs, want)
	}
	return nil
}

// families picks the import's IP families: the oldest export's families
// that a clusterset range serves, else every family the ranges serve.
func (s *Source) families(exported []string) []corev1.IPFamily {
	served := func(f corev1.IPFamily) bool {
		return slices.ContainsFunc(s.cfg.ClusterSetCIDRs, func(p netip.Prefix) bool { return p.Addr().Is4() == (f == corev1.IPv4Protocol) })
	}
	var out []corev1.IPFamily
	for _, f := range exported {
		if served(corev1.IPFamily(f)) && !slices.Contains(out, corev1.IPFamily(f)) {
			out = append(out, corev1.IPFamily(f))
		}
	}
	if len(out) == 0 {
		for _, f := range []corev1.IPFamily{corev1.IPv4Protocol, corev1.IPv6Protocol} {
			if served(f) {
				out = append(out, f)
			}
		}
	}
	return out
}

// candidate returns the n-th address to try for key in the clusterset
// range of family: a hash of key, then the following addresses, skipping
// the range's first and last address.
func (s *Source) candidate(f corev1.IPFamily, key string, n int) (netip.Addr, bool) {
	i := slices.IndexFunc(s.cfg.ClusterSetCIDRs, func(p netip.Prefix) bool { return p.Addr().Is4() == (f == corev1.IPv4Protocol) })
	if i < 0 {
		return netip.Addr{}, false
	}
	p := s.cfg.ClusterSetCIDRs[i]
	hostBits := p.Addr().BitLen() - p.Bits()
	if hostBits < 2 {
		return netip.Addr{}, false
	}
	size := new(big.Int).Lsh(big.NewInt(1), uint(hostBits))
	usable := new(big.Int).Sub(size, big.NewInt(2))
	if usable.Cmp(big.NewInt(int64(n))) <= 0 {
		return netip.Addr{}, false
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	off := new(big.Int).SetUint64(h.Sum64())
	off.Add(off, big.NewInt(int64(n)))
	off.Mod(off, usable)
	off.Add(off, big.NewInt(1))
	base := new(big.Int).SetBytes(p.Addr().AsSlice())
	base.Add(base, off)
	b := base.FillBytes(make([]byte, p.Addr().BitLen()/8))
	a, _ := netip.AddrFromSlice(b)
	return a, true
}

// takenIPs are the ClusterSetIPs of every derived Service in the cache.
func (s *Source) takenIPs() map[netip.Addr]bool {
	out := map[netip.Addr]bool{}
	svcs, err := s.services.List(everything)
	if err != nil {
		return out
	}
	for _, svc := range svcs {
		if _, ok := importedKey(svc); !ok {
			continue
		}
		for _, ip := range clusterIPs(svc) {
			out[ip] = true
		}
	}
	return out
}

// derivedPorts are the ports of a derived Service: the import's.
func derivedPorts(ports []clustermesh.ServicePort) []corev1.ServicePort {
	out := []corev1.ServicePort{}
	for _, p := range ports {
		out = append(out, corev1.ServicePort{Name: p.Name, Protocol: corev1.Protocol(p.Protocol), Port: int32(p.Port), TargetPort: intstr.FromInt32(int32(p.Port))})
	}
	return out
}

// ensureDerived makes the derived Service of ns/name match res: headless
// for a Headless import, else holding one ClusterSetIP per family from the
// clusterset ranges. It returns the Service as it is now, or nil when it
// cannot exist yet (no clusterset range for a ClusterSetIP import).
func (s *Source) ensureDerived(ctx context.Context, ns, name string, res resolution) (*corev1.Service, error) {
	key := ns + "/" + name
	dname := derivedName(name)
	client := s.clients.Kube.CoreV1().Services(ns)
	headless := res.Type == mcsv1beta1.Headless
	ports := derivedPorts(res.Ports)
	if !headless && len(ports) == 0 {
		return nil, nil // a ClusterIP Service needs a port; nothing to serve yet
	}
	have, err := s.services.Services(ns).Get(dname)
	if err != nil && !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get derived service %s/%s: %w", ns, dname, err)
	}
	if err != nil {
		have = nil
	}
	if have != nil {
		if _, ours := importedKey(have); !ours {
			return nil, fmt.Errorf("service %s/%s exists and is not braid's: the import %s cannot have its derived service (rename or delete it)", ns, dname, key)
		}
		if (have.Spec.ClusterIP == corev1.ClusterIPNone) != headless {
			// ClusterIPs are immutable: replace the Service.
			err := client.Delete(ctx, dname, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &have.UID}})
			s.metrics.writes.WithLabelValues("services", "delete").Inc()
			if err != nil && !apierrors.IsNotFound(err) {
				return nil, fmt.Errorf("replace derived service %s/%s: %w", ns, dname, err)
			}
			return nil, nil // recreated once the cache has seen the deletion
		}
		if equality.Semantic.DeepEqual(have.Spec.Ports, ports) || len(ports) == 0 && len(have.Spec.Ports) == 0 {
			return have, nil
		}
		upd := have.DeepCopy()
		upd.Spec.Ports = ports
		got, err := client.Update(ctx, upd, metav1.UpdateOptions{})
		s.metrics.writes.WithLabelValues("services", "update").Inc()
		if apierrors.IsConflict(err) || apierrors.IsNotFound(err) {
			return have, nil
		}
		if err != nil {
			return nil, fmt.Errorf("update derived service %s/%s: %w", ns, dname, err)
		}
		return got, nil
	}
	svc := &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{
			Name: dname, Namespace: ns,
			Labels:      map[string]string{LabelManagedBy: managedByValue, mcsv1beta1.LabelServiceName: name},
			Annotations: map[string]string{AnnotationDerivedService: key},
		},
		Spec: corev1.ServiceSpec{Type: corev1.ServiceTypeClusterIP, Ports: ports},
	}
	if headless {
		svc.Spec.ClusterIP = corev1.ClusterIPNone
		got, err := client.Create(ctx, svc, metav1.CreateOptions{})
		s.metrics.writes.WithLabelValues("services", "create").Inc()
		if apierrors.IsAlreadyExists(err) {
			return nil, nil
		}
		if err != nil {
			return nil, fmt.Errorf("create derived service %s/%s: %w", ns, dname, err)
		}
		return got, nil
	}
	fams := s.families(res.Export.IPFamilies)
	if len(fams) == 0 {
		return nil, nil // no clusterset range: Status names the fix
	}
	taken := s.takenIPs()
	policy := corev1.IPFamilyPolicySingleStack
	if len(fams) == 2 {
		policy = corev1.IPFamilyPolicyRequireDualStack
	}
	svc.Spec.IPFamilies, svc.Spec.IPFamilyPolicy = fams, &policy
	next := make([]int, len(fams))
	for attempt := 0; attempt < maxAllocAttempts; attempt++ {
		var ips []string
		for i, f := range fams {
			for {
				ip, ok := s.candidate(f, key, next[i])
				if !ok {
					return nil, fmt.Errorf("import %s: the clusterset range of %s is full", key, f)
				}
				if !taken[ip] {
					ips = append(ips, ip.String())
					break
				}
				next[i]++
			}
		}
		svc.Spec.ClusterIP, svc.Spec.ClusterIPs = ips[0], ips
		got, err := client.Create(ctx, svc, metav1.CreateOptions{})
		s.metrics.writes.WithLabelValues("services", "create").Inc()
		if err == nil {
			return got, nil
		}
		if apierrors.IsAlreadyExists(err) {
			return nil, nil
		}
		if !apierrors.IsInvalid(err) || !strings.Contains(err.Error(), "allocated") {
			return nil, fmt.Errorf("create derived service %s/%s with ClusterSetIPs %v: %w", ns, dname, ips, err)
		}
		// Someone holds one of the addresses: mark both taken, try further.
		for i, a := range ips {
			if ip, err := netip.ParseAddr(a); err == nil {
				taken[ip] = true
			}
			next[i]++
		}
	}
	return nil, fmt.Errorf("import %s: %d ClusterSetIPs in a row were already allocated", key, maxAllocAttempts)
}

// deleteDerived deletes the derived Service of ns/name if it is ours.
func (s *Source) deleteDerived(ctx context.Context, ns, name string) error {
	dname := derivedName(name)
	have, err := s.services.Services(ns).Get(dname)
	if err != nil {
		return nil
	}
	if _, ours := importedKey(have); !ours {
		return nil
	}
	err = s.clients.Kube.CoreV1().Services(ns).Delete(ctx, dname, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &have.UID}})
	s.metrics.writes.WithLabelValues("services", "delete").Inc()
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		return fmt.Errorf("delete derived service %s/%s: %w", ns, dname, err)
	}
	return nil
}
