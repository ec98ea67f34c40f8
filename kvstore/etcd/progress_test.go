package etcd_test

import (
	"context"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore"
	"github.com/braidmesh/braid/kvstore/etcd"
	"github.com/braidmesh/braid/kvstore/etcd/etcdtest"
)

// TestWatchReportsProgress checks that with a ProgressInterval every watch
// of the store reports EventProgress while nothing changes under its prefix,
// at a revision no older than the one it listed.
func TestWatchReportsProgress(t *testing.T) {
	t.Parallel()
	srv := etcdtest.Start(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	s, err := etcd.New(ctx, etcd.Config{Endpoints: srv.Endpoints(), ProgressInterval: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	if err := s.Put(ctx, "b/x", []byte("v"), 0); err != nil {
		t.Fatal(err)
	}
	for _, prefix := range []string{"a/", "b/"} {
		w := s.Watch(ctx, prefix)
		var listRev int64
		for ev := range w {
			switch ev.Kind {
			case kvstore.EventListDone:
				listRev = ev.Revision
			case kvstore.EventProgress:
				if listRev == 0 {
					t.Fatalf("%s: progress before the list was done", prefix)
				}
				if ev.Revision < listRev {
					t.Errorf("%s: progress at revision %d, before the list's %d", prefix, ev.Revision, listRev)
				}
			}
			if ev.Kind == kvstore.EventProgress {
				break
			}
		}
		if ctx.Err() != nil {
			t.Fatalf("%s: no EventProgress: %v", prefix, ctx.Err())
		}
	}
}
