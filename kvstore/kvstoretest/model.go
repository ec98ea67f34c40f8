package kvstoretest

import (
	"context"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/braidmesh/braid/kvstore"
)

// model is what a correct consumer builds from a watch stream. apply checks
// each event against the contract as it goes.
type model struct {
	prefix  string
	kv      map[string]string
	listing bool            // between the start or EventRestart and EventListDone
	stale   map[string]bool // keys held before EventRestart, not yet seen again
	listMax int64           // highest revision of an upsert in the current list
	rev     int64           // revision of the last change or EventListDone
	atRev   map[string]bool // keys changed at rev, to catch repeats

	restarts, errors, changes int
}

func newModel(prefix string) *model {
	return &model{prefix: prefix, kv: map[string]string{}, listing: true, stale: map[string]bool{}}
}

func (m *model) apply(ev kvstore.Event) error {
	switch ev.Kind {
	case kvstore.EventUpsert, kvstore.EventDelete:
		if !strings.HasPrefix(ev.Key, m.prefix) {
			return fmt.Errorf("%v event for %q outside the watched prefix %q", ev.Kind, ev.Key, m.prefix)
		}
		if m.listing {
			if ev.Kind == kvstore.EventDelete {
				return fmt.Errorf("delete of %q during a list", ev.Key)
			}
			m.kv[ev.Key] = string(ev.Value)
			delete(m.stale, ev.Key)
			m.listMax = max(m.listMax, ev.Revision)
			return nil
		}
		switch {
		case ev.Revision < m.rev:
			return fmt.Errorf("%v %q at revision %d after revision %d: out of order", ev.Kind, ev.Key, ev.Revision, m.rev)
		case ev.Revision == m.rev && m.atRev[ev.Key]:
			return fmt.Errorf("%v %q at revision %d delivered twice", ev.Kind, ev.Key, ev.Revision)
		case ev.Revision > m.rev:
			m.rev = ev.Revision
			m.atRev = map[string]bool{}
		}
		m.atRev[ev.Key] = true
		m.changes++
		if ev.Kind == kvstore.EventUpsert {
			m.kv[ev.Key] = string(ev.Value)
		} else {
			delete(m.kv, ev.Key)
		}
	case kvstore.EventListDone:
		if !m.listing {
			return fmt.Errorf("EventListDone without a list")
		}
		if ev.Revision < m.listMax {
			return fmt.Errorf("EventListDone at revision %d before listed revision %d", ev.Revision, m.listMax)
		}
		if ev.Revision < m.rev {
			return fmt.Errorf("EventListDone at revision %d goes back from %d", ev.Revision, m.rev)
		}
		for k := range m.stale {
			delete(m.kv, k)
		}
		m.listing, m.stale, m.listMax = false, map[string]bool{}, 0
		m.rev, m.atRev = ev.Revision, map[string]bool{}
	case kvstore.EventRestart:
		m.restarts++
		m.listing = true
		m.stale = map[string]bool{}
		for k := range m.kv {
			m.stale[k] = true
		}
	case kvstore.EventError:
		if ev.Err == nil {
			return fmt.Errorf("EventError without Err")
		}
		m.errors++
	case kvstore.EventProgress:
		if ev.Revision < m.rev && !m.listing {
			return fmt.Errorf("EventProgress at revision %d goes back from %d", ev.Revision, m.rev)
		}
	default:
		return fmt.Errorf("event of unknown kind %d", ev.Kind)
	}
	return nil
}

// consume applies events from w to m until done(m) holds, failing t on a
// contract violation, a closed channel or the suite's timeout.
func consume(t *testing.T, w <-chan kvstore.Event, m *model, done func(*model) bool) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for !done(m) {
		select {
		case ev, ok := <-w:
			if !ok {
				t.Fatalf("watch of %q closed early", m.prefix)
			}
			if ev.Kind == kvstore.EventError {
				t.Logf("watch of %q: %v", m.prefix, ev.Err)
			}
			if err := m.apply(ev); err != nil {
				t.Fatal(err)
			}
		case <-timer.C:
			t.Fatalf("watch of %q: condition not reached after %v; model has %d keys at revision %d",
				m.prefix, timeout, len(m.kv), m.rev)
		}
	}
}

// listed reports whether the model holds a complete list.
func listed(m *model) bool { return !m.listing }

// matches returns a condition that holds once the model, with its list
// complete, equals the store's current content of the prefix.
func matches(t *testing.T, s kvstore.Store, prefix string) func(*model) bool {
	want := snapshot(t, s, prefix)
	return func(m *model) bool {
		return !m.listing && m.rev >= want.rev && maps.Equal(m.kv, want.kv)
	}
}

type state struct {
	kv map[string]string
	// rev is the newest change under the prefix, not the store's
	// revision: a watch of a quiet prefix need not advance past it.
	rev int64
}

func snapshot(t *testing.T, s kvstore.Store, prefix string) state {
	t.Helper()
	kvs, _, err := s.List(testCtx(t), prefix)
	if err != nil {
		t.Fatalf("List: %v", err)
	}
	st := state{kv: map[string]string{}}
	for _, kv := range kvs {
		st.kv[kv.Key] = string(kv.Value)
		st.rev = max(st.rev, kv.ModRevision)
	}
	return st
}

// checkModel fails t unless m equals the store's content of its prefix.
func checkModel(t *testing.T, s kvstore.Store, m *model) {
	t.Helper()
	want := snapshot(t, s, m.prefix)
	if !maps.Equal(m.kv, want.kv) {
		t.Fatalf("watch state differs from List:\nwatch: %v\nlist:  %v", sorted(m.kv), sorted(want.kv))
	}
}

func sorted(m map[string]string) []string {
	var out []string
	for _, k := range slices.Sorted(maps.Keys(m)) {
		out = append(out, k+"="+m[k])
	}
	return out
}

// next returns the next event of w, which must be of kind want; EventError
// and EventProgress events are skipped.
func next(t *testing.T, w <-chan kvstore.Event, want kvstore.EventKind) kvstore.Event {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case ev, ok := <-w:
			if !ok {
				t.Fatalf("watch closed, want %v", want)
			}
			if ev.Kind == kvstore.EventError && want != kvstore.EventError {
				t.Logf("watch: %v", ev.Err)
				continue
			}
			if ev.Kind == kvstore.EventProgress && want != kvstore.EventProgress {
				continue
			}
			if ev.Kind != want {
				t.Fatalf("event %+v, want %v", ev, want)
			}
			return ev
		case <-timer.C:
			t.Fatalf("no %v event after %v", want, timeout)
		}
	}
}

// waitClosed drains w until it is closed.
func waitClosed(t *testing.T, w <-chan kvstore.Event) {
	t.Helper()
	timer := time.NewTimer(timeout)
	defer timer.Stop()
	for {
		select {
		case _, ok := <-w:
			if !ok {
				return
			}
		case <-timer.C:
			t.Fatalf("watch channel still open after %v", timeout)
		}
	}
}

// watch starts a watch that ends with the test.
func watch(t *testing.T, s kvstore.Store, prefix string) <-chan kvstore.Event {
	ctx, cancel := context.WithCancel(t.Context())
	w := s.Watch(ctx, prefix)
	t.Cleanup(func() {
		cancel()
		waitClosed(t, w)
	})
	return w
}
