package cli

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/braidmesh/braid/clustermesh/join"
)

func leaveCommand() *cobra.Command {
	var (
		kf      kubeFlags
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "leave",
		Short: "Take the Kubernetes cluster out of the mesh and remove what join applied",
		Long: `Take the current Kubernetes cluster out of the mesh: the broker deletes
everything the cluster published (the other clusters see its services
vanish), removes its etcd user and revokes its certificates; then the
objects ` + "`braid join`" + ` created and the Secret braid-system/braid-join are
deleted.`,
		Example: `  braid leave --context east`,
		Args:    cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			return runLeave(ctx, cmd.OutOrStdout(), kf)
		},
	}
	kf.register(cmd)
	cmd.Flags().DurationVar(&timeout, "timeout", 2*time.Minute, "give up after this long")
	return cmd
}

func runLeave(ctx context.Context, out io.Writer, kf kubeFlags) error {
	k, err := kf.connect()
	if err != nil {
		return err
	}
	s, err := k.client.CoreV1().Secrets(braidNamespace).Get(ctx, joinSecret, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("this Kubernetes cluster is not in a mesh joined with `braid join` (no Secret %s/%s)", braidNamespace, joinSecret)
	} else if err != nil {
		return fmt.Errorf("read Secret %s/%s: %w", braidNamespace, joinSecret, err)
	}
	var creds join.Credentials
	if err := json.Unmarshal(s.Data[joinSecretKey], &creds); err != nil {
		return fmt.Errorf("decode join Secret %s/%s key %s: %w", braidNamespace, joinSecret, joinSecretKey, err)
	}
	var created []objectRef
	if a := s.Annotations[createdAnnotation]; a != "" {
		if err := json.Unmarshal([]byte(a), &created); err != nil {
			return fmt.Errorf("decode join Secret %s/%s annotation %s: %w", braidNamespace, joinSecret, createdAnnotation, err)
		}
	}
	if err := leaveMesh(ctx, creds); err != nil {
		var ae *join.APIError
		if !errors.As(err, &ae) || (ae.Status != http.StatusUnauthorized && ae.Status != http.StatusNotFound) {
			return err
		}
		fmt.Fprintf(out, "• broker: %s; removing the rest\n", ae.Message)
	} else {
		fmt.Fprintf(out, "• cluster %s left the mesh: its entries withdrawn, its user removed, its certificates revoked\n", creds.Cluster)
	}
	var errs []error
	for i := len(created) - 1; i >= 0; i-- {
		if err := k.remove(ctx, created[i].object()); err != nil {
			errs = append(errs, err)
		}
	}
	if err := k.client.CoreV1().Secrets(braidNamespace).Delete(ctx, joinSecret, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
		errs = append(errs, fmt.Errorf("delete Secret %s/%s: %w", braidNamespace, joinSecret, err))
	}
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(out, "• removed %d objects join had created\n", len(created))
	return nil
}

// leaveMesh asks the broker, as creds' cluster, to withdraw it.
func leaveMesh(ctx context.Context, creds join.Credentials) error {
	if creds.JoinURL == "" {
		return fmt.Errorf("cluster %s did not join with a token; remove it with `braid broker remove-cluster %s`", creds.Cluster, creds.Cluster)
	}
	cert, err := tls.X509KeyPair(creds.CertPEM, creds.KeyPEM)
	if err != nil {
		return fmt.Errorf("cluster %s: client certificate: %w", creds.Cluster, err)
	}
	c, err := join.NewClient(creds.JoinURL, creds.CAFingerprint, &cert)
	if err != nil {
		return err
	}
	defer c.Close()
	if err := c.Leave(ctx); err != nil {
		return fmt.Errorf("leave: %w", err)
	}
	return nil
}
