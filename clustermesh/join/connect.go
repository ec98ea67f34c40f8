package join

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/braidmesh/braid/kvstore/etcd"
)

// Connect opens a kvstore over the broker with the cluster's credentials.
// The caller owns the store and must Close it.
func Connect(ctx context.Context, c Credentials, log *slog.Logger) (*etcd.Store, error) {
	tlsCfg, err := c.TLSConfig()
	if err != nil {
		return nil, err
	}
	s, err := etcd.New(ctx, etcd.Config{
		Endpoints: c.Endpoints,
		TLS:       tlsCfg,
		Username:  c.Username,
		Password:  c.Password,
		Logger:    log,
	})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c, err)
	}
	return s, nil
}
