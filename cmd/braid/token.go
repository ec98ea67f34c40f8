package main

import (
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/braidmesh/braid/clustermesh"
	"github.com/braidmesh/braid/clustermesh/broker"
)

func tokenCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens",
	}
	cmd.AddCommand(tokenCreateCommand())
	return cmd
}

func tokenCreateCommand() *cobra.Command {
	var (
		admin   adminFlags
		cluster string
		ttl     time.Duration
	)
	cmd := &cobra.Command{
		Use:   "create --cluster NAME",
		Short: "Print a single-use join token for cluster NAME",
		Long: `Print a join token for cluster NAME: the broker's endpoints, the SHA-256
fingerprint of its CA and a one-time secret. The broker records the token
(only a hash of its secret) and accepts it once, before --ttl has passed,
for NAME only. Run it on the broker host (it reads the broker's data
directory) or pass the admin endpoint with --etcd-endpoints. Treat the token
as a secret until it is used.`,
		Example: `  braid token create --cluster east --ttl 30m
  braid join "$(braid token create --cluster east)" --id 3 --pod-cidr 10.3.0.0/16   # same host`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			name := clustermesh.ClusterName(cluster)
			if err := name.Validate(); err != nil {
				return fmt.Errorf("--cluster: %w", err)
			}
			c, _, _, err := admin.client(cmd.Context())
			if err != nil {
				return err
			}
			defer c.Close()
			tok, err := broker.CreateToken(cmd.Context(), c, name, ttl)
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), tok.String())
			fmt.Fprintf(cmd.ErrOrStderr(), "token for cluster %s, valid once until %s; join with: braid join TOKEN --id N --pod-cidr CIDR\n",
				name, time.Now().Add(ttl).UTC().Format(time.RFC3339))
			return nil
		},
	}
	admin.register(cmd)
	cmd.Flags().StringVar(&cluster, "cluster", "", "the cluster the token admits (required)")
	cmd.Flags().DurationVar(&ttl, "ttl", broker.DefaultTokenTTL, "how long the token is valid")
	_ = cmd.MarkFlagRequired("cluster")
	return cmd
}
