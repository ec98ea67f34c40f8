package datapath

import (
	"errors"
	"maps"
	"sync"

	"github.com/braidmesh/braid/bpf"
)

// fakeTable is an in-memory table with fault injection.
type fakeTable[K comparable, V any] struct {
	m       map[K]V
	max     uint32
	failErr error       // returned by BatchUpdate when set
	mu      *sync.Mutex // when set, held by every method
}

func newFake[K comparable, V any](max uint32) *fakeTable[K, V] {
	return &fakeTable[K, V]{m: map[K]V{}, max: max}
}

func (f *fakeTable[K, V]) lock() func() {
	if f.mu == nil {
		return func() {}
	}
	f.mu.Lock()
	return f.mu.Unlock
}

func (f *fakeTable[K, V]) Dump() (map[K]V, error) { defer f.lock()(); return maps.Clone(f.m), nil }
func (f *fakeTable[K, V]) MaxEntries() uint32     { return f.max }
func (f *fakeTable[K, V]) BatchUpdate(ks []K, vs []V) (int, error) {
	defer f.lock()()
	if f.failErr != nil {
		return 0, f.failErr
	}
	for i, k := range ks {
		if _, ok := f.m[k]; !ok && uint32(len(f.m)) >= f.max {
			return i, errors.New("map full")
		}
		f.m[k] = vs[i]
	}
	return len(ks), nil
}
func (f *fakeTable[K, V]) BatchDelete(ks []K) (int, error) {
	defer f.lock()()
	n := 0
	for _, k := range ks {
		if _, ok := f.m[k]; ok {
			delete(f.m, k)
			n++
		}
	}
	return n, nil
}

type fakeConfig struct{ c bpf.DatapathConfig }

func (f *fakeConfig) SetDatapathConfig(c bpf.DatapathConfig) error { f.c = c; return nil }

type fakeMaps struct {
	ipcache  *fakeTable[bpf.IPCacheKey, bpf.IPCacheValue]
	services *fakeTable[bpf.ServiceKey, bpf.ServiceValue]
	slots    *fakeTable[bpf.SlotKey, bpf.BackendID]
	backends *fakeTable[bpf.BackendID, bpf.BackendValue]
	policy   *fakeTable[bpf.PolicyKey, bpf.PolicyValue]
	ct       *fakeTable[bpf.CTKey, bpf.CTValue]
	config   *fakeConfig
}

func newFakeMaps(size uint32) *fakeMaps {
	return &fakeMaps{
		ipcache:  newFake[bpf.IPCacheKey, bpf.IPCacheValue](size),
		services: newFake[bpf.ServiceKey, bpf.ServiceValue](size),
		slots:    newFake[bpf.SlotKey, bpf.BackendID](size),
		backends: newFake[bpf.BackendID, bpf.BackendValue](size),
		policy:   newFake[bpf.PolicyKey, bpf.PolicyValue](size),
		ct:       newFake[bpf.CTKey, bpf.CTValue](size),
		config:   &fakeConfig{},
	}
}

func (f *fakeMaps) Maps() Maps {
	return Maps{IPCache: f.ipcache, Services: f.services, Slots: f.slots, Backends: f.backends, Policy: f.policy, Config: f.config, CT: f.ct}
}
