package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/join"
)

// createdAnnotation on the join Secret lists what join created, so that
// leave removes exactly that.
const createdAnnotation = "braid.io/created"

// objectRef names one object join created.
type objectRef struct {
	APIVersion string `json:"apiVersion"`
	Kind       string `json:"kind"`
	Namespace  string `json:"namespace,omitempty"`
	Name       string `json:"name"`
}

func (r objectRef) object() *unstructured.Unstructured {
	o := &unstructured.Unstructured{}
	o.SetAPIVersion(r.APIVersion)
	o.SetKind(r.Kind)
	o.SetNamespace(r.Namespace)
	o.SetName(r.Name)
	return o
}

type joinOptions struct {
	kube         kubeFlags
	cluster      string
	id           uint16
	podCIDRs     []string
	serviceCIDRs []string
	clusterSet   []string
	manifests    string
	imageTag     string
	dryRun       bool
	wait         bool
	timeout      time.Duration
}

func joinCommand() *cobra.Command {
	var o joinOptions
	cmd := &cobra.Command{
		Use:   "join TOKEN",
		Short: "Join the Kubernetes cluster to the mesh with a token from `braid token create`",
		Long: `Join the current Kubernetes cluster to the mesh.

The token names the broker, the fingerprint of its CA and a one-time secret.
join verifies the broker against the fingerprint, checks that the cluster's
name, ID and CIDRs clash with no cluster in the mesh, then generates the
cluster's private key here and sends only a certificate request: the broker
returns a client certificate for the cluster's etcd user. No password exists.
The certificate, key and CA are stored in the Secret braid-system/braid-join;
deploy/ is applied with server-side apply, and join waits until the operator
has published everything and the agent of every node reports synced (in the
node status agents publish to the broker).

If any step fails, join undoes the others: the mesh and the cluster are left
as they were (the token stays used; create another).`,
		Example: `  # on the broker host
  braid token create --cluster east --ttl 30m

  # with kubectl pointing at the cluster to join
  braid join braid1.eyJj... --cluster east --id 3 --pod-cidr 10.3.0.0/16 --service-cidr 10.103.0.0/16

  # show what would be applied, change nothing
  braid join braid1.eyJj... --id 3 --pod-cidr 10.3.0.0/16 --dry-run`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runJoin(cmd.Context(), cmd.OutOrStdout(), args[0], o)
		},
	}
	f := cmd.Flags()
	o.kube.register(cmd)
	f.StringVar(&o.cluster, "cluster", "", "this cluster's name in the mesh (default: the name the token was created for)")
	f.Uint16Var(&o.id, "id", 0, "this cluster's ID in the mesh, 1..511 (required)")
	f.StringSliceVar(&o.podCIDRs, "pod-cidr", nil, "this cluster's pod CIDRs (repeatable)")
	f.StringSliceVar(&o.serviceCIDRs, "service-cidr", nil, "this cluster's service CIDRs (repeatable)")
	f.StringSliceVar(&o.clusterSet, "clusterset-cidr", nil, "where MCS ClusterSetIPs come from, one per family: inside --service-cidr, outside the Kubernetes service range (default: the base's)")
	f.StringVar(&o.manifests, "manifests", "deploy", "Braid's kustomize base (the deploy/ directory)")
	f.StringVar(&o.imageTag, "image-tag", "", "tag of the braid-operator and braid-agent images (default: the base's)")
	f.BoolVar(&o.dryRun, "dry-run", false, "check the token and clashes, print the manifests, change nothing")
	f.BoolVar(&o.wait, "wait", true, "wait until the operator and every agent report synced")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "give up (and undo the join) after this long")
	_ = cmd.MarkFlagRequired("id")
	return cmd
}

func parsePrefixes(flag string, in []string) ([]netip.Prefix, error) {
	var out []netip.Prefix
	for _, s := range in {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return nil, fmt.Errorf("%s %q: %w", flag, s, err)
		}
		out = append(out, p)
	}
	return out, nil
}

