package join

import (
	"context"
	"fmt"
	"log/slog"
	"time"

	"github.com/braidmesh/braid/kvstore/etcd"
)

// ProgressInterval is how often a store opened by Connect asks the broker to
// confirm its watches are live (see etcd.Config.ProgressInterval); consumers
// show a cluster stale after several intervals without progress.
const ProgressInterval = 5 * time.Second

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

		ProgressInterval: ProgressInterval,
	})
	if err != nil {
		return nil, fmt.Errorf("connect %s: %w", c, err)
	}
	return s, nil
}
