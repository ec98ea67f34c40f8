package netnsrun

import (
	"errors"
	"runtime"
	"sync"
	"testing"

	"github.com/vishvananda/netns"

	"github.com/braidmesh/braid/internal/testenv"
)

// TestDoLeavesNoThreadInTheNamespace runs many switches concurrently and
// checks that every goroutine, afterwards, is in the original namespace.
func TestDoLeavesNoThreadInTheNamespace(t *testing.T) {
	testenv.Root(t, "network namespaces")
	orig, err := netns.Get()
	if err != nil {
		t.Fatal(err)
	}
	defer orig.Close()
	var ns netns.NsHandle
	if err := Do(netns.None(), func() (err error) {
		ns, err = netns.New() // switches this thread; Do switches it back
		return err
	}); err != nil {
		testenv.Skipf(t, "create netns: %v", err)
	}
	defer ns.Close()

	var wg sync.WaitGroup
	for range 50 {
		wg.Go(func() {
			var inside netns.NsHandle
			err := Do(ns, func() (err error) {
				inside, err = netns.Get()
				return err
			})
			if err != nil {
				t.Error(err)
				return
			}
			defer inside.Close()
			if !inside.Equal(ns) {
				t.Error("fn did not run in the namespace")
			}
		})
	}
	wg.Wait()
	// Every thread the runtime may schedule on is back home.
	for range 50 {
		wg.Go(func() {
			runtime.Gosched()
			cur, err := netns.Get()
			if err != nil {
				t.Error(err)
				return
			}
			defer cur.Close()
			if !cur.Equal(orig) {
				t.Error("a goroutine runs in the test namespace after Do returned")
			}
		})
	}
	wg.Wait()
}

func TestDoReturnsAndRepanics(t *testing.T) {
	want := errors.New("boom")
	if err := Do(netns.None(), func() error { return want }); err != want {
		t.Fatalf("Do = %v, want %v", err, want)
	}
	defer func() {
		if r := recover(); r != "fn panicked" {
			t.Fatalf("recovered %v, want fn's panic", r)
		}
	}()
	Do(netns.None(), func() error { panic("fn panicked") })
}
