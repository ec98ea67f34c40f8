package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/spf13/cobra"
	clientv3 "go.etcd.io/etcd/client/v3"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/intstr"
	discoveryclient "k8s.io/client-go/kubernetes/typed/discovery/v1"
	"k8s.io/client-go/util/retry"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
	"github.com/braidmesh/braid/internal/lab"
)

func benchCommand(dir *string) *cobra.Command {
	cmd := &cobra.Command{Use: "bench", Short: "Benchmarks on a lab"}
	var scales, slices int
	prop := &cobra.Command{
		Use:   "propagation",
		Short: "kubectl scale / EndpointSlice change in one cluster → the other cluster's agents' BPF maps, beside raw etcd put → watch",
		Long: `Starts a lab of two clusters × two nodes. In cluster east, each scale change
takes a Deployment from 1 to 2 replicas (through the apiserver, as kubectl
scale does) and is timed until every agent of west holds the new backend in
its pinned BPF backends map; the Deployment is then scaled back, untimed.
Each EndpointSlice change adds or removes one endpoint of a selector-less
global service in east's EndpointSlice and is timed the same way. Beside
them, raw etcd put → watch event on the broker itself, in the same run.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return benchPropagation(cmd.Context(), cmd.OutOrStdout(), *dir, scales, slices)
		},
	}
	prop.Flags().IntVar(&scales, "scale-changes", 100, "scale changes measured")
	prop.Flags().IntVar(&slices, "slice-changes", 100, "EndpointSlice changes measured")
	cmd.AddCommand(prop)
	return cmd
}

type latencies []time.Duration

func (l latencies) pct(p float64) time.Duration {
	s := slices.Clone(l)
	slices.Sort(s)
	if len(s) == 0 {
		return 0
	}
	return s[int(p/100*float64(len(s)-1))]
}

func (l latencies) String() string {
	r := func(d time.Duration) string { return fmt.Sprintf("%.2f ms", float64(d.Microseconds())/1000) }
	return fmt.Sprintf("n %d  p50 %s  p90 %s  p99 %s  max %s", len(l), r(l.pct(50)), r(l.pct(90)), r(l.pct(99)), r(l.pct(100)))
}

func benchPropagation(ctx context.Context, out io.Writer, dir string, scales, sliceChanges int) error {
	say := progress(out)
	startLoad := loadAverage()
	l, err := lab.Up(ctx, lab.Config{Clusters: 2, Nodes: 2, Dir: dir, Progress: say})
	if err != nil {
		return err
	}
	defer l.Close()
	east, west := l.Clusters[0], l.Clusters[1]

	// west's agents' backend maps.
	var maps []*ebpf.Map
	for _, n := range west.Nodes {
		m, err := ebpf.LoadPinnedMap(filepath.Join(n.PinDir, "backends"), nil)
		if err != nil {
			return fmt.Errorf("open %s's backends map: %w", n.Name, err)
		}
		defer m.Close()
		maps = append(maps, m)
	}
	// waitCount waits until every map holds want entries; it returns when
	// the last one got there.
	waitCount := func(want int, timeout time.Duration) (time.Time, error) {
		deadline := time.Now().Add(timeout)
		for {
			ok := true
			for _, m := range maps {
				if countEntries(m) != want {
					ok = false
					break
				}
			}
			if ok {
				return time.Now(), nil
			}
			if time.Now().After(deadline) {
				counts := []int{}
				for _, m := range maps {
					counts = append(counts, countEntries(m))
				}
				return time.Time{}, fmt.Errorf("west's backend maps hold %v entries after %v, want %d each", counts, timeout, want)
			}
			time.Sleep(time.Millisecond)
		}
	}

	if err := benchObjects(ctx, east, west); err != nil {
		return err
	}
	if _, err := waitCount(1, 2*time.Minute); err != nil {
		return fmt.Errorf("initial backend: %w", err)
	}
	say("bench service programmed in west's agents; measuring")

	deployments := east.Client.AppsV1().Deployments("default")
	scaleTo := func(n int32) error {
		// As kubectl scale: read the scale, write it back; the controllers
		// write the Deployment too, so retry on conflict.
		return retry.RetryOnConflict(retry.DefaultRetry, func() error {
			s, err := deployments.GetScale(ctx, "bench", metav1.GetOptions{})
			if err != nil {
				return err
			}
			s.Spec.Replicas = n
			_, err = deployments.UpdateScale(ctx, "bench", s, metav1.UpdateOptions{})
			return err
		})
	}
	var scaleLat latencies
	for i := range scales {
		start := time.Now()
		if err := scaleTo(2); err != nil {
			return fmt.Errorf("scale change %d: %w", i, err)
		}
		done, err := waitCount(2, time.Minute)
		if err != nil {
			return fmt.Errorf("scale change %d: %w", i, err)
		}
		scaleLat = append(scaleLat, done.Sub(start))
		if err := scaleTo(1); err != nil {
			return err
		}
		if _, err := waitCount(1, 2*time.Minute); err != nil {
			return fmt.Errorf("scale back %d: %w", i, err)
		}
		if (i+1)%20 == 0 {
			say("%d scale changes: %v", i+1, scaleLat)
		}
	}

	esClient := east.Client.DiscoveryV1().EndpointSlices("default")
	tr, err := startTrace(ctx, l, east, esClient)
	if err != nil {
		return err
	}
	defer tr.close()
	var (
		sliceLat latencies
		stages   = make([]latencies, len(stageNames))
	)
	for i := range sliceChanges {
		es, err := esClient.Get(ctx, "bench-es-1", metav1.GetOptions{})
		if err != nil {
			return err
		}
		want := 1
		if len(es.Endpoints) == 0 {
			ready := true
			addr := fmt.Sprintf("%d.%d.250.%d", east.PodCIDR.Addr().As4()[0], east.PodCIDR.Addr().As4()[1], 1+i%250)
			es.Endpoints = []discoveryv1.Endpoint{{Addresses: []string{addr}, Conditions: discoveryv1.EndpointConditions{Ready: &ready}}}
			want = 2
		} else {
			es.Endpoints = nil
		}
		start := time.Now()
		updated, err := esClient.Update(ctx, es, metav1.UpdateOptions{})
		if err != nil {
			return fmt.Errorf("EndpointSlice change %d: %w", i, err)
		}
		written := time.Now()
		done, err := waitCount(want, time.Minute)
		if err != nil {
			return fmt.Errorf("EndpointSlice change %d: %w", i, err)
		}
		sliceLat = append(sliceLat, done.Sub(start))
		watched, published, err := tr.times(ctx, updated.ResourceVersion, start)
		if err != nil {
			return fmt.Errorf("EndpointSlice change %d: %w", i, err)
		}
		for s, t := range []time.Time{written, watched, published, done} {
			stages[s] = append(stages[s], t.Sub(start))
		}
	}

	raw, err := rawPutWatch(ctx, l, max(scales, sliceChanges))
	if err != nil {
		return err
	}
	fmt.Fprintf(out, "\nscale (apiserver scale → every west agent's BPF map): %v\n", scaleLat)
	fmt.Fprintf(out, "EndpointSlice update → every west agent's BPF map:   %v\n", sliceLat)
	fmt.Fprintf(out, "raw etcd put → watch event on the broker:            %v\n", raw)
	fmt.Fprintf(out, "\nEndpointSlice update, time from the update call until each stage:\n")
	for s, name := range stageNames {
		fmt.Fprintf(out, "  %-60s %v\n", name, stages[s])
	}
	fmt.Fprintf(out, "\nload average: %s at the start, %s at the end\n", startLoad, loadAverage())
	return nil
}

// stageNames are the stages of an EndpointSlice change the bench traces.
var stageNames = []string{
	"apiserver: Update returned",
	"apiserver watch: a watcher in the bench saw the new version",
	"broker: east's service key changed (operator published)",
	"every west agent's BPF map holds it",
}

// loadAverage returns the 1, 5 and 15 minute load averages.
func loadAverage() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "unknown"
	}
	f := strings.Fields(string(b))
	if len(f) < 3 {
		return "unknown"
	}
	return strings.Join(f[:3], " ")
}

// trace follows an EndpointSlice change from outside the processes that
// carry it: a Kubernetes watch of the EndpointSlice (what the operator's
// informer sees) and an etcd watch of the published service key on the
// broker (what the operator wrote), each event stamped on arrival.
type trace struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu        sync.Mutex
	watched   map[string]time.Time // EndpointSlice resourceVersion → seen
	published []time.Time          // changes of the service key
	err       error
	wake      chan struct{}
}

func startTrace(ctx context.Context, l *lab.Lab, east *lab.Cluster, es discoveryclient.EndpointSliceInterface) (*trace, error) {
	cfg, err := broker.LocalAdminConfig(filepath.Join(l.Dir, "broker"), []string{l.Broker})
	if err != nil {
		return nil, err
	}
	c, err := broker.AdminClient(ctx, cfg)
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	w, err := es.Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=bench-es-1"})
	if err != nil {
		cancel()
		c.Close()
		return nil, fmt.Errorf("watch EndpointSlice bench-es-1: %w", err)
	}
	svc := clustermesh.Service{Cluster: east.Name, Namespace: "default", Name: "bench-es"}
	ew := c.Watch(ctx, svc.Key(), clientv3.WithPrefix())
	t := &trace{cancel: cancel, done: make(chan struct{}), watched: map[string]time.Time{}, wake: make(chan struct{}, 1)}
	var wg sync.WaitGroup
	wg.Add(2)
	go func() {
		defer wg.Done()
		defer w.Stop()
		for ev := range w.ResultChan() {
			now := time.Now()
			if m, err := meta.Accessor(ev.Object); err == nil {
				t.mu.Lock()
				t.watched[m.GetResourceVersion()] = now
				t.mu.Unlock()
				t.signal()
			}
		}
	}()
	go func() {
		defer wg.Done()
		for resp := range ew {
			now := time.Now()
			t.mu.Lock()
			if err := resp.Err(); err != nil && t.err == nil {
				t.err = fmt.Errorf("watch east's service key on the broker: %w", err)
			}
			if len(resp.Events) > 0 {
				t.published = append(t.published, now)
			}
			t.mu.Unlock()
			t.signal()
		}
	}()
	go func() { wg.Wait(); c.Close(); close(t.done) }()
	return t, nil
}

func (t *trace) signal() {
	select {
	case t.wake <- struct{}{}:
	default:
	}
}

// times returns when the watch saw EndpointSlice version rv, and the first
// change of the service key after start. It waits up to 10 s for both.
func (t *trace) times(ctx context.Context, rv string, start time.Time) (watched, published time.Time, err error) {
	deadline := time.NewTimer(10 * time.Second)
	defer deadline.Stop()
	for {
		t.mu.Lock()
		watched = t.watched[rv]
		i, _ := slices.BinarySearchFunc(t.published, start, func(a, b time.Time) int { return a.Compare(b) })
		if i < len(t.published) {
			published = t.published[i]
		}
		err = t.err
		t.mu.Unlock()
		if err != nil || !watched.IsZero() && !published.IsZero() {
			return watched, published, err
		}
		select {
		case <-t.wake:
		case <-deadline.C:
			return watched, published, fmt.Errorf("trace: EndpointSlice version %s seen %v, service key published %v after 10s", rv, !watched.IsZero(), !published.IsZero())
		case <-ctx.Done():
			return watched, published, ctx.Err()
		}
	}
}

func (t *trace) close() {
	t.cancel()
	<-t.done
}

func countEntries(m *ebpf.Map) int {
	var k, v []byte
	n := 0
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	return n
}

// benchObjects creates, in east, the Deployment "bench" (1 replica) behind
// the global Service "bench", and the selector-less global Service
// "bench-es" with an empty EndpointSlice; in west the same two Services
// (no backends), so west's agents answer on them.
func benchObjects(ctx context.Context, east, west *lab.Cluster) error {
	one := int32(1)
	labels := map[string]string{"app": "bench"}
	port := corev1.ServicePort{Name: "whoami", Port: 8080, TargetPort: intstr.FromInt32(8080)}
	global := map[string]string{"braid.dev/global": "true"}
	for _, c := range []*lab.Cluster{east, west} {
		for _, svc := range []*corev1.Service{
			{ObjectMeta: metav1.ObjectMeta{Name: "bench", Annotations: global}, Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{port}}},
			{ObjectMeta: metav1.ObjectMeta{Name: "bench-es", Annotations: global}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{port}}},
		} {
			if _, err := c.Client.CoreV1().Services("default").Create(ctx, svc, metav1.CreateOptions{}); err != nil {
				return fmt.Errorf("cluster %s: create service %s: %w", c.Name, svc.Name, err)
			}
		}
	}
	if _, err := east.Client.AppsV1().Deployments("default").Create(ctx, &appsv1.Deployment{
		ObjectMeta: metav1.ObjectMeta{Name: "bench"},
		Spec: appsv1.DeploymentSpec{
			Replicas: &one,
			Selector: &metav1.LabelSelector{MatchLabels: labels},
			Template: corev1.PodTemplateSpec{
				ObjectMeta: metav1.ObjectMeta{Labels: labels},
				Spec: corev1.PodSpec{
					TerminationGracePeriodSeconds: new(int64),
					Containers: []corev1.Container{{Name: "whoami", Image: "traefik/whoami:v1.10",
						Ports: []corev1.ContainerPort{{ContainerPort: 8080}}}},
				},
			},
		},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("cluster %s: create deployment bench: %w", east.Name, err)
	}
	name := "whoami"
	p := int32(8080)
	if _, err := east.Client.DiscoveryV1().EndpointSlices("default").Create(ctx, &discoveryv1.EndpointSlice{
		ObjectMeta: metav1.ObjectMeta{Name: "bench-es-1", Labels: map[string]string{
			discoveryv1.LabelServiceName: "bench-es", discoveryv1.LabelManagedBy: "braid-lab-bench"}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Ports:       []discoveryv1.EndpointPort{{Name: &name, Port: &p}},
	}, metav1.CreateOptions{}); err != nil {
		return fmt.Errorf("cluster %s: create EndpointSlice: %w", east.Name, err)
	}
	return nil
}

// rawPutWatch times n puts on the broker until its watch delivers each.
func rawPutWatch(ctx context.Context, l *lab.Lab, n int) (latencies, error) {
	cfg, err := broker.LocalAdminConfig(filepath.Join(l.Dir, "broker"), []string{l.Broker})
	if err != nil {
		return nil, err
	}
	c, err := broker.AdminClient(ctx, cfg)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	const key = "/braid-lab-bench/raw"
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	w := c.Watch(wctx, key)
	var lat latencies
	for i := range n {
		start := time.Now()
		if _, err := c.Put(ctx, key, fmt.Sprint(i)); err != nil {
			return nil, fmt.Errorf("raw put: %w", err)
		}
		select {
		case resp := <-w:
			if err := resp.Err(); err != nil {
				return nil, err
			}
		case <-time.After(10 * time.Second):
			return nil, fmt.Errorf("raw watch: no event within 10s")
		}
		lat = append(lat, time.Since(start))
	}
	_, _ = c.Delete(ctx, key, clientv3.WithPrefix())
	return lat, nil
}