func prefixList(ps []netip.Prefix) string {
	s := make([]string, len(ps))
	for i, p := range ps {
		s[i] = p.String()
	}
	return strings.Join(s, ",")
}

func runJoin(ctx context.Context, out io.Writer, rawToken string, o joinOptions) (err error) {
	ctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	step := func(format string, args ...any) { fmt.Fprintf(out, "• "+format+"\n", args...) }

	tok, err := join.ParseToken(rawToken)
	if err != nil {
		return err
	}
	cfg := clustermesh.ClusterConfig{Name: clustermesh.ClusterName(o.cluster), ID: clustermesh.ClusterID(o.id)}
	if cfg.Name == "" {
		cfg.Name = tok.Cluster
	}
	if cfg.PodCIDRs, err = parsePrefixes("--pod-cidr", o.podCIDRs); err != nil {
		return err
	}
	if cfg.ServiceCIDRs, err = parsePrefixes("--service-cidr", o.serviceCIDRs); err != nil {
		return err
	}
	if err := cfg.Validate(); err != nil {
		return fmt.Errorf("cluster config: %w (set --cluster, --id, --pod-cidr, --service-cidr)", err)
	}
	clusterSet, err := parsePrefixes("--clusterset-cidr", o.clusterSet)
	if err != nil {
		return err
	}
	for _, p := range clusterSet {
		if len(cfg.ServiceCIDRs) > 0 && !slices.ContainsFunc(cfg.ServiceCIDRs, func(s netip.Prefix) bool { return s.Bits() <= p.Bits() && s.Contains(p.Addr()) }) {
			return fmt.Errorf("--clusterset-cidr %s is outside the service CIDRs %s: the operator would refuse it", p, prefixList(cfg.ServiceCIDRs))
		}
	}
	settings := map[string]string{"cluster-id": strconv.Itoa(int(cfg.ID))}
	if len(cfg.PodCIDRs) > 0 {
		settings["pod-cidr"] = prefixList(cfg.PodCIDRs)
	}
	if len(cfg.ServiceCIDRs) > 0 {
		settings["service-cidr"] = prefixList(cfg.ServiceCIDRs)
	}
	if len(clusterSet) > 0 {
		settings["clusterset-cidr"] = prefixList(clusterSet)
	}
	objs, err := renderManifests(o.manifests, settings, o.imageTag)
	if err != nil {
		return err
	}

	k, err := o.kube.connect()
	if err != nil {
		return err
	}
	if _, err := k.client.CoreV1().Secrets(braidNamespace).Get(ctx, joinSecret, metav1.GetOptions{}); err == nil {
		return fmt.Errorf("this Kubernetes cluster already joined a mesh (Secret %s/%s exists): run `braid leave` first", braidNamespace, joinSecret)
	} else if !apierrors.IsNotFound(err) {
		return fmt.Errorf("check Secret %s/%s: %w", braidNamespace, joinSecret, err)
	}

	jc, err := join.NewClient(tok.JoinURL, tok.CAFingerprint, nil)
	if err != nil {
		return err
	}
	defer jc.Close()
	req := join.Request{TokenID: tok.ID, Secret: tok.Secret, Config: cfg}
	if err := jc.Check(ctx, req); err != nil {
		return fmt.Errorf("join refused: %w", err)
	}
	step("broker %s verified (CA sha256 %s…); token valid; name %s, ID %d and CIDRs free", tok.JoinURL, tok.CAFingerprint[:16], cfg.Name, cfg.ID)
	if o.dryRun {
		step("dry run: would store the cluster's certificate in Secret %s/%s and apply:", braidNamespace, joinSecret)
		return printManifests(out, objs)
	}

	keyPEM, csrPEM, err := join.NewKey(cfg.Name)
	if err != nil {
		return err
	}
	req.CSR = string(csrPEM)
	resp, err := jc.Join(ctx, req)
	if err != nil {
		return fmt.Errorf("join refused: %w", err)
	}
	creds := join.Credentials{
		Cluster: resp.Cluster, Endpoints: resp.Endpoints, CACertPEM: []byte(resp.CAPEM),
		CertPEM: []byte(resp.CertPEM), KeyPEM: keyPEM, JoinURL: tok.JoinURL, CAFingerprint: tok.CAFingerprint,
		GossipKeys: resp.GossipKeys,
	}
	if err := creds.Validate(); err != nil {
		return fmt.Errorf("broker's answer: %w", err)
	}
	step("certificate for etcd user %s issued, valid until %s", join.User(cfg.Name), resp.NotAfter.UTC().Format(time.RFC3339))

	// From here on a failure undoes everything done so far.
	var created []objectRef
	defer func() {
		if err == nil {
			return
		}
		uctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if uerr := undoJoin(uctx, k, creds, created); uerr != nil {
			err = fmt.Errorf("%w; undoing the join failed too: %v", err, uerr)
			return
		}
		err = fmt.Errorf("%w (join undone: left the mesh, removed what was applied)", err)
	}()

	for _, obj := range objs {
		existed, err := k.exists(ctx, obj)
		if err != nil {
			return err
		}
		if err := k.apply(ctx, obj); err != nil {
			return err
		}
		if !existed {
			created = append(created, objectRef{obj.GetAPIVersion(), obj.GetKind(), obj.GetNamespace(), obj.GetName()})
		}
	}
	step("applied %d objects from %s (server-side apply, field manager %q)", len(objs), o.manifests, fieldManager)
	secret, err := joinSecretObject(creds, created)
	if err != nil {
		return err
	}
	if err := k.apply(ctx, secret); err != nil {
		return err
	}
	created = append(created, objectRef{"v1", "Secret", braidNamespace, joinSecret})
	step("stored certificate, key and CA in Secret %s/%s (no password)", braidNamespace, joinSecret)

	if !o.wait {
		step("joined; not waiting (--wait=false): see `braid status`")
		return nil
	}
	if err := waitJoined(ctx, out, k, creds); err != nil {
		return err
	}
	step("cluster %s joined the mesh", cfg.Name)
	return nil
}

