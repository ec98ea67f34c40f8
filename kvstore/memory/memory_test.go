package memory_test

import (
	"context"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore/kvstoretest"
	"github.com/braidmesh/braid/kvstore/memory"
)

func TestConformance(t *testing.T) {
	kvstoretest.Run(t, func(t *testing.T) kvstoretest.Harness {
		s := memory.New()
		t.Cleanup(func() { s.Close() })
		return kvstoretest.Harness{
			Store:    s,
			Compact:  func(_ context.Context, rev int64) error { return s.Compact(rev) },
			LeaseTTL: 200 * time.Millisecond,
		}
	})
}
