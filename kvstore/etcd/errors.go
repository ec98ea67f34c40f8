package etcd

import (
	"context"
	"errors"
	"fmt"

	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"

	"github.com/braidmesh/braid/kvstore"
)

// translate is translateErr that reports kvstore.ErrClosed for calls that
// raced Close (they fail with "grpc: the client connection is closing" or
// context.Canceled).
func (s *Store) translate(op string, err error) error {
	if err != nil && s.isClosed() {
		return fmt.Errorf("%s: %w", op, kvstore.ErrClosed)
	}
	return translateErr(op, err)
}

// translateErr maps an etcd client error onto the kvstore sentinels, keeping
// the original in the chain for logs and errors.Is on rpctypes values. op
// names the operation, as in "put a/b".
func translateErr(op string, err error) error {
	switch {
	case err == nil:
		return nil
	case errors.Is(err, rpctypes.ErrPermissionDenied),
		errors.Is(err, rpctypes.ErrAuthFailed),
		errors.Is(err, rpctypes.ErrInvalidAuthToken),
		errors.Is(err, rpctypes.ErrUserEmpty),
		errors.Is(err, rpctypes.ErrAuthOldRevision),
		errors.Is(err, rpctypes.ErrUserNotFound),
		errors.Is(err, rpctypes.ErrRoleNotGranted):
		return fmt.Errorf("%s: %w: %w", op, kvstore.ErrPermissionDenied, err)
	case errors.Is(err, rpctypes.ErrLeaseNotFound):
		return fmt.Errorf("%s: %w: %w", op, kvstore.ErrLeaseNotFound, err)
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return fmt.Errorf("%s: %w", op, err)
	}
	return fmt.Errorf("%s: etcd: %w", op, err)
}