func joinSecretObject(creds join.Credentials, created []objectRef) (*unstructured.Unstructured, error) {
	bundle, err := json.MarshalIndent(creds, "", "  ")
	if err != nil {
		return nil, err
	}
	list, err := json.Marshal(created)
	if err != nil {
		return nil, err
	}
	s := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "v1", "kind": "Secret", "type": "Opaque",
		"metadata": map[string]any{
			"name": joinSecret, "namespace": braidNamespace,
			"labels":      map[string]any{managedLabel: "join", "app.kubernetes.io/part-of": "braid"},
			"annotations": map[string]any{createdAnnotation: string(list)},
		},
		"stringData": map[string]any{joinSecretKey: string(bundle)},
	}}
	return s, nil
}

// undoJoin leaves the mesh with creds and deletes created, newest first.
func undoJoin(ctx context.Context, k *kube, creds join.Credentials, created []objectRef) error {
	var errs []error
	if err := leaveMesh(ctx, creds); err != nil {
		errs = append(errs, err)
	}
	for i := len(created) - 1; i >= 0; i-- {
		if err := k.remove(ctx, created[i].object()); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (k *kube) exists(ctx context.Context, o *unstructured.Unstructured) (bool, error) {
	r, err := k.resource(o)
	if err != nil {
		return false, err
	}
	if _, err := r.Get(ctx, o.GetName(), metav1.GetOptions{}); err == nil {
		return true, nil
	} else if apierrors.IsNotFound(err) {
		return false, nil
	} else {
		return false, fmt.Errorf("get %s %s: %w", o.GetKind(), qualified(o), err)
	}
}
